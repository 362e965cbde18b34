/* ev.h — the event loop: one thread, epoll (level-triggered), a timer heap, deferred work and a
 * before-sleep hook (Redis ae's shape).
 *
 * Order of one iteration: run deferred work queued so far → before-sleep hook (flush pending
 * writes) → epoll_wait until the next timer → fd callbacks → expired timers. Callbacks may add or
 * remove watchers and timers, including their own. */
#ifndef ISTHMUS_EV_H
#define ISTHMUS_EV_H

#include <stdint.h>

#define EV_READ 1u
#define EV_WRITE 2u

struct ev_loop;
struct ev_timer;

typedef void (*ev_io_fn)(struct ev_loop *loop, int fd, unsigned events, void *ud);
typedef void (*ev_fn)(struct ev_loop *loop, void *ud);

struct ev_loop *ev_loop_new(void);
void ev_loop_free(struct ev_loop *loop);

/* Watches fd for mask (EV_READ | EV_WRITE; 0 keeps it registered but quiet). Returns 0 or -1
 * (errno). Errors and hang-ups are reported as EV_READ so the read path sees them. */
int ev_io_add(struct ev_loop *loop, int fd, unsigned mask, ev_io_fn fn, void *ud);
int ev_io_mod(struct ev_loop *loop, int fd, unsigned mask);
void ev_io_del(struct ev_loop *loop, int fd);

/* A one-shot timer after ms milliseconds. The handle is valid until the timer fires (after its
 * callback returns) or is cancelled. */
struct ev_timer *ev_timer_add(struct ev_loop *loop, uint64_t ms, ev_fn fn, void *ud);
void ev_timer_cancel(struct ev_loop *loop, struct ev_timer *t); /* NULL is a no-op */

/* Runs fn at the start of the next iteration, before any new I/O. */
void ev_defer(struct ev_loop *loop, ev_fn fn, void *ud);
void ev_set_before_sleep(struct ev_loop *loop, ev_fn fn, void *ud);

void ev_run(struct ev_loop *loop); /* until ev_stop */
void ev_stop(struct ev_loop *loop);
uint64_t ev_now(const struct ev_loop *loop); /* cached monotonic ms of this iteration */

#endif
