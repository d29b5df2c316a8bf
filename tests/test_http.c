/* Tests for the HTTP/1.1 request-head parser (include/crest/http.h).
 *
 * Every case goes through parse(), which parses the whole input and then
 * every prefix of it, each in its own exact-size heap copy (so that a read
 * past the end shows under valgrind): the prefixes must answer -EAGAIN
 * until the first one that answers, and that one and every longer one
 * must answer what the whole input does (the same status, consumed and
 * fields, at the same offsets). */
#include "crest_test.h"

#include <crest/http.h>

/* ---- helpers ------------------------------------------------------------ */

static uint8_t g_buf[65536 + 256];
static size_t g_len;

static size_t off(const uint8_t *base, crest_http_str_t s) {
    return s.ptr ? (size_t)((const uint8_t *)s.ptr - base) : SIZE_MAX;
}

/* a and b (parsed from copies at base_a and base_b) say the same. */
static void same_request(const crest_http_request_t *a, const uint8_t *base_a,
                         const crest_http_request_t *b, const uint8_t *base_b) {
    assert_int_equal(a->method, b->method);
    assert_int_equal(off(base_a, a->method_token), off(base_b, b->method_token));
    assert_int_equal(a->method_token.len, b->method_token.len);
    assert_int_equal(off(base_a, a->target), off(base_b, b->target));
    assert_int_equal(a->target.len, b->target.len);
    assert_int_equal(a->version_minor, b->version_minor);
    assert_int_equal(a->header_count, b->header_count);
    for (size_t i = 0; i < a->header_count; i++) {
        assert_int_equal(off(base_a, a->headers[i].name), off(base_b, b->headers[i].name));
        assert_int_equal(a->headers[i].name.len, b->headers[i].name.len);
        assert_int_equal(off(base_a, a->headers[i].value), off(base_b, b->headers[i].value));
        assert_int_equal(a->headers[i].value.len, b->headers[i].value.len);
    }
    assert_int_equal(a->host.len, b->host.len);
    if (a->host.len)
        assert_int_equal(off(base_a, a->host), off(base_b, b->host));
    assert_int_equal(a->content_length, b->content_length);
    assert_int_equal(a->has_content_length, b->has_content_length);
    assert_int_equal(a->chunked, b->chunked);
    assert_int_equal(a->keep_alive, b->keep_alive);
    assert_int_equal(a->expect_continue, b->expect_continue);
}

/* Every slice of a complete request lies inside the head. */
static void slices_inside(const crest_http_request_t *r, const uint8_t *base, size_t consumed) {
    crest_http_str_t all[4 + 2 * CREST_HTTP_MAX_HEADERS];
    size_t n = 0;
    all[n++] = r->method_token;
    all[n++] = r->target;
    all[n++] = r->host;
    for (size_t i = 0; i < r->header_count; i++) {
        all[n++] = r->headers[i].name;
        all[n++] = r->headers[i].value;
    }
    for (size_t i = 0; i < n; i++) {
        if (!all[i].ptr) {
            assert_int_equal(all[i].len, 0);
            continue;
        }
        assert_true((const uint8_t *)all[i].ptr >= base);
        assert_true(off(base, all[i]) + all[i].len <= consumed);
    }
}

/* Parse d[0..len) whole and split at every byte; returns the answer and
 * leaves the request in *out, its slices pointing into g_buf. */
static int parse_lim(const void *d, size_t len, const crest_http_limits_t *lim,
                     crest_http_request_t *out, size_t *consumed) {
    assert_true(len <= sizeof g_buf);
    memcpy(g_buf, d, len);
    g_len = len;
    memset(out, 0xa5, sizeof *out);
    *consumed = 12345;
    int rc = crest_http_parse_head(g_buf, len, lim, out, consumed);
    assert_true(rc == 0 || rc == -EAGAIN || rc == -EPROTO);
    if (rc == 0) {
        assert_true(*consumed > 0 && *consumed <= len);
        assert_int_equal(out->status, 0);
        assert_null(out->reason);
        slices_inside(out, g_buf, *consumed);
    } else {
        assert_int_equal(*consumed, 0);
    }
    if (rc == -EPROTO) {
        assert_true(out->status >= 400);
        assert_non_null(out->reason);
    }

    static crest_http_request_t r;
    bool answered = false;
    for (size_t k = 0; k <= len; k++) {
        uint8_t *copy = malloc(k ? k : 1);
        assert_non_null(copy);
        memcpy(copy, d, k);
        size_t c = 777;
        memset(&r, 0x5a, sizeof r);
        int prc = crest_http_parse_head(k ? copy : NULL, k, lim, &r, &c);
        if (prc == -EAGAIN) {
            assert_false(answered);
            assert_int_equal(c, 0);
        } else {
            answered = true;
            assert_int_equal(prc, rc);
            assert_int_equal(r.status, out->status);
            if (rc == 0) {
                assert_int_equal(c, *consumed);
                same_request(&r, copy, out, g_buf);
            }
        }
        free(copy);
    }
    assert_true(answered == (rc != -EAGAIN));
    return rc;
}

static int parse(const char *s, crest_http_request_t *out, size_t *consumed) {
    return parse_lim(s, strlen(s), NULL, out, consumed);
}

static crest_http_request_t req;
static size_t used;

static void expect_ok(const char *s) {
    int rc = parse(s, &req, &used);
    if (rc != 0)
        fail_msg("\"%s\": %d status %d (%s)", s, rc, req.status, req.reason ? req.reason : "");
    assert_int_equal(used, strlen(s));
}

static void expect_status(const char *s, int status) {
    int rc = parse(s, &req, &used);
    if (rc != -EPROTO || req.status != status)
        fail_msg("\"%s\": %d status %d, wanted %d", s, rc, rc == -EPROTO ? req.status : 0,
                 status);
}

static bool str_is(crest_http_str_t s, const char *lit) {
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

/* ---- the request line --------------------------------------------------- */

static void test_simple_get(void **state) {
    (void)state;
    expect_ok("GET /metrics?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
    assert_int_equal(req.method, CREST_HTTP_GET);
    assert_true(str_is(req.method_token, "GET"));
    assert_true(str_is(req.target, "/metrics?x=1"));
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(req.header_count, 2);
    assert_true(str_is(req.headers[0].name, "Host"));
    assert_true(str_is(req.headers[0].value, "example.com"));
    assert_true(str_is(req.headers[1].name, "Accept"));
    assert_true(str_is(req.headers[1].value, "*/*"));
    assert_true(str_is(req.host, "example.com"));
    assert_false(req.has_content_length);
    assert_int_equal(req.content_length, 0);
    assert_false(req.chunked);
    assert_true(req.keep_alive);
    assert_false(req.expect_continue);
    /* the slices point into the caller's buffer: zero copy */
    assert_ptr_equal(req.method_token.ptr, (const char *)g_buf);
}

static void test_incomplete(void **state) {
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n", &req, &used), -EAGAIN);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n\r", &req, &used), -EAGAIN);
    assert_int_equal(parse("", &req, &used), -EAGAIN);
}

static void test_bare_lf(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.1\nHost: a\n\n");
    assert_true(str_is(req.host, "a"));
    expect_ok("GET / HTTP/1.1\r\nHost: a\n\r\n");
    expect_ok("GET / HTTP/1.1\nHost: a\r\n\n");
    /* a CR not followed by LF */
    expect_status("GET / HTTP/1.1\rHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\n\rx", 400);
    expect_status("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void test_leading_empty_lines(void **state) {
    (void)state;
    expect_ok("\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(str_is(req.method_token, "GET"));
    assert_int_equal(off(g_buf, req.method_token), 3);
}

static void test_methods(void **state) {
    (void)state;
    static const struct {
        const char *name;
        crest_http_method_t m;
    } cases[] = {
        {"GET", CREST_HTTP_GET},         {"HEAD", CREST_HTTP_HEAD},
        {"POST", CREST_HTTP_POST},       {"PUT", CREST_HTTP_PUT},
        {"DELETE", CREST_HTTP_DELETE},   {"CONNECT", CREST_HTTP_CONNECT},
        {"OPTIONS", CREST_HTTP_OPTIONS}, {"TRACE", CREST_HTTP_TRACE},
        {"PATCH", CREST_HTTP_PATCH},     {"PROPFIND", CREST_HTTP_OTHER},
        {"get", CREST_HTTP_OTHER},       {"GETX", CREST_HTTP_OTHER},
        {"X-Y!#$%&'*+.^_`|~9", CREST_HTTP_OTHER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char s[128];
        snprintf(s, sizeof s, "%s * HTTP/1.1\r\nHost: a\r\n\r\n", cases[i].name);
        expect_ok(s);
        assert_int_equal(req.method, cases[i].m);
        assert_true(str_is(req.method_token, cases[i].name));
    }
}

/* Every byte value, as a method and as a field name: a token character
 * (RFC 9110 5.6.2) or 400. */
static void test_token_bytes(void **state) {
    (void)state;
    static const char extra[] = "!#$%&'*+-.^_`|~";
    for (unsigned c = 0; c < 256; c++) {
        bool t = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ||
                 (c != 0 && strchr(extra, (int)c) != NULL);
        char s[64];
        int n = snprintf(s, sizeof s, "M%c / HTTP/1.1\r\nHost: a\r\n\r\n", 'x');
        s[1] = (char)c;
        int rc = parse_lim(s, (size_t)n, NULL, &req, &used);
        if (t) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -EPROTO);
            assert_int_equal(req.status, 400);
        }
        n = snprintf(s, sizeof s, "GET / HTTP/1.1\r\nHost: a\r\nX%c: b\r\n\r\n", 'x');
        s[26] = (char)c;
        rc = parse_lim(s, (size_t)n, NULL, &req, &used);
        if (t || c == ':') {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -EPROTO);
            assert_int_equal(req.status, 400);
        }
    }
}

static void test_bad_request_line(void **state) {
    (void)state;
    expect_status("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);  /* two SP */
    expect_status("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET\r\n\r\n", 400);
    expect_status("GET /\r\n\r\n", 400);                 /* HTTP/0.9 */
    expect_status("GET / \r\n\r\n", 400);
    expect_status("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    expect_status("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/11.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400);
    expect_status("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400); /* TLS */
}

static void test_versions(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.0\r\n\r\n");
    assert_int_equal(req.version_minor, 0);
    assert_int_equal(req.header_count, 0);
    expect_status("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
    expect_status("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    expect_status("GET / HTTP/0.9\r\n\r\n", 505);
    expect_status("GET / HTTP/3.0\r\n\r\n", 505);
    /* the HTTP/2 connection preface */
    expect_status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
}

/* ---- header fields ------------------------------------------------------ */

static void test_fields(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.1\r\nhOsT:\t  a b \t \r\nX-Empty:\r\nX-Ows:   \r\n"
              "X-Obs: \x80\xff\r\n\r\n");
    assert_int_equal(req.header_count, 4);
    assert_true(str_is(req.headers[0].name, "hOsT"));
    assert_true(str_is(req.headers[0].value, "a b"));
    assert_true(str_is(req.host, "a b"));
    assert_int_equal(req.headers[1].value.len, 0);
    assert_int_equal(req.headers[2].value.len, 0);
    assert_true(str_is(req.headers[3].value, "\x80\xff"));
    /* names are matched case-insensitively */
    expect_ok("POST / HTTP/1.1\r\nHOST: a\r\ncontent-LENGTH: 5\r\nCONNECTION: ClOsE\r\n\r\n");
    assert_true(req.has_content_length);
    assert_int_equal(req.content_length, 5);
    assert_false(req.keep_alive);
}

static void test_bad_fields(void **state) {
    (void)state;
    /* obs-fold */
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 400);
    /* whitespace after the request line */
    expect_status("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    /* whitespace before the colon (RFC 9112 5.1) */
    expect_status("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
    /* names */
    expect_status("GET / HTTP/1.1\r\n: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX\x80: b\r\n\r\n", 400);
    /* control bytes in values */
    expect_status("GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\x01 b\r\n\r\n", 400);
}

static void test_fields_with_nul(void **state) {
    (void)state;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    assert_int_equal(parse_lim(s, sizeof s - 1, NULL, &req, &used), -EPROTO);
    assert_int_equal(req.status, 400);
}

/* ---- framing ------------------------------------------------------------ */

static void test_content_length(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_true(req.has_content_length);
    assert_int_equal(req.content_length, 0);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n");
    assert_int_equal(req.content_length, 42);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42 , 42\r\n\r\n");
    assert_int_equal(req.content_length, 42);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0007\r\n\r\n");
    assert_int_equal(req.content_length, 7);

    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                  400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ,\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
                  400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                  400);
    /* fits 64 bits, over the body limit */
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
                  413);
}

static void test_transfer_encoding(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(req.chunked);
    assert_false(req.has_content_length);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  CHUNKED \r\n\r\n");
    assert_true(req.chunked);

    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                  501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n",
                  400);
    /* request smuggling: both framings */
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n",
                  400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  "Content-Length: 5\r\n\r\n",
                  400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                  "Content-Length: 5\r\n\r\n",
                  400);
    /* Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1) */
    expect_status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

/* ---- connection, host, expect ------------------------------------------- */

static void test_keep_alive(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(req.keep_alive);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_false(req.keep_alive);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
    assert_false(req.keep_alive);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: ,close,\r\n\r\n");
    assert_false(req.keep_alive);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, x-close\r\n\r\n");
    assert_true(req.keep_alive);
    expect_ok("GET / HTTP/1.0\r\n\r\n");
    assert_false(req.keep_alive);
    expect_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_true(req.keep_alive);
    expect_ok("GET / HTTP/1.0\r\nConnection: upgrade , keep-alive\r\n\r\n");
    assert_true(req.keep_alive);
    expect_ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
    assert_false(req.keep_alive);
    expect_ok("GET / HTTP/1.0\r\nConnection: keep-alived\r\n\r\n");
    assert_false(req.keep_alive);
}

static void test_host(void **state) {
    (void)state;
    expect_status("GET / HTTP/1.1\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    expect_ok("GET / HTTP/1.0\r\n\r\n");
    assert_int_equal(req.host.len, 0);
    expect_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n"); /* empty: allowed (RFC 9110 7.2) */
    assert_int_equal(req.host.len, 0);
}

static void test_expect(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert_true(req.expect_continue);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n");
    assert_true(req.expect_continue);
    expect_ok("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
    assert_false(req.expect_continue);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", 417);
}

/* ---- pipelining --------------------------------------------------------- */

static void test_pipelined(void **state) {
    (void)state;
    static const char two[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                              "POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi"
                              "GET /c HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n";
    size_t len = sizeof two - 1;
    assert_int_equal(parse_lim(two, len, NULL, &req, &used), 0);
    assert_int_equal(used, strlen("GET /a HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_true(str_is(req.target, "/a"));

    size_t at = used;
    assert_int_equal(parse_lim(two + at, len - at, NULL, &req, &used), 0);
    assert_true(str_is(req.target, "/b"));
    assert_int_equal(req.content_length, 2);
    assert_true(str_is((crest_http_str_t){(const char *)g_buf + used, 2}, "hi"));
    at += used + 2;
    assert_int_equal(parse_lim(two + at, len - at, NULL, &req, &used), 0);
    assert_true(str_is(req.target, "/c"));
    assert_false(req.keep_alive);
    assert_int_equal(at + used, len);

    /* an error in the second request does not touch the first */
    static const char bad[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nX : y\r\n\r\n";
    assert_int_equal(parse_lim(bad, sizeof bad - 1, NULL, &req, &used), 0);
    assert_int_equal(parse_lim(bad + used, sizeof bad - 1 - used, NULL, &req, &used), -EPROTO);
    assert_int_equal(req.status, 400);
}

/* ---- limits ------------------------------------------------------------- */

/* "GET /xxx HTTP/1.1" of exactly n bytes (n >= 16), ending ending. */
static size_t request_line(char *s, size_t n, const char *ending) {
    memcpy(s, "GET /", 5);
    memset(s + 5, 'x', n - 14);
    memcpy(s + n - 9, " HTTP/1.1", 9);
    strcpy(s + n, ending);
    strcat(s, "Host: a\r\n\r\n");
    return strlen(s);
}

static void test_limit_request_line(void **state) {
    (void)state;
    static char s[512];
    crest_http_limits_t lim = {.max_request_line = 100};
    const char *endings[] = {"\r\n", "\n"};
    for (size_t e = 0; e < 2; e++) {
        size_t len = request_line(s, 100, endings[e]);
        assert_int_equal(parse_lim(s, len, &lim, &req, &used), 0);
        assert_int_equal(req.target.len, 100 - 13);
        len = request_line(s, 101, endings[e]);
        assert_int_equal(parse_lim(s, len, &lim, &req, &used), -EPROTO);
        assert_int_equal(req.status, 414);
    }
    /* leading empty lines count */
    s[0] = '\r';
    s[1] = '\n';
    size_t len = request_line(s + 2, 98, "\r\n") + 2;
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), 0);
    len = request_line(s + 2, 99, "\r\n") + 2;
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 414);
    /* endless empty lines end too */
    memset(s, '\n', 200);
    assert_int_equal(parse_lim(s, 200, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 414);
    /* a line with no end is refused as soon as it is too long */
    memset(s, 'A', 200);
    assert_int_equal(parse_lim(s, 101, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 414);
    assert_int_equal(parse_lim(s, 100, &lim, &req, &used), -EAGAIN);
}

static void test_limit_request_line_default(void **state) {
    (void)state;
    static char s[CREST_HTTP_DEFAULT_MAX_REQUEST_LINE + 64];
    size_t len = request_line(s, CREST_HTTP_DEFAULT_MAX_REQUEST_LINE, "\r\n");
    /* whole only: every split of 8 KiB is quadratic; the splits are
     * covered with the small limit above */
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len, NULL, &req, &used), 0);
    len = request_line(s, CREST_HTTP_DEFAULT_MAX_REQUEST_LINE + 1, "\r\n");
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len, NULL, &req, &used), -EPROTO);
    assert_int_equal(req.status, 414);
}

/* A head whose header section is exactly n bytes: "Host: a\r\n", then
 * "X: yyy\r\n" padding, then "\r\n" (n >= 13). */
static size_t header_section(char *s, size_t n) {
    size_t len = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    size_t pad = n - 9 - 5 - 2;
    memset(s + len, 'y', pad);
    len += pad;
    memcpy(s + len, "\r\n\r\n", 5);
    return len + 4;
}

static void test_limit_header_bytes(void **state) {
    (void)state;
    static char s[512];
    crest_http_limits_t lim = {.max_header_bytes = 100};
    size_t len = header_section(s, 100);
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), 0);
    assert_int_equal(used - strlen("GET / HTTP/1.1\r\n"), 100);
    len = header_section(s, 101);
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 431);
    /* endless field lines end too */
    len = (size_t)sprintf(s, "GET / HTTP/1.1\r\n");
    while (len < 300)
        len += (size_t)sprintf(s + len, "A: b\r\n");
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 431);
}

static size_t n_fields(char *s, size_t n) {
    size_t len = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (size_t i = 1; i < n; i++)
        len += (size_t)sprintf(s + len, "X%zu: %zu\r\n", i, i);
    return len + (size_t)sprintf(s + len, "\r\n");
}

static void test_limit_header_count(void **state) {
    (void)state;
    static char s[4096];
    crest_http_limits_t lim = {.max_headers = 5};
    size_t len = n_fields(s, 5);
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), 0);
    assert_int_equal(req.header_count, 5);
    len = n_fields(s, 6);
    assert_int_equal(parse_lim(s, len, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 431);
    /* the default: all of headers[] */
    len = n_fields(s, CREST_HTTP_MAX_HEADERS);
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len, NULL, &req, &used), 0);
    assert_int_equal(req.header_count, CREST_HTTP_MAX_HEADERS);
    assert_true(str_is(req.headers[CREST_HTTP_MAX_HEADERS - 1].value, "63"));
    len = n_fields(s, CREST_HTTP_MAX_HEADERS + 1);
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len, NULL, &req, &used), -EPROTO);
    assert_int_equal(req.status, 431);
}

static void test_limit_body(void **state) {
    (void)state;
    crest_http_limits_t lim = {.max_body = 1000};
    static const char at[] = "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n";
    static const char past[] = "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n";
    assert_int_equal(parse_lim(at, sizeof at - 1, &lim, &req, &used), 0);
    assert_int_equal(req.content_length, 1000);
    assert_int_equal(parse_lim(past, sizeof past - 1, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 413);
    /* the default, 1 MiB */
    expect_ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n");
    expect_status("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", 413);
}

static void test_head_max(void **state) {
    (void)state;
    crest_http_limits_t lim = {.max_request_line = 64, .max_header_bytes = 128};
    size_t max = crest_http_head_max(&lim);
    assert_int_equal(max, 64 + 2 + 128 + 1);
    assert_int_equal(crest_http_head_max(NULL), CREST_HTTP_DEFAULT_MAX_REQUEST_LINE + 2 +
                                                    CREST_HTTP_DEFAULT_MAX_HEADER_BYTES + 1);
    /* the longest head the limits allow is max - 1 bytes and parses */
    static char s[512];
    size_t len = request_line(s, 64, "\r\n");
    len = (size_t)(strstr(s, "\r\n") - s) + 2;
    size_t hlen = len;
    len += (size_t)sprintf(s + len, "Host: a\r\nX: ");
    memset(s + len, 'y', max - 1 - len - 4);
    len = max - 1 - 4;
    memcpy(s + len, "\r\n\r\n", 4);
    len += 4;
    assert_int_equal(len - hlen, 128);
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len, &lim, &req, &used), 0);
    assert_int_equal(used, max - 1);
    /* and one byte short of its end, -EAGAIN at max - 2 bytes; at max
     * bytes of an unfinished head, an answer */
    assert_int_equal(crest_http_parse_head((uint8_t *)s, len - 1, &lim, &req, &used), -EAGAIN);
    s[len - 1] = 'z';
    s[len - 2] = 'z';
    s[len] = 'z';
    assert_int_equal(crest_http_parse_head((uint8_t *)s, max, &lim, &req, &used), -EPROTO);
    assert_int_equal(req.status, 431);
    lim.max_headers = CREST_HTTP_MAX_HEADERS + 1;
    assert_int_equal(crest_http_head_max(&lim), 0);
}

static void test_invalid_args(void **state) {
    (void)state;
    const uint8_t *b = (const uint8_t *)"GET / HTTP/1.0\r\n\r\n";
    crest_http_limits_t lim = {.max_headers = CREST_HTTP_MAX_HEADERS + 1};
    assert_int_equal(crest_http_parse_head(b, 18, &lim, &req, &used), -EINVAL);
    lim.max_headers = CREST_HTTP_MAX_HEADERS;
    assert_int_equal(crest_http_parse_head(b, 18, &lim, &req, &used), 0);
    assert_int_equal(crest_http_parse_head(b, 18, NULL, NULL, &used), -EINVAL);
    assert_int_equal(crest_http_parse_head(b, 18, NULL, &req, NULL), -EINVAL);
    assert_int_equal(crest_http_parse_head(NULL, 1, NULL, &req, &used), -EINVAL);
    assert_int_equal(crest_http_parse_head(NULL, 0, NULL, &req, &used), -EAGAIN);
}

static void test_reason_phrase(void **state) {
    (void)state;
    assert_string_equal(crest_http_reason_phrase(400), "Bad Request");
    assert_string_equal(crest_http_reason_phrase(431), "Request Header Fields Too Large");
    assert_string_equal(crest_http_reason_phrase(505), "HTTP Version Not Supported");
    assert_string_equal(crest_http_reason_phrase(299), "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_token_bytes),
        cmocka_unit_test(test_bad_request_line),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_fields_with_nul),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_limit_request_line),
        cmocka_unit_test(test_limit_request_line_default),
        cmocka_unit_test(test_limit_header_bytes),
        cmocka_unit_test(test_limit_header_count),
        cmocka_unit_test(test_limit_body),
        cmocka_unit_test(test_head_max),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_reason_phrase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
