/* XEP-0352: client state indication. While a client says it is <inactive/>, stanzas that can
 * wait — availability presence (only the latest per sender is kept) and messages that carry
 * nothing but chat states (XEP-0085) — are held back in a bounded queue; anything else flushes
 * the queue first, in order, then goes out. <active/> flushes too. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/module.h"

#define NS_CSI "urn:xmpp:csi:0"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_FORWARD "urn:xmpp:forward:0"

/* Held stanzas per session; reaching it flushes (the client gets its traffic late, never lost). */
#define CSI_MAX_HELD 100

struct held {
    struct stanza *st;
    struct held *next;
};

struct csi {
    bool inactive;
    struct held *head;
    size_t count;
};

static struct csi *state(struct c2s *s)
{
    return c2s_slot(s, C2S_SLOT_CSI);
}

/* Sends everything held, oldest first. The list is detached first: sending may come back into
 * the filter (it does not hold while flushing, as the list is empty then). */
static void flush(struct c2s *s, struct csi *c)
{
    struct held *h = c->head;
    c->head = NULL;
    c->count = 0;
    while (h) {
        struct held *next = h->next;
        c2s_deliver_now(s, h->st);
        stanza_free(h->st);
        free(h);
        h = next;
    }
}

static void drop_all(struct csi *c)
{
    while (c->head) {
        struct held *h = c->head;
        c->head = h->next;
        stanza_free(h->st);
        free(h);
    }
    c->count = 0;
}

/* A message whose only payload is a chat state (XEP-0085 §5.1: no body), looking into a
 * carbon's forwarded message (XEP-0280) the same way. Delivery hints, ids, delay and thread are
 * not payload. */
static bool only_chat_state(const struct stanza *msg)
{
    if (str_eq(stanza_attr(msg, "type"), "error"))
        return false;
    const struct stanza *carbon = stanza_child(msg, "sent", NS_CARBONS);
    if (!carbon)
        carbon = stanza_child(msg, "received", NS_CARBONS);
    if (carbon) {
        const struct stanza *fwd = stanza_child(carbon, "forwarded", NS_FORWARD);
        const struct stanza *inner = fwd ? stanza_child(fwd, "message", NULL) : NULL;
        return inner && only_chat_state(inner);
    }
    bool state = false;
    for (const struct stanza *c = stanza_first_elem(msg); c; c = stanza_next_elem(c)) {
        if (strcmp(c->ns, NS_CHATSTATES) == 0)
            state = true;
        else if (!(strcmp(c->ns, "urn:xmpp:hints") == 0 || strcmp(c->ns, "urn:xmpp:sid:0") == 0 ||
                   strcmp(c->ns, "urn:xmpp:delay") == 0 ||
                   (strcmp(c->name, "thread") == 0 && strcmp(c->ns, NS_CLIENT) == 0)))
            return false;
    }
    return state;
}

/* Availability presence (RFC 6121 §4): no type, or unavailable. Subscription requests and
 * errors are for the user now. */
static bool is_availability(const struct stanza *p)
{
    const char *type = stanza_attr(p, "type");
    return !type || strcmp(type, "unavailable") == 0;
}

static bool hold(struct c2s *s, const struct stanza *st)
{
    struct csi *c = state(s);
    if (!c || !c->inactive)
        return false;
    bool presence = strcmp(st->name, "presence") == 0 && is_availability(st);
    bool waits = presence || (strcmp(st->name, "message") == 0 && only_chat_state(st));
    if (!waits || c->count >= CSI_MAX_HELD) {
        flush(s, c);
        return false;
    }
    struct held **tail = &c->head;
    if (presence) {
        /* Only the latest presence of each sender matters; it moves to the end. */
        const char *from = stanza_attr(st, "from");
        while (*tail) {
            struct held *h = *tail;
            if (strcmp(h->st->name, "presence") == 0 && str_eq(stanza_attr(h->st, "from"), from)) {
                *tail = h->next;
                stanza_free(h->st);
                free(h);
                c->count--;
                continue;
            }
            tail = &h->next;
        }
    } else {
        while (*tail)
            tail = &(*tail)->next;
    }
    struct held *h = xcalloc(1, sizeof *h);
    h->st = stanza_copy(st);
    *tail = h;
    c->count++;
    return true;
}

/* XEP-0352 §5.2: a resumed stream starts active. */
static void resumed(struct c2s *s)
{
    struct csi *c = state(s);
    if (c && c->inactive) {
        c->inactive = false;
        flush(s, c);
    }
}

static const struct c2s_output_filter csi_filter = {hold, resumed};

static int nonza(struct hook_ctx *ctx)
{
    struct stanza *el = ctx->stanza;
    if (strcmp(el->ns, NS_CSI) != 0)
        return HOOK_PASS;
    bool inactive = strcmp(el->name, "inactive") == 0;
    if (!inactive && strcmp(el->name, "active") != 0)
        return HOOK_PASS;
    /* The state belongs to a session: before binding there is none to apply it to. */
    if (!c2s_jid(ctx->session))
        return HOOK_DONE;
    struct csi *c = state(ctx->session);
    if (!c) {
        if (!inactive)
            return HOOK_DONE; /* streams start active (§4.2) */
        c = xcalloc(1, sizeof *c);
        c2s_set_slot(ctx->session, C2S_SLOT_CSI, c);
    }
    c->inactive = inactive;
    if (!inactive)
        flush(ctx->session, c);
    return HOOK_DONE;
}

static int features(struct hook_ctx *ctx)
{
    buf_puts(ctx->out, "<csi xmlns='" NS_CSI "'/>"); /* XEP-0352 §4.1 */
    return HOOK_PASS;
}

static int session_closed(struct hook_ctx *ctx)
{
    struct csi *c = state(ctx->session);
    if (c) {
        drop_all(c);
        free(c);
        c2s_set_slot(ctx->session, C2S_SLOT_CSI, NULL);
    }
    return HOOK_PASS;
}

static int init(void)
{
    c2s_set_output_filter(&csi_filter);
    return 0;
}

static void fini(void)
{
    c2s_set_output_filter(NULL);
}

static const struct module_hook hooks[] = {
    {HOOK_NONZA, 0, nonza},
    {HOOK_STREAM_FEATURES, 0, features},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {0},
};

const struct module mod_csi = {
    .name = "csi",
    .hooks = hooks,
    .init = init,
    .fini = fini,
};
