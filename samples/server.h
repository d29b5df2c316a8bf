/* The skeleton the crest sample servers share.
 *
 * A sample server is a protocol (a framing and a handler) plus this
 * skeleton, which does everything else:
 *
 *   - the common options (--host, --port, --unix, --threads, socket tuning,
 *     timeouts, --stats, --quiet, --help, --version), with the protocol's
 *     own options merged in;
 *   - one crest loop per worker thread, each with its own listener (bound
 *     with SO_REUSEPORT to the same port when there are several);
 *   - a control loop on the main thread that watches SIGINT/SIGTERM and
 *     prints the --stats line, talking to the workers only through
 *     crest_loop_post();
 *   - a graceful shutdown (stop accepting, drain, then abort what is left
 *     after a grace period) and the final report, whose exit code says
 *     whether anything leaked.
 *
 * So crest-echo.c and crest-framed.c hold only their protocol.  A protocol
 * with state of its own per loop (crest-chat.c: its clients, and the lines
 * it passes between loops) adds the optional per-loop hooks below.
 */
#ifndef CREST_SAMPLES_SERVER_H
#define CREST_SAMPLES_SERVER_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <crest/crest.h>

/* Exit codes of a sample server. */
enum {
    SERVER_EXIT_OK = 0,
    SERVER_EXIT_ERROR = 1,  /* could not start, or a loop failed */
    SERVER_EXIT_USAGE = 2,  /* bad command line */
    SERVER_EXIT_LEAK = 3    /* fds or buffer bytes still held at exit */
};

typedef struct server_proto server_proto_t;

/* How many counters a protocol may add to the final report. */
#define SERVER_PROTO_COUNTERS 12

/* What a protocol adds to the skeleton.  Fill it statically, then call
 * server_main(). */
struct server_proto {
    const char *name;          /* "crest-echo": messages and --version */
    const char *summary;       /* one line for --help */
    int default_port;          /* --port when not given */
    /* The protocol's own long options (getopt_long form, val >= 256 so they
     * cannot clash with the skeleton's), ending with an all-zero entry, and
     * their --help text.  NULL if none. */
    const struct option *options;
    const char *options_help;
    /* Called for each of those options.  Return 0, or -1 after printing why
     * the value is wrong (server_main() then exits with SERVER_EXIT_USAGE). */
    int (*parse_option)(server_proto_t *proto, int id, const char *arg);
    /* Called once all options are parsed: check combinations and finish
     * framing/handler.  0 or -1 as above.  Optional. */
    int (*configured)(server_proto_t *proto);

    /* Filled in by server_main() before configured() runs: the number of
     * worker loops (threads) in this process (--threads). */
    unsigned threads;
    /* Set by a protocol whose connections must all be in one process
     * (crest-chat: clients in different processes could not see each
     * other): --workers is refused then. */
    bool one_process;
    /* Set by a protocol that hands each connection to a server of its own
     * from on_open (crest-http: crest_http_server_accept()).  That server's
     * handler then replaces the skeleton's: the per-connection lines stop
     * at "open" (no "closed" line; a shutdown's drain does not need one),
     * and the options that act through the skeleton's handler or that the
     * server overrides are refused: --work, --work-once, --fd-leak,
     * --idle-timeout and --read-timeout.  timeouts, if set (by
     * configured()), replaces the start-up line's description of them. */
    bool hands_over;
    const char *timeouts;

    /* Optional hooks, each on a worker thread for its own loop (index is
     * the worker's, 0 .. threads - 1):
     *   loop_init      before the loop runs and before its listener exists;
     *                  0, or -errno: the server does not start;
     *   loop_fini      after the loop has returned and every connection on
     *                  it is closed, before the loop is destroyed (it may run
     *                  crest_loop_run_once() to finish its own work); called
     *                  for every loop whose loop_init succeeded;
     *   loop_counters  the protocol's counters for the final report, added
     *                  up over loops (and worker processes); called after
     *                  loop_fini, and for --stats while the loop runs. */
    int (*loop_init)(server_proto_t *proto, crest_loop_t *loop, unsigned index);
    void (*loop_fini)(server_proto_t *proto, crest_loop_t *loop, unsigned index);
    void (*loop_counters)(server_proto_t *proto, crest_loop_t *loop, unsigned index,
                          uint64_t counters[SERVER_PROTO_COUNTERS]);
    /* Main thread: print the protocol's lines of the final report (two
     * spaces in, like the others) from the summed counters.  Optional. */
    void (*report)(const server_proto_t *proto, const uint64_t counters[SERVER_PROTO_COUNTERS]);
    /* Adjust the options of every accepted connection after the common
     * ones are set (crest-chat sets max_output).  Optional. */
    void (*conn_opts)(const server_proto_t *proto, crest_conn_opts_t *opts);

    /* Applied to every accepted connection. */
    crest_framing_t framing;
    /* on_data (RAW) or on_message (LINE/LENGTH), and any other callback the
     * protocol needs.  The skeleton wraps on_open and on_close (to print a
     * line per connection and to know when a shutdown has drained) and calls
     * the protocol's own ones, if set, from there.  crest_conn_handler_ctx()
     * is the skeleton's: keep per-connection state in crest_conn_set_data(). */
    crest_handler_t handler;
    /* What a message is called in reports ("lines", "frames").  With RAW
     * framing there are no messages: the reports count reads instead. */
    const char *message_unit;
};

/* Parse the command line, serve until SIGINT or SIGTERM, print the final
 * report.  Returns the exit code (SERVER_EXIT_*). */
int server_main(int argc, char **argv, server_proto_t *proto);

/* Option parsing helpers for protocols; they print a message naming the
 * option on a bad value.
 *
 * A size is a number of bytes with an optional K, M or G suffix (KiB, MiB,
 * GiB), between min and max.  0, or -1 if invalid. */
int server_parse_size(const char *option, const char *arg, size_t min, size_t max, size_t *out);

/* Seconds, fractions allowed, to milliseconds (rounded up: at least 1 ms
 * unless 0), at most max_ms.  0, or -1 if invalid. */
int server_parse_seconds(const char *option, const char *arg, uint64_t max_ms, uint64_t *ms);

#endif
