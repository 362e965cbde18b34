/* muc.c — the XEP-0045 service: rooms, occupants, presence, groupchat and private messages,
 * history, disco, persistence. Role and affiliation changes and room configuration are in
 * muc_admin.c.
 *
 * Rooms are created by the first join (§10.1.1). A client that joins with the MUC <x/> gets a
 * locked room (status 201) that others cannot enter (§10.1.3) until the owner submits the
 * configuration form or the empty instant-room form (§10.1.2); a client that joins without it
 * (the older protocol, §7.2.1) gets an instant room, unlocked at once. An owner who simply starts
 * talking also unlocks the room (as if it had asked for an instant room). */
#include "isthmus/muc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/router.h"
#include "isthmus/server.h"
#include "isthmus/storage.h"
#include "isthmus/xmlstream.h"

#define NS_DISCO_INFO "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_SID "urn:xmpp:sid:0"
#define NS_MODERATE "urn:xmpp:message-moderate:1"
#define NS_RETRACT "urn:xmpp:message-retract:1"
#define NS_DELAY "urn:xmpp:delay"
#define NS_PING "urn:xmpp:ping"
#define NS_MAM "urn:xmpp:mam:2"
#define NS_STORED "urn:isthmus:muc:0"
#define STORE "muc_rooms"

static struct hmap rooms; /* "room@service" → struct muc_room * */
static char **services;   /* prepared [muc] hosts */
static size_t n_services;

/* ---------------------------------------------------------------- names and affiliations */

static const char *const role_names[] = {"none", "visitor", "participant", "moderator"};
static const char *const aff_names[] = {"outcast", "none", "member", "admin", "owner"};

const char *muc_role_name(enum muc_role r)
{
    return role_names[r];
}

const char *muc_affiliation_name(enum muc_affiliation a)
{
    return aff_names[a];
}

int muc_role_parse(const char *s)
{
    for (size_t i = 0; s && i < ARRAY_LEN(role_names); i++)
        if (strcmp(s, role_names[i]) == 0)
            return (int)i;
    return -1;
}

int muc_affiliation_parse(const char *s)
{
    for (size_t i = 0; s && i < ARRAY_LEN(aff_names); i++)
        if (strcmp(s, aff_names[i]) == 0)
            return (int)i;
    return -1;
}

enum muc_affiliation muc_affiliation_of(const struct muc_room *r, const char *bare)
{
    intptr_t v = (intptr_t)hmap_get(&r->affiliations, bare);
    return v ? (enum muc_affiliation)(v - 1) : MUC_AFF_NONE;
}

void muc_set_affiliation(struct muc_room *r, const char *bare, enum muc_affiliation a)
{
    if (a == MUC_AFF_NONE)
        hmap_del(&r->affiliations, bare);
    else
        hmap_put(&r->affiliations, bare, (void *)(intptr_t)(a + 1));
}

/* §5.1.2: owners and admins moderate; in a moderated room newcomers without membership are
 * visitors. */
enum muc_role muc_default_role(const struct muc_room *r, enum muc_affiliation a)
{
    if (a >= MUC_AFF_ADMIN)
        return MUC_ROLE_MODERATOR;
    if (a == MUC_AFF_OUTCAST)
        return MUC_ROLE_NONE;
    if (r->cfg.moderated && a == MUC_AFF_NONE)
        return MUC_ROLE_VISITOR;
    return MUC_ROLE_PARTICIPANT;
}

unsigned muc_max_users(const struct muc_room *r)
{
    unsigned m = server.cfg.muc_max_occupants;
    return r->cfg.max_users && r->cfg.max_users < m ? r->cfg.max_users : m;
}

/* ---------------------------------------------------------------- rooms and occupants */

bool muc_is_service(const char *domain)
{
    for (size_t i = 0; domain && i < n_services; i++)
        if (strcmp(services[i], domain) == 0)
            return true;
    return false;
}

struct muc_occupant *muc_occupant_by_nick(const struct muc_room *r, const char *nick)
{
    for (struct muc_occupant *o = r->occupants; o; o = o->next)
        if (str_eq(o->nick, nick))
            return o;
    return NULL;
}

struct muc_occupant *muc_occupant_by_jid(const struct muc_room *r, const char *full_jid)
{
    for (struct muc_occupant *o = r->occupants; o; o = o->next)
        if (str_eq(o->jid, full_jid))
            return o;
    return NULL;
}

size_t muc_occupant_count(const struct muc_room *r)
{
    size_t n = 0;
    for (struct muc_occupant *o = r->occupants; o; o = o->next)
        n++;
    return n;
}

static void occupant_free(struct muc_occupant *o)
{
    if (!o)
        return;
    free(o->nick);
    free(o->jid);
    free(o->bare);
    stanza_free(o->presence);
    free(o);
}

static struct muc_room *room_new(const char *local, const char *service)
{
    struct muc_room *r = xcalloc(1, sizeof *r);
    r->local = xstrdup(local);
    r->service = xstrdup(service);
    r->jid = xasprintf("%s@%s", local, service);
    hmap_init(&r->affiliations);
    r->cfg.persistent = server.cfg.muc_persistent_default;
    r->cfg.public_room = true;
    r->cfg.change_subject = false;
    r->cfg.allow_pm = true;
    if (server.cfg.muc_history_max)
        r->history = xcalloc(server.cfg.muc_history_max, sizeof *r->history);
    hmap_put(&rooms, r->jid, r);
    return r;
}

static void history_clear(struct muc_room *r)
{
    for (size_t i = 0; i < r->hist_len; i++)
        stanza_free(r->history[(r->hist_start + i) % server.cfg.muc_history_max].msg);
    r->hist_len = r->hist_start = 0;
}

/* Frees r without telling anyone; it must already be out of the table. */
static void room_free(struct muc_room *r)
{
    while (r->occupants) {
        struct muc_occupant *o = r->occupants;
        r->occupants = o->next;
        occupant_free(o);
    }
    history_clear(r);
    free(r->history);
    hmap_fini(&r->affiliations);
    free(r->cfg.name);
    free(r->cfg.desc);
    free(r->cfg.password);
    free(r->subject);
    free(r->subject_from);
    free(r->jid);
    free(r->local);
    free(r->service);
    free(r);
}

/* Removes r from the table and frees it; its archive goes too (a room that ends is gone). */
static void room_drop(struct muc_room *r)
{
    muc_mam_delete(r);
    hmap_del(&rooms, r->jid);
    room_free(r);
}

static char *occupant_jid(const struct muc_room *r, const char *nick)
{
    return xasprintf("%s/%s", r->jid, nick);
}

static void send_stanza(struct stanza *st)
{
    router_route(st, NULL);
}

/* ---------------------------------------------------------------- persistence */

static void set_bool_attr(struct stanza *st, const char *name, bool v)
{
    stanza_set_attr(st, name, v ? "1" : "0");
}

void muc_room_save(struct muc_room *r)
{
    if (!r->cfg.persistent) {
        storage_map_delete(server.db, r->service, "", STORE, r->local);
        return;
    }
    struct stanza *st = stanza_new("room", NS_STORED);
    const struct muc_room_config *c = &r->cfg;
    stanza_set_attr(st, "name", c->name);
    stanza_set_attr(st, "desc", c->desc);
    stanza_set_attr(st, "password", c->password);
    set_bool_attr(st, "public", c->public_room);
    set_bool_attr(st, "members_only", c->members_only);
    set_bool_attr(st, "moderated", c->moderated);
    set_bool_attr(st, "whois_anyone", c->whois_anyone);
    set_bool_attr(st, "change_subject", c->change_subject);
    set_bool_attr(st, "allow_pm", c->allow_pm);
    set_bool_attr(st, "locked", r->locked);
    char num[24];
    snprintf(num, sizeof num, "%u", c->max_users);
    stanza_set_attr(st, "max_users", num);
    if (r->subject) {
        struct stanza *s = stanza_add_text_child(st, "subject", NULL, r->subject);
        stanza_set_attr(s, "from", r->subject_from);
    }
    const char *k;
    void *v;
    for (size_t i = 0; hmap_next(&r->affiliations, &i, &k, &v);) {
        struct stanza *a = stanza_add_child(st, "aff", NULL);
        stanza_set_attr(a, "jid", k);
        stanza_set_attr(a, "a", muc_affiliation_name((enum muc_affiliation)((intptr_t)v - 1)));
    }
    char *xml = stanza_to_string(st, NULL);
    if (storage_map_set(server.db, r->service, "", STORE, r->local, xml, strlen(xml)) < 0)
        log_error("muc", "cannot store room %s", r->jid);
    free(xml);
    stanza_free(st);
}

static bool attr_bool(const struct stanza *st, const char *name)
{
    return str_eq(stanza_attr(st, name), "1");
}

struct load_ctx {
    const char *service;
    size_t n;
};

static int load_room(void *ud, const char *key, const char *value, size_t len)
{
    struct load_ctx *lc = ud;
    struct stanza *st = xmlstream_parse_element(value, len, 8);
    if (!st || !str_eq(st->name, "room") || hmap_get(&rooms, key)) {
        log_warn("muc", "ignoring unreadable stored room %s@%s", key, lc->service);
        stanza_free(st);
        return 0;
    }
    struct muc_room *r = room_new(key, lc->service);
    struct muc_room_config *c = &r->cfg;
    c->persistent = true;
    c->name = xstrdup(stanza_attr(st, "name"));
    c->desc = xstrdup(stanza_attr(st, "desc"));
    c->password = xstrdup(stanza_attr(st, "password"));
    c->public_room = attr_bool(st, "public");
    c->members_only = attr_bool(st, "members_only");
    c->moderated = attr_bool(st, "moderated");
    c->whois_anyone = attr_bool(st, "whois_anyone");
    c->change_subject = attr_bool(st, "change_subject");
    c->allow_pm = attr_bool(st, "allow_pm");
    r->locked = attr_bool(st, "locked");
    const char *mu = stanza_attr(st, "max_users");
    c->max_users = mu ? (unsigned)strtoul(mu, NULL, 10) : 0;
    for (struct stanza *el = stanza_first_elem(st); el; el = stanza_next_elem(el)) {
        if (strcmp(el->name, "subject") == 0) {
            free(r->subject);
            r->subject = stanza_text(el);
            free(r->subject_from);
            r->subject_from = xstrdup(stanza_attr(el, "from"));
        } else if (strcmp(el->name, "aff") == 0) {
            int a = muc_affiliation_parse(stanza_attr(el, "a"));
            if (a >= 0 && stanza_attr(el, "jid"))
                muc_set_affiliation(r, stanza_attr(el, "jid"), (enum muc_affiliation)a);
        }
    }
    stanza_free(st);
    lc->n++;
    return 0;
}

/* ---------------------------------------------------------------- presence */

static const int no_codes[] = {0};

/* The presence of o as `to` sees it (§7.2.3): the occupant's own presence, from its room JID,
 * with the muc#user item; the real JID only in non-anonymous rooms or for moderators (§7.2.4). */
static struct stanza *presence_for(const struct muc_room *r, const struct muc_occupant *o,
                                   const struct muc_occupant *to, bool unavailable,
                                   const int *codes, const char *new_nick, const char *actor,
                                   const char *reason)
{
    struct stanza *p;
    if (!unavailable && o->presence) {
        p = stanza_copy(o->presence);
    } else {
        p = stanza_new("presence", NS_CLIENT);
        if (unavailable)
            stanza_set_attr(p, "type", "unavailable");
        /* §7.14: a leaving occupant's <status/> goes to everyone. */
        struct stanza *status = o->leaving && o->presence
                                    ? stanza_child(o->presence, "status", NS_CLIENT) : NULL;
        if (status)
            stanza_append(p, stanza_copy(status));
    }
    char *from = occupant_jid(r, o->nick);
    stanza_set_attr(p, "from", from);
    free(from);
    stanza_set_attr(p, "to", to->jid);
    struct stanza *x = stanza_add_child(p, "x", NS_MUC_USER);
    struct stanza *item = stanza_add_child(x, "item", NULL);
    stanza_set_attr(item, "affiliation", muc_affiliation_name(muc_affiliation_of(r, o->bare)));
    stanza_set_attr(item, "role", muc_role_name(unavailable ? MUC_ROLE_NONE : o->role));
    if (r->cfg.whois_anyone || to->role == MUC_ROLE_MODERATOR)
        stanza_set_attr(item, "jid", o->jid);
    if (new_nick)
        stanza_set_attr(item, "nick", new_nick);
    if (actor)
        stanza_set_attr(stanza_add_child(item, "actor", NULL), "nick", actor);
    if (reason)
        stanza_add_text_child(item, "reason", NULL, reason);
    char code[16];
    for (const int *c = codes; c && *c; c++) {
        snprintf(code, sizeof code, "%d", *c);
        stanza_set_attr(stanza_add_child(x, "status", NULL), "code", code);
    }
    if (o == to) {
        /* §7.2.3: 110 marks self-presence; 100 tells the user its JID is visible (§7.2.4). */
        stanza_set_attr(stanza_add_child(x, "status", NULL), "code", "110");
        if (r->cfg.whois_anyone && !unavailable)
            stanza_set_attr(stanza_add_child(x, "status", NULL), "code", "100");
    }
    return p;
}

void muc_broadcast_presence(struct muc_room *r, struct muc_occupant *o, const int *codes)
{
    for (struct muc_occupant *to = r->occupants; to; to = to->next)
        send_stanza(presence_for(r, o, to, false, codes, NULL, NULL, NULL));
}

static void broadcast_unavailable(struct muc_room *r, struct muc_occupant *o, const int *codes,
                                  const char *new_nick, const char *actor, const char *reason)
{
    for (struct muc_occupant *to = r->occupants; to; to = to->next)
        send_stanza(presence_for(r, o, to, true, codes, new_nick, actor, reason));
}

static void unlink_occupant(struct muc_room *r, struct muc_occupant *o)
{
    for (struct muc_occupant **pp = &r->occupants; *pp; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            return;
        }
}

bool muc_occupant_remove(struct muc_room *r, struct muc_occupant *o, const int *codes,
                         const char *actor, const char *reason)
{
    broadcast_unavailable(r, o, codes, NULL, actor, reason);
    unlink_occupant(r, o);
    occupant_free(o);
    /* §10.1.1 / §10.2: a temporary room ends with its last occupant. */
    if (!r->occupants && !r->cfg.persistent) {
        log_debug("muc", "temporary room %s is empty: destroyed", r->jid);
        room_drop(r);
        return true;
    }
    return false;
}

void muc_room_destroy(struct muc_room *r, const char *alt_jid, const char *reason)
{
    for (struct muc_occupant *o = r->occupants; o; o = o->next) {
        struct stanza *p = presence_for(r, o, o, true, no_codes, NULL, NULL, NULL);
        struct stanza *x = stanza_child(p, "x", NS_MUC_USER);
        struct stanza *d = stanza_add_child(x, "destroy", NULL);
        if (alt_jid)
            stanza_set_attr(d, "jid", alt_jid);
        if (reason)
            stanza_add_text_child(d, "reason", NULL, reason);
        /* §10.9: the item says affiliation none, role none. */
        stanza_set_attr(stanza_child(x, "item", NULL), "affiliation", "none");
        send_stanza(p);
    }
    storage_map_delete(server.db, r->service, "", STORE, r->local);
    log_info("muc", "room %s destroyed", r->jid);
    room_drop(r);
}

void muc_room_notify(struct muc_room *r, const int *codes)
{
    for (struct muc_occupant *o = r->occupants; o; o = o->next) {
        struct stanza *m = stanza_new("message", NS_CLIENT);
        stanza_set_attr(m, "from", r->jid);
        stanza_set_attr(m, "to", o->jid);
        stanza_set_attr(m, "type", "groupchat");
        char *id = random_id(16);
        stanza_set_attr(m, "id", id);
        free(id);
        struct stanza *x = stanza_add_child(m, "x", NS_MUC_USER);
        char code[16];
        for (const int *c = codes; *c; c++) {
            snprintf(code, sizeof code, "%d", *c);
            stanza_set_attr(stanza_add_child(x, "status", NULL), "code", code);
        }
        send_stanza(m);
    }
}

int64_t muc_parse_datetime(const char *s)
{
    struct tm tm = {0};
    int n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    const char *p = s + n;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            ;
    int64_t t = (int64_t)timegm(&tm);
    if (*p == 'Z' && !p[1])
        return t;
    int hh, mm;
    if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d", &hh, &mm) == 2) {
        int64_t off = (int64_t)hh * 3600 + mm * 60;
        return *p == '+' ? t - off : t + off;
    }
    return -1;
}

/* §7.2.15: the history the joining occupant asked for (maxchars, maxstanzas, seconds, since),
 * each limit narrowing the others; maxchars is honoured only as "0 = none". */
static void send_history(struct muc_room *r, struct muc_occupant *o, const struct stanza *join)
{
    if (!r->hist_len)
        return;
    size_t cap = server.cfg.muc_history_max;
    size_t first = 0;
    const struct stanza *x = stanza_child(join, "x", NS_MUC);
    const struct stanza *h = x ? stanza_child(x, "history", NULL) : NULL;
    if (h) {
        const char *v;
        if ((v = stanza_attr(h, "maxchars")) && strtol(v, NULL, 10) <= 0)
            return;
        if ((v = stanza_attr(h, "maxstanzas"))) {
            long n = strtol(v, NULL, 10);
            if (n <= 0)
                return;
            if ((size_t)n < r->hist_len)
                first = r->hist_len - (size_t)n;
        }
        int64_t since = -1;
        if ((v = stanza_attr(h, "seconds"))) {
            long secs = strtol(v, NULL, 10);
            int64_t now = wall_time();
            since = secs < 0 ? now : secs < now ? now - secs : -1;
        }
        if ((v = stanza_attr(h, "since"))) {
            int64_t t = muc_parse_datetime(v);
            if (t > since)
                since = t;
        }
        while (since >= 0 && first < r->hist_len &&
               r->history[(r->hist_start + first) % cap].when < since)
            first++;
    }
    for (size_t i = first; i < r->hist_len; i++) {
        struct stanza *m = stanza_copy(r->history[(r->hist_start + i) % cap].msg);
        stanza_set_attr(m, "to", o->jid);
        send_stanza(m);
    }
}

static void history_add(struct muc_room *r, const struct stanza *msg)
{
    size_t cap = server.cfg.muc_history_max;
    if (!cap)
        return;
    struct stanza *copy = stanza_copy(msg);
    char stamp[32];
    int64_t now = wall_time();
    format_datetime(stamp, now);
    struct stanza *d = stanza_add_child(copy, "delay", NS_DELAY);
    stanza_set_attr(d, "from", r->jid);
    stanza_set_attr(d, "stamp", stamp);
    if (r->hist_len == cap) {
        stanza_free(r->history[r->hist_start].msg);
        r->hist_start = (r->hist_start + 1) % cap;
        r->hist_len--;
    }
    struct muc_history_item *it = &r->history[(r->hist_start + r->hist_len) % cap];
    it->msg = copy;
    it->when = now;
    r->hist_len++;
}

/* §7.2.16: the subject comes last; an empty one when none was ever set, so that the client
 * knows the join is complete. */
static void send_subject(struct muc_room *r, struct muc_occupant *o)
{
    struct stanza *m = stanza_new("message", NS_CLIENT);
    char *from = r->subject_from ? occupant_jid(r, r->subject_from) : xstrdup(r->jid);
    stanza_set_attr(m, "from", from);
    free(from);
    stanza_set_attr(m, "to", o->jid);
    stanza_set_attr(m, "type", "groupchat");
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    stanza_add_text_child(m, "subject", NULL, r->subject ? r->subject : "");
    send_stanza(m);
}

/* Drops the MUC join element and addressing so the presence can be re-broadcast. */
static struct stanza *stored_presence(const struct stanza *p)
{
    struct stanza *c = stanza_copy(p);
    struct stanza *x;
    while ((x = stanza_child(c, "x", NS_MUC)) || (x = stanza_child(c, "x", NS_MUC_USER))) {
        stanza_remove(x);
        stanza_free(x);
    }
    stanza_set_attr(c, "to", NULL);
    stanza_set_attr(c, "from", NULL);
    stanza_set_attr(c, "type", NULL);
    return c;
}

/* §7.2: entering a room (created on the fly, §10.1.1). */
static void join(struct muc_room *r, struct stanza *p, const struct jid *to, const char *from,
                 const char *bare)
{
    bool created = false;
    const struct stanza *x = stanza_child(p, "x", NS_MUC);
    if (!r) {
        if (!server.cfg.muc_allow_create) {
            router_error(p, "not-allowed", "Room creation is disabled");
            return;
        }
        r = room_new(to->local, to->domain);
        muc_set_affiliation(r, bare, MUC_AFF_OWNER);
        r->locked = x != NULL; /* §10.1.1 vs. the old protocol's instant room */
        created = true;
        log_info("muc", "room %s created by %s", r->jid, from);
    } else {
        enum muc_affiliation aff = muc_affiliation_of(r, bare);
        struct muc_occupant *same = muc_occupant_by_nick(r, to->resource);
        if (r->locked && aff != MUC_AFF_OWNER) {
            router_error(p, "item-not-found", "The room is locked until configured"); /* §10.1.3 */
            return;
        }
        if (aff == MUC_AFF_OUTCAST) {
            router_error(p, "forbidden", "You are banned from this room"); /* §7.2.7 */
            return;
        }
        if (same) {
            router_error(p, "conflict", "That nickname is in use"); /* §7.2.9 */
            return;
        }
        if (r->cfg.members_only && aff < MUC_AFF_MEMBER) {
            router_error(p, "registration-required", "Members only"); /* §7.2.6 */
            return;
        }
        if (r->cfg.password) {
            char *pw = x ? stanza_child_text(x, "password", NULL) : NULL;
            bool ok = str_eq(pw, r->cfg.password);
            free(pw);
            if (!ok) {
                router_error(p, "not-authorized", "A password is required"); /* §7.2.5 */
                return;
            }
        }
        if (muc_occupant_count(r) >= muc_max_users(r) && aff < MUC_AFF_ADMIN) {
            router_error(p, "service-unavailable", "The room is full"); /* §7.2.10 */
            return;
        }
    }
    struct muc_occupant *o = xcalloc(1, sizeof *o);
    o->nick = xstrdup(to->resource);
    o->jid = xstrdup(from);
    o->bare = xstrdup(bare);
    o->role = muc_default_role(r, muc_affiliation_of(r, bare));
    o->presence = stored_presence(p);
    /* §7.2.3: existing occupants first, to the newcomer. */
    for (struct muc_occupant *e = r->occupants; e; e = e->next)
        send_stanza(presence_for(r, e, o, false, no_codes, NULL, NULL, NULL));
    struct muc_occupant **tail = &r->occupants;
    while (*tail)
        tail = &(*tail)->next;
    *tail = o;
    static const int created_codes[] = {201, 0};
    muc_broadcast_presence(r, o, created ? created_codes : no_codes);
    send_history(r, o, p);
    send_subject(r, o);
}

/* §7.6: the old nick leaves with 303 and the new one, then the occupant comes back under it. */
static void change_nick(struct muc_room *r, struct muc_occupant *o, struct stanza *p,
                        const char *nick)
{
    if (muc_occupant_by_nick(r, nick)) {
        router_error(p, "conflict", "That nickname is in use"); /* §7.6.3 */
        return;
    }
    static const int codes[] = {303, 0};
    broadcast_unavailable(r, o, codes, nick, NULL, NULL);
    free(o->nick);
    o->nick = xstrdup(nick);
    stanza_free(o->presence);
    o->presence = stored_presence(p);
    muc_broadcast_presence(r, o, no_codes);
}

/* An occupant whose client bounces what the room sends is gone (§7.14 is the polite way). */
static bool fatal_error(const struct stanza *st)
{
    static const char *const conds[] = {
        "service-unavailable",     "recipient-unavailable", "item-not-found", "gone",
        "remote-server-not-found", "remote-server-timeout", "redirect"};
    const struct stanza *e = stanza_child(st, "error", NULL);
    const struct stanza *c = e ? stanza_first_elem(e) : NULL;
    for (size_t i = 0; c && i < ARRAY_LEN(conds); i++)
        if (strcmp(c->name, conds[i]) == 0)
            return true;
    return false;
}

static void room_presence(struct muc_room *r, struct stanza *p, const struct jid *to,
                          const char *from, const char *bare)
{
    const char *type = stanza_attr(p, "type");
    struct muc_occupant *o = r ? muc_occupant_by_jid(r, from) : NULL;
    if (str_eq(type, "error")) {
        static const int codes[] = {333, 0};
        if (o && fatal_error(p))
            muc_occupant_remove(r, o, codes, NULL, NULL);
        return;
    }
    if (str_eq(type, "unavailable")) {
        if (o) {
            /* §7.14: everyone, the leaver included, hears that it left, with its status text. */
            stanza_free(o->presence);
            o->presence = stored_presence(p);
            o->leaving = true;
            muc_occupant_remove(r, o, no_codes, NULL, NULL);
        }
        return;
    }
    if (type)
        return; /* subscriptions and probes mean nothing to a room */
    if (!to->resource) {
        router_error(p, "jid-malformed", "A nickname is required"); /* §7.2.1 */
        return;
    }
    if (!o) {
        join(r, p, to, from, bare);
    } else if (!str_eq(o->nick, to->resource)) {
        change_nick(r, o, p, to->resource);
    } else {
        /* §7.7: a change of availability. */
        stanza_free(o->presence);
        o->presence = stored_presence(p);
        muc_broadcast_presence(r, o, no_codes);
    }
}


/* §7.4 groupchat, §8.1 subject. */
static void groupchat(struct muc_room *r, struct stanza *m, struct muc_occupant *o)
{
    if (!o) {
        router_error(m, "not-acceptable", "Only occupants may send to the room");
        return;
    }
    if (o->role < MUC_ROLE_PARTICIPANT) {
        router_error(m, "forbidden", "Visitors may not speak in a moderated room");
        return;
    }
    struct stanza *subject = stanza_child(m, "subject", NULL);
    bool has_body = stanza_child(m, "body", NULL) != NULL;
    if (subject && !has_body) {
        if (o->role != MUC_ROLE_MODERATOR && !r->cfg.change_subject) {
            router_error(m, "forbidden", "Only moderators may change the subject");
            return;
        }
        free(r->subject);
        r->subject = stanza_text(subject);
        free(r->subject_from);
        r->subject_from = xstrdup(o->nick);
        muc_room_save(r);
    }
    if (r->locked && muc_affiliation_of(r, o->bare) == MUC_AFF_OWNER) {
        r->locked = false; /* the owner talks: an instant room (see the top of this file) */
        muc_room_save(r);
    }
    struct stanza *out = stanza_copy(m);
    char *from = occupant_jid(r, o->nick);
    stanza_set_attr(out, "from", from);
    free(from);
    stanza_strip_ids(out, r->jid);
    /* XEP-0313 §5.1.2 / XEP-0359: the archive id is the stanza id. */
    char *id = has_body ? muc_mam_store(r, out, o->nick) : NULL;
    if (!id)
        id = random_id(20);
    struct stanza *sid = stanza_add_child(out, "stanza-id", NS_SID);
    stanza_set_attr(sid, "id", id);
    free(id);
    stanza_set_attr(sid, "by", r->jid);
    if (has_body)
        history_add(r, out);
    for (struct muc_occupant *to = r->occupants; to; to = to->next) {
        struct stanza *c = stanza_copy(out);
        stanza_set_attr(c, "to", to->jid);
        send_stanza(c);
    }
    stanza_free(out);
}

/* §7.8.2 mediated invitations and §7.8.2 declines, sent to the room. Returns true when m was
 * one. */
static bool invitation(struct muc_room *r, struct stanza *m, struct muc_occupant *o,
                       const char *from_bare)
{
    struct stanza *x = stanza_child(m, "x", NS_MUC_USER);
    struct stanza *inv = x ? stanza_child(x, "invite", NULL) : NULL;
    struct stanza *dec = x ? stanza_child(x, "decline", NULL) : NULL;
    if (!inv && !dec)
        return false;
    struct stanza *el = inv ? inv : dec;
    char *target = jid_normalize(stanza_attr(el, "to"));
    if (!target) {
        router_error(m, "jid-malformed", NULL);
        return true;
    }
    if (inv) {
        enum muc_affiliation aff = muc_affiliation_of(r, from_bare);
        if (!o) {
            router_error(m, "not-acceptable", "Only occupants may invite");
            free(target);
            return true;
        }
        if (r->cfg.members_only) {
            /* §7.8.2: in a members-only room only admins and owners may invite, and the
             * invitee becomes a member. */
            if (aff < MUC_AFF_ADMIN) {
                router_error(m, "forbidden", NULL);
                free(target);
                return true;
            }
            struct jid tj;
            if (jid_parse(target, &tj) == 0) {
                char *tb = jid_bare_string(&tj);
                if (muc_affiliation_of(r, tb) < MUC_AFF_MEMBER) {
                    muc_set_affiliation(r, tb, MUC_AFF_MEMBER);
                    muc_room_save(r);
                }
                free(tb);
                jid_fini(&tj);
            }
        }
    }
    struct stanza *out = stanza_new("message", NS_CLIENT);
    stanza_set_attr(out, "from", r->jid);
    stanza_set_attr(out, "to", target);
    const char *id = stanza_attr(m, "id");
    stanza_set_attr(out, "id", id);
    struct stanza *ox = stanza_add_child(out, "x", NS_MUC_USER);
    struct stanza *oe = stanza_add_child(ox, inv ? "invite" : "decline", NULL);
    stanza_set_attr(oe, "from", from_bare);
    char *reason = stanza_child_text(el, "reason", NULL);
    if (reason)
        stanza_add_text_child(oe, "reason", NULL, reason);
    free(reason);
    if (inv && r->cfg.password)
        stanza_add_text_child(ox, "password", NULL, r->cfg.password);
    if (inv) {
        struct stanza *cx = stanza_add_child(out, "x", "jabber:x:conference");
        stanza_set_attr(cx, "jid", r->jid);
    }
    free(target);
    send_stanza(out);
    return true;
}

/* §7.5: private messages between occupants, through the room. */
static void private_message(struct muc_room *r, struct stanza *m, struct muc_occupant *o,
                            const char *nick)
{
    const char *type = stanza_attr(m, "type");
    if (!o) {
        router_error(m, "not-acceptable", "Only occupants may send private messages");
        return;
    }
    if (str_eq(type, "groupchat")) {
        router_error(m, "bad-request", "Private messages are not groupchat"); /* §7.5 */
        return;
    }
    if (!r->cfg.allow_pm && o->role != MUC_ROLE_MODERATOR) {
        router_error(m, "forbidden", "Private messages are disabled in this room");
        return;
    }
    struct muc_occupant *t = muc_occupant_by_nick(r, nick);
    if (!t) {
        router_error(m, "item-not-found", "No such occupant"); /* §7.5 */
        return;
    }
    struct stanza *out = stanza_copy(m);
    char *from = occupant_jid(r, o->nick);
    stanza_set_attr(out, "from", from);
    free(from);
    stanza_set_attr(out, "to", t->jid);
    if (!stanza_child(out, "x", NS_MUC_USER))
        stanza_add_child(out, "x", NS_MUC_USER);
    send_stanza(out);
}

static void room_message(struct muc_room *r, struct stanza *m, const struct jid *to,
                         const char *from, const char *bare)
{
    const char *type = stanza_attr(m, "type");
    if (!r) {
        router_error(m, "item-not-found", "No such room");
        return;
    }
    struct muc_occupant *o = muc_occupant_by_jid(r, from);
    if (str_eq(type, "error")) {
        static const int codes[] = {333, 0};
        if (o && fatal_error(m))
            muc_occupant_remove(r, o, codes, NULL, NULL);
        return;
    }
    if (to->resource) {
        private_message(r, m, o, to->resource);
    } else if (str_eq(type, "groupchat")) {
        groupchat(r, m, o);
    } else if (!invitation(r, m, o, bare)) {
        router_error(m, "bad-request", "Send groupchat messages to the room");
    }
}

/* ---------------------------------------------------------------- IQs and disco */

static void add_identity(struct stanza *q, const char *name)
{
    struct stanza *id = stanza_add_child(q, "identity", NULL);
    stanza_set_attr(id, "category", "conference");
    stanza_set_attr(id, "type", "text");
    stanza_set_attr(id, "name", name);
}

static void add_feature(struct stanza *q, const char *var)
{
    stanza_set_attr(stanza_add_child(q, "feature", NULL), "var", var);
}

static struct stanza *result_query(const struct stanza *iq, const char *ns)
{
    struct stanza *res = stanza_iq_result(iq);
    struct stanza *q = stanza_add_child(res, "query", ns);
    const char *node = stanza_attr(stanza_first_elem(iq), "node");
    stanza_set_attr(q, "node", node);
    return res;
}

static const char *service_iq(struct stanza *iq, const struct jid *to)
{
    struct stanza *payload = stanza_first_elem(iq);
    bool get = str_eq(stanza_attr(iq, "type"), "get");
    if (get && str_eq(payload->ns, NS_DISCO_INFO) && strcmp(payload->name, "query") == 0) {
        struct stanza *res = result_query(iq, NS_DISCO_INFO);
        struct stanza *q = stanza_first_elem(res);
        add_identity(q, "Chatrooms");
        add_feature(q, NS_DISCO_INFO);
        add_feature(q, NS_DISCO_ITEMS);
        add_feature(q, NS_MUC);
        add_feature(q, NS_PING);
        send_stanza(res);
        return NULL;
    }
    if (get && str_eq(payload->ns, NS_DISCO_ITEMS) && strcmp(payload->name, "query") == 0) {
        /* §6.3: the public rooms. */
        struct stanza *res = result_query(iq, NS_DISCO_ITEMS);
        struct stanza *q = stanza_first_elem(res);
        const char *k;
        void *v;
        for (size_t i = 0; hmap_next(&rooms, &i, &k, &v);) {
            struct muc_room *r = v;
            if (!str_eq(r->service, to->domain) || !r->cfg.public_room || r->locked)
                continue;
            struct stanza *it = stanza_add_child(q, "item", NULL);
            stanza_set_attr(it, "jid", r->jid);
            stanza_set_attr(it, "name", r->cfg.name ? r->cfg.name : r->local);
        }
        send_stanza(res);
        return NULL;
    }
    if (get && str_eq(payload->ns, NS_PING) && strcmp(payload->name, "ping") == 0) {
        send_stanza(stanza_iq_result(iq));
        return NULL;
    }
    return "service-unavailable";
}

static void add_form_field(struct stanza *x, const char *var, const char *value)
{
    struct stanza *f = stanza_add_child(x, "field", NULL);
    stanza_set_attr(f, "var", var);
    stanza_add_text_child(f, "value", NULL, value);
}

/* §6.4 room info, §6.5 room items (occupants, to occupants only). */
static const char *room_disco(struct muc_room *r, struct stanza *iq, struct stanza *payload,
                              const char *from)
{
    struct muc_occupant *o = muc_occupant_by_jid(r, from);
    if (str_eq(payload->ns, NS_DISCO_ITEMS)) {
        struct stanza *res = result_query(iq, NS_DISCO_ITEMS);
        struct stanza *q = stanza_first_elem(res);
        for (struct muc_occupant *e = o ? r->occupants : NULL; e; e = e->next) {
            char *j = occupant_jid(r, e->nick);
            stanza_set_attr(stanza_add_child(q, "item", NULL), "jid", j);
            free(j);
        }
        send_stanza(res);
        return NULL;
    }
    struct stanza *res = result_query(iq, NS_DISCO_INFO);
    struct stanza *q = stanza_first_elem(res);
    const struct muc_room_config *c = &r->cfg;
    add_identity(q, c->name ? c->name : r->local);
    add_feature(q, NS_DISCO_INFO);
    add_feature(q, NS_DISCO_ITEMS);
    add_feature(q, NS_MUC);
    add_feature(q, NS_SID);
    add_feature(q, NS_MODERATE);
    add_feature(q, NS_MAM);
    add_feature(q, c->public_room ? "muc_public" : "muc_hidden");
    add_feature(q, c->persistent ? "muc_persistent" : "muc_temporary");
    add_feature(q, c->members_only ? "muc_membersonly" : "muc_open");
    add_feature(q, c->moderated ? "muc_moderated" : "muc_unmoderated");
    add_feature(q, c->whois_anyone ? "muc_nonanonymous" : "muc_semianonymous");
    add_feature(q, c->password ? "muc_passwordprotected" : "muc_unsecured");
    if (r->locked)
        add_feature(q, "muc_unconfigured");
    /* §6.4 / §15.5.4: extended information with the muc#roominfo form. */
    struct stanza *x = stanza_add_child(q, "x", NS_XDATA);
    stanza_set_attr(x, "type", "result");
    struct stanza *ft = stanza_add_child(x, "field", NULL);
    stanza_set_attr(ft, "var", "FORM_TYPE");
    stanza_set_attr(ft, "type", "hidden");
    stanza_add_text_child(ft, "value", NULL, "http://jabber.org/protocol/muc#roominfo");
    add_form_field(x, "muc#roominfo_description", c->desc ? c->desc : "");
    add_form_field(x, "muc#roominfo_subject", r->subject ? r->subject : "");
    char n[24];
    snprintf(n, sizeof n, "%zu", muc_occupant_count(r));
    add_form_field(x, "muc#roominfo_occupants", n);
    add_form_field(x, "muc#roomconfig_changesubject", c->change_subject ? "1" : "0");
    send_stanza(res);
    return NULL;
}

/* Drops the history entry whose stanza-id is id, keeping the ring in order. */
static void history_forget(struct muc_room *r, const char *id)
{
    size_t cap = server.cfg.muc_history_max;
    for (size_t i = 0; i < r->hist_len; i++) {
        struct muc_history_item *it = &r->history[(r->hist_start + i) % cap];
        struct stanza *sid = stanza_child(it->msg, "stanza-id", NS_SID);
        if (!sid || !str_eq(stanza_attr(sid, "id"), id))
            continue;
        stanza_free(it->msg);
        for (size_t j = i; j + 1 < r->hist_len; j++)
            r->history[(r->hist_start + j) % cap] = r->history[(r->hist_start + j + 1) % cap];
        r->hist_len--;
        return;
    }
}

/* XEP-0425 (message-moderate:1 with XEP-0424 retract:1): a moderator retracts a message by its
 * stanza-id; the archived copy is replaced by the retraction, the history forgets it, and every
 * occupant is told (§4). */
static const char *moderate(struct muc_room *r, struct stanza *iq, struct stanza *payload,
                            const char *full)
{
    struct muc_occupant *mod = muc_occupant_by_jid(r, full);
    if (!mod || mod->role != MUC_ROLE_MODERATOR)
        return "forbidden"; /* §3: only moderators */
    const char *id = stanza_attr(payload, "id");
    if (!id || !stanza_child(payload, "retract", NS_RETRACT))
        return "bad-request";
    int rc = storage_archive_delete_id(server.db, r->service, r->local, "muc_archive", id);
    if (rc == STORAGE_NOTFOUND)
        return "item-not-found";
    if (rc != 0)
        return "internal-server-error";
    history_forget(r, id);
    struct stanza *m = stanza_new("message", NS_CLIENT);
    char *mid = random_id(16);
    stanza_set_attr(m, "type", "groupchat");
    stanza_set_attr(m, "from", r->jid);
    stanza_set_attr(m, "id", mid);
    free(mid);
    struct stanza *retract = stanza_add_child(m, "retract", NS_RETRACT);
    stanza_set_attr(retract, "id", id);
    char *by = occupant_jid(r, mod->nick);
    stanza_set_attr(stanza_add_child(retract, "moderated", NS_MODERATE), "by", by);
    free(by);
    char *reason = stanza_child_text(payload, "reason", NULL);
    if (reason && *reason)
        stanza_add_text_child(retract, "reason", NULL, reason);
    free(reason);
    /* The retraction takes the message's place in the archive (§5), with its own id. */
    char *aid = muc_mam_store(r, m, mod->nick);
    struct stanza *sid = stanza_add_child(m, "stanza-id", NS_SID);
    stanza_set_attr(sid, "id", aid ? aid : id);
    stanza_set_attr(sid, "by", r->jid);
    free(aid);
    history_add(r, m);
    for (struct muc_occupant *to = r->occupants; to; to = to->next) {
        struct stanza *c = stanza_copy(m);
        stanza_set_attr(c, "to", to->jid);
        send_stanza(c);
    }
    stanza_free(m);
    send_stanza(stanza_iq_result(iq));
    return NULL;
}

static const char *room_iq(struct muc_room *r, struct stanza *iq, const struct jid *from)
{
    const char *type = stanza_attr(iq, "type");
    if (!str_eq(type, "get") && !str_eq(type, "set"))
        return NULL;
    struct stanza *payload = stanza_first_elem(iq);
    if (!payload || stanza_next_elem(payload))
        return "bad-request";
    char *full = jid_to_string(from);
    char *bare = jid_bare_string(from);
    const char *cond = NULL;
    bool is_query = strcmp(payload->name, "query") == 0;
    if (!r) {
        cond = "item-not-found";
    } else if (r->locked && muc_affiliation_of(r, bare) != MUC_AFF_OWNER) {
        cond = "item-not-found"; /* §10.1.3 */
    } else if (is_query && str_eq(type, "get") &&
               (str_eq(payload->ns, NS_DISCO_INFO) || str_eq(payload->ns, NS_DISCO_ITEMS))) {
        cond = room_disco(r, iq, payload, full);
    } else if (is_query && str_eq(payload->ns, NS_MUC_ADMIN)) {
        cond = muc_admin_iq(&r, iq, from);
    } else if (is_query && str_eq(payload->ns, NS_MUC_OWNER)) {
        cond = muc_owner_iq(&r, iq, from);
    } else if (is_query && str_eq(payload->ns, NS_MAM)) {
        cond = muc_mam_query(r, iq, from);
    } else if (str_eq(type, "get") && str_eq(payload->ns, NS_PING)) {
        send_stanza(stanza_iq_result(iq));
    } else if (str_eq(type, "set") && str_eq(payload->ns, NS_MODERATE) &&
               strcmp(payload->name, "moderate") == 0) {
        cond = moderate(r, iq, payload, full);
    } else {
        cond = "service-unavailable";
    }
    free(full);
    free(bare);
    return cond;
}

/* IQs to an occupant's room JID are relayed to its real JID (vCard, version...), and answers
 * back; a ping to one's own nick is answered by the room (XEP-0410 §3). */
static void occupant_iq(struct muc_room *r, struct stanza *iq, const struct jid *to,
                        const char *from)
{
    const char *type = stanza_attr(iq, "type");
    bool request = str_eq(type, "get") || str_eq(type, "set");
    struct muc_occupant *o = r ? muc_occupant_by_jid(r, from) : NULL;
    if (!o) {
        if (request)
            router_error(iq, "not-acceptable", "Only occupants may address occupants");
        return;
    }
    struct stanza *payload = stanza_first_elem(iq);
    if (request && str_eq(o->nick, to->resource) && payload && str_eq(payload->ns, NS_PING)) {
        send_stanza(stanza_iq_result(iq));
        return;
    }
    struct muc_occupant *t = muc_occupant_by_nick(r, to->resource);
    if (!t) {
        if (request)
            router_error(iq, "item-not-found", NULL);
        return;
    }
    struct stanza *out = stanza_copy(iq);
    char *f = occupant_jid(r, o->nick);
    stanza_set_attr(out, "from", f);
    free(f);
    stanza_set_attr(out, "to", t->jid);
    send_stanza(out);
}

/* ---------------------------------------------------------------- routing */

static void route_one(struct stanza *st)
{
    struct jid to, from;
    if (jid_parse(stanza_attr(st, "to"), &to) < 0) {
        stanza_free(st);
        return;
    }
    if (jid_parse(stanza_attr(st, "from"), &from) < 0) {
        log_warn("muc", "dropping a stanza without a valid from");
        jid_fini(&to);
        stanza_free(st);
        return;
    }
    char *from_s = jid_to_string(&from);
    char *bare = jid_bare_string(&from);
    const char *kind = st->name;
    if (!to.local) {
        const char *type = stanza_attr(st, "type");
        if (strcmp(kind, "iq") == 0 && (str_eq(type, "get") || str_eq(type, "set"))) {
            struct stanza *payload = stanza_first_elem(st);
            const char *cond =
                payload && !stanza_next_elem(payload) ? service_iq(st, &to) : "bad-request";
            if (cond)
                router_error(st, cond, NULL);
        } else if (strcmp(kind, "message") == 0) {
            router_error(st, "service-unavailable", NULL);
        }
        goto done;
    }
    char *key = jid_bare_string(&to);
    struct muc_room *r = hmap_get(&rooms, key);
    free(key);
    if (strcmp(kind, "presence") == 0) {
        room_presence(r, st, &to, from_s, bare);
    } else if (strcmp(kind, "message") == 0) {
        room_message(r, st, &to, from_s, bare);
    } else if (strcmp(kind, "iq") == 0) {
        if (to.resource) {
            occupant_iq(r, st, &to, from_s);
        } else {
            const char *cond = room_iq(r, st, &from);
            if (cond)
                router_error(st, cond, NULL);
        }
    }
done:
    free(from_s);
    free(bare);
    jid_fini(&to);
    jid_fini(&from);
    stanza_free(st);
}

/* Delivery is synchronous: an error bounced by a vanished resource comes straight back here
 * while a broadcast is still walking the occupant list. Stanzas arriving during muc_route() wait
 * in this queue until the outer call is done, so room state only changes between stanzas. */
static struct stanza **pending;
static size_t n_pending, cap_pending;
static bool routing;

void muc_route(struct stanza *st)
{
    if (routing) {
        if (n_pending == cap_pending) {
            cap_pending = cap_pending ? 2 * cap_pending : 16;
            pending = xrealloc(pending, cap_pending * sizeof *pending);
        }
        pending[n_pending++] = st;
        return;
    }
    routing = true;
    route_one(st);
    for (size_t i = 0; i < n_pending; i++)
        route_one(pending[i]);
    n_pending = 0;
    routing = false;
}

/* ---------------------------------------------------------------- module */

static bool muc_active(void)
{
    return server.cfg.n_muc_hosts > 0;
}

static int muc_init(void)
{
    hmap_init(&rooms);
    services = xcalloc(server.cfg.n_muc_hosts, sizeof *services);
    for (size_t i = 0; i < server.cfg.n_muc_hosts; i++) {
        char *d = jid_prep_domain(server.cfg.muc_hosts[i]);
        if (!d || server_is_local_host(d)) {
            log_error("muc", "[muc] hosts: '%s' is %s", server.cfg.muc_hosts[i],
                      d ? "also a [host]" : "not a valid domain");
            free(d);
            return -1;
        }
        services[n_services++] = d;
        struct load_ctx lc = {.service = d};
        if (storage_map_all(server.db, d, "", STORE, load_room, &lc) < 0)
            return -1;
        log_info("muc", "service %s: %zu persistent room(s)", d, lc.n);
    }
    muc_mam_init();
    return 0;
}

static void muc_fini(void)
{
    muc_mam_fini();
    const char *k;
    void *v;
    for (size_t i = 0; hmap_next(&rooms, &i, &k, &v);)
        room_free(v);
    hmap_fini(&rooms);
    for (size_t i = 0; i < n_services; i++)
        free(services[i]);
    free(services);
    free(pending);
    pending = NULL;
    cap_pending = 0;
    services = NULL;
    n_services = 0;
}

const struct module mod_muc = {
    .name = "muc",
    .active = muc_active,
    .init = muc_init,
    .fini = muc_fini,
};
