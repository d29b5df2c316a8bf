/* Fuzz target: the HTTP/1.1 request-head parser (crest_http_parse_head)
 * and the chunked body scanner (crest_http_chunked_scan, _copy).
 *
 * Input: four bytes of settings, then the byte stream.
 *   byte 0    max_request_line: 0 (the default) or 1..255
 *   byte 1    max_header_bytes: 0 (the default) or 1..255 (the trailers' too)
 *   byte 2    max_headers: 0 (the default) or 1..64
 *   byte 3    max_body: 0 (the default) or 1..255 (the decoded size too)
 *   rest      the stream: heads parsed one after another, each followed by
 *             its body (Content-Length, or chunked) when it is whole, as a
 *             server would; and the stream itself, scanned as a chunked
 *             body (so that a chunked seed is just the settings and a body)
 *
 * For every head it checks what must hold whatever the bytes:
 *   - the answer is 0, -EAGAIN or -EPROTO; consumed <= len, 0 unless 0;
 *     -EPROTO carries a 4xx/5xx status and a reason; -EAGAIN only while
 *     len < crest_http_head_max();
 *   - every slice of a parsed request lies inside the head, and the fields
 *     obey the rules (version 0 or 1, header_count within max_headers,
 *     Content-Length within max_body, not both framings);
 *   - the head alone (buf[0..consumed)) parses the same;
 *   - a prefix (the cut chosen by the input's last byte) answers -EAGAIN or
 *     exactly the same, at the same offsets: a head split across reads gets
 *     the answer a whole one gets.
 * For every chunked body (check_chunked()):
 *   - the answer is 1, 0 or -EPROTO; 0 has scanned everything (pos ==
 *     len), 1 has pos <= len and size <= max_body, -EPROTO a status of
 *     400, 413 or 431 and a reason; a second call says the same and
 *     changes nothing;
 *   - split at the cut, and fed a byte at a time through a buffer whose
 *     scanned bytes and bytes still to come are junk, the answer is the
 *     same (pos, size, status and reason): the scanner neither looks back
 *     nor ahead;
 *   - on 1, crest_http_chunked_copy() returns st->size, into another
 *     buffer, in place, and from the body without what follows it, the
 *     same bytes each time; on anything, it stays inside the buffer. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include <crest/http.h>

#include "fuzz.h"

static void check_inside(const uint8_t *base, size_t consumed, crest_http_str_t s) {
    if (!s.ptr) {
        FUZZ_CHECK(s.len == 0);
        return;
    }
    const uint8_t *p = (const uint8_t *)s.ptr;
    FUZZ_CHECK(p >= base && p <= base + consumed);
    FUZZ_CHECK(s.len <= (size_t)(base + consumed - p));
}

static size_t off(const uint8_t *base, crest_http_str_t s) {
    return s.ptr ? (size_t)((const uint8_t *)s.ptr - base) : SIZE_MAX;
}

static void same(const crest_http_request_t *a, const uint8_t *ba, const crest_http_request_t *b,
                 const uint8_t *bb) {
    FUZZ_CHECK(a->method == b->method);
    FUZZ_CHECK(off(ba, a->method_token) == off(bb, b->method_token));
    FUZZ_CHECK(a->method_token.len == b->method_token.len);
    FUZZ_CHECK(off(ba, a->target) == off(bb, b->target) && a->target.len == b->target.len);
    FUZZ_CHECK(a->version_minor == b->version_minor);
    FUZZ_CHECK(a->header_count == b->header_count);
    for (size_t i = 0; i < a->header_count; i++) {
        FUZZ_CHECK(off(ba, a->headers[i].name) == off(bb, b->headers[i].name));
        FUZZ_CHECK(a->headers[i].name.len == b->headers[i].name.len);
        FUZZ_CHECK(off(ba, a->headers[i].value) == off(bb, b->headers[i].value));
        FUZZ_CHECK(a->headers[i].value.len == b->headers[i].value.len);
    }
    FUZZ_CHECK(a->host.len == b->host.len);
    FUZZ_CHECK(a->content_length == b->content_length);
    FUZZ_CHECK(a->has_content_length == b->has_content_length);
    FUZZ_CHECK(a->chunked == b->chunked && a->keep_alive == b->keep_alive);
    FUZZ_CHECK(a->expect_continue == b->expect_continue);
}

static int checked_parse(const uint8_t *d, size_t len, const crest_http_limits_t *lim,
                         crest_http_request_t *r, size_t *consumed) {
    *consumed = 999;
    int rc = crest_http_parse_head(d, len, lim, r, consumed);
    FUZZ_CHECK(rc == 0 || rc == -EAGAIN || rc == -EPROTO);
    FUZZ_CHECK(*consumed <= len);
    if (rc != 0)
        FUZZ_CHECK(*consumed == 0);
    if (rc == -EAGAIN)
        FUZZ_CHECK(len < crest_http_head_max(lim));
    if (rc == -EPROTO) {
        FUZZ_CHECK(r->status >= 400 && r->status <= 599 && r->reason != NULL);
        FUZZ_CHECK(crest_http_reason_phrase(r->status)[0] != '\0');
    }
    if (rc == 0) {
        size_t max_headers = lim->max_headers ? lim->max_headers : CREST_HTTP_MAX_HEADERS;
        uint64_t max_body = lim->max_body ? lim->max_body : CREST_HTTP_DEFAULT_MAX_BODY;
        FUZZ_CHECK(*consumed > 0 && r->status == 0 && r->reason == NULL);
        FUZZ_CHECK(r->version_minor == 0 || r->version_minor == 1);
        FUZZ_CHECK(r->header_count <= max_headers);
        FUZZ_CHECK(r->method_token.len > 0 && r->target.len > 0);
        FUZZ_CHECK(!(r->chunked && r->has_content_length));
        FUZZ_CHECK(r->content_length <= max_body);
        FUZZ_CHECK(r->has_content_length || r->content_length == 0);
        check_inside(d, *consumed, r->method_token);
        check_inside(d, *consumed, r->target);
        check_inside(d, *consumed, r->host);
        for (size_t i = 0; i < r->header_count; i++) {
            FUZZ_CHECK(r->headers[i].name.len > 0);
            check_inside(d, *consumed, r->headers[i].name);
            check_inside(d, *consumed, r->headers[i].value);
        }
    }
    return rc;
}

static void check_scan(int rc, const crest_http_chunked_t *st, size_t len,
                       const crest_http_limits_t *lim) {
    uint64_t max_body = lim->max_body ? lim->max_body : CREST_HTTP_DEFAULT_MAX_BODY;
    FUZZ_CHECK(rc == 1 || rc == 0 || rc == -EPROTO);
    FUZZ_CHECK(st->pos <= len && st->size <= st->pos && st->size <= max_body);
    if (rc == 0)
        FUZZ_CHECK(st->pos == len);
    if (rc == -EPROTO) {
        FUZZ_CHECK(st->status == 400 || st->status == 413 || st->status == 431);
        FUZZ_CHECK(st->reason != NULL && st->pos < len);
    } else {
        FUZZ_CHECK(st->status == 0 && st->reason == NULL);
    }
}

static void same_scan(int ra, const crest_http_chunked_t *a, int rb,
                      const crest_http_chunked_t *b) {
    FUZZ_CHECK(ra == rb && a->pos == b->pos && a->size == b->size);
    FUZZ_CHECK(a->status == b->status);
    FUZZ_CHECK((a->reason == NULL) == (b->reason == NULL));
    if (a->reason)
        FUZZ_CHECK(strcmp(a->reason, b->reason) == 0);
}

#define JUNK 0xa5 /* neither a hex digit nor a token character */

/* Scan d[0..len) as a chunked body whole, split at cut, and a byte at a
 * time; returns the answer, *out the state. */
static int check_chunked(const uint8_t *d, size_t len, const crest_http_limits_t *lim,
                         size_t cut, crest_http_chunked_t *out) {
    memset(out, 0, sizeof *out);
    int rc = crest_http_chunked_scan(d, len, lim, out);
    check_scan(rc, out, len, lim);
    crest_http_chunked_t st = *out;
    FUZZ_CHECK(crest_http_chunked_scan(d, len, lim, &st) == rc);
    FUZZ_CHECK(memcmp(&st, out, sizeof st) == 0);

    /* split at the cut */
    size_t k = len ? cut % (len + 1) : 0;
    memset(&st, 0, sizeof st);
    int r = crest_http_chunked_scan(d, k, lim, &st);
    check_scan(r, &st, k, lim);
    if (r == 0)
        r = crest_http_chunked_scan(d, len, lim, &st);
    same_scan(r, &st, rc, out);

    /* a byte at a time, what is not new being junk */
    uint8_t *b = malloc(len ? len : 1);
    FUZZ_CHECK(b != NULL);
    memset(b, JUNK, len);
    memset(&st, 0, sizeof st);
    r = 0;
    size_t junked = 0;
    for (k = 1; k <= len && r == 0; k++) {
        b[k - 1] = d[k - 1];
        r = crest_http_chunked_scan(b, k, lim, &st);
        check_scan(r, &st, k, lim);
        for (; junked < st.pos; junked++)
            b[junked] = JUNK;
    }
    same_scan(r, &st, rc, out);

    /* the decoded data; and copy stays inside whatever it is given */
    memcpy(b, d, len);
    uint8_t *dst = malloc(len ? len : 1);
    FUZZ_CHECK(dst != NULL);
    size_t n = crest_http_chunked_copy(d, len, dst);
    FUZZ_CHECK(n <= len);
    if (rc == 1) {
        FUZZ_CHECK(n == out->size);
        FUZZ_CHECK(crest_http_chunked_copy(b, len, b) == n);
        FUZZ_CHECK(memcmp(b, dst, n) == 0);
        memcpy(b, d, len);
        FUZZ_CHECK(crest_http_chunked_copy(b, (size_t)out->pos, b) == n);
        FUZZ_CHECK(memcmp(b, dst, n) == 0);
    }
    free(dst);
    free(b);
    return rc;
}

static crest_http_request_t whole, part;
static crest_http_chunked_t body;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = {data, size};
    crest_http_limits_t lim = {0};
    lim.max_request_line = fuzz_u8(&in);
    lim.max_header_bytes = fuzz_u8(&in);
    lim.max_headers = fuzz_u8(&in) % (CREST_HTTP_MAX_HEADERS + 1);
    lim.max_body = fuzz_u8(&in);
    const uint8_t *p = in.p;
    size_t len = in.n;
    size_t cut = len ? p[len - 1] : 0;

    /* the stream as a chunked body */
    check_chunked(p, len, &lim, cut, &body);

    for (;;) {
        size_t consumed, c2;
        int rc = checked_parse(p, len, &lim, &whole, &consumed);

        /* a prefix answers -EAGAIN or the same */
        size_t k = len ? cut % (len + 1) : 0;
        int prc = checked_parse(p, k, &lim, &part, &c2);
        if (prc != -EAGAIN) {
            FUZZ_CHECK(prc == rc);
            FUZZ_CHECK(part.status == whole.status);
            if (rc == 0) {
                FUZZ_CHECK(c2 == consumed);
                same(&part, p, &whole, p);
            }
        }
        if (rc != 0)
            break;

        /* the head alone, in its own copy, parses the same */
        uint8_t *copy = malloc(consumed);
        FUZZ_CHECK(copy != NULL);
        memcpy(copy, p, consumed);
        FUZZ_CHECK(checked_parse(copy, consumed, &lim, &part, &c2) == 0);
        FUZZ_CHECK(c2 == consumed);
        same(&part, copy, &whole, p);
        free(copy);

        /* on to the next pipelined request, past this one's body */
        p += consumed;
        len -= consumed;
        if (whole.chunked) {
            if (check_chunked(p, len, &lim, cut, &body) != 1)
                break;
            p += body.pos;
            len -= (size_t)body.pos;
            continue;
        }
        if (whole.content_length > len)
            break;
        p += whole.content_length;
        len -= (size_t)whole.content_length;
    }
    return 0;
}
