/* irc.c — the IRC client stack (irc.h): one connection's life (resolve → connect → TLS →
 * register → traffic → close). The text helpers, the parser and the line reader it uses are in
 * irc_text.c. */
#include "irc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "isthmus/conn.h"
#include "isthmus/log.h"
#include "isthmus/resolver.h"
#include "isthmus/util.h"

#define IRC_LINE_LIMIT 512           /* RFC 2812 §2.3: a message with CRLF is at most 512 bytes */
#define IRC_PREFIX_RESERVE 100       /* ":nick!user@host " the server puts before relayed lines */
#define IRC_MAX_QUEUE (256 * 1024)   /* bytes held by flood control before lines are dropped */
#define IRC_MAX_OUTPUT (512 * 1024)  /* conn output cap (slow consumer) */
#define IRC_CONNECT_TIMEOUT_MS 20000 /* per address */
#define IRC_QUIT_WAIT_MS 2000
#define IRC_MAX_ISUPPORT 128 /* 005 tokens kept */
#define IRC_MAX_PREFIXES 16
#define IRC_SASL_CHUNK 400 /* IRCv3 SASL 3.1: AUTHENTICATE payloads of 400 bytes */
#define IRC_NICK_TRIES 3
#define IRC_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

enum irc_casemap { IRC_CM_RFC1459, IRC_CM_STRICT, IRC_CM_ASCII };

struct irc_kv {
    char *key;
    char *value;
};

struct irc_conn {
    struct ev_loop *loop;
    struct irc_conn_cb cb;
    void *ud;
    char *tag;

    /* options, copied */
    char *host, *nick_opt, *username, *realname, *password, *sasl_mech, *sasl_user, *sasl_pass;
    char *client_cert, *nickserv_pass;
    char *tls_name; /* SNI and the name the certificate must carry */
    uint16_t port;
    bool tls, tls_verify;
    unsigned burst, interval_ms, keepalive_ms;

    /* connecting */
    struct resolver_query *rq;
    struct sockaddr_storage *addrs; /* while connecting only (~128 bytes each) */
    size_t naddrs, next_addr;
    struct ev_timer *connect_timer;
    struct conn *conn;
    bool tcp_up;    /* the current address answered */
    bool connected; /* TCP up (and TLS verified when tls): registration may start */

    /* registration */
    char *nick;        /* current nick */
    char *server_name; /* from 001 */
    int nick_tries;
    bool cap_ls_done, cap_sasl, cap_multi_prefix, sasl_running, sasl_done, cap_ended;
    char *cap_sasl_mechs; /* the value of "sasl=" in CAP LS, or NULL */
    bool registered;

    /* server features (005) */
    struct irc_kv *isupport; /* grown as 005 lines come, at most IRC_MAX_ISUPPORT */
    size_t nisupport;
    enum irc_casemap casemap;
    char chantypes[16];
    char prefix_modes[IRC_MAX_PREFIXES + 1], prefix_symbols[IRC_MAX_PREFIXES + 1];

    /* input and keepalive */
    struct irc_line_reader reader;
    uint64_t last_input;
    bool ping_sent;
    struct ev_timer *ping_timer;

    /* output: flood control (lines separated by '\n' in queue) */
    struct buf queue;
    unsigned tokens;
    uint64_t last_refill;
    struct ev_timer *flood_timer;

    /* ending */
    bool quitting, quit_sent, finished;
    char *quit_reason;
    struct ev_timer *quit_timer;
    char *close_reason;
};

/* ---------------------------------------------------------------- server features */

static unsigned char fold(enum irc_casemap cm, unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return (unsigned char)(ch - 'A' + 'a');
    if (cm == IRC_CM_ASCII)
        return ch;
    /* RFC 1459 §2.2: {}| are the lower case of []\ ; rfc1459 (not strict) adds ^ for ~. */
    if (ch == '[')
        return '{';
    if (ch == ']')
        return '}';
    if (ch == '\\')
        return '|';
    if (ch == '~' && cm == IRC_CM_RFC1459)
        return '^';
    return ch;
}

int irc_casecmp(const struct irc_conn *c, const char *a, const char *b)
{
    enum irc_casemap cm = c ? c->casemap : IRC_CM_RFC1459;
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (;; x++, y++) {
        unsigned char fx = fold(cm, *x), fy = fold(cm, *y);
        if (fx != fy)
            return fx < fy ? -1 : 1;
        if (!fx)
            return 0;
    }
}

bool irc_is_channel(const struct irc_conn *c, const char *name)
{
    const char *types = c ? c->chantypes : "#&";
    return name && name[0] && strchr(types, name[0]) != NULL;
}

char irc_prefix_mode(const struct irc_conn *c, char symbol)
{
    const char *syms = c ? c->prefix_symbols : "@+";
    const char *modes = c ? c->prefix_modes : "ov";
    if (!symbol)
        return 0;
    const char *p = strchr(syms, symbol);
    return p ? modes[p - syms] : 0;
}

const char *irc_names_entry(const struct irc_conn *c, const char *entry, char *modes, size_t n)
{
    size_t k = 0;
    while (*entry) {
        char m = irc_prefix_mode(c, *entry);
        if (!m)
            break;
        if (modes && k + 1 < n)
            modes[k++] = m;
        entry++;
    }
    if (modes && n)
        modes[k] = '\0';
    return entry;
}

const char *irc_isupport(const struct irc_conn *c, const char *key)
{
    for (size_t i = 0; i < c->nisupport; i++)
        if (strcmp(c->isupport[i].key, key) == 0)
            return c->isupport[i].value;
    return NULL;
}

static void apply_feature(struct irc_conn *c, const char *key, const char *value)
{
    if (strcmp(key, "CHANTYPES") == 0) {
        snprintf(c->chantypes, sizeof c->chantypes, "%s", value ? value : "#&");
    } else if (strcmp(key, "CASEMAPPING") == 0) {
        if (value && strcmp(value, "ascii") == 0)
            c->casemap = IRC_CM_ASCII;
        else if (value && strcmp(value, "strict-rfc1459") == 0)
            c->casemap = IRC_CM_STRICT;
        else
            c->casemap = IRC_CM_RFC1459;
    } else if (strcmp(key, "PREFIX") == 0) {
        /* "(modes)symbols", same length; "PREFIX=" means none. */
        const char *v = value ? value : "(ov)@+";
        c->prefix_modes[0] = c->prefix_symbols[0] = '\0';
        const char *close = v[0] == '(' ? strchr(v, ')') : NULL;
        if (!close)
            return;
        size_t nm = (size_t)(close - v - 1), ns = strlen(close + 1);
        size_t n = nm < ns ? nm : ns;
        if (n > IRC_MAX_PREFIXES)
            n = IRC_MAX_PREFIXES;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            char mode = v[1 + i], sym = close[1 + i];
            /* A NUL or a letter as symbol would confuse irc_names_entry; skip such pairs. */
            if (!mode || !sym || (sym >= 'a' && sym <= 'z') || (sym >= 'A' && sym <= 'Z'))
                continue;
            c->prefix_modes[k] = mode;
            c->prefix_symbols[k] = sym;
            k++;
        }
        c->prefix_modes[k] = c->prefix_symbols[k] = '\0';
    }
}

static void isupport_set(struct irc_conn *c, const char *token)
{
    bool negate = token[0] == '-';
    if (negate)
        token++;
    size_t kl = strcspn(token, "=");
    if (kl == 0)
        return;
    char *key = xstrndup(token, kl);
    size_t i = 0;
    while (i < c->nisupport && strcmp(c->isupport[i].key, key) != 0)
        i++;
    if (negate) {
        if (i < c->nisupport) {
            free(c->isupport[i].key);
            free(c->isupport[i].value);
            c->isupport[i] = c->isupport[--c->nisupport];
        }
        apply_feature(c, key, NULL);
    } else if (i < c->nisupport || c->nisupport < IRC_MAX_ISUPPORT) {
        char *value = irc_isupport_unescape(token[kl] == '=' ? token + kl + 1 : "");
        if (i < c->nisupport) {
            free(c->isupport[i].value);
        } else {
            c->isupport = xrealloc(c->isupport, (c->nisupport + 1) * sizeof *c->isupport);
            c->isupport[i].key = xstrdup(key);
            c->nisupport++;
        }
        c->isupport[i].value = value;
        apply_feature(c, key, value);
    }
    free(key);
}

/* ---------------------------------------------------------------- TLS contexts */

/* One client context per (verification, client certificate) pair, made on first use and kept
 * for the life of the process: every connection to every network shares them. */
struct irc_tls_ctx {
    bool verify;
    char *cert;
    SSL_CTX *ctx;
    struct irc_tls_ctx *next;
};
static struct irc_tls_ctx *tls_ctxs;

static SSL_CTX *client_ctx(bool verify, const char *cert, const char *tag)
{
    for (struct irc_tls_ctx *t = tls_ctxs; t; t = t->next)
        if (t->verify == verify && str_eq(t->cert, cert))
            return t->ctx;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* The result is judged after the handshake (conn_peer_cert_valid_for) so the log can say
     * why; the handshake itself never fails on the certificate. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX *base = verify && cert ? client_ctx(true, NULL, tag) : NULL;
    if (base) {
        /* Per-user client certificates (SASL EXTERNAL) share the one trust store instead of
         * parsing the CA bundle again for every user (~150 certificates each time). */
        SSL_CTX_set1_cert_store(ctx, SSL_CTX_get_cert_store(base));
    } else if (verify) {
        /* The system store; OpenSSL's SSL_CERT_FILE / SSL_CERT_DIR override it (a private CA). */
        int ok = access(IRC_CA_FILE, R_OK) == 0 && !getenv("SSL_CERT_FILE") &&
                         !getenv("SSL_CERT_DIR")
                     ? SSL_CTX_load_verify_locations(ctx, IRC_CA_FILE, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1)
            log_warn(tag, "cannot load the system CA certificates");
    }
    if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
                 SSL_CTX_use_PrivateKey_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_check_private_key(ctx) != 1)) {
        log_warn(tag, "%s: cannot load client certificate and key", cert);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    ERR_clear_error();
    struct irc_tls_ctx *t = xcalloc(1, sizeof *t);
    t->verify = verify;
    t->cert = xstrdup(cert);
    t->ctx = ctx;
    t->next = tls_ctxs;
    tls_ctxs = t;
    return ctx;
}

static bool is_ip_literal(const char *host)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* ---------------------------------------------------------------- ending */

static void free_conn(struct irc_conn *c)
{
    resolver_cancel(c->rq);
    irc_line_reader_fini(&c->reader);
    buf_fini(&c->queue);
    for (size_t i = 0; i < c->nisupport; i++) {
        free(c->isupport[i].key);
        free(c->isupport[i].value);
    }
    free(c->isupport);
    free(c->addrs);
    char **strs[] = {&c->tag,         &c->host,           &c->nick_opt,      &c->username,
                     &c->realname,    &c->password,       &c->sasl_mech,     &c->sasl_user,
                     &c->sasl_pass,   &c->client_cert,    &c->nickserv_pass, &c->nick,
                     &c->server_name, &c->cap_sasl_mechs, &c->quit_reason,   &c->close_reason,
                     &c->tls_name};
    for (size_t i = 0; i < ARRAY_LEN(strs); i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
    free(c);
}

static void report_closed(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct irc_conn *c = ud;
    if (c->cb.closed)
        c->cb.closed(c, c->ud, c->close_reason);
    free_conn(c);
}

/* Ends the connection: closed() runs from the loop, once. graceful lets queued output (QUIT)
 * go out first. */
static void finish(struct irc_conn *c, const char *reason, bool graceful)
{
    if (c->finished)
        return;
    c->finished = true;
    c->close_reason = xstrdup(reason && *reason ? reason : "closed");
    log_info(c->tag, "closed: %s", c->close_reason);
    resolver_cancel(c->rq);
    c->rq = NULL;
    struct ev_timer **timers[] = {&c->connect_timer, &c->ping_timer, &c->flood_timer,
                                  &c->quit_timer};
    for (size_t i = 0; i < ARRAY_LEN(timers); i++) {
        ev_timer_cancel(c->loop, *timers[i]);
        *timers[i] = NULL;
    }
    if (c->conn) {
        conn_set_ud(c->conn, NULL); /* its callbacks from now on are ignored */
        if (graceful)
            conn_close(c->conn, c->close_reason);
        else
            conn_abort(c->conn, c->close_reason);
        c->conn = NULL;
    }
    buf_fini(&c->queue);
    ev_defer(c->loop, report_closed, c);
}

/* ---------------------------------------------------------------- output */

static bool is_sensitive(const char *line)
{
    return strncmp(line, "PASS ", 5) == 0 || strncmp(line, "AUTHENTICATE ", 13) == 0 ||
           strncasecmp(line, "PRIVMSG NickServ :IDENTIFY", 26) == 0;
}

/* Straight to the socket, bypassing flood control: registration, PONG, keepalive, QUIT. */
static void write_line(struct irc_conn *c, const char *line, size_t len)
{
    if (!c->conn || c->finished)
        return;
    if (log_enabled(LOG_DEBUG))
        log_debug(c->tag, "-> %.*s", is_sensitive(line) ? (int)strcspn(line, " ") : (int)len, line);
    conn_write(c->conn, line, len);
    conn_write(c->conn, "\r\n", 2);
}

static void write_linef(struct irc_conn *c, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void write_linef(struct irc_conn *c, const char *fmt, ...)
{
    char line[IRC_LINE_LIMIT * 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\r' || line[i] == '\n' || line[i] == '\0')
            line[i] = ' ';
    write_line(c, line, len);
}

static void flood_timer_fired(struct ev_loop *loop, void *ud);

static bool unlimited(const struct irc_conn *c)
{
    return c->interval_ms == UINT32_MAX;
}

static void refill(struct irc_conn *c)
{
    uint64_t now = ev_now(c->loop);
    if (c->tokens >= c->burst) {
        c->last_refill = now;
        return;
    }
    uint64_t add = (now - c->last_refill) / c->interval_ms;
    if (add == 0)
        return;
    c->last_refill += add * c->interval_ms;
    c->tokens = add >= c->burst - c->tokens ? c->burst : c->tokens + (unsigned)add;
    if (c->tokens >= c->burst)
        c->last_refill = now;
}

/* Sends what the token bucket allows; then QUIT once everything before it went out. */
static void drain(struct irc_conn *c)
{
    if (c->finished || !c->conn || !c->registered || c->quit_sent)
        return;
    if (!unlimited(c))
        refill(c);
    while (c->queue.len > 0 && (unlimited(c) || c->tokens > 0)) {
        char *nl = memchr(c->queue.data, '\n', c->queue.len);
        size_t n = nl ? (size_t)(nl - c->queue.data) : c->queue.len;
        write_line(c, c->queue.data, n);
        buf_consume(&c->queue, nl ? n + 1 : n);
        if (!unlimited(c))
            c->tokens--;
    }
    if (c->queue.len == 0 && c->quitting && (unlimited(c) || c->tokens > 0)) {
        write_linef(c, "QUIT :%s", c->quit_reason);
        c->quit_sent = true;
        conn_close(c->conn, c->quit_reason); /* its closed callback ends us */
        return;
    }
    bool waiting = c->queue.len > 0 || c->quitting;
    if (waiting && !c->flood_timer && !unlimited(c)) {
        uint64_t now = ev_now(c->loop), due = c->last_refill + c->interval_ms;
        c->flood_timer = ev_timer_add(c->loop, due > now ? due - now : 1, flood_timer_fired, c);
    }
}

static void flood_timer_fired(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct irc_conn *c = ud;
    c->flood_timer = NULL;
    drain(c);
}

/* Longest prefix of s (at most max bytes) that does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    for (int back = 0; back < 4 && n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80; back++)
        n--;
    if (n == 0 || ((unsigned char)s[n] & 0xC0) == 0x80)
        return max; /* not UTF-8 there: any cut will do */
    return n;
}

static void enqueue(struct irc_conn *c, const char *line, size_t len)
{
    if (c->finished || c->quitting)
        return;
    if (c->queue.len + len + 1 > IRC_MAX_QUEUE) {
        log_warn(c->tag, "send queue full, dropping: %.60s", line);
        return;
    }
    buf_append(&c->queue, line, len);
    buf_putc(&c->queue, '\n');
    drain(c);
}

/* Sanitises (CR, LF, NUL → space), cuts to 510 bytes and queues. */
static void send_text(struct irc_conn *c, char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\r' || line[i] == '\n' || line[i] == '\0')
            line[i] = ' ';
    len = utf8_cut(line, len, IRC_LINE_LIMIT - 2);
    enqueue(c, line, len);
}

void irc_send(struct irc_conn *c, const char *fmt, ...)
{
    if (c->finished || c->quitting)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *line = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(line, (size_t)n + 1, fmt, ap);
    va_end(ap);
    send_text(c, line, (size_t)n);
    free(line);
}

/* Where to cut text (len bytes) for a piece of at most max bytes: after the last space in the
 * second half of the window, else at a UTF-8 boundary. *skip is set to the bytes dropped at the
 * cut (the space). */
static size_t split_point(const char *text, size_t len, size_t max, size_t *skip)
{
    *skip = 0;
    if (len <= max)
        return len;
    size_t cut = utf8_cut(text, len, max);
    for (size_t i = cut; i > max / 2; i--) {
        if (text[i] == ' ') {
            *skip = 1;
            return i;
        }
    }
    return cut;
}

void irc_say(struct irc_conn *c, const char *target, const char *text, bool action, bool notice)
{
    if (c->finished || c->quitting)
        return;
    const char *verb = notice ? "NOTICE" : "PRIVMSG";
    /* "VERB target :" + [\001ACTION ] text [\001] + CRLF + the relay prefix ≤ 512 */
    size_t overhead = strlen(verb) + 1 + strlen(target) + 2 + 2 + IRC_PREFIX_RESERVE +
                      (action ? strlen("\001ACTION ") + 1 : 0);
    size_t max = overhead + 16 < IRC_LINE_LIMIT ? IRC_LINE_LIMIT - overhead : 16;
    const char *p = text;
    while (*p) {
        size_t ll = strcspn(p, "\n");
        size_t l = ll;
        if (l && p[l - 1] == '\r')
            l--;
        const char *s = p;
        while (l > 0) {
            size_t skip;
            size_t n = split_point(s, l, max, &skip);
            if (n == 0) { /* a space at the start of the window: keep it */
                n = utf8_cut(s, l, max);
                skip = 0;
            }
            char *line = xasprintf("%s %s :%s%.*s%s", verb, target, action ? "\001ACTION " : "",
                                   (int)n, s, action ? "\001" : "");
            send_text(c, line, strlen(line));
            free(line);
            s += n + skip;
            l -= n + skip;
        }
        p += ll;
        if (*p == '\n')
            p++;
    }
}

/* The queue did not drain in time: QUIT goes now, ahead of what is left. */
static void quit_timer_fired(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct irc_conn *c = ud;
    c->quit_timer = NULL;
    if (!c->quit_sent) {
        write_linef(c, "QUIT :%s", c->quit_reason);
        c->quit_sent = true;
    }
    finish(c, c->quit_reason, true);
}

void irc_quit(struct irc_conn *c, const char *reason)
{
    if (c->finished || c->quitting)
        return;
    c->quitting = true;
    c->quit_reason = xstrdup(reason && *reason ? reason : "Leaving");
    if (!c->conn || !c->connected) {
        finish(c, c->quit_reason, false);
        return;
    }
    if (!c->registered) {
        buf_reset(&c->queue);
        write_linef(c, "QUIT :%s", c->quit_reason);
        c->quit_sent = true;
        conn_close(c->conn, c->quit_reason);
        return;
    }
    c->quit_timer = ev_timer_add(c->loop, IRC_QUIT_WAIT_MS, quit_timer_fired, c);
    drain(c);
}

void irc_abort(struct irc_conn *c, const char *reason)
{
    finish(c, reason && *reason ? reason : "aborted", false);
}

/* ---------------------------------------------------------------- accessors */

bool irc_is_registered(const struct irc_conn *c)
{
    return c->registered;
}

const char *irc_nick(const struct irc_conn *c)
{
    return c->nick;
}

const char *irc_server_name(const struct irc_conn *c)
{
    return c->server_name ? c->server_name : c->host;
}

void irc_set_ud(struct irc_conn *c, void *ud)
{
    c->ud = ud;
}

/* ---------------------------------------------------------------- registration */

static void cap_end(struct irc_conn *c)
{
    if (c->cap_ended)
        return;
    c->cap_ended = true;
    write_linef(c, "CAP END");
}

static bool sasl_wanted(const struct irc_conn *c)
{
    if (!c->sasl_mech || !c->cap_sasl)
        return false;
    if (!c->cap_sasl_mechs || !*c->cap_sasl_mechs)
        return true; /* CAP 3.1 servers list no mechanisms */
    /* IRCv3 sasl-3.2: "sasl=PLAIN,EXTERNAL" */
    size_t ml = strlen(c->sasl_mech);
    for (const char *p = c->cap_sasl_mechs; *p;) {
        size_t n = strcspn(p, ",");
        if (n == ml && strncasecmp(p, c->sasl_mech, n) == 0)
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

/* IRCv3 capability negotiation 3.2 (https://ircv3.net/specs/extensions/capability-negotiation):
 * LS may span lines ("CAP * LS * :..."); we request sasl and multi-prefix, never more. */
static void handle_cap(struct irc_conn *c, const struct irc_msg *m)
{
    if (m->nparams < 3 || c->registered)
        return;
    const char *sub = m->params[1];
    const char *list = m->params[m->nparams - 1];
    if (strcasecmp(sub, "LS") == 0) {
        if (c->cap_ls_done)
            return;
        bool more = m->nparams >= 4 && strcmp(m->params[2], "*") == 0;
        for (const char *p = list; *p;) {
            p += strspn(p, " ");
            size_t n = strcspn(p, " ");
            size_t kl = strcspn(p, "= ");
            if (kl == 4 && strncmp(p, "sasl", 4) == 0) {
                c->cap_sasl = true;
                free(c->cap_sasl_mechs);
                c->cap_sasl_mechs = kl < n ? xstrndup(p + kl + 1, n - kl - 1) : NULL;
            } else if (kl == 12 && strncmp(p, "multi-prefix", 12) == 0) {
                c->cap_multi_prefix = true;
            }
            p += n;
        }
        if (more)
            return;
        c->cap_ls_done = true;
        bool sasl = sasl_wanted(c);
        if (c->sasl_mech && !sasl)
            log_info(c->tag, "server does not offer SASL %s; continuing without", c->sasl_mech);
        if (!sasl && !c->cap_multi_prefix) {
            cap_end(c);
            return;
        }
        write_linef(c, "CAP REQ :%s%s%s", sasl ? "sasl" : "",
                    sasl && c->cap_multi_prefix ? " " : "",
                    c->cap_multi_prefix ? "multi-prefix" : "");
    } else if (strcasecmp(sub, "ACK") == 0) {
        bool sasl = false;
        for (const char *p = list; *p;) {
            p += strspn(p, " ");
            size_t n = strcspn(p, " ");
            if (n == 4 && strncmp(p, "sasl", 4) == 0)
                sasl = true;
            p += n;
        }
        if (sasl && c->sasl_mech && !c->sasl_running && !c->sasl_done) {
            c->sasl_running = true;
            write_linef(c, "AUTHENTICATE %s", c->sasl_mech);
        } else if (!c->sasl_running) {
            cap_end(c);
        }
    } else if (strcasecmp(sub, "NAK") == 0) {
        if (!c->sasl_running)
            cap_end(c);
    }
}

/* IRCv3 SASL 3.1: the response is base64 in chunks of 400 bytes; a final chunk of exactly 400
 * bytes is followed by "AUTHENTICATE +", and an empty response is "+". */
static void sasl_respond(struct irc_conn *c)
{
    if (strcasecmp(c->sasl_mech, "EXTERNAL") == 0) {
        write_linef(c, "AUTHENTICATE +");
        return;
    }
    const char *authcid = c->sasl_user ? c->sasl_user : c->nick_opt;
    const char *pass = c->sasl_pass ? c->sasl_pass : "";
    /* RFC 4616 §2: authzid NUL authcid NUL passwd; authzid = authcid, as most clients send. */
    struct buf raw;
    buf_init(&raw);
    buf_puts(&raw, authcid);
    buf_putc(&raw, '\0');
    buf_puts(&raw, authcid);
    buf_putc(&raw, '\0');
    buf_puts(&raw, pass);
    char *b64 = base64_encode((const unsigned char *)raw.data, raw.len);
    size_t len = strlen(b64);
    size_t off = 0;
    do {
        size_t n = len - off < IRC_SASL_CHUNK ? len - off : IRC_SASL_CHUNK;
        if (n == 0)
            write_linef(c, "AUTHENTICATE +");
        else
            write_linef(c, "AUTHENTICATE %.*s", (int)n, b64 + off);
        off += n;
        if (n < IRC_SASL_CHUNK)
            break;
    } while (1);
    explicit_bzero(b64, len);
    free(b64);
    explicit_bzero(raw.data, raw.len);
    buf_fini(&raw);
}

static void handle_authenticate(struct irc_conn *c, const struct irc_msg *m)
{
    if (!c->sasl_running || m->nparams < 1)
        return;
    if (strcmp(m->params[0], "+") == 0)
        sasl_respond(c);
}

/* IRCv3 SASL numerics 900-908. Returns true when the line was one of them. */
static bool handle_sasl_numeric(struct irc_conn *c, const struct irc_msg *m)
{
    const char *cmd = m->command;
    if (!(cmd[0] == '9' && cmd[1] == '0' && cmd[2] >= '0' && cmd[2] <= '8' && !cmd[3]))
        return false;
    if (!c->sasl_running)
        return true;
    switch (cmd[2]) {
    case '3': /* RPL_SASLSUCCESS */
    case '7': /* ERR_SASLALREADY */
        c->sasl_running = false;
        c->sasl_done = true;
        log_info(c->tag, "SASL %s authentication succeeded", c->sasl_mech);
        cap_end(c);
        break;
    case '2': /* ERR_NICKLOCKED */
    case '4': /* ERR_SASLFAIL */
    case '5': /* ERR_SASLTOOLONG */
    case '6': /* ERR_SASLABORTED */
        if (strcmp(c->sasl_mech, "EXTERNAL") == 0) {
            /* A certificate the network does not know yet (its fingerprint is registered with
             * NickServ CERT ADD from a connection that presents it): IRCv3 sasl-3.1 lets the
             * client end negotiation and register unauthenticated; the NickServ fallback and
             * the certificate itself (services identify a known fingerprint on connect) are
             * still there. The numeric is handed on so that the user learns why. */
            c->sasl_running = false;
            log_info(c->tag, "SASL EXTERNAL failed (%s); continuing without", cmd);
            if (c->cb.message)
                c->cb.message(c, c->ud, m);
            if (!c->finished && !c->quitting)
                cap_end(c);
            break;
        }
        finish(c, "SASL authentication failed", false);
        break;
    default:
        break;
    }
    return true;
}

static void set_nick(struct irc_conn *c, const char *nick)
{
    if (!nick || !*nick)
        return;
    free(c->nick);
    c->nick = xstrdup(nick);
}

/* RFC 2812 §5.2: 433 ERR_NICKNAMEINUSE, 432 ERR_ERRONEUSNICKNAME, 437 ERR_UNAVAILRESOURCE. */
static void retry_nick(struct irc_conn *c)
{
    if (++c->nick_tries > IRC_NICK_TRIES) {
        char *why = xasprintf("nick %s unavailable", c->nick_opt);
        finish(c, why, false);
        free(why);
        return;
    }
    char *next = xasprintf("%s_", c->nick);
    set_nick(c, next);
    free(next);
    log_info(c->tag, "nick taken, trying %s", c->nick);
    write_linef(c, "NICK %s", c->nick);
}

static void on_welcome(struct irc_conn *c, const struct irc_msg *m)
{
    c->registered = true;
    /* Connected for good: the other addresses are not needed any more. */
    free(c->addrs);
    c->addrs = NULL;
    c->naddrs = c->next_addr = 0;
    if (m->nparams >= 1)
        set_nick(c, m->params[0]);
    if (*m->nick) {
        free(c->server_name);
        c->server_name = xstrdup(m->nick);
    }
    log_info(c->tag, "registered as %s on %s", c->nick, irc_server_name(c));
    if (c->nickserv_pass && !c->sasl_done) {
        char *line = xasprintf("PRIVMSG NickServ :IDENTIFY %s", c->nickserv_pass);
        send_text(c, line, strlen(line));
        explicit_bzero(line, strlen(line));
        free(line);
    }
    drain(c); /* what was sent before registration */
    if (c->cb.registered && !c->finished)
        c->cb.registered(c, c->ud, c->nick);
}

static bool is_numeric(const char *cmd, const char *num)
{
    return strcmp(cmd, num) == 0;
}

/* One received line (already valid UTF-8). Returns false when the connection is ending. */
static bool on_line(void *ud, char *line)
{
    struct irc_conn *c = ud;
    if (c->finished || c->quitting)
        return false;
    log_debug(c->tag, "<- %s", line);
    struct irc_msg m;
    if (irc_parse_line(line, &m) != 0)
        return true;
    /* The tag unescaping may make CR or LF; callbacks never see those. */
    for (char *t = (char *)m.tag_time; t && *t; t++)
        if (*t == '\r' || *t == '\n')
            *t = ' ';
    for (char *t = (char *)m.tag_msgid; t && *t; t++)
        if (*t == '\r' || *t == '\n')
            *t = ' ';
    const char *cmd = m.command;
    const char *last = m.nparams ? m.params[m.nparams - 1] : "";

    if (strcmp(cmd, "PING") == 0) {
        write_linef(c, "PONG :%s", last); /* RFC 2812 §3.7.2, ahead of flood control */
        return true;
    }
    if (strcmp(cmd, "CAP") == 0) {
        handle_cap(c, &m);
        return !c->finished;
    }
    if (strcmp(cmd, "AUTHENTICATE") == 0) {
        handle_authenticate(c, &m);
        return !c->finished;
    }
    if (handle_sasl_numeric(c, &m))
        return !c->finished;
    if (is_numeric(cmd, "421") && m.nparams >= 2 && strcasecmp(m.params[1], "CAP") == 0) {
        c->cap_ended = true; /* a pre-IRCv3 server: registration goes on without CAP */
        return true;
    }
    if (!c->registered && is_numeric(cmd, "001")) {
        on_welcome(c, &m);
    } else if (is_numeric(cmd, "005")) {
        for (int i = 1; i < m.nparams - 1; i++)
            isupport_set(c, m.params[i]);
    } else if (!c->registered &&
               (is_numeric(cmd, "433") || is_numeric(cmd, "432") || is_numeric(cmd, "437"))) {
        retry_nick(c);
    } else if (strcmp(cmd, "NICK") == 0 && m.nparams >= 1 && c->nick &&
               irc_casecmp(c, m.nick, c->nick) == 0) {
        set_nick(c, m.params[0]);
    }
    if (c->cb.message && !c->finished && !c->quitting)
        c->cb.message(c, c->ud, &m);
    if (strcmp(cmd, "ERROR") == 0 && !c->quitting)
        finish(c, m.nparams ? last : "ERROR", false);
    return !c->finished && !c->quitting;
}

/* ---------------------------------------------------------------- connection */

static void ping_timer_fired(struct ev_loop *loop, void *ud)
{
    struct irc_conn *c = ud;
    c->ping_timer = NULL;
    uint64_t idle = ev_now(loop) - c->last_input;
    if (idle < c->keepalive_ms) {
        c->ping_timer = ev_timer_add(loop, c->keepalive_ms - idle, ping_timer_fired, c);
        return;
    }
    if (c->ping_sent) {
        finish(c, "ping timeout", false);
        return;
    }
    c->ping_sent = true;
    write_linef(c, "PING :%s", irc_server_name(c));
    c->ping_timer = ev_timer_add(loop, c->keepalive_ms, ping_timer_fired, c);
}

static void start_registration(struct irc_conn *c)
{
    ev_timer_cancel(c->loop, c->connect_timer);
    c->connect_timer = NULL;
    c->connected = true;
    c->last_input = ev_now(c->loop);
    c->last_refill = c->last_input;
    c->ping_timer = ev_timer_add(c->loop, c->keepalive_ms, ping_timer_fired, c);
    log_info(c->tag, "connected to %s port %u%s", c->host, c->port, c->tls ? " (TLS)" : "");
    /* IRCv3 capability negotiation: CAP LS first suspends registration until CAP END; PASS
     * must precede NICK/USER (RFC 2812 §3.1.1). */
    write_linef(c, "CAP LS 302");
    if (c->password)
        write_linef(c, "PASS %s%s", strchr(c->password, ' ') || c->password[0] == ':' ? ":" : "",
                    c->password);
    write_linef(c, "NICK %s", c->nick);
    write_linef(c, "USER %s 0 * :%s", c->username, c->realname);
}

static void try_next(struct irc_conn *c, const char *why);

static void conn_on_connected(struct conn *cn, void *ud)
{
    struct irc_conn *c = ud;
    if (!c || c->conn != cn)
        return;
    c->tcp_up = true;
    if (!c->tls) {
        start_registration(c);
        return;
    }
    SSL_CTX *ctx = client_ctx(c->tls_verify, c->client_cert, c->tag);
    if (!ctx) {
        finish(c, c->client_cert ? "cannot load the client certificate" : "cannot set up TLS",
               false);
        return;
    }
    struct conn_tls_opts o = {.client = true,
                              .sni = is_ip_literal(c->tls_name) ? NULL : c->tls_name};
    if (conn_start_tls_opts(cn, ctx, &o) != 0)
        finish(c, "cannot start TLS", false);
}

static void conn_on_tls_ready(struct conn *cn, void *ud)
{
    struct irc_conn *c = ud;
    if (!c || c->conn != cn)
        return;
    if (c->tls_verify && !conn_peer_cert_valid_for(cn, c->tls_name)) {
        char *why = xasprintf("TLS certificate not valid for %s", c->tls_name);
        finish(c, why, false);
        free(why);
        return;
    }
    start_registration(c);
}

static void conn_on_data(struct conn *cn, void *ud, const char *data, size_t len)
{
    struct irc_conn *c = ud;
    if (!c || c->conn != cn || c->finished)
        return;
    c->last_input = ev_now(c->loop);
    c->ping_sent = false;
    if (!c->connected || c->quitting)
        return;
    irc_line_reader_feed(&c->reader, data, len, on_line, c);
}

static void conn_on_closed(struct conn *cn, void *ud, const char *reason)
{
    struct irc_conn *c = ud;
    if (!c || c->conn != cn)
        return;
    c->conn = NULL;
    if (c->quitting) {
        finish(c, c->quit_reason, false);
    } else if (!c->tcp_up) {
        ev_timer_cancel(c->loop, c->connect_timer);
        c->connect_timer = NULL;
        try_next(c, reason);
    } else {
        finish(c, reason, false);
    }
}

static const struct conn_ops irc_conn_ops = {
    .data = conn_on_data,
    .tls_ready = conn_on_tls_ready,
    .closed = conn_on_closed,
    .connected = conn_on_connected,
};

static void connect_timer_fired(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct irc_conn *c = ud;
    c->connect_timer = NULL;
    if (c->tcp_up) {
        finish(c, "TLS handshake timed out", false);
        return;
    }
    if (c->conn) {
        conn_set_ud(c->conn, NULL);
        conn_abort(c->conn, "connect timed out");
        c->conn = NULL;
    }
    try_next(c, "connection timed out");
}

static void try_next(struct irc_conn *c, const char *why)
{
    while (c->next_addr < c->naddrs) {
        const struct sockaddr_storage *a = &c->addrs[c->next_addr++];
        unsigned len =
            a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        c->conn = conn_connect(c->loop, (const struct sockaddr *)a, len, c->tag, IRC_MAX_OUTPUT,
                               &irc_conn_ops, c);
        if (c->conn) {
            c->connect_timer =
                ev_timer_add(c->loop, IRC_CONNECT_TIMEOUT_MS, connect_timer_fired, c);
            return;
        }
        why = "cannot create a socket";
    }
    char *msg =
        xasprintf("cannot connect to %s port %u: %s", c->host, c->port, why ? why : "no address");
    finish(c, msg, false);
    free(msg);
}

static void on_resolved(void *ud, const struct sockaddr_storage *addrs, size_t n, const char *error)
{
    struct irc_conn *c = ud;
    c->rq = NULL;
    if (error) {
        char *msg = xasprintf("cannot resolve %s: %s", c->host, error);
        finish(c, msg, false);
        free(msg);
        return;
    }
    c->naddrs = n < RESOLVER_MAX_ADDRS ? n : RESOLVER_MAX_ADDRS;
    free(c->addrs);
    c->addrs = xmalloc(c->naddrs * sizeof *addrs);
    memcpy(c->addrs, addrs, c->naddrs * sizeof *addrs);
    try_next(c, NULL);
}

/* A copy of s usable as a middle parameter (RFC 2812 §2.3.1: no space, CR or LF); NULL stays
 * NULL. */
static char *copy_word(const char *s)
{
    if (!s)
        return NULL;
    char *w = xstrdup(s);
    for (char *p = w; *p; p++)
        if (*p == ' ' || *p == '\r' || *p == '\n')
            *p = '_';
    return w;
}

/* A copy of s usable as a trailing parameter (no CR or LF). */
static char *copy_text(const char *s)
{
    if (!s)
        return NULL;
    char *w = xstrdup(s);
    for (char *p = w; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    return w;
}

struct irc_conn *irc_connect(struct ev_loop *loop, const struct irc_conn_opts *opts,
                             const struct irc_conn_cb *cb, void *ud)
{
    struct irc_conn *c = xcalloc(1, sizeof *c);
    c->loop = loop;
    c->cb = *cb;
    c->ud = ud;
    c->host = xstrdup(opts->host ? opts->host : "");
    c->tls_name = xstrdup(opts->tls_name ? opts->tls_name : c->host);
    c->tag = opts->tag ? xstrdup(opts->tag) : xasprintf("irc %s", c->host);
    c->tls = opts->tls;
    c->tls_verify = opts->tls && opts->tls_verify;
    c->port = opts->port ? opts->port : opts->tls ? 6697 : 6667;
    c->nick_opt = copy_word(opts->nick ? opts->nick : "");
    c->username = copy_word(opts->username ? opts->username : c->nick_opt);
    c->realname = copy_text(opts->realname && *opts->realname ? opts->realname : c->nick_opt);
    c->password = copy_text(opts->password);
    c->sasl_user = copy_text(opts->sasl_username);
    c->sasl_pass = xstrdup(opts->sasl_password);
    c->client_cert = xstrdup(opts->client_cert);
    c->nickserv_pass = copy_text(opts->nickserv_password);
    if (opts->sasl_mechanism && (strcasecmp(opts->sasl_mechanism, "PLAIN") == 0 ||
                                 strcasecmp(opts->sasl_mechanism, "EXTERNAL") == 0)) {
        c->sasl_mech = xstrdup(opts->sasl_mechanism);
        for (char *p = c->sasl_mech; *p; p++)
            if (*p >= 'a' && *p <= 'z')
                *p = (char)(*p - 'a' + 'A');
    } else if (opts->sasl_mechanism && *opts->sasl_mechanism) {
        log_warn(c->tag, "SASL mechanism %s not supported; not using SASL", opts->sasl_mechanism);
    }
    /* EXTERNAL authenticates with what the TLS layer presented (IRCv3 sasl-3.1, RFC 4422
     * Appendix A): without TLS and a client certificate it can only fail, or worse, succeed on
     * some other credential of the connection. */
    bool external_unusable = c->sasl_mech && strcmp(c->sasl_mech, "EXTERNAL") == 0 &&
                             (!c->tls || !c->client_cert || !*c->client_cert);
    c->burst = opts->flood_burst ? opts->flood_burst : 5;
    c->interval_ms = opts->flood_interval_ms ? opts->flood_interval_ms : 2000;
    c->keepalive_ms = (opts->keepalive_s ? opts->keepalive_s : 120) * 1000u;
    c->tokens = c->burst;
    c->nick = xstrdup(c->nick_opt);
    c->casemap = IRC_CM_RFC1459;
    snprintf(c->chantypes, sizeof c->chantypes, "#&");
    snprintf(c->prefix_modes, sizeof c->prefix_modes, "ov");
    snprintf(c->prefix_symbols, sizeof c->prefix_symbols, "@+");
    buf_init(&c->queue);
    irc_line_reader_init(&c->reader);
    if (!*c->host || !*c->nick_opt) {
        finish(c, !*c->host ? "no server host" : "no nick", false);
        return c;
    }
    if (external_unusable) {
        finish(c, "SASL EXTERNAL needs TLS and a client certificate", false);
        return c;
    }
    c->rq = resolver_addresses(c->host, c->port, on_resolved, c);
    return c;
}
