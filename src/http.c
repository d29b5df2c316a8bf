/* HTTP/1.1 request-head parser (include/crest/http.h).
 *
 * One left-to-right pass over the bytes, one byte at a time, with a small
 * state machine; no state survives a call.  Each byte is first checked
 * against the limit it counts toward, then against the syntax, so the
 * first byte that proves an error decides the answer, and a prefix of an
 * input can only answer -EAGAIN or what the whole input answers.  The
 * meaning of the fields (framing, Host, Connection, Expect) is checked
 * once the head is complete, so it cannot depend on the split either.
 *
 * Re-parsing from the start after each read costs O(head) per read; the
 * head is bounded by crest_http_head_max(), 24 KiB by default. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include <crest/http.h>

#include "http_int.h"
#include "internal.h"

/* tchar (RFC 9110 5.6.2): ALPHA DIGIT and !#$%&'*+-.^_`|~, one load per
 * byte (http_int.h: the chunked scanner uses it too). */
#define T1(c) [c] = 1
const uint8_t crest__http_tchar[256] = {
    T1('!'), T1('#'), T1('$'), T1('%'), T1('&'), T1('\''), T1('*'), T1('+'), T1('-'),
    T1('.'), T1('^'), T1('_'), T1('`'), T1('|'), T1('~'),
    T1('0'), T1('1'), T1('2'), T1('3'), T1('4'), T1('5'), T1('6'), T1('7'), T1('8'), T1('9'),
    T1('A'), T1('B'), T1('C'), T1('D'), T1('E'), T1('F'), T1('G'), T1('H'), T1('I'), T1('J'),
    T1('K'), T1('L'), T1('M'), T1('N'), T1('O'), T1('P'), T1('Q'), T1('R'), T1('S'), T1('T'),
    T1('U'), T1('V'), T1('W'), T1('X'), T1('Y'), T1('Z'),
    T1('a'), T1('b'), T1('c'), T1('d'), T1('e'), T1('f'), T1('g'), T1('h'), T1('i'), T1('j'),
    T1('k'), T1('l'), T1('m'), T1('n'), T1('o'), T1('p'), T1('q'), T1('r'), T1('s'), T1('t'),
    T1('u'), T1('v'), T1('w'), T1('x'), T1('y'), T1('z'),
};
#undef T1

static bool is_tchar(uint8_t c) {
    return crest__http_tchar[c] != 0;
}

/* field-vchar: VCHAR or obs-text. */
static bool is_fvchar(uint8_t c) {
    return (c > 0x20 && c != 0x7f);
}

static uint8_t lower(uint8_t c) {
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
}

/* s equals the lower-case literal lit, ignoring case. */
static bool str_ieq(crest_http_str_t s, const char *lit) {
    size_t n = strlen(lit);
    if (s.len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((uint8_t)s.ptr[i]) != (uint8_t)lit[i])
            return false;
    return true;
}

static bool str_eq(crest_http_str_t s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int refuse(crest_http_request_t *out, int status, const char *reason) {
    out->status = status;
    out->reason = reason;
    return -EPROTO;
}

static crest_http_method_t method_of(crest_http_str_t m) {
    static const struct {
        const char *name;
        crest_http_method_t method;
    } known[] = {
        {"GET", CREST_HTTP_GET},       {"HEAD", CREST_HTTP_HEAD},
        {"POST", CREST_HTTP_POST},     {"PUT", CREST_HTTP_PUT},
        {"DELETE", CREST_HTTP_DELETE}, {"CONNECT", CREST_HTTP_CONNECT},
        {"OPTIONS", CREST_HTTP_OPTIONS}, {"TRACE", CREST_HTTP_TRACE},
        {"PATCH", CREST_HTTP_PATCH},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (str_eq(m, known[i].name))
            return known[i].method;
    return CREST_HTTP_OTHER;
}

/* The version at the end of the request line: its minor (0 or 1), or a
 * refusal. */
static int parse_version(crest_http_str_t v, crest_http_request_t *out) {
    const char *p = v.ptr;
    if (v.len != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return refuse(out, CREST_HTTP_400, "malformed HTTP version");
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return refuse(out, CREST_HTTP_505, "HTTP version not supported");
    out->version_minor = p[7] - '0';
    return 0;
}

/* Walk a comma-separated list (RFC 9110 5.6.1: empty elements and OWS
 * around them allowed); *item gets the next non-empty element.  Returns
 * false at the end. */
static bool list_next(crest_http_str_t *rest, crest_http_str_t *item) {
    const char *p = rest->ptr, *end = rest->ptr + rest->len;
    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p == end) {
            rest->ptr = p;
            rest->len = 0;
            return false;
        }
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        item->ptr = s;
        item->len = (size_t)(e - s);
        rest->ptr = p;
        rest->len = (size_t)(end - p);
        return true;
    }
}

/* A Content-Length value (a list of equal 1*DIGIT values); into *v. */
static bool parse_content_length(crest_http_str_t s, uint64_t *v) {
    crest_http_str_t item;
    bool any = false;
    /* a list needs commas: a bare empty value or one with only OWS is bad */
    while (list_next(&s, &item)) {
        uint64_t n = 0;
        if (item.len == 0)
            return false;
        for (size_t i = 0; i < item.len; i++) {
            uint8_t c = (uint8_t)item.ptr[i];
            if (c < '0' || c > '9')
                return false;
            if (n > (UINT64_MAX - (c - '0')) / 10)
                return false;
            n = n * 10 + (c - '0');
        }
        if (any && n != *v)
            return false;
        *v = n;
        any = true;
    }
    return any;
}

/* What the fields mean, once the head is whole. */
static int check_fields(crest_http_request_t *out, uint64_t max_body) {
    size_t hosts = 0, te_fields = 0;
    bool has_cl = false, te_chunked = true, conn_close = false, conn_ka = false;
    bool expect_other = false, expect_100 = false;
    uint64_t cl = 0;

    for (size_t i = 0; i < out->header_count; i++) {
        const crest_http_header_t *h = &out->headers[i];
        if (str_ieq(h->name, "content-length")) {
            uint64_t v = 0;
            if (!parse_content_length(h->value, &v))
                return refuse(out, CREST_HTTP_400, "malformed Content-Length");
            if (has_cl && v != cl)
                return refuse(out, CREST_HTTP_400, "conflicting Content-Length");
            cl = v;
            has_cl = true;
        } else if (str_ieq(h->name, "transfer-encoding")) {
            te_fields++;
            if (!str_ieq(h->value, "chunked"))
                te_chunked = false;
        } else if (str_ieq(h->name, "host")) {
            hosts++;
            out->host = h->value;
        } else if (str_ieq(h->name, "connection")) {
            crest_http_str_t rest = h->value, item;
            while (list_next(&rest, &item)) {
                if (str_ieq(item, "close"))
                    conn_close = true;
                else if (str_ieq(item, "keep-alive"))
                    conn_ka = true;
            }
        } else if (str_ieq(h->name, "expect")) {
            if (str_ieq(h->value, "100-continue"))
                expect_100 = true;
            else
                expect_other = true;
        }
    }

    bool v11 = out->version_minor == 1;
    if (te_fields > 0) {
        if (has_cl)
            return refuse(out, CREST_HTTP_400, "both Content-Length and Transfer-Encoding");
        if (!v11)
            return refuse(out, CREST_HTTP_400, "Transfer-Encoding in an HTTP/1.0 request");
        if (te_fields > 1)
            return refuse(out, CREST_HTTP_400, "more than one Transfer-Encoding");
        if (!te_chunked)
            return refuse(out, CREST_HTTP_501, "Transfer-Encoding other than chunked");
    }
    if (v11 && hosts != 1)
        return refuse(out, CREST_HTTP_400, hosts ? "more than one Host" : "no Host");
    if (hosts > 1)
        return refuse(out, CREST_HTTP_400, "more than one Host");
    if (has_cl && cl > max_body)
        return refuse(out, CREST_HTTP_413, "Content-Length over the body limit");
    if (v11 && expect_other)
        return refuse(out, CREST_HTTP_417, "unsupported expectation");

    out->content_length = cl;
    out->has_content_length = has_cl;
    out->chunked = te_fields > 0;
    out->keep_alive = v11 ? !conn_close : (conn_ka && !conn_close);
    out->expect_continue = v11 && expect_100;
    return 0;
}

struct limits {
    size_t line, header_bytes, headers;
    uint64_t body;
};

static int limits_of(const crest_http_limits_t *lim, struct limits *l) {
    crest_http_limits_t none = {0};
    if (!lim)
        lim = &none;
    if (lim->max_headers > CREST_HTTP_MAX_HEADERS)
        return -EINVAL;
    /* kept small enough that the sum in crest_http_head_max() cannot wrap */
    if (lim->max_request_line > SIZE_MAX / 4 || lim->max_header_bytes > SIZE_MAX / 4)
        return -EINVAL;
    l->line = lim->max_request_line ? lim->max_request_line : CREST_HTTP_DEFAULT_MAX_REQUEST_LINE;
    l->header_bytes =
        lim->max_header_bytes ? lim->max_header_bytes : CREST_HTTP_DEFAULT_MAX_HEADER_BYTES;
    l->headers = lim->max_headers ? lim->max_headers : CREST_HTTP_DEFAULT_MAX_HEADERS;
    l->body = lim->max_body ? lim->max_body : CREST_HTTP_DEFAULT_MAX_BODY;
    return 0;
}

size_t crest_http_head_max(const crest_http_limits_t *lim) {
    struct limits l;
    if (limits_of(lim, &l) < 0)
        return 0;
    /* the request line (leading empty lines included) and its CRLF, then
     * the header section: the longest head; one byte more is always
     * answered */
    return l.line + 2 + l.header_bytes + 1;
}

/* Most bytes of a head sit inside a target, a field name or a field
 * value, where they change nothing but where it ends: once the byte at i
 * has been judged, these skip the run of such bytes after it, up to stop
 * (the limit that applies, or the input's end), and return the index of
 * the last byte skipped; the byte that ends the run is judged next like
 * any other (the same answers, a fraction of the instructions). */
static size_t skip_target(const uint8_t *buf, size_t i, size_t stop) {
    while (i + 1 < stop && buf[i + 1] > 0x20 && buf[i + 1] < 0x7f)
        i++;
    return i;
}

static size_t skip_name(const uint8_t *buf, size_t i, size_t stop) {
    while (i + 1 < stop && is_tchar(buf[i + 1]))
        i++;
    return i;
}

/* *value_end follows the last field-vchar (OWS after it is trimmed). */
static size_t skip_value(const uint8_t *buf, size_t i, size_t stop, size_t *value_end) {
    while (i + 1 < stop) {
        uint8_t c = buf[i + 1];
        if (is_fvchar(c))
            *value_end = i + 2;
        else if (c != ' ' && c != '\t')
            break;
        i++;
    }
    return i;
}

/* The end of what the header section may hold, within the input. */
static size_t header_stop(size_t fields, size_t header_bytes, size_t len) {
    return header_bytes < len - fields ? fields + header_bytes : len;
}

enum state {
    S_START,      /* before the request line: empty lines skipped */
    S_START_CR,   /* a CR of an empty line before the request line */
    S_METHOD,
    S_TARGET0,    /* the first byte of the target */
    S_TARGET,
    S_VERSION,
    S_LINE_CR,    /* the CR ending the request line */
    S_FIELD,      /* the first byte of a field line, or the empty line */
    S_NAME,
    S_OWS,        /* after the colon, before the value */
    S_VALUE,
    S_FIELD_CR,   /* the CR ending a field line */
    S_END_CR      /* the CR of the empty line ending the head */
};

int crest_http_parse_head(const uint8_t *buf, size_t len, const crest_http_limits_t *lim,
                          crest_http_request_t *out, size_t *consumed) {
    struct limits l;
    if (!out || !consumed || (!buf && len > 0) || limits_of(lim, &l) < 0)
        return -EINVAL;
    *consumed = 0;
    out->status = 0;
    out->reason = NULL;
    out->header_count = 0;
    out->host = (crest_http_str_t){NULL, 0};

    const char *s = (const char *)buf;
    enum state st = S_START;
    size_t mark = 0;        /* start of the token being read */
    size_t fields = 0;      /* where the header section starts */
    size_t name_end = 0, value_start = 0, value_end = 0;
    crest_http_str_t version = {NULL, 0};

    for (size_t i = 0; i < len; i++) {
        uint8_t c = buf[i];

        /* limits first: the byte counts toward the request line (its
         * ending excluded) or toward the header section */
        if (st <= S_VERSION) {
            if (i >= l.line && !(st != S_START && (c == '\r' || c == '\n')))
                return refuse(out, CREST_HTTP_414, "request line too long");
        } else if (st >= S_FIELD && i - fields >= l.header_bytes) {
            return refuse(out, CREST_HTTP_431, "header section too large");
        }

        switch (st) {
        case S_START:
            if (c == '\r') {
                st = S_START_CR;
            } else if (c == '\n') {
                /* an empty line: skipped */
            } else if (is_tchar(c)) {
                mark = i;
                st = S_METHOD;
            } else {
                return refuse(out, CREST_HTTP_400, "malformed method");
            }
            break;
        case S_START_CR:
            if (c != '\n')
                return refuse(out, CREST_HTTP_400, "CR without LF");
            st = S_START;
            break;
        case S_METHOD:
            if (c == ' ') {
                out->method_token = (crest_http_str_t){s + mark, i - mark};
                st = S_TARGET0;
            } else if (!is_tchar(c)) {
                return refuse(out, CREST_HTTP_400, "malformed method");
            }
            break;
        case S_TARGET0:
        case S_TARGET:
            if (c == ' ' && st == S_TARGET) {
                out->target = (crest_http_str_t){s + mark, i - mark};
                mark = i + 1;
                st = S_VERSION;
            } else if (c > 0x20 && c < 0x7f) {
                if (st == S_TARGET0)
                    mark = i;
                st = S_TARGET;
                i = skip_target(buf, i, len < l.line ? len : l.line);
            } else {
                return refuse(out, CREST_HTTP_400, "malformed request target");
            }
            break;
        case S_VERSION:
            if (c == '\r' || c == '\n') {
                version = (crest_http_str_t){s + mark, i - mark};
                int rc = parse_version(version, out);
                if (rc < 0)
                    return rc;
                if (c == '\r') {
                    st = S_LINE_CR;
                } else {
                    fields = i + 1;
                    st = S_FIELD;
                }
            } else if (!(c > 0x20 && c < 0x7f)) {
                return refuse(out, CREST_HTTP_400, "malformed HTTP version");
            }
            break;
        case S_LINE_CR:
            if (c != '\n')
                return refuse(out, CREST_HTTP_400, "CR without LF");
            fields = i + 1;
            st = S_FIELD;
            break;
        case S_FIELD:
            if (c == '\r') {
                st = S_END_CR;
            } else if (c == '\n') {
                goto done;
            } else if (c == ' ' || c == '\t') {
                return refuse(out, CREST_HTTP_400, "folded or indented field line");
            } else if (out->header_count >= l.headers) {
                return refuse(out, CREST_HTTP_431, "too many header fields");
            } else if (is_tchar(c)) {
                mark = i;
                st = S_NAME;
                i = skip_name(buf, i, header_stop(fields, l.header_bytes, len));
            } else {
                return refuse(out, CREST_HTTP_400, "malformed field name");
            }
            break;
        case S_NAME:
            if (c == ':') {
                name_end = i;
                st = S_OWS;
            } else if (c == ' ' || c == '\t') {
                return refuse(out, CREST_HTTP_400, "whitespace before the colon");
            } else if (!is_tchar(c)) {
                return refuse(out, CREST_HTTP_400, "malformed field name");
            }
            break;
        case S_OWS:
        case S_VALUE: {
            if (c == ' ' || c == '\t') {
                break;
            } else if (is_fvchar(c)) {
                if (st == S_OWS)
                    value_start = i;
                value_end = i + 1;
                st = S_VALUE;
                i = skip_value(buf, i, header_stop(fields, l.header_bytes, len), &value_end);
                break;
            } else if (c != '\r' && c != '\n') {
                return refuse(out, CREST_HTTP_400, "control character in a field value");
            }
            if (st == S_OWS)
                value_start = value_end = i;
            crest_http_header_t *h = &out->headers[out->header_count++];
            h->name = (crest_http_str_t){s + mark, name_end - mark};
            h->value = (crest_http_str_t){s + value_start, value_end - value_start};
            st = c == '\r' ? S_FIELD_CR : S_FIELD;
            break;
        }
        case S_FIELD_CR:
            if (c != '\n')
                return refuse(out, CREST_HTTP_400, "CR without LF");
            st = S_FIELD;
            break;
        case S_END_CR:
            if (c != '\n')
                return refuse(out, CREST_HTTP_400, "CR without LF");
        done: {
            out->method = method_of(out->method_token);
            int rc = check_fields(out, l.body);
            if (rc < 0)
                return rc;
            *consumed = i + 1;
            return 0;
        }
        }
    }
    return -EAGAIN;
}

const char *crest_http_reason_phrase(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}
