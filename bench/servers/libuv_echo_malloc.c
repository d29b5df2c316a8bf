/* libuv echo server, the common way: the style of libuv's own
 * test/echo-server.c and of most libuv tutorials.  uv_read_start with an
 * alloc callback that mallocs the suggested size (64 KiB) for every read,
 * and a uv_write per read whose request owns that buffer until the write
 * completes.  One thread, the default loop.
 *
 * Kept beside bench/servers/libuv_echo.c (the fast way: one reused read
 * buffer and uv_try_write) because this is how much libuv code is written;
 * bench/run names it "libuv, malloc per read" and compares crest with the
 * fast one.  What it costs over the fast way, per message: a 64 KiB malloc
 * and free (glibc trims the heap now and then: brk), a write request, and
 * libuv's write completion path: the callback runs on the next loop pass,
 * and uv__drain stops POLLOUT even though it was never started, which
 * queues the handle for an epoll_ctl (one per message). */
#include <stdlib.h>
#include <uv.h>

#include "common.h"

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} write_req_t;

static void on_close(uv_handle_t *h) {
    free(h);
}

static void alloc_buf(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void after_write(uv_write_t *req, int status) {
    write_req_t *wr = (write_req_t *)req;
    uv_handle_t *h = (uv_handle_t *)req->handle;
    free(wr->buf.base);
    free(wr);
    if (status < 0 && !uv_is_closing(h))
        uv_close(h, on_close);
}

static void after_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    if (n <= 0) {
        free(buf->base);
        if (n < 0 && !uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, on_close); /* UV_EOF or an error */
        return;
    }
    write_req_t *wr = malloc(sizeof *wr);
    wr->buf = uv_buf_init(buf->base, (unsigned)n);
    if (uv_write(&wr->req, s, &wr->buf, 1, after_write) != 0) {
        free(buf->base);
        free(wr);
        uv_close((uv_handle_t *)s, on_close);
    }
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    uv_tcp_init(server->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, on_close);
        return;
    }
    uv_tcp_nodelay(c, 1);
    uv_read_start((uv_stream_t *)c, alloc_buf, after_read);
}

int main(int argc, char **argv) {
    int port = bench_port(argc, argv, "libuv-echo-malloc");
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
        fprintf(stderr, "libuv-echo-malloc: listen: %s\n", uv_strerror(rc));
        return 1;
    }
    bench_listening(port);
    return uv_run(loop, UV_RUN_DEFAULT);
}
