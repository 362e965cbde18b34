/* roster.h — RFC 6121 rosters and presence subscription state, for the modules that need to ask
 * "is this contact subscribed?" (presence, MAM "roster" policy, last activity, blocking).
 * Implemented by src/mod_roster.c; data in storage (map store "roster" per account). */
#ifndef ISTHMUS_ROSTER_H
#define ISTHMUS_ROSTER_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 6121 §2.1.2.5 subscription values; pending states kept apart (RFC 6121 Appendix A). */
enum roster_sub { ROSTER_NONE, ROSTER_TO, ROSTER_FROM, ROSTER_BOTH };

struct roster_item {
    char *jid;          /* contact's bare JID, prepared */
    char *name;         /* NULL when none */
    enum roster_sub sub;
    bool ask;           /* pending-out: we sent subscribe, no answer yet (ask='subscribe') */
    bool pending_in;    /* they asked to subscribe to us; stored until answered */
    bool approved;      /* RFC 6121 §3.4 pre-approval */
    bool in_roster;     /* a visible roster item (false: only a pending request is stored) */
    char **groups;
    size_t ngroups;
};

/* Loads one item; 0 found (free with roster_item_fini), 1 not in roster, -1 storage error.
 * host/user: the account; contact: a prepared bare JID. */
int roster_get(const char *host, const char *user, const char *contact, struct roster_item *out);
void roster_item_fini(struct roster_item *it);

/* Does `contact` receive the account's presence (subscription from/both)? */
bool roster_subscribed_from(const char *host, const char *user, const char *contact);
/* Does the account receive `contact`'s presence (subscription to/both)? */
bool roster_subscribed_to(const char *host, const char *user, const char *contact);
/* Is contact in the roster at all (any subscription state)? */
bool roster_contains(const char *host, const char *user, const char *contact);

typedef int (*roster_item_fn)(void *ud, const struct roster_item *it);
/* Every item of the account, in JID order; fn returning nonzero stops. */
int roster_each(const char *host, const char *user, roster_item_fn fn, void *ud);

/* Writes an item (creating or replacing it), bumps the roster version and pushes the change to
 * the account's interested resources (RFC 6121 §2.1.6). An item that is neither in the roster
 * nor carries a pending request or pre-approval is deleted instead. Returns 0 or -1. */
int roster_put(const char *host, const char *user, const struct roster_item *it);
/* Counts the account's roster items (visible ones). -1 on storage failure. */
long roster_count(const char *host, const char *user);
/* The subscription attribute value for an item ("none", "to", "from", "both"). */
const char *roster_sub_name(enum roster_sub sub);

#endif
