/* crest: the fd registry and leak accounting.
 *
 * Every file descriptor crest opens goes through one process-wide registry:
 * its kind, where it was opened ("file.c:123" or a caller's label), when, and
 * a generation number.  Applications may register their own fds too.
 *
 * - Counters per kind: open now, opened in total, closed in total, peak.
 * - Closing through the registry catches a double close, and a close of an
 *   fd the registry does not hold: it is counted, logged with both origins,
 *   returned as -EBADF, and close() is NOT called, so it can never close an fd
 *   that now belongs to someone else.
 * - crest_fd_report() lists every fd still open, with kind, origin and age,
 *   and says "0 fds leaked" when clean.  It also reads /proc/self/fd and lists
 *   fds open in the process that the registry does not know.
 *
 * Cost: O(1) per open and close (an array indexed by fd, under one mutex);
 * nothing on the read/write path.  All functions are thread-safe.
 *
 * Origins are stored as pointers: pass string literals (the macros do).
 * The registry keeps 65,534 distinct origins; any beyond are reported as
 * "?".  Ownership (which loop opened an fd, for the leak report at
 * crest_loop_destroy()) is kept apart and never confused by that: an
 * application's fds are never counted as a loop's.
 */
#ifndef CREST_FDREG_H
#define CREST_FDREG_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum crest_fd_kind {
    CREST_FD_EPOLL = 0,
    CREST_FD_EVENTFD,
    CREST_FD_SIGNALFD,
    CREST_FD_TIMERFD,
    CREST_FD_LISTENER,  /* listening sockets */
    CREST_FD_ACCEPTED,  /* connections accepted by a listener */
    CREST_FD_CONNECT,   /* outbound connections */
    CREST_FD_RESERVE,   /* the spare fd kept for EMFILE recovery */
    CREST_FD_PIPE,
    CREST_FD_USER,      /* anything an application registers */
    CREST_FD_RESOLVER,  /* a resolver's DNS sockets (resolve.h) */
    CREST_FD_KIND_COUNT,
    CREST_FD_ALL = CREST_FD_KIND_COUNT /* for crest_fd_counts(): every kind */
} crest_fd_kind_t;

typedef struct crest_fd_counts {
    uint64_t open;        /* open now */
    uint64_t opened;      /* registered in total */
    uint64_t closed;      /* closed in total */
    uint64_t peak;        /* most open at once */
    uint64_t bad_closes;  /* double closes and closes of unknown fds */
} crest_fd_counts_t;

#define CREST__STR2(x) #x
#define CREST__STR(x) CREST__STR2(x)
#define CREST_HERE __FILE__ ":" CREST__STR(__LINE__)

/* Record fd as open, of this kind, opened at origin.  -EBADF if fd < 0,
 * -EEXIST if the registry already holds fd open (the earlier origin is
 * logged), -ENOMEM. */
int crest_fd_register_at(int fd, crest_fd_kind_t kind, const char *origin);
#define crest_fd_register(fd, kind) crest_fd_register_at((fd), (kind), CREST_HERE)

/* Close fd through the registry.  0, -EBADF for a double close or an fd the
 * registry does not hold (close() is not called), or close()'s -errno other
 * than EINTR (the fd is released either way, as Linux does). */
int crest_fd_close_at(int fd, const char *origin);
#define crest_fd_close(fd) crest_fd_close_at((fd), CREST_HERE)

/* Forget fd without closing it (its ownership moved elsewhere).  0 or -EBADF. */
int crest_fd_release_at(int fd, const char *origin);
#define crest_fd_release(fd) crest_fd_release_at((fd), CREST_HERE)

/* Is fd registered as open?  Its kind, origin and generation if so. */
int crest_fd_lookup(int fd, crest_fd_kind_t *kind, const char **origin, uint64_t *generation);

/* Counters of one kind, or of every kind with CREST_FD_ALL. */
int crest_fd_counts(crest_fd_kind_t kind, crest_fd_counts_t *out);

/* Number of fds the registry holds open. */
uint64_t crest_fd_open_count(void);

/* fd growth: the origins with the most fds open now, best first (more
 * open, then more opened), each with its open, opened and closed counts
 * (since the process's first registration; closed includes releases) and
 * the age at now_ns (CLOCK_MONOTONIC; 0: now) of its oldest fd still open
 * (0 if none).  Origins with the same text count as one; NULL origins and
 * those past the registry's 65,534 count as "?".  Fills at most max (and at
 * most 64) of out (struct crest_fd_origin_growth: crest/insight.h); returns
 * how many, or -EINVAL for a NULL out with max > 0.  Any thread; O(origins)
 * under the registry's lock, no fd is walked. */
struct crest_fd_origin_growth;
int crest_fd_origins(struct crest_fd_origin_growth *out, unsigned max, uint64_t now_ns);

/* "epoll", "eventfd", ... */
const char *crest_fd_kind_name(crest_fd_kind_t kind);

/* Write the report to out (NULL: through crest_log at INFO).  Returns the
 * number of registered fds still open. */
int crest_fd_report(FILE *out);

#ifdef __cplusplus
}
#endif
#endif
