/* Tests for the log hook (include/crest/log.h): the hook and its argument
 * are one pair, whatever another thread does meanwhile. */
#include "crest_test.h"

#include <stdatomic.h>

struct tag {
    const char *name;
};

static struct tag tag_a = {"a"}, tag_b = {"b"};
static atomic_ulong calls_a, calls_b, mismatches;

static void hook_a(crest_log_level_t level, const char *msg, void *arg) {
    (void)level;
    (void)msg;
    atomic_fetch_add(&calls_a, 1);
    if (arg != &tag_a)
        atomic_fetch_add(&mismatches, 1);
}

static void hook_b(crest_log_level_t level, const char *msg, void *arg) {
    (void)level;
    (void)msg;
    atomic_fetch_add(&calls_b, 1);
    if (arg != &tag_b)
        atomic_fetch_add(&mismatches, 1);
}

#define LOG_CALLS 1000000
#define MAX_SETS 50000000

static atomic_bool logging_done;

static void *setter_main(void *arg) {
    (void)arg;
    for (unsigned long i = 0; i < MAX_SETS && !atomic_load(&logging_done); i++) {
        if (i & 1)
            crest_log_set_handler(hook_b, &tag_b);
        else
            crest_log_set_handler(hook_a, &tag_a);
    }
    return NULL;
}

static void *logger_main(void *arg) {
    (void)arg;
    unsigned n = LOG_CALLS / tu_scale(100);
    for (unsigned i = 0; i < n; i++)
        crest_log(CREST_LOG_INFO, "%u", i);
    atomic_store(&logging_done, true);
    return NULL;
}

/* One thread swaps the hook between two pairs as fast as it can while
 * another logs: every call gets the argument set with its function. */
static void test_set_handler_while_logging(void **state) {
    (void)state;
    atomic_store(&calls_a, 0);
    atomic_store(&calls_b, 0);
    atomic_store(&mismatches, 0);
    atomic_store(&logging_done, false);
    crest_log_set_handler(hook_a, &tag_a);
    pthread_t setter, logger;
    assert_int_equal(pthread_create(&setter, NULL, setter_main, NULL), 0);
    assert_int_equal(pthread_create(&logger, NULL, logger_main, NULL), 0);
    assert_int_equal(pthread_join(logger, NULL), 0);
    assert_int_equal(pthread_join(setter, NULL), 0);
    crest_log_set_handler(NULL, NULL);
    print_message("hook a: %lu calls, hook b: %lu calls, mismatched: %lu\n",
                  atomic_load(&calls_a), atomic_load(&calls_b), atomic_load(&mismatches));
    assert_int_equal(atomic_load(&calls_a) + atomic_load(&calls_b), LOG_CALLS / tu_scale(100));
    assert_int_equal(atomic_load(&mismatches), 0);
}

/* The plain sequence: a set hook gets its argument; level filtering comes
 * first; NULL gives the default back. */
static void test_set_handler_sequence(void **state) {
    (void)state;
    atomic_store(&calls_a, 0);
    atomic_store(&calls_b, 0);
    atomic_store(&mismatches, 0);
    crest_log_set_handler(hook_a, &tag_a);
    crest_log(CREST_LOG_WARN, "one");
    crest_log(CREST_LOG_DEBUG, "filtered"); /* default level INFO */
    crest_log_set_handler(hook_b, &tag_b);
    crest_log(CREST_LOG_ERROR, "two");
    crest_log_set_handler(NULL, NULL);
    assert_int_equal(atomic_load(&calls_a), 1);
    assert_int_equal(atomic_load(&calls_b), 1);
    assert_int_equal(atomic_load(&mismatches), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_handler_sequence),
        cmocka_unit_test(test_set_handler_while_logging),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
