/* crest-io-echo: the raw echo written on crest's reactor alone (crest_loop
 * and crest_io watchers, no connection layer), the way the libev server
 * uses ev_io: a read is written straight back, and only what the kernel
 * does not take is kept, with the watcher switched to writable until it is
 * gone.  Edge-triggered: a read that fills the buffer is followed by
 * another, a short one means drained.
 *
 *   crest-io-echo PORT
 *
 * Not a peer in the comparison: it separates what crest's loop costs per
 * event (against libev's) from what its connection layer adds (buffers,
 * framing, gathering, timeouts, statistics). */
#define _GNU_SOURCE
#include <crest/crest.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    crest_io_t *io;
    int fd;
    char *pending;
    size_t len, off;
};

static char buf[65536];

static void conn_free(struct conn *c) {
    crest_io_stop(c->io);
    close(c->fd);
    free(c->pending);
    free(c);
}

static void on_writable(struct conn *c) {
    ssize_t n = write(c->fd, c->pending + c->off, c->len - c->off);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_free(c);
        return;
    }
    c->off += (size_t)n;
    if (c->off == c->len) {
        free(c->pending);
        c->pending = NULL;
        crest_io_modify(c->io, CREST_IO_READABLE); /* reports a pending edge */
    }
}

static void on_event(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    struct conn *c = arg;
    if (c->pending) {
        if (events & (CREST_IO_WRITABLE | CREST_IO_ERR | CREST_IO_HUP))
            on_writable(c);
        return;
    }
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n <= 0) {
            if (n == 0 || (errno != EAGAIN && errno != EINTR))
                conn_free(c);
            return;
        }
        ssize_t sent = write(c->fd, buf, (size_t)n);
        if (sent < 0) {
            if (errno != EAGAIN) {
                conn_free(c);
                return;
            }
            sent = 0;
        }
        if (sent < n) {
            c->len = (size_t)(n - sent);
            c->off = 0;
            c->pending = malloc(c->len);
            memcpy(c->pending, buf + sent, c->len);
            crest_io_modify(c->io, CREST_IO_WRITABLE);
            return;
        }
        if ((size_t)n < sizeof buf)
            return; /* a short read: drained */
    }
}

static void on_accept(crest_io_t *io, unsigned events, void *arg) {
    (void)events;
    (void)arg;
    for (;;) {
        int fd = accept4(crest_io_fd(io), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        c->fd = fd;
        if (crest_io_start(crest_io_loop(io), fd, CREST_IO_READABLE, on_event, c, &c->io) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void on_term(crest_signal_t *sig, int signo, void *loop) {
    (void)sig;
    (void)signo;
    crest_loop_stop(loop);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: crest-io-echo PORT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    crest_loop_t *loop;
    crest_io_t *lw;
    crest_signal_t *s1, *s2;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (crest_loop_create(&loop) < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        listen(lfd, 4096) < 0 || crest_io_start(loop, lfd, CREST_IO_READABLE, on_accept, NULL, &lw) < 0) {
        perror("crest-io-echo: listen");
        return 1;
    }
    crest_signal_start(loop, SIGTERM, on_term, loop, &s1);
    crest_signal_start(loop, SIGINT, on_term, loop, &s2);
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    crest_loop_run(loop);
    return 0;
}
