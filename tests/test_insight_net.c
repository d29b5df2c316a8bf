/* Insight, the network layer's figures (insight.h: "Accept path", "TCP
 * health", "Write side") and crest_conn_get_tcp_info(), over loopback. */
#include "crest_test.h"

#include <sys/stat.h>
#include <sys/un.h>

/* The sampler's accept-path hook (src/listener.c), called directly: the
 * test does not wait a second for the insight timer. */
void crest__listeners_sample(crest_loop_t *loop, crest_insight_t *fig);

/* ---- a server whose behaviour each test sets ----------------------------- */

struct srv {
    crest_loop_t *loop;
    crest_conn_t *conn;      /* the last one accepted, until its on_close */
    unsigned opened, closed;
    size_t send_on_open;     /* bytes written in on_open (pattern) */
    bool echo;
    bool split;              /* reply "A" now, "B" from a 1 ms timer */
    crest_timer_t *timer;
    int tcp_info_in_close;   /* crest_conn_get_tcp_info() inside on_close */
};

static void srv_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->conn = c;
    s->opened++;
    static uint8_t block[16384];
    for (size_t off = 0; off < s->send_on_open; off += sizeof block) {
        size_t n = s->send_on_open - off < sizeof block ? s->send_on_open - off : sizeof block;
        tu_pattern(block, off, n);
        assert_int_equal(crest_conn_write(c, block, n), 0);
    }
}

static void on_split_timer(crest_timer_t *t, void *arg) {
    (void)t;
    struct srv *s = arg;
    if (s->conn)
        (void)crest_conn_write(s->conn, "B", 1);
}

static ssize_t srv_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    if (s->split) {
        assert_int_equal(crest_conn_write(c, "A", 1), 0);
        assert_int_equal(crest_timer_start(s->timer, 1, 0), 0);
    } else if (s->echo) {
        assert_int_equal(crest_conn_write(c, data, len), 0);
    }
    return (ssize_t)len;
}

static void srv_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct srv *s = crest_conn_handler_ctx(c);
    crest_conn_tcp_info_t ti;
    s->tcp_info_in_close = crest_conn_get_tcp_info(c, &ti);
    if (s->conn == c)
        s->conn = NULL;
    s->closed++;
}

static const crest_handler_t srv_handler = {
    .name = "insight-net",
    .on_open = srv_open,
    .on_data = srv_data,
    .on_close = srv_close,
};

static crest_listener_t *srv_listen(struct srv *s, crest_loop_t *loop, const char *addr,
                                    const crest_listen_opts_t *o, char *where, size_t size) {
    s->loop = loop;
    assert_int_equal(crest_timer_create(loop, on_split_timer, s, &s->timer), 0);
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listen(loop, addr, o, &srv_handler, s, &l), 0);
    assert_true(crest_listener_address(l, where, size) > 0);
    return l;
}

static crest_insight_t *figures(crest_loop_t *loop) {
    static crest_insight_t fig;
    assert_int_equal(crest_loop_get_insight(loop, &fig), 0);
    return &fig;
}

static void srv_end(struct srv *s, crest_listener_t *l) {
    crest_timer_destroy(s->timer);
    crest_listener_close(l);
    tu_finish_conns(s->loop);
}

/* Read whatever the client socket has (nonblocking); returns bytes read,
 * and sets *eof at EOF or an error. */
static size_t drain(int fd, size_t max, bool *eof) {
    static uint8_t buf[65536];
    size_t got = 0;
    while (got < max) {
        size_t want = max - got < sizeof buf ? max - got : sizeof buf;
        ssize_t n = recv(fd, buf, want, 0);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            *eof = true;
        break;
    }
    return got;
}

/* (a) and (g): an echo exchange, TCP_INFO on demand, then the close. */
static void test_tcp_health_echo(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s = {.echo = true};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", NULL, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    for (int i = 0; i < 5; i++) {
        tu_raw_send_all(loop, fd, "hello", 5);
        char buf[5];
        int end;
        assert_int_equal(tu_raw_recv(loop, fd, buf, 5, &end), 5);
        assert_memory_equal(buf, "hello", 5);
    }
    /* On demand, on the open connection. */
    crest_conn_tcp_info_t ti;
    assert_int_equal(crest_conn_get_tcp_info(s.conn, &ti), 0);
    assert_true(ti.rtt_us > 0);
    assert_true(ti.snd_mss > 0);
    assert_true(ti.snd_cwnd > 0);
    assert_int_equal(ti.unsent_bytes, 0);
    assert_int_equal(ti.notsent_bytes, 0);
    assert_int_equal(crest_conn_get_tcp_info(NULL, &ti), -EINVAL);
    assert_int_equal(crest_conn_get_tcp_info(s.conn, NULL), -EINVAL);
    assert_int_equal(figures(loop)->tcp_samples, 0);

    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.tcp_info_in_close, 0); /* the socket is still open there */
    crest_insight_t *f = figures(loop);
    assert_int_equal(f->tcp_samples, 1);
    assert_int_equal(f->rtt.count, 1);
    assert_true(f->rtt.min > 0);
    assert_true(f->segs_out >= 5);
    srv_end(&s, l);
}

/* (g): -ENOTCONN once closed (a lingering connection's memory stays, so the
 * test can still name it), -EOPNOTSUPP on a Unix socket. */
static void test_tcp_info_errors(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s = {0};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", NULL, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    crest_conn_t *c = s.conn;
    crest_conn_close(c); /* the client sends no EOF: the close lingers */
    RUN_UNTIL(loop, s.closed == 1);
    crest_conn_tcp_info_t ti;
    assert_int_equal(crest_conn_state(c), CREST_CONN_CLOSED);
    assert_int_equal(crest_conn_get_tcp_info(c, &ti), -ENOTCONN);
    close(fd);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    RUN_UNTIL(loop, (crest_loop_conn_stats(loop, &st), st.lingering == 0));
    crest_timer_destroy(s.timer);
    crest_listener_close(l);

    /* Unix */
    struct srv u = {0};
    char path[64], uaddr[80];
    snprintf(path, sizeof path, "/tmp/crest-insight-net-%d.sock", (int)getpid());
    snprintf(uaddr, sizeof uaddr, "unix:%s", path);
    unlink(path);
    l = srv_listen(&u, loop, uaddr, NULL, addr, sizeof addr);
    fd = tu_raw_connect(uaddr, 0);
    RUN_UNTIL(loop, u.conn != NULL);
    assert_int_equal(crest_conn_get_tcp_info(u.conn, &ti), -EOPNOTSUPP);
    close(fd);
    RUN_UNTIL(loop, u.closed == 1);
    assert_int_equal(u.tcp_info_in_close, -EOPNOTSUPP);
    assert_int_equal(figures(loop)->tcp_samples, 1); /* the TCP one only */
    srv_end(&u, l);
}

/* (b): a client that never reads while the server writes: the peer's
 * receive window limits the sender. */
static void test_rwnd_limited(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.max_output = 64u << 20;
    o.conn.high_water = 32u << 20;
    o.conn.low_water = 1u << 20;
    struct srv s = {.send_on_open = 8u << 20};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", &o, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 4096);
    RUN_UNTIL(loop, s.conn != NULL);
    /* The window closes at once; let the kernel count time against it. */
    for (int i = 0; i < 20; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    crest_conn_tcp_info_t ti;
    assert_int_equal(crest_conn_get_tcp_info(s.conn, &ti), 0);
    assert_true(ti.rwnd_limited_us > 0);
    assert_true(ti.notsent_bytes > 0);
    crest_conn_abort(s.conn);
    RUN_UNTIL(loop, s.closed == 1);
    crest_insight_t *f = figures(loop);
    assert_int_equal(f->tcp_samples, 1);
    assert_true(f->rwnd_limited_ns > 0);
    assert_true(f->tcp_busy_ns >= f->rwnd_limited_ns);
    close(fd);
    srv_end(&s, l);
}

/* (c): a 4 KiB send buffer and large replies to a client that reads
 * slowly.  (f): the output waits for the socket, and a high-water pause
 * comes and goes. */
static void test_sndbuf_limited_and_stalls(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.sndbuf = 4096;
    o.conn.max_output = 16u << 20;
    o.conn.high_water = 256u << 10;
    o.conn.low_water = 64u << 10;
    const size_t total = 4u << 20;
    struct srv s = {.send_on_open = total};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", &o, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    size_t got = 0;
    bool eof = false;
    int idle = 0;
    /* Read slowly: at most 64 KiB per millisecond iteration. */
    while (got < total && !eof) {
        size_t n = drain(fd, 64u << 10, &eof);
        got += n;
        idle = n ? 0 : idle + 1;
        assert_true(idle < RUN_MAX_ITER);
        assert_true(crest_loop_run_once(loop, 1) >= 0);
    }
    assert_int_equal(got, total);
    crest_insight_t *f = figures(loop);
    assert_true(f->write_stalls > 0);
    assert_int_equal(f->write_stall.count, f->write_stalls);
    assert_true(f->write_stall.max > 0);
    assert_true(f->hw_pauses > 0);
    assert_int_equal(f->hw_pause.count, f->hw_pauses);
    assert_true(f->hw_pause.max > 0);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    f = figures(loop);
    assert_int_equal(f->tcp_samples, 1);
    assert_true(f->tcp_busy_ns > 0);
    /* The kernel counts send-buffer-limited time only when a transmission
     * driven by an incoming ACK empties its write queue while the writer
     * waits for room (tcp_cwnd_validate()); over loopback, where every
     * byte goes out inside send(), that rarely happens: the figure is
     * checked for consistency, not for a value (docs/latency.md). */
    assert_true(f->sndbuf_limited_ns <= f->tcp_busy_ns);
    srv_end(&s, l);
}

/* (d): replies in two parts, the second 1 ms later: with TCP_NODELAY off,
 * the kernel holds the second part back until the first is acknowledged,
 * and the sample sees it; with TCP_NODELAY on, nothing is sampled. */
static void nagle_rounds(bool nodelay, unsigned max_rounds, uint64_t *checks, uint64_t *held) {
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.nodelay = nodelay;
    struct srv s = {.split = true};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", &o, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    crest_insight_t *f = figures(loop);
    for (unsigned r = 0; r < max_rounds && f->nagle_held == 0; r++) {
        tu_raw_send_all(loop, fd, "q", 1);
        char buf[2];
        int end;
        assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
        assert_memory_equal(buf, "AB", 2);
        f = figures(loop);
    }
    *checks = f->nagle_checks;
    *held = f->nagle_held;
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_end(&s, l);
}

static void test_nagle(void **state) {
    (void)state;
    uint64_t checks, held;
    nagle_rounds(false, 200, &checks, &held);
    assert_true(checks > 0);
    assert_true(held > 0);
    nagle_rounds(true, 20, &checks, &held);
    assert_int_equal(checks, 0);
    assert_int_equal(held, 0);
}

/* crest_conn_set_nodelay(c, false) turns the sample on for one
 * connection. */
static void test_nagle_set_nodelay(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s = {.split = true};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", NULL, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    tu_raw_send_all(loop, fd, "q", 1);
    char buf[2];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
    assert_int_equal(figures(loop)->nagle_checks, 0);
    assert_int_equal(crest_conn_set_nodelay(s.conn, false), 0);
    tu_raw_send_all(loop, fd, "q", 1);
    assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
    assert_true(figures(loop)->nagle_checks > 0);
    uint64_t before = figures(loop)->nagle_checks;
    assert_int_equal(crest_conn_set_nodelay(s.conn, true), 0);
    tu_raw_send_all(loop, fd, "q", 1);
    assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
    assert_int_equal(figures(loop)->nagle_checks, before);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_end(&s, l);
}

/* (e): a backlog of 2, a loop that does not run while 10 clients connect:
 * the sample sees the queue full and the kernel's overflows; then the
 * loop accepts what was queued. */
static void test_accept_queue(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.backlog = 2;
    struct srv s = {0};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", &o, addr, sizeof addr);
    crest_addr_t a;
    assert_int_equal(crest_addr_parse(addr, &a), 0);
    enum { N = 10 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fds[i] >= 0);
        int rc = connect(fds[i], (const struct sockaddr *)&a.ss, a.len);
        assert_true(rc == 0 || errno == EINPROGRESS);
    }
    tu_sleep_ms(50); /* the handshakes, in the kernel */
    crest_insight_t *fig = calloc(1, sizeof *fig);
    assert_non_null(fig);
    crest__listeners_sample(loop, fig);
    assert_true(fig->accept_queue_len >= 1);
    assert_int_equal(fig->accept_queue_max, 2);
    assert_true(fig->accept_queue_peak >= fig->accept_queue_len);
    assert_true(fig->accept_queue_full >= 1);
    assert_true(fig->listen_overflows > 0); /* since the listener began */
    crest_listener_stats_t ls;
    crest_listener_get_stats(l, &ls);
    assert_int_equal(ls.queue_len, fig->accept_queue_len);
    assert_int_equal(ls.queue_max, 2);
    assert_true(ls.queue_peak >= ls.queue_len);
    uint32_t queued = fig->accept_queue_len;

    RUN_UNTIL(loop, s.opened >= queued);
    crest_insight_t *f = figures(loop);
    assert_true(f->accepted >= queued);
    assert_true(f->accept_wakeups >= 1);
    crest__listeners_sample(loop, fig);
    assert_int_equal(fig->accept_queue_len, 0);
    assert_true(fig->accept_queue_peak >= queued); /* the peak stays */
    crest_listener_get_stats(l, &ls);
    assert_int_equal(ls.queue_len, 0);
    assert_true(ls.queue_peak >= queued);
    free(fig);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    RUN_UNTIL(loop, s.closed == s.opened);
    srv_end(&s, l);
}

/* A refused connect: its SYN went out and an RST came back, so TCP_INFO
 * is read at the close, but no RTT was measured and none is recorded. */
static void test_connect_refused(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A port nothing listens on: bind one, learn it, close it. */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    assert_int_equal(bind(probe, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(probe, (struct sockaddr *)&sin, &sl), 0);
    close(probe);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sin.sin_port));
    struct srv s = {.loop = loop};
    crest_conn_t *c = NULL;
    assert_int_equal(crest_connect(loop, addr, NULL, &srv_handler, &s, &c), 0);
    RUN_UNTIL(loop, s.closed == 1);
    crest_insight_t *f = figures(loop);
    assert_int_equal(f->tcp_samples, 1); /* its SYN went out */
    assert_int_equal(f->rtt.count, 0);
    assert_int_equal(f->rttvar_sum_ns, 0);
    tu_finish_conns(loop);
}

/* Insight disabled: no figures, no syscalls for them. */
static void test_disabled(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t io;
    crest_insight_opts_init(&io);
    io.enabled = false;
    assert_int_equal(crest_loop_set_insight(loop, &io), 0);
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.nodelay = false;
    struct srv s = {.split = true};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = srv_listen(&s, loop, "127.0.0.1:0", &o, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.conn != NULL);
    tu_raw_send_all(loop, fd, "q", 1);
    char buf[2];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    crest_insight_t *f = figures(loop);
    assert_int_equal(f->tcp_samples, 0);
    assert_int_equal(f->nagle_checks, 0);
    assert_int_equal(f->accepted, 0);
    assert_int_equal(f->accept_wakeups, 0);
    srv_end(&s, l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_tcp_health_echo),
        tu_test(test_tcp_info_errors),
        tu_test(test_rwnd_limited),
        tu_test(test_sndbuf_limited_and_stalls),
        tu_test(test_nagle),
        tu_test(test_nagle_set_nodelay),
        tu_test(test_accept_queue),
        tu_test(test_connect_refused),
        tu_test(test_disabled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
