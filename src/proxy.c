/* The PROXY protocol header parser (HAProxy's proxy-protocol.txt).
 *
 * Version 1 is one text line of at most 107 bytes ending in CRLF; version 2
 * a 16-byte binary header (a 12-byte signature, version/command, family,
 * length) and the addresses, then optional TLVs, which are skipped.  The
 * parser needs no state between calls: it looks at the buffered bytes
 * again when more arrive, and says "need more" only while the bytes seen
 * could still be a valid header. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "internal.h"

#define V1_MAX 107
#define V2_HEADER 16

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";

static int fail(const char **why, const char *text) {
    if (why)
        *why = text;
    return -EPROTO;
}

/* Is data a prefix of sig, or sig a prefix of data? */
static bool matches(const uint8_t *data, size_t len, const void *sig, size_t sig_len) {
    return memcmp(data, sig, len < sig_len ? len : sig_len) == 0;
}

/* Next space-separated token of a v1 line: [*p, end). */
static bool token(const char **p, const char *end, char *out, size_t size) {
    const char *s = *p, *e = s;
    while (e < end && *e != ' ')
        e++;
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= size)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    *p = e < end ? e + 1 : e;
    return true;
}

static bool port(const char *s, uint16_t *out) {
    unsigned v = 0;
    if (!*s || (s[0] == '0' && s[1]))
        return false; /* the spec forbids leading zeros */
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > 65535)
            return false;
    }
    *out = (uint16_t)v;
    return true;
}

static bool v1_addr(int family, const char *ip, uint16_t p, crest_addr_t *a) {
    memset(a, 0, sizeof *a);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(p);
        a->len = sizeof *in;
        return inet_pton(AF_INET, ip, &in->sin_addr) == 1;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(p);
    a->len = sizeof *in6;
    return inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1;
}

static int parse_v1(const uint8_t *data, size_t len, crest_proxy_info_t *out, size_t *consumed,
                    const char **why) {
    const uint8_t *nl = memchr(data, '\n', len < V1_MAX ? len : V1_MAX);
    if (!nl)
        return len >= V1_MAX ? fail(why, "v1 header longer than 107 bytes") : 0;
    if (nl == data || nl[-1] != '\r')
        return fail(why, "v1 header does not end in CRLF");
    const char *p = (const char *)data + sizeof v1_sig - 1;
    const char *end = (const char *)nl - 1;
    char proto[8], src[48], dst[48], sport[8], dport[8];
    *out = (crest_proxy_info_t){.version = 1};
    *consumed = (size_t)(nl - data) + 1;
    if (!token(&p, end, proto, sizeof proto))
        return fail(why, "v1 header without a protocol");
    if (strcmp(proto, "UNKNOWN") == 0)
        return 1; /* the rest of the line is to be ignored */
    int family = strcmp(proto, "TCP4") == 0 ? AF_INET : strcmp(proto, "TCP6") == 0 ? AF_INET6 : 0;
    if (!family)
        return fail(why, "v1 protocol is not TCP4, TCP6 or UNKNOWN");
    uint16_t sp, dp;
    if (!token(&p, end, src, sizeof src) || !token(&p, end, dst, sizeof dst) ||
        !token(&p, end, sport, sizeof sport) || !token(&p, end, dport, sizeof dport) || p != end)
        return fail(why, "v1 header does not have 4 address fields");
    if (!port(sport, &sp) || !port(dport, &dp))
        return fail(why, "bad v1 port");
    if (!v1_addr(family, src, sp, &out->src) || !v1_addr(family, dst, dp, &out->dst))
        return fail(why, "bad v1 address");
    out->has_addr = true;
    return 1;
}

static int parse_v2(const uint8_t *data, size_t len, crest_proxy_info_t *out, size_t *consumed,
                    const char **why) {
    if (len < V2_HEADER)
        return 0;
    uint8_t ver_cmd = data[12], fam = data[13];
    size_t body = ((size_t)data[14] << 8) | data[15];
    if ((ver_cmd >> 4) != 2)
        return fail(why, "v2 header with a version other than 2");
    unsigned cmd = ver_cmd & 0x0F;
    if (cmd > 1)
        return fail(why, "v2 command is neither LOCAL nor PROXY");
    if (len < V2_HEADER + body)
        return 0;
    *out = (crest_proxy_info_t){.version = 2};
    *consumed = V2_HEADER + body;
    const uint8_t *a = data + V2_HEADER;
    unsigned family = fam >> 4;
    if (cmd == 0 || family == 0)
        return 1; /* LOCAL (the balancer's own check) or UNSPEC: no address */
    if ((fam & 0x0F) != 1)
        return fail(why, "v2 transport is not a stream");
    if (family == 1) {
        if (body < 12)
            return fail(why, "v2 IPv4 addresses truncated");
        struct sockaddr_in *s = (struct sockaddr_in *)&out->src.ss;
        struct sockaddr_in *d = (struct sockaddr_in *)&out->dst.ss;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);
        memcpy(&d->sin_port, a + 10, 2);
        out->src.len = out->dst.len = sizeof *s;
    } else if (family == 2) {
        if (body < 36)
            return fail(why, "v2 IPv6 addresses truncated");
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src.ss;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst.ss;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
        out->src.len = out->dst.len = sizeof *s;
    } else if (family == 3) {
        if (body < 216)
            return fail(why, "v2 Unix addresses truncated");
        struct sockaddr_un *s = (struct sockaddr_un *)&out->src.ss;
        struct sockaddr_un *d = (struct sockaddr_un *)&out->dst.ss;
        s->sun_family = d->sun_family = AF_UNIX;
        memcpy(s->sun_path, a, 107);
        memcpy(d->sun_path, a + 108, 107);
        out->src.len = out->dst.len = sizeof *s;
    } else {
        return fail(why, "v2 address family unknown");
    }
    out->has_addr = true;
    return 1;
}

int crest_proxy_parse(const uint8_t *data, size_t len, unsigned accept, crest_proxy_info_t *out,
                      size_t *consumed, const char **why) {
    if (!out || !consumed || (!data && len))
        return -EINVAL;
    if (len == 0)
        return 0;
    if ((accept & CREST_PROXY_V2) && matches(data, len, v2_sig, sizeof v2_sig))
        return len < sizeof v2_sig ? 0 : parse_v2(data, len, out, consumed, why);
    if ((accept & CREST_PROXY_V1) && matches(data, len, v1_sig, sizeof v1_sig - 1))
        return len < sizeof v1_sig - 1 ? 0 : parse_v1(data, len, out, consumed, why);
    return fail(why, "missing PROXY header");
}

/* The writer: IPv4 or IPv6 (both the same family) as PROXY, anything else
 * (NULL, Unix, mixed families) as LOCAL, which tells the receiver to use
 * the socket's own addresses. */
int crest_proxy_v2_header(uint8_t *buf, size_t size, const crest_addr_t *src,
                          const crest_addr_t *dst) {
    if (!buf)
        return -EINVAL;
    int family = src && dst ? src->ss.ss_family : AF_UNSPEC;
    if (family != AF_INET && family != AF_INET6)
        family = AF_UNSPEC;
    if (dst && dst->ss.ss_family != family)
        family = AF_UNSPEC;
    size_t body = family == AF_INET ? 12 : family == AF_INET6 ? 36 : 0;
    if (size < V2_HEADER + body)
        return -ENOSPC;
    memcpy(buf, v2_sig, sizeof v2_sig);
    buf[12] = family == AF_UNSPEC ? 0x20 : 0x21; /* version 2, LOCAL or PROXY */
    buf[13] = family == AF_INET ? 0x11 : family == AF_INET6 ? 0x21 : 0x00;
    buf[14] = 0;
    buf[15] = (uint8_t)body;
    uint8_t *a = buf + V2_HEADER;
    if (family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&src->ss;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&dst->ss;
        memcpy(a, &s->sin_addr, 4);
        memcpy(a + 4, &d->sin_addr, 4);
        memcpy(a + 8, &s->sin_port, 2);
        memcpy(a + 10, &d->sin_port, 2);
    } else if (family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&src->ss;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&dst->ss;
        memcpy(a, &s->sin6_addr, 16);
        memcpy(a + 16, &d->sin6_addr, 16);
        memcpy(a + 32, &s->sin6_port, 2);
        memcpy(a + 34, &d->sin6_port, 2);
    }
    return (int)(V2_HEADER + body);
}
