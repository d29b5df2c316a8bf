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
/* ---- the destroy contract ---------------------------------------------- */

/* Posts and defers queued when the loop is destroyed run at the start of
 * crest_loop_destroy(), exactly once, in order, and free their argument
 * (valgrind checks that nothing leaks). */
struct owned {
    int seq;
    int *log;       /* sequence numbers as they run */
    int *n;
};

static void owned_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct owned *o = arg;
    o->log[(*o->n)++] = o->seq;
    free(o);
}

static void queue_owned(crest_loop_t *loop, int seq, int *log, int *n, bool post) {
    struct owned *o = malloc(sizeof *o);
    assert_non_null(o);
    *o = (struct owned){seq, log, n};
    if (post)
        assert_int_equal(crest_loop_post(loop, owned_cb, o), 0);
    else
        assert_int_equal(crest_loop_defer(loop, owned_cb, o), 0);
}

static void test_destroy_runs_pending_posts(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static int log[300];
    int n = 0;
    for (int i = 0; i < 100; i++)
        queue_owned(loop, 1000 + i, log, &n, true);
    for (int i = 0; i < 100; i++)
        queue_owned(loop, i, log, &n, false);
    tu_destroy_loop(loop);
    /* Deferred first, then posted, each in order. */
    assert_int_equal(n, 200);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(log[i], i);
        assert_int_equal(log[100 + i], 1000 + i);
    }
}

/* Inside destroy: what runs in which order, and what new work gets. */
static int order[16];
static int norder;
static int post_in_destroy_rc, defer_in_destroy_rc;

static void rec_cb(crest_loop_t *loop, void *arg) {
    order[norder++] = (int)(intptr_t)arg;
    post_in_destroy_rc = crest_loop_post(loop, never_cb, NULL);
    defer_in_destroy_rc = crest_loop_defer(loop, never_cb, NULL);
    assert_int_equal(crest_loop_run_once(loop, 0), -EBUSY);
}

static ssize_t sink(crest_conn_t *c, const uint8_t *d, size_t len) {
    (void)c;
    (void)d;
    return (ssize_t)len;
}

static void rec_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    assert_int_equal(reason, CREST_CLOSE_SHUTDOWN);
    /* The connection is still usable for reading its state. */
    assert_true(crest_conn_fd(c) >= 0);
    order[norder++] = 3;
}

static void test_destroy_order(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    norder = 0;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    crest_handler_t h = {.on_data = sink, .on_close = rec_close};
    crest_conn_t *c = NULL;
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &h, NULL, &c), 0);
    tu_spin(loop, 2);
    assert_int_equal(crest_conn_state(c), CREST_CONN_OPEN);
    assert_int_equal(crest_loop_post(loop, rec_cb, (void *)(intptr_t)2), 0);
    assert_int_equal(crest_loop_defer(loop, rec_cb, (void *)(intptr_t)1), 0);
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(loop), 0);
    /* Deferred, then posted (both before the connection goes), then
     * on_close of the aborted connection. */
    assert_int_equal(norder, 3);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 3);
    assert_int_equal(post_in_destroy_rc, -ESHUTDOWN);
    assert_int_equal(defer_in_destroy_rc, -ESHUTDOWN);
    close(sv[1]);
    tu_assert_nothing_open();
}

/* A thread that posts while the loop is destroyed: every post either runs
 * (returned 0) or is refused (-ESHUTDOWN, the caller frees its argument),
 * never lost, never both.  The poster stops at its first refusal; the
 * on_close that destroy runs after the posts joins it, so no post can
 * reach the loop once destroy has returned. */
struct race {
    crest_loop_t *loop;
    pthread_t th;
    _Atomic long accepted, refused, ran;
    _Atomic bool started;
    bool joined;
};

static struct race R;

static void race_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    free(arg);
    atomic_fetch_add(&R.ran, 1);
}

static void *race_main(void *arg) {
    (void)arg;
    for (;;) {
        long *p = malloc(sizeof *p);
        if (!p)
            return NULL;
        int rc = crest_loop_post(R.loop, race_cb, p);
        if (rc == 0) {
            /* Past a few thousand, post at a pace: under valgrind (one
             * thread at a time) an unpaced poster queued a million posts
             * before destroy came, and the run hit the test's alarm. */
            if (atomic_fetch_add(&R.accepted, 1) >= 2000)
                usleep(50);
            atomic_store(&R.started, true);
            continue;
        }
        free(p); /* refused: still ours */
        if (rc == -ESHUTDOWN)
            atomic_fetch_add(&R.refused, 1);
        return NULL;
    }
}

static void race_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)reason;
    (void)err;
    pthread_join(R.th, NULL);
    R.joined = true;
}

static void test_post_races_destroy(void **state) {
    (void)state;
    for (int round = 0; round < 20; round++) {
        memset(&R, 0, sizeof R);
        R.loop = tu_loop();
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        crest_handler_t h = {.on_data = sink, .on_close = race_close};
        crest_conn_t *c = NULL;
        assert_int_equal(crest_conn_adopt(R.loop, sv[0], NULL, &h, NULL, &c), 0);
        assert_int_equal(pthread_create(&R.th, NULL, race_main, NULL), 0);
        /* Let it post for a while (some run in iterations), then destroy
         * with its posts still coming. */
        while (!atomic_load(&R.started))
            crest_loop_run_once(R.loop, 0);
        for (int i = 0; i < round; i++)
            crest_loop_run_once(R.loop, 0);
        tu_log_clear();
        assert_int_equal(crest_loop_destroy(R.loop), 0);
        assert_true(R.joined);
        assert_int_equal(atomic_load(&R.refused), 1);
        assert_int_equal(atomic_load(&R.ran), atomic_load(&R.accepted));
        close(sv[1]);
        tu_assert_nothing_open();
    }
}

/* crest_group_post: a post that returned 0 runs even when the worker's
 * loop stops before it gets to it (at the loop's destroy, after fini). */
static _Atomic int group_ran;
static _Atomic bool fini_ran;

static void group_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    free(arg);
    atomic_fetch_add(&group_ran, 1);
}

static void stop_now(crest_loop_t *loop, void *arg) {
    (void)arg;
    crest_loop_stop(loop);
}

static int g_init(crest_loop_t *loop, unsigned index, void *arg) {
    (void)index;
    (void)arg;
    /* Something to keep it alive until stopped. */
    crest_timer_t *t = keepalive(loop);
    crest_loop_set_data(loop, t);
    return 0;
}

static void g_fini(crest_loop_t *loop, unsigned index, void *arg) {
    (void)index;
    (void)arg;
    crest_timer_destroy(crest_loop_get_data(loop));
    atomic_store(&fini_ran, true);
}

static void test_group_post_runs_once(void **state) {
    (void)state;
    atomic_store(&group_ran, 0);
    atomic_store(&fini_ran, false);
    crest_group_t *g = NULL;
    assert_int_equal(crest_group_start(1, g_init, g_fini, NULL, &g), 0);
    /* The stop runs first; the posts behind it may be left for destroy. */
    assert_int_equal(crest_group_post(g, 0, stop_now, NULL), 0);
    int accepted = 0;
    for (int i = 0; i < 1000; i++) {
        int *p = malloc(sizeof *p);
        int rc = crest_group_post(g, 0, group_cb, p);
        if (rc == 0) {
            accepted++;
        } else {
            assert_int_equal(rc, -ESRCH);
            free(p);
        }
    }
    assert_int_equal(crest_group_join(g), 0);
    assert_true(atomic_load(&fini_ran));
    assert_int_equal(atomic_load(&group_ran), accepted);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_post_wakes_blocked_loop),
        tu_test(test_post_from_loop_thread),
        tu_test(test_post_many_threads),
        tu_test(test_post_order_single_thread),
        tu_test(test_wake),
        tu_test(test_stop_from_other_thread),
        tu_test(test_destroy_runs_pending_posts),
        tu_test(test_destroy_order),
        tu_test(test_post_races_destroy),
        tu_test(test_group_post_runs_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
