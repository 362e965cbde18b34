#include "isthmus/ev.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "isthmus/util.h"

struct ev_watch {
    ev_io_fn fn;
    void *ud;
    unsigned mask;
    int active;
};

struct ev_timer {
    uint64_t due;
    uint64_t seq; /* ties fire in insertion order */
    ev_fn fn;
    void *ud;
    size_t index; /* position in the heap */
};

struct ev_deferred {
    ev_fn fn;
    void *ud;
};

struct ev_loop {
    int epfd;
    int stop;
    uint64_t now;
    struct ev_watch *watches; /* indexed by fd */
    size_t nwatches;
    struct ev_timer **heap;
    size_t nheap, capheap;
    uint64_t timer_seq;
    struct ev_deferred *deferred;
    size_t ndeferred, capdeferred;
    ev_fn before_sleep;
    void *before_sleep_ud;
};

struct ev_loop *ev_loop_new(void)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return NULL;
    struct ev_loop *loop = xcalloc(1, sizeof *loop);
    loop->epfd = epfd;
    loop->now = now_ms();
    return loop;
}

void ev_loop_free(struct ev_loop *loop)
{
    if (!loop)
        return;
    close(loop->epfd);
    for (size_t i = 0; i < loop->nheap; i++)
        free(loop->heap[i]);
    free(loop->heap);
    free(loop->watches);
    free(loop->deferred);
    free(loop);
}

static uint32_t epoll_mask(unsigned mask)
{
    return (mask & EV_READ ? EPOLLIN : 0) | (mask & EV_WRITE ? EPOLLOUT : 0);
}

int ev_io_add(struct ev_loop *loop, int fd, unsigned mask, ev_io_fn fn, void *ud)
{
    if (fd < 0)
        return -1;
    if ((size_t)fd >= loop->nwatches) {
        size_t n = loop->nwatches ? loop->nwatches : 64;
        while (n <= (size_t)fd)
            n *= 2;
        loop->watches = xrealloc(loop->watches, n * sizeof *loop->watches);
        memset(loop->watches + loop->nwatches, 0, (n - loop->nwatches) * sizeof *loop->watches);
        loop->nwatches = n;
    }
    struct epoll_event e = {.events = epoll_mask(mask), .data.fd = fd};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &e) < 0)
        return -1;
    loop->watches[fd] = (struct ev_watch){fn, ud, mask, 1};
    return 0;
}

int ev_io_mod(struct ev_loop *loop, int fd, unsigned mask)
{
    if (fd < 0 || (size_t)fd >= loop->nwatches || !loop->watches[fd].active)
        return -1;
    if (loop->watches[fd].mask == mask)
        return 0;
    struct epoll_event e = {.events = epoll_mask(mask), .data.fd = fd};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &e) < 0)
        return -1;
    loop->watches[fd].mask = mask;
    return 0;
}

void ev_io_del(struct ev_loop *loop, int fd)
{
    if (fd < 0 || (size_t)fd >= loop->nwatches || !loop->watches[fd].active)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
    loop->watches[fd].active = 0;
}

/* Timer heap: a binary min-heap on (due, seq). */

static int timer_before(const struct ev_timer *a, const struct ev_timer *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(struct ev_loop *loop, size_t i, struct ev_timer *t)
{
    loop->heap[i] = t;
    t->index = i;
}

static void heap_up(struct ev_loop *loop, size_t i)
{
    struct ev_timer *t = loop->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_before(t, loop->heap[parent]))
            break;
        heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void heap_down(struct ev_loop *loop, size_t i)
{
    struct ev_timer *t = loop->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= loop->nheap)
            break;
        if (child + 1 < loop->nheap && timer_before(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!timer_before(loop->heap[child], t))
            break;
        heap_set(loop, i, loop->heap[child]);
        i = child;
    }
    heap_set(loop, i, t);
}

static void heap_remove(struct ev_loop *loop, struct ev_timer *t)
{
    size_t i = t->index;
    struct ev_timer *last = loop->heap[--loop->nheap];
    if (i == loop->nheap)
        return;
    heap_set(loop, i, last);
    heap_down(loop, i);
    heap_up(loop, last->index);
}

struct ev_timer *ev_timer_add(struct ev_loop *loop, uint64_t ms, ev_fn fn, void *ud)
{
    struct ev_timer *t = xmalloc(sizeof *t);
    t->due = now_ms() + ms;
    t->seq = loop->timer_seq++;
    t->fn = fn;
    t->ud = ud;
    if (loop->nheap == loop->capheap) {
        loop->capheap = loop->capheap ? loop->capheap * 2 : 64;
        loop->heap = xrealloc(loop->heap, loop->capheap * sizeof *loop->heap);
    }
    heap_set(loop, loop->nheap++, t);
    heap_up(loop, t->index);
    return t;
}

void ev_timer_cancel(struct ev_loop *loop, struct ev_timer *t)
{
    if (!t)
        return;
    heap_remove(loop, t);
    free(t);
}

void ev_defer(struct ev_loop *loop, ev_fn fn, void *ud)
{
    if (loop->ndeferred == loop->capdeferred) {
        loop->capdeferred = loop->capdeferred ? loop->capdeferred * 2 : 16;
        loop->deferred = xrealloc(loop->deferred, loop->capdeferred * sizeof *loop->deferred);
    }
    loop->deferred[loop->ndeferred++] = (struct ev_deferred){fn, ud};
}

void ev_set_before_sleep(struct ev_loop *loop, ev_fn fn, void *ud)
{
    loop->before_sleep = fn;
    loop->before_sleep_ud = ud;
}

void ev_stop(struct ev_loop *loop)
{
    loop->stop = 1;
}

uint64_t ev_now(const struct ev_loop *loop)
{
    return loop->now;
}

/* Deferred work may queue more deferred work; it runs in the next round, so a callback that
 * re-queues itself cannot starve I/O. */
static void run_deferred(struct ev_loop *loop)
{
    size_t n = loop->ndeferred;
    if (!n)
        return;
    struct ev_deferred *batch = xmalloc(n * sizeof *batch);
    memcpy(batch, loop->deferred, n * sizeof *batch);
    memmove(loop->deferred, loop->deferred + n, (loop->ndeferred - n) * sizeof *batch);
    loop->ndeferred -= n;
    for (size_t i = 0; i < n; i++)
        batch[i].fn(loop, batch[i].ud);
    free(batch);
}

static void run_timers(struct ev_loop *loop)
{
    uint64_t now = now_ms();
    while (loop->nheap && loop->heap[0]->due <= now) {
        struct ev_timer *t = loop->heap[0];
        heap_remove(loop, t);
        t->fn(loop, t->ud);
        free(t);
    }
}

void ev_run(struct ev_loop *loop)
{
    struct epoll_event events[256];
    loop->stop = 0;
    while (!loop->stop) {
        run_deferred(loop);
        if (loop->before_sleep)
            loop->before_sleep(loop, loop->before_sleep_ud);
        if (loop->stop)
            break;
        int timeout = -1;
        if (loop->ndeferred) {
            timeout = 0;
        } else if (loop->nheap) {
            uint64_t now = now_ms();
            uint64_t due = loop->heap[0]->due;
            timeout = due <= now ? 0 : (int)(due - now > 60000 ? 60000 : due - now);
        }
        int n = epoll_wait(loop->epfd, events, (int)ARRAY_LEN(events), timeout);
        if (n < 0 && errno != EINTR)
            break;
        loop->now = now_ms();
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if ((size_t)fd >= loop->nwatches || !loop->watches[fd].active)
                continue;
            uint32_t e = events[i].events;
            unsigned mask = 0;
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                mask |= EV_READ;
            if (e & EPOLLOUT)
                mask |= EV_WRITE;
            struct ev_watch *w = &loop->watches[fd];
            w->fn(loop, fd, mask, w->ud);
        }
        run_timers(loop);
    }
    /* Deferred frees must not be lost when the loop stops. */
    while (loop->ndeferred)
        run_deferred(loop);
}
