/* crest_conn_peer() in on_close after the peer reset the connection.
 * getpeername() on a reset TCP socket fails with ENOTCONN, so crest keeps
 * the peer's address from accept4()/connect() (inline for IPv4, in the
 * connection's extra block for IPv6): a server can still say which client
 * reset it. (Found by tests/hostile.py, scenario resets.) */
#include "crest_test.h"

#include <netinet/in.h>
#include <sys/socket.h>

struct peer_state {
    crest_listener_t *l;
    bool closed;
    crest_close_reason_t reason;
    int peer_rc;
    char peer[CREST_ADDR_STRLEN];
};

static void on_close_peer(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct peer_state *s = crest_conn_handler_ctx(c);
    s->closed = true;
    s->reason = reason;
    s->peer_rc = crest_conn_peer(c, s->peer, sizeof s->peer);
}

static ssize_t on_data_keep(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    (void)data;
    return (ssize_t)len;
}

static void test_peer_name_in_on_close_after_reset(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct peer_state s = {0};
    crest_handler_t h = {.on_data = on_data_keep, .on_close = on_close_peer};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, &s, &s.l), 0);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)crest_listener_port(s.l)),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    struct sockaddr_in me;
    socklen_t mlen = sizeof me;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&me, &mlen), 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", (unsigned)ntohs(me.sin_port));

    /* accepted; then an RST */
    tu_spin(loop, 20);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);
    tu_run_until(loop, &s.closed, 200, 10);
    assert_true(s.closed);
    assert_int_equal(s.reason, CREST_CLOSE_PEER_RESET);

    crest_listener_close(s.l);
    tu_spin(loop, 2);
    tu_destroy_loop(loop);

    if (s.peer_rc < 0)
        print_message("crest_conn_peer() in on_close after an RST: %s (expected %s)\n",
                      crest_strerror(s.peer_rc), want);
    assert_int_equal(s.peer_rc, (int)strlen(want)); /* the length written */
    assert_string_equal(s.peer, want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_peer_name_in_on_close_after_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
