/* crest: io watchers.
 *
 * An io watcher calls back when a file descriptor becomes readable or
 * writable.  Watchers are edge-triggered (EPOLLET): the callback fires once
 * per edge, when the state changes from "nothing to do" to "something to do",
 * and not again until new data arrives (or space frees).  So a callback must
 * read until a short read or -EAGAIN, or feed itself back with
 * crest_io_feed() if it stops early to be fair to other watchers.
 *
 * Peer hang-up (CREST_IO_RDHUP) is always requested; CREST_IO_HUP and
 * CREST_IO_ERR are always reported.  On CREST_IO_ERR, let the next read or
 * write tell you the actual error.
 *
 * Stale events: epoll may return, in one batch, an event for an fd whose
 * watcher a callback earlier in the same batch stopped (and whose number may
 * already be reused by a new watcher).  crest tags each registration with a
 * generation and drops such events; they never reach the wrong watcher.
 *
 * The watcher does not own the fd: stop the watcher before closing the fd.
 */
#ifndef CREST_IO_H
#define CREST_IO_H

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_io crest_io_t;

/* Event bits (the same values as the EPOLL* flags). */
enum {
    CREST_IO_READABLE = 0x001,  /* EPOLLIN */
    CREST_IO_WRITABLE = 0x004,  /* EPOLLOUT */
    CREST_IO_ERR = 0x008,       /* EPOLLERR */
    CREST_IO_HUP = 0x010,       /* EPOLLHUP */
    CREST_IO_RDHUP = 0x2000     /* EPOLLRDHUP: peer shut down writing */
};

typedef void (*crest_io_cb)(crest_io_t *io, unsigned events, void *arg);

/* Start watching fd for events (CREST_IO_READABLE and/or CREST_IO_WRITABLE).
 * Returns 0 and the watcher in *iop, or -EINVAL (bad fd or events), -EEXIST
 * (fd already watched on this loop), -ENOMEM, -ESHUTDOWN (crest_loop_destroy()
 * is under way: called from an on_close it runs), or epoll_ctl's -errno. */
int crest_io_start(crest_loop_t *loop, int fd, unsigned events, crest_io_cb cb,
                   void *arg, crest_io_t **iop);

/* Change interest.  An edge that is already pending is reported again by the
 * kernel when interest is added.  0 or -errno. */
int crest_io_modify(crest_io_t *io, unsigned events);

/* Deliver events to this watcher on the next iteration without waiting for
 * the kernel: the ready list a callback uses when it stopped early with work
 * left (fairness under edge-triggering).  The loop does not block while fed
 * events are pending.  Feeding twice before delivery merges the bits.
 * Feeding a watcher stopped earlier in this iteration (from a callback
 * still holding it) does nothing. */
void crest_io_feed(crest_io_t *io, unsigned events);

/* Stop watching and release the watcher (after the current dispatch, so it
 * is safe from its own callback).  Pending and fed events are dropped.  The
 * fd stays open: it is the caller's. */
void crest_io_stop(crest_io_t *io);

int crest_io_fd(const crest_io_t *io);
unsigned crest_io_events(const crest_io_t *io);
crest_loop_t *crest_io_loop(const crest_io_t *io);

#ifdef __cplusplus
}
#endif
#endif
