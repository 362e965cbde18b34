/* strophe_client — a second, independent XMPP client stack (libstrophe) for the e2e tests.
 *
 *   strophe_client JID PASSWORD HOST PORT TO BODY
 *
 * Logs in with STARTTLS required (certificate not verified: the test server's certificate is
 * self-signed), sends initial presence and one chat message with BODY to TO, then waits up to
 * 10 seconds for one message back. Prints "received: BODY" and exits 0 when one arrives; exits 1
 * on login failure, disconnection or timeout. Verbose libstrophe logging with STROPHE_DEBUG=1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <strophe.h>

#define WAIT_SECONDS 10

struct client {
    xmpp_ctx_t *ctx;
    const char *to;
    const char *body;
    int connected;
    int done;
    int ok;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_message(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    struct client *c = userdata;
    const char *type = xmpp_stanza_get_type(stanza);
    char *body;

    if (type && strcmp(type, "error") == 0) {
        fprintf(stderr, "strophe_client: error message from %s\n",
                xmpp_stanza_get_from(stanza) ? xmpp_stanza_get_from(stanza) : "?");
        c->done = 1;
        xmpp_disconnect(conn);
        return 0;
    }
    body = xmpp_message_get_body(stanza);
    if (!body)
        return 1; /* not a chat message (e.g. a chat state); keep waiting */
    printf("received: %s\n", body);
    fflush(stdout);
    xmpp_free(c->ctx, body);
    c->ok = 1;
    c->done = 1;
    xmpp_disconnect(conn);
    return 0;
}

static void on_conn(xmpp_conn_t *conn, xmpp_conn_event_t status, int error,
                    xmpp_stream_error_t *stream_error, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *pres, *msg;

    (void)stream_error;
    if (status == XMPP_CONN_CONNECT) {
        if (!xmpp_conn_is_secured(conn)) {
            fprintf(stderr, "strophe_client: connection is not encrypted\n");
            c->done = 1;
            xmpp_disconnect(conn);
            return;
        }
        c->connected = 1;
        fprintf(stderr, "strophe_client: logged in as %s\n", xmpp_conn_get_bound_jid(conn));
        xmpp_handler_add(conn, on_message, NULL, "message", NULL, c);
        pres = xmpp_presence_new(c->ctx);
        xmpp_send(conn, pres);
        xmpp_stanza_release(pres);
        msg = xmpp_message_new(c->ctx, "chat", c->to, "strophe-1");
        xmpp_message_set_body(msg, c->body);
        xmpp_send(conn, msg);
        xmpp_stanza_release(msg);
        return;
    }
    fprintf(stderr, "strophe_client: %s (status %d, error %d)\n",
            c->connected ? "disconnected" : "login failed", (int)status, error);
    c->done = 1;
}

int main(int argc, char **argv)
{
    struct client c = {0};
    xmpp_log_t *log;
    xmpp_conn_t *conn;
    unsigned short port;
    double deadline;
    int disconnecting = 0;

    if (argc != 7) {
        fprintf(stderr, "usage: strophe_client JID PASSWORD HOST PORT TO BODY\n");
        return 2;
    }
    port = (unsigned short)strtoul(argv[4], NULL, 10);
    c.to = argv[5];
    c.body = argv[6];

    xmpp_initialize();
    log = xmpp_get_default_logger(getenv("STROPHE_DEBUG") ? XMPP_LEVEL_DEBUG : XMPP_LEVEL_WARN);
    c.ctx = xmpp_ctx_new(NULL, log);
    conn = xmpp_conn_new(c.ctx);
    xmpp_conn_set_flags(conn, XMPP_CONN_FLAG_MANDATORY_TLS | XMPP_CONN_FLAG_TRUST_TLS);
    xmpp_conn_set_jid(conn, argv[1]);
    xmpp_conn_set_pass(conn, argv[2]);
    if (xmpp_connect_client(conn, argv[3], port, on_conn, &c) != XMPP_EOK) {
        fprintf(stderr, "strophe_client: cannot connect to %s:%u\n", argv[3], port);
        return 1;
    }
    deadline = now() + WAIT_SECONDS;
    while (!c.done) {
        if (now() > deadline) {
            if (disconnecting)
                break;
            fprintf(stderr, "strophe_client: timed out after %d s\n", WAIT_SECONDS);
            xmpp_disconnect(conn);
            disconnecting = 1;
            deadline = now() + 2;
        }
        xmpp_run_once(c.ctx, 100);
    }
    /* Let the closing </stream:stream> go out before tearing down. */
    deadline = now() + 2;
    while (xmpp_conn_is_connected(conn) && now() < deadline)
        xmpp_run_once(c.ctx, 50);
    xmpp_conn_release(conn);
    xmpp_ctx_free(c.ctx);
    xmpp_shutdown();
    return c.ok ? 0 : 1;
}
