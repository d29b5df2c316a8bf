/* Loopback integration tests for connections and listeners
 * (include/crest/conn.h, listener.h, and the framing of codec.h on real
 * sockets).
 *
 * Every test runs its server and its clients on one loop in the test's
 * thread: crest clients, or raw sockets the test drives itself between
 * iterations.  Addresses are 127.0.0.1 (or ::1, or a Unix path) with a port
 * the kernel picks.  Waits are bounded by iteration counts, not by wall
 * time (only test_read_timeout_reset_by_progress paces its writes by the
 * clock), and every test ends the same way: every connection closed, no
 * buffer in use, the loop destroyed clean, no fd left open.
 *
 * CREST_TEST_FILTER=glob runs only the matching tests.
 *
 * The big transfers are divided by CREST_TEST_SCALE (default 1; 32 under
 * valgrind), so a native run moves the full 64 MiB. */
#include "crest_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>


/* ---- scale, data and hashes ----------------------------------------------- */

#define FNV_INIT 0xcbf29ce484222325ull

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- raw client sockets (not crest's: the test drives them) --------------- */

/* Read until EOF or error; returns 1 (EOF) or -errno, discarding data. */
static int raw_wait_end(crest_loop_t *loop, int fd) {
    uint8_t tmp[4096];
    int end = 0;
    for (;;) {
        tu_raw_recv(loop, fd, tmp, sizeof tmp, &end);
        if (end != 0)
            return end;
    }
}

/* Bytes the loop's connections have read so far. */
static uint64_t loop_bytes_in(crest_loop_t *loop) {
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    return st.bytes_in;
}

/* ---- a recording server ------------------------------------------------- */

#define MAX_SCONNS 512

struct srv {
    crest_loop_t *loop;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[MAX_SCONNS]; /* by accept order; NULL once closed */
    crest_close_reason_t why[MAX_SCONNS];
    int errs[MAX_SCONNS];
    int opened, closed, eofs;
    unsigned reasons[CREST_CLOSE_REASON_COUNT];
    uint64_t messages;
    /* per-test behaviour and records */
    void *test;
};

static int srv_index(crest_conn_t *c) {
    return (int)(intptr_t)crest_conn_get_data(c);
}

static void srv_on_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    assert_true(s->opened < MAX_SCONNS);
    assert_int_equal(crest_conn_state(c), CREST_CONN_OPEN);
    crest_conn_set_data(c, (void *)(intptr_t)s->opened);
    s->conns[s->opened++] = c;
}

static void srv_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct srv *s = crest_conn_handler_ctx(c);
    int i = srv_index(c);
    assert_ptr_equal(s->conns[i], c);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CLOSED);
    s->conns[i] = NULL;
    s->why[i] = reason;
    s->errs[i] = err;
    s->reasons[reason]++;
    s->closed++;
}

static ssize_t echo_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static int echo_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->messages++;
    assert_int_equal(crest_conn_write_message(c, msg, len), 0);
    return 0;
}

static void srv_start(crest_loop_t *loop, struct srv *s, const char *addr,
                      const crest_listen_opts_t *opts, const crest_handler_t *h) {
    memset(s, 0, sizeof *s);
    s->loop = loop;
    assert_int_equal(crest_listen(loop, addr, opts, h, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
}

static void srv_stop(struct srv *s) {
    crest_listener_close(s->l);
    s->l = NULL;
}

static const crest_handler_t raw_echo_handler = {
    .on_open = srv_on_open, .on_data = echo_on_data, .on_close = srv_on_close,
};

static const crest_handler_t msg_echo_handler = {
    .on_open = srv_on_open, .on_message = echo_on_message, .on_close = srv_on_close,
};

static void length4_opts(crest_conn_opts_t *o) {
    crest_conn_opts_init(o);
    o->framing.kind = CREST_FRAMING_LENGTH;
    o->framing.header_bytes = 4;
}

/* ---- 1. many connections, ping-pong ----------------------------------------- */

#define PP_CONNS 200
#define PP_ROUNDS 20

struct pp_client {
    crest_conn_t *c;
    int id, round;
    bool opened, closed, bad;
    crest_close_reason_t reason;
};

struct pp {
    struct pp_client cl[PP_CONNS];
    int closed;
    uint8_t buf[65536];
};

static size_t pp_len(int id, int round) {
    size_t n = (size_t)(id * 131 + round * 977) % 2000;
    if ((id + round) % 50 == 0)
        n += 30000; /* a few messages bigger than one input chunk */
    return n;
}

static uint64_t pp_seed(int id, int round) {
    return (uint64_t)id << 40 | (uint64_t)round << 24;
}

static void pp_send(struct pp *p, struct pp_client *k) {
    size_t n = pp_len(k->id, k->round);
    tu_pattern(p->buf, pp_seed(k->id, k->round), n);
    assert_int_equal(crest_conn_write_message(k->c, p->buf, n), 0);
}

static void pp_on_open(crest_conn_t *c) {
    struct pp *p = crest_conn_handler_ctx(c);
    struct pp_client *k = crest_conn_get_data(c);
    assert_ptr_equal(k->c, c);
    assert_int_equal(crest_conn_state(c), CREST_CONN_OPEN);
    k->opened = true;
    pp_send(p, k);
}

static int pp_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct pp *p = crest_conn_handler_ctx(c);
    struct pp_client *k = crest_conn_get_data(c);
    size_t n = pp_len(k->id, k->round);
    tu_pattern(p->buf, pp_seed(k->id, k->round), n);
    if (len != n || memcmp(msg, p->buf, n) != 0)
        k->bad = true;
    if (++k->round < PP_ROUNDS)
        pp_send(p, k);
    else
        crest_conn_close(c);
    return 0;
}

static void pp_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct pp *p = crest_conn_handler_ctx(c);
    struct pp_client *k = crest_conn_get_data(c);
    assert_false(k->closed);
    k->closed = true;
    k->reason = reason;
    p->closed++;
}

static void test_many_connections_ping_pong(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    struct pp *p = calloc(1, sizeof *p);
    assert_non_null(p);
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    length4_opts(&lo.conn);
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);
    assert_true(strncmp(s.addr, "127.0.0.1:", 10) == 0);
    assert_true(crest_listener_port(s.l) > 0);

    crest_conn_opts_t co;
    length4_opts(&co);
    crest_handler_t h = {.on_open = pp_on_open, .on_message = pp_on_message,
                         .on_close = pp_on_close};
    for (int i = 0; i < PP_CONNS; i++) {
        struct pp_client *k = &p->cl[i];
        k->id = i;
        assert_int_equal(crest_connect(loop, s.addr, &co, &h, p, &k->c), 0);
        assert_int_equal(crest_conn_state(k->c), CREST_CONN_CONNECTING);
        crest_conn_set_data(k->c, k);
    }
    RUN_UNTIL(loop, p->closed == PP_CONNS && s.closed == PP_CONNS);

    for (int i = 0; i < PP_CONNS; i++) {
        struct pp_client *k = &p->cl[i];
        assert_true(k->opened);
        assert_false(k->bad);
        assert_int_equal(k->round, PP_ROUNDS);
        assert_int_equal(k->reason, CREST_CLOSE_LOCAL);
    }
    assert_int_equal(s.opened, PP_CONNS);
    assert_int_equal(s.reasons[CREST_CLOSE_PEER_EOF], PP_CONNS);
    assert_int_equal(s.messages, (uint64_t)PP_CONNS * PP_ROUNDS);

    crest_listener_stats_t ls;
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.accepted, PP_CONNS);
    assert_int_equal(ls.active, 0);
    assert_int_equal(ls.refused_limit, 0);
    assert_int_equal(ls.emfile, 0);

    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.opened, 2 * PP_CONNS);
    assert_int_equal(st.closed, 2 * PP_CONNS);
    assert_int_equal(st.messages_in, 2ull * PP_CONNS * PP_ROUNDS);
    assert_int_equal(st.close_reasons[CREST_CLOSE_LOCAL], PP_CONNS);
    assert_int_equal(st.close_reasons[CREST_CLOSE_PEER_EOF], PP_CONNS);
    assert_int_equal(st.bytes_in, st.bytes_out);

    srv_stop(&s);
    free(p);
    tu_finish_conns(loop);
}

/* ---- 2. 64 MiB through an echo handler ------------------------------------ */

#define BULK_PIECE (256 * 1024)

struct bulk {
    crest_conn_t *c;
    uint64_t total, sent, rcvd;
    uint64_t window;    /* most bytes sent and not yet echoed; 0: no limit */
    bool keep_reading;  /* the client keeps reading above its high water */
    size_t high, low;   /* the client's high and low water */
    uint64_t h_tx, h_rx;
    uint64_t mismatches;
    uint8_t *piece, *expect;
    bool paused, closed;
    unsigned highs, drains;
    crest_close_reason_t reason;
    int err;
};

/* Writes while the connection's output is at or below its high water:
 * on_high_water is a notification that comes after the write that crossed
 * it (conn.h, "Backpressure"), so the writer looks at the queue itself. */
static void bulk_pump(struct bulk *b) {
    while (crest_conn_output_bytes(b->c) <= b->high && b->sent < b->total &&
           (!b->window || b->sent - b->rcvd < b->window)) {
        size_t n = BULK_PIECE;
        if (n > b->total - b->sent)
            n = (size_t)(b->total - b->sent);
        tu_pattern(b->piece, b->sent, n);
        b->h_tx = tu_fnv1a(b->h_tx, b->piece, n);
        b->sent += n;
        assert_int_equal(crest_conn_write(b->c, b->piece, n), 0);
    }
}

static void bulk_on_open(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    b->c = c;
    bulk_pump(b);
}

static ssize_t bulk_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct bulk *b = crest_conn_handler_ctx(c);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < 65536 ? len - done : 65536;
        tu_pattern(b->expect, b->rcvd, n);
        if (memcmp(b->expect, data + done, n) != 0)
            b->mismatches++;
        b->h_rx = tu_fnv1a(b->h_rx, data + done, n);
        b->rcvd += n;
        done += n;
    }
    assert_true(b->rcvd <= b->sent);
    if (b->rcvd == b->total)
        crest_conn_close(c);
    else
        bulk_pump(b); /* the window moved */
    return (ssize_t)len;
}

/* The notifications alternate, high water first (they may come after the
 * queue moved on: conn.h). */
static void bulk_on_high_water(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    assert_false(b->paused);
    b->paused = true;
    b->highs++;
}

static void bulk_on_drain(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    assert_true(b->paused);
    b->paused = false;
    b->drains++;
    bulk_pump(b);
}

static void bulk_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct bulk *b = crest_conn_handler_ctx(c);
    b->closed = true;
    b->reason = reason;
    b->err = err;
}

/* Echo b->total bytes from a crest client through a RAW echo server.
 * Returns false if the transfer stalled (nothing moved for stall_iter
 * iterations); everything is closed and checked either way. */
static bool bulk_echo(struct bulk *b, int stall_iter) {
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo_handler);
    b->h_tx = b->h_rx = FNV_INIT;
    b->piece = malloc(BULK_PIECE);
    b->expect = malloc(65536);
    assert_non_null(b->piece);
    assert_non_null(b->expect);

    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.high_water = b->high;
    co.keep_reading = b->keep_reading;
    co.low_water = b->low;
    crest_handler_t h = {.on_open = bulk_on_open, .on_data = bulk_on_data,
                         .on_high_water = bulk_on_high_water, .on_drain = bulk_on_drain,
                         .on_close = bulk_on_close};
    crest_conn_t *c = NULL;
    assert_int_equal(crest_connect(loop, s.addr, &co, &h, b, &c), 0);

    /* Bounded by progress: give up after stall_iter idle iterations. */
    uint64_t last = 0;
    int idle = 0;
    bool stalled = false;
    while (!(b->closed && s.closed == 1)) {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        uint64_t now = b->rcvd + b->sent;
        idle = now == last ? idle + 1 : 0;
        last = now;
        if (idle > stall_iter) {
            stalled = true;
            print_message("echo stalled: sent %llu, echoed %llu of %llu; client queue %zu "
                          "(paused %d), server queue %zu\n",
                          (unsigned long long)b->sent, (unsigned long long)b->rcvd,
                          (unsigned long long)b->total, crest_conn_output_bytes(c), b->paused,
                          s.conns[0] ? crest_conn_output_bytes(s.conns[0]) : 0);
            crest_loop_close_all(loop, true);
            RUN_UNTIL(loop, b->closed && s.closed == 1);
            break;
        }
    }
    if (!stalled) {
        assert_int_equal(b->sent, b->total);
        assert_int_equal(b->rcvd, b->total);
        assert_int_equal(b->mismatches, 0);
        assert_true(b->h_tx == b->h_rx);
        assert_int_equal(b->reason, CREST_CLOSE_LOCAL);
        assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);
        /* Every pause ended with a drain. */
        assert_int_equal(b->highs, b->drains);

        crest_conn_stats_t st;
        crest_loop_conn_stats(loop, &st);
        assert_true(st.bytes_in >= 2 * b->total);
        assert_int_equal(st.bytes_in, st.bytes_out);
        assert_true(st.paused >= b->highs);
    }
    crest_buf_stats_t bs;
    crest_loop_buf_stats(loop, &bs);
    /* The pool gave back what the burst took (at most 64 spare chunks). */
    assert_true(bs.allocated <= 64 * (16384 + 64));

    free(b->piece);
    free(b->expect);
    srv_stop(&s);
    tu_finish_conns(loop);
    return !stalled;
}

/* The client writes 256 KiB pieces, stops at on_high_water and goes on at
 * on_drain.  It also keeps at most 768 KiB unechoed, so that a piece more
 * stays within the server's 1 MiB high water: the server never stops
 * reading, and the transfer cannot deadlock (see the next test).  The
 * client's own high water is low (128 KiB) so that it is crossed often. */
static void test_echo_64mib_checksum(void **state) {
    (void)state;
    struct bulk b = {0};
    b.total = (64ull << 20) / tu_scale(32);
    b.window = (1 << 20) - BULK_PIECE;
    b.high = 128 * 1024;
    b.low = 32 * 1024;
    assert_true(bulk_echo(&b, RUN_MAX_ITER));
    if (tu_scale(32) == 1)
        assert_true(b.highs >= 1);
}

/* The same client with no window of its own, relying on on_high_water /
 * on_drain alone.  If both ends stopped *reading* while their own output is
 * above high water, once the client has more in flight than the kernel
 * buffers and the server's queue hold, each would wait for the other.  The
 * client sets keep_reading: its reading is what drains the server. */
static void test_echo_backpressure_without_window(void **state) {
    (void)state;
    struct bulk b = {0};
    /* Not scaled: a deadlock needs more in flight than the kernel buffers
     * hold (about 9 MB here). */
    b.total = 32ull << 20;
    b.high = 512 * 1024;
    b.low = 128 * 1024;
    b.keep_reading = true;
    assert_true(bulk_echo(&b, 200));
}

/* ---- 3. framing: split at every byte, and many frames per write ----------- */

struct msgset {
    uint8_t *store;  /* payloads back to back */
    size_t *off, *len;
    size_t n;
    uint8_t *wire;   /* the encoded stream */
    size_t wire_len;
    size_t split;    /* the first `split` wire bytes go one byte per write */
};

struct frx {
    const struct msgset *m;
    size_t next, bad, first_bad;
};

static int frx_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct frx *r = s->test;
    const struct msgset *m = r->m;
    s->messages++;
    if (r->next >= m->n || len != m->len[r->next] ||
        (len && memcmp(msg, m->store + m->off[r->next], len) != 0)) {
        if (!r->bad++)
            r->first_bad = r->next;
    }
    r->next++;
    return 0;
}

static size_t encode_header(const crest_framing_t *f, size_t len, uint8_t *out) {
    unsigned hb = f->header_bytes;
    for (unsigned i = 0; i < hb; i++) {
        unsigned shift = 8 * (f->little_endian ? i : hb - 1 - i);
        out[i] = (uint8_t)((uint64_t)len >> shift);
    }
    return hb;
}

/* n_small messages of a few bytes (written byte by byte), then n_bulk of
 * all sizes up to the limit (written in as few writes as possible). */
static void msgset_build(struct msgset *m, const crest_framing_t *f, size_t n_small,
                         size_t n_bulk) {
    bool line = f->kind == CREST_FRAMING_LINE;
    size_t max = f->max_message ? f->max_message : CREST_FRAMING_DEFAULT_MAX;
    if (!line && f->header_bytes < 8 && max > (1ull << (8 * f->header_bytes)) - 1)
        max = (size_t)((1ull << (8 * f->header_bytes)) - 1); /* what the header can carry */
    m->n = n_small + n_bulk;
    m->off = calloc(m->n, sizeof *m->off);
    m->len = calloc(m->n, sizeof *m->len);
    assert_non_null(m->off);
    assert_non_null(m->len);
    size_t total = 0;
    for (size_t i = 0; i < m->n; i++) {
        size_t n;
        if (i < n_small)
            n = (i % 7) * 5;                       /* 0..30, empty ones too */
        else if (i == n_small + n_bulk / 2)
            n = max;                               /* exactly the limit */
        else
            n = (i * 131) % (max < 4000 ? max + 1 : 4000);
        m->len[i] = n;
        m->off[i] = total;
        total += n;
    }
    m->store = malloc(total + 1);
    m->wire = malloc(total + m->n * 8 + 1);
    assert_non_null(m->store);
    assert_non_null(m->wire);
    size_t w = 0;
    for (size_t i = 0; i < m->n; i++) {
        uint8_t *p = m->store + m->off[i];
        size_t n = m->len[i];
        tu_pattern(p, (uint64_t)i << 32, n);
        if (line) {
            /* Text without '\n'; a '\r' inside some lines, never at the end
             * (it would be taken for part of a "\r\n"). */
            for (size_t j = 0; j < n; j++)
                p[j] = (uint8_t)('a' + p[j] % 26);
            if (i % 3 == 0 && n > 2)
                p[n / 2] = '\r';
        }
        if (i == n_small)
            m->split = w;
        if (!line)
            w += encode_header(f, n, m->wire + w);
        memcpy(m->wire + w, p, n);
        w += n;
        if (line) {
            if (i % 2)
                m->wire[w++] = '\r';
            m->wire[w++] = '\n';
        }
    }
    m->wire_len = w;
}

static void msgset_free(struct msgset *m) {
    free(m->store);
    free(m->wire);
    free(m->off);
    free(m->len);
}

static void framing_case(const crest_framing_t *f, size_t n_bulk) {
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing = *f;
    crest_handler_t h = {.on_open = srv_on_open, .on_message = frx_on_message,
                         .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", &lo, &h);
    struct msgset m = {0};
    msgset_build(&m, f, 24, n_bulk);
    struct frx r = {.m = &m};
    s.test = &r;

    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);

    /* One byte per write, and the server reads each before the next is
     * sent: every frame is split at every byte boundary. */
    for (size_t i = 0; i < m.split; i++) {
        assert_int_equal(send(fd, m.wire + i, 1, MSG_NOSIGNAL), 1);
        RUN_UNTIL(loop, loop_bytes_in(loop) == i + 1);
    }
    assert_int_equal(r.next, 24);
    assert_int_equal(r.bad, 0);
    /* The rest: many frames per write. */
    tu_raw_send_all(loop, fd, m.wire + m.split, m.wire_len - m.split);
    RUN_UNTIL(loop, r.next >= m.n);
    if (r.bad)
        fail_msg("%zu bad messages, the first at %zu", r.bad, r.first_bad);
    assert_int_equal(r.next, m.n);
    assert_int_equal(loop_bytes_in(loop), m.wire_len);

    assert_int_equal(close(fd), 0);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);
    assert_int_equal(r.next, m.n); /* nothing delivered twice */

    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.messages_in, m.n);
    msgset_free(&m);
    srv_stop(&s);
    tu_finish_conns(loop);
}

static void test_framing_length_split_and_batched(void **state) {
    (void)state;
    size_t n_bulk = 2000 / tu_scale(32) + 20;
    static const struct {
        uint8_t hb;
        bool le;
    } cases[] = {{4, false}, {1, false}, {2, false}, {8, false}, {2, true}, {4, true}, {8, true}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        crest_framing_t f = {.kind = CREST_FRAMING_LENGTH, .header_bytes = cases[i].hb,
                             .little_endian = cases[i].le};
        framing_case(&f, n_bulk);
    }
}

static void test_framing_line_split_and_batched(void **state) {
    (void)state;
    crest_framing_t f = {.kind = CREST_FRAMING_LINE};
    framing_case(&f, 2000 / tu_scale(32) + 20);
    crest_framing_t small = {.kind = CREST_FRAMING_LINE, .max_message = 100};
    framing_case(&small, 200);
}

/* write_message frames for the peer and refuses what the framing cannot
 * carry. */
static void test_write_message_limits(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LENGTH;
    lo.conn.framing.header_bytes = 1;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    uint8_t big[300] = {0};
    assert_int_equal(crest_conn_write_message(s.conns[0], big, 256), -EMSGSIZE);
    assert_int_equal(crest_conn_write_message(s.conns[0], big, 255), 0);
    uint8_t got[256];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, got, 256, &end), 256);
    assert_int_equal(got[0], 255);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_stop(&s);

    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    lo.conn.framing.max_message = 10;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);
    fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    assert_int_equal(crest_conn_write_message(s.conns[0], "0123456789a", 11), -EMSGSIZE);
    assert_int_equal(crest_conn_write_message(s.conns[0], "0123456789", 10), 0);
    assert_int_equal(tu_raw_recv(loop, fd, got, 11, &end), 11);
    assert_memory_equal(got, "0123456789\n", 11);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 4. oversized input --------------------------------------------------- */

static void expect_echo(crest_loop_t *loop, int fd, const void *frame, size_t len) {
    uint8_t *got = malloc(len);
    assert_non_null(got);
    tu_raw_send_all(loop, fd, frame, len);
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, got, len, &end), len);
    assert_memory_equal(got, frame, len);
    free(got);
}

static void test_oversized_frame_and_line(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    length4_opts(&lo.conn);
    lo.conn.framing.max_message = 1024;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);

    int good = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    uint8_t frame[4 + 1024];
    put_be32(frame, 1024);
    tu_pattern(frame + 4, 1, 1024);
    expect_echo(loop, good, frame, sizeof frame); /* exactly the limit: fine */

    /* 1025 announced: too large, whatever follows. */
    int bad = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    put_be32(frame, 1025);
    tu_raw_send_all(loop, bad, frame, 20);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[1], CREST_CLOSE_TOO_LARGE);
    assert_true(tu_log_line_has("warning", "frame too large", "1025"));
    assert_true(raw_wait_end(loop, bad) != 0);
    close(bad);

    /* A hostile length: the same, with no allocation of that size. */
    bad = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 3);
    put_be32(frame, 0xFFFFFFFFu);
    tu_raw_send_all(loop, bad, frame, 4);
    RUN_UNTIL(loop, s.closed == 2);
    assert_int_equal(s.why[2], CREST_CLOSE_TOO_LARGE);
    assert_true(tu_log_line_has("warning", "frame too large", "4294967295"));
    close(bad);

    /* The other connection never noticed. */
    put_be32(frame, 3);
    memcpy(frame + 4, "abc", 3);
    expect_echo(loop, good, frame, 7);
    close(good);
    RUN_UNTIL(loop, s.closed == 3);
    assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);
    srv_stop(&s);

    /* Lines. */
    tu_log_clear();
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    lo.conn.framing.max_message = 100;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);
    good = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    char line[300];
    memset(line, 'x', sizeof line);
    memcpy(line + 100, "\r\n", 2); /* exactly the limit, with CRLF */
    tu_raw_send_all(loop, good, line, 102);
    char got[101];
    int end;
    assert_int_equal(tu_raw_recv(loop, good, got, 101, &end), 101);
    assert_int_equal(got[100], '\n');

    bad = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    memset(line, 'y', sizeof line); /* no end of line in sight */
    tu_raw_send_all(loop, bad, line, sizeof line);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[1], CREST_CLOSE_TOO_LARGE);
    assert_true(tu_log_line_has("warning", "line too long", NULL));
    close(bad);

    expect_echo(loop, good, "still here\n", 11);
    close(good);
    RUN_UNTIL(loop, s.closed == 2);
    assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);

    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.close_reasons[CREST_CLOSE_TOO_LARGE], 3);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 5. half-close ------------------------------------------------------- */

struct hc_srv {
    uint64_t msgs[MAX_SCONNS]; /* per connection */
    uint64_t msgs_at_eof;
    uint8_t buf[70000];
};

static int hc_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct hc_srv *h = s->test;
    assert_int_equal(s->eofs, s->closed); /* nothing after this one's EOF */
    s->messages++;
    h->msgs[srv_index(c)]++;
    memcpy(h->buf, "echo:", 5);
    memcpy(h->buf + 5, msg, len);
    assert_int_equal(crest_conn_write_message(c, h->buf, len + 5), 0);
    return 0;
}

static void hc_on_eof(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct hc_srv *h = s->test;
    assert_int_equal(crest_conn_state(c), CREST_CONN_HALF_CLOSED);
    s->eofs++;
    h->msgs_at_eof = h->msgs[srv_index(c)];
    char bye[64];
    int n = snprintf(bye, sizeof bye, "bye:%llu", (unsigned long long)h->msgs_at_eof);
    /* Still writable after the peer's EOF. */
    assert_int_equal(crest_conn_write_message(c, bye, (size_t)n), 0);
    crest_conn_close(c);
}

/* A crest client: many lines, then crest_conn_shutdown(); checks every
 * reply, then the EOF. */
struct hc_client {
    size_t n_lines, replies;
    bool bad, got_bye, closed;
    crest_close_reason_t reason;
    uint8_t line[4096];
};

static size_t hc_line(size_t i, uint8_t *out) {
    size_t n = 10 + (i * 37) % 3000;
    tu_pattern(out, (uint64_t)i << 20, n);
    for (size_t j = 0; j < n; j++)
        out[j] = (uint8_t)('a' + out[j] % 26);
    return n;
}

static void hc_client_open(crest_conn_t *c) {
    struct hc_client *k = crest_conn_handler_ctx(c);
    for (size_t i = 0; i < k->n_lines; i++) {
        size_t n = hc_line(i, k->line);
        assert_int_equal(crest_conn_write_message(c, k->line, n), 0);
    }
    assert_int_equal(crest_conn_shutdown(c), 0);
    /* Our side is shut (or will be once flushed): no more writes. */
    assert_int_equal(crest_conn_write(c, "x", 1), -ENOTCONN);
}

static int hc_client_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct hc_client *k = crest_conn_handler_ctx(c);
    if (k->replies < k->n_lines) {
        size_t n = hc_line(k->replies, k->line);
        if (len != n + 5 || memcmp(msg, "echo:", 5) != 0 || memcmp(msg + 5, k->line, n) != 0)
            k->bad = true;
        k->replies++;
        return 0;
    }
    char bye[64];
    int n = snprintf(bye, sizeof bye, "bye:%zu", k->n_lines);
    if (k->got_bye || len != (size_t)n || memcmp(msg, bye, len) != 0)
        k->bad = true;
    k->got_bye = true;
    return 0;
}

static void hc_client_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct hc_client *k = crest_conn_handler_ctx(c);
    k->closed = true;
    k->reason = reason;
}

static void test_half_close_with_on_eof(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    static struct hc_srv hs;
    memset(&hs, 0, sizeof hs);
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    crest_handler_t h = {.on_open = srv_on_open, .on_message = hc_on_message,
                         .on_eof = hc_on_eof, .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", &lo, &h);
    s.test = &hs;

    /* A crest client that shuts down its side after 200 lines. */
    static struct hc_client k;
    memset(&k, 0, sizeof k);
    k.n_lines = 200;
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.framing.kind = CREST_FRAMING_LINE;
    crest_handler_t ch = {.on_open = hc_client_open, .on_message = hc_client_message,
                          .on_close = hc_client_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, &co, &ch, &k, &c), 0);
    RUN_UNTIL(loop, k.closed && s.closed == 1);
    assert_false(k.bad);
    assert_int_equal(k.replies, k.n_lines);
    assert_true(k.got_bye);
    assert_int_equal(k.reason, CREST_CLOSE_PEER_EOF);
    assert_int_equal(s.eofs, 1);
    assert_int_equal(hs.msgs_at_eof, k.n_lines);
    assert_int_equal(s.why[0], CREST_CLOSE_LOCAL);

    /* A raw client whose data and FIN arrive together (one event with
     * EPOLLIN|EPOLLRDHUP): the data is delivered before the EOF. */
    int fd = tu_raw_connect(s.addr, 0);
    const char req[] = "one\ntwo\r\nthree\n";
    tu_raw_send_all(loop, fd, req, sizeof req - 1);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    const char want[] = "echo:one\necho:two\necho:three\nbye:3\n";
    char got[sizeof want];
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, got, sizeof want - 1, &end), sizeof want - 1);
    assert_memory_equal(got, want, sizeof want - 1);
    assert_int_equal(raw_wait_end(loop, fd), 1); /* a clean EOF, not a reset */
    RUN_UNTIL(loop, s.closed == 2);
    assert_int_equal(s.why[1], CREST_CLOSE_LOCAL);
    assert_int_equal(s.eofs, 2);
    close(fd);
    srv_stop(&s);
    tu_finish_conns(loop);
}

static void test_half_close_without_on_eof(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    lo.conn.sndbuf = 8192; /* so that replies wait in crest's queue */
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);

    /* ~600 KB of lines (under the 1 MiB high water), then FIN, all written
     * before the client reads at all. */
    size_t n_lines = 400;
    uint8_t *req = malloc(n_lines * 3100);
    assert_non_null(req);
    size_t len = 0;
    for (size_t i = 0; i < n_lines; i++) {
        len += hc_line(i, req + len);
        req[len++] = '\n';
    }
    int fd = tu_raw_connect(s.addr, 0);
    tu_raw_send_all(loop, fd, req, len);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    /* The server saw every line and the EOF, and is closing with replies
     * still queued. */
    RUN_UNTIL(loop, s.messages == n_lines && s.conns[0] &&
                        crest_conn_state(s.conns[0]) == CREST_CONN_CLOSING);
    assert_true(crest_conn_output_bytes(s.conns[0]) > 0);
    uint8_t *got = malloc(len + 1);
    assert_non_null(got);
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, got, len, &end), len);
    assert_memory_equal(got, req, len);
    /* Every reply went out before the close: then a clean EOF. */
    assert_int_equal(raw_wait_end(loop, fd), 1);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);
    close(fd);
    free(req);
    free(got);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* A shutdown asked for while the connect is still in progress, with
 * nothing queued, must still reach the peer once connected. */
static void note_eof(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->eofs++;
    crest_conn_close(c);
}

static ssize_t ignore_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)c;
    (void)data;
    return (ssize_t)len;
}

static void flag_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct hc_client *k = crest_conn_handler_ctx(c);
    k->closed = true;
    k->reason = reason;
}

static void test_shutdown_while_connecting(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_handler_t h = {.on_open = srv_on_open, .on_data = ignore_data, .on_eof = note_eof,
                         .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", NULL, &h);
    static struct hc_client k;
    memset(&k, 0, sizeof k);
    crest_handler_t ch = {.on_data = ignore_data, .on_close = flag_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &ch, &k, &c), 0);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CONNECTING);
    assert_int_equal(crest_conn_shutdown(c), 0);
    RUN_UNTIL(loop, s.opened == 1);
    /* Bounded: 100 iterations of at most 10 ms. */
    for (int i = 0; i < 100 && s.eofs == 0; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    int eofs = s.eofs;
    /* Clean up whatever happened, then judge. */
    if (!k.closed)
        crest_conn_abort(c);
    RUN_UNTIL(loop, k.closed && s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
    assert_int_equal(eofs, 1);
}

/* ---- 6. a slow reader ---------------------------------------------------- */

#define SR_REPLY 4096
#define SR_HIGH (64 * 1024)
#define SR_LOW (16 * 1024)

struct sr {
    size_t max_out;
    unsigned highs, drains;
    uint8_t reply[SR_REPLY];
};

static int sr_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct sr *r = s->test;
    assert_int_equal(len, 4);
    uint32_t seq = get_be32(msg);
    assert_int_equal(seq, s->messages); /* in order, once each */
    s->messages++;
    tu_pattern(r->reply, (uint64_t)seq * SR_REPLY, SR_REPLY);
    assert_int_equal(crest_conn_write_message(c, r->reply, SR_REPLY), 0);
    size_t out = crest_conn_output_bytes(c);
    if (out > r->max_out)
        r->max_out = out;
    return 0;
}

/* The notifications run after the call that crossed the mark, when the
 * queue may have moved on (conn.h): they alternate, high water first. */
static void sr_on_high(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct sr *r = s->test;
    assert_int_equal(r->highs, r->drains);
    r->highs++;
}

static void sr_on_drain(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct sr *r = s->test;
    assert_int_equal(r->highs, r->drains + 1);
    r->drains++;
}

static void test_slow_reader_backpressure(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    static struct sr r;
    memset(&r, 0, sizeof r);
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    length4_opts(&lo.conn);
    lo.conn.high_water = SR_HIGH;
    lo.conn.low_water = SR_LOW;
    lo.conn.sndbuf = 8192;
    crest_handler_t h = {.on_open = srv_on_open, .on_message = sr_on_message,
                         .on_high_water = sr_on_high, .on_drain = sr_on_drain,
                         .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", &lo, &h);
    s.test = &r;

    int fd = tu_raw_connect(s.addr, 4096);
    RUN_UNTIL(loop, s.opened == 1);
    crest_conn_t *sc = s.conns[0];

    /* Pipeline 1024 requests, 64 per write, and never read. */
    enum { N = 1024, BATCH = 64 };
    uint8_t req[BATCH * 8];
    for (uint32_t sent = 0; sent < N; sent += BATCH) {
        for (uint32_t i = 0; i < BATCH; i++) {
            put_be32(req + 8 * i, 4);
            put_be32(req + 8 * i + 4, sent + i);
        }
        tu_raw_send_all(loop, fd, req, sizeof req);
        tu_spin(loop, 5);
        size_t out = crest_conn_output_bytes(sc);
        if (out > r.max_out)
            r.max_out = out;
    }
    tu_spin(loop, 20);
    /* Paused: the server stopped reading while replies wait. */
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_true(r.highs >= 1);
    assert_true(st.paused >= 1);
    assert_true(s.messages < N);
    uint64_t in_before = st.bytes_in;
    tu_spin(loop, 20);
    assert_int_equal(loop_bytes_in(loop), in_before);
    size_t max_out_paused = r.max_out;

    /* Now read everything: every reply, in order, intact. */
    uint8_t *rx = malloc(4 + SR_REPLY);
    uint8_t *want = malloc(SR_REPLY);
    assert_non_null(rx);
    assert_non_null(want);
    for (uint32_t i = 0; i < N; i++) {
        int end;
        assert_int_equal(tu_raw_recv(loop, fd, rx, 4 + SR_REPLY, &end), 4 + SR_REPLY);
        assert_int_equal(get_be32(rx), SR_REPLY);
        tu_pattern(want, (uint64_t)i * SR_REPLY, SR_REPLY);
        if (memcmp(rx + 4, want, SR_REPLY) != 0)
            fail_msg("reply %u corrupt", i);
    }
    assert_int_equal(s.messages, N);
    assert_true(r.drains >= 1);
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_PEER_EOF);
    free(rx);
    free(want);
    srv_stop(&s);
    tu_finish_conns(loop);

    /* conn.h: "Memory per slow reader stays bounded by high_water plus one
     * message". */
    if (max_out_paused > SR_HIGH + 4 + SR_REPLY || r.max_out > SR_HIGH + 4 + SR_REPLY)
        fail_msg("output queue reached %zu bytes (high_water %u + one %u-byte message)",
                 r.max_out, SR_HIGH, 4 + SR_REPLY);
}

/* A write timeout: output that makes no progress closes the connection. */
static void test_write_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.write_timeout_ms = 50;
    lo.conn.sndbuf = 4096;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &raw_echo_handler);
    int fd = tu_raw_connect(s.addr, 4096);
    RUN_UNTIL(loop, s.opened == 1);
    uint8_t *big = calloc(1, 4 << 20);
    assert_non_null(big);
    assert_int_equal(crest_conn_write(s.conns[0], big, 4 << 20), 0);
    assert_true(crest_conn_output_bytes(s.conns[0]) > 0);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_WRITE_TIMEOUT);
    assert_int_equal(s.errs[0], ETIMEDOUT);
    close(fd);
    free(big);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 7. abort ----------------------------------------------------------- */

static ssize_t abort_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    /* Queued output is dropped by an abort. */
    assert_int_equal(crest_conn_write(c, "never sent", 10), 0);
    crest_conn_abort(c);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CLOSING);
    assert_int_equal(crest_conn_write(c, "x", 1), -ENOTCONN);
    return (ssize_t)len;
}

static void test_abort_sends_rst(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_handler_t h = {.on_open = srv_on_open, .on_data = abort_on_data,
                         .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", NULL, &h);

    /* From inside the handler. */
    int fd = tu_raw_connect(s.addr, 0);
    tu_raw_send_all(loop, fd, "abort", 5);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_ABORT);
    assert_int_equal(raw_wait_end(loop, fd), -ECONNRESET);
    close(fd);

    /* From outside any callback. */
    fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    crest_conn_abort(s.conns[1]);
    RUN_UNTIL(loop, s.closed == 2);
    assert_int_equal(s.why[1], CREST_CLOSE_ABORT);
    assert_int_equal(raw_wait_end(loop, fd), -ECONNRESET);
    close(fd);

    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.close_reasons[CREST_CLOSE_ABORT], 2);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 8. connect failures ------------------------------------------------- */

struct outcome {
    bool opened, closed;
    crest_close_reason_t reason;
    int err;
};

static void oc_open(crest_conn_t *c) {
    struct outcome *o = crest_conn_handler_ctx(c);
    o->opened = true;
}

static void oc_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct outcome *o = crest_conn_handler_ctx(c);
    assert_false(o->closed);
    o->closed = true;
    o->reason = reason;
    o->err = err;
}

static const crest_handler_t oc_handler = {
    .on_open = oc_open, .on_data = ignore_data, .on_close = oc_close,
};

static void test_connect_refused(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A port that was just free: bound, then closed without listening. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t sl = sizeof sin;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sin.sin_port));

    struct outcome o = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, addr, NULL, &oc_handler, &o, &c), 0);
    RUN_UNTIL(loop, o.closed);
    assert_false(o.opened);
    assert_int_equal(o.reason, CREST_CLOSE_CONNECT_FAILED);
    assert_int_equal(o.err, ECONNREFUSED);
    tu_finish_conns(loop);
}

static void test_connect_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A listener with a backlog of 0 that never accepts: once a few
     * connects fill its queue, SYNs are dropped and a connect hangs. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t sl = sizeof sin;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    enum { FILL = 4 };
    int fill[FILL];
    for (int i = 0; i < FILL; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(fill[i] >= 0);
        int rc = connect(fill[i], (struct sockaddr *)&sin, sizeof sin);
        assert_true(rc == 0 || errno == EINPROGRESS);
    }
    tu_sleep_ms(20);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sin.sin_port));

    struct outcome o = {0};
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.connect_timeout_ms = 200;
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, addr, &co, &oc_handler, &o, &c), 0);
    RUN_UNTIL(loop, o.closed);
    assert_false(o.opened);
    assert_int_equal(o.reason, CREST_CLOSE_CONNECT_TIMEOUT);
    assert_int_equal(o.err, ETIMEDOUT);
    for (int i = 0; i < FILL; i++)
        close(fill[i]);
    close(lfd);
    tu_finish_conns(loop);
}

/* ---- 9. idle and read timeouts ------------------------------------------- */

static void test_idle_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.idle_timeout_ms = 30;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &raw_echo_handler);
    struct outcome o = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &oc_handler, &o, &c), 0);
    RUN_UNTIL(loop, o.closed && s.closed == 1);
    assert_true(o.opened);
    assert_int_equal(s.why[0], CREST_CLOSE_IDLE_TIMEOUT);
    assert_int_equal(s.errs[0], ETIMEDOUT);
    assert_int_equal(o.reason, CREST_CLOSE_PEER_EOF);
    srv_stop(&s);
    tu_finish_conns(loop);
}

static void test_read_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    lo.conn.read_timeout_ms = 30;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);

    /* Idle without a partial message: no read timeout. */
    int fd = tu_raw_connect(s.addr, 0);
    expect_echo(loop, fd, "whole\n", 6);
    for (int i = 0; i < 10; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    assert_int_equal(s.closed, 0);
    /* A message started and never finished. */
    tu_raw_send_all(loop, fd, "partial", 7);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[0], CREST_CLOSE_READ_TIMEOUT);
    assert_int_equal(s.errs[0], ETIMEDOUT);
    assert_int_equal(s.messages, 1);
    close(fd);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* The read timeout is for "a message started but not finished": a peer
 * that keeps finishing messages must not hit it just because every read
 * happens to end inside the next message. */
static void test_read_timeout_reset_by_progress(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    lo.conn.read_timeout_ms = 300;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &msg_echo_handler);
    int fd = tu_raw_connect(s.addr, 0);
    tu_raw_send_all(loop, fd, "m0\np", 4);
    /* 15 steps about 30 ms apart (450 ms in all): each finishes the
     * pending message and starts the next. */
    uint64_t sent = 4;
    for (int k = 1; k <= 15 && s.closed == 0; k++) {
        char piece[32];
        int n = snprintf(piece, sizeof piece, "art\nm%d\np", k);
        tu_raw_send_all(loop, fd, piece, (size_t)n);
        sent += (uint64_t)n;
        RUN_UNTIL(loop, loop_bytes_in(loop) == sent || s.closed);
        uint64_t until = tu_mono_ns() + 30000000ull;
        while (tu_mono_ns() < until && s.closed == 0)
            assert_true(crest_loop_run_once(loop, 5) >= 0);
    }
    int closed = s.closed;
    crest_close_reason_t why = s.why[0];
    uint64_t msgs = s.messages;
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
    if (closed)
        fail_msg("closed (%s) after %llu messages although one completed every ~30 ms "
                 "(read_timeout_ms 300)",
                 crest_close_reason_name(why), (unsigned long long)msgs);
}

/* ---- 10. max_conns ---------------------------------------------------------- */

static void test_max_conns(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.max_conns = 2;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &raw_echo_handler);
    struct outcome o[4];
    memset(o, 0, sizeof o);
    crest_conn_t *c[4];
    for (int i = 0; i < 2; i++)
        assert_int_equal(crest_connect(loop, s.addr, NULL, &oc_handler, &o[i], &c[i]), 0);
    RUN_UNTIL(loop, s.opened == 2 && o[0].opened && o[1].opened);

    /* The third is accepted and closed at once. */
    assert_int_equal(crest_connect(loop, s.addr, NULL, &oc_handler, &o[2], &c[2]), 0);
    RUN_UNTIL(loop, o[2].closed);
    crest_listener_stats_t ls;
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.refused_limit, 1);
    assert_int_equal(ls.accepted, 2);
    assert_int_equal(ls.active, 2);
    assert_int_equal(s.opened, 2);
    assert_true(o[2].reason == CREST_CLOSE_PEER_RESET || o[2].reason == CREST_CLOSE_PEER_EOF ||
                o[2].reason == CREST_CLOSE_CONNECT_FAILED);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.close_reasons[CREST_CLOSE_CONN_LIMIT], 1);

    /* Room again after one closes. */
    crest_conn_close(c[0]);
    RUN_UNTIL(loop, o[0].closed && s.closed == 1);
    assert_int_equal(crest_connect(loop, s.addr, NULL, &oc_handler, &o[3], &c[3]), 0);
    RUN_UNTIL(loop, s.opened == 3 && o[3].opened);
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.accepted, 3);
    assert_int_equal(ls.refused_limit, 1);
    assert_int_equal(ls.active, 2);

    crest_conn_close(c[1]);
    crest_conn_close(c[3]);
    RUN_UNTIL(loop, o[1].closed && o[3].closed && s.closed == 3);
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.active, 0);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 11. Unix-domain and IPv6 ------------------------------------------ */

/* n clients ping-pong `rounds` framed messages with a server at s. */
static void ping_pong(crest_loop_t *loop, struct srv *s, int n, int rounds) {
    struct pp *p = calloc(1, sizeof *p);
    assert_non_null(p);
    assert_true(rounds <= PP_ROUNDS && n <= PP_CONNS);
    crest_conn_opts_t co;
    length4_opts(&co);
    crest_handler_t h = {.on_open = pp_on_open, .on_message = pp_on_message,
                         .on_close = pp_on_close};
    int closed_before = s->closed;
    for (int i = 0; i < n; i++) {
        struct pp_client *k = &p->cl[i];
        k->id = i;
        assert_int_equal(crest_connect(loop, s->addr, &co, &h, p, &k->c), 0);
        crest_conn_set_data(k->c, k);
    }
    RUN_UNTIL(loop, p->closed == n && s->closed == closed_before + n);
    for (int i = 0; i < n; i++) {
        assert_false(p->cl[i].bad);
        assert_int_equal(p->cl[i].round, PP_ROUNDS);
        assert_int_equal(p->cl[i].reason, CREST_CLOSE_LOCAL);
    }
    free(p);
}

static void test_unix_domain(void **state) {
    (void)state;
    char path[108], addr[128];
    snprintf(path, sizeof path, "/tmp/crest-test-conn-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);

    /* A socket file left by a dead server is replaced. */
    int stale = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(stale >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    unlink(path);
    assert_int_equal(bind(stale, (struct sockaddr *)&sun, sizeof sun), 0);
    close(stale);

    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    length4_opts(&lo.conn);
    lo.conn.nodelay = true; /* a TCP option: ignored for Unix sockets */
    srv_start(loop, &s, addr, &lo, &msg_echo_handler);
    assert_string_equal(s.addr, addr);
    assert_int_equal(crest_listener_port(s.l), -1);
    ping_pong(loop, &s, 5, PP_ROUNDS);
    assert_int_equal(s.reasons[CREST_CLOSE_PEER_EOF], 5);
    srv_stop(&s);
    struct stat st;
    assert_int_equal(stat(path, &st), -1); /* unlinked by the close */
    assert_int_equal(errno, ENOENT);

    /* No one there: CONNECT_FAILED through on_close, not an error return. */
    struct outcome o = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, addr, NULL, &oc_handler, &o, &c), 0);
    RUN_UNTIL(loop, o.closed);
    assert_false(o.opened);
    assert_int_equal(o.reason, CREST_CLOSE_CONNECT_FAILED);
    assert_int_equal(o.err, ENOENT);
    tu_finish_conns(loop);
}

static void test_ipv6_loopback(void **state) {
    (void)state;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        skip();
    close(fd);
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    length4_opts(&lo.conn);
    memset(&s, 0, sizeof s);
    int rc = crest_listen(loop, "[::1]:0", &lo, &msg_echo_handler, &s, &s.l);
    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT) {
        tu_destroy_loop(loop);
        skip();
    }
    assert_int_equal(rc, 0);
    s.loop = loop;
    assert_true(crest_listener_address(s.l, s.addr, sizeof s.addr) > 0);
    assert_true(strncmp(s.addr, "[::1]:", 6) == 0);

    /* The peer address as the server sees it. */
    int raw = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    char peer[CREST_ADDR_STRLEN];
    assert_true(crest_conn_peer(s.conns[0], peer, sizeof peer) > 0);
    assert_true(strncmp(peer, "[::1]:", 6) == 0);
    close(raw);
    RUN_UNTIL(loop, s.closed == 1);

    ping_pong(loop, &s, 4, PP_ROUNDS);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* ---- 12. handler-driven flow control and closing from callbacks --------- */

struct pr {
    int delivered;
    char last[16];
};

static int pr_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct pr *p = s->test;
    p->delivered++;
    snprintf(p->last, sizeof p->last, "%.*s", (int)len, (const char *)msg);
    if (len == 5 && memcmp(msg, "pause", 5) == 0)
        crest_conn_pause(c);
    return 0;
}

/* Messages that arrived in the same read as the one that paused are
 * delivered after crest_conn_resume(), without waiting for new input. */
static void test_pause_resume_delivers_buffered(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    static struct pr p;
    memset(&p, 0, sizeof p);
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    crest_handler_t h = {.on_open = srv_on_open, .on_message = pr_on_message,
                         .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", &lo, &h);
    s.test = &p;
    int fd = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    tu_raw_send_all(loop, fd, "a\npause\nb\nc\n", 12);
    RUN_UNTIL(loop, p.delivered == 2);
    tu_spin(loop, 20);
    assert_int_equal(p.delivered, 2); /* paused */

    crest_conn_resume(s.conns[0]);
    for (int i = 0; i < 50 && p.delivered < 4; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    int after_resume = p.delivered;
    /* New input does bring them (they were stuck, not lost). */
    tu_raw_send_all(loop, fd, "d\n", 2);
    RUN_UNTIL(loop, p.delivered == 5);
    assert_string_equal(p.last, "d");
    close(fd);
    RUN_UNTIL(loop, s.closed == 1);
    srv_stop(&s);
    tu_finish_conns(loop);
    if (after_resume != 4)
        fail_msg("after crest_conn_resume(): %d of 4 messages delivered; the 2 already "
                 "buffered waited for new input",
                 after_resume);
}

/* A handler closes its connection inside on_message / on_data and, in the
 * same callback, queues output on another connection.  The closing
 * connection's input buffer went back to the pool, and the other
 * connection's queue may take it: what it queued must go out intact. */
struct cq {
    crest_conn_t *other;
};

static void cq_act(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    struct cq *q = s->test;
    crest_conn_close(c);
    crest_conn_cork(q->other);
    assert_int_equal(crest_conn_write(q->other, "bye-from-quitter\n", 17), 0);
}

static int cq_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    if (len == 4 && memcmp(msg, "quit", 4) == 0)
        cq_act(c);
    return 0;
}

static ssize_t cq_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    if (len >= 4 && memcmp(data, "quit", 4) == 0)
        cq_act(c);
    return (ssize_t)len;
}

static void close_in_callback_case(crest_framing_kind_t kind) {
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    static struct cq q;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = kind;
    crest_handler_t h = {.on_open = srv_on_open, .on_close = srv_on_close};
    if (kind == CREST_FRAMING_RAW)
        h.on_data = cq_on_data;
    else
        h.on_message = cq_on_message;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &h);
    s.test = &q;
    int b = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 1);
    q.other = s.conns[0];
    int a = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2);
    tu_raw_send_all(loop, a, "quit\n", 5);
    RUN_UNTIL(loop, s.closed == 1);
    assert_int_equal(s.why[1], CREST_CLOSE_LOCAL);
    assert_int_equal(crest_conn_output_bytes(q.other), 17);
    assert_int_equal(crest_conn_uncork(q.other), 0);
    char got[64] = "";
    int end;
    size_t n = tu_raw_recv(loop, b, got, 17, &end);
    close(a);
    close(b);
    RUN_UNTIL(loop, s.closed == 2);
    srv_stop(&s);
    tu_finish_conns(loop);
    assert_int_equal(n, 17);
    assert_memory_equal(got, "bye-from-quitter\n", 17);
}

static void test_close_in_callback_then_write_elsewhere(void **state) {
    (void)state;
    close_in_callback_case(CREST_FRAMING_LINE);
    close_in_callback_case(CREST_FRAMING_RAW);
}

/* ---- 13. more of the write path and shutdown ------------------------------ */

/* Writes queued while connecting, then one big write in on_open: the
 * queue is far above high water after it, so on_high_water must run
 * (conn.h: "when queued output exceeds high_water, the connection stops
 * reading and calls on_high_water"), as it does for any other write: once
 * on_open has returned, not inside the write. */
struct hw1 {
    bool opened, closed;
    unsigned highs;
    size_t out_after_write;
    unsigned highs_after_write;
    bool open_returned;
    uint8_t *big;
};

static void hw1_open(crest_conn_t *c) {
    struct hw1 *h = crest_conn_handler_ctx(c);
    h->opened = true;
    assert_int_equal(crest_conn_write(c, h->big, 4 << 20), 0);
    h->out_after_write = crest_conn_output_bytes(c);
    h->highs_after_write = h->highs;
    if (h->out_after_write <= 64 * 1024)
        crest_conn_abort(c); /* no crossing: nothing to wait for */
    h->open_returned = true;
}

static void hw1_high(crest_conn_t *c) {
    struct hw1 *h = crest_conn_handler_ctx(c);
    assert_true(h->open_returned);
    h->highs++;
    crest_conn_abort(c); /* what happened is recorded: no need to flush it */
}

static void hw1_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct hw1 *h = crest_conn_handler_ctx(c);
    h->closed = true;
}

/* One client: maybe a write while connecting, then 4 MiB in on_open. */
static void hw1_case(struct hw1 *h, bool write_while_connecting) {
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_handler_t sh = {.on_open = srv_on_open, .on_data = ignore_data,
                          .on_close = srv_on_close};
    srv_start(loop, &s, "127.0.0.1:0", NULL, &sh);
    memset(h, 0, sizeof *h);
    h->big = calloc(1, 4 << 20);
    assert_non_null(h->big);
    crest_conn_opts_t co;
    crest_conn_opts_init(&co);
    co.high_water = 64 * 1024;
    co.low_water = 16 * 1024;
    co.sndbuf = 16 * 1024;
    crest_handler_t ch = {.on_open = hw1_open, .on_data = ignore_data,
                          .on_high_water = hw1_high, .on_close = hw1_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s.addr, &co, &ch, h, &c), 0);
    if (write_while_connecting) {
        assert_int_equal(crest_conn_write(c, "queued while connecting", 23), 0);
        assert_int_equal(crest_conn_output_bytes(c), 23);
    }
    RUN_UNTIL(loop, h->closed && s.closed == 1);
    free(h->big);
    srv_stop(&s);
    tu_finish_conns(loop);
    assert_true(h->opened);
    assert_true(h->out_after_write > 64 * 1024);
}

static void test_high_water_after_connect(void **state) {
    (void)state;
    static struct hw1 h;
    hw1_case(&h, false); /* the direct path: on_high_water runs */
    assert_int_equal(h.highs_after_write, 0); /* not inside the write */
    assert_int_equal(h.highs, 1);
    hw1_case(&h, true);  /* queue non-empty and writable: queue, then flush */
    assert_int_equal(h.highs_after_write, 0);
    if (h.highs != 1)
        fail_msg("%zu bytes queued (high_water 65536) and on_high_water called %u times",
                 h.out_after_write, h.highs);
}

/* crest_loop_close_all(): graceful (queued output still goes out, reason
 * SHUTDOWN) and abortive (RST). */
static void test_close_all(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    crest_handler_t sh = {.on_open = srv_on_open, .on_data = ignore_data,
                          .on_close = srv_on_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.sndbuf = 8192;
    srv_start(loop, &s, "127.0.0.1:0", &lo, &sh);
    enum { N = 3, BYTES = 300000 };
    int fd[N];
    uint8_t *data = malloc(BYTES), *got = malloc(BYTES);
    assert_non_null(data);
    assert_non_null(got);
    tu_pattern(data, 77, BYTES);
    for (int i = 0; i < N; i++)
        fd[i] = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(crest_conn_write(s.conns[i], data, BYTES), 0);
        assert_true(crest_conn_output_bytes(s.conns[i]) > 0);
    }
    crest_loop_close_all(loop, false);
    for (int i = 0; i < N; i++) {
        int end;
        assert_int_equal(tu_raw_recv(loop, fd[i], got, BYTES, &end), BYTES);
        assert_memory_equal(got, data, BYTES);
        assert_int_equal(raw_wait_end(loop, fd[i]), 1);
        close(fd[i]);
    }
    RUN_UNTIL(loop, s.closed == N);
    for (int i = 0; i < N; i++)
        assert_int_equal(s.why[i], CREST_CLOSE_SHUTDOWN);

    for (int i = 0; i < N; i++)
        fd[i] = tu_raw_connect(s.addr, 0);
    RUN_UNTIL(loop, s.opened == 2 * N);
    for (int i = 0; i < N; i++)
        assert_int_equal(crest_conn_write(s.conns[N + i], data, BYTES), 0);
    crest_loop_close_all(loop, true);
    RUN_UNTIL(loop, s.closed == 2 * N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s.why[N + i], CREST_CLOSE_SHUTDOWN);
        assert_int_equal(raw_wait_end(loop, fd[i]), -ECONNRESET);
        close(fd[i]);
    }
    free(data);
    free(got);
    srv_stop(&s);
    tu_finish_conns(loop);
}

/* connect.c: "Failures of the connect itself ... are always reported
 * through on_close, even when connect() fails at once (a Unix socket can)".
 * A Unix listener whose backlog is full makes connect() fail at once with
 * EAGAIN. */
static void test_unix_connect_backlog_full(void **state) {
    (void)state;
    char path[108], addr[128];
    snprintf(path, sizeof path, "/tmp/crest-test-full-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(lfd, 0), 0);
    /* Fill the queue: nonblocking connects until one fails with EAGAIN. */
    int fill[8], n_fill = 0;
    for (; n_fill < 8; n_fill++) {
        fill[n_fill] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(fill[n_fill] >= 0);
        if (connect(fill[n_fill], (struct sockaddr *)&sun, sizeof sun) < 0) {
            assert_int_equal(errno, EAGAIN);
            close(fill[n_fill]);
            break;
        }
    }
    assert_true(n_fill < 8);

    crest_loop_t *loop = tu_loop();
    struct outcome o = {0};
    crest_conn_t *c = NULL;
    int rc = crest_connect(loop, addr, NULL, &oc_handler, &o, &c);
    if (rc == 0)
        RUN_UNTIL(loop, o.closed);
    for (int i = 0; i < n_fill; i++)
        close(fill[i]);
    close(lfd);
    unlink(path);
    tu_finish_conns(loop);
    assert_int_equal(rc, 0);
    assert_false(o.opened);
    assert_int_equal(o.reason, CREST_CLOSE_CONNECT_FAILED);
    assert_int_equal(o.err, EAGAIN);
}

/* A real EMFILE (a lowered soft RLIMIT_NOFILE, every slot below it taken
 * but one): the listener sheds the connection it cannot hold through its
 * spare fd, counts it, keeps serving, and accepts again once fds free up.
 * (test_fault.c injects EMFILE; this is the kernel's.) */
static void test_accept_real_emfile(void **state) {
    (void)state;
    /* valgrind emulates the fd limit: an accept4 whose fd lands above it
     * is closed by valgrind and reported as EMFILE, the connection gone. */
    if (RUNNING_ON_VALGRIND)
        skip();
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    crest_loop_t *loop = tu_loop();
    static struct srv s;
    srv_start(loop, &s, "127.0.0.1:0", NULL, &raw_echo_handler);
    crest_addr_t a;
    assert_int_equal(crest_addr_parse(s.addr, &a), 0);
    int cl[3];
    for (int i = 0; i < 3; i++) {
        cl[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(cl[i] >= 0);
    }
    /* Take every slot below a limit a few above the highest fd, then
     * give one back. */
    int hi = 0;
    static unsigned char set[65536];
    tu_proc_fd_set(set, (int)sizeof set);
    for (int fd = 0; fd < (int)sizeof set; fd++)
        if (set[fd] && (rlim_t)fd < old.rlim_cur)
            hi = fd;
    struct rlimit lim = old;
    lim.rlim_cur = (rlim_t)hi + 4;
    if (setrlimit(RLIMIT_NOFILE, &lim) < 0) {
        for (int i = 0; i < 3; i++)
            close(cl[i]);
        srv_stop(&s);
        tu_finish_conns(loop);
        skip();
    }
    int fill[4096], n_fill = 0;
    while (n_fill < 4096) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        fill[n_fill++] = fd;
    }
    int open_errno = errno;
    close(fill[--n_fill]); /* exactly one slot free */

    bool ok = open_errno == EMFILE;
    /* The first client takes the last slot. */
    ok = ok && connect(cl[0], (struct sockaddr *)&a.ss, a.len) == 0;
    for (int i = 0; ok && i < 200 && s.opened < 1; i++)
        crest_loop_run_once(loop, 10);
    int opened_first = s.opened;
    /* The second cannot be held. */
    crest_listener_stats_t ls = {0};
    ok = ok && connect(cl[1], (struct sockaddr *)&a.ss, a.len) == 0;
    for (int i = 0; ok && i < 200 && ls.emfile < 1; i++) {
        crest_loop_run_once(loop, 10);
        crest_listener_get_stats(s.l, &ls);
    }
    int opened_second = s.opened;
    /* Fds back. */
    for (int i = 0; i < n_fill; i++)
        close(fill[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);

    assert_true(ok);
    assert_int_equal(opened_first, 1);
    assert_int_equal(opened_second, 1);
    assert_int_equal(ls.accepted, 1);
    assert_true(ls.emfile >= 1);
    assert_true(tu_log_line_has("warning", "out of file descriptors", NULL));
    crest_fd_counts_t rsv;
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    assert_true(rsv.open >= 1); /* the spare is back */
    /* The dropped client sees its connection end (reset or EOF). */
    assert_int_equal(fcntl(cl[1], F_SETFL, O_NONBLOCK), 0);
    assert_true(raw_wait_end(loop, cl[1]) != 0);
    /* The first is served; a new one is accepted. */
    assert_int_equal(fcntl(cl[0], F_SETFL, O_NONBLOCK), 0);
    expect_echo(loop, cl[0], "still served", 12);
    assert_int_equal(connect(cl[2], (struct sockaddr *)&a.ss, a.len), 0);
    RUN_UNTIL(loop, s.opened == 2);
    assert_int_equal(fcntl(cl[2], F_SETFL, O_NONBLOCK), 0);
    expect_echo(loop, cl[2], "accepted again", 14);
    for (int i = 0; i < 3; i++)
        close(cl[i]);
    RUN_UNTIL(loop, s.closed == 2);
    srv_stop(&s);
    tu_finish_conns(loop);
    /* listener.h: emfile counts connections "dropped while out of fds":
     * one was. */
    if (ls.emfile != 1)
        fail_msg("emfile is %llu with one connection dropped: accept4 fails with EMFILE "
                 "before it looks at the queue, so the accept after the one that took the "
                 "last free fd counted (and logged) a drop of nothing",
                 (unsigned long long)ls.emfile);
}

/* ---- main ------------------------------------------------------------- */

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_many_connections_ping_pong),
        tu_test(test_echo_64mib_checksum),
        tu_test(test_echo_backpressure_without_window),
        tu_test(test_framing_length_split_and_batched),
        tu_test(test_framing_line_split_and_batched),
        tu_test(test_write_message_limits),
        tu_test(test_oversized_frame_and_line),
        tu_test(test_half_close_with_on_eof),
        tu_test(test_half_close_without_on_eof),
        tu_test(test_shutdown_while_connecting),
        tu_test(test_slow_reader_backpressure),
        tu_test(test_write_timeout),
        tu_test(test_abort_sends_rst),
        tu_test(test_connect_refused),
        tu_test(test_connect_timeout),
        tu_test(test_idle_timeout),
        tu_test(test_read_timeout),
        tu_test(test_read_timeout_reset_by_progress),
        tu_test(test_max_conns),
        tu_test(test_unix_domain),
        tu_test(test_ipv6_loopback),
        tu_test(test_pause_resume_delivers_buffered),
        tu_test(test_close_in_callback_then_write_elsewhere),
        tu_test(test_high_water_after_connect),
        tu_test(test_close_all),
        tu_test(test_unix_connect_backlog_full),
        tu_test(test_accept_real_emfile),
    };
    /* CREST_TEST_FILTER=test_name (a glob) runs only the matching tests. */
    const char *filter = getenv("CREST_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
