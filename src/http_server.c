/* The HTTP/1.1 server: connections in, requests to on_request, responses
 * out (include/crest/http.h says what it promises).
 *
 * One connection, one exchange at a time.  Each request is parsed where it
 * was read: while its head is incomplete on_data keeps every byte (returns
 * 0), so the request, once whole, points into the connection's input and
 * on_request gets it without a copy; crest offers the same bytes again with
 * more after the next read.  The head parser is pure and starts from the
 * first byte each time, so the server calls it only when a line has ended
 * since the last try (or the buffer is full): a client that sends its head
 * a byte at a time costs one parse per line.  A body is waited for the
 * same way, counting bytes only.
 *
 * A response written later than on_request (an answer that waits for a
 * timer or another thread) pauses reading meanwhile: the requests behind
 * it stay in the input buffer, and are answered in order once reading
 * resumes.  A streamed response (crest_http_respond_stream()) is such an
 * answer: the exchange waits, reading paused, until its body has ended;
 * the pull loop is in http_stream.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crest/error.h"
#include "crest/http.h"
#include "crest/log.h"
#include "http_int.h"
#include "http_server_int.h"
#include "internal.h"

/* ---- options -------------------------------------------------------------- */

void crest_http_server_opts_init(crest_http_server_opts_t *opts) {
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->header_timeout_ms = CREST_HTTP_DEFAULT_HEADER_TIMEOUT_MS;
    opts->body_timeout_ms = CREST_HTTP_DEFAULT_BODY_TIMEOUT_MS;
    opts->keepalive_timeout_ms = CREST_HTTP_DEFAULT_KEEPALIVE_TIMEOUT_MS;
}

static void normalise(crest_http_server_opts_t *o) {
    crest_http_limits_t *l = &o->limits;
    if (!l->max_request_line)
        l->max_request_line = CREST_HTTP_DEFAULT_MAX_REQUEST_LINE;
    if (!l->max_header_bytes)
        l->max_header_bytes = CREST_HTTP_DEFAULT_MAX_HEADER_BYTES;
    if (!l->max_headers)
        l->max_headers = CREST_HTTP_DEFAULT_MAX_HEADERS;
    if (!l->max_body)
        l->max_body = CREST_HTTP_DEFAULT_MAX_BODY;
    if (!o->header_timeout_ms)
        o->header_timeout_ms = CREST_HTTP_DEFAULT_HEADER_TIMEOUT_MS;
    if (!o->body_timeout_ms)
        o->body_timeout_ms = CREST_HTTP_DEFAULT_BODY_TIMEOUT_MS;
    if (!o->keepalive_timeout_ms)
        o->keepalive_timeout_ms = CREST_HTTP_DEFAULT_KEEPALIVE_TIMEOUT_MS;
    if (!o->name)
        o->name = "http";
}

/* The input a connection may hold: a whole head and a whole body.  A
 * chunked body's encoding may take more than the data: twice max_body,
 * plus room for the chunk lines of a small body. */
static size_t max_input(const crest_http_server_opts_t *so, size_t head_max) {
    uint64_t body = so->limits.max_body;
    uint64_t total = (uint64_t)head_max + 2 * body + 65536;
    return total > (uint64_t)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)total;
}

/* What a connection of the server needs (so normalised). */
static void set_conn_opts(const crest_http_server_opts_t *so, size_t head_max,
                          crest_conn_opts_t *o) {
    o->framing.kind = CREST_FRAMING_RAW;
    o->max_input = max_input(so, head_max);
    o->read_timeout_ms = so->header_timeout_ms;
    o->idle_timeout_ms = so->keepalive_timeout_ms;
}

void crest_http_server_conn_opts(const crest_http_server_opts_t *opts, crest_conn_opts_t *o) {
    if (!o)
        return;
    crest_http_server_opts_t so;
    if (opts)
        so = *opts;
    else
        crest_http_server_opts_init(&so);
    normalise(&so);
    set_conn_opts(&so, crest_http_head_max(&so.limits), o);
}

/* ---- responses ------------------------------------------------------------ */

/* The whole Date line, "Date: Fri, 04 Dec 2026 19:10:20 GMT\r\n",
 * formatted once per second of the loop clock; its length. */
static size_t date_line(crest_http_server_t *s, const char **line) {
    uint64_t sec = crest_loop_now(s->loop) / 1000;
    if (s->date_len == 0 || sec != s->date_sec) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        s->date_len = strftime(s->date, sizeof s->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        s->date_sec = sec;
    }
    *line = s->date;
    return s->date_len;
}

struct head_writer {
    char *p;
    size_t len, cap;
    bool over;
};

static void hw_put(struct head_writer *w, const char *s, size_t n) {
    if (w->over || n > w->cap - w->len) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void hw_puts(struct head_writer *w, const char *s) {
    hw_put(w, s, strlen(s));
}

static bool has_crlf(crest_http_str_t s) {
    return s.len && (memchr(s.ptr, '\r', s.len) || memchr(s.ptr, '\n', s.len));
}

bool crest__http_bodyless_status(int status) {
    return status < 200 || status == 204 || status == 304;
}

#define HEAD_MAX 8192

/* What a response's head says.  length: the Content-Length, or
 * CREST_HTTP_LENGTH_UNKNOWN for a streamed body of unknown length
 * (chunked: Transfer-Encoding: chunked; else delimited by the close). */

/* Build the head in w (w->over if it does not fit). */
/* v in decimal at dst (20 bytes at most); its length.  The head is built
 * for every response: snprintf cost more than the rest of it together. */
static size_t put_u64(char *dst, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

static void build_head(crest_http_server_t *s, const struct resp_head *r, struct head_writer *w) {
    char line[64];
    const char *phrase = crest_http_reason_phrase(r->status);
    size_t plen = strlen(phrase);
    memcpy(line, "HTTP/1.1 ", 9);
    size_t n = 9 + put_u64(line + 9, (uint64_t)r->status); /* 100-999: 3 digits */
    line[n++] = ' ';
    hw_put(w, line, n);
    hw_put(w, phrase, plen);
    hw_put(w, "\r\n", 2);
    const char *date;
    n = date_line(s, &date);
    hw_put(w, date, n);
    if (s->opts.server) {
        hw_put(w, "Server: ", 8);
        hw_put(w, s->opts.server, s->server_len);
        hw_put(w, "\r\n", 2);
    }
    if (!crest__http_bodyless_status(r->status)) {
        if (r->length != CREST_HTTP_LENGTH_UNKNOWN) {
            memcpy(line, "Content-Length: ", 16);
            n = 16 + put_u64(line + 16, r->length);
            line[n++] = '\r';
            line[n++] = '\n';
            hw_put(w, line, n);
        } else if (r->chunked) {
            hw_puts(w, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (r->close_after)
        hw_puts(w, "Connection: close\r\n");
    else if (r->keep_alive_10)
        hw_puts(w, "Connection: keep-alive\r\n");
    for (size_t i = 0; i < r->header_count; i++) {
        hw_put(w, r->headers[i].name.ptr, r->headers[i].name.len);
        hw_put(w, ": ", 2);
        hw_put(w, r->headers[i].value.ptr, r->headers[i].value.len);
        hw_put(w, "\r\n", 2);
    }
    hw_put(w, "\r\n", 2);
}

/* Write a response's head, then body[0..body_len) unless head_only (or
 * the status has no body), on hc's connection; count it.  Returns 0 or
 * -errno (-EMSGSIZE: the head did not fit, nothing written). */
static int write_response(struct http_conn *hc, const struct resp_head *r, bool head_only,
                          const void *body, size_t body_len) {
    crest_http_server_t *s = hc->srv;
    char buf[HEAD_MAX];
    struct head_writer w = {buf, 0, sizeof buf, false};
    build_head(s, r, &w);
    if (w.over)
        return -EMSGSIZE;
    struct iovec iov[2] = {{buf, w.len}, {(void *)(uintptr_t)body, body_len}};
    int iovcnt = (head_only || crest__http_bodyless_status(r->status) || body_len == 0) ? 1 : 2;
    int rc = crest_conn_writev(hc->c, iov, iovcnt);
    unsigned cls = (unsigned)r->status / 100;
    s->stats.responses[cls <= 5 ? cls : 0]++;
    return rc < 0 ? rc : 0;
}

/* Refuse a request the parser (or the body scanner) rejected: its status,
 * why, and close. */
static void refuse(struct http_conn *hc, int status, const char *reason) {
    char body[256];
    int n = snprintf(body, sizeof body, "%d %s: %s\n", status, crest_http_reason_phrase(status),
                     reason ? reason : "refused");
    static const crest_http_header_t ctype = {{"Content-Type", 12}, {"text/plain", 10}};
    hc->srv->stats.refused++;
    size_t len = (size_t)n < sizeof body ? (size_t)n : sizeof body - 1;
    struct resp_head r = {.status = status, .headers = &ctype, .header_count = 1,
                          .length = len, .close_after = true};
    write_response(hc, &r, false, body, len);
    bool too_large = status == 413 || status == 414 || status == 431;
    crest_conn_fail(hc->c, too_large ? CREST_CLOSE_TOO_LARGE : CREST_CLOSE_PROTOCOL_ERROR,
                    "http %d %s: %s", status, crest_http_reason_phrase(status),
                    reason ? reason : "refused");
}

/* May x be answered with this status and these headers? */
bool crest__http_response_ok(const crest_http_exchange_t *x, int status,
                        const crest_http_header_t *headers, size_t header_count) {
    if (!x || !x->active || (x->hc->sflags & S_ON) || status < 100 || status > 999)
        return false;
    for (size_t i = 0; i < header_count; i++)
        if (has_crlf(headers[i].name) || has_crlf(headers[i].value) || !headers[i].name.len)
            return false;
    return true;
}

/* The exchange is over (its response written, or given up): the
 * connection reads the requests behind it, or closes if close. */
void crest__http_exchange_end(struct http_conn *hc, bool close) {
    crest_http_server_t *s = hc->srv;
    bool was_waiting = hc->state == HC_WAITING;
    hc->x.active = false;
    s->stats.pending--;
    if (close) {
        /* A client that asked for the close has sent all it will: no
         * linger, unless input is waiting (nginx's lingering_close on). */
        if (!hc->x.keep_alive)
            crest_conn_close_nolinger(hc->c);
        else
            crest_conn_close(hc->c);
    }
    if (was_waiting) {
        hc->state = HC_HEAD;
        if (crest_conn_state(hc->c) < CREST_CONN_CLOSING)
            crest_conn_resume(hc->c); /* the requests behind it */
    }
}

/* The head of x's response (and its 500 if the caller's did not fit). */
int crest__http_respond_head(crest_http_exchange_t *x, struct resp_head *r, bool head_only,
                        const void *body, size_t body_len) {
    struct http_conn *hc = x->hc;
    crest_loop_t *loop = hc->srv->loop;
    if (CREST__LIKELY(loop->ins.on) && hc->srv->counted) {
        uint64_t took = crest__clock_ns() - hc->dispatched_ns;
        crest__hist_record(&loop->ins.fig.http_response_time, took);
        if (!hc->in_request)
            crest__hist_record(&loop->ins.fig.http_deferred_time, took);
    }
    r->keep_alive_10 = x->http10 && x->keep_alive;
    int rc = write_response(hc, r, head_only, body, body_len);
    if (rc == -EMSGSIZE) { /* the caller's head did not fit: do not leave the client waiting */
        struct resp_head e = {.status = 500, .length = 0, .close_after = true};
        write_response(hc, &e, false, NULL, 0);
    }
    return rc;
}

static int respond(crest_http_exchange_t *x, int status, bool force_close,
                   const crest_http_header_t *headers, size_t header_count, const void *body,
                   size_t body_len) {
    if (!crest__http_response_ok(x, status, headers, header_count) || (body_len && !body))
        return -EINVAL;
    struct http_conn *hc = x->hc;
    bool close_after = force_close || !x->keep_alive || hc->peer_eof;
    struct resp_head r = {.status = status, .headers = headers, .header_count = header_count,
                          .length = body_len, .close_after = close_after};
    int rc = crest__http_respond_head(x, &r, x->method == CREST_HTTP_HEAD, body, body_len);
    crest__http_exchange_end(hc, rc < 0 || close_after);
    return rc;
}

int crest_http_respond(crest_http_exchange_t *x, int status, const crest_http_header_t *headers,
                       size_t header_count, const void *body, size_t body_len) {
    return respond(x, status, false, headers, header_count, body, body_len);
}

int crest_http_respond_close(crest_http_exchange_t *x, int status,
                             const crest_http_header_t *headers, size_t header_count,
                             const void *body, size_t body_len) {
    return respond(x, status, true, headers, header_count, body, body_len);
}

crest_conn_t *crest_http_exchange_conn(const crest_http_exchange_t *x) {
    return x ? x->hc->c : NULL;
}

void *crest_http_exchange_ctx(const crest_http_exchange_t *x) {
    return x ? x->hc->srv->ctx : NULL;
}

void crest_http_exchange_set_data(crest_http_exchange_t *x, void *data) {
    if (x)
        x->data = data;
}

void *crest_http_exchange_get_data(const crest_http_exchange_t *x) {
    return x ? x->data : NULL;
}

crest_http_method_t crest_http_exchange_method(const crest_http_exchange_t *x) {
    return x ? x->method : CREST_HTTP_OTHER;
}

/* ---- requests ------------------------------------------------------------- */

/* The read timeout counts from the request's first byte: the head gets
 * header_timeout_ms, head and body together that plus body_timeout_ms. */
static void extend_deadline(struct http_conn *hc, bool extend) {
    if (hc->deadline_extended == extend)
        return;
    crest_conn_opts_t o;
    if (crest_conn_get_opts(hc->c, &o) < 0)
        return;
    const crest_http_server_opts_t *so = &hc->srv->opts;
    uint64_t ms = (uint64_t)so->header_timeout_ms + (extend ? so->body_timeout_ms : 0);
    o.read_timeout_ms = ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
    if (crest_conn_set_opts(hc->c, &o) == 0)
        hc->deadline_extended = extend;
}

/* Hand a whole request to the application.  Returns false if the
 * connection should take no more input now (closing, or waiting). */
static bool dispatch(struct http_conn *hc, const crest_http_request_t *req, const uint8_t *body,
                     size_t body_len) {
    crest_http_server_t *s = hc->srv;
    crest_http_exchange_t *x = &hc->x;
    x->data = NULL;
    x->method = req->method;
    x->keep_alive = req->keep_alive;
    x->http10 = req->version_minor == 0;
    x->active = true;
    hc->dispatched_ns = s->loop->now_ns;
    s->stats.requests++;
    s->stats.pending++;
    static const uint8_t empty[1];
    hc->in_request = true;
    s->on_request(x, req, body ? body : empty, body_len, s->ctx);
    hc->in_request = false;
    if ((hc->sflags & S_ON) && crest_conn_state(hc->c) < CREST_CONN_CLOSING)
        crest__http_stream_pump(hc, true); /* the first bytes go with this read's replies */
    if (crest_conn_state(hc->c) >= CREST_CONN_CLOSING) {
        /* Closed by the application without a response (a stream cut
         * short is cancelled by on_close, as one the client cut). */
        if (x->active && !(hc->sflags & S_ON)) {
            x->active = false;
            s->stats.pending--;
        }
        return false;
    }
    if (x->active) {
        hc->state = HC_WAITING;
        crest_conn_pause(hc->c);
        return false;
    }
    return true;
}

/* Start of a new request: forget the last one's body state. */
static void next_request(struct http_conn *hc) {
    hc->state = HC_HEAD;
    hc->scanned = 0;
    hc->head_len = 0;
    hc->content_length = 0;
    hc->chunked = false;
    hc->expect_continue = false;
    hc->continue_sent = false;
    memset(&hc->u.chunk, 0, sizeof hc->u.chunk);
}

static void send_continue(struct http_conn *hc) {
    if (!hc->expect_continue || hc->continue_sent)
        return;
    hc->continue_sent = true;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    crest_conn_write(hc->c, cont, sizeof cont - 1);
}

/* Is the body of the request whose head is in data[0..head_len) whole?
 * 1 yes (*total: bytes of head and body), 0 not yet, -1 refused. */
static int body_ready(struct http_conn *hc, const uint8_t *data, size_t len, size_t *total) {
    if (hc->chunked) {
        const uint8_t *b = data + hc->head_len;
        int rc = crest_http_chunked_scan(b, len - hc->head_len, &hc->srv->opts.limits, &hc->u.chunk);
        if (rc < 0) {
            refuse(hc, hc->u.chunk.status ? hc->u.chunk.status : 400, hc->u.chunk.reason);
            return -1;
        }
        if (rc == 0)
            return 0;
        *total = hc->head_len + (size_t)hc->u.chunk.pos;
        return 1;
    }
    if ((uint64_t)(len - hc->head_len) < hc->content_length)
        return 0;
    *total = hc->head_len + (size_t)hc->content_length;
    return 1;
}

/* One request from data[0..len): returns the bytes it took (0: wait for
 * more, or stop). */
static ssize_t on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct http_conn *hc = crest_conn_get_data(c);
    if (!hc || hc->state == HC_WAITING)
        return 0;
    crest_http_server_t *s = hc->srv;
    crest_http_request_t req;
    size_t head_len = 0;
    bool parsed = false; /* req holds this buffer's head */
    if (hc->state == HC_HEAD) {
        /* Parse the first bytes (garbage is refused at once), then only
         * once a line has ended since the last try (the head ends with
         * one), or once the buffer holds the longest head. */
        if (hc->scanned && len < s->head_max) {
            size_t from = hc->scanned < len ? hc->scanned : 0;
            if (!memchr(data + from, '\n', len - from)) {
                hc->scanned = (uint32_t)len;
                return 0;
            }
        }
        int rc = crest_http_parse_head(data, len, &s->opts.limits, &req, &head_len);
        if (rc == -EAGAIN) {
            hc->scanned = (uint32_t)len;
            return 0;
        }
        if (rc < 0) {
            refuse(hc, req.status ? req.status : 400, rc == -EPROTO ? req.reason : "bad request");
            return 0;
        }
        hc->scanned = 0;
        parsed = true;
        if (!req.chunked && req.content_length == 0) {
            next_request(hc);
            dispatch(hc, &req, NULL, 0);
            return (ssize_t)head_len;
        }
        hc->state = HC_BODY;
        hc->head_len = (uint32_t)head_len;
        hc->content_length = req.content_length;
        hc->chunked = req.chunked;
        hc->expect_continue = req.expect_continue;
    }
    /* HC_BODY */
    size_t total = 0;
    int ready = body_ready(hc, data, len, &total);
    if (ready < 0)
        return 0;
    if (ready == 0) {
        send_continue(hc);
        extend_deadline(hc, true);
        return 0;
    }
    /* Whole.  A body that came after its head: parse the head again (it
     * is unchanged, and whole) to hand over pointers into this buffer. */
    if (!parsed && crest_http_parse_head(data, len, &s->opts.limits, &req, &head_len) != 0) {
        refuse(hc, 500, "request head changed"); /* cannot happen */
        return 0;
    }
    uint8_t *decoded = NULL;
    const uint8_t *body = data + head_len;
    size_t body_len = (size_t)req.content_length;
    if (hc->chunked) {
        body_len = (size_t)hc->u.chunk.size;
        if (body_len) {
            decoded = malloc(body_len);
            if (!decoded) {
                crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "http: no memory for a %zu-byte body",
                                body_len);
                return 0;
            }
            crest_http_chunked_copy(data + head_len, total - head_len, decoded);
        }
        body = decoded;
    }
    extend_deadline(hc, false);
    next_request(hc);
    dispatch(hc, &req, body, body_len);
    free(decoded);
    return (ssize_t)total;
}

/* ---- the connection's life ----------------------------------------------- */

/* hc is the server's now: linked, counted, the connection's data. */
static void attach(crest_http_server_t *s, crest_conn_t *c, struct http_conn *hc) {
    hc->c = c;
    hc->srv = s;
    hc->x.hc = hc;
    hc->next = s->conns;
    if (s->conns)
        s->conns->prev = hc;
    s->conns = hc;
    s->nconns++;
    s->stats.connections++;
    crest_conn_set_data(c, hc);
}

static void on_open(crest_conn_t *c) {
    struct http_conn *hc = calloc(1, sizeof *hc);
    if (!hc) {
        crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "http: no memory for a connection");
        return;
    }
    attach(crest_conn_handler_ctx(c), c, hc);
}

int crest_http_server_accept(crest_http_server_t *s, crest_conn_t *c) {
    if (!s || !c || s->destroyed || crest_conn_loop(c) != s->loop)
        return -EINVAL;
    crest_conn_opts_t o;
    int rc = crest_conn_get_opts(c, &o);
    if (rc < 0)
        return rc;
    if (crest_conn_state(c) >= CREST_CONN_CLOSING)
        return -ENOTCONN;
    crest_conn_opts_t want = o;
    set_conn_opts(&s->opts, s->head_max, &want);
    struct http_conn *hc = calloc(1, sizeof *hc);
    if (!hc)
        return -ENOMEM;
    /* Options the listener already gave stay shared (no per-connection
     * copy); the framing is compared by kind: RAW has no other field. */
    bool same = o.framing.kind == want.framing.kind && o.max_input == want.max_input &&
                o.read_timeout_ms == want.read_timeout_ms &&
                o.idle_timeout_ms == want.idle_timeout_ms;
    rc = same ? crest_conn_set_handler(c, &s->handler, s)
              : crest_conn_upgrade(c, &s->handler, s, &want);
    if (rc < 0) {
        free(hc);
        return rc;
    }
    attach(s, c, hc);
    return 0;
}

static void on_eof(crest_conn_t *c) {
    struct http_conn *hc = crest_conn_get_data(c);
    /* A client may shut down its side once its request is sent: answer
     * a request still being worked on, then close. */
    if (hc && hc->state == HC_WAITING) {
        hc->peer_eof = true;
        return;
    }
    crest_conn_close(c);
}

/* A stream's output has all left: it may go on (unless it waits for its
 * body, or was cut). */
static void on_flushed(crest_conn_t *c) {
    struct http_conn *hc = crest_conn_get_data(c);
    if (!hc || (hc->sflags & (S_ON | S_WAIT)) != S_ON)
        return;
    crest__http_stream_unready(hc); /* it goes on now, not next iteration */
    crest__http_stream_pump(hc, false);
}

/* Counters add up; the gauge (pending) is what is open now, so a freed
 * server, which has none, adds nothing to it. */
static void stats_add(crest_http_server_stats_t *sum, const crest_http_server_stats_t *s) {
    sum->connections += s->connections;
    sum->requests += s->requests;
    for (size_t i = 0; i < sizeof s->responses / sizeof s->responses[0]; i++)
        sum->responses[i] += s->responses[i];
    sum->refused += s->refused;
    sum->timeouts += s->timeouts;
    sum->cancelled += s->cancelled;
    sum->pending += s->pending;
}

static void loop_unlink(crest_http_server_t *s) {
    if (!s->counted)
        return;
    crest_loop_t *loop = s->loop;
    crest_http_server_stats_t st = s->stats;
    st.pending = 0;
    stats_add(&loop->http_retired, &st);
    if (s->prev)
        s->prev->next = s->next;
    else
        loop->http_servers = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->counted = false;
}

unsigned crest_http_loop_stats(const crest_loop_t *loop, crest_http_server_stats_t *out) {
    if (!out)
        return 0;
    memset(out, 0, sizeof *out);
    if (!loop)
        return 0;
    *out = loop->http_retired;
    for (const crest_http_server_t *s = loop->http_servers; s; s = s->next)
        stats_add(out, &s->stats);
    return loop->http_servers_made;
}

void crest__http_server_free(crest_http_server_t *s) {
    loop_unlink(s);
    free(s->scratch);
    free(s->listeners);
    free(s);
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct http_conn *hc = crest_conn_get_data(c);
    if (!hc)
        return;
    crest_http_server_t *s = hc->srv;
    if (reason == CREST_CLOSE_READ_TIMEOUT) {
        /* A request begun and not finished in time: a slow or hostile
         * client (slowloris), worth a line, as the parser's refusals. */
        s->stats.timeouts++;
        char peer[CREST_ADDR_STRLEN];
        if (crest_conn_peer(c, peer, sizeof peer) < 0)
            snprintf(peer, sizeof peer, "?");
        crest_log(CREST_LOG_WARN,
                  "http: %s: request %s not whole within %" PRIu32 " ms: closed (read timeout)",
                  peer, hc->state == HC_BODY ? "body" : "head",
                  hc->state == HC_BODY ? s->opts.header_timeout_ms + s->opts.body_timeout_ms
                                       : s->opts.header_timeout_ms);
    }
    crest_conn_set_data(c, NULL);
    crest__http_stream_clear(hc); /* body is not called again */
    if (hc->x.active) {
        hc->x.active = false;
        s->stats.pending--;
        s->stats.cancelled++;
        if (s->opts.on_cancel)
            s->opts.on_cancel(&hc->x, s->ctx);
    }
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        s->conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    s->nconns--;
    free(hc);
    if (s->destroyed && s->nconns == 0 && !s->defer_pending)
        crest__http_server_free(s);
}

/* ---- the server ---------------------------------------------------------- */

/* counted: on the loop's list, in crest_http_loop_stats() (every server
 * but the admin endpoint's, whose traffic has its own families). */
static int server_create(crest_loop_t *loop, const crest_http_server_opts_t *opts,
                         crest_http_request_cb on_request, void *ctx, bool counted,
                         crest_http_server_t **out) {
    if (!loop || !on_request || !out)
        return -EINVAL;
    crest_http_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    if (opts)
        s->opts = *opts;
    else
        crest_http_server_opts_init(&s->opts);
    normalise(&s->opts);
    s->server_len = s->opts.server ? strlen(s->opts.server) : 0;
    s->head_max = crest_http_head_max(&s->opts.limits);
    if (s->head_max == 0) {
        free(s);
        return -EINVAL;
    }
    s->loop = loop;
    s->on_request = on_request;
    s->ctx = ctx;
    s->handler.on_open = on_open;
    s->handler.on_data = on_data;
    s->handler.on_eof = on_eof;
    s->handler.on_close = on_close;
    s->handler.on_flushed = on_flushed;
    s->handler.name = s->opts.name;
    if (counted) {
        s->counted = true;
        s->next = loop->http_servers;
        if (s->next)
            s->next->prev = s;
        loop->http_servers = s;
        loop->http_servers_made++;
    }
    *out = s;
    return 0;
}

int crest_http_server_create(crest_loop_t *loop, const crest_http_server_opts_t *opts,
                             crest_http_request_cb on_request, void *ctx,
                             crest_http_server_t **out) {
    return server_create(loop, opts, on_request, ctx, true, out);
}

int crest__http_server_create_uncounted(crest_loop_t *loop, const crest_http_server_opts_t *opts,
                                        crest_http_request_cb on_request, void *ctx,
                                        crest_http_server_t **out) {
    return server_create(loop, opts, on_request, ctx, false, out);
}

int crest_http_server_listen(crest_http_server_t *s, const char *addr,
                             const crest_listen_opts_t *lopts, crest_listener_t **lp) {
    if (!s || !addr || s->destroyed)
        return -EINVAL;
    crest_listen_opts_t o;
    if (lopts)
        o = *lopts;
    else
        crest_listen_opts_init(&o);
    set_conn_opts(&s->opts, s->head_max, &o.conn);
    crest_listener_t **v = realloc(s->listeners, (s->nlisteners + 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    s->listeners = v;
    crest_listener_t *l;
    int rc = crest_listen(s->loop, addr, &o, &s->handler, s, &l);
    if (rc < 0)
        return rc;
    s->listeners[s->nlisteners++] = l;
    if (lp)
        *lp = l;
    return 0;
}

void crest_http_server_destroy(crest_http_server_t *s) {
    if (!s || s->destroyed)
        return;
    s->destroyed = true;
    for (unsigned i = 0; i < s->nlisteners; i++)
        crest_listener_close(s->listeners[i]);
    s->nlisteners = 0;
    for (struct http_conn *hc = s->conns; hc; hc = hc->next)
        crest_conn_close(hc->c);
    if (s->nconns == 0 && !s->defer_pending) /* else the last of them frees it */
        crest__http_server_free(s);
}

void crest_http_server_get_stats(const crest_http_server_t *s, crest_http_server_stats_t *out) {
    if (!out)
        return;
    if (!s) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = s->stats;
}
