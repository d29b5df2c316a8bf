/* crest_connect() to a name: resolve, then race the addresses (Happy
 * Eyeballs, RFC 8305), then hand the winning socket to the connection.
 *
 * The connection exists from crest_connect() on, CONNECTING, so the caller
 * can write, close or set data on it at once.  Until an attempt wins, its
 * fd is a placeholder: a timerfd that is never armed, so epoll reports
 * nothing for it and every path of conn*.c that touches c->io.fd finds a
 * valid fd.  The winner is then put in the placeholder's place with dup3()
 * (which also drops the placeholder's epoll registration), registered with
 * epoll again under the same watcher, and fed as writable: conn_io.c's
 * connect_done() takes it from there as for any connect.  So struct
 * crest_conn gains nothing; the dial hangs off the connection's extra
 * block, which a close before the win finds (crest__dial_cancel).
 *
 * Attempts are plain io watchers on their own sockets (fd registry kind
 * CONNECT, origin "crest_connect attempt"), with the connection's options
 * applied before connect() so the window scale matches. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "conn_int.h"

#define MAX_ATTEMPTS 8 /* in flight at once (RFC 8305 needs 2 or 3) */

static const char attempt_origin[] = "crest_connect attempt";

struct attempt {
    struct crest__dial *d;
    crest_io_t *io;           /* NULL: slot free */
    int fd;
    const crest_addr_t *addr;
};

struct crest__dial {
    struct crest_conn *c;
    crest_resolve_req_t *req; /* the lookup, until it answers */
    crest_timer_t *timer;     /* the Connection Attempt Delay */
    crest_addr_t *addrs;      /* in the order to try */
    size_t n, next;
    unsigned in_flight;
    int last_err;
    uint32_t delay_ms;
    struct attempt att[MAX_ATTEMPTS];
    char host[];
};

/* ---- the end of a dial ------------------------------------------------------ */

static void attempt_close(struct attempt *a) {
    if (!a->io)
        return;
    crest_io_stop(a->io);
    a->io = NULL;
    crest_fd_close_at(a->fd, attempt_origin);
    a->fd = -1;
    a->d->in_flight--;
}

static void dial_free(struct crest__dial *d) {
    for (unsigned i = 0; i < MAX_ATTEMPTS; i++)
        attempt_close(&d->att[i]);
    if (d->req)
        crest_resolve_cancel(d->req);
    crest_timer_destroy(d->timer);
    d->c->peer.extra->dial = NULL;
    free(d->addrs);
    free(d);
}

void crest__dial_cancel(struct crest_conn *c) {
    dial_free(c->peer.extra->dial);
}

/* Every address failed, or the lookup did: the connection closes. */
static void dial_fail(struct crest__dial *d, crest_close_reason_t why, int err) {
    struct crest_conn *c = d->c;
    dial_free(d);
    crest__conn_connect_failed(c, why, err);
}

/* a connected: its socket becomes the connection's. */
static void dial_win(struct crest__dial *d, struct attempt *a) {
    struct crest_conn *c = d->c;
    int fd = a->fd;
    const crest_addr_t *addr = a->addr;
    crest_io_stop(a->io);
    a->io = NULL;
    d->in_flight--;
    /* The placeholder's fd number now holds the socket; closing the
     * placeholder's file took it out of epoll. */
    if (dup3(fd, c->io.fd, O_CLOEXEC) < 0 || crest__io_reattach(&c->io) < 0) {
        int err = errno;
        crest_fd_close_at(fd, attempt_origin);
        dial_fail(d, CREST_CLOSE_CONNECT_FAILED, err ? err : EIO);
        return;
    }
    crest_fd_close_at(fd, attempt_origin);
    a->fd = -1;
    crest__conn_set_peer(c, (const struct sockaddr *)&addr->ss, addr->len);
    dial_free(d); /* the other attempts, the timer */
    crest_io_feed(&c->io, CREST_IO_WRITABLE); /* connect_done() opens it */
}

/* ---- attempts ------------------------------------------------------------------ */

static void start_next(struct crest__dial *d);

static void on_attempt(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    (void)events;
    struct attempt *a = arg;
    struct crest__dial *d = a->d;
    int err = crest_sockopt_get_error(a->fd);
    if (err < 0)
        err = -err;
    if (err == 0) {
        dial_win(d, a);
        return;
    }
    d->last_err = err;
    attempt_close(a);
    start_next(d); /* a failure starts the next at once (RFC 8305 5.) */
}

/* Open and connect the next address; 0 started, else its errno. */
static int attempt_start(struct crest__dial *d, struct attempt *a, const crest_addr_t *addr) {
    crest_loop_t *loop = d->c->io.loop;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int rc = crest__fd_register(fd, CREST_FD_CONNECT, loop, attempt_origin);
    if (rc < 0) {
        close(fd);
        return -rc;
    }
    rc = crest__conn_apply_opts(fd, &d->c->ep->opts, true);
    if (rc == 0 && connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 &&
        errno != EINPROGRESS)
        rc = -errno;
    if (rc == 0)
        rc = crest_io_start(loop, fd, CREST_IO_WRITABLE, on_attempt, a, &a->io);
    if (rc < 0) {
        crest_fd_close_at(fd, attempt_origin);
        return -rc;
    }
    a->d = d;
    a->fd = fd;
    a->addr = addr;
    d->in_flight++;
    return 0;
}

static void start_next(struct crest__dial *d) {
    while (d->next < d->n) {
        struct attempt *a = NULL;
        for (unsigned i = 0; i < MAX_ATTEMPTS && !a; i++)
            if (!d->att[i].io)
                a = &d->att[i];
        if (!a)
            break; /* all slots busy: the timer comes back */
        const crest_addr_t *addr = &d->addrs[d->next++];
        int err = attempt_start(d, a, addr);
        if (err == 0) {
            crest_timer_start(d->timer, d->delay_ms, 0);
            return;
        }
        d->last_err = err;
        if (!crest__is_connect_failure(err) && err != EAFNOSUPPORT) {
            dial_fail(d, CREST_CLOSE_CONNECT_FAILED, err); /* local trouble */
            return;
        }
    }
    if (d->in_flight == 0)
        dial_fail(d, CREST_CLOSE_CONNECT_FAILED, d->last_err ? d->last_err : ECONNREFUSED);
}

static void on_delay(crest_timer_t *t, void *arg) {
    (void)t;
    start_next(arg);
}

/* ---- the lookup ------------------------------------------------------------------ */

/* RFC 8305 4.: alternate the families, starting with the first answer's. */
static int order_addresses(struct crest__dial *d, const crest_resolve_answer_t *ans) {
    d->addrs = calloc(ans->count, sizeof *d->addrs);
    if (!d->addrs)
        return -ENOMEM;
    int first = ans->addrs[0].ss.ss_family;
    size_t i = 0, j = 0, n = 0;
    while (n < ans->count) {
        while (i < ans->count && ans->addrs[i].ss.ss_family != first)
            i++;
        if (i < ans->count)
            d->addrs[n++] = ans->addrs[i++];
        while (j < ans->count && ans->addrs[j].ss.ss_family == first)
            j++;
        if (j < ans->count)
            d->addrs[n++] = ans->addrs[j++];
    }
    d->n = n;
    return 0;
}

static void on_resolved(int status, const crest_resolve_answer_t *ans, void *arg) {
    struct crest__dial *d = arg;
    d->req = NULL;
    if (status < 0) {
        crest_log(CREST_LOG_WARN, "connect %s: %s", d->host, ans->reason);
        dial_fail(d, CREST_CLOSE_RESOLVE_FAILED, -status);
        return;
    }
    if (order_addresses(d, ans) < 0) {
        dial_fail(d, CREST_CLOSE_NO_MEMORY, ENOMEM);
        return;
    }
    start_next(d);
}

/* ---- crest_connect() ------------------------------------------------------------ */

int crest__dial_start(crest_loop_t *loop, const char *host, uint16_t port,
                      const crest_conn_opts_t *opts, const crest_handler_t *handler, void *ctx,
                      crest_conn_t **connp) {
    crest_resolver_t *r = opts ? opts->resolver : NULL;
    int rc = r ? 0 : crest_loop_resolver(loop, &r);
    if (rc < 0)
        return rc;
    if (opts && opts->family != AF_UNSPEC && opts->family != AF_INET && opts->family != AF_INET6)
        return -EINVAL;
    struct crest__endpoint *ep;
    if ((rc = crest__endpoint_new(handler, ctx, opts, true, &ep)) < 0)
        return rc;
    size_t hlen = strlen(host);
    struct crest__dial *d = calloc(1, sizeof *d + hlen + 1);
    int ph = -1;
    if (!d) {
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(d->host, host, hlen + 1);
    d->delay_ms = ep->opts.happy_eyeballs_delay_ms ? ep->opts.happy_eyeballs_delay_ms : 250;
    for (unsigned i = 0; i < MAX_ATTEMPTS; i++)
        d->att[i].fd = -1;
    if ((rc = crest_timer_create(loop, on_delay, d, &d->timer)) < 0)
        goto fail;
    ph = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ph < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = crest__fd_register(ph, CREST_FD_CONNECT, loop, "crest_connect")) < 0) {
        close(ph);
        ph = -1;
        goto fail;
    }
    if ((rc = crest_resolve(r, host, port, ep->opts.family, on_resolved, d, &d->req)) < 0)
        goto fail;
    struct crest_conn *c = crest__conn_create(loop, ph, ep, CREST_CONN_CONNECTING);
    if (!c) {
        crest_resolve_cancel(d->req);
        rc = -ENOMEM;
        goto fail;
    }
    struct crest__conn_extra *x = crest__conn_extra(c);
    crest__endpoint_release(ep); /* the connection holds it now */
    d->c = c;
    *connp = c;
    if (!x) { /* the call succeeded: the failure reaches on_close */
        crest_resolve_cancel(d->req);
        crest_timer_destroy(d->timer);
        free(d);
        crest__conn_connect_failed(c, CREST_CLOSE_NO_MEMORY, ENOMEM);
        return 0;
    }
    x->dial = d;
    crest__conn_arm_timer(c); /* connect_timeout_ms: the lookup and every attempt */
    return 0;
fail:
    if (ph >= 0)
        crest_fd_close(ph);
    if (d && d->timer)
        crest_timer_destroy(d->timer);
    free(d);
    crest__endpoint_release(ep);
    return rc;
}
