/* crest: connections and the protocol-handler contract.
 *
 * A connection is a nonblocking stream socket (TCP or Unix-domain) that the
 * loop reads and writes for a protocol handler.  It is registered with epoll
 * once, for readable|writable|rdhup|pri, edge-triggered, and caches
 * readiness: no epoll_ctl per message, and a short read means "drained" (no
 * extra read that would return EAGAIN), except at a hang-up or with urgent
 * data pending.
 *
 * Urgent data (MSG_OOB): crest sets SO_OOBINLINE, so the urgent byte is
 * delivered as an ordinary byte of the stream, in order.
 *
 * State machine:
 *   CONNECTING -> OPEN            outbound connect completed
 *   OPEN -> HALF_CLOSED           the peer shut down its side (EOF); output
 *                                 may still be written and is flushed
 *   OPEN|HALF_CLOSED -> CLOSING   crest_conn_close(): reading stops, queued
 *                                 output is flushed, then the socket closes
 *   any -> CLOSED                 on_close(reason) runs exactly once; the
 *                                 connection is freed after the callbacks of
 *                                 this iteration return (after its linger)
 *
 * Lingering close: close() on a socket with unread input, or input that
 * arrives after it, sends RST, and an RST destroys the reply still in the
 * kernel's send queue (the peer gets part of it, then ECONNRESET).  So a
 * graceful close whose peer has not ended its side (no EOF read yet), once
 * the output is flushed, shuts down writing (the peer sees EOF after the
 * last byte), then reads and discards the peer's input until its EOF, an
 * error, or linger_ms, and only then closes the socket (nginx's
 * lingering_close).  on_close runs when the linger starts: the handler is
 * done with the connection; the discarded bytes are never delivered.  A
 * linger keeps crest_loop_run() going for at most linger_ms, and
 * crest_loop_destroy() ends it.  Abortive closes and socket errors do not
 * linger.
 *
 * Reading: one event reads at most read_budget bytes; a connection still
 * readable after that goes on the loop's ready list and is served next
 * iteration, so a fast sender cannot starve the others.
 *
 * Writing: crest_conn_write() writes straight to the socket when it is
 * writable and nothing is queued; what the kernel does not take is copied
 * to the output queue and sent on the EPOLLOUT edge.  Writes made inside
 * on_data/on_message are copied into the loop's 16 KiB gather buffer and
 * sent with one send when the callback returns (one syscall for many
 * pipelined replies); a write that does not fit is queued behind them.
 * crest_conn_output_bytes() counts gathered bytes too.
 *
 * Backpressure: when queued output exceeds high_water, the connection stops
 * reading and calls on_high_water; when it falls to low_water, reading
 * resumes and on_drain is called.  That bounds what a connection's replies
 * to its own input can queue (high_water plus one message), but not output
 * written to it from elsewhere (a broadcast, a push, a proxy's other
 * side): for every writer, max_output is the hard cap.  A write that would
 * take the connection's output (crest_conn_output_bytes()) past it is
 * refused whole with -ENOBUFS, and by default the connection is closed
 * (crest_output_policy_t).  So memory per slow reader stays bounded by
 * max_output (16 MiB by default), whoever writes to it.
 *
 * Callbacks never run inside a crest call (the rule of the whole library:
 * docs/api-contract.md).  The pause and the resume of reading take effect
 * inside the call that crosses the mark (a write, writev, write_message,
 * write_messagev, uncork or shutdown), but on_high_water and on_drain are
 * notifications that run later: right after the connection's own callback
 * returns, if the call was made from one of its callbacks (on_data,
 * on_message, on_open, on_eof, or one of these notifications); otherwise
 * (a write from a timer, a deferred callback, another connection's
 * callback, or main() between iterations) from the loop when it next
 * dispatches the connection, on the next iteration.  They come in the
 * order the marks were crossed, once per crossing: a whole pause and
 * resume that happens before they can run is reported as on_high_water
 * then on_drain; if the marks are crossed again before that (high, low,
 * high), the last two crossings cancel out and the handler hears one
 * on_high_water.  So the handler always ends up told the state it is in.
 * When they run, the queue may have moved on (below low water again
 * inside on_high_water): crest_conn_output_bytes() says where it is now.
 * Once a close has been requested (CLOSING, then CLOSED) none of them
 * runs, pending ones included: on_close is the last word.  on_flushed
 * follows the same rules.  crest_conn_flush_notify()'s callbacks differ
 * in one point: each runs exactly once, even on a connection that closes
 * first (then before its on_close, with an error status).
 *
 * Memory: a connection at rest holds no buffer.  Input is read into the
 * loop's buffer and delivered from there; a connection takes a chunk from
 * the loop's pool only for what is left over (a partial message, input a
 * pause holds back, output the socket did not take) and gives it back
 * when empty (see crest_loop_buf_stats()).
 *
 * Threads: a connection belongs to its loop's thread.
 *
 * Which call is legal from which callback, in which state, and what each
 * does on a closing or closed connection: docs/api-contract.md (one table;
 * tests/test_matrix.c checks every cell).
 */
#ifndef CREST_CONN_H
#define CREST_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "addr.h"
#include "codec.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_conn crest_conn_t;

typedef enum crest_conn_state {
    CREST_CONN_CONNECTING = 0,
    CREST_CONN_OPEN,
    CREST_CONN_HALF_CLOSED,
    CREST_CONN_CLOSING,
    CREST_CONN_CLOSED
} crest_conn_state_t;

/* Why a connection closed.  Counted per loop (crest_loop_conn_stats()). */
typedef enum crest_close_reason {
    CREST_CLOSE_PEER_EOF = 0,     /* the peer closed cleanly */
    CREST_CLOSE_PEER_RESET,       /* ECONNRESET / EPIPE */
    CREST_CLOSE_IO_ERROR,         /* another read/write error */
    CREST_CLOSE_IDLE_TIMEOUT,
    CREST_CLOSE_READ_TIMEOUT,     /* a message started but not finished */
    CREST_CLOSE_WRITE_TIMEOUT,    /* output not drained */
    CREST_CLOSE_CONNECT_TIMEOUT,
    CREST_CLOSE_CONNECT_FAILED,   /* refused, unreachable, ... (err says) */
    CREST_CLOSE_PROTOCOL_ERROR,   /* the handler rejected the input */
    CREST_CLOSE_TOO_LARGE,        /* named "too large": a message over the
                                     framing's limit, or RAW input over
                                     max_input; the warning crest logs says
                                     which ("line too long", "frame too
                                     large", "input buffer full") */
    CREST_CLOSE_LOCAL,            /* crest_conn_close() */
    CREST_CLOSE_ABORT,            /* crest_conn_abort(): RST */
    CREST_CLOSE_CONN_LIMIT,       /* refused: the listener is full */
    CREST_CLOSE_NO_MEMORY,
    CREST_CLOSE_SHUTDOWN,         /* the loop or server is shutting down */
    CREST_CLOSE_OUTPUT_LIMIT,     /* a write would have queued more than
                                     max_output (policy CLOSE): the peer is
                                     not reading */
    CREST_CLOSE_RESOLVE_FAILED,   /* crest_connect() to a name: the lookup
                                     failed (err: ENOENT no such name or no
                                     address, ETIMEDOUT, ECONNREFUSED the
                                     servers refused; crest's log has the
                                     resolver's words) */
    CREST_CLOSE_REASON_COUNT
} crest_close_reason_t;

/* "peer EOF", "too large", ...: one name per reason (the detail of a
 * TOO_LARGE or PROTOCOL_ERROR close is in crest's log, not in the name). */
const char *crest_close_reason_name(crest_close_reason_t reason);
/* "peer_eof", "too_large", ...: for metrics and key=value output. */
const char *crest_close_reason_key(crest_close_reason_t reason);

/* The protocol-handler contract.  Every callback is optional except
 * on_data (RAW framing) or on_message (LINE/LENGTH framing).  The handler's
 * context, given to crest_listen()/crest_connect(), is
 * crest_conn_handler_ctx(c); per-connection data is crest_conn_set_data().
 * A callback may write, close or abort its connection; after a close the
 * connection stays valid until the callback returns. */
typedef struct crest_handler {
    /* Accepted (after its PROXY header, if the listener expects one), or
     * outbound connect completed.  A connection that fails before that
     * gets on_close without on_open. */
    void (*on_open)(crest_conn_t *c);
    /* RAW: bytes arrived.  Return how many were consumed (0..len; the rest
     * is kept and offered again with more), or a negative crest_close_reason_t
     * (-CREST_CLOSE_PROTOCOL_ERROR, ...) to close the connection. */
    ssize_t (*on_data)(crest_conn_t *c, const uint8_t *data, size_t len);
    /* LINE/LENGTH: one whole message (payload, without framing).  Return 0,
     * or a negative crest_close_reason_t to close. */
    int (*on_message)(crest_conn_t *c, const uint8_t *msg, size_t len);
    /* The peer shut down its side; all its data has been delivered.  Without
     * on_eof, the connection closes (reason PEER_EOF) once output is
     * flushed.  With it, the handler decides (write more, then close). */
    void (*on_eof)(crest_conn_t *c);
    /* Output rose above high_water: reading was paused (unless
     * keep_reading).  Runs after the write that crossed the mark, never
     * inside it (see "Backpressure"). */
    void (*on_high_water)(crest_conn_t *c);
    /* Output fell to low_water after a high-water pause: reading resumed.
     * Runs after the call whose flush crossed the mark, never inside it. */
    void (*on_drain)(crest_conn_t *c);
    /* Closed, exactly once.  err is the errno behind the reason, or 0.  The
     * socket is still open during the call (crest_conn_peer() works), but
     * nothing more can be written.  After a graceful close it runs once the
     * output is flushed, as the linger starts (see "Lingering close"). */
    void (*on_close)(crest_conn_t *c, crest_close_reason_t reason, int err);
    /* Write completion, per connection: output that had to be queued (the
     * socket did not take it at once) has all been handed to the kernel,
     * and nothing is queued now.  Free on the usual path, where the
     * socket takes every write: nothing was queued, nothing runs.  Runs
     * from the loop like on_drain (never inside a call; not once a close
     * has been requested).  Per write: crest_conn_flush_notify(). */
    void (*on_flushed)(crest_conn_t *c);
    /* A name for the handler ("echo", "http"), static storage: it names
     * the handler's slow callbacks in logs, the doctor and /debug pages
     * (insight.h).  NULL: the symbol of on_data/on_message is used. */
    const char *name;
} crest_handler_t;

/* What a write that would take the queued output past max_output does
 * (see crest_conn_opts_t.max_output).  Either way the write is refused
 * whole (-ENOBUFS): not one of its bytes is sent or queued.
 *
 * CLOSE (the default): the connection is also closed, abortively (its
 * queued output is dropped: the peer is not reading it), with reason
 * OUTPUT_LIMIT and a warning in the log naming the peer, the bytes queued
 * and the limit.  This is the default because the usual writer of output
 * that is not a reply (a broadcast, a push, a proxy's other side) does not
 * check every write's return value: refusing a message and carrying on
 * would leave a gap in the stream that nobody notices, while a slow reader
 * that is disconnected knows it, and can reconnect and resynchronise.
 *
 * REFUSE: the connection stays open, its queued output still flows; the
 * application decides (drop that message, close, or wait for on_drain /
 * crest_conn_flush_notify() and write again). */
typedef enum crest_output_policy {
    CREST_OUTPUT_CLOSE = 0,
    CREST_OUTPUT_REFUSE
} crest_output_policy_t;

/* Per-connection settings.  Start from crest_conn_opts_init(). */
typedef struct crest_conn_opts {
    crest_framing_t framing;      /* RAW (default), LINE or LENGTH */
    size_t max_input;             /* RAW: most unconsumed bytes buffered (64 KiB) */
    size_t read_budget;           /* bytes read per event before yielding (64 KiB) */
    size_t high_water;            /* output queue: pause reading above (1 MiB) */
    size_t low_water;             /* resume at or below (256 KiB) */
    int keep_reading;             /* do not pause reading above high_water
                                     (on_high_water still runs).
                                     CREST_KEEP_READING_AUTO (the default):
                                     true for outbound connections
                                     (crest_connect*) and adopted ones
                                     (crest_conn_adopt), false for accepted
                                     ones.  A client that pipelines
                                     requests and pauses its reading when
                                     its own requests pass high water stops
                                     draining the server, whose replies
                                     then pause the server: both ends wait
                                     for ever.  A server pauses (its
                                     replies to a client that does not read
                                     stop it reading that client); a
                                     client reads on.  true / false: as
                                     given. */
    /* Timeouts, in ms; 0: off.  Any value up to UINT32_MAX (49.7 days) is
     * honoured as given. */
    uint32_t idle_timeout_ms;     /* no bytes in or out for this long */
    uint32_t input_idle_timeout_ms; /* no bytes in for this long, whatever
                                     goes out (a client that only listens
                                     to a server that keeps writing); it
                                     counts while reading is paused too, as
                                     idle_timeout_ms does.  The close
                                     reason is IDLE_TIMEOUT too; the
                                     debug log tells the two apart ("idle
                                     timeout: no input for N ms") */
    uint32_t read_timeout_ms;     /* a message started but not finished
                                     (not counting while reading is paused:
                                     whole messages a pause holds back are
                                     not late) */
    uint32_t write_timeout_ms;    /* output queued with no progress */
    uint32_t connect_timeout_ms;  /* outbound connect */
    uint32_t linger_ms;           /* lingering close (above): most time spent
                                     reading out the peer after a graceful
                                     close (5000; 0: close at once, which
                                     may send RST) */
    bool nodelay;                 /* TCP_NODELAY (default true) */
    bool keepalive;               /* SO_KEEPALIVE (default false) */
    int keepalive_idle_s, keepalive_interval_s, keepalive_count;
    unsigned user_timeout_ms;     /* TCP_USER_TIMEOUT (0: system default) */
    int sndbuf, rcvbuf;           /* 0: kernel default (autotuned) */
    /* Hard cap on output waiting in the process for this connection
     * (crest_conn_output_bytes(): queued plus gathered), whoever writes it
     * (16 MiB; 0: no cap short of the 4 GiB - 1 a queue can hold; at most
     * 4 GiB - 1; when set, at least high_water, else crest_listen() and
     * crest_connect() say -EINVAL).  A write that would pass it is
     * refused whole with -ENOBUFS, and output_policy says what else
     * happens.  So a single write larger than max_output always fails:
     * write a large payload in pieces, each written from on_drain or the
     * callback of crest_conn_flush_notify(). */
    size_t max_output;
    crest_output_policy_t output_policy; /* CLOSE (default) or REFUSE */
    /* crest_connect() to a name (not a literal address): */
    struct crest_resolver *resolver; /* NULL: the loop's own (resolve.h:
                                     crest_loop_resolver()) */
    int family;                   /* AF_UNSPEC (default), AF_INET, AF_INET6 */
    uint32_t happy_eyeballs_delay_ms; /* wait before trying the next address
                                     while one attempt is still connecting
                                     (0: 250, RFC 8305's Connection Attempt
                                     Delay) */
} crest_conn_opts_t;

/* keep_reading's default: decided by the direction (above). */
#define CREST_KEEP_READING_AUTO (-1)

void crest_conn_opts_init(crest_conn_opts_t *opts);

/* Outbound: a nonblocking connect to addr (see addr.h).  The connection
 * starts CONNECTING; on_open runs when it completes, or on_close with
 * CONNECT_FAILED (err: ECONNREFUSED, ENETUNREACH, ...) or CONNECT_TIMEOUT.
 *
 * addr may name a host, "db.internal:5432": crest_connect() then resolves
 * it without blocking (the resolver of opts, else the loop's own; see
 * resolve.h: cached per TTL, literals need none) and connects with Happy
 * Eyeballs (RFC 8305): the addresses alternate between families, starting
 * with the resolver's first; one attempt starts, the next after
 * happy_eyeballs_delay_ms if the first has not connected yet, or at once
 * when one fails; the first to connect becomes the connection, the others
 * are closed.  connect_timeout_ms counts from this call and covers the
 * lookup and every attempt.  A failed lookup closes with RESOLVE_FAILED;
 * every attempt refused, with CONNECT_FAILED and the last attempt's errno.
 * Until an attempt wins, the connection has no socket of its own:
 * crest_conn_fd() is a placeholder fd, socket options and
 * crest_conn_get_tcp_info() fail, crest_conn_peer() fails (-ENOTCONN);
 * writes are queued as for any connect in progress.  A close or abort
 * before then cancels the lookup and closes every attempt.  Without c-ares
 * (./configure --without-c-ares) a name fails at once with -ENOTSUP.
 * opts may be NULL for defaults; it is copied.  0 and *connp, or -errno
 * (the callbacks never run then): -EINVAL for invalid options (among them
 * max_output set below high_water); -ESHUTDOWN while crest_loop_destroy()
 * runs (from an on_close it causes) or a crest_loop_shutdown() is under
 * way.  keep_reading's AUTO default means true here (see
 * crest_conn_opts_t). */
int crest_connect(crest_loop_t *loop, const char *addr, const crest_conn_opts_t *opts,
                  const crest_handler_t *handler, void *ctx, crest_conn_t **connp);
int crest_connect_addr(crest_loop_t *loop, const crest_addr_t *addr, const crest_addr_t *bind_addr,
                       const crest_conn_opts_t *opts, const crest_handler_t *handler, void *ctx,
                       crest_conn_t **connp);

/* Adopt a connected stream socket made elsewhere: one end of a
 * socketpair(), a TCP or Unix-domain socket inherited from a parent or
 * passed over SCM_RIGHTS.  crest sets it nonblocking and close-on-exec,
 * records it in the fd registry (kind CREST_FD_ACCEPTED, origin
 * "crest_conn_adopt"), applies opts (NULL: defaults; copied) and serves
 * it like any connection.  Until its first event the connection is
 * CONNECTING (writes are queued; a close then works as for
 * crest_connect()); on_open runs from the loop after the calling
 * callback returns (later in the same iteration, or the next), never
 * inside this call (or on_close with CONNECT_FAILED if the socket
 * already holds an error).  keep_reading's AUTO default means true here:
 * crest cannot know which end drives, and the end that reads on cannot
 * deadlock.
 * On success crest owns fd and closes it when the connection ends; on
 * failure fd stays the caller's, open, with its flags as they were
 * (socket options already applied stay).  Loop thread only; no callback
 * runs inside the call.  0 and *connp, or -EINVAL (NULL argument, bad
 * opts, not SOCK_STREAM, or a listening socket: see
 * crest_listener_adopt()), -EBADF (not an open fd), -ENOTSOCK, -ENOTCONN
 * (not connected), -EEXIST (crest owns fd already: the fd registry holds
 * it; an fd the application registered itself, crest_fd_release() it
 * first), -ESHUTDOWN (crest_loop_destroy() or crest_loop_shutdown() under
 * way), -ENOMEM. */
int crest_conn_adopt(crest_loop_t *loop, int fd, const crest_conn_opts_t *opts,
                     const crest_handler_t *handler, void *ctx, crest_conn_t **connp);

/* Write len bytes (copied if they cannot go out at once).  0, -ENOTCONN
 * after close or shutdown, -EPIPE if the socket failed (the connection is
 * then closing, with the reason the error maps to), -ENOBUFS if the bytes
 * would take the connection's output past max_output (nothing of them is
 * sent or queued; with the CLOSE policy the connection is then closing,
 * abortively, reason OUTPUT_LIMIT), -ENOMEM; writev: -EINVAL if iovcnt is
 * outside 0..IOV_MAX or the lengths' sum overflows.
 * While CONNECTING, bytes are queued and go out once connected. */
int crest_conn_write(crest_conn_t *c, const void *data, size_t len);
int crest_conn_writev(crest_conn_t *c, const struct iovec *iov, int iovcnt);
/* Write msg framed as the connection's framing says: header + payload for
 * LENGTH, msg + "\n" for LINE, msg as is for RAW.  -EMSGSIZE if too large;
 * otherwise as crest_conn_write() (the cap counts the framing too). */
int crest_conn_write_message(crest_conn_t *c, const void *msg, size_t len);

/* One message whose payload is the concatenation of iov[0..iovcnt), framed
 * as crest_conn_write_message() frames one (LENGTH: header + the iovecs;
 * LINE: the iovecs + "\n"; RAW: as is), without copying the payload into
 * a temporary: header + body with no copy.  -EMSGSIZE if the payload is
 * over the framing's max_message (or its header's range), -EINVAL as
 * writev (iovcnt outside 0..IOV_MAX, a sum that overflows); otherwise as
 * crest_conn_write() (one write: refused whole or taken whole), -ENOMEM
 * if more than 15 iovecs need a temporary array and none can be had.
 * No callback runs inside (on_high_water later: "Backpressure"). */
int crest_conn_write_messagev(crest_conn_t *c, const struct iovec *iov, int iovcnt);

/* Write completion, per write.  cb runs exactly once, from the loop, never
 * inside this call: with status 0 once every byte written to c before this
 * call (queued or gathered) has been handed to the kernel, or, if the
 * connection closes before that, with -ECANCELED (a local close or abort
 * dropped them: crest_conn_abort(), the output cap, a write timeout,
 * crest_loop_close_all(abort), crest_loop_destroy()) or the socket's
 * error as -errno (-ECONNRESET, -EPIPE, or the connect's own error while
 * connecting).  A graceful close flushes first, so they usually get 0.
 * When everything has left already, cb runs right after c's current
 * callback returns (called from one of c's callbacks), else on the next
 * iteration.  Several may wait; they run in the order they were asked
 * for, and before on_close when the connection closes first.  The
 * waiting list lives outside the connection (allocated on first use).
 * 0; -EINVAL (no cb); -ENOTCONN once a close has been requested (cb then
 * never runs); -ENOMEM.  From the loop's thread; no callback runs inside.
 * In cb, c is valid (CLOSING when status is not 0: writes say -ENOTCONN);
 * arg is the caller's, to free there. */
typedef void (*crest_conn_flush_cb)(crest_conn_t *c, int status, void *arg);
int crest_conn_flush_notify(crest_conn_t *c, crest_conn_flush_cb cb, void *arg);

/* Batch: while corked, writes are queued without syscalls; uncork sends
 * everything with one writev (one segment for a burst of small writes).
 * Uncork: 0, or -EPIPE if that send failed (the connection is then
 * closing). */
void crest_conn_cork(crest_conn_t *c);
int crest_conn_uncork(crest_conn_t *c);

/* Half-close our side (shutdown(SHUT_WR)) once queued output is flushed.
 * Reading goes on.  0, -ENOTCONN after a close was requested (even one
 * still waiting for its connect) or a shutdown, -EPIPE if the socket
 * failed. */
int crest_conn_shutdown(crest_conn_t *c);
/* Graceful close: stop reading, flush output, close (reason LOCAL).  On a
 * CONNECTING connection with output queued, the close waits for the
 * connect, sends the output, then closes, without on_open; if the connect
 * fails instead, on_close says CONNECT_FAILED or CONNECT_TIMEOUT.  A no-op
 * on a connection already closing or closed. */
void crest_conn_close(crest_conn_t *c);
/* The same, without the linger ("Lingering close") when nothing says the
 * peer has more to send: no input buffered and the socket read to EAGAIN
 * when the close completes; otherwise it lingers as crest_conn_close().
 * For a protocol whose peer has said it is done: an HTTP request read
 * whole that asked for the close (HTTP/1.0, "Connection: close"), as
 * nginx closes (lingering_close on: linger only when the client may send
 * more).  Saves a shutdown(), a wait and a read per connection; the bet is
 * nginx's: input that arrives after the close would draw an RST. */
void crest_conn_close_nolinger(crest_conn_t *c);
/* Close with a reason and a logged explanation ("frame too large: 70000
 * bytes, limit 65536"): the way to reject bad peer input.  Graceful like
 * crest_conn_close() (queued output is still flushed). */
void crest_conn_fail(crest_conn_t *c, crest_close_reason_t reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Abortive close: drop queued output and send RST (SO_LINGER 0). */
void crest_conn_abort(crest_conn_t *c);

/* Pause / resume reading (the handler's own flow control).  Both are
 * no-ops on a closed connection (one closed earlier in this iteration may
 * still be named by the caller). */
void crest_conn_pause(crest_conn_t *c);
void crest_conn_resume(crest_conn_t *c);

/* Change this connection's socket options; the effective buffer size is
 * returned (see sockopt.h).  -ENOTCONN once the connection is CLOSED. */
int crest_conn_set_nodelay(crest_conn_t *c, bool on);
int crest_conn_set_sndbuf(crest_conn_t *c, int bytes);
int crest_conn_set_rcvbuf(crest_conn_t *c, int bytes);

void crest_conn_set_data(crest_conn_t *c, void *data);
void *crest_conn_get_data(const crest_conn_t *c);
void *crest_conn_handler_ctx(const crest_conn_t *c);
crest_loop_t *crest_conn_loop(const crest_conn_t *c);
crest_conn_state_t crest_conn_state(const crest_conn_t *c);
/* The socket, for getsockopt and the like.  Do not close it, and do not
 * dup() it: crest relies on its close to take it out of epoll.  -1 once
 * on_close has returned (a lingering close still holds the socket, but it
 * is no longer the application's). */
int crest_conn_fd(const crest_conn_t *c);
size_t crest_conn_output_bytes(const crest_conn_t *c);
/* The client's address ("127.0.0.1:40000"), into buf: the one a PROXY
 * header named (proxy.h) if there was one, else the socket's peer.
 * Returns the length written or -errno.  A Unix-domain client is named by
 * the path it bound, and clients rarely bind one: every unnamed client is
 * "unix:".  Tell connections apart by crest_conn_id(), not by peer.  (For
 * a Unix-domain peer the kernel is asked each time: -ENOTCONN once
 * on_close has returned.) */
int crest_conn_peer(const crest_conn_t *c, char *buf, size_t size);
/* The socket's own peer (the load balancer, behind one). */
int crest_conn_socket_peer(const crest_conn_t *c, char *buf, size_t size);

/* ---- identity, counters, and the loop's connections ----------------------
 *
 * None of these runs a callback (cb of crest_loop_foreach_conn() aside);
 * all are for the loop's thread. */

/* The connection's id: unique in the process across every loop and
 * thread, never reused (fds are), given at creation (accept, connect) in
 * increasing order from 1.  Valid in every state, on_close included. */
uint64_t crest_conn_id(const crest_conn_t *c);

/* The socket's own address, formatted like crest_conn_peer(): the
 * listener's address and port for an accepted TCP connection, the source
 * address and port of an outbound one (once the kernel bound it: while
 * CONNECTING it may be "0.0.0.0:0"), the path bound for a Unix-domain one
 * ("unix:/run/x.sock"), "unix:" for an unnamed Unix socket (an outbound
 * one, as a rule).  Returns the length written (like snprintf), -ENOTCONN
 * once on_close has returned (the socket is gone), or -errno from
 * getsockname(). */
int crest_conn_local(const crest_conn_t *c, char *buf, size_t size);

/* One connection's state and counters, for a /debug page or a log line.
 * Times use the loop's cached clock (crest_loop_now_ns()).  Counting costs
 * the data path a couple of adds per read or write, nothing per idle
 * connection. */
typedef struct crest_conn_info {
    uint64_t id;                 /* crest_conn_id() */
    crest_conn_state_t state;    /* crest_conn_state() */
    int fd;                      /* crest_conn_fd(): -1 once closed */
    crest_framing_kind_t framing; /* as now (crest_conn_set_opts() may
                                     change it) */
    uint64_t created_ns;         /* crest_loop_now_ns() when it was accepted
                                    or crest_connect() made it */
    uint64_t age_ns;             /* crest_loop_now_ns() - created_ns */
    uint32_t idle_ms;            /* since the last byte in or out (or since
                                    it opened): what idle_timeout_ms counts */
    uint32_t input_idle_ms;      /* since the last byte in (or since it
                                    opened): what input_idle_timeout_ms
                                    counts */
    uint64_t bytes_in;           /* read from the socket */
    uint64_t bytes_out;          /* written to the socket (not counting
                                    output still queued) */
    uint64_t messages_in;        /* LINE/LENGTH messages delivered to
                                    on_message; RAW connections count none
                                    (on_data calls follow the reads, not
                                    the peer's messages: see bytes_in) */
    size_t output_bytes;         /* crest_conn_output_bytes(): queued or
                                    gathered, not yet sent */
    size_t input_bytes;          /* read but not yet consumed: a partial
                                    message, or input a pause holds */
    bool reading_paused;         /* reading stops now: crest_conn_pause(),
                                    or above high water (unless
                                    keep_reading) */
    bool paused_by_handler;      /* crest_conn_pause() in effect */
    bool above_high_water;       /* output went past high_water and has not
                                    yet fallen to low_water */
    bool corked;                 /* crest_conn_cork() in effect */
    bool peer_shut_down;         /* the peer's EOF or hang-up was seen */
    bool write_shut_down;        /* our side is shut down (or will be, once
                                    flushed): crest_conn_shutdown(), or a
                                    close */
} crest_conn_info_t;

/* Fill *out.  Works in every state; after on_close, counters keep their
 * last values, fd is -1 and output_bytes/input_bytes are 0. */
void crest_conn_get_info(const crest_conn_t *c, crest_conn_info_t *out);

/* The kernel's view of a TCP connection now (TCP_INFO, man 7 tcp, and the
 * SIOCOUTQNSD ioctl): for a look at one connection on demand (a debug
 * endpoint, a slow request), never per message (two syscalls).  Times in
 * microseconds as the kernel keeps them; fields an older kernel does not
 * report read 0. */
typedef struct crest_conn_tcp_info {
    uint32_t rtt_us;             /* smoothed round-trip time (tcpi_rtt) */
    uint32_t rttvar_us;          /* its variation (tcpi_rttvar) */
    uint32_t min_rtt_us;         /* the lowest seen (tcpi_min_rtt) */
    uint32_t retransmits;        /* unrecovered retransmits now
                                    (tcpi_retransmits) */
    uint32_t total_retrans;      /* segments retransmitted, in all
                                    (tcpi_total_retrans) */
    uint32_t snd_cwnd;           /* congestion window, segments */
    uint32_t snd_mss;            /* sending MSS, bytes */
    uint32_t unacked;            /* segments sent, not yet acknowledged */
    uint32_t notsent_bytes;      /* in the send buffer, not yet sent
                                    (tcpi_notsent_bytes) */
    uint32_t unsent_bytes;       /* the same, by ioctl SIOCOUTQNSD */
    uint64_t busy_us;            /* time spent with data to send
                                    (tcpi_busy_time) */
    uint64_t rwnd_limited_us;    /* ... of it stalled on the peer's receive
                                    window: the peer reads slowly */
    uint64_t sndbuf_limited_us;  /* ... stalled on our send buffer */
    uint64_t delivery_rate;      /* bytes per second, latest estimate */
} crest_conn_tcp_info_t;

/* Fill *out from the connection's socket.  The loop's thread (any callback
 * of it, on_close included: the socket is still open there); no callback
 * runs inside.  Errors: -EINVAL (NULL argument), -ENOTCONN (closed: after
 * its on_close has returned), -EOPNOTSUPP (a Unix
 * socket), or the -errno of getsockopt/ioctl. */
int crest_conn_get_tcp_info(const crest_conn_t *c, crest_conn_tcp_info_t *out);

/* Visit the loop's connections in fd order: every one that is not CLOSED,
 * outbound ones still CONNECTING included, except those the handler has
 * not heard of (accepted, awaiting a PROXY header).  No per-connection
 * list is kept: it walks the loop's fd table.  A nonzero return from cb
 * stops the walk, and crest_loop_foreach_conn() returns it; else 0.
 * -EINVAL if loop or cb is NULL.
 *
 * cb may write to, close or abort the connection it is given or any
 * other: a close completes after the walk (no crest call runs on_close
 * inside it), so a connection closed during the walk, by cb
 * or before, is visited if it is still CLOSING when its turn comes.
 * Connections created during the walk (crest_connect() from cb) may or
 * may not be visited.  No handler callback runs inside the call; cb runs
 * on the caller's stack.  From any callback of the loop, or from its
 * thread between iterations. */
int crest_loop_foreach_conn(crest_loop_t *loop, int (*cb)(crest_conn_t *c, void *arg),
                            void *arg);

/* ---- changing a live connection ------------------------------------------
 *
 * For a protocol upgrade (a LINE handshake, then LENGTH frames), a
 * timeout that depends on what the peer said, or a different handler
 * after authentication.  The calls apply to OPEN, HALF_CLOSED and
 * CONNECTING connections; on a CLOSING or CLOSED one they return
 * -ENOTCONN and change nothing.  No callback runs inside them (the new
 * handler's on_open is not called: the connection is already open, and
 * the call is the handler's cue).  A change made inside on_data or
 * on_message applies from the next byte: the input after the current
 * message (or after the bytes on_data returns as consumed) is parsed with
 * the new framing and goes to the new handler, including input already
 * read in the same read() and a partial message already buffered.  Made
 * from elsewhere (a timer, another connection's callback), buffered input
 * is parsed anew on the next iteration.  A failed call (-EINVAL, -ENOMEM,
 * a socket option refused) leaves the connection as it was.
 *
 * Connections accepted by one listener share its settings; the first
 * change gives the connection its own copy (about 250 bytes), and the
 * listener's counters (crest_listener_get_stats()) and max_conns still
 * count it. */

/* The connection's options as in effect: what it was created with (or
 * last set), normalised as crest uses them (max_message 0 reads 65536, a
 * low_water above high_water reads high_water, ...).  Socket options
 * changed with crest_conn_set_nodelay()/_sndbuf()/_rcvbuf() are not
 * reflected.  0, or -EINVAL if out is NULL. */
int crest_conn_get_opts(const crest_conn_t *c, crest_conn_opts_t *out);

/* Apply opts to the live connection; every field is taken (start from
 * crest_conn_get_opts() and change what you want):
 *   - timeouts: re-armed at once; each counts from the same moment as
 *     before (idle from the last byte, read from the start of the pending
 *     message...), so one shortened below the time already elapsed fires
 *     when the loop next runs its timers (never inside the call); 0 turns
 *     it off.  connect_timeout_ms applies while CONNECTING.
 *   - framing: from the next message (see above).  Messages already
 *     written keep their framing; crest_conn_write_message() frames with
 *     the new one from the call on.
 *   - max_input, read_budget: from the next read.  A limit lowered below
 *     what is buffered closes the connection (TOO_LARGE) only if that
 *     input still does not fit once the buffer is full.
 *   - high_water, low_water, keep_reading: from the next write or flush;
 *     allowing reading (keep_reading set while paused above high water)
 *     resumes it from the next iteration.
 *   - linger_ms: for the close to come.
 *   - nodelay, keepalive (and its three timings), user_timeout_ms,
 *     sndbuf, rcvbuf: those that differ from the current options are
 *     applied with setsockopt now (the TCP ones are ignored on a
 *     Unix-domain socket, as at creation; sndbuf/rcvbuf 0 leaves the
 *     buffer as it is: the kernel's autotuning, once off, stays off).
 * Returns 0; -EINVAL if opts is NULL or invalid (the handler lacks the
 * callback the new framing needs, a negative buffer size or keepalive
 * timing, a bad framing), -ENOTCONN once a close was requested (CLOSING,
 * CLOSED, or closed while CONNECTING),
 * -ENOMEM, or the -errno of a socket option the kernel refused (those
 * applied before it are set back). */
int crest_conn_set_opts(crest_conn_t *c, const crest_conn_opts_t *opts);

/* Hand the connection to another handler, with its context (what
 * crest_conn_handler_ctx() returns from now on); handler is copied.  The
 * connection's data pointer (crest_conn_set_data()) stays.  From inside
 * on_data/on_message, the rest of the input goes to the new handler (see
 * above); the callbacks still to come (on_eof, on_high_water, on_drain,
 * on_close) are the new handler's.  Its on_open is not called.  0;
 * -EINVAL if handler is NULL or lacks the callback the connection's
 * framing needs (on_data for RAW, on_message for LINE/LENGTH);
 * -ENOTCONN once a close was requested (CLOSING, CLOSED, or closed while
 * CONNECTING); -ENOMEM. */
int crest_conn_set_handler(crest_conn_t *c, const crest_handler_t *handler, void *ctx);

/* Both at once, checked together: for an upgrade whose new handler has
 * only the callback the new framing needs (a LINE handler with on_message
 * becoming a RAW one with on_data, where neither call alone would pass
 * its check).  opts NULL keeps the options.  Returns as the two calls
 * above; on any error nothing changes. */
int crest_conn_upgrade(crest_conn_t *c, const crest_handler_t *handler, void *ctx,
                       const crest_conn_opts_t *opts);

/* Per-loop connection counters. */
typedef struct crest_conn_stats {
    uint64_t opened;           /* accepted + outbound (counted at connect()) */
    uint64_t active;           /* open now */
    uint64_t closed;
    uint64_t bytes_in, bytes_out;
    uint64_t messages_in;      /* framed messages delivered */
    uint64_t reads, writes;    /* syscalls */
    uint64_t paused;           /* high-water pauses */
    uint64_t close_reasons[CREST_CLOSE_REASON_COUNT];
    uint64_t lingered;         /* graceful closes that lingered (read out the
                                  peer before closing the socket) */
    uint64_t lingering;        /* of those, still lingering now (not counted
                                  in active: on_close has run) */
    /* The accept path of the loop's listeners (crest_listener_stats_t
     * has them per listener; these outlive a closed listener): */
    uint64_t accept_shed;      /* pending connections accepted and closed
                                  at once because the process was out of
                                  fds (EMFILE/ENFILE; each burst logged) */
    uint64_t accept_errors;    /* other accept4 failures, and accepted fds
                                  the registry could not record */
} crest_conn_stats_t;

void crest_loop_conn_stats(const crest_loop_t *loop, crest_conn_stats_t *out);

/* Close every connection of the loop (reason SHUTDOWN): graceful, or
 * abortive if abort is set.  Listeners stay open: for a whole graceful
 * shutdown (listeners, grace period, a callback when done) see
 * crest_loop_shutdown() in loop.h. */
void crest_loop_close_all(crest_loop_t *loop, bool abort);

/* The loop's buffer pool: bytes allocated from the system, bytes holding
 * data now, the most ever in use.  in_use is 0 when every connection is
 * at rest; allocated is 0 after crest_loop_destroy(). */
typedef struct crest_buf_stats {
    uint64_t allocated;
    uint64_t in_use;
    uint64_t peak;
    uint64_t chunks_free;
} crest_buf_stats_t;

void crest_loop_buf_stats(const crest_loop_t *loop, crest_buf_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
