/* chanbind.h — TLS channel-binding data for SCRAM-*-PLUS. */
#ifndef ISTHMUS_CHANBIND_H
#define ISTHMUS_CHANBIND_H

#include <openssl/ssl.h>
#include <stddef.h>

#define CHANBIND_MAX 64

/* RFC 9266 tls-exporter: 32 bytes of keying material with label "EXPORTER-Channel-Binding".
 * Only defined for TLS 1.3, or TLS 1.2 with the extended master secret; returns -1 otherwise. */
int chanbind_exporter(SSL *ssl, unsigned char out[CHANBIND_MAX], size_t *len);

/* RFC 5929 §4.1 tls-server-end-point: hash of the server certificate with the certificate's
 * signature hash, SHA-256 when that is MD5 or SHA-1. Returns -1 when it cannot be computed. */
int chanbind_server_end_point(X509 *server_cert, unsigned char out[CHANBIND_MAX], size_t *len);

#endif
