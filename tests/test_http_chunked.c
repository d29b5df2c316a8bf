/* Tests for the chunked request-body scanner (include/crest/http.h,
 * crest_http_chunked_scan() and crest_http_chunked_copy()).
 *
 * Every case goes through scan(), which scans the input three ways and
 * asserts that they agree (the same return, pos, size, status and reason):
 *   - whole, in one call, from an exact-size heap copy (a read past the end
 *     shows under valgrind), then once more (an answer is final);
 *   - a byte at a time, through a buffer whose bytes not yet "arrived" and
 *     whose bytes already scanned (before st->pos) are overwritten with
 *     junk: the scanner must neither look ahead nor look back, which is
 *     what makes a body split over n reads cost O(its length) in all;
 *     every call before the answer must say 0 with st->pos == len;
 *   - in two calls, split at every byte (every 1/256th of the input for
 *     the few inputs over 4 KiB).
 * When the answer is 1, crest_http_chunked_copy() must give st->size
 * bytes, the same into another buffer and in place. */
#include "crest_test.h"

#include <crest/http.h>

/* ---- helpers ------------------------------------------------------------ */

#define JUNK 0xa5 /* neither a hex digit nor a token character */

static void same_answer(int rc_a, const crest_http_chunked_t *a, int rc_b,
                        const crest_http_chunked_t *b) {
    assert_int_equal(rc_a, rc_b);
    assert_int_equal(a->pos, b->pos);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->status, b->status);
    if (a->reason || b->reason) {
        assert_non_null(a->reason);
        assert_non_null(b->reason);
        assert_string_equal(a->reason, b->reason);
    }
}

static uint64_t max_body_of(const crest_http_limits_t *lim) {
    return lim && lim->max_body ? lim->max_body : CREST_HTTP_DEFAULT_MAX_BODY;
}

/* What every answer must satisfy. */
static void check_answer(int rc, const crest_http_chunked_t *st, size_t len,
                         const crest_http_limits_t *lim) {
    assert_true(rc == 0 || rc == 1 || rc == -EPROTO);
    assert_true(st->pos <= len);
    assert_true(st->size <= st->pos);
    assert_true(st->size <= max_body_of(lim));
    if (rc == 0)
        assert_int_equal(st->pos, len);
    if (rc == 1)
        assert_true(st->pos > 0);
    if (rc == -EPROTO) {
        assert_true(st->status == 400 || st->status == 413 || st->status == 431);
        assert_non_null(st->reason);
        assert_true(st->pos < len);
    } else {
        assert_int_equal(st->status, 0);
        assert_null(st->reason);
    }
}

/* Scan d[0..len) the three ways; returns the answer, *out the state. */
static int scan_lim(const void *d, size_t len, const crest_http_limits_t *lim,
                    crest_http_chunked_t *out) {
    const uint8_t *src = d;

    /* whole */
    uint8_t *whole = malloc(len ? len : 1);
    assert_non_null(whole);
    memcpy(whole, src, len);
    memset(out, 0, sizeof *out);
    int rc = crest_http_chunked_scan(len ? whole : NULL, len, lim, out);
    check_answer(rc, out, len, lim);
    if (rc != 0) {
        crest_http_chunked_t again = *out;
        assert_int_equal(crest_http_chunked_scan(whole, len, lim, &again), rc);
        assert_memory_equal(&again, out, sizeof again);
    }

    /* a byte at a time, past bytes and future bytes junk */
    uint8_t *b = malloc(len ? len : 1);
    assert_non_null(b);
    memset(b, JUNK, len);
    crest_http_chunked_t st = {0};
    bool answered = false;
    size_t junked = 0;
    for (size_t k = 0; k <= len; k++) {
        if (k > 0)
            b[k - 1] = src[k - 1];
        crest_http_chunked_t before = st;
        int r = crest_http_chunked_scan(k ? b : NULL, k, lim, &st);
        if (answered) {
            assert_memory_equal(&before, &st, sizeof st);
            same_answer(r, &st, rc, out);
        } else if (r == 0) {
            check_answer(r, &st, k, lim);
        } else {
            answered = true;
            same_answer(r, &st, rc, out);
        }
        /* what was scanned is never read again */
        for (; junked < st.pos; junked++)
            b[junked] = JUNK;
    }
    assert_true(answered == (rc != 0));
    if (rc == 0)
        same_answer(0, &st, rc, out);
    free(b);

    /* in two calls, at every split */
    size_t stride = len > 4096 ? len / 256 : 1;
    for (size_t k = 0; k <= len; k += stride) {
        crest_http_chunked_t s2 = {0};
        int r = crest_http_chunked_scan(k ? whole : NULL, k, lim, &s2);
        check_answer(r, &s2, k, lim);
        if (r == 0)
            r = crest_http_chunked_scan(whole, len, lim, &s2);
        same_answer(r, &s2, rc, out);
    }

    /* the decoded data, out of place and in place */
    if (rc == 1) {
        uint8_t *dst = malloc(out->size ? out->size : 1);
        assert_non_null(dst);
        assert_int_equal(crest_http_chunked_copy(whole, len, dst), out->size);
        uint8_t *inplace = malloc(len);
        assert_non_null(inplace);
        memcpy(inplace, src, len);
        assert_int_equal(crest_http_chunked_copy(inplace, len, inplace), out->size);
        assert_memory_equal(inplace, dst, out->size);
        /* the body alone, without what follows it, decodes the same */
        assert_int_equal(crest_http_chunked_copy(whole, out->pos, inplace), out->size);
        assert_memory_equal(inplace, dst, out->size);
        free(inplace);
        free(dst);
    }
    free(whole);
    return rc;
}

static crest_http_chunked_t st;

static int scan(const char *s) {
    return scan_lim(s, strlen(s), NULL, &st);
}

/* s is a whole body of strlen(s) bytes (or end bytes, when given) that
 * decodes to want (wlen bytes). */
static void expect_body_n(const char *s, size_t end, const crest_http_limits_t *lim,
                          const char *want, size_t wlen) {
    int rc = scan_lim(s, strlen(s), lim, &st);
    if (rc != 1)
        fail_msg("\"%s\": %d status %d (%s)", s, rc, st.status, st.reason ? st.reason : "");
    assert_int_equal(st.pos, end);
    assert_int_equal(st.size, wlen);
    uint8_t *dst = malloc(wlen ? wlen : 1);
    assert_non_null(dst);
    assert_int_equal(crest_http_chunked_copy((const uint8_t *)s, strlen(s), dst), wlen);
    assert_memory_equal(dst, want, wlen);
    free(dst);
}

/* The same for an input holding a NUL. */
static void expect_body_bin(const char *s, size_t slen, const char *want, size_t wlen) {
    assert_int_equal(scan_lim(s, slen, NULL, &st), 1);
    assert_int_equal(st.pos, slen);
    assert_int_equal(st.size, wlen);
    uint8_t *dst = malloc(wlen ? wlen : 1);
    assert_non_null(dst);
    assert_int_equal(crest_http_chunked_copy((const uint8_t *)s, slen, dst), wlen);
    assert_memory_equal(dst, want, wlen);
    free(dst);
}

static void expect_body(const char *s, const char *want) {
    expect_body_n(s, strlen(s), NULL, want, strlen(want));
}

static void expect_status_lim(const char *s, const crest_http_limits_t *lim, int status,
                              const char *reason) {
    int rc = scan_lim(s, strlen(s), lim, &st);
    if (rc != -EPROTO || st.status != status)
        fail_msg("\"%s\": %d status %d (%s), wanted %d", s, rc, st.status,
                 st.reason ? st.reason : "", status);
    if (reason && strcmp(st.reason, reason) != 0)
        fail_msg("\"%s\": reason \"%s\", wanted \"%s\"", s, st.reason, reason);
}

static void expect_status(const char *s, int status, const char *reason) {
    expect_status_lim(s, NULL, status, reason);
}

static void expect_more(const char *s) {
    int rc = scan(s);
    if (rc != 0)
        fail_msg("\"%s\": %d status %d (%s), wanted 0", s, rc, st.status,
                 st.reason ? st.reason : "");
}

/* ---- valid bodies -------------------------------------------------------- */

static void test_one_chunk(void **state) {
    (void)state;
    expect_body("5\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("1\r\nx\r\n0\r\n\r\n", "x");
}

static void test_many_chunks(void **state) {
    (void)state;
    expect_body("5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n", "hello world");
    /* the data is opaque: line ends, a last chunk, NULs inside it */
    expect_body("7\r\n\r\n0\r\n\r\n\r\n2\r\n\n\n\r\n0\r\n\r\n", "\r\n0\r\n\r\n\n\n");
    expect_body_bin("3\r\na\0b\r\n0\r\n\r\n", 13, "a\0b", 3);
    /* many small chunks */
    char s[4096];
    size_t n = 0;
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(s + n, sizeof s - n, "1\r\n%c\r\n", 'a' + i % 26);
    n += (size_t)snprintf(s + n, sizeof s - n, "0\r\n\r\n");
    char want[200];
    for (int i = 0; i < 200; i++)
        want[i] = (char)('a' + i % 26);
    expect_body_n(s, n, NULL, want, sizeof want);
}

static void test_empty_body(void **state) {
    (void)state;
    expect_body("0\r\n\r\n", "");
    assert_int_equal(st.pos, 5);
    expect_body("0\n\n", "");
    expect_body("000\r\n\r\n", "");
    expect_body("000000000000000\r\n\r\n", "");
}

static void test_hex(void **state) {
    (void)state;
    expect_body("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n",
                "01234567890123456789");
    static const struct {
        const char *size;
        size_t n;
    } cases[] = {
        {"1f", 31}, {"1F", 31}, {"1e", 30}, {"1E", 30}, {"01f", 31},
        {"00000000000001F", 31}, {"Ab", 171}, {"aB", 171}, {"c8", 200},
    };
    char s[512], want[256];
    memset(want, 'z', sizeof want);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = (size_t)snprintf(s, sizeof s, "%s\r\n", cases[i].size);
        memset(s + n, 'z', cases[i].n);
        n += cases[i].n;
        n += (size_t)snprintf(s + n, sizeof s - n, "\r\n0\r\n\r\n");
        expect_body_n(s, n, NULL, want, cases[i].n);
    }
    /* every hex digit, either case (left: the size read so far) */
    crest_http_limits_t big = {.max_body = UINT64_MAX};
    assert_int_equal(scan_lim("123456789abcdef\r\n", 17, &big, &st), 0);
    assert_int_equal(st.left, 0x123456789abcdefull);
    assert_int_equal(scan_lim("FEDCBA987654321\r\n", 17, &big, &st), 0);
    assert_int_equal(st.left, 0xfedcba987654321ull);
    /* over the default limit */
    expect_status("123456789abcdef\r\n", 413, "chunked body over the body limit");
}

static void test_bare_lf(void **state) {
    (void)state;
    expect_body("5\nhello\n0\n\n", "hello");
    expect_body("5\r\nhello\n0\r\n\n", "hello");
    expect_body("5\nhello\r\n0\nX: y\n\r\n", "hello");
    expect_body("5;a=b\nhello\n0;c\nX: y\r\nZ: w\n\n", "hello");
}

static void test_extensions(void **state) {
    (void)state;
    expect_body("5;a\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=b\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=b;c;d=e\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;name=\"quoted ; \\\" = \\\\ \t value\"\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=\"\"\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=\"\x80\xff\"\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=\"\\\x80\"\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;!#$%&'*+-.^_`|~=!#$%&'*+-.^_`|~\r\nhello\r\n0\r\n\r\n", "hello");
    /* BWS around ';' and '=' (RFC 9112 7.1.1) */
    expect_body("5 ;a\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5\t; \ta \t= \t\"v\" \t; b\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=b ;c=\"d\"\t;e\r\nhello\r\n0\r\n\r\n", "hello");
    /* on the last chunk too */
    expect_body("0;x=y\r\n\r\n", "");
    expect_body("5\r\nhello\r\n0 ; last=\"yes\"\r\nX: y\r\n\r\n", "hello");
}

static void test_trailers(void **state) {
    (void)state;
    expect_body("5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", "hello");
    expect_body("0\r\nX-Sum: abc\r\nEmpty:\r\nSpaces:   \r\nY:\tz\t \r\n\r\n", "");
    expect_body("0\r\nX: \x80\xff obs-text\r\n\r\n", "");
    expect_body("0\r\nX:a:b:c\r\n!#$%&'*+-.^_`|~: v\r\n\r\n", "");
    expect_body("0\nX: y\nZ: w\n\n", "");
}

/* Pipelining: the body ends at the empty line after the trailers; what
 * follows is the next request's, and is not scanned. */
static void test_trailing_data(void **state) {
    (void)state;
    const char *next = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    char s[256];
    snprintf(s, sizeof s, "0\r\n\r\n%s", next);
    expect_body_n(s, 5, NULL, "", 0);
    snprintf(s, sizeof s, "5\r\nhello\r\n0\r\nX: y\r\n\r\n%s", next);
    expect_body_n(s, strlen(s) - strlen(next), NULL, "hello", 5);
    expect_body_n("0\n\nabc", 3, NULL, "", 0);
    /* even junk there: not ours */
    expect_body_n("2\r\nhi\r\n0\r\n\r\n\x01\xff\r\r", 12, NULL, "hi", 2);
    /* nor is a stray CRLF after the body */
    expect_body_n("0\r\n\r\n\r\n", 5, NULL, "", 0);
}

static void test_incomplete(void **state) {
    (void)state;
    expect_more("");
    expect_more("5");
    expect_more("5\r");
    expect_more("5\r\nhel");
    assert_int_equal(st.pos, 6);
    assert_int_equal(st.size, 3);
    expect_more("5\r\nhello");
    assert_int_equal(st.size, 5);
    expect_more("5\r\nhello\r\n");
    expect_more("5\r\nhello\r\n0\r\n");
    expect_more("5\r\nhello\r\n0\r\nX: y\r\n");
    expect_more("5\r\nhello\r\n0\r\n\r");
    expect_more("5;a=\"b");
}

/* ---- refusals ------------------------------------------------------------ */

static void test_bad_size(void **state) {
    (void)state;
    const char *not_hex[] = {
        "\r\n",        "\n",          " 5\r\nhello\r\n0\r\n\r\n",
        "x\r\n",       "-1\r\n",      "+5\r\nhello\r\n",
        "0x5\r\n",     "5x\r\n",      "5\x01\r\n",
        ";a\r\n",      "g\r\n",       "5\r\nhello\r\nhello\r\n",
        "5,5\r\n",     "\xff\r\n",    "5\r\nhello\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof not_hex / sizeof not_hex[0]; i++)
        expect_status(not_hex[i], 400, "chunk size not hex");
    expect_status("5\r\r\n", 400, "CR without LF");
    expect_status("5;a\rx", 400, "CR without LF");
    /* whitespace only before a ';' */
    expect_status("5 \r\nhello\r\n0\r\n\r\n", 400, NULL);
    expect_status("5 5\r\n", 400, NULL);
    expect_status("0 \r\n\r\n", 400, NULL);
}

/* At most 15 hex digits, leading zeros counted; the 16th is refused at
 * once (unless 413 came first). */
static void test_size_digits(void **state) {
    (void)state;
    crest_http_limits_t big = {.max_body = UINT64_MAX};
    expect_status_lim("0000000000000001\r\n", &big, 400, "chunk size over 15 hex digits");
    assert_int_equal(st.pos, 15);
    expect_status("0000000000000000\r\n\r\n", 400, "chunk size over 15 hex digits");
    expect_status_lim("1000000000000000", &big, 400, "chunk size over 15 hex digits");
    expect_status_lim("fffffffffffffff0", &big, 400, "chunk size over 15 hex digits");
    int rc = scan_lim("fffffffffffffff", 15, &big, &st);
    assert_int_equal(rc, 0);
    assert_int_equal(st.left, 0xfffffffffffffffull);
    /* the default limit proves 413 at the 7th digit */
    expect_status("1000000000000000", 413, "chunked body over the body limit");
    assert_int_equal(st.pos, 6);
}

static void test_bad_extensions(void **state) {
    (void)state;
    const char *name[] = {
        "5;\r\n",   "5;=a\r\n",  "5; \r\n",      "5;a b\r\n", "5;a \r\n",
        "5;a\x01\r\n", "5;a@\r\n", "5;;a\r\n", "5;\"a\"\r\n", "5;a\"\r\n",
    };
    for (size_t i = 0; i < sizeof name / sizeof name[0]; i++)
        expect_status(name[i], 400, "malformed chunk extension name");
    const char *value[] = {
        "5;a=\r\n",       "5;a= \r\n",        "5;a==b\r\n",    "5;a=b\x01\r\n",
        "5;a=b=c\r\n",    "5;a=\"x\r\n",      "5;a=\"x\"y\r\n", "5;a=\"\x01\"\r\n",
        "5;a=\"\\\x01\"\r\n", "5;a=b\x7f\r\n", "5;a=\"\x7f\"\r\n", "5;a=\"x\"\"\r\n",
        "5;a=\"\\\r\n\"\r\n", "5;a=@\r\n",
    };
    for (size_t i = 0; i < sizeof value / sizeof value[0]; i++)
        expect_status(value[i], 400, "malformed chunk extension value");
    /* no whitespace at the end of the line (the grammar has none) */
    expect_status("5;a=b \r\n", 400, "whitespace in a chunk size line not before ';'");
    expect_status("5;a=b c\r\n", 400, "whitespace in a chunk size line not before ';'");
    expect_status("5;a=\"b\"\t\r\n", 400, "whitespace in a chunk size line not before ';'");
}

static void test_bad_data_end(void **state) {
    (void)state;
    expect_status("5\r\nhelloX\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
    assert_int_equal(st.pos, 8);
    assert_int_equal(st.size, 5);
    expect_status("5\r\nhello\rX", 400, "chunk data not followed by CRLF");
    expect_status("5\r\nhello\r\r\n", 400, "chunk data not followed by CRLF");
    /* a size that lies: more data than it said */
    expect_status("3\r\nhello\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
    /* or less: the line-end is taken as data */
    expect_status("7\r\nhello\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
    expect_status("4\r\nhello\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
    /* one less, though, is the data "hello\r" and a bare LF (a front end
     * that wants CRLF refuses it: no two readings of one body) */
    expect_body("6\r\nhello\r\n0\r\n\r\n", "hello\r");
}

static void test_bad_trailers(void **state) {
    (void)state;
    expect_status("0\r\n X: a\r\n\r\n", 400, "folded or indented trailer line");
    expect_status("0\r\nX: a\r\n\tb\r\n\r\n", 400, "folded or indented trailer line");
    expect_status("0\r\nX : a\r\n\r\n", 400, "whitespace before the colon in a trailer");
    expect_status("0\r\nX\t: a\r\n\r\n", 400, "whitespace before the colon in a trailer");
    expect_status("0\r\nX a\r\n\r\n", 400, "whitespace before the colon in a trailer");
    expect_status("0\r\nX\r\n\r\n", 400, "malformed trailer field name");
    expect_status("0\r\n:a\r\n\r\n", 400, "malformed trailer field name");
    expect_status("0\r\n@: a\r\n\r\n", 400, "malformed trailer field name");
    expect_status("0\r\nX@: a\r\n\r\n", 400, "malformed trailer field name");
    expect_status("0\r\nX: a\x01z\r\n\r\n", 400, "control character in a trailer value");
    expect_status("0\r\nX: a\x7f\r\n\r\n", 400, "control character in a trailer value");
    assert_int_equal(scan_lim("0\r\nX: a\0\r\n\r\n", 12, NULL, &st), -EPROTO);
    assert_string_equal(st.reason, "control character in a trailer value");
    expect_status("0\r\nX: a\rb\r\n\r\n", 400, "CR without LF");
    expect_status("0\r\n\rx", 400, "CR without LF");
    expect_status("0\r\n\r\r\n", 400, "CR without LF");
}

/* Every byte value in an extension name, a quoted extension value, a
 * trailer name and a trailer value: what the RFC grammar says, nothing
 * else. */
static void test_every_byte(void **state) {
    (void)state;
    static const char extra[] = "!#$%&'*+-.^_`|~";
    static const char tmpl[] = "1;aq=\"bqc\"\r\nz\r\n0\r\naq: bqc\r\n\r\n";
    enum { EXT_NAME = 3, QUOTED = 7, TR_NAME = 19, TR_VALUE = 23 };
    size_t len = sizeof tmpl - 1;
    for (unsigned c = 0; c < 256; c++) {
        bool alnum = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
        bool token = alnum || (c != 0 && strchr(extra, (int)c) != NULL);
        bool ws = c == ' ' || c == '\t';
        bool vchar = (c > 0x20 && c < 0x7f) || c >= 0x80;
        bool qdtext = ws || (vchar && c != '"' && c != '\\');
        static const size_t at[] = {EXT_NAME, QUOTED, TR_NAME, TR_VALUE};
        /* "a =" is BWS before '='; "\c" is a quoted-pair; "a::" is a name
         * and the value ":" */
        bool ok[] = {token || ws, qdtext || c == '\\', token || c == ':', vchar || ws};
        for (size_t k = 0; k < 4; k++) {
            char s[sizeof tmpl];
            memcpy(s, tmpl, sizeof tmpl);
            s[at[k]] = (char)c;
            int rc = scan_lim(s, len, NULL, &st);
            if (rc != (ok[k] ? 1 : -EPROTO))
                fail_msg("byte 0x%02x at %zu: %d", c, at[k], rc);
            if (rc == -EPROTO)
                assert_int_equal(st.status, 400);
            else
                assert_int_equal(st.pos, len);
        }
    }
}

/* ---- limits -------------------------------------------------------------- */

static void test_limit_body(void **state) {
    (void)state;
    crest_http_limits_t lim = {.max_body = 10};
    /* exactly the limit */
    expect_body_n("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 25, &lim, "helloworld", 10);
    expect_body_n("a\r\nhelloworld\r\n0\r\n\r\n", 20, &lim, "helloworld", 10);
    /* one over: at the size line, before the data */
    expect_status_lim("b\r\n", &lim, 413, "chunked body over the body limit");
    assert_int_equal(st.pos, 0);
    expect_status_lim("5\r\nhello\r\n6\r\n", &lim, 413, "chunked body over the body limit");
    assert_int_equal(st.pos, 10);
    assert_int_equal(st.size, 5);
    /* the digit that proves it decides, whatever follows */
    expect_status_lim("5\r\nhello\r\n10x", &lim, 413, NULL);
    assert_int_equal(st.pos, 11);
    expect_status_lim("0010\r\n", &lim, 413, NULL);
    assert_int_equal(st.pos, 3);
    expect_status_lim("ffffffffffffffffff", &lim, 413, NULL);
    assert_int_equal(st.pos, 0);
    /* a zero-size chunk adds nothing */
    expect_body_n("a\r\nhelloworld\r\n00\r\n\r\n", 21, &lim, "helloworld", 10);
    /* the largest limit: no wrap anywhere */
    crest_http_limits_t big = {.max_body = UINT64_MAX};
    int rc = scan_lim("fffffffffffffff\r\nab", 19, &big, &st);
    assert_int_equal(rc, 0);
    assert_int_equal(st.size, 2);
    assert_int_equal(st.left, 0xfffffffffffffffull - 2);
}

/* The default limit, 1 MiB, with the data there. */
static void test_limit_body_default(void **state) {
    (void)state;
    size_t n = CREST_HTTP_DEFAULT_MAX_BODY;
    size_t len = 8 + n + 7;
    uint8_t *b = malloc(len + 16);
    assert_non_null(b);
    memcpy(b, "100000\r\n", 8);
    for (size_t i = 0; i < n; i++)
        b[8 + i] = (uint8_t)(i * 7);
    memcpy(b + 8 + n, "\r\n0\r\n\r\n", 7);
    /* fed in 4 KiB reads, as a socket would */
    crest_http_chunked_t s = {0};
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < len;) {
        k = k + 4096 < len ? k + 4096 : len;
        rc = crest_http_chunked_scan(b, k, NULL, &s);
    }
    assert_int_equal(rc, 1);
    assert_int_equal(s.pos, len);
    assert_int_equal(s.size, n);
    assert_int_equal(crest_http_chunked_copy(b, len, b), n);
    for (size_t i = 0; i < n; i++)
        if (b[i] != (uint8_t)(i * 7))
            fail_msg("byte %zu", i);
    /* one more chunk of one byte: 413 at its size */
    memcpy(b, "100000\r\n", 8);
    memcpy(b + 8 + n, "\r\n1\r\nx\r\n0\r\n\r\n", 13);
    memset(&s, 0, sizeof s);
    assert_int_equal(crest_http_chunked_scan(b, len + 6, NULL, &s), -EPROTO);
    assert_int_equal(s.status, 413);
    assert_int_equal(s.pos, 8 + n + 2);
    assert_int_equal(s.size, n);
    free(b);
    expect_status("100001\r\n", 413, "chunked body over the body limit");
    expect_more("100000\r\n");
}

/* The size line, extensions included, is at most 1 KiB (its line-end
 * excluded). */
static void test_limit_size_line(void **state) {
    (void)state;
    size_t max = CREST_HTTP_MAX_CHUNK_LINE;
    /* Room for the three lines below; of a size the compiler sees (with
     * malloc, gcc's -Warray-bounds misreads the strcpy calls under
     * -fsanitize=address at -O2). */
    static char s[4 * CREST_HTTP_MAX_CHUNK_LINE + 128];
    /* "1;aaa...a" of exactly max bytes */
    memset(s, 'a', max);
    s[0] = '1';
    s[1] = ';';
    strcpy(s + max, "\r\nz\r\n0\r\n\r\n");
    expect_body_n(s, max + 10, NULL, "z", 1);
    strcpy(s + max, "\nz\n0\n\n");
    expect_body_n(s, max + 6, NULL, "z", 1);
    /* one more byte */
    memset(s, 'a', max + 1);
    s[0] = '1';
    s[1] = ';';
    strcpy(s + max + 1, "\r\nz\r\n0\r\n\r\n");
    expect_status(s, 400, "chunk size line too long");
    assert_int_equal(st.pos, max);
    /* on the last chunk too, with a quoted value */
    memset(s, 'a', max + 1);
    memcpy(s, "0;a=\"", 5);
    s[max - 1] = '"';
    strcpy(s + max, "\r\n\r\n");
    expect_body_n(s, max + 4, NULL, "", 0);
    s[max - 1] = 'a';
    s[max] = '"';
    strcpy(s + max + 1, "\r\n\r\n");
    expect_status(s, 400, "chunk size line too long");
    /* the limit is per line */
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        memset(s + n, 'b', max);
        s[n] = '1';
        s[n + 1] = ';';
        n += max;
        memcpy(s + n, "\r\nz\r\n", 5);
        n += 5;
    }
    strcpy(s + n, "0\r\n\r\n");
    expect_body_n(s, n + 5, NULL, "zzz", 3);
}

/* The trailer section (field lines and the empty line) is limited by
 * max_header_bytes: 431, as the header section is. */
static void test_limit_trailers(void **state) {
    (void)state;
    crest_http_limits_t lim = {.max_header_bytes = 16};
    /* 14 + 2 = 16 bytes */
    expect_body_n("2\r\nhi\r\n0\r\nX: 012345678\r\n\r\n", 26, &lim, "hi", 2);
    expect_status_lim("2\r\nhi\r\n0\r\nX: 0123456789\r\n\r\n", &lim, 431,
                      "trailer section too large");
    assert_int_equal(st.pos, 10 + 16);
    /* the empty line counts */
    lim.max_header_bytes = 2;
    expect_body_n("0\r\n\r\n", 5, &lim, "", 0);
    expect_status_lim("0\r\nX:\r\n\r\n", &lim, 431, NULL);
    lim.max_header_bytes = 1;
    expect_status_lim("0\r\n\r\n", &lim, 431, NULL);
    expect_body_n("0\n\n", 3, &lim, "", 0);
    /* the limit proves it before the syntax does */
    lim.max_header_bytes = 4;
    expect_status_lim("0\r\nX: a\x01\r\n\r\n", &lim, 431, NULL);
    expect_status_lim("0\r\nX:\x01\r\n\r\n", &lim, 400, NULL);

    /* the default: 16 KiB */
    size_t max = CREST_HTTP_DEFAULT_MAX_HEADER_BYTES;
    char *s = malloc(max + 64);
    assert_non_null(s);
    memcpy(s, "0\r\nX: ", 6);
    memset(s + 6, 'v', max - 7);
    strcpy(s + 3 + max - 4, "\r\n\r\n");
    expect_body_n(s, 3 + max, NULL, "", 0);
    memset(s + 6, 'v', max - 6);
    strcpy(s + 3 + max - 3, "\r\n\r\n");
    expect_status(s, 431, "trailer section too large");
    free(s);
}

/* ---- answers, arguments, copy -------------------------------------------- */

static void test_answer_is_final(void **state) {
    (void)state;
    const uint8_t *b = (const uint8_t *)"0\r\n\r\nmore";
    crest_http_chunked_t s = {0};
    assert_int_equal(crest_http_chunked_scan(b, 9, NULL, &s), 1);
    crest_http_chunked_t done = s;
    assert_int_equal(crest_http_chunked_scan(b, 9, NULL, &s), 1);
    assert_int_equal(crest_http_chunked_scan(b, 5, NULL, &s), 1);
    assert_memory_equal(&s, &done, sizeof s);

    b = (const uint8_t *)"x\r\n0\r\n\r\n";
    memset(&s, 0, sizeof s);
    assert_int_equal(crest_http_chunked_scan(b, 8, NULL, &s), -EPROTO);
    crest_http_chunked_t failed = s;
    assert_int_equal(crest_http_chunked_scan(b, 8, NULL, &s), -EPROTO);
    assert_memory_equal(&s, &failed, sizeof s);
}

static void test_invalid_args(void **state) {
    (void)state;
    const uint8_t *b = (const uint8_t *)"0\r\n\r\n";
    crest_http_chunked_t s = {0};
    assert_int_equal(crest_http_chunked_scan(b, 5, NULL, NULL), -EINVAL);
    assert_int_equal(crest_http_chunked_scan(NULL, 1, NULL, &s), -EINVAL);
    assert_int_equal(crest_http_chunked_scan(NULL, 0, NULL, &s), 0);
    crest_http_limits_t lim = {.max_headers = CREST_HTTP_MAX_HEADERS + 1};
    assert_int_equal(crest_http_chunked_scan(b, 5, &lim, &s), -EINVAL);
    /* a state the scanner never made */
    s.state = -1;
    assert_int_equal(crest_http_chunked_scan(b, 5, NULL, &s), -EINVAL);
    s.state = 1000;
    assert_int_equal(crest_http_chunked_scan(b, 5, NULL, &s), -EINVAL);
    /* a buffer shorter than what was scanned */
    memset(&s, 0, sizeof s);
    assert_int_equal(crest_http_chunked_scan(b, 2, NULL, &s), 0);
    assert_int_equal(crest_http_chunked_scan(b, 1, NULL, &s), -EINVAL);
    assert_int_equal(crest_http_chunked_scan(b, 5, NULL, &s), 1);
    /* the same limits the head parser takes */
    lim.max_headers = CREST_HTTP_MAX_HEADERS;
    memset(&s, 0, sizeof s);
    assert_int_equal(crest_http_chunked_scan(b, 5, &lim, &s), 1);
    assert_int_equal(crest_http_chunked_copy(NULL, 5, (uint8_t[1]){0}), 0);
    assert_int_equal(crest_http_chunked_copy(b, 5, NULL), 0);
}

/* copy never reads past the buffer, whatever it holds (valgrind checks
 * the exact-size copies). */
static void test_copy_bounds(void **state) {
    (void)state;
    static const char *const in[] = {
        "", "5", "5\r", "5\r\nab", "5\r\nhello", "5\r\nhello\r", "5\r\nhellox",
        "zz", "5;a=\"b\r\nhello", "fffffffffffffffff\r\nab", "1\r\nx\r\n1\r\n",
    };
    static const size_t want[] = {0, 0, 0, 2, 5, 5, 5, 0, 5, 2, 1};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        size_t len = strlen(in[i]);
        uint8_t *b = malloc(len ? len : 1);
        uint8_t *dst = malloc(len ? len : 1);
        assert_non_null(b);
        assert_non_null(dst);
        memcpy(b, in[i], len);
        assert_int_equal(crest_http_chunked_copy(b, len, dst), want[i]);
        free(dst);
        free(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_chunk),
        cmocka_unit_test(test_many_chunks),
        cmocka_unit_test(test_empty_body),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_extensions),
        cmocka_unit_test(test_trailers),
        cmocka_unit_test(test_trailing_data),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_bad_size),
        cmocka_unit_test(test_size_digits),
        cmocka_unit_test(test_bad_extensions),
        cmocka_unit_test(test_bad_data_end),
        cmocka_unit_test(test_bad_trailers),
        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_limit_body),
        cmocka_unit_test(test_limit_body_default),
        cmocka_unit_test(test_limit_size_line),
        cmocka_unit_test(test_limit_trailers),
        cmocka_unit_test(test_answer_is_final),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_copy_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
