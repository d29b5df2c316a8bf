/* Connection deadlines: idle, input idle, read, write, connect, and the
 * bounds on a graceful close (its flush, then its linger).
 *
 * Each connection keeps the times its deadlines count from (last_active,
 * last_input, read_started, write_stalled: one store each, on the hot
 * path) and one
 * slot in a per-loop binary heap of connection pointers ordered by dl_key,
 * the deadline the heap was last told.  A deadline that moves later is not
 * told to the heap at all: when the heap surfaces the connection, its true
 * deadline is computed again and it is re-keyed (once per timeout period,
 * not once per message).  A deadline that moves earlier (a read or write
 * stall starting) is pushed up at once.  One generic loop timer fires at
 * the heap's top.  Per connection: 8 bytes of key and index, 8 of heap.
 *
 * Times are the loop's millisecond clock, compared modulo 2^32: heap keys
 * are kept within KEY_HORIZON_MS of now, and a timeout may be any
 * uint32_t (up to 49.7 days). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "conn_int.h"

/* The bound on flushing a graceful close whose peer never reads, when no write
 * timeout is set. */
#define CLOSE_FLUSH_MS 10000u

static bool before(uint32_t a, uint32_t b) {
    return (int32_t)(a - b) < 0;
}

/* Heap keys stay within this of now, so that they compare correctly
 * modulo 2^32 (before()); a later deadline is re-keyed when its key
 * surfaces.  This is what lets a timeout be any uint32_t. */
#define KEY_HORIZON_MS (1u << 30)

/* The earliest deadline that applies now and its reason; false if none.
 * *when is a heap key: the deadline, or now + KEY_HORIZON_MS if it is
 * further away. */
static bool next_deadline(const struct crest_conn *c, uint32_t *when, crest_close_reason_t *why) {
    const crest_conn_opts_t *o = &c->ep->opts;
    uint32_t now = c->io.loop->now_ms;
    uint32_t best = 0; /* milliseconds left, of the earliest deadline */
    bool any = false;
    /* Elapsed time is taken modulo 2^32: exact while under 49.7 days,
     * which is as long as any timeout can be. */
#define CONSIDER(since, ms, reason)                                         \
    do {                                                                    \
        if ((since) && (ms)) {                                              \
            uint32_t elapsed_ = now - (since);                              \
            uint32_t left_ = elapsed_ >= (ms) ? 0 : (ms)-elapsed_;           \
            if (!any || left_ < best) {                                     \
                best = left_;                                               \
                *why = (reason);                                            \
                any = true;                                                 \
            }                                                               \
        }                                                                   \
    } while (0)
    if (c->state == CREST_CONN_CONNECTING) {
        CONSIDER(c->last_active, o->connect_timeout_ms, CREST_CLOSE_CONNECT_TIMEOUT);
    } else if (c->state == CREST_CONN_CLOSING) {
        uint32_t linger = o->write_timeout_ms ? o->write_timeout_ms : CLOSE_FLUSH_MS;
        CONSIDER(c->write_stalled, linger, CREST_CLOSE_WRITE_TIMEOUT);
    } else if (c->state == CREST_CONN_CLOSED) {
        /* Lingering since write_stalled; the reason is not used. */
        CONSIDER(c->write_stalled, o->linger_ms, CREST_CLOSE_LOCAL);
    } else {
        CONSIDER(c->last_active, o->idle_timeout_ms, CREST_CLOSE_IDLE_TIMEOUT);
        CONSIDER(c->last_input, o->input_idle_timeout_ms, CREST_CLOSE_IDLE_TIMEOUT);
        CONSIDER(c->read_started, o->read_timeout_ms, CREST_CLOSE_READ_TIMEOUT);
        CONSIDER(c->write_stalled, o->write_timeout_ms, CREST_CLOSE_WRITE_TIMEOUT);
    }
#undef CONSIDER
    if (any)
        *when = now + (best < KEY_HORIZON_MS ? best : KEY_HORIZON_MS);
    return any;
}

/* ---- the heap ------------------------------------------------------------ */

static void place(struct crest__deadlines *d, uint32_t i, struct crest_conn *c) {
    d->v[i] = c;
    c->dl_index = i + 1;
}

static void sift_up(struct crest__deadlines *d, uint32_t i) {
    struct crest_conn *c = d->v[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!before(c->dl_key, d->v[parent]->dl_key))
            break;
        place(d, i, d->v[parent]);
        i = parent;
    }
    place(d, i, c);
}

static void sift_down(struct crest__deadlines *d, uint32_t i) {
    struct crest_conn *c = d->v[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= d->len)
            break;
        if (child + 1 < d->len && before(d->v[child + 1]->dl_key, d->v[child]->dl_key))
            child++;
        if (!before(d->v[child]->dl_key, c->dl_key))
            break;
        place(d, i, d->v[child]);
        i = child;
    }
    place(d, i, c);
}

static void heap_remove(struct crest__deadlines *d, struct crest_conn *c) {
    uint32_t i = c->dl_index - 1;
    c->dl_index = 0;
    struct crest_conn *last = d->v[--d->len];
    if (i == d->len)
        return;
    place(d, i, last);
    if (i > 0 && before(last->dl_key, d->v[(i - 1) / 2]->dl_key))
        sift_up(d, i);
    else
        sift_down(d, i);
}

/* ---- the loop timer ------------------------------------------------------ */

/* Point the loop's timer at the heap's top (lazy when that is later). */
static void arm_loop_timer(crest_loop_t *loop, struct crest__deadlines *d) {
    if (d->len == 0) {
        crest_timer_stop(&d->timer);
        return;
    }
    int32_t ms = (int32_t)(d->v[0]->dl_key - loop->now_ms);
    uint64_t due = loop->now_ns + (ms > 0 ? (uint64_t)ms * 1000000u : 0);
    crest__timer_start_at(&d->timer, due, 0);
}

static void on_loop_timer(crest_timer_t *t, void *arg) {
    CREST__UNUSED(t);
    crest_loop_t *loop = arg;
    struct crest__deadlines *d = loop->deadlines;
    while (d->len > 0 && !before(loop->now_ms, d->v[0]->dl_key)) {
        struct crest_conn *c = d->v[0];
        uint32_t when;
        crest_close_reason_t why;
        if (!next_deadline(c, &when, &why)) {
            heap_remove(d, c);
            continue;
        }
        if (before(loop->now_ms, when)) {
            /* Activity moved it since it was keyed. */
            c->dl_key = when;
            sift_down(d, 0);
            continue;
        }
        heap_remove(d, c);
        crest__conn_deadline_reached(c, why);
    }
    arm_loop_timer(loop, d);
}

static struct crest__deadlines *deadlines_of(crest_loop_t *loop) {
    if (!loop->deadlines) {
        struct crest__deadlines *d = calloc(1, sizeof *d);
        if (!d)
            return NULL;
        crest__timer_init(loop, &d->timer, on_loop_timer, loop, false);
        loop->deadlines = d;
    }
    return loop->deadlines;
}

/* ---- per connection ------------------------------------------------------ */

void crest__conn_arm_timer(struct crest_conn *c) {
    crest_loop_t *loop = c->io.loop;
    uint32_t when;
    crest_close_reason_t why;
    if (!next_deadline(c, &when, &why)) {
        crest__conn_disarm_timer(c);
        return;
    }
    struct crest__deadlines *d = deadlines_of(loop);
    if (!d) {
        crest_log(CREST_LOG_ERROR, "out of memory: connection fd %d has no timeouts", c->io.fd);
        return;
    }
    if (c->dl_index) {
        if (!before(when, c->dl_key))
            return; /* later or the same: fixed up when it surfaces */
        c->dl_key = when;
        sift_up(d, c->dl_index - 1);
    } else {
        if (d->len == d->cap) {
            uint32_t cap = d->cap ? d->cap * 2 : 64;
            struct crest_conn **v = realloc(d->v, cap * sizeof *v);
            if (!v) {
                crest_log(CREST_LOG_ERROR, "out of memory: connection fd %d has no timeouts",
                          c->io.fd);
                return;
            }
            d->v = v;
            d->cap = cap;
        }
        c->dl_key = when;
        place(d, d->len++, c);
        sift_up(d, d->len - 1);
    }
    if (d->v[0] == c)
        arm_loop_timer(loop, d);
}

void crest__conn_disarm_timer(struct crest_conn *c) {
    if (!c->dl_index)
        return;
    /* The loop timer may now fire early for nothing; it re-arms then. */
    heap_remove(c->io.loop->deadlines, c);
}

void crest__deadlines_destroy(crest_loop_t *loop) {
    struct crest__deadlines *d = loop->deadlines;
    if (!d)
        return;
    crest_timer_stop(&d->timer);
    free(d->v);
    free(d);
    loop->deadlines = NULL;
}
