/* The blocked-loop watchdog (insight.h): one thread per process.
 * (Skeleton: the thread comes with its own change.) */
#include "internal.h"

_Atomic bool crest__watchdog_on;
_Atomic uint64_t crest__watchdog_threshold_ns;

void crest_watchdog_opts_init(crest_watchdog_opts_t *opts) {
    opts->threshold_ms = 100;
    opts->backtrace = true;
    opts->signal = 0;
}

int crest_watchdog_start(const crest_watchdog_opts_t *opts) {
    CREST__UNUSED(opts);
    return -ENOSYS;
}

void crest_watchdog_stop(void) {}

bool crest_watchdog_running(void) {
    return false;
}

void crest__watchdog_add(struct crest_loop *loop) {
    CREST__UNUSED(loop);
}

void crest__watchdog_remove(struct crest_loop *loop) {
    CREST__UNUSED(loop);
}

void crest__watchdog_enter(struct crest_loop *loop, crest_cb_kind_t kind, const void *obj) {
    CREST__UNUSED(loop);
    CREST__UNUSED(kind);
    CREST__UNUSED(obj);
}

void crest__watchdog_iteration_end(struct crest_loop *loop, uint64_t busy_ns) {
    CREST__UNUSED(loop);
    CREST__UNUSED(busy_ns);
}
