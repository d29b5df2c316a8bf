/* Changing a live connection (conn.h): crest_conn_get_opts(),
 * crest_conn_set_opts(), crest_conn_set_handler(), crest_conn_upgrade(),
 * and the input idle timeout, over real loopback sockets.
 *
 * The framing switches are checked at every byte boundary: each stream is
 * sent in two writes split at every offset (each write read on its own),
 * then in one write, then one byte at a time, and what the handlers got is
 * compared with what the stream means.
 *
 * Waits are bounded iteration counts; the timeout tests check only lower
 * bounds (a timeout never fires early) and reasons, never how late.  Every
 * test ends with every connection closed, no buffer in use and nothing
 * left open. */
#include "crest_test.h"

#include <netinet/tcp.h>

static uint64_t bytes_in(crest_conn_t *c) {
    crest_conn_info_t i;
    crest_conn_get_info(c, &i);
    return i.bytes_in;
}

/* Read and drop what the socket holds; false at EOF or error. */
static bool drain(int fd) {
    uint8_t tmp[4096];
    for (;;) {
        ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n > 0)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EINTR);
    }
}

/* ---- the switching server ------------------------------------------------- */

enum scenario { RAW_TO_LINE, LINE_TO_RAW, LINE_TO_LENGTH, LENGTH_TO_LINE };

struct sw {
    enum scenario sc;
    crest_conn_t *c;
    crest_conn_t *all[8];
    char events[512];
    uint8_t raw[256];
    size_t raw_len;
    int opened, closed, new_opened;
    bool in_call;       /* inside a crest_conn_set_* call */
    bool cb_in_call;    /* a callback ran inside one */
    crest_close_reason_t why;
};

static void ev(struct sw *w, const char *fmt, ...) {
    size_t n = strlen(w->events);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->events + n, sizeof w->events - n, fmt, ap);
    va_end(ap);
}

static void note(struct sw *w) {
    if (w->in_call)
        w->cb_in_call = true;
}

static void sw_open(crest_conn_t *c) {
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    w->c = c;
    if (w->opened < 8)
        w->all[w->opened] = c;
    w->opened++;
}

static void sw_close(crest_conn_t *c, crest_close_reason_t why, int err) {
    (void)err;
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    /* no change once closed */
    crest_conn_opts_t o;
    assert_int_equal(crest_conn_get_opts(c, &o), 0);
    assert_int_equal(crest_conn_set_opts(c, &o), -ENOTCONN);
    w->why = why;
    w->closed++;
    w->c = NULL;
}

/* The handlers after the switch: their on_open must never run. */
static void new_open(crest_conn_t *c) {
    struct sw *w = crest_conn_handler_ctx(c);
    w->new_opened++;
}

static int new_msg(crest_conn_t *c, const uint8_t *m, size_t n) {
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    ev(w, "m%zu:%.*s;", n, (int)n, (const char *)m);
    return 0;
}

static ssize_t new_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    assert_true(w->raw_len + n <= sizeof w->raw);
    memcpy(w->raw + w->raw_len, d, n);
    w->raw_len += n;
    return (ssize_t)n;
}

static const crest_handler_t raw_only = {
    .on_open = new_open, .on_data = new_data, .on_close = sw_close};
static const crest_handler_t msg_only = {
    .on_open = new_open, .on_message = new_msg, .on_close = sw_close};

static void set_framing(crest_conn_t *c, crest_framing_kind_t kind, uint8_t hb) {
    crest_conn_opts_t o;
    assert_int_equal(crest_conn_get_opts(c, &o), 0);
    o.framing.kind = kind;
    o.framing.header_bytes = hb;
    o.framing.max_message = 0;
    struct sw *w = crest_conn_handler_ctx(c);
    w->in_call = true;
    assert_int_equal(crest_conn_set_opts(c, &o), 0);
    w->in_call = false;
    assert_int_equal(crest_conn_get_opts(c, &o), 0);
    assert_int_equal(o.framing.kind, kind);
}

/* The first handler: both callbacks, so set_opts alone may switch. */
static ssize_t first_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    assert_int_equal(w->sc, RAW_TO_LINE);
    if (n < 4)
        return 0; /* "HELO" is not all here yet */
    assert_memory_equal(d, "HELO", 4);
    ev(w, "HELO;");
    set_framing(c, CREST_FRAMING_LINE, 0);
    /* the rest of this read goes to on_message now */
    return 4;
}

static int first_msg(crest_conn_t *c, const uint8_t *m, size_t n) {
    struct sw *w = crest_conn_handler_ctx(c);
    note(w);
    ev(w, "m%zu:%.*s;", n, (int)n, (const char *)m);
    if (w->sc == LINE_TO_RAW && n == 3 && memcmp(m, "RAW", 3) == 0) {
        /* to an on_data-only handler: one call, checked together */
        crest_conn_opts_t o;
        crest_conn_get_opts(c, &o);
        o.framing.kind = CREST_FRAMING_RAW;
        w->in_call = true;
        assert_int_equal(crest_conn_set_handler(c, &raw_only, w), -EINVAL); /* LINE needs on_message */
        assert_int_equal(crest_conn_upgrade(c, &raw_only, w, &o), 0);
        w->in_call = false;
    } else if (w->sc == LINE_TO_LENGTH && n == 7 && memcmp(m, "UPGRADE", 7) == 0) {
        /* a reply in the old framing, then two calls */
        assert_int_equal(crest_conn_write_message(c, "OK", 2), 0);
        set_framing(c, CREST_FRAMING_LENGTH, 2);
        w->in_call = true;
        assert_int_equal(crest_conn_set_handler(c, &msg_only, w), 0);
        w->in_call = false;
        assert_ptr_equal(crest_conn_handler_ctx(c), w);
    } else if (w->sc == LENGTH_TO_LINE && n == 4 && memcmp(m, "LINE", 4) == 0) {
        set_framing(c, CREST_FRAMING_LINE, 0);
    }
    return 0;
}

static const crest_handler_t first = {
    .on_open = sw_open, .on_data = first_data, .on_message = first_msg, .on_close = sw_close};

struct model {
    enum scenario sc;
    crest_framing_kind_t kind;
    uint8_t hb;
    const char *stream;
    size_t len;
    const char *events;
    const char *raw; /* bytes the raw handler gets after the switch */
    size_t raw_len;
    unsigned messages; /* counted in messages_in */
};

#define S(lit) lit, sizeof(lit) - 1

static const struct model models[] = {
    {RAW_TO_LINE, CREST_FRAMING_RAW, 0, S("HELOab\n\ncd\r\nefg\n"),
     "HELO;m2:ab;m0:;m2:cd;m3:efg;", S(""), 4},
    {LINE_TO_RAW, CREST_FRAMING_LINE, 0, S("x\nRAW\ntail\nbytes\0\1\2\n"), "m1:x;m3:RAW;",
     S("tail\nbytes\0\1\2\n"), 2},
    {LINE_TO_LENGTH, CREST_FRAMING_LINE, 0,
     S("hi\nUPGRADE\n\0\5hello\0\0\0\3abc\0\1\n"),
     "m2:hi;m7:UPGRADE;m5:hello;m0:;m3:abc;m1:\n;", S(""), 6},
    {LENGTH_TO_LINE, CREST_FRAMING_LENGTH, 1, S("\3abc\4LINEx\ny\r\n\n"),
     "m3:abc;m4:LINE;m1:x;m1:y;m0:;", S(""), 5},
};

/* One connection: the stream in pieces (split: 0 one write, > 0 two
 * writes split there, -1 a byte per write), each piece read before the
 * next is sent. */
static void run_split(crest_loop_t *loop, const char *addr, struct sw *w, const struct model *m,
                      long split) {
    memset(w->events, 0, sizeof w->events);
    w->raw_len = 0;
    w->sc = m->sc;
    int opened = w->opened, closed = w->closed;
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, w->opened == opened + 1);
    crest_conn_t *c = w->c;
    size_t cuts[3], n = 0;
    if (split == 0) {
        cuts[n++] = m->len;
    } else if (split > 0) {
        cuts[n++] = (size_t)split;
        cuts[n++] = m->len;
    }
    size_t sent = 0;
    if (split < 0) {
        for (; sent < m->len; sent++) {
            tu_raw_send_all(loop, fd, m->stream + sent, 1);
            RUN_UNTIL(loop, bytes_in(c) == sent + 1);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            tu_raw_send_all(loop, fd, m->stream + sent, cuts[i] - sent);
            sent = cuts[i];
            RUN_UNTIL(loop, bytes_in(c) == sent);
        }
    }
    if (strcmp(w->events, m->events) != 0 || w->raw_len != m->raw_len ||
        memcmp(w->raw, m->raw, m->raw_len) != 0)
        fail_msg("scenario %d, split %ld: events \"%s\" (want \"%s\"), %zu raw bytes (want %zu)",
                 (int)m->sc, split, w->events, m->events, w->raw_len, m->raw_len);
    crest_conn_info_t info;
    crest_conn_get_info(c, &info);
    assert_int_equal(info.messages_in, m->messages);
    assert_int_equal(info.input_bytes, 0);
    if (m->sc == LINE_TO_LENGTH) {
        char ok[3];
        int end;
        assert_int_equal(tu_raw_recv(loop, fd, ok, 3, &end), 3);
        assert_memory_equal(ok, "OK\n", 3);
    }
    close(fd);
    RUN_UNTIL(loop, w->closed == closed + 1);
    assert_int_equal(w->why, CREST_CLOSE_PEER_EOF);
    assert_int_equal(w->new_opened, 0);
    assert_false(w->cb_in_call);
}

static void test_switch_every_boundary(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    for (size_t k = 0; k < sizeof models / sizeof models[0]; k++) {
        const struct model *m = &models[k];
        struct sw *w = calloc(1, sizeof *w);
        crest_listen_opts_t lo;
        crest_listen_opts_init(&lo);
        lo.conn.framing.kind = m->kind;
        lo.conn.framing.header_bytes = m->hb;
        crest_listener_t *l;
        char addr[CREST_ADDR_STRLEN];
        assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &first, w, &l), 0);
        crest_listener_address(l, addr, sizeof addr);
        run_split(loop, addr, w, m, 0);
        for (long split = 1; split < (long)m->len; split++)
            run_split(loop, addr, w, m, split);
        run_split(loop, addr, w, m, -1);
        /* every connection copied the listener's settings before changing
         * them: the listener's counters still count each one */
        crest_listener_stats_t ls;
        crest_listener_get_stats(l, &ls);
        assert_int_equal(ls.accepted, (uint64_t)m->len + 1);
        assert_int_equal(ls.active, 0);
        crest_listener_close(l);
        tu_spin(loop, 2);
        free(w);
    }
    tu_finish_conns(loop);
}

/* The upgrade of the brief: the LINE handshake and the LENGTH frames in one
 * write, so in one read; every frame goes to the new handler, which
 * answers in the new framing. */
struct kv {
    int frames, old_msgs, new_open;
    bool closed;
};

static int kv_frame(crest_conn_t *c, const uint8_t *m, size_t n) {
    struct kv *k = crest_conn_handler_ctx(c);
    k->frames++;
    assert_int_equal(crest_conn_write_message(c, m, n), 0); /* echo, framed */
    return 0;
}

static void kv_new_open(crest_conn_t *c) {
    struct kv *k = crest_conn_handler_ctx(c);
    k->new_open++;
}

static void kv_close(crest_conn_t *c, crest_close_reason_t r, int e) {
    (void)r;
    (void)e;
    struct kv *k = crest_conn_handler_ctx(c);
    k->closed = true;
}

static int kv_line(crest_conn_t *c, const uint8_t *m, size_t n) {
    static const crest_handler_t framed = {
        .on_open = kv_new_open, .on_message = kv_frame, .on_close = kv_close};
    struct kv *old = crest_conn_handler_ctx(c);
    old->old_msgs++;
    if (n == 7 && memcmp(m, "UPGRADE", 7) == 0) {
        crest_conn_opts_t o;
        crest_conn_get_opts(c, &o);
        o.framing.kind = CREST_FRAMING_LENGTH;
        o.framing.header_bytes = 4;
        o.framing.max_message = 0;
        struct kv *nk = old + 1; /* the new handler's context */
        assert_int_equal(crest_conn_upgrade(c, &framed, nk, &o), 0);
        assert_ptr_equal(crest_conn_handler_ctx(c), nk);
    }
    return 0;
}

static void test_upgrade_line_to_length_one_read(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct kv k[2];
    memset(k, 0, sizeof k);
    static const crest_handler_t line = {.on_message = kv_line, .on_close = kv_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &line, &k[0], &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    /* 200 frames of 0..199 bytes after the handshake, in one send */
    uint8_t *buf = malloc(64 * 1024);
    size_t len = 0;
    memcpy(buf, "UPGRADE\n", 8);
    len = 8;
    for (uint32_t i = 0; i < 200; i++) {
        buf[len++] = 0;
        buf[len++] = 0;
        buf[len++] = (uint8_t)(i >> 8);
        buf[len++] = (uint8_t)i;
        tu_pattern(buf + len, i, i);
        len += i;
    }
    int fd = tu_raw_connect(addr, 0);
    assert_true(send(fd, buf, len, 0) == (ssize_t)len); /* one write: fits the socket */
    uint8_t *back = malloc(len);
    int end;
    assert_int_equal(tu_raw_recv(loop, fd, back, len - 8, &end), len - 8);
    assert_memory_equal(back, buf + 8, len - 8); /* every frame, echoed framed */
    assert_int_equal(k[0].old_msgs, 1);
    assert_int_equal(k[1].frames, 200);
    assert_int_equal(k[1].new_open, 0);
    close(fd);
    RUN_UNTIL(loop, k[1].closed); /* the new handler's on_close */
    assert_false(k[0].closed);
    crest_listener_close(l);
    free(buf);
    free(back);
    tu_finish_conns(loop);
}

/* A change made outside delivery (here, from main between iterations):
 * the partial line already buffered is parsed anew on the next iteration,
 * never inside the call. */
static void test_switch_outside_delivery(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw *w = calloc(1, sizeof *w);
    w->sc = LINE_TO_RAW;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &first, w, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, w->opened == 1);
    tu_raw_send_all(loop, fd, "one\npart", 8);
    RUN_UNTIL(loop, bytes_in(w->c) == 8);
    assert_string_equal(w->events, "m3:one;");
    crest_conn_info_t i;
    crest_conn_get_info(w->c, &i);
    assert_int_equal(i.input_bytes, 4);
    crest_conn_opts_t o;
    crest_conn_get_opts(w->c, &o);
    o.framing.kind = CREST_FRAMING_RAW;
    w->in_call = true;
    assert_int_equal(crest_conn_upgrade(w->c, &raw_only, w, &o), 0);
    w->in_call = false;
    assert_int_equal(w->raw_len, 0); /* nothing inside the call */
    RUN_UNTIL(loop, w->raw_len == 4);
    assert_memory_equal(w->raw, "part", 4);
    tu_raw_send_all(loop, fd, "more\n", 5);
    RUN_UNTIL(loop, w->raw_len == 9);
    assert_memory_equal(w->raw, "partmore\n", 9);
    assert_false(w->cb_in_call);
    close(fd);
    RUN_UNTIL(loop, w->closed == 1);
    crest_listener_close(l);
    free(w);
    tu_finish_conns(loop);
}

/* ---- errors, and what a failed call leaves ---------------------------------- */

static int get_int(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

static void test_errors_and_socket_options(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw *w = calloc(1, sizeof *w);
    w->sc = RAW_TO_LINE;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    static const crest_handler_t raw = {.on_open = sw_open, .on_data = new_data, .on_close = sw_close};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &raw, w, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0), fd2 = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, w->opened == 2);
    crest_conn_t *c = w->c; /* the second */
    int sfd = crest_conn_fd(c);
    crest_conn_opts_t before, o, other;
    assert_int_equal(crest_conn_get_opts(c, &before), 0);
    assert_int_equal(crest_conn_get_opts(c, NULL), -EINVAL);
    assert_int_equal(crest_conn_set_opts(c, NULL), -EINVAL);
    assert_int_equal(crest_conn_set_handler(c, NULL, NULL), -EINVAL);
    assert_int_equal(crest_conn_upgrade(c, NULL, NULL, NULL), -EINVAL);

    /* the handler has no on_message: LINE is refused */
    o = before;
    o.framing.kind = CREST_FRAMING_LINE;
    assert_int_equal(crest_conn_set_opts(c, &o), -EINVAL);
    assert_int_equal(crest_conn_set_handler(c, &msg_only, w), -EINVAL);
    /* a bad framing, a negative buffer or keepalive timing */
    o = before;
    o.framing.kind = CREST_FRAMING_LENGTH;
    o.framing.header_bytes = 3;
    assert_int_equal(crest_conn_upgrade(c, &msg_only, w, &o), -EINVAL);
    o = before;
    o.sndbuf = -1;
    assert_int_equal(crest_conn_set_opts(c, &o), -EINVAL);
    o = before;
    o.keepalive = true;
    o.keepalive_idle_s = -5;
    assert_int_equal(crest_conn_set_opts(c, &o), -EINVAL);

    /* a value the kernel refuses (TCP_KEEPCNT above 127), after an idle
     * time it took: that one is set back, nothing changes */
    int idle0 = get_int(sfd, IPPROTO_TCP, TCP_KEEPIDLE);
    o = before;
    o.keepalive = true;
    o.keepalive_idle_s = idle0 + 17;
    o.keepalive_count = 100000;
    o.idle_timeout_ms = 5;
    assert_int_equal(crest_conn_set_opts(c, &o), -EINVAL);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_KEEPIDLE), idle0);
    assert_int_equal(get_int(sfd, SOL_SOCKET, SO_KEEPALIVE), 0);
    assert_int_equal(crest_conn_get_opts(c, &o), 0);
    assert_memory_equal(&o, &before, sizeof o);

    /* socket options that differ are applied */
    o = before;
    o.nodelay = false;
    o.keepalive = true;
    o.keepalive_idle_s = 30;
    o.keepalive_interval_s = 5;
    o.keepalive_count = 3;
    o.user_timeout_ms = 1234;
    o.sndbuf = 65536;
    o.rcvbuf = 32768;
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_NODELAY), 1);
    assert_int_equal(crest_conn_set_opts(c, &o), 0);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_NODELAY), 0);
    assert_int_equal(get_int(sfd, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_KEEPIDLE), 30);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_KEEPCNT), 3);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_USER_TIMEOUT), 1234);
    assert_true(get_int(sfd, SOL_SOCKET, SO_SNDBUF) >= 65536);
    assert_true(get_int(sfd, SOL_SOCKET, SO_RCVBUF) >= 32768);
    crest_conn_opts_t now;
    assert_int_equal(crest_conn_get_opts(c, &now), 0);
    assert_false(now.nodelay);
    assert_int_equal(now.user_timeout_ms, 1234);
    /* and back off */
    o.keepalive = false;
    o.user_timeout_ms = 0;
    assert_int_equal(crest_conn_set_opts(c, &o), 0);
    assert_int_equal(get_int(sfd, SOL_SOCKET, SO_KEEPALIVE), 0);
    assert_int_equal(get_int(sfd, IPPROTO_TCP, TCP_USER_TIMEOUT), 0);

    /* the other connection of the listener is untouched */
    assert_ptr_not_equal(w->all[0], c);
    assert_int_equal(crest_conn_get_opts(w->all[0], &other), 0);
    assert_memory_equal(&other, &before, sizeof other);
    assert_int_equal(get_int(crest_conn_fd(w->all[0]), IPPROTO_TCP, TCP_NODELAY), 1);
    close(fd);
    close(fd2);
    RUN_UNTIL(loop, w->closed == 2);
    crest_listener_close(l);
    free(w);
    tu_finish_conns(loop);
}

/* CLOSING (a close asked for inside the callback) and CLOSED (on_close):
 * -ENOTCONN, nothing changed. */
static int closing_msg(crest_conn_t *c, const uint8_t *m, size_t n) {
    (void)m;
    (void)n;
    crest_conn_opts_t o;
    crest_conn_get_opts(c, &o);
    crest_conn_close(c);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CLOSING);
    o.framing.kind = CREST_FRAMING_RAW;
    assert_int_equal(crest_conn_set_opts(c, &o), -ENOTCONN);
    assert_int_equal(crest_conn_set_handler(c, &msg_only, NULL), -ENOTCONN);
    assert_int_equal(crest_conn_upgrade(c, &raw_only, NULL, &o), -ENOTCONN);
    crest_conn_get_opts(c, &o);
    assert_int_equal(o.framing.kind, CREST_FRAMING_LINE);
    return 0;
}

static void test_not_connected(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw *w = calloc(1, sizeof *w);
    static const crest_handler_t h = {
        .on_open = sw_open, .on_message = closing_msg, .on_close = sw_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing.kind = CREST_FRAMING_LINE;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, w, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    tu_raw_send_all(loop, fd, "bye\nmore\n", 9);
    RUN_UNTIL(loop, w->closed == 1); /* sw_close checks CLOSED too */
    assert_int_equal(w->why, CREST_CLOSE_LOCAL);
    close(fd);
    crest_listener_close(l);
    free(w);
    tu_finish_conns(loop);
}

/* ---- the listener's accounting, with a connection's own copy --------------- */

static void test_copy_keeps_listener_counts(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct sw *w = calloc(1, sizeof *w);
    static const crest_handler_t raw = {.on_open = sw_open, .on_data = new_data, .on_close = sw_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.max_conns = 1;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &raw, w, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int a = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, w->opened == 1);
    crest_conn_opts_t o;
    crest_conn_get_opts(w->c, &o);
    o.idle_timeout_ms = 60000;
    assert_int_equal(crest_conn_set_opts(w->c, &o), 0); /* its own copy now */
    static int ctx2;
    static const crest_handler_t raw2 = {.on_data = new_data, .on_close = sw_close};
    assert_int_equal(crest_conn_set_handler(w->c, &raw2, w), 0);
    (void)ctx2;
    /* still counted by the listener: a second client is refused */
    int b = tu_raw_connect(addr, 0);
    crest_listener_stats_t ls;
    for (int i = 0; i < RUN_MAX_ITER; i++) {
        crest_listener_get_stats(l, &ls);
        if (ls.refused_limit == 1)
            break;
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    }
    assert_int_equal(ls.refused_limit, 1);
    assert_int_equal(ls.active, 1);
    close(b);
    close(a);
    RUN_UNTIL(loop, w->closed == 1); /* the new handler's on_close (same function) */
    crest_listener_get_stats(l, &ls);
    assert_int_equal(ls.active, 0);
    /* room again */
    int c2 = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, w->opened == 2);
    crest_listener_get_stats(l, &ls);
    assert_int_equal(ls.accepted, 2);
    assert_int_equal(ls.active, 1);
    crest_conn_get_opts(w->c, &o);
    assert_int_equal(o.idle_timeout_ms, 0); /* the listener's own settings */
    close(c2);
    RUN_UNTIL(loop, w->closed == 2);
    crest_listener_close(l);
    free(w);
    tu_finish_conns(loop);
}

/* ---- timeouts changed live -------------------------------------------------- */

struct tmo {
    crest_conn_t *c;
    int opened, closed;
    crest_close_reason_t why;
    uint64_t closed_ns;
};

static void t_open(crest_conn_t *c) {
    struct tmo *t = crest_conn_handler_ctx(c);
    t->c = c;
    t->opened++;
}

static void t_close(crest_conn_t *c, crest_close_reason_t why, int err) {
    (void)err;
    struct tmo *t = crest_conn_handler_ctx(c);
    t->why = why;
    t->closed++;
    t->closed_ns = tu_mono_ns();
    t->c = NULL;
}

static ssize_t t_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static const crest_handler_t t_handler = {.on_open = t_open, .on_data = t_data, .on_close = t_close};

static crest_listener_t *t_listen(crest_loop_t *loop, struct tmo *t, uint32_t idle_ms,
                                  char *addr) {
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.idle_timeout_ms = idle_ms;
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &t_handler, t, &l), 0);
    crest_listener_address(l, addr, CREST_ADDR_STRLEN);
    return l;
}

static void set_idle(crest_conn_t *c, uint32_t ms) {
    crest_conn_opts_t o;
    crest_conn_get_opts(c, &o);
    o.idle_timeout_ms = ms;
    assert_int_equal(crest_conn_set_opts(c, &o), 0);
}

/* Shortened (from 60 s, or from none) it fires at the new value, counted
 * from the last activity; lengthened it waits for the new value; set to 0
 * it never fires. */
static void test_idle_timeout_changed_live(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tmo t = {0};
    char addr[CREST_ADDR_STRLEN];
    for (int round = 0; round < 3; round++) {
        /* 0: none -> 50 ms; 1: 60 s -> 50 ms; 2: 50 ms -> 300 ms */
        uint32_t from = round == 0 ? 0 : round == 1 ? 60000 : 50;
        uint32_t to = round == 2 ? 300 : 50;
        crest_listener_t *l = t_listen(loop, &t, from, addr);
        uint64_t t0 = tu_mono_ns();
        int fd = tu_raw_connect(addr, 0);
        RUN_UNTIL(loop, t.opened == round + 1);
        set_idle(t.c, to);
        RUN_UNTIL(loop, t.closed == round + 1);
        assert_int_equal(t.why, CREST_CLOSE_IDLE_TIMEOUT);
        /* never early (1 ms for the loop clock's rounding) */
        assert_true(t.closed_ns - t0 >= (uint64_t)(to - 1) * 1000000u);
        close(fd);
        crest_listener_close(l);
    }
    /* 50 ms -> 0: still open well past 50 ms; then the client leaves */
    crest_listener_t *l = t_listen(loop, &t, 50, addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, t.opened == 4);
    set_idle(t.c, 0);
    uint64_t t0 = tu_mono_ns();
    while (tu_mono_ns() - t0 < 300000000u)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    assert_int_equal(t.closed, 3);
    close(fd);
    RUN_UNTIL(loop, t.closed == 4);
    assert_int_equal(t.why, CREST_CLOSE_PEER_EOF);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* The input idle timeout: a server keeps writing to a client that reads
 * but never sends.  The plain idle timeout (2 s) never fires (output is
 * activity); the input idle one, set live, does, and the debug log says
 * which it was. */
static void test_input_idle_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_log_level_t lvl = crest_log_get_level();
    crest_log_set_level(CREST_LOG_DEBUG);
    struct tmo t = {0};
    char addr[CREST_ADDR_STRLEN];
    crest_listener_t *l = t_listen(loop, &t, 2000, addr);
    uint64_t t0 = tu_mono_ns();
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, t.opened == 1);
    crest_conn_opts_t o;
    crest_conn_get_opts(t.c, &o);
    assert_int_equal(o.input_idle_timeout_ms, 0);
    o.input_idle_timeout_ms = 150;
    assert_int_equal(crest_conn_set_opts(t.c, &o), 0);
    int writes = 0;
    for (int i = 0; i < RUN_MAX_ITER && t.closed == 0; i++) {
        assert_true(crest_loop_run_once(loop, 5) >= 0);
        if (t.c) {
            assert_int_equal(crest_conn_write(t.c, "x", 1), 0);
            writes++;
        }
        assert_true(drain(fd) || t.closed);
    }
    assert_int_equal(t.closed, 1);
    assert_int_equal(t.why, CREST_CLOSE_IDLE_TIMEOUT);
    assert_true(writes > 0);
    assert_true(t.closed_ns - t0 >= 149u * 1000000u);
    assert_true(tu_log_contains("idle timeout: no input for"));
    assert_false(tu_log_contains("no input or output"));
    crest_log_set_level(lvl);
    close(fd);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* Input keeps it alive: the same timeout does not fire while the client
 * sends, even though the server writes nothing. */
static void test_input_idle_reset_by_input(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tmo t = {0};
    char addr[CREST_ADDR_STRLEN];
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.input_idle_timeout_ms = 1500; /* 150 times the gap between bytes */
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &t_handler, &t, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, t.opened == 1);
    /* a byte every 10 ms for 2 s: longer than the timeout */
    uint64_t t0 = tu_mono_ns(), last = t0;
    unsigned sent = 0;
    while (tu_mono_ns() - t0 < 2000000000u && t.closed == 0) {
        if (tu_mono_ns() - last >= 10000000u) {
            tu_raw_send_all(loop, fd, "y", 1);
            sent++;
            last = tu_mono_ns();
        }
        assert_true(crest_loop_run_once(loop, 5) >= 0);
    }
    /* only a stall of the machine longer than the timeout between two
     * bytes could close it: then the test says so */
    if (t.closed)
        fail_msg("closed after %u bytes: a gap over 1.5 s (machine stalled?)", sent);
    close(fd);
    RUN_UNTIL(loop, t.closed == 1);
    assert_int_equal(t.why, CREST_CLOSE_PEER_EOF);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* ---- keep_reading changed while paused above high water -------------------- */

static void kr_open(crest_conn_t *c) {
    static uint8_t blk[1 << 20];
    t_open(c);
    assert_int_equal(crest_conn_write(c, blk, sizeof blk), 0); /* past high water */
}

static void test_keep_reading_live(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tmo t = {0};
    static const crest_handler_t h = {.on_open = kr_open, .on_data = t_data, .on_close = t_close};
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.high_water = 64 * 1024;
    lo.conn.low_water = 16 * 1024;
    lo.conn.sndbuf = 4096;
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, &t, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 4096);
    RUN_UNTIL(loop, t.opened == 1);
    crest_conn_info_t i;
    crest_conn_get_info(t.c, &i);
    assert_true(i.above_high_water && i.reading_paused);
    tu_raw_send_all(loop, fd, "0123456789", 10);
    tu_spin(loop, 5);
    assert_int_equal(bytes_in(t.c), 0); /* paused: not read */
    crest_conn_opts_t o;
    crest_conn_get_opts(t.c, &o);
    o.keep_reading = true;
    assert_int_equal(crest_conn_set_opts(t.c, &o), 0);
    RUN_UNTIL(loop, bytes_in(t.c) == 10);
    crest_conn_get_info(t.c, &i);
    assert_true(i.above_high_water);
    assert_false(i.reading_paused);
    close(fd);
    RUN_UNTIL(loop, t.closed == 1);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

/* ---- a Unix-domain connection: TCP options are ignored, as at creation ----- */

static void test_unix_tcp_options_ignored(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct tmo t = {0};
    char path[64], addr[CREST_ADDR_STRLEN];
    snprintf(path, sizeof path, "unix:/tmp/crest-live-%d.sock", (int)getpid());
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, path, NULL, &t_handler, &t, &l), 0);
    crest_listener_address(l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, t.opened == 1);
    crest_conn_opts_t o;
    crest_conn_get_opts(t.c, &o);
    o.nodelay = !o.nodelay;
    o.keepalive = true;
    o.user_timeout_ms = 1000;
    o.rcvbuf = 65536;
    assert_int_equal(crest_conn_set_opts(t.c, &o), 0);
    assert_true(get_int(crest_conn_fd(t.c), SOL_SOCKET, SO_RCVBUF) >= 65536);
    close(fd);
    RUN_UNTIL(loop, t.closed == 1);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_switch_every_boundary),
        tu_test(test_upgrade_line_to_length_one_read),
        tu_test(test_switch_outside_delivery),
        tu_test(test_errors_and_socket_options),
        tu_test(test_not_connected),
        tu_test(test_copy_keeps_listener_counts),
        tu_test(test_idle_timeout_changed_live),
        tu_test(test_input_idle_timeout),
        tu_test(test_input_idle_reset_by_input),
        tu_test(test_keep_reading_live),
        tu_test(test_unix_tcp_options_ignored),
    };
    const char *filter = getenv("CREST_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
