/* The /metrics renderer (src/metrics.c, crest__metrics_render()): figures
 * in, Prometheus text exposition (0.0.4) out.  No sockets, no loop: the
 * figures are built by hand with known values and known histograms, the
 * page is parsed back line by line, and checked against the format's rules
 * (one HELP and one TYPE per family before its samples, names, _total on
 * counters, cumulative buckets ending in +Inf = _count), against the values
 * put in, and, when promtool is installed, by promtool itself. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "admin_int.h"
#include "crest/hist.h"

#define NS_PER_MS 1000000ull
#define NS_PER_US 1000ull

/* ---- the figures ---------------------------------------------------------- */

static struct crest__admin_process_figures proc_figures(const char *version) {
    struct crest__admin_process_figures p;
    memset(&p, 0, sizeof p);
    p.version = version;
    p.start_time_s = 1700000000;
    p.fds[CREST_FD_ACCEPTED] = (crest_fd_counts_t){.open = 3, .opened = 10, .closed = 7,
                                                   .peak = 5, .bad_closes = 1};
    p.fds[CREST_FD_EPOLL] = (crest_fd_counts_t){.open = 1, .opened = 1, .peak = 1};
    return p;
}

/* Loop i's figures: values that tell the loops apart (i added), and, with
 * insight, histograms with known contents. */
static void fill_loop(struct crest__admin_loop_figures *f, unsigned i, bool insight) {
    memset(f, 0, sizeof *f);
    f->index = i;
    f->loop.iterations = 1000 + i;
    f->loop.wait_ns = 1500000000;     /* 1.5 s */
    f->loop.run_ns = 123456789012345; /* 123456.789012345 s */
    f->loop.callbacks = 900 + i;
    f->loop.io_events = 800 + i;
    f->loop.timers_fired = 70 + i;
    f->loop.posted_run = 60 + i;
    f->loop.wakeups = 50 + i;
    f->loop.signals = i;
    f->conns.opened = 42 + i;
    f->conns.active = 7;
    f->conns.closed = 35 + i;
    f->conns.close_reasons[CREST_CLOSE_PEER_EOF] = 30 + i;
    f->conns.close_reasons[CREST_CLOSE_IDLE_TIMEOUT] = 5;
    f->conns.lingering = 2;
    f->conns.bytes_in = 1u << 20;
    f->conns.bytes_out = 3u << 20;
    f->conns.messages_in = 4000;
    f->conns.reads = 5000;
    f->conns.writes = 6000;
    f->conns.paused = 9;
    f->bufs.allocated = 65536;
    f->bufs.in_use = 16384;
    f->bufs.peak = 32768;
    f->insight_enabled = insight;
    if (!insight)
        return;
    crest_insight_t *s = &f->insight;
    s->loops = 1;
    s->iterations = f->loop.iterations;
    s->phase_ns[CREST_PHASE_WAIT] = 2000000000;
    s->phase_ns[CREST_PHASE_IO] = 250 * NS_PER_US;
    s->events = 777;
    for (int k = 0; k < 10; k++)
        crest_hist_record(&s->events_per_wait, 1);
    crest_hist_record_n(&s->events_per_wait, 256, 3); /* full batches */
    crest_hist_record(&s->events_per_wait, 20);
    /* iteration_busy: from below the first bound to past the last */
    crest_hist_record(&s->iteration_busy, 500);
    crest_hist_record(&s->iteration_busy, 3 * NS_PER_MS);
    crest_hist_record(&s->iteration_busy, 20 * NS_PER_MS);
    crest_hist_record(&s->iteration_busy, 2000 * NS_PER_MS);
    crest_hist_record(&s->iteration_busy, 3600ull * 1000000000ull); /* an hour */
    crest_hist_record(&s->callback_time, 3 * NS_PER_MS);                 /* the 3 ms value */
    crest_hist_record(&s->rtt, 250 * NS_PER_US);
    crest_hist_record_n(&s->write_stall, 40 * NS_PER_US, 4);
    crest_hist_record(&s->hw_pause, 7 * NS_PER_MS);
    s->slow_by_kind[CREST_CB_CONN] = 4;
    s->slow_by_kind[CREST_CB_TIMER] = 1;
    s->slow_callbacks = 5;
    s->slow_unnamed = 2;
    s->slow_iterations = 6;
    s->blocked = 1;
    s->blocked_max_ns = 110 * NS_PER_MS;
    s->cpu_ns = 3 * 1000000000ull + 1;
    s->runq_wait_ns = 12 * NS_PER_MS;
    s->nivcsw = 11;
    s->nvcsw = 22;
    s->accept_wakeups = 40;
    s->accepted = 44;
    s->accept_queue_len = 5;
    s->accept_queue_max = 4096;
    s->accept_queue_peak = 17;
    s->accept_queue_full = 1;
    s->listen_overflows = 2;
    s->listen_drops = 3;
    s->tcp_samples = 35;
    s->retransmits = 8;
    s->segs_out = 9000;
    s->tcp_busy_ns = 1;
    s->rwnd_limited_ns = 0;
    s->sndbuf_limited_ns = 999999999;
    s->write_stalls = 4;
    s->write_stalls_sndbuf = 1;
    s->nagle_checks = 12;
    s->nagle_held = 2;
}

static char *render(const struct crest__admin_loop_figures *loops, unsigned n, bool labelled,
                    const struct crest__admin_process_figures *proc) {
    struct crest__strbuf sb;
    crest__sb_init(&sb);
    crest__metrics_render(&sb, loops, n, labelled, proc);
    assert_false(sb.failed);
    assert_true(sb.len > 0);
    if (getenv("TEST_METRICS_PRINT"))
        fputs(sb.ptr, stdout);
    return sb.ptr; /* the caller frees it */
}

/* ---- parsing the page back -------------------------------------------------- */

#define MAX_LABELS 4

struct sample {
    char name[96];
    unsigned nlabels;
    char key[MAX_LABELS][32];
    char value[MAX_LABELS][96]; /* unescaped */
    double v;
    unsigned family;            /* index in page.families */
};

struct family {
    char name[96];
    char type[16];
    unsigned helps, types;
    unsigned samples;
};

struct page {
    struct family *families;
    unsigned nfamilies;
    struct sample *samples;
    unsigned nsamples;
};

static bool name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
static bool name_char(char c) {
    return name_start(c) || (c >= '0' && c <= '9');
}

/* A metric name at *p into out; advances *p. */
static void parse_name(const char **p, char *out, size_t cap) {
    const char *s = *p;
    assert_true(name_start(*s));
    size_t n = 0;
    while (name_char(s[n]))
        n++;
    assert_true(n < cap);
    memcpy(out, s, n);
    out[n] = '\0';
    *p = s + n;
}

static struct family *find_family(struct page *pg, const char *name) {
    for (unsigned i = 0; i < pg->nfamilies; i++)
        if (strcmp(pg->families[i].name, name) == 0)
            return &pg->families[i];
    return NULL;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The family a sample belongs to: its own name, or a histogram's name for
 * the _bucket, _sum and _count series. */
static struct family *family_of(struct page *pg, const char *name) {
    struct family *f = find_family(pg, name);
    if (f)
        return f;
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (unsigned k = 0; k < 3; k++) {
        if (!ends_with(name, suffixes[k]))
            continue;
        char base[96];
        size_t n = strlen(name) - strlen(suffixes[k]);
        memcpy(base, name, n);
        base[n] = '\0';
        f = find_family(pg, base);
        if (f && strcmp(f->type, "histogram") == 0)
            return f;
    }
    return NULL;
}

/* Parse the whole page, asserting the format's rules on the way: every
 * line is HELP, TYPE or a sample; a family's HELP and TYPE come once each,
 * HELP then TYPE, before its samples; its samples are together (no other
 * family's line in between). */
static void parse_page(const char *text, struct page *pg) {
    memset(pg, 0, sizeof *pg);
    size_t lines = 0;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    pg->families = calloc(lines + 1, sizeof *pg->families);
    pg->samples = calloc(lines + 1, sizeof *pg->samples);
    assert_non_null(pg->families);
    assert_non_null(pg->samples);
    assert_true(text[strlen(text) - 1] == '\n'); /* the last line ends too */

    struct family *current = NULL;
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        assert_non_null(eol);
        if (strncmp(p, "# HELP ", 7) == 0 || strncmp(p, "# TYPE ", 7) == 0) {
            bool help = p[2] == 'H';
            const char *s = p + 7;
            char name[96];
            parse_name(&s, name, sizeof name);
            assert_true(*s == ' ');
            s++;
            struct family *f = find_family(pg, name);
            if (help) {
                /* A new family starts with its HELP. */
                if (f)
                    fail_msg("second HELP for %s", name);
                f = &pg->families[pg->nfamilies++];
                snprintf(f->name, sizeof f->name, "%s", name);
                f->helps = 1;
                current = f;
                assert_true(s < eol); /* some text */
                for (const char *h = s; h < eol; h++) {
                    if (*h == '\\') {
                        assert_true(h[1] == '\\' || h[1] == 'n');
                        h++;
                    }
                }
            } else {
                if (!f || f != current || f->types || f->samples)
                    fail_msg("TYPE for %s out of place", name);
                size_t n = (size_t)(eol - s);
                assert_true(n < sizeof f->type);
                memcpy(f->type, s, n);
                f->type[n] = '\0';
                assert_true(strcmp(f->type, "counter") == 0 || strcmp(f->type, "gauge") == 0 ||
                            strcmp(f->type, "histogram") == 0);
                f->types = 1;
            }
        } else {
            assert_true(*p != '#'); /* no other comment */
            struct sample *smp = &pg->samples[pg->nsamples++];
            const char *s = p;
            parse_name(&s, smp->name, sizeof smp->name);
            struct family *f = family_of(pg, smp->name);
            if (!f || f != current || !f->types)
                fail_msg("sample %s without its HELP and TYPE just before", smp->name);
            if (*s == '{') {
                s++;
                while (*s != '}') {
                    assert_true(smp->nlabels < MAX_LABELS);
                    unsigned k = smp->nlabels++;
                    char *key = smp->key[k];
                    size_t n = 0;
                    assert_true(name_start(*s) && *s != ':');
                    while (name_char(*s) && *s != ':') {
                        assert_true(n + 1 < sizeof smp->key[k]);
                        key[n++] = *s++;
                    }
                    key[n] = '\0';
                    assert_true(*s++ == '=');
                    assert_true(*s++ == '"');
                    n = 0;
                    while (*s != '"') {
                        assert_true(s < eol);
                        char ch = *s++;
                        if (ch == '\\') {
                            ch = *s++;
                            assert_true(ch == '\\' || ch == '"' || ch == 'n');
                            if (ch == 'n')
                                ch = '\n';
                        }
                        assert_true(n + 1 < sizeof smp->value[k]);
                        smp->value[k][n++] = ch;
                    }
                    smp->value[k][n] = '\0';
                    s++;
                    if (*s == ',')
                        s++;
                    else
                        assert_true(*s == '}');
                }
                s++;
            }
            assert_true(*s == ' ');
            s++;
            char *end;
            smp->v = strtod(s, &end);
            assert_true(end == eol); /* the value and nothing else (no timestamp) */
            assert_true(end > s);
            smp->family = (unsigned)(f - pg->families);
            f->samples++;
        }
        p = eol + 1;
    }
}

static void free_page(struct page *pg) {
    free(pg->families);
    free(pg->samples);
}

static const char *label(const struct sample *s, const char *key) {
    if (!s)
        return NULL;
    for (unsigned k = 0; k < s->nlabels; k++)
        if (strcmp(s->key[k], key) == 0)
            return s->value[k];
    return NULL;
}

/* The sample of this name whose labels include key=value (NULL: any). */
static const struct sample *find(const struct page *pg, const char *name, const char *k1,
                                 const char *v1, const char *k2, const char *v2) {
    for (unsigned i = 0; i < pg->nsamples; i++) {
        const struct sample *s = &pg->samples[i];
        if (strcmp(s->name, name) != 0)
            continue;
        if (k1 && (!label(s, k1) || strcmp(label(s, k1), v1) != 0))
            continue;
        if (k2 && (!label(s, k2) || strcmp(label(s, k2), v2) != 0))
            continue;
        return s;
    }
    return NULL;
}

/* The value of a sample that must be there. */
static double value_of(const struct page *pg, const char *name, const char *k1, const char *v1) {
    const struct sample *s = find(pg, name, k1, v1, NULL, NULL);
    if (!s) {
        fail_msg("no %s{%s=\"%s\"}", name, k1, v1);
        return -1;
    }
    return s->v;
}

static unsigned count_samples(const struct page *pg, const char *name) {
    unsigned n = 0;
    for (unsigned i = 0; i < pg->nsamples; i++)
        n += strcmp(pg->samples[i].name, name) == 0;
    return n;
}

/* The line appears whole in the page. */
static void assert_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    fail_msg("line not found: %s", line);
}

static bool process_wide(const char *family) {
    return strcmp(family, "crest_build_info") == 0 ||
           strcmp(family, "crest_process_start_time_seconds") == 0 ||
           strncmp(family, "crest_fds_", 10) == 0;
}

/* Every rule that holds for any page: names, types, suffixes, HELP/TYPE
 * once (parse_page), histograms whole and cumulative. */
static void check_page_rules(const struct page *pg) {
    assert_true(pg->nfamilies > 0);
    for (unsigned i = 0; i < pg->nfamilies; i++) {
        const struct family *f = &pg->families[i];
        assert_int_equal(f->helps, 1);
        assert_int_equal(f->types, 1);
        if (f->samples == 0)
            fail_msg("family %s without samples", f->name);
        assert_true(strncmp(f->name, "crest_", 6) == 0);
        assert_null(strchr(f->name, ':')); /* colons are for recording rules */
        bool counter = strcmp(f->type, "counter") == 0;
        if (counter != ends_with(f->name, "_total"))
            fail_msg("%s %s: counters, and only counters, end in _total", f->type, f->name);
        for (const char *c = f->name; *c; c++)
            assert_false(*c >= 'A' && *c <= 'Z'); /* snake_case */
        assert_false(ends_with(f->name, "_bucket") || ends_with(f->name, "_sum") ||
                     ends_with(f->name, "_count"));
        assert_null(strstr(f->name, "milli"));
        assert_null(strstr(f->name, "micro"));
        assert_null(strstr(f->name, "nano"));
    }

    /* Histograms: per series (the labels but le), _bucket lines with le
     * increasing, counts cumulative, the last le="+Inf" and equal to
     * _count, then _sum and _count. */
    for (unsigned i = 0; i < pg->nsamples; i++) {
        const struct sample *s = &pg->samples[i];
        const struct family *f = &pg->families[s->family];
        if (strcmp(f->type, "histogram") != 0) {
            assert_null(label(s, "le"));
            continue;
        }
        if (!ends_with(s->name, "_bucket") || (i > 0 && pg->samples[i - 1].family == s->family &&
                                               ends_with(pg->samples[i - 1].name, "_bucket")))
            continue; /* not the first bucket of a series */
        const char *loop = label(s, "loop");
        double prev_le = -1, prev_count = -1;
        unsigned j = i;
        for (; j < pg->nsamples && ends_with(pg->samples[j].name, "_bucket"); j++) {
            const struct sample *b = &pg->samples[j];
            assert_int_equal(b->family, s->family);
            assert_string_equal(b->key[b->nlabels - 1], "le"); /* le last */
            if (loop)
                assert_string_equal(label(b, "loop"), loop);
            double le = strtod(label(b, "le"), NULL);
            assert_true(le > prev_le);
            assert_true(b->v >= prev_count);
            prev_le = le;
            prev_count = b->v;
        }
        assert_string_equal(label(&pg->samples[j - 1], "le"), "+Inf");
        assert_true(j + 1 < pg->nsamples);
        const struct sample *sum = &pg->samples[j], *count = &pg->samples[j + 1];
        assert_true(ends_with(sum->name, "_sum"));
        assert_true(ends_with(count->name, "_count"));
        assert_null(label(sum, "le"));
        assert_null(label(count, "le"));
        if (loop) {
            assert_string_equal(label(sum, "loop"), loop);
            assert_string_equal(label(count, "loop"), loop);
        }
        assert_true(count->v == prev_count);
        assert_true(sum->v >= 0);
    }
}

/* ---- tests ---------------------------------------------------------------- */

/* One loop with insight, no loop label: every family well formed, the known
 * values where they belong, exact seconds. */
static void test_single_loop(void **state) {
    (void)state;
    struct crest__admin_loop_figures *f = malloc(sizeof *f);
    assert_non_null(f);
    fill_loop(f, 0, true);
    struct crest__admin_process_figures proc = proc_figures("1.2.3");
    char *text = render(f, 1, false, &proc);
    struct page pg;
    parse_page(text, &pg);
    check_page_rules(&pg);

    assert_null(strstr(text, "loop=\""));
    assert_line(text, "crest_build_info{version=\"1.2.3\"} 1");
    assert_line(text, "crest_process_start_time_seconds 1700000000");
    assert_line(text, "crest_connections_opened_total 42");
    assert_line(text, "crest_connections_active 7");
    assert_line(text, "crest_connections_closed_total 35");
    assert_line(text, "crest_loop_iterations_total 1000");
    assert_line(text, "crest_loop_wait_seconds_total 1.5");
    assert_line(text, "crest_loop_run_seconds_total 123456.789012345");
    assert_line(text, "crest_received_bytes_total 1048576");
    assert_line(text, "crest_buffer_pool_in_use_bytes 16384");
    assert_line(text, "crest_tcp_busy_seconds_total 0.000000001");
    assert_line(text, "crest_tcp_rwnd_limited_seconds_total 0");
    assert_line(text, "crest_tcp_sndbuf_limited_seconds_total 0.999999999");
    assert_line(text, "crest_loop_cpu_seconds_total 3.000000001");
    assert_line(text, "crest_loop_blocked_max_seconds 0.11");
    assert_line(text, "crest_accept_queue_length 5");
    assert_line(text, "crest_accept_queue_max 4096");
    assert_line(text, "crest_loop_events_total 777");
    assert_line(text, "crest_loop_phase_seconds_total{phase=\"wait\"} 2");
    assert_line(text, "crest_loop_phase_seconds_total{phase=\"io\"} 0.00025");
    assert_line(text, "crest_loop_phase_seconds_total{phase=\"timers\"} 0");
    assert_line(text, "crest_slow_callbacks_total{kind=\"conn\"} 4");
    assert_line(text, "crest_slow_callbacks_total{kind=\"timer\"} 1");
    assert_line(text, "crest_slow_batches_total 2");
    assert_line(text, "crest_loop_context_switches_total{type=\"involuntary\"} 11");
    assert_line(text, "crest_loop_context_switches_total{type=\"voluntary\"} 22");
    assert_line(text, "crest_fds_open{kind=\"accepted\"} 3");
    assert_line(text, "crest_fds_bad_closes_total{kind=\"accepted\"} 1");

    /* Every close reason has its series from the start, zeros included. */
    assert_int_equal(count_samples(&pg, "crest_connections_closed_by_reason_total"),
                     CREST_CLOSE_REASON_COUNT);
    assert_line(text, "crest_connections_closed_by_reason_total{reason=\"peer_eof\"} 30");
    assert_line(text, "crest_connections_closed_by_reason_total{reason=\"idle_timeout\"} 5");
    assert_line(text, "crest_connections_closed_by_reason_total{reason=\"output_limit\"} 0");
    assert_int_equal(count_samples(&pg, "crest_fds_open"), CREST_FD_KIND_COUNT);
    assert_int_equal(count_samples(&pg, "crest_slow_callbacks_total"), CREST_CB_KIND_COUNT);
    assert_int_equal(count_samples(&pg, "crest_loop_phase_seconds_total"), CREST_PHASE_COUNT);

    /* The 3 ms callback: in le="0.005", not in le="0.0025". */
    assert_true(value_of(&pg, "crest_callback_duration_seconds_bucket", "le", "0.0025") == 0);
    assert_true(value_of(&pg, "crest_callback_duration_seconds_bucket", "le", "0.005") == 1);
    assert_line(text, "crest_callback_duration_seconds_sum 0.003");
    assert_line(text, "crest_callback_duration_seconds_count 1");
    /* The hour-long iteration only in +Inf; _sum exact in seconds. */
    assert_line(text, "crest_loop_iteration_busy_seconds_bucket{le=\"10\"} 4");
    assert_line(text, "crest_loop_iteration_busy_seconds_bucket{le=\"+Inf\"} 5");
    assert_line(text, "crest_loop_iteration_busy_seconds_bucket{le=\"1e-06\"} 1");
    assert_line(text, "crest_loop_iteration_busy_seconds_sum 3602.0230005");
    /* Events per wait: counts, not seconds; a full batch of 256 above 255. */
    assert_line(text, "crest_loop_events_per_wait_bucket{le=\"1\"} 10");
    assert_line(text, "crest_loop_events_per_wait_bucket{le=\"31\"} 11");
    assert_line(text, "crest_loop_events_per_wait_bucket{le=\"255\"} 11");
    assert_line(text, "crest_loop_events_per_wait_bucket{le=\"511\"} 14");
    assert_line(text, "crest_loop_events_per_wait_sum 798");
    /* rx dwell only with rx_timestamps. */
    assert_null(strstr(text, "crest_rx_dwell_seconds"));

    free_page(&pg);
    free(text);
    free(f);
}

/* The le counts are crest_hist_count_le() at each bound, for histograms
 * with values everywhere (bucket edges included), and the le values are
 * the same at every render. */
static void test_buckets_match_count_le(void **state) {
    (void)state;
    struct crest__admin_loop_figures *f = malloc(sizeof *f);
    assert_non_null(f);
    fill_loop(f, 0, true);
    crest_hist_reset(&f->insight.iteration_busy);
    crest_hist_reset(&f->insight.events_per_wait);
    uint64_t x = 88172645463325252ull; /* xorshift64 */
    for (int k = 0; k < 20000; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t v = x >> (x % 34 + 30); /* 0 .. 2^34: up to 17 s */
        crest_hist_record(&f->insight.iteration_busy, v);
        crest_hist_record(&f->insight.events_per_wait, 1 + (x >> 55) % 1100);
    }
    /* Values on and next to bucket edges and bounds. */
    for (uint64_t b = 1000; b <= 10000000000ull; b *= 10) {
        crest_hist_record(&f->insight.iteration_busy, b);
        crest_hist_record(&f->insight.iteration_busy, b - 1);
        crest_hist_record(&f->insight.iteration_busy, b + 1);
        unsigned idx = crest_hist_index(b);
        crest_hist_record(&f->insight.iteration_busy, crest_hist_highest(idx));
        crest_hist_record(&f->insight.iteration_busy, crest_hist_lowest(idx));
    }
    struct crest__admin_process_figures proc = proc_figures("1.2.3");
    char *text = render(f, 1, false, &proc);
    char *again = render(f, 1, false, &proc);
    assert_string_equal(text, again);
    struct page pg;
    parse_page(text, &pg);
    check_page_rules(&pg);

    unsigned checked = 0;
    for (unsigned i = 0; i < pg.nsamples; i++) {
        const struct sample *s = &pg.samples[i];
        const crest_hist_t *h;
        double scale;
        if (strcmp(s->name, "crest_loop_iteration_busy_seconds_bucket") == 0) {
            h = &f->insight.iteration_busy;
            scale = 1e9;
        } else if (strcmp(s->name, "crest_loop_events_per_wait_bucket") == 0) {
            h = &f->insight.events_per_wait;
            scale = 1;
        } else {
            continue;
        }
        const char *le = label(s, "le");
        if (strcmp(le, "+Inf") == 0) {
            assert_true(s->v == (double)h->count);
            continue;
        }
        uint64_t bound = (uint64_t)(strtod(le, NULL) * scale + 0.5);
        uint64_t want = crest_hist_count_le(h, bound);
        if (s->v != (double)want)
            fail_msg("%s le=%s: %.0f, crest_hist_count_le says %llu", s->name, le, s->v,
                     (unsigned long long)want);
        checked++;
    }
    assert_int_equal(checked, 22 + 10);

    free_page(&pg);
    free(text);
    free(again);
    free(f);
}

static struct crest__admin_loop_figures *group_figures(unsigned n, const bool *insight) {
    struct crest__admin_loop_figures *loops = calloc(n, sizeof *loops);
    assert_non_null(loops);
    for (unsigned i = 0; i < n; i++)
        fill_loop(&loops[i], i, insight[i]);
    return loops;
}

/* A group of 3: loop="i" first on every per-loop sample, on none of the
 * process's; each family once, every loop's samples under it. */
static void test_group(void **state) {
    (void)state;
    const bool insight[3] = {true, true, true};
    struct crest__admin_loop_figures *loops = group_figures(3, insight);
    loops[2].insight.rx_timestamps = true;
    crest_hist_record(&loops[2].insight.rx_dwell, 30 * NS_PER_US);
    struct crest__admin_process_figures proc = proc_figures("1.2.3");
    char *text = render(loops, 3, true, &proc);
    struct page pg;
    parse_page(text, &pg);
    check_page_rules(&pg);

    unsigned per_loop[3] = {0, 0, 0};
    for (unsigned i = 0; i < pg.nsamples; i++) {
        const struct sample *s = &pg.samples[i];
        const char *fam = pg.families[s->family].name;
        if (process_wide(fam)) {
            assert_null(label(s, "loop"));
            continue;
        }
        if (s->nlabels == 0 || strcmp(s->key[0], "loop") != 0)
            fail_msg("%s: no loop label first", s->name);
        unsigned idx = (unsigned)atoi(s->value[0]);
        assert_true(idx < 3);
        per_loop[idx]++;
    }
    /* The same series for each loop, but rx dwell (loop 2 only). */
    unsigned rx = count_samples(&pg, "crest_rx_dwell_seconds_bucket") +
                  count_samples(&pg, "crest_rx_dwell_seconds_sum") +
                  count_samples(&pg, "crest_rx_dwell_seconds_count");
    assert_int_equal(rx, 22 + 1 + 2);
    assert_int_equal(per_loop[0], per_loop[1]);
    assert_int_equal(per_loop[2], per_loop[0] + rx);

    assert_line(text, "crest_connections_opened_total{loop=\"0\"} 42");
    assert_line(text, "crest_connections_opened_total{loop=\"1\"} 43");
    assert_line(text, "crest_connections_opened_total{loop=\"2\"} 44");
    assert_line(text,
                "crest_connections_closed_by_reason_total{loop=\"1\",reason=\"peer_eof\"} 31");
    assert_line(text, "crest_callback_duration_seconds_bucket{loop=\"2\",le=\"0.005\"} 1");
    assert_line(text, "crest_callback_duration_seconds_bucket{loop=\"2\",le=\"0.0025\"} 0");
    assert_line(text, "crest_rx_dwell_seconds_bucket{loop=\"2\",le=\"5e-05\"} 1");
    assert_line(text, "crest_fds_open{kind=\"accepted\"} 3");
    assert_int_equal(count_samples(&pg, "crest_fds_open"), CREST_FD_KIND_COUNT);
    assert_int_equal(count_samples(&pg, "crest_connections_closed_by_reason_total"),
                     3 * CREST_CLOSE_REASON_COUNT);

    free_page(&pg);
    free(text);
    free(loops);
}

/* Insight families for the loops that have it, and none at all when no
 * loop has it (absent, not zero). */
static void test_insight_absent(void **state) {
    (void)state;
    const bool mixed[3] = {true, false, true};
    struct crest__admin_loop_figures *loops = group_figures(3, mixed);
    struct crest__admin_process_figures proc = proc_figures("1.2.3");
    char *text = render(loops, 3, true, &proc);
    struct page pg;
    parse_page(text, &pg);
    check_page_rules(&pg);
    assert_non_null(find(&pg, "crest_loop_events_total", "loop", "0", NULL, NULL));
    assert_null(find(&pg, "crest_loop_events_total", "loop", "1", NULL, NULL));
    assert_non_null(find(&pg, "crest_loop_events_total", "loop", "2", NULL, NULL));
    assert_null(find(&pg, "crest_tcp_rtt_seconds_count", "loop", "1", NULL, NULL));
    assert_non_null(find(&pg, "crest_connections_opened_total", "loop", "1", NULL, NULL));
    free_page(&pg);
    free(text);

    const bool none[3] = {false, false, false};
    free(loops);
    loops = group_figures(3, none);
    text = render(loops, 3, true, &proc);
    parse_page(text, &pg);
    check_page_rules(&pg);
    assert_null(strstr(text, "histogram"));
    assert_null(strstr(text, "crest_loop_phase_seconds_total"));
    assert_null(strstr(text, "crest_slow_"));
    assert_null(strstr(text, "crest_tcp_"));
    assert_line(text, "crest_loop_iterations_total{loop=\"2\"} 1002");
    free_page(&pg);
    free(text);
    free(loops);
}

/* The application's HTTP servers' families only for loops that have had
 * one (and none at all when no loop has); the accept path's counters on
 * every loop. */
static void test_http_and_accept_families(void **state) {
    (void)state;
    const bool insight[3] = {false, false, false};
    struct crest__admin_loop_figures *loops = group_figures(3, insight);
    struct crest__admin_process_figures proc = proc_figures("1.2.3");
    char *text = render(loops, 3, true, &proc);
    struct page pg;
    parse_page(text, &pg);
    check_page_rules(&pg);
    assert_null(strstr(text, "crest_http_"));
    assert_line(text, "crest_accept_shed_total{loop=\"1\"} 0");
    assert_line(text, "crest_accept_errors_total{loop=\"2\"} 0");
    free_page(&pg);
    free(text);

    loops[0].conns.accept_shed = 9;
    loops[0].conns.accept_errors = 2;
    loops[0].http_servers = 1;
    loops[0].http.connections = 3;
    loops[0].http.requests = 120;
    loops[0].http.responses[2] = 110;
    loops[0].http.responses[4] = 7;
    loops[0].http.responses[0] = 1;
    loops[0].http.refused = 6;
    loops[0].http.timeouts = 1;
    loops[0].http.cancelled = 2;
    loops[0].http.pending = 3;
    loops[2].http_servers = 2; /* servers made, no traffic yet: zeros */
    text = render(loops, 3, true, &proc);
    parse_page(text, &pg);
    check_page_rules(&pg);
    assert_line(text, "crest_accept_shed_total{loop=\"0\"} 9");
    assert_line(text, "crest_accept_errors_total{loop=\"0\"} 2");
    assert_line(text, "crest_http_connections_total{loop=\"0\"} 3");
    assert_line(text, "crest_http_requests_total{loop=\"0\"} 120");
    assert_line(text, "crest_http_responses_total{loop=\"0\",code=\"2xx\"} 110");
    assert_line(text, "crest_http_responses_total{loop=\"0\",code=\"4xx\"} 7");
    assert_line(text, "crest_http_responses_total{loop=\"0\",code=\"other\"} 1");
    assert_line(text, "crest_http_responses_total{loop=\"0\",code=\"5xx\"} 0");
    assert_line(text, "crest_http_refused_total{loop=\"0\"} 6");
    assert_line(text, "crest_http_read_timeouts_total{loop=\"0\"} 1");
    assert_line(text, "crest_http_cancelled_total{loop=\"0\"} 2");
    assert_line(text, "crest_http_pending_exchanges{loop=\"0\"} 3");
    assert_line(text, "crest_http_requests_total{loop=\"2\"} 0");
    assert_null(find(&pg, "crest_http_requests_total", "loop", "1", NULL, NULL));
    assert_int_equal(count_samples(&pg, "crest_http_responses_total"), 2 * 6);
    assert_null(strstr(text, "crest_http_response_time_seconds")); /* no insight */
    free_page(&pg);
    free(text);

    /* With insight: the response-time histogram, on the loops with HTTP. */
    loops[0].insight_enabled = loops[1].insight_enabled = true;
    crest_hist_record(&loops[0].insight.http_response_time, 180 * NS_PER_US);
    crest_hist_record(&loops[0].insight.http_response_time, 30 * NS_PER_MS);
    crest_hist_record(&loops[1].insight.http_response_time, 1 * NS_PER_US);
    text = render(loops, 3, true, &proc);
    parse_page(text, &pg);
    check_page_rules(&pg);
    assert_line(text, "crest_http_response_time_seconds_bucket{loop=\"0\",le=\"0.00025\"} 1");
    assert_line(text, "crest_http_response_time_seconds_bucket{loop=\"0\",le=\"0.05\"} 2");
    assert_line(text, "crest_http_response_time_seconds_sum{loop=\"0\"} 0.03018");
    assert_line(text, "crest_http_response_time_seconds_count{loop=\"0\"} 2");
    assert_null(find(&pg, "crest_http_response_time_seconds_count", "loop", "1", NULL, NULL));
    free_page(&pg);
    free(text);
    free(loops);
}

/* Label values are escaped; the render appends to what out holds; no
 * loops at all still gives a valid page. */
static void test_escaping_and_append(void **state) {
    (void)state;
    struct crest__admin_process_figures proc = proc_figures("1.0 \"x\\y\"\nz");
    struct crest__strbuf sb;
    crest__sb_init(&sb);
    crest__sb_puts(&sb, "# HELP before text\n");
    crest__metrics_render(&sb, NULL, 0, false, &proc);
    assert_false(sb.failed);
    assert_true(strncmp(sb.ptr, "# HELP before text\n# HELP crest_build_info ", 43) == 0);
    const char *page_text = sb.ptr + strlen("# HELP before text\n");
    assert_line(page_text, "crest_build_info{version=\"1.0 \\\"x\\\\y\\\"\\nz\"} 1");
    struct page pg;
    parse_page(page_text, &pg);
    check_page_rules(&pg);
    const struct sample *b = find(&pg, "crest_build_info", NULL, NULL, NULL, NULL);
    assert_non_null(b);
    assert_string_equal(label(b, "version"), "1.0 \"x\\y\"\nz");
    assert_null(strstr(page_text, "crest_loop_"));
    free_page(&pg);
    crest__sb_free(&sb);
}

/* ---- promtool ------------------------------------------------------------ */

static bool on_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path)
        return false;
    char dir[4096];
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && n + strlen(prog) + 2 < sizeof dir) {
            snprintf(dir, sizeof dir, "%.*s/%s", (int)n, path, prog);
            if (access(dir, X_OK) == 0)
                return true;
        }
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

/* promtool check metrics < page: exit 0 and not a word (lint problems,
 * such as "counter metrics should have _total suffix", are printed). */
static void promtool_check(const char *text) {
    char file[] = "/tmp/crest-test-metrics-XXXXXX";
    int fd = mkstemp(file);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_true(write(fd, text, len) == (ssize_t)len);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    int status = pclose(p);
    unlink(file);
    if (got > 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("promtool check metrics (status %d):\n%s", status, out);
}

static void test_promtool(void **state) {
    (void)state;
    if (!on_path("promtool")) {
        print_message("promtool not on PATH (Debian: prometheus): skipped\n");
        skip();
    }
    const bool insight[3] = {true, false, true};
    struct crest__admin_loop_figures *loops = group_figures(3, insight);
    loops[0].insight.rx_timestamps = true;
    crest_hist_record(&loops[0].insight.rx_dwell, 30 * NS_PER_US);
    loops[1].http_servers = 1; /* the HTTP families too */
    loops[1].http.requests = 5;
    loops[1].http.responses[2] = 5;
    loops[2].http_servers = 1; /* ... and, with insight, the response times */
    crest_hist_record(&loops[2].insight.http_response_time, 180 * NS_PER_US);
    struct crest__admin_process_figures proc = proc_figures("1.0 \"x\\y\"\nz");
    char *text = render(loops, 3, true, &proc);
    promtool_check(text);
    free(text);
    text = render(loops, 1, false, &proc); /* one loop, unlabelled */
    promtool_check(text);
    free(text);
    free(loops);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_loop),
        cmocka_unit_test(test_buckets_match_count_le),
        cmocka_unit_test(test_group),
        cmocka_unit_test(test_insight_absent),
        cmocka_unit_test(test_http_and_accept_families),
        cmocka_unit_test(test_escaping_and_append),
        cmocka_unit_test(test_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
