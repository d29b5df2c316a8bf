/* Tests for the fd registry (include/crest/fdreg.h). */
#include "crest_test.h"

#include <sys/eventfd.h>
#include <sys/stat.h>

/* ---- helpers ------------------------------------------------------------ */

static crest_fd_counts_t counts_of(crest_fd_kind_t kind) {
    crest_fd_counts_t c;
    memset(&c, 0xa5, sizeof c);
    assert_int_equal(crest_fd_counts(kind, &c), 0);
    return c;
}

static void make_pipe(int p[2]) {
    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
}

/* The report as a string (caller frees); *n gets the return value. */
static char *report_text(int *n) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    *n = crest_fd_report(f);
    assert_int_equal(fclose(f), 0);
    assert_non_null(text);
    return text;
}

/* Does s contain the number v as a whole token (not part of a longer
 * number)? */
static bool has_number(const char *s, long v) {
    char num[32];
    snprintf(num, sizeof num, "%ld", v);
    size_t n = strlen(num);
    for (const char *p = strstr(s, num); p; p = strstr(p + 1, num)) {
        bool left = p == s || !(p[-1] >= '0' && p[-1] <= '9');
        bool right = !(p[n] >= '0' && p[n] <= '9');
        if (left && right)
            return true;
    }
    return false;
}

/* Is there one line of text that contains all of a, b, c (NULL: any) and the
 * number v as a token (v < 0: any)? */
static bool line_has(const char *text, const char *a, const char *b, const char *c, long v) {
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, n);
        assert_non_null(line);
        bool ok = (!a || strstr(line, a)) && (!b || strstr(line, b)) && (!c || strstr(line, c)) &&
                  (v < 0 || has_number(line, v));
        free(line);
        if (ok)
            return true;
        p = nl ? nl + 1 : p + n;
    }
    return false;
}

/* Does the report's "unregistered" line list fd?  Only the numbers after
 * the colon are fds: the line starts with their count, which is not one. */
static bool unregistered_lists(const char *text, int fd) {
    const char *line = strstr(text, "unregistered");
    if (!line)
        return false;
    const char *nl = strchr(line, '\n');
    const char *colon = strchr(line, ':');
    if (!colon || (nl && colon > nl))
        return false;
    for (const char *p = colon + 1; *p && p != nl;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p)
            return false;
        if (v == fd)
            return true;
        p = end;
    }
    return false;
}

/* ---- tests -------------------------------------------------------------- */

static void test_kind_names(void **state) {
    (void)state;
    assert_string_equal(crest_fd_kind_name(CREST_FD_EPOLL), "epoll");
    assert_string_equal(crest_fd_kind_name(CREST_FD_EVENTFD), "eventfd");
    assert_string_equal(crest_fd_kind_name(CREST_FD_SIGNALFD), "signalfd");
    assert_string_equal(crest_fd_kind_name(CREST_FD_PIPE), "pipe");
    assert_string_equal(crest_fd_kind_name(CREST_FD_USER), "user");
    for (int k = 0; k < CREST_FD_KIND_COUNT; k++) {
        assert_non_null(crest_fd_kind_name((crest_fd_kind_t)k));
        assert_true(strlen(crest_fd_kind_name((crest_fd_kind_t)k)) > 0);
    }
    tu_assert_nothing_open();
}

static void test_counters_per_kind(void **state) {
    (void)state;
    crest_fd_counts_t b = counts_of(CREST_FD_PIPE);
    crest_fd_counts_t ball = counts_of(CREST_FD_ALL);
    crest_fd_counts_t buser = counts_of(CREST_FD_USER);
    int p[2];
    make_pipe(p);

    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    crest_fd_counts_t c = counts_of(CREST_FD_PIPE);
    assert_int_equal(c.open, b.open + 1);
    assert_int_equal(c.opened, b.opened + 1);
    assert_int_equal(c.closed, b.closed);
    assert_true(c.peak >= c.open);

    assert_int_equal(crest_fd_register(p[1], CREST_FD_PIPE), 0);
    c = counts_of(CREST_FD_PIPE);
    assert_int_equal(c.open, b.open + 2);
    assert_int_equal(c.opened, b.opened + 2);
    assert_true(c.peak >= b.open + 2);
    uint64_t peak = c.peak;

    /* Other kinds do not move. */
    crest_fd_counts_t u = counts_of(CREST_FD_USER);
    assert_memory_equal(&u, &buser, sizeof u);

    crest_fd_counts_t all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.open, ball.open + 2);
    assert_int_equal(all.opened, ball.opened + 2);
    assert_int_equal(crest_fd_open_count(), all.open);

    assert_int_equal(crest_fd_close(p[0]), 0);
    assert_false(tu_fd_is_open(p[0]));
    c = counts_of(CREST_FD_PIPE);
    assert_int_equal(c.open, b.open + 1);
    assert_int_equal(c.closed, b.closed + 1);
    assert_int_equal(c.opened, b.opened + 2);
    assert_int_equal(c.peak, peak); /* the peak stays */

    assert_int_equal(crest_fd_close(p[1]), 0);
    assert_false(tu_fd_is_open(p[1]));
    c = counts_of(CREST_FD_PIPE);
    assert_int_equal(c.open, b.open);
    assert_int_equal(c.closed, b.closed + 2);
    assert_int_equal(c.peak, peak);
    assert_int_equal(c.bad_closes, b.bad_closes);

    all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.open, ball.open);
    assert_int_equal(all.closed, ball.closed + 2);
    assert_int_equal(all.bad_closes, ball.bad_closes);
    tu_assert_nothing_open();
}

static void test_all_is_the_sum_of_kinds(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(efd >= 0);
    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    assert_int_equal(crest_fd_register(p[1], CREST_FD_USER), 0);
    assert_int_equal(crest_fd_register(efd, CREST_FD_EVENTFD), 0);

    for (int round = 0; round < 2; round++) {
        crest_fd_counts_t sum = {0}, all = counts_of(CREST_FD_ALL);
        uint64_t max_peak = 0;
        for (int k = 0; k < CREST_FD_KIND_COUNT; k++) {
            crest_fd_counts_t c = counts_of((crest_fd_kind_t)k);
            sum.open += c.open;
            sum.opened += c.opened;
            sum.closed += c.closed;
            if (c.peak > max_peak)
                max_peak = c.peak;
            assert_int_equal(c.open, c.opened - c.closed);
            assert_true(c.peak >= c.open);
        }
        assert_int_equal(all.open, sum.open);
        assert_int_equal(all.opened, sum.opened);
        assert_int_equal(all.closed, sum.closed);
        assert_true(all.peak >= all.open);
        assert_true(all.peak >= max_peak);
        assert_int_equal(crest_fd_open_count(), all.open);
        if (round == 0) {
            assert_true(all.open >= 3);
            assert_int_equal(crest_fd_close(p[0]), 0);
            assert_int_equal(crest_fd_close(p[1]), 0);
            assert_int_equal(crest_fd_close(efd), 0);
        }
    }

    crest_fd_counts_t bad;
    assert_int_equal(crest_fd_counts(CREST_FD_ALL + 1, &bad), -EINVAL);
    assert_int_equal(crest_fd_counts(CREST_FD_ALL, NULL), -EINVAL);
    tu_assert_nothing_open();
}

/* A second close of a number that meanwhile belongs to someone else must not
 * close it. */
static void test_double_close_is_caught(void **state) {
    (void)state;
    int p[2], q[2];
    make_pipe(p);
    make_pipe(q);
    int fd = p[0];
    assert_int_equal(crest_fd_register_at(fd, CREST_FD_PIPE, "reg-origin-A"), 0);
    crest_fd_counts_t b = counts_of(CREST_FD_PIPE), ball = counts_of(CREST_FD_ALL);

    assert_int_equal(crest_fd_close_at(fd, "first-close-B"), 0);
    assert_false(tu_fd_is_open(fd));

    /* Someone else, outside the registry, now holds the same number. */
    assert_int_equal(dup3(q[0], fd, O_CLOEXEC), fd);
    assert_true(tu_fd_is_open(fd));

    tu_log_clear();
    assert_int_equal(crest_fd_close_at(fd, "second-close-C"), -EBADF);
    /* close() was NOT called: the fd that reused the number is still open. */
    assert_true(tu_fd_is_open(fd));
    /* ... and it is still the same open file as q[0]. */
    struct stat st1, st2;
    assert_int_equal(fstat(fd, &st1), 0);
    assert_int_equal(fstat(q[0], &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino);

    crest_fd_counts_t c = counts_of(CREST_FD_PIPE), all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.bad_closes, ball.bad_closes + 1);
    assert_int_equal(c.bad_closes, b.bad_closes + 1);
    assert_int_equal(c.closed, b.closed + 1); /* the bad close is not a close */
    assert_int_equal(all.closed, ball.closed + 1);
    assert_int_equal(c.open, b.open - 1);

    /* Logged, with where it was opened, first closed, and closed again. */
    if (!tu_log_line_has("second-close-C", "first-close-B", "reg-origin-A"))
        tu_log_dump();
    assert_true(tu_log_line_has("second-close-C", "first-close-B", "reg-origin-A"));
    char num[16];
    snprintf(num, sizeof num, "%d", fd);
    assert_true(tu_log_line_has("second-close-C", num, NULL));

    /* A third close: caught again. */
    assert_int_equal(crest_fd_close(fd), -EBADF);
    assert_true(tu_fd_is_open(fd));
    assert_int_equal(counts_of(CREST_FD_ALL).bad_closes, ball.bad_closes + 2);

    close(fd);
    close(p[1]);
    close(q[0]);
    close(q[1]);
    tu_assert_nothing_open();
}

static void test_close_of_unregistered_fd_is_caught(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    crest_fd_counts_t ball = counts_of(CREST_FD_ALL);

    tu_log_clear();
    assert_int_equal(crest_fd_close_at(p[0], "stranger-close"), -EBADF);
    assert_true(tu_fd_is_open(p[0])); /* not closed */
    crest_fd_counts_t all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.bad_closes, ball.bad_closes + 1);
    assert_int_equal(all.closed, ball.closed);
    assert_int_equal(all.open, ball.open);
    char num[16];
    snprintf(num, sizeof num, "%d", p[0]);
    assert_true(tu_log_line_has("stranger-close", num, NULL));

    /* Out of range: negative, and beyond anything the table has seen. */
    assert_int_equal(crest_fd_close(-1), -EBADF);
    assert_int_equal(crest_fd_close(1 << 20), -EBADF);
    assert_int_equal(counts_of(CREST_FD_ALL).bad_closes, ball.bad_closes + 3);

    close(p[0]);
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_register_twice_is_eexist(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    assert_int_equal(crest_fd_register_at(p[0], CREST_FD_PIPE, "first-reg"), 0);
    crest_fd_counts_t b = counts_of(CREST_FD_PIPE), buser = counts_of(CREST_FD_USER);

    tu_log_clear();
    assert_int_equal(crest_fd_register_at(p[0], CREST_FD_USER, "second-reg"), -EEXIST);
    /* The earlier origin is logged. */
    assert_true(tu_log_contains("first-reg"));

    /* Nothing changed: same counters, same entry. */
    crest_fd_counts_t c = counts_of(CREST_FD_PIPE), u = counts_of(CREST_FD_USER);
    assert_memory_equal(&c, &b, sizeof c);
    assert_memory_equal(&u, &buser, sizeof u);
    crest_fd_kind_t kind;
    const char *origin = NULL;
    assert_int_equal(crest_fd_lookup(p[0], &kind, &origin, NULL), 0);
    assert_int_equal(kind, CREST_FD_PIPE);
    assert_string_equal(origin, "first-reg");

    assert_int_equal(crest_fd_close(p[0]), 0);
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_register_bad_arguments(void **state) {
    (void)state;
    crest_fd_counts_t ball = counts_of(CREST_FD_ALL);
    assert_int_equal(crest_fd_register(-1, CREST_FD_USER), -EBADF);
    assert_int_equal(crest_fd_register(-42, CREST_FD_PIPE), -EBADF);
    int p[2];
    make_pipe(p);
    assert_true(crest_fd_register(p[0], CREST_FD_KIND_COUNT) < 0);
    assert_true(crest_fd_register(p[0], (crest_fd_kind_t)1000) < 0);
    assert_int_not_equal(crest_fd_lookup(p[0], NULL, NULL, NULL), 0);
    crest_fd_counts_t all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.opened, ball.opened);
    assert_int_equal(all.open, ball.open);
    close(p[0]);
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_release_without_close(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    crest_fd_counts_t ball = counts_of(CREST_FD_ALL);
    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    assert_int_equal(crest_fd_open_count(), ball.open + 1);

    assert_int_equal(crest_fd_release(p[0]), 0);
    assert_true(tu_fd_is_open(p[0])); /* not closed */
    assert_int_not_equal(crest_fd_lookup(p[0], NULL, NULL, NULL), 0);
    assert_int_equal(crest_fd_open_count(), ball.open);
    crest_fd_counts_t all = counts_of(CREST_FD_ALL);
    assert_int_equal(all.open, ball.open);
    assert_int_equal(all.bad_closes, ball.bad_closes);

    /* Released means forgotten: neither a release nor a close of it now. */
    assert_int_equal(crest_fd_release(p[0]), -EBADF);
    assert_int_equal(crest_fd_close(p[0]), -EBADF);
    assert_true(tu_fd_is_open(p[0]));

    /* And it can be registered again (ownership came back). */
    assert_int_equal(crest_fd_register(p[0], CREST_FD_USER), 0);
    assert_int_equal(crest_fd_close(p[0]), 0);
    assert_false(tu_fd_is_open(p[0]));
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_lookup_kind_origin_generation(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    crest_fd_kind_t kind = CREST_FD_USER;
    const char *origin = NULL;
    uint64_t gen0 = 0, gen1 = 0, gen2 = 0;

    assert_int_not_equal(crest_fd_lookup(p[0], &kind, &origin, &gen0), 0);
    assert_int_not_equal(crest_fd_lookup(-1, &kind, &origin, &gen0), 0);
    assert_int_not_equal(crest_fd_lookup(1 << 20, &kind, &origin, &gen0), 0);

    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    assert_int_equal(crest_fd_register(p[1], CREST_FD_EVENTFD), 0);
    assert_int_equal(crest_fd_lookup(p[0], &kind, &origin, &gen0), 0);
    assert_int_equal(kind, CREST_FD_PIPE);
    assert_non_null(origin);
    assert_non_null(strstr(origin, "test_fdreg.c"));
    assert_int_equal(crest_fd_lookup(p[1], &kind, &origin, &gen1), 0);
    assert_int_equal(kind, CREST_FD_EVENTFD);
    assert_non_null(strstr(origin, "test_fdreg.c"));
    assert_true(gen1 > gen0);
    /* NULL out-parameters are allowed. */
    assert_int_equal(crest_fd_lookup(p[0], NULL, NULL, NULL), 0);

    /* Close and reuse the same number: a new, larger generation. */
    int n = p[0];
    assert_int_equal(crest_fd_close(n), 0);
    assert_int_not_equal(crest_fd_lookup(n, NULL, NULL, NULL), 0);
    assert_int_equal(dup3(p[1], n, O_CLOEXEC), n);
    assert_int_equal(crest_fd_register_at(n, CREST_FD_USER, "again"), 0);
    assert_int_equal(crest_fd_lookup(n, &kind, &origin, &gen2), 0);
    assert_int_equal(kind, CREST_FD_USER);
    assert_string_equal(origin, "again");
    assert_true(gen2 > gen1);

    assert_int_equal(crest_fd_close(n), 0);
    assert_int_equal(crest_fd_close(p[1]), 0);
    tu_assert_nothing_open();
}

static void test_report_lists_leaked_fd(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    uint64_t before = crest_fd_open_count();
    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    const char *origin = NULL;
    assert_int_equal(crest_fd_lookup(p[0], NULL, &origin, NULL), 0);

    int n = -1;
    char *text = report_text(&n);
    assert_non_null(text);
    assert_int_equal(n, (int)before + 1);
    /* One line names the fd, its kind and its origin. */
    if (!line_has(text, "pipe", origin, NULL, p[0]))
        print_message("%s", text ? text : "(null)");
    assert_true(line_has(text, "pipe", origin, NULL, p[0]));
    assert_non_null(strstr(origin, "test_fdreg.c"));
    assert_null(strstr(text, "0 fds leaked"));
    if (before == 0)
        assert_non_null(strstr(text, "1 fd leaked"));
    free(text);

    /* Through the log (NULL out) at INFO. */
    tu_log_clear();
    assert_int_equal(crest_fd_report(NULL), (int)before + 1);
    assert_true(tu_log_contains(origin));

    assert_int_equal(crest_fd_close(p[0]), 0);
    close(p[1]);
    tu_assert_nothing_open();
}

static void test_report_clean(void **state) {
    (void)state;
    /* Nothing else in this program registers fds. */
    assert_int_equal(crest_fd_open_count(), 0);
    int n = -1;
    char *text = report_text(&n);
    assert_non_null(text);
    assert_int_equal(n, 0);
    if (!strstr(text, "0 fds leaked"))
        print_message("%s", text ? text : "(null)");
    assert_non_null(strstr(text, "0 fds leaked"));
    free(text);

    tu_log_clear();
    assert_int_equal(crest_fd_report(NULL), 0);
    assert_true(tu_log_contains("0 fds leaked"));
    tu_assert_nothing_open();
}

/* The /proc/self/fd cross-check names fds the registry does not know. */
static void test_report_lists_unregistered(void **state) {
    (void)state;
    int p[2], q[2];
    make_pipe(p);
    make_pipe(q);
    assert_int_equal(crest_fd_register(q[0], CREST_FD_PIPE), 0);
    assert_int_equal(crest_fd_register(q[1], CREST_FD_PIPE), 0);

    int n = -1;
    char *text = report_text(&n);
    assert_non_null(text);
    if (!unregistered_lists(text, p[0]) || !unregistered_lists(text, p[1]) ||
        unregistered_lists(text, q[0]) || unregistered_lists(text, q[1]))
        print_message("%s", text ? text : "(null)");
    assert_true(unregistered_lists(text, p[0]));
    assert_true(unregistered_lists(text, p[1]));
    /* The registered ones are not called unregistered. */
    assert_false(unregistered_lists(text, q[0]));
    assert_false(unregistered_lists(text, q[1]));
    /* Unregistered fds are not crest's leaks. */
    assert_int_equal(n, 2);
    free(text);

    assert_int_equal(crest_fd_close(q[0]), 0);
    assert_int_equal(crest_fd_close(q[1]), 0);
    close(p[0]);
    close(p[1]);

    text = report_text(&n);
    assert_non_null(text);
    assert_int_equal(n, 0);
    assert_non_null(strstr(text, "0 fds leaked"));
    free(text);
    tu_assert_nothing_open();
}

/* Many threads opening and closing through the registry at once: the
 * counters add up. */
#define REG_THREADS 4
#define REG_ROUNDS 500

static void *reg_worker(void *arg) {
    (void)arg;
    for (int i = 0; i < REG_ROUNDS; i++) {
        int fd = eventfd(0, EFD_CLOEXEC);
        if (fd < 0)
            return (void *)1;
        if (crest_fd_register(fd, CREST_FD_EVENTFD) != 0)
            return (void *)2;
        if (crest_fd_close(fd) != 0)
            return (void *)3;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    crest_fd_counts_t b = counts_of(CREST_FD_EVENTFD), ball = counts_of(CREST_FD_ALL);
    pthread_t th[REG_THREADS];
    for (int i = 0; i < REG_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reg_worker, NULL), 0);
    for (int i = 0; i < REG_THREADS; i++) {
        void *ret = (void *)-1;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_null(ret);
    }
    crest_fd_counts_t c = counts_of(CREST_FD_EVENTFD), all = counts_of(CREST_FD_ALL);
    assert_int_equal(c.opened, b.opened + REG_THREADS * REG_ROUNDS);
    assert_int_equal(c.closed, b.closed + REG_THREADS * REG_ROUNDS);
    assert_int_equal(c.open, b.open);
    assert_true(c.peak >= 1 && c.peak <= b.peak + REG_THREADS);
    assert_int_equal(c.bad_closes, b.bad_closes);
    assert_int_equal(all.bad_closes, ball.bad_closes);
    tu_assert_nothing_open();
}

/* ---- ownership: a loop's report names its own fds only -------------------- */

/* Internal (src/internal.h): register an fd as opened by a loop, to give a
 * loop a leak of its own. */
int crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin);
int crest__fd_report_owner(const void *owner, const char *what);

/* A loop destroyed with one of its fds open reports that one, not the
 * application's; the next loop (usually at the same address, so once
 * with the same owner id) does not inherit the first one's leak. */
static void test_loop_reports_only_its_own_fds(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    assert_int_equal(crest_fd_register(p[0], CREST_FD_PIPE), 0);
    crest_loop_t *a = tu_loop();
    assert_int_equal(crest__fd_register(p[1], CREST_FD_PIPE, a, "test: loop a's leak"), 0);
    assert_int_equal(crest_loop_destroy(a), 1);
    assert_true(tu_log_line_has("test: loop a's leak", NULL, NULL));
    crest_loop_t *b = tu_loop();
    assert_int_equal(crest_loop_destroy(b), 0);
    /* The leak is still the registry's: the full report lists it. */
    int n = -1;
    char *text = report_text(&n);
    assert_true(line_has(text, "test: loop a's leak", NULL, NULL, p[1]));
    free(text);
    assert_int_equal(crest_fd_close(p[0]), 0);
    assert_int_equal(crest_fd_close(p[1]), 0);

    /* Many loops, destroyed in a scrambled order (owners leave the table
     * in any order): each reports exactly its own leak. */
    enum { NL = 24 };
    crest_loop_t *loops[NL];
    int fds[NL];
    for (int i = 0; i < NL; i += 2)
        make_pipe(&fds[i]);
    for (int i = 0; i < NL; i++) {
        loops[i] = tu_loop();
        assert_int_equal(crest__fd_register(fds[i], CREST_FD_PIPE, loops[i], "test: many"), 0);
    }
    for (int k = 0; k < NL; k++) {
        int i = (k * 7) % NL; /* 7 and 24 are coprime: each once */
        assert_int_equal(crest_loop_destroy(loops[i]), 1);
        assert_int_equal(crest_fd_close(fds[i]), 0);
    }
    tu_assert_nothing_open();
}

/* Thousands of owners registering and leaving in a pseudo-random order:
 * every report finds its owner and exactly its one fd (the owner table
 * deletes without tombstones, and reuses ids).  The fd numbers are only
 * table entries here: nothing is opened. */
#define OWNERS 2000
#define OWNER_FD_BASE 1000
static char owner_objs[OWNERS];

static void test_many_owners_come_and_go(void **state) {
    (void)state;
    static bool alive[OWNERS];
    memset(alive, 0, sizeof alive);
    uint32_t x = 12345;
    crest_log_set_level(CREST_LOG_ERROR); /* one line per report otherwise */
    for (int step = 0; step < 20000; step++) {
        x = x * 1103515245u + 12345u;
        int i = (int)((x >> 8) % OWNERS);
        if (!alive[i]) {
            assert_int_equal(crest__fd_register(OWNER_FD_BASE + i, CREST_FD_USER, &owner_objs[i],
                                                "test: owners"), 0);
        } else {
            assert_int_equal(crest__fd_report_owner(&owner_objs[i], "test owner"), 1);
            assert_int_equal(crest_fd_release(OWNER_FD_BASE + i), 0);
        }
        alive[i] = !alive[i];
    }
    for (int i = 0; i < OWNERS; i++) {
        if (alive[i]) {
            assert_int_equal(crest__fd_report_owner(&owner_objs[i], "test owner"), 1);
            assert_int_equal(crest_fd_release(OWNER_FD_BASE + i), 0);
        }
        assert_int_equal(crest__fd_report_owner(&owner_objs[i], "test owner"), 0);
    }
    crest_log_set_level(CREST_LOG_INFO);
    tu_assert_nothing_open();
}

/* 65,535 origins and more: once the origin table is full, new origins are
 * reported as "?", and ownership is untouched: a loop still owns its fds
 * (it is created, and its report names its own leak), and the
 * application's fds are not the loop's.  Runs last: the table stays full
 * for the rest of the process. */
#define MANY_ORIGINS 65600
static char origin_labels[MANY_ORIGINS];

static void test_origin_table_full(void **state) {
    (void)state;
    int p[2];
    make_pipe(p);
    for (int i = 0; i < MANY_ORIGINS; i++) {
        assert_int_equal(crest_fd_register_at(p[0], CREST_FD_PIPE, &origin_labels[i]), 0);
        assert_int_equal(crest_fd_release(p[0]), 0);
    }
    assert_int_equal(crest_fd_register_at(p[0], CREST_FD_PIPE, "test: one origin too many"), 0);
    const char *origin = NULL;
    assert_int_equal(crest_fd_lookup(p[0], NULL, &origin, NULL), 0);
    assert_string_equal(origin, "?");

    crest_loop_t *loop = tu_loop();
    assert_int_equal(crest__fd_register(p[1], CREST_FD_PIPE, loop, "test: the loop's leak"), 0);
    tu_log_clear();
    int leaked = crest_loop_destroy(loop);
    if (leaked != 1)
        tu_log_dump();
    assert_int_equal(leaked, 1); /* p[1], not the application's p[0] */
    assert_int_equal(crest_fd_close(p[0]), 0);
    assert_int_equal(crest_fd_close(p[1]), 0);
    tu_assert_nothing_open();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_kind_names),
        tu_test(test_counters_per_kind),
        tu_test(test_all_is_the_sum_of_kinds),
        tu_test(test_double_close_is_caught),
        tu_test(test_close_of_unregistered_fd_is_caught),
        tu_test(test_register_twice_is_eexist),
        tu_test(test_register_bad_arguments),
        tu_test(test_release_without_close),
        tu_test(test_lookup_kind_origin_generation),
        tu_test(test_report_lists_leaked_fd),
        tu_test(test_report_clean),
        tu_test(test_report_lists_unregistered),
        tu_test(test_threads),
        tu_test(test_loop_reports_only_its_own_fds),
        tu_test(test_many_owners_come_and_go),
        tu_test(test_origin_table_full), /* last: fills the table for good */
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
