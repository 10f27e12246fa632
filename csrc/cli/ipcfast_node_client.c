/*
 * ipcfast-node-client: the client side of a server node (docs/protocol.md
 * section 10) as a small C program, so that handing a command to a warm
 * node costs about a millisecond instead of a Python interpreter's start.
 *
 *   ipcfast-node-client --name NAME [--server 'SHELL COMMAND'] [--log FILE]
 *                       [--start-timeout MS] -- PROGRAM [ARGS...]
 *
 * Sends PROGRAM ARGS, the working directory, the environment and the locale
 * to the node NAME, writes what the command prints to its own stdout and
 * stderr as it arrives, and exits with the command's exit code. If no node
 * runs and --server is given, starts it (detached: its own session, output
 * appended to --log) and connects within --start-timeout (default 60000
 * ms). If the node is busy, stale, cannot start or refuses the command,
 * runs PROGRAM ARGS itself (exec), so the result is the same either way.
 * Ctrl-C is forwarded as CANCEL; a cancelled command ends this process
 * with SIGINT, as the program itself would have ended; a second Ctrl-C stops
 * waiting.
 *
 * `python -m ipcfast.node c-command [--preload MOD]...` prints a complete
 * command line for a Python node. POSIX only.
 *
 * Build: cc -std=c99 -O2 -Icsrc csrc/cli/ipcfast_node_client.c csrc/ipc*.c -lpthread
 */

#define _POSIX_C_SOURCE 200809L

#include "ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define READ_SLICE_MS 100   /* how often a waiting client looks at Ctrl-C */
#define CANCELLED_STATUS 130

typedef struct options {
    const char *name;
    const char *server;        /* shell command that starts the node, or NULL */
    const char *log;           /* where the started node's output goes */
    int start_timeout_ms;
    char **argv;               /* PROGRAM ARGS... (NULL-terminated) */
    int argc;
} options;

static volatile sig_atomic_t g_interrupts = 0;

static void on_sigint(int signo)
{
    (void)signo;
    g_interrupts++;
}

static void usage(void)
{
    fputs("usage: ipcfast-node-client --name NAME [--server 'SHELL COMMAND'] [--log FILE]\n"
          "                           [--start-timeout MS] -- PROGRAM [ARGS...]\n",
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

/* Runs the command ourselves: the same program, arguments, directory and
 * environment, so the result does not depend on whether a node helped. */
static int run_cold(const options *o)
{
    execvp(o->argv[0], o->argv);
    fprintf(stderr, "ipcfast-node-client: cannot run %s: %s\n", o->argv[0], strerror(errno));
    return 127;
}

static void die_of_sigint(void)
{
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
    _exit(CANCELLED_STATUS);   /* only if SIGINT is blocked or ignored */
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
            return 0;   /* our own stream is gone: drop the output */
        data += n;
        size -= (size_t)n;
    }
    return 1;
}

static int send_command(ipc_client_t *client, const options *o, ipc_error *err)
{
    ipc_command command;
    char cwd[4096];
    const char *locale = setlocale(LC_CTYPE, "");
    uint32_t envc = 0;

    if (!getcwd(cwd, sizeof cwd)) {
        ipc_error_clear(err);
        err->code = IPC_E_SYSTEM;
        return IPC_E_SYSTEM;
    }
    while (environ && environ[envc])
        envc++;
    memset(&command, 0, sizeof command);
    command.flags = (isatty(0) ? IPC_COMMAND_STDIN_TTY : 0) |
                    (isatty(1) ? IPC_COMMAND_STDOUT_TTY : 0) |
                    (isatty(2) ? IPC_COMMAND_STDERR_TTY : 0);
    command.argc = (uint32_t)o->argc;
    command.argv = o->argv;
    command.cwd = cwd;
    command.envc = envc;
    command.env = environ;
    command.locale = (char *)(locale ? locale : "");
    return ipc_client_send_command(client, &command, 10000, err);
}

enum outcome { RAN, NOT_RUN, FAILED };

/* Streams the command's output until its EXIT. */
static enum outcome follow(ipc_client_t *client, int *exit_code, uint8_t *exit_type)
{
    ipc_error err = {0, 0, NULL};
    int cancelled = 0, received = 0;

    for (;;) {
        uint8_t type = 0;
        const uint8_t *payload = NULL;
        size_t size = 0;
        int r = ipc_client_read_packet(client, &type, &payload, &size, READ_SLICE_MS, &err);

        if (g_interrupts > 1)
            die_of_sigint();   /* a second Ctrl-C: stop waiting */
        if (g_interrupts && !cancelled) {
            cancelled = 1;
            ipc_client_write_packet(client, IPC_PACKET_CANCEL, NULL, 0, 1000, NULL);
        }
        if (r == IPC_E_TIMEOUT) {
            ipc_error_clear(&err);
            continue;
        }
        if (r != IPC_OK) {
            if (received)
                fprintf(stderr, "ipcfast-node-client: the node failed while running the "
                        "command: %s\n", err.message ? err.message : ipc_result_name(r));
            ipc_error_clear(&err);
            return received ? FAILED : NOT_RUN;
        }
        received = 1;
        if (type == IPC_PACKET_CONSOLE_WRITE) {
            int stream = 0;
            const uint8_t *text = NULL;
            size_t text_size = 0;

            if (ipc_console_write_decode(payload, size, &stream, &text, &text_size, NULL) == IPC_OK)
                write_all(stream, text, text_size);
        } else if (type == IPC_PACKET_EXIT) {
            int32_t code = 1;

            if (ipc_exit_decode(payload, size, &code, exit_type, &err) != IPC_OK) {
                fprintf(stderr, "ipcfast-node-client: %s\n", err.message ? err.message : "bad EXIT");
                ipc_error_clear(&err);
                return FAILED;
            }
            *exit_code = code;
            return (*exit_type == IPC_EXIT_BUSY || *exit_type == IPC_EXIT_STALE ||
                    *exit_type == IPC_EXIT_REFUSED) ? NOT_RUN : RAN;
        }
    }
}

static ipc_client_t *connect_node(const char *name, int timeout_ms)
{
    ipc_client_t *client = NULL;
    ipc_client_options options;
    ipc_error err = {0, 0, NULL};

    /* With a budget we just started the node, which may not own its name
     * yet: wait for it rather than take "not found" at once. */
    ipc_client_options_init(&options);
    options.wait_if_not_found = timeout_ms > 0;
    if (ipc_client_open(&client, name, &options, timeout_ms, &err) != IPC_OK)
        client = NULL;
    ipc_error_clear(&err);
    return client;
}

int main(int argc, char **argv)
{
    struct sigaction action;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    options o;
    enum outcome outcome;
    int exit_code = 1;
    uint8_t exit_type = IPC_EXIT_CRASHED;

    if (!parse_options(argc, argv, &o))
        return 2;
    client = connect_node(o.name, 0);
    if (!client && o.server && start_node(&o))
        client = connect_node(o.name, o.start_timeout_ms);
    if (!client)
        return run_cold(&o);

    /* Ctrl-C must interrupt our waits, not kill us: it becomes a CANCEL. */
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);

    if (send_command(client, &o, &err) != IPC_OK) {
        ipc_error_clear(&err);
        ipc_client_close(client);
        return run_cold(&o);
    }
    outcome = follow(client, &exit_code, &exit_type);
    ipc_client_close(client);
    if (outcome == NOT_RUN) {
        signal(SIGINT, SIG_DFL);
        return run_cold(&o);
    }
    if (outcome == FAILED)
        return 1;
    if (exit_type == IPC_EXIT_CANCELLED && g_interrupts)
        die_of_sigint();
    return exit_code;
}
