/* strophe_client — a second, independent XMPP client stack (libstrophe) for the e2e tests.
 *
 *   strophe_client JID PASSWORD HOST PORT TO BODY
 *
 * Logs in with STARTTLS required (certificate not verified: the test server's certificate is
 * self-signed), sends initial presence and one chat message with BODY to TO, then waits up to
 * 10 seconds for one message back. Prints "received: BODY" and exits 0 when one arrives; exits 1
 * on login failure, disconnection or timeout. Verbose libstrophe logging with STROPHE_DEBUG=1.
 *
 *   strophe_client add-contact JID PASSWORD HOST PORT CONTACT BODY
 *
 * The RFC 6121 way of adding a contact: requests the roster, sends initial presence, adds
 * CONTACT with a roster set (name "Contact", group "Interop"), then sends it a subscription
 * request. Approves a request from CONTACT. Once CONTACT approved and its presence arrived, sends
 * BODY to the full JID that presence came from; when a message comes back it fetches the roster
 * again and exits 0. Prints one line per event, for the test to check:
 *   push: JID SUBSCRIPTION[+ask]     a roster push (acknowledged)
 *   request: JID                     a subscription request (approved)
 *   subscribed: JID                  the contact approved ours
 *   already subscribed: JID SUB      the first roster showed 'to' or 'both' (no request sent)
 *   available: FULLJID               the contact's presence
 *   received: BODY                   the reply
 *   item: JID SUBSCRIPTION NAME GROUP   the final roster, one line per item */
#include <signal.h>
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
    /* add-contact mode */
    int add_contact;
    int subscribed;
    char *peer; /* the contact's full JID, from its presence */
    int sent;
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

/* ---- add-contact mode ---- */

#define NS_ROSTER "jabber:iq:roster"

static void print_item(struct client *c, const char *prefix, xmpp_stanza_t *item)
{
    const char *jid = xmpp_stanza_get_attribute(item, "jid");
    const char *sub = xmpp_stanza_get_attribute(item, "subscription");
    const char *ask = xmpp_stanza_get_attribute(item, "ask");
    const char *name = xmpp_stanza_get_attribute(item, "name");
    xmpp_stanza_t *group = xmpp_stanza_get_child_by_name(item, "group");
    char *gtext = group ? xmpp_stanza_get_text(group) : NULL;

    if (strcmp(prefix, "push") == 0)
        printf("push: %s %s%s\n", jid ? jid : "?", sub ? sub : "none", ask ? "+ask" : "");
    else
        printf("item: %s %s %s %s\n", jid ? jid : "?", sub ? sub : "none", name ? name : "-",
               gtext ? gtext : "-");
    fflush(stdout);
    if (gtext)
        xmpp_free(c->ctx, gtext);
}

static int is_result(xmpp_stanza_t *st)
{
    const char *type = xmpp_stanza_get_type(st);
    return type && strcmp(type, "result") == 0;
}

static xmpp_stanza_t *roster_query(struct client *c, const char *type, const char *id)
{
    xmpp_stanza_t *iq = xmpp_iq_new(c->ctx, type, id);
    xmpp_stanza_t *q = xmpp_stanza_new(c->ctx);
    xmpp_stanza_set_name(q, "query");
    xmpp_stanza_set_ns(q, NS_ROSTER);
    xmpp_stanza_add_child(iq, q);
    xmpp_stanza_release(q);
    return iq;
}

static void send_presence_type(struct client *c, xmpp_conn_t *conn, const char *to,
                               const char *type)
{
    xmpp_stanza_t *p = xmpp_presence_new(c->ctx);
    xmpp_stanza_set_to(p, to);
    xmpp_stanza_set_type(p, type);
    xmpp_send(conn, p);
    xmpp_stanza_release(p);
}

static void fail(struct client *c, xmpp_conn_t *conn, const char *what, xmpp_stanza_t *st)
{
    char *buf = NULL;
    size_t len = 0;
    if (st)
        xmpp_stanza_to_text(st, &buf, &len);
    fprintf(stderr, "strophe_client: %s%s%s\n", what, buf ? ": " : "", buf ? buf : "");
    if (buf)
        xmpp_free(c->ctx, buf);
    c->done = 1;
    xmpp_disconnect(conn);
}

/* Bare JID equality: the contact answers from its bare or full JID. */
static int from_contact(struct client *c, xmpp_stanza_t *st)
{
    const char *from = xmpp_stanza_get_from(st);
    char *bare;
    int same;
    if (!from)
        return 0;
    bare = xmpp_jid_bare(c->ctx, from);
    same = bare && strcmp(bare, c->to) == 0;
    if (bare)
        xmpp_free(c->ctx, bare);
    return same;
}

static void maybe_chat(struct client *c, xmpp_conn_t *conn)
{
    xmpp_stanza_t *msg;
    if (c->sent || !c->subscribed || !c->peer)
        return;
    msg = xmpp_message_new(c->ctx, "chat", c->peer, "strophe-chat-1");
    xmpp_message_set_body(msg, c->body);
    xmpp_send(conn, msg);
    xmpp_stanza_release(msg);
    c->sent = 1;
}

static int on_final_roster(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *q = xmpp_stanza_get_child_by_name_and_ns(st, "query", NS_ROSTER);
    if (!q || !is_result(st)) {
        fail(c, conn, "final roster get failed", st);
        return 0;
    }
    for (xmpp_stanza_t *it = xmpp_stanza_get_children(q); it; it = xmpp_stanza_get_next(it))
        if (xmpp_stanza_get_name(it) && strcmp(xmpp_stanza_get_name(it), "item") == 0)
            print_item(c, "item", it);
    c->ok = 1;
    c->done = 1;
    xmpp_disconnect(conn);
    return 0;
}

static int on_contact_message(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    const char *type = xmpp_stanza_get_type(st);
    char *body;
    xmpp_stanza_t *iq;

    if (type && strcmp(type, "error") == 0) {
        fail(c, conn, "error message", st);
        return 0;
    }
    body = xmpp_message_get_body(st);
    if (!body)
        return 1;
    printf("received: %s\n", body);
    fflush(stdout);
    xmpp_free(c->ctx, body);
    iq = roster_query(c, "get", "roster-final");
    xmpp_id_handler_add(conn, on_final_roster, "roster-final", c);
    xmpp_send(conn, iq);
    xmpp_stanza_release(iq);
    return 0;
}

static int on_contact_presence(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    const char *type = xmpp_stanza_get_type(st);
    const char *from = xmpp_stanza_get_from(st);

    if (!from_contact(c, st))
        return 1;
    if (!type) {
        if (!c->peer) {
            c->peer = strdup(from);
            printf("available: %s\n", from);
            fflush(stdout);
        }
    } else if (strcmp(type, "subscribe") == 0) {
        printf("request: %s\n", from);
        fflush(stdout);
        send_presence_type(c, conn, c->to, "subscribed");
    } else if (strcmp(type, "subscribed") == 0) {
        printf("subscribed: %s\n", from);
        fflush(stdout);
        c->subscribed = 1;
    } else if (strcmp(type, "unsubscribed") == 0 || strcmp(type, "error") == 0) {
        fail(c, conn, "subscription refused", st);
        return 0;
    }
    maybe_chat(c, conn);
    return 1;
}

/* RFC 6121 §2.1.6: print and acknowledge every roster push. */
static int on_push(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *q = xmpp_stanza_get_child_by_name_and_ns(st, "query", NS_ROSTER);
    xmpp_stanza_t *item, *reply;
    if (!q || !xmpp_stanza_get_type(st) || strcmp(xmpp_stanza_get_type(st), "set") != 0)
        return 1;
    item = xmpp_stanza_get_child_by_name(q, "item");
    if (item)
        print_item(c, "push", item);
    reply = xmpp_iq_new(c->ctx, "result", xmpp_stanza_get_id(st));
    xmpp_send(conn, reply);
    xmpp_stanza_release(reply);
    return 1;
}

static int on_added(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    if (!is_result(st)) {
        fail(c, conn, "roster set failed", st);
        return 0;
    }
    if (!c->subscribed)
        send_presence_type(c, conn, c->to, "subscribe");
    maybe_chat(c, conn);
    return 0;
}

static int on_roster(xmpp_conn_t *conn, xmpp_stanza_t *st, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *iq, *query, *item, *group, *text;

    if (!is_result(st)) {
        fail(c, conn, "roster get failed", st);
        return 0;
    }
    /* Already subscribed: a new request would be answered by the contact's server with a
     * 'subscribed' that ours does not deliver (RFC 6121 Appendix A.3.2), so do not ask. */
    query = xmpp_stanza_get_child_by_name_and_ns(st, "query", NS_ROSTER);
    for (item = query ? xmpp_stanza_get_children(query) : NULL; item;
         item = xmpp_stanza_get_next(item)) {
        const char *jid = xmpp_stanza_get_attribute(item, "jid");
        const char *sub = xmpp_stanza_get_attribute(item, "subscription");
        if (jid && sub && strcmp(jid, c->to) == 0 &&
            (strcmp(sub, "to") == 0 || strcmp(sub, "both") == 0)) {
            printf("already subscribed: %s %s\n", jid, sub);
            fflush(stdout);
            c->subscribed = 1;
        }
    }
    xmpp_handler_add(conn, on_push, NS_ROSTER, "iq", "set", c);
    xmpp_handler_add(conn, on_contact_presence, NULL, "presence", NULL, c);
    xmpp_handler_add(conn, on_contact_message, NULL, "message", NULL, c);
    iq = xmpp_presence_new(c->ctx);
    xmpp_send(conn, iq);
    xmpp_stanza_release(iq);

    iq = roster_query(c, "set", "roster-add");
    item = xmpp_stanza_new(c->ctx);
    xmpp_stanza_set_name(item, "item");
    xmpp_stanza_set_attribute(item, "jid", c->to);
    xmpp_stanza_set_attribute(item, "name", "Contact");
    group = xmpp_stanza_new(c->ctx);
    xmpp_stanza_set_name(group, "group");
    text = xmpp_stanza_new(c->ctx);
    xmpp_stanza_set_text(text, "Interop");
    xmpp_stanza_add_child(group, text);
    xmpp_stanza_release(text);
    xmpp_stanza_add_child(item, group);
    xmpp_stanza_release(group);
    xmpp_stanza_add_child(xmpp_stanza_get_children(iq), item);
    xmpp_stanza_release(item);
    xmpp_id_handler_add(conn, on_added, "roster-add", c);
    xmpp_send(conn, iq);
    xmpp_stanza_release(iq);
    return 0;
}

static void start_add_contact(struct client *c, xmpp_conn_t *conn)
{
    xmpp_stanza_t *iq = roster_query(c, "get", "roster-1");
    xmpp_id_handler_add(conn, on_roster, "roster-1", c);
    xmpp_send(conn, iq);
    xmpp_stanza_release(iq);
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
        if (c->add_contact) {
            start_add_contact(c, conn);
            return;
        }
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

    if (argc == 8 && strcmp(argv[1], "add-contact") == 0) {
        c.add_contact = 1;
        argv++;
        argc--;
    }
    if (argc != 7) {
        fprintf(stderr, "usage: strophe_client [add-contact] JID PASSWORD HOST PORT TO BODY\n");
        return 2;
    }
    port = (unsigned short)strtoul(argv[4], NULL, 10);
    c.to = argv[5];
    c.body = argv[6];

    /* A server that closes the stream must show up as an error exit, not a SIGPIPE death. */
    signal(SIGPIPE, SIG_IGN);
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
    free(c.peer);
    return c.ok ? 0 : 1;
}
