/* /metrics: the Prometheus text exposition (format 0.0.4) of the figures
 * the admin endpoint collected (admin_int.h).  It formats, it computes
 * nothing: every number is a field the loops, the insight and the fd
 * registry already keep.
 *
 * The format, as Prometheus specifies it and promtool checks it:
 *   - each family once: "# HELP name text", "# TYPE name type", then all
 *     its samples, every loop's (a group's loops are never split into
 *     families of their own: a second TYPE line for a name is an error);
 *   - names crest_[a-z_]+; counters end in _total; base units (seconds,
 *     bytes) with the unit in the name;
 *   - in a group (labelled), every per-loop sample carries loop="<index>"
 *     as its first label; process-wide samples (build, start time, fds)
 *     never do;
 *   - HELP text escapes \ and newline; label values \, " and newline.
 *
 * Numbers are printed from integers, without floating point: counts as
 * integers, nanoseconds as exact decimal seconds ("1.5", "0.000250001"),
 * so a value prints the same way at every scrape and Go's ParseFloat reads
 * it to the nearest double.
 *
 * Insight families (phases, slow callbacks, histograms, CPU, accept path,
 * TCP health, write side) exist only for loops with insight enabled; when
 * no loop has it, the families are left out altogether (absent, not zero:
 * a zero would claim a measurement that was not taken).  rx dwell likewise
 * needs rx_timestamps.
 *
 * Cost: O(families x loops) appends into out, one pass over each
 * histogram's buckets; no allocation but out's growth, no connection is
 * walked. */
#include <stddef.h>
#include <string.h>

#include "admin_int.h"
#include "crest/hist.h"

/* ---- formatting ---------------------------------------------------------- */

/* Label value: \ " and newline escaped (the exposition format's rule). */
static void put_label_value(struct crest__strbuf *sb, const char *s) {
    const char *run = s;
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '"')
            esc = "\\\"";
        else if (*s == '\n')
            esc = "\\n";
        if (esc) {
            crest__sb_append(sb, run, (size_t)(s - run));
            crest__sb_append(sb, esc, 2);
            run = s + 1;
        }
    }
    crest__sb_append(sb, run, (size_t)(s - run));
}

/* HELP text: \ and newline escaped (a " stays as it is). */
static void put_help_text(struct crest__strbuf *sb, const char *s) {
    const char *run = s;
    for (; *s; s++) {
        if (*s == '\\' || *s == '\n') {
            crest__sb_append(sb, run, (size_t)(s - run));
            crest__sb_append(sb, *s == '\\' ? "\\\\" : "\\n", 2);
            run = s + 1;
        }
    }
    crest__sb_append(sb, run, (size_t)(s - run));
}

static void family(struct crest__strbuf *sb, const char *name, const char *type,
                   const char *help) {
    crest__sb_puts(sb, "# HELP ");
    crest__sb_puts(sb, name);
    crest__sb_append(sb, " ", 1);
    put_help_text(sb, help);
    crest__sb_puts(sb, "\n# TYPE ");
    crest__sb_puts(sb, name);
    crest__sb_append(sb, " ", 1);
    crest__sb_puts(sb, type);
    crest__sb_append(sb, "\n", 1);
}

/* Decimal digits of v (printf costs more than the rest of a sample). */
static void put_u64(struct crest__strbuf *sb, uint64_t v) {
    char d[20];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    crest__sb_append(sb, d + i, sizeof d - i);
}

/* The labels of one sample: loop first (when loop >= 0), then key=value
 * (when key), then le (when le).  Nothing at all when none is given. */
struct labels {
    long loop;          /* -1: none */
    const char *key;    /* NULL: none */
    const char *value;
};

static void put_labels(struct crest__strbuf *sb, const struct labels *l, const char *le) {
    bool any = false;
    if (l->loop >= 0) {
        crest__sb_puts(sb, "{loop=\"");
        put_u64(sb, (uint64_t)l->loop);
        crest__sb_append(sb, "\"", 1);
        any = true;
    }
    if (l->key) {
        crest__sb_append(sb, any ? "," : "{", 1);
        crest__sb_puts(sb, l->key);
        crest__sb_puts(sb, "=\"");
        put_label_value(sb, l->value);
        crest__sb_append(sb, "\"", 1);
        any = true;
    }
    if (le) {
        crest__sb_append(sb, any ? "," : "{", 1);
        crest__sb_puts(sb, "le=\"");
        crest__sb_puts(sb, le); /* from the tables below: nothing to escape */
        crest__sb_append(sb, "\"", 1);
        any = true;
    }
    if (any)
        crest__sb_append(sb, "}", 1);
}

/* Nanoseconds as exact decimal seconds: "0", "2", "1.5", "0.000000001". */
static void put_seconds(struct crest__strbuf *sb, uint64_t ns) {
    uint64_t frac = ns % 1000000000u;
    put_u64(sb, ns / 1000000000u);
    if (frac == 0)
        return;
    char d[10] = {'.'};
    for (int i = 9; i >= 1; i--) {
        d[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    size_t len = 10;
    while (d[len - 1] == '0')
        len--;
    crest__sb_append(sb, d, len);
}

enum unit { U_COUNT, U_NS };

static void sample(struct crest__strbuf *sb, const char *name, const char *suffix,
                   const struct labels *l, const char *le, enum unit unit, uint64_t v) {
    crest__sb_puts(sb, name);
    if (suffix)
        crest__sb_puts(sb, suffix);
    put_labels(sb, l, le);
    crest__sb_append(sb, " ", 1);
    if (unit == U_NS)
        put_seconds(sb, v);
    else
        put_u64(sb, v);
    crest__sb_append(sb, "\n", 1);
}

static struct labels loop_labels(const struct crest__admin_loop_figures *f, bool labelled) {
    struct labels l = {labelled ? (long)f->index : -1, NULL, NULL};
    return l;
}

/* ---- per-loop scalar families, by table ----------------------------------- */

enum source { S_LOOP, S_CONNS, S_BUFS, S_INSIGHT, S_HTTP };

struct scalar {
    const char *name;
    const char *type;   /* "counter" or "gauge" */
    enum source src;
    size_t offset;      /* of the field in its source struct */
    size_t size;        /* 4 or 8 bytes */
    enum unit unit;
    const char *help;
};

#define FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f)
#define LOOPF(f) S_LOOP, FIELD(crest_loop_stats_t, f)
#define CONNF(f) S_CONNS, FIELD(crest_conn_stats_t, f)
#define BUFF(f) S_BUFS, FIELD(crest_buf_stats_t, f)
#define INSF(f) S_INSIGHT, FIELD(crest_insight_t, f)
#define HTTPF(f) S_HTTP, FIELD(crest_http_server_stats_t, f)

static const struct scalar loop_scalars[] = {
    {"crest_loop_iterations_total", "counter", LOOPF(iterations), U_COUNT,
     "Loop iterations (calls into epoll_wait)."},
    {"crest_loop_wait_seconds_total", "counter", LOOPF(wait_ns), U_NS,
     "Time the loop spent blocked in epoll_wait."},
    {"crest_loop_run_seconds_total", "counter", LOOPF(run_ns), U_NS,
     "Time the loop spent dispatching (everything but the wait)."},
    {"crest_loop_callbacks_total", "counter", LOOPF(callbacks), U_COUNT,
     "Callbacks the loop invoked."},
    {"crest_loop_io_events_total", "counter", LOOPF(io_events), U_COUNT,
     "Events delivered to io watchers."},
    {"crest_loop_stale_events_total", "counter", LOOPF(stale_events), U_COUNT,
     "Events dropped because their watcher was gone."},
    {"crest_loop_fed_events_total", "counter", LOOPF(fed_events), U_COUNT,
     "Events re-queued on the ready list (work left for the next iteration)."},
    {"crest_loop_timers_fired_total", "counter", LOOPF(timers_fired), U_COUNT,
     "Timers that fired."},
    {"crest_loop_deferred_total", "counter", LOOPF(deferred_run), U_COUNT,
     "Deferred callbacks run."},
    {"crest_loop_posted_total", "counter", LOOPF(posted_run), U_COUNT,
     "Callbacks posted from other threads and run."},
    {"crest_loop_wakeups_total", "counter", LOOPF(wakeups), U_COUNT,
     "Cross-thread wake-ups read from the loop's eventfd."},
    {"crest_loop_signals_total", "counter", LOOPF(signals), U_COUNT, "Signals delivered."},
    {"crest_connections_opened_total", "counter", CONNF(opened), U_COUNT,
     "Connections opened (accepted, and outbound at connect)."},
    {"crest_connections_active", "gauge", CONNF(active), U_COUNT, "Connections open now."},
    {"crest_connections_closed_total", "counter", CONNF(closed), U_COUNT, "Connections closed."},
};

/* After crest_connections_closed_by_reason_total. */
static const struct scalar conn_buf_scalars[] = {
    {"crest_connections_lingered_total", "counter", CONNF(lingered), U_COUNT,
     "Graceful closes that lingered (read out the peer before closing the socket)."},
    {"crest_connections_lingering", "gauge", CONNF(lingering), U_COUNT,
     "Closed connections still lingering now (not counted as active)."},
    {"crest_received_bytes_total", "counter", CONNF(bytes_in), U_COUNT,
     "Bytes read from connections."},
    {"crest_sent_bytes_total", "counter", CONNF(bytes_out), U_COUNT,
     "Bytes written to connections."},
    {"crest_messages_received_total", "counter", CONNF(messages_in), U_COUNT,
     "Framed messages delivered (LINE and LENGTH framing)."},
    {"crest_reads_total", "counter", CONNF(reads), U_COUNT, "Read system calls on connections."},
    {"crest_writes_total", "counter", CONNF(writes), U_COUNT,
     "Write system calls on connections."},
    {"crest_highwater_pauses_total", "counter", CONNF(paused), U_COUNT,
     "Reading paused because output rose above high water."},
    {"crest_accept_shed_total", "counter", CONNF(accept_shed), U_COUNT,
     "Pending connections accepted and closed at once because the process was out of file "
     "descriptors (EMFILE/ENFILE)."},
    {"crest_accept_errors_total", "counter", CONNF(accept_errors), U_COUNT,
     "Other accept failures (accept4 errors, accepted fds the registry could not record)."},

    {"crest_buffer_pool_allocated_bytes", "gauge", BUFF(allocated), U_COUNT,
     "Bytes the loop's buffer pool holds from the system."},
    {"crest_buffer_pool_in_use_bytes", "gauge", BUFF(in_use), U_COUNT,
     "Bytes of the buffer pool holding data now."},
    {"crest_buffer_pool_peak_bytes", "gauge", BUFF(peak), U_COUNT,
     "Most bytes of the buffer pool ever in use at once."},
};

/* Insight scalars, rendered after the labelled and histogram families of
 * the same subject (see render_insight). */
static const struct scalar insight_loop_scalars[] = {
    {"crest_loop_events_total", "counter", INSF(events), U_COUNT,
     "Events returned by epoll_wait, all waits."},
};

static const struct scalar insight_slow_scalars[] = {
    {"crest_slow_batches_total", "counter", INSF(slow_unnamed), U_COUNT,
     "Slow batches of callbacks that were not timed one by one (not named)."},
    {"crest_slow_iterations_total", "counter", INSF(slow_iterations), U_COUNT,
     "Loop iterations busy past the slow-callback threshold."},
    {"crest_loop_blocked_total", "counter", INSF(blocked), U_COUNT,
     "Iterations the watchdog saw stuck past its threshold."},
    {"crest_loop_blocked_max_seconds", "gauge", INSF(blocked_max_ns), U_NS,
     "Longest blocked iteration the watchdog saw."},
};

static const struct scalar insight_cpu_scalars[] = {
    {"crest_loop_cpu_seconds_total", "counter", INSF(cpu_ns), U_NS,
     "CPU time of the loop's thread, as sampled."},
    {"crest_loop_runqueue_wait_seconds_total", "counter", INSF(runq_wait_ns), U_NS,
     "Time the loop's thread was runnable but waiting for a CPU, as sampled."},
};

static const struct scalar insight_net_scalars[] = {
    {"crest_accept_wakeups_total", "counter", INSF(accept_wakeups), U_COUNT,
     "Accept batches (one per listener readiness)."},
    {"crest_accepted_total", "counter", INSF(accepted), U_COUNT,
     "Connections the accept batches took."},
    {"crest_accept_queue_length", "gauge", INSF(accept_queue_len), U_COUNT,
     "Connections waiting in the kernel's accept queues of the loop's listeners, at the "
     "last sample."},
    {"crest_accept_queue_max", "gauge", INSF(accept_queue_max), U_COUNT,
     "Capacity (backlog) of the loop's listeners' accept queues."},
    {"crest_accept_queue_peak", "gauge", INSF(accept_queue_peak), U_COUNT,
     "Longest accept queue sampled."},
    {"crest_accept_queue_full_samples_total", "counter", INSF(accept_queue_full), U_COUNT,
     "Samples that found an accept queue full."},
    {"crest_listen_overflows_total", "counter", INSF(listen_overflows), U_COUNT,
     "ListenOverflows of /proc/net/netstat since the figures began (network-namespace "
     "wide)."},
    {"crest_listen_drops_total", "counter", INSF(listen_drops), U_COUNT,
     "ListenDrops of /proc/net/netstat since the figures began (network-namespace wide)."},
    {"crest_tcp_closed_samples_total", "counter", INSF(tcp_samples), U_COUNT,
     "Connections whose TCP_INFO was read at close."},
    {"crest_tcp_retransmits_total", "counter", INSF(retransmits), U_COUNT,
     "Retransmitted segments (tcpi_total_retrans) of the connections sampled at close."},
    {"crest_tcp_segments_sent_total", "counter", INSF(segs_out), U_COUNT,
     "Segments sent (tcpi_segs_out) by the connections sampled at close."},
    {"crest_tcp_busy_seconds_total", "counter", INSF(tcp_busy_ns), U_NS,
     "Time spent sending (tcpi_busy_time) by the connections sampled at close."},
    {"crest_tcp_rwnd_limited_seconds_total", "counter", INSF(rwnd_limited_ns), U_NS,
     "Of the sending time, limited by the peer's receive window (a slow reader)."},
    {"crest_tcp_sndbuf_limited_seconds_total", "counter", INSF(sndbuf_limited_ns), U_NS,
     "Of the sending time, limited by the local send buffer."},
    {"crest_write_stalls_total", "counter", INSF(write_stalls), U_COUNT,
     "Writes whose output had to wait for EPOLLOUT."},
    {"crest_write_stalls_sndbuf_total", "counter", INSF(write_stalls_sndbuf), U_COUNT,
     "Write stalls on connections whose SO_SNDBUF was set by options."},
    {"crest_nagle_checks_total", "counter", INSF(nagle_checks), U_COUNT,
     "Small writes on connections without TCP_NODELAY, sampled with TCP_INFO."},
    {"crest_nagle_held_total", "counter", INSF(nagle_held), U_COUNT,
     "Sampled small writes whose bytes the kernel held back though the window was open."},
};

/* Outbound: names and connection pools (kept in the loop's insight
 * figures, so they follow insight like the families above). */
static const struct scalar insight_outbound_scalars[] = {
    {"crest_resolve_requests_total", "counter", INSF(resolve_requests), U_COUNT,
     "Name lookups asked for (crest_resolve, crest_connect with a name)."},
    {"crest_resolve_queries_total", "counter", INSF(resolve_queries), U_COUNT,
     "Name lookups sent to DNS (not answered by the cache or a lookup in flight)."},
    {"crest_resolve_cache_hits_total", "counter", INSF(resolve_cache_hits), U_COUNT,
     "Name lookups answered from the resolver's cache (positive or negative)."},
    {"crest_resolve_coalesced_total", "counter", INSF(resolve_coalesced), U_COUNT,
     "Name lookups that waited for the same lookup already in flight."},
    {"crest_resolve_failures_total", "counter", INSF(resolve_failures), U_COUNT,
     "Name lookups sent to DNS that failed (no such name, timeout, refused)."},
    {"crest_pool_acquired_total", "counter", INSF(pool_acquired), U_COUNT,
     "Pool acquires that got a connection."},
    {"crest_pool_reused_total", "counter", INSF(pool_reused), U_COUNT,
     "Pool acquires given an idle (warm) connection."},
    {"crest_pool_acquire_timeouts_total", "counter", INSF(pool_acquire_timeouts), U_COUNT,
     "Pool acquires that waited past their timeout."},
    {"crest_pool_connect_failures_total", "counter", INSF(pool_connect_failures), U_COUNT,
     "Connects a pool started that failed."},
    {"crest_pool_leaks_total", "counter", INSF(pool_leaks), U_COUNT,
     "Pool connections reported borrowed past the leak threshold."},
    {"crest_pool_exhausted_samples_total", "counter", INSF(pool_exhausted_samples), U_COUNT,
     "Samples that found a pool with 80% or more of its maximum borrowed and callers "
     "waiting."},
    {"crest_pools", "gauge", INSF(pools), U_COUNT, "Connection pools on the loop."},
    {"crest_pool_active_connections", "gauge", INSF(pool_active), U_COUNT,
     "Pool connections borrowed now, all pools."},
    {"crest_pool_idle_connections", "gauge", INSF(pool_idle), U_COUNT,
     "Pool connections connected and idle now, all pools."},
    {"crest_pool_waiting", "gauge", INSF(pool_waiting), U_COUNT,
     "Callers waiting for a pool connection now, all pools."},
    {"crest_pool_max_connections", "gauge", INSF(pool_max), U_COUNT,
     "The pools' maximum sizes, summed."},
};

/* The application's HTTP servers (crest_http_loop_stats: the admin
 * endpoint's own are in crest_admin_*), on loops that have had one.  After
 * crest_http_responses_total. */
static const struct scalar http_scalars[] = {
    {"crest_http_refused_total", "counter", HTTPF(refused), U_COUNT,
     "HTTP requests refused as malformed or over a limit (answered 4xx/5xx, connection "
     "closed, logged)."},
    {"crest_http_read_timeouts_total", "counter", HTTPF(timeouts), U_COUNT,
     "HTTP connections closed with a request not whole in time (logged)."},
    {"crest_http_cancelled_total", "counter", HTTPF(cancelled), U_COUNT,
     "HTTP exchanges cancelled before their response ended (the connection reset, timed out "
     "or its server was destroyed)."},
    {"crest_http_pending_exchanges", "gauge", HTTPF(pending), U_COUNT,
     "HTTP requests handed to the application and not yet answered (or still streaming)."},
};

static const struct scalar http_lead_scalars[] = {
    {"crest_http_connections_total", "counter", HTTPF(connections), U_COUNT,
     "Connections the HTTP servers accepted."},
    {"crest_http_requests_total", "counter", HTTPF(requests), U_COUNT,
     "HTTP requests handed to the application."},
};

static const void *source_of(const struct crest__admin_loop_figures *f, enum source src) {
    switch (src) {
    case S_LOOP:
        return &f->loop;
    case S_CONNS:
        return &f->conns;
    case S_BUFS:
        return &f->bufs;
    case S_INSIGHT:
        return &f->insight;
    case S_HTTP:
        return &f->http;
    }
    return NULL;
}

static uint64_t field_value(const void *base, size_t offset, size_t size) {
    const char *p = (const char *)base + offset;
    if (size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Does this loop render the insight families? */
static bool has_insight(const struct crest__admin_loop_figures *f) {
    return f->insight_enabled;
}

static bool has_http(const struct crest__admin_loop_figures *f) {
    return f->http_servers > 0;
}

static bool has_http_insight(const struct crest__admin_loop_figures *f) {
    return f->insight_enabled && f->http_servers > 0;
}

static bool has_rx(const struct crest__admin_loop_figures *f) {
    return f->insight_enabled && f->insight.rx_timestamps;
}

typedef bool (*loop_filter)(const struct crest__admin_loop_figures *f);

static bool any_loop(const struct crest__admin_loop_figures *loops, unsigned n,
                     loop_filter want) {
    for (unsigned i = 0; i < n; i++)
        if (!want || want(&loops[i]))
            return true;
    return false;
}

static void render_scalars(struct crest__strbuf *sb, const struct scalar *t, size_t count,
                           const struct crest__admin_loop_figures *loops, unsigned n,
                           bool labelled, loop_filter want) {
    if (!any_loop(loops, n, want))
        return;
    for (size_t k = 0; k < count; k++) {
        family(sb, t[k].name, t[k].type, t[k].help);
        for (unsigned i = 0; i < n; i++) {
            if (want && !want(&loops[i]))
                continue;
            struct labels l = loop_labels(&loops[i], labelled);
            uint64_t v = field_value(source_of(&loops[i], t[k].src), t[k].offset, t[k].size);
            sample(sb, t[k].name, NULL, &l, NULL, t[k].unit, v);
        }
    }
}

/* ---- histograms ------------------------------------------------------------
 *
 * crest_hist_t has 592 log-linear buckets; /metrics exposes a fixed set of
 * le bounds, the same at every scrape.  The count at a bound b is
 * crest_hist_count_le(h, b): the buckets that lie wholly at or below b.
 * Which way the error goes: a bucket that straddles b (it holds values
 * both <= b and > b; its width is under 1/16 of its values) is left to the
 * next bound, so le="b" never counts a value above b, and may leave out
 * values in at most the last 6.25% below b (e.g. le="0.001" leaves out
 * values from 983.04 us to 1 ms, which show up from le="0.0025").  The
 * counts are exact when b is a bucket's upper edge.  They stay cumulative
 * and monotone (a larger bound takes a superset of the buckets), and
 * le="+Inf" is the histogram's count; _sum is the exact sum of the values
 * recorded (the histogram keeps it).
 *
 * One pass over the buckets computes every bound (the same counts as
 * crest_hist_count_le(h, b) for each b, which test_metrics checks), rather
 * than one pass per bound. */

struct bound {
    uint64_t v;       /* in the histogram's unit (ns, or a count) */
    const char *le;   /* as Go's strconv.FormatFloat(x, 'g', -1, 64) writes
                         it, the way client_golang prints le */
};

static const struct bound time_bounds[] = {
    {1000, "1e-06"},           {2500, "2.5e-06"},       {5000, "5e-06"},
    {10000, "1e-05"},          {25000, "2.5e-05"},      {50000, "5e-05"},
    {100000, "0.0001"},        {250000, "0.00025"},     {500000, "0.0005"},
    {1000000, "0.001"},        {2500000, "0.0025"},     {5000000, "0.005"},
    {10000000, "0.01"},        {25000000, "0.025"},     {50000000, "0.05"},
    {100000000, "0.1"},        {250000000, "0.25"},     {500000000, "0.5"},
    {1000000000, "1"},         {2500000000u, "2.5"},    {5000000000u, "5"},
    {10000000000u, "10"},
};

/* Counts (events per wait): 2^k - 1, each the upper edge of a bucket, so
 * these counts are exact.  (Powers of two are not upper edges above 16:
 * 2^k opens its bucket, [256, 271] for 256, so le="256" would leave out
 * a full batch of 256 events.) */
static const struct bound count_bounds[] = {
    {1, "1"},     {3, "3"},     {7, "7"},     {15, "15"},    {31, "31"},
    {63, "63"},   {127, "127"}, {255, "255"}, {511, "511"},  {1023, "1023"},
};

#define MAX_BOUNDS (sizeof time_bounds / sizeof time_bounds[0])

/* out[j] = crest_hist_count_le(h, b[j].v), in one pass (bounds ascending). */
static void counts_le(const crest_hist_t *h, const struct bound *b, size_t nb, uint64_t *out) {
    uint64_t cum = 0;
    size_t j = 0;
    for (unsigned i = 0; i < CREST_HIST_BUCKETS && j < nb; i++) {
        uint64_t top = crest_hist_highest(i);
        while (j < nb && top > b[j].v)
            out[j++] = cum; /* bucket i straddles or passes b[j] */
        cum += h->buckets[i];
    }
    while (j < nb)
        out[j++] = cum;
}

struct histogram {
    const char *name;
    size_t offset;            /* of the crest_hist_t in crest_insight_t */
    bool ns;                  /* nanoseconds (rendered in seconds), else a count */
    loop_filter want;
    const char *help;
};

static void render_histogram(struct crest__strbuf *sb, const struct histogram *hd,
                             const struct crest__admin_loop_figures *loops, unsigned n,
                             bool labelled) {
    if (!any_loop(loops, n, hd->want))
        return;
    const struct bound *b = hd->ns ? time_bounds : count_bounds;
    size_t nb = hd->ns ? sizeof time_bounds / sizeof time_bounds[0]
                       : sizeof count_bounds / sizeof count_bounds[0];
    enum unit unit = hd->ns ? U_NS : U_COUNT;
    family(sb, hd->name, "histogram", hd->help);
    for (unsigned i = 0; i < n; i++) {
        if (!hd->want(&loops[i]))
            continue;
        const crest_hist_t *h =
            (const crest_hist_t *)((const char *)&loops[i].insight + hd->offset);
        uint64_t c[MAX_BOUNDS];
        counts_le(h, b, nb, c);
        struct labels l = loop_labels(&loops[i], labelled);
        for (size_t j = 0; j < nb; j++)
            sample(sb, hd->name, "_bucket", &l, b[j].le, U_COUNT, c[j]);
        sample(sb, hd->name, "_bucket", &l, "+Inf", U_COUNT, h->count);
        sample(sb, hd->name, "_sum", &l, NULL, unit, h->sum);
        sample(sb, hd->name, "_count", &l, NULL, U_COUNT, h->count);
    }
}

/* ---- labelled per-loop families ------------------------------------------ */

typedef const char *(*key_name)(unsigned k);

static const char *reason_key(unsigned k) {
    return crest_close_reason_key((crest_close_reason_t)k);
}
static const char *phase_key(unsigned k) {
    return crest_phase_name((crest_phase_t)k);
}
static const char *cb_kind_key(unsigned k) {
    return crest_cb_kind_name((crest_cb_kind_t)k);
}
static const char *status_class_key(unsigned k) {
    static const char *const names[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    return k < 6 ? names[k] : "other";
}

/* One family with one sample per loop and per key: name{loop,label=key}
 * = array[key], the array at offset in the source struct. */
static void render_keyed(struct crest__strbuf *sb, const char *name, const char *type,
                         const char *help, const char *label, key_name keys, unsigned nkeys,
                         enum source src, size_t offset, enum unit unit,
                         const struct crest__admin_loop_figures *loops, unsigned n,
                         bool labelled, loop_filter want) {
    if (!any_loop(loops, n, want))
        return;
    family(sb, name, type, help);
    for (unsigned i = 0; i < n; i++) {
        if (want && !want(&loops[i]))
            continue;
        const void *base = source_of(&loops[i], src);
        for (unsigned k = 0; k < nkeys; k++) {
            struct labels l = loop_labels(&loops[i], labelled);
            l.key = label;
            l.value = keys(k);
            uint64_t v = field_value(base, offset + k * sizeof(uint64_t), sizeof(uint64_t));
            sample(sb, name, NULL, &l, NULL, unit, v);
        }
    }
}

/* ---- the insight ---------------------------------------------------------- */

#define HIST(f) offsetof(crest_insight_t, f)

static void render_insight(struct crest__strbuf *sb, const struct crest__admin_loop_figures *loops,
                           unsigned n, bool labelled) {
    if (!any_loop(loops, n, has_insight))
        return;
    /* Loop phases */
    render_keyed(sb, "crest_loop_phase_seconds_total", "counter",
                 "Loop time by phase (wait: blocked in epoll_wait; the others: dispatching "
                 "io events, timers, the ready list, deferred and posted callbacks, and the "
                 "loop's own bookkeeping).",
                 "phase", phase_key, CREST_PHASE_COUNT, S_INSIGHT,
                 offsetof(crest_insight_t, phase_ns), U_NS, loops, n, labelled, has_insight);
    render_scalars(sb, insight_loop_scalars,
                   sizeof insight_loop_scalars / sizeof insight_loop_scalars[0], loops, n,
                   labelled, has_insight);

    static const struct histogram hists[] = {
        {"crest_loop_iteration_busy_seconds", HIST(iteration_busy), true, has_insight,
         "Busy time of each loop iteration (everything but the wait)."},
        {"crest_loop_events_per_wait", HIST(events_per_wait), false, has_insight,
         "Events returned by each epoll_wait that returned any."},
        {"crest_callback_duration_seconds", HIST(callback_time), true, has_insight,
         "Duration of the callbacks timed one by one."},
        {"crest_tcp_rtt_seconds", HIST(rtt), true, has_insight,
         "Smoothed round-trip time (tcpi_rtt) of connections, read at close."},
        {"crest_write_stall_seconds", HIST(write_stall), true, has_insight,
         "How long stalled output waited, from queued to flushed."},
        {"crest_highwater_pause_seconds", HIST(hw_pause), true, has_insight,
         "How long each high-water pause of reading lasted."},
        {"crest_rx_dwell_seconds", HIST(rx_dwell), true, has_rx,
         "Receive-queue dwell: from the kernel's timestamp of a segment to the read that "
         "took it (rx_timestamps)."},
        {"crest_resolve_duration_seconds", HIST(resolve_time), true, has_insight,
         "Duration of each name lookup sent to DNS."},
        {"crest_pool_acquire_wait_seconds", HIST(pool_acquire_wait), true, has_insight,
         "Pool acquires: from the call to the connection handed over."},
        {"crest_http_response_time_seconds", HIST(http_response_time), true, has_http_insight,
         "HTTP requests: from the loop iteration that completed the request to its "
         "response's head written (the callbacks before it, the handler, any wait for "
         "the answer)."},
    };
    for (size_t k = 0; k < sizeof hists / sizeof hists[0]; k++)
        render_histogram(sb, &hists[k], loops, n, labelled);

    /* Slow callbacks */
    render_keyed(sb, "crest_slow_callbacks_total", "counter",
                 "Named slow callbacks (longer than the slow-callback threshold), by kind.",
                 "kind", cb_kind_key, CREST_CB_KIND_COUNT, S_INSIGHT,
                 offsetof(crest_insight_t, slow_by_kind), U_COUNT, loops, n, labelled,
                 has_insight);
    render_scalars(sb, insight_slow_scalars,
                   sizeof insight_slow_scalars / sizeof insight_slow_scalars[0], loops, n,
                   labelled, has_insight);

    /* CPU */
    render_scalars(sb, insight_cpu_scalars,
                   sizeof insight_cpu_scalars / sizeof insight_cpu_scalars[0], loops, n,
                   labelled, has_insight);
    static const char *const cs_types[2] = {"involuntary", "voluntary"};
    family(sb, "crest_loop_context_switches_total", "counter",
           "Context switches of the loop's thread, as sampled.");
    for (unsigned i = 0; i < n; i++) {
        if (!has_insight(&loops[i]))
            continue;
        const uint64_t v[2] = {loops[i].insight.nivcsw, loops[i].insight.nvcsw};
        for (unsigned k = 0; k < 2; k++) {
            struct labels l = loop_labels(&loops[i], labelled);
            l.key = "type";
            l.value = cs_types[k];
            sample(sb, "crest_loop_context_switches_total", NULL, &l, NULL, U_COUNT, v[k]);
        }
    }

    /* Accept path, TCP health, write side */
    render_scalars(sb, insight_net_scalars,
                   sizeof insight_net_scalars / sizeof insight_net_scalars[0], loops, n,
                   labelled, has_insight);
    render_scalars(sb, insight_outbound_scalars,
                   sizeof insight_outbound_scalars / sizeof insight_outbound_scalars[0], loops,
                   n, labelled, has_insight);
}

/* ---- process-wide --------------------------------------------------------- */

static const char *fd_key(unsigned k) {
    return crest_fd_kind_name((crest_fd_kind_t)k);
}

static void render_fds(struct crest__strbuf *sb, const struct crest__admin_process_figures *p) {
    static const struct {
        const char *name, *type, *help;
        size_t offset;
    } fams[] = {
        {"crest_fds_open", "gauge", "File descriptors crest's registry holds open now, by kind.",
         offsetof(crest_fd_counts_t, open)},
        {"crest_fds_peak", "gauge", "Most file descriptors open at once, by kind.",
         offsetof(crest_fd_counts_t, peak)},
        {"crest_fds_opened_total", "counter", "File descriptors registered, by kind.",
         offsetof(crest_fd_counts_t, opened)},
        {"crest_fds_closed_total", "counter",
         "File descriptors closed (or released), by kind.", offsetof(crest_fd_counts_t, closed)},
        {"crest_fds_bad_closes_total", "counter",
         "Double closes and closes of file descriptors the registry did not hold, by kind.",
         offsetof(crest_fd_counts_t, bad_closes)},
    };
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        family(sb, fams[f].name, fams[f].type, fams[f].help);
        for (unsigned k = 0; k < CREST_FD_KIND_COUNT; k++) {
            struct labels l = {-1, "kind", fd_key(k)};
            uint64_t v = field_value(&p->fds[k], fams[f].offset, sizeof(uint64_t));
            sample(sb, fams[f].name, NULL, &l, NULL, U_COUNT, v);
        }
    }
}

/* ---- the page ------------------------------------------------------------- */

void crest__metrics_render(struct crest__strbuf *out,
                           const struct crest__admin_loop_figures *loops, unsigned n,
                           bool labelled, const struct crest__admin_process_figures *proc) {
    /* Room for the whole page at once, so that it grows once rather than
     * doubling a dozen times: about 12 KiB of HELP, TYPE and process-wide
     * samples, 2.5 KiB per loop, 13 more per loop with insight (its
     * histograms). */
    size_t room = 12288;
    for (unsigned i = 0; loops && i < n; i++)
        room += has_insight(&loops[i]) ? 16384 : 2560;
    crest__sb_reserve(out, room);

    family(out, "crest_build_info", "gauge", "crest's version, as the label; always 1.");
    struct labels v = {-1, "version", proc && proc->version ? proc->version : ""};
    sample(out, "crest_build_info", NULL, &v, NULL, U_COUNT, 1);
    family(out, "crest_process_start_time_seconds", "gauge",
           "When crest's process figures began (the admin endpoint's start), in Unix seconds.");
    struct labels none = {-1, NULL, NULL};
    sample(out, "crest_process_start_time_seconds", NULL, &none, NULL, U_COUNT,
           proc ? proc->start_time_s : 0);

    if (n > 0 && loops) {
        render_scalars(out, loop_scalars, sizeof loop_scalars / sizeof loop_scalars[0], loops,
                       n, labelled, NULL);
        render_keyed(out, "crest_connections_closed_by_reason_total", "counter",
                     "Connections closed, by reason (every reason listed, zeros included).",
                     "reason", reason_key, CREST_CLOSE_REASON_COUNT, S_CONNS,
                     offsetof(crest_conn_stats_t, close_reasons), U_COUNT, loops, n, labelled,
                     NULL);
        render_scalars(out, conn_buf_scalars, sizeof conn_buf_scalars / sizeof conn_buf_scalars[0],
                       loops, n, labelled, NULL);
    }

    if (n > 0 && loops) {
        render_scalars(out, http_lead_scalars,
                       sizeof http_lead_scalars / sizeof http_lead_scalars[0], loops, n,
                       labelled, has_http);
        render_keyed(out, "crest_http_responses_total", "counter",
                     "HTTP responses, by status class (counted when the head is written; "
                     "\"other\": outside 100-599).",
                     "code", status_class_key, 6, S_HTTP,
                     offsetof(crest_http_server_stats_t, responses), U_COUNT, loops, n,
                     labelled, has_http);
        render_scalars(out, http_scalars, sizeof http_scalars / sizeof http_scalars[0], loops,
                       n, labelled, has_http);
    }

    if (proc)
        render_fds(out, proc);

    if (n > 0 && loops)
        render_insight(out, loops, n, labelled);
}
