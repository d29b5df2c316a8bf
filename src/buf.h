/* Byte chunks from a per-loop pool.
 *
 * A chunk is one allocation: a small header and its bytes.  Standard chunks
 * (CREST__CHUNK_SIZE bytes) are recycled through the pool's free list;
 * larger ones (an input buffer that must hold a big message) are allocated
 * to size and freed when returned.  The pool keeps at most max_free standard
 * chunks, so memory a traffic burst took goes back to the system. */
#ifndef CREST_BUF_H
#define CREST_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "crest/conn.h"

#define CREST__CHUNK_SIZE 16384u
#define CREST__POOL_MAX_FREE 64u

struct crest__chunk {
    struct crest__chunk *next;
    /* The head chunk of a connection's output queue carries the queue's
     * waits (the loop's clock, 0: none), handed on to the next chunk as it
     * is consumed (conn_io.c): memory only while output waits, none in the
     * connection itself. */
    uint64_t stall_ns;  /* the socket left output queued: since */
    uint64_t pause_ns;  /* reading paused above high water: since */
    uint32_t start;   /* first byte not yet consumed */
    uint32_t end;     /* one past the last byte held */
    uint32_t cap;     /* bytes in data[] */
    uint8_t data[];
};

struct crest__pool {
    struct crest__chunk *free;
    crest_buf_stats_t st;
};

/* A chunk with at least min_cap bytes, empty; NULL if out of memory. */
struct crest__chunk *crest__chunk_get(struct crest__pool *pool, size_t min_cap);
void crest__chunk_put(struct crest__pool *pool, struct crest__chunk *c);
/* A copy of c with capacity new_cap holding c's unconsumed bytes at the
 * front; c is returned to the pool.  NULL (c untouched) if out of memory. */
struct crest__chunk *crest__chunk_grow(struct crest__pool *pool, struct crest__chunk *c,
                                       size_t new_cap);
/* Move unconsumed bytes to the front. */
void crest__chunk_compact(struct crest__chunk *c);
void crest__pool_destroy(struct crest__pool *pool);

static inline size_t crest__chunk_len(const struct crest__chunk *c) {
    return c->end - c->start;
}
static inline size_t crest__chunk_space(const struct crest__chunk *c) {
    return c->cap - c->end;
}

#endif
