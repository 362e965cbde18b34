/* gw_store.h — a gateway's own SQLite database: registrations (which XMPP user has which legacy
 * account, with what fields), per-user settings, legacy contacts put in the user's roster, a
 * per-user message archive (XEP-0313 for rooms the gateway hosts) and gateway-global state.
 *
 * One file per gateway (default data_dir/NAME.db), WAL, synchronous=NORMAL, schema versioned with
 * PRAGMA user_version (migrations run at open; a newer version than we know is an error).
 * Secret registration fields (passwords) are sealed with AES-256-GCM (OpenSSL EVP): a random
 * 12-byte nonce per value, the owner's JID and field name as associated data (a value copied to
 * another user or field does not open), stored as base64(nonce | ciphertext | 16-byte tag). The
 * 32-byte key lives in its own file, created on first open with mode 0600 from the CSPRNG; a key
 * file that is not exactly 32 bytes or is readable by group/others is an error at open.
 *
 * Return values: 0 success, 1 not found (getters), -1 failure (logged with the SQLite message).
 * Strings handed out are malloc'd and the caller's unless said otherwise. JIDs are bare and
 * already normalised by the caller. */

/* Details of this implementation callers may rely on: removing something absent (setting, contact,
 * registration) is a success (0); a registration's fields come back in the order they were put;
 * field names must be non-empty and distinct (else -1, nothing changed); a put with n == 0 still
 * creates a (field-less) registration. The database records a value sealed with its key, so
 * opening it with another key file, or after losing the key file, fails at open. Callbacks run
 * after the rows are read (no statement open), so they may call into the store, writes included.
 */
#ifndef ISTHMUS_GW_STORE_H
#define ISTHMUS_GW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_STORE_KEY_LEN 32

struct gw_store;

/* One field of a registration. */
struct gw_kv {
    char *key;
    char *value;
};
void gw_kv_free(struct gw_kv *kv, size_t n); /* frees the strings and the array */

struct gw_store *gw_store_open(const char *db_path, const char *key_path, char *err, size_t errlen);
void gw_store_close(struct gw_store *st);

/* ---- registrations ---- */
/* All fields of jid's registration, secret ones decrypted. A secret value that fails to open
 * (tampered, wrong key) makes the call fail (-1), never hands out garbage. */
int gw_store_reg_get(struct gw_store *st, const char *jid, struct gw_kv **fields, size_t *n);
/* Replaces jid's registration with these fields; those named in secret (NULL-terminated list of
 * field names, may be NULL) are sealed. Creates the registration when new. */
int gw_store_reg_put(struct gw_store *st, const char *jid, const struct gw_kv *fields, size_t n,
                     const char *const *secret);
/* Removes the registration and everything else of jid (settings, contacts, archive). */
int gw_store_reg_delete(struct gw_store *st, const char *jid);
/* Calls fn for each registered JID in JID order; fn returning non-zero stops early. */
int gw_store_reg_each(struct gw_store *st, int (*fn)(void *ud, const char *jid), void *ud);
int64_t gw_store_reg_count(struct gw_store *st);

/* ---- per-user settings (also for unregistered users) ---- */
int gw_store_setting_get(struct gw_store *st, const char *jid, const char *key, char **value);
/* A NULL value deletes the setting. */
int gw_store_setting_set(struct gw_store *st, const char *jid, const char *key, const char *value);
int gw_store_setting_delete(struct gw_store *st, const char *jid, const char *key);

/* ---- legacy contacts the gateway put in (or asked to put in) jid's roster ---- */
int gw_store_contact_add(struct gw_store *st, const char *jid, const char *contact,
                         const char *name);
int gw_store_contact_remove(struct gw_store *st, const char *jid, const char *contact);
/* In contact order; name is NULL when the contact was added without one. */
int gw_store_contact_each(struct gw_store *st, const char *jid,
                          int (*fn)(void *ud, const char *contact, const char *name), void *ud);

/* ---- per-user archive (XEP-0313 on JIDs the gateway hosts, e.g. IRC channels) ---- */
/* Appends one message. id: the stable archive id (XEP-0359 stanza-id), unique per jid; when:
 * microseconds since the epoch; with: the bare JID the message belongs to (the room); xml: the
 * serialized <message/>. */
/* An id already in jid's archive fails (-1). */
int gw_store_archive_append(struct gw_store *st, const char *jid, const char *with,
                            const char *id, int64_t when_us, const char *xml);
struct gw_archive_query {
    const char *with;     /* required: the room's bare JID */
    int64_t start_us, end_us; /* 0: unbounded */
    const char *after_id; /* RSM <after/>: items after this id; NULL: from the start */
    const char *before_id;/* RSM <before/>: items before this id; "" = the last page; NULL: off */
    unsigned max;         /* page size (callers cap it) */
};
/* Calls fn in chronological order for one page. *complete (may be NULL) is set when the page
 * reaches the end of the result set in the query's direction. 1 when after_id/before_id is
 * unknown (item-not-found). */
int gw_store_archive_query(struct gw_store *st, const char *jid, const struct gw_archive_query *q,
                           int (*fn)(void *ud, const char *id, int64_t when_us, const char *xml),
                           void *ud, bool *complete);
/* Deletes archive items older than before_us for every user; returns the number removed. */
int64_t gw_store_archive_expire(struct gw_store *st, int64_t before_us);

/* ---- gateway-global key-value state (bridges, schema notes) ---- */
int gw_store_state_get(struct gw_store *st, const char *key, char **value);
int gw_store_state_set(struct gw_store *st, const char *key, const char *value);

/* ---- the sealing itself (exposed for unit tests and isthmusctl) ---- */
/* base64(nonce | ciphertext | tag), or NULL on failure. */
char *gw_seal(const unsigned char key[GW_STORE_KEY_LEN], const char *plaintext, const char *aad);
/* The plaintext, or NULL when the value is malformed, tampered with or sealed for another aad. */
char *gw_unseal(const unsigned char key[GW_STORE_KEY_LEN], const char *sealed, const char *aad);

#endif
