/* The fd registry: a flat array indexed by fd, under one mutex.
 *
 * An entry remembers the last close of its fd too, so a second close can be
 * logged with both origins: where the fd was opened, where it was closed the
 * first time, and where the bad close came from. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* 24 bytes an fd: origins and owners are pointers to strings or loops that
 * live as long as the process (or the loop), so an entry keeps 16-bit ids
 * of them (see the id tables below), and times in milliseconds since the
 * registry's first use.  An open fd is also linked into its origin's list
 * of open fds, oldest first (fd growth, below). */
struct fd_entry {
    uint16_t origin;           /* where it was opened (while open) */
    uint16_t closed_at;        /* where it was last closed */
    uint16_t owner;            /* the loop that opened it; 0: none (the
                                  application's) */
    uint8_t kind;
    bool open;
    uint32_t generation;
    uint32_t opened_ms;
    int32_t prev, next;        /* the origin's open fds, in the order they
                                  were registered; -1 ends */
};

_Static_assert(sizeof(struct fd_entry) == 24, "an fd entry stays small");

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fd_entry *entries;
static size_t entries_cap;
static uint32_t next_generation = 1;
static uint64_t base_ns;
static crest_fd_counts_t counts[CREST_FD_KIND_COUNT + 1];

/* Id tables: pointer <-> 16-bit id, id 0 meaning "none".  Origins and
 * owners have a table each, so that running out of one never touches the
 * other:
 * - origins (strings, for the reports) stay for the process's life; once
 *   65,534 are known a new one is recorded as ORIGIN_UNKNOWN ("?");
 * - owners (loops) leave when their loop is destroyed, so the table holds
 *   live loops only, and a registration whose owner cannot be recorded
 *   fails (-ENOMEM): an fd is never filed under no owner or another's. */
#define ID_LIMIT 65535u              /* ids 1 .. ID_LIMIT - 1 */
#define ORIGIN_UNKNOWN UINT16_MAX    /* an origin there was no id for */

struct idtab {
    const void **v;                  /* v[id]; NULL for 0 and removed ids */
    uint32_t len, cap;               /* ids below len were handed out */
    uint32_t holes;                  /* removed ids below len, reused first */
    uint16_t *slots;                 /* open-addressed (linear probing) hash
                                        of ids, at most half full */
    uint32_t slots_cap;
};

static struct idtab origins = {.len = 1}, owners = {.len = 1};

static uint32_t slot_of(const void *p, uint32_t cap) {
    return (uint32_t)(((uintptr_t)p * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1);
}

static bool rehash(struct idtab *t, uint32_t cap) {
    uint16_t *n = calloc(cap, sizeof *n);
    if (!n)
        return false;
    for (uint32_t id = 1; id < t->len; id++) {
        if (!t->v[id])
            continue;
        uint32_t i = slot_of(t->v[id], cap);
        while (n[i])
            i = (i + 1) & (cap - 1);
        n[i] = (uint16_t)id;
    }
    free(t->slots);
    t->slots = n;
    t->slots_cap = cap;
    return true;
}

/* p's id, or 0 if it has none.  Lock held. */
static uint16_t id_find(const struct idtab *t, const void *p) {
    if (!p || !t->slots_cap)
        return 0;
    for (uint32_t i = slot_of(p, t->slots_cap); t->slots[i]; i = (i + 1) & (t->slots_cap - 1))
        if (t->v[t->slots[i]] == p)
            return t->slots[i];
    return 0;
}

/* p's id, added if new; 0 for NULL, and when the table is full or out of
 * memory.  Lock held. */
static uint16_t id_get(struct idtab *t, const void *p) {
    if (!p)
        return 0;
    uint16_t found = id_find(t, p);
    if (found)
        return found;
    if (!t->holes && t->len >= ID_LIMIT)
        return 0;
    if (!t->holes && t->len + 1 > t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 64;
        const void **n = realloc(t->v, cap * sizeof *n);
        if (!n)
            return 0;
        n[0] = NULL;
        t->v = n;
        t->cap = cap;
    }
    uint32_t live = t->len - 1 - t->holes;
    if (2 * (live + 1) > t->slots_cap && !rehash(t, t->slots_cap ? t->slots_cap * 2 : 128))
        return 0;
    uint32_t id = t->len;
    if (t->holes) {
        for (id = 1; t->v[id]; id++)
            ;
        t->holes--;
    } else {
        t->len++;
    }
    t->v[id] = p;
    uint32_t i = slot_of(p, t->slots_cap);
    while (t->slots[i])
        i = (i + 1) & (t->slots_cap - 1);
    t->slots[i] = (uint16_t)id;
    return (uint16_t)id;
}

/* Forget id (its pointer is going away); the id is handed out again.
 * Deletion by backward shift: no tombstones, so lookups stay short.  Lock
 * held. */
static void id_remove(struct idtab *t, uint16_t id) {
    uint32_t mask = t->slots_cap - 1;
    uint32_t i = slot_of(t->v[id], t->slots_cap);
    while (t->slots[i] != id)
        i = (i + 1) & mask;
    for (uint32_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        uint32_t home = slot_of(t->v[t->slots[j]], t->slots_cap);
        /* An entry whose home lies cyclically in (i, j] stays; any other
         * would be cut off from its home by the hole at i: move it up. */
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i] = 0;
    t->v[id] = NULL;
    t->holes++;
}

static const char *origin_text(uint16_t id) {
    return id && id < origins.len && origins.v[id] ? (const char *)origins.v[id] : "?";
}

/* An origin's id; ORIGIN_UNKNOWN when it cannot have one (0 stays "none",
 * for a NULL origin).  Lock held. */
static bool stat_add(uint16_t id);

static uint16_t origin_id(const char *origin) {
    if (!origin)
        return 0;
    uint16_t id = id_find(&origins, origin);
    if (id)
        return id;
    id = id_get(&origins, origin);
    if (id)
        (void)stat_add(id); /* new: its counters (stat_of copes without) */
    return id ? id : ORIGIN_UNKNOWN;
}

/* fd growth: counters per origin, kept at each register and close (O(1),
 * under the lock), so that a sample finds which origin's fds pile up
 * without walking the fds.  Two pointers with the same text (one origin
 * string built twice) count as one origin: each id has a canonical id, the
 * first id seen with its text, found through a hash of the texts when the
 * id is handed out (once per origin pointer in the process's life).  NULL
 * and origins with no id count as "?" (stat_unknown). */
struct origin_stat {
    uint64_t opened, closed;   /* at the canonical id; left since start */
    uint64_t open;             /* open now */
    int32_t head, tail;        /* its open fds, oldest first; -1: none */
    uint16_t canon;            /* the id whose counters these are */
};

static struct origin_stat *ostats;   /* indexed by origin id */
static uint32_t ostats_cap;
static struct origin_stat stat_unknown = {.head = -1, .tail = -1};
static uint16_t *text_slots;         /* canonical ids by hash of the text */
static uint32_t text_cap;            /* power of 2; at most half full */
static uint32_t text_len;

static uint32_t text_hash(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static bool text_grow(void) {
    uint32_t cap = text_cap ? text_cap * 2 : 64;
    uint16_t *n = calloc(cap, sizeof *n);
    if (!n)
        return false;
    for (uint32_t i = 0; i < text_cap; i++) {
        if (!text_slots[i])
            continue;
        uint32_t j = text_hash(origins.v[text_slots[i]]) & (cap - 1);
        while (n[j])
            j = (j + 1) & (cap - 1);
        n[j] = text_slots[i];
    }
    free(text_slots);
    text_slots = n;
    text_cap = cap;
    return true;
}

/* A new origin id: its counters, canonical by text.  false if out of
 * memory (its fds then count as "?").  Lock held. */
static bool stat_add(uint16_t id) {
    if (id >= ostats_cap) {
        uint32_t cap = ostats_cap ? ostats_cap : 64;
        while (cap <= id)
            cap *= 2;
        struct origin_stat *n = realloc(ostats, cap * sizeof *n);
        if (!n)
            return false;
        memset(n + ostats_cap, 0, (cap - ostats_cap) * sizeof *n);
        ostats = n;
        ostats_cap = cap;
    }
    struct origin_stat *st = &ostats[id];
    st->head = st->tail = -1;
    st->canon = id;
    if (2 * (text_len + 1) > text_cap && !text_grow())
        return true; /* counted under its own id: correct, if unmerged */
    const char *text = origins.v[id];
    uint32_t j = text_hash(text) & (text_cap - 1);
    for (; text_slots[j]; j = (j + 1) & (text_cap - 1)) {
        if (strcmp(origins.v[text_slots[j]], text) == 0) {
            st->canon = text_slots[j];
            return true;
        }
    }
    text_slots[j] = id;
    text_len++;
    return true;
}

/* The counters an entry's origin id counts in.  Lock held. */
static struct origin_stat *stat_of(uint16_t id) {
    if (!id || id >= ostats_cap || !ostats[id].canon)
        return &stat_unknown;
    return &ostats[ostats[id].canon];
}

static const char *stat_text(const struct origin_stat *st) {
    return st == &stat_unknown ? "?" : origin_text(st->canon);
}

static void stat_link(int fd) {
    struct fd_entry *e = &entries[fd];
    struct origin_stat *st = stat_of(e->origin);
    st->opened++;
    st->open++;
    e->next = -1;
    e->prev = st->tail;
    if (st->tail >= 0)
        entries[st->tail].next = fd;
    else
        st->head = fd;
    st->tail = fd;
}

static void stat_unlink(int fd) {
    struct fd_entry *e = &entries[fd];
    struct origin_stat *st = stat_of(e->origin);
    st->open--;
    st->closed++;
    if (e->prev >= 0)
        entries[e->prev].next = e->next;
    else
        st->head = e->next;
    if (e->next >= 0)
        entries[e->next].prev = e->prev;
    else
        st->tail = e->prev;
    e->prev = e->next = -1;
}

static const char *const kind_names[CREST_FD_KIND_COUNT] = {
    [CREST_FD_EPOLL] = "epoll",       [CREST_FD_EVENTFD] = "eventfd",
    [CREST_FD_SIGNALFD] = "signalfd", [CREST_FD_TIMERFD] = "timerfd",
    [CREST_FD_LISTENER] = "listener", [CREST_FD_ACCEPTED] = "accepted",
    [CREST_FD_CONNECT] = "connect",   [CREST_FD_RESERVE] = "reserve",
    [CREST_FD_PIPE] = "pipe",         [CREST_FD_USER] = "user",
    [CREST_FD_RESOLVER] = "resolver",
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
    pthread_mutex_lock(&reg_lock);
    /* Read under the lock: each origin's list stays in the order of its
     * open times. */
    uint64_t now = crest__clock_ns();
    if (!base_ns)
        base_ns = now;
    int rc = reserve((size_t)fd);
    if (rc == 0 && entries[fd].open) {
        crest_log(CREST_LOG_WARN, "fd %d registered twice: already open as %s from %s, again as %s from %s",
                  fd, crest_fd_kind_name(entries[fd].kind), origin_text(entries[fd].origin),
                  crest_fd_kind_name(kind), origin);
        rc = -EEXIST;
    }
    uint16_t owner_id = 0;
    if (rc == 0 && owner && !(owner_id = id_get(&owners, owner)))
        rc = -ENOMEM; /* out of memory, or 65,534 loops alive */
    if (rc == 0) {
        struct fd_entry *e = &entries[fd];
        e->origin = origin_id(origin);
        e->owner = owner_id;
        e->opened_ms = (uint32_t)((now - base_ns) / 1000000u);
        e->generation = next_generation++;
        if (next_generation == 0)
            next_generation = 1;
        e->kind = (uint8_t)kind;
        e->open = true;
        count_open(kind);
        stat_link(fd);
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
        stat_unlink(fd);
        e->open = false;
        /* Never 0 once closed: a later bad close can name this one. */
        e->closed_at = origin ? origin_id(origin) : ORIGIN_UNKNOWN;
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
    uint16_t owner_id = all ? 0 : id_find(&owners, owner);
    if (!all && !owner_id)
        return 0; /* an owner with no id never had an fd registered */
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

static int report(FILE *out, bool verdict) {
    struct sink s = {out};
    uint64_t now = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    emit(&s, "crest fd report: %" PRIu64 " open", counts[CREST_FD_ALL].open);
    int n = list_open(&s, true, NULL, now);
    counts_line(&s);
    list_unregistered(&s);
    pthread_mutex_unlock(&reg_lock);
    if (verdict)
        emit(&s, n ? "%d fd%s leaked" : "%d fds leaked", n, n == 1 ? "" : "s");
    return n;
}

int crest_fd_report(FILE *out) {
    return report(out, true);
}

int crest__fd_report_live(FILE *out) {
    return report(out, false);
}

/* The owner is going away: report what it left open, then forget it.  Its
 * fds still open stay in crest_fd_report(), owned by no one, so that the
 * id, once handed to a new loop, names that loop's fds only. */
int crest__fd_report_owner(const void *owner, const char *what) {
    struct sink s = {NULL};
    uint64_t now = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    int n = list_open(&s, false, owner, now);
    uint16_t id = id_find(&owners, owner);
    if (id) {
        for (size_t fd = 0; fd < entries_cap; fd++)
            if (entries[fd].owner == id)
                entries[fd].owner = 0;
        id_remove(&owners, id);
    }
    pthread_mutex_unlock(&reg_lock);
    if (n)
        crest_log(CREST_LOG_WARN, "%s: %d fd%s leaked (listed above)", what, n, n == 1 ? "" : "s");
    else
        crest_log(CREST_LOG_INFO, "%s: 0 fds leaked", what);
    return n;
}

/* ---- fd growth ----------------------------------------------------------- */

/* Does a rank before b?  More open first, then more opened, then text. */
static bool ranks_before(const struct origin_stat *a, const struct origin_stat *b) {
    if (a->open != b->open)
        return a->open > b->open;
    if (a->opened != b->opened)
        return a->opened > b->opened;
    return strcmp(stat_text(a), stat_text(b)) < 0;
}

/* Consider one origin for the top `max` (kept sorted in top[0..*len)). */
static void top_insert(const struct origin_stat **top, unsigned *len, unsigned max,
                       const struct origin_stat *st) {
    if (!st->opened)
        return;
    unsigned i = *len;
    if (i == max) {
        if (!ranks_before(st, top[max - 1]))
            return;
        i--;
    } else {
        (*len)++;
    }
    for (; i > 0 && ranks_before(st, top[i - 1]); i--)
        top[i] = top[i - 1];
    top[i] = st;
}

/* The top origins, filled in.  Lock held.  O(origins): every origin's
 * counters are looked at once; an origin's oldest open fd is its list's
 * head, so no fd is walked. */
static unsigned origins_fill(struct crest_fd_origin_growth *out, unsigned max, uint64_t now_ns) {
    enum { TOP_MAX = 64 };
    const struct origin_stat *top[TOP_MAX];
    if (max > TOP_MAX)
        max = TOP_MAX;
    unsigned len = 0;
    for (uint32_t id = 1; id < ostats_cap && id < origins.len; id++)
        if (ostats[id].canon == id)
            top_insert(top, &len, max, &ostats[id]);
    top_insert(top, &len, max, &stat_unknown);
    uint64_t now_ms = now_ns > base_ns ? (now_ns - base_ns) / 1000000u : 0;
    for (unsigned i = 0; i < len; i++) {
        const struct origin_stat *st = top[i];
        struct crest_fd_origin_growth *o = &out[i];
        memset(o, 0, sizeof *o);
        snprintf(o->origin, sizeof o->origin, "%s", stat_text(st));
        o->open = st->open;
        o->opened = st->opened;
        o->closed = st->closed;
        if (st->head >= 0) {
            /* opened_ms wraps after 49 days: the difference stays right
             * for fds younger than that */
            uint32_t age_ms = (uint32_t)now_ms - entries[st->head].opened_ms;
            o->oldest_ns = (uint64_t)age_ms * 1000000u;
            if (o->oldest_ns == 0)
                o->oldest_ns = 1; /* open, just now: not "none" */
        }
    }
    return len;
}

int crest_fd_origins(struct crest_fd_origin_growth *out, unsigned max, uint64_t now_ns) {
    if (!out && max)
        return -EINVAL;
    if (!max)
        return 0;
    if (!now_ns)
        now_ns = crest__clock_ns();
    pthread_mutex_lock(&reg_lock);
    unsigned n = origins_fill(out, max, now_ns);
    pthread_mutex_unlock(&reg_lock);
    return (int)n;
}

/* fds open in the process; -1 if unknown.  Linux 6.2 and later give the
 * count as the size of /proc/self/fd: one stat (it counts the bits of the
 * fd table: cheap at any number of fds).  Older kernels report 0 there;
 * then the directory is read (the open of the directory counts itself,
 * taken off), which costs about 2 us per fd (37 ms for 20,000 here), on
 * the loop thread: so that is done only while fewer than
 * PROC_READDIR_MAX fds are registered, and said once at DEBUG when not.
 * Outside the registry's lock: registering threads never wait on it. */
#define PROC_READDIR_MAX 10000
static int64_t proc_fd_count(uint64_t registered) {
    struct stat st;
    if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
        return (int64_t)st.st_size;
    if (registered >= PROC_READDIR_MAX) {
        static _Atomic bool said;
        if (!atomic_exchange(&said, true))
            crest_log(CREST_LOG_DEBUG,
                      "insight: %" PRIu64 " fds registered and this kernel gives no fd count "
                      "(before 6.2): unregistered fds are no longer counted",
                      registered);
        return -1;
    }
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    int64_t n = 0;
    struct dirent *d;
    while ((d = readdir(dir)) != NULL)
        if (d->d_name[0] != '.')
            n++;
    closedir(dir);
    return n - 1;
}

/* fd growth per origin, sampled once per insight period (insight.h), on
 * a loop thread.  Cost: the lock, once, for O(origins) work; with
 * count_proc (every 10th period) a stat of /proc/self/fd besides. */
void crest__fd_growth_sample(crest_insight_t *fig, uint64_t now_ns, bool count_proc) {
    int64_t in_proc = count_proc ? proc_fd_count(crest_fd_open_count()) : -1;
    pthread_mutex_lock(&reg_lock);
    uint64_t registered = counts[CREST_FD_ALL].open;
    fig->fds_open = registered;
    fig->fd_origins_len =
        origins_fill(fig->fd_origins, sizeof fig->fd_origins / sizeof fig->fd_origins[0], now_ns);
    pthread_mutex_unlock(&reg_lock);
    /* Counted apart from the registry's number: fds opened or closed in
     * between by other threads make it off by that many, never negative. */
    if (in_proc >= 0)
        fig->fds_unregistered = (uint64_t)in_proc > registered ? (uint64_t)in_proc - registered : 0;
}
