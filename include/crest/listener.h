/* crest: listeners.
 *
 * A listener accepts connections on an IPv4, IPv6 or Unix-domain address
 * and hands each to its protocol handler.  Accepting uses accept4 with
 * SOCK_NONBLOCK|SOCK_CLOEXEC, in a loop until EAGAIN, at most
 * accept_batch per event (the rest is served next iteration).
 *
 * Out of fds (EMFILE/ENFILE): the listener keeps one spare fd open.  It
 * closes the spare, accepts the pending connection and closes it at once,
 * reopens the spare, counts and logs it (at most once a second), and goes
 * on serving the connections it has.  It never spins.
 *
 * Connection limit: past max_conns, new connections are accepted and closed
 * at once (reason CONN_LIMIT), and counted.
 */
#ifndef CREST_LISTENER_H
#define CREST_LISTENER_H

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "proxy.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_listener crest_listener_t;

typedef struct crest_listen_opts {
    int backlog;            /* default 511 */
    bool reuseaddr;         /* default true (TCP) */
    bool reuseport;         /* SO_REUSEPORT: one listener per loop/process */
    bool ipv6_only;         /* IPV6_V6ONLY for "[::]" */
    unsigned max_conns;     /* 0: no limit */
    unsigned accept_batch;  /* accepts per event; default 64 */
    unsigned unix_mode;     /* chmod of a Unix socket path; 0: leave */
    unsigned proxy_protocol; /* CREST_PROXY_V1|V2|ANY: expect a PROXY
                                header first (proxy.h); 0: off; other
                                bits: -EINVAL */
    crest_conn_opts_t conn; /* applied to every accepted connection;
                               sndbuf/rcvbuf are set on the listener before
                               listen() and inherited */
} crest_listen_opts_t;

void crest_listen_opts_init(crest_listen_opts_t *opts);

/* Bind and listen on addr (see addr.h), with handler and its ctx for every
 * accepted connection.  opts may be NULL; it is copied.  A Unix socket path
 * left by a dead process is replaced; one a live server listens on is not:
 * -EADDRINUSE (crest connects to find out, so that server sees one
 * connection that closes at once; a socket file no one listens on counts
 * as stale).  0 and *lp, or -errno: -EINVAL for invalid options (among
 * them max_output set below high_water, see conn.h); -ESHUTDOWN
 * while crest_loop_destroy() runs (from an on_close it causes) or a
 * crest_loop_shutdown() is under way. */
int crest_listen(crest_loop_t *loop, const char *addr, const crest_listen_opts_t *opts,
                 const crest_handler_t *handler, void *ctx, crest_listener_t **lp);

/* Take over a socket that is already bound and listening (SO_ACCEPTCONN):
 * one inherited from a parent, passed by systemd (activation.h), or
 * made by the application.  crest sets it nonblocking and close-on-exec,
 * records it in the fd registry (kind CREST_FD_LISTENER, origin
 * "crest_listener_adopt"), applies opts->conn's socket options that
 * accepted sockets inherit (TCP_NODELAY, keepalive, sndbuf/rcvbuf), and
 * accepts on it with handler and ctx as crest_listen() does.  The binding
 * options (backlog, reuseaddr, reuseport, ipv6_only, unix_mode) are
 * ignored: the socket's creator set them.  opts may be NULL; it is copied.
 * On success crest owns fd: crest_listener_close() (or the loop's
 * destroy) closes it; a Unix socket file is not unlinked (it is not
 * crest's).  On failure fd stays the caller's, open, with its flags as
 * they were (socket options already applied stay).  Loop thread only; no
 * callback runs inside the call.  0 and *lp, or -EINVAL (NULL argument,
 * not SOCK_STREAM, not listening, bad opts), -EBADF (not an open fd),
 * -ENOTSOCK, -EEXIST (crest owns fd already: the fd registry holds it; an
 * fd the application registered itself, crest_fd_release() it first),
 * -ESHUTDOWN (crest_loop_destroy() or crest_loop_shutdown() under way),
 * -ENOMEM. */
int crest_listener_adopt(crest_loop_t *loop, int fd, const crest_listen_opts_t *opts,
                         const crest_handler_t *handler, void *ctx, crest_listener_t **lp);

/* Stop accepting and close the listening socket (and unlink a Unix path,
 * if the socket file there is still the one it bound).
 * Connections already accepted are not affected.  May be called from any
 * callback of this loop, on_open and on_close of this listener's own
 * connections included: no further connection is accepted (those still in
 * the backlog are reset by the kernel) and no callback runs inside this
 * call.  l must not be used after it (its memory goes once the current
 * iteration's callbacks have returned). */
void crest_listener_close(crest_listener_t *l);

/* The bound address, e.g. with the port the kernel picked for port 0. */
int crest_listener_address(const crest_listener_t *l, char *buf, size_t size);
int crest_listener_port(const crest_listener_t *l);
int crest_listener_fd(const crest_listener_t *l);

/* Effective SO_SNDBUF/SO_RCVBUF of the listening socket (inherited by
 * accepted sockets): what the kernel applied, not what was asked. */
int crest_listener_sndbuf(const crest_listener_t *l);
int crest_listener_rcvbuf(const crest_listener_t *l);

typedef struct crest_listener_stats {
    uint64_t accepted;
    uint64_t active;          /* accepted connections open now */
    uint64_t refused_limit;   /* closed at once: max_conns reached */
    uint64_t emfile;          /* dropped while out of fds */
    uint64_t accept_errors;   /* other accept4 failures, and accepted fds
                                 the fd registry could not record (out of
                                 memory: closed at once, logged) */
    /* The kernel's accept queue (TCP listeners; TCP_INFO of the listening
     * socket), as the insight sampler last saw it (insight.h: every
     * sample_ms while insight is enabled; 0 before the first sample and
     * for Unix listeners). */
    uint32_t queue_len;       /* connections waiting to be accepted */
    uint32_t queue_max;       /* the backlog the kernel applies */
    uint32_t queue_peak;      /* the longest queue sampled */
} crest_listener_stats_t;

void crest_listener_get_stats(const crest_listener_t *l, crest_listener_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
