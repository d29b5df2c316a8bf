/* Tests for the blocked-loop watchdog (insight.h: crest_watchdog_*): a loop
 * stuck in a callback is reported while it is still stuck, named (handler,
 * callback, connection, peer; or the function's symbol), with the stuck
 * thread's stack; a healthy or idle loop is not reported; start and stop
 * behave.
 *
 * Linked with -rdynamic so that dladdr() and backtrace_symbols() find the
 * functions below: they are not static for the same reason. */
#include "crest_test.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/wait.h>

#define SPIN_MS 300

#if defined(__SANITIZE_THREAD__)
#define TU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TU_TSAN 1
#endif
#endif
#ifndef TU_TSAN
#define TU_TSAN 0
#endif

/* Named by the watchdog through dladdr(): exported, hence declared. */
void watchdog_test_spin(unsigned ms);
ssize_t watchdog_test_on_data(crest_conn_t *c, const uint8_t *data, size_t len);
void watchdog_test_timer_cb(crest_timer_t *t, void *arg);
void watchdog_test_deferred(crest_loop_t *loop, void *arg);

/* ---- the log, timestamped (the watchdog logs from its own thread) ---- */

#define MAX_LINES 512
static struct {
    pthread_mutex_t mu;
    unsigned n;
    char *line[MAX_LINES];
    uint64_t at[MAX_LINES];
    crest_log_level_t level[MAX_LINES];
} lg = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void log_hook(crest_log_level_t level, const char *msg, void *arg) {
    (void)arg;
    uint64_t now = tu_mono_ns();
    pthread_mutex_lock(&lg.mu);
    if (lg.n < MAX_LINES) {
        lg.line[lg.n] = strdup(msg);
        lg.at[lg.n] = now;
        lg.level[lg.n] = level;
        lg.n++;
    }
    pthread_mutex_unlock(&lg.mu);
    tu_log_fn(level, msg, NULL); /* for tu_log_dump() */
}

static void log_begin(void) {
    crest_log_set_handler(log_hook, NULL);
}

/* Called once no thread logs any more (the watchdog stopped). */
static void log_end(void) {
    crest_log_set_handler(tu_log_fn, NULL);
    pthread_mutex_lock(&lg.mu);
    for (unsigned i = 0; i < lg.n; i++)
        free(lg.line[i]);
    lg.n = 0;
    pthread_mutex_unlock(&lg.mu);
}

/* The first WARN line holding every needle (NULLs end the list) logged
 * before `before` (0: any time); its index, or -1. */
static int find_line(uint64_t before, const char *a, const char *b, const char *c, const char *d,
                     const char *e) {
    const char *needles[] = {a, b, c, d, e};
    int found = -1;
    pthread_mutex_lock(&lg.mu);
    for (unsigned i = 0; i < lg.n && found < 0; i++) {
        if (lg.level[i] < CREST_LOG_WARN || (before && lg.at[i] >= before))
            continue;
        bool all = true;
        for (unsigned k = 0; k < 5 && needles[k]; k++)
            all = all && strstr(lg.line[i], needles[k]) != NULL;
        if (all)
            found = (int)i;
    }
    pthread_mutex_unlock(&lg.mu);
    return found;
}

static unsigned count_lines(const char *needle) {
    unsigned n = 0;
    pthread_mutex_lock(&lg.mu);
    for (unsigned i = 0; i < lg.n; i++)
        n += strstr(lg.line[i], needle) != NULL;
    pthread_mutex_unlock(&lg.mu);
    return n;
}

/* WATCHDOG_TEST_SHOW=1: print what was logged (docs/latency.md
 * quotes it). */
static void show_log(void) {
    if (!getenv("WATCHDOG_TEST_SHOW"))
        return;
    pthread_mutex_lock(&lg.mu);
    for (unsigned i = 0; i < lg.n; i++)
        print_message("      | %s\n", lg.line[i]);
    pthread_mutex_unlock(&lg.mu);
}

static void start_watchdog(uint32_t threshold_ms) {
    crest_watchdog_opts_t o;
    crest_watchdog_opts_init(&o);
    assert_int_equal(o.threshold_ms, 100);
    assert_true(o.backtrace);
    o.threshold_ms = threshold_ms;
    assert_int_equal(crest_watchdog_start(&o), 0);
    assert_true(crest_watchdog_running());
}

static void stop_watchdog(void) {
    crest_watchdog_stop();
    assert_false(crest_watchdog_running());
}

/* Stuck for ms of wall-clock time, as a callback that spins or blocks
 * (on a lock, a synchronous call) is.  It sleeps in 1 ms steps rather than
 * spinning only so that the other threads get the CPU on a loaded machine
 * and under valgrind (which runs one thread at a time): to the loop it is
 * the same.  Not inlined, so that it is a frame of its own. */
__attribute__((noinline)) void watchdog_test_spin(unsigned ms) {
    uint64_t until = tu_mono_ns() + (uint64_t)ms * 1000000u;
    while (tu_mono_ns() < until)
        tu_sleep_ms(1);
}

/* ---- 1: a connection's handler spinning in on_data ---- */

struct spin_srv {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    uint64_t conn_id;
    uint64_t spin_end;
    unsigned datas;
    bool closed;
};

ssize_t watchdog_test_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct spin_srv *s = crest_conn_handler_ctx(c);
    if (s->datas++ == 0) {
        s->conn_id = crest_conn_id(c);
        watchdog_test_spin(SPIN_MS);
        s->spin_end = tu_mono_ns();
    }
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void spin_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct spin_srv *s = crest_conn_handler_ctx(c);
    s->closed = true;
}

static void test_conn_handler_stall(void **state) {
    (void)state;
    log_begin();
    crest_loop_t *loop = tu_loop();
    start_watchdog(100);

    struct spin_srv s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_data = watchdog_test_on_data, .on_close = spin_on_close,
                         .name = "spinner"};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, &s, &s.l), 0);
    assert_true(crest_listener_address(s.l, s.addr, sizeof s.addr) > 0);
    int fd = tu_raw_connect(s.addr, 0);
    /* The server's peer is this client's address. */
    crest_addr_t me;
    memset(&me, 0, sizeof me);
    me.len = sizeof me.ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&me.ss, &me.len), 0);
    char peer[CREST_ADDR_STRLEN];
    assert_true(crest_addr_format(&me, peer, sizeof peer) > 0);

    tu_raw_send_all(loop, fd, "hello", 5);
    char buf[5];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, sizeof buf, &end), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_true(s.spin_end != 0);
    close(fd);
    RUN_UNTIL(loop, s.closed);

    crest_insight_t fig;
    assert_int_equal(crest_loop_get_insight(loop, &fig), 0);
    stop_watchdog();
    show_log();

    char conn[40];
    snprintf(conn, sizeof conn, "conn #%" PRIu64 " ", s.conn_id);
    /* Reported while still stuck: logged before the spin ended. */
    int i = find_line(s.spin_end, "loop blocked for", "conn handler spinner on_data", conn, peer,
                      NULL);
    if (i < 0)
        tu_log_dump();
    assert_true(i >= 0);
    /* The stack, taken while it spun, names the spinning function under
     * the handler. */
    assert_true(find_line(s.spin_end, "stack of loop thread", NULL, NULL, NULL, NULL) >= 0);
    assert_true(find_line(0, "  #", "watchdog_test_spin", NULL, NULL, NULL) >= 0);
    assert_true(find_line(0, "  #", "watchdog_test_on_data", NULL, NULL, NULL) >= 0);
    /* The loop counted the stall (iterations past 100 ms: that one, on a
     * machine that does not stall the test itself). */
    assert_true(fig.blocked >= 1);
    assert_true(fig.blocked_max_ns >= (uint64_t)SPIN_MS * 1000000u);
    print_message("      blocked %" PRIu64 ", longest %" PRIu64 " ms\n", fig.blocked,
                  fig.blocked_max_ns / 1000000u);

    crest_listener_close(s.l);
    tu_finish_conns(loop);
    log_end();
}

/* ---- 2: a timer callback, named by its symbol ---- */

static uint64_t timer_spin_end;

void watchdog_test_timer_cb(crest_timer_t *t, void *arg) {
    (void)t;
    (void)arg;
    watchdog_test_spin(SPIN_MS);
    timer_spin_end = tu_mono_ns();
}

static void test_timer_stall(void **state) {
    (void)state;
    log_begin();
    crest_loop_t *loop = tu_loop();
    start_watchdog(100);
    crest_timer_t *t;
    assert_int_equal(crest_timer_create(loop, watchdog_test_timer_cb, NULL, &t), 0);
    timer_spin_end = 0;
    assert_int_equal(crest_timer_start(t, 1, 0), 0);
    RUN_UNTIL(loop, timer_spin_end != 0);
    stop_watchdog();
    show_log();
    int i = find_line(timer_spin_end, "loop blocked for", "in a callback: timer watchdog_test_timer_cb",
                      NULL, NULL, NULL);
    if (i < 0)
        tu_log_dump();
    assert_true(i >= 0);
    assert_true(find_line(0, "  #", "watchdog_test_spin", NULL, NULL, NULL) >= 0);
    crest_timer_destroy(t);
    tu_destroy_loop(loop);
    log_end();
}

/* ---- 3: a healthy loop, and an idle one, are not reported ---- */

static unsigned ticks;

static void tick_cb(crest_timer_t *t, void *arg) {
    (void)t;
    (void)arg;
    ticks++;
}

static void test_healthy_loop_quiet(void **state) {
    (void)state;
    log_begin();
    crest_loop_t *loop = tu_loop();
    start_watchdog(100);
    crest_timer_t *t;
    assert_int_equal(crest_timer_create(loop, tick_cb, NULL, &t), 0);
    ticks = 0;
    assert_int_equal(crest_timer_start(t, 1, 1), 0);
    uint64_t until = tu_mono_ns() + 300 * 1000000ull;
    while (tu_mono_ns() < until)
        assert_true(crest_loop_run_once(loop, -1) >= 0);
    assert_true(ticks > 0);
    crest_timer_stop(t);
    /* Not being run at all (the application is elsewhere) is not being
     * blocked either. */
    tu_sleep_ms(300);
    stop_watchdog();
    if (count_lines("blocked") != 0)
        tu_log_dump();
    assert_int_equal(count_lines("blocked"), 0);
    crest_insight_t fig;
    assert_int_equal(crest_loop_get_insight(loop, &fig), 0);
    assert_int_equal(fig.blocked, 0);
    crest_timer_destroy(t);
    tu_destroy_loop(loop);
    log_end();
}

/* ---- 4: start, stop, options; loops made before the start ---- */

static uint64_t deferred_end;

void watchdog_test_deferred(crest_loop_t *loop, void *arg) {
    (void)loop;
    (void)arg;
    watchdog_test_spin(SPIN_MS);
    deferred_end = tu_mono_ns();
}

static void test_start_stop(void **state) {
    (void)state;
    log_begin();
    crest_watchdog_stop(); /* not running: nothing to do */
    assert_false(crest_watchdog_running());

    crest_watchdog_opts_t o;
    crest_watchdog_opts_init(&o);
    o.threshold_ms = 0;
    assert_int_equal(crest_watchdog_start(&o), -EINVAL);
    crest_watchdog_opts_init(&o);
    o.signal = SIGKILL;
    assert_int_equal(crest_watchdog_start(&o), -EINVAL);
    o.signal = SIGRTMAX + 1;
    assert_int_equal(crest_watchdog_start(&o), -EINVAL);
    assert_false(crest_watchdog_running());

    /* A loop made before the start is watched. */
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_watchdog_start(NULL), 0);
    assert_int_equal(crest_watchdog_start(NULL), -EALREADY);
    stop_watchdog();
    stop_watchdog();
    crest_watchdog_opts_init(&o);
    o.threshold_ms = 50;
    o.backtrace = false;
    assert_int_equal(crest_watchdog_start(&o), 0);
    assert_int_equal(crest_watchdog_start(&o), -EALREADY);

    deferred_end = 0;
    assert_int_equal(crest_loop_defer(loop, watchdog_test_deferred, NULL), 0);
    RUN_UNTIL(loop, deferred_end != 0);
    stop_watchdog();
    show_log();
    int i = find_line(deferred_end, "loop blocked for", "in a callback: deferred watchdog_test_deferred",
                      NULL, NULL, NULL);
    if (i < 0)
        tu_log_dump();
    assert_true(i >= 0);
    /* Reported again as the stall doubled (50, 100, 200 ms). */
    assert_true(count_lines("deferred watchdog_test_deferred") >= 2);
    /* No backtrace asked for. */
    assert_int_equal(count_lines("stack of loop thread"), 0);
    tu_destroy_loop(loop);
    log_end();
}

/* A signal the application handles itself is left alone: no backtraces,
 * said once, and its handler is still there after the stop. */
static void app_handler(int sig) {
    (void)sig;
}

static void test_signal_taken(void **state) {
    (void)state;
    log_begin();
    int sig = SIGRTMIN + 3;
    struct sigaction sa, old, now;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = app_handler;
    assert_int_equal(sigaction(sig, &sa, &old), 0);
    start_watchdog(100);
    stop_watchdog();
    assert_int_equal(count_lines("no backtraces"), 1);
    assert_int_equal(sigaction(sig, &old, &now), 0);
    assert_true(now.sa_handler == app_handler);
    /* With the signal free again, ours is installed and then restored. */
    start_watchdog(100);
    assert_int_equal(sigaction(sig, NULL, &now), 0);
    assert_true(now.sa_handler != SIG_DFL);
    stop_watchdog();
    assert_int_equal(sigaction(sig, NULL, &now), 0);
    assert_true(now.sa_handler == SIG_DFL);
    tu_assert_nothing_open();
    log_end();
}

/* A fork child has no watchdog thread: not running there, and it can start
 * (and stop) its own. */
static void test_fork_child(void **state) {
    (void)state;
    log_begin();
    start_watchdog(100);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int rc = 0;
        if (crest_watchdog_running())
            rc |= 1;
#if !TU_TSAN /* TSan cannot start a thread after a multi-threaded fork */
        crest_watchdog_opts_t o;
        crest_watchdog_opts_init(&o);
        if (crest_watchdog_start(&o) != 0)
            rc |= 2;
        if (!crest_watchdog_running())
            rc |= 4;
#endif
        crest_watchdog_stop();
        if (crest_watchdog_running())
            rc |= 8;
        _exit(rc);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(crest_watchdog_running()); /* the parent's is untouched */
    stop_watchdog();
    tu_assert_nothing_open();
    log_end();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_conn_handler_stall),
        tu_test(test_timer_stall),
        tu_test(test_healthy_loop_quiet),
        tu_test(test_start_stop),
        tu_test(test_signal_taken),
        tu_test(test_fork_child),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
