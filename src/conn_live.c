/* Changing a live connection: its options and its handler (conn.h,
 * "changing a live connection").
 *
 * A connection's handler and options live in its endpoint, shared with the
 * other connections of its listener.  The first change gives it a copy of
 * its own (own_endpoint); the copy keeps a reference to the shared one, in
 * whose listener counters the connection still counts (conn_int.h).
 *
 * Inside on_data/on_message (the connection's GATHER flag is set then) a
 * change of framing or handler sets CREST__C_REFRAMED: the delivery loop
 * stops after the current message and parses the rest of the input with
 * the new settings (conn_io.c, deliver_bytes).  Made from anywhere else,
 * buffered input is delivered anew on the next iteration, as after a
 * resume.  Nothing here calls the handler. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn_int.h"

int crest_conn_get_opts(const crest_conn_t *c, crest_conn_opts_t *out) {
    if (!c || !out)
        return -EINVAL;
    *out = c->ep->opts;
    return 0;
}

/* The connection's endpoint, for it alone to change: the shared one is
 * copied (the connection's reference to it passes to the copy).  NULL if
 * out of memory. */
static struct crest__endpoint *own_endpoint(struct crest_conn *c) {
    struct crest__endpoint *ep = c->ep;
    if (ep->refs == 1)
        return ep; /* a copy already, an outbound connection's, or the
                      last of a closed listener's */
    struct crest__endpoint *copy = malloc(sizeof *copy);
    if (!copy)
        return NULL;
    *copy = *ep;
    memset(&copy->lstats, 0, sizeof copy->lstats); /* counted in the origin */
    copy->refs = 1;
    copy->origin = ep;
    c->ep = copy;
    return copy;
}

static bool is_tcp(int fd) {
    int domain = 0;
    socklen_t len = sizeof domain;
    return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
           (domain == AF_INET || domain == AF_INET6);
}

/* One integer socket option to set, and what it was. */
struct setting {
    int level, name, value, old;
};

/* Apply the socket options of `to` that differ from `from`.  The integer
 * ones are read first and set back if a later one is refused, so that a
 * failed call changes nothing; the buffer sizes go last (setting a
 * positive size is never refused: the kernel clamps it). */
static int apply_socket_opts(int fd, const crest_conn_opts_t *from, const crest_conn_opts_t *to) {
    struct setting v[6];
    int n = 0;
    bool ka = from->keepalive != to->keepalive ||
              (to->keepalive && (from->keepalive_idle_s != to->keepalive_idle_s ||
                                 from->keepalive_interval_s != to->keepalive_interval_s ||
                                 from->keepalive_count != to->keepalive_count));
    bool ut = from->user_timeout_ms != to->user_timeout_ms;
    bool nd = from->nodelay != to->nodelay;
    /* TCP only, as at creation (crest__conn_apply_opts). */
    if ((ka || ut || nd) && is_tcp(fd)) {
        if (ka && to->keepalive) {
            /* The timings first, as crest_sockopt_set_keepalive() does: 0
             * leaves the socket's value. */
            if (to->keepalive_idle_s)
                v[n++] = (struct setting){IPPROTO_TCP, TCP_KEEPIDLE, to->keepalive_idle_s, 0};
            if (to->keepalive_interval_s)
                v[n++] = (struct setting){IPPROTO_TCP, TCP_KEEPINTVL, to->keepalive_interval_s, 0};
            if (to->keepalive_count)
                v[n++] = (struct setting){IPPROTO_TCP, TCP_KEEPCNT, to->keepalive_count, 0};
        }
        if (ka)
            v[n++] = (struct setting){SOL_SOCKET, SO_KEEPALIVE, to->keepalive, 0};
        if (ut)
            v[n++] = (struct setting){IPPROTO_TCP, TCP_USER_TIMEOUT, (int)to->user_timeout_ms, 0};
        if (nd)
            v[n++] = (struct setting){IPPROTO_TCP, TCP_NODELAY, to->nodelay, 0};
    }
    for (int i = 0; i < n; i++) {
        socklen_t len = sizeof v[i].old;
        if (getsockopt(fd, v[i].level, v[i].name, &v[i].old, &len) < 0)
            return -errno; /* nothing set yet */
    }
    for (int i = 0; i < n; i++) {
        if (setsockopt(fd, v[i].level, v[i].name, &v[i].value, sizeof v[i].value) < 0) {
            int rc = -errno;
            while (i-- > 0)
                (void)setsockopt(fd, v[i].level, v[i].name, &v[i].old, sizeof v[i].old);
            return rc;
        }
    }
    int rc;
    if (to->sndbuf > 0 && to->sndbuf != from->sndbuf &&
        (rc = crest_sockopt_set_sndbuf(fd, to->sndbuf)) < 0)
        return rc;
    if (to->rcvbuf > 0 && to->rcvbuf != from->rcvbuf &&
        (rc = crest_sockopt_set_rcvbuf(fd, to->rcvbuf)) < 0)
        return rc;
    return 0;
}

static bool same_framing(const crest_framing_t *a, const crest_framing_t *b) {
    return a->kind == b->kind && a->header_bytes == b->header_bytes &&
           a->little_endian == b->little_endian && a->line_cr_counts == b->line_cr_counts &&
           a->max_message == b->max_message;
}

/* Change the handler (if handler is not NULL) and the options (if opts
 * is not NULL), checked together. */
static int change(struct crest_conn *c, const crest_handler_t *handler, void *ctx,
                  const crest_conn_opts_t *opts) {
    /* As crest_conn_flush_notify() and the writes: once a close is asked
     * for (a close asked for while CONNECTING leaves the state as it is). */
    if (c->state == CREST_CONN_CLOSING || c->state == CREST_CONN_CLOSED ||
        (c->flags & CREST__C_CLOSE_REQUESTED))
        return -ENOTCONN;
    const crest_handler_t *h = handler ? handler : &c->ep->handler;
    crest_conn_opts_t o;
    size_t max_buffered;
    int rc = crest__conn_check_opts(h, opts ? opts : &c->ep->opts, c->ep->outbound, &o,
                                    &max_buffered);
    if (rc < 0)
        return rc;
    if (opts && (o.sndbuf < 0 || o.rcvbuf < 0 || o.keepalive_idle_s < 0 ||
                 o.keepalive_interval_s < 0 ||
                 o.keepalive_count < 0 || o.user_timeout_ms > INT_MAX))
        return -EINVAL;
    struct crest__endpoint *ep = own_endpoint(c);
    if (!ep)
        return -ENOMEM;
    if (opts && (rc = apply_socket_opts(c->io.fd, &ep->opts, &o)) < 0)
        return rc; /* the copy, if one was made, is the same as the original */

    bool reframed = handler || !same_framing(&o.framing, &ep->opts.framing);
    bool was_paused = crest__conn_paused(c);
    if (opts && o.nodelay != ep->opts.nodelay && (c->flags & CREST__C_TCP))
        crest__conn_set_nagle(c, !o.nodelay); /* insight's Nagle sample */
    ep->opts = o;
    ep->max_buffered = max_buffered;
    ep->max_output = crest__conn_max_output(&o);
    if (handler) {
        ep->handler = *handler;
        ep->ctx = ctx;
    }
    /* Deadlines count from the same moments, against the new values: an
     * earlier one is pushed up the heap now, a later one is re-keyed when
     * the old key surfaces, one turned off leaves the heap. */
    crest__conn_arm_timer(c);
    if (c->flags & CREST__C_GATHER) {
        /* Inside on_data/on_message: the delivery loop picks up the rest. */
        if (reframed)
            c->flags |= CREST__C_REFRAMED;
    } else if (reframed || (was_paused && !crest__conn_paused(c))) {
        /* Buffered input (a partial message under the old framing, or
         * input a pause held) is delivered anew on the next iteration. */
        crest__conn_resume_input(c);
    }
    return 0;
}

int crest_conn_set_opts(crest_conn_t *c, const crest_conn_opts_t *opts) {
    if (!c || !opts)
        return -EINVAL;
    return change(c, NULL, NULL, opts);
}

int crest_conn_set_handler(crest_conn_t *c, const crest_handler_t *handler, void *ctx) {
    if (!c || !handler)
        return -EINVAL;
    return change(c, handler, ctx, NULL);
}

int crest_conn_upgrade(crest_conn_t *c, const crest_handler_t *handler, void *ctx,
                       const crest_conn_opts_t *opts) {
    if (!c || !handler)
        return -EINVAL;
    return change(c, handler, ctx, opts);
}
