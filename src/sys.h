/* The syscalls of a connection's byte path: read(2), send(2),
 * sendmsg(2), and recvmsg(2) (receive timestamps only), returning the
 * result or -errno.
 *
 * Why not glibc's wrappers: in a process with more than one thread (every
 * crest_group, and any application that runs its loop off the main thread)
 * glibc makes each of them a cancellation point, switching asynchronous
 * cancellation on and off around the syscall with two atomic operations.
 * callgrind counted 90 instructions per echoed message for that alone in a
 * server whose loop runs on a worker thread, more than crest's own path to
 * the handler and back.  A socket that never blocks gains nothing from
 * being a cancellation point, and a loop thread must not be cancelled in
 * the middle of its bookkeeping anyway (stop it with crest_loop_stop()).
 *
 * So on x86-64 and AArch64 the three calls are made directly, as liburing
 * does.  Elsewhere, or configured with --disable-raw-syscalls (for tools
 * that interpose on libc's read/send, such as LD_PRELOAD shims), or when
 * CREST_LIBC_SYSCALLS is defined (the static test library: its fault
 * injection wraps the libc symbols with -Wl,--wrap), glibc's are used. */
#ifndef CREST_SYS_H
#define CREST_SYS_H

#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#if !defined(CREST_LIBC_SYSCALLS) && (defined(__x86_64__) || defined(__aarch64__))
#define CREST__RAW_SYSCALLS 1
#endif

#ifdef CREST__RAW_SYSCALLS

#if defined(__x86_64__)
static inline long crest__syscall6(long n, long a1, long a2, long a3, long a4, long a5,
                                   long a6) {
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#else /* __aarch64__ */
static inline long crest__syscall6(long n, long a1, long a2, long a3, long a4, long a5,
                                   long a6) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    register long x4 __asm__("x4") = a5;
    register long x5 __asm__("x5") = a6;
    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory", "cc");
    return x0;
}
#endif

static inline ssize_t crest__sys_read(int fd, void *buf, size_t len) {
    return crest__syscall6(SYS_read, fd, (long)buf, (long)len, 0, 0, 0);
}

static inline ssize_t crest__sys_send(int fd, const void *buf, size_t len, int flags) {
    return crest__syscall6(SYS_sendto, fd, (long)buf, (long)len, flags, 0, 0);
}

static inline ssize_t crest__sys_sendmsg(int fd, const struct msghdr *msg, int flags) {
    return crest__syscall6(SYS_sendmsg, fd, (long)msg, flags, 0, 0, 0);
}

static inline ssize_t crest__sys_recvmsg(int fd, struct msghdr *msg, int flags) {
    return crest__syscall6(SYS_recvmsg, fd, (long)msg, flags, 0, 0, 0);
}

#else /* glibc's wrappers */

static inline ssize_t crest__sys_read(int fd, void *buf, size_t len) {
    ssize_t n = read(fd, buf, len);
    return n < 0 ? -errno : n;
}

static inline ssize_t crest__sys_send(int fd, const void *buf, size_t len, int flags) {
    ssize_t n = send(fd, buf, len, flags);
    return n < 0 ? -errno : n;
}

static inline ssize_t crest__sys_sendmsg(int fd, const struct msghdr *msg, int flags) {
    ssize_t n = sendmsg(fd, msg, flags);
    return n < 0 ? -errno : n;
}

static inline ssize_t crest__sys_recvmsg(int fd, struct msghdr *msg, int flags) {
    ssize_t n = recvmsg(fd, msg, flags);
    return n < 0 ? -errno : n;
}

#endif
#endif
