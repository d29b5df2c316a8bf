/* crest_loop_shutdown() and crest_group_shutdown() over loopback: clients
 * that keep sending while the shutdown runs, a peer that never reads, no
 * accept after the call, done exactly once and after every on_close,
 * -EALREADY, -ESHUTDOWN for new connections, the shutdown inside
 * crest_loop_destroy(), and the group variant. */
#include "crest_test.h"

#include <stdatomic.h>
#include <sys/time.h>

#define NCLIENTS 4

struct srv {
    crest_loop_t *loop;
    crest_listener_t *l;
    int opened;
    int closed;
    int closed_shutdown;          /* on_close with CREST_CLOSE_SHUTDOWN */
    int done;                     /* done callbacks */
    int closed_at_done;           /* on_close count when done ran */
    bool in_call;                 /* inside crest_loop_shutdown() */
    bool done_in_call;
    bool stop_in_done;
    size_t consumed[64];          /* bytes echoed, by connection index */
    int next_index;
    size_t greeting;              /* bytes written from on_open */
    int order[8];                 /* 1: on_close, 2: done */
    int norder;
};

static struct srv S;

static void on_open(crest_conn_t *c) {
    S.opened++;
    crest_conn_set_data(c, (void *)(intptr_t)S.next_index++);
    if (S.greeting) {
        uint8_t *buf = malloc(S.greeting);
        assert_non_null(buf);
        tu_pattern(buf, 0, S.greeting);
        assert_int_equal(crest_conn_write(c, buf, S.greeting), 0);
        free(buf);
    }
}

static ssize_t on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    int i = (int)(intptr_t)crest_conn_get_data(c);
    assert_int_equal(crest_conn_write(c, data, len), 0);
    S.consumed[i] += len;
    return (ssize_t)len;
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)c;
    (void)err;
    S.closed++;
    if (reason == CREST_CLOSE_SHUTDOWN)
        S.closed_shutdown++;
    if (S.norder < 8)
        S.order[S.norder++] = 1;
}

static void on_done(crest_loop_t *loop, void *arg) {
    assert_ptr_equal(loop, S.loop);
    assert_ptr_equal(arg, &S);
    if (S.in_call)
        S.done_in_call = true;
    S.done++;
    S.closed_at_done = S.closed;
    if (S.norder < 8)
        S.order[S.norder++] = 2;
    if (S.stop_in_done)
        crest_loop_stop(loop);
}

static const crest_handler_t echo = {
    .on_open = on_open, .on_data = on_data, .on_close = on_close};

static int shutdown_now(crest_loop_t *loop, uint32_t grace_ms) {
    S.in_call = true;
    int rc = crest_loop_shutdown(loop, grace_ms, on_done, &S);
    S.in_call = false;
    return rc;
}

static crest_loop_t *server(char *addr, size_t size) {
    memset(&S, 0, sizeof S);
    S.loop = tu_loop();
    assert_int_equal(crest_listen(S.loop, "127.0.0.1:0", NULL, &echo, NULL, &S.l), 0);
    assert_true(crest_listener_address(S.l, addr, size) > 0);
    return S.loop;
}

/* A connect to addr from a fresh socket: 0 if it connected, else -errno. */
static int try_connect(const char *addr) {
    crest_addr_t a;
    assert_int_equal(crest_addr_parse(addr, &a), 0);
    int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int rc = connect(fd, (const struct sockaddr *)&a.ss, a.len) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Clients that keep sending while the shutdown runs: each gets every reply
 * to what the server had read before (the queued output is flushed), then
 * EOF; every connection gets on_close SHUTDOWN; done runs once, after
 * them all, never inside the call; the listener accepts nothing after the
 * call. */
static void test_shutdown_clients_keep_sending(void **state) {
    (void)state;
    char addr[CREST_ADDR_STRLEN];
    crest_loop_t *loop = server(addr, sizeof addr);
    int fd[NCLIENTS];
    /* Client 0 reads nothing until the shutdown: its replies wait in the
     * sockets and in crest's queue (below high water, so the server reads
     * on), and the shutdown has to flush them. */
    const size_t big = 768u << 10;
    for (int i = 0; i < NCLIENTS; i++)
        fd[i] = tu_raw_connect(addr, i == 0 ? 4096 : 0);
    RUN_UNTIL(loop, S.opened == NCLIENTS);

    uint8_t *sent[NCLIENTS], *got[NCLIENTS];
    size_t nsent[NCLIENTS] = {0}, ngot[NCLIENTS] = {0};
    bool eof[NCLIENTS] = {false};
    const size_t cap = big + (1u << 20);
    for (int i = 0; i < NCLIENTS; i++) {
        sent[i] = malloc(cap);
        got[i] = malloc(cap);
        assert_true(sent[i] && got[i]);
        tu_pattern(sent[i], (uint64_t)i << 32, cap);
    }
    /* Client 0 sends 768 KiB it will not read back yet; the others a
     * little, read back before the shutdown. */
    while (nsent[0] < big) {
        ssize_t n = send(fd[0], sent[0] + nsent[0], big - nsent[0], MSG_NOSIGNAL);
        if (n > 0)
            nsent[0] += (size_t)n;
        else
            assert_true(crest_loop_run_once(loop, 10) >= 0);
    }
    for (int i = 1; i < NCLIENTS; i++) {
        assert_int_equal(send(fd[i], sent[i], 1000, MSG_NOSIGNAL), 1000);
        nsent[i] = 1000;
        int end;
        assert_int_equal(tu_raw_recv(loop, fd[i], got[i], 1000, &end), 1000);
        ngot[i] = 1000;
    }
    /* The server has read everything client 0 sent. */
    RUN_UNTIL(loop, S.consumed[0] == big);
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.active, NCLIENTS);

    assert_int_equal(shutdown_now(loop, 30000), 0);
    assert_int_equal(S.done, 0);
    assert_int_equal(S.closed, 0); /* nothing runs inside the call */
    assert_int_equal(crest_loop_shutdown(loop, 10, on_done, &S), -EALREADY);
    /* No listener any more: the port refuses. */
    assert_int_equal(try_connect(addr), -ECONNREFUSED);
    /* Nor can a new connection or listener start. */
    crest_conn_t *c2 = NULL;
    crest_listener_t *l2 = NULL;
    assert_int_equal(crest_connect(loop, addr, NULL, &echo, NULL, &c2), -ESHUTDOWN);
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &echo, NULL, &l2), -ESHUTDOWN);

    /* Every client keeps sending and reads until EOF, then closes. */
    size_t consumed_at_call[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++)
        consumed_at_call[i] = S.consumed[i];
    int open_clients = NCLIENTS;
    for (int iter = 0; S.done == 0 && iter < 20000; iter++) {
        for (int i = 0; i < NCLIENTS; i++) {
            if (eof[i])
                continue;
            if (nsent[i] + 100 <= cap) {
                ssize_t n = send(fd[i], sent[i] + nsent[i], 100, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0)
                    nsent[i] += (size_t)n;
            }
            for (;;) {
                ssize_t n = recv(fd[i], got[i] + ngot[i], cap - ngot[i], MSG_DONTWAIT);
                if (n > 0) {
                    ngot[i] += (size_t)n;
                    continue;
                }
                if (n == 0) {
                    eof[i] = true;
                    close(fd[i]); /* ends the server's lingering close */
                    open_clients--;
                }
                break;
            }
        }
        assert_true(crest_loop_run_once(loop, open_clients ? 1 : 10) >= 0);
    }
    assert_int_equal(S.done, 1);
    assert_false(S.done_in_call);
    assert_int_equal(open_clients, 0);
    assert_int_equal(S.closed, NCLIENTS);
    assert_int_equal(S.closed_shutdown, NCLIENTS);
    assert_int_equal(S.closed_at_done, NCLIENTS); /* done came after them all */
    for (int i = 0; i < NCLIENTS; i++) {
        /* Nothing was read after the call, and every reply to what was
         * read before arrived, byte for byte. */
        assert_int_equal(S.consumed[i], consumed_at_call[i]);
        assert_int_equal(ngot[i], S.consumed[i]);
        assert_memory_equal(got[i], sent[i], ngot[i]);
    }
    assert_int_equal(S.consumed[0], big);
    /* done runs once: more iterations change nothing; the loop is usable
     * again. */
    tu_spin(loop, 3);
    assert_int_equal(S.done, 1);
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.lingering, 0);
    for (int i = 0; i < NCLIENTS; i++) {
        free(sent[i]);
        free(got[i]);
    }
    tu_finish_conns(loop);
}

/* A peer that never reads (its replies fill every buffer) and one that
 * never ends its side (its close lingers): both are aborted at grace_ms,
 * then done runs. */
static void test_shutdown_aborts_at_grace(void **state) {
    (void)state;
    char addr[CREST_ADDR_STRLEN];
    crest_loop_t *loop = server(addr, sizeof addr);
    S.greeting = 16u << 20; /* more than the sockets hold */
    int stuck = tu_raw_connect(addr, 4096);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(stuck, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    RUN_UNTIL(loop, S.opened == 1);
    S.greeting = 0;
    int idle = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, S.opened == 2);
    S.stop_in_done = true;
    tu_log_clear();
    assert_int_equal(shutdown_now(loop, 200), 0);
    /* The idle one closes and lingers at once (nothing queued); the stuck
     * one waits for the grace period.  done stops the loop. */
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 30000);
    assert_int_equal(crest_loop_run(loop), 0);
    assert_false(tu_watchdog_disarm(&wd));
    assert_int_equal(S.done, 1);
    assert_int_equal(S.closed, 2);
    assert_int_equal(S.closed_shutdown, 2);
    assert_int_equal(S.closed_at_done, 2);
    assert_true(tu_log_contains("grace period over"));
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    assert_int_equal(st.lingering, 0);
    assert_int_equal(st.active, 0);
    /* The stuck peer was reset (RST): it finds an error after the bytes
     * that made it; the idle one saw an orderly EOF first. */
    uint8_t buf[65536];
    ssize_t n;
    size_t total = 0;
    while ((n = recv(stuck, buf, sizeof buf, 0)) > 0)
        total += (size_t)n;
    assert_true(n < 0 && errno == ECONNRESET);
    assert_true(total < 16u << 20);
    assert_int_equal(recv(idle, buf, sizeof buf, 0), 0); /* EOF */
    close(stuck);
    close(idle);
    tu_finish_conns(loop);
}

/* Nothing open: done still runs from the loop, on the next iteration,
 * which does not block; crest_loop_run() returns when done stops it; a
 * second shutdown after done is allowed again. */
static void test_shutdown_nothing_open(void **state) {
    (void)state;
    char addr[CREST_ADDR_STRLEN];
    crest_loop_t *loop = server(addr, sizeof addr);
    S.stop_in_done = true;
    assert_int_equal(shutdown_now(loop, 3600 * 1000), 0);
    assert_int_equal(S.done, 0);
    assert_int_equal(try_connect(addr), -ECONNREFUSED);
    struct tu_watchdog wd;
    tu_watchdog_arm(&wd, loop, 30000);
    assert_int_equal(crest_loop_run_once(loop, -1), 0); /* nothing alive after done */
    assert_false(tu_watchdog_disarm(&wd));
    assert_int_equal(S.done, 1);
    assert_false(S.done_in_call);
    assert_int_equal(crest_loop_run(loop), 0); /* the stop done made ends it */

    /* Over: new things may start, and another shutdown. */
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &echo, NULL, &S.l), 0);
    S.stop_in_done = false;
    assert_int_equal(shutdown_now(loop, 0), 0);
    RUN_UNTIL(loop, S.done == 2);
    assert_int_equal(crest_loop_shutdown(NULL, 0, NULL, NULL), -EINVAL);
    /* done may be NULL. */
    assert_int_equal(crest_loop_shutdown(loop, 0, NULL, NULL), 0);
    tu_spin(loop, 2);
    assert_int_equal(crest_loop_shutdown(loop, 0, NULL, NULL), 0);
    tu_finish_conns(loop);
}

/* A reconnect from on_close during the shutdown is refused. */
static void reconnect_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    on_close(c, reason, err);
    crest_conn_t *again = NULL;
    int rc = crest_connect(crest_conn_loop(c), "127.0.0.1:9", NULL, &echo, NULL, &again);
    assert_int_equal(rc, -ESHUTDOWN);
}

static void test_shutdown_refuses_reconnect(void **state) {
    (void)state;
    memset(&S, 0, sizeof S);
    crest_loop_t *loop = S.loop = tu_loop();
    crest_handler_t h = echo;
    h.on_close = reconnect_on_close;
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", NULL, &h, NULL, &S.l), 0);
    char addr[CREST_ADDR_STRLEN];
    crest_listener_address(S.l, addr, sizeof addr);
    int fd = tu_raw_connect(addr, 0);
    RUN_UNTIL(loop, S.opened == 1);
    assert_int_equal(shutdown_now(loop, 0), 0);
    RUN_UNTIL(loop, S.done == 1);
    assert_int_equal(S.closed_shutdown, 1);
    close(fd);
    tu_finish_conns(loop);
}

/* A shutdown still under way when the loop is destroyed: its done runs
 * inside crest_loop_destroy(), after the on_close of the connections it
 * aborts. */
static void test_shutdown_finished_by_destroy(void **state) {
    (void)state;
    char addr[CREST_ADDR_STRLEN];
    crest_loop_t *loop = server(addr, sizeof addr);
    S.greeting = 16u << 20;
    int fd = tu_raw_connect(addr, 4096);
    RUN_UNTIL(loop, S.opened == 1);
    assert_int_equal(shutdown_now(loop, 3600 * 1000), 0);
    tu_spin(loop, 3);
    assert_int_equal(S.done, 0); /* still flushing to a peer that does not read */
    tu_log_clear();
    assert_int_equal(crest_loop_destroy(loop), 0);
    close(fd);
    assert_int_equal(S.done, 1);
    assert_int_equal(S.norder, 2);
    assert_int_equal(S.order[0], 1); /* on_close */
    assert_int_equal(S.order[1], 2); /* then done */
    tu_assert_nothing_open();
}

/* ---- the group -------------------------------------------------------------- */

#define NWORKERS 2

struct gw {
    crest_listener_t *l;
    char addr[CREST_ADDR_STRLEN];
    _Atomic int opened, closed_shutdown;
};

static struct gw GW[NWORKERS];

static void g_on_open(crest_conn_t *c) {
    struct gw *w = crest_conn_handler_ctx(c);
    atomic_fetch_add(&w->opened, 1);
    assert_int_equal(crest_conn_write(c, "hi\n", 3), 0);
}

static ssize_t g_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    assert_int_equal(crest_conn_write(c, data, len), 0);
    return (ssize_t)len;
}

static void g_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct gw *w = crest_conn_handler_ctx(c);
    if (reason == CREST_CLOSE_SHUTDOWN)
        atomic_fetch_add(&w->closed_shutdown, 1);
}

static const crest_handler_t g_echo = {
    .on_open = g_on_open, .on_data = g_on_data, .on_close = g_on_close};

static int g_init(crest_loop_t *loop, unsigned index, void *arg) {
    (void)arg;
    struct gw *w = &GW[index];
    int rc = crest_listen(loop, "127.0.0.1:0", NULL, &g_echo, w, &w->l);
    if (rc == 0)
        crest_listener_address(w->l, w->addr, sizeof w->addr);
    return rc;
}

static void test_group_shutdown(void **state) {
    (void)state;
    memset(GW, 0, sizeof GW);
    crest_group_t *g = NULL;
    assert_int_equal(crest_group_start(NWORKERS, g_init, NULL, NULL, &g), 0);
    int fd[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) {
        crest_addr_t a;
        assert_int_equal(crest_addr_parse(GW[i].addr, &a), 0);
        fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(fd[i], (struct sockaddr *)&a.ss, a.len), 0);
        struct timeval tv = {.tv_sec = 30};
        setsockopt(fd[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[3];
        assert_int_equal(recv(fd[i], buf, 3, MSG_WAITALL), 3); /* on_open ran */
    }
    assert_int_equal(crest_group_shutdown(g, 30000), 0);
    assert_int_equal(crest_group_shutdown(g, 30000), -EALREADY);
    assert_int_equal(crest_group_shutdown(NULL, 0), -EINVAL);
    /* Each client sees its connection end (EOF), closes, and the workers
     * then stop by themselves. */
    for (int i = 0; i < NWORKERS; i++) {
        char buf[16];
        assert_int_equal(recv(fd[i], buf, sizeof buf, 0), 0);
        close(fd[i]);
    }
    assert_int_equal(crest_group_join(g), 0); /* no loop failed, 0 fds leaked */
    for (int i = 0; i < NWORKERS; i++) {
        assert_int_equal(atomic_load(&GW[i].opened), 1);
        assert_int_equal(atomic_load(&GW[i].closed_shutdown), 1);
        assert_int_equal(try_connect(GW[i].addr), -ECONNREFUSED);
    }
    tu_assert_nothing_open();
}

/* A worker that started its own shutdown: the group's stops it once that
 * one is done (after its done callback). */
static _Atomic int own_done;

static void own_done_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    (void)arg;
    atomic_fetch_add(&own_done, 1);
}

static void start_own_shutdown(crest_loop_t *loop, void *arg) {
    (void)arg;
    assert_int_equal(crest_loop_shutdown(loop, 30000, own_done_cb, NULL), 0);
}

static void test_group_shutdown_after_own(void **state) {
    (void)state;
    memset(GW, 0, sizeof GW);
    atomic_store(&own_done, 0);
    crest_group_t *g = NULL;
    assert_int_equal(crest_group_start(1, g_init, NULL, NULL, &g), 0);
    crest_addr_t a;
    assert_int_equal(crest_addr_parse(GW[0].addr, &a), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&a.ss, a.len), 0);
    char buf[16];
    assert_int_equal(recv(fd, buf, 3, MSG_WAITALL), 3);
    /* The application's own shutdown first, then the group's. */
    assert_int_equal(crest_group_post(g, 0, start_own_shutdown, NULL), 0);
    assert_int_equal(crest_group_shutdown(g, 30000), 0);
    assert_int_equal(recv(fd, buf, sizeof buf, 0), 0);
    close(fd);
    assert_int_equal(crest_group_join(g), 0);
    assert_int_equal(atomic_load(&own_done), 1);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_shutdown_clients_keep_sending),
        tu_test(test_shutdown_aborts_at_grace),
        tu_test(test_shutdown_nothing_open),
        tu_test(test_shutdown_refuses_reconnect),
        tu_test(test_shutdown_finished_by_destroy),
        tu_test(test_group_shutdown),
        tu_test(test_group_shutdown_after_own),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
