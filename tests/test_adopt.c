/* crest_conn_adopt() and crest_listener_adopt(): a socketpair adopted on
 * one side with a plain socket on the other, a TCP socket accepted by
 * hand, an inherited listening socket, and every error return (with the
 * fd left as it was). */
#include "crest_test.h"

#include <sys/un.h>

struct st {
    int opened, closed;
    bool in_call;
    bool open_in_call;
    crest_close_reason_t reason;
    size_t echoed;
    int fd_at_open;
};

static struct st S;

static void on_open(crest_conn_t *c) {
    if (S.in_call)
        S.open_in_call = true;
    S.opened++;
    S.fd_at_open = crest_conn_fd(c);
    assert_int_equal(crest_conn_write(c, "hello\n", 6), 0);
}

static ssize_t on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    S.echoed += len;
    return (ssize_t)len;
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    S.closed++;
    S.reason = reason;
}

static const crest_handler_t echo = {
    .on_open = on_open, .on_data = on_data, .on_close = on_close};

static bool is_nonblock(int fd) {
    return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
}

/* The other side talks: "hello\n" from on_open, then its own bytes back. */
static void talk(crest_loop_t *loop, int peer) {
    char buf[64];
    int end;
    assert_int_equal(tu_raw_recv(loop, peer, buf, 6, &end), 6);
    assert_memory_equal(buf, "hello\n", 6);
    assert_int_equal(send(peer, "ping", 4, MSG_NOSIGNAL), 4);
    assert_int_equal(tu_raw_recv(loop, peer, buf, 4, &end), 4);
    assert_memory_equal(buf, "ping", 4);
}

static void test_adopt_socketpair(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    int sv[2];
    /* Blocking and inheritable, as a parent might hand it over. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_false(tu_fd_is_cloexec(sv[0]));
    crest_conn_t *c = NULL;
    S.in_call = true;
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &echo, NULL, &c), 0);
    S.in_call = false;
    assert_non_null(c);
    assert_int_equal(S.opened, 0); /* never inside the call */
    assert_int_equal(crest_conn_state(c), CREST_CONN_CONNECTING);
    assert_true(is_nonblock(sv[0]));
    assert_true(tu_fd_is_cloexec(sv[0]));
    crest_fd_kind_t kind;
    const char *origin = NULL;
    assert_int_equal(crest_fd_lookup(sv[0], &kind, &origin, NULL), 0);
    assert_int_equal(kind, CREST_FD_ACCEPTED);
    assert_string_equal(origin, "crest_conn_adopt");
    /* Adopting it again: crest owns it already. */
    crest_conn_t *c2 = NULL;
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &echo, NULL, &c2), -EEXIST);

    tu_spin(loop, 1);
    assert_int_equal(S.opened, 1); /* the next iteration */
    assert_false(S.open_in_call);
    assert_int_equal(S.fd_at_open, sv[0]);
    assert_int_equal(crest_conn_state(c), CREST_CONN_OPEN);
    assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    talk(loop, sv[1]);
    assert_int_equal(S.echoed, 4);
    /* The peer ends: the connection closes, and crest closes the fd. */
    close(sv[1]);
    RUN_UNTIL(loop, S.closed == 1);
    assert_int_equal(S.reason, CREST_CLOSE_PEER_EOF);
    assert_false(tu_fd_is_open(sv[0]));
    assert_int_equal(crest_fd_lookup(sv[0], NULL, NULL, NULL), -EBADF);
    tu_finish_conns(loop);
}

/* Input that was waiting before the adoption is read once the connection
 * opens (the registration reports it). */
static void test_adopt_with_pending_input(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(send(sv[1], "early", 5, 0), 5);
    crest_conn_t *c = NULL;
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &echo, NULL, &c), 0);
    RUN_UNTIL(loop, S.echoed == 5);
    char buf[16];
    int end;
    assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(tu_raw_recv(loop, sv[1], buf, 11, &end), 11);
    assert_memory_equal(buf, "hello\nearly", 11);
    /* Our own close this time: graceful, then crest closes the fd. */
    crest_conn_close(c);
    RUN_UNTIL(loop, S.closed == 1);
    assert_int_equal(S.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(tu_raw_recv(loop, sv[1], buf, sizeof buf, &end), 0);
    assert_int_equal(end, 1); /* EOF */
    close(sv[1]);
    RUN_UNTIL(loop, !tu_fd_is_open(sv[0]));
    tu_finish_conns(loop);
}

/* A TCP connection accepted by hand (crest never saw its listener), with
 * options applied. */
static void test_adopt_tcp(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(cfd, (struct sockaddr *)&sin, sizeof sin), 0);
    int afd = accept(lfd, NULL, NULL);
    assert_true(afd >= 0);
    close(lfd);
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    o.nodelay = true;
    crest_conn_t *c = NULL;
    assert_int_equal(crest_conn_adopt(loop, afd, &o, &echo, NULL, &c), 0);
    int one = 0;
    socklen_t ol = sizeof one;
    assert_int_equal(getsockopt(afd, IPPROTO_TCP, TCP_NODELAY, &one, &ol), 0);
    assert_int_equal(one, 1);
    char peer[CREST_ADDR_STRLEN];
    assert_true(crest_conn_peer(c, peer, sizeof peer) > 0);
    assert_non_null(strstr(peer, "127.0.0.1:"));
    assert_int_equal(fcntl(cfd, F_SETFL, O_NONBLOCK), 0);
    talk(loop, cfd);
    close(cfd);
    RUN_UNTIL(loop, S.closed == 1);
    assert_false(tu_fd_is_open(afd));
    tu_finish_conns(loop);
}

/* ---- listeners ---------------------------------------------------------- */

static void test_adopt_listener_tcp(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    /* As a parent (or systemd) would pass it: bound, listening, blocking,
     * inheritable. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(lfd, 16), 0);
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listener_adopt(loop, lfd, NULL, &echo, NULL, &l), 0);
    assert_int_equal(crest_listener_fd(l), lfd);
    assert_true(is_nonblock(lfd));
    assert_true(tu_fd_is_cloexec(lfd));
    crest_fd_kind_t kind;
    const char *origin = NULL;
    assert_int_equal(crest_fd_lookup(lfd, &kind, &origin, NULL), 0);
    assert_int_equal(kind, CREST_FD_LISTENER);
    assert_string_equal(origin, "crest_listener_adopt");
    assert_true(crest_listener_port(l) > 0);
    char addr[CREST_ADDR_STRLEN];
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    crest_listener_t *l2 = NULL;
    assert_int_equal(crest_listener_adopt(loop, lfd, NULL, &echo, NULL, &l2), -EEXIST);

    int cfd = tu_raw_connect(addr, 0);
    talk(loop, cfd);
    crest_listener_stats_t ls;
    crest_listener_get_stats(l, &ls);
    assert_int_equal(ls.accepted, 1);
    close(cfd);
    RUN_UNTIL(loop, S.closed == 1);
    crest_listener_close(l);
    assert_false(tu_fd_is_open(lfd));
    tu_finish_conns(loop);
}

/* A Unix listener made elsewhere: adopted, served, and its socket file is
 * left alone at close (it is not crest's). */
static void test_adopt_listener_unix(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    char path[64];
    snprintf(path, sizeof path, "/tmp/crest-adopt-%d.sock", (int)getpid());
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&un, sizeof un), 0);
    assert_int_equal(listen(lfd, 4), 0);
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listener_adopt(loop, lfd, NULL, &echo, NULL, &l), 0);
    char addr[80];
    snprintf(addr, sizeof addr, "unix:%s", path);
    int cfd = tu_raw_connect(addr, 0);
    talk(loop, cfd);
    close(cfd);
    RUN_UNTIL(loop, S.closed == 1);
    crest_listener_close(l);
    assert_false(tu_fd_is_open(lfd));
    assert_int_equal(access(path, F_OK), 0); /* not unlinked */
    unlink(path);
    tu_finish_conns(loop);
}

/* ---- errors --------------------------------------------------------------- */

struct fdstate {
    int fl, fdfl;
};

static struct fdstate fd_state(int fd) {
    return (struct fdstate){fcntl(fd, F_GETFL), fcntl(fd, F_GETFD)};
}

static void assert_unchanged(int fd, struct fdstate before) {
    struct fdstate now = fd_state(fd);
    assert_int_equal(now.fl, before.fl);
    assert_int_equal(now.fdfl, before.fdfl);
    assert_int_equal(crest_fd_lookup(fd, NULL, NULL, NULL), -EBADF); /* not recorded */
}

#define CONN_FAILS(loop, fd, rc)                                                          \
    do {                                                                                  \
        struct fdstate b_ = fd_state(fd);                                                 \
        crest_conn_t *c_ = NULL;                                                          \
        assert_int_equal(crest_conn_adopt((loop), (fd), NULL, &echo, NULL, &c_), (rc));   \
        assert_null(c_);                                                                  \
        assert_unchanged((fd), b_);                                                       \
    } while (0)

#define LISTENER_FAILS(loop, fd, rc)                                                      \
    do {                                                                                  \
        struct fdstate b_ = fd_state(fd);                                                 \
        crest_listener_t *l_ = NULL;                                                      \
        assert_int_equal(crest_listener_adopt((loop), (fd), NULL, &echo, NULL, &l_), (rc)); \
        assert_null(l_);                                                                  \
        assert_unchanged((fd), b_);                                                       \
    } while (0)

static void test_adopt_errors(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    crest_conn_t *c = NULL;
    crest_listener_t *l = NULL;

    /* -EBADF: negative, or not open. */
    assert_int_equal(crest_conn_adopt(loop, -1, NULL, &echo, NULL, &c), -EBADF);
    assert_int_equal(crest_listener_adopt(loop, -1, NULL, &echo, NULL, &l), -EBADF);
    int p[2];
    assert_int_equal(pipe(p), 0);
    int closed_fd = dup(p[0]);
    close(closed_fd);
    assert_int_equal(crest_conn_adopt(loop, closed_fd, NULL, &echo, NULL, &c), -EBADF);
    assert_int_equal(crest_listener_adopt(loop, closed_fd, NULL, &echo, NULL, &l), -EBADF);
    /* -ENOTSOCK: a pipe. */
    CONN_FAILS(loop, p[0], -ENOTSOCK);
    LISTENER_FAILS(loop, p[0], -ENOTSOCK);
    close(p[0]);
    close(p[1]);
    /* -EINVAL: not a stream socket. */
    int dg[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg), 0);
    CONN_FAILS(loop, dg[0], -EINVAL);
    LISTENER_FAILS(loop, dg[0], -EINVAL);
    close(dg[0]);
    close(dg[1]);
    /* -ENOTCONN: a TCP socket never connected; and not listening either. */
    int fresh = socket(AF_INET, SOCK_STREAM, 0);
    CONN_FAILS(loop, fresh, -ENOTCONN);
    LISTENER_FAILS(loop, fresh, -EINVAL);
    /* A listening socket is not a connection (-EINVAL); a connected one is
     * not a listener (-EINVAL). */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fresh, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fresh, 1), 0);
    CONN_FAILS(loop, fresh, -EINVAL);
    close(fresh);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    LISTENER_FAILS(loop, sv[0], -EINVAL);
    /* -EINVAL: missing arguments, a handler without on_data. */
    assert_int_equal(crest_conn_adopt(NULL, sv[0], NULL, &echo, NULL, &c), -EINVAL);
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, NULL, NULL, &c), -EINVAL);
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &echo, NULL, NULL), -EINVAL);
    crest_handler_t bad = {.on_open = on_open};
    struct fdstate b = fd_state(sv[0]);
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &bad, NULL, &c), -EINVAL);
    assert_unchanged(sv[0], b);
    /* -ESHUTDOWN: during a shutdown. */
    assert_int_equal(crest_loop_shutdown(loop, 0, NULL, NULL), 0);
    CONN_FAILS(loop, sv[0], -ESHUTDOWN);
    tu_spin(loop, 2); /* the shutdown is over */
    close(sv[0]);
    close(sv[1]);
    tu_finish_conns(loop);
}

/* -EEXIST for a socket crest already serves, and -ESHUTDOWN from an
 * on_close that crest_loop_destroy() runs. */
static int pair_left[2] = {-1, -1};
static int adopt_in_destroy_rc;

static void adopt_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    on_close(c, reason, err);
    crest_conn_t *again = NULL;
    adopt_in_destroy_rc = crest_conn_adopt(crest_conn_loop(c), pair_left[0], NULL, &echo, NULL,
                                           &again);
}

static void test_adopt_eexist_and_destroy(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = tu_loop();
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &echo, NULL, &l), 0);
    char addr[CREST_ADDR_STRLEN];
    crest_listener_address(l, addr, sizeof addr);
    /* The listener's socket: crest's already. */
    struct fdstate b = fd_state(crest_listener_fd(l));
    crest_listener_t *l2 = NULL;
    assert_int_equal(crest_listener_adopt(loop, crest_listener_fd(l), NULL, &echo, NULL, &l2),
                     -EEXIST);
    assert_int_equal(fd_state(crest_listener_fd(l)).fl, b.fl);
    /* An adopted connection open when the loop is destroyed: aborted, its
     * on_close runs, and an adopt from there is refused. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair_left), 0);
    crest_handler_t h = echo;
    h.on_close = adopt_on_close;
    crest_conn_t *c = NULL;
    assert_int_equal(crest_conn_adopt(loop, sv[0], NULL, &h, NULL, &c), 0);
    RUN_UNTIL(loop, S.opened == 1);
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(loop), 0);
    assert_int_equal(S.closed, 1);
    assert_int_equal(S.reason, CREST_CLOSE_SHUTDOWN);
    assert_int_equal(adopt_in_destroy_rc, -ESHUTDOWN);
    assert_false(tu_fd_is_open(sv[0]));
    assert_true(tu_fd_is_open(pair_left[0])); /* still the caller's */
    close(sv[1]);
    close(pair_left[0]);
    close(pair_left[1]);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_adopt_socketpair),
        tu_test(test_adopt_with_pending_input),
        tu_test(test_adopt_tcp),
        tu_test(test_adopt_listener_tcp),
        tu_test(test_adopt_listener_unix),
        tu_test(test_adopt_errors),
        tu_test(test_adopt_eexist_and_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
