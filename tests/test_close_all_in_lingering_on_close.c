/* Fixed bug (a regression test of issue 11; found by the chaos engine): crest_loop_close_all(loop, true)
 * called from the on_close of a connection whose graceful close lingers
 * (conn.h, "Lingering close": on_close runs when the linger starts) ends
 * that linger at once, closing the socket while its on_close is still on
 * the stack: crest_conn_fd() says -1 there, and the fd number is free for
 * the next socket while the handler may still hold it.  conn.h: "The
 * socket is still open during the call".  The abort could end the linger
 * once on_close has returned (the connection's depth is non-zero inside
 * it).
 */
#include "crest_test.h"

struct lg {
    crest_loop_t *loop;
    crest_conn_t *c;
    int closed, fd_before, fd_after;
};

static void lg_open(crest_conn_t *c) {
    struct lg *g = crest_conn_handler_ctx(c);
    g->c = c;
}

static ssize_t lg_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void lg_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct lg *g = crest_conn_handler_ctx(c);
    g->closed++;
    g->fd_before = crest_conn_fd(c);
    crest_loop_close_all(g->loop, true);
    g->fd_after = crest_conn_fd(c);
}

static void test_close_all_keeps_the_socket_of_a_running_on_close(void **state) {
    (void)state;
    struct lg g = {0};
    crest_loop_t *loop = g.loop = tu_loop();
    crest_handler_t h = {.on_open = lg_open, .on_data = lg_data, .on_close = lg_close};
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, &g, &l), 0); /* linger on */
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, g.c != NULL);
    crest_conn_close(g.c); /* graceful, the peer has not ended: it lingers */
    RUN_UNTIL(loop, g.closed == 1);
    assert_true(g.fd_before >= 0);
    assert_int_equal(g.fd_after, g.fd_before);
    close(fd);
    tu_spin(loop, 3);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_close_all_keeps_the_socket_of_a_running_on_close)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
