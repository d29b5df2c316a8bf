/* Tests for socket tuning (include/crest/sockopt.h), on real sockets:
 * loopback TCP (127.0.0.1, ports picked by the kernel) and AF_UNIX pairs. */
#include "crest_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

/* ---- helpers ------------------------------------------------------------ */

/* A listening socket on 127.0.0.1:0, its address in *sin. */
static int tcp_listener(struct sockaddr_in *sin, bool reuseport) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    if (reuseport)
        assert_int_equal(crest_sockopt_set_reuseport(l, true), 0);
    if (sin->sin_family != AF_INET) {
        memset(sin, 0, sizeof *sin);
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin->sin_port = 0;
    }
    if (bind(l, (const struct sockaddr *)sin, sizeof *sin) != 0) {
        int err = errno;
        close(l);
        errno = err;
        return -1;
    }
    socklen_t len = sizeof *sin;
    assert_int_equal(getsockname(l, (struct sockaddr *)sin, &len), 0);
    assert_int_equal(listen(l, 8), 0);
    return l;
}

/* A connected loopback TCP pair: fds[0] the client, fds[1] accepted. */
static void tcp_pair(int fds[2]) {
    struct sockaddr_in sin = {0};
    int l = tcp_listener(&sin, false);
    assert_true(l >= 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    assert_int_equal(connect(c, (const struct sockaddr *)&sin, sizeof sin), 0);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    assert_true(s >= 0);
    assert_int_equal(close(l), 0);
    fds[0] = c;
    fds[1] = s;
}

static void unix_pair(int fds[2]) {
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
}

static void close_pair(int fds[2]) {
    assert_int_equal(close(fds[0]), 0);
    assert_int_equal(close(fds[1]), 0);
}

static int getint(int fd, int level, int name) {
    int v = -12345;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/* Wait up to 5 s for any of events on fd. */
static short wait_for(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, 5000);
    while (n < 0 && errno == EINTR);
    assert_int_equal(n, 1);
    return p.revents;
}

/* ---- buffers ------------------------------------------------------------ */

static void check_buffers(int fd) {
    /* Small enough to stay under any sane wmem_max/rmem_max. */
    const int want = 32 * 1024;
    int got = crest_sockopt_set_sndbuf(fd, want);
    assert_true(got >= want);
    assert_int_equal(got, crest_sockopt_get_sndbuf(fd));
    assert_int_equal(got, getint(fd, SOL_SOCKET, SO_SNDBUF));

    got = crest_sockopt_set_rcvbuf(fd, want);
    assert_true(got >= want);
    assert_int_equal(got, crest_sockopt_get_rcvbuf(fd));
    assert_int_equal(got, getint(fd, SOL_SOCKET, SO_RCVBUF));

    /* Another size reads back another value: what is returned is what
     * the kernel now holds, not a cached or echoed request. */
    int got2 = crest_sockopt_set_sndbuf(fd, want / 2);
    assert_true(got2 >= want / 2);
    assert_true(got2 < got);
    assert_int_equal(got2, crest_sockopt_get_sndbuf(fd));

    /* A tiny request is raised to the kernel's minimum, and says so. */
    got = crest_sockopt_set_rcvbuf(fd, 1);
    assert_true(got > 1);
    assert_int_equal(got, crest_sockopt_get_rcvbuf(fd));

    assert_int_equal(crest_sockopt_set_sndbuf(fd, -1), -EINVAL);
    assert_int_equal(crest_sockopt_set_rcvbuf(fd, -5), -EINVAL);
}

static void test_buffers_tcp(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    check_buffers(fds[0]);
    check_buffers(fds[1]);
    close_pair(fds);
    tu_assert_nothing_open();
}

static void test_buffers_unix(void **state) {
    (void)state;
    int fds[2];
    unix_pair(fds);
    check_buffers(fds[0]);
    check_buffers(fds[1]);
    close_pair(fds);
    tu_assert_nothing_open();
}

/* A listener's buffer sizes are inherited by what it accepts. */
static void test_buffers_inherited(void **state) {
    (void)state;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    int rcv = crest_sockopt_set_rcvbuf(l, 48 * 1024);
    assert_true(rcv >= 48 * 1024);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (const struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t len = sizeof sin;
    assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);
    assert_int_equal(listen(l, 1), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    assert_int_equal(connect(c, (const struct sockaddr *)&sin, sizeof sin), 0);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    assert_true(s >= 0);
    assert_int_equal(crest_sockopt_get_rcvbuf(s), rcv);
    assert_int_equal(close(s), 0);
    assert_int_equal(close(c), 0);
    assert_int_equal(close(l), 0);
    tu_assert_nothing_open();
}

/* ---- TCP_NODELAY -------------------------------------------------------- */

static void test_nodelay(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    for (int i = 0; i < 2; i++) {
        int fd = fds[i];
        assert_int_equal(crest_sockopt_get_nodelay(fd), 0); /* Nagle on by default */
        assert_int_equal(crest_sockopt_set_nodelay(fd, true), 0);
        assert_int_equal(crest_sockopt_get_nodelay(fd), 1);
        assert_int_equal(getint(fd, IPPROTO_TCP, TCP_NODELAY), 1);
        assert_int_equal(crest_sockopt_set_nodelay(fd, false), 0);
        assert_int_equal(crest_sockopt_get_nodelay(fd), 0);
        assert_int_equal(getint(fd, IPPROTO_TCP, TCP_NODELAY), 0);
    }
    close_pair(fds);
    tu_assert_nothing_open();
}

/* Not TCP: one error, whatever the kernel's own was. */
static void test_nodelay_not_tcp(void **state) {
    (void)state;
    int fds[2];
    unix_pair(fds);
    assert_int_equal(crest_sockopt_set_nodelay(fds[0], true), -EOPNOTSUPP);
    assert_int_equal(crest_sockopt_set_nodelay(fds[0], false), -EOPNOTSUPP);
    assert_int_equal(crest_sockopt_get_nodelay(fds[1]), -EOPNOTSUPP);
    close_pair(fds);

    /* A UDP socket: the kernel says ENOPROTOOPT there. */
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(u >= 0);
    assert_int_equal(crest_sockopt_set_nodelay(u, true), -EOPNOTSUPP);
    assert_int_equal(crest_sockopt_get_nodelay(u), -EOPNOTSUPP);
    assert_int_equal(close(u), 0);

    /* Not a socket at all, and not an fd. */
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(crest_sockopt_set_nodelay(p[0], true), -ENOTSOCK);
    assert_int_equal(crest_sockopt_get_sndbuf(p[0]), -ENOTSOCK);
    assert_int_equal(crest_sockopt_get_error(p[0]), -ENOTSOCK);
    close_pair(p);
    assert_int_equal(crest_sockopt_set_nodelay(-1, true), -EBADF);
    assert_int_equal(crest_sockopt_set_sndbuf(-1, 4096), -EBADF);
    assert_int_equal(crest_sockopt_get_error(-1), -EBADF);
    tu_assert_nothing_open();
}

/* ---- keepalive ---------------------------------------------------------- */

static void test_keepalive(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    int fd = fds[0];
    assert_int_equal(getint(fd, SOL_SOCKET, SO_KEEPALIVE), 0);

    assert_int_equal(crest_sockopt_set_keepalive(fd, true, 30, 5, 4), 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(getint(fd, IPPROTO_TCP, TCP_KEEPIDLE), 30);
    assert_int_equal(getint(fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    assert_int_equal(getint(fd, IPPROTO_TCP, TCP_KEEPCNT), 4);

    /* Off: the flag goes, nothing else is touched. */
    assert_int_equal(crest_sockopt_set_keepalive(fd, false, 0, 0, 0), 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_KEEPALIVE), 0);

    /* Out of the kernel's range: refused, and keepalive not left on. */
    assert_int_equal(crest_sockopt_set_keepalive(fd, true, 1 << 20, 0, 0), -EINVAL);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    assert_int_equal(crest_sockopt_set_keepalive(fd, true, 10, -1, 0), -EINVAL);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    assert_int_equal(getint(fd, IPPROTO_TCP, TCP_KEEPIDLE), 30);

    /* Zeros on a fresh socket keep the system defaults. */
    int fd2 = fds[1];
    int idle = getint(fd2, IPPROTO_TCP, TCP_KEEPIDLE);
    int intvl = getint(fd2, IPPROTO_TCP, TCP_KEEPINTVL);
    int cnt = getint(fd2, IPPROTO_TCP, TCP_KEEPCNT);
    assert_int_equal(crest_sockopt_set_keepalive(fd2, true, 0, 0, 0), 0);
    assert_int_equal(getint(fd2, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPIDLE), idle);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPINTVL), intvl);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPCNT), cnt);
    /* One value alone changes only that one. */
    assert_int_equal(crest_sockopt_set_keepalive(fd2, true, 0, 7, 0), 0);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPIDLE), idle);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPINTVL), 7);
    assert_int_equal(getint(fd2, IPPROTO_TCP, TCP_KEEPCNT), cnt);
    close_pair(fds);

    /* AF_UNIX: the TCP timings do not exist there. */
    unix_pair(fds);
    assert_int_equal(crest_sockopt_set_keepalive(fds[0], true, 30, 0, 0), -EOPNOTSUPP);
    assert_int_equal(getint(fds[0], SOL_SOCKET, SO_KEEPALIVE), 0);
    close_pair(fds);
    tu_assert_nothing_open();
}

/* ---- TCP_USER_TIMEOUT, TCP_CORK ----------------------------------------- */

static void test_user_timeout(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
    assert_int_equal(crest_sockopt_set_user_timeout(fds[0], 5000), 0);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_USER_TIMEOUT), 5000);
    assert_int_equal(crest_sockopt_set_user_timeout(fds[0], 1), 0);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_USER_TIMEOUT), 1);
    assert_int_equal(crest_sockopt_set_user_timeout(fds[0], 0), 0);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
    /* Beyond the kernel's int. */
    assert_int_equal(crest_sockopt_set_user_timeout(fds[0], 0x80000000u), -EINVAL);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
    close_pair(fds);

    unix_pair(fds);
    assert_int_equal(crest_sockopt_set_user_timeout(fds[0], 5000), -EOPNOTSUPP);
    close_pair(fds);
    tu_assert_nothing_open();
}

static void test_cork(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_CORK), 0);
    assert_int_equal(crest_sockopt_set_cork(fds[0], true), 0);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_CORK), 1);

    /* Corked bytes still arrive once uncorked. */
    assert_int_equal(write(fds[0], "abc", 3), 3);
    assert_int_equal(crest_sockopt_set_cork(fds[0], false), 0);
    assert_int_equal(getint(fds[0], IPPROTO_TCP, TCP_CORK), 0);
    assert_true(wait_for(fds[1], POLLIN) & POLLIN);
    char buf[8];
    assert_int_equal(read(fds[1], buf, sizeof buf), 3);
    assert_memory_equal(buf, "abc", 3);
    close_pair(fds);

    unix_pair(fds);
    assert_int_equal(crest_sockopt_set_cork(fds[0], true), -EOPNOTSUPP);
    close_pair(fds);
    tu_assert_nothing_open();
}

/* ---- SO_REUSEADDR, SO_REUSEPORT ----------------------------------------- */

static void test_reuseaddr(void **state) {
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_REUSEADDR), 0);
    assert_int_equal(crest_sockopt_set_reuseaddr(fd, true), 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_REUSEADDR), 1);
    assert_int_equal(crest_sockopt_set_reuseaddr(fd, false), 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_REUSEADDR), 0);
    assert_int_equal(close(fd), 0);
    assert_int_equal(crest_sockopt_set_reuseaddr(-1, true), -EBADF);
    tu_assert_nothing_open();
}

/* Two listeners on one port with SO_REUSEPORT; without it, EADDRINUSE. */
static void test_reuseport(void **state) {
    (void)state;
    struct sockaddr_in sin = {0};
    int a = tcp_listener(&sin, true);
    assert_true(a >= 0);
    assert_int_equal(getint(a, SOL_SOCKET, SO_REUSEPORT), 1);
    struct sockaddr_in same = sin;
    int b = tcp_listener(&same, true);
    assert_true(b >= 0);
    assert_int_equal(same.sin_port, sin.sin_port);

    /* Both accept: a connection reaches one of them. */
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    assert_int_equal(connect(c, (const struct sockaddr *)&sin, sizeof sin), 0);
    struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    assert_int_equal(poll(p, 2, 5000), 1);
    int s = accept4((p[0].revents & POLLIN) ? a : b, NULL, NULL, SOCK_CLOEXEC);
    assert_true(s >= 0);
    assert_int_equal(close(s), 0);
    assert_int_equal(close(c), 0);

    /* A third socket without the option cannot join. */
    same = sin;
    errno = 0;
    assert_int_equal(tcp_listener(&same, false), -1);
    assert_int_equal(errno, EADDRINUSE);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(crest_sockopt_set_reuseport(fd, true), 0);
    assert_int_equal(crest_sockopt_set_reuseport(fd, false), 0);
    assert_int_equal(getint(fd, SOL_SOCKET, SO_REUSEPORT), 0);
    assert_int_equal(close(fd), 0);

    assert_int_equal(close(a), 0);
    assert_int_equal(close(b), 0);
    tu_assert_nothing_open();
}

/* ---- SO_LINGER abort, SO_ERROR ------------------------------------------ */

static void test_linger_abort_resets_peer(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    assert_int_equal(crest_sockopt_set_linger_abort(fds[0]), 0);
    struct linger lg = {.l_onoff = -1, .l_linger = -1};
    socklen_t len = sizeof lg;
    assert_int_equal(getsockopt(fds[0], SOL_SOCKET, SO_LINGER, &lg, &len), 0);
    assert_int_equal(lg.l_onoff, 1);
    assert_int_equal(lg.l_linger, 0);

    /* close() sends RST: the peer's read fails with ECONNRESET. */
    assert_int_equal(close(fds[0]), 0);
    assert_true(wait_for(fds[1], POLLIN) & (POLLIN | POLLERR | POLLHUP));
    char buf[8];
    errno = 0;
    assert_int_equal(read(fds[1], buf, sizeof buf), -1);
    assert_int_equal(errno, ECONNRESET);
    assert_int_equal(close(fds[1]), 0);

    /* The same seen through SO_ERROR: read once, then cleared. */
    tcp_pair(fds);
    assert_int_equal(crest_sockopt_set_linger_abort(fds[1]), 0);
    assert_int_equal(close(fds[1]), 0);
    assert_true(wait_for(fds[0], POLLIN) & (POLLIN | POLLERR | POLLHUP));
    assert_int_equal(crest_sockopt_get_error(fds[0]), ECONNRESET);
    assert_int_equal(crest_sockopt_get_error(fds[0]), 0);
    assert_int_equal(close(fds[0]), 0);

    /* Without it, close() is an orderly EOF. */
    tcp_pair(fds);
    assert_int_equal(close(fds[0]), 0);
    assert_true(wait_for(fds[1], POLLIN) & POLLIN);
    assert_int_equal(read(fds[1], buf, sizeof buf), 0);
    assert_int_equal(crest_sockopt_get_error(fds[1]), 0);
    assert_int_equal(close(fds[1]), 0);
    tu_assert_nothing_open();
}

/* A refused nonblocking connect reports its error through SO_ERROR. */
static void test_get_error_refused(void **state) {
    (void)state;
    int fds[2];
    tcp_pair(fds);
    assert_int_equal(crest_sockopt_get_error(fds[0]), 0);
    assert_int_equal(crest_sockopt_get_error(fds[1]), 0);
    close_pair(fds);

    /* A port nobody listens on: bound by the kernel, then closed. */
    struct sockaddr_in sin = {0};
    int l = tcp_listener(&sin, false);
    assert_true(l >= 0);
    assert_int_equal(close(l), 0);

    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    int rc = connect(c, (const struct sockaddr *)&sin, sizeof sin);
    if (rc < 0 && errno == EINPROGRESS) {
        assert_true(wait_for(c, POLLOUT) & (POLLOUT | POLLERR));
        assert_int_equal(crest_sockopt_get_error(c), ECONNREFUSED);
    } else {
        /* Loopback may refuse at once. */
        assert_int_equal(rc, -1);
        assert_int_equal(errno, ECONNREFUSED);
    }
    assert_int_equal(crest_sockopt_get_error(c), 0);
    assert_int_equal(close(c), 0);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_buffers_tcp),
        tu_test(test_buffers_unix),
        tu_test(test_buffers_inherited),
        tu_test(test_nodelay),
        tu_test(test_nodelay_not_tcp),
        tu_test(test_keepalive),
        tu_test(test_user_timeout),
        tu_test(test_cork),
        tu_test(test_reuseaddr),
        tu_test(test_reuseport),
        tu_test(test_linger_abort_resets_peer),
        tu_test(test_get_error_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
