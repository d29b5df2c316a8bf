/* CPU starvation sampling (insight.h): the loop thread's run-queue wait
 * and context switches.  (Skeleton: filled in with its own change.) */
#include "internal.h"

void crest__insight_sample_cpu(struct crest_loop *loop, crest_insight_t *fig, uint64_t now_ns) {
    CREST__UNUSED(loop);
    CREST__UNUSED(fig);
    CREST__UNUSED(now_ns);
}
