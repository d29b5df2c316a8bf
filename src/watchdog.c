/* The blocked-loop watchdog (insight.h): one thread per process that
 * notices a loop stuck inside one iteration while it is still stuck, and
 * says what it is running (and, by a signal to the stuck thread, where).
 *
 * The loop's side (on the loop thread, only while the watchdog runs):
 *   - crest__watchdog_busy() (insight_int.h) stamps when the loop became
 *     busy (iteration start, back from epoll_wait) and 0 when it waits or
 *     leaves the iteration;
 *   - crest__watchdog_enter(), per callback, publishes what runs: kind,
 *     function, handler name, connection id, fd, thread id.  Relaxed
 *     stores under a sequence count: no formatting, no syscall (gettid
 *     once per thread), nothing followed that the callback is not about to
 *     touch anyway;
 *   - crest__watchdog_iteration_end() counts an iteration at or past the
 *     threshold in fig.blocked.
 *
 * The watchdog thread wakes every threshold/4 (5 to 50 ms), reads each
 * loop's published fields under the registry lock (a loop unregisters
 * under the same lock as it is destroyed, so none is freed while read),
 * and never dereferences the loop's connections, watchers or timers: it
 * names functions with dladdr() and peers with getpeername() on the fd,
 * from its own thread.
 *
 * Cost while the watchdog is off: nothing beyond the loop's existing test
 * of loop->track per callback and of `watched` per iteration.  While it is
 * on: every callback goes through crest__insight_cb_enter() (a call, 7
 * instructions) and crest__watchdog_enter(): 51 instructions for a
 * connection's callback at -O2 on x86-64 (the io's callback compared with
 * the connection's, four loads through the conn and its endpoint, a
 * thread-local load and compare for the thread id, eight relaxed stores,
 * saving and restoring six registers; no atomic read-modify-write, no
 * fence: plain moves on x86), fewer for a timer or deferred callback; and
 * an iteration three more stores. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conn_int.h"
#include "internal.h"

#define NS_PER_MS UINT64_C(1000000)
#define PERIOD_MIN_NS (5 * NS_PER_MS)
#define PERIOD_MAX_NS (50 * NS_PER_MS)
/* Stalls reported per tick (the others wait for the next tick). */
#define MAX_REPORTS 16
/* Stack frames taken by the signal handler. */
#define BT_FRAMES 64
/* How long the watchdog waits for a stuck thread's stack. */
#define BT_WAIT_MS 1000
#define BT_TAG "crest-bt "
#define BT_END "crest-bt-end\n"

#define FN(f) ((const void *)(uintptr_t)(f))

_Atomic bool crest__watchdog_on;
_Atomic uint64_t crest__watchdog_threshold_ns;

/* The loop thread's id, cached per thread (initial-exec: one load off the
 * thread pointer, no __tls_get_addr call). */
static __thread int tl_tid __attribute__((tls_model("initial-exec")));
/* Set on the watchdog's own thread (a log hook it calls may call stop). */
static __thread bool tl_is_watchdog;

/* ---- state ---------------------------------------------------------------
 * ctl_mu serializes start and stop.  mu guards the list of loops and the
 * thread's wake-ups (cv, stopping). */
static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static bool cv_ready;
static struct crest_loop *loops;        /* under mu */
static bool stopping;                   /* under mu */
static _Atomic bool wd_running;
static pthread_t thread;
static _Atomic bool in_child;           /* a fork child of a running watchdog:
                                           its thread is not here */
static uint64_t threshold_ns, period_ns;
/* Backtraces */
static bool bt_on;                      /* opts.backtrace, and the signal ours */
static bool bt_installed;               /* our handler is installed */
static bool bt_unanswered;              /* a signal sent was never taken */
static int bt_sig;
static struct sigaction bt_old;
static int bt_pipe[2] = {-1, -1};
static _Atomic int bt_wfd = -1;         /* the handler's end, or -1 */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void crest_watchdog_opts_init(crest_watchdog_opts_t *opts) {
    opts->threshold_ms = 100;
    opts->backtrace = true;
    opts->signal = 0;
}

/* ---- the loop's side ---------------------------------------------------- */

void crest__watchdog_add(struct crest_loop *loop) {
    struct crest__insight *ins = &loop->ins;
    atomic_store_explicit(&ins->wd_fd, -1, memory_order_relaxed);
    atomic_store_explicit(&ins->wd_kind, CREST__WD_NONE, memory_order_relaxed);
    pthread_mutex_lock(&mu);
    ins->wd_next = loops;
    loops = loop;
    pthread_mutex_unlock(&mu);
}

void crest__watchdog_remove(struct crest_loop *loop) {
    pthread_mutex_lock(&mu);
    for (struct crest_loop **p = &loops; *p; p = &(*p)->ins.wd_next) {
        if (*p == loop) {
            *p = loop->ins.wd_next;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
}

void crest__watchdog_enter(struct crest_loop *loop, crest_cb_kind_t kind, const void *obj) {
    struct crest__insight *ins = &loop->ins;
    const void *fn = obj;
    const char *name = NULL;
    uint64_t conn_id = 0;
    int fd = -1;
    if (kind != CREST_CB_TIMER && kind != CREST_CB_DEFERRED && kind != CREST_CB_POSTED) {
        /* An io watcher: the connection, listener or signal ones are
         * named for what they are. */
        const struct crest_io *io = obj;
        fd = io->fd;
        if (io->cb == crest__conn_on_io) {
            const struct crest_conn *c = CREST__CONTAINER_OF(io, struct crest_conn, io);
            const crest_handler_t *h = &c->ep->handler;
            kind = CREST_CB_CONN;
            conn_id = c->id;
            name = h->name;
            fn = h->on_message ? FN(h->on_message) : FN(h->on_data);
        } else if (io->cb == crest__listener_on_io) {
            const crest_handler_t *h = crest__listener_handler(crest__listener_of_io(io));
            kind = CREST_CB_ACCEPT;
            if (h) { /* NULL: closed (by an earlier callback of the batch) */
                name = h->name;
                fn = h->on_message ? FN(h->on_message) : FN(h->on_data);
            }
        } else {
            kind = io->cb == crest__signal_on_io ? CREST_CB_SIGNAL : CREST_CB_IO;
            fn = FN(io->cb);
        }
    }
    int tid = tl_tid;
    if (CREST__UNLIKELY(tid == 0))
        tid = tl_tid = (int)syscall(SYS_gettid);
    if (CREST__UNLIKELY(tid != atomic_load_explicit(&ins->wd_tid, memory_order_relaxed)))
        atomic_store_explicit(&ins->wd_tid, tid, memory_order_relaxed);
    uint64_t s = crest__wd_write_begin(ins);
    atomic_store_explicit(&ins->wd_kind, (uint32_t)kind, memory_order_release);
    atomic_store_explicit(&ins->wd_fn, fn, memory_order_release);
    atomic_store_explicit(&ins->wd_name, name, memory_order_release);
    atomic_store_explicit(&ins->wd_conn_id, conn_id, memory_order_release);
    atomic_store_explicit(&ins->wd_fd, fd, memory_order_release);
    crest__wd_write_end(ins, s);
}

void crest__watchdog_iteration_end(struct crest_loop *loop, uint64_t busy_ns) {
    uint64_t thr = atomic_load_explicit(&crest__watchdog_threshold_ns, memory_order_relaxed);
    if (CREST__UNLIKELY(thr && busy_ns >= thr)) {
        crest_insight_t *f = &loop->ins.fig;
        f->blocked++;
        if (busy_ns > f->blocked_max_ns)
            f->blocked_max_ns = busy_ns;
    }
}

/* ---- the backtrace signal ----------------------------------------------- */

/* Async-signal-safe: backtrace() (its unwinder loaded at start, outside
 * any handler), backtrace_symbols_fd() (no malloc), write(), gettid. */
static void bt_handler(int sig) {
    CREST__UNUSED(sig);
    int saved = errno;
    int fd = atomic_load_explicit(&bt_wfd, memory_order_acquire);
    if (fd >= 0) {
        void *frames[BT_FRAMES];
        int n = backtrace(frames, BT_FRAMES);
        /* "crest-bt <tid>\n", the frames, "crest-bt-end\n" */
        char head[32] = BT_TAG;
        size_t len = sizeof BT_TAG - 1;
        char digits[12];
        int nd = 0;
        unsigned tid = (unsigned)syscall(SYS_gettid);
        do {
            digits[nd++] = (char)('0' + tid % 10);
            tid /= 10;
        } while (tid && nd < (int)sizeof digits);
        while (nd > 0)
            head[len++] = digits[--nd];
        head[len++] = '\n';
        ssize_t rc = write(fd, head, len);
        /* Frame 0 is this handler, frame 1 the kernel's return trampoline
         * (__restore_rt): the stuck code begins at frame 2. */
        if (n > 2)
            backtrace_symbols_fd(frames + 2, n - 2, fd);
        rc = write(fd, BT_END, sizeof BT_END - 1);
        CREST__UNUSED(rc);
    }
    errno = saved;
}

/* Install the handler if the signal is free (SIG_DFL).  Called by start
 * with ctl_mu held. */
static int bt_setup(int sig) {
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) < 0)
        return -errno;
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL) {
        /* Load the unwinder (libgcc_s) now: the first backtrace() may
         * allocate, which the handler must not. */
        void *warm[4];
        (void)backtrace(warm, 4);
        int p[2];
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
            return -errno;
        int rc = crest_fd_register_at(p[0], CREST_FD_PIPE, "watchdog: backtrace pipe (read)");
        if (rc == 0) {
            rc = crest_fd_register_at(p[1], CREST_FD_PIPE, "watchdog: backtrace pipe (write)");
            if (rc < 0)
                crest_fd_close(p[0]);
        }
        if (rc < 0) {
            if (rc != -EEXIST) {
                close(p[0]);
                close(p[1]);
            }
            return rc;
        }
        bt_pipe[0] = p[0];
        bt_pipe[1] = p[1];
        atomic_store_explicit(&bt_wfd, p[1], memory_order_release);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = bt_handler;
        sa.sa_flags = SA_RESTART;
        sigfillset(&sa.sa_mask);
        if (sigaction(sig, &sa, &bt_old) < 0) {
            rc = -errno;
            atomic_store(&bt_wfd, -1);
            crest_fd_close(bt_pipe[0]);
            crest_fd_close(bt_pipe[1]);
            bt_pipe[0] = bt_pipe[1] = -1;
            return rc;
        }
        bt_installed = true;
        bt_on = true;
        bt_sig = sig;
        bt_unanswered = false;
    } else {
        crest_log(CREST_LOG_INFO,
                  "watchdog: signal %d has a handler already: no backtraces of stuck loops", sig);
        bt_on = false;
    }
    return 0;
}

/* Undo bt_setup (ctl_mu held, the thread joined). */
static void bt_teardown(void) {
    if (bt_installed) {
        /* A signal sent but never taken (the thread blocks it) is still
         * pending: SIG_DFL would kill the process once it is taken, so
         * our handler stays (it does nothing without the pipe). */
        if (!bt_unanswered)
            sigaction(bt_sig, &bt_old, NULL);
        bt_installed = false;
    }
    atomic_store_explicit(&bt_wfd, -1, memory_order_release);
    for (int i = 0; i < 2; i++) {
        if (bt_pipe[i] >= 0)
            crest_fd_close(bt_pipe[i]);
        bt_pipe[i] = -1;
    }
    bt_on = false;
}

/* ---- the watchdog thread ------------------------------------------------ */

/* One stall to report, copied out of a loop under mu. */
struct stall {
    const struct crest_loop *loop; /* identity only: never dereferenced */
    uint64_t seq, start, stalled_ns, running_ns, conn_id;
    const void *fn;
    const char *name;
    uint32_t kind;
    unsigned what;
    int fd, tid;
    bool first;
};

/* The published fields, seen whole (false: the loop kept rewriting them). */
static bool read_published(struct crest__insight *ins, struct stall *st) {
    for (int tries = 0; tries < 100; tries++) {
        uint64_t s1 = atomic_load_explicit(&ins->wd_seq, memory_order_acquire);
        if (s1 & 1)
            continue;
        st->kind = atomic_load_explicit(&ins->wd_kind, memory_order_acquire);
        st->fn = atomic_load_explicit(&ins->wd_fn, memory_order_acquire);
        st->name = atomic_load_explicit(&ins->wd_name, memory_order_acquire);
        st->conn_id = atomic_load_explicit(&ins->wd_conn_id, memory_order_acquire);
        st->fd = atomic_load_explicit(&ins->wd_fd, memory_order_acquire);
        if (atomic_load_explicit(&ins->wd_seq, memory_order_relaxed) == s1) {
            st->seq = s1;
            return true;
        }
    }
    return false;
}

/* Look at every loop (mu held): the stalls due for a report. */
static int scan(uint64_t now, struct stall *out) {
    int n = 0;
    for (struct crest_loop *loop = loops; loop; loop = loop->ins.wd_next) {
        struct crest__insight *ins = &loop->ins;
        uint64_t start = atomic_load_explicit(&ins->wd_iter_start_ns, memory_order_relaxed);
        struct stall st;
        if (!read_published(ins, &st))
            continue;
        /* How long the current callback has run: since this watchdog
         * first saw its sequence number (so up to one period short). */
        if (st.seq != ins->wd_seen_seq) {
            ins->wd_seen_seq = st.seq;
            ins->wd_seen_ns = now;
        }
        if (start == 0 || now < start) {
            ins->wd_stall_start = 0;
            continue;
        }
        st.stalled_ns = now - start;
        if (st.stalled_ns < threshold_ns || n == MAX_REPORTS)
            continue;
        st.first = ins->wd_stall_start != start;
        if (st.first) {
            ins->wd_stall_start = start;
            ins->wd_next_report_ns = threshold_ns;
        }
        if (st.stalled_ns < ins->wd_next_report_ns)
            continue;
        /* Again when the stall has doubled. */
        while (ins->wd_next_report_ns <= st.stalled_ns && ins->wd_next_report_ns < UINT64_MAX / 2)
            ins->wd_next_report_ns *= 2;
        st.loop = loop;
        st.start = start;
        st.running_ns = now - ins->wd_seen_ns;
        st.what = atomic_load_explicit(&ins->cur_what, memory_order_relaxed);
        st.tid = atomic_load_explicit(&ins->wd_tid, memory_order_relaxed);
        out[n++] = st;
    }
    return n;
}

/* Is the loop still in the callback the stall was read in? */
static bool still_in(const struct stall *st) {
    bool same = false;
    pthread_mutex_lock(&mu);
    for (struct crest_loop *loop = loops; loop; loop = loop->ins.wd_next) {
        if (loop == st->loop) {
            same = atomic_load_explicit(&loop->ins.wd_seq, memory_order_acquire) == st->seq &&
                   atomic_load_explicit(&loop->ins.wd_iter_start_ns, memory_order_relaxed) ==
                       st->start;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    return same;
}

/* The socket's peer (or, for a listener, its own address).  The fd is the
 * loop's: the loop may close it, and the number be reused, between the
 * read of wd_fd and this call.  That is accepted because the call only
 * reads an address (it cannot disturb any socket), and the answer is kept
 * only if the loop is still in the same callback afterwards (still_in):
 * a connection's fd is not closed while its own callback runs. */
static void sock_addr(int fd, bool peer, char *buf, size_t len) {
    crest_addr_t a;
    memset(&a, 0, sizeof a);
    a.len = sizeof a.ss;
    int rc = peer ? getpeername(fd, (struct sockaddr *)&a.ss, &a.len)
                  : getsockname(fd, (struct sockaddr *)&a.ss, &a.len);
    if (rc < 0 || crest_addr_format(&a, buf, len) < 0)
        buf[0] = '\0';
}

static void fmt_ms(char *buf, size_t len, uint64_t ns) {
    if (ns >= 10000 * NS_PER_MS)
        snprintf(buf, len, "%.1f s", (double)ns / 1e9);
    else
        snprintf(buf, len, "%" PRIu64 " ms", ns / NS_PER_MS);
}

/* Read the stuck thread's stack (sent by bt_handler) and log it. */
static void take_backtrace(const struct stall *st) {
    char buf[16384];
    /* Left over from a signal answered late: not this one's. */
    while (read(bt_pipe[0], buf, sizeof buf) > 0) {
    }
    if (syscall(SYS_tgkill, getpid(), st->tid, bt_sig) < 0) {
        crest_log(CREST_LOG_WARN, "watchdog: no stack of thread %d: %s", st->tid, strerror(errno));
        return;
    }
    char tag[32];
    snprintf(tag, sizeof tag, BT_TAG "%d\n", st->tid);
    size_t len = 0;
    char *begin = NULL, *end = NULL;
    for (int waited = 0; waited < BT_WAIT_MS;) {
        ssize_t n = read(bt_pipe[0], buf + len, sizeof buf - 1 - len);
        if (n > 0) {
            len += (size_t)n;
            buf[len] = '\0';
            if (!begin)
                begin = strstr(buf, tag);
            if (begin && (end = strstr(begin, BT_END)) != NULL)
                break;
            if (len == sizeof buf - 1)
                break; /* a stack longer than we keep: log what came */
            continue;
        }
        pthread_mutex_lock(&mu);
        bool stop = stopping;
        pthread_mutex_unlock(&mu);
        if (stop)
            return;
        struct pollfd p = {.fd = bt_pipe[0], .events = POLLIN};
        poll(&p, 1, 50);
        waited += 50;
    }
    if (!begin) {
        /* The signal is still pending (blocked in that thread): more would
         * only queue up.  No more backtraces in this run. */
        bt_unanswered = true;
        bt_on = false;
        crest_log(CREST_LOG_WARN,
                  "watchdog: thread %d did not take signal %d within %d ms (blocked?): "
                  "no more backtraces",
                  st->tid, bt_sig, BT_WAIT_MS);
        return;
    }
    if (end)
        *end = '\0';
    crest_log(CREST_LOG_WARN, "watchdog: stack of loop thread %d%s:", st->tid,
              still_in(st) ? "" : " (taken as the stall ended: may show later code)");
    char *line = begin + strlen(tag);
    for (int i = 0; line && *line; i++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        crest_log(CREST_LOG_WARN, "  #%d %s", i, line);
        line = nl ? nl + 1 : NULL;
    }
}

static void report(const struct stall *st) {
    char stalled[32], running[32], fname[160], where[320] = "", peer[CREST_ADDR_STRLEN] = "";
    fmt_ms(stalled, sizeof stalled, st->stalled_ns);
    fmt_ms(running, sizeof running, st->running_ns);
    const char *what = crest__what_name(st->what);
    if (st->name)
        snprintf(fname, sizeof fname, "%s", st->name);
    else
        crest__name_function(fname, sizeof fname, st->fn);
    switch (st->kind) {
    case CREST_CB_CONN:
        if (st->fd >= 0) {
            sock_addr(st->fd, true, peer, sizeof peer);
            if (peer[0] && !still_in(st))
                peer[0] = '\0';
        }
        snprintf(where, sizeof where, "conn handler %s%s%s conn #%" PRIu64 " fd %d%s%s", fname,
                 what[0] ? " " : "", what, st->conn_id, st->fd, peer[0] ? " peer " : "", peer);
        break;
    case CREST_CB_ACCEPT:
        if (st->fd >= 0) {
            sock_addr(st->fd, false, peer, sizeof peer);
            if (peer[0] && !still_in(st))
                peer[0] = '\0';
        }
        snprintf(where, sizeof where, "accept handler %s%s%s fd %d%s%s", fname, what[0] ? " " : "",
                 what, st->fd, peer[0] ? " listening on " : "", peer);
        break;
    case CREST_CB_IO:
    case CREST_CB_SIGNAL:
        snprintf(where, sizeof where, "%s %s fd %d", crest_cb_kind_name(st->kind),
                 st->kind == CREST_CB_SIGNAL ? "watchers" : fname, st->fd);
        break;
    default:
        snprintf(where, sizeof where, "%s %s", crest_cb_kind_name(st->kind), fname);
        break;
    }
    if (st->kind == CREST__WD_NONE)
        crest_log(CREST_LOG_WARN,
                  "loop blocked for %s outside callbacks (crest's own work: timers, "
                  "closing, reaping) (thread %d)",
                  stalled, st->tid);
    else
        crest_log(CREST_LOG_WARN, "loop blocked for %s in a callback: %s (running %s, thread %d)",
                  stalled, where, running, st->tid);
    if (st->first && bt_on && st->tid > 0)
        take_backtrace(st);
}

static uint64_t mono_deadline(struct timespec *ts, uint64_t after_ns) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + after_ns;
    ts->tv_sec += (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
    return ns;
}

static void *watchdog_main(void *arg) {
    CREST__UNUSED(arg);
    struct stall due[MAX_REPORTS];
    tl_is_watchdog = true;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        struct timespec ts;
        mono_deadline(&ts, period_ns);
        while (!stopping && pthread_cond_timedwait(&cv, &mu, &ts) != ETIMEDOUT) {
        }
        if (stopping)
            break;
        int n = scan(crest__clock_ns(), due);
        pthread_mutex_unlock(&mu);
        /* Logging (the application's hook), dladdr and the stack wait run
         * without the lock: loops come and go meanwhile. */
        for (int i = 0; i < n; i++)
            report(&due[i]);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* ---- start, stop, fork -------------------------------------------------- */

/* A fork child has the running state but not the thread: the child's
 * copy is marked, and its leftovers are released by its own start or
 * stop.  The locks are taken across fork so that the child's copies are
 * consistent. */
static void atfork_prepare(void) {
    pthread_mutex_lock(&ctl_mu);
    pthread_mutex_lock(&mu);
}
static void atfork_parent(void) {
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&ctl_mu);
}
static void atfork_child(void) {
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&ctl_mu);
    tl_tid = 0; /* the child thread has its own id */
    if (atomic_load(&wd_running)) {
        /* A stray backtrace signal in the child writes nowhere. */
        atomic_store(&bt_wfd, -1);
        atomic_store(&crest__watchdog_on, false);
        atomic_store(&wd_running, false);
        atomic_store(&in_child, true);
    }
}
static void atfork_register(void) {
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* The child's leftovers of its parent's watchdog (ctl_mu held). */
static void child_cleanup(void) {
    if (atomic_exchange(&in_child, false)) {
        bt_teardown();
        pthread_mutex_lock(&mu);
        stopping = false;
        pthread_mutex_unlock(&mu);
    }
}

int crest_watchdog_start(const crest_watchdog_opts_t *opts) {
    crest_watchdog_opts_t o;
    if (opts)
        o = *opts;
    else
        crest_watchdog_opts_init(&o);
    int sig = o.signal ? o.signal : SIGRTMIN + 3;
    if (o.threshold_ms == 0 || sig <= 0 || sig > SIGRTMAX || sig == SIGKILL || sig == SIGSTOP)
        return -EINVAL;
    pthread_once(&atfork_once, atfork_register);
    pthread_mutex_lock(&ctl_mu);
    child_cleanup();
    if (atomic_load(&wd_running)) {
        pthread_mutex_unlock(&ctl_mu);
        return -EALREADY;
    }
    if (!cv_ready) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&cv, &ca);
        pthread_condattr_destroy(&ca);
        cv_ready = true;
    }
    threshold_ns = (uint64_t)o.threshold_ms * NS_PER_MS;
    period_ns = threshold_ns / 4;
    if (period_ns < PERIOD_MIN_NS)
        period_ns = PERIOD_MIN_NS;
    if (period_ns > PERIOD_MAX_NS)
        period_ns = PERIOD_MAX_NS;
    bt_on = false;
    if (o.backtrace) {
        int rc = bt_setup(sig);
        if (rc < 0) {
            pthread_mutex_unlock(&ctl_mu);
            return rc;
        }
    }
    pthread_mutex_lock(&mu);
    stopping = false;
    /* Stamps left by a previous run (an iteration it watched that ended
     * after it stopped): not stalls. */
    for (struct crest_loop *loop = loops; loop; loop = loop->ins.wd_next) {
        atomic_store_explicit(&loop->ins.wd_iter_start_ns, 0, memory_order_relaxed);
        loop->ins.wd_stall_start = 0;
    }
    pthread_mutex_unlock(&mu);
    atomic_store(&crest__watchdog_threshold_ns, threshold_ns);
    /* On before the thread: the loops start publishing at their next
     * iteration. */
    atomic_store(&crest__watchdog_on, true);
    /* The thread takes no signals (the backtrace one included): block all
     * while creating it, so it inherits the full mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&thread, NULL, watchdog_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_store(&crest__watchdog_on, false);
        bt_teardown();
        pthread_mutex_unlock(&ctl_mu);
        return -rc;
    }
    atomic_store(&wd_running, true);
    pthread_mutex_unlock(&ctl_mu);
    return 0;
}

void crest_watchdog_stop(void) {
    if (tl_is_watchdog) {
        /* From a log hook the watchdog called: it cannot wait for itself. */
        crest_log(CREST_LOG_WARN, "crest_watchdog_stop: called on the watchdog thread: ignored");
        return;
    }
    pthread_mutex_lock(&ctl_mu);
    child_cleanup();
    if (!atomic_load(&wd_running)) {
        pthread_mutex_unlock(&ctl_mu);
        return;
    }
    atomic_store(&crest__watchdog_on, false);
    pthread_mutex_lock(&mu);
    stopping = true;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(thread, NULL);
    bt_teardown();
    atomic_store(&wd_running, false);
    pthread_mutex_unlock(&ctl_mu);
}

bool crest_watchdog_running(void) {
    return atomic_load(&wd_running);
}
