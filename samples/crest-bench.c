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
 * times, waits for signals and prints progress), client processes (-j),
 * merging and output.  The connections live in bench_worker.c, the numbers
 * in bench_result.c and bench_hist.c.
 *
 * -j N: N client processes, forked once the phases are fixed (so they all
 * share one schedule: CLOCK_MONOTONIC is the same in every process) and
 * before any crest loop exists.  Each runs -t threads on its share of the
 * connections, with its own fd limit, and writes its progress (4 times a
 * second) and at the end its whole bench_result_t (a plain struct) to a
 * pipe; the parent merges the results exactly as threads' are merged, and
 * forwards SIGINT/SIGTERM to the children as SIGTERM.
 *
 * Exit status: 0 clean; 1 errors (any kind), no reply measured at all, or
 * fds left open; 2 usage; 3 setup failure (no loop, no thread). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <crest/crest.h>

#include "bench_result.h"
#include "bench_worker.h"

#define MAX_BINDS 4096
#define MAX_PROCS 256

struct options {
    bench_mode_t mode;
    const char *address;      /* positional */
    const char *host, *unix_path;
    long port;
    unsigned conns, threads, pipeline, procs;
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
"  -t, --threads N          threads, one crest loop each (default 1); per process\n"
"  -j, --processes N        client processes (default 1), each with -t threads and\n"
"                           its own fd limit; the connections are shared out and\n"
"                           the results merged\n"
"  -P, --pipeline N         requests in flight per connection (default 1)\n"
"  -r, --rate N             open loop: N messages/s in total, at fixed intervals;\n"
"                           latency counts from the scheduled time (default:\n"
"                           closed loop, each reply triggers the next request);\n"
"                           each connection sends every C/N s (C connections):\n"
"                           -c 100000 -r 10000 holds 100,000 connections open with\n"
"                           one message every 10 s each\n"
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
        {"processes", required_argument, NULL, 'j'},
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
        .mode = BENCH_MODE_RAW, .port = -1, .conns = 100, .threads = 1, .pipeline = 1, .procs = 1,
        .size = 64, .duration = 5, .warmup = 1, .connect_timeout = 5, .timeout = 5,
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "m:s:c:t:j:P:r:d:n:p:qvhV", longopts, NULL)) != -1) {
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
        case 'j': o->procs = (unsigned)parse_count(optarg, "--processes", MAX_PROCS); break;
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
    if (o->conns == 0 || o->threads == 0 || o->pipeline == 0 || o->procs == 0)
        bad_usage("%s", "-c, -t, -j and -P must be at least 1");
    if (o->procs > o->conns)
        bad_usage("%s", "-j: more processes than connections");
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
    if ((uint64_t)o->threads * o->procs > o->conns)
        o->threads = o->conns / o->procs; /* at least one connection per thread */
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

/* ---- one process: its threads -------------------------------------------- */

/* A client process's messages to the parent (-j): a header, then len bytes. */
enum { MSG_PROGRESS = 1, MSG_RESULT = 2 };

struct msg_hdr {
    uint32_t type, len;
};

struct proc_result {
    int setup_failed;
    int fds_leaked;
    int interrupted;
    bench_result_t res;
};

/* Blocking write of the whole message.  EPIPE (the parent is gone): the
 * child is on its way out anyway. */
static void send_msg(int fd, uint32_t type, const void *body, size_t len) {
    struct msg_hdr h = {type, (uint32_t)len};
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)body, len}};
    int n = 2, i = 0;
    while (i < n) {
        ssize_t w = writev(fd, iov + i, n - i);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        while (i < n && (size_t)w >= iov[i].iov_len)
            w -= (ssize_t)iov[i++].iov_len;
        if (i < n) {
            iov[i].iov_base = (char *)iov[i].iov_base + w;
            iov[i].iov_len -= (size_t)w;
        }
    }
}

/* Wait for the workers, printing progress (or, in a client process, sending
 * it to the parent on report_fd) and turning SIGINT/SIGTERM into a stop
 * request (a second one: stop without waiting for replies). */
static bool supervise(bench_cfg_t *cfg, bench_worker_t **workers, unsigned n,
                      const sigset_t *sigs, bool progress, int report_fd) {
    bool interrupted = false;
    uint64_t next = cfg->t0_ns + 1000000000ull, last_replies = 0, last_t = cfg->t0_ns;
    uint64_t period = report_fd >= 0 ? 250000000ull : 1000000000ull;
    if (report_fd >= 0)
        progress = true;
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
            if (report_fd >= 0) {
                send_msg(report_fd, MSG_PROGRESS, &sum, sizeof sum);
            } else {
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
            }
            while (next <= now)
                next += period;
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
    if (progress && report_fd < 0)
        fprintf(stderr, "\r\033[K");
    return interrupted;
}

/* Run this process's threads to the end and merge their results into res. */
static bool run_threads(bench_cfg_t *cfg, const sigset_t *sigs, bool progress, int report_fd,
                        bench_result_t *res, int *setup_failed, int *fds_leaked) {
    bench_worker_t **workers = calloc(cfg->threads, sizeof *workers);
    if (!workers) {
        fprintf(stderr, "crest-bench: out of memory\n");
        *setup_failed = 1;
        return false;
    }
    unsigned started = 0;
    for (; started < cfg->threads; started++) {
        int rc = bench_worker_start(cfg, started, &workers[started]);
        if (rc < 0) {
            fprintf(stderr, "crest-bench: starting thread %u: %s\n", started, crest_strerror(rc));
            atomic_store(&cfg->stop_ns, now_ns());
            atomic_store(&cfg->hurry, true);
            break;
        }
    }
    bool interrupted = supervise(cfg, workers, started, sigs, progress, report_fd);

    int loop_leaks = 0;
    *setup_failed = started < cfg->threads;
    for (unsigned i = 0; i < started; i++) {
        int leaked = 0;
        int rc = bench_worker_join(workers[i], res, &leaked);
        loop_leaks += leaked;
        if (rc < 0) {
            fprintf(stderr, "crest-bench: thread %u: %s\n", i, crest_strerror(rc));
            *setup_failed = 1;
        }
    }
    free(workers);

    /* Every connection closed, every loop destroyed: nothing may be left. */
    int fds_left = (int)crest_fd_open_count();
    if (fds_left || loop_leaks)
        crest_fd_report(stderr);
    *fds_leaked = fds_left > loop_leaks ? fds_left : loop_leaks;
    return interrupted;
}

/* ---- -j: client processes ------------------------------------------------- */

struct proc {
    pid_t pid;
    int fd;                       /* our end of its pipe; -1 at EOF */
    uint8_t *buf;                 /* messages being received */
    size_t got;
    bench_progress_t progress;    /* the latest */
    struct proc_result *result;   /* NULL until it came */
    int status;
};

static _Noreturn void child_main(bench_cfg_t *cfg, unsigned index, int wfd, pid_t parent,
                                 const sigset_t *sigs) {
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the parent died: stop */
    if (getppid() != parent)
        _exit(3);
    signal(SIGINT, SIG_IGN); /* the parent forwards it as SIGTERM */
    cfg->proc_index = index;
    static struct proc_result pr; /* large: not on the stack */
    bench_result_init(&pr.res);
    pr.interrupted = run_threads(cfg, sigs, false, wfd, &pr.res, &pr.setup_failed,
                                 &pr.fds_leaked);
    send_msg(wfd, MSG_RESULT, &pr, sizeof pr);
    close(wfd);
    exit(0);
}

/* Take the complete messages out of p->buf. */
static void proc_messages(struct proc *p) {
    size_t off = 0;
    while (p->got - off >= sizeof(struct msg_hdr)) {
        struct msg_hdr h;
        memcpy(&h, p->buf + off, sizeof h);
        if (p->got - off - sizeof h < h.len)
            break;
        const uint8_t *body = p->buf + off + sizeof h;
        if (h.type == MSG_PROGRESS && h.len == sizeof p->progress) {
            memcpy(&p->progress, body, sizeof p->progress);
        } else if (h.type == MSG_RESULT && h.len == sizeof *p->result && !p->result) {
            p->result = malloc(sizeof *p->result);
            if (p->result)
                memcpy(p->result, body, sizeof *p->result);
        }
        off += sizeof h + h.len;
    }
    memmove(p->buf, p->buf + off, p->got - off);
    p->got -= off;
}

/* Fork the client processes, gather their progress and results, merge. */
static bool run_procs(bench_cfg_t *cfg, const sigset_t *sigs, bool progress,
                      bench_result_t *res, int *setup_failed, int *fds_leaked) {
    const size_t cap = sizeof(struct msg_hdr) + sizeof(struct proc_result);
    unsigned n = cfg->procs, forked = 0;
    struct proc *procs = calloc(n, sizeof *procs);
    bool interrupted = false;
    *setup_failed = 0;
    *fds_leaked = 0;
    if (!procs) {
        fprintf(stderr, "crest-bench: out of memory\n");
        *setup_failed = 1;
        return false;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t self = getpid();
    for (unsigned i = 0; i < n; i++) {
        int p[2];
        procs[i].fd = -1;
        procs[i].buf = malloc(cap);
        if (!procs[i].buf || pipe2(p, O_CLOEXEC) < 0) {
            fprintf(stderr, "crest-bench: pipe: %s\n", strerror(errno ? errno : ENOMEM));
            *setup_failed = 1;
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "crest-bench: fork: %s\n", strerror(errno));
            close(p[0]);
            close(p[1]);
            *setup_failed = 1;
            break;
        }
        if (pid == 0) {
            for (unsigned j = 0; j < i; j++)
                close(procs[j].fd);
            close(p[0]);
            child_main(cfg, i, p[1], self, sigs);
        }
        close(p[1]);
        procs[i].pid = pid;
        procs[i].fd = p[0];
        forked++;
    }
    if (*setup_failed) {
        for (unsigned i = 0; i < forked; i++)
            kill(procs[i].pid, SIGTERM);
        interrupted = true;
    }

    /* The parent's signals come through a signalfd (they are blocked). */
    int sfd = signalfd(-1, sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    struct pollfd *pfd = calloc(forked + 1, sizeof *pfd);
    if (sfd < 0 || !pfd) {
        fprintf(stderr, "crest-bench: signalfd: %s\n", strerror(errno ? errno : ENOMEM));
        *setup_failed = 1;
    }
    uint64_t next = cfg->t0_ns + 1000000000ull, last_replies = 0, last_t = cfg->t0_ns;
    unsigned open_pipes = forked;
    while (open_pipes > 0 && pfd) {
        for (unsigned i = 0; i < forked; i++)
            pfd[i] = (struct pollfd){.fd = procs[i].fd, .events = POLLIN};
        pfd[forked] = (struct pollfd){.fd = sfd, .events = POLLIN};
        int rc = poll(pfd, forked + 1, 250);
        if (rc < 0 && errno != EINTR)
            break;
        for (unsigned i = 0; i < forked && rc > 0; i++) {
            struct proc *p = &procs[i];
            if (p->fd < 0 || !pfd[i].revents)
                continue;
            ssize_t r = read(p->fd, p->buf + p->got, cap - p->got);
            if (r > 0) {
                p->got += (size_t)r;
                proc_messages(p);
            } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                close(p->fd);
                p->fd = -1;
                p->progress.done = true;
                open_pipes--;
            }
        }
        if (sfd >= 0 && rc > 0 && pfd[forked].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                interrupted = true;
                for (unsigned i = 0; i < forked; i++)
                    if (procs[i].fd >= 0)
                        kill(procs[i].pid, SIGTERM); /* a second one: hurry */
            }
        }
        uint64_t now = now_ns();
        if (progress && now >= next) {
            bench_progress_t sum = {0};
            for (unsigned i = 0; i < forked; i++) {
                sum.replies += procs[i].progress.replies;
                sum.open += procs[i].progress.open;
                sum.errors += procs[i].progress.errors;
            }
            double dt = (double)(now - last_t) / 1e9;
            fprintf(stderr, "\r\033[K%6.1f s  %u processes  %" PRIu64 " open  %.0f msg/s  %" PRIu64
                    " replies  %" PRIu64 " errors", (double)(now - cfg->t0_ns) / 1e9, open_pipes,
                    sum.open, dt > 0 ? (double)(sum.replies - last_replies) / dt : 0.0,
                    sum.replies, sum.errors);
            last_replies = sum.replies;
            last_t = now;
            while (next <= now)
                next += 1000000000ull;
        }
    }
    if (progress)
        fprintf(stderr, "\r\033[K");
    if (sfd >= 0)
        close(sfd);
    free(pfd);

    for (unsigned i = 0; i < forked; i++) {
        struct proc *p = &procs[i];
        if (p->fd >= 0) { /* the loop above broke off: stop it */
            kill(p->pid, SIGTERM);
            close(p->fd);
        }
        while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR) {
        }
        if (!p->result || p->result->res.version != BENCH_RESULT_VERSION) {
            if (WIFSIGNALED(p->status))
                fprintf(stderr, "crest-bench: process %u (pid %d) was killed by signal %d\n", i,
                        (int)p->pid, WTERMSIG(p->status));
            else
                fprintf(stderr, "crest-bench: process %u (pid %d) ended without a result "
                        "(status %d)\n", i, (int)p->pid, WEXITSTATUS(p->status));
            *setup_failed = 1;
        } else {
            bench_result_merge(res, &p->result->res);
            *setup_failed |= p->result->setup_failed;
            *fds_leaked += p->result->fds_leaked;
            interrupted |= p->result->interrupted != 0;
        }
        free(p->result);
        free(p->buf);
    }
    for (unsigned i = forked; i < n; i++)
        free(procs[i].buf);
    free(procs);
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
    cfg.procs = o.procs;
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
    /* Each process holds its share of the connections. */
    raise_fd_limit((o.conns + o.procs - 1) / o.procs);

    /* Signals go to the main thread only: block them before the workers
     * (and the client processes) exist, and take them with sigtimedwait
     * (a signalfd in the -j parent). */
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

    bench_result_t *res = malloc(sizeof *res);
    if (!res) {
        fprintf(stderr, "crest-bench: out of memory\n");
        return 3;
    }
    bench_result_init(res);
    bool progress = isatty(STDOUT_FILENO) && !o.quiet && !o.json;
    int setup_failed = 0, fds_leaked = 0;
    bool interrupted;
    if (o.procs > 1)
        interrupted = run_procs(&cfg, &sigs, progress, res, &setup_failed, &fds_leaked);
    else
        interrupted = run_threads(&cfg, &sigs, progress, -1, res, &setup_failed, &fds_leaked);

    bench_run_info_t info = {
        .version = crest_version(),
        .mode = bench_mode_name(o.mode),
        .target = target,
        .size = o.size,
        .size_min = o.size_min,
        .conns = o.conns,
        .threads = o.threads,
        .procs = o.procs,
        .pipeline = o.pipeline,
        .rate = o.rate,
        .duration_s = o.by_count && !o.duration_set ? 0 : o.duration,
        .warmup_s = o.warmup,
        .by_count = o.by_count,
        .per_conn = o.per_conn,
        .binds = cfg.nbinds,
        .fds_leaked = fds_leaked,
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
