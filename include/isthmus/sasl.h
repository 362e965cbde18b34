/* sasl.h — server-side SASL (RFC 4422) for XMPP, sans I/O: SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802,
 * RFC 7677) and their -PLUS variants with tls-exporter (RFC 9266) and tls-server-end-point
 * (RFC 5929) channel bindings, and PLAIN (RFC 4616, only when the caller allows it — i.e. over TLS).
 *
 * The server never stores passwords: per account and hash it keeps salt, iteration count,
 * StoredKey and ServerKey (struct scram_creds). SCRAM logins never run PBKDF2; PLAIN does (it
 * derives the keys from the offered password with the stored salt and compares). */
#ifndef ISTHMUS_SASL_H
#define ISTHMUS_SASL_H

#include <stdbool.h>
#include <stddef.h>

enum scram_hash { SCRAM_SHA1, SCRAM_SHA256 };

#define SCRAM_MAX_KEY 32
#define SCRAM_MAX_SALT 64

struct scram_creds {
    unsigned char salt[SCRAM_MAX_SALT];
    size_t salt_len;
    unsigned iterations;
    unsigned char stored_key[SCRAM_MAX_KEY];
    unsigned char server_key[SCRAM_MAX_KEY];
    size_t key_len; /* 20 for SHA-1, 32 for SHA-256 */
};

/* Derives credentials from a password (SASLprep'd first, RFC 4013). Returns 0, or -1 when the
 * password is not acceptable to SASLprep or is empty. */
int scram_derive(enum scram_hash h, const char *password, const unsigned char *salt,
                 size_t salt_len, unsigned iterations, struct scram_creds *out);

/* What the transport offers. exporter/endpoint are NULL when that binding is unavailable. */
struct sasl_channel {
    bool tls;
    const unsigned char *exporter;
    size_t exporter_len;
    const unsigned char *endpoint;
    size_t endpoint_len;
    /* The client showed earlier on this stream that it cannot use any binding type we offer: it
     * tried a -PLUS mechanism with a type we never advertised (sasl_unknown_channel_binding).
     * Clients that predate XEP-0440 (slixmpp 1.8 tries tls-unique, which TLS 1.3 lacks) then
     * retry with gs2 flag 'y'; accepting 'y' only after such an attempt keeps RFC 5802 §6
     * downgrade detection for every client that goes straight to 'y'. */
    bool client_lacks_cb;
};

/* Looks up credentials for an authentication identity (already decoded from SCRAM's =2C/=3D
 * escaping and SASLprep'd; the callback applies nodeprep). Returns 0 found, 1 no such user,
 * -1 storage error. */
typedef int (*sasl_creds_fn)(void *ud, const char *username, enum scram_hash h,
                             struct scram_creds *out);

/* Fills names[] with the mechanisms to offer on this channel, best first; returns the count. */
size_t sasl_mechanisms(const struct sasl_channel *ch, bool allow_plain, const char **names,
                       size_t max);
/* Names of the channel-binding types available on ch (for XEP-0440), returns the count. */
size_t sasl_channel_bindings(const struct sasl_channel *ch, const char **names, size_t max);

struct sasl_session;

/* NULL when mech is not one offered on ch (→ <invalid-mechanism/>). The channel data is copied. */
struct sasl_session *sasl_new(const char *mech, const struct sasl_channel *ch, bool allow_plain,
                              sasl_creds_fn creds, void *ud);
void sasl_free(struct sasl_session *s);

enum sasl_status { SASL_CONTINUE, SASL_OK, SASL_FAIL };

/* One step with the decoded client data (the initial response or a <response/>). On CONTINUE
 * *out is the challenge; on OK *out is the additional data for <success/> (may be empty); on
 * FAIL *condition is an RFC 6120 §6.5 condition name ("not-authorized", "malformed-request",
 * "invalid-authzid", "temporary-auth-failure", ...). *out is the caller's to free (NULL if none). */
enum sasl_status sasl_step(struct sasl_session *s, const unsigned char *in, size_t in_len,
                           unsigned char **out, size_t *out_len, const char **condition);

/* After OK: the authenticated username as the client sent it (decoded, SASLprep'd; not yet
 * nodeprep'd) and the authzid, if any (NULL otherwise). Borrowed. */
const char *sasl_username(const struct sasl_session *s);
const char *sasl_authzid(const struct sasl_session *s);

/* After a failure: true when the client asked for a channel-binding type we do not offer
 * (no credentials were tested, so callers need not count it as a failed login). */
bool sasl_unknown_channel_binding(const struct sasl_session *s);

#endif
