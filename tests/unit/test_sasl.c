/* test_sasl.c — SCRAM (RFC 5802 / RFC 7677 vectors and full exchanges with a small client written
 * here on raw OpenSSL calls), -PLUS channel binding, downgrade protection, PLAIN. */
#include "isthmus/sasl.h"
#include "isthmus/util.h"
#include "test.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

/* Test-only hook defined in src/sasl.c (not in sasl.h): fixes the server nonce part. */
void sasl_test_set_nonce(const char *suffix);

/* ---- accounts ---- */

struct account {
    const char *name;
    const char *password;
    const char *salt1_b64;   /* NULL: no SHA-1 credentials */
    const char *salt256_b64; /* NULL: no SHA-256 credentials */
    unsigned iterations;
};

static const struct account accounts[] = {
    {"user", "pencil", "QSXCR+Q6sek8bf92", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096},
    {"alice", "wonderland", "c2FsdHNhbHRzYWx0", "c2FsdHkgc2FsdHkgc2FsdA==", 4096},
    {"old", "legacy", "b2xkc2FsdA==", NULL, 4096},
    {"a,b=c", "comma", "ZXNjYXBlZA==", "ZXNjYXBlZA==", 4096},
    {"ix", "IX", "aXhzYWx0", "aXhzYWx0", 4096},
};

static int lookups;

static int creds_cb(void *ud, const char *username, enum scram_hash h, struct scram_creds *out)
{
    (void)ud;
    lookups++;
    if (strcmp(username, "broken") == 0)
        return -1;
    for (size_t i = 0; i < ARRAY_LEN(accounts); i++) {
        const struct account *a = &accounts[i];
        if (strcmp(a->name, username) != 0)
            continue;
        const char *sb = h == SCRAM_SHA256 ? a->salt256_b64 : a->salt1_b64;
        if (!sb)
            return 1;
        unsigned char *salt;
        size_t salt_len;
        if (base64_decode(sb, strlen(sb), &salt, &salt_len) != 0)
            return -1;
        int rc = scram_derive(h, a->password, salt, salt_len, a->iterations, out);
        free(salt);
        return rc == 0 ? 0 : -1;
    }
    return 1;
}

/* ---- a minimal SCRAM client ---- */

struct client {
    enum scram_hash h;
    const char *password;
    char *gs2;        /* gs2-header */
    char *first_bare; /* client-first-message-bare */
    const unsigned char *cb;
    size_t cb_len;
    char *expected_v; /* "v=..." the server must send */
};

static const EVP_MD *test_md(enum scram_hash h)
{
    return h == SCRAM_SHA256 ? EVP_sha256() : EVP_sha1();
}

static void client_init(struct client *c, enum scram_hash h, const char *gs2, const char *user_enc,
                        const char *cnonce, const char *password)
{
    memset(c, 0, sizeof(*c));
    c->h = h;
    c->password = password;
    c->gs2 = xstrdup(gs2);
    c->first_bare = xasprintf("n=%s,r=%s", user_enc, cnonce);
}

static void client_fini(struct client *c)
{
    free(c->gs2);
    free(c->first_bare);
    free(c->expected_v);
}

static char *client_first(const struct client *c)
{
    return xasprintf("%s%s", c->gs2, c->first_bare);
}

/* Returns the value of attribute `name` in a SCRAM message (a new string), or NULL. */
static char *attr(const char *msg, char name)
{
    const char *p = msg;
    while (p && *p) {
        if (p[0] == name && p[1] == '=')
            return xstrndup(p + 2, strcspn(p + 2, ","));
        p = strchr(p, ',');
        if (p)
            p++;
    }
    return NULL;
}

/* Builds client-final-message for server_first (nonce replaced by `nonce` when not NULL) and
 * remembers the server signature to expect. */
static char *client_final(struct client *c, const char *server_first, const char *nonce)
{
    char *r = attr(server_first, 'r');
    char *s = attr(server_first, 's');
    char *i = attr(server_first, 'i');
    if (!r || !s || !i) {
        free(r);
        free(s);
        free(i);
        return xstrdup("");
    }
    unsigned char *salt;
    size_t salt_len;
    if (base64_decode(s, strlen(s), &salt, &salt_len) != 0) {
        salt = NULL;
        salt_len = 0;
    }

    struct buf cbind;
    buf_init(&cbind);
    buf_puts(&cbind, c->gs2);
    if (c->cb_len)
        buf_append(&cbind, c->cb, c->cb_len);
    char *c64 = base64_encode((const unsigned char *)cbind.data, cbind.len);
    char *without_proof = xasprintf("c=%s,r=%s", c64, nonce ? nonce : r);
    char *am = xasprintf("%s,%s,%s", c->first_bare, server_first, without_proof);

    const EVP_MD *md = test_md(c->h);
    int klen = EVP_MD_get_size(md);
    unsigned char salted[64], ck[64], sk[64], stored[64], csig[64], ssig[64], proof[64];
    unsigned len;
    PKCS5_PBKDF2_HMAC(c->password, (int)strlen(c->password), salt, (int)salt_len, atoi(i), md, klen,
                      salted);
    HMAC(md, salted, klen, (const unsigned char *)"Client Key", 10, ck, &len);
    HMAC(md, salted, klen, (const unsigned char *)"Server Key", 10, sk, &len);
    EVP_Digest(ck, (size_t)klen, stored, NULL, md, NULL);
    HMAC(md, stored, klen, (const unsigned char *)am, strlen(am), csig, &len);
    HMAC(md, sk, klen, (const unsigned char *)am, strlen(am), ssig, &len);
    for (int k = 0; k < klen; k++)
        proof[k] = ck[k] ^ csig[k];
    char *p64 = base64_encode(proof, (size_t)klen);
    char *v64 = base64_encode(ssig, (size_t)klen);
    free(c->expected_v);
    c->expected_v = xasprintf("v=%s", v64);
    char *final = xasprintf("%s,p=%s", without_proof, p64);

    free(p64);
    free(v64);
    free(am);
    free(without_proof);
    free(c64);
    buf_fini(&cbind);
    free(salt);
    free(r);
    free(s);
    free(i);
    return final;
}

/* ---- helpers ---- */

static const unsigned char fake_exporter[32] = "0123456789abcdef0123456789abcdef";
static const unsigned char fake_endpoint[32] = "ENDPOINTendpointENDPOINTendpoint";

static struct sasl_channel ch_plain(void)
{
    struct sasl_channel ch = {.tls = false};
    return ch;
}

static struct sasl_channel ch_tls(bool exporter, bool endpoint)
{
    struct sasl_channel ch = {.tls = true,
                              .exporter = exporter ? fake_exporter : NULL,
                              .exporter_len = exporter ? 32 : 0,
                              .endpoint = endpoint ? fake_endpoint : NULL,
                              .endpoint_len = endpoint ? 32 : 0};
    return ch;
}

static enum sasl_status step_str(struct sasl_session *s, const char *in, char **out,
                                 const char **cond)
{
    unsigned char *o = NULL;
    size_t ol = 0;
    enum sasl_status st = sasl_step(s, (const unsigned char *)in, strlen(in), &o, &ol, cond);
    *out = o ? xstrndup((const char *)o, ol) : NULL;
    free(o);
    return st;
}

/* The outcome of a whole SCRAM exchange driven by a client. */
struct outcome {
    enum sasl_status first, final;
    const char *cond;
    char *server_first;
    bool v_ok;
    char *username;
    char *authzid;
};

static void outcome_fini(struct outcome *o)
{
    free(o->server_first);
    free(o->username);
    free(o->authzid);
}

static struct outcome exchange(const char *mech, const struct sasl_channel *ch, struct client *c,
                               const char *bad_nonce)
{
    struct outcome o;
    memset(&o, 0, sizeof(o));
    o.final = SASL_FAIL;
    struct sasl_session *s = sasl_new(mech, ch, false, creds_cb, NULL);
    if (!s) {
        o.first = SASL_FAIL;
        o.cond = "(sasl_new)";
        return o;
    }
    char *first = client_first(c);
    o.first = step_str(s, first, &o.server_first, &o.cond);
    free(first);
    if (o.first == SASL_CONTINUE) {
        char *final = client_final(c, o.server_first, bad_nonce);
        char *v = NULL;
        o.final = step_str(s, final, &v, &o.cond);
        o.v_ok = v && c->expected_v && strcmp(v, c->expected_v) == 0;
        free(v);
        free(final);
        o.username = xstrdup(sasl_username(s));
        o.authzid = xstrdup(sasl_authzid(s));
    }
    sasl_free(s);
    return o;
}

/* ---- RFC vectors ---- */

static void test_rfc5802_example(void)
{
    struct sasl_channel ch = ch_plain();
    sasl_test_set_nonce("3rfcNHYJY1ZVvWVs7j");
    struct sasl_session *s = sasl_new("SCRAM-SHA-1", &ch, false, creds_cb, NULL);
    CHECK(s != NULL);
    char *out;
    const char *cond;
    CHECK(step_str(s, "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", &out, &cond) == SASL_CONTINUE);
    CHECK_STR(out, "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    free(out);
    CHECK(step_str(s,
                   "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                   "p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                   &out, &cond) == SASL_OK);
    CHECK_STR(out, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    CHECK_STR(sasl_username(s), "user");
    CHECK(sasl_authzid(s) == NULL);
    free(out);
    sasl_free(s);

    /* The test client reproduces the RFC's client-final-message. */
    struct client c;
    client_init(&c, SCRAM_SHA1, "n,,", "user", "fyko+d2lbbFgONRv9qkxdawL", "pencil");
    char *final = client_final(
        &c, "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096", NULL);
    CHECK_STR(final, "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                     "p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
    CHECK_STR(c.expected_v, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    free(final);
    client_fini(&c);
    sasl_test_set_nonce(NULL);
}

static void test_rfc7677_example(void)
{
    struct sasl_channel ch = ch_plain();
    sasl_test_set_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    struct sasl_session *s = sasl_new("SCRAM-SHA-256", &ch, false, creds_cb, NULL);
    CHECK(s != NULL);
    char *out;
    const char *cond;
    CHECK(step_str(s, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &out, &cond) == SASL_CONTINUE);
    CHECK_STR(out, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                   "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    free(out);
    CHECK(step_str(s,
                   "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                   "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                   &out, &cond) == SASL_OK);
    CHECK_STR(out, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    CHECK_STR(sasl_username(s), "user");
    free(out);
    sasl_free(s);
    sasl_test_set_nonce(NULL);
}

/* ---- full exchanges ---- */

static void check_server_nonce(const char *server_first, const char *cnonce)
{
    char *r = attr(server_first ? server_first : "", 'r');
    CHECK(r != NULL);
    if (!r)
        return;
    size_t cl = strlen(cnonce);
    CHECK(strncmp(r, cnonce, cl) == 0);
    CHECK(strlen(r) >= cl + 24);
    for (const char *p = r; *p; p++)
        CHECK(*p >= 0x21 && *p <= 0x7E && *p != ',');
    free(r);
}

static void test_exchange_sha1_sha256(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA1, "n,,", "alice", "abcdefghijkl", "wonderland");
    struct outcome o = exchange("SCRAM-SHA-1", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_OK && o.v_ok);
    CHECK_STR(o.username, "alice");
    check_server_nonce(o.server_first, "abcdefghijkl");
    outcome_fini(&o);
    client_fini(&c);

    client_init(&c, SCRAM_SHA256, "n,,", "alice", "mnopqrstuvwx", "wonderland");
    o = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_OK && o.v_ok);
    CHECK_STR(o.username, "alice");
    check_server_nonce(o.server_first, "mnopqrstuvwx");
    char *first_nonce = attr(o.server_first, 'r');
    outcome_fini(&o);

    /* Fresh server nonce each time. */
    o = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    char *second_nonce = attr(o.server_first, 'r');
    CHECK(first_nonce && second_nonce && strcmp(first_nonce, second_nonce) != 0);
    free(first_nonce);
    free(second_nonce);
    outcome_fini(&o);
    client_fini(&c);
}

static void test_exchange_escaped_name_and_authzid(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA256, "n,a=admin=2Cx=3Dy,", "a=2Cb=3Dc", "nonce123", "comma");
    struct outcome o = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    CHECK(o.final == SASL_OK && o.v_ok);
    CHECK_STR(o.username, "a,b=c");
    CHECK_STR(o.authzid, "admin,x=y");
    outcome_fini(&o);
    client_fini(&c);

    /* client-first extensions are accepted and ignored */
    client_init(&c, SCRAM_SHA1, "n,,", "alice", "ext,x=yz", "wonderland");
    o = exchange("SCRAM-SHA-1", &ch, &c, NULL);
    CHECK(o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    client_fini(&c);
}

static void test_plus_exporter_and_endpoint(void)
{
    struct sasl_channel ch = ch_tls(true, true);
    struct client c;

    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "plus1", "wonderland");
    c.cb = fake_exporter;
    c.cb_len = 32;
    struct outcome o = exchange("SCRAM-SHA-256-PLUS", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    client_fini(&c);

    client_init(&c, SCRAM_SHA1, "p=tls-server-end-point,,", "alice", "plus2", "wonderland");
    c.cb = fake_endpoint;
    c.cb_len = 32;
    o = exchange("SCRAM-SHA-1-PLUS", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    client_fini(&c);

    /* Mismatched binding data (a MITM terminating TLS sees other exporter bytes). */
    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "plus3", "wonderland");
    c.cb = fake_endpoint;
    c.cb_len = 32;
    o = exchange("SCRAM-SHA-256-PLUS", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    CHECK(o.username == NULL);
    outcome_fini(&o);
    client_fini(&c);

    /* Binding data left out of c= */
    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "plus4", "wonderland");
    o = exchange("SCRAM-SHA-256-PLUS", &ch, &c, NULL);
    CHECK(o.final == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    client_fini(&c);

    /* tls-exporter asked for on a channel that only has tls-server-end-point */
    struct sasl_channel ep = ch_tls(false, true);
    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "plus5", "wonderland");
    c.cb = fake_exporter;
    c.cb_len = 32;
    o = exchange("SCRAM-SHA-256-PLUS", &ep, &c, NULL);
    CHECK(o.first == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    client_fini(&c);

    /* tls-unique is not offered */
    client_init(&c, SCRAM_SHA256, "p=tls-unique,,", "alice", "plus6", "wonderland");
    o = exchange("SCRAM-SHA-256-PLUS", &ch, &c, NULL);
    CHECK(o.first == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    client_fini(&c);

    /* -PLUS without "p=" */
    const char *flags[] = {"n,,", "y,,"};
    for (size_t i = 0; i < ARRAY_LEN(flags); i++) {
        client_init(&c, SCRAM_SHA256, flags[i], "alice", "plus7", "wonderland");
        o = exchange("SCRAM-SHA-256-PLUS", &ch, &c, NULL);
        CHECK(o.first == SASL_FAIL);
        CHECK_STR(o.cond, "not-authorized");
        outcome_fini(&o);
        client_fini(&c);
    }
}

static void test_channel_data_is_copied(void)
{
    unsigned char exp[32];
    memcpy(exp, fake_exporter, 32);
    struct sasl_channel ch = {.tls = true, .exporter = exp, .exporter_len = 32};
    struct sasl_session *s = sasl_new("SCRAM-SHA-256-PLUS", &ch, false, creds_cb, NULL);
    CHECK(s != NULL);
    memset(exp, 0, sizeof(exp));
    struct client c;
    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "copy", "wonderland");
    c.cb = fake_exporter;
    c.cb_len = 32;
    char *first = client_first(&c), *out = NULL, *v = NULL;
    const char *cond;
    CHECK(step_str(s, first, &out, &cond) == SASL_CONTINUE);
    char *final = client_final(&c, out ? out : "", NULL);
    CHECK(step_str(s, final, &v, &cond) == SASL_OK);
    CHECK_STR(v, c.expected_v);
    free(first);
    free(out);
    free(final);
    free(v);
    client_fini(&c);
    sasl_free(s);
}

static void test_downgrade_and_cbind_flags(void)
{
    struct client c;
    struct outcome o;

    /* 'y' while -PLUS was offered: the mechanism list was tampered with (RFC 5802 §6). */
    struct sasl_channel plus = ch_tls(true, false);
    client_init(&c, SCRAM_SHA256, "y,,", "alice", "down1", "wonderland");
    o = exchange("SCRAM-SHA-256", &plus, &c, NULL);
    CHECK(o.first == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);

    /* 'y' where no -PLUS was offered is fine. */
    struct sasl_channel tls = ch_tls(false, false);
    o = exchange("SCRAM-SHA-256", &tls, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    client_fini(&c);

    /* 'n' on a -PLUS-capable channel with a plain mechanism is the client's choice. */
    client_init(&c, SCRAM_SHA1, "n,,", "alice", "down2", "wonderland");
    o = exchange("SCRAM-SHA-1", &plus, &c, NULL);
    CHECK(o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    client_fini(&c);

    /* 'p=' with a non-PLUS mechanism */
    client_init(&c, SCRAM_SHA256, "p=tls-exporter,,", "alice", "down3", "wonderland");
    c.cb = fake_exporter;
    c.cb_len = 32;
    o = exchange("SCRAM-SHA-256", &plus, &c, NULL);
    CHECK(o.first == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    client_fini(&c);
}

static void test_wrong_password(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA256, "n,,", "alice", "wrongpw", "Wonderland");
    struct outcome o = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    CHECK(o.username == NULL);
    outcome_fini(&o);
    client_fini(&c);
}

static void test_unknown_user(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA256, "n,,", "nobody", "unk1", "whatever");
    struct outcome o1 = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    CHECK(o1.first == SASL_CONTINUE);
    CHECK(o1.final == SASL_FAIL);
    CHECK_STR(o1.cond, "not-authorized");
    check_server_nonce(o1.server_first, "unk1");
    /* Looks like a real account: same iteration count, a plausible salt. */
    char *it = attr(o1.server_first ? o1.server_first : "", 'i');
    CHECK_STR(it, "4096");
    free(it);
    char *salt1 = attr(o1.server_first ? o1.server_first : "", 's');
    unsigned char *raw = NULL;
    size_t raw_len = 0;
    CHECK(salt1 && base64_decode(salt1, strlen(salt1), &raw, &raw_len) == 0 && raw_len >= 8);
    free(raw);
    client_fini(&c);

    /* Stable per username: probing twice does not reveal that the salt is made up. */
    client_init(&c, SCRAM_SHA256, "n,,", "nobody", "unk2", "whatever");
    struct outcome o2 = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    char *salt2 = attr(o2.server_first ? o2.server_first : "", 's');
    CHECK(salt1 && salt2 && strcmp(salt1, salt2) == 0);
    CHECK(o2.final == SASL_FAIL);
    client_fini(&c);

    client_init(&c, SCRAM_SHA256, "n,,", "somebody", "unk3", "whatever");
    struct outcome o3 = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    char *salt3 = attr(o3.server_first ? o3.server_first : "", 's');
    CHECK(salt1 && salt3 && strcmp(salt1, salt3) != 0);
    client_fini(&c);

    free(salt1);
    free(salt2);
    free(salt3);
    outcome_fini(&o1);
    outcome_fini(&o2);
    outcome_fini(&o3);
}

static void test_storage_error(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA256, "n,,", "broken", "err1", "x");
    struct outcome o = exchange("SCRAM-SHA-256", &ch, &c, NULL);
    CHECK(o.first == SASL_FAIL);
    CHECK_STR(o.cond, "temporary-auth-failure");
    outcome_fini(&o);
    client_fini(&c);
}

static void test_nonce_tampering(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA256, "n,,", "alice", "tamper", "wonderland");
    /* Only the client's part */
    struct outcome o = exchange("SCRAM-SHA-256", &ch, &c, "tamper");
    CHECK(o.first == SASL_CONTINUE && o.final == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    /* A different server part of the same length */
    sasl_test_set_nonce("SERVERPARTSERVERPARTSERVERPART");
    o = exchange("SCRAM-SHA-256", &ch, &c, "tamperSERVERPARTSERVERPARTSERVERPARX");
    CHECK(o.final == SASL_FAIL);
    CHECK_STR(o.cond, "not-authorized");
    outcome_fini(&o);
    /* Longer */
    o = exchange("SCRAM-SHA-256", &ch, &c, "tamperSERVERPARTSERVERPARTSERVERPARTx");
    CHECK(o.final == SASL_FAIL);
    outcome_fini(&o);
    /* and the right one works with the hook */
    o = exchange("SCRAM-SHA-256", &ch, &c, "tamperSERVERPARTSERVERPARTSERVERPART");
    CHECK(o.final == SASL_OK && o.v_ok);
    outcome_fini(&o);
    sasl_test_set_nonce(NULL);
    client_fini(&c);
}

/* Each client-first message must fail with malformed-request, before any account lookup. */
static void test_malformed_first(void)
{
    static const char *bad[] = {
        "x,,n=user,r=abc",
        "n,n=user,r=abc",
        "n",
        "n,",
        "n,,",
        "p=,,n=user,r=abc",
        "p=tls exporter,,n=user,r=abc",
        "n,a=,n=user,r=abc",
        "n,a=x=41,n=user,r=abc",
        "n,b=x,n=user,r=abc",
        "n,,n=us=41er,r=abc",
        "n,,n=user=2,r=abc",
        "n,,n=user=,r=abc",
        "n,,n=user=2c,r=abc",
        "n,,n=,r=abc",
        "n,,r=abc",
        "n,,n=user",
        "n,,n=user,",
        "n,,n=user,r=",
        "n,,n=user,r=ab\x7f",
        "n,,n=user,r=ab c",
        "n,,n=user,s=abc",
        "n,,m=ext,n=user,r=abc",
        "n,,n=user,r=abc,",
        "n,,n=user,r=abc,1=x",
        "n,,n=user,r=abc,x=",
        "n,,n=user,r=abc,xy",
        "n,,n=user,r=abc,,",
        "n,,n=us\377er,r=abc",
        "n,,n=us\300\257er,r=abc",
        " n,,n=user,r=abc",
    };
    struct sasl_channel ch = ch_plain();
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct sasl_session *s = sasl_new("SCRAM-SHA-256", &ch, false, creds_cb, NULL);
        char *out = NULL;
        const char *cond = NULL;
        int before = lookups;
        enum sasl_status st = step_str(s, bad[i], &out, &cond);
        if (st != SASL_FAIL || !cond || strcmp(cond, "malformed-request") != 0)
            fprintf(stderr, "  case %zu: \"%s\" → %d %s\n", i, bad[i], st, cond ? cond : "");
        CHECK(st == SASL_FAIL);
        CHECK_STR(cond, "malformed-request");
        CHECK(out == NULL);
        CHECK(lookups == before);
        free(out);
        sasl_free(s);
    }

    /* An embedded NUL and an oversized message */
    struct sasl_session *s = sasl_new("SCRAM-SHA-1", &ch, false, creds_cb, NULL);
    unsigned char *out = NULL;
    size_t out_len = 0;
    const char *cond = NULL;
    static const char nul[] = "n,,n=us\0er,r=abc";
    CHECK(sasl_step(s, (const unsigned char *)nul, sizeof(nul) - 1, &out, &out_len, &cond) ==
          SASL_FAIL);
    CHECK_STR(cond, "malformed-request");
    sasl_free(s);

    s = sasl_new("SCRAM-SHA-1", &ch, false, creds_cb, NULL);
    struct buf big;
    buf_init(&big);
    buf_puts(&big, "n,,n=user,r=");
    while (big.len < 5000)
        buf_putc(&big, 'A');
    CHECK(sasl_step(s, (const unsigned char *)big.data, big.len, &out, &out_len, &cond) ==
          SASL_FAIL);
    CHECK_STR(cond, "malformed-request");
    buf_fini(&big);
    sasl_free(s);
}

static void test_malformed_final(void)
{
    static const char *bad[] = {
        "",
        "c=biws",
        "c=biws,r=NONCE",
        "r=NONCE,c=biws,p=AAAA",
        "c=bi!s,r=NONCE,p=AAAA",
        "c=biw,r=NONCE,p=AAAA",
        "c=biws,r=NONCE,p=!!!!",
        "c=biws,r=NONCE,p=AAA",
        "c=biws,r=NONCE,p=AAAA,x=y",
        "c=biws,r=NONCE,p=AAAA,",
        "c=biws,r=NONCE,1=x,p=AAAA",
        "c=biws,,r=NONCE,p=AAAA",
        "c=biws,r=NONCE,p=AA AA",
    };
    struct sasl_channel ch = ch_plain();
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct sasl_session *s = sasl_new("SCRAM-SHA-256", &ch, false, creds_cb, NULL);
        char *out = NULL, *nonce = NULL;
        const char *cond = NULL;
        CHECK(step_str(s, "n,,n=alice,r=cnonce", &out, &cond) == SASL_CONTINUE);
        nonce = attr(out ? out : "", 'r');
        free(out);
        /* substitute NONCE with the real combined nonce */
        struct buf m;
        buf_init(&m);
        const char *at = strstr(bad[i], "NONCE");
        if (at && nonce) {
            buf_append(&m, bad[i], (size_t)(at - bad[i]));
            buf_puts(&m, nonce);
            buf_puts(&m, at + 5);
        } else {
            buf_puts(&m, bad[i]);
        }
        unsigned char *o = NULL;
        size_t ol = 0;
        enum sasl_status st =
            sasl_step(s, (const unsigned char *)(m.data ? m.data : ""), m.len, &o, &ol, &cond);
        if (st != SASL_FAIL || !cond || strcmp(cond, "malformed-request") != 0)
            fprintf(stderr, "  case %zu: \"%s\" → %d %s\n", i, bad[i], st, cond ? cond : "");
        CHECK(st == SASL_FAIL);
        CHECK_STR(cond, "malformed-request");
        CHECK(o == NULL);
        CHECK(sasl_username(s) == NULL);
        free(o);
        buf_fini(&m);
        free(nonce);
        sasl_free(s);
    }
}

static void test_extensions_in_final_and_wrong_proof_len(void)
{
    struct sasl_channel ch = ch_plain();
    struct sasl_session *s = sasl_new("SCRAM-SHA-256", &ch, false, creds_cb, NULL);
    char *out = NULL;
    const char *cond;
    CHECK(step_str(s, "n,,n=alice,r=cn", &out, &cond) == SASL_CONTINUE);
    char *nonce = attr(out ? out : "", 'r');
    char *final = xasprintf("c=biws,r=%s,p=AAAA", nonce ? nonce : "");
    char *v = NULL;
    CHECK(step_str(s, final, &v, &cond) == SASL_FAIL);
    CHECK_STR(cond, "not-authorized");
    CHECK(v == NULL);
    free(final);
    free(nonce);
    free(out);
    sasl_free(s);
}

static void test_empty_initial_response_and_extra_steps(void)
{
    struct sasl_channel ch = ch_plain();
    struct client c;
    client_init(&c, SCRAM_SHA1, "n,,", "alice", "empty", "wonderland");
    struct sasl_session *s = sasl_new("SCRAM-SHA-1", &ch, false, creds_cb, NULL);
    unsigned char *o = NULL;
    size_t ol = 5;
    const char *cond = "x";
    CHECK(sasl_step(s, NULL, 0, &o, &ol, &cond) == SASL_CONTINUE);
    CHECK(o == NULL && ol == 0 && cond == NULL);
    char *first = client_first(&c), *out = NULL, *v = NULL;
    CHECK(step_str(s, first, &out, &cond) == SASL_CONTINUE);
    char *final = client_final(&c, out ? out : "", NULL);
    CHECK(step_str(s, final, &v, &cond) == SASL_OK);
    CHECK_STR(v, c.expected_v);
    free(v);
    /* anything after the outcome fails, and does not undo it */
    CHECK(step_str(s, final, &v, &cond) == SASL_FAIL);
    CHECK(v == NULL);
    CHECK(cond != NULL);
    CHECK_STR(sasl_username(s), "alice");
    free(first);
    free(out);
    free(final);
    sasl_free(s);

    /* two empty responses in a row */
    s = sasl_new("SCRAM-SHA-1", &ch, false, creds_cb, NULL);
    CHECK(sasl_step(s, NULL, 0, &o, &ol, &cond) == SASL_CONTINUE);
    CHECK(sasl_step(s, NULL, 0, &o, &ol, &cond) == SASL_FAIL);
    CHECK_STR(cond, "malformed-request");
    /* and nothing after a failure */
    CHECK(sasl_step(s, (const unsigned char *)"n,,n=alice,r=x", 14, &o, &ol, &cond) == SASL_FAIL);
    CHECK(o == NULL);
    sasl_free(s);
    client_fini(&c);
}

/* ---- PLAIN ---- */

static enum sasl_status plain(const char *msg, size_t len, const char **cond, char **user,
                              char **authzid)
{
    struct sasl_channel ch = ch_tls(false, false);
    struct sasl_session *s = sasl_new("PLAIN", &ch, true, creds_cb, NULL);
    unsigned char *o = NULL;
    size_t ol = 0;
    enum sasl_status st = sasl_step(s, (const unsigned char *)msg, len, &o, &ol, cond);
    free(o);
    if (user)
        *user = xstrdup(sasl_username(s));
    if (authzid)
        *authzid = xstrdup(sasl_authzid(s));
    sasl_free(s);
    return st;
}

#define PLAIN(lit, cond, user, az) plain(lit, sizeof(lit) - 1, cond, user, az)

static void test_plain(void)
{
    const char *cond;
    char *user = NULL, *az = NULL;

    CHECK(PLAIN("\0alice\0wonderland", &cond, &user, &az) == SASL_OK);
    CHECK_STR(user, "alice");
    CHECK(az == NULL);
    free(user);
    free(az);

    CHECK(PLAIN("admin@example.org\0alice\0wonderland", &cond, &user, &az) == SASL_OK);
    CHECK_STR(az, "admin@example.org");
    free(user);
    free(az);

    CHECK(PLAIN("\0alice\0wonderlanD", &cond, &user, NULL) == SASL_FAIL);
    CHECK_STR(cond, "not-authorized");
    CHECK(user == NULL);

    /* Only SHA-1 credentials stored: falls back */
    CHECK(PLAIN("\0old\0legacy", &cond, NULL, NULL) == SASL_OK);
    CHECK(PLAIN("\0old\0legacz", &cond, NULL, NULL) == SASL_FAIL);

    CHECK(PLAIN("\0nobody\0x", &cond, NULL, NULL) == SASL_FAIL);
    CHECK_STR(cond, "not-authorized");
    CHECK(PLAIN("\0broken\0x", &cond, NULL, NULL) == SASL_FAIL);
    CHECK_STR(cond, "temporary-auth-failure");

    /* RFC 4013 §3 examples: SOFT HYPHEN maps to nothing, U+2168 → "IX" */
    CHECK(PLAIN("\0ix\0I\302\255X", &cond, NULL, NULL) == SASL_OK);
    CHECK(PLAIN("\0ix\0\xE2\x85\xA8", &cond, NULL, NULL) == SASL_OK);
    CHECK(PLAIN("\0ix\0\x07", &cond, NULL, NULL) == SASL_FAIL);

    static const struct {
        const char *m;
        size_t n;
    } bad[] = {
        {"\0\0wonderland", 12},          {"\0alice\0", 7},
        {"alice\0wonderland", 16},       {"alicewonderland", 15},
        {"\0alice\0wonder\0land", 18},   {"\0alice\0wonder\xff", 14},
        {"\xff\0alice\0wonderland", 18},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        cond = NULL;
        CHECK(plain(bad[i].m, bad[i].n, &cond, NULL, NULL) == SASL_FAIL);
        CHECK_STR(cond, "malformed-request");
    }

    /* PLAIN without initial response */
    struct sasl_channel ch = ch_tls(false, false);
    struct sasl_session *s = sasl_new("PLAIN", &ch, true, creds_cb, NULL);
    unsigned char *o = NULL;
    size_t ol = 0;
    CHECK(sasl_step(s, NULL, 0, &o, &ol, &cond) == SASL_CONTINUE);
    CHECK(sasl_step(s, (const unsigned char *)"\0alice\0wonderland", 17, &o, &ol, &cond) ==
          SASL_OK);
    free(o);
    sasl_free(s);

    /* not offered unless allowed */
    CHECK(sasl_new("PLAIN", &ch, false, creds_cb, NULL) == NULL);
}

/* ---- offers ---- */

static bool names_are(const char **got, size_t n, const char *const *want, size_t wn)
{
    if (n != wn)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(got[i], want[i]) != 0)
            return false;
    return true;
}

static void test_mechanisms(void)
{
    const char *names[8];
    size_t n;

    struct sasl_channel plainch = ch_plain();
    static const char *const m0[] = {"SCRAM-SHA-256", "SCRAM-SHA-1"};
    n = sasl_mechanisms(&plainch, false, names, 8);
    CHECK(names_are(names, n, m0, 2));

    struct sasl_channel tls = ch_tls(false, false);
    static const char *const m1[] = {"SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"};
    n = sasl_mechanisms(&tls, true, names, 8);
    CHECK(names_are(names, n, m1, 3));
    CHECK(sasl_channel_bindings(&tls, names, 8) == 0);

    struct sasl_channel both = ch_tls(true, true);
    static const char *const m2[] = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                                     "SCRAM-SHA-1", "PLAIN"};
    n = sasl_mechanisms(&both, true, names, 8);
    CHECK(names_are(names, n, m2, 5));
    n = sasl_mechanisms(&both, true, names, 2);
    CHECK(names_are(names, n, m2, 2));
    static const char *const b2[] = {"tls-exporter", "tls-server-end-point"};
    n = sasl_channel_bindings(&both, names, 8);
    CHECK(names_are(names, n, b2, 2));
    n = sasl_channel_bindings(&both, names, 1);
    CHECK(names_are(names, n, b2, 1));

    struct sasl_channel ep = ch_tls(false, true);
    static const char *const b1[] = {"tls-server-end-point"};
    n = sasl_channel_bindings(&ep, names, 8);
    CHECK(names_are(names, n, b1, 1));
    n = sasl_mechanisms(&ep, false, names, 8);
    CHECK(n == 4 && strcmp(names[0], "SCRAM-SHA-256-PLUS") == 0);

    /* binding data without TLS is ignored */
    struct sasl_channel odd = {.tls = false, .exporter = fake_exporter, .exporter_len = 32};
    n = sasl_mechanisms(&odd, false, names, 8);
    CHECK(names_are(names, n, m0, 2));
    CHECK(sasl_channel_bindings(&odd, names, 8) == 0);

    CHECK(sasl_new("SCRAM-SHA-256-PLUS", &tls, true, creds_cb, NULL) == NULL);
    CHECK(sasl_new("DIGEST-MD5", &both, true, creds_cb, NULL) == NULL);
    CHECK(sasl_new("scram-sha-1", &both, true, creds_cb, NULL) == NULL);
    struct sasl_session *s = sasl_new("SCRAM-SHA-1-PLUS", &both, false, creds_cb, NULL);
    CHECK(s != NULL);
    sasl_free(s);
    sasl_free(NULL);
}

static void test_scram_derive(void)
{
    static const unsigned char salt[] = "NaCl";
    struct scram_creds a, b;
    CHECK(scram_derive(SCRAM_SHA256, "IX", salt, 4, 16, &a) == 0);
    CHECK(a.key_len == 32 && a.iterations == 16 && a.salt_len == 4);
    CHECK(scram_derive(SCRAM_SHA256, "I\302\255X", salt, 4, 16, &b) == 0);
    CHECK(memcmp(a.stored_key, b.stored_key, 32) == 0 &&
          memcmp(a.server_key, b.server_key, 32) == 0);
    CHECK(scram_derive(SCRAM_SHA256, "IY", salt, 4, 16, &b) == 0);
    CHECK(memcmp(a.stored_key, b.stored_key, 32) != 0);
    CHECK(scram_derive(SCRAM_SHA1, "IX", salt, 4, 16, &b) == 0 && b.key_len == 20);

    CHECK(scram_derive(SCRAM_SHA256, "", salt, 4, 16, &b) == -1);
    CHECK(scram_derive(SCRAM_SHA256, "\xC2\xAD", salt, 4, 16, &b) == -1);
    CHECK(scram_derive(SCRAM_SHA256, "a\007b", salt, 4, 16, &b) == -1);
    CHECK(scram_derive(SCRAM_SHA256, "\xff", salt, 4, 16, &b) == -1);
    CHECK(scram_derive(SCRAM_SHA256, "x", salt, 0, 16, &b) == -1);
    CHECK(scram_derive(SCRAM_SHA256, "x", salt, 4, 0, &b) == -1);
    /* RFC 4013 §3: a bidi string mixing RandALCat and LCat is prohibited */
    CHECK(scram_derive(SCRAM_SHA256, "\330\2471", salt, 4, 16, &b) == -1);
}

/* A client that tried -PLUS with a binding type we lack (slixmpp 1.8: tls-unique) may retry with
 * 'y' on the same stream; a client that goes straight to 'y' is still refused (RFC 5802 §6). */
static void test_y_after_unknown_binding(void)
{
    struct sasl_channel ch = ch_tls(true, true);
    unsigned char *out = NULL;
    size_t out_len = 0;
    const char *cond = NULL;
    const char *plus_first = "p=tls-unique,,n=user,r=abcdefgh";
    struct sasl_session *s = sasl_new("SCRAM-SHA-256-PLUS", &ch, true, creds_cb, NULL);
    CHECK(sasl_step(s, (const unsigned char *)plus_first, strlen(plus_first), &out, &out_len,
                    &cond) == SASL_FAIL);
    CHECK(sasl_unknown_channel_binding(s));
    free(out);
    sasl_free(s);

    const char *y_first = "y,,n=user,r=abcdefgh";
    s = sasl_new("SCRAM-SHA-256", &ch, true, creds_cb, NULL);
    out = NULL;
    CHECK(sasl_step(s, (const unsigned char *)y_first, strlen(y_first), &out, &out_len, &cond) ==
          SASL_FAIL);
    CHECK(!sasl_unknown_channel_binding(s));
    free(out);
    sasl_free(s);

    ch.client_lacks_cb = true;
    s = sasl_new("SCRAM-SHA-256", &ch, true, creds_cb, NULL);
    out = NULL;
    CHECK(sasl_step(s, (const unsigned char *)y_first, strlen(y_first), &out, &out_len, &cond) ==
          SASL_CONTINUE);
    free(out);
    sasl_free(s);
}

int main(void)
{
    TEST_RUN(test_rfc5802_example);
    TEST_RUN(test_rfc7677_example);
    TEST_RUN(test_exchange_sha1_sha256);
    TEST_RUN(test_exchange_escaped_name_and_authzid);
    TEST_RUN(test_plus_exporter_and_endpoint);
    TEST_RUN(test_channel_data_is_copied);
    TEST_RUN(test_downgrade_and_cbind_flags);
    TEST_RUN(test_wrong_password);
    TEST_RUN(test_unknown_user);
    TEST_RUN(test_storage_error);
    TEST_RUN(test_nonce_tampering);
    TEST_RUN(test_malformed_first);
    TEST_RUN(test_malformed_final);
    TEST_RUN(test_extensions_in_final_and_wrong_proof_len);
    TEST_RUN(test_empty_initial_response_and_extra_steps);
    TEST_RUN(test_plain);
    TEST_RUN(test_mechanisms);
    TEST_RUN(test_scram_derive);
    TEST_RUN(test_y_after_unknown_binding);
    return TEST_DONE();
}
