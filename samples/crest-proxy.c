/* crest-proxy: a TCP load balancer on crest.
 *
 * Each accepted client is paired with a connection to one of the
 * --backend addresses (round-robin, or least connections), and the pair
 * relays bytes both ways:
 *
 *   - what on_data gives on one side is written to the other as is (no
 *     copy of ours; crest copies only what the socket does not take);
 *   - backpressure both ways: once the output queued to one side passes
 *     high water, reading from the other side pauses, and resumes when that
 *     output drains to low water.  keep_reading is set on both sides so
 *     that crest's own pause (which stops a connection reading when its
 *     own output is high) does not tie the two directions together: each
 *     direction is paused by its own consumer only.  The pause is taken in
 *     on_data right after the write that crossed the mark, so output queued
 *     per direction stays under high_water + read_budget (1 MiB + 64 KiB
 *     by default: about 2.1 MiB per pair, both directions); max_output is
 *     set just above that as a hard cap;
 *   - the client is paused until its backend connection is open, so
 *     nothing it sends is queued for a backend that may yet fail (and be
 *     retried on another one);
 *   - half-close passes through: an EOF from one side shuts down writing
 *     to the other once its output is flushed; the pair ends when both
 *     sides have sent their EOF;
 *   - a side that fails (reset, error, timeout) aborts the other with the
 *     reason in the log: a client must not mistake a cut stream for a
 *     whole one.
 *
 * A connect failure is retried on another backend (--retries), active
 * health checks (--health-interval) connect to every backend and mark it
 * down after --health-fails failures in a row, up after one success.
 * --send-proxy-v2 sends a PROXY v2 header naming the client first.
 *
 * Everything else (options, threads, signals, the final report) is the
 * shared skeleton in server.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <crest/proxy.h>

#include "server.h"

#define MAX_BACKENDS 64

struct backend {
    char addr[CREST_ADDR_STRLEN + 8];  /* as given: "127.0.0.1:7001" */
    atomic_uint active;                /* pairs now (least connections) */
    atomic_ullong pairs;               /* pairs ever (the report) */
    atomic_bool down;                  /* marked down by health checks */
    unsigned fails;                    /* health failures in a row (loop 0) */
};

static struct backend backends[MAX_BACKENDS];
static unsigned nbackends;
static atomic_uint rr_next;
static bool leastconn;
static uint32_t connect_timeout_ms = 2000;
static unsigned retries = 2;
static uint64_t health_interval_ms;
static unsigned health_fails = 3;
static bool send_proxy_v2;
static size_t high_water = (size_t)1 << 20;

/* The final report's counters, per loop (server.h: loop_counters). */
enum { N_CLIENTS, N_PAIRS, N_BYTES_UP, N_BYTES_DOWN, N_CONNECT_FAILS, N_RETRIES, N_DOWN, N_UP };

struct loop_state {
    crest_loop_t *loop;
    uint64_t n[SERVER_PROTO_COUNTERS];
    crest_timer_t *health;   /* loop 0 only */
};
static struct loop_state *states;

/* One client and its backend.  Freed when both connections have closed
 * (refs counts the live ones). */
struct pair {
    struct loop_state *ls;
    crest_conn_t *client;
    crest_conn_t *backend;   /* NULL between a failed connect and a retry */
    unsigned bi;             /* backend index */
    unsigned attempts;
    unsigned refs;
    bool backend_open;
    bool client_eof, backend_eof;
    bool closing;            /* we are ending the pair: closes are ours */
    uint64_t up, down;       /* bytes client -> backend, backend -> client */
};

static const crest_handler_t backend_handler;

static void log_pair(const struct pair *p, const char *fmt, const char *what) {
    printf("crest-proxy: pair #%" PRIu64 " (backend %s): %s%s\n",
           p->client ? crest_conn_id(p->client) : 0, backends[p->bi].addr, fmt, what);
}

/* Least connections, or the next up one in turn; skip excluded (the one
 * that just failed) unless it is the only one.  Down backends are taken
 * only if all are down. */
static unsigned pick_backend(int exclude) {
    unsigned best = UINT32_MAX;
    unsigned start = atomic_fetch_add(&rr_next, 1);
    for (int pass = 0; pass < 2 && best == UINT32_MAX; pass++) {
        for (unsigned k = 0; k < nbackends; k++) {
            unsigned i = (start + k) % nbackends;
            if ((int)i == exclude && nbackends > 1)
                continue;
            if (pass == 0 && atomic_load(&backends[i].down))
                continue;
            if (!leastconn) {
                best = i;
                break;
            }
            if (best == UINT32_MAX ||
                atomic_load(&backends[i].active) < atomic_load(&backends[best].active))
                best = i;
        }
    }
    return best == UINT32_MAX ? 0 : best;
}

static void pair_unref(struct pair *p) {
    if (--p->refs == 0)
        free(p);
}

/* The PROXY v2 header naming the client, written first to the backend. */
static void write_proxy_header(struct pair *p) {
    char text[CREST_ADDR_STRLEN];
    crest_addr_t src, dst;
    uint8_t hdr[64];
    if (crest_conn_peer(p->client, text, sizeof text) < 0 || crest_addr_parse(text, &src) < 0 ||
        crest_conn_local(p->client, text, sizeof text) < 0 || crest_addr_parse(text, &dst) < 0) {
        int n = crest_proxy_v2_header(hdr, sizeof hdr, NULL, NULL); /* LOCAL */
        if (n > 0)
            crest_conn_write(p->backend, hdr, (size_t)n);
        return;
    }
    int n = crest_proxy_v2_header(hdr, sizeof hdr, &src, &dst);
    if (n > 0)
        crest_conn_write(p->backend, hdr, (size_t)n);
}

static int connect_backend(struct pair *p);

/* ---- the backend side ---------------------------------------------------- */

static void backend_open(crest_conn_t *b) {
    struct pair *p = crest_conn_get_data(b);
    p->backend_open = true;
    atomic_fetch_add(&backends[p->bi].pairs, 1);
    p->ls->n[N_PAIRS]++;
    if (send_proxy_v2)
        write_proxy_header(p);
    crest_conn_resume(p->client);  /* held since accept: see the top */
}

/* Relay: write to the other side; pause this side if that pushed the
 * other's output past high water (resumed from the other's on_drain). */
static ssize_t relay(crest_conn_t *from, crest_conn_t *to, const uint8_t *data, size_t len) {
    int rc = crest_conn_write(to, data, len);
    if (rc == -ENOMEM)
        return -CREST_CLOSE_NO_MEMORY;
    if (rc == 0 && crest_conn_output_bytes(to) > high_water)
        crest_conn_pause(from);
    /* -ENOTCONN/-EPIPE/-ENOBUFS: the other side is closing; its on_close
     * ends this one too. */
    return (ssize_t)len;
}

static ssize_t backend_data(crest_conn_t *b, const uint8_t *data, size_t len) {
    struct pair *p = crest_conn_get_data(b);
    if (!p->client)
        return (ssize_t)len;
    p->down += len;
    p->ls->n[N_BYTES_DOWN] += len;
    return relay(b, p->client, data, len);
}

/* Both sides said EOF: each has had its shutdown; close both (the output
 * is flushed first). */
static void maybe_finish(struct pair *p) {
    if (!(p->client_eof && p->backend_eof))
        return;
    p->closing = true;
    if (p->client)
        crest_conn_close(p->client);
    if (p->backend)
        crest_conn_close(p->backend);
}

static void backend_eof(crest_conn_t *b) {
    struct pair *p = crest_conn_get_data(b);
    p->backend_eof = true;
    if (p->client)
        crest_conn_shutdown(p->client);
    maybe_finish(p);
}

static void backend_high(crest_conn_t *b) {
    struct pair *p = crest_conn_get_data(b);
    if (p->client && crest_conn_output_bytes(b) > high_water)
        crest_conn_pause(p->client);
}

static void backend_drain(crest_conn_t *b) {
    struct pair *p = crest_conn_get_data(b);
    if (p->client)
        crest_conn_resume(p->client);
}

static bool connect_failure(crest_close_reason_t r) {
    return r == CREST_CLOSE_CONNECT_FAILED || r == CREST_CLOSE_CONNECT_TIMEOUT;
}

static void backend_close(crest_conn_t *b, crest_close_reason_t reason, int err) {
    struct pair *p = crest_conn_get_data(b);
    char why[128];
    if (err)
        snprintf(why, sizeof why, "%s (%s)", crest_close_reason_name(reason), crest_strerror(err));
    else
        snprintf(why, sizeof why, "%s", crest_close_reason_name(reason));
    atomic_fetch_sub(&backends[p->bi].active, 1);
    p->backend = NULL;
    if (!p->backend_open && connect_failure(reason) && p->client && !p->closing) {
        p->ls->n[N_CONNECT_FAILS]++;
        log_pair(p, "connect failed: ", why);
        if (p->attempts <= retries) {
            p->ls->n[N_RETRIES]++;
            if (connect_backend(p) == 0) {
                pair_unref(p);  /* the failed connection's reference */
                return;
            }
        }
        log_pair(p, "all connect attempts failed, closing the client: ", why);
        p->closing = true;
        crest_conn_abort(p->client);
    } else if (p->client && !p->closing) {
        /* Not a close we asked for: the backend failed (or ended without
         * its EOF reaching us first). */
        log_pair(p, "backend failed mid-stream, closing the client: ", why);
        p->closing = true;
        crest_conn_abort(p->client);
    }
    pair_unref(p);
}

static const crest_handler_t backend_handler = {
    .on_open = backend_open,
    .on_data = backend_data,
    .on_eof = backend_eof,
    .on_high_water = backend_high,
    .on_drain = backend_drain,
    .on_close = backend_close,
    .name = "proxy-backend",
};

static void relay_opts(crest_conn_opts_t *o) {
    o->keep_reading = 1;
    o->high_water = high_water;
    o->low_water = high_water / 4;
    /* The relay never queues past high_water + one read; the cap only
     * catches a bug. */
    o->max_output = high_water + o->read_budget + 4096;
}

static int connect_backend(struct pair *p) {
    int exclude = p->attempts ? (int)p->bi : -1;
    p->bi = pick_backend(exclude);
    p->attempts++;
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    relay_opts(&o);
    o.connect_timeout_ms = connect_timeout_ms;
    crest_conn_t *b;
    int rc = crest_connect(p->ls->loop, backends[p->bi].addr, &o, &backend_handler, p, &b);
    if (rc < 0)
        return rc;
    atomic_fetch_add(&backends[p->bi].active, 1);
    crest_conn_set_data(b, p);
    p->backend = b;
    p->refs++;
    return 0;
}

/* ---- the client side ----------------------------------------------------- */

static void client_open(crest_conn_t *c) {
    struct loop_state *ls = crest_loop_get_data(crest_conn_loop(c));
    struct pair *p = calloc(1, sizeof *p);
    if (!p) {
        crest_conn_abort(c);
        return;
    }
    p->ls = ls;
    p->client = c;
    p->refs = 1;
    ls->n[N_CLIENTS]++;
    crest_conn_set_data(c, p);
    crest_conn_pause(c);
    int rc = connect_backend(p);
    if (rc < 0) {
        printf("crest-proxy: client #%" PRIu64 ": cannot connect to a backend: %s\n",
               crest_conn_id(c), crest_strerror(-rc));
        p->closing = true;
        crest_conn_abort(c);
    }
}

static ssize_t client_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct pair *p = crest_conn_get_data(c);
    if (!p || !p->backend)
        return 0; /* cannot happen (paused); keep it for the backend */
    if (!p->backend_open) {
        crest_conn_pause(c);
        return 0;
    }
    p->up += len;
    p->ls->n[N_BYTES_UP] += len;
    return relay(c, p->backend, data, len);
}

static void client_eof(crest_conn_t *c) {
    struct pair *p = crest_conn_get_data(c);
    p->client_eof = true;
    if (p->backend)
        crest_conn_shutdown(p->backend);
    maybe_finish(p);
}

static void client_high(crest_conn_t *c) {
    struct pair *p = crest_conn_get_data(c);
    if (p->backend && crest_conn_output_bytes(c) > high_water)
        crest_conn_pause(p->backend);
}

static void client_drain(crest_conn_t *c) {
    struct pair *p = crest_conn_get_data(c);
    if (p->backend)
        crest_conn_resume(p->backend);
}

static void client_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct pair *p = crest_conn_get_data(c);
    if (!p)
        return;
    p->client = NULL;
    if (p->backend && !p->closing) {
        char why[128];
        if (err)
            snprintf(why, sizeof why, "%s (%s)", crest_close_reason_name(reason),
                     crest_strerror(err));
        else
            snprintf(why, sizeof why, "%s", crest_close_reason_name(reason));
        printf("crest-proxy: pair #%" PRIu64 " (backend %s): client failed, closing the "
               "backend: %s\n", crest_conn_id(c), backends[p->bi].addr, why);
        p->closing = true;
        crest_conn_abort(p->backend);
    } else if (p->backend && !p->backend_open) {
        crest_conn_abort(p->backend);
    }
    pair_unref(p);
}

/* ---- health checks (loop 0) ---------------------------------------------- */

static void health_result(unsigned i, bool ok, const char *why) {
    struct backend *be = &backends[i];
    if (ok) {
        be->fails = 0;
        if (atomic_exchange(&be->down, false)) {
            states[0].n[N_UP]++;
            printf("crest-proxy: backend %s up (health check connected)\n", be->addr);
        }
        return;
    }
    if (++be->fails >= health_fails && !atomic_exchange(&be->down, true)) {
        states[0].n[N_DOWN]++;
        printf("crest-proxy: backend %s down (%u health checks failed in a row: %s)\n",
               be->addr, be->fails, why);
    }
}

static void health_open(crest_conn_t *h) {
    health_result((unsigned)(uintptr_t)crest_conn_get_data(h), true, NULL);
    crest_conn_close(h);
}

static ssize_t health_data(crest_conn_t *h, const uint8_t *data, size_t len) {
    (void)h;
    (void)data;
    return (ssize_t)len;
}

static void health_close(crest_conn_t *h, crest_close_reason_t reason, int err) {
    if (!connect_failure(reason))
        return;
    char why[128];
    snprintf(why, sizeof why, "%s%s%s", crest_close_reason_name(reason), err ? ": " : "",
             err ? crest_strerror(err) : "");
    health_result((unsigned)(uintptr_t)crest_conn_get_data(h), false, why);
}

static const crest_handler_t health_handler = {
    .on_open = health_open,
    .on_data = health_data,
    .on_close = health_close,
    .name = "proxy-health",
};

static void on_health_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct loop_state *ls = arg;
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    o.connect_timeout_ms = connect_timeout_ms;
    o.linger_ms = 0;
    for (unsigned i = 0; i < nbackends; i++) {
        crest_conn_t *h;
        if (crest_connect(ls->loop, backends[i].addr, &o, &health_handler, NULL, &h) == 0)
            crest_conn_set_data(h, (void *)(uintptr_t)i);
    }
}

/* ---- the skeleton's hooks ------------------------------------------------ */

static int proxy_loop_init(server_proto_t *sp, crest_loop_t *loop, unsigned index) {
    (void)sp;
    states[index].loop = loop;
    crest_loop_set_data(loop, &states[index]);
    if (index == 0 && health_interval_ms) {
        int rc = crest_timer_create(loop, on_health_tick, &states[0], &states[0].health);
        if (rc < 0)
            return rc;
        crest_timer_start(states[0].health, health_interval_ms, health_interval_ms);
    }
    return 0;
}

static void proxy_loop_fini(server_proto_t *sp, crest_loop_t *loop, unsigned index) {
    (void)sp;
    (void)loop;
    if (states[index].health) {
        crest_timer_destroy(states[index].health);
        states[index].health = NULL;
    }
}

static void proxy_loop_counters(server_proto_t *sp, crest_loop_t *loop, unsigned index,
                                uint64_t counters[SERVER_PROTO_COUNTERS]) {
    (void)sp;
    (void)loop;
    memcpy(counters, states[index].n, sizeof states[index].n);
}

static void proxy_report(const server_proto_t *sp, const uint64_t n[SERVER_PROTO_COUNTERS]) {
    (void)sp;
    printf("  proxy: %" PRIu64 " clients, %" PRIu64 " pairs; bytes %" PRIu64
           " client->backend, %" PRIu64 " backend->client\n",
           n[N_CLIENTS], n[N_PAIRS], n[N_BYTES_UP], n[N_BYTES_DOWN]);
    printf("  proxy: %" PRIu64 " connect failures, %" PRIu64 " retries; backends marked down %"
           PRIu64 " times, up %" PRIu64 " times\n",
           n[N_CONNECT_FAILS], n[N_RETRIES], n[N_DOWN], n[N_UP]);
    for (unsigned i = 0; i < nbackends; i++)
        printf("  backend %s: %llu pairs%s\n", backends[i].addr,
               (unsigned long long)atomic_load(&backends[i].pairs),
               atomic_load(&backends[i].down) ? " (down)" : "");
}

static void proxy_conn_opts(const server_proto_t *sp, crest_conn_opts_t *o) {
    (void)sp;
    relay_opts(o);
}

/* ---- options --------------------------------------------------------------- */

enum { OPT_BACKEND = 256, OPT_BALANCE, OPT_CONNECT_TIMEOUT, OPT_RETRIES, OPT_HEALTH_INTERVAL,
       OPT_HEALTH_FAILS, OPT_SEND_PROXY_V2, OPT_HIGH_WATER };

static const struct option proxy_options[] = {
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"balance", required_argument, NULL, OPT_BALANCE},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"health-interval", required_argument, NULL, OPT_HEALTH_INTERVAL},
    {"health-fails", required_argument, NULL, OPT_HEALTH_FAILS},
    {"send-proxy-v2", no_argument, NULL, OPT_SEND_PROXY_V2},
    {"relay-high-water", required_argument, NULL, OPT_HIGH_WATER},
    {NULL, 0, NULL, 0},
};

static int parse_count(const char *opt, const char *arg, unsigned long max, unsigned long *out) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (errno || end == arg || *end || v > max || arg[0] == '-') {
        fprintf(stderr, "crest-proxy: --%s: bad value '%s' (0..%lu)\n", opt, arg, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int proxy_option(server_proto_t *sp, int id, const char *arg) {
    (void)sp;
    unsigned long v;
    switch (id) {
    case OPT_BACKEND: {
        crest_addr_t a;
        if (nbackends == MAX_BACKENDS) {
            fprintf(stderr, "crest-proxy: at most %d backends\n", MAX_BACKENDS);
            return -1;
        }
        if (crest_addr_parse(arg, &a) < 0 || strlen(arg) >= sizeof backends[0].addr) {
            fprintf(stderr, "crest-proxy: --backend: '%s' is not HOST:PORT (an address; names "
                            "are not resolved yet)\n", arg);
            return -1;
        }
        snprintf(backends[nbackends++].addr, sizeof backends[0].addr, "%s", arg);
        return 0;
    }
    case OPT_BALANCE:
        if (strcmp(arg, "roundrobin") == 0)
            leastconn = false;
        else if (strcmp(arg, "leastconn") == 0)
            leastconn = true;
        else {
            fprintf(stderr, "crest-proxy: --balance: roundrobin or leastconn\n");
            return -1;
        }
        return 0;
    case OPT_CONNECT_TIMEOUT:
        if (parse_count("connect-timeout", arg, 3600000, &v) < 0)
            return -1;
        connect_timeout_ms = (uint32_t)v;
        return 0;
    case OPT_RETRIES:
        if (parse_count("retries", arg, 100, &v) < 0)
            return -1;
        retries = (unsigned)v;
        return 0;
    case OPT_HEALTH_INTERVAL:
        if (parse_count("health-interval", arg, 3600000, &v) < 0)
            return -1;
        health_interval_ms = v;
        return 0;
    case OPT_HEALTH_FAILS:
        if (parse_count("health-fails", arg, 1000, &v) < 0 || v == 0)
            return v == 0 ? (fprintf(stderr, "crest-proxy: --health-fails: at least 1\n"), -1)
                          : -1;
        health_fails = (unsigned)v;
        return 0;
    case OPT_SEND_PROXY_V2:
        send_proxy_v2 = true;
        return 0;
    case OPT_HIGH_WATER:
        return server_parse_size("relay-high-water", arg, 4096, (size_t)1 << 30, &high_water);
    default:
        return -1;
    }
}

static int proxy_configured(server_proto_t *sp) {
    if (nbackends == 0) {
        fprintf(stderr, "crest-proxy: at least one --backend HOST:PORT is needed\n");
        return -1;
    }
    states = calloc(sp->threads, sizeof *states);
    if (!states) {
        fprintf(stderr, "crest-proxy: out of memory\n");
        return -1;
    }
    return 0;
}

static server_proto_t proxy = {
    .name = "crest-proxy",
    .summary = "A TCP load balancer: relays each client to one of the --backend servers.",
    .default_port = 7100,
    .options = proxy_options,
    .options_help =
        "      --backend HOST:PORT  a backend (repeat for more; an address)\n"
        "      --balance roundrobin|leastconn  how a backend is picked (roundrobin;\n"
        "                          both skip backends marked down)\n"
        "      --connect-timeout MS  backend connect timeout (2000)\n"
        "      --retries N         a failed backend connect is retried on another\n"
        "                          backend N times (2), then the client is closed\n"
        "      --health-interval MS  connect-only health checks of every backend\n"
        "                          (0: off, the default)\n"
        "      --health-fails N    failed checks in a row that mark a backend down (3);\n"
        "                          one success marks it up\n"
        "      --send-proxy-v2     send a PROXY v2 header naming the client to the\n"
        "                          backend first (HAProxy's send-proxy-v2)\n"
        "      --relay-high-water BYTES  output queued per direction before the\n"
        "                          other side's reading pauses (1M)\n",
    .parse_option = proxy_option,
    .configured = proxy_configured,
    .loop_init = proxy_loop_init,
    .loop_fini = proxy_loop_fini,
    .loop_counters = proxy_loop_counters,
    .report = proxy_report,
    .conn_opts = proxy_conn_opts,
    .framing = {.kind = CREST_FRAMING_RAW, .max_message = CREST_FRAMING_DEFAULT_MAX},
    .handler = {
        .on_open = client_open,
        .on_data = client_data,
        .on_eof = client_eof,
        .on_high_water = client_high,
        .on_drain = client_drain,
        .on_close = client_close,
        .name = "proxy-client",
    },
    .message_unit = "reads",
};

int main(int argc, char **argv) {
    return server_main(argc, argv, &proxy);
}
