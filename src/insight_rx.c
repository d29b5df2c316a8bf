/* Receive-queue dwell (insight.h, rx_timestamps): how long bytes waited
 * in the kernel between their arrival and the read that took them.
 *
 * Each connection a loop opens while its rx_timestamps is on gets
 * SO_TIMESTAMPING with SOF_TIMESTAMPING_RX_SOFTWARE (stamp packets as the
 * network stack receives them: net_timestamp_check() in the receive path,
 * CLOCK_REALTIME) and SOF_TIMESTAMPING_SOFTWARE (report those stamps), and
 * the flag CREST__C_RX_TSTAMP: its reads become recvmsg(2) with a control
 * buffer, and the SCM_TIMESTAMPING message that comes with data gives the
 * dwell, CLOCK_REALTIME now minus the stamp, recorded in fig.rx_dwell.
 *
 * What the stamp means on TCP: tcp_recvmsg() reports one timestamp per
 * call, that of the LAST skb it copied from (tcp_update_recv_tstamps()
 * runs for each skb consumed, and the last one wins; tcp_recv_timestamp()
 * puts it in the cmsg).  And when segments are coalesced in the receive
 * queue (tcp_try_coalesce()), the merged skb takes the newer segment's
 * stamp.  So the figure is the dwell of the newest bytes each read took:
 * a lower bound on how long the oldest of them waited.  A read that drains
 * a queue built up over 50 ms while the loop was busy reports about how
 * long ago the last segment came, not 50 ms, unless the last segment came
 * 50 ms ago (a loop stalled while a burst was in flight shows up; a loop
 * slowly falling behind a steady stream shows up less).
 *
 * Connections without the flag never come here: the read path tests the
 * flag once and calls read(2) as always. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
/* after time.h: errqueue.h uses struct timespec */
#include <linux/errqueue.h>
#include <linux/net_tstamp.h>

#include "conn_int.h"
#include "sys.h"

void crest__rx_timestamps_on(struct crest_conn *c) {
    /* Unix-domain stream sockets accept the option and never stamp: they
     * keep the plain read. */
    int domain = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(c->io.fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 ||
        (domain != AF_INET && domain != AF_INET6))
        return;
    int flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    if (setsockopt(c->io.fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof flags) == 0) {
        c->flags |= CREST__C_RX_TSTAMP;
        return;
    }
    /* An fd that is no socket, or a kernel that refuses: the connection
     * works as ever, unmeasured. */
    crest_log(CREST_LOG_DEBUG, "insight: SO_TIMESTAMPING refused on fd %d (%s): no rx dwell for it",
              c->io.fd, crest_strerror(errno));
}

/* The software stamp in the control messages, in ns since the epoch; 0 if
 * none came. */
static uint64_t rx_stamp_ns(struct msghdr *msg) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_TIMESTAMPING ||
            cm->cmsg_len < CMSG_LEN(sizeof(struct scm_timestamping)))
            continue;
        struct timespec ts; /* ts[0] of struct scm_timestamping: software */
        memcpy(&ts, CMSG_DATA(cm), sizeof ts);
        if (ts.tv_sec <= 0)
            return 0;
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }
    return 0;
}

ssize_t crest__rx_read(struct crest_conn *c, void *dst, size_t space) {
    union {
        char buf[CMSG_SPACE(sizeof(struct scm_timestamping)) * 2];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = dst, .iov_len = space};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ctl.buf,
        .msg_controllen = sizeof ctl.buf,
    };
    ssize_t n = crest__sys_recvmsg(c->io.fd, &msg, 0);
    if (n <= 0 || msg.msg_controllen == 0)
        return n;
    struct crest__insight *ins = &c->io.loop->ins;
    uint64_t stamp = rx_stamp_ns(&msg);
    if (!stamp || !ins->on || !ins->opts.rx_timestamps)
        return n;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    /* A stamp from the future (the wall clock stepped back): no figure. */
    if (now_ns >= stamp)
        crest__hist_record(&ins->fig.rx_dwell, now_ns - stamp);
    return n;
}
