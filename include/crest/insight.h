/* insight.h: what a loop measures about its own latency, cheaply enough to
 * stay on in production, and the snapshot the doctor (doctor.h), the
 * reports and /metrics read.
 *
 * Measuring happens where the event happens: the loop times its phases and
 * callbacks, connections read TCP_INFO at close, listeners sample their
 * accept queue, a once-a-second sampler reads the thread's CPU wait and
 * the fd registry.  Judging is the doctor's.  See docs/latency.md.
 *
 * On by default (budget: 25 instructions per echoed message): phase
 * accounting, the iteration-time histogram, slow-callback detection (timing
 * per batch, per callback while iterations run slow), the 1 s sampler, TCP
 * health at close, the accept-path sample.
 * Opt in: per-callback timing always (timing = CREST_TIMING_ALWAYS),
 * receive-queue dwell (rx_timestamps: turns on kernel timestamping for the
 * whole host), the watchdog thread (crest_watchdog_start).
 *
 * Figures are cumulative since the loop was created (or since
 * crest_loop_insight_reset()); a window is the difference of two snapshots
 * (crest_insight_window()).  Times in nanoseconds.
 *
 * Threads: crest_loop_get_insight() and crest_loop_set_insight() on the
 * loop's thread (callbacks included).  crest_loop_read_insight() and
 * crest_group_get_insight() from any thread: they copy the snapshot the
 * loop published at its last sample (at most sample_ms old; a loop stuck
 * in a callback publishes nothing until it returns, which is what the
 * watchdog is for).  None of these run callbacks. */
#ifndef CREST_INSIGHT_H
#define CREST_INSIGHT_H

#include <stdbool.h>
#include <stdint.h>

#include "hist.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where a loop iteration's time goes. */
typedef enum crest_phase {
    CREST_PHASE_WAIT,      /* blocked in epoll_wait */
    CREST_PHASE_IO,        /* io events: connections, listeners, watchers,
                              signals (posted callbacks excluded) */
    CREST_PHASE_TIMERS,
    CREST_PHASE_READY,     /* the ready list: events fed back */
    CREST_PHASE_DEFERRED,
    CREST_PHASE_POSTED,    /* callbacks posted from other threads */
    CREST_PHASE_OTHER,     /* the loop's own bookkeeping (reaping) */
    CREST_PHASE_COUNT
} crest_phase_t;

const char *crest_phase_name(crest_phase_t phase); /* "wait", "io", ... */

/* What kind of callback crest was running. */
typedef enum crest_cb_kind {
    CREST_CB_CONN,     /* a connection's event: its handler's callbacks */
    CREST_CB_ACCEPT,   /* a listener's accept batch (with on_open of each
                          new connection) */
    CREST_CB_IO,       /* an application io watcher (crest_io_start) */
    CREST_CB_TIMER,
    CREST_CB_DEFERRED,
    CREST_CB_POSTED,
    CREST_CB_SIGNAL,
    CREST_CB_KIND_COUNT
} crest_cb_kind_t;

const char *crest_cb_kind_name(crest_cb_kind_t kind); /* "conn", "accept", ... */

/* How callbacks are timed. */
typedef enum crest_timing {
    CREST_TIMING_AUTO,   /* default: each phase is timed as a batch (a
                            batch of one callback is that callback); while
                            iterations run over slow_callback_us, every
                            callback is timed, until 1 s of fast iterations
                            (HAProxy's hysteresis) */
    CREST_TIMING_ALWAYS, /* every callback, always (costs a clock read per
                            callback: see docs/latency.md for the figure) */
    CREST_TIMING_OFF     /* batches only; slow callbacks are not named */
} crest_timing_t;

typedef struct crest_insight_opts {
    bool enabled;               /* default true; false: no histograms, no
                                   slow-callback detection, no sampler (the
                                   cost floor bench/run compares to); the
                                   phase times, a few additions per
                                   iteration, still count */
    crest_timing_t timing;      /* default CREST_TIMING_AUTO */
    uint32_t slow_callback_us;  /* default 1000: a callback (or a batch)
                                   longer than this is slow */
    uint32_t sample_ms;         /* default 1000: the sampler's period (CPU
                                   wait, fd growth, accept queues, the
                                   published snapshot); 0 keeps the
                                   default */
    bool rx_timestamps;         /* default false: receive-queue dwell, from
                                   SO_TIMESTAMPING (RX_SOFTWARE) on every
                                   connection this loop opens from now on */
} crest_insight_opts_t;

void crest_insight_opts_init(crest_insight_opts_t *opts);
/* Loop thread.  -EINVAL for a NULL argument or slow_callback_us of 0. */
int crest_loop_set_insight(crest_loop_t *loop, const crest_insight_opts_t *opts);
void crest_loop_get_insight_opts(const crest_loop_t *loop, crest_insight_opts_t *out);

/* One slow callback, as kept in the loop's ring of recent ones. */
#define CREST_SLOW_RING 32
typedef struct crest_slow_cb {
    uint64_t at_ns;            /* crest_loop_now_ns() when it returned */
    uint64_t duration_ns;
    uint64_t conn_id;          /* CONN: crest_conn_id(); else 0 */
    uint32_t batch;            /* 1: one callback; N > 1: a slow batch of N
                                  callbacks of this kind that were not timed
                                  one by one (counted in slow_unnamed, not
                                  slow_callbacks; name says "batch") */
    crest_cb_kind_t kind;
    char name[48];             /* the handler's name (crest_handler_t.name),
                                  else the callback's symbol (dladdr), else
                                  its address "0x..." */
    char what[16];             /* CONN: the handler callback running last:
                                  "on_data", "on_message", "on_open", ...;
                                  else "" */
    char peer[64];             /* CONN: the peer; ACCEPT: the listener's
                                  address; else "" */
} crest_slow_cb_t;

/* A loop's figures.  Large (about 40 KiB): allocate it. */
typedef struct crest_insight {
    uint64_t taken_ns;           /* loop clock (CLOCK_MONOTONIC) of this
                                    snapshot */
    uint64_t since_ns;           /* ... and of the start of the figures */
    unsigned loops;              /* 1, or how many a group sum covers */

    /* Loop phases */
    uint64_t iterations;
    uint64_t phase_ns[CREST_PHASE_COUNT];
    uint64_t events;             /* returned by epoll_wait, all waits */
    crest_hist_t events_per_wait;
    crest_hist_t iteration_busy; /* per iteration: everything but the wait */
    uint64_t busy_last_ns;       /* in the last sample period: busy time */
    uint64_t wall_last_ns;       /* ... and its length (utilization =
                                    busy_last_ns / wall_last_ns) */

    /* Slow callbacks */
    uint32_t slow_threshold_ns;  /* what counted as slow */
    uint64_t slow_iterations;    /* iterations busy past the threshold */
    uint64_t slow_callbacks;     /* named slow callbacks (all kinds) */
    uint64_t slow_by_kind[CREST_CB_KIND_COUNT];
    uint64_t slow_unnamed;       /* slow batches whose callbacks were not
                                    timed one by one (in the ring too, with
                                    batch > 1) */
    uint64_t timed_callbacks;    /* callbacks timed one by one */
    uint64_t timing_on_ns;       /* time spent with per-callback timing on */
    crest_hist_t callback_time;  /* durations of the callbacks timed */
    unsigned slow_ring_len;      /* entries in slow_ring (<= CREST_SLOW_RING) */
    crest_slow_cb_t slow_ring[CREST_SLOW_RING]; /* oldest first */

    /* Watchdog (when running): iterations seen stuck past its threshold */
    uint64_t blocked;
    uint64_t blocked_max_ns;

    /* CPU: the loop thread's run-queue wait (/proc/thread-self/schedstat)
     * and context switches (getrusage RUSAGE_THREAD), as sampled */
    uint64_t cpu_ns;             /* on a CPU */
    uint64_t runq_wait_ns;       /* runnable, waiting for a CPU */
    uint64_t nivcsw;             /* involuntary context switches */
    uint64_t nvcsw;              /* voluntary */
    uint64_t runq_wait_last_ns;  /* in the last sample period */
    uint64_t runq_wait_max_ns;   /* the worst sample period so far */
    uint64_t cpu_samples;        /* sample periods seen */

    /* Receive-queue dwell: from the kernel's timestamp of a segment to the
     * read that took it (rx_timestamps) */
    bool rx_timestamps;
    crest_hist_t rx_dwell;

    /* Accept path (the loop's listeners, summed) */
    uint64_t accept_wakeups;     /* accept batches (one per readiness) */
    uint64_t accepted;           /* connections they took */
    uint32_t accept_queue_len;   /* at the last sample: waiting in the
                                    kernel's accept queues (TCP_INFO
                                    tcpi_unacked of each listener) */
    uint32_t accept_queue_max;   /* their backlogs (tcpi_sacked) */
    uint32_t accept_queue_peak;  /* the longest sampled */
    uint64_t accept_queue_full;  /* samples with a full queue */
    uint64_t listen_overflows;   /* /proc/net/netstat ListenOverflows and */
    uint64_t listen_drops;       /* ListenDrops: deltas since the figures
                                    began (network-namespace wide) */

    /* TCP health, from TCP_INFO at each connection's close */
    uint64_t tcp_samples;
    crest_hist_t rtt;            /* tcpi_rtt (smoothed), ns */
    uint64_t rttvar_sum_ns;      /* sum of tcpi_rttvar */
    uint64_t retransmits;        /* sum of tcpi_total_retrans */
    uint64_t segs_out;           /* sum of tcpi_segs_out */
    uint64_t tcp_busy_ns;        /* sum of tcpi_busy_time (sending) */
    uint64_t rwnd_limited_ns;    /* ... of it limited by the peer's
                                    receive window: a slow reader */
    uint64_t sndbuf_limited_ns;  /* ... limited by our send buffer */

    /* Write side */
    uint64_t write_stalls;       /* output that had to wait for EPOLLOUT */
    crest_hist_t write_stall;    /* how long, from queued to flushed */
    uint64_t hw_pauses;          /* high-water pauses of reading */
    crest_hist_t hw_pause;       /* how long each lasted */
    uint64_t nagle_checks;       /* small writes on connections without
                                    TCP_NODELAY, sampled with TCP_INFO */
    uint64_t nagle_held;         /* ... whose bytes the kernel held back
                                    though the window was open */
    uint64_t write_stalls_sndbuf; /* of write_stalls, on connections whose
                                    SO_SNDBUF the options set (sndbuf > 0:
                                    the kernel's autotuning is off): over
                                    loopback tcpi_sndbuf_limited hardly
                                    ever counts, these do */
    uint32_t sndbuf_set_min;     /* the smallest such sndbuf option seen
                                    (bytes asked; the kernel doubles it),
                                    0 if none */

    /* Outbound: names (resolve.h), every resolver on this loop, counted
     * as they happen */
    uint64_t resolve_requests;   /* crest_resolve() calls, crest_connect()'s
                                    names included */
    uint64_t resolve_queries;    /* lookups sent to DNS */
    uint64_t resolve_cache_hits; /* answered from the cache (positive or
                                    negative) */
    uint64_t resolve_coalesced;  /* waited for a lookup already in flight */
    uint64_t resolve_failures;   /* lookups that failed (NXDOMAIN, timeout,
                                    ...) */
    crest_hist_t resolve_time;   /* each lookup sent to DNS, ns */

    /* Outbound: connection pools (pool.h) on this loop.  Counters as they
     * happen; levels at the last sample, summed over the pools; "busiest"
     * is the pool with the largest share of max_size borrowed then. */
    uint64_t pool_acquired;      /* acquires that got a connection */
    uint64_t pool_reused;        /* ... an idle one */
    uint64_t pool_acquire_timeouts;
    uint64_t pool_connect_failures;
    uint64_t pool_leaks;         /* borrows reported past the leak threshold */
    crest_hist_t pool_acquire_wait; /* acquire to callback, ns */
    uint64_t pool_exhausted_samples; /* samples that found a pool with 80%
                                    or more of max_size borrowed and
                                    callers waiting */
    uint32_t pools;              /* at the sample */
    uint32_t pool_active, pool_idle, pool_waiting, pool_max;
    uint32_t pool_busiest_active, pool_busiest_max, pool_busiest_waiting;
    char pool_busiest[48];       /* its name ("" without pools) */

    /* HTTP servers (http.h) on this loop, the admin endpoint's excepted:
     * from the loop iteration that completed a request (its clock, set
     * when epoll_wait returned) to its response's head written.  So it
     * holds the callbacks run before it in that iteration, the
     * application's handler, and any wait for an answer given later
     * (a post from a worker thread, a timer, a backend); not the time
     * the bytes sat in the kernel (rx_dwell) nor the body's sending. */
    crest_hist_t http_response_time; /* ns */
    crest_hist_t http_deferred_time; /* ... of the responses written after
                                        their request's on_request returned
                                        (from a timer, a post, a backend's
                                        answer): what the handlers waited
                                        for, not the loop */

    /* fd growth (process-wide; see crest_fd_origins in fdreg.h) */
    uint64_t fds_open;           /* registered fds open at the sample */
    uint64_t fds_unregistered;   /* fds in /proc/self/fd the registry does
                                    not know (sampled every 10 periods) */
    struct crest_fd_origin_growth {
        char origin[64];         /* file:line that opened them */
        uint64_t open;           /* open now */
        uint64_t opened;         /* opened since the figures began */
        uint64_t closed;         /* ... and closed */
        uint64_t oldest_ns;      /* age of the oldest still open */
    } fd_origins[8];             /* the origins with the most open fds */
    unsigned fd_origins_len;
} crest_insight_t;

/* Loop thread: the live figures (the sampler's last values for the
 * sampled ones). */
int crest_loop_get_insight(crest_loop_t *loop, crest_insight_t *out);
/* Any thread: the snapshot published at the loop's last sample. */
int crest_loop_read_insight(crest_loop_t *loop, crest_insight_t *out);
/* Loop thread: start the figures again from zero. */
void crest_loop_insight_reset(crest_loop_t *loop);

/* out = newer - older: counters and histograms as differences, the
 * sampled levels (queue lengths, fds open, last-period values) as newer
 * has them, the ring of slow callbacks limited to those in the window. */
void crest_insight_window(crest_insight_t *out, const crest_insight_t *newer,
                          const crest_insight_t *older);
/* dst += src (a group's loops): counters and histograms add, levels add,
 * maxima take the larger, the slow rings merge by time, fd figures (one
 * process) are taken once. */
void crest_insight_add(crest_insight_t *dst, const crest_insight_t *src);

/* The blocked-loop watchdog: one thread per process that watches every
 * loop (created before or after the start) and reports a loop stuck
 * inside one iteration WHILE it is still stuck, at WARN through crest_log
 * (from the watchdog's thread: the log hook must be thread-safe):
 *
 *   loop blocked for 110 ms in a callback: conn handler spinner on_data
 *   conn #1 fd 11 peer 127.0.0.1:46396 (running 105 ms, thread 32607)
 *
 * what runs (kind; the handler's name, else the symbol of the function
 * by dladdr(); the handler callback; the connection's id, fd and peer),
 * how long the loop has been busy, how long the current callback has run
 * (as the watchdog saw it: up to one period short, see below) and the
 * loop thread's id.  Logged again each time the stall doubles (100, 200,
 * 400 ms... with a 100 ms threshold), not at every tick.  With backtrace,
 * the first report of a stall is followed by the stuck thread's stack
 * ("  #3 ./app(parse_request+0x5b)[0x...]"), taken by sending it
 * opts.signal: its handler writes backtrace_symbols_fd() into a pipe the
 * watchdog reads.  Once the iteration ends, the loop counts it in the
 * `blocked` and `blocked_max_ns` figures above (busy time at or past the
 * threshold; insight enabled).
 *
 * The thread wakes every threshold/4 (at least 5 ms, at most 50 ms): that
 * is the resolution of both times it reports.  Callbacks are timed by
 * neither clock reads nor syscalls on the loop thread: while the watchdog
 * runs, each callback publishes what it is (a few relaxed stores, about
 * 55 instructions for a connection callback on x86-64); while it is off,
 * nothing (docs/latency.md).
 *
 * The signal (default SIGRTMIN+3) is only used if its disposition is
 * SIG_DFL at the start: a handler is installed (SA_RESTART) and the old
 * disposition restored at the stop.  If the application handles or
 * ignores it, there are no backtraces (said once, at INFO).  A system call
 * the stuck callback is in when the signal comes is restarted where Linux
 * restarts it with SA_RESTART; others (nanosleep, poll, epoll_wait...)
 * return EINTR.  If the stuck thread blocks the signal, the watchdog says
 * so after 1 s and takes no more backtraces in this run (and leaves its
 * handler installed at the stop, so that the still pending signal cannot
 * kill the process).
 *
 * A fork child does not inherit the watchdog: its thread is not there,
 * crest_watchdog_running() is false in the child, and the child may start
 * its own (the parent's pipe is released then, or at a stop).
 */
typedef struct crest_watchdog_opts {
    uint32_t threshold_ms;      /* a loop busy this long is blocked:
                                   default 100, at least 1 */
    bool backtrace;             /* take the stuck thread's stack: default
                                   true */
    int signal;                 /* for the stack: default 0 = SIGRTMIN+3;
                                   not SIGKILL, SIGSTOP */
} crest_watchdog_opts_t;

/* The defaults above.  Any thread. */
void crest_watchdog_opts_init(crest_watchdog_opts_t *opts);
/* Start the watchdog thread (opts NULL: the defaults).  Any thread;
 * loops need not exist yet, and need no call of their own.  Runs no
 * callback.  0; -EALREADY if running; -EINVAL for threshold_ms 0 or a
 * signal out of range, SIGKILL or SIGSTOP; with backtrace, -errno of
 * pipe2() or sigaction() or crest_fd_register's; pthread_create()'s error
 * negated (-EAGAIN). */
int crest_watchdog_start(const crest_watchdog_opts_t *opts);
/* Stop it: the loops stop publishing, the thread is joined, the pipe
 * closed, the signal's disposition restored.  Safe when not running.  Any
 * thread but the watchdog's own (a log hook it calls: logged, ignored). */
void crest_watchdog_stop(void);
/* Any thread. */
bool crest_watchdog_running(void);

#ifdef __cplusplus
}
#endif
#endif
