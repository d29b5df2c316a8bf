/* Tests for io watchers (include/crest/io.h) over real pipes, socketpairs
 * and eventfds. */
#include "crest_test.h"

#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* ---- helpers ------------------------------------------------------------ */

/* A watcher that records what it is called with. */
struct w {
    crest_loop_t *loop;
    crest_io_t *io;
    int fd;
    int calls;
    unsigned last;      /* events of the last call */
    unsigned all;       /* union of every call's events */
    uint64_t last_iter; /* the test's iteration counter at the last call */
    /* optional behaviour */
    bool stop_self;
    int feed_self_times; /* feed READABLE to itself this many times */
};

static uint64_t iter; /* bumped by the tests between run_once calls */

static void w_cb(crest_io_t *io, unsigned events, void *arg) {
    struct w *w = arg;
    assert_ptr_equal(io, w->io);
    assert_int_equal(crest_io_fd(io), w->fd);
    w->calls++;
    w->last = events;
    w->all |= events;
    w->last_iter = iter;
    if (w->feed_self_times > 0) {
        w->feed_self_times--;
        crest_io_feed(io, CREST_IO_READABLE);
    }
    if (w->stop_self) {
        crest_io_stop(io);
        /* The watcher is released after the dispatch, not now: still
         * readable here (valgrind would see a use after free). */
        assert_int_equal(crest_io_fd(io), w->fd);
        assert_ptr_equal(crest_io_loop(io), w->loop);
        w->io = NULL;
    }
}

static void w_start(crest_loop_t *loop, struct w *w, int fd, unsigned events) {
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->fd = fd;
    assert_int_equal(crest_io_start(loop, fd, events, w_cb, w, &w->io), 0);
    assert_non_null(w->io);
}

static void w_stop(struct w *w) {
    if (w->io)
        crest_io_stop(w->io);
    w->io = NULL;
}

static void spin(crest_loop_t *loop, int n) {
    for (int i = 0; i < n; i++) {
        iter++;
        assert_true(crest_loop_run_once(loop, 0) >= 0);
    }
}

/* Spin until w has been called at least `calls` times (at most max
 * iterations). */
static void spin_calls(crest_loop_t *loop, const struct w *w, int calls, int max) {
    for (int i = 0; i < max && w->calls < calls; i++) {
        iter++;
        assert_true(crest_loop_run_once(loop, 0) >= 0);
    }
}

static void sockpair(int sv[2]) {
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

static void mkpipe(int p[2]) {
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
}

static void put1(int fd) {
    assert_int_equal(write(fd, "x", 1), 1);
}

static size_t drain(int fd) {
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        total += (size_t)n;
    return total;
}

/* ---- tests -------------------------------------------------------------- */

static void test_start_accessors_and_errors(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    assert_int_equal(crest_io_fd(a.io), sv[0]);
    assert_int_equal(crest_io_events(a.io), CREST_IO_READABLE);
    assert_ptr_equal(crest_io_loop(a.io), loop);

    /* Same fd twice on one loop: -EEXIST, the first watcher unharmed. */
    struct w b = {0};
    crest_io_t *io2 = NULL;
    assert_int_equal(crest_io_start(loop, sv[0], CREST_IO_WRITABLE, w_cb, &b, &io2), -EEXIST);
    assert_int_equal(crest_io_start(loop, -1, CREST_IO_READABLE, w_cb, &b, &io2), -EINVAL);
    assert_int_equal(crest_io_start(loop, sv[1], 1u << 30 /* EPOLLONESHOT */, w_cb, &b, &io2),
                     -EINVAL);
    /* A number that is not an open fd: an error, nothing kept. */
    int closed = dup(sv[1]);
    assert_true(closed >= 0);
    close(closed);
    assert_true(crest_io_start(loop, closed, CREST_IO_READABLE, w_cb, &b, &io2) < 0);

    put1(sv[1]);
    spin(loop, 3);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 0);

    /* Only the first watcher keeps the loop alive. */
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    w_stop(&a);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);

    /* Stopped: the fd can be watched again. */
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    w_stop(&a);
    spin(loop, 1);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

/* Edge-triggered: one callback per edge, even when the data is not read. */
static void test_readable_once_per_edge_socket(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    spin(loop, 3);
    assert_int_equal(a.calls, 0);

    put1(sv[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_READABLE);
    assert_int_equal(a.last & (CREST_IO_HUP | CREST_IO_RDHUP | CREST_IO_ERR), 0);

    /* More data: a new edge, though nothing was read. */
    put1(sv[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 2);

    /* Read it all: no callback for that. */
    assert_int_equal(drain(sv[0]), 2);
    spin(loop, 3);
    assert_int_equal(a.calls, 2);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.io_events >= 2);
    w_stop(&a);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

static void test_readable_once_per_edge_pipe(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int p[2];
    mkpipe(p);
    struct w a;
    w_start(loop, &a, p[0], CREST_IO_READABLE);
    spin(loop, 2);
    assert_int_equal(a.calls, 0);
    put1(p[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_READABLE);
    /* Drained, then new data: a new edge. */
    assert_int_equal(drain(p[0]), 1);
    put1(p[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 2);
    w_stop(&a);
    close(p[0]);
    close(p[1]);
    tu_destroy_loop(loop);
}

static void test_readable_once_per_edge_eventfd(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int e = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(e >= 0);
    struct w a;
    w_start(loop, &a, e, CREST_IO_READABLE);
    spin(loop, 2);
    assert_int_equal(a.calls, 0);
    assert_int_equal(eventfd_write(e, 1), 0);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_READABLE);
    assert_int_equal(eventfd_write(e, 1), 0);
    spin(loop, 5);
    assert_int_equal(a.calls, 2);
    eventfd_t v;
    assert_int_equal(eventfd_read(e, &v), 0);
    assert_int_equal(v, 2);
    spin(loop, 2);
    assert_int_equal(a.calls, 2);
    w_stop(&a);
    close(e);
    tu_destroy_loop(loop);
}

static void test_writable_fires(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_WRITABLE);
    spin(loop, 5);
    assert_int_equal(a.calls, 1); /* the edge at registration, once */
    assert_true(a.last & CREST_IO_WRITABLE);
    assert_int_equal(a.last & CREST_IO_READABLE, 0);

    /* Fill the socket until EAGAIN, then free the space: a new edge. */
    static char buf[65536];
    memset(buf, 'y', sizeof buf);
    size_t sent = 0;
    for (;;) {
        ssize_t n = write(sv[0], buf, sizeof buf);
        if (n < 0) {
            assert_int_equal(errno, EAGAIN);
            break;
        }
        sent += (size_t)n;
    }
    assert_true(sent > 0);
    spin(loop, 2);
    assert_int_equal(a.calls, 1);
    assert_int_equal(drain(sv[1]), sent);
    spin_calls(loop, &a, 2, 10);
    assert_int_equal(a.calls, 2);
    assert_true(a.last & CREST_IO_WRITABLE);
    w_stop(&a);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

static void test_modify_interest(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    spin(loop, 3);
    assert_int_equal(a.calls, 0); /* writable, but not asked */

    assert_int_equal(crest_io_modify(a.io, CREST_IO_READABLE | CREST_IO_WRITABLE), 0);
    assert_int_equal(crest_io_events(a.io), CREST_IO_READABLE | CREST_IO_WRITABLE);
    spin(loop, 5);
    assert_int_equal(a.calls, 1); /* the pending edge, reported once */
    assert_true(a.last & CREST_IO_WRITABLE);

    assert_int_equal(crest_io_modify(a.io, CREST_IO_READABLE), 0);
    assert_int_equal(crest_io_events(a.io), CREST_IO_READABLE);
    put1(sv[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 2);
    assert_true(a.last & CREST_IO_READABLE);
    assert_int_equal(a.last & CREST_IO_WRITABLE, 0);

    /* Drop READABLE: new data is not reported. */
    assert_int_equal(crest_io_modify(a.io, CREST_IO_WRITABLE), 0);
    spin(loop, 3); /* WRITABLE re-added: its pending edge may come */
    int calls = a.calls;
    put1(sv[1]);
    spin(loop, 3);
    assert_int_equal(a.calls, calls);
    assert_true(crest_io_modify(a.io, 1u << 30) < 0);

    w_stop(&a);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

/* Peer writes, then shuts down writing: one event, READABLE|RDHUP, and the
 * data is still there to read. */
static void test_rdhup_with_data(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    assert_int_equal(write(sv[1], "hello", 5), 5);
    assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_READABLE);
    assert_true(a.last & CREST_IO_RDHUP);
    assert_int_equal(a.last & CREST_IO_HUP, 0);
    char buf[16];
    assert_int_equal(read(sv[0], buf, sizeof buf), 5);
    assert_int_equal(read(sv[0], buf, sizeof buf), 0);
    w_stop(&a);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

static void test_rdhup_alone(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    spin(loop, 2);
    assert_int_equal(a.calls, 0);
    assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_RDHUP); /* always requested */
    assert_int_equal(a.last & CREST_IO_HUP, 0);
    w_stop(&a);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

static void test_hup_on_peer_close(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2], p[2];
    sockpair(sv);
    mkpipe(p);
    struct w a, b;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    /* Only WRITABLE asked (a pipe's read end never is): HUP is reported
     * whatever the interest. */
    w_start(loop, &b, p[0], CREST_IO_WRITABLE);
    spin(loop, 2);
    assert_int_equal(a.calls + b.calls, 0);
    close(sv[1]);
    close(p[1]);
    spin(loop, 5);
    assert_int_equal(a.calls, 1);
    assert_true(a.last & CREST_IO_HUP);
    assert_true(a.last & CREST_IO_RDHUP);
    assert_int_equal(b.calls, 1);
    assert_true(b.last & CREST_IO_HUP);
    w_stop(&a);
    w_stop(&b);
    close(sv[0]);
    close(p[0]);
    tu_destroy_loop(loop);
}

static void test_feed_next_iteration_and_merge(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int p[2];
    mkpipe(p);
    struct w a;
    /* A pipe's read end is never writable and has no data: the kernel has
     * nothing to say, every call below comes from crest_io_feed. */
    w_start(loop, &a, p[0], CREST_IO_READABLE | CREST_IO_WRITABLE);
    spin(loop, 2);
    assert_int_equal(a.calls, 0);

    crest_io_feed(a.io, CREST_IO_READABLE);
    crest_io_feed(a.io, CREST_IO_WRITABLE);
    assert_int_equal(a.calls, 0); /* not synchronous */
    spin(loop, 1);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.last, CREST_IO_READABLE | CREST_IO_WRITABLE); /* merged */
    spin(loop, 3);
    assert_int_equal(a.calls, 1);

    /* Fed from its own callback: delivered on the next iteration, not this
     * one. */
    a.feed_self_times = 1;
    crest_io_feed(a.io, CREST_IO_READABLE);
    iter = 100;
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    assert_int_equal(a.calls, 2);
    assert_int_equal(a.last_iter, 100);
    iter = 101;
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    assert_int_equal(a.calls, 3);
    assert_int_equal(a.last_iter, 101);
    assert_int_equal(a.last, CREST_IO_READABLE);

    /* The loop does not block while fed events are pending (the watcher is
     * the only thing alive, and the pipe stays silent: a loop that blocks
     * would wait forever; the watchdog wakes it and the test fails). */
    crest_io_feed(a.io, CREST_IO_WRITABLE);
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 3000);
    assert_int_equal(crest_loop_run_once(loop, -1), 1);
    bool blocked = tu_watchdog_disarm(&wd);
    assert_int_equal(a.calls, 4);

    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.fed_events >= 3);

    /* Fed, then stopped before delivery: dropped (and freed). */
    crest_io_feed(a.io, CREST_IO_READABLE);
    w_stop(&a);
    spin(loop, 2);
    assert_int_equal(a.calls, 4);

    close(p[0]);
    close(p[1]);
    tu_destroy_loop(loop);
    if (blocked)
        fail_msg("run_once(-1) with a fed event pending blocked (until the watchdog woke it "
                 "3 s later)");
}

/* Events fed while the ready list is being served wait for the next
 * iteration, even when the same callback also took another watcher off the
 * ready list.  Two watchers are fed; whichever is served first stops the
 * other and feeds a third. */
static struct {
    struct w *pair[2];
    struct w *target;
    bool done;
} feedx;

static void feeder_cb(crest_io_t *io, unsigned events, void *arg) {
    w_cb(io, events, arg);
    if (feedx.done)
        return;
    feedx.done = true;
    w_stop(arg == feedx.pair[0] ? feedx.pair[1] : feedx.pair[0]);
    crest_io_feed(feedx.target->io, CREST_IO_READABLE);
}

static void test_feed_during_ready_list_waits(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int p[3][2];
    struct w ws[3];
    for (int i = 0; i < 3; i++) {
        mkpipe(p[i]);
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].loop = loop;
        ws[i].fd = p[i][0];
        assert_int_equal(crest_io_start(loop, p[i][0], CREST_IO_READABLE, i < 2 ? feeder_cb : w_cb,
                                        &ws[i], &ws[i].io),
                         0);
    }
    memset(&feedx, 0, sizeof feedx);
    feedx.pair[0] = &ws[0];
    feedx.pair[1] = &ws[1];
    feedx.target = &ws[2];
    crest_io_feed(ws[0].io, CREST_IO_READABLE);
    crest_io_feed(ws[1].io, CREST_IO_READABLE);
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    int pair_calls = ws[0].calls + ws[1].calls;
    int target_calls_first = ws[2].calls;
    assert_int_equal(crest_loop_run_once(loop, 0), 1);
    int target_calls_second = ws[2].calls;
    for (int i = 0; i < 3; i++) {
        w_stop(&ws[i]);
        close(p[i][0]);
        close(p[i][1]);
    }
    tu_destroy_loop(loop);
    assert_int_equal(pair_calls, 1); /* the other was stopped before its turn */
    assert_int_equal(target_calls_first, 0); /* fed during this iteration: the next one */
    assert_int_equal(target_calls_second, 1);
}

static void test_stop_from_own_callback(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    struct w a;
    w_start(loop, &a, sv[0], CREST_IO_READABLE);
    a.stop_self = true;
    put1(sv[1]);
    /* The callback stops its own watcher; with nothing else alive, run
     * returns. */
    assert_int_equal(crest_loop_run(loop), 0);
    assert_int_equal(a.calls, 1);
    assert_null(a.io);
    put1(sv[1]);
    spin(loop, 3);
    assert_int_equal(a.calls, 1);
    assert_int_equal(crest_loop_run_once(loop, 0), 0);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

/* Two watchers readable in the same batch: whichever runs first stops the
 * other, whose event must then be dropped. */
struct pair_side {
    struct pair_side *other;
    crest_loop_t *loop;
    crest_io_t *io;
    int fd;
    int calls;
};

static int pair_first_done;

static void pair_cb(crest_io_t *io, unsigned events, void *arg) {
    struct pair_side *me = arg;
    (void)events;
    assert_ptr_equal(io, me->io);
    me->calls++;
    if (pair_first_done)
        return;
    pair_first_done = 1;
    crest_io_stop(me->other->io);
    me->other->io = NULL;
}

static void test_stop_other_in_same_batch(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int a[2], b[2];
    sockpair(a);
    sockpair(b);
    struct pair_side sa = {.loop = loop, .fd = a[0]}, sb = {.loop = loop, .fd = b[0]};
    sa.other = &sb;
    sb.other = &sa;
    pair_first_done = 0;
    assert_int_equal(crest_io_start(loop, a[0], CREST_IO_READABLE, pair_cb, &sa, &sa.io), 0);
    assert_int_equal(crest_io_start(loop, b[0], CREST_IO_READABLE, pair_cb, &sb, &sb.io), 0);
    put1(a[1]);
    put1(b[1]);
    spin(loop, 3);
    assert_int_equal(sa.calls + sb.calls, 1);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.stale_events >= 1);
    struct pair_side *alive = sa.io ? &sa : &sb;
    assert_int_equal(alive->calls, 1);
    crest_io_stop(alive->io);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    tu_destroy_loop(loop);
}

/* THE STALE EVENT TEST.  A and B are readable in the same epoll batch.  The
 * callback that runs first stops the other watcher, closes its fd, makes a
 * new fd with the same number (an eventfd, not readable) and starts a new
 * watcher on it for READABLE.  The old event left in the batch must not
 * reach the new watcher. */
struct stale_side {
    struct stale_side *other;
    crest_loop_t *loop;
    crest_io_t *io;
    int fd;
    int peer;
    int calls;
};

static struct {
    int done;
    int reused_fd;
    bool lowest_reused; /* the kernel gave the same number by itself */
    int start_rc;
    struct w fresh;     /* the new watcher on the reused number */
} stale;

static void stale_cb(crest_io_t *io, unsigned events, void *arg) {
    struct stale_side *me = arg;
    (void)events;
    assert_ptr_equal(io, me->io);
    me->calls++;
    if (stale.done)
        return;
    stale.done = 1;
    struct stale_side *victim = me->other;
    int num = victim->fd;
    crest_io_stop(victim->io);
    victim->io = NULL;
    assert_int_equal(close(num), 0);
    int e = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(e >= 0);
    stale.lowest_reused = e == num;
    if (e != num) {
        assert_int_equal(dup3(e, num, O_CLOEXEC), num);
        close(e);
    }
    stale.reused_fd = num;
    memset(&stale.fresh, 0, sizeof stale.fresh);
    stale.fresh.loop = me->loop;
    stale.fresh.fd = num;
    stale.start_rc =
        crest_io_start(me->loop, num, CREST_IO_READABLE, w_cb, &stale.fresh, &stale.fresh.io);
}

static void test_stale_event_after_fd_reuse(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    int a[2], b[2];
    sockpair(a);
    sockpair(b);
    struct stale_side sa = {.loop = loop, .fd = a[0], .peer = a[1]};
    struct stale_side sb = {.loop = loop, .fd = b[0], .peer = b[1]};
    sa.other = &sb;
    sb.other = &sa;
    memset(&stale, 0, sizeof stale);
    stale.start_rc = 1;
    assert_int_equal(crest_io_start(loop, a[0], CREST_IO_READABLE, stale_cb, &sa, &sa.io), 0);
    assert_int_equal(crest_io_start(loop, b[0], CREST_IO_READABLE, stale_cb, &sb, &sb.io), 0);
    spin(loop, 2);
    assert_int_equal(sa.calls + sb.calls, 0);
    crest_loop_stats_t st0, st1;
    crest_loop_get_stats(loop, &st0);

    /* Both readable before the loop looks: one epoll_wait returns both. */
    put1(a[1]);
    put1(b[1]);
    spin(loop, 1);
    assert_int_equal(stale.done, 1);
    assert_int_equal(stale.start_rc, 0);
    assert_non_null(stale.fresh.io);
    /* The number really was reused, by an eventfd. */
    char link[64], path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", stale.reused_fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    assert_true(n > 0);
    link[n] = '\0';
    assert_non_null(strstr(link, "eventfd"));
    if (!stale.lowest_reused)
        print_message("note: eventfd() did not reuse fd %d by itself; used dup3\n",
                      stale.reused_fd);

    crest_loop_get_stats(loop, &st1);
    assert_int_equal(sa.calls + sb.calls, 1);  /* the victim's callback did not run */
    assert_int_equal(stale.fresh.calls, 0);    /* the old event did not reach the new watcher */
    assert_true(st1.stale_events >= st0.stale_events + 1);

    spin(loop, 3);
    assert_int_equal(sa.calls + sb.calls, 1);
    assert_int_equal(stale.fresh.calls, 0);

    /* The new watcher works: it fires when its eventfd becomes readable. */
    assert_int_equal(eventfd_write(stale.reused_fd, 1), 0);
    spin(loop, 3);
    assert_int_equal(stale.fresh.calls, 1);
    assert_true(stale.fresh.last & CREST_IO_READABLE);

    struct stale_side *first = sa.io ? &sa : &sb;
    struct stale_side *victim = first->other;
    crest_io_stop(first->io);
    crest_io_stop(stale.fresh.io);
    close(first->fd);
    close(first->peer);
    close(victim->peer);
    close(stale.reused_fd);
    tu_destroy_loop(loop);
}

/* More ready watchers than one epoll_wait batch is likely to hold: each is
 * called exactly once. */
static void test_many_watchers(void **state) {
    (void)state;
    enum { N = 300 };
    crest_loop_t *loop = tu_loop();
    static int sv[N][2];
    static struct w ws[N];
    for (int i = 0; i < N; i++) {
        sockpair(sv[i]);
        w_start(loop, &ws[i], sv[i][0], CREST_IO_READABLE);
    }
    for (int i = 0; i < N; i++)
        put1(sv[i][1]);
    spin(loop, 10);
    for (int i = 0; i < N; i++)
        assert_int_equal(ws[i].calls, 1);
    crest_loop_stats_t st;
    crest_loop_get_stats(loop, &st);
    assert_true(st.io_events >= N);
    for (int i = 0; i < N; i++) {
        w_stop(&ws[i]);
        close(sv[i][0]);
        close(sv[i][1]);
    }
    tu_destroy_loop(loop);
}

/* The fd-indexed table grows: a watcher on a high fd number works. */
static void test_high_fd_number(void **state) {
    (void)state;
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    int high = rl.rlim_cur > 3001 ? 3000 : (int)rl.rlim_cur - 1;
    crest_loop_t *loop = tu_loop();
    int sv[2];
    sockpair(sv);
    if (tu_fd_is_open(high))
        skip();
    assert_int_equal(dup3(sv[0], high, O_CLOEXEC), high);
    struct w a;
    w_start(loop, &a, high, CREST_IO_READABLE);
    put1(sv[1]);
    spin(loop, 3);
    assert_int_equal(a.calls, 1);
    w_stop(&a);
    close(high);
    close(sv[0]);
    close(sv[1]);
    tu_destroy_loop(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_start_accessors_and_errors),
        tu_test(test_readable_once_per_edge_socket),
        tu_test(test_readable_once_per_edge_pipe),
        tu_test(test_readable_once_per_edge_eventfd),
        tu_test(test_writable_fires),
        tu_test(test_modify_interest),
        tu_test(test_rdhup_with_data),
        tu_test(test_rdhup_alone),
        tu_test(test_hup_on_peer_close),
        tu_test(test_feed_next_iteration_and_merge),
        tu_test(test_feed_during_ready_list_waits),
        tu_test(test_stop_from_own_callback),
        tu_test(test_stop_other_in_same_batch),
        tu_test(test_stale_event_after_fd_reuse),
        tu_test(test_many_watchers),
        tu_test(test_high_fd_number),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
