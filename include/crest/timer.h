/* crest: timers.
 *
 * Timers are measured against the loop's cached monotonic clock, in
 * milliseconds.  A timer fires in the first iteration at or after its
 * deadline; timers due in the same iteration fire in deadline order (ties in
 * start order: the order of the crest_timer_start(), crest_timer_again() or
 * repeat that set each deadline).
 *
 * A timer armed from a timer callback (its own or another's, including a
 * repeat) fires on the next iteration at the earliest, even with timeout 0:
 * a timer that restarts itself with timeout 0 fires once per iteration, and
 * I/O, posts, deferred callbacks and crest_loop_stop() are served between
 * firings (the loop does not block while it is due).
 *
 * Timeouts and repeats saturate: one so large that the deadline would pass
 * UINT64_MAX ns (about 584 years of uptime) never fires; it does not wrap
 * around and fire at once.
 *
 * crest_timer_again() restarts a timer with its repeat interval from "now"
 * and costs O(1) when the new deadline is not earlier than the one the timer
 * holds in the heap: it only moves the deadline, and the heap entry is fixed
 * up lazily when it comes due.  This is the idle-timeout path that runs on
 * every message.
 */
#ifndef CREST_TIMER_H
#define CREST_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_timer crest_timer_t;
typedef void (*crest_timer_cb)(crest_timer_t *timer, void *arg);

/* Create a stopped timer.  0, -EINVAL (no callback) or -ENOMEM. */
int crest_timer_create(crest_loop_t *loop, crest_timer_cb cb, void *arg,
                       crest_timer_t **timerp);

/* Arm: fire after timeout_ms (0: on the next iteration), then every
 * repeat_ms if repeat_ms > 0.  Any uint64_t is accepted (see saturation
 * above).  A running timer is re-armed.  A repeating timer that fell behind
 * does not fire in a burst to catch up.  0 or -EINVAL (no timer, no
 * callback). */
int crest_timer_start(crest_timer_t *timer, uint64_t timeout_ms, uint64_t repeat_ms);

/* Restart with the repeat interval from now (O(1), see above).  If the
 * repeat interval is 0 the timer is stopped.  0 or -EINVAL. */
int crest_timer_again(crest_timer_t *timer);

/* Change the repeat interval used by later repeats and by the next
 * crest_timer_again(); the current deadline is not moved.  NULL is
 * ignored. */
void crest_timer_set_repeat(crest_timer_t *timer, uint64_t repeat_ms);

/* Cancel.  Safe to call on a stopped timer and from the timer's callback. */
void crest_timer_stop(crest_timer_t *timer);

bool crest_timer_active(const crest_timer_t *timer);

/* Milliseconds until the timer fires (0 if due), or UINT64_MAX if stopped. */
uint64_t crest_timer_remaining(const crest_timer_t *timer);

/* Stop and free.  Safe from the timer's own callback.  A timer still active
 * when its loop is destroyed is freed by crest_loop_destroy(). */
void crest_timer_destroy(crest_timer_t *timer);

#ifdef __cplusplus
}
#endif
#endif
