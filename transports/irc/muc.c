/* muc.c — IRC channels as XEP-0045 rooms: joining and leaving, occupants from NAMES/JOIN/PART/
 * QUIT/KICK/NICK/MODE, the subject, groupchat messages both ways (with XEP-0359 stanza-ids and
 * the per-user archive), XEP-0313 queries on the room, disco#info. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "addr.h"
#include "bridge.h"
#include "isthmus/log.h"
#include "isthmus/rsm.h"
#include "isthmus/util.h"
#include "isthmus/xmlstream.h"

#define MUC_MAM_MAX 100

static struct gw *net_gw(const struct bridge_net *net)
{
    return net->owner->gw;
}

static int nick_cmp(const struct bridge_net *net, const char *a, const char *b)
{
    return net->conn ? irc_casecmp(net->conn, a, b) : strcasecmp(a, b);
}

/* Our nick on the network right now. */
static const char *our_nick(const struct bridge_net *net)
{
    return net->conn && net->registered ? irc_nick(net->conn) : net->nick;
}

static char *room_bare(const struct bridge_room *r)
{
    return irc_addr_jid(gw_domain(net_gw(r->net)), r->name, r->net->server, NULL);
}

/* room/nick, or NULL when nick cannot be a resourcepart (RFC 7622 §3.4). */
static char *room_jid(const struct bridge_room *r, const char *nick)
{
    char *prepped = jid_prep_resource(nick);
    if (!prepped)
        return NULL;
    free(prepped);
    return irc_addr_jid(gw_domain(net_gw(r->net)), r->name, r->net->server, nick);
}

/* ---- rooms ---- */

struct bridge_room *muc_room_find(struct bridge_net *net, const char *channel)
{
    for (size_t i = 0; i < net->n_rooms; i++)
        if (nick_cmp(net, net->rooms[i]->name, channel) == 0)
            return net->rooms[i];
    return NULL;
}

static void occ_clear(struct bridge_room *r)
{
    for (size_t i = 0; i < r->n_occ; i++)
        free(r->occ[i].nick);
    free(r->occ);
    r->occ = NULL;
    r->n_occ = 0;
}

void muc_room_free(struct bridge_room *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_res; i++)
        free(r->res[i]);
    free(r->res);
    occ_clear(r);
    free(r->name);
    free(r->key);
    free(r->join_nick);
    free(r->topic);
    free(r->topic_by);
    free(r);
}

/* Unlinks r from its net and frees it. */
static void room_drop(struct bridge_room *r)
{
    struct bridge_net *net = r->net;
    for (size_t i = 0; i < net->n_rooms; i++) {
        if (net->rooms[i] == r) {
            memmove(&net->rooms[i], &net->rooms[i + 1], (net->n_rooms - i - 1) * sizeof(void *));
            net->n_rooms--;
            break;
        }
    }
    muc_room_free(r);
}

static bool room_has_res(const struct bridge_room *r, const char *full)
{
    for (size_t i = 0; i < r->n_res; i++)
        if (strcmp(r->res[i], full) == 0)
            return true;
    return false;
}

static bool room_del_res(struct bridge_room *r, const char *full)
{
    for (size_t i = 0; i < r->n_res; i++) {
        if (strcmp(r->res[i], full) == 0) {
            free(r->res[i]);
            r->res[i] = r->res[--r->n_res];
            return true;
        }
    }
    return false;
}

static struct bridge_occupant *occ_find(struct bridge_room *r, const char *nick)
{
    for (size_t i = 0; i < r->n_occ; i++)
        if (nick_cmp(r->net, r->occ[i].nick, nick) == 0)
            return &r->occ[i];
    return NULL;
}

bool muc_nick_in_room(const struct bridge_room *r, const char *nick)
{
    return occ_find((struct bridge_room *)r, nick) != NULL;
}

static struct bridge_occupant *occ_add(struct bridge_room *r, const char *nick, const char *modes)
{
    struct bridge_occupant *o = occ_find(r, nick);
    if (!o) {
        if (r->n_occ >= BRIDGE_MAX_OCCUPANTS)
            return NULL;
        r->occ = xrealloc(r->occ, (r->n_occ + 1) * sizeof *r->occ);
        o = &r->occ[r->n_occ++];
        o->nick = xstrdup(nick);
    }
    snprintf(o->modes, sizeof o->modes, "%s", modes ? modes : "");
    return o;
}

static void occ_del(struct bridge_room *r, struct bridge_occupant *o)
{
    free(o->nick);
    *o = r->occ[--r->n_occ];
}

/* ---- presences (XEP-0045 §7.2.3) ---- */

/* IRC prefix modes → MUC affiliation and role (irc_spec.md: ~ owner, & @ admin, % member/moderator,
 * + member/participant). */
static void modes_to_muc(const char *modes, const char **aff, const char **role)
{
    if (strchr(modes, 'q') || strchr(modes, 'y')) {
        *aff = "owner", *role = "moderator";
    } else if (strchr(modes, 'a') || strchr(modes, 'o')) {
        *aff = "admin", *role = "moderator";
    } else if (strchr(modes, 'h')) {
        *aff = "member", *role = "moderator";
    } else if (strchr(modes, 'v')) {
        *aff = "member", *role = "participant";
    } else {
        *aff = "none", *role = "participant";
    }
}

static void add_status(struct stanza *x, const char *code)
{
    stanza_set_attr(stanza_add_child(x, "status", NULL), "code", code);
}

/* A presence from room/nick (NULL when nick is not addressable). modes NULL: unavailable. */
static struct stanza *occupant_presence(const struct bridge_room *r, const char *nick,
                                        const char *modes, bool self, struct stanza **x_out)
{
    char *from = room_jid(r, nick);
    if (!from)
        return NULL;
    struct stanza *p = gw_stanza("presence", from, NULL, modes ? NULL : "unavailable", NULL);
    free(from);
    struct stanza *x = stanza_add_child(p, "x", NS_MUC_USER);
    struct stanza *item = stanza_add_child(x, "item", NULL);
    const char *aff = "none", *role = "none";
    if (modes)
        modes_to_muc(modes, &aff, &role);
    stanza_set_attr(item, "affiliation", aff);
    stanza_set_attr(item, "role", role);
    if (self)
        add_status(x, "110");
    if (x_out)
        *x_out = x;
    return p;
}

static void send_to_room(struct bridge_room *r, struct stanza *st)
{
    if (st)
        bridge_send_each(net_gw(r->net), st, (const char *const *)r->res, r->n_res);
}

static void send_to_one(struct bridge_room *r, struct stanza *st, const char *to)
{
    if (!st)
        return;
    stanza_set_attr(st, "to", to);
    gw_send(net_gw(r->net), st);
}

static struct stanza *subject_message(struct bridge_room *r, const char *by)
{
    char *from = by ? room_jid(r, by) : NULL;
    if (!from)
        from = room_bare(r);
    struct stanza *m = gw_stanza("message", from, NULL, "groupchat", NULL);
    free(from);
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    if (r->topic) {
        char *t = bridge_text(r->topic);
        stanza_add_text_child(m, "subject", NULL, t);
        free(t);
    } else {
        stanza_add_child(m, "subject", NULL);
    }
    return m;
}

/* §7.2.3 for one resource: the other occupants, then the self-presence (110, 210 when IRC gave
 * us another nick than the one asked for), then the subject, which ends the join (§7.2.15). */
static void send_join_sequence(struct bridge_room *r, const char *to)
{
    const char *me = our_nick(r->net);
    for (size_t i = 0; i < r->n_occ; i++) {
        if (nick_cmp(r->net, r->occ[i].nick, me) == 0)
            continue;
        send_to_one(r, occupant_presence(r, r->occ[i].nick, r->occ[i].modes, false, NULL), to);
    }
    struct bridge_occupant *self = occ_find(r, me);
    struct stanza *x = NULL;
    struct stanza *p = occupant_presence(r, me, self ? self->modes : "", true, &x);
    if (p && r->join_nick && strcmp(r->join_nick, me) != 0)
        add_status(x, "210");
    send_to_one(r, p, to);
    send_to_one(r, subject_message(r, NULL), to);
}

/* §7.14: the self-presence of a resource leaving (or made to leave). */
static struct stanza *self_unavailable(struct bridge_room *r, const char *status)
{
    struct stanza *p = occupant_presence(r, our_nick(r->net), NULL, true, NULL);
    if (p && status && *status) {
        char *t = bridge_text(status);
        stanza_add_text_child(p, "status", NULL, t);
        free(t);
    }
    return p;
}

static struct stanza *error_presence(struct bridge_room *r, const char *nick, const char *cond,
                                     const char *text)
{
    char *from = room_jid(r, nick ? nick : "");
    if (!from)
        from = room_bare(r);
    struct stanza *p = gw_stanza("presence", from, NULL, "error", NULL);
    free(from);
    stanza_add_child(p, "x", NS_MUC);
    struct stanza *e = stanza_add_child(p, "error", NULL);
    stanza_set_attr(e, "type", stanza_error_type(cond));
    stanza_add_child(e, cond, NS_STANZA_ERRORS);
    if (text) {
        char *t = bridge_text(text);
        stanza_add_text_child(e, "text", NS_STANZA_ERRORS, t);
        free(t);
    }
    return p;
}

/* A join that failed: presence errors to every resource waiting (§7.2.6–7.2.9), room dropped. */
static void room_fail(struct bridge_room *r, const char *cond, const char *text)
{
    struct stanza *p = error_presence(r, r->join_nick, cond, text);
    send_to_room(r, p);
    room_drop(r);
}

const char *muc_error_for_reason(const char *reason)
{
    if (!reason)
        return "remote-server-timeout";
    static const struct {
        const char *word, *cond;
    } map[] = {
        {"resolv", "remote-server-not-found"}, {"dns", "remote-server-not-found"},
        {"name or service", "remote-server-not-found"}, {"nxdomain", "remote-server-not-found"},
        {"no address", "remote-server-not-found"}, {"not found", "remote-server-not-found"},
        {"sasl", "not-authorized"}, {"authentication", "not-authorized"},
        {"password", "not-authorized"}, {"nick", "conflict"},
        {"not allowed", "not-allowed"}, {"banned", "forbidden"}, {"k-line", "forbidden"},
        {"g-line", "forbidden"},
    };
    for (size_t i = 0; i < ARRAY_LEN(map); i++)
        if (strcasestr(reason, map[i].word))
            return map[i].cond;
    return "remote-server-timeout";
}

/* ---- the XMPP side ---- */

static void send_join(struct bridge_room *r)
{
    if (r->key)
        irc_send(r->net->conn, "JOIN %s %s", r->name, r->key);
    else
        irc_send(r->net->conn, "JOIN %s", r->name);
}

const char *muc_presence(struct bridge_user *bu, const struct stanza *st, const char *from,
                         const char *server, const char *channel, const char *nick)
{
    const char *type = stanza_attr(st, "type");
    struct bridge_net *net = bridge_net_find(bu, server);
    struct bridge_room *r = net ? muc_room_find(net, channel) : NULL;
    bool in_room = r && room_has_res(r, from);
    if (type && (strcmp(type, "unavailable") == 0 || strcmp(type, "error") == 0)) {
        if (!in_room)
            return NULL;
        /* §7.14 exit: self-unavailable to that resource; PART once the last one left. */
        room_del_res(r, from);
        if (strcmp(type, "unavailable") == 0)
            send_to_one(r, self_unavailable(r, NULL), from);
        if (r->n_res == 0) {
            if (net->conn && net->registered) {
                char *status = stanza_child_text(st, "status", NULL);
                if (status && *status && strlen(status) < 300 && !strpbrk(status, "\r\n"))
                    irc_send(net->conn, "PART %s :%s", r->name, status);
                else
                    irc_send(net->conn, "PART %s", r->name);
                free(status);
            }
            room_drop(r);
            bridge_net_maybe_quit(net, NULL);
        }
        return NULL;
    }
    if (type)
        return NULL;  /* probe, subscribe...: not for rooms */
    if (!nick)
        return "jid-malformed"; /* §7.2.1: a join needs a nick */
    if (!irc_addr_valid_nick(nick))
        return "not-acceptable";
    bool muc_x = stanza_child(st, "x", NS_MUC) != NULL;
    if (in_room) {
        if (r->synced && nick_cmp(net, nick, our_nick(net)) != 0) {
            /* §7.6: a nick change. The presences follow IRC's NICK. */
            if (net->conn && net->registered)
                irc_send(net->conn, "NICK %s", nick);
        } else if (r->synced && muc_x) {
            send_join_sequence(r, from); /* the client thinks it is not in: join it again */
        }
        return NULL;
    }
    const char *err = NULL, *text = NULL;
    net = bridge_net_get(bu, server, nick, &err, &text);
    if (!net) {
        struct bridge_room tmp = {0};
        struct bridge_net tmpnet = {.owner = bu, .server = (char *)server};
        tmp.net = &tmpnet;
        tmp.name = (char *)channel;
        struct stanza *p = error_presence(&tmp, nick, err, text);
        send_to_one(&tmp, p, from);
        return NULL;
    }
    r = muc_room_find(net, channel);
    if (!r) {
        if (net->n_rooms >= BRIDGE_MAX_ROOMS)
            return "resource-constraint";
        r = xcalloc(1, sizeof *r);
        r->net = net;
        r->name = xstrdup(channel);
        r->join_nick = xstrdup(nick);
        struct stanza *x = stanza_child(st, "x", NS_MUC);
        char *key = x ? stanza_child_text(x, "password", NULL) : NULL;
        if (key && *key && strlen(key) < 100 && !strpbrk(key, " \r\n,"))
            r->key = key;
        else
            free(key);
        net->rooms = xrealloc(net->rooms, (net->n_rooms + 1) * sizeof *net->rooms);
        net->rooms[net->n_rooms++] = r;
        if (net->conn && net->registered)
            send_join(r);
    }
    if (r->n_res >= BRIDGE_MAX_RESOURCES)
        return "resource-constraint";
    r->res = xrealloc(r->res, (r->n_res + 1) * sizeof *r->res);
    r->res[r->n_res++] = xstrdup(from);
    if (r->synced)
        send_join_sequence(r, from); /* a second resource: no new JOIN */
    return NULL;
}

static void archive(struct bridge_room *r, const struct stanza *m, const char *sid, int64_t when)
{
    struct bridge_user *bu = r->net->owner;
    if (!bridge_archive_enabled(bu))
        return;
    char *with = room_bare(r);
    char *xml = stanza_to_string(m, NS_CLIENT);
    gw_store_archive_append(gw_store(bu->gw), bu->jid, with, sid, when, xml);
    free(xml);
    free(with);
}

static void add_stanza_id(struct stanza *m, const char *sid, const char *by)
{
    struct stanza *s = stanza_add_child(m, "stanza-id", NS_SID);
    stanza_set_attr(s, "id", sid);
    stanza_set_attr(s, "by", by);
}

const char *muc_message(struct bridge_user *bu, const struct stanza *st, const char *from,
                        const char *server, const char *channel, const char *nick)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "error"))
        return NULL;
    if (nick) {
        /* §7.5: a private message to an occupant is a PRIVMSG to that nick. */
        if (str_eq(type, "groupchat"))
            return "bad-request";
        return bridge_private_message(bu, st, server, nick);
    }
    struct bridge_net *net = bridge_net_find(bu, server);
    struct bridge_room *r = net ? muc_room_find(net, channel) : NULL;
    if (!str_eq(type, "groupchat")) {
        /* §7.8.2 mediated invitation: <x muc#user><invite to='nick%server@gw'/></x> → INVITE. */
        struct stanza *x = stanza_child(st, "x", NS_MUC_USER);
        struct stanza *inv = x ? stanza_child(x, "invite", NULL) : NULL;
        if (!inv)
            return stanza_child(st, "body", NULL) ? "bad-request" : NULL;
        struct jid to;
        if (!r || !room_has_res(r, from))
            return "not-acceptable";
        const char *to_s = stanza_attr(inv, "to");
        if (!to_s || jid_parse(to_s, &to) < 0)
            return "jid-malformed";
        struct irc_addr a;
        const char *cond = "item-not-found";
        if (to.local && str_eq(to.domain, gw_domain(bu->gw)) && irc_addr_parse(to.local, &a) == 0) {
            if (a.kind == IRC_ADDR_NICK && strcmp(a.server, server) == 0) {
                char *line = xasprintf("INVITE %s %s", a.target, r->name);
                bridge_net_send(net, line);
                free(line);
                cond = NULL;
            }
            irc_addr_fini(&a);
        }
        jid_fini(&to);
        return cond;
    }
    if (!r || !room_has_res(r, from) || !r->synced)
        return "not-acceptable"; /* §7.4: only occupants may speak */
    char *subject = stanza_child_text(st, "subject", NULL);
    char *body = stanza_child_text(st, "body", NULL);
    if (subject && !body) {
        /* §8.1: subject change → TOPIC */
        if (strlen(subject) > 400 || strpbrk(subject, "\r\n")) {
            free(subject);
            return "not-acceptable";
        }
        irc_send(net->conn, "TOPIC %s :%s", r->name, subject);
        free(subject);
        return NULL;
    }
    free(subject);
    if (!body || !*body) {
        free(body);
        return NULL;
    }
    if (strlen(body) > BRIDGE_MAX_BODY) {
        free(body);
        return "not-acceptable";
    }
    bool action = strncmp(body, "/me ", 4) == 0;
    irc_say(net->conn, r->name, action ? body + 4 : body, action, false);
    /* The reflection (§7.4) to every resource in the room, with the client's id and origin-id. */
    char *rj = room_jid(r, our_nick(net));
    char *bare = room_bare(r);
    if (rj) {
        struct stanza *m = gw_stanza("message", rj, NULL, "groupchat", stanza_attr(st, "id"));
        char *clean = bridge_text(body); /* same text IRC got, without control characters */
        stanza_add_text_child(m, "body", NULL, clean);
        free(clean);
        struct stanza *oid = stanza_child(st, "origin-id", NS_SID);
        if (oid && stanza_attr(oid, "id") && strlen(stanza_attr(oid, "id")) < 200)
            stanza_set_attr(stanza_add_child(m, "origin-id", NS_SID), "id",
                            stanza_attr(oid, "id"));
        char *sid = random_id(16);
        add_stanza_id(m, sid, bare);
        archive(r, m, sid, bridge_now_us());
        free(sid);
        send_to_room(r, m);
    }
    free(rj);
    free(bare);
    free(body);
    return NULL;
}

/* ---- XEP-0313 on the room ---- */

struct mam_ctx {
    struct gw *gw;
    const char *to, *room, *queryid;
    char *first, *last;
    unsigned n;
};

static int mam_item(void *ud, const char *id, int64_t when_us, const char *xml)
{
    struct mam_ctx *c = ud;
    struct stanza *inner = xmlstream_parse_element(xml, strlen(xml), 32);
    if (!inner)
        return 0;
    stanza_set_attr(inner, "to", c->to);
    struct stanza *m = gw_stanza("message", c->room, c->to, NULL, NULL);
    struct stanza *res = stanza_add_child(m, "result", NS_MAM);
    if (c->queryid)
        stanza_set_attr(res, "queryid", c->queryid);
    stanza_set_attr(res, "id", id);
    struct stanza *fwd = stanza_add_child(res, "forwarded", NS_FORWARD);
    char stamp[32];
    format_datetime(stamp, when_us / 1000000);
    stanza_set_attr(stanza_add_child(fwd, "delay", NS_DELAY), "stamp", stamp);
    stanza_append(fwd, inner);
    gw_send(c->gw, m);
    if (!c->first)
        c->first = xstrdup(id);
    free(c->last);
    c->last = xstrdup(id);
    c->n++;
    return 0;
}

static int64_t parse_stamp(const char *s)
{
    struct tm tm = {0};
    const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (!end)
        return -1;
    return (int64_t)timegm(&tm);
}

static const char *mam_query(struct bridge_user *bu, const struct stanza *iq, const char *from,
                             const char *room)
{
    struct stanza *q = stanza_child(iq, "query", NS_MAM);
    if (str_eq(stanza_attr(iq, "type"), "get")) {
        /* §6.1: the form fields we support */
        struct stanza *res = stanza_iq_result(iq);
        struct stanza *rq = stanza_add_child(res, "query", NS_MAM);
        struct stanza *x = stanza_add_child(rq, "x", NS_DATA);
        stanza_set_attr(x, "type", "form");
        static const char *const vars[] = {"FORM_TYPE", "start", "end"};
        for (size_t i = 0; i < ARRAY_LEN(vars); i++) {
            struct stanza *f = stanza_add_child(x, "field", NULL);
            stanza_set_attr(f, "var", vars[i]);
            stanza_set_attr(f, "type", i == 0 ? "hidden" : "text-single");
            if (i == 0)
                stanza_add_text_child(f, "value", NULL, NS_MAM);
        }
        gw_send(bu->gw, res);
        return NULL;
    }
    struct gw_archive_query aq = {.with = room, .max = 50};
    struct gw_kv *kv = NULL;
    size_t n = gw_form_values(q, &kv);
    const char *start = gw_kv_get(kv, n, "start"), *end = gw_kv_get(kv, n, "end");
    int64_t s = start ? parse_stamp(start) : 0, e = end ? parse_stamp(end) : 0;
    gw_kv_free(kv, n);
    if (s < 0 || e < 0)
        return "bad-request";
    aq.start_us = s * 1000000;
    aq.end_us = e ? e * 1000000 + 999999 : 0;
    struct rsm_request req;
    if (rsm_parse(q, &req) < 0) {
        rsm_request_fini(&req);
        return "bad-request";
    }
    if (req.max >= 0)
        aq.max = req.max > MUC_MAM_MAX ? MUC_MAM_MAX : (unsigned)req.max;
    aq.after_id = req.after;
    aq.before_id = req.before;
    const char *queryid = stanza_attr(q, "queryid");
    if (queryid && strlen(queryid) > 200)
        queryid = NULL;
    struct mam_ctx c = {bu->gw, from, room, queryid, NULL, NULL, 0};
    bool complete = false;
    int rc = aq.max ? gw_store_archive_query(gw_store(bu->gw), bu->jid, &aq, mam_item, &c,
                                             &complete)
                    : 0;
    const char *cond = NULL;
    if (rc == 1) {
        cond = "item-not-found";
    } else if (rc < 0) {
        cond = "internal-server-error";
    } else {
        /* §4.3: the <fin/> with the RSM <set/> of the page */
        struct stanza *res = stanza_iq_result(iq);
        struct stanza *fin = stanza_add_child(res, "fin", NS_MAM);
        if (complete)
            stanza_set_attr(fin, "complete", "true");
        rsm_add_reply(fin, c.first, -1, c.last, -1);
        gw_send(bu->gw, res);
    }
    free(c.first);
    free(c.last);
    rsm_request_fini(&req);
    return cond;
}

const char *muc_iq(struct bridge_user *bu, const struct stanza *st, const char *from,
                   const char *server, const char *channel, const char *nick)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "result") || str_eq(type, "error"))
        return NULL;
    if (nick)
        return "service-unavailable"; /* §7.5: IQs to occupants are not relayed to IRC */
    char *room = irc_addr_jid(gw_domain(bu->gw), channel, server, NULL);
    if (!room)
        return "jid-malformed";
    const char *cond = "service-unavailable";
    if (stanza_child(st, "query", NS_MAM)) {
        cond = mam_query(bu, st, from, room);
    } else if (str_eq(type, "get") && stanza_child(st, "query", NS_DISCO_INFO)) {
        /* §6.4: the room's identity and features */
        struct stanza *res = stanza_iq_result(st);
        struct stanza *q = stanza_add_child(res, "query", NS_DISCO_INFO);
        struct stanza *id = stanza_add_child(q, "identity", NULL);
        stanza_set_attr(id, "category", "conference");
        stanza_set_attr(id, "type", "text");
        char *name = xasprintf("%s on %s", channel, server);
        stanza_set_attr(id, "name", name);
        free(name);
        static const char *const features[] = {
            NS_MUC, NS_MAM, NS_DISCO_INFO, "muc_temporary", "muc_open", "muc_public",
            "muc_unmoderated", "muc_nonanonymous", "muc_unsecured",
        };
        for (size_t i = 0; i < ARRAY_LEN(features); i++)
            stanza_set_attr(stanza_add_child(q, "feature", NULL), "var", features[i]);
        gw_send(bu->gw, res);
        cond = NULL;
    } else if (str_eq(type, "get") && stanza_child(st, "query", NS_DISCO_ITEMS)) {
        struct stanza *res = stanza_iq_result(st);
        stanza_add_child(res, "query", NS_DISCO_ITEMS);
        gw_send(bu->gw, res);
        cond = NULL;
    }
    free(room);
    return cond;
}

/* ---- the IRC side ---- */

void muc_net_registered(struct bridge_net *net)
{
    for (size_t i = 0; i < net->n_rooms; i++) {
        struct bridge_room *r = net->rooms[i];
        r->joined = r->synced = false;
        occ_clear(r);
        send_join(r);
    }
}

/* Every occupant but us goes unavailable (status text given), then us. */
static void room_empty_out(struct bridge_room *r, const char *status)
{
    const char *me = our_nick(r->net);
    if (r->synced) {
        for (size_t i = 0; i < r->n_occ; i++)
            if (nick_cmp(r->net, r->occ[i].nick, me) != 0)
                send_to_room(r, occupant_presence(r, r->occ[i].nick, NULL, false, NULL));
        send_to_room(r, self_unavailable(r, status));
    }
    occ_clear(r);
    r->joined = r->synced = false;
}

void muc_net_lost(struct bridge_net *net, const char *reason, bool fatal)
{
    for (size_t i = 0; i < net->n_rooms;) {
        struct bridge_room *r = net->rooms[i];
        if (fatal && !r->ever_synced) {
            char *t = xasprintf("Cannot connect to %s: %s", net->server,
                                reason ? reason : "connection failed");
            room_fail(r, muc_error_for_reason(reason), t);
            free(t);
            continue;
        }
        room_empty_out(r, reason ? reason : "Connection lost");
        if (fatal)
            room_drop(r);
        else
            i++;
    }
}

void muc_resource_gone(struct bridge_net *net, const char *full)
{
    for (size_t i = 0; i < net->n_rooms;) {
        struct bridge_room *r = net->rooms[i];
        if (room_del_res(r, full) && r->n_res == 0) {
            if (net->conn && net->registered)
                irc_send(net->conn, "PART %s", r->name);
            room_drop(r);
            continue;
        }
        i++;
    }
}

void muc_leave_all(struct bridge_net *net, const char *status)
{
    while (net->n_rooms) {
        struct bridge_room *r = net->rooms[net->n_rooms - 1];
        if (r->synced)
            send_to_room(r, self_unavailable(r, status));
        else if (!r->ever_synced)
            send_to_room(r, error_presence(r, r->join_nick, "service-unavailable", status));
        room_drop(r);
    }
}

/* Numerics that refuse a JOIN (RFC 2812 §5.2) → XEP-0045 §7.2 error conditions. */
static const char *join_error(const char *cmd)
{
    static const struct {
        const char *num, *cond;
    } map[] = {
        {"471", "service-unavailable"},   /* channel full, §7.2.10 */
        {"473", "registration-required"}, /* invite only, §7.2.7 */
        {"474", "forbidden"},             /* banned, §7.2.8 */
        {"475", "not-authorized"},        /* bad key, §7.2.6 */
        {"477", "registration-required"}, /* needs a registered nick */
        {"403", "item-not-found"},        /* no such channel */
        {"476", "jid-malformed"},         /* bad channel mask */
        {"405", "resource-constraint"},   /* too many channels */
        {"437", "resource-constraint"},   /* temporarily unavailable */
        {"489", "forbidden"},             /* secure-only channel */
        {"520", "forbidden"},             /* oper only */
    };
    for (size_t i = 0; i < ARRAY_LEN(map); i++)
        if (strcmp(cmd, map[i].num) == 0)
            return map[i].cond;
    return NULL;
}

static bool has_userhost(const struct irc_msg *m)
{
    return m->userhost && *m->userhost;
}

/* XEP-0203 only for history: server-time older than a few seconds (a bouncer's playback). */
static int64_t history_time(const struct irc_msg *m)
{
    if (!m->tag_time)
        return 0;
    int64_t t = parse_stamp(m->tag_time);
    if (t <= 0 || wall_time() - t < 10)
        return 0;
    return t;
}

static void on_channel_text(struct bridge_net *net, struct bridge_room *r,
                            const struct irc_msg *m)
{
    if (!r->synced || (has_userhost(m) && nick_cmp(net, m->nick, our_nick(net)) == 0))
        return;
    const char *text = m->params[1];
    size_t alen;
    const char *action = irc_ctcp_action(text, &alen);
    if (!action && text[0] == '\001')
        return; /* other CTCP to a channel */
    char *raw = action ? xasprintf("/me %.*s", (int)alen, action) : xstrdup(text);
    char *body = bridge_text(raw);
    free(raw);
    char *from = has_userhost(m) ? room_jid(r, m->nick) : NULL;
    if (!from)
        from = room_bare(r); /* a server notice to the channel: from the room itself */
    char *bare = room_bare(r);
    if (*body) {
        struct stanza *msg = gw_stanza("message", from, NULL, "groupchat", NULL);
        char *id = random_id(16);
        stanza_set_attr(msg, "id", id);
        free(id);
        stanza_add_text_child(msg, "body", NULL, body);
        char *sid = random_id(16);
        add_stanza_id(msg, sid, bare);
        int64_t t = history_time(m);
        if (t) {
            char stamp[32];
            format_datetime(stamp, t);
            struct stanza *d = stanza_add_child(msg, "delay", NS_DELAY);
            stanza_set_attr(d, "stamp", stamp);
            stanza_set_attr(d, "from", bare);
        }
        archive(r, msg, sid, t ? t * 1000000 : bridge_now_us());
        free(sid);
        send_to_room(r, msg);
    }
    free(bare);
    free(from);
    free(body);
}

static void on_join(struct bridge_net *net, const struct irc_msg *m)
{
    struct bridge_room *r = muc_room_find(net, m->params[0]);
    if (!r)
        return;
    if (nick_cmp(net, m->nick, our_nick(net)) == 0) {
        r->joined = true;
        occ_clear(r);
        return;
    }
    bool known = occ_find(r, m->nick) != NULL;
    struct bridge_occupant *o = occ_add(r, m->nick, "");
    if (o && r->synced && !known)
        send_to_room(r, occupant_presence(r, o->nick, o->modes, false, NULL));
}

static void on_names(struct bridge_net *net, const struct irc_msg *m)
{
    /* 353 me = #chan :@a +b c */
    if (m->nparams < 4)
        return;
    struct bridge_room *r = muc_room_find(net, m->params[2]);
    if (!r || r->synced)
        return;
    char *list = xstrdup(m->params[3]);
    for (char *save = NULL, *e = strtok_r(list, " ", &save); e; e = strtok_r(NULL, " ", &save)) {
        char modes[16];
        const char *nick = irc_names_entry(net->conn, e, modes, sizeof modes);
        if (nick && *nick) {
            occ_add(r, nick, modes);
            bridge_contact_seen(net, nick, true);
        }
    }
    free(list);
}

static void on_end_of_names(struct bridge_net *net, const struct irc_msg *m)
{
    struct bridge_room *r = muc_room_find(net, m->params[1]);
    if (!r || r->synced)
        return;
    r->joined = true;
    r->synced = true;
    r->ever_synced = true;
    if (!occ_find(r, our_nick(net)))
        occ_add(r, our_nick(net), "");
    for (size_t i = 0; i < r->n_res; i++)
        send_join_sequence(r, r->res[i]);
}

static void on_part(struct bridge_net *net, const struct irc_msg *m)
{
    struct bridge_room *r = muc_room_find(net, m->params[0]);
    if (!r)
        return;
    const char *reason = m->nparams > 1 ? m->params[1] : NULL;
    if (nick_cmp(net, m->nick, our_nick(net)) == 0) {
        /* Parted without asking (a server's SAPART): we are out for every resource. */
        send_to_room(r, self_unavailable(r, reason));
        room_drop(r);
        bridge_net_maybe_quit(net, NULL);
        return;
    }
    struct bridge_occupant *o = occ_find(r, m->nick);
    if (!o)
        return;
    if (r->synced) {
        struct stanza *p = occupant_presence(r, o->nick, NULL, false, NULL);
        if (p && reason && *reason) {
            char *t = bridge_text(reason);
            stanza_add_text_child(p, "status", NULL, t);
            free(t);
        }
        send_to_room(r, p);
    }
    occ_del(r, o);
}

static void on_quit(struct bridge_net *net, const struct irc_msg *m)
{
    const char *reason = m->nparams > 0 ? m->params[0] : NULL;
    for (size_t i = 0; i < net->n_rooms; i++) {
        struct bridge_room *r = net->rooms[i];
        struct bridge_occupant *o = occ_find(r, m->nick);
        if (!o)
            continue;
        if (r->synced) {
            struct stanza *p = occupant_presence(r, o->nick, NULL, false, NULL);
            if (p && reason && *reason) {
                char *t = bridge_text(reason);
                stanza_add_text_child(p, "status", NULL, t);
                free(t);
            }
            send_to_room(r, p);
        }
        occ_del(r, o);
    }
}

static void on_kick(struct bridge_net *net, const struct irc_msg *m)
{
    /* KICK #chan victim :reason → §9.2 unavailable with 307, actor and reason */
    if (m->nparams < 2)
        return;
    struct bridge_room *r = muc_room_find(net, m->params[0]);
    if (!r)
        return;
    const char *victim = m->params[1];
    const char *reason = m->nparams > 2 ? m->params[2] : NULL;
    bool self = nick_cmp(net, victim, our_nick(net)) == 0;
    struct bridge_occupant *o = occ_find(r, victim);
    if (r->synced) {
        struct stanza *x = NULL;
        struct stanza *p = occupant_presence(r, o ? o->nick : victim, NULL, self, &x);
        if (p) {
            struct stanza *item = stanza_first_elem(x);
            if (*m->nick) {
                char *actor = bridge_text(m->nick);
                stanza_set_attr(stanza_add_child(item, "actor", NULL), "nick", actor);
                free(actor);
            }
            if (reason && *reason) {
                char *t = bridge_text(reason);
                stanza_add_text_child(item, "reason", NULL, t);
                free(t);
            }
            add_status(x, "307");
        }
        send_to_room(r, p);
    }
    if (self) {
        room_drop(r);
        bridge_net_maybe_quit(net, NULL);
        return;
    }
    if (o)
        occ_del(r, o);
}

static void on_nick(struct bridge_net *net, const struct irc_msg *m)
{
    /* §7.6: unavailable with 303 and the new nick, then available under it */
    if (m->nparams < 1 || !*m->params[0])
        return;
    const char *new_nick = m->params[0];
    bool self = nick_cmp(net, m->nick, net->nick) == 0;
    for (size_t i = 0; i < net->n_rooms; i++) {
        struct bridge_room *r = net->rooms[i];
        struct bridge_occupant *o = occ_find(r, m->nick);
        if (!o)
            continue;
        if (r->synced) {
            struct stanza *x = NULL;
            struct stanza *p = occupant_presence(r, o->nick, NULL, self, &x);
            if (p) {
                struct stanza *item = stanza_first_elem(x);
                const char *aff, *role;
                modes_to_muc(o->modes, &aff, &role);
                stanza_set_attr(item, "affiliation", aff);
                stanza_set_attr(item, "role", role);
                stanza_set_attr(item, "nick", new_nick);
                add_status(x, "303");
            }
            send_to_room(r, p);
        }
        free(o->nick);
        o->nick = xstrdup(new_nick);
        if (r->synced)
            send_to_room(r, occupant_presence(r, o->nick, o->modes, self, NULL));
    }
    if (self) {
        free(net->nick);
        net->nick = xstrdup(new_nick);
    }
}

/* CHANMODES=A,B,C,D: does this (non-prefix) mode letter take an argument? (RFC 2811 §4) */
static bool mode_takes_arg(struct bridge_net *net, char mode, bool adding)
{
    const char *cm = irc_isupport(net->conn, "CHANMODES");
    if (!cm)
        cm = "beI,k,l,imnpst";
    int group = 0;
    for (const char *p = cm; *p; p++) {
        if (*p == ',') {
            group++;
            continue;
        }
        if (*p == mode)
            return group < 2 || (group == 2 && adding);
    }
    return false;
}

static void on_mode(struct bridge_net *net, const struct irc_msg *m)
{
    if (m->nparams < 2)
        return;
    struct bridge_room *r = muc_room_find(net, m->params[0]);
    if (!r)
        return;
    const char *prefix = irc_isupport(net->conn, "PREFIX");
    char letters[16] = "ov";
    if (prefix && prefix[0] == '(') {
        size_t k = 0;
        for (const char *p = prefix + 1; *p && *p != ')' && k + 1 < sizeof letters; p++)
            letters[k++] = *p;
        letters[k] = '\0';
    }
    bool adding = true;
    int arg = 2;
    for (const char *p = m->params[1]; *p; p++) {
        if (*p == '+' || *p == '-') {
            adding = *p == '+';
            continue;
        }
        if (strchr(letters, *p)) {
            if (arg >= m->nparams)
                break;
            const char *target = m->params[arg++];
            struct bridge_occupant *o = occ_find(r, target);
            if (!o)
                continue;
            char *pos = strchr(o->modes, *p);
            if (adding && !pos && strlen(o->modes) + 1 < sizeof o->modes) {
                size_t l = strlen(o->modes);
                o->modes[l] = *p;
                o->modes[l + 1] = '\0';
            } else if (!adding && pos) {
                memmove(pos, pos + 1, strlen(pos));
            } else {
                continue;
            }
            /* §9.6 / §10.3: a role or affiliation change is a new presence */
            if (r->synced)
                send_to_room(r, occupant_presence(r, o->nick, o->modes,
                                                  nick_cmp(net, o->nick, our_nick(net)) == 0,
                                                  NULL));
        } else if (mode_takes_arg(net, *p, adding)) {
            arg++;
        }
    }
}

static void on_topic(struct bridge_net *net, const struct irc_msg *m, bool numeric)
{
    /* TOPIC #chan :text, or 332 me #chan :text on join */
    int ci = numeric ? 1 : 0;
    if (m->nparams < ci + 1)
        return;
    struct bridge_room *r = muc_room_find(net, m->params[ci]);
    if (!r)
        return;
    const char *text = m->nparams > ci + 1 ? m->params[ci + 1] : "";
    free(r->topic);
    r->topic = *text ? xstrdup(text) : NULL;
    if (!numeric && r->synced) /* §8.1: the subject change from the one who made it */
        send_to_room(r, subject_message(r, m->nick));
}

static void on_channel_error(struct bridge_net *net, const struct irc_msg *m)
{
    if (m->nparams < 2)
        return;
    struct bridge_room *r = muc_room_find(net, m->params[1]);
    if (!r)
        return;
    const char *text = m->params[m->nparams - 1];
    const char *cond = join_error(m->command);
    if (cond && !r->synced) {
        room_fail(r, cond, text);
        bridge_net_maybe_quit(net, NULL);
        return;
    }
    /* Refused after the join (can't send, not an operator...): a message from the room. */
    char *bare = room_bare(r);
    struct stanza *msg = gw_stanza("message", bare, NULL, "groupchat", NULL);
    char *t = bridge_text(text);
    stanza_add_text_child(msg, "body", NULL, t);
    free(t);
    free(bare);
    send_to_room(r, msg);
}

bool muc_irc_message(struct bridge_net *net, const struct irc_msg *m)
{
    const char *cmd = m->command;
    if (!net->conn)
        return false;
    if (strcmp(cmd, "PRIVMSG") == 0 || strcmp(cmd, "NOTICE") == 0) {
        struct bridge_room *r = m->nparams >= 2 ? muc_room_find(net, m->params[0]) : NULL;
        if (r)
            on_channel_text(net, r, m);
        return true;
    }
    if (strcmp(cmd, "JOIN") == 0) {
        if (m->nparams >= 1)
            on_join(net, m);
        return true;
    }
    if (strcmp(cmd, "PART") == 0) {
        if (m->nparams >= 1)
            on_part(net, m);
        return true;
    }
    if (strcmp(cmd, "QUIT") == 0) {
        on_quit(net, m);
        return true;
    }
    if (strcmp(cmd, "KICK") == 0) {
        on_kick(net, m);
        return true;
    }
    if (strcmp(cmd, "NICK") == 0) {
        on_nick(net, m);
        return true;
    }
    if (strcmp(cmd, "MODE") == 0) {
        if (m->nparams >= 1 && irc_is_channel(net->conn, m->params[0]))
            on_mode(net, m);
        return true;
    }
    if (strcmp(cmd, "TOPIC") == 0) {
        on_topic(net, m, false);
        return true;
    }
    if (strcmp(cmd, "332") == 0) {
        on_topic(net, m, true);
        return true;
    }
    if (strcmp(cmd, "331") == 0 || strcmp(cmd, "333") == 0)
        return true;
    if (strcmp(cmd, "353") == 0) {
        on_names(net, m);
        return true;
    }
    if (strcmp(cmd, "366") == 0) {
        if (m->nparams >= 2)
            on_end_of_names(net, m);
        return true;
    }
    if (join_error(cmd) || strcmp(cmd, "404") == 0 || strcmp(cmd, "442") == 0 ||
        strcmp(cmd, "482") == 0) {
        if (m->nparams >= 2 && muc_room_find(net, m->params[1])) {
            on_channel_error(net, m);
            return true;
        }
    }
    return false;
}
