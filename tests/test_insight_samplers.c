/* The insight samplers (issue 13): fd growth per origin (the registry's
 * counters, crest_fd_origins, unregistered fds from /proc/self/fd) and
 * receive-queue dwell (rx_timestamps: SO_TIMESTAMPING on real loopback
 * connections).  CPU starvation has its own program (test_insight_cpu: it
 * pins threads, and skips where it cannot). */
#include "crest_test.h"

#include <crest/insight.h>
#include <inttypes.h>
#include <linux/net_tstamp.h>

#define GROWTH "test_samplers.c:growth"

/* ---- fd growth ----------------------------------------------------------- */

/* The loop's live figures, once its sampler has run at least `after`
 * times more (observed through the published snapshot's time). */
static void wait_samples(crest_loop_t *loop, crest_insight_t *fig, int after) {
    crest_insight_t *pub = calloc(1, sizeof *pub);
    assert_non_null(pub);
    assert_int_equal(crest_loop_read_insight(loop, pub), 0);
    uint64_t last = pub->taken_ns;
    for (int seen = 0, i = 0; seen < after && i < 2000; i++) {
        assert_true(crest_loop_run_once(loop, 10) >= 0);
        assert_int_equal(crest_loop_read_insight(loop, pub), 0);
        if (pub->taken_ns != last) {
            last = pub->taken_ns;
            seen++;
        }
    }
    assert_true(pub->taken_ns != 0);
    assert_int_equal(crest_loop_get_insight(loop, fig), 0);
    free(pub);
}

/* The figures of origin `name` among n (it must be there). */
static struct crest_fd_origin_growth find_origin(const struct crest_fd_origin_growth *v,
                                                 unsigned n, const char *name) {
    for (unsigned i = 0; i < n; i++)
        if (strcmp(v[i].origin, name) == 0)
            return v[i];
    fail_msg("origin %s not among the %u reported", name, n);
    struct crest_fd_origin_growth none;
    memset(&none, 0, sizeof none);
    return none;
}

static void test_fd_growth(void **state) {
    (void)state;
    enum { REG = 100, PLAIN = 20 };
    int reg[REG][2], plain[PLAIN][2];
    for (int i = 0; i < REG; i++) {
        assert_int_equal(pipe2(reg[i], O_CLOEXEC), 0);
        assert_int_equal(crest_fd_register_at(reg[i][0], CREST_FD_PIPE, GROWTH), 0);
        assert_int_equal(crest_fd_register_at(reg[i][1], CREST_FD_PIPE, GROWTH), 0);
    }
    for (int i = 0; i < PLAIN; i++)
        assert_int_equal(pipe2(plain[i], O_CLOEXEC), 0);
    /* The same origin text from another pointer counts as that origin. */
    char copy[sizeof GROWTH];
    memcpy(copy, GROWTH, sizeof copy);
    int extra[2];
    assert_int_equal(pipe2(extra, O_CLOEXEC), 0);
    assert_int_equal(crest_fd_register_at(extra[0], CREST_FD_PIPE, copy), 0);
    assert_int_equal(crest_fd_register_at(extra[1], CREST_FD_PIPE, copy), 0);

    /* A new loop's first sample counts /proc/self/fd. */
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.sample_ms = 20;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    crest_insight_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    wait_samples(loop, f, 1);

    assert_true(f->fd_origins_len >= 1);
    assert_string_equal(f->fd_origins[0].origin, GROWTH);
    struct crest_fd_origin_growth gv = f->fd_origins[0], *g = &gv;
    assert_true(g->open >= 2 * REG + 2);
    assert_true(g->opened >= 2 * REG + 2);
    assert_int_equal(g->open, g->opened - g->closed);
    assert_true(g->oldest_ns > 0);
    assert_true(f->fds_open >= g->open);
    assert_true(f->fds_unregistered >= 2 * PLAIN);
    for (unsigned i = 1; i < f->fd_origins_len; i++) /* sorted by open */
        assert_true(f->fd_origins[i - 1].open >= f->fd_origins[i].open);

    /* Close some: counted as closed, open drops, the oldest still there. */
    uint64_t opened0 = g->opened, closed0 = g->closed;
    tu_sleep_ms(20);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(crest_fd_close(reg[i][0]), 0);
        assert_int_equal(crest_fd_close(reg[i][1]), 0);
    }
    wait_samples(loop, f, 1);
    gv = find_origin(f->fd_origins, f->fd_origins_len, GROWTH);
    assert_int_equal(g->opened, opened0);
    assert_int_equal(g->closed, closed0 + 20);
    assert_int_equal(g->open, opened0 - closed0 - 20);
    assert_true(g->oldest_ns >= 20 * 1000000ull); /* reg[10] is 20 ms old at least */

    /* The public call, from this (any) thread, agrees. */
    struct crest_fd_origin_growth out[4];
    int n = crest_fd_origins(out, 4, 0);
    assert_true(n >= 1 && n <= 4);
    assert_string_equal(out[0].origin, GROWTH);
    assert_int_equal(out[0].open, g->open);
    assert_int_equal(crest_fd_origins(NULL, 0, 0), 0);
    assert_int_equal(crest_fd_origins(NULL, 1, 0), -EINVAL);

    for (int i = 10; i < REG; i++) {
        assert_int_equal(crest_fd_close(reg[i][0]), 0);
        assert_int_equal(crest_fd_close(reg[i][1]), 0);
    }
    assert_int_equal(crest_fd_close(extra[0]), 0);
    assert_int_equal(crest_fd_close(extra[1]), 0);
    for (int i = 0; i < PLAIN; i++) {
        close(plain[i][0]);
        close(plain[i][1]);
    }
    /* All closed: the origin stays, with nothing open. */
    n = crest_fd_origins(out, 4, 0);
    assert_true(n >= 1);
    gv = find_origin(out, (unsigned)n, GROWTH);
    assert_int_equal(g->open, 0);
    assert_int_equal(g->oldest_ns, 0);
    assert_int_equal(g->closed, g->opened);
    free(f);
    tu_destroy_loop(loop);
}

/* ---- receive-queue dwell ------------------------------------------------- */

struct rx {
    crest_conn_t *conn;
    int opened, closed;
    size_t got;
};

static void rx_on_open(crest_conn_t *c) {
    struct rx *s = crest_conn_handler_ctx(c);
    s->conn = c;
    s->opened++;
}

static ssize_t rx_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct rx *s = crest_conn_handler_ctx(c);
    s->got += len;
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void rx_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)reason;
    (void)err;
    struct rx *s = crest_conn_handler_ctx(c);
    s->conn = NULL;
    s->closed++;
}

static const crest_handler_t rx_echo = {
    .on_open = rx_on_open, .on_data = rx_on_data, .on_close = rx_on_close};

/* A server on loopback with rx_timestamps as told, one client; bytes sent
 * while the loop does not run for 60 ms, then a few hundred KiB echoed and
 * compared. */
static void rx_run(bool stamps, crest_insight_t *f) {
    crest_loop_t *loop = tu_loop();
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.rx_timestamps = stamps;
    assert_int_equal(crest_loop_set_insight(loop, &o), 0);
    struct rx s = {0};
    crest_listener_t *l = NULL;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &rx_echo, &s, &l), 0);
    char addr[CREST_ADDR_STRLEN];
    assert_true(crest_listener_address(l, addr, sizeof addr) > 0);
    int cl = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, s.opened == 1);

    /* The socket option, as set (or not) on the accepted socket. */
    int flags = -1;
    socklen_t len = sizeof flags;
    assert_int_equal(getsockopt(crest_conn_fd(s.conn), SOL_SOCKET, SO_TIMESTAMPING, &flags, &len), 0);
    int want = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    assert_int_equal(flags & want, stamps ? want : 0);

    /* An outbound connection of the same loop gets the option as well. */
    struct rx cs = {0};
    crest_conn_t *out_conn = NULL;
    assert_int_equal(crest_connect(loop, addr, NULL, &rx_echo, &cs, &out_conn), 0);
    RUN_UNTIL(loop, cs.opened == 1 && s.opened == 2);
    flags = -1;
    len = sizeof flags;
    assert_int_equal(getsockopt(crest_conn_fd(out_conn), SOL_SOCKET, SO_TIMESTAMPING, &flags, &len), 0);
    assert_int_equal(flags & want, stamps ? want : 0);
    crest_conn_close(out_conn);
    RUN_UNTIL(loop, cs.closed == 1 && s.closed == 1);

    /* The host's first enabling of timestamps goes through a work queue
     * (net_enable_timestamp): give it a moment, then try a few times. */
    tu_sleep_ms(20);
    uint8_t buf[256];
    int end;
    for (int attempt = 0; attempt < 5; attempt++) {
        memset(buf, 'a' + attempt, 100);
        assert_int_equal(send(cl, buf, 100, MSG_NOSIGNAL), 100);
        tu_sleep_ms(60); /* the loop is not running: the bytes wait */
        assert_int_equal(tu_raw_recv(loop, cl, buf, 100, &end), 100);
        assert_int_equal(end, 0);
        for (int i = 0; i < 100; i++)
            assert_int_equal(buf[i], 'a' + attempt);
        assert_int_equal(crest_loop_get_insight(loop, f), 0);
        if (!stamps || f->rx_dwell.count >= 1)
            break;
    }

    /* Byte-exact: 384 KiB of a pattern, echoed back while sent. */
    enum { TOTAL = 384 * 1024 };
    uint8_t *out = malloc(TOTAL), *in = malloc(TOTAL);
    assert_non_null(out);
    assert_non_null(in);
    tu_pattern(out, 0, TOTAL);
    size_t sent = 0, got = 0;
    int idle = 0;
    while (got < TOTAL) {
        bool moved = false;
        if (sent < TOTAL) {
            ssize_t n = send(cl, out + sent, TOTAL - sent > 65536 ? 65536 : TOTAL - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
                moved = true;
            } else {
                assert_true(errno == EAGAIN || errno == EINTR);
            }
        }
        assert_true(crest_loop_run_once(loop, 0) >= 0);
        ssize_t n = recv(cl, in + got, TOTAL - got, 0);
        if (n > 0) {
            got += (size_t)n;
            moved = true;
        } else {
            assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
        }
        if (!moved) {
            assert_true(crest_loop_run_once(loop, 10) >= 0);
            assert_true(++idle < RUN_MAX_ITER);
        } else {
            idle = 0;
        }
    }
    assert_memory_equal(in, out, TOTAL);
    free(in);
    free(out);
    assert_int_equal(crest_loop_get_insight(loop, f), 0);

    close(cl);
    RUN_UNTIL(loop, s.closed == 2);
    crest_listener_close(l);
    tu_finish_conns(loop);
}

static void test_rx_dwell_on(void **state) {
    (void)state;
    crest_insight_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    rx_run(true, f);
    printf("# rx dwell: %" PRIu64 " reads stamped, max %.1f ms, min %.3f ms\n", f->rx_dwell.count,
           f->rx_dwell.max / 1e6, f->rx_dwell.min / 1e6);
    assert_true(f->rx_timestamps);
    assert_true(f->rx_dwell.count >= 1);
    assert_true(f->rx_dwell.max >= 40 * 1000000ull);
    free(f);
}

static void test_rx_dwell_off(void **state) {
    (void)state;
    crest_insight_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    rx_run(false, f);
    assert_false(f->rx_timestamps);
    assert_int_equal(f->rx_dwell.count, 0);
    free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_fd_growth),
        tu_test(test_rx_dwell_on),
        tu_test(test_rx_dwell_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
