/* Server-to-server streams: RFC 6120 (jabber:server), STARTTLS, SASL EXTERNAL (XEP-0178),
 * Server Dialback (XEP-0220, keys per XEP-0185), direct TLS (XEP-0368). See s2s.h. */
#include "isthmus/s2s.h"

#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isthmus/conn.h"
#include "isthmus/hmap.h"
#include "isthmus/jid.h"
#include "isthmus/listener.h"
#include "isthmus/log.h"
#include "isthmus/resolver.h"
#include "isthmus/router.h"
#include "isthmus/server.h"
#include "isthmus/tls.h"
#include "isthmus/xmlstream.h"

#define NS_DIALBACK "jabber:server:dialback"
#define NS_DIALBACK_FEATURE "urn:xmpp:features:dialback"

enum s2s_dir { S2S_IN, S2S_OUT };
enum out_state { OUT_RESOLVING, OUT_CONNECTING, OUT_NEGOTIATING, OUT_READY };

struct s2s {
    enum s2s_dir dir;
    struct conn *conn;
    struct xmlstream *xs;
    char tag[24];
    char *local;          /* our domain on this stream */
    char *remote;         /* the peer's domain (IN: from the header, may be NULL) */
    char stream_id[256];  /* IN: the id we issued; OUT: the id the peer issued (Prosody: UUIDs) */
    bool header_sent;
    bool starttls_next;
    bool sasl_done;       /* SASL EXTERNAL succeeded (both directions) */
    bool closing;
    uint64_t last_activity;
    struct ev_timer *timer; /* OUT before READY: setup deadline; afterwards: idle check */
    /* outgoing */
    enum out_state state;
    struct resolver_query *rq;
    struct resolver_target *targets;
    size_t ntargets, ti;
    struct sockaddr_storage *addrs;
    size_t naddrs, ai;
    bool target_direct_tls;
    bool tried_external;
    bool negotiated;      /* features seen after TLS: db:verify may be sent */
    const char *auth_method;
    struct s2s *carrier;   /* piggybacked (XEP-0220 §2.5): rides on this stream's connection */
    struct stanza **queue; /* stanzas waiting for READY */
    size_t nqueue;
    struct stanza **verifies; /* db:verify requests waiting for `negotiated` */
    size_t nverifies;
    /* incoming */
    struct hmap authed;   /* remote domains authenticated on this stream */
    struct s2s *next, *prev;
};

static struct s2s *all_streams;
static size_t nstreams;
static struct hmap outgoing; /* "local remote" → struct s2s (OUT) */
static struct hmap waiting;  /* "stream-id remote local" → struct s2s (IN) awaiting db:verify */
static struct listener *listeners;
static unsigned next_id;
static unsigned char dialback_secret[32];

static void on_data(struct conn *c, void *ud, const char *data, size_t len);
static void on_tls_ready(struct conn *c, void *ud);
static void on_closed(struct conn *c, void *ud, const char *reason);
static void on_connected(struct conn *c, void *ud);
static const struct conn_ops s2s_conn_ops = {
    .data = on_data, .tls_ready = on_tls_ready, .closed = on_closed, .connected = on_connected};

static void xs_open(void *ud, const struct stanza *header, const char *default_ns);
static void xs_element(void *ud, struct stanza *el);
static void xs_close(void *ud);
static void xs_error(void *ud, const char *condition, const char *text);
static const struct xmlstream_cb s2s_xml_cb = {xs_open, xs_element, xs_close, xs_error};

static void out_try_next(struct s2s *s);

bool s2s_enabled(void)
{
    return server.cfg.n_s2s_listen > 0 || server.cfg.n_s2s_tls_listen > 0;
}

size_t s2s_count(void)
{
    return nstreams;
}

/* ---- policy ---- */

static bool in_list(char **list, size_t n, const char *domain)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(list[i], domain) == 0)
            return true;
    return false;
}

/* [s2s] allow / deny: exact domains. */
static bool policy_allows(const char *domain)
{
    if (!domain || in_list(server.cfg.s2s_deny, server.cfg.n_s2s_deny, domain))
        return false;
    return server.cfg.n_s2s_allow == 0 ||
           in_list(server.cfg.s2s_allow, server.cfg.n_s2s_allow, domain);
}

/* XEP-0185: key = HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' stream-id), hex. */
static char *dialback_key(const char *receiving, const char *originating, const char *id)
{
    unsigned char k[32], mac[32];
    unsigned mac_len = sizeof mac;
    EVP_Digest(dialback_secret, sizeof dialback_secret, k, NULL, EVP_sha256(), NULL);
    char *text = xasprintf("%s %s %s", receiving, originating, id);
    HMAC(EVP_sha256(), k, sizeof k, (unsigned char *)text, strlen(text), mac, &mac_len);
    free(text);
    char *hex = xmalloc(2 * mac_len + 1);
    for (unsigned i = 0; i < mac_len; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    return hex;
}

/* ---- output ---- */

static void send_raw(struct s2s *s, const char *text)
{
    struct s2s *via = s->carrier && !s->closing ? s->carrier : s;
    if (!via->closing && via->conn) {
        conn_write_str(via->conn, text);
        via->last_activity = now_ms();
    }
}

/* Writes a stanza (ours to take) in the jabber:server namespace. */
static void send_stanza(struct s2s *s, struct stanza *st)
{
    stanza_rename_ns(st, NS_CLIENT, NS_SERVER);
    struct buf b;
    buf_init(&b);
    stanza_serialize(st, NS_SERVER, &b);
    send_raw(s, b.data);
    buf_fini(&b);
    stanza_free(st);
}

static void send_header(struct s2s *s)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<?xml version='1.0'?><stream:stream xmlns='" NS_SERVER
                 "' xmlns:stream='" NS_STREAMS "' xmlns:db='" NS_DIALBACK "' version='1.0'");
    if (s->dir == S2S_IN) {
        char *id = random_id(16);
        snprintf(s->stream_id, sizeof s->stream_id, "%s", id);
        free(id);
        buf_printf(&b, " id='%s'", s->stream_id);
    }
    if (s->local) {
        buf_puts(&b, " from='");
        xml_escape(&b, s->local, strlen(s->local), true);
        buf_putc(&b, '\'');
    }
    if (s->remote) {
        buf_puts(&b, " to='");
        xml_escape(&b, s->remote, strlen(s->remote), true);
        buf_putc(&b, '\'');
    }
    buf_putc(&b, '>');
    send_raw(s, b.data);
    buf_fini(&b);
    s->header_sent = true;
}

static void stream_error(struct s2s *s, const char *condition, const char *text)
{
    if (s->closing)
        return;
    if (!s->header_sent)
        send_header(s); /* RFC 6120 §4.9.1.1 */
    struct buf b;
    buf_init(&b);
    xml_stream_error(&b, condition, text);
    send_raw(s, b.data);
    buf_fini(&b);
    log_info(s->tag, "stream error %s%s%s", condition, text ? ": " : "", text ? text : "");
    s->closing = true;
    if (s->conn)
        conn_close(s->conn, condition);
}

/* ---- lifecycle ---- */

static struct s2s *stream_new(enum s2s_dir dir)
{
    struct s2s *s = xcalloc(1, sizeof *s);
    s->dir = dir;
    snprintf(s->tag, sizeof s->tag, "s2s%s#%u", dir == S2S_IN ? "in" : "out", ++next_id);
    hmap_init(&s->authed);
    s->xs = xmlstream_new(&s2s_xml_cb, s, server.cfg.max_stanza_size, server.cfg.max_depth);
    s->last_activity = now_ms();
    s->next = all_streams;
    if (all_streams)
        all_streams->prev = s;
    all_streams = s;
    nstreams++;
    return s;
}

static char *pair_key(const char *local, const char *remote)
{
    return xasprintf("%s %s", local, remote);
}

static void drop_waiting(struct s2s *in)
{
    /* Forget db:verify answers this incoming stream was waiting for. */
    size_t i = 0;
    const char *k;
    void *v;
    char **keys = NULL;
    size_t n = 0;
    while (hmap_next(&waiting, &i, &k, &v))
        if (v == in) {
            keys = xrealloc(keys, (n + 1) * sizeof *keys);
            keys[n++] = xstrdup(k);
        }
    for (size_t j = 0; j < n; j++) {
        hmap_del(&waiting, keys[j]);
        free(keys[j]);
    }
    free(keys);
}

static void stream_free(struct s2s *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        all_streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    nstreams--;
    if (s->dir == S2S_OUT && s->local && s->remote) {
        char *k = pair_key(s->local, s->remote);
        if (hmap_get(&outgoing, k) == s)
            hmap_del(&outgoing, k);
        free(k);
    }
    if (s->dir == S2S_IN)
        drop_waiting(s);
    if (s->rq)
        resolver_cancel(s->rq);
    ev_timer_cancel(server.loop, s->timer);
    for (size_t i = 0; i < s->nqueue; i++)
        stanza_free(s->queue[i]);
    free(s->queue);
    for (size_t i = 0; i < s->nverifies; i++)
        stanza_free(s->verifies[i]);
    free(s->verifies);
    for (size_t i = 0; i < s->ntargets; i++)
        free(s->targets[i].host);
    free(s->targets);
    free(s->addrs);
    hmap_fini(&s->authed);
    xmlstream_free(s->xs);
    free(s->local);
    free(s->remote);
    free(s);
    server_check_drained();
}

static void free_later(struct ev_loop *loop, void *ud)
{
    (void)loop;
    stream_free(ud);
}

/* An outgoing stream that cannot deliver: every queued stanza goes back to its sender with
 * condition (RFC 6120 §8.3.3.13 remote-server-not-found, §8.3.3.14 remote-server-timeout), and
 * incoming streams waiting for a dialback verdict through it hear "invalid". */
static void drop_riders(struct s2s *carrier, const char *why);

static void out_fail(struct s2s *s, const char *condition, const char *why)
{
    log_info(s->tag, "%s -> %s failed: %s", s->local, s->remote, why);
    drop_riders(s, why);
    s->carrier = NULL;
    char *k = pair_key(s->local, s->remote);
    if (hmap_get(&outgoing, k) == s)
        hmap_del(&outgoing, k);
    free(k);
    for (size_t i = 0; i < s->nqueue; i++) {
        router_error(s->queue[i], condition, why);
        stanza_free(s->queue[i]);
    }
    s->nqueue = 0;
    ev_timer_cancel(server.loop, s->timer);
    s->timer = NULL;
    if (s->rq)
        resolver_cancel(s->rq);
    s->rq = NULL;
    if (s->conn && !s->closing) {
        s->closing = true;
        if (s->header_sent)
            send_raw(s, "</stream:stream>");
        conn_close(s->conn, why);
    } else if (!s->conn) {
        s->closing = true;
        ev_defer(server.loop, free_later, s);
    }
}

/* Streams piggybacked on a carrier that goes away go with it; the next stanza for their
 * domain pair starts afresh. */
static void drop_riders(struct s2s *carrier, const char *why)
{
    for (struct s2s *r = all_streams; r; r = r->next)
        if (r->dir == S2S_OUT && r->carrier == carrier && !r->closing) {
            r->carrier = NULL;
            out_fail(r, "remote-server-not-found", why);
        }
}

/* ---- incoming: dialback answers ---- */

static void db_result_reply(struct s2s *in, const char *local, const char *remote, bool valid)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<db:result from='");
    xml_escape(&b, local, strlen(local), true);
    buf_puts(&b, "' to='");
    xml_escape(&b, remote, strlen(remote), true);
    buf_printf(&b, "' type='%s'/>", valid ? "valid" : "invalid");
    send_raw(in, b.data);
    buf_fini(&b);
    if (valid) {
        hmap_put(&in->authed, remote, (void *)1);
        log_info(in->tag, "%s authenticated by dialback (XEP-0220) for %s", remote, local);
    } else {
        log_info(in->tag, "%s failed dialback for %s", remote, local);
    }
}

/* ---- outgoing: setup ---- */

static void out_ready(struct s2s *s, const char *method)
{
    s->state = OUT_READY;
    s->auth_method = method;
    log_info(s->tag, "%s -> %s authenticated (%s); %zu stanzas queued", s->local, s->remote,
             method, s->nqueue);
    ev_timer_cancel(server.loop, s->timer);
    s->timer = NULL;
    for (size_t i = 0; i < s->nqueue; i++)
        send_stanza(s, s->queue[i]);
    s->nqueue = 0;
}

static void flush_verifies(struct s2s *s)
{
    for (size_t i = 0; i < s->nverifies; i++) {
        struct buf b;
        buf_init(&b);
        stanza_serialize(s->verifies[i], NS_SERVER, &b);
        send_raw(s, b.data);
        buf_fini(&b);
        stanza_free(s->verifies[i]);
    }
    s->nverifies = 0;
}

static void setup_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct s2s *s = ud;
    s->timer = NULL;
    out_fail(s, "remote-server-timeout", "connection to the remote server timed out");
}

static void connect_addr(struct s2s *s)
{
    struct sockaddr_storage *a = &s->addrs[s->ai++];
    socklen_t len = a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    s->state = OUT_CONNECTING;
    s->header_sent = false;
    s->negotiated = false;
    s->tried_external = false;
    s->sasl_done = false;
    s->conn = conn_connect(server.loop, (struct sockaddr *)a, len, s->tag,
                           server.cfg.max_output_buffer, &s2s_conn_ops, s);
    if (!s->conn)
        out_try_next(s);
}

static void on_addresses(void *ud, const struct sockaddr_storage *addrs, size_t n,
                         const char *error)
{
    struct s2s *s = ud;
    s->rq = NULL;
    free(s->addrs);
    s->addrs = NULL;
    s->naddrs = s->ai = 0;
    if (error || n == 0) {
        log_debug(s->tag, "%s: %s", s->targets[s->ti - 1].host, error ? error : "no address");
        out_try_next(s);
        return;
    }
    s->addrs = xmalloc(n * sizeof *s->addrs);
    memcpy(s->addrs, addrs, n * sizeof *s->addrs);
    s->naddrs = n;
    connect_addr(s);
}

/* Next address of this target, else the next target, else give up. */
static void out_try_next(struct s2s *s)
{
    if (s->closing)
        return;
    s->conn = NULL;
    if (s->ai < s->naddrs) {
        connect_addr(s);
        return;
    }
    if (s->ti < s->ntargets) {
        struct resolver_target *t = &s->targets[s->ti++];
        s->target_direct_tls = t->direct_tls;
        s->state = OUT_RESOLVING;
        s->rq = resolver_addresses(t->host, t->port, on_addresses, s);
        return;
    }
    out_fail(s, "remote-server-not-found", "the remote server cannot be reached");
}

static void on_targets(void *ud, const struct resolver_target *targets, size_t n,
                       const char *error)
{
    struct s2s *s = ud;
    s->rq = NULL;
    if (error || n == 0) {
        out_fail(s, "remote-server-not-found", error ? error : "no server for that domain");
        return;
    }
    s->targets = xcalloc(n, sizeof *s->targets);
    for (size_t i = 0; i < n; i++) {
        s->targets[i] = targets[i];
        s->targets[i].host = xstrdup(targets[i].host);
    }
    s->ntargets = n;
    out_try_next(s);
}

static struct s2s *out_get(const char *local, const char *remote)
{
    char *k = pair_key(local, remote);
    struct s2s *s = hmap_get(&outgoing, k);
    if (s) {
        free(k);
        return s;
    }
    s = stream_new(S2S_OUT);
    s->local = xstrdup(local);
    s->remote = xstrdup(remote);
    hmap_put(&outgoing, k, s);
    free(k);
    s->state = OUT_RESOLVING;
    s->timer = ev_timer_add(server.loop, (uint64_t)server.cfg.s2s_connect_timeout * 1000,
                            setup_timeout, s);
    /* XEP-0220 §2.5: another of our domains already talks to `remote` over a dialback-
     * authenticated stream: authorize this one on it instead of opening a connection. */
    for (struct s2s *c = all_streams; c; c = c->next) {
        if (c == s || c->dir != S2S_OUT || c->carrier || c->closing || !c->conn ||
            c->state != OUT_READY || !str_eq(c->auth_method, "dialback") ||
            strcasecmp(c->remote, remote) != 0)
            continue;
        s->carrier = c;
        s->state = OUT_NEGOTIATING;
        snprintf(s->stream_id, sizeof s->stream_id, "%s", c->stream_id);
        log_info(s->tag, "%s -> %s: piggybacked on %s (dialback)", local, remote, c->tag);
        char *key = dialback_key(remote, local, c->stream_id);
        struct buf b;
        buf_init(&b);
        buf_puts(&b, "<db:result from='");
        xml_escape(&b, local, strlen(local), true);
        buf_puts(&b, "' to='");
        xml_escape(&b, remote, strlen(remote), true);
        buf_printf(&b, "'>%s</db:result>", key);
        send_raw(c, b.data);
        buf_fini(&b);
        free(key);
        return s;
    }
    for (size_t i = 0; i < server.cfg.n_s2s_routes; i++) {
        const struct config_route *r = &server.cfg.s2s_routes[i];
        if (strcasecmp(r->domain, remote) == 0) {
            struct resolver_target t = {.host = r->addr.host, .port = r->addr.port};
            log_debug(s->tag, "%s: static route to %s:%u", remote, r->addr.host, r->addr.port);
            on_targets(s, &t, 1, NULL);
            return s;
        }
    }
    s->rq = resolver_xmpp_server(remote, on_targets, s);
    return s;
}

void s2s_route(struct stanza *st)
{
    struct jid from, to;
    if (jid_parse(stanza_attr(st, "from"), &from) < 0) {
        stanza_free(st);
        return;
    }
    if (jid_parse(stanza_attr(st, "to"), &to) < 0) {
        jid_fini(&from);
        stanza_free(st);
        return;
    }
    const char *why = NULL, *cond = "remote-server-not-found";
    if (!server_serves_domain(from.domain)) {
        why = "not relaying for other domains"; /* we only originate for our hosts */
    } else if (!s2s_enabled()) {
        why = "This server does not federate";
    } else if (!policy_allows(to.domain)) {
        why = "Federation with that domain is not allowed here";
        cond = "not-allowed";
    }
    if (why) {
        if (strcmp(st->name, "presence") != 0 && server_serves_domain(from.domain))
            router_error(st, cond, why);
        stanza_free(st);
    } else {
        struct s2s *s = out_get(from.domain, to.domain);
        if (s->state == OUT_READY) {
            send_stanza(s, st);
        } else if (s->nqueue >= server.cfg.s2s_max_queue) {
            router_error(st, "resource-constraint", "Too many stanzas waiting for that server");
            stanza_free(st);
        } else {
            s->queue = xrealloc(s->queue, (s->nqueue + 1) * sizeof *s->queue);
            s->queue[s->nqueue++] = st;
        }
    }
    jid_fini(&from);
    jid_fini(&to);
}

/* Dialback verification for an incoming stream goes out on our outgoing stream to the claimed
 * domain's authoritative server (XEP-0220 §2.1.2). */
static void send_verify(struct s2s *in, const char *local, const char *remote, const char *key)
{
    struct s2s *out = out_get(local, remote);
    struct stanza *v = stanza_new("verify", NS_DIALBACK);
    stanza_set_attr(v, "from", local);
    stanza_set_attr(v, "to", remote);
    stanza_set_attr(v, "id", in->stream_id);
    stanza_add_text(v, key, strlen(key));
    char *wk = xasprintf("%s %s %s", in->stream_id, remote, local);
    hmap_put(&waiting, wk, in);
    free(wk);
    if (out->negotiated) {
        struct buf b;
        buf_init(&b);
        stanza_serialize(v, NS_SERVER, &b);
        send_raw(out, b.data);
        buf_fini(&b);
        stanza_free(v);
    } else {
        out->verifies = xrealloc(out->verifies, (out->nverifies + 1) * sizeof *out->verifies);
        out->verifies[out->nverifies++] = v;
    }
}

/* ---- stream header ---- */

static void xs_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct s2s *s = ud;
    if (s->closing)
        return;
    if (s->dir == S2S_OUT) {
        const char *id = stanza_attr(header, "id");
        snprintf(s->stream_id, sizeof s->stream_id, "%s", id ? id : "");
        if (strcmp(default_ns, NS_SERVER) != 0)
            stream_error(s, "invalid-namespace", "Server streams use jabber:server");
        return;
    }
    const char *to = stanza_attr(header, "to");
    const char *from = stanza_attr(header, "from");
    char *local = to ? jid_prep_domain(to) : NULL;
    char *remote = from ? jid_prep_domain(from) : NULL;
    bool served = local && server_serves_domain(local);
    if (served && !s->local)
        s->local = xstrdup(local);
    if (remote && !s->remote)
        s->remote = xstrdup(remote);
    bool known = served && str_eq(local, s->local);
    free(local);
    free(remote);
    send_header(s);
    const char *why;
    const char *cond = xmlstream_check_header(header, default_ns, NS_SERVER, &why);
    if (cond) {
        stream_error(s, cond, why);
        return;
    }
    if (!known) {
        stream_error(s, "host-unknown", "This server does not serve that domain");
        return;
    }
    if (s->remote && !policy_allows(s->remote)) {
        stream_error(s, "policy-violation", "Federation with your domain is not allowed here");
        return;
    }
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<stream:features>");
    bool tls = conn_is_tls(s->conn);
    if (!tls)
        buf_printf(&b, "<starttls xmlns='" NS_TLS "'>%s</starttls>",
                   server.cfg.s2s_require_encryption ? "<required/>" : "");
    if (!s->sasl_done && (tls || !server.cfg.s2s_require_encryption)) {
        if (tls && s->remote && conn_peer_cert_valid_for(s->conn, s->remote))
            buf_puts(&b, "<mechanisms xmlns='" NS_SASL "'><mechanism>EXTERNAL</mechanism>"
                         "</mechanisms>");
        if (server.cfg.s2s_dialback)
            buf_puts(&b, "<dialback xmlns='" NS_DIALBACK_FEATURE "'><errors/></dialback>");
    }
    buf_puts(&b, "</stream:features>");
    send_raw(s, b.data);
    buf_fini(&b);
}

/* ---- incoming elements ---- */

static void in_auth(struct s2s *s, struct stanza *el)
{
    char *text = stanza_text(el);
    char *domain = NULL;
    if (strcmp(text, "=") != 0 && *text) {
        unsigned char *dec;
        size_t n;
        if (base64_decode(text, strlen(text), &dec, &n) == 0) {
            char *raw = xstrndup((const char *)dec, n);
            domain = jid_prep_domain(raw);
            free(raw);
            free(dec);
        }
    } else if (s->remote) {
        domain = xstrdup(s->remote); /* XEP-0178 §3: no authzid = the stream's 'from' */
    }
    bool ok = str_eq(stanza_attr(el, "mechanism"), "EXTERNAL") && domain &&
              policy_allows(domain) && conn_peer_cert_valid_for(s->conn, domain);
    free(text);
    if (!ok) {
        send_raw(s, "<failure xmlns='" NS_SASL "'><not-authorized/></failure>");
        log_info(s->tag, "SASL EXTERNAL refused for %s", domain ? domain : "(none)");
        free(domain);
        return;
    }
    send_raw(s, "<success xmlns='" NS_SASL "'/>");
    hmap_put(&s->authed, domain, (void *)1);
    log_info(s->tag, "%s authenticated by SASL EXTERNAL (XEP-0178)", domain);
    free(domain);
    s->sasl_done = true;
    s->header_sent = false;
    xmlstream_restart(s->xs);
}

static void in_db_result(struct s2s *s, struct stanza *el)
{
    char *local = jid_prep_domain(stanza_attr(el, "to") ? stanza_attr(el, "to") : "");
    char *remote = jid_prep_domain(stanza_attr(el, "from") ? stanza_attr(el, "from") : "");
    char *key = stanza_text(el);
    if (!local || !server_serves_domain(local)) {
        stream_error(s, "host-unknown", "This server does not serve that domain");
    } else if (!remote) {
        stream_error(s, "invalid-from", "Dialback needs a valid 'from'");
    } else if (!policy_allows(remote) || !server.cfg.s2s_dialback) {
        db_result_reply(s, local, remote, false);
    } else if (conn_peer_cert_valid_for(s->conn, remote)) {
        /* The TLS peer proved it is `remote`: no round trip needed (XEP-0344 §2.4). */
        db_result_reply(s, local, remote, true);
    } else if (server.cfg.s2s_require_valid_certs) {
        log_info(s->tag, "%s: certificate does not verify and policy requires it", remote);
        db_result_reply(s, local, remote, false);
    } else if (!*key) {
        stream_error(s, "bad-format", "Dialback key missing");
    } else {
        send_verify(s, local, remote, key);
    }
    free(local);
    free(remote);
    free(key);
}

/* We are the authoritative server: is this a key we generated? (XEP-0220 §2.1.3) */
static void db_verify_answer(struct s2s *s, struct stanza *el)
{
    const char *from = stanza_attr(el, "from"), *to = stanza_attr(el, "to");
    const char *id = stanza_attr(el, "id");
    char *key = stanza_text(el);
    bool valid = false;
    if (from && to && id && server_serves_domain(to)) {
        char *expected = dialback_key(from, to, id);
        valid = strlen(expected) == strlen(key) && CRYPTO_memcmp(expected, key, strlen(key)) == 0;
        free(expected);
    }
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<db:verify from='");
    xml_escape(&b, to ? to : "", to ? strlen(to) : 0, true);
    buf_puts(&b, "' to='");
    xml_escape(&b, from ? from : "", from ? strlen(from) : 0, true);
    buf_puts(&b, "' id='");
    xml_escape(&b, id ? id : "", id ? strlen(id) : 0, true);
    buf_printf(&b, "' type='%s'/>", valid ? "valid" : "invalid");
    send_raw(s, b.data);
    buf_fini(&b);
    free(key);
}

/* RFC 6120 §8.1.1.1 and §4.9.3: a stanza must name a domain pair this stream authenticated. */
static void in_stanza(struct s2s *s, struct stanza *st)
{
    struct jid from, to;
    const char *f = stanza_attr(st, "from"), *t = stanza_attr(st, "to");
    if (!f || !t) {
        stream_error(s, "improper-addressing", "Stanzas need 'from' and 'to'");
        stanza_free(st);
        return;
    }
    if (jid_parse(f, &from) < 0) {
        stream_error(s, "invalid-from", "Malformed 'from'");
        stanza_free(st);
        return;
    }
    if (jid_parse(t, &to) < 0) {
        jid_fini(&from);
        router_error(st, "jid-malformed", NULL);
        stanza_free(st);
        return;
    }
    if (!hmap_get(&s->authed, from.domain)) {
        log_warn(s->tag, "stanza from unauthenticated domain %s", from.domain);
        stream_error(s, "invalid-from", "That domain is not authenticated on this stream");
        stanza_free(st);
    } else if (!server_serves_domain(to.domain)) {
        stream_error(s, "host-unknown", "This server does not serve that domain");
        stanza_free(st);
    } else {
        stanza_rename_ns(st, NS_SERVER, NS_CLIENT);
        char *fs = jid_to_string(&from), *ts = jid_to_string(&to);
        stanza_set_attr(st, "from", fs);
        stanza_set_attr(st, "to", ts);
        free(fs);
        free(ts);
        router_route(st, NULL);
    }
    jid_fini(&from);
    jid_fini(&to);
}

static void in_element(struct s2s *s, struct stanza *el)
{
    bool tls = conn_is_tls(s->conn);
    if (strcmp(el->ns, NS_TLS) == 0 && strcmp(el->name, "starttls") == 0) {
        if (tls) {
            stream_error(s, "policy-violation", "TLS is already in place");
        } else {
            send_raw(s, "<proceed xmlns='" NS_TLS "'/>");
            s->starttls_next = true;
            s->header_sent = false;
            xmlstream_restart(s->xs);
        }
    } else if (!tls && server.cfg.s2s_require_encryption) {
        stream_error(s, "policy-violation", "Use STARTTLS first");
    } else if (strcmp(el->ns, NS_SASL) == 0 && strcmp(el->name, "auth") == 0) {
        in_auth(s, el);
    } else if (strcmp(el->ns, NS_DIALBACK) == 0 && strcmp(el->name, "result") == 0) {
        in_db_result(s, el);
    } else if (strcmp(el->ns, NS_DIALBACK) == 0 && strcmp(el->name, "verify") == 0) {
        db_verify_answer(s, el);
    } else if (strcmp(el->ns, NS_SERVER) == 0 &&
               (strcmp(el->name, "message") == 0 || strcmp(el->name, "presence") == 0 ||
                strcmp(el->name, "iq") == 0)) {
        in_stanza(s, el);
        return; /* ownership passed on */
    } else {
        stream_error(s, "unsupported-stanza-type", NULL);
    }
    stanza_free(el);
}

/* ---- outgoing elements ---- */

static bool has_mechanism(const struct stanza *features, const char *name)
{
    struct stanza *mechs = stanza_child(features, "mechanisms", NS_SASL);
    for (struct stanza *m = mechs ? stanza_first_elem(mechs) : NULL; m; m = stanza_next_elem(m)) {
        char *t = stanza_text(m);
        bool match = strcmp(t, name) == 0;
        free(t);
        if (match)
            return true;
    }
    return false;
}

static void out_dialback(struct s2s *s, bool verified)
{
    if (!server.cfg.s2s_dialback || (!verified && server.cfg.s2s_require_valid_certs)) {
        out_fail(s, "remote-server-not-found",
                 verified ? "the remote server refused SASL EXTERNAL and dialback is off"
                          : "the remote certificate does not verify and policy requires it");
        return;
    }
    char *key = dialback_key(s->remote, s->local, s->stream_id);
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<db:result from='");
    xml_escape(&b, s->local, strlen(s->local), true);
    buf_puts(&b, "' to='");
    xml_escape(&b, s->remote, strlen(s->remote), true);
    buf_printf(&b, "'>%s</db:result>", key);
    send_raw(s, b.data);
    buf_fini(&b);
    free(key);
}

static void out_features(struct s2s *s, struct stanza *features)
{
    bool tls = conn_is_tls(s->conn);
    if (s->sasl_done) {
        out_ready(s, "SASL EXTERNAL");
        return;
    }
    if (!tls) {
        if (stanza_child(features, "starttls", NS_TLS)) {
            send_raw(s, "<starttls xmlns='" NS_TLS "'/>");
            return;
        }
        if (server.cfg.s2s_require_encryption) {
            out_fail(s, "remote-server-not-found", "the remote server does not offer TLS");
            return;
        }
    }
    s->state = OUT_NEGOTIATING;
    s->negotiated = true;
    flush_verifies(s);
    bool verified = tls && conn_peer_cert_valid_for(s->conn, s->remote);
    if (verified && has_mechanism(features, "EXTERNAL") && !s->tried_external) {
        s->tried_external = true;
        char *authz = base64_encode((const unsigned char *)s->local, strlen(s->local));
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "<auth xmlns='" NS_SASL "' mechanism='EXTERNAL'>%s</auth>", authz);
        send_raw(s, b.data);
        buf_fini(&b);
        free(authz);
        return;
    }
    out_dialback(s, verified);
}

static void out_element(struct s2s *s, struct stanza *el)
{
    if (strcmp(el->ns, NS_STREAMS) == 0 && strcmp(el->name, "features") == 0) {
        out_features(s, el);
    } else if (strcmp(el->ns, NS_TLS) == 0 && strcmp(el->name, "proceed") == 0) {
        s->starttls_next = true;
        s->header_sent = false;
        xmlstream_restart(s->xs);
    } else if (strcmp(el->ns, NS_TLS) == 0 && strcmp(el->name, "failure") == 0) {
        out_fail(s, "remote-server-not-found", "the remote server refused STARTTLS");
    } else if (strcmp(el->ns, NS_SASL) == 0 && strcmp(el->name, "success") == 0) {
        s->sasl_done = true;
        s->header_sent = false;
        xmlstream_restart(s->xs);
        send_header(s);
    } else if (strcmp(el->ns, NS_SASL) == 0 && strcmp(el->name, "failure") == 0) {
        log_info(s->tag, "%s refused SASL EXTERNAL; trying dialback", s->remote);
        out_dialback(s, true);
    } else if (strcmp(el->ns, NS_DIALBACK) == 0 && strcmp(el->name, "result") == 0) {
        /* The verdict is for the domain in 'to': this stream's own, or one piggybacked on it. */
        struct s2s *who = s;
        const char *to = stanza_attr(el, "to");
        if (to && s->local && strcasecmp(to, s->local) != 0) {
            char *k = pair_key(to, s->remote);
            who = hmap_get(&outgoing, k);
            free(k);
            if (who && who->carrier != s)
                who = NULL;
        }
        if (who && str_eq(stanza_attr(el, "type"), "valid"))
            out_ready(who, who == s ? "dialback" : "dialback, piggybacked");
        else if (who)
            out_fail(who, "remote-server-not-found", "the remote server refused our dialback");
    } else if (strcmp(el->ns, NS_DIALBACK) == 0 && strcmp(el->name, "verify") == 0) {
        /* The authoritative server's verdict on a key an incoming stream presented. */
        const char *id = stanza_attr(el, "id");
        char *wk = xasprintf("%s %s %s", id ? id : "", s->remote, s->local);
        struct s2s *in = hmap_del(&waiting, wk);
        free(wk);
        if (in && !in->closing)
            db_result_reply(in, s->local, s->remote, str_eq(stanza_attr(el, "type"), "valid"));
    } else if (strcmp(el->ns, NS_STREAMS) == 0 && strcmp(el->name, "error") == 0) {
        struct stanza *cond = stanza_first_elem(el);
        char *why = xasprintf("stream error from the remote server: %s",
                              cond ? cond->name : "unknown");
        out_fail(s, "remote-server-not-found", why);
        free(why);
    }
    /* Outgoing streams carry nothing else towards us (RFC 6120 §4.6.3: one direction). */
    stanza_free(el);
}

static void xs_element(void *ud, struct stanza *el)
{
    struct s2s *s = ud;
    s->last_activity = now_ms();
    if (s->closing) {
        stanza_free(el);
        return;
    }
    if (s->dir == S2S_IN)
        in_element(s, el);
    else
        out_element(s, el);
}

static void xs_close(void *ud)
{
    struct s2s *s = ud;
    if (s->closing)
        return;
    if (s->dir == S2S_OUT && s->state != OUT_READY) {
        out_fail(s, "remote-server-not-found", "the remote server closed the stream");
        return;
    }
    send_raw(s, "</stream:stream>");
    s->closing = true;
    conn_close(s->conn, "stream closed by peer");
}

static void xs_error(void *ud, const char *condition, const char *text)
{
    stream_error(ud, condition, text);
}

/* ---- connection callbacks ---- */

static void on_connected(struct conn *c, void *ud)
{
    struct s2s *s = ud;
    s->state = OUT_NEGOTIATING;
    if (s->target_direct_tls) {
        static const char alpn[] = "\x0bxmpp-server";
        struct conn_tls_opts o = {.client = true, .sni = s->remote, .alpn = alpn};
        conn_start_tls_opts(c, tls_client_ctx_for(s->local), &o);
        return;
    }
    send_header(s);
}

static void on_tls_ready(struct conn *c, void *ud)
{
    (void)c;
    struct s2s *s = ud;
    if (s->dir == S2S_OUT)
        send_header(s); /* RFC 6120 §5.4.3.3: a new stream over TLS */
}

static void on_data(struct conn *c, void *ud, const char *data, size_t len)
{
    struct s2s *s = ud;
    if (!s)
        return;
    s->last_activity = now_ms();
    size_t off = 0;
    while (off < len && !s->closing) {
        ssize_t n = xmlstream_feed(s->xs, data + off, len - off);
        if (n < 0)
            return;
        off += (size_t)n;
        if (s->starttls_next) {
            s->starttls_next = false;
            if (off < len) {
                /* RFC 6120 §5.4.3.3: nothing may follow in the clear. */
                log_warn(s->tag, "plaintext after STARTTLS: dropping connection");
                s->closing = true;
                conn_abort(c, "plaintext injected after STARTTLS");
                return;
            }
            if (s->dir == S2S_OUT) {
                struct conn_tls_opts o = {.client = true, .sni = s->remote};
                conn_start_tls_opts(c, tls_client_ctx_for(s->local), &o);
            } else {
                struct conn_tls_opts o = {.want_peer_cert = true};
                SSL_CTX *ctx = tls_host_ctx_for(s->local);
                conn_start_tls_opts(c, ctx ? ctx : tls_default_ctx(), &o);
            }
            return;
        }
    }
}

static void on_closed(struct conn *c, void *ud, const char *reason)
{
    (void)c;
    struct s2s *s = ud;
    if (!s)
        return;
    s->conn = NULL;
    if (s->dir == S2S_OUT && !s->closing && s->state != OUT_READY) {
        /* Setting up failed on this address: the next one, or out_fail() bounces the queue
         * and frees the stream. */
        log_debug(s->tag, "%s: %s", s->remote, reason);
        xmlstream_free(s->xs);
        s->xs = xmlstream_new(&s2s_xml_cb, s, server.cfg.max_stanza_size, server.cfg.max_depth);
        out_try_next(s);
        return;
    }
    log_info(s->tag, "closed: %s", reason);
    if (s->dir == S2S_OUT)
        drop_riders(s, "connection lost");
    if (s->dir == S2S_OUT && s->local && s->remote) {
        char *k = pair_key(s->local, s->remote);
        if (hmap_get(&outgoing, k) == s)
            hmap_del(&outgoing, k);
        free(k);
        /* Stanzas queued after a ready stream died (nothing acks s2s): bounce them. */
        for (size_t i = 0; i < s->nqueue; i++) {
            router_error(s->queue[i], "remote-server-not-found", "connection lost");
            stanza_free(s->queue[i]);
        }
        s->nqueue = 0;
    }
    s->closing = true;
    ev_defer(server.loop, free_later, s);
}

/* ---- idle ---- */

static void idle_sweep(struct ev_loop *loop, void *ud)
{
    (void)ud;
    uint64_t limit = (uint64_t)server.cfg.s2s_idle_timeout * 1000;
    for (struct s2s *s = all_streams; s; s = s->next) {
        if (s->closing || !s->conn || now_ms() - s->last_activity < limit)
            continue;
        if (s->dir == S2S_OUT && s->state != OUT_READY)
            continue; /* the setup deadline handles these */
        log_info(s->tag, "idle for %u s: closing", server.cfg.s2s_idle_timeout);
        if (s->dir == S2S_OUT) {
            char *k = pair_key(s->local, s->remote);
            if (hmap_get(&outgoing, k) == s)
                hmap_del(&outgoing, k); /* new stanzas open a fresh stream */
            free(k);
        }
        send_raw(s, "</stream:stream>");
        s->closing = true;
        conn_close(s->conn, "idle");
    }
    ev_timer_add(loop, 10000, idle_sweep, NULL);
}

/* ---- listeners ---- */

static void accept_one(int fd, bool direct_tls)
{
    struct s2s *s = stream_new(S2S_IN);
    s->conn = conn_new(server.loop, fd, s->tag, server.cfg.max_output_buffer, &s2s_conn_ops, s);
    log_debug(s->tag, "connection from %s%s", conn_peer_ip(s->conn),
              direct_tls ? " (direct TLS)" : "");
    if (direct_tls) {
        struct conn_tls_opts o = {.want_peer_cert = true};
        conn_start_tls_opts(s->conn, tls_default_ctx(), &o);
    }
}


static int listen_on(const struct config_addr *a, bool direct_tls, char *err, size_t errlen)
{
    if (listener_open(&listeners, a, "s2s", direct_tls, accept_one, err, errlen) < 0)
        return -1;
    log_info(NULL, "s2s listening on %s:%u%s", a->host, a->port, direct_tls ? " (direct TLS)" : "");
    return 0;
}

int s2s_init(char *err, size_t errlen)
{
    hmap_init(&outgoing);
    hmap_init(&waiting);
    random_bytes(dialback_secret, sizeof dialback_secret);
    if (!s2s_enabled())
        return 0;
    if (resolver_init(server.loop,
                      server.cfg.n_s2s_nameserver ? &server.cfg.s2s_nameserver[0] : NULL, err,
                      errlen) < 0)
        return -1;
    for (size_t i = 0; i < server.cfg.n_s2s_listen; i++)
        if (listen_on(&server.cfg.s2s_listen[i], false, err, errlen) < 0)
            return -1;
    for (size_t i = 0; i < server.cfg.n_s2s_tls_listen; i++)
        if (listen_on(&server.cfg.s2s_tls_listen[i], true, err, errlen) < 0)
            return -1;
    ev_timer_add(server.loop, 10000, idle_sweep, NULL);
    return 0;
}

static void close_listeners(void)
{
    listener_close_all(&listeners);
}

void s2s_shutdown(void)
{
    close_listeners();
    for (struct s2s *s = all_streams; s; s = s->next) {
        if (s->closing)
            continue;
        if (!s->conn) {
            s->closing = true;
            ev_defer(server.loop, free_later, s);
        } else if (s->dir == S2S_IN) {
            stream_error(s, "system-shutdown", NULL);
        } else {
            if (s->header_sent)
                send_raw(s, "</stream:stream>");
            s->closing = true;
            conn_close(s->conn, "shutdown");
        }
    }
}

void s2s_abort_all(void)
{
    for (struct s2s *s = all_streams; s; s = s->next) {
        s->closing = true;
        if (s->conn)
            conn_abort(s->conn, "shutdown");
        else
            ev_defer(server.loop, free_later, s);
    }
}

void s2s_fini(void)
{
    close_listeners();
    while (all_streams) {
        struct s2s *s = all_streams;
        if (s->conn) {
            /* Connections still open at exit: drop their owner so nothing calls back. */
            conn_set_ud(s->conn, NULL);
            conn_abort(s->conn, "exit");
        }
        stream_free(s);
    }
    hmap_fini(&outgoing);
    hmap_fini(&waiting);
    if (s2s_enabled())
        resolver_fini();
}
