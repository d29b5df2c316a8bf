/* The admin endpoint's pages: what each one asks the loops for, and how it
 * formats the answer (include/crest/admin.h lists them).  Figures are
 * formatted, never computed here: the loops, the registry and the doctor
 * own them. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "crest/doctor.h"
#include "crest/fdreg.h"
#include "admin_int.h"
#include "insight_int.h"
#include "internal.h"

#define TEXT "text/plain; charset=utf-8"
#define JSON "application/json"

/* ---- / ------------------------------------------------------------------ */

static void page_index(struct crest__admin_req *r) {
    crest__sb_printf(&r->out,
                     "crest %s admin endpoint\n"
                     "\n"
                     "/metrics              Prometheus metrics (text format 0.0.4)\n"
                     "/healthz              \"ok\" while every loop answers\n"
                     "/debug/crest/doctor   the doctor's findings over the figures so far;\n"
                     "                      ?seconds=N: over the next N seconds; ?format=json\n"
                     "/debug/crest/fds      the fd registry: every open fd, its kind, origin, age\n"
                     "/debug/crest/conns    the open connections; ?limit=N (1-%u, default %u),\n"
                     "                      ?after=CURSOR (the next page); ?format=json\n"
                     "/debug/crest/slow     the recent slow callbacks of each loop; ?format=json\n",
                     PACKAGE_VERSION, CREST__CONNS_MAX_LIMIT, CREST__CONNS_DEFAULT_LIMIT);
    crest__admin_respond_out(r, TEXT);
}

/* ---- figures from every loop ----------------------------------------------- */

static void collect(crest_loop_t *loop, unsigned index, struct crest__admin_req *r) {
    crest__admin_collect(loop, index, &r->figs[index]);
}

static void nothing(crest_loop_t *loop, unsigned index, struct crest__admin_req *r) {
    (void)loop;
    (void)index;
    (void)r;
}

static unsigned unanswered(const struct crest__admin_req *r) {
    unsigned n = 0;
    for (unsigned i = 0; i < r->nloops; i++)
        n += !r->got[i];
    return n;
}

/* "loops 1, 3 did not answer within 1 s" into the page, if any did not. */
static void note_unanswered(struct crest__admin_req *r, const char *prefix) {
    if (!unanswered(r))
        return;
    crest__sb_printf(&r->out, "%sloop", prefix);
    const char *sep = " ";
    for (unsigned i = 0; i < r->nloops; i++) {
        if (!r->got[i]) {
            crest__sb_printf(&r->out, "%s%u", sep, i);
            sep = ", ";
        }
    }
    crest__sb_puts(&r->out, " did not answer within 1 s\n");
}

/* ---- /metrics -------------------------------------------------------------- */

static void metrics_done(struct crest__admin_req *r) {
    struct crest__admin_loop_figures *v = malloc((r->nloops ? r->nloops : 1) * sizeof *v);
    if (!v) {
        r->out.failed = true;
        crest__admin_respond_out(r, TEXT);
        return;
    }
    unsigned n = 0;
    for (unsigned i = 0; i < r->nloops; i++)
        if (r->got[i])
            v[n++] = r->figs[i];
    struct crest__admin_process_figures proc;
    memset(&proc, 0, sizeof proc);
    for (unsigned k = 0; k < CREST_FD_KIND_COUNT; k++)
        crest_fd_counts((crest_fd_kind_t)k, &proc.fds[k]);
    proc.start_time_s = r->start_time_s;
    proc.version = PACKAGE_VERSION;
    crest__metrics_render(&r->out, v, n, r->group, &proc);
    free(v);
    crest__sb_printf(&r->out,
                     "# HELP crest_admin_loops_unanswered Loops that did not answer this scrape "
                     "within 1 s (their figures are missing).\n"
                     "# TYPE crest_admin_loops_unanswered gauge\n"
                     "crest_admin_loops_unanswered %u\n",
                     unanswered(r));
    /* The endpoint's own traffic: its connections live on its loop, which
     * a group's figures above may not include. */
    crest_http_server_stats_t hs;
    crest__admin_http_stats(r->admin, &hs);
    crest__sb_printf(&r->out,
                     "# HELP crest_admin_connections_total Connections the admin endpoint "
                     "accepted.\n"
                     "# TYPE crest_admin_connections_total counter\n"
                     "crest_admin_connections_total %" PRIu64 "\n"
                     "# HELP crest_admin_requests_total Requests the admin endpoint answered or "
                     "is answering.\n"
                     "# TYPE crest_admin_requests_total counter\n"
                     "crest_admin_requests_total %" PRIu64 "\n"
                     "# HELP crest_admin_responses_total Responses of the admin endpoint, by "
                     "status class (the scrape being answered not yet counted).\n"
                     "# TYPE crest_admin_responses_total counter\n",
                     hs.connections, hs.requests);
    for (unsigned c = 1; c <= 5; c++)
        crest__sb_printf(&r->out, "crest_admin_responses_total{code=\"%uxx\"} %" PRIu64 "\n", c,
                         hs.responses[c]);
    crest__sb_printf(&r->out,
                     "# HELP crest_admin_refused_total Requests to the admin endpoint refused "
                     "as malformed or over a limit (4xx/5xx, connection closed, logged).\n"
                     "# TYPE crest_admin_refused_total counter\n"
                     "crest_admin_refused_total %" PRIu64 "\n"
                     "# HELP crest_admin_read_timeouts_total Admin connections closed with a "
                     "request not whole in time (slow clients; logged).\n"
                     "# TYPE crest_admin_read_timeouts_total counter\n"
                     "crest_admin_read_timeouts_total %" PRIu64 "\n",
                     hs.refused, hs.timeouts);
    crest__admin_respond_out(r, "text/plain; version=0.0.4; charset=utf-8");
}

/* ---- /healthz --------------------------------------------------------------- */

static void healthz_done(struct crest__admin_req *r) {
    if (unanswered(r)) {
        note_unanswered(r, "not ok: ");
        crest__admin_respond(r, 503, TEXT, r->out.ptr, r->out.len);
        return;
    }
    crest__admin_respond(r, 200, TEXT, "ok\n", 3);
}

/* ---- /debug/crest/doctor -------------------------------------------------- */

/* The answered loops' insight, summed into *out; false if none has
 * insight on. */
static bool sum_insight(const struct crest__admin_req *r, crest_insight_t *out) {
    memset(out, 0, sizeof *out);
    bool any = false;
    for (unsigned i = 0; i < r->nloops; i++) {
        if (r->got[i] && r->figs[i].insight_enabled) {
            crest_insight_add(out, &r->figs[i].insight);
            any = true;
        }
    }
    return any;
}

static void doctor_answer(struct crest__admin_req *r, const crest_insight_t *window) {
    crest_diagnosis_t dx;
    if (crest_doctor_diagnose(window, NULL, &dx) < 0) {
        crest__admin_respond(r, 500, TEXT, "the doctor refused the figures\n", 31);
        return;
    }
    char buf[16384];
    int n = r->q.json ? crest_diagnosis_json(&dx, buf, sizeof buf)
                    : crest_diagnosis_text(&dx, buf, sizeof buf);
    if (n < 0) {
        crest__admin_respond(r, 500, TEXT, "the diagnosis could not be written\n", 35);
        return;
    }
    crest__sb_append(&r->out, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    if (r->q.json) {
        crest__sb_puts(&r->out, "\n");
    } else {
        note_unanswered(r, "note: ");
    }
    crest__admin_respond_out(r, r->q.json ? JSON : TEXT);
}

static void doctor_no_insight(struct crest__admin_req *r) {
    static const char msg[] = "latency insight is off on every loop: the doctor has no figures "
                              "(crest_loop_set_insight(), insight.h)\n";
    crest__admin_respond(r, 503, TEXT, msg, sizeof msg - 1);
}

static void doctor_second(struct crest__admin_req *r) {
    crest_insight_t *now = malloc(sizeof *now), *win = malloc(sizeof *win);
    if (!now || !win || !sum_insight(r, now)) {
        if (now && win)
            doctor_no_insight(r);
        else
            crest__admin_respond(r, 503, TEXT, "out of memory\n", 14);
        free(now);
        free(win);
        return;
    }
    crest_insight_window(win, now, r->first);
    doctor_answer(r, win);
    free(now);
    free(win);
}

static void doctor_first(struct crest__admin_req *r) {
    crest_insight_t *sum = malloc(sizeof *sum);
    if (!sum) {
        crest__admin_respond(r, 503, TEXT, "out of memory\n", 14);
        return;
    }
    if (!sum_insight(r, sum)) {
        free(sum);
        doctor_no_insight(r);
        return;
    }
    if (!r->q.seconds) {
        doctor_answer(r, sum);
        free(sum);
        return;
    }
    /* ?seconds=N: the start of the window; the timer takes the end. */
    r->first = sum;
    crest_timer_start(r->timer, (uint64_t)r->q.seconds * 1000, 0);
}

/* ---- /debug/crest/fds ------------------------------------------------------ */

static void page_fds(struct crest__admin_req *r) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        r->out.failed = true;
    } else {
        crest__fd_report_live(f);
        fclose(f);
        crest__sb_append(&r->out, text, len);
        free(text);
    }
    crest__admin_respond_out(r, TEXT);
}

/* ---- /debug/crest/slow ----------------------------------------------------- */

static void slow_done(struct crest__admin_req *r) {
    struct crest__strbuf *o = &r->out;
    if (r->q.json)
        crest__sb_puts(o, "{\"loops\":[");
    bool first_loop = true;
    for (unsigned i = 0; i < r->nloops; i++) {
        if (!r->got[i])
            continue;
        const crest_insight_t *in = &r->figs[i].insight;
        if (r->q.json) {
            crest__sb_printf(o,
                             "%s{\"loop\":%u,\"insight\":%s,\"threshold_ns\":%" PRIu32
                             ",\"slow_callbacks\":%" PRIu64 ",\"slow_batches\":%" PRIu64
                             ",\"recent\":[",
                             first_loop ? "" : ",", i,
                             r->figs[i].insight_enabled ? "true" : "false",
                             in->slow_threshold_ns, in->slow_callbacks, in->slow_unnamed);
        } else {
            crest__sb_printf(o,
                             "loop %u: %" PRIu64 " slow callbacks, %" PRIu64
                             " slow batches (threshold %.3f ms)%s\n",
                             i, in->slow_callbacks, in->slow_unnamed,
                             in->slow_threshold_ns / 1e6,
                             r->figs[i].insight_enabled ? "" : "; insight is off");
        }
        first_loop = false;
        /* newest first */
        for (unsigned k = in->slow_ring_len; k-- > 0;) {
            const crest_slow_cb_t *s = &in->slow_ring[k];
            uint64_t ago = in->taken_ns > s->at_ns ? in->taken_ns - s->at_ns : 0;
            if (r->q.json) {
                crest__sb_printf(o,
                                 "%s{\"ago_ns\":%" PRIu64 ",\"duration_ns\":%" PRIu64
                                 ",\"kind\":\"%s\",\"batch\":%" PRIu32 ",\"name\":",
                                 k + 1 == in->slow_ring_len ? "" : ",", ago, s->duration_ns,
                                 crest_cb_kind_name(s->kind), s->batch);
                crest__sb_json_str(o, s->name, strnlen(s->name, sizeof s->name));
                crest__sb_puts(o, ",\"what\":");
                crest__sb_json_str(o, s->what, strnlen(s->what, sizeof s->what));
                crest__sb_printf(o, ",\"conn_id\":%" PRIu64 ",\"peer\":", s->conn_id);
                crest__sb_json_str(o, s->peer, strnlen(s->peer, sizeof s->peer));
                crest__sb_puts(o, "}");
            } else {
                crest__sb_printf(o, "  %9.3f s ago  %9.3f ms  %-7s %s%s%s", ago / 1e9,
                                 s->duration_ns / 1e6, crest_cb_kind_name(s->kind), s->name,
                                 s->what[0] ? " " : "", s->what);
                if (s->conn_id)
                    crest__sb_printf(o, "  conn #%" PRIu64, s->conn_id);
                if (s->peer[0])
                    crest__sb_printf(o, "  %s", s->peer);
                crest__sb_puts(o, "\n");
            }
        }
        if (r->q.json)
            crest__sb_puts(o, "]}");
    }
    if (r->q.json) {
        crest__sb_printf(o, "],\"loops_unanswered\":%u}\n", unanswered(r));
    } else {
        note_unanswered(r, "note: ");
    }
    crest__admin_respond_out(r, r->q.json ? JSON : TEXT);
}

/* ---- /debug/crest/conns ----------------------------------------------------- */

/* The walk of one loop's connections, run on that loop's thread in slices
 * of CREST__CONNS_SLICE per iteration.  part is written there and read on
 * the admin's loop once the walk is back. */
struct crest__conns_walk {
    struct crest__admin_req *req;
    unsigned index;          /* the loop walked */
    int next_fd;             /* where the next slice starts */
    unsigned left;           /* connections the page still takes */
    unsigned in_slice;
    bool more;               /* a connection was left for the next page */
    bool json;
    bool first_item;
    unsigned listed;         /* written on the walked loop */
    unsigned listed_back;    /* ... as the admin's loop last saw it back */
    uint64_t now_ns;
    struct crest__strbuf part;
};

static const char *const state_names[] = {"connecting", "open", "half_closed", "closing",
                                          "closed"};

static int conn_line(crest_conn_t *c, void *arg) {
    struct crest__conns_walk *w = arg;
    if (w->left == 0) {
        w->more = true;
        return 1;
    }
    if (w->in_slice == CREST__CONNS_SLICE)
        return 2; /* this slice is done; c is the next one's first */
    w->in_slice++;
    crest_conn_info_t info;
    crest_conn_get_info(c, &info);
    char peer[CREST_ADDR_STRLEN], handler[48];
    if (crest_conn_peer(c, peer, sizeof peer) < 0)
        snprintf(peer, sizeof peer, "?");
    crest__conn_handler_name(c, handler, sizeof handler);
    crest_conn_tcp_info_t ti;
    long rtt = crest_conn_get_tcp_info(c, &ti) == 0 ? (long)ti.rtt_us : -1;
    const char *state = info.state < 5 ? state_names[info.state] : "?";
    struct crest__strbuf *o = &w->part;
    if (w->json) {
        crest__sb_printf(o,
                         "%s{\"loop\":%u,\"id\":%" PRIu64 ",\"fd\":%d,\"state\":\"%s\",\"peer\":",
                         w->first_item ? "" : ",", w->index, info.id, info.fd, state);
        crest__sb_json_str(o, peer, strlen(peer));
        crest__sb_printf(o,
                         ",\"age_s\":%.3f,\"idle_ms\":%" PRIu32 ",\"bytes_in\":%" PRIu64
                         ",\"bytes_out\":%" PRIu64 ",\"output_queued\":%zu"
                         ",\"input_buffered\":%zu,\"reading_paused\":%s,\"handler\":",
                         info.age_ns / 1e9, info.idle_ms, info.bytes_in, info.bytes_out,
                         info.output_bytes, info.input_bytes,
                         info.reading_paused ? "true" : "false");
        crest__sb_json_str(o, handler, strlen(handler));
        if (rtt >= 0)
            crest__sb_printf(o, ",\"rtt_us\":%ld}", rtt);
        else
            crest__sb_puts(o, ",\"rtt_us\":null}");
    } else {
        char rtts[24];
        if (rtt >= 0)
            snprintf(rtts, sizeof rtts, "%ld", rtt);
        else
            snprintf(rtts, sizeof rtts, "-");
        crest__sb_printf(o,
                         "%4u %8" PRIu64 " %6d %-11s %-28s %10.3f %9" PRIu32 " %12" PRIu64
                         " %12" PRIu64 " %9zu %-12s %8s%s\n",
                         w->index, info.id, info.fd, state, peer, info.age_ns / 1e9, info.idle_ms,
                         info.bytes_in, info.bytes_out, info.output_bytes, handler, rtts,
                         info.reading_paused ? " paused" : "");
    }
    w->first_item = false;
    w->listed++;
    w->left--;
    w->next_fd = info.fd + 1;
    return 0;
}

static void walk_back(crest_loop_t *loop, void *arg);

/* On the walked loop's thread: one slice, then the next iteration's. */
static void walk_slice(crest_loop_t *loop, void *arg) {
    struct crest__conns_walk *w = arg;
    w->in_slice = 0;
    int rc = crest__loop_foreach_conn_from(loop, w->next_fd, conn_line, w);
    if (rc == 2 && crest_loop_defer(loop, walk_slice, w) == 0)
        return;
    if (rc == 2) { /* could not defer: finish here */
        w->in_slice = 0;
        while (crest__loop_foreach_conn_from(loop, w->next_fd, conn_line, w) == 2)
            w->in_slice = 0;
    }
    struct crest__admin_req *r = w->req;
    if (r->grp) {
        if (crest_loop_post(r->admin_loop, walk_back, w) == 0)
            return;
        /* the admin's loop is going away: nothing will read this */
        return;
    }
    walk_back(loop, w);
}

static void conns_finish(struct crest__admin_req *r, const char *next, bool timed_out);

static void walk_loop(struct crest__admin_req *r, unsigned index, int from_fd) {
    struct crest__conns_walk *w = r->walk;
    w->index = index;
    w->next_fd = from_fd;
    w->more = false;
    crest__sb_free(&w->part);
    r->outstanding++; /* the walk holds r until it is back */
    if (!r->grp) {
        walk_slice(r->admin_loop, w);
        return;
    }
    if (crest_group_post(r->grp, index, walk_slice, w) < 0) {
        r->outstanding--;
        r->got[index] = false;
        /* that loop is gone: go on with the next */
        if (index + 1 < r->nloops)
            walk_loop(r, index + 1, 0);
        else
            conns_finish(r, NULL, false);
        return;
    }
    r->round_open = true; /* the timer's cue */
    crest_timer_start(r->timer, 1000, 0);
}

/* On the admin's loop: a loop's walk is back. */
static void walk_back(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct crest__conns_walk *w = arg;
    struct crest__admin_req *r = w->req;
    r->outstanding--;
    if (!r->x) {
        crest__admin_req_release(r);
        return;
    }
    r->round_open = false;
    if (r->timer)
        crest_timer_stop(r->timer);
    r->got[w->index] = true;
    w->listed_back = w->listed;
    crest__sb_append(&r->out, w->part.ptr ? w->part.ptr : "", w->part.len);
    crest__sb_free(&w->part);
    char next[32];
    if (w->more) {
        snprintf(next, sizeof next, "%u.%d", w->index, w->next_fd);
        conns_finish(r, next, false);
    } else if (w->left == 0 && w->index + 1 < r->nloops) {
        snprintf(next, sizeof next, "%u.0", w->index + 1);
        conns_finish(r, next, false);
    } else if (w->index + 1 < r->nloops) {
        walk_loop(r, w->index + 1, 0);
    } else {
        conns_finish(r, NULL, false);
    }
}

/* On the admin's loop.  After a timeout the walk may still run on its
 * loop: only what came back (listed_back, index) is read. */
static void conns_finish(struct crest__admin_req *r, const char *next, bool timed_out) {
    struct crest__conns_walk *w = r->walk;
    struct crest__strbuf *o = &r->out;
    if (r->q.json) {
        crest__sb_printf(o, "],\"listed\":%u,\"next\":", w->listed_back);
        if (next)
            crest__sb_printf(o, "\"%s\"", next);
        else
            crest__sb_puts(o, "null");
        crest__sb_printf(o, ",\"complete\":%s}\n", timed_out ? "false" : "true");
    } else {
        crest__sb_printf(o, "# %u listed", w->listed_back);
        if (next)
            crest__sb_printf(o, "; next page: ?after=%s&limit=%u", next, r->q.limit);
        crest__sb_puts(o, "\n");
        if (timed_out)
            crest__sb_printf(o, "# loop %u did not answer within 1 s: the list is incomplete\n",
                             w->index);
    }
    crest__admin_respond_out(r, r->q.json ? JSON : TEXT);
}

void crest__conns_walk_free(struct crest__admin_req *r) {
    if (!r->walk)
        return;
    crest__sb_free(&r->walk->part);
    free(r->walk);
    r->walk = NULL;
}

static void page_conns(struct crest__admin_req *r) {
    struct crest__conns_walk *w = calloc(1, sizeof *w);
    if (!w) {
        crest__admin_respond(r, 503, TEXT, "out of memory\n", 14);
        return;
    }
    r->walk = w;
    w->req = r;
    w->left = r->q.limit;
    w->json = r->q.json;
    w->first_item = true;
    if (r->q.json)
        crest__sb_puts(&r->out, "{\"connections\":[");
    else
        crest__sb_printf(&r->out, "%4s %8s %6s %-11s %-28s %10s %9s %12s %12s %9s %-12s %8s\n",
                         "loop", "id", "fd", "state", "peer", "age_s", "idle_ms", "bytes_in",
                         "bytes_out", "queued", "handler", "rtt_us");
    walk_loop(r, r->q.has_after ? r->q.after_loop : 0, r->q.has_after ? r->q.after_fd : 0);
}

/* ---- the timer: a round's timeout, the doctor's window, a walk's timeout -- */

static void on_timer(crest_timer_t *t, void *arg) {
    (void)t;
    struct crest__admin_req *r = arg;
    if (!r->x)
        return;
    if (r->page == CREST__PAGE_CONNS) {
        if (r->round_open) { /* a loop's walk did not come back */
            r->round_open = false;
            conns_finish(r, NULL, true);
        }
        return;
    }
    if (r->round_open) {
        r->round_open = false;
        r->on_round(r);
        return;
    }
    if (r->page == CREST__PAGE_DOCTOR && r->first)
        crest__admin_round(r, collect, doctor_second);
}

void crest__admin_page_start(struct crest__admin_req *r) {
    bool needs_timer = r->grp || (r->page == CREST__PAGE_DOCTOR && r->q.seconds);
    if (needs_timer && !r->timer && crest_timer_create(r->admin_loop, on_timer, r, &r->timer) < 0) {
        crest__admin_respond(r, 503, TEXT, "out of memory\n", 14);
        return;
    }
    switch (r->page) {
    case CREST__PAGE_INDEX:
        page_index(r);
        break;
    case CREST__PAGE_METRICS:
        crest__admin_round(r, collect, metrics_done);
        break;
    case CREST__PAGE_HEALTHZ:
        crest__admin_round(r, nothing, healthz_done);
        break;
    case CREST__PAGE_DOCTOR:
        crest__admin_round(r, collect, doctor_first);
        break;
    case CREST__PAGE_FDS:
        page_fds(r);
        break;
    case CREST__PAGE_CONNS:
        page_conns(r);
        break;
    case CREST__PAGE_SLOW:
        crest__admin_round(r, collect, slow_done);
        break;
    }
}
