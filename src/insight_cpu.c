/* CPU starvation sampling (insight.h): the loop thread's run-queue wait
 * and context switches, read once per sample period on the loop thread.
 *
 * - /proc/thread-self/schedstat: "<ns on a CPU> <ns runnable, waiting on a
 *   run queue> <timeslices>" (kernel with CONFIG_SCHEDSTATS, as every
 *   distribution kernel has), opened, read and closed each sample.
 * - getrusage(RUSAGE_THREAD): ru_nivcsw (preempted: the CPU was taken
 *   away) and ru_nvcsw (gave it up: blocked in epoll_wait, a lock, I/O).
 *
 * The figures are cumulative; the sampler keeps the previous readings and
 * adds the differences, so crest_loop_insight_reset() (which zeroes the
 * figures) starts them again from zero without a base to fix.  A loop run
 * from another thread than the last sample's (crest_loop_run on a new
 * thread) is noticed by its thread id: that period's difference is dropped (the two threads'
 * counters have nothing to do with each other).
 *
 * Cost: gettid, open, read, close and getrusage: five syscalls a sample
 * period. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static int current_tid(void) {
    return (int)syscall(SYS_gettid);
}

/* cpu and runq of the calling thread: true if read.  The file is opened
 * and closed each time rather than kept open: an fd that appears at the
 * first sample would change the process's fd count under applications
 * (and tests) that compare it with a baseline, and would have to follow
 * the loop from thread to thread.  A missing file is said once at DEBUG. */
static bool read_schedstat(struct crest__insight *ins, uint64_t *cpu_ns, uint64_t *runq_ns) {
    if (ins->schedstat_missing)
        return false;
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ins->schedstat_missing = true;
        crest_log(CREST_LOG_DEBUG,
                  "insight: no /proc/thread-self/schedstat (%s): run-queue wait is not measured "
                  "(a kernel without CONFIG_SCHEDSTATS, or no /proc)",
                  crest_strerror(errno));
        return false;
    }
    char buf[96];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return sscanf(buf, "%" SCNu64 " %" SCNu64, cpu_ns, runq_ns) == 2;
}

void crest__insight_sample_cpu(struct crest_loop *loop, crest_insight_t *fig, uint64_t now_ns) {
    CREST__UNUSED(now_ns);
    struct crest__insight *ins = &loop->ins;
    int tid = current_tid();
    if (tid != ins->cpu_tid) {
        /* The first sample, or the loop now runs on another thread. */
        ins->cpu_tid = tid;
        ins->cpu_have_prev = false;
    }
    uint64_t cpu = 0, runq = 0;
    bool have_sched = read_schedstat(ins, &cpu, &runq);
    struct rusage ru;
    bool have_ru = getrusage(RUSAGE_THREAD, &ru) == 0;
    uint64_t niv = have_ru ? (uint64_t)ru.ru_nivcsw : ins->cpu_prev_nivcsw;
    uint64_t nv = have_ru ? (uint64_t)ru.ru_nvcsw : ins->cpu_prev_nvcsw;
    if (!have_sched) {
        cpu = ins->cpu_prev_cpu_ns;
        runq = ins->cpu_prev_runq_ns;
    }
    if (ins->cpu_have_prev) {
        /* Counters of one thread never go back; guard anyway, so a
         * misread can never add 2^64. */
        uint64_t d_runq = runq >= ins->cpu_prev_runq_ns ? runq - ins->cpu_prev_runq_ns : 0;
        fig->cpu_ns += cpu >= ins->cpu_prev_cpu_ns ? cpu - ins->cpu_prev_cpu_ns : 0;
        fig->runq_wait_ns += d_runq;
        fig->nivcsw += niv >= ins->cpu_prev_nivcsw ? niv - ins->cpu_prev_nivcsw : 0;
        fig->nvcsw += nv >= ins->cpu_prev_nvcsw ? nv - ins->cpu_prev_nvcsw : 0;
        fig->runq_wait_last_ns = d_runq;
        if (d_runq > fig->runq_wait_max_ns)
            fig->runq_wait_max_ns = d_runq;
        fig->cpu_samples++;
    }
    ins->cpu_prev_cpu_ns = cpu;
    ins->cpu_prev_runq_ns = runq;
    ins->cpu_prev_nivcsw = niv;
    ins->cpu_prev_nvcsw = nv;
    ins->cpu_have_prev = true;
}
