/* floor: the least an edge-triggered epoll echo server can do.
 *
 * No framework: one epoll set, each connection registered once for
 * IN|RDHUP with EPOLLET, one shared 64 KiB read buffer, and an fd-indexed
 * table of tiny per-connection records.  A read shorter than the buffer
 * means the socket is drained (no extra read that would return EAGAIN),
 * unless the peer hung up, when we read on to see the 0.  The reply is
 * written straight from the read buffer; only what the kernel does not
 * take is copied, and reading stops until it is gone.
 *
 * EPOLLOUT is asked for only while a reply is pending (one epoll_ctl to
 * add it, one to drop it, neither on the fast path).  Registered for
 * IN|OUT from the start, every ACK that frees send-buffer space raises an
 * EPOLLOUT edge with nothing to do: callgrind counted 61 user-space
 * instructions per message at depth 1 that way against 59 this way, with
 * the same syscalls (bench/run's method).  Per echoed message the fast
 * path is one read, one write and a share of one epoll_wait.
 *
 * This is the yardstick: what the kernel costs, plus a dispatch.  It is
 * deliberately not a library (no timers, no fairness budget, no fd
 * bookkeeping, no statistics). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>

#include "common.h"

#define READ_BUF 65536
#define MAX_EVENTS 256

struct conn {
    char *pending;     /* unsent reply bytes, or NULL */
    uint32_t len, off;
    bool rdhup;        /* the peer shut down: read until 0 */
};

static struct conn *conns;
static int conns_cap;
static int epfd, lfd;
static char buf[READ_BUF];

static struct conn *conn_of(int fd) {
    if (fd >= conns_cap) {
        int cap = conns_cap ? conns_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        struct conn *n = realloc(conns, (size_t)cap * sizeof *n);
        if (!n)
            return NULL;
        memset(n + conns_cap, 0, (size_t)(cap - conns_cap) * sizeof *n);
        conns = n;
        conns_cap = cap;
    }
    return &conns[fd];
}

/* Ask for EPOLLOUT (a reply is pending) or stop asking (it is gone). */
static bool want_out(int fd, bool out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (out ? EPOLLOUT : 0),
                             .data.fd = fd};
    return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) == 0;
}

static void conn_close(int fd) {
    struct conn *c = &conns[fd];
    free(c->pending);
    memset(c, 0, sizeof *c);
    close(fd); /* the last reference: this also leaves the epoll set */
}

/* Write what is pending; false if the socket failed. */
static bool flush(int fd, struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(fd, c->pending + c->off, c->len - c->off);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? true : false;
        c->off += (uint32_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->len = c->off = 0;
    return want_out(fd, false);
}

/* Echo until drained; false if the connection must close. */
static bool on_readable(int fd, struct conn *c) {
    while (!c->pending) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            ssize_t w = write(fd, buf, (size_t)n);
            if (w < 0) {
                if (errno != EAGAIN)
                    return false;
                w = 0;
            }
            if (w < n) {
                c->pending = malloc((size_t)(n - w));
                if (!c->pending)
                    return false;
                memcpy(c->pending, buf + w, (size_t)(n - w));
                c->len = (uint32_t)(n - w);
                c->off = 0;
                return want_out(fd, true); /* resumed by EPOLLOUT */
            }
            if (n < (ssize_t)sizeof buf && !c->rdhup)
                return true; /* short read: drained */
            continue;
        }
        if (n == 0)
            return false;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN;
    }
    return true;
}

static void on_accept(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE: the listener is level-triggered */
        bench_nodelay(fd);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
        if (!conn_of(fd) || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            close(fd);
    }
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "floor");
    bench_exit_on_sigterm();
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, BENCH_BACKLOG) < 0) {
        perror("floor: bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);

    bench_listening(port);

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t e = evs[i].events;
            if (fd == lfd) {
                on_accept();
                continue;
            }
            struct conn *c = &conns[fd];
            if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->rdhup = true;
            bool ok = true;
            if ((e & (EPOLLOUT | EPOLLERR)) && c->pending) {
                ok = flush(fd, c);
                /* Drained: the input we left unread raised no new edge. */
                if (ok && !c->pending)
                    e |= EPOLLIN;
            }
            if (ok && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                ok = on_readable(fd, c);
            if (!ok)
                conn_close(fd);
        }
    }
}
