/* Output: the hard cap on queued output (max_output, output_policy), over
 * real loopback sockets, with a peer that never reads.
 *
 * The cap must hold for every writer, not only for a connection's replies
 * to its own input: a broadcast from a timer or from another connection's
 * callback, and bytes gathered inside on_data.  A refused write is refused
 * whole (-ENOBUFS); CLOSE closes the connection abortively with reason
 * OUTPUT_LIMIT and a log line, REFUSE leaves it open and delivering. */
#include "crest_test.h"

#define CAP (1024u * 1024u)
#define HIGH (256u * 1024u)
#define PIECE (64u * 1024u)
#define PIECES 1600 /* 100 MiB offered to a peer that reads nothing */

/* The pool holds at most the cap, in whole chunks (a chunk's bookkeeping
 * included), and one more partly filled. */
#define POOL_BOUND(cap) ((uint64_t)(cap) + (cap) / 16 + 2 * (16384u + 256u))

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* ---- a server whose connections are written to from elsewhere ------------ */

struct bc {
    crest_loop_t *loop;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[4];
    int nconns;
    int closed;
    crest_close_reason_t reason;
    int err;
    int fd_at_close;
    /* the broadcast */
    crest_conn_t *target;
    int accepted, refused, notconn, other;
    int first_refused_rc;
    size_t max_seen;       /* most output_bytes() seen after a write */
    size_t queued_at_refusal;
    uint64_t offset;       /* stream offset of the next accepted byte */
    bool done;
};

static uint8_t piece_buf[PIECE];

static void bc_open(crest_conn_t *c) {
    struct bc *b = crest_conn_handler_ctx(c);
    b->conns[b->nconns++] = c;
}

static ssize_t bc_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void bc_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    struct bc *b = crest_conn_handler_ctx(c);
    b->closed++;
    b->reason = r;
    b->err = e;
    b->fd_at_close = crest_conn_fd(c);
}

/* Write n pieces of the checkable pattern to b->target, counting results. */
static void broadcast(struct bc *b, int n) {
    for (int i = 0; i < n; i++) {
        tu_pattern(piece_buf, b->offset, PIECE);
        int rc = crest_conn_write(b->target, piece_buf, PIECE);
        if (rc == 0) {
            b->accepted++;
            b->offset += PIECE;
        } else if (rc == -ENOBUFS) {
            if (!b->refused++) {
                b->first_refused_rc = rc;
                b->queued_at_refusal = crest_conn_output_bytes(b->target);
            }
        } else if (rc == -ENOTCONN) {
            b->notconn++;
        } else {
            b->other++;
        }
        size_t q = crest_conn_output_bytes(b->target);
        if (q > b->max_seen)
            b->max_seen = q;
    }
}

static void bc_timer(crest_timer_t *t, void *arg) {
    (void)t;
    struct bc *b = arg;
    broadcast(b, PIECES);
    b->done = true;
}

static void bc_listen(struct bc *b, crest_output_policy_t policy) {
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.max_output = CAP;
    lo.conn.output_policy = policy;
    lo.conn.high_water = HIGH;
    lo.conn.low_water = HIGH / 4;
    lo.conn.sndbuf = 4096; /* the kernel takes little: the cap decides */
    lo.conn.linger_ms = 0;
    static const crest_handler_t h = {
        .on_open = bc_open, .on_data = bc_data, .on_close = bc_close};
    assert_int_equal(crest_listen(b->loop, "127.0.0.1:0", &lo, &h, b, &b->l), 0);
    assert_true(crest_listener_address(b->l, b->addr, sizeof b->addr) > 0);
}

/* CLOSE (the default): 1,600 writes of 64 KiB from a timer to a client that
 * never reads.  The queue and the pool stay within the cap; the write that
 * would pass it fails with -ENOBUFS, the connection closes abortively with
 * OUTPUT_LIMIT, its fd is closed, a warning names the peer, the bytes and
 * the limit; later writes say -ENOTCONN. */
static void test_cap_close_broadcast_from_timer(void **state) {
    (void)state;
    struct bc b = {.loop = tu_loop(), .fd_at_close = -2};
    long rss0 = rss_kib();
    bc_listen(&b, CREST_OUTPUT_CLOSE);
    int cfd = tu_raw_connect(b.addr, 4096);
    RUN_UNTIL(b.loop, b.nconns == 1);
    b.target = b.conns[0];
    char peer[CREST_ADDR_STRLEN];
    assert_true(crest_conn_peer(b.target, peer, sizeof peer) > 0);
    int sfd = crest_conn_fd(b.target);
    crest_timer_t *t;
    assert_int_equal(crest_timer_create(b.loop, bc_timer, &b, &t), 0);
    assert_int_equal(crest_timer_start(t, 0, 0), 0);
    RUN_UNTIL(b.loop, b.done && b.closed == 1);

    assert_int_equal(b.refused, 1);
    assert_int_equal(b.other, 0);
    assert_int_equal(b.accepted + b.refused + b.notconn, PIECES);
    assert_true(b.accepted > 0);
    assert_true(b.max_seen <= CAP);
    /* The refused write is the one that did not fit. */
    assert_true(b.queued_at_refusal + PIECE > CAP || b.queued_at_refusal == 0);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(b.loop, &bs);
    assert_true(bs.peak <= POOL_BOUND(CAP));
    assert_int_equal(bs.in_use, 0); /* the queue was dropped with the close */
    assert_int_equal(b.reason, CREST_CLOSE_OUTPUT_LIMIT);
    assert_int_equal(b.err, ENOBUFS);
    assert_int_equal(b.fd_at_close, sfd);
    assert_false(tu_fd_is_open(sfd));
    assert_true(tu_log_line_has("output limit", peer, "max_output 1048576"));
    assert_true(tu_log_line_has("bytes queued", peer, NULL));
    crest_conn_stats_t st;
    crest_loop_conn_stats(b.loop, &st);
    assert_int_equal(st.close_reasons[CREST_CLOSE_OUTPUT_LIMIT], 1);
    /* 100 MiB were offered; the process held about the cap. */
    long rss1 = rss_kib();
    if (!RUNNING_ON_VALGRIND && rss0 > 0 && rss1 > 0)
        assert_true(rss1 - rss0 < 32 * 1024);
    /* The client got an abortive close: a reset, or an end after what the
     * kernel had taken before. */
    uint8_t buf[65536];
    int end = 0;
    for (int i = 0; i < 100000 && end == 0; i++) {
        ssize_t n = recv(cfd, buf, sizeof buf, 0);
        if (n == 0)
            end = 1;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            end = -errno;
        else if (n < 0)
            assert_true(crest_loop_run_once(b.loop, 10) >= 0);
    }
    assert_true(end == -ECONNRESET || end == 1);
    close(cfd);
    crest_timer_destroy(t);
    crest_listener_close(b.l);
    tu_finish_conns(b.loop);
}

/* REFUSE: the same broadcast, made from another connection's on_data.  The
 * writes past the cap fail with -ENOBUFS and nothing else happens: the
 * connection stays open, and once its client reads it gets every byte of
 * every accepted write, in order, and nothing of the refused ones. */
static ssize_t trigger_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)d;
    struct bc *b = crest_conn_handler_ctx(c);
    if (c != b->target && !b->done) {
        broadcast(b, PIECES);
        b->done = true;
    }
    return (ssize_t)n;
}

static void test_cap_refuse_broadcast_from_other_conn(void **state) {
    (void)state;
    struct bc b = {.loop = tu_loop()};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.max_output = CAP;
    lo.conn.output_policy = CREST_OUTPUT_REFUSE;
    lo.conn.high_water = HIGH;
    lo.conn.low_water = HIGH / 4;
    lo.conn.sndbuf = 4096;
    crest_handler_t h = {.on_open = bc_open, .on_data = trigger_data, .on_close = bc_close};
    assert_int_equal(crest_listen(b.loop, "127.0.0.1:0", &lo, &h, &b, &b.l), 0);
    assert_true(crest_listener_address(b.l, b.addr, sizeof b.addr) > 0);
    int slow = tu_raw_connect(b.addr, 4096);
    RUN_UNTIL(b.loop, b.nconns == 1);
    b.target = b.conns[0];
    int other = tu_raw_connect(b.addr, 0);
    RUN_UNTIL(b.loop, b.nconns == 2);
    assert_int_equal(send(other, "x", 1, 0), 1);
    RUN_UNTIL(b.loop, b.done);

    assert_true(b.refused > 0);
    assert_int_equal(b.notconn, 0);
    assert_int_equal(b.other, 0);
    assert_int_equal(b.accepted + b.refused, PIECES);
    assert_true(b.max_seen <= CAP);
    assert_true(b.queued_at_refusal + PIECE > CAP);
    assert_int_equal(b.first_refused_rc, -ENOBUFS);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(b.loop, &bs);
    assert_true(bs.peak <= POOL_BOUND(CAP));
    assert_int_equal(b.closed, 0);
    assert_int_equal(crest_conn_state(b.target), CREST_CONN_OPEN);

    /* The client reads: every accepted byte arrives, checked against the
     * pattern, then the end the server sends after its queue. */
    uint64_t expect = b.offset;
    crest_conn_close(b.target);
    uint8_t *got = malloc((size_t)expect + 1);
    assert_non_null(got);
    int end = 0;
    size_t n = tu_raw_recv(b.loop, slow, got, (size_t)expect + 1, &end);
    assert_int_equal(end, 1);
    assert_int_equal(n, expect);
    uint8_t *want = malloc((size_t)expect);
    assert_non_null(want);
    tu_pattern(want, 0, (size_t)expect);
    assert_memory_equal(got, want, (size_t)expect);
    free(got);
    free(want);
    RUN_UNTIL(b.loop, b.closed == 1);
    assert_int_equal(b.reason, CREST_CLOSE_LOCAL);
    close(slow);
    close(other);
    crest_listener_close(b.l);
    RUN_UNTIL(b.loop, b.closed == 2);
    tu_finish_conns(b.loop);
}

/* A single write larger than max_output is refused even on an empty
 * connection (REFUSE: it stays open; the next write goes out alone). */
static void test_write_larger_than_cap(void **state) {
    (void)state;
    struct bc b = {.loop = tu_loop()};
    bc_listen(&b, CREST_OUTPUT_REFUSE);
    int cfd = tu_raw_connect(b.addr, 0);
    RUN_UNTIL(b.loop, b.nconns == 1);
    crest_conn_t *c = b.conns[0];
    uint8_t *big = calloc(1, CAP + 1);
    assert_non_null(big);
    assert_int_equal(crest_conn_write(c, big, CAP + 1), -ENOBUFS);
    struct iovec iov[2] = {{big, CAP}, {big, 1}};
    assert_int_equal(crest_conn_writev(c, iov, 2), -ENOBUFS);
    assert_int_equal(crest_conn_output_bytes(c), 0);
    free(big);
    assert_int_equal(crest_conn_write(c, "ok", 2), 0);
    crest_conn_close(c);
    char buf[8];
    int end = 0;
    assert_int_equal(tu_raw_recv(b.loop, cfd, buf, sizeof buf, &end), 2);
    assert_int_equal(end, 1);
    assert_memory_equal(buf, "ok", 2);
    RUN_UNTIL(b.loop, b.closed == 1);
    close(cfd);
    crest_listener_close(b.l);
    tu_finish_conns(b.loop);
}

/* ---- the gathered path: replies written inside on_data ------------------- */

struct gs {
    crest_output_policy_t policy;
    int writes, refused, after;
    size_t max_seen, queued_at_refusal;
    int closed;
    crest_close_reason_t reason;
    bool fed;
};

#define G_PIECE 1000u
#define G_CAP (64u * 1024u)

static ssize_t gs_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)d;
    struct gs *g = crest_conn_handler_ctx(c);
    if (g->fed)
        return (ssize_t)n;
    g->fed = true;
    static uint8_t piece[G_PIECE];
    /* 100 times the cap, in small replies that the loop gathers. */
    for (unsigned i = 0; i < 100 * G_CAP / G_PIECE; i++) {
        size_t before = crest_conn_output_bytes(c);
        int rc = crest_conn_write(c, piece, sizeof piece);
        if (rc == 0) {
            g->writes++;
        } else if (rc == -ENOBUFS) {
            if (!g->refused++)
                g->queued_at_refusal = before;
            assert_int_equal(crest_conn_output_bytes(c), before); /* nothing of it */
        } else {
            g->after++;
        }
        size_t q = crest_conn_output_bytes(c);
        if (q > g->max_seen)
            g->max_seen = q;
    }
    return (ssize_t)n;
}

static void gs_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)e;
    struct gs *g = crest_conn_handler_ctx(c);
    g->closed++;
    g->reason = r;
}

static void run_gathered(crest_output_policy_t policy) {
    struct gs g = {.policy = policy};
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.max_output = G_CAP;
    lo.conn.output_policy = policy;
    lo.conn.high_water = G_CAP / 2;
    lo.conn.low_water = G_CAP / 8;
    lo.conn.keep_reading = true;
    lo.conn.sndbuf = 4096;
    lo.conn.linger_ms = 0;
    crest_handler_t h = {.on_data = gs_data, .on_close = gs_close};
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, &g, &l), 0);
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    int cfd = tu_raw_connect(addr, 4096);
    assert_int_equal(send(cfd, "go", 2, 0), 2);
    RUN_UNTIL(loop, g.fed);
    assert_true(g.writes > 0);
    assert_true(g.max_seen <= G_CAP);
    assert_true(g.queued_at_refusal + G_PIECE > G_CAP);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(loop, &bs);
    assert_true(bs.peak <= POOL_BOUND(G_CAP));
    if (policy == CREST_OUTPUT_CLOSE) {
        assert_int_equal(g.refused, 1);
        assert_true(g.after > 0); /* -ENOTCONN once closing */
        RUN_UNTIL(loop, g.closed == 1);
        assert_int_equal(g.reason, CREST_CLOSE_OUTPUT_LIMIT);
        assert_true(tu_log_contains("output limit"));
    } else {
        assert_true(g.refused > 0);
        assert_int_equal(g.after, 0);
        /* Still open: what was accepted arrives once the client reads. */
        size_t expect = (size_t)g.writes * G_PIECE;
        uint8_t *buf = malloc(expect);
        assert_non_null(buf);
        int end = 0;
        assert_int_equal(tu_raw_recv(loop, cfd, buf, expect, &end), expect);
        assert_int_equal(end, 0);
        free(buf);
        assert_int_equal(g.closed, 0);
        shutdown(cfd, SHUT_WR);
        RUN_UNTIL(loop, g.closed == 1);
        assert_int_equal(g.reason, CREST_CLOSE_PEER_EOF);
    }
    close(cfd);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

static void test_cap_gathered_close(void **state) {
    (void)state;
    run_gathered(CREST_OUTPUT_CLOSE);
}

static void test_cap_gathered_refuse(void **state) {
    (void)state;
    run_gathered(CREST_OUTPUT_REFUSE);
}

/* ---- options ------------------------------------------------------------- */

static ssize_t nop_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void test_cap_options(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_handler_t h = {.on_data = nop_data};
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    assert_int_equal(o.max_output, 16u * 1024 * 1024);
    assert_int_equal(o.output_policy, CREST_OUTPUT_CLOSE);
    assert_string_equal(crest_close_reason_name(CREST_CLOSE_OUTPUT_LIMIT), "output limit");
    assert_string_equal(crest_close_reason_key(CREST_CLOSE_OUTPUT_LIMIT), "output_limit");
    assert_int_equal(CREST_CLOSE_OUTPUT_LIMIT, CREST_CLOSE_SHUTDOWN + 1);

    crest_listen_opts_t lo;
    crest_listener_t *l = NULL;
    crest_conn_t *c = NULL;
    /* Below high_water: the pause could never act before the cap. */
    crest_listen_opts_init(&lo);
    lo.conn.max_output = lo.conn.high_water - 1;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, NULL, &l), -EINVAL);
    o.max_output = o.high_water - 1;
    assert_int_equal(crest_connect(loop, "127.0.0.1:9", &o, &h, NULL, &c), -EINVAL);
    /* Past what a queue can count. */
    o.max_output = (size_t)UINT32_MAX + 1;
    assert_int_equal(crest_connect(loop, "127.0.0.1:9", &o, &h, NULL, &c), -EINVAL);
    crest_conn_opts_init(&o);
    o.output_policy = (crest_output_policy_t)7;
    assert_int_equal(crest_connect(loop, "127.0.0.1:9", &o, &h, NULL, &c), -EINVAL);
    /* Equal to high_water, and 0 (no cap), are fine. */
    crest_listen_opts_init(&lo);
    lo.conn.max_output = lo.conn.high_water;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, NULL, &l), 0);
    crest_listener_close(l);
    lo.conn.max_output = 0;
    lo.conn.high_water = SIZE_MAX;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, NULL, &l), 0);
    crest_listener_close(l);
    assert_null(c);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_cap_close_broadcast_from_timer),
        tu_test(test_cap_refuse_broadcast_from_other_conn),
        tu_test(test_write_larger_than_cap),
        tu_test(test_cap_gathered_close),
        tu_test(test_cap_gathered_refuse),
        tu_test(test_cap_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
