/* Fuzz target: the line codec (crest_framing_next with LINE framing).
 *
 * Input: two bytes of settings, then the byte stream.
 *   byte 0-1  bits 0-14: max_message, 0 (the 64 KiB default) or 1..512,
 *             small so that the limit is hit often; bit 15: line_cr_counts
 *   rest      the stream, decoded message by message
 *
 * Every answer of crest_framing_next() is compared with a model written
 * here from the rules in codec.h, independently of src/codec.c:
 *   - a line ends at the first "\n"; a "\r" right before it is dropped;
 *     the message excludes the ending; consumed includes it;
 *   - a line longer than max is TOO_LARGE (with line_cr_counts, a line
 *     whose bytes before the "\n", "\r" included, are more than max), and
 *     as soon as the bytes prove
 *     it: when no "\n" can come any more that would end a line of at most
 *     max bytes;
 *   - otherwise NEED_MORE.
 * The same comparison runs on a prefix of the remaining input (the cut
 * chosen by the input), which checks that a line split across reads gets
 * the answers a whole one gets.  crest_framing_header() and
 * crest_framing_max_buffered() are checked against the same rules. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include <crest/codec.h>

#include "fuzz.h"

struct expect {
    int rc;
    size_t length, consumed;
};

/* cr_counts: the limit applies to everything before the "\n". */
static struct expect model(size_t max, bool cr_counts, const uint8_t *d, size_t len) {
    struct expect e = {CREST_FRAMING_NEED_MORE, 0, 0};
    for (size_t i = 0; i < len; i++) {
        if (d[i] != '\n')
            continue;
        size_t n = (i > 0 && d[i - 1] == '\r') ? i - 1 : i;
        if ((cr_counts ? i : n) > max)
            e.rc = CREST_FRAMING_TOO_LARGE;
        else
            e = (struct expect){1, n, i + 1};
        return e;
    }
    /* No "\n" yet.  The shortest line a later "\n" (at index len) could
     * end: len bytes, or len - 1 if the last byte is "\r" (and does not
     * count). */
    size_t shortest = (!cr_counts && len > 0 && d[len - 1] == '\r') ? len - 1 : len;
    if (shortest > max)
        e.rc = CREST_FRAMING_TOO_LARGE;
    return e;
}

static void compare(const crest_framing_t *f, size_t max, const uint8_t *d, size_t len) {
    crest_frame_t fr;
    memset(&fr, 0xa5, sizeof fr);
    int rc = crest_framing_next(f, d, len, &fr);
    struct expect e = model(max, f->line_cr_counts, d, len);
    if (rc != e.rc)
        fprintf(stderr, "line: len %zu max %zu: crest says %d, the model %d\n", len, max, rc,
                e.rc);
    FUZZ_CHECK(rc == e.rc);
    if (rc == 1) {
        FUZZ_CHECK(fr.offset == 0);
        FUZZ_CHECK(fr.length == e.length);
        FUZZ_CHECK(fr.consumed == e.consumed);
        FUZZ_CHECK(fr.consumed <= len);
        FUZZ_CHECK(memchr(d, '\n', fr.length) == NULL);
        FUZZ_CHECK(fr.consumed <= crest_framing_max_buffered(f));
        /* a message never exceeds the limit, and framing it is allowed */
        FUZZ_CHECK(fr.length <= max);
        FUZZ_CHECK(crest_framing_header(f, fr.length, NULL) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = {data, size};
    uint16_t u = fuzz_u16(&in);
    uint16_t m = (uint16_t)((u & 0x7fff) % 513);
    crest_framing_t f = {.kind = CREST_FRAMING_LINE, .max_message = m,
                         .line_cr_counts = (u & 0x8000) != 0};
    size_t max = m ? m : CREST_FRAMING_DEFAULT_MAX;
    FUZZ_CHECK(crest_framing_validate(&f) == 0);
    FUZZ_CHECK(crest_framing_max_buffered(&f) == max + (f.line_cr_counts ? 1 : 2));
    FUZZ_CHECK(crest_framing_header(&f, max + 1, NULL) == -EMSGSIZE);

    fuzz_walk_frames(&f, max, in.p, in.n, compare);
    return 0;
}
