/* certfp.c — per-user client certificates for SASL EXTERNAL (certfp.h). */
#include "certfp.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isthmus/util.h"

#define CERTFP_CN_MAX 64 /* RFC 5280 Appendix A: ub-common-name, in characters */

static void set_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char detail[160] = "";
    if (e)
        ERR_error_string_n(e, detail, sizeof detail);
    ERR_clear_error();
    snprintf(err, errlen, "%s%s%s", what, *detail ? ": " : "", detail);
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

char *certfp_path(const char *dir, const char *jid)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (!EVP_Digest(jid, strlen(jid), md, &n, EVP_sha256(), NULL))
        abort(); /* SHA-256 of a string cannot fail short of a broken libcrypto */
    to_hex(md, n, hex);
    return xasprintf("%s/%s.pem", dir, hex);
}

/* The CN: the JID, cut to 64 characters (never inside a UTF-8 sequence) when longer. */
static char *common_name(const char *jid)
{
    size_t chars = 0, i = 0;
    while (jid[i] && chars < CERTFP_CN_MAX) {
        i++;
        while (((unsigned char)jid[i] & 0xC0) == 0x80)
            i++;
        chars++;
    }
    return xstrndup(jid, i);
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* A self-signed client certificate for jid (RFC 5280: v3, random positive serial, clientAuth). */
static X509 *make_cert(EVP_PKEY *pkey, const char *jid, char *err, size_t errlen)
{
    X509 *x = X509_new();
    if (!x) {
        set_err(err, errlen, "cannot allocate a certificate");
        return NULL;
    }
    unsigned char serial[16];
    random_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01; /* positive, and 16 bytes long */
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    char *cn = common_name(jid);
    bool ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) && X509_set_version(x, 2) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_time_adj_ex(X509_getm_notAfter(x), CERTFP_DAYS, 0, NULL) &&
              X509_set_pubkey(x, pkey) &&
              X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                         (const unsigned char *)cn, -1, -1, 0) &&
              X509_set_issuer_name(x, X509_get_subject_name(x)) &&
              add_ext(x, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
              add_ext(x, NID_key_usage, "critical,digitalSignature") == 0 &&
              add_ext(x, NID_ext_key_usage, "clientAuth") == 0 &&
              X509_sign(x, pkey, EVP_sha256()) > 0;
    BN_free(bn);
    free(cn);
    if (!ok) {
        set_err(err, errlen, "cannot build the certificate");
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Writes certificate and key to path through a temporary file in the same directory (0600),
 * then renames it into place. */
static int write_pem(const char *path, X509 *x, EVP_PKEY *pkey, char *err, size_t errlen)
{
    char *tmp = xasprintf("%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    bool ok = f && fchmod(fd, 0600) == 0 && PEM_write_X509(f, x) &&
              PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) && fflush(f) == 0 &&
              fsync(fd) == 0;
    int saved = errno;
    if (f)
        ok = fclose(f) == 0 && ok;
    else
        close(fd);
    if (ok && rename(tmp, path) != 0) {
        saved = errno;
        ok = false;
    }
    if (!ok) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(saved));
        unlink(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

static int create(const char *path, const char *jid, char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!pkey) {
        set_err(err, errlen, "cannot generate a P-256 key");
        return -1;
    }
    X509 *x = make_cert(pkey, jid, err, errlen);
    int rc = x ? write_pem(path, x, pkey, err, errlen) : -1;
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

/* Loads the certificate and key at path and checks that they belong together. */
static int check_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    rewind(f);
    EVP_PKEY *pkey = x ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    fclose(f);
    int rc = 0;
    if (!x || !pkey) {
        set_err(err, errlen, x ? "no private key in the certificate file"
                               : "no certificate in the certificate file");
        rc = -1;
    } else if (X509_check_private_key(x, pkey) != 1) {
        set_err(err, errlen, "the key in the certificate file does not match its certificate");
        rc = -1;
    }
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

char *certfp_ensure(const char *dir, const char *jid, char *err, size_t errlen)
{
    if (!jid || !*jid) {
        snprintf(err, errlen, "no JID");
        return NULL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", dir);
        return NULL;
    }
    if ((st.st_mode & 077) && chmod(dir, 0700) != 0) {
        snprintf(err, errlen, "%s: cannot make it private: %s", dir, strerror(errno));
        return NULL;
    }
    char *path = certfp_path(dir, jid);
    int rc;
    if (access(path, F_OK) == 0) {
        rc = check_file(path, err, errlen);
    } else if (errno == ENOENT) {
        rc = create(path, jid, err, errlen);
    } else {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc < 0) {
        free(path);
        return NULL;
    }
    return path;
}

int certfp_fingerprints(const char *path, char sha256[CERTFP_SHA256_HEX],
                        char sha512[CERTFP_SHA512_HEX], char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        set_err(err, errlen, "no certificate in the certificate file");
        return -1;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int rc = 0;
    if (sha256) {
        if (X509_digest(x, EVP_sha256(), md, &n) && n == 32)
            to_hex(md, n, sha256);
        else
            rc = -1;
    }
    if (sha512 && rc == 0) {
        if (X509_digest(x, EVP_sha512(), md, &n) && n == 64)
            to_hex(md, n, sha512);
        else
            rc = -1;
    }
    if (rc < 0)
        set_err(err, errlen, "cannot compute the fingerprint");
    X509_free(x);
    return rc;
}

char *certfp_dir(struct gw *gw)
{
    return xasprintf("%s/%s-certs", gw_config(gw)->data_dir, gw_domain(gw));
}

char *certfp_for_user(struct gw *gw, const char *jid, char *err, size_t errlen)
{
    char *dir = certfp_dir(gw);
    char *path = certfp_ensure(dir, jid, err, errlen);
    free(dir);
    return path;
}
