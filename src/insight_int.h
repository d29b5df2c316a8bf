/* Insight internals: the per-loop measuring state (insight.h is the public
 * side).  Cheap counters only; judging is the doctor's. */
#ifndef CREST_INSIGHT_INT_H
#define CREST_INSIGHT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "crest/insight.h"
#include "timer_int.h"

struct crest_loop;
struct crest_conn;

/* The handler callback a connection is running, for naming (set by
 * conn.c/conn_io.c right before each handler call: one byte store). */
enum crest__what {
    CREST__WHAT_NONE,
    CREST__WHAT_ON_OPEN,
    CREST__WHAT_ON_DATA,
    CREST__WHAT_ON_MESSAGE,
    CREST__WHAT_ON_EOF,
    CREST__WHAT_ON_HIGH_WATER,
    CREST__WHAT_ON_DRAIN,
    CREST__WHAT_ON_FLUSHED,
    CREST__WHAT_ON_CLOSE,
    CREST__WHAT_FLUSH_NOTIFY,
};

const char *crest__what_name(unsigned what);
/* A function's symbol, or object+offset, or address (insight.c). */
void crest__name_function(char *buf, size_t len, const void *fn);
/* The connection's handler's name (crest_handler_t.name), else the
 * symbol of its on_message / on_data. */
struct crest_conn;
void crest__conn_handler_name(const struct crest_conn *c, char *buf, size_t len);

struct crest__insight {
    crest_insight_opts_t opts;
    bool on;                    /* opts.enabled */
    bool time_each;             /* time every callback now (AUTO: while
                                   iterations run slow; ALWAYS) */
    _Atomic uint8_t cur_what;   /* enum crest__what: the connection's handler
                                   callback that ran last (relaxed stores,
                                   CREST__WHAT: the watchdog reads it) */
    uint64_t slow_ns;           /* opts.slow_callback_us in ns */
    uint64_t fast_since_ns;     /* AUTO with time_each: the first of the
                                   current run of fast iterations */
    uint64_t timing_since_ns;   /* when time_each went on */
    uint64_t cb_start_ns;       /* per-callback timing: the previous mark */
    uint64_t posted_ns;         /* posted callbacks' time in this iteration
                                   (taken out of the io phase) */
    uint64_t last_log_ns;       /* slow-callback log: once a second */
    uint64_t log_suppressed;

    /* Sampler (insight.c drives it; each module samples its own part) */
    struct crest_timer sample_timer;
    uint64_t sample_prev_ns;
    uint64_t sample_busy_prev;  /* busy ns at the previous sample */
    uint64_t busy_total_ns;     /* all phases but wait, since the start */
    unsigned sample_count;
    /* CPU (insight_cpu.c): the previous readings, so that each sample
     * adds deltas to the figures (which crest_loop_insight_reset zeroes) */
    uint64_t cpu_prev_runq_ns;
    int cpu_tid;                /* the thread the readings are of (gettid);
                                   0: none yet */
    bool cpu_have_prev;         /* the prev readings below are valid */
    bool schedstat_missing;     /* no schedstat here (said once) */
    uint64_t cpu_prev_cpu_ns;
    uint64_t cpu_prev_nivcsw, cpu_prev_nvcsw;
    /* Accept path (listener.c): ListenOverflows/Drops at the start */
    uint64_t netstat_base_overflows, netstat_base_drops;
    bool netstat_base_set;

    /* The watchdog (watchdog.c).  What the loop is running, published by
     * the loop thread (only while the watchdog runs) with relaxed stores
     * under a sequence count, read by the watchdog thread under its
     * registry lock (so that the loop cannot be freed meanwhile); the
     * watchdog never follows these pointers into loop-owned memory. */
    _Atomic uint64_t wd_iter_start_ns;  /* busy since (0: waiting in epoll,
                                           or not inside an iteration) */
    _Atomic uint64_t wd_seq;            /* odd while being written; +2 per
                                           callback (and per busy start) */
    _Atomic uint32_t wd_kind;           /* crest_cb_kind_t of the callback,
                                           CREST__WD_NONE between them */
    _Atomic(const void *) wd_fn;        /* the function it runs (a handler's
                                           on_data/on_message for a conn) */
    _Atomic(const char *) wd_name;      /* the handler's name (static), or
                                           NULL */
    _Atomic uint64_t wd_conn_id;        /* 0 unless a connection */
    _Atomic int wd_fd;                  /* the watcher's fd, or -1 */
    _Atomic int wd_tid;                 /* the loop thread (gettid), set by
                                           the first callback on a thread */
    /* The watchdog thread's own view of this loop (under its lock). */
    uint64_t wd_seen_seq;               /* wd_seq at the previous tick */
    uint64_t wd_seen_ns;                /* when that seq was first seen */
    uint64_t wd_stall_start;            /* the stall reported (its
                                           wd_iter_start_ns), or 0 */
    uint64_t wd_next_report_ns;         /* report it again at this length */
    struct crest_loop *wd_next;         /* the watchdog's list of loops */

    crest_insight_t fig;        /* the live figures */
    pthread_mutex_t pub_lock;
    crest_insight_t *published; /* the last sample's copy, for other threads */
};

/* Loop lifecycle (loop.c) */
int crest__insight_init(struct crest_loop *loop);
void crest__insight_destroy(struct crest_loop *loop);

/* Hooks of the sampler, called on the loop thread once per sample period
 * with the figures to fill in. */
void crest__insight_sample_cpu(struct crest_loop *loop, crest_insight_t *fig, uint64_t now_ns);
void crest__listeners_sample(struct crest_loop *loop, crest_insight_t *fig);
void crest__fd_growth_sample(crest_insight_t *fig, uint64_t now_ns, bool count_proc);

/* The watchdog's registry of loops (watchdog.c). */
void crest__watchdog_add(struct crest_loop *loop);
void crest__watchdog_remove(struct crest_loop *loop);
extern _Atomic bool crest__watchdog_on;
extern _Atomic uint64_t crest__watchdog_threshold_ns;
/* A callback begins (only while the watchdog runs), and an iteration
 * ends, on the loop thread. */
void crest__watchdog_enter(struct crest_loop *loop, crest_cb_kind_t kind, const void *obj);
void crest__watchdog_iteration_end(struct crest_loop *loop, uint64_t busy_ns);
/* wd_kind between callbacks (the loop's own work: timers heap, reaping) */
#define CREST__WD_NONE CREST_CB_KIND_COUNT
/* Writer side of wd_seq (the loop thread only): a sequence lock.  The
 * count goes odd, the fields are stored with release (each ordered after
 * the odd count), the count goes even with release; a reader loads the
 * count with acquire, the fields with acquire, and the count again, and
 * keeps what it read if the two counts are equal and even (Boehm's
 * fence-free form: ThreadSanitizer does not model fences).  On x86 all of
 * these are plain moves. */
static inline uint64_t crest__wd_write_begin(struct crest__insight *ins) {
    uint64_t s = atomic_load_explicit(&ins->wd_seq, memory_order_relaxed);
    atomic_store_explicit(&ins->wd_seq, s + 1, memory_order_relaxed);
    return s + 2;
}
static inline void crest__wd_write_end(struct crest__insight *ins, uint64_t s) {
    atomic_store_explicit(&ins->wd_seq, s, memory_order_release);
}
/* The loop is busy since t (0: waiting in epoll_wait, or the iteration is
 * over); a busy start is between callbacks until one begins. */
static inline void crest__wd_busy(struct crest__insight *ins, uint64_t t) {
    if (t) {
        uint64_t s = crest__wd_write_begin(ins);
        atomic_store_explicit(&ins->wd_kind, CREST__WD_NONE, memory_order_release);
        crest__wd_write_end(ins, s);
    }
    atomic_store_explicit(&ins->wd_iter_start_ns, t, memory_order_relaxed);
}
#define crest__watchdog_busy(loop, t) crest__wd_busy(&(loop)->ins, (t))

#endif
