/* driver.c — the email gateway's gw_driver callbacks.
 *
 * Outbound: a <message/> with a body to alice\40example.org@GATEWAY becomes a mail to
 * alice@example.org (mime.c builds it on the loop thread, a worker submits it by SMTP). The
 * XMPP <thread/> maps to In-Reply-To/References through per-user store settings
 * "thread:<id>" = "<last message id>\t<references>".
 *
 * Inbound: every registered user's INBOX is polled (online or not: the user's server keeps
 * offline messages) every mail_poll_interval seconds, and at once when the user comes online.
 * The poll state is one store setting per user, "imap_state" = "<identity>\t<UIDVALIDITY>\t<last
 * delivered UID>" (identity = username@imap_server, so a changed registration starts afresh).
 * A new registration's first poll only records the baseline (UIDNEXT - 1) and says so to the user:
 * mail already in the mailbox is not flooded into XMPP. New mails (UID SEARCH above the last UID)
 * are sent with gw_send in UID order, and the last UID is stored by a 1 ms timer, i.e. after the
 * loop's before-sleep hook has written the stanzas to the component socket: a crash before that
 * write re-delivers them (nothing lost), a crash in the microseconds between write and store
 * repeats that batch (ids "mail-<UIDVALIDITY>-<UID>" show it). While the component stream is down
 * nothing is polled or delivered. A changed UIDVALIDITY (RFC 3501 §2.3.1.1) resets the baseline.
 */
#include "mail.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

#define MAIL_BATCH 20 /* mails fetched per poll */
#define MAIL_MAX_THREAD_KEY 300

struct mail_state {
    char *jid;
    char *last_error; /* the last poll error told to the user (told once) */
    bool polling;     /* a poll queued, running or its commit pending */
    unsigned sent, received;
};

struct pending_commit {
    char *jid, *value;
    struct ev_timer *timer;
    bool more; /* more new mail than one batch: poll again right after */
};

static struct gw *the_gw;
static struct worker_pool *pool;
static struct ev_timer *poll_timer;
static struct mail_state **states;
static size_t n_states;
static struct pending_commit **commits;
static size_t n_commits;

static const struct config_gateway *gcfg(void)
{
    return gw_gateway_config(the_gw);
}

static struct mail_state *state_get(const char *jid)
{
    for (size_t i = 0; i < n_states; i++)
        if (strcmp(states[i]->jid, jid) == 0)
            return states[i];
    struct mail_state *s = xcalloc(1, sizeof *s);
    s->jid = xstrdup(jid);
    states = xrealloc(states, (n_states + 1) * sizeof *states);
    states[n_states++] = s;
    return s;
}

static void state_drop(const char *jid)
{
    for (size_t i = 0; i < n_states; i++) {
        if (strcmp(states[i]->jid, jid) == 0) {
            if (states[i]->polling)
                return; /* the poll's done callback drops it (it finds no registration) */
            free(states[i]->jid);
            free(states[i]->last_error);
            free(states[i]);
            states[i] = states[--n_states];
            return;
        }
    }
}

/* A plain message from the gateway itself to the user (status, errors). */
static void notify(const char *jid, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void notify(const char *jid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) < 0)
        text = NULL;
    va_end(ap);
    if (!text)
        return;
    char *clean = mime_clean_text(text, strlen(text));
    free(text);
    struct stanza *m = gw_stanza("message", gw_domain(the_gw), jid, "headline", NULL);
    stanza_add_text_child(m, "body", NULL, clean);
    free(clean);
    gw_send(the_gw, m);
}

static struct mail_account *account_of(struct gw_user *u)
{
    struct mail_account *a = xcalloc(1, sizeof *a);
    a->imap_server = xstrdup(gw_user_reg(u, "imap_server"));
    a->smtp_server = xstrdup(gw_user_reg(u, "smtp_server"));
    const char *user = gw_user_reg(u, "username");
    a->username = xstrdup(user && *user ? user : gw_user_reg(u, "email"));
    a->password = xstrdup(gw_user_reg(u, "password"));
    a->tls = mail_tls_parse(gw_user_reg(u, "tls"));
    a->ca_file = xstrdup(gcfg()->mail_ca_file);
    a->ehlo = xstrdup(gw_domain(the_gw));
    return a;
}

static char *identity_of(struct gw_user *u)
{
    const char *user = gw_user_reg(u, "username");
    if (!user || !*user)
        user = gw_user_reg(u, "email");
    return xasprintf("%s@%s", user ? user : "",
                     gw_user_reg(u, "imap_server") ? gw_user_reg(u, "imap_server") : "");
}

/* imap_state → validity and last UID when it belongs to identity. */
static bool state_read(struct gw_user *u, const char *identity, uint32_t *validity, uint32_t *last)
{
    char *v = NULL;
    if (gw_store_setting_get(gw_store(the_gw), u->jid, "imap_state", &v) != 0 || !v)
        return false;
    bool ok = false;
    char *t1 = strchr(v, '\t');
    char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
    if (t2) {
        *t1 = *t2 = '\0';
        unsigned long a = strtoul(t1 + 1, NULL, 10), b = strtoul(t2 + 1, NULL, 10);
        if (strcmp(v, identity) == 0 && a <= 0xffffffffUL && b <= 0xffffffffUL) {
            *validity = (uint32_t)a;
            *last = (uint32_t)b;
            ok = true;
        }
    }
    free(v);
    return ok;
}

static char *state_value(const char *identity, uint32_t validity, uint32_t last)
{
    return xasprintf("%s\t%lu\t%lu", identity, (unsigned long)validity, (unsigned long)last);
}

/* ---- inbound ---- */

struct poll_job {
    struct worker_job job;
    struct mail_account *acct;
    char *identity;
    uint32_t stored_validity;
    struct net_poll p;
    int rc;
};

static void poll_run(struct worker_job *job)
{
    struct poll_job *pj = (struct poll_job *)job;
    pj->rc = net_imap_poll(pj->acct, &pj->p);
}

static void poll_user(const char *jid);

static void commit_fire(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct pending_commit *c = ud;
    for (size_t i = 0; i < n_commits; i++)
        if (commits[i] == c)
            commits[i] = commits[--n_commits];
    struct gw_user *u = gw_user_find(the_gw, c->jid);
    if (u && u->registered)
        gw_store_setting_set(gw_store(the_gw), c->jid, "imap_state", c->value);
    struct mail_state *s = state_get(c->jid);
    s->polling = false;
    if (!u || !u->registered)
        state_drop(c->jid);
    else if (c->more)
        poll_user(c->jid);
    free(c->jid);
    free(c->value);
    free(c);
}

/* Stores the poll state once the stanzas sent so far have been written (see the top comment). */
static void commit_later(const char *jid, char *value, bool more)
{
    struct pending_commit *c = xcalloc(1, sizeof *c);
    c->jid = xstrdup(jid);
    c->value = value;
    c->more = more;
    commits = xrealloc(commits, (n_commits + 1) * sizeof *commits);
    commits[n_commits++] = c;
    c->timer = ev_timer_add(gw_loop(the_gw), 1, commit_fire, c);
}

static void thread_remember(struct gw_user *u, const char *thread, const char *msgid,
                            const char *refs)
{
    if (!thread || !*thread || !msgid || strlen(thread) > MAIL_MAX_THREAD_KEY)
        return;
    char *key = xasprintf("thread:%s", thread);
    char *val = xasprintf("%s\t%s", msgid, refs ? refs : "");
    gw_user_setting_set(the_gw, u, key, val);
    free(key);
    free(val);
}

static void deliver(struct gw_user *u, uint32_t validity, const struct net_fetched *f)
{
    char id[64];
    snprintf(id, sizeof id, "mail-%lu-%lu", (unsigned long)validity, (unsigned long)f->uid);
    if (!f->data) {
        notify(u->jid,
               "A mail of %zu bytes or more is larger than this gateway's limit and was "
               "not fetched; read it with your mail client.",
               f->size);
        return;
    }
    struct mime_in m;
    if (f->size == 0 || mime_parse(f->data, f->size, &m) < 0) {
        if (f->size)
            notify(u->jid, "A mail that could not be read was skipped.");
        return;
    }
    char *from = mime_addr_valid(m.from) ? gw_jid_for(the_gw, m.from, NULL) : NULL;
    if (!from)
        from = xstrdup(gw_domain(the_gw)); /* no usable sender: from the gateway itself */
    struct stanza *msg = gw_stanza("message", from, u->jid, "normal", id);
    if (m.subject && *m.subject)
        stanza_add_text_child(msg, "subject", NULL, m.subject);
    struct buf body;
    buf_init(&body);
    buf_puts(&body, m.text);
    if (m.attachments)
        buf_printf(&body, "%sAttachments: %s", body.len ? "\n\n" : "", m.attachments);
    if (body.len == 0)
        buf_puts(&body, "(empty mail)");
    char *b = buf_take(&body);
    stanza_add_text_child(msg, "body", NULL, b);
    free(b);
    if (m.thread_root && strlen(m.thread_root) <= MAIL_MAX_THREAD_KEY)
        stanza_add_text_child(msg, "thread", NULL, m.thread_root);
    if (m.from_name) /* XEP-0172 */
        stanza_add_text_child(msg, "nick", "http://jabber.org/protocol/nick", m.from_name);
    if (m.date > 0) { /* XEP-0203 */
        char stamp[32];
        format_datetime(stamp, m.date);
        struct stanza *d = stanza_add_child(msg, "delay", NS_DELAY);
        stanza_set_attr(d, "from", gw_domain(the_gw));
        stanza_set_attr(d, "stamp", stamp);
    }
    gw_send(the_gw, msg);
    if (m.message_id)
        thread_remember(u, m.thread_root, m.message_id, m.references);
    state_get(u->jid)->received++;
    free(from);
    mime_in_fini(&m);
}

static void poll_done(struct worker_job *job, bool cancelled)
{
    struct poll_job *pj = (struct poll_job *)job;
    const char *jid = job->key;
    struct mail_state *s = state_get(jid);
    struct gw_user *u = cancelled ? NULL : gw_user_find(the_gw, jid);
    char *identity = u && u->registered ? identity_of(u) : NULL;
    bool keep_polling = false;
    if (!u || !u->registered || !identity || strcmp(identity, pj->identity) != 0 ||
        !gw_is_online(the_gw)) {
        /* Unregistered, registration changed, or no stream: nothing delivered, nothing stored. */
    } else if (pj->rc < 0) {
        log_info("mail", "%s: poll failed: %s", jid, pj->p.err);
        if (!str_eq(s->last_error, pj->p.err)) {
            free(s->last_error);
            s->last_error = xstrdup(pj->p.err);
            notify(jid, "Cannot check your mailbox %s: %s", pj->identity, pj->p.err);
        }
    } else {
        if (s->last_error) {
            free(s->last_error);
            s->last_error = NULL;
            notify(jid, "Your mailbox %s can be reached again.", pj->identity);
        }
        uint32_t last = pj->p.uidnext ? pj->p.uidnext - 1 : 0;
        if (pj->p.baseline) {
            char *v = state_value(pj->identity, pj->p.uidvalidity, last);
            gw_store_setting_set(gw_store(the_gw), jid, "imap_state", v);
            free(v);
            notify(jid, "Connected to your mailbox %s: new mail will be delivered here.",
                   pj->identity);
        } else if (pj->p.uidvalidity != pj->stored_validity) {
            char *v = state_value(pj->identity, pj->p.uidvalidity, last);
            gw_store_setting_set(gw_store(the_gw), jid, "imap_state", v);
            free(v);
            notify(jid,
                   "Your mailbox %s was renumbered (UIDVALIDITY changed); mail that is "
                   "already there is not delivered again.",
                   pj->identity);
        } else if (pj->p.n_mails > 0) {
            for (size_t i = 0; i < pj->p.n_mails; i++)
                deliver(u, pj->p.uidvalidity, &pj->p.mails[i]);
            uint32_t upto = pj->p.mails[pj->p.n_mails - 1].uid;
            commit_later(jid, state_value(pj->identity, pj->p.uidvalidity, upto),
                         pj->p.n_uids > pj->p.n_mails);
            keep_polling = true; /* until the commit */
            if (pj->p.err[0])
                log_info("mail", "%s: poll stopped early: %s", jid, pj->p.err);
        }
    }
    s->polling = keep_polling;
    if (!keep_polling && (!u || !u->registered))
        state_drop(jid);
    free(identity);
    free(pj->identity);
    mail_account_free(pj->acct);
    net_poll_fini(&pj->p);
    free(pj);
}

static void poll_user(const char *jid)
{
    if (!pool || !gw_is_online(the_gw))
        return;
    struct gw_user *u = gw_user_get(the_gw, jid);
    if (!u->registered)
        return;
    struct mail_state *s = state_get(jid);
    if (s->polling)
        return;
    struct poll_job *pj = xcalloc(1, sizeof *pj);
    pj->identity = identity_of(u);
    uint32_t validity = 0, last = 0;
    if (state_read(u, pj->identity, &validity, &last)) {
        pj->p.last_uid = last;
        pj->stored_validity = validity;
    } else {
        pj->p.baseline = true;
    }
    pj->p.max_size = gcfg()->mail_max_size;
    pj->p.max_batch = MAIL_BATCH;
    pj->acct = account_of(u);
    pj->job.key = xstrdup(jid);
    pj->job.run = poll_run;
    pj->job.done = poll_done;
    s->polling = true;
    worker_submit(pool, &pj->job);
}

static int poll_each(void *ud, const char *jid)
{
    (void)ud;
    poll_user(jid);
    return 0;
}

static void poll_tick(struct ev_loop *loop, void *ud)
{
    (void)ud;
    poll_timer = ev_timer_add(loop, (uint64_t)gcfg()->mail_poll_interval * 1000, poll_tick, NULL);
    gw_store_reg_each(gw_store(the_gw), poll_each, NULL);
}

/* ---- outbound ---- */

struct send_job {
    struct worker_job job;
    struct mail_account *acct;
    char *from, *rcpt, *msg, *message_id, *thread, *references;
    size_t len;
    struct stanza *orig; /* the XMPP message, for errors and receipts */
    int rc, curl_code;
    char err[300];
};

static void send_run(struct worker_job *job)
{
    struct send_job *sj = (struct send_job *)job;
    sj->rc = net_smtp_send(sj->acct, sj->from, sj->rcpt, sj->msg, sj->len, &sj->curl_code, sj->err,
                           sizeof sj->err);
}

static const char *curl_condition(int code)
{
    switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
        return "remote-server-not-found";
    case CURLE_OPERATION_TIMEDOUT:
        return "remote-server-timeout";
    case CURLE_LOGIN_DENIED:
        return "not-authorized";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_USE_SSL_FAILED:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
        return "service-unavailable";
    default:
        return "recipient-unavailable";
    }
}

static void send_done(struct worker_job *job, bool cancelled)
{
    struct send_job *sj = (struct send_job *)job;
    struct gw_user *u = gw_user_find(the_gw, job->key);
    if (cancelled) {
        gw_send_error(the_gw, sj->orig, "remote-server-timeout", "The gateway shut down");
    } else if (sj->rc < 0) {
        log_info("mail", "%s → %s: %s", job->key, sj->rcpt, sj->err);
        /* The server refused the recipient (RFC 5321 §4.2.2: 55x to RCPT). */
        const char *cond = strstr(sj->err, "RCPT failed") ? "recipient-unavailable"
                                                          : curl_condition(sj->curl_code);
        gw_send_error(the_gw, sj->orig, cond, sj->err);
    } else {
        log_debug("mail", "%s → %s: sent %s", job->key, sj->rcpt, sj->message_id);
        if (u && u->registered) {
            state_get(job->key)->sent++;
            thread_remember(u, sj->thread, sj->message_id, sj->references);
        }
        /* XEP-0184: the mail server took it. */
        const char *id = stanza_attr(sj->orig, "id");
        if (id && stanza_child(sj->orig, "request", "urn:xmpp:receipts")) {
            struct stanza *r = gw_stanza("message", stanza_attr(sj->orig, "to"),
                                         stanza_attr(sj->orig, "from"), NULL, NULL);
            struct stanza *rc = stanza_add_child(r, "received", "urn:xmpp:receipts");
            stanza_set_attr(rc, "id", id);
            gw_send(the_gw, r);
        }
    }
    mail_account_free(sj->acct);
    free(sj->from);
    free(sj->rcpt);
    free(sj->msg);
    free(sj->message_id);
    free(sj->thread);
    free(sj->references);
    stanza_free(sj->orig);
    free(sj);
}

/* refs + " " + id, trimmed to the root and the last 19. */
static char *refs_append(const char *refs, const char *id)
{
    char *all = refs && *refs ? xasprintf("%s %s", refs, id) : xstrdup(id);
    size_t n = 1;
    for (const char *p = all; *p; p++)
        n += *p == ' ';
    if (n <= 20)
        return all;
    const char *first_end = strchr(all, ' ');
    const char *p = all;
    for (size_t skip = n - 19; skip && p; skip--) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    char *r = xasprintf("%.*s %s", (int)(first_end - all), all, p ? p : "");
    free(all);
    return r;
}

static const char *outbound(struct gw_user *u, const struct stanza *st, const struct jid *from,
                            const struct jid *to)
{
    char *body = stanza_child_text(st, "body", NULL);
    if (!body)
        return NULL; /* chat states and the like: nothing to mail */
    const char *cond = NULL;
    char *rcpt = jid_unescape_local(to->local);
    const char *email = gw_user_reg(u, "email");
    if (!rcpt || !mime_addr_valid(rcpt)) {
        cond = "jid-malformed";
        goto out;
    }
    if (!email || !mime_addr_valid(email)) {
        cond = "registration-required";
        goto out;
    }
    char *subject = stanza_child_text(st, "subject", NULL);
    char *bare = jid_bare_string(from);
    if (!subject || !*subject) {
        free(subject);
        subject = gcfg()->mail_default_subject ? xstrdup(gcfg()->mail_default_subject)
                                               : xasprintf("Message from %s", bare);
    }
    char *thread = stanza_child_text(st, "thread", NULL);
    if (thread && (!*thread || strlen(thread) > MAIL_MAX_THREAD_KEY)) {
        free(thread);
        thread = NULL;
    }
    char *rnd = random_id(24);
    char *msgid = xasprintf("%s@%s", rnd, gw_domain(the_gw));
    free(rnd);
    char *in_reply_to = NULL, *refs = NULL;
    if (thread) {
        char *key = xasprintf("thread:%s", thread), *v = NULL;
        v = gw_user_setting(the_gw, u, key);
        free(key);
        char *tab = v ? strchr(v, '\t') : NULL;
        if (tab) {
            *tab = '\0';
            in_reply_to = xstrdup(v);
            refs = refs_append(tab + 1, v);
        } else if (strchr(thread, '@') && !strpbrk(thread, " <>")) {
            in_reply_to = xstrdup(thread); /* a thread named after a Message-ID */
            refs = xstrdup(thread);
        }
        free(v);
    } else {
        thread = xstrdup(msgid); /* replies to this mail come back in this thread */
    }
    const char *name = gw_user_reg(u, "name");
    struct mime_out mo = {
        .from = email,
        .from_name = name,
        .to = rcpt,
        .subject = subject,
        .body = body,
        .message_id = msgid,
        .in_reply_to = in_reply_to,
        .references = refs,
        .date = wall_time(),
    };
    size_t len = 0;
    char *msg = mime_build(&mo, &len);
    if (!msg) {
        cond = "bad-request";
        free(subject);
        free(bare);
        free(thread);
        free(msgid);
        free(in_reply_to);
        free(refs);
        goto out;
    }
    struct send_job *sj = xcalloc(1, sizeof *sj);
    sj->acct = account_of(u);
    sj->from = xstrdup(email);
    sj->rcpt = rcpt;
    rcpt = NULL;
    sj->msg = msg;
    sj->len = len;
    sj->message_id = msgid;
    sj->thread = thread;
    sj->references = refs;
    sj->orig = stanza_copy(st);
    sj->job.key = xstrdup(u->jid);
    sj->job.run = send_run;
    sj->job.done = send_done;
    worker_submit(pool, &sj->job);
    free(subject);
    free(bare);
    free(in_reply_to);
out:
    free(rcpt);
    free(body);
    return cond;
}

/* ---- driver callbacks ---- */

static int drv_init(struct gw *gw)
{
    the_gw = gw;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("mail", "curl_global_init failed");
        return -1;
    }
    mime_init();
    pool = worker_pool_new(gw_loop(gw), gcfg()->mail_workers);
    if (!pool)
        return -1;
    poll_timer =
        ev_timer_add(gw_loop(gw), (uint64_t)gcfg()->mail_poll_interval * 1000, poll_tick, NULL);
    return 0;
}

static void drv_fini(struct gw *gw)
{
    if (poll_timer)
        ev_timer_cancel(gw_loop(gw), poll_timer);
    poll_timer = NULL;
    struct worker_pool *p = pool;
    pool = NULL;         /* nothing new is submitted from the done callbacks below */
    worker_pool_free(p); /* running transfers abort; done callbacks run here */
    /* Stanzas of pending commits were handed to the stream, which is flushed at shutdown. */
    while (n_commits) {
        struct pending_commit *c = commits[0];
        ev_timer_cancel(gw_loop(gw), c->timer);
        c->more = false;
        commit_fire(gw_loop(gw), c);
    }
    free(commits);
    commits = NULL;
    for (size_t i = 0; i < n_states; i++) {
        free(states[i]->jid);
        free(states[i]->last_error);
        free(states[i]);
    }
    free(states);
    states = NULL;
    n_states = 0;
    mime_fini();
    curl_global_cleanup();
}

static void drv_online(struct gw *gw)
{
    gw_store_reg_each(gw_store(gw), poll_each, NULL);
}

static bool one_line_ok(const char *v, size_t max)
{
    return !v || (strlen(v) <= max && !strpbrk(v, "\r\n") && utf8_valid(v, strlen(v)));
}

static const char *drv_validate(struct gw *gw, const char *jid, const struct gw_kv *values,
                                size_t n, char *text, size_t textlen)
{
    (void)gw;
    (void)jid;
    static const char *const keys[] = {"email",    "imap_server", "smtp_server", "username",
                                       "password", "tls",         "name"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!one_line_ok(gw_kv_get(values, n, keys[i]), 320)) {
            snprintf(text, textlen, "%s must be one line of at most 320 bytes", keys[i]);
            return "not-acceptable";
        }
    }
    const char *email = gw_kv_get(values, n, "email");
    if (!email || !mime_addr_valid(email)) {
        snprintf(text, textlen, "A valid email address (name@domain) is required");
        return "not-acceptable";
    }
    const char *servers[] = {"imap_server", "smtp_server"};
    for (size_t i = 0; i < 2; i++) {
        const char *v = gw_kv_get(values, n, servers[i]);
        char *a = net_authority(v, 1);
        if (!a) {
            snprintf(text, textlen, "%s: expected host or host:port, got '%s'", servers[i],
                     v ? v : "");
            return "not-acceptable";
        }
        free(a);
    }
    const char *pw = gw_kv_get(values, n, "password");
    if (!pw || !*pw) {
        snprintf(text, textlen, "The mailbox password is required");
        return "not-acceptable";
    }
    const char *tls = gw_kv_get(values, n, "tls");
    if (tls && *tls && !str_eq(tls, "starttls") && !str_eq(tls, "implicit") &&
        !str_eq(tls, "none")) {
        snprintf(text, textlen, "tls: expected starttls, implicit or none");
        return "not-acceptable";
    }
    if (str_eq(tls, "none") && !gcfg()->mail_allow_plaintext) {
        snprintf(text, textlen, "This gateway requires TLS to your mail servers");
        return "not-acceptable";
    }
    return NULL;
}

static void drv_login(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    poll_user(u->jid); /* XEP-0100 §4.4: check for mail at once */
}

static void drv_logout(struct gw *gw, struct gw_user *u, const char *reason)
{
    (void)gw;
    /* Polling goes on while the user is offline (their server stores the messages), except
     * after unregistration. */
    if (str_eq(reason, "unregistered"))
        state_drop(u->jid);
}

static const char *drv_stanza(struct gw *gw, struct gw_user *u, const struct stanza *st,
                              const struct jid *from, const struct jid *to)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "error"))
        return NULL;
    if (strcmp(st->name, "presence") == 0) {
        if (to->local && str_eq(type, "subscribe")) {
            /* An email contact in the roster: accepted, it has no presence to share. */
            char *bare_to = jid_bare_string(to), *bare_from = jid_bare_string(from);
            gw_send(gw, gw_stanza("presence", bare_to, bare_from, "subscribed", NULL));
            free(bare_to);
            free(bare_from);
        } else if (to->local && str_eq(type, "unsubscribe")) {
            char *bare_to = jid_bare_string(to), *bare_from = jid_bare_string(from);
            gw_send(gw, gw_stanza("presence", bare_to, bare_from, "unsubscribed", NULL));
            free(bare_to);
            free(bare_from);
        }
        return NULL;
    }
    if (strcmp(st->name, "iq") == 0)
        return str_eq(type, "result") ? NULL : "service-unavailable";
    if (strcmp(st->name, "message") != 0)
        return NULL;
    if (!to->local) {
        struct stanza *b = stanza_child(st, "body", NULL);
        return b ? "service-unavailable" : NULL;
    }
    if (str_eq(type, "groupchat"))
        return "bad-request";
    if (!u->registered)
        return "registration-required";
    return outbound(u, st, from, to);
}

static char *drv_prompt_to_node(struct gw *gw, const char *prompt)
{
    (void)gw;
    if (!mime_addr_valid(prompt))
        return NULL;
    return jid_escape_local(prompt);
}

static char *drv_user_info(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    if (!u->registered)
        return NULL;
    struct mail_state *s = state_get(u->jid);
    char *identity = identity_of(u);
    uint32_t validity = 0, last = 0;
    bool have = state_read(u, identity, &validity, &last);
    char *r =
        xasprintf("mailbox %s, %s, last UID %lu, %u received, %u sent%s%s", identity,
                  have ? "polling" : "not connected yet", (unsigned long)last, s->received, s->sent,
                  s->last_error ? ", error: " : "", s->last_error ? s->last_error : "");
    free(identity);
    return r;
}

void mail_fill_driver(struct gw_driver *d)
{
    d->init = drv_init;
    d->fini = drv_fini;
    d->online = drv_online;
    d->validate = drv_validate;
    d->login = drv_login;
    d->logout = drv_logout;
    d->stanza = drv_stanza;
    d->prompt_to_node = drv_prompt_to_node;
    d->user_info = drv_user_info;
}
