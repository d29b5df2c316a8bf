/* Socket tuning: thin wrappers that return -errno, read back what the
 * kernel really applied, and give one error for "not TCP". */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "internal.h"

static int set_int(int fd, int level, int name, int value) {
    if (setsockopt(fd, level, name, &value, sizeof value) < 0)
        return -errno;
    return 0;
}

static int get_int(int fd, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    if (getsockopt(fd, level, name, &value, &len) < 0)
        return -errno;
    return value;
}

/* An IPPROTO_TCP option on a socket that is not TCP fails with EOPNOTSUPP
 * (AF_UNIX: its family has no option handler) or ENOPROTOOPT (UDP, raw:
 * the IP layer does not know the level).  Both mean "not TCP" to a caller;
 * checking the protocol first would cost a syscall on every call. */
static int tcp_err(int rc) {
    return rc == -ENOPROTOOPT ? -EOPNOTSUPP : rc;
}

static int set_tcp(int fd, int name, int value) {
    return tcp_err(set_int(fd, IPPROTO_TCP, name, value));
}

/* Set, then read back: Linux doubles the request and clamps it to
 * [minimum, wmem_max/rmem_max * 2]. */
static int set_buf(int fd, int name, int bytes) {
    if (bytes < 0)
        return -EINVAL;
    int rc = set_int(fd, SOL_SOCKET, name, bytes);
    if (rc < 0)
        return rc;
    return get_int(fd, SOL_SOCKET, name);
}

int crest_sockopt_set_sndbuf(int fd, int bytes) {
    return set_buf(fd, SO_SNDBUF, bytes);
}

int crest_sockopt_set_rcvbuf(int fd, int bytes) {
    return set_buf(fd, SO_RCVBUF, bytes);
}

int crest_sockopt_get_sndbuf(int fd) {
    return get_int(fd, SOL_SOCKET, SO_SNDBUF);
}

int crest_sockopt_get_rcvbuf(int fd) {
    return get_int(fd, SOL_SOCKET, SO_RCVBUF);
}

int crest_sockopt_set_nodelay(int fd, bool on) {
    return set_tcp(fd, TCP_NODELAY, on);
}

int crest_sockopt_get_nodelay(int fd) {
    int rc = tcp_err(get_int(fd, IPPROTO_TCP, TCP_NODELAY));
    return rc < 0 ? rc : rc != 0;
}

int crest_sockopt_set_keepalive(int fd, bool on, int idle_s, int interval_s, int count) {
    if (!on)
        return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 0);
    if (idle_s < 0 || interval_s < 0 || count < 0)
        return -EINVAL;
    /* The timings first: if one is refused (out of range, not TCP),
     * keepalive is not left half configured and on. */
    int rc;
    if (idle_s && (rc = set_tcp(fd, TCP_KEEPIDLE, idle_s)) < 0)
        return rc;
    if (interval_s && (rc = set_tcp(fd, TCP_KEEPINTVL, interval_s)) < 0)
        return rc;
    if (count && (rc = set_tcp(fd, TCP_KEEPCNT, count)) < 0)
        return rc;
    return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
}

int crest_sockopt_set_user_timeout(int fd, unsigned ms) {
    /* The kernel takes an int; 0 restores the system default. */
    if (ms > INT_MAX)
        return -EINVAL;
    return set_tcp(fd, TCP_USER_TIMEOUT, (int)ms);
}

int crest_sockopt_set_cork(int fd, bool on) {
    return set_tcp(fd, TCP_CORK, on);
}

int crest_sockopt_set_reuseaddr(int fd, bool on) {
    return set_int(fd, SOL_SOCKET, SO_REUSEADDR, on);
}

int crest_sockopt_set_reuseport(int fd, bool on) {
    return set_int(fd, SOL_SOCKET, SO_REUSEPORT, on);
}

int crest_sockopt_set_linger_abort(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0)
        return -errno;
    return 0;
}

int crest_sockopt_get_error(int fd) {
    /* SO_ERROR is positive; -errno only if getsockopt itself fails. */
    return get_int(fd, SOL_SOCKET, SO_ERROR);
}
