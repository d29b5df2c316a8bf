/* crest-min: the smallest raw echo server on crest's public API, with the
 * loop on the main thread (no worker thread, no options, no statistics).
 *
 *   crest-min PORT
 *
 * Not a peer in the comparison: crest-echo is crest's server.  This one
 * separates what the library costs from what the sample skeleton adds
 * (crest-echo runs its loop on a worker thread, and a process with a
 * second thread takes glibc's slower cancellable path on every read,
 * sendmsg and epoll_wait). */
#include <crest/crest.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static ssize_t echo(crest_conn_t *c, const uint8_t *data, size_t len) {
    if (crest_conn_write(c, data, len) == -ENOMEM)
        return -CREST_CLOSE_NO_MEMORY;
    return (ssize_t)len;
}

static void on_term(crest_signal_t *sig, int signo, void *loop) {
    (void)sig;
    (void)signo;
    crest_loop_stop(loop);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: crest-min PORT\n");
        return 2;
    }
    crest_loop_t *loop;
    crest_listener_t *l;
    crest_signal_t *s1, *s2;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%s", argv[1]);
    crest_handler_t h = {.on_data = echo};
    if (crest_loop_create(&loop) < 0 || crest_listen(loop, addr, NULL, &h, NULL, &l) < 0) {
        fprintf(stderr, "crest-min: cannot listen on %s\n", addr);
        return 1;
    }
    crest_signal_start(loop, SIGTERM, on_term, loop, &s1);
    crest_signal_start(loop, SIGINT, on_term, loop, &s2);
    printf("listening on %s\n", addr);
    fflush(stdout);
    crest_loop_run(loop);
    crest_signal_stop(s1);
    crest_signal_stop(s2);
    crest_listener_close(l);
    crest_loop_close_all(loop, true);
    crest_loop_destroy(loop);
    return 0;
}
