/* Chunked request bodies (include/crest/http.h, RFC 9112 7.1).
 *
 * crest_http_chunked_scan() is a byte-at-a-time state machine, like
 * nginx's ngx_http_parse_chunked() and llhttp's chunk states, that keeps
 * its place in the caller's crest_http_chunked_t: a call resumes at
 * st->pos, so no byte is looked at twice however the body is split, and
 * the answer cannot depend on the split (the state after a byte depends
 * only on the state before it and the byte).  Chunk data is skipped in one
 * step per call, not a byte at a time.  Each byte is first checked against
 * the limit it counts toward (the size line, the trailer section), then
 * against the syntax, as the head parser does, so the first byte that
 * proves an error decides the answer.
 *
 * crest_http_chunked_copy() is the second pass over a body the scanner
 * accepted: it trusts the syntax and only finds the data, but never reads
 * past the buffer whatever it holds. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include <crest/http.h>

#include "http_int.h"
#include "internal.h"

/* A hex digit's value plus one, 0 for any other byte: one load per
 * byte. */
#define HX(c, v) [c] = (v) + 1
static const uint8_t hex1[256] = {
    HX('0', 0), HX('1', 1), HX('2', 2), HX('3', 3), HX('4', 4), HX('5', 5), HX('6', 6),
    HX('7', 7), HX('8', 8), HX('9', 9),
    HX('A', 10), HX('B', 11), HX('C', 12), HX('D', 13), HX('E', 14), HX('F', 15),
    HX('a', 10), HX('b', 11), HX('c', 12), HX('d', 13), HX('e', 14), HX('f', 15),
};
#undef HX

#define tchar crest__http_tchar /* http_int.h */

/* The most hex digits of a chunk-size: 15 digits stay below 2^60, so the
 * value and the running sum never overflow 64 bits. */
#define MAX_SIZE_DIGITS 15u

static bool is_ws(uint8_t c) {
    return c == ' ' || c == '\t';
}

/* field-vchar: VCHAR or obs-text. */
static bool is_fvchar(uint8_t c) {
    return c > 0x20 && c != 0x7f;
}

/* qdtext (RFC 9110 5.6.4): HTAB, SP, VCHAR but '"' and '\', obs-text. */
static bool is_qdtext(uint8_t c) {
    return c == '\t' || (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f);
}

enum state {
    /* the size line (counts toward CREST_HTTP_MAX_CHUNK_LINE) */
    S_SIZE0 = 0,    /* its first byte: a hex digit */
    S_SIZE,         /* more digits, ';', BWS or the line-end */
    S_SEMI_BWS,     /* BWS after the size or an extension value: ';' due */
    S_EXT_BWS,      /* after ';': BWS, then the name */
    S_EXT_NAME,
    S_EXT_NAME_BWS, /* BWS after a name: '=' or ';' due */
    S_EXT_VAL_BWS,  /* after '=': BWS, then the value */
    S_EXT_TOKEN,    /* a token value */
    S_EXT_QUOTED,   /* inside a quoted-string value */
    S_EXT_QPAIR,    /* after a '\' in it */
    S_EXT_QEND,     /* after its closing quote */
    /* the line-end of the size line */
    S_SIZE_CR,
    /* the data and its line-end */
    S_DATA,
    S_DATA_END,
    S_DATA_CR,
    /* the trailer section (counts toward max_header_bytes) */
    S_TR_FIELD,     /* the first byte of a field line, or the empty line */
    S_TR_NAME,
    S_TR_VALUE,
    S_TR_CR,        /* the CR ending a field line */
    S_TR_END_CR,    /* the CR of the empty line */
    /* answered */
    S_DONE,
    S_FAILED
};

static int limits_of(const crest_http_limits_t *lim, uint64_t *max_body, uint64_t *max_trailer) {
    crest_http_limits_t none = {0};
    if (!lim)
        lim = &none;
    /* the same limits crest_http_parse_head() accepts */
    if (lim->max_headers > CREST_HTTP_MAX_HEADERS || lim->max_request_line > SIZE_MAX / 4 ||
        lim->max_header_bytes > SIZE_MAX / 4)
        return -EINVAL;
    *max_body = lim->max_body ? lim->max_body : CREST_HTTP_DEFAULT_MAX_BODY;
    *max_trailer =
        lim->max_header_bytes ? lim->max_header_bytes : CREST_HTTP_DEFAULT_MAX_HEADER_BYTES;
    return 0;
}

int crest_http_chunked_scan(const uint8_t *buf, size_t len, const crest_http_limits_t *lim,
                            crest_http_chunked_t *st) {
    uint64_t max_body, max_trailer;
    if (!st || (!buf && len > 0) || limits_of(lim, &max_body, &max_trailer) < 0)
        return -EINVAL;
    if (st->state < S_SIZE0 || st->state > S_FAILED || st->pos > len)
        return -EINVAL;
    if (st->state == S_DONE)
        return 1;
    if (st->state == S_FAILED)
        return -EPROTO;

    /* work on a copy held in registers; written back on every way out */
    crest_http_chunked_t w = *st;
    enum state s = (enum state)w.state;
    size_t i = (size_t)w.pos;
    int status = 0;
    const char *reason = NULL;

#define REFUSE(code, why)                                                                     \
    do {                                                                                      \
        status = (code);                                                                      \
        reason = (why);                                                                       \
        goto refused;                                                                         \
    } while (0)

    while (i < len) {
        if (s == S_DATA) {
            /* the data: skipped whole, as far as it has arrived */
            size_t avail = len - i;
            uint64_t n = w.left < avail ? w.left : avail;
            i += (size_t)n;
            w.size += n;
            w.left -= n;
            if (w.left == 0)
                s = S_DATA_END;
            continue;
        }

        uint8_t c = buf[i];

        /* limits first: the byte counts toward the size line (its
         * line-end excluded) or toward the trailer section */
        if (s <= S_EXT_QEND) {
            if (w.line >= CREST_HTTP_MAX_CHUNK_LINE && c != '\r' && c != '\n')
                REFUSE(CREST_HTTP_400, "chunk size line too long");
            w.line++;
        } else if (s >= S_TR_FIELD && s <= S_TR_END_CR) {
            if (w.trailer >= max_trailer)
                REFUSE(CREST_HTTP_431, "trailer section too large");
            w.trailer++;
        }

        switch (s) {
        case S_SIZE0:
        case S_SIZE:
            if (hex1[c]) {
                /* w.line counts this digit already: the size line holds
                 * only digits so far */
                if (w.line > MAX_SIZE_DIGITS)
                    REFUSE(CREST_HTTP_400, "chunk size over 15 hex digits");
                w.left = w.left * 16 + (uint64_t)(hex1[c] - 1);
                /* w.size <= max_body holds: no wrap */
                if (w.left > max_body - w.size)
                    REFUSE(CREST_HTTP_413, "chunked body over the body limit");
                s = S_SIZE;
            } else if (s == S_SIZE0) {
                REFUSE(CREST_HTTP_400, "chunk size not hex");
            } else if (c == ';') {
                s = S_EXT_BWS;
            } else if (is_ws(c)) {
                s = S_SEMI_BWS;
            } else if (c == '\r') {
                s = S_SIZE_CR;
            } else if (c == '\n') {
                goto size_line_end;
            } else {
                REFUSE(CREST_HTTP_400, "chunk size not hex");
            }
            break;
        case S_SEMI_BWS:
            if (c == ';')
                s = S_EXT_BWS;
            else if (!is_ws(c))
                REFUSE(CREST_HTTP_400, "whitespace in a chunk size line not before ';'");
            break;
        case S_EXT_BWS:
            if (tchar[c])
                s = S_EXT_NAME;
            else if (!is_ws(c))
                REFUSE(CREST_HTTP_400, "malformed chunk extension name");
            break;
        case S_EXT_NAME:
        case S_EXT_NAME_BWS:
            if (c == '=') {
                s = S_EXT_VAL_BWS;
            } else if (c == ';') {
                s = S_EXT_BWS;
            } else if (is_ws(c)) {
                s = S_EXT_NAME_BWS;
            } else if (s == S_EXT_NAME && tchar[c]) {
                /* more of the name */
            } else if (s == S_EXT_NAME && c == '\r') {
                s = S_SIZE_CR;
            } else if (s == S_EXT_NAME && c == '\n') {
                goto size_line_end;
            } else {
                REFUSE(CREST_HTTP_400, "malformed chunk extension name");
            }
            break;
        case S_EXT_VAL_BWS:
            if (tchar[c])
                s = S_EXT_TOKEN;
            else if (c == '"')
                s = S_EXT_QUOTED;
            else if (!is_ws(c))
                REFUSE(CREST_HTTP_400, "malformed chunk extension value");
            break;
        case S_EXT_TOKEN:
        case S_EXT_QEND:
            if (c == ';') {
                s = S_EXT_BWS;
            } else if (is_ws(c)) {
                s = S_SEMI_BWS;
            } else if (s == S_EXT_TOKEN && tchar[c]) {
                /* more of the value */
            } else if (c == '\r') {
                s = S_SIZE_CR;
            } else if (c == '\n') {
                goto size_line_end;
            } else {
                REFUSE(CREST_HTTP_400, "malformed chunk extension value");
            }
            break;
        case S_EXT_QUOTED:
            if (c == '"')
                s = S_EXT_QEND;
            else if (c == '\\')
                s = S_EXT_QPAIR;
            else if (!is_qdtext(c))
                REFUSE(CREST_HTTP_400, "malformed chunk extension value");
            break;
        case S_EXT_QPAIR:
            /* quoted-pair: HTAB, SP, VCHAR, obs-text */
            if (c != '\t' && (c < 0x20 || c == 0x7f))
                REFUSE(CREST_HTTP_400, "malformed chunk extension value");
            s = S_EXT_QUOTED;
            break;
        case S_SIZE_CR:
            if (c != '\n')
                REFUSE(CREST_HTTP_400, "CR without LF");
        size_line_end:
            w.line = 0;
            if (w.left == 0) {
                /* the last chunk: the trailer section follows */
                s = S_TR_FIELD;
            } else {
                s = S_DATA;
            }
            break;
        case S_DATA_END:
            if (c == '\r')
                s = S_DATA_CR;
            else if (c == '\n')
                s = S_SIZE0;
            else
                REFUSE(CREST_HTTP_400, "chunk data not followed by CRLF");
            break;
        case S_DATA_CR:
            if (c != '\n')
                REFUSE(CREST_HTTP_400, "chunk data not followed by CRLF");
            s = S_SIZE0;
            break;
        case S_TR_FIELD:
            if (c == '\r') {
                s = S_TR_END_CR;
            } else if (c == '\n') {
                goto done;
            } else if (is_ws(c)) {
                REFUSE(CREST_HTTP_400, "folded or indented trailer line");
            } else if (tchar[c]) {
                s = S_TR_NAME;
            } else {
                REFUSE(CREST_HTTP_400, "malformed trailer field name");
            }
            break;
        case S_TR_NAME:
            if (c == ':')
                s = S_TR_VALUE;
            else if (is_ws(c))
                REFUSE(CREST_HTTP_400, "whitespace before the colon in a trailer");
            else if (!tchar[c])
                REFUSE(CREST_HTTP_400, "malformed trailer field name");
            break;
        case S_TR_VALUE:
            if (c == '\r')
                s = S_TR_CR;
            else if (c == '\n')
                s = S_TR_FIELD;
            else if (!is_ws(c) && !is_fvchar(c))
                REFUSE(CREST_HTTP_400, "control character in a trailer value");
            break;
        case S_TR_CR:
            if (c != '\n')
                REFUSE(CREST_HTTP_400, "CR without LF");
            s = S_TR_FIELD;
            break;
        case S_TR_END_CR:
            if (c != '\n')
                REFUSE(CREST_HTTP_400, "CR without LF");
            goto done;
        case S_DATA:
        case S_DONE:
        case S_FAILED:
            /* handled above */
            break;
        }
        i++;
    }
#undef REFUSE

    w.pos = i;
    w.state = s;
    *st = w;
    return 0;

done:
    w.pos = i + 1;
    w.state = S_DONE;
    *st = w;
    return 1;

refused:
    /* pos: the byte that proved it */
    w.pos = i;
    w.state = S_FAILED;
    w.status = status;
    w.reason = reason;
    *st = w;
    return -EPROTO;
}

size_t crest_http_chunked_copy(const uint8_t *buf, size_t len, uint8_t *dst) {
    if (!buf || !dst)
        return 0;
    size_t i = 0, out = 0;
    for (;;) {
        /* the size line: its digits, then anything up to its LF (a chunk
         * extension holds no LF, not even quoted) */
        uint64_t n = 0;
        size_t digits = 0;
        while (i < len && digits < MAX_SIZE_DIGITS && hex1[buf[i]]) {
            n = n * 16 + (uint64_t)(hex1[buf[i]] - 1);
            i++;
            digits++;
        }
        if (digits == 0 || n == 0)
            break; /* the last chunk (or not a body the scanner accepted) */
        const uint8_t *lf = memchr(buf + i, '\n', len - i);
        if (!lf)
            break;
        i = (size_t)(lf - buf) + 1;
        /* the data; out < i, so in place it only moves toward the start */
        size_t take = n < len - i ? (size_t)n : len - i;
        memmove(dst + out, buf + i, take);
        out += take;
        i += take;
        /* its line-end */
        if (i < len && buf[i] == '\r')
            i++;
        if (i >= len || buf[i] != '\n')
            break;
        i++;
    }
    return out;
}
