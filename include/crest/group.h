/* crest: a group of loops, one per thread, for using every core.
 *
 * Each worker thread creates its own loop, calls init(loop, index, arg) on
 * that thread (create the listeners there: with SO_REUSEPORT each loop owns
 * a listener on the same port and the kernel spreads connections over
 * them), runs the loop until crest_group_stop(), calls fini(), and destroys
 * the loop.  No locks on any loop's hot path: the only cross-thread
 * traffic is crest_loop_post().
 *
 * SO_REUSEPORT versus accept-and-hand-off: with reuseport the kernel hashes
 * each new connection to a listener, so no thread hands connections around
 * and accept scales with the cores; but the spread ignores how busy each
 * loop is, and a connection stays on its loop for life.  One acceptor that
 * hands connections to the least loaded loop balances better when
 * connections are few and their costs very unequal (long-lived, heavy
 * streams), at the price of a cross-thread hand-off per connection.
 */
#ifndef CREST_GROUP_H
#define CREST_GROUP_H

#include <stdint.h>

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_group crest_group_t;

/* Runs on worker thread index before its loop runs: set the loop up.
 * A negative return (-errno) fails crest_group_start(). */
typedef int (*crest_group_init_cb)(crest_loop_t *loop, unsigned index, void *arg);
/* Runs on worker thread index after its loop stopped, before the loop is
 * destroyed: close what init opened, collect statistics.  May be NULL. */
typedef void (*crest_group_fini_cb)(crest_loop_t *loop, unsigned index, void *arg);

/* Start n worker threads (n >= 1).  Returns once every init has run: 0,
 * or the first init's error (the threads already started are stopped and
 * joined then), -EINVAL, -ENOMEM or pthread_create's -errno. */
int crest_group_start(unsigned n, crest_group_init_cb init, crest_group_fini_cb fini, void *arg,
                      crest_group_t **groupp);

/* Ask every loop to stop (thread-safe, also from a loop callback). */
void crest_group_stop(crest_group_t *group);

/* Graceful shutdown of every loop (thread-safe, also from a loop
 * callback): each worker, on its own thread, runs
 * crest_loop_shutdown(loop, grace_ms, ...) (listeners closed, connections
 * closed gracefully, aborted after grace_ms; see loop.h) and stops its
 * loop once that is done; fini runs then as usual, and crest_group_join()
 * returns as usual.  A worker whose application already started a
 * crest_loop_shutdown() of its own stops once that one is done (its done
 * callback runs first).  Workers whose loop has already finished are
 * skipped.  Nothing runs inside this call.  0, -EINVAL, -EALREADY if
 * called before for this group, or -ENOMEM (a worker could not be told:
 * the others are told all the same). */
int crest_group_shutdown(crest_group_t *group, uint32_t grace_ms);

/* Wait for every worker to finish (fini run, loop destroyed) and free the
 * group.  Not from a worker thread.  Returns 0, or the first loop's error,
 * or the number of fds the loops reported leaked (> 0). */
int crest_group_join(crest_group_t *group);

unsigned crest_group_size(const crest_group_t *group);
/* Thread-safe: run cb(loop, arg) on worker index's loop thread.  0, or
 * -ESRCH once that loop has finished (a loop with nothing left to wait for
 * ends by itself), -EINVAL, -ENOMEM.  Use this rather than posting to
 * crest_group_loop() from another thread: the group makes sure the loop
 * still exists while it posts.  A post that returned 0 runs exactly once:
 * in the loop's run, or, if the loop stopped first, when the group
 * destroys the loop (after fini; see crest_loop_destroy()).  -ESRCH comes
 * from the moment fini has returned: cb never runs then, and the caller
 * keeps arg. */
int crest_group_post(crest_group_t *group, unsigned index, crest_cb cb, void *arg);

/* The loop of worker index while it runs, or NULL once it has finished.
 * For use on that loop's own thread (in its callbacks); from other threads
 * use crest_group_post(). */
crest_loop_t *crest_group_loop(crest_group_t *group, unsigned index);

/* The figures of every loop of the group, summed (insight.h: each loop's
 * snapshot published at its last sample).  Any thread.  0 or -EINVAL. */
struct crest_insight;
int crest_group_get_insight(crest_group_t *group, struct crest_insight *out);

#ifdef __cplusplus
}
#endif
#endif
