/* connect_rtt: connection setup time for a new client, as a client sees
 * it through a proxy: from the start of connect() to the first echoed
 * byte of a small message, one fresh connection at a time.
 *
 *   connect_rtt HOST PORT COUNT [SIZE [PAUSE_US]]   (defaults: 16 bytes, 500 us)
 *
 * Each iteration: socket, TCP_NODELAY, a blocking connect(), one write of
 * SIZE bytes, reads until all SIZE bytes came back (checked byte for
 * byte), close.  Through a proxy, connect() returns once the proxy's
 * kernel accepted the handshake; the first echoed byte needs the proxy to
 * have accepted, reached a backend (connected, or taken a warm
 * connection) and relayed both ways, so "first byte" is the figure that
 * a warm pool can cut.  The pause between iterations lets a proxy refill
 * what it keeps warm, as spaced-out new clients would.  The loop does the
 * same syscalls whatever the proxy, so its own cost cancels in a ratio.
 *
 * The client closes first (its side holds TIME_WAIT).
 *
 * Prints one line:
 *   connect_rtt: count=N errors=E first_p50_us=.. first_p90_us=.. first_p99_us=..
 *   first_mean_us=.. first_max_us=.. connect_p50_us=.. connect_p99_us=.. seconds=..
 * Exit status: 0 clean, 1 any error, 2 usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 4096

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The value at quantile q of n sorted values (nearest rank). */
static double pct(const double *v, long n, double q) {
    long i = (long)(q * (double)n + 0.5) - 1;
    if (i < 0)
        i = 0;
    if (i >= n)
        i = n - 1;
    return v[i];
}

/* Only the first error is described; the rest are counted. */
static int described;

static void fail(const char *what, int err) {
    if (!described++)
        fprintf(stderr, "connect_rtt: %s: %s (the first error; the rest are counted)\n", what,
                err ? strerror(err) : "failed");
}

/* One connection; 0 and the two times, or -1 (the first reason on stderr). */
static int one(const struct sockaddr_in *sa, const char *msg, size_t size, double *connect_us,
               double *first_us) {
    char buf[MAX_SIZE];
    double t0 = now_us();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("socket", errno);
        return -1;
    }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    int rc = -1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        fail("connect", errno);
        goto out;
    }
    *connect_us = now_us() - t0;
    if (send(fd, msg, size, MSG_NOSIGNAL) != (ssize_t)size) {
        fail("send", errno);
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = recv(fd, buf + got, size - got, 0);
        if (n <= 0) {
            fail(n == 0 ? "EOF before the whole echo" : "recv", n == 0 ? 0 : errno);
            goto out;
        }
        if (got == 0)
            *first_us = now_us() - t0;
        got += (size_t)n;
    }
    if (memcmp(buf, msg, size) != 0) {
        fail("the echo differs from what was sent", 0);
        goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: connect_rtt HOST PORT COUNT [SIZE [PAUSE_US]]\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    long count = atol(argv[3]);
    size_t size = argc > 4 ? (size_t)atol(argv[4]) : 16;
    long pause_us = argc > 5 ? atol(argv[5]) : 500;
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 || count < 1 || count > 1000000 ||
        size < 1 || size > MAX_SIZE || pause_us < 0) {
        fprintf(stderr, "connect_rtt: bad arguments\n");
        return 2;
    }
    char msg[MAX_SIZE];
    for (size_t i = 0; i < size; i++)
        msg[i] = (char)('a' + i % 26);
    double *first = calloc((size_t)count, sizeof *first);
    double *conn = calloc((size_t)count, sizeof *conn);
    if (!first || !conn) {
        perror("connect_rtt: calloc");
        return 1;
    }
    long n = 0, errors = 0;
    double start = now_us();
    for (long i = 0; i < count; i++) {
        if (one(&sa, msg, size, &conn[n], &first[n]) == 0)
            n++;
        else
            errors++;
        if (pause_us) {
            struct timespec ts = {pause_us / 1000000, (pause_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
    }
    double seconds = (now_us() - start) / 1e6;
    printf("connect_rtt: count=%ld errors=%ld", n, errors);
    if (n > 0) {
        double sum = 0;
        for (long i = 0; i < n; i++)
            sum += first[i];
        qsort(first, (size_t)n, sizeof *first, cmp);
        qsort(conn, (size_t)n, sizeof *conn, cmp);
        printf(" first_p50_us=%.1f first_p90_us=%.1f first_p99_us=%.1f first_mean_us=%.1f"
               " first_max_us=%.1f connect_p50_us=%.1f connect_p99_us=%.1f",
               pct(first, n, 0.5), pct(first, n, 0.9), pct(first, n, 0.99), sum / (double)n,
               first[n - 1], pct(conn, n, 0.5), pct(conn, n, 0.99));
    }
    printf(" seconds=%.3f\n", seconds);
    free(first);
    free(conn);
    return errors || n == 0 ? 1 : 0;
}
