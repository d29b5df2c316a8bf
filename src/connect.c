/* Outbound connections: a nonblocking connect whose outcome reaches the
 * handler as on_open, or as on_close with CONNECT_FAILED / CONNECT_TIMEOUT.
 *
 * Failures of the connect itself (refused, unreachable, no such socket
 * path) are always reported through on_close, even when connect() fails at
 * once (a Unix socket can): the handler sees one path for them.  Only
 * invalid arguments and local resource errors return -errno. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn_int.h"

static bool is_connect_failure(int err) {
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
    if (loop->destroying)
        return -ESHUTDOWN; /* a reconnect from on_close during crest_loop_destroy */
    struct crest__endpoint *ep;
    int rc = crest__endpoint_new(handler, ctx, opts, true, &ep);
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
        if (err != EINPROGRESS && err != EINTR && !is_connect_failure(err)) {
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
    } else if (is_connect_failure(err)) {
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

int crest_connect(crest_loop_t *loop, const char *addr, const crest_conn_opts_t *opts,
                  const crest_handler_t *handler, void *ctx, crest_conn_t **connp) {
    crest_addr_t a;
    if (!addr)
        return -EINVAL;
    int rc = crest_addr_parse(addr, &a);
    if (rc < 0)
        return rc;
    return crest_connect_addr(loop, &a, NULL, opts, handler, ctx, connp);
}
