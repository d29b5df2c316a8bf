/* bench_worker: one thread, one crest loop, its share of the connections.
 *
 * Connections: the run's threads, over all its processes (-j), are L lanes
 * (L = procs x threads; thread t of process p is lane p*threads + t), and
 * lane w owns the global connection ids w, w+L, w+2L, ...  (interleaved,
 * so that with --rate each worker's send times are spread evenly, see
 * below).  Each connects with crest_connect_addr() (from
 * a --bind source address if given), at most CONNECT_WINDOW outstanding
 * per worker, and at most CONNECT_BATCH started per loop iteration: the
 * connect time of a connection (connect() to on_open) would otherwise
 * include the connect() calls of the hundreds started after it in the same
 * burst, before the loop could look at any of them.
 *
 * Requests and verification: request seq of connection id carries the
 * payload pattern[off .. off+size) with off = (97 seq + 31 id) mod 251, so
 * consecutive requests differ and the expected reply can be regenerated
 * instead of stored.  With --size-random the payload size is regenerated
 * the same way: a hash of (id, seq) picks it in [size_min, size], and in
 * frame mode the 4-byte header is built per message.  Replies are checked byte for byte as they stream in
 * (RAW framing on our side, whatever the mode: the reply must be exactly
 * prefix + payload + suffix, and no copy or reassembly is needed).  The
 * connection keeps only a ring of `pipeline` send timestamps (FIFO: the
 * head is the oldest outstanding request), the next seq to send and the
 * seq and byte offset of the reply being matched.
 *
 * Closed loop (no --rate): each connection sends `pipeline` requests when it
 * opens and one more for each reply; latency = reply time - send time.
 *
 * Open loop (--rate R): global message k is due at t0 + k/R; connection id
 * owns the k with k mod C == id (C connections), so each connection sends
 * every C/R seconds, staggered.  A per-worker timerfd (ns precision; crest
 * timers are in ms) wakes at the next due time.  A request due while the
 * connection already has `pipeline` requests outstanding waits (backlog)
 * and is sent as soon as a reply frees a slot, and its latency is measured
 * from the time it was DUE, not sent: a slow reply delays the next send but
 * still counts in full, so there is no coordinated omission.
 *
 * Writes: inside on_data, crest gathers writes into one writev when the
 * callback returns; from on_open and the rate timer, several requests to
 * one connection are corked and go out together.  The output never reaches
 * high_water (at most `pipeline` requests are queued, and high_water is set
 * above that), so reading is never paused by our own output. */
#define _GNU_SOURCE
#include "bench_worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <crest/crest.h>

#define TICK_MS 50           /* progress, timeouts, end of run */
#define CONNECT_WINDOW 128   /* outstanding connects per worker */
#define CONNECT_BATCH 8      /* connects started per loop iteration */
#define PATTERN_SLOTS 251    /* payload offsets: a prime */
#define RATE_MIN_GAP_NS 20000ull /* open loop: at most 50,000 timer wake-ups/s */
#define CLOSE_GRACE_NS 2000000000ull /* after the drain, before giving up */

enum bconn_state { BC_NEW = 0, BC_CONNECTING, BC_OPEN, BC_CLOSING, BC_CLOSED };

struct bconn {
    struct bench_worker *w;
    crest_conn_t *c;
    uint32_t id;              /* global connection index */
    uint8_t state;
    bool opened;              /* on_open ran */
    bool by_us;               /* we closed it: on_close is no error */
    bool aborted;             /* crest_conn_abort() was called */
    bool failed;              /* an error was counted for it already */
    bool sched_started;       /* open loop: j0 is set */
    bool touched;             /* open loop: in this wake's send list */
    uint64_t connect_ns;      /* when the connect started */
    uint64_t sent;            /* requests sent = the next seq */
    uint64_t recv;            /* replies completed = seq of the head */
    size_t recv_off;          /* bytes of the head reply matched so far */
    uint64_t due;             /* open loop: requests whose time has come */
    uint64_t j0;              /* open loop: the schedule slot of seq 0 */
    uint64_t *stamp;          /* ring: stamp[seq % pipeline] */
};

struct bench_worker {
    const bench_cfg_t *cfg;
    unsigned index;
    pthread_t thread;
    crest_loop_t *loop;
    crest_timer_t *tick;
    int tfd;                  /* open loop: the rate timerfd, or -1 */
    crest_io_t *tio;

    struct bconn *conns;
    unsigned nconns;
    uint64_t *stamps;         /* nconns * pipeline */
    struct bconn **touched;   /* open loop: connections to pump this wake */
    unsigned next_connect;    /* conns[next_connect] is the next to connect */
    bool connect_deferred;    /* a connect_more pass is queued (crest_loop_defer) */
    unsigned connecting, live;

    bool stopping, finished;
    uint64_t drain_deadline_ns;
    uint64_t end_ns;          /* when the worker finished */
    uint64_t first_send_ns, last_reply_ns;

    uint64_t rate_k;          /* open loop: the worker's next slot */
    double ns_per_msg;        /* open loop: 1e9 / rate */

    bench_result_t *res;
    int err;                  /* setup failure, -errno */
    int fds_leaked;

    _Atomic uint64_t pub_replies, pub_open, pub_errors;
    atomic_bool done;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- configuration ----------------------------------------------------- */

const char *bench_mode_name(bench_mode_t mode) {
    switch (mode) {
    case BENCH_MODE_RAW: return "raw";
    case BENCH_MODE_LINE: return "line";
    case BENCH_MODE_FRAME: return "frame";
    }
    return "?";
}

int bench_cfg_prepare(bench_cfg_t *cfg) {
    static const char printable[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    cfg->pattern_len = cfg->size + PATTERN_SLOTS;
    cfg->pattern = malloc(cfg->pattern_len);
    if (!cfg->pattern)
        return -ENOMEM;
    uint64_t x = 0x2545f4914f6cdd1dull; /* xorshift64: any fixed sequence */
    for (size_t i = 0; i < cfg->pattern_len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cfg->pattern[i] = cfg->mode == BENCH_MODE_LINE
                              ? (uint8_t)printable[(x >> 32) % (sizeof printable - 1)]
                              : (uint8_t)(x >> 32);
    }
    cfg->req_prefix_len = cfg->rep_prefix_len = 0;
    cfg->req_suffix = cfg->rep_suffix = "";
    cfg->req_suffix_len = cfg->rep_suffix_len = 0;
    switch (cfg->mode) {
    case BENCH_MODE_RAW:
        break;
    case BENCH_MODE_LINE:
        memcpy(cfg->rep_prefix, "echo: ", 6);
        cfg->rep_prefix_len = 6;
        cfg->req_suffix = cfg->rep_suffix = "\n";
        cfg->req_suffix_len = cfg->rep_suffix_len = 1;
        break;
    case BENCH_MODE_FRAME:
        for (int i = 0; i < 4; i++)
            cfg->req_prefix[i] = (uint8_t)((uint64_t)cfg->size >> (24 - 8 * i));
        memcpy(cfg->rep_prefix, cfg->req_prefix, 4);
        cfg->req_prefix_len = cfg->rep_prefix_len = 4;
        break;
    }
    return 0;
}

void bench_cfg_release(bench_cfg_t *cfg) {
    free(cfg->pattern);
    cfg->pattern = NULL;
}

static const uint8_t *payload(const bench_cfg_t *cfg, uint32_t id, uint64_t seq) {
    return cfg->pattern + (seq * 97 + (uint64_t)id * 31) % PATTERN_SLOTS;
}

/* Payload bytes of request (id, seq): cfg->size, or with --size-random a
 * value in [size_min, size] from a hash (splitmix64) of (id, seq). */
static size_t msg_size(const bench_cfg_t *cfg, uint32_t id, uint64_t seq) {
    if (cfg->size_min >= cfg->size)
        return cfg->size;
    uint64_t x = ((uint64_t)id << 40) ^ seq ^ 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return cfg->size_min + (size_t)(x % (uint64_t)(cfg->size - cfg->size_min + 1));
}

/* The reply's prefix for a payload of this size: in frame mode the header
 * carries the size, so it is built per message. */
static const uint8_t *reply_prefix(const bench_cfg_t *cfg, size_t size, uint8_t buf[8]) {
    if (cfg->mode != BENCH_MODE_FRAME)
        return cfg->rep_prefix;
    for (int i = 0; i < 4; i++)
        buf[i] = (uint8_t)((uint64_t)size >> (24 - 8 * i));
    return buf;
}

static size_t reply_len(const bench_cfg_t *cfg, uint32_t id, uint64_t seq) {
    return cfg->rep_prefix_len + msg_size(cfg, id, seq) + cfg->rep_suffix_len;
}

/* Compare data[0..n) with bytes [off, off+n) of the expected reply to
 * (id, seq).  true if equal; else *bad is the offset (in the reply) of the
 * first differing byte and *want the byte expected there. */
static bool reply_matches(const bench_cfg_t *cfg, uint32_t id, uint64_t seq, size_t off,
                          const uint8_t *data, size_t n, size_t *bad, uint8_t *want) {
    size_t size = msg_size(cfg, id, seq);
    uint8_t prefix[8];
    const struct {
        const uint8_t *p;
        size_t len;
    } seg[3] = {
        {reply_prefix(cfg, size, prefix), cfg->rep_prefix_len},
        {payload(cfg, id, seq), size},
        {(const uint8_t *)cfg->rep_suffix, cfg->rep_suffix_len},
    };
    size_t pos = off, done = 0, base = 0;
    for (int s = 0; s < 3 && done < n; s++) {
        if (pos >= base + seg[s].len) {
            base += seg[s].len;
            continue;
        }
        size_t in = pos - base;
        size_t take = seg[s].len - in;
        if (take > n - done)
            take = n - done;
        if (memcmp(seg[s].p + in, data + done, take) != 0) {
            for (size_t i = 0; i < take; i++) {
                if (seg[s].p[in + i] != data[done + i]) {
                    *bad = pos + i;
                    *want = seg[s].p[in + i];
                    return false;
                }
            }
        }
        done += take;
        pos += take;
        base += seg[s].len;
    }
    return true;
}

/* ---- connection bookkeeping ------------------------------------------- */

static void worker_finish(struct bench_worker *w);
static void connect_more(struct bench_worker *w);

static void conn_error(struct bconn *bc, bench_err_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Count an error for this connection (once) with a detail line. */
static void conn_error(struct bconn *bc, bench_err_t kind, const char *fmt, ...) {
    if (bc->failed)
        return;
    bc->failed = true;
    char msg[BENCH_DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bench_result_error(bc->w->res, kind, "conn %u: %s", bc->id, msg);
}

static void conn_close(struct bconn *bc) {
    if (bc->state != BC_OPEN && bc->state != BC_CONNECTING)
        return;
    bc->by_us = true;
    if (bc->state == BC_CONNECTING) {
        bc->state = BC_CLOSING;
        bc->aborted = true;
        crest_conn_abort(bc->c);
    } else {
        bc->state = BC_CLOSING;
        crest_conn_close(bc->c);
    }
}

static void conn_abort(struct bconn *bc) {
    if (bc->state == BC_NEW || bc->state == BC_CLOSED || !bc->c || bc->aborted)
        return;
    bc->by_us = true;
    bc->aborted = true;
    bc->state = BC_CLOSING;
    crest_conn_abort(bc->c);
}

/* Is this reply time inside the measured window? */
static bool in_window(const struct bench_worker *w, uint64_t t) {
    const bench_cfg_t *cfg = w->cfg;
    return t >= cfg->win_start_ns && t < cfg->win_end_ns &&
           t < atomic_load_explicit(&((bench_cfg_t *)cfg)->stop_ns, memory_order_relaxed);
}

/* Open loop: when the request with this seq was due. */
static uint64_t due_time(const struct bench_worker *w, const struct bconn *bc, uint64_t seq) {
    const bench_cfg_t *cfg = w->cfg;
    double k = (double)bc->id + (double)(bc->j0 + seq) * (double)cfg->conns;
    return cfg->t0_ns + (uint64_t)(k * w->ns_per_msg);
}

static int send_one(struct bconn *bc, uint64_t stamp) {
    struct bench_worker *w = bc->w;
    const bench_cfg_t *cfg = w->cfg;
    uint64_t seq = bc->sent;
    size_t size = msg_size(cfg, bc->id, seq);
    uint8_t prefix[8];
    struct iovec iov[3];
    int n = 0;
    if (cfg->req_prefix_len) /* frame mode: the request's header is the reply's */
        iov[n++] = (struct iovec){(void *)reply_prefix(cfg, size, prefix), cfg->req_prefix_len};
    if (size)
        iov[n++] = (struct iovec){(void *)payload(cfg, bc->id, seq), size};
    if (cfg->req_suffix_len)
        iov[n++] = (struct iovec){(void *)cfg->req_suffix, cfg->req_suffix_len};
    int rc = crest_conn_writev(bc->c, iov, n);
    if (rc < 0) {
        conn_error(bc, BENCH_ERR_WRITE_FAILED, "write of request %llu: %s",
                   (unsigned long long)seq, crest_strerror(rc));
        conn_abort(bc);
        return rc;
    }
    bc->stamp[seq % cfg->pipeline] = stamp;
    bc->sent++;
    if (!w->first_send_ns)
        w->first_send_ns = now_ns();
    return 0;
}

/* Send what this connection may send now: in closed loop, up to pipeline
 * outstanding (and -n in total); in open loop, the requests already due. */
static void pump(struct bconn *bc, uint64_t now) {
    struct bench_worker *w = bc->w;
    const bench_cfg_t *cfg = w->cfg;
    if (bc->state != BC_OPEN || w->stopping)
        return;
    uint64_t limit;
    if (cfg->rate > 0)
        limit = bc->due;
    else
        limit = cfg->by_count ? cfg->per_conn : UINT64_MAX;
    uint64_t room = cfg->pipeline - (bc->sent - bc->recv);
    uint64_t count = limit > bc->sent ? limit - bc->sent : 0;
    if (count > room)
        count = room;
    if (count == 0)
        return;
    bool cork = count > 1;
    if (cork)
        crest_conn_cork(bc->c);
    for (uint64_t i = 0; i < count && bc->state == BC_OPEN; i++)
        if (send_one(bc, cfg->rate > 0 ? due_time(w, bc, bc->sent) : now) < 0)
            return;
    if (cork && bc->state == BC_OPEN) {
        int rc = crest_conn_uncork(bc->c);
        if (rc < 0) {
            conn_error(bc, BENCH_ERR_WRITE_FAILED, "uncork: %s", crest_strerror(rc));
            conn_abort(bc);
        }
    }
}

/* A whole reply matched. */
static void reply_done(struct bconn *bc, uint64_t now) {
    struct bench_worker *w = bc->w;
    const bench_cfg_t *cfg = w->cfg;
    uint64_t stamp = bc->stamp[bc->recv % cfg->pipeline];
    size_t size = msg_size(cfg, bc->id, bc->recv);
    bc->recv++;
    bc->recv_off = 0;
    w->res->replies_total++;
    if (in_window(w, now)) {
        w->res->msgs++;
        w->res->payload_bytes += size;
        bench_hist_record(&w->res->latency, now > stamp ? now - stamp : 0);
        w->last_reply_ns = now;
    }
    if (cfg->by_count && bc->recv >= cfg->per_conn)
        conn_close(bc);
    else if (w->stopping && bc->recv == bc->sent)
        conn_close(bc);
}

/* ---- handler callbacks ---------------------------------------------------- */

static void on_open(crest_conn_t *c) {
    struct bconn *bc = crest_conn_handler_ctx(c);
    struct bench_worker *w = bc->w;
    uint64_t now = now_ns();
    bc->c = c;
    bc->state = BC_OPEN;
    bc->opened = true;
    w->connecting--;
    w->res->conns_established++;
    bench_hist_record(&w->res->connect, now - bc->connect_ns);
    if (now > w->res->last_open_ns)
        w->res->last_open_ns = now;
    if (w->stopping || (w->cfg->by_count && w->cfg->per_conn == 0))
        conn_close(bc);
    else if (w->cfg->rate <= 0)
        pump(bc, now);
    connect_more(w);
}

static ssize_t on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct bconn *bc = crest_conn_handler_ctx(c);
    const bench_cfg_t *cfg = bc->w->cfg;
    uint64_t now = now_ns();
    size_t used = 0;
    while (used < len) {
        if (bc->state != BC_OPEN && bc->state != BC_CLOSING)
            break;
        if (bc->recv == bc->sent) {
            conn_error(bc, BENCH_ERR_UNEXPECTED, "%zu bytes with no request outstanding (%llu "
                       "replies so far)", len - used, (unsigned long long)bc->recv);
            break;
        }
        size_t rlen = reply_len(cfg, bc->id, bc->recv);
        size_t n = rlen - bc->recv_off;
        if (n > len - used)
            n = len - used;
        size_t bad;
        uint8_t want;
        if (!reply_matches(cfg, bc->id, bc->recv, bc->recv_off, data + used, n, &bad, &want)) {
            conn_error(bc, BENCH_ERR_MISMATCH,
                       "reply %llu byte %zu of %zu: expected 0x%02x, got 0x%02x",
                       (unsigned long long)bc->recv, bad, rlen, want,
                       data[used + (bad - bc->recv_off)]);
            break;
        }
        used += n;
        bc->recv_off += n;
        if (bc->recv_off == rlen) {
            reply_done(bc, now);
            pump(bc, now);
        }
    }
    /* On an error, drop the connection ourselves rather than returning
     * -CREST_CLOSE_PROTOCOL_ERROR: crest would log a warning per
     * connection, and our own report already says what went wrong. */
    if (used < len)
        conn_abort(bc);
    return (ssize_t)len;
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct bconn *bc = crest_conn_handler_ctx(c);
    struct bench_worker *w = bc->w;
    const bench_cfg_t *cfg = w->cfg;
    bool was_connecting = !bc->opened;
    if (reason == CREST_CLOSE_CONNECT_FAILED)
        conn_error(bc, BENCH_ERR_CONNECT_FAILED, "%s", crest_strerror(err));
    else if (reason == CREST_CLOSE_CONNECT_TIMEOUT)
        conn_error(bc, BENCH_ERR_CONNECT_TIMEOUT, "no connection after %u ms",
                   cfg->connect_timeout_ms);
    else if (!bc->by_us) {
        bool complete = cfg->by_count ? bc->recv >= cfg->per_conn
                                      : w->stopping && bc->recv == bc->sent;
        if (!complete)
            conn_error(bc, BENCH_ERR_CLOSED_EARLY, "%s%s%s after %llu replies, %llu outstanding",
                       crest_close_reason_name(reason), err ? ": " : "",
                       err ? crest_strerror(err) : "", (unsigned long long)bc->recv,
                       (unsigned long long)(bc->sent - bc->recv));
    }
    if (was_connecting && w->connecting)
        w->connecting--;
    bc->state = BC_CLOSED;
    bc->c = NULL;
    w->live--;
    if (!w->finished) {
        connect_more(w);
        /* Done when nothing is open and nothing more will be started. */
        if (w->live == 0 && (w->next_connect == w->nconns || w->stopping))
            worker_finish(w);
    }
}

static const crest_handler_t handler = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .name = "crest-bench", /* its slow callbacks were logged as "crest-bench+0x5ec0" */
};

/* ---- connecting ---------------------------------------------------------- */

static void start_connect(struct bench_worker *w, struct bconn *bc) {
    const bench_cfg_t *cfg = w->cfg;
    crest_conn_opts_t opts;
    crest_conn_opts_init(&opts);
    opts.framing.kind = CREST_FRAMING_RAW;
    opts.connect_timeout_ms = cfg->connect_timeout_ms;
    size_t req = cfg->req_prefix_len + cfg->size + cfg->req_suffix_len;
    /* Never pause reading because of our own output (see the top). */
    size_t queued_max = (size_t)cfg->pipeline * req;
    if (opts.high_water < 2 * queued_max + 65536) {
        opts.high_water = 2 * queued_max + 65536;
        opts.low_water = queued_max;
    }
    /* Our own requests are bounded by the pipeline depth: no cap needed
     * (and the default one must not sit below that high water). */
    opts.max_output = 0;
    /* One whole reply may be left unconsumed by nobody: we always consume
     * everything, so the default max_input is enough. */
    const crest_addr_t *bind = cfg->nbinds ? &cfg->binds[bc->id % cfg->nbinds] : NULL;
    bc->state = BC_CONNECTING;
    bc->connect_ns = now_ns();
    if (bc->connect_ns < w->res->first_connect_ns)
        w->res->first_connect_ns = bc->connect_ns;
    w->connecting++;
    w->live++;
    w->res->conns_attempted++;
    crest_conn_t *c = NULL;
    int rc = crest_connect_addr(w->loop, &cfg->target, bind, &opts, &handler, bc, &c);
    if (rc < 0) {
        /* The callbacks never run after a failed call. */
        w->connecting--;
        w->live--;
        bc->state = BC_CLOSED;
        conn_error(bc, BENCH_ERR_CONNECT_FAILED, "crest_connect_addr: %s", crest_strerror(rc));
        return;
    }
    if (bc->state == BC_CONNECTING || bc->state == BC_OPEN)
        bc->c = c;
}

static void connect_deferred(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct bench_worker *w = arg;
    w->connect_deferred = false;
    connect_more(w);
}

/* Start connects: up to CONNECT_WINDOW outstanding, CONNECT_BATCH per
 * iteration; the rest continues next iteration (a deferred callback keeps
 * the loop from blocking in between). */
static void connect_more(struct bench_worker *w) {
    if (w->connect_deferred)
        return; /* the queued pass will do it */
    unsigned started = 0;
    while (!w->stopping && w->next_connect < w->nconns && w->connecting < CONNECT_WINDOW &&
           started < CONNECT_BATCH) {
        start_connect(w, &w->conns[w->next_connect++]);
        started++;
    }
    if (!w->stopping && w->next_connect < w->nconns && w->connecting < CONNECT_WINDOW) {
        if (crest_loop_defer(w->loop, connect_deferred, w) == 0)
            w->connect_deferred = true;
        /* (on -ENOMEM the next on_open or on_close carries on) */
    }
    if (w->live == 0 && w->next_connect == w->nconns && !w->finished && !w->stopping)
        worker_finish(w); /* every connect failed synchronously */
}

/* ---- open loop: the rate timer ------------------------------------------ */

/* Arm the timerfd for the next slot, but not sooner than RATE_MIN_GAP_NS
 * from now: above 1/RATE_MIN_GAP_NS msg/s per thread, sends go out in
 * small batches instead of one wake-up (three syscalls) per message.  The
 * delay this adds is inside the measured latency (it counts from the slot),
 * so it is never hidden. */
static int rate_arm(struct bench_worker *w, uint64_t now) {
    unsigned i = (unsigned)(w->rate_k % w->nconns);
    uint64_t j = w->rate_k / w->nconns;
    double k = (double)w->conns[i].id + (double)j * (double)w->cfg->conns;
    uint64_t t = w->cfg->t0_ns + (uint64_t)(k * w->ns_per_msg);
    if (t < now + RATE_MIN_GAP_NS)
        t = now + RATE_MIN_GAP_NS;
    struct itimerspec its = {
        .it_value = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)},
    };
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1; /* all zero would disarm it */
    return timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0 ? -errno : 0;
}

static void on_rate(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    (void)events;
    struct bench_worker *w = arg;
    const bench_cfg_t *cfg = w->cfg;
    uint64_t expirations;
    if (read(w->tfd, &expirations, sizeof expirations) < 0 && errno == EAGAIN)
        return; /* spurious: the timer was re-armed since */
    if (w->stopping)
        return;
    uint64_t now = now_ns();
    unsigned ntouched = 0;
    for (;;) {
        unsigned i = (unsigned)(w->rate_k % w->nconns);
        uint64_t j = w->rate_k / w->nconns;
        struct bconn *bc = &w->conns[i];
        double k = (double)bc->id + (double)j * (double)cfg->conns;
        if (cfg->t0_ns + (uint64_t)(k * w->ns_per_msg) > now)
            break;
        w->rate_k++;
        /* Slots of a connection not open yet are skipped; from its first
         * slot after opening, seq s is slot j0 + s. */
        if (bc->state != BC_OPEN)
            continue;
        if (!bc->sched_started) {
            bc->sched_started = true;
            bc->j0 = j;
        }
        if (cfg->by_count && bc->due >= cfg->per_conn)
            continue;
        bc->due++;
        if (!bc->touched) {
            bc->touched = true;
            w->touched[ntouched++] = bc;
        }
    }
    for (unsigned t = 0; t < ntouched; t++) {
        w->touched[t]->touched = false;
        pump(w->touched[t], now);
    }
    int rc = rate_arm(w, now);
    if (rc < 0)
        crest_log(CREST_LOG_ERROR, "crest-bench: timerfd_settime: %s", crest_strerror(rc));
}

/* ---- phases: the tick ------------------------------------------------------ */

static void publish(struct bench_worker *w) {
    uint64_t open = 0;
    for (unsigned i = 0; i < w->nconns; i++)
        open += w->conns[i].state == BC_OPEN;
    atomic_store_explicit(&w->pub_replies, w->res->replies_total, memory_order_relaxed);
    atomic_store_explicit(&w->pub_open, open, memory_order_relaxed);
    atomic_store_explicit(&w->pub_errors, bench_result_errors(w->res), memory_order_relaxed);
}

/* The end of the run: no more requests; close what has nothing
 * outstanding, wait (until the drain deadline) for the rest. */
static void begin_stop(struct bench_worker *w, uint64_t now) {
    const bench_cfg_t *cfg = w->cfg;
    w->stopping = true;
    w->drain_deadline_ns = now + cfg->timeout_ns;
    if (w->tio) {
        crest_io_stop(w->tio);
        w->tio = NULL;
    }
    for (unsigned i = 0; i < w->nconns && !w->finished; i++) {
        struct bconn *bc = &w->conns[i];
        if (cfg->rate > 0 && bc->due > bc->sent)
            w->res->unsent += bc->due - bc->sent;
        if (bc->state == BC_CONNECTING || (bc->state == BC_OPEN && bc->recv == bc->sent))
            conn_close(bc);
    }
    if (!w->finished && w->live == 0)
        worker_finish(w);
}

static void check_timeouts(struct bench_worker *w, uint64_t now) {
    const bench_cfg_t *cfg = w->cfg;
    for (unsigned i = 0; i < w->nconns && !w->finished; i++) {
        struct bconn *bc = &w->conns[i];
        if (bc->state != BC_OPEN || bc->recv == bc->sent)
            continue;
        uint64_t t = bc->stamp[bc->recv % cfg->pipeline];
        if (now > t && now - t > cfg->timeout_ns) {
            conn_error(bc, BENCH_ERR_TIMEOUT, "no reply to request %llu after %.3f s (%zu of "
                       "%zu bytes came)", (unsigned long long)bc->recv, (double)(now - t) / 1e9,
                       bc->recv_off, reply_len(cfg, bc->id, bc->recv));
            conn_abort(bc);
        }
    }
}

static void on_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct bench_worker *w = arg;
    const bench_cfg_t *cfg = w->cfg;
    uint64_t now = now_ns();
    bench_cfg_t *mcfg = (bench_cfg_t *)cfg; /* only for the atomic loads */
    uint64_t stop = atomic_load_explicit(&mcfg->stop_ns, memory_order_relaxed);
    if (!w->stopping && (now >= cfg->win_end_ns || now >= stop))
        begin_stop(w, now);
    if (w->finished)
        return;
    if (!w->stopping) {
        check_timeouts(w, now);
    } else if (now >= w->drain_deadline_ns || atomic_load(&mcfg->hurry)) {
        /* Replies that never came: errors; then force everything shut. */
        for (unsigned i = 0; i < w->nconns && !w->finished; i++) {
            struct bconn *bc = &w->conns[i];
            if (bc->state == BC_OPEN && bc->recv != bc->sent && !atomic_load(&mcfg->hurry))
                conn_error(bc, BENCH_ERR_TIMEOUT, "%llu replies outstanding at the end",
                           (unsigned long long)(bc->sent - bc->recv));
            if (bc->state == BC_OPEN || bc->state == BC_CLOSING)
                conn_abort(bc);
        }
        if (!w->finished && now >= w->drain_deadline_ns + CLOSE_GRACE_NS) {
            crest_log(CREST_LOG_ERROR, "crest-bench: %u connections did not close", w->live);
            worker_finish(w);
        }
    }
    if (!w->finished)
        publish(w);
}

static void worker_finish(struct bench_worker *w) {
    if (w->finished)
        return;
    w->finished = true;
    w->stopping = true;
    w->end_ns = now_ns();
    crest_timer_stop(w->tick);
    if (w->tio) {
        crest_io_stop(w->tio);
        w->tio = NULL;
    }
    publish(w);
    crest_loop_stop(w->loop);
}

/* ---- the thread ------------------------------------------------------------ */

static int worker_setup(struct bench_worker *w) {
    const bench_cfg_t *cfg = w->cfg;
    int rc = crest_loop_create(&w->loop);
    if (rc < 0)
        return rc;
    crest_loop_set_data(w->loop, w);
    /* The load generator measures the server, not itself: its own loop's
     * slow-callback warnings would only be noise on a loaded machine. */
    crest_insight_opts_t io;
    crest_insight_opts_init(&io);
    io.enabled = false;
    if ((rc = crest_loop_set_insight(w->loop, &io)) < 0)
        return rc;
    if ((rc = crest_timer_create(w->loop, on_tick, w, &w->tick)) < 0)
        return rc;
    if ((rc = crest_timer_start(w->tick, TICK_MS, TICK_MS)) < 0)
        return rc;
    if (cfg->rate > 0) {
        w->ns_per_msg = 1e9 / cfg->rate;
        w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (w->tfd < 0)
            return -errno;
        if ((rc = crest_fd_register_at(w->tfd, CREST_FD_TIMERFD, "crest-bench rate timer")) < 0) {
            close(w->tfd);
            w->tfd = -1;
            return rc;
        }
        if ((rc = crest_io_start(w->loop, w->tfd, CREST_IO_READABLE, on_rate, w, &w->tio)) < 0)
            return rc;
        if ((rc = rate_arm(w, now_ns())) < 0)
            return rc;
    }
    return 0;
}

static void worker_teardown(struct bench_worker *w) {
    if (w->loop) {
        crest_conn_stats_t st;
        crest_loop_conn_stats(w->loop, &st);
        w->res->client_reads = st.reads;
        w->res->client_writes = st.writes;
    }
    if (w->tio)
        crest_io_stop(w->tio);
    w->tio = NULL;
    if (w->tfd >= 0)
        crest_fd_close(w->tfd);
    w->tfd = -1;
    if (w->tick)
        crest_timer_destroy(w->tick);
    w->tick = NULL;
    if (w->loop) {
        int leaked = crest_loop_destroy(w->loop);
        w->fds_leaked = leaked > 0 ? leaked : 0;
    }
    w->loop = NULL;
}

/* The measured window of this worker.  By time: the configured window, cut
 * short by a stop request or by the worker ending early.  With -n: from the
 * first request to the last reply. */
static void set_window(struct bench_worker *w) {
    const bench_cfg_t *cfg = w->cfg;
    bench_result_t *r = w->res;
    if (cfg->by_count) {
        if (w->first_send_ns && w->last_reply_ns > w->first_send_ns) {
            r->window_start_ns = w->first_send_ns;
            r->window_end_ns = w->last_reply_ns;
        }
        return;
    }
    uint64_t end = cfg->win_end_ns;
    uint64_t stop = atomic_load(&((bench_cfg_t *)cfg)->stop_ns);
    if (stop < end)
        end = stop;
    if (w->end_ns && w->end_ns < end)
        end = w->end_ns;
    r->window_start_ns = cfg->win_start_ns;
    r->window_end_ns = end > cfg->win_start_ns ? end : cfg->win_start_ns;
}

static void *worker_main(void *arg) {
    struct bench_worker *w = arg;
    w->err = worker_setup(w);
    if (w->err == 0) {
        connect_more(w);
        publish(w);
        if (!w->finished) {
            int rc = crest_loop_run(w->loop);
            if (rc < 0)
                w->err = rc;
        }
        set_window(w);
    }
    worker_teardown(w);
    atomic_store(&w->done, true);
    return NULL;
}

int bench_worker_start(const bench_cfg_t *cfg, unsigned index, bench_worker_t **wp) {
    struct bench_worker *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->cfg = cfg;
    w->index = index;
    w->tfd = -1;
    unsigned lanes = cfg->threads * (cfg->procs ? cfg->procs : 1);
    unsigned lane = cfg->proc_index * cfg->threads + index;
    w->nconns = cfg->conns / lanes + (lane < cfg->conns % lanes ? 1 : 0);
    w->conns = calloc(w->nconns ? w->nconns : 1, sizeof *w->conns);
    w->stamps = calloc((size_t)(w->nconns ? w->nconns : 1) * cfg->pipeline, sizeof *w->stamps);
    w->touched = calloc(w->nconns ? w->nconns : 1, sizeof *w->touched);
    w->res = malloc(sizeof *w->res);
    if (!w->conns || !w->stamps || !w->touched || !w->res) {
        free(w->conns);
        free(w->stamps);
        free(w->touched);
        free(w->res);
        free(w);
        return -ENOMEM;
    }
    bench_result_init(w->res);
    w->res->workers = 1;
    for (unsigned i = 0; i < w->nconns; i++) {
        w->conns[i].w = w;
        w->conns[i].id = lane + i * lanes;
        w->conns[i].stamp = w->stamps + (size_t)i * cfg->pipeline;
    }
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        free(w->conns);
        free(w->stamps);
        free(w->touched);
        free(w->res);
        free(w);
        return -rc;
    }
    *wp = w;
    return 0;
}

void bench_worker_progress(const bench_worker_t *w, bench_progress_t *out) {
    struct bench_worker *m = (struct bench_worker *)w; /* atomics only */
    out->replies = atomic_load_explicit(&m->pub_replies, memory_order_relaxed);
    out->open = atomic_load_explicit(&m->pub_open, memory_order_relaxed);
    out->errors = atomic_load_explicit(&m->pub_errors, memory_order_relaxed);
    out->done = atomic_load(&m->done);
}

int bench_worker_join(bench_worker_t *w, bench_result_t *into, int *fds_leaked) {
    pthread_join(w->thread, NULL);
    bench_result_merge(into, w->res);
    *fds_leaked = w->fds_leaked;
    int err = w->err;
    free(w->conns);
    free(w->stamps);
    free(w->touched);
    free(w->res);
    free(w);
    return err;
}
