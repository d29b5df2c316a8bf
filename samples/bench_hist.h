/* bench_hist: a log-linear latency histogram (HdrHistogram-style).
 *
 * Values (nanoseconds for crest-bench, but any uint64_t) go into buckets:
 * below 2^S every value has its own bucket; above, each power-of-two range
 * [2^k, 2^(k+1)) is split linearly into 2^S sub-buckets of width 2^(k-S).
 * With S = BENCH_HIST_SUB_BITS = 7 (128 sub-buckets):
 *
 *   a bucket's width is at most 1/128 of its lowest value, so reporting a
 *   value as its bucket's upper edge overstates it by less than 1/128 of the
 *   value: relative error < 0.79% (0.78125% is the supremum), never an
 *   understatement.
 *
 * The whole uint64_t range is covered (7,424 buckets, 58 KiB): there is no
 * clamping and no "overflow" bucket.  count, min, max and sum are exact, and
 * percentile results never exceed the exact max.
 *
 * The arithmetic is the library's (src/hist_math.h, also behind
 * crest_hist_t's coarser S = 4); this type only picks the finer S and the
 * whole 64-bit range.
 *
 * A histogram is a plain struct with no pointers: copy it, write it to a
 * pipe, merge it with another (per-thread or per-process histograms add up
 * bucket by bucket, exactly).  Not thread-safe: one writer at a time. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>

#include "hist_math.h"

#define BENCH_HIST_SUB_BITS 7
#define BENCH_HIST_SUB_COUNT (1u << BENCH_HIST_SUB_BITS)
/* Values up to 2^64: no value shares the last bucket with larger ones. */
#define BENCH_HIST_TOP_BITS 64
/* Indexes run to (63 - S) * 2^S + 2^(S+1) - 1; see bench_hist_index(). */
#define BENCH_HIST_BUCKETS CREST__HIST_NBUCKETS(BENCH_HIST_SUB_BITS, BENCH_HIST_TOP_BITS)
/* The bound on (reported - true) / true, as a fraction (strict: <). */
#define BENCH_HIST_MAX_REL_ERROR (1.0 / BENCH_HIST_SUB_COUNT)

typedef struct bench_hist {
    uint64_t count;
    uint64_t min;     /* UINT64_MAX while empty */
    uint64_t max;
    uint64_t sum;     /* wraps only past 1.8e19 (e.g. 1e9 values of 5 hours each) */
    uint64_t buckets[BENCH_HIST_BUCKETS];
} bench_hist_t;

void bench_hist_init(bench_hist_t *h);
void bench_hist_record(bench_hist_t *h, uint64_t value);
/* Record value n times. */
void bench_hist_record_n(bench_hist_t *h, uint64_t value, uint64_t n);
/* dst += src. */
void bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src);

/* The value at percentile pct (0..100): the smallest bucket upper edge
 * below or at which at least pct% of the values lie, capped at the exact
 * max.  0 for an empty histogram; pct >= 100 gives the exact max. */
uint64_t bench_hist_percentile(const bench_hist_t *h, double pct);
/* Exact arithmetic mean; 0 when empty. */
double bench_hist_mean(const bench_hist_t *h);

/* The bucket of a value, and the lowest and highest values it holds. */
unsigned bench_hist_index(uint64_t value);
uint64_t bench_hist_lowest(unsigned index);
uint64_t bench_hist_highest(unsigned index);

#endif
