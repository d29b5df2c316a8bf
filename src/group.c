/* Loop groups: n threads, each running its own loop.
 *
 * Start-up is a handshake: each worker creates its loop and runs init on
 * its own thread, then reports; start returns when all have reported, so
 * the caller knows every listener exists.  Stopping is a post to each
 * loop: its own thread then calls crest_loop_stop(). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct worker {
    crest_group_t *group;
    unsigned index;
    pthread_t thread;
    bool started;             /* pthread_create succeeded */
    crest_loop_t *loop;
    int rc;                   /* init's, then run's result */
    int leaked;
};

struct crest_group {
    unsigned n;
    crest_group_init_cb init;
    crest_group_fini_cb fini;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    unsigned reported;        /* workers past init */
    bool abort;               /* an init failed: everyone stops */
    bool shutdown;            /* crest_group_shutdown() was called */
    uint32_t grace_ms;        /* its grace period (set under lock, read
                                 by the posted callbacks) */
    struct worker *workers;
};

static void stop_cb(crest_loop_t *loop, void *arg) {
    CREST__UNUSED(arg);
    crest_loop_stop(loop);
}

static void shutdown_done_cb(crest_loop_t *loop, void *arg) {
    CREST__UNUSED(arg);
    crest_loop_stop(loop);
}

/* Posted by crest_group_shutdown(), on the worker's thread. */
static void shutdown_cb(crest_loop_t *loop, void *arg) {
    crest_group_t *g = arg;
    int rc = crest_loop_shutdown(loop, g->grace_ms, shutdown_done_cb, NULL);
    if (rc == -EALREADY)
        loop->shutdown_stop = true; /* the application's own: stop after it */
    else if (rc < 0)
        crest_loop_stop(loop); /* -ESHUTDOWN: being destroyed anyway */
}

static void *worker_main(void *p) {
    struct worker *w = p;
    crest_group_t *g = w->group;
    int rc = crest_loop_create(&w->loop);
    if (rc == 0 && g->init)
        rc = g->init(w->loop, w->index, g->arg);
    pthread_mutex_lock(&g->lock);
    w->rc = rc;
    if (rc < 0)
        g->abort = true;
    g->reported++;
    pthread_cond_broadcast(&g->ready);
    /* Run only once every worker is set up, and only if all succeeded. */
    while (g->reported < g->n && !g->abort)
        pthread_cond_wait(&g->ready, &g->lock);
    bool go = !g->abort;
    pthread_mutex_unlock(&g->lock);

    if (go)
        w->rc = crest_loop_run(w->loop);
    if (w->loop) {
        if (g->fini && rc == 0)
            g->fini(w->loop, w->index, g->arg);
        /* crest_group_stop() posts under the lock: once the loop is out of
         * the table no post can reach it, and any post made before has
         * finished. */
        pthread_mutex_lock(&g->lock);
        crest_loop_t *loop = w->loop;
        w->loop = NULL;
        pthread_mutex_unlock(&g->lock);
        w->leaked = crest_loop_destroy(loop);
    }
    return NULL;
}

int crest_group_start(unsigned n, crest_group_init_cb init, crest_group_fini_cb fini, void *arg,
                      crest_group_t **groupp) {
    if (n == 0 || !groupp)
        return -EINVAL;
    crest_group_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->workers = calloc(n, sizeof *g->workers);
    if (!g->workers) {
        free(g);
        return -ENOMEM;
    }
    g->n = n;
    g->init = init;
    g->fini = fini;
    g->arg = arg;
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->ready, NULL);

    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &g->workers[i];
        w->group = g;
        w->index = i;
        int err = pthread_create(&w->thread, NULL, worker_main, w);
        if (err) {
            rc = -err;
            pthread_mutex_lock(&g->lock);
            g->abort = true;
            g->reported += n - i; /* the ones never started */
            pthread_cond_broadcast(&g->ready);
            pthread_mutex_unlock(&g->lock);
            break;
        }
        w->started = true;
    }
    pthread_mutex_lock(&g->lock);
    while (g->reported < n)
        pthread_cond_wait(&g->ready, &g->lock);
    bool failed = g->abort;
    pthread_mutex_unlock(&g->lock);
    if (failed) {
        for (unsigned i = 0; i < n && rc == 0; i++)
            if (g->workers[i].rc < 0)
                rc = g->workers[i].rc;
        crest_group_join(g);
        return rc ? rc : -ECANCELED;
    }
    *groupp = g;
    return 0;
}

void crest_group_stop(crest_group_t *g) {
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->n; i++) {
        crest_loop_t *loop = g->workers[i].loop;
        if (loop)
            (void)crest_loop_post(loop, stop_cb, NULL);
    }
    pthread_mutex_unlock(&g->lock);
}

int crest_group_shutdown(crest_group_t *g, uint32_t grace_ms) {
    if (!g)
        return -EINVAL;
    pthread_mutex_lock(&g->lock);
    if (g->shutdown) {
        pthread_mutex_unlock(&g->lock);
        return -EALREADY;
    }
    g->shutdown = true;
    g->grace_ms = grace_ms;
    int rc = 0;
    for (unsigned i = 0; i < g->n; i++) {
        crest_loop_t *loop = g->workers[i].loop;
        int r = loop ? crest_loop_post(loop, shutdown_cb, g) : 0;
        if (r < 0 && rc == 0)
            rc = r;
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

int crest_group_join(crest_group_t *g) {
    int rc = 0, leaked = 0;
    for (unsigned i = 0; i < g->n; i++) {
        struct worker *w = &g->workers[i];
        if (!w->started)
            continue;
        pthread_join(w->thread, NULL);
        if (w->rc < 0 && rc == 0)
            rc = w->rc;
        leaked += w->leaked;
    }
    pthread_cond_destroy(&g->ready);
    pthread_mutex_destroy(&g->lock);
    free(g->workers);
    free(g);
    return rc < 0 ? rc : leaked;
}

int crest_group_post(crest_group_t *g, unsigned index, crest_cb cb, void *arg) {
    if (!g || index >= g->n || !cb)
        return -EINVAL;
    /* Under the lock a worker cannot take its loop out of the table and
     * destroy it: the post lands before the destroy or not at all. */
    pthread_mutex_lock(&g->lock);
    crest_loop_t *loop = g->workers[index].loop;
    int rc = loop ? crest_loop_post(loop, cb, arg) : -ESRCH;
    pthread_mutex_unlock(&g->lock);
    return rc;
}

unsigned crest_group_size(const crest_group_t *g) {
    return g->n;
}

crest_loop_t *crest_group_loop(crest_group_t *g, unsigned index) {
    if (index >= g->n)
        return NULL;
    pthread_mutex_lock(&g->lock);
    crest_loop_t *loop = g->workers[index].loop;
    pthread_mutex_unlock(&g->lock);
    return loop;
}

int crest_group_get_insight(crest_group_t *g, crest_insight_t *out) {
    if (!g || !out)
        return -EINVAL;
    crest_insight_t *one = malloc(sizeof *one);
    if (!one)
        return -ENOMEM;
    memset(out, 0, sizeof *out);
    /* Under the lock no worker can destroy its loop while it is read. */
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->n; i++) {
        crest_loop_t *loop = g->workers[i].loop;
        if (loop && crest_loop_read_insight(loop, one) == 0)
            crest_insight_add(out, one);
    }
    pthread_mutex_unlock(&g->lock);
    free(one);
    return 0;
}
