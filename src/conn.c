#include "isthmus/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

#define READ_CHUNK 16384
#define WRITE_CHUNK 16384
#define CLOSE_GRACE_MS 5000

struct conn {
    struct ev_loop *loop;
    int fd;
    char *tag;
    char ip[INET6_ADDRSTRLEN];
    const struct conn_ops *ops;
    void *ud;
    SSL *ssl;
    SSL_CTX *tls_pending; /* STARTTLS requested; begins when plaintext output is flushed */
    struct conn_tls_opts tls_opts;
    char *tls_sni;
    bool connecting; /* conn_connect: waiting for the TCP handshake */
    bool handshaking;
    bool tls_done;
    bool read_wants_write;  /* SSL_read asked for writability */
    bool write_wants_read;  /* SSL_write asked for readability */
    bool write_armed;
    bool closing;
    bool dead;
    char *close_reason;
    struct ev_timer *close_timer;
    struct buf out;
    size_t max_output;
    bool queued; /* in the flush list */
    struct conn *flush_next, *flush_prev;
};

static struct conn *flush_head;
static size_t live_conns;

static void conn_io(struct ev_loop *loop, int fd, unsigned events, void *ud);
static void flush(struct conn *c);

static void flush_list_add(struct conn *c)
{
    if (c->queued)
        return;
    c->queued = true;
    c->flush_prev = NULL;
    c->flush_next = flush_head;
    if (flush_head)
        flush_head->flush_prev = c;
    flush_head = c;
}

static void flush_list_remove(struct conn *c)
{
    if (!c->queued)
        return;
    if (c->flush_prev)
        c->flush_prev->flush_next = c->flush_next;
    else
        flush_head = c->flush_next;
    if (c->flush_next)
        c->flush_next->flush_prev = c->flush_prev;
    c->queued = false;
    c->flush_next = c->flush_prev = NULL;
}

static void getpeer_ip(struct conn *c)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip, sizeof c->ip);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->ip, sizeof c->ip);
    }
}

struct conn *conn_new(struct ev_loop *loop, int fd, const char *tag, size_t max_output,
                      const struct conn_ops *ops, void *ud)
{
    int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    /* XMPP is small request/response writes: without this, Nagle holds our reply until the
     * peer's delayed ACK (measured: 42 ms per login step). Output is already batched per loop
     * iteration (conn_flush_all), so nothing is lost by sending at once. Fails harmlessly on
     * non-TCP sockets. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = xcalloc(1, sizeof *c);
    c->loop = loop;
    c->fd = fd;
    c->tag = xstrdup(tag);
    c->ops = ops;
    c->ud = ud;
    c->max_output = max_output;
    buf_init(&c->out);
    getpeer_ip(c);
    live_conns++;
    if (ev_io_add(loop, fd, EV_READ, conn_io, c) < 0) {
        log_error(tag, "cannot watch socket: %s", strerror(errno));
        conn_abort(c, "cannot watch socket");
    }
    return c;
}

void conn_set_ud(struct conn *c, void *ud)
{
    c->ud = ud;
}

const char *conn_tag(const struct conn *c)
{
    return c->tag;
}

const char *conn_peer_ip(const struct conn *c)
{
    return c->ip;
}

bool conn_is_tls(const struct conn *c)
{
    return c->tls_done;
}

SSL *conn_ssl(struct conn *c)
{
    return c->ssl;
}

bool conn_closing(const struct conn *c)
{
    return c->closing || c->dead;
}

size_t conn_output_pending(const struct conn *c)
{
    return c->out.len;
}

size_t conn_count(void)
{
    return live_conns;
}

static void update_interest(struct conn *c)
{
    if (c->dead || c->connecting)
        return;
    bool want_write = c->read_wants_write || c->handshaking ||
                      (c->out.len > 0 && !c->write_wants_read && !c->tls_pending);
    /* While handshaking, the handshake's own wants decide; keep reading always. */
    unsigned mask = EV_READ | (want_write ? EV_WRITE : 0);
    if (c->handshaking && !c->write_armed)
        mask = EV_READ;
    ev_io_mod(c->loop, c->fd, mask);
}

static void free_conn(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct conn *c = ud;
    buf_fini(&c->out);
    free(c->tag);
    free(c->close_reason);
    free(c->tls_sni);
    free(c);
}

/* The one place a connection ends: tear down, tell the owner, free on the next iteration. */
static void finish(struct conn *c, const char *reason)
{
    if (c->dead && c->fd < 0)
        return;
    c->dead = true;
    flush_list_remove(c);
    ev_timer_cancel(c->loop, c->close_timer);
    c->close_timer = NULL;
    if (c->fd >= 0) {
        ev_io_del(c->loop, c->fd);
        if (c->ssl && c->tls_done) {
            ERR_clear_error();
            SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
        }
        close(c->fd);
        c->fd = -1;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    ERR_clear_error();
    live_conns--;
    log_debug(c->tag, "closed: %s", reason);
    if (c->ops->closed)
        c->ops->closed(c, c->ud, reason);
    ev_defer(c->loop, free_conn, c);
}

static void finish_deferred(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct conn *c = ud;
    finish(c, c->close_reason ? c->close_reason : "closed");
}

static const char *tls_error_text(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (!e)
        return "TLS error";
    ERR_error_string_n(e, buf, len);
    return buf;
}

static void handshake(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->handshaking = false;
        c->tls_done = true;
        c->write_armed = false;
        log_debug(c->tag, "TLS established: %s %s", SSL_get_version(c->ssl),
                  SSL_get_cipher_name(c->ssl));
        if (c->ops->tls_ready)
            c->ops->tls_ready(c, c->ud);
        if (!c->dead && c->out.len)
            flush_list_add(c);
        update_interest(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
        c->write_armed = false;
        ev_io_mod(c->loop, c->fd, EV_READ);
    } else if (err == SSL_ERROR_WANT_WRITE) {
        c->write_armed = true;
        ev_io_mod(c->loop, c->fd, EV_READ | EV_WRITE);
    } else {
        char eb[256];
        char *why = xasprintf("TLS handshake failed: %s", tls_error_text(eb, sizeof eb));
        log_info(c->tag, "%s", why);
        c->closing = true;
        finish(c, why);
        free(why);
    }
}

static void do_read(struct conn *c)
{
    char buf[READ_CHUNK];
    while (!c->dead && !c->closing) {
        size_t n = 0;
        if (c->ssl) {
            ERR_clear_error();
            c->read_wants_write = false;
            int r = SSL_read_ex(c->ssl, buf, sizeof buf, &n);
            if (!r) {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_READ)
                    break;
                if (err == SSL_ERROR_WANT_WRITE) {
                    c->read_wants_write = true;
                    update_interest(c);
                    break;
                }
                if (err == SSL_ERROR_ZERO_RETURN) {
                    finish(c, "peer closed the TLS session");
                    return;
                }
                char eb[256];
                char *why = xasprintf("TLS read failed: %s",
                                      err == SSL_ERROR_SYSCALL ? strerror(errno)
                                                               : tls_error_text(eb, sizeof eb));
                finish(c, why);
                free(why);
                return;
            }
        } else {
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    break;
                char *why = xasprintf("read failed: %s", strerror(errno));
                finish(c, why);
                free(why);
                return;
            }
            if (r == 0) {
                finish(c, "connection closed by peer");
                return;
            }
            n = (size_t)r;
        }
        c->ops->data(c, c->ud, buf, n);
        /* A STARTTLS request stops plaintext reading: what follows must be the handshake. */
        if (c->tls_pending)
            break;
    }
}

static void conn_io(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)fd;
    struct conn *c = ud;
    if (c->dead)
        return;
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err == EINPROGRESS)
            return;
        c->connecting = false;
        if (err) {
            char *why = xasprintf("connect failed: %s", strerror(err));
            finish(c, why);
            free(why);
            return;
        }
        getpeer_ip(c);
        update_interest(c);
        if (c->ops->connected)
            c->ops->connected(c, c->ud);
        return;
    }
    if (c->handshaking) {
        handshake(c);
        if (c->dead || c->handshaking)
            return;
    }
    if ((events & EV_WRITE) && c->read_wants_write)
        do_read(c);
    if (c->dead)
        return;
    if ((events & EV_READ) && c->write_wants_read) {
        c->write_wants_read = false;
        flush(c);
    }
    if (c->dead)
        return;
    if (events & EV_READ) {
        if (c->closing) {
            /* Draining: discard input until our output is out, but notice the peer leaving. */
            char sink[4096];
            ssize_t r = c->ssl ? 0 : read(c->fd, sink, sizeof sink);
            if (c->ssl) {
                size_t n;
                ERR_clear_error();
                if (!SSL_read_ex(c->ssl, sink, sizeof sink, &n)) {
                    int err = SSL_get_error(c->ssl, 0);
                    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
                        r = 0;
                    else
                        r = -1;
                } else {
                    r = (ssize_t)n;
                }
            } else if (r < 0 && errno != EAGAIN) {
                r = 0;
            }
            if (r == 0) {
                finish(c, c->close_reason ? c->close_reason : "closed");
                return;
            }
        } else {
            do_read(c);
        }
    }
    if (c->dead)
        return;
    if (events & EV_WRITE)
        flush(c);
}

/* Certificates are judged after the handshake (conn_peer_cert_valid_for), so that a peer whose
 * certificate does not verify can still use dialback (XEP-0220) when policy allows. */
static int accept_any_cert(int preverify_ok, X509_STORE_CTX *ctx)
{
    (void)preverify_ok;
    (void)ctx;
    return 1;
}

bool conn_peer_cert_valid_for(struct conn *c, const char *domain)
{
    if (!c->ssl || !c->tls_done || !domain)
        return false;
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    if (!cert)
        return false;
    bool ok = SSL_get_verify_result(c->ssl) == X509_V_OK &&
              X509_check_host(cert, domain, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
    X509_free(cert);
    return ok;
}

static void begin_tls(struct conn *c)
{
    SSL_CTX *ctx = c->tls_pending;
    c->tls_pending = NULL;
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
        finish(c, "cannot create TLS session");
        return;
    }
    if (c->tls_opts.client) {
        SSL_set_connect_state(c->ssl);
        if (c->tls_sni) {
            SSL_set_tlsext_host_name(c->ssl, c->tls_sni);
            /* RFC 6120 §13.7.2.1: the reference identity is the XMPP domain. */
            SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            SSL_set1_host(c->ssl, c->tls_sni);
        }
        if (c->tls_opts.alpn)
            SSL_set_alpn_protos(c->ssl, (const unsigned char *)c->tls_opts.alpn,
                                (unsigned)strlen(c->tls_opts.alpn));
    } else {
        SSL_set_accept_state(c->ssl);
        if (c->tls_opts.want_peer_cert)
            SSL_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, accept_any_cert);
    }
    c->handshaking = true;
    handshake(c);
}

int conn_start_tls(struct conn *c, SSL_CTX *ctx)
{
    static const struct conn_tls_opts server_side = {0};
    return conn_start_tls_opts(c, ctx, &server_side);
}

int conn_start_tls_opts(struct conn *c, SSL_CTX *ctx, const struct conn_tls_opts *opts)
{
    if (c->dead || c->closing || c->ssl || c->tls_pending)
        return -1;
    c->tls_opts = *opts;
    free(c->tls_sni);
    c->tls_sni = xstrdup(opts->sni);
    c->tls_opts.sni = c->tls_sni;
    /* Begins from the flush, never inside the caller's callback: a failing handshake must not
     * free the caller's state under its feet. */
    c->tls_pending = ctx;
    flush_list_add(c);
    return 0;
}

static void flush(struct conn *c)
{
    if (c->dead || c->connecting)
        return;
    if (c->handshaking || c->write_wants_read)
        return;
    while (c->out.len) {
        size_t chunk = c->out.len < WRITE_CHUNK ? c->out.len : WRITE_CHUNK;
        size_t n = 0;
        if (c->ssl) {
            ERR_clear_error();
            if (!SSL_write_ex(c->ssl, c->out.data, chunk, &n)) {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_WRITE)
                    break;
                if (err == SSL_ERROR_WANT_READ) {
                    c->write_wants_read = true;
                    break;
                }
                char eb[256];
                char *why = xasprintf("TLS write failed: %s",
                                      err == SSL_ERROR_SYSCALL ? strerror(errno)
                                                               : tls_error_text(eb, sizeof eb));
                finish(c, why);
                free(why);
                return;
            }
        } else {
            ssize_t r = send(c->fd, c->out.data, chunk, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    break;
                char *why = xasprintf("write failed: %s", strerror(errno));
                finish(c, why);
                free(why);
                return;
            }
            n = (size_t)r;
        }
        buf_consume(&c->out, n);
    }
    if (c->out.len == 0) {
        if (c->out.cap > 65536)
            buf_fini(&c->out); /* give back memory after a burst */
        if (c->tls_pending) {
            begin_tls(c);
            return;
        }
        if (c->closing) {
            finish(c, c->close_reason ? c->close_reason : "closed");
            return;
        }
    }
    update_interest(c);
}

void conn_flush_all(void)
{
    while (flush_head) {
        struct conn *c = flush_head;
        flush_list_remove(c);
        flush(c);
    }
}

void conn_write(struct conn *c, const char *data, size_t len)
{
    if (c->dead || c->closing || !len)
        return;
    if (c->out.len + len > c->max_output) {
        log_info(c->tag, "output queue over %zu bytes: disconnecting slow peer", c->max_output);
        conn_abort(c, "output queue overflow (slow consumer)");
        return;
    }
    buf_append(&c->out, data, len);
    flush_list_add(c);
}

void conn_write_str(struct conn *c, const char *s)
{
    conn_write(c, s, strlen(s));
}

static void close_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct conn *c = ud;
    c->close_timer = NULL;
    finish(c, c->close_reason ? c->close_reason : "close timed out");
}

void conn_close(struct conn *c, const char *reason)
{
    if (c->dead || c->closing)
        return;
    c->closing = true;
    c->close_reason = xstrdup(reason);
    c->close_timer = ev_timer_add(c->loop, CLOSE_GRACE_MS, close_timeout, c);
    flush_list_add(c);
}

void conn_abort(struct conn *c, const char *reason)
{
    if (c->dead && c->fd < 0)
        return;
    bool was_closing = c->closing;
    c->closing = true;
    buf_reset(&c->out);
    c->tls_pending = NULL;
    if (!was_closing || !c->close_reason) {
        free(c->close_reason);
        c->close_reason = xstrdup(reason);
    }
    flush_list_remove(c);
    if (c->fd >= 0)
        ev_io_mod(c->loop, c->fd, 0);
    ev_defer(c->loop, finish_deferred, c);
}

static void connect_failed_now(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct conn *c = ud;
    finish(c, c->close_reason ? c->close_reason : "connect failed");
}

struct conn *conn_connect(struct ev_loop *loop, const struct sockaddr *addr, unsigned addrlen,
                          const char *tag, size_t max_output, const struct conn_ops *ops,
                          void *ud)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int rc = connect(fd, addr, addrlen);
    int err = rc < 0 ? errno : 0;
    struct conn *c = conn_new(loop, fd, tag, max_output, ops, ud);
    if (err && err != EINPROGRESS) {
        /* Reported from the loop, like every other outcome. */
        c->closing = true;
        free(c->close_reason);
        c->close_reason = xasprintf("connect failed: %s", strerror(err));
        ev_io_mod(loop, fd, 0);
        ev_defer(loop, connect_failed_now, c);
        return c;
    }
    c->connecting = true;
    ev_io_mod(loop, fd, EV_WRITE);
    return c;
}
