/* crest_pool (pool.h): connections to one target kept open and handed out.
 *
 * Each pooled connection is a struct pconn on one of three lists:
 * connecting, idle (LIFO: the most recently given back at the head, so the
 * rest age out by the idle timeout) and borrowed.  An idle or connecting
 * connection has the pool's handler, whose context is its pconn; a
 * borrowed one has the borrower's.  The pool learns of every close,
 * borrowed or not, through a close hook on the connection (conn.c runs it
 * after on_close), so its counts never drift and a dead connection is
 * never handed out.
 *
 * Callers wait in a FIFO queue.  Handing out happens in dispatch(), which
 * runs from the loop only: deferred after an acquire or a release, from a
 * connection's on_open, or from the pool's timer.  So no callback ever runs
 * inside a crest_pool_* call.
 *
 * One repeating timer per pool does the housekeeping: acquire timeouts,
 * idle timeouts, lifetimes, leak reports, and keeping min_idle warm.  Its
 * period is a quarter of the shortest of those limits, at most 1 s. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "conn_int.h"
#include "pool_int.h"

enum pstate { P_CONNECTING, P_IDLE, P_BORROWED, P_CLOSING };

struct pconn {
    struct pconn *prev, *next;   /* in its state's list */
    crest_pool_t *pool;          /* NULL once the pool is gone (borrowed) */
    crest_conn_t *c;
    crest_pool_req_t *for_req;   /* the waiter this connect was made for */
    uint64_t created_ms;
    uint64_t since_ms;           /* idle since, or borrowed since */
    uint64_t opened_for;         /* seq of the request it was opened for */
    enum pstate state;
    bool opened;                 /* on_open ran */
    bool orphan;                 /* no close hook: pool_on_close frees it */
    bool leak_reported;
    char label[40];              /* the borrower's */
};

struct plist {
    struct pconn *head, *tail;
    uint32_t n;
};

struct crest_pool_req {
    crest_pool_req_t *prev, *next; /* in the wait queue */
    crest_pool_t *pool;
    crest_handler_t handler;
    void *ctx;
    crest_pool_acquire_cb cb;
    void *arg;
    uint64_t start_ns;
    uint64_t deadline_ms;
    struct pconn *connecting;    /* a connect started for it */
    uint64_t seq;
    bool queued;                 /* in the wait queue */
    bool cancelled;
    char label[40];
};

struct crest_pool {
    crest_pool_t *loop_next;     /* the loop's pools (pool_int.h) */
    crest_loop_t *loop;
    char *target, *name;
    crest_pool_opts_t o;
    crest_conn_opts_t copts;
    struct plist connecting, idle, borrowed, closing;
    crest_pool_req_t *wait_head, *wait_tail;
    uint32_t waiting;
    crest_timer_t *timer;
    bool dispatch_queued;        /* a deferred dispatch() is pending */
    bool destroyed;              /* freed by that dispatch, or when busy
                                    drops to 0 */
    unsigned busy;               /* inside a pool function that calls back */
    uint64_t refill_after_ms;    /* warm connects wait until then after a */
    uint32_t backoff_ms;         /* failure: 100 ms, doubling to 5 s */
    uint64_t next_seq;
    uint64_t tick_ms;            /* the housekeeping timer's period */
    crest_pool_stats_t st;
};

static const crest_handler_t pool_handler;
static void queue_dispatch(crest_pool_t *p);

/* ---- lists ----------------------------------------------------------------- */

static void list_push_front(struct plist *l, struct pconn *pc) {
    pc->prev = NULL;
    pc->next = l->head;
    if (l->head)
        l->head->prev = pc;
    else
        l->tail = pc;
    l->head = pc;
    l->n++;
}

static void list_remove(struct plist *l, struct pconn *pc) {
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        l->head = pc->next;
    if (pc->next)
        pc->next->prev = pc->prev;
    else
        l->tail = pc->prev;
    pc->prev = pc->next = NULL;
    l->n--;
}

static struct plist *list_of(crest_pool_t *p, enum pstate s) {
    return s == P_CONNECTING ? &p->connecting
           : s == P_IDLE     ? &p->idle
           : s == P_BORROWED ? &p->borrowed
                             : &p->closing;
}

static void move_to(crest_pool_t *p, struct pconn *pc, enum pstate s) {
    list_remove(list_of(p, pc->state), pc);
    pc->state = s;
    pc->since_ms = crest_loop_now(p->loop);
    list_push_front(list_of(p, s), pc);
}

static uint32_t total(const crest_pool_t *p) {
    return p->connecting.n + p->idle.n + p->borrowed.n;
}

static void wait_remove(crest_pool_t *p, crest_pool_req_t *q) {
    if (q->prev)
        q->prev->next = q->next;
    else
        p->wait_head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        p->wait_tail = q->prev;
    q->prev = q->next = NULL;
    q->queued = false;
    p->waiting--;
}

/* Run a caller's callback; the pool may be destroyed inside it. */
static void call_back(crest_pool_req_t *q, int status, crest_conn_t *c) {
    q->cb(status, c, q->arg);
    free(q);
}

/* After a callback: false if the pool was destroyed in it.  Its memory
 * stays until the outermost pool function returns (leave()). */
static bool still_alive(const crest_pool_t *p) {
    return !p->destroyed;
}

static void enter(crest_pool_t *p) {
    p->busy++;
}

/* The outermost pool function returns: free a pool destroyed meanwhile. */
static void leave(crest_pool_t *p) {
    if (--p->busy == 0 && p->destroyed && !p->dispatch_queued)
        free(p);
}

/* Close a connection the pool holds (idle or connecting): off its list at
 * once; the close hook frees it later. */
static void discard(crest_pool_t *p, struct pconn *pc, bool abort) {
    if (pc->for_req) {
        pc->for_req->connecting = NULL;
        pc->for_req = NULL;
    }
    move_to(p, pc, P_CLOSING);
    if (abort)
        crest_conn_abort(pc->c);
    else
        crest_conn_close(pc->c);
}

/* ---- the loop's pools ---------------------------------------------------------- */

void crest__conn_pools_each(crest_loop_t *loop,
                            void (*fn)(const crest_pool_t *p, const char *name,
                                       const crest_pool_stats_t *st, void *arg),
                            void *arg) {
    for (crest_pool_t *p = loop->conn_pools; p; p = p->loop_next) {
        crest_pool_stats_t st;
        crest_pool_get_stats(p, &st);
        fn(p, p->name, &st, arg);
    }
}

void crest__conn_pools_sample(crest_loop_t *loop, crest_insight_t *fig) {
    fig->pools = 0;
    fig->pool_active = fig->pool_idle = fig->pool_waiting = fig->pool_max = 0;
    fig->pool_busiest_active = fig->pool_busiest_max = fig->pool_busiest_waiting = 0;
    fig->pool_busiest[0] = '\0';
    bool exhausted = false;
    for (crest_pool_t *p = loop->conn_pools; p; p = p->loop_next) {
        uint32_t act = p->borrowed.n, max = p->o.max_size;
        fig->pools++;
        fig->pool_active += act;
        fig->pool_idle += p->idle.n;
        fig->pool_waiting += p->waiting;
        fig->pool_max += max;
        /* The busiest: the largest share of max_size borrowed. */
        if (!fig->pool_busiest_max ||
            (uint64_t)act * fig->pool_busiest_max > (uint64_t)fig->pool_busiest_active * max) {
            fig->pool_busiest_active = act;
            fig->pool_busiest_max = max;
            fig->pool_busiest_waiting = p->waiting;
            snprintf(fig->pool_busiest, sizeof fig->pool_busiest, "%s", p->name);
        }
        if (p->waiting > 0 && (uint64_t)act * 5 >= (uint64_t)max * 4)
            exhausted = true;
    }
    if (exhausted)
        fig->pool_exhausted_samples++;
}

static void loop_link(crest_pool_t *p) {
    p->loop_next = p->loop->conn_pools;
    p->loop->conn_pools = p;
}

static void loop_unlink(crest_pool_t *p) {
    for (crest_pool_t **pp = &p->loop->conn_pools; *pp; pp = &(*pp)->loop_next) {
        if (*pp == p) {
            *pp = p->loop_next;
            return;
        }
    }
}

/* ---- connections ----------------------------------------------------------------- */

static void on_conn_closed(struct crest_conn *c, void *arg);

/* A new connection, for req (or for the warm reserve when NULL). */
static int start_connect(crest_pool_t *p, crest_pool_req_t *req) {
    struct pconn *pc = calloc(1, sizeof *pc);
    if (!pc)
        return -ENOMEM;
    pc->pool = p;
    pc->state = P_CONNECTING;
    pc->created_ms = pc->since_ms = crest_loop_now(p->loop);
    int rc = crest_connect(p->loop, p->target, &p->copts, &pool_handler, pc, &pc->c);
    if (rc < 0) {
        free(pc);
        return rc;
    }
    rc = crest__conn_set_close_hook(pc->c, on_conn_closed, pc);
    if (rc < 0) {
        pc->pool = NULL;
        pc->orphan = true; /* pool_on_close frees it */
        crest_conn_abort(pc->c);
        return rc;
    }
    list_push_front(&p->connecting, pc);
    if (req) {
        pc->for_req = req;
        req->connecting = pc;
    }
    return 0;
}

/* A connection closed, whatever its state (the hook runs after on_close). */
static void on_conn_closed(struct crest_conn *c, void *arg) {
    (void)c;
    struct pconn *pc = arg;
    crest_pool_t *p = pc->pool;
    if (!p) { /* the pool went first: a borrowed connection outlived it */
        free(pc);
        return;
    }
    list_remove(list_of(p, pc->state), pc);
    if (pc->opened)
        p->st.closed++;
    if (pc->for_req)
        pc->for_req->connecting = NULL;
    free(pc);
    /* A slot is free: a waiter or the warm reserve may want it. */
    if (p->wait_head || p->idle.n + p->connecting.n < p->o.min_idle)
        queue_dispatch(p);
}

/* The pool's own handler: connecting and idle connections. */
static void pool_on_open(crest_conn_t *c) {
    struct pconn *pc = crest_conn_handler_ctx(c);
    crest_pool_t *p = pc->pool;
    p->st.created++;
    p->backoff_ms = 0;
    pc->opened = true;
    move_to(p, pc, P_IDLE);
    if (pc->for_req) {
        pc->opened_for = pc->for_req->seq;
        pc->for_req->connecting = NULL;
        pc->for_req = NULL;
    }
    crest__conn_pools_dispatch(p);
}

static ssize_t pool_on_data(crest_conn_t *c, const uint8_t *data, size_t len) {
    (void)data;
    (void)len;
    struct pconn *pc = crest_conn_handler_ctx(c);
    crest_pool_t *p = pc->pool;
    if (!p)
        return (ssize_t)len;
    /* Nobody asked the target anything: bytes now mean the protocol is out
     * of step (or a goodbye such as an idle-timeout notice). */
    crest_log(CREST_LOG_INFO, "pool %s: idle connection %" PRIu64 " got %zu unexpected bytes: "
              "discarded", p->name, crest_conn_id(c), len);
    p->st.dead_discarded++;
    discard(p, pc, true);
    return (ssize_t)len;
}

static void pool_on_eof(crest_conn_t *c) {
    struct pconn *pc = crest_conn_handler_ctx(c);
    crest_pool_t *p = pc->pool;
    if (!p)
        return;
    crest_log(CREST_LOG_DEBUG, "pool %s: the target closed idle connection %" PRIu64
              ": discarded", p->name, crest_conn_id(c));
    p->st.dead_discarded++;
    discard(p, pc, false);
}

static void pool_on_close(crest_conn_t *c, crest_close_reason_t reason, int err) {
    struct pconn *pc = crest_conn_handler_ctx(c);
    crest_pool_t *p = pc->pool;
    if (!p) {
        if (pc->orphan)
            free(pc);
        return;
    }
    if (pc->state != P_CONNECTING || pc->opened)
        return; /* counted by the hook */
    p->st.connect_failures++;
    p->loop->ins.fig.pool_connect_failures++;
    /* A target that is down must not turn the warm reserve into a connect
     * loop: refills back off (callers still get a connect each). */
    p->backoff_ms = p->backoff_ms ? (p->backoff_ms >= 2500 ? 5000 : p->backoff_ms * 2) : 100;
    p->refill_after_ms = crest_loop_now(p->loop) + p->backoff_ms;
    crest_pool_req_t *q = pc->for_req;
    int status = reason == CREST_CLOSE_CONNECT_TIMEOUT ? -ETIMEDOUT : err ? -err : -ECONNREFUSED;
    crest_log(CREST_LOG_WARN, "pool %s: connect to %s failed: %s", p->name, p->target,
              crest_strerror(status));
    if (q) {
        /* The caller it was made for learns why at once (a proxy can try
         * another backend) rather than waiting out its timeout. */
        q->connecting = NULL;
        pc->for_req = NULL;
        wait_remove(p, q);
        enter(p);
        call_back(q, status, NULL);
        leave(p);
    }
}

static const crest_handler_t pool_handler = {
    .on_open = pool_on_open,
    .on_data = pool_on_data,
    .on_eof = pool_on_eof,
    .on_close = pool_on_close,
    .name = "crest pool",
};

static bool expired(const crest_pool_t *p, const struct pconn *pc, uint64_t now) {
    return p->o.max_lifetime_ms && now - pc->created_ms >= p->o.max_lifetime_ms;
}

/* ---- handing out ----------------------------------------------------------------- */

static void hand_over(crest_pool_t *p, crest_pool_req_t *q, struct pconn *pc) {
    wait_remove(p, q);
    if (q->connecting) {
        /* Its own connect is still under way: it joins the pool. */
        q->connecting->for_req = NULL;
        q->connecting = NULL;
    }
    bool reused = pc->opened_for != q->seq;
    move_to(p, pc, P_BORROWED);
    pc->leak_reported = false;
    memcpy(pc->label, q->label, sizeof pc->label);
    int rc = crest_conn_set_handler(pc->c, &q->handler, q->ctx);
    if (rc < 0) { /* not for an open connection: fail the caller */
        discard(p, pc, true);
        call_back(q, rc, NULL);
        return;
    }
    crest_conn_resume(pc->c);
    uint64_t waited = crest_loop_now_ns(p->loop) - q->start_ns;
    p->st.acquired++;
    p->loop->ins.fig.pool_acquired++;
    if (reused) {
        p->st.reused++;
        p->loop->ins.fig.pool_reused++;
    }
    crest__hist_record(&p->st.acquire_wait_ns, waited);
    crest__hist_record(&p->loop->ins.fig.pool_acquire_wait, waited);
    call_back(q, 0, pc->c);
}

/* Give idle connections to waiters, connect for the rest within max_size,
 * keep min_idle warm.  From the loop only; false if the pool was destroyed
 * by a callback. */
static bool dispatch(crest_pool_t *p) {
    uint64_t now = crest_loop_now(p->loop);
    bool handed = false;
    while (p->wait_head && p->idle.n) {
        struct pconn *pc = p->idle.head;
        if (crest_conn_state(pc->c) != CREST_CONN_OPEN || expired(p, pc, now)) {
            discard(p, pc, false);
            continue;
        }
        hand_over(p, p->wait_head, pc);
        if (!still_alive(p))
            return false;
        handed = true;
    }
    /* Waiters without a connect of their own get one, within max_size. */
    for (crest_pool_req_t *q = p->wait_head; q && total(p) < p->o.max_size; q = q->next) {
        if (q->connecting)
            continue;
        if (start_connect(p, q) < 0)
            break; /* the timer tries again */
    }
    if (handed && p->idle.n + p->connecting.n < p->o.min_idle) {
        /* A warm connection just went to a caller whose first bytes are
         * on their way: replace it a millisecond later, off that path
         * (the refill's connect costs syscalls, and the target's accept). */
        crest_timer_start(p->timer, 1, p->tick_ms);
        return true;
    }
    while (p->idle.n + p->connecting.n < p->o.min_idle && total(p) < p->o.max_size &&
           now >= p->refill_after_ms)
        if (start_connect(p, NULL) < 0)
            break;
    return true;
}

void crest__conn_pools_dispatch(crest_pool_t *p) {
    enter(p);
    (void)dispatch(p);
    leave(p);
}

static void deferred_dispatch(crest_loop_t *loop, void *arg) {
    (void)loop;
    crest_pool_t *p = arg;
    p->dispatch_queued = false;
    enter(p);
    if (still_alive(p))
        (void)dispatch(p);
    leave(p);
}

static void queue_dispatch(crest_pool_t *p) {
    if (p->dispatch_queued)
        return;
    if (crest_loop_defer(p->loop, deferred_dispatch, p) == 0)
        p->dispatch_queued = true;
}

/* ---- housekeeping ------------------------------------------------------------------ */

/* Waiters past their deadline (the queue is in deadline order: every
 * wait has the same timeout).  false if a callback destroyed the pool. */
static bool expire_waiters(crest_pool_t *p, uint64_t now) {
    while (p->wait_head && p->wait_head->deadline_ms <= now) {
        crest_pool_req_t *q = p->wait_head;
        wait_remove(p, q);
        if (q->connecting) {
            q->connecting->for_req = NULL; /* the connect goes on for the pool */
            q->connecting = NULL;
        }
        p->st.acquire_timeouts++;
        p->loop->ins.fig.pool_acquire_timeouts++;
        crest_log(CREST_LOG_WARN,
                  "pool %s: acquire by '%s' timed out after %" PRIu32
                  " ms (%u of %u connections borrowed, %u waiting)",
                  p->name, q->label, p->o.acquire_timeout_ms, p->borrowed.n, p->o.max_size,
                  p->waiting);
        call_back(q, -ETIMEDOUT, NULL);
        if (!still_alive(p))
            return false;
    }
    return true;
}

static void expire_idle(crest_pool_t *p, uint64_t now) {
    /* From the tail: the longest idle first. */
    struct pconn *pc = p->idle.tail;
    while (pc) {
        struct pconn *prev = pc->prev;
        bool idle_out = p->o.idle_timeout_ms != UINT32_MAX && p->idle.n > p->o.min_idle &&
                        now - pc->since_ms >= p->o.idle_timeout_ms;
        if (idle_out || expired(p, pc, now))
            discard(p, pc, false);
        pc = prev;
    }
}

static void report_leaks(crest_pool_t *p, uint64_t now) {
    if (!p->o.leak_threshold_ms)
        return;
    for (struct pconn *pc = p->borrowed.head; pc; pc = pc->next) {
        uint64_t out = now - pc->since_ms;
        if (pc->leak_reported || out < p->o.leak_threshold_ms)
            continue;
        pc->leak_reported = true;
        p->st.leaks++;
        p->loop->ins.fig.pool_leaks++;
        crest_log(CREST_LOG_WARN,
                  "pool %s: connection %" PRIu64 " borrowed by '%s' for %" PRIu64
                  " ms (threshold %" PRIu32 " ms), not given back",
                  p->name, crest_conn_id(pc->c), pc->label, out, p->o.leak_threshold_ms);
    }
}

static void on_timer(crest_timer_t *t, void *arg) {
    (void)t;
    crest_pool_t *p = arg;
    uint64_t now = crest_loop_now(p->loop);
    enter(p);
    if (expire_waiters(p, now)) {
        expire_idle(p, now);
        report_leaks(p, now);
        (void)dispatch(p);
    }
    leave(p);
}

static uint64_t tick_ms(const crest_pool_opts_t *o) {
    uint64_t m = o->acquire_timeout_ms;
    if (o->idle_timeout_ms != UINT32_MAX && o->idle_timeout_ms < m)
        m = o->idle_timeout_ms;
    if (o->max_lifetime_ms && o->max_lifetime_ms < m)
        m = o->max_lifetime_ms;
    if (o->leak_threshold_ms && o->leak_threshold_ms < m)
        m = o->leak_threshold_ms;
    m /= 4;
    return m < 5 ? 5 : m > 1000 ? 1000 : m;
}

/* ---- public API --------------------------------------------------------------------- */

void crest_pool_opts_init(crest_pool_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->max_size = 16;
    o->idle_timeout_ms = 60000;
    o->acquire_timeout_ms = 5000;
    o->max_waiting = 4096;
}

int crest_pool_create(crest_loop_t *loop, const char *target, const crest_pool_opts_t *opts,
                      crest_pool_t **out) {
    if (!loop || !target || !*target || !out)
        return -EINVAL;
    int rc = crest__loop_may_start(loop);
    if (rc < 0)
        return rc;
    crest_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->loop = loop;
    crest_pool_opts_init(&p->o);
    if (opts) {
        p->o = *opts;
        if (!p->o.max_size)
            p->o.max_size = 16;
        if (!p->o.idle_timeout_ms)
            p->o.idle_timeout_ms = 60000;
        if (!p->o.acquire_timeout_ms)
            p->o.acquire_timeout_ms = 5000;
        if (!p->o.max_waiting)
            p->o.max_waiting = 4096;
    }
    if (p->o.min_idle > p->o.max_size) {
        free(p);
        return -EINVAL;
    }
    if (opts && opts->conn_opts) {
        p->copts = *opts->conn_opts;
    } else {
        crest_conn_opts_init(&p->copts);
        p->copts.connect_timeout_ms = 5000;
    }
    p->o.conn_opts = NULL;
    p->target = strdup(target);
    p->name = strdup(opts && opts->name ? opts->name : target);
    p->o.name = NULL;
    p->tick_ms = tick_ms(&p->o);
    rc = p->target && p->name ? crest_timer_create(loop, on_timer, p, &p->timer) : -ENOMEM;
    if (rc == 0)
        rc = crest_timer_start(p->timer, p->tick_ms, p->tick_ms);
    if (rc < 0) {
        if (p->timer)
            crest_timer_destroy(p->timer);
        free(p->target);
        free(p->name);
        free(p);
        return rc;
    }
    p->st.max_size = p->o.max_size;
    loop_link(p);
    queue_dispatch(p); /* min_idle: warm from the start */
    *out = p;
    return 0;
}

int crest_pool_acquire(crest_pool_t *p, const crest_handler_t *handler, void *ctx,
                       const char *label, crest_pool_acquire_cb cb, void *arg,
                       crest_pool_req_t **reqp) {
    if (reqp)
        *reqp = NULL;
    if (!p || !handler || !cb || (!handler->on_data && !handler->on_message))
        return -EINVAL;
    if (p->waiting >= p->o.max_waiting)
        return -EAGAIN;
    crest_pool_req_t *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->pool = p;
    q->handler = *handler;
    q->ctx = ctx;
    q->cb = cb;
    q->arg = arg;
    q->seq = ++p->next_seq;
    q->queued = true;
    q->start_ns = crest_loop_now_ns(p->loop);
    q->deadline_ms = crest_loop_now(p->loop) + p->o.acquire_timeout_ms;
    snprintf(q->label, sizeof q->label, "%s", label ? label : "?");
    q->prev = p->wait_tail;
    if (p->wait_tail)
        p->wait_tail->next = q;
    else
        p->wait_head = q;
    p->wait_tail = q;
    p->waiting++;
    queue_dispatch(p);
    if (!p->dispatch_queued) { /* the loop refuses new work */
        wait_remove(p, q);
        free(q);
        return -ESHUTDOWN;
    }
    if (reqp)
        *reqp = q;
    return 0;
}

void crest_pool_cancel(crest_pool_req_t *q) {
    if (!q)
        return;
    if (!q->queued) {
        /* Its callback is running (the caller frees it after), or the
         * pool was destroyed and its -ECANCELED is still queued. */
        q->cancelled = true;
        return;
    }
    wait_remove(q->pool, q);
    if (q->connecting) {
        q->connecting->for_req = NULL; /* it joins the pool when it opens */
        q->connecting = NULL;
    }
    free(q);
}

int crest_pool_release(crest_pool_t *p, crest_conn_t *c) {
    if (!p || !c || p->destroyed)
        return -EINVAL;
    struct pconn *pc = crest__conn_close_hook_arg(c, on_conn_closed);
    if (!pc || pc->pool != p || pc->state != P_BORROWED)
        return -EINVAL;
    crest_conn_set_data(c, NULL);
    bool reusable = crest_conn_state(c) == CREST_CONN_OPEN && crest_conn_output_bytes(c) == 0 &&
                    c->in == NULL && !expired(p, pc, crest_loop_now(p->loop));
    if (!reusable || crest_conn_set_handler(c, &pool_handler, pc) < 0) {
        discard(p, pc, false);
        return 1;
    }
    crest_conn_resume(c);
    move_to(p, pc, P_IDLE);
    if (p->wait_head)
        queue_dispatch(p);
    return 0;
}

static void cancelled_cb(crest_loop_t *loop, void *arg) {
    (void)loop;
    crest_pool_req_t *q = arg;
    if (!q->cancelled)
        q->cb(-ECANCELED, NULL, q->arg);
    free(q);
}

void crest_pool_destroy(crest_pool_t *p) {
    if (!p || p->destroyed)
        return;
    loop_unlink(p);
    crest_timer_destroy(p->timer);
    p->timer = NULL;
    while (p->wait_head) {
        crest_pool_req_t *q = p->wait_head;
        wait_remove(p, q);
        q->connecting = NULL;
        q->pool = NULL;
        /* -ECANCELED from the loop, or here while the loop is being
         * destroyed (callbacks run inside crest_loop_destroy()). */
        if (crest_loop_defer(p->loop, cancelled_cb, q) < 0)
            cancelled_cb(p->loop, q);
    }
    struct plist *lists[4] = {&p->connecting, &p->idle, &p->closing, &p->borrowed};
    for (int k = 0; k < 4; k++) {
        while (lists[k]->head) {
            struct pconn *pc = lists[k]->head;
            list_remove(lists[k], pc);
            pc->pool = NULL; /* the close hook frees it */
            pc->for_req = NULL;
            if (k < 2) /* borrowed ones stay their borrowers' */
                crest_conn_abort(pc->c);
        }
    }
    free(p->target);
    free(p->name);
    p->target = p->name = NULL;
    p->destroyed = true;
    enter(p);
    leave(p); /* frees it unless a pool function up the stack or a queued
                 dispatch still holds it */
}

void crest__conn_pools_destroy(crest_loop_t *loop) {
    while (loop->conn_pools) {
        crest_log(CREST_LOG_WARN, "pool %s: still alive at crest_loop_destroy(): destroyed",
                  loop->conn_pools->name);
        crest_pool_destroy(loop->conn_pools);
    }
}

void crest_pool_get_stats(const crest_pool_t *p, crest_pool_stats_t *out) {
    if (!p || !out)
        return;
    *out = p->st;
    out->max_size = p->o.max_size;
    out->active = p->borrowed.n;
    out->idle = p->idle.n;
    out->connecting = p->connecting.n;
    out->waiting = p->waiting;
}

void crest_pool_report(const crest_pool_t *p, FILE *out) {
    if (!p || !out)
        return;
    uint64_t now = crest_loop_now(p->loop);
    fprintf(out, "pool %s: %u borrowed, %u idle, %u connecting, %u waiting (max %u)\n", p->name,
            p->borrowed.n, p->idle.n, p->connecting.n, p->waiting, p->o.max_size);
    for (const struct pconn *pc = p->borrowed.tail; pc; pc = pc->prev)
        fprintf(out, "conn %" PRIu64 " %s %" PRIu64 " ms\n", crest_conn_id(pc->c), pc->label,
                now - pc->since_ms);
}
