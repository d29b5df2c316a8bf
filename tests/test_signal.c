/* Tests for signal watchers (include/crest/signal.h). */
#include "crest_test.h"

#include <signal.h>

/* ---- helpers ------------------------------------------------------------ */

/* A signal that arrives while it is not blocked runs this handler instead
 * of killing the test program; the tests assert it never runs. */
static volatile sig_atomic_t stray;

static void stray_handler(int signo) {
    (void)signo;
    stray++;
}

static int group_setup(void **state) {
    (void)state;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stray_handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0 || sigaction(SIGUSR2, &sa, NULL) != 0)
        return -1;
    sigset_t none;
    sigemptyset(&none);
    return pthread_sigmask(SIG_SETMASK, &none, NULL) == 0 ? 0 : -1;
}

static bool is_blocked(int signo) {
    sigset_t cur;
    assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
    return sigismember(&cur, signo) == 1;
}

struct sw {
    crest_signal_t *sig;
    crest_loop_t *loop;
    int calls;
    int last_signo;
    bool stop_self;
    struct sw *stop_other; /* stop this watcher from the callback */
};

static void sw_cb(crest_signal_t *sig, int signo, void *arg) {
    struct sw *w = arg;
    assert_ptr_equal(sig, w->sig);
    w->calls++;
    w->last_signo = signo;
    if (w->stop_other && w->stop_other->sig) {
        crest_signal_stop(w->stop_other->sig);
        w->stop_other->sig = NULL;
        w->stop_other = NULL;
    }
    if (w->stop_self) {
        crest_signal_stop(sig);
        w->sig = NULL;
    }
}

static void sw_start(crest_loop_t *loop, struct sw *w, int signo) {
    memset(w, 0, sizeof *w);
    w->loop = loop;
    assert_int_equal(crest_signal_start(loop, signo, sw_cb, w, &w->sig), 0);
    assert_non_null(w->sig);
}

static void sw_stop(struct sw *w) {
    if (w->sig)
        crest_signal_stop(w->sig);
    w->sig = NULL;
}

/* Spin until w has been called (at most n non-blocking iterations). */
static void spin_for(crest_loop_t *loop, const struct sw *w, int n) {
    for (int i = 0; i < n && w->calls == 0; i++)
        assert_true(crest_loop_run_once(loop, 0) >= 0);
}

static int sig_setup(void **state) {
    stray = 0;
    return tu_setup(state);
}

#define sig_test(f) cmocka_unit_test_setup_teardown(f, sig_setup, tu_teardown)

/* ---- tests -------------------------------------------------------------- */

static void test_raise_delivers(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    assert_false(is_blocked(SIGUSR1));
    struct sw a;
    sw_start(loop, &a, SIGUSR1);
    assert_true(is_blocked(SIGUSR1));
    tu_spin(loop, 2);
    assert_int_equal(a.calls, 0);

    assert_int_equal(raise(SIGUSR1), 0);
    assert_int_equal(a.calls, 0); /* never in signal context */
    spin_for(loop, &a, 10);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.last_signo, SIGUSR1);
    tu_spin(loop, 3);
    assert_int_equal(a.calls, 1);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.signals >= 1);

    sw_stop(&a);
    assert_false(is_blocked(SIGUSR1)); /* the last watcher stopped */
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

static void test_kill_delivers(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a;
    sw_start(loop, &a, SIGUSR1);
    assert_int_equal(kill(getpid(), SIGUSR1), 0);
    spin_for(loop, &a, 10);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.last_signo, SIGUSR1);
    /* And again: each signal is a new event. */
    assert_int_equal(kill(getpid(), SIGUSR1), 0);
    for (int i = 0; i < 10 && a.calls < 2; i++)
        crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 2);
    sw_stop(&a);
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

static void test_two_watchers_same_signal(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a, b;
    sw_start(loop, &a, SIGUSR1);
    sw_start(loop, &b, SIGUSR1);
    assert_int_equal(raise(SIGUSR1), 0);
    for (int i = 0; i < 10 && (a.calls == 0 || b.calls == 0); i++)
        crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(a.last_signo, SIGUSR1);
    assert_int_equal(b.last_signo, SIGUSR1);

    /* One stopped: still blocked, the other still called. */
    sw_stop(&a);
    assert_true(is_blocked(SIGUSR1));
    assert_int_equal(raise(SIGUSR1), 0);
    for (int i = 0; i < 10 && b.calls < 2; i++)
        crest_loop_run_once(loop, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 2);
    sw_stop(&b);
    assert_false(is_blocked(SIGUSR1));
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

static void test_two_signals(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a, b;
    sw_start(loop, &a, SIGUSR1);
    sw_start(loop, &b, SIGUSR2);
    assert_true(is_blocked(SIGUSR1));
    assert_true(is_blocked(SIGUSR2));
    assert_int_equal(raise(SIGUSR2), 0);
    spin_for(loop, &b, 10);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.last_signo, SIGUSR2);
    assert_int_equal(a.calls, 0);
    assert_int_equal(raise(SIGUSR1), 0);
    spin_for(loop, &a, 10);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.last_signo, SIGUSR1);
    assert_int_equal(b.calls, 1);
    sw_stop(&a);
    assert_false(is_blocked(SIGUSR1));
    assert_true(is_blocked(SIGUSR2));
    sw_stop(&b);
    assert_false(is_blocked(SIGUSR2));
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

/* An active signal watcher keeps run going; a callback that stops it (its
 * own watcher) lets run return. */
static void test_stop_from_own_callback(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a;
    sw_start(loop, &a, SIGUSR1);
    a.stop_self = true;
    assert_int_equal(crest_loop_run_once(loop, 0), 1); /* alive */
    assert_int_equal(raise(SIGUSR1), 0);
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 10000);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_false(tu_watchdog_disarm(&wd));
    assert_int_equal(a.calls, 1);
    assert_null(a.sig);
    assert_false(is_blocked(SIGUSR1));
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

/* Two watchers of one signal: whichever is called first stops the other,
 * which must then not be called (nor touched after it is freed). */
static void test_stop_other_during_dispatch(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a, b;
    sw_start(loop, &a, SIGUSR1);
    sw_start(loop, &b, SIGUSR1);
    a.stop_other = &b;
    b.stop_other = &a;
    assert_int_equal(raise(SIGUSR1), 0);
    for (int i = 0; i < 10 && a.calls + b.calls == 0; i++)
        crest_loop_run_once(loop, 0);
    tu_spin(loop, 2);
    assert_int_equal(a.calls + b.calls, 1);
    struct sw *alive = a.sig ? &a : &b;
    assert_non_null(alive->sig);
    assert_true(is_blocked(SIGUSR1));
    sw_stop(alive);
    assert_false(is_blocked(SIGUSR1));
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

static void test_restart_after_stop(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a;
    for (int round = 0; round < 3; round++) {
        sw_start(loop, &a, SIGUSR2);
        assert_true(is_blocked(SIGUSR2));
        assert_int_equal(raise(SIGUSR2), 0);
        spin_for(loop, &a, 10);
        assert_int_equal(a.calls, 1);
        sw_stop(&a);
        assert_false(is_blocked(SIGUSR2));
    }
    assert_int_equal(stray, 0);
    tu_destroy_loop(loop);
}

static void test_einval(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t open_before = crest_fd_open_count();
    static const int bad[] = {SIGKILL, SIGSTOP, 0, -1, NSIG, 1000};
    struct sw a = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        crest_signal_t *s = NULL;
        assert_int_equal(crest_signal_start(loop, bad[i], sw_cb, &a, &s), -EINVAL);
    }
    assert_false(is_blocked(SIGUSR1));
    assert_int_equal(crest_fd_open_count(), open_before);
    /* A failed start keeps nothing alive. */
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    tu_destroy_loop(loop);
}

/* A signal the application blocked itself stays blocked after crest's
 * watcher stops. */
static void test_stop_keeps_application_block(void **state) {
    (void)state;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGUSR2);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &one, NULL), 0);
    crest_loop_t *loop = tu_loop();
    struct sw a;
    sw_start(loop, &a, SIGUSR2);
    assert_int_equal(raise(SIGUSR2), 0);
    spin_for(loop, &a, 10);
    assert_int_equal(a.calls, 1);
    sw_stop(&a);
    bool still_blocked = is_blocked(SIGUSR2);
    assert_int_equal(pthread_sigmask(SIG_UNBLOCK, &one, NULL), 0);
    tu_destroy_loop(loop);
    assert_true(still_blocked);
    assert_int_equal(stray, 0);
}

/* Destroying the loop with a watcher still active releases it (valgrind:
 * no leak), logs a warning and unblocks the signal. */
static void test_destroy_with_active_watcher(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw a;
    sw_start(loop, &a, SIGUSR1);
    tu_log_clear();
    tu_destroy_loop(loop);
    assert_true(tu_log.warnings >= 1);
    assert_false(is_blocked(SIGUSR1));
    assert_int_equal(stray, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        sig_test(test_raise_delivers),
        sig_test(test_kill_delivers),
        sig_test(test_two_watchers_same_signal),
        sig_test(test_two_signals),
        sig_test(test_stop_from_own_callback),
        sig_test(test_stop_other_during_dispatch),
        sig_test(test_restart_after_stop),
        sig_test(test_einval),
        sig_test(test_stop_keeps_application_block),
        sig_test(test_destroy_with_active_watcher),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
