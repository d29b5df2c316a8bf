/* Fault injection for the connection layer: the syscalls crest makes on the
 * byte path fail, fall short or get interrupted, and every test checks that
 * no byte is lost or duplicated, no fd leaks, and the close reason is right.
 *
 * Linked with -Wl,--wrap=read,--wrap=sendmsg,--wrap=send,--wrap=accept4,
 * --wrap=epoll_wait,--wrap=close against a static copy of the library (the
 * wrap does not reach calls inside a shared library).  crest calls read()
 * for input, send() or sendmsg() for every socket write (one buffer or
 * several), accept4() in the listener,
 * epoll_wait() once per iteration and close() for every fd it closes.
 * crest__fd_register() (the registry, called by the listener and connect
 * code from other objects of the archive) is wrapped too, to make it fail
 * as it does when out of memory.
 *
 * Each __wrap_X consults the test's fault plan and otherwise calls
 * __real_X.  A plan entry applies to one fd, or to every fd the test marked
 * (its connections), on every Nth eligible call, a number of times.
 *
 * Edge-triggered readiness: crest takes a short read for "drained" and a
 * short write or EAGAIN for "socket full", and waits for the next edge (as
 * documented in conn.h).  A real socket gives that edge when more data
 * arrives or space frees; an injected short read or EAGAIN has no such
 * cause, so the harness supplies it: the next epoll_wait on that loop
 * returns an extra EPOLLIN (or EPOLLOUT) event for the fd, with the tag
 * crest registered it under (learned from the fd's earlier real events).
 * Faults that would need an edge are injected only on fds whose tag is
 * known. */
#include "crest_test.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "epoll.h" /* crest__tag_fd(): how crest tags its epoll events */


/* ---- the fault plan ------------------------------------------------------ */

#define MAX_FD 4096
#define PLAN_SLOTS 3

struct fault {
    bool on;
    int fd;          /* the fd it applies to; -1: every marked fd (epoll_wait: any) */
    int err;         /* fail with this errno; 0: no error */
    size_t limit;    /* > 0: at most this many bytes per call */
    unsigned every;  /* only every Nth eligible call (0 or 1: each) */
    long count;      /* calls left to fault; < 0: no limit */
    unsigned long seen, injected;
};

struct plan {
    struct fault read[PLAN_SLOTS], sendmsg[PLAN_SLOTS], accept4[PLAN_SLOTS],
        epoll_wait[PLAN_SLOTS], close[PLAN_SLOTS];
    bool marked[MAX_FD];
    /* edges owed to crest after an injected short read/write or EAGAIN */
    uint64_t tag[MAX_FD];
    int tag_ep[MAX_FD];
    bool tag_known[MAX_FD];
    unsigned owed[MAX_FD];
    int owed_list[MAX_FD];
    int n_owed;
    unsigned long synthesized;
    unsigned long closes[MAX_FD];
    unsigned long accept_calls;
    /* crest__fd_register: fail the next reg_count registrations of
     * reg_kind with reg_err; the fds it refused */
    int reg_kind, reg_err;
    long reg_count;
    int reg_refused[8];
    int n_reg_refused;
};

static struct plan plan;
static uint64_t base_bad_closes;

static void plan_reset(void) {
    memset(&plan, 0, sizeof plan);
}

/* Every test starts here: no faults, and the registry's count of bad
 * closes (double closes, closes of unknown fds) to compare at the end. */
/* A loop whose latency insight is off: its 1 s sampler opens and closes
 * files (/proc/thread-self/schedstat, /proc/net/netstat), which would
 * count in plan.closes[] on reused fd numbers once a test runs past a
 * second (under valgrind). */
static crest_loop_t *fault_loop(void) {
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.enabled = false;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    return loop;
}

static void fault_begin(void) {
    plan_reset();
    crest_fd_counts_t all;
    assert_int_equal(crest_fd_counts(CREST_FD_ALL, &all), 0);
    base_bad_closes = all.bad_closes;
}

static void mark_fd(int fd) {
    assert_true(fd >= 0 && fd < MAX_FD);
    plan.marked[fd] = true;
}

static struct fault *add_fault(struct fault *slots, int fd, int err, size_t limit, unsigned every,
                               long count) {
    for (int i = 0; i < PLAN_SLOTS; i++) {
        if (!slots[i].on) {
            slots[i] = (struct fault){.on = true, .fd = fd, .err = err, .limit = limit,
                                      .every = every, .count = count};
            return &slots[i];
        }
    }
    fail_msg("no free fault slot");
    return NULL;
}

static unsigned long injected(const struct fault *slots) {
    unsigned long n = 0;
    for (int i = 0; i < PLAN_SLOTS; i++)
        n += slots[i].injected;
    return n;
}

/* The first slot that faults this call, or NULL.  any_fd: the slot's fd -1
 * matches every fd (epoll_wait), else only marked fds. */
static struct fault *fault_for(struct fault *slots, int fd, bool any_fd, bool need_edge) {
    if (fd < 0 || fd >= MAX_FD)
        return NULL;
    for (int i = 0; i < PLAN_SLOTS; i++) {
        struct fault *f = &slots[i];
        if (!f->on || f->count == 0)
            continue;
        if (f->fd >= 0 ? f->fd != fd : !(any_fd || plan.marked[fd]))
            continue;
        bool edge = f->limit || f->err == EAGAIN;
        if (need_edge && edge && !plan.tag_known[fd])
            continue;
        f->seen++;
        if (f->every > 1 && f->seen % f->every != 0)
            continue;
        if (f->count > 0)
            f->count--;
        f->injected++;
        return f;
    }
    return NULL;
}

static void owe_edge(int fd, unsigned events) {
    if (!plan.owed[fd]) {
        assert_true(plan.n_owed < MAX_FD);
        plan.owed_list[plan.n_owed++] = fd;
    }
    plan.owed[fd] |= events;
}

/* ---- the wrappers ---------------------------------------------------------- */

ssize_t __real_read(int fd, void *buf, size_t count);
ssize_t __wrap_read(int fd, void *buf, size_t count);
ssize_t __real_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags);
int __real_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int __wrap_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int __real_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout);
int __wrap_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout);
int __real_close(int fd);
int __wrap_close(int fd);
int __real_crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin);
int __wrap_crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin);

int __wrap_crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin) {
    if (plan.reg_count > 0 && kind == (crest_fd_kind_t)plan.reg_kind) {
        plan.reg_count--;
        if (plan.n_reg_refused < 8)
            plan.reg_refused[plan.n_reg_refused++] = fd;
        return -plan.reg_err;
    }
    return __real_crest__fd_register(fd, kind, owner, origin);
}

static void fail_registrations(crest_fd_kind_t kind, int err, long count) {
    plan.reg_kind = (int)kind;
    plan.reg_err = err;
    plan.reg_count = count;
    plan.n_reg_refused = 0;
}

ssize_t __wrap_read(int fd, void *buf, size_t count) {
    struct fault *f = fault_for(plan.read, fd, false, true);
    if (!f)
        return __real_read(fd, buf, count);
    if (f->err) {
        if (f->err == EAGAIN)
            owe_edge(fd, EPOLLIN); /* the data "arrives" next iteration */
        errno = f->err;
        return -1;
    }
    if (f->limit && count > f->limit) {
        ssize_t n = __real_read(fd, buf, f->limit);
        if (n == (ssize_t)f->limit)
            owe_edge(fd, EPOLLIN); /* the rest "arrives" next iteration */
        return n;
    }
    return __real_read(fd, buf, count);
}

ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags) {
    struct fault *f = fault_for(plan.sendmsg, fd, false, true);
    if (!f)
        return __real_sendmsg(fd, msg, flags);
    if (f->err) {
        if (f->err == EAGAIN)
            owe_edge(fd, EPOLLOUT); /* space "frees" next iteration */
        errno = f->err;
        return -1;
    }
    size_t total = 0;
    for (size_t i = 0; i < msg->msg_iovlen; i++)
        total += msg->msg_iov[i].iov_len;
    if (!f->limit || total <= f->limit)
        return __real_sendmsg(fd, msg, flags);
    struct iovec iov[64];
    struct msghdr m = *msg;
    size_t left = f->limit, n = 0;
    for (size_t i = 0; i < msg->msg_iovlen && left > 0 && n < 64; i++) {
        iov[n] = msg->msg_iov[i];
        if (iov[n].iov_len > left)
            iov[n].iov_len = left;
        left -= iov[n].iov_len;
        n++;
    }
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t sent = __real_sendmsg(fd, &m, flags);
    if (sent >= 0 && (size_t)sent < total)
        owe_edge(fd, EPOLLOUT);
    return sent;
}

/* crest sends one buffer with send(): the same plan as sendmsg's. */
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    return __wrap_sendmsg(fd, &m, flags);
}

int __wrap_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    plan.accept_calls++;
    struct fault *f = fault_for(plan.accept4, fd, false, false);
    if (f && f->err) {
        errno = f->err;
        return -1;
    }
    return __real_accept4(fd, addr, len, flags);
}

int __wrap_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout) {
    struct fault *f = fault_for(plan.epoll_wait, epfd, true, false);
    if (f && f->err) {
        errno = f->err;
        return -1;
    }
    bool owed_here = false;
    for (int i = 0; i < plan.n_owed; i++) {
        int fd = plan.owed_list[i];
        if (plan.owed[fd] && plan.tag_ep[fd] == epfd)
            owed_here = true;
    }
    int n = __real_epoll_wait(epfd, events, max, owed_here ? 0 : timeout);
    if (n < 0)
        return n;
    for (int i = 0; i < n; i++) {
        int fd = crest__tag_fd(events[i].data.u64);
        if (fd >= 0 && fd < MAX_FD) {
            plan.tag[fd] = events[i].data.u64;
            plan.tag_ep[fd] = epfd;
            plan.tag_known[fd] = true;
        }
    }
    /* Owed edges for this loop, as the kernel would report them. */
    int kept = 0;
    for (int i = 0; i < plan.n_owed; i++) {
        int fd = plan.owed_list[i];
        if (!plan.owed[fd])
            continue; /* closed since */
        if (plan.tag_ep[fd] != epfd || n >= max) {
            plan.owed_list[kept++] = fd;
            continue;
        }
        events[n].events = plan.owed[fd];
        events[n].data.u64 = plan.tag[fd];
        n++;
        plan.owed[fd] = 0;
        plan.synthesized++;
    }
    plan.n_owed = kept;
    return n;
}

int __wrap_close(int fd) {
    struct fault *f = fault_for(plan.close, fd, false, false);
    if (fd >= 0 && fd < MAX_FD) {
        plan.closes[fd]++;
        plan.marked[fd] = false;
        plan.tag_known[fd] = false;
        plan.owed[fd] = 0;
    }
    int rc = __real_close(fd);
    if (rc == 0 && f && f->err) {
        /* Linux releases the fd whatever close() reports. */
        errno = f->err;
        return -1;
    }
    return rc;
}

/* ---- running the loop --------------------------------------------------- */

static void finish(crest_loop_t *loop) {
    tu_finish_conns(loop);
    crest_fd_counts_t all;
    assert_int_equal(crest_fd_counts(CREST_FD_ALL, &all), 0);
    assert_int_equal(all.bad_closes, base_bad_closes); /* no double close */
    plan_reset();
}

/* ---- a RAW echo server and one crest client ----------------------------- */

#define MAX_SCONNS 16

struct srv {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    crest_conn_t *conns[MAX_SCONNS];
    int fds[MAX_SCONNS];
    crest_close_reason_t why[MAX_SCONNS];
    int errs[MAX_SCONNS];
    int opened, closed;
    bool mark;          /* mark accepted fds for the "every marked fd" faults */
    int write_rc;       /* the last echo write's result */
};

static void srv_on_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    assert_true(s->opened < MAX_SCONNS);
    crest_conn_set_data(c, (void *)(intptr_t)s->opened);
    s->fds[s->opened] = crest_conn_fd(c);
    if (s->mark)
        mark_fd(crest_conn_fd(c));
    s->conns[s->opened++] = c;
}

static ssize_t srv_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->write_rc = crest_conn_write(c, data, len);
    return (ssize_t)len;
}

static void srv_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct srv *s = crest_conn_handler_ctx(c);
    int i = (int)(intptr_t)crest_conn_get_data(c);
    assert_ptr_equal(s->conns[i], c);
    s->conns[i] = NULL;
    s->why[i] = reason;
    s->errs[i] = err;
    s->closed++;
}

static const crest_handler_t srv_handler = {
    .on_open = srv_on_open, .on_data = srv_on_data, .on_close = srv_on_close,
};

static void srv_start(crest_loop_t *loop, struct srv *s) {
    memset(s, 0, sizeof *s);
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &srv_handler, s, &s->l), 0);
    assert_true(crest_listener_address(s->l, s->addr, sizeof s->addr) > 0);
}

/* A client that collects what it receives. */
struct cli {
    crest_conn_t *c;
    int fd;
    uint8_t rx[65536];
    size_t rx_len;
    bool opened, closed, mark;
    crest_close_reason_t reason;
    int err;
};

static void cli_on_open(crest_conn_t *c) {
    struct cli *k = crest_conn_handler_ctx(c);
    k->opened = true;
    k->fd = crest_conn_fd(c);
    if (k->mark)
        mark_fd(k->fd);
}

static ssize_t cli_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct cli *k = crest_conn_handler_ctx(c);
    assert_true(k->rx_len + len <= sizeof k->rx);
    memcpy(k->rx + k->rx_len, data, len);
    k->rx_len += len;
    return (ssize_t)len;
}

static void cli_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct cli *k = crest_conn_handler_ctx(c);
    assert_false(k->closed);
    k->closed = true;
    k->reason = reason;
    k->err = err;
}

static const crest_handler_t cli_handler = {
    .on_open = cli_on_open, .on_data = cli_on_data, .on_close = cli_on_close,
};

static void cli_connect(crest_loop_t *loop, struct srv *s, struct cli *k) {
    bool mark = k->mark;
    memset(k, 0, sizeof *k);
    k->mark = mark;
    k->fd = -1;
    assert_int_equal(crest_connect(loop, s->addr, NULL, &cli_handler, k, &k->c), 0);
}

/* One echo round trip: everything comes back once, in order. */
static void echo_once(crest_loop_t *loop, struct cli *k, const char *msg) {
    size_t len = strlen(msg), before = k->rx_len;
    assert_int_equal(crest_conn_write(k->c, msg, len), 0);
    RUN_UNTIL(loop, k->rx_len >= before + len || k->closed);
    assert_int_equal(k->rx_len, before + len);
    assert_memory_equal(k->rx + before, msg, len);
}

/* ---- bulk echo, for the short-i/o cases -------------------------------- */

#define BULK_PIECE (64 * 1024)
#define BULK_WINDOW (512 * 1024)

struct bulk {
    crest_conn_t *c;
    int fd;
    uint64_t total, sent, rcvd, mismatches, h_tx, h_rx;
    uint8_t piece[BULK_PIECE];
    uint8_t expect[65536];
    bool paused, closed;
    crest_close_reason_t reason;
};

static void bulk_pump(struct bulk *b) {
    while (!b->paused && b->sent < b->total && b->sent - b->rcvd < BULK_WINDOW) {
        size_t n = BULK_PIECE;
        if (n > b->total - b->sent)
            n = (size_t)(b->total - b->sent);
        tu_pattern(b->piece, b->sent, n);
        b->h_tx = tu_fnv1a(b->h_tx, b->piece, n);
        b->sent += n;
        assert_int_equal(crest_conn_write(b->c, b->piece, n), 0);
    }
}

static void bulk_on_open(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    b->c = c;
    b->fd = crest_conn_fd(c);
    mark_fd(b->fd);
    bulk_pump(b);
}

static ssize_t bulk_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct bulk *b = crest_conn_handler_ctx(c);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof b->expect ? len - done : sizeof b->expect;
        tu_pattern(b->expect, b->rcvd, n);
        if (memcmp(b->expect, data + done, n) != 0)
            b->mismatches++;
        b->h_rx = tu_fnv1a(b->h_rx, data + done, n);
        b->rcvd += n;
        done += n;
    }
    assert_true(b->rcvd <= b->sent);
    if (b->rcvd == b->total)
        crest_conn_close(c);
    else
        bulk_pump(b);
    return (ssize_t)len;
}

static void bulk_on_high(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    b->paused = true;
}

static void bulk_on_drain(crest_conn_t *c) {
    struct bulk *b = crest_conn_handler_ctx(c);
    b->paused = false;
    bulk_pump(b);
}

static void bulk_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct bulk *b = crest_conn_handler_ctx(c);
    b->closed = true;
    b->reason = reason;
}

/* Echo `total` bytes under the current plan; check them byte for byte. */
static void bulk_echo(crest_loop_t *loop, struct srv *s, uint64_t total) {
    struct bulk *b = calloc(1, sizeof *b);
    assert_non_null(b);
    b->total = total;
    b->h_tx = b->h_rx = 0xcbf29ce484222325ull;
    crest_handler_t h = {.on_open = bulk_on_open, .on_data = bulk_on_data,
                         .on_high_water = bulk_on_high, .on_drain = bulk_on_drain,
                         .on_close = bulk_on_close};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, s->addr, NULL, &h, b, &c), 0);
    uint64_t last = 0;
    int idle = 0;
    /* The client's close lingers until the server's EOF: its fd closes
     * after its on_close. */
    while (!(b->closed && s->closed == 1 && plan.closes[b->fd] == 1)) {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        uint64_t now = b->sent + b->rcvd;
        idle = now == last ? idle + 1 : 0;
        last = now;
        if (idle > RUN_MAX_ITER)
            fail_msg("echo stalled: sent %llu, echoed %llu of %llu",
                     (unsigned long long)b->sent, (unsigned long long)b->rcvd,
                     (unsigned long long)b->total);
    }
    assert_int_equal(b->sent, total);
    assert_int_equal(b->rcvd, total);
    assert_int_equal(b->mismatches, 0);
    assert_true(b->h_tx == b->h_rx);
    assert_int_equal(b->reason, CREST_CLOSE_LOCAL);
    assert_int_equal(s->why[0], CREST_CLOSE_PEER_EOF);
    /* Each connection's fd closed exactly once. */
    assert_int_equal(plan.closes[b->fd], 1);
    assert_int_equal(plan.closes[s->fds[0]], 1);
    free(b);
}

/* ---- tests --------------------------------------------------------------- */

/* Every read returns at most 3 bytes and every sendmsg takes at most 7,
 * on both ends. */
static void test_short_reads_and_writes(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    srv_start(loop, &s);
    s.mark = true;
    add_fault(plan.read, -1, 0, 3, 1, -1);
    add_fault(plan.sendmsg, -1, 0, 7, 1, -1);
    uint64_t total = (1 << 20) / tu_scale(8);
    bulk_echo(loop, &s, total);
    /* Nearly every call was cut short. */
    assert_true(injected(plan.read) >= total / 3);
    assert_true(injected(plan.sendmsg) >= total / 7);
    assert_true(plan.synthesized > 0);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.bytes_in, 2 * total);
    assert_int_equal(st.bytes_out, 2 * total);
    crest_listener_close(s.l);
    finish(loop);
}

/* EAGAIN and EINTR sprinkled over reads and writes, and some short writes. */
static void test_eagain_and_eintr(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    srv_start(loop, &s);
    s.mark = true;
    add_fault(plan.read, -1, EINTR, 0, 5, -1);
    add_fault(plan.read, -1, EAGAIN, 0, 3, -1);
    add_fault(plan.sendmsg, -1, EINTR, 0, 3, -1);
    add_fault(plan.sendmsg, -1, EAGAIN, 0, 4, -1);
    add_fault(plan.sendmsg, -1, 0, 1000, 2, -1);
    uint64_t total = (4 << 20) / tu_scale(8);
    bulk_echo(loop, &s, total);
    assert_true(plan.read[0].injected > 0 && plan.read[1].injected > 0);
    assert_true(plan.sendmsg[0].injected > 0 && plan.sendmsg[1].injected > 0 &&
                plan.sendmsg[2].injected > 0);
    crest_listener_close(s.l);
    finish(loop);
}

/* A read error: the connection closes with the reason the errno maps to
 * (conn_io.c reason_for_errno(); conn.h: PEER_RESET is ECONNRESET/EPIPE,
 * IO_ERROR another read/write error, NO_MEMORY), err is the errno, and
 * the bytes before it were echoed exactly once. */
static void read_error_case(int err, crest_close_reason_t want) {
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli k;
    srv_start(loop, &s);
    cli_connect(loop, &s, &k);
    RUN_UNTIL(loop, k.opened && s.opened == 1);
    echo_once(loop, &k, "before the fault");
    int sfd = s.fds[0];
    add_fault(plan.read, sfd, err, 0, 1, 1);
    assert_int_equal(crest_conn_write(k.c, "lost", 4), 0);
    RUN_UNTIL(loop, s.closed == 1 && k.closed);
    assert_int_equal(s.why[0], want);
    assert_int_equal(s.errs[0], err);
    assert_int_equal(injected(plan.read), 1);
    assert_int_equal(k.rx_len, 16); /* nothing more, nothing twice */
    assert_true(k.reason == CREST_CLOSE_PEER_EOF || k.reason == CREST_CLOSE_PEER_RESET);
    assert_int_equal(plan.closes[sfd], 1);
    crest_listener_close(s.l);
    finish(loop);
}

static void test_read_econnreset(void **state) {
    (void)state;
    read_error_case(ECONNRESET, CREST_CLOSE_PEER_RESET);
}

static void test_read_errno_mapping(void **state) {
    (void)state;
    read_error_case(ECONNABORTED, CREST_CLOSE_PEER_RESET);
    read_error_case(ENOMEM, CREST_CLOSE_NO_MEMORY);
    read_error_case(ENOBUFS, CREST_CLOSE_NO_MEMORY);
    read_error_case(EIO, CREST_CLOSE_IO_ERROR);
    read_error_case(EBADF, CREST_CLOSE_IO_ERROR);
}

/* A write error on the gathered path (the echo of on_data, flushed after
 * the callback) and on the direct path (a write outside any callback). */
static void write_error_case(int err, crest_close_reason_t want, bool direct) {
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli k;
    srv_start(loop, &s);
    cli_connect(loop, &s, &k);
    RUN_UNTIL(loop, k.opened && s.opened == 1);
    echo_once(loop, &k, "before the fault");
    int sfd = s.fds[0];
    add_fault(plan.sendmsg, sfd, err, 0, 1, 1);
    if (direct) {
        /* conn_io.c write_failed(): a broken socket is -EPIPE, whatever
         * the errno (on_close gets the errno). */
        assert_int_equal(crest_conn_write(s.conns[0], "x", 1), -EPIPE);
        assert_int_equal(crest_conn_write(s.conns[0], "y", 1), -EPIPE);
    } else {
        assert_int_equal(crest_conn_write(k.c, "lost", 4), 0);
    }
    RUN_UNTIL(loop, s.closed == 1 && k.closed);
    assert_int_equal(s.why[0], want);
    assert_int_equal(s.errs[0], err);
    assert_int_equal(injected(plan.sendmsg), 1);
    assert_int_equal(k.rx_len, 16);
    assert_int_equal(plan.closes[sfd], 1);
    crest_listener_close(s.l);
    finish(loop);
}

static void test_sendmsg_epipe(void **state) {
    (void)state;
    write_error_case(EPIPE, CREST_CLOSE_PEER_RESET, false);
    write_error_case(EPIPE, CREST_CLOSE_PEER_RESET, true);
}

static void test_sendmsg_errno_mapping(void **state) {
    (void)state;
    write_error_case(ECONNRESET, CREST_CLOSE_PEER_RESET, false);
    write_error_case(ENOBUFS, CREST_CLOSE_NO_MEMORY, false);
    write_error_case(EIO, CREST_CLOSE_IO_ERROR, true);
}

/* Out of fds at accept: the pending connection is dropped (accepted and
 * closed through the spare fd), counted and logged; the connections
 * already open go on; the next one is accepted once fds are back. */
static void test_accept_emfile(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli a, b, c;
    srv_start(loop, &s);
    int lfd = crest_listener_fd(s.l);
    crest_fd_counts_t rsv;
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    uint64_t reserve_open = rsv.open;
    cli_connect(loop, &s, &a);
    RUN_UNTIL(loop, a.opened && s.opened == 1);
    echo_once(loop, &a, "a1");

    add_fault(plan.accept4, lfd, EMFILE, 0, 1, 1);
    cli_connect(loop, &s, &b);
    crest_listener_stats_t ls;
    crest_listener_get_stats(s.l, &ls);
    RUN_UNTIL(loop, (crest_listener_get_stats(s.l, &ls), ls.emfile == 1) && b.closed);
    assert_int_equal(s.opened, 1);
    assert_int_equal(ls.accepted, 1);
    assert_true(b.reason == CREST_CLOSE_PEER_RESET || b.reason == CREST_CLOSE_PEER_EOF ||
                b.reason == CREST_CLOSE_CONNECT_FAILED);
    assert_true(tu_log_line_has("warning", "out of file descriptors", NULL));
    /* The spare fd is back. */
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    assert_int_equal(rsv.open, reserve_open);

    echo_once(loop, &a, "a2");
    cli_connect(loop, &s, &c);
    RUN_UNTIL(loop, c.opened && s.opened == 2);
    echo_once(loop, &c, "c1");
    echo_once(loop, &a, "a3");
    assert_string_equal((char *)a.rx, "a1a2a3");

    /* Still out of fds while the spare is used: the connection waits in
     * the backlog, and the listener does not spin on it. */
    add_fault(plan.accept4, lfd, EMFILE, 0, 1, 2);
    static struct cli d, e;
    cli_connect(loop, &s, &d);
    RUN_UNTIL(loop, (crest_listener_get_stats(s.l, &ls), ls.emfile == 2));
    unsigned long calls = plan.accept_calls;
    for (int i = 0; i < 20; i++)
        assert_true(crest_loop_run_once(loop, 5) >= 0);
    assert_int_equal(plan.accept_calls, calls);
    assert_int_equal(s.opened, 2);
    /* The next connection's edge brings both in. */
    cli_connect(loop, &s, &e);
    RUN_UNTIL(loop, s.opened == 4 && d.opened && e.opened);
    echo_once(loop, &d, "d1");
    echo_once(loop, &e, "e1");

    crest_conn_close(a.c);
    crest_conn_close(c.c);
    crest_conn_close(d.c);
    crest_conn_close(e.c);
    RUN_UNTIL(loop, a.closed && c.closed && d.closed && e.closed && s.closed == 4);
    crest_listener_close(s.l);
    /* The loop's figures (/metrics crest_accept_shed_total) keep the
     * closed listener's count. */
    crest_conn_stats_t cs;
    crest_loop_conn_stats(loop, &cs);
    assert_int_equal(cs.accept_shed, 2);
    assert_int_equal(cs.accept_errors, 0);
    finish(loop);
}

/* accept4 failures that are not the peer's doing nor EMFILE (ENOMEM,
 * ENOBUFS): the pending connection must not be forgotten until some other
 * client happens to connect. */
static void test_accept_transient_error(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli a, b;
    srv_start(loop, &s);
    int lfd = crest_listener_fd(s.l);

    /* ECONNABORTED and EINTR: accept goes on at once. */
    add_fault(plan.accept4, lfd, ECONNABORTED, 0, 1, 1);
    add_fault(plan.accept4, lfd, EINTR, 0, 1, 1);
    cli_connect(loop, &s, &a);
    RUN_UNTIL(loop, a.opened && s.opened == 1);
    echo_once(loop, &a, "a1");
    crest_listener_stats_t ls;
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.accept_errors, 0);

    /* ENOMEM once. */
    plan_reset();
    add_fault(plan.accept4, lfd, ENOMEM, 0, 1, 1);
    cli_connect(loop, &s, &b);
    for (int i = 0; i < 100 && s.opened < 2; i++)
        assert_true(crest_loop_run_once(loop, 10) >= 0);
    int opened = s.opened;
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.accept_errors, 1);
    assert_true(tu_log_line_has("warning", "accept4 failed", NULL));
    /* Clean up: another connection's edge brings the stuck one in. */
    static struct cli c;
    cli_connect(loop, &s, &c);
    RUN_UNTIL(loop, s.opened == 3 && b.opened && c.opened);
    crest_conn_close(a.c);
    crest_conn_close(b.c);
    crest_conn_close(c.c);
    RUN_UNTIL(loop, a.closed && b.closed && c.closed && s.closed == 3);
    crest_listener_close(s.l);
    crest_conn_stats_t cs;
    crest_loop_conn_stats(loop, &cs);
    assert_int_equal(cs.accept_errors, 1);
    assert_int_equal(cs.accept_shed, 0);
    finish(loop);
    if (opened != 2)
        fail_msg("after one accept4 ENOMEM the pending connection waited 100 iterations "
                 "(about 1 s) and was accepted only when another client connected");
}

/* epoll_wait interrupted: the loop reports no events and goes on. */
static void epoll_ping_open(crest_conn_t *c) {
    cli_on_open(c);
    assert_int_equal(crest_conn_write(c, "0123456789", 10), 0);
}

/* 20 round trips of 10 bytes, then close. */
static ssize_t epoll_ping_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct cli *k = crest_conn_handler_ctx(c);
    cli_on_data(c, data, len);
    if (k->rx_len % 10 == 0) {
        if (k->rx_len == 200)
            crest_conn_close(c);
        else
            assert_int_equal(crest_conn_write(c, "0123456789", 10), 0);
    }
    return (ssize_t)len;
}

static void epoll_ping_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    cli_on_close(c, reason, err);
    crest_loop_stop(crest_conn_loop(c));
}

static void test_epoll_wait_eintr(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli k;
    srv_start(loop, &s);
    add_fault(plan.epoll_wait, -1, EINTR, 0, 2, 10);
    cli_connect(loop, &s, &k);
    for (int i = 0; i < 30; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "ping %d;", i);
        echo_once(loop, &k, msg); /* asserts every run_once >= 0 */
    }
    assert_int_equal(plan.epoll_wait[0].injected, 10);

    /* crest_loop_run() too: EINTR is not an error. */
    crest_handler_t h = {.on_open = epoll_ping_open, .on_data = epoll_ping_data,
                         .on_close = epoll_ping_close};
    static struct cli k2;
    memset(&k2, 0, sizeof k2);
    plan_reset();
    add_fault(plan.epoll_wait, -1, EINTR, 0, 2, 5);
    assert_int_equal(crest_connect(loop, s.addr, NULL, &h, &k2, &k2.c), 0);
    assert_int_equal(crest_loop_run(loop), 0); /* until k2's on_close stops it */
    assert_true(k2.closed);
    assert_int_equal(k2.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(k2.rx_len, 200);
    assert_int_equal(plan.epoll_wait[0].injected, 5);

    /* Any other failure is returned, and the loop still works after. */
    plan_reset();
    add_fault(plan.epoll_wait, -1, EINVAL, 0, 1, 1);
    assert_int_equal(crest_loop_run_once(loop, 0), -EINVAL);
    echo_once(loop, &k, "after");

    crest_conn_close(k.c);
    RUN_UNTIL(loop, k.closed && s.closed == 2);
    crest_listener_close(s.l);
    finish(loop);
}

/* close() reporting EINTR or EIO after releasing the fd (as Linux does):
 * crest never closes it again and the registry lets it go. */
static void close_error_case(int err) {
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli k;
    srv_start(loop, &s);
    cli_connect(loop, &s, &k);
    RUN_UNTIL(loop, k.opened && s.opened == 1);
    echo_once(loop, &k, "hello");
    int sfd = s.fds[0];
    add_fault(plan.close, sfd, err, 0, 1, 1);
    crest_conn_close(s.conns[0]);
    /* The server's close lingers until the client's EOF. */
    RUN_UNTIL(loop, s.closed == 1 && k.closed && plan.closes[sfd] == 1);
    assert_int_equal(injected(plan.close), 1);
    assert_int_equal(plan.closes[sfd], 1);
    assert_int_equal(s.why[0], CREST_CLOSE_LOCAL);
    assert_int_equal(k.reason, CREST_CLOSE_PEER_EOF);
    assert_int_equal(crest_fd_lookup(sfd, NULL, NULL, NULL), -EBADF);
    crest_listener_close(s.l);
    finish(loop);
}

static void test_close_reports_error(void **state) {
    (void)state;
    close_error_case(EINTR);
    close_error_case(EIO);
}

/* Faults on the wake-up eventfd's neighbours must not disturb it: reads on
 * fds the plan does not name pass through untouched.  (A guard for the
 * harness itself.) */
static void test_harness_passthrough(void **state) {
    (void)state;
    plan_reset();
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    add_fault(plan.read, sv[1] + 1000, EIO, 0, 1, -1);
    assert_int_equal(send(sv[0], "abc", 3, 0), 3);
    char buf[8];
    assert_int_equal(read(sv[1], buf, sizeof buf), 3);
    plan_reset();
    add_fault(plan.read, -1, ECONNRESET, 0, 1, 1);
    mark_fd(sv[1]);
    errno = 0;
    assert_int_equal(read(sv[1], buf, sizeof buf), -1);
    assert_int_equal(errno, ECONNRESET);
    close(sv[0]);
    close(sv[1]);
    assert_int_equal(plan.closes[sv[1]], 1);
    plan_reset();
    tu_assert_nothing_open();
}

/* ---- the fd registry failing (out of memory) -------------------------------- */

/* An accepted fd the registry cannot record: the connection is dropped at
 * once (the fd closed with a plain close, exactly once), counted and
 * logged; the listener goes on.  Were it kept, crest_fd_close() would
 * refuse the unregistered fd at its close, and the fd would leak. */
static void test_register_fails_on_accept(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli a, b;
    srv_start(loop, &s);
    fail_registrations(CREST_FD_ACCEPTED, ENOMEM, 1);
    cli_connect(loop, &s, &a);
    RUN_UNTIL(loop, a.closed);
    assert_int_equal(s.opened, 0);
    assert_int_equal(plan.n_reg_refused, 1);
    int fd = plan.reg_refused[0];
    assert_int_equal(plan.closes[fd], 1);
    assert_int_equal(crest_fd_lookup(fd, NULL, NULL, NULL), -EBADF);
    crest_listener_stats_t ls;
    crest_listener_get_stats(s.l, &ls);
    assert_int_equal(ls.accept_errors, 1);
    assert_int_equal(ls.accepted, 0);
    crest_conn_stats_t cs;
    crest_loop_conn_stats(loop, &cs);
    assert_int_equal(cs.close_reasons[CREST_CLOSE_NO_MEMORY], 1);
    assert_true(tu_log_line_has("warning", "not recorded in the fd registry", "not enough memory"));
    /* The next one is served. */
    cli_connect(loop, &s, &b);
    RUN_UNTIL(loop, b.opened && s.opened == 1);
    echo_once(loop, &b, "after");
    crest_conn_close(b.c);
    RUN_UNTIL(loop, b.closed && s.closed == 1);
    crest_listener_close(s.l);
    finish(loop);
}

/* An outbound socket the registry cannot record: crest_connect() fails
 * with the registry's error, no callback runs, nothing is left open. */
static void test_register_fails_on_connect(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    static struct cli k;
    srv_start(loop, &s);
    /* Count closes from here: starting the listener may open and close a
     * file of its own (the accept path's /proc/net/netstat baseline) on
     * the fd number the refused socket gets next. */
    memset(plan.closes, 0, sizeof plan.closes);
    fail_registrations(CREST_FD_CONNECT, ENOMEM, 1);
    memset(&k, 0, sizeof k);
    crest_conn_t *c = NULL;
    assert_int_equal(crest_connect(loop, s.addr, NULL, &cli_handler, &k, &c), -ENOMEM);
    assert_int_equal(plan.n_reg_refused, 1);
    assert_int_equal(plan.closes[plan.reg_refused[0]], 1);
    tu_spin(loop, 5);
    assert_false(k.opened || k.closed);
    assert_int_equal(s.opened, 0);
    crest_listener_close(s.l);
    finish(loop);
}

/* The listener's spare fd: at crest_listen() the failure is returned; after
 * an EMFILE (the spare used up and not recorded again) the listener goes
 * on without it and takes it back at the next accept event. */
static void test_register_fails_on_reserve(void **state) {
    (void)state;
    fault_begin();
    crest_loop_t *loop = fault_loop();
    static struct srv s;
    memset(&s, 0, sizeof s);
    crest_fd_counts_t rsv;
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    uint64_t reserve_open = rsv.open;
    uint64_t reg_open = crest_fd_open_count();
    int proc_open = tu_proc_fd_count();
    fail_registrations(CREST_FD_RESERVE, ENOMEM, 1);
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &srv_handler, &s, &s.l), -ENOMEM);
    assert_int_equal(plan.n_reg_refused, 1);
    assert_int_equal(plan.closes[plan.reg_refused[0]], 1);
    assert_int_equal(crest_fd_open_count(), reg_open); /* listening socket closed too */
    assert_int_equal(tu_proc_fd_count(), proc_open);

    srv_start(loop, &s);
    int lfd = crest_listener_fd(s.l);
    static struct cli a, b;
    add_fault(plan.accept4, lfd, EMFILE, 0, 1, 1);
    fail_registrations(CREST_FD_RESERVE, ENOMEM, 1);
    cli_connect(loop, &s, &a);
    crest_listener_stats_t ls;
    RUN_UNTIL(loop, (crest_listener_get_stats(s.l, &ls), ls.emfile == 1) && a.closed);
    assert_int_equal(plan.n_reg_refused, 1); /* and closed: finish() counts the fds */
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    assert_int_equal(rsv.open, reserve_open); /* the spare is gone */
    cli_connect(loop, &s, &b);
    RUN_UNTIL(loop, b.opened && s.opened == 1);
    assert_int_equal(crest_fd_counts(CREST_FD_RESERVE, &rsv), 0);
    assert_int_equal(rsv.open, reserve_open + 1); /* and back */
    echo_once(loop, &b, "b");
    crest_conn_close(b.c);
    RUN_UNTIL(loop, b.closed && s.closed == 1);
    crest_listener_close(s.l);
    finish(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_harness_passthrough),
        tu_test(test_short_reads_and_writes),
        tu_test(test_eagain_and_eintr),
        tu_test(test_read_econnreset),
        tu_test(test_read_errno_mapping),
        tu_test(test_sendmsg_epipe),
        tu_test(test_sendmsg_errno_mapping),
        tu_test(test_accept_emfile),
        tu_test(test_accept_transient_error),
        tu_test(test_epoll_wait_eintr),
        tu_test(test_close_reports_error),
        tu_test(test_register_fails_on_accept),
        tu_test(test_register_fails_on_connect),
        tu_test(test_register_fails_on_reserve),
    };
    const char *filter = getenv("CREST_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
