/* crest: socket tuning on a file descriptor.
 *
 * Buffer sizes: Linux doubles the value given to SO_SNDBUF/SO_RCVBUF (the
 * extra half pays for its bookkeeping) and caps the request at
 * net.core.wmem_max / rmem_max first, so the size you ask for is rarely the
 * size you get.  crest_sockopt_set_sndbuf()/rcvbuf() return the effective
 * size read back with getsockopt.  Setting either turns off the kernel's
 * autotuning for that direction.  Set them on a listening socket before
 * listen(): accepted sockets inherit them.
 *
 * All functions return 0 (or the effective size) or a negative errno.
 */
#ifndef CREST_SOCKOPT_H
#define CREST_SOCKOPT_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Ask for bytes; returns the effective size the kernel applied. */
int crest_sockopt_set_sndbuf(int fd, int bytes);
int crest_sockopt_set_rcvbuf(int fd, int bytes);
/* The current effective sizes. */
int crest_sockopt_get_sndbuf(int fd);
int crest_sockopt_get_rcvbuf(int fd);

/* TCP_NODELAY: send small segments at once instead of waiting for the ACK
 * of the previous one (Nagle).  -EOPNOTSUPP on a non-TCP socket. */
int crest_sockopt_set_nodelay(int fd, bool on);
/* 1 or 0, or -errno. */
int crest_sockopt_get_nodelay(int fd);

/* SO_KEEPALIVE with TCP_KEEPIDLE (seconds idle before the first probe),
 * TCP_KEEPINTVL (seconds between probes) and TCP_KEEPCNT (probes before the
 * connection is dropped).  0 for any of the three keeps the system
 * default.  on = false turns keepalive off. */
int crest_sockopt_set_keepalive(int fd, bool on, int idle_s, int interval_s, int count);

/* TCP_USER_TIMEOUT: milliseconds that sent data may stay unacknowledged
 * before the kernel drops the connection (0: system default). */
int crest_sockopt_set_user_timeout(int fd, unsigned ms);

/* TCP_CORK: hold partial segments until uncorked (at most 200 ms). */
int crest_sockopt_set_cork(int fd, bool on);

/* SO_REUSEADDR and SO_REUSEPORT (for one listener per loop or process). */
int crest_sockopt_set_reuseaddr(int fd, bool on);
int crest_sockopt_set_reuseport(int fd, bool on);

/* SO_LINGER {1, 0}: close() sends RST and drops unsent data. */
int crest_sockopt_set_linger_abort(int fd);

/* SO_ERROR, read and cleared: 0 or a positive errno; negative on failure. */
int crest_sockopt_get_error(int fd);

#ifdef __cplusplus
}
#endif
#endif
