/* component.h — external components: the XEP-0114 accept-mode listener, components the server
 * runs itself (supervised: restarted with backoff, stopped at shutdown) and XEP-0356 privileges.
 *
 * Every [component NAME] is a domain of its own: stanzas to NAME or to any subdomain of it go to
 * the component's stream (renamed jabber:client → jabber:component:accept), and while it is not
 * connected they bounce with remote-server-timeout (IQ get/set and messages; presence is
 * dropped). A component may only send from within its domain. */
#ifndef ISTHMUS_COMPONENT_H
#define ISTHMUS_COMPONENT_H

#include <stdbool.h>
#include <stddef.h>

#include "isthmus/jid.h"
#include "isthmus/stanza.h"

/* Opens the [component] listeners and starts the supervised components. Returns 0, or -1 with a
 * message in err (a component domain that is also a [host], a command without a listener). */
int component_init(char *err, size_t errlen);
/* True when domain (prepared) is a configured component's domain or a subdomain of one. */
bool component_handles(const char *domain);
/* Sends a stanza (jabber:client, `from` stamped) to the component serving its `to` domain;
 * takes ownership. */
void component_route(struct stanza *st);
/* XEP-0356 §4: may `from` (the IQ's sender) get (set=false) or set the roster of an account on
 * the local host `host`? True only for a component's own bare domain with that grant. */
bool component_roster_allowed(const struct jid *from, const char *host, bool set);
/* Closes every component stream (<system-shutdown/>) and sends SIGTERM to supervised ones. */
void component_shutdown(void);
/* Drops every stream at once (shutdown grace period over). */
void component_abort_all(void);
/* Drops every stream left, waits a bounded time for supervised processes, then SIGKILLs them. */
void component_fini(void);
size_t component_count(void); /* connected component streams, authenticated or not */

#endif
