/* Fuzz target: the length-prefix codec (crest_framing_next with LENGTH
 * framing).
 *
 * Input: settings, then the byte stream.
 *   byte 0    header width (1, 2, 4 or 8: bits 0-1), little-endian (bit 2),
 *             how the limit is chosen (bits 3-4)
 *   byte 1-4  the limit: small (0..1023), anything up to 2^32-1, or near
 *             SIZE_MAX (where max + header must not wrap, and a limit past
 *             SIZE_MAX - 8 must be refused)
 *   rest      the stream, decoded message by message
 *
 * Every answer is compared with a model written from codec.h: the header
 * is read here byte by byte, a declared length above the limit is
 * TOO_LARGE as soon as the header is in (declared is reported, also for
 * NEED_MORE), a whole frame is its payload.  As for the line codec, a
 * prefix of the remaining input must get the model's answer too.  Each
 * message's header must come back from crest_framing_header(). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include <crest/codec.h>

#include "fuzz.h"

struct expect {
    int rc;
    size_t offset, length, consumed;
    uint64_t declared;
    int has_declared;
};

static uint64_t read_header(const uint8_t *p, unsigned hb, int le) {
    uint64_t v = 0;
    for (unsigned i = 0; i < hb; i++) {
        unsigned shift = 8u * (le ? i : hb - 1 - i);
        v |= (uint64_t)p[i] << shift;
    }
    return v;
}

static struct expect model(unsigned hb, int le, size_t max, const uint8_t *d, size_t len) {
    struct expect e = {CREST_FRAMING_NEED_MORE, 0, 0, 0, 0, 0};
    if (len < hb)
        return e;
    e.declared = read_header(d, hb, le);
    e.has_declared = 1;
    if (e.declared > (uint64_t)max) {
        e.rc = CREST_FRAMING_TOO_LARGE;
        return e;
    }
    if ((uint64_t)(len - hb) < e.declared)
        return e;
    e.rc = 1;
    e.offset = hb;
    e.length = (size_t)e.declared;
    e.consumed = hb + (size_t)e.declared;
    return e;
}

static void compare(const crest_framing_t *f, size_t max, const uint8_t *d, size_t len) {
    crest_frame_t fr;
    memset(&fr, 0xa5, sizeof fr);
    int rc = crest_framing_next(f, d, len, &fr);
    struct expect e = model(f->header_bytes, f->little_endian, max, d, len);
    if (rc != e.rc)
        fprintf(stderr, "length: hb %u le %d len %zu max %zu: crest says %d, the model %d\n",
                (unsigned)f->header_bytes, f->little_endian, len, max, rc, e.rc);
    FUZZ_CHECK(rc == e.rc);
    if (e.has_declared)
        FUZZ_CHECK(fr.declared == e.declared);
    if (rc == 1) {
        FUZZ_CHECK(fr.offset == e.offset);
        FUZZ_CHECK(fr.length == e.length);
        FUZZ_CHECK(fr.consumed == e.consumed);
        FUZZ_CHECK(fr.consumed <= len);
        FUZZ_CHECK(fr.consumed <= crest_framing_max_buffered(f));
        uint8_t hdr[8];
        FUZZ_CHECK(crest_framing_header(f, fr.length, hdr) == (int)f->header_bytes);
        FUZZ_CHECK(memcmp(hdr, d, f->header_bytes) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t widths[4] = {1, 2, 4, 8};
    struct fuzz_in in = {data, size};
    uint8_t b = fuzz_u8(&in);
    uint32_t v = (uint32_t)fuzz_u16(&in) << 16;
    v |= fuzz_u16(&in);
    crest_framing_t f = {.kind = CREST_FRAMING_LENGTH, .header_bytes = widths[b & 3],
                         .little_endian = (b >> 2) & 1};
    switch ((b >> 3) & 3) {
    case 0: f.max_message = v % 1024; break;
    case 1: f.max_message = v; break;
    case 2: f.max_message = SIZE_MAX - (v % 16); break; /* past SIZE_MAX - 8: refused */
    default: f.max_message = (size_t)1 << (v % 64); break;
    }
    if (f.max_message > SIZE_MAX - 8) {
        /* Refused everywhere: validate, decode, header, max_buffered. */
        crest_frame_t fr;
        uint8_t hdr[8];
        FUZZ_CHECK(crest_framing_validate(&f) == -EINVAL);
        FUZZ_CHECK(crest_framing_next(&f, in.p, in.n, &fr) == CREST_FRAMING_INVALID);
        FUZZ_CHECK(crest_framing_header(&f, 0, hdr) < 0);
        FUZZ_CHECK(crest_framing_max_buffered(&f) == 0);
        return 0;
    }
    FUZZ_CHECK(crest_framing_validate(&f) == 0);
    size_t max = f.max_message ? f.max_message : CREST_FRAMING_DEFAULT_MAX;
    uint64_t cap = f.header_bytes == 8 ? UINT64_MAX : (UINT64_C(1) << (8 * f.header_bytes)) - 1;
    size_t biggest = (uint64_t)max < cap ? max : (size_t)cap;
    FUZZ_CHECK(crest_framing_max_buffered(&f) == f.header_bytes + biggest);
    uint8_t hdr[8];
    if (biggest < SIZE_MAX)
        FUZZ_CHECK(crest_framing_header(&f, biggest + 1, hdr) == -EMSGSIZE);

    fuzz_walk_frames(&f, max, in.p, in.n, compare);
    return 0;
}
