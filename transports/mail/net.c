/* net.c — the blocking transfers run on worker threads (worker.c): SMTP submission (RFC 5321,
 * STARTTLS per RFC 3207 or implicit TLS per RFC 8314) and the IMAP poll (RFC 3501: STATUS, UID
 * SEARCH, UID FETCH) with libcurl easy handles. Nothing here touches gw, the store or GMime. */
#include "mail.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"

#define NET_CONNECT_TIMEOUT 20L
#define NET_RESPONSE_TIMEOUT 60L
#define NET_LOW_SPEED_TIME 60L
#define NET_MAX_RESPONSE (1024 * 1024) /* STATUS / SEARCH output */
#define NET_MAX_UIDS 10000             /* new UIDs looked at per poll */

void mail_account_free(struct mail_account *a)
{
    if (!a)
        return;
    free(a->imap_server);
    free(a->smtp_server);
    free(a->username);
    if (a->password) {
        memset(a->password, 0, strlen(a->password));
        free(a->password);
    }
    free(a->ca_file);
    free(a->ehlo);
    free(a);
}

enum mail_tls mail_tls_parse(const char *s)
{
    if (str_eq(s, "implicit"))
        return MAIL_TLS_IMPLICIT;
    if (str_eq(s, "none"))
        return MAIL_TLS_NONE;
    return MAIL_TLS_STARTTLS;
}

char *net_authority(const char *server, unsigned default_port)
{
    if (!server || !*server || strlen(server) > 255)
        return NULL;
    const char *host = server, *port = NULL;
    size_t hl;
    bool v6 = false;
    if (server[0] == '[') {
        const char *e = strchr(server, ']');
        if (!e)
            return NULL;
        host = server + 1;
        hl = (size_t)(e - host);
        if (e[1] == ':')
            port = e + 2;
        else if (e[1])
            return NULL;
        v6 = true;
        for (size_t i = 0; i < hl; i++)
            if (!isxdigit((unsigned char)host[i]) && host[i] != ':' && host[i] != '.')
                return NULL;
    } else {
        const char *c = strchr(server, ':');
        hl = c ? (size_t)(c - server) : strlen(server);
        if (c)
            port = c + 1;
        for (size_t i = 0; i < hl; i++)
            if (!isalnum((unsigned char)host[i]) && !strchr(".-_", host[i]))
                return NULL;
    }
    if (hl == 0)
        return NULL;
    unsigned long p = default_port;
    if (port) {
        if (!*port || strlen(port) > 5)
            return NULL;
        for (const char *q = port; *q; q++)
            if (!isdigit((unsigned char)*q))
                return NULL;
        p = strtoul(port, NULL, 10);
        if (p == 0 || p > 65535)
            return NULL;
    }
    return v6 ? xasprintf("[%.*s]:%lu", (int)hl, host, p) : xasprintf("%.*s:%lu", (int)hl, host, p);
}

/* ---- common easy-handle setup ---- */

struct sink {
    struct buf b;
    size_t max;
    bool overflow;
};

static size_t sink_write(char *data, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;
    size_t len = size * n;
    if (s->b.len + len > s->max) {
        s->overflow = true;
        return 0; /* CURLE_WRITE_ERROR */
    }
    buf_append(&s->b, data, len);
    return len;
}

static int progress(void *ud, curl_off_t dlt, curl_off_t dln, curl_off_t ult, curl_off_t uln)
{
    (void)ud, (void)dlt, (void)dln, (void)ult, (void)uln;
    return worker_stopping() ? 1 : 0; /* shutting down: abort (CURLE_ABORTED_BY_CALLBACK) */
}

static CURL *easy_new(const struct mail_account *a, char *errbuf)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    errbuf[0] = '\0';
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, NET_CONNECT_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_SERVER_RESPONSE_TIMEOUT, NET_RESPONSE_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, NET_LOW_SPEED_TIME);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress);
    curl_easy_setopt(c, CURLOPT_USE_SSL,
                     a->tls == MAIL_TLS_STARTTLS ? (long)CURLUSESSL_ALL : (long)CURLUSESSL_NONE);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (a->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
    if (a->username && *a->username)
        curl_easy_setopt(c, CURLOPT_USERNAME, a->username);
    if (a->password && *a->password)
        curl_easy_setopt(c, CURLOPT_PASSWORD, a->password);
    return c;
}

static void set_err(char *err, size_t errlen, CURLcode rc, const char *errbuf, const char *what)
{
    snprintf(err, errlen, "%s: %s", what, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    /* curl's texts end in a newline sometimes */
    size_t n = strlen(err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == '\r'))
        err[--n] = '\0';
}

/* ---- SMTP ---- */

struct reader {
    const char *data;
    size_t len, off;
};

static size_t read_cb(char *out, size_t size, size_t n, void *ud)
{
    struct reader *r = ud;
    size_t want = size * n, left = r->len - r->off;
    if (want > left)
        want = left;
    memcpy(out, r->data + r->off, want);
    r->off += want;
    return want;
}

int net_smtp_send(const struct mail_account *a, const char *from, const char *rcpt, const char *msg,
                  size_t len, int *curl_code, char *err, size_t errlen)
{
    char errbuf[CURL_ERROR_SIZE];
    *curl_code = 0;
    unsigned def = a->tls == MAIL_TLS_IMPLICIT ? 465 : a->tls == MAIL_TLS_NONE ? 25 : 587;
    char *auth = net_authority(a->smtp_server, def);
    if (!auth) {
        snprintf(err, errlen, "bad SMTP server '%s'", a->smtp_server ? a->smtp_server : "");
        *curl_code = CURLE_URL_MALFORMAT;
        return -1;
    }
    CURL *c = easy_new(a, errbuf);
    if (!c) {
        free(auth);
        snprintf(err, errlen, "curl_easy_init failed");
        *curl_code = CURLE_OUT_OF_MEMORY;
        return -1;
    }
    /* The URL path is the EHLO name (RFC 5321 §4.1.1.1). */
    char *url = xasprintf("%s://%s/%s", a->tls == MAIL_TLS_IMPLICIT ? "smtps" : "smtp", auth,
                          a->ehlo ? a->ehlo : "localhost");
    char *mfrom = xasprintf("<%s>", from);
    char *mrcpt = xasprintf("<%s>", rcpt);
    struct curl_slist *rcpts = curl_slist_append(NULL, mrcpt);
    struct reader r = {msg, len, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, mfrom);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(c, CURLOPT_READDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
    CURLcode rc = curl_easy_perform(c);
    *curl_code = (int)rc;
    if (rc != CURLE_OK)
        set_err(err, errlen, rc, errbuf, "SMTP");
    curl_slist_free_all(rcpts);
    curl_easy_cleanup(c);
    free(url);
    free(mfrom);
    free(mrcpt);
    free(auth);
    return rc == CURLE_OK ? 0 : -1;
}

/* ---- IMAP ---- */

static bool parse_uint_after(const char *text, const char *word, uint32_t *out)
{
    const char *p = text;
    size_t wl = strlen(word);
    while ((p = strstr(p, word)) != NULL) {
        bool start = p == text || p[-1] == ' ' || p[-1] == '(';
        p += wl;
        if (!start || *p != ' ')
            continue;
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        unsigned long long v = 0;
        while (isdigit((unsigned char)*p) && v <= 0xffffffffULL)
            v = v * 10 + (unsigned)(*p++ - '0');
        if (v > 0xffffffffULL)
            return false;
        *out = (uint32_t)v;
        return true;
    }
    return false;
}

int net_parse_status(const char *text, uint32_t *uidvalidity, uint32_t *uidnext)
{
    const char *st = strstr(text, "* STATUS ");
    if (!st)
        return -1;
    if (!parse_uint_after(st, "UIDVALIDITY", uidvalidity) ||
        !parse_uint_after(st, "UIDNEXT", uidnext))
        return -1;
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

size_t net_parse_search(const char *text, uint32_t min, uint32_t *out, size_t max)
{
    size_t n = 0;
    const char *p = text;
    while ((p = strstr(p, "* SEARCH")) != NULL) {
        p += 8;
        while (*p && *p != '\r' && *p != '\n') {
            while (*p == ' ')
                p++;
            if (!isdigit((unsigned char)*p)) {
                while (*p && *p != ' ' && *p != '\r' && *p != '\n')
                    p++;
                continue;
            }
            unsigned long long v = 0;
            while (isdigit((unsigned char)*p)) {
                if (v <= 0xffffffffULL)
                    v = v * 10 + (unsigned)(*p - '0');
                p++;
            }
            if (v > min && v <= 0xffffffffULL && n < max)
                out[n++] = (uint32_t)v;
        }
    }
    qsort(out, n, sizeof *out, cmp_u32);
    size_t k = 0; /* drop duplicates */
    for (size_t i = 0; i < n; i++)
        if (k == 0 || out[k - 1] != out[i])
            out[k++] = out[i];
    return k;
}

static CURLcode imap_run(CURL *c, const char *url, const char *custom, struct sink *s)
{
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, custom);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    return curl_easy_perform(c);
}

int net_imap_poll(const struct mail_account *a, struct net_poll *p)
{
    char errbuf[CURL_ERROR_SIZE];
    p->err[0] = '\0';
    unsigned def = a->tls == MAIL_TLS_IMPLICIT ? 993 : 143;
    char *auth = net_authority(a->imap_server, def);
    if (!auth) {
        snprintf(p->err, sizeof p->err, "bad IMAP server '%s'",
                 a->imap_server ? a->imap_server : "");
        p->curl_code = CURLE_URL_MALFORMAT;
        return -1;
    }
    CURL *c = easy_new(a, errbuf);
    if (!c) {
        free(auth);
        snprintf(p->err, sizeof p->err, "curl_easy_init failed");
        p->curl_code = CURLE_OUT_OF_MEMORY;
        return -1;
    }
    const char *scheme = a->tls == MAIL_TLS_IMPLICIT ? "imaps" : "imap";
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "imap,imaps");
    int ret = -1;
    struct sink s = {.max = NET_MAX_RESPONSE};
    buf_init(&s.b);
    char *url = xasprintf("%s://%s/", scheme, auth);
    CURLcode rc = imap_run(c, url, "STATUS INBOX (UIDVALIDITY UIDNEXT)", &s);
    free(url);
    if (rc != CURLE_OK) {
        set_err(p->err, sizeof p->err, rc, errbuf, "IMAP STATUS");
        goto out;
    }
    buf_putc(&s.b, '\0');
    if (net_parse_status(s.b.data, &p->uidvalidity, &p->uidnext) < 0) {
        snprintf(p->err, sizeof p->err, "IMAP STATUS: no UIDVALIDITY/UIDNEXT in the answer");
        rc = CURLE_WEIRD_SERVER_REPLY;
        goto out;
    }
    if (p->baseline || p->uidnext <= p->last_uid + 1) {
        ret = 0; /* a baseline only, or nothing new: UIDNEXT (RFC 3501 §2.3.1.1) says so */
        goto out;
    }
    buf_reset(&s.b);
    char search[64];
    snprintf(search, sizeof search, "UID SEARCH UID %lu:*", (unsigned long)p->last_uid + 1);
    url = xasprintf("%s://%s/INBOX", scheme, auth);
    rc = imap_run(c, url, search, &s);
    free(url);
    if (rc != CURLE_OK) {
        set_err(p->err, sizeof p->err, rc, errbuf, "IMAP SEARCH");
        goto out;
    }
    buf_putc(&s.b, '\0');
    p->uids = xcalloc(NET_MAX_UIDS, sizeof *p->uids);
    p->n_uids = net_parse_search(s.b.data, p->last_uid, p->uids, NET_MAX_UIDS);
    size_t batch = p->n_uids < p->max_batch ? p->n_uids : p->max_batch;
    p->mails = xcalloc(batch ? batch : 1, sizeof *p->mails);
    size_t total = 0;
    for (size_t i = 0; i < batch && !worker_stopping(); i++) {
        struct sink m = {.max = p->max_size};
        buf_init(&m.b);
        /* RFC 5092 IMAP URL: ;UID= fetches BODY[] (which sets \Seen). */
        url = xasprintf("%s://%s/INBOX/;UID=%lu", scheme, auth, (unsigned long)p->uids[i]);
        rc = imap_run(c, url, NULL, &m);
        free(url);
        struct net_fetched *f = &p->mails[p->n_mails];
        f->uid = p->uids[i];
        if (rc == CURLE_WRITE_ERROR && m.overflow) {
            f->size = m.b.len;
            buf_fini(&m.b);
            p->n_mails++;
            continue;
        }
        if (rc != CURLE_OK) {
            buf_fini(&m.b);
            set_err(p->err, sizeof p->err, rc, errbuf, "IMAP FETCH");
            break; /* the ones fetched so far are delivered; the rest next time */
        }
        f->size = m.b.len;
        f->data = buf_take(&m.b);
        p->n_mails++;
        total += f->size;
        if (total > p->max_size)
            break; /* bounded memory per poll; the rest next time */
    }
    ret = p->err[0] ? -1 : 0;
    if (p->n_mails > 0)
        ret = 0; /* partial progress is progress; err stays for the log */
out:
    p->curl_code = (int)rc;
    buf_fini(&s.b);
    curl_easy_cleanup(c);
    free(auth);
    return ret;
}

void net_poll_fini(struct net_poll *p)
{
    for (size_t i = 0; i < p->n_mails; i++)
        free(p->mails[i].data);
    free(p->mails);
    free(p->uids);
    p->mails = NULL;
    p->uids = NULL;
    p->n_mails = p->n_uids = 0;
}
