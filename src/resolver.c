/* resolver.c — c-ares on the event loop (see resolver.h).
 *
 * Plumbing: c-ares reports the sockets it wants watched through ARES_OPT_SOCK_STATE_CB and we
 * mirror that into ev_io_*; one ev timer follows ares_timeout(). Answers are collected into their
 * query; a finished query goes on a ready list that one deferred callback drains, so user
 * callbacks run neither inside the call that started the query nor inside c-ares.
 *
 * Lifetime: a query is freed once it is settled (delivered or cancelled), off the ready list, and
 * no c-ares callback for it is outstanding. c-ares 1.18 cannot cancel a single lookup, so a
 * cancelled or timed-out query lingers until c-ares gives up on its lookups, which its own
 * timeout × tries bounds. */
#include "isthmus/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <assert.h>
#include <idn2.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

/* c-ares doubles the per-try timeout each round over the servers: with one server, 1.5 s + 3 s
 * stays under RESOLVER_TIMEOUT_MS, which bounds the rest (more servers, slow TCP retries). */
#define TRY_TIMEOUT_MS 1500
#define TRIES 2
#define NAME_MAX_LEN 253        /* RFC 1035 §2.3.4, as text without the final dot */
#define MAX_SRV_CANDIDATES 1024 /* more records than this are ignored, bounding the ordering */

enum query_kind { QUERY_XMPP, QUERY_ADDR };

struct srv_lookup {
    struct resolver_query *q;
    bool direct_tls;
    int status;                   /* ARES_SUCCESS or the c-ares failure, once answered */
    struct ares_srv_reply *reply; /* on success; ares_free_data() */
};

struct resolver_query {
    enum query_kind kind;
    char *name;    /* A-label domain or host, or an IP literal without brackets */
    uint16_t port; /* QUERY_ADDR */
    resolver_xmpp_fn xmpp_fn;
    resolver_addr_fn addr_fn;
    void *ud;

    unsigned outstanding; /* c-ares callbacks still to come */
    bool done;            /* the result is decided (then queued unless cancelled) */
    bool cancelled;       /* never call back: cancelled, or already called back */
    bool queued;          /* on the ready list */
    struct ev_timer *deadline;

    struct srv_lookup srv[2]; /* [0] _xmpps-server (XEP-0368), [1] _xmpp-server */

    /* The result. */
    struct resolver_target *targets;
    size_t ntargets;
    struct sockaddr_storage *addrs;
    size_t naddrs;
    char *error;

    struct resolver_query *prev, *next; /* every live query, for resolver_fini() */
    struct resolver_query *next_ready;
};

static struct {
    struct ev_loop *loop;
    ares_channel channel;
    bool initialised;
    struct ev_timer *timer; /* follows ares_timeout() */
    struct resolver_query *all;
    struct resolver_query *ready_head, *ready_tail;
    bool flush_pending;
    bool flushing;
} g;

/* ------------------------------------------------------------------ c-ares on the loop */

static void arm_timer(void);

static void on_io(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)ud;
    if (!g.initialised)
        return;
    ares_process_fd(g.channel, (events & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (events & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_timer();
}

static void on_timer(struct ev_loop *loop, void *ud)
{
    (void)loop;
    (void)ud;
    g.timer = NULL;
    ares_process_fd(g.channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timer();
}

/* Re-reads c-ares' next deadline after anything that may have changed it. */
static void arm_timer(void)
{
    struct timeval tv;

    ev_timer_cancel(g.loop, g.timer);
    g.timer = NULL;
    if (!ares_timeout(g.channel, NULL, &tv))
        return;
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    g.timer = ev_timer_add(g.loop, ms, on_timer, NULL);
}

static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    (void)data;
    unsigned mask = (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);

    if (!mask) {
        ev_io_del(g.loop, fd);
        return;
    }
    /* c-ares announces a socket once and then changes its interest; ev_io_mod fails only for a
     * socket we do not watch yet. */
    if (ev_io_mod(g.loop, fd, mask) == 0)
        return;
    if (ev_io_add(g.loop, fd, mask, on_io, NULL) < 0)
        log_error(NULL, "resolver: cannot watch DNS socket %d: %m", fd);
}

static int set_nameserver(const struct config_addr *ns, char *err, size_t errlen)
{
    struct ares_addr_port_node node = {0};
    int port = ns->port ? ns->port : 53;
    const char *host = ns->host ? ns->host : "";
    char buf[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(host);

    if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof(buf)) {
        memcpy(buf, host + 1, len - 2);
        buf[len - 2] = '\0';
        host = buf;
    }
    if (inet_pton(AF_INET, host, &node.addr.addr4) == 1) {
        node.family = AF_INET;
    } else if (inet_pton(AF_INET6, host, &node.addr.addr6) == 1) {
        node.family = AF_INET6;
    } else {
        snprintf(err, errlen, "nameserver %s is not an IP address", ns->host ? ns->host : "");
        return -1;
    }
    node.udp_port = port;
    node.tcp_port = port;
    int rc = ares_set_servers_ports(g.channel, &node);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "nameserver %s: %s", ns->host, ares_strerror(rc));
        return -1;
    }
    return 0;
}

int resolver_init(struct ev_loop *loop, const struct config_addr *nameserver, char *err,
                  size_t errlen)
{
    struct ares_options opts;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS;
    char lookups_dns[] = "b";

    if (g.initialised) {
        snprintf(err, errlen, "resolver already initialised");
        return -1;
    }
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        return -1;
    }
    memset(&opts, 0, sizeof opts);
    opts.sock_state_cb = on_sock_state;
    opts.timeout = TRY_TIMEOUT_MS;
    opts.tries = TRIES;
    /* Federation names are fully qualified: resolv.conf's search list must not apply. */
    opts.domains = NULL;
    opts.ndomains = 0;
    if (nameserver) {
        opts.lookups = lookups_dns;
        mask |= ARES_OPT_LOOKUPS;
    }
    g.loop = loop;
    rc = ares_init_options(&g.channel, &opts, mask);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        ares_library_cleanup();
        g.loop = NULL;
        return -1;
    }
    if (nameserver && set_nameserver(nameserver, err, errlen) < 0) {
        ares_destroy(g.channel);
        ares_library_cleanup();
        g.channel = NULL;
        g.loop = NULL;
        return -1;
    }
    g.initialised = true;
    return 0;
}

/* ------------------------------------------------------------------ query lifetime */

static void query_free(struct resolver_query *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        g.all = q->next;
    if (q->next)
        q->next->prev = q->prev;
    for (size_t i = 0; i < ARRAY_LEN(q->srv); i++)
        if (q->srv[i].reply)
            ares_free_data(q->srv[i].reply);
    for (size_t i = 0; i < q->ntargets; i++)
        free(q->targets[i].host);
    free(q->targets);
    free(q->addrs);
    free(q->error);
    free(q->name);
    free(q);
}

static void query_release(struct resolver_query *q)
{
    if (q->cancelled && !q->queued && q->outstanding == 0)
        query_free(q);
}

static struct resolver_query *query_new(enum query_kind kind, void *ud)
{
    struct resolver_query *q = xcalloc(1, sizeof *q);

    q->kind = kind;
    q->ud = ud;
    q->next = g.all;
    if (g.all)
        g.all->prev = q;
    g.all = q;
    return q;
}

static void deliver(struct resolver_query *q)
{
    if (q->kind == QUERY_XMPP)
        q->xmpp_fn(q->ud, q->error ? NULL : q->targets, q->error ? 0 : q->ntargets, q->error);
    else
        q->addr_fn(q->ud, q->error ? NULL : q->addrs, q->error ? 0 : q->naddrs, q->error);
}

static void flush_ready(struct ev_loop *loop, void *ud)
{
    (void)loop;
    (void)ud;
    if (!g.flush_pending)
        return; /* resolver_fini() ran since this was queued */
    g.flush_pending = false;

    /* Detach the list: queries finishing inside a callback wait for the next round. */
    struct resolver_query *q = g.ready_head;
    g.ready_head = g.ready_tail = NULL;
    g.flushing = true;
    while (q) {
        struct resolver_query *next = q->next_ready;
        q->next_ready = NULL;
        if (!q->cancelled) {
            /* Settled before the call: a resolver_cancel() from inside it is a no-op, and the
             * query stays queued (so alive) until the callback returns. */
            q->cancelled = true;
            deliver(q);
        }
        q->queued = false;
        query_release(q);
        q = next;
    }
    g.flushing = false;
}

/* Decides the query's result (already stored in q) and queues the callback. */
static void query_finish(struct resolver_query *q)
{
    assert(!q->done);
    q->done = true;
    ev_timer_cancel(g.loop, q->deadline);
    q->deadline = NULL;
    if (q->cancelled)
        return;
    q->queued = true;
    if (g.ready_tail)
        g.ready_tail->next_ready = q;
    else
        g.ready_head = q;
    g.ready_tail = q;
    if (!g.flush_pending) {
        g.flush_pending = true;
        ev_defer(g.loop, flush_ready, NULL);
    }
}

static void query_fail(struct resolver_query *q, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void query_fail(struct resolver_query *q, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    free(q->error);
    q->error = xmalloc(len > 0 ? (size_t)len + 1 : 1);
    q->error[0] = '\0';
    va_start(ap, fmt);
    if (len > 0)
        vsnprintf(q->error, (size_t)len + 1, fmt, ap);
    va_end(ap);
    log_debug(NULL, "resolver: %s", q->error);
    query_finish(q);
}

static void on_deadline(struct ev_loop *loop, void *ud)
{
    struct resolver_query *q = ud;

    (void)loop;
    q->deadline = NULL;
    if (!q->done)
        query_fail(q, "DNS lookup for %s timed out after %d ms", q->name, RESOLVER_TIMEOUT_MS);
}

/* Starts the whole-query bound once the lookups are under way. */
static void query_started(struct resolver_query *q)
{
    if (!q->done)
        q->deadline = ev_timer_add(g.loop, RESOLVER_TIMEOUT_MS, on_deadline, q);
    arm_timer();
}

void resolver_cancel(struct resolver_query *q)
{
    if (!q || q->cancelled)
        return;
    q->cancelled = true;
    ev_timer_cancel(g.loop, q->deadline);
    q->deadline = NULL;
    query_release(q);
}

void resolver_fini(void)
{
    if (!g.initialised)
        return;
    assert(!g.flushing);
    for (struct resolver_query *q = g.all; q; q = q->next) {
        q->cancelled = true;
        q->queued = false;
        ev_timer_cancel(g.loop, q->deadline);
        q->deadline = NULL;
    }
    g.ready_head = g.ready_tail = NULL;
    g.flush_pending = false;
    /* Calls every outstanding lookup back with ARES_EDESTRUCTION, which releases the queries,
     * and reports each socket closed, which unwatches it. */
    ares_destroy(g.channel);
    while (g.all)
        query_free(g.all);
    ev_timer_cancel(g.loop, g.timer);
    ares_library_cleanup();
    memset(&g, 0, sizeof g);
}

/* ------------------------------------------------------------------ names */

/* Parses an IPv4 or IPv6 literal ("[::1]" or "::1"). On success fills ss (port 0) and, when
 * text is given, the literal without brackets. */
static bool parse_literal(const char *s, struct sockaddr_storage *ss, char **text)
{
    char buf[INET6_ADDRSTRLEN + 1];
    size_t len = strlen(s);

    memset(ss, 0, sizeof *ss);
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        if (len - 2 >= sizeof(buf))
            return false;
        memcpy(buf, s + 1, len - 2);
        buf[len - 2] = '\0';
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
            return false;
        sin6->sin6_family = AF_INET6;
    } else {
        if (len >= sizeof(buf))
            return false;
        memcpy(buf, s, len + 1);
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1)
            sin->sin_family = AF_INET;
        else if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1)
            sin6->sin6_family = AF_INET6;
        else
            return false;
    }
    if (text)
        *text = xstrdup(buf);
    return true;
}

/* A host name as DNS sees it: letters, digits, '-', '_' (service labels), dots between
 * non-empty labels of at most 63 bytes. */
static bool dns_name_ok(const char *s)
{
    size_t label = 0, len = strlen(s);

    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok || ++label > 63)
            return false;
    }
    return true;
}

/* The A-label form of name (RFC 5890), without a final dot, or NULL. */
static char *to_alabel(const char *name)
{
    char *out = NULL, *result = NULL;
    size_t len = strlen(name);

    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > 4 * NAME_MAX_LEN)
        return NULL;
    char *copy = xstrndup(name, len);
    if (idn2_to_ascii_8z(copy, &out, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT) == IDN2_OK &&
        dns_name_ok(out))
        result = xstrdup(out);
    idn2_free(out);
    free(copy);
    return result;
}

/* A name fit for a message: what the caller passed, cut and stripped of control bytes. */
static char *printable(const char *s)
{
    struct buf b;

    buf_init(&b);
    for (size_t i = 0; s[i] && i < 80; i++)
        buf_putc(&b, (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i]);
    if (strlen(s) > 80)
        buf_puts(&b, "...");
    return buf_take(&b);
}

/* ------------------------------------------------------------------ xmpp-server targets */

struct candidate {
    const char *host;
    uint16_t port, priority, weight;
    bool direct_tls;
};

static int by_priority(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    return (int)x->priority - (int)y->priority;
}

static uint32_t random_below(uint64_t n)
{
    uint64_t r;

    random_bytes(&r, sizeof r);
    return (uint32_t)(r % n);
}

static bool is_root_target(const char *host)
{
    return host[0] == '\0' || strcmp(host, ".") == 0;
}

static void add_target(struct resolver_query *q, const struct candidate *c)
{
    struct resolver_target *t = &q->targets[q->ntargets++];
    size_t len = strlen(c->host);

    if (len > 0 && c->host[len - 1] == '.')
        len--;
    t->host = xstrndup(c->host, len);
    t->port = c->port;
    t->direct_tls = c->direct_tls;
}

/* RFC 2782 "Weight": within one priority, zero weights first, then repeatedly pick the first
 * record whose running weight sum reaches a random number. RFC 2782 draws it from [0, total],
 * which gives the first record in the list one extra chance; we draw from [1, total] unless a
 * zero-weight record is present, so each record's chance is exactly weight / total and a zero
 * weight keeps the RFC's "very small chance" (1 / (total + 1)). */
static void order_priority_group(struct resolver_query *q, struct candidate *c, size_t n)
{
    size_t zeros = 0;

    for (size_t i = 0; i < n; i++) {
        if (c[i].weight == 0) {
            struct candidate tmp = c[zeros];
            c[zeros++] = c[i];
            c[i] = tmp;
        }
    }
    while (n > 0 && q->ntargets < RESOLVER_MAX_TARGETS) {
        uint64_t total = 0, running = 0, pick;
        for (size_t i = 0; i < n; i++)
            total += c[i].weight;
        if (zeros > 0)
            pick = random_below(total + 1);
        else
            pick = 1 + random_below(total);
        size_t k = 0;
        while (k < n - 1) {
            running += c[k].weight;
            if (running >= pick)
                break;
            k++;
        }
        add_target(q, &c[k]);
        if (c[k].weight == 0)
            zeros--;
        memmove(&c[k], &c[k + 1], (n - k - 1) * sizeof *c);
        n--;
    }
}

static bool no_records(int status)
{
    return status == ARES_ENOTFOUND || status == ARES_ENODATA;
}

/* RFC 6120 §3.2.1 with XEP-0368 §3: both SRV answers merged into one RFC 2782 ordering. */
static void xmpp_complete(struct resolver_query *q)
{
    struct candidate *cand = xcalloc(MAX_SRV_CANDIDATES, sizeof *cand);
    size_t ncand = 0;
    bool root[2] = {false, false};

    for (size_t i = 0; i < ARRAY_LEN(q->srv); i++) {
        const struct srv_lookup *l = &q->srv[i];
        if (l->status != ARES_SUCCESS)
            continue;
        for (const struct ares_srv_reply *r = l->reply; r; r = r->next) {
            if (is_root_target(r->host)) {
                root[i] = true;
                continue;
            }
            if (r->port == 0 || !dns_name_ok(r->host) || ncand == MAX_SRV_CANDIDATES)
                continue;
            cand[ncand++] =
                (struct candidate){r->host, r->port, r->priority, r->weight, l->direct_tls};
        }
    }

    const struct srv_lookup *plain = &q->srv[1];
    if (ncand > 0) {
        qsort(cand, ncand, sizeof *cand, by_priority);
        q->targets = xcalloc(ncand < RESOLVER_MAX_TARGETS ? ncand : RESOLVER_MAX_TARGETS,
                             sizeof *q->targets);
        for (size_t i = 0; i < ncand && q->ntargets < RESOLVER_MAX_TARGETS;) {
            size_t j = i;
            while (j < ncand && cand[j].priority == cand[i].priority)
                j++;
            order_priority_group(q, cand + i, j - i);
            i = j;
        }
        query_finish(q);
    } else if (root[1]) {
        /* RFC 2782: target "." — the service is decidedly not available; no fallback. */
        query_fail(q, "%s does not accept XMPP server connections (SRV target \".\")", q->name);
    } else if (no_records(plain->status)) {
        /* RFC 6120 §3.2.2: no SRV records, so the domain itself on the default port. */
        q->targets = xcalloc(1, sizeof *q->targets);
        add_target(q, &(struct candidate){q->name, RESOLVER_XMPP_SERVER_PORT, 0, 0, false});
        query_finish(q);
    } else if (plain->status == ARES_SUCCESS) {
        query_fail(q, "no usable SRV records for _xmpp-server._tcp.%s", q->name);
    } else {
        query_fail(q, "DNS lookup of _xmpp-server._tcp.%s failed: %s", q->name,
                   ares_strerror(plain->status));
    }
    free(cand);
}

static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct srv_lookup *l = arg;
    struct resolver_query *q = l->q;

    (void)timeouts;
    if (status == ARES_SUCCESS && !q->done && !q->cancelled)
        status = ares_parse_srv_reply(abuf, alen, &l->reply);
    l->status = status;
    assert(q->outstanding > 0);
    q->outstanding--;
    if (q->outstanding == 0 && !q->done && !q->cancelled)
        xmpp_complete(q);
    query_release(q);
}

struct resolver_query *resolver_xmpp_server(const char *domain, resolver_xmpp_fn fn, void *ud)
{
    struct resolver_query *q = query_new(QUERY_XMPP, ud);
    struct sockaddr_storage ss;
    char *literal = NULL;

    assert(g.initialised && fn);
    q->xmpp_fn = fn;
    if (parse_literal(domain, &ss, &literal)) {
        /* RFC 6120 §3.2: an IP address needs no DNS. */
        q->name = literal;
        q->targets = xcalloc(1, sizeof *q->targets);
        add_target(q, &(struct candidate){literal, RESOLVER_XMPP_SERVER_PORT, 0, 0, false});
        query_finish(q);
        return q;
    }
    q->name = to_alabel(domain);
    if (!q->name) {
        char *p = printable(domain);
        q->name = p;
        query_fail(q, "%s is not a valid domain name", p);
        return q;
    }
    static const char *const service[2] = {"_xmpps-server._tcp.", "_xmpp-server._tcp."};
    q->outstanding = 2;
    for (size_t i = 0; i < 2; i++) {
        q->srv[i] = (struct srv_lookup){.q = q, .direct_tls = i == 0, .status = ARES_ENOTFOUND};
    }
    for (size_t i = 0; i < 2; i++) {
        char *qname = xasprintf("%s%s", service[i], q->name);
        ares_query(g.channel, qname, ns_c_in, ns_t_srv, on_srv, &q->srv[i]);
        free(qname);
    }
    query_started(q);
    return q;
}

/* ------------------------------------------------------------------ addresses */

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr)) == 0;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct resolver_query *q = arg;

    (void)timeouts;
    assert(q->outstanding > 0);
    q->outstanding--;
    if (!q->done && !q->cancelled) {
        if (status == ARES_SUCCESS && res) {
            q->addrs = xcalloc(RESOLVER_MAX_ADDRS, sizeof *q->addrs);
            for (const struct ares_addrinfo_node *n = res->nodes;
                 n && q->naddrs < RESOLVER_MAX_ADDRS; n = n->ai_next) {
                struct sockaddr_storage ss = {0};
                if (n->ai_family == AF_INET && n->ai_addrlen >= sizeof(struct sockaddr_in))
                    memcpy(&ss, n->ai_addr, sizeof(struct sockaddr_in));
                else if (n->ai_family == AF_INET6 && n->ai_addrlen >= sizeof(struct sockaddr_in6))
                    memcpy(&ss, n->ai_addr, sizeof(struct sockaddr_in6));
                else
                    continue;
                set_port(&ss, q->port);
                bool dup = false;
                for (size_t i = 0; i < q->naddrs && !dup; i++)
                    dup = same_addr(&q->addrs[i], &ss);
                if (!dup)
                    q->addrs[q->naddrs++] = ss;
            }
            if (q->naddrs > 0)
                query_finish(q);
            else
                query_fail(q, "%s has no IPv4 or IPv6 address", q->name);
        } else if (status == ARES_ENOTFOUND) {
            query_fail(q, "host %s not found", q->name);
        } else if (status == ARES_ENODATA) {
            query_fail(q, "%s has no IPv4 or IPv6 address", q->name);
        } else {
            query_fail(q, "address lookup for %s failed: %s", q->name, ares_strerror(status));
        }
    }
    if (res)
        ares_freeaddrinfo(res);
    query_release(q);
}

struct resolver_query *resolver_addresses(const char *host, uint16_t port, resolver_addr_fn fn,
                                          void *ud)
{
    struct resolver_query *q = query_new(QUERY_ADDR, ud);
    struct sockaddr_storage ss;

    assert(g.initialised && fn);
    q->addr_fn = fn;
    q->port = port;
    if (parse_literal(host, &ss, &q->name)) {
        set_port(&ss, port);
        q->addrs = xmalloc(sizeof *q->addrs);
        q->addrs[0] = ss;
        q->naddrs = 1;
        query_finish(q);
        return q;
    }
    q->name = to_alabel(host);
    if (!q->name) {
        q->name = printable(host);
        query_fail(q, "%s is not a valid host name", q->name);
        return q;
    }
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    q->outstanding = 1;
    ares_getaddrinfo(g.channel, q->name, NULL, &hints, on_addrinfo, q);
    query_started(q);
    return q;
}
