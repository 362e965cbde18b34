/* External components: XEP-0114 accept mode, supervised component processes, XEP-0356 privileged
 * entities. See component.h. */
#include "isthmus/component.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "isthmus/conn.h"
#include "isthmus/listener.h"
#include "isthmus/log.h"
#include "isthmus/router.h"
#include "isthmus/server.h"
#include "isthmus/xmlstream.h"

#define NS_PRIVILEGE "urn:xmpp:privilege:2"
#define NS_FORWARD "urn:xmpp:forward:0"

#define MAX_BACKOFF_MS 60000
#define STABLE_RUN_MS 60000  /* a process that ran this long restarts after the first delay again */
#define MAX_LOG_LINE 2048
#define KILL_GRACE_MS 3000

struct cstream;

/* One [component NAME], at run time. */
struct comp {
    const struct config_component *cfg;
    char *domain;           /* prepared */
    char *secret;           /* the configured one, or this run's generated one */
    struct cstream *stream; /* the authenticated stream, NULL while disconnected */
    char tag[48];
    /* supervision */
    pid_t pid;              /* 0: not running */
    int out_fd;             /* the child's stdout and stderr, -1 when closed */
    struct buf line;
    uint64_t started_ms;
    uint64_t delay_ms;      /* the next restart delay */
    struct ev_timer *restart;
};

struct cstream {
    struct conn *conn;
    struct xmlstream *xs;
    char tag[24];
    char id[33];
    struct comp *comp; /* named in the header; authenticated when comp->stream == this */
    struct ev_timer *timer; /* the handshake deadline */
    bool header_sent;
    bool closing;
    struct cstream *next, *prev;
};

static struct comp *comps;
static size_t ncomps;
static struct cstream *all_streams;
static size_t nstreams;
static struct listener *listeners;
static unsigned next_id;
static int sigchld_fd = -1;
static bool stopping;

static void on_data(struct conn *c, void *ud, const char *data, size_t len);
static void on_closed(struct conn *c, void *ud, const char *reason);
static const struct conn_ops comp_conn_ops = {.data = on_data, .closed = on_closed};

static void xs_open(void *ud, const struct stanza *header, const char *default_ns);
static void xs_element(void *ud, struct stanza *el);
static void xs_close(void *ud);
static void xs_error(void *ud, const char *condition, const char *text);
static const struct xmlstream_cb comp_xml_cb = {xs_open, xs_element, xs_close, xs_error};

static void spawn(struct comp *c);

size_t component_count(void)
{
    return nstreams;
}

/* ---- addressing ---- */

/* The component serving domain: its own domain or the longest one domain is a subdomain of. */
static struct comp *comp_for(const char *domain)
{
    if (!domain)
        return NULL;
    size_t dl = strlen(domain);
    struct comp *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < ncomps; i++) {
        const char *name = comps[i].domain;
        size_t nl = strlen(name);
        bool match = dl == nl ? strcasecmp(domain, name) == 0
                              : dl > nl && domain[dl - nl - 1] == '.' &&
                                    strcasecmp(domain + dl - nl, name) == 0;
        if (match && nl > best_len) {
            best = &comps[i];
            best_len = nl;
        }
    }
    return best;
}

bool component_handles(const char *domain)
{
    return comp_for(domain) != NULL;
}

static struct comp *comp_named(const char *domain)
{
    for (size_t i = 0; i < ncomps; i++)
        if (strcasecmp(comps[i].domain, domain) == 0)
            return &comps[i];
    return NULL;
}

static void send_raw(struct cstream *s, const char *text)
{
    if (!s->closing && s->conn)
        conn_write_str(s->conn, text);
}

/* Writes a stanza in the component namespace; it is renamed in place, so the caller frees it
 * afterwards and does not reuse it. */
static void send_stanza(struct cstream *s, struct stanza *st)
{
    stanza_rename_ns(st, NS_CLIENT, NS_COMPONENT);
    struct buf b;
    buf_init(&b);
    stanza_serialize(st, NS_COMPONENT, &b);
    send_raw(s, b.data);
    buf_fini(&b);
}

/* XEP-0114 §3: the answer to the component's header carries the stream id its handshake hashes. */
static void send_header(struct cstream *s, const char *from)
{
    char *id = random_id(32);
    snprintf(s->id, sizeof s->id, "%s", id);
    free(id);
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "<?xml version='1.0'?><stream:stream xmlns='" NS_COMPONENT
                 "' xmlns:stream='" NS_STREAMS "' id='");
    buf_puts(&b, s->id);
    buf_putc(&b, '\'');
    if (from) {
        buf_puts(&b, " from='");
        xml_escape(&b, from, strlen(from), true);
        buf_putc(&b, '\'');
    }
    buf_putc(&b, '>');
    send_raw(s, b.data);
    buf_fini(&b);
    s->header_sent = true;
}

/* A closing stream takes no more stanzas: its component counts as disconnected at once. */
static void detach(struct cstream *s, const char *why)
{
    if (s->comp && s->comp->stream == s) {
        log_info(s->tag, "component %s disconnected: %s", s->comp->domain, why);
        s->comp->stream = NULL;
    }
}

static void stream_error(struct cstream *s, const char *condition, const char *text)
{
    if (s->closing)
        return;
    if (!s->header_sent)
        send_header(s, NULL); /* RFC 6120 §4.9.1.1 */
    struct buf b;
    buf_init(&b);
    xml_stream_error(&b, condition, text);
    send_raw(s, b.data);
    buf_fini(&b);
    log_info(s->tag, "stream error %s%s%s", condition, text ? ": " : "", text ? text : "");
    detach(s, condition);
    s->closing = true;
    if (s->conn)
        conn_close(s->conn, condition);
}

/* ---- lifecycle ---- */

static struct cstream *stream_new(void)
{
    struct cstream *s = xcalloc(1, sizeof *s);
    snprintf(s->tag, sizeof s->tag, "comp#%u", ++next_id);
    s->xs = xmlstream_new(&comp_xml_cb, s, server.cfg.max_stanza_size, server.cfg.max_depth);
    s->next = all_streams;
    if (all_streams)
        all_streams->prev = s;
    all_streams = s;
    nstreams++;
    return s;
}

static void stream_free(struct cstream *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        all_streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    nstreams--;
    if (s->comp && s->comp->stream == s)
        s->comp->stream = NULL;
    ev_timer_cancel(server.loop, s->timer);
    xmlstream_free(s->xs);
    free(s);
    server_check_drained();
}

static void free_later(struct ev_loop *loop, void *ud)
{
    (void)loop;
    stream_free(ud);
}

/* ---- XEP-0356 ---- */

/* The local host a component belongs to: the one its domain is a subdomain of, else the first. */
static const char *parent_host(const struct comp *c)
{
    const char *dot = strchr(c->domain, '.');
    if (dot && server_is_local_host(dot + 1))
        return dot + 1;
    return server.cfg.hosts[0].name;
}

/* XEP-0356 §3: the grants, announced right after the handshake. */
static void advertise_privileges(struct comp *c)
{
    static const char *const roster[] = {"none", "get", "set", "both"};
    if (!c->cfg->roster_access && !c->cfg->message_outgoing)
        return;
    struct stanza *m = stanza_new("message", NS_CLIENT);
    char *id = random_id(12);
    stanza_set_attr(m, "id", id);
    free(id);
    stanza_set_attr(m, "from", parent_host(c));
    stanza_set_attr(m, "to", c->domain);
    struct stanza *p = stanza_add_child(m, "privilege", NS_PRIVILEGE);
    if (c->cfg->roster_access) {
        struct stanza *perm = stanza_add_child(p, "perm", NULL);
        stanza_set_attr(perm, "access", "roster");
        stanza_set_attr(perm, "type", roster[c->cfg->roster_access & 3]);
    }
    if (c->cfg->message_outgoing) {
        struct stanza *perm = stanza_add_child(p, "perm", NULL);
        stanza_set_attr(perm, "access", "message");
        stanza_set_attr(perm, "type", "outgoing");
    }
    send_stanza(c->stream, m);
    stanza_free(m);
}

bool component_roster_allowed(const struct jid *from, const char *host, bool set)
{
    if (!from || from->local || from->resource || !server_is_local_host(host))
        return false;
    struct comp *c = comp_named(from->domain);
    if (!c)
        return false;
    return (c->cfg->roster_access & (set ? CONFIG_ROSTER_SET : CONFIG_ROSTER_GET)) != 0;
}

/* XEP-0356 §5: <message><privilege><forwarded><message from='user@host'/>: the inner message
 * is sent as from that user. Returns false when st is not such a wrapper. Takes ownership of st
 * when it returns true. */
static bool privileged_message(struct comp *c, struct stanza *st)
{
    struct stanza *p = stanza_child(st, "privilege", NS_PRIVILEGE);
    if (!p || strcmp(st->name, "message") != 0)
        return false;
    struct stanza *fwd = stanza_child(p, "forwarded", NS_FORWARD);
    struct stanza *inner = fwd ? stanza_child(fwd, "message", NS_CLIENT) : NULL;
    struct jid from;
    const char *cond = NULL;
    if (!c->cfg->message_outgoing) {
        cond = "forbidden";
    } else if (!inner || !stanza_attr(inner, "to") ||
               jid_parse(stanza_attr(inner, "from"), &from) < 0) {
        cond = "bad-request";
    } else {
        /* The sender must be the bare JID of one of our users. */
        if (!from.local || from.resource || !server_is_local_host(from.domain)) {
            cond = "forbidden";
        } else {
            char *fs = jid_to_string(&from);
            stanza_set_attr(inner, "from", fs);
            free(fs);
        }
        jid_fini(&from);
    }
    if (cond) {
        log_info(c->tag, "privileged message refused: %s", cond);
        router_error(st, cond, NULL);
        stanza_free(st);
        return true;
    }
    stanza_remove(inner);
    stanza_free(st);
    router_route(inner, NULL);
    return true;
}

/* ---- incoming ---- */

static void xs_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct cstream *s = ud;
    if (s->closing)
        return;
    const char *to = stanza_attr(header, "to");
    char *domain = to ? jid_prep_domain(to) : NULL;
    struct comp *c = domain ? comp_named(domain) : NULL;
    send_header(s, c ? c->domain : NULL);
    free(domain);
    if (strcmp(default_ns, NS_COMPONENT) != 0) {
        stream_error(s, "invalid-namespace", "Components use jabber:component:accept");
        return;
    }
    if (!c) {
        stream_error(s, "host-unknown", "No such component is configured");
        return;
    }
    s->comp = c;
}

/* XEP-0114 §3: <handshake>hex(SHA1(stream id + secret))</handshake>. */
static void handshake(struct cstream *s, struct stanza *el)
{
    struct comp *c = s->comp;
    unsigned char md[SHA_DIGEST_LENGTH];
    char *input = xasprintf("%s%s", s->id, c->secret);
    SHA1((const unsigned char *)input, strlen(input), md);
    OPENSSL_cleanse(input, strlen(input));
    free(input);
    char want[2 * SHA_DIGEST_LENGTH + 1];
    for (size_t i = 0; i < sizeof md; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    char *got = stanza_text(el);
    for (char *p = got; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    bool ok = strlen(got) == strlen(want) && CRYPTO_memcmp(got, want, strlen(want)) == 0;
    free(got);
    if (!ok) {
        log_warn(s->tag, "bad handshake for %s from %s", c->domain, conn_peer_ip(s->conn));
        stream_error(s, "not-authorized", NULL);
        return;
    }
    if (c->stream) {
        stream_error(s, "conflict", "That component is already connected");
        return;
    }
    c->stream = s;
    ev_timer_cancel(server.loop, s->timer);
    s->timer = NULL;
    send_raw(s, "<handshake/>");
    log_info(s->tag, "component %s connected from %s", c->domain, conn_peer_ip(s->conn));
    advertise_privileges(c);
}

/* A stanza from an authenticated component: `from` within its domain (else invalid-from,
 * RFC 6120 §4.9.3.9), a `to` (else improper-addressing, §4.9.3.7). Takes ownership. */
static void in_stanza(struct cstream *s, struct stanza *st)
{
    struct jid from, to;
    const char *f = stanza_attr(st, "from"), *t = stanza_attr(st, "to");
    if (!f || jid_parse(f, &from) < 0) {
        stream_error(s, "invalid-from", "Stanzas need a valid 'from'");
        stanza_free(st);
        return;
    }
    if (comp_for(from.domain) != s->comp) {
        jid_fini(&from);
        stream_error(s, "invalid-from", "'from' is not within the component's domain");
        stanza_free(st);
        return;
    }
    if (!t) {
        jid_fini(&from);
        stream_error(s, "improper-addressing", "Stanzas need a 'to'");
        stanza_free(st);
        return;
    }
    stanza_rename_ns(st, NS_COMPONENT, NS_CLIENT);
    char *fs = jid_to_string(&from);
    stanza_set_attr(st, "from", fs);
    free(fs);
    jid_fini(&from);
    if (jid_parse(t, &to) < 0) {
        router_error(st, "jid-malformed", NULL);
        stanza_free(st);
        return;
    }
    char *ts = jid_to_string(&to);
    stanza_set_attr(st, "to", ts);
    free(ts);
    jid_fini(&to);
    if (privileged_message(s->comp, st))
        return;
    router_route(st, NULL);
}

static bool is_stanza(const struct stanza *el)
{
    return strcmp(el->ns, NS_COMPONENT) == 0 &&
           (strcmp(el->name, "message") == 0 || strcmp(el->name, "presence") == 0 ||
            strcmp(el->name, "iq") == 0);
}

static void xs_element(void *ud, struct stanza *el)
{
    struct cstream *s = ud;
    if (s->closing || !s->comp) {
        stanza_free(el);
        return;
    }
    bool authed = s->comp->stream == s;
    if (!authed && strcmp(el->name, "handshake") == 0 && strcmp(el->ns, NS_COMPONENT) == 0)
        handshake(s, el);
    else if (!authed)
        stream_error(s, "not-authorized", "Handshake first");
    else if (is_stanza(el)) {
        in_stanza(s, el);
        return;
    } else
        stream_error(s, "unsupported-stanza-type", NULL);
    stanza_free(el);
}

static void xs_close(void *ud)
{
    struct cstream *s = ud;
    if (s->closing)
        return;
    send_raw(s, "</stream:stream>");
    detach(s, "stream closed");
    s->closing = true;
    conn_close(s->conn, "stream closed by peer");
}

static void xs_error(void *ud, const char *condition, const char *text)
{
    stream_error(ud, condition, text);
}

static void on_data(struct conn *c, void *ud, const char *data, size_t len)
{
    (void)c;
    struct cstream *s = ud;
    if (!s || s->closing)
        return;
    xmlstream_feed(s->xs, data, len);
}

static void on_closed(struct conn *c, void *ud, const char *reason)
{
    (void)c;
    struct cstream *s = ud;
    if (!s)
        return;
    s->conn = NULL;
    detach(s, reason);
    s->closing = true;
    ev_defer(server.loop, free_later, s);
}

/* ---- towards the component ---- */

void component_route(struct stanza *st)
{
    struct jid to;
    struct comp *c = NULL;
    if (jid_parse(stanza_attr(st, "to"), &to) == 0) {
        c = comp_for(to.domain);
        jid_fini(&to);
    }
    if (c && c->stream && !c->stream->closing) {
        send_stanza(c->stream, st);
    } else if (strcmp(st->name, "presence") != 0) {
        /* XEP-0114 has no queue: the sender learns at once (RFC 6120 §8.3.3.14). IQ results
         * and errors are never answered (router_error skips type='error'). */
        const char *type = stanza_attr(st, "type");
        if (strcmp(st->name, "message") == 0 || str_eq(type, "get") || str_eq(type, "set"))
            router_error(st, "remote-server-timeout", "The component is not connected");
    }
    stanza_free(st);
}

/* ---- supervised components ---- */

static void take_output(struct comp *c, const char *chunk, size_t n);

/* Reads what the child wrote and nobody read yet (the pipe is non-blocking): its last words
 * before exiting, a sanitizer report among them, must reach the log. */
static void drain_output(struct comp *c)
{
    char chunk[4096];
    ssize_t n;
    while (c->out_fd >= 0 && (n = read(c->out_fd, chunk, sizeof chunk)) > 0)
        take_output(c, chunk, (size_t)n);
}

static void close_output(struct comp *c)
{
    if (c->out_fd < 0)
        return;
    drain_output(c);
    if (c->line.len) {
        log_info(c->tag, "%.*s", (int)c->line.len, c->line.data);
        buf_reset(&c->line);
    }
    ev_io_del(server.loop, c->out_fd);
    close(c->out_fd);
    c->out_fd = -1;
}

/* The child's output, one log line per line; over-long lines are cut. */
static void on_output(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    struct comp *c = ud;
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close_output(c);
        return;
    }
    take_output(c, chunk, (size_t)n);
}

static void take_output(struct comp *c, const char *chunk, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (chunk[i] == '\n' || c->line.len >= MAX_LOG_LINE) {
            if (c->line.len)
                log_info(c->tag, "%.*s", (int)c->line.len, c->line.data);
            buf_reset(&c->line);
            if (chunk[i] == '\n')
                continue;
        }
        if (chunk[i] != '\r')
            buf_putc(&c->line, chunk[i]);
    }
}

static void restart_due(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct comp *c = ud;
    c->restart = NULL;
    if (!stopping && !server.shutting_down)
        spawn(c);
}

/* The child of c exited with status: log it and schedule a restart with backoff. */
static void exited(struct comp *c, int status)
{
    uint64_t ran = now_ms() - c->started_ms;
    if (WIFSIGNALED(status))
        log_warn(c->tag, "process %ld killed by signal %d after %llu ms", (long)c->pid,
                 WTERMSIG(status), (unsigned long long)ran);
    else
        log_warn(c->tag, "process %ld exited with status %d after %llu ms", (long)c->pid,
                 WEXITSTATUS(status), (unsigned long long)ran);
    c->pid = 0;
    close_output(c);
    if (stopping || server.shutting_down)
        return;
    uint64_t first = (uint64_t)c->cfg->restart_delay * 1000;
    if (ran >= STABLE_RUN_MS || c->delay_ms < first)
        c->delay_ms = first;
    log_info(c->tag, "restarting in %llu ms", (unsigned long long)c->delay_ms);
    c->restart = ev_timer_add(server.loop, c->delay_ms, restart_due, c);
    c->delay_ms = c->delay_ms * 2 > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : c->delay_ms * 2;
}

static void reap(void)
{
    for (size_t i = 0; i < ncomps; i++) {
        struct comp *c = &comps[i];
        int status;
        if (c->pid > 0 && waitpid(c->pid, &status, WNOHANG) == c->pid)
            exited(c, status);
    }
}

static void on_sigchld(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    (void)ud;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si)
        ;
    reap(); /* signals coalesce: check every child */
}

/* Runs in the child: a clean signal state, output to the pipe, the environment, exec. */
static void child_exec(struct comp *c, int out)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
        dup2(null, 0);
    dup2(out, 1);
    dup2(out, 2);
    closefrom(3);
    const struct config_addr *a = &server.cfg.component_listen[0];
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    setenv("ISTHMUS_COMPONENT_DOMAIN", c->domain, 1);
    setenv("ISTHMUS_COMPONENT_SECRET", c->secret, 1);
    setenv("ISTHMUS_COMPONENT_HOST", a->host, 1);
    setenv("ISTHMUS_COMPONENT_PORT", port, 1);
    setenv("ISTHMUS_SERVER_HOST", parent_host(c), 1);
    /* Gateways' default commands run isthmus-<type> from the server binary's directory. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        setenv("ISTHMUS_BINDIR", exe, 1);
    }
    char *cmd = xasprintf("exec %s", c->cfg->command);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    dprintf(2, "cannot run /bin/sh: %s\n", strerror(errno));
    _exit(127);
}

static void spawn(struct comp *c)
{
    if (!c->cfg->secret) {
        /* A fresh secret per start: a process that outlived its run cannot log in again. */
        free(c->secret);
        c->secret = random_id(32);
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        log_error(c->tag, "pipe: %s", strerror(errno));
        c->restart = ev_timer_add(server.loop, MAX_BACKOFF_MS, restart_due, c);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        log_error(c->tag, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        c->restart = ev_timer_add(server.loop, MAX_BACKOFF_MS, restart_due, c);
        return;
    }
    if (pid == 0)
        child_exec(c, fds[1]);
    close(fds[1]);
    fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    c->pid = pid;
    c->out_fd = fds[0];
    c->started_ms = now_ms();
    ev_io_add(server.loop, c->out_fd, EV_READ, on_output, c);
    log_info(c->tag, "started process %ld: %s", (long)pid, c->cfg->command);
}

/* ---- listeners ---- */

static void handshake_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct cstream *s = ud;
    s->timer = NULL;
    stream_error(s, "connection-timeout", "No handshake in time");
}

static void accept_one(int cfd, bool unused)
{
    (void)unused;
    struct cstream *s = stream_new();
    s->conn = conn_new(server.loop, cfd, s->tag, server.cfg.max_output_buffer, &comp_conn_ops, s);
    s->timer = ev_timer_add(server.loop, (uint64_t)server.cfg.c2s_auth_timeout * 1000,
                            handshake_timeout, s);
    log_debug(s->tag, "connection from %s", conn_peer_ip(s->conn));
}

static int listen_on(const struct config_addr *a, char *err, size_t errlen)
{
    if (listener_open(&listeners, a, "component", false, accept_one, err, errlen) < 0)
        return -1;
    log_info(NULL, "component listener on %s:%u", a->host, a->port);
    return 0;
}

static void close_listeners(void)
{
    listener_close_all(&listeners);
}

int component_init(char *err, size_t errlen)
{
    stopping = false;
    ncomps = server.cfg.n_components;
    comps = ncomps ? xcalloc(ncomps, sizeof *comps) : NULL;
    for (size_t i = 0; i < ncomps; i++) {
        comps[i].cfg = &server.cfg.components[i];
        comps[i].out_fd = -1;
        buf_init(&comps[i].line);
    }
    bool supervised = false;
    for (size_t i = 0; i < ncomps; i++) {
        struct comp *c = &comps[i];
        c->domain = jid_prep_domain(c->cfg->name);
        if (!c->domain) {
            snprintf(err, errlen, "%s:%u: [component %s]: not a valid XMPP domain",
                     server.cfg.path, c->cfg->line, c->cfg->name);
            return -1;
        }
        if (server_is_local_host(c->domain)) {
            snprintf(err, errlen, "%s:%u: [component %s]: that domain is also a [host]",
                     server.cfg.path, c->cfg->line, c->domain);
            return -1;
        }
        c->secret = xstrdup(c->cfg->secret);
        snprintf(c->tag, sizeof c->tag, "comp:%s", c->domain);
        supervised |= c->cfg->command != NULL;
    }
    if (supervised && server.cfg.n_component_listen == 0) {
        snprintf(err, errlen, "%s: a [component NAME] command needs [component] listen",
                 server.cfg.path);
        return -1;
    }
    for (size_t i = 0; i < server.cfg.n_component_listen; i++)
        if (listen_on(&server.cfg.component_listen[i], err, errlen) < 0)
            return -1;
    if (!supervised)
        return 0;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    sigchld_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigchld_fd < 0) {
        snprintf(err, errlen, "signalfd: %s", strerror(errno));
        return -1;
    }
    ev_io_add(server.loop, sigchld_fd, EV_READ, on_sigchld, NULL);
    for (size_t i = 0; i < ncomps; i++) {
        comps[i].delay_ms = (uint64_t)comps[i].cfg->restart_delay * 1000;
        if (comps[i].cfg->command)
            spawn(&comps[i]);
    }
    return 0;
}

void component_shutdown(void)
{
    stopping = true;
    close_listeners();
    for (struct cstream *s = all_streams; s; s = s->next)
        stream_error(s, "system-shutdown", NULL);
    for (size_t i = 0; i < ncomps; i++) {
        struct comp *c = &comps[i];
        ev_timer_cancel(server.loop, c->restart);
        c->restart = NULL;
        if (c->pid > 0)
            kill(c->pid, SIGTERM);
    }
}

void component_abort_all(void)
{
    for (struct cstream *s = all_streams; s; s = s->next) {
        detach(s, "shutdown");
        s->closing = true;
        if (s->conn)
            conn_abort(s->conn, "shutdown");
    }
}

/* At exit: each supervised process gets SIGTERM and KILL_GRACE_MS in total to go, then
 * SIGKILL. Blocking is fine here: the loop has stopped. */
static void stop_children(void)
{
    bool any = false;
    for (size_t i = 0; i < ncomps; i++)
        if (comps[i].pid > 0) {
            kill(comps[i].pid, SIGTERM);
            any = true;
        }
    uint64_t deadline = now_ms() + KILL_GRACE_MS;
    while (any) {
        any = false;
        for (size_t i = 0; i < ncomps; i++) {
            struct comp *c = &comps[i];
            int status;
            if (c->pid > 0 && waitpid(c->pid, &status, WNOHANG) == c->pid)
                c->pid = 0;
            any |= c->pid > 0;
        }
        for (size_t i = 0; i < ncomps; i++)
            drain_output(&comps[i]); /* a child blocked on a full pipe could not exit */
        if (!any)
            break;
        if (now_ms() >= deadline) {
            for (size_t i = 0; i < ncomps; i++) {
                struct comp *c = &comps[i];
                if (c->pid > 0) {
                    log_warn(c->tag, "process %ld ignored SIGTERM: killing it", (long)c->pid);
                    kill(c->pid, SIGKILL);
                    waitpid(c->pid, NULL, 0);
                    c->pid = 0;
                }
            }
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void component_fini(void)
{
    stopping = true;
    close_listeners();
    while (all_streams) {
        struct cstream *s = all_streams;
        if (s->conn) {
            conn_set_ud(s->conn, NULL);
            conn_abort(s->conn, "exit");
        }
        stream_free(s);
    }
    stop_children();
    for (size_t i = 0; i < ncomps; i++) {
        struct comp *c = &comps[i];
        if (server.loop)
            ev_timer_cancel(server.loop, c->restart);
        if (c->out_fd >= 0 && server.loop)
            close_output(c);
        else if (c->out_fd >= 0)
            close(c->out_fd);
        buf_fini(&c->line);
        free(c->domain);
        free(c->secret);
    }
    free(comps);
    comps = NULL;
    ncomps = 0;
    if (sigchld_fd >= 0) {
        if (server.loop)
            ev_io_del(server.loop, sigchld_fd);
        close(sigchld_fd);
        sigchld_fd = -1;
    }
}
