/* libevent echo server, the fast way: libevent's event API, with the
 * socket I/O in the application, as memcached uses libevent.
 *
 * An evconnlistener accepts (it makes each socket non-blocking).  Each
 * connection has a persistent EV_READ event; on it the server reads once
 * into one shared 64 KiB buffer and writes the reply straight back.  The
 * epoll backend is level-triggered, so one read per event is enough: a
 * read that fills the buffer is followed by another event.  Only what the
 * kernel does not take is copied; the connection then waits on a
 * persistent EV_WRITE event, with its EV_READ event removed, until that
 * rest is gone, so a client that does not read cannot make the server
 * buffer without bound.  On the fast path no event is added or removed:
 * a read, a write, and the dispatch.
 *
 * The buffered way (bufferevents, evbuffer_add_buffer from input to
 * output) is kept as libevent_bev_echo.c: libevent's high-level API, and
 * what most libevent code uses, but it costs an ioctl(FIONREAD) per read
 * and two epoll_ctl per reply (the write event is added and removed each
 * time), which libevent's changelist does not remove here.
 *
 * One thread, the default event_base (epoll).  TCP_NODELAY as every
 * peer. */
#define _GNU_SOURCE
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define READ_BUF 65536

struct conn {
    struct event *rev, *wev;
    char *pending; /* the unsent rest of a reply, or NULL */
    size_t len, off;
};

static char buf[READ_BUF];

static void conn_free(struct conn *c) {
    evutil_socket_t fd = event_get_fd(c->rev);
    event_free(c->rev); /* event_free removes a pending event first */
    event_free(c->wev);
    evutil_closesocket(fd);
    free(c->pending);
    free(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    struct conn *c = arg;
    ssize_t n = write(fd, c->pending + c->off, c->len - c->off);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_free(c);
        return;
    }
    c->off += (size_t)n;
    if (c->off == c->len) {
        free(c->pending);
        c->pending = NULL;
        event_del(c->wev);
        event_add(c->rev, NULL);
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    struct conn *c = arg;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    ssize_t sent = write(fd, buf, (size_t)n);
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
        if (!c->pending) {
            conn_free(c);
            return;
        }
        memcpy(c->pending, buf + sent, c->len);
        event_del(c->rev);
        event_add(c->wev, NULL);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg) {
    (void)sa;
    (void)len;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(l);
    bench_nodelay(fd);
    struct conn *c = calloc(1, sizeof *c);
    if (c) {
        c->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, c);
        c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    }
    if (!c || !c->rev || !c->wev || event_add(c->rev, NULL) != 0) {
        if (c) {
            if (c->rev)
                event_free(c->rev);
            if (c->wev)
                event_free(c->wev);
            free(c);
        }
        evutil_closesocket(fd);
    }
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "libevent-echo");
    bench_exit_on_sigterm();
    struct event_base *base = event_base_new();
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l =
        base ? evconnlistener_new_bind(base, on_accept, NULL,
                                       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, BENCH_BACKLOG,
                                       (struct sockaddr *)&sa, sizeof sa)
             : NULL;
    if (!l) {
        perror("libevent-echo: listen");
        return 1;
    }
    bench_listening(port);
    event_base_dispatch(base);
    return 0;
}
