/* TCP_INFO and the send-queue ioctls, in a file of their own: the kernel's
 * struct tcp_info (<linux/tcp.h>) has the fields crest reads (busy time,
 * rwnd/sndbuf-limited time, notsent bytes, delivery rate), glibc's
 * <netinet/tcp.h> has an older copy of the same struct, and the two
 * headers cannot be included together.  Nothing else here includes
 * <netinet/tcp.h>.
 *
 * The kernel copies min(optlen, its own sizeof) bytes and says how many in
 * optlen: an older kernel returns a shorter struct, and the fields past
 * its end read 0 (the buffer is zeroed first).  Debian 12's headers (Linux
 * 6.1) have every field used here; the newest of them, tcpi_busy_time and
 * the two limited times, came with Linux 4.10. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "conn_int.h"

int crest__tcp_info(int fd, struct crest__tcpi *out) {
    struct tcp_info ti;
    memset(&ti, 0, sizeof ti);
    socklen_t len = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return -errno;
    out->state = ti.tcpi_state;
    out->retransmits = ti.tcpi_retransmits;
    out->rtt_us = ti.tcpi_rtt;
    out->rttvar_us = ti.tcpi_rttvar;
    out->snd_mss = ti.tcpi_snd_mss;
    out->snd_cwnd = ti.tcpi_snd_cwnd;
    out->unacked = ti.tcpi_unacked;
    out->sacked = ti.tcpi_sacked;
    out->total_retrans = ti.tcpi_total_retrans;
    out->segs_out = ti.tcpi_segs_out;
    out->segs_in = ti.tcpi_segs_in;
    out->notsent_bytes = ti.tcpi_notsent_bytes;
    out->min_rtt_us = ti.tcpi_min_rtt;
    out->delivery_rate = ti.tcpi_delivery_rate;
    out->busy_us = ti.tcpi_busy_time;
    out->rwnd_limited_us = ti.tcpi_rwnd_limited;
    out->sndbuf_limited_us = ti.tcpi_sndbuf_limited;
    return 0;
}

int crest__sock_unsent(int fd) {
    int n = 0;
    if (ioctl(fd, SIOCOUTQNSD, &n) < 0)
        return -errno;
    return n;
}
