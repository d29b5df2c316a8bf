/* hist.h: the log-linear histogram every crest latency figure uses (loop
 * iteration time, callback durations, receive-queue dwell, rtt, write
 * stalls), so that the doctor, the reports and /metrics agree.
 *
 * Values (nanoseconds, or any count) go into buckets: below 2^S every value
 * has its own bucket; above, each power-of-two range [2^k, 2^(k+1)) is cut
 * into 2^S equal sub-buckets.  With S = CREST_HIST_SUB_BITS = 4:
 *   - a value is reported as its bucket's upper edge: never understated,
 *     overstated by less than 1/16 (6.25%);
 *   - values at or above 2^CREST_HIST_MAX_BITS (2^40 ns: about 18 minutes)
 *     share the last bucket; count, sum, min and max stay exact.
 * 592 buckets, 4.7 KiB.  (crest-bench keeps a finer histogram, S = 7,
 * computed by the same internal code.)
 *
 * A histogram is a plain struct without pointers; all-zero is an empty
 * histogram.  Copy it, add one to another (per-loop histograms sum exactly
 * across a group), subtract an older copy to get a window.
 * Thread-safety: none; one writer, readers take copies (the loop publishes
 * consistent snapshots: insight.h).  No callbacks. */
#ifndef CREST_HIST_H
#define CREST_HIST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CREST_HIST_SUB_BITS 4
#define CREST_HIST_SUB_COUNT (1u << CREST_HIST_SUB_BITS)
#define CREST_HIST_MAX_BITS 40
#define CREST_HIST_BUCKETS ((CREST_HIST_MAX_BITS - CREST_HIST_SUB_BITS + 1) * CREST_HIST_SUB_COUNT)

typedef struct crest_hist {
    uint64_t count;
    uint64_t sum;      /* of the values recorded (wraps past 1.8e19) */
    uint64_t min;      /* 0 while empty */
    uint64_t max;
    uint64_t buckets[CREST_HIST_BUCKETS];
} crest_hist_t;

void crest_hist_reset(crest_hist_t *h);
void crest_hist_record(crest_hist_t *h, uint64_t value);
void crest_hist_record_n(crest_hist_t *h, uint64_t value, uint64_t n);
/* dst += src. */
void crest_hist_add(crest_hist_t *dst, const crest_hist_t *src);
/* dst = newer - older, where older is an earlier copy of the same
 * histogram: the values recorded between the two.  min and max of a
 * window are not kept by the buckets: they become the lowest and highest
 * edges of the window's non-empty buckets (max capped at newer's max). */
void crest_hist_window(crest_hist_t *dst, const crest_hist_t *newer, const crest_hist_t *older);

/* The value at percentile pct (0..100): the upper edge of the bucket where
 * pct% of the values are reached, capped at max.  0 when empty. */
uint64_t crest_hist_percentile(const crest_hist_t *h, double pct);
double crest_hist_mean(const crest_hist_t *h);
/* How many values are <= v, counted by whole buckets (for cumulative
 * "le" buckets in /metrics): exact when v is a bucket's upper edge. */
uint64_t crest_hist_count_le(const crest_hist_t *h, uint64_t v);

/* The bucket of a value, and the lowest and highest values it holds. */
unsigned crest_hist_index(uint64_t value);
uint64_t crest_hist_lowest(unsigned index);
uint64_t crest_hist_highest(unsigned index);

#ifdef __cplusplus
}
#endif
#endif
