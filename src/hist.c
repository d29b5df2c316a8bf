/* The log-linear histogram (hist.h), S = CREST_HIST_SUB_BITS and values
 * up to 2^CREST_HIST_MAX_BITS: the arithmetic is src/hist_math.h's, shared
 * with crest-bench's finer histogram; this file adds the public functions,
 * windows and cumulative counts. */
#include <string.h>

#include "internal.h"

#define S CREST_HIST_SUB_BITS
#define TOP CREST_HIST_MAX_BITS
_Static_assert(CREST_HIST_BUCKETS == CREST__HIST_NBUCKETS(S, TOP), "hist.h and hist_math.h agree");

void crest_hist_reset(crest_hist_t *h) {
    memset(h, 0, sizeof *h);
}

unsigned crest_hist_index(uint64_t v) {
    return crest__hist_index(v);
}

uint64_t crest_hist_lowest(unsigned index) {
    return crest__hist_lowest_of(index, S, TOP);
}

uint64_t crest_hist_highest(unsigned index) {
    return crest__hist_highest_of(index, S, TOP);
}

void crest_hist_record_n(crest_hist_t *h, uint64_t v, uint64_t n) {
    if (n == 0)
        return;
    crest__hist_widen(&h->min, &h->max, h->count, v, v);
    h->buckets[crest__hist_index(v)] += n;
    h->count += n;
    h->sum += v * n;
}

void crest_hist_record(crest_hist_t *h, uint64_t v) {
    crest__hist_record(h, v);
}

void crest_hist_add(crest_hist_t *dst, const crest_hist_t *src) {
    if (src->count == 0)
        return;
    crest__hist_add_buckets(dst->buckets, src->buckets, CREST_HIST_BUCKETS);
    crest__hist_widen(&dst->min, &dst->max, dst->count, src->min, src->max);
    dst->count += src->count;
    dst->sum += src->sum;
}

void crest_hist_window(crest_hist_t *dst, const crest_hist_t *newer, const crest_hist_t *older) {
    uint64_t max = newer->max;
    memset(dst, 0, sizeof *dst);
    unsigned lo = CREST_HIST_BUCKETS, hi = 0;
    for (unsigned i = 0; i < CREST_HIST_BUCKETS; i++) {
        uint64_t d = newer->buckets[i] - older->buckets[i];
        dst->buckets[i] = d;
        if (d) {
            if (lo == CREST_HIST_BUCKETS)
                lo = i;
            hi = i;
        }
    }
    dst->count = newer->count - older->count;
    dst->sum = newer->sum - older->sum;
    if (dst->count) {
        dst->min = crest_hist_lowest(lo);
        uint64_t top = crest_hist_highest(hi);
        dst->max = top < max ? top : max;
        if (dst->min > dst->max)
            dst->min = dst->max;
    }
}

uint64_t crest_hist_percentile(const crest_hist_t *h, double pct) {
    return crest__hist_percentile_of(h->buckets, S, TOP, h->count, h->min, h->max, pct);
}

double crest_hist_mean(const crest_hist_t *h) {
    return crest__hist_mean_of(h->sum, h->count);
}

uint64_t crest_hist_count_le(const crest_hist_t *h, uint64_t v) {
    if (h->count == 0)
        return 0;
    unsigned top = crest__hist_index(v);
    uint64_t n = 0;
    for (unsigned i = 0; i <= top; i++)
        if (crest_hist_highest(i) <= v)
            n += h->buckets[i];
    return n;
}
