/* crest: signals, through signalfd.
 *
 * crest_signal_start() blocks the signal in the calling thread (which must be
 * the loop's thread) and reads it from the loop's signalfd, so the callback
 * runs as an ordinary loop callback, not in signal context.  Block the signal
 * in every other thread too (create threads after starting the watcher, or
 * call pthread_sigmask yourself), or the kernel may deliver it to a thread
 * where it is not blocked.  Stopping the last watcher of a signal unblocks it
 * again, unless the application had blocked it before.  An active signal watcher keeps crest_loop_run() going.
 */
#ifndef CREST_SIGNAL_H
#define CREST_SIGNAL_H

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_signal crest_signal_t;
typedef void (*crest_signal_cb)(crest_signal_t *sig, int signo, void *arg);

/* Watch signo (SIGINT, SIGTERM, SIGHUP, SIGUSR1, ...).  Several watchers may
 * watch the same signal; each is called.  0, or -EINVAL (SIGKILL, SIGSTOP or
 * out of range), -ENOMEM, -ESHUTDOWN (crest_loop_destroy() is under way), or
 * signalfd's -errno. */
int crest_signal_start(crest_loop_t *loop, int signo, crest_signal_cb cb, void *arg,
                       crest_signal_t **sigp);

/* Stop and free the watcher; safe from its own callback. */
void crest_signal_stop(crest_signal_t *sig);

#ifdef __cplusplus
}
#endif
#endif
