/* The admin endpoint's internals: the figures it collects from each loop
 * (on that loop's thread) and the renderers that turn them into pages.
 * The renderers compute nothing themselves (DESIGN.md): they format what
 * the loops and the registry already keep. */
#ifndef CREST_ADMIN_INT_H
#define CREST_ADMIN_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "crest/conn.h"
#include "crest/fdreg.h"
#include "crest/insight.h"
#include "crest/loop.h"
#include "crest/group.h"
#include "crest/http.h"
#include "crest/timer.h"
#include "strbuf.h"

/* One loop's figures, taken on its thread at one moment. */
struct crest__admin_loop_figures {
    unsigned index;          /* the loop label: its index in the group, 0 alone */
    crest_loop_stats_t loop;
    crest_conn_stats_t conns;
    crest_buf_stats_t bufs;
    crest_http_server_stats_t http; /* crest_http_loop_stats() */
    unsigned http_servers;   /* HTTP servers ever made on the loop */
    bool insight_enabled;
    crest_insight_t insight; /* crest_loop_get_insight(): live figures */
};

/* The process's figures. */
struct crest__admin_process_figures {
    crest_fd_counts_t fds[CREST_FD_KIND_COUNT]; /* per kind */
    uint64_t start_time_s;   /* wall clock (Unix seconds) crest's process
                                figures began: the admin's start */
    const char *version;     /* PACKAGE_VERSION */
};

/* Append the Prometheus text exposition (format 0.0.4) of these figures
 * to out.  n loops; with labelled set, every per-loop sample carries
 * loop="<index>" (a group); else none. */
void crest__metrics_render(struct crest__strbuf *out,
                           const struct crest__admin_loop_figures *loops, unsigned n,
                           bool labelled, const struct crest__admin_process_figures *proc);


/* ---- the endpoint's requests (admin.c, admin_pages.c) ------------------ */

enum crest__admin_page {
    CREST__PAGE_INDEX = 0,
    CREST__PAGE_METRICS,
    CREST__PAGE_HEALTHZ,
    CREST__PAGE_DOCTOR,
    CREST__PAGE_FDS,
    CREST__PAGE_CONNS,
    CREST__PAGE_SLOW
};

#define CREST__CONNS_DEFAULT_LIMIT 100u
#define CREST__CONNS_MAX_LIMIT 10000u
#define CREST__CONNS_SLICE 64u /* a slice of 256 (two syscalls each)
                                    took 1.5 ms on a loaded loop */

struct crest_admin;
struct crest_http_exchange;

/* A page's query parameters. */
struct crest__admin_query {
    bool json;          /* ?format=json */
    unsigned seconds;   /* ?seconds=N (1-300); 0: none */
    unsigned limit;     /* ?limit=N (1-10000) */
    bool has_after;     /* ?after=L.F */
    unsigned after_loop;
    int after_fd;
};

/* A request being answered.  Lives on the admin's loop; the parts sent to
 * other loops (a round, a walk) are counted in outstanding and the request
 * is freed only once they are all back. */
struct crest__admin_req {
    struct crest_admin *admin;        /* NULL once the admin stopped */
    crest_loop_t *admin_loop;
    crest_group_t *grp;               /* the admin's group, or NULL */
    struct crest_http_exchange *x;    /* NULL once answered or cancelled */
    struct crest__admin_req *prev, *next;
    enum crest__admin_page page;
    bool group;                       /* loop labels */
    struct crest__admin_query q;
    uint64_t start_time_s;
    unsigned nloops;
    /* A round: every loop runs per_loop, then on_round runs here. */
    void (*on_round)(struct crest__admin_req *r);
    unsigned round;                   /* rounds started */
    bool round_open;
    unsigned asked, answered, outstanding;
    bool *got;                        /* per loop: answered this round */
    struct crest__admin_loop_figures *figs; /* per loop */
    crest_insight_t *first;           /* doctor ?seconds=: the start */
    crest_timer_t *timer;             /* round timeout, doctor's wait */
    struct crest__conns_walk *walk;   /* /debug/crest/conns */
    struct crest__strbuf out;         /* the page */
};

/* admin.c */
int crest__admin_round(struct crest__admin_req *r,
                       void (*per_loop)(crest_loop_t *, unsigned, struct crest__admin_req *),
                       void (*on_round)(struct crest__admin_req *));
void crest__admin_collect(crest_loop_t *loop, unsigned index,
                          struct crest__admin_loop_figures *f);
void crest__admin_respond(struct crest__admin_req *r, int status, const char *ctype,
                          const char *body, size_t len);
void crest__admin_respond_out(struct crest__admin_req *r, const char *ctype);
/* Free r if it is answered (or cancelled) and nothing is out on a loop. */
void crest__admin_req_release(struct crest__admin_req *r);
/* The endpoint's own HTTP figures (zeros for NULL). */
void crest__admin_http_stats(const struct crest_admin *a, crest_http_server_stats_t *out);
/* admin_pages.c */
void crest__admin_page_start(struct crest__admin_req *r);
void crest__conns_walk_free(struct crest__admin_req *r);

#endif
