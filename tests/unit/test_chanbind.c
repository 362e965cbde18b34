/* test_chanbind.c — channel bindings over real TLS handshakes (socketpair, in-memory certificates):
 * both ends derive identical tls-exporter bytes (TLS 1.3, TLS 1.2 + EMS), none without EMS, and
 * tls-server-end-point picks the right hash (RFC 5929 §4.1). */
#include "isthmus/chanbind.h"
#include "test.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

static EVP_PKEY *rsa_key, *ec_key, *ed_key;

static X509 *make_cert(EVP_PKEY *key, const EVP_MD *md)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    if (X509_sign(x, key, md) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Hash of the DER encoding, computed independently of chanbind.c. */
static size_t der_hash(X509 *x, const EVP_MD *md, unsigned char out[EVP_MAX_MD_SIZE])
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    unsigned int len = 0;
    if (n <= 0 || EVP_Digest(der, (size_t)n, out, &len, md, NULL) != 1)
        len = 0;
    OPENSSL_free(der);
    return len;
}

struct tls_pair {
    SSL_CTX *sctx, *cctx;
    SSL *server, *client;
    int fds[2];
};

static void pair_free(struct tls_pair *p)
{
    SSL_free(p->server);
    SSL_free(p->client);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    if (p->fds[0] >= 0)
        close(p->fds[0]);
    if (p->fds[1] >= 0)
        close(p->fds[1]);
}

static bool step_ok(SSL *ssl, int rc)
{
    if (rc == 1)
        return true;
    int e = SSL_get_error(ssl, rc);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* Runs a handshake between a server (cert/key, version range) and a client over a non-blocking
 * socketpair. Returns true when both ends completed it. */
static bool handshake(struct tls_pair *p, X509 *cert, EVP_PKEY *key, int max_version,
                      uint64_t extra_opts)
{
    memset(p, 0, sizeof(*p));
    p->fds[0] = p->fds[1] = -1;
    p->sctx = SSL_CTX_new(TLS_server_method());
    p->cctx = SSL_CTX_new(TLS_client_method());
    if (!p->sctx || !p->cctx)
        return false;
    SSL_CTX_set_min_proto_version(p->sctx, TLS1_2_VERSION);
    SSL_CTX_set_min_proto_version(p->cctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(p->sctx, max_version);
    SSL_CTX_set_max_proto_version(p->cctx, max_version);
    SSL_CTX_set_options(p->sctx, extra_opts);
    SSL_CTX_set_options(p->cctx, extra_opts);
    if (SSL_CTX_use_certificate(p->sctx, cert) != 1 || SSL_CTX_use_PrivateKey(p->sctx, key) != 1)
        return false;
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL);

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, p->fds) != 0)
        return false;
    for (int i = 0; i < 2; i++)
        fcntl(p->fds[i], F_SETFL, fcntl(p->fds[i], F_GETFL) | O_NONBLOCK);
    p->server = SSL_new(p->sctx);
    p->client = SSL_new(p->cctx);
    SSL_set_fd(p->server, p->fds[0]);
    SSL_set_fd(p->client, p->fds[1]);
    SSL_set_accept_state(p->server);
    SSL_set_connect_state(p->client);

    int rs = 0, rc = 0;
    for (int i = 0; i < 1000 && (rs != 1 || rc != 1); i++) {
        if (rc != 1) {
            ERR_clear_error();
            rc = SSL_do_handshake(p->client);
            if (!step_ok(p->client, rc))
                return false;
        }
        if (rs != 1) {
            ERR_clear_error();
            rs = SSL_do_handshake(p->server);
            if (!step_ok(p->server, rs))
                return false;
        }
    }
    return rs == 1 && rc == 1;
}

static void check_exporters_match(struct tls_pair *p)
{
    unsigned char a[CHANBIND_MAX], b[CHANBIND_MAX], zero[32] = {0};
    size_t al = 0, bl = 0;
    CHECK(chanbind_exporter(p->server, a, &al) == 0);
    CHECK(chanbind_exporter(p->client, b, &bl) == 0);
    CHECK(al == 32 && bl == 32);
    CHECK(memcmp(a, b, 32) == 0);
    CHECK(memcmp(a, zero, 32) != 0);
}

static void test_tls13_exporter(void)
{
    X509 *cert = make_cert(ec_key, EVP_sha256());
    struct tls_pair p;
    CHECK(cert != NULL);
    CHECK(handshake(&p, cert, ec_key, TLS1_3_VERSION, 0));
    CHECK(SSL_version(p.server) == TLS1_3_VERSION);
    check_exporters_match(&p);

    /* RFC 8446 §7.5: in TLS 1.3 "no context" equals an empty context, as RFC 9266 specifies. */
    unsigned char a[CHANBIND_MAX], ref[32];
    size_t al = 0;
    CHECK(chanbind_exporter(p.client, a, &al) == 0);
    CHECK(SSL_export_keying_material(p.client, ref, 32, "EXPORTER-Channel-Binding", 24,
                                     (const unsigned char *)"", 0, 1) == 1);
    CHECK(memcmp(a, ref, 32) == 0);

    /* Another connection gets other bytes. */
    struct tls_pair q;
    unsigned char b[CHANBIND_MAX];
    size_t bl = 0;
    CHECK(handshake(&q, cert, ec_key, TLS1_3_VERSION, 0));
    CHECK(chanbind_exporter(q.server, b, &bl) == 0);
    CHECK(memcmp(a, b, 32) != 0);

    /* The server's certificate gives the same end-point binding on both ends. */
    unsigned char s_ep[CHANBIND_MAX], c_ep[CHANBIND_MAX];
    size_t sl = 0, cl = 0;
    CHECK(chanbind_server_end_point(SSL_get_certificate(p.server), s_ep, &sl) == 0);
    CHECK(chanbind_server_end_point(SSL_get0_peer_certificate(p.client), c_ep, &cl) == 0);
    CHECK(sl == 32 && sl == cl && memcmp(s_ep, c_ep, sl) == 0);

    pair_free(&p);
    pair_free(&q);
    X509_free(cert);
}

static void test_tls12_exporter(void)
{
    X509 *cert = make_cert(rsa_key, EVP_sha256());
    struct tls_pair p;
    CHECK(cert != NULL);
    CHECK(handshake(&p, cert, rsa_key, TLS1_2_VERSION, 0));
    CHECK(SSL_version(p.server) == TLS1_2_VERSION);
    CHECK(SSL_get_extms_support(p.server) == 1);
    check_exporters_match(&p);
    pair_free(&p);

    /* Without the extended master secret the exporter is not a channel binding (RFC 9266 §2). */
    CHECK(handshake(&p, cert, rsa_key, TLS1_2_VERSION, SSL_OP_NO_EXTENDED_MASTER_SECRET));
    CHECK(SSL_version(p.server) == TLS1_2_VERSION);
    CHECK(SSL_get_extms_support(p.server) != 1);
    unsigned char a[CHANBIND_MAX];
    size_t al = 0;
    CHECK(chanbind_exporter(p.server, a, &al) == -1);
    CHECK(chanbind_exporter(p.client, a, &al) == -1);
    /* end-point still works there */
    unsigned char ep[CHANBIND_MAX];
    CHECK(chanbind_server_end_point(SSL_get0_peer_certificate(p.client), ep, &al) == 0);
    pair_free(&p);
    X509_free(cert);
}

static void test_exporter_before_handshake(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    unsigned char a[CHANBIND_MAX];
    size_t al = 0;
    CHECK(chanbind_exporter(ssl, a, &al) == -1);
    CHECK(chanbind_exporter(NULL, a, &al) == -1);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
}

static void check_end_point(EVP_PKEY *key, const EVP_MD *sign_md, const EVP_MD *want_md,
                            size_t want_len)
{
    X509 *cert = make_cert(key, sign_md);
    CHECK(cert != NULL);
    if (!cert)
        return;
    unsigned char got[CHANBIND_MAX], want[EVP_MAX_MD_SIZE];
    size_t len = 0;
    CHECK(chanbind_server_end_point(cert, got, &len) == 0);
    CHECK(len == want_len);
    CHECK(der_hash(cert, want_md, want) == want_len);
    CHECK(memcmp(got, want, want_len) == 0);
    X509_free(cert);
}

static void test_server_end_point(void)
{
    check_end_point(rsa_key, EVP_sha256(), EVP_sha256(), 32);
    check_end_point(ec_key, EVP_sha256(), EVP_sha256(), 32);
    /* RFC 5929 §4.1: SHA-1 and MD5 are replaced by SHA-256 */
    check_end_point(rsa_key, EVP_sha1(), EVP_sha256(), 32);
    check_end_point(ec_key, EVP_sha1(), EVP_sha256(), 32);
    check_end_point(rsa_key, EVP_md5(), EVP_sha256(), 32);
    /* other hashes are used as they are */
    check_end_point(ec_key, EVP_sha384(), EVP_sha384(), 48);
    check_end_point(rsa_key, EVP_sha512(), EVP_sha512(), 64);

    /* Ed25519 signs without a separate hash: undefined binding */
    X509 *ed = make_cert(ed_key, NULL);
    unsigned char out[CHANBIND_MAX];
    size_t len = 0;
    CHECK(ed != NULL);
    CHECK(chanbind_server_end_point(ed, out, &len) == -1);
    CHECK(chanbind_server_end_point(NULL, out, &len) == -1);
    X509_free(ed);
}

int main(void)
{
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!rsa_key || !ec_key || !ed_key) {
        fprintf(stderr, "key generation failed\n");
        return 1;
    }
    TEST_RUN(test_tls13_exporter);
    TEST_RUN(test_tls12_exporter);
    TEST_RUN(test_exporter_before_handshake);
    TEST_RUN(test_server_end_point);
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ed_key);
    return TEST_DONE();
}
