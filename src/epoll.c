/* The epoll backend.  Pitfalls this file knows about (man 7 epoll):
 * - epoll tracks the open file description, not the fd number: a closed fd
 *   that was dup()ed keeps firing.  Watchers are removed with EPOLL_CTL_DEL
 *   before their fd is closed, and events carry a generation tag.
 * - EPOLLERR and EPOLLHUP are always reported; we never ask for them.
 * - Edge-triggered: every registration has EPOLLET; EPOLLRDHUP is always
 *   asked for so a half-close is seen without a read returning 0.
 * - EINTR from epoll_wait is not an error: report no events. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "epoll.h"
#include "internal.h"

_Static_assert((unsigned)CREST_IO_READABLE == (unsigned)EPOLLIN, "event bits match epoll");
_Static_assert((unsigned)CREST_IO_WRITABLE == (unsigned)EPOLLOUT, "event bits match epoll");
_Static_assert((unsigned)CREST_IO_ERR == (unsigned)EPOLLERR, "event bits match epoll");
_Static_assert((unsigned)CREST_IO_HUP == (unsigned)EPOLLHUP, "event bits match epoll");
_Static_assert((unsigned)CREST_IO_RDHUP == (unsigned)EPOLLRDHUP, "event bits match epoll");
_Static_assert((unsigned)CREST__IO_PRI == (unsigned)EPOLLPRI, "event bits match epoll");

int crest__epoll_create(const void *owner) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = crest__fd_register(fd, CREST_FD_EPOLL, owner, CREST_HERE);
    if (rc < 0) {
        close(fd); /* not registered: the registry would refuse it */
        return rc;
    }
    return fd;
}

static int ctl(int epfd, int op, int fd, unsigned events, uint64_t tag) {
    struct epoll_event ev = {
        .events = (uint32_t)events | EPOLLET | EPOLLRDHUP,
        .data.u64 = tag,
    };
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

int crest__epoll_add(int epfd, int fd, unsigned events, uint64_t tag) {
    return ctl(epfd, EPOLL_CTL_ADD, fd, events, tag);
}

int crest__epoll_mod(int epfd, int fd, unsigned events, uint64_t tag) {
    return ctl(epfd, EPOLL_CTL_MOD, fd, events, tag);
}

int crest__epoll_del(int epfd, int fd) {
    /* A non-NULL event pointer for kernels before 2.6.9. */
    struct epoll_event ev = {0};
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev) < 0 ? -errno : 0;
}

int crest__epoll_wait(int epfd, crest__event_t *events, int max, int timeout_ms) {
    int n = epoll_wait(epfd, events, max, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    return n;
}
