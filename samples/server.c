/* The skeleton the crest sample servers share (see server.h).
 *
 * Threads and who touches what:
 *
 *   main thread   the control loop: SIGINT/SIGTERM watchers and the --stats
 *                 timer.  It never touches a worker's loop, connections or
 *                 listener; it only posts callbacks to the worker loops.
 *   worker i      its own loop and listener, and every connection that
 *                 listener accepts.  It posts back to the control loop when
 *                 it has its figures ready and when it is done.
 *
 * Shutdown, on the first SIGINT or SIGTERM:
 *   1. the control loop posts worker_shutdown to every worker;
 *   2. each worker closes its listener (no new connections), closes its
 *      connections gracefully (queued replies are still sent) and arms a
 *      grace timer; if connections are still open when it fires, they are
 *      aborted;
 *   3. once the last connection is gone the worker's loop has nothing left
 *      to wait for and crest_loop_run() returns by itself; the worker saves
 *      its figures, destroys its loop and posts "done";
 *   4. when every worker is done the control loop stops, the main thread
 *      joins the workers and prints the final report.
 * A second signal aborts every connection at once instead of waiting.
 */
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRACE_MS 2000     /* how long a shutdown waits for connections to drain */
#define MAX_THREADS 1024

/* The common options. */
struct config {
    const char *host;
    int port;
    const char *unix_path;
    unsigned threads;
    int sndbuf, rcvbuf;           /* 0: kernel default */
    bool nodelay, keepalive, quiet;
    unsigned max_conns;           /* per listener, so per thread */
    uint32_t idle_timeout_ms;
    uint32_t read_timeout_ms;
    uint64_t stats_ms;            /* 0: no --stats line */
};

/* One worker's counters, copied out of its loop on its own thread. */
struct figures {
    crest_conn_stats_t conn;
    crest_buf_stats_t buf;
    crest_listener_stats_t listener;
};

struct server;

struct worker {
    struct server *srv;
    unsigned index;
    pthread_t thread;

    /* Start-up: the main thread waits on ready, then reads the result. */
    int port;                     /* to bind */
    sem_t ready;
    int setup_rc;
    const char *setup_step;       /* what failed */
    char address[CREST_ADDR_STRLEN];
    int bound_port, sndbuf, rcvbuf;

    /* The worker thread's own. */
    crest_loop_t *loop;
    crest_listener_t *listener;
    crest_listener_stats_t listener_stats; /* kept when the listener closes */
    crest_timer_t *grace;
    bool stopping;

    /* Written by the worker, read by the main thread after a post (snap)
     * or after pthread_join (the rest). */
    struct figures snap;          /* for --stats */
    struct figures final;
    int run_rc;
    int leaked_fds;               /* crest_loop_destroy()'s count */

    /* The main thread may post to this worker's loop only while
     * accepting_posts is set: the worker clears it, under the lock, before
     * it destroys the loop. */
    pthread_mutex_t post_lock;
    bool accepting_posts;
};

struct server {
    server_proto_t *proto;
    struct config cfg;
    crest_handler_t handler;      /* the protocol's, on_open/on_close wrapped */

    crest_loop_t *loop;           /* the control loop, on the main thread */
    crest_signal_t *sigint, *sigterm;
    crest_timer_t *stats_timer;
    int signals_seen;

    struct worker *workers;
    unsigned created;             /* threads to join */
    unsigned running;             /* workers that set up and serve */
    unsigned done;                /* workers that finished (control loop) */

    /* --stats: a round posts worker_snapshot to every worker; the last one
     * to answer posts print_stats back to the control loop, which ends the
     * round.  No round starts while one is out (gathering). */
    bool gathering;
    atomic_uint gather_pending;
    struct figures prev;
    uint64_t prev_ms;
    uint64_t started_ms;
};

/* ------------------------------------------------------------------------
 * Figures
 * ------------------------------------------------------------------------ */

static void take_figures(struct worker *w, struct figures *f) {
    crest_loop_conn_stats(w->loop, &f->conn);
    crest_loop_buf_stats(w->loop, &f->buf);
    if (w->listener)
        crest_listener_get_stats(w->listener, &f->listener);
    else
        f->listener = w->listener_stats;
}

static void add_figures(struct figures *sum, const struct figures *f) {
    crest_conn_stats_t *s = &sum->conn;
    const crest_conn_stats_t *c = &f->conn;
    s->opened += c->opened;
    s->active += c->active;
    s->closed += c->closed;
    s->bytes_in += c->bytes_in;
    s->bytes_out += c->bytes_out;
    s->messages_in += c->messages_in;
    s->reads += c->reads;
    s->writes += c->writes;
    s->paused += c->paused;
    for (int r = 0; r < CREST_CLOSE_REASON_COUNT; r++)
        s->close_reasons[r] += c->close_reasons[r];
    sum->buf.allocated += f->buf.allocated;
    sum->buf.in_use += f->buf.in_use;
    if (f->buf.peak > sum->buf.peak)
        sum->buf.peak = f->buf.peak; /* the largest of any one loop */
    sum->buf.chunks_free += f->buf.chunks_free;
    sum->listener.accepted += f->listener.accepted;
    sum->listener.active += f->listener.active;
    sum->listener.refused_limit += f->listener.refused_limit;
    sum->listener.emfile += f->listener.emfile;
    sum->listener.accept_errors += f->listener.accept_errors;
}

/* RAW framing has no messages: count reads instead. */
static uint64_t messages(const struct server *srv, const crest_conn_stats_t *c) {
    return srv->proto->framing.kind == CREST_FRAMING_RAW ? c->reads : c->messages_in;
}

/* crest has one reason for both; say which limit it was. */
static const char *reason_name(const struct server *srv, crest_close_reason_t reason) {
    if (reason == CREST_CLOSE_TOO_LARGE && srv->proto->framing.kind == CREST_FRAMING_LINE)
        return "line too long";
    if (reason == CREST_CLOSE_TOO_LARGE && srv->proto->framing.kind == CREST_FRAMING_LENGTH)
        return "frame too large";
    return crest_close_reason_name(reason);
}

static const char *message_unit(const struct server *srv) {
    if (srv->proto->framing.kind == CREST_FRAMING_RAW || !srv->proto->message_unit)
        return "reads";
    return srv->proto->message_unit;
}

/* ------------------------------------------------------------------------
 * Connections: the wrapped handler (worker threads)
 * ------------------------------------------------------------------------ */

/* "conn 127.0.0.1:40000"; "conn fd 9" for a Unix-domain client, which
 * has no address; "conn" if the address is not known. */
static void conn_name(crest_conn_t *c, char *buf, size_t size) {
    char peer[CREST_ADDR_STRLEN];
    if (crest_conn_peer(c, peer, sizeof peer) < 0)
        snprintf(buf, size, "conn");
    else if (strcmp(peer, "unix:") == 0)
        snprintf(buf, size, "conn fd %d", crest_conn_fd(c));
    else
        snprintf(buf, size, "conn %s", peer);
}

static void on_open(crest_conn_t *c) {
    struct worker *w = crest_conn_handler_ctx(c);
    if (!w->srv->cfg.quiet) {
        char name[CREST_ADDR_STRLEN + 8];
        conn_name(c, name, sizeof name);
        printf("%s open\n", name);
    }
    if (w->srv->proto->handler.on_open)
        w->srv->proto->handler.on_open(c);
}

static void drain_check(crest_loop_t *loop, void *arg);

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct worker *w = crest_conn_handler_ctx(c);
    if (w->srv->proto->handler.on_close)
        w->srv->proto->handler.on_close(c, reason, err);
    if (!w->srv->cfg.quiet) {
        char name[CREST_ADDR_STRLEN + 8];
        conn_name(c, name, sizeof name);
        if (err)
            printf("%s closed: %s (%s)\n", name, reason_name(w->srv, reason),
                   crest_strerror(err));
        else
            printf("%s closed: %s\n", name, reason_name(w->srv, reason));
    }
    /* Shutting down: see whether that was the last one once the close is
     * complete (the connection is released after this callback). */
    if (w->stopping)
        crest_loop_defer(w->loop, drain_check, w);
}

/* ------------------------------------------------------------------------
 * Workers
 * ------------------------------------------------------------------------ */

static void listen_address(const struct config *cfg, int port, char *buf, size_t size) {
    if (cfg->unix_path)
        snprintf(buf, size, "unix:%s", cfg->unix_path);
    else if (strchr(cfg->host, ':') && cfg->host[0] != '[')
        snprintf(buf, size, "[%s]:%d", cfg->host, port); /* a bare IPv6 address */
    else
        snprintf(buf, size, "%s:%d", cfg->host, port);
}

static void close_listener(struct worker *w) {
    if (!w->listener)
        return;
    crest_listener_get_stats(w->listener, &w->listener_stats);
    crest_listener_close(w->listener);
    w->listener = NULL;
}

/* Connections are gone (or the grace period is over and they were aborted):
 * with the listener closed and the grace timer stopped, the loop has
 * nothing left and crest_loop_run() returns. */
static void drain_check(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    crest_conn_stats_t st;
    crest_loop_conn_stats(loop, &st);
    if (st.active == 0)
        crest_timer_stop(w->grace);
}

static void on_grace_over(crest_timer_t *t, void *arg) {
    (void)t;
    struct worker *w = arg;
    crest_conn_stats_t st;
    crest_loop_conn_stats(w->loop, &st);
    printf("%s: grace period over: aborting %" PRIu64 " connection%s\n", w->srv->proto->name,
           st.active, st.active == 1 ? "" : "s");
    crest_loop_close_all(w->loop, true);
}

/* Posted by the control loop on the first signal. */
static void worker_shutdown(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    if (w->stopping)
        return;
    w->stopping = true;
    close_listener(w);
    crest_loop_close_all(loop, false);
    crest_timer_start(w->grace, GRACE_MS, 0);
    drain_check(loop, w);
}

/* Posted by the control loop on a second signal. */
static void worker_abort(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    w->stopping = true;
    close_listener(w);
    crest_loop_close_all(loop, true);
    drain_check(loop, w);
}

static void gather_done(struct server *srv);

/* Posted by the control loop for --stats. */
static void worker_snapshot(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct worker *w = arg;
    take_figures(w, &w->snap);
    gather_done(w->srv);
}

static int worker_setup(struct worker *w) {
    const struct server *srv = w->srv;
    const struct config *cfg = &srv->cfg;
    int rc = crest_loop_create(&w->loop);
    if (rc < 0) {
        w->setup_step = "crest_loop_create";
        return rc;
    }
    rc = crest_timer_create(w->loop, on_grace_over, w, &w->grace);
    if (rc < 0) {
        w->setup_step = "crest_timer_create";
        return rc;
    }

    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.reuseport = cfg->threads > 1; /* one listener per thread, same port */
    lo.max_conns = cfg->max_conns;
    lo.conn.framing = srv->proto->framing;
    lo.conn.nodelay = cfg->nodelay;
    lo.conn.keepalive = cfg->keepalive;
    lo.conn.idle_timeout_ms = cfg->idle_timeout_ms;
    lo.conn.read_timeout_ms = cfg->read_timeout_ms;
    lo.conn.sndbuf = cfg->sndbuf;  /* set on the listener, inherited */
    lo.conn.rcvbuf = cfg->rcvbuf;

    char addr[CREST_ADDR_STRLEN + 16];
    listen_address(cfg, w->port, addr, sizeof addr);
    rc = crest_listen(w->loop, addr, &lo, &srv->handler, w, &w->listener);
    if (rc < 0) {
        w->setup_step = "listen";
        return rc;
    }
    crest_listener_address(w->listener, w->address, sizeof w->address);
    w->bound_port = crest_listener_port(w->listener);
    w->sndbuf = crest_listener_sndbuf(w->listener);
    w->rcvbuf = crest_listener_rcvbuf(w->listener);
    return 0;
}

/* Save the figures and release everything the worker's loop holds. */
static void worker_finish(struct worker *w) {
    if (w->loop) {
        close_listener(w);
        take_figures(w, &w->final);
    }
    crest_timer_destroy(w->grace);
    w->grace = NULL;
    pthread_mutex_lock(&w->post_lock);
    w->accepting_posts = false;
    pthread_mutex_unlock(&w->post_lock);
    if (w->loop)
        w->leaked_fds = crest_loop_destroy(w->loop);
    w->loop = NULL;
}

static void on_worker_done(crest_loop_t *loop, void *arg);

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->setup_rc = worker_setup(w);
    if (w->setup_rc < 0) {
        worker_finish(w);
        sem_post(&w->ready);
        return NULL;
    }
    pthread_mutex_lock(&w->post_lock);
    w->accepting_posts = true;
    pthread_mutex_unlock(&w->post_lock);
    sem_post(&w->ready);

    w->run_rc = crest_loop_run(w->loop); /* until drained after a shutdown */
    if (w->run_rc < 0) {
        fprintf(stderr, "%s: thread %u: loop failed: %s\n", w->srv->proto->name, w->index,
                crest_strerror(w->run_rc));
        close_listener(w);
        crest_loop_close_all(w->loop, true);
        crest_loop_run_once(w->loop, 0);
    }
    worker_finish(w);
    crest_loop_post(w->srv->loop, on_worker_done, w);
    return NULL;
}

/* Post cb to a worker's loop unless it is gone.  Main thread. */
static bool worker_post(struct worker *w, crest_cb cb) {
    pthread_mutex_lock(&w->post_lock);
    bool posted = w->accepting_posts && crest_loop_post(w->loop, cb, w) == 0;
    pthread_mutex_unlock(&w->post_lock);
    return posted;
}

/* ------------------------------------------------------------------------
 * The control loop (main thread)
 * ------------------------------------------------------------------------ */

static void print_stats(crest_loop_t *loop, void *arg) {
    struct server *srv = arg;
    struct figures sum = {0};
    for (unsigned i = 0; i < srv->running; i++)
        add_figures(&sum, &srv->workers[i].snap);
    uint64_t now = crest_loop_now(loop);
    double secs = (double)(now - srv->prev_ms) / 1000.0;
    if (secs <= 0)
        secs = 1e-3;
    const crest_conn_stats_t *c = &sum.conn, *p = &srv->prev.conn;
    printf("stats: %" PRIu64 " conns, %.0f %s/s, %.2f MB/s in, %.2f MB/s out, %" PRIu64
           " fds open, %" PRIu64 " buffer bytes in use\n",
           c->active, (double)(messages(srv, c) - messages(srv, p)) / secs, message_unit(srv),
           (double)(c->bytes_in - p->bytes_in) / secs / 1e6,
           (double)(c->bytes_out - p->bytes_out) / secs / 1e6, crest_fd_open_count(),
           sum.buf.in_use);
    srv->prev = sum;
    srv->prev_ms = now;
    srv->gathering = false;
}

static void gather_done(struct server *srv) {
    if (atomic_fetch_sub(&srv->gather_pending, 1) == 1)
        crest_loop_post(srv->loop, print_stats, srv);
}

static void on_stats_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct server *srv = arg;
    if (srv->gathering)
        return; /* the last round is not in yet */
    srv->gathering = true;
    /* One extra count, dropped at the end, so that the round cannot end
     * while it is still being posted. */
    atomic_store(&srv->gather_pending, srv->running + 1);
    for (unsigned i = 0; i < srv->running; i++) {
        struct worker *w = &srv->workers[i];
        if (worker_post(w, worker_snapshot))
            continue;
        /* That worker has finished: use its final figures. */
        pthread_mutex_lock(&w->post_lock);
        if (!w->accepting_posts)
            w->snap = w->final;
        pthread_mutex_unlock(&w->post_lock);
        gather_done(srv);
    }
    gather_done(srv);
}

static void on_signal(crest_signal_t *sig, int signo, void *arg) {
    (void)sig;
    struct server *srv = arg;
    const char *name = signo == SIGINT ? "SIGINT" : "SIGTERM";
    if (srv->signals_seen++ == 0) {
        printf("%s: %s: closing the listener, draining connections (at most %.1f s)\n",
               srv->proto->name, name, GRACE_MS / 1000.0);
        if (srv->stats_timer)
            crest_timer_stop(srv->stats_timer);
        for (unsigned i = 0; i < srv->running; i++)
            worker_post(&srv->workers[i], worker_shutdown);
    } else {
        printf("%s: %s again: aborting every connection now\n", srv->proto->name, name);
        for (unsigned i = 0; i < srv->running; i++)
            worker_post(&srv->workers[i], worker_abort);
    }
}

static void on_worker_done(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    if (++w->srv->done == w->srv->running)
        crest_loop_stop(loop);
}

/* ------------------------------------------------------------------------
 * Start-up
 * ------------------------------------------------------------------------ */

/* Start the workers one by one: the first binds the port asked for (0 lets
 * the kernel pick one), the others bind the first one's port. */
static int start_workers(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    srv->workers = calloc(cfg->threads, sizeof *srv->workers);
    if (!srv->workers)
        return -ENOMEM;
    for (unsigned i = 0; i < cfg->threads; i++) {
        struct worker *w = &srv->workers[i];
        w->srv = srv;
        w->index = i;
        w->port = i == 0 ? cfg->port : srv->workers[0].bound_port;
        sem_init(&w->ready, 0, 0);
        pthread_mutex_init(&w->post_lock, NULL);
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            fprintf(stderr, "%s: pthread_create: %s\n", srv->proto->name, crest_strerror(rc));
            return -rc;
        }
        srv->created++;
        while (sem_wait(&w->ready) < 0 && errno == EINTR) {
        }
        if (w->setup_rc < 0) {
            char addr[CREST_ADDR_STRLEN + 16];
            listen_address(cfg, w->port, addr, sizeof addr);
            fprintf(stderr, "%s: %s %s: %s%s\n", srv->proto->name, w->setup_step, addr,
                    crest_strerror(w->setup_rc),
                    w->setup_rc == -EINVAL ? " (--host takes an IP address or localhost)" : "");
            return w->setup_rc;
        }
        srv->running++;
    }
    return 0;
}

static void join_workers(struct server *srv) {
    for (unsigned i = 0; i < srv->created; i++) {
        pthread_join(srv->workers[i].thread, NULL);
        sem_destroy(&srv->workers[i].ready);
        pthread_mutex_destroy(&srv->workers[i].post_lock);
    }
}

static void describe_framing(const crest_framing_t *f, char *buf, size_t size) {
    size_t max = f->max_message ? f->max_message : CREST_FRAMING_DEFAULT_MAX;
    switch (f->kind) {
    case CREST_FRAMING_RAW:
        snprintf(buf, size, "raw bytes");
        break;
    case CREST_FRAMING_LINE:
        snprintf(buf, size, "lines of at most %zu bytes", max);
        break;
    case CREST_FRAMING_LENGTH:
        snprintf(buf, size, "frames with a %u-byte %s length, at most %zu bytes",
                 (unsigned)f->header_bytes, f->little_endian ? "little-endian" : "big-endian",
                 max);
        break;
    }
}

static void announce(const struct server *srv) {
    const struct config *cfg = &srv->cfg;
    const struct worker *w0 = &srv->workers[0];
    char framing[128];
    describe_framing(&srv->proto->framing, framing, sizeof framing);
    printf("%s %s: %s, %u thread%s%s\n", srv->proto->name, crest_version(), framing,
           cfg->threads, cfg->threads == 1 ? "" : "s",
           cfg->threads > 1 ? " (one SO_REUSEPORT listener each)" : "");
    if (cfg->sndbuf || cfg->rcvbuf) {
        /* What the kernel applied: Linux doubles the request (and caps it at
         * wmem_max/rmem_max first), see sockopt.h. */
        char snd[48] = "kernel default", rcv[48] = "kernel default";
        if (cfg->sndbuf)
            snprintf(snd, sizeof snd, "asked %d", cfg->sndbuf);
        if (cfg->rcvbuf)
            snprintf(rcv, sizeof rcv, "asked %d", cfg->rcvbuf);
        printf("socket buffers: sndbuf %d bytes (%s), rcvbuf %d bytes (%s)\n", w0->sndbuf, snd,
               w0->rcvbuf, rcv);
    }
    /* Tests wait for this line: print it last, once every thread accepts. */
    printf("listening on %s\n", w0->address);
    fflush(stdout);
}

/* ------------------------------------------------------------------------
 * The final report
 * ------------------------------------------------------------------------ */

static int report(const struct server *srv, int main_leaked, uint64_t uptime_ms) {
    struct figures sum = {0};
    int leaked = main_leaked;
    bool failed = false;
    for (unsigned i = 0; i < srv->running; i++) {
        add_figures(&sum, &srv->workers[i].final);
        leaked += srv->workers[i].leaked_fds;
        failed |= srv->workers[i].run_rc < 0;
    }
    const crest_conn_stats_t *c = &sum.conn;
    const crest_listener_stats_t *l = &sum.listener;

    printf("%s: final report after %.1f s\n", srv->proto->name, (double)uptime_ms / 1000.0);
    printf("  connections: %" PRIu64 " served, %" PRIu64 " refused (--max-conns), %" PRIu64
           " dropped (out of fds), %" PRIu64 " accept errors\n",
           c->opened, l->refused_limit, l->emfile, l->accept_errors);
    printf("  messages: %" PRIu64 " %s\n", messages(srv, c), message_unit(srv));
    printf("  bytes: %" PRIu64 " in, %" PRIu64 " out (%" PRIu64 " reads, %" PRIu64
           " writes)\n",
           c->bytes_in, c->bytes_out, c->reads, c->writes);
    printf("  close reasons:");
    bool any = false;
    for (int r = 0; r < CREST_CLOSE_REASON_COUNT; r++) {
        if (c->close_reasons[r]) {
            printf("%s %s %" PRIu64, any ? "," : "", reason_name(srv, (crest_close_reason_t)r),
                   c->close_reasons[r]);
            any = true;
        }
    }
    printf("%s\n", any ? "" : " none");
    if (c->paused)
        printf("  reading paused %" PRIu64 " time%s (output above high water)\n", c->paused,
               c->paused == 1 ? "" : "s");

    crest_fd_counts_t fds;
    crest_fd_counts(CREST_FD_ALL, &fds);
    printf("  fds: %" PRIu64 " opened, %" PRIu64 " closed, peak %" PRIu64 " open at once\n",
           fds.opened, fds.closed, fds.peak);
    if (fds.bad_closes) /* double closes caught by the registry: a bug somewhere */
        printf("  fds: %" PRIu64 " bad closes (see the log)\n", fds.bad_closes);
    printf("  buffer bytes outstanding: %" PRIu64 " (peak %" PRIu64 " in one thread)\n",
           sum.buf.in_use, sum.buf.peak);
    uint64_t open_now = crest_fd_open_count();
    if (open_now == 0 && leaked == 0)
        printf("  0 fds leaked\n");
    else
        crest_fd_report(stdout); /* lists each fd still open, with its origin */
    fflush(stdout);

    if (open_now || leaked || sum.buf.in_use)
        return SERVER_EXIT_LEAK;
    return failed ? SERVER_EXIT_ERROR : SERVER_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------ */

enum {
    OPT_HOST = 128,
    OPT_UNIX,
    OPT_SNDBUF,
    OPT_RCVBUF,
    OPT_NODELAY,
    OPT_NO_NODELAY,
    OPT_KEEPALIVE,
    OPT_MAX_CONNS,
    OPT_IDLE_TIMEOUT,
    OPT_READ_TIMEOUT,
    OPT_STATS
};

static const struct option common_options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, 'p'},
    {"unix", required_argument, NULL, OPT_UNIX},
    {"threads", required_argument, NULL, 't'},
    {"sndbuf", required_argument, NULL, OPT_SNDBUF},
    {"rcvbuf", required_argument, NULL, OPT_RCVBUF},
    {"nodelay", no_argument, NULL, OPT_NODELAY},
    {"no-nodelay", no_argument, NULL, OPT_NO_NODELAY},
    {"keepalive", no_argument, NULL, OPT_KEEPALIVE},
    {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"read-timeout", required_argument, NULL, OPT_READ_TIMEOUT},
    {"stats", required_argument, NULL, OPT_STATS},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
};

#define N_COMMON (sizeof common_options / sizeof common_options[0])
#define MAX_PROTO_OPTIONS 32

static void usage(const server_proto_t *proto, FILE *out) {
    fprintf(out,
            "Usage: %s [OPTION]...\n"
            "%s\n"
            "\n"
            "Listening:\n"
            "      --host ADDRESS      IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
            "  -p, --port PORT         TCP port (default %d; 0 picks a free port)\n"
            "      --unix PATH         listen on a Unix-domain socket instead of TCP\n"
            "  -t, --threads N         worker threads, each with its own loop and its own\n"
            "                          SO_REUSEPORT listener on the same port (default 1)\n"
            "      --max-conns N       per thread: connections past N are accepted and\n"
            "                          closed at once (default: no limit)\n"
            "Connections:\n"
            "      --nodelay           TCP_NODELAY on accepted sockets (the default)\n"
            "      --no-nodelay        leave Nagle's algorithm on\n"
            "      --keepalive         SO_KEEPALIVE, with the system's timings\n"
            "      --sndbuf BYTES      SO_SNDBUF; the size the kernel applied is printed\n"
            "      --rcvbuf BYTES      SO_RCVBUF; likewise (default for both: autotuned)\n"
            "      --idle-timeout SECONDS  close a connection idle this long (0.5 works;\n"
            "                          default: never)\n"
            "      --read-timeout SECONDS  close a connection whose message (a line or a\n"
            "                          frame) is still unfinished this long after its\n"
            "                          first byte came (default: never)\n"
            "Output:\n"
            "      --stats SECONDS     print live figures every SECONDS\n"
            "  -q, --quiet             no per-connection or stats lines (the final report\n"
            "                          still prints)\n"
            "  -h, --help              this help\n"
            "  -V, --version           the server's and crest's version\n",
            proto->name, proto->summary, proto->default_port);
    if (proto->options_help)
        fprintf(out, "%s:\n%s", proto->name, proto->options_help);
    fprintf(out,
            "\n"
            "BYTES take a K, M or G suffix (KiB, MiB, GiB).\n"
            "On SIGINT or SIGTERM the server stops accepting, lets connections drain for at\n"
            "most %d s (a second signal cuts that short), then prints its final report.\n"
            "Exit status: 0 clean; 1 error; 2 bad usage; 3 fds or buffers leaked.\n",
            GRACE_MS / 1000);
}

static const char *prog = "server"; /* for messages: the protocol's name */

static int bad_value(const char *option, const char *arg, const char *why) {
    fprintf(stderr, "%s: --%s %s: %s\n", prog, option, arg, why);
    return -1;
}

static int parse_uint(const char *option, const char *arg, unsigned long long min,
                      unsigned long long max, unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-')
        return bad_value(option, arg, "not a number");
    if (v < min || v > max) {
        char why[96];
        snprintf(why, sizeof why, "must be between %llu and %llu", min, max);
        return bad_value(option, arg, why);
    }
    *out = v;
    return 0;
}

int server_parse_size(const char *option, const char *arg, size_t min, size_t max, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg || arg[0] == '-')
        return bad_value(option, arg, "not a size");
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end || (shift && v > (ULLONG_MAX >> shift)))
        return bad_value(option, arg, "not a size (a number, then K, M or G)");
    v <<= shift;
    if (v < min || v > max) {
        char why[96];
        snprintf(why, sizeof why, "must be between %zu and %zu bytes", min, max);
        return bad_value(option, arg, why);
    }
    *out = (size_t)v;
    return 0;
}

/* Seconds, fractions allowed, to milliseconds (at least 1 ms unless 0). */
static int parse_seconds(const char *option, const char *arg, uint64_t max_ms, uint64_t *ms) {
    char *end;
    errno = 0;
    double s = strtod(arg, &end);
    if (errno || end == arg || *end || !(s >= 0)) /* !(s >= 0) is true for NaN too */
        return bad_value(option, arg, "not a number of seconds");
    double v = s * 1000.0;
    if (v > (double)max_ms)
        return bad_value(option, arg, "too long");
    *ms = (uint64_t)v;
    if ((double)*ms < v)
        (*ms)++; /* round up: 0.0001 s is 1 ms, not "off" */
    return 0;
}

enum { PARSE_OK = -1 }; /* otherwise: exit with this code */

static int parse_options(struct server *srv, int argc, char **argv) {
    server_proto_t *proto = srv->proto;
    struct config *cfg = &srv->cfg;
    prog = proto->name;
    *cfg = (struct config){
        .host = "127.0.0.1", .port = proto->default_port, .threads = 1, .nodelay = true};

    /* getopt_long wants one table: the common options, then the protocol's. */
    struct option all[N_COMMON + MAX_PROTO_OPTIONS + 1];
    size_t n = 0;
    for (size_t i = 0; i < N_COMMON; i++)
        all[n++] = common_options[i];
    for (const struct option *o = proto->options; o && o->name; o++) {
        if (n == N_COMMON + MAX_PROTO_OPTIONS)
            break;
        all[n++] = *o;
    }
    all[n] = (struct option){0};

    int opt;
    unsigned long long u;
    size_t size;
    uint64_t ms;
    while ((opt = getopt_long(argc, argv, "p:t:qhV", all, NULL)) != -1) {
        switch (opt) {
        case OPT_HOST:
            cfg->host = optarg;
            break;
        case 'p':
            if (parse_uint("port", optarg, 0, 65535, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->port = (int)u;
            break;
        case OPT_UNIX:
            cfg->unix_path = optarg;
            break;
        case 't':
            if (parse_uint("threads", optarg, 1, MAX_THREADS, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->threads = (unsigned)u;
            break;
        case OPT_SNDBUF:
        case OPT_RCVBUF:
            if (server_parse_size(opt == OPT_SNDBUF ? "sndbuf" : "rcvbuf", optarg, 1,
                                  INT_MAX / 2, &size) < 0)
                return SERVER_EXIT_USAGE;
            *(opt == OPT_SNDBUF ? &cfg->sndbuf : &cfg->rcvbuf) = (int)size;
            break;
        case OPT_NODELAY:
        case OPT_NO_NODELAY:
            cfg->nodelay = opt == OPT_NODELAY;
            break;
        case OPT_KEEPALIVE:
            cfg->keepalive = true;
            break;
        case OPT_MAX_CONNS:
            if (parse_uint("max-conns", optarg, 0, UINT_MAX, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->max_conns = (unsigned)u;
            break;
        case OPT_IDLE_TIMEOUT:
            if (parse_seconds("idle-timeout", optarg, UINT32_MAX, &ms) < 0)
                return SERVER_EXIT_USAGE;
            cfg->idle_timeout_ms = (uint32_t)ms;
            break;
        case OPT_READ_TIMEOUT:
            if (parse_seconds("read-timeout", optarg, UINT32_MAX, &ms) < 0)
                return SERVER_EXIT_USAGE;
            cfg->read_timeout_ms = (uint32_t)ms;
            break;
        case OPT_STATS:
            if (parse_seconds("stats", optarg, 86400000, &ms) < 0)
                return SERVER_EXIT_USAGE;
            cfg->stats_ms = ms;
            break;
        case 'q':
            cfg->quiet = true;
            break;
        case 'h':
            usage(proto, stdout);
            return SERVER_EXIT_OK;
        case 'V':
            printf("%s (crest %s)\n", proto->name, crest_version());
            return SERVER_EXIT_OK;
        case '?':
            fprintf(stderr, "Try '%s --help'.\n", proto->name);
            return SERVER_EXIT_USAGE;
        default:
            if (!proto->parse_option || proto->parse_option(proto, opt, optarg) < 0)
                return SERVER_EXIT_USAGE;
            break;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'; try '%s --help'.\n", proto->name,
                argv[optind], proto->name);
        return SERVER_EXIT_USAGE;
    }
    if (cfg->unix_path && cfg->threads > 1) {
        /* SO_REUSEPORT does not share a Unix socket path between listeners. */
        fprintf(stderr, "%s: --unix works with one thread only\n", proto->name);
        return SERVER_EXIT_USAGE;
    }
    if (proto->configured && proto->configured(proto) < 0)
        return SERVER_EXIT_USAGE;
    return PARSE_OK;
}

/* ------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------ */

static int fail(const server_proto_t *proto, const char *what, int rc) {
    fprintf(stderr, "%s: %s: %s\n", proto->name, what, crest_strerror(rc));
    return SERVER_EXIT_ERROR;
}

int server_main(int argc, char **argv, server_proto_t *proto) {
    static struct server srv; /* zeroed; outlives every thread */
    srv.proto = proto;
    /* One line at a time even into a pipe: tests read "listening on" and
     * the report as they come. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    int rc = parse_options(&srv, argc, argv);
    if (rc != PARSE_OK)
        return rc;
    if (srv.cfg.quiet)
        crest_log_set_level(CREST_LOG_WARN);

    /* The skeleton watches on_open and on_close; the protocol keeps the
     * rest of its handler. */
    srv.handler = proto->handler;
    srv.handler.on_open = on_open;
    srv.handler.on_close = on_close;

    /* Block SIGINT and SIGTERM before any thread starts, so that every
     * worker inherits the mask and the signals reach only the control
     * loop's signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if ((rc = crest_loop_create(&srv.loop)) < 0)
        return fail(proto, "crest_loop_create", rc);
    if ((rc = crest_signal_start(srv.loop, SIGINT, on_signal, &srv, &srv.sigint)) < 0 ||
        (rc = crest_signal_start(srv.loop, SIGTERM, on_signal, &srv, &srv.sigterm)) < 0)
        return fail(proto, "crest_signal_start", rc);
    if (srv.cfg.stats_ms && !srv.cfg.quiet) {
        if ((rc = crest_timer_create(srv.loop, on_stats_tick, &srv, &srv.stats_timer)) < 0)
            return fail(proto, "crest_timer_create", rc);
        crest_timer_start(srv.stats_timer, srv.cfg.stats_ms, srv.cfg.stats_ms);
    }

    int code = SERVER_EXIT_OK;
    if (start_workers(&srv) < 0) {
        /* Stop the ones that did start; nothing is reported. */
        for (unsigned i = 0; i < srv.running; i++)
            worker_post(&srv.workers[i], worker_abort);
        code = SERVER_EXIT_ERROR;
    } else {
        announce(&srv);
        srv.started_ms = srv.prev_ms = crest_loop_now(srv.loop);
        rc = crest_loop_run(srv.loop); /* until every worker is done */
        if (rc < 0) {
            code = fail(proto, "control loop", rc);
            for (unsigned i = 0; i < srv.running; i++)
                worker_post(&srv.workers[i], worker_abort);
        }
    }
    uint64_t uptime_ms = crest_loop_now(srv.loop) - srv.started_ms;
    join_workers(&srv);

    crest_signal_stop(srv.sigint);
    crest_signal_stop(srv.sigterm);
    crest_timer_destroy(srv.stats_timer);
    int main_leaked = crest_loop_destroy(srv.loop);
    if (code == SERVER_EXIT_OK)
        code = report(&srv, main_leaked, uptime_ms);
    free(srv.workers);
    return code;
}
