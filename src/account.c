#include "isthmus/account.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "isthmus/util.h"

/* Stored as text in the key-value store "accounts":
 *   v1
 *   SCRAM-SHA-1 <iterations> <salt b64> <StoredKey b64> <ServerKey b64>
 *   SCRAM-SHA-256 <iterations> <salt b64> <StoredKey b64> <ServerKey b64>
 *   created <unix seconds> */
#define STORE "accounts"
#define SALT_LEN 16

static const char *const hash_names[] = {"SCRAM-SHA-1", "SCRAM-SHA-256"};

static void put_creds(struct buf *b, enum scram_hash h, const struct scram_creds *c)
{
    char *salt = base64_encode(c->salt, c->salt_len);
    char *stored = base64_encode(c->stored_key, c->key_len);
    char *srv = base64_encode(c->server_key, c->key_len);
    buf_printf(b, "%s %u %s %s %s\n", hash_names[h], c->iterations, salt, stored, srv);
    free(salt);
    free(stored);
    free(srv);
}

static int encode(const char *password, unsigned iterations, int64_t created, struct buf *out)
{
    buf_puts(out, "v1\n");
    for (int h = SCRAM_SHA1; h <= SCRAM_SHA256; h++) {
        struct scram_creds c;
        unsigned char salt[SALT_LEN];
        random_bytes(salt, sizeof salt);
        if (scram_derive((enum scram_hash)h, password, salt, sizeof salt, iterations, &c) < 0) {
            OPENSSL_cleanse(&c, sizeof c);
            return -1;
        }
        put_creds(out, (enum scram_hash)h, &c);
        OPENSSL_cleanse(&c, sizeof c);
    }
    buf_printf(out, "created %lld\n", (long long)created);
    return 0;
}

static int decode_field(const char *b64, unsigned char *out, size_t max, size_t *len)
{
    unsigned char *d;
    size_t n;
    if (base64_decode(b64, strlen(b64), &d, &n) < 0 || n > max || n == 0) {
        if (n <= max)
            free(d);
        else
            free(d);
        return -1;
    }
    memcpy(out, d, n);
    *len = n;
    free(d);
    return 0;
}

static int parse_creds(const char *value, enum scram_hash h, struct scram_creds *out)
{
    const char *name = hash_names[h];
    size_t nl = strlen(name);
    for (const char *line = value; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, nl) != 0 || line[nl] != ' ')
            continue;
        char salt[128], stored[128], srv[128];
        unsigned iter;
        if (sscanf(line + nl + 1, "%u %127s %127s %127s", &iter, salt, stored, srv) != 4)
            return -1;
        size_t klen1, klen2;
        memset(out, 0, sizeof *out);
        out->iterations = iter;
        if (decode_field(salt, out->salt, sizeof out->salt, &out->salt_len) < 0 ||
            decode_field(stored, out->stored_key, sizeof out->stored_key, &klen1) < 0 ||
            decode_field(srv, out->server_key, sizeof out->server_key, &klen2) < 0 ||
            klen1 != klen2 || klen1 != (h == SCRAM_SHA1 ? 20u : 32u))
            return -1;
        out->key_len = klen1;
        return 0;
    }
    return ACCOUNT_NOTFOUND;
}

int account_exists(struct storage *db, const char *host, const char *user)
{
    char *v = NULL;
    size_t len;
    int rc = storage_kv_get(db, host, user, STORE, &v, &len);
    free(v);
    return rc == 0 ? 1 : rc == STORAGE_NOTFOUND ? 0 : -1;
}

int account_create(struct storage *db, const char *host, const char *user, const char *password,
                   unsigned iterations)
{
    int e = account_exists(db, host, user);
    if (e != 0)
        return e < 0 ? -1 : ACCOUNT_EXISTS;
    struct buf b;
    buf_init(&b);
    if (encode(password, iterations, wall_time(), &b) < 0) {
        buf_fini(&b);
        return ACCOUNT_BADPASS;
    }
    int rc = storage_kv_set(db, host, user, STORE, b.data, b.len);
    OPENSSL_cleanse(b.data, b.len);
    buf_fini(&b);
    return rc == 0 ? 0 : -1;
}

int account_set_password(struct storage *db, const char *host, const char *user,
                         const char *password, unsigned iterations)
{
    char *old = NULL;
    size_t len;
    int rc = storage_kv_get(db, host, user, STORE, &old, &len);
    if (rc != 0)
        return rc == STORAGE_NOTFOUND ? ACCOUNT_NOTFOUND : -1;
    long long created = wall_time();
    const char *c = strstr(old, "\ncreated ");
    if (c)
        created = atoll(c + 9);
    free(old);
    struct buf b;
    buf_init(&b);
    if (encode(password, iterations, created, &b) < 0) {
        buf_fini(&b);
        return ACCOUNT_BADPASS;
    }
    rc = storage_kv_set(db, host, user, STORE, b.data, b.len);
    OPENSSL_cleanse(b.data, b.len);
    buf_fini(&b);
    return rc == 0 ? 0 : -1;
}

int account_delete(struct storage *db, const char *host, const char *user)
{
    int e = account_exists(db, host, user);
    if (e != 1)
        return e < 0 ? -1 : ACCOUNT_NOTFOUND;
    return storage_user_delete(db, host, user) == 0 ? 0 : -1;
}

int account_get_creds(struct storage *db, const char *host, const char *user, enum scram_hash h,
                      struct scram_creds *out)
{
    char *v = NULL;
    size_t len;
    int rc = storage_kv_get(db, host, user, STORE, &v, &len);
    if (rc != 0)
        return rc == STORAGE_NOTFOUND ? ACCOUNT_NOTFOUND : -1;
    rc = parse_creds(v, h, out);
    free(v);
    return rc;
}

int account_check_password(struct storage *db, const char *host, const char *user,
                           const char *password)
{
    struct scram_creds stored, offered;
    int rc = account_get_creds(db, host, user, SCRAM_SHA256, &stored);
    if (rc != 0)
        return rc;
    if (scram_derive(SCRAM_SHA256, password, stored.salt, stored.salt_len, stored.iterations,
                     &offered) < 0)
        return ACCOUNT_BADPASS;
    int ok = CRYPTO_memcmp(stored.stored_key, offered.stored_key, stored.key_len) == 0;
    OPENSSL_cleanse(&offered, sizeof offered);
    return ok ? 0 : ACCOUNT_BADPASS;
}

int account_list(struct storage *db, const char *host, storage_user_fn fn, void *ud)
{
    return storage_kv_users(db, host, STORE, fn, ud);
}
