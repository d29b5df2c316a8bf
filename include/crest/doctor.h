/* doctor.h: turn a window of a loop's figures (insight.h) into findings:
 * why latency is high, with the evidence in numbers and one sentence of
 * advice.  The doctor only reads snapshots; it never reaches into a loop
 * or a connection.  Rules and thresholds: docs/latency.md (the doctor's
 * section: docs/latency.md).
 *
 * Each finding has a cause from a fixed vocabulary (its key is what the
 * text line begins with and the JSON "cause" carries):
 *   slow_callback loop_blocked loop_saturated cpu_starved accept_queue
 *   slow_reader sndbuf_limited nagle network fd_growth pool_exhausted
 *   slow_response
 * A window with nothing wrong has no finding, and says so ("no latency
 * problem found") with the headline figures.
 *
 * Usage, with two snapshots taken some seconds apart:
 *     crest_insight_window(win, now, before);
 *     crest_doctor_diagnose(win, NULL, &dx);
 *     crest_diagnosis_text(&dx, buf, sizeof buf);
 *
 * Pure functions: any thread, no callbacks, no allocation. */
#ifndef CREST_DOCTOR_H
#define CREST_DOCTOR_H

#include <stddef.h>
#include <stdint.h>

#include "insight.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum crest_cause {
    CREST_CAUSE_SLOW_CALLBACK,
    CREST_CAUSE_LOOP_BLOCKED,
    CREST_CAUSE_LOOP_SATURATED,
    CREST_CAUSE_CPU_STARVED,
    CREST_CAUSE_ACCEPT_QUEUE,
    CREST_CAUSE_SLOW_READER,
    CREST_CAUSE_SNDBUF_LIMITED,
    CREST_CAUSE_NAGLE,
    CREST_CAUSE_NETWORK,
    CREST_CAUSE_FD_GROWTH,
    CREST_CAUSE_POOL_EXHAUSTED,
    CREST_CAUSE_SLOW_RESPONSE,
    CREST_CAUSE_COUNT
} crest_cause_t;

const char *crest_cause_key(crest_cause_t cause); /* "slow_callback", ... */

typedef enum crest_severity {
    CREST_SEVERITY_INFO,
    CREST_SEVERITY_WARNING,
    CREST_SEVERITY_CRITICAL
} crest_severity_t;

const char *crest_severity_name(crest_severity_t s); /* "info", ... */

typedef struct crest_finding {
    crest_cause_t cause;
    crest_severity_t severity;
    char evidence[256];    /* the numbers behind it, in words */
    char advice[200];      /* one sentence */
} crest_finding_t;

#define CREST_FINDINGS_MAX 16

typedef struct crest_diagnosis {
    /* Headline figures of the window */
    uint64_t window_ns;
    uint64_t iterations;
    uint64_t busy_p99_ns;       /* iteration busy time, p99 */
    uint64_t busy_max_ns;
    double utilization;         /* busy / wall over the window, 0..1 */
    uint64_t rx_dwell_p99_ns;   /* 0 when rx_timestamps is off */
    uint64_t rtt_p99_ns;        /* 0 without TCP samples */
    uint64_t http_response_p99_ns; /* insight.h http_response_time, p99;
                                      0 without HTTP responses */
    unsigned n;                 /* findings */
    crest_finding_t findings[CREST_FINDINGS_MAX]; /* most severe first */
} crest_diagnosis_t;

/* Thresholds of the rules (docs/latency.md says what each one
 * means and why its default is what it is).  Fill with
 * crest_doctor_opts_init(), then change what you need. */
typedef struct crest_doctor_opts {
    uint32_t slow_callback_min;      /* slow callbacks in the window to
                                        report (default 1) */
    uint32_t blocked_ms;             /* a callback this long is a blocked
                                        loop (default 100; 0 means 100) */
    double saturated_utilization;    /* busy / wall (default 0.90) */
    double cpu_starved_fraction;     /* run-queue wait / wall (default 0.10) */
    uint32_t accept_drops_min;       /* ListenOverflows+Drops (default 1) */
    double slow_reader_fraction;     /* rwnd-limited / busy (default 0.20) */
    double sndbuf_limited_fraction;  /* sndbuf-limited / busy (default 0.20) */
    double nagle_fraction;           /* held / checked (default 0.10) */
    uint32_t nagle_min;              /* held, at least (default 3) */
    double retrans_fraction;         /* retransmits / segments (default 0.01) */
    uint32_t rtt_p99_ms;             /* p99 rtt (default 50) */
    uint32_t fd_growth_min;          /* net growth per origin (default 64) */
    /* Added with the rules: */
    uint32_t min_window_ms;          /* loop_saturated and cpu_starved speak
                                        only on a window at least this long
                                        (default 1000) */
    uint32_t saturated_busy_p99_us;  /* loop_saturated: the latency it must
                                        cost, as p99 iteration busy time or
                                        p99 receive dwell (default 1000) */
    double accept_queue_fraction;    /* accept_queue (info): the longest
                                        sampled queue against its backlog
                                        (default 0.75) */
    uint32_t tcp_busy_min_ms;        /* slow_reader, sndbuf_limited: sending
                                        time (tcpi_busy_time, summed) needed
                                        to judge (default 100) */
    uint32_t write_stall_p99_ms;     /* slow_reader without TCP_INFO: p99
                                        write stall (default 100) ... */
    uint32_t write_stalls_min;       /* ... over at least this many stalls
                                        (default 8) */
    uint32_t nagle_checks_min;       /* nagle: sampled writes needed
                                        (default 20) */
    uint32_t network_samples_min;    /* network: TCP_INFO samples (closed
                                        connections) needed (default 10) */
    uint32_t network_segs_min;       /* network: segments sent needed for
                                        the retransmit rate (default 1000) */
    uint32_t fd_unregistered_max;    /* fd_growth (info): fds the registry
                                        does not know (default 1024) */
    double slow_callback_share;      /* slow_callback: iterations with a
                                        slow callback / iterations, at
                                        least (default 0.001: they reach
                                        the p99.9 iteration; 0 reports
                                        every one) */
    uint32_t http_response_p99_ms;   /* slow_response: p99 HTTP response
                                        time (insight.h) at least this
                                        (default 100; 0 means 100; a
                                        long-poll server raises it) ... */
    uint32_t http_responses_min;     /* ... over at least this many
                                        responses (default 20) */
} crest_doctor_opts_t;

/* The defaults above.  Any thread. */
void crest_doctor_opts_init(crest_doctor_opts_t *opts);

/* Findings of one window (crest_insight_window) or of a whole run (a
 * snapshot as it is, or a group's sum: loops > 1 counts each loop's wall
 * time).  At most one finding per cause, most severe first (ties in the
 * order of crest_cause_t); out->n == 0 for a healthy window.  Every rule
 * needs enough data to speak (a window too short, too few samples: no
 * finding).  opts NULL: the defaults.
 * Returns 0, or -EINVAL: window or out NULL, or a fraction in opts
 * negative or NaN.  Any thread; no callbacks; no allocation. */
int crest_doctor_diagnose(const crest_insight_t *window, const crest_doctor_opts_t *opts,
                          crest_diagnosis_t *out);

/* Text for people: one line per finding,
 *     "<cause> <severity>: <evidence>; advice: <advice>\n"
 * or, with none, one line "no latency problem found (window 10.0 s:
 * ...headline figures...)\n".
 * JSON for machines, one line: {"findings":[{"cause":...,"severity":...,
 * "evidence":...,"advice":...}],"headline":{"window_ns":...,
 * "iterations":...,"busy_p99_ns":...,"busy_max_ns":...,"utilization":...,
 * "rx_dwell_p99_ns":...,"rtt_p99_ns":...,"http_response_p99_ns":...}}
 * (strings escaped: quotes,
 * backslashes, control characters; bytes of 0x80 and above as they are).
 * Both write at most len bytes, NUL included, and always NUL-terminate
 * when len > 0 (buf may be NULL when len is 0); they return what snprintf
 * returns: the length the whole text needs, without the NUL (so a return
 * >= len means it was cut).  -EINVAL: dx NULL, or buf NULL with len > 0;
 * -EOVERFLOW: the text would exceed INT_MAX.  Any thread. */
int crest_diagnosis_text(const crest_diagnosis_t *dx, char *buf, size_t len);
int crest_diagnosis_json(const crest_diagnosis_t *dx, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
