/* Shared helpers for the crest unit tests (cmocka).  Header-only: each test
 * program includes it once.
 *
 * - A hang guard: every test runs under alarm(), so a bug that blocks makes
 *   the program die with SIGALRM instead of hanging the suite.
 * - Log capture: crest's log hook is redirected into a buffer so tests can
 *   assert on what crest logged (and the suite output stays quiet).
 * - The "nothing left open" check every test ends with: the registry's open
 *   count and the number of entries in /proc/self/fd return to their values
 *   at the start of the test.
 */
#ifndef CREST_TEST_H
#define CREST_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cmocka.h>

#include <crest/crest.h>

#define TU_UNUSED __attribute__((unused))

/* Seconds a single test may take before SIGALRM kills the program.
 * Generous: valgrind slows everything down. */
#ifndef TU_ALARM_S
#define TU_ALARM_S 60
#endif

/* ---- log capture --------------------------------------------------------- */

struct tu_log {
    pthread_mutex_t mu;
    char *buf;
    size_t len, cap;
    unsigned lines;
    unsigned warnings; /* WARN and above */
};

static struct tu_log tu_log = {.mu = PTHREAD_MUTEX_INITIALIZER};

static TU_UNUSED const char *tu_level_name(crest_log_level_t level) {
    switch (level) {
    case CREST_LOG_DEBUG: return "debug";
    case CREST_LOG_INFO: return "info";
    case CREST_LOG_WARN: return "warning";
    case CREST_LOG_ERROR: return "error";
    default: return "?";
    }
}

static TU_UNUSED void tu_log_fn(crest_log_level_t level, const char *msg, void *arg) {
    (void)arg;
    pthread_mutex_lock(&tu_log.mu);
    size_t need = strlen(msg) + 16;
    if (tu_log.len + need + 1 > tu_log.cap) {
        size_t cap = tu_log.cap ? tu_log.cap : 4096;
        while (cap < tu_log.len + need + 1)
            cap *= 2;
        char *n = realloc(tu_log.buf, cap);
        if (!n) {
            pthread_mutex_unlock(&tu_log.mu);
            return;
        }
        tu_log.buf = n;
        tu_log.cap = cap;
    }
    tu_log.len += (size_t)snprintf(tu_log.buf + tu_log.len, tu_log.cap - tu_log.len, "%s: %s\n",
                                   tu_level_name(level), msg);
    tu_log.lines++;
    if (level >= CREST_LOG_WARN)
        tu_log.warnings++;
    pthread_mutex_unlock(&tu_log.mu);
}

static TU_UNUSED void tu_log_clear(void) {
    pthread_mutex_lock(&tu_log.mu);
    tu_log.len = 0;
    if (tu_log.buf)
        tu_log.buf[0] = '\0';
    tu_log.lines = 0;
    tu_log.warnings = 0;
    pthread_mutex_unlock(&tu_log.mu);
}

static TU_UNUSED void tu_log_capture(void) {
    tu_log_clear();
    crest_log_set_handler(tu_log_fn, NULL);
}

/* Restore the default handler and free the buffer. */
static TU_UNUSED void tu_log_release(void) {
    crest_log_set_handler(NULL, NULL);
    pthread_mutex_lock(&tu_log.mu);
    free(tu_log.buf);
    tu_log.buf = NULL;
    tu_log.len = tu_log.cap = 0;
    tu_log.lines = tu_log.warnings = 0;
    pthread_mutex_unlock(&tu_log.mu);
}

static TU_UNUSED bool tu_log_contains(const char *needle) {
    pthread_mutex_lock(&tu_log.mu);
    bool found = tu_log.buf && strstr(tu_log.buf, needle) != NULL;
    pthread_mutex_unlock(&tu_log.mu);
    return found;
}

/* Is there one log line that contains all of a, b (and c, if not NULL)? */
static TU_UNUSED bool tu_log_line_has(const char *a, const char *b, const char *c) {
    bool found = false;
    pthread_mutex_lock(&tu_log.mu);
    for (const char *p = tu_log.buf; p && *p && !found;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, n);
        if (line && strstr(line, a) && (!b || strstr(line, b)) && (!c || strstr(line, c)))
            found = true;
        free(line);
        p = nl ? nl + 1 : p + n;
    }
    pthread_mutex_unlock(&tu_log.mu);
    return found;
}

static TU_UNUSED void tu_log_dump(void) {
    pthread_mutex_lock(&tu_log.mu);
    if (tu_log.buf && tu_log.len)
        print_message("---- captured crest log ----\n%s----------------------------\n",
                      tu_log.buf);
    pthread_mutex_unlock(&tu_log.mu);
}

/* ---- fds ---------------------------------------------------------------- */

/* Number of entries in /proc/self/fd, not counting the directory's own fd. */
static TU_UNUSED int tu_proc_fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int self = dirfd(d), n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (atoi(e->d_name) == self)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

/* Fill set[] (indexed by fd, size max) with 1 for every open fd; returns
 * the number of fds open.  fds >= max are ignored. */
static TU_UNUSED int tu_proc_fd_set(unsigned char *set, int max) {
    memset(set, 0, (size_t)max);
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int self = dirfd(d), n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd == self || fd < 0 || fd >= max)
            continue;
        set[fd] = 1;
        n++;
    }
    closedir(d);
    return n;
}

static TU_UNUSED bool tu_fd_is_open(int fd) {
    return fcntl(fd, F_GETFD) != -1;
}

static TU_UNUSED bool tu_fd_is_cloexec(int fd) {
    int fl = fcntl(fd, F_GETFD);
    return fl != -1 && (fl & FD_CLOEXEC);
}

/* ---- per-test fixture ---------------------------------------------------- */

struct tu_base {
    uint64_t reg_open; /* crest_fd_open_count() at test start */
    int proc_open;     /* entries in /proc/self/fd at test start */
};

static struct tu_base tu_base;

/* cmocka setup: hang guard, log capture, baselines. */
static TU_UNUSED int tu_setup(void **state) {
    (void)state;
    alarm(TU_ALARM_S);
    tu_log_capture();
    tu_base.reg_open = crest_fd_open_count();
    tu_base.proc_open = tu_proc_fd_count();
    return 0;
}

/* cmocka teardown: stop the guard, give the log hook back. */
static TU_UNUSED int tu_teardown(void **state) {
    (void)state;
    alarm(0);
    tu_log_release();
    return 0;
}

/* The end of every test: nothing crest or the test opened is left open. */
static TU_UNUSED void tu_assert_nothing_open(void) {
    uint64_t reg = crest_fd_open_count();
    int proc = tu_proc_fd_count();
    if (reg != tu_base.reg_open || proc != tu_base.proc_open) {
        tu_log_dump();
        crest_fd_report(stderr);
    }
    assert_int_equal(reg, tu_base.reg_open);
    assert_int_equal(proc, tu_base.proc_open);
}

/* Destroy the loop (it must report itself clean) and check nothing is open. */
static TU_UNUSED void tu_destroy_loop(crest_loop_t *loop) {
    int rc = crest_loop_destroy(loop);
    if (rc != 0)
        tu_log_dump();
    assert_int_equal(rc, 0);
    tu_assert_nothing_open();
}

#define tu_test(f) cmocka_unit_test_setup_teardown(f, tu_setup, tu_teardown)

/* ---- data: scale, a checkable byte stream, a hash ------------------------ */

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* How much to divide big transfers by: CREST_TEST_SCALE, else
 * under_valgrind when running under valgrind, else 1 (native runs move
 * the full amounts). */
static TU_UNUSED unsigned tu_scale(unsigned under_valgrind) {
    const char *s = getenv("CREST_TEST_SCALE");
    if (s && *s) {
        long v = strtol(s, NULL, 10);
        if (v >= 1)
            return (unsigned)v;
    }
    return RUNNING_ON_VALGRIND ? under_valgrind : 1;
}

static TU_UNUSED uint64_t tu_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The byte at stream offset off is byte (off % 8) of tu_mix64(off / 8):
 * every position has its own value, so a lost, duplicated or reordered
 * piece shows. */
static TU_UNUSED void tu_pattern(uint8_t *dst, uint64_t off, size_t len) {
    while (len > 0) {
        uint64_t w = tu_mix64(off / 8);
        unsigned b = (unsigned)(off % 8);
        size_t n = 8 - b;
        if (n > len)
            n = len;
        for (size_t i = 0; i < n; i++)
            dst[i] = (uint8_t)(w >> (8 * (b + i)));
        dst += n;
        off += n;
        len -= n;
    }
}

static TU_UNUSED uint64_t tu_fnv1a(uint64_t h, const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---- misc ------------------------------------------------------------- */

static TU_UNUSED void tu_sleep_ms(unsigned ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static TU_UNUSED uint64_t tu_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static TU_UNUSED crest_loop_t *tu_loop(void) {
    crest_loop_t *loop = NULL;
    assert_int_equal(crest_loop_create(&loop), 0);
    assert_non_null(loop);
    return loop;
}

/* Run non-blocking iterations until *flag becomes true, at most max times.
 * Returns the number of iterations run. */
static TU_UNUSED int tu_spin_until(crest_loop_t *loop, const volatile bool *flag, int max) {
    int i = 0;
    while (!*flag && i < max) {
        assert_true(crest_loop_run_once(loop, 0) >= 0);
        i++;
    }
    return i;
}

/* Like tu_spin_until, but each iteration may block up to timeout_ms (-1:
 * until the next timer or event; only with something bound to happen). */
static TU_UNUSED int tu_run_until(crest_loop_t *loop, const volatile bool *flag, int max,
                                  int timeout_ms) {
    int i = 0;
    while (!*flag && i < max) {
        assert_true(crest_loop_run_once(loop, timeout_ms) >= 0);
        i++;
    }
    return i;
}

/* A watchdog for calls that must not block: if not disarmed within ms, it
 * wakes the loop (crest_loop_wake is thread-safe) and records that it had
 * to.  Turns "blocks forever" into an assertion failure instead of a hang.
 * The limit is a safety net, not a timing threshold: pick it far above what
 * a correct call could take. */
struct tu_watchdog {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    crest_loop_t *loop;
    unsigned ms;
    bool disarmed;
    bool fired;
};

static TU_UNUSED void *tu_watchdog_main(void *arg) {
    struct tu_watchdog *w = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += w->ms / 1000;
    until.tv_nsec += (long)(w->ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->disarmed) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT && !w->disarmed) {
            w->fired = true;
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (w->fired)
        crest_loop_wake(w->loop);
    return NULL;
}

static TU_UNUSED void tu_watchdog_arm(struct tu_watchdog *w, crest_loop_t *loop, unsigned ms) {
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->ms = ms;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    assert_int_equal(pthread_create(&w->th, NULL, tu_watchdog_main, w), 0);
}

/* Returns true if the watchdog had to wake the loop. */
static TU_UNUSED bool tu_watchdog_disarm(struct tu_watchdog *w) {
    pthread_mutex_lock(&w->mu);
    w->disarmed = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    return w->fired;
}

/* Run n non-blocking iterations. */
static TU_UNUSED void tu_spin(crest_loop_t *loop, int n) {
    for (int i = 0; i < n; i++)
        assert_true(crest_loop_run_once(loop, 0) >= 0);
}

/* ---- running a loop until something happens ------------------------------ */

/* Iterations of at most 10 ms each: about 30 s of nothing happening. */
#define RUN_MAX_ITER 3000

#define RUN_UNTIL(loop, cond)                                                  \
    do {                                                                       \
        int ru_i_ = 0;                                                         \
        while (!(cond) && ru_i_++ < RUN_MAX_ITER)                              \
            assert_true(crest_loop_run_once((loop), 10) >= 0);                 \
        if (!(cond)) {                                                         \
            tu_log_dump();                                                     \
            fail_msg("%s:%d: still false: %s", __FILE__, __LINE__, #cond);     \
        }                                                                      \
    } while (0)

/* A connection test ends here: no connection open, no buffer byte in use,
 * then the loop destroyed with nothing left open. */
static TU_UNUSED void tu_finish_conns(crest_loop_t *loop) {
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.active, 0);
    assert_int_equal(st.opened, st.closed);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(loop, &bs);
    assert_int_equal(bs.in_use, 0);
    tu_destroy_loop(loop);
}

/* ---- raw client sockets (not crest's: the test drives them) -------------- */

/* A client connected to addr, nonblocking, TCP_NODELAY (not for unix:),
 * with SO_RCVBUF set first if rcvbuf > 0. */
static TU_UNUSED int tu_raw_connect(const char *addr, int rcvbuf) {
    crest_addr_t a;
    assert_int_equal(crest_addr_parse(addr, &a), 0);
    int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    /* The kernel completes the handshake without an accept: a blocking
     * connect on the loop's own thread is fine. */
    assert_int_equal(connect(fd, (const struct sockaddr *)&a.ss, a.len), 0);
    if (a.ss.ss_family != AF_UNIX) {
        int one = 1;
        assert_int_equal(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
    }
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    return fd;
}

/* Receive until len bytes, EOF or an error, running the loop meanwhile.
 * Returns the bytes received; *end is 0 (got len), 1 (EOF) or -errno. */
static TU_UNUSED size_t tu_raw_recv(crest_loop_t *loop, int fd, void *buf, size_t len, int *end) {
    uint8_t *p = buf;
    size_t got = 0;
    int idle = 0;
    *end = 0;
    while (got < len) {
        ssize_t n = recv(fd, p + got, len - got, 0);
        if (n > 0) {
            got += (size_t)n;
            idle = 0;
            continue;
        }
        if (n == 0) {
            *end = 1;
            return got;
        }
        if (errno != EAGAIN && errno != EINTR) {
            *end = -errno;
            return got;
        }
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        if (++idle >= RUN_MAX_ITER) {
            tu_log_dump();
            fail_msg("tu_raw_recv: %zu of %zu bytes, then nothing", got, len);
        }
    }
    return got;
}

/* Send all of buf on a nonblocking client socket, running the loop while
 * the socket is full (the server must read for it to drain). */
static TU_UNUSED void tu_raw_send_all(crest_loop_t *loop, int fd, const void *buf, size_t len) {
    const uint8_t *p = buf;
    int idle = 0;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            idle = 0;
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        assert_true(++idle < RUN_MAX_ITER);
    }
}

#endif
