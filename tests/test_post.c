/* Tests for the thread-safe entry points: crest_loop_post, crest_loop_wake,
 * crest_loop_stop from other threads. */
#include "crest_test.h"

#include <stdatomic.h>

/* ---- helpers ------------------------------------------------------------ */

static pthread_t main_thread;

static void never_timer_cb(crest_timer_t *t, void *arg) {
    (void)t;
    (void)arg;
    fail_msg("the keep-alive timer fired");
}

static void never_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    (void)arg;
    fail_msg("a dropped post ran");
}

/* An idle loop with nothing alive returns from run at once: keep it alive
 * with a timer an hour away. */
static crest_timer_t *keepalive(crest_loop_t *loop) {
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, never_timer_cb, NULL, &t), 0);
    assert_int_equal(crest_timer_start(t, 3600 * 1000, 0), 0);
    return t;
}

/* crest_loop_run under a watchdog: true if the watchdog had to wake it. */
static bool run_guarded(crest_loop_t *loop, unsigned ms) {
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, ms);
    assert_int_equal(crest_loop_run(loop), 0);
    return tu_watchdog_disarm(&wd);
}

struct one {
    crest_loop_t *loop;
    unsigned delay_ms;
    _Atomic int ran;
    bool on_loop_thread;
    int post_rc;
};

static void stop_cb(crest_loop_t *loop, void *arg) {
    struct one *o = arg;
    assert_ptr_equal(loop, o->loop);
    o->on_loop_thread = pthread_equal(pthread_self(), main_thread);
    atomic_fetch_add(&o->ran, 1);
    crest_loop_stop(loop);
}

static void *poster_main(void *arg) {
    struct one *o = arg;
    tu_sleep_ms(o->delay_ms); /* let the loop block in epoll_wait */
    o->post_rc = crest_loop_post(o->loop, stop_cb, o);
    return NULL;
}

/* ---- tests -------------------------------------------------------------- */

static void test_post_wakes_blocked_loop(void **state) {
    (void)state;
    main_thread = pthread_self();
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    struct one o = {.loop = loop, .delay_ms = 20, .post_rc = 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, poster_main, &o), 0);
    bool woken_by_watchdog = run_guarded(loop, 10000);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_false(woken_by_watchdog);
    assert_int_equal(o.post_rc, 0);
    assert_int_equal(atomic_load(&o.ran), 1);
    assert_true(o.on_loop_thread);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.posted_run, 1);
    assert_true(st.wakeups >= 1);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

/* Posted before the loop runs, from the loop's own thread. */
static void test_post_from_loop_thread(void **state) {
    (void)state;
    main_thread = pthread_self();
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    struct one o = {.loop = loop};
    assert_int_equal(crest_loop_post(loop, stop_cb, &o), 0);
    assert_int_equal(atomic_load(&o.ran), 0); /* never synchronous */
    assert_false(run_guarded(loop, 10000));
    assert_int_equal(atomic_load(&o.ran), 1);
    assert_true(o.on_loop_thread);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

/* Many threads, many posts: each delivered exactly once, in posting order
 * per thread. */
#define POST_THREADS 4
#define POSTS_PER_THREAD 10000

struct many {
    crest_loop_t *loop;
    int next[POST_THREADS]; /* next sequence number expected, per thread */
    int out_of_order;
    int bad_thread;
    int total;
    int failed_posts[POST_THREADS];
};

struct poster {
    struct many *m;
    int id;
};

static void count_cb(crest_loop_t *loop, void *arg) {
    struct many *m = crest_loop_get_data(loop);
    uintptr_t v = (uintptr_t)arg;
    int tid = (int)(v >> 20), seq = (int)(v & 0xfffff);
    if (!pthread_equal(pthread_self(), main_thread))
        m->bad_thread++;
    if (tid < 0 || tid >= POST_THREADS) {
        m->out_of_order++;
    } else {
        if (seq != m->next[tid])
            m->out_of_order++;
        m->next[tid] = seq + 1;
    }
    if (++m->total == POST_THREADS * POSTS_PER_THREAD)
        crest_loop_stop(loop);
}

static void *many_main(void *arg) {
    struct poster *p = arg;
    for (uintptr_t i = 0; i < POSTS_PER_THREAD; i++) {
        uintptr_t v = ((uintptr_t)p->id << 20) | i;
        if (crest_loop_post(p->m->loop, count_cb, (void *)v) != 0)
            p->m->failed_posts[p->id]++;
    }
    return NULL;
}

static void test_post_many_threads(void **state) {
    (void)state;
    main_thread = pthread_self();
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    static struct many m;
    memset(&m, 0, sizeof m);
    m.loop = loop;
    crest_loop_set_data(loop, &m);
    struct poster p[POST_THREADS];
    pthread_t th[POST_THREADS];
    for (int i = 0; i < POST_THREADS; i++) {
        p[i] = (struct poster){.m = &m, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, many_main, &p[i]), 0);
    }
    bool woken_by_watchdog = run_guarded(loop, 60000);
    for (int i = 0; i < POST_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_false(woken_by_watchdog);
    for (int i = 0; i < POST_THREADS; i++) {
        assert_int_equal(m.failed_posts[i], 0);
        assert_int_equal(m.next[i], POSTS_PER_THREAD);
    }
    assert_int_equal(m.total, POST_THREADS * POSTS_PER_THREAD);
    assert_int_equal(m.out_of_order, 0);
    assert_int_equal(m.bad_thread, 0);
    /* Nothing is delivered twice: a few more iterations change nothing. */
    tu_spin(loop, 3);
    assert_int_equal(m.total, POST_THREADS * POSTS_PER_THREAD);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.posted_run, POST_THREADS * POSTS_PER_THREAD);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

static void test_post_order_single_thread(void **state) {
    (void)state;
    main_thread = pthread_self();
    crest_loop_t *loop = tu_loop();
    static struct many m;
    memset(&m, 0, sizeof m);
    m.loop = loop;
    crest_loop_set_data(loop, &m);
    for (uintptr_t i = 0; i < 100; i++)
        assert_int_equal(crest_loop_post(loop, count_cb, (void *)i), 0);
    for (int i = 0; i < 5 && m.total < 100; i++)
        crest_loop_run_once(loop, 0);
    assert_int_equal(m.total, 100);
    assert_int_equal(m.next[0], 100);
    assert_int_equal(m.out_of_order, 0);
    tu_destroy_loop(loop);
}

struct waker {
    crest_loop_t *loop;
    _Atomic bool flag;
    int rc;
};

static void *waker_main(void *arg) {
    struct waker *w = arg;
    tu_sleep_ms(20);
    atomic_store(&w->flag, true);
    w->rc = crest_loop_wake(w->loop);
    return NULL;
}

static void test_wake(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    struct waker w = {.loop = loop, .rc = 1};
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waker_main, &w), 0);
    int iterations = 0;
    while (!atomic_load(&w.flag) && iterations < 100) {
        assert_int_equal(crest_loop_run_once(loop, -1), 1);
        iterations++;
    }
    bool woken_by_watchdog = tu_watchdog_disarm(&wd);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_false(woken_by_watchdog);
    assert_true(atomic_load(&w.flag));
    assert_int_equal(w.rc, 0);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.wakeups >= 1);
    assert_int_equal(st.posted_run, 0);
    /* A wake from the loop's own thread is harmless. */
    assert_int_equal(crest_loop_wake(loop), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

struct stopper {
    crest_loop_t *loop;
};

static void *stopper_main(void *arg) {
    struct stopper *s = arg;
    tu_sleep_ms(20);
    crest_loop_stop(s->loop);
    return NULL;
}

static void test_stop_from_other_thread(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    struct stopper s = {.loop = loop};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stopper_main, &s), 0);
    bool woken_by_watchdog = run_guarded(loop, 10000);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_false(woken_by_watchdog);
    assert_true(crest_timer_active(k));
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

/* Posts not yet run when the loop is destroyed are dropped (and freed). */
static void test_destroy_drops_pending_posts(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    for (int i = 0; i < 3; i++)
        assert_int_equal(crest_loop_post(loop, never_cb, NULL), 0);
    tu_destroy_loop(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_post_wakes_blocked_loop),
        tu_test(test_post_from_loop_thread),
        tu_test(test_post_many_threads),
        tu_test(test_post_order_single_thread),
        tu_test(test_wake),
        tu_test(test_stop_from_other_thread),
        tu_test(test_destroy_drops_pending_posts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
