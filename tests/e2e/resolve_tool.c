/* resolve_tool — runs our event loop and resolver once and prints what came back; driven by
 * tests/e2e/test_dns.py against a real DNS server.
 *
 *   resolve_tool [--ns HOST:PORT] [--repeat N] [--cancel-after MS] xmpp DOMAIN
 *   resolve_tool [--ns HOST:PORT] [--repeat N] [--cancel-after MS] addr HOST [PORT]
 *
 * One line per answer:
 *   xmpp: "ok HOST,PORT,tls HOST,PORT,starttls ..." in the resolver's order
 *   addr: "ok 192.0.2.1:5269 [2001:db8::1]:5269 ..."
 *   either: "error MESSAGE"
 * --repeat N asks N times in a row, each query started from the previous one's callback.
 * --cancel-after MS starts the query twice, cancels the first (at once for 0, else after MS ms)
 * and lets the second complete, then waits another second: prints the second's answer and
 * "cancelled". --no-control skips the second query; --linger MS changes the wait.
 * Exit status 0; 2 for usage errors; 3 when the resolver broke a promise (a callback from inside
 * the starting call, after cancel, twice, or an empty success). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/ev.h"
#include "isthmus/log.h"
#include "isthmus/resolver.h"

#define LINGER_MS 1000

static struct ev_loop *loop;
static const char *mode;
static const char *name;
static uint16_t port = 5269;
static long repeat = 1;
static long runs;
static bool in_start;
static int status;

struct probe {
    bool cancelled;
    bool answered;
    bool drives; /* its answers start the next run or end the loop */
};

static void violation(const char *what)
{
    printf("VIOLATION %s\n", what);
    fflush(stdout);
    status = 3;
}

static void start(struct probe *p);

static void next_or_stop(struct probe *p)
{
    if (++runs < repeat) {
        p->answered = false;
        start(p);
    } else {
        ev_stop(loop);
    }
}

static bool check_callback(struct probe *p, size_t n, const char *error)
{
    if (in_start)
        violation("callback from inside the starting call");
    if (p->cancelled)
        violation("callback after cancel");
    if (p->answered)
        violation("second callback");
    if (!error && n == 0)
        violation("success without results");
    p->answered = true;
    if (error) {
        printf("error %s\n", error);
        return false;
    }
    return true;
}

static void on_targets(void *ud, const struct resolver_target *t, size_t n, const char *error)
{
    struct probe *p = ud;

    if (check_callback(p, n, error)) {
        printf("ok");
        for (size_t i = 0; i < n; i++)
            printf(" %s,%u,%s", t[i].host, t[i].port, t[i].direct_tls ? "tls" : "starttls");
        printf("\n");
    }
    fflush(stdout);
    if (p->drives)
        next_or_stop(p);
}

static void on_addrs(void *ud, const struct sockaddr_storage *a, size_t n, const char *error)
{
    struct probe *p = ud;
    char text[INET6_ADDRSTRLEN];

    if (check_callback(p, n, error)) {
        printf("ok");
        for (size_t i = 0; i < n; i++) {
            if (a[i].ss_family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *)&a[i];
                inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
                printf(" %s:%u", text, ntohs(sin->sin_port));
            } else if (a[i].ss_family == AF_INET6) {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a[i];
                inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
                printf(" [%s]:%u", text, ntohs(sin6->sin6_port));
            } else {
                violation("address of unknown family");
            }
        }
        printf("\n");
    }
    fflush(stdout);
    if (p->drives)
        next_or_stop(p);
}

static struct resolver_query *start_query(struct probe *p)
{
    struct resolver_query *q;

    in_start = true;
    if (strcmp(mode, "xmpp") == 0)
        q = resolver_xmpp_server(name, on_targets, p);
    else
        q = resolver_addresses(name, port, on_addrs, p);
    in_start = false;
    return q;
}

static void start(struct probe *p)
{
    start_query(p);
}

/* --cancel-after */
static struct probe victim;
static struct resolver_query *victim_q;

static void cancel_victim(struct ev_loop *l, void *ud)
{
    (void)l;
    (void)ud;
    if (!victim.answered) {
        resolver_cancel(victim_q);
        victim.cancelled = true;
    }
}

static void stop_loop(struct ev_loop *l, void *ud)
{
    (void)ud;
    ev_stop(l);
}

static int usage(void)
{
    fprintf(stderr, "usage: resolve_tool [--ns HOST:PORT] [--repeat N] [--cancel-after MS "
                    "[--linger MS] [--no-control]] xmpp DOMAIN | addr HOST [PORT]\n");
    return 2;
}

static int parse_ns(const char *s, struct config_addr *ns)
{
    const char *colon = strrchr(s, ':');
    char *end;

    if (!colon || colon == s)
        return -1;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p <= 0 || p > 65535)
        return -1;
    ns->host = strndup(s, (size_t)(colon - s));
    ns->port = (uint16_t)p;
    return 0;
}

int main(int argc, char **argv)
{
    struct config_addr ns = {0};
    bool have_ns = false;
    long cancel_after = -1, linger = LINGER_MS;
    bool control = true;
    char err[256];
    int i = 1;

    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--ns") == 0 && i + 1 < argc) {
            if (parse_ns(argv[++i], &ns) < 0)
                return usage();
            have_ns = true;
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = strtol(argv[++i], NULL, 10);
            if (repeat < 1)
                return usage();
        } else if (strcmp(argv[i], "--cancel-after") == 0 && i + 1 < argc) {
            cancel_after = strtol(argv[++i], NULL, 10);
            if (cancel_after < 0)
                return usage();
        } else if (strcmp(argv[i], "--linger") == 0 && i + 1 < argc) {
            linger = strtol(argv[++i], NULL, 10);
            if (linger < 0)
                return usage();
        } else if (strcmp(argv[i], "--no-control") == 0) {
            control = false;
        } else {
            return usage();
        }
    }
    if (argc - i < 2)
        return usage();
    mode = argv[i];
    name = argv[i + 1];
    if (strcmp(mode, "xmpp") != 0 && strcmp(mode, "addr") != 0)
        return usage();
    if (strcmp(mode, "addr") == 0 && argc - i >= 3)
        port = (uint16_t)strtol(argv[i + 2], NULL, 10);

    log_open(NULL, getenv("RESOLVE_TOOL_DEBUG") ? LOG_DEBUG : LOG_WARN);
    loop = ev_loop_new();
    if (resolver_init(loop, have_ns ? &ns : NULL, err, sizeof err) < 0) {
        printf("init-error %s\n", err);
        ev_loop_free(loop);
        free(ns.host);
        return 1;
    }

    struct probe main_probe = {.drives = true};
    if (cancel_after >= 0) {
        victim_q = start_query(&victim);
        if (cancel_after == 0)
            cancel_victim(loop, NULL);
        else
            ev_timer_add(loop, (uint64_t)cancel_after, cancel_victim, NULL);
        repeat = 1;
        if (control) {
            start(&main_probe);
            ev_run(loop);
        }
        /* Give the cancelled query's answer (or timeout) time to arrive and be ignored; without
         * a control query resolver_fini() then drops lookups still in flight. */
        ev_timer_add(loop, (uint64_t)linger, stop_loop, NULL);
        ev_run(loop);
        printf(victim.cancelled ? "cancelled\n" : "not-cancelled\n");
    } else {
        start(&main_probe);
        ev_run(loop);
    }

    resolver_fini();
    ev_loop_free(loop);
    free(ns.host);
    log_close();
    return status;
}
