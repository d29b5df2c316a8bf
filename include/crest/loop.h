/* crest: the event loop.
 *
 * Threads: a loop belongs to the thread that runs it.  Every function in
 * crest that takes a loop, or an object created on a loop (io watcher,
 * timer, signal watcher, connection, listener), must be called from that
 * thread only.  The exceptions are crest_loop_post(), crest_loop_wake() and
 * crest_loop_stop(), which any thread may call.  For more cores, run one loop
 * per thread (or per process) with its own SO_REUSEPORT listener.
 *
 * Time: the loop reads CLOCK_MONOTONIC once per iteration and caches it;
 * crest_loop_now() returns that cached value, so every callback of one
 * iteration sees the same "now".
 *
 * Signals: creating a loop sets SIGPIPE to SIG_IGN if it still has the
 * default disposition, so a write to a reset peer returns -EPIPE instead of
 * killing the process.  crest's own socket writes also pass MSG_NOSIGNAL.
 */
#ifndef CREST_LOOP_H
#define CREST_LOOP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_loop crest_loop_t;

/* A plain callback with a user argument: deferred and posted work. */
typedef void (*crest_cb)(crest_loop_t *loop, void *arg);

/* Create a loop: one epoll instance and one eventfd for wake-ups, both
 * close-on-exec and recorded in the fd registry.  0 or -errno. */
int crest_loop_create(crest_loop_t **loopp);

/* Destroy a loop.  Call it from the loop's thread, outside crest_loop_run():
 * from one of the loop's callbacks it returns -EBUSY and does nothing.
 *
 * Application callbacks run inside this call.  What runs, in this order:
 *   1. From here on nothing new can start: crest_connect(), crest_listen(),
 *      crest_conn_adopt(), crest_listener_adopt(), crest_io_start(),
 *      crest_signal_start(), crest_loop_defer(), crest_loop_shutdown() and
 *      crest_loop_post() (from any thread) return -ESHUTDOWN.
 *   2. Every deferred callback, then every posted callback, still queued
 *      runs, each in the order it was queued: a defer or post that returned
 *      0 runs exactly once, here if not before, so a callback that owns its
 *      argument can free it.  The connections and listeners are all still
 *      there for them.
 *   3. Listeners still open are closed (logged as a warning; no callback).
 *   4. Connections still open are aborted (RST, queued output dropped;
 *      logged as a warning), and on_close(c, CREST_CLOSE_SHUTDOWN, 0) runs
 *      for each, after that connection's pending crest_conn_flush_notify()
 *      callbacks (status -ECANCELED): free per-connection state there, not
 *      before destroying the loop.  Lingering closes (on_close already ran)
 *      end without a callback.
 *   5. If a crest_loop_shutdown() was under way, its done callback runs.
 *   6. Io watchers, timers and signal watchers still active are stopped
 *      and freed (their own callbacks do not run; do not use them
 *      afterwards; an io watcher's fd, the caller's, is not closed); each
 *      is logged as a warning.  Stopped timers are not known to the loop:
 *      crest_timer_destroy() them.
 *   7. The fd leak report for the fds this loop opened (see fdreg.h): it
 *      says "0 fds leaked" when clean.
 * From those callbacks the loop cannot be run (crest_loop_run_once() is
 * -EBUSY) and a reconnect from on_close is refused, not left open behind
 * the teardown.  Other threads must have stopped posting before this call
 * returns (the loop's memory is gone then): a post that overlaps the
 * destroy either runs in step 2 or returns -ESHUTDOWN, never both, never
 * neither; a post made after the return uses freed memory.  (A callback
 * run in step 2 or 4 is a good place to join such threads.)
 * Returns the number of fds this loop opened that are still open after its
 * own are closed (0 when clean). */
int crest_loop_destroy(crest_loop_t *loop);

/* Graceful shutdown in one call.  done(loop, arg) runs when it is over. */
typedef void (*crest_shutdown_cb)(crest_loop_t *loop, void *arg);

/* Shut the loop's network side down, as a server does on SIGTERM:
 *   - every listener of the loop is closed now (no accept after this call;
 *     connections still in a backlog are reset by the kernel).  The
 *     application's crest_listener_t pointers are then invalid: read their
 *     statistics and crest_listener_close() them yourself first if you
 *     need them;
 *   - every connection is asked for a graceful close with reason
 *     CREST_CLOSE_SHUTDOWN (a close already requested keeps its reason):
 *     reading stops, queued output is flushed, then the close lingers as
 *     usual (conn.h, "Lingering close"); on_close runs as each completes;
 *   - after grace_ms, whatever is left is aborted: connections still
 *     flushing (RST, on_close with SHUTDOWN) and lingering ones (closed,
 *     no callback);
 *   - once no connection is left, open or lingering, done(loop, arg) runs
 *     from the loop, after every on_close, exactly once; never inside
 *     this call, even with nothing open (then at the end of the
 *     iteration the call was made in, or of the next one, which does not
 *     block, if it was made outside the loop).  done may call crest_loop_stop(), and may start
 *     anything again: the shutdown is over when done is called.  done may
 *     be NULL.
 * While the shutdown is under way (from this call until done runs) no new
 * connection or listener can start: crest_connect(), crest_listen(),
 * crest_conn_adopt() and crest_listener_adopt() return -ESHUTDOWN (a
 * reconnect from on_close is refused, so the shutdown always ends).  Io
 * watchers, timers, signal watchers, defers and posts are not touched: the
 * loop keeps running them, and keeps running after done unless stopped.
 * The grace timer keeps crest_loop_run() going until done has run.
 * If crest_loop_destroy() comes first, done runs inside it (step 5).
 * Loop thread only; no callback runs inside the call.  0, -EINVAL (no
 * loop), -EALREADY if a shutdown is under way, -ESHUTDOWN during
 * crest_loop_destroy(), -ENOMEM (the timer heap could not grow; nothing
 * was done). */
int crest_loop_shutdown(crest_loop_t *loop, uint32_t grace_ms, crest_shutdown_cb done,
                        void *arg);

/* Run until crest_loop_stop() is called or nothing is left to wait for (no
 * active io watcher, timer, signal watcher or deferred callback).  Returns 0,
 * -EINVAL (no loop), -EBUSY when called from one of the loop's callbacks
 * (the loop is already running; see crest_loop_run_once), or -errno if
 * epoll_wait fails with something other than EINTR. */
int crest_loop_run(crest_loop_t *loop);

/* Run one iteration: wait at most timeout_ms for events (any negative value:
 * until the next timer or an event; 0: do not block; INT_MAX is a valid
 * bound), then dispatch them, due timers and deferred callbacks.  Returns 1
 * if something is still alive, 0 if not, or -errno: -EINVAL (no loop),
 * -EBUSY when called from a callback of this loop (of any kind: io, timer,
 * deferred, posted, signal, connection and listener callbacks, and those
 * crest_loop_destroy() runs), as the iteration in progress owns the loop's
 * queues; nothing runs then. */
int crest_loop_run_once(crest_loop_t *loop, int timeout_ms);

/* Make crest_loop_run() return after the current iteration.  Safe from any
 * thread and from a callback; it always wakes the loop through its eventfd
 * (so, from the loop's own thread, the next iteration reads one wake-up).
 * A stop made while the loop is not running ends the next crest_loop_run()
 * before its first iteration.  NULL is ignored. */
void crest_loop_stop(crest_loop_t *loop);

/* The cached monotonic time of the current iteration, in milliseconds and in
 * nanoseconds. */
uint64_t crest_loop_now(const crest_loop_t *loop);
uint64_t crest_loop_now_ns(const crest_loop_t *loop);

/* Re-read the clock now (for long callbacks that want a fresh "now"). */
void crest_loop_update_time(crest_loop_t *loop);

/* Run cb(loop, arg) on the next iteration, in the loop's thread; the loop
 * does not block while deferred work is pending.  Order is preserved.  No
 * allocation per call once the queue has grown.  A defer that returned 0
 * runs exactly once (at the start of crest_loop_destroy() if the loop is
 * destroyed first).  0, -ENOMEM, or -ESHUTDOWN once crest_loop_destroy()
 * has begun (it would never run). */
int crest_loop_defer(crest_loop_t *loop, crest_cb cb, void *arg);

/* Thread-safe: queue cb(loop, arg) to run in the loop's thread and wake the
 * loop through its eventfd.  Callbacks run in the order they were posted,
 * never inside this call (even from the loop's own thread).  A post that
 * returned 0 runs exactly once: in an iteration, or at the start of
 * crest_loop_destroy().  0, -EINVAL, -ENOMEM, or -ESHUTDOWN once
 * crest_loop_destroy() has begun (cb never runs; the caller keeps arg).
 * See crest_loop_destroy() for when other threads must stop posting. */
int crest_loop_post(crest_loop_t *loop, crest_cb cb, void *arg);

/* Thread-safe: wake the loop out of epoll_wait without queuing work. */
int crest_loop_wake(crest_loop_t *loop);

/* User data attached to the loop. */
void crest_loop_set_data(crest_loop_t *loop, void *data);
void *crest_loop_get_data(const crest_loop_t *loop);

/* Where the loop's time goes. */
typedef struct crest_loop_stats {
    uint64_t iterations;     /* calls into epoll_wait */
    uint64_t wait_ns;        /* time spent blocked in epoll_wait */
    uint64_t run_ns;         /* time spent dispatching (callbacks) */
    uint64_t callbacks;      /* every callback the loop invoked */
    uint64_t io_events;      /* events delivered to io watchers */
    uint64_t stale_events;   /* events dropped: their watcher was gone */
    uint64_t fed_events;     /* events re-queued on the ready list */
    uint64_t timers_fired;
    uint64_t deferred_run;
    uint64_t posted_run;
    uint64_t wakeups;        /* eventfd wake-ups read */
    uint64_t signals;        /* signals delivered */
} crest_loop_stats_t;

void crest_loop_get_stats(const crest_loop_t *loop, crest_loop_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
