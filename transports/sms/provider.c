/* provider.c — sending SMS through a provider's HTTP API with libcurl's multi socket API on the
 * gateway's event loop (CURLMOPT_SOCKETFUNCTION → ev_io_*, CURLMOPT_TIMERFUNCTION → one
 * ev_timer; libcurl is never re-entered from its own callbacks: a 0 ms timeout becomes a timer
 * that fires on the next loop iteration).
 *
 * Backends:
 *  - Kannel: GET sendsms?username&password&from&to&text&charset=UTF-8[&coding=2]&dlr-mask=31
 *    &dlr-url&max-messages — one request per message, Kannel splits it into a concatenated SMS
 *    (UDH) of at most max-messages parts. 202/200 "0: Accepted for delivery" / "3: Queued".
 *  - Twilio-style: POST To/From/Body/StatusCallback (form) with HTTP basic auth (account SID,
 *    auth token) to the Messages resource; 201 on success. Bodies over 1600 characters (the
 *    API's limit) go as several messages.
 * A transfer failure, 5xx or 429 is transient (retried with doubling delays); other answers are
 * final. Every transfer has a connect and a total timeout. */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "isthmus/ev.h"
#include "isthmus/log.h"
#include "isthmus/util.h"

#include "sms.h"

#define RESP_MAX 16384
#define TWILIO_MAX_CHARS 1600

struct sms_job;

struct sms_provider {
    struct ev_loop *loop;
    CURLM *multi;
    struct ev_timer *timer;
    char *kind, *url, *username, *password, *public_url, *secret;
    unsigned max_parts, timeout_ms, retries, retry_ms;
    struct sms_job **jobs;
    size_t n_jobs;
};

/* One provider request (one message, or one piece of a split Twilio message); pieces of one
 * send share a group. */
struct sms_group {
    sms_send_fn done;
    void *ud;
    unsigned left;       /* pieces not finished */
    enum sms_result worst;
    char *text;          /* the first failure's text */
};

struct sms_job {
    struct sms_provider *p;
    struct sms_group *g;
    char *url;
    char *post;          /* form body (Twilio) or NULL (GET) */
    unsigned attempt;
    CURL *easy;
    struct buf resp;
    char err[CURL_ERROR_SIZE];
    struct ev_timer *retry;
};

static void job_start(struct sms_job *j);

static void jobs_remove(struct sms_provider *p, struct sms_job *j)
{
    for (size_t i = 0; i < p->n_jobs; i++) {
        if (p->jobs[i] == j) {
            p->jobs[i] = p->jobs[--p->n_jobs];
            return;
        }
    }
}

static void group_piece_done(struct sms_group *g, enum sms_result r, const char *text)
{
    if (r != SMS_OK && g->worst == SMS_OK) {
        g->worst = r;
        g->text = xstrdup(text);
    }
    if (--g->left)
        return;
    if (g->done)
        g->done(g->ud, g->worst, g->worst == SMS_OK ? text : g->text);
    free(g->text);
    free(g);
}

static void job_free(struct sms_job *j)
{
    if (j->easy) {
        curl_multi_remove_handle(j->p->multi, j->easy);
        curl_easy_cleanup(j->easy);
    }
    if (j->retry)
        ev_timer_cancel(j->p->loop, j->retry);
    buf_fini(&j->resp);
    free(j->url);
    free(j->post);
    free(j);
}

static void job_finish(struct sms_job *j, enum sms_result r, const char *text)
{
    struct sms_provider *p = j->p;
    jobs_remove(p, j);
    struct sms_group *g = j->g;
    job_free(j);
    group_piece_done(g, r, text);
}

static void on_retry(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct sms_job *j = ud;
    j->retry = NULL;
    job_start(j);
}

/* A short, one-line excerpt of a provider's answer for messages. */
static char *answer_excerpt(const struct buf *b)
{
    size_t n = b->len > 200 ? 200 : b->len;
    char *s = xstrndup(b->data ? b->data : "", n);
    for (char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7F)
            *c = ' ';
    return s;
}

static void job_done(struct sms_job *j, CURLcode cc)
{
    struct sms_provider *p = j->p;
    long status = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(p->multi, j->easy);
    curl_easy_cleanup(j->easy);
    j->easy = NULL;
    char *answer = answer_excerpt(&j->resp);
    char text[400];
    enum sms_result r;
    if (cc != CURLE_OK) {
        snprintf(text, sizeof text, "%s", j->err[0] ? j->err : curl_easy_strerror(cc));
        r = SMS_FAILED;
    } else if (status >= 200 && status < 300) {
        snprintf(text, sizeof text, "%s", answer);
        r = SMS_OK;
    } else if (status >= 500 || status == 429 || status == 408) {
        snprintf(text, sizeof text, "HTTP %ld: %s", status, answer);
        r = SMS_FAILED;
    } else {
        snprintf(text, sizeof text, "HTTP %ld: %s", status, answer);
        r = SMS_REJECTED;
    }
    free(answer);
    if (r == SMS_FAILED && j->attempt <= p->retries) {
        uint64_t delay = (uint64_t)p->retry_ms << (j->attempt - 1);
        log_warn("sms", "provider request failed (%s); retry %u in %llu ms", text, j->attempt,
                 (unsigned long long)delay);
        buf_reset(&j->resp);
        j->retry = ev_timer_add(p->loop, delay, on_retry, j);
        return;
    }
    if (r != SMS_OK)
        log_warn("sms", "provider request failed for good: %s", text);
    job_finish(j, r, text);
}

static void check_done(struct sms_provider *p)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(p->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct sms_job *j = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        if (j)
            job_done(j, m->data.result);
    }
}

static void on_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct sms_provider *p = ud;
    p->timer = NULL;
    int running;
    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(p);
}

static void on_io(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    struct sms_provider *p = ud;
    int flags = 0, running;
    if (events & EV_READ)
        flags |= CURL_CSELECT_IN;
    if (events & EV_WRITE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(p->multi, fd, flags, &running);
    check_done(p);
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *clientp, void *socketp)
{
    (void)e;
    struct sms_provider *p = clientp;
    if (what == CURL_POLL_REMOVE) {
        if (socketp)
            ev_io_del(p->loop, s);
        curl_multi_assign(p->multi, s, NULL);
        return 0;
    }
    unsigned mask = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!socketp) {
        if (ev_io_add(p->loop, s, mask, on_io, p) < 0)
            return -1;
        curl_multi_assign(p->multi, s, p);
    } else {
        ev_io_mod(p->loop, s, mask);
    }
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer; even 0 ms goes through the loop, never a direct call. */
static int on_timer_set(CURLM *m, long timeout_ms, void *clientp)
{
    (void)m;
    struct sms_provider *p = clientp;
    if (p->timer)
        ev_timer_cancel(p->loop, p->timer);
    p->timer = NULL;
    if (timeout_ms >= 0)
        p->timer = ev_timer_add(p->loop, (uint64_t)timeout_ms, on_timeout, p);
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct sms_job *j = ud;
    size_t n = size * nmemb;
    if (j->resp.len + n > RESP_MAX)
        return 0; /* aborts: no provider answers that much */
    buf_append(&j->resp, data, n);
    return n;
}

static void job_start(struct sms_job *j)
{
    struct sms_provider *p = j->p;
    j->attempt++;
    j->err[0] = '\0';
    CURL *e = curl_easy_init();
    if (!e) {
        job_finish(j, SMS_FAILED, "cannot create a transfer");
        return;
    }
    j->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, j->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)j);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(p->timeout_ms / 2));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->err);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "isthmus-sms");
    if (j->post) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->post);
        if (p->username)
            curl_easy_setopt(e, CURLOPT_USERNAME, p->username);
        if (p->password)
            curl_easy_setopt(e, CURLOPT_PASSWORD, p->password);
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    }
    if (curl_multi_add_handle(p->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        j->easy = NULL;
        job_finish(j, SMS_FAILED, "cannot start a transfer");
    }
}

static void job_add(struct sms_provider *p, struct sms_group *g, char *url, char *post)
{
    struct sms_job *j = xcalloc(1, sizeof *j);
    j->p = p;
    j->g = g;
    j->url = url;
    j->post = post;
    buf_init(&j->resp);
    p->jobs = xrealloc(p->jobs, (p->n_jobs + 1) * sizeof *p->jobs);
    p->jobs[p->n_jobs++] = j;
    job_start(j);
}

static void param(struct buf *b, const char *key, const char *value)
{
    char *v = sms_url_escape(value);
    buf_printf(b, "%s%s=%s", b->len && b->data[b->len - 1] != '?' ? "&" : "", key, v);
    free(v);
}

/* Our listener's URL for a report: public_url + path + ?secret=..&ref=.. [+ extra, verbatim]. */
static char *report_url(struct sms_provider *p, const char *path, const char *ref,
                        const char *extra)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s%s?", p->public_url, path);
    if (p->secret)
        param(&b, "secret", p->secret);
    param(&b, "ref", ref);
    if (extra)
        buf_puts(&b, extra);
    return buf_take(&b);
}

unsigned sms_provider_send(struct sms_provider *p, const char *from, const char *to,
                           const char *text, const char *ref, sms_send_fn done, void *ud,
                           const char **why)
{
    *why = NULL;
    if (strcmp(p->kind, "kannel") == 0) {
        bool gsm = sms_is_gsm7(text);
        unsigned parts = sms_parts(text);
        if (parts > p->max_parts) {
            *why = "The message is too long for one SMS (too many parts)";
            return 0;
        }
        struct buf b;
        buf_init(&b);
        buf_puts(&b, p->url);
        buf_putc(&b, strchr(p->url, '?') ? '&' : '?');
        if (p->username)
            param(&b, "username", p->username);
        if (p->password)
            param(&b, "password", p->password);
        if (from)
            param(&b, "from", from);
        param(&b, "to", to);
        param(&b, "text", text);
        param(&b, "charset", "UTF-8");
        param(&b, "coding", gsm ? "0" : "2");
        char mp[16];
        snprintf(mp, sizeof mp, "%u", p->max_parts);
        param(&b, "max-messages", mp);
        if (ref && p->public_url) {
            /* %d: the report type (1 delivered, 2 failed, 4 buffered, 8 SMSC accepted, 16 SMSC
             * rejected); Kannel fills it in. */
            char *dlr = report_url(p, "/kannel/dlr", ref, "&type=%d");
            param(&b, "dlr-mask", "31");
            param(&b, "dlr-url", dlr);
            free(dlr);
        }
        struct sms_group *g = xcalloc(1, sizeof *g);
        g->done = done;
        g->ud = ud;
        g->left = 1;
        job_add(p, g, buf_take(&b), NULL);
        return 1;
    }
    /* Twilio-style */
    char **pieces;
    size_t n = sms_split(text, TWILIO_MAX_CHARS, &pieces);
    if (n == 0 || n > p->max_parts) {
        sms_strv_free(pieces, n);
        *why = n ? "The message is too long" : "Empty message";
        return 0;
    }
    struct sms_group *g = xcalloc(1, sizeof *g);
    g->done = done;
    g->ud = ud;
    g->left = (unsigned)n;
    for (size_t i = 0; i < n; i++) {
        struct buf b;
        buf_init(&b);
        param(&b, "To", to);
        if (from)
            param(&b, "From", from);
        param(&b, "Body", pieces[i]);
        if (ref && p->public_url) {
            char *cb = report_url(p, "/twilio/status", ref, NULL);
            param(&b, "StatusCallback", cb);
            free(cb);
        }
        job_add(p, g, xstrdup(p->url), buf_take(&b));
    }
    sms_strv_free(pieces, n);
    return (unsigned)n;
}

void sms_provider_cancel(struct sms_provider *p, void *ud)
{
    for (size_t i = 0; i < p->n_jobs; i++)
        if (p->jobs[i]->g->ud == ud)
            p->jobs[i]->g->done = NULL;
}

struct sms_provider *sms_provider_new(struct ev_loop *loop, const struct sms_provider_opts *o)
{
    struct sms_provider *p = xcalloc(1, sizeof *p);
    p->loop = loop;
    p->kind = xstrdup(o->kind ? o->kind : "kannel");
    p->url = xstrdup(o->url ? o->url : "");
    p->username = xstrdup(o->username);
    p->password = xstrdup(o->password);
    p->public_url = xstrdup(o->public_url);
    if (p->public_url) {
        size_t l = strlen(p->public_url);
        while (l && p->public_url[l - 1] == '/')
            p->public_url[--l] = '\0';
    }
    p->secret = xstrdup(o->secret);
    p->max_parts = o->max_parts ? o->max_parts : 6;
    p->timeout_ms = o->timeout_ms ? o->timeout_ms : 20000;
    p->retries = o->retries;
    p->retry_ms = o->retry_ms ? o->retry_ms : 2000;
    p->multi = curl_multi_init();
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    return p;
}

void sms_provider_free(struct sms_provider *p)
{
    if (!p)
        return;
    while (p->n_jobs) {
        struct sms_job *j = p->jobs[--p->n_jobs];
        struct sms_group *g = j->g;
        job_free(j);
        g->done = NULL;
        group_piece_done(g, SMS_FAILED, "shutting down");
    }
    free(p->jobs);
    curl_multi_cleanup(p->multi);
    if (p->timer)
        ev_timer_cancel(p->loop, p->timer);
    free(p->kind);
    free(p->url);
    free(p->username);
    free(p->password);
    free(p->public_url);
    free(p->secret);
    free(p);
}
