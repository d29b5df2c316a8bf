/* libevent echo server: the idiomatic bufferevent way.
 *
 * An evconnlistener accepts; each connection is a socket bufferevent whose
 * read callback moves the whole input buffer to the output buffer
 * (evbuffer_add_buffer, no copy of the bytes: the chains move).  The
 * bufferevent writes when its output has data and frees itself on EOF or
 * error.  One thread, the default backend (epoll here). */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <string.h>

#include "common.h"

static void on_read(struct bufferevent *bev, void *arg) {
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
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
    bufferevent_enable(bev, EV_READ | EV_WRITE);
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
        evconnlistener_new_bind(base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                BENCH_BACKLOG, (struct sockaddr *)&sa, sizeof sa);
    if (!l) {
        perror("libevent-echo: listen");
        return 1;
    }
    bench_listening(port);
    event_base_dispatch(base);
    return 0;
}
