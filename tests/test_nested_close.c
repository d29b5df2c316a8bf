/* Found by tests/test_matrix.c (a regression test of issue 11): a close
 * requested from on_high_water or on_drain, caused by a crest_conn_write()
 * or crest_conn_uncork() made outside the connection's own callbacks (from
 * a timer, a deferred callback, another connection's callback, or the
 * loop's thread between iterations), must complete on the next iteration.
 * It used to sit in CLOSING until an event happened to arrive on its
 * socket, or until the 10 s bound on flushing a close reset it (a graceful
 * close turned into an RST).  Those callbacks ran inside the call then;
 * since issue 12 no callback runs inside a call: they run from the loop on
 * the next iteration (the ready list), and a close they ask for completes
 * when they return.  The tests check both: not inside the call, then the
 * close. */
#include "crest_test.h"

struct nc {
    crest_conn_t *c;
    int opened, closed, highs, drains;
    crest_close_reason_t reason;
    bool abort_in_high, close_in_drain;
};

static struct nc N;

static void nc_open(crest_conn_t *c) {
    N.c = c;
    N.opened++;
}

static ssize_t nc_data(crest_conn_t *c, const uint8_t *p, size_t len) {
    (void)c;
    (void)p;
    return (ssize_t)len;
}

static void nc_high(crest_conn_t *c) {
    N.highs++;
    if (N.abort_in_high)
        crest_conn_abort(c);
}

static void nc_drain(crest_conn_t *c) {
    N.drains++;
    if (N.close_in_drain)
        crest_conn_close(c);
}

static void nc_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    N.closed++;
    N.reason = reason;
}

static const crest_handler_t nc_h = {.on_open = nc_open, .on_data = nc_data,
                                     .on_high_water = nc_high, .on_drain = nc_drain,
                                     .on_close = nc_close};

/* A connection whose client (small receive buffer) reads nothing. */
static crest_loop_t *nc_start(crest_listener_t **l, int *client) {
    memset(&N, 0, sizeof N);
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.high_water = 4096;
    o.conn.low_water = 1024;
    o.conn.sndbuf = 4096;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &o, &nc_h, NULL, l), 0);
    char addr[CREST_ADDR_STRLEN];
    assert_true(crest_listener_address(*l, addr, sizeof addr) > 0);
    *client = tu_raw_connect(addr, 4096);
    RUN_UNTIL(loop, N.opened == 1);
    tu_spin(loop, 2);
    return loop;
}

/* Write from the loop's thread, outside any callback, until the output is
 * past high water; on_high_water runs on the next iteration, not inside
 * these writes. */
static size_t fill(crest_loop_t *loop) {
    static uint8_t chunk[1024];
    size_t n = 0;
    for (int i = 0; i < 4096 && crest_conn_output_bytes(N.c) <= 4096; i++) {
        int rc = crest_conn_write(N.c, chunk, sizeof chunk);
        if (rc != 0)
            break;
        n += sizeof chunk;
    }
    assert_true(crest_conn_output_bytes(N.c) > 4096);
    assert_int_equal(N.highs, 0);
    assert_true(crest_loop_run_once(loop, 0) >= 0);
    assert_int_equal(N.highs, 1);
    return n;
}

/* on_high_water caused by a write made outside the connection's callbacks
 * aborts: the abort completes when it returns. */
static void test_abort_in_high_water_inside_outside_write(void **state) {
    (void)state;
    crest_listener_t *l;
    int client;
    crest_loop_t *loop = nc_start(&l, &client);
    N.abort_in_high = true;
    fill(loop);
    tu_spin(loop, 3);
    /* Before the fix: still CLOSING here, for 10 s.  (N.c is freed once
     * closed: only the callbacks' records are read.) */
    assert_int_equal(N.closed, 1);
    assert_int_equal(N.reason, CREST_CLOSE_ABORT);
    close(client);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* on_drain caused by an uncork made outside the connection's callbacks
 * closes: nothing is queued, so the close completes when it returns, with
 * a FIN. */
static void test_close_in_drain_inside_outside_uncork(void **state) {
    (void)state;
    crest_listener_t *l;
    int client;
    crest_loop_t *loop = nc_start(&l, &client);
    size_t total = fill(loop);
    crest_conn_cork(N.c); /* hold the rest */
    size_t held = crest_conn_output_bytes(N.c);
    static uint8_t buf[1 << 20];
    int end;
    assert_int_equal(tu_raw_recv(loop, client, buf, total - held, &end), total - held);
    tu_spin(loop, 3); /* the EPOLLOUT edge: writable again */
    N.close_in_drain = true;
    assert_int_equal(crest_conn_uncork(N.c), 0); /* crosses low water */
    assert_int_equal(N.drains, 0);                /* not in here */
    assert_true(crest_loop_run_once(loop, 0) >= 0);
    assert_int_equal(N.drains, 1);
    tu_spin(loop, 3);
    /* Before the fix: still CLOSING here; after 10 s the linger resets it. */
    assert_int_equal(N.closed, 1);
    assert_int_equal(N.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(tu_raw_recv(loop, client, buf, sizeof buf, &end), held);
    assert_int_equal(end, 1); /* EOF, not a reset */
    close(client);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_abort_in_high_water_inside_outside_write),
        tu_test(test_close_in_drain_inside_outside_uncork),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
