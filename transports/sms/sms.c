/* sms.c — the SMS gateway's driver: XEP-0100 users with a registered phone number talk to
 * +E164@sms.<domain> contacts.
 *
 * Registration (XEP-0077 / XEP-0100 §4.1): field "phone" (typed in any local format, normalised
 * per sms_default_country) and, with sms_verify, "code". The first submission of a number the
 * user has not confirmed yet sends a six-digit code by SMS (from sms_from) and is answered with
 * <not-acceptable/> and a text saying so; submitting again with the code stores the
 * registration. A number belongs to one user only (<conflict/>).
 *
 * Messages: a chat/normal message with a body to +E164@gw is sent from the user's number; the
 * provider's delivery report for our correlation token (kept in the store, so a restart keeps
 * it) becomes a XEP-0184 <received/> when the message asked for one, a failed report or a send
 * that failed after retries becomes a message error (RFC 6120 §8.3). Inbound SMS to a
 * registered number arrive as type='chat' messages to the owner's bare JID; SMS to a number
 * nobody registered are logged and dropped.
 *
 * Webhooks (http.c): /kannel/mo and /kannel/dlr need ?secret=sms_secret; /twilio/sms and
 * /twilio/status need a valid X-Twilio-Signature (HMAC-SHA1 with the auth token over
 * sms_public_url + path and query + the sorted POST parameters). 403 otherwise. */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

#include "sms.h"

#define NS_RECEIPTS "urn:xmpp:receipts"
#define PENDING_JID "#pending" /* pseudo user holding delivery-report correlations */
#define CODE_TTL_MS (15 * 60 * 1000)
#define CODE_RESEND_MS (60 * 1000)
#define CODE_MAX_TRIES 5
#define MAX_VERIFICATIONS 1000

struct verification {
    char *jid;
    char phone[PHONE_MAX];
    char code[8];
    uint64_t sent_ms;
    unsigned tries;
};

/* A message being handed to the provider. */
struct sms_out {
    struct stanza *st; /* a copy of the user's message, for the error reply */
    char *ref;
};

struct sms_gw {
    struct gw *gw;
    const struct config_gateway *cfg;
    const char *country;
    struct sms_provider *provider;
    struct http_listener *http;
    struct verification *ver;
    size_t n_ver;
    struct sms_out **outs;
    size_t n_outs;
};

static struct sms_gw S;

/* ---- helpers ---- */

static bool user_phone(const struct gw_user *u, char out[PHONE_MAX])
{
    const char *p = gw_user_reg(u, "phone");
    return p && phone_normalize(p, S.country, out) == 0;
}

struct owner_scan {
    const char *phone;
    const char *except;
    char *found;
};

static int owner_cb(void *ud, const char *jid)
{
    struct owner_scan *o = ud;
    if (o->except && strcmp(o->except, jid) == 0)
        return 0;
    struct gw_kv *kv = NULL;
    size_t n = 0;
    if (gw_store_reg_get(gw_store(S.gw), jid, &kv, &n) != 0)
        return 0;
    const char *p = gw_kv_get(kv, n, "phone");
    char e164[PHONE_MAX];
    if (p && phone_normalize(p, S.country, e164) == 0 && strcmp(e164, o->phone) == 0)
        o->found = xstrdup(jid);
    gw_kv_free(kv, n);
    return o->found != NULL;
}

/* The bare JID that registered phone (E.164), other than except; NULL if none. */
static char *owner_of(const char *phone, const char *except)
{
    struct owner_scan o = {.phone = phone, .except = except};
    gw_store_reg_each(gw_store(S.gw), owner_cb, &o);
    return o.found;
}

/* XML 1.0 §2.2 allows no C0 controls but tab, LF and CR: replace them (SMS from phones may carry
 * anything). Returns a malloc'd copy. */
static char *xml_safe(const char *s)
{
    char *r = xstrdup(s);
    for (char *p = r; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r')
            *p = '?';
    return r;
}

static void send_message_error(const char *from, const char *to, const char *id,
                               const char *cond, const char *text)
{
    struct stanza *m = gw_stanza("message", from, to, "error", id && *id ? id : NULL);
    struct stanza *e = stanza_add_child(m, "error", NULL);
    stanza_set_attr(e, "type", stanza_error_type(cond));
    stanza_add_child(e, cond, NS_STANZA_ERRORS);
    if (text) {
        struct stanza *t = stanza_add_text_child(e, "text", NS_STANZA_ERRORS, text);
        stanza_set_attr(t, "xml:lang", "en");
    }
    gw_send(S.gw, m);
}

/* ---- delivery-report correlations (in the store: survive a restart) ---- */

/* value: full JID \n contact \n message id \n receipt (0/1) \n parts left */
static void pending_put(const char *ref, const char *jid, const char *contact, const char *id,
                        bool receipt, unsigned parts)
{
    char *v = xasprintf("%s\n%s\n%s\n%d\n%u", jid, contact, id ? id : "", receipt ? 1 : 0,
                        parts);
    gw_store_setting_set(gw_store(S.gw), PENDING_JID, ref, v);
    free(v);
}

static void pending_delete(const char *ref)
{
    gw_store_setting_set(gw_store(S.gw), PENDING_JID, ref, NULL);
}

struct pending {
    char *raw;
    char *jid, *contact, *id;
    bool receipt;
    unsigned parts;
};

static int pending_get(const char *ref, struct pending *p)
{
    memset(p, 0, sizeof *p);
    if (!ref || !*ref || strlen(ref) > 64)
        return -1;
    if (gw_store_setting_get(gw_store(S.gw), PENDING_JID, ref, &p->raw) != 0 || !p->raw)
        return -1;
    char *f[5];
    char *s = p->raw;
    for (int i = 0; i < 5; i++) {
        f[i] = s;
        char *nl = strchr(s, '\n');
        if (i < 4) {
            if (!nl) {
                free(p->raw);
                return -1;
            }
            *nl = '\0';
            s = nl + 1;
        }
    }
    p->jid = f[0];
    p->contact = f[1];
    p->id = f[2];
    p->receipt = f[3][0] == '1';
    p->parts = (unsigned)strtoul(f[4], NULL, 10);
    return 0;
}

/* A delivery report for ref: delivered (true) or failed (false, with the provider's text). */
static void report(const char *ref, bool delivered, const char *detail)
{
    struct pending p;
    if (pending_get(ref, &p) < 0) {
        log_debug("sms", "delivery report for an unknown reference");
        return;
    }
    if (delivered) {
        if (p.parts > 1) {
            pending_put(ref, p.jid, p.contact, p.id, p.receipt, p.parts - 1);
        } else {
            log_info("sms", "%s: message to %s delivered", p.jid, p.contact);
            if (p.receipt && *p.id) {
                /* XEP-0184 §4: the receipt carries the id of the message it acknowledges. */
                struct stanza *m = gw_stanza("message", p.contact, p.jid, NULL, NULL);
                char *mid = random_id(16);
                stanza_set_attr(m, "id", mid);
                free(mid);
                struct stanza *r = stanza_add_child(m, "received", NS_RECEIPTS);
                stanza_set_attr(r, "id", p.id);
                gw_send(S.gw, m);
            }
            pending_delete(ref);
        }
    } else {
        log_info("sms", "%s: message to %s not delivered (%s)", p.jid, p.contact,
                 detail ? detail : "");
        char *text = xasprintf("The SMS to %.20s was not delivered%s%.200s", p.contact,
                               detail && *detail ? ": " : "", detail ? detail : "");
        send_message_error(p.contact, p.jid, p.id, "recipient-unavailable", text);
        free(text);
        pending_delete(ref);
    }
    free(p.raw);
}

/* ---- sending ---- */

static void out_free(struct sms_out *o)
{
    for (size_t i = 0; i < S.n_outs; i++) {
        if (S.outs[i] == o) {
            S.outs[i] = S.outs[--S.n_outs];
            break;
        }
    }
    stanza_free(o->st);
    free(o->ref);
    free(o);
}

static void on_sent(void *ud, enum sms_result r, const char *text)
{
    struct sms_out *o = ud;
    const char *to = stanza_attr(o->st, "to");
    if (r == SMS_OK) {
        log_info("sms", "%s: SMS to %s accepted by the provider", stanza_attr(o->st, "from"), to);
    } else {
        /* XEP-0100 §4.7 / RFC 6120 §8.3.3: a provider that did not answer is
         * remote-server-timeout; one that refused is service-unavailable. */
        char *t = xasprintf("The SMS could not be sent: %.300s", text ? text : "");
        gw_send_error(S.gw, o->st, r == SMS_FAILED ? "remote-server-timeout"
                                                   : "service-unavailable", t);
        free(t);
        pending_delete(o->ref);
    }
    out_free(o);
}

static const char *send_sms(struct gw_user *u, const struct stanza *st, const char *contact,
                            const char *to)
{
    char *body = stanza_child_text(st, "body", NULL);
    if (!body || !*body) {
        free(body);
        return NULL; /* chat states and the like: nothing to send */
    }
    char from[PHONE_MAX];
    if (!user_phone(u, from)) {
        free(body);
        gw_send_error(S.gw, st, "registration-required", "Register a phone number first");
        return NULL;
    }
    const char *id = stanza_attr(st, "id");
    bool receipt = stanza_child(st, "request", NS_RECEIPTS) && id && !strchr(id, '\n') &&
                   strlen(id) <= 256;
    struct sms_out *o = xcalloc(1, sizeof *o);
    o->st = stanza_copy(st);
    o->ref = random_id(20);
    const char *full = stanza_attr(st, "from");
    pending_put(o->ref, full ? full : u->jid, contact, receipt ? id : "", receipt, 1);
    S.outs = xrealloc(S.outs, (S.n_outs + 1) * sizeof *S.outs);
    S.outs[S.n_outs++] = o;
    log_debug("sms", "%s: SMS to %s, reference %s", u->jid, to, o->ref);
    const char *why = NULL;
    unsigned n = sms_provider_send(S.provider, from, to, body, o->ref, on_sent, o, &why);
    free(body);
    if (n == 0) {
        gw_send_error(S.gw, st, "not-acceptable", why ? why : "The message cannot be sent");
        pending_delete(o->ref);
        out_free(o);
        return NULL;
    }
    if (n > 1)
        pending_put(o->ref, full ? full : u->jid, contact, receipt ? id : "", receipt, n);
    return NULL;
}

/* ---- inbound (webhooks) ---- */

static void deliver_inbound(const char *sender, const char *recipient, const char *text)
{
    char to[PHONE_MAX], from[PHONE_MAX];
    if (!recipient || phone_normalize(recipient, S.country, to) < 0) {
        log_warn("sms", "inbound SMS for an invalid number '%.20s' dropped",
                 recipient ? recipient : "");
        return;
    }
    char *owner = owner_of(to, NULL);
    if (!owner) {
        log_warn("sms", "inbound SMS for %s, which nobody registered: dropped", to);
        return;
    }
    /* A sender that is no phone number (a short code, an alphanumeric sender id) still gets
     * a JID: the XEP-0106-escaped text. */
    char *contact;
    if (sender && phone_normalize(sender, S.country, from) == 0)
        contact = gw_jid_for(S.gw, from, NULL);
    else
        contact = gw_jid_for(S.gw, sender && *sender ? sender : "unknown", NULL);
    char *body = xml_safe(text ? text : "");
    struct stanza *m = gw_stanza("message", contact, owner, "chat", NULL);
    char *mid = random_id(16);
    stanza_set_attr(m, "id", mid);
    free(mid);
    stanza_add_text_child(m, "body", NULL, body);
    gw_send(S.gw, m);
    log_info("sms", "inbound SMS from %s to %s delivered to %s", contact, to, owner);
    free(body);
    free(contact);
    free(owner);
}

static const char *param(const struct http_request *r, const char *key)
{
    const char *v = gw_kv_get(r->form, r->n_form, key);
    return v ? v : gw_kv_get(r->query, r->n_query, key);
}

static unsigned http_kannel(const struct http_request *r, struct buf *out)
{
    if (!sms_secure_eq(gw_kv_get(r->query, r->n_query, "secret"), S.cfg->sms_secret)) {
        log_warn("sms", "webhook %s without the right secret refused", r->path);
        buf_puts(out, "Forbidden\n");
        return 403;
    }
    if (strcmp(r->path, "/kannel/mo") == 0) {
        const char *from = param(r, "from"), *to = param(r, "to"), *text = param(r, "text");
        if (!from || !to) {
            buf_puts(out, "from and to are required\n");
            return 400;
        }
        if (text && !utf8_valid(text, strlen(text))) {
            buf_puts(out, "text must be UTF-8\n");
            return 400;
        }
        deliver_inbound(from, to, text);
        return 200; /* empty: with omit-empty, Kannel sends no reply SMS */
    }
    /* /kannel/dlr: type 1 delivered, 2 delivery failure, 16 SMSC reject; 4 buffered and 8
     * SMSC submit are intermediate. */
    const char *type = param(r, "type"), *ref = param(r, "ref");
    if (!type || !ref) {
        buf_puts(out, "type and ref are required\n");
        return 400;
    }
    long t = strtol(type, NULL, 10);
    if (t == 1)
        report(ref, true, NULL);
    else if (t == 2 || t == 16)
        report(ref, false, t == 2 ? "delivery failed" : "rejected by the SMS centre");
    return 200;
}

static unsigned http_twilio(const struct http_request *r, struct buf *out,
                            const char **content_type)
{
    bool ok = false;
    if (S.cfg->sms_public_url && S.cfg->sms_password && r->signature) {
        size_t l = strlen(S.cfg->sms_public_url);
        while (l && S.cfg->sms_public_url[l - 1] == '/')
            l--;
        char *url = xasprintf("%.*s%s", (int)l, S.cfg->sms_public_url, r->uri);
        char *want = sms_twilio_signature(S.cfg->sms_password, url, r->form, r->n_form);
        ok = sms_secure_eq(want, r->signature);
        free(want);
        free(url);
    }
    if (!ok) {
        log_warn("sms", "webhook %s with a bad or missing signature refused", r->path);
        buf_puts(out, "Forbidden\n");
        return 403;
    }
    if (strcmp(r->path, "/twilio/sms") == 0) {
        const char *from = param(r, "From"), *to = param(r, "To"), *text = param(r, "Body");
        if (!from || !to) {
            buf_puts(out, "From and To are required\n");
            return 400;
        }
        if (text && !utf8_valid(text, strlen(text))) {
            buf_puts(out, "Body must be UTF-8\n");
            return 400;
        }
        deliver_inbound(from, to, text);
        *content_type = "text/xml";
        buf_puts(out, "<Response/>"); /* empty TwiML: no reply */
        return 200;
    }
    const char *status = param(r, "MessageStatus"), *ref = param(r, "ref");
    if (!status || !ref) {
        buf_puts(out, "MessageStatus and ref are required\n");
        return 400;
    }
    if (strcmp(status, "delivered") == 0)
        report(ref, true, NULL);
    else if (strcmp(status, "failed") == 0 || strcmp(status, "undelivered") == 0)
        report(ref, false, param(r, "ErrorCode") ? "provider error" : status);
    return 200;
}

static unsigned on_http(void *ud, const struct http_request *r, struct buf *out,
                        const char **content_type)
{
    (void)ud;
    bool kannel = str_eq(S.cfg->sms_provider, "kannel");
    bool known = kannel ? strcmp(r->path, "/kannel/mo") == 0 ||
                              strcmp(r->path, "/kannel/dlr") == 0
                        : strcmp(r->path, "/twilio/sms") == 0 ||
                              strcmp(r->path, "/twilio/status") == 0;
    if (!known) {
        buf_puts(out, "Not found\n");
        return 404;
    }
    if (!kannel && strcmp(r->method, "POST") != 0) {
        buf_puts(out, "POST expected\n");
        return 405;
    }
    return kannel ? http_kannel(r, out) : http_twilio(r, out, content_type);
}

/* ---- registration with a verification code ---- */

static struct verification *ver_find(const char *jid)
{
    for (size_t i = 0; i < S.n_ver; i++)
        if (strcmp(S.ver[i].jid, jid) == 0)
            return &S.ver[i];
    return NULL;
}

static void ver_drop(struct verification *v)
{
    free(v->jid);
    *v = S.ver[--S.n_ver];
}

static void ver_expire(void)
{
    uint64_t now = now_ms();
    for (size_t i = 0; i < S.n_ver;) {
        if (now - S.ver[i].sent_ms > CODE_TTL_MS)
            ver_drop(&S.ver[i]);
        else
            i++;
    }
}

static void on_code_sent(void *ud, enum sms_result r, const char *text)
{
    (void)ud;
    if (r != SMS_OK)
        log_warn("sms", "a verification code could not be sent: %s", text ? text : "");
}

static const char *drv_validate(struct gw *gw, const char *jid, const struct gw_kv *values,
                                size_t n, char *text, size_t textlen)
{
    const char *typed = gw_kv_get(values, n, "phone");
    char phone[PHONE_MAX];
    if (!typed || phone_normalize(typed, S.country, phone) < 0) {
        snprintf(text, textlen, "'%.40s' is not a phone number (E.164: +<country><number>, "
                 "at most 15 digits)", typed ? typed : "");
        return "not-acceptable";
    }
    char *other = owner_of(phone, jid);
    if (other) {
        free(other);
        snprintf(text, textlen, "%s is registered by another user", phone);
        return "conflict";
    }
    struct gw_user *u = gw_user_find(gw, jid);
    char cur[PHONE_MAX];
    if (!S.cfg->sms_verify || (u && u->registered && user_phone(u, cur) &&
                               strcmp(cur, phone) == 0))
        return NULL;
    ver_expire();
    const char *code = gw_kv_get(values, n, "code");
    struct verification *v = ver_find(jid);
    if (v && strcmp(v->phone, phone) == 0 && code && *code) {
        if (sms_secure_eq(code, v->code)) {
            ver_drop(v);
            log_info("sms", "%s confirmed %s", jid, phone);
            return NULL;
        }
        if (++v->tries >= CODE_MAX_TRIES) {
            ver_drop(v);
            snprintf(text, textlen, "Wrong code too many times; submit without a code to get "
                     "a new one");
        } else {
            snprintf(text, textlen, "Wrong code for %s", phone);
        }
        return "not-acceptable";
    }
    if (v && strcmp(v->phone, phone) == 0 && now_ms() - v->sent_ms < CODE_RESEND_MS) {
        snprintf(text, textlen, "A code was already sent to %s; submit again with the code",
                 phone);
        return "not-acceptable";
    }
    if (!v) {
        if (S.n_ver >= MAX_VERIFICATIONS) {
            snprintf(text, textlen, "Too many registrations in progress; try again later");
            return "resource-constraint";
        }
        S.ver = xrealloc(S.ver, (S.n_ver + 1) * sizeof *S.ver);
        v = &S.ver[S.n_ver++];
        memset(v, 0, sizeof *v);
        v->jid = xstrdup(jid);
    }
    memcpy(v->phone, phone, sizeof v->phone);
    unsigned char rnd[4];
    random_bytes(rnd, sizeof rnd);
    uint32_t x = ((uint32_t)rnd[0] << 24 | (uint32_t)rnd[1] << 16 | (uint32_t)rnd[2] << 8 |
                  rnd[3]) % 1000000u;
    snprintf(v->code, sizeof v->code, "%06u", (unsigned)x);
    v->sent_ms = now_ms();
    v->tries = 0;
    char *msg = xasprintf("Your %s verification code is %s", gw_domain(gw), v->code);
    const char *why = NULL;
    sms_provider_send(S.provider, S.cfg->sms_from, phone, msg, NULL, on_code_sent, NULL, &why);
    free(msg);
    log_info("sms", "%s: verification code sent to %s", jid, phone);
    snprintf(text, textlen, "A code was sent to %s; submit the registration again with the code",
             phone);
    return "not-acceptable";
}

/* ---- the driver ---- */

static const char *drv_stanza(struct gw *gw, struct gw_user *u, const struct stanza *st,
                              const struct jid *from, const struct jid *to)
{
    (void)from;
    const char *type = stanza_attr(st, "type");
    bool is_error = str_eq(type, "error");
    if (!to->local) {
        if (strcmp(st->name, "iq") == 0 && !is_error && !str_eq(type, "result"))
            return "service-unavailable";
        return NULL;
    }
    char phone[PHONE_MAX];
    if (phone_normalize(to->local, S.country, phone) < 0) {
        if (strcmp(st->name, "presence") == 0 && type)
            return NULL;
        return is_error ? NULL : "item-not-found";
    }
    char *contact = gw_jid_for(gw, phone, NULL);
    const char *cond = NULL;
    if (strcmp(st->name, "message") == 0) {
        if (!is_error && !str_eq(type, "groupchat")) {
            if (!u->registered)
                cond = "registration-required";
            else
                cond = send_sms(u, st, contact, phone);
        }
    } else if (strcmp(st->name, "presence") == 0) {
        /* XEP-0100 §5.1: an SMS contact has no presence; a subscription request is approved
         * (the user asked for it), and removals are confirmed. */
        if (str_eq(type, "subscribe")) {
            gw_send(gw, gw_stanza("presence", contact, u->jid, "subscribed", NULL));
            gw_store_contact_add(gw_store(gw), u->jid, contact, NULL);
        } else if (str_eq(type, "unsubscribe")) {
            gw_send(gw, gw_stanza("presence", contact, u->jid, "unsubscribed", NULL));
            gw_store_contact_remove(gw_store(gw), u->jid, contact);
        } else if (str_eq(type, "probe")) {
            gw_send(gw, gw_stanza("presence", contact, u->jid, "unavailable", NULL));
        }
    } else if (!is_error && !str_eq(type, "result")) {
        cond = "service-unavailable";
    }
    free(contact);
    return cond;
}

static int drv_init(struct gw *gw)
{
    memset(&S, 0, sizeof S);
    S.gw = gw;
    S.cfg = gw_gateway_config(gw);
    S.country = S.cfg->sms_default_country ? S.cfg->sms_default_country : "1";
    char probe[PHONE_MAX];
    if (phone_normalize("5550100", S.country, probe) < 0) {
        log_error("sms", "sms_default_country must be a calling code of 1 to 3 digits");
        return -1;
    }
    if (!S.cfg->sms_url) {
        log_error("sms", "[gateway %s] sms_url is required", gw_domain(gw));
        return -1;
    }
    bool kannel = str_eq(S.cfg->sms_provider, "kannel");
    if (kannel && !S.cfg->sms_secret) {
        log_error("sms", "[gateway %s] sms_secret is required to authenticate Kannel's "
                  "requests", gw_domain(gw));
        return -1;
    }
    if (!S.cfg->sms_public_url)
        log_warn("sms", "no sms_public_url: no delivery reports");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("sms", "libcurl initialisation failed");
        return -1;
    }
    struct sms_provider_opts o = {
        .kind = S.cfg->sms_provider, .url = S.cfg->sms_url, .username = S.cfg->sms_username,
        .password = S.cfg->sms_password, .public_url = S.cfg->sms_public_url,
        .secret = S.cfg->sms_secret, .max_parts = S.cfg->sms_max_parts, .timeout_ms = 20000,
        .retries = 2, .retry_ms = 2000,
    };
    S.provider = sms_provider_new(gw_loop(gw), &o);
    if (S.cfg->n_sms_listen) {
        S.http = http_listener_new(gw_loop(gw), S.cfg->sms_listen[0].host,
                                   S.cfg->sms_listen[0].port, on_http, NULL);
        if (!S.http) {
            sms_provider_free(S.provider);
            S.provider = NULL;
            curl_global_cleanup();
            return -1;
        }
    } else {
        log_warn("sms", "no sms_listen: no inbound SMS and no delivery reports");
    }
    log_info("sms", "provider %s, default country +%s", S.cfg->sms_provider, S.country);
    return 0;
}

static void drv_fini(struct gw *gw)
{
    (void)gw;
    http_listener_free(S.http);
    S.http = NULL;
    sms_provider_free(S.provider);
    S.provider = NULL;
    while (S.n_outs)
        out_free(S.outs[0]);
    free(S.outs);
    while (S.n_ver)
        ver_drop(&S.ver[0]);
    free(S.ver);
    curl_global_cleanup();
    memset(&S, 0, sizeof S);
}

static char *drv_prompt_to_node(struct gw *gw, const char *prompt)
{
    (void)gw;
    char phone[PHONE_MAX];
    if (phone_normalize(prompt, S.country, phone) < 0)
        return NULL;
    return xstrdup(phone);
}

static char *drv_user_info(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    char phone[PHONE_MAX];
    return user_phone(u, phone) ? xasprintf("number %s", phone) : xstrdup("no number");
}

void sms_fill_driver(struct gw_driver *d)
{
    d->init = drv_init;
    d->fini = drv_fini;
    d->validate = drv_validate;
    d->stanza = drv_stanza;
    d->prompt_to_node = drv_prompt_to_node;
    d->user_info = drv_user_info;
}
