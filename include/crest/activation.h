/* crest: systemd socket activation, without libsystemd.
 *
 * systemd (or systemd-socket-activate, or any manager speaking the same
 * protocol) opens the listening sockets itself and starts the service with
 * them as fds 3, 4, ... and the environment
 *     LISTEN_PID=<the service's pid>  LISTEN_FDS=<how many>
 * and LISTEN_FDNAMES=<name:name:...> (FileDescriptorName= in the socket
 * unit, --fdname for systemd-socket-activate).  The service adopts
 * them (crest_listener_adopt(), listener.h) instead of binding its own.
 * See sd_listen_fds(3); crest_listen_fds() behaves as sd_listen_fds().
 */
#ifndef CREST_ACTIVATION_H
#define CREST_ACTIVATION_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The first fd passed: 3 (SD_LISTEN_FDS_START). */
#define CREST_LISTEN_FDS_START 3

/* How many fds were passed to this process: n > 0 (they are
 * CREST_LISTEN_FDS_START .. CREST_LISTEN_FDS_START + n - 1, each set
 * close-on-exec here), 0 if the process was not socket-activated
 * (LISTEN_PID unset or another process's pid, or LISTEN_FDS unset), or
 * -EINVAL if the variables are malformed (not a number, LISTEN_FDS <= 0 or
 * too large), or -EBADF if a passed fd is not open.  With unset_env, the
 * variables (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) are removed from the
 * environment whatever the result, so child processes do not inherit
 * them.  The fds stay the caller's: adopt them, or close them.
 * getenv()/unsetenv() are not thread-safe: call it at start-up, before
 * other threads exist.  Runs no callback. */
int crest_listen_fds(bool unset_env);

/* The same, with each fd's name (as sd_listen_fds_with_names()): on n > 0,
 * *namesp is a malloc'd array of n + 1 pointers, NULL-terminated, each name
 * malloc'd too (free each, then the array); a name is "unknown" when
 * LISTEN_FDNAMES is unset, and "" for an empty field.  LISTEN_FDNAMES with
 * a different number of names than LISTEN_FDS is -EINVAL.  On 0 or an
 * error *namesp is NULL.  -ENOMEM besides the errors above.  namesp may
 * not be NULL (-EINVAL). */
int crest_listen_fds_with_names(bool unset_env, char ***namesp);

#ifdef __cplusplus
}
#endif
#endif
