/* crest: the PROXY protocol (HAProxy's, versions 1 and 2).
 *
 * A TCP load balancer in front of crest connects to crest itself, so the
 * socket's peer is the balancer.  With the PROXY protocol it first sends a
 * header naming the original client; a listener with proxy_protocol set
 * reads that header before anything else, and crest_conn_peer() then gives
 * the client's address.  on_open runs only once the header is in.  A
 * missing or malformed header closes the connection (reason
 * PROTOCOL_ERROR, with the cause logged), with on_close only: the handler
 * never sees on_open, on_data or on_eof for it.  A peer that closes
 * without sending a byte (a connect-only health check) is logged at DEBUG
 * level only.  Off by default: accept it only
 * from balancers you trust, since anyone who can connect could claim any
 * address.
 */
#ifndef CREST_PROXY_H
#define CREST_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which versions a listener accepts (crest_listen_opts_t.proxy_protocol). */
enum {
    CREST_PROXY_OFF = 0,
    CREST_PROXY_V1 = 1,   /* "PROXY TCP4 1.2.3.4 5.6.7.8 1000 80\r\n" */
    CREST_PROXY_V2 = 2,   /* the binary header */
    CREST_PROXY_ANY = 3
};

typedef struct crest_proxy_info {
    int version;          /* 1 or 2 */
    bool has_addr;        /* false for v1 UNKNOWN and v2 LOCAL (health checks) */
    crest_addr_t src;     /* the original client */
    crest_addr_t dst;     /* the address it connected to */
} crest_proxy_info_t;

/* The longest header crest accepts: a v2 header with its TLVs. */
#define CREST_PROXY_MAX_HEADER (16 + 65535)

/* Parse a header at the start of data[0..len) for the versions in accept.
 * Returns 1 and fills *out and *consumed (the header's length); 0 if more
 * bytes are needed; -EPROTO if it is not a valid header, with *why saying
 * what is wrong ("missing PROXY header", "bad v1 port", ...). */
int crest_proxy_parse(const uint8_t *data, size_t len, unsigned accept, crest_proxy_info_t *out,
                      size_t *consumed, const char **why);

/* Write a v2 header (what a balancer sends first to its backend) into
 * buf: PROXY naming src (the client) and dst (the address it connected
 * to) when both are IPv4 or both IPv6; otherwise (NULL, Unix-domain, mixed
 * families) LOCAL, with no address.  Returns its length (16, 28 or 52
 * bytes: 52 always fits), -ENOSPC if size is too small, -EINVAL if buf is
 * NULL.  Any thread; no callback. */
int crest_proxy_v2_header(uint8_t *buf, size_t size, const crest_addr_t *src,
                          const crest_addr_t *dst);

#ifdef __cplusplus
}
#endif
#endif
