/* crest_loop_shutdown(): close the listeners, close every connection
 * gracefully, abort what is left after the grace period, and say when
 * nothing is left.
 *
 * No list of connections is kept for it: the loop's counters already say
 * how many are open (conn_stats.active) and how many linger
 * (conn_stats.lingering), and both only fall during a shutdown, since
 * nothing new may start.  The check runs at the end of each iteration
 * while a shutdown is under way (one predictable branch per iteration, not
 * per event), after every on_close of that iteration, so done always comes
 * after the last on_close. */
#define _GNU_SOURCE
#include <errno.h>

#include "internal.h"

static void on_grace_over(crest_timer_t *t, void *arg) {
    CREST__UNUSED(t);
    crest_loop_t *loop = arg;
    if (loop->conn_stats.active || loop->conn_stats.lingering)
        crest_log(CREST_LOG_INFO,
                  "shutdown: grace period over: aborting %llu connection%s, ending %llu "
                  "lingering close%s",
                  (unsigned long long)loop->conn_stats.active,
                  loop->conn_stats.active == 1 ? "" : "s",
                  (unsigned long long)loop->conn_stats.lingering,
                  loop->conn_stats.lingering == 1 ? "" : "s");
    /* Flushing ones get RST and on_close (settled from the ready list, so
     * the check below sees them gone next iteration); lingering ones end
     * here. */
    crest_loop_close_all(loop, true);
    loop->shutdown_check = true;
}

void crest__shutdown_init(crest_loop_t *loop) {
    /* Counted: the loop runs until done, even with nothing else alive. */
    crest__timer_init(loop, &loop->shutdown_grace, on_grace_over, loop, true);
}

static void finish(crest_loop_t *loop) {
    crest_shutdown_cb done = loop->shutdown_done;
    void *arg = loop->shutdown_arg;
    bool stop = loop->shutdown_stop;
    crest_timer_stop(&loop->shutdown_grace);
    loop->shutting_down = false;
    loop->shutdown_check = false;
    loop->shutdown_stop = false;
    loop->shutdown_done = NULL;
    loop->shutdown_arg = NULL;
    if (done) {
        loop->stats.callbacks++;
        done(loop, arg);
    }
    if (stop)
        crest_loop_stop(loop);
}

void crest__shutdown_check(crest_loop_t *loop) {
    loop->shutdown_check = false;
    if (loop->conn_stats.active == 0 && loop->conn_stats.lingering == 0)
        finish(loop);
}

void crest__shutdown_finish(crest_loop_t *loop) {
    if (loop->shutting_down)
        finish(loop);
}

int crest_loop_shutdown(crest_loop_t *loop, uint32_t grace_ms, crest_shutdown_cb done,
                        void *arg) {
    if (!loop)
        return -EINVAL;
    if (loop->destroying)
        return -ESHUTDOWN;
    if (loop->shutting_down)
        return -EALREADY;
    int rc = crest__timer_start_at(&loop->shutdown_grace,
                                   loop->now_ns + (uint64_t)grace_ms * 1000000u, 0);
    if (rc < 0)
        return rc; /* -ENOMEM: the timer heap could not grow; nothing done */
    loop->shutting_down = true;
    loop->shutdown_check = true; /* the next iteration does not block */
    loop->shutdown_done = done;
    loop->shutdown_arg = arg;
    /* No callback runs here: closing a listener runs none, and each close
     * request completes from the loop (conn.c: the ready list). */
    while (loop->listeners)
        crest_listener_close(loop->listeners);
    crest_loop_close_all(loop, false);
    return 0;
}
