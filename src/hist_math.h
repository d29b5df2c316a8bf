/* hist_math.h: the arithmetic of crest's log-linear histograms, written
 * once for every precision.  Two use it:
 *   - crest_hist_t (include/crest/hist.h, src/hist.c, the recording hot
 *     path crest__hist_record in internal.h): S = 4, top = 40;
 *   - crest-bench's bench_hist_t (samples/bench_hist.c): S = 7, top = 64
 *     (finer, so that its printed percentiles show 1% differences).
 *
 * The layout, for S sub-bucket bits and values up to 2^top:
 *   v < 2^S:    bucket v (exact);
 *   otherwise:  k = floor(log2 v), shift = k - S; the top S+1 bits of v,
 *               m = v >> shift, lie in [2^S, 2^(S+1)), and the bucket is
 *               shift * 2^S + m;
 *   k >= top:   the last bucket (never, when top = 64).
 * Indexes are contiguous and grow with v: shift 0 covers 2^S .. 2^(S+1)-1
 * exactly, and each later shift adds 2^S buckets of width 2^shift, at most
 * 1/2^S of their lowest value.  A value is reported as its bucket's upper
 * edge: never understated, overstated by less than 1/2^S of the value.
 * There are (top - S + 1) * 2^S buckets.
 *
 * Header-only and self-contained (static inline, <stdint.h> only): the
 * samples link the public libcrest, which exports no crest__ symbol, and
 * include this header directly.  Every function takes S and top as
 * arguments; callers pass constants, so each inlines to the code a
 * fixed-S version would be (crest__hist_record stays as short as before).
 * Pure functions on the values they are given; no thread-safety concerns,
 * no callbacks. */
#ifndef CREST_HIST_MATH_H
#define CREST_HIST_MATH_H

#include <stdint.h>

/* How many buckets S sub-bits and values up to 2^top take: a constant
 * expression, for array sizes. */
#define CREST__HIST_NBUCKETS(s, top) ((unsigned)((top) - (s) + 1) << (s))

/* The bucket of v. */
static inline unsigned crest__hist_index_of(uint64_t v, unsigned s, unsigned top) {
    if (v < (UINT64_C(1) << s))
        return (unsigned)v;
    unsigned k = 63u - (unsigned)__builtin_clzll(v);
    if (k >= top)
        return CREST__HIST_NBUCKETS(s, top) - 1;
    unsigned shift = k - s;
    return (shift << s) + (unsigned)(v >> shift);
}

/* The lowest value of bucket i (indexes past the last count as the last). */
static inline uint64_t crest__hist_lowest_of(unsigned i, unsigned s, unsigned top) {
    if (i >= CREST__HIST_NBUCKETS(s, top))
        i = CREST__HIST_NBUCKETS(s, top) - 1;
    /* The width exponent: 0 for the exact buckets and for shift 0. */
    unsigned shift = i < (2u << s) ? 0 : (i >> s) - 1;
    uint64_t m = i - ((uint64_t)shift << s);
    return m << shift;
}

/* The highest value of bucket i: UINT64_MAX for the last, which holds
 * everything above. */
static inline uint64_t crest__hist_highest_of(unsigned i, unsigned s, unsigned top) {
    if (i >= CREST__HIST_NBUCKETS(s, top) - 1)
        return UINT64_MAX;
    return crest__hist_lowest_of(i + 1, s, top) - 1;
}

/* Widens a histogram's exact extremes [*min, *max] to take in values from
 * lo to hi, count being how many it held before them.  While count is 0,
 * *min is taken from lo whatever it held: crest_hist_t keeps 0 there while
 * empty, bench_hist_t UINT64_MAX.  The caller adds to the buckets, count
 * and sum itself (in the order of its choice: crest__hist_record's is the
 * per-message path). */
static inline void crest__hist_widen(uint64_t *min, uint64_t *max, uint64_t count, uint64_t lo,
                                     uint64_t hi) {
    if (count == 0 || lo < *min)
        *min = lo;
    if (hi > *max)
        *max = hi;
}

/* dst[i] += src[i] over nbuckets buckets. */
static inline void crest__hist_add_buckets(uint64_t *dst, const uint64_t *src, unsigned nbuckets) {
    for (unsigned i = 0; i < nbuckets; i++)
        dst[i] += src[i];
}

/* The value at percentile pct (0..100) of count values, min and max the
 * exact extremes: the upper edge of the first bucket where the rank
 * ceil(pct% of count) (at least 1) is reached, capped at max.  0 when
 * count is 0; pct >= 100 gives max, pct < 0 counts as 0. */
static inline uint64_t crest__hist_percentile_of(const uint64_t *buckets, unsigned s, unsigned top,
                                                 uint64_t count, uint64_t min, uint64_t max,
                                                 double pct) {
    if (count == 0)
        return 0;
    if (pct >= 100.0)
        return max;
    if (pct < 0.0)
        pct = 0.0;
    double want = pct / 100.0 * (double)count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    unsigned n = CREST__HIST_NBUCKETS(s, top);
    for (unsigned i = crest__hist_index_of(min, s, top); i < n; i++) {
        seen += buckets[i];
        if (seen >= rank) {
            uint64_t v = crest__hist_highest_of(i, s, top);
            return v < max ? v : max;
        }
    }
    return max; /* not reached while the buckets add up to count */
}

/* The exact mean; 0 when count is 0. */
static inline double crest__hist_mean_of(uint64_t sum, uint64_t count) {
    return count ? (double)sum / (double)count : 0.0;
}

#endif
