/* sasl.c — server-side SASL: SCRAM-SHA-1/-256 (+PLUS) and PLAIN, sans I/O. See sasl.h.
 *
 * Security notes:
 * - Every client message is bounded (SASL_MAX_MESSAGE) and must be NUL-free UTF-8 before it is
 *   parsed, so the parsers below work on C strings.
 * - An unknown user gets a challenge that looks like a real one (salt derived from a per-process
 *   secret and the username, the iteration count last seen for a real account) and fails only at
 *   the final step, so SCRAM does not reveal which accounts exist.
 * - Secrets (salted passwords, client keys, prepared passwords) are wiped before release. */
#include "isthmus/sasl.h"

#include "isthmus/log.h"
#include "isthmus/util.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stringprep.h>

#define SASL_MAX_MESSAGE 4096
#define SASL_MAX_PASSWORD 1024 /* bytes, before SASLprep */
#define SCRAM_NONCE_LEN 32     /* server part; RFC 5802 §5.1 only asks for "fresh" */
#define SCRAM_FAKE_SALT_LEN 16
#define SCRAM_DEFAULT_ITERATIONS 4096

enum sasl_mech { MECH_PLAIN, MECH_SCRAM };

/* ST_START_EMPTY: the client sent no initial response and got an empty challenge (RFC 6120
 * §6.4.2); ST_FINAL: SCRAM server-first sent, waiting for client-final. */
enum sasl_state { ST_START, ST_START_EMPTY, ST_FINAL, ST_DONE };

struct sasl_session {
    enum sasl_mech mech;
    enum scram_hash hash;
    bool plus;
    bool plus_offered; /* a -PLUS mechanism was offered on this channel (RFC 5802 §6) */
    bool accept_y;     /* sasl_channel.client_lacks_cb */
    bool unknown_cb;   /* the client asked for a binding type we do not have */
    enum sasl_state state;
    bool ok;
    sasl_creds_fn creds_fn;
    void *ud;
    unsigned char *exporter;
    size_t exporter_len;
    unsigned char *endpoint;
    size_t endpoint_len;

    char *username;
    char *authzid;

    /* SCRAM, between client-first and client-final */
    char *gs2_header;
    const unsigned char *cb_data; /* points into exporter/endpoint, NULL without binding */
    size_t cb_len;
    char *client_first_bare;
    char *server_first;
    char *nonce;
    bool unknown_user;
    struct scram_creds creds;
};

static const struct {
    const char *name;
    enum sasl_mech mech;
    enum scram_hash hash;
    bool plus;
} mech_table[] = {
    {"SCRAM-SHA-256-PLUS", MECH_SCRAM, SCRAM_SHA256, true},
    {"SCRAM-SHA-1-PLUS", MECH_SCRAM, SCRAM_SHA1, true},
    {"SCRAM-SHA-256", MECH_SCRAM, SCRAM_SHA256, false},
    {"SCRAM-SHA-1", MECH_SCRAM, SCRAM_SHA1, false},
    {"PLAIN", MECH_PLAIN, SCRAM_SHA256, false},
};

static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha1, *md_sha256;
static unsigned char fake_secret[32];
/* Iteration count of the last real account seen per hash, so fake challenges look current. */
static atomic_uint fake_iterations[2] = {SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_ITERATIONS};
static char *test_nonce;

/* Implicit fetches by name take global locks in OpenSSL 3.0; fetch the digests once. */
static void crypto_init(void)
{
    md_sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    md_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    if (!md_sha1 || !md_sha256) {
        fputs("isthmus: cannot fetch SHA-1/SHA-256 from OpenSSL\n", stderr);
        abort();
    }
    random_bytes(fake_secret, sizeof(fake_secret));
}

static const EVP_MD *scram_md(enum scram_hash h)
{
    pthread_once(&crypto_once, crypto_init);
    return h == SCRAM_SHA256 ? md_sha256 : md_sha1;
}

static size_t scram_key_len(enum scram_hash h)
{
    return h == SCRAM_SHA256 ? 32 : 20;
}

static bool hmac(enum scram_hash h, const unsigned char *key, size_t key_len, const void *data,
                 size_t len, unsigned char *out)
{
    unsigned int out_len = 0;
    return HMAC(scram_md(h), key, (int)key_len, data, len, out, &out_len) != NULL;
}

static bool digest(enum scram_hash h, const unsigned char *in, size_t len, unsigned char *out)
{
    return EVP_Digest(in, len, out, NULL, scram_md(h), NULL) == 1;
}

static void free_secret(char *p, size_t cap)
{
    if (p) {
        OPENSSL_cleanse(p, cap);
        free(p);
    }
}

/* RFC 4013 SASLprep applied as a "query" (unassigned code points allowed, RFC 3454 §7).
 * Returns a new string (its buffer size in *cap, for wiping), or NULL when s is not valid UTF-8
 * or maps to prohibited output. */
static char *saslprep(const char *s, size_t len, size_t *cap)
{
    if (memchr(s, '\0', len) || !utf8_valid(s, len))
        return NULL;
    size_t size = len * 4 + 16;
    for (int tries = 0; tries < 3; tries++, size *= 4) {
        char *b = xmalloc(size);
        memcpy(b, s, len);
        b[len] = '\0';
        int rc = stringprep(b, size, 0, stringprep_saslprep);
        if (rc == STRINGPREP_OK) {
            *cap = size;
            return b;
        }
        free_secret(b, size);
        if (rc != STRINGPREP_TOO_SMALL_BUFFER)
            return NULL;
    }
    return NULL;
}

/* Also returns -1 for parameters no account can have: a salt of 0 or more than SCRAM_MAX_SALT
 * bytes, 0 iterations, more than INT_MAX iterations, a password over SASL_MAX_PASSWORD bytes. */
int scram_derive(enum scram_hash h, const char *password, const unsigned char *salt,
                 size_t salt_len, unsigned iterations, struct scram_creds *out)
{
    if (!password || !salt || !out || salt_len == 0 || salt_len > SCRAM_MAX_SALT ||
        iterations == 0 || iterations > INT_MAX)
        return -1;
    size_t plen = strlen(password);
    if (plen == 0 || plen > SASL_MAX_PASSWORD)
        return -1;
    size_t cap = 0;
    char *prep = saslprep(password, plen, &cap);
    if (!prep)
        return -1;
    size_t prep_len = strlen(prep);
    if (prep_len == 0) {
        free_secret(prep, cap);
        return -1;
    }

    /* RFC 5802 §3: SaltedPassword := Hi(Normalize(password), salt, i) */
    size_t klen = scram_key_len(h);
    unsigned char salted[SCRAM_MAX_KEY], client_key[SCRAM_MAX_KEY];
    bool ok = PKCS5_PBKDF2_HMAC(prep, (int)prep_len, salt, (int)salt_len, (int)iterations,
                                scram_md(h), (int)klen, salted) == 1;
    free_secret(prep, cap);
    ok = ok && hmac(h, salted, klen, "Client Key", 10, client_key) &&
         digest(h, client_key, klen, out->stored_key) &&
         hmac(h, salted, klen, "Server Key", 10, out->server_key);
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    if (!ok)
        return -1;
    memcpy(out->salt, salt, salt_len);
    out->salt_len = salt_len;
    out->iterations = iterations;
    out->key_len = klen;
    return 0;
}

static bool has_exporter(const struct sasl_channel *ch)
{
    return ch && ch->tls && ch->exporter && ch->exporter_len > 0;
}

static bool has_endpoint(const struct sasl_channel *ch)
{
    return ch && ch->tls && ch->endpoint && ch->endpoint_len > 0;
}

static bool mech_offered(size_t i, const struct sasl_channel *ch, bool allow_plain)
{
    if (mech_table[i].plus)
        return has_exporter(ch) || has_endpoint(ch);
    if (mech_table[i].mech == MECH_PLAIN)
        return allow_plain;
    return true;
}

size_t sasl_mechanisms(const struct sasl_channel *ch, bool allow_plain, const char **names,
                       size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_LEN(mech_table) && n < max; i++)
        if (mech_offered(i, ch, allow_plain))
            names[n++] = mech_table[i].name;
    return n;
}

size_t sasl_channel_bindings(const struct sasl_channel *ch, const char **names, size_t max)
{
    size_t n = 0;
    if (has_exporter(ch) && n < max)
        names[n++] = "tls-exporter";
    if (has_endpoint(ch) && n < max)
        names[n++] = "tls-server-end-point";
    return n;
}

static unsigned char *copy_bytes(const unsigned char *p, size_t n)
{
    unsigned char *d = xmalloc(n);
    memcpy(d, p, n);
    return d;
}

struct sasl_session *sasl_new(const char *mech, const struct sasl_channel *ch, bool allow_plain,
                              sasl_creds_fn creds, void *ud)
{
    if (!mech || !creds)
        return NULL;
    for (size_t i = 0; i < ARRAY_LEN(mech_table); i++) {
        if (strcmp(mech, mech_table[i].name) != 0 || !mech_offered(i, ch, allow_plain))
            continue;
        struct sasl_session *s = xcalloc(1, sizeof(*s));
        s->mech = mech_table[i].mech;
        s->hash = mech_table[i].hash;
        s->plus = mech_table[i].plus;
        s->plus_offered = has_exporter(ch) || has_endpoint(ch);
        s->accept_y = ch->client_lacks_cb;
        s->state = ST_START;
        s->creds_fn = creds;
        s->ud = ud;
        if (has_exporter(ch)) {
            s->exporter = copy_bytes(ch->exporter, ch->exporter_len);
            s->exporter_len = ch->exporter_len;
        }
        if (has_endpoint(ch)) {
            s->endpoint = copy_bytes(ch->endpoint, ch->endpoint_len);
            s->endpoint_len = ch->endpoint_len;
        }
        return s;
    }
    return NULL;
}

void sasl_free(struct sasl_session *s)
{
    if (!s)
        return;
    free(s->exporter);
    free(s->endpoint);
    free(s->username);
    free(s->authzid);
    free(s->gs2_header);
    free(s->client_first_bare);
    free(s->server_first);
    free(s->nonce);
    OPENSSL_cleanse(&s->creds, sizeof(s->creds));
    free(s);
}

const char *sasl_username(const struct sasl_session *s)
{
    return s && s->ok ? s->username : NULL;
}

const char *sasl_authzid(const struct sasl_session *s)
{
    return s && s->ok ? s->authzid : NULL;
}

/* Test-only hook (tests/unit/test_sasl.c): a fixed server nonce part so the RFC 5802 and
 * RFC 7677 examples can be replayed; NULL restores random nonces. Deliberately not in sasl.h —
 * the server must never call it. */
void sasl_test_set_nonce(const char *suffix);
void sasl_test_set_nonce(const char *suffix)
{
    free(test_nonce);
    test_nonce = xstrdup(suffix);
}

static enum sasl_status fail(struct sasl_session *s, const char **condition, const char *cond)
{
    s->state = ST_DONE;
    s->ok = false;
    *condition = cond;
    return SASL_FAIL;
}

static bool creds_valid(const struct scram_creds *c, enum scram_hash h)
{
    return c->key_len == scram_key_len(h) && c->salt_len > 0 && c->salt_len <= SCRAM_MAX_SALT &&
           c->iterations > 0 && c->iterations <= INT_MAX;
}

/* Credentials for an account that does not exist: stable per username (a repeated probe sees the
 * same salt) and unguessable (keyed with a per-process secret). */
static bool fake_creds(enum scram_hash h, const char *username, struct scram_creds *out)
{
    struct buf b;
    unsigned char mac[SCRAM_MAX_KEY];
    bool ok;

    buf_init(&b);
    buf_printf(&b, "%c:salt:%s", h == SCRAM_SHA256 ? '2' : '1', username);
    pthread_once(&crypto_once, crypto_init); /* fake_secret */
    ok = hmac(SCRAM_SHA256, fake_secret, sizeof(fake_secret), b.data, b.len, mac);
    memcpy(out->salt, mac, SCRAM_FAKE_SALT_LEN);
    out->salt_len = SCRAM_FAKE_SALT_LEN;
    out->iterations = atomic_load(&fake_iterations[h == SCRAM_SHA256]);
    out->key_len = scram_key_len(h);
    random_bytes(out->stored_key, sizeof(out->stored_key));
    random_bytes(out->server_key, sizeof(out->server_key));
    buf_fini(&b);
    return ok;
}

/* Looks the account up; returns NULL on success (s->creds filled, s->unknown_user set when the
 * account does not exist) or the failure condition. */
static const char *lookup_creds(struct sasl_session *s, enum scram_hash h)
{
    memset(&s->creds, 0, sizeof(s->creds));
    int rc = s->creds_fn(s->ud, s->username, h, &s->creds);
    if (rc == 0) {
        if (!creds_valid(&s->creds, h)) {
            log_warn(NULL, "sasl: stored SCRAM credentials for \"%s\" are invalid", s->username);
            return "temporary-auth-failure";
        }
        s->unknown_user = false;
        atomic_store(&fake_iterations[h == SCRAM_SHA256], s->creds.iterations);
        return NULL;
    }
    if (rc == 1) {
        s->unknown_user = true;
        return fake_creds(h, s->username, &s->creds) ? NULL : "temporary-auth-failure";
    }
    return "temporary-auth-failure";
}

/* RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D"). Returns the decoded name, or NULL
 * when empty or when '=' starts any other sequence. */
static char *saslname_decode(const char *p, size_t n)
{
    if (n == 0)
        return NULL;
    char *d = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '=') {
            d[k++] = p[i];
        } else if (n - i >= 3 && p[i + 1] == '2' && p[i + 2] == 'C') {
            d[k++] = ',';
            i += 2;
        } else if (n - i >= 3 && p[i + 1] == '3' && p[i + 2] == 'D') {
            d[k++] = '=';
            i += 2;
        } else {
            free(d);
            return NULL;
        }
    }
    d[k] = '\0';
    return d;
}

static bool is_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_cb_name_char(char c)
{
    return is_alpha(c) || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

/* RFC 5802 §7: printable = %x21-2B / %x2D-7E */
static bool is_printable(char c)
{
    return c >= 0x21 && c <= 0x7E && c != ',';
}

/* RFC 5802 §7: attr-val = ALPHA "=" value; value = 1*value-char (any UTF-8 but NUL and ','). */
static bool is_attr_val(const char *p, size_t n)
{
    return n >= 3 && is_alpha(p[0]) && p[1] == '=';
}

static bool attr_is(const char *p, char name)
{
    return p[0] == name && p[1] == '=';
}

static char *random_nonce(void)
{
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char r[SCRAM_NONCE_LEN];
    char *n = xmalloc(SCRAM_NONCE_LEN + 1);
    random_bytes(r, sizeof(r));
    for (size_t i = 0; i < SCRAM_NONCE_LEN; i++)
        n[i] = set[r[i] & 63];
    n[SCRAM_NONCE_LEN] = '\0';
    return n;
}

/* RFC 5802 §5.1, §7: client-first-message = gs2-header client-first-message-bare. */
static enum sasl_status scram_first(struct sasl_session *s, const char *msg, size_t len,
                                    unsigned char **out, size_t *out_len, const char **condition)
{
    const char *p = msg;
    const char *cb_name = NULL;
    size_t cb_name_len = 0;
    char flag = *p;

    /* gs2-cbind-flag */
    if (flag == 'n' || flag == 'y') {
        p++;
    } else if (attr_is(p, 'p')) {
        p += 2;
        cb_name = p;
        while (is_cb_name_char(*p))
            p++;
        cb_name_len = (size_t)(p - cb_name);
        if (cb_name_len == 0)
            return fail(s, condition, "malformed-request");
    } else {
        return fail(s, condition, "malformed-request");
    }
    if (*p++ != ',')
        return fail(s, condition, "malformed-request");

    /* [ authzid ] "," */
    if (attr_is(p, 'a')) {
        size_t n = strcspn(p + 2, ",");
        s->authzid = saslname_decode(p + 2, n);
        if (!s->authzid)
            return fail(s, condition, "malformed-request");
        p += 2 + n;
    }
    if (*p++ != ',')
        return fail(s, condition, "malformed-request");
    s->gs2_header = xstrndup(msg, (size_t)(p - msg));
    s->client_first_bare = xstrndup(p, len - (size_t)(p - msg));

    /* RFC 5802 §5.1: "m" is reserved for mandatory extensions we cannot know; fail. */
    if (attr_is(p, 'm'))
        return fail(s, condition, "malformed-request");

    if (!attr_is(p, 'n'))
        return fail(s, condition, "malformed-request");
    size_t n = strcspn(p + 2, ",");
    char *name = saslname_decode(p + 2, n);
    if (!name)
        return fail(s, condition, "malformed-request");
    p += 2 + n;
    if (*p++ != ',' || !attr_is(p, 'r')) {
        free(name);
        return fail(s, condition, "malformed-request");
    }
    p += 2;
    const char *cnonce = p;
    while (is_printable(*p))
        p++;
    size_t cnonce_len = (size_t)(p - cnonce);
    if (cnonce_len == 0 || (*p != ',' && *p != '\0')) {
        free(name);
        return fail(s, condition, "malformed-request");
    }
    /* extensions, ignored */
    while (*p == ',') {
        p++;
        size_t fl = strcspn(p, ",");
        if (!is_attr_val(p, fl)) {
            free(name);
            return fail(s, condition, "malformed-request");
        }
        p += fl;
    }
    if (*p != '\0') {
        free(name);
        return fail(s, condition, "malformed-request");
    }

    /* Channel-binding policy, RFC 5802 §6 and §7 (gs2-cbind-flag). */
    if (s->plus) {
        if (flag != 'p')
            goto not_authorized;
        if (cb_name_len == 12 && memcmp(cb_name, "tls-exporter", 12) == 0 && s->exporter) {
            s->cb_data = s->exporter;
            s->cb_len = s->exporter_len;
        } else if (cb_name_len == 20 && memcmp(cb_name, "tls-server-end-point", 20) == 0 &&
                   s->endpoint) {
            s->cb_data = s->endpoint;
            s->cb_len = s->endpoint_len;
        } else {
            s->unknown_cb = true;
            goto not_authorized;
        }
    } else if (flag == 'p' || (flag == 'y' && s->plus_offered && !s->accept_y)) {
        /* 'p' needs a -PLUS mechanism; 'y' while we offered -PLUS means someone stripped it
         * from the client's view of our mechanism list (downgrade, RFC 5802 §6). */
        goto not_authorized;
    }

    size_t cap = 0;
    s->username = saslprep(name, strlen(name), &cap);
    free(name);
    name = NULL;
    if (!s->username || !*s->username)
        return fail(s, condition, "not-authorized");

    const char *cond = lookup_creds(s, s->hash);
    if (cond)
        return fail(s, condition, cond);

    char *suffix = test_nonce ? xstrdup(test_nonce) : random_nonce();
    s->nonce = xasprintf("%.*s%s", (int)cnonce_len, cnonce, suffix);
    free(suffix);
    char *salt = base64_encode(s->creds.salt, s->creds.salt_len);
    s->server_first = xasprintf("r=%s,s=%s,i=%u", s->nonce, salt, s->creds.iterations);
    free(salt);

    s->state = ST_FINAL;
    *out = (unsigned char *)xstrdup(s->server_first);
    *out_len = strlen(s->server_first);
    return SASL_CONTINUE;

not_authorized:
    free(name);
    return fail(s, condition, "not-authorized");
}

/* The expected "c=" content: base64(gs2-header [ cbind-data ]), RFC 5802 §7 cbind-input. */
static bool cbind_matches(const struct sasl_session *s, const unsigned char *got, size_t got_len)
{
    size_t hl = strlen(s->gs2_header);
    if (got_len != hl + s->cb_len)
        return false;
    if (memcmp(got, s->gs2_header, hl) != 0)
        return false;
    return s->cb_len == 0 || CRYPTO_memcmp(got + hl, s->cb_data, s->cb_len) == 0;
}

/* RFC 5802 §5.1, §7: client-final-message = channel-binding "," nonce ["," extensions] ","
 * proof. Verifies the proof and answers with the server signature. */
static enum sasl_status scram_final(struct sasl_session *s, const char *msg, unsigned char **out,
                                    size_t *out_len, const char **condition)
{
    const char *p = msg;

    if (!attr_is(p, 'c'))
        return fail(s, condition, "malformed-request");
    size_t n = strcspn(p + 2, ",");
    unsigned char *cbind = NULL;
    size_t cbind_len = 0;
    if (base64_decode(p + 2, n, &cbind, &cbind_len) != 0)
        return fail(s, condition, "malformed-request");
    bool cb_ok = cbind_matches(s, cbind, cbind_len);
    free(cbind);
    p += 2 + n;

    if (*p++ != ',' || !attr_is(p, 'r'))
        return fail(s, condition, "malformed-request");
    n = strcspn(p + 2, ",");
    bool nonce_ok = n == strlen(s->nonce) && memcmp(p + 2, s->nonce, n) == 0;
    p += 2 + n;

    /* extensions, then the proof, which must come last */
    const char *proof = NULL;
    size_t proof_len = 0;
    const char *without_proof_end = NULL;
    while (*p == ',') {
        const char *comma = p++;
        size_t fl = strcspn(p, ",");
        if (attr_is(p, 'p')) {
            if (p[fl] != '\0')
                return fail(s, condition, "malformed-request");
            without_proof_end = comma;
            proof = p + 2;
            proof_len = fl - 2;
        } else if (!is_attr_val(p, fl)) {
            return fail(s, condition, "malformed-request");
        }
        p += fl;
    }
    if (*p != '\0' || !proof)
        return fail(s, condition, "malformed-request");

    unsigned char *proof_bin = NULL;
    size_t proof_bin_len = 0;
    if (base64_decode(proof, proof_len, &proof_bin, &proof_bin_len) != 0)
        return fail(s, condition, "malformed-request");
    if (!cb_ok || !nonce_ok || proof_bin_len != s->creds.key_len) {
        free(proof_bin);
        return fail(s, condition, "not-authorized");
    }

    /* RFC 5802 §3: AuthMessage := client-first-message-bare + "," + server-first-message + "," +
     * client-final-message-without-proof */
    struct buf am;
    buf_init(&am);
    buf_printf(&am, "%s,%s,", s->client_first_bare, s->server_first);
    buf_append(&am, msg, (size_t)(without_proof_end - msg));

    enum scram_hash h = s->hash;
    size_t klen = s->creds.key_len;
    unsigned char sig[SCRAM_MAX_KEY], key[SCRAM_MAX_KEY], stored[SCRAM_MAX_KEY];
    bool ok = hmac(h, s->creds.stored_key, klen, am.data, am.len, sig);
    for (size_t i = 0; i < klen; i++)
        key[i] = proof_bin[i] ^ sig[i];
    ok = ok && digest(h, key, klen, stored);
    bool proof_ok = ok && CRYPTO_memcmp(stored, s->creds.stored_key, klen) == 0;
    ok = ok && hmac(h, s->creds.server_key, klen, am.data, am.len, sig);
    OPENSSL_cleanse(key, sizeof(key));
    free(proof_bin);
    buf_fini(&am);

    if (!ok)
        return fail(s, condition, "temporary-auth-failure");
    if (!proof_ok || s->unknown_user)
        return fail(s, condition, "not-authorized");

    char *v = base64_encode(sig, klen);
    char *res = xasprintf("v=%s", v);
    free(v);
    s->state = ST_DONE;
    s->ok = true;
    *out_len = strlen(res);
    *out = (unsigned char *)res;
    return SASL_OK;
}

/* RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd. The password is checked by
 * deriving SCRAM keys from it with the stored salt (SHA-256 credentials, else SHA-1). */
static enum sasl_status plain_step(struct sasl_session *s, const char *msg, size_t len,
                                   const char **condition)
{
    const char *nul1 = memchr(msg, '\0', len);
    if (!nul1)
        return fail(s, condition, "malformed-request");
    const char *authcid = nul1 + 1;
    const char *nul2 = memchr(authcid, '\0', len - (size_t)(authcid - msg));
    if (!nul2)
        return fail(s, condition, "malformed-request");
    const char *passwd = nul2 + 1;
    size_t authzid_len = (size_t)(nul1 - msg);
    size_t authcid_len = (size_t)(nul2 - authcid);
    size_t passwd_len = len - (size_t)(passwd - msg);
    if (authcid_len == 0 || passwd_len == 0 || memchr(passwd, '\0', passwd_len) ||
        !utf8_valid(msg, authzid_len) || !utf8_valid(passwd, passwd_len))
        return fail(s, condition, "malformed-request");

    if (authzid_len)
        s->authzid = xstrndup(msg, authzid_len);
    size_t cap = 0;
    s->username = saslprep(authcid, authcid_len, &cap);
    if (!s->username || !*s->username)
        return fail(s, condition, "not-authorized");

    enum scram_hash h = SCRAM_SHA256;
    const char *cond = lookup_creds(s, h);
    if (!cond && s->unknown_user) {
        h = SCRAM_SHA1;
        cond = lookup_creds(s, h);
    }
    if (cond)
        return fail(s, condition, cond);

    /* Unknown users run the same derivation, so timing does not tell them apart. */
    char *pw = xstrndup(passwd, passwd_len);
    struct scram_creds got;
    int rc = scram_derive(h, pw, s->creds.salt, s->creds.salt_len, s->creds.iterations, &got);
    free_secret(pw, passwd_len + 1);
    bool match = rc == 0 && CRYPTO_memcmp(got.stored_key, s->creds.stored_key, got.key_len) == 0;
    OPENSSL_cleanse(&got, sizeof(got));
    if (!match || s->unknown_user)
        return fail(s, condition, "not-authorized");
    s->state = ST_DONE;
    s->ok = true;
    return SASL_OK;
}

enum sasl_status sasl_step(struct sasl_session *s, const unsigned char *in, size_t in_len,
                           unsigned char **out, size_t *out_len, const char **condition)
{
    *out = NULL;
    *out_len = 0;
    *condition = NULL;
    if (s->state == ST_DONE) {
        /* Steps after the outcome are a protocol error; the outcome itself stands. */
        *condition = "malformed-request";
        return SASL_FAIL;
    }
    if (in_len > SASL_MAX_MESSAGE || (in_len > 0 && !in))
        return fail(s, condition, "malformed-request");
    if (in_len == 0) {
        /* RFC 6120 §6.4.2: no initial response → an empty challenge, once. */
        if (s->state != ST_START)
            return fail(s, condition, "malformed-request");
        s->state = ST_START_EMPTY;
        return SASL_CONTINUE;
    }
    if (s->mech == MECH_PLAIN)
        return plain_step(s, (const char *)in, in_len, condition);

    if (memchr(in, '\0', in_len) || !utf8_valid((const char *)in, in_len))
        return fail(s, condition, "malformed-request");
    char *msg = xstrndup((const char *)in, in_len);
    enum sasl_status st = s->state == ST_FINAL
                              ? scram_final(s, msg, out, out_len, condition)
                              : scram_first(s, msg, in_len, out, out_len, condition);
    free(msg);
    return st;
}

bool sasl_unknown_channel_binding(const struct sasl_session *s)
{
    return s && s->unknown_cb;
}
