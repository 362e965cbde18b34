/* XEP-0280 Message Carbons (urn:xmpp:carbons:2): a client that enables carbons receives a copy
 * of every instant message its account sends or receives on its other resources, wrapped with
 * XEP-0297 forwarding. The enabled state lives in the session slot C2S_SLOT_CARBONS. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/module.h"

#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_HINTS "urn:xmpp:hints"
#define NS_RECEIPTS "urn:xmpp:receipts"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_MARKERS "urn:xmpp:chat-markers:0"
#define NS_MUC_USER "http://jabber.org/protocol/muc#user"
#define NS_CONFERENCE "jabber:x:conference"

/* The slot holds this address while carbons are enabled; nothing is allocated. */
static char enabled_marker;

static bool enabled(const struct c2s *s)
{
    return c2s_slot(s, C2S_SLOT_CARBONS) != NULL;
}

/* XEP-0280 §4, §5: only a client of this server, for its own session. Enabling twice or
 * disabling twice is not an error (§10.1). */
static const char *toggle(struct iq_request *req, bool on)
{
    if (!req->origin || !str_eq(req->from->domain, req->to->domain))
        return "not-allowed";
    if (req->to->local && !jid_bare_equal(req->from, req->to))
        return "not-allowed";
    if (!jid_equal(c2s_jid(req->origin), req->from))
        return "not-allowed";
    c2s_set_slot(req->origin, C2S_SLOT_CARBONS, on ? &enabled_marker : NULL);
    router_reply(req, stanza_iq_result(req->iq));
    return NULL;
}

static const char *enable(struct iq_request *req)
{
    return toggle(req, true);
}

static const char *disable(struct iq_request *req)
{
    return toggle(req, false);
}

static bool has_child_ns(const struct stanza *m, const char *ns)
{
    for (const struct stanza *el = stanza_first_elem(m); el; el = stanza_next_elem(el))
        if (strcmp(el->ns, ns) == 0)
            return true;
    return false;
}

/* XEP-0280 §6.1: is this message one of the instant-messaging kind that carbons copy?
 * `inbound`: the account receives it (otherwise one of its clients sends it). */
static bool eligible(const struct stanza *m, bool inbound)
{
    /* §9 and XEP-0334 §4.3: the sender asked for no copies. */
    if (stanza_child(m, "private", NS_CARBONS) || stanza_child(m, "no-copy", NS_HINTS))
        return false;
    const char *type = stanza_attr(m, "type");
    if (!type)
        type = "normal";
    /* §6.1 MUC rules: groupchat is never copied (the room delivers it to each occupant) ... */
    if (strcmp(type, "groupchat") == 0)
        return false;
    const struct stanza *muc = stanza_child(m, "x", NS_MUC_USER);
    bool invite = muc && stanza_child(muc, "invite", NULL);
    /* ... nor a private message received from an occupant (the room replicates it to every
     * joined client); mediated invitations, which come from the room's bare JID, are. */
    if (inbound && muc && !invite) {
        struct jid from;
        if (jid_parse(stanza_attr(m, "from"), &from) == 0) {
            bool occupant = from.resource != NULL;
            jid_fini(&from);
            if (occupant)
                return false;
        }
    }
    if (strcmp(type, "chat") == 0)
        return true;
    if (strcmp(type, "normal") == 0 && stanza_child(m, "body", NS_CLIENT))
        return true;
    /* Payloads of instant messaging: XEP-0184 receipts, XEP-0085 chat states, XEP-0333 markers;
     * XEP-0249 direct and XEP-0045 mediated invitations. */
    if (has_child_ns(m, NS_RECEIPTS) || has_child_ns(m, NS_CHATSTATES) ||
        has_child_ns(m, NS_MARKERS) || stanza_child(m, "x", NS_CONFERENCE) || invite)
        return true;
    /* An error "sent in response to a message that was eligible": we keep no record of what was
     * sent, so the bounce of a message sent to a bare JID (the usual chat) stands for it. */
    if (inbound && strcmp(type, "error") == 0) {
        struct jid from;
        if (jid_parse(stanza_attr(m, "from"), &from) == 0) {
            bool bare = from.resource == NULL && from.local != NULL;
            jid_fini(&from);
            return bare;
        }
    }
    return false;
}

/* §7 / §8: <message from=BARE to=FULL type=same><received|sent><forwarded>original. Sent
 * straight to the session: a copy that fails must never bounce to the sender (§10.3). */
static void send_copy(struct c2s *s, const struct stanza *m, const char *direction)
{
    struct stanza *w = stanza_new("message", NS_CLIENT);
    char *to = jid_to_string(c2s_jid(s));
    stanza_set_attr(w, "from", c2s_bare(s));
    stanza_set_attr(w, "to", to);
    free(to);
    const char *type = stanza_attr(m, "type");
    if (type)
        stanza_set_attr(w, "type", type);
    struct stanza *d = stanza_add_child(w, direction, NS_CARBONS);
    struct stanza *f = stanza_add_child(d, "forwarded", NS_FORWARD);
    stanza_append(f, stanza_copy(m));
    c2s_deliver(s, w);
    stanza_free(w);
}

/* Did s get the message under RFC 6121 §8.5.2.1.1 bare-JID rules? Mirrors the router: chat and
 * normal go to the available resources of the highest non-negative priority, headline to all
 * of non-negative priority. */
static bool got_by_bare_rules(const struct c2s *s, int best, const char *type)
{
    if (!c2s_available(s) || c2s_priority(s) < 0)
        return false;
    return str_eq(type, "headline") || c2s_priority(s) == best;
}

/* §7: after delivery, a copy to each carbons-enabled resource of the recipient that did not get
 * the original. A message a resource sent to its own account is not copied back to it (§8). */
static int received(struct hook_ctx *ctx)
{
    struct stanza *m = ctx->stanza;
    if (ctx->redelivery || !ctx->bare || !eligible(m, true))
        return HOOK_PASS;
    const char *type = stanza_attr(m, "type");
    int best = -1;
    if (!ctx->session)
        for (struct c2s *s = c2s_first(ctx->bare); s; s = c2s_next(s))
            if (c2s_available(s) && c2s_priority(s) > best)
                best = c2s_priority(s);
    struct jid from;
    bool have_from = jid_parse(stanza_attr(m, "from"), &from) == 0;
    for (struct c2s *s = c2s_first(ctx->bare); s; s = c2s_next(s)) {
        if (!enabled(s) || s == ctx->session)
            continue;
        if (!ctx->session && got_by_bare_rules(s, best, type))
            continue;
        if (have_from && jid_equal(&from, c2s_jid(s)))
            continue;
        send_copy(s, m, "received");
    }
    if (have_from)
        jid_fini(&from);
    return HOOK_PASS;
}

/* §8: a copy of what a client sends to its account's other carbons-enabled resources, whether
 * or not the sender enabled carbons. Messages to the account itself are copied on the way in
 * (received), so every resource gets exactly one copy. */
static int sent(struct hook_ctx *ctx)
{
    struct stanza *m = ctx->stanza;
    if (strcmp(m->name, "message") != 0 || !ctx->session || !eligible(m, false))
        return HOOK_PASS;
    const char *to_s = stanza_attr(m, "to");
    if (!to_s)
        return HOOK_PASS;
    struct jid to;
    if (jid_parse(to_s, &to) < 0)
        return HOOK_PASS;
    bool self = jid_bare_equal(&to, c2s_jid(ctx->session));
    jid_fini(&to);
    if (self)
        return HOOK_PASS;
    for (struct c2s *s = c2s_first(ctx->bare); s; s = c2s_next(s))
        if (s != ctx->session && enabled(s))
            send_copy(s, m, "sent");
    return HOOK_PASS;
}

static int session_closed(struct hook_ctx *ctx)
{
    c2s_set_slot(ctx->session, C2S_SLOT_CARBONS, NULL);
    return HOOK_PASS;
}

static const char *const features[] = {NS_CARBONS, NULL};

/* Clients send the request without 'to' (their own account, RFC 6120 §10.3); some address the
 * server. */
static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_CARBONS, "enable", NULL, enable},
    {IQ_ACCOUNT, NS_CARBONS, "disable", NULL, disable},
    {IQ_HOST, NS_CARBONS, "enable", NULL, enable},
    {IQ_HOST, NS_CARBONS, "disable", NULL, disable},
    {0},
};

/* Priorities on HOOK_CLIENT_STANZA: mod_mam stamps its archive id at 20 and strips it again at
 * -100, so the sent copy carries the sender's <stanza-id/> (XEP-0313 §3.5) and the routed
 * original does not. */
static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 10, sent},
    {HOOK_MESSAGE_DELIVERED, 0, received},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {0},
};

const struct module mod_carbons = {
    .name = "carbons",
    .host_features = features,
    .iqs = iqs,
    .hooks = hooks,
};
