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

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_uncork_sends_a_pending_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
