#include "isthmus/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

struct tls_host {
    char *name;
    SSL_CTX *ctx;        /* server side: c2s, incoming s2s */
    SSL_CTX *client_ctx; /* client side: outgoing s2s, presenting the same certificate */
};

static struct tls_host *hosts;
static size_t nhosts;

static void set_ssl_err(char *err, size_t errlen, const char *what)
{
    char eb[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, eb, sizeof eb);
    snprintf(err, errlen, "%s%s%s", what, *eb ? ": " : "", eb);
    ERR_clear_error();
}

SSL_CTX *tls_host_ctx(const char *host)
{
    if (!host)
        return NULL;
    for (size_t i = 0; i < nhosts; i++)
        if (strcasecmp(hosts[i].name, host) == 0)
            return hosts[i].ctx;
    return NULL;
}

SSL_CTX *tls_default_ctx(void)
{
    return nhosts ? hosts[0].ctx : NULL;
}

/* SNI: switch to the named host's certificate; unknown names keep the default (the stream
 * header's `to` is checked later and answered with host-unknown). */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    (void)arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *ctx = tls_host_ctx(name);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

/* XEP-0368 §3: direct TLS clients offer ALPN "xmpp-client", servers "xmpp-server". A peer
 * offering only other protocols is refused; one offering none is served. (The stream's content
 * namespace then tells a client from a server.) */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char ours[] = "\x0bxmpp-client\x0bxmpp-server";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof ours - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

int tls_make_self_signed(const char *name, const char *cert_path, const char *key_path, int days,
                         char *err, size_t errlen)
{
    int rc = -1;
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    FILE *f = NULL;
    if (!pkey || !x) {
        set_ssl_err(err, errlen, "cannot generate a key");
        goto out;
    }
    unsigned char serial[16];
    random_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
    X509_set_pubkey(x, pkey);
    X509_NAME *xn = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(xn, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, xn);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    char *san = xasprintf("DNS:%s,DNS:*.%s", name, name);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    free(san);
    if (!ext) {
        set_ssl_err(err, errlen, "cannot build subjectAltName");
        goto out;
    }
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!X509_sign(x, pkey, EVP_sha256())) {
        set_ssl_err(err, errlen, "cannot sign certificate");
        goto out;
    }
    mode_t old = umask(077);
    f = fopen(key_path, "w");
    umask(old);
    if (!f || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL)) {
        snprintf(err, errlen, "%s: cannot write key: %s", key_path, strerror(errno));
        goto out;
    }
    fclose(f);
    f = fopen(cert_path, "w");
    if (!f || !PEM_write_X509(f, x)) {
        snprintf(err, errlen, "%s: cannot write certificate: %s", cert_path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (f)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

static SSL_CTX *make_ctx(const struct config *cfg, const char *cert, const char *key, char *err,
                         size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        set_ssl_err(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version ? cfg->tls_min_version
                                                            : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (cfg->tls_ciphers && !SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers)) {
        set_ssl_err(err, errlen, "[tls] ciphers");
        goto fail;
    }
    if (cfg->tls_ciphersuites && !SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites)) {
        set_ssl_err(err, errlen, "[tls] ciphersuites");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        char what[512];
        snprintf(what, sizeof what, "%s: cannot load certificate", cert);
        set_ssl_err(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        char what[512];
        snprintf(what, sizeof what, "%s: cannot load key", key);
        set_ssl_err(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s does not match %s", key, cert);
        goto fail;
    }
    /* Incoming s2s peers may present certificates (SASL EXTERNAL, XEP-0178): judged against the
     * same trust store outgoing connections use. */
    if (cfg->s2s_ca_file && access(cfg->s2s_ca_file, R_OK) == 0)
        SSL_CTX_load_verify_locations(ctx, cfg->s2s_ca_file, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"isthmus", 7);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Outgoing s2s: verification runs (SSL_VERIFY_NONE still verifies and records the result) but
 * never aborts the handshake — s2s decides afterwards between SASL EXTERNAL and dialback. */
static SSL_CTX *make_client_ctx(const struct config *cfg, const char *cert, const char *key,
                                char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        set_ssl_err(err, errlen, "SSL_CTX_new (client)");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version ? cfg->tls_min_version
                                                            : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (cfg->s2s_ca_file && access(cfg->s2s_ca_file, R_OK) == 0 &&
        SSL_CTX_load_verify_locations(ctx, cfg->s2s_ca_file, NULL) != 1) {
        char what[512];
        snprintf(what, sizeof what, "%s: cannot load CA certificates", cfg->s2s_ca_file);
        set_ssl_err(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        set_ssl_err(err, errlen, "client certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *tls_client_ctx(const char *host)
{
    for (size_t i = 0; host && i < nhosts; i++)
        if (strcasecmp(hosts[i].name, host) == 0)
            return hosts[i].client_ctx;
    return NULL;
}

int tls_init(const struct config *cfg, char *err, size_t errlen)
{
    hosts = xcalloc(cfg->n_hosts, sizeof *hosts);
    for (size_t i = 0; i < cfg->n_hosts; i++) {
        const struct config_host *h = &cfg->hosts[i];
        char *cert = NULL, *key = NULL;
        if (h->certificate) {
            cert = xstrdup(h->certificate);
            key = xstrdup(h->key);
        } else {
            char *dir = xasprintf("%s/certs", cfg->data_dir);
            mkdir(dir, 0700);
            cert = xasprintf("%s/%s.crt", dir, h->name);
            key = xasprintf("%s/%s.key", dir, h->name);
            free(dir);
            if (!file_exists(cert) || !file_exists(key)) {
                if (tls_make_self_signed(h->name, cert, key, 3650, err, errlen) < 0) {
                    free(cert);
                    free(key);
                    return -1;
                }
                log_warn(NULL, "host %s: no certificate configured; generated a self-signed one "
                         "in %s (clients will not trust it)", h->name, cert);
            }
        }
        SSL_CTX *ctx = make_ctx(cfg, cert, key, err, errlen);
        SSL_CTX *client = ctx ? make_client_ctx(cfg, cert, key, err, errlen) : NULL;
        free(cert);
        free(key);
        if (!client) {
            SSL_CTX_free(ctx);
            return -1;
        }
        hosts[nhosts].name = xstrdup(h->name);
        hosts[nhosts].ctx = ctx;
        hosts[nhosts].client_ctx = client;
        nhosts++;
    }
    return 0;
}

void tls_fini(void)
{
    for (size_t i = 0; i < nhosts; i++) {
        SSL_CTX_free(hosts[i].ctx);
        SSL_CTX_free(hosts[i].client_ctx);
        free(hosts[i].name);
    }
    free(hosts);
    hosts = NULL;
    nhosts = 0;
}

/* The host whose name `domain` is, or ends with ("." + host). */
static struct tls_host *host_for(const char *domain)
{
    size_t dl = domain ? strlen(domain) : 0;
    for (size_t i = 0; i < nhosts; i++) {
        size_t hl = strlen(hosts[i].name);
        if (dl == hl && strcasecmp(domain, hosts[i].name) == 0)
            return &hosts[i];
        if (dl > hl + 1 && domain[dl - hl - 1] == '.' &&
            strcasecmp(domain + dl - hl, hosts[i].name) == 0)
            return &hosts[i];
    }
    return nhosts ? &hosts[0] : NULL;
}

SSL_CTX *tls_host_ctx_for(const char *domain)
{
    struct tls_host *h = host_for(domain);
    return h ? h->ctx : NULL;
}

SSL_CTX *tls_client_ctx_for(const char *domain)
{
    struct tls_host *h = host_for(domain);
    return h ? h->client_ctx : NULL;
}
