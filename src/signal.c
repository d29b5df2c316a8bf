/* Signals through one signalfd per loop.
 *
 * The signalfd's mask is the union of the watched signals.  Each signal is
 * blocked in the loop's thread while watched (so it queues on the signalfd
 * instead of running a handler) and unblocked when its last watcher stops,
 * unless the application had blocked it already. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "internal.h"

struct crest_signal {
    struct crest__signals *owner;
    crest_signal_cb cb;
    void *arg;
    int signo;
    bool stopped;
    struct crest_signal *next;
};

struct crest__signals {
    crest_loop_t *loop;
    int fd;
    struct crest_io io;
    sigset_t mask;            /* signals with a watcher */
    sigset_t blocked_by_us;   /* signals we blocked, to unblock later */
    struct crest_signal *watchers;
    bool dispatching;
    bool sweep;               /* watchers stopped during dispatch */
};

static void sweep_stopped(struct crest__signals *s) {
    struct crest_signal **pp = &s->watchers;
    while (*pp) {
        struct crest_signal *w = *pp;
        if (w->stopped) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
    s->sweep = false;
}

static void deliver(struct crest__signals *s, int signo) {
    s->loop->stats.signals++;
    for (struct crest_signal *w = s->watchers; w; w = w->next) {
        if (w->signo == signo && !w->stopped) {
            s->loop->stats.callbacks++;
            w->cb(w, signo, w->arg);
        }
    }
}

void crest__signal_on_io(crest_io_t *io, unsigned events, void *arg) {
    CREST__UNUSED(io);
    CREST__UNUSED(events);
    struct crest__signals *s = arg;
    struct signalfd_siginfo info[16];
    s->dispatching = true;
    for (;;) {
        ssize_t n = read(s->fd, info, sizeof info);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: drained */
        }
        size_t count = (size_t)n / sizeof info[0];
        for (size_t i = 0; i < count; i++)
            deliver(s, (int)info[i].ssi_signo);
        if (count < sizeof info / sizeof info[0])
            break; /* short read: drained */
    }
    s->dispatching = false;
    if (s->sweep)
        sweep_stopped(s);
}

static int signals_init(crest_loop_t *loop) {
    struct crest__signals *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    sigemptyset(&s->mask);
    sigemptyset(&s->blocked_by_us);
    s->fd = signalfd(-1, &s->mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->fd < 0) {
        int rc = -errno;
        free(s);
        return rc;
    }
    int rc = crest__fd_register(s->fd, CREST_FD_SIGNALFD, loop, CREST_HERE);
    if (rc < 0) {
        close(s->fd); /* not registered: the registry would refuse it */
        free(s);
        return rc;
    }
    rc = crest__io_init(loop, &s->io, s->fd, CREST_IO_READABLE, crest__signal_on_io, s, false);
    if (rc < 0) {
        crest_fd_close(s->fd);
        free(s);
        return rc;
    }
    loop->signals = s;
    return 0;
}

static bool watched(const struct crest__signals *s, int signo) {
    for (const struct crest_signal *w = s->watchers; w; w = w->next)
        if (w->signo == signo && !w->stopped)
            return true;
    return false;
}

int crest_signal_start(crest_loop_t *loop, int signo, crest_signal_cb cb, void *arg,
                       crest_signal_t **sigp) {
    if (!loop || !cb || !sigp || signo <= 0 || signo >= NSIG || signo == SIGKILL ||
        signo == SIGSTOP)
        return -EINVAL;
    if (loop->destroying)
        return -ESHUTDOWN; /* from an on_close that crest_loop_destroy runs */
    if (!loop->signals) {
        int rc = signals_init(loop);
        if (rc < 0)
            return rc;
    }
    struct crest__signals *s = loop->signals;
    struct crest_signal *w = malloc(sizeof *w);
    if (!w)
        return -ENOMEM;
    *w = (struct crest_signal){.owner = s, .cb = cb, .arg = arg, .signo = signo};

    if (!sigismember(&s->mask, signo)) {
        sigset_t one, old;
        sigemptyset(&one);
        sigaddset(&one, signo);
        int rc = pthread_sigmask(SIG_BLOCK, &one, &old);
        if (rc != 0) {
            free(w);
            return -rc;
        }
        if (!sigismember(&old, signo))
            sigaddset(&s->blocked_by_us, signo);
        sigaddset(&s->mask, signo);
        if (signalfd(s->fd, &s->mask, 0) < 0) {
            rc = -errno;
            sigdelset(&s->mask, signo);
            free(w);
            return rc;
        }
    }
    w->next = s->watchers;
    s->watchers = w;
    crest__loop_ref(loop);
    *sigp = w;
    return 0;
}

static void unwatch(struct crest__signals *s, int signo) {
    sigdelset(&s->mask, signo);
    (void)signalfd(s->fd, &s->mask, 0);
    if (sigismember(&s->blocked_by_us, signo)) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        sigdelset(&s->blocked_by_us, signo);
    }
}

void crest_signal_stop(crest_signal_t *w) {
    if (!w || w->stopped)
        return;
    struct crest__signals *s = w->owner;
    w->stopped = true;
    crest__loop_unref(s->loop);
    if (!watched(s, w->signo))
        unwatch(s, w->signo);
    if (s->dispatching)
        s->sweep = true; /* freed once the dispatch loop lets go of it */
    else
        sweep_stopped(s);
}

void crest__signals_destroy(crest_loop_t *loop) {
    struct crest__signals *s = loop->signals;
    if (!s)
        return;
    s->dispatching = true; /* stop() must not free while we walk the list */
    for (struct crest_signal *w = s->watchers; w; w = w->next) {
        if (!w->stopped) {
            crest_log(CREST_LOG_WARN, "loop destroyed with an active watcher for signal %d",
                      w->signo);
            crest_signal_stop(w);
        }
    }
    s->dispatching = false;
    sweep_stopped(s);
    crest__io_close(&s->io);
    crest_fd_close(s->fd);
    free(s);
    loop->signals = NULL;
}
