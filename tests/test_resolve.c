/* crest_resolve: names through c-ares against a real dnsmasq on loopback.
 *
 * The group setup starts dnsmasq on 127.0.0.1 and a free port with only the
 * records below (--no-resolv --no-hosts, everything under .test local, so
 * an unknown name is NXDOMAIN), and the teardown stops it by PID.  Without
 * dnsmasq (Debian: dnsmasq) or without c-ares the program exits 77 (skip),
 * after the literal-address checks that need neither.
 *
 *   a.test      127.0.0.2, TTL 300
 *   short.test  127.0.0.3, TTL 1   (expires during the test)
 *   nx.test     does not exist
 */
#include "crest_test.h"


#include "config.h"

#ifdef HAVE_CARES
static const bool have_cares = true;
#else
static const bool have_cares = false;
#endif

#include "dnsmasq.h"

static int group_setup(void **state)
{
    (void)state;
    static const char *const records[] = {"--host-record=a.test,127.0.0.2,300",
                                           "--host-record=short.test,127.0.0.3,1", NULL};
    if (dns_start(records) < 0) {
        dns_stop();
        fprintf(stderr, "test_resolve: dnsmasq did not start\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    dns_stop();
    return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

struct result {
    bool done;
    int calls;
    int status;
    size_t count;
    int from_cache;
    crest_addr_t addr0;
    uint32_t ttl0;
    char reason[256];
};

static void on_resolved(int status, const crest_resolve_answer_t *a, void *arg)
{
    struct result *res = arg;
    res->calls++;
    res->done = true;
    res->status = status;
    res->count = a->count;
    res->from_cache = a->from_cache;
    if (a->count) {
        res->addr0 = a->addrs[0];
        res->ttl0 = a->ttl_s[0];
    }
    snprintf(res->reason, sizeof(res->reason), "%s", a->reason);
}

static crest_resolver_t *make_resolver(crest_loop_t *loop, const char *servers,
                                       uint32_t timeout_ms, uint32_t tries)
{
    crest_resolver_opts_t o = {.servers = servers, .timeout_ms = timeout_ms, .tries = tries,
                               .cache_max = 8, .negative_ttl_ms = 60000};
    crest_resolver_t *r = NULL;
    assert_int_equal(crest_resolver_create(loop, &o, &r), 0);
    return r;
}

/* Resolve and run the loop until the answer; no callback inside the call. */
static void resolve_wait(crest_loop_t *loop, crest_resolver_t *r, const char *name, int family,
                         struct result *res)
{
    memset(res, 0, sizeof(*res));
    assert_int_equal(crest_resolve(r, name, 80, family, on_resolved, res, NULL), 0);
    assert_int_equal(res->calls, 0);
    tu_run_until(loop, &res->done, 1000, 100);
    assert_true(res->done);
    assert_int_equal(res->calls, 1);
}

static const char *fmt(const crest_addr_t *a, char buf[CREST_ADDR_STRLEN])
{
    assert_true(crest_addr_format(a, buf, CREST_ADDR_STRLEN) > 0);
    return buf;
}

static crest_resolver_stats_t stats_of(const crest_resolver_t *r)
{
    crest_resolver_stats_t s;
    crest_resolver_get_stats(r, &s);
    return s;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_literals(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    /* A server that is never asked: literals need no query. */
    crest_resolver_t *r = make_resolver(loop, "127.0.0.1:9", 200, 1);
    struct result res;
    char buf[CREST_ADDR_STRLEN];
    resolve_wait(loop, r, "127.0.0.1", AF_UNSPEC, &res);
    assert_int_equal(res.status, 0);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.1:80");
    resolve_wait(loop, r, "[::1]", AF_UNSPEC, &res);
    assert_int_equal(res.status, 0);
    assert_string_equal(fmt(&res.addr0, buf), "[::1]:80");
    resolve_wait(loop, r, "localhost", AF_INET, &res);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.count, 1);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.1:80");
    resolve_wait(loop, r, "::1", AF_INET, &res);
    assert_int_equal(res.status, -ENOENT);
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.queries, 0);
    assert_int_equal(s.literals, 4);
    assert_int_equal(crest_resolve(r, "", 80, AF_UNSPEC, on_resolved, &res, NULL), -EINVAL);
    assert_int_equal(crest_resolve(r, "x", 80, 12345, on_resolved, &res, NULL), -EINVAL);
    if (!have_cares) /* built without c-ares: names fail at once, no callback */
        assert_int_equal(crest_resolve(r, "a.test", 80, AF_INET, on_resolved, &res, NULL),
                         -ENOTSUP);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

static void test_name_then_cache_hit(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 2);
    struct result res;
    char buf[CREST_ADDR_STRLEN];
    resolve_wait(loop, r, "a.test", AF_INET, &res);
    if (res.status != 0) print_error("reason: %s\n", res.reason);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.count, 1);
    assert_int_equal(res.from_cache, 0);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.2:80");
    assert_true(res.ttl0 > 0 && res.ttl0 <= 300);
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.queries, 1);
    assert_int_equal(s.cache_hits, 0);
    assert_int_equal(s.cache_entries, 1);
    assert_int_equal(s.resolve_ns.count, 1);

    resolve_wait(loop, r, "A.TEST", AF_INET, &res); /* names are case-blind */
    assert_int_equal(res.status, 0);
    assert_int_equal(res.from_cache, 1);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.2:80");
    s = stats_of(r);
    assert_int_equal(s.queries, 1);
    assert_int_equal(s.cache_hits, 1);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

static void test_ttl_expiry(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 2);
    struct result res;
    char buf[CREST_ADDR_STRLEN];
    resolve_wait(loop, r, "short.test", AF_INET, &res);
    assert_int_equal(res.status, 0);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.3:80");
    assert_int_equal(res.ttl0, 1);
    assert_int_equal(stats_of(r).cache_entries, 1);
    tu_sleep_ms(1100); /* past the 1 s TTL */
    crest_loop_update_time(loop);
    resolve_wait(loop, r, "short.test", AF_INET, &res);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.from_cache, 0);
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.queries, 2);
    assert_int_equal(s.cache_hits, 0);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

static void test_nxdomain_negative_cache(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 2);
    struct result res;
    resolve_wait(loop, r, "nx.test", AF_INET, &res);
    assert_int_equal(res.status, -ENOENT);
    assert_int_equal(res.count, 0);
    assert_non_null(strstr(res.reason, "nx.test"));
    assert_non_null(strstr(res.reason, "not found"));
    resolve_wait(loop, r, "nx.test", AF_INET, &res);
    assert_int_equal(res.status, -ENOENT);
    assert_int_equal(res.from_cache, 1);
    assert_non_null(strstr(res.reason, "nx.test"));
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.queries, 1);
    assert_int_equal(s.failures, 1);
    assert_int_equal(s.negative_hits, 1);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

static void test_timeout(void **state)
{
    (void)state;
    uint16_t port = 0;
    int silent = bind_udp(0, &port); /* bound, never read: no answer */
    assert_true(silent >= 0);
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", port);
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, servers, 200, 2);
    struct result res;
    resolve_wait(loop, r, "a.test", AF_INET, &res);
    assert_int_equal(res.status, -ETIMEDOUT);
    assert_non_null(strstr(res.reason, "a.test"));
    assert_non_null(strstr(res.reason, "imeout"));
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.failures, 1);
    assert_int_equal(s.cache_entries, 0); /* a timeout is not cached */
    crest_resolver_destroy(r);
    close(silent);
    tu_destroy_loop(loop);
}

static void test_cancel(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 2);
    struct result q = {0}, lit = {0};
    crest_resolve_req_t *req = NULL;
    assert_int_equal(crest_resolve(r, "a.test", 80, AF_INET, on_resolved, &q, &req), 0);
    assert_non_null(req);
    crest_resolve_cancel(req);
    assert_int_equal(crest_resolve(r, "127.0.0.1", 80, AF_INET, on_resolved, &lit, &req), 0);
    crest_resolve_cancel(req);
    /* The query still completes (and fills the cache), silently. */
    for (int i = 0; i < 1000 && stats_of(r).cache_entries == 0; i++)
        assert_true(crest_loop_run_once(loop, 100) >= 0);
    assert_int_equal(stats_of(r).cache_entries, 1);
    tu_spin(loop, 5);
    assert_int_equal(q.calls, 0);
    assert_int_equal(lit.calls, 0);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

static void test_destroy_pending(void **state)
{
    (void)state;
    uint16_t port = 0;
    int silent = bind_udp(0, &port);
    assert_true(silent >= 0);
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", port);
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, servers, 5000, 3);
    struct result a = {0}, b = {0}, c = {0}, hit = {0};
    crest_resolve_req_t *req = NULL;
    assert_int_equal(crest_resolve(r, "a.test", 80, AF_INET, on_resolved, &a, NULL), 0);
    assert_int_equal(crest_resolve(r, "b.test", 80, AF_UNSPEC, on_resolved, &b, NULL), 0);
    assert_int_equal(crest_resolve(r, "c.test", 80, AF_INET, on_resolved, &c, &req), 0);
    assert_int_equal(crest_resolve(r, "localhost", 80, AF_INET, on_resolved, &hit, NULL), 0);
    crest_resolve_cancel(req);
    tu_spin(loop, 3); /* the queries are out */
    assert_int_equal(a.calls + b.calls + c.calls, 0);
    assert_int_equal(hit.calls, 1);
    crest_resolver_destroy(r);
    assert_int_equal(a.calls + b.calls, 0); /* not inside destroy */
    tu_spin(loop, 3);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, -ECANCELED);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, -ECANCELED);
    assert_int_equal(c.calls, 0);
    close(silent);
    tu_destroy_loop(loop);
}

/* cache_max bounds the entries; the least recently used goes first. */
static void test_lru_eviction(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_opts_t o = {.servers = dns_servers, .cache_max = 2};
    crest_resolver_t *r = NULL;
    assert_int_equal(crest_resolver_create(loop, &o, &r), 0);
    struct result res;
    resolve_wait(loop, r, "a.test", AF_INET, &res);     /* query 1 */
    assert_int_equal(res.status, 0);
    resolve_wait(loop, r, "nx.test", AF_INET, &res);    /* query 2, negative */
    assert_int_equal(res.status, -ENOENT);
    resolve_wait(loop, r, "a.test", AF_INET, &res);     /* hit: a.test most recent */
    assert_int_equal(res.from_cache, 1);
    resolve_wait(loop, r, "a.test", AF_INET6, &res);    /* query 3: evicts nx.test */
    assert_int_equal(res.status, -ENOENT);              /* no AAAA for a.test */
    crest_resolver_stats_t s = stats_of(r);
    assert_int_equal(s.queries, 3);
    assert_int_equal(s.evictions, 1);
    assert_int_equal(s.cache_entries, 2);
    resolve_wait(loop, r, "a.test", AF_INET, &res);     /* still cached */
    assert_int_equal(res.from_cache, 1);
    resolve_wait(loop, r, "nx.test", AF_INET, &res);    /* evicted: asked again */
    assert_int_equal(res.from_cache, 0);
    assert_int_equal(stats_of(r).queries, 4);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

/* Many lookups in flight at once on c-ares's sockets: every one answered,
 * once (the answers arrive in bursts on edge-triggered watchers). */
static void test_many_in_flight(void **state)
{
    (void)state;
    enum { N = 64 };
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 3);
    static struct result res[N];
    static char names[N][32];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++) {
        /* Distinct names, so none is answered from the cache: one that
         * exists, one without an AAAA record, the rest NXDOMAIN. */
        int fam = AF_INET;
        if (i == 0) snprintf(names[i], sizeof(names[i]), "a.test");
        else if (i == 1) snprintf(names[i], sizeof(names[i]), "short.test");
        else snprintf(names[i], sizeof(names[i]), "nx%d.test", i);
        if (i == 1) fam = AF_INET6;
        assert_int_equal(crest_resolve(r, names[i], 80, fam, on_resolved, &res[i], NULL), 0);
    }
    int answered = 0;
    for (int it = 0; it < 2000 && answered < N; it++) {
        assert_true(crest_loop_run_once(loop, 100) >= 0);
        answered = 0;
        for (int i = 0; i < N; i++) answered += res[i].calls;
    }
    assert_int_equal(answered, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        if (i == 0) assert_int_equal(res[i].status, 0);
        else assert_int_equal(res[i].status, -ENOENT);
    }
    assert_int_equal(stats_of(r).queries, N);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

/* Over TCP, c-ares 1.18 reads an answer in pieces, one read per
 * ares_process_fd() (the 2-byte length, then the message): on an
 * edge-triggered watcher the rest would wait for an edge that never comes.
 * The resolver processes again while poll() says the socket is still
 * readable; without that this lookup ends in -ETIMEDOUT. */
/* Lookups of one cold name at once send one query: the rest wait for its
 * answer, each with its own port; a cancelled leader still answers the
 * others; a cancelled follower is not called.  The loop's figures count
 * them (insight.h).  Without the coalescing, queries is N. */
static void test_same_name_coalesced(void **state)
{
    (void)state;
    enum { N = 20 };
    crest_loop_t *loop = tu_loop();
    crest_resolver_t *r = make_resolver(loop, dns_servers, 2000, 3);
    static struct result res[N];
    crest_resolve_req_t *reqs[N];
    memset(res, 0, sizeof(res));
    crest_insight_t *before = calloc(2, sizeof(*before)), *after = before + 1;
    assert_non_null(before);
    assert_int_equal(crest_loop_get_insight(loop, before), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(crest_resolve(r, i % 2 ? "A.TEST" : "a.test", (uint16_t)(1000 + i),
                                       AF_INET, on_resolved, &res[i], &reqs[i]),
                         0);
    crest_resolve_cancel(reqs[0]); /* the leader */
    crest_resolve_cancel(reqs[N - 1]);
    int answered = 0;
    for (int it = 0; it < 200 && answered < N - 2; it++) {
        assert_true(crest_loop_run_once(loop, 100) >= 0);
        answered = 0;
        for (int i = 0; i < N; i++) answered += res[i].calls;
    }
    assert_int_equal(res[0].calls, 0);
    assert_int_equal(res[N - 1].calls, 0);
    char b[CREST_ADDR_STRLEN], want[32];
    for (int i = 1; i < N - 1; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_int_equal(res[i].status, 0);
        assert_int_equal(res[i].count, 1);
        snprintf(want, sizeof(want), "127.0.0.2:%d", 1000 + i);
        assert_string_equal(fmt(&res[i].addr0, b), want);
    }
    crest_resolver_stats_t st = stats_of(r);
    assert_int_equal(st.queries, 1);
    assert_int_equal(st.coalesced, N - 1);
    assert_int_equal(crest_loop_get_insight(loop, after), 0);
    assert_int_equal(after->resolve_requests - before->resolve_requests, N);
    assert_int_equal(after->resolve_queries - before->resolve_queries, 1);
    assert_int_equal(after->resolve_coalesced - before->resolve_coalesced, N - 1);
    assert_int_equal(after->resolve_time.count - before->resolve_time.count, 1);
    free(before);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

/* A follower of a lookup still in flight when the resolver is destroyed
 * gets -ECANCELED like the leader. */
static void test_destroy_with_followers(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    uint16_t port = 0;
    int silent = bind_udp(0, &port);
    assert_true(silent >= 0);
    char servers[32];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", port);
    crest_resolver_t *r = make_resolver(loop, servers, 5000, 1);
    struct result res[3];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 3; i++)
        assert_int_equal(crest_resolve(r, "slow.test", 80, AF_INET, on_resolved, &res[i], NULL), 0);
    assert_true(crest_loop_run_once(loop, 10) >= 0);
    assert_int_equal(stats_of(r).queries, 1);
    /* c-ares's socket is in crest's fd registry while the query waits. */
    crest_fd_counts_t fc;
    crest_fd_counts(CREST_FD_RESOLVER, &fc);
    assert_int_equal(fc.open, 1);
    crest_resolver_destroy(r);
    crest_fd_counts(CREST_FD_RESOLVER, &fc);
    assert_int_equal(fc.open, 0);
    assert_true(fc.closed >= 1);
    for (int it = 0; it < 10; it++) assert_true(crest_loop_run_once(loop, 10) >= 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_int_equal(res[i].status, -ECANCELED);
    }
    close(silent);
    tu_destroy_loop(loop);
}

static void test_tcp_answer_read_in_pieces(void **state)
{
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_resolver_opts_t o = {.servers = dns_servers, .timeout_ms = 3000, .tries = 1,
                               .use_tcp = 1};
    crest_resolver_t *r = NULL;
    assert_int_equal(crest_resolver_create(loop, &o, &r), 0);
    struct result res;
    char buf[CREST_ADDR_STRLEN];
    resolve_wait(loop, r, "a.test", AF_INET, &res);
    if (res.status != 0) print_error("reason: %s\n", res.reason);
    assert_int_equal(res.status, 0);
    assert_string_equal(fmt(&res.addr0, buf), "127.0.0.2:80");
    resolve_wait(loop, r, "nx.test", AF_INET, &res);
    assert_int_equal(res.status, -ENOENT);
    crest_resolver_destroy(r);
    tu_destroy_loop(loop);
}

int main(void)
{
    const struct CMUnitTest literal_tests[] = {
        tu_test(test_literals),
    };
    int rc = cmocka_run_group_tests(literal_tests, NULL, NULL);
    if (rc) return rc;
    if (!have_cares) {
        fprintf(stderr, "test_resolve: built without c-ares: skipping the name tests\n");
        return 77;
    }
    if (!find_dnsmasq()) {
        fprintf(stderr, "test_resolve: dnsmasq not installed (Debian: dnsmasq): skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        tu_test(test_name_then_cache_hit),
        tu_test(test_ttl_expiry),
        tu_test(test_nxdomain_negative_cache),
        tu_test(test_timeout),
        tu_test(test_cancel),
        tu_test(test_destroy_pending),
        tu_test(test_lru_eviction),
        tu_test(test_many_in_flight),
        tu_test(test_tcp_answer_read_in_pieces),
        tu_test(test_same_name_coalesced),
        tu_test(test_destroy_with_followers),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
