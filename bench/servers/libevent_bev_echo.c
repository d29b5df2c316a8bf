/* libevent echo server, the common way: bufferevents, libevent's
 * high-level buffered API.
 *
 * An evconnlistener accepts; each connection is a socket bufferevent whose
 * read callback moves the whole input buffer to the output buffer with
 * evbuffer_add_buffer: no byte is copied, the buffer chains change hands.
 * The bufferevent writes when its output has data and is freed on EOF or
 * error.  This is the fair way to echo with bufferevents: the alternatives
 * copy (evbuffer_remove, then bufferevent_write) or add work per read.
 *
 * Watermarks are used where they cost next to nothing on the fast path: a
 * write low watermark, set once, and the write callback installed only
 * while reading is stopped.  When more than 256 KiB of replies wait (a
 * client that does not read), reading stops until the output drains to
 * 64 KiB, so memory stays bounded, as in every other peer.
 *
 * Measured with callgrind (bench/run's method), user-space instructions
 * per message at depth 1: this file 2,906; without the backpressure
 * 2,889; with a read high watermark as well (bufferevent_setwatermark
 * (EV_READ, 0, 256 KiB)) 3,431, because every change to the input buffer
 * then runs the watermark callback; with EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST
 * (which Tor turns on) 2,994 without the backpressure, and the same
 * syscalls.
 *
 * What bufferevents cost per reply here, whatever the options: an
 * ioctl(FIONREAD) before each read (evbuffer_read sizes its read with it),
 * and two epoll_ctl, because the write event is added when output appears
 * and removed when it is gone, and the write waits for the next loop pass.
 * libevent_echo.c, the event API with direct I/O, is the fast libevent
 * peer; this one is kept as the way most libevent code is written.
 *
 * One thread, the default event_base (epoll).  TCP_NODELAY as every
 * peer. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <string.h>

#include "common.h"

#define OUT_HIGH (256 * 1024) /* stop reading above this much unsent output */
#define OUT_LOW (64 * 1024)   /* and read again once it is down to this */

static void on_read(struct bufferevent *bev, void *arg);

static void on_event(struct bufferevent *bev, short what, void *arg) {
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}

/* The output drained to the low watermark: read again. */
static void on_drained(struct bufferevent *bev, void *arg) {
    (void)arg;
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    bufferevent_enable(bev, EV_READ);
}

static void on_read(struct bufferevent *bev, void *arg) {
    (void)arg;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    if (evbuffer_get_length(out) > OUT_HIGH) {
        bufferevent_disable(bev, EV_READ);
        bufferevent_setcb(bev, on_read, on_drained, on_event, NULL);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg) {
    (void)sa;
    (void)len;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(l);
    bench_nodelay(fd);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    bufferevent_setwatermark(bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "libevent-bev-echo");
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
        perror("libevent-bev-echo: listen");
        return 1;
    }
    bench_listening(port);
    event_base_dispatch(base);
    return 0;
}
