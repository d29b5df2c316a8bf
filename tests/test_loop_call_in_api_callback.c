/* Fixed bug (a regression test of issue 11; found with the chaos engine's accounting of callbacks that run
 * inside API calls): on_drain and on_high_water run synchronously inside
 * crest_conn_uncork() / crest_conn_write() (and _writev, _write_message,
 * _shutdown), also when the application calls those outside the loop, e.g.
 * from main() between iterations.  The loop is not "running" then, so the
 * guards of loop.h do not apply inside those callbacks:
 *
 *   - crest_loop_run_once() from such an on_drain runs a whole iteration
 *     inside crest_conn_uncork() (returns 1; loop.h says -EBUSY from a
 *     connection callback);
 *   - crest_loop_destroy() from it destroys the loop and frees the
 *     connection under the uncork: ASan, heap-use-after-free in
 *     check_low_water (conn_io.c) called from crest__conn_flush() from
 *     crest_conn_uncork().
 *
 * DESIGN.md: callbacks never run inside a crest call unless its header says
 * so; conn.h says nothing of these two.  Either they wait for the loop (a
 * kick, then the io callback calls them), or the header documents them and
 * the loop counts callbacks on the stack for its -EBUSY guards.
 *
 * Issue 12 took the first way for the whole library: no callback runs
 * inside a crest call, so on_drain runs from the loop, after the uncork.
 */
#include "crest_test.h"

struct api_cb {
    crest_loop_t *loop;
    crest_conn_t *c;
    int drains, closed, run_rc;
};

static void a_open(crest_conn_t *c) {
    struct api_cb *a = crest_conn_handler_ctx(c);
    a->c = c;
}

static ssize_t a_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void a_high(crest_conn_t *c) {
    (void)c;
}

static void a_drain(crest_conn_t *c) {
    struct api_cb *a = crest_conn_handler_ctx(c);
    a->drains++;
    a->run_rc = crest_loop_run_once(a->loop, 0); /* a connection callback: -EBUSY */
}

static void a_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct api_cb *a = crest_conn_handler_ctx(c);
    a->closed++;
}

static void test_no_iteration_inside_uncork(void **state) {
    (void)state;
    struct api_cb a = {.run_rc = 1};
    crest_loop_t *loop = a.loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.high_water = 100;
    o.conn.low_water = 50;
    crest_handler_t h = {.on_open = a_open, .on_data = a_data, .on_high_water = a_high,
                         .on_drain = a_drain, .on_close = a_close};
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &o, &h, &a, &l), 0);
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, a.c != NULL);
    crest_conn_cork(a.c);
    uint8_t buf[200] = {0};
    assert_int_equal(crest_conn_write(a.c, buf, sizeof buf), 0); /* queued, above high water */
    assert_int_equal(crest_conn_uncork(a.c), 0); /* outside the loop: flushes here */
    assert_int_equal(a.drains, 0);               /* but on_drain waits for the loop */
    RUN_UNTIL(loop, a.drains == 1);
    assert_int_equal(a.run_rc, -EBUSY);
    close(fd);
    RUN_UNTIL(loop, a.closed == 1);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {tu_test(test_no_iteration_inside_uncork)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
