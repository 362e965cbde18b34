/* account.h — user accounts in storage: per account and SCRAM hash the salt, iteration count,
 * StoredKey and ServerKey, never the password (RFC 5802 §3). Names are prepared by the caller
 * (jid_prep_local / jid_prep_domain). Returns 0 on success, ACCOUNT_EXISTS / ACCOUNT_NOTFOUND /
 * ACCOUNT_BADPASS where they apply, or -1 on a storage failure. */
#ifndef ISTHMUS_ACCOUNT_H
#define ISTHMUS_ACCOUNT_H

#include "isthmus/sasl.h"
#include "isthmus/storage.h"

#define ACCOUNT_EXISTS 1
#define ACCOUNT_NOTFOUND 2
#define ACCOUNT_BADPASS 3 /* empty, or rejected by SASLprep */

int account_create(struct storage *db, const char *host, const char *user, const char *password,
                   unsigned iterations);
int account_set_password(struct storage *db, const char *host, const char *user,
                         const char *password, unsigned iterations);
int account_delete(struct storage *db, const char *host, const char *user);
/* 1 exists, 0 does not, -1 storage failure. */
int account_exists(struct storage *db, const char *host, const char *user);
int account_get_creds(struct storage *db, const char *host, const char *user, enum scram_hash h,
                      struct scram_creds *out);
/* Verifies a password (runs PBKDF2: for the admin tool and PLAIN, not for SCRAM logins). */
int account_check_password(struct storage *db, const char *host, const char *user,
                           const char *password);
int account_list(struct storage *db, const char *host, storage_user_fn fn, void *ud);

#endif
