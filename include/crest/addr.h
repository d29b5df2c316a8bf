/* crest: socket addresses as text.
 *
 * Forms accepted by crest_addr_parse():
 *   "127.0.0.1:8080"   IPv4 and port
 *   "[::1]:8080"       IPv6 and port (brackets required)
 *   ":8080"            IPv4 any address (0.0.0.0)
 *   "localhost:8080"   127.0.0.1 (the only name resolved: lookups would block)
 *   "unix:/run/x.sock" a Unix-domain stream socket path
 * Port 0 lets the kernel pick a free port (for listeners).
 */
#ifndef CREST_ADDR_H
#define CREST_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crest_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} crest_addr_t;

/* 0, or -EINVAL for text that is none of the forms above, or -ENAMETOOLONG
 * for a Unix path that does not fit sun_path. */
int crest_addr_parse(const char *text, crest_addr_t *out);

/* "127.0.0.1:8080", "[::1]:8080", "unix:/path".  Returns the length written
 * (like snprintf, truncated to size) or -EAFNOSUPPORT. */
int crest_addr_format(const crest_addr_t *addr, char *buf, size_t size);

/* The port, or -1 for a Unix-domain address. */
int crest_addr_port(const crest_addr_t *addr);

/* Longest text crest_addr_format() writes, with its NUL. */
#define CREST_ADDR_STRLEN 120

#ifdef __cplusplus
}
#endif
#endif
