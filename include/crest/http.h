/* crest: an HTTP/1.1 server-side request-head parser.
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
    size_t max_header_bytes; /* header section, line endings included; 0: 16 KiB; over: 431 */
    size_t max_headers;      /* fields; 0: 64; over: 431; above 64: -EINVAL */
    uint64_t max_body;       /* Content-Length; 0: 1 MiB; over: 413 */
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
    CREST_HTTP_431 = 431, /* Request Header Fields Too Large */
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

#ifdef __cplusplus
}
#endif
#endif
