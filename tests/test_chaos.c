/* The chaos test: the engine of tests/chaos.h run for a fixed set of seeds
 * (a few seconds; fewer seeds under valgrind).  A failed check prints the
 * seed, the last operations and crest's log, and aborts.
 *
 * By hand:
 *   CREST_CHAOS_SEEDS=500 tests/test_chaos       seeds 1..500
 *   CREST_CHAOS_SEEDS=17-17 tests/test_chaos     one seed (also "3,17,40")
 *   CREST_CHAOS_ITER=2000                        steps per seed (default 300)
 *   CREST_CHAOS_TRACE=1                          print every operation
 *   CREST_CHAOS_SLOW=1                           dump the open connections
 *                                                when winding down is slow
 *   CREST_CHAOS_INCLUDE=nested_run_once,...      put back operations left
 *                                                out for known bugs ("all")
 */
#include "chaos.h"

#include <signal.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define DEFAULT_SEEDS 30
#define DEFAULT_SEEDS_VALGRIND 30
#define DEFAULT_STEPS 300

static unsigned long env_ulong(const char *name, unsigned long dflt) {
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    return strtoul(s, NULL, 10);
}

static void run_seed(uint64_t seed, unsigned steps, bool trace, unsigned scale) {
    struct chaos_opts o = {.seed = seed, .steps = steps, .trace = trace, .scale = scale};
    /* A hang (a callback that never returns, a loop that spins) dies here
     * instead of stalling the suite.  Generous: valgrind is slow. */
    alarm(RUNNING_ON_VALGRIND ? 600 : 120);
    chaos_run(&o);
    alarm(0);
}

int main(void) {
    unsigned steps = (unsigned)env_ulong("CREST_CHAOS_ITER", DEFAULT_STEPS);
    bool trace = env_ulong("CREST_CHAOS_TRACE", 0) != 0;
    unsigned scale = RUNNING_ON_VALGRIND ? 2 : 1;
    const char *spec = getenv("CREST_CHAOS_SEEDS");
    unsigned long runs = 0;
    unsigned long ops = 0, callbacks = 0, conns = 0;
    unsigned long long echoed = 0;
    unsigned long long flushes = 0, flushed = 0, capped = 0, walks = 0, shutdowns = 0,
                       reframes = 0;
    signal(SIGALRM, SIG_DFL);

    /* "N": seeds 1..N; "A-B": A..B; "A,B,C": those. */
    uint64_t list[4096];
    size_t n = 0;
    if (!spec || !*spec) {
        unsigned long count = RUNNING_ON_VALGRIND ? DEFAULT_SEEDS_VALGRIND : DEFAULT_SEEDS;
        for (unsigned long i = 1; i <= count; i++)
            list[n++] = i;
    } else if (strchr(spec, '-')) {
        unsigned long a = strtoul(spec, NULL, 10), b = strtoul(strchr(spec, '-') + 1, NULL, 10);
        for (unsigned long i = a; i <= b && n < 4096; i++)
            list[n++] = i;
    } else if (strchr(spec, ',')) {
        for (const char *p = spec; p && *p && n < 4096; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
            list[n++] = strtoull(p, NULL, 10);
    } else {
        unsigned long count = strtoul(spec, NULL, 10);
        for (unsigned long i = 1; i <= count && n < 4096; i++)
            list[n++] = i;
    }

    for (size_t i = 0; i < n; i++) {
        run_seed(list[i], steps, trace, scale);
        runs++;
        ops += G.ops;
        callbacks += G.callbacks;
        conns += (unsigned long)G.created;
        echoed += G.bytes_echoed;
        flushes += G.flush_run;
        flushed += G.flushed;
        capped += G.cap_refused;
        walks += G.foreach_runs;
        shutdowns += G.shut_done;
        reframes += G.reframes;
    }
    printf("chaos: %lu EOFs with every byte accounted for; closes:", ch_totals.eof_complete);
    for (int i = 0; i < CREST_CLOSE_REASON_COUNT; i++)
        if (ch_totals.reasons[i])
            printf(" %s %lu", crest_close_reason_key((crest_close_reason_t)i), ch_totals.reasons[i]);
    printf("\n");
    ch_print_reentry(stdout);
    unsigned ex = ch_exclusions();
    printf("chaos: %lu seeds x %u steps: %lu operations, %lu callbacks, %lu connections, "
           "%llu bytes echoed; no failure\n",
           runs, steps, ops, callbacks, conns, echoed);
    printf("chaos: issue 12: %llu flush callbacks, %llu on_flushed, %llu writes refused at "
           "the cap, %llu foreach walks, %llu loop shutdowns done, %llu LINE/LENGTH to RAW\n",
           flushes, flushed, capped, walks, shutdowns, reframes);
    if (ex) {
        printf("chaos: left out for known bugs:");
        for (int i = 0; i < CH_BUG_COUNT; i++)
            if (ex & (1u << i))
                printf(" %s", ch_bug_names[i]);
        printf("\n");
    }
    return 0;
}
