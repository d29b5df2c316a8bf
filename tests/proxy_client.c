/* proxy_client: sends a pattern to an echo server (through crest-proxy in
 * tests/proxy.sh) and checks every byte that comes back.
 *
 *   proxy_client PORT BYTES [READ_CHUNK [READ_DELAY_US]]
 *
 * Sends BYTES of a pattern that depends on each byte's offset (a byte
 * lost, repeated or moved shows), shuts down its writing side once all is
 * sent (half-close: the echo must still all come back), reads until EOF
 * and compares.  READ_CHUNK and READ_DELAY_US make a slow reader.  Prints
 * one line "sent N received N mismatches N: ok|..." and exits 0 only if
 * every byte came back right, followed by EOF; 1 otherwise. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static uint8_t pattern(uint64_t i) {
    return (uint8_t)(i + (i >> 8) * 31 + (i >> 16) * 7 + (i >> 24) * 3);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: proxy_client PORT BYTES [READ_CHUNK [READ_DELAY_US]]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    uint64_t total = strtoull(argv[2], NULL, 10);
    size_t chunk = argc > 3 ? strtoul(argv[3], NULL, 10) : 256 * 1024;
    useconds_t delay = argc > 4 ? (useconds_t)strtoul(argv[4], NULL, 10) : 0;
    if (chunk == 0 || chunk > 1 << 20)
        chunk = 256 * 1024;

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        printf("connect: %s\n", strerror(errno));
        return 1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);

    static uint8_t out[256 * 1024], in[1 << 20];
    uint64_t sent = 0, got = 0, bad = 0, first_bad = UINT64_MAX;
    bool shut = false, eof = false;
    const char *err = NULL;
    int err_no = 0;
    while (!eof) {
        if (sent == total && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (shut ? 0 : POLLOUT)};
        if (poll(&p, 1, 30000) <= 0) {
            err = "no progress for 30 s";
            break;
        }
        if ((p.revents & POLLOUT) && !shut) {
            size_t n = total - sent < sizeof out ? (size_t)(total - sent) : sizeof out;
            for (size_t k = 0; k < n; k++)
                out[k] = pattern(sent + k);
            ssize_t w = send(fd, out, n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) {
                err = "send";
                err_no = errno;
                break;
            }
            if (w > 0)
                sent += (uint64_t)w;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(fd, in, chunk, 0);
            if (r == 0) {
                eof = true;
            } else if (r < 0 && errno != EAGAIN) {
                err = "recv";
                err_no = errno;
                break;
            } else if (r > 0) {
                for (ssize_t k = 0; k < r; k++) {
                    if (in[k] != pattern(got + (uint64_t)k)) {
                        if (first_bad == UINT64_MAX)
                            first_bad = got + (uint64_t)k;
                        bad++;
                    }
                }
                got += (uint64_t)r;
                if (delay)
                    usleep(delay);
            }
        }
    }
    close(fd);
    printf("sent %" PRIu64 " received %" PRIu64 " mismatches %" PRIu64, sent, got, bad);
    if (bad)
        printf(" (first at %" PRIu64 ")", first_bad);
    if (err)
        printf(": error: %s%s%s\n", err, err_no ? ": " : "", err_no ? strerror(err_no) : "");
    else if (got != total || bad)
        printf(": wrong\n");
    else
        printf(": ok\n");
    return !err && got == total && !bad ? 0 : 1;
}
