/* The byte paths of a connection: the io callback, reading and delivering
 * input (raw or framed), and writing (direct, gathered, queued).
 *
 * Readiness is cached: `readable` is set by an EPOLLIN edge and cleared by
 * a short read or EAGAIN; `writable` is set by an EPOLLOUT edge and cleared
 * by a short write or EAGAIN.  A short read means the socket is drained,
 * unless the peer has hung up (RDHUP/HUP), in which case we read on until
 * read() returns 0 so the EOF is not missed. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn_int.h"

#define IOV_BATCH 64

static crest_close_reason_t reason_for_errno(int err) {
    switch (err) {
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return CREST_CLOSE_PEER_RESET;
    case ENOMEM:
    case ENOBUFS:
        return CREST_CLOSE_NO_MEMORY;
    default:
        return CREST_CLOSE_IO_ERROR;
    }
}

/* The socket failed: nothing more can be sent or received. */
static void socket_failed(struct crest_conn *c, int err) {
    c->dead = true;
    c->readable = c->writable = false;
    crest__conn_request_close(c, reason_for_errno(err), err);
}

/* ---- writing ------------------------------------------------------------ */

static void check_low_water(struct crest_conn *c) {
    if (!c->paused_high || c->out_bytes > c->ep->opts.low_water)
        return;
    c->paused_high = false;
    if (c->ep->handler.on_drain && c->state != CREST_CONN_CLOSING) {
        c->depth++;
        c->ep->handler.on_drain(c);
        c->depth--;
    }
    crest__conn_resume_input(c);
}

static void check_high_water(struct crest_conn *c) {
    if (c->paused_high || c->out_bytes <= c->ep->opts.high_water)
        return;
    c->paused_high = true;
    c->io.loop->conn_stats.paused++;
    if (c->ep->handler.on_high_water) {
        c->depth++;
        c->ep->handler.on_high_water(c);
        c->depth--;
    }
}

static void after_progress(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    c->last_active = loop->now_ms;
    if (c->out_bytes == 0) {
        c->write_stalled = 0;
        if (c->shut_pending && !c->shut_done) {
            c->shut_done = true;
            c->shut_pending = false;
            if (shutdown(c->io.fd, SHUT_WR) < 0 && errno != ENOTCONN)
                socket_failed(c, errno);
        }
    } else {
        /* A stall is measured from the last progress. */
        c->write_stalled = loop->now_ms;
    }
    check_low_water(c);
}

/* Send as much of the queue as the socket takes.  0 or -errno (the
 * connection is then closing). */
int crest__conn_flush(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    while (c->out_head && c->writable && !c->dead) {
        struct iovec iov[IOV_BATCH];
        int n = 0;
        size_t want = 0;
        for (struct crest__chunk *k = c->out_head; k && n < IOV_BATCH; k = k->next) {
            iov[n].iov_base = k->data + k->start;
            iov[n].iov_len = crest__chunk_len(k);
            want += iov[n].iov_len;
            n++;
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t sent = sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        loop->conn_stats.writes++;
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                c->writable = false;
                break;
            }
            int err = errno;
            socket_failed(c, err);
            return -err;
        }
        loop->conn_stats.bytes_out += (uint64_t)sent;
        c->out_bytes -= (uint32_t)sent;
        size_t left = (size_t)sent;
        while (left > 0) {
            struct crest__chunk *k = c->out_head;
            size_t len = crest__chunk_len(k);
            if (left < len) {
                k->start += (uint32_t)left;
                break;
            }
            left -= len;
            c->out_head = k->next;
            crest__chunk_put(&loop->pool, k);
        }
        if (!c->out_head)
            c->out_tail = NULL;
        if ((size_t)sent < want)
            c->writable = false; /* the socket buffer is full */
    }
    if (c->out_bytes == 0 || !c->writable) {
        bool stalled_before = c->write_stalled != 0;
        after_progress(c);
        if (c->out_bytes && !stalled_before && c->ep->opts.write_timeout_ms)
            crest__conn_arm_timer(c);
    }
    return 0;
}

/* Copy bytes to the end of the output queue. */
static int enqueue(struct crest_conn *c, const uint8_t *p, size_t len) {
    struct crest__pool *pool = &c->io.loop->pool;
    if (len > UINT32_MAX - c->out_bytes)
        return -ENOBUFS; /* over 4 GiB queued: the peer is not reading */
    while (len > 0) {
        struct crest__chunk *k = c->out_tail;
        if (!k || crest__chunk_space(k) == 0) {
            k = crest__chunk_get(pool, CREST__CHUNK_SIZE);
            if (!k)
                return -ENOMEM;
            if (c->out_tail)
                c->out_tail->next = k;
            else
                c->out_head = k;
            c->out_tail = k;
        }
        size_t n = crest__chunk_space(k);
        if (n > len)
            n = len;
        memcpy(k->data + k->end, p, n);
        k->end += (uint32_t)n;
        c->out_bytes += (uint32_t)n;
        p += n;
        len -= n;
    }
    return 0;
}

/* Try to write straight from the caller's memory; returns bytes taken. */
static size_t write_direct(struct crest_conn *c, const struct iovec *iov, int iovcnt,
                           size_t total) {
    crest_loop_t *loop = c->io.loop;
    for (;;) {
        struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t sent = sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        loop->conn_stats.writes++;
        if (sent >= 0) {
            loop->conn_stats.bytes_out += (uint64_t)sent;
            c->last_active = loop->now_ms;
            if ((size_t)sent < total)
                c->writable = false;
            return (size_t)sent;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            c->writable = false;
        else
            socket_failed(c, errno);
        return 0;
    }
}

/* A write found the connection broken: its close completes from the loop
 * (right after the handler's callback, or on the next iteration). */
static int write_failed(struct crest_conn *c) {
    if (c->depth == 0)
        crest_io_feed(&c->io, CREST__IO_KICK);
    return c->dead ? -EPIPE : -ENOMEM;
}

int crest_conn_writev(crest_conn_t *c, const struct iovec *iov, int iovcnt) {
    if (!crest__conn_can_write(c) || c->shut_pending || c->shut_done || c->close_requested)
        return c->dead ? -EPIPE : -ENOTCONN;
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return 0;

    /* Outside a handler's batch, with nothing queued: straight to the
     * socket, no copy. */
    bool batching = c->gather || c->corked || c->state == CREST_CONN_CONNECTING;
    size_t skip = 0;
    if (c->writable && !c->out_head && !batching) {
        skip = write_direct(c, iov, iovcnt, total);
        if (c->dead)
            return write_failed(c);
        if (skip == total)
            return 0;
    }
    /* Queue what the socket did not take. */
    bool was_empty = c->out_bytes == 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t len = iov[i].iov_len;
        const uint8_t *p = iov[i].iov_base;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        int rc = enqueue(c, p + skip, len - skip);
        skip = 0;
        if (rc < 0) {
            c->aborting = true;
            crest__conn_request_close(c, CREST_CLOSE_NO_MEMORY, ENOMEM);
            return write_failed(c);
        }
    }
    if (!batching && c->writable) {
        int rc = crest__conn_flush(c);
        if (rc == 0)
            check_high_water(c);
        return rc;
    }
    if (was_empty && !batching) {
        c->write_stalled = c->io.loop->now_ms;
        if (c->ep->opts.write_timeout_ms)
            crest__conn_arm_timer(c);
    }
    check_high_water(c);
    return 0;
}

int crest_conn_write(crest_conn_t *c, const void *data, size_t len) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return crest_conn_writev(c, &iov, 1);
}

int crest_conn_write_message(crest_conn_t *c, const void *msg, size_t len) {
    const crest_framing_t *f = &c->ep->opts.framing;
    struct iovec iov[2] = {{.iov_base = (void *)msg, .iov_len = len}};
    uint8_t hdr[8];
    switch (f->kind) {
    case CREST_FRAMING_LINE:
        if (len > f->max_message)
            return -EMSGSIZE;
        iov[1].iov_base = (void *)"\n";
        iov[1].iov_len = 1;
        return crest_conn_writev(c, iov, 2);
    case CREST_FRAMING_LENGTH: {
        int h = crest_framing_header(f, len, hdr);
        if (h < 0)
            return h;
        iov[0].iov_base = hdr;
        iov[0].iov_len = (size_t)h;
        iov[1].iov_base = (void *)msg;
        iov[1].iov_len = len;
        return crest_conn_writev(c, iov, 2);
    }
    default:
        return crest_conn_writev(c, iov, 1);
    }
}

void crest_conn_cork(crest_conn_t *c) {
    c->corked = true;
}

int crest_conn_uncork(crest_conn_t *c) {
    if (!c->corked)
        return 0;
    c->corked = false;
    if (c->out_bytes && c->writable && c->depth == 0)
        return crest__conn_flush(c);
    if (c->out_bytes && c->writable)
        crest_io_feed(&c->io, CREST__IO_KICK);
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

static bool paused(const struct crest_conn *c) {
    return c->paused_user || (c->paused_high && !c->ep->opts.keep_reading);
}

/* Reading was paused: input buffered then, and data that reached the socket
 * meanwhile, raised no new edge.  Come back next iteration. */
void crest__conn_resume_input(struct crest_conn *c) {
    if (paused(c))
        return;
    if (c->in && crest__chunk_len(c->in) > 0)
        c->redeliver = true;
    if (c->readable || c->redeliver)
        crest_io_feed(&c->io, CREST__IO_KICK);
}

static bool may_deliver(const struct crest_conn *c) {
    return !c->close_requested && !paused(c);
}

static bool may_read(const struct crest_conn *c) {
    return c->readable && !paused(c) && !c->close_requested && c->state == CREST_CONN_OPEN;
}

/* The handler returned a negative close reason for len bytes of input. */
static void reject(struct crest_conn *c, ssize_t r, size_t len) {
    crest_close_reason_t why = (crest_close_reason_t)-r;
    if ((unsigned)why >= CREST_CLOSE_REASON_COUNT)
        why = CREST_CLOSE_PROTOCOL_ERROR;
    crest_conn_fail(c, why, "the handler rejected %zu bytes of input", len);
}

/* Hand buffered input to the handler.  Returns false if the connection
 * must stop reading (closing or paused). */
static void deliver_raw(struct crest_conn *c) {
    struct crest__chunk *in = c->in;
    while (crest__chunk_len(in) > 0 && may_deliver(c)) {
        size_t len = crest__chunk_len(in);
        c->depth++;
        ssize_t r = c->ep->handler.on_data(c, in->data + in->start, len);
        c->depth--;
        if (r < 0) {
            reject(c, r, len);
            return;
        }
        if ((size_t)r > len)
            r = (ssize_t)len;
        in->start += (uint32_t)r;
        if (r == 0)
            return; /* it wants more bytes first */
        c->read_started = 0;
    }
}

static void deliver_framed(struct crest_conn *c) {
    const crest_framing_t *f = &c->ep->opts.framing;
    crest_loop_t *loop = c->io.loop;
    struct crest__chunk *in = c->in;
    while (crest__chunk_len(in) > 0 && may_deliver(c)) {
        crest_frame_t fr;
        int rc = crest_framing_next(f, in->data + in->start, crest__chunk_len(in), &fr);
        if (rc == CREST_FRAMING_NEED_MORE)
            return;
        if (rc < 0) {
            if (f->kind == CREST_FRAMING_LINE)
                crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                                "line too long: no end of line within the limit of %zu bytes",
                                f->max_message);
            else
                crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                                "frame too large: %llu bytes announced (limit %zu)",
                                (unsigned long long)fr.declared, f->max_message);
            return;
        }
        loop->conn_stats.messages_in++;
        c->depth++;
        int r = c->ep->handler.on_message(c, in->data + in->start + fr.offset, fr.length);
        c->depth--;
        in->start += (uint32_t)fr.consumed;
        c->read_started = 0; /* a message completed: the next one starts now */
        if (r < 0) {
            reject(c, r, fr.length);
            return;
        }
    }
}

/* At EOF, LINE framing hands over a last line that has no "\n" (Go's
 * bufio.ScanLines does the same), if it is within the limit: the codec
 * waits for max + 2 bytes before it calls a line too long, so up to two
 * bytes more may be buffered. */
static void deliver_last_line(struct crest_conn *c) {
    struct crest__chunk *in = c->in;
    if (c->ep->opts.framing.kind != CREST_FRAMING_LINE || !in || crest__chunk_len(in) == 0 ||
        c->proxy_wait || !may_deliver(c))
        return;
    size_t len = crest__chunk_len(in);
    const uint8_t *line = in->data + in->start;
    if (line[len - 1] == '\r')
        len--;
    size_t max = c->ep->opts.framing.max_message;
    if (len > max) {
        crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                        "line too long: %zu bytes before EOF without an end of line (limit %zu)",
                        len, max);
        return;
    }
    c->io.loop->conn_stats.messages_in++;
    c->gather = true;
    c->depth++;
    int r = c->ep->handler.on_message(c, line, len);
    c->depth--;
    c->gather = false;
    in->start = in->end;
    if (r < 0)
        reject(c, r, len);
}

/* Behind a load balancer: the PROXY header comes first, then on_open,
 * then the stream.  Returns false while the header is incomplete or bad. */
static bool take_proxy_header(struct crest_conn *c) {
    struct crest__chunk *in = c->in;
    crest_proxy_info_t info;
    size_t used = 0;
    const char *why = "malformed";
    int rc = crest_proxy_parse(in->data + in->start, crest__chunk_len(in), c->ep->proxy, &info,
                               &used, &why);
    if (rc == 0)
        return false;
    if (rc < 0) {
        crest_conn_fail(c, CREST_CLOSE_PROTOCOL_ERROR, "PROXY header: %s", why);
        return false;
    }
    in->start += (uint32_t)used;
    c->proxy_wait = false;
    if (info.has_addr) {
        struct crest__conn_extra *x = crest__conn_extra(c);
        if (!x) {
            crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for the PROXY addresses");
            return false;
        }
        x->proxy = info;
    }
    crest__conn_notify_open(c);
    return may_deliver(c);
}

static void deliver(struct crest_conn *c) {
    if (c->proxy_wait && !take_proxy_header(c))
        return;
    c->gather = true;
    if (c->ep->opts.framing.kind == CREST_FRAMING_RAW)
        deliver_raw(c);
    else
        deliver_framed(c);
    c->gather = false;
}

/* After delivery: give an empty buffer back, or make room for the rest of
 * a partial message.  Returns false if the connection is closing. */
static bool settle_input(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    struct crest__chunk *in = c->in;
    if (!in || c->close_requested)
        return !c->close_requested;
    if (crest__chunk_len(in) == 0) {
        crest__chunk_put(&loop->pool, in);
        c->in = NULL;
        c->read_started = 0;
        return true;
    }
    if (!c->read_started) {
        c->read_started = loop->now_ms;
        if (c->ep->opts.read_timeout_ms)
            crest__conn_arm_timer(c);
    }
    if (crest__chunk_space(in) > 0)
        return true;
    crest__chunk_compact(in);
    if (crest__chunk_space(in) > 0)
        return true;
    /* Full with one partial message: grow, up to what a message (or the
     * PROXY header) may need. */
    size_t limit = c->ep->max_buffered;
    if (c->proxy_wait && limit < CREST_PROXY_MAX_HEADER)
        limit = CREST_PROXY_MAX_HEADER;
    if (in->cap >= limit) {
        crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                        "input buffer full: %u bytes unconsumed (limit %zu)", in->cap, limit);
        return false;
    }
    size_t cap = (size_t)in->cap * 2;
    if (cap > limit)
        cap = limit;
    struct crest__chunk *n = crest__chunk_grow(&loop->pool, in, cap);
    if (!n) {
        crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for a %zu-byte input buffer", cap);
        return false;
    }
    c->in = n;
    return true;
}

/* The peer shut down its side.  Whole messages still buffered (a
 * high-water pause may have held them) go first; the EOF is acted on only
 * once they are all delivered, and waits for the resume if delivery pauses
 * again. */
static void take_eof(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    while (c->in && crest__chunk_len(c->in) > 0) {
        if (!may_deliver(c))
            return; /* the resume (redeliver) brings us back */
        size_t before = crest__chunk_len(c->in);
        deliver(c);
        if (c->out_bytes && c->writable && !c->corked)
            (void)crest__conn_flush(c); /* may resume delivery */
        if (c->close_requested)
            return;
        if (crest__chunk_len(c->in) == before)
            break; /* only a partial message is left */
    }
    deliver_last_line(c);
    if (c->out_bytes && c->writable && !c->corked)
        (void)crest__conn_flush(c);
    if (c->close_requested)
        return;
    if (c->in) {
        crest__chunk_put(&loop->pool, c->in); /* a partial message never finished */
        c->in = NULL;
    }
    c->state = CREST_CONN_HALF_CLOSED;
    if (c->ep->handler.on_eof) {
        c->depth++;
        c->ep->handler.on_eof(c);
        c->depth--;
    } else {
        crest__conn_request_close(c, CREST_CLOSE_PEER_EOF, 0);
    }
}

static void read_input(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    size_t budget = c->ep->opts.read_budget;
    while (may_read(c)) {
        if (!c->in) {
            c->in = crest__chunk_get(&loop->pool, CREST__CHUNK_SIZE);
            if (!c->in) {
                c->aborting = true;
                crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for an input buffer");
                return;
            }
        }
        struct crest__chunk *in = c->in;
        size_t space = crest__chunk_space(in);
        ssize_t n = read(c->io.fd, in->data + in->end, space);
        loop->conn_stats.reads++;
        if (n > 0) {
            loop->conn_stats.bytes_in += (uint64_t)n;
            c->last_active = loop->now_ms;
            in->end += (uint32_t)n;
            if ((size_t)n < space && !c->peer_done)
                c->readable = false; /* short read: drained */
            deliver(c);
            if (!settle_input(c))
                return;
            if (c->out_bytes && c->writable && !c->corked)
                (void)crest__conn_flush(c);
            if ((size_t)n >= budget) {
                if (may_read(c))
                    crest_io_feed(&c->io, CREST_IO_READABLE); /* fair share used */
                return;
            }
            budget -= (size_t)n;
            continue;
        }
        if (n == 0) {
            c->readable = false;
            c->eof_seen = true;
            take_eof(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            c->readable = false;
            break;
        }
        socket_failed(c, errno);
        return;
    }
    /* Nothing more to read: an idle connection holds no input buffer. */
    if (c->in && crest__chunk_len(c->in) == 0) {
        crest__chunk_put(&loop->pool, c->in);
        c->in = NULL;
    }
}

/* ---- the io callback ---------------------------------------------------- */

static void connect_done(struct crest_conn *c) {
    int err = crest_sockopt_get_error(c->io.fd);
    if (err < 0)
        err = -err;
    if (err) {
        c->dead = true;
        crest__conn_request_close(c, CREST_CLOSE_CONNECT_FAILED, err);
        return;
    }
    c->writable = true;
    crest__conn_open(c);
}

void crest__conn_on_io(crest_io_t *io, unsigned events, void *arg) {
    CREST__UNUSED(io);
    struct crest_conn *c = arg;
    /* CREST__IO_KICK alone (a close or flush to complete) carries no
     * readiness news. */
    c->depth++;
    if (c->state == CREST_CONN_CONNECTING) {
        if (!(events & (CREST_IO_WRITABLE | CREST_IO_ERR | CREST_IO_HUP)))
            goto out;
        connect_done(c);
    }
    if (events & (CREST_IO_READABLE | CREST_IO_RDHUP | CREST_IO_HUP | CREST_IO_ERR))
        c->readable = true;
    if (events & (CREST_IO_RDHUP | CREST_IO_HUP | CREST_IO_ERR))
        c->peer_done = true;
    if (events & (CREST_IO_WRITABLE | CREST_IO_HUP | CREST_IO_ERR))
        c->writable = true;
    if ((c->out_bytes || c->shut_pending) && c->writable && !c->corked)
        (void)crest__conn_flush(c);
    if (c->redeliver && may_deliver(c) && c->in) {
        c->redeliver = false;
        if (c->eof_seen && c->state == CREST_CONN_OPEN) {
            take_eof(c);
        } else {
            deliver(c);
            if (settle_input(c) && c->out_bytes && c->writable && !c->corked)
                (void)crest__conn_flush(c);
        }
    }
    if (may_read(c))
        read_input(c);
out:
    c->depth--;
    crest__conn_settle(c);
}
