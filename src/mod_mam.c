/* XEP-0313 Message Archive Management (urn:xmpp:mam:2, with #extended) for user archives: every
 * one-to-one message with a body a user sends or receives is kept (archive store "archive"),
 * subject to the user's XEP-0441 preferences (kv store "mam_prefs", default [mam] default), and
 * can be queried by correspondent, time and id with XEP-0059 paging. Items older than
 * [mam] expire_days are deleted at start and every hour.
 *
 * An item's `with` is the correspondent's bare JID (the account's own for messages to itself);
 * its value is the message as serialized, before the <stanza-id/> we add. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isthmus/c2s.h"
#include "isthmus/log.h"
#include "isthmus/hmap.h"
#include "isthmus/module.h"
#include "isthmus/roster.h"
#include "isthmus/rsm.h"
#include "isthmus/server.h"
#include "isthmus/xmlstream.h"

#define NS_MAM "urn:xmpp:mam:2"
#define NS_MAM_EXT "urn:xmpp:mam:2#extended"
#define NS_SID "urn:xmpp:sid:0"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_DELAY "urn:xmpp:delay"
#define NS_HINTS "urn:xmpp:hints"
#define NS_XDATA "jabber:x:data"
#define NS_XDATA_VALIDATE "http://jabber.org/protocol/xdata-validate"
#define STORE "archive"
#define PREFS_STORE "mam_prefs"
#define EXPIRE_EVERY_MS (3600 * 1000)

/* ---- small helpers ---- */

static struct stanza *parse_stored(const char *xml, size_t len)
{
    return xmlstream_parse_element(xml, len, server.cfg.max_depth + 8);
}

static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* XEP-0082 DateTime, CCYY-MM-DDThh:mm:ss[.sss](Z|(+|-)hh:mm), to seconds since the epoch
 * (fractions dropped). Returns 0 or -1. */
static int parse_datetime(const char *s, int64_t *out)
{
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':')
        return -1;
    int year = digits(s, 4), mon = digits(s + 5, 2), day = digits(s + 8, 2);
    int hour = digits(s + 11, 2), min = digits(s + 14, 2), sec = digits(s + 17, 2);
    if (year < 0 || mon < 1 || mon > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 ||
        min < 0 || min > 59 || sec < 0 || sec > 60)
        return -1;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    int offset = 0;
    if (*p == 'Z') {
        p++;
    } else if ((*p == '+' || *p == '-') && p[3] == ':') {
        int oh = digits(p + 1, 2), om = digits(p + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return -1;
        offset = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    struct tm tm = {.tm_year = year - 1900,
                    .tm_mon = mon - 1,
                    .tm_mday = day,
                    .tm_hour = hour,
                    .tm_min = min,
                    .tm_sec = sec};
    *out = (int64_t)timegm(&tm) - offset;
    return 0;
}


static void add_stanza_id(struct stanza *m, const char *by, const char *id)
{
    struct stanza *sid = stanza_add_child(m, "stanza-id", NS_SID);
    stanza_set_attr(sid, "by", by);
    stanza_set_attr(sid, "id", id);
}

/* ---- preferences (XEP-0441) ---- */

struct prefs {
    int def; /* enum archive_policy */
    char **always, **never;
    size_t nalways, nnever;
};

static const char *const policy_names[] = {
    [ARCHIVE_ALWAYS] = "always", [ARCHIVE_ROSTER] = "roster", [ARCHIVE_NEVER] = "never"};

static int policy_parse(const char *s)
{
    for (size_t i = 0; i < ARRAY_LEN(policy_names); i++)
        if (str_eq(s, policy_names[i]))
            return (int)i;
    return -1;
}

static void prefs_fini(struct prefs *p)
{
    for (size_t i = 0; i < p->nalways; i++)
        free(p->always[i]);
    for (size_t i = 0; i < p->nnever; i++)
        free(p->never[i]);
    free(p->always);
    free(p->never);
    *p = (struct prefs){0};
}

static void list_add(char ***list, size_t *n, const char *jid)
{
    *list = xrealloc(*list, (*n + 1) * sizeof **list);
    (*list)[(*n)++] = xstrdup(jid);
}

/* Stored as lines: the default policy, then "+JID" (always) and "-JID" (never); prepared JIDs
 * hold no line breaks. Returns 0 (the server default when nothing is stored) or -1. */
/* Preferences are read for both parties of every message, so the stored text is cached per
 * account ("" when none is stored); set and account removal update it, and it is dropped
 * whole when it grows past PREFS_CACHE_MAX accounts. */
#define PREFS_CACHE_MAX 50000
static struct hmap prefs_cache;

static void prefs_cache_clear(void)
{
    size_t i = 0;
    const char *k;
    void *v;
    while (hmap_next(&prefs_cache, &i, &k, &v))
        free(v);
    hmap_fini(&prefs_cache);
    hmap_init(&prefs_cache);
}

static void prefs_cache_put(const char *host, const char *user, const char *v)
{
    char *k = xasprintf("%s@%s", user, host);
    free(hmap_del(&prefs_cache, k));
    if (prefs_cache.used >= PREFS_CACHE_MAX)
        prefs_cache_clear();
    if (v)
        hmap_put(&prefs_cache, k, xstrdup(v));
    free(k);
}

static int prefs_load(const char *host, const char *user, struct prefs *p)
{
    *p = (struct prefs){.def = server.cfg.mam_default};
    char *k = xasprintf("%s@%s", user, host);
    const char *cached = hmap_get(&prefs_cache, k);
    free(k);
    char *v;
    size_t len;
    if (cached) {
        v = xstrdup(cached);
    } else {
        int rc = storage_kv_get(server.db, host, user, PREFS_STORE, &v, &len);
        if (rc == STORAGE_NOTFOUND)
            v = xstrdup("");
        else if (rc != 0)
            return -1;
        prefs_cache_put(host, user, v);
    }
    char *save = NULL;
    for (char *line = strtok_r(v, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '+')
            list_add(&p->always, &p->nalways, line + 1);
        else if (line[0] == '-')
            list_add(&p->never, &p->nnever, line + 1);
        else if (policy_parse(line) >= 0)
            p->def = policy_parse(line);
    }
    free(v);
    return 0;
}

static char *prefs_serialize(const struct prefs *p)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s\n", policy_names[p->def]);
    for (size_t i = 0; i < p->nalways; i++)
        buf_printf(&b, "+%s\n", p->always[i]);
    for (size_t i = 0; i < p->nnever; i++)
        buf_printf(&b, "-%s\n", p->never[i]);
    return buf_take(&b);
}

/* XEP-0441 §2.3: a listed bare JID matches the contact's bare JID, a listed full JID the full
 * one. */
static bool listed(char *const *list, size_t n, const char *full, const char *bare)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], strchr(list[i], '/') ? full : bare) == 0)
            return true;
    return false;
}

/* Should a message to/from `contact` (a full or bare JID) go into the archive of user@host? */
static bool should_archive(const char *host, const char *user, const char *contact)
{
    struct jid c;
    if (jid_parse(contact, &c) < 0)
        return false;
    char *full = jid_to_string(&c), *bare = jid_bare_string(&c);
    jid_fini(&c);
    struct prefs p;
    bool keep;
    if (prefs_load(host, user, &p) < 0)
        keep = server.cfg.mam_default != ARCHIVE_NEVER;
    else if (listed(p.never, p.nnever, full, bare))
        keep = false;
    else if (listed(p.always, p.nalways, full, bare))
        keep = true;
    else if (p.def == ARCHIVE_ROSTER)
        keep = roster_contains(host, user, bare);
    else
        keep = p.def == ARCHIVE_ALWAYS;
    prefs_fini(&p);
    free(full);
    free(bare);
    return keep;
}

/* ---- archiving ---- */

/* XEP-0313 §6.1.1: messages of type normal or chat with a body; XEP-0334 §4.4 <store/> asks for
 * one without, §4.1/§4.2 <no-permanent-store/> and <no-store/> keep it out. */
static bool archivable(const struct stanza *m)
{
    if (strcmp(m->name, "message") != 0)
        return false;
    const char *type = stanza_attr(m, "type");
    if (type && strcmp(type, "chat") != 0 && strcmp(type, "normal") != 0)
        return false;
    if (stanza_child(m, "no-permanent-store", NS_HINTS) || stanza_child(m, "no-store", NS_HINTS))
        return false;
    return stanza_child(m, "body", NS_CLIENT) || stanza_child(m, "store", NS_HINTS);
}

/* Appends m to user@host's archive with `with` = the bare form of contact. Returns the item's
 * id (caller frees) or NULL. */
static char *archive_append(const char *host, const char *user, const struct stanza *m,
                            const char *contact)
{
    struct jid c;
    if (jid_parse(contact, &c) < 0)
        return NULL;
    char *with = jid_bare_string(&c);
    jid_fini(&c);
    char *xml = stanza_to_string(m, NS_CLIENT);
    char *id = NULL;
    storage_archive_append(server.db, host, user, STORE, wall_time(), with, xml, strlen(xml), &id);
    free(xml);
    free(with);
    return id;
}

/* Incoming, before delivery (so the copies delivered, stored offline or carbon-copied all carry
 * the archive id, XEP-0313 §3.5). A message re-routed after its session died was archived on
 * its first pass. */
static int incoming(struct hook_ctx *ctx)
{
    struct stanza *m = ctx->stanza;
    if (ctx->redelivery || !ctx->bare || !ctx->to->local)
        return HOOK_PASS;
    stanza_strip_ids(m, ctx->bare);
    const char *from = stanza_attr(m, "from");
    if (!from || !archivable(m) || !should_archive(ctx->to->domain, ctx->to->local, from))
        return HOOK_PASS;
    char *id = archive_append(ctx->to->domain, ctx->to->local, m, from);
    if (id)
        add_stanza_id(m, ctx->bare, id);
    free(id);
    return HOOK_PASS;
}

/* Outgoing, from one of the account's clients. A message to the account itself is archived once,
 * on its way in (XEP-0313 §6.1.1). The archive id is added for the sent carbon copies and taken
 * off again before routing (outgoing_strip): the contact has no access to our archive (§3.5). */
static int outgoing(struct hook_ctx *ctx)
{
    struct stanza *m = ctx->stanza;
    if (strcmp(m->name, "message") != 0 || !ctx->session || !ctx->bare)
        return HOOK_PASS;
    stanza_strip_ids(m, ctx->bare);
    const char *to = stanza_attr(m, "to");
    if (!to || !archivable(m))
        return HOOK_PASS;
    const struct jid *me = c2s_jid(ctx->session);
    struct jid t;
    if (jid_parse(to, &t) < 0)
        return HOOK_PASS;
    bool self = jid_bare_equal(&t, me);
    jid_fini(&t);
    if (self || !should_archive(me->domain, me->local, to))
        return HOOK_PASS;
    char *id = archive_append(me->domain, me->local, m, to);
    if (id)
        add_stanza_id(m, ctx->bare, id);
    free(id);
    return HOOK_PASS;
}

static int outgoing_strip(struct hook_ctx *ctx)
{
    if (strcmp(ctx->stanza->name, "message") == 0 && ctx->bare)
        stanza_strip_ids(ctx->stanza, ctx->bare);
    return HOOK_PASS;
}

/* ---- queries (XEP-0313 §4) ---- */

struct item {
    char *id;
    int64_t when;
    char *with;
    char *xml;
    size_t len;
};

struct page {
    struct item *items;
    size_t n, want;         /* want: the page size */
    size_t bytes, budget;   /* serialized bytes collected; the most one page may take */
    bool more;              /* stopped before the end of the matching items */
    const struct jid *full; /* 'with' is a full JID: items must match it exactly */
};

struct query {
    struct jid with;
    bool have_with;
    int64_t start, end;
    char *after_id, *before_id;
    char **ids;
    size_t nids;
    bool flip;
    struct rsm_request rsm;
};

static void query_fini(struct query *q)
{
    if (q->have_with)
        jid_fini(&q->with);
    free(q->after_id);
    free(q->before_id);
    for (size_t i = 0; i < q->nids; i++)
        free(q->ids[i]);
    free(q->ids);
    rsm_request_fini(&q->rsm);
}

static void item_fini(struct item *it)
{
    free(it->id);
    free(it->with);
    free(it->xml);
}

static void page_fini(struct page *p)
{
    for (size_t i = 0; i < p->n; i++)
        item_fini(&p->items[i]);
    free(p->items);
    p->items = NULL;
    p->n = 0;
}

/* XEP-0313 §4.1.1: with a full JID, the message's to or from must be exactly it. */
static bool matches_full(const char *xml, size_t len, const struct jid *full)
{
    struct stanza *m = parse_stored(xml, len);
    bool match = false;
    for (int i = 0; m && i < 2 && !match; i++) {
        struct jid j;
        if (jid_parse(stanza_attr(m, i ? "to" : "from"), &j) == 0) {
            match = jid_equal(&j, full);
            jid_fini(&j);
        }
    }
    stanza_free(m);
    return match;
}

static int page_collect(void *ud, const char *id, int64_t when, const char *with, const char *value,
                        size_t len)
{
    struct page *p = ud;
    if (p->full && !matches_full(value, len, p->full))
        return 0;
    /* The first item always fits, however large, so paging always advances. */
    if (p->n == p->want || (p->n > 0 && p->bytes + len > p->budget)) {
        p->more = true;
        return 1;
    }
    p->items = xrealloc(p->items, (p->n + 1) * sizeof *p->items);
    p->items[p->n++] = (struct item){xstrdup(id), when, xstrdup(with), xstrndup(value, len), len};
    p->bytes += len;
    return 0;
}

/* Reads the XEP-0004 form of a query (XEP-0313 §4.1). Returns NULL or an error condition. */
static const char *parse_form(const struct stanza *x, struct query *q)
{
    for (const struct stanza *f = stanza_first_elem(x); f; f = stanza_next_elem(f)) {
        if (strcmp(f->name, "field") != 0 || strcmp(f->ns, NS_XDATA) != 0)
            continue;
        const char *var = stanza_attr(f, "var");
        char *value = stanza_child_text(f, "value", NS_XDATA);
        const char *cond = NULL;
        if (!var) {
            cond = "bad-request";
        } else if (strcmp(var, "FORM_TYPE") == 0) {
            if (!str_eq(value, NS_MAM))
                cond = "bad-request";
        } else if (strcmp(var, "with") == 0) {
            if (!value || q->have_with || jid_parse(value, &q->with) < 0)
                cond = "bad-request";
            else
                q->have_with = true;
        } else if (strcmp(var, "start") == 0 || strcmp(var, "end") == 0) {
            int64_t t;
            if (!value || parse_datetime(value, &t) < 0)
                cond = "bad-request";
            else if (var[0] == 's')
                q->start = t;
            else
                q->end = t > 0 ? t : -1; /* storage reads 0 as "no end" */
        } else if (strcmp(var, "after-id") == 0 || strcmp(var, "before-id") == 0) {
            char **slot = var[0] == 'a' ? &q->after_id : &q->before_id;
            if (!value || !*value || *slot) {
                cond = "bad-request";
            } else {
                *slot = value;
                value = NULL;
            }
        } else if (strcmp(var, "ids") == 0) {
            for (const struct stanza *v = stanza_first_elem(f); v && !cond;
                 v = stanza_next_elem(v)) {
                if (strcmp(v->name, "value") != 0 || strcmp(v->ns, NS_XDATA) != 0)
                    continue;
                if (q->nids >= server.cfg.mam_max_page)
                    cond = "policy-violation"; /* more than one page's worth */
                else {
                    q->ids = xrealloc(q->ids, (q->nids + 1) * sizeof *q->ids);
                    q->ids[q->nids++] = stanza_text(v);
                }
            }
        } else {
            cond = "feature-not-implemented"; /* §4.1.5: a field we do not know */
        }
        free(value);
        if (cond)
            return cond;
    }
    return NULL;
}

static bool item_matches(const struct item *it, const struct query *q, const char *with_bare)
{
    if ((q->start && it->when < q->start) || (q->end && it->when > q->end))
        return false;
    if (!q->have_with)
        return true;
    if (q->with.resource)
        return matches_full(it->xml, it->len, &q->with);
    return str_eq(it->with, with_bare);
}

/* XEP-0313 §4.1.3 'ids': appends the item named id to p when it matches the query's filters.
 * Returns 0, STORAGE_NOTFOUND (no such item: item-not-found) or STORAGE_ERR. The storage finds
 * items relative to an id, so this reads the item before it, then the one after that. */
static int fetch_one(const char *host, const char *user, const struct query *q,
                     const char *with_bare, const char *id, struct page *p)
{
    struct page prev = {.want = 1, .budget = SIZE_MAX};
    struct storage_archive_query before = {.before_id = id, .limit = 1, .reverse = 1};
    int rc =
        storage_archive_query(server.db, host, user, STORE, &before, page_collect, &prev, NULL);
    if (rc != 0)
        return rc;
    struct page one = {.want = 1, .budget = SIZE_MAX};
    struct storage_archive_query next = {.after_id = prev.n ? prev.items[0].id : NULL, .limit = 1};
    rc = storage_archive_query(server.db, host, user, STORE, &next, page_collect, &one, NULL);
    page_fini(&prev);
    if (rc == 0 && one.n == 1 && strcmp(one.items[0].id, id) == 0 &&
        item_matches(&one.items[0], q, with_bare)) {
        p->items = xrealloc(p->items, (p->n + 1) * sizeof *p->items);
        p->items[p->n++] = one.items[0];
        one.n = 0;
    }
    page_fini(&one);
    return rc;
}

/* <message to=requester><result queryid id><forwarded><delay/>original (XEP-0313 §4.2). */
static void send_result(struct c2s *to, const char *from, const char *queryid,
                        const struct item *it)
{
    struct stanza *m = stanza_new("message", NS_CLIENT);
    char *full = jid_to_string(c2s_jid(to));
    char *mid = random_id(12);
    stanza_set_attr(m, "to", full);
    stanza_set_attr(m, "from", from);
    stanza_set_attr(m, "id", mid);
    free(full);
    free(mid);
    struct stanza *r = stanza_add_child(m, "result", NS_MAM);
    if (queryid)
        stanza_set_attr(r, "queryid", queryid);
    stanza_set_attr(r, "id", it->id);
    struct stanza *f = stanza_add_child(r, "forwarded", NS_FORWARD);
    char stamp[32];
    format_datetime(stamp, it->when);
    stanza_set_attr(stanza_add_child(f, "delay", NS_DELAY), "stamp", stamp);
    /* §3.2: an unreadable item keeps its id and time, without the message. */
    struct stanza *orig = parse_stored(it->xml, it->len);
    if (orig)
        stanza_append(f, orig);
    c2s_deliver(to, m);
    stanza_free(m);
}

/* Runs a parsed query: result messages to the requester, then the IQ result with <fin/>
 * (XEP-0313 §4.2, §4.3). Returns NULL or an error condition. */
static const char *run_query(struct iq_request *req, struct query *q)
{
    const char *host = req->to->domain, *user = req->to->local;
    if (q->rsm.index >= 0)
        return "feature-not-implemented"; /* XEP-0059 §2.6 is optional */
    bool backward = q->rsm.before != NULL;
    if (q->rsm.after && backward)
        return "bad-request"; /* §4.3.2: undefined by RSM; after-id/before-id do this */
    size_t max = server.cfg.mam_max_page; /* §4.3.1: the server's limit */
    if (q->rsm.max >= 0 && (unsigned long)q->rsm.max < max)
        max = (size_t)q->rsm.max;
    /* A client is dropped once its unread output passes max_output_buffer: a page of large
     * messages ends early instead (still a valid page, complete='false'). */
    size_t pending = c2s_output_pending(req->origin);
    size_t half = server.cfg.max_output_buffer / 2;
    struct page p = {.want = max, .budget = pending < half ? half - pending : 0};
    char *with_bare = q->have_with ? jid_bare_string(&q->with) : NULL;
    if (q->have_with && q->with.resource)
        p.full = &q->with;
    struct storage_archive_query sq = {
        .with = with_bare,
        .start = q->start,
        .end = q->end,
        .after_id = q->rsm.after ? q->rsm.after : q->after_id,
        .before_id = backward && *q->rsm.before ? q->rsm.before : q->before_id,
        .reverse = backward,
    };
    size_t total = 0;
    /* XEP-0059 <count/>: the size of the whole result set, which after-id/before-id and a
     * full-JID filter change in ways the storage does not count. */
    bool counted = !p.full && !q->after_id && !q->before_id && !q->nids;
    int rc = 0;
    if (q->nids) {
        for (size_t i = 0; i < q->nids && rc == 0; i++)
            rc = fetch_one(host, user, q, with_bare, q->ids[i], &p);
    } else {
        rc = storage_archive_query(server.db, host, user, STORE, &sq, page_collect, &p,
                                   counted ? &total : NULL);
    }
    free(with_bare);
    if (rc != 0) {
        page_fini(&p);
        return rc == STORAGE_NOTFOUND ? "item-not-found" : "internal-server-error";
    }
    if (backward) /* newest first from the storage; pages are chronological (§4.3.3) */
        for (size_t i = 0; i < p.n / 2; i++) {
            struct item t = p.items[i];
            p.items[i] = p.items[p.n - 1 - i];
            p.items[p.n - 1 - i] = t;
        }
    const char *queryid = stanza_attr(req->payload, "queryid");
    char *archive = jid_bare_string(req->to);
    for (size_t i = 0; i < p.n; i++) /* §4.3.4: a flipped page goes newest first */
        send_result(req->origin, archive, queryid, &p.items[q->flip ? p.n - 1 - i : i]);
    free(archive);

    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *fin = stanza_add_child(r, "fin", NS_MAM);
    if (queryid)
        stanza_set_attr(fin, "queryid", queryid);
    /* §4.3.2: complete once nothing is left in the paging direction. */
    stanza_set_attr(fin, "complete", p.more ? "false" : "true");
    long index = -1;
    if (counted && !sq.after_id && !sq.before_id)
        index = backward ? (long)(total - p.n) : 0;
    rsm_add_reply(fin, p.n ? p.items[0].id : NULL, index, p.n ? p.items[p.n - 1].id : NULL,
                  counted ? (long)total : -1);
    router_reply(req, r);
    page_fini(&p);
    return NULL;
}

/* Only the account itself reads or configures its archive (XEP-0313 §8.1), from a session. */
static bool owner(const struct iq_request *req)
{
    return req->origin && req->to->local && jid_bare_equal(req->from, req->to);
}

static const char *query_set(struct iq_request *req)
{
    if (!owner(req))
        return "forbidden";
    if (stanza_attr(req->payload, "node"))
        return "item-not-found"; /* §6.1.3: pubsub archives (XEP-0442) are not ours */
    struct query q = {0};
    q.flip = stanza_child(req->payload, "flip-page", NS_MAM) != NULL;
    const char *cond = NULL;
    if (rsm_parse(req->payload, &q.rsm) < 0)
        cond = "bad-request";
    const struct stanza *x = stanza_child(req->payload, "x", NS_XDATA);
    if (!cond && x)
        cond = parse_form(x, &q);
    if (!cond)
        cond = run_query(req, &q);
    query_fini(&q);
    return cond;
}

static struct stanza *add_field(struct stanza *x, const char *type, const char *var)
{
    struct stanza *f = stanza_add_child(x, "field", NULL);
    stanza_set_attr(f, "type", type);
    stanza_set_attr(f, "var", var);
    return f;
}

/* §4.1.5: the fields we accept. */
static const char *query_get(struct iq_request *req)
{
    if (!owner(req))
        return "forbidden";
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *x = stanza_add_child(stanza_add_child(r, "query", NS_MAM), "x", NS_XDATA);
    stanza_set_attr(x, "type", "form");
    stanza_add_text_child(add_field(x, "hidden", "FORM_TYPE"), "value", NULL, NS_MAM);
    add_field(x, "jid-single", "with");
    add_field(x, "text-single", "start");
    add_field(x, "text-single", "end");
    add_field(x, "text-single", "before-id");
    add_field(x, "text-single", "after-id");
    /* §4.1.5: an open list, validated per XEP-0122. */
    struct stanza *ids = add_field(x, "list-multi", "ids");
    struct stanza *v = stanza_add_child(ids, "validate", NS_XDATA_VALIDATE);
    stanza_set_attr(v, "datatype", "xs:string");
    stanza_add_child(v, "open", NULL);
    router_reply(req, r);
    return NULL;
}

struct edge {
    char *id;
    int64_t when;
};

static int edge_collect(void *ud, const char *id, int64_t when, const char *with, const char *value,
                        size_t len)
{
    (void)with, (void)value, (void)len;
    struct edge *e = ud;
    e->id = xstrdup(id);
    e->when = when;
    return 1;
}

/* §5: the first and last items of the archive. */
static const char *metadata_get(struct iq_request *req)
{
    if (!owner(req))
        return "forbidden";
    struct edge first = {0}, last = {0};
    struct storage_archive_query fq = {.limit = 1}, lq = {.limit = 1, .reverse = 1};
    const char *host = req->to->domain, *user = req->to->local;
    if (storage_archive_query(server.db, host, user, STORE, &fq, edge_collect, &first, NULL) ||
        storage_archive_query(server.db, host, user, STORE, &lq, edge_collect, &last, NULL)) {
        free(first.id);
        free(last.id);
        return "internal-server-error";
    }
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *md = stanza_add_child(r, "metadata", NS_MAM);
    if (first.id && last.id) {
        const struct edge *edges[2] = {&first, &last};
        for (int i = 0; i < 2; i++) {
            char stamp[32];
            format_datetime(stamp, edges[i]->when);
            struct stanza *e = stanza_add_child(md, i ? "end" : "start", NULL);
            stanza_set_attr(e, "id", edges[i]->id);
            stanza_set_attr(e, "timestamp", stamp);
        }
    }
    free(first.id);
    free(last.id);
    router_reply(req, r);
    return NULL;
}

static void prefs_reply(struct iq_request *req, const struct prefs *p)
{
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *el = stanza_add_child(r, "prefs", NS_MAM);
    stanza_set_attr(el, "default", policy_names[p->def]);
    /* XEP-0441 §2.1: <always/> and <never/> are present even when empty. */
    struct stanza *always = stanza_add_child(el, "always", NULL);
    for (size_t i = 0; i < p->nalways; i++)
        stanza_add_text_child(always, "jid", NULL, p->always[i]);
    struct stanza *never = stanza_add_child(el, "never", NULL);
    for (size_t i = 0; i < p->nnever; i++)
        stanza_add_text_child(never, "jid", NULL, p->never[i]);
    router_reply(req, r);
}

static const char *prefs_get(struct iq_request *req)
{
    if (!owner(req))
        return "forbidden";
    struct prefs p;
    if (prefs_load(req->to->domain, req->to->local, &p) < 0)
        return "internal-server-error";
    prefs_reply(req, &p);
    prefs_fini(&p);
    return NULL;
}

/* Reads the <jid/> list of <always/> or <never/>; returns -1 on a JID that does not parse. */
static int read_list(const struct stanza *prefs, const char *name, char ***list, size_t *n)
{
    const struct stanza *l = stanza_child(prefs, name, NS_MAM);
    for (const struct stanza *j = l ? stanza_first_elem(l) : NULL; j; j = stanza_next_elem(j)) {
        if (strcmp(j->name, "jid") != 0 || strcmp(j->ns, NS_MAM) != 0)
            continue;
        char *text = stanza_text(j);
        char *norm = jid_normalize(text);
        free(text);
        if (!norm)
            return -1;
        list_add(list, n, norm);
        free(norm);
    }
    return 0;
}

static const char *prefs_set(struct iq_request *req)
{
    if (!owner(req))
        return "forbidden";
    struct prefs p = {.def = policy_parse(stanza_attr(req->payload, "default"))};
    const char *cond = NULL;
    if (p.def < 0)
        cond = "bad-request"; /* XEP-0441 §2.1.1: default is one of always, roster, never */
    else if (read_list(req->payload, "always", &p.always, &p.nalways) < 0 ||
             read_list(req->payload, "never", &p.never, &p.nnever) < 0)
        cond = "jid-malformed";
    char *v = cond ? NULL : prefs_serialize(&p);
    if (v && strlen(v) > server.cfg.max_user_item_size)
        cond = "not-acceptable"; /* over [server] max_user_item_size */
    else if (v && storage_kv_set(server.db, req->to->domain, req->to->local, PREFS_STORE, v,
                                 strlen(v)) != 0)
        cond = "internal-server-error";
    else if (v)
        prefs_cache_put(req->to->domain, req->to->local, v);
    if (!cond)
        prefs_reply(req, &p);
    free(v);
    prefs_fini(&p);
    return cond;
}

/* ---- expiry ---- */

static struct ev_timer *expiry_timer;

/* §3.2: only the oldest items go, so the archive never has holes. */
static void expire_now(void)
{
    if (!server.cfg.mam_expire_days)
        return;
    int64_t before = wall_time() - (int64_t)server.cfg.mam_expire_days * 86400;
    for (size_t i = 0; i < server.cfg.n_hosts; i++) {
        const char *host = server.cfg.hosts[i].name;
        int64_t n = storage_archive_expire(server.db, host, NULL, STORE, before);
        if (n > 0)
            log_info(NULL, "mam: expired %lld archived message(s) of %s older than %u days",
                     (long long)n, host, server.cfg.mam_expire_days);
    }
}

static void expire_tick(struct ev_loop *loop, void *ud)
{
    (void)ud;
    expire_now();
    expiry_timer = ev_timer_add(loop, EXPIRE_EVERY_MS, expire_tick, NULL);
}

static int init(void)
{
    expire_now();
    if (server.cfg.mam_expire_days)
        expiry_timer = ev_timer_add(server.loop, EXPIRE_EVERY_MS, expire_tick, NULL);
    return 0;
}

static void fini(void)
{
    if (expiry_timer && server.loop)
        ev_timer_cancel(server.loop, expiry_timer);
    expiry_timer = NULL;
    prefs_cache_clear();
}

static int account_deleted(struct hook_ctx *ctx)
{
    if (ctx->to && ctx->to->local)
        prefs_cache_put(ctx->to->domain, ctx->to->local, NULL);
    return HOOK_PASS;
}

static const char *const features[] = {NS_MAM, NS_MAM_EXT, NULL};

static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_MAM, "query", query_get, query_set},
    {IQ_ACCOUNT, NS_MAM, "prefs", prefs_get, prefs_set},
    {IQ_ACCOUNT, NS_MAM, "metadata", metadata_get, NULL},
    {0},
};

/* HOOK_CLIENT_STANZA: archive (20) before mod_carbons copies (10), strip (-100) last of all.
 * HOOK_MESSAGE_IN: after the filters that may refuse a message (blocking), before delivery. */
static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 20, outgoing},
    {HOOK_CLIENT_STANZA, -100, outgoing_strip},
    {HOOK_MESSAGE_IN, -50, incoming},
    {HOOK_ACCOUNT_DELETED, 0, account_deleted},
    {0},
};

const struct module mod_mam = {
    .name = "mam",
    .account_features = features,
    .iqs = iqs,
    .hooks = hooks,
    .init = init,
    .fini = fini,
};
