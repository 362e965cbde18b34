/* hooks.h — named events that modules hook into (Prosody's events in C). Handlers run in
 * priority order, highest first; one returning HOOK_DONE stops the event (the stanza was
 * consumed: delivered elsewhere, stored, refused with an error already sent).
 *
 * Modules declare their handlers as data in struct module (module.h); modules_init() registers
 * them. The stanza in a context is borrowed: a handler that keeps it makes a copy. */
#ifndef ISTHMUS_HOOKS_H
#define ISTHMUS_HOOKS_H

#include <stdbool.h>

#include "isthmus/jid.h"
#include "isthmus/stanza.h"
#include "isthmus/util.h"

struct c2s;

enum hook_event {
    /* A stanza from a bound local client, `from` stamped and `to` prepared, before routing.
     * session = the sender. Presence without `to` arrives here too (availability broadcast). */
    HOOK_CLIENT_STANZA,
    /* A message for an existing local account, before delivery. to = its target address. */
    HOOK_MESSAGE_IN,
    /* A message for a local account reached at least one of its resources. session = the one
     * resource it was addressed to (full JID), NULL when delivered by bare-JID rules. */
    HOOK_MESSAGE_DELIVERED,
    /* A chat/normal message for a local account found no available resource. DONE = stored
     * (otherwise the sender gets service-unavailable, RFC 6121 §8.5.2.2.1). */
    HOOK_MESSAGE_OFFLINE,
    /* Presence for an existing local account (subscriptions, probes, availability). DONE =
     * handled; otherwise directed availability is delivered as RFC 6121 §8.5 says. */
    HOOK_PRESENCE_IN,
    /* A session sent its first available presence (RFC 6121 §4.2): offline messages and
     * pending subscription requests go to it now. Fired by the presence module. */
    HOOK_INITIAL_PRESENCE,
    /* A session bound its resource / is about to disappear (still registered while this runs). */
    HOOK_SESSION_BOUND,
    HOOK_SESSION_CLOSED,
    /* Stream features after authentication: append elements to `out`. */
    HOOK_STREAM_FEATURES,
    /* A top-level element on a bound stream that is not a stanza (e.g. XEP-0198 <r/>, XEP-0352
     * <active/>). DONE = understood; otherwise unsupported-stanza-type. */
    HOOK_NONZA,
    HOOK_ACCOUNT_DELETED,
    /* An IQ for an existing local account (its bare JID or one of its full JIDs), before it is
     * handled on the account's behalf or delivered. DONE = consumed (answered or dropped). */
    HOOK_IQ_IN,
    HOOK_COUNT
};

#define HOOK_PASS 0
#define HOOK_DONE 1

struct hook_ctx {
    struct stanza *stanza;
    struct c2s *session;
    const struct jid *to;   /* prepared target, when there is one */
    const char *bare;       /* account concerned ("user@host"), when there is one */
    struct buf *out;        /* HOOK_STREAM_FEATURES */
    bool redelivery;        /* HOOK_MESSAGE_*: a message re-routed after its session died with it
                             * unacknowledged (XEP-0198 §4.2): archive and carbons skip it */
};

typedef int (*hook_fn)(struct hook_ctx *ctx);

void hooks_add(enum hook_event ev, int priority, hook_fn fn);
/* Returns HOOK_DONE when a handler consumed the event, else HOOK_PASS. */
int hooks_fire(enum hook_event ev, struct hook_ctx *ctx);
void hooks_clear(void);

#endif
