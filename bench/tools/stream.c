/* stream: push bulk data through an echo server on one connection and
 * count what comes back.
 *
 *   stream HOST PORT SECONDS [WARMUP]
 *
 * One nonblocking socket, poll() for both directions: 64 KiB writes
 * whenever the socket takes them, reads whenever data is there.  After
 * WARMUP seconds (default 0.5) the bytes echoed back are counted for
 * SECONDS.  The client's own socket buffers are left to the kernel
 * (autotuned), so the server's settings are what the run varies.
 *
 * Prints: stream: seconds=.. bytes=.. mb_per_s=..  (MB = 10^6 bytes, one way) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: stream HOST PORT SECONDS [WARMUP]\n");
        return 2;
    }
    double secs = atof(argv[3]), warm = argc == 5 ? atof(argv[4]) : 0.5;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("stream: connect");
        return 1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char out[65536], in[65536];
    memset(out, 'b', sizeof out);
    double start = now_s(), t_measure = start + warm, t_end = t_measure + secs;
    unsigned long long counted = 0;
    int measuring = 0;
    for (;;) {
        double t = now_s();
        if (!measuring && t >= t_measure)
            measuring = 1;
        if (t >= t_end)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
        if (poll(&p, 1, 100) < 0 && errno != EINTR)
            return 1;
        if (p.revents & POLLOUT) {
            ssize_t n = write(fd, out, sizeof out);
            if (n < 0 && errno != EAGAIN) {
                perror("stream: write");
                return 1;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            for (;;) {
                ssize_t n = read(fd, in, sizeof in);
                if (n > 0) {
                    if (measuring)
                        counted += (unsigned long long)n;
                    continue;
                }
                if (n == 0) {
                    fprintf(stderr, "stream: the server closed\n");
                    return 1;
                }
                if (errno == EAGAIN)
                    break;
                perror("stream: read");
                return 1;
            }
        }
    }
    double el = now_s() - t_measure;
    printf("stream: seconds=%.3f bytes=%llu mb_per_s=%.1f\n", el, counted, counted / el / 1e6);
    close(fd);
    return 0;
}
