#include "isthmus/server.h"

#include "isthmus/c2s.h"
#include "isthmus/component.h"
#include "isthmus/muc.h"
#include "isthmus/component.h"
#include "isthmus/s2s.h"

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

void server_check_drained(void)
{
    if (server.shutting_down && c2s_count() == 0 && s2s_count() == 0 && component_count() == 0)
        ev_stop(server.loop);
}

bool server_serves_domain(const char *domain)
{
    return domain && (server_is_local_host(domain) || muc_is_service(domain) ||
                      component_handles(domain));
}
