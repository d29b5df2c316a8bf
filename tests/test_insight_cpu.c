/* CPU starvation, for real: the loop thread and a busy-spinning hog
 * pinned to the same CPU.  The loop does CPU work of its own (a 1 ms
 * repeating timer that burns 1 ms of its thread's CPU time), so the two
 * share the CPU and the loop waits on the run queue about half the time;
 * the sampler (sample_ms = 200) must see it.  Alone on the CPU the same
 * loop waits far less.  Also: the loop run from another thread afterwards
 * keeps sampling (the schedstat file is reopened for that thread) and
 * leaves nothing open.  Exit 77 (skip) where threads cannot be pinned. */
#include "crest_test.h"

#include <crest/insight.h>
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>

static int the_cpu = -1;
static atomic_bool hog_stop;

static int pin_self(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(the_cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *hog_main(void *arg) {
    (void)arg;
    if (pin_self() != 0)
        return NULL;
    volatile uint64_t x = 0;
    while (!atomic_load_explicit(&hog_stop, memory_order_relaxed))
        x++;
    return NULL;
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct run {
    crest_loop_t *loop;
    crest_timer_t *tick, *end;
    unsigned ticks;
};

static void on_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct run *r = arg;
    r->ticks++;
    /* 1 ms of CPU work (under valgrind, a tenth: it is slow enough) */
    uint64_t until = thread_cpu_ns() + (RUNNING_ON_VALGRIND ? 100000u : 1000000u);
    while (thread_cpu_ns() < until)
        ;
}

static void on_end(crest_timer_t *t, void *arg) {
    (void)t;
    struct run *r = arg;
    crest_loop_stop(r->loop);
}

/* Run the loop for run_ms with the ticking timer; the figures after. */
static void run_for(crest_loop_t *loop, unsigned run_ms, crest_insight_t *f) {
    struct run r = {.loop = loop};
    assert_int_equal(crest_timer_create(loop, on_tick, &r, &r.tick), 0);
    assert_int_equal(crest_timer_create(loop, on_end, &r, &r.end), 0);
    assert_int_equal(crest_timer_start(r.tick, 1, 1), 0);
    assert_int_equal(crest_timer_start(r.end, run_ms, 0), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    crest_timer_destroy(r.tick);
    crest_timer_destroy(r.end);
    assert_true(r.ticks > 0);
    assert_int_equal(crest_loop_get_insight(loop, f), 0);
}

static crest_loop_t *sampled_loop(void) {
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.sample_ms = 200;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    return loop;
}

static bool have_schedstat(void) {
    return access("/proc/thread-self/schedstat", R_OK) == 0;
}

static void test_starved_by_hog(void **state) {
    (void)state;
    crest_insight_t *hog = calloc(1, sizeof *hog), *alone = calloc(1, sizeof *alone);
    assert_non_null(hog);
    assert_non_null(alone);

    /* With the hog on the same CPU. */
    crest_loop_t *loop = sampled_loop();
    atomic_store(&hog_stop, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, hog_main, NULL), 0);
    run_for(loop, 1500, hog);
    atomic_store(&hog_stop, true);
    pthread_join(th, NULL);
    tu_destroy_loop(loop);

    /* The same loop alone on its CPU. */
    loop = sampled_loop();
    run_for(loop, 1500, alone);
    tu_destroy_loop(loop);

    printf("# hog: runq %.1f ms (last period %.1f ms, worst %.1f ms), cpu %.1f ms, "
           "nivcsw %" PRIu64 ", nvcsw %" PRIu64 ", %" PRIu64 " samples\n",
           hog->runq_wait_ns / 1e6, hog->runq_wait_last_ns / 1e6, hog->runq_wait_max_ns / 1e6,
           hog->cpu_ns / 1e6, hog->nivcsw, hog->nvcsw, hog->cpu_samples);
    printf("# alone: runq %.1f ms (last period %.1f ms, worst %.1f ms), cpu %.1f ms, "
           "nivcsw %" PRIu64 ", nvcsw %" PRIu64 ", %" PRIu64 " samples\n",
           alone->runq_wait_ns / 1e6, alone->runq_wait_last_ns / 1e6,
           alone->runq_wait_max_ns / 1e6, alone->cpu_ns / 1e6, alone->nivcsw, alone->nvcsw,
           alone->cpu_samples);

    /* 1.5 s at 200 ms: 7 samples, the first only a base reading */
    assert_true(hog->cpu_samples >= 3);
    assert_true(alone->cpu_samples >= 3);
    assert_true(hog->nvcsw > 0); /* it did sleep in epoll_wait */
    if (!have_schedstat()) {
        assert_int_equal(hog->runq_wait_ns, 0);
        assert_int_equal(hog->cpu_ns, 0);
    } else {
        assert_true(hog->cpu_ns > 0);
        assert_true(hog->runq_wait_max_ns >= hog->runq_wait_last_ns);
        if (!RUNNING_ON_VALGRIND) {
            /* Valgrind runs one thread at a time (its own lock): the hog
             * starves the loop there by a lock, not the run queue. */
            assert_true(hog->runq_wait_ns > 100 * 1000000ull);
            assert_true(hog->nivcsw > 0);
            /* alone: well under the hog case (no absolute bound: the
             * machine may be busy) */
            assert_true(alone->runq_wait_ns < hog->runq_wait_ns);
        }
    }
    free(hog);
    free(alone);
}

struct thread_run {
    crest_loop_t *loop;
    crest_insight_t *f;
};

static void *loop_thread(void *arg) {
    struct thread_run *t = arg;
    run_for(t->loop, 700, t->f);
    return NULL;
}

/* The loop run from a second thread after the first: the sampler notices,
 * reopens schedstat for the new thread, keeps counting; reset starts from
 * zero; nothing is left open. */
static void test_thread_change_and_reset(void **state) {
    (void)state;
    crest_insight_t *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    crest_loop_t *loop = sampled_loop();
    run_for(loop, 700, a);
    assert_true(a->cpu_samples >= 2);
    struct thread_run t = {loop, b};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loop_thread, &t), 0);
    pthread_join(th, NULL);
    assert_true(b->cpu_samples > a->cpu_samples);
    if (have_schedstat())
        assert_true(b->cpu_ns > a->cpu_ns);
    crest_loop_insight_reset(loop);
    assert_int_equal(crest_loop_get_insight(loop, a), 0);
    assert_int_equal(a->cpu_samples, 0);
    assert_int_equal(a->cpu_ns, 0);
    run_for(loop, 700, a);
    assert_true(a->cpu_samples >= 2);
    if (have_schedstat())
        assert_true(a->cpu_ns > 0 && a->cpu_ns < b->cpu_ns + 2000000000ull);
    free(a);
    free(b);
    tu_destroy_loop(loop);
}

int main(void) {
    the_cpu = sched_getcpu();
    if (the_cpu < 0 || pin_self() != 0) {
        printf("# cannot pin threads to a CPU: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        tu_test(test_starved_by_hog),
        tu_test(test_thread_change_and_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
