/* The skeleton the crest sample servers share (see server.h).
 *
 * Processes, threads, and who touches what:
 *
 *   supervisor    only with --workers N (N > 1): the parent process.  It
 *                 forks the N worker processes before any crest loop exists
 *                 (a loop must never cross a fork), then runs a small loop
 *                 of its own that watches SIGINT/SIGTERM and one pipe per
 *                 worker.  A worker writes "ready" (its listening address)
 *                 and, at exit, its final figures to its pipe; the
 *                 supervisor prints "listening on" once every worker is
 *                 ready, turns a signal into SIGTERM to every worker, and
 *                 prints the summed final report.  Each worker is a whole
 *                 server process as below, with its own fd limit.
 *   main thread   of a server process (the only one, or a worker): the
 *                 control loop, with the SIGINT/SIGTERM watchers and the
 *                 --stats timer.  It never touches a worker thread's loop,
 *                 connections or listener; it only posts callbacks to them.
 *   worker i      thread i of a crest_group (group.h): its own loop and
 *                 listener, and every connection that listener accepts.  It
 *                 posts back to the control loop when it has its figures
 *                 ready and when it is done.
 *
 * Listeners: with several threads or processes every loop has its own
 * SO_REUSEPORT listener on the same port and the kernel spreads new
 * connections over them.  The group sets its loops up concurrently, so with
 * --port 0 the port is picked before any of them: a throwaway socket with
 * SO_REUSEPORT, bound to port 0 and never listening (so no connection is
 * ever queued on it), holds the port the kernel chose until every listener
 * is bound to it, and is closed then.
 *
 * Socket activation: started by systemd (or systemd-socket-activate) with
 * listening sockets passed in LISTEN_FDS (activation.h), the server adopts
 * them (crest_listener_adopt) instead of binding --host/--port; with
 * --threads N each worker adopts a dup() of each, so they all accept from
 * the same sockets.
 *
 * Shutdown, on the first SIGINT or SIGTERM (a worker process watches
 * SIGTERM only: the supervisor forwards both as SIGTERM, and a terminal's
 * Ctrl-C, which reaches the whole process group, must not count twice):
 *   1. the control loop posts worker_shutdown to every worker thread;
 *   2. each worker keeps its listeners' figures, then crest_loop_shutdown()
 *      closes its listeners (no new connections), closes its connections
 *      gracefully (queued replies are still sent) and, if connections are
 *      still open after the grace period, aborts them;
 *   3. once the last connection is gone crest calls shutdown_done, which
 *      stops the worker's loop; the group calls group_fini on that thread,
 *      which saves the figures and posts "done"; the group then destroys
 *      the loop;
 *   4. when every worker is done the control loop stops, the main thread
 *      joins the group and prints the final report (a worker process sends
 *      it to the supervisor instead).
 * A second signal aborts every connection at once instead of waiting.
 */
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#define GRACE_MS 2000     /* how long a shutdown waits for connections to drain */
#define MAX_THREADS 1024
#define MAX_WORKERS 256
#define MAX_PASSED 16     /* listening sockets adopted from LISTEN_FDS */

/* The common options. */
struct config {
    const char *host;
    int port;
    const char *unix_path;
    unsigned threads;             /* per process */
    unsigned workers;             /* processes; 1: no supervisor */
    unsigned proxy;               /* CREST_PROXY_*: expect a PROXY header */
    int sndbuf, rcvbuf;           /* 0: kernel default */
    bool nodelay, keepalive, quiet;
    unsigned max_conns;           /* per listener, so per thread */
    int backlog;                  /* 0: crest's default */
    uint32_t idle_timeout_ms;
    uint32_t read_timeout_ms;
    uint64_t stats_ms;            /* 0: no --stats line */

    /* Latency insight (insight.h, doctor.h) */
    uint64_t doctor_ms;           /* --doctor: window period; 0: none */
    const char *doctor_json;      /* --doctor-json PATH, or NULL */
    const char *admin;            /* --admin HOST:PORT, or NULL */
    bool timestamps;              /* --timestamps: rx_timestamps */
    bool no_insight;              /* --no-insight: enabled = false */
    int timing;                   /* --timing: CREST_TIMING_*, -1: default */
    uint32_t slow_us;             /* --slow-us; 0: crest's default */
    uint32_t watchdog_ms;         /* --watchdog; 0: not started */
    /* Knobs that make a slow or leaky handler (--work, --work-once,
     * --fd-leak): the skeleton wraps on_data/on_message only when one is
     * set, so they cost nothing otherwise. */
    uint64_t work_us;
    uint64_t work_once_us;
    bool fd_leak;
};

/* One worker's counters, copied out of its loop on its own thread. */
struct figures {
    crest_conn_stats_t conn;
    crest_buf_stats_t buf;
    crest_listener_stats_t listener;
    uint64_t proto[SERVER_PROTO_COUNTERS]; /* the protocol's loop_counters */
};

/* What a server process ends with: printed as the final report, or sent to
 * the supervisor, which adds them up. */
struct totals {
    struct figures sum;
    crest_fd_counts_t fds;        /* the process's fd registry */
    uint64_t open_now;            /* fds the registry still holds */
    uint64_t leaked;              /* what the loops reported leaked */
    uint32_t failed;              /* loops (or processes) that failed */
    uint32_t exit_code;
};

/* A worker process's messages to the supervisor, one write() each: a
 * pipe write of at most PIPE_BUF bytes is never split or interleaved.
 * Raw structs: both ends are the same binary. */
enum { MSG_READY = 1, MSG_REPORT = 2 };

struct wmsg {
    uint32_t type;
    uint32_t index;
    union {
        struct {
            char address[CREST_ADDR_STRLEN];
            int sndbuf, rcvbuf;
        } ready;
        struct totals totals;
    } u;
};

_Static_assert(sizeof(struct wmsg) <= PIPE_BUF, "a message is one atomic pipe write");

struct server;

struct worker {
    struct server *srv;
    unsigned index;

    /* Set up by group_init, on the worker thread; read by the main thread
     * once crest_group_start() has returned. */
    int setup_rc;
    const char *setup_step;       /* what failed */
    char address[CREST_ADDR_STRLEN];
    int sndbuf, rcvbuf;

    /* The worker thread's own. */
    crest_loop_t *loop;
    crest_listener_t *listeners[MAX_PASSED]; /* one, or one per passed socket */
    unsigned nlisteners;
    crest_listener_stats_t listener_stats; /* kept when the listeners close */
    crest_timer_t *grace;         /* says when the grace period ends */
    bool stopping;
    bool proto_ready;             /* the protocol's loop_init succeeded */

    /* Written by the worker, read by the main thread after a post (snap)
     * or after crest_group_join() (final). */
    struct figures snap;          /* for --stats */
    struct figures final;
    crest_insight_t *ins_final;   /* the loop's figures for the whole run,
                                     taken by group_fini (NULL if out of
                                     memory); freed by serve() */

    /* The main thread may post to this worker's loop only while
     * accepting_posts is set: group_fini clears it, under the lock, before
     * the group destroys the loop. */
    pthread_mutex_t post_lock;
    bool accepting_posts;
};

struct server {
    server_proto_t *proto;
    struct config cfg;
    crest_handler_t handler;      /* the protocol's, on_open/on_close wrapped */

    int port;                     /* what every listener binds */
    int passed;                   /* sockets passed by systemd (LISTEN_FDS),
                                     at fds 3..; 0: bind --host/--port */
    int reserve_fd;               /* holds a port picked for --port 0, or -1 */

    /* In a worker process: its index, the pipe to the supervisor, and
     * "worker 2: " to tag the lines it prints.  -1 and "" otherwise. */
    int report_fd;
    unsigned proc_index;
    char tag[32];

    crest_loop_t *loop;           /* the control loop, on the main thread */
    crest_signal_t *sigint, *sigterm;
    crest_timer_t *stats_timer;
    int signals_seen;

    crest_group_t *group;
    struct worker *workers;
    unsigned running;             /* worker threads that set up and serve */
    unsigned done;                /* workers that finished (control loop) */

    /* --stats: a round posts worker_snapshot to every worker; the last one
     * to answer posts print_stats back to the control loop, which ends the
     * round.  No round starts while one is out (gathering). */
    bool gathering;
    atomic_uint gather_pending;
    struct figures prev;
    uint64_t prev_ms;
    uint64_t started_ms;

    /* --doctor / --doctor-json: the control loop's timer reads the group's
     * summed snapshot (crest_group_get_insight) every window; ins_prev is
     * the start of the next window.  json_fd: the --doctor-json file
     * (O_APPEND: every line is one write()), registered, or -1. */
    crest_timer_t *doctor_timer;
    /* --admin: the admin endpoint (admin.h), on the control loop,
     * reporting every worker loop of this process; stopped at the first
     * signal. */
    crest_admin_t *admin;
    crest_insight_t *ins_prev, *ins_cur, *ins_win;
    crest_slow_cb_t worst;        /* the slowest callback seen in any window */
    int json_fd;
};

/* ------------------------------------------------------------------------
 * Figures
 * ------------------------------------------------------------------------ */

static void add_listener_stats(crest_listener_stats_t *sum, const crest_listener_stats_t *l) {
    sum->accepted += l->accepted;
    sum->active += l->active;
    sum->refused_limit += l->refused_limit;
    sum->emfile += l->emfile;
    sum->accept_errors += l->accept_errors;
}

static void take_figures(struct worker *w, struct figures *f) {
    server_proto_t *p = w->srv->proto;
    if (p->loop_counters && w->proto_ready)
        p->loop_counters(p, w->loop, w->index, f->proto);
    crest_loop_conn_stats(w->loop, &f->conn);
    crest_loop_buf_stats(w->loop, &f->buf);
    f->listener = w->listener_stats;
    for (unsigned i = 0; i < w->nlisteners; i++) {
        crest_listener_stats_t l;
        crest_listener_get_stats(w->listeners[i], &l);
        add_listener_stats(&f->listener, &l);
    }
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
    s->lingered += c->lingered;
    s->lingering += c->lingering;
    s->accept_shed += c->accept_shed;
    s->accept_errors += c->accept_errors;
    for (int r = 0; r < CREST_CLOSE_REASON_COUNT; r++)
        s->close_reasons[r] += c->close_reasons[r];
    sum->buf.allocated += f->buf.allocated;
    sum->buf.in_use += f->buf.in_use;
    if (f->buf.peak > sum->buf.peak)
        sum->buf.peak = f->buf.peak; /* the largest of any one loop */
    sum->buf.chunks_free += f->buf.chunks_free;
    add_listener_stats(&sum->listener, &f->listener);
    for (int i = 0; i < SERVER_PROTO_COUNTERS; i++)
        sum->proto[i] += f->proto[i];
}

/* RAW framing has no messages: count reads instead. */
static uint64_t messages(const struct server *srv, const crest_conn_stats_t *c) {
    return srv->proto->framing.kind == CREST_FRAMING_RAW ? c->reads : c->messages_in;
}

static const char *message_unit(const struct server *srv) {
    if (srv->proto->framing.kind == CREST_FRAMING_RAW || !srv->proto->message_unit)
        return "reads";
    return srv->proto->message_unit;
}

/* ------------------------------------------------------------------------
 * Connections: the wrapped handler (worker threads)
 * ------------------------------------------------------------------------ */

/* "conn 127.0.0.1:40000"; "conn unix:#7" for a Unix-domain client,
 * which has no address (its connection id: fds are reused, ids are not);
 * "conn #7" if the address is not known. */
static void conn_name(crest_conn_t *c, char *buf, size_t size) {
    char peer[CREST_ADDR_STRLEN];
    unsigned long long id = (unsigned long long)crest_conn_id(c);
    if (crest_conn_peer(c, peer, sizeof peer) < 0)
        snprintf(buf, size, "conn #%llu", id);
    else if (strcmp(peer, "unix:") == 0)
        snprintf(buf, size, "conn unix:#%llu", id);
    else
        snprintf(buf, size, "conn %s", peer);
}

static void on_open(crest_conn_t *c) {
    struct worker *w = crest_conn_handler_ctx(c);
    /* The protocol's first: once "open" is printed, the connection is
     * fully set up (tests wait for the line before they send). */
    if (w->srv->proto->handler.on_open)
        w->srv->proto->handler.on_open(c);
    if (!w->srv->cfg.quiet) {
        char name[CREST_ADDR_STRLEN + 32];
        conn_name(c, name, sizeof name);
        printf("%s open\n", name);
    }
}

static void on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct worker *w = crest_conn_handler_ctx(c);
    if (w->srv->proto->handler.on_close)
        w->srv->proto->handler.on_close(c, reason, err);
    if (!w->srv->cfg.quiet) {
        char name[CREST_ADDR_STRLEN + 32];
        conn_name(c, name, sizeof name);
        if (err)
            printf("%s closed: %s (%s)\n", name, crest_close_reason_name(reason),
                   crest_strerror(err));
        else
            printf("%s closed: %s\n", name, crest_close_reason_name(reason));
    }
}

/* --work, --work-once, --fd-leak: knobs that make the handler slow or
 * leaky on purpose, to show what the insight figures and the doctor say
 * about it.  Installed around the protocol's on_data/on_message only when
 * one is given. */

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Burn CPU for us microseconds: a handler doing work, not sleeping (a
 * sleeping thread would show as waiting, not as a busy loop). */
static void spin_us(uint64_t us) {
    uint64_t end = mono_ns() + us * 1000u;
    while (mono_ns() < end) {
    }
}

static atomic_bool work_once_done;

/* --fd-leak: the pipes leaked so far (both ends), in slots taken with one
 * atomic add; closed at exit so that the report stays readable. */
#define FD_LEAK_MAX 4000
static int leak_fds[FD_LEAK_MAX];
static atomic_uint leak_slots;    /* slots taken (may pass leak_cap) */
static unsigned leak_cap;         /* FD_LEAK_MAX, or less under a low fd limit */
static atomic_bool leak_stopped;
static char leak_origin[64];      /* "crest-echo fd-leak": static, the
                                     registry keeps the pointer */

static void leak_pipe(void) {
    if (atomic_load_explicit(&leak_stopped, memory_order_relaxed))
        return;
    unsigned slot = atomic_fetch_add(&leak_slots, 2);
    if (slot + 2 > leak_cap) {
        atomic_store(&leak_stopped, true);
        return;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        atomic_store(&leak_stopped, true); /* out of fds: keep serving */
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (crest_fd_register_at(p[i], CREST_FD_PIPE, leak_origin) < 0) {
            close(p[i]);
            p[i] = -1;
        }
        leak_fds[slot + (unsigned)i] = p[i];
    }
}

/* The leaked pipes, closed at exit; returns how many fds there were. */
static unsigned leak_close_all(void) {
    unsigned n = 0;
    for (unsigned i = 0; i < leak_cap; i++) {
        if (leak_fds[i] >= 0) {
            crest_fd_close(leak_fds[i]);
            leak_fds[i] = -1;
            n++;
        }
    }
    return n;
}

static void message_work(const struct config *cfg) {
    if (cfg->work_once_us && !atomic_exchange(&work_once_done, true))
        spin_us(cfg->work_once_us);
    if (cfg->work_us)
        spin_us(cfg->work_us);
    if (cfg->fd_leak)
        leak_pipe();
}

static ssize_t work_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    struct worker *w = crest_conn_handler_ctx(c);
    message_work(&w->srv->cfg);
    return w->srv->proto->handler.on_data(c, data, len);
}

static int work_on_message(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct worker *w = crest_conn_handler_ctx(c);
    message_work(&w->srv->cfg);
    return w->srv->proto->handler.on_message(c, msg, len);
}

/* ------------------------------------------------------------------------
 * Worker threads
 * ------------------------------------------------------------------------ */

static void listen_address(const struct config *cfg, int port, char *buf, size_t size) {
    if (cfg->unix_path)
        snprintf(buf, size, "unix:%s", cfg->unix_path);
    else if (strchr(cfg->host, ':') && cfg->host[0] != '[')
        snprintf(buf, size, "[%s]:%d", cfg->host, port); /* a bare IPv6 address */
    else
        snprintf(buf, size, "%s:%d", cfg->host, port);
}

/* Close the listeners, keeping their figures.  Before a shutdown too:
 * crest_loop_shutdown() would close them, but their figures go with them. */
static void close_listener(struct worker *w) {
    for (unsigned i = 0; i < w->nlisteners; i++) {
        crest_listener_stats_t l;
        crest_listener_get_stats(w->listeners[i], &l);
        add_listener_stats(&w->listener_stats, &l);
        crest_listener_close(w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->nlisteners = 0;
}

/* Every connection is gone (drained, or aborted at the end of the grace
 * period): the worker's loop is done. */
static void shutdown_done(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    crest_timer_stop(w->grace);
    crest_loop_stop(loop);
}

/* Started just before crest_loop_shutdown()'s own grace timer, for the
 * same moment, so it fires first and can say what is about to be aborted
 * (crest does the aborting). */
static void on_grace_over(crest_timer_t *t, void *arg) {
    (void)t;
    struct worker *w = arg;
    crest_conn_stats_t st;
    crest_loop_conn_stats(w->loop, &st);
    printf("%s%s: grace period over: aborting %" PRIu64 " connection%s\n", w->srv->tag,
           w->srv->proto->name, st.active, st.active == 1 ? "" : "s");
}

static void start_shutdown(struct worker *w, uint32_t grace_ms) {
    w->stopping = true;
    close_listener(w);
    if (grace_ms)
        crest_timer_start(w->grace, grace_ms, 0);
    int rc = crest_loop_shutdown(w->loop, grace_ms, shutdown_done, w);
    if (rc < 0) { /* cannot happen on a running loop; do not hang if it did */
        crest_timer_stop(w->grace);
        crest_loop_close_all(w->loop, true);
        crest_loop_stop(w->loop);
    }
}

/* Posted by the control loop on the first signal. */
static void worker_shutdown(crest_loop_t *loop, void *arg) {
    (void)loop;
    struct worker *w = arg;
    if (w->stopping)
        return;
    start_shutdown(w, GRACE_MS);
}

/* Posted by the control loop on a second signal: what is left is aborted
 * now, and the shutdown (started here if need be) completes. */
static void worker_abort(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    if (!w->stopping)
        start_shutdown(w, 0);
    crest_timer_stop(w->grace);
    crest_loop_close_all(loop, true);
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
    int rc = crest_timer_create(w->loop, on_grace_over, w, &w->grace);
    if (rc < 0) {
        w->setup_step = "crest_timer_create";
        return rc;
    }

    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    /* One listener per thread and per process, all on the same port. */
    lo.reuseport = cfg->threads > 1 || cfg->workers > 1;
    lo.max_conns = cfg->max_conns;
    if (cfg->backlog)
        lo.backlog = cfg->backlog;
    lo.proxy_protocol = cfg->proxy;
    lo.conn.framing = srv->proto->framing;
    lo.conn.nodelay = cfg->nodelay;
    lo.conn.keepalive = cfg->keepalive;
    lo.conn.idle_timeout_ms = cfg->idle_timeout_ms;
    lo.conn.read_timeout_ms = cfg->read_timeout_ms;
    lo.conn.sndbuf = cfg->sndbuf;  /* set on the listener, inherited */
    lo.conn.rcvbuf = cfg->rcvbuf;
    if (srv->proto->conn_opts)
        srv->proto->conn_opts(srv->proto, &lo.conn);

    if (srv->passed > 0) {
        /* Socket activation: every worker adopts its own dup() of each
         * passed socket (crest owns and closes what it adopts), so they all
         * accept from the same sockets. */
        for (int i = 0; i < srv->passed; i++) {
            int fd = fcntl(CREST_LISTEN_FDS_START + i, F_DUPFD_CLOEXEC, 0);
            if (fd < 0) {
                w->setup_step = "dup of a passed socket";
                return -errno;
            }
            rc = crest_listener_adopt(w->loop, fd, &lo, &srv->handler, w,
                                      &w->listeners[w->nlisteners]);
            if (rc < 0) {
                close(fd);
                w->setup_step = "adopting a passed socket";
                return rc;
            }
            w->nlisteners++;
        }
    } else {
        char addr[CREST_ADDR_STRLEN + 16];
        listen_address(cfg, srv->port, addr, sizeof addr);
        rc = crest_listen(w->loop, addr, &lo, &srv->handler, w, &w->listeners[0]);
        if (rc < 0) {
            w->setup_step = "listen";
            return rc;
        }
        w->nlisteners = 1;
    }
    crest_listener_address(w->listeners[0], w->address, sizeof w->address);
    w->sndbuf = crest_listener_sndbuf(w->listeners[0]);
    w->rcvbuf = crest_listener_rcvbuf(w->listeners[0]);
    return 0;
}

static bool doctor_windows(const struct config *cfg) {
    return cfg->doctor_ms || cfg->doctor_json;
}

/* The window period: --doctor's, or 1 s for --doctor-json alone. */
static uint64_t doctor_period_ms(const struct config *cfg) {
    return cfg->doctor_ms ? cfg->doctor_ms : 1000;
}

/* The loops' sample period.  The windows read the snapshot each loop
 * publishes at its sample: with windows, sample four times a window (at
 * most once a second, crest's default) so that a window's edges are
 * within a quarter of its period. */
static uint32_t sample_ms(const struct config *cfg) {
    if (!doctor_windows(cfg))
        return 1000;
    uint64_t ms = doctor_period_ms(cfg) / 4;
    return (uint32_t)(ms < 10 ? 10 : ms > 1000 ? 1000 : ms);
}

/* The insight options of every worker loop, set before its listener
 * exists (rx_timestamps applies to connections opened from then on). */
static int apply_insight(const struct config *cfg, crest_loop_t *loop) {
    if (!cfg->no_insight && cfg->timing < 0 && !cfg->slow_us && !cfg->timestamps &&
        !doctor_windows(cfg))
        return 0; /* crest's defaults */
    crest_insight_opts_t o;
    crest_insight_opts_init(&o);
    o.enabled = !cfg->no_insight;
    if (cfg->timing >= 0)
        o.timing = (crest_timing_t)cfg->timing;
    if (cfg->slow_us)
        o.slow_callback_us = cfg->slow_us;
    o.rx_timestamps = cfg->timestamps;
    o.sample_ms = sample_ms(cfg);
    return crest_loop_set_insight(loop, &o);
}

/* crest_group init: on worker thread index, before its loop runs. */
static int group_init(crest_loop_t *loop, unsigned index, void *arg) {
    struct server *srv = arg;
    struct worker *w = &srv->workers[index];
    w->loop = loop;
    server_proto_t *p = srv->proto;
    int irc = apply_insight(&srv->cfg, loop);
    if (irc < 0) {
        w->setup_rc = irc;
        w->setup_step = "setting the insight options of";
        w->loop = NULL;
        return irc;
    }
    w->setup_rc = p->loop_init ? p->loop_init(p, loop, index) : 0;
    if (w->setup_rc < 0) {
        w->setup_step = "setting up the protocol on";
    } else {
        w->proto_ready = true;
        w->setup_rc = worker_setup(w);
    }
    if (w->setup_rc < 0) {
        /* group_fini is not called for a failed init: undo it here. */
        close_listener(w);
        crest_timer_destroy(w->grace);
        w->grace = NULL;
        if (w->proto_ready && p->loop_fini)
            p->loop_fini(p, loop, index);
        w->proto_ready = false;
        w->loop = NULL;
        return w->setup_rc;
    }
    pthread_mutex_lock(&w->post_lock);
    w->accepting_posts = true;
    pthread_mutex_unlock(&w->post_lock);
    return 0;
}

static void on_worker_done(crest_loop_t *loop, void *arg);

/* crest_group fini: on worker thread index, once its loop has returned
 * (drained after a shutdown, or failed), before the group destroys it. */
static void group_fini(crest_loop_t *loop, unsigned index, void *arg) {
    struct server *srv = arg;
    struct worker *w = &srv->workers[index];
    if (!w->stopping) {
        /* The loop returned without a shutdown: it failed (the group
         * reports the error), or another thread's setup did.  Close what is
         * left now, so that the figures below are final. */
        close_listener(w);
        crest_loop_close_all(loop, true);
        crest_loop_run_once(loop, 0);
    }
    close_listener(w);
    if (w->proto_ready && srv->proto->loop_fini)
        srv->proto->loop_fini(srv->proto, loop, index);
    take_figures(w, &w->final);
    /* The whole run's figures, live (the published snapshot may be up to
     * a sample period old). */
    w->ins_final = malloc(sizeof *w->ins_final);
    if (w->ins_final && crest_loop_get_insight(loop, w->ins_final) < 0) {
        free(w->ins_final);
        w->ins_final = NULL;
    }
    crest_timer_destroy(w->grace);
    w->grace = NULL;
    pthread_mutex_lock(&w->post_lock);
    w->accepting_posts = false;
    pthread_mutex_unlock(&w->post_lock);
    crest_loop_post(srv->loop, on_worker_done, w);
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
    printf("%sstats: %" PRIu64 " conns, %.0f %s/s, %.2f MB/s in, %.2f MB/s out, %" PRIu64
           " fds open, %" PRIu64 " buffer bytes in use\n",
           srv->tag, c->active, (double)(messages(srv, c) - messages(srv, p)) / secs,
           message_unit(srv), (double)(c->bytes_in - p->bytes_in) / secs / 1e6,
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
    bool worker = srv->report_fd >= 0; /* the supervisor already said it */
    if (srv->signals_seen++ == 0) {
        if (!worker)
            printf("%s: %s: closing the listener, draining connections (at most %.1f s)\n",
                   srv->proto->name, name, GRACE_MS / 1000.0);
        if (srv->stats_timer)
            crest_timer_stop(srv->stats_timer);
        /* Loops leave the group as they finish draining: a window across
         * that would be a difference of unlike sums. */
        if (srv->doctor_timer)
            crest_timer_stop(srv->doctor_timer);
        /* Its connections close while the workers drain. */
        crest_admin_stop(srv->admin);
        srv->admin = NULL;
        for (unsigned i = 0; i < srv->running; i++)
            worker_post(&srv->workers[i], worker_shutdown);
    } else {
        if (!worker)
            printf("%s: %s again: aborting every connection now\n", srv->proto->name, name);
        for (unsigned i = 0; i < srv->running; i++)
            worker_post(&srv->workers[i], worker_abort);
    }
}

static void on_worker_done(crest_loop_t *loop, void *arg) {
    struct worker *w = arg;
    if (w->srv->doctor_timer)
        crest_timer_stop(w->srv->doctor_timer);
    if (++w->srv->done == w->srv->running)
        crest_loop_stop(loop);
}

/* ------------------------------------------------------------------------
 * Start-up
 * ------------------------------------------------------------------------ */

/* With --port 0 and several listeners: pick the port now, before the
 * listeners are created concurrently (see the top of this file). */
static int reserve_port(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    srv->port = cfg->port;
    srv->reserve_fd = -1;
    if (srv->passed || cfg->unix_path || cfg->port != 0 ||
        (cfg->threads == 1 && cfg->workers == 1))
        return 0;
    char text[CREST_ADDR_STRLEN + 16];
    crest_addr_t a;
    listen_address(cfg, 0, text, sizeof text);
    int rc = crest_addr_parse(text, &a);
    if (rc < 0) {
        fprintf(stderr, "%s: listen %s: %s (--host takes an IP address or localhost)\n",
                srv->proto->name, text, crest_strerror(rc));
        return rc;
    }
    int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        bind(fd, (struct sockaddr *)&a.ss, a.len) < 0 ||
        getsockname(fd, (struct sockaddr *)&a.ss, &a.len) < 0) {
        rc = -errno;
        fprintf(stderr, "%s: picking a port on %s: %s\n", srv->proto->name, text,
                crest_strerror(rc));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    srv->port = crest_addr_port(&a);
    srv->reserve_fd = fd;
    return 0;
}

static void release_port(struct server *srv) {
    if (srv->reserve_fd >= 0)
        close(srv->reserve_fd);
    srv->reserve_fd = -1;
}

/* The passed sockets themselves, once every worker has adopted its dup()
 * (or the workers failed to start): this process is done with them. */
static void release_passed(struct server *srv) {
    for (int i = 0; i < srv->passed; i++)
        close(CREST_LISTEN_FDS_START + i);
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

static const char *proxy_name(unsigned proxy) {
    switch (proxy) {
    case CREST_PROXY_V1: return "v1";
    case CREST_PROXY_V2: return "v2";
    case CREST_PROXY_ANY: return "v1 or v2";
    default: return "off";
    }
}

/* The start-up lines, printed once every listener accepts. */
static void announce(const struct server *srv, const char *address, int sndbuf, int rcvbuf) {
    const struct config *cfg = &srv->cfg;
    char framing[128], procs[48] = "";
    describe_framing(&srv->proto->framing, framing, sizeof framing);
    if (cfg->workers > 1)
        snprintf(procs, sizeof procs, "%u worker processes x ", cfg->workers);
    const char *each = "";
    if (cfg->threads > 1 || cfg->workers > 1)
        each = srv->passed ? " (each adopts the passed sockets)"
                           : " (one SO_REUSEPORT listener each)";
    printf("%s %s: %s, %s%u thread%s%s\n", srv->proto->name, crest_version(), framing, procs,
           cfg->threads, cfg->threads == 1 ? "" : "s", each);
    if (srv->passed)
        printf("socket activation: %d listening socket%s passed by the service manager "
               "(LISTEN_FDS), adopted instead of binding --host/--port\n",
               srv->passed, srv->passed == 1 ? "" : "s");
    if (cfg->proxy)
        printf("PROXY protocol %s expected before any data; connections are logged with "
               "the client address it gives\n", proxy_name(cfg->proxy));
    if (cfg->sndbuf || cfg->rcvbuf) {
        /* What the kernel applied: Linux doubles the request (and caps it at
         * wmem_max/rmem_max first), see sockopt.h. */
        char snd[48] = "kernel default", rcv[48] = "kernel default";
        if (cfg->sndbuf)
            snprintf(snd, sizeof snd, "asked %d", cfg->sndbuf);
        if (cfg->rcvbuf)
            snprintf(rcv, sizeof rcv, "asked %d", cfg->rcvbuf);
        printf("socket buffers: sndbuf %d bytes (%s), rcvbuf %d bytes (%s)\n", sndbuf, snd,
               rcvbuf, rcv);
    }
    if (srv->proto->timeouts) {
        printf("timeouts: %s\n", srv->proto->timeouts);
        printf("listening on %s\n", address);
        fflush(stdout);
        return;
    }
    char idle[32] = "off", rd[32] = "off";
    if (cfg->idle_timeout_ms)
        snprintf(idle, sizeof idle, "%.3g s", (double)cfg->idle_timeout_ms / 1000.0);
    if (cfg->read_timeout_ms)
        snprintf(rd, sizeof rd, "%.3g s", (double)cfg->read_timeout_ms / 1000.0);
    printf("timeouts: idle %s, read %s (an unfinished message); 0 turns either off\n", idle,
           rd);
    /* Tests wait for this line: print it last. */
    printf("listening on %s\n", address);
    fflush(stdout);
}

/* ------------------------------------------------------------------------
 * The final report
 * ------------------------------------------------------------------------ */

static int totals_exit_code(const struct totals *t) {
    if (t->open_now || t->leaked || t->sum.buf.in_use)
        return SERVER_EXIT_LEAK;
    return t->failed ? SERVER_EXIT_ERROR : SERVER_EXIT_OK;
}

/* Print the final report; returns the exit code.  With worker processes,
 * each listed its own fds still open (crest_fd_report()) before sending
 * its figures. */
static int print_report(const struct server *srv, const struct totals *t, uint64_t uptime_ms) {
    const crest_conn_stats_t *c = &t->sum.conn;
    const crest_listener_stats_t *l = &t->sum.listener;
    bool procs = srv->cfg.workers > 1;

    printf("%s: final report after %.1f s", srv->proto->name, (double)uptime_ms / 1000.0);
    if (procs)
        printf(" (%u worker processes, summed)", srv->cfg.workers);
    printf("\n");
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
            printf("%s %s %" PRIu64, any ? "," : "", crest_close_reason_name((crest_close_reason_t)r),
                   c->close_reasons[r]);
            any = true;
        }
    }
    printf("%s\n", any ? "" : " none");
    if (c->paused)
        printf("  reading paused %" PRIu64 " time%s (output above high water)\n", c->paused,
               c->paused == 1 ? "" : "s");
    if (srv->proto->report)
        srv->proto->report(srv->proto, t->sum.proto);
    printf("  fds: %" PRIu64 " opened, %" PRIu64 " closed, peak %" PRIu64 " open at once%s\n",
           t->fds.opened, t->fds.closed, t->fds.peak,
           procs ? " (the sum of each process's peak)" : "");
    if (t->fds.bad_closes) /* double closes caught by the registry: a bug somewhere */
        printf("  fds: %" PRIu64 " bad closes (see the log)\n", t->fds.bad_closes);
    printf("  buffer bytes outstanding: %" PRIu64 " (peak %" PRIu64 " in one thread)\n",
           t->sum.buf.in_use, t->sum.buf.peak);
    if (t->open_now == 0 && t->leaked == 0)
        printf("  0 fds leaked\n");
    else if (procs)
        printf("  %" PRIu64 " fds leaked (each worker listed its own above)\n",
               t->open_now > t->leaked ? t->open_now : t->leaked);
    else
        crest_fd_report(stdout); /* lists each fd still open, with its origin */
    if (t->failed)
        printf("  failed: %u (%s; see above)\n", t->failed,
               procs ? "worker processes or loops" : "loops");
    fflush(stdout);
    return totals_exit_code(t);
}

/* The figures of this process, once every loop is destroyed. */
static void collect_totals(const struct server *srv, struct totals *t, uint64_t leaked,
                           bool failed) {
    memset(t, 0, sizeof *t);
    for (unsigned i = 0; i < srv->running; i++)
        add_figures(&t->sum, &srv->workers[i].final);
    crest_fd_counts(CREST_FD_ALL, &t->fds);
    t->open_now = crest_fd_open_count();
    t->leaked = leaked;
    t->failed = failed ? 1 : 0;
    t->exit_code = (uint32_t)totals_exit_code(t);
}

/* A worker process's message to the supervisor.  EPIPE (the supervisor is
 * gone) is not worth a word: the worker is on its way out anyway. */
static void send_msg(const struct server *srv, struct wmsg *m) {
    m->index = srv->proc_index;
    ssize_t n;
    do
        n = write(srv->report_fd, m, sizeof *m);
    while (n < 0 && errno == EINTR);
}

/* ------------------------------------------------------------------------
 * The admin endpoint (--admin)
 * ------------------------------------------------------------------------ */

static void set_port(crest_addr_t *a, int port) {
    if (a->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)&a->ss)->sin_port = htons((uint16_t)port);
}

/* On the control loop, once the group runs: one endpoint for this
 * process's loops; worker process i of --workers serves on PORT+i. */
static int admin_start(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    if (!cfg->admin)
        return 0;
    crest_addr_t a;
    int rc = crest_addr_parse(cfg->admin, &a);
    if (rc < 0)
        return rc;
    int port = crest_addr_port(&a);
    if (srv->report_fd >= 0 && port > 0)
        set_port(&a, port + (int)srv->proc_index);
    char addr[CREST_ADDR_STRLEN];
    if ((rc = crest_addr_format(&a, addr, sizeof addr)) < 0)
        return rc;
    crest_admin_opts_t ao;
    crest_admin_opts_init(&ao);
    ao.group = srv->group;
    if ((rc = crest_admin_start(srv->loop, addr, &ao, &srv->admin)) < 0)
        return rc;
    set_port(&a, crest_admin_port(srv->admin));
    crest_addr_format(&a, addr, sizeof addr);
    printf("%s%s: admin endpoint on http://%s/\n", srv->tag, srv->proto->name, addr);
    fflush(stdout);
    return 0;
}

/* The endpoint if no signal stopped it (the workers failed): its
 * connections close in a few more iterations of the control loop. */
static void admin_free(struct server *srv) {
    if (!srv->admin)
        return;
    crest_admin_stop(srv->admin);
    srv->admin = NULL;
    for (int i = 0; i < 3; i++)
        crest_loop_run_once(srv->loop, 0);
}

/* ------------------------------------------------------------------------
 * Latency insight: the doctor's windows and the whole run (main thread)
 * ------------------------------------------------------------------------ */

/* "850 ns", "12.3 us", "4.56 ms", "1.20 s". */
static const char *fmt_ns(char *buf, size_t size, uint64_t ns) {
    if (ns < 1000)
        snprintf(buf, size, "%" PRIu64 " ns", ns);
    else if (ns < 1000000)
        snprintf(buf, size, "%.1f us", (double)ns / 1e3);
    else if (ns < 1000000000)
        snprintf(buf, size, "%.2f ms", (double)ns / 1e6);
    else
        snprintf(buf, size, "%.2f s", (double)ns / 1e9);
    return buf;
}

/* Keep the slowest callback of a ring (a window's, or a loop's at the end). */
static void note_worst(crest_slow_cb_t *worst, const crest_insight_t *f) {
    for (unsigned i = 0; i < f->slow_ring_len && i < CREST_SLOW_RING; i++)
        if (f->slow_ring[i].duration_ns > worst->duration_ns)
            *worst = f->slow_ring[i];
}

/* Print text (one or more lines) with every line prefixed. */
static void print_prefixed(const char *prefix, const char *text) {
    while (*text) {
        const char *nl = strchr(text, '\n');
        int n = nl ? (int)(nl - text) : (int)strlen(text);
        printf("%s%.*s\n", prefix, n, text);
        text += n + (nl ? 1 : 0);
    }
}

/* One line of --doctor-json: crest_diagnosis_json()'s object, with
 * "scope" ("window" or "run") and, in a worker process, "worker" put in
 * first; one write() on an O_APPEND file, so that worker processes
 * sharing the file never interleave within a line. */
static void write_json(const struct server *srv, const crest_diagnosis_t *dx, const char *scope) {
    if (srv->json_fd < 0)
        return;
    static char body[32768];
    char line[sizeof body + 96];
    int n = crest_diagnosis_json(dx, body, sizeof body);
    if (n < 0 || (size_t)n >= sizeof body || body[0] != '{')
        return; /* cannot happen with the documented output; write nothing
                   rather than a line that does not parse */
    while (n > 0 && (body[n - 1] == '\n' || body[n - 1] == ' '))
        body[--n] = '\0';
    int len;
    if (srv->report_fd >= 0)
        len = snprintf(line, sizeof line, "{\"scope\":\"%s\",\"worker\":%u,%s\n", scope,
                       srv->proc_index, body + 1);
    else
        len = snprintf(line, sizeof line, "{\"scope\":\"%s\",%s\n", scope, body + 1);
    if (strcmp(body, "{}") == 0) /* no members: no comma after ours */
        len = snprintf(line, sizeof line, "{\"scope\":\"%s\"}\n", scope);
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(srv->json_fd, p, (size_t)len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "%s%s: --doctor-json: %s\n", srv->tag, srv->proto->name,
                    crest_strerror(w < 0 ? -errno : -EIO));
            return;
        }
        p += w;
        len -= (int)w;
    }
}

/* Every window: the group's summed figures now, minus the last window's. */
static void on_doctor_tick(crest_timer_t *t, void *arg) {
    (void)t;
    struct server *srv = arg;
    if (crest_group_get_insight(srv->group, srv->ins_cur) < 0)
        return;
    if (srv->ins_cur->loops != srv->ins_prev->loops) {
        /* A loop came or went (a failed one): no honest window; start
         * again from here. */
        crest_insight_t *tmp = srv->ins_prev;
        srv->ins_prev = srv->ins_cur;
        srv->ins_cur = tmp;
        return;
    }
    crest_insight_window(srv->ins_win, srv->ins_cur, srv->ins_prev);
    note_worst(&srv->worst, srv->ins_win);
    crest_diagnosis_t dx;
    if (crest_doctor_diagnose(srv->ins_win, NULL, &dx) == 0) {
        if (srv->cfg.doctor_ms) {
            static char text[32768];
            char prefix[64];
            snprintf(prefix, sizeof prefix, "%sdoctor: ", srv->tag);
            if (crest_diagnosis_text(&dx, text, sizeof text) >= 0)
                print_prefixed(prefix, text);
            fflush(stdout);
        }
        write_json(srv, &dx, "window");
    }
    crest_insight_t *tmp = srv->ins_prev;
    srv->ins_prev = srv->ins_cur;
    srv->ins_cur = tmp;
}

/* Start the windows: after crest_group_start(), on the main thread. */
static int doctor_start(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    if (!doctor_windows(cfg))
        return 0;
    srv->ins_prev = calloc(1, sizeof *srv->ins_prev);
    srv->ins_cur = calloc(1, sizeof *srv->ins_cur);
    srv->ins_win = calloc(1, sizeof *srv->ins_win);
    if (!srv->ins_prev || !srv->ins_cur || !srv->ins_win)
        return -ENOMEM;
    int rc = crest_group_get_insight(srv->group, srv->ins_prev);
    if (rc < 0)
        return rc;
    if ((rc = crest_timer_create(srv->loop, on_doctor_tick, srv, &srv->doctor_timer)) < 0)
        return rc;
    uint64_t ms = doctor_period_ms(cfg);
    crest_timer_start(srv->doctor_timer, ms, ms);
    return 0;
}

static void doctor_free(struct server *srv) {
    crest_timer_destroy(srv->doctor_timer);
    srv->doctor_timer = NULL;
    free(srv->ins_prev);
    free(srv->ins_cur);
    free(srv->ins_win);
    srv->ins_prev = srv->ins_cur = srv->ins_win = NULL;
}

static char json_origin[64]; /* "crest-echo --doctor-json", for the fd registry */

/* --doctor-json: truncated by the process that starts first (the
 * supervisor, or the only process), appended to by every process. */
static int json_open(struct server *srv, bool truncate) {
    srv->json_fd = -1;
    if (!srv->cfg.doctor_json)
        return 0;
    int fd = open(srv->cfg.doctor_json,
                  O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
    if (fd < 0) {
        int rc = -errno;
        fprintf(stderr, "%s%s: --doctor-json %s: %s\n", srv->tag, srv->proto->name,
                srv->cfg.doctor_json, crest_strerror(rc));
        return rc;
    }
    snprintf(json_origin, sizeof json_origin, "%s --doctor-json", srv->proto->name);
    crest_fd_register_at(fd, CREST_FD_USER, json_origin);
    srv->json_fd = fd;
    return 0;
}

static void json_close(struct server *srv) {
    if (srv->json_fd >= 0)
        crest_fd_close(srv->json_fd);
    srv->json_fd = -1;
}

/* The whole run's figures of this process: each loop's, taken as it
 * finished, summed.  wall_ns: the sum of each loop's span (for the
 * utilization); worst: the slowest callback of any window or ring.
 * false if there are none (out of memory). */
struct run_insight {
    crest_insight_t *sum;
    uint64_t wall_ns;
    crest_slow_cb_t worst;
    crest_diagnosis_t dx;
    bool dx_ok;
    unsigned leaked_on_purpose;   /* --fd-leak's pipes, closed at exit */
};

static bool collect_insight(const struct server *srv, struct run_insight *r) {
    r->worst = srv->worst;
    r->sum = calloc(1, sizeof *r->sum);
    if (!r->sum)
        return false;
    bool any = false;
    for (unsigned i = 0; i < srv->running; i++) {
        const crest_insight_t *f = srv->workers[i].ins_final;
        if (!f)
            continue;
        crest_insight_add(r->sum, f);
        r->wall_ns += f->taken_ns - f->since_ns;
        note_worst(&r->worst, f);
        any = true;
    }
    r->dx_ok = any && crest_doctor_diagnose(r->sum, NULL, &r->dx) == 0;
    return any;
}

/* The lines the final report gains, after its usual ones (tests and
 * bench/run parse those: they stay as they were).  prefix: "" or, in a
 * worker process, "worker 2: ". */
static void print_insight_report(const struct server *srv, const struct run_insight *r,
                                 const char *prefix) {
    const struct config *cfg = &srv->cfg;
    const crest_insight_t *f = r->sum;
    char a[32], b[32], c[32];
    if (cfg->no_insight) {
        printf("%s  insight: off (--no-insight)\n", prefix);
        return;
    }
    if (!f || !r->wall_ns) {
        printf("%s  insight: no figures (out of memory)\n", prefix);
        return;
    }
    uint64_t busy = 0;
    for (int p = 0; p < CREST_PHASE_COUNT; p++)
        if (p != CREST_PHASE_WAIT)
            busy += f->phase_ns[p];
    printf("%s  loop: %" PRIu64 " iterations, utilization %.1f%% over the run, iteration "
           "busy p50 %s, p99 %s, max %s\n",
           prefix, f->iterations, 100.0 * (double)busy / (double)r->wall_ns,
           fmt_ns(a, sizeof a, crest_hist_percentile(&f->iteration_busy, 50)),
           fmt_ns(b, sizeof b, crest_hist_percentile(&f->iteration_busy, 99)),
           fmt_ns(c, sizeof c, f->iteration_busy.max));
    printf("%s  slow callbacks: %" PRIu64 " over %s (%" PRIu64 " slow batches unnamed)", prefix,
           f->slow_callbacks, fmt_ns(a, sizeof a, f->slow_threshold_ns), f->slow_unnamed);
    if (r->worst.duration_ns) {
        const crest_slow_cb_t *w = &r->worst;
        printf(", worst %s in \"%s\"", fmt_ns(b, sizeof b, w->duration_ns), w->name);
        if (w->what[0])
            printf(" %s", w->what);
        if (w->conn_id)
            printf(" (conn #%" PRIu64 "%s%s)", w->conn_id, w->peer[0] ? ", " : "", w->peer);
        else
            printf(" (%s%s%s)", crest_cb_kind_name(w->kind), w->peer[0] ? ", " : "", w->peer);
    }
    printf("\n");
    if (cfg->watchdog_ms)
        printf("%s  blocked (watchdog, over %u ms): %" PRIu64 ", longest %s\n", prefix,
               cfg->watchdog_ms, f->blocked, fmt_ns(a, sizeof a, f->blocked_max_ns));
    else
        printf("%s  blocked (watchdog): not watched (--watchdog MS)\n", prefix);
    printf("%s  run-queue wait: %s in total, worst %s period %s (%" PRIu64
           " involuntary context switches)\n",
           prefix, fmt_ns(a, sizeof a, f->runq_wait_ns),
           fmt_ns(c, sizeof c, (uint64_t)sample_ms(cfg) * 1000000u),
           fmt_ns(b, sizeof b, f->runq_wait_max_ns), f->nivcsw);
    if (cfg->timestamps)
        printf("%s  rx dwell: p50 %s, p99 %s over %" PRIu64 " reads\n", prefix,
               fmt_ns(a, sizeof a, crest_hist_percentile(&f->rx_dwell, 50)),
               fmt_ns(b, sizeof b, crest_hist_percentile(&f->rx_dwell, 99)), f->rx_dwell.count);
    printf("%s  tcp: rtt p99 %s over %" PRIu64 " samples (connections closed), %" PRIu64
           " retransmits\n",
           prefix, fmt_ns(a, sizeof a, crest_hist_percentile(&f->rtt, 99)), f->tcp_samples,
           f->retransmits);
    printf("%s  write stalls: %" PRIu64 ", p99 %s\n", prefix, f->write_stalls,
           fmt_ns(a, sizeof a, crest_hist_percentile(&f->write_stall, 99)));
    printf("%s  accept queue: peak %" PRIu32 ", %" PRIu64 " listen overflows, %" PRIu64
           " listen drops\n",
           prefix, f->accept_queue_peak, f->listen_overflows, f->listen_drops);
    if (cfg->fd_leak)
        printf("%s  fd-leak: %u pipe fds leaked on purpose (--fd-leak), closed at exit\n",
               prefix, r->leaked_on_purpose);
    printf("%s  doctor (whole run):\n", prefix);
    if (r->dx_ok) {
        static char text[32768];
        char pre[64];
        snprintf(pre, sizeof pre, "%s    ", prefix);
        if (crest_diagnosis_text(&r->dx, text, sizeof text) >= 0)
            print_prefixed(pre, text);
    }
    fflush(stdout);
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
    OPT_STATS,
    OPT_WORKERS,
    OPT_PROXY,
    OPT_BACKLOG,
    OPT_DOCTOR,
    OPT_DOCTOR_JSON,
    OPT_ADMIN,
    OPT_TIMESTAMPS,
    OPT_WATCHDOG,
    OPT_WORK,
    OPT_WORK_ONCE,
    OPT_SLOW_US,
    OPT_NO_INSIGHT,
    OPT_TIMING,
    OPT_FD_LEAK
};

static const struct option common_options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, 'p'},
    {"unix", required_argument, NULL, OPT_UNIX},
    {"threads", required_argument, NULL, 't'},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"proxy-protocol", required_argument, NULL, OPT_PROXY},
    {"sndbuf", required_argument, NULL, OPT_SNDBUF},
    {"rcvbuf", required_argument, NULL, OPT_RCVBUF},
    {"nodelay", no_argument, NULL, OPT_NODELAY},
    {"no-nodelay", no_argument, NULL, OPT_NO_NODELAY},
    {"keepalive", no_argument, NULL, OPT_KEEPALIVE},
    {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
    {"backlog", required_argument, NULL, OPT_BACKLOG},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"read-timeout", required_argument, NULL, OPT_READ_TIMEOUT},
    {"stats", required_argument, NULL, OPT_STATS},
    {"doctor", required_argument, NULL, OPT_DOCTOR},
    {"doctor-json", required_argument, NULL, OPT_DOCTOR_JSON},
    {"admin", required_argument, NULL, OPT_ADMIN},
    {"timestamps", no_argument, NULL, OPT_TIMESTAMPS},
    {"watchdog", required_argument, NULL, OPT_WATCHDOG},
    {"work", required_argument, NULL, OPT_WORK},
    {"work-once", required_argument, NULL, OPT_WORK_ONCE},
    {"slow-us", required_argument, NULL, OPT_SLOW_US},
    {"no-insight", no_argument, NULL, OPT_NO_INSIGHT},
    {"timing", required_argument, NULL, OPT_TIMING},
    {"fd-leak", no_argument, NULL, OPT_FD_LEAK},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
};

#define N_COMMON (sizeof common_options / sizeof common_options[0])
#define MAX_PROTO_OPTIONS 32

/* A server on the internet must not hold a slowloris connection forever:
 * on by default, like nginx's client_header_timeout and keepalive_timeout
 * (60 s and 75 s there). */
#define DEFAULT_IDLE_TIMEOUT_MS 300000u
#define DEFAULT_READ_TIMEOUT_MS 10000u

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
            "      --workers N         N processes, each with --threads loops and listeners\n"
            "                          of its own, started and stopped together; the\n"
            "                          final report is their sum (default 1: no fork)\n"
            "      --proxy-protocol v1|v2|any  expect a PROXY protocol header (HAProxy's\n"
            "                          send-proxy, send-proxy-v2) on every connection, and\n"
            "                          log the client address it gives (default: off)\n"
            "      --max-conns N       per thread: connections past N are accepted and\n"
            "                          closed at once (default: no limit)\n"
            "      --backlog N         listen() backlog of each listener (default 511;\n"
            "                          the kernel caps it at net.core.somaxconn)\n"
            "Connections:\n"
            "      --nodelay           TCP_NODELAY on accepted sockets (the default)\n"
            "      --no-nodelay        leave Nagle's algorithm on\n"
            "      --keepalive         SO_KEEPALIVE, with the system's timings\n"
            "      --sndbuf BYTES      SO_SNDBUF; the size the kernel applied is printed\n"
            "      --rcvbuf BYTES      SO_RCVBUF; likewise (default for both: autotuned)\n"
            "      --idle-timeout SECONDS  close a connection idle this long (0.5 works;\n"
            "                          default %u; 0: never)\n"
            "      --read-timeout SECONDS  close a connection whose message (a line or a\n"
            "                          frame) is still unfinished this long after its\n"
            "                          first byte came (default %u; 0: never)\n"
            "      --work USEC         the handler spins USEC microseconds of CPU per\n"
            "                          message (per read with raw framing, per line or\n"
            "                          frame otherwise): a slow handler, on purpose\n"
            "      --work-once USEC    spin USEC once, on the first message of the run\n"
            "                          (of each process): one blocked loop\n"
            "      --fd-leak           the handler opens a pipe per message and never\n"
            "                          closes it (registered as \"%s fd-leak\"),\n"
            "                          up to 4000 fds; they are closed at exit\n"
            "Output:\n"
            "      --stats SECONDS     print live figures every SECONDS\n"
            "      --doctor SECONDS    every SECONDS print the doctor's findings for\n"
            "                          that window (\"doctor: \" lines, even with -q); the\n"
            "                          final report adds the whole run's.  With\n"
            "                          --workers each worker process prints its own,\n"
            "                          as \"worker N: doctor: \" (not merged)\n"
            "      --doctor-json PATH  also write each window's findings as one JSON\n"
            "                          line to PATH (flushed per line), and a last one\n"
            "                          for the whole run (\"scope\": \"window\" or \"run\";\n"
            "                          \"worker\": N with --workers); windows every\n"
            "                          --doctor SECONDS, or 1 s without it\n"
            "      --admin HOST:PORT   serve the admin pages there (/metrics for\n"
            "                          Prometheus, /debug/crest/...; admin.h), for every\n"
            "                          thread's loop; with --workers N, worker i serves\n"
            "                          on PORT+i (PORT 0: each picks a free port)\n"
            "      --timestamps        measure receive-queue dwell (kernel receive\n"
            "                          timestamps on every connection)\n"
            "      --watchdog MS       log a loop stuck in one iteration over MS\n"
            "                          milliseconds, while it is stuck\n"
            "      --slow-us N         a callback over N microseconds is slow (default 1000)\n"
            "      --timing always|auto|off  time every callback, only while iterations\n"
            "                          run slow (the default), or batches only\n"
            "      --no-insight        no latency figures at all (the cost floor)\n"
            "  -q, --quiet             no per-connection or stats lines (the final report\n"
            "                          still prints)\n"
            "  -h, --help              this help\n"
            "  -V, --version           the server's and crest's version\n",
            proto->name, proto->summary, proto->default_port, DEFAULT_IDLE_TIMEOUT_MS / 1000,
            DEFAULT_READ_TIMEOUT_MS / 1000, proto->name);
    if (proto->options_help)
        fprintf(out, "%s:\n%s", proto->name, proto->options_help);
    fprintf(out,
            "\n"
            "BYTES take a K, M or G suffix (KiB, MiB, GiB).\n"
            "On SIGINT or SIGTERM the server stops accepting, lets connections drain for at\n"
            "most %d s (a second signal cuts that short), then prints its final report.\n"
            "Started with sockets passed by systemd (LISTEN_FDS, e.g. under\n"
            "systemd-socket-activate), it serves those instead of binding --host/--port.\n"
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

int server_parse_seconds(const char *option, const char *arg, uint64_t max_ms, uint64_t *ms) {
    return parse_seconds(option, arg, max_ms, ms);
}

/* A protocol that hands its connections over (server.h: hands_over):
 * refuse the options that would not act.  0 or -1. */
static int handed_over_option(const server_proto_t *proto, int opt) {
    const char *name;
    switch (opt) {
    case OPT_IDLE_TIMEOUT: name = "idle-timeout"; break;
    case OPT_READ_TIMEOUT: name = "read-timeout"; break;
    case OPT_WORK: name = "work"; break;
    case OPT_WORK_ONCE: name = "work-once"; break;
    case OPT_FD_LEAK: name = "fd-leak"; break;
    default: return 0;
    }
    fprintf(stderr, "%s: --%s: not for %s, whose connections belong to its own server "
            "(see its options in --help)\n", proto->name, name, proto->name);
    return -1;
}

enum { PARSE_OK = -1 }; /* otherwise: exit with this code */

static int parse_options(struct server *srv, int argc, char **argv) {
    server_proto_t *proto = srv->proto;
    struct config *cfg = &srv->cfg;
    prog = proto->name;
    *cfg = (struct config){
        .host = "127.0.0.1", .port = proto->default_port, .threads = 1, .workers = 1,
        .nodelay = true, .idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS,
        .read_timeout_ms = DEFAULT_READ_TIMEOUT_MS, .timing = -1};

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
        if (proto->hands_over && handed_over_option(proto, opt) < 0)
            return SERVER_EXIT_USAGE;
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
        case OPT_WORKERS:
            if (parse_uint("workers", optarg, 1, MAX_WORKERS, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->workers = (unsigned)u;
            break;
        case OPT_PROXY:
            if (strcmp(optarg, "v1") == 0)
                cfg->proxy = CREST_PROXY_V1;
            else if (strcmp(optarg, "v2") == 0)
                cfg->proxy = CREST_PROXY_V2;
            else if (strcmp(optarg, "any") == 0)
                cfg->proxy = CREST_PROXY_ANY;
            else if (strcmp(optarg, "off") == 0)
                cfg->proxy = CREST_PROXY_OFF;
            else {
                bad_value("proxy-protocol", optarg, "v1, v2, any or off");
                return SERVER_EXIT_USAGE;
            }
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
        case OPT_BACKLOG:
            if (parse_uint("backlog", optarg, 1, INT_MAX, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->backlog = (int)u;
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
        case OPT_DOCTOR:
            if (parse_seconds("doctor", optarg, 86400000, &ms) < 0)
                return SERVER_EXIT_USAGE;
            if (ms == 0) {
                bad_value("doctor", optarg, "must be more than 0");
                return SERVER_EXIT_USAGE;
            }
            cfg->doctor_ms = ms;
            break;
        case OPT_DOCTOR_JSON:
            cfg->doctor_json = optarg;
            break;
        case OPT_ADMIN: {
            crest_addr_t a;
            if (crest_addr_parse(optarg, &a) < 0 || a.ss.ss_family == AF_UNIX) {
                bad_value("admin", optarg, "must be HOST:PORT");
                return SERVER_EXIT_USAGE;
            }
            cfg->admin = optarg;
            break;
        }
        case OPT_TIMESTAMPS:
            cfg->timestamps = true;
            break;
        case OPT_WATCHDOG:
            if (parse_uint("watchdog", optarg, 1, 3600000, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->watchdog_ms = (uint32_t)u;
            break;
        case OPT_WORK:
        case OPT_WORK_ONCE:
            if (parse_uint(opt == OPT_WORK ? "work" : "work-once", optarg, 0, 60000000, &u) < 0)
                return SERVER_EXIT_USAGE;
            *(opt == OPT_WORK ? &cfg->work_us : &cfg->work_once_us) = u;
            break;
        case OPT_SLOW_US:
            if (parse_uint("slow-us", optarg, 1, 60000000, &u) < 0)
                return SERVER_EXIT_USAGE;
            cfg->slow_us = (uint32_t)u;
            break;
        case OPT_NO_INSIGHT:
            cfg->no_insight = true;
            break;
        case OPT_TIMING:
            if (strcmp(optarg, "always") == 0)
                cfg->timing = CREST_TIMING_ALWAYS;
            else if (strcmp(optarg, "auto") == 0)
                cfg->timing = CREST_TIMING_AUTO;
            else if (strcmp(optarg, "off") == 0)
                cfg->timing = CREST_TIMING_OFF;
            else {
                bad_value("timing", optarg, "always, auto or off");
                return SERVER_EXIT_USAGE;
            }
            break;
        case OPT_FD_LEAK:
            cfg->fd_leak = true;
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
    if (proto->one_process && cfg->workers > 1) {
        fprintf(stderr, "%s: --workers: its clients must share one process; use --threads\n",
                proto->name);
        return SERVER_EXIT_USAGE;
    }
    if (cfg->unix_path && (cfg->threads > 1 || cfg->workers > 1)) {
        /* SO_REUSEPORT does not share a Unix socket path between listeners. */
        fprintf(stderr, "%s: --unix works with one thread and one process only\n", proto->name);
        return SERVER_EXIT_USAGE;
    }
    if (cfg->no_insight && (doctor_windows(cfg) || cfg->timestamps || cfg->slow_us ||
                            cfg->timing >= 0)) {
        fprintf(stderr, "%s: --no-insight turns off what --doctor, --doctor-json, "
                "--timestamps, --slow-us and --timing need\n", proto->name);
        return SERVER_EXIT_USAGE;
    }
    proto->threads = cfg->threads;
    if (proto->configured && proto->configured(proto) < 0)
        return SERVER_EXIT_USAGE;
    return PARSE_OK;
}

/* ------------------------------------------------------------------------
 * One server process: a control loop and a group of worker loops
 * ------------------------------------------------------------------------ */

static int fail(const struct server *srv, const char *what, int rc) {
    fprintf(stderr, "%s%s: %s: %s\n", srv->tag, srv->proto->name, what, crest_strerror(rc));
    return SERVER_EXIT_ERROR;
}

/* crest_group_start() failed: say which thread's setup, and why. */
static void setup_failed(const struct server *srv, int rc) {
    const struct config *cfg = &srv->cfg;
    for (unsigned i = 0; i < cfg->threads; i++) {
        const struct worker *w = &srv->workers[i];
        if (w->setup_rc < 0 && w->setup_step) {
            char addr[CREST_ADDR_STRLEN + 16];
            listen_address(cfg, srv->port, addr, sizeof addr);
            fprintf(stderr, "%s%s: %s %s: %s%s\n", srv->tag, srv->proto->name, w->setup_step,
                    addr, crest_strerror(w->setup_rc),
                    w->setup_rc == -EINVAL ? " (--host takes an IP address or localhost)" : "");
            return;
        }
    }
    fail(srv, "starting the worker threads", rc);
}

/* Serve until the signals say stop; print the final report (or, in a
 * worker process, send it to the supervisor).  Returns the exit code.
 * SIGINT and SIGTERM are blocked already. */
static int serve(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    int rc;
    /* What can fail for a reason the user can fix comes first, before
     * anything else exists. */
    if (json_open(srv, srv->report_fd < 0) < 0)
        return SERVER_EXIT_ERROR;
    if (cfg->watchdog_ms) {
        crest_watchdog_opts_t wo;
        crest_watchdog_opts_init(&wo);
        wo.threshold_ms = cfg->watchdog_ms;
        if ((rc = crest_watchdog_start(&wo)) < 0) {
            json_close(srv);
            return fail(srv, "crest_watchdog_start", rc);
        }
    }
    if ((rc = crest_loop_create(&srv->loop)) < 0)
        return fail(srv, "crest_loop_create", rc);
    /* A worker process listens to the supervisor only (SIGTERM). */
    if ((srv->report_fd < 0 &&
         (rc = crest_signal_start(srv->loop, SIGINT, on_signal, srv, &srv->sigint)) < 0) ||
        (rc = crest_signal_start(srv->loop, SIGTERM, on_signal, srv, &srv->sigterm)) < 0) {
        crest_signal_stop(srv->sigint);
        crest_loop_destroy(srv->loop);
        return fail(srv, "crest_signal_start", rc);
    }
    if (cfg->stats_ms && !cfg->quiet) {
        if ((rc = crest_timer_create(srv->loop, on_stats_tick, srv, &srv->stats_timer)) < 0)
            return fail(srv, "crest_timer_create", rc);
        crest_timer_start(srv->stats_timer, cfg->stats_ms, cfg->stats_ms);
    }

    srv->workers = calloc(cfg->threads, sizeof *srv->workers);
    if (!srv->workers)
        return fail(srv, "calloc", -ENOMEM);
    for (unsigned i = 0; i < cfg->threads; i++) {
        srv->workers[i].srv = srv;
        srv->workers[i].index = i;
        pthread_mutex_init(&srv->workers[i].post_lock, NULL);
    }

    /* Every thread creates its loop and listener, concurrently; this
     * returns once all have (or one failed and the rest were stopped). */
    int code = SERVER_EXIT_OK, join_rc = 0;
    rc = crest_group_start(cfg->threads, group_init, group_fini, srv, &srv->group);
    if (srv->report_fd < 0)
        release_port(srv); /* every listener is bound (or none will be) */
    release_passed(srv);   /* every worker has its own dup (or none will) */
    if (rc < 0) {
        setup_failed(srv, rc);
        code = SERVER_EXIT_ERROR;
    } else {
        srv->running = cfg->threads;
        const struct worker *w0 = &srv->workers[0];
        if (srv->report_fd >= 0) {
            struct wmsg m = {.type = MSG_READY};
            snprintf(m.u.ready.address, sizeof m.u.ready.address, "%s", w0->address);
            m.u.ready.sndbuf = w0->sndbuf;
            m.u.ready.rcvbuf = w0->rcvbuf;
            send_msg(srv, &m);
        } else {
            announce(srv, w0->address, w0->sndbuf, w0->rcvbuf);
        }
        srv->started_ms = srv->prev_ms = crest_loop_now(srv->loop);
        if ((rc = doctor_start(srv)) < 0) /* the server still serves */
            fprintf(stderr, "%s%s: --doctor: %s: no windows\n", srv->tag, srv->proto->name,
                    crest_strerror(rc));
        if ((rc = admin_start(srv)) < 0) /* the server still serves */
            fprintf(stderr, "%s%s: --admin %s: %s: no admin endpoint\n", srv->tag,
                    srv->proto->name, cfg->admin, crest_strerror(rc));
        rc = crest_loop_run(srv->loop); /* until every worker is done */
        if (rc < 0) {
            code = fail(srv, "control loop", rc);
            for (unsigned i = 0; i < srv->running; i++)
                worker_post(&srv->workers[i], worker_abort);
        }
        join_rc = crest_group_join(srv->group);
        if (join_rc < 0)
            fail(srv, "a worker loop failed", join_rc);
    }
    crest_loop_update_time(srv->loop);
    uint64_t uptime_ms = crest_loop_now(srv->loop) - srv->started_ms;

    crest_signal_stop(srv->sigint);
    crest_signal_stop(srv->sigterm);
    crest_timer_destroy(srv->stats_timer);
    doctor_free(srv);
    admin_free(srv);
    if (cfg->watchdog_ms)
        crest_watchdog_stop();

    /* The whole run's figures and findings; the --doctor-json file and
     * --fd-leak's pipes are closed before the fds are counted. */
    struct run_insight ri = {0};
    bool have_insight = code == SERVER_EXIT_OK && collect_insight(srv, &ri);
    if (have_insight && ri.dx_ok)
        write_json(srv, &ri.dx, "run");
    json_close(srv);
    if (cfg->fd_leak)
        ri.leaked_on_purpose = leak_close_all();

    int main_leaked = crest_loop_destroy(srv->loop);
    if (code == SERVER_EXIT_OK) {
        struct totals t;
        collect_totals(srv, &t, (uint64_t)(main_leaked > 0 ? main_leaked : 0) +
                                    (uint64_t)(join_rc > 0 ? join_rc : 0), join_rc < 0);
        if (srv->report_fd >= 0) {
            if (t.open_now || t.leaked) {
                printf("%s%s: fds still open at exit:\n", srv->tag, srv->proto->name);
                crest_fd_report(stdout);
            }
            /* Not summed by the supervisor: each worker prints its own. */
            printf("%s%s: latency insight of this worker process:\n", srv->tag,
                   srv->proto->name);
            print_insight_report(srv, &ri, srv->tag);
            struct wmsg m = {.type = MSG_REPORT};
            m.u.totals = t;
            send_msg(srv, &m);
            code = (int)t.exit_code;
        } else {
            code = print_report(srv, &t, uptime_ms);
            print_insight_report(srv, &ri, "");
        }
    }
    free(ri.sum);
    for (unsigned i = 0; i < cfg->threads; i++) {
        free(srv->workers[i].ins_final);
        pthread_mutex_destroy(&srv->workers[i].post_lock);
    }
    free(srv->workers);
    srv->workers = NULL;
    return code;
}

/* ------------------------------------------------------------------------
 * The supervisor: --workers N processes
 * ------------------------------------------------------------------------ */

struct child {
    struct supervisor *sup;
    unsigned index;
    pid_t pid;
    int fd;                       /* our end of its pipe; -1 once it closed */
    crest_io_t *io;
    struct wmsg msg;              /* being received */
    size_t got;
    bool ready, reported, exited;
    struct wmsg ready_msg;
    struct totals totals;
    int status;                   /* waitpid()'s */
};

struct supervisor {
    struct server *srv;
    struct child *kids;
    unsigned n, forked, ready, exited;
    crest_loop_t *loop;
    crest_signal_t *sigint, *sigterm;
    int signals_seen;
    bool stopping, failed;
    uint64_t started_ms;
};

static void signal_children(struct supervisor *sup) {
    for (unsigned i = 0; i < sup->forked; i++)
        if (!sup->kids[i].exited)
            kill(sup->kids[i].pid, SIGTERM);
}

/* Stop every worker that is still running: one went away, or one did not
 * start.  Workers run together or not at all. */
static void stop_all(struct supervisor *sup) {
    if (sup->stopping)
        return;
    sup->stopping = true;
    signal_children(sup);
}

static void describe_status(int status, char *buf, size_t size) {
    if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, size, "ended (status 0x%x)", (unsigned)status);
}

static void child_message(struct child *k) {
    struct supervisor *sup = k->sup;
    struct server *srv = sup->srv;
    if (k->msg.type == MSG_READY && !k->ready) {
        k->ready = true;
        k->ready_msg = k->msg;
        if (++sup->ready == sup->n) {
            release_port(srv); /* every listener is bound */
            const struct wmsg *r = &sup->kids[0].ready_msg;
            if (!sup->stopping) /* a signal came first: they are draining already */
                announce(srv, r->u.ready.address, r->u.ready.sndbuf, r->u.ready.rcvbuf);
        }
    } else if (k->msg.type == MSG_REPORT) {
        k->reported = true;
        k->totals = k->msg.u.totals;
    }
}

static void child_gone(struct child *k) {
    struct supervisor *sup = k->sup;
    crest_io_stop(k->io);
    k->io = NULL;
    close(k->fd);
    k->fd = -1;
    while (waitpid(k->pid, &k->status, 0) < 0 && errno == EINTR) {
    }
    k->exited = true;
    bool clean = WIFEXITED(k->status) && k->reported &&
                 (WEXITSTATUS(k->status) == SERVER_EXIT_OK ||
                  WEXITSTATUS(k->status) == SERVER_EXIT_LEAK);
    if (!clean) {
        char how[96];
        describe_status(k->status, how, sizeof how);
        printf("%s: worker %u (pid %d) %s%s%s\n", sup->srv->proto->name, k->index, (int)k->pid,
               how, k->ready ? "" : " before it was ready",
               sup->stopping ? "" : ": stopping the others");
        sup->failed = true;
        stop_all(sup);
    }
    if (++sup->exited == sup->forked)
        crest_loop_stop(sup->loop);
}

static void on_child_pipe(crest_io_t *io, unsigned events, void *arg) {
    (void)io;
    (void)events;
    struct child *k = arg;
    for (;;) {
        ssize_t n = read(k->fd, (char *)&k->msg + k->got, sizeof k->msg - k->got);
        if (n > 0) {
            k->got += (size_t)n;
            if (k->got == sizeof k->msg) {
                child_message(k);
                k->got = 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        child_gone(k); /* EOF: the worker exited (or an error: treat it so) */
        return;
    }
}

static void on_supervisor_signal(crest_signal_t *sig, int signo, void *arg) {
    (void)sig;
    struct supervisor *sup = arg;
    const char *name = signo == SIGINT ? "SIGINT" : "SIGTERM";
    if (sup->signals_seen++ == 0)
        printf("%s: %s: stopping %u workers: each closes its listeners and drains its "
               "connections (at most %.1f s)\n",
               sup->srv->proto->name, name, sup->n, GRACE_MS / 1000.0);
    else
        printf("%s: %s again: workers abort every connection now\n", sup->srv->proto->name,
               name);
    sup->stopping = true;
    signal_children(sup); /* a worker takes a second SIGTERM as "abort now" */
}

/* The worker process: a whole server of its own. */
static _Noreturn void run_worker(struct server *srv, unsigned index, int wfd, pid_t parent) {
    /* If the supervisor dies, drain and go (the pipe write then fails). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(SERVER_EXIT_ERROR);
    signal(SIGINT, SIG_IGN); /* the supervisor forwards it as SIGTERM */
    srv->report_fd = wfd;
    srv->proc_index = index;
    snprintf(srv->tag, sizeof srv->tag, "worker %u: ", index);
    int code = serve(srv);
    close(wfd);
    fflush(stdout);
    exit(code);
}

static int supervise(struct server *srv) {
    const struct config *cfg = &srv->cfg;
    const char *name = srv->proto->name;
    static struct supervisor sup;
    sup.srv = srv;
    sup.n = cfg->workers;
    sup.kids = calloc(sup.n, sizeof *sup.kids);
    if (!sup.kids) {
        fprintf(stderr, "%s: out of memory\n", name);
        return SERVER_EXIT_ERROR;
    }
    if (reserve_port(srv) < 0) {
        free(sup.kids);
        return SERVER_EXIT_ERROR;
    }

    if (cfg->doctor_json) { /* the workers append to it */
        int fd = open(cfg->doctor_json, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "%s: --doctor-json %s: %s\n", name, cfg->doctor_json,
                    crest_strerror(-errno));
            free(sup.kids);
            release_port(srv);
            return SERVER_EXIT_ERROR;
        }
        close(fd);
    }

    /* Fork every worker before this process creates any crest loop. */
    fflush(stdout);
    fflush(stderr);
    pid_t self = getpid();
    int code = SERVER_EXIT_OK;
    for (unsigned i = 0; i < sup.n; i++) {
        struct child *k = &sup.kids[i];
        k->sup = &sup;
        k->index = i;
        k->fd = -1;
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) {
            fprintf(stderr, "%s: pipe: %s\n", name, crest_strerror(-errno));
            code = SERVER_EXIT_ERROR;
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "%s: fork: %s\n", name, crest_strerror(-errno));
            close(p[0]);
            close(p[1]);
            code = SERVER_EXIT_ERROR;
            break;
        }
        if (pid == 0) {
            for (unsigned j = 0; j < i; j++)
                close(sup.kids[j].fd); /* the other workers' pipes */
            close(p[0]);
            release_port(srv);     /* the supervisor's to hold */
            run_worker(srv, i, p[1], self);
        }
        close(p[1]);
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        k->pid = pid;
        k->fd = p[0];
        sup.forked++;
    }
    release_passed(srv); /* each worker process has them */

    int rc = crest_loop_create(&sup.loop);
    if (rc < 0 ||
        (rc = crest_signal_start(sup.loop, SIGINT, on_supervisor_signal, &sup, &sup.sigint)) < 0 ||
        (rc = crest_signal_start(sup.loop, SIGTERM, on_supervisor_signal, &sup, &sup.sigterm)) <
            0) {
        fprintf(stderr, "%s: supervisor loop: %s\n", name, crest_strerror(rc));
        code = SERVER_EXIT_ERROR;
    }
    if (sup.loop)
        sup.started_ms = crest_loop_now(sup.loop);
    for (unsigned i = 0; i < sup.forked && code == SERVER_EXIT_OK; i++) {
        struct child *k = &sup.kids[i];
        rc = crest_io_start(sup.loop, k->fd, CREST_IO_READABLE, on_child_pipe, k, &k->io);
        if (rc < 0) {
            fprintf(stderr, "%s: watching worker %u: %s\n", name, i, crest_strerror(rc));
            code = SERVER_EXIT_ERROR;
        }
    }
    if (code != SERVER_EXIT_OK) {
        /* Stop what was started and wait for it, without a loop. */
        sup.failed = true;
        stop_all(&sup);
        for (unsigned i = 0; i < sup.forked; i++) {
            if (sup.kids[i].io)
                crest_io_stop(sup.kids[i].io);
            if (!sup.kids[i].exited)
                while (waitpid(sup.kids[i].pid, &sup.kids[i].status, 0) < 0 && errno == EINTR) {
                }
        }
    } else {
        crest_loop_run(sup.loop); /* until every worker has exited */
    }
    uint64_t uptime_ms = 0;
    if (sup.loop) {
        crest_loop_update_time(sup.loop);
        uptime_ms = crest_loop_now(sup.loop) - sup.started_ms;
    }
    crest_signal_stop(sup.sigint);
    crest_signal_stop(sup.sigterm);
    int leaked = sup.loop ? crest_loop_destroy(sup.loop) : 0;
    for (unsigned i = 0; i < sup.forked; i++)
        if (sup.kids[i].fd >= 0)
            close(sup.kids[i].fd);
    release_port(srv);

    if (code == SERVER_EXIT_OK && sup.ready == sup.n) { /* they all served */
        /* The summed report: the workers' figures, and this process's own
         * fds (its loop's). */
        struct totals t;
        collect_totals(srv, &t, leaked > 0 ? (uint64_t)leaked : 0, sup.failed);
        for (unsigned i = 0; i < sup.forked; i++) {
            const struct child *k = &sup.kids[i];
            if (!k->reported)
                continue;
            const struct totals *w = &k->totals;
            add_figures(&t.sum, &w->sum);
            t.fds.opened += w->fds.opened;
            t.fds.closed += w->fds.closed;
            t.fds.peak += w->fds.peak;
            t.fds.bad_closes += w->fds.bad_closes;
            t.open_now += w->open_now;
            t.leaked += w->leaked;
            t.failed += w->failed;
        }
        if (sup.failed && !t.failed)
            t.failed = 1;
        code = print_report(srv, &t, uptime_ms);
        printf("  latency insight: per worker process, as each printed it above (not summed)\n");
    } else if (code == SERVER_EXIT_OK) {
        code = SERVER_EXIT_ERROR; /* a worker failed to start: it said why */
    }
    free(sup.kids);
    return code;
}

/* ------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------ */

/* --fd-leak: room for FD_LEAK_MAX fds (the soft limit raised as far as
 * the hard one allows), and 256 spare so that the server keeps serving. */
static void fd_leak_init(const server_proto_t *proto) {
    snprintf(leak_origin, sizeof leak_origin, "%s fd-leak", proto->name);
    for (unsigned i = 0; i < FD_LEAK_MAX; i++)
        leak_fds[i] = -1;
    struct rlimit rl;
    leak_cap = FD_LEAK_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < FD_LEAK_MAX + 256) {
            rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > FD_LEAK_MAX + 256
                              ? FD_LEAK_MAX + 256
                              : rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < FD_LEAK_MAX + 256)
            leak_cap = rl.rlim_cur > 256 ? (unsigned)(rl.rlim_cur - 256) & ~1u : 0;
    }
}

int server_main(int argc, char **argv, server_proto_t *proto) {
    static struct server srv; /* zeroed; outlives every thread */
    srv.proto = proto;
    srv.report_fd = -1;
    srv.reserve_fd = -1;
    srv.json_fd = -1;
    /* One line at a time even into a pipe: tests read "listening on" and
     * the report as they come. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    int rc = parse_options(&srv, argc, argv);
    if (rc != PARSE_OK)
        return rc;
    if (srv.cfg.quiet)
        crest_log_set_level(CREST_LOG_WARN);

    /* Socket activation: take the variables out of the environment, so
     * that nothing this process starts inherits them. */
    int passed = crest_listen_fds(true);
    if (passed < 0) {
        fprintf(stderr, "%s: LISTEN_PID/LISTEN_FDS: %s\n", proto->name, crest_strerror(passed));
        return SERVER_EXIT_ERROR;
    }
    if (passed > MAX_PASSED) {
        fprintf(stderr, "%s: %d sockets passed (LISTEN_FDS); at most %d are served\n",
                proto->name, passed, MAX_PASSED);
        return SERVER_EXIT_ERROR;
    }
    srv.passed = passed;
    if (passed)
        srv.cfg.unix_path = NULL; /* the passed sockets are what we serve */

    /* The skeleton watches on_open and on_close; the protocol keeps the
     * rest of its handler. */
    srv.handler = proto->handler;
    srv.handler.on_open = on_open;
    srv.handler.on_close = on_close;
    const struct config *cfg = &srv.cfg;
    if (cfg->work_us || cfg->work_once_us || cfg->fd_leak) {
        if (proto->handler.on_data)
            srv.handler.on_data = work_on_data;
        if (proto->handler.on_message)
            srv.handler.on_message = work_on_message;
    }
    if (cfg->fd_leak)
        fd_leak_init(proto);

    /* Block SIGINT and SIGTERM before any thread or worker process starts,
     * so that every thread inherits the mask and the signals reach only
     * the control loop's signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if (srv.cfg.workers > 1)
        return supervise(&srv);
    if (reserve_port(&srv) < 0)
        return SERVER_EXIT_ERROR;
    return serve(&srv);
}
