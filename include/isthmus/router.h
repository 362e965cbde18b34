/* router.h — delivers stanzas by their `to` address (RFC 6120 §10, RFC 6121 §8.5) and dispatches
 * IQs to module handlers.
 *
 * Targets: a local host itself (IQs go to the host's handlers), a local account's bare JID
 * (handled on the account's behalf, or delivered to its resources for messages), a local full JID
 * (a bound session), or a remote domain (no federation yet: errors with remote-server-not-found).
 * Every stanza carries a stamped `from`; the router never trusts a client's. */
#ifndef ISTHMUS_ROUTER_H
#define ISTHMUS_ROUTER_H

#include <stdbool.h>

#include "isthmus/jid.h"
#include "isthmus/stanza.h"

struct c2s;

enum iq_target { IQ_HOST, IQ_ACCOUNT };

struct iq_request {
    struct stanza *iq;       /* the whole <iq/> (borrowed) */
    struct stanza *payload;  /* its one child element */
    const struct jid *from;  /* sender (full JID for clients); NULL before authentication */
    const struct jid *to;    /* target: host or account bare JID */
    struct c2s *origin;      /* sending session, when local; NULL otherwise */
};

/* An IQ handler sends its own reply (router_reply / router_route) and returns NULL, or returns
 * a stanza error condition for the router to answer with. */
typedef const char *(*iq_fn)(struct iq_request *req);

/* Takes ownership of st. `from` must be stamped; a missing `to` means the sender's own account
 * (RFC 6120 §10.3). origin is the local sending session, if any. */
void router_route(struct stanza *st, struct c2s *origin);
/* Routes a message again after the session it was delivered to died without acknowledging it
 * (XEP-0198): bare-JID rules apply, then offline storage. Hooks see ctx.redelivery. Takes
 * ownership. */
void router_reroute(struct stanza *st);
/* Sends an error reply to orig's sender (never for type='error', RFC 6120 §8.3.1). */
void router_error(const struct stanza *orig, const char *condition, const char *text);
/* Routes a reply built by a handler: takes ownership. Replies to a pre-authentication request
 * (no `from`) go straight back to req->origin. */
void router_reply(struct iq_request *req, struct stanza *reply);

#endif
