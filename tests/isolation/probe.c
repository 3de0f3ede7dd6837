/* Probe run inside a jailbuilder sandbox by tests/linux_isolation.rs. Built on the host with
 * `gcc -static` and shipped in the toolchain. Prints one `name=RESULT` line per check, where
 * RESULT is `ok` or the errno's name (strerrorname_np, glibc >= 2.32).
 *
 *   probe tty       the controlling terminal: open /dev/tty, write to it, TIOCSTI into it
 *   probe syscalls  each system call the seccomp filter refuses, in a forked child each
 *   probe info      what compilers ask glibc about the machine (CPUs, memory)
 *   probe ipc       creates a SysV shared memory segment and a POSIX message queue under
 *                   fixed names, exclusively (EEXIST if one is already there), and leaves
 *                   them behind
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <mqueue.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(int e) {
    if (e == 0)
        return "ok";
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

static void report(const char *what, long r) {
    printf("%s=%s\n", what, name(r < 0 ? errno : 0));
    fflush(stdout);
}

static int tty(void) {
    /* Every way to a terminal: fds 0-2 (/dev/null, pipes) and the device nodes. */
    for (int fd = 0; fd <= 2; fd++) {
        char what[32];
        snprintf(what, sizeof what, "tiocsti_fd%d", fd);
        char c = 'Y';
        report(what, ioctl(fd, TIOCSTI, &c));
    }
    const char *others[] = {"/dev/console", "/dev/tty0", "/dev/tty1", "/dev/ptmx", "/dev/pts/0"};
    for (unsigned i = 0; i < sizeof others / sizeof others[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "open_%s", others[i] + 5);
        int fd = open(others[i], O_RDWR | O_NOCTTY);
        report(what, fd);
        if (fd >= 0)
            close(fd);
    }
    int fd = open("/dev/tty", O_RDWR);
    report("open", fd);
    if (fd < 0)
        return 0;
    static const char msg[] = "INJECTED-WRITE\n";
    report("write", write(fd, msg, sizeof msg - 1));
    /* One harmless byte: in an operator's shell this would be a whole command line. */
    char c = 'X';
    report("tiocsti", ioctl(fd, TIOCSTI, &c));
    return 0;
}

/* ---- system calls, each in its own child: its exit status is the errno (0 = success) ---- */

static int in_child(int (*f)(void)) {
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(f());
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return errno;
    if (WIFSIGNALED(status))
        return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int err(long r) { return r < 0 ? errno : 0; }

static int t_unshare_user(void) { return err(unshare(CLONE_NEWUSER)); }

/* What the filter exists for: a user namespace makes its creator CAP_SYS_ADMIN over new mount
 * namespaces, and so able to mount. */
static int t_mount_in_userns(void) {
    unshare(CLONE_NEWUSER | CLONE_NEWNS);
    return err(mount("none", "/tmp", "tmpfs", 0, NULL));
}

static int t_fsopen_in_userns(void) {
    unshare(CLONE_NEWUSER | CLONE_NEWNS);
    return err(syscall(SYS_fsopen, "tmpfs", 0));
}


static int t_clone_newuser(void) {
    long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid(r, NULL, 0);
    return err(r);
}

/* clone3's flags are in memory; the filter answers ENOSYS whatever they are. */
static int t_clone3(void) {
    uint64_t args[8] = {0};
    args[0] = CLONE_NEWUSER; /* flags */
    args[4] = SIGCHLD;       /* exit_signal */
    long r = syscall(SYS_clone3, args, sizeof args);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid(r, NULL, 0);
    return err(r);
}

/* A bad descriptor: EBADF if setns is reachable at all. */
static int t_setns(void) { return err(setns(-1, 0)); }

static int t_keyctl(void) {
    return err(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1));
}

static int t_ptrace(void) { return err(ptrace(PTRACE_TRACEME, 0, NULL, NULL)); }

static int t_netlink(void) { return err(socket(AF_NETLINK, SOCK_RAW, 0)); }

/* An unknown command: EINVAL if bpf(2) is reachable (unprivileged program loading is often
 * disabled by sysctl, which would hide the filter behind the same EPERM). */
static int t_bpf(void) { return err(syscall(SYS_bpf, 1000, NULL, 0)); }

static int t_io_uring(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    return err(syscall(SYS_io_uring_setup, 1, &p));
}

static int t_perf(void) {
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_TASK_CLOCK;
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    return err(syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
}

static int t_userfaultfd(void) { return err(syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */)); }

static int t_process_vm_readv(void) {
    char src[4] = "abc", dst[4];
    struct iovec l = {dst, sizeof dst}, r = {src, sizeof src};
    return err(syscall(SYS_process_vm_readv, getpid(), &l, 1, &r, 1, 0));
}

/* What a compiler does need keeps working. */
static int t_fork(void) {
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    return p < 0 ? errno : (waitpid(p, NULL, 0) < 0 ? errno : 0);
}

static void *thread_main(void *arg) { return arg; }

static int t_thread(void) {
    pthread_t t;
    int e = pthread_create(&t, NULL, thread_main, NULL);
    if (e == 0)
        pthread_join(t, NULL);
    return e;
}

static int t_unix_socket(void) { return err(socket(AF_UNIX, SOCK_STREAM, 0)); }

static int t_inet_socket(void) { return err(socket(AF_INET, SOCK_STREAM, 0)); }

static int syscalls(void) {
    struct { const char *what; int (*f)(void); } tests[] = {
        {"unshare_user", t_unshare_user},
        {"mount_in_userns", t_mount_in_userns},
        {"fsopen_in_userns", t_fsopen_in_userns},
        {"clone_newuser", t_clone_newuser},
        {"clone3", t_clone3},
        {"setns", t_setns},
        {"keyctl", t_keyctl},
        {"ptrace", t_ptrace},
        {"netlink", t_netlink},
        {"bpf", t_bpf},
        {"io_uring_setup", t_io_uring},
        {"perf_event_open", t_perf},
        {"userfaultfd", t_userfaultfd},
        {"process_vm_readv", t_process_vm_readv},
        {"fork", t_fork},
        {"thread", t_thread},
        {"unix_socket", t_unix_socket},
        {"inet_socket", t_inet_socket},
    };
    for (unsigned i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int e = in_child(tests[i].f);
        if (e >= 1000)
            printf("%s=SIG%d\n", tests[i].what, e - 1000);
        else
            printf("%s=%s\n", tests[i].what, name(e));
        fflush(stdout);
    }
    return 0;
}

static int info(void) {
    printf("get_nprocs=%d\n", get_nprocs());
    printf("nprocessors_onln=%ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    printf("phys_pages_known=%s\n", sysconf(_SC_PHYS_PAGES) > 0 ? "yes" : "no");
    return 0;
}

/* The names tests/linux_isolation.rs looks for on the host. */
#define PROBE_SHM_KEY 0x4a42
#define PROBE_MQ_NAME "/jailbuilder-probe"

static int ipc(void) {
    report("shm_create", shmget(PROBE_SHM_KEY, 4096, IPC_CREAT | IPC_EXCL | 0600));
    struct mq_attr attr = {.mq_maxmsg = 1, .mq_msgsize = 8};
    report("mq_create", mq_open(PROBE_MQ_NAME, O_CREAT | O_EXCL | O_RDWR, 0600, &attr));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "tty") == 0)
        return tty();
    if (argc == 2 && strcmp(argv[1], "syscalls") == 0)
        return syscalls();
    if (argc == 2 && strcmp(argv[1], "info") == 0)
        return info();
    if (argc == 2 && strcmp(argv[1], "ipc") == 0)
        return ipc();
    fprintf(stderr, "usage: probe tty|syscalls|info|ipc\n");
    return 2;
}
