/* The admin endpoint: an HTTP server on one loop that answers with what
 * the loops know (include/crest/admin.h says what it serves).
 *
 * A request that needs the loops' figures starts a round: each loop is
 * asked on its own thread (crest_group_post()) and posts its figures back
 * to the admin's loop; the answer is written when the last loop has
 * replied, or after ROUND_TIMEOUT_MS with the loops that did.  Without a
 * group the one loop is the admin's own, and a round completes inside the
 * request.  /debug/crest/conns runs a walk on each loop in turn, in slices
 * of CREST__CONNS_SLICE connections per iteration (admin_pages.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#include "config.h"
#include "crest/admin.h"
#include "crest/addr.h"
#include "crest/doctor.h"
#include "crest/log.h"
#include "crest/timer.h"
#include "admin_int.h"
#include "http_int.h"

#define ROUND_TIMEOUT_MS 1000
#define MAX_SECONDS 300

struct crest_admin {
    crest_loop_t *loop;
    crest_group_t *group;
    crest_http_server_t *http;
    int port;
    uint64_t start_time_s;
    struct crest__admin_req *reqs; /* requests waiting for their answer */
};

/* ---- requests waiting for the loops ---------------------------------------- */

/* One loop's part of a round: sent to the loop, posted back. */
struct round_item {
    struct crest__admin_req *req;
    unsigned index;
    unsigned round;
    void (*per_loop)(crest_loop_t *loop, unsigned index, struct crest__admin_req *r);
};

static void req_unlink(struct crest__admin_req *r) {
    if (!r->admin)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        r->admin->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(struct crest__admin_req *r) {
    req_unlink(r);
    if (r->timer)
        crest_timer_destroy(r->timer);
    free(r->figs);
    free(r->got);
    free(r->first);
    crest__conns_walk_free(r);
    crest__sb_free(&r->out);
    free(r);
}

void crest__admin_req_release(struct crest__admin_req *r) {
    if (!r->x && r->outstanding == 0)
        req_free(r);
}

/* The answer is written (or the client went away): free the request once
 * no loop still holds a part of it. */
static void req_done(struct crest__admin_req *r) {
    r->x = NULL;
    if (r->timer)
        crest_timer_stop(r->timer);
    crest__admin_req_release(r);
}

void crest__admin_respond(struct crest__admin_req *r, int status, const char *ctype,
                          const char *body, size_t len) {
    if (!r->x)
        return;
    crest_http_header_t h[2];
    size_t n = 0;
    if (ctype) {
        h[n].name = (crest_http_str_t){"Content-Type", 12};
        h[n].value = (crest_http_str_t){ctype, strlen(ctype)};
        n++;
    }
    h[n].name = (crest_http_str_t){"Cache-Control", 13};
    h[n].value = (crest_http_str_t){"no-store", 8};
    n++;
    crest_http_exchange_set_data(r->x, NULL);
    crest_http_respond(r->x, status, h, n, body, len);
    req_done(r);
}

/* Answer with r->out, or 500 if building it ran out of memory. */
void crest__admin_respond_out(struct crest__admin_req *r, const char *ctype) {
    if (r->out.failed) {
        static const char oom[] = "out of memory\n";
        crest__admin_respond(r, 500, "text/plain; charset=utf-8", oom, sizeof oom - 1);
        return;
    }
    crest__admin_respond(r, 200, ctype, r->out.ptr ? r->out.ptr : "", r->out.len);
}

/* On a loop's thread: its figures. */
void crest__admin_collect(crest_loop_t *loop, unsigned index,
                          struct crest__admin_loop_figures *f) {
    f->index = index;
    crest_loop_get_stats(loop, &f->loop);
    crest_loop_conn_stats(loop, &f->conns);
    crest_loop_buf_stats(loop, &f->bufs);
    f->http_servers = crest_http_loop_stats(loop, &f->http);
    crest_insight_opts_t io;
    crest_loop_get_insight_opts(loop, &io);
    f->insight_enabled = io.enabled;
    if (!f->insight_enabled || crest_loop_get_insight(loop, &f->insight) < 0) {
        memset(&f->insight, 0, sizeof f->insight);
        f->insight_enabled = false;
    }
}

static void round_finish(struct crest__admin_req *r) {
    if (r->timer)
        crest_timer_stop(r->timer);
    r->round_open = false;
    if (r->x)
        r->on_round(r);
}

/* Back on the admin's loop with one loop's part. */
static void item_back(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct round_item *it = arg;
    struct crest__admin_req *r = it->req;
    unsigned index = it->index, it_round = it->round;
    free(it);
    r->outstanding--;
    if (!r->x) { /* answered or cancelled meanwhile */
        crest__admin_req_release(r);
        return;
    }
    if (!r->round_open || it_round != r->round)
        return; /* a late reply to a round already answered */
    r->got[index] = true;
    r->answered++;
    if (r->answered == r->asked)
        round_finish(r);
}

/* On loop it->index's thread. */
static void item_run(crest_loop_t *loop, void *arg) {
    struct round_item *it = arg;
    struct crest__admin_req *r = it->req;
    /* Only this loop's slot of r is written here (and r->admin_loop,
     * set once, read): the admin's loop reads the slot once the item is
     * back, and round numbers tell a late item from a fresh one. */
    it->per_loop(loop, it->index, r);
    if (crest_loop_post(r->admin_loop, item_back, it) < 0) {
        /* The admin's loop is going away (it must outlive the group's):
         * nothing will read the answer. */
        free(it);
    }
}

/* Ask every loop for per_loop(loop, i, r), then on_round(r) on the admin's
 * loop.  0, or -ENOMEM. */
int crest__admin_round(struct crest__admin_req *r,
                       void (*per_loop)(crest_loop_t *, unsigned, struct crest__admin_req *),
                       void (*on_round)(struct crest__admin_req *)) {
    r->on_round = on_round;
    r->round++;
    r->answered = 0;
    r->asked = 0;
    memset(r->got, 0, r->nloops * sizeof *r->got);
    if (!r->grp) {
        per_loop(r->admin_loop, 0, r);
        r->got[0] = true;
        r->asked = r->answered = 1;
        r->round_open = true;
        round_finish(r);
        return 0;
    }
    r->round_open = true;
    for (unsigned i = 0; i < r->nloops; i++) {
        struct round_item *it = malloc(sizeof *it);
        if (!it)
            continue; /* that loop counts as not answering */
        it->req = r;
        it->index = i;
        it->round = r->round;
        it->per_loop = per_loop;
        r->outstanding++;
        if (crest_group_post(r->grp, i, item_run, it) < 0) {
            r->outstanding--;
            free(it);
            continue;
        }
        r->asked++;
    }
    if (r->asked == 0) {
        round_finish(r);
        return 0;
    }
    if (r->timer) /* admin_pages.c made it: its expiry ends the round */
        crest_timer_start(r->timer, ROUND_TIMEOUT_MS, 0);
    return 0;
}

/* ---- routing -------------------------------------------------------------- */

static bool query_param(crest_http_str_t q, const char *name, char *val, size_t vlen) {
    size_t nl = strlen(name);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t n = (size_t)(stop - p) - nl - 1;
            if (n >= vlen)
                n = vlen - 1;
            memcpy(val, p + nl + 1, n);
            val[n] = '\0';
            return true;
        }
        if ((size_t)(stop - p) == nl && memcmp(p, name, nl) == 0) {
            val[0] = '\0';
            return true;
        }
        p = stop + 1;
    }
    return false;
}

/* An absolute-form target ("http://host:port/metrics", RFC 9112 3.2.2,
 * which a server must accept) as its origin form ("/metrics"). */
static crest_http_str_t origin_form(crest_http_str_t t) {
    size_t skip = 0;
    if (t.len >= 7 && strncasecmp(t.ptr, "http://", 7) == 0)
        skip = 7;
    else if (t.len >= 8 && strncasecmp(t.ptr, "https://", 8) == 0)
        skip = 8;
    if (!skip)
        return t;
    const char *slash = memchr(t.ptr + skip, '/', t.len - skip);
    if (!slash)
        return (crest_http_str_t){"/", 1};
    return (crest_http_str_t){slash, t.len - (size_t)(slash - t.ptr)};
}

/* "L.F": two decimal numbers, each in range. */
static bool parse_cursor(const char *v, unsigned nloops, unsigned *loop, int *fd) {
    char *end;
    errno = 0;
    unsigned long l = strtoul(v, &end, 10);
    if (end == v || *end != '.' || errno || l >= nloops)
        return false;
    const char *f = end + 1;
    unsigned long n = strtoul(f, &end, 10);
    if (end == f || *end || errno || n > INT_MAX || *v == '-' || *f == '-')
        return false;
    *loop = (unsigned)l;
    *fd = (int)n;
    return true;
}

/* ?name=N with N in min..max: false if present and not. */
static bool uint_param(crest_http_str_t query, const char *name, unsigned min, unsigned max,
                       unsigned *out) {
    char v[32];
    if (!query_param(query, name, v, sizeof v))
        return true;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-' || n < min || n > max)
        return false;
    *out = (unsigned)n;
    return true;
}

/* The query's parameters into *q; NULL, or why they are refused. */
static const char *parse_query(crest_http_str_t query, unsigned nloops,
                               struct crest__admin_query *q) {
    char v[32];
    q->json = query_param(query, "format", v, sizeof v) && strcmp(v, "json") == 0;
    if (!uint_param(query, "seconds", 1, MAX_SECONDS, &q->seconds))
        return "seconds must be 1 to 300";
    if (!uint_param(query, "limit", 1, CREST__CONNS_MAX_LIMIT, &q->limit))
        return "limit must be 1 to 10000";
    if (query_param(query, "after", v, sizeof v)) {
        if (!parse_cursor(v, nloops, &q->after_loop, &q->after_fd))
            return "after must be a cursor LOOP.FD as a page's next gave";
        q->has_after = true;
    }
    return NULL;
}

static bool path_is(crest_http_str_t path, const char *s) {
    size_t n = strlen(s);
    return path.len == n && memcmp(path.ptr, s, n) == 0;
}

static void bad_request(crest_http_exchange_t *x, int status, const char *why) {
    static const crest_http_header_t ct = {{"Content-Type", 12}, {"text/plain; charset=utf-8", 25}};
    char body[256];
    int n = snprintf(body, sizeof body, "%d %s: %s\n", status, crest_http_reason_phrase(status), why);
    crest_http_respond(x, status, &ct, 1, body, (size_t)n);
}

static void on_request(crest_http_exchange_t *x, const crest_http_request_t *req,
                       const uint8_t *body, size_t body_len, void *ctx) {
    (void)body;
    (void)body_len;
    struct crest_admin *a = ctx;
    if (req->method != CREST_HTTP_GET && req->method != CREST_HTTP_HEAD) {
        static const crest_http_header_t allow[2] = {
            {{"Allow", 5}, {"GET, HEAD", 9}},
            {{"Content-Type", 12}, {"text/plain; charset=utf-8", 25}}};
        static const char msg[] = "405 Method Not Allowed: the admin pages are read with GET\n";
        /* closed: what follows a CONNECT or a body we did not read is
         * no request */
        crest_http_respond_close(x, 405, allow, 2, msg, sizeof msg - 1);
        return;
    }
    crest_http_str_t target = origin_form(req->target);
    crest_http_str_t path = target, query = {"", 0};
    const char *qm = memchr(target.ptr, '?', target.len);
    if (qm) {
        path.len = (size_t)(qm - target.ptr);
        query.ptr = qm + 1;
        query.len = target.len - path.len - 1;
    }
    enum crest__admin_page page;
    if (path_is(path, "/"))
        page = CREST__PAGE_INDEX;
    else if (path_is(path, "/metrics"))
        page = CREST__PAGE_METRICS;
    else if (path_is(path, "/healthz"))
        page = CREST__PAGE_HEALTHZ;
    else if (path_is(path, "/debug/crest/doctor"))
        page = CREST__PAGE_DOCTOR;
    else if (path_is(path, "/debug/crest/fds"))
        page = CREST__PAGE_FDS;
    else if (path_is(path, "/debug/crest/conns"))
        page = CREST__PAGE_CONNS;
    else if (path_is(path, "/debug/crest/slow"))
        page = CREST__PAGE_SLOW;
    else {
        bad_request(x, 404, "no such page (the index is at /)");
        return;
    }
    /* The query first: a bad one is answered before anything is made. */
    unsigned nloops = a->group ? crest_group_size(a->group) : 1;
    struct crest__admin_query q = {.limit = CREST__CONNS_DEFAULT_LIMIT};
    const char *why = parse_query(query, nloops, &q);
    if (why) {
        bad_request(x, 400, why);
        return;
    }
    struct crest__admin_req *r = calloc(1, sizeof *r);
    if (r) {
        r->got = calloc(nloops, sizeof *r->got);
        r->figs = calloc(nloops, sizeof *r->figs);
    }
    if (!r || !r->got || !r->figs) {
        if (r) {
            free(r->got);
            free(r->figs);
            free(r);
        }
        bad_request(x, 503, "out of memory");
        return;
    }
    r->admin = a;
    r->admin_loop = a->loop;
    r->grp = a->group;
    r->x = x;
    r->page = page;
    r->nloops = nloops;
    r->group = a->group != NULL;
    r->start_time_s = a->start_time_s;
    r->q = q;
    crest__sb_init(&r->out);
    r->next = a->reqs;
    if (a->reqs)
        a->reqs->prev = r;
    a->reqs = r;
    crest_http_exchange_set_data(x, r);
    crest__admin_page_start(r);
}

static void on_cancel(crest_http_exchange_t *x, void *ctx) {
    (void)ctx;
    struct crest__admin_req *r = crest_http_exchange_get_data(x);
    if (r)
        req_done(r);
}

/* ---- start and stop ------------------------------------------------------- */

void crest_admin_opts_init(crest_admin_opts_t *opts) {
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    crest_http_server_opts_init(&opts->http);
    opts->http.limits.max_body = 4096;
    opts->http.name = "admin";
    crest_listen_opts_init(&opts->listen);
}

static bool is_loopback(const crest_addr_t *addr) {
    if (addr->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&addr->ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (addr->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&addr->ss;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return addr->ss.ss_family == AF_UNIX;
}

int crest_admin_start(crest_loop_t *loop, const char *addr, const crest_admin_opts_t *opts,
                      crest_admin_t **out) {
    if (!addr)
        addr = CREST_ADMIN_DEFAULT_ADDR;
    if (!loop || !out)
        return -EINVAL;
    crest_admin_opts_t o;
    if (opts) {
        o = *opts;
        if (!o.http.limits.max_body)
            o.http.limits.max_body = 4096;
        if (!o.http.name)
            o.http.name = "admin";
    } else {
        crest_admin_opts_init(&o);
    }
    crest_addr_t parsed;
    int rc = crest_addr_parse(addr, &parsed);
    if (rc < 0)
        return rc;
    struct crest_admin *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->loop = loop;
    a->group = o.group;
    a->start_time_s = (uint64_t)time(NULL);
    o.http.on_cancel = on_cancel;
    rc = crest__http_server_create_uncounted(loop, &o.http, on_request, a, &a->http);
    if (rc < 0) {
        free(a);
        return rc;
    }
    crest_listener_t *l;
    rc = crest_http_server_listen(a->http, addr, &o.listen, &l);
    if (rc < 0) {
        crest_http_server_destroy(a->http);
        free(a);
        return rc;
    }
    a->port = crest_listener_port(l);
    char bound[CREST_ADDR_STRLEN];
    if (crest_listener_address(l, bound, sizeof bound) < 0)
        snprintf(bound, sizeof bound, "%s", addr);
    if (!is_loopback(&parsed))
        crest_log(CREST_LOG_WARN,
                  "admin endpoint on %s, not a loopback address: its pages show peers and "
                  "internals to anyone who can reach it",
                  bound);
    else
        crest_log(CREST_LOG_DEBUG, "admin endpoint on http://%s/", bound);
    *out = a;
    return 0;
}

void crest__admin_http_stats(const struct crest_admin *a, crest_http_server_stats_t *out) {
    crest_http_server_get_stats(a ? a->http : NULL, out);
}

int crest_admin_port(const crest_admin_t *admin) {
    return admin ? admin->port : -EINVAL;
}

void crest_admin_stop(crest_admin_t *admin) {
    if (!admin)
        return;
    /* Requests still waiting lose their admin: their connections close
     * with the server (on_cancel), and parts still out on other loops
     * free them when they come back. */
    for (struct crest__admin_req *r = admin->reqs, *next; r; r = next) {
        next = r->next;
        r->prev = r->next = NULL;
        r->admin = NULL;
    }
    admin->reqs = NULL;
    crest_http_server_destroy(admin->http);
    free(admin);
}
