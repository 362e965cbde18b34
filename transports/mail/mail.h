/* mail.h — the email gateway (isthmus-mail): XMPP messages ↔ RFC 5322 mail.
 *
 *  - mime.c: building outgoing mail and parsing incoming mail with GMime 3.0 (RFC 5322, RFC 2045–
 *    2047), HTML → plain text, the address checks. Pure functions; loop thread only (GMime is not
 *    used from the workers).
 *  - worker.c: a pool of threads running blocking transfers (libcurl's SMTP/IMAP done phase blocks,
 *    see research/libraries.md §3), at most one job per key (user) at a time, results handed back
 *    to the event loop through an eventfd.
 *  - net.c: the blocking SMTP submission and IMAP poll (UID SEARCH + UID FETCH) run on workers.
 *  - driver.c: the gw_driver callbacks, polling schedule, UID bookkeeping in the store. */
#ifndef ISTHMUS_MAIL_H
#define ISTHMUS_MAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw.h"

/* ---- mime.c ---- */

/* An outgoing mail. Strings are UTF-8; NULL means absent. */
struct mime_out {
    const char *from;      /* addr-spec */
    const char *from_name; /* display name, or NULL */
    const char *to;        /* addr-spec */
    const char *subject;
    const char *body;
    const char *message_id;  /* without <> */
    const char *in_reply_to; /* without <> */
    const char *references;  /* space-separated ids without <> */
    int64_t date;            /* seconds since the epoch */
};
/* The RFC 5322 message with CRLF line ends (malloc'd), or NULL. */
char *mime_build(const struct mime_out *m, size_t *len);

struct mime_in {
    char *from;        /* addr-spec of the first From mailbox (lower-cased domain), or NULL */
    char *from_name;   /* its display name, or NULL */
    char *subject;     /* decoded, or NULL */
    char *text;        /* the text to show: text/plain preferred, else HTML as text; never NULL */
    char *message_id;  /* without <>, or NULL */
    char *thread_root; /* the first id of References, else In-Reply-To, else message_id */
    char *references;  /* References (+ In-Reply-To when not in it): ids without <>, spaces */
    int64_t date;      /* 0 when absent */
    char *attachments; /* "a.pdf (12 KB), b.png (3 KB)" or NULL */
};
/* Parses a raw mail. Returns 0, or -1 when it is not a mail at all. Text fields are valid UTF-8
 * without control characters other than tab and LF. */
int mime_parse(const char *raw, size_t len, struct mime_in *out);
void mime_in_fini(struct mime_in *m);

/* HTML → readable text: tags dropped (script/style with their content), block elements and <br>
 * as line breaks, entities decoded, whitespace collapsed, links kept as "text <url>". malloc'd. */
char *mime_html_to_text(const char *html, size_t len);
/* Is s a plain addr-spec we are willing to send to (local@domain, printable, no spaces)? */
bool mime_addr_valid(const char *s);
/* Makes s safe for XML text: invalid UTF-8 → U+FFFD, C0 controls other than tab/LF dropped,
 * CRLF → LF. malloc'd. */
char *mime_clean_text(const char *s, size_t len);
void mime_init(void);
void mime_fini(void);

/* ---- worker.c ---- */

struct worker_pool;
struct worker_job;
/* run: on a worker thread (no gw, no store, no GMime); done: on the loop thread afterwards (also
 * when the pool shuts down before running it: then cancelled is true). */
typedef void (*worker_run_fn)(struct worker_job *job);
typedef void (*worker_done_fn)(struct worker_job *job, bool cancelled);
struct worker_job {
    char *key; /* jobs with the same key run one at a time, in submission order */
    worker_run_fn run;
    worker_done_fn done;
    void *ud;
    struct worker_job *next; /* the pool's */
};
struct worker_pool *worker_pool_new(struct ev_loop *loop, unsigned n_threads);
/* Takes the job (job->key malloc'd, freed by the pool after done). */
void worker_submit(struct worker_pool *p, struct worker_job *job);
/* Is a job with this key queued or running? */
bool worker_busy(struct worker_pool *p, const char *key);
/* Asks running transfers to stop (see worker_stopping), joins the threads, calls done(cancelled)
 * for the jobs never run, frees the pool. */
void worker_pool_free(struct worker_pool *p);
/* For a running job's transfer: has shutdown begun? */
bool worker_stopping(void);

/* ---- net.c ---- */

enum mail_tls { MAIL_TLS_STARTTLS, MAIL_TLS_IMPLICIT, MAIL_TLS_NONE };
/* What a worker needs to reach one user's servers (copies). */
struct mail_account {
    char *imap_server, *smtp_server; /* host[:port] */
    char *username, *password;
    enum mail_tls tls;
    char *ca_file; /* NULL: system store */
    char *ehlo;    /* the gateway's domain */
};
void mail_account_free(struct mail_account *a);
enum mail_tls mail_tls_parse(const char *s);

/* Sends msg (RFC 5322, CRLF) from → rcpt. 0, or -1 with a message in err and *curl_code set. */
int net_smtp_send(const struct mail_account *a, const char *from, const char *rcpt, const char *msg,
                  size_t len, int *curl_code, char *err, size_t errlen);

struct net_fetched {
    uint32_t uid;
    char *data; /* NULL when too large (size in size) */
    size_t size;
};
struct net_poll {
    /* in */
    bool baseline;     /* only STATUS: a new registration's starting point */
    uint32_t last_uid; /* deliver UIDs above this */
    size_t max_size;   /* largest mail fetched */
    size_t max_batch;  /* mails per poll */
    /* out */
    uint32_t uidvalidity, uidnext;
    uint32_t *uids; /* new UIDs found, ascending (all of them, bounded) */
    size_t n_uids;
    struct net_fetched *mails; /* the first max_batch of them fetched */
    size_t n_mails;
    int curl_code;
    char err[256];
};
/* STATUS INBOX (UIDVALIDITY UIDNEXT), then UID SEARCH UID last+1:* and UID FETCH of new mail.
 * With baseline set only the STATUS runs. 0 or -1. */
int net_imap_poll(const struct mail_account *a, struct net_poll *p);
void net_poll_fini(struct net_poll *p);
/* Parsers, exposed for unit tests: "* STATUS INBOX (UIDVALIDITY 1 UIDNEXT 5)" → values; "* SEARCH
 * 3 4 9" lines → UIDs above min, sorted, at most max. */
int net_parse_status(const char *text, uint32_t *uidvalidity, uint32_t *uidnext);
size_t net_parse_search(const char *text, uint32_t min, uint32_t *out, size_t max);
/* "host[:port]" or "[v6]:port" → URL authority with the default port when none. malloc'd or
 * NULL when malformed. */
char *net_authority(const char *server, unsigned default_port);

/* ---- driver.c ---- */
void mail_fill_driver(struct gw_driver *d);

#endif
