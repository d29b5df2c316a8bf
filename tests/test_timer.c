/* Tests for timers (include/crest/timer.h).
 *
 * No durations are asserted except "never fires before its deadline", checked
 * against the loop's own clock (crest_loop_now_ns). */
#include "crest_test.h"

#include <sys/eventfd.h>

#define MS 1000000ull

/* ---- helpers ------------------------------------------------------------ */

/* A timer that records its firings. */
struct tt {
    crest_loop_t *loop;
    crest_timer_t *t;
    int id;
    int calls;
    uint64_t start_ns;    /* loop time when started */
    uint64_t timeout_ms;
    uint64_t repeat_ms;
    uint64_t fired_ns[16];
    int stop_after;       /* stop itself after this many calls (0: never) */
    int destroy_after;    /* destroy itself after this many calls (0: never) */
    int rearm_times;      /* re-start itself (one-shot) this many times */
    crest_timer_t *victim; /* destroy this other timer when fired */
    crest_timer_t *stop_victim; /* stop this other timer when fired */
};

static int order[1024];
static int order_n;

static void tt_cb(crest_timer_t *t, void *arg) {
    struct tt *x = arg;
    assert_ptr_equal(t, x->t);
    uint64_t now = crest_loop_now_ns(x->loop);
    if (x->calls < 16)
        x->fired_ns[x->calls] = now;
    x->calls++;
    if (order_n < 1024)
        order[order_n++] = x->id;
    /* Never before its deadline: the k-th firing is at least
     * timeout + (k-1) * repeat after the start. */
    uint64_t due = x->start_ns + (x->timeout_ms + (uint64_t)(x->calls - 1) * x->repeat_ms) * MS;
    if (now < due)
        fail_msg("timer %d fired at %llu ns, before its deadline %llu ns (call %d)", x->id,
                 (unsigned long long)now, (unsigned long long)due, x->calls);
    if (x->victim) {
        crest_timer_destroy(x->victim);
        x->victim = NULL;
    }
    if (x->stop_victim) {
        crest_timer_stop(x->stop_victim);
        x->stop_victim = NULL;
    }
    if (x->rearm_times > 0) {
        x->rearm_times--;
        x->start_ns = now;
        x->calls = 0; /* deadlines count from the new start */
        assert_int_equal(crest_timer_start(t, x->timeout_ms, 0), 0);
    }
    if (x->stop_after && x->calls == x->stop_after) {
        crest_timer_stop(t);
        assert_false(crest_timer_active(t));
    }
    if (x->destroy_after && x->calls == x->destroy_after) {
        crest_timer_destroy(t);
        x->t = NULL;
    }
}

static void tt_init(crest_loop_t *loop, struct tt *x, int id) {
    memset(x, 0, sizeof *x);
    x->loop = loop;
    x->id = id;
    assert_int_equal(crest_timer_create(loop, tt_cb, x, &x->t), 0);
    assert_non_null(x->t);
    assert_false(crest_timer_active(x->t));
}

static void tt_start(struct tt *x, uint64_t timeout_ms, uint64_t repeat_ms) {
    x->start_ns = crest_loop_now_ns(x->loop);
    x->calls = 0;
    x->timeout_ms = timeout_ms;
    x->repeat_ms = repeat_ms;
    assert_int_equal(crest_timer_start(x->t, timeout_ms, repeat_ms), 0);
    assert_true(crest_timer_active(x->t));
}

static void tt_destroy(struct tt *x) {
    if (x->t)
        crest_timer_destroy(x->t);
    x->t = NULL;
}

/* crest_loop_run, with a watchdog so that a loop which never returns fails
 * the test instead of hanging it. */
static void run_guarded(crest_loop_t *loop) {
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    int rc = crest_loop_run(loop);
    bool fired = tu_watchdog_disarm(&wd);
    assert_int_equal(rc, 0);
    assert_false(fired);
}

/* ---- tests -------------------------------------------------------------- */

static void test_one_shot_fires_once(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    order_n = 0;
    struct tt a;
    tt_init(loop, &a, 1);
    tt_start(&a, 5, 0);
    assert_int_equal(crest_loop_run(loop), 0); /* returns: nothing left */
    assert_int_equal(a.calls, 1);
    assert_false(crest_timer_active(a.t));
    assert_int_equal(crest_timer_remaining(a.t), UINT64_MAX);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_int_equal(a.calls, 1);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    tt_destroy(&a);
    tu_destroy_loop(loop);
    assert_int_equal(st.timers_fired, 1);
    assert_true(st.callbacks >= 1); /* "every callback the loop invoked" */
}

/* A zero timeout fires on the next iteration. */
static void test_zero_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    tt_start(&a, 0, 0);
    assert_int_equal(a.calls, 0); /* never from inside start */
    crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 1);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

/* run_once(-1) waits until the next timer, then dispatches due timers: the
 * timer that ended the wait has fired when it returns. */
static void test_run_once_blocking_fires_due_timer(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    /* From a fresh clock and long enough that it is not already due when
     * run_once starts (valgrind is slow), short enough to wait for. */
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    crest_loop_update_time(loop);
    tt_start(&a, 30, 0);
    int rc = crest_loop_run_once(loop, -1);
    bool fired = tu_watchdog_disarm(&wd);
    assert_false(fired);
    int calls = a.calls;
    /* Clean up before asserting, so a failure leaves nothing behind. */
    while (a.calls == 0 && crest_loop_run_once(loop, -1) > 0)
        ;
    tt_destroy(&a);
    tu_destroy_loop(loop);
    if (calls != 1)
        fail_msg("run_once(-1) returned %d after waiting for a 30 ms timer, but the timer had "
                 "not fired (it fired on the next call)",
                 rc);
}

static void test_order(void **state) {
    (void)state;
    static const uint64_t timeouts[] = {30, 10, 20, 1, 5, 10, 2, 10};
    /* expected: by deadline, ties in start order */
    static const int expect[] = {3, 6, 4, 1, 5, 7, 2, 0};
    enum { N = sizeof timeouts / sizeof timeouts[0] };
    crest_loop_t *loop = tu_loop();
    static struct tt x[N];
    order_n = 0;
    for (int i = 0; i < N; i++) {
        tt_init(loop, &x[i], i);
        tt_start(&x[i], timeouts[i], 0);
    }
    run_guarded(loop);
    assert_int_equal(order_n, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(order[i], expect[i]);
    for (int i = 0; i < N; i++)
        tt_destroy(&x[i]);
    tu_destroy_loop(loop);
}

/* Timers that all come due while the loop is not looking fire in deadline
 * order in one iteration. */
static void test_order_when_all_due_at_once(void **state) {
    (void)state;
    enum { N = 200 };
    crest_loop_t *loop = tu_loop();
    static struct tt x[N];
    uint32_t seed = 12345;
    order_n = 0;
    for (int i = 0; i < N; i++) {
        seed = seed * 1103515245u + 12345u;
        tt_init(loop, &x[i], i);
        tt_start(&x[i], (seed >> 16) % 8, 0);
    }
    tu_sleep_ms(10);
    crest_loop_run_once(loop, 0);
    assert_int_equal(order_n, N);
    for (int i = 1; i < N; i++) {
        const struct tt *p = &x[order[i - 1]], *q = &x[order[i]];
        assert_true(p->timeout_ms <= q->timeout_ms);
        if (p->timeout_ms == q->timeout_ms)
            assert_true(p->id < q->id);
    }
    for (int i = 0; i < N; i++)
        tt_destroy(&x[i]);
    tu_destroy_loop(loop);
}

static void test_repeat_then_stop_from_callback(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    a.stop_after = 5;
    tt_start(&a, 2, 2);
    run_guarded(loop); /* returns once the timer stopped itself */
    assert_int_equal(a.calls, 5);
    assert_false(crest_timer_active(a.t));
    for (int i = 1; i < 5; i++)
        assert_true(a.fired_ns[i] > a.fired_ns[i - 1]);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.timers_fired, 5);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

/* A repeating timer that fell behind fires once, not in a burst. */
static void test_repeat_no_burst(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    tt_start(&a, 1, 1);
    tu_sleep_ms(20);
    crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 1);
    assert_true(crest_timer_active(a.t));
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_cancel_before_fire(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a, b;
    tt_init(loop, &a, 1);
    tt_start(&a, 5, 0);
    crest_timer_stop(a.t);
    crest_timer_stop(a.t); /* twice is fine */
    assert_false(crest_timer_active(a.t));
    assert_int_equal(crest_timer_remaining(a.t), UINT64_MAX);
    assert_int_equal(crest_loop_run(loop), 0); /* nothing alive */
    tu_sleep_ms(6);
    tu_spin(loop, 3);
    assert_int_equal(a.calls, 0);

    /* Cancelled from another timer's callback, before it comes due. */
    struct tt c;
    tt_init(loop, &c, 3);
    tt_init(loop, &b, 2);
    tt_start(&c, 10, 0);
    tt_start(&b, 1, 0);
    b.stop_victim = c.t;
    run_guarded(loop); /* returns after b: c was the only other thing alive */
    assert_int_equal(b.calls, 1);
    assert_int_equal(c.calls, 0);
    assert_false(crest_timer_active(c.t));
    tt_destroy(&a);
    tt_destroy(&b);
    tt_destroy(&c);
    tu_destroy_loop(loop);
}

/* The idle-timeout pattern: an idle timer is pushed back by
 * crest_timer_again() from a faster repeating timer; it must not fire until
 * the resets stop. */
struct idle_ctx {
    crest_loop_t *loop;
    crest_timer_t *idle, *ticker;
    int ticks, ticks_max;
    int idle_calls, ticks_at_idle;
    uint64_t last_again_ns, idle_fired_ns;
};

static void ticker_cb(crest_timer_t *t, void *arg) {
    struct idle_ctx *c = arg;
    c->ticks++;
    assert_int_equal(crest_timer_again(c->idle), 0);
    c->last_again_ns = crest_loop_now_ns(c->loop);
    assert_true(crest_timer_active(c->idle));
    if (c->ticks == c->ticks_max)
        crest_timer_stop(t);
}

static void idle_cb(crest_timer_t *t, void *arg) {
    struct idle_ctx *c = arg;
    c->idle_calls++;
    c->ticks_at_idle = c->ticks;
    c->idle_fired_ns = crest_loop_now_ns(c->loop);
    crest_timer_stop(t);
}

static void test_again_pushes_deadline(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct idle_ctx c = {.loop = loop, .ticks_max = 15};
    assert_int_equal(crest_timer_create(loop, idle_cb, &c, &c.idle), 0);
    assert_int_equal(crest_timer_create(loop, ticker_cb, &c, &c.ticker), 0);
    assert_int_equal(crest_timer_start(c.idle, 20, 20), 0);
    assert_int_equal(crest_timer_start(c.ticker, 2, 2), 0);
    run_guarded(loop);
    assert_int_equal(c.ticks, c.ticks_max);
    assert_int_equal(c.idle_calls, 1);
    assert_int_equal(c.ticks_at_idle, c.ticks_max); /* not before the resets stopped */
    assert_true(c.idle_fired_ns >= c.last_again_ns + 20 * MS);
    crest_timer_destroy(c.idle);
    crest_timer_destroy(c.ticker);
    tu_destroy_loop(loop);
}

/* After crest_timer_again() moved a deadline later (lazily), timers due in
 * the same iteration still fire in deadline order. */
static void test_again_keeps_deadline_order(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a, b;
    order_n = 0;
    tt_init(loop, &a, 1);
    tt_init(loop, &b, 2);
    tt_start(&b, 1, 8);                       /* b: deadline now+1 ... */
    assert_int_equal(crest_timer_again(b.t), 0); /* ... moved to now+8 */
    b.timeout_ms = 8;
    b.repeat_ms = 8;
    b.stop_after = 1;
    tt_start(&a, 5, 0); /* a: now+5, earlier than b's real deadline */
    assert_true(crest_timer_remaining(b.t) > crest_timer_remaining(a.t));
    tu_sleep_ms(15); /* both due by the next iteration */
    crest_loop_run_once(loop, 0);
    tt_destroy(&a);
    tt_destroy(&b);
    tu_destroy_loop(loop);
    assert_int_equal(order_n, 2);
    assert_int_equal(order[0], 1); /* a (deadline +5) before b (deadline +8) */
    assert_int_equal(order[1], 2);
}

static void test_again_with_zero_repeat_stops(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    tt_start(&a, 50, 0);
    crest_timer_again(a.t);
    assert_false(crest_timer_active(a.t));
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    /* set_repeat then again: armed with the new interval */
    crest_timer_set_repeat(a.t, 3);
    assert_int_equal(crest_timer_again(a.t), 0);
    assert_true(crest_timer_active(a.t));
    a.start_ns = crest_loop_now_ns(loop);
    a.timeout_ms = 3;
    a.repeat_ms = 3;
    a.stop_after = 2;
    run_guarded(loop);
    assert_int_equal(a.calls, 2);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_destroy_from_own_callback(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a, b;
    tt_init(loop, &a, 1);
    tt_init(loop, &b, 2);
    a.destroy_after = 1;
    b.destroy_after = 3;
    tt_start(&a, 1, 0);
    tt_start(&b, 1, 1); /* repeating: destroyed at its third firing */
    run_guarded(loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 3);
    assert_null(a.t);
    assert_null(b.t);
    tu_destroy_loop(loop);
}

/* A callback destroys another timer that is due in the same iteration: the
 * other one never fires (and nothing touches freed memory). */
static void test_destroy_other_due_same_iteration(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a, b;
    order_n = 0;
    tt_init(loop, &a, 1);
    tt_init(loop, &b, 2);
    tt_start(&a, 1, 0);
    tt_start(&b, 1, 0); /* same deadline, started later: fires after a */
    a.victim = b.t;
    b.t = NULL;
    tu_sleep_ms(3);
    crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_rearm(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    tt_start(&a, 3600 * 1000, 0);
    tt_start(&a, 2, 0); /* earlier: re-armed, fires once */
    a.rearm_times = 2;  /* and re-starts itself twice from its callback */
    run_guarded(loop);
    assert_int_equal(a.calls, 1); /* reset by each re-arm: 1 after the last */
    assert_int_equal(a.rearm_times, 0);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_int_equal(st.timers_fired, 3);

    /* Re-armed later while running: the earlier deadline is gone. */
    tt_start(&a, 1, 0);
    tt_start(&a, 10, 0);
    run_guarded(loop); /* tt_cb checks "not before its deadline" */
    assert_int_equal(a.calls, 1);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_remaining(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1);
    assert_int_equal(crest_timer_remaining(a.t), UINT64_MAX);
    tt_start(&a, 100000, 0);
    uint64_t r = crest_timer_remaining(a.t);
    assert_true(r <= 100000);
    assert_true(r >= 99000);
    tt_start(&a, 1, 0);
    assert_true(crest_timer_remaining(a.t) <= 1);
    tu_sleep_ms(3);
    crest_loop_update_time(loop);
    assert_int_equal(crest_timer_remaining(a.t), 0); /* due, not yet fired */
    assert_int_equal(a.calls, 0);
    crest_timer_stop(a.t);
    assert_int_equal(crest_timer_remaining(a.t), UINT64_MAX);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_run_returns_with_only_stopped_timer(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a;
    tt_init(loop, &a, 1); /* created, never started */
    run_guarded(loop);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    tt_start(&a, 1000, 0);
    assert_int_equal(crest_loop_run_once(loop, 0), 1); /* alive while armed */
    crest_timer_stop(a.t);
    run_guarded(loop);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    assert_int_equal(a.calls, 0);
    tt_destroy(&a);
    tu_destroy_loop(loop);
}

static void test_bad_arguments(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_timer_t *t = NULL;
    int rc = crest_timer_create(loop, NULL, NULL, &t);
    if (rc == 0) {
        /* the header's reading: create succeeds, start refuses */
        assert_int_equal(crest_timer_start(t, 1, 0), -EINVAL);
        assert_false(crest_timer_active(t));
        crest_timer_destroy(t);
    } else {
        assert_int_equal(rc, -EINVAL);
    }
    crest_timer_stop(NULL);
    crest_timer_destroy(NULL);
    assert_false(crest_timer_active(NULL));
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    tu_destroy_loop(loop);
}

/* ---- a timer armed from a timer callback waits for the next iteration ---- */

/* Restarts itself with timeout 0 from its callback, at most max times (a
 * bound, so that a loop which never leaves its timer pass still ends). */
struct spinner {
    crest_loop_t *loop;
    crest_timer_t *t;
    int calls, max;
};

static void spinner_cb(crest_timer_t *t, void *arg) {
    struct spinner *s = arg;
    if (++s->calls < s->max)
        assert_int_equal(crest_timer_start(t, 0, 0), 0);
}

static bool deferred_ran;
static bool posted_ran;

static void mark_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    *(bool *)arg = true;
}

static int io_calls;

static void efd_cb(crest_io_t *io, unsigned events, void *arg) {
    (void)events;
    (void)arg;
    uint64_t v;
    while (read(crest_io_fd(io), &v, sizeof v) > 0)
        ;
    io_calls++;
}

static void stop_on_io_cb(crest_io_t *io, unsigned events, void *arg) {
    efd_cb(io, events, arg);
    crest_loop_stop(crest_io_loop(io));
}

/* A timer that restarts itself with timeout 0 fires once per iteration: the
 * other work of the iteration (I/O, deferred and posted callbacks) runs,
 * run_once(-1) does not block, and crest_loop_stop() ends crest_loop_run. */
static void test_zero_restart_once_per_iteration(void **state) {
    (void)state;
    enum { MAX = 1000 };
    crest_loop_t *loop = tu_loop();
    struct spinner s = {.loop = loop, .max = MAX};
    assert_int_equal(crest_timer_create(loop, spinner_cb, &s, &s.t), 0);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(efd >= 0);
    crest_io_t *io = NULL;
    assert_int_equal(crest_io_start(loop, efd, CREST_IO_READABLE, efd_cb, NULL, &io), 0);
    deferred_ran = posted_ran = false;
    io_calls = 0;

    assert_int_equal(crest_timer_start(s.t, 0, 0), 0);
    assert_int_equal(crest_loop_defer(loop, mark_cb, &deferred_ran), 0);
    assert_int_equal(crest_loop_post(loop, mark_cb, &posted_ran), 0);
    uint64_t one = 1;
    assert_int_equal(write(efd, &one, sizeof one), (ssize_t)sizeof one);
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    int first = s.calls;
    bool deferred = deferred_ran, posted = posted_ran;
    int io_first = io_calls;

    /* Each further iteration: one firing more. */
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    int second = s.calls;
    /* Due, so a blocking run_once does not block. */
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    assert_int_equal(crest_loop_run_once(loop, -1), 1);
    bool blocked = tu_watchdog_disarm(&wd);
    int third = s.calls;

    /* crest_loop_run ends at a stop made by an io callback. */
    crest_io_stop(io);
    assert_int_equal(crest_io_start(loop, efd, CREST_IO_READABLE, stop_on_io_cb, NULL, &io), 0);
    assert_int_equal(write(efd, &one, sizeof one), (ssize_t)sizeof one);
    int before_run = s.calls;
    tu_watchdog_arm(&wd, loop, 10000);
    assert_int_equal(crest_loop_run(loop), 0);
    bool run_blocked = tu_watchdog_disarm(&wd);
    int in_run = s.calls - before_run;

    crest_io_stop(io);
    close(efd);
    crest_timer_destroy(s.t);
    tu_destroy_loop(loop);
    assert_int_equal(first, 1); /* was MAX: the pass never ended by itself */
    assert_true(deferred);
    assert_true(posted);
    assert_int_equal(io_first, 1);
    assert_int_equal(second, 2);
    assert_false(blocked);
    assert_int_equal(third, 3);
    assert_false(run_blocked);
    assert_true(in_run >= 1 && in_run <= 2); /* the stopping iteration, maybe one before */
}

struct chain {
    crest_timer_t *other;
    int calls;
};

static void chain_cb(crest_timer_t *t, void *arg) {
    (void)t;
    struct chain *c = arg;
    c->calls++;
    if (c->other)
        assert_int_equal(crest_timer_start(c->other, 0, 0), 0);
}

/* A timer started with timeout 0 from another timer's callback fires on the
 * next iteration, not in the same pass; a repeat armed by a pass does not
 * fire again in the same iteration either. */
static void test_started_by_timer_fires_next_iteration(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct chain a = {0}, b = {0};
    crest_timer_t *ta = NULL, *tb = NULL;
    assert_int_equal(crest_timer_create(loop, chain_cb, &a, &ta), 0);
    assert_int_equal(crest_timer_create(loop, chain_cb, &b, &tb), 0);
    a.other = tb;
    assert_int_equal(crest_timer_start(ta, 0, 0), 0);
    int rc1 = crest_loop_run_once(loop, 0);
    int a1 = a.calls, b1 = b.calls;
    int rc2 = crest_loop_run_once(loop, 0);
    int a2 = a.calls, b2 = b.calls;

    /* A 1 ms repeat fired by the first pass, with a wait longer than that
     * before the second pass: still once per iteration. */
    assert_int_equal(crest_timer_start(ta, 1, 1), 0);
    a.other = NULL;
    a.calls = 0;
    tu_sleep_ms(3);
    int per_iter_max = 0;
    for (int i = 0; i < 5; i++) {
        int before = a.calls;
        assert_int_equal(crest_loop_run_once(loop, 3), 1);
        if (a.calls - before > per_iter_max)
            per_iter_max = a.calls - before;
    }
    crest_timer_destroy(ta);
    crest_timer_destroy(tb);
    tu_destroy_loop(loop);
    assert_int_equal(a1, 1);
    assert_int_equal(b1, 0); /* was 1: fired in the pass that started it */
    assert_int_equal(rc1, 1); /* b still armed */
    assert_int_equal(a2, 1);
    assert_int_equal(b2, 1);
    assert_int_equal(rc2, 0);
    assert_int_equal(per_iter_max, 1);
}

/* ---- ties after crest_timer_again --------------------------------------- */

/* a is moved (lazily, by again) to the same deadline b gets afterwards: a's
 * again came first, so a fires first. */
static void test_again_ties_in_start_order(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tt a, b, c;
    order_n = 0;
    tt_init(loop, &a, 1);
    tt_init(loop, &b, 2);
    tt_init(loop, &c, 3);
    tt_start(&a, 1, 10);                         /* key now+1 */
    assert_int_equal(crest_timer_again(a.t), 0); /* due now+10, key stays */
    a.timeout_ms = 10;
    a.stop_after = 1;
    tt_start(&b, 10, 0); /* now+10, started after a's again */
    /* c: started, then b restarted, then c again at the same now: c's
     * deadline does not move, only its start order (now after b's). */
    tt_start(&c, 10, 10);
    c.stop_after = 1;
    tt_start(&b, 10, 0);
    assert_int_equal(crest_timer_again(c.t), 0);
    tu_sleep_ms(15);
    crest_loop_run_once(loop, 0);
    tt_destroy(&a);
    tt_destroy(&b);
    tt_destroy(&c);
    tu_destroy_loop(loop);
    assert_int_equal(order_n, 3);
    assert_int_equal(order[0], 1); /* was 2 first: a re-keyed late lost its place */
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 3);
}

/* ---- extreme values ----------------------------------------------------- */

#define FAR_MS (1ull << 40) /* about 35 years: "never" for these tests */

static void test_extreme_timeouts(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* Deadlines that overflow now_ns + timeout when not saturated. */
    static const uint64_t huge[] = {
        UINT64_MAX, UINT64_MAX - 1, UINT64_MAX / 1000000 + 1, UINT64_MAX / 2,
    };
    enum { NH = sizeof huge / sizeof huge[0] };
    struct tt h[NH];
    for (int i = 0; i < NH; i++) {
        tt_init(loop, &h[i], 10 + i);
        tt_start(&h[i], huge[i], i % 2 ? UINT64_MAX : 0);
        assert_true(crest_timer_remaining(h[i].t) > FAR_MS);
    }
    /* UINT32_MAX ms: 49 days, no overflow, but not soon either. */
    struct tt u;
    tt_init(loop, &u, 20);
    tt_start(&u, UINT32_MAX, UINT32_MAX);
    uint64_t r = crest_timer_remaining(u.t);
    assert_true(r <= UINT32_MAX && r >= UINT32_MAX - 60000ull);
    /* Fires after 1 ms, then never again (repeat UINT64_MAX saturates). */
    struct tt one;
    tt_init(loop, &one, 30);
    tt_start(&one, 1, UINT64_MAX);
    /* Timeout 0, repeat 1: fires at once, then each millisecond. */
    struct tt zero;
    tt_init(loop, &zero, 40);
    tt_start(&zero, 0, 1);

    tu_sleep_ms(3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(crest_loop_run_once(loop, 2), 1);
        tu_sleep_ms(2);
    }
    int zero_calls = zero.calls;
    crest_timer_stop(zero.t);
    for (int i = 0; i < NH; i++) {
        assert_int_equal(h[i].calls, 0); /* was 1: the deadline wrapped */
        assert_true(crest_timer_active(h[i].t));
        assert_true(crest_timer_remaining(h[i].t) > FAR_MS);
    }
    assert_int_equal(u.calls, 0);
    assert_int_equal(one.calls, 1);
    assert_true(crest_timer_active(one.t));
    assert_true(crest_timer_remaining(one.t) > FAR_MS);
    assert_true(zero_calls >= 2);

    /* again and set_repeat with huge intervals saturate too. */
    crest_timer_set_repeat(one.t, UINT64_MAX);
    assert_int_equal(crest_timer_again(one.t), 0);
    assert_true(crest_timer_remaining(one.t) > FAR_MS);
    crest_timer_set_repeat(one.t, UINT64_MAX / 1000000 + 1);
    assert_int_equal(crest_timer_again(one.t), 0);
    assert_true(crest_timer_remaining(one.t) > FAR_MS);
    tu_sleep_ms(2);
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    assert_int_equal(one.calls, 1);
    /* ... and repeat 0 stops it. */
    crest_timer_set_repeat(one.t, 0);
    assert_int_equal(crest_timer_again(one.t), 0);
    assert_false(crest_timer_active(one.t));

    /* A bounded wait with only "never" timers alive returns, fires nothing. */
    crest_timer_stop(u.t);
    assert_int_equal(crest_loop_run_once(loop, 1), 1);
    for (int i = 0; i < NH; i++) {
        assert_int_equal(h[i].calls, 0);
        tt_destroy(&h[i]);
    }
    tt_destroy(&u);
    tt_destroy(&one);
    tt_destroy(&zero);
    tu_destroy_loop(loop);
}

static void test_null_arguments(void **state) {
    (void)state;
    assert_int_equal(crest_timer_start(NULL, 0, 0), -EINVAL);
    assert_int_equal(crest_timer_start(NULL, UINT64_MAX, UINT64_MAX), -EINVAL);
    assert_int_equal(crest_timer_again(NULL), -EINVAL);
    crest_timer_set_repeat(NULL, 5);
    assert_int_equal(crest_timer_remaining(NULL), UINT64_MAX);
    crest_loop_t *loop = tu_loop();
    crest_timer_t *t = NULL;
    assert_int_equal(crest_timer_create(NULL, tt_cb, NULL, &t), -EINVAL);
    assert_int_equal(crest_timer_create(loop, tt_cb, NULL, NULL), -EINVAL);
    tu_destroy_loop(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_one_shot_fires_once),
        tu_test(test_zero_timeout),
        tu_test(test_run_once_blocking_fires_due_timer),
        tu_test(test_order),
        tu_test(test_order_when_all_due_at_once),
        tu_test(test_repeat_then_stop_from_callback),
        tu_test(test_repeat_no_burst),
        tu_test(test_cancel_before_fire),
        tu_test(test_again_pushes_deadline),
        tu_test(test_again_keeps_deadline_order),
        tu_test(test_again_with_zero_repeat_stops),
        tu_test(test_destroy_from_own_callback),
        tu_test(test_destroy_other_due_same_iteration),
        tu_test(test_rearm),
        tu_test(test_remaining),
        tu_test(test_run_returns_with_only_stopped_timer),
        tu_test(test_bad_arguments),
        tu_test(test_zero_restart_once_per_iteration),
        tu_test(test_started_by_timer_fires_next_iteration),
        tu_test(test_again_ties_in_start_order),
        tu_test(test_extreme_timeouts),
        tu_test(test_null_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
