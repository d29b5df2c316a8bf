/* bench_worker: one crest-bench thread, with its own crest loop and its
 * share of the connections.
 *
 * The main thread fills a bench_cfg_t (read-only once workers start, except
 * the atomic stop fields), starts one worker per thread, and joins them.
 * Phases need no messages between threads: the window boundaries are
 * CLOCK_MONOTONIC instants fixed before the workers start, every reply is
 * timestamped and counted only if it lands inside the window, and each
 * loop's tick timer (every 50 ms) notices the end of the run, or the stop
 * request the main thread stores on SIGINT/SIGTERM, and begins the drain. */
#ifndef BENCH_WORKER_H
#define BENCH_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <crest/addr.h>

#include "bench_result.h"

typedef enum bench_mode {
    BENCH_MODE_RAW = 0,   /* payload; the echo is the same bytes */
    BENCH_MODE_LINE,      /* payload "\n"; the reply is "echo: " payload "\n" */
    BENCH_MODE_FRAME      /* 4-byte big-endian length, payload; echoed as is */
} bench_mode_t;

const char *bench_mode_name(bench_mode_t mode);

typedef struct bench_cfg {
    bench_mode_t mode;
    crest_addr_t target;
    const crest_addr_t *binds;  /* source addresses, round-robin; NULL: none */
    unsigned nbinds;
    unsigned conns;             /* in total, split over every thread of every
                                   process */
    unsigned threads;           /* per process */
    unsigned procs;             /* client processes (-j); 0 or 1: just this one */
    unsigned proc_index;        /* this process's index, 0 .. procs-1 */
    unsigned pipeline;          /* requests in flight per connection */
    size_t size;                /* payload bytes per message (the most, with
                                   --size-random) */
    size_t size_min;            /* --size-random: the least; == size when
                                   every message has the same size */
    double rate;                /* msgs/s over all connections; 0: closed loop */
    bool by_count;              /* -n given: a fixed number of messages */
    uint64_t per_conn;          /* -n: replies per connection (0: connect and
                                   close, for measuring the setup cost) */
    uint32_t connect_timeout_ms;
    uint64_t timeout_ns;        /* a reply overdue by this much is an error */

    /* Phases, CLOCK_MONOTONIC ns, fixed before the workers start. */
    uint64_t t0_ns;             /* connecting (and sending) begins */
    uint64_t win_start_ns;      /* replies from here ... */
    uint64_t win_end_ns;        /* ... to here are measured; UINT64_MAX: no end */

    /* Written by the main thread, read by the workers' tick timers. */
    _Atomic uint64_t stop_ns;   /* UINT64_MAX until SIGINT/SIGTERM */
    atomic_bool hurry;          /* a second signal: do not wait for replies */

    /* What requests and replies look like: bench_cfg_prepare(). */
    uint8_t *pattern;           /* payload of (conn, seq) is a window of it */
    size_t pattern_len;
    uint8_t req_prefix[4], rep_prefix[8];
    size_t req_prefix_len, rep_prefix_len;
    const char *req_suffix, *rep_suffix;
    size_t req_suffix_len, rep_suffix_len;
} bench_cfg_t;

/* Build the payload pattern and the framing pieces for cfg->mode and
 * cfg->size.  0 or -ENOMEM. */
int bench_cfg_prepare(bench_cfg_t *cfg);
void bench_cfg_release(bench_cfg_t *cfg);

/* What the main thread shows once a second (published every tick). */
typedef struct bench_progress {
    uint64_t replies;           /* verified replies so far, any phase */
    uint64_t open;              /* connections open now */
    uint64_t errors;
    bool done;                  /* the worker's loop has returned */
} bench_progress_t;

typedef struct bench_worker bench_worker_t;

/* Start worker index (0 .. cfg->threads-1) in a new thread.  0 or -errno.
 * Its connections are those of lane proc_index * threads + index of the
 * procs * threads lanes of the whole run. */
int bench_worker_start(const bench_cfg_t *cfg, unsigned index, bench_worker_t **wp);
void bench_worker_progress(const bench_worker_t *w, bench_progress_t *out);
/* Join the thread, merge its result into *into, free the worker.  Returns
 * 0, or the -errno that kept the worker from running (loop creation, ...).
 * *fds_leaked gets what crest_loop_destroy() reported for its loop. */
int bench_worker_join(bench_worker_t *w, bench_result_t *into, int *fds_leaked);

#endif
