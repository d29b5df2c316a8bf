/* Fuzz target: a connection's read path (and the write path behind it),
 * fed from a real socket whose bytes arrive in the splits the input
 * chooses, with socket errors injected where the input says.
 *
 * There is no public API to adopt an existing fd as a connection, so each
 * input gets a crest listener on a Unix-domain socket (one loop for the
 * whole process) and one client socket connected to it; the client is
 * driven by the input:
 *
 *   bytes 0-6  settings: framing (bits 0-1: RAW, LINE, LENGTH, LENGTH; bits
 *              2-3: a 1/2/4/8-byte header; bit 4: little-endian),
 *              max_message, read_budget,
 *              high/low water and keep_reading, max_input, and how the
 *              handler behaves (echo or not; RAW: consume part of what it
 *              is offered, or wait for more; reject messages that start
 *              with '!')
 *   then ops   WRITE n bytes (taken from the input; what the socket does
 *              not take is dropped), RUN the loop, READ the replies, make
 *              the server's next read(), send() or sendmsg() fail with an errno
 *              (EINTR, ECONNRESET, EIO, ENOMEM, ...), SHUT_WR, pause or
 *              resume the connection, and finally close or RST.
 *
 * read(), send() and sendmsg() are wrapped (-Wl,--wrap) for the connection's fd
 * only.  Only errors are injected: a short read or EAGAIN while data is
 * waiting would break the edge-triggered contract no real socket breaks
 * (conn.h), and the splits come from the writes themselves.
 *
 * Checks, for every input:
 *   - what the handler got is what the one-shot decoder
 *     (crest_framing_next over everything the client wrote) finds, in
 *     order, nothing lost, nothing invented: a prefix of it in general,
 *     all of it when the close was a clean EOF (LINE: plus the last line
 *     without "\n"), up to the bad message when it was "too large";
 *   - the replies the client read are a prefix of the echoes owed;
 *   - on_close ran exactly once, and only after on_open;
 *   - afterwards the loop has no connection, its buffer pool holds no
 *     bytes, and the fd registry is back to where it was.
 *
 * Once a bug: input buffered while reading was paused at the high
 * watermark was lost when the pause ended inside the read pass and the
 * next read() was EOF (tests/test_eof_after_pause.c; the inputs are in
 * fuzz/regressions/conn/). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <crest/crest.h>

#include "fuzz.h"

#define STREAM_MAX (1u << 20) /* bytes the client may write per input */

/* ---- injected errors ------------------------------------------------------ */

ssize_t __real_read(int fd, void *buf, size_t n);
ssize_t __real_sendmsg(int fd, const struct msghdr *msg, int flags);

static int target_fd = -1;
static int read_err, send_err;  /* the next call on target_fd fails with it */
static unsigned hard_failures;  /* injected errors other than EINTR */

ssize_t __wrap_read(int fd, void *buf, size_t n);
ssize_t __wrap_read(int fd, void *buf, size_t n) {
    if (fd >= 0 && fd == target_fd && read_err) {
        errno = read_err;
        hard_failures += read_err != EINTR;
        read_err = 0;
        return -1;
    }
    return __real_read(fd, buf, n);
}

ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (fd >= 0 && fd == target_fd && send_err) {
        errno = send_err;
        hard_failures += send_err != EINTR;
        send_err = 0;
        return -1;
    }
    return __real_sendmsg(fd, msg, flags);
}

/* crest sends one buffer with send(): the same injected errors. */
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags);
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    return __wrap_sendmsg(fd, &m, flags);
}

/* ---- growing byte buffers ---------------------------------------------------- */

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void put(struct bytes *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        FUZZ_CHECK(q != NULL);
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* ---- the server side ----------------------------------------------------------- */

struct server {
    crest_framing_t framing;
    bool echo, reject_bang;
    size_t raw_take;              /* RAW: consume at most this per call (0: all) */
    size_t raw_need;              /* RAW: return 0 while fewer are offered */
    crest_conn_t *conn;
    unsigned opens, closes;
    crest_close_reason_t reason;
    int err;
    struct bytes got;             /* RAW: consumed bytes; framed: messages,
                                     each as a 4-byte length and the bytes */
    unsigned messages;
    struct bytes owed;            /* the replies the handler wrote */
};

static struct server srv;

static void on_open(crest_conn_t *c) {
    FUZZ_CHECK(srv.opens == 0 && srv.closes == 0);
    srv.opens++;
    srv.conn = c;
    target_fd = crest_conn_fd(c);
}

static void reply(crest_conn_t *c, const uint8_t *p, size_t n, bool message) {
    if (!srv.echo)
        return;
    int rc = message ? crest_conn_write_message(c, p, n) : crest_conn_write(c, p, n);
    if (rc < 0)
        return; /* closing (-EPIPE, -ENOTCONN): nothing was taken */
    /* owed: what the client must see, framed as the connection frames */
    if (message && srv.framing.kind == CREST_FRAMING_LENGTH) {
        uint8_t hdr[8];
        int h = crest_framing_header(&srv.framing, n, hdr);
        FUZZ_CHECK(h > 0);
        put(&srv.owed, hdr, (size_t)h);
    }
    put(&srv.owed, p, n);
    if (message && srv.framing.kind == CREST_FRAMING_LINE)
        put(&srv.owed, "\n", 1);
}

static ssize_t on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    FUZZ_CHECK(srv.opens == 1 && srv.closes == 0 && len > 0);
    if (len < srv.raw_need)
        return 0;
    size_t take = srv.raw_take && srv.raw_take < len ? srv.raw_take : len;
    put(&srv.got, data, take);
    reply(c, data, take, false);
    return (ssize_t)take;
}

static int on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    if (getenv("FUZZ_DEBUG")) {
        fprintf(stderr, "on_message %zu: '", len);
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, msg[i] >= 32 && msg[i] < 127 ? "%c" : "\\x%02x", msg[i]);
        fprintf(stderr, "' state %d\n", (int)crest_conn_state(c));
    }
    FUZZ_CHECK(srv.opens == 1 && srv.closes == 0);
    uint32_t n = (uint32_t)len;
    put(&srv.got, &n, sizeof n);
    put(&srv.got, msg, len);
    srv.messages++;
    if (srv.reject_bang && len > 0 && msg[0] == '!')
        return -CREST_CLOSE_PROTOCOL_ERROR;
    reply(c, msg, len, true);
    return 0;
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    FUZZ_CHECK(srv.opens == 1 && srv.closes == 0);
    srv.closes++;
    srv.reason = reason;
    srv.err = err;
    srv.conn = NULL;
}

static const crest_handler_t raw_handler = {
    .on_open = on_open, .on_data = on_data, .on_close = on_close};
static const crest_handler_t msg_handler = {
    .on_open = on_open, .on_message = on_message, .on_close = on_close};

/* ---- the process-wide loop ---------------------------------------------------- */

static crest_loop_t *loop;
static char sock_path[108];
static uint64_t base_fds;

static void cleanup(void) {
    if (loop) {
        crest_loop_destroy(loop);
        loop = NULL;
        unlink(sock_path);
    }
}

static void init_once(void) {
    if (loop)
        return;
    crest_log_set_level(CREST_LOG_ERROR); /* rejections are logged as warnings */
    FUZZ_CHECK(crest_loop_create(&loop) == 0);
    snprintf(sock_path, sizeof sock_path, "/tmp/crest-fuzz-conn-%d.sock", (int)getpid());
    base_fds = crest_fd_open_count();
    atexit(cleanup);
}

static void spin(int n) {
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(crest_loop_run_once(loop, 0) >= 0);
}

/* ---- checks ------------------------------------------------------------------- */

/* The messages the one-shot decoder finds in the whole stream, in srv.got's
 * format; *end says why it stopped. */
static void decode_all(const struct bytes *s, struct bytes *out, int *end, size_t *rest_off) {
    size_t off = 0;
    *end = CREST_FRAMING_NEED_MORE;
    while (off < s->len) {
        crest_frame_t fr;
        int rc = crest_framing_next(&srv.framing, s->p + off, s->len - off, &fr);
        if (rc != 1) {
            *end = rc;
            break;
        }
        uint32_t n = (uint32_t)fr.length;
        put(out, &n, sizeof n);
        put(out, s->p + off + fr.offset, fr.length);
        off += fr.consumed;
    }
    *rest_off = off;
}

static bool is_prefix(const struct bytes *a, const struct bytes *b) {
    return a->len <= b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* A close for "peer EOF" means the server read to the end of the stream
 * (the first reason wins, and an injected error would have been it), so
 * then everything must have been delivered. */
static void check_delivery(const struct bytes *stream) {
    bool eof = srv.reason == CREST_CLOSE_PEER_EOF;
    if (srv.framing.kind == CREST_FRAMING_RAW) {
        FUZZ_CHECK(is_prefix(&srv.got, stream));
        if (eof && srv.raw_need <= 1)
            FUZZ_CHECK(srv.got.len == stream->len);
        return;
    }
    struct bytes want = {0};
    int end;
    size_t rest;
    decode_all(stream, &want, &end, &rest);
    if (srv.framing.kind == CREST_FRAMING_LINE && end == CREST_FRAMING_NEED_MORE &&
        rest < stream->len) {
        /* The last line, without "\n", is delivered at EOF ("\r" dropped).
         * The client always ends with a close, so the server may have read
         * that EOF even when the close ended up with another reason (its
         * reply to that line found the client gone: peer reset). */
        size_t n = stream->len - rest;
        if (stream->p[stream->len - 1] == '\r')
            n--;
        uint32_t n32 = (uint32_t)n;
        put(&want, &n32, sizeof n32);
        put(&want, stream->p + rest, n);
    }
    if (!is_prefix(&srv.got, &want))
        fprintf(stderr, "conn: delivered %zu bytes of messages, not a prefix of the %zu the "
                "decoder finds (reason %s)\n", srv.got.len, want.len,
                crest_close_reason_name(srv.reason));
    FUZZ_CHECK(is_prefix(&srv.got, &want));
    if (srv.reason == CREST_CLOSE_TOO_LARGE) {
        FUZZ_CHECK(end == CREST_FRAMING_TOO_LARGE);
        FUZZ_CHECK(srv.got.len == want.len);
    }
    if (eof)
        FUZZ_CHECK(srv.got.len == want.len);
    free(want.p);
}

/* ---- one input --------------------------------------------------------------- */

static const int read_errors[] = {EINTR, ECONNRESET, EIO, ENOMEM, ETIMEDOUT, EPIPE, ENOBUFS};
static const int send_errors[] = {EINTR, EPIPE, ECONNRESET, ENOBUFS, EIO, ENOMEM};

/* Read what the client has been sent; false at EOF or an error. */
static bool client_read(int fd, struct bytes *in) {
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            put(in, buf, (size_t)n);
            continue;
        }
        return n < 0 && (errno == EAGAIN || errno == EINTR);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t widths[4] = {1, 2, 4, 8};
    init_once();
    struct fuzz_in in = {data, size};
    memset(&srv, 0, sizeof srv);
    target_fd = -1;
    read_err = send_err = 0;
    hard_failures = 0;

    /* settings */
    uint8_t b0 = fuzz_u8(&in), b1 = fuzz_u8(&in), b2 = fuzz_u8(&in), b3 = fuzz_u8(&in);
    uint8_t b4 = fuzz_u8(&in), b5 = fuzz_u8(&in), b6 = fuzz_u8(&in);
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    crest_conn_opts_t *o = &lo.conn;
    switch (b0 & 3) {
    case 0: o->framing.kind = CREST_FRAMING_RAW; break;
    case 1: o->framing.kind = CREST_FRAMING_LINE; break;
    default: /* 2 and 3 */
        o->framing.kind = CREST_FRAMING_LENGTH;
        o->framing.header_bytes = widths[(b0 >> 2) & 3];
        o->framing.little_endian = (b0 >> 4) & 1;
        break;
    }
    o->framing.max_message = b1 == 255 ? 0 : (size_t)b1 * 8 + 1; /* 0: the 64 KiB default */
    o->read_budget = (size_t)(b2 & 0x3f) * 512 + 1;
    o->high_water = (size_t)(b3 & 0x7f) * 256 + 1;
    o->low_water = o->high_water / ((b3 >> 7) + 2);
    o->keep_reading = b4 & 1;
    o->max_input = (size_t)b6 * 64 + 1;
    srv.framing = o->framing;
    if (srv.framing.kind != CREST_FRAMING_RAW && srv.framing.max_message == 0)
        srv.framing.max_message = CREST_FRAMING_DEFAULT_MAX;
    srv.echo = b4 & 2;
    srv.reject_bang = b4 & 4;
    srv.raw_take = b4 & 8 ? (size_t)b5 + 1 : 0;
    srv.raw_need = b4 & 16 ? (size_t)(b5 % 100) : 0;

    unlink(sock_path);
    char addr[sizeof sock_path + 8];
    snprintf(addr, sizeof addr, "unix:%s", sock_path);
    crest_listener_t *l = NULL;
    FUZZ_CHECK(crest_listen(loop, addr, &lo,
                            srv.framing.kind == CREST_FRAMING_RAW ? &raw_handler : &msg_handler,
                            NULL, &l) == 0);

    int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(cfd >= 0);
    int small = 4096; /* small buffers: more splits, backpressure sooner */
    setsockopt(cfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(cfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, sock_path, strlen(sock_path) + 1);
    FUZZ_CHECK(connect(cfd, (struct sockaddr *)&sun, sizeof sun) == 0);
    FUZZ_CHECK(fcntl(cfd, F_SETFL, O_NONBLOCK) == 0);
    spin(2);
    FUZZ_CHECK(srv.opens == 1);

    struct bytes stream = {0}, replies = {0};
    bool shut = false, paused = false, client_ok = true, rst = false;
    while (in.n > 0 && srv.closes == 0) {
        uint8_t op = fuzz_u8(&in);
        switch (op % 9) {
        case 0:
        case 1: { /* write */
            size_t n = op % 9 == 0 ? (size_t)fuzz_u8(&in) + 1 : (size_t)fuzz_u16(&in) + 1;
            const uint8_t *p = fuzz_bytes(&in, n, &n);
            if (shut || stream.len + n > STREAM_MAX || n == 0)
                break;
            ssize_t w = send(cfd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                put(&stream, p, (size_t)w);
            break;
        }
        case 2: /* run the loop */
            spin(1 + fuzz_u8(&in) % 4);
            break;
        case 3: /* read the replies */
            client_ok = client_read(cfd, &replies) && client_ok;
            break;
        case 4: /* the server's next read fails */
            read_err = read_errors[fuzz_u8(&in) % (sizeof read_errors / sizeof read_errors[0])];
            break;
        case 5: /* the server's next sendmsg fails */
            send_err = send_errors[fuzz_u8(&in) % (sizeof send_errors / sizeof send_errors[0])];
            break;
        case 6: /* half-close */
            if (!shut)
                shutdown(cfd, SHUT_WR);
            shut = true;
            break;
        case 7: /* the handler's own flow control */
            if (srv.conn) {
                if (paused)
                    crest_conn_resume(srv.conn);
                else
                    crest_conn_pause(srv.conn);
                paused = !paused;
            }
            break;
        default: /* the end: close, or RST */
            rst = fuzz_u8(&in) & 1;
            in.n = 0;
            break;
        }
    }
    if (paused && srv.conn)
        crest_conn_resume(srv.conn);
    /* Let the server take in everything sent so far, reading the replies
     * meanwhile so that its output never blocks it. */
    for (int i = 0; i < 64 && srv.closes == 0; i++) {
        spin(1);
        client_ok = client_read(cfd, &replies) && client_ok;
    }
    if (rst) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (!shut) {
        shutdown(cfd, SHUT_WR);
    }
    /* A clean end: EOF after everything was read. */
    for (int i = 0; i < 256 && srv.closes == 0 && !rst; i++) {
        spin(1);
        client_ok = client_read(cfd, &replies) && client_ok;
    }
    close(cfd);
    /* The client is gone: the server must notice (EOF, or an error on its
     * next write) and close, whatever state the connection was in. */
    for (int i = 0; i < 256 && srv.closes == 0; i++)
        spin(1);
    if (srv.closes != 1)
        fprintf(stderr, "conn: still open after the client closed (state %d, %zu bytes "
                "queued)\n", srv.conn ? (int)crest_conn_state(srv.conn) : -1,
                srv.conn ? crest_conn_output_bytes(srv.conn) : 0);
    FUZZ_CHECK(srv.closes == 1);
    crest_listener_close(l);
    spin(2);

    /* nothing lost, nothing invented */
    check_delivery(&stream);
    /* Without an injected error or an RST, the client only closed after
     * the server had: the close is EOF, or the input's own fault. */
    if (hard_failures == 0 && !rst) {
        if (srv.reason != CREST_CLOSE_PEER_EOF && srv.reason != CREST_CLOSE_TOO_LARGE &&
            srv.reason != CREST_CLOSE_PROTOCOL_ERROR)
            fprintf(stderr, "conn: closed for %s (%s) with no error injected\n",
                    crest_close_reason_name(srv.reason), crest_strerror(-srv.err));
        FUZZ_CHECK(srv.reason == CREST_CLOSE_PEER_EOF || srv.reason == CREST_CLOSE_TOO_LARGE ||
                   srv.reason == CREST_CLOSE_PROTOCOL_ERROR);
    }
    FUZZ_CHECK(is_prefix(&replies, &srv.owed));

    /* nothing left behind */
    crest_conn_stats_t cs;
    crest_loop_conn_stats(loop, &cs);
    FUZZ_CHECK(cs.active == 0);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(loop, &bs);
    FUZZ_CHECK(bs.in_use == 0);
    FUZZ_CHECK(crest_fd_open_count() == base_fds);

    hard_failures = 0;
    target_fd = -1;
    read_err = send_err = 0;
    (void)client_ok;
    free(stream.p);
    free(replies.p);
    free(srv.got.p);
    free(srv.owed.p);
    return 0;
}
