/* bench_hist: the log-linear histogram (see bench_hist.h for the error
 * bound and its proof in one line).
 *
 * Index of v, with S sub-bits:
 *   v < 2^S:   v itself (exact buckets 0 .. 2^S-1)
 *   otherwise: let k = floor(log2 v) >= S and shift = k - S; the top S+1
 *              bits m = v >> shift lie in [2^S, 2^(S+1)), and the index is
 *              shift * 2^S + m.
 * Indexes are contiguous and increase with v: shift 0 covers 2^S .. 2^(S+1)-1
 * exactly (width 1), and each later shift adds 2^S buckets of width 2^shift.
 * The largest index, for v = 2^64 - 1, is (63-S) * 2^S + 2^(S+1) - 1. */
#include "bench_hist.h"

#include <string.h>

void bench_hist_init(bench_hist_t *h) {
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned bench_hist_index(uint64_t v) {
    if (v < BENCH_HIST_SUB_COUNT)
        return (unsigned)v;
    unsigned k = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = k - BENCH_HIST_SUB_BITS;
    return (shift << BENCH_HIST_SUB_BITS) + (unsigned)(v >> shift);
}

/* The width exponent of a bucket: 0 for the exact ones and for shift 0. */
static unsigned index_shift(unsigned index) {
    if (index < 2 * BENCH_HIST_SUB_COUNT)
        return 0;
    return (index >> BENCH_HIST_SUB_BITS) - 1;
}

uint64_t bench_hist_lowest(unsigned index) {
    unsigned shift = index_shift(index);
    uint64_t m = index - ((uint64_t)shift << BENCH_HIST_SUB_BITS);
    return m << shift;
}

uint64_t bench_hist_highest(unsigned index) {
    unsigned shift = index_shift(index);
    /* lowest + (2^shift - 1): written so that the top bucket gives exactly
     * UINT64_MAX without overflowing. */
    return bench_hist_lowest(index) + ((UINT64_C(1) << shift) - 1);
}

void bench_hist_record_n(bench_hist_t *h, uint64_t v, uint64_t n) {
    if (n == 0)
        return;
    h->buckets[bench_hist_index(v)] += n;
    h->count += n;
    h->sum += v * n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void bench_hist_record(bench_hist_t *h, uint64_t v) {
    bench_hist_record_n(h, v, 1);
}

void bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src) {
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t bench_hist_percentile(const bench_hist_t *h, double pct) {
    if (h->count == 0)
        return 0;
    if (pct >= 100.0)
        return h->max;
    if (pct < 0.0)
        pct = 0.0;
    /* The rank of the value asked for: ceil(pct% of count), at least 1. */
    double want = pct / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = bench_hist_index(h->min); i < BENCH_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = bench_hist_highest(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max; /* not reached when count matches the buckets */
}

double bench_hist_mean(const bench_hist_t *h) {
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}
