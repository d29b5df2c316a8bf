/* Listeners: bind, listen, and the accept loop.
 *
 * The listening socket is watched edge-triggered like everything else, so
 * each event accepts until EAGAIN; a batch cap keeps one busy listener from
 * starving the connections, and the rest is fed to the next iteration.
 *
 * EMFILE/ENFILE: the pending connection cannot be accepted, and with an
 * edge-triggered watch it would sit in the backlog unnoticed.  A spare fd
 * (/dev/null) is closed to make room, the pending connections are accepted
 * and closed at once (the client sees a clean close instead of a hang),
 * and the spare is reopened (libuv's answer). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn_int.h"

struct crest_listener {
    struct crest_io io;         /* first: the io layer frees the listener
                                   through it (see crest_listener_close) */
    crest_loop_t *loop;
    struct crest__endpoint *ep;
    crest_addr_t addr;          /* bound address (with the real port) */
    unsigned accept_batch;
    int reserve_fd;             /* spare fd for EMFILE recovery, or -1 */
    bool tcp;
    bool closed;                /* crest_listener_close() ran; the memory
                                   stays until this iteration ends */
    dev_t path_dev;             /* Unix: the socket file bind() made, so */
    ino_t path_ino;             /* that close unlinks that file only */
    uint64_t emfile_logged_ns;
    struct crest_timer retry;   /* after a transient accept4 error */
    struct crest_listener *prev, *next;
};

_Static_assert(offsetof(struct crest_listener, io) == 0,
               "freeing the listener's io frees the listener");

#define ACCEPT_RETRY_MS 10u

void crest_listen_opts_init(crest_listen_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->backlog = 511;
    o->reuseaddr = true;
    o->accept_batch = 64;
    crest_conn_opts_init(&o->conn);
}

static int open_reserve(struct crest_listener *l) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = crest__fd_register(fd, CREST_FD_RESERVE, l->loop, CREST_HERE);
    if (rc < 0) {
        close(fd); /* not registered: crest_fd_close() would refuse it */
        return rc;
    }
    l->reserve_fd = fd;
    return 0;
}

/* Out of fds: drop what is pending, using the spare fd as room. */
static void shed_pending(struct crest_listener *l, int err) {
    crest_loop_t *loop = l->loop;
    unsigned dropped = 0;
    int end_err = EMFILE;
    if (l->reserve_fd >= 0) {
        crest_fd_close(l->reserve_fd);
        l->reserve_fd = -1;
        for (;;) {
            int fd = accept4(l->io.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                end_err = errno;
                break;
            }
            (void)crest_sockopt_set_linger_abort(fd);
            close(fd); /* never registered: it lived for two syscalls */
            dropped++;
        }
        (void)open_reserve(l); /* if this fails, the next accept event retries */
    }
    if (dropped == 0 && end_err == EAGAIN)
        return; /* accept4 says EMFILE before it looks: nothing was pending */
    l->ep->lstats.emfile += dropped ? dropped : 1;
    loop->conn_stats.accept_shed += dropped ? dropped : 1;
    if (loop->now_ns - l->emfile_logged_ns >= 1000000000ull || !l->emfile_logged_ns) {
        l->emfile_logged_ns = loop->now_ns;
        char where[CREST_ADDR_STRLEN];
        crest_addr_format(&l->addr, where, sizeof where);
        crest_log(CREST_LOG_WARN,
                  "listener %s: out of file descriptors (%s): dropped %u pending connection%s "
                  "(%llu in total); serving the %llu open",
                  where, crest_strerror(err), dropped, dropped == 1 ? "" : "s",
                  (unsigned long long)l->ep->lstats.emfile,
                  (unsigned long long)l->ep->lstats.active);
    }
}

static void refuse(struct crest_listener *l, int fd) {
    crest_loop_t *loop = l->loop;
    (void)crest_sockopt_set_linger_abort(fd);
    crest_fd_close(fd);
    l->ep->lstats.refused_limit++;
    loop->conn_stats.close_reasons[CREST_CLOSE_CONN_LIMIT]++;
}

/* The registry could not record an accepted fd (-ENOMEM): crest_fd_close()
 * would refuse it later and leak it, so drop the connection now, with a
 * plain close. */
static void unrecorded(struct crest_listener *l, int fd, int err) {
    (void)crest_sockopt_set_linger_abort(fd);
    close(fd);
    l->ep->lstats.accept_errors++;
    l->loop->conn_stats.accept_errors++;
    l->loop->conn_stats.close_reasons[CREST_CLOSE_NO_MEMORY]++;
    char where[CREST_ADDR_STRLEN];
    crest_addr_format(&l->addr, where, sizeof where);
    crest_log(CREST_LOG_WARN, "listener %s: accepted fd %d not recorded in the fd registry (%s): "
              "connection dropped", where, fd, crest_strerror(err));
}

void crest__listener_on_io(crest_io_t *io, unsigned events, void *arg) {
    CREST__UNUSED(io);
    CREST__UNUSED(events);
    struct crest_listener *l = arg;
    crest_loop_t *loop = l->loop;
    struct crest__endpoint *ep = l->ep;
    if (CREST__UNLIKELY(l->reserve_fd < 0))
        (void)open_reserve(l); /* lost at an EMFILE: fds may be back */
    loop->ins.fig.accept_wakeups += loop->ins.on;
    for (unsigned n = 0; n < l->accept_batch; n++) {
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        int fd = accept4(l->io.fd, (struct sockaddr *)&peer, &peer_len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            switch (errno) {
            case EAGAIN:
                return;
            case EINTR:
            case ECONNABORTED: /* the peer gave up while queued */
                continue;
            case EMFILE:
            case ENFILE:
                shed_pending(l, -errno);
                return;
            default:
                ep->lstats.accept_errors++;
                loop->conn_stats.accept_errors++;
                crest_log(CREST_LOG_WARN, "accept4 failed: %s; retrying in %u ms",
                          crest_strerror(-errno), ACCEPT_RETRY_MS);
                /* No new edge will come for what is queued: look again soon,
                 * without spinning if the error persists. */
                if (!crest_timer_active(&l->retry))
                    crest__timer_start_at(&l->retry, loop->now_ns + ACCEPT_RETRY_MS * 1000000ull, 0);
                return;
            }
        }
        loop->ins.fig.accepted += loop->ins.on; /* taken from the queue */
        int rc = crest__fd_register(fd, CREST_FD_ACCEPTED, loop, CREST_HERE);
        if (CREST__UNLIKELY(rc < 0)) {
            unrecorded(l, fd, rc);
            continue;
        }
        if (!l->tcp)
            crest__conn_set_oobinline(fd); /* not inherited by Unix sockets */
        if (ep->max_conns && ep->lstats.active >= ep->max_conns) {
            refuse(l, fd);
            continue;
        }
        struct crest_conn *c = crest__conn_create(loop, fd, ep, CREST_CONN_OPEN);
        if (!c) {
            (void)crest_sockopt_set_linger_abort(fd);
            crest_fd_close(fd);
            loop->conn_stats.close_reasons[CREST_CLOSE_NO_MEMORY]++;
            continue;
        }
        crest__conn_set_peer(c, (struct sockaddr *)&peer, peer_len);
        ep->lstats.accepted++;
        ep->lstats.active++;
        crest__conn_open(c);
        crest__conn_settle(c);
        /* on_open, or the on_close of a connection it closed, may have
         * closed the listener: its memory is still valid, but not its fd or
         * endpoint, and nothing more is to be accepted. */
        if (l->closed)
            return;
    }
    /* Batch used up: more may be waiting, and no new edge will say so. */
    crest_io_feed(&l->io, CREST_IO_READABLE);
}

static void on_retry(crest_timer_t *t, void *arg) {
    CREST__UNUSED(t);
    struct crest_listener *l = arg;
    crest_io_feed(&l->io, CREST_IO_READABLE);
}

/* Does anyone listen on this Unix socket path?  A connect tells: refused
 * means the file is stale.  0 if stale (or gone), -EADDRINUSE if a server
 * listens there (it sees one connection that closes at once), or the
 * connect's -errno when it cannot tell (EACCES, EPROTOTYPE, ...). */
static int unix_path_stale(const crest_addr_t *a) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0 ? -EADDRINUSE : -errno;
    close(fd); /* never registered: it lived for two syscalls */
    switch (rc) {
    case -ECONNREFUSED: /* a socket file no one listens on */
    case -ENOENT:       /* gone since the stat */
        return 0;
    case -EAGAIN:       /* a live server with a full backlog */
        return -EADDRINUSE;
    default:
        return rc;
    }
}

static int make_socket(struct crest_listener *l, const crest_listen_opts_t *o) {
    int family = l->addr.ss.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = crest__fd_register(fd, CREST_FD_LISTENER, l->loop, CREST_HERE);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    int on = 1;
    if (l->tcp) {
        if (o->reuseaddr && (rc = crest_sockopt_set_reuseaddr(fd, true)) < 0)
            goto fail;
        if (o->reuseport && (rc = crest_sockopt_set_reuseport(fd, true)) < 0)
            goto fail;
        if (family == AF_INET6 && o->ipv6_only &&
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) {
            rc = -errno;
            goto fail;
        }
    } else {
        /* A socket file left by a dead server would make bind fail: replace
         * it, but never one a live server listens on. */
        const struct sockaddr_un *un = (const struct sockaddr_un *)&l->addr.ss;
        struct stat st;
        if (un->sun_path[0] && stat(un->sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            if ((rc = unix_path_stale(&l->addr)) < 0)
                goto fail;
            unlink(un->sun_path);
        }
    }
    /* Accepted sockets inherit buffer sizes, TCP_NODELAY and keepalive from
     * the listener: set once here, not once per connection. */
    if ((rc = crest__conn_apply_opts(fd, &o->conn, l->tcp)) < 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&l->addr.ss, l->addr.len) < 0 ||
        listen(fd, o->backlog > 0 ? o->backlog : 511) < 0) {
        rc = -errno;
        goto fail;
    }
    if (!l->tcp) {
        const char *path = ((const struct sockaddr_un *)&l->addr.ss)->sun_path;
        struct stat st;
        if (path[0] && stat(path, &st) == 0) {
            l->path_dev = st.st_dev;
            l->path_ino = st.st_ino;
        }
        if (o->unix_mode && chmod(path, o->unix_mode) < 0) {
            rc = -errno;
            goto fail;
        }
    }
    /* Read back the port the kernel picked for port 0. */
    l->addr.len = sizeof l->addr.ss;
    if (l->tcp && getsockname(fd, (struct sockaddr *)&l->addr.ss, &l->addr.len) < 0) {
        rc = -errno;
        goto fail;
    }
    return fd;
fail:
    crest_fd_close(fd);
    return rc;
}

/* A listener around fd (already listening), for both crest_listen() and
 * crest_listener_adopt().  On failure the fd is left open, as it was
 * given. */
static int listener_new(crest_loop_t *loop, const crest_listen_opts_t *o,
                        const crest_handler_t *handler, void *ctx, struct crest_listener **out) {
    if (o->proxy_protocol & ~(unsigned)CREST_PROXY_ANY)
        return -EINVAL; /* a version crest does not know */
    struct crest_listener *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->loop = loop;
    l->reserve_fd = -1;
    crest__timer_init(loop, &l->retry, on_retry, l, false);
    l->accept_batch = o->accept_batch ? o->accept_batch : 64;
    int rc = crest__endpoint_new(handler, ctx, &o->conn, false, &l->ep);
    if (rc < 0) {
        free(l);
        return rc;
    }
    l->ep->max_conns = o->max_conns;
    l->ep->proxy = o->proxy_protocol & CREST_PROXY_ANY;
    *out = l;
    return 0;
}

static void listener_free(struct crest_listener *l) {
    if (l->reserve_fd >= 0)
        crest_fd_close(l->reserve_fd);
    crest__endpoint_release(l->ep);
    free(l);
}

/* Watch the listening socket fd and link the listener into the loop. */
static void netstat_base(crest_loop_t *loop);

static int listener_start(struct crest_listener *l, int fd) {
    crest_loop_t *loop = l->loop;
    int rc;
    if ((rc = open_reserve(l)) < 0 ||
        (rc = crest__io_init(loop, &l->io, fd, CREST_IO_READABLE, crest__listener_on_io, l, true)) < 0)
        return rc;
    /* crest_io_stop() then frees the listener (l->io is its first member):
     * at once, or after the iteration when closed from a callback. */
    l->io.heap_owned = true;
    /* The accept path's netstat counters count from the loop's first
     * listener (or the first sample after a reset). */
    if (l->tcp && loop->ins.on && !loop->ins.netstat_base_set)
        netstat_base(loop);
    l->next = loop->listeners;
    if (loop->listeners)
        loop->listeners->prev = l;
    loop->listeners = l;
    return 0;
}

int crest_listen(crest_loop_t *loop, const char *addr, const crest_listen_opts_t *opts,
                 const crest_handler_t *handler, void *ctx, crest_listener_t **lp) {
    if (!loop || !addr || !handler || !lp)
        return -EINVAL;
    int rc = crest__loop_may_start(loop);
    if (rc < 0)
        return rc;
    crest_listen_opts_t o;
    if (opts)
        o = *opts;
    else
        crest_listen_opts_init(&o);
    crest_addr_t a;
    if ((rc = crest_addr_parse(addr, &a)) < 0)
        return rc;
    struct crest_listener *l;
    if ((rc = listener_new(loop, &o, handler, ctx, &l)) < 0)
        return rc;
    l->addr = a;
    l->tcp = l->addr.ss.ss_family != AF_UNIX;
    int fd = make_socket(l, &o);
    if (fd < 0) {
        listener_free(l);
        return fd;
    }
    if ((rc = listener_start(l, fd)) < 0) {
        crest_fd_close(fd);
        listener_free(l);
        return rc;
    }
    *lp = l;
    return 0;
}

int crest_listener_adopt(crest_loop_t *loop, int fd, const crest_listen_opts_t *opts,
                         const crest_handler_t *handler, void *ctx, crest_listener_t **lp) {
    if (!loop || !handler || !lp)
        return -EINVAL;
    int rc = crest__loop_may_start(loop);
    if (rc < 0)
        return rc;
    /* Checks first, changing nothing. */
    if ((rc = crest__check_adoptable(fd, true)) < 0)
        return rc;
    crest_listen_opts_t o;
    if (opts)
        o = *opts;
    else
        crest_listen_opts_init(&o);
    struct crest_listener *l;
    if ((rc = listener_new(loop, &o, handler, ctx, &l)) < 0)
        return rc;
    l->addr.len = sizeof l->addr.ss;
    if (getsockname(fd, (struct sockaddr *)&l->addr.ss, &l->addr.len) < 0) {
        rc = -errno;
        listener_free(l);
        return rc;
    }
    l->tcp = l->addr.ss.ss_family != AF_UNIX;
    /* path_ino stays 0: the socket file is not ours to unlink at close. */
    if ((rc = crest__fd_register(fd, CREST_FD_LISTENER, loop, "crest_listener_adopt")) < 0) {
        listener_free(l);
        return rc;
    }
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) {
        rc = -errno;
        goto fail;
    }
    /* What accepted sockets inherit (TCP_NODELAY, keepalive, buffer
     * sizes), as crest_listen() sets it; binding options (reuseaddr,
     * reuseport, backlog, ipv6_only, unix_mode) are the creator's. */
    if ((rc = crest__conn_apply_opts(fd, &o.conn, l->tcp)) < 0 || (rc = listener_start(l, fd)) < 0)
        goto fail;
    *lp = l;
    return 0;
fail:
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl);
    if (fdfl >= 0)
        (void)fcntl(fd, F_SETFD, fdfl);
    (void)crest_fd_release_at(fd, "crest_listener_adopt");
    listener_free(l);
    return rc;
}

/* The accept loop may be this call's caller (on_open, or the on_close of a
 * connection closed there): as for connections, nothing is freed during
 * dispatch.  The socket, the spare fd and the endpoint go now; the memory
 * goes with the io watchers stopped in this iteration. */
void crest_listener_close(crest_listener_t *l) {
    if (!l || l->closed)
        return;
    crest_loop_t *loop = l->loop;
    int fd = l->io.fd;
    l->closed = true;
    crest_timer_stop(&l->retry);
    crest__io_close(&l->io);
    l->io.fd = -1;
    crest_fd_close(fd);
    if (l->reserve_fd >= 0) {
        crest_fd_close(l->reserve_fd);
        l->reserve_fd = -1;
    }
    if (!l->tcp) {
        /* Only our own socket file: another server may have replaced it. */
        const struct sockaddr_un *un = (const struct sockaddr_un *)&l->addr.ss;
        struct stat st;
        if (l->path_ino && un->sun_path[0] && stat(un->sun_path, &st) == 0 &&
            st.st_ino == l->path_ino &&
            st.st_dev == l->path_dev)
            unlink(un->sun_path);
    }
    if (l->prev)
        l->prev->next = l->next;
    else
        loop->listeners = l->next;
    if (l->next)
        l->next->prev = l->prev;
    crest__endpoint_release(l->ep);
    l->ep = NULL;
    crest_io_stop(&l->io);
}

void crest__listeners_destroy(crest_loop_t *loop) {
    while (loop->listeners) {
        crest_log(CREST_LOG_WARN, "loop destroyed with an open listener (fd %d): closed",
                  loop->listeners->io.fd);
        crest_listener_close(loop->listeners);
    }
}

int crest_listener_address(const crest_listener_t *l, char *buf, size_t size) {
    return crest_addr_format(&l->addr, buf, size);
}

int crest_listener_port(const crest_listener_t *l) {
    return crest_addr_port(&l->addr);
}

int crest_listener_fd(const crest_listener_t *l) {
    return l->io.fd;
}

int crest_listener_sndbuf(const crest_listener_t *l) {
    return crest_sockopt_get_sndbuf(l->io.fd);
}

int crest_listener_rcvbuf(const crest_listener_t *l) {
    return crest_sockopt_get_rcvbuf(l->io.fd);
}

void crest_listener_get_stats(const crest_listener_t *l, crest_listener_stats_t *out) {
    *out = l->ep->lstats;
}

/* ---- the accept path, sampled once per insight period (insight.h) ---- */

/* TcpExt ListenOverflows and ListenDrops from /proc/net/netstat (the
 * network namespace's, since boot): 0, or -errno if the file cannot be
 * read or lacks them.  The columns are found by name in the header line
 * ("TcpExt: SyncookiesSent ... ListenOverflows ListenDrops ..."), the
 * values in the line after it.  One open, read and close: the fd lives for
 * three syscalls and is never registered. */
int crest__netstat_listen(uint64_t *overflows, uint64_t *drops) {
    char buf[16384];
    int fd = open("/proc/net/netstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof buf - 1)
            break; /* TcpExt comes first: what matters is in */
    }
    close(fd); /* never registered: see above */
    buf[len] = '\0';
    const char *hdr = strstr(buf, "TcpExt:");
    const char *val = hdr ? strchr(hdr, '\n') : NULL;
    if (!val || strncmp(val + 1, "TcpExt:", 7) != 0)
        return -ENOENT;
    val += 1 + 7;
    hdr += 7;
    int found = 0;
    for (;;) {
        while (*hdr == ' ')
            hdr++;
        while (*val == ' ')
            val++;
        if (*hdr == '\n' || !*hdr || *val == '\n' || !*val)
            break;
        size_t nlen = strcspn(hdr, " \n");
        char *end;
        unsigned long long v = strtoull(val, &end, 10);
        if (end == val)
            break;
        if (nlen == 15 && memcmp(hdr, "ListenOverflows", 15) == 0) {
            *overflows = v;
            found |= 1;
        } else if (nlen == 11 && memcmp(hdr, "ListenDrops", 11) == 0) {
            *drops = v;
            found |= 2;
        }
        hdr += nlen;
        val = end;
    }
    return found == 3 ? 0 : -ENOENT;
}

static void netstat_base(crest_loop_t *loop) {
    uint64_t o, d;
    if (crest__netstat_listen(&o, &d) < 0)
        return;
    loop->ins.netstat_base_overflows = o;
    loop->ins.netstat_base_drops = d;
    loop->ins.netstat_base_set = true;
}

/* For each TCP listener of the loop, one getsockopt(TCP_INFO) on the
 * listening socket: for a socket in LISTEN the kernel reports the accept
 * queue's length in tcpi_unacked and its backlog in tcpi_sacked (man 7
 * tcp; net/ipv4/tcp.c, tcp_get_info()).  A queue at or past its backlog
 * is counted as full: the kernel drops (or answers with a cookie) what
 * comes next.  Then one read of /proc/net/netstat for the loop. */
void crest__listeners_sample(crest_loop_t *loop, crest_insight_t *fig) {
    uint32_t len = 0, max = 0;
    bool any = false;
    for (struct crest_listener *l = loop->listeners; l; l = l->next) {
        struct crest__tcpi ti;
        if (!l->tcp || l->closed || crest__tcp_info(l->io.fd, &ti) < 0)
            continue;
        any = true;
        crest_listener_stats_t *st = &l->ep->lstats;
        st->queue_len = ti.unacked;
        st->queue_max = ti.sacked;
        if (ti.unacked > st->queue_peak)
            st->queue_peak = ti.unacked;
        len += ti.unacked;
        max += ti.sacked;
        if (ti.sacked && ti.unacked >= ti.sacked)
            fig->accept_queue_full++;
    }
    fig->accept_queue_len = len;
    fig->accept_queue_max = max;
    if (len > fig->accept_queue_peak)
        fig->accept_queue_peak = len;
    if (!any)
        return; /* no TCP listener: no reason to read netstat */
    struct crest__insight *ins = &loop->ins;
    uint64_t o, d;
    if (crest__netstat_listen(&o, &d) < 0)
        return;
    if (!ins->netstat_base_set) {
        ins->netstat_base_overflows = o;
        ins->netstat_base_drops = d;
        ins->netstat_base_set = true;
    }
    /* The counters are the namespace's and only grow; a base above them
     * (a namespace change cannot happen under a running process) reads 0. */
    fig->listen_overflows = o >= ins->netstat_base_overflows ? o - ins->netstat_base_overflows : 0;
    fig->listen_drops = d >= ins->netstat_base_drops ? d - ins->netstat_base_drops : 0;
}

/* The listener of its io watcher (io->arg is reused as the free-list link
 * once the listener is closed during an iteration). */
const struct crest_listener *crest__listener_of_io(const struct crest_io *io) {
    return CREST__CONTAINER_OF(io, struct crest_listener, io);
}

/* NULL once the listener is closed (its memory stays until the iteration
 * ends, its endpoint does not): a slow accept batch that closed its own
 * listener is still described. */
const crest_handler_t *crest__listener_handler(const struct crest_listener *l) {
    return l->ep ? &l->ep->handler : NULL;
}

const crest_addr_t *crest__listener_addr(const struct crest_listener *l) {
    return &l->addr;
}
