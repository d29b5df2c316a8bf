/* Latency insight, the loop's side (insight.h, hist.h): the histogram, the
 * phase accounting, slow callbacks named by kind, handler, callback and
 * peer, the timing modes and their hysteresis, snapshots from other
 * threads, windows and group sums.
 *
 * Slowness is made for real (a callback spins on the clock for several
 * times the threshold); nothing asserts that anything is fast. */
#include "crest_test.h"

#include <math.h>
#include <stdatomic.h>

/* The slow-callback threshold of these tests, and how long a slow
 * callback spins: far above what valgrind makes of a fast callback. */
#define SLOW_US (RUNNING_ON_VALGRIND ? 50000u : 1000u)
#define SPIN_US (4 * SLOW_US)

static void spin_us(unsigned us) {
    uint64_t end = tu_mono_ns() + (uint64_t)us * 1000u;
    while (tu_mono_ns() < end) {
    }
}

static crest_loop_t *insight_loop(crest_timing_t timing, uint32_t slow_us) {
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.timing = timing;
    o.slow_callback_us = slow_us;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    return loop;
}

static crest_insight_t *snap(crest_loop_t *loop) {
    crest_insight_t *s = malloc(sizeof *s);
    assert_non_null(s);
    assert_int_equal(crest_loop_get_insight(loop, s), 0);
    return s;
}

/* ---- the histogram -------------------------------------------------------- */

static void test_hist_bounds(void **state) {
    (void)state;
    crest_hist_t *h = calloc(1, sizeof *h); /* all-zero: empty */
    assert_int_equal(crest_hist_percentile(h, 50), 0);
    /* Every value lies in its bucket, the buckets grow with the value, and
     * the upper edge overstates by less than 1/16. */
    unsigned prev = 0;
    for (uint64_t v = 0; v < (1ull << 41); v = v < 64 ? v + 1 : v + v / 7) {
        unsigned i = crest_hist_index(v);
        assert_true(i < CREST_HIST_BUCKETS);
        assert_true(i >= prev);
        prev = i;
        assert_true(crest_hist_lowest(i) <= v);
        if (v < (1ull << CREST_HIST_MAX_BITS)) {
            assert_true(crest_hist_highest(i) >= v);
            assert_true((double)(crest_hist_highest(i) - v) < (double)v / 16.0 + 1.0);
        }
    }
    /* Past 2^40 everything shares the last bucket; max stays exact. */
    crest_hist_record(h, UINT64_MAX / 2);
    assert_int_equal(crest_hist_index(UINT64_MAX), CREST_HIST_BUCKETS - 1);
    assert_int_equal(h->max, UINT64_MAX / 2);
    assert_int_equal(crest_hist_percentile(h, 100), UINT64_MAX / 2);
    free(h);
}

static void test_hist_percentiles_window_add(void **state) {
    (void)state;
    crest_hist_t *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *w = calloc(1, sizeof *w);
    for (uint64_t v = 1; v <= 1000; v++)
        crest_hist_record(a, v * 1000); /* 1 us .. 1 ms */
    assert_int_equal(a->count, 1000);
    assert_int_equal(a->min, 1000);
    assert_int_equal(a->max, 1000000);
    uint64_t p50 = crest_hist_percentile(a, 50), p99 = crest_hist_percentile(a, 99);
    assert_true(p50 >= 500000 && p50 < 500000 + 500000 / 16 + 1);
    assert_true(p99 >= 990000 && p99 <= 1000000);
    assert_true(fabs(crest_hist_mean(a) - 500500.0) < 1.0);
    /* cumulative counts for /metrics "le" buckets */
    assert_int_equal(crest_hist_count_le(a, UINT64_MAX), 1000);
    uint64_t le = crest_hist_count_le(a, crest_hist_highest(crest_hist_index(250000)));
    assert_true(le >= 250 && le <= 250 + 250 / 16 + 1);
    /* window: newer - older */
    *b = *a;
    crest_hist_record_n(b, 5000000, 10);
    crest_hist_window(w, b, a);
    assert_int_equal(w->count, 10);
    assert_int_equal(w->sum, 50000000);
    assert_true(w->min <= 5000000 && w->max >= 5000000 && w->max <= b->max);
    assert_int_equal(crest_hist_percentile(w, 50), 5000000);
    /* add */
    crest_hist_add(w, a);
    assert_int_equal(w->count, 1010);
    assert_int_equal(w->min, 1000);
    free(a);
    free(b);
    free(w);
}

/* ---- phases and slow callbacks --------------------------------------------- */

struct spin_ctx {
    unsigned us;   /* spin this long per firing */
    int left;      /* firings left */
    int fired;
};

/* Not static: dladdr names it (the test links with -rdynamic). */
void insight_test_spin_timer(crest_timer_t *t, void *arg);
void insight_test_spin_timer(crest_timer_t *t, void *arg) {
    struct spin_ctx *s = arg;
    s->fired++;
    spin_us(s->us);
    if (--s->left == 0)
        crest_timer_stop(t);
}

static void test_phases_add_up(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_AUTO, SLOW_US);
    struct spin_ctx s = {.us = SPIN_US, .left = 3};
    crest_timer_t *t;
    assert_int_equal(crest_timer_create(loop, insight_test_spin_timer, &s, &t), 0);
    assert_int_equal(crest_timer_start(t, 1, 5), 0);
    RUN_UNTIL(loop, s.fired == 3);
    crest_insight_t *f = snap(loop);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(f->iterations, st.iterations);
    assert_int_equal(f->iteration_busy.count, f->iterations);
    /* the timers' time is where the spinning went: at least 3 x 3 ms */
    assert_true(f->phase_ns[CREST_PHASE_TIMERS] >= 3 * SPIN_US * 1000ull);
    assert_int_equal(f->phase_ns[CREST_PHASE_WAIT], st.wait_ns);
    uint64_t busy = 0;
    for (int p = 0; p < CREST_PHASE_COUNT; p++)
        if (p != CREST_PHASE_WAIT)
            busy += f->phase_ns[p];
    assert_int_equal(busy, st.run_ns); /* the phases are the busy time, exactly */
    assert_true(f->slow_iterations >= 3);
    assert_true(f->iteration_busy.max >= SPIN_US * 1000ull);
    /* each firing was a batch of one: all three are named */
    assert_int_equal(f->slow_by_kind[CREST_CB_TIMER], 3);
    assert_int_equal(f->slow_ring_len, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(f->slow_ring[i].kind, CREST_CB_TIMER);
        assert_int_equal(f->slow_ring[i].batch, 1);
        assert_string_equal(f->slow_ring[i].name, "insight_test_spin_timer");
        assert_true(f->slow_ring[i].duration_ns >= SPIN_US * 1000ull);
    }
    assert_true(tu_log_line_has("slow callback", "timer insight_test_spin_timer", "threshold"));
    free(f);
    crest_timer_destroy(t);
    tu_destroy_loop(loop);
}

/* ---- a slow handler over a real connection --------------------------------- */

struct srv {
    crest_loop_t *loop;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conn;
    uint64_t id;
    unsigned spin_us;
    size_t got;
    int closed;
};

static void s_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->conn = c;
    s->id = crest_conn_id(c);
}

static ssize_t s_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    struct srv *s = crest_conn_handler_ctx(c);
    if (s->spin_us)
        spin_us(s->spin_us);
    s->got += n;
    assert_int_equal(crest_conn_write(c, d, n), 0);
    return (ssize_t)n;
}

static void s_close(crest_conn_t *c, crest_close_reason_t r, int err) {
    (void)c;
    (void)r;
    (void)err;
    struct srv *s = crest_conn_handler_ctx(c);
    s->closed++;
}

static const crest_handler_t slowpoke = {
    .on_open = s_open, .on_data = s_data, .on_close = s_close, .name = "slowpoke"};

static void echo_rounds(struct srv *s, int fd, int rounds) {
    char buf[64];
    for (int i = 0; i < rounds; i++) {
        size_t want = s->got + 5;
        assert_int_equal(write(fd, "hello", 5), 5);
        RUN_UNTIL(s->loop, s->got == want);
        int end = 0;
        assert_int_equal(tu_raw_recv(s->loop, fd, buf, 5, &end), 5);
    }
}

static void test_slow_handler_named(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_AUTO, SLOW_US);
    struct srv s = {.loop = loop};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &slowpoke, &s, &s.l), 0);
    assert_true(crest_listener_address(s.l, s.addr, sizeof s.addr) > 0);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    echo_rounds(&s, fd, 2); /* fast */
    /* A fast round may still pass the threshold on a loaded machine (an
     * ASan build in CI did once): count the slow rounds from here. */
    /* A slow callback logged already (the accept or a fast round, on a
     * loaded machine: an ASan and a TSan build in one CI run) holds the
     * next log line back for a second (insight.c logs at most once a
     * second): wait it out, so the slow rounds' line is written. */
    if (tu_log_line_has("slow ", NULL, NULL))
        tu_sleep_ms(1100);
    crest_insight_t *before = snap(loop);
    s.spin_us = SPIN_US;
    echo_rounds(&s, fd, 3);
    s.spin_us = 0;
    crest_insight_t *f = snap(loop);
    assert_int_equal(f->slow_by_kind[CREST_CB_CONN] - before->slow_by_kind[CREST_CB_CONN], 3);
    const crest_slow_cb_t *r = &f->slow_ring[f->slow_ring_len - 1];
    assert_int_equal(r->kind, CREST_CB_CONN);
    assert_string_equal(r->name, "slowpoke");
    assert_string_equal(r->what, "on_data");
    assert_int_equal(r->conn_id, s.id);
    char peer[CREST_ADDR_STRLEN];
    assert_true(crest_conn_peer(s.conn, peer, sizeof peer) > 0);
    assert_string_equal(r->peer, peer);
    assert_true(r->duration_ns >= SPIN_US * 1000ull);
    assert_true(tu_log_line_has("slow callback: conn slowpoke on_data", "conn #", "took"));
    /* The window holds the three slow ones, not the fast rounds before. */
    crest_insight_t *w = malloc(sizeof *w);
    crest_insight_window(w, f, before);
    assert_int_equal(w->slow_callbacks, 3);
    assert_int_equal(w->slow_ring_len, 3);
    assert_int_equal(w->iterations, f->iterations - before->iterations);
    assert_int_equal(w->since_ns, before->taken_ns);
    free(w);
    free(before);
    free(f);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

/* An accept batch that closes its own listener (from on_open) and runs
 * slow: the listener's endpoint is gone when the batch is described. */
static crest_listener_t *closing_l;
static int closing_opened;

static void close_listener_open(crest_conn_t *c) {
    closing_opened++;
    crest_listener_close(closing_l);
    spin_us(SPIN_US);
    crest_conn_close(c);
}

static ssize_t ignore_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static const crest_handler_t closes_listener = {
    .on_open = close_listener_open, .on_data = ignore_data, .name = "closer"};

static void test_slow_accept_that_closed_its_listener(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_AUTO, SLOW_US);
    char addr[CREST_ADDR_STRLEN];
    closing_opened = 0;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &closes_listener, NULL, &closing_l),
                     0);
    assert_true(crest_listener_address(closing_l, addr, sizeof addr) > 0);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, closing_opened == 1);
    tu_spin(loop, 3);
    crest_insight_t *f = snap(loop);
    assert_int_equal(f->slow_by_kind[CREST_CB_ACCEPT], 1);
    assert_string_equal(f->slow_ring[f->slow_ring_len - 1].name, "closed listener");
    assert_string_equal(f->slow_ring[f->slow_ring_len - 1].what, "on_open");
    assert_string_equal(f->slow_ring[f->slow_ring_len - 1].peer, addr);
    free(f);
    close(fd);
    tu_finish_conns(loop);
}

/* ---- timing modes ---------------------------------------------------------- */

struct many {
    int n;
};

static void quick_defer(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct many *m = arg;
    m->n++;
}

/* Several callbacks in one batch, one of them slow. */
void insight_test_slow_defer(crest_loop_t *loop, void *arg);
void insight_test_slow_defer(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct many *m = arg;
    m->n++;
    spin_us(SPIN_US);
}

static void batch_with_one_slow(crest_loop_t *loop, struct many *m) {
    assert_int_equal(crest_loop_defer(loop, quick_defer, m), 0);
    assert_int_equal(crest_loop_defer(loop, insight_test_slow_defer, m), 0);
    assert_int_equal(crest_loop_defer(loop, quick_defer, m), 0);
    assert_true(crest_loop_run_once(loop, 0) >= 0);
}

static void test_timing_always_names_in_a_batch(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_ALWAYS, SLOW_US);
    struct many m = {0};
    batch_with_one_slow(loop, &m);
    assert_int_equal(m.n, 3);
    crest_insight_t *f = snap(loop);
    assert_true(f->timed_callbacks >= 3);
    assert_int_equal(f->slow_by_kind[CREST_CB_DEFERRED], 1);
    assert_int_equal(f->slow_unnamed, 0);
    assert_string_equal(f->slow_ring[0].name, "insight_test_slow_defer");
    assert_true(f->callback_time.count >= 3);
    free(f);
    tu_destroy_loop(loop);
}

static void test_timing_off_counts_unnamed(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_OFF, SLOW_US);
    struct many m = {0};
    for (int i = 0; i < 2; i++)
        batch_with_one_slow(loop, &m);
    crest_insight_t *f = snap(loop);
    assert_int_equal(f->timed_callbacks, 0);
    assert_int_equal(f->slow_callbacks, 0);
    assert_int_equal(f->slow_unnamed, 2); /* a slow batch of three, twice */
    assert_true(f->slow_iterations >= 2);
    /* the ring keeps them, as batches: how long, not who */
    assert_int_equal(f->slow_ring_len, 2);
    assert_int_equal(f->slow_ring[1].batch, 3);
    assert_int_equal(f->slow_ring[1].kind, CREST_CB_DEFERRED);
    assert_string_equal(f->slow_ring[1].name, "batch of 3 callbacks");
    assert_true(f->slow_ring[1].duration_ns >= SPIN_US * 1000ull);
    assert_true(tu_log_line_has("slow batch: 3 deferred callbacks took", "not timed one by one",
                                "threshold"));
    free(f);
    tu_destroy_loop(loop);
}

/* AUTO: a slow batch turns per-callback timing on, so the next slow batch
 * is named; a second of fast iterations turns it off again. */
static void test_timing_auto_hysteresis(void **state) {
    (void)state;
    crest_loop_t *loop = insight_loop(CREST_TIMING_AUTO, SLOW_US);
    struct many m = {0};
    batch_with_one_slow(loop, &m);
    crest_insight_t *f = snap(loop);
    assert_int_equal(f->slow_unnamed, 1);
    assert_int_equal(f->slow_callbacks, 0);
    free(f);
    batch_with_one_slow(loop, &m);
    f = snap(loop);
    assert_int_equal(f->slow_unnamed, 1);
    assert_int_equal(f->slow_by_kind[CREST_CB_DEFERRED], 1);
    uint64_t timed = f->timed_callbacks;
    assert_true(timed >= 3);
    free(f);
    /* fast iterations for a little over a second: timing goes off */
    uint64_t until = tu_mono_ns() + 1300000000ull;
    while (tu_mono_ns() < until)
        assert_true(crest_loop_run_once(loop, 5) >= 0);
    f = snap(loop);
    uint64_t timed_after = f->timed_callbacks;
    assert_true(f->timing_on_ns >= 1000000000ull);
    free(f);
    batch_with_one_slow(loop, &m); /* unnamed again: timing was off */
    f = snap(loop);
    assert_int_equal(f->slow_unnamed, 2);
    assert_int_equal(f->timed_callbacks, timed_after);
    free(f);
    tu_destroy_loop(loop);
}

static void test_disabled_and_bad_opts(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    assert_true(o.enabled);
    assert_int_equal(o.timing, CREST_TIMING_AUTO);
    assert_int_equal(o.slow_callback_us, 1000);
    assert_int_equal(crest_loop_set_insight(loop, NULL), -EINVAL);
    o.slow_callback_us = 0;
    assert_int_equal(crest_loop_set_insight(loop, &o), -EINVAL);
    o.slow_callback_us = 1000;
    o.enabled = false;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    struct many m = {0};
    batch_with_one_slow(loop, &m);
    crest_insight_t *f = snap(loop);
    assert_int_equal(f->iterations, 0);
    assert_int_equal(f->iteration_busy.count, 0);
    assert_int_equal(f->slow_iterations, 0);
    assert_int_equal(f->slow_unnamed, 0);
    assert_true(f->phase_ns[CREST_PHASE_DEFERRED] >= SPIN_US * 1000ull); /* phases still count */
    free(f);
    crest_insight_opts_t got;
    crest_loop_get_insight_opts(loop, &got);
    assert_false(got.enabled);
    tu_destroy_loop(loop);
}

/* ---- snapshots from other threads; groups ---------------------------------- */

struct reader {
    crest_loop_t *loop;
    atomic_bool stop;
    uint64_t seen_iterations;
    int reads;
};

static void *reader_main(void *arg) {
    struct reader *r = arg;
    crest_insight_t *s = malloc(sizeof *s);
    while (!atomic_load(&r->stop)) {
        assert_int_equal(crest_loop_read_insight(r->loop, s), 0);
        assert_true(s->iterations >= r->seen_iterations); /* never goes back */
        r->seen_iterations = s->iterations;
        r->reads++;
        tu_sleep_ms(5);
    }
    free(s);
    return NULL;
}

static void tick(crest_timer_t *t, void *arg) {
    (void)t;
    (*(int *)arg)++;
}

static void test_published_snapshot(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.sample_ms = 20;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    struct reader r = {.loop = loop};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader_main, &r), 0);
    int ticks = 0;
    crest_timer_t *t;
    assert_int_equal(crest_timer_create(loop, tick, &ticks, &t), 0);
    assert_int_equal(crest_timer_start(t, 1, 1), 0);
    RUN_UNTIL(loop, ticks >= 150);
    crest_timer_destroy(t);
    tu_sleep_ms(30);
    atomic_store(&r.stop, true);
    pthread_join(th, NULL);
    assert_true(r.reads > 0);
    assert_true(r.seen_iterations > 0);
    crest_insight_t *mine = snap(loop);
    assert_true(mine->iterations >= r.seen_iterations);
    assert_int_equal(mine->loops, 1);
    free(mine);
    tu_destroy_loop(loop);
}

/* Each loop runs a repeating timer (a loop with nothing to do returns
 * from crest_loop_run at once). */
static crest_timer_t *g_timers[3];
static int g_ticks[3];

static int g_init(crest_loop_t *loop, unsigned i, void *arg) {
    (void)arg;
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.sample_ms = 10;
    int rc = crest_loop_set_insight(loop, &o);
    if (rc == 0)
        rc = crest_timer_create(loop, tick, &g_ticks[i], &g_timers[i]);
    if (rc == 0)
        rc = crest_timer_start(g_timers[i], 1, 1);
    return rc;
}

static void g_fini(crest_loop_t *loop, unsigned i, void *arg) {
    (void)loop;
    (void)arg;
    crest_timer_destroy(g_timers[i]);
}

static void test_group_sum(void **state) {
    (void)state;
    crest_group_t *g;
    assert_int_equal(crest_group_start(3, g_init, g_fini, NULL, &g), 0);
    crest_insight_t *sum = malloc(sizeof *sum);
    /* each loop publishes once its sampler has run (it wakes itself) */
    for (int i = 0; i < 200; i++) {
        assert_int_equal(crest_group_get_insight(g, sum), 0);
        if (sum->iterations >= 3)
            break;
        tu_sleep_ms(10);
    }
    assert_int_equal(sum->loops, 3);
    assert_true(sum->iterations >= 3);
    crest_group_stop(g);
    assert_int_equal(crest_group_join(g), 0);
    free(sum);
}

static void test_add_merges_rings(void **state) {
    (void)state;
    crest_insight_t *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *s = calloc(1, sizeof *s);
    a->loops = b->loops = 1;
    a->iterations = 10;
    b->iterations = 5;
    a->runq_wait_max_ns = 7;
    b->runq_wait_max_ns = 9;
    for (unsigned i = 0; i < CREST_SLOW_RING; i++) {
        a->slow_ring[i].at_ns = 2 * i + 1; /* odd */
        b->slow_ring[i].at_ns = 2 * i + 2; /* even */
    }
    a->slow_ring_len = b->slow_ring_len = CREST_SLOW_RING;
    crest_insight_add(s, a);
    crest_insight_add(s, b);
    assert_int_equal(s->loops, 2);
    assert_int_equal(s->iterations, 15);
    assert_int_equal(s->runq_wait_max_ns, 9);
    assert_int_equal(s->slow_ring_len, CREST_SLOW_RING);
    for (unsigned i = 0; i < CREST_SLOW_RING; i++) /* the newest, in order */
        assert_int_equal(s->slow_ring[i].at_ns, CREST_SLOW_RING + 1 + i);
    free(a);
    free(b);
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_hist_bounds),
        tu_test(test_hist_percentiles_window_add),
        tu_test(test_phases_add_up),
        tu_test(test_slow_handler_named),
        tu_test(test_slow_accept_that_closed_its_listener),
        tu_test(test_timing_always_names_in_a_batch),
        tu_test(test_timing_off_counts_unnamed),
        tu_test(test_timing_auto_hysteresis),
        tu_test(test_disabled_and_bad_opts),
        tu_test(test_published_snapshot),
        tu_test(test_group_sum),
        tu_test(test_add_merges_rings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
