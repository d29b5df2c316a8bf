/* Outbound connections: a nonblocking connect whose outcome reaches the
 * handler as on_open, or as on_close with CONNECT_FAILED / CONNECT_TIMEOUT.
 * Also adopted ones (crest_conn_adopt): a socket connected by someone else.
 *
 * Failures of the connect itself (refused, unreachable, no such socket
 * path) are always reported through on_close, even when connect() fails at
 * once (a Unix socket can): the handler sees one path for them.  Only
 * invalid arguments and local resource errors return -errno. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include "conn_int.h"

/* Shared with dial.c's attempts. */
bool crest__is_connect_failure(int err) {
    switch (err) {
    case ECONNREFUSED:
    case ENETUNREACH:
    case EHOSTUNREACH:
    case ETIMEDOUT:
    case ENOENT:       /* Unix: no such socket path */
    case EADDRNOTAVAIL: /* out of local ports for this address */
    case ECONNRESET:
    case EAGAIN:       /* Unix: the listener's backlog is full */
        return true;
    default:
        return false;
    }
}

int crest_connect_addr(crest_loop_t *loop, const crest_addr_t *addr, const crest_addr_t *bind_addr,
                       const crest_conn_opts_t *opts, const crest_handler_t *handler, void *ctx,
                       crest_conn_t **connp) {
    if (!loop || !addr || !handler || !connp)
        return -EINVAL;
    /* A reconnect from on_close during crest_loop_destroy() or a
     * crest_loop_shutdown(): refused, so that both end. */
    int rc = crest__loop_may_start(loop);
    if (rc < 0)
        return rc;
    struct crest__endpoint *ep;
    rc = crest__endpoint_new(handler, ctx, opts, true, &ep);
    if (rc < 0)
        return rc;
    int family = addr->ss.ss_family;
    bool tcp = family != AF_UNIX;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        crest__endpoint_release(ep);
        return rc;
    }
    if ((rc = crest__fd_register(fd, CREST_FD_CONNECT, loop, CREST_HERE)) < 0) {
        close(fd); /* not registered: crest_fd_close() would refuse it */
        crest__endpoint_release(ep);
        return rc;
    }
    /* Buffer sizes before connect, so the window scale is negotiated for
     * them. */
    if ((rc = crest__conn_apply_opts(fd, &ep->opts, tcp)) < 0)
        goto fail;
    if (bind_addr) {
        int on = 1;
        /* Let the kernel pick the source port at connect time, per
         * destination, so one source address serves more than the
         * ephemeral range's worth of destinations. */
        if (tcp)
            (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
        if (bind(fd, (const struct sockaddr *)&bind_addr->ss, bind_addr->len) < 0) {
            rc = -errno;
            goto fail;
        }
    }
    int err = 0;
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        err = errno;
        if (err != EINPROGRESS && err != EINTR && !crest__is_connect_failure(err)) {
            rc = -err;
            goto fail;
        }
    }
    struct crest_conn *c = crest__conn_create(loop, fd, ep, CREST_CONN_CONNECTING);
    crest__endpoint_release(ep); /* the connection holds it now */
    if (!c) {
        crest_fd_close(fd);
        return -ENOMEM;
    }
    crest__conn_set_peer(c, (const struct sockaddr *)&addr->ss, addr->len);
    if (err == 0) {
        /* Connected at once (Unix sockets can): open on the first event. */
    } else if (crest__is_connect_failure(err)) {
        c->flags |= CREST__C_DEAD;
        crest__conn_request_close(c, CREST_CLOSE_CONNECT_FAILED, err);
        crest_io_feed(&c->io, CREST__IO_KICK);
    } else {
        crest__conn_arm_timer(c);
    }
    *connp = c;
    return 0;
fail:
    crest_fd_close(fd);
    crest__endpoint_release(ep);
    return rc;
}

/* "host:port" with a DNS name for host: 0 and the parts, or -EINVAL. */
static int split_name(const char *addr, char *host, size_t size, uint16_t *port) {
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= size)
        return -EINVAL;
    for (const char *p = addr; p < colon; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return -EINVAL; /* a name has no ':' (IPv6 literals are [..]) */
    char *end;
    errno = 0;
    unsigned long v = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || v == 0 || v > 65535 || !isdigit((unsigned char)colon[1]))
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    *port = (uint16_t)v;
    return 0;
}

int crest_connect(crest_loop_t *loop, const char *addr, const crest_conn_opts_t *opts,
                  const crest_handler_t *handler, void *ctx, crest_conn_t **connp) {
    crest_addr_t a;
    if (!addr)
        return -EINVAL;
    int rc = crest_addr_parse(addr, &a);
    if (rc == 0)
        return crest_connect_addr(loop, &a, NULL, opts, handler, ctx, connp);
    char host[256];
    uint16_t port;
    if (split_name(addr, host, sizeof host, &port) < 0)
        return rc; /* neither a literal address nor a name */
    if (!loop || !handler || !connp)
        return -EINVAL;
    if ((rc = crest__loop_may_start(loop)) < 0)
        return rc;
    return crest__dial_start(loop, host, port, opts, handler, ctx, connp);
}

/* ---- adopting a connected socket ----------------------------------------- */

/* Is fd a stream socket crest may take, listening or not as asked?  Only
 * reads: nothing is changed before every check has passed.  0, -EBADF,
 * -ENOTSOCK, -EINVAL (not SOCK_STREAM, or listening when it should not
 * be, or the reverse), -EEXIST (crest owns it: the registry knows every fd
 * crest owns, this loop's or another's).  Shared with
 * crest_listener_adopt(). */
int crest__check_adoptable(int fd, bool want_listening) {
    if (fd < 0 || fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno; /* ENOTSOCK */
    if (type != SOCK_STREAM)
        return -EINVAL;
    len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        return -errno;
    if ((listening != 0) != want_listening)
        return -EINVAL; /* the other adopt call is for it */
    if (crest_fd_lookup(fd, NULL, NULL, NULL) == 0)
        return -EEXIST;
    return 0;
}

int crest_conn_adopt(crest_loop_t *loop, int fd, const crest_conn_opts_t *opts,
                     const crest_handler_t *handler, void *ctx, crest_conn_t **connp) {
    if (!loop || !handler || !connp)
        return -EINVAL;
    int rc = crest__loop_may_start(loop);
    if (rc < 0)
        return rc;
    if ((rc = crest__check_adoptable(fd, false)) < 0)
        return rc;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) < 0)
        return -errno; /* ENOTCONN */
    struct crest__endpoint *ep;
    if ((rc = crest__endpoint_new(handler, ctx, opts, true, &ep)) < 0)
        return rc;
    if ((rc = crest__fd_register(fd, CREST_FD_ACCEPTED, loop, "crest_conn_adopt")) < 0) {
        crest__endpoint_release(ep);
        return rc;
    }
    /* From here a failure puts the fd back as it was, as far as it can:
     * its flags are restored; socket options already applied stay. */
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    bool tcp = peer.ss_family != AF_UNIX;
    if (fl < 0 || fdfl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = crest__conn_apply_opts(fd, &ep->opts, tcp)) < 0)
        goto fail;
    /* CONNECTING until the first event: on_open then runs from the loop
     * (conn_io.c's connect_done, which also takes a pending socket error),
     * never inside this call.  The registration with epoll reports the
     * socket's readiness as it is now, so input already waiting is read
     * then; the fed event makes sure the open comes even if the socket is
     * not writable yet. */
    struct crest_conn *c = crest__conn_create(loop, fd, ep, CREST_CONN_CONNECTING);
    if (!c) {
        rc = -ENOMEM;
        goto fail;
    }
    crest__endpoint_release(ep); /* the connection holds it now */
    crest__conn_set_peer(c, (const struct sockaddr *)&peer, peer_len);
    crest_io_feed(&c->io, CREST_IO_WRITABLE);
    *connp = c;
    return 0;
fail:
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl);
    if (fdfl >= 0)
        (void)fcntl(fd, F_SETFD, fdfl);
    (void)crest_fd_release_at(fd, "crest_conn_adopt");
    crest__endpoint_release(ep);
    return rc;
}
