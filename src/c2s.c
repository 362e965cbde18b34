/* Client-to-server streams: RFC 6120 §4 (streams), §5 (STARTTLS), §6 (SASL), §7 (binding),
 * plus XEP-0368 direct TLS and the legacy session establishment (RFC 3921 §3, optional). */
#include "isthmus/c2s.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isthmus/account.h"
#include "isthmus/chanbind.h"
#include "isthmus/conn.h"
#include "isthmus/hmap.h"
#include "isthmus/hooks.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/router.h"
#include "isthmus/sasl.h"
#include "isthmus/server.h"
#include "isthmus/tls.h"
#include "isthmus/xmlstream.h"

#define NS_REGISTER_FEATURE "http://jabber.org/features/iq-register"
#define NS_SASL_CB "urn:xmpp:sasl-cb:0"

struct c2s {
    struct conn *conn;
    struct xmlstream *xs;
    char tag[24];
    char *host;           /* our domain this stream is for (from the first header's 'to') */
    char stream_id[24];
    bool direct_tls;
    bool header_sent;     /* our stream header for the current stream */
    bool starttls_next;   /* <proceed/> sent: the bytes that follow are TLS */
    bool authenticated;
    bool closing;
    struct sasl_session *sasl;
    bool sasl_wants_initial; /* <auth/> had no initial response */
    unsigned sasl_failures;
    bool client_lacks_cb; /* see struct sasl_channel */
    unsigned char cb_exporter[CHANBIND_MAX];
    size_t cb_exporter_len;
    unsigned char cb_endpoint[CHANBIND_MAX];
    size_t cb_endpoint_len;
    char *user;           /* prepared localpart after SASL */
    struct jid jid;       /* full JID once bound */
    char *bare;
    bool bound;
    bool available;
    int priority;
    struct ev_timer *auth_timer;
    struct ev_timer *idle_timer;
    uint64_t last_rx;
    void *slots[C2S_SLOT_COUNT];
    struct c2s *next_res, *prev_res; /* same account */
    struct c2s *next_all, *prev_all;
};

struct listener {
    int fd;
    bool direct_tls;
    struct listener *next;
};

/* Failed authentications per IP within the window (RFC 6120 §6.4.5's retry advice, applied
 * across connections so a client cannot reconnect to reset the count). */
struct ip_state {
    unsigned connections;
    unsigned failures;
    uint64_t window_start;
};

static struct listener *listeners;
static struct c2s *all_sessions;
static size_t nsessions;
static struct hmap by_bare; /* bare JID → first struct c2s of that account */
static struct hmap by_ip;   /* peer IP → struct ip_state */
static unsigned next_id;

static const char *mechanism_names[8];

static void on_data(struct conn *c, void *ud, const char *data, size_t len);
static void on_tls_ready(struct conn *c, void *ud);
static void on_closed(struct conn *c, void *ud, const char *reason);
static const struct conn_ops c2s_conn_ops = {on_data, on_tls_ready, on_closed};

static void xs_open(void *ud, const struct stanza *header, const char *default_ns);
static void xs_element(void *ud, struct stanza *el);
static void xs_close(void *ud);
static void xs_error(void *ud, const char *condition, const char *text);
static const struct xmlstream_cb c2s_xml_cb = {xs_open, xs_element, xs_close, xs_error};

/* ---- registry ---- */

struct c2s *c2s_first(const char *bare)
{
    return hmap_get(&by_bare, bare);
}

struct c2s *c2s_next(const struct c2s *s)
{
    return s->next_res;
}

struct c2s *c2s_find(const char *bare, const char *resource)
{
    for (struct c2s *s = c2s_first(bare); s; s = s->next_res)
        if (strcmp(s->jid.resource, resource) == 0)
            return s;
    return NULL;
}

static void registry_add(struct c2s *s)
{
    struct c2s *head = hmap_get(&by_bare, s->bare);
    s->prev_res = NULL;
    s->next_res = head;
    if (head)
        head->prev_res = s;
    hmap_put(&by_bare, s->bare, s);
}

static void registry_remove(struct c2s *s);

/* The session's resource goes away: modules see it while it is still registered. */
static void session_unbind(struct c2s *s)
{
    if (!s->bound)
        return;
    struct hook_ctx ctx = {.session = s, .to = &s->jid, .bare = s->bare};
    hooks_fire(HOOK_SESSION_CLOSED, &ctx);
    registry_remove(s);
}

static void registry_remove(struct c2s *s)
{
    if (!s->bound)
        return;
    if (s->prev_res)
        s->prev_res->next_res = s->next_res;
    else if (s->next_res)
        hmap_put(&by_bare, s->bare, s->next_res);
    else
        hmap_del(&by_bare, s->bare);
    if (s->next_res)
        s->next_res->prev_res = s->prev_res;
    s->next_res = s->prev_res = NULL;
    s->bound = false;
}

const struct jid *c2s_jid(const struct c2s *s)
{
    return s->bound ? &s->jid : NULL;
}

const char *c2s_bare(const struct c2s *s)
{
    return s->bound ? s->bare : NULL;
}

void c2s_set_presence(struct c2s *s, bool available, int priority)
{
    s->available = available;
    s->priority = priority;
}

void *c2s_slot(const struct c2s *s, enum c2s_slot slot)
{
    return s->slots[slot];
}

void c2s_set_slot(struct c2s *s, enum c2s_slot slot, void *data)
{
    s->slots[slot] = data;
}

struct c2s *c2s_all(void)
{
    return all_sessions;
}

struct c2s *c2s_all_next(const struct c2s *s)
{
    return s->next_all;
}

bool c2s_available(const struct c2s *s)
{
    return s->available;
}

int c2s_priority(const struct c2s *s)
{
    return s->priority;
}

const char *c2s_host(const struct c2s *s)
{
    return s->host;
}

bool c2s_is_authenticated(const struct c2s *s)
{
    return s->authenticated;
}

const char *c2s_peer_ip(const struct c2s *s)
{
    return conn_peer_ip(s->conn);
}

size_t c2s_count(void)
{
    return nsessions;
}

/* ---- output ---- */

static void send_raw(struct c2s *s, const char *text)
{
    if (!s->closing)
        conn_write_str(s->conn, text);
}

static void send_stanza(struct c2s *s, const struct stanza *st)
{
    if (s->closing)
        return;
    struct buf b;
    buf_init(&b);
    stanza_serialize(st, NS_CLIENT, &b);
    conn_write(s->conn, b.data, b.len);
    buf_fini(&b);
}

void c2s_deliver(struct c2s *s, const struct stanza *st)
{
    if (s->bound)
        send_stanza(s, st);
}

void c2s_send_preauth(struct c2s *s, const struct stanza *st)
{
    send_stanza(s, st);
}

static void send_header(struct c2s *s, const char *to)
{
    const char *from = s->host ? s->host : server.cfg.hosts[0].name;
    char *id = random_id(16);
    snprintf(s->stream_id, sizeof s->stream_id, "%s", id);
    free(id);
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<?xml version='1.0'?><stream:stream xmlns='" NS_CLIENT
                 "' xmlns:stream='" NS_STREAMS "' version='1.0' xml:lang='en' id='");
    buf_puts(&b, s->stream_id);
    buf_puts(&b, "' from='");
    xml_escape(&b, from, strlen(from), true);
    if (to) {
        buf_puts(&b, "' to='");
        xml_escape(&b, to, strlen(to), true);
    }
    buf_puts(&b, "'>");
    send_raw(s, b.data);
    buf_fini(&b);
    s->header_sent = true;
}

static void session_end(struct c2s *s, const char *reason)
{
    if (s->closing)
        return;
    s->closing = true;
    conn_close(s->conn, reason);
}

void c2s_stream_error(struct c2s *s, const char *condition, const char *text)
{
    if (s->closing)
        return;
    if (!s->header_sent)
        send_header(s, NULL); /* RFC 6120 §4.9.1.1: open the stream first */
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<stream:error><%s xmlns='" NS_STREAM_ERRORS "'/>", condition);
    if (text) {
        buf_puts(&b, "<text xmlns='" NS_STREAM_ERRORS "' xml:lang='en'>");
        xml_escape(&b, text, strlen(text), false);
        buf_puts(&b, "</text>");
    }
    buf_puts(&b, "</stream:error></stream:stream>");
    send_raw(s, b.data);
    buf_fini(&b);
    log_info(s->tag, "stream error %s%s%s", condition, text ? ": " : "", text ? text : "");
    char *why = xasprintf("stream error: %s", condition);
    session_end(s, why);
    free(why);
}

void c2s_close_account(const char *bare, const char *condition, const char *text)
{
    struct c2s *s = c2s_first(bare);
    while (s) {
        struct c2s *next = s->next_res;
        c2s_stream_error(s, condition, text);
        s = next;
    }
}

/* ---- per-IP accounting ---- */

static struct ip_state *ip_state(const char *ip)
{
    struct ip_state *st = hmap_get(&by_ip, ip);
    if (!st) {
        st = xcalloc(1, sizeof *st);
        hmap_put(&by_ip, ip, st);
    }
    return st;
}

static bool window_over(const struct ip_state *st)
{
    return now_ms() - st->window_start > (uint64_t)server.cfg.auth_failure_window * 1000;
}

static void ip_release(const char *ip)
{
    struct ip_state *st = hmap_get(&by_ip, ip);
    if (!st)
        return;
    if (st->connections)
        st->connections--;
    if (st->connections == 0 && (st->failures == 0 || window_over(st))) {
        hmap_del(&by_ip, ip);
        free(st);
    }
}

static bool ip_auth_blocked(const char *ip)
{
    struct ip_state *st = ip_state(ip);
    if (st->failures && window_over(st))
        st->failures = 0;
    return st->failures >= server.cfg.auth_failures;
}

static void ip_auth_failed(const char *ip)
{
    struct ip_state *st = ip_state(ip);
    if (st->failures == 0)
        st->window_start = now_ms();
    st->failures++;
}

/* ---- timers ---- */

static void auth_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct c2s *s = ud;
    s->auth_timer = NULL;
    c2s_stream_error(s, "connection-timeout", "Authentication took too long");
}

/* After idle_timeout without input, send a whitespace keepalive (RFC 6120 §4.6.1); a dead
 * peer then fails at the TCP level. Re-armed lazily, not on every read. */
static void idle_check(struct ev_loop *loop, void *ud)
{
    struct c2s *s = ud;
    s->idle_timer = NULL;
    uint64_t idle_ms = (uint64_t)server.cfg.c2s_idle_timeout * 1000;
    uint64_t since = now_ms() - s->last_rx;
    if (since >= idle_ms) {
        send_raw(s, " ");
        since = 0;
    }
    if (!s->closing)
        s->idle_timer = ev_timer_add(loop, idle_ms - since, idle_check, s);
}

/* ---- features ---- */

static void fill_channel(struct c2s *s, struct sasl_channel *ch)
{
    memset(ch, 0, sizeof *ch);
    ch->tls = conn_is_tls(s->conn);
    ch->client_lacks_cb = s->client_lacks_cb;
    if (s->cb_exporter_len) {
        ch->exporter = s->cb_exporter;
        ch->exporter_len = s->cb_exporter_len;
    }
    if (s->cb_endpoint_len) {
        ch->endpoint = s->cb_endpoint;
        ch->endpoint_len = s->cb_endpoint_len;
    }
}

static void send_features(struct c2s *s)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<stream:features>");
    bool tls = conn_is_tls(s->conn);
    if (!s->authenticated) {
        if (!tls) {
            buf_puts(&b, "<starttls xmlns='" NS_TLS "'>");
            if (server.cfg.c2s_require_tls)
                buf_puts(&b, "<required/>");
            buf_puts(&b, "</starttls>");
        }
        if (tls || !server.cfg.c2s_require_tls) {
            struct sasl_channel ch;
            fill_channel(s, &ch);
            size_t n = sasl_mechanisms(&ch, tls, mechanism_names, ARRAY_LEN(mechanism_names));
            buf_puts(&b, "<mechanisms xmlns='" NS_SASL "'>");
            for (size_t i = 0; i < n; i++)
                buf_printf(&b, "<mechanism>%s</mechanism>", mechanism_names[i]);
            buf_puts(&b, "</mechanisms>");
            const char *cbs[4];
            size_t ncb = sasl_channel_bindings(&ch, cbs, ARRAY_LEN(cbs));
            if (ncb) {
                /* XEP-0440 */
                buf_puts(&b, "<sasl-channel-binding xmlns='" NS_SASL_CB "'>");
                for (size_t i = 0; i < ncb; i++)
                    buf_printf(&b, "<channel-binding type='%s'/>", cbs[i]);
                buf_puts(&b, "</sasl-channel-binding>");
            }
            const struct config_host *h = server_host(s->host);
            if (h && h->registration)
                buf_puts(&b, "<register xmlns='" NS_REGISTER_FEATURE "'/>");
        }
    } else {
        buf_puts(&b, "<bind xmlns='" NS_BIND "'/>"
                     "<session xmlns='" NS_SESSION "'><optional/></session>");
        struct hook_ctx ctx = {.session = s, .out = &b};
        hooks_fire(HOOK_STREAM_FEATURES, &ctx);
    }
    buf_puts(&b, "</stream:features>");
    send_raw(s, b.data);
    buf_fini(&b);
}

/* ---- stream header ---- */

static void xs_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct c2s *s = ud;
    if (s->closing)
        return;
    const char *to = stanza_attr(header, "to");
    char *domain = to ? jid_prep_domain(to) : NULL;
    bool known = domain && server_is_local_host(domain) && (!s->host || str_eq(s->host, domain));
    if (known && !s->host)
        s->host = xstrdup(domain);
    const char *from = stanza_attr(header, "from");
    char *from_prep = from ? jid_normalize(from) : NULL;
    send_header(s, from_prep);
    free(from_prep);
    free(domain);
    /* RFC 6120 §4.8.2: the content namespace must be jabber:client on a c2s stream. */
    if (strcmp(default_ns, NS_CLIENT) != 0) {
        c2s_stream_error(s, "invalid-namespace", "Client streams use jabber:client");
        return;
    }
    /* RFC 6120 §4.7.5: we speak 1.0; a missing version means a pre-RFC stream. */
    const char *version = stanza_attr(header, "version");
    if (!version || strncmp(version, "1.", 2) != 0) {
        c2s_stream_error(s, "unsupported-version", "This server requires XMPP version 1.0");
        return;
    }
    if (!known) {
        c2s_stream_error(s, "host-unknown", "This server does not serve that domain");
        return;
    }
    send_features(s);
}

/* ---- SASL ---- */

static int creds_lookup(void *ud, const char *username, enum scram_hash h, struct scram_creds *out)
{
    struct c2s *s = ud;
    char *user = jid_prep_local(username);
    if (!user)
        return 1;
    int rc = account_get_creds(server.db, s->host, user, h, out);
    free(user);
    return rc == 0 ? 0 : rc == ACCOUNT_NOTFOUND ? 1 : -1;
}

static void sasl_send(struct c2s *s, const char *element, const unsigned char *data, size_t len)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<%s xmlns='" NS_SASL "'>", element);
    if (data && len) {
        char *enc = base64_encode(data, len);
        buf_puts(&b, enc);
        free(enc);
    } else if (strcmp(element, "success") == 0 && data) {
        buf_puts(&b, "="); /* RFC 6120 §6.4.6: empty additional data */
    }
    buf_printf(&b, "</%s>", element);
    send_raw(s, b.data);
    buf_fini(&b);
}

static void sasl_fail(struct c2s *s, const char *condition, const char *text)
{
    sasl_free(s->sasl);
    s->sasl = NULL;
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<failure xmlns='" NS_SASL "'><%s/>", condition);
    if (text) {
        buf_puts(&b, "<text xml:lang='en'>");
        xml_escape(&b, text, strlen(text), false);
        buf_puts(&b, "</text>");
    }
    buf_puts(&b, "</failure>");
    send_raw(s, b.data);
    buf_fini(&b);
}

static void auth_failed(struct c2s *s, const char *condition)
{
    log_info(s->tag, "authentication failed (%s) from %s", condition, conn_peer_ip(s->conn));
    sasl_fail(s, condition, NULL);
    ip_auth_failed(conn_peer_ip(s->conn));
    /* RFC 6120 §6.4.5: allow a few retries, then policy-violation. */
    if (++s->sasl_failures >= server.cfg.auth_failures)
        c2s_stream_error(s, "policy-violation", "Too many failed authentication attempts");
}

static void auth_succeeded(struct c2s *s, const unsigned char *data, size_t len)
{
    char *user = jid_prep_local(sasl_username(s->sasl));
    const char *authzid = sasl_authzid(s->sasl);
    if (!user) {
        auth_failed(s, "not-authorized");
        return;
    }
    if (authzid) {
        /* RFC 6120 §6.3.8: we only let an account act as itself. */
        char *bare = xasprintf("%s@%s", user, s->host);
        char *want = jid_normalize(authzid);
        bool ok = want && strcmp(want, bare) == 0;
        free(bare);
        free(want);
        if (!ok) {
            free(user);
            sasl_fail(s, "invalid-authzid", NULL);
            return;
        }
    }
    sasl_send(s, "success", data ? data : (const unsigned char *)"", len);
    sasl_free(s->sasl);
    s->sasl = NULL;
    s->user = user;
    s->authenticated = true;
    ev_timer_cancel(server.loop, s->auth_timer);
    s->auth_timer = NULL;
    log_info(s->tag, "authenticated as %s@%s", user, s->host);
    /* RFC 6120 §6.4.6: both sides restart the stream. */
    s->header_sent = false;
    xmlstream_restart(s->xs);
}

static void sasl_input(struct c2s *s, const char *b64)
{
    unsigned char *in = NULL;
    size_t in_len = 0;
    /* "=" is an empty response (RFC 6120 §6.4.2). */
    if (strcmp(b64, "=") != 0 && base64_decode(b64, strlen(b64), &in, &in_len) < 0) {
        auth_failed(s, "incorrect-encoding");
        return;
    }
    unsigned char *out = NULL;
    size_t out_len = 0;
    const char *cond = NULL;
    enum sasl_status st = sasl_step(s->sasl, in, in_len, &out, &out_len, &cond);
    free(in);
    if (st == SASL_CONTINUE)
        sasl_send(s, "challenge", out, out_len);
    else if (st == SASL_OK)
        auth_succeeded(s, out, out_len);
    else if (sasl_unknown_channel_binding(s->sasl)) {
        /* Not a credential failure: the client will retry without binding. */
        s->client_lacks_cb = true;
        log_info(s->tag, "client asked for a channel binding we do not offer");
        sasl_fail(s, cond ? cond : "not-authorized", "Unsupported channel-binding type");
    } else
        auth_failed(s, cond ? cond : "not-authorized");
    free(out);
}

static void handle_sasl(struct c2s *s, struct stanza *el)
{
    if (s->authenticated) {
        c2s_stream_error(s, "policy-violation", "Already authenticated");
        return;
    }
    char *text = stanza_text(el);
    if (strcmp(el->name, "auth") == 0) {
        if (s->sasl) {
            sasl_free(s->sasl);
            s->sasl = NULL;
        }
        if (ip_auth_blocked(conn_peer_ip(s->conn))) {
            log_info(s->tag, "authentication refused: too many failures from %s",
                     conn_peer_ip(s->conn));
            sasl_fail(s, "temporary-auth-failure",
                      "Too many failed authentication attempts; try again later");
        } else {
            struct sasl_channel ch;
            fill_channel(s, &ch);
            const char *mech = stanza_attr(el, "mechanism");
            s->sasl = mech ? sasl_new(mech, &ch, conn_is_tls(s->conn), creds_lookup, s) : NULL;
            if (!s->sasl)
                sasl_fail(s, "invalid-mechanism", NULL);
            else if (!*text)
                sasl_send(s, "challenge", NULL, 0); /* no initial response: ask for it */
            else if (strcmp(text, "=") == 0)
                /* RFC 6120 §6.4.2: "=" is a zero-length initial response, and every mechanism
                 * we offer needs data in its first message (RFC 4616 §2, RFC 5802 §5.1). */
                auth_failed(s, "malformed-request");
            else
                sasl_input(s, text);
        }
    } else if (strcmp(el->name, "response") == 0) {
        if (!s->sasl)
            c2s_stream_error(s, "policy-violation", "No authentication in progress");
        else
            sasl_input(s, *text ? text : "=");
    } else if (strcmp(el->name, "abort") == 0) {
        sasl_fail(s, "aborted", NULL);
    } else {
        c2s_stream_error(s, "unsupported-stanza-type", NULL);
    }
    free(text);
}

/* ---- binding ---- */

static void bind_resource(struct c2s *s, struct stanza *iq)
{
    struct stanza *bind = stanza_child(iq, "bind", NS_BIND);
    char *wanted = stanza_child_text(bind, "resource", NULL);
    char *resource = NULL;
    if (wanted && *wanted) {
        resource = jid_prep_resource(wanted);
        if (!resource) {
            free(wanted);
            struct stanza *e = stanza_error_reply(iq, "bad-request", NULL, "Invalid resource");
            send_stanza(s, e);
            stanza_free(e);
            return;
        }
    } else {
        resource = xasprintf("isthmus-%s", s->stream_id);
    }
    free(wanted);
    s->jid.local = xstrdup(s->user);
    s->jid.domain = xstrdup(s->host);
    s->jid.resource = resource;
    s->bare = jid_bare_string(&s->jid);
    /* RFC 6120 §7.7.2.2: on a resource conflict the new session wins here; the old stream
     * gets <conflict/>. */
    struct c2s *old = c2s_find(s->bare, resource);
    if (old) {
        session_unbind(old);
        c2s_stream_error(old, "conflict", "Replaced by a new connection");
    }
    registry_add(s);
    s->bound = true;
    char *full = jid_to_string(&s->jid);
    log_info(s->tag, "bound %s", full);
    struct stanza *r = stanza_iq_result(iq);
    stanza_set_attr(r, "to", NULL);
    struct stanza *b = stanza_add_child(r, "bind", NS_BIND);
    stanza_add_text_child(b, "jid", NULL, full);
    send_stanza(s, r);
    stanza_free(r);
    free(full);
    struct hook_ctx ctx = {.session = s, .to = &s->jid, .bare = s->bare};
    hooks_fire(HOOK_SESSION_BOUND, &ctx);
}

/* ---- stanzas ---- */

static bool is_stanza(const struct stanza *el)
{
    return strcmp(el->ns, NS_CLIENT) == 0 &&
           (strcmp(el->name, "message") == 0 || strcmp(el->name, "presence") == 0 ||
            strcmp(el->name, "iq") == 0);
}

static void preauth_iq(struct c2s *s, struct stanza *iq)
{
    /* XEP-0077 before authentication: the only stanza a stream may carry then. */
    struct stanza *payload = stanza_first_elem(iq);
    const struct config_host *h = server_host(s->host);
    const char *type = stanza_attr(iq, "type");
    if (!payload || strcmp(payload->ns, "jabber:iq:register") != 0 || !h || !h->registration ||
        !(str_eq(type, "get") || str_eq(type, "set"))) {
        c2s_stream_error(s, "not-authorized", "Authenticate first");
        return;
    }
    struct jid to = {.domain = s->host};
    struct iq_request req = {.iq = iq, .payload = payload, .from = NULL, .to = &to, .origin = s};
    stanza_set_attr(iq, "from", NULL);
    const char *cond = modules_dispatch_iq(IQ_HOST, &req);
    if (cond) {
        struct stanza *e = stanza_error_reply(iq, cond, NULL, NULL);
        stanza_set_attr(e, "to", NULL);
        stanza_set_attr(e, "from", NULL);
        send_stanza(s, e);
        stanza_free(e);
    }
}

static void bound_stanza(struct c2s *s, struct stanza *st)
{
    /* RFC 6120 §8.1.2.1: the server stamps the full JID; whatever the client said is ignored. */
    char *full = jid_to_string(&s->jid);
    stanza_set_attr(st, "from", full);
    free(full);
    const char *to = stanza_attr(st, "to");
    const char *type = stanza_attr(st, "type");
    if (strcmp(st->name, "iq") == 0) {
        const char *id = stanza_attr(st, "id");
        bool request = str_eq(type, "get") || str_eq(type, "set");
        if (!id || !(request || str_eq(type, "result") || str_eq(type, "error"))) {
            c2s_stream_error(s, "invalid-xml", "IQ needs an id and a valid type");
            stanza_free(st);
            return;
        }
        /* RFC 3921 §3: legacy session establishment is a no-op today. */
        if (request && !to && stanza_child(st, "session", NS_SESSION)) {
            struct stanza *r = stanza_iq_result(st);
            stanza_set_attr(r, "to", NULL);
            stanza_set_attr(r, "from", NULL);
            send_stanza(s, r);
            stanza_free(r);
            stanza_free(st);
            return;
        }
        if (request && stanza_child(st, "bind", NS_BIND)) {
            struct stanza *e = stanza_error_reply(st, "not-allowed", NULL, "Already bound");
            stanza_set_attr(e, "from", NULL);
            send_stanza(s, e);
            stanza_free(e);
            stanza_free(st);
            return;
        }
    }
    if (to) {
        char *norm = jid_normalize(to);
        if (!norm) {
            router_error(st, "jid-malformed", NULL);
            stanza_free(st);
            return;
        }
        stanza_set_attr(st, "to", norm);
        free(norm);
    }
    struct hook_ctx ctx = {.stanza = st, .session = s, .bare = s->bare};
    if (hooks_fire(HOOK_CLIENT_STANZA, &ctx) == HOOK_DONE ||
        (strcmp(st->name, "presence") == 0 && !stanza_attr(st, "to"))) {
        /* Presence without 'to' is the presence module's broadcast (RFC 6121 §4.2, §4.4). */
        stanza_free(st);
        return;
    }
    router_route(st, s);
}

static void xs_element(void *ud, struct stanza *el)
{
    struct c2s *s = ud;
    if (s->closing) {
        stanza_free(el);
        return;
    }
    bool tls = conn_is_tls(s->conn);
    if (strcmp(el->ns, NS_TLS) == 0 && strcmp(el->name, "starttls") == 0) {
        if (tls || s->authenticated) {
            c2s_stream_error(s, "policy-violation", "TLS is already in place");
        } else {
            send_raw(s, "<proceed xmlns='" NS_TLS "'/>");
            s->starttls_next = true;
            s->header_sent = false;
            xmlstream_restart(s->xs);
        }
    } else if (!tls && server.cfg.c2s_require_tls) {
        c2s_stream_error(s, "policy-violation", "Use STARTTLS first");
    } else if (strcmp(el->ns, NS_SASL) == 0) {
        handle_sasl(s, el);
    } else if (!s->authenticated) {
        if (strcmp(el->ns, NS_CLIENT) == 0 && strcmp(el->name, "iq") == 0)
            preauth_iq(s, el);
        else
            c2s_stream_error(s, "not-authorized", "Authenticate first");
    } else if (!is_stanza(el)) {
        struct hook_ctx ctx = {.stanza = el, .session = s, .bare = s->bare};
        if (hooks_fire(HOOK_NONZA, &ctx) != HOOK_DONE)
            c2s_stream_error(s, "unsupported-stanza-type", NULL);
    } else if (!s->bound) {
        const char *type = stanza_attr(el, "type");
        if (strcmp(el->name, "iq") == 0 && str_eq(type, "set") &&
            stanza_child(el, "bind", NS_BIND))
            bind_resource(s, el);
        else
            c2s_stream_error(s, "not-authorized", "Bind a resource first");
    } else {
        bound_stanza(s, el);
        return; /* ownership passed on */
    }
    stanza_free(el);
}

static void xs_close(void *ud)
{
    struct c2s *s = ud;
    if (s->closing)
        return;
    /* RFC 6120 §4.4: answer the close and end the TCP connection. */
    if (!s->header_sent)
        send_header(s, NULL);
    send_raw(s, "</stream:stream>");
    session_end(s, "stream closed by client");
}

static void xs_error(void *ud, const char *condition, const char *text)
{
    c2s_stream_error(ud, condition, text);
}

/* ---- connection callbacks ---- */

static void on_data(struct conn *c, void *ud, const char *data, size_t len)
{
    struct c2s *s = ud;
    s->last_rx = now_ms();
    size_t off = 0;
    while (off < len && !s->closing) {
        ssize_t n = xmlstream_feed(s->xs, data + off, len - off);
        if (n < 0)
            return;
        off += (size_t)n;
        if (s->starttls_next) {
            s->starttls_next = false;
            /* RFC 6120 §5.4.3.3: nothing may follow <starttls/> in the clear; bytes that do are
             * an injection attempt (CVE-2011-0411 class). */
            if (off < len) {
                log_warn(s->tag, "plaintext after <starttls/>: dropping connection");
                s->closing = true;
                conn_abort(c, "plaintext injected after STARTTLS");
                return;
            }
            SSL_CTX *ctx = tls_host_ctx(s->host);
            if (conn_start_tls(c, ctx ? ctx : tls_default_ctx()) < 0) {
                s->closing = true;
                conn_abort(c, "cannot start TLS");
            }
            return;
        }
    }
}

static void on_tls_ready(struct conn *c, void *ud)
{
    struct c2s *s = ud;
    SSL *ssl = conn_ssl(c);
    s->cb_exporter_len = 0;
    s->cb_endpoint_len = 0;
    if (chanbind_exporter(ssl, s->cb_exporter, &s->cb_exporter_len) < 0)
        s->cb_exporter_len = 0;
    X509 *cert = SSL_get_certificate(ssl);
    if (!cert || chanbind_server_end_point(cert, s->cb_endpoint, &s->cb_endpoint_len) < 0)
        s->cb_endpoint_len = 0;
}

static void on_closed(struct conn *c, void *ud, const char *reason)
{
    (void)c;
    struct c2s *s = ud;
    log_info(s->tag, "disconnected: %s", reason);
    session_unbind(s);
    ip_release(conn_peer_ip(s->conn));
    ev_timer_cancel(server.loop, s->auth_timer);
    ev_timer_cancel(server.loop, s->idle_timer);
    if (s->prev_all)
        s->prev_all->next_all = s->next_all;
    else
        all_sessions = s->next_all;
    if (s->next_all)
        s->next_all->prev_all = s->prev_all;
    nsessions--;
    xmlstream_free(s->xs);
    sasl_free(s->sasl);
    jid_fini(&s->jid);
    free(s->bare);
    free(s->user);
    free(s->host);
    free(s);
    if (server.shutting_down && nsessions == 0)
        ev_stop(server.loop);
}

static void accept_one(int fd, bool direct_tls)
{
    struct c2s *s = xcalloc(1, sizeof *s);
    snprintf(s->tag, sizeof s->tag, "c2s#%u", ++next_id);
    s->direct_tls = direct_tls;
    s->conn = conn_new(server.loop, fd, s->tag, server.cfg.max_output_buffer, &c2s_conn_ops, s);
    s->xs = xmlstream_new(&c2s_xml_cb, s, server.cfg.max_stanza_size, server.cfg.max_depth);
    s->last_rx = now_ms();
    s->next_all = all_sessions;
    if (all_sessions)
        all_sessions->prev_all = s;
    all_sessions = s;
    nsessions++;
    const char *ip = conn_peer_ip(s->conn);
    struct ip_state *st = ip_state(ip);
    st->connections++;
    log_debug(s->tag, "connection from %s%s", ip, direct_tls ? " (direct TLS)" : "");
    if (server.cfg.max_connections_per_ip && st->connections > server.cfg.max_connections_per_ip) {
        c2s_stream_error(s, "policy-violation", "Too many connections from your address");
        return;
    }
    s->auth_timer = ev_timer_add(server.loop, (uint64_t)server.cfg.c2s_auth_timeout * 1000,
                                 auth_timeout, s);
    s->idle_timer = ev_timer_add(server.loop, (uint64_t)server.cfg.c2s_idle_timeout * 1000,
                                 idle_check, s);
    if (direct_tls && conn_start_tls(s->conn, tls_default_ctx()) < 0)
        c2s_stream_error(s, "internal-server-error", NULL);
}

static void on_accept(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    struct listener *l = ud;
    for (int i = 0; i < 64; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                log_error(NULL, "accept: %s (raise the open files limit)", strerror(errno));
            break;
        }
        accept_one(cfd, l->direct_tls);
    }
}

static int listen_on(const struct config_addr *a, bool direct_tls, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    int rc = getaddrinfo(a->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "[c2s] cannot resolve %s: %s", a->host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "[c2s] cannot listen on %s:%u: %s", a->host, a->port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct listener *l = xcalloc(1, sizeof *l);
    l->fd = fd;
    l->direct_tls = direct_tls;
    l->next = listeners;
    listeners = l;
    ev_io_add(server.loop, fd, EV_READ, on_accept, l);
    log_info(NULL, "c2s listening on %s:%u%s", a->host, a->port, direct_tls ? " (direct TLS)" : "");
    return 0;
}

int c2s_init(char *err, size_t errlen)
{
    hmap_init(&by_bare);
    hmap_init(&by_ip);
    for (size_t i = 0; i < server.cfg.n_c2s_listen; i++)
        if (listen_on(&server.cfg.c2s_listen[i], false, err, errlen) < 0)
            return -1;
    for (size_t i = 0; i < server.cfg.n_c2s_tls_listen; i++)
        if (listen_on(&server.cfg.c2s_tls_listen[i], true, err, errlen) < 0)
            return -1;
    return 0;
}

static void close_listeners(void)
{
    while (listeners) {
        struct listener *l = listeners;
        listeners = l->next;
        ev_io_del(server.loop, l->fd);
        close(l->fd);
        free(l);
    }
}

void c2s_shutdown(void)
{
    close_listeners();
    for (struct c2s *s = all_sessions; s; s = s->next_all)
        c2s_stream_error(s, "system-shutdown", "The server is shutting down");
}

void c2s_abort_all(void)
{
    for (struct c2s *s = all_sessions; s; s = s->next_all) {
        s->closing = true;
        conn_abort(s->conn, "shutdown");
    }
}

void c2s_fini(void)
{
    close_listeners();
    size_t i = 0;
    const char *k;
    void *v;
    while (hmap_next(&by_ip, &i, &k, &v))
        free(v);
    hmap_fini(&by_ip);
    hmap_fini(&by_bare);
}
