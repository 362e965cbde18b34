/* gw_internal.h — the framework's own state, shared by gw.c (process, component stream, users)
 * and gw_xep0100.c (the XEP-0100 / XEP-0077 / XEP-0050 protocol). Drivers use gw.h only. */
#ifndef ISTHMUS_GW_INTERNAL_H
#define ISTHMUS_GW_INTERNAL_H

#include <stdint.h>

#include "gw.h"
#include "isthmus/hmap.h"

#define GW_MAX_QUEUE 1000

struct conn;
struct xmlstream;
struct ev_timer;
struct resolver_query;

struct gw {
    const struct gw_driver *driver;
    void *driver_data;
    struct ev_loop *loop;
    struct config cfg;
    const struct config_gateway *gcfg;
    char *domain;
    char *tag;
    struct gw_store *store;
    struct hmap users; /* bare JID → struct gw_user */
    /* the component stream */
    char *host;       /* the XMPP server's component port */
    uint16_t port;
    char *secret;
    struct resolver_query *query;
    struct conn *conn;
    struct xmlstream *xs;
    bool online;      /* handshake accepted */
    bool stopping;
    uint64_t backoff_ms;
    struct ev_timer *retry;
    struct stanza **queue; /* stanzas waiting for the stream */
    size_t n_queue;
    /* XEP-0356: server domains that granted us roster set, and message */
    char **roster_hosts;
    size_t n_roster_hosts;
    unsigned command_seq;
    int ctl_fd;       /* the control socket, -1 when none */
    char *ctl_path;
};

/* gw_xep0100.c: everything the gateway domain itself answers. Takes no ownership. */
void gw_handle_stanza(struct gw *gw, const struct stanza *st);
/* The stream is up: probe registered users' presence (they may have come online while we were
 * away). */
void gw_xep0100_online(struct gw *gw);

/* The admin commands behind the control socket: users, info JID, disconnect JID, unregister JID.
 * Returns the text to print (malloc'd); *ok false for errors. */
char *gw_admin_command(struct gw *gw, const char *cmd, const char *arg, bool *ok);

/* gw_ctl.c: a Unix socket (data_dir/NAME.ctl, mode 0600) answering one command per connection,
 * for `isthmusctl gateway NAME ...`. */
int gw_ctl_open(struct gw *gw, char *err, size_t errlen);
void gw_ctl_close(struct gw *gw);

/* gw.c */
void gw_user_drop_if_idle(struct gw *gw, struct gw_user *u);
int gw_user_load_registration(struct gw *gw, struct gw_user *u);
bool gw_resource_add(struct gw_user *u, const char *full);
bool gw_resource_remove(struct gw_user *u, const char *full);

#endif
