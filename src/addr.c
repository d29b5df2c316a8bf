/* Socket addresses as text.
 *
 * Parsing never resolves names: getaddrinfo() may block for seconds on a
 * loop thread.  Only numeric addresses (inet_pton) and "localhost" are
 * accepted; anything else is -EINVAL, not a lookup. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "internal.h"

#define UNIX_PREFIX "unix:"
#define UNIX_PREFIX_LEN (sizeof UNIX_PREFIX - 1)

/* The whole of s must be a decimal port: digits only (no sign, no blank),
 * at most 65535.  Returns it, or -1. */
static int parse_port(const char *s) {
    if (!*s)
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > 65535) /* checked per digit: a long run of digits cannot wrap */
            return -1;
    }
    return (int)v;
}

static int parse_unix(const char *path, crest_addr_t *out) {
    struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(path);
    if (n == 0)
        return -EINVAL;
    /* Keep room for the NUL: a path that fills sun_path exactly is not
     * portable and cannot be printed back safely. */
    if (n >= sizeof sun->sun_path)
        return -ENAMETOOLONG;
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, n + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

/* "[v6]:port".  text points at the '['. */
static int parse_v6(const char *text, crest_addr_t *out) {
    const char *close = strchr(text, ']');
    if (!close || close[1] != ':')
        return -EINVAL;
    char host[INET6_ADDRSTRLEN];
    size_t n = (size_t)(close - text - 1);
    if (n == 0 || n >= sizeof host)
        return -EINVAL;
    memcpy(host, text + 1, n);
    host[n] = '\0';
    int port = parse_port(close + 2);
    if (port < 0)
        return -EINVAL;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
        return -EINVAL;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    out->len = sizeof *sin6;
    return 0;
}

/* "v4:port", ":port" or "localhost:port". */
static int parse_v4(const char *text, crest_addr_t *out) {
    const char *colon = strchr(text, ':');
    if (!colon)
        return -EINVAL; /* no port */
    /* A second ':' (in the port) is an IPv6 address without brackets. */
    int port = parse_port(colon + 1);
    if (port < 0)
        return -EINVAL;
    char host[INET_ADDRSTRLEN];
    size_t n = (size_t)(colon - text);
    if (n >= sizeof host)
        return -EINVAL;
    memcpy(host, text, n);
    host[n] = '\0';
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    if (n == 0)
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcasecmp(host, "localhost") == 0)
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
        return -EINVAL;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    out->len = sizeof *sin;
    return 0;
}

int crest_addr_parse(const char *text, crest_addr_t *out) {
    if (!text || !out)
        return -EINVAL;
    crest_addr_t a;
    memset(&a, 0, sizeof a);
    int rc;
    if (strncmp(text, UNIX_PREFIX, UNIX_PREFIX_LEN) == 0)
        rc = parse_unix(text + UNIX_PREFIX_LEN, &a);
    else if (text[0] == '[')
        rc = parse_v6(text, &a);
    else
        rc = parse_v4(text, &a);
    /* *out is left alone on failure. */
    if (rc == 0)
        *out = a;
    return rc;
}

/* snprintf's result as the return value: the untruncated length. */
static int format_unix(const crest_addr_t *addr, char *buf, size_t size) {
    const struct sockaddr_un *sun = (const struct sockaddr_un *)&addr->ss;
    size_t base = offsetof(struct sockaddr_un, sun_path);
    size_t max = addr->len > base ? addr->len - base : 0;
    if (max > sizeof sun->sun_path)
        max = sizeof sun->sun_path;
    /* Unnamed (an unbound peer): "unix:".  Linux abstract names start
     * with a NUL; print them the way ss(8) does, "unix:@name". */
    if (max > 0 && sun->sun_path[0] == '\0') {
        const char *name = sun->sun_path + 1;
        int n = (int)strnlen(name, max - 1);
        return snprintf(buf, size, UNIX_PREFIX "@%.*s", n, name);
    }
    int n = (int)strnlen(sun->sun_path, max);
    return snprintf(buf, size, UNIX_PREFIX "%.*s", n, sun->sun_path);
}

int crest_addr_format(const crest_addr_t *addr, char *buf, size_t size) {
    if (!addr || (!buf && size))
        return -EINVAL;
    char host[INET6_ADDRSTRLEN];
    switch (addr->ss.ss_family) {
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&addr->ss;
        if (!inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host))
            return -errno;
        return snprintf(buf, size, "%s:%u", host, (unsigned)ntohs(sin->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&addr->ss;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host))
            return -errno;
        return snprintf(buf, size, "[%s]:%u", host, (unsigned)ntohs(sin6->sin6_port));
    }
    case AF_UNIX:
        return format_unix(addr, buf, size);
    default:
        return -EAFNOSUPPORT;
    }
}

int crest_addr_port(const crest_addr_t *addr) {
    if (!addr)
        return -1;
    switch (addr->ss.ss_family) {
    case AF_INET:
        return ntohs(((const struct sockaddr_in *)&addr->ss)->sin_port);
    case AF_INET6:
        return ntohs(((const struct sockaddr_in6 *)&addr->ss)->sin6_port);
    default:
        return -1;
    }
}
