/* chanbind.c — TLS channel-binding data (RFC 9266 tls-exporter, RFC 5929 tls-server-end-point). */
#include "isthmus/chanbind.h"

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#define CHANBIND_EXPORTER_LEN 32

/* RFC 9266 §2: tls-exporter is defined for TLS 1.3; for TLS 1.2 only with the extended master
 * secret (RFC 7627), without which the exporter output is not unique to the connection. */
int chanbind_exporter(SSL *ssl, unsigned char out[CHANBIND_MAX], size_t *len)
{
    static const char label[] = "EXPORTER-Channel-Binding";

    if (!ssl || !SSL_is_init_finished(ssl))
        return -1;
    int v = SSL_version(ssl);
    if (v != TLS1_3_VERSION && !(v == TLS1_2_VERSION && SSL_get_extms_support(ssl) == 1))
        return -1;
    /* RFC 9266 §2: no context value. In TLS 1.3 (RFC 8446 §7.5) an absent context and an empty
     * one derive the same secret; for TLS 1.2 this passes none, as other stacks do. */
    if (SSL_export_keying_material(ssl, out, CHANBIND_EXPORTER_LEN, label, sizeof(label) - 1, NULL,
                                   0, 0) != 1)
        return -1;
    *len = CHANBIND_EXPORTER_LEN;
    return 0;
}

/* RFC 5929 §4.1: the hash is the certificate's signature hash, except that MD5 and SHA-1 are
 * replaced by SHA-256. Signatures without a single hash (Ed25519, Ed448) have no defined
 * binding. */
int chanbind_server_end_point(X509 *server_cert, unsigned char out[CHANBIND_MAX], size_t *len)
{
    int mdnid = NID_undef, pknid = NID_undef;

    if (!server_cert || !X509_get_signature_info(server_cert, &mdnid, &pknid, NULL, NULL))
        return -1;
    if (mdnid == NID_md5 || mdnid == NID_sha1)
        mdnid = NID_sha256;
    if (mdnid == NID_undef)
        return -1;
    const char *name = OBJ_nid2sn(mdnid);
    EVP_MD *md = name ? EVP_MD_fetch(NULL, name, NULL) : NULL;
    if (!md)
        return -1;
    unsigned int n = 0;
    int ok = EVP_MD_get_size(md) <= CHANBIND_MAX && X509_digest(server_cert, md, out, &n) == 1;
    EVP_MD_free(md);
    if (!ok)
        return -1;
    *len = n;
    return 0;
}
