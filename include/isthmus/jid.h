/* jid.h — XMPP addresses (RFC 7622 syntax; preparation with the RFC 3920 stringprep profiles via
 * libidn for localpart and resourcepart, UTS #46 non-transitional via libidn2 for the domainpart,
 * as the XMPP ecosystem does today — see shared/research/libraries.md §8). Results are cached.
 *
 * A parsed JID holds prepared parts: local and resource are NULL when absent. Each part is 1..1023
 * bytes after preparation (RFC 7622 §3.1); an empty part is an error. */
#ifndef ISTHMUS_JID_H
#define ISTHMUS_JID_H

#include <stdbool.h>

struct jid {
    char *local;    /* NULL if none */
    char *domain;   /* never NULL after a successful parse */
    char *resource; /* NULL if none */
};

/* Parses and prepares s. Returns 0, or -1 when s is not a valid JID (→ jid-malformed). On
 * failure *out is zeroed. */
int jid_parse(const char *s, struct jid *out);
void jid_fini(struct jid *j);
int jid_copy(const struct jid *src, struct jid *dst);

/* Strings built from the prepared parts; caller frees. */
char *jid_to_string(const struct jid *j);        /* full form: [local@]domain[/resource] */
char *jid_bare_string(const struct jid *j);      /* [local@]domain */

/* Prepares one part alone; caller frees; NULL when invalid. */
char *jid_prep_local(const char *s);
char *jid_prep_domain(const char *s);
char *jid_prep_resource(const char *s);

/* Normalizes a JID string to its prepared full form; NULL when invalid. Caller frees. */
char *jid_normalize(const char *s);

bool jid_equal(const struct jid *a, const struct jid *b);
bool jid_bare_equal(const struct jid *a, const struct jid *b);

/* XEP-0106 JID escaping of a localpart (space " & ' / : < > @ \ → \20 \22 ...); unescape reverses
 * only the defined sequences. Caller frees. jid_escape_local returns NULL when s begins or ends
 * with a space, which XEP-0106 §4.1 forbids ("\20 MUST NOT be the first or last character"). */
char *jid_escape_local(const char *s);
char *jid_unescape_local(const char *s);

/* Frees the preparation cache (for leak-free shutdown). */
void jid_cache_clear(void);

#endif
