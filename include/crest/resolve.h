/* crest: asynchronous name resolution (c-ares, driven by the loop).
 *
 * A resolver belongs to one loop.  Names are looked up with c-ares
 * (ares_getaddrinfo); c-ares's sockets are crest io watchers and its
 * retransmission timeouts one crest timer, so no lookup ever blocks the
 * loop and no helper thread is started.  Built without c-ares
 * (./configure --without-c-ares), only literal addresses and "localhost"
 * resolve; other names fail with -ENOTSUP.
 *
 * Lookups of a (name, family) already in flight are not sent again: the
 * later requests wait for the first one's answer (a thousand connects to
 * a cold name send one query).
 *
 * Answers are cached per (name, family): a positive answer for the smallest
 * TTL of its records, a negative one (NXDOMAIN, no data) for
 * negative_ttl_ms; at most cache_max entries, the least recently used
 * evicted first.  Literal addresses and "localhost" are answered without a
 * query and never cached.
 *
 * Ownership: the resolver is the caller's until crest_resolver_destroy().
 * A request (crest_resolve_req_t) is crest's: it is valid from
 * crest_resolve() until its callback returns or crest_resolve_cancel()
 * returns, whichever comes first; do not use it after.  The answer passed
 * to the callback (addresses, reason) is valid only during the callback.
 *
 * Threads: every function must be called from the loop's thread.
 *
 * Callbacks: none runs inside any call of this header.  A request's callback
 * runs exactly once, from the loop (an answer from the cache or a literal
 * on the next iteration), unless the request was cancelled first.
 * crest_resolver_destroy() completes every request still pending with
 * -ECANCELED, delivered from the loop after destroy returns (or from
 * crest_loop_destroy()); a request cancelled before never calls back.
 * Once crest_loop_destroy() has begun (a resolver destroyed from an
 * on_close it runs), answers can no longer be queued: they are dropped
 * and those callbacks do not run.
 *
 * Blocking: crest_resolver_create() reads /etc/resolv.conf once,
 * synchronously (c-ares's initialisation, even when servers are given);
 * with servers given, nothing after that touches a file or waits.  With
 * the servers of /etc/resolv.conf, c-ares also reads /etc/hosts for each
 * query that misses the cache (a small synchronous file read).
 *
 * c-ares's sockets are opened and closed through crest's fd registry
 * (kind CREST_FD_RESOLVER, origin "crest resolver"), so leak audits and
 * /debug/crest/fds see them.
 */
#ifndef CREST_RESOLVE_H
#define CREST_RESOLVE_H
#include <stddef.h>
#include <stdint.h>
#include "addr.h"
#include "hist.h"
#include "loop.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_resolver crest_resolver_t;
typedef struct crest_resolve_req crest_resolve_req_t;

typedef struct crest_resolver_opts {
    /* "IP:PORT,IP:PORT" ("[::1]:53" for IPv6; the port may be left off);
     * NULL or "": the servers of /etc/resolv.conf. */
    const char *servers;
    uint32_t timeout_ms;      /* per try; 0: 2000 */
    uint32_t tries;           /* 0: 2 */
    uint32_t cache_max;       /* entries; 0: 1024 */
    uint32_t negative_ttl_ms; /* 0: 5000 */
    int use_tcp;              /* 1: every query over TCP (c-ares's USEVC) */
} crest_resolver_opts_t;

/* What a callback receives.  status 0: count >= 1 addresses, in c-ares's
 * order (RFC 6724 sorted), each with the request's port and the seconds
 * its record has left to live (ttl_s).  status < 0: count 0 and reason
 * says why in words (with the name). */
typedef struct crest_resolve_answer {
    const crest_addr_t *addrs;
    const uint32_t *ttl_s;
    size_t count;
    int from_cache;     /* 1: answered from the cache (or a literal) */
    const char *reason; /* "" on success */
} crest_resolve_answer_t;

/* status: 0, or
 *   -ENOENT     the name does not exist (NXDOMAIN) or has no address of
 *               the family asked for,
 *   -ETIMEDOUT  no server answered within timeout_ms x tries,
 *   -ECONNREFUSED the servers refused or failed the query,
 *   -ECANCELED  the resolver was destroyed first,
 *   -ENOTSUP    built without c-ares and the name is not a literal,
 *   -ENOMEM, -EIO (any other c-ares failure; see reason). */
typedef void (*crest_resolve_cb)(int status, const crest_resolve_answer_t *answer, void *arg);

/* Create a resolver on loop.  opts may be NULL (all defaults).  0, -EINVAL
 * (bad servers text), -ENOMEM, -EIO (c-ares could not start: reading
 * /etc/resolv.conf failed). */
int crest_resolver_create(crest_loop_t *loop, const crest_resolver_opts_t *opts,
                          crest_resolver_t **out);

/* Start resolving name; family: AF_UNSPEC, AF_INET or AF_INET6.  The
 * callback runs later from the loop (see above).  req may be NULL if the
 * caller will never cancel.  0, or -EINVAL (empty or overlong name, bad
 * family, no callback), -ENOMEM, -ENOTSUP (no c-ares, not a literal);
 * on failure the callback never runs. */
int crest_resolve(crest_resolver_t *r, const char *name, uint16_t port, int family,
                  crest_resolve_cb cb, void *arg, crest_resolve_req_t **req);

/* The callback of req will not run.  The query itself may go on (c-ares
 * cannot cancel one query) and its answer still fills the cache. */
void crest_resolve_cancel(crest_resolve_req_t *req);

/* Close c-ares's sockets, stop the timer, free the cache.  Pending requests
 * complete with -ECANCELED from the loop (see above).  NULL is ignored. */
void crest_resolver_destroy(crest_resolver_t *r);

typedef struct crest_resolver_stats {
    uint64_t requests;      /* crest_resolve() calls that returned 0 */
    uint64_t queries;       /* lookups sent to c-ares */
    uint64_t cache_hits;    /* positive answers from the cache */
    uint64_t negative_hits; /* negative answers from the cache */
    uint64_t literals;      /* literal addresses and "localhost" */
    uint64_t failures;      /* queries that ended with an error */
    uint64_t evictions;     /* cache entries dropped for cache_max */
    uint64_t coalesced;     /* requests that waited for a lookup of the
                               same (name, family) already in flight
                               instead of sending their own */
    uint64_t cache_entries; /* now */
    crest_hist_t resolve_ns; /* time of each query sent to c-ares */
} crest_resolver_stats_t;

void crest_resolver_get_stats(const crest_resolver_t *r, crest_resolver_stats_t *out);

/* The loop's own resolver, the one crest_connect() uses for names when
 * its options name none: made on first use with the defaults (the servers
 * of /etc/resolv.conf), destroyed by crest_loop_destroy() (do not destroy
 * it yourself).  0, or crest_resolver_create()'s errors. */
int crest_loop_resolver(crest_loop_t *loop, crest_resolver_t **out);

/* Make the loop's own resolver now, with opts (servers, timeouts, cache),
 * instead of the defaults on first use.  0, -EBUSY if it exists already,
 * or crest_resolver_create()'s errors. */
int crest_loop_set_resolver(crest_loop_t *loop, const crest_resolver_opts_t *opts);

#ifdef __cplusplus
}
#endif
#endif
