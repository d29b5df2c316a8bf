/* Tests for the framing codecs (include/crest/codec.h). */
#include "crest_test.h"

/* ---- helpers ------------------------------------------------------------ */

static const uint8_t header_widths[] = {1, 2, 4, 8};

static crest_framing_t line_framing(size_t max) {
    crest_framing_t f = {.kind = CREST_FRAMING_LINE, .max_message = max};
    return f;
}

static crest_framing_t length_framing(uint8_t hb, bool le, size_t max) {
    crest_framing_t f = {
        .kind = CREST_FRAMING_LENGTH, .header_bytes = hb, .little_endian = le, .max_message = max};
    return f;
}

/* A header of width hb for value v, written by hand (not by the codec). */
static void manual_header(uint8_t hb, bool le, uint64_t v, uint8_t *out) {
    for (unsigned i = 0; i < hb; i++) {
        unsigned shift = 8u * (le ? i : hb - 1u - i);
        out[i] = (uint8_t)(v >> shift);
    }
}

static int next(const crest_framing_t *f, const void *data, size_t len, crest_frame_t *out) {
    memset(out, 0xa5, sizeof *out);
    return crest_framing_next(f, data, len, out);
}

/* What a connection does: append what was read, take every whole message,
 * drop what they consumed, keep the rest for the next read. */
struct feeder {
    const crest_framing_t *f;
    uint8_t *buf;
    size_t len, cap;
    uint8_t *msgs; /* the messages, concatenated */
    size_t msgs_len, msgs_cap;
    size_t lens[64];
    size_t count;
    int error;     /* the first negative result, 0 if none */
    size_t calls;  /* feed() calls */
};

static void grow(uint8_t **p, size_t *cap, size_t need) {
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    uint8_t *n = realloc(*p, c);
    assert_non_null(n);
    *p = n;
    *cap = c;
}

static void feeder_init(struct feeder *fd, const crest_framing_t *f) {
    memset(fd, 0, sizeof *fd);
    fd->f = f;
}

static void feeder_free(struct feeder *fd) {
    free(fd->buf);
    free(fd->msgs);
    memset(fd, 0, sizeof *fd);
}

static void feed(struct feeder *fd, const void *data, size_t n) {
    fd->calls++;
    if (fd->error)
        return;
    grow(&fd->buf, &fd->cap, fd->len + n);
    if (n)
        memcpy(fd->buf + fd->len, data, n);
    fd->len += n;
    for (;;) {
        crest_frame_t fr;
        int rc = next(fd->f, fd->buf, fd->len, &fr);
        if (rc == CREST_FRAMING_NEED_MORE) {
            /* A connection never needs to hold more than this. */
            assert_true(fd->len < crest_framing_max_buffered(fd->f));
            return;
        }
        if (rc < 0) {
            fd->error = rc;
            return;
        }
        assert_int_equal(rc, 1);
        assert_true(fr.offset <= fr.consumed);
        assert_true(fr.length <= fr.consumed - fr.offset);
        assert_true(fr.consumed <= fd->len);
        assert_true(fr.consumed > 0);
        assert_true(fr.consumed <= crest_framing_max_buffered(fd->f));
        assert_true(fd->count < sizeof fd->lens / sizeof fd->lens[0]);
        grow(&fd->msgs, &fd->msgs_cap, fd->msgs_len + fr.length + 1);
        if (fr.length)
            memcpy(fd->msgs + fd->msgs_len, fd->buf + fr.offset, fr.length);
        fd->msgs_len += fr.length;
        fd->lens[fd->count++] = fr.length;
        memmove(fd->buf, fd->buf + fr.consumed, fd->len - fr.consumed);
        fd->len -= fr.consumed;
    }
}

/* The expected messages of a stream. */
struct expect {
    uint8_t data[4096]; /* concatenated */
    size_t data_len;
    size_t lens[64];
    size_t count;
};

static void expect_add(struct expect *e, const void *msg, size_t n) {
    assert_true(e->data_len + n <= sizeof e->data);
    assert_true(e->count < sizeof e->lens / sizeof e->lens[0]);
    if (n)
        memcpy(e->data + e->data_len, msg, n);
    e->data_len += n;
    e->lens[e->count++] = n;
}

static void assert_feeder_got(const struct feeder *fd, const struct expect *e) {
    assert_int_equal(fd->error, 0);
    assert_int_equal(fd->count, e->count);
    for (size_t i = 0; i < e->count; i++)
        assert_int_equal(fd->lens[i], e->lens[i]);
    assert_int_equal(fd->msgs_len, e->data_len);
    if (e->data_len)
        assert_memory_equal(fd->msgs, e->data, e->data_len);
    assert_int_equal(fd->len, 0); /* nothing left over */
}

/* Feed the stream split in two at every byte boundary, then one byte at a
 * time, then all at once: every way must give the same messages. */
static void check_every_split(const crest_framing_t *f, const uint8_t *stream, size_t n,
                              const struct expect *e) {
    struct feeder fd;
    for (size_t k = 0; k <= n; k++) {
        feeder_init(&fd, f);
        feed(&fd, stream, k);
        feed(&fd, stream + k, n - k);
        assert_feeder_got(&fd, e);
        feeder_free(&fd);
    }
    /* Three pieces: every (i, j) pair. */
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j += 3) {
            feeder_init(&fd, f);
            feed(&fd, stream, i);
            feed(&fd, stream + i, j - i);
            feed(&fd, stream + j, n - j);
            assert_feeder_got(&fd, e);
            feeder_free(&fd);
        }
    }
    feeder_init(&fd, f);
    for (size_t k = 0; k < n; k++)
        feed(&fd, stream + k, 1);
    assert_feeder_got(&fd, e);
    feeder_free(&fd);
}

/* Append one length-prefixed frame (header by the codec) to a stream. */
static size_t put_frame(const crest_framing_t *f, uint8_t *stream, size_t at, const uint8_t *payload,
                        size_t n) {
    uint8_t hdr[8];
    int hb = crest_framing_header(f, n, hdr);
    assert_int_equal(hb, f->header_bytes);
    memcpy(stream + at, hdr, (size_t)hb);
    if (n)
        memcpy(stream + at + (size_t)hb, payload, n);
    return at + (size_t)hb + n;
}

/* ---- settings ----------------------------------------------------------- */

static void test_validate(void **state) {
    (void)state;
    assert_int_equal(crest_framing_validate(NULL), -EINVAL);

    crest_framing_t f = {.kind = CREST_FRAMING_RAW};
    assert_int_equal(crest_framing_validate(&f), 0);
    f = line_framing(0);
    assert_int_equal(crest_framing_validate(&f), 0);
    f = line_framing(1);
    assert_int_equal(crest_framing_validate(&f), 0);

    for (size_t i = 0; i < sizeof header_widths; i++) {
        f = length_framing(header_widths[i], false, 0);
        assert_int_equal(crest_framing_validate(&f), 0);
        f.little_endian = true;
        assert_int_equal(crest_framing_validate(&f), 0);
    }
    static const uint8_t bad_widths[] = {0, 3, 5, 6, 7, 9, 16, 255};
    for (size_t i = 0; i < sizeof bad_widths; i++) {
        f = length_framing(bad_widths[i], false, 0);
        assert_int_equal(crest_framing_validate(&f), -EINVAL);
    }

    f = line_framing(0);
    f.kind = (crest_framing_kind_t)7;
    assert_int_equal(crest_framing_validate(&f), -EINVAL);

    /* A limit so large that limit + framing would wrap. */
    f = line_framing(SIZE_MAX);
    assert_int_equal(crest_framing_validate(&f), -EINVAL);
    f = length_framing(8, false, SIZE_MAX - 1);
    assert_int_equal(crest_framing_validate(&f), -EINVAL);
    f = length_framing(8, false, SIZE_MAX - 8);
    assert_int_equal(crest_framing_validate(&f), 0);
}

static void test_next_invalid(void **state) {
    (void)state;
    crest_frame_t fr;
    const uint8_t data[] = "abc\n";

    crest_framing_t f = {.kind = CREST_FRAMING_RAW};
    assert_int_equal(next(&f, data, 4, &fr), CREST_FRAMING_INVALID);

    assert_int_equal(next(NULL, data, 4, &fr), CREST_FRAMING_INVALID);
    f = length_framing(3, false, 0);
    assert_int_equal(next(&f, data, 4, &fr), CREST_FRAMING_INVALID);
    f = line_framing(0);
    assert_int_equal(crest_framing_next(&f, data, 4, NULL), CREST_FRAMING_INVALID);
    assert_int_equal(next(&f, NULL, 4, &fr), CREST_FRAMING_INVALID);
    /* No bytes at all is not an error. */
    assert_int_equal(next(&f, NULL, 0, &fr), CREST_FRAMING_NEED_MORE);
    f = length_framing(4, false, 0);
    assert_int_equal(next(&f, NULL, 0, &fr), CREST_FRAMING_NEED_MORE);
}

static void test_max_buffered(void **state) {
    (void)state;
    assert_int_equal(crest_framing_max_buffered(NULL), 0);
    crest_framing_t f = {.kind = CREST_FRAMING_RAW};
    assert_int_equal(crest_framing_max_buffered(&f), 0);

    f = line_framing(0);
    assert_int_equal(crest_framing_max_buffered(&f), CREST_FRAMING_DEFAULT_MAX + 2);
    f = line_framing(100);
    assert_int_equal(crest_framing_max_buffered(&f), 102);

    f = length_framing(4, false, 0);
    assert_int_equal(crest_framing_max_buffered(&f), 4 + CREST_FRAMING_DEFAULT_MAX);
    f = length_framing(8, true, 1000);
    assert_int_equal(crest_framing_max_buffered(&f), 1008);
    f = length_framing(2, false, 100);
    assert_int_equal(crest_framing_max_buffered(&f), 102);
    /* A narrow header caps the payload below the limit. */
    f = length_framing(1, false, 0);
    assert_int_equal(crest_framing_max_buffered(&f), 1 + 255);
    f = length_framing(2, false, 0);
    assert_int_equal(crest_framing_max_buffered(&f), 2 + 65535);

    f = length_framing(3, false, 0); /* invalid */
    assert_int_equal(crest_framing_max_buffered(&f), 0);
}

/* ---- length-prefix framing ---------------------------------------------- */

/* Every width and byte order: the header bytes are exactly what the
 * convention says, and decoding finds the payload. */
static void test_length_widths_and_byte_order(void **state) {
    (void)state;
    for (size_t w = 0; w < sizeof header_widths; w++) {
        for (int le = 0; le <= 1; le++) {
            uint8_t hb = header_widths[w];
            crest_framing_t f = length_framing(hb, le, 1000);
            size_t n = hb == 1 ? 0xC3 : 0x1A2; /* two distinct bytes where room */
            uint8_t frame[8 + 1000];
            uint8_t want[8];
            manual_header(hb, le, n, want);
            assert_int_equal(crest_framing_header(&f, n, frame), hb);
            assert_memory_equal(frame, want, hb);
            for (size_t i = 0; i < n; i++)
                frame[hb + i] = (uint8_t)(i * 37 + 11);

            crest_frame_t fr;
            assert_int_equal(next(&f, frame, hb + n, &fr), 1);
            assert_int_equal(fr.offset, hb);
            assert_int_equal(fr.length, n);
            assert_int_equal(fr.consumed, hb + n);
            assert_int_equal(fr.declared, n);

            /* The other byte order reads another length. */
            crest_framing_t g = length_framing(hb, !le, 0);
            assert_int_equal(next(&g, frame, hb + n, &fr) == 1 && fr.length == n, hb == 1);
        }
    }
}

/* Hand-written headers with every byte distinct, decoded both ways. */
static void test_length_decode_exact_bytes(void **state) {
    (void)state;
    static const uint8_t h[8] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
    static const struct {
        uint8_t hb;
        bool le;
        uint64_t v;
    } cases[] = {
        {1, false, 0x01},
        {1, true, 0x01},
        {2, false, 0x0102},
        {2, true, 0x0201},
        {4, false, 0x01020304},
        {4, true, 0x04030201},
        {8, false, UINT64_C(0x0102030405060708)},
        {8, true, UINT64_C(0x0807060504030201)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        crest_framing_t f = length_framing(cases[i].hb, cases[i].le, 0x100);
        crest_frame_t fr;
        int rc = next(&f, h, cases[i].hb, &fr);
        assert_int_equal(fr.declared, cases[i].v);
        assert_int_equal(rc, cases[i].v > 0x100 ? CREST_FRAMING_TOO_LARGE : CREST_FRAMING_NEED_MORE);
    }
}

static void test_length_zero_frame(void **state) {
    (void)state;
    for (size_t w = 0; w < sizeof header_widths; w++) {
        for (int le = 0; le <= 1; le++) {
            uint8_t hb = header_widths[w];
            crest_framing_t f = length_framing(hb, le, 0);
            uint8_t buf[9] = {0};
            buf[8] = 0x55; /* the next frame's byte: not part of this one */
            crest_frame_t fr;
            for (size_t k = 0; k < hb; k++)
                assert_int_equal(next(&f, buf, k, &fr), CREST_FRAMING_NEED_MORE);
            assert_int_equal(next(&f, buf, hb, &fr), 1);
            assert_int_equal(fr.offset, hb);
            assert_int_equal(fr.length, 0);
            assert_int_equal(fr.consumed, hb);
            assert_int_equal(fr.declared, 0);
            assert_int_equal(crest_framing_header(&f, 0, buf), hb);
            assert_int_equal(next(&f, buf, sizeof buf, &fr), 1);
            assert_int_equal(fr.consumed, hb);
        }
    }
}

/* Frames split at every byte boundary, fed as a connection would. */
static void test_length_every_split(void **state) {
    (void)state;
    static const size_t sizes[] = {0, 1, 5, 0, 40, 3, 0};
    for (size_t w = 0; w < sizeof header_widths; w++) {
        for (int le = 0; le <= 1; le++) {
            crest_framing_t f = length_framing(header_widths[w], le, 40);
            uint8_t stream[512];
            size_t n = 0;
            struct expect e;
            memset(&e, 0, sizeof e);
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                uint8_t payload[40];
                for (size_t k = 0; k < sizes[i]; k++)
                    payload[k] = (uint8_t)(k == 0 ? 0 : k == 1 ? 0xFF : k == 2 ? '\n' : k * 7 + i);
                n = put_frame(&f, stream, n, payload, sizes[i]);
                expect_add(&e, payload, sizes[i]);
            }
            check_every_split(&f, stream, n, &e);
        }
    }
}

/* Many frames in one read: every one comes out of one buffer. */
static void test_length_many_in_one_buffer(void **state) {
    (void)state;
    crest_framing_t f = length_framing(2, false, 0);
    uint8_t stream[4000];
    size_t n = 0;
    struct expect e;
    memset(&e, 0, sizeof e);
    for (size_t i = 0; i < 60; i++) {
        uint8_t payload[60];
        for (size_t k = 0; k < i; k++)
            payload[k] = (uint8_t)(i + k);
        n = put_frame(&f, stream, n, payload, i);
        expect_add(&e, payload, i);
    }
    struct feeder fd;
    feeder_init(&fd, &f);
    feed(&fd, stream, n);
    assert_feeder_got(&fd, &e);
    assert_int_equal(fd.calls, 1);
    feeder_free(&fd);

    /* The decoder alone, walking the buffer by consumed. */
    size_t at = 0, count = 0;
    crest_frame_t fr;
    while (at < n) {
        assert_int_equal(next(&f, stream + at, n - at, &fr), 1);
        assert_int_equal(fr.length, count);
        at += fr.consumed;
        count++;
    }
    assert_int_equal(at, n);
    assert_int_equal(count, 60);
}

/* The limit itself is allowed; one byte more is not, and that is known from
 * the header alone, before any payload arrives. */
static void test_length_limit_exact(void **state) {
    (void)state;
    for (size_t w = 0; w < sizeof header_widths; w++) {
        for (int le = 0; le <= 1; le++) {
            uint8_t hb = header_widths[w];
            size_t max = hb == 1 ? 200 : 1000;
            crest_framing_t f = length_framing(hb, le, max);
            uint8_t buf[8 + 1001];
            memset(buf, 'x', sizeof buf);
            crest_frame_t fr;

            manual_header(hb, le, max, buf);
            assert_int_equal(next(&f, buf, hb, &fr), CREST_FRAMING_NEED_MORE);
            assert_int_equal(fr.declared, max);
            assert_int_equal(next(&f, buf, hb + max - 1, &fr), CREST_FRAMING_NEED_MORE);
            assert_int_equal(next(&f, buf, hb + max, &fr), 1);
            assert_int_equal(fr.length, max);
            assert_int_equal(fr.consumed, hb + max);

            manual_header(hb, le, max + 1, buf);
            assert_int_equal(next(&f, buf, hb, &fr), CREST_FRAMING_TOO_LARGE);
            assert_int_equal(fr.declared, max + 1);
            assert_int_equal(next(&f, buf, hb + max + 1, &fr), CREST_FRAMING_TOO_LARGE);
            assert_int_equal(fr.declared, max + 1);
        }
    }
    /* The default limit (max_message 0). */
    crest_framing_t f = length_framing(4, false, 0);
    uint8_t hdr[4];
    crest_frame_t fr;
    manual_header(4, false, CREST_FRAMING_DEFAULT_MAX, hdr);
    assert_int_equal(next(&f, hdr, 4, &fr), CREST_FRAMING_NEED_MORE);
    manual_header(4, false, CREST_FRAMING_DEFAULT_MAX + 1, hdr);
    assert_int_equal(next(&f, hdr, 4, &fr), CREST_FRAMING_TOO_LARGE);
    assert_int_equal(fr.declared, CREST_FRAMING_DEFAULT_MAX + 1);
}

static void test_length_ffffffff(void **state) {
    (void)state;
    static const uint8_t ff[8] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    crest_frame_t fr;
    for (int le = 0; le <= 1; le++) {
        crest_framing_t f = length_framing(4, le, 0);
        assert_int_equal(next(&f, ff, 4, &fr), CREST_FRAMING_TOO_LARGE);
        assert_int_equal(fr.declared, UINT64_C(0xFFFFFFFF));
#if SIZE_MAX > 0xFFFFFFFFu
        /* With a limit above it (64-bit size_t), it is only "need more":
         * 4 + 0xFFFFFFFF must not wrap into a short frame. */
        f.max_message = SIZE_MAX - 8;
        assert_int_equal(next(&f, ff, 8, &fr), CREST_FRAMING_NEED_MORE);
        assert_int_equal(fr.declared, UINT64_C(0xFFFFFFFF));
#endif
    }
}

static void test_length_huge_8_byte(void **state) {
    (void)state;
    crest_frame_t fr;
    uint8_t buf[16];
    memset(buf, 'p', sizeof buf);
    for (int le = 0; le <= 1; le++) {
        /* 2^64 - 1: over any limit, even the largest valid one. */
        crest_framing_t f = length_framing(8, le, SIZE_MAX - 8);
        manual_header(8, le, UINT64_MAX, buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_TOO_LARGE);
        assert_int_equal(fr.declared, UINT64_MAX);

        /* 2^32 + 5: must not be read as 5 by a 32-bit truncation. */
        f = length_framing(8, le, 0);
        manual_header(8, le, (UINT64_C(1) << 32) + 5, buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_TOO_LARGE);
        assert_int_equal(fr.declared, (UINT64_C(1) << 32) + 5);

        /* Right at the largest limit: header + length would be SIZE_MAX,
         * and one more would wrap; neither may turn into a message. */
        f = length_framing(8, le, SIZE_MAX - 8);
        manual_header(8, le, (uint64_t)(SIZE_MAX - 8), buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_NEED_MORE);
        manual_header(8, le, (uint64_t)(SIZE_MAX - 7), buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_TOO_LARGE);
        manual_header(8, le, (uint64_t)SIZE_MAX, buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_TOO_LARGE);
        /* 2^63: the sign bit of a signed 64-bit length; a signed compare
         * would let it through. */
        f = length_framing(8, le, 0);
        manual_header(8, le, UINT64_C(1) << 63, buf);
        assert_int_equal(next(&f, buf, sizeof buf, &fr), CREST_FRAMING_TOO_LARGE);
        assert_int_equal(fr.declared, UINT64_C(1) << 63);
    }
}

/* ---- headers ------------------------------------------------------------ */

static void test_header_round_trip(void **state) {
    (void)state;
    static const uint64_t lens[] = {0,     1,     2,      127,    128,        255,
                                    256,   1000,  65535,  65536,  0xFFFFFFFF, 0x100000000,
                                    0x123456789AB};
    for (size_t w = 0; w < sizeof header_widths; w++) {
        for (int le = 0; le <= 1; le++) {
            uint8_t hb = header_widths[w];
            crest_framing_t f = length_framing(hb, le, SIZE_MAX - 8);
            uint64_t cap = hb == 8 ? UINT64_MAX : (UINT64_C(1) << (8 * hb)) - 1;
            for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
                if (lens[i] > SIZE_MAX - 8)
                    continue; /* 32-bit size_t */
                uint8_t hdr[8], want[8];
                int rc = crest_framing_header(&f, (size_t)lens[i], hdr);
                if (lens[i] > cap) {
                    assert_int_equal(rc, -EMSGSIZE);
                    continue;
                }
                assert_int_equal(rc, hb);
                manual_header(hb, le, lens[i], want);
                assert_memory_equal(hdr, want, hb);
                crest_frame_t fr;
                rc = next(&f, hdr, hb, &fr);
                assert_int_equal(fr.declared, lens[i]);
                if (lens[i] == 0) {
                    assert_int_equal(rc, 1);
                } else {
                    assert_int_equal(rc, CREST_FRAMING_NEED_MORE);
                }
            }
        }
    }
}

static void test_header_emsgsize(void **state) {
    (void)state;
    uint8_t hdr[8];
    /* Over max_message. */
    crest_framing_t f = length_framing(4, false, 100);
    assert_int_equal(crest_framing_header(&f, 100, hdr), 4);
    assert_int_equal(crest_framing_header(&f, 101, hdr), -EMSGSIZE);
    f = length_framing(4, false, 0);
    assert_int_equal(crest_framing_header(&f, CREST_FRAMING_DEFAULT_MAX, hdr), 4);
    assert_int_equal(crest_framing_header(&f, CREST_FRAMING_DEFAULT_MAX + 1, hdr), -EMSGSIZE);
    /* Does not fit the header, whatever the limit. */
    f = length_framing(1, true, 0);
    assert_int_equal(crest_framing_header(&f, 255, hdr), 1);
    assert_int_equal(hdr[0], 255);
    assert_int_equal(crest_framing_header(&f, 256, hdr), -EMSGSIZE);
    f = length_framing(2, false, 1u << 20);
    assert_int_equal(crest_framing_header(&f, 65535, hdr), 2);
    assert_int_equal(crest_framing_header(&f, 65536, hdr), -EMSGSIZE);
    f = length_framing(8, false, 0);
    assert_int_equal(crest_framing_header(&f, SIZE_MAX, hdr), -EMSGSIZE);

    /* LINE: no header, but the limit holds. */
    f = line_framing(10);
    assert_int_equal(crest_framing_header(&f, 10, hdr), 0);
    assert_int_equal(crest_framing_header(&f, 11, hdr), -EMSGSIZE);
    assert_int_equal(crest_framing_header(&f, 5, NULL), 0);
    /* RAW: nothing to add. */
    f.kind = CREST_FRAMING_RAW;
    assert_int_equal(crest_framing_header(&f, 5, hdr), 0);

    /* Bad settings. */
    assert_int_equal(crest_framing_header(NULL, 5, hdr), -EINVAL);
    f = length_framing(3, false, 0);
    assert_int_equal(crest_framing_header(&f, 5, hdr), -EINVAL);
}

/* ---- line framing ------------------------------------------------------- */

static void assert_line(const crest_framing_t *f, const char *in, int want_rc, const char *want_msg,
                        size_t want_consumed) {
    crest_frame_t fr;
    int rc = next(f, in, strlen(in), &fr);
    assert_int_equal(rc, want_rc);
    if (rc != 1)
        return;
    assert_int_equal(fr.offset, 0);
    assert_int_equal(fr.length, strlen(want_msg));
    assert_memory_equal(in + fr.offset, want_msg, fr.length);
    assert_int_equal(fr.consumed, want_consumed);
}

static void test_line_basic(void **state) {
    (void)state;
    crest_framing_t f = line_framing(0);
    assert_line(&f, "hello\n", 1, "hello", 6);
    assert_line(&f, "hello\r\n", 1, "hello", 7);
    assert_line(&f, "hello\nworld\n", 1, "hello", 6);
    /* Empty lines. */
    assert_line(&f, "\n", 1, "", 1);
    assert_line(&f, "\r\n", 1, "", 2);
    assert_line(&f, "\n\n", 1, "", 1);
    /* A lone '\r' is data; only the one right before '\n' goes. */
    assert_line(&f, "a\rb\n", 1, "a\rb", 4);
    assert_line(&f, "a\rb\r\n", 1, "a\rb", 5);
    assert_line(&f, "\r\r\n", 1, "\r", 3);
    assert_line(&f, "\rx\n", 1, "\rx", 3);
    /* Not yet a line. */
    assert_line(&f, "", CREST_FRAMING_NEED_MORE, NULL, 0);
    assert_line(&f, "hello", CREST_FRAMING_NEED_MORE, NULL, 0);
    assert_line(&f, "hello\r", CREST_FRAMING_NEED_MORE, NULL, 0);
    assert_line(&f, "\r", CREST_FRAMING_NEED_MORE, NULL, 0);

    /* Binary bytes (NUL included) are kept. */
    static const uint8_t bin[] = {'a', 0, 0xFF, '\r', 'b', '\n'};
    crest_frame_t fr;
    assert_int_equal(next(&f, bin, sizeof bin, &fr), 1);
    assert_int_equal(fr.length, 5);
    assert_int_equal(fr.consumed, 6);
    assert_int_equal(fr.declared, 0);
}

static void test_line_every_split(void **state) {
    (void)state;
    crest_framing_t f = line_framing(8);
    static const char *const lines[] = {
        "alpha\n", "\r\n", "be\rta\r\n", "\n", "gamma\r\r\n", "12345678\r\n", "87654321\n", "\r\n",
    };
    static const char *const msgs[] = {
        "alpha", "", "be\rta", "", "gamma\r", "12345678", "87654321", "",
    };
    uint8_t stream[256];
    size_t n = 0;
    struct expect e;
    memset(&e, 0, sizeof e);
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        memcpy(stream + n, lines[i], strlen(lines[i]));
        n += strlen(lines[i]);
        expect_add(&e, msgs[i], strlen(msgs[i]));
    }
    check_every_split(&f, stream, n, &e);
}

static void test_line_many_in_one_buffer(void **state) {
    (void)state;
    crest_framing_t f = line_framing(0);
    char stream[2048] = "";
    struct expect e;
    memset(&e, 0, sizeof e);
    for (int i = 0; i < 50; i++) {
        char msg[32];
        int m = snprintf(msg, sizeof msg, "line %d", i);
        strcat(stream, msg);
        strcat(stream, i % 2 ? "\r\n" : "\n");
        expect_add(&e, msg, (size_t)m);
    }
    struct feeder fd;
    feeder_init(&fd, &f);
    feed(&fd, stream, strlen(stream));
    assert_feeder_got(&fd, &e);
    feeder_free(&fd);
}

/* The exact boundary, max 8: eight bytes and any ending are fine; nine are
 * not, however they end. */
static void test_line_limit_exact(void **state) {
    (void)state;
    crest_framing_t f = line_framing(8);
    assert_line(&f, "12345678\n", 1, "12345678", 9);
    assert_line(&f, "12345678\r\n", 1, "12345678", 10);
    assert_line(&f, "1234567\r\n", 1, "1234567", 9);
    assert_line(&f, "123456789\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "123456789\r\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    /* The eight bytes may themselves end in a lone '\r' kept as data. */
    assert_line(&f, "1234567\r\r\n", 1, "1234567\r", 10);
    assert_line(&f, "1234567\r\n", 1, "1234567", 9);

    /* The default limit. */
    f = line_framing(0);
    size_t max = CREST_FRAMING_DEFAULT_MAX;
    char *big = malloc(max + 3);
    assert_non_null(big);
    memset(big, 'a', max + 2);
    crest_frame_t fr;
    big[max] = '\n';
    assert_int_equal(next(&f, big, max + 1, &fr), 1);
    assert_int_equal(fr.length, max);
    big[max] = '\r';
    big[max + 1] = '\n';
    assert_int_equal(next(&f, big, max + 2, &fr), 1);
    assert_int_equal(fr.length, max);
    assert_int_equal(fr.consumed, max + 2);
    big[max] = 'a';
    assert_int_equal(next(&f, big, max + 2, &fr), CREST_FRAMING_TOO_LARGE);
    assert_int_equal(next(&f, big, max + 1, &fr), CREST_FRAMING_TOO_LARGE);
    assert_int_equal(next(&f, big, max, &fr), CREST_FRAMING_NEED_MORE);
    free(big);
}

/* line_cr_counts: everything before the '\n' counts, '\r' included (Go's
 * bufio.Scanner), and the limit is known one byte sooner. */
static void test_line_cr_counts(void **state) {
    (void)state;
    crest_framing_t f = line_framing(8);
    f.line_cr_counts = true;
    assert_line(&f, "12345678\n", 1, "12345678", 9);
    assert_line(&f, "1234567\r\n", 1, "1234567", 9);
    assert_line(&f, "12345678\r\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "123456789\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "\r\n", 1, "", 2);
    /* Eight bytes and no '\n' yet: a '\n' may still come. */
    assert_line(&f, "1234567\r", CREST_FRAMING_NEED_MORE, NULL, 0);
    assert_line(&f, "12345678", CREST_FRAMING_NEED_MORE, NULL, 0);
    /* Nine: too long whatever comes, a '\r' among them or not. */
    assert_line(&f, "12345678\r", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "123456789", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_int_equal(crest_framing_max_buffered(&f), 9);
    f.line_cr_counts = false;
    assert_int_equal(crest_framing_max_buffered(&f), 10);
    assert_line(&f, "12345678\r\n", 1, "12345678", 10);
}

/* Without any terminator: the error comes as soon as the bytes prove it,
 * and not a byte earlier. */
static void test_line_too_long_without_terminator(void **state) {
    (void)state;
    crest_framing_t f = line_framing(8);
    assert_line(&f, "12345678", CREST_FRAMING_NEED_MORE, NULL, 0);
    /* Nine bytes, the ninth not '\r': no ending can save it. */
    assert_line(&f, "123456789", CREST_FRAMING_TOO_LARGE, NULL, 0);
    /* Nine with a '\r' last: "\n" next would end an 8-byte line. */
    assert_line(&f, "12345678\r", CREST_FRAMING_NEED_MORE, NULL, 0);
    assert_line(&f, "12345678\rx", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "12345678\r\r", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", CREST_FRAMING_TOO_LARGE, NULL, 0);

    /* Byte by byte, as a connection sees it. */
    struct feeder fd;
    feeder_init(&fd, &f);
    const char *s = "abcdefghijkl\n";
    for (size_t k = 0; k < strlen(s); k++) {
        feed(&fd, s + k, 1);
        assert_int_equal(fd.error, k + 1 >= 9 ? CREST_FRAMING_TOO_LARGE : 0);
        if (fd.error)
            break;
    }
    assert_int_equal(fd.calls, 9);
    assert_int_equal(fd.count, 0);
    feeder_free(&fd);

    feeder_init(&fd, &f);
    s = "abcdefgh\r";
    feed(&fd, s, strlen(s));
    assert_int_equal(fd.error, 0);
    feed(&fd, "z", 1);
    assert_int_equal(fd.error, CREST_FRAMING_TOO_LARGE);
    feeder_free(&fd);
}

/* With a terminator in the buffer, further on than the limit allows: the
 * long line is refused, never skipped to reach the next one. */
static void test_line_too_long_with_terminator(void **state) {
    (void)state;
    crest_framing_t f = line_framing(8);
    assert_line(&f, "123456789\nok\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", CREST_FRAMING_TOO_LARGE, NULL, 0);

    /* Good lines first are delivered, then the long one fails. */
    struct feeder fd;
    feeder_init(&fd, &f);
    const char *s = "ok\r\nfine\n0123456789abcdef\nlater\n";
    feed(&fd, s, strlen(s));
    assert_int_equal(fd.count, 2);
    assert_int_equal(fd.lens[0], 2);
    assert_int_equal(fd.lens[1], 4);
    assert_memory_equal(fd.msgs, "okfine", 6);
    assert_int_equal(fd.error, CREST_FRAMING_TOO_LARGE);
    feeder_free(&fd);

    /* Max 1 and max 0-as-default do not confuse each other. */
    f = line_framing(1);
    assert_line(&f, "a\n", 1, "a", 2);
    assert_line(&f, "a\r\n", 1, "a", 3);
    assert_line(&f, "ab\n", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "ab", CREST_FRAMING_TOO_LARGE, NULL, 0);
    assert_line(&f, "a\r", CREST_FRAMING_NEED_MORE, NULL, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_validate),
        tu_test(test_next_invalid),
        tu_test(test_max_buffered),
        tu_test(test_length_widths_and_byte_order),
        tu_test(test_length_decode_exact_bytes),
        tu_test(test_length_zero_frame),
        tu_test(test_length_every_split),
        tu_test(test_length_many_in_one_buffer),
        tu_test(test_length_limit_exact),
        tu_test(test_length_ffffffff),
        tu_test(test_length_huge_8_byte),
        tu_test(test_header_round_trip),
        tu_test(test_header_emsgsize),
        tu_test(test_line_basic),
        tu_test(test_line_every_split),
        tu_test(test_line_many_in_one_buffer),
        tu_test(test_line_limit_exact),
        tu_test(test_line_cr_counts),
        tu_test(test_line_too_long_without_terminator),
        tu_test(test_line_too_long_with_terminator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
