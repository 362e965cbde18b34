/* XEP-0191 Blocking Command (urn:xmpp:blocking), version 1.3: the blocklist (map store
 * "blocklist", one key per prepared JID), its pushes, and its enforcement.
 *
 * Enforcement (§5.3): stanzas from a blocked entity to the user are not delivered — presence
 * silently, messages and IQ get/set with <service-unavailable/> — and the user's own stanzas to a
 * blocked entity are refused with <not-acceptable/> plus <blocked/> in urn:xmpp:blocking:errors.
 * The user's presence broadcasts, which the presence module routes itself, are stopped at the
 * recipient's side (both ends are local: no federation yet).
 *
 * Pushes go to the resources that asked for the blocklist in their session (§5.3 "all of the
 * user's resources that have requested the blocklist", as Prosody tracks it); they are kept in a
 * set keyed by session, forgotten when the session closes.
 *
 * The blocklists of accounts with a bound session are cached: each stanza to or from them is
 * checked. Accounts without sessions are read from storage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/hmap.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/roster.h"
#include "isthmus/server.h"

#define NS_BLOCKING "urn:xmpp:blocking"
#define NS_BLOCKING_ERRORS "urn:xmpp:blocking:errors"
#define STORE "blocklist"
/* Entries one account may block; a local policy (the XEP sets none). */
#define MAX_ITEMS 1000

struct blocklist {
    struct jid *items; /* prepared */
    size_t n;
};

static struct hmap cache;      /* bare JID → struct blocklist, accounts with sessions */
static struct hmap interested; /* session address → session (asked for the blocklist) */
/* Set while this module routes the user's own presence to a contact it is blocking (§5.3). */
static bool sending_own;

static void blocklist_free(struct blocklist *bl)
{
    if (!bl)
        return;
    for (size_t i = 0; i < bl->n; i++)
        jid_fini(&bl->items[i]);
    free(bl->items);
    free(bl);
}

static int load_item(void *ud, const char *key, const char *value, size_t len)
{
    struct blocklist *bl = ud;
    struct jid j;
    (void)value, (void)len;
    if (jid_parse(key, &j) < 0)
        return 0; /* stored prepared; cannot happen unless the preparation rules changed */
    bl->items = xrealloc(bl->items, (bl->n + 1) * sizeof *bl->items);
    bl->items[bl->n++] = j;
    return 0;
}

static struct blocklist *blocklist_load(const char *host, const char *user)
{
    struct blocklist *bl = xcalloc(1, sizeof *bl);
    if (storage_map_all(server.db, host, user, STORE, load_item, bl) < 0) {
        blocklist_free(bl);
        return NULL;
    }
    return bl;
}

static void cache_drop(const char *bare)
{
    blocklist_free(hmap_del(&cache, bare));
}

/* §4 JID matching, in XEP-0016's order: user@domain/resource, user@domain, domain/resource,
 * domain — a domain item also covers its subdomains. */
static bool item_matches(const struct jid *item, const struct jid *who)
{
    if (item->local) {
        if (!who->local || strcmp(item->local, who->local) != 0 ||
            strcmp(item->domain, who->domain) != 0)
            return false;
        return !item->resource || str_eq(item->resource, who->resource);
    }
    if (item->resource)
        return !who->local && strcmp(item->domain, who->domain) == 0 &&
               str_eq(item->resource, who->resource);
    size_t dl = strlen(who->domain), il = strlen(item->domain);
    if (dl == il)
        return strcmp(who->domain, item->domain) == 0;
    return dl > il && who->domain[dl - il - 1] == '.' &&
           strcmp(who->domain + dl - il, item->domain) == 0;
}

static bool list_matches(const struct blocklist *bl, const struct jid *who)
{
    for (size_t i = 0; i < bl->n; i++)
        if (item_matches(&bl->items[i], who))
            return true;
    return false;
}

/* Has the local account `owner` blocked `who`? An account never blocks itself; a blocklist that
 * cannot be read blocks nothing (logged by storage). */
static bool blocks(const struct jid *owner, const struct jid *who)
{
    if (!owner->local || jid_bare_equal(owner, who))
        return false;
    char *bare = jid_bare_string(owner);
    struct blocklist *bl = hmap_get(&cache, bare);
    bool owned = false;
    if (!bl) {
        bl = blocklist_load(owner->domain, owner->local);
        if (bl && c2s_first(bare))
            hmap_put(&cache, bare, bl);
        else
            owned = true;
    }
    bool r = bl && list_matches(bl, who);
    if (owned)
        blocklist_free(bl);
    free(bare);
    return r;
}

static bool blocks_str(const struct jid *owner, const char *who_s)
{
    struct jid who;
    if (!who_s || jid_parse(who_s, &who) < 0)
        return false;
    bool r = blocks(owner, &who);
    jid_fini(&who);
    return r;
}

/* ---- enforcement ---- */

static bool is_subscription_type(const char *type)
{
    return str_eq(type, "subscribe") || str_eq(type, "subscribed") || str_eq(type, "unsubscribe") ||
           str_eq(type, "unsubscribed");
}

/* §5.3: the user's stanza to a blocked entity is not routed but answered with <not-acceptable/>
 * and <blocked/>. Subscription management stays possible (the user may still refuse or cancel a
 * subscription of someone blocked, as with Prosody); errors and IQ results are dropped. */
static int outbound(struct hook_ctx *ctx)
{
    struct stanza *st = ctx->stanza;
    const char *type = stanza_attr(st, "type");
    if (!stanza_attr(st, "to") || (strcmp(st->name, "presence") == 0 && is_subscription_type(type)))
        return HOOK_PASS;
    if (!blocks_str(c2s_jid(ctx->session), stanza_attr(st, "to")))
        return HOOK_PASS;
    if (str_eq(type, "error") || (strcmp(st->name, "iq") == 0 && str_eq(type, "result")))
        return HOOK_DONE;
    struct stanza *err = stanza_error_reply(st, "not-acceptable", NULL, NULL);
    stanza_add_child(stanza_child(err, "error", NULL), "blocked", NS_BLOCKING_ERRORS);
    c2s_deliver(ctx->session, err);
    stanza_free(err);
    return HOOK_DONE;
}

/* §5.3, messages from a blocked entity: "the server SHOULD return an error, which SHOULD be
 * <service-unavailable/>" — for the kinds that may be answered at all (RFC 6120 §8.3.1). */
static int inbound_message(struct hook_ctx *ctx)
{
    struct stanza *st = ctx->stanza;
    if (!blocks_str(ctx->to, stanza_attr(st, "from")))
        return HOOK_PASS;
    const char *type = stanza_attr(st, "type");
    if (!type || strcmp(type, "normal") == 0 || strcmp(type, "chat") == 0)
        router_error(st, "service-unavailable", NULL);
    return HOOK_DONE;
}

/* §5.3, presence from a blocked entity: no answer, no error. The user's own availability to
 * an entity it blocked is stopped here too, as the presence module routes broadcasts itself. */
static int inbound_presence(struct hook_ctx *ctx)
{
    struct stanza *st = ctx->stanza;
    const char *from_s = stanza_attr(st, "from");
    struct jid from;
    if (!from_s || jid_parse(from_s, &from) < 0)
        return HOOK_PASS;
    const char *type = stanza_attr(st, "type");
    bool availability = !type || strcmp(type, "unavailable") == 0;
    bool drop =
        blocks(ctx->to, &from) || (availability && !sending_own && from.local &&
                                   server_is_local_host(from.domain) && blocks(&from, ctx->to));
    jid_fini(&from);
    return drop ? HOOK_DONE : HOOK_PASS;
}

/* §5.3, IQs from a blocked entity: get/set get <service-unavailable/>, the others vanish. */
static int inbound_iq(struct hook_ctx *ctx)
{
    struct stanza *st = ctx->stanza;
    if (!blocks_str(ctx->to, stanza_attr(st, "from")))
        return HOOK_PASS;
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "get") || str_eq(type, "set"))
        router_error(st, "service-unavailable", NULL);
    return HOOK_DONE;
}

/* ---- the blocklist protocol ---- */

static void session_key(const struct c2s *s, char out[32])
{
    snprintf(out, 32, "%p", (const void *)s);
}

/* §5.2: the user's blocklist; the asking session now receives pushes. */
static const char *get(struct iq_request *req)
{
    if (!jid_bare_equal(req->from, req->to))
        return "forbidden";
    struct blocklist *bl = blocklist_load(req->to->domain, req->to->local);
    if (!bl)
        return "internal-server-error";
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *list = stanza_add_child(r, "blocklist", NS_BLOCKING);
    for (size_t i = 0; i < bl->n; i++) {
        char *s = jid_to_string(&bl->items[i]);
        stanza_set_attr(stanza_add_child(list, "item", NULL), "jid", s);
        free(s);
    }
    blocklist_free(bl);
    if (req->origin) {
        char key[32];
        session_key(req->origin, key);
        hmap_put(&interested, key, req->origin);
    }
    router_reply(req, r);
    return NULL;
}

/* The <item jid=.../> children of a block or unblock, prepared; NULL with *cond set when one is
 * missing its jid or malformed (RFC 6120 §8.3.3.8 jid-malformed, as Prosody answers). */
static char **read_items(const struct stanza *payload, size_t *n, const char **cond)
{
    char **v = NULL;
    *n = 0;
    *cond = NULL;
    for (const struct stanza *el = stanza_first_elem(payload); el; el = stanza_next_elem(el)) {
        if (strcmp(el->name, "item") != 0 || strcmp(el->ns, NS_BLOCKING) != 0)
            continue;
        const char *raw = stanza_attr(el, "jid");
        char *j = raw ? jid_normalize(raw) : NULL;
        if (!j) {
            *cond = raw ? "jid-malformed" : "bad-request";
            break;
        }
        if (*n >= MAX_ITEMS) {
            free(j);
            *cond = "policy-violation";
            break;
        }
        v = xrealloc(v, (*n + 1) * sizeof *v);
        v[(*n)++] = j;
    }
    if (*cond) {
        for (size_t i = 0; i < *n; i++)
            free(v[i]);
        free(v);
        *n = 0;
        return NULL;
    }
    return v;
}

static void free_items(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* §5.3-5.5: the change goes to every resource that asked for the blocklist. */
static void push(const char *bare, const char *action, char **items, size_t n)
{
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s)) {
        char key[32];
        session_key(s, key);
        if (!hmap_get(&interested, key))
            continue;
        struct stanza *iq = stanza_new("iq", NS_CLIENT);
        char *id = random_id(12);
        char *to = jid_to_string(c2s_jid(s));
        stanza_set_attr(iq, "type", "set");
        stanza_set_attr(iq, "id", id);
        stanza_set_attr(iq, "to", to);
        struct stanza *a = stanza_add_child(iq, action, NS_BLOCKING);
        for (size_t i = 0; i < n; i++)
            stanza_set_attr(stanza_add_child(a, "item", NULL), "jid", items[i]);
        c2s_deliver(s, iq);
        stanza_free(iq);
        free(id);
        free(to);
    }
}

/* Contacts that see the user's presence and are blocked by `now` but not by `before`. */
struct presence_change {
    const struct jid *user;
    const char *bare;
    const struct blocklist *before, *now;
    bool blocking;
};

static int presence_change(void *ud, const struct roster_item *it)
{
    struct presence_change *pc = ud;
    struct jid contact;
    if ((it->sub != ROSTER_FROM && it->sub != ROSTER_BOTH) || jid_parse(it->jid, &contact) < 0)
        return 0;
    if (list_matches(pc->now, &contact) && !list_matches(pc->before, &contact)) {
        if (pc->blocking) {
            /* §5.3: unavailable presence from each available resource. */
            for (struct c2s *s = c2s_first(pc->bare); s; s = c2s_next(s)) {
                if (!c2s_available(s))
                    continue;
                struct stanza *p = stanza_new("presence", NS_CLIENT);
                char *from = jid_to_string(c2s_jid(s));
                stanza_set_attr(p, "from", from);
                stanza_set_attr(p, "to", it->jid);
                stanza_set_attr(p, "type", "unavailable");
                free(from);
                sending_own = true;
                router_route(p, NULL);
                sending_own = false;
            }
        } else {
            /* §5.4: the user's current presence. A probe on the contact's behalf makes the
             * presence module answer with it, as Prosody does. */
            struct stanza *p = stanza_new("presence", NS_CLIENT);
            stanza_set_attr(p, "from", it->jid);
            stanza_set_attr(p, "to", pc->bare);
            stanza_set_attr(p, "type", "probe");
            router_route(p, NULL);
        }
    }
    jid_fini(&contact);
    return 0;
}

/* §5.3 block, §5.4 unblock, §5.5 unblock all (an empty <unblock/>). */
static const char *edit(struct iq_request *req, bool blocking)
{
    if (!jid_bare_equal(req->from, req->to))
        return "forbidden";
    const struct jid *user = req->to;
    const char *host = user->domain, *local = user->local;
    size_t n;
    const char *cond;
    char **items = read_items(req->payload, &n, &cond);
    if (cond)
        return cond;
    if (blocking && n == 0)
        return "bad-request"; /* §5.3: at least one <item/> */
    struct blocklist *before = blocklist_load(host, local);
    if (!before) {
        free_items(items, n);
        return "internal-server-error";
    }
    size_t fresh = 0;
    for (size_t i = 0; blocking && i < n; i++)
        if (storage_map_get(server.db, host, local, STORE, items[i], NULL, NULL) ==
            STORAGE_NOTFOUND)
            fresh++;
    if (before->n + fresh > MAX_ITEMS) {
        char *text = xasprintf("A blocklist holds at most %d entries", MAX_ITEMS);
        router_error(req->iq, "policy-violation", text);
        free(text);
        free_items(items, n);
        blocklist_free(before);
        return NULL;
    }
    int rc = storage_begin(server.db);
    if (rc == 0) {
        for (size_t i = 0; i < n && rc == 0; i++) {
            rc = blocking ? storage_map_set(server.db, host, local, STORE, items[i], "", 0)
                          : storage_map_delete(server.db, host, local, STORE, items[i]);
            if (rc == STORAGE_NOTFOUND)
                rc = 0;
        }
        if (!blocking && n == 0) {
            rc = storage_map_delete(server.db, host, local, STORE, NULL);
            if (rc == STORAGE_NOTFOUND)
                rc = 0;
        }
        if (rc == 0)
            rc = storage_commit(server.db);
        else
            storage_rollback(server.db);
    }
    char *bare = jid_bare_string(user);
    cache_drop(bare);
    if (rc != 0) {
        free(bare);
        free_items(items, n);
        blocklist_free(before);
        return "internal-server-error";
    }
    router_reply(req, stanza_iq_result(req->iq));

    /* Presence to the contacts whose state changed: newly blocked ones (matched by the new
     * list, not the old), or newly unblocked ones (matched by the old, not the new). */
    struct blocklist *after = blocklist_load(host, local);
    if (after) {
        struct presence_change pc = {user, bare, blocking ? before : after,
                                     blocking ? after : before, blocking};
        roster_each(host, local, presence_change, &pc);
        blocklist_free(after);
    }
    push(bare, blocking ? "block" : "unblock", items, n);
    free(bare);
    free_items(items, n);
    blocklist_free(before);
    return NULL;
}

static const char *block(struct iq_request *req)
{
    return edit(req, true);
}

static const char *unblock(struct iq_request *req)
{
    return edit(req, false);
}

/* ---- session and account lifecycle ---- */

static int session_closed(struct hook_ctx *ctx)
{
    char key[32];
    session_key(ctx->session, key);
    hmap_del(&interested, key);
    /* Still registered while this runs: alone means the account's last session. */
    if (c2s_first(ctx->bare) == ctx->session && !c2s_next(ctx->session))
        cache_drop(ctx->bare);
    return HOOK_PASS;
}

static int account_deleted(struct hook_ctx *ctx)
{
    if (ctx->bare)
        cache_drop(ctx->bare);
    return HOOK_PASS;
}

static int init(void)
{
    hmap_init(&cache);
    hmap_init(&interested);
    return 0;
}

static void fini(void)
{
    size_t i = 0;
    const char *k;
    void *v;
    while (hmap_next(&cache, &i, &k, &v))
        blocklist_free(v);
    hmap_fini(&cache);
    hmap_fini(&interested);
}

static const char *const features[] = {NS_BLOCKING, NULL};

static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_BLOCKING, "blocklist", get, NULL},
    {IQ_ACCOUNT, NS_BLOCKING, "block", NULL, block},
    {IQ_ACCOUNT, NS_BLOCKING, "unblock", NULL, unblock},
    {0},
};

/* Ahead of every other handler of these events (core behaviour sits at 0). */
static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 100, outbound},
    {HOOK_MESSAGE_IN, 100, inbound_message},
    {HOOK_PRESENCE_IN, 100, inbound_presence},
    {HOOK_IQ_IN, 100, inbound_iq},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {HOOK_ACCOUNT_DELETED, 0, account_deleted},
    {0},
};

const struct module mod_blocking = {
    .name = "blocking",
    .host_features = features,
    .iqs = iqs,
    .hooks = hooks,
    .init = init,
    .fini = fini,
};
