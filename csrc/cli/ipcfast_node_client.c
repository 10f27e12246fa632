/*
 * ipcfast-node-client: the client side of a server node (docs/protocol.md
 * section 10) as a small C program, so that handing a command to a warm
 * node costs about a millisecond instead of a Python interpreter's start.
 *
 *   ipcfast-node-client --name NAME [--server 'SHELL COMMAND'] [--log FILE]
 *                       [--start-timeout MS] [--stream] -- PROGRAM [ARGS...]
 *
 * Sends PROGRAM ARGS, the working directory, the environment, the umask and
 * the locale to the node NAME together with its own stdin, stdout and stderr
 * (SCM_RIGHTS), so the node's forked child writes to this process's terminal
 * or pipes directly; waits for the EXIT and ends as the command ended: its
 * exit code, or death by the same signal. With --stream no descriptors are
 * passed and the output arrives as CONSOLE_WRITE packets (the packet path).
 * If no node runs and --server is given, starts it (detached: its own
 * session, output appended to --log) and connects within --start-timeout
 * (default 60000 ms). If the node is busy, stale, cannot start or refuses the
 * command, runs PROGRAM ARGS itself (exec), so the result is the same either
 * way. Ctrl-C is forwarded as CANCEL (the command gets SIGINT); a second
 * Ctrl-C stops waiting. SIGHUP, SIGQUIT, SIGTERM and SIGWINCH are forwarded
 * as CANCEL naming the signal (the command gets the same one), each time
 * (`timeout` sends SIGTERM twice: to the command and to its group); one
 * this process inherited as ignored (nohup) stays ignored.
 *
 * The socket work is plain POSIX calls (this program is POSIX-only) around
 * the sans-I/O codec of csrc/ipc.h: handshake, packet headers, COMMAND and
 * EXIT payloads.
 *
 * `python -m ipcfast.node c-command [--preload MOD]...` prints a complete
 * command line for a Python node.
 *
 * Build: cc -std=c99 -O2 -Icsrc csrc/cli/ipcfast_node_client.c csrc/ipc*.c -lpthread
 */

#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* SCM_RIGHTS, getpeereid */
#else
#define _DEFAULT_SOURCE /* SCM_RIGHTS, SO_PEERCRED, struct ucred */
#define _GNU_SOURCE
#endif

#include "ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define READ_SLICE_MS 100 /* how often a waiting client looks at Ctrl-C */
#define CANCELLED_STATUS 130

/* COMMAND flags beyond the terminal bits (docs/protocol.md 10.2). */
#define COMMAND_FDS 0x8u    /* stdin, stdout, stderr attached (SCM_RIGHTS) */
#define COMMAND_UMASK 0x10u /* bits 16-27 hold the umask */
#define COMMAND_UMASK_SHIFT 16
#define EXIT_KILLED 6 /* died of a signal; exit code = signal number */

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SIGPIPE is ignored below instead */
#endif

typedef struct options {
    const char *name;
    const char *server; /* shell command that starts the node, or NULL */
    const char *log;    /* where the started node's output goes */
    int start_timeout_ms;
    int stream;  /* packet path: pass no descriptors */
    char **argv; /* PROGRAM ARGS... (NULL-terminated) */
    int argc;
} options;

static volatile sig_atomic_t g_interrupts = 0;

static void on_sigint(int signo)
{
    (void)signo;
    g_interrupts++;
}

/* The other signals a command run cold would get from its terminal or from
 * whoever signals the client (kill, timeout, a CI runner), each with the
 * protocol's code for it (docs/protocol.md 10.5). */
#define FORWARDED 4
static const int g_forwarded[FORWARDED] = {SIGHUP, SIGQUIT, SIGTERM, SIGWINCH};
static const uint8_t g_forwarded_code[FORWARDED] = {
    IPC_SIGNAL_HANGUP, IPC_SIGNAL_QUIT, IPC_SIGNAL_TERMINATE, IPC_SIGNAL_WINDOW_CHANGED};
static volatile sig_atomic_t g_received[FORWARDED];
static int g_installed[FORWARDED]; /* 0: inherited as ignored, left alone */

static void on_forwarded(int signo)
{
    int i;

    for (i = 0; i < FORWARDED; i++)
        if (g_forwarded[i] == signo)
            g_received[i]++;
}

static void usage(void)
{
    fputs("usage: ipcfast-node-client --name NAME [--server 'SHELL COMMAND'] [--log FILE]\n"
          "                           [--start-timeout MS] [--stream] -- PROGRAM [ARGS...]\n",
          stderr);
}

static int parse_options(int argc, char **argv, options *o)
{
    int i;

    memset(o, 0, sizeof *o);
    o->start_timeout_ms = 60000;
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];

        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(arg, "--stream") == 0) {
            o->stream = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
            return 0;
        }
        if (strcmp(arg, "--name") == 0)
            o->name = argv[++i];
        else if (strcmp(arg, "--server") == 0)
            o->server = argv[++i];
        else if (strcmp(arg, "--log") == 0)
            o->log = argv[++i];
        else if (strcmp(arg, "--start-timeout") == 0)
            o->start_timeout_ms = atoi(argv[++i]);
        else {
            fprintf(stderr, "ipcfast-node-client: unknown option %s\n", arg);
            usage();
            return 0;
        }
    }
    if (!o->name || i >= argc) {
        usage();
        return 0;
    }
    o->argv = argv + i;
    o->argc = argc - i;
    return 1;
}

static void die_of_signal(int signo);

/* Runs the command ourselves: the same program, arguments, directory and
 * environment, so the result does not depend on whether a node helped. */
static int run_cold(const options *o)
{
    int i;

    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    /* Default dispositions first, so none is caught and lost across exec;
     * then a terminating signal that came while we asked the node ends us
     * as it would have ended the command. */
    for (i = 0; i < FORWARDED; i++)
        if (g_installed[i])
            signal(g_forwarded[i], SIG_DFL);
    for (i = 0; i < FORWARDED; i++)
        if (g_forwarded[i] != SIGWINCH && g_received[i])
            die_of_signal(g_forwarded[i]);
    execvp(o->argv[0], o->argv);
    fprintf(stderr, "ipcfast-node-client: cannot run %s: %s\n", o->argv[0], strerror(errno));
    return 127;
}

/* Ends this process as the command ended: by the same signal (else 128+n). */
static void die_of_signal(int signo)
{
    sigset_t set;

    signal(signo, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, signo);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(signo);
    _exit(128 + signo); /* a signal that does not end a process */
}

/* Starts the node detached: a double fork, so it is not our child (no
 * zombie, not killed with our process group) and outlives us. */
static int start_node(const options *o)
{
    pid_t pid = fork();
    int status = 0;

    if (pid < 0)
        return 0;
    if (pid == 0) {
        int null_fd, log_fd;

        if (setsid() < 0 || fork() != 0)
            _exit(0);
        null_fd = open("/dev/null", O_RDWR);
        log_fd = o->log ? open(o->log, O_WRONLY | O_CREAT | O_APPEND, 0600) : -1;
        if (log_fd < 0)
            log_fd = null_fd;
        if (null_fd >= 0)
            dup2(null_fd, 0);
        if (log_fd >= 0) {
            dup2(log_fd, 1);
            dup2(log_fd, 2);
        }
        execl("/bin/sh", "sh", "-c", o->server, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return 1;
}

static int write_all(int fd, const uint8_t *data, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, data, size);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0; /* our own stream is gone: drop the output */
        data += n;
        size -= (size_t)n;
    }
    return 1;
}

/* ---- the connection: plain POSIX sockets -------------------------------- */

static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* A private directory of this user (docs/protocol.md 2.1), or absent. */
static int directory_is_safe(const char *dir)
{
    struct stat st;

    if (lstat(dir, &st) != 0)
        return errno == ENOENT; /* no server has run yet: "not found" later */
    return S_ISDIR(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & (S_IWGRP | S_IWOTH));
}

/* The socket path of a name (docs/protocol.md 2.1); 0 if unusable. */
static int socket_path(const char *name, struct sockaddr_un *addr)
{
    char dir[sizeof addr->sun_path];
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    const char *tmp = getenv("TMPDIR");
    int n;

    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    if (strchr(name, '/')) {
        n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s", name);
        return n > 0 && (size_t)n < sizeof addr->sun_path;
    }
    if (runtime && *runtime)
        n = snprintf(dir, sizeof dir, "%s/ipcfast", runtime);
    else
        n = snprintf(dir, sizeof dir, "%s/ipcfast-%lu", tmp && *tmp ? tmp : "/tmp",
                     (unsigned long)geteuid());
    if (n <= 0 || (size_t)n >= sizeof dir || !directory_is_safe(dir))
        return 0;
    n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s/%s", dir, name);
    return n > 0 && (size_t)n < sizeof addr->sun_path;
}

/* Reads exactly size bytes within the deadline; 0 on EOF, error or time-out. */
static int read_exactly(int fd, uint8_t *out, size_t size, long deadline)
{
    while (size > 0) {
        struct pollfd p = {fd, POLLIN, 0};
        long left = deadline - now_ms();
        ssize_t n;

        if (left <= 0)
            return 0;
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            return 0;
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        n = read(fd, out, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        out += n;
        size -= (size_t)n;
    }
    return 1;
}

static int send_all(int fd, const uint8_t *data, size_t size)
{
    while (size > 0) {
        ssize_t n = send(fd, data, size, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        data += n;
        size -= (size_t)n;
    }
    return 1;
}

/* The peer must run as this user: a node of another user never gets our
 * terminal. */
static int peer_is_us(int fd)
{
#if defined(SO_PEERCRED)
    struct ucred cred;
    socklen_t len = sizeof cred;

    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == geteuid();
#else
    uid_t uid;
    gid_t gid;

    return getpeereid(fd, &uid, &gid) == 0 && uid == geteuid();
#endif
}

/* Connects and shakes hands once; the socket, or -1. */
static int try_connect(const struct sockaddr_un *addr, long deadline)
{
    uint8_t hello[IPC_HANDSHAKE_SIZE + 1], reply[IPC_HANDSHAKE_SIZE + 1];
    uint8_t version = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 ||
        connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 || !peer_is_us(fd)) {
        close(fd);
        return -1;
    }
    ipc_handshake_encode_request(hello, IPC_DEFAULT_HANDSHAKE, IPC_PROTOCOL_VERSION);
    if (!send_all(fd, hello, sizeof hello) || !read_exactly(fd, reply, sizeof reply, deadline) ||
        ipc_handshake_check_reply(reply, sizeof reply, IPC_DEFAULT_HANDSHAKE, &version) !=
            IPC_VERDICT_OK) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Connects to the node within timeout_ms (retrying "not there yet"). */
static int connect_node(const char *name, int timeout_ms)
{
    struct sockaddr_un addr;
    long deadline = now_ms() + timeout_ms;

    if (!socket_path(name, &addr))
        return -1;
    for (;;) {
        int fd = try_connect(&addr, deadline + 1000);

        if (fd >= 0 || now_ms() >= deadline)
            return fd;
        {
            struct timespec pause = {0, 10 * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
}

/* Sends one packet; with fds, the descriptors travel with its first byte. */
static int send_packet(int fd, uint8_t type, const uint8_t *payload, size_t size, const int *fds,
                       int nfds)
{
    uint8_t header[IPC_MAX_HEADER_SIZE];
    size_t header_size;
    struct iovec iov[2];
    struct msghdr msg;
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    ssize_t n;

    if (size > 0xFFFFFFFFu)
        return 0;
    header_size = ipc_packet_header_encode(header, type, (uint32_t)size, 0);
    if (nfds == 0)
        return send_all(fd, header, header_size) && send_all(fd, payload, size);
    memset(&msg, 0, sizeof msg);
    memset(&control, 0, sizeof control);
    iov[0].iov_base = header;
    iov[0].iov_len = header_size;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    {
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);

        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(cmsg), fds, (size_t)nfds * sizeof(int));
    }
    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    return send_all(fd, header + n, header_size - (size_t)n) && send_all(fd, payload, size);
}

static int send_command(int fd, const options *o)
{
    static const int stdio[3] = {0, 1, 2};
    ipc_command command;
    ipc_error err = {0, 0, NULL};
    uint8_t *payload = NULL;
    size_t size = 0;
    char cwd[4096];
    const char *locale = setlocale(LC_CTYPE, "");
    uint32_t envc = 0;
    mode_t mask = umask(0);
    int ok;

    umask(mask);
    if (!getcwd(cwd, sizeof cwd))
        return 0;
    while (environ && environ[envc])
        envc++;
    memset(&command, 0, sizeof command);
    command.flags = (isatty(0) ? IPC_COMMAND_STDIN_TTY : 0) |
                    (isatty(1) ? IPC_COMMAND_STDOUT_TTY : 0) |
                    (isatty(2) ? IPC_COMMAND_STDERR_TTY : 0) | COMMAND_UMASK |
                    ((uint32_t)(mask & 07777) << COMMAND_UMASK_SHIFT) |
                    (o->stream ? 0 : COMMAND_FDS);
    command.argc = (uint32_t)o->argc;
    command.argv = o->argv;
    command.cwd = cwd;
    command.envc = envc;
    command.env = environ;
    command.locale = (char *)(locale ? locale : "");
    if (ipc_command_encode(&command, &payload, &size, &err) != IPC_OK) {
        ipc_error_clear(&err);
        return 0;
    }
    ok = send_packet(fd, IPC_PACKET_COMMAND, payload, size, stdio, o->stream ? 0 : 3);
    ipc_free(payload);
    return ok;
}

enum outcome { RAN, NOT_RUN, FAILED };

/* Reads one packet into *buf (grown as needed); 1 ok, 0 nothing within
 * the slice, -1 EOF or error. */
static int read_packet(int fd, uint8_t **buf, size_t *cap, uint8_t *type, size_t *size)
{
    uint8_t header[IPC_MAX_HEADER_SIZE];
    ipc_packet_header h;
    size_t have = 0;
    long deadline;
    struct pollfd p = {fd, POLLIN, 0};

    if (poll(&p, 1, READ_SLICE_MS) <= 0)
        return 0;
    /* A packet has begun: the rest follows promptly (30 s is generous). */
    deadline = now_ms() + 30000;
    for (;;) {
        ipc_verdict v = ipc_packet_header_parse(header, have, IPC_DEFAULT_MAX_MESSAGE,
                                                IPC_PROTOCOL_VERSION, &h);

        if (v == IPC_VERDICT_OK)
            break;
        if (v != IPC_VERDICT_NEED_MORE || !read_exactly(fd, header + have, 1, deadline))
            return -1;
        have++;
    }
    if (h.length > *cap) {
        uint8_t *grown = realloc(*buf, h.length);

        if (!grown)
            return -1;
        *buf = grown;
        *cap = h.length;
    }
    if (h.length && !read_exactly(fd, *buf, h.length, deadline))
        return -1;
    *type = h.type;
    *size = h.length;
    return 1;
}

/* Sends a CANCEL for each forwarded signal that arrived since the last
 * call (several of one kind in a slice coalesce, as pending signals do). */
static void forward_signals(int fd, sig_atomic_t sent[FORWARDED])
{
    int i;

    for (i = 0; i < FORWARDED; i++) {
        sig_atomic_t received = g_received[i];

        if (received == sent[i])
            continue;
        sent[i] = received;
        send_packet(fd, IPC_PACKET_CANCEL, &g_forwarded_code[i], 1, NULL, 0);
    }
}

/* Waits for the command's EXIT, writing CONSOLE_WRITE output (packet path). */
static enum outcome follow(int fd, int *exit_code, uint8_t *exit_type)
{
    uint8_t *buf = NULL;
    size_t cap = 0;
    int cancelled = 0;
    sig_atomic_t forwarded[FORWARDED] = {0, 0, 0, 0};
    enum outcome result = FAILED;

    for (;;) {
        uint8_t type = 0;
        size_t size = 0;
        int r = read_packet(fd, &buf, &cap, &type, &size);

        if (g_interrupts > 1)
            die_of_signal(SIGINT); /* a second Ctrl-C: stop waiting */
        if (g_interrupts && !cancelled) {
            cancelled = 1;
            send_packet(fd, IPC_PACKET_CANCEL, NULL, 0, NULL, 0);
        }
        forward_signals(fd, forwarded);
        if (r == 0)
            continue;
        if (r < 0) {
            fputs("ipcfast-node-client: the node failed while running the command\n", stderr);
            break;
        }
        if (type == IPC_PACKET_CONSOLE_WRITE) {
            int stream = 0;
            const uint8_t *text = NULL;
            size_t text_size = 0;

            if (ipc_console_write_decode(buf, size, &stream, &text, &text_size, NULL) == IPC_OK)
                write_all(stream, text, text_size);
        } else if (type == IPC_PACKET_EXIT) {
            int32_t code = 1;

            if (ipc_exit_decode(buf, size, &code, exit_type, NULL) != IPC_OK) {
                fputs("ipcfast-node-client: a malformed EXIT from the node\n", stderr);
                break;
            }
            *exit_code = code;
            result = (*exit_type == IPC_EXIT_BUSY || *exit_type == IPC_EXIT_STALE ||
                      *exit_type == IPC_EXIT_REFUSED)
                         ? NOT_RUN
                         : RAN;
            break;
        } else {
            fprintf(stderr, "ipcfast-node-client: unexpected packet type %u from the node\n", type);
            break;
        }
    }
    free(buf);
    return result;
}

int main(int argc, char **argv)
{
    struct sigaction action;
    options o;
    enum outcome outcome;
    int fd, exit_code = 1;
    uint8_t exit_type = IPC_EXIT_CRASHED;

    if (!parse_options(argc, argv, &o))
        return 2;
    signal(SIGPIPE, SIG_IGN); /* a vanished node is an error, not our death */
    fd = connect_node(o.name, 0);
    if (fd < 0 && o.server && start_node(&o))
        fd = connect_node(o.name, o.start_timeout_ms);
    if (fd < 0)
        return run_cold(&o);

    /* Ctrl-C must interrupt our waits, not kill us: it becomes a CANCEL. */
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    {
        int i;

        action.sa_handler = on_forwarded;
        for (i = 0; i < FORWARDED; i++) {
            struct sigaction old;

            if (sigaction(g_forwarded[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
                continue; /* nohup: a hang-up must not reach the command */
            g_installed[i] = sigaction(g_forwarded[i], &action, NULL) == 0;
        }
    }

    if (!send_command(fd, &o)) {
        close(fd);
        return run_cold(&o);
    }
    outcome = follow(fd, &exit_code, &exit_type);
    close(fd);
    if (outcome == NOT_RUN && exit_type == IPC_EXIT_STALE && o.server && start_node(&o)) {
        /* That node's code changed and it gave its name up: once more with a fresh one. */
        fd = connect_node(o.name, o.start_timeout_ms);
        if (fd >= 0 && send_command(fd, &o))
            outcome = follow(fd, &exit_code, &exit_type);
        if (fd >= 0)
            close(fd);
    }
    if (outcome == NOT_RUN)
        return run_cold(&o);
    if (outcome == FAILED)
        return 1;
    if (exit_type == IPC_EXIT_CANCELLED)
        die_of_signal(SIGINT);
    if (exit_type == EXIT_KILLED)
        die_of_signal(exit_code);
    return exit_code;
}
