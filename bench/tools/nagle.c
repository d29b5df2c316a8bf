/* nagle: a request sent as two small writes, then a wait for the whole
 * reply; the time from the first write to the last reply byte.
 *
 *   nagle HOST PORT COUNT [HEAD BODY [OPTIONS]]   (defaults: 16 + 48 bytes)
 *
 * OPTIONS: "nodelay" sets TCP_NODELAY on the client too; "line" sends a
 * line (HEAD + BODY bytes, the last one "\n") and expects the line
 * server's "echo: " + line + "\n".
 *
 * The client keeps Nagle on (the default), as most clients do.  Against
 * an echo server with Nagle on too, the server echoes the head at once,
 * then holds the echo of the body until the head's echo is acknowledged,
 * and the client delays that ACK (it has nothing to send): the reply
 * stalls for the delayed-ACK timeout, 40 ms at least on Linux.  With
 * TCP_NODELAY on the server the body's echo leaves at once.
 *
 * Prints: nagle: count=N p50_us=.. p90_us=.. max_us=.. mean_us=.. */
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

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc == 5) {
        fprintf(stderr, "usage: nagle HOST PORT COUNT [HEAD BODY [nodelay] [line]]\n");
        return 2;
    }
    int count = atoi(argv[3]);
    size_t head = argc >= 6 ? (size_t)atoi(argv[4]) : 16;
    size_t body = argc >= 6 ? (size_t)atoi(argv[5]) : 48;
    int client_nodelay = 0, line = 0;
    for (int i = 6; i < argc; i++) {
        client_nodelay |= strcmp(argv[i], "nodelay") == 0;
        line |= strcmp(argv[i], "line") == 0;
    }
    if (head + body == 0 || head + body > 4000)
        return 2;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("nagle: connect");
        return 1;
    }
    if (client_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char req[4096], rep[4096];
    memset(req, 'x', sizeof req);
    size_t reply = head + body;
    if (line) {
        req[head + body - 1] = '\n';
        reply += 6; /* "echo: " */
    }
    double *lat = calloc((size_t)count, sizeof *lat);
    double sum = 0;
    for (int i = 0; i < count; i++) {
        double t0 = now_us();
        if (write(fd, req, head) != (ssize_t)head || write(fd, req + head, body) != (ssize_t)body) {
            perror("nagle: write");
            return 1;
        }
        size_t got = 0;
        while (got < reply) {
            ssize_t n = read(fd, rep, sizeof rep);
            if (n <= 0) {
                fprintf(stderr, "nagle: read: %s\n", n == 0 ? "EOF" : strerror(errno));
                return 1;
            }
            got += (size_t)n;
        }
        lat[i] = now_us() - t0;
        sum += lat[i];
    }
    qsort(lat, (size_t)count, sizeof *lat, cmp);
    printf("nagle: count=%d head=%zu body=%zu client_nodelay=%d line=%d p50_us=%.1f p90_us=%.1f min_us=%.1f max_us=%.1f "
           "mean_us=%.1f\n",
           count, head, body, client_nodelay, line, lat[count / 2], lat[count * 9 / 10], lat[0], lat[count - 1],
           sum / count);
    close(fd);
    return 0;
}
