/* tls.h — server TLS contexts, one per virtual host, chosen by SNI (or by the stream's `to` for
 * STARTTLS). TLS >= the configured minimum (1.2 by default), SSL_MODE_RELEASE_BUFFERS (idle
 * connections keep ~14 KB instead of ~48 KB, shared/research/libraries.md §5), no renegotiation,
 * ALPN "xmpp-client" for direct TLS (XEP-0368). A host without a configured certificate gets a
 * self-signed one generated on first start under DATA_DIR/certs/. */
#ifndef ISTHMUS_TLS_H
#define ISTHMUS_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "isthmus/config.h"

/* Builds a context per host in cfg. Returns 0, or -1 with a message in err. */
int tls_init(const struct config *cfg, char *err, size_t errlen);
void tls_fini(void);

/* The context for a host (NULL when unknown); tls_default_ctx() is the first host's, used before
 * SNI is known. */
SSL_CTX *tls_host_ctx(const char *host);
SSL_CTX *tls_default_ctx(void);
/* The client-side context for outgoing s2s from host (its certificate, the [s2s] ca_file). */
SSL_CTX *tls_client_ctx(const char *host);
/* For a served subdomain (a MUC service, a component) without a [host] of its own: the
 * contexts of the host it is a subdomain of (whose certificate names *.host), else the
 * default host's. */
SSL_CTX *tls_host_ctx_for(const char *domain);
SSL_CTX *tls_client_ctx_for(const char *domain);

/* Creates a self-signed ECDSA P-256 certificate for name (SAN: name and *.name) valid for days,
 * writing PEM files (key mode 0600). Returns 0 or -1 with err. */
int tls_make_self_signed(const char *name, const char *cert_path, const char *key_path, int days,
                         char *err, size_t errlen);

#endif
