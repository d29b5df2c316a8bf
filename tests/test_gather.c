/* Replies written from on_data/on_message gather in the loop's buffer and
 * leave in one send when the callback returns (conn_io.c).  What must hold
 * around that: order against queued and large writes, shutdown after a
 * reply, abort dropping it, crest_conn_output_bytes() counting it, and a
 * handler writing to another connection meanwhile.  Over real loopback
 * sockets. */
#include "crest_test.h"

static void client_send(int fd, const char *s) {
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

struct gather_case {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[2];
    int opened, closed;
    crest_close_reason_t reason;
    size_t out_seen;          /* crest_conn_output_bytes() inside on_data */
    uint8_t *big;
    size_t big_len;
};

static void on_open(crest_conn_t *c) {
    struct gather_case *g = crest_conn_handler_ctx(c);
    assert_true(g->opened < 2);
    g->conns[g->opened++] = c;
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    struct gather_case *g = crest_conn_handler_ctx(c);
    g->reason = reason;
    g->closed++;
}

static crest_loop_t *start(struct gather_case *g, ssize_t (*on_data)(crest_conn_t *, const uint8_t *,
                                                                     size_t)) {
    crest_loop_t *loop = tu_loop();
    crest_handler_t h = {.on_open = on_open, .on_data = on_data, .on_close = on_close};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, g, &g->l), 0);
    assert_true(crest_listener_address(g->l, g->addr, sizeof g->addr) > 0);
    return loop;
}

static void stop(crest_loop_t *loop, struct gather_case *g, int fd) {
    close(fd);
    RUN_UNTIL(loop, g->closed == g->opened);
    crest_listener_close(g->l);
    tu_finish_conns(loop);
}

/* ---- three writes, one send ---------------------------------------------- */

static ssize_t three_writes(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct gather_case *g = crest_conn_handler_ctx(c);
    assert_int_equal(crest_conn_write(c, "a", 1), 0);
    struct iovec iov[2] = {{(void *)"bb", 2}, {(void *)"ccc", 3}};
    assert_int_equal(crest_conn_writev(c, iov, 2), 0);
    g->out_seen = crest_conn_output_bytes(c);
    return (ssize_t)len;
}

static void test_writes_in_one_callback_leave_in_one_send(void **state) {
    (void)state;
    struct gather_case g = {0};
    crest_loop_t *loop = start(&g, three_writes);
    int fd = tu_raw_connect(g.addr, 0);
    RUN_UNTIL(loop, g.opened == 1);
    crest_conn_stats_t before, after;
    crest_loop_conn_stats(loop, &before);
    client_send(fd, "x");
    uint8_t buf[16];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 6, &end), 6);
    assert_memory_equal(buf, "abbccc", 6);
    crest_loop_conn_stats(loop, &after);
    assert_int_equal(after.writes - before.writes, 1);
    assert_int_equal(after.bytes_out - before.bytes_out, 6);
    /* crest_conn_output_bytes() counted the gathered bytes */
    assert_int_equal(g.out_seen, 6);
    stop(loop, &g, fd);
}

/* ---- a reply, then shutdown: the reply comes before the FIN --------------- */

static ssize_t reply_then_shutdown(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    assert_int_equal(crest_conn_write(c, "bye\n", 4), 0);
    assert_int_equal(crest_conn_shutdown(c), 0);
    return (ssize_t)len;
}

static void test_shutdown_sends_gathered_reply_first(void **state) {
    (void)state;
    struct gather_case g = {0};
    crest_loop_t *loop = start(&g, reply_then_shutdown);
    int fd = tu_raw_connect(g.addr, 0);
    client_send(fd, "quit\n");
    uint8_t buf[16];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, sizeof buf, &end), 4);
    assert_int_equal(end, 1);
    assert_memory_equal(buf, "bye\n", 4);
    stop(loop, &g, fd);
}

/* ---- small, large, small: order kept -------------------------------------- */

static ssize_t small_big_small(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct gather_case *g = crest_conn_handler_ctx(c);
    assert_int_equal(crest_conn_write(c, "<", 1), 0);
    assert_int_equal(crest_conn_write(c, g->big, g->big_len), 0);
    assert_int_equal(crest_conn_write(c, ">", 1), 0);
    return (ssize_t)len;
}

static void test_large_write_between_small_ones_keeps_order(void **state) {
    (void)state;
    struct gather_case g = {0};
    g.big_len = 1 << 20; /* far over the loop's 16 KiB gather buffer */
    g.big = malloc(g.big_len);
    assert_non_null(g.big);
    tu_pattern(g.big, 0, g.big_len);
    crest_loop_t *loop = start(&g, small_big_small);
    int fd = tu_raw_connect(g.addr, 0);
    client_send(fd, "go");
    size_t want = g.big_len + 2;
    uint8_t *buf = malloc(want);
    assert_non_null(buf);
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, want, &end), want);
    assert_int_equal(buf[0], '<');
    assert_memory_equal(buf + 1, g.big, g.big_len);
    assert_int_equal(buf[want - 1], '>');
    free(buf);
    stop(loop, &g, fd);
    free(g.big);
}

/* ---- abort drops what was gathered ---------------------------------------- */

static ssize_t reply_then_abort(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    assert_int_equal(crest_conn_write(c, "secret", 6), 0);
    crest_conn_abort(c);
    return (ssize_t)len;
}

static void test_abort_drops_gathered_reply(void **state) {
    (void)state;
    struct gather_case g = {0};
    crest_loop_t *loop = start(&g, reply_then_abort);
    int fd = tu_raw_connect(g.addr, 0);
    client_send(fd, "x");
    uint8_t buf[16];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, sizeof buf, &end), 0);
    assert_int_equal(end, -ECONNRESET);
    assert_int_equal(g.reason, CREST_CLOSE_ABORT);
    stop(loop, &g, fd);
}

/* ---- a handler writes to another connection ------------------------------- */

static ssize_t relay(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct gather_case *g = crest_conn_handler_ctx(c);
    crest_conn_t *other = g->conns[0] == c ? g->conns[1] : g->conns[0];
    assert_int_equal(crest_conn_write(c, "ack:", 4), 0);
    assert_int_equal(crest_conn_write(other, data, len), 0);
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void test_handler_writes_to_another_connection(void **state) {
    (void)state;
    struct gather_case g = {0};
    crest_loop_t *loop = start(&g, relay);
    int a = tu_raw_connect(g.addr, 0);
    RUN_UNTIL(loop, g.opened == 1);
    int b = tu_raw_connect(g.addr, 0);
    RUN_UNTIL(loop, g.opened == 2);
    client_send(a, "hello");
    uint8_t buf[16];
    int end;
    assert_int_equal(tu_raw_recv(loop, a, buf, 9, &end), 9);
    assert_memory_equal(buf, "ack:hello", 9);
    assert_int_equal(tu_raw_recv(loop, b, buf, 5, &end), 5);
    assert_memory_equal(buf, "hello", 5);
    close(b);
    stop(loop, &g, a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_writes_in_one_callback_leave_in_one_send),
        tu_test(test_shutdown_sends_gathered_reply_first),
        tu_test(test_large_write_between_small_ones_keeps_order),
        tu_test(test_abort_drops_gathered_reply),
        tu_test(test_handler_writes_to_another_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
