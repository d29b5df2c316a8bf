/* Connection internals shared by conn.c, conn_io.c, listener.c and
 * connect.c. */
#ifndef CREST_CONN_INT_H
#define CREST_CONN_INT_H

#include "internal.h"

/* What a listener (or one outbound connect) gives its connections: the
 * handler, its context and the options.  Reference-counted, so it outlives
 * a listener closed while its connections are still open. */
struct crest__endpoint {
    crest_handler_t handler;
    void *ctx;
    crest_conn_opts_t opts;
    size_t max_buffered;          /* most input bytes a connection may hold */
    unsigned refs;
    unsigned max_conns;           /* listener: 0 = no limit */
    unsigned proxy;               /* listener: PROXY versions expected */
    crest_listener_stats_t lstats;
};

struct crest_conn {
    struct crest_io io;           /* io.loop, io.fd; registered once */
    struct crest__endpoint *ep;
    void *data;
    struct crest__chunk *in;      /* input not yet consumed, or NULL */
    crest_proxy_info_t *proxy;    /* what a PROXY header said, or NULL */
    struct crest__chunk *out_head, *out_tail;
    size_t out_bytes;
    struct crest_timer timer;     /* the earliest of the deadlines below */
    uint64_t last_active_ns;      /* idle timeout: last byte in or out */
    uint64_t read_started_ns;     /* read timeout: a partial message since */
    uint64_t write_stalled_ns;    /* write timeout: output waiting since */
    uint64_t started_ns;          /* connect timeout */
    struct crest_conn *prev, *next; /* loop->conns; zombies use next */
    int close_err;
    uint16_t depth;               /* handler callbacks in progress */
    uint8_t state;                /* crest_conn_state_t */
    uint8_t close_reason;
    bool readable;                /* cached readiness (edge-triggered) */
    bool writable;
    bool peer_done;               /* RDHUP/HUP seen: read until EOF */
    bool paused_high;             /* above high water */
    bool paused_user;             /* crest_conn_pause() */
    bool gather;                  /* inside on_data: queue writes */
    bool corked;                  /* crest_conn_cork() */
    bool shut_pending;            /* shutdown(SHUT_WR) once flushed */
    bool shut_done;
    bool close_requested;
    bool aborting;
    bool dead;                    /* the socket failed: nothing more to send */
    bool redeliver;               /* buffered input waits for a resume */
    bool proxy_wait;              /* the PROXY header has not arrived yet */
};

/* Chunk offsets are 32-bit: no input buffer may grow past this. */
#define CREST__MAX_BUFFERED (1u << 30)

/* conn.c */
struct crest_conn *crest__conn_create(crest_loop_t *loop, int fd, struct crest__endpoint *ep,
                                      crest_conn_state_t state);
void crest__conn_open(struct crest_conn *c);
void crest__conn_notify_open(struct crest_conn *c);
void crest__conn_request_close(struct crest_conn *c, crest_close_reason_t reason, int err);
void crest__conn_settle(struct crest_conn *c);
void crest__conn_arm_timer(struct crest_conn *c);
void crest__endpoint_release(struct crest__endpoint *ep);
int crest__endpoint_new(const crest_handler_t *handler, void *ctx, const crest_conn_opts_t *opts,
                        struct crest__endpoint **out);
int crest__conn_apply_opts(int fd, const crest_conn_opts_t *o, bool tcp);

/* conn_io.c */
void crest__conn_on_io(crest_io_t *io, unsigned events, void *arg);
int crest__conn_flush(struct crest_conn *c);
void crest__conn_drop_buffers(struct crest_conn *c);
void crest__conn_resume_input(struct crest_conn *c);

static inline bool crest__conn_can_write(const struct crest_conn *c) {
    return c->state == CREST_CONN_OPEN || c->state == CREST_CONN_HALF_CLOSED ||
           c->state == CREST_CONN_CONNECTING;
}

#define CREST__CONN_OF_IO(iop) CREST__CONTAINER_OF(iop, struct crest_conn, io)

#endif
