/* The reactor: create/destroy, one iteration, run/stop, deferred callbacks,
 * loop statistics.
 *
 * One iteration (never nested: run_once from a callback is -EBUSY):
 *   1. read the clock; fire due timers
 *   2. serve the ready list (events fed back by callbacks that stopped early)
 *   3. run deferred callbacks queued before this iteration
 *   4. epoll_wait: zero timeout if there was or is work pending, else until
 *      the next timer
 *   5. read the clock; dispatch the batch (stale events dropped); fire the
 *      timers that came due while waiting (except those step 1 armed)
 *   6. a shutdown under way (shutdown.c): done, if nothing is left
 *   7. free watchers and connections closed during the iteration */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

#include "epoll.h"
#include "internal.h"
#include "pool_int.h"

#define MAX_EVENTS 256

void crest__loop_set_now(crest_loop_t *loop, uint64_t ns) {
    loop->now_ns = ns;
    /* 0 means "not set" in connection time stamps: the clock starts at 1
     * and skips 0 when it wraps (after 49 days). */
    uint32_t ms = (uint32_t)((ns - loop->base_ns) / 1000000u) + 1;
    loop->now_ms = ms ? ms : 1;
}

uint64_t crest__clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* SIGPIPE must never kill a process that uses crest.  Only the default
 * disposition is changed: an application's own handler is left alone. */
static void ignore_sigpipe(void) {
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
        !(old.sa_flags & SA_SIGINFO)) {
        struct sigaction ign;
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        sigemptyset(&ign.sa_mask);
        sigaction(SIGPIPE, &ign, NULL);
    }
}

static void on_wake(crest_io_t *io, unsigned events, void *arg) {
    CREST__UNUSED(io);
    CREST__UNUSED(events);
    crest_loop_t *loop = arg;
    crest__wake_read(loop);
    crest__post_drain(loop);
}

int crest_loop_create(crest_loop_t **loopp) {
    if (!loopp)
        return -EINVAL;
    ignore_sigpipe();
    crest_loop_t *loop = calloc(1, sizeof *loop);
    if (!loop)
        return -ENOMEM;
    loop->epfd = loop->wakefd = -1;
    pthread_mutex_init(&loop->post_lock, NULL);
    loop->base_ns = crest__clock_ns();
    crest__loop_set_now(loop, loop->base_ns);
    crest__shutdown_init(loop);
    if (crest__insight_init(loop) < 0) {
        pthread_mutex_destroy(&loop->post_lock);
        free(loop);
        return -ENOMEM;
    }

    int rc = crest__epoll_create(loop);
    if (rc < 0)
        goto fail;
    loop->epfd = rc;
    loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wakefd < 0) {
        rc = -errno;
        goto fail;
    }
    rc = crest__fd_register(loop->wakefd, CREST_FD_EVENTFD, loop, CREST_HERE);
    if (rc < 0) {
        close(loop->wakefd);
        loop->wakefd = -1;
        goto fail;
    }
    /* The wake-up watcher does not keep the loop alive. */
    rc = crest__io_init(loop, &loop->wake_io, loop->wakefd, CREST_IO_READABLE, on_wake, loop,
                        false);
    if (rc < 0)
        goto fail;
    *loopp = loop;
    return 0;
fail:
    crest__insight_destroy(loop);
    if (loop->wakefd >= 0)
        crest_fd_close(loop->wakefd);
    if (loop->epfd >= 0)
        crest_fd_close(loop->epfd);
    free(loop->ios);
    pthread_mutex_destroy(&loop->post_lock);
    free(loop);
    return rc;
}

static void run_deferred(crest_loop_t *loop);

/* The order is the contract in loop.h: work already queued first (so that
 * its arguments can be freed), then listeners, then connections, then the
 * shutdown's done, then the rest. */
int crest_loop_destroy(crest_loop_t *loop) {
    if (!loop)
        return 0;
    if (loop->running)
        return -EBUSY; /* from a callback: the iteration owns everything */
    /* Callbacks run from here (on_close of the connections it aborts) must
     * not run the loop it is taking apart: run and run_once say -EBUSY. */
    loop->running = true;
    loop->destroying = true; /* nor start anything new: -ESHUTDOWN */
    crest__post_close(loop); /* other threads' posts from now on too */
    crest__conn_pools_destroy(loop); /* their waiters' -ECANCELED run here */
    /* Nothing can be queued now: one pass of each runs everything. */
    run_deferred(loop);
    crest__post_drain(loop);
    crest__listeners_destroy(loop);
    crest__conns_destroy(loop);
    /* After the connections: a name still resolving was cancelled by its
     * connection's close, before the resolver frees its request. */
    crest__loop_resolver_destroy(loop);
    crest__shutdown_finish(loop);
    crest__signals_destroy(loop);
    crest__insight_destroy(loop);
    crest__timers_destroy(loop);
    crest__io_close(&loop->wake_io);
    crest__io_destroy_all(loop);
    crest__post_discard(loop); /* empty: kept as a guard */
    free(loop->defer);
    free(loop->defer_run);
    crest__pool_destroy(&loop->pool);
    crest_fd_close(loop->wakefd);
    crest_fd_close(loop->epfd);
    pthread_mutex_destroy(&loop->post_lock);
    int leaked = crest__fd_report_owner(loop, "crest loop destroyed");
    free(loop);
    return leaked;
}

void crest__loop_ref(crest_loop_t *loop) {
    loop->alive++;
}

void crest__loop_unref(crest_loop_t *loop) {
    loop->alive--;
}

static bool has_pending(const crest_loop_t *loop) {
    return loop->defer_len > 0 || loop->ready_len > 0 || loop->shutdown_check;
}

static bool is_alive(const crest_loop_t *loop) {
    return loop->alive > 0 || has_pending(loop);
}

void crest_loop_update_time(crest_loop_t *loop) {
    crest__loop_set_now(loop, crest__clock_ns());
}

uint64_t crest_loop_now(const crest_loop_t *loop) {
    return loop->now_ns / 1000000u;
}

uint64_t crest_loop_now_ns(const crest_loop_t *loop) {
    return loop->now_ns;
}

int crest_loop_defer(crest_loop_t *loop, crest_cb cb, void *arg) {
    if (!loop || !cb)
        return -EINVAL;
    if (loop->destroying)
        return -ESHUTDOWN; /* it would never run */
    if (loop->defer_len == loop->defer_cap) {
        size_t cap = loop->defer_cap ? loop->defer_cap * 2 : 16;
        struct crest_deferred *n = realloc(loop->defer, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        loop->defer = n;
        loop->defer_cap = cap;
    }
    loop->defer[loop->defer_len++] = (struct crest_deferred){cb, arg};
    return 0;
}

/* Run the callbacks deferred before this point; those they defer wait for
 * the next iteration.  The two arrays swap roles, so nothing is allocated
 * once both have grown. */
static void run_deferred(crest_loop_t *loop) {
    size_t n = loop->defer_len;
    if (n == 0)
        return;
    struct crest_deferred *batch = loop->defer;
    size_t batch_cap = loop->defer_cap;
    loop->defer = loop->defer_run;
    loop->defer_cap = loop->defer_run_cap;
    loop->defer_len = 0;
    loop->defer_run = batch;
    loop->defer_run_cap = batch_cap;
    for (size_t i = 0; i < n; i++) {
        loop->stats.deferred_run++;
        loop->stats.callbacks++;
        const void *fn = (const void *)(uintptr_t)batch[i].cb;
        loop->last_cb = fn;
        CREST__CB_ENTER(loop, CREST_CB_DEFERRED, fn);
        batch[i].cb(loop, batch[i].arg);
        CREST__CB_LEAVE(loop, CREST_CB_DEFERRED, fn);
    }
}

static int poll_timeout(crest_loop_t *loop, int timeout_ms, bool had_work) {
    if (timeout_ms == 0 || had_work || has_pending(loop) || atomic_load(&loop->stop_flag))
        return 0;
    /* Nothing could ever wake a dead loop but a post: do not block. */
    if (!is_alive(loop) && timeout_ms < 0)
        return 0;
    int next = crest__timers_next_timeout(loop);
    if (next < 0)
        return timeout_ms;
    return timeout_ms < 0 || next < timeout_ms ? next : timeout_ms;
}

int crest_loop_run_once(crest_loop_t *loop, int timeout_ms) {
    if (!loop)
        return -EINVAL;
    /* From a callback: the batches being served (deferred, ready list,
     * timers, the epoll events) would be swapped or freed under the outer
     * iteration.  Every callback the loop runs, of any kind, runs inside
     * this flag. */
    if (loop->running)
        return -EBUSY;
    crest__event_t events[MAX_EVENTS];
    loop->running = true;
    struct crest__insight *ins = &loop->ins;
    bool watched = atomic_load_explicit(&crest__watchdog_on, memory_order_relaxed);
    loop->track = ins->time_each || watched;

    /* Each phase that ran reads the clock once as it ends; a phase with
     * nothing to do costs no read. */
    uint64_t t0 = crest__clock_ns();
    crest__loop_set_now(loop, t0);
    if (watched)
        crest__watchdog_busy(loop, t0);
    uint64_t mark = t0, cbs = loop->stats.callbacks;
    crest__phase_begin(loop, mark);
    unsigned fired = crest__timers_run(loop, true);
    if (fired) {
        loop->stats.timers_fired += fired;
        uint64_t t = crest__phase_end(loop, CREST_PHASE_TIMERS, mark);
        crest__phase_check(loop, CREST_CB_TIMER, loop->stats.callbacks - cbs, t - mark);
        mark = t;
    }
    /* Work queued before this iteration runs now, and the poll below does
     * not block for it (what it queues in turn waits for the next one). */
    bool had_work = has_pending(loop);
    if (loop->ready_len) {
        cbs = loop->stats.callbacks;
        crest__phase_begin(loop, mark);
        crest__io_run_ready(loop);
        uint64_t t = crest__phase_end(loop, CREST_PHASE_READY, mark);
        crest__phase_check(loop, CREST_CB_IO, loop->stats.callbacks - cbs, t - mark);
        mark = t;
    }
    if (loop->defer_len) {
        cbs = loop->stats.callbacks;
        crest__phase_begin(loop, mark);
        run_deferred(loop);
        uint64_t t = crest__phase_end(loop, CREST_PHASE_DEFERRED, mark);
        crest__phase_check(loop, CREST_CB_DEFERRED, loop->stats.callbacks - cbs, t - mark);
        mark = t;
    }

    int timeout = poll_timeout(loop, timeout_ms, had_work);
    uint64_t t1 = mark;
    if (watched)
        crest__watchdog_busy(loop, 0);
    int n = crest__epoll_wait(loop->epfd, events, MAX_EVENTS, timeout);
    uint64_t t2 = crest__clock_ns();
    crest__loop_set_now(loop, t2);
    if (watched)
        crest__watchdog_busy(loop, t2);
    loop->stats.iterations++;
    loop->stats.wait_ns += t2 - t1;
    ins->fig.phase_ns[CREST_PHASE_WAIT] += t2 - t1;

    mark = t2;
    if (n > 0) {
        ins->posted_ns = 0;
        cbs = loop->stats.callbacks;
        crest__phase_begin(loop, mark);
        crest__io_dispatch(loop, events, n);
        uint64_t t3 = crest__clock_ns();
        uint64_t io_ns = t3 - mark - ins->posted_ns;
        ins->fig.phase_ns[CREST_PHASE_IO] += io_ns;
        ins->fig.phase_ns[CREST_PHASE_POSTED] += ins->posted_ns;
        crest__phase_check(loop, CREST_CB_IO, loop->stats.callbacks - cbs, io_ns);
        mark = t3;
    }
    /* Timers that came due while we waited fire in this iteration (not
     * those the first pass armed: they wait for the next one). */
    cbs = loop->stats.callbacks;
    crest__phase_begin(loop, mark);
    fired = crest__timers_run(loop, false);
    if (fired) {
        loop->stats.timers_fired += fired;
        uint64_t t = crest__phase_end(loop, CREST_PHASE_TIMERS, mark);
        crest__phase_check(loop, CREST_CB_TIMER, loop->stats.callbacks - cbs, t - mark);
        mark = t;
    }
    /* A shutdown under way: done runs once nothing is left, after every
     * on_close of this iteration. */
    if (CREST__UNLIKELY(loop->shutting_down))
        crest__shutdown_check(loop);
    crest__io_free_stopped(loop);
    crest__conns_reap(loop);
    uint64_t end = crest__phase_end(loop, CREST_PHASE_OTHER, mark);
    uint64_t busy = (t1 - t0) + (end - t2);
    loop->stats.run_ns += busy;
    if (CREST__LIKELY(ins->on))
        crest__insight_iteration(loop, busy, n, end);
    /* The watchdog: out of the iteration (what the application does
     * between iterations is not the loop being blocked). */
    if (watched)
        crest__watchdog_busy(loop, 0);
    loop->running = false;
    if (n < 0)
        return n;
    return is_alive(loop) ? 1 : 0;
}

int crest_loop_run(crest_loop_t *loop) {
    if (!loop)
        return -EINVAL;
    if (loop->running)
        return -EBUSY;
    int rc = 0;
    while (!atomic_load(&loop->stop_flag)) {
        rc = crest_loop_run_once(loop, -1);
        if (rc <= 0)
            break;
    }
    /* A stop is consumed by the run it ended (or, if it came before, by the
     * run it prevented). */
    atomic_store(&loop->stop_flag, 0);
    /* Time already spent ends here; the clock is fresh for what follows. */
    crest__loop_set_now(loop, crest__clock_ns());
    return rc < 0 ? rc : 0;
}

/* Always wakes: telling the loop's thread from another would need the
 * thread id, which the loop's thread writes while others read it.  From a
 * callback the wake-up costs one write, and the next iteration one read. */
void crest_loop_stop(crest_loop_t *loop) {
    if (!loop)
        return;
    atomic_store(&loop->stop_flag, 1);
    (void)crest__wake_write(loop);
}

void crest_loop_set_data(crest_loop_t *loop, void *data) {
    loop->data = data;
}

void *crest_loop_get_data(const crest_loop_t *loop) {
    return loop->data;
}

void crest_loop_get_stats(const crest_loop_t *loop, crest_loop_stats_t *out) {
    *out = loop->stats;
}
