/* Connection internals shared by conn.c, conn_io.c, listener.c and
 * connect.c. */
#ifndef CREST_CONN_INT_H
#define CREST_CONN_INT_H

#include "internal.h"

/* What a listener (or one outbound connect) gives its connections: the
 * handler, its context and the options.  Reference-counted, so it outlives
 * a listener closed while its connections are still open.
 *
 * A connection changed while it lives (crest_conn_set_opts/_handler) gets
 * its own copy on the first change, unless it holds the only reference
 * (then the endpoint is changed in place).  The copy keeps a reference to
 * the endpoint it came from (origin), whose listener counters
 * (lstats.active, which max_conns is checked against) the connection still
 * counts in: crest__endpoint_home(). */
struct crest__endpoint {
    crest_handler_t handler;
    void *ctx;
    crest_conn_opts_t opts;
    size_t max_buffered;          /* most input bytes a connection may hold */
    size_t max_output;            /* most output it may hold (queued plus
                                     gathered): opts.max_output, or the
                                     queue's own limit (UINT32_MAX) if 0 */
    unsigned refs;
    unsigned max_conns;           /* listener: 0 = no limit */
    unsigned proxy;               /* listener: PROXY versions expected */
    bool outbound;                /* crest_connect*, crest_conn_adopt: what
                                     keep_reading AUTO resolves by */
    crest_listener_stats_t lstats;
    struct crest__endpoint *origin; /* a connection's own copy: the shared
                                       endpoint it was copied from (a
                                       reference); else NULL */
};

/* The endpoint whose listener counters a connection counts in. */
static inline struct crest__endpoint *crest__endpoint_home(struct crest__endpoint *ep) {
    return ep->origin ? ep->origin : ep;
}

/* A connection: 168 bytes, so that an idle one costs 176 bytes of heap
 * (see docs/performance.md).  Times are the loop's millisecond clock
 * (loop->now_ms), 0 meaning "not set". */
struct crest_conn {
    struct crest_io io;           /* io.loop, io.fd; registered once; after
                                     the close, io.free_next links zombies */
    struct crest__endpoint *ep;   /* shared with the listener's other
                                     connections until this one is changed
                                     (then its own copy) */
    void *data;
    struct crest__chunk *in;      /* input not yet consumed, or NULL */
    struct crest__chunk *out_head, *out_tail;
    union {                       /* the socket's peer, kept from accept4 or
                                     connect: after an RST the kernel forgets
                                     it, and on_close still wants it */
        struct {
            uint32_t addr;        /* IPv4, network order */
            uint16_t port;        /* network order */
        } v4;
        struct crest__conn_extra *extra; /* IPv6, or a PROXY header's */
    } peer;
    uint64_t id;                  /* unique in the process, never reused */
    uint64_t created_ns;          /* the loop's clock when it was made */
    uint64_t bytes_in, bytes_out; /* this connection's own counters */
    uint64_t messages_in;         /* framed messages delivered */
    uint32_t out_bytes;           /* queued output (at most 4 GiB - 1) */
    uint32_t last_active;         /* idle timeout: last byte in or out;
                                     connect timeout: when it started */
    uint32_t last_input;          /* input idle timeout: last byte in */
    uint32_t read_started;        /* read timeout: a partial message since */
    uint32_t write_stalled;       /* write timeout: output waiting since */
    uint32_t dl_key;              /* deadline the loop's heap holds */
    uint32_t dl_index;            /* position in that heap + 1; 0: none */
    uint32_t flags;               /* CREST__C_* */
    uint16_t close_err;           /* the errno behind the close reason */
    uint8_t depth;                /* handler callbacks in progress */
    uint8_t state;                /* crest_conn_state_t */
    uint8_t close_reason;
    uint8_t peer_kind;            /* CREST__PEER_*: which member of peer */
};

/* Connection flags, one word so that the read path can test the usual
 * case ("nothing unusual going on") with one mask. */
enum {
    CREST__C_READABLE = 1u << 0,        /* cached readiness (edge-triggered) */
    CREST__C_WRITABLE = 1u << 1,
    CREST__C_PEER_DONE = 1u << 2,       /* RDHUP/HUP seen: read until EOF */
    CREST__C_PAUSED_HIGH = 1u << 3,     /* above high water */
    CREST__C_PAUSED_USER = 1u << 4,     /* crest_conn_pause() */
    CREST__C_GATHER = 1u << 5,          /* inside on_data: gather writes */
    CREST__C_CORKED = 1u << 6,          /* crest_conn_cork() */
    CREST__C_SHUT_PENDING = 1u << 7,    /* shutdown(SHUT_WR) once flushed */
    CREST__C_SHUT_DONE = 1u << 8,
    CREST__C_CLOSE_REQUESTED = 1u << 9,
    CREST__C_ABORTING = 1u << 10,
    CREST__C_DEAD = 1u << 11,           /* the socket failed: nothing more to send */
    CREST__C_REDELIVER = 1u << 12,      /* buffered input waits for a resume */
    CREST__C_PROXY_WAIT = 1u << 13,     /* the PROXY header has not arrived yet */
    CREST__C_EOF_SEEN = 1u << 14,       /* read() returned 0; acted on once all
                                           buffered input is delivered */
    CREST__C_URGENT = 1u << 15,         /* EPOLLPRI seen: a short read may be
                                           the urgent mark, read to EAGAIN */
    CREST__C_REFRAMED = 1u << 24,       /* the handler or the framing changed
                                           during delivery: the rest of the
                                           input is parsed anew (conn_io.c) */
    /* Notifications a call caused, run when the connection's current
     * callback returns or, with none on the stack, from the loop through
     * the ready list (crest__conn_notify): never inside the call. */
    CREST__C_HW_PENDING = 1u << 16,     /* on_high_water to run */
    CREST__C_DRAIN_PENDING = 1u << 17,  /* on_drain to run (both pending: in
                                           the order PAUSED_HIGH implies) */
    CREST__C_FLUSH_WAIT = 1u << 18,     /* crest_conn_flush_notify() callbacks
                                           wait (extra->flush) */
    CREST__C_FLUSHED_PENDING = 1u << 19, /* on_flushed to run */
    CREST__C_TCP = 1u << 20,            /* a TCP socket (not Unix): TCP_INFO
                                           is read at its close */
    CREST__C_NO_LINGER = 1u << 22,      /* crest_conn_close_nolinger() */
    CREST__C_NAGLE = 1u << 21,          /* TCP_NODELAY off: small writes are
                                           sampled for Nagle delays (tested
                                           with FLUSH_WAIT in wrote()) */
    CREST__C_RX_TSTAMP = 1u << 30,      /* SO_TIMESTAMPING is on: reads go
                                           through crest__rx_read
                                           (insight_rx.c), which records
                                           receive-queue dwell */
};

#define CREST__C_NOTIFY                                                         \
    (CREST__C_HW_PENDING | CREST__C_DRAIN_PENDING | CREST__C_FLUSH_WAIT |         \
     CREST__C_FLUSHED_PENDING)

enum { CREST__PEER_NONE = 0, CREST__PEER_V4, CREST__PEER_EXTRA };

/* What does not fit in the 168 bytes: only IPv6 peers and connections
 * behind a PROXY header pay for it. */
/* One crest_conn_flush_notify() waiting: cb runs once the connection's
 * bytes_out reaches mark. */
struct crest__flush_wait {
    uint64_t mark;
    crest_conn_flush_cb cb;
    void *arg;
};

/* What does not fit in the 168 bytes: only IPv6 peers, connections behind
 * a PROXY header and those with flush notifications pay for it. */
struct crest__conn_extra {
    crest_addr_t socket_peer;     /* len 0 if unknown */
    crest_proxy_info_t proxy;     /* version 0 if no PROXY header */
    struct crest__flush_wait *flush; /* FIFO: flush[flush_head ..] */
    uint32_t flush_head, flush_len, flush_cap;
    /* An owner inside crest told of the close (a pool): after on_close,
     * whoever's handler the connection has then. */
    void (*close_hook)(struct crest_conn *c, void *arg);
    void *close_hook_arg;
    struct crest__dial *dial;     /* dial.c: a name being resolved and
                                     connected; NULL once an attempt won */
};

/* connect.c: an errno that says the connect failed (reported through
 * on_close), not that the call was wrong. */
bool crest__is_connect_failure(int err);

/* dial.c: crest_connect() to a name. */
int crest__dial_start(crest_loop_t *loop, const char *host, uint16_t port,
                      const crest_conn_opts_t *opts, const crest_handler_t *handler, void *ctx,
                      crest_conn_t **connp);
/* The connection closes before an attempt won: stop everything. */
void crest__dial_cancel(struct crest_conn *c);

/* Set (fn NULL: clear) the close hook.  0 or -ENOMEM. */
int crest__conn_set_close_hook(struct crest_conn *c, void (*fn)(struct crest_conn *, void *),
                               void *arg);
/* The hook's arg if fn is the hook, else NULL. */
void *crest__conn_close_hook_arg(const struct crest_conn *c,
                                 void (*fn)(struct crest_conn *, void *));

/* The per-loop heap of connection deadlines (conn_timer.c): one generic
 * timer for the loop, and a heap of connection pointers ordered by each
 * one's dl_key.  Later deadlines are applied lazily, so the per-message
 * cost of the idle timeout is one store to last_active. */
struct crest__deadlines {
    struct crest_conn **v;
    uint32_t len, cap;
    struct crest_timer timer;
    bool ready;                   /* timer initialised */
};

/* Chunk offsets are 32-bit: no input buffer may grow past this. */
#define CREST__MAX_BUFFERED (1u << 30)

/* conn.c */
/* Receive-queue dwell (insight_rx.c): turn timestamps on for a new
 * connection (the loop's rx_timestamps is on), and its reads then. */
void crest__rx_timestamps_on(struct crest_conn *c);
ssize_t crest__rx_read(struct crest_conn *c, void *dst, size_t space);

struct crest_conn *crest__conn_create(crest_loop_t *loop, int fd, struct crest__endpoint *ep,
                                      crest_conn_state_t state);
void crest__conn_open(struct crest_conn *c);
void crest__conn_notify_open(struct crest_conn *c);
void crest__conn_set_peer(struct crest_conn *c, const struct sockaddr *sa, socklen_t len);
struct crest__conn_extra *crest__conn_extra(struct crest_conn *c);
void crest__conn_request_close(struct crest_conn *c, crest_close_reason_t reason, int err);
void crest__conn_connect_failed(struct crest_conn *c, crest_close_reason_t why, int err);
void crest__conn_settle(struct crest_conn *c);
void crest__conn_deadline_reached(struct crest_conn *c, crest_close_reason_t why);

/* conn_timer.c */
void crest__conn_arm_timer(struct crest_conn *c);
void crest__conn_disarm_timer(struct crest_conn *c);
void crest__deadlines_destroy(crest_loop_t *loop);
void crest__endpoint_release(struct crest__endpoint *ep);
int crest__endpoint_new(const crest_handler_t *handler, void *ctx, const crest_conn_opts_t *opts,
                        bool outbound, struct crest__endpoint **out);
int crest__conn_apply_opts(int fd, const crest_conn_opts_t *o, bool tcp);
int crest__conn_check_opts(const crest_handler_t *handler, const crest_conn_opts_t *in,
                           bool outbound, crest_conn_opts_t *out, size_t *max_buffered);
size_t crest__conn_max_output(const crest_conn_opts_t *o);
void crest__conn_set_oobinline(int fd);
int crest__check_adoptable(int fd, bool want_listening); /* connect.c */

/* tcp_info.c: the kernel's TCP_INFO, as crest reads it (fields past the
 * end of an older kernel's struct read 0).  0 or -errno. */
struct crest__tcpi {
    uint8_t state, retransmits;
    uint32_t rtt_us, rttvar_us, snd_mss, snd_cwnd;
    uint32_t unacked;             /* listener: accept queue length */
    uint32_t sacked;              /* listener: its backlog */
    uint32_t total_retrans, segs_out, segs_in, notsent_bytes, min_rtt_us;
    uint64_t delivery_rate, busy_us, rwnd_limited_us, sndbuf_limited_us;
};
int crest__tcp_info(int fd, struct crest__tcpi *out);
/* Bytes in the send queue not yet sent (SIOCOUTQNSD), or -errno. */
int crest__sock_unsent(int fd);
/* listener.c: TcpExt ListenOverflows/ListenDrops of /proc/net/netstat. */
int crest__netstat_listen(uint64_t *overflows, uint64_t *drops);

/* conn_io.c */
void crest__conn_on_io(crest_io_t *io, unsigned events, void *arg);
void crest__conn_linger_io(struct crest_conn *c, unsigned events); /* conn.c */
int crest__conn_flush(struct crest_conn *c);
void crest__conn_drop_buffers(struct crest_conn *c);
void crest__conn_resume_input(struct crest_conn *c);
void crest__conn_commit_gathered(struct crest_conn *c);
size_t crest__conn_input_bytes(const struct crest_conn *c);
bool crest__conn_paused(const struct crest_conn *c);
void crest__conn_notify(struct crest_conn *c);
void crest__conn_flush_waits_end(struct crest_conn *c);
void crest__conn_pause_ended(struct crest_conn *c, uint64_t since_ns);

/* TCP_NODELAY is off (on): sample small writes for Nagle (or not). */
static inline void crest__conn_set_nagle(struct crest_conn *c, bool nagle) {
    if (nagle)
        c->flags |= CREST__C_NAGLE;
    else
        c->flags &= (uint32_t)~CREST__C_NAGLE;
}

static inline bool crest__conn_can_write(const struct crest_conn *c) {
    return c->state == CREST_CONN_OPEN || c->state == CREST_CONN_HALF_CLOSED ||
           c->state == CREST_CONN_CONNECTING;
}

#define CREST__CONN_OF_IO(iop) CREST__CONTAINER_OF(iop, struct crest_conn, io)

#endif
