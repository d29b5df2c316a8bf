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
 * Everything else (options, threads, signals, statistics, the final
 * report) is the shared skeleton in server.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
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

/* The options of crest-echo itself. */
enum { OPT_LINE = 256, OPT_MAX_LINE };

static const struct option echo_options[] = {
    {"line", no_argument, NULL, OPT_LINE},
    {"max-line", required_argument, NULL, OPT_MAX_LINE},
    {NULL, 0, NULL, 0},
};

static bool max_line_given;

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
    default:
        return -1;
    }
}

/* Go's bufio.Scanner, by default, holds a line and its "\n" in 64 KiB: a
 * line of 65,535 bytes is the longest it answers (65,534 with a "\r"
 * before the "\n"), so that is --line's default limit too. */
#define GO_SCANNER_MAX_LINE 65535u

static int echo_configured(server_proto_t *p) {
    if (max_line_given && p->framing.kind != CREST_FRAMING_LINE) {
        fprintf(stderr, "crest-echo: --max-line needs --line\n");
        return -1;
    }
    if (!max_line_given && p->framing.kind == CREST_FRAMING_LINE)
        p->framing.max_message = GO_SCANNER_MAX_LINE;
    return 0;
}

static server_proto_t echo = {
    .name = "crest-echo",
    .summary = "An echo server: sends every byte back, or with --line answers each line\n"
               "with \"echo: LINE\".",
    .default_port = 7000,
    .options = echo_options,
    .options_help =
        "      --line              line protocol: answer each line with \"echo: \" LINE \"\\n\"\n"
        "                          (lines end in \"\\n\"; a \"\\r\" before it is dropped)\n"
        "      --max-line BYTES    longest line; a longer one closes its connection\n"
        "                          (\"too large\": \"line too long\"; default 65535, as Go's\n"
        "                          bufio.Scanner: a line and its \"\\r\\n\" or\n"
        "                          \"\\n\" in 64 KiB)\n",
    .parse_option = echo_option,
    .configured = echo_configured,
    .framing = {.kind = CREST_FRAMING_RAW, .max_message = CREST_FRAMING_DEFAULT_MAX},
    .handler = {.on_data = echo_bytes, .name = "echo"},
    .message_unit = "lines",
};

int main(int argc, char **argv) {
    return server_main(argc, argv, &echo);
}
