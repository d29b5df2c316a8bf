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
#include "strbuf.h"

/* One loop's figures, taken on its thread at one moment. */
struct crest__admin_loop_figures {
    unsigned index;          /* the loop label: its index in the group, 0 alone */
    crest_loop_stats_t loop;
    crest_conn_stats_t conns;
    crest_buf_stats_t bufs;
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

#endif
