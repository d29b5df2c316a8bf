/* Tests for the event loop core (include/crest/loop.h). */
#include "crest_test.h"

#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#define MAX_FD 4096

/* ---- helpers ------------------------------------------------------------ */

struct rec {
    crest_loop_t *loop;
    int order[64];
    int n;
    uint64_t iter_seen[64]; /* the test's iteration counter when each ran */
    uint64_t iter;          /* bumped by the test between run_once calls */
};

static struct rec rec;

static void rec_reset(crest_loop_t *loop) {
    memset(&rec, 0, sizeof rec);
    rec.loop = loop;
}

static void record_cb(crest_loop_t *loop, void *arg) {
    assert_ptr_equal(loop, rec.loop);
    if (rec.n < 64) {
        rec.iter_seen[rec.n] = rec.iter;
        rec.order[rec.n++] = (int)(intptr_t)arg;
    }
}

static void never_timer_cb(crest_timer_t *t, void *arg) {
    (void)t;
    (void)arg;
    fail_msg("a timer that must not fire fired");
}

static void never_io_cb(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    (void)events;
    (void)arg;
    fail_msg("an io watcher that must not fire fired");
}

/* A timer far in the future: keeps the loop alive without ever firing. */
static crest_timer_t *keepalive(crest_loop_t *loop) {
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, never_timer_cb, NULL, &t), 0);
    assert_int_equal(crest_timer_start(t, 3600 * 1000, 0), 0);
    return t;
}

/* ---- tests -------------------------------------------------------------- */

static void test_create_destroy(void **state) {
    (void)state;
    crest_fd_counts_t ep = {0}, ev = {0}, ep1 = {0}, ev1 = {0};
    assert_int_equal(crest_fd_counts(CREST_FD_EPOLL, &ep), 0);
    assert_int_equal(crest_fd_counts(CREST_FD_EVENTFD, &ev), 0);

    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_fd_counts(CREST_FD_EPOLL, &ep1), 0);
    assert_int_equal(crest_fd_counts(CREST_FD_EVENTFD, &ev1), 0);
    assert_int_equal(ep1.open, ep.open + 1);
    assert_int_equal(ev1.open, ev.open + 1);
    assert_int_equal(crest_fd_open_count(), tu_base.reg_open + 2);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.iterations, 0);
    assert_int_equal(st.callbacks, 0);

    tu_destroy_loop(loop);

    /* Create/destroy again: nothing accumulates. */
    for (int i = 0; i < 3; i++)
        tu_destroy_loop(tu_loop());
    assert_int_equal(crest_fd_counts(CREST_FD_EPOLL, &ep1), 0);
    assert_int_equal(ep1.opened, ep.opened + 4);
    assert_int_equal(ep1.closed, ep.closed + 4);
    assert_int_equal(ep1.bad_closes, ep.bad_closes);
}

static void test_loop_data(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    assert_null(crest_loop_get_data(loop));
    int x;
    crest_loop_set_data(loop, &x);
    assert_ptr_equal(crest_loop_get_data(loop), &x);
    tu_destroy_loop(loop);
}

/* Every fd a loop creates is close-on-exec and in the registry. */
static void check_new_fds(const unsigned char *before, int *epolls, int *eventfds, int *others) {
    static unsigned char after[MAX_FD];
    tu_proc_fd_set(after, MAX_FD);
    for (int fd = 0; fd < MAX_FD; fd++) {
        if (!after[fd] || before[fd])
            continue;
        if (!tu_fd_is_cloexec(fd))
            fail_msg("fd %d created by crest is not O_CLOEXEC", fd);
        crest_fd_kind_t kind;
        if (crest_fd_lookup(fd, &kind, NULL, NULL) != 0)
            fail_msg("fd %d created by crest is not in the registry", fd);
        if (kind == CREST_FD_EPOLL)
            ++*epolls;
        else if (kind == CREST_FD_EVENTFD)
            ++*eventfds;
        else
            ++*others;
    }
}

static void sig_cb(crest_signal_t *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    (void)arg;
}

static void test_fds_are_cloexec(void **state) {
    (void)state;
    static unsigned char before[MAX_FD];
    tu_proc_fd_set(before, MAX_FD);
    crest_loop_t *loop = tu_loop();
    int epolls = 0, eventfds = 0, others = 0;
    check_new_fds(before, &epolls, &eventfds, &others);
    assert_int_equal(epolls, 1);
    assert_true(eventfds >= 1);

    /* The fds crest opens later (a signalfd, a timerfd if any) too. */
    tu_proc_fd_set(before, MAX_FD);
    sigset_t old;
    pthread_sigmask(SIG_SETMASK, NULL, &old);
    crest_signal_t *sig = NULL;
    assert_int_equal(crest_signal_start(loop, SIGUSR2, sig_cb, NULL, &sig), 0);
    crest_timer_t *t = keepalive(loop);
    crest_loop_run_once(loop, 0);
    epolls = eventfds = others = 0;
    check_new_fds(before, &epolls, &eventfds, &others);
    assert_int_equal(epolls, 0);

    crest_signal_stop(sig);
    crest_timer_destroy(t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    tu_destroy_loop(loop);
}

static void test_run_returns_when_nothing_alive(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_int_equal(crest_loop_run(loop), 0);

    /* A timer created but never started keeps nothing alive. */
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, never_timer_cb, NULL, &t), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    /* ... nor one started and stopped. */
    assert_int_equal(crest_timer_start(t, 1000, 0), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    crest_timer_stop(t);
    assert_int_equal(crest_loop_run(loop), 0);
    crest_timer_destroy(t);

    /* A deferred callback runs, then run returns. */
    rec_reset(loop);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)1), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(rec.n, 1);
    tu_destroy_loop(loop);
}

static int stop_count;
static int stop_at;

static void stopping_timer_cb(crest_timer_t *t, void *arg) {
    crest_loop_t *loop = arg;
    (void)t;
    if (++stop_count == stop_at)
        crest_loop_stop(loop);
}

static void stopping_cb(crest_loop_t *loop, void *arg) {
    (void)arg;
    stop_count++;
    crest_loop_stop(loop);
}

static void test_stop_from_callback(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *t = NULL;
    stop_count = 0;
    stop_at = 3;
    assert_int_equal(crest_timer_create(loop, stopping_timer_cb, loop, &t), 0);
    assert_int_equal(crest_timer_start(t, 1, 1), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(stop_count, 3);
    assert_true(crest_timer_active(t)); /* run returned because of stop */

    /* The stop was for that run only: the next run goes on until stopped. */
    stop_at = 6;
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(stop_count, 6);

    /* From a deferred callback, with a long timer keeping the loop alive. */
    crest_timer_destroy(t);
    crest_timer_t *k = keepalive(loop);
    stop_count = 0;
    assert_int_equal(crest_loop_defer(loop, stopping_cb, NULL), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(stop_count, 1);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

static void defer_more_cb(crest_loop_t *loop, void *arg) {
    record_cb(loop, arg);
    if ((intptr_t)arg == 1) {
        assert_int_equal(crest_loop_defer(loop, record_cb, (void *)10), 0);
        assert_int_equal(crest_loop_defer(loop, record_cb, (void *)11), 0);
    }
}

static void test_defer_order_and_next_iteration(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    rec_reset(loop);
    assert_int_equal(crest_loop_defer(loop, defer_more_cb, (void *)1), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)2), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)3), 0);
    assert_int_equal(rec.n, 0); /* nothing runs inside defer() */

    rec.iter = 1;
    assert_int_equal(crest_loop_run_once(loop, 0), 1); /* 10 and 11 pending */
    assert_int_equal(rec.n, 3);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 2);
    assert_int_equal(rec.order[2], 3);

    /* Deferred from a deferred callback: the next iteration, not this one. */
    rec.iter = 2;
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_int_equal(rec.n, 5);
    assert_int_equal(rec.order[3], 10);
    assert_int_equal(rec.order[4], 11);
    assert_int_equal(rec.iter_seen[3], 2);
    assert_int_equal(rec.iter_seen[4], 2);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.deferred_run, 5);
    tu_destroy_loop(loop);
}

/* The loop does not block while deferred work is pending, even with a
 * far-away timer and timeout -1. */
static void test_defer_does_not_block(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    rec_reset(loop);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)7), 0);
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 3000);
    assert_int_equal(crest_loop_run_once(loop, -1), 1);
    bool blocked = tu_watchdog_disarm(&wd);
    assert_int_equal(rec.n, 1);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
    if (blocked)
        fail_msg("run_once(-1) with a deferred callback pending blocked (until the watchdog "
                 "woke it 3 s later)");
}

static void test_defer_many(void **state) {
    (void)state;
    enum { N = 5000 };
    crest_loop_t *loop = tu_loop();
    for (int round = 0; round < 2; round++) { /* the second round reuses the queue */
        rec_reset(loop);
        for (intptr_t i = 0; i < N; i++)
            assert_int_equal(crest_loop_defer(loop, record_cb, (void *)i), 0);
        assert_int_equal(crest_loop_run_once(loop, 0), 0);
        /* rec keeps only the first 64; check those and the count via stats */
        assert_int_equal(rec.n, 64);
        for (int i = 0; i < 64; i++)
            assert_int_equal(rec.order[i], i);
    }
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.deferred_run, 2 * N);
    assert_true(st.callbacks >= 2 * N);
    tu_destroy_loop(loop);
}

static void test_run_once_zero_does_not_block(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *k = keepalive(loop);
    crest_loop_stats_t st0, st1;
    crest_loop_get_stats(loop, &st0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(crest_loop_run_once(loop, 0), 1);
    crest_loop_get_stats(loop, &st1);
    assert_int_equal(st1.iterations, st0.iterations + 5);
    assert_int_equal(st1.timers_fired, st0.timers_fired);

    /* A bounded wait returns too (the timer is an hour away). */
    assert_int_equal(crest_loop_run_once(loop, 5), 1);
    crest_timer_destroy(k);
    tu_destroy_loop(loop);
}

struct now_probe {
    uint64_t a_ns, b_ns, a_ms, fresh_ns;
    bool ran;
};

static void now_probe_cb(crest_loop_t *loop, void *arg) {
    struct now_probe *p = arg;
    p->a_ns = crest_loop_now_ns(loop);
    p->a_ms = crest_loop_now(loop);
    uint64_t t0 = tu_mono_ns();
    while (tu_mono_ns() - t0 < 3000000) /* busy 3 ms */
        ;
    p->b_ns = crest_loop_now_ns(loop); /* cached: unchanged */
    crest_loop_update_time(loop);
    p->fresh_ns = crest_loop_now_ns(loop);
    p->ran = true;
}

static void test_now_cached_and_advances(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* CLOCK_MONOTONIC, cached: never ahead of the real clock. */
    assert_true(crest_loop_now_ns(loop) > 0);
    assert_true(crest_loop_now_ns(loop) <= tu_mono_ns());

    struct now_probe p = {0};
    assert_int_equal(crest_loop_defer(loop, now_probe_cb, &p), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_true(p.ran);
    assert_int_equal(p.a_ns, p.b_ns);
    assert_true(p.fresh_ns >= p.a_ns + 3000000);
    assert_true(p.fresh_ns <= tu_mono_ns());
    /* ms and ns agree */
    assert_true(p.a_ms == p.a_ns / 1000000 || p.a_ms == (p.a_ns + 999999) / 1000000);

    /* The next iteration reads the clock again. */
    uint64_t before = crest_loop_now_ns(loop);
    tu_sleep_ms(2);
    struct now_probe q = {0};
    assert_int_equal(crest_loop_defer(loop, now_probe_cb, &q), 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_true(q.ran);
    assert_true(q.a_ns >= before + 2000000);
    assert_true(q.a_ns >= p.fresh_ns);
    tu_destroy_loop(loop);
}

static void count_timer_cb(crest_timer_t *t, void *arg) {
    (void)t;
    ++*(int *)arg;
}

static void test_stats_move(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    rec_reset(loop);
    int fired = 0;
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, count_timer_cb, &fired, &t), 0);
    assert_int_equal(crest_timer_start(t, 1, 0), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)1), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)2), 0);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(fired, 1);
    assert_int_equal(rec.n, 2);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.iterations >= 1);
    assert_int_equal(st.deferred_run, 2);
    assert_int_equal(st.timers_fired, 1);
    assert_true(st.wait_ns + st.run_ns > 0);
    assert_int_equal(st.stale_events, 0);
    assert_int_equal(st.posted_run, 0);

    crest_loop_stats_t st2;
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    crest_loop_get_stats(loop, &st2);
    assert_int_equal(st2.iterations, st.iterations + 1);
    crest_timer_destroy(t);
    tu_destroy_loop(loop);
    /* "every callback the loop invoked": 2 deferred + 1 timer */
    assert_true(st.callbacks >= 3);
}

static void test_destroy_logs_no_leak(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(loop), 0);
    if (!tu_log_contains("0 fds leaked"))
        tu_log_dump();
    assert_true(tu_log_contains("0 fds leaked"));
    assert_int_equal(tu_log.warnings, 0);
    tu_assert_nothing_open();
}

/* The report at destroy covers the loop's own fds only: a second loop alive
 * at the time is not counted against the first. */
static void test_destroy_reports_own_fds_only(void **state) {
    (void)state;
    crest_loop_t *a = tu_loop(), *b = tu_loop();
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0); /* the app's */
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(a), 0);
    assert_true(tu_log_contains("0 fds leaked"));
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(b), 0);
    assert_true(tu_log_contains("0 fds leaked"));
    assert_int_equal(crest_fd_close(p[0]), 0);
    close(p[1]);
    tu_assert_nothing_open();
}

/* Destroy with things still attached: they are released (valgrind checks
 * that nothing leaks), logged as warnings, never called; the caller's fds
 * stay open. */
static void count_destroy_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    ++*(int *)arg;
}

static void test_destroy_releases_attached(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    crest_io_t *io = NULL;
    assert_int_equal(crest_io_start(loop, p[0], CREST_IO_READABLE, never_io_cb, NULL, &io), 0);
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, never_timer_cb, NULL, &t), 0);
    assert_int_equal(crest_timer_start(t, 3600 * 1000, 0), 0);
    /* Queued work is not dropped: it runs once, at the start of destroy. */
    int deferred = 0, posted = 0;
    assert_int_equal(crest_loop_defer(loop, count_destroy_cb, &deferred), 0);
    assert_int_equal(crest_loop_post(loop, count_destroy_cb, &posted), 0);
    assert_int_equal(write(p[1], "x", 1), 1);

    tu_log_clear();
    assert_int_equal(crest_loop_destroy(loop), 0);
    assert_int_equal(deferred, 1);
    assert_int_equal(posted, 1);
    assert_true(tu_log.warnings >= 2); /* the watcher and the timer */
    assert_true(tu_log_contains("0 fds leaked"));
    assert_true(tu_fd_is_open(p[0]));
    assert_true(tu_fd_is_open(p[1]));
    close(p[0]);
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_sigpipe_ignored(void **state) {
    (void)state;
    struct sigaction sa = {.sa_handler = SIG_DFL}, cur;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &sa, NULL), 0);

    crest_loop_t *loop = tu_loop();
    assert_int_equal(sigaction(SIGPIPE, NULL, &cur), 0);
    assert_ptr_equal(cur.sa_handler, SIG_IGN);

    /* A write to a closed peer returns EPIPE; the process lives on. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    close(sv[1]);
    errno = 0;
    assert_int_equal(write(sv[0], "x", 1), -1);
    assert_int_equal(errno, EPIPE);
    close(sv[0]);
    tu_destroy_loop(loop);
}

static void app_sigpipe(int sig) {
    (void)sig;
}

/* An application's own SIGPIPE handler is left alone. */
static void test_sigpipe_handler_kept(void **state) {
    (void)state;
    struct sigaction sa = {.sa_handler = app_sigpipe}, cur, dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&sa.sa_mask);
    sigemptyset(&dfl.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &sa, NULL), 0);
    crest_loop_t *loop = tu_loop();
    assert_int_equal(sigaction(SIGPIPE, NULL, &cur), 0);
    assert_ptr_equal(cur.sa_handler, app_sigpipe);
    tu_destroy_loop(loop);
    assert_int_equal(sigaction(SIGPIPE, &dfl, NULL), 0);
}

/* ---- nesting: run_once and run from a callback --------------------------- */

/* Every kind of callback the loop runs; each calls run_once and run on its
 * own loop, which must refuse with -EBUSY and run nothing. */
enum nest_kind {
    NEST_DEFER, NEST_TIMER, NEST_IO, NEST_READY, NEST_POST, NEST_SIGNAL,
    NEST_CONN_OPEN, NEST_CONN_DATA, NEST_CONN_CLOSE, NEST_DESTROY_CLOSE,
    NEST_KINDS
};
static const char *const nest_names[NEST_KINDS] = {
    "deferred", "timer", "io", "ready list", "posted", "signal",
    "on_open", "on_data", "on_close", "on_close during destroy",
};

static struct nest {
    crest_loop_t *loop;
    int calls[NEST_KINDS];
    int rc_once[NEST_KINDS], rc_run[NEST_KINDS]; /* the first ones seen */
    bool destroying;
    int io_calls;
} nest;

static void nest_probe(crest_loop_t *loop, enum nest_kind k) {
    int once = crest_loop_run_once(loop, 0);
    int run = crest_loop_run(loop);
    if (nest.calls[k]++ == 0) {
        nest.rc_once[k] = once;
        nest.rc_run[k] = run;
    }
}

static void nest_defer_cb(crest_loop_t *loop, void *arg) {
    (void)arg;
    nest_probe(loop, NEST_DEFER);
}

static void nest_post_cb(crest_loop_t *loop, void *arg) {
    (void)arg;
    nest_probe(loop, NEST_POST);
}

static void nest_timer_cb(crest_timer_t *t, void *arg) {
    (void)t;
    nest_probe(arg, NEST_TIMER);
}

static void nest_io_cb(crest_io_t *io, unsigned events, void *arg) {
    (void)events;
    (void)arg;
    uint64_t v;
    while (read(crest_io_fd(io), &v, sizeof v) > 0)
        ;
    /* The first call comes from epoll; it feeds itself, so the second
     * comes from the ready list. */
    if (nest.io_calls++ == 0) {
        nest_probe(crest_io_loop(io), NEST_IO);
        crest_io_feed(io, CREST_IO_READABLE);
    } else {
        nest_probe(crest_io_loop(io), NEST_READY);
    }
}

static void nest_signal_cb(crest_signal_t *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    nest_probe(arg, NEST_SIGNAL);
}

static void nest_on_open(crest_conn_t *c) {
    nest_probe(crest_conn_loop(c), NEST_CONN_OPEN);
}

static ssize_t nest_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    nest_probe(crest_conn_loop(c), NEST_CONN_DATA);
    return (ssize_t)len;
}

static void nest_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    nest_probe(crest_conn_loop(c), nest.destroying ? NEST_DESTROY_CLOSE : NEST_CONN_CLOSE);
}

static const crest_handler_t nest_handler = {
    .on_open = nest_on_open, .on_data = nest_on_data, .on_close = nest_on_close,
};

static bool nest_seen(enum nest_kind from, enum nest_kind to) {
    for (int k = (int)from; k <= (int)to; k++)
        if (nest.calls[k] == 0)
            return false;
    return true;
}

static void test_nested_run_refused_in_every_callback(void **state) {
    (void)state;
    memset(&nest, 0, sizeof nest);
    crest_loop_t *loop = tu_loop();
    nest.loop = loop;
    sigset_t old;
    pthread_sigmask(SIG_SETMASK, NULL, &old);

    /* Loop-level callbacks. */
    assert_int_equal(crest_loop_defer(loop, nest_defer_cb, NULL), 0);
    assert_int_equal(crest_loop_post(loop, nest_post_cb, NULL), 0);
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, nest_timer_cb, loop, &t), 0);
    assert_int_equal(crest_timer_start(t, 0, 0), 0);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(efd >= 0);
    crest_io_t *io = NULL;
    assert_int_equal(crest_io_start(loop, efd, CREST_IO_READABLE, nest_io_cb, NULL, &io), 0);
    uint64_t one = 1;
    assert_int_equal(write(efd, &one, sizeof one), (ssize_t)sizeof one);
    crest_signal_t *sig = NULL;
    assert_int_equal(crest_signal_start(loop, SIGUSR2, nest_signal_cb, loop, &sig), 0);
    assert_int_equal(raise(SIGUSR2), 0);
    RUN_UNTIL(loop, nest_seen(NEST_DEFER, NEST_SIGNAL));

    /* Connection callbacks: accepted, data, closed by the peer. */
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &nest_handler, NULL, &l), 0);
    char addr[64];
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, nest.calls[NEST_CONN_OPEN] > 0);
    assert_int_equal(send(fd, "x", 1, 0), 1);
    RUN_UNTIL(loop, nest.calls[NEST_CONN_DATA] > 0);
    close(fd);
    RUN_UNTIL(loop, nest.calls[NEST_CONN_CLOSE] > 0);

    /* on_close of a connection aborted by crest_loop_destroy. */
    fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, nest.calls[NEST_CONN_OPEN] > 1);
    crest_listener_close(l);
    crest_signal_stop(sig);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    crest_io_stop(io);
    close(efd);
    crest_timer_destroy(t);
    nest.destroying = true;
    tu_log_clear();
    int leaked = crest_loop_destroy(loop);
    close(fd);
    assert_int_equal(leaked, 0);
    tu_assert_nothing_open();

    for (int k = 0; k < NEST_KINDS; k++) {
        if (nest.calls[k] == 0)
            fail_msg("no %s callback ran", nest_names[k]);
        if (nest.rc_once[k] != -EBUSY || nest.rc_run[k] != -EBUSY)
            fail_msg("from a %s callback: run_once returned %d, run %d (want -EBUSY)",
                     nest_names[k], nest.rc_once[k], nest.rc_run[k]);
    }
}

/* A refused nested run_once leaves the deferred queue whole: every callback
 * runs once, in order, and what the batch defers runs next iteration. */
static void nest_defer_more_cb(crest_loop_t *loop, void *arg) {
    record_cb(loop, arg);
    if ((intptr_t)arg == 1) {
        assert_int_equal(crest_loop_defer(loop, record_cb, (void *)10), 0);
        nest.rc_once[0] = crest_loop_run_once(loop, 0);
        assert_int_equal(crest_loop_defer(loop, record_cb, (void *)11), 0);
    }
}

static void test_nested_run_once_keeps_deferred_queue(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    rec_reset(loop);
    memset(&nest, 0, sizeof nest);
    assert_int_equal(crest_loop_defer(loop, nest_defer_more_cb, (void *)1), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)2), 0);
    assert_int_equal(crest_loop_defer(loop, record_cb, (void *)3), 0);
    rec.iter = 1;
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    rec.iter = 2;
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    rec.iter = 3;
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    tu_destroy_loop(loop);
    assert_int_equal(nest.rc_once[0], -EBUSY);
    static const int want[] = {1, 2, 3, 10, 11};
    static const uint64_t want_iter[] = {1, 1, 1, 2, 2};
    assert_int_equal(rec.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rec.order[i], want[i]);
        assert_int_equal(rec.iter_seen[i], want_iter[i]);
    }
}

/* ---- stop from another thread -------------------------------------------- */

struct stopper {
    crest_loop_t *loop;
    _Atomic int ticks; /* the loop's repeating timer counts here */
    _Atomic int go;    /* this round's stop may be made */
};

static void *stopper_main(void *arg) {
    struct stopper *s = arg;
    for (int round = 1; round <= 3; round++) {
        while (atomic_load(&s->go) < round)
            tu_sleep_ms(1);
        /* Stop while the loop iterates (its timer ticks each ms). */
        int t0 = atomic_load(&s->ticks);
        while (atomic_load(&s->ticks) < t0 + 2)
            tu_sleep_ms(1);
        crest_loop_stop(s->loop);
    }
    return NULL;
}

static void tick_cb(crest_timer_t *t, void *arg) {
    (void)t;
    struct stopper *s = arg;
    atomic_fetch_add(&s->ticks, 1);
}

/* crest_loop_stop() from another thread while the loop runs ends the run
 * (the ThreadSanitizer build checks that it races with nothing). */
static void test_stop_from_another_thread(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct stopper s = {.loop = loop};
    crest_timer_t *tick = NULL;
    assert_int_equal(crest_timer_create(loop, tick_cb, &s, &tick), 0);
    assert_int_equal(crest_timer_start(tick, 1, 1), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stopper_main, &s), 0);
    bool woken = false;
    for (int round = 1; round <= 3; round++) {
        struct tu_watchdog wd;
        tu_watchdog_arm(&wd, loop, 10000);
        atomic_store(&s.go, round);
        assert_int_equal(crest_loop_run(loop), 0);
        woken |= tu_watchdog_disarm(&wd);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(crest_timer_active(tick)); /* run returned because of stop */
    crest_timer_destroy(tick);
    tu_destroy_loop(loop);
    assert_false(woken);
}

/* ---- extreme arguments --------------------------------------------------- */

static void *post_later_main(void *arg) {
    tu_sleep_ms(20);
    assert_int_equal(crest_loop_post(arg, record_cb, (void *)5), 0);
    return NULL;
}

/* Restarts itself with timeout 0 (so it is always due) a few times. */
static void restart_zero_cb(crest_timer_t *t, void *arg) {
    int *left = arg;
    if (--*left > 0)
        assert_int_equal(crest_timer_start(t, 0, 0), 0);
}

/* timeout_ms: every negative value waits like -1 (and, like -1, not at all
 * with nothing alive), INT_MAX is a bound like any other, and no timeout
 * blocks while a timer is due. */
static void test_run_once_timeout_extremes(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    static const int negatives[] = {-1, -2, -1000, INT_MIN};
    for (size_t i = 0; i < sizeof negatives / sizeof negatives[0]; i++)
        assert_int_equal(crest_loop_run_once(loop, negatives[i]), 0); /* nothing alive */
    assert_int_equal(crest_loop_run_once(loop, 0), 0);

    /* A 2 ms repeating timer ends the wait of INT_MIN and INT_MAX alike
     * (repeating, so that a timer is still there to end the wait if it
     * fires before the poll). */
    int fired = 0;
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(loop, count_timer_cb, &fired, &t), 0);
    assert_int_equal(crest_timer_start(t, 2, 2), 0);
    static const int waits[] = {INT_MIN, -7, INT_MAX, INT_MAX - 1};
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        int want = fired + 1;
        for (int n = 0; n < 100 && fired < want; n++)
            assert_int_equal(crest_loop_run_once(loop, waits[i]), 1);
        assert_true(fired >= want);
    }
    crest_timer_destroy(t);

    /* A timer that stays due: INT_MAX does not block. */
    int left = 3;
    assert_int_equal(crest_timer_create(loop, restart_zero_cb, &left, &t), 0);
    assert_int_equal(crest_timer_start(t, 0, 0), 0);
    assert_int_equal(crest_loop_run_once(loop, INT_MAX), 1);
    assert_int_equal(crest_loop_run_once(loop, INT_MAX), 1);
    assert_int_equal(left, 1);
    bool blocked = tu_watchdog_disarm(&wd);
    crest_timer_destroy(t);
    assert_false(blocked);

    /* Nothing alive and INT_MAX: a post from another thread ends the wait. */
    rec_reset(loop);
    pthread_t th;
    tu_watchdog_arm(&wd, loop, 10000);
    assert_int_equal(pthread_create(&th, NULL, post_later_main, loop), 0);
    for (int n = 0; n < 100 && rec.n == 0; n++)
        assert_true(crest_loop_run_once(loop, INT_MAX) >= 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    blocked = tu_watchdog_disarm(&wd);
    assert_int_equal(rec.n, 1);
    assert_false(blocked);
    tu_destroy_loop(loop);
}

static void test_null_loop(void **state) {
    (void)state;
    assert_int_equal(crest_loop_run(NULL), -EINVAL);
    assert_int_equal(crest_loop_run_once(NULL, 0), -EINVAL);
    assert_int_equal(crest_loop_run_once(NULL, -1), -EINVAL);
    crest_loop_stop(NULL);
    assert_int_equal(crest_loop_create(NULL), -EINVAL);
    assert_int_equal(crest_loop_destroy(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_create_destroy),
        tu_test(test_loop_data),
        tu_test(test_fds_are_cloexec),
        tu_test(test_run_returns_when_nothing_alive),
        tu_test(test_stop_from_callback),
        tu_test(test_defer_order_and_next_iteration),
        tu_test(test_defer_does_not_block),
        tu_test(test_defer_many),
        tu_test(test_run_once_zero_does_not_block),
        tu_test(test_now_cached_and_advances),
        tu_test(test_stats_move),
        tu_test(test_destroy_logs_no_leak),
        tu_test(test_destroy_reports_own_fds_only),
        tu_test(test_destroy_releases_attached),
        tu_test(test_sigpipe_handler_kept),
        tu_test(test_sigpipe_ignored),
        tu_test(test_nested_run_refused_in_every_callback),
        tu_test(test_nested_run_once_keeps_deferred_queue),
        tu_test(test_stop_from_another_thread),
        tu_test(test_run_once_timeout_extremes),
        tu_test(test_null_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
