/* TCP urgent data (MSG_OOB) on crest connections.
 *
 * A read stops short at the urgent mark with the rest of the stream still
 * queued, even with SO_OOBINLINE (checked on Linux 6.x, TCP and AF_UNIX).
 * Taken as "drained" under edge triggering, that short read parked the
 * connection: nothing woke it again until the peer sent more.  crest sets
 * SO_OOBINLINE (the urgent byte is an ordinary stream byte, in order) and
 * registers for EPOLLPRI, so that an event with urgent data pending reads
 * on to EAGAIN.
 *
 * Each test: the peer sends "AAAA", one byte with MSG_OOB, "CCCC", then
 * nothing more; every byte must come back, in order. */
#include "crest_test.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#define WANT "AAAABCCCC"
#define WANT_LEN (sizeof WANT - 1)

struct urg {
    crest_listener_t *l;
    bool closed;
    crest_close_reason_t reason;
};

static ssize_t echo_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void on_close_rec(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct urg *u = crest_conn_handler_ctx(c);
    u->closed = true;
    u->reason = reason;
}

static const crest_handler_t echo = {.on_data = echo_on_data, .on_close = on_close_rec};

/* The three sends, before the loop runs, so that one edge reports them. */
static void send_with_urgent(int fd) {
    assert_int_equal(send(fd, "AAAA", 4, 0), 4);
    assert_int_equal(send(fd, "B", 1, MSG_OOB), 1);
    assert_int_equal(send(fd, "CCCC", 4, 0), 4);
}

/* Run the loop, collecting what fd receives, until WANT_LEN bytes or a
 * bounded number of iterations with nothing new. */
static size_t collect(crest_loop_t *loop, int fd, char *buf, size_t cap) {
    size_t got = 0;
    for (int idle = 0; got < cap && idle < 100;) {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        ssize_t n = recv(fd, buf + got, cap - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            idle = 0;
        } else {
            assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
            idle++;
        }
    }
    return got;
}

static void echo_case(const char *addr) {
    crest_loop_t *loop = tu_loop();
    struct urg u = {0};
    assert_int_equal(crest_listen(loop, addr, NULL, &echo, &u, &u.l), 0);
    char where[CREST_ADDR_STRLEN];
    assert_true(crest_listener_address(u.l, where, sizeof where) > 0);
    int fd = tu_raw_connect(where, 0);
    tu_spin(loop, 5); /* accepted */
    send_with_urgent(fd);
    char buf[64] = {0};
    size_t got = collect(loop, fd, buf, WANT_LEN);
    print_message("%s: echoed %zu of %zu bytes: \"%.*s\"\n", addr, got, WANT_LEN, (int)got, buf);
    assert_int_equal(got, WANT_LEN);
    assert_memory_equal(buf, WANT, WANT_LEN);

    close(fd);
    RUN_UNTIL(loop, u.closed);
    assert_int_equal(u.reason, CREST_CLOSE_PEER_EOF);
    crest_listener_close(u.l);
    tu_finish_conns(loop);
}

static void test_urgent_byte_echoed_in_order_tcp(void **state) {
    (void)state;
    echo_case("127.0.0.1:0");
}

/* AF_UNIX has MSG_OOB too (Linux 5.15+); accepted Unix sockets do not
 * inherit SO_OOBINLINE from the listener. */
static void test_urgent_byte_echoed_in_order_unix(void **state) {
    (void)state;
    int probe[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, probe), 0);
    bool oob = send(probe[0], "x", 1, MSG_OOB) == 1;
    close(probe[0]);
    close(probe[1]);
    if (!oob) {
        print_message("no MSG_OOB on AF_UNIX here: skipped\n");
        skip();
    }
    char addr[128];
    snprintf(addr, sizeof addr, "unix:/tmp/crest-test-urgent-%d.sock", (int)getpid());
    echo_case(addr);
}

/* An outbound crest connection receives the urgent data. */
static void test_urgent_byte_to_outbound_conn(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(lfd, 1), 0);
    socklen_t slen = sizeof sin;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &slen), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));

    struct urg u = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, addr, NULL, &echo, &u, &c), 0);
    tu_spin(loop, 5);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(fd >= 0);
    close(lfd);
    tu_spin(loop, 5); /* connected */
    send_with_urgent(fd);
    char buf[64] = {0};
    size_t got = collect(loop, fd, buf, WANT_LEN);
    print_message("outbound: echoed %zu of %zu bytes: \"%.*s\"\n", got, WANT_LEN, (int)got, buf);
    assert_int_equal(got, WANT_LEN);
    assert_memory_equal(buf, WANT, WANT_LEN);

    close(fd);
    RUN_UNTIL(loop, u.closed);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_urgent_byte_echoed_in_order_tcp),
        tu_test(test_urgent_byte_echoed_in_order_unix),
        tu_test(test_urgent_byte_to_outbound_conn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
