/* Tests for socket addresses as text (include/crest/addr.h). */
#include "crest_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ---- helpers ------------------------------------------------------------ */

static const struct sockaddr_in *as_in(const crest_addr_t *a) {
    return (const struct sockaddr_in *)&a->ss;
}

static const struct sockaddr_in6 *as_in6(const crest_addr_t *a) {
    return (const struct sockaddr_in6 *)&a->ss;
}

static const struct sockaddr_un *as_un(const crest_addr_t *a) {
    return (const struct sockaddr_un *)&a->ss;
}

/* format() into a buffer of CREST_ADDR_STRLEN; checks the return value is
 * the length written. */
static const char *fmt(const crest_addr_t *a, char buf[CREST_ADDR_STRLEN]) {
    int n = crest_addr_format(a, buf, CREST_ADDR_STRLEN);
    assert_true(n > 0);
    assert_true(n < CREST_ADDR_STRLEN);
    assert_int_equal((size_t)n, strlen(buf));
    return buf;
}

static void assert_parse_fails(const char *text, int want) {
    crest_addr_t a;
    memset(&a, 0x5a, sizeof a);
    crest_addr_t before = a;
    int rc = crest_addr_parse(text, &a);
    if (rc != want)
        print_error("parse(\"%s\") = %d, want %d\n", text ? text : "(null)", rc, want);
    assert_int_equal(rc, want);
    /* A failed parse leaves the output alone. */
    assert_memory_equal(&a, &before, sizeof a);
}

/* ---- parse ------------------------------------------------------------- */

static void test_parse_ipv4(void **state) {
    (void)state;
    crest_addr_t a;
    assert_int_equal(crest_addr_parse("127.0.0.1:8080", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohl(as_in(&a)->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(ntohs(as_in(&a)->sin_port), 8080);
    assert_int_equal(crest_addr_port(&a), 8080);

    assert_int_equal(crest_addr_parse("198.51.100.40:1", &a), 0);
    assert_int_equal(ntohl(as_in(&a)->sin_addr.s_addr), 0xC6336428);
    assert_int_equal(crest_addr_port(&a), 1);

    /* The extremes of the port. */
    assert_int_equal(crest_addr_parse("255.255.255.255:65535", &a), 0);
    assert_int_equal(crest_addr_port(&a), 65535);
    assert_int_equal(crest_addr_parse("0.0.0.0:0", &a), 0);
    assert_int_equal(crest_addr_port(&a), 0);
    assert_int_equal(ntohl(as_in(&a)->sin_addr.s_addr), INADDR_ANY);
}

static void test_parse_any_and_localhost(void **state) {
    (void)state;
    crest_addr_t a;
    memset(&a, 0x5a, sizeof a);
    assert_int_equal(crest_addr_parse(":8080", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohl(as_in(&a)->sin_addr.s_addr), INADDR_ANY);
    assert_int_equal(crest_addr_port(&a), 8080);
    /* The rest of the storage is zeroed, not left over. */
    const struct sockaddr_in *sin = as_in(&a);
    static const char zero[sizeof sin->sin_zero];
    assert_memory_equal(sin->sin_zero, zero, sizeof zero);

    assert_int_equal(crest_addr_parse("localhost:9000", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(ntohl(as_in(&a)->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(crest_addr_port(&a), 9000);

    assert_int_equal(crest_addr_parse(":0", &a), 0);
    assert_int_equal(crest_addr_port(&a), 0);
}

static void test_parse_ipv6(void **state) {
    (void)state;
    crest_addr_t a;
    assert_int_equal(crest_addr_parse("[::1]:8080", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_memory_equal(&as_in6(&a)->sin6_addr, &in6addr_loopback, sizeof(struct in6_addr));
    assert_int_equal(crest_addr_port(&a), 8080);
    assert_int_equal(as_in6(&a)->sin6_flowinfo, 0);
    assert_int_equal(as_in6(&a)->sin6_scope_id, 0);

    assert_int_equal(crest_addr_parse("[::]:0", &a), 0);
    assert_memory_equal(&as_in6(&a)->sin6_addr, &in6addr_any, sizeof(struct in6_addr));
    assert_int_equal(crest_addr_port(&a), 0);

    assert_int_equal(crest_addr_parse("[2001:db8::1]:443", &a), 0);
    struct in6_addr want;
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &want), 1);
    assert_memory_equal(&as_in6(&a)->sin6_addr, &want, sizeof want);
    assert_int_equal(crest_addr_port(&a), 443);

    assert_int_equal(crest_addr_parse("[::ffff:192.0.2.1]:65535", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(crest_addr_port(&a), 65535);

    assert_int_equal(
        crest_addr_parse("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", &a), 0);
}

static void test_parse_unix(void **state) {
    (void)state;
    crest_addr_t a;
    assert_int_equal(crest_addr_parse("unix:/run/x.sock", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_UNIX);
    assert_string_equal(as_un(&a)->sun_path, "/run/x.sock");
    assert_int_equal(a.len, offsetof(struct sockaddr_un, sun_path) + strlen("/run/x.sock") + 1);
    assert_int_equal(crest_addr_port(&a), -1);

    /* Relative paths are paths too. */
    assert_int_equal(crest_addr_parse("unix:x.sock", &a), 0);
    assert_string_equal(as_un(&a)->sun_path, "x.sock");

    /* The longest path that fits sun_path with its NUL, and one more. */
    size_t room = sizeof as_un(&a)->sun_path;
    char text[8 + sizeof as_un(&a)->sun_path + 2];
    strcpy(text, "unix:/");
    memset(text + 6, 'p', room - 2);
    text[6 + room - 2] = '\0';
    assert_int_equal(strlen(text + 5), room - 1);
    assert_int_equal(crest_addr_parse(text, &a), 0);
    assert_int_equal(strlen(as_un(&a)->sun_path), room - 1);
    assert_int_equal(a.len, offsetof(struct sockaddr_un, sun_path) + room);

    strcat(text, "p");
    assert_parse_fails(text, -ENAMETOOLONG);
    assert_parse_fails("unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                       -ENAMETOOLONG);
    assert_parse_fails("unix:", -EINVAL);
}

static void test_parse_rejects(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",
        /* missing port */
        "127.0.0.1", "127.0.0.1:", "localhost", "localhost:", ":", "[::1]", "[::1]:",
        /* port out of range or not a plain number */
        "127.0.0.1:65536", "127.0.0.1:99999", "127.0.0.1:4294967376",
        "127.0.0.1:99999999999999999999999999", "127.0.0.1:-1", "127.0.0.1:+80",
        "127.0.0.1: 80", "127.0.0.1:0x50", "127.0.0.1:8O", "[::1]:65536", "[::1]:-1",
        /* trailing junk */
        "127.0.0.1:80 ", "127.0.0.1:80x", "127.0.0.1:80:90", "127.0.0.1:80\n", "[::1]:80x",
        "[::1]:80]", "[::1]:80 ",
        /* leading junk, bad hosts */
        " 127.0.0.1:80", "x127.0.0.1:80", "256.1.1.1:80", "1.2.3:80", "1.2.3.4.5:80",
        "1.2.3.4 :80", "example.com:80", "localhost.:80", "local:80", "0x7f.0.0.1:80",
        "127.0.0.1.:80", "1111111111111111111111111111111111111111:80",
        /* IPv6 without brackets, or broken brackets */
        "::1:80", "::1", "2001:db8::1:443", "::", "[::1]80", "[::1:80", "::1]:80", "[]:80",
        "[:::1]:80", "[1.2.3.4]:80", "[::1%lo]:80", "[[::1]]:80", "[ ::1]:80",
        "[g::1]:80", "[::1]:",
        /* not "unix:" */
        "UNIX:/x", "unix/x", "file:/x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_parse_fails(bad[i], -EINVAL);

    crest_addr_t a;
    assert_int_equal(crest_addr_parse(NULL, &a), -EINVAL);
    assert_int_equal(crest_addr_parse("127.0.0.1:1", NULL), -EINVAL);
}

/* ---- format ------------------------------------------------------------ */

static void test_round_trip(void **state) {
    (void)state;
    static const char *const forms[] = {
        "127.0.0.1:8080", "0.0.0.0:0",     "255.255.255.255:65535", "10.0.0.1:1",
        "[::1]:8080",     "[::]:0",        "[2001:db8::1]:443",     "[fe80::1:2:3:4]:65535",
        "[::ffff:192.0.2.1]:80",           "unix:/run/x.sock",      "unix:rel/x",
        "unix:/tmp/with space:and:colons",
    };
    char buf[CREST_ADDR_STRLEN];
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        crest_addr_t a;
        assert_int_equal(crest_addr_parse(forms[i], &a), 0);
        assert_string_equal(fmt(&a, buf), forms[i]);
        /* and back again, to the same bytes */
        crest_addr_t b;
        assert_int_equal(crest_addr_parse(buf, &b), 0);
        assert_int_equal(a.len, b.len);
        assert_memory_equal(&a.ss, &b.ss, a.len);
    }

    /* Other spellings format to the canonical one. */
    static const char *const other[][2] = {
        {":8080", "0.0.0.0:8080"},
        {"localhost:1", "127.0.0.1:1"},
        {"[0:0:0:0:0:0:0:1]:80", "[::1]:80"},
        {"[2001:DB8:0::1]:80", "[2001:db8::1]:80"},
        {"127.0.0.1:00080", "127.0.0.1:80"},
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        crest_addr_t a;
        assert_int_equal(crest_addr_parse(other[i][0], &a), 0);
        assert_string_equal(fmt(&a, buf), other[i][1]);
    }

    /* The longest Unix path fits CREST_ADDR_STRLEN. */
    crest_addr_t a;
    char text[CREST_ADDR_STRLEN];
    size_t room = sizeof as_un(&a)->sun_path;
    strcpy(text, "unix:/");
    memset(text + 6, 'q', room - 2);
    text[6 + room - 2] = '\0';
    assert_int_equal(crest_addr_parse(text, &a), 0);
    assert_string_equal(fmt(&a, buf), text);
}

static void test_format_truncates(void **state) {
    (void)state;
    crest_addr_t a;
    assert_int_equal(crest_addr_parse("127.0.0.1:8080", &a), 0);
    char small[6];
    memset(small, 'x', sizeof small);
    assert_int_equal(crest_addr_format(&a, small, sizeof small), 14);
    assert_string_equal(small, "127.0");
    /* size 0: nothing written, the length still told. */
    assert_int_equal(crest_addr_format(&a, NULL, 0), 14);
    small[0] = 'x';
    assert_int_equal(crest_addr_format(&a, small, 1), 14);
    assert_int_equal(small[0], '\0');

    assert_int_equal(crest_addr_parse("unix:/run/x.sock", &a), 0);
    assert_int_equal(crest_addr_format(&a, small, sizeof small), 16);
    assert_string_equal(small, "unix:");
}

static void test_format_unsupported(void **state) {
    (void)state;
    crest_addr_t a;
    memset(&a, 0, sizeof a); /* AF_UNSPEC */
    char buf[CREST_ADDR_STRLEN];
    assert_int_equal(crest_addr_format(&a, buf, sizeof buf), -EAFNOSUPPORT);
    assert_int_equal(crest_addr_port(&a), -1);
    a.ss.ss_family = AF_NETLINK;
    a.len = sizeof(sa_family_t);
    assert_int_equal(crest_addr_format(&a, buf, sizeof buf), -EAFNOSUPPORT);
    assert_int_equal(crest_addr_port(NULL), -1);
    assert_int_equal(crest_addr_format(NULL, buf, sizeof buf), -EINVAL);
}

/* ---- with the kernel ---------------------------------------------------- */

/* An address from parse binds; what the kernel reports formats back. */
static void test_bind_and_getsockname(void **state) {
    (void)state;
    char buf[CREST_ADDR_STRLEN];
    crest_addr_t a, got;
    assert_int_equal(crest_addr_parse("127.0.0.1:0", &a), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (const struct sockaddr *)&a.ss, a.len), 0);
    memset(&got, 0, sizeof got);
    got.len = sizeof got.ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&got.ss, &got.len), 0);
    int port = crest_addr_port(&got);
    assert_true(port > 0 && port <= 65535);
    char want[32];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    assert_string_equal(fmt(&got, buf), want);
    assert_int_equal(close(fd), 0);

    /* Unix: bind to a parsed path; the kernel's name formats back. */
    char path[64], text[80];
    snprintf(path, sizeof path, "/tmp/crest-test-addr-%d.sock", (int)getpid());
    snprintf(text, sizeof text, "unix:%s", path);
    unlink(path);
    assert_int_equal(crest_addr_parse(text, &a), 0);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (const struct sockaddr *)&a.ss, a.len), 0);
    memset(&got, 0, sizeof got);
    got.len = sizeof got.ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&got.ss, &got.len), 0);
    assert_string_equal(fmt(&got, buf), text);
    assert_int_equal(crest_addr_port(&got), -1);
    assert_int_equal(close(fd), 0);
    assert_int_equal(unlink(path), 0);

    /* An unnamed socket (a socketpair end, an unbound peer). */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    memset(&got, 0, sizeof got);
    got.len = sizeof got.ss;
    assert_int_equal(getsockname(sv[0], (struct sockaddr *)&got.ss, &got.len), 0);
    assert_int_equal(crest_addr_format(&got, buf, sizeof buf), 5);
    assert_string_equal(buf, "unix:");

    /* A Linux abstract name prints as "unix:@name". */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    int n = snprintf(sun.sun_path + 1, sizeof sun.sun_path - 1, "crest-test-%d", (int)getpid());
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    assert_int_equal(bind(fd, (const struct sockaddr *)&sun, len), 0);
    memset(&got, 0, sizeof got);
    got.len = sizeof got.ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&got.ss, &got.len), 0);
    snprintf(want, sizeof want, "unix:@crest-test-%d", (int)getpid());
    assert_string_equal(fmt(&got, buf), want);

    assert_int_equal(close(fd), 0);
    assert_int_equal(close(sv[0]), 0);
    assert_int_equal(close(sv[1]), 0);
    tu_assert_nothing_open();
}

static void test_ipv6_loopback_bind(void **state) {
    (void)state;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        skip(); /* no IPv6 in this environment */
    }
    crest_addr_t a, got;
    char buf[CREST_ADDR_STRLEN];
    assert_int_equal(crest_addr_parse("[::1]:0", &a), 0);
    if (bind(fd, (const struct sockaddr *)&a.ss, a.len) != 0) {
        close(fd);
        skip(); /* ::1 not configured */
    }
    memset(&got, 0, sizeof got);
    got.len = sizeof got.ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&got.ss, &got.len), 0);
    char want[32];
    snprintf(want, sizeof want, "[::1]:%d", crest_addr_port(&got));
    assert_true(crest_addr_port(&got) > 0);
    assert_string_equal(fmt(&got, buf), want);
    assert_int_equal(close(fd), 0);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_parse_ipv4),
        tu_test(test_parse_any_and_localhost),
        tu_test(test_parse_ipv6),
        tu_test(test_parse_unix),
        tu_test(test_parse_rejects),
        tu_test(test_round_trip),
        tu_test(test_format_truncates),
        tu_test(test_format_unsupported),
        tu_test(test_bind_and_getsockname),
        tu_test(test_ipv6_loopback_bind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
