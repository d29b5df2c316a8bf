/* libev echo server, the way libev's documentation and its users write
 * one: an ev_io read watcher per connection and the socket I/O in the
 * application (libev has no buffered layer).
 *
 * What makes it the fast version: one shared 64 KiB read buffer, no
 * allocation per message; a read is written straight back from it; only
 * what the kernel does not take is copied, with an ev_io write watcher
 * armed and the read watcher stopped until it is gone (libev folds the
 * two watcher changes on one fd into a single epoll_ctl), so a client
 * that does not read cannot make the server buffer without bound.  No
 * watcher is started or stopped on the fast path.  libev's epoll backend
 * is level-triggered, so one read per event is the fewest syscalls: a
 * read that fills the buffer is followed by another event, and reading
 * on until EAGAIN would cost an extra read(2) per message.
 *
 * One thread, the default loop, the epoll backend.  TCP_NODELAY as every
 * peer. */
#define _GNU_SOURCE
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

struct conn {
    ev_io rio, wio;
    char *pending;
    size_t len, off;
};

static char buf[65536];

static void conn_free(struct ev_loop *loop, struct conn *c) {
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    close(c->rio.fd);
    free(c->pending);
    free(c);
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, wio));
    ssize_t n = write(w->fd, c->pending + c->off, c->len - c->off);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_free(loop, c);
        return;
    }
    c->off += (size_t)n;
    if (c->off == c->len) {
        free(c->pending);
        c->pending = NULL;
        ev_io_stop(loop, &c->wio);
        ev_io_start(loop, &c->rio);
    }
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct conn *c = (struct conn *)w;
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_free(loop, c);
        return;
    }
    ssize_t sent = write(w->fd, buf, (size_t)n);
    if (sent < 0) {
        if (errno != EAGAIN) {
            conn_free(loop, c);
            return;
        }
        sent = 0;
    }
    if (sent < n) {
        c->len = (size_t)(n - sent);
        c->off = 0;
        c->pending = malloc(c->len);
        memcpy(c->pending, buf + sent, c->len);
        ev_io_stop(loop, &c->rio);
        ev_io_start(loop, &c->wio);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        bench_nodelay(fd);
        struct conn *c = calloc(1, sizeof *c);
        ev_io_init(&c->rio, on_readable, fd, EV_READ);
        ev_io_init(&c->wio, on_writable, fd, EV_WRITE);
        ev_io_start(loop, &c->rio);
    }
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "libev-echo");
    bench_exit_on_sigterm();
    struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (!loop || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        listen(lfd, BENCH_BACKLOG) < 0) {
        perror("libev-echo: listen");
        return 1;
    }
    ev_io lw;
    ev_io_init(&lw, on_accept, lfd, EV_READ);
    ev_io_start(loop, &lw);
    bench_listening(port);
    ev_run(loop, 0);
    return 0;
}
