/* crest-echo: an echo server on crest.
 *
 * By default every byte is sent back unchanged (RAW framing).
 *
 * With --line it speaks the line protocol of the classic Go echo server,
 * the one with a goroutine per connection:
 *
 *     scanner := bufio.NewScanner(conn)
 *     for scanner.Scan() {
 *         fmt.Fprintf(conn, "echo: %s\n", scanner.Text())
 *     }
 *
 * Each line ending in "\n" (a "\r" before it is dropped, as Go's ScanLines
 * does) is answered with "echo: " + line + "\n".  A line longer than
 * --max-line closes that connection (reason "too large"; crest logs "line
 * too long"); crest's LINE framing
 * does that check, and the reassembly of lines split across reads.
 *
 * With --sockperf it answers sockperf 3.7's TCP clients the way
 * `sockperf server --tcp` does (sockperf ping-pong, under-load, throughput
 * --tcp).  sockperf's messages on TCP are self-delimiting; each starts with a
 * 14-byte header, big-endian, no padding (src/message.h, MsgHeader, packed):
 *
 *     offset 0   u64  sequence number
 *     offset 8   u16  flags: 1 client (the sender is a client), 2 pong
 *                     request (reply to this one), 4 warmup
 *     offset 10  u32  length of the whole message, header included
 *
 * then length - 14 payload bytes.  sockperf's server (src/server.h,
 * server_receive_then_send) skips messages without the client flag and
 * warmup messages, and answers a client message with the pong-request flag
 * by sending the whole message back with the client flag cleared (the
 * pong flag stays; sequence number, length and payload unchanged).  Every
 * other message (under-load's 99 in 100, all of throughput's) gets no
 * reply.  A length over its maximum (65507 by default, its server's -m
 * raises it) closes the connection; so does one here, and so does a length
 * under 14, which sockperf does not check (reason "protocol error").
 * --max-msg sets the maximum, as sockperf server -m does.
 *
 * Everything else (options, threads, signals, statistics, the final
 * report) is the shared skeleton in server.c.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include "server.h"

/* RAW: write the bytes back and consume them all.  If the peer sends
 * faster than it reads, the replies queue up; past the connection's high
 * water mark crest stops reading from it until they drain, so a client that
 * never reads cannot make the server buffer without bound. */
static ssize_t echo_bytes(crest_conn_t *c, const uint8_t *data, size_t len) {
    int rc = crest_conn_write(c, data, len);
    if (rc == -ENOMEM)
        return -CREST_CLOSE_NO_MEMORY;
    /* -ENOTCONN: the connection is already closing; drop the bytes. */
    return (ssize_t)len;
}

/* LINE: one whole line, without its "\n" or "\r\n".  The three pieces go
 * out in one writev; better still, replies written inside on_message are
 * gathered by crest and sent together when the callback returns, so a
 * client that pipelines many lines gets its answers in few syscalls. */
static int echo_line(crest_conn_t *c, const uint8_t *line, size_t len) {
    struct iovec reply[] = {
        {(void *)"echo: ", 6},
        {(void *)line, len},
        {(void *)"\n", 1},
    };
    int rc = crest_conn_writev(c, reply, 3);
    return rc == -ENOMEM ? -CREST_CLOSE_NO_MEMORY : 0;
}

/* --sockperf: sockperf 3.7's TCP messages (see the top of the file). */
#define SP_HEADER 14u
#define SP_FLAGS_AT 8
#define SP_LENGTH_AT 10
#define SP_CLIENT 1u
#define SP_PONG 2u
#define SP_WARMUP 4u
#define SP_DEFAULT_MAX 65507u           /* sockperf's MAX_PAYLOAD_SIZE */
#define SP_TCP_MAX ((1u << 20) - 1)     /* sockperf's MAX_TCP_SIZE: -m's limit */

/* What the final report counts, per loop (server.h: loop_counters). */
enum { SP_ANSWERED, SP_NO_REPLY, SP_WARMUP_SKIPPED, SP_NOT_CLIENT, SP_REJECTED, SP_COUNTERS };

static size_t sp_max = SP_DEFAULT_MAX;
static uint64_t (*sp_counts)[SP_COUNTERS]; /* [threads]; each loop writes its own row */

static uint16_t get_be16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return be16toh(v);
}

static uint32_t get_be32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return be32toh(v);
}

/* The header's length field, checked as sockperf's server does (over the
 * maximum) and below the header (which sockperf does not check: its
 * parser would never advance).  0 if valid; otherwise the connection has
 * been failed with the reason, and the negative reason is returned. */
static int sp_check_length(crest_conn_t *c, uint32_t length, uint64_t *counts) {
    if (length >= SP_HEADER && length <= sp_max)
        return 0;
    counts[SP_REJECTED]++;
    if (length < SP_HEADER) {
        crest_conn_fail(c, CREST_CLOSE_PROTOCOL_ERROR,
                        "sockperf header: length %" PRIu32 " is shorter than the %u-byte header",
                        length, SP_HEADER);
        return -CREST_CLOSE_PROTOCOL_ERROR;
    }
    crest_conn_fail(c, CREST_CLOSE_TOO_LARGE,
                    "sockperf header: length %" PRIu32 " is over the maximum %zu (--max-msg)",
                    length, sp_max);
    return -CREST_CLOSE_TOO_LARGE;
}

/* One whole message: answer it if sockperf's server would.  The reply is
 * the message with the client flag cleared: its header copied with the new
 * flags, the payload straight from the input.  Written inside on_data, it
 * is gathered with the other replies of this read into one send. */
static int sp_message(crest_conn_t *c, const uint8_t *msg, uint32_t length, uint64_t *counts) {
    uint16_t flags = get_be16(msg + SP_FLAGS_AT);
    if (!(flags & SP_CLIENT)) {
        counts[SP_NOT_CLIENT]++;
        return 0;
    }
    if (flags & SP_WARMUP) {
        counts[SP_WARMUP_SKIPPED]++;
        return 0;
    }
    if (!(flags & SP_PONG)) {
        counts[SP_NO_REPLY]++;
        return 0;
    }
    uint8_t header[SP_HEADER];
    memcpy(header, msg, SP_HEADER);
    uint16_t reply_flags = htobe16((uint16_t)(flags & ~SP_CLIENT));
    memcpy(header + SP_FLAGS_AT, &reply_flags, sizeof reply_flags);
    struct iovec reply[] = {
        {header, SP_HEADER},
        {(void *)(msg + SP_HEADER), length - SP_HEADER},
    };
    int rc = crest_conn_writev(c, reply, length > SP_HEADER ? 2 : 1);
    if (rc == -ENOMEM)
        return -CREST_CLOSE_NO_MEMORY;
    if (rc == 0)
        counts[SP_ANSWERED]++; /* else -ENOTCONN: closing already */
    return 0;
}

/* RAW: the whole messages in data; a partial one at the end is left
 * unconsumed and offered again, with more, on the next read. */
static ssize_t sp_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    uint64_t *counts = crest_loop_get_data(crest_conn_loop(c));
    size_t used = 0;
    while (len - used >= SP_HEADER) {
        const uint8_t *msg = data + used;
        uint32_t length = get_be32(msg + SP_LENGTH_AT);
        int rc = sp_check_length(c, length, counts);
        if (rc == 0 && length > len - used)
            break; /* the rest of it is still to come */
        if (rc == 0)
            rc = sp_message(c, msg, length, counts);
        if (rc < 0)
            return rc;
        used += length;
    }
    return (ssize_t)used;
}

static int sp_loop_init(server_proto_t *p, crest_loop_t *loop, unsigned index) {
    (void)p;
    crest_loop_set_data(loop, sp_counts[index]);
    return 0;
}

static void sp_loop_counters(server_proto_t *p, crest_loop_t *loop, unsigned index,
                             uint64_t counters[SERVER_PROTO_COUNTERS]) {
    (void)p;
    (void)loop;
    memcpy(counters, sp_counts[index], sizeof sp_counts[index]);
}

static void sp_report(const server_proto_t *p, const uint64_t n[SERVER_PROTO_COUNTERS]) {
    (void)p;
    printf("  sockperf: %" PRIu64 " messages answered (pong requests), %" PRIu64
           " without a pong request, %" PRIu64 " warmup, %" PRIu64
           " not from a client (none answered); %" PRIu64
           " connection%s closed on a bad header\n",
           n[SP_ANSWERED], n[SP_NO_REPLY], n[SP_WARMUP_SKIPPED], n[SP_NOT_CLIENT], n[SP_REJECTED],
           n[SP_REJECTED] == 1 ? "" : "s");
}

/* A message up to --max-msg must fit the unconsumed input crest keeps. */
static void sp_conn_opts(const server_proto_t *p, crest_conn_opts_t *o) {
    (void)p;
    if (o->max_input < sp_max)
        o->max_input = sp_max;
}

/* The options of crest-echo itself. */
enum { OPT_LINE = 256, OPT_MAX_LINE, OPT_SOCKPERF, OPT_MAX_MSG };

static const struct option echo_options[] = {
    {"line", no_argument, NULL, OPT_LINE},
    {"max-line", required_argument, NULL, OPT_MAX_LINE},
    {"sockperf", no_argument, NULL, OPT_SOCKPERF},
    {"max-msg", required_argument, NULL, OPT_MAX_MSG},
    {NULL, 0, NULL, 0},
};

static bool max_line_given, sockperf_mode, max_msg_given;

static int echo_option(server_proto_t *p, int id, const char *arg) {
    switch (id) {
    case OPT_LINE:
        p->framing.kind = CREST_FRAMING_LINE;
        p->framing.line_cr_counts = true; /* as Go's bufio.Scanner */
        p->handler.on_data = NULL;
        p->handler.on_message = echo_line;
        p->handler.name = "echo-line";
        return 0;
    case OPT_MAX_LINE:
        max_line_given = true;
        return server_parse_size("max-line", arg, 1, (size_t)1 << 30, &p->framing.max_message);
    case OPT_SOCKPERF:
        sockperf_mode = true;
        return 0;
    case OPT_MAX_MSG:
        max_msg_given = true;
        return server_parse_size("max-msg", arg, SP_HEADER, SP_TCP_MAX, &sp_max);
    default:
        return -1;
    }
}

/* Go's bufio.Scanner, by default, holds a line and its "\n" in 64 KiB: a
 * line of 65,535 bytes is the longest it answers (65,534 with a "\r"
 * before the "\n"), so that is --line's default limit too. */
#define GO_SCANNER_MAX_LINE 65535u

/* --sockperf: RAW framing, sp_data, and the per-loop counters. */
static int sockperf_configure(server_proto_t *p) {
    if (p->framing.kind != CREST_FRAMING_RAW) {
        fprintf(stderr, "crest-echo: --sockperf and --line exclude each other\n");
        return -1;
    }
    sp_counts = calloc(p->threads, sizeof *sp_counts);
    if (!sp_counts) {
        fprintf(stderr, "crest-echo: out of memory\n");
        return -1;
    }
    p->handler.on_data = sp_data;
    p->handler.name = "echo-sockperf";
    p->loop_init = sp_loop_init;
    p->loop_counters = sp_loop_counters;
    p->report = sp_report;
    p->conn_opts = sp_conn_opts;
    return 0;
}

static int echo_configured(server_proto_t *p) {
    if (max_line_given && p->framing.kind != CREST_FRAMING_LINE) {
        fprintf(stderr, "crest-echo: --max-line needs --line\n");
        return -1;
    }
    if (max_msg_given && !sockperf_mode) {
        fprintf(stderr, "crest-echo: --max-msg needs --sockperf\n");
        return -1;
    }
    if (sockperf_mode)
        return sockperf_configure(p);
    if (!max_line_given && p->framing.kind == CREST_FRAMING_LINE)
        p->framing.max_message = GO_SCANNER_MAX_LINE;
    return 0;
}

static server_proto_t echo = {
    .name = "crest-echo",
    .summary = "An echo server: sends every byte back, or with --line answers each line\n"
               "with \"echo: LINE\", or with --sockperf answers sockperf's TCP clients.",
    .default_port = 7000,
    .options = echo_options,
    .options_help =
        "      --line              line protocol: answer each line with \"echo: \" LINE \"\\n\"\n"
        "                          (lines end in \"\\n\"; a \"\\r\" before it is dropped)\n"
        "      --max-line BYTES    longest line; a longer one closes its connection\n"
        "                          (\"too large\": \"line too long\"; default 65535, as Go's\n"
        "                          bufio.Scanner: a line and its \"\\r\\n\" or\n"
        "                          \"\\n\" in 64 KiB)\n"
        "      --sockperf          sockperf 3.7's TCP protocol, as `sockperf server --tcp`:\n"
        "                          a client message with the pong-request flag comes back\n"
        "                          with the client flag cleared; others get no reply\n"
        "                          (sockperf ping-pong|under-load|throughput --tcp)\n"
        "      --max-msg BYTES     --sockperf: longest message (header included); a\n"
        "                          longer one closes its connection (\"too large\"), as\n"
        "                          does one under 14 (\"protocol error\"); default\n"
        "                          65507, as sockperf server (its -m); at most 1048575\n",
    .parse_option = echo_option,
    .configured = echo_configured,
    .framing = {.kind = CREST_FRAMING_RAW, .max_message = CREST_FRAMING_DEFAULT_MAX},
    .handler = {.on_data = echo_bytes, .name = "echo"},
    .message_unit = "lines",
};

int main(int argc, char **argv) {
    return server_main(argc, argv, &echo);
}
