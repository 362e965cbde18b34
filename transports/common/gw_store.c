/* gw_store.c — a gateway's SQLite database and the sealing of secret fields (see gw_store.h).
 *
 * Fixed statements are prepared once, lazily, and reset right after use: a SELECT left un-reset
 * keeps a read transaction open, and in WAL mode that stops checkpoints, so the -wal file would
 * grow without bound. Functions that call back (reg_each, contact_each, archive_query) copy the
 * rows out first and call back with no statement running, so a callback may use the store freely,
 * writes included. */
#include "gw_store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "isthmus/log.h"
#include "isthmus/sqldb.h"
#include "isthmus/util.h"

#define TAG "gw_store"
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
/* Far above any password; keeps every length an int for EVP. */
#define SEAL_MAX_PLAINTEXT (1 << 24)
/* A state row sealed with the key at creation: opening the database with another key fails at
 * open instead of at the first secret that does not open. */
#define KEY_CHECK_STATE "gw_store.key_check"
#define KEY_CHECK_PLAIN "isthmus gateway store key"

/* ---- sealing (AES-256-GCM, NIST SP 800-38D) ---- */

char *gw_seal(const unsigned char key[GW_STORE_KEY_LEN], const char *plaintext, const char *aad)
{
    if (!key || !plaintext)
        return NULL;
    if (!aad)
        aad = "";
    size_t pt_len = strlen(plaintext), aad_len = strlen(aad);
    if (pt_len > SEAL_MAX_PLAINTEXT || aad_len > SEAL_MAX_PLAINTEXT)
        return NULL;
    size_t raw_len = SEAL_NONCE_LEN + pt_len + SEAL_TAG_LEN;
    unsigned char *raw = xmalloc(raw_len);
    unsigned char *nonce = raw, *ct = raw + SEAL_NONCE_LEN, *tag = ct + pt_len;
    /* A random 96-bit nonce per value: SP 800-38D §8.2.2 allows 2^32 of them per key. */
    random_bytes(nonce, SEAL_NONCE_LEN);

    char *out = NULL;
    int len = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
        EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
        (aad_len == 0 ||
         EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)aad_len) == 1) &&
        (pt_len == 0 ||
         EVP_EncryptUpdate(ctx, ct, &len, (const unsigned char *)plaintext, (int)pt_len) == 1) &&
        EVP_EncryptFinal_ex(ctx, ct + pt_len, &len) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) == 1)
        out = base64_encode(raw, raw_len);
    else
        log_error(TAG, "seal: OpenSSL AES-256-GCM encryption failed");
    EVP_CIPHER_CTX_free(ctx);
    free(raw);
    return out;
}

char *gw_unseal(const unsigned char key[GW_STORE_KEY_LEN], const char *sealed, const char *aad)
{
    if (!key || !sealed)
        return NULL;
    if (!aad)
        aad = "";
    size_t in_len = strlen(sealed), aad_len = strlen(aad);
    /* Bounded before decoding, so a huge column cannot make a huge allocation. */
    if (in_len > (SEAL_MAX_PLAINTEXT / 3 + 64) * 4 || aad_len > SEAL_MAX_PLAINTEXT)
        return NULL;
    unsigned char *raw;
    size_t raw_len;
    if (base64_decode(sealed, in_len, &raw, &raw_len) != 0)
        return NULL;
    if (raw_len < SEAL_NONCE_LEN + SEAL_TAG_LEN) {
        free(raw);
        return NULL;
    }
    size_t ct_len = raw_len - SEAL_NONCE_LEN - SEAL_TAG_LEN;
    unsigned char *nonce = raw, *ct = raw + SEAL_NONCE_LEN, *tag = ct + ct_len;
    unsigned char *pt = xmalloc(ct_len + 1);
    int len = 0;
    bool ok = false;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
        (aad_len == 0 ||
         EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)aad_len) == 1) &&
        (ct_len == 0 || EVP_DecryptUpdate(ctx, pt, &len, ct, (int)ct_len) == 1) &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, tag) == 1 &&
        /* The tag is checked here; nothing decrypted is handed out before it passes. */
        EVP_DecryptFinal_ex(ctx, pt + ct_len, &len) == 1)
        ok = true;
    EVP_CIPHER_CTX_free(ctx);
    free(raw);
    pt[ct_len] = '\0';
    /* gw_seal never seals a NUL; one inside would silently cut the value short. */
    if (!ok || memchr(pt, '\0', ct_len)) {
        OPENSSL_cleanse(pt, ct_len + 1);
        free(pt);
        return NULL;
    }
    return (char *)pt;
}

/* ---- statements ---- */

enum stmt {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_REG_GET,
    S_REG_CLEAR,
    S_REG_INSERT,
    S_REG_JIDS,
    S_REG_COUNT,
    S_REG_ANY_SECRET,
    S_SETTING_GET,
    S_SETTING_SET,
    S_SETTING_DELETE,
    S_SETTINGS_CLEAR,
    S_CONTACT_ADD,
    S_CONTACT_REMOVE,
    S_CONTACT_ALL,
    S_CONTACTS_CLEAR,
    S_ARCHIVE_APPEND,
    S_ARCHIVE_SEQ,
    S_ARCHIVE_EXPIRE,
    S_ARCHIVE_CLEAR,
    S_STATE_GET,
    S_STATE_SET,
    S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    /* Fields come back in the order they were put. key '' marks a registration without fields. */
    [S_REG_GET] = "SELECT key, value, secret FROM registrations WHERE jid = ?1 ORDER BY rowid",
    [S_REG_CLEAR] = "DELETE FROM registrations WHERE jid = ?1",
    [S_REG_INSERT] = "INSERT INTO registrations (jid, key, value, secret) VALUES (?1, ?2, ?3, ?4)",
    [S_REG_JIDS] = "SELECT DISTINCT jid FROM registrations ORDER BY jid",
    [S_REG_COUNT] = "SELECT count(DISTINCT jid) FROM registrations",
    [S_REG_ANY_SECRET] = "SELECT 1 FROM registrations WHERE secret <> 0 LIMIT 1",
    [S_SETTING_GET] = "SELECT value FROM settings WHERE jid = ?1 AND key = ?2",
    [S_SETTING_SET] = "INSERT INTO settings (jid, key, value) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT (jid, key) DO UPDATE SET value = excluded.value",
    [S_SETTING_DELETE] = "DELETE FROM settings WHERE jid = ?1 AND key = ?2",
    [S_SETTINGS_CLEAR] = "DELETE FROM settings WHERE jid = ?1",
    [S_CONTACT_ADD] = "INSERT INTO contacts (jid, contact, name) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT (jid, contact) DO UPDATE SET name = excluded.name",
    [S_CONTACT_REMOVE] = "DELETE FROM contacts WHERE jid = ?1 AND contact = ?2",
    [S_CONTACT_ALL] = "SELECT contact, name FROM contacts WHERE jid = ?1 ORDER BY contact",
    [S_CONTACTS_CLEAR] = "DELETE FROM contacts WHERE jid = ?1",
    [S_ARCHIVE_APPEND] = "INSERT INTO archive (jid, \"with\", id, when_us, xml)"
                         " VALUES (?1, ?2, ?3, ?4, ?5)",
    [S_ARCHIVE_SEQ] = "SELECT seq FROM archive WHERE jid = ?1 AND id = ?2 AND \"with\" = ?3",
    [S_ARCHIVE_EXPIRE] = "DELETE FROM archive WHERE when_us < ?1",
    [S_ARCHIVE_CLEAR] = "DELETE FROM archive WHERE jid = ?1",
    [S_STATE_GET] = "SELECT value FROM state WHERE key = ?1",
    [S_STATE_SET] = "INSERT INTO state (key, value) VALUES (?1, ?2)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
};

struct gw_store {
    sqlite3 *db;
    sqlite3_stmt *stmts[S_COUNT];
    unsigned char key[GW_STORE_KEY_LEN];
};

PRINTF_LIKE(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int db_fail(struct gw_store *st, const char *what)
{
    log_error(TAG, "%s: %s", what, sqlite3_errmsg(st->db));
    return -1;
}

/* The cached statement, prepared on first use; a one-off copy when the cached one is running
 * (re-entered through a callback). stmt_release tells them apart. */
static sqlite3_stmt *stmt_acquire(struct gw_store *st, enum stmt which)
{
    sqlite3_stmt *s = st->stmts[which];
    if (s && !sqlite3_stmt_busy(s))
        return s;
    sqlite3_stmt *fresh = NULL;
    if (sqlite3_prepare_v3(st->db, stmt_sql[which], -1, s ? 0 : SQLITE_PREPARE_PERSISTENT, &fresh,
                           NULL) != SQLITE_OK) {
        db_fail(st, stmt_sql[which]);
        return NULL;
    }
    if (!s)
        st->stmts[which] = fresh;
    return fresh;
}

static void stmt_release(struct gw_store *st, enum stmt which, sqlite3_stmt *s)
{
    if (!s)
        return;
    if (s == st->stmts[which]) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    } else {
        sqlite3_finalize(s);
    }
}

/* Binds text parameters ?1..?n in order; a NULL binds SQL NULL. */
static int bind_texts(struct gw_store *st, sqlite3_stmt *s, int n, const char *const *texts)
{
    for (int i = 0; i < n; i++) {
        int rc = texts[i] ? sqlite3_bind_text(s, i + 1, texts[i], -1, SQLITE_STATIC)
                          : sqlite3_bind_null(s, i + 1);
        if (rc != SQLITE_OK)
            return db_fail(st, "bind");
    }
    return 0;
}

/* Runs a fixed statement that returns no rows, with text parameters. */
static int run(struct gw_store *st, enum stmt which, int n, const char *const *texts)
{
    sqlite3_stmt *s = stmt_acquire(st, which);
    if (!s)
        return -1;
    int rc = bind_texts(st, s, n, texts);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = db_fail(st, stmt_sql[which]);
    stmt_release(st, which, s);
    return rc;
}

/* Runs a fixed single-column SELECT; copies the text of the first row to *value. */
static int get_text(struct gw_store *st, enum stmt which, int n, const char *const *texts,
                    char **value)
{
    sqlite3_stmt *s = stmt_acquire(st, which);
    if (!s)
        return -1;
    int rc = bind_texts(st, s, n, texts);
    if (rc == 0) {
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(s, 0);
            *value = xstrdup(v ? v : "");
        } else if (step == SQLITE_DONE) {
            rc = 1;
        } else {
            rc = db_fail(st, stmt_sql[which]);
        }
    }
    stmt_release(st, which, s);
    return rc;
}

static int begin(struct gw_store *st)
{
    return run(st, S_BEGIN, 0, NULL);
}

/* Commits, or on rc != 0 rolls back; returns the outcome. */
static int finish(struct gw_store *st, int rc)
{
    if (rc == 0) {
        /* Some errors (SQLITE_FULL, SQLITE_IOERR) roll back on their own; COMMIT would then fail
         * with "no transaction is active", which is still reported as the failure it is. */
        if (run(st, S_COMMIT, 0, NULL) == 0)
            return 0;
        rc = -1;
    }
    if (!sqlite3_get_autocommit(st->db))
        run(st, S_ROLLBACK, 0, NULL);
    return rc;
}

/* ---- opening: schema ---- */

/* schema_steps[i] takes a database from user_version i to i + 1 (see sqldb_open). Append only: a
 * step that has shipped is never edited, databases in the field have run it. */
static const char *const schema_steps[] = {
    /* The first schema. archive.seq orders the archive and is never reused (AUTOINCREMENT), so
     * RSM positions stay valid across expiry; when_us ties do not matter. */
    "CREATE TABLE registrations (jid TEXT NOT NULL, key TEXT NOT NULL,"
    " value TEXT NOT NULL, secret INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (jid, key));"
    "CREATE TABLE settings (jid TEXT NOT NULL, key TEXT NOT NULL,"
    " value TEXT NOT NULL, PRIMARY KEY (jid, key));"
    "CREATE TABLE contacts (jid TEXT NOT NULL, contact TEXT NOT NULL, name TEXT,"
    " PRIMARY KEY (jid, contact));"
    "CREATE TABLE archive (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " jid TEXT NOT NULL, \"with\" TEXT NOT NULL, id TEXT NOT NULL,"
    " when_us INTEGER NOT NULL, xml TEXT NOT NULL, UNIQUE (jid, id));"
    "CREATE INDEX archive_by_with ON archive (jid, \"with\", seq);"
    "CREATE INDEX archive_by_when ON archive (when_us);"
    "CREATE TABLE state (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);",
};

/* ---- opening: the key file ---- */

/* Reads an existing key file. 0, -1 with err filled, or 1 when there is no such file. */
static int key_read(const char *path, unsigned char key[GW_STORE_KEY_LEN], char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        set_err(err, errlen, "key file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    int rc = -1;
    if (fstat(fd, &sb) != 0) {
        set_err(err, errlen, "key file %s: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "key file %s: not a regular file", path);
    } else if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        set_err(err, errlen, "key file %s: mode %04o gives group or others access (chmod 600)",
                path, (unsigned)(sb.st_mode & 07777));
    } else if (sb.st_size != GW_STORE_KEY_LEN) {
        set_err(err, errlen, "key file %s: %lld bytes, must be exactly %d", path,
                (long long)sb.st_size, GW_STORE_KEY_LEN);
    } else {
        /* Read one byte more than the key: the file may have grown since fstat. */
        unsigned char tmp[GW_STORE_KEY_LEN + 1];
        size_t got = 0;
        while (got < sizeof tmp) {
            ssize_t n = read(fd, tmp + got, sizeof tmp - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (n < 0)
                    got = SIZE_MAX;
                break;
            }
            got += (size_t)n;
        }
        if (got == GW_STORE_KEY_LEN) {
            memcpy(key, tmp, GW_STORE_KEY_LEN);
            rc = 0;
        } else if (got == SIZE_MAX) {
            set_err(err, errlen, "key file %s: %s", path, strerror(errno));
        } else {
            set_err(err, errlen, "key file %s: must be exactly %d bytes", path, GW_STORE_KEY_LEN);
        }
        OPENSSL_cleanse(tmp, sizeof tmp);
    }
    close(fd);
    return rc;
}

/* Creates the key file with a fresh key. 0, -1 with err filled, or 1 when someone else created
 * it in the meantime (then read it). */
static int key_create(const char *path, unsigned char key[GW_STORE_KEY_LEN], char *err,
                      size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return 1;
        set_err(err, errlen, "key file %s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    random_bytes(key, GW_STORE_KEY_LEN);
    size_t done = 0;
    int saved = 0;
    /* The umask cannot add bits, but a umask of 0777 would leave a file we cannot read back. */
    if (fchmod(fd, 0600) != 0)
        saved = errno;
    while (!saved && done < GW_STORE_KEY_LEN) {
        ssize_t n = write(fd, key + done, GW_STORE_KEY_LEN - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            saved = n < 0 ? errno : EIO;
            break;
        }
        done += (size_t)n;
    }
    if (!saved && fsync(fd) != 0)
        saved = errno;
    if (close(fd) != 0 && !saved)
        saved = errno;
    if (saved) {
        /* The file is ours (O_EXCL): a half-written key must not be found by the next open. */
        unlink(path);
        OPENSSL_cleanse(key, GW_STORE_KEY_LEN);
        set_err(err, errlen, "key file %s: cannot write: %s", path, strerror(saved));
        return -1;
    }
    log_info(TAG, "created key file %s", path);
    return 0;
}

/* Loads the key, creating the file when missing and the database holds nothing sealed, then
 * checks the key against the database. */
static int key_load(struct gw_store *st, const char *db_path, const char *key_path, char *err,
                    size_t errlen)
{
    char *check = NULL;
    int have_check = get_text(st, S_STATE_GET, 1, (const char *const[]){KEY_CHECK_STATE}, &check);
    if (have_check < 0) {
        set_err(err, errlen, "%s: %s", db_path, sqlite3_errmsg(st->db));
        return -1;
    }
    int rc = key_read(key_path, st->key, err, errlen);
    if (rc == 1) {
        sqlite3_stmt *s = stmt_acquire(st, S_REG_ANY_SECRET);
        int step = s ? sqlite3_step(s) : SQLITE_ERROR;
        stmt_release(st, S_REG_ANY_SECRET, s);
        if (have_check == 0 || step == SQLITE_ROW) {
            /* A fresh key could never open what the lost one sealed. */
            set_err(err, errlen, "key file %s is missing, but %s holds values sealed with it",
                    key_path, db_path);
            rc = -1;
        } else if (step != SQLITE_DONE) {
            set_err(err, errlen, "%s: %s", db_path, sqlite3_errmsg(st->db));
            rc = -1;
        } else {
            rc = key_create(key_path, st->key, err, errlen);
            if (rc == 1)
                rc = key_read(key_path, st->key, err, errlen);
            if (rc == 1) {
                set_err(err, errlen, "key file %s: vanished while being created", key_path);
                rc = -1;
            }
        }
    }
    if (rc == 0 && have_check == 0) {
        char *plain = gw_unseal(st->key, check, KEY_CHECK_STATE);
        if (!plain || strcmp(plain, KEY_CHECK_PLAIN) != 0) {
            set_err(err, errlen, "key file %s does not hold the key of %s", key_path, db_path);
            rc = -1;
        }
        free(plain);
    } else if (rc == 0) {
        char *sealed = gw_seal(st->key, KEY_CHECK_PLAIN, KEY_CHECK_STATE);
        if (!sealed || gw_store_state_set(st, KEY_CHECK_STATE, sealed) != 0) {
            set_err(err, errlen, "%s: cannot record the key check", db_path);
            rc = -1;
        }
        free(sealed);
    }
    free(check);
    return rc;
}

struct gw_store *gw_store_open(const char *db_path, const char *key_path, char *err, size_t errlen)
{
    if (!db_path || !*db_path || !key_path || !*key_path) {
        set_err(err, errlen, "gateway store: no database or key file path");
        return NULL;
    }
    sqlite3 *db = sqldb_open(db_path, schema_steps, ARRAY_LEN(schema_steps), 0, TAG, err, errlen);
    if (!db)
        return NULL;
    struct gw_store *st = xcalloc(1, sizeof *st);
    st->db = db;
    if (key_load(st, db_path, key_path, err, errlen) != 0) {
        gw_store_close(st);
        return NULL;
    }
    return st;
}

void gw_store_close(struct gw_store *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < S_COUNT; i++)
        sqlite3_finalize(st->stmts[i]);
    sqlite3_exec(st->db, "PRAGMA optimize", NULL, NULL, NULL);
    if (sqlite3_close(st->db) != SQLITE_OK)
        log_error(TAG, "close: %s", sqlite3_errmsg(st->db));
    OPENSSL_cleanse(st->key, sizeof st->key);
    free(st);
}

void gw_kv_free(struct gw_kv *kv, size_t n)
{
    if (!kv)
        return;
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        if (kv[i].value) {
            /* It may be a password. */
            OPENSSL_cleanse(kv[i].value, strlen(kv[i].value));
            free(kv[i].value);
        }
    }
    free(kv);
}

/* ---- row copies for callbacks ---- */

struct row {
    char *a, *b, *c;
    int64_t n;
};

struct rows {
    struct row *v;
    size_t len, cap;
};

static struct row *rows_push(struct rows *r)
{
    if (r->len == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->v = xrealloc(r->v, r->cap * sizeof *r->v);
    }
    struct row *row = &r->v[r->len++];
    memset(row, 0, sizeof *row);
    return row;
}

static void rows_free(struct rows *r)
{
    for (size_t i = 0; i < r->len; i++) {
        free(r->v[i].a);
        free(r->v[i].b);
        free(r->v[i].c);
    }
    free(r->v);
    memset(r, 0, sizeof *r);
}

static char *column_dup(sqlite3_stmt *s, int col)
{
    return xstrdup((const char *)sqlite3_column_text(s, col));
}

/* Steps s to the end, copying columns 0 and 1 (text) of each row. */
static int collect2(struct gw_store *st, sqlite3_stmt *s, const char *what, struct rows *out)
{
    for (;;) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            return 0;
        if (step != SQLITE_ROW)
            return db_fail(st, what);
        struct row *row = rows_push(out);
        row->a = column_dup(s, 0);
        if (sqlite3_column_count(s) > 1)
            row->b = column_dup(s, 1);
    }
}

/* ---- registrations ---- */

static char *field_aad(const char *jid, const char *key)
{
    return xasprintf("%s\n%s", jid, key);
}

int gw_store_reg_get(struct gw_store *st, const char *jid, struct gw_kv **fields, size_t *n)
{
    *fields = NULL;
    *n = 0;
    if (!jid)
        return -1;
    sqlite3_stmt *s = stmt_acquire(st, S_REG_GET);
    if (!s)
        return -1;
    struct gw_kv *kv = NULL;
    size_t len = 0, cap = 0;
    bool found = false;
    int rc = bind_texts(st, s, 1, &jid);
    while (rc == 0) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = db_fail(st, "reg_get");
            break;
        }
        found = true;
        const char *key = (const char *)sqlite3_column_text(s, 0);
        const char *value = (const char *)sqlite3_column_text(s, 1);
        if (!key || !*key)
            continue;
        if (!value)
            value = "";
        char *plain;
        if (sqlite3_column_int(s, 2)) {
            char *aad = field_aad(jid, key);
            plain = gw_unseal(st->key, value, aad);
            free(aad);
            if (!plain) {
                log_error(TAG,
                          "registration of %s: secret field %s does not open"
                          " (tampered with or sealed with another key)",
                          jid, key);
                rc = -1;
                break;
            }
        } else {
            plain = xstrdup(value);
        }
        if (len == cap) {
            cap = cap ? cap * 2 : 8;
            kv = xrealloc(kv, cap * sizeof *kv);
        }
        kv[len].key = xstrdup(key);
        kv[len].value = plain;
        len++;
    }
    stmt_release(st, S_REG_GET, s);
    if (rc != 0) {
        gw_kv_free(kv, len);
        return rc;
    }
    if (!found)
        return 1;
    *fields = kv;
    *n = len;
    return 0;
}

static bool is_secret(const char *const *secret, const char *key)
{
    for (size_t i = 0; secret && secret[i]; i++)
        if (strcmp(secret[i], key) == 0)
            return true;
    return false;
}

static int reg_insert(struct gw_store *st, const char *jid, const char *key, const char *value,
                      bool secret)
{
    sqlite3_stmt *s = stmt_acquire(st, S_REG_INSERT);
    if (!s)
        return -1;
    int rc = bind_texts(st, s, 3, (const char *const[]){jid, key, value});
    if (rc == 0 && sqlite3_bind_int(s, 4, secret) != SQLITE_OK)
        rc = db_fail(st, "bind");
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE) {
        /* Names the field, never its value (it may be a password); a duplicate, typically. */
        log_error(TAG, "registration of %s: field %s: %s", jid, key, sqlite3_errmsg(st->db));
        rc = -1;
    }
    stmt_release(st, S_REG_INSERT, s);
    return rc;
}

int gw_store_reg_put(struct gw_store *st, const char *jid, const struct gw_kv *fields, size_t n,
                     const char *const *secret)
{
    if (!jid || (n > 0 && !fields)) {
        log_error(TAG, "reg_put: missing JID or fields");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!fields[i].key || !*fields[i].key) {
            log_error(TAG, "reg_put %s: field %zu has no name", jid, i);
            return -1;
        }
    }
    /* Sealed before the transaction, so the write lock is held for the writes only. */
    char **values = xcalloc(n ? n : 1, sizeof *values);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *v = fields[i].value ? fields[i].value : "";
        if (is_secret(secret, fields[i].key)) {
            char *aad = field_aad(jid, fields[i].key);
            values[i] = gw_seal(st->key, v, aad);
            free(aad);
            if (!values[i]) {
                log_error(TAG, "reg_put %s: cannot seal field %s", jid, fields[i].key);
                rc = -1;
            }
        } else {
            values[i] = xstrdup(v);
        }
    }
    if (rc == 0 && begin(st) == 0) {
        rc = run(st, S_REG_CLEAR, 1, &jid);
        /* A registration without fields still exists: the marker row with key ''. */
        if (rc == 0 && n == 0)
            rc = reg_insert(st, jid, "", "", false);
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = reg_insert(st, jid, fields[i].key, values[i], is_secret(secret, fields[i].key));
        rc = finish(st, rc);
    } else {
        rc = -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (values[i]) {
            OPENSSL_cleanse(values[i], strlen(values[i]));
            free(values[i]);
        }
    }
    free(values);
    return rc;
}

int gw_store_reg_delete(struct gw_store *st, const char *jid)
{
    static const enum stmt steps[] = {S_REG_CLEAR, S_SETTINGS_CLEAR, S_CONTACTS_CLEAR,
                                      S_ARCHIVE_CLEAR};
    if (!jid)
        return -1;
    if (begin(st) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < ARRAY_LEN(steps) && rc == 0; i++)
        rc = run(st, steps[i], 1, &jid);
    return finish(st, rc);
}

int gw_store_reg_each(struct gw_store *st, int (*fn)(void *ud, const char *jid), void *ud)
{
    sqlite3_stmt *s = stmt_acquire(st, S_REG_JIDS);
    if (!s)
        return -1;
    struct rows r = {0};
    int rc = collect2(st, s, "reg_each", &r);
    stmt_release(st, S_REG_JIDS, s);
    for (size_t i = 0; i < r.len && rc == 0; i++)
        if (fn(ud, r.v[i].a) != 0)
            break;
    rows_free(&r);
    return rc;
}

int64_t gw_store_reg_count(struct gw_store *st)
{
    sqlite3_stmt *s = stmt_acquire(st, S_REG_COUNT);
    if (!s)
        return -1;
    int64_t count = -1;
    if (sqlite3_step(s) == SQLITE_ROW)
        count = sqlite3_column_int64(s, 0);
    else
        db_fail(st, "reg_count");
    stmt_release(st, S_REG_COUNT, s);
    return count;
}

/* ---- settings ---- */

int gw_store_setting_get(struct gw_store *st, const char *jid, const char *key, char **value)
{
    if (!jid || !key)
        return -1;
    return get_text(st, S_SETTING_GET, 2, (const char *const[]){jid, key}, value);
}

int gw_store_setting_set(struct gw_store *st, const char *jid, const char *key, const char *value)
{
    if (!jid || !key)
        return -1;
    if (!value)
        return gw_store_setting_delete(st, jid, key);
    return run(st, S_SETTING_SET, 3, (const char *const[]){jid, key, value});
}

int gw_store_setting_delete(struct gw_store *st, const char *jid, const char *key)
{
    if (!jid || !key)
        return -1;
    return run(st, S_SETTING_DELETE, 2, (const char *const[]){jid, key});
}

/* ---- contacts ---- */

int gw_store_contact_add(struct gw_store *st, const char *jid, const char *contact,
                         const char *name)
{
    if (!jid || !contact)
        return -1;
    return run(st, S_CONTACT_ADD, 3, (const char *const[]){jid, contact, name});
}

int gw_store_contact_remove(struct gw_store *st, const char *jid, const char *contact)
{
    if (!jid || !contact)
        return -1;
    return run(st, S_CONTACT_REMOVE, 2, (const char *const[]){jid, contact});
}

int gw_store_contact_each(struct gw_store *st, const char *jid,
                          int (*fn)(void *ud, const char *contact, const char *name), void *ud)
{
    if (!jid)
        return -1;
    sqlite3_stmt *s = stmt_acquire(st, S_CONTACT_ALL);
    if (!s)
        return -1;
    struct rows r = {0};
    int rc = bind_texts(st, s, 1, &jid);
    if (rc == 0)
        rc = collect2(st, s, "contact_each", &r);
    stmt_release(st, S_CONTACT_ALL, s);
    for (size_t i = 0; i < r.len && rc == 0; i++)
        if (fn(ud, r.v[i].a, r.v[i].b) != 0)
            break;
    rows_free(&r);
    return rc;
}

/* ---- archive ---- */

int gw_store_archive_append(struct gw_store *st, const char *jid, const char *with, const char *id,
                            int64_t when_us, const char *xml)
{
    if (!jid || !with || !id || !xml) {
        log_error(TAG, "archive_append: missing jid, with, id or xml");
        return -1;
    }
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_APPEND);
    if (!s)
        return -1;
    int rc = bind_texts(st, s, 3, (const char *const[]){jid, with, id});
    if (rc == 0 && (sqlite3_bind_int64(s, 4, when_us) != SQLITE_OK ||
                    sqlite3_bind_text(s, 5, xml, -1, SQLITE_STATIC) != SQLITE_OK))
        rc = db_fail(st, "bind");
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = db_fail(st, "archive_append");
    stmt_release(st, S_ARCHIVE_APPEND, s);
    return rc;
}

/* The position of id among jid's items with `with`; 1 when there is none (XEP-0059 §2.6: the
 * item-not-found the caller returns). */
static int archive_seq(struct gw_store *st, const char *jid, const char *with, const char *id,
                       int64_t *seq)
{
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_SEQ);
    if (!s)
        return -1;
    int rc = bind_texts(st, s, 3, (const char *const[]){jid, id, with});
    if (rc == 0) {
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            *seq = sqlite3_column_int64(s, 0);
        else if (step == SQLITE_DONE)
            rc = 1;
        else
            rc = db_fail(st, "archive_query position");
    }
    stmt_release(st, S_ARCHIVE_SEQ, s);
    return rc;
}

enum { P_JID = 1, P_WITH, P_START, P_END, P_AFTER, P_BEFORE, P_LIMIT };

/* One page, XEP-0313 §4 with XEP-0059 paging: forward from after_id (or the start), or, when
 * before_id is set, the page that ends just before it (or at the end for ""). One row more than
 * the page is fetched: whether it exists is what `complete` says. */
int gw_store_archive_query(struct gw_store *st, const char *jid, const struct gw_archive_query *q,
                           int (*fn)(void *ud, const char *id, int64_t when_us, const char *xml),
                           void *ud, bool *complete)
{
    if (complete)
        *complete = false;
    if (!jid || !q || !q->with) {
        log_error(TAG, "archive_query: missing jid or with");
        return -1;
    }
    bool backward = q->before_id != NULL;
    int64_t after = 0, before = 0;
    int rc = 0;
    if (q->after_id)
        rc = archive_seq(st, jid, q->with, q->after_id, &after);
    if (rc == 0 && backward && *q->before_id)
        rc = archive_seq(st, jid, q->with, q->before_id, &before);
    if (rc != 0)
        return rc;

    struct buf sql;
    buf_init(&sql);
    buf_puts(&sql, "SELECT id, when_us, xml FROM archive WHERE jid = ?1 AND \"with\" = ?2");
    if (q->start_us)
        buf_puts(&sql, " AND when_us >= ?3");
    if (q->end_us)
        buf_puts(&sql, " AND when_us <= ?4");
    if (q->after_id)
        buf_puts(&sql, " AND seq > ?5");
    if (backward && *q->before_id)
        buf_puts(&sql, " AND seq < ?6");
    buf_puts(&sql, backward ? " ORDER BY seq DESC LIMIT ?7" : " ORDER BY seq ASC LIMIT ?7");
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, sql.data, -1, &s, NULL) != SQLITE_OK) {
        buf_fini(&sql);
        return db_fail(st, "archive_query");
    }
    buf_fini(&sql);
    /* ?7 is always there, so ?1..?7 all exist; the ones the text does not use are ignored. */
    const int64_t ints[] = {[P_START] = q->start_us,
                            [P_END] = q->end_us,
                            [P_AFTER] = after,
                            [P_BEFORE] = before,
                            [P_LIMIT] = (int64_t)q->max + 1};
    int brc = sqlite3_bind_text(s, P_JID, jid, -1, SQLITE_STATIC);
    if (brc == SQLITE_OK)
        brc = sqlite3_bind_text(s, P_WITH, q->with, -1, SQLITE_STATIC);
    for (int p = P_START; p <= P_LIMIT && brc == SQLITE_OK; p++)
        brc = sqlite3_bind_int64(s, p, ints[p]);
    if (brc != SQLITE_OK) {
        rc = db_fail(st, "archive_query bind");
        sqlite3_finalize(s);
        return rc;
    }

    struct rows r = {0};
    bool more = false;
    for (;;) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = db_fail(st, "archive_query");
            break;
        }
        if (r.len == q->max) {
            more = true;
            break;
        }
        struct row *row = rows_push(&r);
        row->a = column_dup(s, 0);
        row->n = sqlite3_column_int64(s, 1);
        row->c = column_dup(s, 2);
    }
    sqlite3_finalize(s);
    if (rc == 0) {
        if (complete)
            *complete = !more;
        for (size_t i = 0; i < r.len; i++) {
            const struct row *row = &r.v[backward ? r.len - 1 - i : i];
            if (fn(ud, row->a, row->n, row->c) != 0)
                break;
        }
    }
    rows_free(&r);
    return rc;
}

int64_t gw_store_archive_expire(struct gw_store *st, int64_t before_us)
{
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_EXPIRE);
    if (!s)
        return -1;
    int64_t n = -1;
    if (sqlite3_bind_int64(s, 1, before_us) != SQLITE_OK)
        db_fail(st, "bind");
    else if (sqlite3_step(s) != SQLITE_DONE)
        db_fail(st, "archive_expire");
    else
        n = sqlite3_changes64(st->db);
    stmt_release(st, S_ARCHIVE_EXPIRE, s);
    return n;
}

/* ---- state ---- */

int gw_store_state_get(struct gw_store *st, const char *key, char **value)
{
    if (!key)
        return -1;
    return get_text(st, S_STATE_GET, 1, &key, value);
}

int gw_store_state_set(struct gw_store *st, const char *key, const char *value)
{
    if (!key || !value)
        return -1;
    return run(st, S_STATE_SET, 2, (const char *const[]){key, value});
}
