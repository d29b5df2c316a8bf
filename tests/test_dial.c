/* crest_connect() to a name: resolved by a real dnsmasq on loopback, then
 * connected with Happy Eyeballs.
 *
 *   one.test   127.0.0.1
 *   both.test  127.0.0.1 and ::1
 *   nx.test    does not exist
 *
 * Exits 77 without dnsmasq, c-ares or IPv6 loopback. */
#include "crest_test.h"

#include "config.h"
#include "dnsmasq.h"

/* ---- the target --------------------------------------------------------- */

static char got_data[64];
static size_t got_len;

static ssize_t srv_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    if (got_len + n <= sizeof got_data) {
        memcpy(got_data + got_len, d, n);
        got_len += n;
    }
    return (ssize_t)n;
}

static const crest_handler_t srv_handler = {.on_data = srv_data, .name = "srv"};

/* ---- the client ---------------------------------------------------------- */

struct cli {
    int opened, closed;
    crest_close_reason_t reason;
    int err;
    char peer[CREST_ADDR_STRLEN];
};

static void cli_open(crest_conn_t *c) {
    struct cli *k = crest_conn_handler_ctx(c);
    k->opened++;
    crest_conn_peer(c, k->peer, sizeof k->peer);
}

static ssize_t cli_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    (void)c;
    (void)d;
    return (ssize_t)n;
}

static void cli_close(crest_conn_t *c, crest_close_reason_t r, int err) {
    struct cli *k = crest_conn_handler_ctx(c);
    k->closed++;
    k->reason = r;
    k->err = err;
}

static const crest_handler_t cli_handler = {
    .on_open = cli_open, .on_data = cli_data, .on_close = cli_close, .name = "cli"};

static crest_resolver_t *resolver(crest_loop_t *loop, const char *servers, uint32_t timeout_ms) {
    crest_resolver_opts_t o = {.servers = servers, .timeout_ms = timeout_ms, .tries = 1};
    crest_resolver_t *r;
    assert_int_equal(crest_resolver_create(loop, &o, &r), 0);
    return r;
}

static crest_conn_opts_t copts(crest_resolver_t *r) {
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    o.resolver = r;
    o.connect_timeout_ms = 10000;
    o.happy_eyeballs_delay_ms = 50;
    return o;
}

static int listen_on(crest_loop_t *loop, const char *addr) {
    crest_listener_t *l;
    int rc = crest_listen(loop, addr, NULL, &srv_handler, NULL, &l);
    return rc < 0 ? rc : crest_listener_port(l);
}

static void finish(crest_loop_t *loop, crest_resolver_t *r) {
    crest_resolver_destroy(r);
    tu_spin(loop, 5);
    tu_destroy_loop(loop);
}

/* ---- tests --------------------------------------------------------------- */

static void test_name_connects(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = resolver(loop, dns_servers, 2000);
    int port = listen_on(loop, "127.0.0.1:0");
    char target[64];
    snprintf(target, sizeof target, "one.test:%d", port);
    crest_conn_opts_t o = copts(r);
    struct cli k = {0};
    crest_conn_t *c;
    got_len = 0;
    assert_int_equal(crest_connect(loop, target, &o, &cli_handler, &k, &c), 0);
    assert_int_equal(crest_conn_state(c), CREST_CONN_CONNECTING);
    char buf[CREST_ADDR_STRLEN];
    assert_true(crest_conn_peer(c, buf, sizeof buf) < 0); /* no socket yet */
    /* Written before the connect: delivered once it is made. */
    assert_int_equal(crest_conn_write(c, "hello", 5), 0);
    RUN_UNTIL(loop, k.opened == 1 && got_len == 5);
    assert_memory_equal(got_data, "hello", 5);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    assert_string_equal(k.peer, want);
    crest_conn_tcp_info_t ti;
    assert_int_equal(crest_conn_get_tcp_info(c, &ti), 0); /* the real socket */
    crest_conn_close(c);
    RUN_UNTIL(loop, k.closed == 1);
    assert_int_equal(k.reason, CREST_CLOSE_LOCAL);
    finish(loop, r);
}

static void test_nxdomain(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = resolver(loop, dns_servers, 2000);
    crest_conn_opts_t o = copts(r);
    struct cli k = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, "nx.test:80", &o, &cli_handler, &k, &c), 0);
    assert_int_equal(k.closed, 0); /* never inside the call */
    RUN_UNTIL(loop, k.closed == 1);
    assert_int_equal(k.opened, 0);
    assert_int_equal(k.reason, CREST_CLOSE_RESOLVE_FAILED);
    assert_int_equal(k.err, ENOENT);
    assert_true(tu_log_line_has("connect nx.test", "resolve nx.test", "not found"));
    assert_string_equal(crest_close_reason_name(CREST_CLOSE_RESOLVE_FAILED), "resolve failed");
    assert_string_equal(crest_close_reason_key(CREST_CLOSE_RESOLVE_FAILED), "resolve_failed");
    finish(loop, r);
}

static void test_resolver_timeout_and_connect_timeout(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint16_t port = 0;
    int silent = bind_udp(0, &port);
    assert_true(silent >= 0);
    char servers[32];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", port);
    /* The lookup times out first: RESOLVE_FAILED, ETIMEDOUT. */
    crest_resolver_t *r = resolver(loop, servers, 100);
    crest_conn_opts_t o = copts(r);
    struct cli k = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, "one.test:80", &o, &cli_handler, &k, &c), 0);
    RUN_UNTIL(loop, k.closed == 1);
    assert_int_equal(k.reason, CREST_CLOSE_RESOLVE_FAILED);
    assert_int_equal(k.err, ETIMEDOUT);
    crest_resolver_destroy(r);
    /* The connect timeout first: it covers the lookup, which is dropped. */
    r = resolver(loop, servers, 5000);
    o = copts(r);
    o.connect_timeout_ms = 100;
    struct cli k2 = {0};
    assert_int_equal(crest_connect(loop, "one.test:80", &o, &cli_handler, &k2, &c), 0);
    RUN_UNTIL(loop, k2.closed == 1);
    assert_int_equal(k2.reason, CREST_CLOSE_CONNECT_TIMEOUT);
    tu_spin(loop, 5);
    close(silent);
    finish(loop, r);
}

/* Which family does the resolver give first for both.test? */
static int first_family_of_both;
static bool first_done;
static void on_first(int status, const crest_resolve_answer_t *a, void *arg) {
    (void)arg;
    assert_int_equal(status, 0);
    assert_int_equal(a->count, 2);
    first_family_of_both = a->addrs[0].ss.ss_family;
    first_done = true;
}

/* A listener on addr:port that answers no SYN: backlog 0 and its accept
 * queue filled, so further SYNs are dropped (the connect hangs). */
static int stalled_listener(int family, int port, int fill[2]) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        in->sin_port = htons((uint16_t)port);
        len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        int on = 1;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        in6->sin6_port = htons((uint16_t)port);
        len = sizeof *in6;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 0) < 0) {
        close(fd);
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        (void)connect(fill[i], (struct sockaddr *)&ss, len);
    }
    tu_sleep_ms(20);
    return fd;
}

static void test_happy_eyeballs(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = resolver(loop, dns_servers, 2000);
    first_done = false;
    assert_int_equal(crest_resolve(r, "both.test", 1, AF_UNSPEC, on_first, NULL, NULL), 0);
    RUN_UNTIL(loop, first_done);
    int first = first_family_of_both;
    int other = first == AF_INET ? AF_INET6 : AF_INET;
    const char *other_any = other == AF_INET ? "127.0.0.1" : "[::1]";

    /* 1. The first address refuses: the other wins at once. */
    char addr[64];
    snprintf(addr, sizeof addr, "%s:0", other_any);
    int port = listen_on(loop, addr);
    assert_true(port > 0);
    char target[64];
    snprintf(target, sizeof target, "both.test:%d", port);
    crest_conn_opts_t o = copts(r);
    o.happy_eyeballs_delay_ms = 60000; /* only a failure moves on */
    struct cli k = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, target, &o, &cli_handler, &k, &c), 0);
    RUN_UNTIL(loop, k.opened == 1 || k.closed == 1);
    assert_int_equal(k.opened, 1);
    char want[64];
    snprintf(want, sizeof want, "%s:%d", other_any, port);
    assert_string_equal(k.peer, want);
    crest_conn_close(c);
    RUN_UNTIL(loop, k.closed == 1);

    /* 2. The first address answers no SYN: after the delay the other
     * family is tried and wins; the stalled attempt is closed. */
    int fill[2] = {-1, -1};
    int stalled = stalled_listener(first, port, fill);
    if (stalled < 0) {
        finish(loop, r);
        skip();
    }
    o.happy_eyeballs_delay_ms = 50;
    struct cli k2 = {0};
    assert_int_equal(crest_connect(loop, target, &o, &cli_handler, &k2, &c), 0);
    RUN_UNTIL(loop, k2.opened == 1 || k2.closed == 1);
    assert_int_equal(k2.opened, 1);
    assert_string_equal(k2.peer, want);
    /* Outbound fds: the connection's only, no attempt left open. */
    tu_spin(loop, 3);
    crest_fd_counts_t fc;
    crest_fd_counts(CREST_FD_CONNECT, &fc);
    assert_int_equal(fc.open, 1);
    crest_conn_close(c);
    RUN_UNTIL(loop, k2.closed == 1);

    /* 3. Aborted during the race: every attempt closed, on_close once. */
    struct cli k3 = {0};
    o.happy_eyeballs_delay_ms = 60000;
    tu_spin(loop, 5);
    assert_int_equal(crest_connect(loop, target, &o, &cli_handler, &k3, &c), 0);
    for (int i = 0; i < 20; i++)
        assert_true(crest_loop_run_once(loop, 5) >= 0);
    assert_int_equal(k3.opened, 0); /* still stuck on the first address */
    crest_conn_abort(c);
    RUN_UNTIL(loop, k3.closed == 1);
    assert_int_equal(k3.reason, CREST_CLOSE_ABORT);
    tu_spin(loop, 3);
    crest_fd_counts(CREST_FD_CONNECT, &fc);
    assert_int_equal(fc.open, 0);
    close(fill[0]);
    close(fill[1]);
    close(stalled);
    tu_spin(loop, 5);
    finish(loop, r);
}

static void test_close_while_resolving_and_loop_destroy(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint16_t port = 0;
    int silent = bind_udp(0, &port);
    char servers[32];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", port);
    crest_resolver_t *r = resolver(loop, servers, 5000);
    crest_conn_opts_t o = copts(r);
    struct cli k = {0}, k2 = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, "one.test:80", &o, &cli_handler, &k, &c), 0);
    tu_spin(loop, 2);
    crest_conn_close(c);
    RUN_UNTIL(loop, k.closed == 1);
    assert_int_equal(k.reason, CREST_CLOSE_LOCAL);
    assert_int_equal(k.opened, 0);
    crest_resolver_destroy(r);
    /* The loop's own resolver (pointed at the silent server: a test never
     * asks the machine's DNS servers): made once, destroyed with the loop;
     * a connect still resolving when the loop goes is closed with it. */
    crest_resolver_opts_t ro = {.servers = servers, .timeout_ms = 5000, .tries = 1};
    assert_int_equal(crest_loop_set_resolver(loop, &ro), 0);
    assert_int_equal(crest_loop_set_resolver(loop, &ro), -EBUSY);
    crest_resolver_t *own1, *own2;
    assert_int_equal(crest_loop_resolver(loop, &own1), 0);
    assert_int_equal(crest_loop_resolver(loop, &own2), 0);
    assert_ptr_equal(own1, own2);
    o.resolver = NULL;
    assert_int_equal(crest_connect(loop, "one.test:80", &o, &cli_handler, &k2, &c), 0);
    tu_spin(loop, 2);
    assert_int_equal(crest_loop_destroy(loop), 0);
    assert_int_equal(k2.closed, 1);
    assert_int_equal(k2.reason, CREST_CLOSE_SHUTDOWN);
    close(silent);
    tu_assert_nothing_open();
}

static void test_bad_targets(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    struct cli k = {0};
    crest_conn_t *c;
    assert_int_equal(crest_connect(loop, "one.test", NULL, &cli_handler, &k, &c), -EINVAL);
    assert_int_equal(crest_connect(loop, "one.test:0", NULL, &cli_handler, &k, &c), -EINVAL);
    assert_int_equal(crest_connect(loop, "one.test:70000", NULL, &cli_handler, &k, &c), -EINVAL);
    assert_int_equal(crest_connect(loop, "bad name:80", NULL, &cli_handler, &k, &c), -EINVAL);
    tu_spin(loop, 3);
    assert_int_equal(k.closed, 0);
    tu_destroy_loop(loop);
}

static int group_setup(void **state) {
    (void)state;
    static const char *const records[] = {"--host-record=one.test,127.0.0.1,300",
                                           "--host-record=both.test,127.0.0.1,::1,300", NULL};
    if (dns_start(records) < 0) {
        dns_stop();
        fprintf(stderr, "test_dial: dnsmasq did not start\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    dns_stop();
    return 0;
}

int main(void) {
#ifndef HAVE_CARES
    printf("test_dial: built without c-ares: skipped\n");
    return 77;
#endif
    if (!find_dnsmasq()) {
        printf("test_dial: no dnsmasq: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        tu_test(test_bad_targets),
        tu_test(test_name_connects),
        tu_test(test_nxdomain),
        tu_test(test_resolver_timeout_and_connect_timeout),
        tu_test(test_happy_eyeballs),
        tu_test(test_close_while_resolving_and_loop_destroy),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
