/* XEP-0077 In-Band Registration: account creation before login (when the host's
 * `registration = true`), password change and account removal after login. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/account.h"
#include "isthmus/c2s.h"
#include "isthmus/hmap.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/server.h"

#define NS_REGISTER "jabber:iq:register"

static const char *get(struct iq_request *req)
{
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *q = stanza_add_child(r, "query", NS_REGISTER);
    if (req->from) {
        /* XEP-0077 §3.2: already registered. */
        stanza_add_child(q, "registered", NULL);
        stanza_add_text_child(q, "username", NULL, req->from->local);
    } else {
        stanza_add_text_child(q, "instructions", NULL,
                              "Choose a username and password to register with this server.");
        stanza_add_child(q, "username", NULL);
        stanza_add_child(q, "password", NULL);
    }
    router_reply(req, r);
    return NULL;
}

/* Per-IP time of the last in-band registration: account creation is the one thing anybody can
 * do before authenticating, so it is throttled like Prosody's min_seconds_between_registrations.
 * Entries older than the interval are pruned as the table is used. */
static struct hmap last_registration;

static bool throttled(const char *ip)
{
    uint64_t interval = (uint64_t)server.cfg.c2s_registration_interval * 1000;
    if (!interval || !ip || !*ip)
        return false;
    uint64_t now = now_ms();
    if (last_registration.used > 4096) {
        size_t i = 0;
        const char *k;
        void *v;
        struct hmap keep;
        hmap_init(&keep);
        while (hmap_next(&last_registration, &i, &k, &v))
            if (now - (uint64_t)(uintptr_t)v < interval)
                hmap_put(&keep, k, v);
        hmap_fini(&last_registration);
        last_registration = keep;
    }
    void *last = hmap_get(&last_registration, ip);
    return last && now - (uint64_t)(uintptr_t)last < interval;
}

static const char *create(struct iq_request *req, const char *host)
{
    const struct config_host *h = server_host(host);
    if (!h || !h->registration)
        return "not-allowed";
    const char *ip = req->origin ? c2s_peer_ip(req->origin) : NULL;
    if (throttled(ip)) {
        struct stanza *e = stanza_error_reply(req->iq, "policy-violation", NULL,
                                              "Too many registrations from your address; "
                                              "try again later");
        router_reply(req, e);
        return NULL;
    }
    char *raw_user = stanza_child_text(req->payload, "username", NULL);
    char *password = stanza_child_text(req->payload, "password", NULL);
    char *user = raw_user ? jid_prep_local(raw_user) : NULL;
    const char *cond = NULL;
    if (!raw_user || !password || !*password) {
        cond = "not-acceptable"; /* XEP-0077 §3.1: required fields missing */
    } else if (!user) {
        cond = "jid-malformed";
    } else {
        int rc = account_create(server.db, host, user, password, server.cfg.scram_iterations);
        if (rc == ACCOUNT_EXISTS)
            cond = "conflict";
        else if (rc == ACCOUNT_BADPASS)
            cond = "not-acceptable";
        else if (rc < 0)
            cond = "internal-server-error";
        else {
            log_info(NULL, "registered %s@%s (in-band, from %s)", user, host, ip ? ip : "?");
            if (ip && *ip)
                hmap_put(&last_registration, ip, (void *)(uintptr_t)now_ms());
        }
    }
    if (!cond)
        router_reply(req, stanza_iq_result(req->iq));
    free(raw_user);
    if (password)
        memset(password, 0, strlen(password));
    free(password);
    free(user);
    return cond;
}

static const char *change_or_remove(struct iq_request *req)
{
    const struct jid *me = req->from;
    if (stanza_child(req->payload, "remove", NULL)) {
        char *bare = jid_bare_string(me);
        struct hook_ctx ctx = {.to = me, .bare = bare, .session = req->origin};
        hooks_fire(HOOK_ACCOUNT_DELETED, &ctx);
        if (account_delete(server.db, me->domain, me->local) != 0) {
            free(bare);
            return "internal-server-error";
        }
        log_info(NULL, "account %s removed by its owner", bare);
        router_reply(req, stanza_iq_result(req->iq));
        /* XEP-0077 §3.2: the account is gone, so are its sessions. */
        c2s_close_account(bare, "not-authorized", "Account removed");
        free(bare);
        return NULL;
    }
    char *raw_user = stanza_child_text(req->payload, "username", NULL);
    char *password = stanza_child_text(req->payload, "password", NULL);
    char *user = raw_user ? jid_prep_local(raw_user) : NULL;
    const char *cond = NULL;
    if (!password || !*password) {
        cond = "bad-request";
    } else if (raw_user && !str_eq(user, me->local)) {
        cond = "not-allowed"; /* XEP-0077 §3.3: only one's own password */
    } else {
        int rc = account_set_password(server.db, me->domain, me->local, password,
                                      server.cfg.scram_iterations);
        cond = rc == 0 ? NULL : rc == ACCOUNT_BADPASS ? "not-acceptable" : "internal-server-error";
    }
    if (!cond) {
        log_info(NULL, "password changed for %s@%s", me->local, me->domain);
        router_reply(req, stanza_iq_result(req->iq));
    }
    free(raw_user);
    if (password)
        memset(password, 0, strlen(password));
    free(password);
    free(user);
    return cond;
}

static const char *set(struct iq_request *req)
{
    if (!req->from)
        return create(req, req->to->domain);
    /* Addressed to an account: only the account itself may manage it. */
    if (req->to->local && !jid_bare_equal(req->from, req->to))
        return "forbidden";
    return change_or_remove(req);
}

static const char *const features[] = {NS_REGISTER, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_REGISTER, "query", get, set},
    {IQ_ACCOUNT, NS_REGISTER, "query", get, set},
    {0},
};

static void fini(void)
{
    hmap_fini(&last_registration);
}

const struct module mod_register = {
    .name = "register",
    .fini = fini,
    .host_features = features,
    .iqs = iqs,
};
