/* backend.h — isthmus-purple's backend process (backend.c): one libpurple instance on a GLib
 * main loop, driven over a socket by the gateway process (gateway.c) with the protocol of
 * proto.h. */
#ifndef ISTHMUS_PURPLE_BACKEND_H
#define ISTHMUS_PURPLE_BACKEND_H

#include <stddef.h>

/* Runs a backend on the connected socket fd until the gateway closes it; certdir (may be NULL)
 * is where accepted server certificates are kept across restarts; userdir (may be NULL: a new
 * temporary one) is libpurple's user directory, removed at exit. Does not return on success. */
int backend_main(int fd, const char *certdir, const char *userdir);
/* Prints the installed protocol plugins (all, or those in only) with their username parts and
 * account options to stdout, one proto.h line each ("prpl", "split", "option", then "end"). */
int backend_describe(const char *const *only, size_t n_only);
/* backend_dns.c: installs the threaded DNS and SRV/TXT UI ops (from the core's ui_init). */
void backend_dns_init(void);

#endif
