/* io watchers: an fd-indexed table of watchers, each registration tagged
 * with a generation, and the ready list of events fed back by callbacks. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "epoll.h"
#include "internal.h"

#define INTEREST_MASK (CREST_IO_READABLE | CREST_IO_WRITABLE)

static int table_reserve(crest_loop_t *loop, int fd) {
    if (fd < loop->ios_cap)
        return 0;
    int cap = loop->ios_cap ? loop->ios_cap : 64;
    while (cap <= fd) {
        if (cap > INT32_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    /* calloc, not realloc + memset: untouched pages of a large table cost
     * no memory (see fdreg.c). */
    struct crest_io **n = calloc((size_t)cap, sizeof *n);
    if (!n)
        return -ENOMEM;
    if (loop->ios_cap)
        memcpy(n, loop->ios, (size_t)loop->ios_cap * sizeof *n);
    free(loop->ios);
    loop->ios = n;
    loop->ios_cap = cap;
    return 0;
}

int crest__io_init(crest_loop_t *loop, struct crest_io *io, int fd, unsigned events,
                   crest_io_cb cb, void *arg, bool counted) {
    if (fd < 0 || (events & ~(unsigned)(INTEREST_MASK | CREST__IO_PRI)) || !cb)
        return -EINVAL;
    /* Teardown walks the fd table once: a watcher added behind it (from an
     * on_close it runs) would outlive the loop. */
    if (CREST__UNLIKELY(loop->destroying))
        return -ESHUTDOWN;
    int rc = table_reserve(loop, fd);
    if (rc < 0)
        return rc;
    if (loop->ios[fd])
        return -EEXIST;
    /* Generation 0 is never used, so a zeroed tag never matches. */
    if (++loop->next_gen == 0)
        loop->next_gen = 1;
    *io = (struct crest_io){
        .loop = loop, .fd = fd, .events = (uint8_t)events, .gen = loop->next_gen,
        .counted = counted, .cb = cb, .arg = arg,
    };
    rc = crest__epoll_add(loop->epfd, fd, events, crest__event_tag(fd, io->gen));
    if (rc < 0)
        return rc;
    loop->ios[fd] = io;
    if (counted)
        crest__loop_ref(loop);
    return 0;
}

int crest_io_start(crest_loop_t *loop, int fd, unsigned events, crest_io_cb cb, void *arg,
                   crest_io_t **iop) {
    if (!loop || !iop || (events & ~INTEREST_MASK))
        return -EINVAL;
    struct crest_io *io = malloc(sizeof *io);
    if (!io)
        return -ENOMEM;
    int rc = crest__io_init(loop, io, fd, events, cb, arg, true);
    if (rc < 0) {
        free(io);
        return rc;
    }
    io->heap_owned = true;
    *iop = io;
    return 0;
}

int crest_io_modify(crest_io_t *io, unsigned events) {
    if (events & ~INTEREST_MASK)
        return -EINVAL;
    if (events == io->events)
        return 0;
    int rc = crest__epoll_mod(io->loop->epfd, io->fd, events, crest__event_tag(io->fd, io->gen));
    if (rc == 0)
        io->events = (uint8_t)events;
    return rc;
}

void crest_io_feed(crest_io_t *io, unsigned events) {
    crest_loop_t *loop = io->loop;
    /* A stopped watcher (a connection closed earlier in this iteration
     * still has its memory) has nothing to be fed: its fd may be -1, or
     * already another watcher's. */
    if (!events || io->fd < 0 || io->fd >= loop->ios_cap || loop->ios[io->fd] != io)
        return;
    if (io->fed) {
        io->fed |= events; /* already listed: merge */
        return;
    }
    if (loop->ready_len == loop->ready_cap) {
        size_t cap = loop->ready_cap ? loop->ready_cap * 2 : 64;
        struct crest_ready *n = realloc(loop->ready, cap * sizeof *n);
        if (!n) {
            crest_log(CREST_LOG_ERROR, "out of memory: event for fd %d not requeued", io->fd);
            return;
        }
        loop->ready = n;
        loop->ready_cap = cap;
    }
    loop->ready[loop->ready_len++] = (struct crest_ready){io->fd, io->gen};
    io->fed = events;
    loop->stats.fed_events++;
}

/* The file behind io->fd was replaced (dup3) while the watcher stayed in
 * the table: register the new one with epoll, as it was. */
int crest__io_reattach(struct crest_io *io) {
    return crest__epoll_add(io->loop->epfd, io->fd, io->events,
                            crest__event_tag(io->fd, io->gen));
}

/* Take the watcher out of the table.  Remove it from epoll too, unless the
 * caller is about to close an fd that nothing else shares: closing the last
 * reference removes it for free, and saves one epoll_ctl per connection. */
void crest__io_detach(struct crest_io *io, bool epoll_del) {
    crest_loop_t *loop = io->loop;
    if (io->fd < 0 || loop->ios[io->fd] != io)
        return;
    /* A dup()ed description would otherwise keep firing after close.
     * Errors (the caller closed the fd already) are harmless here. */
    if (epoll_del)
        (void)crest__epoll_del(loop->epfd, io->fd);
    loop->ios[io->fd] = NULL; /* its ready-list entry, if any, is now stale */
    io->fed = 0;
    if (io->counted)
        crest__loop_unref(loop);
}

void crest__io_close(struct crest_io *io) {
    crest__io_detach(io, true);
}

void crest_io_stop(crest_io_t *io) {
    if (!io)
        return;
    crest_loop_t *loop = io->loop;
    crest__io_close(io);
    if (!io->heap_owned)
        return;
    if (loop->running) {
        /* A callback may still hold it: free after this iteration. */
        io->free_next = loop->free_list;
        loop->free_list = io;
    } else {
        free(io);
    }
}

int crest_io_fd(const crest_io_t *io) {
    return io->fd;
}

unsigned crest_io_events(const crest_io_t *io) {
    return io->events;
}

crest_loop_t *crest_io_loop(const crest_io_t *io) {
    return io->loop;
}

/* Deliver one epoll batch.  An event whose tag no longer matches the
 * watcher in the table (stopped, and maybe replaced by a new watcher on a
 * reused fd number, earlier in this batch) is dropped. */
void crest__io_dispatch(crest_loop_t *loop, const crest__event_t *evs, int n) {
    for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64;
        int fd = crest__tag_fd(tag);
        struct crest_io *io = fd < loop->ios_cap ? loop->ios[fd] : NULL;
        if (CREST__UNLIKELY(!io || io->gen != crest__tag_gen(tag))) {
            loop->stats.stale_events++;
            continue;
        }
        unsigned events = evs[i].events;
        /* What was fed goes with the kernel's news; the ready-list entry
         * then finds nothing left to deliver. */
        events |= io->fed;
        io->fed = 0;
        loop->stats.io_events++;
        loop->stats.callbacks++;
        loop->last_cb = io;
        CREST__CB_ENTER(loop, CREST_CB_IO, io);
        io->cb(io, events, io->arg);
        CREST__CB_LEAVE(loop, CREST_CB_IO, io);
    }
}

/* Serve the ready list as it stood on entry; events fed while serving go
 * to the other array and wait for the next iteration. */
void crest__io_run_ready(crest_loop_t *loop) {
    size_t n = loop->ready_len;
    if (n == 0)
        return;
    struct crest_ready *batch = loop->ready;
    size_t batch_cap = loop->ready_cap;
    loop->ready = loop->ready_run;
    loop->ready_cap = loop->ready_run_cap;
    loop->ready_len = 0;
    loop->ready_run = batch;
    loop->ready_run_cap = batch_cap;
    for (size_t i = 0; i < n; i++) {
        int fd = batch[i].fd;
        struct crest_io *io = fd < loop->ios_cap ? loop->ios[fd] : NULL;
        if (!io || io->gen != batch[i].gen || !io->fed)
            continue; /* stopped, replaced, or served by an epoll event */
        unsigned events = io->fed;
        io->fed = 0;
        loop->stats.callbacks++;
        loop->last_cb = io;
        CREST__CB_ENTER(loop, CREST_CB_IO, io);
        io->cb(io, events, io->arg);
        CREST__CB_LEAVE(loop, CREST_CB_IO, io);
    }
}

void crest__io_free_stopped(crest_loop_t *loop) {
    while (loop->free_list) {
        struct crest_io *io = loop->free_list;
        loop->free_list = io->free_next;
        free(io);
    }
}

void crest__io_destroy_all(crest_loop_t *loop) {
    for (int fd = 0; fd < loop->ios_cap; fd++) {
        struct crest_io *io = loop->ios[fd];
        if (!io || io == &loop->wake_io || !io->heap_owned)
            continue;
        crest_log(CREST_LOG_WARN, "loop destroyed with an active io watcher on fd %d", fd);
        crest_io_stop(io);
    }
    crest__io_free_stopped(loop);
    free(loop->ios);
    loop->ios = NULL;
    loop->ios_cap = 0;
    free(loop->ready);
    free(loop->ready_run);
    loop->ready = loop->ready_run = NULL;
    loop->ready_len = loop->ready_cap = loop->ready_run_cap = 0;
}
