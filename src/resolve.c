/* resolve.c: asynchronous name resolution on c-ares, driven by the loop.
 *
 * c-ares tells us which sockets it wants watched through
 * ARES_OPT_SOCK_STATE_CB; each becomes a crest io watcher that calls
 * ares_process_fd().  Its retransmissions run from one crest timer armed
 * from ares_timeout() after every call into c-ares.
 *
 * Edge-triggered watchers: c-ares 1.18's UDP read loop drains the socket
 * to EAGAIN, but stops early on a datagram from an unexpected address, and
 * its TCP path reads once per call.  So after each ares_process_fd() we
 * poll() the socket with a zero timeout and process again while it is
 * still ready (bounded; the rest is fed back with crest_io_feed()).
 *
 * Every answer reaches the user through crest_loop_defer(): c-ares calls
 * back from inside ares_getaddrinfo(), ares_process_fd() and ares_destroy(),
 * and a user callback there could re-enter c-ares (ares_destroy() from a
 * c-ares callback is not allowed) and would break "no callback inside a
 * crest call".
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "internal.h"
#include <crest/io.h>
#include <crest/log.h>
#include <crest/resolve.h>
#include <crest/timer.h>

#ifdef HAVE_CARES
#include <ares.h>
#endif

#define NAME_MAX_LEN 255
#define FEED_ROUNDS 16

struct cache_entry {
    struct cache_entry *hnext;         /* hash chain */
    struct cache_entry *lprev, *lnext; /* LRU list, most recent first */
    int family;
    int status;          /* 0, or the negative errno cached */
    uint64_t expires_ms; /* loop time */
    size_t n;
    crest_addr_t *addrs; /* port 0 */
    uint64_t *addr_expires_ms;
    char name[];
};

struct watch {
    struct watch *next;
    crest_resolver_t *r;
    crest_io_t *io;
    int fd;
};

struct crest_resolve_req {
    crest_resolver_t *r; /* only while the query is inside c-ares */
    crest_loop_t *loop;
    crest_resolve_cb cb;
    void *arg;
    uint16_t port;
    int family;
    bool cancelled;
    bool in_ares;
    /* Lookups of the same (name, family) while one is in flight wait for
     * its answer instead of sending their own: the leader is on the
     * resolver's inflight list, the others on its followers list. */
    crest_resolve_req_t *inflight_next;
    crest_resolve_req_t *followers;
    int status;
    int from_cache;
    uint64_t start_ns;
    size_t n;
    crest_addr_t *addrs;
    uint32_t *ttl_s;
    char reason[320];
    char name[];
};

struct crest_resolver {
    crest_loop_t *loop;
    crest_resolver_opts_t opts;
#ifdef HAVE_CARES
    ares_channel ch;
#endif
    bool have_channel;
    bool in_call; /* inside a call into c-ares: answers must be deferred */
    crest_timer_t *timer;
    struct watch *watches;
    struct cache_entry **buckets;
    size_t nbuckets;
    struct cache_entry *lru_head, *lru_tail;
    crest_resolve_req_t *inflight; /* leaders inside c-ares */
    crest_resolver_stats_t stats;
};

/* ---- cache ---------------------------------------------------------------- */

static size_t key_hash(const char *name, int family)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)family;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ (uint64_t)tolower(*p)) * 1099511628211ull;
    return (size_t)h;
}

static void lru_unlink(crest_resolver_t *r, struct cache_entry *e)
{
    if (e->lprev) e->lprev->lnext = e->lnext; else r->lru_head = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev; else r->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push_front(crest_resolver_t *r, struct cache_entry *e)
{
    e->lprev = NULL;
    e->lnext = r->lru_head;
    if (r->lru_head) r->lru_head->lprev = e; else r->lru_tail = e;
    r->lru_head = e;
}

static void cache_remove(crest_resolver_t *r, struct cache_entry *e)
{
    struct cache_entry **pp = &r->buckets[key_hash(e->name, e->family) & (r->nbuckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(r, e);
    free(e->addrs);
    free(e->addr_expires_ms);
    free(e);
    r->stats.cache_entries--;
}

/* The live entry for (name, family), made most recently used; an expired
 * one is dropped. */
static struct cache_entry *cache_find(crest_resolver_t *r, const char *name, int family)
{
    struct cache_entry *e = r->buckets[key_hash(name, family) & (r->nbuckets - 1)];
    for (; e; e = e->hnext)
        if (e->family == family && strcasecmp(e->name, name) == 0) break;
    if (!e) return NULL;
    if (crest_loop_now(r->loop) >= e->expires_ms) {
        cache_remove(r, e);
        return NULL;
    }
    lru_unlink(r, e);
    lru_push_front(r, e);
    return e;
}

#ifdef HAVE_CARES /* only answers from c-ares are cached */
static struct cache_entry *cache_insert(crest_resolver_t *r, const char *name, int family,
                                        size_t n)
{
    struct cache_entry *old = cache_find(r, name, family);
    if (old) cache_remove(r, old);
    while (r->stats.cache_entries >= r->opts.cache_max && r->lru_tail) {
        cache_remove(r, r->lru_tail);
        r->stats.evictions++;
    }
    size_t len = strlen(name);
    struct cache_entry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e) return NULL;
    if (n) {
        e->addrs = calloc(n, sizeof(*e->addrs));
        e->addr_expires_ms = calloc(n, sizeof(*e->addr_expires_ms));
        if (!e->addrs || !e->addr_expires_ms) {
            free(e->addrs);
            free(e->addr_expires_ms);
            free(e);
            return NULL;
        }
    }
    memcpy(e->name, name, len + 1);
    e->family = family;
    e->n = n;
    size_t b = key_hash(name, family) & (r->nbuckets - 1);
    e->hnext = r->buckets[b];
    r->buckets[b] = e;
    lru_push_front(r, e);
    r->stats.cache_entries++;
    return e;
}
#endif

/* ---- answers --------------------------------------------------------------- */

static void addr_set_port(crest_addr_t *a, uint16_t port)
{
    if (a->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
    else if (a->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
}

static int req_alloc_addrs(crest_resolve_req_t *q, size_t n)
{
    q->addrs = calloc(n, sizeof(*q->addrs));
    q->ttl_s = calloc(n, sizeof(*q->ttl_s));
    if (!q->addrs || !q->ttl_s) return -ENOMEM;
    q->n = n;
    return 0;
}

static void req_free(crest_resolve_req_t *q)
{
    free(q->addrs);
    free(q->ttl_s);
    free(q);
}

static void deliver(crest_loop_t *loop, void *arg)
{
    (void)loop;
    crest_resolve_req_t *q = arg;
    if (!q->cancelled) {
        crest_resolve_answer_t a = {
            .addrs = q->status == 0 ? q->addrs : NULL,
            .ttl_s = q->status == 0 ? q->ttl_s : NULL,
            .count = q->status == 0 ? q->n : 0,
            .from_cache = q->from_cache,
            .reason = q->status == 0 ? "" : q->reason,
        };
        q->cancelled = true; /* a cancel from inside the callback does nothing */
        q->cb(q->status, &a, q->arg);
    }
    req_free(q);
}

/* Queue the answer for the loop.  If the loop refuses (it is being
 * destroyed), the answer is dropped. */
static int queue_delivery(crest_resolve_req_t *q)
{
    int rc = crest_loop_defer(q->loop, deliver, q);
    if (rc < 0) req_free(q);
    return rc;
}

static void req_fail(crest_resolve_req_t *q, int status, const char *why)
{
    q->status = status;
    snprintf(q->reason, sizeof(q->reason), "resolve %s: %s", q->name, why);
}

/* Fill q from a live cache entry. */
static int answer_from_cache(crest_resolver_t *r, crest_resolve_req_t *q,
                             const struct cache_entry *e)
{
    q->from_cache = 1;
    if (e->status < 0) {
        req_fail(q, e->status, "name not found (cached negative answer)");
        r->stats.negative_hits++;
        r->loop->ins.fig.resolve_cache_hits++;
        return 0;
    }
    if (req_alloc_addrs(q, e->n) < 0) return -ENOMEM;
    uint64_t now = crest_loop_now(r->loop);
    for (size_t i = 0; i < e->n; i++) {
        q->addrs[i] = e->addrs[i];
        addr_set_port(&q->addrs[i], q->port);
        uint64_t left = e->addr_expires_ms[i] > now ? e->addr_expires_ms[i] - now : 0;
        q->ttl_s[i] = (uint32_t)((left + 999) / 1000);
    }
    r->stats.cache_hits++;
    r->loop->ins.fig.resolve_cache_hits++;
    return 0;
}

/* Literal IPv4/IPv6 ("1.2.3.4", "::1", "[::1]") and "localhost": 1 if name
 * is one (q filled), 0 if not, -ENOMEM. */
static int answer_literal(crest_resolve_req_t *q)
{
    struct in_addr a4;
    struct in6_addr a6;
    char buf[NAME_MAX_LEN + 1];
    const char *s = q->name;
    size_t len = strlen(s);
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        memcpy(buf, s + 1, len - 2);
        buf[len - 2] = '\0';
        s = buf;
    }
    bool v4 = inet_pton(AF_INET, s, &a4) == 1;
    bool v6 = !v4 && inet_pton(AF_INET6, s, &a6) == 1;
    bool local = strcasecmp(s, "localhost") == 0;
    if (!v4 && !v6 && !local) return 0;
    if (local) {
        a4.s_addr = htonl(INADDR_LOOPBACK);
        a6 = in6addr_loopback;
    }
    bool want4 = (v4 || local) && q->family != AF_INET6;
    bool want6 = (v6 || local) && q->family != AF_INET;
    q->from_cache = 1;
    if (!want4 && !want6) {
        req_fail(q, -ENOENT, "literal address of another family than asked for");
        return 1;
    }
    if (req_alloc_addrs(q, (size_t)want4 + (size_t)want6) < 0) return -ENOMEM;
    size_t i = 0;
    if (want4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&q->addrs[i].ss;
        sin->sin_family = AF_INET;
        sin->sin_addr = a4;
        sin->sin_port = htons(q->port);
        q->addrs[i].len = sizeof(*sin);
        q->ttl_s[i++] = UINT32_MAX;
    }
    if (want6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&q->addrs[i].ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = a6;
        sin6->sin6_port = htons(q->port);
        q->addrs[i].len = sizeof(*sin6);
        q->ttl_s[i++] = UINT32_MAX;
    }
    return 1;
}

/* ---- c-ares glue ------------------------------------------------------------ */

#ifdef HAVE_CARES

static void update_timer(crest_resolver_t *r)
{
    struct timeval tv, *tvp = ares_timeout(r->ch, NULL, &tv);
    if (!tvp) {
        crest_timer_stop(r->timer);
        return;
    }
    uint64_t ms = (uint64_t)tvp->tv_sec * 1000 + ((uint64_t)tvp->tv_usec + 999) / 1000;
    crest_timer_start(r->timer, ms, 0);
}

static void on_timer(crest_timer_t *t, void *arg)
{
    (void)t;
    crest_resolver_t *r = arg;
    r->in_call = true;
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    r->in_call = false;
    update_timer(r);
}

static struct watch *find_watch(crest_resolver_t *r, int fd)
{
    for (struct watch *w = r->watches; w; w = w->next)
        if (w->fd == fd) return w;
    return NULL;
}

/* Which of the events c-ares asked for are ready now (zero-timeout poll). */
static unsigned still_ready(int fd, unsigned wanted)
{
    struct pollfd p = {.fd = fd, .events = 0};
    if (wanted & CREST_IO_READABLE) p.events |= POLLIN;
    if (wanted & CREST_IO_WRITABLE) p.events |= POLLOUT;
    if (poll(&p, 1, 0) != 1) return 0;
    unsigned ev = 0;
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) ev |= wanted & CREST_IO_READABLE;
    if (p.revents & (POLLOUT | POLLERR | POLLHUP)) ev |= wanted & CREST_IO_WRITABLE;
    return ev;
}

static void on_io(crest_io_t *io, unsigned events, void *arg)
{
    struct watch *w = arg;
    crest_resolver_t *r = w->r;
    int fd = w->fd;
    for (int round = 0; round < FEED_ROUNDS; round++) {
        ares_socket_t rfd = (events & ~CREST_IO_WRITABLE) ? fd : ARES_SOCKET_BAD;
        ares_socket_t wfd = (events & (CREST_IO_WRITABLE | CREST_IO_ERR | CREST_IO_HUP))
                                ? fd : ARES_SOCKET_BAD;
        r->in_call = true;
        ares_process_fd(r->ch, rfd, wfd);
        r->in_call = false;
        w = find_watch(r, fd);
        if (!w || w->io != io) break; /* c-ares closed the socket */
        events = still_ready(fd, crest_io_events(io));
        if (!events) break;
        if (round == FEED_ROUNDS - 1) crest_io_feed(io, events);
    }
    update_timer(r);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    crest_resolver_t *r = data;
    struct watch **pp = &r->watches;
    while (*pp && (*pp)->fd != fd) pp = &(*pp)->next;
    struct watch *w = *pp;
    unsigned ev = (readable ? CREST_IO_READABLE : 0u) | (writable ? CREST_IO_WRITABLE : 0u);
    if (!ev) {
        if (w) {
            *pp = w->next;
            crest_io_stop(w->io);
            free(w);
        }
        return;
    }
    if (w) {
        int rc = crest_io_modify(w->io, ev);
        if (rc < 0) crest_log(CREST_LOG_WARN, "resolver: watch fd %d: %s", fd, crest_strerror(rc));
        return;
    }
    w = calloc(1, sizeof(*w));
    int rc = w ? crest_io_start(r->loop, fd, ev, on_io, w, &w->io) : -ENOMEM;
    if (rc < 0) {
        /* The query on this socket will time out through the timer. */
        crest_log(CREST_LOG_WARN, "resolver: watch fd %d: %s", fd, crest_strerror(rc));
        free(w);
        return;
    }
    w->r = r;
    w->fd = fd;
    w->next = r->watches;
    r->watches = w;
}

static int map_ares_status(int st)
{
    switch (st) {
    case ARES_ENOTFOUND: case ARES_ENODATA: case ARES_ENONAME: return -ENOENT;
    case ARES_ETIMEOUT: return -ETIMEDOUT;
    case ARES_ECONNREFUSED: case ARES_ESERVFAIL: case ARES_EREFUSED: return -ECONNREFUSED;
    case ARES_ECANCELLED: case ARES_EDESTRUCTION: return -ECANCELED;
    case ARES_ENOMEM: return -ENOMEM;
    default: return -EIO;
    }
}

static void cache_answer(crest_resolver_t *r, crest_resolve_req_t *q,
                         const struct ares_addrinfo *ai)
{
    uint64_t now = crest_loop_now(r->loop);
    if (q->status < 0) {
        if (q->status != -ENOENT || !r->opts.negative_ttl_ms) return;
        struct cache_entry *e = cache_insert(r, q->name, q->family, 0);
        if (!e) return;
        e->status = q->status;
        e->expires_ms = now + r->opts.negative_ttl_ms;
        return;
    }
    uint32_t min_ttl = UINT32_MAX;
    for (size_t i = 0; i < q->n; i++)
        if (q->ttl_s[i] < min_ttl) min_ttl = q->ttl_s[i];
    if (min_ttl == 0) return; /* TTL 0: use once, never cache */
    struct cache_entry *e = cache_insert(r, q->name, q->family, q->n);
    if (!e) return;
    for (size_t i = 0; i < q->n; i++) {
        e->addrs[i] = q->addrs[i];
        addr_set_port(&e->addrs[i], 0);
        e->addr_expires_ms[i] = now + (uint64_t)q->ttl_s[i] * 1000;
    }
    e->expires_ms = now + (uint64_t)min_ttl * 1000;
    (void)ai;
}

/* The leader q has its answer: take it off the inflight list and give
 * each follower the same answer with its own port. */
static void answer_followers(crest_resolver_t *r, crest_resolve_req_t *q)
{
    for (crest_resolve_req_t **pp = &r->inflight; *pp; pp = &(*pp)->inflight_next) {
        if (*pp == q) {
            *pp = q->inflight_next;
            break;
        }
    }
    crest_resolve_req_t *f = q->followers;
    q->followers = NULL;
    while (f) {
        crest_resolve_req_t *next = f->inflight_next;
        f->inflight_next = NULL;
        if (f->cancelled) {
            req_free(f);
        } else {
            if (q->status < 0) {
                f->status = q->status;
                memcpy(f->reason, q->reason, sizeof(f->reason));
            } else if (req_alloc_addrs(f, q->n) < 0) {
                req_fail(f, -ENOMEM, "out of memory");
            } else {
                for (size_t i = 0; i < q->n; i++) {
                    f->addrs[i] = q->addrs[i];
                    addr_set_port(&f->addrs[i], f->port);
                    f->ttl_s[i] = q->ttl_s[i];
                }
            }
            (void)queue_delivery(f);
        }
        f = next;
    }
}

static void on_addrinfo(void *arg, int st, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    crest_resolve_req_t *q = arg;
    crest_resolver_t *r = q->r;
    q->in_ares = false;
    q->r = NULL;
    size_t n = 0;
    if (st == ARES_SUCCESS && res)
        for (struct ares_addrinfo_node *nd = res->nodes; nd; nd = nd->ai_next)
            if (nd->ai_family == AF_INET || nd->ai_family == AF_INET6) n++;
    if (st == ARES_SUCCESS && n == 0) st = ARES_ENODATA;
    if (st == ARES_SUCCESS) {
        if (req_alloc_addrs(q, n) < 0) {
            req_fail(q, -ENOMEM, "out of memory");
        } else {
            size_t i = 0;
            for (struct ares_addrinfo_node *nd = res->nodes; nd; nd = nd->ai_next) {
                if (nd->ai_family != AF_INET && nd->ai_family != AF_INET6) continue;
                if ((size_t)nd->ai_addrlen > sizeof(q->addrs[i].ss)) continue;
                memcpy(&q->addrs[i].ss, nd->ai_addr, (size_t)nd->ai_addrlen);
                q->addrs[i].len = (socklen_t)nd->ai_addrlen;
                addr_set_port(&q->addrs[i], q->port);
                q->ttl_s[i] = nd->ai_ttl > 0 ? (uint32_t)nd->ai_ttl : 0;
                i++;
            }
            q->n = i;
        }
    } else {
        req_fail(q, map_ares_status(st), ares_strerror(st));
    }
    if (r && st != ARES_EDESTRUCTION && st != ARES_ECANCELLED) {
        uint64_t took = crest_loop_now_ns(r->loop) - q->start_ns;
        crest_hist_record(&r->stats.resolve_ns, took);
        crest__hist_record(&r->loop->ins.fig.resolve_time, took);
        if (q->status < 0) {
            r->stats.failures++;
            r->loop->ins.fig.resolve_failures++;
        }
        cache_answer(r, q, res);
    }
    if (r) answer_followers(r, q);
    if (res) ares_freeaddrinfo(res);
    if (q->cancelled) {
        req_free(q);
        return;
    }
    (void)queue_delivery(q);
}

/* c-ares's sockets, made and closed through crest's fd registry (kind
 * RESOLVER), so leak audits and /debug/crest/fds see them like every other
 * fd crest opens. */
static const char resolver_origin[] = "crest resolver";

static ares_socket_t sock_open(int domain, int type, int protocol, void *data)
{
    crest_resolver_t *r = data;
    int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
    if (fd < 0) return ARES_SOCKET_BAD;
    int rc = crest__fd_register(fd, CREST_FD_RESOLVER, r->loop, resolver_origin);
    if (rc < 0) {
        close(fd);
        errno = -rc;
        return ARES_SOCKET_BAD;
    }
    return fd;
}

static int sock_close(ares_socket_t fd, void *data)
{
    (void)data;
    return crest_fd_close_at(fd, resolver_origin);
}

static int sock_connect(ares_socket_t fd, const struct sockaddr *sa, ares_socklen_t len, void *data)
{
    (void)data;
    return connect(fd, sa, len);
}

static ares_ssize_t sock_recvfrom(ares_socket_t fd, void *buf, size_t len, int flags,
                                  struct sockaddr *from, ares_socklen_t *from_len, void *data)
{
    (void)data;
    return recvfrom(fd, buf, len, flags, from, from_len);
}

static ares_ssize_t sock_sendv(ares_socket_t fd, const struct iovec *iov, int n, void *data)
{
    (void)data;
    return writev(fd, iov, n);
}

static const struct ares_socket_functions sock_funcs = {
    .asocket = sock_open,
    .aclose = sock_close,
    .aconnect = sock_connect,
    .arecvfrom = sock_recvfrom,
    .asendv = sock_sendv,
};

static int channel_create(crest_resolver_t *r)
{
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) return -EIO;
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = r;
    o.timeout = (int)r->opts.timeout_ms;
    o.tries = (int)r->opts.tries;
    if (r->opts.use_tcp) {
        o.flags = ARES_FLAG_USEVC;
        mask |= ARES_OPT_FLAGS;
    }
    bool own_servers = r->opts.servers && r->opts.servers[0];
    char lookups[] = "b";
    if (own_servers) {
        /* Servers given: DNS only (no /etc/hosts read per query) and no
         * search domains from resolv.conf. */
        o.lookups = lookups;
        o.ndomains = 0;
        o.domains = NULL;
        mask |= ARES_OPT_LOOKUPS | ARES_OPT_DOMAINS;
    }
    rc = ares_init_options(&r->ch, &o, mask);
    if (rc != ARES_SUCCESS) {
        ares_library_cleanup();
        return rc == ARES_ENOMEM ? -ENOMEM : -EIO;
    }
    if (own_servers) {
        rc = ares_set_servers_ports_csv(r->ch, r->opts.servers);
        if (rc != ARES_SUCCESS) {
            ares_destroy(r->ch);
            ares_library_cleanup();
            return rc == ARES_ENOMEM ? -ENOMEM : -EINVAL;
        }
    }
    ares_set_socket_functions(r->ch, &sock_funcs, r);
    r->have_channel = true;
    return 0;
}

static void channel_destroy(crest_resolver_t *r)
{
    if (!r->have_channel) return;
    r->in_call = true;
    ares_destroy(r->ch); /* pending queries: on_addrinfo with ARES_EDESTRUCTION */
    r->in_call = false;
    ares_library_cleanup();
    r->have_channel = false;
}

static int start_query(crest_resolver_t *r, crest_resolve_req_t *q)
{
    struct ares_addrinfo_hints h;
    memset(&h, 0, sizeof(h));
    h.ai_family = q->family;
    h.ai_socktype = SOCK_STREAM;
    q->r = r;
    q->in_ares = true;
    q->start_ns = crest_loop_now_ns(r->loop);
    q->inflight_next = r->inflight;
    r->inflight = q;
    r->stats.queries++;
    r->loop->ins.fig.resolve_queries++;
    r->in_call = true;
    ares_getaddrinfo(r->ch, q->name, NULL, &h, on_addrinfo, q);
    r->in_call = false;
    update_timer(r);
    return 0;
}

static crest_resolve_req_t *find_inflight(crest_resolver_t *r, const char *name, int family)
{
    for (crest_resolve_req_t *q = r->inflight; q; q = q->inflight_next)
        if (q->family == family && strcasecmp(q->name, name) == 0) return q;
    return NULL;
}

#else /* !HAVE_CARES */

static crest_resolve_req_t *find_inflight(crest_resolver_t *r, const char *name, int family)
{
    (void)r;
    (void)name;
    (void)family;
    return NULL;
}

static int channel_create(crest_resolver_t *r)
{
    (void)r;
    return 0;
}

static void channel_destroy(crest_resolver_t *r)
{
    (void)r;
}

static int start_query(crest_resolver_t *r, crest_resolve_req_t *q)
{
    (void)r;
    (void)q;
    return -ENOTSUP;
}

static void on_timer(crest_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
}

#endif

/* ---- public API -------------------------------------------------------------- */

int crest_resolver_create(crest_loop_t *loop, const crest_resolver_opts_t *opts,
                          crest_resolver_t **out)
{
    if (!loop || !out) return -EINVAL;
    crest_resolver_t *r = calloc(1, sizeof(*r));
    if (!r) return -ENOMEM;
    r->loop = loop;
    if (opts) r->opts = *opts;
    if (!r->opts.timeout_ms) r->opts.timeout_ms = 2000;
    if (!r->opts.tries) r->opts.tries = 2;
    if (!r->opts.cache_max) r->opts.cache_max = 1024;
    if (!r->opts.negative_ttl_ms) r->opts.negative_ttl_ms = 5000;
    r->nbuckets = 16;
    while (r->nbuckets < r->opts.cache_max && r->nbuckets < (1u << 20)) r->nbuckets <<= 1;
    r->buckets = calloc(r->nbuckets, sizeof(*r->buckets));
    int rc = r->buckets ? crest_timer_create(loop, on_timer, r, &r->timer) : -ENOMEM;
    if (rc == 0) rc = channel_create(r);
    if (rc < 0) {
        if (r->timer) crest_timer_destroy(r->timer);
        free(r->buckets);
        free(r);
        return rc;
    }
    r->opts.servers = NULL; /* the caller's string is not kept */
    *out = r;
    return 0;
}

int crest_resolve(crest_resolver_t *r, const char *name, uint16_t port, int family,
                  crest_resolve_cb cb, void *arg, crest_resolve_req_t **reqp)
{
    if (reqp) *reqp = NULL;
    if (!r || !name || !cb) return -EINVAL;
    size_t len = strlen(name);
    if (len == 0 || len > NAME_MAX_LEN) return -EINVAL;
    if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) return -EINVAL;
    crest_resolve_req_t *q = calloc(1, sizeof(*q) + len + 1);
    if (!q) return -ENOMEM;
    memcpy(q->name, name, len + 1);
    q->loop = r->loop;
    q->cb = cb;
    q->arg = arg;
    q->port = port;
    q->family = family;

    int rc = answer_literal(q);
    if (rc == 1) r->stats.literals++;
    if (rc == 0) {
        const struct cache_entry *e = cache_find(r, name, family);
        if (e) rc = answer_from_cache(r, q, e) == 0 ? 1 : -ENOMEM;
    }
    if (rc == 1) {
        if (reqp) *reqp = q;
        rc = queue_delivery(q);
        if (rc < 0 && reqp) *reqp = NULL;
        if (rc == 0) {
            r->stats.requests++;
            r->loop->ins.fig.resolve_requests++;
        }
        return rc;
    }
    if (rc == 0 && !r->have_channel) rc = -ENOTSUP;
    if (rc < 0) {
        req_free(q);
        return rc;
    }
    if (reqp) *reqp = q;
    r->stats.requests++;
    r->loop->ins.fig.resolve_requests++;
    crest_resolve_req_t *lead = find_inflight(r, name, family);
    if (lead) {
        crest_resolve_req_t **pp = &lead->followers;
        while (*pp) pp = &(*pp)->inflight_next;
        *pp = q;
        r->stats.coalesced++;
        r->loop->ins.fig.resolve_coalesced++;
        return 0;
    }
    return start_query(r, q);
}

void crest_resolve_cancel(crest_resolve_req_t *req)
{
    if (req) req->cancelled = true;
}

void crest_resolver_destroy(crest_resolver_t *r)
{
    if (!r) return;
    channel_destroy(r); /* pending requests are queued with -ECANCELED */
    while (r->watches) { /* c-ares reported each closed; just in case */
        struct watch *w = r->watches;
        r->watches = w->next;
        crest_io_stop(w->io);
        free(w);
    }
    while (r->lru_head) cache_remove(r, r->lru_head);
    crest_timer_destroy(r->timer);
    free(r->buckets);
    free(r);
}

void crest_resolver_get_stats(const crest_resolver_t *r, crest_resolver_stats_t *out)
{
    if (!r || !out) return;
    *out = r->stats;
}

int crest_loop_resolver(crest_loop_t *loop, crest_resolver_t **out)
{
    if (!loop || !out) return -EINVAL;
    if (!loop->resolver) {
        int rc = crest_resolver_create(loop, NULL, &loop->resolver);
        if (rc < 0) return rc;
    }
    *out = loop->resolver;
    return 0;
}

int crest_loop_set_resolver(crest_loop_t *loop, const crest_resolver_opts_t *opts)
{
    if (!loop) return -EINVAL;
    if (loop->resolver) return -EBUSY;
    return crest_resolver_create(loop, opts, &loop->resolver);
}

void crest__loop_resolver_destroy(crest_loop_t *loop)
{
    crest_resolver_destroy(loop->resolver);
    loop->resolver = NULL;
}
