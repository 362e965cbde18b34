/* test_mail_worker.c — the email gateway's transfer threads (transports/mail/worker.c): a slow
 * job holds up only its own key, jobs of one key run one at a time in order, done callbacks run on
 * the loop thread, and shutdown reports never-run jobs as cancelled. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "isthmus/ev.h"
#include "isthmus/util.h"
#include "mail.h"
#include "test.h"

struct rec {
    struct worker_job job;
    const char *name;
    unsigned sleep_ms;
    uint64_t start, end; /* set on the worker */
    bool done_on_loop, cancelled;
};

static pthread_t loop_thread;
static struct ev_loop *loop;
static unsigned n_done, want_done;
static struct rec *order[16];

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void rec_run(struct worker_job *job)
{
    struct rec *r = (struct rec *)job;
    __atomic_store_n(&r->start, mono_ms(), __ATOMIC_RELEASE);
    usleep(r->sleep_ms * 1000);
    r->end = mono_ms();
}

static void rec_done(struct worker_job *job, bool cancelled)
{
    struct rec *r = (struct rec *)job;
    r->done_on_loop = pthread_equal(pthread_self(), loop_thread);
    r->cancelled = cancelled;
    if (n_done < 16)
        order[n_done] = r;
    if (++n_done == want_done && loop)
        ev_stop(loop);
}

static struct rec *rec_new(const char *key, const char *name, unsigned ms)
{
    struct rec *r = xcalloc(1, sizeof *r);
    r->job.key = xstrdup(key);
    r->job.run = rec_run;
    r->job.done = rec_done;
    r->name = name;
    r->sleep_ms = ms;
    return r;
}

static void on_timeout(struct ev_loop *l, void *ud)
{
    (void)ud;
    ev_stop(l); /* a safety net: the checks below then fail */
}

static void test_keys(void)
{
    loop_thread = pthread_self();
    loop = ev_loop_new();
    struct worker_pool *p = worker_pool_new(loop, 2);
    CHECK(p != NULL);
    if (!p)
        return;
    n_done = 0;
    want_done = 3;
    struct rec *a1 = rec_new("alice", "a1", 400), *a2 = rec_new("alice", "a2", 10);
    struct rec *b1 = rec_new("bob", "b1", 10);
    worker_submit(p, &a1->job);
    worker_submit(p, &a2->job);
    worker_submit(p, &b1->job);
    CHECK(worker_busy(p, "alice"));
    CHECK(!worker_busy(p, "carol"));
    struct ev_timer *t = ev_timer_add(loop, 10000, on_timeout, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    CHECK(n_done == 3);
    /* bob's job did not wait for alice's slow one, though alice had another job queued first. */
    CHECK(b1->end <= a1->end);
    /* alice's jobs ran one after the other, in order. */
    CHECK(a2->start >= a1->end);
    CHECK(a1->done_on_loop && a2->done_on_loop && b1->done_on_loop);
    CHECK(!a1->cancelled && !b1->cancelled);
    CHECK(!worker_busy(p, "alice"));
    worker_pool_free(p);
    free(a1);
    free(a2);
    free(b1);
    ev_loop_free(loop);
    loop = NULL;
}

static void test_shutdown_cancels(void)
{
    loop_thread = pthread_self();
    loop = ev_loop_new();
    struct worker_pool *p = worker_pool_new(loop, 1);
    CHECK(p != NULL);
    if (!p)
        return;
    n_done = 0;
    want_done = 100; /* never stops the loop: the pool is freed without running it */
    struct rec *r1 = rec_new("k", "r1", 200), *r2 = rec_new("k", "r2", 10);
    worker_submit(p, &r1->job);
    worker_submit(p, &r2->job);
    while (__atomic_load_n(&r1->start, __ATOMIC_ACQUIRE) == 0) /* r1 runs; r2 waits (same key) */
        usleep(1000);
    worker_pool_free(p);
    CHECK(n_done == 2);
    CHECK(!r1->cancelled && r1->end != 0);
    CHECK(r2->cancelled && r2->start == 0);
    free(r1);
    free(r2);
    ev_loop_free(loop);
    loop = NULL;
}

int main(void)
{
    TEST_RUN(test_keys);
    TEST_RUN(test_shutdown_cancels);
    return TEST_DONE();
}
