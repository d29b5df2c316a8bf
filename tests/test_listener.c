/* Listeners under every legal call sequence (include/crest/listener.h):
 * closed from their own connections' callbacks, listening on a Unix path
 * another server holds, and calls that start something new while the loop
 * is being destroyed.  Real loopback sockets; every test ends with nothing
 * left open. */
#include "crest_test.h"

#include <sys/stat.h>
#include <sys/un.h>

struct lsrv {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    int opened, closed;
    int close_after;        /* on_open closes the listener after this many */
    bool abort_in_open;     /* on_open aborts its connection ... */
    bool close_in_close;    /* ... and on_close closes the listener */
    bool listener_closed;
    crest_conn_t *conns[8];
};

static void lsrv_close_listener(struct lsrv *s) {
    if (!s->listener_closed) {
        s->listener_closed = true;
        crest_listener_close(s->l);
    }
}

static void lsrv_on_open(crest_conn_t *c) {
    struct lsrv *s = crest_conn_handler_ctx(c);
    assert_true(s->opened < 8);
    assert_false(s->listener_closed); /* nothing accepted after the close */
    crest_conn_set_data(c, (void *)(intptr_t)s->opened);
    s->conns[s->opened++] = c;
    if (s->abort_in_open)
        crest_conn_abort(c);
    else if (s->close_after && s->opened == s->close_after)
        lsrv_close_listener(s);
}

static ssize_t lsrv_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void lsrv_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct lsrv *s = crest_conn_handler_ctx(c);
    s->conns[(intptr_t)crest_conn_get_data(c)] = NULL;
    s->closed++;
    if (s->close_in_close)
        lsrv_close_listener(s);
}

static const crest_handler_t lsrv_handler = {
    .on_open = lsrv_on_open, .on_data = lsrv_on_data, .on_close = lsrv_on_close,
};

static void lsrv_start(crest_loop_t *loop, struct lsrv *s, const char *addr) {
    memset(s, 0, sizeof *s);
    assert_int_equal(crest_listen(loop, addr, NULL, &lsrv_handler, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
}

/* A raw client's connection ends (EOF or reset) without a byte. */
static void expect_refused(crest_loop_t *loop, int fd) {
    uint8_t b;
    int end = 0;
    assert_int_equal(tu_raw_recv(loop, fd, &b, 1, &end), 0);
    assert_true(end == 1 || end == -ECONNRESET);
}

static void expect_echo(crest_loop_t *loop, int fd, const char *msg) {
    char buf[64];
    size_t len = strlen(msg);
    int end = 0;
    assert_int_equal(send(fd, msg, len, MSG_NOSIGNAL), (ssize_t)len);
    assert_int_equal(tu_raw_recv(loop, fd, buf, len, &end), len);
    assert_int_equal(end, 0);
    assert_memory_equal(buf, msg, len);
}

/* ---- crest_listener_close() during the accept loop ------------------------- */

/* "Accept two, then stop listening": four clients wait in the backlog, so
 * one accept loop meets all four; on_open closes the listener after the
 * second.  The accept loop must stop there: the listener's memory, fd and
 * endpoint must not be touched again. */
static void test_close_from_on_open(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    lsrv_start(loop, &s, "127.0.0.1:0");
    s.close_after = 2;
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.listener_closed);
    tu_spin(loop, 5);
    assert_int_equal(s.opened, 2);
    /* The two accepted ones are served; the two left in the backlog were
     * reset when the listening socket closed. */
    expect_echo(loop, fds[0], "zero");
    expect_echo(loop, fds[1], "one");
    expect_refused(loop, fds[2]);
    expect_refused(loop, fds[3]);
    assert_false(tu_log_contains("accept4 failed"));
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    RUN_UNTIL(loop, s.closed == 2);
    tu_finish_conns(loop);
}

/* The same through on_close: on_open aborts its connection, whose on_close
 * (run by the accept loop as it settles the connection) closes the
 * listener. */
static void test_close_from_on_close_of_conn_closed_in_on_open(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    lsrv_start(loop, &s, "127.0.0.1:0");
    s.abort_in_open = true;
    s.close_in_close = true;
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.listener_closed);
    tu_spin(loop, 5);
    assert_int_equal(s.opened, 1);
    assert_int_equal(s.closed, 1);
    for (int i = 0; i < 3; i++)
        expect_refused(loop, fds[i]);
    assert_false(tu_log_contains("accept4 failed"));
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    tu_finish_conns(loop);
}

/* Closed in on_open, then the loop destroyed at once (with the accepted
 * connection still open): everything is freed, nothing is left open. */
static void test_close_from_on_open_then_destroy(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    lsrv_start(loop, &s, "127.0.0.1:0");
    s.close_after = 1;
    int a = tu_raw_connect(s.addr, 0);
    int b = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.listener_closed);
    assert_int_equal(s.opened, 1);
    assert_int_equal(crest_loop_destroy(loop), 0);
    assert_int_equal(s.closed, 1); /* aborted by the destroy */
    close(a);
    close(b);
    tu_assert_nothing_open();
}

/* Closed outside the loop, from the application, before any iteration and
 * after one: the listener goes at once. */
static void test_close_outside_loop(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    lsrv_start(loop, &s, "127.0.0.1:0");
    crest_listener_close(s.l);
    lsrv_start(loop, &s, "127.0.0.1:0");
    int a = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    expect_echo(loop, a, "hi");
    crest_listener_close(s.l);
    expect_echo(loop, a, "still served");
    close(a);
    RUN_UNTIL(loop, s.closed == 1);
    tu_finish_conns(loop);
}


/* ---- nothing new starts while the loop is destroyed ------------------------ */

struct recon {
    char addr[CREST_ADDR_STRLEN];
    int opened, closed, attempts;
    int connect_rc[8], listen_rc, io_rc;
    int pipe_fd;
};

static void recon_on_open(crest_conn_t *c) {
    struct recon *r = crest_conn_handler_ctx(c);
    r->opened++;
}

static ssize_t recon_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    (void)data;
    return (ssize_t)len;
}

static void recon_io_cb(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    (void)events;
    (void)arg;
}

static const crest_handler_t recon_handler;

/* A client that reconnects when it loses its connection, as clients do;
 * bounded, so a broken teardown cannot loop forever. */
static void recon_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct recon *r = crest_conn_handler_ctx(c);
    crest_loop_t *loop = crest_conn_loop(c);
    r->closed++;
    if (r->attempts < 8) {
        crest_conn_t *n = NULL;
        r->connect_rc[r->attempts++] = crest_connect(loop, r->addr, NULL, &recon_handler, r, &n);
    }
    crest_listener_t *l = NULL;
    r->listen_rc = crest_listen(loop, "127.0.0.1:0", NULL, &recon_handler, r, &l);
    if (r->listen_rc == 0)
        crest_listener_close(l);
    crest_io_t *io = NULL;
    r->io_rc = crest_io_start(loop, r->pipe_fd, CREST_IO_READABLE, recon_io_cb, NULL, &io);
    if (r->io_rc == 0)
        crest_io_stop(io);
}

static const crest_handler_t recon_handler = {
    .on_open = recon_on_open, .on_data = recon_on_data, .on_close = recon_on_close,
};

/* Two clients whose on_close reconnects, still connected when the loop is
 * destroyed.  The second client's reconnect would get the fd number the
 * first one's close just freed, below where the teardown has got to: it
 * must be refused (-ESHUTDOWN), as must a listen and an io watcher, and
 * the destroy must leave nothing open. */
static void test_reconnect_from_on_close_during_destroy(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    static struct recon r;
    lsrv_start(loop, &s, "127.0.0.1:0");
    memset(&r, 0, sizeof r);
    strcpy(r.addr, s.addr);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    r.pipe_fd = p[0];
    crest_conn_t *a, *b;
    assert_int_equal(crest_connect(loop, r.addr, NULL, &recon_handler, &r, &a), 0);
    assert_int_equal(crest_connect(loop, r.addr, NULL, &recon_handler, &r, &b), 0);
    RUN_UNTIL(loop, r.opened == 2 && s.opened == 2);
    int rc = crest_loop_destroy(loop);
    if (rc != 0)
        tu_log_dump();
    assert_int_equal(r.closed, 2);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(r.connect_rc[0], -ESHUTDOWN);
    assert_int_equal(r.connect_rc[1], -ESHUTDOWN);
    assert_int_equal(r.listen_rc, -ESHUTDOWN);
    assert_int_equal(r.io_rc, -ESHUTDOWN);
    assert_int_equal(rc, 0);
    close(p[0]);
    close(p[1]);
    tu_assert_nothing_open();
}

/* ---- Unix socket paths ----------------------------------------------------- */

static void unix_path(char *path, size_t size, char *addr, size_t asize, const char *tag) {
    snprintf(path, size, "/tmp/crest-test-listener-%d-%s.sock", (int)getpid(), tag);
    snprintf(addr, asize, "unix:%s", path);
    unlink(path);
}

/* A second listener on the path a live one holds fails with -EADDRINUSE
 * and leaves the path alone: the first still accepts through it. */
static void test_unix_path_of_live_listener(void **state) {
    (void)state;
    char path[108], addr[128];
    unix_path(path, sizeof path, addr, sizeof addr, "live");
    crest_loop_t *loop = tu_loop();
    static struct lsrv s, s2;
    lsrv_start(loop, &s, addr);
    memset(&s2, 0, sizeof s2);
    assert_int_equal(crest_listen(loop, addr, NULL, &lsrv_handler, &s2, &s2.l), -EADDRINUSE);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    int a = tu_raw_connect(addr, 0);
    expect_echo(loop, a, "first still serves");
    close(a);
    /* (The first also saw crest's probe: a connection closed at once.) */
    RUN_UNTIL(loop, s.closed == s.opened && s.opened >= 1);
    assert_int_equal(s2.opened, 0);
    crest_listener_close(s.l);
    assert_int_equal(stat(path, &st), -1);
    tu_finish_conns(loop);
}

/* The same when the live server is not crest's, and with its backlog
 * full; a socket file no one listens on (a dead server's, or bound but not
 * listening) is replaced. */
static void test_unix_path_stale_or_foreign(void **state) {
    (void)state;
    char path[108], addr[128];
    unix_path(path, sizeof path, addr, sizeof addr, "foreign");
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;

    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(srv >= 0);
    assert_int_equal(bind(srv, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(srv, 0), 0);
    memset(&s, 0, sizeof s);
    assert_int_equal(crest_listen(loop, addr, NULL, &lsrv_handler, &s, &s.l), -EADDRINUSE);
    /* Fill its backlog (the probe's connection went into it) and ask again. */
    int fill[4], n_fill = 0;
    bool full = false;
    while (!full && n_fill < 4) {
        int f = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(f >= 0);
        fill[n_fill++] = f;
        if (connect(f, (struct sockaddr *)&sun, sizeof sun) < 0) {
            assert_int_equal(errno, EAGAIN);
            full = true;
        }
    }
    assert_true(full);
    assert_int_equal(crest_listen(loop, addr, NULL, &lsrv_handler, &s, &s.l), -EADDRINUSE);
    /* The foreign server still has its path. */
    int c = accept4(srv, NULL, NULL, SOCK_CLOEXEC);
    assert_true(c >= 0);
    close(c);
    for (int i = 0; i < n_fill; i++)
        close(fill[i]);
    /* It dies, leaving its socket file: stale, replaced. */
    close(srv);
    lsrv_start(loop, &s, addr);
    int a = tu_raw_connect(addr, 0);
    expect_echo(loop, a, "took over");
    close(a);
    RUN_UNTIL(loop, s.closed == 1);
    crest_listener_close(s.l);

    /* Bound but not listening: stale too. */
    int bound = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(bound >= 0);
    assert_int_equal(bind(bound, (struct sockaddr *)&sun, sizeof sun), 0);
    lsrv_start(loop, &s, addr);
    a = tu_raw_connect(addr, 0);
    expect_echo(loop, a, "again");
    close(a);
    close(bound);
    RUN_UNTIL(loop, s.closed == 1);
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

/* Someone removed our socket file and another server bound the path:
 * closing our listener must leave their file alone. */
static void test_close_keeps_a_path_taken_over(void **state) {
    (void)state;
    char path[108], addr[128];
    unix_path(path, sizeof path, addr, sizeof addr, "taken");
    crest_loop_t *loop = tu_loop();
    static struct lsrv s;
    lsrv_start(loop, &s, addr);
    assert_int_equal(unlink(path), 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    int other = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(other >= 0);
    assert_int_equal(bind(other, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(other, 1), 0);
    crest_listener_close(s.l);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* And it still reaches the other server. */
    int a = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(a, (struct sockaddr *)&sun, sizeof sun), 0);
    close(a);
    close(other);
    unlink(path);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_close_from_on_open),
        tu_test(test_close_from_on_close_of_conn_closed_in_on_open),
        tu_test(test_close_from_on_open_then_destroy),
        tu_test(test_close_outside_loop),
        tu_test(test_reconnect_from_on_close_during_destroy),
        tu_test(test_unix_path_of_live_listener),
        tu_test(test_unix_path_stale_or_foreign),
        tu_test(test_close_keeps_a_path_taken_over),
    };
    const char *filter = getenv("CREST_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
