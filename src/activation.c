/* Socket activation (activation.h): the LISTEN_PID/LISTEN_FDS/
 * LISTEN_FDNAMES protocol of sd_listen_fds(3), read without libsystemd. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* A whole decimal number, no sign, no spaces (as systemd's safe_atoi
 * accepts nothing around the digits either). */
static int parse_uint(const char *s, unsigned long *out) {
    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

static int listen_fds(void) {
    const char *e = getenv("LISTEN_PID");
    if (!e)
        return 0;
    unsigned long pid;
    if (parse_uint(e, &pid) < 0 || pid == 0)
        return -EINVAL;
    if (pid != (unsigned long)getpid())
        return 0; /* meant for another process (our parent, say) */
    e = getenv("LISTEN_FDS");
    if (!e)
        return 0;
    unsigned long n;
    if (parse_uint(e, &n) < 0 || n == 0 || n > (unsigned long)(INT_MAX - CREST_LISTEN_FDS_START))
        return -EINVAL;
    for (int fd = CREST_LISTEN_FDS_START; fd < CREST_LISTEN_FDS_START + (int)n; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0 || (!(flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0))
            return -errno;
    }
    return (int)n;
}

static void unset_all(void) {
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

int crest_listen_fds(bool unset_env) {
    int rc = listen_fds();
    if (unset_env)
        unset_all();
    return rc;
}

static void free_names(char **names) {
    if (!names)
        return;
    for (char **p = names; *p; p++)
        free(*p);
    free(names);
}

/* n names from LISTEN_FDNAMES (colon-separated), or "unknown" each. */
static int read_names(int n, char ***namesp) {
    char **names = calloc((size_t)n + 1, sizeof *names);
    if (!names)
        return -ENOMEM;
    const char *e = getenv("LISTEN_FDNAMES");
    int i = 0;
    if (!e) {
        for (; i < n; i++)
            if (!(names[i] = strdup("unknown")))
                goto nomem;
    } else {
        const char *p = e;
        for (;;) {
            const char *colon = strchr(p, ':');
            size_t len = colon ? (size_t)(colon - p) : strlen(p);
            if (i == n) {
                free_names(names);
                return -EINVAL; /* more names than fds */
            }
            if (!(names[i++] = strndup(p, len)))
                goto nomem;
            if (!colon)
                break;
            p = colon + 1;
        }
        if (i != n) {
            free_names(names);
            return -EINVAL; /* fewer names than fds */
        }
    }
    *namesp = names;
    return n;
nomem:
    free_names(names);
    return -ENOMEM;
}

int crest_listen_fds_with_names(bool unset_env, char ***namesp) {
    if (!namesp) {
        if (unset_env)
            unset_all();
        return -EINVAL;
    }
    *namesp = NULL;
    int rc = listen_fds();
    if (rc > 0)
        rc = read_names(rc, namesp);
    if (unset_env)
        unset_all();
    return rc;
}
