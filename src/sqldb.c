/* sqldb.c — creating, configuring and migrating an SQLite database (see sqldb.h). */
#include "isthmus/sqldb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

#define BUSY_TIMEOUT_MS 5000
#define JOURNAL_SIZE_LIMIT (64 * 1024 * 1024)

PRINTF_LIKE(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int sqldb_exec(sqlite3 *db, const char *sql, const char *path, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    set_err(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

int sqldb_pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int configure(sqlite3 *db, const char *path, unsigned flags, const char *tag, char *err,
                     size_t errlen)
{
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);

    /* The first statement reads the file header: a file that is not a database fails here. */
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &s, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (sqlite3_step(s) != SQLITE_ROW) {
        set_err(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(s);
        return -1;
    }
    const char *mode = (const char *)sqlite3_column_text(s, 0);
    if (!mode || strcmp(mode, "wal") != 0)
        log_warn(tag, "%s: journal mode is %s, not wal", path, mode ? mode : "unknown");
    sqlite3_finalize(s);

    /* Debian builds with DEFAULT_WAL_SYNCHRONOUS=FULL; NORMAL in WAL mode is still corruption-
     * free and loses at most the last transactions on power loss (sqlite.org/wal.html). */
    char sql[160];
    snprintf(sql, sizeof sql, "PRAGMA synchronous = NORMAL;%s PRAGMA journal_size_limit = %d;",
             (flags & SQLDB_FOREIGN_KEYS) ? " PRAGMA foreign_keys = ON;" : "", JOURNAL_SIZE_LIMIT);
    return sqldb_exec(db, sql, path, err, errlen);
}

/* Applies the missing schema steps, one transaction each, so a crash leaves a database at some
 * whole version. The version is read again inside BEGIN IMMEDIATE so two processes opening the
 * same file at once cannot both run a step. */
static int migrate(sqlite3 *db, const char *path, const char *const *steps, size_t n_steps,
                   const char *tag, char *err, size_t errlen)
{
    const int64_t latest = (int64_t)n_steps;
    /* The common case, an up-to-date schema, takes no write lock: another connection may be in
     * the middle of a write transaction. */
    int64_t version;
    if (sqldb_pragma_int(db, "PRAGMA user_version", &version) == 0 && version == latest)
        return 0;
    for (;;) {
        if (sqldb_exec(db, "BEGIN IMMEDIATE", path, err, errlen) != 0)
            return -1;
        if (sqldb_pragma_int(db, "PRAGMA user_version", &version) != 0) {
            set_err(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
            goto fail;
        }
        if (version < 0 || version > latest) {
            set_err(err, errlen,
                    "%s: database schema version %lld is newer than this build supports (%lld)",
                    path, (long long)version, (long long)latest);
            goto fail;
        }
        if (version == latest)
            return sqldb_exec(db, "COMMIT", path, err, errlen);
        char set_version[64];
        snprintf(set_version, sizeof set_version, "PRAGMA user_version = %lld",
                 (long long)version + 1);
        if (sqldb_exec(db, steps[version], path, err, errlen) != 0 ||
            sqldb_exec(db, set_version, path, err, errlen) != 0 ||
            sqldb_exec(db, "COMMIT", path, err, errlen) != 0)
            goto fail;
        log_info(tag, "%s: schema migrated to version %lld", path, (long long)version + 1);
    }
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

sqlite3 *sqldb_open(const char *path, const char *const *steps, size_t n_steps, unsigned flags,
                    const char *tag, char *err, size_t errlen)
{
    if (!path || !*path) {
        set_err(err, errlen, "no database path");
        return NULL;
    }
    /* Create the file ourselves so that it starts 0600 whatever the umask; SQLite gives the
     * -wal and -shm files the database file's mode. */
    if (strcmp(path, ":memory:") != 0) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            set_err(err, errlen, "%s: %s", path, strerror(errno));
            return NULL;
        }
        close(fd);
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    if (configure(db, path, flags, tag, err, errlen) != 0 ||
        migrate(db, path, steps, n_steps, tag, err, errlen) != 0) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}
