#include "isthmus/router.h"

#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/account.h"
#include "isthmus/component.h"
#include "isthmus/hooks.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/muc.h"
#include "isthmus/s2s.h"
#include "isthmus/server.h"

void router_error(const struct stanza *orig, const char *condition, const char *text)
{
    if (str_eq(stanza_attr(orig, "type"), "error") || !stanza_attr(orig, "from"))
        return;
    struct stanza *err = stanza_error_reply(orig, condition, NULL, text);
    router_route(err, NULL);
}

void router_reply(struct iq_request *req, struct stanza *reply)
{
    if (!req->from && req->origin) {
        stanza_set_attr(reply, "to", NULL);
        c2s_send_preauth(req->origin, reply);
        stanza_free(reply);
        return;
    }
    router_route(reply, req->origin);
}

/* An IQ for a host or for an account's bare JID: exactly one payload element for get/set
 * (RFC 6120 §8.2.3); results and errors addressed to us end here. */
static void handle_iq(struct stanza *iq, const struct jid *to, enum iq_target target,
                      struct c2s *origin)
{
    const char *type = stanza_attr(iq, "type");
    if (!str_eq(type, "get") && !str_eq(type, "set"))
        return;
    struct stanza *payload = stanza_first_elem(iq);
    if (!payload || stanza_next_elem(payload)) {
        router_error(iq, "bad-request", "An IQ get or set carries exactly one payload");
        return;
    }
    struct jid from;
    if (jid_parse(stanza_attr(iq, "from"), &from) < 0) {
        log_warn(NULL, "dropping IQ with unparseable from");
        return;
    }
    struct iq_request req = {.iq = iq, .payload = payload, .from = &from, .to = to, .origin = origin};
    const char *cond = modules_dispatch_iq(target, &req);
    if (cond)
        router_error(iq, cond, NULL);
    jid_fini(&from);
}

/* RFC 6121 §8.5.2.1.1: chat/normal go to the available resources of highest non-negative
 * priority — all of them when tied; headline to all with non-negative priority. Returns the
 * number of sessions that got it. */
static int deliver_to_bare(const char *bare, const struct stanza *st, bool all_nonnegative)
{
    int best = -1;
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s))
        if (c2s_available(s) && c2s_priority(s) > best)
            best = c2s_priority(s);
    if (best < 0)
        return 0;
    int n = 0;
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s)) {
        if (!c2s_available(s) || c2s_priority(s) < 0)
            continue;
        if (all_nonnegative || c2s_priority(s) == best) {
            c2s_deliver(s, st);
            n++;
        }
    }
    return n;
}

static bool rerouting; /* router_reroute() is on the stack */

static void delivered(struct stanza *st, const struct jid *to, const char *bare,
                      struct c2s *session)
{
    struct hook_ctx ctx = {.stanza = st, .session = session, .to = to, .bare = bare,
                           .redelivery = rerouting};
    hooks_fire(HOOK_MESSAGE_DELIVERED, &ctx);
}

static void route_message(struct stanza *st, const struct jid *to, const char *bare)
{
    struct hook_ctx in = {.stanza = st, .to = to, .bare = bare, .redelivery = rerouting};
    if (hooks_fire(HOOK_MESSAGE_IN, &in) == HOOK_DONE)
        return;
    const char *type = stanza_attr(st, "type");
    if (!type)
        type = "normal";
    if (to->resource) {
        struct c2s *s = c2s_find(bare, to->resource);
        if (s) {
            c2s_deliver(s, st);
            delivered(st, to, bare, s);
            return;
        }
        /* RFC 6121 §8.5.3.2.1: no such resource. */
        if (strcmp(type, "groupchat") == 0) {
            router_error(st, "service-unavailable", NULL);
            return;
        }
        if (strcmp(type, "headline") == 0 || strcmp(type, "error") == 0)
            return;
    }
    if (strcmp(type, "error") == 0) {
        /* Errors to a bare JID: deliver like chat if anyone is there, never answer. */
        deliver_to_bare(bare, st, false);
        return;
    }
    if (strcmp(type, "groupchat") == 0) {
        router_error(st, "service-unavailable", NULL);
        return;
    }
    int n = deliver_to_bare(bare, st, strcmp(type, "headline") == 0);
    if (n > 0) {
        delivered(st, to, bare, NULL);
        return;
    }
    if (strcmp(type, "headline") == 0)
        return;
    /* RFC 6121 §8.5.2.2.1: nobody available — offline storage, or service-unavailable. */
    struct hook_ctx off = {.stanza = st, .to = to, .bare = bare, .redelivery = rerouting};
    if (hooks_fire(HOOK_MESSAGE_OFFLINE, &off) != HOOK_DONE)
        router_error(st, "service-unavailable", NULL);
}

static void route_presence(struct stanza *st, const struct jid *to, const char *bare)
{
    struct hook_ctx in = {.stanza = st, .to = to, .bare = bare};
    if (hooks_fire(HOOK_PRESENCE_IN, &in) == HOOK_DONE)
        return;
    const char *type = stanza_attr(st, "type");
    /* Without a roster module only directed availability would be delivered. */
    if (type && strcmp(type, "unavailable") != 0 && strcmp(type, "error") != 0)
        return;
    if (to->resource) {
        struct c2s *s = c2s_find(bare, to->resource);
        if (s)
            c2s_deliver(s, st);
        return;
    }
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s))
        if (c2s_available(s) && c2s_priority(s) >= 0)
            c2s_deliver(s, st);
}

static int iq_in(struct stanza *st, const struct jid *to, const char *bare)
{
    struct hook_ctx in = {.stanza = st, .to = to, .bare = bare};
    return hooks_fire(HOOK_IQ_IN, &in);
}

void router_route(struct stanza *st, struct c2s *origin)
{
    const char *to_s = stanza_attr(st, "to");
    struct jid to;
    if (!to_s) {
        /* RFC 6120 §10.3: no 'to' = the sender's own account. */
        struct jid from;
        if (jid_parse(stanza_attr(st, "from"), &from) < 0) {
            stanza_free(st);
            return;
        }
        free(from.resource);
        from.resource = NULL;
        to = from;
    } else if (jid_parse(to_s, &to) < 0) {
        router_error(st, "jid-malformed", NULL);
        stanza_free(st);
        return;
    }
    const char *kind = st->name;
    if (component_handles(to.domain)) {
        jid_fini(&to);
        component_route(st); /* XEP-0114: the component's domain and its subdomains */
        return;
    }
    if (muc_is_service(to.domain)) {
        jid_fini(&to);
        muc_route(st); /* XEP-0045: rooms and occupants of a [muc] service */
        return;
    }
    if (!server_is_local_host(to.domain)) {
        jid_fini(&to);
        s2s_route(st);
        return;
    }
    if (!to.local) {
        if (strcmp(kind, "iq") == 0)
            handle_iq(st, &to, IQ_HOST, origin);
        /* Messages and presence to the server itself are not used by any feature yet. */
        goto done;
    }
    char *bare = jid_bare_string(&to);
    bool online = c2s_first(bare) != NULL;
    int exists = online ? 1 : account_exists(server.db, to.domain, to.local);
    if (exists != 1) {
        /* RFC 6121 §8.5.1: no such account (or storage failure: answer as if none). */
        if (strcmp(kind, "presence") != 0)
            router_error(st, exists < 0 ? "internal-server-error" : "service-unavailable", NULL);
    } else if (strcmp(kind, "message") == 0) {
        route_message(st, &to, bare);
    } else if (strcmp(kind, "presence") == 0) {
        route_presence(st, &to, bare);
    } else if (iq_in(st, &to, bare) == HOOK_DONE) {
        /* consumed by a module (e.g. XEP-0191 blocking) */
    } else if (to.resource) {
        struct c2s *s = c2s_find(bare, to.resource);
        const char *type = stanza_attr(st, "type");
        if (s)
            c2s_deliver(s, st);
        else if (str_eq(type, "get") || str_eq(type, "set"))
            router_error(st, "service-unavailable", NULL); /* RFC 6121 §8.5.3.2.2 */
    } else {
        handle_iq(st, &to, IQ_ACCOUNT, origin);
    }
    free(bare);
done:
    jid_fini(&to);
    stanza_free(st);
}

void router_reroute(struct stanza *st)
{
    rerouting = true;
    router_route(st, NULL);
    rerouting = false;
}
