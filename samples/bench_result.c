/* bench_result: merging results and printing them (human, key=value,
 * JSON).  Units in the output: latency in microseconds (recorded in ns),
 * MB = 10^6 bytes, mb_per_s counts payload one way (requests' payload,
 * which equals the replies' payload). */
#include "bench_result.h"

#include <stdarg.h>
#include <string.h>

static const char *const err_keys[BENCH_ERR_COUNT] = {
    [BENCH_ERR_CONNECT_FAILED] = "connect_failed",
    [BENCH_ERR_CONNECT_TIMEOUT] = "connect_timeout",
    [BENCH_ERR_MISMATCH] = "mismatch",
    [BENCH_ERR_UNEXPECTED] = "unexpected",
    [BENCH_ERR_CLOSED_EARLY] = "closed_early",
    [BENCH_ERR_TIMEOUT] = "timeout",
    [BENCH_ERR_WRITE_FAILED] = "write_failed",
};

const char *bench_err_key(bench_err_t kind) {
    return (unsigned)kind < BENCH_ERR_COUNT ? err_keys[kind] : "?";
}

void bench_result_init(bench_result_t *r) {
    memset(r, 0, sizeof *r);
    r->version = BENCH_RESULT_VERSION;
    r->window_start_ns = UINT64_MAX;
    r->first_connect_ns = UINT64_MAX;
    bench_hist_init(&r->latency);
    bench_hist_init(&r->connect);
}

void bench_result_merge(bench_result_t *dst, const bench_result_t *src) {
    dst->workers += src->workers;
    dst->conns_attempted += src->conns_attempted;
    dst->conns_established += src->conns_established;
    dst->msgs += src->msgs;
    dst->payload_bytes += src->payload_bytes;
    dst->replies_total += src->replies_total;
    dst->unsent += src->unsent;
    dst->client_reads += src->client_reads;
    dst->client_writes += src->client_writes;
    if (src->window_start_ns < dst->window_start_ns)
        dst->window_start_ns = src->window_start_ns;
    if (src->window_end_ns > dst->window_end_ns)
        dst->window_end_ns = src->window_end_ns;
    if (src->first_connect_ns < dst->first_connect_ns)
        dst->first_connect_ns = src->first_connect_ns;
    if (src->last_open_ns > dst->last_open_ns)
        dst->last_open_ns = src->last_open_ns;
    for (int k = 0; k < BENCH_ERR_COUNT; k++) {
        if (src->errors[k] && !dst->errors[k])
            memcpy(dst->detail[k], src->detail[k], sizeof dst->detail[k]);
        dst->errors[k] += src->errors[k];
    }
    bench_hist_merge(&dst->latency, &src->latency);
    bench_hist_merge(&dst->connect, &src->connect);
}

void bench_result_error(bench_result_t *r, bench_err_t kind, const char *fmt, ...) {
    if ((unsigned)kind >= BENCH_ERR_COUNT)
        return;
    if (r->errors[kind]++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->detail[kind], sizeof r->detail[kind], fmt, ap);
        va_end(ap);
    }
}

uint64_t bench_result_errors(const bench_result_t *r) {
    uint64_t n = 0;
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        n += r->errors[k];
    return n;
}

double bench_result_seconds(const bench_result_t *r) {
    if (r->window_start_ns == UINT64_MAX || r->window_end_ns <= r->window_start_ns)
        return 0.0;
    return (double)(r->window_end_ns - r->window_start_ns) / 1e9;
}

double bench_result_establish_seconds(const bench_result_t *r) {
    if (r->first_connect_ns == UINT64_MAX || r->last_open_ns <= r->first_connect_ns)
        return 0.0;
    return (double)(r->last_open_ns - r->first_connect_ns) / 1e9;
}

/* ---- derived numbers, shared by the three formats ---------------------- */

struct numbers {
    double seconds, msgs_per_s, mb_per_s;
    double p50, p90, p99, p999, max, mean; /* us */
    double c50, c90, c99, c999, cmax;      /* connect, us */
    double establish_s;                    /* first connect to last open */
    uint64_t conn_failed, errors;
};

static double us(uint64_t ns) {
    return (double)ns / 1000.0;
}

static void derive(const bench_result_t *r, struct numbers *n) {
    n->seconds = bench_result_seconds(r);
    n->msgs_per_s = n->seconds > 0 ? (double)r->msgs / n->seconds : 0.0;
    n->mb_per_s = n->seconds > 0 ? (double)r->payload_bytes / n->seconds / 1e6 : 0.0;
    n->p50 = us(bench_hist_percentile(&r->latency, 50));
    n->p90 = us(bench_hist_percentile(&r->latency, 90));
    n->p99 = us(bench_hist_percentile(&r->latency, 99));
    n->p999 = us(bench_hist_percentile(&r->latency, 99.9));
    n->max = us(r->latency.max);
    n->mean = bench_hist_mean(&r->latency) / 1000.0;
    n->c50 = us(bench_hist_percentile(&r->connect, 50));
    n->c90 = us(bench_hist_percentile(&r->connect, 90));
    n->c99 = us(bench_hist_percentile(&r->connect, 99));
    n->c999 = us(bench_hist_percentile(&r->connect, 99.9));
    n->establish_s = bench_result_establish_seconds(r);
    n->cmax = us(r->connect.max);
    n->conn_failed = r->errors[BENCH_ERR_CONNECT_FAILED] + r->errors[BENCH_ERR_CONNECT_TIMEOUT];
    n->errors = bench_result_errors(r);
}

/* ---- human ---------------------------------------------------------------- */

void bench_result_print_human(FILE *out, const bench_run_info_t *info, const bench_result_t *r) {
    struct numbers n;
    derive(r, &n);
    fprintf(out,
            "crest-bench (crest %s): %s mode, ", info->version, info->mode);
    if (info->size_min < info->size)
        fprintf(out, "random %llu-%llu-byte payloads, ", (unsigned long long)info->size_min,
                (unsigned long long)info->size);
    else
        fprintf(out, "%llu-byte payload, ", (unsigned long long)info->size);
    fprintf(out, "%u connection%s on ", info->conns, info->conns == 1 ? "" : "s");
    if (info->procs > 1)
        fprintf(out, "%u processes x ", info->procs);
    fprintf(out, "%u thread%s, pipeline %u, ", info->threads, info->threads == 1 ? "" : "s",
            info->pipeline);
    if (info->rate > 0)
        fprintf(out, "open loop at %.0f msg/s\n", info->rate);
    else
        fprintf(out, "closed loop\n");
    fprintf(out, "  target %s", info->target);
    if (info->binds)
        fprintf(out, " from %u source address%s", info->binds, info->binds == 1 ? "" : "es");
    if (info->by_count)
        fprintf(out, ", %llu messages per connection", (unsigned long long)info->per_conn);
    else
        fprintf(out, ", warm-up %.2f s, duration %.2f s", info->warmup_s, info->duration_s);
    fprintf(out, "%s\n", info->interrupted ? " (interrupted)" : "");

    fprintf(out, "connections  %llu established, %llu failed",
            (unsigned long long)r->conns_established, (unsigned long long)n.conn_failed);
    if (r->conns_attempted < info->conns)
        fprintf(out, ", %llu not started (the run ended first)",
                (unsigned long long)(info->conns - r->conns_attempted));
    if (r->conns_established)
        fprintf(out, " (all established within %.3f s of the first connect)", n.establish_s);
    fprintf(out, "\n");
    if (r->connect.count)
        fprintf(out,
                "connect time p50 %.1f us, p90 %.1f, p99 %.1f, p99.9 %.1f, max %.1f "
                "(connect() to established)\n",
                n.c50, n.c90, n.c99, n.c999, n.cmax);
    fprintf(out, "messages     %llu in %.3f s: %.0f msg/s\n", (unsigned long long)r->msgs,
            n.seconds, n.msgs_per_s);
    fprintf(out,
            "throughput   %.2f MB/s of payload each way (%.2f MB/s both ways; MB = 10^6 bytes)\n",
            n.mb_per_s, 2 * n.mb_per_s);
    if (r->latency.count)
        fprintf(out,
                "latency      p50 %.1f us, p90 %.1f, p99 %.1f, p99.9 %.1f, max %.1f, mean %.1f\n",
                n.p50, n.p90, n.p99, n.p999, n.max, n.mean);
    else
        fprintf(out, "latency      no replies in the measured window\n");
    fprintf(out, "             log-linear histogram, relative error < 0.79%% (1/%u)%s\n",
            BENCH_HIST_SUB_COUNT,
            info->rate > 0 ? "; measured from the scheduled send time" : "");
    if (r->unsent)
        fprintf(out,
                "backlog      %llu requests were due but never sent: the server did not keep "
                "up with the rate\n",
                (unsigned long long)r->unsent);
    fprintf(out, "errors       %llu", (unsigned long long)n.errors);
    if (n.errors) {
        const char *sep = " (";
        for (int k = 0; k < BENCH_ERR_COUNT; k++) {
            if (!r->errors[k])
                continue;
            fprintf(out, "%s%s %llu", sep, bench_err_key(k), (unsigned long long)r->errors[k]);
            sep = ", ";
        }
        fprintf(out, ")\n");
        for (int k = 0; k < BENCH_ERR_COUNT; k++)
            if (r->errors[k])
                fprintf(out, "  first %s: %s\n", bench_err_key(k), r->detail[k]);
    } else {
        fprintf(out, "\n");
    }
    if (info->fds_leaked)
        fprintf(out, "fds          %d left open after shutdown\n", info->fds_leaked);
}

/* ---- key=value -------------------------------------------------------------- */

void bench_result_print_kv(FILE *out, const bench_run_info_t *info, const bench_result_t *r) {
    struct numbers n;
    derive(r, &n);
    char size[48];
    if (info->size_min < info->size) /* --size-random: size=MIN-MAX */
        snprintf(size, sizeof size, "%llu-%llu", (unsigned long long)info->size_min,
                 (unsigned long long)info->size);
    else
        snprintf(size, sizeof size, "%llu", (unsigned long long)info->size);
    fprintf(out,
            "crest-bench: mode=%s size=%s conns=%llu conn_failed=%llu threads=%u pipeline=%u "
            "rate=%.0f seconds=%.3f msgs=%llu payload_bytes=%llu msgs_per_s=%.0f mb_per_s=%.3f "
            "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f mean_us=%.1f "
            "connect_p50_us=%.1f connect_p99_us=%.1f connect_max_us=%.1f errors=%llu",
            info->mode, size, (unsigned long long)r->conns_established,
            (unsigned long long)n.conn_failed, info->threads, info->pipeline, info->rate, n.seconds,
            (unsigned long long)r->msgs, (unsigned long long)r->payload_bytes, n.msgs_per_s,
            n.mb_per_s, n.p50, n.p90, n.p99, n.p999, n.max, n.mean, n.c50, n.c99, n.cmax,
            (unsigned long long)n.errors);
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        fprintf(out, " err_%s=%llu", bench_err_key(k), (unsigned long long)r->errors[k]);
    fprintf(out, " unsent=%llu client_reads=%llu client_writes=%llu fds_leaked=%d interrupted=%d",
            (unsigned long long)r->unsent, (unsigned long long)r->client_reads,
            (unsigned long long)r->client_writes, info->fds_leaked, info->interrupted ? 1 : 0);
    fprintf(out,
            " procs=%u conns_attempted=%llu establish_s=%.3f connect_p90_us=%.1f "
            "connect_p999_us=%.1f\n",
            info->procs ? info->procs : 1, (unsigned long long)r->conns_attempted, n.establish_s,
            n.c90, n.c999);
}

/* ---- JSON --------------------------------------------------------------- */

static void json_string(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

void bench_result_print_json(FILE *out, const bench_run_info_t *info, const bench_result_t *r) {
    struct numbers n;
    derive(r, &n);
    fprintf(out, "{\"tool\": \"crest-bench\", \"crest_version\": ");
    json_string(out, info->version);
    fprintf(out, ", \"mode\": ");
    json_string(out, info->mode);
    fprintf(out, ", \"target\": ");
    json_string(out, info->target);
    fprintf(out,
            ", \"size\": %llu, \"size_min\": %llu, \"conns_requested\": %u, \"threads\": %u, "
            "\"pipeline\": %u, \"rate\": %.0f, \"per_conn\": %lld, \"warmup_s\": %.3f, "
            "\"duration_s\": %.3f, \"source_addresses\": %u,\n",
            (unsigned long long)info->size, (unsigned long long)info->size_min, info->conns, info->threads, info->pipeline, info->rate,
            info->by_count ? (long long)info->per_conn : -1LL, info->warmup_s, info->duration_s,
            info->binds);
    fprintf(out,
            " \"conns\": %llu, \"conn_failed\": %llu, \"seconds\": %.6f, \"msgs\": %llu, "
            "\"payload_bytes\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.4f, "
            "\"mb_per_s_is\": \"payload one way, MB = 1e6 bytes\", \"unsent\": %llu, "
            "\"client_reads\": %llu, \"client_writes\": %llu,\n",
            (unsigned long long)r->conns_established, (unsigned long long)n.conn_failed, n.seconds,
            (unsigned long long)r->msgs, (unsigned long long)r->payload_bytes, n.msgs_per_s,
            n.mb_per_s, (unsigned long long)r->unsent,
            (unsigned long long)r->client_reads, (unsigned long long)r->client_writes);
    fprintf(out,
            " \"latency_us\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
            "\"max\": %.3f, \"mean\": %.3f, \"count\": %llu, \"relative_error\": %.6f},\n",
            n.p50, n.p90, n.p99, n.p999, n.max, n.mean, (unsigned long long)r->latency.count,
            BENCH_HIST_MAX_REL_ERROR);
    fprintf(out,
            " \"connect_us\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
            "\"max\": %.3f, \"count\": %llu},\n",
            n.c50, n.c90, n.c99, n.c999, n.cmax, (unsigned long long)r->connect.count);
    fprintf(out, " \"procs\": %u, \"conns_attempted\": %llu, \"establish_s\": %.6f,\n",
            info->procs ? info->procs : 1, (unsigned long long)r->conns_attempted,
            n.establish_s);
    fprintf(out, " \"errors\": %llu, \"errors_by_kind\": {", (unsigned long long)n.errors);
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        fprintf(out, "%s\"%s\": %llu", k ? ", " : "", bench_err_key(k),
                (unsigned long long)r->errors[k]);
    fprintf(out, "}, \"error_details\": {");
    const char *sep = "";
    for (int k = 0; k < BENCH_ERR_COUNT; k++) {
        if (!r->errors[k])
            continue;
        fprintf(out, "%s\"%s\": ", sep, bench_err_key(k));
        json_string(out, r->detail[k]);
        sep = ", ";
    }
    fprintf(out, "},\n \"fds_leaked\": %d, \"interrupted\": %s}\n", info->fds_leaked,
            info->interrupted ? "true" : "false");
}
