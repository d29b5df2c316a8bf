/* The doctor (doctor.h): a window of a loop's figures in, findings out.
 *
 * Each rule reads a few fields of crest_insight_t, needs enough data before
 * it speaks (a minimum of samples, of busy time, of window length), and
 * guards every division.  The rules, their thresholds and why each default
 * is what it is: docs/latency.md.  In the manner of Redis' LATENCY
 * DOCTOR (a small rule per event, each with a sentence of advice), with the
 * thresholds of the tools users already know: HAProxy's 1 ms loop time for
 * a slow callback, Envoy's watchdog miss (200 ms) and our watchdog's 100 ms
 * for a blocked loop.
 *
 * Pure functions of their arguments: no allocation, no locks, any thread. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "strbuf.h"

static const char *const cause_keys[CREST_CAUSE_COUNT] = {
    "slow_callback", "loop_blocked", "loop_saturated", "cpu_starved", "accept_queue",
    "slow_reader", "sndbuf_limited", "nagle", "network", "fd_growth", "pool_exhausted",
    "slow_response",
};

const char *crest_cause_key(crest_cause_t cause) {
    return (unsigned)cause < CREST_CAUSE_COUNT ? cause_keys[cause] : "?";
}

const char *crest_severity_name(crest_severity_t s) {
    switch (s) {
    case CREST_SEVERITY_INFO:
        return "info";
    case CREST_SEVERITY_WARNING:
        return "warning";
    case CREST_SEVERITY_CRITICAL:
        return "critical";
    }
    return "?";
}

void crest_doctor_opts_init(crest_doctor_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->slow_callback_min = 1;
    o->blocked_ms = 100;
    o->saturated_utilization = 0.90;
    o->cpu_starved_fraction = 0.10;
    o->accept_drops_min = 1;
    o->slow_reader_fraction = 0.20;
    o->sndbuf_limited_fraction = 0.20;
    o->nagle_fraction = 0.10;
    o->nagle_min = 3;
    o->retrans_fraction = 0.01;
    o->rtt_p99_ms = 50;
    o->fd_growth_min = 64;
    o->min_window_ms = 1000;
    o->saturated_busy_p99_us = 1000;
    o->accept_queue_fraction = 0.75;
    o->tcp_busy_min_ms = 100;
    o->write_stall_p99_ms = 100;
    o->write_stalls_min = 8;
    o->nagle_checks_min = 20;
    o->network_samples_min = 10;
    o->network_segs_min = 1000;
    o->fd_unregistered_max = 1024;
    o->slow_callback_share = 0.001;
    o->http_response_p99_ms = 100;
    o->http_responses_min = 20;
}

/* ---- formatting numbers for people ---- */

#define MS(x) ((uint64_t)(x) * 1000000u)
#define US(x) ((uint64_t)(x) * 1000u)

typedef struct {
    char s[32];
} numbuf_t;

/* "42 us", "1.2 ms", "310 ms", "1.50 s" */
static numbuf_t dur(uint64_t ns) {
    numbuf_t b;
    if (ns >= 1000000000u)
        snprintf(b.s, sizeof b.s, "%.2f s", (double)ns / 1e9);
    else if (ns >= 10000000u)
        snprintf(b.s, sizeof b.s, "%.0f ms", (double)ns / 1e6);
    else if (ns >= 1000000u)
        snprintf(b.s, sizeof b.s, "%.1f ms", (double)ns / 1e6);
    else if (ns >= 1000u)
        snprintf(b.s, sizeof b.s, "%.0f us", (double)ns / 1e3);
    else
        snprintf(b.s, sizeof b.s, "%" PRIu64 " ns", ns);
    return b;
}

/* 1204 -> "1,204" */
static numbuf_t num(uint64_t v) {
    char raw[24];
    numbuf_t b;
    int n = snprintf(raw, sizeof raw, "%" PRIu64, v);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            b.s[o++] = ',';
        b.s[o++] = raw[i];
    }
    b.s[o] = '\0';
    return b;
}

/* a / b, 0 when b is 0 */
static double ratio(uint64_t a, uint64_t b) {
    return b ? (double)a / (double)b : 0.0;
}

/* A percentage with two significant digits, never in exponent form. */
typedef struct {
    char s[24];
} pct_t;

static pct_t pct_text(double p) {
    pct_t t;
    if (p >= 10.0)
        snprintf(t.s, sizeof t.s, "%.0f", p);
    else if (p >= 1.0)
        snprintf(t.s, sizeof t.s, "%.1f", p);
    else if (p >= 0.001)
        snprintf(t.s, sizeof t.s, "%.2g", p);
    else
        snprintf(t.s, sizeof t.s, "<0.001");
    return t;
}

/* ---- the findings being built ---- */

static crest_finding_t *add(crest_diagnosis_t *dx, crest_cause_t cause, crest_severity_t sev) {
    crest_finding_t *f = &dx->findings[dx->n++]; /* one per cause: n <= 10 */
    f->cause = cause;
    f->severity = sev;
    return f;
}

static void evidence(crest_finding_t *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void evidence(crest_finding_t *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->evidence, sizeof f->evidence, fmt, ap);
    va_end(ap);
}

static void advice(crest_finding_t *f, const char *text) {
    snprintf(f->advice, sizeof f->advice, "%s", text);
}

/* How many values of h are at least v, counted by whole buckets whose
 * lowest value is >= v (an undercount by at most one bucket: a rule that
 * fires on it never fires on values below v). */
static uint64_t count_ge(const crest_hist_t *h, uint64_t v) {
    if (h->count == 0 || h->max < v)
        return 0;
    uint64_t n = 0;
    for (unsigned i = crest_hist_index(v); i < CREST_HIST_BUCKETS; i++)
        if (crest_hist_lowest(i) >= v)
            n += h->buckets[i];
    return n;
}

/* What the rules share. */
typedef struct {
    const crest_insight_t *w;
    const crest_doctor_opts_t *o;
    uint64_t window_ns;  /* taken - since */
    uint64_t wall_ns;    /* window_ns * loops: each loop's wall time */
    uint64_t busy_ns;    /* every phase but the wait */
    double util;
    uint64_t blocked_ns; /* o->blocked_ms in ns */
} ctx_t;

/* ---- the rules ---- */

/* loop_blocked: an iteration that kept the loop from polling for
 * blocked_ms or more.  Three witnesses: the watchdog (saw it while it was
 * stuck), the ring of slow callbacks (named ones), the iteration histogram
 * (unnamed ones too). */
static uint64_t blocked_iterations(const ctx_t *c) {
    return count_ge(&c->w->iteration_busy, c->blocked_ns);
}

static void rule_loop_blocked(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_slow_cb_t *worst = NULL;
    unsigned in_ring = 0;
    for (unsigned i = 0; i < w->slow_ring_len && i < CREST_SLOW_RING; i++) {
        const crest_slow_cb_t *r = &w->slow_ring[i];
        if (r->duration_ns >= c->blocked_ns) {
            in_ring++;
            if (!worst || r->duration_ns > worst->duration_ns)
                worst = r;
        }
    }
    uint64_t iters = blocked_iterations(c);
    if (in_ring == 0 && iters == 0 && w->blocked == 0)
        return;
    uint64_t n = iters > in_ring ? iters : in_ring;
    if (w->blocked > n)
        n = w->blocked;
    uint64_t longest = w->blocked_max_ns;
    if (worst && worst->duration_ns > longest)
        longest = worst->duration_ns;
    if (iters && w->iteration_busy.max > longest)
        longest = w->iteration_busy.max;
    crest_finding_t *f = add(dx, CREST_CAUSE_LOOP_BLOCKED, CREST_SEVERITY_CRITICAL);
    char who[224] = "";
    if (worst)
        snprintf(who, sizeof who, "; worst: %s %.48s%s%.16s%s%.64s took %s",
                 crest_cb_kind_name(worst->kind), worst->name, worst->what[0] ? " " : "",
                 worst->what, worst->peer[0] ? " " : "", worst->peer, dur(worst->duration_ns).s);
    char wd[64] = "";
    if (w->blocked)
        snprintf(wd, sizeof wd, " (watchdog: %s)", num(w->blocked).s);
    evidence(f, "the loop did not poll for %s or more %s time%s%s, longest %s%s",
             dur(c->blocked_ns).s, num(n).s, n == 1 ? "" : "s", wd, dur(longest).s, who);
    advice(f, "Never block the loop thread: move blocking calls (disk, DNS, locks, sleeps, "
              "big computations) to a worker thread and hand the result back with "
              "crest_loop_post().");
}

/* slow_callback: callbacks (or batches) over the slow threshold, those
 * long enough to be loop_blocked excepted. */
static void rule_slow_callback(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    uint64_t total = w->slow_callbacks + w->slow_unnamed;
    /* Those that count as a blocked loop: the larger of the named ones in
     * the ring and the blocked iterations (an unnamed slow batch is one
     * iteration). */
    uint64_t ring_blocked = 0;
    const crest_slow_cb_t *worst = NULL, *worst_any = NULL;
    for (unsigned i = 0; i < w->slow_ring_len && i < CREST_SLOW_RING; i++) {
        const crest_slow_cb_t *r = &w->slow_ring[i];
        if (!worst_any || r->duration_ns > worst_any->duration_ns)
            worst_any = r;
        if (r->duration_ns >= c->blocked_ns)
            ring_blocked++;
        else if (!worst || r->duration_ns > worst->duration_ns)
            worst = r;
    }
    uint64_t excluded = blocked_iterations(c);
    if (ring_blocked > excluded)
        excluded = ring_blocked;
    uint64_t n = total > excluded ? total - excluded : 0;
    if (n == 0 || n < c->o->slow_callback_min)
        return;
    /* Rare ones do not explain a latency: under slow_callback_share of
     * iterations (0.1%) they stay below the p99.9 iteration time.  On a
     * virtual machine the host stalls a vCPU for a few ms now and then,
     * which no figure of the guest shows (steal time reads 0 here): a few
     * "slow" callbacks a second that are nobody's fault.  They stay in
     * the ring, /debug/crest/slow and crest_slow_callbacks_total. */
    uint64_t slow_its = w->slow_iterations > excluded ? w->slow_iterations - excluded : 0;
    if (slow_its == 0 || slow_its > n)
        slow_its = n; /* every slow iteration holds one at least */
    if (w->iterations && (double)slow_its < c->o->slow_callback_share * (double)w->iterations)
        return;
    /* Busy time is wall time: an iteration preempted for a few ms looks
     * slow though no callback was.  When the slow ones are not the rule
     * (under 10% of iterations) and the window's CPU figures could account for
     * every one of them (at least one involuntary switch each, landing in
     * busy time: nivcsw x utilization; and run-queue wait as long as all
     * of them together, each counted at least a threshold), they are not
     * blamed on a callback: cpu_starved judges the CPU.  A slow callback
     * that is frequent, or on a loop that was not kept off its CPU that
     * long, is reported. */
    uint64_t thr = w->slow_threshold_ns ? w->slow_threshold_ns : MS(1);
    uint64_t slow_sum = 0, in_ring = 0;
    for (unsigned i = 0; i < w->slow_ring_len && i < CREST_SLOW_RING; i++) {
        if (w->slow_ring[i].duration_ns < c->blocked_ns) {
            slow_sum += w->slow_ring[i].duration_ns;
            in_ring++;
        }
    }
    if (n > in_ring)
        slow_sum += (n - in_ring) * thr; /* fell out of the ring */
    if (w->iterations && w->slow_iterations * 10 < w->iterations && w->nivcsw > 0 &&
        (double)n <= (double)w->nivcsw * c->util && w->runq_wait_ns >= slow_sum)
        return;
    /* Critical when at least 1% of iterations ran slow: the p99 of the
     * loop's iteration time is itself slow. */
    bool p99 = w->iterations && w->slow_iterations * 100 >= w->iterations;
    crest_finding_t *f = add(dx, CREST_CAUSE_SLOW_CALLBACK,
                             p99 ? CREST_SEVERITY_CRITICAL : CREST_SEVERITY_WARNING);
    /* Per kind, the blocked ones of the ring taken out. */
    uint64_t by_kind[CREST_CB_KIND_COUNT];
    memcpy(by_kind, w->slow_by_kind, sizeof by_kind);
    for (unsigned i = 0; i < w->slow_ring_len && i < CREST_SLOW_RING; i++) {
        const crest_slow_cb_t *r = &w->slow_ring[i];
        if (r->duration_ns >= c->blocked_ns && (unsigned)r->kind < CREST_CB_KIND_COUNT &&
            by_kind[r->kind] > 0)
            by_kind[r->kind]--;
    }
    char kinds[128] = "";
    size_t k = 0;
    for (unsigned i = 0; i < CREST_CB_KIND_COUNT && k < sizeof kinds; i++) {
        if (!by_kind[i])
            continue;
        int m = snprintf(kinds + k, sizeof kinds - k, "%s%s %s", k ? ", " : "",
                         crest_cb_kind_name((crest_cb_kind_t)i), num(by_kind[i]).s);
        if (m < 0)
            break;
        k += (size_t)m;
    }
    if (w->slow_unnamed && k < sizeof kinds)
        snprintf(kinds + k, sizeof kinds - k, "%s%s in unnamed batches", k ? "; " : "",
                 num(w->slow_unnamed).s);
    if (!worst)
        worst = worst_any; /* every one in the ring was a blocked one */
    char who[224] = "";
    if (worst)
        snprintf(who, sizeof who, "; worst: %s %.48s%s%.16s%s%.64s %s",
                 crest_cb_kind_name(worst->kind), worst->name, worst->what[0] ? " " : "",
                 worst->what, worst->peer[0] ? " " : "", worst->peer, dur(worst->duration_ns).s);
    char pct[48] = "";
    if (w->iterations && w->slow_iterations)
        snprintf(pct, sizeof pct, ", %s%% of iterations slow",
                 pct_text(100.0 * ratio(w->slow_iterations, w->iterations)).s);
    evidence(f, "%s slow callback%s over %s%s%s%s%s%s", num(n).s, n == 1 ? "" : "s",
             dur(w->slow_threshold_ns ? w->slow_threshold_ns : MS(1)).s, kinds[0] ? " (" : "",
             kinds, kinds[0] ? ")" : "", pct, who);
    if (w->slow_callbacks == 0)
        advice(f, "Set timing = CREST_TIMING_ALWAYS to name the slow callbacks, then move their "
                  "slow work to a worker thread or split it into smaller steps.");
    else
        advice(f, "Make the named callback faster: move its slow work to a worker thread "
                  "(answer with crest_loop_post()) or split it into smaller steps.");
}

/* loop_saturated: the loop is busy nearly all the time AND that costs
 * latency.  Busy alone is not sick: an event that arrives while the loop is
 * busy waits for the rest of the iteration, so with iterations of 20 us a
 * loop 99% busy still answers within tens of microseconds (a benchmark).
 * The rule asks for a latency consequence as well: the p99 iteration busy
 * time (the wait an event suffers behind the work already under way), or,
 * when rx_timestamps is on, the p99 time data sat in the socket, at or over
 * saturated_busy_p99_us. */
static void rule_loop_saturated(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    if (c->window_ns < MS(o->min_window_ms) || c->wall_ns == 0 || w->iterations == 0)
        return;
    if (c->util < o->saturated_utilization)
        return;
    uint64_t limit = US(o->saturated_busy_p99_us);
    uint64_t busy99 = crest_hist_percentile(&w->iteration_busy, 99.0);
    uint64_t dwell99 = w->rx_timestamps ? crest_hist_percentile(&w->rx_dwell, 99.0) : 0;
    if (busy99 < limit && dwell99 < limit)
        return;
    crest_finding_t *f = add(dx, CREST_CAUSE_LOOP_SATURATED,
                             c->util >= 0.98 ? CREST_SEVERITY_CRITICAL : CREST_SEVERITY_WARNING);
    char dwell[64] = "";
    if (w->rx_timestamps && w->rx_dwell.count)
        snprintf(dwell, sizeof dwell, ", p99 socket dwell %s", dur(dwell99).s);
    evidence(f, "the loop was busy %.0f%% of %s (%s iterations), p99 iteration %s%s, "
                "p99 events per wait %s (mean %.1f)",
             100.0 * c->util, dur(c->window_ns).s, num(w->iterations).s, dur(busy99).s, dwell,
             num(crest_hist_percentile(&w->events_per_wait, 99.0)).s,
             crest_hist_mean(&w->events_per_wait));
    advice(f, "Spread the load over more loops (crest_group with SO_REUSEPORT) or make the "
              "per-message work cheaper; this loop has no time left to answer promptly.");
}

/* cpu_starved: the loop thread was runnable but waited for a CPU
 * (schedstat), a share of the window's wall time. */
static void rule_cpu_starved(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    if (c->window_ns < MS(o->min_window_ms) || c->wall_ns == 0 || w->cpu_samples == 0)
        return;
    double frac = ratio(w->runq_wait_ns, c->wall_ns);
    if (w->runq_wait_ns == 0 || frac < o->cpu_starved_fraction)
        return;
    crest_finding_t *f = add(dx, CREST_CAUSE_CPU_STARVED,
                             frac >= 3 * o->cpu_starved_fraction ? CREST_SEVERITY_CRITICAL
                                                                 : CREST_SEVERITY_WARNING);
    double per_s = (double)w->runq_wait_ns / ((double)c->wall_ns / 1e9);
    char worst[64] = "";
    if (w->runq_wait_max_ns)
        snprintf(worst, sizeof worst, ", worst period %s", dur(w->runq_wait_max_ns).s);
    evidence(f, "the loop waited %s for a CPU per second (%.0f%% of the window, %s in all%s), "
                "%s involuntary context switches (%.0f/s)",
             dur((uint64_t)per_s).s, 100.0 * frac, dur(w->runq_wait_ns).s, worst,
             num(w->nivcsw).s, (double)w->nivcsw / ((double)c->wall_ns / 1e9));
    advice(f, "Give the loop a CPU of its own: fewer busy threads or processes than cores, "
              "pin loops apart from CPU hogs (taskset, cpusets), or raise its priority.");
}

/* accept_queue: connections the kernel dropped or kept waiting because the
 * loop did not accept them fast enough. */
static void rule_accept_queue(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    uint64_t drops = w->listen_overflows + w->listen_drops;
    bool dropped = drops > 0 && drops >= o->accept_drops_min;
    bool high = w->accept_queue_max > 0 &&
                (double)w->accept_queue_peak >= o->accept_queue_fraction * w->accept_queue_max;
    if (!dropped && w->accept_queue_full == 0 && !high)
        return;
    crest_severity_t sev = dropped                  ? CREST_SEVERITY_CRITICAL
                           : w->accept_queue_full > 0 ? CREST_SEVERITY_WARNING
                                                      : CREST_SEVERITY_INFO;
    crest_finding_t *f = add(dx, CREST_CAUSE_ACCEPT_QUEUE, sev);
    char drops_s[128] = "", full_s[96] = "";
    if (drops)
        snprintf(drops_s, sizeof drops_s, "%s listen overflows and %s drops (network namespace), ",
                 num(w->listen_overflows).s, num(w->listen_drops).s);
    if (w->accept_queue_full)
        snprintf(full_s, sizeof full_s, "%s samples with a full accept queue, ",
                 num(w->accept_queue_full).s);
    evidence(f, "%s%slongest queue %s of backlog %s, %s accepted in %s wakeups", drops_s, full_s,
             num(w->accept_queue_peak).s, num(w->accept_queue_max).s, num(w->accepted).s,
             num(w->accept_wakeups).s);
    advice(f, "Accept faster or queue more: raise the listener backlog (and net.core.somaxconn),"
              " keep the loop free of slow callbacks, or accept on more loops (SO_REUSEPORT).");
}

/* slow_reader: our sending was held back by the peer's receive window
 * (tcpi_rwnd_limited of busy time), or, without enough TCP_INFO, output
 * waited long for EPOLLOUT. */
/* Write stalls on connections whose send buffer the options fixed, with
 * the peer's receive window not the limit: our own buffer held sending
 * back.  (The kernel's tcpi_sndbuf_limited hardly ever counts over
 * loopback, where ACKs come back at once.) */
static bool stalls_by_fixed_sndbuf(const ctx_t *c, bool busy_enough, double rwnd_frac) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    return w->write_stalls_sndbuf > 0 && w->write_stalls_sndbuf >= o->write_stalls_min &&
           w->write_stalls_sndbuf * 2 >= w->write_stalls &&
           crest_hist_percentile(&w->write_stall, 99.0) >= MS(o->write_stall_p99_ms) &&
           !(busy_enough && rwnd_frac >= o->slow_reader_fraction);
}

static void rule_slow_reader(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    bool busy_enough = w->tcp_busy_ns >= MS(o->tcp_busy_min_ms) && w->tcp_busy_ns > 0;
    double frac = ratio(w->rwnd_limited_ns, w->tcp_busy_ns);
    bool by_rwnd = busy_enough && w->rwnd_limited_ns > 0 && frac >= o->slow_reader_fraction;
    uint64_t stall99 = crest_hist_percentile(&w->write_stall, 99.0);
    /* Stalls alone: only when nothing says the send buffer is to blame
     * (then it is sndbuf_limited's): TCP_INFO, or stalls on connections
     * with a fixed send buffer while the peers' window was open. */
    bool by_stall = w->write_stalls > 0 && w->write_stalls >= o->write_stalls_min &&
                    stall99 >= MS(o->write_stall_p99_ms) &&
                    !(busy_enough && w->sndbuf_limited_ns > w->rwnd_limited_ns) &&
                    !stalls_by_fixed_sndbuf(c, busy_enough, frac);
    if (!by_rwnd && !by_stall)
        return;
    crest_severity_t sev = by_rwnd && frac >= 0.5 ? CREST_SEVERITY_CRITICAL
                                                  : CREST_SEVERITY_WARNING;
    crest_finding_t *f = add(dx, CREST_CAUSE_SLOW_READER, sev);
    char pauses[128] = "";
    if (w->hw_pauses)
        snprintf(pauses, sizeof pauses, ", %s high-water pauses of reading (p99 %s)",
                 num(w->hw_pauses).s, dur(crest_hist_percentile(&w->hw_pause, 99.0)).s);
    if (busy_enough && by_rwnd)
        evidence(f, "sending was limited by the peers' receive window %s of %s busy (%.0f%%, "
                    "%s connections), %s write stalls (p99 %s)%s",
                 dur(w->rwnd_limited_ns).s, dur(w->tcp_busy_ns).s, 100.0 * frac,
                 num(w->tcp_samples).s, num(w->write_stalls).s, dur(stall99).s, pauses);
    else
        evidence(f, "%s write stalls waiting for EPOLLOUT, p99 %s, max %s%s", num(w->write_stalls).s,
                 dur(stall99).s, dur(w->write_stall.max).s, pauses);
    advice(f, "Some peers read slowly: bound what you queue per connection (high water), "
              "time out connections that do not drain, and check those clients.");
}

/* sndbuf_limited: our own send buffer, not the peer, held sending back:
 * TCP_INFO's tcpi_sndbuf_limited, or write stalls on connections whose
 * SO_SNDBUF was fixed while the peers' window was open. */
static void rule_sndbuf_limited(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    bool busy_enough = w->tcp_busy_ns >= MS(o->tcp_busy_min_ms) && w->tcp_busy_ns > 0;
    double frac = ratio(w->sndbuf_limited_ns, w->tcp_busy_ns);
    bool by_info = busy_enough && w->sndbuf_limited_ns > 0 && frac >= o->sndbuf_limited_fraction;
    bool by_stall = stalls_by_fixed_sndbuf(c, busy_enough, ratio(w->rwnd_limited_ns, w->tcp_busy_ns));
    if (!by_info && !by_stall)
        return;
    crest_finding_t *f = add(dx, CREST_CAUSE_SNDBUF_LIMITED,
                             by_info && frac >= 0.5 ? CREST_SEVERITY_CRITICAL
                                                    : CREST_SEVERITY_WARNING);
    uint64_t stall99 = crest_hist_percentile(&w->write_stall, 99.0);
    if (by_info)
        evidence(f, "sending was limited by our send buffer %s of %s busy (%.0f%%, %s connections), "
                    "%s write stalls (p99 %s)",
                 dur(w->sndbuf_limited_ns).s, dur(w->tcp_busy_ns).s, 100.0 * frac,
                 num(w->tcp_samples).s, num(w->write_stalls).s, dur(stall99).s);
    else if (w->tcp_busy_ns)
        evidence(f, "%s write stalls (p99 %s) on connections whose SO_SNDBUF was set (smallest "
                    "%s bytes asked), while the peers' receive window was not the limit (%s of %s "
                    "busy)",
                 num(w->write_stalls_sndbuf).s, dur(stall99).s, num(w->sndbuf_set_min).s,
                 dur(w->rwnd_limited_ns).s, dur(w->tcp_busy_ns).s);
    else
        evidence(f, "%s write stalls (p99 %s) on connections whose SO_SNDBUF was set (smallest "
                    "%s bytes asked); no connection closed yet to say whether the peers' window "
                    "also limited",
                 num(w->write_stalls_sndbuf).s, dur(stall99).s, num(w->sndbuf_set_min).s);
    advice(f, "Raise the send buffer (crest_conn_set_sndbuf, or sndbuf 0 to let the kernel "
              "autotune it) so a reply fits in it at the path's bandwidth-delay product.");
}

/* nagle: small writes the kernel held back although the window was open:
 * Nagle waiting for an ACK (that a delayed ACK holds back up to 40 ms). */
static void rule_nagle(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    if (w->nagle_checks == 0 || w->nagle_checks < o->nagle_checks_min ||
        w->nagle_held < o->nagle_min || w->nagle_held == 0)
        return;
    double frac = ratio(w->nagle_held, w->nagle_checks);
    if (frac < o->nagle_fraction)
        return;
    crest_finding_t *f = add(dx, CREST_CAUSE_NAGLE, CREST_SEVERITY_WARNING);
    evidence(f, "%s of %s small writes sampled on connections without TCP_NODELAY (%.0f%%) "
                "were held back by Nagle with the window open",
             num(w->nagle_held).s, num(w->nagle_checks).s, 100.0 * frac);
    advice(f, "Turn TCP_NODELAY on (crest_conn_set_nodelay, on by default) or write each reply "
              "in one piece, so Nagle does not wait for a delayed ACK (up to 40 ms).");
}

/* network: loss (retransmits / segments sent) or a long round trip, from
 * TCP_INFO at close.  Not something the service can fix, but it explains
 * latency the loop cannot see. */
static void rule_network(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    if (w->tcp_samples == 0 || w->tcp_samples < o->network_samples_min)
        return;
    double loss = ratio(w->retransmits, w->segs_out);
    bool lossy = w->segs_out > 0 && w->segs_out >= o->network_segs_min && w->retransmits > 0 &&
                 loss >= o->retrans_fraction;
    uint64_t rtt99 = crest_hist_percentile(&w->rtt, 99.0);
    bool far = w->rtt.count > 0 && rtt99 >= MS(o->rtt_p99_ms) && o->rtt_p99_ms > 0;
    if (!lossy && !far)
        return;
    crest_severity_t sev = !lossy                          ? CREST_SEVERITY_INFO
                           : loss >= 5 * o->retrans_fraction ? CREST_SEVERITY_CRITICAL
                                                             : CREST_SEVERITY_WARNING;
    crest_finding_t *f = add(dx, CREST_CAUSE_NETWORK, sev);
    evidence(f, "%s retransmits of %s segments sent (%.1f%%), rtt p99 %s, mean %s, mean "
                "rttvar %s (%s connections)",
             num(w->retransmits).s, num(w->segs_out).s, 100.0 * loss, dur(rtt99).s,
             dur((uint64_t)crest_hist_mean(&w->rtt)).s,
             dur(w->tcp_samples ? w->rttvar_sum_ns / w->tcp_samples : 0).s,
             num(w->tcp_samples).s);
    if (lossy)
        advice(f, "The network loses packets: each loss costs at least one rtt; check the path "
                  "(links, queues, MTU) and the peers' location.");
    else
        advice(f, "The peers are far away or behind a slow path; serve them from closer or "
                  "cut the round trips per request.");
}

/* fd_growth: an origin whose open fds keep rising.  A ramp-up is not a
 * leak: the rule asks, of an origin that opened fd_growth_min more than it
 * closed in the window, either that its fds from before the window are
 * still open (open > net growth: it keeps rising), or that its growth is
 * more than the connections accepted in the window can explain (net >
 * accepted + fd_growth_min: fds that are not the clients of a server
 * ramping up, e.g. a pipe per message). */
static void rule_fd_growth(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_doctor_opts_t *o = c->o;
    const struct crest_fd_origin_growth *worst = NULL;
    uint64_t worst_net = 0;
    unsigned growing = 0;
    unsigned len = w->fd_origins_len < 8 ? w->fd_origins_len : 8;
    for (unsigned i = 0; i < len; i++) {
        const struct crest_fd_origin_growth *g = &w->fd_origins[i];
        if (g->opened <= g->closed)
            continue;
        uint64_t net = g->opened - g->closed;
        if (net < o->fd_growth_min || net == 0 || g->open == 0)
            continue;
        bool rising = g->open > net;
        bool unexplained = net - o->fd_growth_min > w->accepted;
        if (!rising && !unexplained)
            continue;
        growing++;
        if (net > worst_net) {
            worst_net = net;
            worst = g;
        }
    }
    bool unreg = w->fds_unregistered > 0 && w->fds_unregistered >= o->fd_unregistered_max;
    if (!worst && !unreg)
        return;
    crest_finding_t *f = add(dx, CREST_CAUSE_FD_GROWTH,
                             worst ? CREST_SEVERITY_WARNING : CREST_SEVERITY_INFO);
    if (worst) {
        char closed[40];
        if (worst->closed)
            snprintf(closed, sizeof closed, "%s closed", num(worst->closed).s);
        else
            snprintf(closed, sizeof closed, "none closed");
        char more[64] = "";
        if (growing > 1)
            snprintf(more, sizeof more, "; %u more origins growing", growing - 1);
        char unr[64] = "";
        if (w->fds_unregistered)
            snprintf(unr, sizeof unr, "; %s fds unregistered", num(w->fds_unregistered).s);
        evidence(f, "+%s fds opened at %.64s in %s, %s, %s open, oldest %s%s%s",
                 num(worst->opened).s, worst->origin, dur(c->window_ns).s, closed,
                 num(worst->open).s, dur(worst->oldest_ns).s, more, unr);
        advice(f, "Likely an fd leak: find the path after that origin that does not close its fd "
                  "(crest_fd_report() lists every open fd with its origin and age).");
    } else {
        evidence(f, "%s fds open that the registry does not know (%s registered)",
                 num(w->fds_unregistered).s, num(w->fds_open).s);
        advice(f, "Open fds through crest or register them (crest_fd_register) so that their "
                  "origin is known, then look for the ones that are never closed.");
    }
}

/* pool_exhausted: the rule of thumb for a connection pool (pool.h) is
 * "active under 80% of max_size, nobody waiting".  Broken when a sample
 * of the window found a pool at 80% or more with callers waiting
 * (warning), or acquires timed out (critical: callers failed). */
static void rule_pool_exhausted(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    if (w->pool_exhausted_samples == 0 && w->pool_acquire_timeouts == 0)
        return;
    crest_finding_t *f =
        add(dx, CREST_CAUSE_POOL_EXHAUSTED,
            w->pool_acquire_timeouts ? CREST_SEVERITY_CRITICAL : CREST_SEVERITY_WARNING);
    char leaks[80] = "";
    if (w->pool_leaks)
        snprintf(leaks, sizeof leaks, "; %s borrows past the leak threshold",
                 num(w->pool_leaks).s);
    evidence(f,
             "pool %.40s: %u of %u connections borrowed, %u callers waiting; %s samples in %s "
             "at 80%%+ with callers waiting; %s acquire timeouts; acquire wait p99 %s%s",
             w->pool_busiest[0] ? w->pool_busiest : "?", w->pool_busiest_active,
             w->pool_busiest_max, w->pool_busiest_waiting, num(w->pool_exhausted_samples).s,
             dur(c->window_ns).s, num(w->pool_acquire_timeouts).s,
             dur(crest_hist_percentile(&w->pool_acquire_wait, 99.0)).s, leaks);
    advice(f, w->pool_leaks
                  ? "Connections are held too long: crest_pool_report() lists each borrowed one "
                    "with its label and age; give them back, or raise max_size."
                  : "Raise the pool's max_size if the target can take more connections, or "
                    "hold each one for less time (crest_pool_report() lists who has them).");
}

/* slow_response: the p99 HTTP response time (insight.h: from the
 * iteration that completed a request to its head written) at or above
 * http_response_p99_ms.  The loop's other rules say why when the loop
 * held the responses; this one says where the time went: the slow
 * responses answered inside on_request waited for the loop (the handler,
 * or the callbacks before it), those answered later waited for what the
 * handler waits for (a worker thread, a backend, a timer), which no loop
 * figure shows.  Warning; critical at 10x the threshold. */
static void rule_slow_response(const ctx_t *c, crest_diagnosis_t *dx) {
    const crest_insight_t *w = c->w;
    const crest_hist_t *all = &w->http_response_time;
    uint32_t min = c->o->http_responses_min ? c->o->http_responses_min : 20;
    if (all->count < min)
        return;
    uint64_t thr = MS(c->o->http_response_p99_ms ? c->o->http_response_p99_ms : 100);
    uint64_t p99 = crest_hist_percentile(all, 99.0);
    if (p99 < thr)
        return;
    uint64_t slow = count_ge(all, thr);
    uint64_t later = count_ge(&w->http_deferred_time, thr);
    if (later > slow)
        later = slow; /* both are whole-bucket counts of the same values */
    crest_finding_t *f = add(dx, CREST_CAUSE_SLOW_RESPONSE,
                             p99 >= 10 * thr ? CREST_SEVERITY_CRITICAL : CREST_SEVERITY_WARNING);
    bool waited = 2 * later >= slow;
    evidence(f,
             "p99 HTTP response %s over %s responses in %s; %s of them %s or longer, %s answered "
             "after on_request returned (%s); p99 iteration %s",
             dur(p99).s, num(all->count).s, dur(c->window_ns).s, num(slow).s, dur(thr).s,
             num(later).s, waited ? "the wait was outside the loop" : "the loop held them",
             dur(crest_hist_percentile(&w->iteration_busy, 99.0)).s);
    advice(f, waited
                  ? "The time is in what the handlers wait for after on_request (a worker "
                    "thread, a backend, a timer), not in the loop: time those waits, or answer "
                    "sooner."
                  : "The loop held these responses: see its other findings (slow_callback, "
                    "loop_saturated, cpu_starved) and make the handlers faster.");
}

/* ---- diagnose ---- */

static bool bad_fraction(double x) {
    return x != x || x < 0.0; /* NaN, or negative */
}

int crest_doctor_diagnose(const crest_insight_t *w, const crest_doctor_opts_t *opts,
                          crest_diagnosis_t *out) {
    if (!w || !out)
        return -EINVAL;
    crest_doctor_opts_t defaults;
    if (!opts) {
        crest_doctor_opts_init(&defaults);
        opts = &defaults;
    }
    if (bad_fraction(opts->saturated_utilization) || bad_fraction(opts->cpu_starved_fraction) ||
        bad_fraction(opts->slow_reader_fraction) || bad_fraction(opts->sndbuf_limited_fraction) ||
        bad_fraction(opts->nagle_fraction) || bad_fraction(opts->retrans_fraction) ||
        bad_fraction(opts->accept_queue_fraction) || bad_fraction(opts->slow_callback_share))
        return -EINVAL;
    memset(out, 0, sizeof *out);

    ctx_t c;
    memset(&c, 0, sizeof c);
    c.w = w;
    c.o = opts;
    c.window_ns = w->taken_ns > w->since_ns ? w->taken_ns - w->since_ns : 0;
    unsigned loops = w->loops ? w->loops : 1;
    c.wall_ns = c.window_ns <= UINT64_MAX / loops ? c.window_ns * loops : UINT64_MAX;
    uint64_t all = 0;
    for (unsigned i = 0; i < CREST_PHASE_COUNT; i++) {
        all += w->phase_ns[i];
        if (i != CREST_PHASE_WAIT)
            c.busy_ns += w->phase_ns[i];
    }
    /* Without a wall time (a snapshot of zero length), the phases are the
     * only clock there is. */
    uint64_t wall = c.wall_ns ? c.wall_ns : all;
    c.util = ratio(c.busy_ns, wall);
    if (c.util > 1.0)
        c.util = 1.0;
    c.blocked_ns = MS(opts->blocked_ms ? opts->blocked_ms : 100);

    out->window_ns = c.window_ns;
    out->iterations = w->iterations;
    out->busy_p99_ns = crest_hist_percentile(&w->iteration_busy, 99.0);
    out->busy_max_ns = w->iteration_busy.max;
    out->utilization = c.util;
    out->rx_dwell_p99_ns = w->rx_timestamps ? crest_hist_percentile(&w->rx_dwell, 99.0) : 0;
    out->rtt_p99_ns = crest_hist_percentile(&w->rtt, 99.0);
    out->http_response_p99_ns = crest_hist_percentile(&w->http_response_time, 99.0);

    rule_slow_callback(&c, out);
    rule_loop_blocked(&c, out);
    rule_loop_saturated(&c, out);
    rule_cpu_starved(&c, out);
    rule_accept_queue(&c, out);
    rule_slow_reader(&c, out);
    rule_sndbuf_limited(&c, out);
    rule_nagle(&c, out);
    rule_network(&c, out);
    rule_fd_growth(&c, out);
    rule_pool_exhausted(&c, out);
    rule_slow_response(&c, out);

    /* Most severe first; within a severity, in the order of the causes
     * (insertion sort: stable, ten at most). */
    for (unsigned i = 1; i < out->n; i++) {
        crest_finding_t f = out->findings[i];
        unsigned j = i;
        while (j > 0 && out->findings[j - 1].severity < f.severity) {
            out->findings[j] = out->findings[j - 1];
            j--;
        }
        out->findings[j] = f;
    }
    return 0;
}

/* ---- output: snprintf-style writers ---- */

typedef struct {
    char *buf;
    size_t len;
    size_t pos; /* what the whole text needs so far */
} out_t;

static void put(out_t *o, const char *s, size_t n) {
    if (o->pos < o->len) {
        size_t room = o->len - 1 - o->pos; /* keep one byte for the NUL */
        memcpy(o->buf + o->pos, s, n < room ? n : room);
    }
    o->pos += n;
}

static void puts_(out_t *o, const char *s) {
    put(o, s, strlen(s));
}

static void putf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(out_t *o, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string, quoted and escaped (RFC 8259): quote, backslash and every
 * control character; other bytes as they are. */
static void put_json_string(out_t *o, const char *s, size_t max) {
    put(o, "\"", 1);
    for (size_t i = 0; i < max && s[i]; i++) {
        char esc[8];
        put(o, esc, crest__json_escape((unsigned char)s[i], esc));
    }
    put(o, "\"", 1);
}

/* Finish: NUL-terminate what was written and return the length needed. */
static int finish(out_t *o) {
    if (o->len > 0)
        o->buf[o->pos < o->len ? o->pos : o->len - 1] = '\0';
    return o->pos > INT_MAX ? -EOVERFLOW : (int)o->pos;
}

/* Text for people stays one line per finding: a control character that
 * came with an application's name or peer is shown as '?'. */
static void put_line_text(out_t *o, const char *s, size_t max) {
    for (size_t i = 0; i < max && s[i]; i++) {
        char ch = s[i];
        if ((unsigned char)ch < 0x20 || ch == 0x7f)
            ch = '?';
        put(o, &ch, 1);
    }
}

int crest_diagnosis_text(const crest_diagnosis_t *dx, char *buf, size_t len) {
    if (!dx || (!buf && len > 0))
        return -EINVAL;
    out_t o = {buf, len, 0};
    unsigned n = dx->n < CREST_FINDINGS_MAX ? dx->n : CREST_FINDINGS_MAX;
    for (unsigned i = 0; i < n; i++) {
        const crest_finding_t *f = &dx->findings[i];
        putf(&o, "%s %s: ", crest_cause_key(f->cause), crest_severity_name(f->severity));
        put_line_text(&o, f->evidence, sizeof f->evidence);
        puts_(&o, "; advice: ");
        put_line_text(&o, f->advice, sizeof f->advice);
        puts_(&o, "\n");
    }
    if (n == 0) {
        putf(&o, "no latency problem found (window %s: %s iterations, p99 iteration %s, max %s, "
                 "utilization %.0f%%",
             dur(dx->window_ns).s, num(dx->iterations).s, dur(dx->busy_p99_ns).s,
             dur(dx->busy_max_ns).s, 100.0 * dx->utilization);
        if (dx->rx_dwell_p99_ns)
            putf(&o, ", p99 socket dwell %s", dur(dx->rx_dwell_p99_ns).s);
        if (dx->rtt_p99_ns)
            putf(&o, ", p99 rtt %s", dur(dx->rtt_p99_ns).s);
        if (dx->http_response_p99_ns)
            putf(&o, ", p99 HTTP response %s", dur(dx->http_response_p99_ns).s);
        puts_(&o, ")\n");
    }
    return finish(&o);
}

int crest_diagnosis_json(const crest_diagnosis_t *dx, char *buf, size_t len) {
    if (!dx || (!buf && len > 0))
        return -EINVAL;
    out_t o = {buf, len, 0};
    unsigned n = dx->n < CREST_FINDINGS_MAX ? dx->n : CREST_FINDINGS_MAX;
    puts_(&o, "{\"findings\":[");
    for (unsigned i = 0; i < n; i++) {
        const crest_finding_t *f = &dx->findings[i];
        puts_(&o, i ? ",{\"cause\":" : "{\"cause\":");
        put_json_string(&o, crest_cause_key(f->cause), SIZE_MAX);
        puts_(&o, ",\"severity\":");
        put_json_string(&o, crest_severity_name(f->severity), SIZE_MAX);
        puts_(&o, ",\"evidence\":");
        put_json_string(&o, f->evidence, sizeof f->evidence);
        puts_(&o, ",\"advice\":");
        put_json_string(&o, f->advice, sizeof f->advice);
        puts_(&o, "}");
    }
    double util = dx->utilization;
    if (util != util || util < 0)
        util = 0; /* JSON has no NaN */
    putf(&o,
         "],\"headline\":{\"window_ns\":%" PRIu64 ",\"iterations\":%" PRIu64
         ",\"busy_p99_ns\":%" PRIu64 ",\"busy_max_ns\":%" PRIu64 ",\"utilization\":%.4f"
         ",\"rx_dwell_p99_ns\":%" PRIu64 ",\"rtt_p99_ns\":%" PRIu64
         ",\"http_response_p99_ns\":%" PRIu64 "}}\n",
         dx->window_ns, dx->iterations, dx->busy_p99_ns, dx->busy_max_ns, util,
         dx->rx_dwell_p99_ns, dx->rtt_p99_ns, dx->http_response_p99_ns);
    return finish(&o);
}
