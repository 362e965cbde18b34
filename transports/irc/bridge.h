/* bridge.h — the IRC gateway's translation layer: XMPP users ↔ IRC connections (bridge.c),
 * IRC channels ↔ XEP-0045 rooms (muc.c). It speaks XMPP only through gw.h and IRC only through
 * irc.h; addressing lives in addr.h.
 *
 * State: each XMPP user (bare JID) that uses the gateway has a struct bridge_user (gw_user.data),
 * holding one struct bridge_net per IRC server: one irc_conn shared by all the user's resources,
 * the rooms joined there and which of the user's resources are in each. A connection that drops
 * while rooms are joined is re-established with backoff (1 s doubling to 60 s) and the rooms
 * re-joined. */
#ifndef ISTHMUS_IRC_BRIDGE_H
#define ISTHMUS_IRC_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw.h"
#include "irc.h"

#define BRIDGE_MAX_ROOMS 100       /* per user and network */
#define BRIDGE_MAX_RESOURCES 50    /* of one user in one room */
#define BRIDGE_MAX_OCCUPANTS 20000 /* per room */
#define BRIDGE_MAX_PENDING 50      /* lines queued until the connection registers */
#define BRIDGE_MAX_BODY 16384      /* bytes of a body sent to IRC */
#define BRIDGE_MAX_LIST 20000      /* channels kept from LIST */
#define BRIDGE_LIST_TTL_MS 60000
#define BRIDGE_ISON_MS 60000
#define BRIDGE_BACKOFF_MAX_S 60

struct bridge_occupant {
    char *nick;
    char modes[16]; /* mode letters from PREFIX (o, v, h, q, a...) */
};

struct bridge_room {
    struct bridge_net *net;
    char *name;          /* the channel, lower-cased: the room JID's node part */
    char *key;           /* channel key from <password/> (XEP-0045 §7.2.6), or NULL */
    char **res;          /* the user's full JIDs in the room (joined or joining) */
    size_t n_res;
    bool joined;         /* our JOIN came back */
    bool synced;         /* 366 seen and the presences sent */
    bool ever_synced;    /* joined once: a reconnect re-joins instead of failing */
    char *join_nick;     /* the nick the first resource asked for (status 210 if different) */
    struct bridge_occupant *occ;
    size_t n_occ;
    char *topic;         /* NULL: none */
    char *topic_by;
};

struct bridge_chan {   /* one LIST entry */
    char *name;
    unsigned users;
    char *topic;
};

struct bridge_pending { /* something to send once the connection registers */
    char *target;        /* PRIVMSG target; NULL: text is a raw line */
    char *text;
    bool action;
};

struct bridge_net {
    struct bridge_user *owner;
    char *server;        /* as in JIDs, lower-cased */
    char *tag;           /* for logs */
    struct irc_conn *conn; /* NULL while waiting to reconnect */
    bool registered;
    bool ever_registered;
    bool quitting;       /* we sent QUIT: no reconnect */
    unsigned backoff_s;
    struct ev_timer *retry;
    struct bridge_room **rooms;
    size_t n_rooms;
    char *nick;          /* the nick to (re)connect with; follows our NICK changes */
    struct bridge_pending *pending;
    size_t n_pending;
    /* LIST (disco#items on server@gw), cached BRIDGE_LIST_TTL_MS */
    struct bridge_chan *list, *list_new;
    size_t n_list, n_list_new;
    uint64_t list_at;
    bool list_busy;
    struct stanza **disco_wait; /* disco#items queries waiting for 323 */
    size_t n_disco_wait;
    /* contacts of the user on this network (from the store) and those seen online */
    char **contacts;
    size_t n_contacts;
    char **online;
    size_t n_online;
};

struct bridge_user {
    struct gw *gw;
    struct gw_user *u;
    char *jid;           /* bare */
    struct bridge_net **nets;
    size_t n_nets;
    bool cleanup_queued;
};

/* ---- bridge.c ---- */
struct bridge_user *bridge_user_of(struct gw *gw, struct gw_user *u, bool create);
/* The network connection of bu for server, or NULL. */
struct bridge_net *bridge_net_find(struct bridge_user *bu, const char *server);
/* Finds or starts the connection to server (nick: the one to use when connecting). NULL with
 * *error set (not-allowed, resource-constraint) when it may not be made. */
struct bridge_net *bridge_net_get(struct bridge_user *bu, const char *server, const char *nick,
                                  const char **error, const char **text);
/* Drops the network when nothing uses it any more (no rooms): QUIT. */
void bridge_net_maybe_quit(struct bridge_net *net, const char *reason);
/* Sends a raw line now, or once the connection registers. */
void bridge_net_send(struct bridge_net *net, const char *line);
/* PRIVMSG (irc_say) now, or once the connection registers. */
void bridge_net_say(struct bridge_net *net, const char *target, const char *text, bool action);
/* Every resource of the user that should hear from this network: its available resources and
 * every resource in one of the network's rooms. Returns a malloc'd array of borrowed strings. */
const char **bridge_net_resources(struct bridge_net *net, size_t *n);
/* The quit message setting of the user ("quit_message"), malloc'd. */
char *bridge_quit_message(struct bridge_user *bu);
/* Sends st to each of the user's resources in res (copies; frees st). */
void bridge_send_each(struct gw *gw, struct stanza *st, const char *const *res, size_t n);
/* Text from IRC made fit for a body: mIRC formatting and control characters removed (malloc'd). */
char *bridge_text(const char *irc_text);
/* A contact came into view or went away (ISON, shared channel). */
void bridge_contact_seen(struct bridge_net *net, const char *nick, bool online);
bool bridge_archive_enabled(struct bridge_user *bu);
/* The nick to use when connecting: the registration's, else fallback, else from the JID. */
char *bridge_default_nick(struct bridge_user *bu, const char *fallback);
void bridge_user_maybe_free(struct bridge_user *bu);
/* A private message to nick on server (XEP-0100 §5.4, XEP-0045 §7.5): body → PRIVMSG. */
const char *bridge_private_message(struct bridge_user *bu, const struct stanza *st,
                                   const char *server, const char *nick);
/* Fills in the callbacks of the driver table (main.c owns the table). */
void bridge_fill_driver(struct gw_driver *d);
/* Microseconds since the epoch (archive timestamps). */
int64_t bridge_now_us(void);

/* ---- muc.c (XEP-0045) ---- */
const char *muc_presence(struct bridge_user *bu, const struct stanza *st, const char *from,
                         const char *server, const char *channel, const char *nick);
const char *muc_message(struct bridge_user *bu, const struct stanza *st, const char *from,
                        const char *server, const char *channel, const char *nick);
const char *muc_iq(struct bridge_user *bu, const struct stanza *st, const char *from,
                   const char *server, const char *channel, const char *nick);
/* An IRC line that concerns channels; returns true when it was handled. */
bool muc_irc_message(struct bridge_net *net, const struct irc_msg *m);
void muc_net_registered(struct bridge_net *net);
/* The connection ended: fatal (it never registered, or no reconnect) → error presences to
 * joining resources and every room dropped; else every occupant goes unavailable until the
 * reconnect re-joins. */
void muc_net_lost(struct bridge_net *net, const char *reason, bool fatal);
/* A resource of the user is gone: removes it from every room of net (PART where it was the
 * last). */
void muc_resource_gone(struct bridge_net *net, const char *full);
/* Sends self-unavailable to every resource of every room and drops the rooms (QUIT follows). */
void muc_leave_all(struct bridge_net *net, const char *status);
void muc_room_free(struct bridge_room *r);
struct bridge_room *muc_room_find(struct bridge_net *net, const char *channel);
bool muc_nick_in_room(const struct bridge_room *r, const char *nick);
/* Maps an irc_conn close reason to a stanza error condition. */
const char *muc_error_for_reason(const char *reason);

#endif
