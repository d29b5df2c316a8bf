/* The chunk pool: a free list of standard chunks per loop, no locking (a
 * pool belongs to one loop's thread), with byte accounting. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "internal.h"

static size_t footprint(size_t cap) {
    return sizeof(struct crest__chunk) + cap;
}

struct crest__chunk *crest__chunk_get(struct crest__pool *pool, size_t min_cap) {
    struct crest__chunk *c;
    size_t cap = min_cap <= CREST__CHUNK_SIZE ? CREST__CHUNK_SIZE : min_cap;
    if (cap == CREST__CHUNK_SIZE && pool->free) {
        c = pool->free;
        pool->free = c->next;
        pool->st.chunks_free--;
    } else {
        if (cap > UINT32_MAX)
            return NULL;
        c = malloc(footprint(cap));
        if (!c)
            return NULL;
        c->cap = (uint32_t)cap;
        pool->st.allocated += footprint(cap);
    }
    c->next = NULL;
    c->stall_ns = c->pause_ns = 0;
    c->start = c->end = 0;
    pool->st.in_use += footprint(c->cap);
    if (pool->st.in_use > pool->st.peak)
        pool->st.peak = pool->st.in_use;
    return c;
}

void crest__chunk_put(struct crest__pool *pool, struct crest__chunk *c) {
    pool->st.in_use -= footprint(c->cap);
    if (c->cap == CREST__CHUNK_SIZE && pool->st.chunks_free < CREST__POOL_MAX_FREE) {
        c->next = pool->free;
        pool->free = c;
        pool->st.chunks_free++;
        return;
    }
    pool->st.allocated -= footprint(c->cap);
    free(c);
}

void crest__chunk_compact(struct crest__chunk *c) {
    if (c->start == 0)
        return;
    size_t len = crest__chunk_len(c);
    memmove(c->data, c->data + c->start, len);
    c->start = 0;
    c->end = (uint32_t)len;
}

struct crest__chunk *crest__chunk_grow(struct crest__pool *pool, struct crest__chunk *c,
                                       size_t new_cap) {
    struct crest__chunk *n = crest__chunk_get(pool, new_cap);
    if (!n)
        return NULL;
    size_t len = crest__chunk_len(c);
    memcpy(n->data, c->data + c->start, len);
    n->end = (uint32_t)len;
    crest__chunk_put(pool, c);
    return n;
}

void crest__pool_destroy(struct crest__pool *pool) {
    while (pool->free) {
        struct crest__chunk *c = pool->free;
        pool->free = c->next;
        pool->st.allocated -= footprint(c->cap);
        free(c);
    }
    pool->st.chunks_free = 0;
}
