/* Found by tests/test_matrix.c (regression tests of issue 11): a reset
 * (EPOLLERR|EPOLLHUP) on a connection that is not reading, a HALF_CLOSED
 * one (on_eof kept it open) or one paused with crest_conn_pause(), must
 * close it (PEER_RESET) even though nothing reads or writes: the io
 * callback reads SO_ERROR on an error event.  And an uncork that finds the
 * socket dead, from outside the connection's callbacks, must complete the
 * close on the next iteration (crest__conn_request_close() kicks the ready
 * list whenever none of the connection's callbacks is on the stack), not
 * with the 10 s bound on flushing a close. */
#include "crest_test.h"

struct ru {
    crest_conn_t *c;
    int opened, closed, eofs;
    crest_close_reason_t reason;
    bool pause_on_open;
};

static struct ru R;

static void ru_open(crest_conn_t *c) {
    R.c = c;
    R.opened++;
    if (R.pause_on_open)
        crest_conn_pause(c);
}

static ssize_t ru_data(crest_conn_t *c, const uint8_t *p, size_t len) {
    (void)c;
    (void)p;
    return (ssize_t)len;
}

static void ru_eof(crest_conn_t *c) {
    (void)c;
    R.eofs++; /* stays HALF_CLOSED: the handler has work to finish */
}

static void ru_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    R.closed++;
    R.reason = reason;
}

static const crest_handler_t ru_h = {.on_open = ru_open, .on_data = ru_data, .on_eof = ru_eof,
                                     .on_close = ru_close};

static crest_loop_t *ru_start(crest_listener_t **l, int *client, bool pause) {
    memset(&R, 0, sizeof R);
    R.pause_on_open = pause;
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &ru_h, NULL, l), 0);
    char addr[CREST_ADDR_STRLEN];
    assert_true(crest_listener_address(*l, addr, sizeof addr) > 0);
    *client = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, R.opened == 1);
    return loop;
}

static void reset(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

static void ru_finish(crest_loop_t *loop, crest_listener_t *l) {
    if (!R.closed)
        crest_conn_close(R.c);
    RUN_UNTIL(loop, R.closed == 1);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

static void test_reset_of_half_closed_connection(void **state) {
    (void)state;
    crest_listener_t *l;
    int client;
    crest_loop_t *loop = ru_start(&l, &client, false);
    shutdown(client, SHUT_WR);
    RUN_UNTIL(loop, R.eofs == 1);
    reset(client);
    tu_spin(loop, 5);
    /* Before the fix: still HALF_CLOSED, no on_close. */
    assert_int_equal(R.closed, 1);
    assert_int_equal(R.reason, CREST_CLOSE_PEER_RESET);
    ru_finish(loop, l);
}

static void test_reset_of_paused_connection(void **state) {
    (void)state;
    crest_listener_t *l;
    int client;
    crest_loop_t *loop = ru_start(&l, &client, true);
    tu_spin(loop, 2);
    reset(client);
    tu_spin(loop, 5);
    /* Before the fix: still OPEN until crest_conn_resume(). */
    assert_int_equal(R.closed, 1);
    assert_int_equal(R.reason, CREST_CLOSE_PEER_RESET);
    ru_finish(loop, l);
}

/* The uncork that finds the socket dead completes the close promptly. */
static void test_uncork_finding_a_reset(void **state) {
    (void)state;
    crest_listener_t *l;
    int client;
    crest_loop_t *loop = ru_start(&l, &client, false);
    shutdown(client, SHUT_WR);
    RUN_UNTIL(loop, R.eofs == 1);
    reset(client);
    tu_spin(loop, 5);
    if (!R.closed) { /* the reset went unnoticed (see above) */
        crest_conn_cork(R.c);
        assert_int_equal(crest_conn_write(R.c, "x", 1), 0); /* held by the cork */
        int rc = crest_conn_uncork(R.c);                  /* the send fails */
        assert_true(rc == -EPIPE || rc == -ECONNRESET);
        tu_spin(loop, 3);
        /* Before the fix: CLOSING for 10 s (the close linger). */
        assert_int_equal(R.closed, 1);
    }
    ru_finish(loop, l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_reset_of_half_closed_connection),
        tu_test(test_reset_of_paused_connection),
        tu_test(test_uncork_finding_a_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
