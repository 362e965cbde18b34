/* test_sms_http.c — the SMS gateway's HTTP listener (libmicrohttpd on our event loop) and its
 * provider client (libcurl multi socket API on the same loop) talking to each other: the
 * Kannel sendsms request's parameters, retries of transient failures, final refusals, transfer
 * timeouts, and the listener's answers to malformed or oversized requests. (Kannel itself is
 * exercised in tests/e2e/test_sms.py.) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "isthmus/ev.h"
#include "isthmus/util.h"
#include "sms.h"
#include "test.h"

struct server {
    unsigned calls;
    unsigned fail_first; /* answer 503 to that many requests */
    unsigned status;     /* then this */
    struct gw_kv *last;  /* the last request's query */
    size_t n_last;
    char *last_path;
};

static unsigned handler(void *ud, const struct http_request *req, struct buf *out,
                        const char **ct)
{
    (void)ct;
    struct server *s = ud;
    s->calls++;
    gw_kv_free(s->last, s->n_last);
    s->last = NULL;
    s->n_last = 0;
    for (size_t i = 0; i < req->n_query; i++) {
        s->last = xrealloc(s->last, (s->n_last + 1) * sizeof *s->last);
        s->last[s->n_last].key = xstrdup(req->query[i].key);
        s->last[s->n_last].value = xstrdup(req->query[i].value);
        s->n_last++;
    }
    free(s->last_path);
    s->last_path = xstrdup(req->path);
    if (s->calls <= s->fail_first) {
        buf_puts(out, "busy");
        return 503;
    }
    buf_puts(out, s->status == 202 ? "0: Accepted for delivery" : "nope");
    return s->status;
}

struct result {
    bool done;
    enum sms_result r;
    char *text;
    struct ev_loop *loop;
};

static void on_done(void *ud, enum sms_result r, const char *text)
{
    struct result *res = ud;
    res->done = true;
    res->r = r;
    res->text = xstrdup(text);
    ev_stop(res->loop);
}

/* A deadline: ud points at the caller's timer handle, cleared when it fires. */
static void on_guard(struct ev_loop *loop, void *ud)
{
    *(struct ev_timer **)ud = NULL;
    ev_stop(loop);
}

/* Sends one SMS through a provider pointed at url; runs the loop until done (or 10 s). */
static struct result run_send(struct ev_loop *loop, const char *url, unsigned timeout_ms,
                              const char *text)
{
    struct sms_provider_opts o = {.kind = "kannel", .url = url, .username = "tester",
                                  .password = "foo&bar", .public_url = "http://gw.example/",
                                  .secret = "s3cret", .max_parts = 3, .timeout_ms = timeout_ms,
                                  .retries = 2, .retry_ms = 20};
    struct sms_provider *p = sms_provider_new(loop, &o);
    struct result res = {.loop = loop};
    const char *why = NULL;
    unsigned n = sms_provider_send(p, "+15550001", "+15550002", text, "REF1", on_done, &res,
                                   &why);
    CHECK(n == 1);
    struct ev_timer *guard = ev_timer_add(loop, 10000, on_guard, &guard);
    if (n)
        ev_run(loop);
    ev_timer_cancel(loop, guard);
    CHECK(res.done);
    sms_provider_free(p);
    return res;
}

static void test_send_and_retry(void)
{
    struct ev_loop *loop = ev_loop_new();
    struct server s = {.status = 202, .fail_first = 2};
    struct http_listener *l = http_listener_new(loop, "127.0.0.1", 0, handler, &s);
    CHECK(l != NULL);
    if (!l) {
        ev_loop_free(loop);
        return;
    }
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/cgi-bin/sendsms", http_listener_port(l));

    /* Two 503s, then accepted: three requests, SMS_OK. */
    struct result r = run_send(loop, url, 5000, "hello & good bye");
    CHECK(r.r == SMS_OK);
    CHECK(s.calls == 3);
    CHECK_STR(s.last_path, "/cgi-bin/sendsms");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "username"), "tester");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "password"), "foo&bar");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "from"), "+15550001");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "to"), "+15550002");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "text"), "hello & good bye");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "charset"), "UTF-8");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "coding"), "0");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "max-messages"), "3");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "dlr-mask"), "31");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "dlr-url"),
              "http://gw.example/kannel/dlr?secret=s3cret&ref=REF1&type=%d");
    free(r.text);

    /* UCS-2 for text outside GSM-7. */
    s.calls = 0;
    s.fail_first = 0;
    r = run_send(loop, url, 5000, "Привет");
    CHECK(r.r == SMS_OK && s.calls == 1);
    CHECK_STR(gw_kv_get(s.last, s.n_last, "coding"), "2");
    CHECK_STR(gw_kv_get(s.last, s.n_last, "text"), "Привет");
    free(r.text);

    /* Always 503: the first attempt and two retries, then SMS_FAILED. */
    s.calls = 0;
    s.fail_first = 100;
    r = run_send(loop, url, 5000, "x");
    CHECK(r.r == SMS_FAILED && s.calls == 3);
    CHECK(r.text && strstr(r.text, "503"));
    free(r.text);

    /* A 4xx is final: no retry. */
    s.calls = 0;
    s.fail_first = 0;
    s.status = 403;
    r = run_send(loop, url, 5000, "x");
    CHECK(r.r == SMS_REJECTED && s.calls == 1);
    free(r.text);

    /* Too long for max_parts: refused before any request. */
    struct sms_provider_opts o = {.kind = "kannel", .url = url, .max_parts = 1};
    struct sms_provider *p = sms_provider_new(loop, &o);
    char big[400];
    memset(big, 'a', 200);
    big[200] = '\0';
    const char *why = NULL;
    CHECK(sms_provider_send(p, NULL, "+15550002", big, NULL, on_done, NULL, &why) == 0);
    CHECK(why != NULL);
    sms_provider_free(p);

    http_listener_free(l);
    gw_kv_free(s.last, s.n_last);
    free(s.last_path);
    ev_loop_free(loop);
}

static void test_timeout(void)
{
    /* A server that accepts connections (kernel backlog) and never answers. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK(listen(fd, 8) == 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/send", ntohs(sa.sin_port));
    struct ev_loop *loop = ev_loop_new();
    uint64_t t0 = now_ms();
    struct result r = run_send(loop, url, 200, "x");
    CHECK(r.r == SMS_FAILED);
    CHECK(now_ms() - t0 < 5000);
    free(r.text);
    ev_loop_free(loop);
    close(fd);
}

struct raw_ctx {
    struct ev_loop *loop;
    const char *req;
    size_t req_len;
    int fd;
    struct buf got;
    bool closed;
};

static void on_raw(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)events;
    struct raw_ctx *c = ud;
    char b[4096];
    ssize_t n = read(fd, b, sizeof b);
    if (n > 0) {
        buf_append(&c->got, b, (size_t)n);
        return;
    }
    ev_io_del(loop, fd);
    c->closed = true;
    ev_stop(loop);
}

/* Sends raw bytes to the listener; returns the status code of the answer (0 if none). */
static int raw_request(struct ev_loop *loop, unsigned port, const char *req, size_t req_len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    size_t off = 0;
    while (off < req_len) {
        ssize_t w = write(fd, req + off, req_len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    struct raw_ctx c = {.loop = loop, .fd = fd};
    buf_init(&c.got);
    ev_io_add(loop, fd, EV_READ, on_raw, &c);
    struct ev_timer *guard = ev_timer_add(loop, 5000, on_guard, &guard);
    ev_run(loop);
    ev_timer_cancel(loop, guard);
    CHECK(c.closed); /* the listener closes after an error (or Connection: close) */
    if (!c.closed)
        ev_io_del(loop, fd);
    close(fd);
    int code = 0;
    if (c.got.len > 12 && strncmp(c.got.data, "HTTP/1.", 7) == 0)
        code = atoi(c.got.data + 9);
    buf_fini(&c.got);
    return code;
}

static void test_listener_bad_requests(void)
{
    struct ev_loop *loop = ev_loop_new();
    struct server s = {.status = 202};
    struct http_listener *l = http_listener_new(loop, "127.0.0.1", 0, handler, &s);
    CHECK(l != NULL);
    if (!l) {
        ev_loop_free(loop);
        return;
    }
    unsigned port = http_listener_port(l);
    const char ok[] = "GET /x?a=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    CHECK(raw_request(loop, port, ok, sizeof ok - 1) == 202);
    const char badq[] = "GET /x?a=%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    CHECK(raw_request(loop, port, badq, sizeof badq - 1) == 400);
    const char put[] = "PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx";
    CHECK(raw_request(loop, port, put, sizeof put - 1) == 405);
    const char big[] = "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\nx";
    CHECK(raw_request(loop, port, big, sizeof big - 1) == 413);
    const char badform[] = "POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                           "Content-Type: application/x-www-form-urlencoded\r\n"
                           "Content-Length: 5\r\n\r\na=%0z";
    CHECK(raw_request(loop, port, badform, sizeof badform - 1) == 400);
    const char nul[] = "POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                       "Content-Length: 3\r\n\r\na\0b";
    CHECK(raw_request(loop, port, nul, sizeof nul - 1) == 400);
    const char garbage[] = "GARBAGE\r\n\r\n";
    int g = raw_request(loop, port, garbage, sizeof garbage - 1);
    CHECK(g == 0 || (g >= 400 && g < 500));
    /* Chunked body over the bound. */
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 40; i++) {
        buf_puts(&b, "400\r\n");
        for (int j = 0; j < 0x400; j++)
            buf_putc(&b, 'z');
        buf_puts(&b, "\r\n");
    }
    buf_puts(&b, "0\r\n\r\n");
    /* 413 at once and the connection closed; the client, still writing, may see the reset
     * (unread data) before the answer. */
    int big_code = raw_request(loop, port, b.data, b.len);
    CHECK(big_code == 413 || big_code == 0);
    buf_fini(&b);
    CHECK(raw_request(loop, port, ok, sizeof ok - 1) == 202); /* still serving */
    http_listener_free(l);
    gw_kv_free(s.last, s.n_last);
    free(s.last_path);
    ev_loop_free(loop);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    TEST_RUN(test_send_and_retry);
    TEST_RUN(test_timeout);
    TEST_RUN(test_listener_bad_requests);
    curl_global_cleanup();
    return TEST_DONE();
}
