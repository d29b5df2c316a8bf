/* hold: open N idle TCP connections to a server and keep them open.
 *
 *   hold HOST PORT N
 *
 * Connects in batches (blocking connects, so a full accept backlog only
 * slows us down instead of failing), prints "held N" on stdout when every
 * connection is established, then sleeps until stdin is closed or it gets
 * SIGTERM, and closes them all.  Nothing is ever sent: the server sees N
 * connections at rest. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: hold HOST PORT N\n");
        return 2;
    }
    int n = atoi(argv[3]);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "hold: connection %d: %s\n", i, strerror(errno));
            return 1;
        }
        /* Let the server's accept loop keep up: its backlog is finite. */
        if (i % 200 == 199)
            usleep(2000);
    }
    printf("held %d\n", n);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return 0;
}
