/* Shared bits of the fuzz targets: the libFuzzer entry point and a check
 * that aborts (libFuzzer reports an abort as a crash, with the input).
 *
 * Each target builds two ways:
 *   - with clang -fsanitize=fuzzer (`make fuzz`), libFuzzer drives it;
 *   - with the normal compiler and fuzz/replay.c (`make check`), a plain
 *     program replays the seed corpus and the saved regressions, so every
 *     crash ever found is rerun by every build, under valgrind and the
 *     sanitizers too. */
#ifndef CREST_FUZZ_H
#define CREST_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <crest/codec.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* Reads the input front to back; past the end every byte is 0. */
struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

static inline uint8_t fuzz_u8(struct fuzz_in *in) {
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(struct fuzz_in *in) {
    uint16_t hi = fuzz_u8(in);
    return (uint16_t)(hi << 8 | fuzz_u8(in));
}

/* Up to want bytes of the input itself (fewer at the end). */
static inline const uint8_t *fuzz_bytes(struct fuzz_in *in, size_t want, size_t *got) {
    const uint8_t *p = in->p;
    *got = want < in->n ? want : in->n;
    in->p += *got;
    in->n -= *got;
    return p;
}

/* A codec target's walk over its stream: at each message boundary, compare
 * crest_framing_next() with the target's model on the rest of the input
 * and on a prefix of it (a message split across reads must get the answers
 * a whole one gets), then step over the message.  The cut comes from the
 * last byte, so that the stream itself stays what the fuzzer made. */
typedef void (*fuzz_compare_fn)(const crest_framing_t *f, size_t max, const uint8_t *d,
                                size_t len);

static inline void fuzz_walk_frames(const crest_framing_t *f, size_t max, const uint8_t *p,
                                    size_t len, fuzz_compare_fn compare) {
    size_t cut = len ? p[len - 1] : 0;
    for (size_t guard = 0, n = len; guard <= n; guard++) {
        compare(f, max, p, len);
        compare(f, max, p, len ? cut % (len + 1) : 0);
        crest_frame_t fr;
        if (crest_framing_next(f, p, len, &fr) != 1)
            break;
        FUZZ_CHECK(fr.consumed > 0);
        p += fr.consumed;
        len -= fr.consumed;
    }
}

#endif
