/* Bugs the chaos engine (tests/chaos.h) found, each as the smallest call
 * sequence that shows it, over real loopback sockets. */
#include "crest_test.h"

/* ---- two crest ends: an outbound connection and the one it is accepted as ---- */

struct pair {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *out, *srv;
    int out_open, out_closed, srv_open, srv_closed;
    crest_close_reason_t out_reason, srv_reason;
};

static void srv_open(crest_conn_t *c) {
    struct pair *p = crest_conn_handler_ctx(c);
    p->srv = c;
    p->srv_open++;
}

static ssize_t consume_all(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    (void)data;
    return (ssize_t)len;
}

static void srv_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct pair *p = crest_conn_handler_ctx(c);
    p->srv_reason = reason;
    p->srv_closed++;
}

static void out_open(crest_conn_t *c) {
    struct pair *p = crest_conn_handler_ctx(c);
    p->out_open++;
}

static void out_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct pair *p = crest_conn_handler_ctx(c);
    p->out_reason = reason;
    p->out_closed++;
}

static const crest_handler_t srv_handler = {
    .on_open = srv_open, .on_data = consume_all, .on_close = srv_close};
static const crest_handler_t out_handler = {
    .on_open = out_open, .on_data = consume_all, .on_close = out_close};

static crest_loop_t *pair_start(struct pair *p) {
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &srv_handler, p, &p->l), 0);
    assert_true(crest_listener_address(p->l, p->addr, sizeof p->addr) > 0);
    assert_int_equal(crest_connect(loop, p->addr, NULL, &out_handler, p, &p->out), 0);
    assert_int_equal(crest_conn_state(p->out), CREST_CONN_CONNECTING);
    return loop;
}

static void pair_finish(crest_loop_t *loop, struct pair *p) {
    RUN_UNTIL(loop, p->out_closed == 1 && p->srv_closed == 1);
    crest_listener_close(p->l);
    tu_finish_conns(loop);
}

/* ---- a shutdown asked for while connecting, then corked ------------------ */

/* crest_conn_shutdown() on a CONNECTING connection with nothing queued
 * leaves the shutdown pending; corked when the connect completes, the
 * connection does not flush, and crest_conn_uncork() only looked at queued
 * bytes: the FIN was never sent, the peer never saw EOF. */
static void test_uncork_sends_a_pending_shutdown(void **state) {
    (void)state;
    struct pair p = {0};
    crest_loop_t *loop = pair_start(&p);
    assert_int_equal(crest_conn_shutdown(p.out), 0);
    crest_conn_cork(p.out);
    RUN_UNTIL(loop, p.out_open == 1 && p.srv_open == 1);
    assert_int_equal(crest_conn_uncork(p.out), 0);
    /* The server (no on_eof) closes at the EOF; then the outbound end sees
     * the server's EOF and closes too. */
    RUN_UNTIL(loop, p.srv_closed == 1);
    assert_int_equal(p.srv_reason, CREST_CLOSE_PEER_EOF);
    RUN_UNTIL(loop, p.out_closed == 1);
    assert_int_equal(p.out_reason, CREST_CLOSE_PEER_EOF);
    pair_finish(loop, &p);
}

/* ---- shutdown after a close requested while connecting ------------------- */

/* A close while CONNECTING with output queued leaves the connection
 * CONNECTING until the connect completes (conn.h).  crest_conn_shutdown()
 * checked only the state, not the close request, and returned 0 there;
 * writes already said -ENOTCONN, as the header promises after a close. */
static void test_shutdown_after_a_close_while_connecting(void **state) {
    (void)state;
    struct pair p = {0};
    crest_loop_t *loop = pair_start(&p);
    assert_int_equal(crest_conn_write(p.out, "x", 1), 0); /* queued: connecting */
    crest_conn_close(p.out);
    assert_int_equal(crest_conn_state(p.out), CREST_CONN_CONNECTING);
    assert_int_equal(crest_conn_write(p.out, "y", 1), -ENOTCONN);
    assert_int_equal(crest_conn_shutdown(p.out), -ENOTCONN);
    /* The close goes on as before: "x" is delivered, then EOF. */
    RUN_UNTIL(loop, p.srv_closed == 1);
    assert_int_equal(p.srv_reason, CREST_CLOSE_PEER_EOF);
    assert_int_equal(p.out_open, 0);
    pair_finish(loop, &p);
}

/* ---- one crest end, one raw client --------------------------------------- */

struct one {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *c;
    int opened, eofs, closed;
    crest_close_reason_t reason;
};

static void one_open(crest_conn_t *c) {
    struct one *o = crest_conn_handler_ctx(c);
    o->c = c;
    o->opened++;
}

static void one_eof(crest_conn_t *c) {
    struct one *o = crest_conn_handler_ctx(c);
    o->eofs++; /* stays open: the handler decides */
}

static void one_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct one *o = crest_conn_handler_ctx(c);
    o->reason = reason;
    o->closed++;
}

static const crest_handler_t one_handler = {
    .on_open = one_open, .on_data = consume_all, .on_eof = one_eof, .on_close = one_close};

static crest_loop_t *one_start(struct one *o, int *fd) {
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &one_handler, o, &o->l), 0);
    assert_true(crest_listener_address(o->l, o->addr, sizeof o->addr) > 0);
    *fd = tu_raw_connect(o->addr, 0);
    RUN_UNTIL(loop, o->opened == 1);
    return loop;
}

static void client_reset(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

static uint64_t io_events(crest_loop_t *loop) {
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    return st.io_events;
}

/* ---- a send that fails inside an API call -------------------------------- */

/* The peer half-closed (the connection is HALF_CLOSED, so nothing read
 * it any more), the handler corked and wrote, then the peer reset: the
 * reset's event found the connection corked and not reading, so nobody
 * looked (main now notices a reset there too: see test_reset_unnoticed).  crest_conn_uncork() then flushed, the send failed and marked
 * the connection dead, but a failure inside an API call scheduled no
 * settle: on_close came only when the 10 s close linger ran out, as a
 * WRITE_TIMEOUT. */
static void test_a_send_failing_in_uncork_closes_at_once(void **state) {
    (void)state;
    struct one o = {0};
    int fd;
    crest_loop_t *loop = one_start(&o, &fd);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    RUN_UNTIL(loop, o.eofs == 1);
    crest_conn_cork(o.c);
    assert_int_equal(crest_conn_write(o.c, "hello", 5), 0);
    uint64_t before = io_events(loop);
    client_reset(fd);
    RUN_UNTIL(loop, io_events(loop) > before); /* the reset was seen */
    /* The reset's event may have closed it already (a half-closed
     * connection notices a reset now: the connection is freed then); if
     * not, the uncork's send fails. */
    if (o.closed == 0)
        assert_int_equal(crest_conn_uncork(o.c), -EPIPE);
    /* The close completes on the next iteration, not at a timeout: two
     * non-blocking iterations are plenty. */
    tu_spin(loop, 2);
    assert_int_equal(o.closed, 1);
    assert_int_equal(o.reason, CREST_CLOSE_PEER_RESET);
    crest_listener_close(o.l);
    tu_finish_conns(loop);
}

/* ---- a write behind queued output to a reset peer ------------------------ */

struct reset_open {
    int opened, closed;
    int first, uncork, second;
};

static void ro_open(crest_conn_t *c) {
    struct reset_open *r = crest_conn_handler_ctx(c);
    r->opened++;
    /* The peer has reset already.  Corked, the first write queues; the
     * uncork inside a callback leaves the flush to the loop; the second
     * write finds output queued and the socket writable, and flushes. */
    crest_conn_cork(c);
    r->first = crest_conn_write(c, "abc", 3);
    r->uncork = crest_conn_uncork(c);
    r->second = crest_conn_write(c, "def", 3);
}

static void ro_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct reset_open *r = crest_conn_handler_ctx(c);
    r->closed++;
}

/* conn.h: a write returns -EPIPE if the socket failed.  The flush behind
 * queued output returned the send's own errno (-ECONNRESET here), and so
 * did crest_conn_uncork(). */
static void test_a_write_that_flushes_into_a_reset_says_epipe(void **state) {
    (void)state;
    struct reset_open r = {0, 0, 1, 1, 1};
    crest_loop_t *loop = tu_loop();
    crest_handler_t h = {.on_open = ro_open, .on_data = consume_all, .on_close = ro_close};
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, &r, &l), 0);
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    client_reset(tu_raw_connect(addr, 0)); /* reset before it is accepted */
    RUN_UNTIL(loop, r.closed == 1);
    assert_int_equal(r.opened, 1);
    assert_int_equal(r.first, 0);
    assert_int_equal(r.uncork, 0);
    assert_int_equal(r.second, -EPIPE);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* ---- uncork on a connection closed earlier in the iteration --------------- */

struct slow {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *c;
    crest_timer_t *t;
    int opened, high, drains, closed, after_close, uncorked;
    int uncork_rc;
};

static void slow_open(crest_conn_t *c) {
    struct slow *s = crest_conn_handler_ctx(c);
    s->c = c;
    s->opened++;
}

static void slow_high(crest_conn_t *c) {
    struct slow *s = crest_conn_handler_ctx(c);
    s->high++;
}

static void slow_drain(crest_conn_t *c) {
    struct slow *s = crest_conn_handler_ctx(c);
    s->drains++;
    s->after_close += s->closed;
}

static void slow_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct slow *s = crest_conn_handler_ctx(c);
    s->closed++;
    /* Due now: fires in this iteration's timer pass after the poll. */
    assert_int_equal(crest_timer_start(s->t, 0, 0), 0);
}

/* Later in the same iteration: the connection is closed, its memory still
 * valid (conn.h), and no callback of it is running. */
static void slow_timer(crest_timer_t *t, void *arg) {
    (void)t;
    struct slow *s = arg;
    assert_int_equal(s->closed, 1);
    crest_conn_cork(s->c);
    s->uncork_rc = crest_conn_uncork(s->c);
    s->uncorked++;
}

static const crest_handler_t slow_handler = {.on_open = slow_open,
                                             .on_data = consume_all,
                                             .on_high_water = slow_high,
                                             .on_drain = slow_drain,
                                             .on_close = slow_close};

/* A corked connection (so still writable) above high water, with a
 * shutdown pending behind its queued output, is aborted; later in the same
 * iteration (a timer) the application corks and uncorks it.  Uncork must do nothing on a closed
 * connection: with the pending shutdown counted as work to flush, it
 * flushed the closed connection, called shutdown(-1), and ran on_drain
 * after on_close (found by the api fuzz target). */
static void test_uncork_after_close_does_nothing(void **state) {
    (void)state;
    struct slow s = {0};
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.high_water = 1000;
    o.conn.low_water = 0;
    assert_int_equal(crest_timer_create(loop, slow_timer, &s, &s.t), 0);
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &o, &slow_handler, &s, &s.l), 0);
    assert_true(crest_listener_address(s.l, s.addr, sizeof s.addr) > 0);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    crest_conn_cork(s.c);
    uint8_t big[4000] = {0};
    assert_int_equal(crest_conn_write(s.c, big, sizeof big), 0); /* queued: corked */
    assert_int_equal(s.high, 0); /* on_high_water comes from the loop (issue 12) */
    tu_spin(loop, 1);
    assert_int_equal(s.high, 1);
    assert_int_equal(crest_conn_shutdown(s.c), 0); /* pending: output queued */
    crest_conn_abort(s.c);
    RUN_UNTIL(loop, s.uncorked == 1);
    assert_int_equal(s.uncork_rc, 0);
    assert_int_equal(s.after_close, 0);
    assert_int_equal(s.drains, 0);
    tu_spin(loop, 2);
    close(fd);
    crest_timer_destroy(s.t);
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_uncork_sends_a_pending_shutdown),
        tu_test(test_shutdown_after_a_close_while_connecting),
        tu_test(test_a_send_failing_in_uncork_closes_at_once),
        tu_test(test_uncork_after_close_does_nothing),
        tu_test(test_a_write_that_flushes_into_a_reset_says_epipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
