/* crest_listen_fds(): LISTEN_PID/LISTEN_FDS read as sd_listen_fds() reads
 * them.  Each case runs in a child process, which puts sockets at fds 3
 * and 4 as a service manager would and reports through its exit status;
 * one adopts the passed listening socket and serves a connection on it. */
#include "crest_test.h"

#include <signal.h>
#include <sys/wait.h>

/* In the child: checks that exit with the line number on failure. */
#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: child check failed: %s\n", __FILE__, __LINE__, #cond); \
            _exit(__LINE__ % 250 + 1);                                                \
        }                                                                             \
    } while (0)

/* Two sockets at fds 3 and 4, not close-on-exec (as passed). */
static void put_fds(int n) {
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(s >= 0);
        if (s != 3 + i) {
            CHECK(dup2(s, 3 + i) == 3 + i);
            close(s);
        }
        CHECK(!(fcntl(3 + i, F_GETFD) & FD_CLOEXEC));
    }
}

static void set_env(const char *pid, const char *fds) {
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (pid)
        setenv("LISTEN_PID", pid, 1);
    if (fds)
        setenv("LISTEN_FDS", fds, 1);
}

static void own_pid(char *buf, size_t size) {
    snprintf(buf, size, "%d", (int)getpid());
}

static void run_child(void (*fn)(void)) {
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(30);
        fn();
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void child_own_pid(void) {
    char pid[32];
    own_pid(pid, sizeof pid);
    put_fds(2);
    /* Kept: the variables stay. */
    set_env(pid, "2");
    setenv("LISTEN_FDNAMES", "a:b", 1);
    CHECK(crest_listen_fds(false) == 2);
    CHECK(getenv("LISTEN_PID") && getenv("LISTEN_FDS") && getenv("LISTEN_FDNAMES"));
    CHECK(fcntl(3, F_GETFD) & FD_CLOEXEC);
    CHECK(fcntl(4, F_GETFD) & FD_CLOEXEC);
    /* Unset: gone, so children do not inherit them. */
    CHECK(crest_listen_fds(true) == 2);
    CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES"));
    /* And then: not activated. */
    CHECK(crest_listen_fds(true) == 0);
}

static void child_names(void) {
    char pid[32];
    own_pid(pid, sizeof pid);
    put_fds(2);
    char **names = (char **)1;
    /* Named. */
    set_env(pid, "2");
    setenv("LISTEN_FDNAMES", "http:", 1);
    CHECK(crest_listen_fds_with_names(false, &names) == 2);
    CHECK(names && strcmp(names[0], "http") == 0 && strcmp(names[1], "") == 0 && !names[2]);
    for (int i = 0; names[i]; i++)
        free(names[i]);
    free(names);
    /* Unnamed: "unknown". */
    unsetenv("LISTEN_FDNAMES");
    CHECK(crest_listen_fds_with_names(false, &names) == 2);
    CHECK(strcmp(names[0], "unknown") == 0 && strcmp(names[1], "unknown") == 0 && !names[2]);
    for (int i = 0; names[i]; i++)
        free(names[i]);
    free(names);
    /* A count that does not match, and no output pointer. */
    setenv("LISTEN_FDNAMES", "a:b:c", 1);
    CHECK(crest_listen_fds_with_names(false, &names) == -EINVAL && names == NULL);
    setenv("LISTEN_FDNAMES", "a", 1);
    CHECK(crest_listen_fds_with_names(false, &names) == -EINVAL && names == NULL);
    CHECK(crest_listen_fds_with_names(false, NULL) == -EINVAL);
    /* Not activated: 0, NULL; unset_env clears all three. */
    setenv("LISTEN_FDNAMES", "a:b", 1);
    CHECK(crest_listen_fds_with_names(true, &names) == 2);
    for (int i = 0; names[i]; i++)
        free(names[i]);
    free(names);
    CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES"));
    CHECK(crest_listen_fds_with_names(true, &names) == 0 && names == NULL);
}

static void child_other_pid(void) {
    put_fds(1);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getppid()); /* the parent's */
    set_env(pid, "1");
    CHECK(crest_listen_fds(false) == 0);
    CHECK(!(fcntl(3, F_GETFD) & FD_CLOEXEC)); /* not touched */
    CHECK(crest_listen_fds(true) == 0);
    CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS"));
}

static void child_unset(void) {
    set_env(NULL, NULL);
    CHECK(crest_listen_fds(false) == 0);
    CHECK(crest_listen_fds(true) == 0);
    /* LISTEN_FDS without LISTEN_PID: not for us either. */
    set_env(NULL, "1");
    CHECK(crest_listen_fds(false) == 0);
    /* Our pid, but no LISTEN_FDS: nothing passed. */
    char pid[32];
    own_pid(pid, sizeof pid);
    set_env(pid, NULL);
    CHECK(crest_listen_fds(false) == 0);
}

static void child_malformed(void) {
    char pid[32];
    own_pid(pid, sizeof pid);
    char spaced[40];
    snprintf(spaced, sizeof spaced, " %s", pid);
    char trailing[40];
    snprintf(trailing, sizeof trailing, "%sx", pid);
    put_fds(1);
    const char *bad_pids[] = {"", "abc", "-1", "0", spaced, trailing, "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad_pids / sizeof bad_pids[0]; i++) {
        set_env(bad_pids[i], "1");
        CHECK(crest_listen_fds(false) == -EINVAL);
    }
    const char *bad_fds[] = {"", "x", "0", "-1", "1x", " 1", "2147483647", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_fds / sizeof bad_fds[0]; i++) {
        set_env(pid, bad_fds[i]);
        CHECK(crest_listen_fds(false) == -EINVAL);
    }
    /* Unset even on an error. */
    set_env(pid, "x");
    CHECK(crest_listen_fds(true) == -EINVAL);
    CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS"));
    /* A passed fd that is not open. */
    close(3);
    set_env(pid, "1");
    CHECK(crest_listen_fds(false) == -EBADF);
}

/* The whole path: a listening socket passed at fd 3, adopted, serving. */
static bool opened;

static void on_open(crest_conn_t *c) {
    opened = true;
    crest_conn_write(c, "hi", 2);
    crest_conn_close(c);
}

static ssize_t on_data(crest_conn_t *c, const uint8_t *d, size_t len) {
    (void)c;
    (void)d;
    return (ssize_t)len;
}

static void child_adopt_passed(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    CHECK(bind(s, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(listen(s, 4) == 0);
    CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0);
    if (s != 3) {
        CHECK(dup2(s, 3) == 3);
        close(s);
    }
    char pid[32];
    own_pid(pid, sizeof pid);
    set_env(pid, "1");
    int n = crest_listen_fds(true);
    CHECK(n == 1);
    crest_loop_t *loop = NULL;
    CHECK(crest_loop_create(&loop) == 0);
    crest_handler_t h = {.on_open = on_open, .on_data = on_data};
    crest_listener_t *l = NULL;
    CHECK(crest_listener_adopt(loop, CREST_LISTEN_FDS_START, NULL, &h, NULL, &l) == 0);
    CHECK(crest_listener_port(l) == ntohs(sin.sin_port));
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(connect(c, (struct sockaddr *)&sin, sizeof sin) == 0);
    for (int i = 0; i < 3000 && !opened; i++)
        crest_loop_run_once(loop, 10);
    CHECK(opened);
    char buf[4];
    CHECK(fcntl(c, F_SETFL, O_NONBLOCK) == 0);
    size_t got = 0;
    for (int i = 0; i < 3000 && got < 2; i++) {
        ssize_t r = recv(c, buf + got, sizeof buf - got, 0);
        if (r > 0)
            got += (size_t)r;
        crest_loop_run_once(loop, 10);
    }
    CHECK(got == 2 && memcmp(buf, "hi", 2) == 0);
    close(c);
    crest_listener_close(l);
    CHECK(fcntl(3, F_GETFD) < 0); /* crest closed it */
    for (int i = 0; i < 100; i++)
        crest_loop_run_once(loop, 0);
    CHECK(crest_loop_destroy(loop) == 0);
}

static void test_own_pid(void **state) {
    (void)state;
    run_child(child_own_pid);
}

static void test_names(void **state) {
    (void)state;
    run_child(child_names);
}

static void test_other_pid(void **state) {
    (void)state;
    run_child(child_other_pid);
}

static void test_unset(void **state) {
    (void)state;
    run_child(child_unset);
}

static void test_malformed(void **state) {
    (void)state;
    run_child(child_malformed);
}

static void test_adopt_passed(void **state) {
    (void)state;
    run_child(child_adopt_passed);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_own_pid),
        tu_test(test_names),
        tu_test(test_other_pid),
        tu_test(test_unset),
        tu_test(test_malformed),
        tu_test(test_adopt_passed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
