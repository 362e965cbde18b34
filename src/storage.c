/* storage.c — key-value, map and archive storage over one SQLite connection (see storage.h).
 *
 * Every fixed statement is prepared once per connection, lazily, and reset right after use: a
 * SELECT left un-reset holds a read transaction open, and in WAL mode that keeps checkpoints from
 * completing, so the -wal file would grow without bound. Archive queries with optional filters
 * are built per call. */
#include "isthmus/storage.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "isthmus/log.h"
#include "isthmus/sqldb.h"
#include "isthmus/util.h"

#define TAG "storage"
#define ARCHIVE_ID_LEN 16

/* schema_steps[i] takes a database from user_version i to i + 1. Append only: a step that has
 * shipped is never edited, because databases in the field have already run it. */
static const char *const schema_steps[] = {
    "CREATE TABLE kv (host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL,"
    " value BLOB NOT NULL, PRIMARY KEY (host, user, store));"
    "CREATE TABLE map (host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL,"
    " key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (host, user, store, key));"
    /* seq orders items and is never reused (AUTOINCREMENT), so paging stays stable across
     * deletions; id is the opaque public name. */
    "CREATE TABLE archive (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
    " host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, \"when\" INTEGER NOT NULL,"
    " \"with\" TEXT, value BLOB NOT NULL);"
    "CREATE INDEX archive_by_user ON archive (host, user, store, seq);"
    "CREATE INDEX archive_by_with ON archive (host, user, store, \"with\", seq);"
    "CREATE INDEX archive_by_when ON archive (host, store, \"when\");",
};

enum stmt {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_KV_GET,
    S_KV_SET,
    S_KV_DELETE,
    S_KV_USERS,
    S_MAP_GET,
    S_MAP_SET,
    S_MAP_DELETE,
    S_MAP_DELETE_ALL,
    S_MAP_ALL,
    S_ARCHIVE_APPEND,
    S_ARCHIVE_SEQ,
    S_ARCHIVE_DELETE_ID,
    S_ARCHIVE_EXPIRE_USER,
    S_ARCHIVE_EXPIRE_HOST,
    S_ARCHIVE_COUNT,
    S_USER_DELETE_KV,
    S_USER_DELETE_MAP,
    S_USER_DELETE_ARCHIVE,
    S_COUNT
};

/* Parameters ?1 ?2 ?3 are host, user, store wherever all three appear. */
static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_KV_GET] = "SELECT value FROM kv WHERE host = ?1 AND user = ?2 AND store = ?3",
    [S_KV_SET] = "INSERT INTO kv (host, user, store, value) VALUES (?1, ?2, ?3, ?4)"
                 " ON CONFLICT (host, user, store) DO UPDATE SET value = excluded.value",
    [S_KV_DELETE] = "DELETE FROM kv WHERE host = ?1 AND user = ?2 AND store = ?3",
    [S_KV_USERS] = "SELECT user FROM kv WHERE host = ?1 AND store = ?3 AND user <> ''"
                   " ORDER BY user",
    [S_MAP_GET] = "SELECT value FROM map WHERE host = ?1 AND user = ?2 AND store = ?3 AND key = ?4",
    [S_MAP_SET] = "INSERT INTO map (host, user, store, key, value) VALUES (?1, ?2, ?3, ?4, ?5)"
                  " ON CONFLICT (host, user, store, key) DO UPDATE SET value = excluded.value",
    [S_MAP_DELETE] = "DELETE FROM map WHERE host = ?1 AND user = ?2 AND store = ?3 AND key = ?4",
    [S_MAP_DELETE_ALL] = "DELETE FROM map WHERE host = ?1 AND user = ?2 AND store = ?3",
    [S_MAP_ALL] = "SELECT key, value FROM map WHERE host = ?1 AND user = ?2 AND store = ?3"
                  " ORDER BY key",
    [S_ARCHIVE_APPEND] = "INSERT INTO archive (host, user, store, id, \"when\", \"with\", value)"
                         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_ARCHIVE_SEQ] = "SELECT seq FROM archive WHERE id = ?4 AND host = ?1 AND user = ?2"
                      " AND store = ?3",
    [S_ARCHIVE_DELETE_ID] = "DELETE FROM archive WHERE id = ?4 AND host = ?1 AND user = ?2"
                            " AND store = ?3",
    [S_ARCHIVE_EXPIRE_USER] = "DELETE FROM archive WHERE host = ?1 AND user = ?2 AND store = ?3"
                              " AND \"when\" < ?4",
    [S_ARCHIVE_EXPIRE_HOST] = "DELETE FROM archive WHERE host = ?1 AND store = ?3"
                              " AND \"when\" < ?4",
    [S_ARCHIVE_COUNT] = "SELECT count(*) FROM archive WHERE host = ?1 AND user = ?2"
                        " AND store = ?3",
    [S_USER_DELETE_KV] = "DELETE FROM kv WHERE host = ?1 AND user = ?2",
    [S_USER_DELETE_MAP] = "DELETE FROM map WHERE host = ?1 AND user = ?2",
    [S_USER_DELETE_ARCHIVE] = "DELETE FROM archive WHERE host = ?1 AND user = ?2",
};

struct storage {
    sqlite3 *db;
    sqlite3_stmt *stmts[S_COUNT];
    int depth;     /* storage_begin nesting; levels below the outermost are savepoints */
    bool group;    /* storage_set_group_commit: writes join one transaction until flush */
    bool implicit; /* that transaction is open */
};

static int db_fail(struct storage *st, const char *what)
{
    log_error(TAG, "%s: %s", what, sqlite3_errmsg(st->db));
    return STORAGE_ERR;
}

/* Returns the cached statement, prepared on first use. When the cached one is in the middle of a
 * walk (a callback re-entered us with the same query) a one-off copy is prepared instead;
 * stmt_release tells the two apart. */
static sqlite3_stmt *stmt_acquire(struct storage *st, enum stmt which)
{
    sqlite3_stmt *s = st->stmts[which];
    if (s && !sqlite3_stmt_busy(s))
        return s;
    unsigned flags = s ? 0 : SQLITE_PREPARE_PERSISTENT;
    sqlite3_stmt *fresh = NULL;
    if (sqlite3_prepare_v3(st->db, stmt_sql[which], -1, flags, &fresh, NULL) != SQLITE_OK) {
        db_fail(st, stmt_sql[which]);
        return NULL;
    }
    if (!s)
        st->stmts[which] = fresh;
    return fresh;
}

static void stmt_release(struct storage *st, enum stmt which, sqlite3_stmt *s)
{
    if (s == st->stmts[which]) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    } else {
        sqlite3_finalize(s);
    }
}

/* Binds ?1 ?2 ?3 (host, user, store) when the statement has them. A NULL user is the host-wide
 * user ""; host and store are required. */
static int bind_keys(struct storage *st, sqlite3_stmt *s, const char *host, const char *user,
                     const char *store)
{
    if (!host || !store) {
        log_error(TAG, "missing host or store");
        return STORAGE_ERR;
    }
    const char *values[] = {host, user ? user : "", store};
    for (int i = 1; i <= 3; i++) {
        /* NULL name: the statement does not use ?i (e.g. kv_users has no user). */
        if (sqlite3_bind_parameter_name(s, i) &&
            sqlite3_bind_text(s, i, values[i - 1], -1, SQLITE_STATIC) != SQLITE_OK)
            return db_fail(st, "bind");
    }
    return 0;
}

static int bind_value(struct storage *st, sqlite3_stmt *s, int idx, const char *value, size_t len)
{
    if (!value && len > 0) {
        log_error(TAG, "NULL value with length %zu", len);
        return STORAGE_ERR;
    }
    /* A NULL pointer would bind SQL NULL; an empty value is a zero-length blob. */
    if (sqlite3_bind_blob64(s, idx, value ? value : "", len, SQLITE_STATIC) != SQLITE_OK)
        return db_fail(st, "bind value");
    return 0;
}

static int bind_text(struct storage *st, sqlite3_stmt *s, int idx, const char *text)
{
    int rc = text ? sqlite3_bind_text(s, idx, text, -1, SQLITE_STATIC) : sqlite3_bind_null(s, idx);
    return rc == SQLITE_OK ? 0 : db_fail(st, "bind");
}

static const char *column_blob(sqlite3_stmt *s, int col, size_t *len)
{
    const char *p = sqlite3_column_blob(s, col); /* before _bytes, per the SQLite docs */
    *len = (size_t)sqlite3_column_bytes(s, col);
    return p ? p : "";
}

/* Steps a statement that returns no rows; 0, STORAGE_NOTFOUND if it changed nothing (when
 * notfound_if_none), or STORAGE_ERR. */
static int step_done(struct storage *st, sqlite3_stmt *s, const char *what, bool notfound_if_none)
{
    if (sqlite3_step(s) != SQLITE_DONE)
        return db_fail(st, what);
    if (notfound_if_none && sqlite3_changes64(st->db) == 0)
        return STORAGE_NOTFOUND;
    return 0;
}

/* Steps a single-value SELECT and copies the value out (NUL-terminated). */
static int step_value(struct storage *st, sqlite3_stmt *s, const char *what, char **value,
                      size_t *len)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return STORAGE_NOTFOUND;
    if (rc != SQLITE_ROW)
        return db_fail(st, what);
    size_t n;
    const char *p = column_blob(s, 0, &n);
    if (value) {
        char *copy = xmalloc(n + 1);
        memcpy(copy, p, n);
        copy[n] = '\0';
        *value = copy;
    }
    if (len)
        *len = n;
    return 0;
}

static int step_int64(struct storage *st, sqlite3_stmt *s, const char *what, int64_t *out)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return STORAGE_NOTFOUND;
    if (rc != SQLITE_ROW)
        return db_fail(st, what);
    *out = sqlite3_column_int64(s, 0);
    return 0;
}

static int exec_stmt(struct storage *st, enum stmt which)
{
    sqlite3_stmt *s = stmt_acquire(st, which);
    if (!s)
        return STORAGE_ERR;
    int rc = step_done(st, s, stmt_sql[which], false);
    stmt_release(st, which, s);
    return rc;
}

/* ---- opening ---- */

struct storage *storage_open(const char *path, char *err, size_t errlen)
{
    sqlite3 *db = sqldb_open(path, schema_steps, ARRAY_LEN(schema_steps), SQLDB_FOREIGN_KEYS, TAG,
                             err, errlen);
    if (!db)
        return NULL;
    struct storage *st = xcalloc(1, sizeof *st);
    st->db = db;
    return st;
}

void storage_close(struct storage *st)
{
    if (!st)
        return;
    if (st->depth == 0)
        storage_flush(st);
    if (st->depth > 0) {
        log_warn(TAG, "closing with a transaction open; rolling it back");
        if (!sqlite3_get_autocommit(st->db))
            sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (size_t i = 0; i < S_COUNT; i++)
        sqlite3_finalize(st->stmts[i]);
    sqlite3_exec(st->db, "PRAGMA optimize", NULL, NULL, NULL);
    if (sqlite3_close(st->db) != SQLITE_OK)
        log_error(TAG, "close: %s", sqlite3_errmsg(st->db));
    free(st);
}

int storage_get_info(struct storage *st, struct storage_info *info)
{
    memset(info, 0, sizeof *info);
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "PRAGMA journal_mode", -1, &s, NULL) != SQLITE_OK)
        return db_fail(st, "journal_mode");
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
        snprintf(info->journal_mode, sizeof info->journal_mode, "%s",
                 (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    int64_t sync, fk, version;
    if (sqldb_pragma_int(st->db, "PRAGMA synchronous", &sync) != 0 ||
        sqldb_pragma_int(st->db, "PRAGMA foreign_keys", &fk) != 0 ||
        sqldb_pragma_int(st->db, "PRAGMA journal_size_limit", &info->journal_size_limit) != 0 ||
        sqldb_pragma_int(st->db, "PRAGMA user_version", &version) != 0)
        return db_fail(st, "pragma");
    info->synchronous = (int)sync;
    info->foreign_keys = (int)fk;
    info->schema_version = (int)version;
    return 0;
}

/* ---- transactions ---- */

/* Group commit: with it on, the first write outside any transaction opens one, and
 * storage_flush() commits it — once per event-loop iteration, before any output leaves, so no
 * peer ever sees the effect of a write that is not committed. Explicit transactions inside it
 * become savepoints. */
static int auto_begin(struct storage *st)
{
    if (!st->group || st->implicit || st->depth > 0)
        return 0;
    if (exec_stmt(st, S_BEGIN) != 0)
        return STORAGE_ERR;
    st->implicit = true;
    return 0;
}

void storage_set_group_commit(struct storage *st, bool on)
{
    if (!on)
        storage_flush(st);
    st->group = on;
}

int storage_flush(struct storage *st)
{
    if (!st || !st->implicit || st->depth > 0)
        return 0;
    st->implicit = false;
    if (sqlite3_get_autocommit(st->db)) {
        log_error(TAG, "group commit: the transaction was rolled back by an earlier error");
        return STORAGE_ERR;
    }
    if (exec_stmt(st, S_COMMIT) != 0) {
        if (!sqlite3_get_autocommit(st->db))
            exec_stmt(st, S_ROLLBACK);
        return STORAGE_ERR;
    }
    return 0;
}

static int savepoint(struct storage *st, const char *verb, int level)
{
    char sql[48];
    snprintf(sql, sizeof sql, "%s sp%d", verb, level);
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error(TAG, "%s: %s", sql, msg ? msg : sqlite3_errmsg(st->db));
        sqlite3_free(msg);
        return STORAGE_ERR;
    }
    return 0;
}

/* The outermost level is BEGIN IMMEDIATE (or a savepoint inside a group-commit transaction);
 * inner levels are savepoints, so an inner rollback undoes only its own writes. */
int storage_begin(struct storage *st)
{
    if (st->depth == 0 && !st->implicit) {
        if (exec_stmt(st, S_BEGIN) != 0)
            return STORAGE_ERR;
    } else if (savepoint(st, "SAVEPOINT", st->depth) != 0) {
        return STORAGE_ERR;
    }
    st->depth++;
    return 0;
}

int storage_commit(struct storage *st)
{
    if (st->depth == 0) {
        log_error(TAG, "commit without begin");
        return STORAGE_ERR;
    }
    st->depth--;
    if (st->depth > 0 || st->implicit)
        return savepoint(st, "RELEASE", st->depth);
    /* Some errors (SQLITE_FULL, SQLITE_IOERR, ...) roll the whole transaction back on their own;
     * committing what is left would silently commit nothing. */
    if (sqlite3_get_autocommit(st->db)) {
        log_error(TAG, "commit: the transaction was already rolled back by an earlier error");
        return STORAGE_ERR;
    }
    if (exec_stmt(st, S_COMMIT) != 0) {
        if (!sqlite3_get_autocommit(st->db))
            exec_stmt(st, S_ROLLBACK);
        return STORAGE_ERR;
    }
    return 0;
}

int storage_rollback(struct storage *st)
{
    if (st->depth == 0) {
        log_error(TAG, "rollback without begin");
        return STORAGE_ERR;
    }
    st->depth--;
    if (st->depth > 0 || st->implicit) {
        if (savepoint(st, "ROLLBACK TO", st->depth) != 0)
            return STORAGE_ERR;
        return savepoint(st, "RELEASE", st->depth);
    }
    if (sqlite3_get_autocommit(st->db))
        return 0;
    return exec_stmt(st, S_ROLLBACK);
}

/* ---- key-value ---- */

int storage_kv_get(struct storage *st, const char *host, const char *user, const char *store,
                   char **value, size_t *len)
{
    sqlite3_stmt *s = stmt_acquire(st, S_KV_GET);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = step_value(st, s, "kv_get", value, len);
    stmt_release(st, S_KV_GET, s);
    return rc;
}

int storage_kv_set(struct storage *st, const char *host, const char *user, const char *store,
                   const char *value, size_t len)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    sqlite3_stmt *s = stmt_acquire(st, S_KV_SET);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = bind_value(st, s, 4, value, len);
    if (rc == 0)
        rc = step_done(st, s, "kv_set", false);
    stmt_release(st, S_KV_SET, s);
    return rc;
}

int storage_kv_delete(struct storage *st, const char *host, const char *user, const char *store)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    sqlite3_stmt *s = stmt_acquire(st, S_KV_DELETE);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = step_done(st, s, "kv_delete", true);
    stmt_release(st, S_KV_DELETE, s);
    return rc;
}

int storage_kv_users(struct storage *st, const char *host, const char *store, storage_user_fn fn,
                     void *ud)
{
    sqlite3_stmt *s = stmt_acquire(st, S_KV_USERS);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, NULL, store);
    while (rc == 0) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = db_fail(st, "kv_users");
            break;
        }
        if (fn(ud, (const char *)sqlite3_column_text(s, 0)) != 0)
            break;
    }
    stmt_release(st, S_KV_USERS, s);
    return rc;
}

/* ---- map ---- */

int storage_map_get(struct storage *st, const char *host, const char *user, const char *store,
                    const char *key, char **value, size_t *len)
{
    sqlite3_stmt *s = stmt_acquire(st, S_MAP_GET);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = bind_text(st, s, 4, key ? key : "");
    if (rc == 0)
        rc = step_value(st, s, "map_get", value, len);
    stmt_release(st, S_MAP_GET, s);
    return rc;
}

int storage_map_set(struct storage *st, const char *host, const char *user, const char *store,
                    const char *key, const char *value, size_t len)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    sqlite3_stmt *s = stmt_acquire(st, S_MAP_SET);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = bind_text(st, s, 4, key ? key : "");
    if (rc == 0)
        rc = bind_value(st, s, 5, value, len);
    if (rc == 0)
        rc = step_done(st, s, "map_set", false);
    stmt_release(st, S_MAP_SET, s);
    return rc;
}

int storage_map_delete(struct storage *st, const char *host, const char *user, const char *store,
                       const char *key)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    enum stmt which = key ? S_MAP_DELETE : S_MAP_DELETE_ALL;
    sqlite3_stmt *s = stmt_acquire(st, which);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0 && key)
        rc = bind_text(st, s, 4, key);
    if (rc == 0)
        rc = step_done(st, s, "map_delete", true);
    stmt_release(st, which, s);
    return rc;
}

int storage_map_all(struct storage *st, const char *host, const char *user, const char *store,
                    storage_map_fn fn, void *ud)
{
    sqlite3_stmt *s = stmt_acquire(st, S_MAP_ALL);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    while (rc == 0) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = db_fail(st, "map_all");
            break;
        }
        size_t len;
        const char *value = column_blob(s, 1, &len);
        if (fn(ud, (const char *)sqlite3_column_text(s, 0), value, len) != 0)
            break;
    }
    stmt_release(st, S_MAP_ALL, s);
    return rc;
}

/* ---- archive ---- */

int storage_archive_append(struct storage *st, const char *host, const char *user,
                           const char *store, int64_t when, const char *with, const char *value,
                           size_t len, char **id_out)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_APPEND);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0 && sqlite3_bind_int64(s, 5, when) != SQLITE_OK)
        rc = db_fail(st, "bind");
    if (rc == 0)
        rc = bind_text(st, s, 6, with);
    if (rc == 0)
        rc = bind_value(st, s, 7, value, len);
    char *id = NULL;
    /* 16 characters of [A-Za-z0-9] are ~95 random bits; a collision is retried, not assumed
     * impossible. */
    for (int attempt = 0; rc == 0; attempt++) {
        free(id);
        id = random_id(ARCHIVE_ID_LEN);
        if (sqlite3_bind_text(s, 4, id, -1, SQLITE_STATIC) != SQLITE_OK) {
            rc = db_fail(st, "bind");
            break;
        }
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_CONSTRAINT_UNIQUE || attempt == 3) {
            rc = db_fail(st, "archive_append");
            break;
        }
        sqlite3_reset(s);
    }
    stmt_release(st, S_ARCHIVE_APPEND, s);
    if (rc == 0 && id_out)
        *id_out = id;
    else
        free(id);
    return rc;
}

static int archive_seq(struct storage *st, const char *host, const char *user, const char *store,
                       const char *id, int64_t *seq)
{
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_SEQ);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = bind_text(st, s, 4, id);
    if (rc == 0)
        rc = step_int64(st, s, "archive_seq", seq);
    stmt_release(st, S_ARCHIVE_SEQ, s);
    return rc;
}

/* Parameter numbers of the dynamic archive query; ?1-?3 are host, user, store. */
enum { P_WITH = 4, P_START, P_END, P_AFTER, P_BEFORE, P_LIMIT };

static void archive_filters(struct buf *sql, const struct storage_archive_query *q)
{
    buf_puts(sql, " FROM archive WHERE host = ?1 AND user = ?2 AND store = ?3");
    if (q->with)
        buf_puts(sql, " AND \"with\" = ?4");
    if (q->start)
        buf_puts(sql, " AND \"when\" >= ?5");
    if (q->end)
        buf_puts(sql, " AND \"when\" <= ?6");
}

/* Prepares sql and binds whichever parameters of the query it uses. */
static sqlite3_stmt *archive_prepare(struct storage *st, const char *sql, const char *host,
                                     const char *user, const char *store,
                                     const struct storage_archive_query *q, int64_t after,
                                     int64_t before)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v3(st->db, sql, -1, 0, &s, NULL) != SQLITE_OK) {
        db_fail(st, "archive_query");
        return NULL;
    }
    int n = sqlite3_bind_parameter_count(s);
    int rc = bind_keys(st, s, host, user, store) == 0 ? SQLITE_OK : SQLITE_ERROR;
    if (rc == SQLITE_OK && q->with)
        rc = sqlite3_bind_text(s, P_WITH, q->with, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && q->start)
        rc = sqlite3_bind_int64(s, P_START, q->start);
    if (rc == SQLITE_OK && q->end)
        rc = sqlite3_bind_int64(s, P_END, q->end);
    if (rc == SQLITE_OK && n >= P_AFTER && q->after_id)
        rc = sqlite3_bind_int64(s, P_AFTER, after);
    if (rc == SQLITE_OK && n >= P_BEFORE && q->before_id)
        rc = sqlite3_bind_int64(s, P_BEFORE, before);
    if (rc == SQLITE_OK && n >= P_LIMIT && q->limit)
        rc = sqlite3_bind_int64(s, P_LIMIT,
                                q->limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)q->limit);
    if (rc != SQLITE_OK) {
        db_fail(st, "archive_query bind");
        sqlite3_finalize(s);
        return NULL;
    }
    return s;
}

int storage_archive_query(struct storage *st, const char *host, const char *user, const char *store,
                          const struct storage_archive_query *q, storage_archive_fn fn, void *ud,
                          size_t *total)
{
    static const struct storage_archive_query everything;
    if (!q)
        q = &everything;
    int64_t after = 0, before = 0;
    int rc = 0;
    if (q->after_id)
        rc = archive_seq(st, host, user, store, q->after_id, &after);
    if (rc == 0 && q->before_id)
        rc = archive_seq(st, host, user, store, q->before_id, &before);
    if (rc != 0)
        return rc;

    struct buf sql;
    buf_init(&sql);
    sqlite3_stmt *s;
    if (total) {
        buf_puts(&sql, "SELECT count(*)");
        archive_filters(&sql, q);
        s = archive_prepare(st, sql.data, host, user, store, q, after, before);
        int64_t count = 0;
        rc = s ? step_int64(st, s, "archive_query count", &count) : STORAGE_ERR;
        sqlite3_finalize(s);
        if (rc != 0) {
            buf_fini(&sql);
            return STORAGE_ERR;
        }
        *total = (size_t)count;
        buf_reset(&sql);
    }

    buf_puts(&sql, "SELECT id, \"when\", \"with\", value");
    archive_filters(&sql, q);
    if (q->after_id)
        buf_puts(&sql, " AND seq > ?7");
    if (q->before_id)
        buf_puts(&sql, " AND seq < ?8");
    buf_puts(&sql, q->reverse ? " ORDER BY seq DESC" : " ORDER BY seq ASC");
    if (q->limit)
        buf_puts(&sql, " LIMIT ?9");
    s = archive_prepare(st, sql.data, host, user, store, q, after, before);
    buf_fini(&sql);
    if (!s)
        return STORAGE_ERR;
    for (;;) {
        int step = sqlite3_step(s);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = db_fail(st, "archive_query");
            break;
        }
        size_t len;
        const char *value = column_blob(s, 3, &len);
        if (fn(ud, (const char *)sqlite3_column_text(s, 0), sqlite3_column_int64(s, 1),
               (const char *)sqlite3_column_text(s, 2), value, len) != 0)
            break;
    }
    sqlite3_finalize(s);
    return rc;
}

int storage_archive_delete_id(struct storage *st, const char *host, const char *user,
                              const char *store, const char *id)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    if (!id)
        return STORAGE_NOTFOUND;
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_DELETE_ID);
    if (!s)
        return STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = bind_text(st, s, 4, id);
    if (rc == 0)
        rc = step_done(st, s, "archive_delete_id", true);
    stmt_release(st, S_ARCHIVE_DELETE_ID, s);
    return rc;
}

int64_t storage_archive_expire(struct storage *st, const char *host, const char *user,
                               const char *store, int64_t before)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    enum stmt which = user ? S_ARCHIVE_EXPIRE_USER : S_ARCHIVE_EXPIRE_HOST;
    sqlite3_stmt *s = stmt_acquire(st, which);
    if (!s)
        return STORAGE_ERR;
    int64_t n = STORAGE_ERR;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0 && sqlite3_bind_int64(s, 4, before) != SQLITE_OK)
        rc = db_fail(st, "bind");
    if (rc == 0 && step_done(st, s, "archive_expire", false) == 0)
        n = sqlite3_changes64(st->db);
    stmt_release(st, which, s);
    return n;
}

int64_t storage_archive_count(struct storage *st, const char *host, const char *user,
                              const char *store)
{
    sqlite3_stmt *s = stmt_acquire(st, S_ARCHIVE_COUNT);
    if (!s)
        return STORAGE_ERR;
    int64_t n = 0;
    int rc = bind_keys(st, s, host, user, store);
    if (rc == 0)
        rc = step_int64(st, s, "archive_count", &n);
    stmt_release(st, S_ARCHIVE_COUNT, s);
    return rc == 0 ? n : STORAGE_ERR;
}

int storage_user_delete(struct storage *st, const char *host, const char *user)
{
    if (auto_begin(st) < 0)
        return STORAGE_ERR;
    static const enum stmt steps[] = {S_USER_DELETE_KV, S_USER_DELETE_MAP, S_USER_DELETE_ARCHIVE};
    if (!user) {
        log_error(TAG, "user_delete: no user");
        return STORAGE_ERR;
    }
    if (storage_begin(st) != 0)
        return STORAGE_ERR;
    int rc = 0;
    for (size_t i = 0; i < ARRAY_LEN(steps) && rc == 0; i++) {
        sqlite3_stmt *s = stmt_acquire(st, steps[i]);
        if (!s) {
            rc = STORAGE_ERR;
            break;
        }
        /* These statements have no ?3; bind_keys only needs a non-NULL store. */
        rc = bind_keys(st, s, host, user, "");
        if (rc == 0)
            rc = step_done(st, s, "user_delete", false);
        stmt_release(st, steps[i], s);
    }
    if (rc != 0) {
        storage_rollback(st);
        return STORAGE_ERR;
    }
    return storage_commit(st);
}
