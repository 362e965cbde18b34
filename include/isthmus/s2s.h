/* s2s.h — server-to-server federation (RFC 6120 with jabber:server streams).
 *
 * Outgoing: one stream per (local host, remote domain) pair, found through DNS SRV
 * (_xmpps-server then _xmpp-server, RFC 6120 §3.2, XEP-0368) or [s2s] routes; stanzas wait in a
 * bounded queue while it is set up and are bounced with remote-server-not-found or
 * remote-server-timeout if it cannot be. Authentication: SASL EXTERNAL (XEP-0178) when the
 * peer's certificate verifies for its domain (RFC 6125), else Server Dialback (XEP-0220) when
 * policy allows. Incoming: any number of streams; each authenticates one or more (piggybacked)
 * remote domains, and stanzas whose `from` is not one of them end the stream (RFC 6120 §4.9.3). */
#ifndef ISTHMUS_S2S_H
#define ISTHMUS_S2S_H

#include <stdbool.h>
#include <stddef.h>

#include "isthmus/stanza.h"

/* Opens the [s2s] listeners and the resolver. Federation is on when [s2s] listen is set.
 * Returns 0, or -1 with a message in err. */
int s2s_init(char *err, size_t errlen);
bool s2s_enabled(void);
/* Sends a stanza to a remote domain; takes ownership. Its `from` must be on a local host. */
void s2s_route(struct stanza *st);
/* Closes every stream (incoming ones with <system-shutdown/>). */
void s2s_shutdown(void);
/* Drops every stream at once (shutdown grace period over). */
void s2s_abort_all(void);
void s2s_fini(void);
size_t s2s_count(void);

#endif
