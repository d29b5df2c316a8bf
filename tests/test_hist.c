/* Tests for crest-bench's latency histogram (samples/bench_hist.c): the
 * bucket layout, the relative error bound, percentiles of known
 * distributions, and merging; and that it and the library's crest_hist_t,
 * one arithmetic (src/hist_math.h) at two precisions, agree on the same
 * data.  No network, no loop: samples/bench_hist.c, the library's
 * crest_hist_* and cmocka. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../samples/bench_hist.h"
#include "crest/hist.h"

static bench_hist_t *new_hist(void) {
    bench_hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    bench_hist_init(h);
    return h;
}

/* A reproducible 64-bit generator (splitmix64). */
static uint64_t rnd(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* v lies in its bucket, and the bucket's upper edge overstates v by less
 * than BENCH_HIST_MAX_REL_ERROR of v. */
static void check_value(uint64_t v) {
    unsigned i = bench_hist_index(v);
    assert_true(i < BENCH_HIST_BUCKETS);
    uint64_t lo = bench_hist_lowest(i), hi = bench_hist_highest(i);
    assert_true(lo <= v);
    assert_true(v <= hi);
    /* (hi - v) / v < 1/2^S, without floating point: (hi - v) * 2^S < v,
     * or hi == v (which covers v == 0). */
    uint64_t over = hi - v;
    if (over) {
        assert_true(over < (UINT64_C(1) << (64 - BENCH_HIST_SUB_BITS)));
        assert_true((over << BENCH_HIST_SUB_BITS) < v);
    }
}

static void test_layout_contiguous(void **state) {
    (void)state;
    /* Bucket i+1 starts right after bucket i ends; the first starts at 0
     * and the last ends at UINT64_MAX: every value has exactly one bucket. */
    assert_int_equal(bench_hist_lowest(0), 0);
    for (unsigned i = 0; i + 1 < BENCH_HIST_BUCKETS; i++) {
        assert_true(bench_hist_lowest(i) <= bench_hist_highest(i));
        assert_true(bench_hist_highest(i) + 1 == bench_hist_lowest(i + 1));
        assert_int_equal(bench_hist_index(bench_hist_lowest(i)), i);
        assert_int_equal(bench_hist_index(bench_hist_highest(i)), i);
    }
    assert_true(bench_hist_highest(BENCH_HIST_BUCKETS - 1) == UINT64_MAX);
    assert_int_equal(bench_hist_index(UINT64_MAX), BENCH_HIST_BUCKETS - 1);
    /* Values below 2^(S+1) have buckets of width 1 (exact). */
    for (uint64_t v = 0; v < 2 * BENCH_HIST_SUB_COUNT; v++)
        assert_true(bench_hist_lowest(bench_hist_index(v)) == v &&
                    bench_hist_highest(bench_hist_index(v)) == v);
}

static void test_error_bound(void **state) {
    (void)state;
    assert_true(BENCH_HIST_MAX_REL_ERROR < 0.0079);
    for (uint64_t v = 0; v < 200000; v++)
        check_value(v);
    for (unsigned k = 0; k < 64; k++) {
        uint64_t p = UINT64_C(1) << k;
        check_value(p);
        check_value(p - 1);
        check_value(p + 1);
        check_value(p + p / 2);
    }
    check_value(UINT64_MAX);
    uint64_t s = 42;
    for (int i = 0; i < 1000000; i++) {
        uint64_t v = rnd(&s);
        check_value(v >> (v & 63)); /* spread over every magnitude */
    }
    /* The bound is tight: just above a power of two past the exact range,
     * the overstatement approaches (not reaches) 1/128. */
    uint64_t v = UINT64_C(1) << 40;
    double rel = (double)(bench_hist_highest(bench_hist_index(v)) - v) / (double)v;
    assert_true(rel < BENCH_HIST_MAX_REL_ERROR);
    assert_true(rel > 0.99 * BENCH_HIST_MAX_REL_ERROR);
}

static void test_empty(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    assert_int_equal(h->count, 0);
    assert_int_equal(bench_hist_percentile(h, 50), 0);
    assert_int_equal(bench_hist_percentile(h, 100), 0);
    assert_true(bench_hist_mean(h) == 0.0);
    free(h);
}

static void test_single_value(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    bench_hist_record(h, 123456789);
    /* Capped at the exact max: one value reports exactly. */
    assert_int_equal(bench_hist_percentile(h, 0), 123456789);
    assert_int_equal(bench_hist_percentile(h, 50), 123456789);
    assert_int_equal(bench_hist_percentile(h, 99.9), 123456789);
    assert_int_equal(bench_hist_percentile(h, 100), 123456789);
    assert_int_equal(h->min, 123456789);
    assert_int_equal(h->max, 123456789);
    free(h);
}

/* 1..100 once each: every value is in an exact bucket, so percentiles are
 * exact: pN is N. */
static void test_small_exact(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    for (uint64_t v = 1; v <= 100; v++)
        bench_hist_record(h, v);
    assert_int_equal(bench_hist_percentile(h, 1), 1);
    assert_int_equal(bench_hist_percentile(h, 50), 50);
    assert_int_equal(bench_hist_percentile(h, 90), 90);
    assert_int_equal(bench_hist_percentile(h, 99), 99);
    assert_int_equal(bench_hist_percentile(h, 99.5), 100);
    assert_int_equal(bench_hist_percentile(h, 100), 100);
    assert_true(bench_hist_mean(h) == 50.5);
    free(h);
}

/* The true percentile t and the reported r: t <= r < t * (1 + 1/128). */
static void assert_near(uint64_t reported, uint64_t truth) {
    assert_true(reported >= truth);
    assert_true((double)(reported - truth) < (double)truth * BENCH_HIST_MAX_REL_ERROR);
}

/* Uniform 1..1,000,000 (think: 1 ns .. 1 ms). */
static void test_uniform(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    for (uint64_t v = 1; v <= 1000000; v++)
        bench_hist_record(h, v);
    assert_int_equal(h->count, 1000000);
    assert_int_equal(h->min, 1);
    assert_int_equal(h->max, 1000000);
    assert_true(bench_hist_mean(h) == 500000.5);
    assert_near(bench_hist_percentile(h, 50), 500000);
    assert_near(bench_hist_percentile(h, 90), 900000);
    assert_near(bench_hist_percentile(h, 99), 990000);
    assert_near(bench_hist_percentile(h, 99.9), 999000);
    assert_int_equal(bench_hist_percentile(h, 100), 1000000);
    free(h);
}

/* A bimodal distribution like a fast path with a slow tail: 99% at 20 us,
 * 1% at 5 ms.  p99 is still the fast mode, p99.9 the slow one. */
static void test_bimodal(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    bench_hist_record_n(h, 20000, 99000);
    bench_hist_record_n(h, 5000000, 1000);
    assert_near(bench_hist_percentile(h, 50), 20000);
    assert_near(bench_hist_percentile(h, 99), 20000);
    assert_near(bench_hist_percentile(h, 99.01), 5000000);
    assert_int_equal(bench_hist_percentile(h, 99.9), 5000000); /* capped at max */
    assert_true(bench_hist_mean(h) == (99000.0 * 20000 + 1000.0 * 5000000) / 100000);
    free(h);
}

/* A heavy-tailed distribution from a fixed seed (log-uniform-ish, 1 us to
 * about 16 s, like latencies with rare stalls): percentiles agree with the
 * sorted samples within the bound. */
static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_heavy_tail_vs_sorted(void **state) {
    (void)state;
    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof *v);
    assert_non_null(v);
    bench_hist_t *h = new_hist();
    uint64_t s = 7;
    for (int i = 0; i < N; i++) {
        uint64_t r = rnd(&s);
        v[i] = 1000 + (rnd(&s) >> (30 + r % 34));
        bench_hist_record(h, v[i]);
    }
    qsort(v, N, sizeof *v, cmp_u64);
    const double pcts[] = {10, 50, 90, 99, 99.9, 99.99};
    for (size_t k = 0; k < sizeof pcts / sizeof pcts[0]; k++) {
        size_t rank = (size_t)(pcts[k] / 100.0 * N + 0.999999);
        assert_near(bench_hist_percentile(h, pcts[k]), v[rank - 1]);
    }
    assert_int_equal(bench_hist_percentile(h, 100), v[N - 1]);
    assert_int_equal(h->min, v[0]);
    free(v);
    free(h);
}

/* Per-thread histograms merged equal one histogram that saw everything. */
static void test_merge(void **state) {
    (void)state;
    bench_hist_t *all = new_hist(), *a = new_hist(), *b = new_hist(), *c = new_hist();
    uint64_t s = 99;
    for (int i = 0; i < 300000; i++) {
        uint64_t v = rnd(&s) % 50000000; /* 0 .. 50 ms */
        bench_hist_record(all, v);
        bench_hist_record(i % 3 == 0 ? a : i % 3 == 1 ? b : c, v);
    }
    bench_hist_t *m = new_hist();
    bench_hist_merge(m, a);
    bench_hist_merge(m, b);
    bench_hist_merge(m, c);
    assert_int_equal(m->count, all->count);
    assert_true(m->sum == all->sum);
    assert_true(m->min == all->min);
    assert_true(m->max == all->max);
    assert_memory_equal(m->buckets, all->buckets, sizeof all->buckets);
    const double pcts[] = {0, 50, 90, 99, 99.9, 100};
    for (size_t k = 0; k < sizeof pcts / sizeof pcts[0]; k++)
        assert_true(bench_hist_percentile(m, pcts[k]) == bench_hist_percentile(all, pcts[k]));

    /* Merging an empty histogram changes nothing; merging into an empty one
     * copies (min included). */
    bench_hist_t *e = new_hist();
    bench_hist_merge(m, e);
    assert_memory_equal(m, all, sizeof *all);
    bench_hist_merge(e, all);
    assert_memory_equal(e, all, sizeof *all);

    /* Disjoint ranges: the merged percentiles come from both. */
    bench_hist_t *lo = new_hist(), *hi = new_hist();
    bench_hist_record_n(lo, 1000, 900);
    bench_hist_record_n(hi, 1000000, 100);
    bench_hist_merge(lo, hi);
    assert_int_equal(lo->count, 1000);
    assert_near(bench_hist_percentile(lo, 90), 1000);
    assert_int_equal(bench_hist_percentile(lo, 91), 1000000);
    assert_int_equal(lo->min, 1000);
    assert_int_equal(lo->max, 1000000);
    free(lo);
    free(hi);
    free(e);
    free(m);
    free(all);
    free(a);
    free(b);
    free(c);
}

/* Huge values neither overflow the index nor the bucket edges. */
static void test_extremes(void **state) {
    (void)state;
    bench_hist_t *h = new_hist();
    bench_hist_record(h, 0);
    bench_hist_record(h, UINT64_MAX);
    assert_int_equal(h->buckets[0], 1);
    assert_int_equal(h->buckets[BENCH_HIST_BUCKETS - 1], 1);
    assert_int_equal(bench_hist_percentile(h, 50), 0);
    assert_true(bench_hist_percentile(h, 100) == UINT64_MAX);
    assert_true(bench_hist_percentile(h, 75) == UINT64_MAX);
    free(h);
}

/* The two precisions of one arithmetic: crest_hist_t (S = 4) and
 * bench_hist_t (S = 7).  Every crest_hist_t bucket below its last is a run
 * of whole bench_hist_t buckets, so, fed the same values, the fine buckets
 * add up to the coarse ones; the exact figures are equal; and each
 * percentile is the upper edge of the bucket of the same true value t,
 * capped at max: t <= fine < t * (1 + 1/128), t <= coarse < t * (1 + 1/16),
 * fine <= coarse. */
static void test_precisions_agree(void **state) {
    (void)state;
    const uint64_t coarse_top = (UINT64_C(1) << CREST_HIST_MAX_BITS) - 1;

    /* The coarse edges are fine edges. */
    for (unsigned i = 0; i + 1 < CREST_HIST_BUCKETS; i++) {
        uint64_t lo = crest_hist_lowest(i), hi = crest_hist_highest(i);
        assert_true(bench_hist_lowest(bench_hist_index(lo)) == lo);
        assert_true(bench_hist_highest(bench_hist_index(hi)) == hi);
    }

    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof *v);
    assert_non_null(v);
    crest_hist_t *coarse = calloc(1, sizeof *coarse);
    assert_non_null(coarse);
    bench_hist_t *fine = new_hist();
    uint64_t s = 11;
    for (int i = 0; i < N; i++) {
        uint64_t r = rnd(&s);
        /* 0 .. about 2^39 ns (9 minutes), every magnitude, some exact
         * small values; all below the coarse histogram's shared last
         * bucket. */
        v[i] = i % 10 == 0 ? r % 40 : 500 + (rnd(&s) >> (25 + r % 39));
        assert_true(v[i] < coarse_top - (coarse_top >> 5));
        if (i % 4 == 0) {
            crest_hist_record_n(coarse, v[i], 1);
            bench_hist_record_n(fine, v[i], 1);
        } else {
            crest_hist_record(coarse, v[i]);
            bench_hist_record(fine, v[i]);
        }
    }
    qsort(v, N, sizeof *v, cmp_u64);

    assert_int_equal(coarse->count, N);
    assert_int_equal(fine->count, N);
    assert_true(coarse->sum == fine->sum);
    assert_true(coarse->min == fine->min && fine->min == v[0]);
    assert_true(coarse->max == fine->max && fine->max == v[N - 1]);
    assert_true(crest_hist_mean(coarse) == bench_hist_mean(fine));

    /* Rebinning the fine buckets gives the coarse ones exactly. */
    uint64_t *rebinned = calloc(CREST_HIST_BUCKETS, sizeof *rebinned);
    assert_non_null(rebinned);
    for (unsigned j = 0; j < BENCH_HIST_BUCKETS; j++)
        if (fine->buckets[j])
            rebinned[crest_hist_index(bench_hist_lowest(j))] += fine->buckets[j];
    assert_memory_equal(rebinned, coarse->buckets, sizeof coarse->buckets);

    const double pcts[] = {0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100};
    for (size_t k = 0; k < sizeof pcts / sizeof pcts[0]; k++) {
        size_t rank = (size_t)(pcts[k] / 100.0 * N + 0.999999);
        if (rank == 0)
            rank = 1;
        uint64_t t = v[rank - 1];
        uint64_t pf = bench_hist_percentile(fine, pcts[k]);
        uint64_t pc = crest_hist_percentile(coarse, pcts[k]);
        uint64_t ef = bench_hist_highest(bench_hist_index(t)), ec = crest_hist_highest(crest_hist_index(t));
        assert_true(pf == (ef < fine->max ? ef : fine->max));
        assert_true(pc == (ec < coarse->max ? ec : coarse->max));
        assert_true(t <= pf && pf <= pc);
        assert_true((double)(pf - t) < (double)t * BENCH_HIST_MAX_REL_ERROR || pf == t);
        assert_true((double)(pc - t) < (double)t / CREST_HIST_SUB_COUNT || pc == t);
    }

    /* Both are exact where both buckets have width 1 (below 2^(4+1)). */
    for (uint64_t x = 0; x < 2 * CREST_HIST_SUB_COUNT; x++) {
        assert_true(crest_hist_highest(crest_hist_index(x)) == x);
        assert_true(bench_hist_highest(bench_hist_index(x)) == x);
    }

    /* Merged halves agree too. */
    crest_hist_t *c2 = calloc(1, sizeof *c2);
    assert_non_null(c2);
    bench_hist_t *f2 = new_hist();
    crest_hist_add(c2, coarse);
    crest_hist_add(c2, coarse);
    bench_hist_merge(f2, fine);
    bench_hist_merge(f2, fine);
    assert_true(c2->count == f2->count && c2->sum == f2->sum);
    assert_true(c2->min == f2->min && c2->max == f2->max);
    assert_true(crest_hist_percentile(c2, 50) == crest_hist_percentile(coarse, 50));
    assert_true(bench_hist_percentile(f2, 50) == bench_hist_percentile(fine, 50));

    free(f2);
    free(c2);
    free(rebinned);
    free(fine);
    free(coarse);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_contiguous),
        cmocka_unit_test(test_error_bound),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_single_value),
        cmocka_unit_test(test_small_exact),
        cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_bimodal),
        cmocka_unit_test(test_heavy_tail_vs_sorted),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_precisions_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
