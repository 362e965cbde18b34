/* server.h — the process-wide state every subsystem shares: configuration, loop, storage. One
 * server per process; `server` is set up by main() before anything else runs. */
#ifndef ISTHMUS_SERVER_H
#define ISTHMUS_SERVER_H

#include <stdbool.h>

#include "isthmus/config.h"
#include "isthmus/ev.h"
#include "isthmus/storage.h"

#define ISTHMUS_NAME "Isthmus"
#define ISTHMUS_VERSION "0.1.0"

struct server {
    struct config cfg;
    struct ev_loop *loop;
    struct storage *db;
    bool shutting_down;
    int64_t started; /* wall clock, seconds */
};

extern struct server server;

/* True when domain (prepared) is one of our virtual hosts. */
bool server_is_local_host(const char *domain);
const struct config_host *server_host(const char *domain);
/* Domains this server answers for over federation: its hosts, MUC services and components. */
bool server_serves_domain(const char *domain);
/* During shutdown: stops the loop once no client or server stream is left. */
void server_check_drained(void);

#endif
