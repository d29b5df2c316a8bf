/* The process-wide log hook. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "internal.h"

static _Atomic int log_level = CREST_LOG_INFO;
static crest_log_fn _Atomic log_fn;
static void *_Atomic log_arg;

void crest_log_set_handler(crest_log_fn fn, void *arg) {
    atomic_store(&log_arg, arg);
    atomic_store(&log_fn, fn);
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
    crest_log_fn fn = atomic_load(&log_fn);
    if (fn) {
        fn(level, msg, atomic_load(&log_arg));
        return;
    }
    /* One fprintf per line, so lines from several threads do not mix. */
    fprintf(stderr, "crest: %s: %s\n", level_name(level), msg);
}
