/* gw.c — a gateway process: config, store, the XEP-0114 component stream (client side, with
 * reconnection), the users table and the send queue. The protocol the gateway domain answers is
 * in gw_xep0100.c. See gw.h. */
#include "gw_internal.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isthmus/conn.h"
#include "isthmus/log.h"
#include "isthmus/resolver.h"
#include "isthmus/xmlstream.h"

#define MAX_BACKOFF_MS 30000
#define MAX_OUTPUT (4 * 1024 * 1024)
#define MAX_ELEMENT (1024 * 1024)
#define MAX_DEPTH 64

static void stream_connect(struct gw *gw);

/* ---- accessors ---- */

struct ev_loop *gw_loop(struct gw *gw) { return gw->loop; }
const char *gw_domain(const struct gw *gw) { return gw->domain; }
const struct config *gw_config(const struct gw *gw) { return &gw->cfg; }
const struct config_gateway *gw_gateway_config(const struct gw *gw) { return gw->gcfg; }
struct gw_store *gw_store(struct gw *gw) { return gw->store; }
bool gw_is_online(const struct gw *gw) { return gw->online; }
void *gw_driver_data(struct gw *gw) { return gw->driver_data; }
void gw_set_driver_data(struct gw *gw, void *data) { gw->driver_data = data; }

bool gw_is_admin(const struct gw *gw, const char *bare_jid)
{
    for (size_t i = 0; bare_jid && i < gw->gcfg->n_admins; i++) {
        char *a = jid_normalize(gw->gcfg->admins[i]);
        bool eq = a && strcmp(a, bare_jid) == 0;
        free(a);
        if (eq)
            return true;
    }
    return false;
}

/* ---- users ---- */

static const struct gw_field *reg_field(const struct gw *gw, const char *var)
{
    for (size_t i = 0; i < gw->driver->n_reg_fields; i++)
        if (strcmp(gw->driver->reg_fields[i].var, var) == 0)
            return &gw->driver->reg_fields[i];
    return NULL;
}

const char *gw_kv_get(const struct gw_kv *kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(kv[i].key, key) == 0)
            return kv[i].value;
    return NULL;
}

/* Drivers read fields through this; the framework keeps a pointer to its gw for defaults. */
static struct gw *the_gw;

const char *gw_user_reg(const struct gw_user *u, const char *var)
{
    const char *v = gw_kv_get(u->reg, u->n_reg, var);
    if (v && *v)
        return v;
    const struct gw_field *f = the_gw ? reg_field(the_gw, var) : NULL;
    return f ? f->def : NULL;
}

char *gw_user_setting(struct gw *gw, const struct gw_user *u, const char *key)
{
    char *v = NULL;
    if (gw_store_setting_get(gw->store, u->jid, key, &v) == 0)
        return v;
    for (size_t i = 0; i < gw->driver->n_settings; i++)
        if (strcmp(gw->driver->settings[i].var, key) == 0)
            return xstrdup(gw->driver->settings[i].def);
    return NULL;
}

int gw_user_setting_set(struct gw *gw, const struct gw_user *u, const char *key,
                        const char *value)
{
    return gw_store_setting_set(gw->store, u->jid, key, value);
}

int gw_user_load_registration(struct gw *gw, struct gw_user *u)
{
    gw_kv_free(u->reg, u->n_reg);
    u->reg = NULL;
    u->n_reg = 0;
    int rc = gw_store_reg_get(gw->store, u->jid, &u->reg, &u->n_reg);
    u->registered = rc == 0;
    return rc;
}

struct gw_user *gw_user_find(struct gw *gw, const char *bare_jid)
{
    return hmap_get(&gw->users, bare_jid);
}

struct gw_user *gw_user_get(struct gw *gw, const char *bare_jid)
{
    struct gw_user *u = hmap_get(&gw->users, bare_jid);
    if (u)
        return u;
    u = xcalloc(1, sizeof *u);
    u->jid = xstrdup(bare_jid);
    gw_user_load_registration(gw, u);
    hmap_put(&gw->users, u->jid, u);
    return u;
}

void gw_user_each(struct gw *gw, void (*fn)(struct gw *gw, struct gw_user *u, void *ud), void *ud)
{
    /* Collect first: fn may drop users. */
    size_t n = gw->users.used, k = 0;
    char **keys = xcalloc(n ? n : 1, sizeof *keys);
    const char *key;
    void *value;
    for (size_t i = 0; hmap_next(&gw->users, &i, &key, &value) && k < n;)
        keys[k++] = xstrdup(key);
    for (size_t i = 0; i < k; i++) {
        struct gw_user *u = hmap_get(&gw->users, keys[i]);
        if (u)
            fn(gw, u, ud);
        free(keys[i]);
    }
    free(keys);
}

static void user_free(struct gw_user *u)
{
    for (size_t i = 0; i < u->n_resources; i++)
        free(u->resources[i]);
    free(u->resources);
    gw_kv_free(u->reg, u->n_reg);
    free(u->jid);
    free(u);
}

/* Forgets a user nobody needs any more: not registered, no resources, not held, logged out. */
void gw_user_drop_if_idle(struct gw *gw, struct gw_user *u)
{
    if (u->registered || u->n_resources || u->holds || u->logged_in || u->data)
        return;
    hmap_del(&gw->users, u->jid);
    user_free(u);
}

void gw_user_hold(struct gw_user *u)
{
    u->holds++;
}

void gw_user_release(struct gw *gw, struct gw_user *u)
{
    if (u->holds)
        u->holds--;
    gw_user_drop_if_idle(gw, u);
}

bool gw_resource_add(struct gw_user *u, const char *full)
{
    for (size_t i = 0; i < u->n_resources; i++)
        if (strcmp(u->resources[i], full) == 0)
            return false;
    u->resources = xrealloc(u->resources, (u->n_resources + 1) * sizeof *u->resources);
    u->resources[u->n_resources++] = xstrdup(full);
    return true;
}

bool gw_resource_remove(struct gw_user *u, const char *full)
{
    for (size_t i = 0; i < u->n_resources; i++) {
        if (strcmp(u->resources[i], full) == 0) {
            free(u->resources[i]);
            u->resources[i] = u->resources[--u->n_resources];
            return true;
        }
    }
    return false;
}

void gw_user_logout(struct gw *gw, struct gw_user *u, const char *reason)
{
    if (!u->logged_in)
        return;
    u->logged_in = false;
    if (gw->driver->logout)
        gw->driver->logout(gw, u, reason);
}

/* ---- building and sending ---- */

struct stanza *gw_stanza(const char *name, const char *from, const char *to, const char *type,
                         const char *id)
{
    struct stanza *st = stanza_new(name, NS_CLIENT);
    if (from)
        stanza_set_attr(st, "from", from);
    if (to)
        stanza_set_attr(st, "to", to);
    if (type)
        stanza_set_attr(st, "type", type);
    if (id) {
        stanza_set_attr(st, "id", id);
    } else if (strcmp(name, "iq") == 0) {
        char *rid = random_id(12);
        stanza_set_attr(st, "id", rid);
        free(rid);
    }
    return st;
}

char *gw_jid_for(const struct gw *gw, const char *legacy, const char *resource)
{
    char *node = jid_escape_local(legacy);
    if (!node)
        return NULL;
    char *out = resource ? xasprintf("%s@%s/%s", node, gw->domain, resource)
                         : xasprintf("%s@%s", node, gw->domain);
    free(node);
    return out;
}

static void write_stanza(struct gw *gw, struct stanza *st)
{
    /* XEP-0114: stanzas on the stream are in jabber:component:accept. */
    stanza_rename_ns(st, NS_CLIENT, NS_COMPONENT);
    struct buf out;
    buf_init(&out);
    stanza_serialize(st, NS_COMPONENT, &out);
    conn_write(gw->conn, out.data, out.len);
    buf_fini(&out);
    stanza_free(st);
}

void gw_send(struct gw *gw, struct stanza *st)
{
    if (!st)
        return;
    if (!stanza_attr(st, "from"))
        stanza_set_attr(st, "from", gw->domain);
    if (gw->online && gw->conn) {
        write_stanza(gw, st);
        return;
    }
    if (gw->n_queue == GW_MAX_QUEUE) {
        log_warn(gw->tag, "stream down and %d stanzas queued: dropping the oldest", GW_MAX_QUEUE);
        stanza_free(gw->queue[0]);
        memmove(gw->queue, gw->queue + 1, (GW_MAX_QUEUE - 1) * sizeof *gw->queue);
        gw->n_queue--;
    }
    gw->queue = xrealloc(gw->queue, (gw->n_queue + 1) * sizeof *gw->queue);
    gw->queue[gw->n_queue++] = st;
}

void gw_send_error(struct gw *gw, const struct stanza *st, const char *condition,
                   const char *text)
{
    if (str_eq(stanza_attr(st, "type"), "error"))
        return;
    struct stanza *err = stanza_error_reply(st, condition, NULL, text);
    if (err)
        gw_send(gw, err);
}

/* ---- the component stream (XEP-0114 §3, client side) ---- */

static void stream_reset(struct gw *gw)
{
    if (gw->xs) {
        xmlstream_free(gw->xs);
        gw->xs = NULL;
    }
    gw->conn = NULL;
    gw->online = false;
}

static void schedule_retry_cb(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct gw *gw = ud;
    gw->retry = NULL;
    stream_connect(gw);
}

static void schedule_retry(struct gw *gw, const char *why)
{
    if (gw->stopping || gw->retry)
        return;
    gw->backoff_ms = gw->backoff_ms ? gw->backoff_ms * 2 : 1000;
    if (gw->backoff_ms > MAX_BACKOFF_MS)
        gw->backoff_ms = MAX_BACKOFF_MS;
    log_warn(gw->tag, "component stream to %s:%u down (%s); retrying in %llu ms", gw->host,
             gw->port, why, (unsigned long long)gw->backoff_ms);
    gw->retry = ev_timer_add(gw->loop, gw->backoff_ms, schedule_retry_cb, gw);
}

static void on_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct gw *gw = ud;
    const char *id = stanza_attr(header, "id");
    if (!str_eq(default_ns, NS_COMPONENT) || !id) {
        log_error(gw->tag, "the server's stream header is not a component stream");
        conn_close(gw->conn, "bad stream header");
        return;
    }
    /* <handshake>hex(SHA1(stream id + secret))</handshake> */
    char *input = xasprintf("%s%s", id, gw->secret);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)input, strlen(input), md);
    free(input);
    char hex[2 * SHA_DIGEST_LENGTH + 1];
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    char *hs = xasprintf("<handshake>%s</handshake>", hex);
    conn_write_str(gw->conn, hs);
    free(hs);
}

static void went_online(struct gw *gw)
{
    gw->online = true;
    gw->backoff_ms = 0;
    log_info(gw->tag, "component %s connected to %s:%u", gw->domain, gw->host, gw->port);
    struct stanza **q = gw->queue;
    size_t n = gw->n_queue;
    gw->queue = NULL;
    gw->n_queue = 0;
    for (size_t i = 0; i < n; i++)
        write_stanza(gw, q[i]);
    free(q);
    gw_xep0100_online(gw);
    if (gw->driver->online)
        gw->driver->online(gw);
}

/* XEP-0356 §3: the server announces our privileges in a message from its domain. */
static bool privilege_advert(struct gw *gw, const struct stanza *st)
{
    struct stanza *p = stanza_child(st, "privilege", "urn:xmpp:privilege:2");
    if (!p || stanza_child(p, "forwarded", NS_FORWARD))
        return false;
    const char *from = stanza_attr(st, "from");
    if (!from || strchr(from, '@') || strchr(from, '/'))
        return true;
    for (struct stanza *perm = stanza_first_elem(p); perm; perm = stanza_next_elem(perm)) {
        if (strcmp(perm->name, "perm") != 0 || !str_eq(stanza_attr(perm, "access"), "roster"))
            continue;
        const char *type = stanza_attr(perm, "type");
        if (str_eq(type, "set") || str_eq(type, "both")) {
            for (size_t i = 0; i < gw->n_roster_hosts; i++)
                if (strcmp(gw->roster_hosts[i], from) == 0)
                    return true;
            gw->roster_hosts =
                xrealloc(gw->roster_hosts, (gw->n_roster_hosts + 1) * sizeof *gw->roster_hosts);
            gw->roster_hosts[gw->n_roster_hosts++] = xstrdup(from);
            log_info(gw->tag, "%s grants us roster access (XEP-0356)", from);
        }
    }
    return true;
}

static void on_element(void *ud, struct stanza *el)
{
    struct gw *gw = ud;
    if (!gw->online) {
        if (strcmp(el->name, "handshake") == 0 && str_eq(el->ns, NS_COMPONENT))
            went_online(gw);
        else if (strcmp(el->name, "error") == 0 && str_eq(el->ns, NS_STREAMS))
            log_error(gw->tag, "the server refused the component stream");
        stanza_free(el);
        return;
    }
    if (strcmp(el->name, "error") == 0 && str_eq(el->ns, NS_STREAMS)) {
        struct stanza *cond = stanza_first_elem(el);
        log_error(gw->tag, "stream error from the server: %s", cond ? cond->name : "?");
        stanza_free(el);
        return;
    }
    stanza_rename_ns(el, NS_COMPONENT, NS_CLIENT);
    if (strcmp(el->name, "message") == 0 && privilege_advert(gw, el)) {
        stanza_free(el);
        return;
    }
    if (strcmp(el->name, "message") == 0 || strcmp(el->name, "presence") == 0 ||
        strcmp(el->name, "iq") == 0)
        gw_handle_stanza(gw, el);
    stanza_free(el);
}

static void on_close(void *ud)
{
    struct gw *gw = ud;
    conn_close(gw->conn, "the server closed the stream");
}

static void on_error(void *ud, const char *condition, const char *text)
{
    struct gw *gw = ud;
    log_error(gw->tag, "component stream: %s%s%s", condition, text ? ": " : "", text ? text : "");
    conn_close(gw->conn, condition);
}

static const struct xmlstream_cb stream_cb = {on_open, on_element, on_close, on_error};

static void conn_data(struct conn *c, void *ud, const char *data, size_t len)
{
    (void)c;
    struct gw *gw = ud;
    if (gw->xs)
        xmlstream_feed(gw->xs, data, len);
}

static void conn_connected(struct conn *c, void *ud)
{
    struct gw *gw = ud;
    gw->xs = xmlstream_new(&stream_cb, gw, MAX_ELEMENT, MAX_DEPTH);
    char *hdr = xasprintf("<?xml version='1.0'?><stream:stream xmlns='%s' "
                          "xmlns:stream='%s' to='%s'>",
                          NS_COMPONENT, NS_STREAMS, gw->domain);
    conn_write_str(c, hdr);
    free(hdr);
}

static void conn_closed(struct conn *c, void *ud, const char *reason)
{
    (void)c;
    struct gw *gw = ud;
    bool was_online = gw->online;
    stream_reset(gw);
    if (was_online)
        log_warn(gw->tag, "component stream lost: %s", reason);
    schedule_retry(gw, reason);
}

static const struct conn_ops stream_ops = {
    .data = conn_data, .closed = conn_closed, .connected = conn_connected};

static void resolved(void *ud, const struct sockaddr_storage *addrs, size_t n, const char *error)
{
    struct gw *gw = ud;
    gw->query = NULL;
    if (error || !n) {
        schedule_retry(gw, error ? error : "no address");
        return;
    }
    socklen_t len = addrs[0].ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in);
    gw->conn = conn_connect(gw->loop, (const struct sockaddr *)&addrs[0], len, gw->tag, MAX_OUTPUT,
                            &stream_ops, gw);
    if (!gw->conn)
        schedule_retry(gw, strerror(errno));
}

static void stream_connect(struct gw *gw)
{
    if (gw->stopping || gw->conn || gw->query)
        return;
    gw->query = resolver_addresses(gw->host, gw->port, resolved, gw);
}

/* ---- the process ---- */

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s -c CONFIG -n NAME [-t]\n"
            "  -c CONFIG  the config file with a [gateway NAME] section\n"
            "  -n NAME    which [gateway NAME] to run (its component domain)\n"
            "  -t         check the config and exit\n",
            prog);
}

static void on_signal(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)events;
    struct gw *gw = ud;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            log_reopen();
            continue;
        }
        log_info(gw->tag, "signal %u: stopping", si.ssi_signo);
        gw->stopping = true;
        ev_stop(loop);
    }
}

static void before_sleep(struct ev_loop *loop, void *ud)
{
    (void)loop;
    (void)ud;
    conn_flush_all();
}

static void stop_loop(struct ev_loop *loop, void *ud)
{
    (void)ud;
    ev_stop(loop);
}

static int ensure_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    return -1;
}

static void logout_all(struct gw *gw, struct gw_user *u, void *ud)
{
    (void)ud;
    gw_user_logout(gw, u, "gateway shutting down");
}

static void free_users(struct gw *gw)
{
    const char *key;
    void *value;
    for (size_t i = 0; hmap_next(&gw->users, &i, &key, &value);)
        user_free(value);
    hmap_fini(&gw->users);
}

int gw_main(const struct gw_driver *driver, int argc, char **argv)
{
    const char *config_path = NULL, *name = NULL;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:n:th")) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 'n': name = optarg; break;
        case 't': check_only = true; break;
        case 'h': usage(stdout, argv[0]); return 0;
        default: usage(stderr, argv[0]); return 2;
        }
    }
    if (!name)
        name = getenv("ISTHMUS_COMPONENT_DOMAIN");
    if (!config_path || !name) {
        usage(stderr, argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct gw *gw = xcalloc(1, sizeof *gw);
    gw->ctl_fd = -1;
    the_gw = gw;
    gw->driver = driver;
    hmap_init(&gw->users);
    char err[512];
    int status = 1;
    if (config_load_opts(config_path, CONFIG_NO_HOST_OK, &gw->cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    gw->domain = jid_prep_domain(name);
    gw->gcfg = gw->domain ? config_gateway_find(&gw->cfg, gw->domain) : NULL;
    if (!gw->gcfg) {
        fprintf(stderr, "%s: no [gateway %s] section\n", config_path, name);
        goto out;
    }
    if (!str_eq(gw->gcfg->type, driver->type)) {
        fprintf(stderr, "%s:%u: [gateway %s] has type %s; this program is the %s gateway\n",
                config_path, gw->gcfg->line, gw->domain, gw->gcfg->type, driver->type);
        goto out;
    }
    /* Connection: a supervising Isthmus hands us its component port and this run's secret. */
    const char *env_host = getenv("ISTHMUS_COMPONENT_HOST");
    const char *env_port = getenv("ISTHMUS_COMPONENT_PORT");
    const char *env_secret = getenv("ISTHMUS_COMPONENT_SECRET");
    if (env_host && env_port && env_secret) {
        gw->host = xstrdup(env_host);
        gw->port = (uint16_t)atoi(env_port);
        gw->secret = xstrdup(env_secret);
    } else if (gw->gcfg->n_server && gw->gcfg->secret) {
        gw->host = xstrdup(gw->gcfg->server[0].host);
        gw->port = gw->gcfg->server[0].port;
        gw->secret = xstrdup(gw->gcfg->secret);
    } else {
        fprintf(stderr,
                "%s:%u: [gateway %s] needs server = HOST:PORT and secret when it is not started "
                "by Isthmus\n",
                config_path, gw->gcfg->line, gw->domain);
        goto out;
    }
    if (check_only) {
        printf("%s: configuration OK for %s\n", config_path, gw->domain);
        status = 0;
        goto out;
    }
    gw->tag = xasprintf("gw %s", gw->domain);
    log_open(NULL, (enum log_level)gw->cfg.log_level);
    if (ensure_dir(gw->cfg.data_dir) < 0) {
        log_error(gw->tag, "cannot create %s: %s", gw->cfg.data_dir, strerror(errno));
        goto out;
    }
    char *db = gw->gcfg->database ? xstrdup(gw->gcfg->database)
                                  : xasprintf("%s/%s.db", gw->cfg.data_dir, gw->domain);
    char *key = gw->gcfg->key_file ? xstrdup(gw->gcfg->key_file)
                                   : xasprintf("%s/%s.key", gw->cfg.data_dir, gw->domain);
    gw->store = gw_store_open(db, key, err, sizeof err);
    free(db);
    free(key);
    if (!gw->store) {
        log_error(gw->tag, "%s", err);
        goto out;
    }
    gw->loop = ev_loop_new();
    ev_set_before_sleep(gw->loop, before_sleep, gw);
    if (resolver_init(gw->loop, NULL, err, sizeof err) < 0) {
        log_error(gw->tag, "resolver: %s", err);
        goto out;
    }
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    ev_io_add(gw->loop, sfd, EV_READ, on_signal, gw);
    if (gw_ctl_open(gw, err, sizeof err) < 0)
        log_warn(gw->tag, "no control socket for isthmusctl: %s", err);
    if (driver->init && driver->init(gw) < 0)
        goto out;
    log_info(gw->tag, "%s starting; component port %s:%u", driver->name, gw->host, gw->port);
    stream_connect(gw);
    ev_run(gw->loop);

    /* Shutdown: log everyone out (drivers say goodbye to legacy networks), flush, close. */
    gw->stopping = true;
    gw_user_each(gw, logout_all, NULL);
    if (driver->fini)
        driver->fini(gw);
    if (gw->online && gw->conn) {
        conn_write_str(gw->conn, "</stream:stream>");
        conn_close(gw->conn, "shutdown");
    }
    /* Let queued output (IRC QUITs, the stream end) go out: a few turns of the loop. */
    for (int i = 0; i < 20 && conn_count() > 0; i++) {
        ev_timer_add(gw->loop, 50, stop_loop, NULL);
        ev_run(gw->loop);
    }
    ev_io_del(gw->loop, sfd);
    close(sfd);
    status = 0;
out:
    if (gw->loop)
        gw_ctl_close(gw);
    if (gw->retry)
        ev_timer_cancel(gw->loop, gw->retry);
    if (gw->query)
        resolver_cancel(gw->query);
    resolver_fini();
    for (size_t i = 0; i < gw->n_queue; i++)
        stanza_free(gw->queue[i]);
    free(gw->queue);
    if (gw->xs)
        xmlstream_free(gw->xs);
    if (gw->store)
        gw_store_close(gw->store);
    free_users(gw);
    for (size_t i = 0; i < gw->n_roster_hosts; i++)
        free(gw->roster_hosts[i]);
    free(gw->roster_hosts);
    free(gw->host);
    free(gw->secret);
    free(gw->domain);
    free(gw->tag);
    config_fini(&gw->cfg);
    if (gw->loop)
        ev_loop_free(gw->loop);
    free(gw);
    the_gw = NULL;
    return status;
}
