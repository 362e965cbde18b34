#include "isthmus/server.h"

#include <stddef.h>
#include <strings.h>

struct server server;

const struct config_host *server_host(const char *domain)
{
    return domain ? config_host_find(&server.cfg, domain) : NULL;
}

bool server_is_local_host(const char *domain)
{
    return server_host(domain) != NULL;
}
