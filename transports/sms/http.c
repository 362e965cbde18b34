/* http.c — the HTTP/1.1 listener for inbound SMS and delivery reports: libmicrohttpd without
 * threads, in its epoll mode; MHD's own epoll fd is watched by the gateway's loop and MHD_run()
 * runs on readiness and when MHD_get_timeout() says (idle connections time out, data buffered in
 * MHD gets processed). The protocol itself (RFC 9112 parsing, 400 for malformed requests) is
 * MHD's; this file bounds bodies, decodes queries and forms, and hands whole requests on. */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "isthmus/ev.h"
#include "isthmus/log.h"
#include "isthmus/util.h"

#include "sms.h"

#define HTTP_MAX_PARAMS 64

struct http_listener {
    struct ev_loop *loop;
    struct MHD_Daemon *daemon;
    int epoll_fd;
    struct ev_timer *timer;
    http_handler_fn fn;
    void *ud;
    unsigned port;
};

/* One request: created by the URI callback (the first thing MHD reports), freed when MHD says
 * the request is over. */
struct http_req_state {
    char *uri;
    struct buf body;
    bool started;
    bool answered; /* a response is queued: ignore the rest of the request */
};

static void http_schedule(struct http_listener *l);

static void http_run(struct http_listener *l)
{
    MHD_run(l->daemon);
    http_schedule(l);
}

static void on_timer(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct http_listener *l = ud;
    l->timer = NULL;
    http_run(l);
}

static void on_io(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)fd;
    (void)events;
    http_run(ud);
}

static void http_schedule(struct http_listener *l)
{
    if (l->timer)
        ev_timer_cancel(l->loop, l->timer);
    l->timer = NULL;
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(l->daemon, &ms) != MHD_YES || ms > 1000)
        ms = 1000; /* a slow tick in any case, so nothing waits on a missed wake-up */
    l->timer = ev_timer_add(l->loop, (uint64_t)ms, on_timer, l);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls;
    (void)c;
    struct http_req_state *rs = xcalloc(1, sizeof *rs);
    rs->uri = xstrdup(uri ? uri : "");
    buf_init(&rs->body);
    return rs;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct http_req_state *rs = *con_cls;
    if (!rs)
        return;
    buf_fini(&rs->body);
    free(rs->uri);
    free(rs);
    *con_cls = NULL;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *body,
                               size_t len, const char *content_type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            content_type ? content_type : "text/plain; charset=utf-8");
    if (status >= 400) /* a client that sent something wrong gets no second try on it */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return respond(c, status, text, strlen(text), NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)url;
    (void)version;
    struct http_listener *l = cls;
    struct http_req_state *rs = *con_cls;
    if (!rs)
        return MHD_NO;
    bool is_get = strcmp(method, "GET") == 0, is_post = strcmp(method, "POST") == 0;
    if (rs->answered) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (!rs->started) {
        rs->started = true;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!is_get && !is_post) {
            rs->answered = true;
            return respond_text(c, 405, "Method not allowed\n");
        }
        if (cl && strtoull(cl, NULL, 10) > HTTP_MAX_BODY) {
            rs->answered = true;
            return respond_text(c, 413, "Request body too large\n");
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (rs->body.len + *upload_size > HTTP_MAX_BODY) {
            /* Answer at once (MHD then closes the connection) rather than read on. */
            *upload_size = 0;
            rs->answered = true;
            return respond_text(c, 413, "Request body too large\n");
        }
        buf_append(&rs->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    rs->answered = true;
    if (memchr(rs->body.data ? rs->body.data : "", '\0', rs->body.len))
        return respond_text(c, 400, "NUL in the body\n");

    struct http_request req = {.method = method, .uri = rs->uri,
                               .body = rs->body.data ? rs->body.data : "",
                               .body_len = rs->body.len};
    const char *q = strchr(rs->uri, '?');
    char *path = q ? xstrndup(rs->uri, (size_t)(q - rs->uri)) : xstrdup(rs->uri);
    req.path = path;
    unsigned status;
    struct buf out;
    buf_init(&out);
    const char *ctype = NULL;
    if (q && sms_form_parse(q + 1, strlen(q + 1), HTTP_MAX_PARAMS, &req.query,
                            &req.n_query) < 0) {
        status = 400;
        buf_puts(&out, "Malformed query\n");
    } else {
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_TYPE);
        bool form = is_post && ct &&
                    strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0;
        if (form && sms_form_parse(req.body, req.body_len, HTTP_MAX_PARAMS, &req.form,
                                   &req.n_form) < 0) {
            status = 400;
            buf_puts(&out, "Malformed form\n");
        } else {
            req.signature = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                        "X-Twilio-Signature");
            status = l->fn(l->ud, &req, &out, &ctype);
        }
    }
    enum MHD_Result ret = respond(c, status, out.data, out.len, ctype);
    buf_fini(&out);
    gw_kv_free(req.query, req.n_query);
    gw_kv_free(req.form, req.n_form);
    free(path);
    return ret;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("sms-http", "%s", line);
}

struct http_listener *http_listener_new(struct ev_loop *loop, const char *host, unsigned port,
                                        http_handler_fn fn, void *ud)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE}, *res = NULL;
    char port_s[8];
    snprintf(port_s, sizeof port_s, "%u", port);
    int rc = getaddrinfo(host && *host ? host : NULL, port_s, &hints, &res);
    if (rc != 0 || !res) {
        log_error("sms-http", "cannot resolve %s: %s", host ? host : "*", gai_strerror(rc));
        return NULL;
    }
    struct http_listener *l = xcalloc(1, sizeof *l);
    l->loop = loop;
    l->fn = fn;
    l->ud = ud;
    l->epoll_fd = -1;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (res->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    l->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, l, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, l, MHD_OPTION_SOCK_ADDR, res->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)32, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_URI_LOG_CALLBACK, on_uri,
        l, MHD_OPTION_NOTIFY_COMPLETED, on_completed, l, MHD_OPTION_END);
    freeaddrinfo(res);
    if (!l->daemon) {
        log_error("sms-http", "cannot listen on %s:%u", host ? host : "*", port);
        free(l);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_BIND_PORT);
    l->port = pi ? pi->port : port;
    if (!di || di->epoll_fd < 0 || ev_io_add(loop, di->epoll_fd, EV_READ, on_io, l) < 0) {
        log_error("sms-http", "cannot watch the HTTP listener");
        MHD_stop_daemon(l->daemon);
        free(l);
        return NULL;
    }
    l->epoll_fd = di->epoll_fd;
    http_schedule(l);
    log_info("sms-http", "listening on %s:%u", host ? host : "*", l->port);
    return l;
}

unsigned http_listener_port(const struct http_listener *l)
{
    return l->port;
}

void http_listener_free(struct http_listener *l)
{
    if (!l)
        return;
    if (l->timer)
        ev_timer_cancel(l->loop, l->timer);
    if (l->epoll_fd >= 0)
        ev_io_del(l->loop, l->epoll_fd);
    MHD_stop_daemon(l->daemon);
    free(l);
}
