/* The chaos engine: a model-based random test of crest's public API.
 *
 * One run: one loop, one to three listeners on 127.0.0.1 port 0 with an
 * echo handler (RAW, LINE or LENGTH framing; some expect a PROXY v1
 * header; linger on, off or short), raw client sockets (nonblocking,
 * driven from this thread between iterations) and crest outbound
 * connections to the same listeners, and a socket bound but not listening
 * (a port that refuses).  Every choice comes from a source of numbers: a
 * seeded generator (tests/test_chaos.c) or the bytes of a fuzz input
 * (fuzz/fuzz_api.c), so the same engine serves both.
 *
 * What it does: from inside every callback (on_open, on_data, on_message,
 * on_eof, on_high_water, on_drain, on_close, timers, deferred and posted
 * callbacks) and between iterations, random API calls on random
 * connections, including ones closed earlier in the same iteration (their
 * memory stays valid until the iteration ends, conn.h): write, writev,
 * write_message, cork/uncork, pause/resume, close, abort, fail, shutdown,
 * socket options, timers started, restarted and stopped (timeout 0, and
 * restarting themselves with 0), defer, post, listeners opened and
 * closed, connects (to a listener or the refusing port),
 * crest_loop_close_all, and crest_loop_run/_run_once/_destroy from
 * callbacks (they must say -EBUSY).  An iteration is crest_loop_run_once
 * or, now and then, crest_loop_run stopped by a deferred callback.
 * Clients send a deterministic stream (whole messages for framed
 * listeners), half-close, reset (SO_LINGER 0, also before being
 * accepted), close, and read slowly.
 *
 * What it checks (the model):
 *   - on_close exactly once; on_open before any other callback (PROXY:
 *     or on_close alone); no callback after on_close; no data after a
 *     close was requested, after on_eof or while the handler paused it;
 *     on_high_water and on_drain alternate; the close reason is the one
 *     the first close request named;
 *   - bytes: every stream is a checkable pattern (each byte depends on the
 *     stream and its offset; each message on the stream and its number),
 *     so a lost, duplicated or reordered byte shows at once; the server
 *     echoes what it consumed; at an EOF, every byte (or whole message) the
 *     peer sent has been offered to the handler, and every byte a crest
 *     write accepted (returned 0) has arrived;
 *   - a write accepted after close or shutdown, or refused on an open
 *     connection, is an error; return values as the headers say;
 *   - after every iteration: the loop's connection counters match the
 *     model's, each listener's counters too, every timer's active state
 *     (and none fires more than twice, one per timer pass), deferred and
 *     posted callbacks ran once each, in order;
 *   - issue 12's calls: a write refused with -ENOBUFS exactly when the
 *     output before it plus the write passes max_output (CLOSE: on_close
 *     OUTPUT_LIMIT; REFUSE: open, the stream whole), set by the listener,
 *     the connect or crest_conn_set_opts (with a burst of writes after
 *     it; timeouts on and off); write_messagev; crest_conn_flush_notify
 *     callbacks once each, in order, before on_close, status 0 only once
 *     every byte accepted before the call was sent (bytes_out), else an
 *     error in CLOSING; on_flushed never after a close request;
 *     crest_conn_get_info (id, state, fd, framing, output_bytes; bytes_out
 *     + output_bytes = bytes accepted by writes; bytes_in between what was
 *     offered and what the peer sent; messages_in = messages delivered)
 *     and crest_conn_get_opts; ids unique; crest_loop_foreach_conn visits
 *     every open connection once, with closes, aborts and writes inside;
 *     crest_conn_set_handler/crest_conn_upgrade (a wrong framing's
 *     handler: -EINVAL), a LINE/LENGTH server upgraded to RAW gets the
 *     stream's bytes from the end of the last message delivered;
 *     crest_loop_shutdown: done once, after every on_close, connects and
 *     listens -ESHUTDOWN until then (a second call -EALREADY);
 *   - at the end: every connection closed, the buffer pool's in_use back
 *     to 0, crest_loop_destroy() reports 0 fds leaked, and the fd
 *     registry's open count and /proc/self/fd are back to where they were.
 *
 * A failed check prints the run's seed, the last operations and crest's
 * last log lines, then aborts (libFuzzer takes that as a crash).  The
 * kernel's timing is part of every run, so a seed does not always repeat
 * the same path: rerun a failing seed a few times.
 *
 * Known bugs trip the engine at once; the operations (or the check) that
 * reach them are left out while their CHAOS_KNOWN_BUG_* macro is 1, or
 * turned back on at run time with CREST_CHAOS_INCLUDE=name,... (or
 * "all").  Each has a regression test, tests/test_<name>.c. */
#ifndef CREST_CHAOS_H
#define CREST_CHAOS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <crest/crest.h>

/* ---- known bugs: operations left out by default ------------------------- */

/* crest_listener_close() from a callback that runs inside the listener's
 * accept loop (on_open, or on_close of a connection closed in on_open):
 * use after free in on_acceptable. */
#ifndef CHAOS_KNOWN_BUG_LISTENER_CLOSE_IN_ACCEPT
#define CHAOS_KNOWN_BUG_LISTENER_CLOSE_IN_ACCEPT 0
#endif
/* crest_conn_resume() on a connection closed earlier in the iteration
 * feeds fd -1 to the ready list. */
#ifndef CHAOS_KNOWN_BUG_RESUME_AFTER_CLOSE
#define CHAOS_KNOWN_BUG_RESUME_AFTER_CLOSE 0
#endif
/* A timer (re)started with timeout 0 from a timer callback fires again in
 * the same pass, forever. */
#ifndef CHAOS_KNOWN_BUG_TIMER_ZERO_RESTART
#define CHAOS_KNOWN_BUG_TIMER_ZERO_RESTART 0
#endif
/* crest_loop_run_once() from a callback corrupts the loop's queues. */
#ifndef CHAOS_KNOWN_BUG_NESTED_RUN_ONCE
#define CHAOS_KNOWN_BUG_NESTED_RUN_ONCE 0
#endif
/* crest_conn_close()/crest_conn_fail() on a CONNECTING connection drops
 * the output queued so far (and resets instead of closing). */
#ifndef CHAOS_KNOWN_BUG_CLOSE_CONNECTING
#define CHAOS_KNOWN_BUG_CLOSE_CONNECTING 0
#endif
/* crest_connect()/crest_listen() from on_close while crest_loop_destroy()
 * runs: the new socket is never closed. */
#ifndef CHAOS_KNOWN_BUG_DESTROY_RECONNECT
#define CHAOS_KNOWN_BUG_DESTROY_RECONNECT 0
#endif

/* Found by this engine (new; fixed since, tests/test_<name>.c): */
/* A write that queues past high_water on a CONNECTING connection calls
 * on_high_water before on_open (and inside crest_conn_write). */
#ifndef CHAOS_KNOWN_BUG_HW_BEFORE_OPEN
#define CHAOS_KNOWN_BUG_HW_BEFORE_OPEN 0
#endif

/* A RAW handler that kept input (returned 0) gets it again at EOF; if it
 * pauses in that on_data, on_eof still follows at once (take_eof).  Left
 * out: the check, not an operation. */
#ifndef CHAOS_KNOWN_BUG_EOF_WHILE_PAUSED
#define CHAOS_KNOWN_BUG_EOF_WHILE_PAUSED 0
#endif

/* on_drain/on_high_water run inside crest_conn_uncork()/_write() also when
 * those are called outside the loop; the loop's -EBUSY guards do not see
 * them: run_once runs an iteration there, destroy frees the connection
 * under the call (use after free). */
#ifndef CHAOS_KNOWN_BUG_LOOP_CALL_IN_API_CALLBACK
#define CHAOS_KNOWN_BUG_LOOP_CALL_IN_API_CALLBACK 0
#endif

/* crest_loop_close_all(loop, true) from a lingering connection's on_close
 * ends its linger there: the socket closes while on_close runs. */
#ifndef CHAOS_KNOWN_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE
#define CHAOS_KNOWN_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE 0
#endif

enum {
    CH_BUG_LISTENER_CLOSE_IN_ACCEPT = 1u << 0,
    CH_BUG_RESUME_AFTER_CLOSE = 1u << 1,
    CH_BUG_TIMER_ZERO_RESTART = 1u << 2,
    CH_BUG_NESTED_RUN_ONCE = 1u << 3,
    CH_BUG_CLOSE_CONNECTING = 1u << 4,
    CH_BUG_DESTROY_RECONNECT = 1u << 5,
    CH_BUG_HW_BEFORE_OPEN = 1u << 6,
    CH_BUG_EOF_WHILE_PAUSED = 1u << 7,
    CH_BUG_LOOP_CALL_IN_API_CALLBACK = 1u << 8,
    CH_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE = 1u << 9,
    CH_BUG_COUNT = 10
};

static const char *const ch_bug_names[CH_BUG_COUNT] = {
    "listener_close_in_accept", "resume_after_close", "timer_zero_restart",
    "nested_run_once",          "close_connecting",   "destroy_reconnect",
    "hw_before_open",           "eof_while_paused",   "loop_call_in_api_callback",
    "close_all_in_lingering_on_close",
};

#define CH_BUGS_DEFAULT                                                              \
    ((CHAOS_KNOWN_BUG_LISTENER_CLOSE_IN_ACCEPT ? CH_BUG_LISTENER_CLOSE_IN_ACCEPT : 0u) | \
     (CHAOS_KNOWN_BUG_RESUME_AFTER_CLOSE ? CH_BUG_RESUME_AFTER_CLOSE : 0u) |             \
     (CHAOS_KNOWN_BUG_TIMER_ZERO_RESTART ? CH_BUG_TIMER_ZERO_RESTART : 0u) |             \
     (CHAOS_KNOWN_BUG_NESTED_RUN_ONCE ? CH_BUG_NESTED_RUN_ONCE : 0u) |                   \
     (CHAOS_KNOWN_BUG_CLOSE_CONNECTING ? CH_BUG_CLOSE_CONNECTING : 0u) |                 \
     (CHAOS_KNOWN_BUG_DESTROY_RECONNECT ? CH_BUG_DESTROY_RECONNECT : 0u) |               \
     (CHAOS_KNOWN_BUG_HW_BEFORE_OPEN ? CH_BUG_HW_BEFORE_OPEN : 0u) |                     \
     (CHAOS_KNOWN_BUG_EOF_WHILE_PAUSED ? CH_BUG_EOF_WHILE_PAUSED : 0u) |                 \
     (CHAOS_KNOWN_BUG_LOOP_CALL_IN_API_CALLBACK ? CH_BUG_LOOP_CALL_IN_API_CALLBACK : 0u) | \
     (CHAOS_KNOWN_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE ? CH_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE \
                                                      : 0u))

/* ---- sizes --------------------------------------------------------------- */

#define CH_MAX_LISTENERS 12
#define CH_MAX_CLIENTS 96   /* raw clients per run */
#define CH_MAX_OUT 80       /* outbound connections per run */
/* Each raw client makes at most one accepted connection, each outbound
 * connection at most two records (itself and the accepted end). */
#define CH_MAX_CONNS (CH_MAX_CLIENTS + 2 * CH_MAX_OUT)
#define CH_TIMERS 4
#define CH_TRACE 4096
#define CH_LOGS 48
#define CH_MAX_DEPTH 24

/* ---- the model ----------------------------------------------------------- */

enum { CH_SERVER = 1, CH_OUT = 2 };

/* A stream's framing: RAW bytes, LINE ("\n"-terminated lines of letters)
 * or LENGTH (a 2-byte big-endian length, then the payload). */
enum { CH_RAW = 0, CH_LINE = 1, CH_LEN = 2 };

/* Where a framed stream's message k starts: a reader or writer of the
 * stream walks it forward only. */
struct ch_cursor {
    uint64_t k, start;
};

struct ch_client;

struct ch_listener {
    crest_listener_t *l;
    int id, port;
    bool open;
    bool has_eof, has_hw, keep_reading;
    int kind;          /* CH_RAW, CH_LINE, CH_LEN */
    bool proxy;        /* expects a PROXY v1 header first */
    unsigned accepted; /* on_open calls of its connections */
    unsigned unopened; /* closed before their PROXY header was in */
    size_t max_output; /* its connections' cap (0: none) */
    int policy;
};

struct ch_conn {
    crest_conn_t *c;
    int id, role;
    struct ch_listener *l;        /* server: the listener that accepted it;
                                     outbound: the one dialled (NULL: the
                                     refusing port) */
    struct ch_client *peer_cli;   /* server: its raw client */
    struct ch_conn *peer;         /* the crest connection at the other end */
    bool has_eof, has_hw, keep_reading;
    int kind;                     /* CH_RAW, CH_LINE, CH_LEN */
    uint64_t salt;                /* the stream: the client's, echoed back */
    uint64_t rx_off;              /* bytes consumed (checked) */
    uint64_t offered_hi;          /* end of the furthest on_data offer
                                     (framed: of the last message) */
    uint64_t tx_off;              /* bytes crest accepted for sending */
    uint64_t rx_msg, tx_msg;      /* framed: messages received, sent */
    bool partial_last;            /* LINE: a last line without "\n" came */
    uint64_t tx_cap;              /* outbound: most bytes it sends */
    size_t high_water;
    int port;                     /* outbound: its local port */
    int dial_port;                /* outbound: the port dialled */
    bool opened, closed, gone, eof, hw;
    bool close_called, abort_called, shutdown_called, paused, corked;
    bool closed_connecting;       /* closed gracefully while CONNECTING, with
                                     output to deliver first */
    bool in_write;
    bool in_close;                /* inside its on_close: the socket is open */
    uint64_t cid;                 /* crest_conn_id(), taken at creation */
    size_t max_output;            /* the cap as set (0: none short of 4 GiB) */
    int policy;                   /* CREST_OUTPUT_CLOSE or _REFUSE */
    unsigned flush_pending;       /* flush_notify callbacks owed */
    uint64_t flush_seq_asked, flush_seq_run; /* their order */
    bool raw_parse;               /* server of a framed stream switched to RAW
                                     (crest_conn_upgrade): the stream's bytes
                                     now come to on_data as they are */
    struct ch_cursor rcur, tcur;  /* raw_parse: where rx_off, tx_off are */
    int expect_reason;            /* from the first close request; -1: none */
    int reason, err;
    unsigned opened_iter, close_iter;
};

struct ch_client {
    int fd, id, port, dial_port;
    struct ch_listener *l;        /* NULL: the refusing port */
    struct ch_conn *srv;
    int kind;
    uint64_t salt, tx_off, rx_off, tx_cap;
    struct ch_cursor tx_cur, rx_cur;
    bool shut_wr, eof, failed, done, small_rcvbuf;
    bool proxy, bad_header;       /* sent a PROXY header (a malformed one) */
    int src_port;                 /* the source port its PROXY header names */
};

struct ch_timer {
    crest_timer_t *t;
    bool armed, in_cb;
    uint64_t repeat;
    unsigned fired;
    unsigned zero_left;      /* restart itself with timeout 0 this many more times */
    unsigned fired_iter, fired_in_iter;
};

enum ch_ctx {
    CTX_OUTSIDE,
    CTX_OPEN,
    CTX_DATA,
    CTX_EOF,
    CTX_HW,
    CTX_DRAIN,
    CTX_CLOSE,
    CTX_TIMER,
    CTX_DEFER,
    CTX_FLUSH,
    CTX_FOREACH,
};

static const char *const ch_ctx_names[] = {"outside", "on_open",  "on_data", "on_eof",  "on_hw",
                                           "on_drain", "on_close", "timer",   "deferred",
                                           "flush_cb", "foreach"};

struct chaos_opts {
    uint64_t seed;           /* seeded mode: the generator's seed */
    const uint8_t *data;     /* fuzz mode: the choices (data != NULL or size 0) */
    size_t size;
    bool fuzz;
    unsigned steps;          /* iterations of random work before winding down */
    unsigned scale;          /* divide data sizes by this (valgrind) */
    bool trace;              /* print every operation as it happens */
};

/* A callback that ran inside a crest call the engine made (DESIGN.md:
 * callbacks never run inside a crest call unless its header says so). */
struct ch_reentry {
    const char *api, *cb;
    unsigned long n;
};

struct chaos {
    struct chaos_opts o;
    uint64_t rng;
    const uint8_t *in;
    size_t in_left;
    bool exhausted;

    unsigned exclude;        /* CH_BUG_* left out */
    crest_loop_t *loop;
    int dead_fd, dead_port;  /* bound, not listening: connects are refused */

    struct ch_listener ls[CH_MAX_LISTENERS];
    int nls;
    struct ch_conn cs[CH_MAX_CONNS];
    int ncs, nout;
    struct ch_client cl[CH_MAX_CLIENTS];
    int ncl;
    struct ch_timer tm[CH_TIMERS];

    unsigned step, iter;
    bool in_loop;            /* inside crest_loop_run_once or destroy */
    bool winding, destroying;
    const char *api;         /* the crest call in progress, or NULL */
    struct ch_conn *stack[CH_MAX_DEPTH];
    const char *api_stack[CH_MAX_DEPTH];
    int depth;

    uint64_t created, closed;
    bool any_proxy;          /* a PROXY listener was made this run */
    uint64_t defer_posted, defer_run, defer_due;
    uint64_t post_posted, post_run, post_due, post_dropped;
    bool destroy_posted_seen;  /* crest_loop_destroy ran a posted callback */
    bool destroy_close_seen;   /* ... an on_close */
    unsigned long ops, callbacks;
    uint64_t bytes_echoed;
    uint64_t flush_asked, flush_run, flushed, cap_refused, foreach_runs, reframes;
    unsigned fe_visits[CH_MAX_CONNS]; /* crest_loop_foreach_conn: visits */
    bool in_foreach;
    bool shutting;             /* crest_loop_shutdown() under way */
    unsigned shut_asked, shut_done;

    char trace[CH_TRACE][128];
    unsigned ntrace;
    char logs[CH_LOGS][200];
    unsigned nlogs;
    uint8_t rbuf[65536];
};

static struct chaos G;

/* Over every run of the process: how often the strongest checks ran. */
static struct {
    unsigned long eof_complete;   /* an EOF with every byte accounted for */
    unsigned long reasons[CREST_CLOSE_REASON_COUNT];
} ch_totals;

/* Callbacks that ran inside a crest call, over every run of the process. */
static struct ch_reentry ch_reentry[16];
static int ch_nreentry;

/* ---- failing ------------------------------------------------------------- */

static void ch_dump(void) {
    unsigned n = G.ntrace < CH_TRACE ? G.ntrace : CH_TRACE;
    fprintf(stderr, "---- last %u operations ----\n", n);
    for (unsigned i = G.ntrace - n; i < G.ntrace; i++)
        fprintf(stderr, "%s\n", G.trace[i % CH_TRACE]);
    n = G.nlogs < CH_LOGS ? G.nlogs : CH_LOGS;
    fprintf(stderr, "---- last %u crest log lines ----\n", n);
    for (unsigned i = G.nlogs - n; i < G.nlogs; i++)
        fprintf(stderr, "%s\n", G.logs[i % CH_LOGS]);
    fprintf(stderr, "----\n");
}

static __attribute__((noreturn, format(printf, 3, 4))) void ch_fail(const char *file, int line,
                                                                    const char *fmt, ...) {
    ch_dump();
    fprintf(stderr, "chaos: %s:%d: check failed (", file, line);
    if (G.o.fuzz)
        fprintf(stderr, "fuzz input of %zu bytes", G.o.size);
    else
        fprintf(stderr, "seed %llu", (unsigned long long)G.o.seed);
    fprintf(stderr, ", step %u, iteration %u%s): ", G.step, G.iter,
            G.destroying ? ", in crest_loop_destroy" : G.winding ? ", winding down" : "");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

#define CH_CHECK(cond, ...)                                                                   \
    do {                                                                                      \
        if (!(cond))                                                                          \
            ch_fail(__FILE__, __LINE__, __VA_ARGS__);                                         \
    } while (0)

static __attribute__((format(printf, 1, 2))) void ch_trace(const char *fmt, ...) {
    char *t = G.trace[G.ntrace++ % CH_TRACE];
    int n = snprintf(t, 128, "s%u i%u %s: ", G.step, G.iter,
                     G.depth ? "cb" : "  ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t + n, (size_t)(128 - n), fmt, ap);
    va_end(ap);
    if (G.o.trace)
        fprintf(stderr, "%s\n", t);
}

static void ch_log(crest_log_level_t level, const char *msg, void *arg) {
    (void)arg;
    snprintf(G.logs[G.nlogs++ % CH_LOGS], 200, "%d: %s", (int)level, msg);
}

/* ---- choices ------------------------------------------------------------- */

static uint64_t ch_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A number in [0, n).  Fuzz mode reads as many input bytes as n needs;
 * past the end of the input every choice is 0, which is always the
 * harmless one. */
static uint32_t ch_pick(uint32_t n) {
    if (n <= 1)
        return 0;
    uint64_t v = 0;
    if (G.o.fuzz) {
        for (uint32_t m = n - 1;; m >>= 8) {
            if (G.in_left == 0) {
                G.exhausted = true;
                return 0;
            }
            v = v << 8 | *G.in++;
            G.in_left--;
            if (m < 256)
                break;
        }
    } else {
        G.rng += 0x9e3779b97f4a7c15ull;
        v = ch_mix(G.rng);
    }
    return (uint32_t)(v % n);
}

static bool ch_chance(uint32_t one_in) {
    return ch_pick(one_in) == one_in - 1;
}

/* A write or send size: mostly small, now and then large. */
static size_t ch_size(void) {
    size_t n;
    switch (ch_pick(8)) {
    case 0: case 1: case 2: case 3: n = 1 + ch_pick(64); break;
    case 4: case 5: n = 1 + ch_pick(2048); break;
    case 6: n = 1 + ch_pick(20000); break;
    default: n = 1 + ch_pick(100000); break;
    }
    n /= G.o.scale;
    return n ? n : 1;
}

/* ---- streams ------------------------------------------------------------- */

static inline uint8_t ch_byte(uint64_t salt, uint64_t off) {
    return (uint8_t)(ch_mix(salt + off / 8) >> (8 * (off % 8)));
}

static void ch_fill(uint8_t *p, uint64_t salt, uint64_t off, size_t len) {
    for (size_t i = 0; i < len; i++)
        p[i] = ch_byte(salt, off + i);
}

/* Offset of the first byte that is not the stream's, or len. */
static size_t ch_mismatch(uint64_t salt, uint64_t off, const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (p[i] != ch_byte(salt, off + i))
            return i;
    return len;
}

/* Framed streams.  Message k's payload length and bytes depend on the
 * stream and k only; echoed with write_message() (same framing), the
 * bytes that come back are the bytes that went, so a client checks its
 * echo as a byte stream whatever the framing. */
static size_t ch_plen(uint64_t salt, int kind, uint64_t k) {
    uint64_t x = ch_mix(salt ^ (k * 0x2545f4914f6cdd1dull));
    return kind == CH_LINE ? (size_t)(x % 200) : (size_t)(x % 300);
}

static size_t ch_flen(int kind, size_t plen) {
    return kind == CH_LINE ? plen + 1 : plen + 2;
}

static uint8_t ch_pbyte(uint64_t salt, int kind, uint64_t k, size_t i) {
    uint8_t b = ch_byte(salt ^ 0xa5a5a5a5a5a5a5a5ull, (k << 20) + i);
    return kind == CH_LINE ? (uint8_t)('a' + b % 26) : b;
}

/* Byte j of message k (header or line ending included). */
static uint8_t ch_fbyte(uint64_t salt, int kind, uint64_t k, size_t plen, size_t j) {
    if (kind == CH_LINE)
        return j < plen ? ch_pbyte(salt, kind, k, j) : (uint8_t)'\n';
    if (j < 2)
        return (uint8_t)(j == 0 ? plen >> 8 : plen & 0xff);
    return ch_pbyte(salt, kind, k, j - 2);
}

/* Move cur to the message that holds offset off (off >= cur->start). */
static void ch_seek(uint64_t salt, int kind, struct ch_cursor *cur, uint64_t off) {
    for (;;) {
        size_t fl = ch_flen(kind, ch_plen(salt, kind, cur->k));
        if (off < cur->start + fl)
            return;
        cur->start += fl;
        cur->k++;
    }
}

static uint8_t ch_sbyte(uint64_t salt, int kind, struct ch_cursor *cur, uint64_t off) {
    if (kind == CH_RAW)
        return ch_byte(salt, off);
    ch_seek(salt, kind, cur, off);
    return ch_fbyte(salt, kind, cur->k, ch_plen(salt, kind, cur->k), (size_t)(off - cur->start));
}

static void ch_sfill(uint64_t salt, int kind, struct ch_cursor *cur, uint64_t off, uint8_t *p,
                     size_t len) {
    if (kind == CH_RAW) {
        ch_fill(p, salt, off, len);
        return;
    }
    for (size_t i = 0; i < len; i++)
        p[i] = ch_sbyte(salt, kind, cur, off + i);
}

static size_t ch_smismatch(uint64_t salt, int kind, struct ch_cursor *cur, uint64_t off,
                           const uint8_t *p, size_t len) {
    if (kind == CH_RAW)
        return ch_mismatch(salt, off, p, len);
    for (size_t i = 0; i < len; i++)
        if (p[i] != ch_sbyte(salt, kind, cur, off + i))
            return i;
    return len;
}

/* Frames of messages k, k+1, ... into a new buffer until n messages or
 * max bytes (at least one message); *got is how many, *len the bytes. */
static uint8_t *ch_frames(uint64_t salt, int kind, uint64_t k, uint64_t n, size_t max,
                          uint64_t *got, size_t *len) {
    size_t total = 0;
    uint64_t m = 0;
    while (m < n) {
        size_t fl = ch_flen(kind, ch_plen(salt, kind, k + m));
        if (m > 0 && total + fl > max)
            break;
        total += fl;
        m++;
    }
    uint8_t *p = malloc(total ? total : 1);
    if (!p)
        return NULL;
    size_t at = 0;
    for (uint64_t i = 0; i < m; i++) {
        size_t pl = ch_plen(salt, kind, k + i), fl = ch_flen(kind, pl);
        for (size_t j = 0; j < fl; j++)
            p[at + j] = ch_fbyte(salt, kind, k + i, pl, j);
        at += fl;
    }
    *got = m;
    *len = total;
    return p;
}

/* ---- fds ----------------------------------------------------------------- */

static int ch_proc_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int self = dirfd(d), n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

static int ch_local_port(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return -1;
    return ntohs(a.sin_port);
}

/* ---- callback bookkeeping ------------------------------------------------- */

static void ch_reentry_note(const char *api, const char *cb) {
    for (int i = 0; i < ch_nreentry; i++) {
        if (strcmp(ch_reentry[i].api, api) == 0 && strcmp(ch_reentry[i].cb, cb) == 0) {
            ch_reentry[i].n++;
            return;
        }
    }
    if (ch_nreentry < (int)(sizeof ch_reentry / sizeof ch_reentry[0]))
        ch_reentry[ch_nreentry++] = (struct ch_reentry){api, cb, 1};
}

static void ch_cb_enter(const char *name, struct ch_conn *self) {
    G.callbacks++;
    if (G.api)
        ch_reentry_note(G.api, name);
    /* Issue 12: no crest call runs an application callback inside it. */
    CH_CHECK(!G.api, "%s ran inside %s", name, G.api ? G.api : "");
    CH_CHECK(G.depth < CH_MAX_DEPTH, "callbacks nested %d deep", G.depth);
    G.api_stack[G.depth] = G.api;
    G.stack[G.depth++] = self;
    G.api = NULL;
}

static void ch_cb_leave(void) {
    G.depth--;
    G.api = G.api_stack[G.depth];
}

/* Around every crest call the engine makes: a callback that runs inside
 * it is noted. */
#define CH_API(name, expr)                                                                    \
    do {                                                                                      \
        const char *ch_saved_api_ = G.api;                                                    \
        G.api = (name);                                                                       \
        expr;                                                                                 \
        G.api = ch_saved_api_;                                                                \
    } while (0)

static bool ch_excluded(unsigned bug) {
    return (G.exclude & bug) != 0;
}

/* Its memory is valid: open, or closed during this iteration. */
static bool ch_live(const struct ch_conn *r) {
    if (!r->c || r->gone)
        return false;
    return !r->closed || (G.in_loop && r->close_iter == G.iter);
}

static bool ch_open_state(int st) {
    return st == CREST_CONN_OPEN || st == CREST_CONN_HALF_CLOSED || st == CREST_CONN_CONNECTING;
}

static struct ch_conn *ch_conn_of(crest_conn_t *c) {
    return crest_conn_get_data(c);
}

/* A close request the engine makes: the first one, on a connection not
 * closing yet, names the reason on_close will see. */
static void ch_expect(struct ch_conn *r, int st, int reason) {
    if (r->expect_reason < 0 && !r->closed && !r->close_called && !r->abort_called &&
        ch_open_state(st))
        r->expect_reason = reason;
}

/* ---- forward declarations -------------------------------------------------- */

static void ch_ops(enum ch_ctx ctx, struct ch_conn *self, unsigned max);
static void ch_op(enum ch_ctx ctx, struct ch_conn *self);
static void ch_write(struct ch_conn *r, size_t want, unsigned how, enum ch_ctx ctx);
static void ch_close(struct ch_conn *r, enum ch_ctx ctx);
static void ch_shutdown(struct ch_conn *r, enum ch_ctx ctx);
static void ch_nested_loop_call(enum ch_ctx ctx);
static struct ch_conn *ch_target(struct ch_conn *self);
static void ch_on_flushed(crest_conn_t *c);

/* ---- checks at an EOF ----------------------------------------------------------- */

/* What a client sent that a handler gets: every byte (RAW), every line
 * (LINE: a last one without "\n" too), every whole frame (LENGTH). */
static uint64_t ch_sent_whole(const struct ch_client *cl) {
    if (cl->kind != CH_LEN)
        return cl->tx_off;
    struct ch_cursor cur = cl->tx_cur;
    ch_seek(cl->salt, cl->kind, &cur, cl->tx_off);
    return cur.start;
}

/* r's peer shut down: every byte it sent has been offered to r's handler. */
static void ch_check_peer_eof(struct ch_conn *r, const char *where) {
    if (r->peer_cli) {
        struct ch_client *cl = r->peer_cli;
        CH_CHECK(cl->shut_wr || cl->done, "%s r%d: EOF, but client c%d never shut down", where,
                 r->id, cl->id);
        uint64_t sent = r->raw_parse ? cl->tx_off : ch_sent_whole(cl);
        CH_CHECK(r->offered_hi == sent,
                 "%s r%d: EOF after %llu bytes offered, client c%d sent %llu", where, r->id,
                 (unsigned long long)r->offered_hi, cl->id, (unsigned long long)sent);
        ch_totals.eof_complete++;
    } else if (r->peer) {
        struct ch_conn *p = r->peer;
        bool final = p->shutdown_called || p->close_called || p->abort_called || p->closed ||
                     (ch_live(p) && crest_conn_state(p->c) == CREST_CONN_CLOSING);
        CH_CHECK(final, "%s r%d: EOF, but its peer r%d can still write", where, r->id, p->id);
        /* A peer switched to RAW may have echoed part of a LENGTH frame:
         * only whole frames are delivered. */
        uint64_t sent = p->tx_off;
        if (p->raw_parse && r->kind == CH_LEN) {
            struct ch_cursor cur = {0, 0};
            ch_seek(p->salt, p->kind, &cur, sent);
            sent = cur.start;
        }
        CH_CHECK(r->offered_hi == sent,
                 "%s r%d: EOF after %llu bytes offered, peer r%d had %llu accepted", where, r->id,
                 (unsigned long long)r->offered_hi, p->id, (unsigned long long)sent);
        ch_totals.eof_complete++;
    } else {
        ch_fail(__FILE__, __LINE__, "%s r%d: EOF from a peer never paired", where, r->id);
    }
}

/* ---- the echo server's handler ------------------------------------------------ */

/* crest_conn_id(): nonzero, unique among every connection of the run. */
static void ch_take_id(struct ch_conn *r) {
    r->cid = crest_conn_id(r->c);
    CH_CHECK(r->cid > 0, "r%d: crest_conn_id 0", r->id);
    for (int i = 0; i < G.ncs; i++)
        CH_CHECK(&G.cs[i] == r || G.cs[i].cid != r->cid, "r%d: crest_conn_id %llu, as r%d's",
                 r->id, (unsigned long long)r->cid, i);
}

static void ch_pair(struct ch_conn *r) {
    /* The address accept4 returned: the socket may be reset already. */
    char buf[CREST_ADDR_STRLEN];
    int n = crest_conn_socket_peer(r->c, buf, sizeof buf);
    CH_CHECK(n > 0, "r%d: crest_conn_socket_peer in on_open: %d", r->id, n);
    const char *colon = strrchr(buf, ':');
    int pp = colon ? atoi(colon + 1) : -1;
    for (int i = G.ncl - 1; i >= 0; i--) {
        struct ch_client *cl = &G.cl[i];
        if (cl->port == pp && !cl->srv && cl->l == r->l) {
            CH_CHECK(cl->kind == r->kind, "r%d: client c%d framing differs", r->id, cl->id);
            cl->srv = r;
            r->peer_cli = cl;
            r->salt = cl->salt;
            return;
        }
    }
    for (int i = G.ncs - 1; i >= 0; i--) {
        struct ch_conn *o = &G.cs[i];
        if (o->role == CH_OUT && o->port == pp && !o->peer && o->l == r->l) {
            CH_CHECK(o->kind == r->kind, "r%d: outbound r%d framing differs", r->id, o->id);
            o->peer = r;
            r->peer = o;
            r->salt = o->salt;
            return;
        }
    }
    ch_fail(__FILE__, __LINE__, "r%d: accepted a connection from port %d that nobody made", r->id,
            pp);
}

static void s_on_open(crest_conn_t *c) {
    struct ch_listener *L = crest_conn_handler_ctx(c);
    CH_CHECK(crest_conn_get_data(c) == NULL, "on_open: the connection has data already");
    CH_CHECK(G.ncs < CH_MAX_CONNS, "too many connections");
    struct ch_conn *r = &G.cs[G.ncs];
    memset(r, 0, sizeof *r);
    r->id = G.ncs++;
    r->c = c;
    r->role = CH_SERVER;
    r->l = L;
    r->has_eof = L->has_eof;
    r->has_hw = L->has_hw;
    r->keep_reading = L->keep_reading;
    r->kind = L->kind;
    r->expect_reason = -1;
    r->opened = true;
    r->opened_iter = G.iter;
    r->max_output = L->max_output;
    r->policy = L->policy;
    crest_conn_set_data(c, r);
    ch_take_id(r);
    G.created++;
    L->accepted++;
    ch_cb_enter("on_open", r);
    CH_CHECK(!G.destroying, "on_open during crest_loop_destroy");
    CH_CHECK(crest_conn_state(c) == CREST_CONN_OPEN, "r%d: on_open in state %d", r->id,
             crest_conn_state(c));
    ch_pair(r);
    ch_trace("r%d on_open (l%d, %s%d)", r->id, L->id, r->peer_cli ? "client c" : "outbound r",
             r->peer_cli ? r->peer_cli->id : r->peer->id);
    if (!G.winding)
        ch_ops(CTX_OPEN, r, 3);
    ch_cb_leave();
}

/* A data callback: the connection is one the model knows, opened, not
 * closed, and may be given data now. */
static struct ch_conn *ch_data_cb(crest_conn_t *c, const char *name, const uint8_t *data,
                                  size_t len) {
    struct ch_conn *r = ch_conn_of(c);
    CH_CHECK(r != NULL, "%s before on_open", name);
    CH_CHECK(r->c == c, "%s: wrong connection", name);
    CH_CHECK(r->opened, "r%d: %s before on_open", r->id, name);
    CH_CHECK(!r->closed, "r%d: %s after on_close", r->id, name);
    CH_CHECK(!r->eof, "r%d: %s after on_eof", r->id, name);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: %s after a close was requested", r->id,
             name);
    CH_CHECK(!r->paused, "r%d: %s while paused", r->id, name);
    CH_CHECK(!(r->hw && !r->keep_reading), "r%d: %s above high water", r->id, name);
    CH_CHECK(len > 0, "r%d: %s with 0 bytes", r->id, name);
    /* (A cursor only moves forward: a copy reads past rx_off, which an
     * offer not taken whole is offered again from.) */
    struct ch_cursor cur = r->rcur;
    size_t bad = r->raw_parse ? ch_smismatch(r->salt, r->kind, &cur, r->rx_off, data, len)
                              : ch_mismatch(r->salt, r->rx_off, data, len);
    CH_CHECK(bad == len, "r%d: %s: byte %llu of the stream is wrong (offered %zu bytes at %llu)",
             r->id, name, (unsigned long long)(r->rx_off + bad), len,
             (unsigned long long)r->rx_off);
    if (r->rx_off + len > r->offered_hi)
        r->offered_hi = r->rx_off + len;
    if (r->raw_parse)
        ch_seek(r->salt, r->kind, &r->rcur, r->rx_off);
    return r;
}

/* A handler's rejection of its input: a negative close reason (out of
 * range means PROTOCOL_ERROR). */
static int ch_reject(struct ch_conn *r, size_t len) {
    int why = 1 + (int)ch_pick(CREST_CLOSE_REASON_COUNT + 1);
    int st = crest_conn_state(r->c);
    ch_expect(r, st, why >= CREST_CLOSE_REASON_COUNT ? CREST_CLOSE_PROTOCOL_ERROR : why);
    r->close_called = true;
    ch_trace("r%d rejects %zu bytes (-%d)", r->id, len, why);
    return -why;
}

/* A framed message: the next one of the stream, whole; or, for LINE at
 * EOF, a last line without "\n" from a client that closed mid-line. */
static struct ch_conn *ch_msg_cb(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct ch_conn *r = ch_conn_of(c);
    const char *name = "on_message";
    CH_CHECK(r != NULL, "%s before on_open", name);
    CH_CHECK(r->c == c, "%s: wrong connection", name);
    CH_CHECK(r->opened, "r%d: %s before on_open", r->id, name);
    CH_CHECK(!r->closed, "r%d: %s after on_close", r->id, name);
    CH_CHECK(!r->eof, "r%d: %s after on_eof", r->id, name);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: %s after a close was requested", r->id,
             name);
    CH_CHECK(!r->paused, "r%d: %s while paused", r->id, name);
    CH_CHECK(!(r->hw && !r->keep_reading), "r%d: %s above high water", r->id, name);
    CH_CHECK(r->kind != CH_RAW, "r%d: on_message on a RAW connection", r->id);
    CH_CHECK(!r->raw_parse, "r%d: on_message after the switch to RAW", r->id);
    CH_CHECK(!r->partial_last, "r%d: a message after the last partial line", r->id);
    size_t plen = ch_plen(r->salt, r->kind, r->rx_msg);
    /* A last line can be whole but for its "\n" (the client closed just
     * before it, or a server switched to RAW echoed part of one, then
     * closed): it ends where the sender's stream ends. */
    bool ended = false;
    uint64_t end = 0;
    if (r->peer_cli && r->peer_cli->done) {
        ended = true;
        end = r->peer_cli->tx_off;
    } else if (r->peer && r->peer->raw_parse) {
        ended = true;
        end = r->peer->tx_off;
    }
    bool partial = r->kind == CH_LINE && ended && r->rx_off + ch_flen(r->kind, plen) > end;
    if (len != plen) {
        CH_CHECK(r->kind == CH_LINE && len < plen && ended,
                 "r%d: message %llu has %zu bytes, it was sent with %zu", r->id,
                 (unsigned long long)r->rx_msg, len, plen);
        partial = true;
    }
    if (partial)
        CH_CHECK(r->rx_off + len == end,
                 "r%d: a last line of %zu bytes at %llu, the sender sent %llu", r->id, len,
                 (unsigned long long)r->rx_off, (unsigned long long)end);
    for (size_t i = 0; i < len; i++)
        CH_CHECK(msg[i] == ch_pbyte(r->salt, r->kind, r->rx_msg, i),
                 "r%d: message %llu: byte %zu of %zu is wrong", r->id,
                 (unsigned long long)r->rx_msg, i, len);
    if (partial) {
        r->rx_off += len;
        r->partial_last = true;
    } else {
        r->rx_off += ch_flen(r->kind, plen);
        r->rx_msg++;
    }
    r->offered_hi = r->rx_off;
    return r;
}

/* How much of an offer the handler takes: all, part, none (wait for more),
 * or a rejection (a negative close reason). */
static ssize_t ch_consume(struct ch_conn *r, size_t len) {
    if (G.winding)
        return (ssize_t)len;
    switch (ch_pick(32)) {
    case 28: case 29:
        return len > 1 ? (ssize_t)(1 + ch_pick((uint32_t)len - 1)) : (ssize_t)len;
    case 30:
        return 0;
    case 31:
        if (ch_chance(4))
            return ch_reject(r, len);
        return (ssize_t)len;
    default:
        return (ssize_t)len;
    }
}

static ssize_t s_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct ch_conn *r = ch_data_cb(c, "on_data", data, len);
    ch_cb_enter("on_data", r);
    ssize_t took = ch_consume(r, len);
    if (took > 0)
        r->rx_off += (uint64_t)took;
    ch_trace("r%d on_data %zu at %llu, took %zd", r->id, len,
             (unsigned long long)(r->offered_hi - len), took);
    if (took >= 0) {
        unsigned e = G.winding ? 0 : ch_pick(8);
        if (e < 5)
            ch_write(r, SIZE_MAX, G.winding ? 0 : ch_pick(3), CTX_DATA); /* echo all owed */
        else if (e == 5)
            ch_write(r, ch_size(), ch_pick(3), CTX_DATA);
        if (!G.winding)
            ch_ops(CTX_DATA, r, 3);
    }
    ch_cb_leave();
    return took;
}

static int s_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct ch_conn *r = ch_msg_cb(c, msg, len);
    ch_cb_enter("on_message", r);
    int ret = !G.winding && ch_chance(64) ? ch_reject(r, len) : 0;
    ch_trace("r%d on_message %llu (%zu bytes): %d", r->id, (unsigned long long)r->rx_msg, len,
             ret);
    if (ret == 0) {
        unsigned e = G.winding ? 0 : ch_pick(8);
        if (e < 5)
            ch_write(r, SIZE_MAX, G.winding ? 0 : ch_pick(3), CTX_DATA); /* echo all owed */
        else if (e == 5)
            ch_write(r, ch_size(), ch_pick(3), CTX_DATA);
        if (!G.winding)
            ch_ops(CTX_DATA, r, 3);
    }
    ch_cb_leave();
    return ret;
}

static struct ch_conn *ch_event_cb(crest_conn_t *c, const char *name) {
    struct ch_conn *r = ch_conn_of(c);
    CH_CHECK(r != NULL, "%s before on_open", name);
    CH_CHECK(r->opened, "r%d: %s before on_open", r->id, name);
    CH_CHECK(!r->closed, "r%d: %s after on_close", r->id, name);
    return r;
}

static void ch_on_eof(crest_conn_t *c) {
    struct ch_conn *r = ch_event_cb(c, "on_eof");
    ch_cb_enter("on_eof", r);
    CH_CHECK(r->has_eof, "r%d: on_eof, but its handler has none", r->id);
    CH_CHECK(!r->eof, "r%d: on_eof twice", r->id);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: on_eof after a close was requested",
             r->id);
    CH_CHECK(!r->paused || ch_excluded(CH_BUG_EOF_WHILE_PAUSED), "r%d: on_eof while paused",
             r->id);
    CH_CHECK(crest_conn_state(c) == CREST_CONN_HALF_CLOSED, "r%d: on_eof in state %d", r->id,
             crest_conn_state(c));
    r->eof = true;
    ch_trace("r%d on_eof (offered %llu)", r->id, (unsigned long long)r->offered_hi);
    ch_check_peer_eof(r, "on_eof");
    if (G.winding) {
        if (r->role == CH_SERVER)
            ch_write(r, SIZE_MAX, 0, CTX_EOF);
        ch_close(r, CTX_EOF);
    } else {
        switch (ch_pick(6)) {
        case 0: /* echo the rest, then close */
            if (r->role == CH_SERVER)
                ch_write(r, SIZE_MAX, ch_pick(3), CTX_EOF);
            ch_close(r, CTX_EOF);
            break;
        case 1: /* echo the rest, then shut down */
            if (r->role == CH_SERVER)
                ch_write(r, SIZE_MAX, ch_pick(3), CTX_EOF);
            ch_shutdown(r, CTX_EOF);
            break;
        default:
            ch_ops(CTX_EOF, r, 3);
            break;
        }
    }
    ch_cb_leave();
}

static void ch_on_high_water(crest_conn_t *c) {
    struct ch_conn *r = ch_event_cb(c, "on_high_water");
    ch_cb_enter("on_high_water", r);
    CH_CHECK(r->has_hw, "r%d: on_high_water, but its handler has none", r->id);
    CH_CHECK(!r->hw, "r%d: on_high_water twice without on_drain", r->id);
    r->hw = true;
    ch_trace("r%d on_high_water (%zu queued)", r->id, crest_conn_output_bytes(c));
    if (!G.winding && ch_chance(4))
        ch_nested_loop_call(CTX_HW);
    if (!G.winding)
        ch_ops(CTX_HW, r, 2);
    ch_cb_leave();
}

static void ch_on_drain(crest_conn_t *c) {
    struct ch_conn *r = ch_event_cb(c, "on_drain");
    ch_cb_enter("on_drain", r);
    CH_CHECK(r->hw, "r%d: on_drain without on_high_water", r->id);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: on_drain after a close was requested",
             r->id);
    r->hw = false;
    ch_trace("r%d on_drain (%zu queued)", r->id, crest_conn_output_bytes(c));
    if (!G.winding && ch_chance(4))
        ch_nested_loop_call(CTX_DRAIN);
    if (!G.winding)
        ch_ops(CTX_DRAIN, r, 2);
    ch_cb_leave();
}

static void ch_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct ch_conn *r = ch_conn_of(c);
    if (G.destroying)
        G.destroy_close_seen = true; /* after every queued defer and post */
    if (!r) {
        /* Accepted, closed before its PROXY header was in: no on_open. */
        struct ch_listener *L = crest_conn_handler_ctx(c);
        CH_CHECK(L != NULL && L->proxy, "on_close of a connection the model never saw (%s)",
                 crest_close_reason_key(reason));
        CH_CHECK(reason != CREST_CLOSE_PEER_EOF, "l%d: PEER_EOF before the PROXY header",
                 L->id);
        L->unopened++;
        G.created++;
        G.closed++;
        ch_totals.reasons[reason]++;
        ch_trace("l%d: a connection closed before its PROXY header: %s", L->id,
                 crest_close_reason_key(reason));
        return;
    }
    CH_CHECK(r->c == c, "on_close: wrong connection");
    CH_CHECK(!r->closed, "r%d: on_close twice (%s, then %s)", r->id,
             crest_close_reason_key((crest_close_reason_t)r->reason),
             crest_close_reason_key(reason));
    r->closed = true;
    r->close_iter = G.iter;
    r->reason = (int)reason;
    r->err = err;
    G.closed++;
    ch_cb_enter("on_close", r);
    ch_trace("r%d on_close %s err %d (tx %llu rx %llu)", r->id, crest_close_reason_key(reason),
             err, (unsigned long long)r->tx_off, (unsigned long long)r->rx_off);
    CH_CHECK((unsigned)reason < CREST_CLOSE_REASON_COUNT, "r%d: on_close reason %d", r->id,
             (int)reason);
    ch_totals.reasons[reason]++;
    CH_CHECK(crest_conn_state(c) == CREST_CONN_CLOSED, "r%d: on_close in state %d", r->id,
             crest_conn_state(c));
    if (r->expect_reason >= 0)
        CH_CHECK((int)reason == r->expect_reason, "r%d: closed with %s, the first request was %s",
                 r->id, crest_close_reason_key(reason),
                 crest_close_reason_key((crest_close_reason_t)r->expect_reason));
    if (reason == CREST_CLOSE_PEER_EOF) {
        CH_CHECK(!r->has_eof, "r%d: closed for PEER_EOF, but its handler has on_eof", r->id);
        CH_CHECK(r->opened, "r%d: PEER_EOF before on_open", r->id);
        ch_check_peer_eof(r, "on_close(peer_eof)");
    }
    if (r->role == CH_OUT && !r->opened) {
        bool asked = r->close_called || r->abort_called;
        CH_CHECK(asked || reason == CREST_CLOSE_CONNECT_FAILED ||
                     reason == CREST_CLOSE_CONNECT_TIMEOUT || reason == CREST_CLOSE_SHUTDOWN,
                 "r%d: closed before on_open with %s", r->id, crest_close_reason_key(reason));
        if (!r->l && reason == CREST_CLOSE_CONNECT_FAILED)
            CH_CHECK(err == ECONNREFUSED, "r%d: connect to the refusing port failed with %d",
                     r->id, err);
    }
    /* A graceful close while CONNECTING must still deliver what was
     * written, and end with a FIN: the accepted end sees no reset unless
     * it wrote something the closed end never read, or the connect itself
     * failed or timed out (then the close is abortive).  Checked once
     * both ends are closed. */
    struct ch_conn *srv = r->role == CH_SERVER ? r : r->peer;
    struct ch_conn *out = srv ? srv->peer : NULL;
    if (srv && out && srv->closed && out->closed && out->role == CH_OUT &&
        out->closed_connecting && !out->abort_called &&
        out->reason != CREST_CLOSE_CONNECT_TIMEOUT && out->reason != CREST_CLOSE_CONNECT_FAILED &&
        srv->reason == CREST_CLOSE_PEER_RESET && srv->tx_off == 0 && !srv->close_called &&
        !srv->abort_called)
        ch_fail(__FILE__, __LINE__,
                "r%d: reset by r%d, which was closed gracefully while connecting (%s)", srv->id,
                out->id, crest_close_reason_key((crest_close_reason_t)out->reason));
    CH_CHECK(r->flush_pending == 0, "r%d: on_close with %u flush callbacks still owed", r->id,
             r->flush_pending);
    r->in_close = true;
    if (!G.winding)
        ch_ops(CTX_CLOSE, r, 3);
    r->in_close = false;
    ch_cb_leave();
}

/* [framed][variant]: variant bit 0 on_eof, bit 1 on_high_water/on_drain. */
static const crest_handler_t ch_server_handlers[2][4] = {
    {
        {.on_open = s_on_open, .on_data = s_on_data, .on_close = ch_on_close},
        {.on_open = s_on_open, .on_data = s_on_data, .on_eof = ch_on_eof,
         .on_close = ch_on_close},
        {.on_open = s_on_open, .on_data = s_on_data, .on_high_water = ch_on_high_water,
         .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
        {.on_open = s_on_open, .on_data = s_on_data, .on_eof = ch_on_eof,
         .on_high_water = ch_on_high_water, .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
    },
    {
        {.on_open = s_on_open, .on_message = s_on_message, .on_close = ch_on_close},
        {.on_open = s_on_open, .on_message = s_on_message, .on_eof = ch_on_eof,
         .on_close = ch_on_close},
        {.on_open = s_on_open, .on_message = s_on_message, .on_high_water = ch_on_high_water,
         .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
        {.on_open = s_on_open, .on_message = s_on_message, .on_eof = ch_on_eof,
         .on_high_water = ch_on_high_water, .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
    },
};

/* ---- the outbound connections' handler ------------------------------------------ */

static void o_on_open(crest_conn_t *c) {
    struct ch_conn *r = ch_conn_of(c);
    CH_CHECK(r != NULL && r->c == c, "outbound on_open: unknown connection");
    ch_cb_enter("on_open", r);
    CH_CHECK(!r->opened, "r%d: on_open twice", r->id);
    CH_CHECK(!r->closed, "r%d: on_open after on_close", r->id);
    CH_CHECK(r->l != NULL, "r%d: connected to the refusing port", r->id);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: on_open after a close was requested",
             r->id);
    CH_CHECK(crest_conn_state(c) == CREST_CONN_OPEN, "r%d: on_open in state %d", r->id,
             crest_conn_state(c));
    r->opened = true;
    r->opened_iter = G.iter;
    ch_trace("r%d on_open (outbound to l%d)", r->id, r->l->id);
    if (!G.winding) {
        if (ch_pick(2) == 0)
            ch_write(r, ch_size(), ch_pick(3), CTX_OPEN);
        ch_ops(CTX_OPEN, r, 3);
    }
    ch_cb_leave();
}

static ssize_t o_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct ch_conn *r = ch_data_cb(c, "on_data", data, len);
    ch_cb_enter("on_data", r);
    CH_CHECK(r->peer != NULL, "r%d: data from a peer never paired", r->id);
    CH_CHECK(r->rx_off + len <= r->peer->tx_off,
             "r%d: got %zu bytes at %llu, its peer r%d only wrote %llu", r->id, len,
             (unsigned long long)r->rx_off, r->peer->id, (unsigned long long)r->peer->tx_off);
    ssize_t took = ch_consume(r, len);
    if (took > 0)
        r->rx_off += (uint64_t)took;
    ch_trace("r%d on_data %zu at %llu, took %zd", r->id, len,
             (unsigned long long)(r->offered_hi - len), took);
    if (took >= 0 && !G.winding) {
        if (ch_pick(3) == 0)
            ch_write(r, ch_size(), ch_pick(3), CTX_DATA);
        ch_ops(CTX_DATA, r, 3);
    }
    ch_cb_leave();
    return took;
}

static int o_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct ch_conn *r = ch_msg_cb(c, msg, len);
    ch_cb_enter("on_message", r);
    CH_CHECK(r->peer != NULL, "r%d: a message from a peer never paired", r->id);
    CH_CHECK(r->rx_off <= r->peer->tx_off, "r%d: %llu bytes of messages, its peer r%d wrote %llu",
             r->id, (unsigned long long)r->rx_off, r->peer->id,
             (unsigned long long)r->peer->tx_off);
    int ret = !G.winding && ch_chance(64) ? ch_reject(r, len) : 0;
    ch_trace("r%d on_message %llu (%zu bytes): %d", r->id, (unsigned long long)r->rx_msg, len,
             ret);
    if (ret == 0 && !G.winding) {
        if (ch_pick(3) == 0)
            ch_write(r, ch_size(), ch_pick(3), CTX_DATA);
        ch_ops(CTX_DATA, r, 3);
    }
    ch_cb_leave();
    return ret;
}

/* [framed][variant]: variant 0 with on_high_water/on_drain, 1 with on_eof. */
static const crest_handler_t ch_out_handlers[2][2] = {
    {
        {.on_open = o_on_open, .on_data = o_on_data, .on_high_water = ch_on_high_water,
         .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
        {.on_open = o_on_open, .on_data = o_on_data, .on_eof = ch_on_eof,
         .on_close = ch_on_close},
    },
    {
        {.on_open = o_on_open, .on_message = o_on_message, .on_high_water = ch_on_high_water,
         .on_drain = ch_on_drain, .on_flushed = ch_on_flushed, .on_close = ch_on_close},
        {.on_open = o_on_open, .on_message = o_on_message, .on_eof = ch_on_eof,
         .on_close = ch_on_close},
    },
};

/* ---- operations on a connection ----------------------------------------------- */

/* A write's result against what the model knows from before the call. */
static void ch_write_rc(struct ch_conn *r, int rc, size_t k, bool refused, int st, size_t q) {
    CH_CHECK(rc == 0 || rc == -ENOTCONN || rc == -EPIPE || rc == -ENOMEM || rc == -ENOBUFS,
             "r%d: write returned %d", r->id, rc);
    /* max_output: refused whole when output before it plus the write
     * would pass the cap; CLOSE closes abortively, REFUSE stays open. */
    size_t cap = r->max_output ? r->max_output : (size_t)UINT32_MAX;
    bool over = k > 0 && (q > cap || k > cap - q);
    if (rc == -ENOBUFS) {
        CH_CHECK(over, "r%d: -ENOBUFS for %zu bytes with %zu queued, cap %zu", r->id, k, q, cap);
        G.cap_refused++;
        if (r->policy == CREST_OUTPUT_CLOSE) {
            ch_expect(r, st, CREST_CLOSE_OUTPUT_LIMIT);
            r->close_called = r->abort_called = true;
        }
        return;
    }
    if (rc == 0 && k > 0)
        CH_CHECK(!over, "r%d: a write of %zu bytes with %zu queued accepted past the cap %zu",
                 r->id, k, q, cap);
    if (k > 0) {
        if (refused)
            CH_CHECK(rc < 0, "r%d: a write was accepted after close or shutdown", r->id);
        else if (ch_open_state(st))
            CH_CHECK(rc == 0 || rc == -EPIPE, "r%d: write refused (%d) in state %d", r->id, rc,
                     st);
    }
}

/* Framed: whole messages of r's stream (the echo of what it received, or
 * its own), up to want bytes (SIZE_MAX: every message it owes), as one
 * write of the frames, a writev cut anywhere, or write_message each. */
static void ch_write_frames(struct ch_conn *r, size_t want, unsigned how, enum ch_ctx ctx) {
    uint64_t n = UINT64_MAX;
    if (r->role == CH_SERVER) {
        n = r->rx_msg - r->tx_msg;
        if (n == 0)
            return;
    } else if (r->tx_off >= r->tx_cap) {
        return;
    }
    uint64_t m;
    size_t len;
    uint8_t *p = ch_frames(r->salt, r->kind, r->tx_msg, n, want, &m, &len);
    CH_CHECK(p != NULL, "out of memory");
    bool refused = r->closed || r->close_called || r->abort_called || r->shutdown_called;
    int st = crest_conn_state(r->c);
    if (ch_excluded(CH_BUG_HW_BEFORE_OPEN) && !r->closed && st == CREST_CONN_CONNECTING &&
        crest_conn_output_bytes(r->c) + len > r->high_water) {
        free(p);
        return;
    }
    int rc = 0;
    size_t q = crest_conn_output_bytes(r->c);
    r->in_write = true;
    if (how == 2) {
        /* One write_message per message; each counts on its own. */
        size_t at = 0;
        for (uint64_t i = 0; i < m; i++) {
            size_t pl = ch_plen(r->salt, r->kind, r->tx_msg), fl = ch_flen(r->kind, pl);
            const uint8_t *payload = p + at + (r->kind == CH_LEN ? 2 : 0);
            /* A callback inside the last call may have closed it. */
            refused = r->closed || r->close_called || r->abort_called || r->shutdown_called;
            st = crest_conn_state(r->c);
            size_t q1 = crest_conn_output_bytes(r->c);
            if (ch_pick(2)) {
                CH_API("crest_conn_write_message",
                       rc = crest_conn_write_message(r->c, payload, pl));
            } else {
                struct iovec iov[3];
                size_t a = pl ? ch_pick((uint32_t)pl + 1) : 0, b = a + ch_pick((uint32_t)(pl - a) + 1);
                iov[0] = (struct iovec){(void *)payload, a};
                iov[1] = (struct iovec){(void *)(payload + a), b - a};
                iov[2] = (struct iovec){(void *)(payload + b), pl - b};
                CH_API("crest_conn_write_messagev",
                       rc = crest_conn_write_messagev(r->c, iov, 3));
            }
            ch_write_rc(r, rc, fl, refused, st, q1);
            if (rc < 0)
                break;
            r->tx_msg++;
            r->tx_off += fl;
            at += fl;
        }
    } else {
        if (how == 0) {
            CH_API("crest_conn_write", rc = crest_conn_write(r->c, p, len));
        } else {
            struct iovec iov[4];
            int cnt = 1 + (int)ch_pick(4);
            size_t at = 0;
            for (int i = 0; i < cnt; i++) {
                size_t piece = i == cnt - 1 ? len - at : ch_pick((uint32_t)(len - at + 1));
                iov[i].iov_base = p + at;
                iov[i].iov_len = piece;
                at += piece;
            }
            CH_API("crest_conn_writev", rc = crest_conn_writev(r->c, iov, cnt));
        }
        ch_write_rc(r, rc, len, refused, st, q);
        if (rc == 0) {
            r->tx_msg += m;
            r->tx_off += len;
        }
    }
    r->in_write = false;
    free(p);
    ch_trace("r%d %s %s %llu messages (%zu bytes) from %llu: %d", r->id, ch_ctx_names[ctx],
             how == 0 ? "write" : how == 1 ? "writev" : "write_message", (unsigned long long)m,
             len, (unsigned long long)r->tx_msg, rc);
    if (rc == 0 && r->role == CH_SERVER)
        G.bytes_echoed += len;
}

/* Write up to want bytes of r's stream (SIZE_MAX: all it owes): write,
 * writev in pieces, or write_message. */
static void ch_write(struct ch_conn *r, size_t want, unsigned how, enum ch_ctx ctx) {
    if (r->in_write)
        return; /* a callback inside r's own write: the stream offset is not settled */
    if (r->kind != CH_RAW && !r->raw_parse) {
        ch_write_frames(r, want, how, ctx);
        return;
    }
    uint64_t avail = r->role == CH_SERVER ? r->rx_off - r->tx_off : r->tx_cap - r->tx_off;
    size_t k = want == SIZE_MAX || want > avail ? (size_t)avail : want;
    if (k == 0 && want == SIZE_MAX)
        return;
    if (ch_excluded(CH_BUG_HW_BEFORE_OPEN) && !r->closed &&
        crest_conn_state(r->c) == CREST_CONN_CONNECTING) {
        size_t queued = crest_conn_output_bytes(r->c);
        if (queued >= r->high_water)
            return;
        if (k > r->high_water - queued)
            k = r->high_water - queued;
    }
    bool closed = r->closed;
    bool refused = closed || r->close_called || r->abort_called || r->shutdown_called;
    int st = crest_conn_state(r->c);
    if (closed)
        CH_CHECK(st == CREST_CONN_CLOSED, "r%d: state %d after on_close", r->id, st);
    uint8_t *p = malloc(k ? k : 1);
    CH_CHECK(p != NULL, "out of memory");
    if (r->raw_parse) {
        ch_seek(r->salt, r->kind, &r->tcur, r->tx_off);
        struct ch_cursor cur = r->tcur;
        ch_sfill(r->salt, r->kind, &cur, r->tx_off, p, k);
    }
    else
        ch_fill(p, r->salt, r->tx_off, k);
    int rc = 0;
    size_t q = crest_conn_output_bytes(r->c);
    r->in_write = true;
    switch (how) {
    case 0:
        CH_API("crest_conn_write", rc = crest_conn_write(r->c, p, k));
        break;
    case 1: {
        struct iovec iov[4];
        int n = 1 + (int)ch_pick(4);
        size_t at = 0;
        for (int i = 0; i < n; i++) {
            size_t piece = i == n - 1 ? k - at : ch_pick((uint32_t)(k - at + 1));
            iov[i].iov_base = p + at;
            iov[i].iov_len = piece;
            at += piece;
        }
        CH_API("crest_conn_writev", rc = crest_conn_writev(r->c, iov, n));
        break;
    }
    default:
        if (ch_pick(2)) {
            CH_API("crest_conn_write_message", rc = crest_conn_write_message(r->c, p, k));
        } else {
            struct iovec iov[2];
            size_t a = ch_pick((uint32_t)k + 1);
            iov[0] = (struct iovec){p, a};
            iov[1] = (struct iovec){p + a, k - a};
            CH_API("crest_conn_write_messagev", rc = crest_conn_write_messagev(r->c, iov, 2));
        }
        break;
    }
    r->in_write = false;
    free(p);
    ch_trace("r%d %s write%s %zu at %llu: %d", r->id, ch_ctx_names[ctx],
             how == 0 ? "" : how == 1 ? "v" : "_message", k, (unsigned long long)r->tx_off, rc);
    ch_write_rc(r, rc, k, refused, st, q);
    if (rc == 0) {
        r->tx_off += k;
        if (r->role == CH_SERVER)
            G.bytes_echoed += k;
    }
}

static void ch_close(struct ch_conn *r, enum ch_ctx ctx) {
    int st = crest_conn_state(r->c);
    if (st == CREST_CONN_CONNECTING && r->l && ch_excluded(CH_BUG_CLOSE_CONNECTING))
        return;
    /* Closed while connecting, the reason is the connect's if it fails. */
    if (st != CREST_CONN_CONNECTING)
        ch_expect(r, st, CREST_CLOSE_LOCAL);
    if (st == CREST_CONN_CONNECTING && (r->tx_off || r->shutdown_called))
        r->closed_connecting = true; /* with nothing to send it resets (conn.h) */
    r->close_called = true;
    ch_trace("r%d %s close (state %d)", r->id, ch_ctx_names[ctx], st);
    CH_API("crest_conn_close", crest_conn_close(r->c));
}

static void ch_abort(struct ch_conn *r, enum ch_ctx ctx) {
    int st = crest_conn_state(r->c);
    ch_expect(r, st, CREST_CLOSE_ABORT);
    r->abort_called = true;
    ch_trace("r%d %s abort (state %d)", r->id, ch_ctx_names[ctx], st);
    CH_API("crest_conn_abort", crest_conn_abort(r->c));
}

static void ch_fail_conn(struct ch_conn *r, enum ch_ctx ctx) {
    static const crest_close_reason_t reasons[] = {
        CREST_CLOSE_PROTOCOL_ERROR, CREST_CLOSE_TOO_LARGE, CREST_CLOSE_IDLE_TIMEOUT,
        CREST_CLOSE_READ_TIMEOUT, CREST_CLOSE_NO_MEMORY};
    crest_close_reason_t why = reasons[ch_pick(5)];
    int st = crest_conn_state(r->c);
    if (st == CREST_CONN_CONNECTING && r->l && ch_excluded(CH_BUG_CLOSE_CONNECTING))
        return;
    if (st != CREST_CONN_CONNECTING)
        ch_expect(r, st, (int)why);
    if (st == CREST_CONN_CONNECTING && (r->tx_off || r->shutdown_called))
        r->closed_connecting = true; /* with nothing to send it resets (conn.h) */
    r->close_called = true;
    ch_trace("r%d %s fail %s (state %d)", r->id, ch_ctx_names[ctx], crest_close_reason_key(why),
             st);
    CH_API("crest_conn_fail", crest_conn_fail(r->c, why, "chaos r%d", r->id));
}

static void ch_shutdown(struct ch_conn *r, enum ch_ctx ctx) {
    int st = crest_conn_state(r->c);
    bool done_before = r->closed || r->close_called || r->abort_called || r->shutdown_called;
    int rc;
    CH_API("crest_conn_shutdown", rc = crest_conn_shutdown(r->c));
    ch_trace("r%d %s shutdown (state %d): %d", r->id, ch_ctx_names[ctx], st, rc);
    CH_CHECK(rc == 0 || rc == -ENOTCONN || rc == -EPIPE, "r%d: shutdown returned %d", r->id, rc);
    if (done_before)
        CH_CHECK(rc < 0, "r%d: shutdown accepted after close or shutdown", r->id);
    else if (ch_open_state(st))
        CH_CHECK(rc == 0 || rc == -EPIPE, "r%d: shutdown refused (%d) in state %d", r->id, rc, st);
    if (rc == 0 || rc == -EPIPE)
        r->shutdown_called = true;
}

static void ch_query(struct ch_conn *r) {
    crest_conn_t *c = r->c;
    int st = crest_conn_state(c);
    if (r->closed) {
        CH_CHECK(st == CREST_CONN_CLOSED, "r%d: state %d after on_close", r->id, st);
        CH_CHECK((crest_conn_fd(c) >= 0) == r->in_close, "r%d: fd %d %s on_close", r->id,
                 crest_conn_fd(c), r->in_close ? "in" : "after");
        CH_CHECK(crest_conn_output_bytes(c) == 0, "r%d: %zu bytes queued after on_close", r->id,
                 crest_conn_output_bytes(c));
    } else {
        CH_CHECK(st != CREST_CONN_CLOSED, "r%d: CLOSED before on_close", r->id);
        CH_CHECK(crest_conn_fd(c) >= 0, "r%d: no fd before on_close", r->id);
        /* Closed gracefully while connecting with output to send, it stays
         * CONNECTING until the connect completes (conn.h). */
        if (r->abort_called || (r->close_called && !r->closed_connecting))
            CH_CHECK(st == CREST_CONN_CLOSING, "r%d: state %d after a close request", r->id, st);
        else if (r->close_called)
            CH_CHECK(st == CREST_CONN_CLOSING || st == CREST_CONN_CONNECTING,
                     "r%d: state %d after a close request", r->id, st);
        if (r->role == CH_OUT && !r->opened)
            CH_CHECK(st == CREST_CONN_CONNECTING || st == CREST_CONN_CLOSING,
                     "r%d: state %d before on_open", r->id, st);
        if (r->eof)
            CH_CHECK(st == CREST_CONN_HALF_CLOSED || st == CREST_CONN_CLOSING,
                     "r%d: state %d after on_eof", r->id, st);
    }
    char buf[CREST_ADDR_STRLEN];
    int n = crest_conn_peer(c, buf, sizeof buf);
    CH_CHECK(n > 0, "r%d: crest_conn_peer: %d", r->id, n);
    const char *colon = strrchr(buf, ':');
    int port = colon ? atoi(colon + 1) : -1;
    if (r->role == CH_OUT)
        CH_CHECK(port == r->dial_port, "r%d: peer %s, dialled port %d", r->id, buf, r->dial_port);
    else if (r->peer_cli)
        CH_CHECK(port == (r->peer_cli->proxy ? r->peer_cli->src_port : r->peer_cli->port),
                 "r%d: peer %s, client c%d port %d (PROXY source port %d)", r->id, buf,
                 r->peer_cli->id, r->peer_cli->port, r->peer_cli->src_port);
    CH_CHECK(crest_conn_get_data(c) == r, "r%d: data pointer changed", r->id);
    CH_CHECK(crest_conn_loop(c) == G.loop, "r%d: wrong loop", r->id);
    /* crest_conn_get_info(): what the model counted. */
    crest_conn_info_t in;
    crest_conn_get_info(c, &in);
    CH_CHECK(in.id == r->cid && crest_conn_id(c) == r->cid, "r%d: id %llu / %llu, was %llu",
             r->id, (unsigned long long)in.id, (unsigned long long)crest_conn_id(c),
             (unsigned long long)r->cid);
    CH_CHECK((int)in.state == st, "r%d: info state %d, state %d", r->id, (int)in.state, st);
    CH_CHECK(in.fd == crest_conn_fd(c), "r%d: info fd %d, fd %d", r->id, in.fd, crest_conn_fd(c));
    CH_CHECK(in.output_bytes == crest_conn_output_bytes(c), "r%d: info output %zu, %zu", r->id,
             in.output_bytes, crest_conn_output_bytes(c));
    static const crest_framing_kind_t fk[] = {CREST_FRAMING_RAW, CREST_FRAMING_LINE,
                                              CREST_FRAMING_LENGTH};
    CH_CHECK(in.framing == fk[r->raw_parse ? CH_RAW : r->kind], "r%d: info framing %d, model %d", r->id, (int)in.framing,
             r->kind);
    /* Every byte a write accepted is sent or still queued, unless a close
     * dropped the queue (abortive, or the socket failed: CLOSING). */
    if (!r->closed && !r->close_called && !r->abort_called && st != CREST_CONN_CLOSING)
        CH_CHECK(in.bytes_out + in.output_bytes == r->tx_off,
                 "r%d: bytes_out %llu + output %zu, writes accepted %llu", r->id,
                 (unsigned long long)in.bytes_out, in.output_bytes,
                 (unsigned long long)r->tx_off);
    else
        CH_CHECK(in.bytes_out <= r->tx_off, "r%d: bytes_out %llu, writes accepted %llu", r->id,
                 (unsigned long long)in.bytes_out, (unsigned long long)r->tx_off);
    uint64_t peer_tx = r->peer_cli ? (r->peer_cli->proxy ? UINT64_MAX : r->peer_cli->tx_off)
                       : r->peer   ? r->peer->tx_off
                                   : 0;
    CH_CHECK(in.bytes_in >= r->offered_hi && in.bytes_in <= peer_tx,
             "r%d: bytes_in %llu, offered %llu, the peer sent %llu", r->id,
             (unsigned long long)in.bytes_in, (unsigned long long)r->offered_hi,
             (unsigned long long)peer_tx);
    CH_CHECK(in.messages_in == (r->kind == CH_RAW ? 0 : r->rx_msg + r->partial_last),
             "r%d: messages_in %llu, the model %llu", r->id, (unsigned long long)in.messages_in,
             (unsigned long long)r->rx_msg);
    if (r->closed && !r->in_close)
        CH_CHECK(in.fd == -1 && in.output_bytes == 0 && in.input_bytes == 0,
                 "r%d: info after on_close: fd %d output %zu input %zu", r->id, in.fd,
                 in.output_bytes, in.input_bytes);
    crest_conn_opts_t co;
    CH_CHECK(crest_conn_get_opts(c, &co) == 0, "r%d: get_opts failed", r->id);
    CH_CHECK(co.max_output == r->max_output && (int)co.output_policy == r->policy,
             "r%d: get_opts max_output %zu policy %d, set %zu %d", r->id, co.max_output,
             (int)co.output_policy, r->max_output, r->policy);
    CH_CHECK(crest_conn_handler_ctx(c) == (r->role == CH_SERVER ? (void *)r->l : NULL),
             "r%d: wrong handler context", r->id);
}

static void ch_sockopt(struct ch_conn *r, enum ch_ctx ctx) {
    int rc, what = (int)ch_pick(3);
    switch (what) {
    case 0: CH_API("crest_conn_set_nodelay", rc = crest_conn_set_nodelay(r->c, ch_pick(2))); break;
    case 1: CH_API("crest_conn_set_sndbuf", rc = crest_conn_set_sndbuf(r->c, ch_pick(2) ? 4096 : 65536)); break;
    default: CH_API("crest_conn_set_rcvbuf", rc = crest_conn_set_rcvbuf(r->c, ch_pick(2) ? 4096 : 65536)); break;
    }
    ch_trace("r%d %s sockopt %d: %d", r->id, ch_ctx_names[ctx], what, rc);
    if (r->closed)
        CH_CHECK(rc == -ENOTCONN, "r%d: socket option on a closed connection: %d", r->id, rc);
    else
        CH_CHECK(rc >= 0 || rc == -EINVAL, "r%d: socket option %d failed: %d", r->id, what, rc);
}

/* crest_conn_flush_notify(): its callback runs exactly once, from the
 * loop, in the order asked, before on_close; 0 only once every byte
 * accepted before the call has been handed to the kernel. */
struct ch_flush {
    struct ch_conn *r;
    uint64_t seq, tx_at;
};

static void ch_flush_cb(crest_conn_t *c, int status, void *arg) {
    struct ch_flush *f = arg;
    struct ch_conn *r = f->r;
    CH_CHECK(r->c == c, "flush callback: wrong connection");
    ch_cb_enter("flush_cb", r);
    G.flush_run++;
    CH_CHECK(!r->closed, "r%d: flush callback %llu after on_close", r->id,
             (unsigned long long)f->seq);
    CH_CHECK(f->seq == r->flush_seq_run, "r%d: flush callback %llu ran, %llu was next", r->id,
             (unsigned long long)f->seq, (unsigned long long)r->flush_seq_run);
    r->flush_seq_run++;
    r->flush_pending--;
    crest_conn_info_t in;
    crest_conn_get_info(c, &in);
    int st = crest_conn_state(c);
    ch_trace("r%d flush callback %llu: %d (out %llu, asked at %llu)", r->id,
             (unsigned long long)f->seq, status, (unsigned long long)in.bytes_out,
             (unsigned long long)f->tx_at);
    if (status == 0) {
        CH_CHECK(in.bytes_out >= f->tx_at, "r%d: flush status 0 with %llu bytes sent of %llu",
                 r->id, (unsigned long long)in.bytes_out, (unsigned long long)f->tx_at);
        CH_CHECK(st != CREST_CONN_CLOSED, "r%d: flush callback in state CLOSED", r->id);
    } else {
        CH_CHECK(status < 0 && status > -4096, "r%d: flush status %d", r->id, status);
        CH_CHECK(st == CREST_CONN_CLOSING, "r%d: flush status %d in state %d", r->id, status, st);
    }
    free(f);
    if (!G.winding && status == 0)
        ch_ops(CTX_FLUSH, r, 2);
    ch_cb_leave();
}

static void ch_flush_notify(struct ch_conn *r, enum ch_ctx ctx) {
    struct ch_flush *f = malloc(sizeof *f);
    CH_CHECK(f != NULL, "out of memory");
    *f = (struct ch_flush){r, r->flush_seq_asked, r->tx_off};
    bool asked = r->closed || r->close_called || r->abort_called;
    int st = crest_conn_state(r->c), rc;
    CH_API("crest_conn_flush_notify", rc = crest_conn_flush_notify(r->c, ch_flush_cb, f));
    ch_trace("r%d %s flush_notify %llu (state %d, tx %llu): %d", r->id, ch_ctx_names[ctx],
             (unsigned long long)f->seq, st, (unsigned long long)r->tx_off, rc);
    if (asked)
        CH_CHECK(rc == -ENOTCONN, "r%d: flush_notify after a close request: %d", r->id, rc);
    else
        CH_CHECK(rc == 0 || (rc == -ENOTCONN && st == CREST_CONN_CLOSING),
                 "r%d: flush_notify in state %d: %d", r->id, st, rc);
    if (rc != 0) {
        free(f);
        return;
    }
    r->flush_seq_asked++;
    r->flush_pending++;
    G.flush_asked++;
}

static void ch_on_flushed(crest_conn_t *c) {
    struct ch_conn *r = ch_event_cb(c, "on_flushed");
    ch_cb_enter("on_flushed", r);
    CH_CHECK(!r->close_called && !r->abort_called, "r%d: on_flushed after a close was requested",
             r->id);
    G.flushed++;
    ch_trace("r%d on_flushed (%zu queued)", r->id, crest_conn_output_bytes(c));
    if (!G.winding)
        ch_ops(CTX_DRAIN, r, 1);
    ch_cb_leave();
}

/* crest_conn_set_opts(): a cap a burst can reach (either policy), a low
 * high water, a small send buffer, timeouts on or off; then, sometimes, a
 * burst of writes past the cap. */
static void ch_set_opts(struct ch_conn *r, enum ch_ctx ctx) {
    crest_conn_opts_t o;
    int rc = crest_conn_get_opts(r->c, &o);
    CH_CHECK(rc == 0, "r%d: get_opts: %d", r->id, rc);
    bool asked = r->closed || r->close_called || r->abort_called;
    int st = crest_conn_state(r->c);
    if (ch_pick(2)) {
        o.high_water = ch_pick(2) ? 1000 : 1 + ch_pick(8000);
        o.low_water = o.high_water / 2;
        o.max_output = o.high_water + ch_pick(20000);
        o.output_policy = ch_pick(2) ? CREST_OUTPUT_REFUSE : CREST_OUTPUT_CLOSE;
    }
    if (ch_chance(3))
        o.sndbuf = 4096;
    if (ch_chance(3))
        o.idle_timeout_ms = ch_pick(2) ? 0 : 30 + ch_pick(50);
    if (ch_chance(4))
        o.write_timeout_ms = ch_pick(2) ? 0 : 40;
    if (ch_chance(4))
        o.read_timeout_ms = ch_pick(2) ? 0 : 30;
    if (ch_chance(4))
        o.input_idle_timeout_ms = ch_pick(2) ? 0 : 40;
    CH_API("crest_conn_set_opts", rc = crest_conn_set_opts(r->c, &o));
    ch_trace("r%d %s set_opts (high %zu, cap %zu %s, idle %u): %d", r->id, ch_ctx_names[ctx],
             o.high_water, o.max_output, o.output_policy ? "refuse" : "close", o.idle_timeout_ms,
             rc);
    /* conn.h: refused once a close was requested, also one asked for
     * while CONNECTING (the state stays CONNECTING until the connect
     * completes), as flush_notify and the writes are. */
    if (asked)
        CH_CHECK(rc == -ENOTCONN, "r%d: set_opts after a close request: %d", r->id, rc);
    else
        CH_CHECK(rc == 0 || (rc == -ENOTCONN && st == CREST_CONN_CLOSING),
                 "r%d: set_opts in state %d: %d", r->id, st, rc);
    if (rc != 0)
        return;
    r->max_output = o.max_output;
    r->policy = (int)o.output_policy;
    r->high_water = o.high_water;
    if (ch_pick(2))
        return;
    for (int i = 0; i < 40 && !r->close_called && !r->abort_called && !r->closed; i++) {
        uint64_t before = r->tx_off, refused = G.cap_refused;
        ch_write(r, ch_size(), ch_pick(3), ctx);
        if (G.cap_refused != refused || r->tx_off == before)
            break;
    }
}

/* crest_loop_foreach_conn(): every connection the model holds open is
 * visited once (the PROXY ones still waiting for their header are not
 * the handler's); the callback closes, aborts and writes. */
static int ch_foreach_cb(crest_conn_t *c, void *arg) {
    unsigned stop_at = *(unsigned *)arg;
    struct ch_conn *r = crest_conn_get_data(c);
    CH_CHECK(r != NULL && r->c == c, "foreach_conn: a connection the handler never saw");
    CH_CHECK(!r->closed, "r%d: foreach_conn visits it after on_close", r->id);
    CH_CHECK(crest_conn_state(c) != CREST_CONN_CLOSED, "r%d: foreach_conn visits it CLOSED",
             r->id);
    G.fe_visits[r->id]++;
    switch (ch_pick(10)) {
    case 0: ch_close(r, CTX_FOREACH); break;
    case 1: ch_abort(r, CTX_FOREACH); break;
    case 2: case 3: ch_write(r, ch_size(), ch_pick(3), CTX_FOREACH); break;
    case 4: {
        struct ch_conn *o = ch_target(NULL);
        if (o && !o->closed)
            ch_close(o, CTX_FOREACH);
        break;
    }
    default: break;
    }
    unsigned total = 0;
    for (int i = 0; i < G.ncs; i++)
        total += G.fe_visits[i];
    return total == stop_at ? 7 : 0;
}

static void ch_foreach(enum ch_ctx ctx) {
    if (G.in_foreach)
        return;
    memset(G.fe_visits, 0, sizeof G.fe_visits);
    bool was_open[CH_MAX_CONNS];
    for (int i = 0; i < G.ncs; i++)
        was_open[i] = G.cs[i].c && !G.cs[i].closed;
    unsigned stop_at = ch_chance(4) ? 1 + ch_pick(4) : 0;
    int ncs = G.ncs, rc;
    G.in_foreach = true;
    G.foreach_runs++;
    CH_API("crest_loop_foreach_conn",
           rc = crest_loop_foreach_conn(G.loop, ch_foreach_cb, &stop_at));
    G.in_foreach = false;
    ch_trace("%s foreach_conn (stop at %u): %d", ch_ctx_names[ctx], stop_at, rc);
    CH_CHECK(rc == 0 || (rc == 7 && stop_at), "foreach_conn: %d", rc);
    for (int i = 0; i < ncs; i++) {
        CH_CHECK(G.fe_visits[i] <= 1, "r%d: foreach_conn visited it %u times", i, G.fe_visits[i]);
        if (rc == 0 && was_open[i])
            CH_CHECK(G.fe_visits[i] == 1, "r%d: open (state %d), foreach_conn missed it", i,
                     crest_conn_state(G.cs[i].c));
    }
}

/* crest_conn_set_handler() / crest_conn_upgrade(): another variant of the
 * same framing (on_eof on or off; on_high_water/on_drain kept, so the
 * model's alternation holds), or a handler lacking the framing's
 * callback (-EINVAL, nothing changes). */
static void ch_set_handler(struct ch_conn *r, enum ch_ctx ctx) {
    if (r->role != CH_SERVER)
        return;
    bool asked = r->closed || r->close_called || r->abort_called;
    int st = crest_conn_state(r->c), rc;
    bool bad = ch_chance(4), upgrade = ch_pick(2);
    unsigned v = (r->has_hw ? 2u : 0u) | ch_pick(2);
    bool framed = r->kind != CH_RAW && !r->raw_parse;
    const crest_handler_t *h = &ch_server_handlers[bad ? !framed : framed][v];
    if (upgrade)
        CH_API("crest_conn_upgrade", rc = crest_conn_upgrade(r->c, h, r->l, NULL));
    else
        CH_API("crest_conn_set_handler", rc = crest_conn_set_handler(r->c, h, r->l));
    ch_trace("r%d %s %s variant %u%s: %d", r->id, ch_ctx_names[ctx],
             upgrade ? "upgrade" : "set_handler", v, bad ? " (wrong framing)" : "", rc);
    if (asked || st == CREST_CONN_CLOSING || st == CREST_CONN_CLOSED)
        CH_CHECK(rc == -ENOTCONN || (bad && rc == -EINVAL),
                 "r%d: set_handler after a close: %d", r->id, rc);
    else if (bad)
        CH_CHECK(rc == -EINVAL, "r%d: set_handler with the wrong framing's handler: %d", r->id, rc);
    else
        CH_CHECK(rc == 0, "r%d: set_handler in state %d: %d", r->id, st, rc);
    if (rc == 0)
        r->has_eof = v & 1;
    CH_CHECK(crest_conn_handler_ctx(r->c) == (void *)r->l, "r%d: handler ctx changed", r->id);
}

/* A framing change: a server of a LINE or LENGTH stream upgrades to RAW
 * (crest_conn_upgrade with framing RAW and the RAW handler).  From the
 * next byte after the last message delivered, the stream's bytes (frame
 * headers, line ends and a partial message already buffered included)
 * come to on_data as they are, and the echo goes on byte for byte. */
static void ch_reframe(struct ch_conn *r, enum ch_ctx ctx) {
    if (r->role != CH_SERVER || r->kind == CH_RAW || r->raw_parse)
        return;
    bool asked = r->closed || r->close_called || r->abort_called;
    int st = crest_conn_state(r->c), rc;
    crest_conn_opts_t o;
    CH_CHECK(crest_conn_get_opts(r->c, &o) == 0, "r%d: get_opts", r->id);
    o.framing.kind = CREST_FRAMING_RAW;
    unsigned v = (r->has_hw ? 2u : 0u) | (r->has_eof ? 1u : 0u);
    CH_API("crest_conn_upgrade",
           rc = crest_conn_upgrade(r->c, &ch_server_handlers[0][v], r->l, &o));
    ch_trace("r%d %s upgrade to RAW at %llu (message %llu): %d", r->id, ch_ctx_names[ctx],
             (unsigned long long)r->rx_off, (unsigned long long)r->rx_msg, rc);
    if (asked || st == CREST_CONN_CLOSING || st == CREST_CONN_CLOSED)
        CH_CHECK(rc == -ENOTCONN, "r%d: upgrade after a close: %d", r->id, rc);
    else
        CH_CHECK(rc == 0, "r%d: upgrade to RAW in state %d: %d", r->id, st, rc);
    if (rc != 0)
        return;
    r->raw_parse = true;
    G.reframes++;
    r->rcur = r->tcur = (struct ch_cursor){0, 0};
}

/* crest_loop_shutdown(): listeners closed now, every connection asked to
 * close (SHUTDOWN, or the reason already asked for); done runs once, from
 * the loop, after every on_close; until then connects and listens say
 * -ESHUTDOWN. */
static void ch_shutdown_done(crest_loop_t *loop, void *arg) {
    CH_CHECK(loop == G.loop && arg == &G, "shutdown done: wrong arguments");
    ch_cb_enter("shutdown_done", NULL);
    CH_CHECK(G.shutting, "shutdown done without a shutdown under way");
    for (int i = 0; i < G.ncs; i++)
        CH_CHECK(G.cs[i].closed, "shutdown done before r%d's on_close", i);
    G.shutting = false;
    G.shut_done++;
    ch_trace("shutdown done");
    ch_cb_leave();
}

static void ch_loop_shutdown(enum ch_ctx ctx) {
    bool was = G.shutting;
    for (int i = 0; i < G.ncs; i++) {
        struct ch_conn *r = &G.cs[i];
        if (was || !ch_live(r) || r->closed)
            continue;
        int st = crest_conn_state(r->c);
        if (st != CREST_CONN_CONNECTING)
            ch_expect(r, st, CREST_CLOSE_SHUTDOWN);
        if (st == CREST_CONN_CONNECTING && (r->tx_off || r->shutdown_called))
            r->closed_connecting = true;
        r->close_called = true;
    }
    int rc;
    CH_API("crest_loop_shutdown",
           rc = crest_loop_shutdown(G.loop, 10 + ch_pick(200), ch_shutdown_done, &G));
    ch_trace("%s loop_shutdown: %d", ch_ctx_names[ctx], rc);
    if (G.destroying) {
        CH_CHECK(rc == -ESHUTDOWN, "crest_loop_shutdown during destroy: %d", rc);
        return;
    }
    if (was) {
        CH_CHECK(rc == -EALREADY, "crest_loop_shutdown twice: %d", rc);
        return;
    }
    CH_CHECK(rc == 0, "crest_loop_shutdown: %d", rc);
    G.shutting = true;
    G.shut_asked++;
    for (int i = 0; i < G.nls; i++) {
        G.ls[i].open = false; /* closed by the call: the pointers are gone */
        G.ls[i].l = NULL;
    }
}

/* ---- listeners and connects ------------------------------------------------------ */

static void ch_set_framing(crest_conn_opts_t *co, int kind) {
    if (kind == CH_LINE) {
        co->framing.kind = CREST_FRAMING_LINE;
        co->framing.max_message = ch_pick(2) ? 0 : 300;
    } else if (kind == CH_LEN) {
        co->framing.kind = CREST_FRAMING_LENGTH;
        co->framing.header_bytes = 2;
        co->framing.max_message = 1000;
    }
}

static void ch_listen(enum ch_ctx ctx) {
    int open = 0;
    for (int i = 0; i < G.nls; i++)
        open += G.ls[i].open;
    if (open >= 3 || G.nls >= CH_MAX_LISTENERS)
        return;
    if (G.destroying && ch_excluded(CH_BUG_DESTROY_RECONNECT))
        return;
    struct ch_listener *L = &G.ls[G.nls];
    memset(L, 0, sizeof *L);
    L->id = G.nls;
    unsigned v = ch_pick(4);
    L->has_eof = v & 1;
    L->has_hw = v & 2;
    static const int kinds[] = {CH_RAW, CH_RAW, CH_LINE, CH_LEN};
    L->kind = kinds[ch_pick(4)];
    crest_listen_opts_t o;
    crest_listen_opts_init(&o);
    crest_conn_opts_t *co = &o.conn;
    ch_set_framing(co, L->kind);
    static const size_t budgets[] = {64 * 1024, 1, 100, 4096};
    static const size_t highs[] = {1024 * 1024, 4096, 1, 100000};
    co->read_budget = budgets[ch_pick(4)];
    co->high_water = highs[ch_pick(4)];
    co->low_water = ch_pick(2) ? co->high_water / 2 : 0;
    co->keep_reading = ch_chance(4);
    L->keep_reading = co->keep_reading;
    co->max_input = ch_chance(4) ? 1000 : 64 * 1024;
    if (ch_chance(8))
        co->idle_timeout_ms = 30;
    if (ch_chance(8))
        co->write_timeout_ms = 40;
    if (ch_chance(8))
        co->read_timeout_ms = 30;
    if (ch_chance(4))
        co->sndbuf = 4096;
    if (ch_chance(4)) { /* a cap a burst can reach */
        co->max_output = co->high_water + ch_pick(30000);
        co->output_policy = ch_pick(2) ? CREST_OUTPUT_REFUSE : CREST_OUTPUT_CLOSE;
    }
    L->max_output = co->max_output;
    L->policy = (int)co->output_policy;
    switch (ch_pick(4)) { /* the lingering close (conn.h): default, off, short */
    case 2: co->linger_ms = 0; break;
    case 3: co->linger_ms = 20; break;
    default: break;
    }
    o.accept_batch = ch_pick(2) ? 64 : 1 + ch_pick(2);
    if (ch_chance(8))
        o.max_conns = 2;
    if (ch_chance(6)) {
        L->proxy = true;
        G.any_proxy = true;
        o.proxy_protocol = CREST_PROXY_V1;
    }
    int rc;
    CH_API("crest_listen", rc = crest_listen(G.loop, "127.0.0.1:0", &o,
                                             &ch_server_handlers[L->kind != CH_RAW][v], L,
                                             &L->l));
    if (G.destroying || G.shutting) {
        CH_CHECK(rc == -ESHUTDOWN, "crest_listen during crest_loop_destroy/shutdown: %d", rc);
        ch_trace("%s listen during destroy: %d", ch_ctx_names[ctx], rc);
        return;
    }
    CH_CHECK(rc == 0, "crest_listen: %d", rc);
    L->port = crest_listener_port(L->l);
    CH_CHECK(L->port > 0, "listener port %d", L->port);
    L->open = true;
    G.nls++;
    ch_trace("%s listen l%d port %d (handler %u, framing %d, budget %zu, high %zu, "
             "max_conns %u)", ch_ctx_names[ctx], L->id, L->port, v, L->kind, co->read_budget,
             co->high_water, o.max_conns);
}

static struct ch_listener *ch_open_listener(bool no_proxy) {
    int idx[CH_MAX_LISTENERS], n = 0;
    for (int i = 0; i < G.nls; i++)
        if (G.ls[i].open && !(no_proxy && G.ls[i].proxy))
            idx[n++] = i;
    return n ? &G.ls[idx[ch_pick((uint32_t)n)]] : NULL;
}

/* Would closing L free it under its own accept loop?  A callback on the
 * stack belongs to a connection L accepted in this iteration. */
static bool ch_in_accept(const struct ch_listener *L) {
    for (int i = 0; i < G.depth; i++) {
        const struct ch_conn *r = G.stack[i];
        if (r && r->role == CH_SERVER && r->l == L && r->opened_iter == G.iter)
            return true;
    }
    return false;
}

static void ch_listener_close(enum ch_ctx ctx) {
    struct ch_listener *L = ch_open_listener(false);
    if (!L)
        return;
    if (ch_excluded(CH_BUG_LISTENER_CLOSE_IN_ACCEPT) && ch_in_accept(L))
        return;
    crest_listener_stats_t ls;
    crest_listener_get_stats(L->l, &ls);
    ch_trace("%s listener_close l%d (accepted %llu)", ch_ctx_names[ctx], L->id,
             (unsigned long long)ls.accepted);
    CH_API("crest_listener_close", crest_listener_close(L->l));
    L->open = false;
    L->l = NULL;
}

static void ch_connect(enum ch_ctx ctx) {
    if (G.nout >= CH_MAX_OUT || G.ncs >= CH_MAX_CONNS)
        return;
    if (G.destroying && ch_excluded(CH_BUG_DESTROY_RECONNECT))
        return;
    /* (A PROXY header is the client's to send: outbound ones dial others.) */
    struct ch_listener *L = ch_chance(6) ? NULL : ch_open_listener(true);
    int port = L ? L->port : G.dead_port;
    crest_conn_opts_t o;
    crest_conn_opts_init(&o);
    o.keep_reading = true; /* both ends are crest's: one of them must read on */
    static const size_t budgets[] = {64 * 1024, 7, 4096};
    o.read_budget = budgets[ch_pick(3)];
    o.high_water = ch_pick(2) ? 1024 * 1024 : 2000;
    o.low_water = o.high_water / 4;
    if (ch_chance(16))
        o.connect_timeout_ms = 1;
    if (ch_chance(4)) {
        o.max_output = o.high_water + ch_pick(30000);
        o.output_policy = ch_pick(2) ? CREST_OUTPUT_REFUSE : CREST_OUTPUT_CLOSE;
    }
    unsigned v = ch_pick(2);
    int kind = L ? L->kind : CH_RAW;
    ch_set_framing(&o, kind);
    struct ch_conn *r = &G.cs[G.ncs];
    memset(r, 0, sizeof *r);
    r->id = G.ncs;
    r->role = CH_OUT;
    r->kind = kind;
    r->l = L;
    r->dial_port = port;
    r->has_eof = v == 1;
    r->has_hw = v == 0;
    r->keep_reading = true;
    r->high_water = o.high_water;
    r->expect_reason = -1;
    r->salt = ch_mix(G.o.seed * 7919 + 1000 + (uint64_t)r->id);
    r->tx_cap = (uint64_t)(200 * 1024) / G.o.scale;
    r->max_output = o.max_output;
    r->policy = (int)o.output_policy;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    crest_conn_t *c = NULL;
    int rc;
    CH_API("crest_connect",
           rc = crest_connect(G.loop, addr, &o, &ch_out_handlers[kind != CH_RAW][v], NULL, &c));
    if (G.destroying || G.shutting) {
        /* loop.h: nothing new starts while crest_loop_destroy() or
         * crest_loop_shutdown() runs. */
        CH_CHECK(rc == -ESHUTDOWN, "crest_connect during crest_loop_destroy/shutdown: %d", rc);
        ch_trace("%s connect during destroy: %d", ch_ctx_names[ctx], rc);
        return;
    }
    CH_CHECK(rc == 0, "crest_connect %s: %d", addr, rc);
    r->c = c;
    r->port = ch_local_port(crest_conn_fd(c));
    crest_conn_set_data(c, r);
    ch_take_id(r);
    G.ncs++;
    G.nout++;
    G.created++;
    ch_trace("%s connect r%d to %s (l%d) from port %d (handler %u, budget %zu, high %zu)",
             ch_ctx_names[ctx], r->id, addr, L ? L->id : -1, r->port, v, o.read_budget,
             o.high_water);
}

/* ---- timers and deferred callbacks ------------------------------------------------ */

static void ch_timer_cb(crest_timer_t *t, void *arg);

static void ch_timer_new(struct ch_timer *T) {
    int rc;
    CH_API("crest_timer_create", rc = crest_timer_create(G.loop, ch_timer_cb, T, &T->t));
    CH_CHECK(rc == 0, "crest_timer_create: %d", rc);
    T->armed = false;
    T->repeat = 0;
}

static void ch_timer_check(const struct ch_timer *T) {
    int n = (int)(T - G.tm);
    CH_CHECK(crest_timer_active(T->t) == T->armed, "timer %d: active %d, the model says %d", n,
             crest_timer_active(T->t), T->armed);
    uint64_t left = crest_timer_remaining(T->t);
    CH_CHECK(T->armed ? left != UINT64_MAX : left == UINT64_MAX, "timer %d: remaining %llu", n,
             (unsigned long long)left);
}

static void ch_timer_op(enum ch_ctx ctx) {
    struct ch_timer *T = &G.tm[ch_pick(CH_TIMERS)];
    int n = (int)(T - G.tm), rc = 0;
    static const uint64_t timeouts[] = {0, 1, 2, 5};
    static const uint64_t repeats[] = {0, 0, 1, 3};
    switch (ch_pick(7)) {
    case 0: {
        uint64_t to = timeouts[ch_pick(4)], rep = repeats[ch_pick(4)];
        if (to == 0 && ctx == CTX_TIMER && ch_excluded(CH_BUG_TIMER_ZERO_RESTART))
            to = 1;
        CH_API("crest_timer_start", rc = crest_timer_start(T->t, to, rep));
        CH_CHECK(rc == 0, "crest_timer_start: %d", rc);
        T->armed = true;
        T->repeat = rep;
        ch_trace("%s timer %d start %llu/%llu", ch_ctx_names[ctx], n, (unsigned long long)to,
                 (unsigned long long)rep);
        break;
    }
    case 1:
        CH_API("crest_timer_again", rc = crest_timer_again(T->t));
        CH_CHECK(rc == 0, "crest_timer_again: %d", rc);
        T->armed = T->repeat != 0;
        ch_trace("%s timer %d again", ch_ctx_names[ctx], n);
        break;
    case 2:
        CH_API("crest_timer_stop", crest_timer_stop(T->t));
        T->armed = false;
        T->zero_left = 0;
        ch_trace("%s timer %d stop", ch_ctx_names[ctx], n);
        break;
    case 3:
        T->repeat = repeats[ch_pick(4)];
        CH_API("crest_timer_set_repeat", crest_timer_set_repeat(T->t, T->repeat));
        ch_trace("%s timer %d repeat %llu", ch_ctx_names[ctx], n, (unsigned long long)T->repeat);
        break;
    case 5:
        /* Timeout 0, and the callback restarts it with 0 a few times: a
         * timer pass that fires what its callbacks start would fire the
         * whole streak at once (and loop forever on an endless one). */
        if (ctx == CTX_TIMER && ch_excluded(CH_BUG_TIMER_ZERO_RESTART))
            break;
        CH_API("crest_timer_start", rc = crest_timer_start(T->t, 0, 0));
        CH_CHECK(rc == 0, "crest_timer_start: %d", rc);
        T->armed = true;
        T->repeat = 0;
        T->zero_left = 1 + ch_pick(4);
        ch_trace("%s timer %d start 0, restarts with 0 %u times", ch_ctx_names[ctx], n,
                 T->zero_left);
        break;
    case 4:
        ch_trace("%s timer %d destroy and create", ch_ctx_names[ctx], n);
        CH_API("crest_timer_destroy", crest_timer_destroy(T->t));
        ch_timer_new(T);
        T->zero_left = 0;
        break;
    default:
        break;
    }
    ch_timer_check(T);
}

static void ch_timer_cb(crest_timer_t *t, void *arg) {
    struct ch_timer *T = arg;
    ch_cb_enter("timer", NULL);
    int n = (int)(T - G.tm);
    CH_CHECK(T->t == t, "timer %d: callback for a timer it no longer holds", n);
    CH_CHECK(T->armed, "timer %d fired while stopped", n);
    CH_CHECK(!T->in_cb, "timer %d: callback inside its own callback", n);
    if (T->repeat == 0)
        T->armed = false;
    T->fired++;
    if (T->fired_iter != G.iter) {
        T->fired_iter = G.iter;
        T->fired_in_iter = 0;
    }
    /* Each iteration has two timer passes (before and after the poll). */
    CH_CHECK(++T->fired_in_iter <= 2, "timer %d fired %u times in one iteration", n,
             T->fired_in_iter);
    ch_trace("timer %d fires (%u)", n, T->fired);
    ch_timer_check(T);
    T->in_cb = true;
    if (T->zero_left > 0 && !G.winding) {
        T->zero_left--;
        int rc;
        uint64_t to = ch_excluded(CH_BUG_TIMER_ZERO_RESTART) ? 1 : 0;
        CH_API("crest_timer_start", rc = crest_timer_start(t, to, 0));
        CH_CHECK(rc == 0, "crest_timer_start: %d", rc);
        T->armed = true;
        T->repeat = 0;
        ch_trace("timer %d restarts itself with %llu", n, (unsigned long long)to);
    }
    if (G.winding) {
        CH_API("crest_timer_stop", crest_timer_stop(t));
        T->armed = false;
    } else {
        ch_ops(CTX_TIMER, NULL, 4);
    }
    T->in_cb = false;
    ch_cb_leave();
}

static void ch_deferred(crest_loop_t *loop, void *arg) {
    uint64_t seq = (uint64_t)(uintptr_t)arg;
    ch_cb_enter("deferred", NULL);
    CH_CHECK(loop == G.loop, "deferred callback on the wrong loop");
    /* In crest_loop_destroy: queued ones run first, deferred before
     * posted, both before any connection goes (loop.h). */
    CH_CHECK(!G.destroying || (!G.destroy_posted_seen && !G.destroy_close_seen),
             "deferred callback in crest_loop_destroy after a posted one or an on_close");
    CH_CHECK(seq == G.defer_run, "deferred callback %llu ran, %llu was next",
             (unsigned long long)seq, (unsigned long long)G.defer_run);
    G.defer_run++;
    ch_trace("deferred %llu runs", (unsigned long long)seq);
    if (!G.winding && !G.destroying)
        ch_ops(CTX_DEFER, NULL, 4);
    ch_cb_leave();
}

static void ch_posted(crest_loop_t *loop, void *arg) {
    uint64_t seq = (uint64_t)(uintptr_t)arg;
    ch_cb_enter("posted", NULL);
    CH_CHECK(loop == G.loop, "posted callback on the wrong loop");
    CH_CHECK(!G.destroying || !G.destroy_close_seen,
             "posted callback in crest_loop_destroy after an on_close");
    if (G.destroying)
        G.destroy_posted_seen = true;
    CH_CHECK(seq == G.post_run, "posted callback %llu ran, %llu was next",
             (unsigned long long)seq, (unsigned long long)G.post_run);
    G.post_run++;
    ch_trace("posted %llu runs", (unsigned long long)seq);
    if (!G.winding && !G.destroying)
        ch_ops(CTX_DEFER, NULL, 2);
    ch_cb_leave();
}

/* crest_loop_post() from the loop's own thread: through the eventfd, in
 * the next poll. */
static void ch_post(enum ch_ctx ctx) {
    int rc;
    CH_API("crest_loop_post",
           rc = crest_loop_post(G.loop, ch_posted, (void *)(uintptr_t)G.post_posted));
    ch_trace("%s post %llu: %d", ch_ctx_names[ctx], (unsigned long long)G.post_posted, rc);
    if (G.destroying) {
        /* Refused once destroy has begun: it would never run (loop.h). */
        CH_CHECK(rc == -ESHUTDOWN, "crest_loop_post during destroy: %d", rc);
        return;
    }
    CH_CHECK(rc == 0, "crest_loop_post: %d", rc);
    G.post_posted++;
}

static void ch_defer(enum ch_ctx ctx) {
    int rc;
    CH_API("crest_loop_defer",
           rc = crest_loop_defer(G.loop, ch_deferred, (void *)(uintptr_t)G.defer_posted));
    if (G.destroying) {
        CH_CHECK(rc == -ESHUTDOWN, "crest_loop_defer during crest_loop_destroy: %d", rc);
        return;
    }
    CH_CHECK(rc == 0, "crest_loop_defer: %d", rc);
    ch_trace("%s defer %llu", ch_ctx_names[ctx], (unsigned long long)G.defer_posted);
    G.defer_posted++;
}

/* ---- the operation picker ------------------------------------------------------------ */

static struct ch_conn *ch_target(struct ch_conn *self) {
    if (self && ch_live(self) && ch_pick(2) == 0)
        return self;
    int idx[CH_MAX_CONNS], n = 0;
    for (int i = 0; i < G.ncs; i++)
        if (ch_live(&G.cs[i]))
            idx[n++] = i;
    return n ? &G.cs[idx[ch_pick((uint32_t)n)]] : NULL;
}

static void ch_close_all(enum ch_ctx ctx) {
    bool abort = ch_pick(2);
    if (abort && ch_excluded(CH_BUG_CLOSE_ALL_IN_LINGERING_ON_CLOSE))
        for (int i = 0; i < G.ncs; i++)
            if (G.cs[i].in_close)
                return;
    for (int i = 0; i < G.ncs; i++) {
        struct ch_conn *r = &G.cs[i];
        if (!abort && !r->closed && ch_live(r) && r->l && ch_excluded(CH_BUG_CLOSE_CONNECTING) &&
            crest_conn_state(r->c) == CREST_CONN_CONNECTING)
            return;
    }
    for (int i = 0; i < G.ncs; i++) {
        struct ch_conn *r = &G.cs[i];
        if (!ch_live(r) || r->closed)
            continue;
        int st = crest_conn_state(r->c);
        if (st != CREST_CONN_CONNECTING || abort)
            ch_expect(r, st, CREST_CLOSE_SHUTDOWN);
        if (st == CREST_CONN_CONNECTING && !abort && (r->tx_off || r->shutdown_called))
            r->closed_connecting = true;
        r->close_called = true;
        if (abort)
            r->abort_called = true;
    }
    ch_trace("%s close_all(%s)", ch_ctx_names[ctx], abort ? "abort" : "graceful");
    CH_API("crest_loop_close_all", crest_loop_close_all(G.loop, abort));
}

/* From a callback, the loop's own entry points refuse (loop.h): -EBUSY.
 * Also from a callback run inside an API call made outside the loop
 * (on_drain inside crest_conn_uncork called from main). */
static void ch_nested_loop_call(enum ch_ctx ctx) {
    bool from_cb = G.in_loop || (G.depth > 0 && !ch_excluded(CH_BUG_LOOP_CALL_IN_API_CALLBACK));
    if (!from_cb || ch_excluded(CH_BUG_NESTED_RUN_ONCE))
        return;
    int rc, which = (int)ch_pick(3);
    const char *saved = G.api;
    G.api = NULL; /* callbacks would run inside these */
    if (which == 0)
        rc = crest_loop_run_once(G.loop, 0);
    else if (which == 1)
        rc = crest_loop_run(G.loop);
    else
        rc = crest_loop_destroy(G.loop);
    G.api = saved;
    const char *name = which == 0 ? "run_once" : which == 1 ? "run" : "destroy";
    ch_trace("%s nested %s: %d", ch_ctx_names[ctx], name, rc);
    CH_CHECK(rc == -EBUSY, "crest_loop_%s from a callback: %d", name, rc);
}

static void ch_op(enum ch_ctx ctx, struct ch_conn *self) {
    if (G.depth > 8)
        return; /* deep enough */
    G.ops++;
    bool in_destroy = G.destroying;
    unsigned k = ch_pick(64);
    if (k == 0 || k >= 62)
        return;
    if (k >= 56) {
        if (k == 56) {
            ch_foreach(ctx);
            return;
        }
        struct ch_conn *r = ch_target(self);
        if (!r)
            return;
        if (k <= 58)
            ch_flush_notify(r, ctx);
        else if (k <= 59)
            ch_set_opts(r, ctx);
        else if (k == 60)
            ch_pick(2) ? ch_set_handler(r, ctx) : ch_reframe(r, ctx);
        else if (ch_chance(24) && !in_destroy)
            ch_loop_shutdown(ctx);
        else
            ch_query(r);
        return;
    }
    if (k >= 37 && k <= 55) {
        /* not about one connection */
        if (k <= 42) {
            if (!in_destroy)
                ch_timer_op(ctx);
        } else if (k <= 44) {
            ch_defer(ctx);
        } else if (k == 45) {
            ch_post(ctx);
        } else if (k == 46) {
            if (!in_destroy)
                ch_listener_close(ctx);
        } else if (k == 47) {
            ch_listen(ctx);
        } else if (k <= 50) {
            ch_connect(ctx);
        } else if (k == 51) {
            ch_nested_loop_call(ctx);
        } else if (k == 52) {
            if (ch_chance(8))
                ch_close_all(ctx);
        }
        return;
    }
    struct ch_conn *r = ch_target(self);
    if (!r)
        return;
    if (k <= 13) {
        ch_write(r, ch_size(), ch_pick(3), ctx);
    } else if (k <= 15) {
        ch_trace("r%d %s cork", r->id, ch_ctx_names[ctx]);
        CH_API("crest_conn_cork", crest_conn_cork(r->c));
        r->corked = true;
    } else if (k <= 18) {
        int rc;
        CH_API("crest_conn_uncork", rc = crest_conn_uncork(r->c));
        ch_trace("r%d %s uncork: %d", r->id, ch_ctx_names[ctx], rc);
        CH_CHECK(rc == 0 || rc == -EPIPE || rc == -ECONNRESET || rc == -ENOTCONN,
                 "r%d: uncork returned %d", r->id, rc);
        r->corked = false;
    } else if (k <= 21) {
        ch_trace("r%d %s pause", r->id, ch_ctx_names[ctx]);
        CH_API("crest_conn_pause", crest_conn_pause(r->c));
        r->paused = true;
    } else if (k <= 25) {
        if (r->closed && ch_excluded(CH_BUG_RESUME_AFTER_CLOSE))
            return;
        ch_trace("r%d %s resume", r->id, ch_ctx_names[ctx]);
        CH_API("crest_conn_resume", crest_conn_resume(r->c));
        r->paused = false;
    } else if (k <= 28) {
        ch_close(r, ctx);
    } else if (k == 29) {
        ch_abort(r, ctx);
    } else if (k == 30) {
        ch_fail_conn(r, ctx);
    } else if (k <= 32) {
        ch_shutdown(r, ctx);
    } else if (k == 33) {
        ch_sockopt(r, ctx);
    } else {
        ch_query(r);
    }
}

static void ch_ops(enum ch_ctx ctx, struct ch_conn *self, unsigned max) {
    unsigned n = ch_pick(max + 1);
    for (unsigned i = 0; i < n; i++)
        ch_op(ctx, self);
}

/* ---- raw clients ---------------------------------------------------------------------- */

static void ch_client_new(void) {
    if (G.ncl >= CH_MAX_CLIENTS)
        return;
    struct ch_listener *L = ch_chance(8) ? NULL : ch_open_listener(false);
    struct ch_client *cl = &G.cl[G.ncl];
    memset(cl, 0, sizeof *cl);
    cl->id = G.ncl;
    cl->l = L;
    cl->dial_port = L ? L->port : G.dead_port;
    cl->kind = L ? L->kind : CH_RAW;
    cl->salt = ch_mix(G.o.seed * 7919 + (uint64_t)cl->id);
    cl->tx_cap = (uint64_t)(300 * 1024) / G.o.scale;
    cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CH_CHECK(cl->fd >= 0, "socket: %s", strerror(errno));
    if (ch_chance(3)) {
        int small = 2048;
        (void)setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        cl->small_rcvbuf = true;
    }
    int one = 1;
    (void)setsockopt(cl->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cl->dial_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(cl->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        cl->failed = true;
    }
    cl->port = ch_local_port(cl->fd);
    G.ncl++;
    ch_trace("client c%d to port %d (l%d) from %d%s", cl->id, cl->dial_port, L ? L->id : -1,
             cl->port, cl->small_rcvbuf ? ", small rcvbuf" : "");
    if (L && L->proxy && !cl->failed) {
        /* The header first, whole: the kernel completes a loopback
         * handshake without the loop, so waiting here is short. */
        struct pollfd pfd = {.fd = cl->fd, .events = POLLOUT};
        (void)poll(&pfd, 1, 1000);
        char hdr[128];
        cl->proxy = true;
        cl->src_port = 20000 + cl->id;
        cl->bad_header = ch_chance(8);
        int n = cl->bad_header ? snprintf(hdr, sizeof hdr, "PROXY TCP4 nonsense\r\n")
                               : snprintf(hdr, sizeof hdr, "PROXY TCP4 192.0.2.3 198.51.100.6 %d %d\r\n",
                                          cl->src_port, cl->dial_port);
        ssize_t sent = send(cl->fd, hdr, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        ch_trace("client c%d PROXY header%s: %zd", cl->id, cl->bad_header ? " (bad)" : "", sent);
        if (sent != n)
            cl->failed = true;
    }
}

static void ch_client_close(struct ch_client *cl, bool rst);
static void ch_client_send(struct ch_client *cl, size_t want, bool past_cap);

/* A client that resets before the listener has accepted it (maybe after
 * sending): the accepted socket is dead from the start. */
static void ch_client_hit_and_run(void) {
    ch_client_new();
    struct ch_client *cl = &G.cl[G.ncl - 1];
    if (ch_pick(2))
        ch_client_send(cl, ch_size(), false);
    ch_client_close(cl, true);
}

static void ch_client_close(struct ch_client *cl, bool rst) {
    if (rst) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        (void)setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(cl->fd);
    cl->fd = -1;
    cl->done = true;
    ch_trace("client c%d %s", cl->id, rst ? "reset" : "closed");
}

static void ch_client_send(struct ch_client *cl, size_t want, bool past_cap) {
    if (cl->shut_wr || cl->failed)
        return;
    uint64_t avail = cl->tx_off < cl->tx_cap ? cl->tx_cap - cl->tx_off : 0;
    size_t k = want > avail && !past_cap ? (size_t)avail : want;
    if (k == 0)
        return;
    uint8_t *p = malloc(k);
    CH_CHECK(p != NULL, "out of memory");
    struct ch_cursor cur = cl->tx_cur; /* the send may take less */
    ch_sfill(cl->salt, cl->kind, &cur, cl->tx_off, p, k);
    ssize_t n = send(cl->fd, p, k, MSG_NOSIGNAL | MSG_DONTWAIT);
    int e = errno;
    free(p);
    if (n > 0) {
        cl->tx_off += (uint64_t)n;
        if (cl->kind != CH_RAW)
            ch_seek(cl->salt, cl->kind, &cl->tx_cur, cl->tx_off);
    }
    else if (n < 0 && e != EAGAIN && e != EINTR)
        cl->failed = true;
    ch_trace("client c%d send %zu: %zd", cl->id, k, n);
}

/* Read up to max bytes (0: until the socket is drained) and check them. */
static void ch_client_recv(struct ch_client *cl, size_t max) {
    size_t total = 0;
    while (!cl->eof && !cl->failed && (max == 0 || total < max)) {
        size_t want = sizeof G.rbuf;
        if (max && max - total < want)
            want = max - total;
        ssize_t n = recv(cl->fd, G.rbuf, want, MSG_DONTWAIT);
        if (n > 0) {
            struct ch_conn *s = cl->srv;
            CH_CHECK(s != NULL, "client c%d: %zd bytes from a server never opened", cl->id, n);
            size_t bad = ch_smismatch(cl->salt, cl->kind, &cl->rx_cur, cl->rx_off, G.rbuf,
                                      (size_t)n);
            CH_CHECK(bad == (size_t)n, "client c%d: byte %llu of the echo is wrong", cl->id,
                     (unsigned long long)(cl->rx_off + bad));
            cl->rx_off += (uint64_t)n;
            CH_CHECK(cl->rx_off <= s->tx_off, "client c%d: %llu bytes received, r%d wrote %llu",
                     cl->id, (unsigned long long)cl->rx_off, s->id,
                     (unsigned long long)s->tx_off);
            total += (size_t)n;
            continue;
        }
        if (n == 0) {
            struct ch_conn *s = cl->srv;
            cl->eof = true;
            ch_trace("client c%d EOF after %llu bytes", cl->id, (unsigned long long)cl->rx_off);
            if (!s && cl->proxy && cl->rx_off == 0)
                break; /* refused or closed before its header was in */
            CH_CHECK(s != NULL, "client c%d: EOF from a server never opened", cl->id);
            bool final = s->closed || s->shutdown_called ||
                         (ch_live(s) && crest_conn_state(s->c) == CREST_CONN_CLOSING);
            CH_CHECK(final, "client c%d: EOF, but r%d was neither closed nor shut down", cl->id,
                     s->id);
            CH_CHECK(cl->rx_off == s->tx_off,
                     "client c%d: EOF after %llu bytes, r%d had %llu accepted (reason %s)",
                     cl->id, (unsigned long long)cl->rx_off, s->id,
                     (unsigned long long)s->tx_off,
                     s->closed ? crest_close_reason_key((crest_close_reason_t)s->reason)
                               : "still open");
            ch_totals.eof_complete++;
            break;
        }
        if (errno != EAGAIN && errno != EINTR) {
            cl->failed = true;
            ch_trace("client c%d recv: %s", cl->id, strerror(errno));
        }
        break;
    }
}

/* Half-close, at a message boundary: a framed client finishes the message
 * it is in first (false while the socket will not take the rest). */
static bool ch_client_shut(struct ch_client *cl) {
    if (cl->shut_wr)
        return true;
    if (cl->failed)
        return false;
    if (cl->kind != CH_RAW) {
        struct ch_cursor cur = cl->tx_cur;
        ch_seek(cl->salt, cl->kind, &cur, cl->tx_off);
        if (cur.start != cl->tx_off) {
            uint64_t end = cur.start + ch_flen(cl->kind, ch_plen(cl->salt, cl->kind, cur.k));
            ch_client_send(cl, (size_t)(end - cl->tx_off), true);
            if (cl->tx_off != end)
                return false;
        }
    }
    (void)shutdown(cl->fd, SHUT_WR);
    cl->shut_wr = true;
    ch_trace("client c%d shut_wr after %llu bytes", cl->id, (unsigned long long)cl->tx_off);
    return true;
}

static struct ch_client *ch_some_client(void) {
    int idx[CH_MAX_CLIENTS], n = 0;
    for (int i = 0; i < G.ncl; i++)
        if (!G.cl[i].done)
            idx[n++] = i;
    return n ? &G.cl[idx[ch_pick((uint32_t)n)]] : NULL;
}

static void ch_client_op(void) {
    unsigned k = ch_pick(24);
    if (k == 0)
        return;
    if (k == 1) {
        ch_client_new();
        return;
    }
    if (k == 2 && ch_chance(3) && G.ncl < CH_MAX_CLIENTS) {
        ch_client_hit_and_run();
        return;
    }
    struct ch_client *cl = ch_some_client();
    if (!cl)
        return;
    if (k <= 8) {
        ch_client_send(cl, ch_size(), false);
    } else if (k <= 12) {
        ch_client_recv(cl, cl->small_rcvbuf ? 1 + ch_pick(512) : 1 + ch_pick(8192));
    } else if (k <= 18) {
        ch_client_recv(cl, 0);
    } else if (k == 19) {
        (void)ch_client_shut(cl);
    } else if (k == 20) {
        if (ch_chance(3))
            ch_client_close(cl, true);
    } else if (k == 21) {
        if (cl->eof || cl->failed || ch_chance(4))
            ch_client_close(cl, false);
    }
}

/* ---- after every iteration -------------------------------------------------------------- */

static void ch_check_iteration(void) {
    for (int i = 0; i < G.ncs; i++)
        if (G.cs[i].closed)
            G.cs[i].gone = true; /* freed at the end of the iteration */
    crest_conn_stats_t st;
    crest_loop_conn_stats(G.loop, &st);
    /* Connections waiting for a PROXY header are open to crest, not yet to
     * the model. */
    CH_CHECK(G.any_proxy ? st.opened >= G.created : st.opened == G.created, "crest counts %llu connections opened, the model %llu",
             (unsigned long long)st.opened, (unsigned long long)G.created);
    CH_CHECK(st.closed == G.closed, "crest counts %llu connections closed, the model %llu",
             (unsigned long long)st.closed, (unsigned long long)G.closed);
    CH_CHECK(st.active - (st.opened - G.created) == G.created - G.closed,
             "crest counts %llu active, the model %llu", (unsigned long long)st.active,
             (unsigned long long)(G.created - G.closed));
    for (int i = 0; i < G.ncs; i++) {
        struct ch_conn *r = &G.cs[i];
        if (!r->closed)
            ch_query(r);
    }
    for (int i = 0; i < G.nls; i++) {
        struct ch_listener *L = &G.ls[i];
        if (!L->open)
            continue;
        crest_listener_stats_t ls;
        crest_listener_get_stats(L->l, &ls);
        uint64_t active = 0;
        for (int j = 0; j < G.ncs; j++)
            active += G.cs[j].role == CH_SERVER && G.cs[j].l == L && !G.cs[j].closed;
        uint64_t waiting = ls.accepted - L->accepted - L->unopened; /* for a header */
        CH_CHECK(ls.accepted >= (uint64_t)L->accepted + L->unopened &&
                     (L->proxy || waiting == 0),
                 "l%d: %llu accepted, the model %u (and %u closed unopened)", L->id,
                 (unsigned long long)ls.accepted, L->accepted, L->unopened);
        CH_CHECK(ls.active == active + waiting, "l%d: %llu active, the model %llu", L->id,
                 (unsigned long long)ls.active, (unsigned long long)active);
    }
    for (int i = 0; i < CH_TIMERS; i++)
        ch_timer_check(&G.tm[i]);
    CH_CHECK(G.defer_run >= G.defer_due, "deferred callbacks: %llu ran, %llu were due",
             (unsigned long long)G.defer_run, (unsigned long long)G.defer_due);
    CH_CHECK(G.post_run >= G.post_due, "posted callbacks: %llu ran, %llu were due",
             (unsigned long long)G.post_run, (unsigned long long)G.post_due);
    crest_buf_stats_t bs;
    crest_loop_buf_stats(G.loop, &bs);
    CH_CHECK(bs.in_use <= bs.allocated && bs.in_use <= bs.peak, "buffers: in_use %llu, "
             "allocated %llu, peak %llu", (unsigned long long)bs.in_use,
             (unsigned long long)bs.allocated, (unsigned long long)bs.peak);
}

static void ch_stop_cb(crest_loop_t *loop, void *arg) {
    (void)arg;
    ch_cb_enter("deferred", NULL);
    crest_loop_stop(loop);
    ch_cb_leave();
}

static void ch_iterate(int timeout_ms) {
    G.iter++;
    G.in_loop = true;
    G.defer_due = G.defer_posted; /* what was deferred before runs in this one */
    G.post_due = G.post_posted;   /* posted: the eventfd is ready for this poll */
    int rc;
    if (timeout_ms == 0 && !G.winding && ch_chance(16)) {
        /* crest_loop_run(), stopped by a callback deferred first: one
         * iteration (it runs before the poll, which then does not block). */
        rc = crest_loop_defer(G.loop, ch_stop_cb, NULL);
        CH_CHECK(rc == 0, "crest_loop_defer: %d", rc);
        rc = crest_loop_run(G.loop);
        CH_CHECK(rc == 0, "crest_loop_run: %d", rc);
    } else {
        rc = crest_loop_run_once(G.loop, timeout_ms);
        CH_CHECK(rc >= 0, "crest_loop_run_once: %d", rc);
    }
    G.in_loop = false;
    ch_check_iteration();
}

/* ---- winding down ------------------------------------------------------------------------- */

static bool ch_all_done(void) {
    for (int i = 0; i < G.ncs; i++)
        if (!G.cs[i].closed)
            return false;
    for (int i = 0; i < G.ncl; i++)
        if (!G.cl[i].done)
            return false;
    return true;
}

static void ch_state_dump(void) {
    for (int i = 0; i < G.ncs; i++) {
        struct ch_conn *r = &G.cs[i];
        if (r->closed)
            continue;
        fprintf(stderr,
                "open r%d role %d state %d out %zu tx %llu rx %llu offered %llu eof %d "
                "close %d abort %d shut %d paused %d corked %d hw %d peer %s%d\n",
                r->id, r->role, crest_conn_state(r->c), crest_conn_output_bytes(r->c),
                (unsigned long long)r->tx_off, (unsigned long long)r->rx_off,
                (unsigned long long)r->offered_hi, r->eof, r->close_called, r->abort_called,
                r->shutdown_called, r->paused, r->corked, r->hw,
                r->peer_cli ? "c" : "r", r->peer_cli ? r->peer_cli->id : r->peer ? r->peer->id : -1);
    }
    for (int i = 0; i < G.ncl; i++) {
        struct ch_client *cl = &G.cl[i];
        if (!cl->done)
            fprintf(stderr, "client c%d tx %llu rx %llu shut %d eof %d failed %d srv r%d\n",
                    cl->id, (unsigned long long)cl->tx_off, (unsigned long long)cl->rx_off,
                    cl->shut_wr, cl->eof, cl->failed, cl->srv ? cl->srv->id : -1);
    }
}

/* Stop making trouble and let everything end cleanly: clients half-close
 * and read to the end, paused connections resume, corked ones uncork,
 * servers that saw EOF echo the rest and close, outbound connections
 * shut down and close at EOF. */
static void ch_wind_down(void) {
    G.winding = true;
    for (int i = 0; i < CH_TIMERS; i++) {
        crest_timer_stop(G.tm[i].t);
        G.tm[i].armed = false;
    }
    for (int round = 0; round < 3000; round++) {
        for (int i = 0; i < G.ncs; i++) {
            struct ch_conn *r = &G.cs[i];
            if (r->closed)
                continue;
            if (r->paused) {
                CH_API("crest_conn_resume", crest_conn_resume(r->c));
                r->paused = false;
            }
            if (r->corked) {
                int rc;
                CH_API("crest_conn_uncork", rc = crest_conn_uncork(r->c));
                (void)rc;
                r->corked = false;
            }
            if (r->close_called || r->abort_called)
                continue;
            if (r->eof) {
                if (r->role == CH_SERVER)
                    ch_write(r, SIZE_MAX, 0, CTX_OUTSIDE);
                ch_close(r, CTX_OUTSIDE);
            } else if (r->role == CH_OUT && !r->shutdown_called) {
                if (crest_conn_state(r->c) == CREST_CONN_CONNECTING &&
                    ch_excluded(CH_BUG_CLOSE_CONNECTING))
                    continue;
                ch_shutdown(r, CTX_OUTSIDE);
            }
        }
        for (int i = 0; i < G.ncl; i++) {
            struct ch_client *cl = &G.cl[i];
            if (cl->done)
                continue;
            (void)ch_client_shut(cl);
            ch_client_recv(cl, 0);
            if (cl->eof || cl->failed)
                ch_client_close(cl, false);
        }
        /* At least one iteration: callbacks deferred in the last step run. */
        if (round > 0 && ch_all_done() && G.defer_run == G.defer_posted &&
            G.post_run == G.post_posted)
            return;
        if (round == 400 && getenv("CREST_CHAOS_SLOW")) {
            ch_dump();
            ch_state_dump();
        }
        ch_iterate(round < 20 ? 0 : 5);
    }
    ch_state_dump();
    ch_fail(__FILE__, __LINE__, "winding down did not finish");
}

/* ---- a run ---------------------------------------------------------------------------------- */

static unsigned ch_exclusions(void) {
    unsigned ex = CH_BUGS_DEFAULT;
    const char *inc = getenv("CREST_CHAOS_INCLUDE");
    if (!inc)
        return ex;
    if (strcmp(inc, "all") == 0)
        return 0;
    for (int i = 0; i < CH_BUG_COUNT; i++)
        if (strstr(inc, ch_bug_names[i]))
            ex &= ~(1u << i);
    return ex;
}

static __attribute__((unused)) void ch_print_reentry(FILE *f) {
    for (int i = 0; i < ch_nreentry; i++)
        fprintf(f, "chaos: %s ran inside %s (%lu times)\n", ch_reentry[i].cb, ch_reentry[i].api,
                ch_reentry[i].n);
}

/* One run.  Returns after every check passed; a failed check aborts. */
static void chaos_run(const struct chaos_opts *o) {
    memset(&G, 0, sizeof G);
    G.o = *o;
    if (G.o.scale == 0)
        G.o.scale = 1;
    G.rng = ch_mix(o->seed);
    G.in = o->data;
    G.in_left = o->size;
    G.exclude = ch_exclusions();
    crest_log_set_handler(ch_log, NULL);

    uint64_t reg0 = crest_fd_open_count();
    int proc0 = ch_proc_fds();

    int rc = crest_loop_create(&G.loop);
    CH_CHECK(rc == 0, "crest_loop_create: %d", rc);
    G.dead_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CH_CHECK(G.dead_fd >= 0 && bind(G.dead_fd, (struct sockaddr *)&a, sizeof a) == 0,
             "the refusing port: %s", strerror(errno));
    G.dead_port = ch_local_port(G.dead_fd);
    for (int i = 0; i < CH_TIMERS; i++)
        ch_timer_new(&G.tm[i]);
    int nl = 1 + (int)ch_pick(2);
    for (int i = 0; i < nl; i++)
        ch_listen(CTX_OUTSIDE);
    for (int i = 0, n = 1 + (int)ch_pick(3); i < n; i++)
        ch_client_new();
    for (int i = 0, n = (int)ch_pick(3); i < n; i++)
        ch_connect(CTX_OUTSIDE);
    /* The ending: most runs wind down cleanly; some destroy the loop with
     * everything still open. */
    bool abrupt = ch_chance(5);

    for (G.step = 0; G.step < o->steps && !G.exhausted; G.step++) {
        if (ch_chance(24) && G.nls < CH_MAX_LISTENERS)
            ch_listen(CTX_OUTSIDE);
        for (unsigned i = 0, n = ch_pick(4); i < n; i++)
            ch_client_op();
        if (ch_pick(3) == 0)
            ch_op(CTX_OUTSIDE, NULL);
        ch_iterate(ch_chance(4) ? 1 : 0);
    }

    if (!abrupt) {
        ch_wind_down();
        crest_buf_stats_t bs;
        crest_loop_buf_stats(G.loop, &bs);
        CH_CHECK(bs.in_use == 0, "%llu buffer bytes still in use with every connection closed",
                 (unsigned long long)bs.in_use);
        crest_conn_stats_t st;
        crest_loop_conn_stats(G.loop, &st);
        CH_CHECK(st.active == 0 && st.opened == G.created,
                 "%llu connections active after winding down (%llu opened, the model %llu)",
                 (unsigned long long)st.active, (unsigned long long)st.opened,
                 (unsigned long long)G.created);
        CH_CHECK(G.defer_run == G.defer_posted, "%llu of %llu deferred callbacks ran",
                 (unsigned long long)G.defer_run, (unsigned long long)G.defer_posted);
        CH_CHECK(G.post_run == G.post_posted, "%llu of %llu posted callbacks ran",
                 (unsigned long long)G.post_run, (unsigned long long)G.post_posted);
    }
    /* Some listeners and armed timers are left for crest_loop_destroy. */
    for (int i = 0; i < G.nls; i++) {
        if (G.ls[i].open && ch_pick(2) == 0) {
            crest_listener_close(G.ls[i].l);
            G.ls[i].open = false;
        }
    }
    for (int i = 0; i < CH_TIMERS; i++) {
        if (!abrupt && ch_pick(2) == 0) {
            crest_timer_start(G.tm[i].t, 1000, 0);
            G.tm[i].armed = true;
        }
        if (!G.tm[i].armed) {
            crest_timer_destroy(G.tm[i].t);
            G.tm[i].t = NULL;
        }
    }
    for (int i = 0; i < G.nls; i++)
        G.ls[i].open = false; /* crest_loop_destroy closes the rest */
    G.destroying = true;
    G.in_loop = true;
    G.iter++;
    ch_trace("crest_loop_destroy");
    int leaked = crest_loop_destroy(G.loop);
    G.in_loop = false;
    G.loop = NULL;
    CH_CHECK(leaked == 0, "crest_loop_destroy: %d fds leaked", leaked);
    /* Every defer and post that returned 0 ran exactly once, by the end of
     * crest_loop_destroy at the latest. */
    CH_CHECK(G.defer_run == G.defer_posted, "%llu of %llu deferred callbacks ran by destroy",
             (unsigned long long)G.defer_run, (unsigned long long)G.defer_posted);
    CH_CHECK(G.post_run == G.post_posted, "%llu of %llu posted callbacks ran by destroy",
             (unsigned long long)G.post_run, (unsigned long long)G.post_posted);
    CH_CHECK(G.shut_done == G.shut_asked, "%u of %u shutdown done callbacks ran by destroy",
             G.shut_done, G.shut_asked);
    CH_CHECK(G.flush_run == G.flush_asked, "%llu of %llu flush callbacks ran by destroy",
             (unsigned long long)G.flush_run, (unsigned long long)G.flush_asked);
    for (int i = 0; i < G.ncs; i++) {
        CH_CHECK(G.cs[i].closed, "r%d never got on_close", i);
        G.cs[i].gone = true;
    }
    for (int i = 0; i < G.ncl; i++)
        if (!G.cl[i].done)
            ch_client_close(&G.cl[i], false);
    close(G.dead_fd);
    uint64_t reg1 = crest_fd_open_count();
    int proc1 = ch_proc_fds();
    if (reg1 != reg0)
        crest_fd_report(stderr);
    CH_CHECK(reg1 == reg0, "the fd registry has %llu open, %llu before the run",
             (unsigned long long)reg1, (unsigned long long)reg0);
    CH_CHECK(proc1 == proc0, "/proc/self/fd has %d entries, %d before the run", proc1, proc0);
    crest_log_set_handler(NULL, NULL);
}

#endif
