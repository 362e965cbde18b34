/* gw_ctl.c — the gateway's admin control socket: `isthmusctl gateway NAME users|info JID|
 * disconnect JID|unregister JID` connects to data_dir/NAME.ctl (a Unix stream socket, mode 0600,
 * so only the gateway's own user and root reach it), sends one line and reads the answer until
 * the gateway closes. The commands are the admin ad-hoc commands' (gw_admin_command). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "gw_internal.h"
#include "isthmus/conn.h"
#include "isthmus/log.h"

#define CTL_MAX_LINE 1024

struct ctl_client {
    struct gw *gw;
    struct buf line;
    bool done;
};

static void ctl_data(struct conn *c, void *ud, const char *data, size_t len)
{
    struct ctl_client *cl = ud;
    if (cl->done)
        return;
    buf_append(&cl->line, data, len);
    char *nl = memchr(cl->line.data, '\n', cl->line.len);
    if (!nl) {
        if (cl->line.len > CTL_MAX_LINE) {
            cl->done = true;
            conn_write_str(c, "error: line too long\n");
            conn_close(c, "line too long");
        }
        return;
    }
    *nl = '\0';
    if (nl > cl->line.data && nl[-1] == '\r')
        nl[-1] = '\0';
    cl->done = true;
    char *cmd = cl->line.data;
    char *arg = strchr(cmd, ' ');
    if (arg) {
        *arg++ = '\0';
        while (*arg == ' ')
            arg++;
        if (!*arg)
            arg = NULL;
    }
    bool ok;
    char *out = gw_admin_command(cl->gw, cmd, arg, &ok);
    log_info(cl->gw->tag, "control socket: %s%s%s: %s", cmd, arg ? " " : "", arg ? arg : "",
             ok ? "ok" : out);
    conn_write_str(c, out);
    conn_write_str(c, "\n");
    free(out);
    conn_close(c, "answered");
}

static void ctl_closed(struct conn *c, void *ud, const char *reason)
{
    (void)c;
    (void)reason;
    struct ctl_client *cl = ud;
    buf_fini(&cl->line);
    free(cl);
}

static const struct conn_ops ctl_ops = {.data = ctl_data, .closed = ctl_closed};

static void ctl_accept(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)events;
    struct gw *gw = ud;
    for (;;) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return;
        struct ctl_client *cl = xcalloc(1, sizeof *cl);
        cl->gw = gw;
        buf_init(&cl->line);
        if (!conn_new(loop, cfd, "ctl", 1024 * 1024, &ctl_ops, cl)) {
            buf_fini(&cl->line);
            free(cl);
        }
    }
}

int gw_ctl_open(struct gw *gw, char *err, size_t errlen)
{
    gw->ctl_fd = -1;
    gw->ctl_path = xasprintf("%s/%s.ctl", gw->cfg.data_dir, gw->domain);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(gw->ctl_path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "control socket path too long: %s", gw->ctl_path);
        return -1;
    }
    strcpy(sa.sun_path, gw->ctl_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    unlink(gw->ctl_path); /* a stale socket from an earlier run */
    mode_t old = umask(0077);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || listen(fd, 16) < 0) {
        snprintf(err, errlen, "%s: %s", gw->ctl_path, strerror(errno));
        close(fd);
        return -1;
    }
    gw->ctl_fd = fd;
    ev_io_add(gw->loop, fd, EV_READ, ctl_accept, gw);
    return 0;
}

void gw_ctl_close(struct gw *gw)
{
    if (gw->ctl_fd >= 0) {
        ev_io_del(gw->loop, gw->ctl_fd);
        close(gw->ctl_fd);
        unlink(gw->ctl_path);
        gw->ctl_fd = -1;
    }
    free(gw->ctl_path);
    gw->ctl_path = NULL;
}
