/* RFC 6121 §2: the roster — storage, get/set/remove, pushes to interested resources, and roster
 * versioning (RFC 6121 §2.6, XEP-0237's `ver`). Subscription state changes driven by presence
 * live in mod_presence.c, which calls roster_put().
 *
 * Each item is one entry of the map store "roster" (key: the contact's bare JID) holding
 * `key=value` lines; the version is a counter in the key-value store "roster_ver". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/component.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/roster.h"
#include "isthmus/server.h"

#define NS_ROSTER "jabber:iq:roster"
#define STORE "roster"
#define VER_STORE "roster_ver"
#define MAX_NAME 1023  /* bytes of a name or group (RFC 6121 §2.1.2.4 lets servers limit) */
#define MAX_GROUPS 64

static const char *const sub_names[] = {"none", "to", "from", "both"};

const char *roster_sub_name(enum roster_sub sub)
{
    return sub_names[sub];
}

void roster_item_fini(struct roster_item *it)
{
    free(it->jid);
    free(it->name);
    for (size_t i = 0; i < it->ngroups; i++)
        free(it->groups[i]);
    free(it->groups);
    memset(it, 0, sizeof *it);
}

/* ---- serialization: key=value lines, with \n and \\ escaped ---- */

static void put_escaped(struct buf *b, const char *key, const char *v)
{
    buf_puts(b, key);
    buf_putc(b, '=');
    for (; *v; v++) {
        if (*v == '\n')
            buf_puts(b, "\\n");
        else if (*v == '\\')
            buf_puts(b, "\\\\");
        else
            buf_putc(b, *v);
    }
    buf_putc(b, '\n');
}

static char *unescape(const char *v, size_t len)
{
    char *out = xmalloc(len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '\\' && i + 1 < len) {
            i++;
            *o++ = v[i] == 'n' ? '\n' : v[i];
        } else {
            *o++ = v[i];
        }
    }
    *o = '\0';
    return out;
}

static void encode(const struct roster_item *it, struct buf *b)
{
    buf_printf(b, "sub=%s\nask=%d\npending=%d\napproved=%d\nin=%d\n", sub_names[it->sub],
               it->ask, it->pending_in, it->approved, it->in_roster);
    if (it->name)
        put_escaped(b, "name", it->name);
    for (size_t i = 0; i < it->ngroups; i++)
        put_escaped(b, "group", it->groups[i]);
}

static void decode(const char *jid, const char *v, size_t len, struct roster_item *it)
{
    memset(it, 0, sizeof *it);
    it->jid = xstrdup(jid);
    const char *end = v + len;
    while (v < end) {
        const char *nl = memchr(v, '\n', (size_t)(end - v));
        const char *line_end = nl ? nl : end;
        const char *eq = memchr(v, '=', (size_t)(line_end - v));
        if (eq) {
            size_t klen = (size_t)(eq - v);
            const char *val = eq + 1;
            size_t vlen = (size_t)(line_end - val);
            if (klen == 3 && memcmp(v, "sub", 3) == 0) {
                for (int s = ROSTER_NONE; s <= ROSTER_BOTH; s++)
                    if (vlen == strlen(sub_names[s]) && memcmp(val, sub_names[s], vlen) == 0)
                        it->sub = (enum roster_sub)s;
            } else if (klen == 3 && memcmp(v, "ask", 3) == 0) {
                it->ask = *val == '1';
            } else if (klen == 7 && memcmp(v, "pending", 7) == 0) {
                it->pending_in = *val == '1';
            } else if (klen == 8 && memcmp(v, "approved", 8) == 0) {
                it->approved = *val == '1';
            } else if (klen == 2 && memcmp(v, "in", 2) == 0) {
                it->in_roster = *val == '1';
            } else if (klen == 4 && memcmp(v, "name", 4) == 0) {
                free(it->name);
                it->name = unescape(val, vlen);
            } else if (klen == 5 && memcmp(v, "group", 5) == 0 && it->ngroups < MAX_GROUPS) {
                it->groups = xrealloc(it->groups, (it->ngroups + 1) * sizeof *it->groups);
                it->groups[it->ngroups++] = unescape(val, vlen);
            }
        }
        v = line_end + 1;
    }
}

/* ---- queries ---- */

int roster_get(const char *host, const char *user, const char *contact, struct roster_item *out)
{
    char *v = NULL;
    size_t len = 0;
    int rc = storage_map_get(server.db, host, user, STORE, contact, &v, &len);
    if (rc != 0)
        return rc == STORAGE_NOTFOUND ? 1 : -1;
    decode(contact, v, len, out);
    free(v);
    return 0;
}

static enum roster_sub sub_of(const char *host, const char *user, const char *contact)
{
    struct roster_item it;
    if (roster_get(host, user, contact, &it) != 0)
        return ROSTER_NONE;
    enum roster_sub s = it.sub;
    roster_item_fini(&it);
    return s;
}

bool roster_subscribed_from(const char *host, const char *user, const char *contact)
{
    enum roster_sub s = sub_of(host, user, contact);
    return s == ROSTER_FROM || s == ROSTER_BOTH;
}

bool roster_subscribed_to(const char *host, const char *user, const char *contact)
{
    enum roster_sub s = sub_of(host, user, contact);
    return s == ROSTER_TO || s == ROSTER_BOTH;
}

bool roster_contains(const char *host, const char *user, const char *contact)
{
    struct roster_item it;
    if (roster_get(host, user, contact, &it) != 0)
        return false;
    bool in = it.in_roster;
    roster_item_fini(&it);
    return in;
}

struct each_ctx {
    roster_item_fn fn;
    void *ud;
    long count;
};

static int each_cb(void *ud, const char *key, const char *value, size_t len)
{
    struct each_ctx *c = ud;
    struct roster_item it;
    decode(key, value, len, &it);
    int stop = 0;
    if (c->fn)
        stop = c->fn(c->ud, &it);
    else if (it.in_roster)
        c->count++;
    roster_item_fini(&it);
    return stop;
}

int roster_each(const char *host, const char *user, roster_item_fn fn, void *ud)
{
    struct each_ctx c = {fn, ud, 0};
    return storage_map_all(server.db, host, user, STORE, each_cb, &c) < 0 ? -1 : 0;
}

long roster_count(const char *host, const char *user)
{
    struct each_ctx c = {NULL, NULL, 0};
    if (storage_map_all(server.db, host, user, STORE, each_cb, &c) < 0)
        return -1;
    return c.count;
}

/* ---- versioning and pushes ---- */

static unsigned long long current_version(const char *host, const char *user)
{
    char *v = NULL;
    size_t len;
    unsigned long long n = 0;
    if (storage_kv_get(server.db, host, user, VER_STORE, &v, &len) == 0)
        n = strtoull(v, NULL, 10);
    free(v);
    return n;
}

static unsigned long long bump_version(const char *host, const char *user)
{
    unsigned long long n = current_version(host, user) + 1;
    char s[24];
    int len = snprintf(s, sizeof s, "%llu", n);
    storage_kv_set(server.db, host, user, VER_STORE, s, (size_t)len);
    return n;
}

static void add_item_element(struct stanza *query, const struct roster_item *it, bool removed)
{
    struct stanza *item = stanza_add_child(query, "item", NULL);
    stanza_set_attr(item, "jid", it->jid);
    if (removed) {
        stanza_set_attr(item, "subscription", "remove");
        return;
    }
    if (it->name)
        stanza_set_attr(item, "name", it->name);
    stanza_set_attr(item, "subscription", sub_names[it->sub]);
    if (it->ask)
        stanza_set_attr(item, "ask", "subscribe");
    if (it->approved)
        stanza_set_attr(item, "approved", "true");
    for (size_t i = 0; i < it->ngroups; i++)
        stanza_add_text_child(item, "group", NULL, it->groups[i]);
}

/* RFC 6121 §2.1.6: a push to every interested resource of the account. */
static void push(const char *host, const char *user, const struct roster_item *it, bool removed,
                 unsigned long long ver)
{
    char *bare = xasprintf("%s@%s", user, host);
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s)) {
        if (!c2s_slot(s, C2S_SLOT_ROSTER))
            continue;
        struct stanza *iq = stanza_new("iq", NS_CLIENT);
        char *id = random_id(12);
        char *to = jid_to_string(c2s_jid(s));
        stanza_set_attr(iq, "type", "set");
        stanza_set_attr(iq, "id", id);
        stanza_set_attr(iq, "to", to);
        struct stanza *q = stanza_add_child(iq, "query", NS_ROSTER);
        char vs[24];
        snprintf(vs, sizeof vs, "%llu", ver);
        stanza_set_attr(q, "ver", vs);
        add_item_element(q, it, removed);
        c2s_deliver(s, iq);
        stanza_free(iq);
        free(id);
        free(to);
    }
    free(bare);
}

int roster_put(const char *host, const char *user, const struct roster_item *it)
{
    bool keep = it->in_roster || it->pending_in || it->approved;
    struct roster_item before;
    bool was_visible = false;
    if (roster_get(host, user, it->jid, &before) == 0) {
        was_visible = before.in_roster;
        roster_item_fini(&before);
    }
    int rc;
    if (keep) {
        struct buf b;
        buf_init(&b);
        encode(it, &b);
        rc = storage_map_set(server.db, host, user, STORE, it->jid, b.data, b.len);
        buf_fini(&b);
    } else {
        rc = storage_map_delete(server.db, host, user, STORE, it->jid);
        if (rc == STORAGE_NOTFOUND)
            rc = 0;
    }
    if (rc != 0)
        return -1;
    unsigned long long ver = bump_version(host, user);
    /* Pending requests without a roster item are invisible to the client (RFC 6121 §3.1.3):
     * only a visible item, or one that just stopped being visible, is pushed. */
    if (it->in_roster)
        push(host, user, it, false, ver);
    else if (was_visible)
        push(host, user, it, true, ver);
    return 0;
}

/* ---- IQ handlers ---- */

/* Only one's own roster (RFC 6121 §2.1.5), or a component granted roster access (XEP-0356 §4),
 * which acts as the account. */
static bool own_account(const struct iq_request *req, bool set)
{
    return req->from && req->to->local &&
           (jid_bare_equal(req->from, req->to) ||
            component_roster_allowed(req->from, req->to->domain, set));
}

struct get_ctx {
    struct stanza *query;
};

static int add_visible(void *ud, const struct roster_item *it)
{
    struct get_ctx *c = ud;
    if (it->in_roster)
        add_item_element(c->query, it, false);
    return 0;
}

static const char *roster_get_iq(struct iq_request *req)
{
    if (!own_account(req, false))
        return "forbidden";
    if (req->origin)
        c2s_set_slot(req->origin, C2S_SLOT_ROSTER, (void *)1);
    const char *host = req->to->domain, *user = req->to->local;
    unsigned long long ver = current_version(host, user);
    char vs[24];
    snprintf(vs, sizeof vs, "%llu", ver);
    struct stanza *r = stanza_iq_result(req->iq);
    const char *client_ver = stanza_attr(req->payload, "ver");
    /* RFC 6121 §2.6.3: the client's version is current — an empty result, pushes follow. */
    if (client_ver && strcmp(client_ver, vs) == 0) {
        router_reply(req, r);
        return NULL;
    }
    struct stanza *q = stanza_add_child(r, "query", NS_ROSTER);
    stanza_set_attr(q, "ver", vs);
    struct get_ctx c = {q};
    if (roster_each(host, user, add_visible, &c) < 0) {
        stanza_free(r);
        return "internal-server-error";
    }
    router_reply(req, r);
    return NULL;
}

static void send_presence_type(const char *from, const char *to, const char *type)
{
    struct stanza *p = stanza_new("presence", NS_CLIENT);
    stanza_set_attr(p, "from", from);
    stanza_set_attr(p, "to", to);
    stanza_set_attr(p, "type", type);
    router_route(p, NULL);
}

/* RFC 6121 §2.5: removing an item cancels the subscriptions in both directions. */
static const char *remove_item(struct iq_request *req, const char *contact)
{
    const char *host = req->to->domain, *user = req->to->local;
    struct roster_item it;
    int rc = roster_get(host, user, contact, &it);
    if (rc < 0)
        return "internal-server-error";
    if (rc == 1 || !it.in_roster) {
        if (rc == 0)
            roster_item_fini(&it);
        return "item-not-found"; /* RFC 6121 §2.5.3 */
    }
    char *bare = jid_bare_string(req->to); /* the account, also when a component asks */
    if (it.sub == ROSTER_TO || it.sub == ROSTER_BOTH || it.ask)
        send_presence_type(bare, contact, "unsubscribe");
    if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH || it.pending_in)
        send_presence_type(bare, contact, "unsubscribed");
    if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH) {
        /* RFC 6121 §2.5.2 with §3.2.2: the contact stops seeing the user, so it hears the
         * user's resources go unavailable. */
        for (struct c2s *r = c2s_first(bare); r; r = c2s_next(r)) {
            if (!c2s_available(r))
                continue;
            char *rf = jid_to_string(c2s_jid(r));
            send_presence_type(rf, contact, "unavailable");
            free(rf);
        }
    }
    free(bare);
    struct roster_item gone = {.jid = it.jid};
    roster_put(host, user, &gone);
    roster_item_fini(&it);
    router_reply(req, stanza_iq_result(req->iq));
    return NULL;
}

static const char *roster_set_iq(struct iq_request *req)
{
    if (!own_account(req, true))
        return "forbidden";
    struct stanza *item = stanza_child(req->payload, "item", NULL);
    /* RFC 6121 §2.3.3: exactly one item. */
    if (!item || stanza_next_elem(item))
        return "bad-request";
    char *contact = NULL;
    struct jid cj;
    if (jid_parse(stanza_attr(item, "jid"), &cj) < 0)
        return "jid-malformed";
    bool full = cj.resource != NULL;
    contact = jid_bare_string(&cj);
    jid_fini(&cj);
    if (full) {
        free(contact);
        return "bad-request"; /* roster items are bare JIDs (RFC 6121 §2.1.2.3) */
    }
    if (str_eq(stanza_attr(item, "subscription"), "remove")) {
        const char *cond = remove_item(req, contact);
        free(contact);
        return cond;
    }
    const char *host = req->to->domain, *user = req->to->local;
    struct roster_item it;
    int rc = roster_get(host, user, contact, &it);
    if (rc < 0) {
        free(contact);
        return "internal-server-error";
    }
    if (rc == 1) {
        memset(&it, 0, sizeof it);
        it.jid = xstrdup(contact);
    }
    free(contact);
    if (!it.in_roster) {
        long n = roster_count(host, user);
        if (n < 0 || (unsigned long)n >= server.cfg.roster_max_items) {
            roster_item_fini(&it);
            return n < 0 ? "internal-server-error" : "not-allowed"; /* RFC 6121 §2.3.3 */
        }
    }
    /* Name and groups come from the client; subscription, ask and approved never do
     * (RFC 6121 §2.1.2). A privileged entity (XEP-0356) is not the user's client: a gateway
     * putting its legacy contacts in the roster sets the subscription it knows, as ejabberd and
     * Prosody's mod_privilege let it. */
    const char *sub = stanza_attr(item, "subscription");
    if (!jid_bare_equal(req->from, req->to) && sub) {
        int k = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(sub, sub_names[i]) == 0)
                k = i;
        if (k < 0) {
            roster_item_fini(&it);
            return "bad-request";
        }
        it.sub = (enum roster_sub)k;
        if (it.sub == ROSTER_TO || it.sub == ROSTER_BOTH)
            it.ask = false;
        if (it.sub == ROSTER_FROM || it.sub == ROSTER_BOTH)
            it.pending_in = false;
    }
    const char *name = stanza_attr(item, "name");
    if (name && strlen(name) > MAX_NAME) {
        roster_item_fini(&it);
        return "not-acceptable";
    }
    free(it.name);
    it.name = name && *name ? xstrdup(name) : NULL;
    for (size_t i = 0; i < it.ngroups; i++)
        free(it.groups[i]);
    it.ngroups = 0;
    const char *cond = NULL;
    for (struct stanza *g = stanza_first_elem(item); g && !cond; g = stanza_next_elem(g)) {
        if (strcmp(g->name, "group") != 0)
            continue;
        char *text = stanza_text(g);
        if (!*text || strlen(text) > MAX_NAME || it.ngroups >= MAX_GROUPS) {
            cond = "not-acceptable"; /* empty or over-long group names */
        } else {
            for (size_t i = 0; i < it.ngroups; i++)
                if (strcmp(it.groups[i], text) == 0)
                    cond = "bad-request"; /* duplicate group (RFC 6121 §2.3.3) */
        }
        if (cond) {
            free(text);
            break;
        }
        it.groups = xrealloc(it.groups, (it.ngroups + 1) * sizeof *it.groups);
        it.groups[it.ngroups++] = text;
    }
    if (!cond) {
        it.in_roster = true;
        if (roster_put(host, user, &it) < 0)
            cond = "internal-server-error";
        else
            router_reply(req, stanza_iq_result(req->iq));
    }
    roster_item_fini(&it);
    return cond;
}

/* A departing account cancels its subscriptions with everyone (XEP-0077 §3.2, RFC 6121 §2.5). */
static int cancel_subscriptions(void *ud, const struct roster_item *it)
{
    const char *bare = ud;
    if (it->sub == ROSTER_TO || it->sub == ROSTER_BOTH || it->ask)
        send_presence_type(bare, it->jid, "unsubscribe");
    if (it->sub == ROSTER_FROM || it->sub == ROSTER_BOTH || it->pending_in)
        send_presence_type(bare, it->jid, "unsubscribed");
    return 0;
}

static int account_deleted(struct hook_ctx *ctx)
{
    struct jid j;
    if (!ctx->bare || jid_parse(ctx->bare, &j) < 0)
        return HOOK_PASS;
    roster_each(j.domain, j.local, cancel_subscriptions, (void *)ctx->bare);
    jid_fini(&j);
    return HOOK_PASS;
}

/* RFC 6121 §2.6.1 roster versioning and §3.4.1 pre-approval stream features. */
static int features(struct hook_ctx *ctx)
{
    buf_puts(ctx->out, "<ver xmlns='urn:xmpp:features:rosterver'/>"
                       "<sub xmlns='urn:xmpp:features:pre-approval'/>");
    return HOOK_PASS;
}

static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_ROSTER, "query", roster_get_iq, roster_set_iq},
    {0},
};

static const struct module_hook hooks[] = {
    {HOOK_STREAM_FEATURES, 0, features},
    {HOOK_ACCOUNT_DELETED, 0, account_deleted},
    {0},
};

const struct module mod_roster = {
    .name = "roster",
    .iqs = iqs,
    .hooks = hooks,
};
