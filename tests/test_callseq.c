/* Legal call sequences that once broke a connection: calls made from
 * callbacks in unusual states, and extreme option values.  Each test here
 * is the regression test of one defect of issue 11; over real loopback
 * sockets. */
#include "crest_test.h"

#include <limits.h>
#include <sys/uio.h>

struct seq {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[4];
    int opened, closed, eofs, data_calls;
    crest_close_reason_t reason[4];
    /* per-test */
    crest_conn_t *victim;
    uint64_t victim_iteration;
    bool resumed_closed;
    unsigned messages;
};

static int seq_index(crest_conn_t *c) {
    return (int)(intptr_t)crest_conn_get_data(c);
}

static void seq_on_open(crest_conn_t *c) {
    struct seq *s = crest_conn_handler_ctx(c);
    assert_true(s->opened < 4);
    crest_conn_set_data(c, (void *)(intptr_t)s->opened);
    s->conns[s->opened++] = c;
}

static void seq_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct seq *s = crest_conn_handler_ctx(c);
    s->reason[seq_index(c)] = reason;
    s->closed++;
}

static void seq_on_eof(crest_conn_t *c) {
    struct seq *s = crest_conn_handler_ctx(c);
    s->eofs++;
    crest_conn_close(c);
}

static crest_loop_t *seq_start(struct seq *s, const crest_listen_opts_t *o,
                               const crest_handler_t *h) {
    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", o, h, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
    return loop;
}

static void seq_finish(crest_loop_t *loop, struct seq *s) {
    RUN_UNTIL(loop, s->closed == s->opened);
    crest_listener_close(s->l);
    tu_finish_conns(loop);
}

static uint64_t iterations(crest_loop_t *loop) {
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    return st.iterations;
}

static void send_all(int fd, const void *p, size_t len) {
    assert_int_equal(send(fd, p, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* ---- resume of a connection closed earlier in the same iteration ---------- */

/* The first connection to get data pauses and closes itself; the second,
 * in the same epoll batch, resumes it (a proxy resuming its other side).
 * The closed connection's fd is -1 by then: it must not reach the ready
 * list. */
static ssize_t pause_close_or_resume(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct seq *s = crest_conn_handler_ctx(c);
    crest_loop_t *loop = crest_conn_loop(c);
    s->data_calls++;
    if (!s->victim) {
        crest_conn_pause(c);
        crest_conn_close(c);
        s->victim = c;
        s->victim_iteration = iterations(loop);
        return (ssize_t)len;
    }
    if (c != s->victim && s->victim_iteration == iterations(loop) && !s->resumed_closed) {
        /* Its memory is valid until this iteration ends (conn.h). */
        crest_conn_resume(s->victim);
        crest_conn_pause(s->victim);
        crest_conn_resume(s->victim);
        s->resumed_closed = true;
    }
    return (ssize_t)len;
}

static void test_resume_of_connection_closed_in_same_iteration(void **state) {
    (void)state;
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_open = seq_on_open, .on_data = pause_close_or_resume,
                         .on_close = seq_on_close};
    crest_loop_t *loop = seq_start(&s, NULL, &h);
    int a = tu_raw_connect(s.addr, 0);
    int b = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    /* More than one read's worth from each: the read that fills the loop's
     * buffer leaves the connection marked readable, so a resume would queue
     * it for another read. */
    static uint8_t big[40000];
    memset(big, 'x', sizeof big);
    send_all(a, big, sizeof big);
    send_all(b, big, sizeof big);
    RUN_UNTIL(loop, s.data_calls >= 2 && s.closed >= 1);
    tu_spin(loop, 5);
    assert_true(s.resumed_closed);
    /* The victim stayed closed: one close, and the other connection still
     * works. */
    assert_int_equal(s.closed, 1);
    close(a);
    close(b);
    seq_finish(loop, &s);
}

/* ---- timeouts of 2^31 ms and more ---------------------------------------- */

static ssize_t echo(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void huge_timeouts(uint32_t idle, uint32_t read, uint32_t write) {
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.idle_timeout_ms = idle;
    o.conn.read_timeout_ms = read;
    o.conn.write_timeout_ms = write;
    o.conn.max_input = 16;
    crest_handler_t h = {.on_open = seq_on_open, .on_data = echo, .on_eof = seq_on_eof,
                         .on_close = seq_on_close};
    struct tu_watchdog w;
    crest_loop_t *loop = seq_start(&s, &o, &h);
    tu_watchdog_arm(&w, loop, 20000);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    /* The timer pass must come back, and nothing is due for weeks. */
    for (int i = 0; i < 20; i++)
        assert_true(crest_loop_run_once(loop, 5) >= 0);
    assert_false(tu_watchdog_disarm(&w));
    assert_int_equal(s.closed, 0);
    send_all(fd, "ping", 4);
    char buf[8];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 4, &end), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(s.closed, 0);
    close(fd);
    seq_finish(loop, &s);
    assert_int_equal(s.reason[0], CREST_CLOSE_LOCAL);
}

static void test_timeouts_of_2_pow_31_ms_and_more(void **state) {
    (void)state;
    huge_timeouts(UINT32_MAX, UINT32_MAX, UINT32_MAX);
    huge_timeouts(1u << 31, 1u << 31, 1u << 31);
    huge_timeouts((1u << 31) + 1, 30u * 24 * 3600 * 1000, (1u << 31) - 1);
}

/* ---- close while connecting ----------------------------------------------- */

struct client {
    int opened, closed;
    crest_close_reason_t reason;
    int err;
};

static void client_open(crest_conn_t *c) {
    struct client *k = crest_conn_handler_ctx(c);
    k->opened++;
}

static void client_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct client *k = crest_conn_handler_ctx(c);
    k->closed++;
    k->reason = reason;
    k->err = err;
}

static ssize_t ignore(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    (void)data;
    return (ssize_t)len;
}

static struct {
    uint8_t buf[256];
    size_t len;
} received;

static ssize_t collect(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    size_t n = len < sizeof received.buf - received.len ? len : sizeof received.buf - received.len;
    memcpy(received.buf + received.len, data, n);
    received.len += n;
    return (ssize_t)len;
}

/* Output accepted while CONNECTING is delivered once the connect
 * completes, then the close proceeds (no on_open: the handler is done). */
static void test_close_while_connecting_delivers_output(void **state) {
    (void)state;
    static struct seq s;
    memset(&s, 0, sizeof s);
    memset(&received, 0, sizeof received);
    crest_handler_t h = {.on_open = seq_on_open, .on_data = collect, .on_eof = seq_on_eof,
                         .on_close = seq_on_close};
    crest_loop_t *loop = seq_start(&s, NULL, &h);
    struct client k = {0};
    crest_handler_t ch = {.on_open = client_open, .on_data = ignore, .on_close = client_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &ch, &k, &c), 0);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CONNECTING);
    assert_int_equal(crest_conn_write(c, "hello ", 6), 0);
    struct iovec iov[2] = {{(void *)"wor", 3}, {(void *)"ld", 2}};
    assert_int_equal(crest_conn_writev(c, iov, 2), 0);
    crest_conn_close(c);
    /* Closed: no more writes. */
    assert_int_equal(crest_conn_write(c, "!", 1), -ENOTCONN);
    RUN_UNTIL(loop, k.closed == 1 && s.eofs == 1);
    assert_int_equal(received.len, 11);
    assert_memory_equal(received.buf, "hello world", 11);
    assert_int_equal(k.opened, 0);
    assert_int_equal(k.reason, CREST_CLOSE_LOCAL);
    seq_finish(loop, &s);
}

/* The same, when the connect fails: the close reason says so. */
static void test_close_while_connecting_then_refused(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A port with no listener: bound, then closed. */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    assert_int_equal(bind(probe, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(probe, (struct sockaddr *)&sin, &sl), 0);
    close(probe);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sin.sin_port));
    struct client k = {0};
    crest_handler_t ch = {.on_open = client_open, .on_data = ignore, .on_close = client_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, addr, NULL, &ch, &k, &c), 0);
    if (crest_conn_state(c) == CREST_CONN_CONNECTING) {
        assert_int_equal(crest_conn_write(c, "lost", 4), 0);
        crest_conn_close(c);
    }
    RUN_UNTIL(loop, k.closed == 1);
    assert_int_equal(k.opened, 0);
    assert_int_equal(k.reason, CREST_CLOSE_CONNECT_FAILED);
    assert_int_equal(k.err, ECONNREFUSED);
    tu_finish_conns(loop);
}

/* ---- PROXY protocol: the peer leaves before its header --------------------- */

static void proxy_case(bool with_eof, const char *partial) {
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.proxy_protocol = CREST_PROXY_ANY;
    crest_handler_t h = {.on_open = seq_on_open, .on_data = echo, .on_close = seq_on_close};
    if (with_eof)
        h.on_eof = seq_on_eof;
    crest_loop_t *loop = seq_start(&s, &o, &h);
    /* A connection that never opened is counted by the loop's stats. */
    int fd = tu_raw_connect(s.addr, 0);
    if (partial)
        send_all(fd, partial, strlen(partial));
    tu_spin(loop, 3);
    close(fd);
    crest_conn_stats_t st;
    int i = 0;
    do {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        crest_loop_conn_stats(loop, &st);
    } while (st.closed == 0 && ++i < RUN_MAX_ITER);
    assert_int_equal(st.closed, 1);
    assert_int_equal(st.close_reasons[CREST_CLOSE_PROTOCOL_ERROR], 1);
    assert_int_equal(s.opened, 0);
    assert_int_equal(s.eofs, 0);
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

static void test_proxy_peer_closes_before_header(void **state) {
    (void)state;
    tu_log_capture();
    proxy_case(true, NULL);        /* a connect-only health check */
    proxy_case(false, NULL);
    proxy_case(true, "PROXY TCP4 "); /* half a header */
    assert_true(tu_log_contains("PROXY header: the peer closed after 11 bytes"));
    tu_log_release();
}

/* ---- the read timeout and pauses ------------------------------------------- */

static int pause_on_first(crest_conn_t *c, const uint8_t *msg, size_t len) {
    (void)msg;
    (void)len;
    struct seq *s = crest_conn_handler_ctx(c);
    if (s->messages++ == 0)
        crest_conn_pause(c);
    return 0;
}

/* Whole messages held back by crest_conn_pause() are not a message "started
 * but not finished": the read timeout must not close the connection. */
static void test_read_timeout_ignores_paused_whole_messages(void **state) {
    (void)state;
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.framing.kind = CREST_FRAMING_LINE;
    o.conn.read_timeout_ms = 20;
    crest_handler_t h = {.on_open = seq_on_open, .on_message = pause_on_first,
                         .on_eof = seq_on_eof, .on_close = seq_on_close};
    crest_loop_t *loop = seq_start(&s, &o, &h);
    int fd = tu_raw_connect(s.addr, 0);
    send_all(fd, "a\nb\nc\n", 6);
    RUN_UNTIL(loop, s.messages == 1);
    /* Well past the read timeout, in loop time. */
    uint64_t until = crest_loop_now(loop) + 200;
    while (crest_loop_now(loop) < until)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    assert_int_equal(s.closed, 0);
    crest_conn_resume(s.conns[0]);
    RUN_UNTIL(loop, s.messages == 3);
    assert_int_equal(s.closed, 0);
    close(fd);
    seq_finish(loop, &s);
    assert_int_equal(s.reason[0], CREST_CLOSE_LOCAL);
}

/* A peer that sends requests and never reads the replies: the write
 * timeout is what closes it, not the read timeout (its requests were
 * whole; the high-water pause held them). */
static int big_reply(crest_conn_t *c, const uint8_t *msg, size_t len) {
    (void)msg;
    (void)len;
    static uint8_t reply[64 * 1024];
    return crest_conn_write(c, reply, sizeof reply) == 0 ? 0 : -CREST_CLOSE_IO_ERROR;
}

static void test_peer_not_reading_gets_write_timeout(void **state) {
    (void)state;
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.conn.framing.kind = CREST_FRAMING_LINE;
    o.conn.read_timeout_ms = 50;
    o.conn.write_timeout_ms = 300;
    o.conn.high_water = 128 * 1024;
    o.conn.low_water = 64 * 1024;
    o.conn.sndbuf = 4096;
    crest_handler_t h = {.on_open = seq_on_open, .on_message = big_reply,
                         .on_close = seq_on_close};
    crest_loop_t *loop = seq_start(&s, &o, &h);
    int fd = tu_raw_connect(s.addr, 4096);
    static char reqs[200 * 2];
    for (size_t i = 0; i < sizeof reqs; i += 2) {
        reqs[i] = 'r';
        reqs[i + 1] = '\n';
    }
    send_all(fd, reqs, sizeof reqs);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.reason[0], CREST_CLOSE_WRITE_TIMEOUT);
    close(fd);
    seq_finish(loop, &s);
}

/* ---- writev: a length sum that overflows ------------------------------------ */

static void test_writev_length_overflow_is_refused(void **state) {
    (void)state;
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_open = seq_on_open, .on_data = echo, .on_eof = seq_on_eof,
                         .on_close = seq_on_close};
    crest_loop_t *loop = seq_start(&s, NULL, &h);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    crest_conn_t *c = s.conns[0];
    static char two[2] = "ab";
    struct iovec iov[2] = {{two, SIZE_MAX}, {two, 2}};
    assert_int_equal(crest_conn_writev(c, iov, 2), -EINVAL);
    assert_int_equal(crest_conn_writev(c, iov, -1), -EINVAL);
    assert_int_equal(crest_conn_writev(c, iov, INT_MAX), -EINVAL);
    /* Nothing was sent or broken. */
    assert_int_equal(crest_conn_state(c), CREST_CONN_OPEN);
    assert_int_equal(crest_conn_output_bytes(c), 0);
    send_all(fd, "ok", 2);
    char buf[4];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 2, &end), 2);
    assert_memory_equal(buf, "ok", 2);
    close(fd);
    seq_finish(loop, &s);
}

/* ---- extreme option values --------------------------------------------------- */

/* Push len pattern bytes through an echo connection, sending and receiving
 * in turns with the loop running; returns the bytes echoed back intact. */
static size_t echo_through(crest_loop_t *loop, int fd, size_t len) {
    static uint8_t out[4096], in[4096];
    size_t sent = 0, got = 0;
    int idle = 0;
    while (got < len && idle < RUN_MAX_ITER) {
        bool progress = false;
        if (sent < len) {
            size_t n = len - sent < sizeof out ? len - sent : sizeof out;
            tu_pattern(out, sent, n);
            ssize_t w = send(fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                sent += (size_t)w;
                progress = true;
            }
        }
        ssize_t r = recv(fd, in, sizeof in, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN))
            break;
        if (r > 0) {
            uint8_t want[4096];
            tu_pattern(want, got, (size_t)r);
            if (memcmp(in, want, (size_t)r) != 0)
                break;
            got += (size_t)r;
            progress = true;
        }
        assert_true(crest_loop_run_once(loop, progress ? 0 : 10) >= 0);
        idle = progress ? 0 : idle + 1;
    }
    return got;
}

struct opt_case {
    const char *what;
    void (*set)(crest_listen_opts_t *o);
    int rc; /* what crest_listen returns */
};

static void o_max_input_1(crest_listen_opts_t *o) { o->conn.max_input = 1; }
static void o_max_input_huge(crest_listen_opts_t *o) { o->conn.max_input = SIZE_MAX; }
static void o_budget_1(crest_listen_opts_t *o) { o->conn.read_budget = 1; }
static void o_budget_huge(crest_listen_opts_t *o) { o->conn.read_budget = SIZE_MAX; }
static void o_high_1(crest_listen_opts_t *o) { o->conn.high_water = 1; o->conn.low_water = 0; }
static void o_high_huge(crest_listen_opts_t *o) { o->conn.high_water = SIZE_MAX; o->conn.low_water = SIZE_MAX; o->conn.max_output = 0; }
static void o_high_over_cap(crest_listen_opts_t *o) { o->conn.high_water = SIZE_MAX; o->conn.low_water = SIZE_MAX; }
static void o_cap_huge(crest_listen_opts_t *o) { o->conn.max_output = SIZE_MAX; }
static void o_low_over_high(crest_listen_opts_t *o) { o->conn.high_water = 4096; o->conn.low_water = SIZE_MAX; }
static void o_timeouts_1(crest_listen_opts_t *o) { o->conn.write_timeout_ms = 1u << 31; o->conn.idle_timeout_ms = UINT32_MAX; }
static void o_sndbuf_min(crest_listen_opts_t *o) { o->conn.sndbuf = 1; o->conn.rcvbuf = 1; }
static void o_sndbuf_max(crest_listen_opts_t *o) { o->conn.sndbuf = INT32_MAX; o->conn.rcvbuf = INT32_MAX; }
static void o_sndbuf_neg(crest_listen_opts_t *o) { o->conn.sndbuf = -1; o->conn.rcvbuf = INT32_MIN; }
static void o_keepalive_bad(crest_listen_opts_t *o) { o->conn.keepalive = true; o->conn.keepalive_idle_s = -1; }
static void o_keepalive_max(crest_listen_opts_t *o) { o->conn.keepalive = true; o->conn.keepalive_idle_s = 32767; o->conn.keepalive_interval_s = 32767; o->conn.keepalive_count = 127; }
static void o_user_timeout_max(crest_listen_opts_t *o) { o->conn.user_timeout_ms = UINT32_MAX; }
static void o_backlog(crest_listen_opts_t *o) { o->backlog = INT32_MAX; o->accept_batch = UINT32_MAX; o->max_conns = UINT32_MAX; }
static void o_backlog_neg(crest_listen_opts_t *o) { o->backlog = -1; o->accept_batch = 1; }
static void o_framing_bad_kind(crest_listen_opts_t *o) { o->conn.framing.kind = (crest_framing_kind_t)99; }
static void o_length_header_3(crest_listen_opts_t *o) { o->conn.framing.kind = CREST_FRAMING_LENGTH; o->conn.framing.header_bytes = 3; }
static void o_length_max(crest_listen_opts_t *o) { o->conn.framing.kind = CREST_FRAMING_LENGTH; o->conn.framing.header_bytes = 8; o->conn.framing.max_message = SIZE_MAX; }
static void o_proxy_bad(crest_listen_opts_t *o) { o->proxy_protocol = UINT32_MAX; }

static const struct opt_case opt_cases[] = {
    {"max_input 1", o_max_input_1, 0},
    {"max_input SIZE_MAX", o_max_input_huge, -EINVAL},
    {"read_budget 1", o_budget_1, 0},
    {"read_budget SIZE_MAX", o_budget_huge, 0},
    {"high_water 1", o_high_1, 0},
    {"high_water SIZE_MAX, no output cap", o_high_huge, 0},
    {"high_water SIZE_MAX over the default max_output", o_high_over_cap, -EINVAL},
    {"max_output SIZE_MAX", o_cap_huge, -EINVAL},
    {"low_water over high_water", o_low_over_high, 0},
    {"timeouts 2^31 and UINT32_MAX", o_timeouts_1, 0},
    {"sndbuf/rcvbuf 1", o_sndbuf_min, 0},
    {"sndbuf/rcvbuf INT32_MAX", o_sndbuf_max, 0},
    {"sndbuf/rcvbuf negative", o_sndbuf_neg, 0},
    {"keepalive idle -1", o_keepalive_bad, -EINVAL},
    {"keepalive at the kernel's maxima", o_keepalive_max, 0},
    {"user_timeout UINT32_MAX", o_user_timeout_max, -EINVAL},
    {"backlog, accept_batch, max_conns at their maxima", o_backlog, 0},
    {"backlog -1, accept_batch 1", o_backlog_neg, 0},
    {"framing kind 99", o_framing_bad_kind, -EINVAL},
    {"LENGTH header of 3 bytes", o_length_header_3, -EINVAL},
    {"LENGTH max_message SIZE_MAX", o_length_max, -EINVAL},
    {"proxy_protocol UINT32_MAX", o_proxy_bad, -EINVAL},
};

/* Every option at its extremes: crest_listen() refuses what cannot work,
 * and what it accepts serves a 256 KiB echo intact. */
static void test_extreme_option_values(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof opt_cases / sizeof opt_cases[0]; i++) {
        const struct opt_case *oc = &opt_cases[i];
        static struct seq s;
        memset(&s, 0, sizeof s);
        crest_listen_opts_t o;
        crest_listen_opts_init(&o);
        oc->set(&o);
        crest_handler_t h = {.on_open = seq_on_open, .on_data = echo, .on_eof = seq_on_eof,
                             .on_close = seq_on_close};
        crest_loop_t *loop = tu_loop();
        int rc = crest_listen(loop, "127.0.0.1:0", &o, &h, &s, &s.l);
        if (rc != oc->rc)
            fail_msg("%s: crest_listen returned %d, expected %d", oc->what, rc, oc->rc);
        if (rc < 0) {
            tu_finish_conns(loop);
            continue;
        }
        assert_true(crest_listener_address(s.l, s.addr, sizeof s.addr) > 0);
        int fd = tu_raw_connect(s.addr, 0);
        size_t got = echo_through(loop, fd, 256 * 1024);
        if (got != 256 * 1024)
            fail_msg("%s: %zu of %u bytes echoed", oc->what, got, 256 * 1024);
        close(fd);
        seq_finish(loop, &s);
    }
}

/* ---- destroy from a callback; defer during destroy ----------------------------- */

static int destroy_rc = 1, defer_rc = 1;

static void destroy_from_deferred(crest_loop_t *loop, void *arg) {
    (void)arg;
    destroy_rc = crest_loop_destroy(loop);
}

static void never_runs(crest_loop_t *loop, void *arg) {
    (void)loop;
    (void)arg;
    fail_msg("a callback deferred during crest_loop_destroy() ran");
}

static void defer_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    seq_on_close(c, reason, err);
    defer_rc = crest_loop_defer(crest_conn_loop(c), never_runs, NULL);
}

static void test_destroy_from_callback_and_defer_during_destroy(void **state) {
    (void)state;
    tu_log_capture();
    static struct seq s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_open = seq_on_open, .on_data = echo, .on_close = defer_on_close};
    crest_loop_t *loop = seq_start(&s, NULL, &h);
    /* From a callback: refused, and the loop carries on. */
    assert_int_equal(crest_loop_defer(loop, destroy_from_deferred, NULL), 0);
    tu_spin(loop, 2);
    assert_int_equal(destroy_rc, -EBUSY);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    send_all(fd, "still here", 10);
    char buf[16];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, buf, 10, &end), 10);
    /* Destroyed with the connection open: its on_close defers, refused. */
    crest_listener_close(s.l);
    assert_int_equal(crest_loop_destroy(loop), 0);
    assert_int_equal(s.closed, 1);
    assert_int_equal(defer_rc, -ESHUTDOWN);
    close(fd);
    tu_log_release();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_resume_of_connection_closed_in_same_iteration),
        tu_test(test_timeouts_of_2_pow_31_ms_and_more),
        tu_test(test_close_while_connecting_delivers_output),
        tu_test(test_close_while_connecting_then_refused),
        tu_test(test_proxy_peer_closes_before_header),
        tu_test(test_read_timeout_ignores_paused_whole_messages),
        tu_test(test_peer_not_reading_gets_write_timeout),
        tu_test(test_writev_length_overflow_is_refused),
        tu_test(test_extreme_option_values),
        tu_test(test_destroy_from_callback_and_defer_during_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
