/* Connections: creation, the close state machine, timeouts, options and
 * the public accessors.  The byte paths (read, deliver, write) are in
 * conn_io.c.
 *
 * Closing has two halves.  A close is *requested* (by the handler, a
 * timeout, a socket error or bad input): the first reason wins, reading
 * stops, and, for a graceful close, queued output keeps flowing.  It is
 * *settled* only from a loop callback, never from inside an API call the
 * handler made: when the output is flushed (or the close is abortive) the
 * socket is closed, on_close runs once, and the memory goes after this
 * iteration (the zombie list), so a pointer held by a callback stays valid
 * until it returns.
 *
 * A graceful close whose peer has not sent its EOF lingers after on_close
 * (see conn.h, "Lingering close"): state CLOSED with its io still in the
 * loop's table and its fd open, half-closed, reading and discarding
 * (crest__conn_linger_io) until the peer's EOF, an error, or linger_ms
 * (conn_timer.c); then linger_end() closes the fd and the memory goes as
 * above.  The handler is never called again. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "conn_int.h"
#include "sys.h"


static const char *const reason_names[CREST_CLOSE_REASON_COUNT] = {
    [CREST_CLOSE_PEER_EOF] = "peer EOF",
    [CREST_CLOSE_PEER_RESET] = "peer reset",
    [CREST_CLOSE_IO_ERROR] = "i/o error",
    [CREST_CLOSE_IDLE_TIMEOUT] = "idle timeout",
    [CREST_CLOSE_READ_TIMEOUT] = "read timeout",
    [CREST_CLOSE_WRITE_TIMEOUT] = "write timeout",
    [CREST_CLOSE_CONNECT_TIMEOUT] = "connect timeout",
    [CREST_CLOSE_CONNECT_FAILED] = "connect failed",
    [CREST_CLOSE_RESOLVE_FAILED] = "resolve failed",
    [CREST_CLOSE_PROTOCOL_ERROR] = "protocol error",
    [CREST_CLOSE_TOO_LARGE] = "too large",
    [CREST_CLOSE_LOCAL] = "local close",
    [CREST_CLOSE_ABORT] = "local abort",
    [CREST_CLOSE_CONN_LIMIT] = "connection limit",
    [CREST_CLOSE_NO_MEMORY] = "out of memory",
    [CREST_CLOSE_SHUTDOWN] = "shutdown",
    [CREST_CLOSE_OUTPUT_LIMIT] = "output limit",
};

static const char *const reason_keys[CREST_CLOSE_REASON_COUNT] = {
    [CREST_CLOSE_PEER_EOF] = "peer_eof",
    [CREST_CLOSE_PEER_RESET] = "peer_reset",
    [CREST_CLOSE_IO_ERROR] = "io_error",
    [CREST_CLOSE_IDLE_TIMEOUT] = "idle_timeout",
    [CREST_CLOSE_READ_TIMEOUT] = "read_timeout",
    [CREST_CLOSE_WRITE_TIMEOUT] = "write_timeout",
    [CREST_CLOSE_CONNECT_TIMEOUT] = "connect_timeout",
    [CREST_CLOSE_CONNECT_FAILED] = "connect_failed",
    [CREST_CLOSE_RESOLVE_FAILED] = "resolve_failed",
    [CREST_CLOSE_PROTOCOL_ERROR] = "protocol_error",
    [CREST_CLOSE_TOO_LARGE] = "too_large",
    [CREST_CLOSE_LOCAL] = "local",
    [CREST_CLOSE_ABORT] = "abort",
    [CREST_CLOSE_CONN_LIMIT] = "conn_limit",
    [CREST_CLOSE_NO_MEMORY] = "no_memory",
    [CREST_CLOSE_SHUTDOWN] = "shutdown",
    [CREST_CLOSE_OUTPUT_LIMIT] = "output_limit",
};

const char *crest_close_reason_name(crest_close_reason_t reason) {
    return (unsigned)reason < CREST_CLOSE_REASON_COUNT ? reason_names[reason] : "unknown";
}

const char *crest_close_reason_key(crest_close_reason_t reason) {
    return (unsigned)reason < CREST_CLOSE_REASON_COUNT ? reason_keys[reason] : "unknown";
}

void crest_conn_opts_init(crest_conn_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->framing.kind = CREST_FRAMING_RAW;
    o->max_input = 64 * 1024;
    o->read_budget = 64 * 1024;
    o->high_water = 1024 * 1024;
    o->low_water = 256 * 1024;
    o->linger_ms = 5000;
    o->nodelay = true;
    o->keep_reading = CREST_KEEP_READING_AUTO;
    o->max_output = 16 * 1024 * 1024;
    o->output_policy = CREST_OUTPUT_CLOSE;
}

/* ---- endpoints ---------------------------------------------------------- */

/* Options as a connection uses them, for this handler (in: NULL for
 * defaults), on an outbound connection (crest_connect*, crest_conn_adopt)
 * or an accepted one: 0 and *out, *max_buffered (the most input bytes a
 * connection may hold), or -EINVAL if the handler lacks the callback the
 * framing needs or the options are invalid. */
int crest__conn_check_opts(const crest_handler_t *handler, const crest_conn_opts_t *in,
                           bool outbound, crest_conn_opts_t *out, size_t *max_buffered) {
    if (!handler)
        return -EINVAL;
    crest_conn_opts_t o;
    if (in)
        o = *in;
    else
        crest_conn_opts_init(&o);
    bool framed = o.framing.kind != CREST_FRAMING_RAW;
    if (framed && o.framing.max_message == 0)
        o.framing.max_message = CREST_FRAMING_DEFAULT_MAX;
    if ((framed && (!handler->on_message || crest_framing_validate(&o.framing) < 0)) ||
        (!framed && !handler->on_data))
        return -EINVAL;
    if (o.read_budget == 0)
        o.read_budget = 64 * 1024;
    if (o.high_water == 0)
        o.high_water = 1024 * 1024;
    if (o.low_water > o.high_water)
        o.low_water = o.high_water;
    /* AUTO: a client reads on above its high water (its reading is what
     * drains the server it is pipelining to: conn.h), a server pauses.
     * Resolved here, so the read path tests a plain 0 or 1. */
    if (o.keep_reading == CREST_KEEP_READING_AUTO)
        o.keep_reading = outbound;
    else
        o.keep_reading = o.keep_reading != 0;
    /* The cap must leave room for the high-water pause to act first, and
     * fit the queue's 32-bit count. */
    if ((o.max_output && o.max_output < o.high_water) || o.max_output > UINT32_MAX ||
        (o.output_policy != CREST_OUTPUT_CLOSE && o.output_policy != CREST_OUTPUT_REFUSE))
        return -EINVAL;
    size_t mb = framed ? crest_framing_max_buffered(&o.framing)
                       : (o.max_input ? o.max_input : 64 * 1024);
    if (mb > CREST__MAX_BUFFERED)
        return -EINVAL;
    /* The gather path checks high water for the cap too (conn_io.c). */
    size_t cap = o.max_output ? o.max_output : UINT32_MAX;
    if (o.high_water > cap)
        o.high_water = cap; /* no cap asked for: 4 GiB - 1 */
    if (o.low_water > o.high_water)
        o.low_water = o.high_water;
    *out = o;
    *max_buffered = mb;
    return 0;
}

/* The most output a connection with these (checked) options may hold:
 * queued plus gathered. */
size_t crest__conn_max_output(const crest_conn_opts_t *o) {
    return o->max_output ? o->max_output : UINT32_MAX;
}

/* An endpoint for handler with these options (NULL: defaults).  -EINVAL
 * if the handler lacks the callback its framing needs or the options are
 * invalid; -ENOMEM. */
int crest__endpoint_new(const crest_handler_t *handler, void *ctx, const crest_conn_opts_t *opts,
                        bool outbound, struct crest__endpoint **out) {
    crest_conn_opts_t o;
    size_t max_buffered;
    int rc = crest__conn_check_opts(handler, opts, outbound, &o, &max_buffered);
    if (rc < 0)
        return rc;
    struct crest__endpoint *ep = calloc(1, sizeof *ep);
    if (!ep)
        return -ENOMEM;
    ep->handler = *handler;
    ep->ctx = ctx;
    ep->opts = o;
    ep->max_buffered = max_buffered;
    ep->max_output = crest__conn_max_output(&o);
    ep->outbound = outbound;
    ep->refs = 1;
    *out = ep;
    return 0;
}

void crest__endpoint_release(struct crest__endpoint *ep) {
    if (ep && --ep->refs == 0) {
        crest__endpoint_release(ep->origin); /* one level: copies are not copied */
        free(ep);
    }
}

/* ---- options ------------------------------------------------------------ */

/* Urgent data (MSG_OOB, TCP and, since Linux 5.15, AF_UNIX) stays in the
 * stream, in order: crest is a byte-stream library, and a byte left out of
 * band would be lost to the handler (and to a proxy's other side).  Reads
 * still stop at the urgent mark (conn_io.c deals with that).  Accepted TCP
 * sockets inherit it from the listener; accepted Unix ones do not. */
void crest__conn_set_oobinline(int fd) {
    int on = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof on);
}

int crest__conn_apply_opts(int fd, const crest_conn_opts_t *o, bool tcp) {
    int rc;
    crest__conn_set_oobinline(fd);
    if (o->sndbuf > 0 && (rc = crest_sockopt_set_sndbuf(fd, o->sndbuf)) < 0)
        return rc;
    if (o->rcvbuf > 0 && (rc = crest_sockopt_set_rcvbuf(fd, o->rcvbuf)) < 0)
        return rc;
    if (!tcp)
        return 0;
    if (o->nodelay && (rc = crest_sockopt_set_nodelay(fd, true)) < 0)
        return rc;
    if (o->keepalive &&
        (rc = crest_sockopt_set_keepalive(fd, true, o->keepalive_idle_s, o->keepalive_interval_s,
                                          o->keepalive_count)) < 0)
        return rc;
    if (o->user_timeout_ms && (rc = crest_sockopt_set_user_timeout(fd, o->user_timeout_ms)) < 0)
        return rc;
    return 0;
}

/* ---- timeouts (the heap is in conn_timer.c) ------------------------------ */

static void linger_end(struct crest_conn *c);

void crest__conn_deadline_reached(struct crest_conn *c, crest_close_reason_t why) {
    if (c->state == CREST_CONN_CLOSED) {
        linger_end(c); /* the peer never sent its EOF */
        return;
    }
    if (why == CREST_CLOSE_IDLE_TIMEOUT && crest__log_enabled(CREST_LOG_DEBUG)) {
        /* Two timeouts share the reason: say which one it was. */
        const crest_conn_opts_t *o = &c->ep->opts;
        uint32_t now = c->io.loop->now_ms;
        bool input = o->input_idle_timeout_ms && now - c->last_input >= o->input_idle_timeout_ms;
        char peer[CREST_ADDR_STRLEN];
        if (crest_conn_peer(c, peer, sizeof peer) < 0)
            strcpy(peer, "?");
        crest_log(CREST_LOG_DEBUG, "connection %s (fd %d, id %llu) closed: idle timeout: %s %u ms",
                  peer, c->io.fd, (unsigned long long)c->id,
                  input ? "no input for" : "no input or output for",
                  input ? now - c->last_input : now - c->last_active);
    }
    if (c->state == CREST_CONN_CLOSING) {
        /* The peer would not take our last bytes: give up on them. */
        c->flags |= CREST__C_ABORTING;
    } else if (c->state == CREST_CONN_CONNECTING) {
        crest__conn_connect_failed(c, why, ETIMEDOUT);
        crest__conn_settle(c);
        return;
    }
    crest__conn_request_close(c, why, ETIMEDOUT);
    crest__conn_settle(c);
}

_Static_assert(sizeof(void *) != 8 || sizeof(struct crest_conn) <= 168,
               "an idle connection stays within 176 bytes of heap");

/* ---- lifecycle ---------------------------------------------------------- */

/* Connection ids: one counter for the process, so that an id names one
 * connection across every loop and thread, and 64 bits never wrap. */
static _Atomic uint64_t next_conn_id = 1;

struct crest_conn *crest__conn_create(crest_loop_t *loop, int fd, struct crest__endpoint *ep,
                                      crest_conn_state_t state) {
    struct crest_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ep = ep;
    c->state = (uint8_t)state;
    c->last_active = loop->now_ms;
    c->last_input = loop->now_ms;
    c->created_ns = loop->now_ns;
    /* A fresh accepted socket has an empty send buffer: writable at once,
     * without waiting for the first EPOLLOUT. */
    c->flags = state == CREST_CONN_OPEN ? CREST__C_WRITABLE : 0;
    if (crest__io_init(loop, &c->io, fd, CREST_IO_READABLE | CREST_IO_WRITABLE | CREST__IO_PRI,
                       crest__conn_on_io, c, true) < 0) {
        free(c);
        return NULL;
    }
    ep->refs++;
    if (CREST__UNLIKELY(loop->ins.opts.rx_timestamps) && loop->ins.on)
        crest__rx_timestamps_on(c);
    /* Relaxed: only uniqueness matters, not an order between threads. */
    c->id = atomic_fetch_add_explicit(&next_conn_id, 1, memory_order_relaxed);
    loop->conn_stats.opened++;
    loop->conn_stats.active++;
    return c;
}

/* The connection is established.  The handler hears of it now, or, behind
 * a PROXY header, once the header is in (conn_io.c). */
void crest__conn_open(struct crest_conn *c) {
    c->state = CREST_CONN_OPEN;
    c->last_active = c->io.loop->now_ms;
    c->last_input = c->last_active;
    crest__conn_arm_timer(c);
    if (c->ep->proxy) {
        c->flags |= CREST__C_PROXY_WAIT;
        return;
    }
    crest__conn_notify_open(c);
}

void crest__conn_notify_open(struct crest_conn *c) {
    if (c->ep->handler.on_open) {
        c->depth++;
        CREST__WHAT(c->io.loop, CREST__WHAT_ON_OPEN);
        c->ep->handler.on_open(c);
        c->depth--;
    }
}

void crest__conn_request_close(struct crest_conn *c, crest_close_reason_t reason, int err) {
    if (c->state == CREST_CONN_CLOSED)
        return;
    if (!(c->flags & CREST__C_CLOSE_REQUESTED)) {
        c->flags |= CREST__C_CLOSE_REQUESTED;
        c->close_reason = (uint8_t)reason;
        c->close_err = (uint16_t)err;
    }
    if (c->state == CREST_CONN_CONNECTING) {
        /* Output the handler wrote (and was told was accepted) goes out
         * once the connect completes: the close then proceeds from
         * connect_done().  With nothing to send, nothing waits. */
        if (!(c->flags & (CREST__C_ABORTING | CREST__C_DEAD)) &&
            (c->out_bytes || (c->flags & CREST__C_SHUT_PENDING)))
            return;
        c->flags |= CREST__C_ABORTING;
    }
    if (c->state != CREST_CONN_CLOSING) {
        c->state = CREST_CONN_CLOSING;
        c->write_stalled = c->io.loop->now_ms;
        crest__conn_arm_timer(c);
    }
    /* Buffered input is never delivered now; it goes back to the pool when
     * the close completes (a callback up the stack may still point into it).
     * With none of the handler's callbacks on the stack to settle it when
     * they return (a call from a timer, a deferred callback or another
     * connection's), the close completes on the next iteration, through the
     * ready list. */
    if (c->depth == 0)
        crest_io_feed(&c->io, CREST__IO_KICK);
}

/* The connect failed or timed out: whatever close was requested before,
 * this is what happened to the connection (and to the output it held). */
void crest__conn_connect_failed(struct crest_conn *c, crest_close_reason_t why, int err) {
    c->flags |= CREST__C_DEAD | CREST__C_CLOSE_REQUESTED;
    c->close_reason = (uint8_t)why;
    c->close_err = (uint16_t)err;
    crest__conn_request_close(c, why, err);
}

void crest__conn_drop_buffers(struct crest_conn *c) {
    struct crest__pool *pool = &c->io.loop->pool;
    if (c->in) {
        crest__chunk_put(pool, c->in);
        c->in = NULL;
    }
    while (c->out_head) {
        struct crest__chunk *k = c->out_head;
        c->out_head = k->next;
        crest__chunk_put(pool, k);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
}

/* Should the close linger (conn.h)?  Graceful, the peer not known to be
 * done sending (an EOF read means nothing more can come), and the socket
 * half-closed here (it fails when the peer has reset it: nothing to save
 * then). */
static bool linger_begins(struct crest_conn *c) {
    if (!c->ep->opts.linger_ms ||
        (c->flags & (CREST__C_ABORTING | CREST__C_DEAD | CREST__C_EOF_SEEN)))
        return false;
    /* The peer said it was done, and nothing it sent waits unread. */
    if ((c->flags & CREST__C_NO_LINGER) &&
        !(c->flags & (CREST__C_READABLE | CREST__C_PEER_DONE | CREST__C_URGENT)) &&
        crest__conn_input_bytes(c) == 0)
        return false;
    if (!(c->flags & CREST__C_SHUT_DONE) && shutdown(c->io.fd, SHUT_WR) < 0)
        return false;
    c->flags |= CREST__C_SHUT_DONE;
    return true;
}

/* The linger is over (EOF, error, bound, or the loop going away): close the
 * socket; the memory goes after this iteration. */
static void linger_end(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    int fd = c->io.fd;
    crest__io_detach(&c->io, false);
    crest__conn_disarm_timer(c);
    c->io.free_next = loop->zombies;
    loop->zombies = &c->io;
    loop->conn_stats.lingering--;
    crest_fd_close(fd);
    c->io.fd = -1;
}

/* Lingering: read and drop what the peer still sends, until its EOF.  Runs
 * from the io callback, so the loop's rbuf is free.  Reads go on to EAGAIN
 * (a short read may be an urgent mark); read_budget bytes per event. */
void crest__conn_linger_io(struct crest_conn *c, unsigned events) {
    crest_loop_t *loop = c->io.loop;
    if (!(events & (CREST_IO_READABLE | CREST_IO_RDHUP | CREST_IO_HUP | CREST_IO_ERR |
                    CREST__IO_PRI)))
        return; /* writable, or a kick: nothing to read */
    size_t budget = c->ep->opts.read_budget;
    for (;;) {
        ssize_t n = crest__sys_read(c->io.fd, loop->rbuf, CREST__SCRATCH_SIZE);
        loop->conn_stats.reads++;
        if (n > 0) {
            loop->conn_stats.bytes_in += (uint64_t)n;
            c->bytes_in += (uint64_t)n; /* the sum of the connections' is the loop's */
            if ((size_t)n >= budget) {
                crest_io_feed(&c->io, CREST_IO_READABLE); /* fair share used */
                return;
            }
            budget -= (size_t)n;
            continue;
        }
        if (n == -EINTR)
            continue;
        if (n != -EAGAIN)
            linger_end(c); /* EOF, or the peer reset it */
        return;
    }
}

/* TCP health at close (insight.h, "TCP health"): one getsockopt(TCP_INFO)
 * per TCP connection, while its socket is still open, whatever the reason
 * (aborts and failed connects included).  A socket that never sent or
 * received a segment (a connect refused before its SYN left) has nothing
 * to tell and is skipped; the RTT is
 * recorded only where the kernel measured one (a connect that failed has
 * none, though its SYN retransmits count). */
static void sample_tcp_at_close(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    struct crest__tcpi ti;
    if (!loop->ins.on || crest__tcp_info(c->io.fd, &ti) < 0 ||
        (ti.segs_out == 0 && ti.segs_in == 0))
        return;
    crest_insight_t *fig = &loop->ins.fig;
    fig->tcp_samples++;
    if (ti.rtt_us) {
        crest__hist_record(&fig->rtt, (uint64_t)ti.rtt_us * 1000u);
        fig->rttvar_sum_ns += (uint64_t)ti.rttvar_us * 1000u;
    }
    fig->retransmits += ti.total_retrans;
    fig->segs_out += ti.segs_out;
    fig->tcp_busy_ns += ti.busy_us * 1000u;
    fig->rwnd_limited_ns += ti.rwnd_limited_us * 1000u;
    fig->sndbuf_limited_ns += ti.sndbuf_limited_us * 1000u;
}

static void finish_close(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    int fd = c->io.fd;
    if (c->flags & CREST__C_TCP)
        sample_tcp_at_close(c);
    /* A high-water pause the close ends: its start is in the queue. */
    if ((c->flags & CREST__C_PAUSED_HIGH) && c->out_head) {
        crest__conn_pause_ended(c, c->out_head->pause_ns);
        c->out_head->pause_ns = 0;
    }
    /* Flush waiters first: they may still abort (no linger then). */
    if (c->flags & CREST__C_FLUSH_WAIT)
        crest__conn_flush_waits_end(c);
    bool linger = linger_begins(c);
    /* crest never dup()s a connection's fd: the close below takes it out of
     * epoll, no EPOLL_CTL_DEL needed.  A lingering connection stays in the
     * table (and keeps the loop running) until linger_end(). */
    if (!linger)
        crest__io_detach(&c->io, false);
    crest__conn_disarm_timer(c);
    crest__conn_drop_buffers(c);
    c->state = CREST_CONN_CLOSED;
    if (!linger) {
        c->io.free_next = loop->zombies;
        loop->zombies = &c->io;
    }

    loop->conn_stats.active--;
    loop->conn_stats.closed++;
    loop->conn_stats.close_reasons[c->close_reason]++;
    struct crest__endpoint *home = crest__endpoint_home(c->ep);
    if (home->lstats.active)
        home->lstats.active--;
    if (linger) {
        /* Set up before on_close, which may end it (crest_loop_close_all). */
        loop->conn_stats.lingered++;
        loop->conn_stats.lingering++;
        c->write_stalled = loop->now_ms; /* the linger's bound counts from now */
        crest__conn_arm_timer(c);
        /* Input already waiting, or the peer's EOF, raise no new edge. */
        if (c->flags & (CREST__C_READABLE | CREST__C_PEER_DONE | CREST__C_URGENT))
            crest_io_feed(&c->io, CREST_IO_READABLE);
    }
    /* on_close runs with the socket still open, so crest_conn_peer() and
     * crest_conn_fd() work there; nothing more can be read or written. */
    if (c->ep->handler.on_close) {
        c->depth++;
        CREST__WHAT(c->io.loop, CREST__WHAT_ON_CLOSE);
        c->ep->handler.on_close(c, (crest_close_reason_t)c->close_reason, c->close_err);
        c->depth--;
    }
    if (c->peer_kind == CREST__PEER_EXTRA && c->peer.extra->dial)
        crest__dial_cancel(c); /* closed before an attempt won */
    if (c->peer_kind == CREST__PEER_EXTRA && c->peer.extra->close_hook) {
        void (*hook)(struct crest_conn *, void *) = c->peer.extra->close_hook;
        c->peer.extra->close_hook = NULL;
        hook(c, c->peer.extra->close_hook_arg);
    }
    if (linger) {
        if (c->flags & CREST__C_ABORTING)
            linger_end(c); /* crest_loop_close_all(abort) from on_close */
        return; /* else the socket closes in linger_end() */
    }
    if (c->flags & CREST__C_ABORTING)
        (void)crest_sockopt_set_linger_abort(fd);
    crest_fd_close(fd);
    c->io.fd = -1;
}

/* Complete a requested close if it can complete now.  Called by the loop's
 * callbacks once the handler's callbacks have returned. */
void crest__conn_settle(struct crest_conn *c) {
    if (c->depth > 0)
        return;
    if (c->flags & CREST__C_NOTIFY)
        crest__conn_notify(c); /* what the handler's calls recorded (conn_io.c) */
    if (c->state != CREST_CONN_CLOSING)
        return;
    if (!(c->flags & (CREST__C_ABORTING | CREST__C_DEAD)) && c->out_bytes > 0) {
        if (c->flags & CREST__C_WRITABLE)
            (void)crest__conn_flush(c);
        if (c->out_bytes > 0 && !(c->flags & CREST__C_DEAD))
            return; /* the EPOLLOUT edge brings us back */
    }
    finish_close(c);
}

void crest__conns_reap(crest_loop_t *loop) {
    while (loop->zombies) {
        struct crest_conn *c = CREST__CONN_OF_IO(loop->zombies);
        loop->zombies = c->io.free_next;
        crest__endpoint_release(c->ep);
        if (c->peer_kind == CREST__PEER_EXTRA) {
            free(c->peer.extra->flush);
            free(c->peer.extra);
        }
        free(c);
    }
}

/* The loop's live connections are the watchers in its fd table whose
 * callback is the connection's: no list to keep per connection. */
static struct crest_conn *conn_at(crest_loop_t *loop, int fd) {
    struct crest_io *io = loop->ios[fd];
    return io && io->cb == crest__conn_on_io ? CREST__CONN_OF_IO(io) : NULL;
}

void crest_loop_close_all(crest_loop_t *loop, bool abort) {
    for (int fd = 0; fd < loop->ios_cap; fd++) {
        struct crest_conn *c = conn_at(loop, fd);
        if (!c)
            continue;
        if (c->state == CREST_CONN_CLOSED) {
            /* Already closed for the handler, lingering.  From its own
             * on_close, the socket stays until that returns (conn.h):
             * finish_close() ends the linger then. */
            if (abort && c->depth)
                c->flags |= CREST__C_ABORTING;
            else if (abort)
                linger_end(c);
            continue;
        }
        if (abort)
            c->flags |= CREST__C_ABORTING;
        crest__conn_request_close(c, CREST_CLOSE_SHUTDOWN, 0);
    }
}

int crest_loop_foreach_conn(crest_loop_t *loop, int (*cb)(crest_conn_t *c, void *arg),
                            void *arg) {
    if (!loop || !cb)
        return -EINVAL;
    return crest__loop_foreach_conn_from(loop, 0, cb, arg);
}

int crest__loop_foreach_conn_from(crest_loop_t *loop, int first_fd,
                                  int (*cb)(crest_conn_t *c, void *arg), void *arg) {
    /* loop->ios and ios_cap are read again at each step: cb may open
     * connections (crest_connect), which may grow the table.  Nothing cb
     * can do frees a connection during the walk (closes complete from the
     * loop), so the one at the next fd is still valid when we get there. */
    for (int fd = first_fd > 0 ? first_fd : 0; fd < loop->ios_cap; fd++) {
        struct crest_conn *c = conn_at(loop, fd);
        if (!c || c->state == CREST_CONN_CLOSED || (c->flags & CREST__C_PROXY_WAIT))
            continue;
        int rc = cb(c, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void crest__conns_destroy(crest_loop_t *loop) {
    for (int fd = 0; fd < loop->ios_cap; fd++) {
        struct crest_conn *c = conn_at(loop, fd);
        if (!c)
            continue;
        if (c->state == CREST_CONN_CLOSED) {
            linger_end(c); /* closed by the handler, lingering: not an error */
            continue;
        }
        crest_log(CREST_LOG_WARN, "loop destroyed with an open connection (fd %d): aborted", fd);
        c->flags |= CREST__C_ABORTING;
        c->depth = 0;
        crest__conn_request_close(c, CREST_CLOSE_SHUTDOWN, 0);
        finish_close(c);
    }
    crest__conns_reap(loop);
    crest__deadlines_destroy(loop);
}

/* ---- public API --------------------------------------------------------- */

void crest_conn_close(crest_conn_t *c) {
    if (c->state == CREST_CONN_CLOSED || c->state == CREST_CONN_CLOSING)
        return;
    crest__conn_request_close(c, CREST_CLOSE_LOCAL, 0);
}

void crest_conn_close_nolinger(crest_conn_t *c) {
    if (c->state == CREST_CONN_CLOSED || c->state == CREST_CONN_CLOSING ||
        (c->flags & CREST__C_CLOSE_REQUESTED))
        return; /* a close already asked for keeps its own way */
    c->flags |= CREST__C_NO_LINGER;
    crest__conn_request_close(c, CREST_CLOSE_LOCAL, 0);
}

void crest_conn_abort(crest_conn_t *c) {
    if (c->state == CREST_CONN_CLOSED)
        return;
    c->flags |= CREST__C_ABORTING;
    crest__conn_request_close(c, CREST_CLOSE_ABORT, 0);
}

void crest_conn_fail(crest_conn_t *c, crest_close_reason_t reason, const char *fmt, ...) {
    if (c->state == CREST_CONN_CLOSED || (c->flags & CREST__C_CLOSE_REQUESTED))
        return;
    if (crest__log_enabled(CREST_LOG_WARN)) {
        char why[256], peer[CREST_ADDR_STRLEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        if (crest_conn_peer(c, peer, sizeof peer) < 0)
            strcpy(peer, "?");
        crest_log(CREST_LOG_WARN, "connection %s (fd %d) closed: %s: %s", peer, c->io.fd,
                  crest_close_reason_name(reason), why);
    }
    crest__conn_request_close(c, reason, 0);
}

int crest_conn_shutdown(crest_conn_t *c) {
    if (c->flags & CREST__C_DEAD)
        return -EPIPE; /* as a write says */
    /* A close requested while CONNECTING leaves the state as it is. */
    if (!crest__conn_can_write(c) ||
        (c->flags & (CREST__C_SHUT_PENDING | CREST__C_SHUT_DONE | CREST__C_CLOSE_REQUESTED)))
        return -ENOTCONN;
    if (c->io.loop->gather_owner == c) {
        crest__conn_commit_gathered(c); /* replies gathered so far go first */
        if (!crest__conn_can_write(c))
            return (c->flags & CREST__C_DEAD) ? -EPIPE : -ENOTCONN; /* that failed */
    }
    c->flags |= CREST__C_SHUT_PENDING;
    if (c->out_bytes == 0 && c->state != CREST_CONN_CONNECTING)
        return crest__conn_flush(c); /* nothing queued: shuts down now */
    return 0;
}

void crest_conn_pause(crest_conn_t *c) {
    if (c->state == CREST_CONN_CLOSED)
        return;
    c->flags |= CREST__C_PAUSED_USER;
    c->read_started = 0; /* the read timeout waits for the resume */
}

void crest_conn_resume(crest_conn_t *c) {
    if (!(c->flags & CREST__C_PAUSED_USER) || c->state == CREST_CONN_CLOSED)
        return;
    c->flags &= (uint32_t)~CREST__C_PAUSED_USER;
    crest__conn_resume_input(c);
}

int crest_conn_set_nodelay(crest_conn_t *c, bool on) {
    if (c->state == CREST_CONN_CLOSED)
        return -ENOTCONN;
    int rc = crest_sockopt_set_nodelay(c->io.fd, on);
    if (rc >= 0 && (c->flags & CREST__C_TCP))
        crest__conn_set_nagle(c, !on);
    return rc;
}

int crest_conn_get_tcp_info(const crest_conn_t *c, crest_conn_tcp_info_t *out) {
    if (!c || !out)
        return -EINVAL;
    int fd = crest_conn_fd(c);
    if (fd < 0)
        return -ENOTCONN;
    if (!(c->flags & CREST__C_TCP))
        return -EOPNOTSUPP;
    struct crest__tcpi ti;
    int rc = crest__tcp_info(fd, &ti);
    if (rc < 0)
        return rc;
    int unsent = crest__sock_unsent(fd);
    if (unsent < 0)
        return unsent;
    memset(out, 0, sizeof *out);
    out->rtt_us = ti.rtt_us;
    out->rttvar_us = ti.rttvar_us;
    out->min_rtt_us = ti.min_rtt_us;
    out->retransmits = ti.retransmits;
    out->total_retrans = ti.total_retrans;
    out->snd_cwnd = ti.snd_cwnd;
    out->snd_mss = ti.snd_mss;
    out->unacked = ti.unacked;
    out->notsent_bytes = ti.notsent_bytes;
    out->unsent_bytes = (uint32_t)unsent;
    out->busy_us = ti.busy_us;
    out->rwnd_limited_us = ti.rwnd_limited_us;
    out->sndbuf_limited_us = ti.sndbuf_limited_us;
    out->delivery_rate = ti.delivery_rate;
    return 0;
}

int crest_conn_set_sndbuf(crest_conn_t *c, int bytes) {
    return c->state == CREST_CONN_CLOSED ? -ENOTCONN : crest_sockopt_set_sndbuf(c->io.fd, bytes);
}

int crest_conn_set_rcvbuf(crest_conn_t *c, int bytes) {
    return c->state == CREST_CONN_CLOSED ? -ENOTCONN : crest_sockopt_set_rcvbuf(c->io.fd, bytes);
}

void crest_conn_set_data(crest_conn_t *c, void *data) {
    c->data = data;
}

void *crest_conn_get_data(const crest_conn_t *c) {
    return c->data;
}

void *crest_conn_handler_ctx(const crest_conn_t *c) {
    return c->ep->ctx;
}

crest_loop_t *crest_conn_loop(const crest_conn_t *c) {
    return c->io.loop;
}

crest_conn_state_t crest_conn_state(const crest_conn_t *c) {
    return (crest_conn_state_t)c->state;
}

int crest_conn_fd(const crest_conn_t *c) {
    /* Inside on_close (the only callback a closed connection gets, with
     * depth 1) the socket is still there; after it, even while the close
     * lingers, it is no longer the application's. */
    if (c->state == CREST_CONN_CLOSED && c->depth == 0)
        return -1;
    return c->io.fd;
}

size_t crest_conn_output_bytes(const crest_conn_t *c) {
    const crest_loop_t *loop = c->io.loop;
    return c->out_bytes + (loop->gather_owner == c ? loop->gather_len : 0);
}

/* ---- identity and counters ------------------------------------------------ */

uint64_t crest_conn_id(const crest_conn_t *c) {
    return c->id;
}

int crest_conn_local(const crest_conn_t *c, char *buf, size_t size) {
    int fd = crest_conn_fd(c);
    if (fd < 0)
        return -ENOTCONN;
    crest_addr_t a;
    a.len = sizeof a.ss;
    if (getsockname(fd, (struct sockaddr *)&a.ss, &a.len) < 0)
        return -errno;
    return crest_addr_format(&a, buf, size);
}

void crest_conn_get_info(const crest_conn_t *c, crest_conn_info_t *out) {
    const crest_loop_t *loop = c->io.loop;
    memset(out, 0, sizeof *out);
    out->id = c->id;
    out->state = (crest_conn_state_t)c->state;
    out->fd = crest_conn_fd(c);
    out->framing = c->ep->opts.framing.kind;
    out->created_ns = c->created_ns;
    out->age_ns = loop->now_ns - c->created_ns;
    out->idle_ms = loop->now_ms - c->last_active;
    out->input_idle_ms = loop->now_ms - c->last_input;
    out->bytes_in = c->bytes_in;
    out->bytes_out = c->bytes_out;
    out->messages_in = c->messages_in;
    out->output_bytes = crest_conn_output_bytes(c);
    out->input_bytes = crest__conn_input_bytes(c);
    out->paused_by_handler = (c->flags & CREST__C_PAUSED_USER) != 0;
    out->above_high_water = (c->flags & CREST__C_PAUSED_HIGH) != 0;
    out->reading_paused = crest__conn_paused(c);
    out->corked = (c->flags & CREST__C_CORKED) != 0;
    out->peer_shut_down = (c->flags & (CREST__C_PEER_DONE | CREST__C_EOF_SEEN)) != 0 ||
                          c->state == CREST_CONN_HALF_CLOSED;
    out->write_shut_down = (c->flags & (CREST__C_SHUT_PENDING | CREST__C_SHUT_DONE)) != 0 ||
                           c->state >= CREST_CONN_CLOSING;
}

/* ---- peer addresses ------------------------------------------------------ */

void crest__conn_set_peer(struct crest_conn *c, const struct sockaddr *sa, socklen_t len) {
    /* Every connection gets here once, at its creation: crest's streams
     * are TCP or Unix. */
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        c->flags |= CREST__C_TCP;
        if (!c->ep->opts.nodelay)
            c->flags |= CREST__C_NAGLE;
    }
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in) &&
        c->peer_kind != CREST__PEER_EXTRA) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        c->peer.v4.addr = in->sin_addr.s_addr;
        c->peer.v4.port = in->sin_port;
        c->peer_kind = CREST__PEER_V4;
    } else if ((sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
               len <= (socklen_t)sizeof(struct sockaddr_storage)) {
        /* IPv6, or any peer of a connection that has the extra block
         * already (a pool's or a name's connection). */
        struct crest__conn_extra *x = crest__conn_extra(c);
        if (x) {
            memcpy(&x->socket_peer.ss, sa, len);
            x->socket_peer.len = len;
        }
    }
    /* Unix-domain peers are unnamed as a rule: nothing to keep. */
}

/* The extra block, made on first need (moving an inline IPv4 peer in). */
struct crest__conn_extra *crest__conn_extra(struct crest_conn *c) {
    if (c->peer_kind == CREST__PEER_EXTRA)
        return c->peer.extra;
    struct crest__conn_extra *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    if (c->peer_kind == CREST__PEER_V4) {
        struct sockaddr_in *in = (struct sockaddr_in *)&x->socket_peer.ss;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = c->peer.v4.addr;
        in->sin_port = c->peer.v4.port;
        x->socket_peer.len = sizeof *in;
    }
    c->peer.extra = x;
    c->peer_kind = CREST__PEER_EXTRA;
    return x;
}

int crest__conn_set_close_hook(struct crest_conn *c, void (*fn)(struct crest_conn *, void *),
                               void *arg) {
    struct crest__conn_extra *x = crest__conn_extra(c);
    if (!x)
        return -ENOMEM;
    x->close_hook = fn;
    x->close_hook_arg = arg;
    return 0;
}

void *crest__conn_close_hook_arg(const struct crest_conn *c,
                                 void (*fn)(struct crest_conn *, void *)) {
    if (c->peer_kind != CREST__PEER_EXTRA || c->peer.extra->close_hook != fn)
        return NULL;
    return c->peer.extra->close_hook_arg;
}

int crest_conn_peer(const crest_conn_t *c, char *buf, size_t size) {
    if (c->peer_kind == CREST__PEER_EXTRA && c->peer.extra->proxy.has_addr)
        return crest_addr_format(&c->peer.extra->proxy.src, buf, size);
    return crest_conn_socket_peer(c, buf, size);
}

int crest_conn_socket_peer(const crest_conn_t *c, char *buf, size_t size) {
    crest_addr_t a;
    if (c->peer_kind == CREST__PEER_V4) {
        struct sockaddr_in *in = (struct sockaddr_in *)&a.ss;
        memset(in, 0, sizeof *in);
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = c->peer.v4.addr;
        in->sin_port = c->peer.v4.port;
        a.len = sizeof *in;
        return crest_addr_format(&a, buf, size);
    }
    if (c->peer_kind == CREST__PEER_EXTRA && c->peer.extra->socket_peer.len)
        return crest_addr_format(&c->peer.extra->socket_peer, buf, size);
    a.len = sizeof a.ss;
    if (c->io.fd < 0)
        return -ENOTCONN;
    if (getpeername(c->io.fd, (struct sockaddr *)&a.ss, &a.len) < 0)
        return -errno;
    return crest_addr_format(&a, buf, size);
}

void crest_loop_conn_stats(const crest_loop_t *loop, crest_conn_stats_t *out) {
    *out = loop->conn_stats;
}

void crest_loop_buf_stats(const crest_loop_t *loop, crest_buf_stats_t *out) {
    *out = loop->pool.st;
}
