/* Timer internals: a binary min-heap of timers keyed by (deadline, start
 * sequence number), with lazy deadlines so crest_timer_again() is O(1). */
#ifndef CREST_TIMER_INT_H
#define CREST_TIMER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crest/timer.h"

struct crest_timer {
    struct crest_loop *loop;
    crest_timer_cb cb;
    void *arg;
    uint64_t key_ns;      /* deadline the heap is ordered by ... */
    uint64_t key_seq;     /* ... then this start number (ties) */
    uint64_t due_ns;      /* real deadline, and the start number of the */
    uint64_t seq;         /* arming that set it: (due_ns, seq) is never
                             before (key_ns, key_seq) while in the heap */
    uint64_t repeat_ns;
    size_t heap_index;    /* position in the heap, SIZE_MAX when stopped */
    bool heap_owned;      /* allocated by crest_timer_create */
    bool counted;         /* keeps the loop alive while active */
    bool in_callback;
    bool destroy_pending;
};

struct crest__timer_heap {
    struct crest_timer **v;
    size_t len, cap;
    uint64_t seq;                /* the next start number */
    uint64_t held_lo, held_hi;   /* start numbers given out by the first
                                    timer pass of this iteration: they wait
                                    for the next iteration */
};

void crest__timer_init(struct crest_loop *loop, struct crest_timer *t,
                       crest_timer_cb cb, void *arg, bool counted);
/* Arm t to fire at deadline due_ns (absolute, loop clock; UINT64_MAX is
 * never). */
int crest__timer_start_at(struct crest_timer *t, uint64_t due_ns, uint64_t repeat_ns);
void crest__timers_destroy(struct crest_loop *loop);
/* Fire due timers (first: the iteration's first pass; see timer.c for
 * which timers a pass fires); returns how many fired. */
unsigned crest__timers_run(struct crest_loop *loop, bool first);
/* ms until the next timer, -1 if none (for epoll_wait). */
int crest__timers_next_timeout(struct crest_loop *loop);

#endif
