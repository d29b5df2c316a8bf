/* crest internals shared between src/ files.  Not installed.
 *
 * Names: crest__ for internal functions (not exported from the shared
 * library), static for file-local ones. */
#ifndef CREST_INTERNAL_H
#define CREST_INTERNAL_H

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crest/crest.h"
#include "buf.h"
#include "hist_math.h"
#include "insight_int.h"
#include "timer_int.h"

#define CREST__UNUSED(x) ((void)(x))
/* For the few functions of the per-message path that are worth one copy
 * per caller: a call there costs more than the code it runs. */
#define CREST__INLINE inline __attribute__((always_inline))
#define CREST__LIKELY(x) __builtin_expect(!!(x), 1)
#define CREST__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CREST__CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* An io watcher.  Embedded by the connection layer; allocated by
 * crest_io_start() for applications. */
struct crest_io {
    crest_loop_t *loop;
    crest_io_cb cb;
    union {
        void *arg;                 /* while active */
        struct crest_io *free_next; /* stopped, waiting to be freed */
    };
    int fd;
    uint32_t gen;         /* registration generation, in epoll data */
    unsigned fed;         /* events fed for the next iteration, or 0 */
    uint8_t events;       /* interest: CREST_IO_READABLE|WRITABLE */
    bool counted;         /* keeps the loop alive */
    bool heap_owned;      /* allocated by crest_io_start, freed on stop */
};

/* A ready-list entry names its watcher by fd and generation, so a watcher
 * stopped after it was fed is skipped without the list holding pointers
 * to it. */
struct crest_ready {
    int fd;
    uint32_t gen;
};

struct crest_deferred {
    crest_cb cb;
    void *arg;
};

struct crest_posted {
    struct crest_posted *next;
    crest_cb cb;
    void *arg;
};

/* Bytes in each of a loop's two connection scratch buffers: one read's
 * worth, as much as one pool chunk holds. */
#define CREST__SCRATCH_SIZE 16384u

struct crest_loop {
    struct crest_pool *conn_pools;  /* pool.c: this loop's connection pools */
    struct crest_resolver *resolver; /* resolve.c: made on the first name */
    struct crest_http_server *http_servers; /* http_server.c: the loop's HTTP
                                               servers (not the admin's) */
    crest_http_server_stats_t http_retired; /* counters of those freed */
    unsigned http_servers_made;      /* ever created: 0 leaves the HTTP
                                        families out of /metrics */
    int epfd;
    int wakefd;
    _Atomic int stop_flag;
    bool running;               /* inside run_once (or destroy): no nesting */
    bool destroying;            /* crest_loop_destroy() under way: nothing
                                   new may start (-ESHUTDOWN) */
    bool shutting_down;         /* crest_loop_shutdown() under way: no new
                                   connection or listener (-ESHUTDOWN) */
    bool shutdown_check;        /* look for "nothing left" at the end of the
                                   next iteration, without blocking first */
    bool shutdown_stop;         /* crest_loop_stop() once the shutdown is
                                   done (crest_group_shutdown) */

    uint64_t now_ns;
    uint64_t base_ns;           /* the loop's creation: now_ms counts from it */
    uint32_t now_ms;            /* milliseconds since base_ns, plus 1 */
    uint32_t next_gen;
    unsigned alive;             /* counted io watchers, timers, signals */

    /* fd-indexed table of io watchers, with checked capacity */
    struct crest_io **ios;
    int ios_cap;
    struct crest_io wake_io;

    /* ready list (fed events), FIFO; served one batch per iteration, the
     * two arrays swapping roles */
    struct crest_ready *ready, *ready_run;
    size_t ready_len, ready_cap, ready_run_cap;
    /* watchers to free after this dispatch */
    struct crest_io *free_list;

    /* deferred callbacks: a ring that grows; swapped out per iteration */
    struct crest_deferred *defer;
    size_t defer_len, defer_cap;
    struct crest_deferred *defer_run;
    size_t defer_run_cap;

    /* posts from other threads */
    pthread_mutex_t post_lock;
    struct crest_posted *post_head, *post_tail;
    bool post_closed;           /* under post_lock: destroy has begun, a
                                   post returns -ESHUTDOWN */

    /* crest_loop_shutdown() (shutdown.c) */
    struct crest_timer shutdown_grace;
    crest_shutdown_cb shutdown_done;
    void *shutdown_arg;

    /* timers */
    struct crest__timer_heap timers;

    /* signals */
    struct crest__signals *signals;

    /* connections (conn.c, listener.c) */
    struct crest__pool pool;
    crest_conn_stats_t conn_stats;
    struct crest_io *zombies;          /* closed connections (their io), freed
                                          after this iteration */
    struct crest__deadlines *deadlines; /* connection timeouts (conn_timer.c) */
    struct crest_listener *listeners;  /* open listeners */

    void *data;
    crest_loop_stats_t stats;
    /* Latency insight (insight.c): phases, callback timing, the sampler.
     * track: a callback is to be timed or published (per-callback timing
     * on, or the watchdog running); otherwise a callback costs one test. */
    bool track;
    const void *last_cb;        /* the callback that ran last: its io, timer
                                   or function (naming a batch of one) */
    struct crest__insight ins;

    /* Connection scratch (conn_io.c).  Input is read into `rbuf` and handed
     * to the handler in place; replies written from on_data/on_message
     * gather in `wbuf` and leave in one send() when the callback returns.
     * A connection whose messages arrive whole and whose replies the socket
     * takes at once so needs no buffer of its own: the chunk pool is only
     * for what is left over. */
    struct crest_conn *gather_owner;   /* whose replies wbuf holds */
    uint32_t gather_len;
    bool rbuf_busy;                    /* rbuf's bytes are being delivered */
    uint8_t rbuf[CREST__SCRATCH_SIZE];
    uint8_t wbuf[CREST__SCRATCH_SIZE];
};

/* An internal event bit (no epoll flag uses it): fed to a watcher to make
 * it finish pending work on the next iteration, with no readiness news. */
#define CREST__IO_KICK (1u << 27)

/* EPOLLPRI: urgent (out-of-band) data is pending.  Connections ask for it
 * (see conn_io.c: a read stops short at the urgent mark); applications'
 * watchers cannot. */
#define CREST__IO_PRI 0x002u

/* Time */
uint64_t crest__clock_ns(void);
/* Set the loop's cached time (now_ns and the millisecond clock). */
void crest__loop_set_now(crest_loop_t *loop, uint64_t ns);

/* Loop internals used by other modules */
int crest__io_init(crest_loop_t *loop, struct crest_io *io, int fd, unsigned events,
                   crest_io_cb cb, void *arg, bool counted);
void crest__io_close(struct crest_io *io);  /* stop, for embedded watchers */
void crest__io_detach(struct crest_io *io, bool epoll_del);
int crest__io_reattach(struct crest_io *io);
/* resolve.c: crest_loop_destroy() ends the loop's own resolver. */
void crest__loop_resolver_destroy(crest_loop_t *loop);
void crest__loop_ref(crest_loop_t *loop);
struct epoll_event;
void crest__io_dispatch(crest_loop_t *loop, const struct epoll_event *evs, int n);
void crest__io_run_ready(crest_loop_t *loop);
void crest__io_free_stopped(crest_loop_t *loop);
void crest__io_destroy_all(crest_loop_t *loop);
void crest__loop_unref(crest_loop_t *loop);

/* Posts (post.c) */
void crest__post_drain(crest_loop_t *loop);
void crest__post_discard(crest_loop_t *loop);
void crest__post_close(crest_loop_t *loop);   /* destroy: refuse new posts */
int crest__wake_write(crest_loop_t *loop);
void crest__wake_read(crest_loop_t *loop);

/* Signals (signal.c) */
void crest__signals_destroy(crest_loop_t *loop);

/* fd registry with an owner (the loop that opened it).  Register: 0,
 * -EEXIST, or -ENOMEM (the fd is then not recorded: close it with close(),
 * crest_fd_close() would refuse it).  Report: log the owner's fds still
 * open and forget the owner (at its loop's destroy). */
int crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin);
int crest__fd_report_owner(const void *owner, const char *what);
/* crest_fd_report() of a live process (the admin's /debug/crest/fds): the
 * same list, without the leak verdict, which only means something at
 * exit. */
int crest__fd_report_live(FILE *out);

/* Connections (conn.c, listener.c): reap closed ones after each
 * iteration; tear everything down with the loop. */
void crest__conns_reap(crest_loop_t *loop);
void crest__conns_destroy(crest_loop_t *loop);
/* crest_loop_foreach_conn() from fd first_fd on: the admin endpoint walks
 * connections in slices, resuming where the last slice stopped. */
int crest__loop_foreach_conn_from(crest_loop_t *loop, int first_fd,
                                  int (*cb)(crest_conn_t *c, void *arg), void *arg);
void crest__listeners_destroy(crest_loop_t *loop);

/* Shutdown (shutdown.c): set up with the loop; checked at the end of each
 * iteration while one is under way; finished by crest_loop_destroy(). */
void crest__shutdown_init(crest_loop_t *loop);
void crest__shutdown_check(crest_loop_t *loop);
void crest__shutdown_finish(crest_loop_t *loop);
/* May a new connection or listener start on this loop?  0 or -ESHUTDOWN. */
static inline int crest__loop_may_start(const crest_loop_t *loop) {
    return loop->destroying || loop->shutting_down ? -ESHUTDOWN : 0;
}

/* Logging */
bool crest__log_enabled(crest_log_level_t level);

/* Insight hot path (insight.c has the rest) */
static inline unsigned crest__hist_index(uint64_t v) {
    return crest__hist_index_of(v, CREST_HIST_SUB_BITS, CREST_HIST_MAX_BITS);
}

static inline void crest__hist_record(crest_hist_t *h, uint64_t v) {
    crest__hist_widen(&h->min, &h->max, h->count, v, v);
    h->buckets[crest__hist_index(v)]++;
    h->count++;
    h->sum += v;
}

/* Around each callback the loop makes (obj: its io watcher, or for timers,
 * deferred and posted callbacks the function). */
void crest__insight_cb_enter(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj);
void crest__insight_cb_leave(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj);
#define CREST__CB_ENTER(loop, kind, obj)                    \
    do {                                                    \
        if (CREST__UNLIKELY((loop)->track))                 \
            crest__insight_cb_enter((loop), (kind), (obj)); \
    } while (0)
#define CREST__CB_LEAVE(loop, kind, obj)                    \
    do {                                                    \
        if (CREST__UNLIKELY((loop)->track))                 \
            crest__insight_cb_leave((loop), (kind), (obj)); \
    } while (0)
/* A phase of the iteration begins at `mark` (per-callback timing chains
 * from it); one ends: its time is added, the clock read is returned. */
static inline void crest__phase_begin(crest_loop_t *loop, uint64_t mark) {
    loop->ins.cb_start_ns = mark;
}
void crest__insight_slow_batch(crest_loop_t *loop, crest_cb_kind_t kind, uint64_t callbacks,
                               uint64_t ns);
static inline uint64_t crest__phase_end(crest_loop_t *loop, crest_phase_t phase, uint64_t mark) {
    uint64_t now = crest__clock_ns();
    loop->ins.fig.phase_ns[phase] += now - mark;
    return now;
}
/* A phase's batch of callbacks took ns: a slow batch not timed callback by
 * callback is named if it was a single callback (loop->last_cb). */
static inline void crest__phase_check(crest_loop_t *loop, crest_cb_kind_t kind,
                                      uint64_t callbacks, uint64_t ns) {
    if (CREST__UNLIKELY(ns >= loop->ins.slow_ns))
        crest__insight_slow_batch(loop, kind, callbacks, ns);
}
/* The end of an iteration: histograms, the slow check (insight.c). */
void crest__insight_iteration(crest_loop_t *loop, uint64_t busy_ns, int events, uint64_t end_ns);
/* A callback timed by its caller (posted ones): counted, and recorded if
 * slow. */
void crest__insight_timed(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj,
                          uint64_t ns);
/* io callbacks of the library's own watchers, for naming */
void crest__listener_on_io(crest_io_t *io, unsigned events, void *arg);
void crest__signal_on_io(crest_io_t *io, unsigned events, void *arg);
struct crest_listener;
const crest_handler_t *crest__listener_handler(const struct crest_listener *l);
const struct crest_listener *crest__listener_of_io(const struct crest_io *io);
const crest_addr_t *crest__listener_addr(const struct crest_listener *l);
/* The handler callback a connection runs next (for naming a slow one). */
/* A relaxed store (a plain byte move): the watchdog thread reads it. */
#define CREST__WHAT(loop, w) \
    atomic_store_explicit(&(loop)->ins.cur_what, (uint8_t)(w), memory_order_relaxed)

#endif
