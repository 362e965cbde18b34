/*
 * xmppload — a c2s load generator for benchmarking XMPP servers.
 *
 * One epoll loop, non-blocking sockets, one shared client SSL_CTX, its own minimal XMPP client:
 * stream open, STARTTLS (RFC 6120 §5), SASL SCRAM-SHA-1 / SCRAM-SHA-256 without channel binding
 * (RFC 5802, RFC 7677), resource binding (RFC 6120 §7) and initial presence.
 *
 * Modes (see usage()):
 *   idle   open N sessions at a bounded rate and keep them; with --pid, sample the server's VmRSS
 *          at each step of --steps and fit KB per session by least squares.
 *   login  repeated full logins (connect, STARTTLS, SCRAM, bind, presence, close) with K
 *          concurrent attempts for T seconds.
 *   msg    pairs of sessions sending one-to-one chat messages to each other's full JID: either
 *          as fast as a window of W in-flight messages per direction allows (throughput), or at a
 *          fixed total rate R with latency percentiles measured from the scheduled send time.
 *
 * Results are printed as `RESULT key=value ...` lines on stdout; diagnostics go to stderr.
 * This is a measuring tool: it never asserts on timings.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <expat.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define TEXT_MAX 8192
#define OUT_MAX (4u << 20)
#define LOGIN_TIMEOUT_US (30 * 1000000LL)

enum mode { MODE_IDLE, MODE_LOGIN, MODE_MSG };

enum state {
    S_CONNECTING,
    S_FEAT1,     /* waiting for features offering <starttls/> */
    S_PROCEED,   /* waiting for <proceed/> */
    S_TLS,       /* TLS handshake in progress */
    S_FEAT2,     /* waiting for features with SASL mechanisms */
    S_CHALLENGE, /* waiting for the server-first-message */
    S_SUCCESS,   /* waiting for <success/> with the server signature */
    S_FEAT3,     /* waiting for features with <bind/> */
    S_BIND,      /* waiting for the bind result */
    S_ONLINE,
    S_CLOSING, /* sent </stream:stream>, waiting for the server's */
    S_DEAD
};

enum fail_kind { F_CONNECT, F_TLS, F_SASL, F_STREAM_ERROR, F_EOF, F_PROTO, F_TIMEOUT, F_COUNT };
static const char *const fail_names[F_COUNT] = {"connect", "tls",   "sasl",   "stream_error",
                                                "eof",     "proto", "timeout"};

enum feat_flag { FEAT_STARTTLS = 1, FEAT_SHA1 = 2, FEAT_SHA256 = 4, FEAT_BIND = 8 };

struct conn {
    int fd;
    int slot;
    int user;
    enum state state;
    SSL *ssl;
    XML_Parser xp;
    bool reset_parser;
    int depth;
    char top[32];
    char top_type[16];
    char top_id[16];
    char *text;
    size_t text_len;
    unsigned feat;
    char *out;
    size_t out_len, out_off, out_cap, retry_len;
    bool dirty;
    bool ssl_wants_write;
    uint32_t ev_cur;
    char cnonce[32];
    char *cfb; /* client-first-message-bare */
    unsigned char server_sig[32];
    unsigned server_sig_len;
    char jid[128];
    char errcond[48];
    int64_t t_start, t_phase[4]; /* connect, tls, sasl, bind completion times */
    int peer;                    /* msg mode: slot of the partner session */
    int inflight;
    uint64_t body_ts;
    struct conn *next_dirty, *next_dead;
};

struct samples {
    uint32_t *v;
    size_t n, cap;
};

struct scram_cache_entry {
    char *salt_b64;
    int iter;
    unsigned char sp[32];
};

static struct {
    enum mode mode;
    const char *host, *server_addr, *user_prefix, *password, *mech;
    int port, nsrc, nusers, first_user, concurrency, window;
    double rate, msg_rate, duration, settle;
    int steps[32], nsteps;
    int server_pid;
    bool scram_cache, verbose;
} opt = {
    .host = "localhost",
    .server_addr = "127.0.0.1",
    .user_prefix = "user",
    .password = "pw",
    .mech = "SCRAM-SHA-1",
    .port = 5222,
    .nsrc = 8,
    .nusers = 1000,
    .first_user = 1,
    .concurrency = 50,
    .window = 16,
    .rate = 0,
    .duration = 10,
    .settle = 3,
};

static int epfd;
static SSL_CTX *ssl_ctx;
static struct conn **slots;
static int nslots;
static int nactive, npending, nclosing;
static uint64_t conn_serial;
static struct conn *dirty_head, *dead_head;
static struct scram_cache_entry *scache;
static int64_t t_begin;
static volatile sig_atomic_t interrupted;

static uint64_t fails[F_COUNT];
static uint64_t logins_ok;
static struct samples lat_login, lat_phase[4], lat_close, lat_msg;

/* msg mode counters */
static bool msg_running;
static uint64_t msg_sent, msg_recv, msg_recv_window, msg_errors;
static int64_t msg_t0, msg_t1;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("xmppload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void samples_add(struct samples *s, int64_t us)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof(*s->v));
        if (!s->v)
            die("out of memory");
    }
    s->v[s->n++] = us < 0 ? 0 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentile q (0..1) in milliseconds; sorts s in place. */
static double samples_pct(struct samples *s, double q)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof(*s->v), cmp_u32);
    size_t i = (size_t)(q * (double)(s->n - 1) + 0.5);
    return s->v[i] / 1000.0;
}

/* ---- /proc sampling of the server process ---- */

static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* utime+stime of pid in microseconds, or -1. */
static int64_t proc_cpu_us(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (int64_t)(ut + st) * 1000000 / sysconf(_SC_CLK_TCK);
}

/* Busy time of all CPUs together (user, system, irq, softirq, steal) in microseconds. */
static int64_t system_busy_us(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    return (int64_t)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * 1000000 / sysconf(_SC_CLK_TCK);
}

/*
 * CPU used by everything except the server and us during a measurement, in percent of one
 * core: a machine shared with other work makes the numbers of that measurement doubtful.
 */
static double other_cpu_pct(int64_t sys0, int64_t sys1, int64_t srv, int64_t me, double secs)
{
    if (sys0 < 0 || sys1 < 0)
        return -1;
    double other = (double)(sys1 - sys0 - (srv > 0 ? srv : 0) - me);
    return other < 0 ? 0 : other / 1e4 / secs;
}

static int64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

/* ---- base64 and SCRAM (RFC 5802 §3, §5) ---- */

static char *b64_encode(const unsigned char *in, size_t n)
{
    char *out = xalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return out;
}

/* Decodes base64 text; returns the byte count or -1. out must hold 3*len/4+3 bytes. */
static int b64_decode(const char *in, unsigned char *out)
{
    size_t len = strlen(in);
    if (len % 4)
        return -1;
    int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
    if (n < 0)
        return -1;
    while (len && in[len - 1] == '=') {
        len--;
        n--;
    }
    return n;
}

static const EVP_MD *scram_md(void)
{
    return strcmp(opt.mech, "SCRAM-SHA-256") == 0 ? EVP_sha256() : EVP_sha1();
}

/* Looks up attribute `key` (one letter) in a SCRAM message; copies its value into out. */
static bool scram_attr(const char *msg, char key, char *out, size_t outsz)
{
    for (const char *p = msg; *p;) {
        if (p[0] == key && p[1] == '=') {
            size_t n = strcspn(p + 2, ",");
            if (n >= outsz)
                return false;
            memcpy(out, p + 2, n);
            out[n] = 0;
            return true;
        }
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    return false;
}

static void make_nonce(char *out, size_t n)
{
    static const char an[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[64];
    RAND_bytes(r, (int)n);
    for (size_t i = 0; i < n; i++)
        out[i] = an[r[i] % (sizeof(an) - 1)];
    out[n] = 0;
}

/*
 * Computes the client-final-message for server-first `sf` (decoded); stores the expected
 * ServerSignature in c. Returns a malloc'd base64 string or NULL on a malformed challenge.
 */
static char *scram_client_final(struct conn *c, const char *sf)
{
    const EVP_MD *md = scram_md();
    unsigned hl = (unsigned)EVP_MD_size(md);
    char nonce[256], salt_b64[256], iter_s[16];
    unsigned char salt[256], sp[32], ck[32], sk[32], stored[32], csig[32], proof[32];
    if (!scram_attr(sf, 'r', nonce, sizeof(nonce)) ||
        !scram_attr(sf, 's', salt_b64, sizeof(salt_b64)) ||
        !scram_attr(sf, 'i', iter_s, sizeof(iter_s)))
        return NULL;
    if (strncmp(nonce, c->cnonce, strlen(c->cnonce)) != 0)
        return NULL;
    int iter = atoi(iter_s);
    int saltlen = b64_decode(salt_b64, salt);
    if (iter < 1 || saltlen < 0 || (size_t)saltlen > sizeof(salt) - 3)
        return NULL;

    struct scram_cache_entry *ce = scache ? &scache[c->user - opt.first_user] : NULL;
    if (ce && ce->salt_b64 && ce->iter == iter && strcmp(ce->salt_b64, salt_b64) == 0) {
        memcpy(sp, ce->sp, hl);
    } else {
        PKCS5_PBKDF2_HMAC(opt.password, (int)strlen(opt.password), salt, saltlen, iter, md, (int)hl,
                          sp);
        if (ce) {
            free(ce->salt_b64);
            ce->salt_b64 = strdup(salt_b64);
            ce->iter = iter;
            memcpy(ce->sp, sp, hl);
        }
    }
    char cfwp[300];
    snprintf(cfwp, sizeof(cfwp), "c=biws,r=%s", nonce);
    size_t am_len = strlen(c->cfb) + strlen(sf) + strlen(cfwp) + 3;
    char *am = xalloc(am_len);
    snprintf(am, am_len, "%s,%s,%s", c->cfb, sf, cfwp);

    unsigned len;
    HMAC(md, sp, (int)hl, (const unsigned char *)"Client Key", 10, ck, &len);
    EVP_Digest(ck, hl, stored, &len, md, NULL);
    HMAC(md, stored, (int)hl, (unsigned char *)am, strlen(am), csig, &len);
    for (unsigned i = 0; i < hl; i++)
        proof[i] = ck[i] ^ csig[i];
    HMAC(md, sp, (int)hl, (const unsigned char *)"Server Key", 10, sk, &len);
    HMAC(md, sk, (int)hl, (unsigned char *)am, strlen(am), c->server_sig, &c->server_sig_len);
    free(am);

    char *proof_b64 = b64_encode(proof, hl);
    char cf[512];
    snprintf(cf, sizeof(cf), "%s,p=%s", cfwp, proof_b64);
    free(proof_b64);
    return b64_encode((unsigned char *)cf, strlen(cf));
}

/* ---- connections ---- */

static void conn_fail(struct conn *c, enum fail_kind kind, const char *detail);
static void conn_flush(struct conn *c);

static void conn_watch(struct conn *c)
{
    uint32_t want = EPOLLIN;
    if (c->state == S_CONNECTING || c->ssl_wants_write || c->out_off < c->out_len)
        want |= EPOLLOUT;
    if (want != c->ev_cur) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->ev_cur = want;
    }
}

/* Queues bytes for c; they are written when the loop flushes dirty connections. */
static void conn_send(struct conn *c, const char *data, size_t n)
{
    if (c->state == S_DEAD)
        return;
    if (c->out_len + n > OUT_MAX) {
        conn_fail(c, F_PROTO, "output buffer overflow (server not reading)");
        return;
    }
    if (c->out_off && c->out_off == c->out_len && !c->retry_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 512;
        while (cap < c->out_len + n)
            cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out)
            die("out of memory");
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = dirty_head;
        dirty_head = c;
    }
}

static void conn_sendf(struct conn *c, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof(buf))
        conn_send(c, buf, (size_t)n);
}

static void stream_open(struct conn *c)
{
    conn_sendf(c,
               "<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
               "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
               opt.host);
}

static void conn_free(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    SSL_free(c->ssl);
    if (c->xp)
        XML_ParserFree(c->xp);
    free(c->text);
    free(c->out);
    free(c->cfb);
    free(c);
}

static void conn_fail(struct conn *c, enum fail_kind kind, const char *detail)
{
    if (c->state == S_DEAD)
        return;
    bool counted = c->state != S_CLOSING;
    if (counted) {
        fails[kind]++;
        if (opt.verbose || fails[kind] <= 3)
            fprintf(stderr, "xmppload: %s%s failure (state %d): %s\n", opt.user_prefix,
                    c->jid[0] ? c->jid : "", c->state, detail ? detail : "");
    }
    if (c->state < S_ONLINE)
        npending--;
    else if (c->state == S_ONLINE)
        nactive--;
    else if (c->state == S_CLOSING)
        nclosing--;
    c->state = S_DEAD;
    if (c->xp)
        XML_StopParser(c->xp, XML_FALSE);
    slots[c->slot] = NULL;
    c->next_dead = dead_head;
    dead_head = c;
}

/* Normal end of a session: the server closed its stream or the socket after ours. */
static void conn_finish(struct conn *c)
{
    if (opt.mode == MODE_LOGIN && c->t_phase[3])
        samples_add(&lat_close, now_us() - c->t_phase[3]);
    conn_fail(c, F_EOF, NULL);
}

static const char *local_name(const char *name)
{
    const char *p = strchr(name, ':');
    return p ? p + 1 : name;
}

static void XMLCALL xml_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
    struct conn *c = ud;
    c->depth++;
    c->text_len = 0;
    const char *ln = local_name(name);
    if (c->depth == 2) {
        snprintf(c->top, sizeof(c->top), "%s", ln);
        c->top_type[0] = c->top_id[0] = 0;
        for (int i = 0; attrs[i]; i += 2) {
            if (strcmp(attrs[i], "type") == 0)
                snprintf(c->top_type, sizeof(c->top_type), "%s", attrs[i + 1]);
            else if (strcmp(attrs[i], "id") == 0)
                snprintf(c->top_id, sizeof(c->top_id), "%s", attrs[i + 1]);
        }
        if (strcmp(ln, "features") == 0)
            c->feat = 0;
    } else if (c->depth == 3 && strcmp(c->top, "features") == 0) {
        if (strcmp(ln, "starttls") == 0)
            c->feat |= FEAT_STARTTLS;
        else if (strcmp(ln, "bind") == 0)
            c->feat |= FEAT_BIND;
    } else if (c->depth == 3 && strcmp(c->top, "error") == 0 && !c->errcond[0]) {
        snprintf(c->errcond, sizeof(c->errcond), "stream error <%s/>", ln);
    }
}

static void XMLCALL xml_text(void *ud, const XML_Char *s, int len)
{
    struct conn *c = ud;
    if (c->depth < 2 || len <= 0)
        return;
    if (!c->text)
        c->text = xalloc(TEXT_MAX + 1);
    size_t n = (size_t)len;
    if (c->text_len + n > TEXT_MAX)
        n = TEXT_MAX - c->text_len;
    memcpy(c->text + c->text_len, s, n);
    c->text_len += n;
    c->text[c->text_len] = 0;
}

static void send_message(struct conn *from, int64_t ts);

static void on_message(struct conn *c)
{
    if (strcmp(c->top_type, "error") == 0) {
        msg_errors++;
        return;
    }
    if (!c->body_ts)
        return;
    int64_t t = now_us();
    msg_recv++;
    if (msg_running && t <= msg_t1) {
        msg_recv_window++;
        samples_add(&lat_msg, t - (int64_t)c->body_ts);
    }
    c->body_ts = 0;
    struct conn *sender = c->peer >= 0 ? slots[c->peer] : NULL;
    if (sender && sender->inflight > 0)
        sender->inflight--;
    if (sender && opt.msg_rate <= 0 && msg_running && t < msg_t1 && sender->state == S_ONLINE)
        send_message(sender, t);
}

static void start_tls(struct conn *c);

static void on_stanza(struct conn *c)
{
    const char *t = c->top;
    if (strcmp(t, "error") == 0) {
        conn_fail(c, F_STREAM_ERROR, c->errcond);
        return;
    }
    switch (c->state) {
    case S_FEAT1:
        if (strcmp(t, "features") != 0)
            return;
        if (!(c->feat & FEAT_STARTTLS)) {
            conn_fail(c, F_PROTO, "no <starttls/> offered");
            return;
        }
        conn_sendf(c, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        c->state = S_PROCEED;
        return;
    case S_PROCEED:
        if (strcmp(t, "proceed") != 0) {
            conn_fail(c, F_TLS, t);
            return;
        }
        c->reset_parser = true;
        XML_StopParser(c->xp, XML_FALSE);
        start_tls(c);
        return;
    case S_FEAT2: {
        if (strcmp(t, "features") != 0)
            return;
        unsigned need = strcmp(opt.mech, "SCRAM-SHA-256") == 0 ? FEAT_SHA256 : FEAT_SHA1;
        if (!(c->feat & need)) {
            conn_fail(c, F_SASL, "mechanism not offered");
            return;
        }
        make_nonce(c->cnonce, 24);
        size_t n = strlen(opt.user_prefix) + 48;
        c->cfb = xalloc(n);
        snprintf(c->cfb, n, "n=%s%d,r=%s", opt.user_prefix, c->user, c->cnonce);
        char cf[160];
        snprintf(cf, sizeof(cf), "n,,%s", c->cfb);
        char *b = b64_encode((unsigned char *)cf, strlen(cf));
        conn_sendf(c, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='%s'>%s</auth>",
                   opt.mech, b);
        free(b);
        c->state = S_CHALLENGE;
        return;
    }
    case S_CHALLENGE: {
        if (strcmp(t, "challenge") != 0) {
            conn_fail(c, F_SASL, t);
            return;
        }
        unsigned char sf[TEXT_MAX];
        int n = c->text_len ? b64_decode(c->text, sf) : -1;
        if (n <= 0 || n >= (int)sizeof(sf)) {
            conn_fail(c, F_SASL, "bad challenge");
            return;
        }
        sf[n] = 0;
        char *resp = scram_client_final(c, (char *)sf);
        if (!resp) {
            conn_fail(c, F_SASL, "bad server-first-message");
            return;
        }
        conn_sendf(c, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>", resp);
        free(resp);
        c->state = S_SUCCESS;
        return;
    }
    case S_SUCCESS: {
        if (strcmp(t, "success") != 0) {
            conn_fail(c, F_SASL, t);
            return;
        }
        unsigned char sfin[512], sig[64];
        char v[128];
        int n = c->text_len ? b64_decode(c->text, sfin) : -1;
        if (n <= 0 || n >= (int)sizeof(sfin) - 1) {
            conn_fail(c, F_SASL, "no server-final-message");
            return;
        }
        sfin[n] = 0;
        if (!scram_attr((char *)sfin, 'v', v, sizeof(v)) ||
            b64_decode(v, sig) != (int)c->server_sig_len ||
            memcmp(sig, c->server_sig, c->server_sig_len) != 0) {
            conn_fail(c, F_SASL, "server signature mismatch");
            return;
        }
        c->t_phase[2] = now_us();
        c->reset_parser = true;
        XML_StopParser(c->xp, XML_FALSE);
        stream_open(c);
        c->state = S_FEAT3;
        return;
    }
    case S_FEAT3:
        if (strcmp(t, "features") != 0)
            return;
        if (!(c->feat & FEAT_BIND)) {
            conn_fail(c, F_PROTO, "no <bind/> offered");
            return;
        }
        conn_sendf(c,
                   "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   "<resource>r%llu</resource></bind></iq>",
                   (unsigned long long)++conn_serial);
        c->state = S_BIND;
        return;
    case S_BIND:
        if (strcmp(t, "iq") != 0 || strcmp(c->top_id, "bind1") != 0)
            return;
        if (strcmp(c->top_type, "result") != 0 || !c->jid[0]) {
            conn_fail(c, F_PROTO, "bind failed");
            return;
        }
        c->t_phase[3] = now_us();
        conn_sendf(c, "<presence/>");
        samples_add(&lat_login, c->t_phase[3] - c->t_start);
        for (int i = 0; i < 4; i++)
            samples_add(&lat_phase[i], c->t_phase[i] - (i ? c->t_phase[i - 1] : c->t_start));
        logins_ok++;
        npending--;
        if (opt.mode == MODE_LOGIN) {
            conn_sendf(c, "</stream:stream>");
            c->state = S_CLOSING;
            nclosing++;
        } else {
            c->state = S_ONLINE;
            nactive++;
        }
        return;
    case S_ONLINE:
        if (strcmp(t, "message") == 0)
            on_message(c);
        return;
    default:
        return;
    }
}

static void XMLCALL xml_end(void *ud, const XML_Char *name)
{
    struct conn *c = ud;
    const char *ln = local_name(name);
    if (strcmp(ln, "mechanism") == 0 && c->text_len) {
        if (strcmp(c->text, "SCRAM-SHA-1") == 0)
            c->feat |= FEAT_SHA1;
        else if (strcmp(c->text, "SCRAM-SHA-256") == 0)
            c->feat |= FEAT_SHA256;
    } else if (strcmp(ln, "jid") == 0 && c->state == S_BIND && c->text_len) {
        snprintf(c->jid, sizeof(c->jid), "%s", c->text);
    } else if (strcmp(ln, "body") == 0 && c->depth == 3 && c->text_len) {
        c->body_ts = strtoull(c->text, NULL, 10);
    }
    if (c->depth == 2)
        on_stanza(c);
    c->depth--;
    c->text_len = 0;
    if (c->depth == 0 && c->state != S_DEAD) {
        if (c->state == S_CLOSING)
            conn_finish(c);
        else
            conn_fail(c, F_EOF, "server closed the stream");
    }
}

static void parser_setup(struct conn *c)
{
    if (c->xp)
        XML_ParserReset(c->xp, NULL);
    else
        c->xp = XML_ParserCreate(NULL);
    XML_SetUserData(c->xp, c);
    XML_SetElementHandler(c->xp, xml_start, xml_end);
    XML_SetCharacterDataHandler(c->xp, xml_text);
    c->depth = 0;
    c->text_len = 0;
    c->reset_parser = false;
}

static void feed(struct conn *c, const char *buf, size_t n)
{
    if (XML_Parse(c->xp, buf, (int)n, 0) == XML_STATUS_ERROR && c->state != S_DEAD &&
        !c->reset_parser) {
        char msg[160];
        snprintf(msg, sizeof(msg), "XML error: %s", XML_ErrorString(XML_GetErrorCode(c->xp)));
        conn_fail(c, F_PROTO, msg);
    }
    if (c->reset_parser && c->state != S_DEAD)
        parser_setup(c);
}

static void tls_error(struct conn *c, const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    snprintf(buf, sizeof(buf), "%s: %s", what, e ? ERR_error_string(e, NULL) : strerror(errno));
    ERR_clear_error();
    conn_fail(c, F_TLS, buf);
}

static void tls_handshake(struct conn *c)
{
    int r = SSL_connect(c->ssl);
    c->ssl_wants_write = false;
    if (r == 1) {
        c->t_phase[1] = now_us();
        stream_open(c);
        c->state = S_FEAT2;
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE)
        c->ssl_wants_write = true;
    else if (e != SSL_ERROR_WANT_READ)
        tls_error(c, "handshake");
}

static void start_tls(struct conn *c)
{
    c->ssl = SSL_new(ssl_ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, opt.host);
    c->state = S_TLS;
    c->out_off = c->out_len = 0;
    tls_handshake(c);
}

static void conn_read(struct conn *c)
{
    char buf[16384];
    for (int rounds = 0; rounds < 16 && c->state != S_DEAD && c->state != S_TLS; rounds++) {
        ssize_t n;
        if (c->ssl) {
            int r = SSL_read(c->ssl, buf, sizeof(buf));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->ssl_wants_write = true;
                    return;
                }
                if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !ERR_peek_error())) {
                    ERR_clear_error();
                    if (c->state == S_CLOSING)
                        conn_finish(c);
                    else
                        conn_fail(c, F_EOF, "connection closed by server");
                    return;
                }
                tls_error(c, "read");
                return;
            }
            n = r;
        } else {
            n = read(c->fd, buf, sizeof(buf));
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            if (n <= 0) {
                conn_fail(c, F_EOF, n ? strerror(errno) : "connection closed by server");
                return;
            }
        }
        feed(c, buf, (size_t)n);
    }
}

static void conn_flush(struct conn *c)
{
    while (c->state != S_DEAD && c->state != S_CONNECTING && c->state != S_TLS &&
           c->out_off < c->out_len) {
        size_t len = c->retry_len ? c->retry_len : c->out_len - c->out_off;
        if (c->ssl) {
            int r =
                SSL_write(c->ssl, c->out + c->out_off, (int)(len > (1u << 20) ? (1u << 20) : len));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                c->retry_len = len > (1u << 20) ? (1u << 20) : len;
                if (e == SSL_ERROR_WANT_WRITE)
                    c->ssl_wants_write = true;
                else if (e != SSL_ERROR_WANT_READ)
                    tls_error(c, "write");
                return;
            }
            c->ssl_wants_write = false;
            c->retry_len = 0;
            c->out_off += (size_t)r;
        } else {
            ssize_t r = write(c->fd, c->out + c->out_off, len);
            if (r < 0) {
                if (errno != EAGAIN && errno != EINTR)
                    conn_fail(c, F_EOF, strerror(errno));
                return;
            }
            c->out_off += (size_t)r;
        }
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            conn_fail(c, F_CONNECT, strerror(err));
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        c->t_phase[0] = now_us();
        c->state = S_FEAT1;
        stream_open(c);
    } else if (c->state == S_TLS) {
        tls_handshake(c);
    } else {
        if (ev & (EPOLLOUT))
            conn_flush(c);
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
            conn_read(c);
        if (c->state == S_TLS)
            tls_handshake(c);
    }
    if (c->state != S_DEAD && !c->dirty)
        conn_watch(c);
}

static struct conn *conn_start(int user)
{
    static int hint;
    int slot = -1;
    for (int i = 0; i < nslots; i++) {
        int s = (hint + i) % nslots;
        if (!slots[s]) {
            slot = s;
            hint = s + 1;
            break;
        }
    }
    if (slot < 0)
        die("no free connection slot");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.nsrc > 0) {
        static unsigned rr;
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + rr++ % (unsigned)opt.nsrc);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0)
            die("bind source address: %s", strerror(errno));
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    inet_pton(AF_INET, opt.server_addr, &dst.sin_addr);
    struct conn *c = xalloc(sizeof(*c));
    c->fd = fd;
    c->slot = slot;
    c->user = user;
    c->peer = -1;
    c->state = S_CONNECTING;
    c->t_start = now_us();
    slots[slot] = c;
    npending++;
    parser_setup(c);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    c->ev_cur = ev.events;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS)
        conn_fail(c, F_CONNECT, strerror(errno));
    return c;
}

static void send_message(struct conn *from, int64_t ts)
{
    struct conn *to = slots[from->peer];
    if (!to || from->state != S_ONLINE)
        return;
    /* ~100 bytes of body, like the tsung scenarios in performance-anchors.md §5.4 */
    conn_sendf(from,
               "<message to='%s' type='chat'><body>%lld %llu "
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "</body></message>",
               to->jid, (long long)ts, (unsigned long long)msg_sent);
    from->inflight++;
    msg_sent++;
}

/* ---- the loop ---- */

static void loop_once(int timeout_ms)
{
    while (dirty_head) {
        struct conn *c = dirty_head;
        dirty_head = c->next_dirty;
        c->dirty = false;
        if (c->state == S_DEAD)
            continue;
        conn_flush(c);
        if (c->state != S_DEAD)
            conn_watch(c);
    }
    while (dead_head) {
        struct conn *c = dead_head;
        dead_head = c->next_dead;
        conn_free(c);
    }
    struct epoll_event evs[256];
    int n = epoll_wait(epfd, evs, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state != S_DEAD)
            conn_event(c, evs[i].events);
    }
}

static void check_timeouts(int64_t now)
{
    for (int i = 0; i < nslots; i++) {
        struct conn *c = slots[i];
        if (c && c->state != S_ONLINE && now - c->t_start > LOGIN_TIMEOUT_US)
            conn_fail(c, c->state == S_CLOSING ? F_EOF : F_TIMEOUT, "no progress for 30 s");
    }
}

/*
 * Opens sessions for users [from, to) with at most opt.concurrency logins in flight and at
 * most opt.rate new connections per second (0 = unbounded). Returns once all have finished.
 */
static void open_sessions(int from, int to)
{
    int64_t t0 = now_us(), last_check = t0;
    int next = from;
    while (!interrupted && (next < to || npending > 0)) {
        int64_t now = now_us();
        while (next < to && npending + nclosing < opt.concurrency &&
               (opt.rate <= 0 || (double)(next - from) < (double)(now - t0) * opt.rate / 1e6))
            conn_start(next++);
        if (now - last_check > 1000000) {
            check_timeouts(now);
            last_check = now;
        }
        loop_once(next < to ? 1 : 20);
    }
}

static void close_all(void)
{
    for (int i = 0; i < nslots; i++) {
        struct conn *c = slots[i];
        if (c && c->state == S_ONLINE) {
            conn_sendf(c, "</stream:stream>");
            nactive--;
            c->state = S_CLOSING;
            nclosing++;
            c->t_start = now_us() - LOGIN_TIMEOUT_US + 5000000;
        }
    }
    /* Logins still in flight finish (or hit LOGIN_TIMEOUT_US); they are not in the rate. */
    int64_t end = now_us() + LOGIN_TIMEOUT_US + 2000000, last_check = 0;
    for (;;) {
        bool any = false;
        for (int i = 0; i < nslots && !any; i++)
            any = slots[i] != NULL;
        if (!any || now_us() > end)
            break;
        if (now_us() - last_check > 500000) {
            check_timeouts(now_us());
            last_check = now_us();
        }
        loop_once(20);
    }
    loop_once(0);
}

static void print_failures(void)
{
    uint64_t total = 0;
    for (int i = 0; i < F_COUNT; i++)
        total += fails[i];
    printf("RESULT failures=%llu", (unsigned long long)total);
    for (int i = 0; i < F_COUNT; i++)
        if (fails[i])
            printf(" fail_%s=%llu", fail_names[i], (unsigned long long)fails[i]);
    printf("\n");
}

static void print_login_latency(const char *prefix)
{
    static const char *const ph[4] = {"connect", "tls", "sasl", "bind"};
    printf("RESULT %slogin_p50_ms=%.2f %slogin_p99_ms=%.2f %slogin_max_ms=%.2f", prefix,
           samples_pct(&lat_login, 0.5), prefix, samples_pct(&lat_login, 0.99), prefix,
           samples_pct(&lat_login, 1.0));
    for (int i = 0; i < 4; i++)
        printf(" %s%s_p50_ms=%.2f %s%s_p99_ms=%.2f", prefix, ph[i], samples_pct(&lat_phase[i], 0.5),
               prefix, ph[i], samples_pct(&lat_phase[i], 0.99));
    if (lat_close.n)
        printf(" close_p50_ms=%.2f close_p99_ms=%.2f", samples_pct(&lat_close, 0.5),
               samples_pct(&lat_close, 0.99));
    printf("\n");
}

static void reset_login_stats(void)
{
    lat_login.n = lat_close.n = 0;
    for (int i = 0; i < 4; i++)
        lat_phase[i].n = 0;
    logins_ok = 0;
}

static void wait_us(int64_t us)
{
    int64_t end = now_us() + us;
    while (!interrupted && now_us() < end)
        loop_once(20);
}

static void run_idle(void)
{
    if (!opt.nsteps)
        opt.steps[opt.nsteps++] = opt.nusers;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int npts = 0, have = 0;
    int64_t t0 = now_us();
    for (int i = 0; i < opt.nsteps && !interrupted; i++) {
        int target = opt.steps[i];
        if (target > have) {
            int64_t ts = now_us();
            uint64_t ok0 = logins_ok;
            open_sessions(opt.first_user + have, opt.first_user + target);
            have = target;
            double secs = (double)(now_us() - ts) / 1e6;
            printf("RESULT mode=idle step_logins=%llu step_seconds=%.2f step_logins_per_s=%.1f\n",
                   (unsigned long long)(logins_ok - ok0), secs, (double)(logins_ok - ok0) / secs);
        }
        wait_us((int64_t)(opt.settle * 1e6));
        long rss = opt.server_pid ? proc_rss_kb(opt.server_pid) : -1;
        printf("RESULT mode=idle n=%d online=%d server_rss_kb=%ld client_rss_kb=%ld\n", target,
               nactive, rss, proc_rss_kb(getpid()));
        fflush(stdout);
        if (rss > 0) {
            double x = nactive, y = (double)rss;
            sx += x, sy += y, sxx += x * x, sxy += x * y;
            npts++;
        }
    }
    if (npts >= 2 && npts * sxx - sx * sx > 0) {
        double slope = (npts * sxy - sx * sy) / (npts * sxx - sx * sx);
        double icpt = (sy - slope * sx) / npts;
        printf("RESULT mode=idle rss_kb_per_session=%.2f rss_base_mb=%.1f points=%d\n", slope,
               icpt / 1024, npts);
    }
    printf("RESULT mode=idle online=%d seconds=%.1f\n", nactive, (double)(now_us() - t0) / 1e6);
    print_login_latency("");
}

static void run_login(void)
{
    if (opt.scram_cache) {
        /* Warm pass so every user's SaltedPassword is cached (RFC 5802 §5.1 allows it). */
        open_sessions(opt.first_user, opt.first_user + opt.nusers);
        reset_login_stats();
    }
    int64_t cpu0 = opt.server_pid ? proc_cpu_us(opt.server_pid) : -1, me0 = self_cpu_us();
    int64_t sys0 = system_busy_us();
    int64_t t0 = now_us(), t_end = t0 + (int64_t)(opt.duration * 1e6), last_check = t0;
    uint64_t started = 0;
    while (!interrupted) {
        int64_t now = now_us();
        if (now >= t_end)
            break;
        while (npending + nclosing < opt.concurrency &&
               (opt.rate <= 0 || (double)started < (double)(now - t0) * opt.rate / 1e6)) {
            conn_start(opt.first_user + (int)(started % (uint64_t)opt.nusers));
            started++;
        }
        if (now - last_check > 1000000) {
            check_timeouts(now);
            last_check = now;
        }
        loop_once(1);
    }
    double secs = (double)(now_us() - t0) / 1e6;
    int64_t cpu1 = opt.server_pid ? proc_cpu_us(opt.server_pid) : -1, me1 = self_cpu_us();
    int64_t sys1 = system_busy_us();
    uint64_t ok = logins_ok;
    printf("RESULT mode=login mech=%s cached=%d concurrency=%d logins=%llu seconds=%.2f "
           "logins_per_s=%.1f",
           opt.mech, opt.scram_cache, opt.concurrency, (unsigned long long)ok, secs,
           (double)ok / secs);
    if (cpu0 >= 0 && cpu1 >= 0 && ok)
        printf(" server_cpu_ms_per_login=%.3f server_cpu_pct=%.1f",
               (double)(cpu1 - cpu0) / 1000.0 / (double)ok, (double)(cpu1 - cpu0) / 1e4 / secs);
    printf(" client_cpu_pct=%.1f other_cpu_pct=%.1f\n", (double)(me1 - me0) / 1e4 / secs,
           other_cpu_pct(sys0, sys1, cpu1 - cpu0, me1 - me0, secs));
    print_login_latency("");
    close_all();
}

static void run_msg(void)
{
    int n = opt.nusers & ~1;
    if (n < 2)
        die("msg mode needs at least 2 sessions");
    open_sessions(opt.first_user, opt.first_user + n);
    if (nactive < n)
        fprintf(stderr, "xmppload: only %d of %d sessions online\n", nactive, n);
    /* Pair the online sessions: each sends to the other's full JID. */
    int prev = -1, online = 0;
    for (int i = 0; i < nslots; i++) {
        if (!slots[i] || slots[i]->state != S_ONLINE)
            continue;
        if (prev < 0) {
            prev = i;
        } else {
            slots[prev]->peer = i;
            slots[i]->peer = prev;
            prev = -1;
            online += 2;
        }
    }
    wait_us(1000000);
    int64_t cpu0 = opt.server_pid ? proc_cpu_us(opt.server_pid) : -1, me0 = self_cpu_us();
    int64_t sys0 = system_busy_us();
    msg_t0 = now_us();
    msg_t1 = msg_t0 + (int64_t)(opt.duration * 1e6);
    msg_running = true;
    if (opt.msg_rate <= 0) {
        for (int i = 0; i < nslots; i++)
            if (slots[i] && slots[i]->peer >= 0)
                for (int w = 0; w < opt.window; w++)
                    send_message(slots[i], now_us());
        while (!interrupted && now_us() < msg_t1)
            loop_once(5);
    } else {
        int *senders = xalloc(sizeof(*senders) * (size_t)online + 1);
        int ns = 0;
        for (int i = 0; i < nslots; i++)
            if (slots[i] && slots[i]->peer >= 0)
                senders[ns++] = i;
        uint64_t k = 0;
        while (!interrupted) {
            int64_t now = now_us();
            if (now >= msg_t1)
                break;
            while ((double)k < (double)(now - msg_t0) * opt.msg_rate / 1e6) {
                struct conn *s = slots[senders[k % (uint64_t)ns]];
                /* Latency is taken from the scheduled time, so a stall is not hidden. */
                if (s && s->state == S_ONLINE)
                    send_message(s, msg_t0 + (int64_t)((double)k * 1e6 / opt.msg_rate));
                k++;
            }
            loop_once(1);
        }
        free(senders);
    }
    int64_t cpu1 = opt.server_pid ? proc_cpu_us(opt.server_pid) : -1, me1 = self_cpu_us();
    int64_t sys1 = system_busy_us();
    double secs = (double)(now_us() - msg_t0) / 1e6;
    int64_t drain_end = now_us() + 3000000;
    while (!interrupted && msg_recv < msg_sent && now_us() < drain_end)
        loop_once(5);
    printf("RESULT mode=msg kind=%s pairs=%d window=%d rate_offered=%.0f sent=%llu "
           "delivered=%llu msgs_per_s=%.1f lost=%llu errors=%llu p50_ms=%.3f p90_ms=%.3f "
           "p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
           opt.msg_rate > 0 ? "rate" : "throughput", online / 2, opt.msg_rate > 0 ? 0 : opt.window,
           opt.msg_rate, (unsigned long long)msg_sent, (unsigned long long)msg_recv,
           (double)msg_recv_window / secs, (unsigned long long)(msg_sent - msg_recv),
           (unsigned long long)msg_errors, samples_pct(&lat_msg, 0.5), samples_pct(&lat_msg, 0.9),
           samples_pct(&lat_msg, 0.99), samples_pct(&lat_msg, 0.999), samples_pct(&lat_msg, 1.0));
    if (cpu0 >= 0 && cpu1 >= 0 && msg_recv_window)
        printf(" server_cpu_us_per_msg=%.2f server_cpu_pct=%.1f",
               (double)(cpu1 - cpu0) / (double)msg_recv_window, (double)(cpu1 - cpu0) / 1e4 / secs);
    printf(" client_cpu_pct=%.1f other_cpu_pct=%.1f\n", (double)(me1 - me0) / 1e4 / secs,
           other_cpu_pct(sys0, sys1, cpu1 - cpu0, me1 - me0, secs));
    close_all();
}

static void usage(void)
{
    fputs("usage: xmppload MODE [options]\n"
          "modes: idle | login | msg\n"
          "  -H HOST        XMPP domain (localhost)\n"
          "  -a ADDR        server IPv4 address (127.0.0.1)\n"
          "  -p PORT        c2s STARTTLS port (5222)\n"
          "  -S N           spread connections over source addresses 127.0.0.2..(N+1) (8; 0=off)\n"
          "  -u PREFIX      user name prefix (user) -> PREFIX1, PREFIX2, ...\n"
          "  -f FIRST       first user index (1)\n"
          "  -w PASSWORD    password of every account (pw)\n"
          "  -m MECH        SCRAM-SHA-1 (default) or SCRAM-SHA-256\n"
          "  -C             cache SaltedPassword per user (RFC 5802 §5.1)\n"
          "  -n N           sessions (idle, msg: 2 per pair) or user pool (login) (1000)\n"
          "  -c K           concurrent logins in flight (50)\n"
          "  -r RATE        new connections per second, 0 = as fast as -c allows (0)\n"
          "  -t SECONDS     duration of login/msg measurement (10)\n"
          "  -W N           msg: in-flight messages per direction (16)\n"
          "  -R RATE        msg: fixed total rate in msg/s instead of the window\n"
          "  --steps LIST   idle: comma-separated session counts to sample at (default -n)\n"
          "  --settle S     idle: seconds to wait before sampling (3)\n"
          "  --pid PID      server process to sample (VmRSS, CPU time)\n"
          "  -v             log every failure\n",
          stderr);
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {{"steps", required_argument, 0, 1},
                                       {"settle", required_argument, 0, 2},
                                       {"pid", required_argument, 0, 3},
                                       {0, 0, 0, 0}};
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "idle") == 0)
        opt.mode = MODE_IDLE;
    else if (strcmp(argv[1], "login") == 0)
        opt.mode = MODE_LOGIN;
    else if (strcmp(argv[1], "msg") == 0)
        opt.mode = MODE_MSG;
    else
        usage();
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "H:a:p:S:u:f:w:m:Cn:c:r:t:W:R:v", lo, NULL)) != -1) {
        switch (ch) {
        case 'H':
            opt.host = optarg;
            break;
        case 'a':
            opt.server_addr = optarg;
            break;
        case 'p':
            opt.port = atoi(optarg);
            break;
        case 'S':
            opt.nsrc = atoi(optarg);
            break;
        case 'u':
            opt.user_prefix = optarg;
            break;
        case 'f':
            opt.first_user = atoi(optarg);
            break;
        case 'w':
            opt.password = optarg;
            break;
        case 'm':
            opt.mech = optarg;
            break;
        case 'C':
            opt.scram_cache = true;
            break;
        case 'n':
            opt.nusers = atoi(optarg);
            break;
        case 'c':
            opt.concurrency = atoi(optarg);
            break;
        case 'r':
            opt.rate = atof(optarg);
            break;
        case 't':
            opt.duration = atof(optarg);
            break;
        case 'W':
            opt.window = atoi(optarg);
            break;
        case 'R':
            opt.msg_rate = atof(optarg);
            break;
        case 'v':
            opt.verbose = true;
            break;
        case 1:
            for (char *s = strtok(optarg, ","); s && opt.nsteps < 32; s = strtok(NULL, ","))
                opt.steps[opt.nsteps++] = atoi(s);
            break;
        case 2:
            opt.settle = atof(optarg);
            break;
        case 3:
            opt.server_pid = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (strcmp(opt.mech, "SCRAM-SHA-1") != 0 && strcmp(opt.mech, "SCRAM-SHA-256") != 0)
        die("unsupported mechanism %s", opt.mech);
    if (opt.concurrency < 1 || opt.nusers < 1 || opt.port <= 0 || opt.window < 1)
        die("bad numeric option");
    for (int i = 0; i < opt.nsteps; i++)
        if (opt.steps[i] > opt.nusers)
            opt.nusers = opt.steps[i];
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int fd_budget = (int)(rl.rlim_cur > 1000000 ? 1000000 : rl.rlim_cur) - 32;
    int need = opt.mode == MODE_LOGIN ? opt.concurrency * 2 + 64 : opt.nusers + 64;
    if (need > fd_budget)
        die("need %d descriptors, RLIMIT_NOFILE allows %d", need, fd_budget);
    nslots = need;
    slots = xalloc(sizeof(*slots) * (size_t)nslots);
    if (opt.scram_cache)
        scache = xalloc(sizeof(*scache) * (size_t)(opt.nusers + 1));

    ssl_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    t_begin = now_us();

    switch (opt.mode) {
    case MODE_IDLE:
        run_idle();
        close_all();
        break;
    case MODE_LOGIN:
        run_login();
        break;
    case MODE_MSG:
        run_msg();
        break;
    }
    print_failures();
    (void)t_begin;
    return interrupted ? 1 : 0;
}
