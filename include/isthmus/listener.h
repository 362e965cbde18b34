/* listener.h — listening TCP sockets on the loop, shared by c2s, s2s and the component port.
 * Each accepted connection (non-blocking, close-on-exec) is handed to the owner's callback. */
#ifndef ISTHMUS_LISTENER_H
#define ISTHMUS_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

#include "isthmus/config.h"

struct listener;

/* fd: the accepted socket (the callee owns it); flag: the value given to listener_open. */
typedef void (*listener_accept_fn)(int fd, bool flag);

/* Binds and listens on a; what names the listener in messages ("c2s", "s2s", "component").
 * Appends it to *list. Returns 0, or -1 with "[what] cannot listen on HOST:PORT: why" in err. */
int listener_open(struct listener **list, const struct config_addr *a, const char *what,
                  bool flag, listener_accept_fn fn, char *err, size_t errlen);
/* Stops watching and closes every listener of *list; *list becomes empty. */
void listener_close_all(struct listener **list);

#endif
