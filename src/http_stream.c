/* Streamed responses (crest_http_respond_stream(), http.h): the body is
 * pulled from the application's callback as the client takes it.  The
 * connection and exchange state are http_server.c's (http_server_int.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "crest/error.h"
#include "crest/http.h"
#include "http_server_int.h"
#include "internal.h"

/* ---- streamed responses ---------------------------------------------------
 *
 * The pull loop: fill the server's scratch buffer from the body callback,
 * write it, and go on while the socket takes everything (nothing left
 * queued) and the turn's budget lasts.  Output left queued stops it until
 * on_flushed; a spent turn, or crest_http_stream_resume(), puts the stream
 * on the server's ready list, served by one deferred stream_continue() per
 * iteration (a defer cannot be taken back: the list is what a closing
 * connection leaves, not the defer). */

static void stream_continue(crest_loop_t *loop, void *arg);

void crest__http_stream_unready(struct http_conn *hc) {
    if (!(hc->sflags & S_READY))
        return;
    crest_http_server_t *s = hc->srv;
    struct stream *st = &hc->u.st;
    if (st->rprev)
        st->rprev->u.st.rnext = st->rnext;
    else if (s->ready == hc)
        s->ready = st->rnext;
    else if (s->running == hc)
        s->running = st->rnext;
    if (st->rnext)
        st->rnext->u.st.rprev = st->rprev;
    st->rprev = st->rnext = NULL;
    hc->sflags &= (uint8_t)~S_READY;
}

/* Continue hc's stream on the next iteration. */
static void stream_later(struct http_conn *hc) {
    if (hc->sflags & S_READY)
        return;
    crest_http_server_t *s = hc->srv;
    if (!s->defer_pending) {
        int rc = crest_loop_defer(s->loop, stream_continue, s);
        if (rc < 0) { /* the stream cannot go on: on_close cancels it */
            crest_conn_fail(hc->c, rc == -ESHUTDOWN ? CREST_CLOSE_SHUTDOWN : CREST_CLOSE_NO_MEMORY,
                            "http: a streamed response cannot continue: %s", crest_strerror(rc));
            return;
        }
        s->defer_pending = true;
    }
    struct stream *st = &hc->u.st;
    st->rprev = NULL;
    st->rnext = s->ready;
    if (s->ready)
        s->ready->u.st.rprev = hc;
    s->ready = hc;
    hc->sflags |= S_READY;
}

/* The stream is no more (its end written, given up, or cancelled): the
 * room goes back to the body scanner. */
void crest__http_stream_clear(struct http_conn *hc) {
    crest__http_stream_unready(hc);
    hc->sflags = 0;
    memset(&hc->u, 0, sizeof hc->u);
}

/* The body's end: the last-chunk, then the exchange is over. */
static void stream_finish(struct http_conn *hc) {
    int rc = 0;
    if (hc->sflags & S_CHUNKED) {
        static const char last[] = "0\r\n\r\n";
        rc = crest_conn_write(hc->c, last, sizeof last - 1);
    }
    bool close = (hc->sflags & S_CLOSE) || hc->peer_eof || rc < 0;
    crest__http_stream_clear(hc);
    crest__http_exchange_end(hc, close);
}

/* The body failed (n < 0), ended short of its Content-Length (n == 0), or
 * said more than it was asked for: the client cannot be told in the
 * middle of a body, so the connection closes.  The exchange ends here,
 * without on_cancel: the application's own callback gave it up. */
static void stream_fail(struct http_conn *hc, ssize_t n, size_t cap) {
    if (n == 0)
        crest_conn_fail(hc->c, CREST_CLOSE_PROTOCOL_ERROR,
                        "http: streamed body ended %" PRIu64 " bytes short of its Content-Length",
                        hc->u.st.left);
    else if (n > 0)
        crest_conn_fail(hc->c, CREST_CLOSE_PROTOCOL_ERROR,
                        "http: streamed body returned %zd bytes, asked for %zu at most", n, cap);
    else
        crest_conn_fail(hc->c, CREST_CLOSE_PROTOCOL_ERROR, "http: streamed body failed: %s (%zd)",
                        crest_strerror((int)n), n);
    crest__http_stream_clear(hc);
    crest__http_exchange_end(hc, true);
}

/* One piece of the body: as is, or as a chunk (size line, data, CRLF). */
static int stream_write(struct http_conn *hc, const uint8_t *data, size_t n) {
    if (!(hc->sflags & S_CHUNKED))
        return crest_conn_write(hc->c, data, n);
    char line[24];
    int len = snprintf(line, sizeof line, "%zx\r\n", n);
    struct iovec iov[3] = {{line, (size_t)len}, {(void *)data, n}, {(void *)"\r\n", 2}};
    return crest_conn_writev(hc->c, iov, 3);
}

/* Ask the body for more while the socket takes it all and the turn lasts.
 * gathering: called from on_data, whose writes wait in the loop's gather
 * buffer until it returns and may then leave whole, with no on_flushed to
 * say so: look again on the next iteration. */
void crest__http_stream_pump(struct http_conn *hc, bool gathering) {
    crest_http_server_t *s = hc->srv;
    crest_conn_t *c = hc->c;
    struct stream *st = &hc->u.st;
    size_t turn = 0;
    while ((hc->sflags & (S_ON | S_WAIT)) == S_ON) {
        if (crest_conn_state(c) >= CREST_CONN_CLOSING)
            return; /* on_close cancels the exchange */
        if (crest_conn_output_bytes(c) > 0) { /* the client reads slower: on_flushed */
            if (gathering)
                stream_later(hc);
            return;
        }
        if (turn >= CREST_HTTP_STREAM_TURN) { /* let the loop serve the others */
            stream_later(hc);
            return;
        }
        if (!s->scratch && !(s->scratch = malloc(CREST_HTTP_STREAM_CHUNK))) {
            crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "http: no memory for a streamed body");
            return;
        }
        size_t cap = CREST_HTTP_STREAM_CHUNK;
        if (st->left < cap)
            cap = (size_t)st->left;
        hc->sflags &= (uint8_t)~S_RESUMED;
        ssize_t n = st->body(&hc->x, s->scratch, cap, st->ctx);
        if (!(hc->sflags & S_ON) || crest_conn_state(c) >= CREST_CONN_CLOSING)
            return; /* the body closed its connection (or the server) */
        if (n == CREST_HTTP_BODY_WAIT) {
            if (hc->sflags & S_RESUMED) /* resumed before it said wait */
                stream_later(hc);
            else
                hc->sflags |= S_WAIT;
            return;
        }
        if (n == 0 && st->left == CREST_HTTP_LENGTH_UNKNOWN) {
            stream_finish(hc);
            return;
        }
        if (n <= 0 || (size_t)n > cap) {
            stream_fail(hc, n, cap);
            return;
        }
        int rc = stream_write(hc, s->scratch, (size_t)n);
        if (rc < 0) {
            if (crest_conn_state(c) < CREST_CONN_CLOSING) /* refused, not failed */
                crest_conn_fail(c, CREST_CLOSE_IO_ERROR, "http: streamed body: write: %s",
                                crest_strerror(rc));
            return; /* on_close cancels the exchange */
        }
        turn += (size_t)n;
        if (st->left != CREST_HTTP_LENGTH_UNKNOWN && (st->left -= (uint64_t)n) == 0) {
            stream_finish(hc);
            return;
        }
    }
}

/* The deferred continuation: one turn for each stream that was ready. */
static void stream_continue(crest_loop_t *loop, void *arg) {
    (void)loop;
    crest_http_server_t *s = arg;
    s->defer_pending = false;
    s->running = s->ready; /* those made ready now wait for the next */
    s->ready = NULL;
    while (s->running) {
        struct http_conn *hc = s->running;
        crest__http_stream_unready(hc);
        crest__http_stream_pump(hc, false);
    }
    if (s->destroyed && s->nconns == 0)
        crest__http_server_free(s);
}

int crest_http_respond_stream(crest_http_exchange_t *x, int status,
                              const crest_http_header_t *headers, size_t header_count,
                              uint64_t content_length, crest_http_body_cb body, void *ctx) {
    if (!body || !crest__http_response_ok(x, status, headers, header_count))
        return -EINVAL;
    struct http_conn *hc = x->hc;
    bool no_body = x->method == CREST_HTTP_HEAD || crest__http_bodyless_status(status) || content_length == 0;
    bool unknown = content_length == CREST_HTTP_LENGTH_UNKNOWN;
    bool chunked = unknown && !x->http10;
    /* HTTP/1.0 has no chunks: the close delimits the body. */
    bool close_after = !x->keep_alive || hc->peer_eof || (unknown && !chunked && !no_body);
    struct resp_head r = {.status = status, .headers = headers, .header_count = header_count,
                          .length = content_length, .chunked = chunked,
                          .close_after = close_after};
    int rc = crest__http_respond_head(x, &r, true, NULL, 0);
    if (rc < 0 || no_body) {
        crest__http_exchange_end(hc, rc < 0 || close_after);
        return rc;
    }
    hc->sflags = (uint8_t)(S_ON | (chunked ? S_CHUNKED : 0) | (close_after ? S_CLOSE : 0));
    hc->u.st = (struct stream){.body = body, .ctx = ctx, .left = content_length};
    /* Inside on_request, dispatch() pumps once it returns; later, the
     * next iteration does (body never runs inside this call). */
    if (hc->state == HC_WAITING)
        stream_later(hc);
    return 0;
}

int crest_http_stream_resume(crest_http_exchange_t *x) {
    if (!x || !x->active || !(x->hc->sflags & S_ON))
        return -EINVAL;
    struct http_conn *hc = x->hc;
    if (hc->sflags & S_WAIT) {
        hc->sflags &= (uint8_t)~S_WAIT;
        stream_later(hc);
    } else {
        hc->sflags |= S_RESUMED; /* a wait said after this asks again */
    }
    return 0;
}
