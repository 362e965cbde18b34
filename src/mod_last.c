/* XEP-0012 Last Activity (jabber:iq:last): the server's uptime, and for an account the time since
 * its last logout with the status of its last unavailable presence.
 *
 * A session's last unavailable presence status is remembered while the session lives; when an
 * account's last session ends, "SECONDS STATUS" (logout time, then the status text) goes to the
 * kv store "last". */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/account.h"
#include "isthmus/c2s.h"
#include "isthmus/hmap.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/roster.h"
#include "isthmus/server.h"

#define NS_LAST "jabber:iq:last"
#define STORE "last"

/* Session (by address) → status text (owned) of the unavailable presence it sent last, for
 * sessions whose latest broadcast was unavailable. */
static struct hmap statuses;

static void session_key(const struct c2s *s, char out[32])
{
    snprintf(out, 32, "%p", (const void *)s);
}

static struct stanza *query_result(struct iq_request *req, int64_t seconds, const char *status)
{
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *q = stanza_add_child(r, "query", NS_LAST);
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, seconds < 0 ? 0 : seconds);
    stanza_set_attr(q, "seconds", buf);
    if (status && *status)
        stanza_add_text(q, status, strlen(status));
    return r;
}

/* XEP-0012 §5: a server answers with its uptime and no text. */
static const char *host_get(struct iq_request *req)
{
    router_reply(req, query_result(req, wall_time() - server.started, NULL));
    return NULL;
}

/* XEP-0012 §3: the time since the account last logged out, or 0 while a resource is available;
 * only for the account itself and those allowed to see its presence (§3, §8: "Forbidden"). */
static const char *account_get(struct iq_request *req)
{
    const struct jid *user = req->to;
    char *bare = jid_bare_string(user);
    char *requester = jid_bare_string(req->from);
    const char *cond = NULL;
    if (strcmp(bare, requester) != 0 &&
        !roster_subscribed_from(user->domain, user->local, requester)) {
        cond = "forbidden";
        goto out;
    }
    for (struct c2s *s = c2s_first(bare); s; s = c2s_next(s)) {
        if (c2s_available(s)) {
            router_reply(req, query_result(req, 0, NULL));
            goto out;
        }
    }
    char *rec = NULL;
    size_t len = 0;
    int rc = storage_kv_get(server.db, user->domain, user->local, STORE, &rec, &len);
    if (rc == STORAGE_NOTFOUND) {
        /* The XEP is silent; ejabberd answers service-unavailable with this explanation. */
        router_error(req->iq, "service-unavailable", "No last activity is recorded for this user");
    } else if (rc != 0) {
        cond = "internal-server-error";
    } else {
        char *sp = strchr(rec, ' ');
        int64_t when = strtoll(rec, NULL, 10);
        router_reply(req, query_result(req, wall_time() - when, sp ? sp + 1 : NULL));
        free(rec);
    }
out:
    free(bare);
    free(requester);
    return cond;
}

/* Remembers the status of each broadcast unavailable presence (XEP-0012 §3: "the status message
 * of the last unavailable presence received from the user"); available presence forgets it. */
static int client_presence(struct hook_ctx *ctx)
{
    struct stanza *p = ctx->stanza;
    if (strcmp(p->name, "presence") != 0 || stanza_attr(p, "to"))
        return HOOK_PASS;
    const char *type = stanza_attr(p, "type");
    if (type && strcmp(type, "unavailable") != 0)
        return HOOK_PASS;
    char key[32];
    session_key(ctx->session, key);
    free(hmap_del(&statuses, key));
    if (type) {
        char *status = stanza_child_text(p, "status", NULL);
        hmap_put(&statuses, key, status ? status : xstrdup(""));
    }
    return HOOK_PASS;
}

static int session_closed(struct hook_ctx *ctx)
{
    struct c2s *s = ctx->session;
    char key[32];
    session_key(s, key);
    char *status = hmap_del(&statuses, key);
    const struct jid *me = c2s_jid(s);
    /* The session is still registered: it is the last one when it stands alone. */
    bool last = c2s_first(ctx->bare) == s && !c2s_next(s);
    /* A removed account (XEP-0077 closes its sessions after deleting it) keeps no record. */
    if (last && account_exists(server.db, me->domain, me->local) == 1) {
        char *rec = xasprintf("%" PRId64 " %s", wall_time(), status ? status : "");
        if (storage_kv_set(server.db, me->domain, me->local, STORE, rec, strlen(rec)) != 0)
            log_warn(NULL, "could not record the last activity of %s", ctx->bare);
        free(rec);
    }
    free(status);
    return HOOK_PASS;
}

static int init(void)
{
    hmap_init(&statuses);
    return 0;
}

static void fini(void)
{
    size_t i = 0;
    const char *k;
    void *v;
    while (hmap_next(&statuses, &i, &k, &v))
        free(v);
    hmap_fini(&statuses);
}

static const char *const features[] = {NS_LAST, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_LAST, "query", host_get, NULL},
    {IQ_ACCOUNT, NS_LAST, "query", account_get, NULL},
    {0},
};

static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 5, client_presence},
    {HOOK_SESSION_CLOSED, 0, session_closed},
    {0},
};

const struct module mod_last = {
    .name = "last",
    .host_features = features,
    .account_features = features,
    .iqs = iqs,
    .hooks = hooks,
    .init = init,
    .fini = fini,
};
