/* The PROXY protocol: the header parser on its own (v1 and v2, split at
 * every byte, malformed input), and listeners that expect it, over real
 * loopback connections: on_open runs after the header, crest_conn_peer()
 * names the client the header gave, data after the header is delivered
 * intact, and a missing or bad header closes with PROTOCOL_ERROR. */
#include "crest_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A v2 PROXY header for TCP over IPv4 with one TLV, into buf. */
static size_t v2_tcp4(uint8_t *buf, const char *src, uint16_t sport, const char *dst,
                      uint16_t dport) {
    memcpy(buf, v2_sig, 12);
    buf[12] = 0x21; /* version 2, PROXY */
    buf[13] = 0x11; /* INET, STREAM */
    size_t body = 12 + 5; /* addresses + a 5-byte TLV */
    buf[14] = (uint8_t)(body >> 8);
    buf[15] = (uint8_t)body;
    struct in_addr a;
    inet_pton(AF_INET, src, &a);
    memcpy(buf + 16, &a, 4);
    inet_pton(AF_INET, dst, &a);
    memcpy(buf + 20, &a, 4);
    uint16_t p = htons(sport);
    memcpy(buf + 24, &p, 2);
    p = htons(dport);
    memcpy(buf + 26, &p, 2);
    memcpy(buf + 28, "\x04\x00\x02hi", 5); /* a NOOP TLV, skipped */
    return 16 + body;
}

static void assert_addr(const crest_addr_t *a, const char *want) {
    char text[CREST_ADDR_STRLEN];
    assert_true(crest_addr_format(a, text, sizeof text) > 0);
    assert_string_equal(text, want);
}

static void test_parse_v1(void **state) {
    (void)state;
    const char *h = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET";
    size_t len = strlen(h), hdr = len - 3;
    crest_proxy_info_t info;
    size_t used;
    const char *why = NULL;
    /* Every prefix of the header asks for more; the whole one parses. */
    for (size_t n = 0; n < hdr; n++)
        assert_int_equal(crest_proxy_parse((const uint8_t *)h, n, CREST_PROXY_ANY, &info, &used,
                                           &why),
                         0);
    assert_int_equal(crest_proxy_parse((const uint8_t *)h, len, CREST_PROXY_V1, &info, &used, &why),
                     1);
    assert_int_equal(used, hdr);
    assert_int_equal(info.version, 1);
    assert_true(info.has_addr);
    assert_addr(&info.src, "192.0.2.7:56324");
    assert_addr(&info.dst, "198.51.100.1:443");

    const char *h6 = "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
    assert_int_equal(crest_proxy_parse((const uint8_t *)h6, strlen(h6), CREST_PROXY_V1, &info,
                                       &used, &why),
                     1);
    assert_addr(&info.src, "[2001:db8::1]:1");
    assert_addr(&info.dst, "[::1]:65535");

    const char *unk = "PROXY UNKNOWN whatever follows\r\n";
    assert_int_equal(crest_proxy_parse((const uint8_t *)unk, strlen(unk), CREST_PROXY_V1, &info,
                                       &used, &why),
                     1);
    assert_false(info.has_addr);
    assert_int_equal(used, strlen(unk));
}

static void test_parse_v1_malformed(void **state) {
    (void)state;
    const char *bad[] = {
        "GET / HTTP/1.1\r\n",                               /* no header at all */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",               /* protocol */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",                 /* a field missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",             /* a field too many */
        "PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",             /* address */
        "PROXY TCP4 ::1 ::1 1 2\r\n",                       /* IPv6 under TCP4 */
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",           /* port */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",              /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                 /* LF without CR */
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",              /* double space */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        crest_proxy_info_t info;
        size_t used;
        const char *why = NULL;
        assert_int_equal(crest_proxy_parse((const uint8_t *)bad[i], strlen(bad[i]), CREST_PROXY_ANY,
                                           &info, &used, &why),
                         -EPROTO);
        assert_non_null(why);
    }
    /* 107 bytes without an end of line is too long for v1. */
    char longh[200] = "PROXY TCP4 ";
    memset(longh + 11, '1', sizeof longh - 12);
    longh[sizeof longh - 1] = '\0';
    crest_proxy_info_t info;
    size_t used;
    const char *why = NULL;
    assert_int_equal(crest_proxy_parse((const uint8_t *)longh, 107, CREST_PROXY_V1, &info, &used,
                                       &why),
                     -EPROTO);
    /* A version the listener does not accept is a missing header. */
    uint8_t v2[64];
    size_t n = v2_tcp4(v2, "198.51.100.3", 1000, "198.51.100.4", 80);
    assert_int_equal(crest_proxy_parse(v2, n, CREST_PROXY_V1, &info, &used, &why), -EPROTO);
    assert_string_equal(why, "missing PROXY header");
}

static void test_parse_v2(void **state) {
    (void)state;
    uint8_t buf[64];
    size_t n = v2_tcp4(buf, "203.0.113.9", 40000, "192.0.2.1", 7000);
    crest_proxy_info_t info;
    size_t used;
    const char *why = NULL;
    for (size_t k = 0; k < n; k++)
        assert_int_equal(crest_proxy_parse(buf, k, CREST_PROXY_ANY, &info, &used, &why), 0);
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_V2, &info, &used, &why), 1);
    assert_int_equal(used, n);
    assert_int_equal(info.version, 2);
    assert_addr(&info.src, "203.0.113.9:40000");
    assert_addr(&info.dst, "192.0.2.1:7000");

    /* LOCAL: the balancer's own health check, no address. */
    buf[12] = 0x20;
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_V2, &info, &used, &why), 1);
    assert_false(info.has_addr);

    /* Malformed: version, command, truncated addresses, datagram. */
    buf[12] = 0x31;
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_V2, &info, &used, &why), -EPROTO);
    buf[12] = 0x22;
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_V2, &info, &used, &why), -EPROTO);
    buf[12] = 0x21;
    buf[13] = 0x12;
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_V2, &info, &used, &why), -EPROTO);
    buf[13] = 0x11;
    buf[14] = 0;
    buf[15] = 8; /* fewer than the 12 address bytes */
    assert_int_equal(crest_proxy_parse(buf, 24, CREST_PROXY_V2, &info, &used, &why), -EPROTO);
    buf[6] = 'X'; /* the signature */
    assert_int_equal(crest_proxy_parse(buf, n, CREST_PROXY_ANY, &info, &used, &why), -EPROTO);
}

/* ---- listeners that expect the header ---------------------------------- */

struct srv {
    int opened, closed;
    crest_close_reason_t reason;
    char peer[CREST_ADDR_STRLEN];
    char sock_peer[CREST_ADDR_STRLEN];
    char got[64];
    size_t got_len;
    bool done;
};

static void srv_open(crest_conn_t *c) {
    struct srv *s = crest_conn_handler_ctx(c);
    s->opened++;
    crest_conn_peer(c, s->peer, sizeof s->peer);
    crest_conn_socket_peer(c, s->sock_peer, sizeof s->sock_peer);
}

static ssize_t srv_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    struct srv *s = crest_conn_handler_ctx(c);
    assert_int_equal(s->opened, 1); /* never data before on_open */
    memcpy(s->got + s->got_len, d, n < sizeof s->got - s->got_len ? n : sizeof s->got - s->got_len);
    s->got_len += n;
    if (s->got_len >= 5)
        crest_conn_close(c);
    return (ssize_t)n;
}

static void srv_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    struct srv *s = crest_conn_handler_ctx(c);
    s->closed++;
    s->reason = reason;
    s->done = true;
}

static const crest_handler_t srv_handler = {
    .on_open = srv_open, .on_data = srv_data, .on_close = srv_close};

static int client_to(crest_listener_t *l) {
    char addr[CREST_ADDR_STRLEN];
    crest_listener_address(l, addr, sizeof addr);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)crest_listener_port(l))};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    return fd;
}

/* Send the header and payload one byte per iteration, then run to close. */
static void drive(crest_loop_t *loop, crest_listener_t *l, struct srv *s, const uint8_t *bytes,
                  size_t len, bool bytewise) {
    int fd = client_to(l);
    for (size_t i = 0; i < len; i += bytewise ? 1 : len) {
        size_t n = bytewise ? 1 : len;
        assert_int_equal(send(fd, bytes + i, n, MSG_NOSIGNAL), (ssize_t)n);
        crest_loop_run_once(loop, 0);
        crest_loop_run_once(loop, 0);
    }
    tu_run_until(loop, &s->done, 500, 10);
    close(fd);
}

static void test_listener_v1_v2(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.proxy_protocol = CREST_PROXY_ANY;
    struct srv s;
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &o, &srv_handler, &s, &l), 0);

    for (int bytewise = 0; bytewise < 2; bytewise++) {
        memset(&s, 0, sizeof s);
        const char *v1 = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nhello";
        drive(loop, l, &s, (const uint8_t *)v1, strlen(v1), bytewise);
        assert_int_equal(s.opened, 1);
        assert_int_equal(s.closed, 1);
        assert_int_equal(s.reason, CREST_CLOSE_LOCAL);
        assert_string_equal(s.peer, "192.0.2.7:56324");
        assert_memory_equal(s.sock_peer, "127.0.0.1:", 10);
        assert_int_equal(s.got_len, 5);
        assert_memory_equal(s.got, "hello", 5);

        memset(&s, 0, sizeof s);
        uint8_t v2[64];
        size_t n = v2_tcp4(v2, "203.0.113.9", 40000, "192.0.2.1", 7000);
        memcpy(v2 + n, "world", 5);
        drive(loop, l, &s, v2, n + 5, bytewise);
        assert_int_equal(s.opened, 1);
        assert_string_equal(s.peer, "203.0.113.9:40000");
        assert_memory_equal(s.got, "world", 5);
    }
    crest_listener_close(l);
    tu_destroy_loop(loop);
}

static void test_listener_rejects_missing_header(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.proxy_protocol = CREST_PROXY_V2;
    struct srv s;
    memset(&s, 0, sizeof s);
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &o, &srv_handler, &s, &l), 0);
    tu_log_clear();
    const char *plain = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nhello"; /* v1: not accepted */
    drive(loop, l, &s, (const uint8_t *)plain, strlen(plain), false);
    assert_int_equal(s.opened, 0);
    assert_int_equal(s.closed, 1);
    assert_int_equal(s.reason, CREST_CLOSE_PROTOCOL_ERROR);
    assert_true(tu_log_contains("PROXY header: missing PROXY header"));
    assert_int_equal(s.got_len, 0);

    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.close_reasons[CREST_CLOSE_PROTOCOL_ERROR], 1);
    crest_buf_stats_t b;
    crest_loop_buf_stats(loop, &b);
    assert_int_equal(b.in_use, 0);
    crest_listener_close(l);
    tu_destroy_loop(loop);
}

/* crest_proxy_v2_header() round trips through crest_proxy_parse(): IPv4
 * and IPv6 as PROXY with both addresses, NULL and mixed families as
 * LOCAL (no address), and a buffer too small refused. */
static void test_v2_writer_round_trip(void **state) {
    (void)state;
    const char *pairs[][2] = {{"192.0.2.7:40000", "127.0.0.1:7100"},
                              {"[2001:db8::1]:1234", "[::1]:443"}};
    for (size_t i = 0; i < 2; i++) {
        crest_addr_t src, dst;
        assert_int_equal(crest_addr_parse(pairs[i][0], &src), 0);
        assert_int_equal(crest_addr_parse(pairs[i][1], &dst), 0);
        uint8_t buf[64];
        int n = crest_proxy_v2_header(buf, sizeof buf, &src, &dst);
        assert_int_equal(n, i == 0 ? 28 : 52);
        crest_proxy_info_t info;
        size_t used = 0;
        const char *why = NULL;
        assert_int_equal(crest_proxy_parse(buf, (size_t)n, CREST_PROXY_V2, &info, &used, &why), 1);
        assert_int_equal(used, (size_t)n);
        assert_int_equal(info.version, 2);
        assert_true(info.has_addr);
        char text[CREST_ADDR_STRLEN];
        assert_true(crest_addr_format(&info.src, text, sizeof text) > 0);
        assert_string_equal(text, pairs[i][0]);
        assert_true(crest_addr_format(&info.dst, text, sizeof text) > 0);
        assert_string_equal(text, pairs[i][1]);
        /* One byte short: refused, nothing claimed. */
        assert_int_equal(crest_proxy_v2_header(buf, (size_t)n - 1, &src, &dst), -ENOSPC);
    }
    crest_addr_t v4, v6;
    assert_int_equal(crest_addr_parse("127.0.0.9:1", &v4), 0);
    assert_int_equal(crest_addr_parse("[::1]:2", &v6), 0);
    const crest_addr_t *local[][2] = {{NULL, NULL}, {&v4, &v6}, {&v6, &v4}};
    for (size_t i = 0; i < 3; i++) {
        uint8_t buf[64];
        int n = crest_proxy_v2_header(buf, sizeof buf, local[i][0], local[i][1]);
        assert_int_equal(n, 16);
        crest_proxy_info_t info;
        size_t used = 0;
        const char *why = NULL;
        assert_int_equal(crest_proxy_parse(buf, 16, CREST_PROXY_V2, &info, &used, &why), 1);
        assert_int_equal(used, 16);
        assert_false(info.has_addr);
    }
    assert_int_equal(crest_proxy_v2_header(NULL, 64, NULL, NULL), -EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_parse_v1),
        tu_test(test_parse_v1_malformed),
        tu_test(test_parse_v2),
        tu_test(test_v2_writer_round_trip),
        tu_test(test_listener_v1_v2),
        tu_test(test_listener_rejects_missing_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
