/* muc_mam.c — XEP-0313 archives of rooms: every groupchat message with a body is stored (archive
 * store "muc_archive", host = the service, user = the room's localpart, with = the sender's nick)
 * and its archive id is the XEP-0359 stanza id the room stamps. Queries go to the room JID with
 * XEP-0059 paging and the start / end / with (an occupant JID or a nick) form fields. Items older
 * than [mam] expire_days go, as in user archives. Occupants, members and above may read an
 * archive; anyone may read the archive of a public, open room without a password. */
#include "isthmus/muc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/ev.h"
#include "isthmus/log.h"
#include "isthmus/router.h"
#include "isthmus/rsm.h"
#include "isthmus/server.h"
#include "isthmus/storage.h"
#include "isthmus/xmlstream.h"

#define NS_MAM "urn:xmpp:mam:2"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_DELAY "urn:xmpp:delay"
#define STORE "muc_archive"
#define EXPIRE_EVERY_MS (3600 * 1000)

char *muc_mam_store(const struct muc_room *r, const struct stanza *msg, const char *nick)
{
    struct stanza *copy = stanza_copy(msg);
    stanza_set_attr(copy, "to", NULL);
    char *xml = stanza_to_string(copy, NS_CLIENT);
    stanza_free(copy);
    char *id = NULL;
    if (storage_archive_append(server.db, r->service, r->local, STORE, wall_time(), nick, xml,
                               strlen(xml), &id) < 0)
        id = NULL;
    free(xml);
    return id;
}

void muc_mam_delete(const struct muc_room *r)
{
    storage_archive_expire(server.db, r->service, r->local, STORE, INT64_MAX);
}

struct item {
    char *id;
    int64_t when;
    char *xml;
    size_t len;
};

struct page {
    struct item *items;
    size_t n, want;
    bool more;
};

static int collect(void *ud, const char *id, int64_t when, const char *with, const char *value,
                   size_t len)
{
    (void)with;
    struct page *p = ud;
    if (p->n == p->want) {
        p->more = true;
        return 1;
    }
    p->items = xrealloc(p->items, (p->n + 1) * sizeof *p->items);
    p->items[p->n++] = (struct item){xstrdup(id), when, xstrndup(value, len), len};
    return 0;
}

static void page_fini(struct page *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->items[i].id);
        free(p->items[i].xml);
    }
    free(p->items);
}

/* §4.1 form fields. Returns NULL or an error condition; *with_nick is the caller's. */
static const char *parse_form(const struct muc_room *r, const struct stanza *x,
                              struct storage_archive_query *q, char **with_nick)
{
    for (const struct stanza *f = x ? stanza_first_elem(x) : NULL; f; f = stanza_next_elem(f)) {
        const char *var = stanza_attr(f, "var");
        if (strcmp(f->name, "field") != 0 || !var || strcmp(var, "FORM_TYPE") == 0)
            continue;
        char *v = stanza_child_text(f, "value", NULL);
        const char *cond = NULL;
        if (strcmp(var, "start") == 0 || strcmp(var, "end") == 0) {
            int64_t t = muc_parse_datetime(v);
            if (t < 0)
                cond = "bad-request";
            else if (var[0] == 's')
                q->start = t > 0 ? t : 1;
            else
                q->end = t;
        } else if (strcmp(var, "with") == 0) {
            /* An occupant JID of this room, or the nick alone. */
            struct jid j;
            free(*with_nick);
            *with_nick = NULL;
            if (v && jid_parse(v, &j) == 0) {
                char *b = jid_bare_string(&j);
                if (str_eq(b, r->jid) && j.resource)
                    *with_nick = xstrdup(j.resource);
                free(b);
                jid_fini(&j);
            }
            if (!*with_nick)
                *with_nick = xstrdup(v ? v : "");
        } else {
            cond = "feature-not-implemented"; /* §4.1.1: unknown fields */
        }
        free(v);
        if (cond)
            return cond;
    }
    return NULL;
}

static bool may_read(const struct muc_room *r, const struct jid *from)
{
    char *full = jid_to_string(from), *bare = jid_bare_string(from);
    bool ok = muc_occupant_by_jid(r, full) || muc_affiliation_of(r, bare) >= MUC_AFF_MEMBER ||
              (r->cfg.public_room && !r->cfg.members_only && !r->cfg.password &&
               muc_affiliation_of(r, bare) != MUC_AFF_OUTCAST);
    free(full);
    free(bare);
    return ok;
}

static void send_item(const struct muc_room *r, const char *to, const char *queryid,
                      const struct item *it)
{
    struct stanza *m = stanza_new("message", NS_CLIENT);
    stanza_set_attr(m, "to", to);
    stanza_set_attr(m, "from", r->jid);
    char *mid = random_id(12);
    stanza_set_attr(m, "id", mid);
    free(mid);
    struct stanza *res = stanza_add_child(m, "result", NS_MAM);
    stanza_set_attr(res, "queryid", queryid);
    stanza_set_attr(res, "id", it->id);
    struct stanza *fwd = stanza_add_child(res, "forwarded", NS_FORWARD);
    char stamp[32];
    format_datetime(stamp, it->when);
    stanza_set_attr(stanza_add_child(fwd, "delay", NS_DELAY), "stamp", stamp);
    struct stanza *orig = xmlstream_parse_element(it->xml, it->len, server.cfg.max_depth);
    if (orig) {
        struct stanza *sid = stanza_add_child(orig, "stanza-id", "urn:xmpp:sid:0");
        stanza_set_attr(sid, "id", it->id);
        stanza_set_attr(sid, "by", r->jid);
        stanza_append(fwd, orig);
    }
    router_route(m, NULL);
}

const char *muc_mam_query(struct muc_room *r, struct stanza *iq, const struct jid *from)
{
    struct stanza *q = stanza_first_elem(iq);
    if (!str_eq(stanza_attr(iq, "type"), "set"))
        return "service-unavailable"; /* the form request (§4.1.1) is not offered */
    if (!may_read(r, from))
        return "forbidden";
    struct rsm_request rsm;
    if (rsm_parse(q, &rsm) < 0) {
        rsm_request_fini(&rsm);
        return "bad-request";
    }
    struct storage_archive_query sq = {0};
    char *with = NULL;
    const char *cond = parse_form(r, stanza_child(q, "x", NS_XDATA), &sq, &with);
    bool backward = rsm.before != NULL;
    if (!cond && rsm.index >= 0)
        cond = "feature-not-implemented";
    if (!cond && rsm.after && backward)
        cond = "bad-request";
    if (cond) {
        free(with);
        rsm_request_fini(&rsm);
        return cond;
    }
    size_t max = server.cfg.mam_max_page;
    if (rsm.max >= 0 && (unsigned long)rsm.max < max)
        max = (size_t)rsm.max;
    struct page p = {.want = max};
    sq.with = with;
    sq.after_id = rsm.after;
    sq.before_id = backward && *rsm.before ? rsm.before : NULL;
    sq.reverse = backward;
    size_t total = 0;
    int rc =
        storage_archive_query(server.db, r->service, r->local, STORE, &sq, collect, &p, &total);
    free(with);
    if (rc != 0) {
        page_fini(&p);
        rsm_request_fini(&rsm);
        return rc == STORAGE_NOTFOUND ? "item-not-found" : "internal-server-error";
    }
    if (backward)
        for (size_t i = 0; i < p.n / 2; i++) {
            struct item t = p.items[i];
            p.items[i] = p.items[p.n - 1 - i];
            p.items[p.n - 1 - i] = t;
        }
    const char *queryid = stanza_attr(q, "queryid");
    char *to = jid_to_string(from);
    for (size_t i = 0; i < p.n; i++)
        send_item(r, to, queryid, &p.items[i]);
    free(to);
    struct stanza *res = stanza_iq_result(iq);
    struct stanza *fin = stanza_add_child(res, "fin", NS_MAM);
    stanza_set_attr(fin, "queryid", queryid);
    stanza_set_attr(fin, "complete", p.more ? "false" : "true"); /* §4.3.2 */
    rsm_add_reply(fin, p.n ? p.items[0].id : NULL, -1, p.n ? p.items[p.n - 1].id : NULL,
                  (long)total);
    router_route(res, NULL);
    page_fini(&p);
    rsm_request_fini(&rsm);
    return NULL;
}

static struct ev_timer *expiry_timer;

static void expire_now(void)
{
    if (!server.cfg.mam_expire_days)
        return;
    int64_t before = wall_time() - (int64_t)server.cfg.mam_expire_days * 86400;
    for (size_t i = 0; i < server.cfg.n_muc_hosts; i++) {
        char *d = jid_prep_domain(server.cfg.muc_hosts[i]);
        int64_t n = d ? storage_archive_expire(server.db, d, NULL, STORE, before) : 0;
        if (n > 0)
            log_info("muc", "expired %lld room message(s) of %s older than %u days", (long long)n,
                     d, server.cfg.mam_expire_days);
        free(d);
    }
}

static void expire_tick(struct ev_loop *loop, void *ud)
{
    (void)ud;
    expire_now();
    expiry_timer = ev_timer_add(loop, EXPIRE_EVERY_MS, expire_tick, NULL);
}

void muc_mam_init(void)
{
    expire_now();
    if (server.cfg.mam_expire_days && server.loop)
        expiry_timer = ev_timer_add(server.loop, EXPIRE_EVERY_MS, expire_tick, NULL);
}

void muc_mam_fini(void)
{
    if (expiry_timer && server.loop)
        ev_timer_cancel(server.loop, expiry_timer);
    expiry_timer = NULL;
}
