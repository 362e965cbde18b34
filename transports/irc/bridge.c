/* bridge.c — the IRC gateway's driver: XMPP users ↔ IRC connections, private messages, raw
 * commands to server@gw, the channel list (disco#items), contacts (XEP-0100 §5) and the
 * gw_driver callbacks. Channels as MUC rooms are in muc.c; addressing in addr.c. */
#include "bridge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "addr.h"
#include "certfp.h"
#include "isthmus/log.h"
#include "isthmus/rsm.h"
#include "isthmus/util.h"
#include "relay.h"

#define BRIDGE_MAX_DISCO_WAIT 10
#define BRIDGE_MAX_RAW_LINES 20
#define BRIDGE_ISON_MAX_BYTES 400

/* One process runs one gateway: the users with IRC state, for ISON polling and shutdown. */
static struct gw *the_gw;
static struct bridge_user **all_users;
static size_t n_all_users;
static unsigned n_conns;
static struct ev_timer *ison_timer;

static void net_connect(struct bridge_net *net);
static void net_free(struct bridge_net *net);

/* ---- small helpers ---- */

static bool strv_has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

static void strv_del(char **v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(v[i], s) == 0) {
            free(v[i]);
            v[i] = v[--*n];
            return;
        }
    }
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

char *bridge_text(const char *irc_text)
{
    char *s = irc_strip_formatting(irc_text ? irc_text : "");
    /* XML 1.0 §2.2: no C0 control characters except tab, LF and CR (CTCP's \001 included). */
    char *w = s;
    for (const char *r = s; *r; r++) {
        unsigned char c = (unsigned char)*r;
        if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f)
            continue;
        *w++ = (char)c;
    }
    *w = '\0';
    if (!utf8_valid(s, strlen(s))) /* irc.c hands out UTF-8; never trust that with XML */
        for (char *p = s; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
    return s;
}

void bridge_send_each(struct gw *gw, struct stanza *st, const char *const *res, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct stanza *c = stanza_copy(st);
        stanza_set_attr(c, "to", res[i]);
        gw_send(gw, c);
    }
    stanza_free(st);
}

static const struct config_gateway *gcfg(void)
{
    return gw_gateway_config(the_gw);
}

bool bridge_archive_enabled(struct bridge_user *bu)
{
    if (gcfg()->archive_days == 0)
        return false;
    char *v = gw_user_setting(bu->gw, bu->u, "archive");
    bool on = !v || !(strcmp(v, "false") == 0 || strcmp(v, "0") == 0);
    free(v);
    return on;
}

char *bridge_quit_message(struct bridge_user *bu)
{
    char *v = gw_user_setting(bu->gw, bu->u, "quit_message");
    if (!v || !*v) {
        free(v);
        return xstrdup("Gone");
    }
    return v;
}

char *bridge_default_nick(struct bridge_user *bu, const char *fallback)
{
    const char *reg = gw_user_reg(bu->u, "nick");
    if (reg && irc_addr_valid_nick(reg))
        return xstrdup(reg);
    if (fallback && irc_addr_valid_nick(fallback))
        return xstrdup(fallback);
    /* The JID's localpart, made a nick. */
    char *n = xstrndup(bu->jid, strcspn(bu->jid, "@"));
    for (char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("[]\\`_^{|}-", *p)))
            *p = '_';
    if (strlen(n) > 30)
        n[30] = '\0';
    if (!irc_addr_valid_nick(n)) {
        free(n);
        n = xstrdup("xmpp_user");
    }
    return n;
}

int64_t bridge_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- users ---- */

struct bridge_user *bridge_user_of(struct gw *gw, struct gw_user *u, bool create)
{
    if (u->data || !create)
        return u->data;
    struct bridge_user *bu = xcalloc(1, sizeof *bu);
    bu->gw = gw;
    bu->u = u;
    bu->jid = xstrdup(u->jid);
    u->data = bu;
    all_users = xrealloc(all_users, (n_all_users + 1) * sizeof *all_users);
    all_users[n_all_users++] = bu;
    return bu;
}

static void user_free(struct bridge_user *bu)
{
    for (size_t i = 0; i < n_all_users; i++) {
        if (all_users[i] == bu) {
            all_users[i] = all_users[--n_all_users];
            break;
        }
    }
    while (bu->n_nets) {
        struct bridge_net *net = bu->nets[0];
        if (net->conn) {
            irc_set_ud(net->conn, NULL);
            irc_abort(net->conn, "gateway state dropped");
            net->conn = NULL;
            n_conns--;
        }
        net_free(net);
    }
    free(bu->nets);
    free(bu->jid);
    free(bu);
}

/* Deferred: the user's framework record is only dropped from outside the framework's callbacks
 * (gw_user_release does it once nothing holds it). */
static void user_cleanup(struct ev_loop *loop, void *ud)
{
    (void)loop;
    char *jid = ud;
    struct gw_user *u = the_gw ? gw_user_find(the_gw, jid) : NULL;
    struct bridge_user *bu = u ? u->data : NULL;
    if (bu) {
        bu->cleanup_queued = false;
        if (bu->n_nets == 0) {
            gw_user_hold(u);
            u->data = NULL;
            user_free(bu);
            gw_user_release(the_gw, u);
        }
    }
    free(jid);
}

void bridge_user_maybe_free(struct bridge_user *bu)
{
    if (bu->n_nets || bu->cleanup_queued)
        return;
    bu->cleanup_queued = true;
    ev_defer(gw_loop(bu->gw), user_cleanup, xstrdup(bu->jid));
}

/* ---- networks ---- */

struct bridge_net *bridge_net_find(struct bridge_user *bu, const char *server)
{
    for (size_t i = 0; i < bu->n_nets; i++)
        if (strcmp(bu->nets[i]->server, server) == 0)
            return bu->nets[i];
    return NULL;
}

const char **bridge_net_resources(struct bridge_net *net, size_t *n)
{
    struct gw_user *u = net->owner->u;
    size_t cap = u->n_resources, k = 0;
    for (size_t i = 0; i < net->n_rooms; i++)
        cap += net->rooms[i]->n_res;
    const char **out = xcalloc(cap ? cap : 1, sizeof *out);
    for (size_t i = 0; i < u->n_resources; i++)
        out[k++] = u->resources[i];
    for (size_t i = 0; i < net->n_rooms; i++) {
        for (size_t j = 0; j < net->rooms[i]->n_res; j++) {
            const char *r = net->rooms[i]->res[j];
            bool dup = false;
            for (size_t x = 0; x < k && !dup; x++)
                dup = strcmp(out[x], r) == 0;
            if (!dup)
                out[k++] = r;
        }
    }
    *n = k;
    return out;
}

/* A chat message to every resource that hears from the network (to the bare JID when none). */
static void send_to_user(struct bridge_net *net, struct stanza *m)
{
    size_t n;
    const char **res = bridge_net_resources(net, &n);
    if (n == 0) {
        stanza_set_attr(m, "to", net->owner->jid);
        gw_send(net->owner->gw, m);
    } else {
        bridge_send_each(net->owner->gw, m, res, n);
    }
    free(res);
}

/* A notice from the network itself (server@gw), XEP-0100 has no word on it; biboumi does this. */
static void server_message(struct bridge_net *net, const char *text)
{
    char *from = irc_addr_jid(gw_domain(net->owner->gw), NULL, net->server, NULL);
    if (!from)
        return;
    char *body = bridge_text(text);
    if (*body) {
        struct stanza *m = gw_stanza("message", from, NULL, "chat", NULL);
        stanza_add_text_child(m, "body", NULL, body);
        send_to_user(net, m);
    }
    free(body);
    free(from);
}

static void pending_clear(struct bridge_net *net)
{
    for (size_t i = 0; i < net->n_pending; i++) {
        free(net->pending[i].target);
        free(net->pending[i].text);
    }
    free(net->pending);
    net->pending = NULL;
    net->n_pending = 0;
}

static void pending_add(struct bridge_net *net, const char *target, const char *text, bool action)
{
    if (net->n_pending >= BRIDGE_MAX_PENDING) {
        log_warn(net->tag, "dropping a line queued before registration (queue full)");
        return;
    }
    net->pending = xrealloc(net->pending, (net->n_pending + 1) * sizeof *net->pending);
    net->pending[net->n_pending++] =
        (struct bridge_pending){xstrdup(target), xstrdup(text), action};
}

void bridge_net_send(struct bridge_net *net, const char *line)
{
    if (net->conn && net->registered)
        irc_send(net->conn, "%s", line);
    else
        pending_add(net, NULL, line, false);
}

void bridge_net_say(struct bridge_net *net, const char *target, const char *text, bool action)
{
    if (net->conn && net->registered)
        irc_say(net->conn, target, text, action, false);
    else
        pending_add(net, target, text, action);
}

static void contacts_load_cb_add(struct bridge_net *net, const char *contact)
{
    struct jid j;
    if (jid_parse(contact, &j) < 0)
        return;
    struct irc_addr a;
    if (j.local && str_eq(j.domain, gw_domain(net->owner->gw)) && !j.resource &&
        irc_addr_parse(j.local, &a) == 0) {
        if (a.kind == IRC_ADDR_NICK && strcmp(a.server, net->server) == 0 &&
            !strv_has(net->contacts, net->n_contacts, a.target) && net->n_contacts < 1000) {
            net->contacts = xrealloc(net->contacts, (net->n_contacts + 1) * sizeof(char *));
            net->contacts[net->n_contacts++] = xstrdup(a.target);
        }
        irc_addr_fini(&a);
    }
    jid_fini(&j);
}

static int contacts_load_cb(void *ud, const char *contact, const char *name)
{
    (void)name;
    contacts_load_cb_add(ud, contact);
    return 0;
}

static void contacts_load(struct bridge_net *net)
{
    strv_free(net->contacts, net->n_contacts);
    net->contacts = NULL;
    net->n_contacts = 0;
    gw_store_contact_each(gw_store(net->owner->gw), net->owner->jid, contacts_load_cb, net);
}

static struct bridge_net *net_new(struct bridge_user *bu, const char *server, const char *nick)
{
    struct bridge_net *net = xcalloc(1, sizeof *net);
    net->owner = bu;
    net->server = xstrdup(server);
    net->nick = xstrdup(nick);
    net->tag = xasprintf("irc %s/%s", bu->jid, server);
    bu->nets = xrealloc(bu->nets, (bu->n_nets + 1) * sizeof *bu->nets);
    bu->nets[bu->n_nets++] = net;
    contacts_load(net);
    return net;
}

static void disco_wait_fail(struct bridge_net *net, const char *cond)
{
    for (size_t i = 0; i < net->n_disco_wait; i++) {
        gw_send_error(net->owner->gw, net->disco_wait[i], cond, NULL);
        stanza_free(net->disco_wait[i]);
    }
    free(net->disco_wait);
    net->disco_wait = NULL;
    net->n_disco_wait = 0;
}

static void chans_free(struct bridge_chan *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(c[i].name);
        free(c[i].topic);
    }
    free(c);
}

/* Frees net and unlinks it from its user. The connection must be gone or detached. */
static void net_free(struct bridge_net *net)
{
    struct bridge_user *bu = net->owner;
    for (size_t i = 0; i < bu->n_nets; i++) {
        if (bu->nets[i] == net) {
            bu->nets[i] = bu->nets[--bu->n_nets];
            break;
        }
    }
    if (net->retry)
        ev_timer_cancel(gw_loop(bu->gw), net->retry);
    for (size_t i = 0; i < net->n_rooms; i++)
        muc_room_free(net->rooms[i]);
    free(net->rooms);
    disco_wait_fail(net, "remote-server-timeout");
    pending_clear(net);
    chans_free(net->list, net->n_list);
    chans_free(net->list_new, net->n_list_new);
    strv_free(net->contacts, net->n_contacts);
    strv_free(net->online, net->n_online);
    free(net->server);
    free(net->nick);
    free(net->tag);
    free(net);
}

void bridge_contact_seen(struct bridge_net *net, const char *nick, bool online)
{
    const char *contact = NULL;
    for (size_t i = 0; i < net->n_contacts && !contact; i++)
        if (net->conn ? irc_casecmp(net->conn, net->contacts[i], nick) == 0
                      : strcasecmp(net->contacts[i], nick) == 0)
            contact = net->contacts[i];
    if (!contact)
        return;
    bool was = strv_has(net->online, net->n_online, contact);
    if (was == online)
        return;
    if (online) {
        net->online = xrealloc(net->online, (net->n_online + 1) * sizeof(char *));
        net->online[net->n_online++] = xstrdup(contact);
    } else {
        strv_del(net->online, &net->n_online, contact);
    }
    /* XEP-0100 §5.2: the contact's presence, from its JID to the user. */
    char *from = irc_addr_jid(gw_domain(net->owner->gw), contact, net->server, NULL);
    if (from)
        gw_send(net->owner->gw, gw_stanza("presence", from, net->owner->jid,
                                          online ? NULL : "unavailable", NULL));
    free(from);
}

static void contacts_all_offline(struct bridge_net *net)
{
    while (net->n_online) {
        char *nick = xstrdup(net->online[0]);
        bridge_contact_seen(net, nick, false);
        free(nick);
    }
}

/* ISON (RFC 2812 §4.9) with as many of the net's contacts as fit in one line. */
static void net_ison(struct bridge_net *net)
{
    if (!net->conn || !net->registered || net->n_contacts == 0)
        return;
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "ISON");
    for (size_t i = 0; i < net->n_contacts; i++) {
        if (b.len + 1 + strlen(net->contacts[i]) > BRIDGE_ISON_MAX_BYTES)
            break;
        buf_putc(&b, ' ');
        buf_puts(&b, net->contacts[i]);
    }
    irc_send(net->conn, "%s", b.data);
    buf_fini(&b);
}

static void ison_tick(struct ev_loop *loop, void *ud)
{
    (void)ud;
    for (size_t i = 0; i < n_all_users; i++)
        for (size_t j = 0; j < all_users[i]->n_nets; j++)
            net_ison(all_users[i]->nets[j]);
    ison_timer = ev_timer_add(loop, BRIDGE_ISON_MS, ison_tick, NULL);
}

/* RPL_ISON 303: the contacts in the reply are online, the others queried are not. */
static void on_ison(struct bridge_net *net, const char *list)
{
    size_t bytes = 4;
    for (size_t i = 0; i < net->n_contacts; i++) {
        bytes += 1 + strlen(net->contacts[i]);
        if (bytes > BRIDGE_ISON_MAX_BYTES)
            break;
        bool found = false;
        const char *p = list;
        size_t len = strlen(net->contacts[i]);
        while (*p && !found) {
            while (*p == ' ')
                p++;
            size_t w = strcspn(p, " ");
            if (w == len) {
                char *word = xstrndup(p, w);
                found = irc_casecmp(net->conn, word, net->contacts[i]) == 0;
                free(word);
            }
            p += w;
        }
        char *nick = xstrdup(net->contacts[i]);
        bridge_contact_seen(net, nick, found);
        free(nick);
    }
}

/* ---- LIST → disco#items (XEP-0030 §4, paged with XEP-0059) ---- */

static void disco_items_answer(struct bridge_net *net, const struct stanza *iq)
{
    struct stanza *q = stanza_child(iq, "query", NS_DISCO_ITEMS);
    struct rsm_request req;
    if (rsm_parse(q, &req) < 0) {
        gw_send_error(net->owner->gw, iq, "bad-request", NULL);
        rsm_request_fini(&req);
        return;
    }
    const char *domain = gw_domain(net->owner->gw);
    size_t n = net->n_list, start = 0;
    size_t max = req.max >= 0 ? (size_t)req.max : 1000;
    if (max > 1000)
        max = 1000;
    char **jids = xcalloc(n ? n : 1, sizeof *jids);
    for (size_t i = 0; i < n; i++)
        jids[i] = irc_addr_jid(domain, net->list[i].name, net->server, NULL);
    if (req.after) {
        size_t i = 0;
        while (i < n && !str_eq(jids[i], req.after))
            i++;
        if (i == n) {
            gw_send_error(net->owner->gw, iq, "item-not-found", NULL);
            goto done;
        }
        start = i + 1;
    } else if (req.before) {
        size_t end = n;
        if (*req.before) {
            end = 0;
            while (end < n && !str_eq(jids[end], req.before))
                end++;
            if (end == n) {
                gw_send_error(net->owner->gw, iq, "item-not-found", NULL);
                goto done;
            }
        }
        start = end > max ? end - max : 0;
        if (end - start < max)
            max = end - start;
    } else if (req.index >= 0) {
        start = (size_t)req.index < n ? (size_t)req.index : n;
    }
    struct stanza *res = stanza_iq_result(iq);
    struct stanza *rq = stanza_add_child(res, "query", NS_DISCO_ITEMS);
    size_t last = start;
    for (size_t i = start; i < n && i - start < max; i++) {
        if (!jids[i])
            continue;
        struct stanza *item = stanza_add_child(rq, "item", NULL);
        stanza_set_attr(item, "jid", jids[i]);
        char *name = bridge_text(net->list[i].name);
        stanza_set_attr(item, "name", name);
        free(name);
        last = i;
    }
    bool any = start < n && max > 0;
    if (req.max >= 0 || req.after || req.before || req.index >= 0 || n > max)
        rsm_add_reply(rq, any ? jids[start] : NULL, (long)start, any ? jids[last] : NULL,
                      (long)n);
    gw_send(net->owner->gw, res);
done:
    for (size_t i = 0; i < n; i++)
        free(jids[i]);
    free(jids);
    rsm_request_fini(&req);
}

static const char *disco_items_network(struct bridge_user *bu, const struct stanza *iq,
                                       const char *server)
{
    const char *err = NULL, *text = NULL;
    struct bridge_net *net = bridge_net_get(bu, server, NULL, &err, &text);
    if (!net)
        return err;
    if (net->list_at && ev_now(gw_loop(bu->gw)) - net->list_at < BRIDGE_LIST_TTL_MS &&
        !net->list_busy) {
        disco_items_answer(net, iq);
        return NULL;
    }
    if (net->n_disco_wait >= BRIDGE_MAX_DISCO_WAIT)
        return "resource-constraint";
    net->disco_wait = xrealloc(net->disco_wait, (net->n_disco_wait + 1) * sizeof(struct stanza *));
    net->disco_wait[net->n_disco_wait++] = stanza_copy(iq);
    if (!net->list_busy) {
        net->list_busy = true;
        chans_free(net->list_new, net->n_list_new);
        net->list_new = NULL;
        net->n_list_new = 0;
        bridge_net_send(net, "LIST");
    }
    return NULL;
}

static void on_list_reply(struct bridge_net *net, const struct irc_msg *m)
{
    if (strcmp(m->command, "321") == 0) {
        chans_free(net->list_new, net->n_list_new);
        net->list_new = NULL;
        net->n_list_new = 0;
    } else if (strcmp(m->command, "322") == 0) {
        /* :server 322 me #chan users :topic */
        if (m->nparams < 3 || net->n_list_new >= BRIDGE_MAX_LIST ||
            !irc_addr_valid_channel(m->params[1]))
            return;
        net->list_new = xrealloc(net->list_new, (net->n_list_new + 1) * sizeof *net->list_new);
        net->list_new[net->n_list_new++] = (struct bridge_chan){
            xstrdup(m->params[1]), (unsigned)strtoul(m->params[2], NULL, 10),
            m->nparams > 3 ? xstrdup(m->params[3]) : NULL};
    } else {  /* 323 end of LIST */
        chans_free(net->list, net->n_list);
        net->list = net->list_new;
        net->n_list = net->n_list_new;
        net->list_new = NULL;
        net->n_list_new = 0;
        net->list_busy = false;
        net->list_at = ev_now(gw_loop(net->owner->gw));
        if (net->list_at == 0)
            net->list_at = 1;
        struct stanza **wait = net->disco_wait;
        size_t n = net->n_disco_wait;
        net->disco_wait = NULL;
        net->n_disco_wait = 0;
        for (size_t i = 0; i < n; i++) {
            disco_items_answer(net, wait[i]);
            stanza_free(wait[i]);
        }
        free(wait);
    }
}

/* ---- IRC callbacks ---- */

static void on_registered(struct irc_conn *c, void *ud, const char *nick)
{
    (void)c;
    struct bridge_net *net = ud;
    if (!net)
        return;
    net->registered = true;
    net->ever_registered = true;
    net->backoff_s = 0;
    free(net->nick);
    net->nick = xstrdup(nick);
    log_info(net->tag, "registered as %s", nick);
    struct bridge_pending *p = net->pending;
    size_t n = net->n_pending;
    net->pending = NULL;
    net->n_pending = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].target)
            irc_say(net->conn, p[i].target, p[i].text, p[i].action, false);
        else
            irc_send(net->conn, "%s", p[i].text);
        free(p[i].target);
        free(p[i].text);
    }
    free(p);
    muc_net_registered(net);
    net_ison(net);
}

/* A private PRIVMSG/NOTICE from nick (or a server notice) → chat message (XEP-0100 §5.4). */
static void on_private(struct bridge_net *net, const struct irc_msg *m, bool notice)
{
    const char *text = m->params[1];
    bool from_server = !*m->userhost || !net->registered;
    size_t alen;
    const char *action = irc_ctcp_action(text, &alen);
    if (!action && text[0] == '\001') {
        /* CTCP other than ACTION: answer VERSION and PING, drop the rest. */
        if (!notice && !from_server && net->conn) {
            if (strncmp(text + 1, "VERSION", 7) == 0)
                irc_send(net->conn, "NOTICE %s :\001VERSION Isthmus IRC gateway\001", m->nick);
            else if (strncmp(text + 1, "PING", 4) == 0 && strlen(text) < 400)
                irc_send(net->conn, "NOTICE %s :%s", m->nick, text);
        }
        return;
    }
    if (from_server) {
        server_message(net, text);
        return;
    }
    char *from = irc_addr_jid(gw_domain(net->owner->gw), m->nick, net->server, NULL);
    if (!from) {
        log_debug(net->tag, "message from unaddressable nick dropped");
        return;
    }
    char *raw = action ? xasprintf("/me %.*s", (int)alen, action) : xstrdup(text);
    char *body = bridge_text(raw);
    free(raw);
    if (*body) {
        struct stanza *msg = gw_stanza("message", from, NULL, "chat", NULL);
        stanza_add_text_child(msg, "body", NULL, body);
        send_to_user(net, msg);
    }
    free(body);
    free(from);
}

/* Numerics we never show: the connection burst. */
static bool boring_numeric(const char *cmd)
{
    static const char *const quiet[] = {"001", "002", "003", "004", "005", "042", "250", "251",
                                        "252", "253", "254", "255", "265", "266", "375", "372",
                                        "376", "396", "900", "901", "903", "329", "333", "366",
                                        "315", "318", "369", "321", "324", "328", "422"};
    for (size_t i = 0; i < ARRAY_LEN(quiet); i++)
        if (strcmp(cmd, quiet[i]) == 0)
            return true;
    return false;
}

static void on_message(struct irc_conn *c, void *ud, const struct irc_msg *m)
{
    (void)c;
    struct bridge_net *net = ud;
    if (!net)
        return;
    const char *cmd = m->command;
    if ((strcmp(cmd, "PRIVMSG") == 0 || strcmp(cmd, "NOTICE") == 0)) {
        if (m->nparams < 2)
            return;
        if (net->conn && irc_is_channel(net->conn, m->params[0])) {
            muc_irc_message(net, m);
            return;
        }
        on_private(net, m, cmd[0] == 'N');
        return;
    }
    if (strcmp(cmd, "321") == 0 || strcmp(cmd, "322") == 0 || strcmp(cmd, "323") == 0) {
        on_list_reply(net, m);
        return;
    }
    if (strcmp(cmd, "303") == 0) {
        if (m->nparams >= 2)
            on_ison(net, m->params[m->nparams - 1]);
        return;
    }
    if (strcmp(cmd, "QUIT") == 0)
        bridge_contact_seen(net, m->nick, false);
    if (strcmp(cmd, "JOIN") == 0)
        bridge_contact_seen(net, m->nick, true);
    if (muc_irc_message(net, m))
        return;
    if (strlen(cmd) == 3 && cmd[0] >= '0' && cmd[0] <= '9') {
        if (boring_numeric(cmd) || m->nparams < 2)
            return;
        /* Anything else (WHOIS replies, errors to raw commands...): shown from server@gw. */
        struct buf b;
        buf_init(&b);
        for (int i = 1; i < m->nparams && b.len < 4096; i++) {
            if (b.len)
                buf_putc(&b, ' ');
            buf_puts(&b, m->params[i]);
        }
        server_message(net, b.data ? b.data : "");
        buf_fini(&b);
    } else if (strcmp(cmd, "INVITE") == 0 && m->nparams >= 2) {
        char *t = xasprintf("%s invites you to %s", m->nick, m->params[1]);
        server_message(net, t);
        free(t);
    } else if (strcmp(cmd, "WALLOPS") == 0 && m->nparams >= 1) {
        char *t = xasprintf("%s: %s", m->nick, m->params[m->nparams - 1]);
        server_message(net, t);
        free(t);
    }
}

static void retry_connect(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct bridge_net *net = ud;
    net->retry = NULL;
    if (net->n_rooms == 0) {
        struct bridge_user *bu = net->owner;
        net_free(net);
        bridge_user_maybe_free(bu);
        return;
    }
    net_connect(net);
}

static void on_closed(struct irc_conn *c, void *ud, const char *reason)
{
    (void)c;
    struct bridge_net *net = ud;
    if (!net)
        return;
    struct bridge_user *bu = net->owner;
    bool was_registered = net->registered;
    net->conn = NULL;
    net->registered = false;
    n_conns--;
    log_info(net->tag, "connection closed: %s", reason ? reason : "?");
    contacts_all_offline(net);
    net->list_busy = false;
    disco_wait_fail(net, net->ever_registered ? "remote-server-timeout"
                                              : muc_error_for_reason(reason));
    if (net->quitting || !net->ever_registered || net->n_rooms == 0) {
        /* Never came up (XEP-0045 §7.2: error presences), we quit, or nothing to re-join. */
        muc_net_lost(net, reason, true);
        if (!net->quitting && (was_registered || net->n_pending)) {
            char *t = xasprintf("Connection to %s closed: %s", net->server,
                                reason ? reason : "unknown reason");
            server_message(net, t);
            free(t);
        }
        net_free(net);
        bridge_user_maybe_free(bu);
        return;
    }
    /* Rooms are joined: every occupant leaves; re-join after a backoff. */
    muc_net_lost(net, reason, false);
    unsigned delay = net->backoff_s ? net->backoff_s : 1;
    net->backoff_s = delay * 2 > BRIDGE_BACKOFF_MAX_S ? BRIDGE_BACKOFF_MAX_S : delay * 2;
    log_info(net->tag, "reconnecting in %u s", delay);
    net->retry = ev_timer_add(gw_loop(bu->gw), (uint64_t)delay * 1000, retry_connect, net);
}

static const struct irc_conn_cb net_cb = {on_registered, on_message, on_closed};

static bool sasl_external_enabled(struct gw *gw, struct gw_user *u)
{
    char *v = gw_user_setting(gw, u, "sasl_external");
    bool on = v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0);
    free(v);
    return on;
}

/* The user's client certificate when the "sasl_external" setting is on (made on first need),
 * else NULL; malloc'd path. Only for TLS networks: EXTERNAL relies on what TLS presented. */
static char *user_client_cert(struct bridge_net *net)
{
    struct bridge_user *bu = net->owner;
    if (!sasl_external_enabled(bu->gw, bu->u))
        return NULL;
    char err[256];
    char *path = certfp_for_user(bu->gw, bu->jid, err, sizeof err);
    if (!path) {
        log_warn(net->tag, "no client certificate, not using SASL EXTERNAL: %s", err);
        char *t = xasprintf("Cannot use SASL EXTERNAL (no client certificate: %s)", err);
        server_message(net, t);
        free(t);
    }
    return path;
}

static void net_connect(struct bridge_net *net)
{
    struct bridge_user *bu = net->owner;
    const struct config_gateway *g = gcfg();
    const struct config_irc_network *cn = config_irc_network_find(gw_config(bu->gw), net->server);
    struct irc_conn_opts o = {0};
    if (cn && cn->n_address) {
        o.host = cn->address[0].host;
        o.port = cn->address[0].port;
    } else {
        o.host = net->server;
    }
    o.tls_name = net->server; /* the certificate must name the network, not its address */
    o.tls = cn ? cn->tls : true;
    o.tls_verify = cn ? cn->tls_verify && g->irc_tls_verify : g->irc_tls_verify;
    o.password = cn ? cn->password : NULL;
    o.nick = net->nick;
    const char *realname = gw_user_reg(bu->u, "realname");
    o.realname = realname && *realname ? realname : g->irc_realname;
    const char *password = gw_user_reg(bu->u, "password");
    if (password && *password) {
        /* irc_spec.md: SASL PLAIN when offered, else NickServ IDENTIFY. */
        o.sasl_mechanism = "PLAIN";
        o.sasl_username = gw_user_reg(bu->u, "nick");
        o.sasl_password = password;
        o.nickserv_password = password;
    }
    char *cert = o.tls ? user_client_cert(net) : NULL;
    if (cert) {
        /* SASL EXTERNAL with the user's certificate (CertFP); a password is only the NickServ
         * fallback then (irc.c goes on without SASL when the certificate is not accepted). */
        o.client_cert = cert;
        o.sasl_mechanism = "EXTERNAL";
        o.sasl_username = NULL;
        o.sasl_password = NULL;
    }
    o.flood_burst = g->irc_flood_burst;
    o.flood_interval_ms = g->irc_flood_interval_ms;
    o.tag = net->tag;
    net->registered = false;
    net->quitting = false;
    n_conns++;
    log_info(net->tag, "connecting to %s:%u%s as %s", o.host, o.port, o.tls ? " (TLS)" : "",
             o.nick);
    net->conn = irc_connect(gw_loop(bu->gw), &o, &net_cb, net);
    free(cert);
}

struct bridge_net *bridge_net_get(struct bridge_user *bu, const char *server, const char *nick,
                                  const char **error, const char **text)
{
    struct bridge_net *net = bridge_net_find(bu, server);
    if (net && net->quitting && net->conn) {
        /* Used again while our QUIT is going out: let that connection finish alone and make a
         * new one. */
        irc_set_ud(net->conn, NULL);
        net->conn = NULL;
        net->registered = false;
        n_conns--;
        net_connect(net);
    }
    if (net)
        return net;
    const struct config_gateway *g = gcfg();
    if (g->irc_networks_only && !config_irc_network_find(gw_config(bu->gw), server)) {
        *error = "not-allowed";
        *text = "This gateway only connects to its configured IRC networks";
        return NULL;
    }
    if (g->irc_max_connections && n_conns >= g->irc_max_connections) {
        *error = "resource-constraint";
        *text = "Too many IRC connections on this gateway";
        return NULL;
    }
    char *n = bridge_default_nick(bu, nick);
    net = net_new(bu, server, n);
    free(n);
    net_connect(net);
    return net;
}

void bridge_net_maybe_quit(struct bridge_net *net, const char *reason)
{
    if (net->n_rooms || net->n_disco_wait || net->owner->u->n_resources)
        return;
    if (net->conn) {
        if (!net->quitting) {
            net->quitting = true;
            char *q = reason ? xstrdup(reason) : bridge_quit_message(net->owner);
            irc_quit(net->conn, q);
            free(q);
        }
    } else {
        struct bridge_user *bu = net->owner;
        net_free(net);
        bridge_user_maybe_free(bu);
    }
}

static void net_quit_now(struct bridge_net *net, const char *status)
{
    muc_leave_all(net, status);
    if (net->conn) {
        if (!net->quitting) {
            net->quitting = true;
            char *q = bridge_quit_message(net->owner);
            irc_quit(net->conn, q);
            free(q);
        }
    } else {
        struct bridge_user *bu = net->owner;
        net_free(net);
        bridge_user_maybe_free(bu);
    }
}

/* ---- XMPP side ---- */

/* Private message to nick%server@gw (XEP-0100 §5.4) or to room/nick (XEP-0045 §7.5). */
static const char *send_private(struct bridge_user *bu, const struct stanza *st,
                                const char *server, const char *nick)
{
    char *body = stanza_child_text(st, "body", NULL);
    if (!body)
        return NULL;  /* chat states, receipts: nothing to say on IRC */
    if (strlen(body) > BRIDGE_MAX_BODY) {
        free(body);
        return "not-acceptable";
    }
    const char *err = NULL, *text = NULL;
    struct bridge_net *net = bridge_net_get(bu, server, NULL, &err, &text);
    if (!net) {
        free(body);
        gw_send_error(bu->gw, st, err, text);
        return NULL;
    }
    bool action = strncmp(body, "/me ", 4) == 0;
    bridge_net_say(net, nick, action ? body + 4 : body, action);
    free(body);
    return NULL;
}

const char *bridge_private_message(struct bridge_user *bu, const struct stanza *st,
                                   const char *server, const char *nick)
{
    return send_private(bu, st, server, nick);
}

/* Messages to server@gw: each body line is a raw IRC command. */
static const char *network_message(struct bridge_user *bu, const struct stanza *st,
                                   const char *server)
{
    char *body = stanza_child_text(st, "body", NULL);
    if (!body)
        return NULL;
    if (strlen(body) > BRIDGE_MAX_BODY) {
        free(body);
        return "not-acceptable";
    }
    const char *err = NULL, *text = NULL;
    struct bridge_net *net = bridge_net_get(bu, server, NULL, &err, &text);
    if (!net) {
        free(body);
        gw_send_error(bu->gw, st, err, text);
        return NULL;
    }
    unsigned lines = 0;
    for (char *line = strtok(body, "\r\n"); line && lines < BRIDGE_MAX_RAW_LINES;
         line = strtok(NULL, "\r\n")) {
        while (*line == ' ' || *line == '/')  /* "/join #x" works like "JOIN #x" */
            line++;
        if (*line) {
            bridge_net_send(net, line);
            lines++;
        }
    }
    free(body);
    return NULL;
}

static void add_identity(struct stanza *q, const char *category, const char *type,
                         const char *name)
{
    struct stanza *id = stanza_add_child(q, "identity", NULL);
    stanza_set_attr(id, "category", category);
    stanza_set_attr(id, "type", type);
    if (name)
        stanza_set_attr(id, "name", name);
}

static void add_feature(struct stanza *q, const char *var)
{
    stanza_set_attr(stanza_add_child(q, "feature", NULL), "var", var);
}

static const char *network_iq(struct bridge_user *bu, const struct stanza *st, const char *server)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "result") || str_eq(type, "error"))
        return NULL;
    if (str_eq(type, "get") && stanza_child(st, "query", NS_DISCO_ITEMS))
        return disco_items_network(bu, st, server);
    if (str_eq(type, "get") && stanza_child(st, "query", NS_DISCO_INFO)) {
        struct stanza *res = stanza_iq_result(st);
        struct stanza *q = stanza_add_child(res, "query", NS_DISCO_INFO);
        add_identity(q, "conference", "irc", server);
        add_feature(q, NS_DISCO_INFO);
        add_feature(q, NS_DISCO_ITEMS);
        add_feature(q, NS_RSM);
        gw_send(bu->gw, res);
        return NULL;
    }
    return "service-unavailable";
}

/* Presence to nick%server@gw: subscriptions to IRC contacts (XEP-0100 §5.1–5.3). */
static const char *contact_presence(struct bridge_user *bu, const struct stanza *st,
                                    const char *contact_jid, const char *server,
                                    const char *nick)
{
    struct gw *gw = bu->gw;
    const char *type = stanza_attr(st, "type");
    if (!type || strcmp(type, "unavailable") == 0 || strcmp(type, "error") == 0)
        return NULL;  /* directed presence to a contact: nothing to tell IRC */
    if (strcmp(type, "subscribe") == 0) {
        /* §5.1: the user prompted this; approve, and ask for the user's presence back. */
        gw_send(gw, gw_stanza("presence", contact_jid, bu->jid, "subscribed", NULL));
        gw_store_contact_add(gw_store(gw), bu->jid, contact_jid, nick);
        gw_send(gw, gw_stanza("presence", contact_jid, bu->jid, "subscribe", NULL));
        struct bridge_net *net = bridge_net_find(bu, server);
        if (net) {
            contacts_load(net);
            bool on = false;
            for (size_t i = 0; i < net->n_online; i++)
                on = on || strcmp(net->online[i], nick) == 0;
            gw_send(gw, gw_stanza("presence", contact_jid, bu->jid, on ? NULL : "unavailable",
                                  NULL));
            net_ison(net);
        } else {
            gw_send(gw, gw_stanza("presence", contact_jid, bu->jid, "unavailable", NULL));
        }
    } else if (strcmp(type, "unsubscribe") == 0 || strcmp(type, "unsubscribed") == 0) {
        /* §5.3 */
        if (strcmp(type, "unsubscribe") == 0)
            gw_send(gw, gw_stanza("presence", contact_jid, bu->jid, "unsubscribed", NULL));
        gw_store_contact_remove(gw_store(gw), bu->jid, contact_jid);
        struct bridge_net *net = bridge_net_find(bu, server);
        if (net) {
            strv_del(net->online, &net->n_online, nick);
            contacts_load(net);
        }
    } else if (strcmp(type, "probe") == 0) {
        struct bridge_net *net = bridge_net_find(bu, server);
        bool on = net && strv_has(net->online, net->n_online, nick);
        struct stanza *p = gw_stanza("presence", contact_jid, stanza_attr(st, "from"),
                                     on ? NULL : "unavailable", NULL);
        gw_send(gw, p);
    }
    return NULL;
}

static const char *contact_iq(struct bridge_user *bu, const struct stanza *st)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "get") && stanza_child(st, "query", NS_DISCO_INFO)) {
        struct stanza *res = stanza_iq_result(st);
        struct stanza *q = stanza_add_child(res, "query", NS_DISCO_INFO);
        add_identity(q, "client", "pc", NULL);
        add_feature(q, NS_DISCO_INFO);
        gw_send(bu->gw, res);
        return NULL;
    }
    if (str_eq(type, "result") || str_eq(type, "error"))
        return NULL;
    return "service-unavailable";
}

/* ---- the driver callbacks ---- */

static const char *drv_stanza(struct gw *gw, struct gw_user *u, const struct stanza *st,
                              const struct jid *from, const struct jid *to)
{
    if (relay_stanza(gw, st, from, to))
        return NULL;
    bool is_error = str_eq(stanza_attr(st, "type"), "error");
    if (!to->local) {
        /* The bare domain's own stanzas the framework passed on, or an unknown resource. */
        if (strcmp(st->name, "iq") == 0 && !is_error &&
            !str_eq(stanza_attr(st, "type"), "result"))
            return "service-unavailable";
        return NULL;
    }
    struct irc_addr a;
    if (irc_addr_parse(to->local, &a) < 0) {
        if (strcmp(st->name, "presence") == 0 && stanza_attr(st, "type"))
            return NULL;
        return is_error ? NULL : "jid-malformed";
    }
    char *full = jid_to_string(from);
    const char *cond = NULL;
    bool is_presence = strcmp(st->name, "presence") == 0;
    bool is_message = strcmp(st->name, "message") == 0;
    struct bridge_user *bu = bridge_user_of(gw, u, true);
    switch (a.kind) {
    case IRC_ADDR_CHANNEL:
        if (is_presence)
            cond = muc_presence(bu, st, full, a.server, a.target, to->resource);
        else if (is_message)
            cond = muc_message(bu, st, full, a.server, a.target, to->resource);
        else
            cond = muc_iq(bu, st, full, a.server, a.target, to->resource);
        break;
    case IRC_ADDR_NICK: {
        char *contact = jid_bare_string(to);
        if (is_presence)
            cond = contact_presence(bu, st, contact, a.server, a.target);
        else if (is_message && !is_error)
            cond = send_private(bu, st, a.server, a.target);
        else if (!is_message)
            cond = contact_iq(bu, st);
        free(contact);
        break;
    }
    case IRC_ADDR_NETWORK:
        if (is_message && !is_error)
            cond = network_message(bu, st, a.server);
        else if (!is_message && !is_presence)
            cond = network_iq(bu, st, a.server);
        break;
    }
    free(full);
    irc_addr_fini(&a);
    bridge_user_maybe_free(bu);
    return is_error ? NULL : cond;
}

static int drv_init(struct gw *gw)
{
    the_gw = gw;
    if (relay_init(gw) < 0)
        return -1;
    ison_timer = ev_timer_add(gw_loop(gw), BRIDGE_ISON_MS, ison_tick, NULL);
    return 0;
}

static void drv_fini(struct gw *gw)
{
    relay_fini(gw);
    if (ison_timer)
        ev_timer_cancel(gw_loop(gw), ison_timer);
    ison_timer = NULL;
    while (n_all_users) {
        struct bridge_user *bu = all_users[0];
        for (size_t i = 0; i < bu->n_nets; i++) {
            struct bridge_net *net = bu->nets[i];
            if (net->conn) {
                irc_set_ud(net->conn, NULL);
                irc_quit(net->conn, "Gateway shutting down");
                net->conn = NULL;
                n_conns--;
            }
        }
        bu->u->data = NULL;
        user_free(bu);
    }
    free(all_users);
    all_users = NULL;
}

static void drv_online(struct gw *gw)
{
    relay_online(gw);
}

static void drv_login(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    /* XEP-0100 §4.4: IRC connections are made per network when first used (a join, a message,
     * a disco#items), since a JID names its server. */
    log_debug("irc", "%s is online", u->jid);
}

static void drv_logout(struct gw *gw, struct gw_user *u, const char *reason)
{
    (void)gw;
    struct bridge_user *bu = u->data;
    if (!bu)
        return;
    log_info("irc", "%s: logging out (%s)", u->jid, reason ? reason : "");
    /* §4.5: QUIT every connection of that user (net_quit_now may free the net). */
    size_t n = bu->n_nets;
    struct bridge_net **nets = xcalloc(n ? n : 1, sizeof *nets);
    memcpy(nets, bu->nets, n * sizeof *nets);
    for (size_t i = 0; i < n; i++)
        net_quit_now(nets[i], reason);
    free(nets);
    bridge_user_maybe_free(bu);
}

static void drv_resource_gone(struct gw *gw, struct gw_user *u, const char *full)
{
    (void)gw;
    struct bridge_user *bu = u->data;
    if (!bu)
        return;
    size_t n = bu->n_nets;
    struct bridge_net **nets = xcalloc(n ? n : 1, sizeof *nets);
    memcpy(nets, bu->nets, n * sizeof *nets);
    for (size_t i = 0; i < n; i++)
        muc_resource_gone(nets[i], full);
    for (size_t i = 0; i < n; i++)
        bridge_net_maybe_quit(nets[i], NULL); /* may free nets[i] */
    free(nets);
    bridge_user_maybe_free(bu);
}

static void drv_disco_items(struct gw *gw, struct gw_user *u, struct stanza *query)
{
    (void)u;
    /* The configured networks, as server@gw (their channels are their disco#items). */
    const struct config *cfg = gw_config(gw);
    for (size_t i = 0; i < cfg->n_irc_networks; i++) {
        char *jid = irc_addr_jid(gw_domain(gw), NULL, cfg->irc_networks[i].name, NULL);
        if (!jid)
            continue;
        struct stanza *item = stanza_add_child(query, "item", NULL);
        stanza_set_attr(item, "jid", jid);
        stanza_set_attr(item, "name", cfg->irc_networks[i].name);
        free(jid);
    }
}

static char *drv_user_info(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    struct bridge_user *bu = u->data;
    if (!bu || bu->n_nets == 0)
        return xstrdup("no IRC connection");
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < bu->n_nets; i++) {
        struct bridge_net *net = bu->nets[i];
        buf_printf(&b, "%s%s: %s as %s, %zu room(s)", i ? "; " : "", net->server,
                   net->registered ? "connected"
                   : net->conn     ? "connecting"
                                   : "waiting to reconnect",
                   net->conn ? irc_nick(net->conn) : net->nick, net->n_rooms);
    }
    return buf_take(&b);
}

static const char *drv_validate(struct gw *gw, const char *jid, const struct gw_kv *values,
                                size_t n, char *text, size_t textlen)
{
    (void)gw;
    (void)jid;
    const char *nick = gw_kv_get(values, n, "nick");
    if (nick && *nick && !irc_addr_valid_nick(nick)) {
        snprintf(text, textlen, "'%s' is not a valid IRC nick", nick);
        return "not-acceptable";
    }
    const char *realname = gw_kv_get(values, n, "realname");
    if (realname && (strlen(realname) > 200 || strpbrk(realname, "\r\n"))) {
        snprintf(text, textlen, "The real name must be one line of at most 200 bytes");
        return "not-acceptable";
    }
    const char *password = gw_kv_get(values, n, "password");
    if (password && (strlen(password) > 400 || strpbrk(password, "\r\n"))) {
        snprintf(text, textlen, "The password must be one line of at most 400 bytes");
        return "not-acceptable";
    }
    return NULL;
}

static char *drv_prompt_to_node(struct gw *gw, const char *prompt)
{
    (void)gw;
    return irc_addr_prompt_node(prompt);
}

/* The table main.c hands to gw_main. */
void bridge_fill_driver(struct gw_driver *d)
{
    d->init = drv_init;
    d->fini = drv_fini;
    d->online = drv_online;
    d->validate = drv_validate;
    d->login = drv_login;
    d->logout = drv_logout;
    d->stanza = drv_stanza;
    d->resource_gone = drv_resource_gone;
    d->prompt_to_node = drv_prompt_to_node;
    d->disco_items = drv_disco_items;
    d->user_info = drv_user_info;
}
