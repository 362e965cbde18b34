/* test_gw_store.c — gw_store.h against real SQLite and key files in a temporary directory; the
 * files are also read behind the store's back (sqlite3 directly, raw bytes) to check what it
 * promises about them. */
#include "gw_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "isthmus/log.h"
#include "isthmus/util.h"
#include "test.h"

static char tmpdir[] = "/tmp/isthmus-gw-store-XXXXXX";
static int path_counter;

/* Fresh database and key paths for one test. */
struct paths {
    char *db, *key;
};

static struct paths new_paths(void)
{
    path_counter++;
    return (struct paths){xasprintf("%s/g%d.db", tmpdir, path_counter),
                          xasprintf("%s/g%d.key", tmpdir, path_counter)};
}

static void paths_free(struct paths *p)
{
    free(p->db);
    free(p->key);
}

static struct gw_store *open_store(const struct paths *p)
{
    char err[512] = "";
    struct gw_store *st = gw_store_open(p->db, p->key, err, sizeof err);
    if (!st)
        fprintf(stderr, "  gw_store_open: %s\n", err);
    return st;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK(write(fd, data, len) == (ssize_t)len);
    CHECK(fchmod(fd, mode) == 0);
    close(fd);
}

/* The whole file, or NULL when it does not exist. */
static unsigned char *read_file(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return (unsigned char *)buf_take(&b);
}

/* Runs SQL on the database file with our own connection. */
static int raw_exec(const char *db_path, const char *sql)
{
    sqlite3 *db;
    if (sqlite3_open(db_path, &db) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  raw_exec: %s\n", msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* The first column of the first row of sql, as a malloc'd string (NULL when no row). */
static char *raw_query(const char *db_path, const char *sql)
{
    sqlite3 *db;
    char *out = NULL;
    sqlite3_stmt *s = NULL;
    if (sqlite3_open(db_path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        out = xstrdup((const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    sqlite3_close(db);
    return out;
}

static bool contains(const char *haystack, const char *needle)
{
    return haystack && strstr(haystack, needle) != NULL;
}

/* ---- sealing ---- */

static void test_seal(void)
{
    unsigned char key[GW_STORE_KEY_LEN], other[GW_STORE_KEY_LEN];
    random_bytes(key, sizeof key);
    memcpy(other, key, sizeof other);
    other[0] ^= 1;

    char *sealed = gw_seal(key, "hunter2", "alice@example.org\npassword");
    CHECK(sealed != NULL);
    if (!sealed)
        return;
    /* base64 of 12 + 7 + 16 = 35 bytes. */
    CHECK(strlen(sealed) == 48);
    char *plain = gw_unseal(key, sealed, "alice@example.org\npassword");
    CHECK_STR(plain, "hunter2");
    free(plain);

    /* Another aad (user or field), another key: nothing. */
    CHECK(gw_unseal(key, sealed, "bob@example.org\npassword") == NULL);
    CHECK(gw_unseal(key, sealed, "alice@example.org\nnick") == NULL);
    CHECK(gw_unseal(key, sealed, "") == NULL);
    CHECK(gw_unseal(key, sealed, NULL) == NULL);
    CHECK(gw_unseal(other, sealed, "alice@example.org\npassword") == NULL);

    /* Every single flipped bit, in nonce, ciphertext and tag, is caught. */
    unsigned char *raw;
    size_t raw_len;
    CHECK(base64_decode(sealed, strlen(sealed), &raw, &raw_len) == 0);
    CHECK(raw_len == 35);
    int opened = 0;
    for (size_t i = 0; i < raw_len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            raw[i] ^= (unsigned char)(1 << bit);
            char *tampered = base64_encode(raw, raw_len);
            char *p = gw_unseal(key, tampered, "alice@example.org\npassword");
            if (p)
                opened++;
            free(p);
            free(tampered);
            raw[i] ^= (unsigned char)(1 << bit);
        }
    }
    CHECK(opened == 0);

    /* Short input: shorter than nonce + tag, or cut anywhere. */
    char *short_one = base64_encode(raw, 27);
    CHECK(gw_unseal(key, short_one, "alice@example.org\npassword") == NULL);
    free(short_one);
    for (size_t cut = 0; cut < raw_len; cut++) {
        char *cut_one = base64_encode(raw, cut);
        CHECK(gw_unseal(key, cut_one, "alice@example.org\npassword") == NULL);
        free(cut_one);
    }
    free(raw);
    CHECK(gw_unseal(key, "", "x") == NULL);
    CHECK(gw_unseal(key, "not base64 at all!", "x") == NULL);
    CHECK(gw_unseal(key, NULL, "x") == NULL);

    /* A fresh nonce each time: the same value seals differently. */
    char *again = gw_seal(key, "hunter2", "alice@example.org\npassword");
    CHECK(again && strcmp(again, sealed) != 0);
    free(again);
    free(sealed);

    /* The empty value and the empty aad. */
    sealed = gw_seal(key, "", "");
    CHECK(sealed != NULL);
    plain = gw_unseal(key, sealed, "");
    CHECK_STR(plain, "");
    free(plain);
    CHECK(gw_unseal(key, sealed, "a") == NULL);
    free(sealed);

    /* A longer value, several AES blocks, UTF-8 included. */
    const char *text = "p\xc3\xa4ssw\xc3\xb6rd with spaces and more than thirty-two bytes in it";
    sealed = gw_seal(key, text, "j\nk");
    plain = gw_unseal(key, sealed, "j\nk");
    CHECK_STR(plain, text);
    free(plain);
    free(sealed);
}

/* ---- opening ---- */

static void test_open_creates(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    struct stat sb;
    CHECK(stat(p.key, &sb) == 0);
    CHECK((sb.st_mode & 07777) == 0600);
    CHECK(sb.st_size == GW_STORE_KEY_LEN);
    CHECK(stat(p.db, &sb) == 0);
    CHECK((sb.st_mode & 077) == 0);

    char *mode = raw_query(p.db, "PRAGMA journal_mode");
    CHECK_STR(mode, "wal");
    free(mode);
    char *version = raw_query(p.db, "PRAGMA user_version");
    CHECK_STR(version, "1");
    free(version);
    /* The tables the brief names, and indexes on the archive. */
    char *tables = raw_query(p.db, "SELECT group_concat(name, ',') FROM (SELECT name FROM"
                                   " sqlite_master WHERE type = 'table' AND name NOT LIKE"
                                   " 'sqlite_%' ORDER BY name)");
    CHECK_STR(tables, "archive,contacts,registrations,settings,state");
    free(tables);
    char *indexes = raw_query(p.db, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                                    " AND tbl_name = 'archive' AND name LIKE 'archive_by_%'");
    CHECK_STR(indexes, "2");
    free(indexes);
    gw_store_close(st);
    gw_store_close(NULL);

    /* Reopening keeps the key file as it is. */
    size_t len1, len2;
    unsigned char *key1 = read_file(p.key, &len1);
    st = open_store(&p);
    CHECK(st != NULL);
    gw_store_close(st);
    unsigned char *key2 = read_file(p.key, &len2);
    CHECK(key1 && key2 && len1 == GW_STORE_KEY_LEN && len2 == GW_STORE_KEY_LEN &&
          memcmp(key1, key2, GW_STORE_KEY_LEN) == 0);
    free(key1);
    free(key2);

    /* Two stores get two different keys. */
    struct paths q = new_paths();
    st = open_store(&q);
    CHECK(st != NULL);
    gw_store_close(st);
    key1 = read_file(p.key, &len1);
    key2 = read_file(q.key, &len2);
    CHECK(key1 && key2 && memcmp(key1, key2, GW_STORE_KEY_LEN) != 0);
    free(key1);
    free(key2);
    paths_free(&p);
    paths_free(&q);
}

static void test_bad_key_files(void)
{
    char err[512];
    unsigned char bytes[64];
    random_bytes(bytes, sizeof bytes);

    struct {
        size_t len;
        mode_t mode;
        const char *why;
    } cases[] = {
        {31, 0600, "exactly 32"}, {33, 0600, "exactly 32"}, {0, 0600, "exactly 32"},
        {32, 0644, "mode 0644"},  {32, 0640, "mode 0640"},  {32, 0604, "mode 0604"},
        {32, 0660, "mode 0660"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct paths p = new_paths();
        write_file(p.key, bytes, cases[i].len, cases[i].mode);
        err[0] = '\0';
        struct gw_store *st = gw_store_open(p.db, p.key, err, sizeof err);
        CHECK(st == NULL);
        gw_store_close(st);
        CHECK(contains(err, p.key));
        CHECK(contains(err, cases[i].why));
        if (!contains(err, cases[i].why))
            fprintf(stderr, "  case %zu: %s\n", i, err);
        /* The refused file is left alone. */
        struct stat sb;
        CHECK(stat(p.key, &sb) == 0 && (size_t)sb.st_size == cases[i].len);
        paths_free(&p);
    }

    /* A directory where the key file should be. */
    struct paths p = new_paths();
    CHECK(mkdir(p.key, 0700) == 0);
    err[0] = '\0';
    CHECK(gw_store_open(p.db, p.key, err, sizeof err) == NULL);
    CHECK(contains(err, p.key));
    rmdir(p.key);
    paths_free(&p);

    /* A good 32-byte 0600 file made by hand is used as is. */
    p = new_paths();
    write_file(p.key, bytes, GW_STORE_KEY_LEN, 0600);
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    struct gw_kv f[] = {{(char *)"password", (char *)"pw"}};
    const char *const secret[] = {"password", NULL};
    CHECK(gw_store_reg_put(st, "a@x", f, 1, secret) == 0);
    gw_store_close(st);
    char *sealed = raw_query(p.db, "SELECT value FROM registrations WHERE key = 'password'");
    char *plain = gw_unseal(bytes, sealed, "a@x\npassword");
    CHECK_STR(plain, "pw");
    free(plain);
    free(sealed);

    /* Another store's key (right size and mode) does not fit this database. */
    struct paths q = new_paths();
    st = open_store(&q);
    gw_store_close(st);
    err[0] = '\0';
    CHECK(gw_store_open(p.db, q.key, err, sizeof err) == NULL);
    CHECK(contains(err, q.key));

    /* Losing the key file is not papered over with a fresh key. */
    CHECK(unlink(p.key) == 0);
    err[0] = '\0';
    CHECK(gw_store_open(p.db, p.key, err, sizeof err) == NULL);
    CHECK(contains(err, p.key) && contains(err, "missing"));
    CHECK(access(p.key, F_OK) != 0);
    paths_free(&p);
    paths_free(&q);

    /* Missing arguments. */
    err[0] = '\0';
    CHECK(gw_store_open(NULL, "k", err, sizeof err) == NULL);
    CHECK(err[0] != '\0');
    CHECK(gw_store_open("d", NULL, err, sizeof err) == NULL);
    CHECK(gw_store_open("", "", NULL, 0) == NULL);
}

static void test_future_version(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    gw_store_close(st);
    CHECK(raw_exec(p.db, "PRAGMA user_version = 99") == 0);
    char err[512] = "";
    st = gw_store_open(p.db, p.key, err, sizeof err);
    CHECK(st == NULL);
    gw_store_close(st);
    CHECK(contains(err, p.db));
    CHECK(contains(err, "99"));
    CHECK(contains(err, "newer"));
    /* Left as it was. */
    char *version = raw_query(p.db, "PRAGMA user_version");
    CHECK_STR(version, "99");
    free(version);
    paths_free(&p);

    /* A file that is not a database. */
    p = new_paths();
    write_file(p.db, "this is not an SQLite database, not even close......", 52, 0600);
    err[0] = '\0';
    CHECK(gw_store_open(p.db, p.key, err, sizeof err) == NULL);
    CHECK(contains(err, p.db));
    paths_free(&p);
}

/* ---- registrations ---- */

struct collected {
    struct buf b;
    int calls;
    int stop_after; /* 0: never stop */
};

static int collect_jid(void *ud, const char *jid)
{
    struct collected *c = ud;
    buf_printf(&c->b, "%s;", jid);
    return ++c->calls == c->stop_after;
}

static void test_registrations(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    struct gw_kv *kv = (struct gw_kv *)1;
    size_t n = 99;
    CHECK(gw_store_reg_get(st, "alice@example.org", &kv, &n) == 1);
    CHECK(kv == NULL && n == 0);
    CHECK(gw_store_reg_count(st) == 0);

    const struct gw_kv fields[] = {
        {(char *)"username", (char *)"alice_irc"},
        {(char *)"password", (char *)"s3cr3t-passw0rd-value"},
        {(char *)"nick", (char *)"alice"},
    };
    const char *const secret[] = {"password", "not-a-field", NULL};
    CHECK(gw_store_reg_put(st, "alice@example.org", fields, 3, secret) == 0);
    CHECK(gw_store_reg_get(st, "alice@example.org", &kv, &n) == 0);
    CHECK(n == 3);
    if (n == 3) {
        /* In the order they were put, secret decrypted. */
        CHECK_STR(kv[0].key, "username");
        CHECK_STR(kv[0].value, "alice_irc");
        CHECK_STR(kv[1].key, "password");
        CHECK_STR(kv[1].value, "s3cr3t-passw0rd-value");
        CHECK_STR(kv[2].key, "nick");
        CHECK_STR(kv[2].value, "alice");
    }
    gw_kv_free(kv, n);
    gw_kv_free(NULL, 0);

    /* The secret is stored sealed with "jid\nfield"; the others in clear. */
    char *stored = raw_query(p.db, "SELECT value FROM registrations WHERE jid ="
                                   " 'alice@example.org' AND key = 'password' AND secret <> 0");
    CHECK(stored && !contains(stored, "s3cr3t"));
    char *nick = raw_query(p.db, "SELECT value FROM registrations WHERE key = 'nick'"
                                 " AND secret = 0");
    CHECK_STR(nick, "alice");
    free(nick);
    size_t key_len;
    unsigned char *key = read_file(p.key, &key_len);
    CHECK(key && key_len == GW_STORE_KEY_LEN);
    char *plain = key ? gw_unseal(key, stored, "alice@example.org\npassword") : NULL;
    CHECK_STR(plain, "s3cr3t-passw0rd-value");
    free(plain);
    free(stored);
    free(key);

    /* Replacing drops the fields not given again; a put with no secret list seals nothing. */
    const struct gw_kv fields2[] = {{(char *)"nick", (char *)"alice2"}};
    CHECK(gw_store_reg_put(st, "alice@example.org", fields2, 1, NULL) == 0);
    CHECK(gw_store_reg_get(st, "alice@example.org", &kv, &n) == 0);
    CHECK(n == 1 && strcmp(kv[0].key, "nick") == 0 && strcmp(kv[0].value, "alice2") == 0);
    gw_kv_free(kv, n);

    /* A bad put (duplicate or empty field name) changes nothing. */
    const struct gw_kv dup[] = {{(char *)"a", (char *)"1"}, {(char *)"a", (char *)"2"}};
    CHECK(gw_store_reg_put(st, "alice@example.org", dup, 2, NULL) == -1);
    const struct gw_kv unnamed[] = {{(char *)"", (char *)"1"}};
    CHECK(gw_store_reg_put(st, "alice@example.org", unnamed, 1, NULL) == -1);
    CHECK(gw_store_reg_get(st, "alice@example.org", &kv, &n) == 0);
    CHECK(n == 1 && strcmp(kv[0].value, "alice2") == 0);
    gw_kv_free(kv, n);
    CHECK(gw_store_reg_put(st, "new@example.org", dup, 2, NULL) == -1);
    CHECK(gw_store_reg_get(st, "new@example.org", &kv, &n) == 1);

    /* A registration without fields exists. NULL values are stored as "". */
    CHECK(gw_store_reg_put(st, "empty@example.org", NULL, 0, NULL) == 0);
    CHECK(gw_store_reg_get(st, "empty@example.org", &kv, &n) == 0);
    CHECK(n == 0);
    gw_kv_free(kv, n);
    const struct gw_kv nulls[] = {{(char *)"x", NULL}};
    CHECK(gw_store_reg_put(st, "bob@example.org", nulls, 1, secret) == 0);
    CHECK(gw_store_reg_get(st, "bob@example.org", &kv, &n) == 0);
    CHECK(n == 1 && strcmp(kv[0].value, "") == 0);
    gw_kv_free(kv, n);

    CHECK(gw_store_reg_count(st) == 3);
    struct collected c = {.stop_after = 0};
    buf_init(&c.b);
    CHECK(gw_store_reg_each(st, collect_jid, &c) == 0);
    CHECK_STR(c.b.data, "alice@example.org;bob@example.org;empty@example.org;");
    buf_reset(&c.b);
    c.calls = 0;
    c.stop_after = 2;
    CHECK(gw_store_reg_each(st, collect_jid, &c) == 0);
    CHECK_STR(c.b.data, "alice@example.org;bob@example.org;");
    buf_fini(&c.b);

    /* Delete takes settings, contacts and archive along, and only that user's. */
    CHECK(gw_store_setting_set(st, "alice@example.org", "k", "v") == 0);
    CHECK(gw_store_setting_set(st, "bob@example.org", "k", "v") == 0);
    CHECK(gw_store_contact_add(st, "alice@example.org", "c@irc", "C") == 0);
    CHECK(gw_store_contact_add(st, "bob@example.org", "c@irc", "C") == 0);
    CHECK(gw_store_archive_append(st, "alice@example.org", "#r@irc", "id1", 1, "<m/>") == 0);
    CHECK(gw_store_archive_append(st, "bob@example.org", "#r@irc", "id1", 1, "<m/>") == 0);
    CHECK(gw_store_reg_delete(st, "alice@example.org") == 0);
    CHECK(gw_store_reg_get(st, "alice@example.org", &kv, &n) == 1);
    char *v = NULL;
    CHECK(gw_store_setting_get(st, "alice@example.org", "k", &v) == 1);
    CHECK(gw_store_setting_get(st, "bob@example.org", "k", &v) == 0);
    free(v);
    char *count = raw_query(p.db, "SELECT (SELECT count(*) FROM contacts WHERE jid ="
                                  " 'alice@example.org') || ',' || (SELECT count(*) FROM archive"
                                  " WHERE jid = 'alice@example.org') || ',' || (SELECT count(*)"
                                  " FROM contacts) || ',' || (SELECT count(*) FROM archive)");
    CHECK_STR(count, "0,0,1,1");
    free(count);
    CHECK(gw_store_reg_count(st) == 2);
    /* Deleting what is not there is fine. */
    CHECK(gw_store_reg_delete(st, "alice@example.org") == 0);
    gw_store_close(st);
    paths_free(&p);
}

/* The password must not be anywhere in the files, WAL included, in any encoding we wrote. */
static void test_secret_not_in_clear(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    const char *password = "Tr0ub4dor&3-correct-horse-battery";
    const struct gw_kv fields[] = {{(char *)"password", (char *)password}};
    const char *const secret[] = {"password", NULL};
    CHECK(gw_store_reg_put(st, "carol@example.org", fields, 1, secret) == 0);

    char *wal = xasprintf("%s-wal", p.db);
    size_t db_len, wal_len;
    unsigned char *db_bytes = read_file(p.db, &db_len);
    unsigned char *wal_bytes = read_file(wal, &wal_len);
    CHECK(db_bytes != NULL);
    CHECK(db_len + wal_len > 0);
    CHECK(!db_bytes || !memmem(db_bytes, db_len, password, strlen(password)));
    CHECK(!wal_bytes || !memmem(wal_bytes, wal_len, password, strlen(password)));
    /* A plaintext that would be there: the check above is looking at the right bytes. */
    CHECK((db_bytes && memmem(db_bytes, db_len, "carol@example.org", 17)) ||
          (wal_bytes && memmem(wal_bytes, wal_len, "carol@example.org", 17)));
    free(db_bytes);
    free(wal_bytes);
    gw_store_close(st);

    /* After close (checkpointed into the main file) too. */
    db_bytes = read_file(p.db, &db_len);
    CHECK(db_bytes && memmem(db_bytes, db_len, "carol@example.org", 17));
    CHECK(db_bytes && !memmem(db_bytes, db_len, password, strlen(password)));
    free(db_bytes);
    char *in_clear = raw_query(p.db, "SELECT count(*) FROM registrations WHERE value LIKE"
                                     " '%Tr0ub4dor%'");
    CHECK_STR(in_clear, "0");
    free(in_clear);

    /* Reopen: the same key reads the secret back. */
    st = open_store(&p);
    CHECK(st != NULL);
    struct gw_kv *kv = NULL;
    size_t n = 0;
    CHECK(st && gw_store_reg_get(st, "carol@example.org", &kv, &n) == 0);
    CHECK(n == 1 && strcmp(kv[0].value, password) == 0);
    gw_kv_free(kv, n);
    gw_store_close(st);

    /* A sealed value copied to another user does not open for them: the read fails whole. */
    CHECK(raw_exec(p.db, "INSERT INTO registrations (jid, key, value, secret) SELECT"
                         " 'mallory@example.org', key, value, secret FROM registrations"
                         " WHERE jid = 'carol@example.org'") == 0);
    /* Nor under another field name. */
    CHECK(raw_exec(p.db, "INSERT INTO registrations (jid, key, value, secret) SELECT"
                         " jid, 'nick', value, secret FROM registrations"
                         " WHERE jid = 'carol@example.org'") == 0);
    st = open_store(&p);
    CHECK(st != NULL);
    kv = (struct gw_kv *)1;
    CHECK(st && gw_store_reg_get(st, "mallory@example.org", &kv, &n) == -1);
    CHECK(kv == NULL && n == 0);
    CHECK(st && gw_store_reg_get(st, "carol@example.org", &kv, &n) == -1);
    gw_store_close(st);

    /* A tampered byte fails the read too. */
    /* One base64 character changed, in the nonce. */
    CHECK(raw_exec(p.db, "DELETE FROM registrations WHERE key = 'nick';"
                         "UPDATE registrations SET value = substr(value, 1, 5) ||"
                         " (CASE substr(value, 6, 1) WHEN 'A' THEN 'B' ELSE 'A' END) ||"
                         " substr(value, 7) WHERE jid = 'carol@example.org'") == 0);
    st = open_store(&p);
    CHECK(st && gw_store_reg_get(st, "carol@example.org", &kv, &n) == -1);
    gw_store_close(st);
    free(wal);
    paths_free(&p);
}

/* ---- settings, contacts, state ---- */

static void test_settings_state(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    char *v = (char *)"untouched";
    CHECK(gw_store_setting_get(st, "u@x", "lang", &v) == 1);
    CHECK(strcmp(v, "untouched") == 0);
    CHECK(gw_store_setting_set(st, "u@x", "lang", "de") == 0);
    CHECK(gw_store_setting_set(st, "w@x", "lang", "fr") == 0);
    CHECK(gw_store_setting_get(st, "u@x", "lang", &v) == 0);
    CHECK_STR(v, "de");
    free(v);
    CHECK(gw_store_setting_set(st, "u@x", "lang", "en") == 0);
    CHECK(gw_store_setting_get(st, "u@x", "lang", &v) == 0);
    CHECK_STR(v, "en");
    free(v);
    CHECK(gw_store_setting_set(st, "u@x", "empty", "") == 0);
    CHECK(gw_store_setting_get(st, "u@x", "empty", &v) == 0);
    CHECK_STR(v, "");
    free(v);
    CHECK(gw_store_setting_delete(st, "u@x", "lang") == 0);
    CHECK(gw_store_setting_get(st, "u@x", "lang", &v) == 1);
    CHECK(gw_store_setting_delete(st, "u@x", "lang") == 0);
    CHECK(gw_store_setting_set(st, "u@x", "empty", NULL) == 0);
    CHECK(gw_store_setting_get(st, "u@x", "empty", &v) == 1);
    CHECK(gw_store_setting_get(st, "w@x", "lang", &v) == 0);
    CHECK_STR(v, "fr");
    free(v);

    CHECK(gw_store_state_get(st, "bridge.1", &v) == 1);
    CHECK(gw_store_state_set(st, "bridge.1", "one") == 0);
    CHECK(gw_store_state_set(st, "bridge.1", "two") == 0);
    CHECK(gw_store_state_get(st, "bridge.1", &v) == 0);
    CHECK_STR(v, "two");
    free(v);
    gw_store_close(st);

    /* Persisted. */
    st = open_store(&p);
    CHECK(st && gw_store_state_get(st, "bridge.1", &v) == 0);
    CHECK_STR(v, "two");
    free(v);
    CHECK(st && gw_store_setting_get(st, "w@x", "lang", &v) == 0);
    CHECK_STR(v, "fr");
    free(v);
    gw_store_close(st);
    paths_free(&p);
}

static int collect_contact(void *ud, const char *contact, const char *name)
{
    struct collected *c = ud;
    buf_printf(&c->b, "%s=%s;", contact, name ? name : "(none)");
    return ++c->calls == c->stop_after;
}

static void test_contacts(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    struct collected c = {0};
    buf_init(&c.b);
    CHECK(gw_store_contact_each(st, "u@x", collect_contact, &c) == 0);
    CHECK(c.calls == 0);
    CHECK(gw_store_contact_add(st, "u@x", "zed%irc@gw", "Zed") == 0);
    CHECK(gw_store_contact_add(st, "u@x", "amy%irc@gw", NULL) == 0);
    CHECK(gw_store_contact_add(st, "u@x", "bob%irc@gw", "Bob") == 0);
    CHECK(gw_store_contact_add(st, "other@x", "eve%irc@gw", "Eve") == 0);
    /* Adding again updates the name. */
    CHECK(gw_store_contact_add(st, "u@x", "bob%irc@gw", "Robert") == 0);
    CHECK(gw_store_contact_each(st, "u@x", collect_contact, &c) == 0);
    CHECK_STR(c.b.data, "amy%irc@gw=(none);bob%irc@gw=Robert;zed%irc@gw=Zed;");
    buf_reset(&c.b);
    c.calls = 0;
    c.stop_after = 1;
    CHECK(gw_store_contact_each(st, "u@x", collect_contact, &c) == 0);
    CHECK_STR(c.b.data, "amy%irc@gw=(none);");
    buf_reset(&c.b);
    c.calls = 0;
    c.stop_after = 0;
    CHECK(gw_store_contact_remove(st, "u@x", "bob%irc@gw") == 0);
    CHECK(gw_store_contact_remove(st, "u@x", "nobody") == 0);
    CHECK(gw_store_contact_each(st, "u@x", collect_contact, &c) == 0);
    CHECK_STR(c.b.data, "amy%irc@gw=(none);zed%irc@gw=Zed;");
    buf_fini(&c.b);
    gw_store_close(st);
    paths_free(&p);
}

/* A callback may write to the store while it is being walked. */
struct reentry {
    struct gw_store *st;
    int calls;
};

static int delete_each(void *ud, const char *jid)
{
    struct reentry *r = ud;
    r->calls++;
    return gw_store_reg_delete(r->st, jid) != 0;
}

static void test_reentrant_callbacks(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    const struct gw_kv f[] = {{(char *)"nick", (char *)"n"}};
    CHECK(gw_store_reg_put(st, "a@x", f, 1, NULL) == 0);
    CHECK(gw_store_reg_put(st, "b@x", f, 1, NULL) == 0);
    CHECK(gw_store_reg_put(st, "c@x", f, 1, NULL) == 0);
    struct reentry r = {st, 0};
    CHECK(gw_store_reg_each(st, delete_each, &r) == 0);
    CHECK(r.calls == 3);
    CHECK(gw_store_reg_count(st) == 0);
    gw_store_close(st);
    paths_free(&p);
}

/* ---- archive ---- */

struct page {
    struct buf ids;
    int calls;
    int64_t last_when;
    bool ordered;
    int stop_after;
};

static int collect_item(void *ud, const char *id, int64_t when_us, const char *xml)
{
    struct page *pg = ud;
    if (when_us < pg->last_when)
        pg->ordered = false;
    pg->last_when = when_us;
    /* The xml is the one stored with that id. */
    char expect[64];
    snprintf(expect, sizeof expect, "<message id='%s'/>", id);
    if (strcmp(xml, expect) != 0)
        pg->ordered = false;
    buf_printf(&pg->ids, "%s ", id);
    return ++pg->calls == pg->stop_after;
}

/* Runs one query and returns the ids it produced ("m1 m2 "), or "ERR"/"NOTFOUND". */
static char *page_of(struct gw_store *st, const char *jid, const struct gw_archive_query *q,
                     bool *complete)
{
    struct page pg = {.ordered = true, .last_when = INT64_MIN};
    buf_init(&pg.ids);
    int rc = gw_store_archive_query(st, jid, q, collect_item, &pg, complete);
    if (!pg.ordered)
        buf_puts(&pg.ids, "UNORDERED");
    if (rc != 0) {
        buf_reset(&pg.ids);
        buf_puts(&pg.ids, rc == 1 ? "NOTFOUND" : "ERR");
    }
    return buf_take(&pg.ids);
}

#define CHECK_PAGE(st, q, expect_ids, expect_complete)                                             \
    do {                                                                                           \
        bool complete_ = !(expect_complete);                                                       \
        char *ids_ = page_of(st, "u@x", q, &complete_);                                            \
        CHECK_STR(ids_, expect_ids);                                                               \
        CHECK(complete_ == (expect_complete));                                                     \
        free(ids_);                                                                                \
    } while (0)

static void fill_archive(struct gw_store *st)
{
    /* m1..m10 in #room, when = 100 * i, except m5 and m6 which share m4's time: order is the
     * insertion order, not the time. Interleaved: other rooms and another user with the same
     * ids. */
    for (int i = 1; i <= 10; i++) {
        char id[16], xml[64];
        snprintf(id, sizeof id, "m%d", i);
        snprintf(xml, sizeof xml, "<message id='%s'/>", id);
        int64_t when = (i == 5 || i == 6) ? 400 : 100 * i;
        CHECK(gw_store_archive_append(st, "u@x", "#room@irc", id, when, xml) == 0);
        char other[16], other_xml[64];
        snprintf(other, sizeof other, "o%d", i);
        snprintf(other_xml, sizeof other_xml, "<message id='%s'/>", other);
        CHECK(gw_store_archive_append(st, "u@x", "#other@irc", other, when, other_xml) == 0);
        CHECK(gw_store_archive_append(st, "v@x", "#room@irc", id, when, "<y/>") == 0);
    }
}

static void test_archive_paging(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    fill_archive(st);

    /* The id is unique per user. */
    CHECK(gw_store_archive_append(st, "u@x", "#room@irc", "m3", 5000, "<dup/>") == -1);
    CHECK(gw_store_archive_append(st, "u@x", "#elsewhere@irc", "m3", 5000, "<dup/>") == -1);

    /* Forward, three at a time. */
    struct gw_archive_query q = {.with = "#room@irc", .max = 3};
    CHECK_PAGE(st, &q, "m1 m2 m3 ", false);
    q.after_id = "m3";
    CHECK_PAGE(st, &q, "m4 m5 m6 ", false);
    q.after_id = "m6";
    CHECK_PAGE(st, &q, "m7 m8 m9 ", false);
    q.after_id = "m9";
    CHECK_PAGE(st, &q, "m10 ", true);
    q.after_id = "m10";
    CHECK_PAGE(st, &q, "", true);
    /* Exactly filling the last page is complete. */
    q.after_id = "m7";
    CHECK_PAGE(st, &q, "m8 m9 m10 ", true);

    /* Backward: before "" is the last page, then earlier ones, each in chronological order. */
    q.after_id = NULL;
    q.before_id = "";
    CHECK_PAGE(st, &q, "m8 m9 m10 ", false);
    q.before_id = "m8";
    CHECK_PAGE(st, &q, "m5 m6 m7 ", false);
    q.before_id = "m5";
    CHECK_PAGE(st, &q, "m2 m3 m4 ", false);
    q.before_id = "m2";
    CHECK_PAGE(st, &q, "m1 ", true);
    q.before_id = "m1";
    CHECK_PAGE(st, &q, "", true);
    q.before_id = "m4";
    CHECK_PAGE(st, &q, "m1 m2 m3 ", true);

    /* Both: the window between, paged from its end. */
    q.after_id = "m2";
    q.before_id = "m9";
    CHECK_PAGE(st, &q, "m6 m7 m8 ", false);
    q.max = 10;
    CHECK_PAGE(st, &q, "m3 m4 m5 m6 m7 m8 ", true);

    /* Unknown ids, ids of another room: item-not-found. */
    q = (struct gw_archive_query){.with = "#room@irc", .max = 3, .after_id = "nope"};
    CHECK_PAGE(st, &q, "NOTFOUND", false);
    q.after_id = "o3";
    CHECK_PAGE(st, &q, "NOTFOUND", false);
    q.after_id = NULL;
    q.before_id = "nope";
    CHECK_PAGE(st, &q, "NOTFOUND", false);
    q.before_id = "";
    q.after_id = "nope";
    CHECK_PAGE(st, &q, "NOTFOUND", false);

    /* Time bounds (inclusive), with paging inside them. */
    q = (struct gw_archive_query){.with = "#room@irc", .max = 3, .start_us = 300, .end_us = 800};
    CHECK_PAGE(st, &q, "m3 m4 m5 ", false);
    q.after_id = "m5";
    CHECK_PAGE(st, &q, "m6 m7 m8 ", true);
    q.after_id = NULL;
    q.before_id = "";
    CHECK_PAGE(st, &q, "m6 m7 m8 ", false);
    q.before_id = "m6";
    CHECK_PAGE(st, &q, "m3 m4 m5 ", true);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100, .start_us = 400, .end_us = 400};
    CHECK_PAGE(st, &q, "m4 m5 m6 ", true);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100, .start_us = 900};
    CHECK_PAGE(st, &q, "m9 m10 ", true);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100, .end_us = 250};
    CHECK_PAGE(st, &q, "m1 m2 ", true);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100, .start_us = 5000};
    CHECK_PAGE(st, &q, "", true);

    /* The other room, the other user, a room with nothing. */
    q = (struct gw_archive_query){.with = "#other@irc", .max = 2, .after_id = "o8"};
    CHECK_PAGE(st, &q, "o9 o10 ", true);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100};
    bool complete = false;
    char *ids = page_of(st, "v@x", &q, &complete);
    CHECK(contains(ids, "UNORDERED")); /* v's xml is <y/>: collect_item notices */
    free(ids);
    q = (struct gw_archive_query){.with = "#nothing@irc", .max = 5};
    CHECK_PAGE(st, &q, "", true);
    q.before_id = "";
    CHECK_PAGE(st, &q, "", true);

    /* max 0: no items, complete says whether there were any. */
    q = (struct gw_archive_query){.with = "#room@irc", .max = 0};
    CHECK_PAGE(st, &q, "", false);
    q.after_id = "m10";
    CHECK_PAGE(st, &q, "", true);

    /* The callback can stop early; complete still describes the page asked for. */
    q = (struct gw_archive_query){.with = "#room@irc", .max = 4};
    struct page pg = {.ordered = true, .last_when = INT64_MIN, .stop_after = 2};
    buf_init(&pg.ids);
    complete = true;
    CHECK(gw_store_archive_query(st, "u@x", &q, collect_item, &pg, &complete) == 0);
    CHECK_STR(pg.ids.data, "m1 m2 ");
    CHECK(!complete);
    buf_fini(&pg.ids);
    /* complete may be NULL; with is required. */
    buf_init(&pg.ids);
    CHECK(gw_store_archive_query(st, "u@x", &q, collect_item, &pg, NULL) == 0);
    buf_fini(&pg.ids);
    q.with = NULL;
    CHECK(gw_store_archive_query(st, "u@x", &q, collect_item, &pg, NULL) == -1);
    gw_store_close(st);
    paths_free(&p);
}

static void test_archive_expire(void)
{
    struct paths p = new_paths();
    struct gw_store *st = open_store(&p);
    CHECK(st != NULL);
    if (!st)
        return;
    fill_archive(st);
    CHECK(gw_store_archive_expire(st, 0) == 0);
    /* Before 300: m1 m2, o1 o2, and v's m1 m2. */
    CHECK(gw_store_archive_expire(st, 300) == 6);
    CHECK(gw_store_archive_expire(st, 300) == 0);
    struct gw_archive_query q = {.with = "#room@irc", .max = 100};
    CHECK_PAGE(st, &q, "m3 m4 m5 m6 m7 m8 m9 m10 ", true);
    /* An expired id is unknown now; paging from a surviving one still works. */
    q.after_id = "m2";
    CHECK_PAGE(st, &q, "NOTFOUND", false);
    q.after_id = "m3";
    q.max = 2;
    CHECK_PAGE(st, &q, "m4 m5 ", false);
    /* Strictly older: the three items at 400 survive a cut at 400. */
    CHECK(gw_store_archive_expire(st, 400) == 3);
    q = (struct gw_archive_query){.with = "#room@irc", .max = 100};
    CHECK_PAGE(st, &q, "m4 m5 m6 m7 m8 m9 m10 ", true);
    CHECK(gw_store_archive_expire(st, INT64_MAX) == 21);
    CHECK_PAGE(st, &q, "", true);
    /* An expired id may be used again. */
    CHECK(gw_store_archive_append(st, "u@x", "#room@irc", "m1", 1, "<message id='m1'/>") == 0);
    CHECK_PAGE(st, &q, "m1 ", true);
    gw_store_close(st);
    paths_free(&p);
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = xasprintf("%s/%s", tmpdir, e->d_name);
        unlink(path);
        free(path);
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    /* The refusals tested here are logged as errors; they would clutter the output. */
    log_open(NULL, (enum log_level)(LOG_ERROR + 1));
    TEST_RUN(test_seal);
    TEST_RUN(test_open_creates);
    TEST_RUN(test_bad_key_files);
    TEST_RUN(test_future_version);
    TEST_RUN(test_registrations);
    TEST_RUN(test_secret_not_in_clear);
    TEST_RUN(test_settings_state);
    TEST_RUN(test_contacts);
    TEST_RUN(test_reentrant_callbacks);
    TEST_RUN(test_archive_paging);
    TEST_RUN(test_archive_expire);
    remove_tmpdir();
    return TEST_DONE();
}
