/* RFC 6121 §3 and §4: presence subscriptions and presence.
 *
 * Outbound (from a local client): availability is broadcast to the contacts subscribed to the
 * user and to the user's own resources; initial presence probes the contacts the user is
 * subscribed to; directed presence is remembered so those entities learn when the session ends;
 * subscription stanzas are stamped with the bare JID, change the user's roster (Appendix A
 * "outbound" tables) and are routed. Inbound (for a local account): subscription stanzas change
 * the roster (Appendix A "inbound" tables) and reach the user, or wait for the next login;
 * probes are answered when the prober is subscribed. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/hmap.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/roster.h"
#include "isthmus/server.h"

struct presence_state {
    struct stanza *last;  /* the last available presence the session broadcast, or NULL */
    bool initial_done;    /* has sent available presence at least once */
    struct hmap directed; /* JIDs sent directed available presence (RFC 6121 §4.6) */
};

static struct presence_state *state_of(struct c2s *s)
{
    struct presence_state *ps = c2s_slot(s, C2S_SLOT_PRESENCE);
    if (!ps) {
        ps = xcalloc(1, sizeof *ps);
        hmap_init(&ps->directed);
        c2s_set_slot(s, C2S_SLOT_PRESENCE, ps);
    }
    return ps;
}

static bool is_subscription_type(const char *type)
{
    return type && (strcmp(type, "subscribe") == 0 || strcmp(type, "subscribed") == 0 ||
                    strcmp(type, "unsubscribe") == 0 || strcmp(type, "unsubscribed") == 0);
}

/* Sends a copy of p, addressed to `to`, through the router. */
static void route_copy(const struct stanza *p, const char *from, const char *to)
{
    struct stanza *c = stanza_copy(p);
    stanza_set_attr(c, "from", from);
    stanza_set_attr(c, "to", to);
    router_route(c, NULL);
}

static struct stanza *presence_new(const char *from, const char *to, const char *type)
{
    struct stanza *p = stanza_new("presence", NS_CLIENT);
    stanza_set_attr(p, "from", from);
    stanza_set_attr(p, "to", to);
    if (type)
        stanza_set_attr(p, "type", type);
    return p;
}

/* ---- broadcast ---- */

struct bcast {
    const struct stanza *p;
    const char *from;
    struct hmap *skip; /* contacts already covered (directed presence) */
};

static int to_subscriber(void *ud, const struct roster_item *it)
{
    struct bcast *b = ud;
    if (it->sub != ROSTER_FROM && it->sub != ROSTER_BOTH)
        return 0;
    if (b->skip)
        hmap_del(b->skip, it->jid);
    route_copy(b->p, b->from, it->jid);
    return 0;
}

static int probe_contact(void *ud, const struct roster_item *it)
{
    const char *bare = ud;
    if (it->sub == ROSTER_TO || it->sub == ROSTER_BOTH) {
        /* RFC 6121 §4.3.1: probes come from the bare JID. */
        router_route(presence_new(bare, it->jid, "probe"), NULL);
    }
    return 0;
}

static int deliver_pending(void *ud, const struct roster_item *it)
{
    struct c2s *s = ud;
    if (!it->pending_in)
        return 0;
    /* RFC 6121 §3.1.3: a request that arrived while the user was offline is delivered at the
     * next available presence. */
    struct stanza *p = presence_new(it->jid, c2s_bare(s), "subscribe");
    c2s_deliver(s, p);
    stanza_free(p);
    return 0;
}

/* The user's own resources all see each other's presence (RFC 6121 §4.2.2, §4.4.2). */
static void to_own_resources(struct c2s *sender, const struct stanza *p, const char *from)
{
    for (struct c2s *s = c2s_first(c2s_bare(sender)); s; s = c2s_next(s)) {
        if (!c2s_available(s) && s != sender)
            continue;
        struct stanza *c = stanza_copy(p);
        stanza_set_attr(c, "from", from);
        char *to = jid_to_string(c2s_jid(s));
        stanza_set_attr(c, "to", to);
        free(to);
        c2s_deliver(s, c);
        stanza_free(c);
    }
}

static void send_others_to_new(struct c2s *fresh)
{
    for (struct c2s *s = c2s_first(c2s_bare(fresh)); s; s = c2s_next(s)) {
        struct presence_state *ps = c2s_slot(s, C2S_SLOT_PRESENCE);
        if (s == fresh || !c2s_available(s) || !ps || !ps->last)
            continue;
        struct stanza *c = stanza_copy(ps->last);
        char *to = jid_to_string(c2s_jid(fresh));
        stanza_set_attr(c, "to", to);
        free(to);
        c2s_deliver(fresh, c);
        stanza_free(c);
    }
}

/* Unavailable presence to the entities that got directed presence and are not subscribers. */
static void end_directed(struct presence_state *ps, const struct stanza *unavail, const char *from)
{
    size_t i = 0;
    const char *k;
    void *v;
    while (hmap_next(&ps->directed, &i, &k, &v))
        route_copy(unavail, from, k);
    hmap_fini(&ps->directed);
    hmap_init(&ps->directed);
}

static void broadcast(struct c2s *s, struct stanza *p, bool available)
{
    const struct jid *me = c2s_jid(s);
    char *from = jid_to_string(me);
    struct presence_state *ps = state_of(s);
    bool initial = available && !c2s_available(s);
    if (available) {
        char *prio = stanza_child_text(p, "priority", NULL);
        long v = prio ? strtol(prio, NULL, 10) : 0;
        free(prio);
        /* RFC 6121 §4.7.2.3: -128..127. */
        c2s_set_presence(s, true, v < -128 ? -128 : v > 127 ? 127 : (int)v);
        stanza_free(ps->last);
        ps->last = stanza_copy(p);
        stanza_set_attr(ps->last, "from", from);
        stanza_set_attr(ps->last, "to", NULL);
    }
    struct bcast b = {p, from, available ? NULL : &ps->directed};
    roster_each(me->domain, me->local, to_subscriber, &b);
    to_own_resources(s, p, from);
    if (!available) {
        end_directed(ps, p, from);
        c2s_set_presence(s, false, 0);
        stanza_free(ps->last);
        ps->last = NULL;
    } else if (initial) {
        const char *bare = c2s_bare(s);
        roster_each(me->domain, me->local, probe_contact, (void *)bare);
        send_others_to_new(s);
        roster_each(me->domain, me->local, deliver_pending, s);
        if (!ps->initial_done) {
            ps->initial_done = true;
            struct hook_ctx ctx = {.session = s, .to = me, .bare = bare};
            hooks_fire(HOOK_INITIAL_PRESENCE, &ctx);
        }
    }
    free(from);
}

/* ---- outbound subscription stanzas (RFC 6121 §3, Appendix A.2 / A.4) ---- */

static void outbound_subscription(struct c2s *s, struct stanza *p, const char *type,
                                  const char *contact)
{
    const struct jid *me = c2s_jid(s);
    const char *bare = c2s_bare(s);
    struct roster_item it;
    int rc = roster_get(me->domain, me->local, contact, &it);
    if (rc < 0)
        return;
    if (rc == 1) {
        memset(&it, 0, sizeof it);
        it.jid = xstrdup(contact);
    }
    bool changed = false, route = true;
    if (strcmp(type, "subscribe") == 0) {
        /* A.2.1: None/From gain pending-out; the request is routed in every state. */
        if ((it.sub == ROSTER_NONE || it.sub == ROSTER_FROM) && !it.ask) {
            it.ask = true;
            changed = true;
        }
        if (!it.in_roster) {
            if ((unsigned long)roster_count(me->domain, me->local) >= server.cfg.roster_max_items) {
                router_error(p, "not-allowed", "Your roster is full");
                roster_item_fini(&it);
                return;
            }
            it.in_roster = true;
            changed = true;
        }
    } else if (strcmp(type, "subscribed") == 0) {
        if (it.pending_in) {
            /* A.2.2: approve the contact's request. */
            it.sub = it.sub == ROSTER_TO ? ROSTER_BOTH : ROSTER_FROM;
            it.pending_in = false;
            it.in_roster = true;
            changed = true;
        } else if (it.sub == ROSTER_NONE || it.sub == ROSTER_TO) {
            /* RFC 6121 §3.4: pre-approval, kept on our side, not routed; the item becomes
             * visible with approved='true' (§3.4.1). */
            if (!it.approved || !it.in_roster) {
                it.approved = true;
                it.in_roster = true;
                changed = true;
            }
            route = false;
        } else {
            route = false; /* already subscribed: nothing to say */
        }
    } else if (strcmp(type, "unsubscribe") == 0) {
        /* A.2.3: the user stops receiving the contact's presence. */
        if (it.sub == ROSTER_TO || it.sub == ROSTER_BOTH || it.ask) {
            it.sub = it.sub == ROSTER_BOTH ? ROSTER_FROM : it.sub == ROSTER_TO ? ROSTER_NONE : it.sub;
            it.ask = false;
            changed = true;
        }
    } else { /* unsubscribed */
        /* A.2.4: cancel or deny the contact's subscription to the user. */
        if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH || it.pending_in || it.approved) {
            bool had = it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH;
            it.sub = it.sub == ROSTER_BOTH ? ROSTER_TO : it.sub == ROSTER_FROM ? ROSTER_NONE : it.sub;
            it.pending_in = false;
            it.approved = false;
            changed = true;
            if (had) {
                /* RFC 6121 §3.2.2: the contact learns the user is gone for them. */
                for (struct c2s *r = c2s_first(bare); r; r = c2s_next(r)) {
                    if (!c2s_available(r))
                        continue;
                    char *rf = jid_to_string(c2s_jid(r));
                    router_route(presence_new(rf, contact, "unavailable"), NULL);
                    free(rf);
                }
            }
        }
    }
    if (changed)
        roster_put(me->domain, me->local, &it);
    if (route) {
        /* RFC 6121 §3.1.2: subscription stanzas leave with the bare JID. */
        struct stanza *c = stanza_copy(p);
        stanza_set_attr(c, "from", bare);
        stanza_set_attr(c, "to", contact);
        router_route(c, s);
    }
    /* RFC 6121 §3.1.5: after approving, the contact gets the user's current presence. */
    if (strcmp(type, "subscribed") == 0 && route) {
        for (struct c2s *r = c2s_first(bare); r; r = c2s_next(r)) {
            struct presence_state *ps = c2s_slot(r, C2S_SLOT_PRESENCE);
            if (c2s_available(r) && ps && ps->last)
                route_copy(ps->last, stanza_attr(ps->last, "from"), contact);
        }
    }
    roster_item_fini(&it);
}

static int client_presence(struct hook_ctx *ctx)
{
    struct stanza *p = ctx->stanza;
    if (strcmp(p->name, "presence") != 0)
        return HOOK_PASS;
    struct c2s *s = ctx->session;
    const char *to = stanza_attr(p, "to");
    const char *type = stanza_attr(p, "type");
    if (!to) {
        if (!type)
            broadcast(s, p, true);
        else if (strcmp(type, "unavailable") == 0)
            broadcast(s, p, false);
        /* Other types without 'to' have no meaning (RFC 6121 §4.7.1); dropped. */
        return HOOK_DONE;
    }
    if (is_subscription_type(type)) {
        struct jid j;
        if (jid_parse(to, &j) < 0)
            return HOOK_PASS; /* the router answers jid-malformed */
        char *contact = jid_bare_string(&j);
        jid_fini(&j);
        outbound_subscription(s, p, type, contact);
        free(contact);
        return HOOK_DONE;
    }
    if (!type || strcmp(type, "unavailable") == 0) {
        /* RFC 6121 §4.6: directed presence; remember who must hear about our departure. */
        struct presence_state *ps = state_of(s);
        if (!type)
            hmap_put(&ps->directed, to, (void *)1);
        else
            hmap_del(&ps->directed, to);
    }
    return HOOK_PASS; /* routed as is */
}

/* ---- inbound (RFC 6121 §3, Appendix A.3 / A.5; §4.3 probes) ---- */

static void deliver_to_available(const char *bare, const struct stanza *p)
{
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s))
        if (c2s_available(s))
            c2s_deliver(s, p);
}

static void answer_probe(const struct jid *user, const char *bare, const char *prober)
{
    if (!roster_subscribed_from(user->domain, user->local, prober))
        return; /* RFC 6121 §4.3.2: presence is not revealed to non-subscribers */
    bool any = false;
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s)) {
        struct presence_state *ps = c2s_slot(s, C2S_SLOT_PRESENCE);
        if (!c2s_available(s) || !ps || !ps->last)
            continue;
        route_copy(ps->last, stanza_attr(ps->last, "from"), prober);
        any = true;
    }
    if (!any)
        router_route(presence_new(bare, prober, "unavailable"), NULL);
}

/* Answers a subscription request the user approved in advance (already subscribed, or
 * pre-approved, RFC 6121 §3.1.3 and §3.4): `subscribed`, then, as after any approval
 * (§3.1.5), the user's current presence. */
static void auto_approve(const char *bare, const char *contact)
{
    router_route(presence_new(bare, contact, "subscribed"), NULL);
    for (struct c2s *r = c2s_first(bare); r; r = c2s_next(r)) {
        struct presence_state *ps = c2s_slot(r, C2S_SLOT_PRESENCE);
        if (c2s_available(r) && ps && ps->last)
            route_copy(ps->last, stanza_attr(ps->last, "from"), contact);
    }
}

static int inbound_presence(struct hook_ctx *ctx)
{
    struct stanza *p = ctx->stanza;
    const char *type = stanza_attr(p, "type");
    const struct jid *user = ctx->to;
    struct jid from;
    if (jid_parse(stanza_attr(p, "from"), &from) < 0)
        return HOOK_DONE;
    char *contact = jid_bare_string(&from);
    jid_fini(&from);
    int result = HOOK_DONE;
    if (type && strcmp(type, "probe") == 0) {
        answer_probe(user, ctx->bare, contact);
    } else if (is_subscription_type(type)) {
        struct roster_item it;
        int rc = roster_get(user->domain, user->local, contact, &it);
        if (rc < 0)
            goto out;
        if (rc == 1) {
            memset(&it, 0, sizeof it);
            it.jid = xstrdup(contact);
        }
        bool changed = false, deliver = false;
        /* Deliver with the bare JID the contact's server stamped (RFC 6121 §3.1.3). */
        stanza_set_attr(p, "from", contact);
        if (strcmp(type, "subscribe") == 0) {
            if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH) {
                auto_approve(ctx->bare, contact); /* already approved (§3.1.3) */
            } else if (it.approved) {
                it.sub = it.sub == ROSTER_TO ? ROSTER_BOTH : ROSTER_FROM;
                it.approved = false;
                it.in_roster = true;
                changed = true;
                roster_put(user->domain, user->local, &it);
                changed = false;
                auto_approve(ctx->bare, contact); /* pre-approved (§3.4) */
            } else {
                if (!it.pending_in) {
                    it.pending_in = true;
                    changed = true;
                }
                deliver = true;
            }
        } else if (strcmp(type, "subscribed") == 0) {
            if (it.ask) { /* A.3.2: only an answer to our request counts */
                it.sub = it.sub == ROSTER_FROM ? ROSTER_BOTH : ROSTER_TO;
                it.ask = false;
                changed = deliver = true;
            }
        } else if (strcmp(type, "unsubscribe") == 0) {
            if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH || it.pending_in) {
                bool had = it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH;
                it.sub = it.sub == ROSTER_BOTH ? ROSTER_TO : it.sub == ROSTER_FROM ? ROSTER_NONE
                                                                                  : it.sub;
                it.pending_in = false;
                changed = deliver = true;
                if (had) {
                    /* RFC 6121 §3.3.3: the contact stops seeing the user. */
                    for (struct c2s *r = c2s_first(ctx->bare); r; r = c2s_next(r)) {
                        if (!c2s_available(r))
                            continue;
                        char *rf = jid_to_string(c2s_jid(r));
                        router_route(presence_new(rf, contact, "unavailable"), NULL);
                        free(rf);
                    }
                }
            }
        } else { /* unsubscribed */
            if (it.sub == ROSTER_TO || it.sub == ROSTER_BOTH || it.ask) {
                it.sub = it.sub == ROSTER_BOTH ? ROSTER_FROM : it.sub == ROSTER_TO ? ROSTER_NONE
                                                                                  : it.sub;
                it.ask = false;
                changed = deliver = true;
            }
        }
        if (changed) {
            if (!it.in_roster && it.pending_in &&
                (unsigned long)roster_count(user->domain, user->local) >=
                    server.cfg.roster_max_items) {
                router_error(p, "resource-constraint", "The contact's roster is full");
                roster_item_fini(&it);
                goto out;
            }
            roster_put(user->domain, user->local, &it);
        }
        if (deliver)
            deliver_to_available(ctx->bare, p);
        roster_item_fini(&it);
    } else {
        result = HOOK_PASS; /* availability and errors: delivered by the router (§8.5) */
    }
out:
    free(contact);
    return result;
}

/* A session that ends while available says goodbye like an explicit unavailable. */
static int session_closed(struct hook_ctx *ctx)
{
    struct c2s *s = ctx->session;
    struct presence_state *ps = c2s_slot(s, C2S_SLOT_PRESENCE);
    if (c2s_available(s)) {
        char *from = jid_to_string(c2s_jid(s));
        struct stanza *p = presence_new(from, NULL, "unavailable");
        stanza_set_attr(p, "to", NULL);
        broadcast(s, p, false);
        stanza_free(p);
        free(from);
    }
    if (ps) {
        stanza_free(ps->last);
        hmap_fini(&ps->directed);
        free(ps);
        c2s_set_slot(s, C2S_SLOT_PRESENCE, NULL);
    }
    return HOOK_PASS;
}

static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 0, client_presence},
    {HOOK_PRESENCE_IN, 0, inbound_presence},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {0},
};

const struct module mod_presence = {
    .name = "presence",
    .hooks = hooks,
};
