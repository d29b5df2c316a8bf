/* watchdog_cost: what the blocked-loop watchdog costs per echoed message.
 * A loopback ping-pong of 20,000 4-byte messages on one loop, on the main
 * thread, insight's per-callback timing OFF (callgrind's slowness could
 * switch AUTO timing on and blur the figures); "on" starts the watchdog
 * with a 10 s threshold, so that it never reports.  Compare the two:
 *
 *   gcc -O2 -Iinclude -o /tmp/watchdog_cost bench/tools/watchdog_cost.c \
 *       .libs/libcrest.a -lpthread
 *   valgrind --tool=callgrind /tmp/watchdog_cost off
 *   valgrind --tool=callgrind /tmp/watchdog_cost on
 *
 * (docs/latency-watchdog.md has the figures.) */
#include <arpa/inet.h>
#include <crest/crest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MESSAGES 20000

static ssize_t on_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    crest_conn_write(c, d, n);
    return (ssize_t)n;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "on")) {
        crest_watchdog_opts_t o;
        crest_watchdog_opts_init(&o);
        o.threshold_ms = 10000;
        if (crest_watchdog_start(&o) != 0)
            return 1;
    }
    crest_loop_t *loop;
    if (crest_loop_create(&loop) != 0)
        return 1;
    crest_insight_opts_t io;
    crest_loop_get_insight_opts(loop, &io);
    io.timing = CREST_TIMING_OFF;
    crest_loop_set_insight(loop, &io);
    crest_handler_t h = {.on_data = on_data, .name = "echo"};
    crest_listener_t *l;
    if (crest_listen(loop, "127.0.0.1:0", NULL, &h, NULL, &l) != 0)
        return 2;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_port = htons((uint16_t)crest_listener_port(l));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)&sa, sizeof sa) != 0)
        return 3;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char b[8];
    for (int i = 0; i < MESSAGES; i++) {
        if (write(fd, "ping", 4) != 4)
            return 4;
        size_t got = 0;
        while (got < 4) {
            crest_loop_run_once(loop, 0);
            ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
            if (r > 0)
                got += (size_t)r;
        }
    }
    close(fd);
    crest_listener_close(l);
    for (int i = 0; i < 10; i++)
        crest_loop_run_once(loop, 0);
    crest_loop_destroy(loop);
    crest_watchdog_stop();
    return 0;
}
