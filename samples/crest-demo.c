/* crest-demo: exercises the reactor and prints the fd report.
 *
 * A socketpair ping-pongs a counter 100,000 times through two edge-triggered
 * io watchers; a repeating timer prints progress; a second thread posts a
 * callback into the loop; SIGINT/SIGTERM stop it early.  At the end it
 * prints the loop statistics and crest's fd report, and exits non-zero if
 * any fd leaked. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crest/crest.h>

#define ROUNDS 100000

struct demo {
    crest_loop_t *loop;
    int fds[2];
    crest_io_t *io[2];
    crest_timer_t *tick;
    crest_signal_t *sigint, *sigterm;
    uint64_t exchanged;
    uint64_t started_ms;
    int posted;
};

static void finish(struct demo *d) {
    crest_io_stop(d->io[0]);
    crest_io_stop(d->io[1]);
    d->io[0] = d->io[1] = NULL;
    crest_timer_stop(d->tick);
    crest_signal_stop(d->sigint);
    crest_signal_stop(d->sigterm);
    d->sigint = d->sigterm = NULL;
}

/* Each side reads the counter it was sent and answers with counter + 1. */
static void on_readable(crest_io_t *io, unsigned events, void *arg) {
    struct demo *d = arg;
    if (!(events & CREST_IO_READABLE))
        return;
    uint64_t value;
    ssize_t n;
    while ((n = read(crest_io_fd(io), &value, sizeof value)) == (ssize_t)sizeof value) {
        d->exchanged++;
        if (value >= ROUNDS) {
            finish(d);
            return;
        }
        value++;
        if (write(crest_io_fd(io), &value, sizeof value) != (ssize_t)sizeof value) {
            fprintf(stderr, "crest-demo: write: %s\n", crest_strerror(-errno));
            finish(d);
            return;
        }
    }
}

static void on_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct demo *d = arg;
    printf("  %" PRIu64 " messages after %" PRIu64 " ms\n", d->exchanged,
           crest_loop_now(d->loop) - d->started_ms);
}

static void on_signal(crest_signal_t *s, int signo, void *arg) {
    (void)s;
    printf("  signal %d: stopping\n", signo);
    finish(arg);
}

static void on_posted(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct demo *d = arg;
    d->posted++;
}

static void *poster(void *arg) {
    struct demo *d = arg;
    crest_loop_post(d->loop, on_posted, d);
    return NULL;
}

static int check(int rc, const char *what) {
    if (rc < 0) {
        fprintf(stderr, "crest-demo: %s: %s\n", what, crest_strerror(rc));
        exit(1);
    }
    return rc;
}

int main(void) {
    struct demo d = {0};
    printf("crest %s demo: %d ping-pong rounds over a socketpair\n", crest_version(), ROUNDS);
    check(crest_loop_create(&d.loop), "loop");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, d.fds) < 0)
        check(-errno, "socketpair");
    check(crest_fd_register_at(d.fds[0], CREST_FD_USER, "demo socketpair[0]"), "register");
    check(crest_fd_register_at(d.fds[1], CREST_FD_USER, "demo socketpair[1]"), "register");
    for (int i = 0; i < 2; i++)
        check(crest_io_start(d.loop, d.fds[i], CREST_IO_READABLE, on_readable, &d, &d.io[i]),
              "io");
    check(crest_timer_create(d.loop, on_tick, &d, &d.tick), "timer");
    check(crest_timer_start(d.tick, 100, 100), "timer");
    check(crest_signal_start(d.loop, SIGINT, on_signal, &d, &d.sigint), "signal");
    check(crest_signal_start(d.loop, SIGTERM, on_signal, &d, &d.sigterm), "signal");

    pthread_t thread;
    pthread_create(&thread, NULL, poster, &d);

    d.started_ms = crest_loop_now(d.loop);
    uint64_t first = 0;
    if (write(d.fds[0], &first, sizeof first) != (ssize_t)sizeof first)
        check(-errno, "write");
    check(crest_loop_run(d.loop), "run");
    pthread_join(thread, NULL);
    /* The post may land after the exchange finished: one more pass. */
    while (!d.posted)
        crest_loop_run_once(d.loop, 10);

    crest_loop_stats_t st;
    crest_loop_get_stats(d.loop, &st);
    uint64_t ms = crest_loop_now(d.loop) - d.started_ms;
    printf("exchanged %" PRIu64 " messages in %" PRIu64 " ms; %d cross-thread post\n", d.exchanged,
           ms, d.posted);
    printf("loop: %" PRIu64 " iterations, %" PRIu64 " callbacks, %" PRIu64 " io events, %" PRIu64
           " timers fired, %.1f ms waiting, %.1f ms running\n",
           st.iterations, st.callbacks, st.io_events, st.timers_fired, st.wait_ns / 1e6,
           st.run_ns / 1e6);

    crest_timer_destroy(d.tick);
    crest_fd_close(d.fds[0]);
    crest_fd_close(d.fds[1]);
    int leaked_by_loop = crest_loop_destroy(d.loop);
    int leaked = crest_fd_report(stdout);
    return leaked || leaked_by_loop ? 1 : 0;
}
