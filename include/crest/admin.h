/* crest: the admin endpoint, a small HTTP server that shows what crest
 * knows about a running process, live, the way Go services serve
 * net/http/pprof: metrics for Prometheus, the doctor's findings, the fd
 * registry, the open connections, the recent slow callbacks.
 *
 *   crest_admin_t *admin;
 *   crest_admin_start(loop, "127.0.0.1:9464", NULL, &admin);
 *   ...  curl http://127.0.0.1:9464/metrics
 *   crest_admin_stop(admin);
 *
 * Pages (GET or HEAD; anything else is 405):
 *   /                     an index of the pages below (text)
 *   /metrics              Prometheus text exposition format 0.0.4
 *   /healthz              "ok" while the loops answer
 *   /debug/crest/doctor   the doctor's findings over the figures so far;
 *                         ?seconds=N (1-300) waits N seconds and diagnoses
 *                         that window only (pprof's ?seconds=);
 *                         ?format=json for JSON
 *   /debug/crest/fds      the fd registry: counts per kind, every open fd
 *                         with its kind, origin and age
 *   /debug/crest/conns    the open connections, one line each (peer, age,
 *                         state, bytes in and out, output queued, handler,
 *                         rtt from TCP_INFO); ?limit=N (default 100, at
 *                         most 10,000) and ?after=CURSOR page through
 *                         them; ?format=json
 *   /debug/crest/slow     the recent slow callbacks of each loop;
 *                         ?format=json
 *
 * What it costs the loop it reports on: /metrics, /healthz, doctor, fds
 * and slow format figures the loops already keep, O(metrics) whatever the
 * number of connections.  /debug/crest/conns is the only page that walks
 * connections, at most 64 per loop iteration (a slice), so a page of
 * 10,000 on a loaded loop spreads over 157 iterations; its other
 * connections are served between slices.
 *
 * A group (opts.group): the endpoint reports every loop of the group.  It
 * runs on the loop given (a control loop outside the group, or one of its
 * loops); each request asks every loop for its figures with
 * crest_group_post() and answers once all have replied (at most 1 s: a
 * loop stuck longer is left out, and /metrics says so in
 * crest_admin_loops_unanswered).  Each per-loop metric then carries a
 * loop="i" label.  The admin's loop must outlive the group's (destroy it
 * after crest_group_join()).
 *
 * Security: these pages name peers and internals.  Give a loopback
 * address; any other address is allowed but logged as a warning.  There is no authentication: put it behind a proxy that has
 * one if it must be reachable.  Hostile input gets what crest's HTTP
 * server gives it (http.h): limits with their status, timeouts.
 *
 * Threads: crest_admin_start() and crest_admin_stop() on the thread of
 * the loop given; no callback runs inside them.
 */
#ifndef CREST_ADMIN_H
#define CREST_ADMIN_H

#include "group.h"
#include "http.h"
#include "listener.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_admin crest_admin_t;

typedef struct crest_admin_opts {
    crest_group_t *group;          /* report these loops; NULL: the loop
                                      given only */
    crest_http_server_opts_t http; /* limits and timeouts (http.h); zeros:
                                      defaults, a 4 KiB body limit (the
                                      pages take none) */
    crest_listen_opts_t listen;    /* listener.h; backlog etc. */
} crest_admin_opts_t;

void crest_admin_opts_init(crest_admin_opts_t *opts);

/* Where the endpoint listens when no address is given: loopback, on the
 * port of the Prometheus exporters' registry that crest's docs use. */
#define CREST_ADMIN_DEFAULT_ADDR "127.0.0.1:9464"

/* Serve the admin pages on addr ("127.0.0.1:9464"; NULL:
 * CREST_ADMIN_DEFAULT_ADDR; a port of 0 picks a free one:
 * crest_admin_port()).  opts may be NULL.  0 and *out, or
 * -EINVAL, -ENOMEM, or crest_listen()'s -errno (-EADDRINUSE ...). */
int crest_admin_start(crest_loop_t *loop, const char *addr, const crest_admin_opts_t *opts,
                      crest_admin_t **out);

/* The port it listens on. */
int crest_admin_port(const crest_admin_t *admin);

/* Close the listener and the admin connections (a response being written
 * is flushed first), and free the endpoint once they are closed.  NULL is
 * a no-op. */
void crest_admin_stop(crest_admin_t *admin);

#ifdef __cplusplus
}
#endif
#endif
