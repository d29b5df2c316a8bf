/* crest-http: an HTTP/1.1 server on crest's HTTP server (http.h).
 *
 * Routes:
 *   GET /          "Hello, World!\n" (text/plain): the classic minimal
 *                  HTTP server, what wrk and ab are usually pointed at;
 *   GET /bytes/N   N bytes (0 <= N <= 1 GiB, decimal, no sign, no leading
 *                  zero), streamed (crest_http_respond_stream): a transfer
 *                  test that holds one 64 KiB pattern, not N bytes; 400
 *                  for a bad N;
 *   POST /echo     the request's body, with its Content-Type (or
 *                  application/octet-stream);
 *   GET /delay/N   "delayed N ms\n", answered N ms later (0 <= N <=
 *                  60000) from a timer: a stand-in for a handler that
 *                  waits on a backend, which the doctor's slow_response
 *                  tells from a slow loop (docs/latency.md); 400 for a
 *                  bad N;
 *   HEAD           for every GET route (the head only, same length);
 *   anything else  404; a known path with another method 405 with Allow.
 * A query ("?...") is ignored.  Keep-alive, pipelining, Connection: close,
 * HTTP/1.0, Date, Content-Length, the limits (414, 431, 413, ...) and the
 * timeouts are the library's.
 *
 * On the shared skeleton (server.c): each worker loop has its own HTTP
 * server (loop_init; destroyed by loop_fini), and the skeleton's listeners
 * hand every connection to their loop's server as it opens
 * (crest_http_server_accept() from the handler's on_open).  The listeners
 * get the server's connection options from the start (conn_opts hook:
 * crest_http_server_conn_opts()), so a connection keeps sharing them.
 * Once handed over, the connection's handler is the server's: the
 * skeleton's on_close no longer runs for it, so the per-connection lines
 * stop at "open" (closes are in the final report's close reasons; drain at
 * shutdown is crest_loop_shutdown()'s, which needs no on_close), and the
 * skeleton refuses the options that would act through its handler
 * (server.h: hands_over).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <crest/http.h>

#include "server.h"

#define BYTES_MAX ((uint64_t)1 << 30) /* /bytes/N: at most 1 GiB */
#define DELAY_MAX_MS 60000u           /* /delay/N: at most a minute */

/* The final report's counters (loop_counters). */
enum {
    K_REQUESTS,
    K_2XX,
    K_3XX,
    K_4XX,
    K_5XX,
    K_REFUSED,
    K_TIMEOUTS,
    K_CANCELLED,
};

/* One worker loop's server, and its figures once it is gone. */
struct http_loop {
    crest_http_server_t *srv;
    crest_http_server_stats_t final; /* taken by loop_fini */
};

static struct {
    crest_http_server_opts_t opts; /* every loop's server */
    struct http_loop *loops;       /* one per worker loop (--threads) */
    char timeouts[160];            /* the start-up line's */
} http;

/* ------------------------------------------------------------------------
 * Routes
 * ------------------------------------------------------------------------ */

static const crest_http_header_t text_plain = {{"Content-Type", 12}, {"text/plain", 10}};

static bool str_is(crest_http_str_t s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static void answer_text(crest_http_exchange_t *x, int status, const char *text) {
    crest_http_respond(x, status, &text_plain, 1, text, strlen(text));
}

static void method_not_allowed(crest_http_exchange_t *x, const char *allow) {
    crest_http_header_t h[2] = {text_plain, {{"Allow", 5}, {allow, strlen(allow)}}};
    static const char body[] = "405 Method Not Allowed\n";
    crest_http_respond(x, 405, h, 2, body, sizeof body - 1);
}

/* N of /bytes/N and /delay/N: decimal digits only, no leading zero (but
 * "0"), at most max.  0 or -1. */
static int parse_count(crest_http_str_t s, uint64_t max, uint64_t *out) {
    if (s.len == 0 || s.len > 10 || (s.len > 1 && s.ptr[0] == '0'))
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* The body of /bytes/N: a repeating line of the alphabet.  The server
 * never asks for more than is left (content_length), so cap is the answer,
 * and 0 when nothing is left. */
static uint8_t pattern[CREST_HTTP_STREAM_CHUNK];

static void pattern_init(void) {
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = i % 64 == 63 ? '\n' : (uint8_t)('a' + i % 64 % 26);
}

static ssize_t bytes_body(crest_http_exchange_t *x, uint8_t *buf, size_t cap, void *ctx) {
    (void)x, (void)ctx;
    if (cap > sizeof pattern)
        cap = sizeof pattern;
    memcpy(buf, pattern, cap);
    return (ssize_t)cap;
}

static void route_bytes(crest_http_exchange_t *x, crest_http_str_t n) {
    uint64_t count;
    if (parse_count(n, BYTES_MAX, &count) < 0) {
        answer_text(x, 400, "400 Bad Request: /bytes/N wants N from 0 to 1073741824\n");
        return;
    }
    static const crest_http_header_t octets = {{"Content-Type", 12},
                                               {"application/octet-stream", 24}};
    int rc = crest_http_respond_stream(x, 200, &octets, 1, count, bytes_body, NULL);
    if (rc < 0)
        fprintf(stderr, "crest-http: /bytes/%" PRIu64 ": %s\n", count, crest_strerror(rc));
}

/* /delay/N: the exchange waits on a timer, as it would on a backend.  The
 * timer hangs off the exchange's data, so a cancel (the client gone, the
 * drain) frees it. */
struct delayed {
    crest_http_exchange_t *x;
    crest_timer_t *timer;
    uint64_t ms;
};

static void delay_free(struct delayed *d) {
    crest_http_exchange_set_data(d->x, NULL);
    crest_timer_destroy(d->timer); /* safe from its own callback */
    free(d);
}

static void delay_fire(crest_timer_t *t, void *arg) {
    (void)t;
    struct delayed *d = arg;
    char text[40];
    snprintf(text, sizeof text, "delayed %" PRIu64 " ms\n", d->ms);
    crest_http_exchange_t *x = d->x;
    delay_free(d);
    answer_text(x, 200, text);
}

static void on_cancel(crest_http_exchange_t *x, void *ctx) {
    (void)ctx;
    struct delayed *d = crest_http_exchange_get_data(x);
    if (d)
        delay_free(d);
}

static void route_delay(crest_http_exchange_t *x, crest_loop_t *loop, crest_http_str_t n) {
    uint64_t ms;
    if (parse_count(n, DELAY_MAX_MS, &ms) < 0) {
        answer_text(x, 400, "400 Bad Request: /delay/N wants N from 0 to 60000 (ms)\n");
        return;
    }
    struct delayed *d = calloc(1, sizeof *d);
    if (!d || crest_timer_create(loop, delay_fire, d, &d->timer) < 0) {
        free(d);
        answer_text(x, 503, "503 Service Unavailable: out of memory\n");
        return;
    }
    d->x = x;
    d->ms = ms;
    crest_http_exchange_set_data(x, d);
    crest_timer_start(d->timer, ms, 0);
}

static void route_echo(crest_http_exchange_t *x, const crest_http_request_t *req,
                       const uint8_t *body, size_t len) {
    crest_http_header_t ctype = {{"Content-Type", 12}, {"application/octet-stream", 24}};
    for (size_t i = 0; i < req->header_count; i++) {
        const crest_http_header_t *h = &req->headers[i];
        if (h->name.len == 12 && strncasecmp(h->name.ptr, "Content-Type", 12) == 0 &&
            h->value.len) {
            ctype.value = h->value;
            break;
        }
    }
    crest_http_respond(x, 200, &ctype, 1, body, len);
}

static void on_request(crest_http_exchange_t *x, const crest_http_request_t *req,
                       const uint8_t *body, size_t body_len, void *ctx) {
    crest_loop_t *loop = ctx;
    crest_http_str_t path = req->target;
    const char *q = memchr(path.ptr, '?', path.len);
    if (q)
        path.len = (size_t)(q - path.ptr);
    bool get = req->method == CREST_HTTP_GET || req->method == CREST_HTTP_HEAD;
    static const char bytes_prefix[] = "/bytes/";
    const size_t plen = sizeof bytes_prefix - 1;
    static const char delay_prefix[] = "/delay/";
    const size_t dlen = sizeof delay_prefix - 1;

    if (str_is(path, "/")) {
        if (get)
            answer_text(x, 200, "Hello, World!\n");
        else
            method_not_allowed(x, "GET, HEAD");
    } else if (str_is(path, "/echo")) {
        if (req->method == CREST_HTTP_POST)
            route_echo(x, req, body, body_len);
        else
            method_not_allowed(x, "POST");
    } else if (path.len >= plen && memcmp(path.ptr, bytes_prefix, plen) == 0) {
        if (get)
            route_bytes(x, (crest_http_str_t){path.ptr + plen, path.len - plen});
        else
            method_not_allowed(x, "GET, HEAD");
    } else if (path.len >= dlen && memcmp(path.ptr, delay_prefix, dlen) == 0) {
        if (get)
            route_delay(x, loop, (crest_http_str_t){path.ptr + dlen, path.len - dlen});
        else
            method_not_allowed(x, "GET, HEAD");
    } else {
        answer_text(x, 404, "404 Not Found\n");
    }
}

/* ------------------------------------------------------------------------
 * The skeleton's hooks
 * ------------------------------------------------------------------------ */

/* The listener's connection goes to this loop's server.  From on_open,
 * and from on_data in case a connection ever reached it first (nothing
 * consumed: the server parses those bytes). */
static void hand_over(crest_conn_t *c) {
    struct http_loop *hl = crest_loop_get_data(crest_conn_loop(c));
    int rc = crest_http_server_accept(hl->srv, c);
    if (rc < 0)
        crest_conn_fail(c, rc == -ENOMEM ? CREST_CLOSE_NO_MEMORY : CREST_CLOSE_PROTOCOL_ERROR,
                        "crest-http: handing the connection to the HTTP server: %s",
                        crest_strerror(rc));
}

static void http_open(crest_conn_t *c) {
    hand_over(c);
}

static ssize_t http_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data, (void)len;
    hand_over(c);
    return 0;
}

static int http_loop_init(server_proto_t *p, crest_loop_t *loop, unsigned index) {
    (void)p;
    struct http_loop *hl = &http.loops[index];
    int rc = crest_http_server_create(loop, &http.opts, on_request, loop, &hl->srv);
    if (rc < 0)
        return rc;
    crest_loop_set_data(loop, hl);
    return 0;
}

/* Every connection is closed by now: the server goes at once. */
static void http_loop_fini(server_proto_t *p, crest_loop_t *loop, unsigned index) {
    (void)p;
    struct http_loop *hl = &http.loops[index];
    crest_http_server_get_stats(hl->srv, &hl->final);
    crest_http_server_destroy(hl->srv);
    hl->srv = NULL;
    crest_loop_set_data(loop, NULL);
}

static void http_loop_counters(server_proto_t *p, crest_loop_t *loop, unsigned index,
                               uint64_t k[SERVER_PROTO_COUNTERS]) {
    (void)p, (void)loop;
    struct http_loop *hl = &http.loops[index];
    crest_http_server_stats_t st = hl->final;
    if (hl->srv) /* --stats while it runs */
        crest_http_server_get_stats(hl->srv, &st);
    k[K_REQUESTS] = st.requests;
    k[K_2XX] = st.responses[2];
    k[K_3XX] = st.responses[3];
    k[K_4XX] = st.responses[4];
    k[K_5XX] = st.responses[5];
    k[K_REFUSED] = st.refused;
    k[K_TIMEOUTS] = st.timeouts;
    k[K_CANCELLED] = st.cancelled;
}

static void http_report(const server_proto_t *p, const uint64_t k[SERVER_PROTO_COUNTERS]) {
    (void)p;
    printf("  http: %" PRIu64 " requests; responses by status: 2xx %" PRIu64 ", 3xx %" PRIu64
           ", 4xx %" PRIu64 ", 5xx %" PRIu64 "\n",
           k[K_REQUESTS], k[K_2XX], k[K_3XX], k[K_4XX], k[K_5XX]);
    printf("  http: %" PRIu64 " refused by the parser (answered, counted above), %" PRIu64
           " read timeouts, %" PRIu64 " cancelled\n",
           k[K_REFUSED], k[K_TIMEOUTS], k[K_CANCELLED]);
}

static void http_conn_opts(const server_proto_t *p, crest_conn_opts_t *o) {
    (void)p;
    crest_http_server_conn_opts(&http.opts, o);
}

/* ------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------ */

enum {
    OPT_KEEPALIVE_TIMEOUT = 256,
    OPT_HEADER_TIMEOUT,
    OPT_BODY_TIMEOUT,
    OPT_MAX_BODY,
    OPT_MAX_REQUEST_LINE,
    OPT_MAX_HEADER_BYTES,
    OPT_MAX_HEADERS,
    OPT_SERVER_NAME,
};

static const struct option http_options[] = {
    {"keepalive-timeout", required_argument, NULL, OPT_KEEPALIVE_TIMEOUT},
    {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
    {"body-timeout", required_argument, NULL, OPT_BODY_TIMEOUT},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"max-request-line", required_argument, NULL, OPT_MAX_REQUEST_LINE},
    {"max-header-bytes", required_argument, NULL, OPT_MAX_HEADER_BYTES},
    {"max-headers", required_argument, NULL, OPT_MAX_HEADERS},
    {"server-name", required_argument, NULL, OPT_SERVER_NAME},
    {NULL, 0, NULL, 0},
};

/* A timeout in seconds, more than 0 (the server takes 0 as its default). */
static int timeout_option(const char *name, const char *arg, uint32_t *out) {
    uint64_t ms;
    if (server_parse_seconds(name, arg, UINT32_MAX, &ms) < 0)
        return -1;
    if (ms == 0) {
        fprintf(stderr, "crest-http: --%s %s: must be more than 0\n", name, arg);
        return -1;
    }
    *out = (uint32_t)ms;
    return 0;
}

/* A header value: visible ASCII and spaces, or empty (no Server field). */
static int server_name_option(const char *arg) {
    for (const char *s = arg; *s; s++) {
        if (*s < 0x20 || *s > 0x7e) {
            fprintf(stderr, "crest-http: --server-name: printable ASCII only\n");
            return -1;
        }
    }
    http.opts.server = arg[0] ? arg : NULL;
    return 0;
}

static int http_option(server_proto_t *p, int id, const char *arg) {
    (void)p;
    crest_http_limits_t *l = &http.opts.limits;
    size_t v;
    switch (id) {
    case OPT_KEEPALIVE_TIMEOUT:
        return timeout_option("keepalive-timeout", arg, &http.opts.keepalive_timeout_ms);
    case OPT_HEADER_TIMEOUT:
        return timeout_option("header-timeout", arg, &http.opts.header_timeout_ms);
    case OPT_BODY_TIMEOUT:
        return timeout_option("body-timeout", arg, &http.opts.body_timeout_ms);
    case OPT_MAX_BODY:
        if (server_parse_size("max-body", arg, 1, (size_t)1 << 30, &v) < 0)
            return -1;
        l->max_body = v;
        return 0;
    case OPT_MAX_REQUEST_LINE:
        return server_parse_size("max-request-line", arg, 16, (size_t)1 << 20,
                                 &l->max_request_line);
    case OPT_MAX_HEADER_BYTES:
        return server_parse_size("max-header-bytes", arg, 64, (size_t)1 << 20,
                                 &l->max_header_bytes);
    case OPT_MAX_HEADERS:
        return server_parse_size("max-headers", arg, 1, CREST_HTTP_MAX_HEADERS, &l->max_headers);
    case OPT_SERVER_NAME:
        return server_name_option(arg);
    default:
        return -1;
    }
}

static int http_configured(server_proto_t *p) {
    http.loops = calloc(p->threads, sizeof *http.loops);
    if (!http.loops) {
        fprintf(stderr, "crest-http: out of memory\n");
        return -1;
    }
    const crest_http_server_opts_t *o = &http.opts;
    snprintf(http.timeouts, sizeof http.timeouts,
             "keep-alive %.3g s (idle between requests), header %.3g s, body %.3g s more",
             o->keepalive_timeout_ms / 1000.0, o->header_timeout_ms / 1000.0,
             o->body_timeout_ms / 1000.0);
    p->timeouts = http.timeouts;
    return 0;
}

static server_proto_t http_proto = {
    .name = "crest-http",
    .summary = "An HTTP/1.1 server: GET / says hello, GET /bytes/N sends N bytes, GET /delay/N\n"
               "answers N ms later, POST /echo sends the body back; HEAD for every GET;\n"
               "keep-alive and pipelining.",
    .default_port = 8080,
    .options = http_options,
    .options_help =
        "      --keepalive-timeout SECONDS  close a kept-alive connection idle this\n"
        "                          long between requests (default 75, nginx's)\n"
        "      --header-timeout SECONDS  close a connection whose request head is not\n"
        "                          whole this long after its first byte, without an\n"
        "                          answer (default 10; logged)\n"
        "      --body-timeout SECONDS  the body gets this much longer (default 30)\n"
        "      --max-body BYTES    largest request body: more is 413 (default 1M)\n"
        "      --max-request-line BYTES  longer is 414 (default 8K)\n"
        "      --max-header-bytes BYTES  a larger header section is 431 (default 16K)\n"
        "      --max-headers N     more header fields is 431 (default and most 64)\n"
        "      --server-name NAME  the Server header (default crest-http; '' for none)\n"
        "  The HTTP server sets every connection's timeouts from these: --idle-timeout,\n"
        "  --read-timeout (and --work, --work-once, --fd-leak) are refused.  Lines per\n"
        "  connection stop at \"open\": the HTTP server takes the connection then.\n",
    .parse_option = http_option,
    .configured = http_configured,
    .hands_over = true,
    .loop_init = http_loop_init,
    .loop_fini = http_loop_fini,
    .loop_counters = http_loop_counters,
    .report = http_report,
    .conn_opts = http_conn_opts,
    .framing = {.kind = CREST_FRAMING_RAW},
    .handler = {.on_open = http_open, .on_data = http_data, .name = "http-accept"},
    .message_unit = "reads",
};

int main(int argc, char **argv) {
    pattern_init();
    crest_http_server_opts_init(&http.opts);
    http.opts.server = "crest-http";
    http.opts.on_cancel = on_cancel;
    int code = server_main(argc, argv, &http_proto);
    free(http.loops);
    return code;
}
