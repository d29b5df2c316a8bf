/* Framing codecs: find whole messages in a byte stream.
 *
 * The decoder is pure: it only looks at the caller's bytes and never keeps
 * state, so a connection can call it again after every read with whatever
 * it has buffered.  Every bound is checked before any addition, so a hostile
 * length (0xFFFFFFFF, or 2^64-1 in an 8-byte header) can never wrap an
 * offset: it is rejected as too large first. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "internal.h"

/* Bytes a header or line ending may add around a payload: the most is an
 * 8-byte header.  max_message is capped so that max + this never wraps. */
#define FRAMING_OVERHEAD_MAX 8u

static size_t max_of(const crest_framing_t *f) {
    return f->max_message ? f->max_message : CREST_FRAMING_DEFAULT_MAX;
}

/* The largest length a header of this width can announce. */
static uint64_t header_capacity(uint8_t header_bytes) {
    return header_bytes >= 8 ? UINT64_MAX : (UINT64_C(1) << (8u * header_bytes)) - 1;
}

int crest_framing_validate(const crest_framing_t *f) {
    if (!f)
        return -EINVAL;
    switch (f->kind) {
    case CREST_FRAMING_RAW:
    case CREST_FRAMING_LINE:
        break;
    case CREST_FRAMING_LENGTH:
        switch (f->header_bytes) {
        case 1: case 2: case 4: case 8:
            break;
        default:
            return -EINVAL;
        }
        break;
    default:
        return -EINVAL;
    }
    /* A limit this close to SIZE_MAX would make max_buffered() wrap. */
    if (f->max_message > SIZE_MAX - FRAMING_OVERHEAD_MAX)
        return -EINVAL;
    return 0;
}

/* Line framing.  A '\n' at index i ends a line of i bytes, or i - 1 when a
 * '\r' precedes it.  So a '\n' at index <= max always ends a valid line, one
 * at max + 1 only when data[max] is '\r' (and the '\r' does not count), and
 * one further on never: looking at the first max + 2 bytes (max + 1 when
 * the '\r' counts) is enough to decide. */
static int next_line(size_t max, bool cr_counts, const uint8_t *data, size_t len,
                     crest_frame_t *out) {
    size_t reach = cr_counts ? max + 1 : max + 2;
    size_t window = len < reach ? len : reach;
    const uint8_t *nl = window ? memchr(data, '\n', window) : NULL;
    if (nl) {
        size_t i = (size_t)(nl - data);
        size_t n = (i > 0 && data[i - 1] == '\r') ? i - 1 : i;
        if (n > max)
            return CREST_FRAMING_TOO_LARGE;
        out->offset = 0;
        out->length = n;
        out->consumed = i + 1;
        return 1;
    }
    if (len >= reach)
        return CREST_FRAMING_TOO_LARGE;
    /* max + 1 bytes without '\n': only "...\r" + "\n" can still be valid. */
    if (len == max + 1 && data[max] != '\r')
        return CREST_FRAMING_TOO_LARGE;
    return CREST_FRAMING_NEED_MORE;
}

static uint64_t decode_header(const uint8_t *p, unsigned n, bool little_endian) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[little_endian ? n - 1 - i : i];
    return v;
}

/* Length-prefix framing.  out->declared is set as soon as the header is in,
 * also for NEED_MORE: a connection may use it to size its buffer. */
static int next_length(const crest_framing_t *f, size_t max, const uint8_t *data, size_t len,
                       crest_frame_t *out) {
    size_t hb = f->header_bytes;
    if (len < hb)
        return CREST_FRAMING_NEED_MORE;
    uint64_t declared = decode_header(data, (unsigned)hb, f->little_endian);
    out->declared = declared;
    /* Compared as uint64_t before any size_t arithmetic: cannot wrap. */
    if (declared > (uint64_t)max)
        return CREST_FRAMING_TOO_LARGE;
    size_t n = (size_t)declared;
    if (len - hb < n)
        return CREST_FRAMING_NEED_MORE;
    out->offset = hb;
    out->length = n;
    out->consumed = hb + n; /* n <= max <= SIZE_MAX - 8 */
    return 1;
}

int crest_framing_next(const crest_framing_t *f, const uint8_t *data, size_t len,
                       crest_frame_t *out) {
    if (!out || (!data && len) || crest_framing_validate(f) != 0)
        return CREST_FRAMING_INVALID;
    memset(out, 0, sizeof *out);
    switch (f->kind) {
    case CREST_FRAMING_LINE:
        return next_line(max_of(f), f->line_cr_counts, data, len, out);
    case CREST_FRAMING_LENGTH:
        return next_length(f, max_of(f), data, len, out);
    default:
        /* RAW has no messages to find. */
        return CREST_FRAMING_INVALID;
    }
}

int crest_framing_header(const crest_framing_t *f, size_t payload_len, uint8_t hdr[8]) {
    int rc = crest_framing_validate(f);
    if (rc != 0)
        return rc;
    /* RAW bytes are not messages: there is no limit to enforce. */
    if (f->kind == CREST_FRAMING_RAW)
        return 0;
    if (payload_len > max_of(f))
        return -EMSGSIZE;
    if (f->kind == CREST_FRAMING_LINE)
        return 0;
    unsigned hb = f->header_bytes;
    if ((uint64_t)payload_len > header_capacity(f->header_bytes))
        return -EMSGSIZE;
    if (!hdr)
        return -EINVAL;
    uint64_t v = payload_len;
    for (unsigned i = 0; i < hb; i++) {
        unsigned shift = 8u * (f->little_endian ? i : hb - 1 - i);
        hdr[i] = (uint8_t)(v >> shift);
    }
    return (int)hb;
}

size_t crest_framing_max_buffered(const crest_framing_t *f) {
    if (crest_framing_validate(f) != 0)
        return 0;
    size_t max = max_of(f);
    switch (f->kind) {
    case CREST_FRAMING_LINE:
        return max + (f->line_cr_counts ? 1 : 2); /* the "\n", and the "\r" */
    case CREST_FRAMING_LENGTH: {
        /* A narrow header cannot announce more than it holds, whatever the
         * limit says (1 byte: 255). */
        uint64_t cap = header_capacity(f->header_bytes);
        size_t payload = (uint64_t)max < cap ? max : (size_t)cap;
        return f->header_bytes + payload;
    }
    default:
        return 0;
    }
}
