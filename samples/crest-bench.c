/* crest-bench: a load generator for echo-style servers, built on crest's
 * own outbound connections.
 *
 *   crest-bench [options] ADDRESS       e.g. crest-bench -c 100 -d 5 127.0.0.1:7000
 *
 * It opens -c connections over -t threads (one crest loop each), sends
 * messages of -s bytes (raw echo, "echo: " lines, or length-prefixed
 * frames), verifies every reply byte for byte, and reports throughput, the
 * latency distribution (log-linear histogram, relative error < 0.79%) and
 * errors by kind.  Closed loop by default; --rate makes it open loop, with
 * latency measured from each request's scheduled time.
 *
 * This file: options, the phases (the main thread only fixes the window
 * times, waits for signals and prints progress), merging and output.  The
 * connections live in bench_worker.c, the numbers in bench_result.c and
 * bench_hist.c.
 *
 * Exit status: 0 clean; 1 errors (any kind), no reply measured at all, or
 * fds left open; 2 usage; 3 setup failure (no loop, no thread). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <crest/crest.h>

#include "bench_result.h"
#include "bench_worker.h"

#define MAX_BINDS 4096

struct options {
    bench_mode_t mode;
    const char *address;      /* positional */
    const char *host, *unix_path;
    long port;
    unsigned conns, threads, pipeline;
    uint64_t size, size_min;
    bool size_set, size_random;
    double duration, warmup, rate, connect_timeout, timeout;
    bool duration_set, warmup_set;
    uint64_t per_conn;
    bool by_count;
    const char *bind;
    bool json, quiet, verbose;
};

static void usage(FILE *out) {
    fprintf(out,
"usage: crest-bench [options] [ADDRESS]\n"
"Load generator for echo servers; every reply is verified byte for byte.\n"
"\n"
"Target (one of):\n"
"  ADDRESS                  127.0.0.1:7000, [::1]:7000, localhost:7000, unix:/path\n"
"  --host HOST --port PORT  (HOST defaults to 127.0.0.1)\n"
"  --unix PATH              a Unix-domain stream socket\n"
"\n"
"Workload:\n"
"  -m, --mode MODE          raw (default): S bytes, echoed as is\n"
"                           line: S printable bytes + \"\\n\", reply \"echo: \" line \"\\n\"\n"
"                           frame: 4-byte big-endian length + S bytes, echoed as is\n"
"  -s, --size S             payload bytes per message (default 64; k/M suffixes)\n"
"      --size-random MIN-MAX  payload size of each message drawn from MIN..MAX\n"
"                           (a hash of connection and sequence number, so every\n"
"                           reply is still checked byte for byte)\n"
"  -c, --connections N      connections (default 100)\n"
"  -t, --threads N          threads, one crest loop each (default 1)\n"
"  -P, --pipeline N         requests in flight per connection (default 1)\n"
"  -r, --rate N             open loop: N messages/s in total, at fixed intervals;\n"
"                           latency counts from the scheduled time (default:\n"
"                           closed loop, each reply triggers the next request)\n"
"  -d, --duration SEC       measured time (default 5; fractions allowed)\n"
"      --warmup SEC         unmeasured time before it (default 1)\n"
"  -n, --messages N         instead of a duration: N replies per connection, all\n"
"                           measured (-d then is a deadline); -n 0 connects and\n"
"                           closes (the setup cost, to subtract)\n"
"      --bind A[-B]         source address(es), round-robin per connection, e.g.\n"
"                           127.0.0.2-127.0.0.9 (port 0: the kernel picks)\n"
"      --connect-timeout SEC  (default 5)\n"
"      --timeout SEC        a reply this late is an error (default 5)\n"
"\n"
"Output:\n"
"      --json               one JSON object instead of the summary and key=value line\n"
"  -q, --quiet              only the crest-bench: key=value line (or the JSON)\n"
"  -v, --verbose            crest's own log at INFO (default: warnings only)\n"
"  -h, --help, -V, --version\n"
"\n"
"A progress line goes to stderr once a second when stdout is a terminal.\n"
"Exit status: 0 clean; 1 errors, nothing measured, or fds left open; 2 usage;\n"
"3 setup failure.\n");
}

static _Noreturn void bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static _Noreturn void bad_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "crest-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(crest-bench --help for the options)\n");
    va_end(ap);
    exit(2);
}

static double parse_seconds(const char *s, const char *opt) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0) || v > 1e7)
        bad_usage("%s: not a number of seconds", opt);
    return v;
}

/* An unsigned count with an optional k/M/G (binary) suffix. */
static uint64_t parse_count(const char *s, const char *opt, uint64_t max) {
    char *end;
    errno = 0;
    if (*s == '-')
        bad_usage("%s: must not be negative", opt);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        bad_usage("%s: not a number", opt);
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K')
        shift = 10, end++;
    else if (*end == 'm' || *end == 'M')
        shift = 20, end++;
    else if (*end == 'g' || *end == 'G')
        shift = 30, end++;
    if (*end || (shift && v > (max >> shift)) || (v << shift) > max)
        bad_usage("%s: too large or not a number", opt);
    return (uint64_t)v << shift;
}

static void parse_options(int argc, char **argv, struct options *o) {
    enum { OPT_HOST = 256, OPT_PORT, OPT_UNIX, OPT_WARMUP, OPT_BIND, OPT_CTIMEOUT, OPT_TIMEOUT,
           OPT_JSON, OPT_SIZE_RANDOM };
    static const struct option longopts[] = {
        {"mode", required_argument, NULL, 'm'},
        {"size", required_argument, NULL, 's'},
        {"size-random", required_argument, NULL, OPT_SIZE_RANDOM},
        {"connections", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 't'},
        {"pipeline", required_argument, NULL, 'P'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"messages", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, 'p'},
        {"unix", required_argument, NULL, OPT_UNIX},
        {"bind", required_argument, NULL, OPT_BIND},
        {"connect-timeout", required_argument, NULL, OPT_CTIMEOUT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"json", no_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){
        .mode = BENCH_MODE_RAW, .port = -1, .conns = 100, .threads = 1, .pipeline = 1,
        .size = 64, .duration = 5, .warmup = 1, .connect_timeout = 5, .timeout = 5,
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "m:s:c:t:P:r:d:n:p:qvhV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (!strcmp(optarg, "raw"))
                o->mode = BENCH_MODE_RAW;
            else if (!strcmp(optarg, "line"))
                o->mode = BENCH_MODE_LINE;
            else if (!strcmp(optarg, "frame"))
                o->mode = BENCH_MODE_FRAME;
            else
                bad_usage("--mode %s: raw, line or frame", optarg);
            break;
        case 's':
            o->size = parse_count(optarg, "--size", 1u << 30);
            o->size_set = true;
            break;
        case OPT_SIZE_RANDOM: {
            char lo[32];
            const char *dash = strchr(optarg, '-');
            if (!dash || (size_t)(dash - optarg) >= sizeof lo)
                bad_usage("--size-random %s: give MIN-MAX, e.g. 1-64k", optarg);
            memcpy(lo, optarg, (size_t)(dash - optarg));
            lo[dash - optarg] = '\0';
            o->size_min = parse_count(lo, "--size-random", 1u << 30);
            o->size = parse_count(dash + 1, "--size-random", 1u << 30);
            if (o->size_min > o->size)
                bad_usage("--size-random %s: MIN is above MAX", optarg);
            o->size_random = true;
            break;
        }
        case 'c': o->conns = (unsigned)parse_count(optarg, "--connections", 1000000); break;
        case 't': o->threads = (unsigned)parse_count(optarg, "--threads", 1024); break;
        case 'P': o->pipeline = (unsigned)parse_count(optarg, "--pipeline", 65536); break;
        case 'r':
            o->rate = parse_seconds(optarg, "--rate");
            if (o->rate <= 0)
                bad_usage("%s: the rate must be above 0", "--rate");
            break;
        case 'd':
            o->duration = parse_seconds(optarg, "--duration");
            o->duration_set = true;
            break;
        case 'n':
            o->per_conn = parse_count(optarg, "--messages", UINT64_MAX >> 1);
            o->by_count = true;
            break;
        case OPT_WARMUP:
            o->warmup = parse_seconds(optarg, "--warmup");
            o->warmup_set = true;
            break;
        case OPT_HOST: o->host = optarg; break;
        case 'p': o->port = (long)parse_count(optarg, "--port", 65535); break;
        case OPT_UNIX: o->unix_path = optarg; break;
        case OPT_BIND: o->bind = optarg; break;
        case OPT_CTIMEOUT: o->connect_timeout = parse_seconds(optarg, "--connect-timeout"); break;
        case OPT_TIMEOUT: o->timeout = parse_seconds(optarg, "--timeout"); break;
        case OPT_JSON: o->json = true; break;
        case 'q': o->quiet = true; break;
        case 'v': o->verbose = true; break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("crest-bench (crest %s)\n", crest_version()); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        o->address = argv[optind++];
    if (optind < argc)
        bad_usage("unexpected argument: %s", argv[optind]);
    int targets = !!o->address + !!o->unix_path + (o->host || o->port >= 0);
    if (targets == 0)
        bad_usage("%s", "no target: give ADDRESS, --host/--port or --unix");
    if (targets > 1)
        bad_usage("%s", "give one target: ADDRESS, --host/--port or --unix");
    if ((o->host || o->port >= 0) && o->port < 0)
        bad_usage("%s", "--host needs --port");
    if (o->conns == 0 || o->threads == 0 || o->pipeline == 0)
        bad_usage("%s", "-c, -t and -P must be at least 1");
    if (o->size_set && o->size_random)
        bad_usage("%s", "give -s or --size-random, not both");
    if (!o->size_random)
        o->size_min = o->size;
    if (o->mode == BENCH_MODE_RAW && o->size_min == 0)
        bad_usage("%s", "raw mode needs -s of at least 1 byte");
    if (!o->by_count && o->duration <= 0)
        bad_usage("%s", "--duration must be above 0");
    if (o->by_count && o->warmup_set)
        bad_usage("%s", "--warmup does not apply with -n (every message is measured)");
    if (o->unix_path && o->bind)
        bad_usage("%s", "--bind applies to TCP only");
    if (o->threads > o->conns)
        o->threads = o->conns;
}

/* ADDRESS, --host/--port or --unix, as crest_addr_parse() text. */
static void target_text(const struct options *o, char *buf, size_t size) {
    if (o->address)
        snprintf(buf, size, "%s", o->address);
    else if (o->unix_path)
        snprintf(buf, size, "unix:%s", o->unix_path);
    else {
        const char *h = o->host ? o->host : "127.0.0.1";
        bool v6 = strchr(h, ':') && h[0] != '[';
        snprintf(buf, size, v6 ? "[%s]:%ld" : "%s:%ld", h, o->port);
    }
}

/* One source address ("127.0.0.2", "::1", "[::1]" or with a port) into out,
 * port 0 unless given. */
static int parse_bind_one(const char *text, crest_addr_t *out) {
    char buf[128];
    if (crest_addr_parse(text, out) == 0)
        return 0;
    if (strchr(text, ':') && text[0] != '[')
        snprintf(buf, sizeof buf, "[%s]:0", text);
    else
        snprintf(buf, sizeof buf, "%s:0", text);
    return crest_addr_parse(buf, out);
}

/* --bind A or A-B (IPv4 ranges only). */
static crest_addr_t *parse_binds(const char *text, unsigned *count) {
    char first[64], last[64];
    const char *dash = strchr(text, '-');
    crest_addr_t *v;
    if (!dash) {
        v = malloc(sizeof *v);
        if (!v || parse_bind_one(text, v) < 0)
            bad_usage("--bind %s: not an address", text);
        *count = 1;
        return v;
    }
    size_t n = (size_t)(dash - text);
    if (n >= sizeof first || strlen(dash + 1) >= sizeof last)
        bad_usage("--bind %s: not an address range", text);
    memcpy(first, text, n);
    first[n] = '\0';
    strcpy(last, dash + 1);
    struct in_addr a, b;
    if (inet_pton(AF_INET, first, &a) != 1 || inet_pton(AF_INET, last, &b) != 1)
        bad_usage("--bind %s: ranges are IPv4 addresses without ports, A-B", text);
    uint32_t lo = ntohl(a.s_addr), hi = ntohl(b.s_addr);
    if (hi < lo || hi - lo >= MAX_BINDS)
        bad_usage("--bind %s: empty or longer than 4096 addresses", text);
    *count = hi - lo + 1;
    v = calloc(*count, sizeof *v);
    if (!v)
        bad_usage("%s", "out of memory");
    for (uint32_t i = 0; i < *count; i++) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&v[i].ss;
        sin->sin_family = AF_INET;
        sin->sin_port = 0;
        sin->sin_addr.s_addr = htonl(lo + i);
        v[i].len = sizeof *sin;
    }
    return v;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t sec_ns(double s) {
    return (uint64_t)(s * 1e9 + 0.5);
}

/* More connections need more fds: raise the soft limit to the hard one. */
static void raise_fd_limit(unsigned conns) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && conns + 64 > rl.rlim_cur)
        fprintf(stderr, "crest-bench: warning: %u connections but only %llu fds allowed\n", conns,
                (unsigned long long)rl.rlim_cur);
}

/* Wait for the workers, printing progress and turning SIGINT/SIGTERM into
 * a stop request (a second one: stop without waiting for replies). */
static bool supervise(bench_cfg_t *cfg, bench_worker_t **workers, unsigned n,
                      const sigset_t *sigs, bool progress) {
    bool interrupted = false;
    uint64_t next = cfg->t0_ns + 1000000000ull, last_replies = 0, last_t = cfg->t0_ns;
    for (;;) {
        bench_progress_t sum = {0}, p;
        bool all_done = true;
        for (unsigned i = 0; i < n; i++) {
            bench_worker_progress(workers[i], &p);
            sum.replies += p.replies;
            sum.open += p.open;
            sum.errors += p.errors;
            all_done &= p.done;
        }
        if (all_done)
            break;
        uint64_t now = now_ns();
        if (progress && now >= next) {
            const char *phase = atomic_load(&cfg->stop_ns) != UINT64_MAX ? "stopping"
                                : cfg->by_count                          ? "running"
                                : now < cfg->win_start_ns                ? "warm-up"
                                : now < cfg->win_end_ns                  ? "measuring"
                                                                         : "draining";
            double dt = (double)(now - last_t) / 1e9;
            fprintf(stderr, "\r\033[K%6.1f s  %-9s  %" PRIu64 " open  %.0f msg/s  %" PRIu64
                    " replies  %" PRIu64 " errors", (double)(now - cfg->t0_ns) / 1e9, phase,
                    sum.open, dt > 0 ? (double)(sum.replies - last_replies) / dt : 0.0,
                    sum.replies, sum.errors);
            last_replies = sum.replies;
            last_t = now;
            while (next <= now)
                next += 1000000000ull;
        }
        uint64_t wait = 100000000ull; /* poll the workers' done flags at 10 Hz */
        if (progress && next > now && next - now < wait)
            wait = next - now;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)wait};
        int sig = sigtimedwait(sigs, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            if (!interrupted) {
                interrupted = true;
                atomic_store(&cfg->stop_ns, now_ns());
            } else {
                atomic_store(&cfg->hurry, true);
            }
        }
    }
    if (progress)
        fprintf(stderr, "\r\033[K");
    return interrupted;
}

int main(int argc, char **argv) {
    struct options o;
    parse_options(argc, argv, &o);
    crest_log_set_level(o.verbose ? CREST_LOG_INFO : CREST_LOG_WARN);

    static bench_cfg_t cfg; /* static: zeroed; shared with the workers */
    char target[CREST_ADDR_STRLEN + 16];
    target_text(&o, target, sizeof target);
    int rc = crest_addr_parse(target, &cfg.target);
    if (rc < 0)
        bad_usage("%s: not an address (forms: 127.0.0.1:7000, [::1]:7000, unix:/path)", target);
    crest_addr_t *binds = NULL;
    if (o.bind) {
        if (cfg.target.ss.ss_family == AF_UNIX)
            bad_usage("%s", "--bind applies to TCP only");
        binds = parse_binds(o.bind, &cfg.nbinds);
        if (binds[0].ss.ss_family != cfg.target.ss.ss_family)
            bad_usage("--bind %s: not the target's address family", o.bind);
    }
    if (o.mode == BENCH_MODE_FRAME && o.size > UINT32_MAX)
        bad_usage("%s", "frame mode: -s must fit the 4-byte header");
    cfg.binds = binds;
    cfg.mode = o.mode;
    cfg.conns = o.conns;
    cfg.threads = o.threads;
    cfg.pipeline = o.pipeline;
    cfg.size = (size_t)o.size;
    cfg.size_min = (size_t)o.size_min;
    cfg.rate = o.rate;
    cfg.by_count = o.by_count;
    cfg.per_conn = o.per_conn;
    cfg.connect_timeout_ms = (uint32_t)(o.connect_timeout * 1000 + 0.5);
    cfg.timeout_ns = sec_ns(o.timeout);
    if (bench_cfg_prepare(&cfg) < 0) {
        fprintf(stderr, "crest-bench: out of memory\n");
        return 3;
    }
    raise_fd_limit(o.conns);

    /* Signals go to the main thread only: block them before the workers
     * exist (they inherit the mask) and take them with sigtimedwait. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    /* The phases, fixed before anything starts. */
    cfg.t0_ns = now_ns();
    if (o.by_count) {
        o.warmup = 0;
        cfg.win_start_ns = cfg.t0_ns;
        cfg.win_end_ns = o.duration_set ? cfg.t0_ns + sec_ns(o.duration) : UINT64_MAX;
    } else {
        cfg.win_start_ns = cfg.t0_ns + sec_ns(o.warmup);
        cfg.win_end_ns = cfg.win_start_ns + sec_ns(o.duration);
    }
    atomic_store(&cfg.stop_ns, UINT64_MAX);
    atomic_store(&cfg.hurry, false);

    bench_worker_t **workers = calloc(o.threads, sizeof *workers);
    if (!workers) {
        fprintf(stderr, "crest-bench: out of memory\n");
        return 3;
    }
    unsigned started = 0;
    for (; started < o.threads; started++) {
        rc = bench_worker_start(&cfg, started, &workers[started]);
        if (rc < 0) {
            fprintf(stderr, "crest-bench: starting thread %u: %s\n", started, crest_strerror(rc));
            atomic_store(&cfg.stop_ns, now_ns());
            atomic_store(&cfg.hurry, true);
            break;
        }
    }
    bool progress = isatty(STDOUT_FILENO) && !o.quiet && !o.json;
    bool interrupted = supervise(&cfg, workers, started, &sigs, progress);

    bench_result_t *res = malloc(sizeof *res);
    if (!res) {
        fprintf(stderr, "crest-bench: out of memory\n");
        return 3;
    }
    bench_result_init(res);
    int setup_failed = started < o.threads, loop_leaks = 0;
    for (unsigned i = 0; i < started; i++) {
        int leaked = 0;
        rc = bench_worker_join(workers[i], res, &leaked);
        loop_leaks += leaked;
        if (rc < 0) {
            fprintf(stderr, "crest-bench: thread %u: %s\n", i, crest_strerror(rc));
            setup_failed = 1;
        }
    }
    free(workers);

    /* Every connection closed, every loop destroyed: nothing may be left. */
    int fds_left = (int)crest_fd_open_count();
    if (fds_left || loop_leaks)
        crest_fd_report(stderr);

    bench_run_info_t info = {
        .version = crest_version(),
        .mode = bench_mode_name(o.mode),
        .target = target,
        .size = o.size,
        .size_min = o.size_min,
        .conns = o.conns,
        .threads = o.threads,
        .pipeline = o.pipeline,
        .rate = o.rate,
        .duration_s = o.by_count && !o.duration_set ? 0 : o.duration,
        .warmup_s = o.warmup,
        .by_count = o.by_count,
        .per_conn = o.per_conn,
        .binds = cfg.nbinds,
        .fds_leaked = fds_left > loop_leaks ? fds_left : loop_leaks,
        .interrupted = interrupted,
    };
    if (o.json) {
        bench_result_print_json(stdout, &info, res);
    } else {
        if (!o.quiet)
            bench_result_print_human(stdout, &info, res);
        bench_result_print_kv(stdout, &info, res);
    }
    fflush(stdout);

    /* Nothing measured (interrupted during the warm-up, every connection
     * failed, ...) is a failed run too, even without errors. */
    bool setup_only = o.by_count && o.per_conn == 0; /* -n 0 */
    int status = 0;
    if (setup_failed)
        status = 3;
    else if (bench_result_errors(res) || info.fds_leaked || (!res->msgs && !setup_only))
        status = 1;
    free(res);
    free(binds);
    bench_cfg_release(&cfg);
    return status;
}
