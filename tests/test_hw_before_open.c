/* Fixed bug (a regression test of issue 11; found by the chaos engine, tests/chaos.h hw_before_open): a
 * write on a CONNECTING outbound connection that queues past high_water
 * calls on_high_water at once, inside crest_conn_write(), before on_open.
 *
 * conn.h: on_open runs when the connect completes, and a connection that
 * fails before that gets on_close without on_open; a handler that sets up
 * its per-connection state in on_open finds none in on_high_water.  The
 * pause could wait for the connect (the flush after it decides), or the
 * callback at least for on_open.
 */
#include "crest_test.h"

struct order {
    crest_listener_t *l;
    crest_conn_t *out;
    int opened, high, high_before_open, closed, srv_closed;
};

static void o_open(crest_conn_t *c) {
    struct order *o = crest_conn_handler_ctx(c);
    o->opened++;
}

static void o_high(crest_conn_t *c) {
    struct order *o = crest_conn_handler_ctx(c);
    o->high++;
    o->high_before_open += o->opened == 0;
}

static ssize_t o_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void o_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct order *o = crest_conn_handler_ctx(c);
    o->closed++;
}

static void s_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct order *o = crest_conn_handler_ctx(c);
    o->srv_closed++;
}

static void test_no_high_water_before_on_open(void **state) {
    (void)state;
    struct order o = {0};
    crest_loop_t *loop = tu_loop();
    crest_handler_t sh = {.on_data = o_data, .on_close = s_close};
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &sh, &o, &o.l), 0);
    assert_true(crest_listener_address(o.l, addr, sizeof addr) > 0);
    crest_conn_opts_t opts;
    crest_conn_opts_init(&opts);
    opts.high_water = 100;
    opts.low_water = 50;
    crest_handler_t h = {
        .on_open = o_open, .on_data = o_data, .on_high_water = o_high, .on_close = o_close};
    assert_int_equal(crest_connect(loop, addr, &opts, &h, &o, &o.out), 0);
    assert_int_equal(crest_conn_state(o.out), CREST_CONN_CONNECTING);
    uint8_t buf[200] = {0};
    assert_int_equal(crest_conn_write(o.out, buf, sizeof buf), 0); /* queued: connecting */
    RUN_UNTIL(loop, o.opened == 1);
    assert_int_equal(o.high_before_open, 0);
    crest_conn_close(o.out);
    RUN_UNTIL(loop, o.closed == 1 && o.srv_closed == 1);
    crest_listener_close(o.l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {tu_test(test_no_high_water_before_on_open)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
