/* The fd registry: a flat array indexed by fd, under one mutex.
 *
 * An entry remembers the last close of its fd too, so a second close can be
 * logged with both origins: where the fd was opened, where it was closed the
 * first time, and where the bad close came from. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* 16 bytes an fd: origins and owners are pointers to strings or loops that
 * live as long as the process (or the loop), so an entry keeps 16-bit
 * indexes into one table of them (interned once each), and times in
 * milliseconds since the registry's first use. */
struct fd_entry {
    uint16_t origin;           /* where it was opened (while open) */
    uint16_t closed_at;        /* where it was last closed */
    uint16_t owner;            /* the loop or layer that opened it */
    uint8_t kind;
    bool open;
    uint32_t generation;
    uint32_t opened_ms;
};

_Static_assert(sizeof(struct fd_entry) == 16, "an fd entry stays small");

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fd_entry *entries;
static size_t entries_cap;
static uint32_t next_generation = 1;
static uint64_t base_ns;
static crest_fd_counts_t counts[CREST_FD_KIND_COUNT + 1];

/* The intern table: index 0 is NULL ("unknown"); slots is an open-addressed
 * hash of indexes, at most half full. */
#define INTERN_MAX 65535u
static const void **interned;
static uint32_t interned_len = 1, interned_cap;
static uint16_t *slots;
static uint32_t slots_cap;

static uint32_t slot_of(const void *p, uint32_t cap) {
    return (uint32_t)(((uintptr_t)p * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1);
}

static bool rehash(uint32_t cap) {
    uint16_t *n = calloc(cap, sizeof *n);
    if (!n)
        return false;
    for (uint32_t id = 1; id < interned_len; id++) {
        uint32_t i = slot_of(interned[id], cap);
        while (n[i])
            i = (i + 1) & (cap - 1);
        n[i] = (uint16_t)id;
    }
    free(slots);
    slots = n;
    slots_cap = cap;
    return true;
}

/* The index of p, added if new; 0 for NULL or when the table is full or
 * out of memory (the report then says "?").  Lock held. */
static uint16_t intern(const void *p) {
    if (!p)
        return 0;
    if (slots_cap) {
        for (uint32_t i = slot_of(p, slots_cap); slots[i]; i = (i + 1) & (slots_cap - 1))
            if (interned[slots[i]] == p)
                return slots[i];
    }
    if (interned_len >= INTERN_MAX)
        return 0;
    if (interned_len + 1 > interned_cap) {
        uint32_t cap = interned_cap ? interned_cap * 2 : 64;
        const void **n = realloc(interned, cap * sizeof *n);
        if (!n)
            return 0;
        n[0] = NULL;
        interned = n;
        interned_cap = cap;
    }
    if (2 * (interned_len + 1) > slots_cap && !rehash(slots_cap ? slots_cap * 2 : 128))
        return 0;
    uint16_t id = (uint16_t)interned_len++;
    interned[id] = p;
    uint32_t i = slot_of(p, slots_cap);
    while (slots[i])
        i = (i + 1) & (slots_cap - 1);
    slots[i] = id;
    return id;
}

static const char *origin_text(uint16_t id) {
    return id && id < interned_len ? (const char *)interned[id] : "?";
}

static const char *const kind_names[CREST_FD_KIND_COUNT] = {
    [CREST_FD_EPOLL] = "epoll",       [CREST_FD_EVENTFD] = "eventfd",
    [CREST_FD_SIGNALFD] = "signalfd", [CREST_FD_TIMERFD] = "timerfd",
    [CREST_FD_LISTENER] = "listener", [CREST_FD_ACCEPTED] = "accepted",
    [CREST_FD_CONNECT] = "connect",   [CREST_FD_RESERVE] = "reserve",
    [CREST_FD_PIPE] = "pipe",         [CREST_FD_USER] = "user",
};

const char *crest_fd_kind_name(crest_fd_kind_t kind) {
    return (unsigned)kind < CREST_FD_KIND_COUNT ? kind_names[kind] : "unknown";
}

/* Grow so that fd is a valid index.  Called with the lock held. */
static int reserve(size_t fd) {
    if (fd < entries_cap)
        return 0;
    size_t cap = entries_cap ? entries_cap : 256;
    while (cap <= fd)
        cap *= 2;
    /* calloc, not realloc + memset: a large table comes zeroed from mmap,
     * and the pages no fd reaches are never touched, so cost no memory. */
    struct fd_entry *n = calloc(cap, sizeof *n);
    if (!n)
        return -ENOMEM;
    if (entries_cap)
        memcpy(n, entries, entries_cap * sizeof *n);
    free(entries);
    entries = n;
    entries_cap = cap;
    return 0;
}

static void count_open(unsigned kind) {
    crest_fd_counts_t *k = &counts[kind], *all = &counts[CREST_FD_ALL];
    k->open++;
    k->opened++;
    if (k->open > k->peak)
        k->peak = k->open;
    all->open++;
    all->opened++;
    if (all->open > all->peak)
        all->peak = all->open;
}

static void count_close(unsigned kind) {
    counts[kind].open--;
    counts[kind].closed++;
    counts[CREST_FD_ALL].open--;
    counts[CREST_FD_ALL].closed++;
}

int crest__fd_register(int fd, crest_fd_kind_t kind, const void *owner, const char *origin) {
    if (fd < 0)
        return -EBADF;
    if ((unsigned)kind >= CREST_FD_KIND_COUNT)
        return -EINVAL;
    uint64_t now = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    if (!base_ns)
        base_ns = now;
    int rc = reserve((size_t)fd);
    if (rc == 0 && entries[fd].open) {
        crest_log(CREST_LOG_WARN, "fd %d registered twice: already open as %s from %s, again as %s from %s",
                  fd, crest_fd_kind_name(entries[fd].kind), origin_text(entries[fd].origin),
                  crest_fd_kind_name(kind), origin);
        rc = -EEXIST;
    }
    if (rc == 0) {
        struct fd_entry *e = &entries[fd];
        e->origin = intern(origin);
        e->owner = intern(owner);
        e->opened_ms = (uint32_t)((now - base_ns) / 1000000u);
        e->generation = next_generation++;
        if (next_generation == 0)
            next_generation = 1;
        e->kind = (uint8_t)kind;
        e->open = true;
        count_open(kind);
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

int crest_fd_register_at(int fd, crest_fd_kind_t kind, const char *origin) {
    return crest__fd_register(fd, kind, NULL, origin);
}

/* Take fd out of the registry: 0, or -EBADF (logged) if it is not open. */
static int unregister(int fd, const char *origin, const char *verb) {
    int rc = 0;
    pthread_mutex_lock(&reg_lock);
    if (fd < 0 || (size_t)fd >= entries_cap || !entries[fd].open) {
        counts[CREST_FD_ALL].bad_closes++;
        if (fd >= 0 && (size_t)fd < entries_cap && entries[fd].closed_at) {
            struct fd_entry *e = &entries[fd];
            counts[e->kind].bad_closes++;
            crest_log(CREST_LOG_ERROR,
                      "double %s of fd %d (%s) at %s: opened at %s, already closed at %s; not closed again",
                      verb, fd, crest_fd_kind_name(e->kind), origin, origin_text(e->origin),
                      origin_text(e->closed_at));
        } else {
            crest_log(CREST_LOG_ERROR,
                      "%s of fd %d at %s: the fd registry does not hold it; not closed", verb, fd,
                      origin);
        }
        rc = -EBADF;
    } else {
        struct fd_entry *e = &entries[fd];
        e->open = false;
        e->closed_at = intern(origin);
        /* Never 0 once closed: a later bad close can name this one. */
        if (!e->closed_at)
            e->closed_at = UINT16_MAX;
        e->owner = 0;
        count_close(e->kind);
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

int crest_fd_close_at(int fd, const char *origin) {
    /* Unregister first: once close() returns, the number can be reused by
     * another thread's open, and must not look registered. */
    int rc = unregister(fd, origin, "close");
    if (rc < 0)
        return rc;
    /* Linux releases the fd even when close() fails, EINTR included: never
     * retry. */
    if (close(fd) < 0 && errno != EINTR)
        return -errno;
    return 0;
}

int crest_fd_release_at(int fd, const char *origin) {
    return unregister(fd, origin, "release");
}

int crest_fd_lookup(int fd, crest_fd_kind_t *kind, const char **origin, uint64_t *generation) {
    int rc = -EBADF;
    pthread_mutex_lock(&reg_lock);
    if (fd >= 0 && (size_t)fd < entries_cap && entries[fd].open) {
        if (kind)
            *kind = (crest_fd_kind_t)entries[fd].kind;
        if (origin)
            *origin = origin_text(entries[fd].origin);
        if (generation)
            *generation = entries[fd].generation;
        rc = 0;
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

int crest_fd_counts(crest_fd_kind_t kind, crest_fd_counts_t *out) {
    if ((unsigned)kind > CREST_FD_ALL || !out)
        return -EINVAL;
    pthread_mutex_lock(&reg_lock);
    *out = counts[kind];
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

uint64_t crest_fd_open_count(void) {
    pthread_mutex_lock(&reg_lock);
    uint64_t n = counts[CREST_FD_ALL].open;
    pthread_mutex_unlock(&reg_lock);
    return n;
}

/* The report goes either to a FILE or, line by line, to the log. */
struct sink {
    FILE *out;
};

static void emit(struct sink *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct sink *s, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (s->out)
        fprintf(s->out, "%s\n", line);
    else
        crest_log(CREST_LOG_INFO, "%s", line);
}

/* List open fds (all, or those of one owner).  Lock held. */
static int list_open(struct sink *s, bool all, const void *owner, uint64_t now) {
    int n = 0;
    uint16_t owner_id = intern(owner);
    uint32_t now_ms = (uint32_t)((now - base_ns) / 1000000u);
    for (size_t fd = 0; fd < entries_cap; fd++) {
        const struct fd_entry *e = &entries[fd];
        if (!e->open || (!all && e->owner != owner_id))
            continue;
        n++;
        uint32_t age_ms = now_ms - e->opened_ms;
        emit(s, "  fd %zu: %s, opened at %s, %" PRIu32 ".%03" PRIu32 " s ago, generation %" PRIu32,
             fd, crest_fd_kind_name(e->kind), origin_text(e->origin), age_ms / 1000, age_ms % 1000,
             e->generation);
    }
    return n;
}

/* fds open in the process (per /proc/self/fd) but not registered.  Lock held. */
static void list_unregistered(struct sink *s) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) {
        emit(s, "  (cannot read /proc/self/fd: %s)", crest_strerror(errno));
        return;
    }
    int self = dirfd(dir);
    int n = 0;
    char list[384] = "";
    size_t used = 0;
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(d->d_name, &end, 10);
        if (*end || end == d->d_name || fd == self || fd <= 2)
            continue;
        if ((size_t)fd < entries_cap && entries[fd].open)
            continue;
        n++;
        if (used < sizeof list - 16)
            used += (size_t)snprintf(list + used, sizeof list - used, " %ld", fd);
    }
    closedir(dir);
    if (n)
        emit(s, "  %d fd%s open in the process but unregistered (not crest's):%s", n,
             n == 1 ? "" : "s", list);
    else
        emit(s, "  no unregistered fds besides stdin, stdout and stderr");
}

static void counts_line(struct sink *s) {
    const crest_fd_counts_t *a = &counts[CREST_FD_ALL];
    emit(s, "  totals: %" PRIu64 " opened, %" PRIu64 " closed, %" PRIu64 " open, peak %" PRIu64
            ", %" PRIu64 " bad closes",
         a->opened, a->closed, a->open, a->peak, a->bad_closes);
    for (unsigned k = 0; k < CREST_FD_KIND_COUNT; k++) {
        const crest_fd_counts_t *c = &counts[k];
        if (c->opened)
            emit(s, "  %-9s %" PRIu64 " opened, %" PRIu64 " closed, %" PRIu64 " open, peak %" PRIu64,
                 kind_names[k], c->opened, c->closed, c->open, c->peak);
    }
}

int crest_fd_report(FILE *out) {
    struct sink s = {out};
    uint64_t now = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    emit(&s, "crest fd report: %" PRIu64 " open", counts[CREST_FD_ALL].open);
    int n = list_open(&s, true, NULL, now);
    counts_line(&s);
    list_unregistered(&s);
    pthread_mutex_unlock(&reg_lock);
    emit(&s, n ? "%d fd%s leaked" : "%d fds leaked", n, n == 1 ? "" : "s");
    return n;
}

int crest__fd_report_owner(const void *owner, const char *what) {
    struct sink s = {NULL};
    uint64_t now = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    int n = list_open(&s, false, owner, now);
    pthread_mutex_unlock(&reg_lock);
    if (n)
        crest_log(CREST_LOG_WARN, "%s: %d fd%s leaked (listed above)", what, n, n == 1 ? "" : "s");
    else
        crest_log(CREST_LOG_INFO, "%s: 0 fds leaked", what);
    return n;
}
