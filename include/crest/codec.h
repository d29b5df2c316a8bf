/* crest: framing codecs, which turn a byte stream into whole messages.
 *
 * A connection with framing set in its options (conn.h) hands its handler
 * one whole message per on_message call, however the bytes were split
 * across reads: a frame split over many reads is reassembled, and many
 * frames in one read are delivered one by one.  The decoder below is also
 * usable on its own (the fuzzers use it).
 *
 * Line framing: a message ends at "\n"; a "\r" right before it is removed
 * too, so "\n" and "\r\n" lines both work.  The message excludes the line
 * ending.  A line longer than max_message bytes (its ending excluded, or
 * with line_cr_counts everything before the "\n") is "line too long" and
 * closes the connection.  A connection that reaches
 * EOF with a last line that has no "\n" delivers it too (like Go's
 * bufio.ScanLines), a trailing "\r" removed.
 *
 * Length-prefix framing: a header of 1, 2, 4 or 8 bytes, big-endian unless
 * little_endian is set, gives the payload length that follows; the message
 * is the payload.  A length above max_message is "frame too large" and
 * closes the connection.  Zero-length frames are valid.
 */
#ifndef CREST_CODEC_H
#define CREST_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum crest_framing_kind {
    CREST_FRAMING_RAW = 0,    /* no framing: on_data gets bytes as they come */
    CREST_FRAMING_LINE,
    CREST_FRAMING_LENGTH
} crest_framing_kind_t;

typedef struct crest_framing {
    crest_framing_kind_t kind;
    uint8_t header_bytes;     /* LENGTH: 1, 2, 4 or 8 */
    bool little_endian;       /* LENGTH: byte order of the header */
    bool line_cr_counts;      /* LINE: the '\r' of a "\r\n" ending counts
                                 against max_message, as in Go's
                                 bufio.Scanner, whose buffer must hold the
                                 line and its '\r' */
    size_t max_message;       /* largest payload or line; 0: 64 KiB */
} crest_framing_t;

#define CREST_FRAMING_DEFAULT_MAX 65536u

/* Results of crest_framing_next() besides 1 (a message). */
enum {
    CREST_FRAMING_NEED_MORE = 0,
    CREST_FRAMING_TOO_LARGE = -1,   /* "line too long" / "frame too large" */
    CREST_FRAMING_INVALID = -2      /* the framing settings are wrong */
};

/* One decoded message inside the caller's bytes. */
typedef struct crest_frame {
    size_t offset;   /* where the message starts in the input */
    size_t length;   /* its length */
    size_t consumed; /* bytes of input it used, header or line ending included */
    uint64_t declared; /* LENGTH: the length the header announced */
} crest_frame_t;

/* Check settings: 0 or -EINVAL. */
int crest_framing_validate(const crest_framing_t *f);

/* Find the first message in data[0..len).  Returns 1 and fills *out when a
 * whole message is there; CREST_FRAMING_NEED_MORE when more bytes are
 * needed; CREST_FRAMING_TOO_LARGE (out->declared tells the length for
 * LENGTH) as soon as the input proves the message is over the limit. */
int crest_framing_next(const crest_framing_t *f, const uint8_t *data, size_t len,
                       crest_frame_t *out);

/* What to write before and after a payload to frame it: the header for
 * LENGTH (returns its size, written into hdr), nothing for LINE (the caller
 * adds "\n"; see crest_conn_write_message()).  -EMSGSIZE if payload_len is
 * over max_message or does not fit the header. */
int crest_framing_header(const crest_framing_t *f, size_t payload_len, uint8_t hdr[8]);

/* The most bytes a connection may need to buffer to hold one whole message
 * with its framing. */
size_t crest_framing_max_buffered(const crest_framing_t *f);

#ifdef __cplusplus
}
#endif
#endif
