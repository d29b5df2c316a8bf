/* crest-chat: a line broadcast (pub/sub) server on crest.
 *
 * Every line a client sends (ending in "\n"; a "\r" before it is dropped)
 * goes to every other connected client, as the line and "\n"; never back
 * to its sender.  A line longer than --max-line closes its sender's
 * connection (reason "too large"; crest logs "line too long").  The listening options, threads, signals,
 * --stats and the final report are the skeleton's (server.c), as for
 * crest-echo; the report adds the lines in and out and the slow clients
 * dropped.
 *
 * Slow clients.  A broadcast writes to connections whose own input has
 * nothing to do with it, so the high-water pause that bounds an echo
 * server (it stops reading the client that does not read its replies)
 * bounds nothing here: a client that never reads would take every line
 * the others send into its output queue.  Every connection has
 * max_output = --max-output (1 MiB by default) with output_policy
 * CREST_OUTPUT_CLOSE: a write that would queue more than that is refused
 * (-ENOBUFS) and crest closes the connection, abortively, with reason
 * OUTPUT_LIMIT and a warning naming the peer; the skeleton logs the close,
 * the report counts it, and the other clients are not touched.  So the
 * memory a client can hold is bounded by --max-output, whoever writes.
 *
 * Threads (--threads N): each loop has its own listener, and its own list
 * of clients, touched by that loop's thread only.  A line must still
 * reach the clients of every loop.  Per line nothing is shared, locked or
 * written to a socket at once: on_message appends the line to the loop's
 * batch (one buffer, "line\n" after "line\n"; a run of lines from one
 * client is one segment, so the sender can be skipped) and, for the first
 * line of an iteration, defers a flush.  The flush runs once per loop
 * iteration (and early when a batch passes its size cap):
 *
 *   1. the batch becomes a message: the bytes, their line count, and an
 *      atomic reference count starting at 1 (the sending loop's own);
 *   2. for every other loop that has clients and is still open, one
 *      reference more and one crest_loop_post(target, deliver, msg): the
 *      batch, not each line, crosses threads, so one post (a malloc and
 *      the target's post mutex, inside crest) and at most one eventfd
 *      wake-up per batch and target loop, however many lines it holds;
 *   3. the sending loop writes it to its own clients: whole to a client
 *      that sent none of its lines, and to one that did, the segments of
 *      the others with one writev;
 *   4. it drops its reference.
 * On a target loop, deliver() writes the whole message to each of its
 * clients (none of them sent any of it) and drops that loop's reference.
 * crest_conn_write() copies what the socket does not take, so once every
 * loop has written it the last reference frees the message: one copy of
 * a line in memory however many loops and clients receive it.  Lines from
 * one client reach every other client in the order they were sent (a
 * loop's posts run in order); lines from clients on different loops may
 * interleave differently on different loops, as with any chat server
 * without a global sequencer.
 *
 * A loop that falls behind: messages waiting in a loop's post queue are in
 * no client's output queue, so --max-output does not bound them.  Each
 * loop's shared part also counts the bytes posted to it and not yet
 * delivered (backlog).  A sender that finds a target's backlog above
 * --max-backlog (default 8 x --max-output) right after posting a batch
 * stops reading its own clients (crest_conn_pause(), a pause of its own,
 * apart from crest's high-water pause) and checks every millisecond, with
 * a timer, until every backlog is at half that or less, then resumes
 * them.  Every
 * loop delivers what is posted to it whatever its own state, so loops
 * that wait for each other still drain, and the bytes waiting for one
 * loop stay under --max-backlog plus one batch from each other loop.
 * The report counts these pauses.
 *
 * A loop's lifetime against the posts: a loop ends (shutdown) once its
 * connections are gone, and is then destroyed, while the others may still
 * be posting to it; a post to a destroyed loop would touch freed memory,
 * and one dropped by crest_loop_destroy() would leak its message.  Each
 * loop's shared part holds an atomic "open" flag and two counters: the
 * posters about to post to it, and the messages posted to it not yet
 * delivered.  A sender increments posters, then posts only if open is
 * set (counting it in queued), then decrements posters.  A loop that
 * finishes (loop_fini, on its own thread, after its loop returned) clears
 * open, waits until posters is 0 (a few instructions: no sender can be
 * inside then, and every later one sees open cleared), then runs its loop
 * until queued is 0, so every message posted to it is delivered (to
 * nobody) and released before the loop is destroyed.  Sequentially
 * consistent atomics make the flag and the counter a Dekker pair: no
 * lock is taken by chat itself, on any path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "server.h"

/* A batch of lines on its way to every client: "line\nline\n...". */
struct msg {
    atomic_uint refs;             /* loops that still have to write it */
    uint32_t lines;
    size_t len, cap;              /* cap: while the sending loop fills it */
    uint8_t data[];
};

/* A run of consecutive lines in the batch from one client. */
struct seg {
    uint64_t from;                /* the sender's serial */
    size_t off, len;
};

struct client {
    struct client *prev, *next;
    crest_conn_t *conn;
    uint64_t serial;              /* unique on its loop (fds and addresses are reused) */
    uint64_t batch;               /* the last batch it sent a line in */
    uint32_t lines;               /* its lines in that batch */
};

/* Counters of the final report (server.h: loop_counters). */
enum { C_LINES_IN, C_LINES_OUT, C_DROPPED, C_LOST, C_POSTED, C_THROTTLED };

struct chat_loop {
    /* Shared with the other loops' threads (see the top of this file). */
    alignas(64) atomic_uint posters;
    atomic_bool open;
    atomic_uint queued;
    atomic_uint clients;          /* a hint for senders: 0 skips the post */
    atomic_size_t backlog;        /* bytes posted to it, not yet delivered */
    crest_loop_t *loop;           /* set before any loop runs */

    /* This loop's thread only. */
    alignas(64) struct client head; /* the list of clients: head.next ... */
    unsigned index;
    uint64_t next_serial;
    struct msg *out;              /* the batch being filled, or NULL */
    uint64_t batch;               /* its number */
    bool flush_deferred;
    struct seg *segs;
    size_t nsegs, segs_cap;
    struct iovec *iov;
    crest_timer_t *throttle;      /* while this loop's clients are paused */
    bool throttled;
    uint64_t count[6];            /* C_* */
};

static struct {
    size_t max_output;            /* --max-output */
    size_t max_backlog;           /* --max-backlog; 0 until configured */
    size_t batch_max;             /* a batch is flushed early past this */
    unsigned nloops;
    struct chat_loop *loops;
} chat = {.max_output = 1u << 20};

#define BATCH_MIN 4096u
#define BATCH_MAX_CAP (256u * 1024)
#define IOV_CHUNK 64
#define THROTTLE_CHECK_MS 1

/* ------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------ */

static void msg_release(struct msg *m) {
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        free(m);
}

/* Write iov to one client.  Returns 0 if it took the bytes. */
static int send_to(struct chat_loop *cl, struct client *k, const struct iovec *iov, int n,
                   uint32_t lines) {
    int rc = crest_conn_writev(k->conn, iov, n);
    if (rc == 0) {
        cl->count[C_LINES_OUT] += lines;
    } else if (rc == -ENOMEM) {
        crest_conn_fail(k->conn, CREST_CLOSE_NO_MEMORY, "no memory for %" PRIu32 " lines",
                        lines);
    }
    /* -ENOBUFS: past --max-output: crest closes it (CREST_OUTPUT_CLOSE,
     * reason OUTPUT_LIMIT, logged) and on_close counts it.  -ENOTCONN,
     * -EPIPE: it is closing already. */
    return rc;
}

/* Posted: a batch from another loop.  None of its lines came from a client
 * of this loop, so every client gets all of it. */
static void deliver(crest_loop_t *loop, void *arg) {
    struct chat_loop *cl = crest_loop_get_data(loop);
    struct msg *m = arg;
    struct iovec iov = {m->data, m->len};
    for (struct client *k = cl->head.next, *next; k != &cl->head; k = next) {
        next = k->next; /* no callback runs inside a write, but be plain about it */
        send_to(cl, k, &iov, 1, m->lines);
    }
    atomic_fetch_sub(&cl->backlog, m->len);
    atomic_fetch_sub(&cl->queued, 1);
    msg_release(m);
}

/* Hand m to another loop, if that loop has clients and is still open. */
static void post_to(struct chat_loop *cl, struct chat_loop *t, struct msg *m) {
    if (atomic_load_explicit(&t->clients, memory_order_relaxed) == 0)
        return;
    atomic_fetch_add(&t->posters, 1);
    if (atomic_load(&t->open)) {
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
        atomic_fetch_add(&t->queued, 1);
        atomic_fetch_add(&t->backlog, m->len);
        if (crest_loop_post(t->loop, deliver, m) == 0) {
            cl->count[C_POSTED]++;
        } else {
            atomic_fetch_sub(&t->backlog, m->len);
            atomic_fetch_sub(&t->queued, 1);
            atomic_fetch_sub_explicit(&m->refs, 1, memory_order_relaxed);
            cl->count[C_LOST] += m->lines;
        }
    }
    atomic_fetch_sub(&t->posters, 1);
}

/* The batch to this loop's own clients, each without its own lines. */
static void deliver_local(struct chat_loop *cl, struct msg *m) {
    for (struct client *k = cl->head.next, *next; k != &cl->head; k = next) {
        next = k->next;
        if (k->batch != cl->batch || k->lines == 0) {
            struct iovec iov = {m->data, m->len};
            send_to(cl, k, &iov, 1, m->lines);
            continue;
        }
        if (k->lines == m->lines)
            continue; /* every line is its own */
        /* The others' segments; consecutive ones are adjacent in data, so
         * they merge.  Corked if it takes more than one writev. */
        size_t n = 0;
        bool corked = false;
        int rc = 0;
        for (size_t i = 0; i < cl->nsegs && rc == 0; i++) {
            const struct seg *s = &cl->segs[i];
            if (s->from == k->serial)
                continue;
            if (n && (uint8_t *)cl->iov[n - 1].iov_base + cl->iov[n - 1].iov_len ==
                         m->data + s->off) {
                cl->iov[n - 1].iov_len += s->len;
                continue;
            }
            if (n == IOV_CHUNK) {
                if (!corked)
                    crest_conn_cork(k->conn);
                corked = true;
                rc = send_to(cl, k, cl->iov, (int)n, 0);
                n = 0;
            }
            cl->iov[n++] = (struct iovec){m->data + s->off, s->len};
        }
        if (n && rc == 0)
            rc = send_to(cl, k, cl->iov, (int)n, 0);
        if (corked)
            crest_conn_uncork(k->conn);
        if (rc == 0)
            cl->count[C_LINES_OUT] += m->lines - k->lines;
    }
}

/* The most bytes waiting for any other loop. */
static size_t max_backlog(const struct chat_loop *cl) {
    size_t most = 0;
    for (unsigned i = 0; i < chat.nloops; i++) {
        size_t b = atomic_load_explicit(&chat.loops[i].backlog, memory_order_relaxed);
        if (i != cl->index && b > most)
            most = b;
    }
    return most;
}

static void set_paused(struct chat_loop *cl, bool pause) {
    for (struct client *k = cl->head.next; k != &cl->head; k = k->next) {
        if (pause)
            crest_conn_pause(k->conn);
        else
            crest_conn_resume(k->conn);
    }
}

/* Every THROTTLE_CHECK_MS while throttled: resume once the other loops
 * have caught up. */
static void throttle_check(crest_timer_t *t, void *arg) {
    struct chat_loop *cl = arg;
    if (max_backlog(cl) > chat.max_backlog / 2)
        return;
    crest_timer_stop(t);
    cl->throttled = false;
    set_paused(cl, false);
}

/* Send the batch being filled: to the other loops, then to this one's
 * clients. */
static void flush(struct chat_loop *cl) {
    struct msg *m = cl->out;
    if (!m)
        return;
    cl->out = NULL;
    for (unsigned i = 0; i < chat.nloops; i++)
        if (i != cl->index)
            post_to(cl, &chat.loops[i], m);
    if (chat.nloops > 1 && !cl->throttled && max_backlog(cl) > chat.max_backlog &&
        crest_timer_start(cl->throttle, THROTTLE_CHECK_MS, THROTTLE_CHECK_MS) == 0) {
        /* Another loop is behind: stop reading until it catches up. */
        cl->throttled = true;
        cl->count[C_THROTTLED]++;
        set_paused(cl, true);
    }
    deliver_local(cl, m);
    cl->nsegs = 0;
    msg_release(m);
}

static void flush_deferred(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct chat_loop *cl = arg;
    cl->flush_deferred = false;
    flush(cl);
}

/* Add "line\n" from k to the batch.  0 or -ENOMEM. */
static int append(struct chat_loop *cl, struct client *k, const uint8_t *line, size_t len) {
    size_t need = len + 1;
    struct msg *m = cl->out;
    if (m && m->len + need > chat.batch_max) {
        flush(cl); /* a batch stays small enough for any client's queue */
        m = NULL;
    }
    if (!m) {
        size_t cap = need > BATCH_MIN ? need : BATCH_MIN;
        m = malloc(sizeof *m + cap);
        if (!m)
            return -ENOMEM;
        atomic_init(&m->refs, 1);
        m->lines = 0;
        m->len = 0;
        m->cap = cap;
        cl->out = m;
        cl->batch++;
    } else if (m->len + need > m->cap) {
        size_t cap = m->cap * 2 > m->len + need ? m->cap * 2 : m->len + need;
        struct msg *n = realloc(m, sizeof *m + cap);
        if (!n)
            return -ENOMEM;
        cl->out = m = n;
        m->cap = cap;
    }
    if (cl->nsegs && cl->segs[cl->nsegs - 1].from == k->serial) {
        cl->segs[cl->nsegs - 1].len += need;
    } else {
        if (cl->nsegs == cl->segs_cap) {
            size_t cap = cl->segs_cap ? cl->segs_cap * 2 : 64;
            struct seg *s = realloc(cl->segs, cap * sizeof *s);
            if (!s)
                return -ENOMEM;
            cl->segs = s;
            cl->segs_cap = cap;
        }
        cl->segs[cl->nsegs++] = (struct seg){k->serial, m->len, need};
    }
    memcpy(m->data + m->len, line, len);
    m->data[m->len + len] = '\n';
    m->len += need;
    m->lines++;
    if (k->batch != cl->batch) {
        k->batch = cl->batch;
        k->lines = 0;
    }
    k->lines++;
    if (!cl->flush_deferred) {
        if (crest_loop_defer(cl->loop, flush_deferred, cl) == 0)
            cl->flush_deferred = true;
        else
            flush(cl); /* cannot wait for the end of the iteration */
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The handler
 * ------------------------------------------------------------------------ */

static void chat_open(crest_conn_t *c) {
    struct chat_loop *cl = crest_loop_get_data(crest_conn_loop(c));
    struct client *k = calloc(1, sizeof *k);
    if (!k) {
        crest_conn_fail(c, CREST_CLOSE_NO_MEMORY, "no memory for a client");
        return;
    }
    k->conn = c;
    k->serial = ++cl->next_serial;
    k->next = &cl->head;
    k->prev = cl->head.prev;
    cl->head.prev->next = k;
    cl->head.prev = k;
    atomic_fetch_add_explicit(&cl->clients, 1, memory_order_relaxed);
    crest_conn_set_data(c, k);
    if (cl->throttled)
        crest_conn_pause(c);
}

static int chat_line(crest_conn_t *c, const uint8_t *line, size_t len) {
    struct chat_loop *cl = crest_loop_get_data(crest_conn_loop(c));
    struct client *k = crest_conn_get_data(c);
    if (!k)
        return 0;
    cl->count[C_LINES_IN]++;
    if (chat.nloops == 1 && cl->head.next == k && k->next == &cl->head)
        return 0; /* alone: nobody to hear it */
    return append(cl, k, line, len) < 0 ? -CREST_CLOSE_NO_MEMORY : 0;
}

static void chat_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct chat_loop *cl = crest_loop_get_data(crest_conn_loop(c));
    if (reason == CREST_CLOSE_OUTPUT_LIMIT)
        cl->count[C_DROPPED]++;
    struct client *k = crest_conn_get_data(c);
    if (!k)
        return;
    k->prev->next = k->next;
    k->next->prev = k->prev;
    atomic_fetch_sub_explicit(&cl->clients, 1, memory_order_relaxed);
    crest_conn_set_data(c, NULL);
    free(k);
}

/* ------------------------------------------------------------------------
 * Per-loop hooks (server.h), each on the loop's own thread
 * ------------------------------------------------------------------------ */

static int chat_loop_init(server_proto_t *p, crest_loop_t *loop, unsigned index) {
    (void)p;
    struct chat_loop *cl = &chat.loops[index];
    cl->loop = loop;
    cl->index = index;
    cl->head.next = cl->head.prev = &cl->head;
    cl->iov = malloc(IOV_CHUNK * sizeof *cl->iov);
    if (!cl->iov)
        return -ENOMEM;
    int rc = crest_timer_create(loop, throttle_check, cl, &cl->throttle);
    if (rc < 0) {
        free(cl->iov);
        cl->iov = NULL;
        return rc;
    }
    crest_loop_set_data(loop, cl);
    atomic_store(&cl->open, true);
    return 0;
}

static void chat_loop_fini(server_proto_t *p, crest_loop_t *loop, unsigned index) {
    (void)p;
    struct chat_loop *cl = &chat.loops[index];
    flush(cl); /* lines read before the last client left still go out */
    /* No post can reach this loop once open is clear and posters is 0;
     * then deliver (to nobody) what was posted before. */
    atomic_store(&cl->open, false);
    while (atomic_load(&cl->posters))
        sched_yield();
    while (atomic_load(&cl->queued))
        if (crest_loop_run_once(loop, 100) < 0)
            break; /* cannot happen off a callback; do not spin */
    crest_timer_destroy(cl->throttle);
    cl->throttle = NULL;
    cl->throttled = false;
    free(cl->segs);
    free(cl->iov);
    cl->segs = NULL;
    cl->iov = NULL;
    cl->nsegs = cl->segs_cap = 0;
}

static void chat_loop_counters(server_proto_t *p, crest_loop_t *loop, unsigned index,
                               uint64_t counters[SERVER_PROTO_COUNTERS]) {
    (void)p;
    (void)loop;
    memcpy(counters, chat.loops[index].count, sizeof chat.loops[index].count);
}

static void chat_report(const server_proto_t *p, const uint64_t counters[SERVER_PROTO_COUNTERS]) {
    (void)p;
    printf("  chat: %" PRIu64 " lines in, %" PRIu64 " lines out (copies to other clients), %" PRIu64
           " slow client%s dropped (over --max-output %zu bytes)\n",
           counters[C_LINES_IN], counters[C_LINES_OUT], counters[C_DROPPED],
           counters[C_DROPPED] == 1 ? "" : "s", chat.max_output);
    if (chat.nloops > 1)
        printf("  chat: %" PRIu64 " batches of lines passed to another loop; reading paused %" PRIu64
               " time%s (another loop over --max-backlog %zu bytes)\n",
               counters[C_POSTED], counters[C_THROTTLED], counters[C_THROTTLED] == 1 ? "" : "s",
               chat.max_backlog);
    if (counters[C_LOST])
        printf("  chat: %" PRIu64 " lines not passed to another loop (out of memory)\n",
               counters[C_LOST]);
}

static void chat_conn_opts(const server_proto_t *p, crest_conn_opts_t *o) {
    (void)p;
    o->max_output = chat.max_output;
    o->output_policy = CREST_OUTPUT_CLOSE;
    /* crest wants max_output >= high_water: a smaller cap pauses a
     * client's reading earlier too. */
    if (o->high_water > chat.max_output)
        o->high_water = chat.max_output;
    if (o->low_water > o->high_water / 4)
        o->low_water = o->high_water / 4;
}

/* ------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------ */

enum { OPT_MAX_LINE = 256, OPT_MAX_OUTPUT, OPT_MAX_BACKLOG };

static const struct option chat_options[] = {
    {"max-line", required_argument, NULL, OPT_MAX_LINE},
    {"max-output", required_argument, NULL, OPT_MAX_OUTPUT},
    {"max-backlog", required_argument, NULL, OPT_MAX_BACKLOG},
    {NULL, 0, NULL, 0},
};

static int chat_option(server_proto_t *p, int id, const char *arg) {
    switch (id) {
    case OPT_MAX_LINE:
        return server_parse_size("max-line", arg, 1, (size_t)1 << 30, &p->framing.max_message);
    case OPT_MAX_OUTPUT:
        return server_parse_size("max-output", arg, 4096, (size_t)1 << 30, &chat.max_output);
    case OPT_MAX_BACKLOG:
        return server_parse_size("max-backlog", arg, 1, (size_t)1 << 40, &chat.max_backlog);
    default:
        return -1;
    }
}

static int chat_configured(server_proto_t *p) {
    size_t line = p->framing.max_message + 1; /* and its "\n" */
    if (chat.max_output / 2 < line) {
        fprintf(stderr,
                "crest-chat: --max-output %zu: must be at least twice --max-line + 1 (%zu), or a "
                "client could not take one line\n",
                chat.max_output, 2 * line);
        return -1;
    }
    if (!chat.max_backlog)
        chat.max_backlog = 8 * chat.max_output;
    /* A batch, or one line alone, is at most half of any client's cap. */
    chat.batch_max = chat.max_output / 4 < BATCH_MAX_CAP ? chat.max_output / 4 : BATCH_MAX_CAP;
    chat.nloops = p->threads;
    chat.loops = aligned_alloc(alignof(struct chat_loop), p->threads * sizeof *chat.loops);
    if (!chat.loops) {
        fprintf(stderr, "crest-chat: out of memory\n");
        return -1;
    }
    memset(chat.loops, 0, p->threads * sizeof *chat.loops);
    return 0;
}

static server_proto_t chat_proto = {
    .name = "crest-chat",
    .summary = "A chat (line broadcast) server: each line a client sends goes to every other\n"
               "connected client, on every thread.",
    .default_port = 7002,
    .options = chat_options,
    .options_help =
        "      --max-line BYTES    longest line; a longer one closes its sender's\n"
        "                          connection (\"too large\": \"line too long\";\n"
        "                          default 64K)\n"
        "      --max-output BYTES  output one client may have waiting; a client that\n"
        "                          does not read and would pass it is disconnected\n"
        "                          (\"output limit\"; default 1M, at least twice\n"
        "                          --max-line)\n"
        "      --max-backlog BYTES\n"
        "                          with --threads: lines waiting for another loop;\n"
        "                          past it a loop stops reading its clients until\n"
        "                          the others catch up (default 8 x --max-output)\n",
    .parse_option = chat_option,
    .configured = chat_configured,
    .one_process = true,
    .loop_init = chat_loop_init,
    .loop_fini = chat_loop_fini,
    .loop_counters = chat_loop_counters,
    .report = chat_report,
    .conn_opts = chat_conn_opts,
    .framing = {.kind = CREST_FRAMING_LINE, .max_message = CREST_FRAMING_DEFAULT_MAX},
    .handler = {.on_open = chat_open, .on_message = chat_line, .on_close = chat_close,
                .name = "chat"},
    .message_unit = "lines",
};

int main(int argc, char **argv) {
    int code = server_main(argc, argv, &chat_proto);
    free(chat.loops);
    return code;
}
