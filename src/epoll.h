/* The epoll backend: the only place crest calls epoll_*().
 *
 * Each registration carries a 64-bit tag (the fd and its watcher's
 * generation) that comes back with every event, so the loop can tell a live
 * watcher from one stopped earlier in the same batch. */
#ifndef CREST_EPOLL_H
#define CREST_EPOLL_H

#include <stdint.h>
#include <sys/epoll.h>

typedef struct epoll_event crest__event_t;

static inline uint64_t crest__event_tag(int fd, uint32_t gen) {
    return ((uint64_t)gen << 32) | (uint32_t)fd;
}
static inline int crest__tag_fd(uint64_t tag) { return (int)(uint32_t)tag; }
static inline uint32_t crest__tag_gen(uint64_t tag) { return (uint32_t)(tag >> 32); }

/* A new epoll fd, close-on-exec, registered with owner; or -errno. */
int crest__epoll_create(const void *owner);
/* Register fd edge-triggered for events (+ EPOLLRDHUP). 0 or -errno. */
int crest__epoll_add(int epfd, int fd, unsigned events, uint64_t tag);
int crest__epoll_mod(int epfd, int fd, unsigned events, uint64_t tag);
int crest__epoll_del(int epfd, int fd);
/* Wait; returns the number of events, 0 on timeout or EINTR, or -errno. */
int crest__epoll_wait(int epfd, crest__event_t *events, int max, int timeout_ms);

#endif
