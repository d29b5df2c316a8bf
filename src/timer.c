/* Timers: a binary min-heap ordered by (key, seq), with lazy deadlines.
 *
 * Each timer has two deadlines: key_ns, the one the heap is ordered by, and
 * due_ns, the real one.  Pushing a deadline later (the idle-timeout reset on
 * every message) only writes due_ns: O(1), no heap work.  When the heap
 * surfaces a timer whose due_ns is still in the future, it is re-keyed and
 * sifted down then, once per timeout period rather than once per message.
 * Moving a deadline earlier updates the heap at once (O(log n)).
 *
 * Every arming (start, again, a repeat) takes the next start number, kept
 * with the real deadline and copied into the key with it: ties fire in the
 * order of the armings that set the deadlines, however lazily they were
 * keyed.
 *
 * Deadlines saturate at UINT64_MAX ("never"): a timeout near UINT64_MAX
 * must not wrap into the past and fire at once. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

#define NS_PER_MS 1000000ull
#define NOT_IN_HEAP SIZE_MAX

static uint64_t add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t ms_to_ns(uint64_t ms) {
    return ms > UINT64_MAX / NS_PER_MS ? UINT64_MAX : ms * NS_PER_MS;
}

/* ns rounded up to whole milliseconds, without overflow near UINT64_MAX. */
static uint64_t ns_to_ms_ceil(uint64_t ns) {
    return ns / NS_PER_MS + (ns % NS_PER_MS != 0);
}

static bool before(const struct crest_timer *a, const struct crest_timer *b) {
    return a->key_ns != b->key_ns ? a->key_ns < b->key_ns : a->key_seq < b->key_seq;
}

static void place(struct crest__timer_heap *h, size_t i, struct crest_timer *t) {
    h->v[i] = t;
    t->heap_index = i;
}

static void sift_up(struct crest__timer_heap *h, size_t i) {
    struct crest_timer *t = h->v[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, h->v[parent]))
            break;
        place(h, i, h->v[parent]);
        i = parent;
    }
    place(h, i, t);
}

static void sift_down(struct crest__timer_heap *h, size_t i) {
    struct crest_timer *t = h->v[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && before(h->v[child + 1], h->v[child]))
            child++;
        if (!before(h->v[child], t))
            break;
        place(h, i, h->v[child]);
        i = child;
    }
    place(h, i, t);
}

static int heap_push(struct crest__timer_heap *h, struct crest_timer *t) {
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        struct crest_timer **v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    place(h, h->len++, t);
    sift_up(h, t->heap_index);
    return 0;
}

static void heap_remove(struct crest__timer_heap *h, struct crest_timer *t) {
    size_t i = t->heap_index;
    t->heap_index = NOT_IN_HEAP;
    struct crest_timer *last = h->v[--h->len];
    if (i == h->len)
        return;
    place(h, i, last);
    if (i > 0 && before(last, h->v[(i - 1) / 2]))
        sift_up(h, i);
    else
        sift_down(h, i);
}

void crest__timer_init(struct crest_loop *loop, struct crest_timer *t, crest_timer_cb cb,
                       void *arg, bool counted) {
    *t = (struct crest_timer){
        .loop = loop, .cb = cb, .arg = arg, .heap_index = NOT_IN_HEAP, .counted = counted,
    };
}

int crest__timer_start_at(struct crest_timer *t, uint64_t due_ns, uint64_t repeat_ns) {
    struct crest__timer_heap *h = &t->loop->timers;
    t->repeat_ns = repeat_ns;
    t->due_ns = due_ns;
    t->seq = h->seq++;
    if (t->heap_index != NOT_IN_HEAP) {
        /* Not earlier (and, with the newer start number, after the key in
         * a tie): lazy, fixed up when it surfaces. */
        if (due_ns >= t->key_ns)
            return 0;
        t->key_ns = due_ns;
        t->key_seq = t->seq;
        sift_up(h, t->heap_index);
        return 0;
    }
    t->key_ns = due_ns;
    t->key_seq = t->seq;
    int rc = heap_push(h, t);
    if (rc == 0 && t->counted)
        crest__loop_ref(t->loop);
    return rc;
}

int crest_timer_create(crest_loop_t *loop, crest_timer_cb cb, void *arg, crest_timer_t **timerp) {
    if (!loop || !cb || !timerp)
        return -EINVAL;
    struct crest_timer *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    crest__timer_init(loop, t, cb, arg, true);
    t->heap_owned = true;
    *timerp = t;
    return 0;
}

int crest_timer_start(crest_timer_t *t, uint64_t timeout_ms, uint64_t repeat_ms) {
    if (!t || !t->cb)
        return -EINVAL;
    /* A restart may move the deadline earlier: take it out first so the
     * lazy path never sees a stale, later key. */
    crest_timer_stop(t);
    return crest__timer_start_at(t, add_sat(t->loop->now_ns, ms_to_ns(timeout_ms)),
                                 ms_to_ns(repeat_ms));
}

int crest_timer_again(crest_timer_t *t) {
    if (!t)
        return -EINVAL;
    if (t->repeat_ns == 0) {
        crest_timer_stop(t);
        return 0;
    }
    return crest__timer_start_at(t, add_sat(t->loop->now_ns, t->repeat_ns), t->repeat_ns);
}

void crest_timer_set_repeat(crest_timer_t *t, uint64_t repeat_ms) {
    if (t)
        t->repeat_ns = ms_to_ns(repeat_ms);
}

void crest_timer_stop(crest_timer_t *t) {
    if (!t || t->heap_index == NOT_IN_HEAP)
        return;
    heap_remove(&t->loop->timers, t);
    if (t->counted)
        crest__loop_unref(t->loop);
}

bool crest_timer_active(const crest_timer_t *t) {
    return t && t->heap_index != NOT_IN_HEAP;
}

uint64_t crest_timer_remaining(const crest_timer_t *t) {
    if (!crest_timer_active(t))
        return UINT64_MAX;
    uint64_t now = t->loop->now_ns;
    return t->due_ns <= now ? 0 : ns_to_ms_ceil(t->due_ns - now);
}

void crest_timer_destroy(crest_timer_t *t) {
    if (!t)
        return;
    crest_timer_stop(t);
    if (t->in_callback) {
        t->destroy_pending = true; /* freed when its callback returns */
        return;
    }
    if (t->heap_owned)
        free(t);
}

/* A pass fires the timers due at its start that were armed before it
 * began, except those armed by the first pass of this iteration (a timer
 * callback, or a repeat): those wait for the next iteration.  Like the
 * deferred queue and the ready list, a pass serves only work queued before
 * it, so a timer that re-arms itself with timeout 0 fires once per
 * iteration and I/O, posts and stop are served in between; the next poll
 * does not block, as that timer is due.
 *
 * The pass stops at the first due timer it must not fire.  Timers armed
 * after the pass began have deadlines at or after its "now" and the
 * newest start numbers, so they sort after every older due timer; a held
 * one may be ahead of a few that could fire, and those fire on the next
 * iteration, which does not wait. */
unsigned crest__timers_run(struct crest_loop *loop, bool first) {
    struct crest__timer_heap *h = &loop->timers;
    uint64_t now = loop->now_ns;
    uint64_t begin = h->seq;
    if (first)
        h->held_lo = h->held_hi = begin;
    unsigned fired = 0;
    while (h->len > 0 && h->v[0]->key_ns <= now) {
        struct crest_timer *t = h->v[0];
        if (t->due_ns != t->key_ns || t->seq != t->key_seq) {
            /* Re-armed since it was keyed: re-key and look again, so
             * timers due in this pass still fire in deadline order, ties
             * in start order. */
            t->key_ns = t->due_ns;
            t->key_seq = t->seq;
            sift_down(h, 0);
            continue;
        }
        if (t->seq >= begin || (t->seq >= h->held_lo && t->seq < h->held_hi))
            break;
        if (t->repeat_ns) {
            /* Keep the cadence, but never schedule into the past: a timer
             * that fell behind fires once, not in a burst. */
            uint64_t next = add_sat(t->due_ns, t->repeat_ns);
            if (next <= now)
                next = add_sat(now, t->repeat_ns);
            t->key_ns = t->due_ns = next;
            t->key_seq = t->seq = h->seq++;
            sift_down(h, 0);
        } else {
            heap_remove(h, t);
            if (t->counted)
                crest__loop_unref(loop);
        }
        fired++;
        loop->stats.callbacks++;
        t->in_callback = true;
        /* Timers are named by their function: the timer itself may be
         * freed before a slow batch is described. */
        const void *fn = (const void *)(uintptr_t)t->cb;
        loop->last_cb = fn;
        CREST__CB_ENTER(loop, CREST_CB_TIMER, fn);
        t->cb(t, t->arg);
        CREST__CB_LEAVE(loop, CREST_CB_TIMER, fn);
        t->in_callback = false;
        if (t->destroy_pending && t->heap_owned)
            free(t);
    }
    if (first)
        h->held_hi = h->seq;
    return fired;
}

int crest__timers_next_timeout(struct crest_loop *loop) {
    struct crest__timer_heap *h = &loop->timers;
    if (h->len == 0)
        return -1;
    uint64_t key = h->v[0]->key_ns, now = loop->now_ns;
    if (key <= now)
        return 0;
    uint64_t ms = ns_to_ms_ceil(key - now);
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

void crest__timers_destroy(struct crest_loop *loop) {
    struct crest__timer_heap *h = &loop->timers;
    while (h->len > 0) {
        struct crest_timer *t = h->v[h->len - 1];
        crest_log(CREST_LOG_WARN, "loop destroyed with an active timer (%p)", (void *)t);
        crest_timer_stop(t);
        if (t->heap_owned)
            free(t);
    }
    free(h->v);
    h->v = NULL;
    h->cap = 0;
}
