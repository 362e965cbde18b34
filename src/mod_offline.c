/* XEP-0160 offline messages: a chat or normal message for an account with no available resource
 * is stored (archive store "offline", stamped with a XEP-0203 delay) and delivered, in order, to
 * the first resource that sends available presence with a non-negative priority.
 *
 * Delivery semantics. Each batch is read, deleted in one transaction, and only then queued to the
 * session; the queued bytes leave before the loop sleeps. A crash before the commit leaves the
 * batch stored and nothing sent (it is delivered at the next login); a crash or a dropped
 * connection after it loses what the client had not yet read, unless XEP-0198 is in use: the
 * stream-management module re-routes unacknowledged stanzas when a session dies
 * (router_reroute), and they come back here, stored once more with their original delay stamp.
 * Without stream management this is at-most-once, as in Prosody and ejabberd; with it, no message
 * is lost and none is stored twice. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/server.h"
#include "isthmus/xmlstream.h"

#define NS_DELAY "urn:xmpp:delay"
#define NS_HINTS "urn:xmpp:hints"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_SID "urn:xmpp:sid:0"
#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_MAM "urn:xmpp:mam:2"
#define STORE "offline"

/* One batch: at most this many messages, and while the session's unread output stays under half
 * of max_output_buffer (a client is dropped past the whole of it). */
#define BATCH_ITEMS 50
#define RETRY_MS 50

static bool active(void)
{
    return server.cfg.offline_max_messages > 0;
}

/* ---- parsing a stored stanza ---- */

static struct stanza *parse_stored(const char *xml, size_t len)
{
    return xmlstream_parse_element(xml, len, server.cfg.max_depth + 8);
}

/* ---- storing ---- */

/* XEP-0160 §3 and XEP-0085: a message carrying nothing but a chat state (and hints, thread,
 * XEP-0359 ids) is not worth keeping. */
static bool worth_storing(const struct stanza *m)
{
    if (stanza_child(m, "store", NS_HINTS))
        return true; /* XEP-0334 §4.4 */
    for (const struct stanza *el = stanza_first_elem(m); el; el = stanza_next_elem(el)) {
        if (strcmp(el->ns, NS_CHATSTATES) == 0 || strcmp(el->ns, NS_HINTS) == 0 ||
            strcmp(el->ns, NS_SID) == 0)
            continue;
        if (strcmp(el->ns, NS_CLIENT) == 0 && strcmp(el->name, "thread") == 0)
            continue;
        return true;
    }
    return false;
}

/* A re-routed copy that was ours to begin with: a carbon copy or an archive query result sent
 * to a session that died. The original is stored elsewhere (the archive, or the other resource);
 * keeping the copy would deliver it twice. */
static bool is_server_copy(const struct stanza *m, const char *bare)
{
    if (!str_eq(stanza_attr(m, "from"), bare))
        return false;
    return stanza_child(m, "received", NS_CARBONS) || stanza_child(m, "sent", NS_CARBONS) ||
           stanza_child(m, "result", NS_MAM);
}

static bool has_our_delay(const struct stanza *m, const char *host)
{
    for (const struct stanza *el = stanza_first_elem(m); el; el = stanza_next_elem(el))
        if (strcmp(el->name, "delay") == 0 && strcmp(el->ns, NS_DELAY) == 0 &&
            str_eq(stanza_attr(el, "from"), host))
            return true;
    return false;
}

static int store(struct hook_ctx *ctx)
{
    const struct stanza *m = ctx->stanza;
    const char *host = ctx->to->domain, *user = ctx->to->local;
    if (ctx->redelivery && is_server_copy(m, ctx->bare))
        return HOOK_DONE;
    /* XEP-0334 §4.2: not even stored temporarily; the sender learns it was not delivered. */
    if (stanza_child(m, "no-store", NS_HINTS))
        return HOOK_PASS;
    /* XEP-0160 §3: standalone chat states SHOULD NOT be stored. They are dropped silently: an
     * error for every typing notification would tell the sender nothing a body does not. */
    if (!worth_storing(m))
        return HOOK_DONE;
    int64_t n = storage_archive_count(server.db, host, user, STORE);
    if (n < 0)
        return HOOK_PASS;
    if ((uint64_t)n >= server.cfg.offline_max_messages) {
        /* XEP-0160 §2 step 3: the queue is full, the sender gets service-unavailable. */
        log_info(NULL, "offline: storage of %s is full (%lld messages)", ctx->bare, (long long)n);
        return HOOK_PASS;
    }
    struct stanza *copy = stanza_copy(m);
    /* XEP-0160 §2, XEP-0203: when we first stored it. A re-routed message keeps its stamp. */
    if (!has_our_delay(copy, host)) {
        char stamp[32];
        format_datetime(stamp, wall_time());
        struct stanza *d = stanza_add_text_child(copy, "delay", NS_DELAY, "Offline Storage");
        stanza_set_attr(d, "from", host);
        stanza_set_attr(d, "stamp", stamp);
    }
    char *xml = stanza_to_string(copy, NS_CLIENT);
    stanza_free(copy);
    struct jid from;
    char *with = NULL;
    if (jid_parse(stanza_attr(m, "from"), &from) == 0) {
        with = jid_bare_string(&from);
        jid_fini(&from);
    }
    int rc = storage_archive_append(server.db, host, user, STORE, wall_time(), with, xml,
                                    strlen(xml), NULL);
    free(with);
    free(xml);
    if (rc != 0)
        return HOOK_PASS; /* logged by storage; the sender gets service-unavailable */
    log_debug(NULL, "offline: stored a message for %s", ctx->bare);
    return HOOK_DONE;
}

/* ---- delivering ---- */

/* A session still receiving its offline messages, batch after batch. */
struct drain {
    struct c2s *session;
    struct ev_timer *timer;
    struct drain *next;
};

static struct drain *draining;

struct batch {
    char *ids[BATCH_ITEMS];
    char *xml[BATCH_ITEMS];
    size_t len[BATCH_ITEMS];
    size_t n;
    size_t bytes, budget;
    bool more; /* items remain after this batch */
};

static int collect(void *ud, const char *id, int64_t when, const char *with, const char *value,
                   size_t len)
{
    (void)when, (void)with;
    struct batch *b = ud;
    /* The first item always goes, so even one larger than the budget is delivered. */
    if (b->n == BATCH_ITEMS || (b->n > 0 && b->bytes + len > b->budget)) {
        b->more = true;
        return 1;
    }
    b->ids[b->n] = xstrdup(id);
    b->xml[b->n] = xstrndup(value, len);
    b->len[b->n] = len;
    b->n++;
    b->bytes += len;
    return 0;
}

static void batch_fini(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->ids[i]);
        free(b->xml[i]);
    }
    b->n = 0;
}

/* Removes the batch from storage in one transaction; 0 when it is gone. */
static int batch_delete(const char *host, const char *user, const struct batch *b)
{
    if (storage_begin(server.db) != 0)
        return -1;
    for (size_t i = 0; i < b->n; i++)
        if (storage_archive_delete_id(server.db, host, user, STORE, b->ids[i]) == STORAGE_ERR) {
            storage_rollback(server.db);
            return -1;
        }
    return storage_commit(server.db) == 0 ? 0 : -1;
}

static void drain_remove(struct drain *d)
{
    for (struct drain **p = &draining; *p; p = &(*p)->next)
        if (*p == d) {
            *p = d->next;
            break;
        }
    ev_timer_cancel(server.loop, d->timer);
    free(d);
}

/* Delivers batches while the session's output has room. Returns true when everything stored
 * was delivered (or nothing more can be), false when the rest must wait for the client to read. */
static bool deliver_some(struct c2s *s)
{
    const struct jid *me = c2s_jid(s);
    size_t half = server.cfg.max_output_buffer / 2;
    for (;;) {
        size_t pending = c2s_output_pending(s);
        if (pending >= half)
            return false;
        struct batch b = {.budget = half - pending};
        struct storage_archive_query q = {.limit = BATCH_ITEMS + 1};
        if (storage_archive_query(server.db, me->domain, me->local, STORE, &q, collect, &b, NULL) !=
                0 ||
            b.n == 0) {
            batch_fini(&b);
            return true;
        }
        if (batch_delete(me->domain, me->local, &b) != 0) {
            log_error(NULL, "offline: cannot remove delivered messages of %s; they stay stored",
                      c2s_bare(s));
            batch_fini(&b);
            return true;
        }
        for (size_t i = 0; i < b.n; i++) {
            struct stanza *m = parse_stored(b.xml[i], b.len[i]);
            if (m) {
                c2s_deliver(s, m);
                stanza_free(m);
            }
        }
        log_debug(NULL, "offline: delivered %zu message(s) to %s", b.n, c2s_bare(s));
        bool more = b.more;
        batch_fini(&b);
        if (!more)
            return true;
    }
}

static void drain_run(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct drain *d = ud;
    d->timer = NULL;
    if (deliver_some(d->session))
        drain_remove(d);
    else
        d->timer = ev_timer_add(server.loop, RETRY_MS, drain_run, d);
}

/* XEP-0160 §2 step 5: the resource that sent non-negative available presence gets them all. */
static int initial_presence(struct hook_ctx *ctx)
{
    struct c2s *s = ctx->session;
    if (!s || c2s_priority(s) < 0)
        return HOOK_PASS;
    for (struct drain *d = draining; d; d = d->next)
        if (d->session == s)
            return HOOK_PASS;
    if (!deliver_some(s)) {
        struct drain *d = xcalloc(1, sizeof *d);
        d->session = s;
        d->next = draining;
        draining = d;
        d->timer = ev_timer_add(server.loop, RETRY_MS, drain_run, d);
    }
    return HOOK_PASS;
}

static int session_closed(struct hook_ctx *ctx)
{
    for (struct drain *d = draining; d; d = d->next)
        if (d->session == ctx->session) {
            drain_remove(d);
            break;
        }
    return HOOK_PASS;
}

static void fini(void)
{
    while (draining)
        drain_remove(draining);
}

static const char *const features[] = {"msgoffline", NULL};

static const struct module_hook hooks[] = {
    {HOOK_MESSAGE_OFFLINE, 0, store},
    {HOOK_INITIAL_PRESENCE, 0, initial_presence},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {0},
};

const struct module mod_offline = {
    .name = "offline",
    .host_features = features,
    .hooks = hooks,
    .active = active,
    .fini = fini,
};
