/* Closing a connection whose peer has not finished, and a peer that resets
 * a connection crest is not reading.
 *
 * Lingering close: close() on a socket with unread input (or input that
 * arrives after it) sends RST, and the RST throws away the reply still in
 * the kernel's send queue: a 4 MiB reply arrived cut short, an error reply
 * written before crest_conn_fail() never arrived.  A graceful close now
 * half-closes once the output is flushed, reads and discards until the
 * peer's EOF (at most linger_ms), then closes.
 *
 * Reset while paused or half-closed: EPOLLERR only set flags, nothing was
 * read or written, and the connection stayed open until the application
 * wrote.  It now closes with PEER_RESET.
 *
 * Waits are bounded by iteration counts; the one clock-driven bound is the
 * linger's (100 ms in the tests that wait for it). */
#include "crest_test.h"

#include <netinet/in.h>
#include <sys/socket.h>

#define BIG (4u << 20)

struct srv {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *c;
    int fd;                       /* the accepted connection's, at open */
    unsigned closes;
    crest_close_reason_t reason;
    int err;
    size_t delivered;             /* bytes handed to on_data / on_message */
    unsigned requests;
    size_t reply;                 /* bytes of reply per request */
    bool pause_on_open;
    unsigned eofs;
    uint8_t *buf;
};

static void on_open_rec(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->c = c;
    s->fd = crest_conn_fd(c);
    if (s->pause_on_open)
        crest_conn_pause(c);
}

static void on_close_rec(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct srv *s = crest_conn_handler_ctx(c);
    assert_ptr_equal(s->c, c);
    s->closes++;
    s->reason = reason;
    s->err = err;
}

static void on_eof_keep(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->eofs++; /* and keep the connection open */
}

/* RAW: the first bytes are a request: reply with s->reply bytes of the
 * pattern, then close.  Whatever comes after must never be delivered. */
static ssize_t on_data_reply_close(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct srv *s = crest_conn_handler_ctx(c);
    s->delivered += len;
    if (s->requests++ == 0) {
        assert_int_equal(crest_conn_write(c, s->buf, s->reply), 0);
        crest_conn_close(c);
    }
    return (ssize_t)len;
}

/* LENGTH: "R" asks for s->reply bytes; "X" is refused with an error reply
 * and crest_conn_fail(). */
static int on_message_req(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->delivered += len;
    s->requests++;
    if (len == 1 && msg[0] == 'R') {
        assert_int_equal(crest_conn_write_message(c, s->buf, s->reply), 0);
        return 0;
    }
    assert_int_equal(crest_conn_write_message(c, "frame too large", 15), 0);
    crest_conn_fail(c, CREST_CLOSE_TOO_LARGE, "frame too large: %zu bytes", len);
    return 0;
}

static void srv_start(crest_loop_t *loop, struct srv *s, const crest_conn_opts_t *co,
                      const crest_handler_t *h) {
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    if (co)
        lo.conn = *co;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, h, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
}

static uint64_t lingered(crest_loop_t *loop) {
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    return st.lingered;
}

static uint64_t lingering(crest_loop_t *loop) {
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    return st.lingering;
}

/* Run until the loop has nothing left (every linger ended), bounded. */
static void run_until_idle(crest_loop_t *loop) {
    int rc = 1;
    for (int i = 0; rc > 0 && i < RUN_MAX_ITER; i++)
        rc = crest_loop_run_once(loop, 10);
    assert_int_equal(rc, 0);
}

/* Send len bytes of junk (the peer keeps talking), running the loop while
 * the socket is full; stops early if the server reset the connection (the
 * receiving side then says what was lost). */
static void send_junk(crest_loop_t *loop, int fd, size_t len) {
    static const uint8_t junk[4096];
    int idle = 0;
    while (len > 0) {
        ssize_t n = send(fd, junk, len < sizeof junk ? len : sizeof junk, MSG_NOSIGNAL);
        if (n > 0) {
            len -= (size_t)n;
            idle = 0;
            continue;
        }
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
            return;
        assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        assert_true(++idle < RUN_MAX_ITER);
    }
}

/* Receive slowly (a small read, then an iteration) until EOF or an error;
 * returns the bytes and their hash, *end as tu_raw_recv's. */
static size_t recv_slowly(crest_loop_t *loop, int fd, uint8_t *dst, size_t cap, int *end) {
    size_t got = 0;
    for (;;) {
        uint8_t tmp[8192];
        size_t want = sizeof tmp;
        size_t n = tu_raw_recv(loop, fd, tmp, want, end);
        if (got + n <= cap)
            memcpy(dst + got, tmp, n);
        got += n;
        if (*end != 0)
            return got;
        tu_spin(loop, 1);
    }
}

/* ---- lingering close ------------------------------------------------------ */

/* (a) A request, then more bytes the server never reads; the server writes
 * 4 MiB and closes.  The client, reading only after a while and slowly,
 * gets all of it and then EOF, not ECONNRESET. */
static void test_close_with_unread_input_delivers_reply(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    memset(&s, 0, sizeof s);
    s.reply = BIG;
    s.buf = malloc(BIG);
    assert_non_null(s.buf);
    tu_pattern(s.buf, 0, BIG);
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_reply_close,
                         .on_close = on_close_rec};
    srv_start(loop, &s, NULL, &h);

    int fd = tu_raw_connect(s.addr, 64 * 1024);
    assert_int_equal(send(fd, "GET", 3, 0), 3);
    RUN_UNTIL(loop, s.requests == 1);
    send_junk(loop, fd, 1000); /* unread: the server is closing */
    tu_spin(loop, 20);         /* the client reads nothing for a while */

    uint8_t *got = malloc(BIG);
    assert_non_null(got);
    int end = 0;
    size_t n = recv_slowly(loop, fd, got, BIG, &end);
    print_message("received %zu of %u bytes, then %s\n", n, BIG,
                  end == 1 ? "EOF" : crest_strerror(end));
    assert_int_equal(end, 1);
    assert_int_equal(n, BIG);
    assert_memory_equal(got, s.buf, BIG);
    free(got);

    /* More bytes after our FIN are read and dropped too; the peer's EOF
     * ends the linger. */
    send_junk(loop, fd, 100000);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(lingered(loop), 1);
    close(fd);
    crest_listener_close(s.l);
    run_until_idle(loop);
    assert_int_equal(lingering(loop), 0);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.delivered, 3); /* never the discarded bytes */
    assert_int_equal(s.requests, 1);
    free(s.buf);
    tu_finish_conns(loop);
}

/* (b) Pipelined: a request for 2 MiB, then a frame the handler refuses
 * with an error reply and crest_conn_fail(), then an upload it never
 * reads.  Both replies arrive, then EOF. */
static void test_fail_error_reply_arrives(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    memset(&s, 0, sizeof s);
    s.reply = 2u << 20;
    s.buf = malloc(s.reply);
    assert_non_null(s.buf);
    tu_pattern(s.buf, 0, s.reply);
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.framing.kind = CREST_FRAMING_LENGTH;
    co.framing.header_bytes = 4;
    co.framing.max_message = 4u << 20;
    crest_handler_t h = {.on_open = on_open_rec, .on_message = on_message_req,
                         .on_close = on_close_rec};
    srv_start(loop, &s, &co, &h);

    int fd = tu_raw_connect(s.addr, 64 * 1024);
    static const uint8_t reqs[] = {0, 0, 0, 1, 'R', 0, 0, 0, 1, 'X', 0, 0, 0x40, 0};
    assert_int_equal(send(fd, reqs, sizeof reqs, 0), (ssize_t)sizeof reqs);
    RUN_UNTIL(loop, s.requests == 2);
    send_junk(loop, fd, 64 * 1024); /* part of the 16 KiB frame's upload, and more */
    tu_spin(loop, 20);

    size_t want = 4 + s.reply + 4 + 15;
    uint8_t *got = malloc(want);
    assert_non_null(got);
    int end = 0;
    size_t n = recv_slowly(loop, fd, got, want, &end);
    print_message("received %zu of %zu bytes, then %s\n", n, want,
                  end == 1 ? "EOF" : crest_strerror(end));
    assert_int_equal(n, want);
    assert_int_equal(end, 1);
    assert_memory_equal(got + 4, s.buf, s.reply);
    assert_memory_equal(got + 4 + s.reply + 4, "frame too large", 15);
    free(got);

    assert_int_equal(s.closes, 1);
    assert_int_equal(s.reason, CREST_CLOSE_TOO_LARGE);
    assert_true(tu_log_contains("frame too large: 1 bytes"));
    close(fd);
    crest_listener_close(s.l);
    run_until_idle(loop);
    assert_int_equal(s.requests, 2);
    assert_int_equal(s.delivered, 2);
    free(s.buf);
    tu_finish_conns(loop);
}

/* crest_conn_close_nolinger(): "bye" and a close.  With the request
 * consumed whole and nothing more sent, the socket closes at once (no
 * linger, its fd gone when on_close has run); the client gets the reply,
 * then EOF.  With input left unconsumed, it lingers as crest_conn_close(). */
static size_t nolinger_consume;

static ssize_t on_data_reply_nolinger(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct srv *s = crest_conn_handler_ctx(c);
    s->delivered += len;
    s->requests++;
    assert_int_equal(crest_conn_write(c, "bye", 3), 0);
    crest_conn_close_nolinger(c);
    return (ssize_t)(nolinger_consume && nolinger_consume < len ? nolinger_consume : len);
}

static void nolinger_round(size_t consume, uint64_t want_lingered) {
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count();
    static struct srv s;
    memset(&s, 0, sizeof s);
    nolinger_consume = consume;
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.linger_ms = 100;
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_reply_nolinger,
                         .on_close = on_close_rec};
    srv_start(loop, &s, &co, &h);
    int fd = tu_raw_connect(s.addr, 0);
    assert_int_equal(send(fd, "hi!!", 4, 0), 4);
    RUN_UNTIL(loop, s.closes == 1);
    crest_listener_close(s.l);
    assert_int_equal(s.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(lingered(loop), want_lingered);
    /* no linger: the socket is closed already; a linger holds it */
    assert_int_equal(crest_fd_open_count(), base + want_lingered);
    char buf[8];
    int end = 0;
    assert_int_equal(tu_raw_recv(loop, fd, buf, sizeof buf, &end), 3);
    assert_int_equal(end, 1); /* EOF, not a reset */
    assert_memory_equal(buf, "bye", 3);
    close(fd);
    run_until_idle(loop);
    assert_int_equal(lingering(loop), 0);
    assert_int_equal(crest_fd_open_count(), base);
    assert_int_equal(s.requests, 1);
    tu_finish_conns(loop);
}

static void test_close_nolinger(void **state) {
    (void)state;
    nolinger_round(0, 0); /* all consumed: closed at once */
    nolinger_round(2, 1); /* "!!" left buffered: it lingers */
}

/* (c) A peer that never closes: the linger ends after linger_ms, the fd is
 * closed, and crest_loop_run() returns. */
static void test_linger_bounded_when_peer_never_closes(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count(); /* the loop's own */
    static struct srv s;
    memset(&s, 0, sizeof s);
    static uint8_t bye[] = "bye";
    s.reply = 3;
    s.buf = bye;
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    assert_int_equal(co.linger_ms, 5000); /* the default */
    co.linger_ms = 100;
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_reply_close,
                         .on_close = on_close_rec};
    srv_start(loop, &s, &co, &h);

    int fd = tu_raw_connect(s.addr, 0);
    assert_int_equal(send(fd, "hi", 2, 0), 2);
    RUN_UNTIL(loop, s.closes == 1);
    crest_listener_close(s.l);
    /* on_close has run; the socket lingers, half-closed */
    assert_int_equal(lingered(loop), 1);
    assert_int_equal(lingering(loop), 1);
    assert_int_equal(crest_fd_open_count(), base + 1);
    char buf[8];
    int end = 0;
    assert_int_equal(tu_raw_recv(loop, fd, buf, sizeof buf, &end), 3);
    assert_int_equal(end, 1); /* our FIN */
    assert_memory_equal(buf, "bye", 3);

    /* The client neither sends nor closes: only the bound ends it. */
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(crest_fd_open_count(), base);
    assert_int_equal(lingering(loop), 0);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.reason, CREST_CLOSE_LOCAL);
    close(fd);
    tu_finish_conns(loop);
}

/* (d) Destroying the loop during a linger closes the socket, quietly. */
static void test_loop_destroy_during_linger(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count(); /* the loop's own */
    static struct srv s;
    memset(&s, 0, sizeof s);
    static uint8_t bye[] = "bye";
    s.reply = 3;
    s.buf = bye;
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_reply_close,
                         .on_close = on_close_rec};
    srv_start(loop, &s, NULL, &h);
    int fd = tu_raw_connect(s.addr, 0);
    assert_int_equal(send(fd, "hi", 2, 0), 2);
    RUN_UNTIL(loop, s.closes == 1);
    crest_listener_close(s.l);
    assert_int_equal(lingered(loop), 1);
    assert_int_equal(crest_fd_open_count(), base + 1);
    close(fd);
    unsigned warnings = tu_log.warnings;
    tu_finish_conns(loop); /* destroys the loop: nothing may be left open */
    assert_int_equal(s.closes, 1);
    assert_int_equal(tu_log.warnings, warnings);
}

/* A peer that closed first needs no linger: its EOF was read. */
static void test_no_linger_after_peer_eof(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count(); /* the loop's own */
    static struct srv s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_reply_close,
                         .on_close = on_close_rec};
    static uint8_t bye[] = "bye";
    s.reply = 3;
    s.buf = bye;
    srv_start(loop, &s, NULL, &h);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.c != NULL);
    close(fd);
    RUN_UNTIL(loop, s.closes == 1);
    assert_int_equal(s.reason, CREST_CLOSE_PEER_EOF);
    assert_int_equal(lingered(loop), 0);
    assert_int_equal(crest_fd_open_count(), base + 2); /* the listener and its spare */
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

/* ---- a reset the connection is not reading for ----------------------------- */

static void reset_client(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

static ssize_t on_data_keep(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    struct srv *s = crest_conn_handler_ctx(c);
    s->delivered += len;
    return (ssize_t)len;
}

/* Paused by the handler, with input waiting: an RST closes it
 * (PEER_RESET), the application need not write to find out. */
static void test_reset_while_paused_closes(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count(); /* the loop's own */
    static struct srv s;
    memset(&s, 0, sizeof s);
    s.pause_on_open = true;
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_keep,
                         .on_close = on_close_rec};
    srv_start(loop, &s, NULL, &h);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.c != NULL);
    assert_int_equal(send(fd, "held back", 9, 0), 9);
    tu_spin(loop, 5);
    assert_int_equal(s.delivered, 0);
    reset_client(fd);
    for (int i = 0; i < 50 && s.closes == 0; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    print_message("paused: %s after the RST\n",
                  s.closes ? crest_close_reason_name(s.reason) : "still open");
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.reason, CREST_CLOSE_PEER_RESET);
    assert_int_equal(s.err, ECONNRESET);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(lingered(loop), 0);
    assert_int_equal(crest_fd_open_count(), base + 2); /* the listener and its spare */
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

/* Half-closed (on_eof keeps it open): an RST closes it. */
static void test_reset_while_half_closed_closes(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint64_t base = crest_fd_open_count(); /* the loop's own */
    static struct srv s;
    memset(&s, 0, sizeof s);
    crest_handler_t h = {.on_open = on_open_rec, .on_data = on_data_keep, .on_eof = on_eof_keep,
                         .on_close = on_close_rec};
    srv_start(loop, &s, NULL, &h);
    int fd = tu_raw_connect(s.addr, 0);
    assert_int_equal(send(fd, "x", 1, 0), 1);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    RUN_UNTIL(loop, s.eofs == 1);
    assert_int_equal(crest_conn_state(s.c), CREST_CONN_HALF_CLOSED);
    reset_client(fd);
    for (int i = 0; i < 50 && s.closes == 0; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    print_message("half-closed: %s after the RST\n",
                  s.closes ? crest_close_reason_name(s.reason) : "still open");
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.reason, CREST_CLOSE_PEER_RESET);
    assert_int_equal(crest_fd_open_count(), base + 2);
    crest_listener_close(s.l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_close_with_unread_input_delivers_reply),
        tu_test(test_fail_error_reply_arrives),
        tu_test(test_linger_bounded_when_peer_never_closes),
        tu_test(test_close_nolinger),
        tu_test(test_loop_destroy_during_linger),
        tu_test(test_no_linger_after_peer_eof),
        tu_test(test_reset_while_paused_closes),
        tu_test(test_reset_while_half_closed_closes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
