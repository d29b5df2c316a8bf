/* bench_result: what one crest-bench run measured, and how it is printed.
 *
 * A result is a plain struct with no pointers (fixed-size arrays only), so
 * that results from several threads, or from several client
 * processes (-j N, sent back over a pipe as raw bytes: same binary, same
 * layout), merge with bench_result_merge() into one, exactly.  Times are
 * CLOCK_MONOTONIC nanoseconds, which all threads and processes of one host
 * share, so merged windows are comparable.
 *
 * Errors are counted per connection: the first error on a connection
 * closes it (the byte stream is out of step after a mismatch anyway), so
 * "errors=3" means three connections failed, and the first error of each
 * kind is kept as text for the report. */
#ifndef BENCH_RESULT_H
#define BENCH_RESULT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bench_hist.h"

typedef enum bench_err {
    BENCH_ERR_CONNECT_FAILED = 0, /* refused, unreachable, no fd, bind failed */
    BENCH_ERR_CONNECT_TIMEOUT,    /* --connect-timeout elapsed */
    BENCH_ERR_MISMATCH,           /* a reply byte differs from what was expected */
    BENCH_ERR_UNEXPECTED,         /* bytes arrived with no request outstanding */
    BENCH_ERR_CLOSED_EARLY,       /* the peer closed (EOF, reset, I/O error) mid-run */
    BENCH_ERR_TIMEOUT,            /* a reply did not come within --timeout */
    BENCH_ERR_WRITE_FAILED,       /* crest_conn_write failed (out of memory, ...) */
    BENCH_ERR_COUNT
} bench_err_t;

/* "connect_failed", "mismatch", ...: the key=value and JSON names. */
const char *bench_err_key(bench_err_t kind);

#define BENCH_DETAIL_MAX 160
#define BENCH_RESULT_VERSION 2u

typedef struct bench_result {
    uint32_t version;              /* BENCH_RESULT_VERSION: layout check for -j */
    uint32_t workers;              /* threads (or processes) merged in */
    uint64_t conns_attempted;
    uint64_t conns_established;    /* on_open ran */
    uint64_t msgs;                 /* verified replies received in the window */
    uint64_t payload_bytes;        /* their payload, one way */
    uint64_t replies_total;        /* verified replies, warm-up and drain included */
    uint64_t unsent;               /* open loop: due but never sent (server too slow) */
    uint64_t client_reads;         /* crest's read/write syscalls on our side, */
    uint64_t client_writes;        /* whole run (crest_loop_conn_stats) */
    uint64_t window_start_ns;      /* the measured window, CLOCK_MONOTONIC; */
    uint64_t window_end_ns;        /* merged as [min start, max end] */
    uint64_t first_connect_ns;     /* the first connect() (UINT64_MAX: none) */
    uint64_t last_open_ns;         /* the last on_open (0: none); together, the
                                      time it took to establish them all */
    uint64_t errors[BENCH_ERR_COUNT];
    char detail[BENCH_ERR_COUNT][BENCH_DETAIL_MAX]; /* the first of each kind */
    bench_hist_t latency;          /* ns, replies in the window */
    bench_hist_t connect;          /* ns, connect() to on_open, every connection */
} bench_result_t;

void bench_result_init(bench_result_t *r);
/* dst += src (histograms, counters, window, first error details). */
void bench_result_merge(bench_result_t *dst, const bench_result_t *src);
/* Count one error of kind; the first one's text is kept. */
void bench_result_error(bench_result_t *r, bench_err_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint64_t bench_result_errors(const bench_result_t *r);
/* The measured window in seconds (0 if empty). */
double bench_result_seconds(const bench_result_t *r);
/* From the first connect() to the last connection established, in seconds
 * (0 if none was). */
double bench_result_establish_seconds(const bench_result_t *r);

/* How the run was set up: printed with the result. */
typedef struct bench_run_info {
    const char *version;       /* crest_version() */
    const char *mode;          /* "raw", "line", "frame" */
    const char *target;        /* "127.0.0.1:7000" */
    uint64_t size;             /* payload bytes per message (the most) */
    uint64_t size_min;         /* --size-random: the least; == size if fixed */
    unsigned conns, threads, pipeline;
    unsigned procs;            /* client processes (-j); threads is per process */
    double rate;               /* msgs/s, 0: closed loop */
    double duration_s;         /* 0 with -n and no deadline */
    double warmup_s;
    bool by_count;             /* -n given */
    uint64_t per_conn;         /* -n */
    unsigned binds;            /* source addresses used (0: kernel's choice) */
    int fds_leaked;            /* after the loops were destroyed */
    bool interrupted;          /* SIGINT/SIGTERM cut the run short */
} bench_run_info_t;

/* The human summary (several lines). */
void bench_result_print_human(FILE *out, const bench_run_info_t *info, const bench_result_t *r);
/* One line: "crest-bench: key=value ...". */
void bench_result_print_kv(FILE *out, const bench_run_info_t *info, const bench_result_t *r);
/* One JSON object (with a trailing newline). */
void bench_result_print_json(FILE *out, const bench_run_info_t *info, const bench_result_t *r);

#endif
