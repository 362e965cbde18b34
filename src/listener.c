#include "isthmus/listener.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isthmus/log.h"
#include "isthmus/server.h"

struct listener {
    int fd;
    bool flag;
    listener_accept_fn fn;
    struct listener *next;
};

/* Level-triggered: at most 64 accepts per wakeup, so one busy port cannot starve the loop. */
static void on_accept(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    struct listener *l = ud;
    for (int i = 0; i < 64; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                log_error(NULL, "accept: %s (raise the open files limit)", strerror(errno));
            break;
        }
        l->fn(cfd, l->flag);
    }
}

int listener_open(struct listener **list, const struct config_addr *a, const char *what,
                  bool flag, listener_accept_fn fn, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    int rc = getaddrinfo(a->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "[%s] cannot resolve %s: %s", what, a->host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "[%s] cannot listen on %s:%u: %s", what, a->host, a->port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct listener *l = xcalloc(1, sizeof *l);
    l->fd = fd;
    l->flag = flag;
    l->fn = fn;
    l->next = *list;
    *list = l;
    ev_io_add(server.loop, fd, EV_READ, on_accept, l);
    return 0;
}

void listener_close_all(struct listener **list)
{
    while (*list) {
        struct listener *l = *list;
        *list = l->next;
        ev_io_del(server.loop, l->fd);
        close(l->fd);
        free(l);
    }
}
