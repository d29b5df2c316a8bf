/* Fuzz target: the public API as a whole, through the chaos engine
 * (tests/chaos.h) with the input as its choices.
 *
 * Every choice the engine makes (which operation, on which connection,
 * how many bytes, which option, what a handler returns) reads the next
 * byte or two of the input; past its end every choice is 0, the harmless
 * one, and the run winds down: clients half-close and read to the end,
 * connections close, the loop is destroyed.  The checks are the engine's
 * (see the top of tests/chaos.h): callbacks in order and once, every byte
 * in order and none lost at an EOF, counters that match, and nothing left
 * open or allocated at the end.  A failed check aborts, with the last
 * operations printed.
 *
 * The kernel decides how bytes are split between reads, so an input does
 * not always take the same path twice; libFuzzer copes, and a crash input
 * replayed a few times (fuzz/replay-api FILE) usually shows it again. */
#include "fuzz.h"

#include "../tests/chaos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct chaos_opts o = {
        .data = data,
        .size = size,
        .fuzz = true,
        .steps = 2000, /* the input runs out long before, as a rule */
        .scale = 4,    /* smaller transfers: more operations per second */
        .trace = getenv("CREST_CHAOS_TRACE") != NULL,
    };
    chaos_run(&o);
    return 0;
}
