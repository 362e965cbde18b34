/* worker.c — threads for blocking transfers. libcurl's SMTP and IMAP done phase blocks
 * (smtp_done/imap_done poll until the final reply; research/libraries.md §3), so transfers never
 * run on the event loop: each worker runs one job's curl_easy_perform()s at a time, so a slow mail
 * server holds up only its own worker. Jobs with the same key (a user's JID) run one at a time, in
 * submission order; finished jobs go back to the loop thread through an eventfd watched with
 * ev_io_add, where their done callback runs (the only place gw/store are touched). */
#include "mail.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

struct worker_pool {
    struct ev_loop *loop;
    int efd;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct worker_job *queue, *queue_tail; /* waiting, in submission order */
    struct worker_job *done, *done_tail;   /* finished, for the loop */
    char **running;                        /* keys of running jobs, n_threads slots */
    pthread_t *threads;
    unsigned n_threads;
    bool stop;
};

static atomic_bool stopping;

bool worker_stopping(void)
{
    return atomic_load(&stopping);
}

static bool key_running(struct worker_pool *p, const char *key)
{
    for (unsigned i = 0; i < p->n_threads; i++)
        if (p->running[i] && strcmp(p->running[i], key) == 0)
            return true;
    return false;
}

/* The first queued job whose key is not running, unlinked; NULL when none. Caller holds mu. */
static struct worker_job *take_job(struct worker_pool *p)
{
    struct worker_job *prev = NULL;
    for (struct worker_job *j = p->queue; j; prev = j, j = j->next) {
        if (key_running(p, j->key))
            continue;
        /* An earlier job of the same key still queued keeps the order: it would be found first. */
        if (prev)
            prev->next = j->next;
        else
            p->queue = j->next;
        if (p->queue_tail == j)
            p->queue_tail = prev;
        j->next = NULL;
        return j;
    }
    return NULL;
}

struct worker_arg {
    struct worker_pool *p;
    unsigned slot;
};

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct worker_pool *p = wa->p;
    unsigned slot = wa->slot;
    free(wa);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct worker_job *j = NULL;
        while (!p->stop && !(j = take_job(p)))
            pthread_cond_wait(&p->cond, &p->mu);
        if (!j)
            break;
        p->running[slot] = j->key;
        pthread_mutex_unlock(&p->mu);
        j->run(j);
        pthread_mutex_lock(&p->mu);
        p->running[slot] = NULL;
        if (p->done_tail)
            p->done_tail->next = j;
        else
            p->done = j;
        p->done_tail = j;
        uint64_t one = 1;
        ssize_t w = write(p->efd, &one, sizeof one);
        (void)w; /* the counter cannot overflow in practice; a failed write leaves it signalled */
        pthread_cond_broadcast(&p->cond); /* a job of the same key may be runnable now */
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void finish(struct worker_job *j, bool cancelled)
{
    char *key = j->key;
    j->done(j, cancelled);
    free(key);
}

static void on_event(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    struct worker_pool *p = ud;
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
        log_warn("mail", "eventfd read: %s", strerror(errno));
    pthread_mutex_lock(&p->mu);
    struct worker_job *list = p->done;
    p->done = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        struct worker_job *next = list->next;
        finish(list, false);
        list = next;
    }
}

struct worker_pool *worker_pool_new(struct ev_loop *loop, unsigned n_threads)
{
    struct worker_pool *p = xcalloc(1, sizeof *p);
    p->loop = loop;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        log_error("mail", "eventfd: %s", strerror(errno));
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->n_threads = n_threads ? n_threads : 1;
    p->running = xcalloc(p->n_threads, sizeof *p->running);
    p->threads = xcalloc(p->n_threads, sizeof *p->threads);
    atomic_store(&stopping, false);
    if (ev_io_add(loop, p->efd, EV_READ, on_event, p) < 0) {
        log_error("mail", "ev_io_add: %s", strerror(errno));
        close(p->efd);
        free(p->running);
        free(p->threads);
        free(p);
        return NULL;
    }
    for (unsigned i = 0; i < p->n_threads; i++) {
        struct worker_arg *wa = xcalloc(1, sizeof *wa);
        wa->p = p;
        wa->slot = i;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
        if (rc != 0) {
            log_error("mail", "pthread_create: %s", strerror(rc));
            free(wa);
            p->n_threads = i; /* the ones started run; none if this was the first */
            if (i == 0) {
                ev_io_del(loop, p->efd);
                close(p->efd);
                free(p->running);
                free(p->threads);
                free(p);
                return NULL;
            }
            break;
        }
    }
    return p;
}

void worker_submit(struct worker_pool *p, struct worker_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->queue_tail)
        p->queue_tail->next = job;
    else
        p->queue = job;
    p->queue_tail = job;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

bool worker_busy(struct worker_pool *p, const char *key)
{
    bool busy = false;
    pthread_mutex_lock(&p->mu);
    busy = key_running(p, key);
    for (struct worker_job *j = p->queue; j && !busy; j = j->next)
        busy = strcmp(j->key, key) == 0;
    /* Finished but not yet handed to the loop counts too: its done has not run. */
    for (struct worker_job *j = p->done; j && !busy; j = j->next)
        busy = strcmp(j->key, key) == 0;
    pthread_mutex_unlock(&p->mu);
    return busy;
}

void worker_pool_free(struct worker_pool *p)
{
    if (!p)
        return;
    atomic_store(&stopping, true);
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    ev_io_del(p->loop, p->efd);
    close(p->efd);
    /* Finished ones report normally, the never-run ones as cancelled. */
    while (p->done) {
        struct worker_job *j = p->done;
        p->done = j->next;
        finish(j, false);
    }
    while (p->queue) {
        struct worker_job *j = p->queue;
        p->queue = j->next;
        finish(j, true);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
    free(p->running);
    free(p->threads);
    free(p);
}
