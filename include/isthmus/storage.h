/* storage.h — persistent data over SQLite, in the three shapes every feature needs (Prosody's
 * model): key-value (one value per user and store), map (many keyed values per user and store),
 * archive (time-ordered items per user and store, for offline messages and MAM).
 *
 * One database file, WAL, synchronous=NORMAL, busy_timeout, prepared statements kept per
 * connection, schema versioned with PRAGMA user_version. "Not found" is a distinct result from
 * failure. host/user/store strings are prepared (jid_prep_*) by callers; user "" means host-wide.
 * Values are opaque bytes. Returns: 0 ok, STORAGE_NOTFOUND, or STORAGE_ERR (logged); the deletes
 * return STORAGE_NOTFOUND when nothing matched. A struct storage is one connection: use it from
 * one thread at a time. Callbacks may call back into the same struct storage. */
#ifndef ISTHMUS_STORAGE_H
#define ISTHMUS_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORAGE_NOTFOUND 1
#define STORAGE_ERR (-1)

struct storage;

/* Opens (creating if needed) the database at path and migrates its schema. NULL on failure with
 * a message in err. */
struct storage *storage_open(const char *path, char *err, size_t errlen);
void storage_close(struct storage *st);

/* Groups several writes into one transaction (BEGIN IMMEDIATE ... COMMIT / ROLLBACK). Inner
 * pairs are savepoints: an inner rollback undoes only the writes made since its begin. */
int storage_begin(struct storage *st);
/* Group commit (the server turns it on): writes outside an explicit transaction join one open
 * transaction that storage_flush() commits; call it before any output of the work leaves the
 * process. Inner explicit transactions become savepoints. */
void storage_set_group_commit(struct storage *st, bool on);
int storage_flush(struct storage *st);
int storage_commit(struct storage *st);
int storage_rollback(struct storage *st);

/* Key-value. *value (NUL-terminated for convenience, len excludes it) is the caller's to free. */
int storage_kv_get(struct storage *st, const char *host, const char *user, const char *store,
                   char **value, size_t *len);
int storage_kv_set(struct storage *st, const char *host, const char *user, const char *store,
                   const char *value, size_t len);
int storage_kv_delete(struct storage *st, const char *host, const char *user, const char *store);
/* Calls fn for every user of host that has a value in store, in user order (host-wide values,
 * user "", are not listed); fn returning nonzero stops the walk. */
typedef int (*storage_user_fn)(void *ud, const char *user);
int storage_kv_users(struct storage *st, const char *host, const char *store, storage_user_fn fn,
                     void *ud);

/* Map. */
int storage_map_get(struct storage *st, const char *host, const char *user, const char *store,
                    const char *key, char **value, size_t *len);
int storage_map_set(struct storage *st, const char *host, const char *user, const char *store,
                    const char *key, const char *value, size_t len);
int storage_map_delete(struct storage *st, const char *host, const char *user, const char *store,
                       const char *key); /* key NULL: the whole map */
typedef int (*storage_map_fn)(void *ud, const char *key, const char *value, size_t len);
int storage_map_all(struct storage *st, const char *host, const char *user, const char *store,
                    storage_map_fn fn, void *ud);

/* Archive. Items get a unique, opaque, stable string id (returned in id_out, caller frees). */
int storage_archive_append(struct storage *st, const char *host, const char *user,
                           const char *store, int64_t when, const char *with, const char *value,
                           size_t len, char **id_out);

struct storage_archive_query {
    const char *with;      /* NULL: any */
    int64_t start, end;    /* seconds since the epoch, inclusive; 0: unbounded */
    const char *after_id;  /* items strictly after this id; NULL: from the start */
    const char *before_id; /* items strictly before this id; NULL: to the end */
    size_t limit;          /* 0: unlimited */
    int reverse;           /* newest first: fn gets the items newest first (with limit: the
                              last `limit` items, still newest first) */
};
typedef int (*storage_archive_fn)(void *ud, const char *id, int64_t when, const char *with,
                                  const char *value, size_t len);
/* Calls fn for each matching item in insertion order (or reversed); fn returning nonzero stops.
 * *total, if not NULL, receives the number of items matching with/start/end (ignoring ids and
 * limit). An after_id or before_id naming no item of this user and store: STORAGE_NOTFOUND (for
 * XEP-0313 item-not-found), fn is not called. q NULL: everything. */
int storage_archive_query(struct storage *st, const char *host, const char *user,
                          const char *store, const struct storage_archive_query *q,
                          storage_archive_fn fn, void *ud, size_t *total);
int storage_archive_delete_id(struct storage *st, const char *host, const char *user,
                              const char *store, const char *id);
/* Deletes items with when < before (all users of host when user is NULL); returns the count
 * deleted (>= 0) or STORAGE_ERR. */
int64_t storage_archive_expire(struct storage *st, const char *host, const char *user,
                               const char *store, int64_t before);
int64_t storage_archive_count(struct storage *st, const char *host, const char *user,
                              const char *store);

/* Deletes everything a user has in every store and shape (account removal); 0 even when the
 * user had nothing. */
int storage_user_delete(struct storage *st, const char *host, const char *user);

/* The connection's settings as SQLite reports them (for diagnostics and tests). */
struct storage_info {
    char journal_mode[16]; /* "wal" */
    int synchronous;       /* 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA */
    int foreign_keys;
    int64_t journal_size_limit;
    int schema_version; /* PRAGMA user_version */
};
int storage_get_info(struct storage *st, struct storage_info *info);

#endif
