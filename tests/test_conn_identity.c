/* A connection's identity and its own counters (conn.h): crest_conn_id(),
 * crest_conn_local(), crest_conn_get_info(), crest_loop_foreach_conn(),
 * over real loopback sockets (127.0.0.1, ::1, a Unix path).
 *
 * Each test runs a crest server and raw client sockets (or crest clients)
 * on one loop in the test's thread; waits are bounded iteration counts;
 * every test ends with every connection closed, no buffer in use and
 * nothing left open. */
#include "crest_test.h"

#include <sys/stat.h>
#include <sys/un.h>

/* ---- a recording server ------------------------------------------------- */

#define MAXC 64

struct srv {
    crest_loop_t *loop;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[MAXC]; /* accept order; NULL once closed */
    crest_conn_info_t last[MAXC]; /* info taken in on_close */
    char local_in_close[MAXC][CREST_ADDR_STRLEN];
    int opened, closed;
    crest_close_reason_t why[MAXC];
};

static int idx(crest_conn_t *c) {
    return (int)(intptr_t)crest_conn_get_data(c);
}

static void s_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    assert_true(s->opened < MAXC);
    crest_conn_set_data(c, (void *)(intptr_t)s->opened);
    s->conns[s->opened++] = c;
}

static void s_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct srv *s = crest_conn_handler_ctx(c);
    int i = idx(c);
    crest_conn_get_info(c, &s->last[i]);
    /* The socket is still open inside on_close. */
    assert_true(crest_conn_local(c, s->local_in_close[i], CREST_ADDR_STRLEN) > 0);
    s->conns[i] = NULL;
    s->why[i] = reason;
    s->closed++;
}

static ssize_t s_echo(crest_conn_t *c, const uint8_t *d, size_t n) {
    assert_int_equal(crest_conn_write(c, d, n), 0);
    return (ssize_t)n;
}

static int s_echo_msg(crest_conn_t *c, const uint8_t *m, size_t n) {
    assert_int_equal(crest_conn_write_message(c, m, n), 0);
    return 0;
}

static const crest_handler_t raw_echo = {.on_open = s_open, .on_data = s_echo, .on_close = s_close};
static const crest_handler_t msg_echo = {
    .on_open = s_open, .on_message = s_echo_msg, .on_close = s_close};

static void srv_start(crest_loop_t *loop, struct srv *s, const char *addr,
                      const crest_listen_opts_t *o, const crest_handler_t *h) {
    memset(s, 0, sizeof *s);
    s->loop = loop;
    assert_int_equal(crest_listen(loop, addr, o, h, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
}

static void srv_stop(struct srv *s) {
    crest_listener_close(s->l);
    s->l = NULL;
}

/* Close a raw client and run until the server has closed its side. */
static void client_done(struct srv *s, int fd, int expect_closed) {
    close(fd);
    RUN_UNTIL(s->loop, s->closed >= expect_closed);
}

/* ---- ids ------------------------------------------------------------------ */

/* A closed connection's fd is reused by the next one; its id is not. */
static void test_id_unique_across_reused_fd(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo);
    uint64_t prev_id = 0;
    int prev_fd = -1;
    for (int i = 0; i < 5; i++) {
        int fd = tu_raw_connect(s.addr, 0);
        RUN_UNTIL(loop, s.opened == i + 1);
        crest_conn_t *c = s.conns[i];
        uint64_t id = crest_conn_id(c);
        int sfd = crest_conn_fd(c);
        assert_true(id >= 1);
        if (i > 0) {
            assert_true(id > prev_id);
            assert_int_equal(sfd, prev_fd); /* the kernel hands out the lowest free fd */
        }
        crest_conn_info_t info;
        crest_conn_get_info(c, &info);
        assert_int_equal(info.id, id);
        assert_int_equal(info.fd, sfd);
        client_done(&s, fd, i + 1);
        /* on_close saw the same id */
        assert_int_equal(s.last[i].id, id);
        assert_int_equal(s.last[i].state, CREST_CONN_CLOSED);
        prev_id = id;
        prev_fd = sfd;
        tu_spin(loop, 2); /* the closed connection is freed: its fd is free */
    }
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* Ids are unique across loops running in different threads at once. */
#define TH_CONNS 40

struct th {
    pthread_t t;
    uint64_t ids[TH_CONNS];
};

static void th_open(crest_conn_t *c) {
    struct th *t = crest_conn_handler_ctx(c);
    int n = (int)(intptr_t)crest_loop_get_data(crest_conn_loop(c));
    t->ids[n] = crest_conn_id(c);
    crest_loop_set_data(crest_conn_loop(c), (void *)(intptr_t)(n + 1));
    crest_conn_close(c);
}

static ssize_t th_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void *th_main(void *arg) {
    struct th *t = arg;
    static const crest_handler_t h = {.on_open = th_open, .on_data = th_data};
    crest_loop_t *loop = NULL;
    if (crest_loop_create(&loop) < 0)
        return NULL;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    if (crest_listen(loop, "127.0.0.1:0", NULL, &h, t, &l) < 0)
        abort();
    crest_listener_address(l, addr, sizeof addr);
    crest_addr_t a;
    crest_addr_parse(addr, &a);
    for (int i = 0; i < TH_CONNS; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a.ss, a.len) < 0)
            abort();
        for (int k = 0; k < 3000 && (int)(intptr_t)crest_loop_get_data(loop) <= i; k++)
            crest_loop_run_once(loop, 10);
        close(fd);
    }
    crest_listener_close(l);
    crest_loop_close_all(loop, true);
    for (int k = 0; k < 10; k++)
        crest_loop_run_once(loop, 0);
    crest_loop_destroy(loop);
    return NULL;
}

static void test_id_unique_across_threads(void **state) {
    (void)state;
    struct th th[2];
    memset(th, 0, sizeof th);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i].t, NULL, th_main, &th[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i].t, NULL);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < TH_CONNS; k++) {
            assert_true(th[i].ids[k] >= 1);
            if (k > 0)
                assert_true(th[i].ids[k] > th[i].ids[k - 1]); /* increasing per loop */
            for (int j = 0; j < TH_CONNS; j++)
                assert_true(th[i].ids[k] != th[1 - i].ids[j]);
        }
    tu_assert_nothing_open();
}

/* ---- counters ------------------------------------------------------------- */

static void expect_counters(crest_conn_t *c, uint64_t in, uint64_t out, uint64_t msgs) {
    crest_conn_info_t i;
    crest_conn_get_info(c, &i);
    assert_int_equal(i.bytes_in, in);
    assert_int_equal(i.bytes_out, out);
    assert_int_equal(i.messages_in, msgs);
}

/* RAW echo (replies gathered in on_data): bytes in and out exact; a raw
 * connection counts no messages; the loop's totals are the sum. */
static void test_counters_raw_gathered(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo);
    int a = tu_raw_connect(s.addr, 0), b = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    expect_counters(s.conns[0], 0, 0, 0);
    uint8_t buf[50000], back[50000];
    tu_pattern(buf, 1, sizeof buf);
    size_t total_a = 0;
    for (int round = 1; round <= 3; round++) {
        size_t n = (size_t)round * 7000;
        tu_raw_send_all(loop, a, buf, n);
        int end;
        assert_int_equal(tu_raw_recv(loop, a, back, n, &end), n);
        assert_memory_equal(back, buf, n);
        total_a += n;
    }
    tu_raw_send_all(loop, b, buf, 10);
    int end;
    assert_int_equal(tu_raw_recv(loop, b, back, 10, &end), 10);
    expect_counters(s.conns[0], total_a, total_a, 0);
    expect_counters(s.conns[1], 10, 10, 0);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.bytes_in, total_a + 10);
    assert_int_equal(st.bytes_out, total_a + 10);

    crest_conn_info_t i;
    crest_conn_get_info(s.conns[0], &i);
    assert_int_equal(i.state, CREST_CONN_OPEN);
    assert_int_equal(i.framing, CREST_FRAMING_RAW);
    assert_int_equal(i.output_bytes, 0);
    assert_int_equal(i.input_bytes, 0);
    assert_false(i.reading_paused);
    assert_true(i.created_ns > 0 && i.created_ns <= crest_loop_now_ns(loop));
    assert_int_equal(i.age_ns, crest_loop_now_ns(loop) - i.created_ns);

    client_done(&s, a, 1);
    client_done(&s, b, 2);
    /* on_close's view: the final counts, nothing buffered */
    assert_int_equal(s.last[0].bytes_in, total_a);
    assert_int_equal(s.last[0].bytes_out, total_a);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* LINE and LENGTH echo: one message counted per on_message, bytes with
 * their framing; a partial message counts as input_bytes until it ends. */
static void test_counters_framed(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo);
    int fd = tu_raw_connect(s.addr, 0);
    const char *lines = "one\ntwo\r\nthree\n\nfive\n";
    size_t len = strlen(lines);
    tu_raw_send_all(loop, fd, lines, len);
    char back[64];
    int end;
    /* replies: "one\ntwo\nthree\n\nfive\n" (the \r is not part of the message) */
    assert_int_equal(tu_raw_recv(loop, fd, back, len - 1, &end), len - 1);
    expect_counters(s.conns[0], len, len - 1, 5);
    /* a partial line: read, not consumed, not a message yet */
    tu_raw_send_all(loop, fd, "par", 3);
    crest_conn_info_t i;
    for (int k = 0; k < RUN_MAX_ITER; k++) {
        crest_conn_get_info(s.conns[0], &i);
        if (i.bytes_in == len + 3)
            break;
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    }
    assert_int_equal(i.bytes_in, len + 3);
    assert_int_equal(i.input_bytes, 3);
    assert_int_equal(i.messages_in, 5);
    assert_int_equal(i.framing, CREST_FRAMING_LINE);
    tu_raw_send_all(loop, fd, "tial\n", 5);
    assert_int_equal(tu_raw_recv(loop, fd, back, 8, &end), 8);
    assert_memory_equal(back, "partial\n", 8);
    expect_counters(s.conns[0], len + 8, len - 1 + 8, 6);
    crest_conn_get_info(s.conns[0], &i);
    assert_int_equal(i.input_bytes, 0);
    client_done(&s, fd, 1);
    srv_stop(&s);

    /* LENGTH, 4-byte header: three frames in one send, one of them empty */
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LENGTH;
    lo.conn.framing.header_bytes = 4;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo);
    fd = tu_raw_connect(s.addr, 0);
    const uint8_t frames[] = {0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0, 0, 0, 0, 1, 'z'};
    tu_raw_send_all(loop, fd, frames, sizeof frames);
    uint8_t fb[sizeof frames];
    assert_int_equal(tu_raw_recv(loop, fd, fb, sizeof fb, &end), sizeof fb);
    assert_memory_equal(fb, frames, sizeof frames);
    expect_counters(s.conns[0], sizeof frames, sizeof frames, 3);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.messages_in, 6 + 3);
    client_done(&s, fd, 1);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* Output the socket does not take is queued: bytes_out counts what left,
 * output_bytes what waits, and the two add up to what was written. */
#define BIG (2u << 20)

struct pusher {
    struct srv s;
    uint8_t *blk;
};

static void push_open(crest_conn_t *c) {
    s_open(c);
    struct pusher *p = crest_conn_handler_ctx(c);
    /* Written outside on_data: direct, then queued. */
    assert_int_equal(crest_conn_write(c, p->blk, BIG), 0);
}

static ssize_t push_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void test_counters_queued_writes(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct pusher *p = calloc(1, sizeof *p);
    p->blk = malloc(BIG);
    tu_pattern(p->blk, 77, BIG);
    static const crest_handler_t h = {.on_open = push_open, .on_data = push_data, .on_close = s_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.high_water = 8u << 20; /* no pause: this test is about counting */
    lo.conn.low_water = 1u << 20;
    lo.conn.sndbuf = 4096; /* the kernel takes little at once */
    srv_start(loop, &p->s, "127.0.0.1:0", &lo, &h);
    int fd = tu_raw_connect(p->s.addr, 4096);
    RUN_UNTIL(loop, p->s.opened == 1);
    crest_conn_t *c = p->s.conns[0];
    crest_conn_info_t i;
    crest_conn_get_info(c, &i);
    assert_true(i.output_bytes > 0); /* the client has not read: queued */
    assert_int_equal(i.bytes_out + i.output_bytes, BIG);
    assert_int_equal(i.output_bytes, crest_conn_output_bytes(c));
    uint8_t *back = malloc(BIG);
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, back, BIG, &end), BIG);
    assert_memory_equal(back, p->blk, BIG);
    RUN_UNTIL(loop, crest_conn_output_bytes(c) == 0);
    expect_counters(c, 0, BIG, 0);
    /* and the client's few bytes, counted in */
    tu_raw_send_all(loop, fd, "hello", 5);
    for (int k = 0; k < RUN_MAX_ITER; k++) {
        crest_conn_get_info(c, &i);
        if (i.bytes_in == 5)
            break;
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    }
    expect_counters(c, 5, BIG, 0);
    client_done(&p->s, fd, 1);
    srv_stop(&p->s);
    free(back);
    free(p->blk);
    free(p);
    tu_finish_conns(loop);
}

/* A crest client: its direct writes and the replies it reads. */
struct cli {
    bool open, closed;
    uint64_t got;
};

static void cli_open(crest_conn_t *c) {
    struct cli *k = crest_conn_handler_ctx(c);
    k->open = true;
    assert_int_equal(crest_conn_write(c, "0123456789", 10), 0);
}

static ssize_t cli_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)d;
    struct cli *k = crest_conn_handler_ctx(c);
    k->got += n;
    return (ssize_t)n;
}

static void cli_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct cli *k = crest_conn_handler_ctx(c);
    k->closed = true;
}

static void test_counters_client_and_info_flags(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo);
    struct cli k = {0};
    static const crest_handler_t ch = {.on_open = cli_open, .on_data = cli_data, .on_close = cli_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &ch, &k, &c), 0);
    crest_conn_info_t i;
    crest_conn_get_info(c, &i);
    assert_int_equal(i.state, CREST_CONN_CONNECTING);
    RUN_UNTIL(loop, k.got == 10);
    expect_counters(c, 10, 10, 0);
    expect_counters(s.conns[0], 10, 10, 0);
    /* ids: the server's connection was accepted after the client was made */
    assert_true(crest_conn_id(s.conns[0]) > crest_conn_id(c));

    crest_conn_pause(c);
    crest_conn_cork(c);
    crest_conn_get_info(c, &i);
    assert_true(i.reading_paused && i.paused_by_handler && i.corked);
    assert_false(i.above_high_water);
    crest_conn_resume(c);
    assert_int_equal(crest_conn_uncork(c), 0);
    assert_int_equal(crest_conn_shutdown(c), 0);
    crest_conn_get_info(c, &i);
    assert_false(i.reading_paused || i.paused_by_handler || i.corked);
    assert_true(i.write_shut_down);
    assert_false(i.peer_shut_down);
    /* the server sees the EOF and closes (no on_eof): the client sees its */
    RUN_UNTIL(loop, k.closed && s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- local address -------------------------------------------------------- */

struct loc {
    struct srv s;
    char cli_local[CREST_ADDR_STRLEN], cli_peer[CREST_ADDR_STRLEN];
    bool open;
};

static void loc_open(crest_conn_t *c) {
    struct loc *l = crest_conn_handler_ctx(c);
    assert_true(crest_conn_local(c, l->cli_local, sizeof l->cli_local) > 0);
    assert_true(crest_conn_peer(c, l->cli_peer, sizeof l->cli_peer) > 0);
    l->open = true;
}

static ssize_t loc_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static bool local_case(const char *listen_addr) {
    crest_loop_t *loop = tu_loop();
    struct loc *l = calloc(1, sizeof *l);
    memset(&l->s, 0, sizeof l->s);
    l->s.loop = loop;
    int rc = crest_listen(loop, listen_addr, NULL, &raw_echo, &l->s, &l->s.l);
    if (rc < 0) {
        free(l);
        tu_destroy_loop(loop);
        return false; /* no IPv6 here */
    }
    assert_true(crest_listener_address(l->s.l, l->s.addr, sizeof l->s.addr) > 0);
    static const crest_handler_t ch = {.on_open = loc_open, .on_data = loc_data};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, l->s.addr, NULL, &ch, l, &c), 0);
    RUN_UNTIL(loop, l->open && l->s.opened == 1);
    char srv_local[CREST_ADDR_STRLEN], srv_peer[CREST_ADDR_STRLEN];
    crest_conn_t *sc = l->s.conns[0];
    assert_true(crest_conn_local(sc, srv_local, sizeof srv_local) > 0);
    assert_true(crest_conn_peer(sc, srv_peer, sizeof srv_peer) > 0);
    /* the accepted socket's own address is the listener's */
    assert_string_equal(srv_local, l->s.addr);
    /* each end's local address is the other's peer */
    assert_string_equal(l->cli_peer, srv_local);
    assert_string_equal(l->cli_local, srv_peer);
    if (strncmp(listen_addr, "unix:", 5) == 0) {
        /* an unnamed client: "unix:" on both sides of the question */
        assert_string_equal(l->cli_local, "unix:");
        assert_true(crest_conn_id(sc) != crest_conn_id(c));
    }
    /* a short buffer: truncated like snprintf, the full length returned */
    char tiny[5];
    assert_int_equal(crest_conn_local(sc, tiny, sizeof tiny), (int)strlen(srv_local));
    assert_int_equal(strlen(tiny), 4);

    crest_conn_close(c);
    RUN_UNTIL(loop, l->s.closed == 1);
    assert_string_equal(l->s.local_in_close[0], srv_local); /* inside on_close: works */
    tu_spin(loop, 2);
    srv_stop(&l->s);
    free(l);
    tu_finish_conns(loop);
    return true;
}

static void test_local_tcp4(void **state) {
    (void)state;
    assert_true(local_case("127.0.0.1:0"));
}

static void test_local_tcp6(void **state) {
    (void)state;
    if (!local_case("[::1]:0"))
        skip();
}

static void test_local_unix(void **state) {
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "unix:/tmp/crest-identity-%d.sock", (int)getpid());
    assert_true(local_case(path));
}

/* After on_close has returned there is no socket to ask: -ENOTCONN (the
 * memory is still valid until the iteration ends).  Two connections
 * aborted together close in the same iteration; the second on_close asks
 * about the first. */
struct pair {
    crest_conn_t *c[2];
    int opened, closed;
    int rc_other;
    crest_conn_info_t other;
};

static void pair_open(crest_conn_t *c) {
    struct pair *p = crest_conn_handler_ctx(c);
    p->c[p->opened++] = c;
}

static void pair_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct pair *p = crest_conn_handler_ctx(c);
    char buf[CREST_ADDR_STRLEN];
    assert_true(crest_conn_local(c, buf, sizeof buf) > 0); /* its own: still open */
    if (p->closed++ == 1) {
        crest_conn_t *o = p->c[0] == c ? p->c[1] : p->c[0];
        p->rc_other = crest_conn_local(o, buf, sizeof buf);
        crest_conn_get_info(o, &p->other);
    }
}

static void test_local_after_close(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct pair p = {0};
    static const crest_handler_t h = {.on_open = pair_open, .on_data = s_echo, .on_close = pair_close};
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, &p, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int a = tu_raw_connect(addr, 0), b = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, p.opened == 2);
    tu_raw_send_all(loop, a, "abc", 3);
    char buf[3];
    int end;
    assert_int_equal(tu_raw_recv(loop, a, buf, 3, &end), 3);
    /* p.c[0] is a's: accepted first */
    uint64_t id_a = crest_conn_id(p.c[0]);
    crest_conn_abort(p.c[0]);
    crest_conn_abort(p.c[1]);
    /* CLOSING: the socket is still there */
    assert_true(crest_conn_local(p.c[0], buf, 0) > 0);
    RUN_UNTIL(loop, p.closed == 2);
    assert_int_equal(p.rc_other, -ENOTCONN);
    assert_int_equal(p.other.state, CREST_CONN_CLOSED);
    assert_int_equal(p.other.fd, -1);
    assert_int_equal(p.other.output_bytes, 0);
    assert_int_equal(p.other.input_bytes, 0);
    /* counters keep their last values */
    uint64_t want = p.other.id == id_a ? 3 : 0;
    assert_int_equal(p.other.bytes_in, want);
    assert_int_equal(p.other.bytes_out, want);
    close(a);
    close(b);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* ---- foreach -------------------------------------------------------------- */

struct walk {
    int visited, stop_at, ret;
    int fds[MAXC];
    crest_conn_t *close_this, *close_other;
    bool abort_other;
};

static int walk_cb(crest_conn_t *c, void *arg) {
    struct walk *w = arg;
    w->fds[w->visited++] = crest_conn_fd(c);
    assert_true(crest_conn_state(c) != CREST_CONN_CLOSED);
    if (c == w->close_this)
        crest_conn_close(c);
    if (c == w->close_this && w->close_other) {
        if (w->abort_other)
            crest_conn_abort(w->close_other);
        else
            crest_conn_close(w->close_other);
    }
    if (w->stop_at && w->visited == w->stop_at)
        return w->ret;
    return 0;
}

static void test_foreach(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo);
    int fds[6];
    for (int i = 0; i < 6; i++)
        fds[i] = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 6);

    assert_int_equal(crest_loop_foreach_conn(NULL, walk_cb, NULL), -EINVAL);
    assert_int_equal(crest_loop_foreach_conn(loop, NULL, NULL), -EINVAL);

    /* all six, in fd order */
    struct walk w = {0};
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 6);
    for (int i = 1; i < 6; i++)
        assert_true(w.fds[i] > w.fds[i - 1]);

    /* an early stop: its value comes back */
    memset(&w, 0, sizeof w);
    w.stop_at = 2;
    w.ret = 42;
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 42);
    assert_int_equal(w.visited, 2);

    /* closing the visited one and aborting a later one inside the walk:
     * both are CLOSING when their turn comes, so all six are visited, and
     * no on_close runs inside the walk */
    memset(&w, 0, sizeof w);
    w.close_this = s.conns[1];
    w.close_other = s.conns[4];
    w.abort_other = true;
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 6);
    assert_int_equal(s.closed, 0);
    RUN_UNTIL(loop, s.closed == 2);
    assert_int_equal(s.why[1], CREST_CLOSE_LOCAL);
    assert_int_equal(s.why[4], CREST_CLOSE_ABORT);

    /* the closed ones are gone from the walk (the graceful one lingers:
     * CLOSED, still in the fd table, not visited) */
    memset(&w, 0, sizeof w);
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 4);

    for (int i = 0; i < 6; i++)
        close(fds[i]);
    RUN_UNTIL(loop, s.closed == 6);
    memset(&w, 0, sizeof w);
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 0);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* Connections still CONNECTING are visited; a listener is not. */
static void test_foreach_connecting(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo);
    struct cli k = {0};
    static const crest_handler_t ch = {.on_open = cli_open, .on_data = cli_data, .on_close = cli_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &ch, &k, &c), 0);
    struct walk w = {0};
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 1);
    assert_int_equal(w.fds[0], crest_conn_fd(c));
    RUN_UNTIL(loop, k.got == 10);
    memset(&w, 0, sizeof w);
    assert_int_equal(crest_loop_foreach_conn(loop, walk_cb, &w), 0);
    assert_int_equal(w.visited, 2);
    crest_conn_close(c);
    RUN_UNTIL(loop, k.closed && s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_id_unique_across_reused_fd),
        tu_test(test_id_unique_across_threads),
        tu_test(test_counters_raw_gathered),
        tu_test(test_counters_framed),
        tu_test(test_counters_queued_writes),
        tu_test(test_counters_client_and_info_flags),
        tu_test(test_local_tcp4),
        tu_test(test_local_tcp6),
        tu_test(test_local_unix),
        tu_test(test_local_after_close),
        tu_test(test_foreach),
        tu_test(test_foreach_connecting),
    };
    const char *filter = getenv("CREST_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
