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

struct crest__insight {
    crest_insight_opts_t opts;
    bool on;                    /* opts.enabled */
    bool time_each;             /* time every callback now (AUTO: while
                                   iterations run slow; ALWAYS) */
    uint8_t cur_what;           /* enum crest__what: the connection's handler
                                   callback that ran last */
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
    int schedstat_fd;           /* /proc/thread-self/schedstat of the loop
                                   thread, opened on its first sample; -1 */
    int cpu_tid;                /* the thread the readings are of (gettid);
                                   0: none yet */
    bool cpu_have_prev;         /* the prev readings below are valid */
    bool schedstat_missing;     /* no schedstat here (said once) */
    uint64_t cpu_prev_cpu_ns;
    uint64_t cpu_prev_nivcsw, cpu_prev_nvcsw;
    /* Accept path (listener.c): ListenOverflows/Drops at the start */
    uint64_t netstat_base_overflows, netstat_base_drops;
    bool netstat_base_set;

    /* The watchdog (watchdog.c) reads these from its thread: relaxed
     * atomics, stored by the loop only while the watchdog runs. */
    _Atomic uint64_t wd_iter_start_ns;  /* busy since (0: waiting in epoll) */
    _Atomic uint64_t wd_seq;            /* bumped per callback */
    _Atomic uint32_t wd_kind;           /* crest_cb_kind_t of the callback */
    _Atomic(const void *) wd_obj;       /* its io, timer, or function */
    _Atomic uint64_t wd_conn_id;
    _Atomic int wd_fd;
    _Atomic(const char *) wd_name;      /* a handler name (static string) */
    _Atomic uint64_t wd_tid;            /* the loop thread (gettid) */
    uint64_t wd_blocked_reported;       /* loop thread: stalls counted */
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
/* The loop is busy since t (0: waiting in epoll_wait), for the watchdog. */
#define crest__watchdog_busy(loop, t) \
    atomic_store_explicit(&(loop)->ins.wd_iter_start_ns, (t), memory_order_relaxed)

#endif
