/* The log-linear histogram (hist.h).  Index of v with S sub-bits:
 *   v < 2^S:   v itself
 *   otherwise: k = floor(log2 v), shift = k - S, index = shift * 2^S +
 *              (v >> shift), the top S+1 bits of v lying in [2^S, 2^(S+1))
 * so indexes are contiguous and grow with v; past 2^MAX_BITS all values
 * share the last index. */
#include <string.h>

#include "internal.h"

void crest_hist_reset(crest_hist_t *h) {
    memset(h, 0, sizeof *h);
}

unsigned crest_hist_index(uint64_t v) {
    return crest__hist_index(v);
}

static unsigned index_shift(unsigned index) {
    if (index < 2 * CREST_HIST_SUB_COUNT)
        return 0;
    return (index >> CREST_HIST_SUB_BITS) - 1;
}

uint64_t crest_hist_lowest(unsigned index) {
    if (index >= CREST_HIST_BUCKETS)
        index = CREST_HIST_BUCKETS - 1;
    unsigned shift = index_shift(index);
    uint64_t m = index - ((uint64_t)shift << CREST_HIST_SUB_BITS);
    return m << shift;
}

uint64_t crest_hist_highest(unsigned index) {
    if (index >= CREST_HIST_BUCKETS - 1)
        return UINT64_MAX; /* the last bucket holds everything above */
    return crest_hist_lowest(index + 1) - 1;
}

void crest_hist_record_n(crest_hist_t *h, uint64_t v, uint64_t n) {
    if (n == 0)
        return;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
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
    for (unsigned i = 0; i < CREST_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
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
    if (h->count == 0)
        return 0;
    if (pct >= 100.0)
        return h->max;
    if (pct < 0.0)
        pct = 0.0;
    double want = pct / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = crest__hist_index(h->min); i < CREST_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = crest_hist_highest(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

double crest_hist_mean(const crest_hist_t *h) {
    return h->count ? (double)h->sum / (double)h->count : 0.0;
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
