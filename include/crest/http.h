/* crest: an HTTP/1.1 server: the request-head parser, the chunked-body
 * scanner, the server that drives them on crest connections, and the
 * response writer.  The admin endpoint (admin.h) is built on it.
 *
 * crest_http_parse_head() is pure and incremental: it looks only at the
 * caller's bytes, keeps no state between calls, allocates nothing and
 * copies nothing.  A connection calls it again after every read with
 * everything it has buffered; the request it fills points into that
 * buffer, so the buffer must stay unchanged while the request is used.
 * Thread: any thread (no shared state); no callback runs inside it.
 *
 * Answers are the same however the bytes were split across reads: on any
 * prefix of an input the parser says -EAGAIN or exactly what it says on
 * the whole input.  Every byte is checked left to right in one pass, and
 * the first byte that proves an error decides it (a line that is both too
 * long and malformed gets the status of whichever the bytes show first).
 *
 * The rules (RFC 9112 unless said):
 *   - request line: METHOD SP request-target SP HTTP-version, ending in
 *     CRLF or a bare LF (accepted, as nginx and RFC 9112 2.2 allow); a CR
 *     not followed by LF is 400.  Empty lines before the request line are
 *     skipped (RFC 9112 2.2; clients send a stray CRLF after a body) and
 *     count against max_request_line.  The method is a token (any token is
 *     accepted: the server decides 405 or 501; it is case-sensitive); the
 *     target is 1 or more visible ASCII characters (0x21-0x7E); the
 *     version is exactly "HTTP/1.0" or "HTTP/1.1", any other
 *     "HTTP/<digit>.<digit>" (the HTTP/2 preface "PRI * HTTP/2.0" too) is
 *     505, anything else 400.  A line longer than max_request_line (its
 *     ending excluded) is 414.
 *   - header fields: name ":" OWS value OWS, ending in CRLF or LF.  Names
 *     are tokens, matched case-insensitively; whitespace between the name
 *     and the colon is 400 (RFC 9112 5.1); a line starting with SP or HTAB
 *     (obs-fold, or whitespace after the request line) is 400; OWS around
 *     the value is trimmed; a value may hold VCHAR, obs-text (0x80-0xFF),
 *     SP and HTAB inside, any other control byte is 400.  A header section
 *     (all field lines and the empty line that ends it, line endings
 *     included) over max_header_bytes, or more than max_headers fields, is
 *     431.
 *   - framing: Content-Length is 1*DIGIT; several Content-Length fields or
 *     a comma list are accepted when every value is the same (RFC 9110
 *     8.6), different values or a malformed or overflowing one are 400.
 *     Content-Length and Transfer-Encoding together are 400 (request
 *     smuggling, RFC 9112 6.1), as is Transfer-Encoding in an HTTP/1.0
 *     request (6.1) or more than one Transfer-Encoding field; a
 *     Transfer-Encoding other than exactly "chunked" (case-insensitive) is
 *     501.  A Content-Length over max_body is 413 (a chunked body is
 *     limited by its decoder, not here).
 *   - HTTP/1.1 needs exactly one Host field (RFC 9112 3.2): none or
 *     several is 400.
 *   - Connection is a comma list of tokens, case-insensitive, over all
 *     Connection fields: HTTP/1.1 keeps the connection open unless "close"
 *     is listed; HTTP/1.0 only when "keep-alive" is and "close" is not.
 *   - Expect: "100-continue" (case-insensitive) sets expect_continue in an
 *     HTTP/1.1 request; HTTP/1.0 ignores it (RFC 9110 10.1.1); any other
 *     expectation is 417.
 */
#ifndef CREST_HTTP_H
#define CREST_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "listener.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most header fields a request can hold (the size of headers[]). */
#define CREST_HTTP_MAX_HEADERS 64u

/* Defaults for a limit left 0. */
#define CREST_HTTP_DEFAULT_MAX_REQUEST_LINE 8192u
#define CREST_HTTP_DEFAULT_MAX_HEADER_BYTES 16384u
#define CREST_HTTP_DEFAULT_MAX_HEADERS CREST_HTTP_MAX_HEADERS
#define CREST_HTTP_DEFAULT_MAX_BODY (1024u * 1024u)

typedef struct crest_http_limits {
    size_t max_request_line; /* bytes, line ending excluded; 0: 8 KiB; over: 414 */
    size_t max_header_bytes; /* header section, line endings included (and a
                                chunked body's trailer section); 0: 16 KiB;
                                over: 431 */
    size_t max_headers;      /* fields; 0: 64; over: 431; above 64: -EINVAL */
    uint64_t max_body;       /* Content-Length, or a chunked body's decoded
                                size; 0: 1 MiB; over: 413 */
} crest_http_limits_t;

typedef enum crest_http_method {
    CREST_HTTP_OTHER = 0, /* any other token: see method_token */
    CREST_HTTP_GET,
    CREST_HTTP_HEAD,
    CREST_HTTP_POST,
    CREST_HTTP_PUT,
    CREST_HTTP_DELETE,
    CREST_HTTP_CONNECT,
    CREST_HTTP_OPTIONS,
    CREST_HTTP_TRACE,
    CREST_HTTP_PATCH
} crest_http_method_t;

/* The statuses the parser answers with (crest_http_request_t.status). */
typedef enum crest_http_status {
    CREST_HTTP_400 = 400, /* Bad Request: syntax, framing conflicts, Host */
    CREST_HTTP_413 = 413, /* Content Too Large */
    CREST_HTTP_414 = 414, /* URI Too Long: the request line */
    CREST_HTTP_417 = 417, /* Expectation Failed */
    CREST_HTTP_431 = 431, /* Request Header Fields Too Large (also trailers) */
    CREST_HTTP_501 = 501, /* Not Implemented: a transfer coding */
    CREST_HTTP_505 = 505  /* HTTP Version Not Supported */
} crest_http_status_t;

/* Bytes inside the caller's buffer (not NUL-terminated). */
typedef struct crest_http_str {
    const char *ptr;
    size_t len;
} crest_http_str_t;

typedef struct crest_http_header {
    crest_http_str_t name;  /* as sent (compare case-insensitively) */
    crest_http_str_t value; /* OWS trimmed; may be empty */
} crest_http_header_t;

typedef struct crest_http_request {
    crest_http_method_t method;
    crest_http_str_t method_token; /* the method as sent */
    crest_http_str_t target;       /* the request-target as sent */
    int version_minor;             /* 0 or 1 (HTTP/1.x) */
    size_t header_count;
    crest_http_header_t headers[CREST_HTTP_MAX_HEADERS];
    crest_http_str_t host;   /* the Host value; len 0 when absent (HTTP/1.0) */
    uint64_t content_length; /* 0 when absent */
    bool has_content_length;
    bool chunked;         /* Transfer-Encoding: chunked */
    bool keep_alive;      /* the connection may carry another request */
    bool expect_continue; /* Expect: 100-continue (HTTP/1.1) */
    /* On -EPROTO: the status to answer and why (a static string, for the
     * log); the connection should then be closed after the answer.
     * 0 and NULL otherwise. */
    int status;
    const char *reason;
} crest_http_request_t;

/* Parse the request head at the start of buf[0..len).
 *
 * lim: NULL for the defaults.  Returns
 *   0        the head is complete: *out is filled, *consumed is the bytes
 *            of the head (leading empty lines, request line, fields and the
 *            empty line); the body or the next pipelined request starts at
 *            buf + *consumed;
 *   -EAGAIN  more bytes are needed (only while len is below
 *            crest_http_head_max(lim));
 *   -EPROTO  the request is refused: out->status and out->reason say why;
 *            *consumed is 0;
 *   -EINVAL  out or consumed NULL, buf NULL with len > 0, or a limit out of
 *            range (max_headers above CREST_HTTP_MAX_HEADERS).
 * On -EAGAIN and -EINVAL the rest of *out is unspecified. */
int crest_http_parse_head(const uint8_t *buf, size_t len, const crest_http_limits_t *lim,
                          crest_http_request_t *out, size_t *consumed);

/* One more than the longest head these limits allow (NULL: the defaults):
 * crest_http_parse_head() answers -EAGAIN only while len is below this, so
 * a reader whose buffer holds this many bytes always gets an answer.  0 for
 * limits crest_http_parse_head() rejects. */
size_t crest_http_head_max(const crest_http_limits_t *lim);

/* The reason phrase for a status ("Bad Request"), "" when unknown. */
const char *crest_http_reason_phrase(int status);


/* ---- chunked request bodies ----------------------------------------------
 *
 * A chunked body (RFC 9112 7.1) is scanned by crest_http_chunked_scan(),
 * then decoded by crest_http_chunked_copy().  The scanner is incremental:
 * it keeps its place in a crest_http_chunked_t, and each call reads only
 * the bytes that arrived since the last one, so a body that comes a byte
 * at a time costs O(its length) over all calls, not one rescan per read.
 * Like the head parser, it answers the same however the bytes were split:
 * feeding a body in any pieces (a byte at a time, or all at once) gives
 * the same return, pos, size, status and reason.  Every byte is checked
 * left to right, limits first, and the first byte that proves an error
 * decides it.  Thread: any (no shared state); no callback runs inside.
 *
 * The rules (RFC 9112 7.1 unless said; strict, like llhttp without its
 * lenient flags):
 *   - a chunk: chunk-size [chunk-ext] line-end, chunk-size bytes of data,
 *     line-end.  line-end is CRLF or a bare LF (as on every other line of
 *     the request); a CR not followed by LF is 400.
 *   - chunk-size is 1 to 15 hex digits, either case (a 16th digit is 400,
 *     leading zeros included, unless the digits before it passed max_body
 *     already: 413; 15 digits keep the sum far from overflow).
 *     Nothing else may stand before or after it, except the whitespace
 *     (SP or HTAB, BWS) before a ';' that the grammar allows.
 *   - chunk-ext: *( BWS ";" BWS name [ BWS "=" BWS value ] ), name a
 *     token, value a token or a quoted-string (RFC 9110 5.6.4); checked,
 *     then skipped.  The size line, extensions included and its line-end
 *     excluded, is at most CREST_HTTP_MAX_CHUNK_LINE bytes: 400 beyond.
 *   - the data must be followed by its line-end: anything else is 400 (a
 *     chunk-size that lies is a smuggling attempt).
 *   - the last chunk: chunk-size 0 (any number of zeros, up to 15) with
 *     optional extensions, then the trailer section: field lines checked
 *     like header fields (a token name, ':' with no whitespace before it,
 *     a value without control bytes other than HTAB; a line starting with
 *     SP or HTAB is 400), read and dropped, then the empty line.  The
 *     section (its field lines and the empty line, line endings included)
 *     over max_header_bytes is 431, as the header section is.
 *   - the decoded size (the sum of the chunk sizes) over max_body is 413,
 *     decided at the hex digit that proves it, before the data arrives.
 *
 * The scanner stops at the end of the empty line that ends the trailer
 * section: bytes after it (the next pipelined request) are not read. */

/* The longest chunk-size line, chunk extensions included, line-end
 * excluded. */
#define CREST_HTTP_MAX_CHUNK_LINE 1024u

/* Where a scan stands.  Zero it before the first call; read pos, size,
 * status and reason; the rest is the scanner's. */
typedef struct crest_http_chunked {
    uint64_t pos;       /* bytes of the encoded body scanned; once
                           scan returned 1: the encoded length */
    uint64_t size;      /* decoded bytes scanned so far; once scan returned
                           1: the decoded length (at most max_body) */
    uint64_t left;      /* in a size line: the size so far; in data: the
                           bytes still due */
    uint64_t line;      /* bytes of the current size line */
    uint64_t trailer;   /* bytes of the trailer section so far */
    int state;          /* where the scan stands (internal) */
    int status;         /* on -EPROTO: 400, 413 or 431; 0 otherwise */
    const char *reason; /* ... and why (a static string, for the log) */
} crest_http_chunked_t;

/* Scan the encoded body at buf[0..len): buf starts at the body's first
 * byte and holds every byte given to earlier calls on *st (it may have
 * moved, but bytes before st->pos are not read again); only
 * buf[st->pos..len) is new.  lim: NULL for the defaults; max_body and
 * max_header_bytes are the ones used.  Returns
 *   1        the body is whole: st->pos is its encoded length (the next
 *            request starts at buf + st->pos), st->size the decoded one;
 *   0        more bytes are needed; all of buf[0..len) was scanned
 *            (st->pos == len);
 *   -EPROTO  the body is refused: st->status (400, 413, 431) and
 *            st->reason say why, st->pos is the offset of the byte that
 *            proved it; the connection should be closed after the answer;
 *   -EINVAL  st NULL, buf NULL with len > 0, len below st->pos, *st not
 *            from this scanner, or limits crest_http_parse_head() rejects.
 * Once it returned 1 or -EPROTO, later calls on *st return the same and
 * change nothing. */
int crest_http_chunked_scan(const uint8_t *buf, size_t len, const crest_http_limits_t *lim,
                            crest_http_chunked_t *st);

/* Copy the decoded data of a whole body into dst: buf[0..len) must hold a
 * body that crest_http_chunked_scan() answered 1 on (len may run past
 * it), and dst must have room for that scan's st->size bytes (never more
 * than len).  dst may be buf itself (decoding in place: the data only
 * moves toward the start).  Reads nothing past buf + len, whatever buf
 * holds.  Returns the bytes copied, st->size for a scanned body; 0 for a
 * NULL buf or dst. */
size_t crest_http_chunked_copy(const uint8_t *buf, size_t len, uint8_t *dst);

/* ---- the server ----------------------------------------------------------
 *
 * A crest_http_server_t turns connections into requests and responses: it
 * listens (crest_http_server_listen()), parses each request with the rules
 * above, reads its body (Content-Length, or chunked, decoded), and calls
 * on_request once per request with the head and the whole body.  The
 * application answers with crest_http_respond(), inside on_request or
 * later (an answer that needs a timer, a post to another thread, a walk
 * over many iterations).
 *
 * Keep-alive: HTTP/1.1 keeps the connection by default; "Connection:
 * close" or HTTP/1.0 without "Connection: keep-alive" closes it after the
 * response (which then says "Connection: close").  Pipelined requests are
 * answered in order: the server reads the next one only once the current
 * one has its response; while it waits, reading is paused and the
 * requests already read wait in the input buffer.  The responses to
 * requests that arrived in one read go out with one send.
 *
 * Expect: 100-continue: when the head says so and the body is not yet
 * there, the server writes "HTTP/1.1 100 Continue" before reading it (a
 * request it refuses, 413 say, gets its final status instead).
 *
 * Refusals: a request the parser refuses is answered with its status
 * (400, 413, 414, 417, 431, 501, 505; a body that says why), "Connection:
 * close", and the connection closed gracefully with reason PROTOCOL_ERROR
 * (TOO_LARGE for 413, 414 and 431) and a warning in crest's log naming
 * the peer, the status and the reason.  Timeouts close without an answer
 * (like nginx): a head not whole header_timeout_ms after its first byte, a
 * body not whole header_timeout_ms + body_timeout_ms after it (reason
 * READ_TIMEOUT), and a kept-alive connection idle for keepalive_timeout_ms
 * (IDLE_TIMEOUT).  A slow client that sends a byte at a time costs one
 * parse per line, not one per byte.
 *
 * Memory: the request is parsed where it was read; on_request gets
 * pointers into the connection's input (no copy) when the request sits
 * whole in it, which is the rule: the input buffer holds up to
 * crest_http_head_max() + max_body bytes.  A chunked body is the
 * exception: it is decoded into one allocation per request.  Per
 * connection the server keeps about 100 bytes.
 *
 * Threads: a server belongs to its loop's thread; every call below is for
 * that thread, except where said.  Callbacks (on_request, on_cancel) run
 * from the loop, never inside a crest call. */
typedef struct crest_http_server crest_http_server_t;
/* One request and its response to come.  Valid from on_request until the
 * response is written (crest_http_respond()) or on_cancel returns. */
typedef struct crest_http_exchange crest_http_exchange_t;

/* A request.  req and body point into the connection's input and are valid
 * only during the call: copy what an answer given later needs.  body is
 * the decoded body (body_len 0 and body non-NULL when there is none). */
typedef void (*crest_http_request_cb)(crest_http_exchange_t *x, const crest_http_request_t *req,
                                      const uint8_t *body, size_t body_len, void *ctx);
/* The connection of an exchange still waiting for its response, or still
 * streaming it, closed (a reset, a timeout, the server destroyed): stop
 * what would answer it.
 * x is invalid once this returns; crest_http_respond() must not be called
 * from it.  A client's FIN alone does not cancel: it reads as a
 * half-close (the client may still wait for the answer), so the answer
 * is written, and the connection closes after it.  (keepalive_timeout_ms
 * counts while an answer is prepared: an exchange that waits longer is
 * cancelled.) */
typedef void (*crest_http_cancel_cb)(crest_http_exchange_t *x, void *ctx);

typedef struct crest_http_server_opts {
    crest_http_limits_t limits;    /* zeros: the defaults (above) */
    uint32_t header_timeout_ms;    /* 0: 10 s (CREST_HTTP_DEFAULT_HEADER_TIMEOUT_MS) */
    uint32_t body_timeout_ms;      /* 0: 30 s */
    uint32_t keepalive_timeout_ms; /* 0: 75 s (nginx's keepalive_timeout) */
    const char *server;            /* "Server:" value (static); NULL: none */
    const char *name;              /* the handler's name in insight and
                                      /debug pages; NULL: "http" */
    crest_http_cancel_cb on_cancel; /* may be NULL if every response is
                                      written inside on_request */
} crest_http_server_opts_t;

#define CREST_HTTP_DEFAULT_HEADER_TIMEOUT_MS 10000u
#define CREST_HTTP_DEFAULT_BODY_TIMEOUT_MS 30000u
#define CREST_HTTP_DEFAULT_KEEPALIVE_TIMEOUT_MS 75000u

/* Every field zero but the timeouts' defaults filled in. */
void crest_http_server_opts_init(crest_http_server_opts_t *opts);

/* Make a server on loop.  opts may be NULL; it is copied.  0 and *out, or
 * -EINVAL (on_request NULL, limits out of range), -ENOMEM. */
int crest_http_server_create(crest_loop_t *loop, const crest_http_server_opts_t *opts,
                             crest_http_request_cb on_request, void *ctx,
                             crest_http_server_t **out);

/* Listen on addr for this server (listener.h).  lopts may be NULL; its
 * conn options are taken, except the ones the server sets: framing RAW,
 * max_input (the head and body limits), read_timeout_ms and
 * idle_timeout_ms (the timeouts above).  The listener is the server's: it
 * closes with it.  0 and *lp if lp is not NULL, or crest_listen()'s
 * -errno. */
int crest_http_server_listen(crest_http_server_t *s, const char *addr,
                             const crest_listen_opts_t *lopts, crest_listener_t **lp);

/* Close the server's listeners and its connections (gracefully: responses
 * already written are flushed; exchanges still waiting get on_cancel,
 * from the loop, as their connections close), and free the server once
 * the last connection has closed.  No callback runs inside the call. */
void crest_http_server_destroy(crest_http_server_t *s);

typedef struct crest_http_server_stats {
    uint64_t connections;          /* accepted */
    uint64_t requests;             /* handed to on_request */
    uint64_t responses[6];         /* by class: [1] 1xx ... [5] 5xx, [0] other */
    uint64_t refused;              /* requests refused by the parser */
    uint64_t timeouts;             /* connections closed with a request
                                      not whole in time (READ_TIMEOUT;
                                      each logged) */
    uint64_t cancelled;            /* exchanges cancelled (on_cancel) */
    uint64_t pending;              /* exchanges waiting for a response now */
} crest_http_server_stats_t;

void crest_http_server_get_stats(const crest_http_server_t *s, crest_http_server_stats_t *out);

/* The sum over every HTTP server of loop, those already freed included
 * (their counters stay in it; pending is the live servers' only).  The
 * admin endpoint's own server is not among them: its traffic has its own
 * figures (crest_admin_* in /metrics).  Returns how many servers were
 * created on the loop: 0 means none ever was, and *out is zeros.  On the
 * loop's thread; no callback runs inside.  These are the figures of the
 * crest_http_* families of /metrics (admin.h). */
unsigned crest_http_loop_stats(const crest_loop_t *loop, crest_http_server_stats_t *out);

/* ---- responses ----------------------------------------------------------- */

/* Write the response to x: the status line, Date, Server (if set),
 * Content-Length, "Connection: close" when the connection will close, the
 * caller's headers (names and values as given; they must not contain CR or
 * LF), an empty line, then body unless the request was HEAD (or the status
 * is 1xx, 204 or 304).  The connection then reads the next request, or
 * closes after the response if the request or the status (400 and up
 * from the parser) asked for it.  x is invalid after the call, whatever it
 * returns.  From on_request or later, on the loop's thread; no callback
 * runs inside.  0, -EINVAL (a NULL x, a status outside 100-999, a header
 * with CR or LF), -EMSGSIZE (the head over 8 KiB), or the write's -errno
 * (the connection is then closed). */
int crest_http_respond(crest_http_exchange_t *x, int status, const crest_http_header_t *headers,
                       size_t header_count, const void *body, size_t body_len);

/* The same, closing the connection after the response whatever the
 * request said. */
int crest_http_respond_close(crest_http_exchange_t *x, int status,
                             const crest_http_header_t *headers, size_t header_count,
                             const void *body, size_t body_len);

/* ---- streamed responses ---------------------------------------------------
 *
 * A body too big to hold, or made as it goes (a file, a generator, a
 * proxy), is pulled from the application as the connection can take it:
 * the server calls body(x, buf, cap, ctx) for up to cap bytes (cap <=
 * CREST_HTTP_STREAM_CHUNK), writes what it returns, and asks again while
 * the socket takes it.  It stops asking when output queues up (the
 * client reads slower than it is written to) and asks again once the
 * queue has drained (on_flushed), so a stream keeps at most about
 * CREST_HTTP_STREAM_CHUNK bytes queued, however long it is.  It also
 * yields after CREST_HTTP_STREAM_TURN bytes in one callback (continuing on
 * the next iteration), so a fast client of a long stream does not keep
 * the loop from its other connections.
 *
 * body returns:
 *   n > 0    bytes written at buf (n <= cap);
 *   0        the end of the body;
 *   CREST_HTTP_BODY_WAIT  nothing now: the server asks again after
 *            crest_http_stream_resume(x) (data from another thread, a
 *            timer, a backend);
 *   another negative value: the body failed: the connection is closed
 *            (reason PROTOCOL_ERROR, logged with the value as -errno),
 *            since a client cannot be told mid-body.
 * A resume made while the body is not waiting (from inside body, say,
 * just before it answers CREST_HTTP_BODY_WAIT) is not lost: the next
 * CREST_HTTP_BODY_WAIT then asks again on the next iteration.
 * With a content_length, the server asks for exactly that many bytes (cap
 * never passes what is left, and no 0 is asked for after the last byte);
 * an end (0) before them, or more bytes than cap, closes the connection
 * (PROTOCOL_ERROR, logged), the client sees a short body.  A body that
 * ends the exchange so (a failure, a short end) gets no on_cancel and is
 * not counted in stats.cancelled: its own return said it.  The
 * connection closing under a stream (a reset, a write error, a timeout,
 * the server destroyed) is a cancel: on_cancel, as for an exchange
 * waiting for its response.  With CREST_HTTP_LENGTH_UNKNOWN
 * the body goes out chunked to an HTTP/1.1 client (Transfer-Encoding:
 * chunked, each call one chunk, the last-chunk after the end) and
 * delimited by the close to an HTTP/1.0 one ("Connection: close").
 *
 * HEAD, 1xx, 204 and 304, and a content_length of 0: the head only
 * (for HEAD, the framing a GET would get: Content-Length as given, or
 * Transfer-Encoding: chunked to HTTP/1.1); body is never called, and the
 * exchange is over when the call returns (x invalid, as after
 * crest_http_respond(); ctx is the caller's again).  Otherwise the
 * exchange stays valid, and requests pipelined behind it wait, until the
 * end of the body was written (or on_cancel, if the connection closes
 * first: body is not called after); crest_http_respond() on it is
 * -EINVAL.  The response is counted in stats.responses when its head is
 * written; stats.pending until the end.
 * body runs from the loop, on its thread, never inside a crest call
 * (crest_http_respond_stream() and crest_http_stream_resume() included):
 * the head is written inside crest_http_respond_stream(); the body is
 * first asked for as soon as on_request returns when the stream began
 * inside it (the first bytes go out with that read's other replies), on
 * the next iteration otherwise.  keepalive_timeout_ms counts while a body
 * waits (CREST_HTTP_BODY_WAIT) as while an answer is prepared.
 * Memory: one CREST_HTTP_STREAM_CHUNK buffer per server (allocated on the
 * first stream); a stream's state takes no more per connection. */
#define CREST_HTTP_LENGTH_UNKNOWN UINT64_MAX
#define CREST_HTTP_BODY_WAIT (-11000)
#define CREST_HTTP_STREAM_CHUNK 65536u
#define CREST_HTTP_STREAM_TURN (1024u * 1024u)

typedef ssize_t (*crest_http_body_cb)(crest_http_exchange_t *x, uint8_t *buf, size_t cap,
                                      void *ctx);

/* Answer x with a streamed body (above).  ctx is body's.  From on_request
 * or later, on the loop's thread.  0 (x stays valid until the body ends),
 * or as crest_http_respond() (x is then invalid): -EINVAL also for a NULL
 * body. */
int crest_http_respond_stream(crest_http_exchange_t *x, int status,
                              const crest_http_header_t *headers, size_t header_count,
                              uint64_t content_length, crest_http_body_cb body, void *ctx);

/* A body that answered CREST_HTTP_BODY_WAIT has data again: the server
 * asks on the next iteration (never inside this call).  0; -EINVAL if x
 * is not streaming (never was, or its stream is over). */
int crest_http_stream_resume(crest_http_exchange_t *x);

/* ---- connections from the application's listeners ------------------------
 *
 * crest_http_server_listen() makes its own listener.  An application that
 * has one already (one per thread with SO_REUSEPORT, a socket from
 * systemd, a port that sniffs the protocol) hands each connection over:
 * crest_http_server_accept(s, c) from the connection's on_open (or from
 * on_data before any byte was consumed: the bytes already read are
 * parsed as the request's).  The server takes the connection: its handler
 * becomes the server's (the previous one gets no more callbacks, on_close
 * included) and its options get what the server needs (framing RAW,
 * max_input, read_timeout_ms and idle_timeout_ms, as in
 * crest_http_server_listen()).  Give the listener those options from the
 * start (crest_http_server_conn_opts()) and the connection keeps sharing
 * the listener's; otherwise it gets its own copy (conn.h, about 250
 * bytes).  On the loop's thread; no callback runs inside.  0, -EINVAL
 * (NULL, or a connection of another loop), -ENOTCONN (closing), -ENOMEM
 * (the connection is then left as it was). */
int crest_http_server_accept(crest_http_server_t *s, crest_conn_t *c);

/* Set in o the connection options a server made with opts needs (opts may
 * be NULL: the defaults); the other fields of o are left as they are.
 * Any thread. */
void crest_http_server_conn_opts(const crest_http_server_opts_t *opts, crest_conn_opts_t *o);

/* The exchange's connection (for crest_conn_peer(), crest_conn_id()). */
crest_conn_t *crest_http_exchange_conn(const crest_http_exchange_t *x);
/* The server's ctx, and a pointer of the application's for this exchange
 * (NULL until set). */
void *crest_http_exchange_ctx(const crest_http_exchange_t *x);
void crest_http_exchange_set_data(crest_http_exchange_t *x, void *data);
void *crest_http_exchange_get_data(const crest_http_exchange_t *x);
/* The request's method (HEAD matters to a handler that builds a body). */
crest_http_method_t crest_http_exchange_method(const crest_http_exchange_t *x);

#ifdef __cplusplus
}
#endif
#endif
