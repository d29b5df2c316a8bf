/* crest_pool (pool.h) over real loopback: a crest listener on the same
 * loop is the target.  Every test ends with nothing open. */
#include "crest_test.h"

#include <crest/pool.h>

/* ---- the target: an echo server whose connections the test can reach ---- */

#define MAX_SRV 32
static crest_conn_t *srv[MAX_SRV];
static unsigned nsrv;
static bool srv_pause_new; /* accepted connections do not read */

static void srv_open(crest_conn_t *c) {
    if (nsrv < MAX_SRV)
        srv[nsrv++] = c;
    if (srv_pause_new)
        crest_conn_pause(c);
}

static ssize_t srv_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    crest_conn_write(c, d, n);
    return (ssize_t)n;
}

static void srv_close(crest_conn_t *c, crest_close_reason_t r, int err) {
    (void)r;
    (void)err;
    for (unsigned i = 0; i < nsrv; i++)
        if (srv[i] == c)
            srv[i] = NULL;
}

static const crest_handler_t srv_handler = {
    .on_open = srv_open, .on_data = srv_data, .on_close = srv_close, .name = "srv"};

static char target[64];

static crest_loop_t *setup_target(void) {
    crest_loop_t *loop = tu_loop();
    nsrv = 0;
    srv_pause_new = false;
    memset(srv, 0, sizeof srv);
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &srv_handler, NULL, &l), 0);
    snprintf(target, sizeof target, "127.0.0.1:%d", crest_listener_port(l));
    return loop;
}

/* ---- a borrower ---------------------------------------------------------- */

struct got {
    int calls;
    int status;
    crest_conn_t *c;
    size_t echoed;
    bool closed;
};

static void on_got(int status, crest_conn_t *c, void *arg) {
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->c = c;
}

static ssize_t b_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)d;
    struct got *g = crest_conn_handler_ctx(c);
    g->echoed += n;
    return (ssize_t)n;
}

static void b_close(crest_conn_t *c, crest_close_reason_t r, int err) {
    (void)r;
    (void)err;
    struct got *g = crest_conn_handler_ctx(c);
    g->closed = true;
}

static const crest_handler_t b_handler = {.on_data = b_data, .on_close = b_close, .name = "b"};

static void acquire(crest_pool_t *p, struct got *g, const char *label) {
    memset(g, 0, sizeof *g);
    assert_int_equal(crest_pool_acquire(p, &b_handler, g, label, on_got, g, NULL), 0);
    assert_int_equal(g->calls, 0); /* never inside the call */
}

static void round_trip(crest_loop_t *loop, struct got *g) {
    size_t before = g->echoed;
    assert_int_equal(crest_conn_write(g->c, "ping", 4), 0);
    RUN_UNTIL(loop, g->echoed == before + 4);
}

static crest_pool_stats_t stats(const crest_pool_t *p) {
    crest_pool_stats_t st;
    crest_pool_get_stats(p, &st);
    return st;
}

static void finish(crest_loop_t *loop, crest_pool_t *p) {
    crest_pool_destroy(p);
    RUN_UNTIL(loop, ({
                  crest_conn_stats_t cs;
                  crest_loop_conn_stats(loop, &cs);
                  cs.active == 0;
              }));
    tu_destroy_loop(loop);
}

static crest_pool_opts_t opts(uint32_t max) {
    crest_pool_opts_t o;
    crest_pool_opts_init(&o);
    o.max_size = max;
    return o;
}

/* ---- tests --------------------------------------------------------------- */

static void test_new_then_reused(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(4);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    crest_insight_t *ins = calloc(1, sizeof *ins);
    struct got a;
    acquire(p, &a, "first");
    RUN_UNTIL(loop, a.calls == 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(crest_conn_state(a.c), CREST_CONN_OPEN);
    round_trip(loop, &a);
    uint64_t id = crest_conn_id(a.c);
    assert_int_equal(stats(p).active, 1);
    assert_int_equal(crest_pool_release(p, a.c), 0);
    assert_int_equal(stats(p).idle, 1);
    struct got b;
    acquire(p, &b, "second");
    RUN_UNTIL(loop, b.calls == 1);
    assert_int_equal(b.status, 0);
    assert_int_equal(crest_conn_id(b.c), id); /* the same connection */
    assert_ptr_equal(crest_conn_handler_ctx(b.c), &b);
    round_trip(loop, &b);
    crest_pool_stats_t st = stats(p);
    assert_int_equal(st.created, 1);
    assert_int_equal(st.acquired, 2);
    assert_int_equal(st.reused, 1);
    assert_int_equal(st.acquire_wait_ns.count, 2);
    /* The loop's figures count them too (insight.h), and the sampler sees
     * the pool. */
    assert_int_equal(crest_loop_get_insight(loop, ins), 0);
    assert_int_equal(ins->pool_acquired, 2);
    assert_int_equal(ins->pool_reused, 1);
    assert_int_equal(crest_pool_release(p, b.c), 0);
    free(ins);
    finish(loop, p);
}

static void test_queue_fifo(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(2);
    o.name = "fifo";
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got g[4];
    for (int i = 0; i < 4; i++)
        acquire(p, &g[i], "q");
    RUN_UNTIL(loop, g[0].calls == 1 && g[1].calls == 1);
    tu_spin(loop, 20);
    assert_int_equal(g[2].calls, 0);
    assert_int_equal(g[3].calls, 0);
    crest_pool_stats_t st = stats(p);
    assert_int_equal(st.active, 2);
    assert_int_equal(st.waiting, 2);
    assert_int_equal(st.created, 2); /* max_size held */
    /* The sampler sees the pool full with callers waiting, and the doctor
     * names it. */
    crest_insight_opts_t io;
    crest_insight_opts_init(&io);
    io.sample_ms = 10;
    assert_int_equal(crest_loop_set_insight(loop, &io), 0);
    crest_insight_t *ins = calloc(1, sizeof *ins);
    RUN_UNTIL(loop, crest_loop_get_insight(loop, ins) == 0 && ins->pool_exhausted_samples > 0);
    assert_int_equal(ins->pools, 1);
    assert_int_equal(ins->pool_busiest_active, 2);
    assert_int_equal(ins->pool_busiest_max, 2);
    assert_int_equal(ins->pool_busiest_waiting, 2);
    assert_string_equal(ins->pool_busiest, "fifo");
    crest_diagnosis_t dx;
    assert_int_equal(crest_doctor_diagnose(ins, NULL, &dx), 0);
    bool named = false;
    for (unsigned i = 0; i < dx.n; i++)
        if (dx.findings[i].cause == CREST_CAUSE_POOL_EXHAUSTED)
            named = strstr(dx.findings[i].evidence, "pool fifo: 2 of 2") != NULL;
    assert_true(named);
    free(ins);
    assert_int_equal(crest_pool_release(p, g[1].c), 0);
    RUN_UNTIL(loop, g[2].calls == 1);
    assert_int_equal(g[3].calls, 0); /* first come, first served */
    assert_ptr_equal(g[2].c, g[1].c);
    round_trip(loop, &g[2]);
    assert_int_equal(crest_pool_release(p, g[0].c), 0);
    RUN_UNTIL(loop, g[3].calls == 1);
    assert_int_equal(stats(p).created, 2);
    assert_int_equal(crest_pool_release(p, g[2].c), 0);
    assert_int_equal(crest_pool_release(p, g[3].c), 0);
    assert_int_equal(crest_pool_release(p, g[3].c), -EINVAL); /* not borrowed */
    finish(loop, p);
}

static void test_acquire_timeout_and_max_waiting(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(1);
    o.acquire_timeout_ms = 50;
    o.max_waiting = 1;
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a, b, c;
    acquire(p, &a, "holder");
    RUN_UNTIL(loop, a.calls == 1);
    acquire(p, &b, "late");
    memset(&c, 0, sizeof c);
    assert_int_equal(crest_pool_acquire(p, &b_handler, &c, "third", on_got, &c, NULL), -EAGAIN);
    RUN_UNTIL(loop, b.calls == 1);
    assert_int_equal(b.status, -ETIMEDOUT);
    assert_null(b.c);
    assert_int_equal(stats(p).acquire_timeouts, 1);
    assert_true(tu_log_contains("acquire by 'late' timed out"));
    assert_int_equal(c.calls, 0);
    assert_int_equal(crest_pool_release(p, a.c), 0);
    finish(loop, p);
}

static void test_min_idle_warm_and_refilled(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(4);
    o.min_idle = 2;
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    RUN_UNTIL(loop, stats(p).idle == 2); /* warm before anyone asks */
    assert_int_equal(stats(p).created, 2);
    RUN_UNTIL(loop, nsrv == 2);
    /* The target closes one idle connection: noticed, discarded, replaced. */
    crest_conn_close(srv[0]);
    RUN_UNTIL(loop, stats(p).dead_discarded == 1);
    RUN_UNTIL(loop, stats(p).idle == 2 && stats(p).created == 3);
    /* Every idle one is alive: both round-trip. */
    struct got a, b;
    acquire(p, &a, "a");
    acquire(p, &b, "b");
    RUN_UNTIL(loop, a.calls == 1 && b.calls == 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    round_trip(loop, &a);
    round_trip(loop, &b);
    assert_int_equal(stats(p).reused, 2);
    crest_pool_release(p, a.c);
    crest_pool_release(p, b.c);
    finish(loop, p);
}

static void test_peer_writes_to_idle(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(4);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a;
    acquire(p, &a, "a");
    RUN_UNTIL(loop, a.calls == 1);
    uint64_t id = crest_conn_id(a.c);
    assert_int_equal(crest_pool_release(p, a.c), 0);
    RUN_UNTIL(loop, nsrv == 1);
    crest_conn_write(srv[0], "bye\n", 4);
    RUN_UNTIL(loop, stats(p).dead_discarded == 1);
    assert_int_equal(stats(p).idle, 0);
    struct got b;
    acquire(p, &b, "b");
    RUN_UNTIL(loop, b.calls == 1);
    assert_int_equal(b.status, 0);
    assert_true(crest_conn_id(b.c) != id);
    round_trip(loop, &b);
    crest_pool_release(p, b.c);
    finish(loop, p);
}

static void test_idle_timeout_and_lifetime(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(4);
    o.min_idle = 1;
    o.idle_timeout_ms = 40;
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got g[3];
    for (int i = 0; i < 3; i++)
        acquire(p, &g[i], "g");
    RUN_UNTIL(loop, g[0].calls && g[1].calls && g[2].calls);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crest_pool_release(p, g[i].c), 0);
    assert_true(stats(p).idle >= 3);
    /* Idle past the timeout: closed down to min_idle. */
    RUN_UNTIL(loop, stats(p).idle == 1 && stats(p).closed >= 2);
    crest_pool_destroy(p);

    /* Past max_lifetime: closed when given back (1), not reused. */
    o = opts(4);
    o.max_lifetime_ms = 30;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a;
    acquire(p, &a, "old");
    RUN_UNTIL(loop, a.calls == 1);
    tu_sleep_ms(40);
    tu_spin(loop, 1);
    assert_int_equal(crest_pool_release(p, a.c), 1);
    RUN_UNTIL(loop, a.closed);
    finish(loop, p);
}

static void test_connect_refused(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A port nobody listens on: bind one, note it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    snprintf(target, sizeof target, "127.0.0.1:%u", ntohs(sin.sin_port));
    crest_pool_opts_t o = opts(2);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a;
    acquire(p, &a, "a");
    RUN_UNTIL(loop, a.calls == 1);
    assert_int_equal(a.status, -ECONNREFUSED);
    crest_pool_stats_t st = stats(p);
    assert_int_equal(st.connect_failures, 1);
    assert_int_equal(st.created, 0);
    assert_int_equal(st.connecting, 0);
    assert_int_equal(st.waiting, 0);
    crest_pool_destroy(p);
    /* A warm reserve for a target that is down backs off instead of
     * reconnecting in a loop: over 30 iterations of up to 10 ms, a handful
     * of attempts (without the backoff: one per iteration and slot). */
    o.min_idle = 2;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    for (int i = 0; i < 30; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    st = stats(p);
    assert_true(st.connect_failures >= 2);
    assert_true(st.connect_failures <= 12);
    finish(loop, p);
}

static void test_cancel(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(1);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    /* Cancelled with its connect in flight: the connection joins the pool. */
    struct got a;
    crest_pool_req_t *req;
    memset(&a, 0, sizeof a);
    assert_int_equal(crest_pool_acquire(p, &b_handler, &a, "a", on_got, &a, &req), 0);
    /* The connect starts from the loop; over loopback it may complete in
     * the same iteration, so cancel as soon as it is seen in flight. */
    RUN_UNTIL(loop, stats(p).connecting == 1 || a.calls == 1);
    if (a.calls == 0) {
        crest_pool_cancel(req);
        RUN_UNTIL(loop, stats(p).idle == 1);
        assert_int_equal(a.calls, 0);
    } else {
        assert_int_equal(crest_pool_release(p, a.c), 0);
    }
    /* Cancelled while queued behind a borrower. */
    struct got b, c;
    acquire(p, &b, "b");
    RUN_UNTIL(loop, b.calls == 1);
    memset(&c, 0, sizeof c);
    assert_int_equal(crest_pool_acquire(p, &b_handler, &c, "c", on_got, &c, &req), 0);
    tu_spin(loop, 5);
    crest_pool_cancel(req);
    assert_int_equal(stats(p).waiting, 0);
    crest_pool_release(p, b.c);
    tu_spin(loop, 10);
    assert_int_equal(c.calls, 0);
    assert_int_equal(stats(p).idle, 1);
    finish(loop, p);
}

static void test_borrower_closes(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(1);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a, b;
    acquire(p, &a, "a");
    acquire(p, &b, "b"); /* waits: max_size 1 */
    RUN_UNTIL(loop, a.calls == 1);
    crest_conn_close(a.c);
    RUN_UNTIL(loop, a.closed);
    /* The pool saw it go, and made another for the waiter. */
    RUN_UNTIL(loop, b.calls == 1);
    assert_int_equal(b.status, 0);
    round_trip(loop, &b);
    crest_pool_stats_t st = stats(p);
    assert_int_equal(st.closed, 1);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.active, 1);
    crest_pool_release(p, b.c);
    finish(loop, p);
}

static void test_release_not_reusable(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    srv_pause_new = true; /* the target reads nothing: output queues */
    crest_pool_opts_t o = opts(2);
    crest_pool_t *p, *other;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    assert_int_equal(crest_pool_create(loop, target, &o, &other), 0);
    struct got a;
    acquire(p, &a, "a");
    RUN_UNTIL(loop, a.calls == 1);
    assert_int_equal(crest_pool_release(other, a.c), -EINVAL);
    static uint8_t big[256 * 1024];
    for (int i = 0; i < 16 && crest_conn_output_bytes(a.c) == 0; i++) {
        crest_conn_write(a.c, big, sizeof big);
        tu_spin(loop, 2);
    }
    assert_true(crest_conn_output_bytes(a.c) > 0);
    assert_int_equal(crest_pool_release(p, a.c), 1); /* closed, not idle */
    assert_int_equal(stats(p).idle, 0);
    assert_int_equal(stats(p).active, 0);
    crest_pool_destroy(other);
    for (unsigned i = 0; i < nsrv; i++)
        if (srv[i])
            crest_conn_resume(srv[i]);
    finish(loop, p);
}

static void test_leak_report(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(2);
    o.leak_threshold_ms = 30;
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a;
    acquire(p, &a, "job-7");
    RUN_UNTIL(loop, a.calls == 1);
    RUN_UNTIL(loop, stats(p).leaks == 1);
    assert_true(tu_log_line_has("borrowed by 'job-7'", "threshold 30 ms", "not given back"));
    tu_spin(loop, 20);
    assert_int_equal(stats(p).leaks, 1); /* once per borrow */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    crest_pool_report(p, f);
    fclose(f);
    assert_non_null(strstr(text, "1 borrowed"));
    assert_non_null(strstr(text, " job-7 "));
    free(text);
    crest_pool_release(p, a.c);
    finish(loop, p);
}

static void test_destroy_with_waiters_and_borrowed(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(1);
    crest_pool_t *p;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    struct got a, b;
    acquire(p, &a, "a");
    acquire(p, &b, "b");
    RUN_UNTIL(loop, a.calls == 1);
    crest_pool_destroy(p);
    assert_int_equal(b.calls, 0); /* not inside the call */
    RUN_UNTIL(loop, b.calls == 1);
    assert_int_equal(b.status, -ECANCELED);
    /* The borrowed connection is its borrower's: it still works. */
    round_trip(loop, &a);
    crest_conn_close(a.c);
    RUN_UNTIL(loop, a.closed);
    RUN_UNTIL(loop, ({
                  crest_conn_stats_t cs;
                  crest_loop_conn_stats(loop, &cs);
                  cs.active == 0;
              }));
    tu_destroy_loop(loop);
}

/* Destroyed from inside its own acquire callback. */
static crest_pool_t *destroy_me;
static void on_got_destroy(int status, crest_conn_t *c, void *arg) {
    on_got(status, c, arg);
    crest_pool_destroy(destroy_me);
    destroy_me = NULL;
}

static void test_destroy_from_callback_and_with_loop(void **state) {
    (void)state;
    crest_loop_t *loop = setup_target();
    crest_pool_opts_t o = opts(2);
    assert_int_equal(crest_pool_create(loop, target, &o, &destroy_me), 0);
    struct got a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    assert_int_equal(
        crest_pool_acquire(destroy_me, &b_handler, &a, "a", on_got_destroy, &a, NULL), 0);
    assert_int_equal(crest_pool_acquire(destroy_me, &b_handler, &b, "b", on_got, &b, NULL), 0);
    RUN_UNTIL(loop, a.calls == 1 && b.calls == 1);
    assert_null(destroy_me);
    if (a.c)
        crest_conn_close(a.c);
    if (b.c)
        crest_conn_close(b.c);
    /* A pool still alive when its loop goes: destroyed with it, logged. */
    crest_pool_t *p;
    o.min_idle = 1;
    assert_int_equal(crest_pool_create(loop, target, &o, &p), 0);
    RUN_UNTIL(loop, stats(p).idle == 1);
    tu_destroy_loop(loop);
    assert_true(tu_log_contains("still alive at crest_loop_destroy()"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_new_then_reused),
        tu_test(test_queue_fifo),
        tu_test(test_acquire_timeout_and_max_waiting),
        tu_test(test_min_idle_warm_and_refilled),
        tu_test(test_peer_writes_to_idle),
        tu_test(test_idle_timeout_and_lifetime),
        tu_test(test_connect_refused),
        tu_test(test_cancel),
        tu_test(test_borrower_closes),
        tu_test(test_release_not_reusable),
        tu_test(test_leak_report),
        tu_test(test_destroy_with_waiters_and_borrowed),
        tu_test(test_destroy_from_callback_and_with_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
