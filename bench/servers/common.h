/* Shared by the peer servers: the port from the command line, and the
 * one socket option every server in the comparison sets. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

/* Accept backlog of every peer: crest's default. */
#define BENCH_BACKLOG 511

static inline int bench_port(int argc, char **argv, const char *name) {
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s PORT   (listens on 127.0.0.1:PORT)\n", name);
        exit(2);
    }
    return atoi(argv[1]);
}

/* crest sets TCP_NODELAY on accepted sockets by default, and so does Go:
 * every C peer does the same so that no server is measured with Nagle. */
static inline void bench_nodelay(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* bench/run waits for this line (crest-echo prints the same). */
static inline void bench_listening(int port) {
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
}

/* SIGTERM ends the process with a normal exit, so that callgrind writes
 * its profile and perf sees an ordinary end. */
#include <signal.h>
#include <unistd.h>

static void bench_on_term(int sig) {
    (void)sig;
    _exit(0);
}

static inline void bench_exit_on_sigterm(void) {
    signal(SIGTERM, bench_on_term);
    signal(SIGINT, bench_on_term);
    signal(SIGPIPE, SIG_IGN);
}

#endif
