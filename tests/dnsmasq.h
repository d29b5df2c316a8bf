/* A real DNS server for tests: dnsmasq on 127.0.0.1 and a free port with
 * only the records a test gives (--no-resolv --no-hosts, everything under
 * .test local, so an unknown name is NXDOMAIN), started with
 * PR_SET_PDEATHSIG so it never outlives a killed test, stopped by PID.
 * Shared by test_resolve and test_dial. */
#ifndef CREST_TEST_DNSMASQ_H
#define CREST_TEST_DNSMASQ_H

#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

static pid_t dns_pid = -1;
static char dns_dir[64];
static char dns_servers[64];

static int bind_udp(uint16_t port, uint16_t *got)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    if (got) *got = ntohs(sin.sin_port);
    return fd;
}

static char dns_prog[128];

/* dnsmasq lives in /usr/sbin, often not on a user's PATH. */
static bool find_dnsmasq(void)
{
    static const char *dirs[] = {"/usr/sbin", "/usr/bin", "/sbin", "/bin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(dns_prog, sizeof(dns_prog), "%s/dnsmasq", dirs[i]);
        if (access(dns_prog, X_OK) == 0) return true;
    }
    return false;
}

static void dns_stop(void)
{
    if (dns_pid > 0) {
        kill(dns_pid, SIGTERM);
        waitpid(dns_pid, NULL, 0);
        dns_pid = -1;
    }
    if (dns_dir[0]) {
        char p[128];
        snprintf(p, sizeof(p), "%s/dnsmasq.pid", dns_dir);
        unlink(p);
        rmdir(dns_dir);
        dns_dir[0] = '\0';
    }
}

/* Is a UDP socket bound to 127.0.0.1:port?  Read from /proc/net/udp: a
 * probe that binds the port itself would race dnsmasq's own bind. */
static bool udp_port_bound(uint16_t port)
{
    FILE *f = fopen("/proc/net/udp", "r");
    if (!f) return false;
    char line[256], want[32];
    snprintf(want, sizeof(want), "0100007F:%04X", port);
    bool found = false;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, want) != NULL;
    fclose(f);
    return found;
}

/* Does a DNS server answer on 127.0.0.1:port?  One query for
 * probe.test (A), 200 ms for a reply with its id: the port being bound
 * is not enough, since another test's socket may hold it (it took the
 * port between our probe and dnsmasq's bind, and dnsmasq then exited). */
static bool dns_answers(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static const unsigned char query[] = {
        0xc3, 0x57, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* header */
        5, 'p', 'r', 'o', 'b', 'e', 4, 't', 'e', 's', 't', 0, 0x00, 0x01, 0x00, 0x01};
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        send(fd, query, sizeof(query), 0) == (ssize_t)sizeof(query)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        unsigned char reply[512];
        if (poll(&pfd, 1, 200) == 1) {
            ssize_t n = recv(fd, reply, sizeof(reply), 0);
            ok = n >= 12 && reply[0] == query[0] && reply[1] == query[1] && (reply[2] & 0x80);
        }
    }
    close(fd);
    return ok;
}

/* Start dnsmasq; 0 when it answers on its port, -1 if not. */
static int dns_start_once(const char *const *records)
{
    uint16_t port = 0;
    int probe = bind_udp(0, &port);
    if (probe < 0) return -1;
    close(probe);
    snprintf(dns_dir, sizeof(dns_dir), "/tmp/crest-resolve.XXXXXX");
    if (!mkdtemp(dns_dir)) return -1;
    chmod(dns_dir, 0755); /* dnsmasq may drop to "nobody" */
    char portarg[32], pidarg[128];
    snprintf(portarg, sizeof(portarg), "--port=%u", port);
    snprintf(pidarg, sizeof(pidarg), "--pid-file=%s/dnsmasq.pid", dns_dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a killed test */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        const char *argv[64] = {"dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                                "--conf-file=/dev/null", portarg, "--listen-address=127.0.0.1",
                                "--bind-interfaces", pidarg, "--local=/test/"};
        size_t n = 10;
        for (size_t i = 0; records[i] && n < 63; i++) argv[n++] = records[i];
        argv[n] = NULL;
        execv(dns_prog, (char *const *)argv);
        _exit(127);
    }
    dns_pid = pid;
    snprintf(dns_servers, sizeof(dns_servers), "127.0.0.1:%u", port);
    for (int i = 0; i < 1000; i++) { /* bounded: 10 s */
        if (waitpid(pid, NULL, WNOHANG) == pid) { /* it could not bind */
            dns_pid = -1;
            return -1;
        }
        if (udp_port_bound(port)) {
            for (int q = 0; q < 10; q++) /* 2 s for a first answer */
                if (dns_answers(port)) return 0;
            return -1;
        }
        tu_sleep_ms(10);
    }
    return -1;
}

/* Start dnsmasq with records; a few tries, each on a fresh port (another
 * program may take the port between our probe and dnsmasq's bind). */
static int dns_start(const char *const *records)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        if (dns_start_once(records) == 0) return 0;
        dns_stop();
    }
    return -1;
}

#endif
