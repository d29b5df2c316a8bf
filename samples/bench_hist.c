/* bench_hist: crest-bench's log-linear histogram, S = 7 over the whole
 * 64-bit range (see bench_hist.h for the error bound).  The index, bucket
 * edges, percentile and mean are src/hist_math.h's, the same code as the
 * library's crest_hist_t with other constants. */
#include "bench_hist.h"

#include <string.h>

#define S BENCH_HIST_SUB_BITS
#define TOP BENCH_HIST_TOP_BITS

void bench_hist_init(bench_hist_t *h) {
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned bench_hist_index(uint64_t v) {
    return crest__hist_index_of(v, S, TOP);
}

uint64_t bench_hist_lowest(unsigned index) {
    return crest__hist_lowest_of(index, S, TOP);
}

uint64_t bench_hist_highest(unsigned index) {
    return crest__hist_highest_of(index, S, TOP);
}

void bench_hist_record_n(bench_hist_t *h, uint64_t v, uint64_t n) {
    if (n == 0)
        return;
    crest__hist_widen(&h->min, &h->max, h->count, v, v);
    h->buckets[bench_hist_index(v)] += n;
    h->count += n;
    h->sum += v * n;
}

void bench_hist_record(bench_hist_t *h, uint64_t v) {
    bench_hist_record_n(h, v, 1);
}

void bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src) {
    if (src->count == 0)
        return;
    crest__hist_add_buckets(dst->buckets, src->buckets, BENCH_HIST_BUCKETS);
    crest__hist_widen(&dst->min, &dst->max, dst->count, src->min, src->max);
    dst->count += src->count;
    dst->sum += src->sum;
}

uint64_t bench_hist_percentile(const bench_hist_t *h, double pct) {
    return crest__hist_percentile_of(h->buckets, S, TOP, h->count, h->min, h->max, pct);
}

double bench_hist_mean(const bench_hist_t *h) {
    return crest__hist_mean_of(h->sum, h->count);
}
