/* The admin endpoint in process, over loopback: every page on one loop and
 * on a group, /debug/crest/conns paged through more connections than a
 * slice, a loop that does not answer, clients that leave early, a stop
 * with requests in flight, and nothing left open or leaked. */
#include "crest_test.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crest/crest.h"

/* ---- an HTTP client on the test's thread ------------------------------------ */

struct page {
    int status;
    char *head; /* the response head */
    char *body;
    size_t len;
};

static void page_free(struct page *p) {
    free(p->head);
    free(p->body);
    memset(p, 0, sizeof *p);
}

/* Send raw to the admin's port, read to EOF (the request says
 * Connection: close), running loop meanwhile. */
static void fetch_raw(crest_loop_t *loop, int port, const char *raw, struct page *out) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    int fd = tu_raw_connect(addr, 0);
    tu_raw_send_all(loop, fd, raw, strlen(raw));
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int idle = 0;;) {
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
            idle = 0;
            continue;
        }
        if (n == 0)
            break;
        assert_true(errno == EAGAIN || errno == EINTR);
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        if (++idle > RUN_MAX_ITER) {
            tu_log_dump();
            fail_msg("no answer to %s", raw);
        }
    }
    close(fd);
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    assert_non_null(end);
    memset(out, 0, sizeof *out);
    assert_int_equal(sscanf(buf, "HTTP/1.1 %d", &out->status), 1);
    size_t hl = (size_t)(end - buf) + 4;
    out->head = strndup(buf, hl);
    out->len = len - hl;
    out->body = malloc(out->len + 1);
    memcpy(out->body, buf + hl, out->len);
    out->body[out->len] = '\0';
    free(buf);
}

static void fetch(crest_loop_t *loop, int port, const char *path, struct page *out) {
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    fetch_raw(loop, port, req, out);
}

/* ---- an echo server to have connections to look at -------------------------- */

static ssize_t echo_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    return crest_conn_write(c, d, n) == 0 ? (ssize_t)n : -CREST_CLOSE_IO_ERROR;
}

static const crest_handler_t echo = {.on_data = echo_data, .name = "test-echo"};

/* n client sockets connected to l, the loop accepting them as they come
 * (a blocking connect waits once the accept queue is full). */
static int *open_clients(crest_loop_t *loop, crest_listener_t *l, unsigned n) {
    int *fds = calloc(n, sizeof *fds);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", crest_listener_port(l));
    for (unsigned i = 0; i < n; i++) {
        fds[i] = tu_raw_connect(addr, 0);
        if (i % 64 == 63)
            tu_spin(loop, 2);
    }
    return fds;
}

static void close_clients(int *fds, unsigned n) {
    for (unsigned i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
}

/* ---- one loop ------------------------------------------------------------- */

static unsigned count_lines_with(const char *text, const char *needle) {
    unsigned n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_pages_one_loop(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_admin_t *admin;
    assert_int_equal(crest_admin_start(loop, "127.0.0.1:0", NULL, &admin), 0);
    int port = crest_admin_port(admin);
    assert_true(port > 0);
    struct page p;

    fetch(loop, port, "/", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.body, "/metrics"));
    assert_non_null(strstr(p.body, "/debug/crest/conns"));
    page_free(&p);

    fetch(loop, port, "/healthz", &p);
    assert_int_equal(p.status, 200);
    assert_string_equal(p.body, "ok\n");
    page_free(&p);

    fetch(loop, port, "/metrics", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.head, "Content-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(p.body, "# TYPE crest_connections_opened_total counter\n"));
    assert_null(strstr(p.body, "loop=\"")); /* one loop: no label */
    assert_non_null(strstr(p.body, "crest_admin_loops_unanswered 0\n"));
    assert_non_null(strstr(p.body, "crest_admin_requests_total 3\n")); /* /, /healthz, this */
    assert_non_null(strstr(p.body, "crest_admin_responses_total{code=\"2xx\"} 2\n"));
    page_free(&p);

    fetch(loop, port, "/debug/crest/doctor?format=json", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.head, "Content-Type: application/json"));
    assert_true(strncmp(p.body, "{\"findings\":[", 13) == 0);
    page_free(&p);

    fetch(loop, port, "/debug/crest/fds", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.body, "crest fd report"));
    assert_non_null(strstr(p.body, "listener"));
    assert_null(strstr(p.body, "leaked")); /* a live process: no exit verdict */
    page_free(&p);

    fetch(loop, port, "/debug/crest/slow?format=json", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.body, "{\"loops\":[{\"loop\":0,"));
    page_free(&p);

    fetch(loop, port, "/nope", &p);
    assert_int_equal(p.status, 404);
    page_free(&p);
    fetch(loop, port, "/debug/crest/doctor?seconds=0", &p);
    assert_int_equal(p.status, 400);
    page_free(&p);
    fetch(loop, port, "/debug/crest/conns?limit=10001", &p);
    assert_int_equal(p.status, 400);
    page_free(&p);
    fetch(loop, port, "/debug/crest/conns?after=x", &p);
    assert_int_equal(p.status, 400);
    page_free(&p);
    fetch(loop, port, "/debug/crest/conns?after=0.99999999999", &p); /* over INT_MAX */
    assert_int_equal(p.status, 400);
    page_free(&p);
    fetch(loop, port, "/debug/crest/conns?after=1.0", &p); /* one loop: loop 1 is none */
    assert_int_equal(p.status, 400);
    page_free(&p);
    /* an absolute-form target (RFC 9112 3.2.2) */
    fetch(loop, port, "http://127.0.0.1/healthz", &p);
    assert_int_equal(p.status, 200);
    assert_string_equal(p.body, "ok\n");
    page_free(&p);
    fetch_raw(loop, port, "POST /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", &p);
    assert_int_equal(p.status, 405);
    assert_non_null(strstr(p.head, "\r\nAllow: GET, HEAD\r\n"));
    page_free(&p);
    /* CONNECT: 405 and closed (what follows would be a tunnel's bytes) */
    fetch_raw(loop, port, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", &p);
    assert_int_equal(p.status, 405);
    assert_non_null(strstr(p.head, "\r\nConnection: close\r\n"));
    page_free(&p);
    fetch_raw(loop, port, "HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.head, "Content-Length: 3\r\n"));
    assert_int_equal(p.len, 0);
    page_free(&p);
    /* a body over the admin's 4 KiB */
    fetch_raw(loop, port, "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", &p);
    assert_int_equal(p.status, 413);
    page_free(&p);

    crest_admin_stop(admin);
    tu_spin(loop, 3);
    tu_finish_conns(loop);
}

/* More connections than a slice (256), listed in pages that follow the
 * cursor: every one exactly once. */
static void test_conns_paged(void **state) {
    (void)state;
    enum { N = 600 };
    crest_loop_t *loop = tu_loop();
    crest_listener_t *l;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &echo, NULL, &l), 0);
    crest_admin_t *admin;
    assert_int_equal(crest_admin_start(loop, "127.0.0.1:0", NULL, &admin), 0);
    int port = crest_admin_port(admin);
    int *clients = open_clients(loop, l, N);
    crest_conn_stats_t cs;
    do {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        crest_loop_conn_stats(loop, &cs);
    } while (cs.active < N);

    /* one page of all of them, as JSON: N entries, complete */
    struct page p;
    fetch(loop, port, "/debug/crest/conns?limit=10000&format=json", &p);
    assert_int_equal(p.status, 200);
    assert_int_equal(count_lines_with(p.body, "\"handler\":\"test-echo\""), N);
    assert_non_null(strstr(p.body, "\"next\":null"));
    page_free(&p);

    /* pages of 250: 250 + 250 + 100, no id twice */
    static bool seen[1 << 16];
    memset(seen, 0, sizeof seen);
    char path[128] = "/debug/crest/conns?limit=250";
    unsigned total = 0, pages = 0;
    for (;;) {
        fetch(loop, port, path, &p);
        assert_int_equal(p.status, 200);
        pages++;
        for (char *line = strchr(p.body, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
            unsigned li;
            unsigned long long id;
            if (sscanf(line + 1, "%u %llu", &li, &id) == 2 && strstr(line, "test-echo")) {
                assert_true(id < (1 << 16));
                assert_false(seen[id]);
                seen[id] = true;
                total++;
            }
        }
        char *next = strstr(p.body, "next page: ?after=");
        if (!next) {
            page_free(&p);
            break;
        }
        char cursor[32];
        assert_int_equal(sscanf(next + 18, "%31[0-9.]", cursor), 1);
        snprintf(path, sizeof path, "/debug/crest/conns?limit=250&after=%s", cursor);
        page_free(&p);
        assert_true(pages < 10);
    }
    assert_int_equal(total, N);
    assert_int_equal(pages, 3);

    close_clients(clients, N);
    RUN_UNTIL(loop, (crest_loop_conn_stats(loop, &cs), cs.active == 0));
    crest_admin_stop(admin);
    crest_listener_close(l);
    tu_spin(loop, 3);
    tu_finish_conns(loop);
}

/* ?seconds=N waits N seconds and diagnoses that window; a client that
 * leaves during the wait frees its request. */
static void test_doctor_window(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_admin_t *admin;
    assert_int_equal(crest_admin_start(loop, "127.0.0.1:0", NULL, &admin), 0);
    int port = crest_admin_port(admin);
    uint64_t t0 = tu_mono_ns();
    struct page p;
    fetch(loop, port, "/debug/crest/doctor?seconds=1&format=json", &p);
    assert_true(tu_mono_ns() - t0 >= 1000000000ull);
    assert_int_equal(p.status, 200);
    /* the window is the second waited, not the time since the start */
    unsigned long long window_ns = 0;
    char *w = strstr(p.body, "\"window_ns\":");
    assert_non_null(w);
    assert_int_equal(sscanf(w + 12, "%llu", &window_ns), 1);
    assert_true(window_ns >= 900000000ull && window_ns < 5000000000ull);
    page_free(&p);

    /* leave during the wait: reset, so the server sees it at once */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    int fd = tu_raw_connect(addr, 0);
    const char *req = "GET /debug/crest/doctor?seconds=30 HTTP/1.1\r\nHost: t\r\n\r\n";
    tu_raw_send_all(loop, fd, req, strlen(req));
    tu_spin(loop, 5);
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    tu_spin(loop, 5);
    /* and one still waiting when the admin stops */
    fd = tu_raw_connect(addr, 0);
    tu_raw_send_all(loop, fd, req, strlen(req));
    tu_spin(loop, 5);
    crest_admin_stop(admin);
    tu_spin(loop, 5);
    close(fd);
    tu_spin(loop, 3);
    tu_finish_conns(loop);
}

/* ---- a group ---------------------------------------------------------------- */

struct grp {
    crest_listener_t *l[2];
    atomic_int ports[2];
    atomic_bool block_done;
};

static int grp_init(crest_loop_t *loop, unsigned index, void *arg) {
    struct grp *g = arg;
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    int rc = crest_listen(loop, "127.0.0.1:0", &lo, &echo, NULL, &g->l[index]);
    if (rc == 0)
        atomic_store(&g->ports[index], crest_listener_port(g->l[index]));
    return rc;
}

static void grp_fini(crest_loop_t *loop, unsigned index, void *arg) {
    struct grp *g = arg;
    crest_loop_close_all(loop, true);
    crest_listener_close(g->l[index]);
    for (int i = 0; i < 5; i++)
        crest_loop_run_once(loop, 0);
}

static void block_loop(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct grp *g = arg;
    tu_sleep_ms(RUNNING_ON_VALGRIND ? 6000 : 3000); /* past two 1 s rounds */
    atomic_store(&g->block_done, true);
}

static void test_group(void **state) {
    (void)state;
    struct grp g;
    memset(&g, 0, sizeof g);
    crest_group_t *group;
    assert_int_equal(crest_group_start(2, grp_init, grp_fini, &g, &group), 0);
    crest_loop_t *ctl = tu_loop();
    crest_admin_opts_t ao;
    crest_admin_opts_init(&ao);
    ao.group = group;
    crest_admin_t *admin;
    assert_int_equal(crest_admin_start(ctl, "127.0.0.1:0", &ao, &admin), 0);
    int port = crest_admin_port(admin);

    /* 20 connections to each loop */
    int fds[40];
    for (int i = 0; i < 40; i++) {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", atomic_load(&g.ports[i % 2]));
        fds[i] = tu_raw_connect(addr, 0);
        assert_int_equal(send(fds[i], "x", 1, 0), 1);
    }
    struct page p;
    for (int tries = 0;; tries++) { /* until both loops accepted them all */
        fetch(ctl, port, "/debug/crest/conns?limit=10000", &p);
        unsigned n = count_lines_with(p.body, "test-echo");
        if (n == 40)
            break;
        page_free(&p);
        assert_true(tries < 200);
        tu_sleep_ms(10);
    }
    assert_int_equal(count_lines_with(p.body, "\n   0 "), 20);
    assert_int_equal(count_lines_with(p.body, "\n   1 "), 20);
    page_free(&p);
    /* a page boundary inside loop 0 and one at its end */
    fetch(ctl, port, "/debug/crest/conns?limit=20", &p);
    assert_non_null(strstr(p.body, "next page: ?after=1.0&limit=20"));
    page_free(&p);
    fetch(ctl, port, "/debug/crest/conns?limit=30&after=1.0", &p);
    assert_int_equal(count_lines_with(p.body, "test-echo"), 20);
    assert_null(strstr(p.body, "next page"));
    page_free(&p);

    fetch(ctl, port, "/metrics", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.body, "crest_connections_opened_total{loop=\"0\"} 20\n"));
    assert_non_null(strstr(p.body, "crest_connections_opened_total{loop=\"1\"} 20\n"));
    page_free(&p);
    fetch(ctl, port, "/debug/crest/slow", &p);
    assert_non_null(strstr(p.body, "loop 0:"));
    assert_non_null(strstr(p.body, "loop 1:"));
    page_free(&p);
    fetch(ctl, port, "/healthz", &p);
    assert_int_equal(p.status, 200);
    page_free(&p);

    /* loop 1 stuck in a callback: answers without it, saying so */
    assert_int_equal(crest_group_post(group, 1, block_loop, &g), 0);
    fetch(ctl, port, "/healthz", &p);
    assert_int_equal(p.status, 503);
    assert_non_null(strstr(p.body, "loop 1 did not answer"));
    page_free(&p);
    fetch(ctl, port, "/metrics", &p);
    assert_int_equal(p.status, 200);
    assert_non_null(strstr(p.body, "crest_admin_loops_unanswered 1\n"));
    assert_non_null(strstr(p.body, "{loop=\"0\"}"));
    page_free(&p);
    /* the late replies come back and are freed (valgrind checks) */
    while (!atomic_load(&g.block_done))
        crest_loop_run_once(ctl, 10);
    tu_spin(ctl, 20);
    tu_sleep_ms(50);
    tu_spin(ctl, 20);
    fetch(ctl, port, "/healthz", &p);
    assert_int_equal(p.status, 200);
    page_free(&p);

    for (int i = 0; i < 40; i++)
        close(fds[i]);
    crest_admin_stop(admin);
    tu_spin(ctl, 5);
    crest_group_stop(group);
    assert_int_equal(crest_group_join(group), 0);
    tu_destroy_loop(ctl);
}

static void test_start_errors_and_warning(void **state) {
    (void)state;
    crest_loop_t *loop = tu_loop();
    crest_admin_t *admin;
    assert_int_equal(crest_admin_start(NULL, "127.0.0.1:0", NULL, &admin), -EINVAL);
    assert_int_equal(crest_admin_start(loop, "127.0.0.1:0", NULL, NULL), -EINVAL);
    assert_true(crest_admin_start(loop, "not an address", NULL, &admin) < 0);
    /* No address: loopback, port 9464 (unless something here holds it). */
    tu_log_clear();
    int rc = crest_admin_start(loop, NULL, NULL, &admin);
    if (rc == 0) {
        assert_int_equal(crest_admin_port(admin), 9464);
        assert_false(tu_log_contains("not a loopback address"));
        int fd = tu_raw_connect("127.0.0.1:9464", 0);
        assert_true(fd >= 0);
        close(fd);
        crest_admin_stop(admin);
        tu_spin(loop, 2);
    } else {
        assert_int_equal(rc, -EADDRINUSE);
    }
    tu_log_clear();
    assert_int_equal(crest_admin_start(loop, "0.0.0.0:0", NULL, &admin), 0);
    assert_true(tu_log_contains("not a loopback address"));
    crest_admin_stop(admin);
    crest_admin_stop(NULL);
    tu_spin(loop, 2);
    tu_finish_conns(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_pages_one_loop),
        tu_test(test_conns_paged),
        tu_test(test_doctor_window),
        tu_test(test_group),
        tu_test(test_start_errors_and_warning),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
