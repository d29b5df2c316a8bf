/* Cross-thread posts and wake-ups: a mutex-protected FIFO and an eventfd.
 *
 * The eventfd is written only when a post makes the queue non-empty: a
 * burst of posts costs one wake-up.  The loop reads the eventfd before it
 * drains the queue, so a post that lands between the two is either drained
 * now or announced by its own write.
 *
 * Contract (loop.h): a post that returned 0 runs exactly once.  Once
 * crest_loop_destroy() has begun, posts are refused (-ESHUTDOWN) under the
 * lock, and destroy runs what was queued before, in order. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

int crest__wake_write(crest_loop_t *loop) {
    uint64_t one = 1;
    for (;;) {
        if (write(loop->wakefd, &one, sizeof one) == (ssize_t)sizeof one)
            return 0;
        if (errno == EINTR)
            continue;
        /* EAGAIN: the counter is saturated, so a wake-up is pending anyway. */
        return errno == EAGAIN ? 0 : -errno;
    }
}

void crest__wake_read(crest_loop_t *loop) {
    uint64_t value;
    while (read(loop->wakefd, &value, sizeof value) < 0 && errno == EINTR) {
    }
    loop->stats.wakeups++;
}

int crest_loop_wake(crest_loop_t *loop) {
    return loop ? crest__wake_write(loop) : -EINVAL;
}

int crest_loop_post(crest_loop_t *loop, crest_cb cb, void *arg) {
    if (!loop || !cb)
        return -EINVAL;
    struct crest_posted *p = malloc(sizeof *p);
    if (!p)
        return -ENOMEM;
    *p = (struct crest_posted){.cb = cb, .arg = arg};
    pthread_mutex_lock(&loop->post_lock);
    if (loop->post_closed) {
        /* crest_loop_destroy() has begun: it would never run. */
        pthread_mutex_unlock(&loop->post_lock);
        free(p);
        return -ESHUTDOWN;
    }
    bool was_empty = loop->post_head == NULL;
    if (loop->post_tail)
        loop->post_tail->next = p;
    else
        loop->post_head = p;
    loop->post_tail = p;
    /* The wake-up is written under the lock: once destroy has taken the
     * lock (crest__post_close), no post is left between its enqueue and
     * its write, so destroy never closes the eventfd under one.  It costs
     * the lock one syscall per burst (only the post that finds the queue
     * empty writes). */
    int rc = was_empty ? crest__wake_write(loop) : 0;
    pthread_mutex_unlock(&loop->post_lock);
    /* A failed wake-up (it cannot fail short of a bad fd) leaves the post
     * queued: it still runs, on the next wake-up or at destroy. */
    CREST__UNUSED(rc);
    return 0;
}

void crest__post_close(crest_loop_t *loop) {
    pthread_mutex_lock(&loop->post_lock);
    loop->post_closed = true;
    pthread_mutex_unlock(&loop->post_lock);
}

static struct crest_posted *take_all(crest_loop_t *loop) {
    pthread_mutex_lock(&loop->post_lock);
    struct crest_posted *p = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_lock);
    return p;
}

/* Posted callbacks are each timed (a clock read per post, next to the
 * lock, the allocation and the wake-up a post costs anyway), and their
 * time is taken out of the io phase their wake-up ran in. */
void crest__post_drain(crest_loop_t *loop) {
    struct crest_posted *p = take_all(loop);
    if (!p)
        return;
    uint64_t start = crest__clock_ns(), t = start;
    while (p) {
        struct crest_posted *next = p->next;
        loop->stats.posted_run++;
        loop->stats.callbacks++;
        const void *fn = (const void *)(uintptr_t)p->cb;
        if (loop->track)
            crest__insight_cb_enter(loop, CREST_CB_POSTED, fn);
        p->cb(loop, p->arg);
        uint64_t now = crest__clock_ns();
        crest__insight_timed(loop, CREST_CB_POSTED, fn, now - t);
        t = now;
        free(p);
        p = next;
    }
    loop->ins.posted_ns += t - start;
    loop->ins.cb_start_ns = t; /* the wake-up's own callback starts here */
}

void crest__post_discard(crest_loop_t *loop) {
    struct crest_posted *p = take_all(loop);
    while (p) {
        struct crest_posted *next = p->next;
        free(p);
        p = next;
    }
}
