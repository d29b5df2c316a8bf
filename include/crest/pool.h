/* crest: a pool of outbound connections to one target.
 *
 * A service that calls another one pays for a name lookup and a TCP
 * handshake on every new connection.  A pool keeps connections to one
 * target open and hands them out: crest_pool_acquire() gives an idle one
 * (the most recently given back first, so the rest can age out), connects
 * a new one while the pool is under max_size, or queues the caller until
 * one is given back or connected, for at most acquire_timeout_ms.
 *
 * Warm connections: the pool keeps at least min_idle connections
 * connected and idle (from crest_pool_create() on, within max_size), so a
 * caller finds one ready instead of waiting for a handshake.
 *
 * An idle connection is the pool's: its handler is the pool's own.  One
 * that the peer closes, resets or writes to while idle (EPOLLRDHUP, EOF,
 * unexpected bytes) is closed and discarded, never handed out dead.  An
 * idle connection is closed after idle_timeout_ms (while more than
 * min_idle are idle), and any connection older than max_lifetime_ms is
 * closed when it is given back or found idle.
 *
 * A borrowed connection is the borrower's: crest_pool_acquire() installs
 * the borrower's handler and context (crest_conn_set_handler()) before its
 * callback runs; on_open is not called (the connection is open).  The
 * borrower gives it back with crest_pool_release(), or closes or aborts it
 * (the pool notices, counts it closed, and connects another if needed).
 *
 * Leak detection: a connection borrowed for longer than leak_threshold_ms
 * is reported once, as a warning in crest's log naming the pool, the
 * borrower's label and how long it has been out (the way the fd registry
 * reports fds left open), and counted in leaks; crest_pool_report() lists
 * every borrowed connection with its label and age.
 *
 * Figures (crest_pool_get_stats(), /metrics, the doctor): active, idle,
 * connecting, waiting, created, closed, acquire waits (histogram) and
 * acquire timeouts.  The doctor finds pool_exhausted when a pool runs at
 * 80% or more of max_size with callers waiting, or acquires time out.
 *
 * Ownership: the pool is the caller's until crest_pool_destroy().  A
 * request (crest_pool_req_t) is crest's: valid from crest_pool_acquire()
 * until its callback returns or crest_pool_cancel() returns.
 *
 * Threads: every function on the loop's thread.
 *
 * Callbacks: none runs inside any call of this header.  An acquire's
 * callback runs exactly once, from the loop (even when an idle connection
 * was ready: on the next iteration), unless cancelled first.
 */
#ifndef CREST_POOL_H
#define CREST_POOL_H

#include <stdint.h>
#include <stdio.h>

#include "conn.h"
#include "hist.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_pool crest_pool_t;
typedef struct crest_pool_req crest_pool_req_t;

typedef struct crest_pool_opts {
    const char *name;            /* for logs and the metrics label (copied);
                                    NULL: the target */
    uint32_t max_size;           /* connections in all: idle, borrowed and
                                    connecting (0: 16) */
    uint32_t min_idle;           /* warm connections kept ready (0: none) */
    uint32_t idle_timeout_ms;    /* 0: 60000; UINT32_MAX: never */
    uint32_t max_lifetime_ms;    /* 0: unlimited */
    uint32_t acquire_timeout_ms; /* longest wait in the queue (0: 5000) */
    uint32_t max_waiting;        /* callers queued at most (0: 4096) */
    uint32_t leak_threshold_ms;  /* 0: no leak detection */
    /* The pool's connections' options (copied; NULL: defaults, with a
     * connect timeout of 5000 ms).  A name target is resolved as
     * crest_connect() does. */
    const crest_conn_opts_t *conn_opts;
} crest_pool_opts_t;

void crest_pool_opts_init(crest_pool_opts_t *opts);

/* target: "host:port" as crest_connect() takes it (a literal address or a
 * name).  Starts connecting min_idle connections.  0, -EINVAL, -ENOMEM,
 * -ESHUTDOWN (the loop is shutting down). */
int crest_pool_create(crest_loop_t *loop, const char *target, const crest_pool_opts_t *opts,
                      crest_pool_t **out);

/* Close the idle and connecting connections; borrowed ones stay their
 * borrowers' (crest_pool_release() is then no longer possible: close
 * them).  Waiting requests complete with -ECANCELED from the loop.  NULL
 * is ignored. */
void crest_pool_destroy(crest_pool_t *p);

/* status 0: c is open, borrowed, with the borrower's handler.  Otherwise c
 * is NULL and status says why:
 *   -ETIMEDOUT  acquire_timeout_ms passed in the queue,
 *   -ECONNREFUSED, -EHOSTUNREACH, ... the connect started for this caller
 *               failed (the errno of on_close's err; -ETIMEDOUT for a
 *               connect timeout; the resolver's status for a name),
 *   -ECANCELED  the pool was destroyed. */
typedef void (*crest_pool_acquire_cb)(int status, crest_conn_t *c, void *arg);

/* Borrow a connection.  label names the borrower in leak reports (copied;
 * NULL: "?").  req may be NULL if the caller never cancels.  0, or
 * -EINVAL, -ENOMEM, -EAGAIN (max_waiting callers already queued); on
 * failure the callback never runs. */
int crest_pool_acquire(crest_pool_t *p, const crest_handler_t *handler, void *ctx,
                       const char *label, crest_pool_acquire_cb cb, void *arg,
                       crest_pool_req_t **req);

/* The callback of req will not run.  A connection being made for it stays
 * in the pool. */
void crest_pool_cancel(crest_pool_req_t *req);

/* Give back a borrowed connection.  It goes back idle if it can be reused
 * (open, nothing queued to send, no input left unconsumed, not past
 * max_lifetime_ms); otherwise the pool closes it.  0: idle again; 1:
 * closed instead; -EINVAL: c is not borrowed from p. */
int crest_pool_release(crest_pool_t *p, crest_conn_t *c);

typedef struct crest_pool_stats {
    uint32_t max_size;
    uint32_t active;          /* borrowed now */
    uint32_t idle;            /* connected and idle now */
    uint32_t connecting;      /* connects in progress now */
    uint32_t waiting;         /* callers queued now */
    uint64_t created;         /* connections opened */
    uint64_t closed;          /* connections closed, for any reason */
    uint64_t acquired;        /* acquires that got a connection */
    uint64_t reused;          /* ... of them given an idle one */
    uint64_t acquire_timeouts;
    uint64_t connect_failures;
    uint64_t dead_discarded;  /* idle ones the peer closed or wrote to */
    uint64_t leaks;           /* borrows reported past leak_threshold_ms */
    crest_hist_t acquire_wait_ns; /* acquire to callback, each success */
} crest_pool_stats_t;

void crest_pool_get_stats(const crest_pool_t *p, crest_pool_stats_t *out);

/* Every borrowed connection, one line each: "conn ID label AGE ms". */
void crest_pool_report(const crest_pool_t *p, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
