/* Error names.  One table, so every errno crest can return has a name and a
 * sentence, like libuv's UV_ERRNO_MAP. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define CREST__ERRNO_MAP(X)                                         \
    X(EPERM, "operation not permitted")                            \
    X(ENOENT, "no such file or directory")                         \
    X(EINTR, "interrupted system call")                            \
    X(EIO, "i/o error")                                            \
    X(EBADF, "bad file descriptor")                                \
    X(EAGAIN, "resource temporarily unavailable")                  \
    X(ENOMEM, "not enough memory")                                 \
    X(EACCES, "permission denied")                                 \
    X(EFAULT, "bad address")                                       \
    X(EBUSY, "resource busy")                                      \
    X(EEXIST, "already exists")                                    \
    X(EINVAL, "invalid argument")                                  \
    X(ENFILE, "file table overflow (system-wide fd limit)")        \
    X(EMFILE, "too many open files (process fd limit)")            \
    X(ENOSPC, "no space left")                                     \
    X(EPIPE, "broken pipe")                                        \
    X(ERANGE, "result out of range")                               \
    X(ENAMETOOLONG, "name too long")                               \
    X(ENOSYS, "function not implemented")                          \
    X(ENOTSOCK, "not a socket")                                    \
    X(EMSGSIZE, "message too long")                                \
    X(EPROTO, "protocol error")                                    \
    X(EPROTONOSUPPORT, "protocol not supported")                   \
    X(EOPNOTSUPP, "operation not supported")                       \
    X(EAFNOSUPPORT, "address family not supported")                \
    X(EADDRINUSE, "address already in use")                        \
    X(EADDRNOTAVAIL, "address not available")                      \
    X(ENETDOWN, "network is down")                                 \
    X(ENETUNREACH, "network is unreachable")                       \
    X(ECONNABORTED, "connection aborted")                          \
    X(ECONNRESET, "connection reset by peer")                      \
    X(ENOBUFS, "no buffer space available")                        \
    X(EISCONN, "socket is already connected")                      \
    X(ENOTCONN, "socket is not connected")                         \
    X(ESHUTDOWN, "cannot send after socket shutdown")              \
    X(ETIMEDOUT, "connection timed out")                           \
    X(ECONNREFUSED, "connection refused")                          \
    X(EHOSTUNREACH, "host is unreachable")                         \
    X(EALREADY, "operation already in progress")                   \
    X(EINPROGRESS, "operation in progress")                        \
    X(ECANCELED, "operation canceled")                             \
    X(EOVERFLOW, "value too large")

const char *crest_strerror(int err) {
    if (err < 0)
        err = -err;
    switch (err) {
    case 0:
        return "0: success";
#define CREST__ERR_CASE(name, text) \
    case name:                      \
        return #name ": " text;
        CREST__ERRNO_MAP(CREST__ERR_CASE)
#undef CREST__ERR_CASE
    default:
        return "unknown error";
    }
}

const char *crest_version(void) {
    return PACKAGE_VERSION;
}
