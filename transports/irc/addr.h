/* addr.h — the IRC gateway's addressing scheme, the one place that knows it (biboumi-compatible,
 * see biboumi's iid.hpp for the idea):
 *
 *   #chan%server@gw          an IRC channel as a MUC room (XEP-0045); #chan%server@gw/nick an occupant
 *   nick%server@gw           an IRC user (a contact, XEP-0100 §5)
 *   server@gw                the IRC network itself (raw commands, server notices)
 *
 * The node is XEP-0106-escaped in the JID; these functions take and return the node as it appears
 * in a JID (escaped) and hand out the unescaped legacy names. Channel names are case-insensitive on
 * IRC (RFC 1459 §2.2), so the room's node is the lower-cased form; server names are host names and
 * lower-cased too. Nicks keep their case (JID preparation folds the node anyway). */
#ifndef ISTHMUS_IRC_ADDR_H
#define ISTHMUS_IRC_ADDR_H

#include <stdbool.h>

#define IRC_ADDR_MAX_CHANNEL 200 /* RFC 2812 §1.3: up to fifty; modern servers allow more */
#define IRC_ADDR_MAX_NICK 64
#define IRC_ADDR_MAX_SERVER 253

enum irc_addr_kind { IRC_ADDR_NETWORK, IRC_ADDR_CHANNEL, IRC_ADDR_NICK };

struct irc_addr {
    enum irc_addr_kind kind;
    char *server; /* lower-cased host name, never NULL after a successful parse */
    char *target; /* channel (lower-cased) or nick; NULL for IRC_ADDR_NETWORK */
};

/* Parses a JID node (escaped as in the JID). Returns 0, or -1 when it is no valid address
 * (→ jid-malformed / item-not-found); *out is always left in a state irc_addr_fini accepts. */
int irc_addr_parse(const char *node, struct irc_addr *out);
void irc_addr_fini(struct irc_addr *a);

/* The escaped node for target (channel or nick; NULL: the network) on server; the channel is
 * lower-cased. malloc'd; NULL when the result would be invalid. */
char *irc_addr_node(const char *target, const char *server);
/* node@domain[/resource]; malloc'd; NULL when invalid (resource is not checked here). */
char *irc_addr_jid(const char *domain, const char *target, const char *server,
                   const char *resource);

/* Is name a channel name by its first character ('#', '&', '+', '!', RFC 2812 §1.3)? */
bool irc_addr_is_channel(const char *name);
/* Is s acceptable as an IRC nick (non-empty, bounded, no space, comma, '!', '@', '%', control
 * characters, not starting with a channel character, digit or '-')? */
bool irc_addr_valid_nick(const char *s);
bool irc_addr_valid_channel(const char *s);
bool irc_addr_valid_server(const char *s);
/* ASCII lower-casing of channel names (a malloc'd copy). */
char *irc_addr_lower(const char *s);

/* Parses the prompt of jabber:iq:gateway (XEP-0100 §6.3): "nick%server", "#chan%server" or
 * "nick@server"; returns the escaped node, malloc'd, or NULL. */
char *irc_addr_prompt_node(const char *prompt);

#endif
