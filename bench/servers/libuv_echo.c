/* libuv echo server, written the way a libuv user who cares about speed
 * writes one, and the way Node.js's stream layer writes to a socket
 * (StreamBase::Write tries uv_try_write before it makes a write request):
 *
 * - One read buffer for the whole loop, handed out by the alloc callback
 *   for every read.  libuv keeps no reference to the buffer after the read
 *   callback (uv_read_cb: the callee owns it, libuv does not reuse it), so
 *   it may be the same buffer every time: nothing is allocated per read.
 * - The reply goes out with uv_try_write, straight from that buffer: one
 *   write(2), no request, no completion callback, no change to the
 *   handle's poll state (a completed uv_write costs a callback on the next
 *   loop pass and an epoll_ctl).
 * - Only what the kernel does not take at once is copied into a uv_write
 *   request, and reading stops until that write completes, so a client
 *   that does not read cannot make the server buffer without bound.
 *   uv_try_write refuses (UV_EAGAIN) while a uv_write is queued, so bytes
 *   never overtake each other.
 *
 * One thread, the default loop.  The common way (malloc per read, a write
 * request per reply: libuv's test/echo-server.c) is kept as
 * libuv_echo_malloc.c. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common.h"

#define READ_BUF 65536 /* libuv's suggested size, and the other peers' */

static char rbuf[READ_BUF];

/* A write request with the unsent rest of one reply behind it. */
typedef struct {
    uv_write_t req;
    char data[];
} pending_t;

static void on_close(uv_handle_t *h) {
    free(h);
}

static void close_stream(uv_stream_t *s) {
    if (!uv_is_closing((uv_handle_t *)s))
        uv_close((uv_handle_t *)s, on_close);
}

static void alloc_buf(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void after_write(uv_write_t *req, int status) {
    uv_stream_t *s = req->handle;
    free(req);
    if (status < 0) {
        close_stream(s); /* an error, or UV_ECANCELED: closing already */
        return;
    }
    if (!uv_is_closing((uv_handle_t *)s) && uv_read_start(s, alloc_buf, on_read) != 0)
        close_stream(s);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    if (n <= 0) {
        if (n < 0)
            close_stream(s); /* UV_EOF or an error; 0 is EAGAIN */
        return;
    }
    uv_buf_t reply = uv_buf_init(buf->base, (unsigned)n);
    int w = uv_try_write(s, &reply, 1);
    if (w == n)
        return;
    if (w == UV_EAGAIN)
        w = 0;
    else if (w < 0) {
        close_stream(s);
        return;
    }
    size_t rest = (size_t)n - (size_t)w;
    pending_t *p = malloc(sizeof *p + rest);
    if (!p) {
        close_stream(s);
        return;
    }
    memcpy(p->data, buf->base + w, rest);
    uv_buf_t b = uv_buf_init(p->data, (unsigned)rest); /* uv_write copies the array */
    if (uv_write(&p->req, s, &b, 1, after_write) != 0) {
        free(p);
        close_stream(s);
        return;
    }
    uv_read_stop(s); /* resumed by after_write */
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c)
        return;
    uv_tcp_init(server->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, on_close);
        return;
    }
    uv_tcp_nodelay(c, 1);
    if (uv_read_start((uv_stream_t *)c, alloc_buf, on_read) != 0)
        uv_close((uv_handle_t *)c, on_close);
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "libuv-echo");
    bench_exit_on_sigterm();
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    uv_tcp_init(loop, &server);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, BENCH_BACKLOG, on_connection);
    if (rc != 0) {
        fprintf(stderr, "libuv-echo: listen: %s\n", uv_strerror(rc));
        return 1;
    }
    bench_listening(port);
    return uv_run(loop, UV_RUN_DEFAULT);
}
