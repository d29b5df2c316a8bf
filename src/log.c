/* The process-wide log hook. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "internal.h"

static _Atomic int log_level = CREST_LOG_INFO;

/* The hook is a pair, {fn, arg}, that a logging thread must see whole: a
 * sequence lock.  A set (rare; sets are serialized by a mutex) makes the
 * count odd, stores both, and makes it even again; a log call reads the
 * count, the pair and the count again, and retries if a set came between.
 * Log calls take no lock, and nothing is allocated or freed.  Every access
 * is atomic; the release stores of the pair order the odd count before
 * them, so a reader that sees any new value sees the count move. */
static pthread_mutex_t set_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic unsigned log_seq;
static crest_log_fn _Atomic log_fn;
static void *_Atomic log_arg;

void crest_log_set_handler(crest_log_fn fn, void *arg) {
    pthread_mutex_lock(&set_lock);
    unsigned seq = atomic_load_explicit(&log_seq, memory_order_relaxed);
    atomic_store_explicit(&log_seq, seq + 1, memory_order_relaxed);
    atomic_store_explicit(&log_fn, fn, memory_order_release);
    atomic_store_explicit(&log_arg, arg, memory_order_release);
    atomic_store_explicit(&log_seq, seq + 2, memory_order_release);
    pthread_mutex_unlock(&set_lock);
}

/* The hook and its argument, as one set left them. */
static crest_log_fn load_hook(void **arg) {
    for (;;) {
        unsigned before = atomic_load_explicit(&log_seq, memory_order_acquire);
        crest_log_fn fn = atomic_load_explicit(&log_fn, memory_order_acquire);
        void *a = atomic_load_explicit(&log_arg, memory_order_acquire);
        unsigned after = atomic_load_explicit(&log_seq, memory_order_relaxed);
        if (before == after && !(before & 1)) {
            *arg = a;
            return fn;
        }
        sched_yield(); /* a set is under way: let it finish */
    }
}

void crest_log_set_level(crest_log_level_t level) {
    atomic_store(&log_level, (int)level);
}

crest_log_level_t crest_log_get_level(void) {
    return (crest_log_level_t)atomic_load(&log_level);
}

bool crest__log_enabled(crest_log_level_t level) {
    return (int)level >= atomic_load(&log_level) && level < CREST_LOG_OFF;
}

static const char *level_name(crest_log_level_t level) {
    switch (level) {
    case CREST_LOG_DEBUG: return "debug";
    case CREST_LOG_INFO: return "info";
    case CREST_LOG_WARN: return "warning";
    case CREST_LOG_ERROR: return "error";
    default: return "log";
    }
}

void crest_log(crest_log_level_t level, const char *fmt, ...) {
    if (!crest__log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    void *arg;
    crest_log_fn fn = load_hook(&arg);
    if (fn) {
        fn(level, msg, arg);
        return;
    }
    /* One fprintf per line, so lines from several threads do not mix. */
    fprintf(stderr, "crest: %s: %s\n", level_name(level), msg);
}
