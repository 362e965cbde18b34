/* conn.h — a non-blocking stream socket with an optional TLS layer, a capped output queue and
 * deferred close.
 *
 * Reading: bytes (decrypted when TLS is on) are handed to ops->data as they arrive. Writing:
 * conn_write() only queues; queued output is flushed before the loop sleeps (conn_flush_all from
 * the before-sleep hook), and the write watcher is armed only when the socket would block. A peer
 * whose queued output exceeds the cap is disconnected (slow consumer).
 * Closing: conn_close() flushes what is queued, then closes; ops->closed is called exactly once,
 * never from inside conn_write/conn_close, and the struct is freed after it returns, by the loop
 * (so no callback ever runs on a freed connection). */
#ifndef ISTHMUS_CONN_H
#define ISTHMUS_CONN_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "isthmus/ev.h"

struct conn;

struct conn_ops {
    /* Plaintext received. The callee may write, start TLS or close. */
    void (*data)(struct conn *c, void *ud, const char *data, size_t len);
    /* TLS handshake completed (for STARTTLS and direct TLS). May be NULL. */
    void (*tls_ready)(struct conn *c, void *ud);
    /* The connection is gone; reason is a short text for the log. The conn must not be used after
     * this returns. */
    void (*closed)(struct conn *c, void *ud, const char *reason);
    /* An outgoing connection (conn_connect) is established. May be NULL for accepted ones. */
    void (*connected)(struct conn *c, void *ud);
};

/* TLS options beyond the context: the client side of server-to-server streams, and servers
 * that want the peer's certificate (s2s, for SASL EXTERNAL and RFC 6125 checks). */
struct conn_tls_opts {
    bool client;           /* we connect: SSL_connect, SNI */
    const char *sni;       /* client: server name to send; also the name verified */
    const char *alpn;      /* client: wire-format ALPN list (length-prefixed), or NULL */
    bool want_peer_cert;   /* server: ask the client for a certificate (not required) */
};

/* Starts a non-blocking TCP connection to addr; ops->connected or ops->closed reports the
 * outcome (never from inside this call). NULL when no socket could be made. */
struct conn *conn_connect(struct ev_loop *loop, const struct sockaddr *addr, unsigned addrlen,
                          const char *tag, size_t max_output, const struct conn_ops *ops,
                          void *ud);

/* Takes ownership of fd (made non-blocking here). tag names the connection in logs. */
struct conn *conn_new(struct ev_loop *loop, int fd, const char *tag, size_t max_output,
                      const struct conn_ops *ops, void *ud);

/* Hands the connection to another owner: later callbacks get ud (may be NULL). Safe from inside
 * a callback of this connection. */
void conn_set_ud(struct conn *c, void *ud);

const char *conn_tag(const struct conn *c);
const char *conn_peer_ip(const struct conn *c); /* textual peer address, "" if unknown */
bool conn_is_tls(const struct conn *c);         /* handshake done */
SSL *conn_ssl(struct conn *c);                  /* NULL before TLS */

/* Starts server-side TLS after flushing anything queued in plaintext (STARTTLS: the <proceed/>
 * goes out in the clear, then the handshake). For direct TLS call it right after conn_new. */
int conn_start_tls(struct conn *c, SSL_CTX *ctx);
int conn_start_tls_opts(struct conn *c, SSL_CTX *ctx, const struct conn_tls_opts *opts);
/* After the handshake: does the peer's certificate chain verify against the context's trust
 * store, and does it name `domain` (RFC 6125 DNS-ID, X509_check_host)? */
bool conn_peer_cert_valid_for(struct conn *c, const char *domain);

void conn_write(struct conn *c, const char *data, size_t len);
void conn_write_str(struct conn *c, const char *s);
size_t conn_output_pending(const struct conn *c);

/* Graceful: flush, then close. Further writes are dropped. */
void conn_close(struct conn *c, const char *reason);
/* Immediate: drop queued output and close. */
void conn_abort(struct conn *c, const char *reason);
bool conn_closing(const struct conn *c);

/* Flushes every connection with queued output; call from the loop's before-sleep hook. */
void conn_flush_all(void);
/* Number of live connections (for shutdown and metrics). */
size_t conn_count(void);

#endif
