/* Fixed bug (a regression test of issue 11; found by the chaos engine, tests/chaos.h eof_while_paused):
 * a RAW handler that kept its input (returned 0) is offered it again at
 * EOF; if it consumes it and calls crest_conn_pause() in that on_data,
 * on_eof still follows at once (take_eof in conn_io.c delivers the EOF
 * when the buffer is empty, without looking at the pause).
 *
 * Had the pause come one read earlier, the EOF would wait for the resume:
 * a paused handler hears nothing of its input, the end included.  The fix
 * is not one line: take_eof must stop when delivery is paused, and the
 * resume must bring a held EOF back with no input left (resume_input and
 * the redeliver branch of crest__conn_on_io only look at buffered bytes).
 */
#include "crest_test.h"

struct held {
    crest_listener_t *l;
    crest_conn_t *c;
    int offers, eofs, eofs_paused, closed;
    bool paused;
};

static void h_open(crest_conn_t *c) {
    struct held *h = crest_conn_handler_ctx(c);
    h->c = c;
}

static ssize_t h_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)d;
    struct held *h = crest_conn_handler_ctx(c);
    if (h->offers++ == 0)
        return 0; /* not enough yet: keep it */
    crest_conn_pause(c);
    h->paused = true;
    return (ssize_t)n;
}

static void h_eof(crest_conn_t *c) {
    struct held *h = crest_conn_handler_ctx(c);
    h->eofs++;
    h->eofs_paused += h->paused;
    crest_conn_close(c);
}

static void h_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct held *h = crest_conn_handler_ctx(c);
    h->closed++;
}

static void test_no_eof_while_paused(void **state) {
    (void)state;
    struct held h = {0};
    crest_loop_t *loop = tu_loop();
    crest_handler_t hd = {.on_open = h_open, .on_data = h_data, .on_eof = h_eof,
                          .on_close = h_close};
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &hd, &h, &h.l), 0);
    assert_true(crest_listener_address(h.l, addr, sizeof addr) > 0);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, h.c != NULL);
    assert_int_equal(send(fd, "hello", 5, MSG_NOSIGNAL), 5);
    RUN_UNTIL(loop, h.offers == 1);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    RUN_UNTIL(loop, h.offers == 2);
    tu_spin(loop, 3);
    assert_int_equal(h.eofs_paused, 0); /* the bug: on_eof came while paused */
    h.paused = false;
    crest_conn_resume(h.c);
    RUN_UNTIL(loop, h.eofs == 1); /* the held EOF comes with the resume */
    RUN_UNTIL(loop, h.closed == 1);
    close(fd);
    crest_listener_close(h.l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {tu_test(test_no_eof_while_paused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
