/* Loop groups: n threads each running a loop set up on its own thread;
 * SO_REUSEPORT listeners sharing one port across the loops; a failing init
 * stops the start cleanly; stop and join leave nothing open. */
#include "crest_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#define WORKERS 3

struct ctx {
    int port;                       /* shared port, picked beforehand */
    _Atomic int inits, finis;
    _Atomic int served[WORKERS];
    pthread_t threads[WORKERS];
    crest_listener_t *listeners[WORKERS];
    int fail_index;                 /* init of this index fails; -1: none */
    _Atomic int posted_on_worker;   /* posts that ran on a worker thread */
};

static void note_thread(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct ctx *x = arg;
    for (int i = 0; i < WORKERS; i++)
        if (pthread_equal(x->threads[i], pthread_self()))
            atomic_fetch_add(&x->posted_on_worker, 1);
}

static ssize_t echo_data(crest_conn_t *c, const uint8_t *d, size_t n) {
    crest_conn_write(c, d, n);
    return (ssize_t)n;
}

static void echo_open(crest_conn_t *c) {
    int *served = crest_conn_handler_ctx(c);
    atomic_fetch_add((_Atomic int *)served, 1);
}

static const crest_handler_t echo = {.on_open = echo_open, .on_data = echo_data};

static int init(crest_loop_t *loop, unsigned index, void *arg) {
    struct ctx *x = arg;
    x->threads[index] = pthread_self();
    atomic_fetch_add(&x->inits, 1);
    if ((int)index == x->fail_index)
        return -EADDRINUSE;
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    o.reuseport = true;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", x->port);
    return crest_listen(loop, addr, &o, &echo, (void *)&x->served[index], &x->listeners[index]);
}

static void fini(crest_loop_t *loop, unsigned index, void *arg) {
    (void)loop;
    struct ctx *x = arg;
    assert_true(pthread_equal(x->threads[index], pthread_self()));
    crest_listener_close(x->listeners[index]);
    atomic_fetch_add(&x->finis, 1);
}

/* A free port: bind port 0 with SO_REUSEPORT, read it, close. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

static void echo_once(int port, int i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    char out[16], in[16];
    int n = snprintf(out, sizeof out, "msg %d", i);
    assert_int_equal(send(fd, out, (size_t)n, MSG_NOSIGNAL), n);
    ssize_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, in + got, sizeof in - (size_t)got, 0);
        assert_true(r > 0);
        got += r;
    }
    assert_memory_equal(in, out, (size_t)n);
    close(fd);
}

static void test_group_reuseport_echo(void **state) {
    (void)state;
    struct ctx x;
    memset(&x, 0, sizeof x);
    x.fail_index = -1;
    x.port = free_port();
    crest_group_t *g;
    assert_int_equal(crest_group_start(WORKERS, init, fini, &x, &g), 0);
    assert_int_equal(atomic_load(&x.inits), WORKERS);
    assert_int_equal(crest_group_size(g), WORKERS);
    for (unsigned i = 0; i < WORKERS; i++) {
        assert_non_null(crest_group_loop(g, i));
        assert_false(pthread_equal(x.threads[i], pthread_self()));
    }
    /* A post through the group runs on that worker's thread. */
    for (unsigned i = 0; i < WORKERS; i++)
        assert_int_equal(crest_group_post(g, i, note_thread, &x), 0);
    assert_int_equal(crest_group_post(g, WORKERS, note_thread, &x), -EINVAL);
    int total = 200;
    for (int i = 0; i < total; i++)
        echo_once(x.port, i);
    crest_group_stop(g);
    assert_int_equal(crest_group_join(g), 0);
    assert_int_equal(atomic_load(&x.finis), WORKERS);
    assert_int_equal(atomic_load(&x.posted_on_worker), WORKERS);
    int sum = 0;
    for (int i = 0; i < WORKERS; i++)
        sum += atomic_load(&x.served[i]);
    assert_int_equal(sum, total);
    tu_assert_nothing_open();
}

static void test_group_init_failure(void **state) {
    (void)state;
    struct ctx x;
    memset(&x, 0, sizeof x);
    x.fail_index = 1;
    x.port = free_port();
    crest_group_t *g = NULL;
    assert_int_equal(crest_group_start(WORKERS, init, fini, &x, &g), -EADDRINUSE);
    assert_null(g);
    assert_int_equal(atomic_load(&x.inits), WORKERS);
    /* fini runs only where init succeeded; their listeners are closed by
     * the loop's destroy otherwise (with a warning). */
    tu_assert_nothing_open();
}

/* A loop with nothing to do: its run returns at once, and the worker
 * finishes before anyone stops it. */
static int idle_init(crest_loop_t *loop, unsigned index, void *arg) {
    (void)loop;
    (void)index;
    (void)arg;
    return 0;
}

static void idle_post(crest_loop_t *loop, void *arg) {
    (void)loop;
    (void)arg;
}

static void test_group_idle_loops(void **state) {
    (void)state;
    crest_group_t *g;
    assert_int_equal(crest_group_start(2, idle_init, NULL, NULL, &g), 0);
    /* Nothing to wait for: each loop ends by itself, and a post then is
     * refused rather than sent to a destroyed loop. */
    for (int tries = 0; tries < 1000 && crest_group_loop(g, 0); tries++)
        tu_sleep_ms(1);
    assert_int_equal(crest_group_post(g, 0, idle_post, NULL), -ESRCH);
    crest_group_stop(g);
    assert_int_equal(crest_group_join(g), 0);
    assert_int_equal(crest_group_start(0, idle_init, NULL, NULL, &g), -EINVAL);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_group_reuseport_echo),
        tu_test(test_group_init_failure),
        tu_test(test_group_idle_loops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
