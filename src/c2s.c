/* Client-to-server streams: RFC 6120 §4 (streams), §5 (STARTTLS), §6 (SASL), §7 (binding),
 * plus XEP-0368 direct TLS, the legacy session establishment (RFC 3921 §3, optional) and
 * XEP-0198 stream management (acks and resumption; counters and queue in sm.c).
 *
 * Lifetime of a session with resumption: struct c2s is the session. When its connection drops
 * (or the stream ends with an error that does not forbid it) it stays registered without a
 * connection ("detached") for the resumption timeout, receiving stanzas into its SM queue. A
 * <resume/> on a new stream moves that stream's connection and parser into the old struct c2s
 * (conn_set_ud, xmlstream_set_ud) and frees the new stream's empty struct c2s on the next loop
 * iteration (it is still on the call stack then). Nothing is freed from inside its own
 * callback: sessions end from conn's closed callback, or from a timer. */
#include "isthmus/c2s.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isthmus/account.h"
#include "isthmus/chanbind.h"
#include "isthmus/conn.h"
#include "isthmus/hmap.h"
#include "isthmus/listener.h"
#include "isthmus/hooks.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/router.h"
#include "isthmus/sasl.h"
#include "isthmus/server.h"
#include "isthmus/sm.h"
#include "isthmus/tls.h"
#include "isthmus/xmlstream.h"

#define NS_REGISTER_FEATURE "http://jabber.org/features/iq-register"
#define NS_SASL_CB "urn:xmpp:sasl-cb:0"

/* XEP-0198 acknowledgement requests: at once after this many unacknowledged stanzas, else this
 * long after the first one. */
#define SM_ACK_BATCH 5
#define SM_ACK_DELAY_MS 1000
/* The unacknowledged queue's size in bytes, as a multiple of max_output_buffer (its count is
 * [sm] max_unacked). */
#define SM_QUEUE_BUFFERS 8

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
    bool hibernating;     /* the XML parser was released by idle_check */
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
    struct sm *sm;        /* XEP-0198, once enabled */
    bool sm_final;        /* the session ends with its connection: no resumption */
    struct ev_timer *resume_timer; /* detached (conn == NULL): the session ends when it fires */
    struct ev_timer *ack_timer;    /* a delayed <r/> */
    struct c2s *moved_to; /* this stream resumed that session, which now owns conn and xs */
    struct c2s *next_res, *prev_res; /* same account */
    struct c2s *next_all, *prev_all;
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
static struct hmap by_smid; /* SM-ID → resumable struct c2s (XEP-0198 §5) */
static const struct c2s_output_filter *output_filter;
static unsigned next_id;

static const char *mechanism_names[8];

static void on_data(struct conn *c, void *ud, const char *data, size_t len);
static void on_tls_ready(struct conn *c, void *ud);
static void on_closed(struct conn *c, void *ud, const char *reason);
static const struct conn_ops c2s_conn_ops = {
    .data = on_data, .tls_ready = on_tls_ready, .closed = on_closed};

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
    return s->conn ? conn_peer_ip(s->conn) : "";
}

size_t c2s_count(void)
{
    return nsessions;
}

/* ---- output ---- */

static void stream_error(struct c2s *s, const char *condition, const char *text,
                         const char *app_xml);
static void sm_after_send(struct c2s *s);

static bool on_wire(const struct c2s *s)
{
    return s->conn && !s->closing;
}

static void send_raw(struct c2s *s, const char *text)
{
    if (on_wire(s))
        conn_write_str(s->conn, text);
}

/* Every stanza to the client goes through here, so that with XEP-0198 on each one is counted and
 * kept until acknowledged — also when it cannot go out now (detached, closing). */
static void send_stanza(struct c2s *s, const struct stanza *st)
{
    if (!on_wire(s) && !s->sm)
        return;
    struct buf b;
    buf_init(&b);
    stanza_serialize(st, NS_CLIENT, &b);
    if (s->sm)
        sm_push(s->sm, st, b.len);
    if (on_wire(s))
        conn_write(s->conn, b.data, b.len);
    buf_fini(&b);
    if (s->sm)
        sm_after_send(s);
}

void c2s_deliver(struct c2s *s, const struct stanza *st)
{
    if (!s->bound)
        return;
    if (output_filter && output_filter->hold(s, st))
        return;
    send_stanza(s, st);
}

void c2s_deliver_now(struct c2s *s, const struct stanza *st)
{
    if (s->bound)
        send_stanza(s, st);
}

size_t c2s_output_pending(const struct c2s *s)
{
    return on_wire(s) ? conn_output_pending(s->conn) : SIZE_MAX;
}

void c2s_set_output_filter(const struct c2s_output_filter *f)
{
    output_filter = f;
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

/* XEP-0198 §5: the session may not be resumed any more; it ends with its connection. */
static void forbid_resume(struct c2s *s)
{
    s->sm_final = true;
    if (s->sm && sm_id(s->sm) && hmap_get(&by_smid, sm_id(s->sm)) == s)
        hmap_del(&by_smid, sm_id(s->sm));
}

static void resume_expired(struct ev_loop *loop, void *ud);

/* A detached session ends from a timer, never from its caller's stack. */
static void end_detached(struct c2s *s)
{
    forbid_resume(s);
    s->closing = true;
    ev_timer_cancel(server.loop, s->resume_timer);
    s->resume_timer = ev_timer_add(server.loop, 0, resume_expired, s);
}

/* Stream errors that end the session for good: the server replaced, refused or shut it down, or
 * the client broke stream management. Others (a client's bad XML) leave a resumable session
 * resumable, like a dropped connection (XEP-0198 §7: only a clean close ends it at once). */
static bool error_is_final(const char *condition)
{
    static const char *const final[] = {"conflict", "system-shutdown", "not-authorized", "reset",
                                        "resource-constraint", "undefined-condition",
                                        "policy-violation"};
    for (size_t i = 0; i < ARRAY_LEN(final); i++)
        if (strcmp(condition, final[i]) == 0)
            return true;
    return false;
}

static void write_stream_error(struct c2s *s, const char *condition, const char *text,
                               const char *app_xml)
{
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
    if (app_xml)
        buf_puts(&b, app_xml); /* RFC 6120 §4.9.4: application-specific condition last */
    buf_puts(&b, "</stream:error></stream:stream>");
    send_raw(s, b.data);
    buf_fini(&b);
}

static void stream_error(struct c2s *s, const char *condition, const char *text,
                         const char *app_xml)
{
    if (s->closing)
        return;
    log_info(s->tag, "stream error %s%s%s", condition, text ? ": " : "", text ? text : "");
    if (error_is_final(condition))
        forbid_resume(s);
    if (!s->conn) {
        end_detached(s);
        return;
    }
    write_stream_error(s, condition, text, app_xml);
    char *why = xasprintf("stream error: %s", condition);
    session_end(s, why);
    free(why);
}

void c2s_stream_error(struct c2s *s, const char *condition, const char *text)
{
    stream_error(s, condition, text, NULL);
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
/* A session silent for [c2s] hibernate_after gives back its XML parser's memory
 * (xmlstream_hibernate, ~10 KB); waking it costs ~3 us, so busy sessions are left alone. */
#define HIBERNATE_AFTER_MS ((uint64_t)server.cfg.c2s_hibernate_after * 1000)

/* Timer for quiet sessions: hibernate the parser after HIBERNATE_AFTER_MS, and after
 * idle_timeout without input send a whitespace keepalive (RFC 6120 §4.6.1), so a dead peer
 * fails at the TCP level. Re-armed lazily from last_rx, never on every read. */
static void idle_check(struct ev_loop *loop, void *ud)
{
    struct c2s *s = ud;
    s->idle_timer = NULL;
    uint64_t idle_ms = (uint64_t)server.cfg.c2s_idle_timeout * 1000;
    uint64_t since = now_ms() - s->last_rx;
    if (since >= HIBERNATE_AFTER_MS && s->xs && xmlstream_hibernate(s->xs)) {
        s->hibernating = true;
        log_debug(s->tag, "quiet: XML parser released until the next stanza");
    }
    uint64_t next;
    if (since >= idle_ms) {
        send_raw(s, " ");
        next = idle_ms;
    } else {
        next = since < HIBERNATE_AFTER_MS ? HIBERNATE_AFTER_MS - since : idle_ms - since;
        if (next > idle_ms - since)
            next = idle_ms - since;
    }
    if (!s->closing)
        s->idle_timer = ev_timer_add(loop, next, idle_check, s);
}

static uint64_t first_idle_check_ms(void)
{
    uint64_t idle_ms = (uint64_t)server.cfg.c2s_idle_timeout * 1000;
    return idle_ms < HIBERNATE_AFTER_MS ? idle_ms : HIBERNATE_AFTER_MS;
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
                     "<session xmlns='" NS_SESSION "'><optional/></session>"
                     "<sm xmlns='" NS_SM "'/>"); /* XEP-0198 §2 */
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
    const char *why;
    const char *cond = xmlstream_check_header(header, default_ns, NS_CLIENT, &why);
    if (cond) {
        c2s_stream_error(s, cond, why);
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

/* ---- XEP-0198 stream management ---- */

static void request_ack(struct c2s *s)
{
    ev_timer_cancel(server.loop, s->ack_timer);
    s->ack_timer = NULL;
    send_raw(s, "<r xmlns='" NS_SM "'/>");
    sm_set_ack_requested(s->sm, true);
}

static void ack_timer_fired(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct c2s *s = ud;
    s->ack_timer = NULL;
    if (on_wire(s) && sm_unacked(s->sm) && !sm_ack_requested(s->sm))
        request_ack(s);
}

/* After a stanza joined the unacknowledged queue: enforce its bounds, and ask for an ack at
 * once after a batch or a moment after a lone stanza (XEP-0198 §4 leaves the policy to us). */
static void sm_after_send(struct c2s *s)
{
    if (sm_unacked(s->sm) > server.cfg.sm_max_unacked ||
        sm_unacked_bytes(s->sm) > SM_QUEUE_BUFFERS * server.cfg.max_output_buffer) {
        stream_error(s, "resource-constraint", "Too many unacknowledged stanzas", NULL);
        return;
    }
    if (!on_wire(s) || sm_ack_requested(s->sm))
        return;
    if (sm_unacked(s->sm) >= SM_ACK_BATCH)
        request_ack(s);
    else if (!s->ack_timer)
        s->ack_timer = ev_timer_add(server.loop, SM_ACK_DELAY_MS, ack_timer_fired, s);
}

/* XEP-0198 §6: <failed/> with a stanza error condition; h when we know it (§5). */
static void sm_failed(struct c2s *s, const char *condition, const uint32_t *h)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<failed xmlns='" NS_SM "'");
    if (h)
        buf_printf(&b, " h='%u'", (unsigned)*h);
    buf_printf(&b, "><%s xmlns='" NS_STANZA_ERRORS "'/></failed>", condition);
    send_raw(s, b.data);
    buf_fini(&b);
}

/* XEP-0198 §3 (and §5 for resume='true'). */
static void sm_enable(struct c2s *s, const struct stanza *el)
{
    if (!s->bound || s->sm) {
        /* §3: only after binding, and once. */
        sm_failed(s, "unexpected-request", NULL);
        return;
    }
    unsigned timeout = server.cfg.sm_resume_timeout;
    uint32_t max;
    /* §5: 'max' is the client's preferred maximum; ours still bounds it. */
    if (sm_parse_h(stanza_attr(el, "max"), &max) == 0 && max > 0 && max < timeout)
        timeout = max;
    char *id = NULL;
    if (sm_parse_bool(stanza_attr(el, "resume")) && timeout > 0) {
        id = random_id(32);
        hmap_put(&by_smid, id, s);
    }
    s->sm = sm_new(id, timeout);
    if (id) {
        char *r = xasprintf("<enabled xmlns='" NS_SM "' id='%s' resume='true' max='%u'/>", id,
                            timeout);
        send_raw(s, r);
        free(r);
    } else {
        send_raw(s, "<enabled xmlns='" NS_SM "'/>");
    }
    log_debug(s->tag, "stream management on%s", id ? " (resumable)" : "");
    free(id);
}

/* XEP-0198 §4: an <a/> from the client. */
static void sm_ack_in(struct c2s *s, const struct stanza *el)
{
    uint32_t h;
    if (sm_parse_h(stanza_attr(el, "h"), &h) < 0) {
        stream_error(s, "invalid-xml", "<a/> needs a numeric 'h'", NULL);
        return;
    }
    if (sm_ack(s->sm, h) == 0)
        return;
    /* §4: acknowledging more than was sent is an undefined-condition stream error with the
     * handled-count-too-high application condition. */
    unsigned sent = sm_sent(s->sm);
    char *text = xasprintf("You acknowledged %u stanzas, but I only sent you %u so far.",
                           (unsigned)h, sent);
    char *app = xasprintf("<handled-count-too-high xmlns='" NS_SM "' h='%u' send-count='%u'/>",
                          (unsigned)h, sent);
    stream_error(s, "undefined-condition", text, app);
    free(text);
    free(app);
}

static void free_shell(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct c2s *n = ud;
    sasl_free(n->sasl);
    jid_fini(&n->jid);
    free(n->bare);
    free(n->user);
    free(n->host);
    free(n);
}

/* The new stream n takes over session o (XEP-0198 §5). Called from n's element callback: n's
 * connection and parser move into o, o's old connection (if still up) is told and let go, and
 * n's empty shell is freed on the next loop iteration. */
static void takeover(struct c2s *o, struct c2s *n)
{
    ev_timer_cancel(server.loop, o->resume_timer);
    ev_timer_cancel(server.loop, o->idle_timer);
    ev_timer_cancel(server.loop, o->ack_timer);
    o->resume_timer = o->idle_timer = o->ack_timer = NULL;
    if (o->conn) {
        /* §5: "the old stream SHOULD be terminated". Its closed callback then only releases the
         * connection's per-IP count. */
        if (!o->closing)
            write_stream_error(o, "conflict", "Replaced by a resumed stream", NULL);
        conn_set_ud(o->conn, NULL);
        conn_close(o->conn, "replaced by a resumed stream");
        xmlstream_free(o->xs); /* not on the stack: we are in n's callback */
    }
    o->conn = n->conn;
    o->xs = n->xs;
    conn_set_ud(o->conn, o);
    xmlstream_set_ud(o->xs, o);
    n->conn = NULL;
    n->xs = NULL;
    memcpy(o->stream_id, n->stream_id, sizeof o->stream_id);
    o->header_sent = n->header_sent;
    o->direct_tls = n->direct_tls;
    o->starttls_next = false;
    o->closing = false;
    o->client_lacks_cb = n->client_lacks_cb;
    memcpy(o->cb_exporter, n->cb_exporter, sizeof o->cb_exporter);
    o->cb_exporter_len = n->cb_exporter_len;
    memcpy(o->cb_endpoint, n->cb_endpoint, sizeof o->cb_endpoint);
    o->cb_endpoint_len = n->cb_endpoint_len;
    o->last_rx = n->last_rx;
    o->idle_timer = ev_timer_add(server.loop, first_idle_check_ms(), idle_check, o);
    sm_set_ack_requested(o->sm, false);

    ev_timer_cancel(server.loop, n->auth_timer);
    ev_timer_cancel(server.loop, n->idle_timer);
    n->auth_timer = n->idle_timer = NULL;
    n->moved_to = o;
    if (n->prev_all)
        n->prev_all->next_all = n->next_all;
    else
        all_sessions = n->next_all;
    if (n->next_all)
        n->next_all->prev_all = n->prev_all;
    nsessions--;
    ev_defer(server.loop, free_shell, n);
}

/* XEP-0198 §5: <resume/> on a fresh authenticated stream instead of binding. */
static void sm_resume(struct c2s *s, const struct stanza *el)
{
    if (s->bound || s->sm) {
        sm_failed(s, "unexpected-request", NULL);
        return;
    }
    const char *previd = stanza_attr(el, "previd");
    uint32_t h;
    if (!previd || sm_parse_h(stanza_attr(el, "h"), &h) < 0) {
        sm_failed(s, "bad-request", NULL);
        return;
    }
    char *bare = xasprintf("%s@%s", s->user, s->host);
    struct c2s *o = hmap_get(&by_smid, previd);
    if (!o || !str_eq(o->bare, bare)) {
        /* Unknown, expired, or another account's (which we do not reveal). */
        uint32_t last;
        bool known = sm_recall(previd, bare, now_ms(), &last);
        log_info(s->tag, "resumption of an %s session refused", known ? "ended" : "unknown");
        sm_failed(s, "item-not-found", known ? &last : NULL);
        free(bare);
        return;
    }
    free(bare);
    if (sm_ack(o->sm, h) < 0) {
        uint32_t ours = sm_handled(o->sm);
        log_info(s->tag, "resumption refused: client acknowledged %u of %u stanzas",
                 (unsigned)h, (unsigned)sm_sent(o->sm));
        sm_failed(s, "undefined-condition", &ours);
        return;
    }
    char *tag = xstrdup(s->tag);
    char *ip = xstrdup(conn_peer_ip(s->conn));
    takeover(o, s);
    /* From here on the connection is o's. */
    char *r = xasprintf("<resumed xmlns='" NS_SM "' h='%u' previd='%s'/>",
                        (unsigned)sm_handled(o->sm), sm_id(o->sm));
    send_raw(o, r);
    free(r);
    /* §5: retransmit what the client has not handled, keeping the queue and its numbering. */
    size_t n = sm_unacked(o->sm);
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++)
        stanza_serialize(sm_queued(o->sm, i), NS_CLIENT, &b);
    if (b.len)
        conn_write(o->conn, b.data, b.len);
    buf_fini(&b);
    log_info(o->tag, "resumed on %s from %s (h=%u, %zu stanzas retransmitted)", tag, ip,
             (unsigned)sm_handled(o->sm), n);
    free(tag);
    free(ip);
    if (n)
        request_ack(o);
    if (output_filter && output_filter->resumed)
        output_filter->resumed(o);
}

static void sm_element(struct c2s *s, struct stanza *el)
{
    if (strcmp(el->name, "enable") == 0) {
        sm_enable(s, el);
    } else if (strcmp(el->name, "resume") == 0) {
        sm_resume(s, el);
    } else if (!s->sm) {
        stream_error(s, "unsupported-stanza-type", "Stream management is not enabled", NULL);
    } else if (strcmp(el->name, "r") == 0) {
        char *a = xasprintf("<a xmlns='" NS_SM "' h='%u'/>", (unsigned)sm_handled(s->sm));
        send_raw(s, a);
        free(a);
    } else if (strcmp(el->name, "a") == 0) {
        sm_ack_in(s, el);
    } else {
        stream_error(s, "unsupported-stanza-type", NULL, NULL);
    }
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
    } else if (strcmp(el->ns, NS_SM) == 0) {
        sm_element(s, el);
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
        if (s->sm)
            sm_received(s->sm); /* XEP-0198 §4: handled once we take it */
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
    /* XEP-0198 §7: a clean close ends the session; no resumption. */
    forbid_resume(s);
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
    if (s->hibernating) {
        /* Awake again: look back in hibernate_after rather than at the keepalive deadline. */
        s->hibernating = false;
        ev_timer_cancel(server.loop, s->idle_timer);
        s->idle_timer = ev_timer_add(server.loop, first_idle_check_ms(), idle_check, s);
    }
    size_t off = 0;
    while (off < len && !s->closing) {
        ssize_t n = xmlstream_feed(s->xs, data + off, len - off);
        if (s->moved_to)
            s = s->moved_to; /* XEP-0198 resumption: the connection now belongs to that session */
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

/* The session ends for real: modules see it go while it is still registered, then what it never
 * acknowledged is redelivered elsewhere (XEP-0198 §5), then it is freed. Never called from one of
 * its own callbacks: from its connection's closed callback or a timer. */
static void session_destroy(struct c2s *s)
{
    if (s->sm && sm_id(s->sm) && s->bare)
        sm_remember(sm_id(s->sm), s->bare, sm_handled(s->sm), now_ms(),
                    (uint64_t)server.cfg.sm_resume_timeout * 1000 + 60000);
    forbid_resume(s);
    session_unbind(s);
    if (s->sm) {
        size_t n = sm_unacked(s->sm);
        if (n)
            log_info(s->tag, "redelivering %zu unacknowledged stanzas", n);
        sm_redeliver(s->sm, s->host);
    }
    ev_timer_cancel(server.loop, s->auth_timer);
    ev_timer_cancel(server.loop, s->idle_timer);
    ev_timer_cancel(server.loop, s->resume_timer);
    ev_timer_cancel(server.loop, s->ack_timer);
    if (s->prev_all)
        s->prev_all->next_all = s->next_all;
    else
        all_sessions = s->next_all;
    if (s->next_all)
        s->next_all->prev_all = s->prev_all;
    nsessions--;
    xmlstream_free(s->xs);
    sasl_free(s->sasl);
    sm_free(s->sm);
    jid_fini(&s->jid);
    free(s->bare);
    free(s->user);
    free(s->host);
    free(s);
    server_check_drained();
}

static void resume_expired(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct c2s *s = ud;
    s->resume_timer = NULL;
    if (!s->closing)
        log_info(s->tag, "not resumed in time: session ends");
    session_destroy(s);
}

static void on_closed(struct conn *c, void *ud, const char *reason)
{
    ip_release(conn_peer_ip(c));
    struct c2s *s = ud;
    if (!s)
        return; /* replaced by a resumed stream; the session lives on with that one */
    log_info(s->tag, "disconnected: %s", reason);
    ev_timer_cancel(server.loop, s->auth_timer);
    ev_timer_cancel(server.loop, s->idle_timer);
    ev_timer_cancel(server.loop, s->ack_timer);
    s->auth_timer = s->idle_timer = s->ack_timer = NULL;
    xmlstream_free(s->xs);
    s->xs = NULL;
    s->conn = NULL;
    if (s->bound && s->sm && sm_id(s->sm) && !s->sm_final && !server.shutting_down) {
        /* XEP-0198 §5, §7: an unfinished stream; keep the session for its resumption. */
        s->closing = false;
        sm_set_ack_requested(s->sm, false);
        s->resume_timer = ev_timer_add(server.loop, (uint64_t)sm_timeout(s->sm) * 1000,
                                       resume_expired, s);
        log_info(s->tag, "session kept %us for resumption (%zu unacknowledged)",
                 sm_timeout(s->sm), sm_unacked(s->sm));
        return;
    }
    session_destroy(s);
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
    s->idle_timer = ev_timer_add(server.loop, first_idle_check_ms(), idle_check, s);
    if (direct_tls && conn_start_tls(s->conn, tls_default_ctx()) < 0)
        c2s_stream_error(s, "internal-server-error", NULL);
}


static int listen_on(const struct config_addr *a, bool direct_tls, char *err, size_t errlen)
{
    if (listener_open(&listeners, a, "c2s", direct_tls, accept_one, err, errlen) < 0)
        return -1;
    log_info(NULL, "c2s listening on %s:%u%s", a->host, a->port, direct_tls ? " (direct TLS)" : "");
    return 0;
}

int c2s_init(char *err, size_t errlen)
{
    hmap_init(&by_bare);
    hmap_init(&by_ip);
    hmap_init(&by_smid);
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
    listener_close_all(&listeners);
}

/* Detached sessions end at once: their unacknowledged messages go to offline storage. Ending one
 * frees only itself (rerouting never frees a session), so the saved next pointer stays valid. */
static void end_all_detached(void)
{
    struct c2s *s = all_sessions;
    while (s) {
        struct c2s *next = s->next_all;
        if (!s->conn)
            session_destroy(s);
        s = next;
    }
}

void c2s_shutdown(void)
{
    close_listeners();
    end_all_detached();
    for (struct c2s *s = all_sessions; s; s = s->next_all)
        c2s_stream_error(s, "system-shutdown", "The server is shutting down");
}

void c2s_abort_all(void)
{
    end_all_detached();
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
    hmap_fini(&by_smid);
    sm_forget_all();
}
