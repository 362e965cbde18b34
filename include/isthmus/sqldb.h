/* sqldb.h — opening an SQLite database the way every Isthmus store does (the server's storage.c,
 * each gateway's gw_store.c): a file created 0600, WAL, synchronous=NORMAL, a busy timeout, a
 * bounded -wal file, and a schema versioned with PRAGMA user_version.
 *
 * Errors are written to err as "PATH: what failed" (Redis anetSetError style); err may be NULL. */
#ifndef ISTHMUS_SQLDB_H
#define ISTHMUS_SQLDB_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* sqldb_open flags. */
#define SQLDB_FOREIGN_KEYS 0x1u /* PRAGMA foreign_keys = ON, set before the schema steps run */

/* Opens the database at path, creating the file (mode 0600 whatever the umask) when missing;
 * ":memory:" opens a private in-memory database. Then configures the connection and brings the
 * schema up to version n_steps: steps[i] is the SQL that takes user_version i to i + 1, applied
 * one transaction each. steps is append only: a step that has shipped is never edited, databases
 * in the field have already run it. A file that is not a database, or whose schema is newer than
 * n_steps, is refused and left untouched. tag is the log tag for the warnings and the "schema
 * migrated" lines. Returns the connection (close it with sqlite3_close), or NULL with err
 * filled. */
sqlite3 *sqldb_open(const char *path, const char *const *steps, size_t n_steps, unsigned flags,
                    const char *tag, char *err, size_t errlen);

/* Runs one or more SQL statements that return no rows. 0, or -1 with "path: message" in err. */
int sqldb_exec(sqlite3 *db, const char *sql, const char *path, char *err, size_t errlen);

/* Runs a statement whose first row's first column is an integer (a PRAGMA read) into *out.
 * 0, or -1 when it fails or returns no row (*out untouched; sqlite3_errmsg says why). */
int sqldb_pragma_int(sqlite3 *db, const char *sql, int64_t *out);

#endif
