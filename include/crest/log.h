/* crest: logging.
 *
 * crest logs what an operator needs to know (a peer closed for a protocol
 * error, an fd closed twice, the leak report at shutdown) through one
 * process-wide hook.  The default writes "crest: LEVEL: message" lines to
 * stderr.  The hook may be called from any thread that runs a loop; it must
 * be thread-safe.
 */
#ifndef CREST_LOG_H
#define CREST_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum crest_log_level {
    CREST_LOG_DEBUG = 0,
    CREST_LOG_INFO = 1,
    CREST_LOG_WARN = 2,
    CREST_LOG_ERROR = 3,
    CREST_LOG_OFF = 4
} crest_log_level_t;

typedef void (*crest_log_fn)(crest_log_level_t level, const char *msg, void *arg);

/* Replace the log hook; NULL restores the default (stderr).  Thread-safe:
 * a log call in another thread gets the old fn with the old arg or the new
 * fn with the new arg, never a mix.  A call already under way may still
 * run the old hook after this returns: free the old arg only once no
 * other thread can be logging.  Sets are serialized by a mutex; log calls
 * take none. */
void crest_log_set_handler(crest_log_fn fn, void *arg);

/* Messages below this level are dropped before formatting.  Default INFO. */
void crest_log_set_level(crest_log_level_t level);
crest_log_level_t crest_log_get_level(void);

/* Log through the hook, printf-style.  Applications may use it too. */
void crest_log(crest_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
