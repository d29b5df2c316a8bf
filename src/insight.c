/* Latency insight, the loop's side (insight.h): per-iteration figures,
 * callback timing with HAProxy's hysteresis, the ring of slow callbacks,
 * the sampler that publishes a snapshot for other threads.
 *
 * Cost on the per-message path: a callback costs one test of loop->track
 * and one store (last_cb); an iteration adds two histogram records and a
 * compare.  Clock reads: one per phase that ran, as before this module.
 * Per-callback timing (AUTO while iterations run slow, or ALWAYS) adds
 * one clock read per callback: the previous callback's end is the next
 * one's start. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn_int.h"
#include "internal.h"
#include "pool_int.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
/* AUTO: per-callback timing stays on until iterations have run fast for
 * this long. */
#define TIMING_OFF_AFTER_NS NS_PER_S
/* The slow-callback log line: at most one per second per loop. */
#define SLOW_LOG_EVERY_NS NS_PER_S

static const char *const phase_names[CREST_PHASE_COUNT] = {
    "wait", "io", "timers", "ready", "deferred", "posted", "other",
};
static const char *const kind_names[CREST_CB_KIND_COUNT] = {
    "conn", "accept", "io", "timer", "deferred", "posted", "signal",
};
static const char *const what_names[] = {
    "", "on_open", "on_data", "on_message", "on_eof", "on_high_water",
    "on_drain", "on_flushed", "on_close", "flush_notify",
};

const char *crest_phase_name(crest_phase_t phase) {
    return (unsigned)phase < CREST_PHASE_COUNT ? phase_names[phase] : "?";
}

const char *crest_cb_kind_name(crest_cb_kind_t kind) {
    return (unsigned)kind < CREST_CB_KIND_COUNT ? kind_names[kind] : "?";
}

const char *crest__what_name(unsigned what) {
    return what < sizeof what_names / sizeof what_names[0] ? what_names[what] : "";
}

void crest_insight_opts_init(crest_insight_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->enabled = true;
    o->timing = CREST_TIMING_AUTO;
    o->slow_callback_us = 1000;
    o->sample_ms = 1000;
}

static void on_sample(crest_timer_t *t, void *arg);

static void apply_opts(crest_loop_t *loop) {
    struct crest__insight *ins = &loop->ins;
    ins->on = ins->opts.enabled;
    ins->slow_ns = (uint64_t)ins->opts.slow_callback_us * 1000u;
    ins->fig.slow_threshold_ns = (uint32_t)(ins->slow_ns > UINT32_MAX ? UINT32_MAX : ins->slow_ns);
    ins->fig.rx_timestamps = ins->opts.rx_timestamps;
    bool each = ins->on && ins->opts.timing == CREST_TIMING_ALWAYS;
    if (each != ins->time_each) {
        if (each)
            ins->timing_since_ns = loop->now_ns;
        else
            ins->fig.timing_on_ns += loop->now_ns - ins->timing_since_ns;
        ins->time_each = each;
    }
    ins->fast_since_ns = 0;
    uint64_t period = (uint64_t)ins->opts.sample_ms * NS_PER_MS;
    if (ins->on)
        crest__timer_start_at(&ins->sample_timer, loop->now_ns + period, period);
    else
        crest_timer_stop(&ins->sample_timer);
}

int crest__insight_init(crest_loop_t *loop) {
    struct crest__insight *ins = &loop->ins;
    ins->published = calloc(1, sizeof *ins->published);
    if (!ins->published)
        return -ENOMEM;
    pthread_mutex_init(&ins->pub_lock, NULL);
    crest_insight_opts_init(&ins->opts);
    /* The sampler does not keep the loop alive. */
    crest__timer_init(loop, &ins->sample_timer, on_sample, loop, false);
    ins->fig.since_ns = ins->fig.taken_ns = loop->now_ns;
    ins->fig.loops = 1;
    ins->sample_prev_ns = loop->now_ns;
    apply_opts(loop);
    *ins->published = ins->fig;
    crest__watchdog_add(loop);
    return 0;
}

void crest__insight_destroy(crest_loop_t *loop) {
    struct crest__insight *ins = &loop->ins;
    if (!ins->published)
        return; /* init failed before it began */
    crest__watchdog_remove(loop);
    crest_timer_stop(&ins->sample_timer);
    pthread_mutex_destroy(&ins->pub_lock);
    free(ins->published);
    ins->published = NULL;
}

int crest_loop_set_insight(crest_loop_t *loop, const crest_insight_opts_t *opts) {
    if (!loop || !opts || opts->slow_callback_us == 0 || (unsigned)opts->timing > CREST_TIMING_OFF)
        return -EINVAL;
    loop->ins.opts = *opts;
    if (loop->ins.opts.sample_ms == 0)
        loop->ins.opts.sample_ms = 1000;
    apply_opts(loop);
    return 0;
}

void crest_loop_get_insight_opts(const crest_loop_t *loop, crest_insight_opts_t *out) {
    *out = loop->ins.opts;
}

/* ---- naming a callback ---- */

/* A function's symbol (dladdr: exported symbols only), else its object
 * and offset, else its address.  Any thread. */
void crest__name_function(char *buf, size_t len, const void *fn) {
    Dl_info info;
    memset(&info, 0, sizeof info);
    if (fn && dladdr(fn, &info) && info.dli_sname) {
        snprintf(buf, len, "%s", info.dli_sname);
    } else if (fn && info.dli_fname && info.dli_fbase) {
        const char *base = strrchr(info.dli_fname, '/');
        snprintf(buf, len, "%s+0x%" PRIxPTR, base ? base + 1 : info.dli_fname,
                 (uintptr_t)fn - (uintptr_t)info.dli_fbase);
    } else {
        snprintf(buf, len, "%p", fn);
    }
}

#define FN(f) ((const void *)(uintptr_t)(f))

void crest__conn_handler_name(const struct crest_conn *c, char *buf, size_t len) {
    const crest_handler_t *h = &c->ep->handler;
    if (h->name)
        snprintf(buf, len, "%s", h->name);
    else
        crest__name_function(buf, len, h->on_message ? FN(h->on_message) : FN(h->on_data));
}

static void describe_conn(crest_loop_t *loop, struct crest_conn *c, crest_slow_cb_t *r) {
    r->kind = CREST_CB_CONN;
    r->conn_id = c->id;
    crest__conn_handler_name(c, r->name, sizeof r->name);
    snprintf(r->what, sizeof r->what, "%s", crest__what_name(loop->ins.cur_what));
    if (crest_conn_peer(c, r->peer, sizeof r->peer) < 0)
        snprintf(r->peer, sizeof r->peer, "fd %d", c->io.fd);
}

/* Fill r's kind, name, what, peer and conn_id for a callback. */
static void describe(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj, crest_slow_cb_t *r) {
    r->kind = kind;
    switch (kind) {
    case CREST_CB_IO:
    case CREST_CB_CONN:
    case CREST_CB_ACCEPT:
    case CREST_CB_SIGNAL: {
        const struct crest_io *io = obj;
        if (io->cb == crest__conn_on_io) {
            describe_conn(loop, CREST__CONTAINER_OF(io, struct crest_conn, io), r);
        } else if (io->cb == crest__listener_on_io) {
            const struct crest_listener *l = crest__listener_of_io(io);
            r->kind = CREST_CB_ACCEPT;
            const crest_handler_t *h = crest__listener_handler(l);
            if (!h)
                snprintf(r->name, sizeof r->name, "closed listener");
            else if (h->name)
                snprintf(r->name, sizeof r->name, "%s", h->name);
            else
                crest__name_function(r->name, sizeof r->name,
                              h->on_message ? FN(h->on_message) : FN(h->on_data));
            snprintf(r->what, sizeof r->what, "%s", crest__what_name(loop->ins.cur_what));
            crest_addr_format(crest__listener_addr(l), r->peer, sizeof r->peer);
        } else if (io->cb == crest__signal_on_io) {
            r->kind = CREST_CB_SIGNAL;
            snprintf(r->name, sizeof r->name, "signal watchers");
        } else {
            r->kind = CREST_CB_IO;
            crest__name_function(r->name, sizeof r->name, FN(io->cb));
            snprintf(r->peer, sizeof r->peer, "fd %d", io->fd);
        }
        break;
    }
    default:
        crest__name_function(r->name, sizeof r->name, obj);
        break;
    }
}

static void fmt_ns(char *buf, size_t len, uint64_t ns) {
    if (ns >= NS_PER_S)
        snprintf(buf, len, "%.2f s", (double)ns / 1e9);
    else if (ns >= NS_PER_MS)
        snprintf(buf, len, "%.1f ms", (double)ns / 1e6);
    else
        snprintf(buf, len, "%.0f us", (double)ns / 1e3);
}

/* A slow callback: counted, kept in the ring, logged at most once a
 * second (with how many were not logged since). */
static void record_slow(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj, uint64_t ns,
                        uint64_t batch) {
    struct crest__insight *ins = &loop->ins;
    crest_insight_t *f = &ins->fig;
    crest_slow_cb_t r;
    memset(&r, 0, sizeof r);
    r.batch = batch > UINT32_MAX ? UINT32_MAX : (uint32_t)batch;
    if (batch == 1) {
        describe(loop, kind, obj, &r);
        f->slow_callbacks++;
        f->slow_by_kind[r.kind]++;
    } else {
        r.kind = kind;
        snprintf(r.name, sizeof r.name, "batch of %" PRIu64 " callbacks", batch);
        f->slow_unnamed++;
    }
    r.duration_ns = ns;
    r.at_ns = crest__clock_ns();
    if (f->slow_ring_len == CREST_SLOW_RING) {
        memmove(&f->slow_ring[0], &f->slow_ring[1], (CREST_SLOW_RING - 1) * sizeof r);
        f->slow_ring[CREST_SLOW_RING - 1] = r;
    } else {
        f->slow_ring[f->slow_ring_len++] = r;
    }
    if (ins->last_log_ns && r.at_ns - ins->last_log_ns < SLOW_LOG_EVERY_NS) {
        ins->log_suppressed++;
        return;
    }
    char took[32], limit[32], more[64] = "";
    fmt_ns(took, sizeof took, ns);
    fmt_ns(limit, sizeof limit, ins->slow_ns);
    if (ins->log_suppressed)
        snprintf(more, sizeof more, " (%" PRIu64 " more since the last report)",
                 ins->log_suppressed);
    char who[96] = "";
    if (r.conn_id)
        snprintf(who, sizeof who, " conn #%" PRIu64 " %s", r.conn_id, r.peer);
    else if (r.peer[0])
        snprintf(who, sizeof who, " %s", r.peer);
    if (batch == 1)
        crest_log(CREST_LOG_WARN, "slow callback: %s %s%s%s%s took %s (threshold %s)%s",
                  crest_cb_kind_name(r.kind), r.name, r.what[0] ? " " : "", r.what, who, took,
                  limit, more);
    else
        crest_log(CREST_LOG_WARN,
                  "slow batch: %" PRIu64 " %s callbacks took %s together (threshold %s; not "
                  "timed one by one%s)%s",
                  batch, crest_cb_kind_name(r.kind), took, limit,
                  ins->opts.timing == CREST_TIMING_AUTO ? ": timing each from now on" : "", more);
    ins->last_log_ns = r.at_ns;
    ins->log_suppressed = 0;
}

void crest__insight_cb_enter(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj) {
    CREST__WHAT(loop, CREST__WHAT_NONE);
    if (atomic_load_explicit(&crest__watchdog_on, memory_order_relaxed))
        crest__watchdog_enter(loop, kind, obj);
}

void crest__insight_timed(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj,
                          uint64_t ns) {
    struct crest__insight *ins = &loop->ins;
    if (!ins->on)
        return;
    ins->fig.timed_callbacks++;
    crest__hist_record(&ins->fig.callback_time, ns);
    if (CREST__UNLIKELY(ns >= ins->slow_ns))
        record_slow(loop, kind, obj, ns, 1);
}

void crest__insight_cb_leave(crest_loop_t *loop, crest_cb_kind_t kind, const void *obj) {
    struct crest__insight *ins = &loop->ins;
    if (!ins->time_each)
        return;
    uint64_t now = crest__clock_ns();
    uint64_t ns = now - ins->cb_start_ns;
    ins->cb_start_ns = now;
    if (kind == CREST_CB_IO && obj == &loop->wake_io)
        return; /* its posted callbacks were timed one by one */
    crest__insight_timed(loop, kind, obj, ns);
}

/* ---- per iteration ---- */

void crest__insight_slow_batch(crest_loop_t *loop, crest_cb_kind_t kind, uint64_t callbacks,
                               uint64_t ns) {
    struct crest__insight *ins = &loop->ins;
    if (!ins->on || ins->time_each || callbacks == 0)
        return; /* timed one by one already, or nothing ran */
    if (callbacks == 1 && !loop->last_cb)
        return; /* cannot happen: each phase sets it */
    record_slow(loop, kind, loop->last_cb, ns, callbacks);
}

void crest__insight_iteration(crest_loop_t *loop, uint64_t busy_ns, int events, uint64_t end_ns) {
    struct crest__insight *ins = &loop->ins;
    crest_insight_t *f = &ins->fig;
    f->iterations++;
    if (events > 0) {
        f->events += (unsigned)events;
        crest__hist_record(&f->events_per_wait, (unsigned)events);
    }
    crest__hist_record(&f->iteration_busy, busy_ns);
    if (CREST__UNLIKELY(busy_ns >= ins->slow_ns)) {
        f->slow_iterations++;
        /* HAProxy's hysteresis: time every callback while iterations run
         * slow, so that the next slow one is named even in a batch. */
        if (!ins->time_each && ins->opts.timing == CREST_TIMING_AUTO) {
            ins->time_each = true;
            ins->timing_since_ns = end_ns;
        }
        ins->fast_since_ns = 0;
    } else if (ins->time_each && ins->opts.timing == CREST_TIMING_AUTO) {
        if (ins->fast_since_ns == 0) {
            ins->fast_since_ns = end_ns;
        } else if (end_ns - ins->fast_since_ns >= TIMING_OFF_AFTER_NS) {
            ins->time_each = false;
            f->timing_on_ns += end_ns - ins->timing_since_ns;
        }
    }
    loop->last_cb = NULL;
    if (atomic_load_explicit(&crest__watchdog_on, memory_order_relaxed))
        crest__watchdog_iteration_end(loop, busy_ns);
}

/* ---- the sampler and snapshots ---- */

static void fill_live(crest_loop_t *loop, crest_insight_t *out) {
    struct crest__insight *ins = &loop->ins;
    *out = ins->fig;
    out->taken_ns = crest__clock_ns();
    if (ins->time_each)
        out->timing_on_ns += out->taken_ns - ins->timing_since_ns;
}

static void on_sample(crest_timer_t *t, void *arg) {
    CREST__UNUSED(t);
    crest_loop_t *loop = arg;
    struct crest__insight *ins = &loop->ins;
    crest_insight_t *f = &ins->fig;
    uint64_t now = loop->now_ns;
    f->busy_last_ns = loop->stats.run_ns - ins->sample_busy_prev;
    f->wall_last_ns = now - ins->sample_prev_ns;
    ins->sample_busy_prev = loop->stats.run_ns;
    ins->sample_prev_ns = now;
    crest__insight_sample_cpu(loop, f, now);
    crest__listeners_sample(loop, f);
    crest__fd_growth_sample(f, now, ins->sample_count % 10 == 0);
    crest__conn_pools_sample(loop, f);
    ins->sample_count++;
    pthread_mutex_lock(&ins->pub_lock);
    fill_live(loop, ins->published);
    pthread_mutex_unlock(&ins->pub_lock);
}

int crest_loop_get_insight(crest_loop_t *loop, crest_insight_t *out) {
    if (!loop || !out)
        return -EINVAL;
    fill_live(loop, out);
    return 0;
}

int crest_loop_read_insight(crest_loop_t *loop, crest_insight_t *out) {
    if (!loop || !out)
        return -EINVAL;
    pthread_mutex_lock(&loop->ins.pub_lock);
    *out = *loop->ins.published;
    pthread_mutex_unlock(&loop->ins.pub_lock);
    return 0;
}

void crest_loop_insight_reset(crest_loop_t *loop) {
    struct crest__insight *ins = &loop->ins;
    crest_insight_t *f = &ins->fig;
    uint64_t now = crest__clock_ns();
    memset(f, 0, sizeof *f);
    f->since_ns = f->taken_ns = now;
    f->loops = 1;
    ins->netstat_base_set = false;
    ins->sample_busy_prev = loop->stats.run_ns;
    ins->sample_prev_ns = now;
    if (ins->time_each)
        ins->timing_since_ns = now;
    apply_opts(loop);
}

/* ---- arithmetic on snapshots ---- */

#define DIFF(field) out->field = newer->field - older->field
#define HWIN(field) crest_hist_window(&out->field, &newer->field, &older->field)

void crest_insight_window(crest_insight_t *out, const crest_insight_t *newer,
                          const crest_insight_t *older) {
    if (out != newer)
        memcpy(out, newer, sizeof *out); /* levels, flags, fd origins */
    out->since_ns = older->taken_ns;
    DIFF(iterations);
    for (unsigned i = 0; i < CREST_PHASE_COUNT; i++)
        DIFF(phase_ns[i]);
    DIFF(events);
    HWIN(events_per_wait);
    HWIN(iteration_busy);
    DIFF(slow_iterations);
    DIFF(slow_callbacks);
    for (unsigned i = 0; i < CREST_CB_KIND_COUNT; i++)
        DIFF(slow_by_kind[i]);
    DIFF(slow_unnamed);
    DIFF(timed_callbacks);
    DIFF(timing_on_ns);
    HWIN(callback_time);
    DIFF(blocked);
    DIFF(cpu_ns);
    DIFF(runq_wait_ns);
    DIFF(nivcsw);
    DIFF(nvcsw);
    DIFF(cpu_samples);
    HWIN(rx_dwell);
    DIFF(accept_wakeups);
    DIFF(accepted);
    DIFF(accept_queue_full);
    DIFF(listen_overflows);
    DIFF(listen_drops);
    DIFF(tcp_samples);
    HWIN(rtt);
    DIFF(rttvar_sum_ns);
    DIFF(retransmits);
    DIFF(segs_out);
    DIFF(tcp_busy_ns);
    DIFF(rwnd_limited_ns);
    DIFF(sndbuf_limited_ns);
    DIFF(write_stalls);
    DIFF(write_stalls_sndbuf);
    HWIN(write_stall);
    DIFF(hw_pauses);
    HWIN(hw_pause);
    DIFF(nagle_checks);
    DIFF(nagle_held);
    DIFF(resolve_requests);
    DIFF(resolve_queries);
    DIFF(resolve_cache_hits);
    DIFF(resolve_coalesced);
    DIFF(resolve_failures);
    HWIN(resolve_time);
    DIFF(pool_acquired);
    DIFF(pool_reused);
    DIFF(pool_acquire_timeouts);
    DIFF(pool_connect_failures);
    DIFF(pool_leaks);
    HWIN(pool_acquire_wait);
    HWIN(http_response_time);
    HWIN(http_deferred_time);
    DIFF(pool_exhausted_samples);
    /* The slow callbacks of the window only. */
    unsigned k = 0;
    for (unsigned i = 0; i < newer->slow_ring_len; i++)
        if (newer->slow_ring[i].at_ns > older->taken_ns)
            out->slow_ring[k++] = newer->slow_ring[i];
    out->slow_ring_len = k;
    /* fd origins: growth within the window, matched by origin. */
    for (unsigned i = 0; i < out->fd_origins_len; i++) {
        for (unsigned j = 0; j < older->fd_origins_len; j++) {
            if (strcmp(out->fd_origins[i].origin, older->fd_origins[j].origin) == 0) {
                out->fd_origins[i].opened -= older->fd_origins[j].opened;
                out->fd_origins[i].closed -= older->fd_origins[j].closed;
                break;
            }
        }
    }
}

#define ADD(field) dst->field += src->field
#define MAX(field) \
    if (src->field > dst->field) dst->field = src->field
#define HADD(field) crest_hist_add(&dst->field, &src->field)

void crest_insight_add(crest_insight_t *dst, const crest_insight_t *src) {
    if (dst->loops == 0) {
        *dst = *src;
        return;
    }
    dst->loops += src->loops;
    MAX(taken_ns);
    if (src->since_ns < dst->since_ns)
        dst->since_ns = src->since_ns;
    ADD(iterations);
    for (unsigned i = 0; i < CREST_PHASE_COUNT; i++)
        ADD(phase_ns[i]);
    ADD(events);
    HADD(events_per_wait);
    HADD(iteration_busy);
    ADD(busy_last_ns);
    ADD(wall_last_ns);
    MAX(slow_threshold_ns);
    ADD(slow_iterations);
    ADD(slow_callbacks);
    for (unsigned i = 0; i < CREST_CB_KIND_COUNT; i++)
        ADD(slow_by_kind[i]);
    ADD(slow_unnamed);
    ADD(timed_callbacks);
    ADD(timing_on_ns);
    HADD(callback_time);
    ADD(blocked);
    MAX(blocked_max_ns);
    ADD(cpu_ns);
    ADD(runq_wait_ns);
    ADD(nivcsw);
    ADD(nvcsw);
    ADD(runq_wait_last_ns);
    MAX(runq_wait_max_ns);
    ADD(cpu_samples);
    dst->rx_timestamps = dst->rx_timestamps || src->rx_timestamps;
    HADD(rx_dwell);
    ADD(accept_wakeups);
    ADD(accepted);
    ADD(accept_queue_len);
    ADD(accept_queue_max);
    MAX(accept_queue_peak);
    ADD(accept_queue_full);
    /* netns-wide: the same counters seen by every loop */
    MAX(listen_overflows);
    MAX(listen_drops);
    ADD(tcp_samples);
    HADD(rtt);
    ADD(rttvar_sum_ns);
    ADD(retransmits);
    ADD(segs_out);
    ADD(tcp_busy_ns);
    ADD(rwnd_limited_ns);
    ADD(sndbuf_limited_ns);
    ADD(write_stalls);
    ADD(write_stalls_sndbuf);
    if (src->sndbuf_set_min && (!dst->sndbuf_set_min || src->sndbuf_set_min < dst->sndbuf_set_min))
        dst->sndbuf_set_min = src->sndbuf_set_min;
    HADD(write_stall);
    ADD(hw_pauses);
    HADD(hw_pause);
    ADD(nagle_checks);
    ADD(nagle_held);
    ADD(resolve_requests);
    ADD(resolve_queries);
    ADD(resolve_cache_hits);
    ADD(resolve_coalesced);
    ADD(resolve_failures);
    HADD(resolve_time);
    ADD(pool_acquired);
    ADD(pool_reused);
    ADD(pool_acquire_timeouts);
    ADD(pool_connect_failures);
    ADD(pool_leaks);
    HADD(pool_acquire_wait);
    HADD(http_response_time);
    HADD(http_deferred_time);
    ADD(pool_exhausted_samples);
    ADD(pools);
    ADD(pool_active);
    ADD(pool_idle);
    ADD(pool_waiting);
    ADD(pool_max);
    /* The busiest pool of all the loops: by share of max_size borrowed. */
    if ((uint64_t)src->pool_busiest_active * dst->pool_busiest_max >
            (uint64_t)dst->pool_busiest_active * src->pool_busiest_max ||
        (src->pool_busiest_max && !dst->pool_busiest_max)) {
        dst->pool_busiest_active = src->pool_busiest_active;
        dst->pool_busiest_max = src->pool_busiest_max;
        dst->pool_busiest_waiting = src->pool_busiest_waiting;
        memcpy(dst->pool_busiest, src->pool_busiest, sizeof dst->pool_busiest);
    }
    /* The slow rings, merged by time: the newest CREST_SLOW_RING. */
    crest_slow_cb_t merged[2 * CREST_SLOW_RING];
    unsigned a = 0, b = 0, n = 0;
    while (a < dst->slow_ring_len || b < src->slow_ring_len) {
        if (b == src->slow_ring_len ||
            (a < dst->slow_ring_len && dst->slow_ring[a].at_ns <= src->slow_ring[b].at_ns))
            merged[n++] = dst->slow_ring[a++];
        else
            merged[n++] = src->slow_ring[b++];
    }
    unsigned skip = n > CREST_SLOW_RING ? n - CREST_SLOW_RING : 0;
    memcpy(dst->slow_ring, merged + skip, (n - skip) * sizeof merged[0]);
    dst->slow_ring_len = n - skip;
    /* fd figures are the process's: the same in every loop's snapshot. */
}
