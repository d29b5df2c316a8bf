/* Connection pools (pool.c), as the loop, the insight sampler and /metrics
 * see them. */
#ifndef CREST_POOL_INT_H
#define CREST_POOL_INT_H

#include "internal.h"

/* Each pool of loop, with its figures.  Loop thread. */
void crest__conn_pools_each(crest_loop_t *loop,
                            void (*fn)(const crest_pool_t *p, const char *name,
                                       const crest_pool_stats_t *st, void *arg),
                            void *arg);
/* The sampler: the pools' levels and the busiest pool into fig. */
void crest__conn_pools_sample(crest_loop_t *loop, crest_insight_t *fig);
/* crest_loop_destroy(): pools still alive are destroyed (logged). */
void crest__conn_pools_destroy(crest_loop_t *loop);
void crest__conn_pools_dispatch(crest_pool_t *p);

#endif
