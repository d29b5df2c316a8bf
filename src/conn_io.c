/* The byte paths of a connection: the io callback, reading and delivering
 * input (raw or framed), and writing (direct, gathered, queued).
 *
 * Readiness is cached: `readable` is set by an EPOLLIN edge and cleared by
 * a short read or EAGAIN; `writable` is set by an EPOLLOUT edge and cleared
 * by a short write or EAGAIN.  A short read means the socket is drained,
 * unless the peer has hung up (RDHUP/HUP), in which case we read on until
 * read() returns 0 so the EOF is not missed, or urgent data is pending.
 *
 * Urgent data: a read stops short at the urgent mark (MSG_OOB) with the
 * rest of the stream still queued, SO_OOBINLINE or not (man 7 tcp; checked
 * on Linux 6.x, TCP and AF_UNIX), and no new edge comes for what is
 * queued: taking that short read as "drained" parked the connection until
 * the peer sent more.  Connections are registered with EPOLLPRI too, so
 * the event that brings urgent data says so (another edge comes if the
 * mark arrives after a read); such an event sets CREST__C_URGENT and reads
 * go on to EAGAIN.  The usual event carries no EPOLLPRI and pays nothing:
 * no SIOCATMARK per short read.  With SO_OOBINLINE (conn.c) the urgent
 * byte is delivered in the stream, in order. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn_int.h"
#include "sys.h"

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
    c->flags |= CREST__C_DEAD;
    c->flags &= (uint32_t)~(CREST__C_READABLE | CREST__C_WRITABLE);
    crest__conn_request_close(c, reason_for_errno(err), err);
}

/* ---- writing ------------------------------------------------------------ */

/* Output is queued and may go now. */
static inline bool flush_due(const struct crest_conn *c) {
    return c->out_bytes && (c->flags & (CREST__C_WRITABLE | CREST__C_CORKED)) == CREST__C_WRITABLE;
}

/* ---- notifications -------------------------------------------------------
 *
 * No callback runs inside a crest call: a call that crosses a mark (or
 * sends the last queued byte) only records what is to be told, and the
 * telling happens in crest__conn_notify(), which runs when the
 * connection's own callback returns (crest__conn_settle(), called by
 * every path that runs its callbacks) or, with none of them on the stack,
 * from the loop: the connection is fed to the ready list, as a close is. */

static void notify_later(struct crest_conn *c) {
    if (c->depth == 0)
        crest_io_feed(&c->io, CREST__IO_KICK);
}

/* Record a crossing of high water (hw) or low water.  At most two are
 * pending, in the order PAUSED_HIGH implies (conn.h: a crossing back and
 * forth again cancels out). */
static void note_crossing(struct crest_conn *c, bool hw) {
    uint32_t self = hw ? CREST__C_HW_PENDING : CREST__C_DRAIN_PENDING;
    uint32_t other = hw ? CREST__C_DRAIN_PENDING : CREST__C_HW_PENDING;
    if (c->flags & CREST__C_CLOSE_REQUESTED)
        return; /* on_close is the last word */
    if (c->flags & self)
        c->flags &= ~other; /* self, other, self: the last two cancel */
    else
        c->flags |= self;
    notify_later(c);
}

static bool flush_wait_due(struct crest_conn *c) {
    const struct crest__conn_extra *x = c->peer.extra;
    return x->flush[x->flush_head].mark <= c->bytes_out;
}

/* Take the first flush waiter off the list. */
static struct crest__flush_wait flush_wait_pop(struct crest_conn *c) {
    struct crest__conn_extra *x = c->peer.extra;
    struct crest__flush_wait w = x->flush[x->flush_head];
    if (--x->flush_len == 0) {
        x->flush_head = 0;
        c->flags &= ~CREST__C_FLUSH_WAIT;
    } else {
        x->flush_head++;
    }
    return w;
}

static inline bool may_read(const struct crest_conn *c);

/* Run what calls recorded for the handler.  Called with none of c's
 * callbacks on the stack; runs them with depth raised, so that what they
 * do is recorded in turn and run by this same pass. */
static void notify_run(struct crest_conn *c) {
    const crest_handler_t *h = &c->ep->handler;
    c->depth++;
    for (;;) {
        uint32_t f = c->flags;
        if (f & CREST__C_CLOSE_REQUESTED) {
            /* Not once closing; flush waiters are told by the close. */
            c->flags &= ~(CREST__C_HW_PENDING | CREST__C_DRAIN_PENDING | CREST__C_FLUSHED_PENDING);
            break;
        }
        if (f & (CREST__C_HW_PENDING | CREST__C_DRAIN_PENDING)) {
            /* Both: paused now means the drain came first. */
            bool hw = (f & CREST__C_HW_PENDING) &&
                      !((f & CREST__C_DRAIN_PENDING) && (f & CREST__C_PAUSED_HIGH));
            c->flags &= hw ? ~CREST__C_HW_PENDING : ~CREST__C_DRAIN_PENDING;
            void (*cb)(crest_conn_t *) = hw ? h->on_high_water : h->on_drain;
            if (cb) {
                CREST__WHAT(c->io.loop, hw ? CREST__WHAT_ON_HIGH_WATER : CREST__WHAT_ON_DRAIN);
                cb(c);
            }
            continue;
        }
        if ((f & CREST__C_FLUSH_WAIT) && flush_wait_due(c)) {
            struct crest__flush_wait w = flush_wait_pop(c);
            CREST__WHAT(c->io.loop, CREST__WHAT_FLUSH_NOTIFY);
            w.cb(c, 0, w.arg);
            continue;
        }
        if (f & CREST__C_FLUSHED_PENDING) {
            c->flags &= ~CREST__C_FLUSHED_PENDING;
            /* More may have been queued since: its own flush will tell. */
            if (c->out_bytes == 0 && h->on_flushed) {
                CREST__WHAT(c->io.loop, CREST__WHAT_ON_FLUSHED);
                h->on_flushed(c);
            }
            continue;
        }
        break;
    }
    c->depth--;
}

/* From crest__conn_settle(): the callbacks have returned.  A read loop
 * that stopped for a notification (may_read) goes on next iteration: the
 * socket raises no new edge for what it still holds. */
void crest__conn_notify(struct crest_conn *c) {
    notify_run(c);
    if (may_read(c))
        crest_io_feed(&c->io, CREST_IO_READABLE);
}

/* The connection closes (finish_close(), before on_close): every flush
 * waiter hears now.  Those whose bytes all left get 0; the others get
 * the socket's error, or -ECANCELED when a local decision dropped them. */
void crest__conn_flush_waits_end(struct crest_conn *c) {
    int err = -ECANCELED;
    if (c->flags & CREST__C_DEAD)
        err = c->close_err ? -(int)c->close_err : -EPIPE;
    c->depth++;
    while (c->flags & CREST__C_FLUSH_WAIT) {
        bool done = flush_wait_due(c);
        struct crest__flush_wait w = flush_wait_pop(c);
        CREST__WHAT(c->io.loop, CREST__WHAT_FLUSH_NOTIFY);
        w.cb(c, done ? 0 : err, w.arg);
    }
    c->depth--;
}

int crest_conn_flush_notify(crest_conn_t *c, crest_conn_flush_cb cb, void *arg) {
    if (!cb)
        return -EINVAL;
    if (c->state == CREST_CONN_CLOSED || (c->flags & CREST__C_CLOSE_REQUESTED))
        return -ENOTCONN;
    struct crest__conn_extra *x = crest__conn_extra(c);
    if (!x)
        return -ENOMEM;
    if (x->flush_head + x->flush_len == x->flush_cap) {
        if (x->flush_head > 0) {
            memmove(x->flush, x->flush + x->flush_head, x->flush_len * sizeof *x->flush);
            x->flush_head = 0;
        } else {
            uint32_t cap = x->flush_cap ? x->flush_cap * 2 : 4;
            if (cap < x->flush_cap)
                return -ENOMEM;
            struct crest__flush_wait *n = realloc(x->flush, cap * sizeof *n);
            if (!n)
                return -ENOMEM;
            x->flush = n;
            x->flush_cap = cap;
        }
    }
    uint64_t mark = c->bytes_out + crest_conn_output_bytes(c);
    x->flush[x->flush_head + x->flush_len++] = (struct crest__flush_wait){mark, cb, arg};
    c->flags |= CREST__C_FLUSH_WAIT;
    if (mark <= c->bytes_out)
        notify_later(c); /* nothing to wait for: the loop tells */
    return 0;
}

/* A high-water pause ended (resumed, or the connection closed): counted,
 * with how long it lasted, if it was timed. */
void crest__conn_pause_ended(struct crest_conn *c, uint64_t since_ns) {
    crest_loop_t *loop = c->io.loop;
    if (!since_ns || !loop->ins.on)
        return;
    loop->ins.fig.hw_pauses++;
    crest__hist_record(&loop->ins.fig.hw_pause, loop->now_ns - since_ns);
}

/* pause_ns: the pause's start if the flush emptied the queue (the chunk
 * that carried it is gone), else 0. */
static void check_low_water(struct crest_conn *c, uint64_t pause_ns) {
    if (!(c->flags & CREST__C_PAUSED_HIGH) || c->out_bytes > c->ep->opts.low_water)
        return;
    c->flags &= (uint32_t)~CREST__C_PAUSED_HIGH;
    if (c->out_head) {
        pause_ns = c->out_head->pause_ns;
        c->out_head->pause_ns = 0;
    }
    crest__conn_pause_ended(c, pause_ns);
    if (c->ep->handler.on_drain)
        note_crossing(c, false);
    crest__conn_resume_input(c);
}

static void check_high_water(struct crest_conn *c) {
    /* While connecting, the handler has not had on_open yet: the check
     * comes once it has (connect_done). */
    if ((c->flags & CREST__C_PAUSED_HIGH) || c->out_bytes <= c->ep->opts.high_water ||
        c->state == CREST_CONN_CONNECTING)
        return;
    c->flags |= CREST__C_PAUSED_HIGH;
    c->io.loop->conn_stats.paused++;
    if (c->out_head) /* out_bytes is over high water: there is a queue */
        c->out_head->pause_ns = c->io.loop->now_ns;
    if (!c->ep->opts.keep_reading)
        c->read_started = 0; /* not waiting for the peer now: see settle_input */
    if (c->ep->handler.on_high_water)
        note_crossing(c, true);
}

static void after_progress(struct crest_conn *c, uint64_t pause_ns) {
    crest_loop_t *loop = c->io.loop;
    c->last_active = loop->now_ms;
    if (c->out_bytes == 0) {
        c->write_stalled = 0;
        if ((c->flags & (CREST__C_SHUT_PENDING | CREST__C_SHUT_DONE)) == CREST__C_SHUT_PENDING) {
            c->flags |= CREST__C_SHUT_DONE;
            c->flags &= (uint32_t)~CREST__C_SHUT_PENDING;
            if (shutdown(c->io.fd, SHUT_WR) < 0 && errno != ENOTCONN)
                socket_failed(c, errno);
        }
    } else {
        /* A stall is measured from the last progress. */
        c->write_stalled = loop->now_ms;
    }
    check_low_water(c, pause_ns);
}

/* Nagle sampling (connections with TCP_NODELAY off): a write smaller
 * than a full segment may be held back by the kernel until the data in
 * flight is acknowledged (RFC 896), which with the peer's delayed ACK
 * costs up to 40 ms (Linux's delayed-ACK bound; 200 ms elsewhere).  Right
 * after such a send, TCP_INFO tells: bytes not yet sent (tcpi_notsent_bytes)
 * though the congestion window had room (tcpi_unacked < tcpi_snd_cwnd) were
 * held for Nagle.  Every small write is sampled while the loop has made
 * fewer than NAGLE_ALWAYS checks, then one write in 8 (by the loop's write
 * count): one getsockopt per sample.  Connections with TCP_NODELAY on
 * (the default) never get here. */
#define NAGLE_SMALL 1448u /* bytes: an Ethernet MSS with timestamps */
#define NAGLE_ALWAYS 64u
static void nagle_sample(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    crest_insight_t *fig = &loop->ins.fig;
    if (!loop->ins.on || (fig->nagle_checks >= NAGLE_ALWAYS && (loop->conn_stats.writes & 7)))
        return;
    struct crest__tcpi ti;
    if (crest__tcp_info(c->io.fd, &ti) < 0)
        return;
    fig->nagle_checks++;
    if (ti.notsent_bytes > 0 && ti.unacked < ti.snd_cwnd)
        fig->nagle_held++;
}

/* Account for a write syscall's result (sent: bytes, or -errno) of total
 * bytes.  Returns the bytes taken, or SIZE_MAX if it was interrupted. */
static size_t wrote(struct crest_conn *c, ssize_t sent, size_t total) {
    crest_loop_t *loop = c->io.loop;
    loop->conn_stats.writes++;
    if (sent >= 0) {
        loop->conn_stats.bytes_out += (uint64_t)sent;
        c->bytes_out += (uint64_t)sent;
        c->last_active = loop->now_ms;
        /* One test for both rare cases: flush waiters, and TCP_NODELAY
         * off (the Nagle sample). */
        if (CREST__UNLIKELY(c->flags & (CREST__C_FLUSH_WAIT | CREST__C_NAGLE)) && sent > 0) {
            if (c->flags & CREST__C_FLUSH_WAIT)
                notify_later(c); /* a waiter's bytes may all have left */
            if ((c->flags & CREST__C_NAGLE) && total < NAGLE_SMALL)
                nagle_sample(c);
        }
        if ((size_t)sent < total)
            c->flags &= (uint32_t)~CREST__C_WRITABLE;
        return (size_t)sent;
    }
    if (sent == -EINTR)
        return SIZE_MAX;
    if (sent == -EAGAIN)
        c->flags &= (uint32_t)~CREST__C_WRITABLE;
    else
        socket_failed(c, (int)-sent);
    return 0;
}

/* Send as much of the queue as the socket takes.  0, or -EPIPE if the
 * socket failed (the connection is then closing, with the reason the
 * send's errno maps to): what crest_conn_write() and _uncork() return. */
int crest__conn_flush(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    bool had_queue = c->out_bytes != 0;
    uint64_t stall_ns = 0, pause_ns = 0; /* the last chunk's, once consumed */
    while (c->out_head && (c->flags & (CREST__C_WRITABLE | CREST__C_DEAD)) == CREST__C_WRITABLE) {
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
        ssize_t sent = crest__sys_sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        size_t left = wrote(c, sent, want); /* a short send clears WRITABLE */
        if (left == SIZE_MAX)
            continue; /* interrupted */
        if (c->flags & CREST__C_DEAD)
            return -EPIPE; /* the errno is the close's (on_close says it) */
        c->out_bytes -= (uint32_t)left;
        while (left > 0) {
            struct crest__chunk *k = c->out_head;
            size_t len = crest__chunk_len(k);
            if (left < len) {
                k->start += (uint32_t)left;
                break;
            }
            left -= len;
            c->out_head = k->next;
            if (k->next) { /* the queue's waits go on with its new head */
                k->next->stall_ns = k->stall_ns;
                k->next->pause_ns = k->pause_ns;
            } else {
                stall_ns = k->stall_ns;
                pause_ns = k->pause_ns;
            }
            crest__chunk_put(&loop->pool, k);
        }
        if (!c->out_head)
            c->out_tail = NULL;
    }
    if (had_queue && c->out_bytes == 0 && c->ep->handler.on_flushed &&
        !(c->flags & CREST__C_CLOSE_REQUESTED)) {
        c->flags |= CREST__C_FLUSHED_PENDING;
        notify_later(c);
    }
    if (c->out_bytes == 0) {
        if (stall_ns && loop->ins.on) { /* a write stall is over */
            crest_insight_t *fig = &loop->ins.fig;
            fig->write_stalls++;
            crest__hist_record(&fig->write_stall, loop->now_ns - stall_ns);
            int sndbuf = c->ep->opts.sndbuf;
            if (sndbuf > 0) {
                fig->write_stalls_sndbuf++;
                if (!fig->sndbuf_set_min || (uint32_t)sndbuf < fig->sndbuf_set_min)
                    fig->sndbuf_set_min = (uint32_t)sndbuf;
            }
        }
    } else if (!(c->flags & CREST__C_WRITABLE) && !c->out_head->stall_ns) {
        c->out_head->stall_ns = loop->now_ns; /* the socket left some: a stall */
    }
    if (c->out_bytes == 0 || !(c->flags & CREST__C_WRITABLE)) {
        bool stalled_before = c->write_stalled != 0;
        after_progress(c, pause_ns);
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
    if (CREST__UNLIKELY(iovcnt > IOV_MAX)) {
        /* A framed writev's extra segment: one sendmsg takes IOV_MAX, the
         * rest is queued (and a short send is one the socket chose). */
        iovcnt = IOV_MAX;
        total = 0;
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
    }
    for (;;) {
        ssize_t sent;
        if (iovcnt == 1) {
            sent = crest__sys_send(c->io.fd, iov->iov_base, iov->iov_len,
                                   MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
            sent = crest__sys_sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        size_t took = wrote(c, sent, total);
        if (took != SIZE_MAX)
            return took;
    }
}

/* A write found the connection broken: its close completes from the loop
 * (right after the handler's callback, or on the next iteration). */
static int write_failed(struct crest_conn *c) {
    return (c->flags & CREST__C_DEAD) ? -EPIPE : -ENOMEM;
}

/* Queue bytes the socket did not take, behind what is queued already. */
static int queue_output(struct crest_conn *c, const uint8_t *p, size_t len) {
    if (enqueue(c, p, len) < 0) {
        c->flags |= CREST__C_ABORTING;
        crest__conn_request_close(c, CREST_CLOSE_NO_MEMORY, ENOMEM);
        return write_failed(c);
    }
    return 0;
}

/* Output was queued because the socket is full: the write timeout counts
 * from now (not while the handler batches or corks). */
static void output_waits(struct crest_conn *c, bool was_empty) {
    if (c->out_head && !c->out_head->stall_ns)
        c->out_head->stall_ns = c->io.loop->now_ns; /* a write stall begins */
    if (was_empty && c->out_bytes) {
        c->write_stalled = c->io.loop->now_ms;
        if (c->ep->opts.write_timeout_ms)
            crest__conn_arm_timer(c);
    }
}

/* The gathered replies after `sent` of them went out (0: no send was
 * tried yet): send them if that is still to do, queue what the socket
 * leaves. */
static void commit_rest(struct crest_conn *c, size_t sent) {
    crest_loop_t *loop = c->io.loop;
    size_t len = loop->gather_len;
    loop->gather_len = 0;
    loop->gather_owner = NULL;
    if (c->flags & (CREST__C_ABORTING | CREST__C_DEAD)) {
        if (c->flags & CREST__C_DEAD)
            (void)write_failed(c);
        return; /* nothing more goes out */
    }
    if (sent == 0 && (c->flags & (CREST__C_WRITABLE | CREST__C_CORKED)) == CREST__C_WRITABLE &&
        !c->out_head) {
        struct iovec iov = {.iov_base = loop->wbuf, .iov_len = len};
        sent = write_direct(c, &iov, 1, len);
        if (c->flags & CREST__C_DEAD) {
            (void)write_failed(c);
            return;
        }
    }
    if (sent == len)
        return;
    bool was_empty = c->out_bytes == 0;
    if (queue_output(c, loop->wbuf + sent, len - sent) < 0)
        return;
    if (!(c->flags & CREST__C_CORKED))
        output_waits(c, was_empty);
    check_high_water(c);
}

/* The handler's callback has returned (or c must write something else
 * first): the replies it gathered in the loop's wbuf go out in one send,
 * and what the socket leaves is queued. */
void crest__conn_commit_gathered(struct crest_conn *c) {
    commit_rest(c, 0);
}

/* The same, with the usual case inline: the socket takes it all. */
static inline void commit_gathered(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    size_t len = loop->gather_len;
    /* TCP_NODELAY off (NAGLE) takes the slow way, where wrote() samples
     * it: in the same mask, at no cost to the others. */
    if (CREST__LIKELY((c->flags & (CREST__C_WRITABLE | CREST__C_CORKED | CREST__C_ABORTING |
                                   CREST__C_DEAD | CREST__C_NAGLE)) == CREST__C_WRITABLE &&
                      !c->out_head)) {
        ssize_t sent = crest__sys_send(c->io.fd, loop->wbuf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (CREST__LIKELY(sent == (ssize_t)len)) {
            loop->gather_len = 0;
            loop->gather_owner = NULL;
            loop->conn_stats.writes++;
            loop->conn_stats.bytes_out += len;
            c->bytes_out += len;
            c->last_active = loop->now_ms;
            return;
        }
        size_t took = wrote(c, sent, len);
        commit_rest(c, took == SIZE_MAX ? 0 : took);
        return;
    }
    commit_rest(c, 0);
}

/* Inside on_data/on_message, on an open connection that is neither corked
 * nor closing, total bytes fit in the loop's wbuf and keep the output
 * within high water: where they go then (the caller copies them and calls
 * gathered()); else NULL (writev_slow() then sorts it out, the cap
 * included). */
static inline uint8_t *gather_slot(struct crest_conn *c, size_t total) {
    crest_loop_t *loop = c->io.loop;
    if ((c->flags & (CREST__C_GATHER | CREST__C_CORKED | CREST__C_SHUT_PENDING |
                     CREST__C_SHUT_DONE | CREST__C_CLOSE_REQUESTED)) != CREST__C_GATHER)
        return NULL;
    if (loop->gather_owner != c && loop->gather_len > 0)
        return NULL; /* another connection's (a nested callback): not ours */
    if (total > CREST__SCRATCH_SIZE - loop->gather_len)
        return NULL;
    /* A write that takes the output past high water is not gathered: the
     * slow path commits what was gathered and queues it, so that the
     * pause comes with this message (the bound is high water plus one
     * message), and checks max_output, which is at least high_water (one
     * compare here for both).  No overflow: total and gather_len are at
     * most 16 KiB each. */
    if (CREST__UNLIKELY((size_t)c->out_bytes + loop->gather_len + total > c->ep->opts.high_water))
        return NULL;
    return loop->wbuf + loop->gather_len;
}

static inline void gathered(struct crest_conn *c, size_t total) {
    crest_loop_t *loop = c->io.loop;
    if (CREST__UNLIKELY(total == 0))
        return; /* nothing to send: no send */
    loop->gather_len += (uint32_t)total;
    loop->gather_owner = c;
}

static int writev_slow(struct crest_conn *c, const struct iovec *iov, int iovcnt, size_t total);

/* The sum of the iovecs' lengths, or SIZE_MAX if it overflows. */
static size_t iov_total(const struct iovec *iov, int iovcnt) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (CREST__UNLIKELY(iov[i].iov_len >= SIZE_MAX - total))
            return SIZE_MAX;
        total += iov[i].iov_len;
    }
    return total;
}

/* One write of iovcnt segments (any count: the framed writev adds one to
 * IOV_MAX) and total bytes: gathered, or direct, queued, refused. */
static inline int write_iov(struct crest_conn *c, const struct iovec *iov, int iovcnt,
                            size_t total) {
    uint8_t *p = gather_slot(c, total);
    if (CREST__LIKELY(p != NULL)) {
        for (int i = 0; i < iovcnt; i++) {
            memcpy(p, iov[i].iov_base, iov[i].iov_len);
            p += iov[i].iov_len;
        }
        gathered(c, total);
        return 0;
    }
    return writev_slow(c, iov, iovcnt, total);
}

int crest_conn_writev(crest_conn_t *c, const struct iovec *iov, int iovcnt) {
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL;
    size_t total = iov_total(iov, iovcnt);
    if (CREST__UNLIKELY(total == SIZE_MAX))
        return -EINVAL;
    return write_iov(c, iov, iovcnt, total);
}

int crest_conn_write(crest_conn_t *c, const void *data, size_t len) {
    uint8_t *p = gather_slot(c, len);
    if (CREST__LIKELY(p != NULL)) {
        memcpy(p, data, len);
        gathered(c, len);
        return 0;
    }
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return writev_slow(c, &iov, 1, len);
}

/* A write of total bytes would take c's output past max_output: it is
 * refused whole, and with the CLOSE policy the connection goes too,
 * abortively (what is queued is for a peer that does not read it). */
static __attribute__((noinline, cold)) int output_limit(struct crest_conn *c, size_t queued,
                                                         size_t total) {
    if (c->ep->opts.output_policy == CREST_OUTPUT_REFUSE)
        return -ENOBUFS;
    if (crest__log_enabled(CREST_LOG_WARN)) {
        char peer[CREST_ADDR_STRLEN];
        if (crest_conn_peer(c, peer, sizeof peer) < 0)
            strcpy(peer, "?");
        crest_log(CREST_LOG_WARN,
                  "connection %s (fd %d) closed: output limit: %zu bytes queued, a write of %zu "
                  "more refused (max_output %zu): the peer is not reading",
                  peer, c->io.fd, queued, total, c->ep->max_output);
    }
    c->flags |= CREST__C_ABORTING;
    crest__conn_request_close(c, CREST_CLOSE_OUTPUT_LIMIT, ENOBUFS);
    return -ENOBUFS;
}

/* Not gathered: direct, queued, or refused. */
static int writev_slow(struct crest_conn *c, const struct iovec *iov, int iovcnt, size_t total) {
    if (!crest__conn_can_write(c) ||
        (c->flags & (CREST__C_SHUT_PENDING | CREST__C_SHUT_DONE | CREST__C_CLOSE_REQUESTED)))
        return (c->flags & CREST__C_DEAD) ? -EPIPE : -ENOTCONN;
    if (total == 0)
        return 0;
    /* The cap, before a byte of this write (or of the gathered replies
     * ahead of it) moves: a refused write leaves no part of itself in the
     * stream. */
    size_t queued = crest_conn_output_bytes(c);
    if (CREST__UNLIKELY(queued > c->ep->max_output || total > c->ep->max_output - queued))
        return output_limit(c, queued, total);
    if (c->io.loop->gather_owner == c) {
        /* Too big to gather: what was gathered goes first. */
        crest__conn_commit_gathered(c);
        if (c->flags & CREST__C_CLOSE_REQUESTED)
            return write_failed(c);
    }

    /* Outside a handler's batch, with nothing queued: straight to the
     * socket, no copy. */
    bool batching = (c->flags & (CREST__C_GATHER | CREST__C_CORKED)) ||
                    c->state == CREST_CONN_CONNECTING;
    size_t skip = 0;
    if ((c->flags & CREST__C_WRITABLE) && !c->out_head && !batching) {
        skip = write_direct(c, iov, iovcnt, total);
        if (c->flags & CREST__C_DEAD)
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
        int rc = queue_output(c, p + skip, len - skip);
        skip = 0;
        if (rc < 0)
            return rc;
    }
    if (!batching && (c->flags & CREST__C_WRITABLE)) {
        int rc = crest__conn_flush(c);
        if (rc == 0)
            check_high_water(c);
        return rc;
    }
    if (!batching)
        output_waits(c, was_empty);
    check_high_water(c);
    return 0;
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

int crest_conn_write_messagev(crest_conn_t *c, const struct iovec *iov, int iovcnt) {
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL;
    size_t len = iov_total(iov, iovcnt);
    if (len == SIZE_MAX)
        return -EINVAL;
    const crest_framing_t *f = &c->ep->opts.framing;
    if (f->kind == CREST_FRAMING_RAW)
        return write_iov(c, iov, iovcnt, len);
    uint8_t hdr[8];
    int h = crest_framing_header(f, len, hdr); /* LINE: 0, or -EMSGSIZE */
    if (h < 0)
        return h;
    /* The payload's iovecs with the framing's segment before (LENGTH) or
     * after (LINE) them: the payload itself is not copied here (gathered
     * or queued bytes are copied once, as for any write). */
    struct iovec small[16], *v = small;
    int n = iovcnt + 1;
    if (n > (int)(sizeof small / sizeof small[0])) {
        v = malloc((size_t)n * sizeof *v);
        if (!v)
            return -ENOMEM;
    }
    size_t extra;
    if (f->kind == CREST_FRAMING_LENGTH) {
        v[0] = (struct iovec){.iov_base = hdr, .iov_len = (size_t)h};
        if (iovcnt > 0)
            memcpy(v + 1, iov, (size_t)iovcnt * sizeof *v);
        extra = (size_t)h;
    } else {
        if (iovcnt > 0)
            memcpy(v, iov, (size_t)iovcnt * sizeof *v);
        v[iovcnt] = (struct iovec){.iov_base = (void *)"\n", .iov_len = 1};
        extra = 1;
    }
    int rc = write_iov(c, v, n, len + extra);
    if (v != small)
        free(v);
    return rc;
}

void crest_conn_cork(crest_conn_t *c) {
    c->flags |= CREST__C_CORKED;
}

int crest_conn_uncork(crest_conn_t *c) {
    if (!(c->flags & CREST__C_CORKED))
        return 0;
    c->flags &= (uint32_t)~CREST__C_CORKED;
    /* A shutdown asked for while connecting waits for a flush even with
     * nothing queued: the cork may have held that flush back.  A closed
     * connection (valid until the iteration ends) has nothing to flush. */
    bool due = c->state != CREST_CONN_CLOSED &&
               (c->out_bytes || (c->flags & CREST__C_SHUT_PENDING));
    if (due && (c->flags & CREST__C_WRITABLE) && c->depth == 0)
        return crest__conn_flush(c);
    if (due && (c->flags & CREST__C_WRITABLE))
        crest_io_feed(&c->io, CREST__IO_KICK);
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

static inline bool paused(const struct crest_conn *c) {
    unsigned f = c->flags;
    if (CREST__LIKELY(!(f & (CREST__C_PAUSED_USER | CREST__C_PAUSED_HIGH))))
        return false;
    return (f & CREST__C_PAUSED_USER) || !c->ep->opts.keep_reading;
}

bool crest__conn_paused(const struct crest_conn *c) {
    return paused(c);
}

size_t crest__conn_input_bytes(const struct crest_conn *c) {
    return c->in ? crest__chunk_len(c->in) : 0;
}

/* Reading was paused: input buffered then, and data that reached the socket
 * meanwhile, raised no new edge.  Come back next iteration. */
void crest__conn_resume_input(struct crest_conn *c) {
    if (paused(c))
        return;
    if ((c->in && crest__chunk_len(c->in) > 0) ||
        ((c->flags & CREST__C_EOF_SEEN) && c->state == CREST_CONN_OPEN))
        c->flags |= CREST__C_REDELIVER; /* input, or an EOF, held back */
    if (c->flags & (CREST__C_READABLE | CREST__C_REDELIVER))
        crest_io_feed(&c->io, CREST__IO_KICK);
}

/* Input is about to be delivered: a pause or a resume that a call made
 * is told first, so that the handler hears on_drain before the input it
 * resumed (and, with keep_reading, on_high_water before more input).
 * One flag test on the read path. */
static inline void tell_marks_first(struct crest_conn *c) {
    if (CREST__UNLIKELY(c->flags & (CREST__C_HW_PENDING | CREST__C_DRAIN_PENDING)))
        notify_run(c);
}

static inline bool may_deliver(const struct crest_conn *c) {
    return !(c->flags & CREST__C_CLOSE_REQUESTED) && !paused(c);
}

/* The delivery loops go on: as may_deliver(), and the handler has not
 * changed its framing or itself (then the rest is parsed anew:
 * deliver_bytes). */
static inline bool keep_delivering(const struct crest_conn *c) {
    return !(c->flags & (CREST__C_CLOSE_REQUESTED | CREST__C_REFRAMED)) && !paused(c);
}

/* Not while a pause or resume is still to be told (tell_marks_first): the
 * read loop stops, the notification runs when the callbacks return
 * (crest__conn_notify), and reading goes on from there.  Same mask test. */
static inline bool may_read(const struct crest_conn *c) {
    if ((c->flags & (CREST__C_READABLE | CREST__C_CLOSE_REQUESTED | CREST__C_HW_PENDING |
                     CREST__C_DRAIN_PENDING)) != CREST__C_READABLE ||
        c->state != CREST_CONN_OPEN)
        return false;
    return !paused(c);
}

/* The handler returned a negative close reason for len bytes of input. */
static void reject(struct crest_conn *c, ssize_t r, size_t len) {
    crest_close_reason_t why = (crest_close_reason_t)-r;
    if ((unsigned)why >= CREST_CLOSE_REASON_COUNT)
        why = CREST_CLOSE_PROTOCOL_ERROR;
    crest_conn_fail(c, why, "the handler rejected %zu bytes of input", len);
}

/* Delivery (deliver_raw, deliver_framed, deliver_last_line) runs only
 * inside crest__conn_on_io, whose depth count already keeps the connection
 * alive across the handler's callbacks. */

/* Hand input to the handler: raw, as it came.  Returns the bytes it
 * consumed; stops early when it wants more, pauses or closes. */
static CREST__INLINE size_t deliver_raw(struct crest_conn *c, const uint8_t *p, size_t len) {
    size_t used = 0;
    while (used < len && keep_delivering(c)) {
        size_t left = len - used;
        CREST__WHAT(c->io.loop, CREST__WHAT_ON_DATA);
        ssize_t r = c->ep->handler.on_data(c, p + used, left);
        if (r < 0) {
            reject(c, r, left);
            break;
        }
        if ((size_t)r > left)
            r = (ssize_t)left;
        used += (size_t)r;
        if (r == 0)
            break; /* it wants more bytes first */
        c->read_started = 0;
    }
    return used;
}

/* Framed: one on_message per whole message.  (f stays valid while the
 * loop runs: a change of framing stops it.) */
static size_t deliver_framed(struct crest_conn *c, const uint8_t *p, size_t len) {
    const crest_framing_t *f = &c->ep->opts.framing;
    crest_loop_t *loop = c->io.loop;
    size_t used = 0;
    while (used < len && keep_delivering(c)) {
        crest_frame_t fr;
        int rc = crest_framing_next(f, p + used, len - used, &fr);
        if (rc == CREST_FRAMING_NEED_MORE)
            break;
        if (rc < 0) {
            if (f->kind == CREST_FRAMING_LINE)
                crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                                "line too long: no end of line within the limit of %zu bytes",
                                f->max_message);
            else
                crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                                "frame too large: %llu bytes announced (limit %zu)",
                                (unsigned long long)fr.declared, f->max_message);
            break;
        }
        loop->conn_stats.messages_in++;
        c->messages_in++;
        CREST__WHAT(c->io.loop, CREST__WHAT_ON_MESSAGE);
        int r = c->ep->handler.on_message(c, p + used + fr.offset, fr.length);
        used += fr.consumed;
        c->read_started = 0; /* a message completed: the next one starts now */
        if (r < 0) {
            reject(c, r, fr.length);
            break;
        }
    }
    return used;
}

static CREST__INLINE size_t deliver_as_framed(struct crest_conn *c, const uint8_t *p, size_t len) {
    return c->ep->opts.framing.kind == CREST_FRAMING_RAW ? deliver_raw(c, p, len)
                                                          : deliver_framed(c, p, len);
}

/* The handler changed its framing or itself (crest_conn_set_opts/_handler)
 * during delivery: what follows the bytes it consumed is parsed with the
 * connection's settings as they are now, as often as it changes them. */
static __attribute__((noinline)) size_t deliver_reframed(struct crest_conn *c, const uint8_t *p,
                                                         size_t len, size_t used) {
    while ((c->flags & CREST__C_REFRAMED) && used < len) {
        c->flags &= (uint32_t)~CREST__C_REFRAMED;
        used += deliver_as_framed(c, p + used, len - used);
    }
    return used;
}

/* Deliver len bytes at p, with the handler's replies gathered; returns the
 * bytes consumed. */
static CREST__INLINE size_t deliver_bytes(struct crest_conn *c, const uint8_t *p, size_t len) {
    c->flags |= CREST__C_GATHER;
    size_t used = deliver_as_framed(c, p, len);
    /* A change with nothing left after it needs nothing done (and the
     * usual read ends with everything consumed: one compare). */
    if (CREST__UNLIKELY(used < len) && (c->flags & CREST__C_REFRAMED))
        used = deliver_reframed(c, p, len, used);
    c->flags &= (uint32_t)~(CREST__C_GATHER | CREST__C_REFRAMED);
    if (c->io.loop->gather_owner == c)
        commit_gathered(c);
    return used;
}

/* At EOF, LINE framing hands over a last line that has no "\n" (Go's
 * bufio.ScanLines does the same), if it is within the limit: the codec
 * waits for max + 2 bytes before it calls a line too long, so up to two
 * bytes more may be buffered. */
static void deliver_last_line(struct crest_conn *c) {
    struct crest__chunk *in = c->in;
    if (c->ep->opts.framing.kind != CREST_FRAMING_LINE || !in || crest__chunk_len(in) == 0 ||
        (c->flags & CREST__C_PROXY_WAIT) || !may_deliver(c))
        return;
    size_t len = crest__chunk_len(in);
    const uint8_t *line = in->data + in->start;
    size_t raw = len;
    if (line[len - 1] == '\r')
        len--;
    size_t max = c->ep->opts.framing.max_message;
    if ((c->ep->opts.framing.line_cr_counts ? raw : len) > max) {
        crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                        "line too long: %zu bytes before EOF without an end of line (limit %zu)",
                        len, max);
        return;
    }
    c->io.loop->conn_stats.messages_in++;
    c->messages_in++;
    c->flags |= CREST__C_GATHER;
    CREST__WHAT(c->io.loop, CREST__WHAT_ON_MESSAGE);
    int r = c->ep->handler.on_message(c, line, len);
    c->flags &= (uint32_t)~(CREST__C_GATHER | CREST__C_REFRAMED);
    if (c->io.loop->gather_owner == c)
        crest__conn_commit_gathered(c);
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
    c->flags &= (uint32_t)~CREST__C_PROXY_WAIT;
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

/* Deliver the connection's buffered input. */
static void deliver(struct crest_conn *c) {
    if ((c->flags & CREST__C_PROXY_WAIT) && !take_proxy_header(c))
        return;
    struct crest__chunk *in = c->in;
    in->start += (uint32_t)deliver_bytes(c, in->data + in->start, crest__chunk_len(in));
}

/* After delivery: give an empty buffer back, or make room for the rest of
 * a partial message.  Returns false if the connection is closing. */
static bool settle_input(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    struct crest__chunk *in = c->in;
    if (!in || (c->flags & CREST__C_CLOSE_REQUESTED))
        return !(c->flags & CREST__C_CLOSE_REQUESTED);
    if (crest__chunk_len(in) == 0) {
        crest__chunk_put(&loop->pool, in);
        c->in = NULL;
        c->read_started = 0;
        return true;
    }
    /* The read timeout is for a message the peer started and has not
     * finished: not for whole messages a pause holds back. */
    if (!c->read_started && !paused(c)) {
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
    if ((c->flags & CREST__C_PROXY_WAIT) && limit < CREST_PROXY_MAX_HEADER)
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
    if (c->flags & CREST__C_PROXY_WAIT) {
        /* The handler never heard of this connection: no on_eof.  A
         * connect-only health check (HAProxy's) sends nothing at all; that
         * is not worth a warning. */
        size_t got = c->in ? crest__chunk_len(c->in) : 0;
        if (got)
            crest_conn_fail(c, CREST_CLOSE_PROTOCOL_ERROR,
                            "PROXY header: the peer closed after %zu bytes of it", got);
        else {
            crest_log(CREST_LOG_DEBUG,
                      "connection fd %d closed before its PROXY header (a health check?)",
                      c->io.fd);
            crest__conn_request_close(c, CREST_CLOSE_PROTOCOL_ERROR, 0);
        }
        return;
    }
    while (c->in && crest__chunk_len(c->in) > 0) {
        tell_marks_first(c);
        if (!may_deliver(c))
            return; /* the resume (redeliver) brings us back */
        size_t before = crest__chunk_len(c->in);
        deliver(c);
        if (flush_due(c))
            (void)crest__conn_flush(c); /* may resume delivery */
        if (c->flags & CREST__C_CLOSE_REQUESTED)
            return;
        if (crest__chunk_len(c->in) == before)
            break; /* only a partial message is left */
    }
    tell_marks_first(c);
    deliver_last_line(c);
    if (flush_due(c))
        (void)crest__conn_flush(c);
    tell_marks_first(c);
    if (c->flags & CREST__C_CLOSE_REQUESTED)
        return;
    if (paused(c))
        return; /* a paused handler hears nothing, the end included: the
                   resume brings the EOF back (resume_input) */
    if (c->in) {
        crest__chunk_put(&loop->pool, c->in); /* a partial message never finished */
        c->in = NULL;
    }
    c->state = CREST_CONN_HALF_CLOSED;
    if (c->ep->handler.on_eof) {
        c->depth++;
        CREST__WHAT(c->io.loop, CREST__WHAT_ON_EOF);
        c->ep->handler.on_eof(c);
        c->depth--;
    } else {
        crest__conn_request_close(c, CREST_CLOSE_PEER_EOF, 0);
    }
}

/* The handler left len bytes of the loop's rbuf unconsumed (a partial
 * message, or whole ones a pause held back): they move to a buffer of the
 * connection's own.  Returns false if the connection is closing. */
static bool keep_rest(struct crest_conn *c, const uint8_t *p, size_t len) {
    if (c->flags & CREST__C_CLOSE_REQUESTED) {
        /* Dropped: the peer sent more than was used, so it may send more
         * still, and the close lingers after all. */
        c->flags &= (uint32_t)~CREST__C_NO_LINGER;
        return false;
    }
    struct crest__chunk *in = crest__chunk_get(&c->io.loop->pool, len);
    if (!in) {
        c->flags |= CREST__C_ABORTING;
        crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for an input buffer");
        return false;
    }
    memcpy(in->data, p, len);
    in->end = (uint32_t)len;
    c->in = in;
    return settle_input(c);
}

/* One read: into the connection's buffer when it holds a partial message
 * (or a PROXY header is due), else into the loop's rbuf, delivered in
 * place.  Returns the bytes read, 0 at EOF, or -errno; delivers what it
 * read and returns -ECANCELED if the connection is closing after that. */
static CREST__INLINE ssize_t read_once(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    bool scratch = !c->in && !(c->flags & CREST__C_PROXY_WAIT) && !loop->rbuf_busy;
    uint8_t *dst;
    size_t space;
    if (scratch) {
        dst = loop->rbuf;
        space = CREST__SCRATCH_SIZE;
    } else {
        if (!c->in) {
            c->in = crest__chunk_get(&loop->pool, CREST__CHUNK_SIZE);
            if (!c->in) {
                c->flags |= CREST__C_ABORTING;
                crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for an input buffer");
                return -ECANCELED;
            }
        }
        dst = c->in->data + c->in->end;
        space = crest__chunk_space(c->in);
    }
    /* Receive timestamps (opt-in) take recvmsg; everyone else the plain
     * read, behind this one test. */
    ssize_t n = CREST__UNLIKELY(c->flags & CREST__C_RX_TSTAMP)
                    ? crest__rx_read(c, dst, space)
                    : crest__sys_read(c->io.fd, dst, space);
    loop->conn_stats.reads++;
    if (n <= 0)
        return n;
    loop->conn_stats.bytes_in += (uint64_t)n;
    c->bytes_in += (uint64_t)n;
    c->last_active = loop->now_ms;
    c->last_input = loop->now_ms;
    if ((size_t)n < space && !(c->flags & (CREST__C_PEER_DONE | CREST__C_URGENT)))
        c->flags &= (uint32_t)~CREST__C_READABLE; /* short read: drained */
    bool alive;
    if (scratch) {
        loop->rbuf_busy = true;
        size_t used = deliver_bytes(c, dst, (size_t)n);
        loop->rbuf_busy = false;
        if (used == (size_t)n)
            alive = !(c->flags & CREST__C_CLOSE_REQUESTED);
        else
            alive = keep_rest(c, dst + used, (size_t)n - used);
    } else {
        c->in->end += (uint32_t)n;
        deliver(c);
        alive = settle_input(c);
    }
    return alive ? n : -ECANCELED;
}

static CREST__INLINE void read_input(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    size_t budget = c->ep->opts.read_budget;
    while (may_read(c)) {
        ssize_t n = read_once(c);
        if (n > 0) {
            if (flush_due(c))
                (void)crest__conn_flush(c);
            if (!(c->flags & CREST__C_READABLE))
                break; /* a short read: drained */
            if ((size_t)n >= budget) {
                if (may_read(c))
                    crest_io_feed(&c->io, CREST_IO_READABLE); /* fair share used */
                return;
            }
            budget -= (size_t)n;
            continue;
        }
        if (n == 0) {
            c->flags &= (uint32_t)~CREST__C_READABLE;
            c->flags |= CREST__C_EOF_SEEN;
            take_eof(c);
            return;
        }
        if (n == -ECANCELED)
            return;
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN) {
            c->flags &= (uint32_t)~(CREST__C_READABLE | CREST__C_URGENT);
            break;
        }
        socket_failed(c, (int)-n);
        return;
    }
    /* Nothing more to read: an idle connection holds no input buffer. */
    if (CREST__UNLIKELY(c->in != NULL) && crest__chunk_len(c->in) == 0) {
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
        crest__conn_connect_failed(c, CREST_CLOSE_CONNECT_FAILED, err);
        return;
    }
    c->flags |= CREST__C_WRITABLE;
    if (!(c->flags & CREST__C_CLOSE_REQUESTED)) {
        crest__conn_open(c);
        /* Output written while connecting may be past high water. */
        if (c->state == CREST_CONN_OPEN)
            check_high_water(c);
        return;
    }
    /* Closed while connecting, with output to deliver: it goes now, then
     * the close completes.  The handler, done with the connection, hears
     * no on_open. */
    c->state = CREST_CONN_OPEN;
    c->flags &= (uint32_t)~CREST__C_CLOSE_REQUESTED;
    crest__conn_request_close(c, (crest_close_reason_t)c->close_reason, c->close_err);
}

/* EPOLLERR (an RST, say) on a connection that neither reads nor writes
 * now (paused, half-closed, or with nothing to send): no syscall would
 * report the error until the application writes, and the connection would
 * sit there, with no timeout to end it.  Take the error now.  (A
 * connection that reads on meets the error in read().) */
static void take_socket_error(struct crest_conn *c) {
    int err = crest_sockopt_get_error(c->io.fd);
    if (err > 0)
        socket_failed(c, err);
}

/* What sends an event down the general path: anything but readiness
 * news for an open connection with nothing held back. */
#define SLOW_FLAGS                                                                      \
    (CREST__C_PEER_DONE | CREST__C_PAUSED_HIGH | CREST__C_PAUSED_USER | CREST__C_CORKED | \
     CREST__C_SHUT_PENDING | CREST__C_CLOSE_REQUESTED | CREST__C_DEAD | CREST__C_REDELIVER | \
     CREST__C_PROXY_WAIT | CREST__C_EOF_SEEN)

void crest__conn_on_io(crest_io_t *io, unsigned events, void *arg) {
    CREST__UNUSED(io);
    struct crest_conn *c = arg;
    /* The usual event: the socket became readable (and maybe writable),
     * nothing is queued to flush, nothing waits for a resume. */
    if (CREST__LIKELY(!(events & ~(unsigned)(CREST_IO_READABLE | CREST_IO_WRITABLE)) &&
                      (events & CREST_IO_READABLE) && !(c->flags & SLOW_FLAGS) &&
                      c->state == CREST_CONN_OPEN && !c->out_head)) {
        c->flags |= CREST__C_READABLE;
        if (events & CREST_IO_WRITABLE)
            c->flags |= CREST__C_WRITABLE;
        c->depth++;
        read_input(c);
        c->depth--;
        /* A close to complete, or notifications the handler's calls
         * recorded (state was OPEN: a close request means CLOSING). */
        if (CREST__UNLIKELY(c->flags & (CREST__C_CLOSE_REQUESTED | CREST__C_NOTIFY)))
            crest__conn_settle(c);
        return;
    }
    if (CREST__UNLIKELY(c->state == CREST_CONN_CLOSED)) {
        crest__conn_linger_io(c, events); /* closed for the handler: lingering */
        return;
    }
    /* CREST__IO_KICK alone (a close or flush to complete) carries no
     * readiness news. */
    c->depth++;
    if (c->state == CREST_CONN_CONNECTING) {
        if (!(events & (CREST_IO_WRITABLE | CREST_IO_ERR | CREST_IO_HUP)))
            goto out;
        connect_done(c);
    }
    if (events & (CREST_IO_READABLE | CREST_IO_RDHUP | CREST_IO_HUP | CREST_IO_ERR))
        c->flags |= CREST__C_READABLE;
    if (events & CREST__IO_PRI)
        c->flags |= CREST__C_READABLE | CREST__C_URGENT; /* past the mark: more */
    if (events & (CREST_IO_RDHUP | CREST_IO_HUP | CREST_IO_ERR))
        c->flags |= CREST__C_PEER_DONE;
    if (events & (CREST_IO_WRITABLE | CREST_IO_HUP | CREST_IO_ERR))
        c->flags |= CREST__C_WRITABLE;
    if ((c->out_bytes || (c->flags & CREST__C_SHUT_PENDING)) &&
        (c->flags & (CREST__C_WRITABLE | CREST__C_CORKED)) == CREST__C_WRITABLE)
        (void)crest__conn_flush(c);
    tell_marks_first(c);
    if ((c->flags & CREST__C_REDELIVER) && may_deliver(c) &&
        (c->in || (c->flags & CREST__C_EOF_SEEN))) {
        c->flags &= (uint32_t)~CREST__C_REDELIVER;
        if ((c->flags & CREST__C_EOF_SEEN) && c->state == CREST_CONN_OPEN) {
            take_eof(c);
        } else if (c->in) {
            deliver(c);
            if (settle_input(c) && flush_due(c))
                (void)crest__conn_flush(c);
        }
    }
    if (may_read(c))
        read_input(c);
    if (CREST__UNLIKELY(events & CREST_IO_ERR) && !(c->flags & CREST__C_DEAD) && !may_read(c))
        take_socket_error(c);
out:
    c->depth--;
    crest__conn_settle(c);
}
