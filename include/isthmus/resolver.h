/* resolver.h — asynchronous DNS for server-to-server connections: c-ares driven by our event
 * loop, never blocking.
 *
 * resolver_xmpp_server() turns an XMPP domain into an ordered list of (host, port, direct TLS)
 * targets (RFC 6120 §3.2, XEP-0368, RFC 2782 ordering); resolver_addresses() turns one target host
 * into socket addresses (A and AAAA). The caller connects to the addresses of each target in turn.
 *
 * Callback rules, so callers never see re-entrancy:
 *   - a callback never runs from inside the function that started its query, even when the
 *     answer is known at once (IP literals, bad names): it runs from the event loop;
 *   - each query calls back exactly once unless cancelled; after resolver_cancel() it never does;
 *   - the arrays and the error string passed to a callback are borrowed for the call only;
 *   - the query handle is invalid once its callback has started (resolver_cancel() on it from
 *     inside that callback is a harmless no-op) and after resolver_cancel().
 * Every query ends within RESOLVER_TIMEOUT_MS (an error "... timed out" then). */
#ifndef ISTHMUS_RESOLVER_H
#define ISTHMUS_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "isthmus/config.h"
#include "isthmus/ev.h"

#define RESOLVER_TIMEOUT_MS 5000       /* whole query, including both SRV lookups */
#define RESOLVER_MAX_TARGETS 32        /* SRV targets handed out, in order */
#define RESOLVER_MAX_ADDRS 16          /* addresses handed out per host */
#define RESOLVER_XMPP_SERVER_PORT 5269 /* RFC 6120 §3.2.2 fallback for xmpp-server */

struct resolver_query;

struct resolver_target {
    char *host; /* A-label FQDN without the trailing dot, or an IP literal without brackets */
    uint16_t port;
    bool direct_tls; /* XEP-0368: from _xmpps-server._tcp, TLS starts right after connect */
};

typedef void (*resolver_xmpp_fn)(void *ud, const struct resolver_target *targets, size_t n,
                                 const char *error /* NULL on success, then n >= 1 */);
typedef void (*resolver_addr_fn)(void *ud, const struct sockaddr_storage *addrs, size_t n,
                                 const char *error /* NULL on success, then n >= 1 */);

/* Sets up the resolver on loop. nameserver: a numeric HOST and PORT (0 means 53) that is asked
 * instead of /etc/resolv.conf's servers, and then the hosts file is not consulted either; NULL:
 * the system configuration (resolv.conf, hosts file). Returns 0, or -1 with a message in err.
 * One resolver per process. */
int resolver_init(struct ev_loop *loop, const struct config_addr *nameserver, char *err,
                  size_t errlen);
/* Drops every query without calling back, closes the sockets. Not from inside a resolver
 * callback. A no-op when not initialised. */
void resolver_fini(void);

/* Where to connect for server-to-server traffic to domain (UTF-8, U- or A-labels, or an IP
 * literal such as "[::1]"). Queries _xmpps-server._tcp and _xmpp-server._tcp SRV in parallel and
 * merges them in RFC 2782 order (priority ascending, weighted random within a priority);
 * without SRV records the answer is {domain, 5269, STARTTLS} (RFC 6120 §3.2.2); a lone "."
 * target for _xmpp-server is an error (RFC 2782: service decidedly not available). A lookup
 * failure other than "no such name / no records" is an error, not a fallback. Requires
 * resolver_init(). Never returns NULL. */
struct resolver_query *resolver_xmpp_server(const char *domain, resolver_xmpp_fn fn, void *ud);

/* The IPv4 and IPv6 addresses of host (a name or an IP literal, bracketed or not; literals are
 * answered without DNS), each with port set. Order as c-ares sorts them (RFC 6724). Requires
 * resolver_init(). Never returns NULL. */
struct resolver_query *resolver_addresses(const char *host, uint16_t port, resolver_addr_fn fn,
                                          void *ud);

/* Stops a query: its callback never runs. NULL is a no-op. */
void resolver_cancel(struct resolver_query *q);

#endif
