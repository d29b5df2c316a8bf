/* crest-framed: a length-prefixed echo server on crest.
 *
 * A message is a 4-byte big-endian length followed by that many payload
 * bytes.  Each one is answered with a frame that carries the same payload,
 * in order, so a client may pipeline many requests on one connection
 * without waiting for each answer.
 *
 * crest's LENGTH framing does the work: it reassembles a frame split
 * across reads, hands over the frames of one read one by one, and closes a
 * connection whose header announces more than --max-frame bytes (reason
 * "too large"; crest logs "frame too large") without touching the others.
 *
 * Everything else (options, threads, signals, statistics, the final
 * report) is the shared skeleton in server.c.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "server.h"

/* One whole frame's payload.  crest_conn_write_message() adds the 4-byte
 * header; replies written here are gathered and sent with one writev when
 * the callback returns, however many frames one read delivered. */
static int echo_frame(crest_conn_t *c, const uint8_t *payload, size_t len) {
    int rc = crest_conn_write_message(c, payload, len);
    return rc == -ENOMEM ? -CREST_CLOSE_NO_MEMORY : 0;
}

/* The options of crest-framed itself. */
enum { OPT_MAX_FRAME = 256 };

static const struct option framed_options[] = {
    {"max-frame", required_argument, NULL, OPT_MAX_FRAME},
    {NULL, 0, NULL, 0},
};

static int framed_option(server_proto_t *p, int id, const char *arg) {
    if (id != OPT_MAX_FRAME)
        return -1;
    /* A 4-byte header could announce up to 4 GiB; a sample server has no
     * business holding frames anywhere near that.  At least 1: crest reads
     * max_message 0 as "the default" (64 KiB). */
    return server_parse_size("max-frame", arg, 1, (size_t)1 << 30, &p->framing.max_message);
}

static server_proto_t framed = {
    .name = "crest-framed",
    .summary = "A framed echo server: each message is a 4-byte big-endian length and that\n"
               "many bytes; each is answered with a frame carrying the same payload.",
    .default_port = 7001,
    .options = framed_options,
    .options_help =
        "      --max-frame BYTES   largest payload; a frame announcing more closes its\n"
        "                          connection (\"too large\": \"frame too large\";\n"
        "                          default 1M)\n",
    .parse_option = framed_option,
    .framing = {.kind = CREST_FRAMING_LENGTH, .header_bytes = 4, .max_message = 1u << 20},
    .handler = {.on_message = echo_frame, .name = "framed"},
    .message_unit = "frames",
};

int main(int argc, char **argv) {
    return server_main(argc, argv, &framed);
}
