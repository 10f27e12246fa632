/*
 * echo_server.c: a complete ipcfast server in C.
 *
 * Serves NAME until its standard input reaches end of file (Ctrl-D, or the
 * parent closing the pipe). Each request is answered with the same bytes in
 * upper case; the request "fail" is answered with an error instead, which an
 * ipcfast client reports as RemoteError.
 *
 * Build: see below.
 *
 * Run:  ./echo_server demo        then, from another shell:
 *       ipcfast call demo "hello"     (prints HELLO)
 */

// Build from a checkout: this file and every .c file of csrc/, one call:
//     cc -std=c99 -Wall -Wextra -Icsrc docs/examples/echo_server.c csrc/*.c -lpthread -o echo_server
// (Windows, MinGW: ... -ladvapi32 instead of -lpthread.)

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "ipc.h"

/* Diagnostics of the C core (never printed unless a callback is set). */
static void log_to_stderr(void *user_data, int level, const char *message)
{
    (void)user_data;
    if (level >= IPC_LOG_WARNING)
        fprintf(stderr, "ipcfast[%d]: %s\n", level, message);
}

/* State handed to every handler call (user_data). Handlers run on several
 * threads at once: this one is only read; anything they change needs a lock. */
struct settings {
    const char *refuse;   /* requests with this text get an error */
};

/* Runs on a connection thread, several at once. request == NULL means the
 * client disconnected. */
static void handle(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    const struct settings *settings = user_data;
    uint8_t *out;
    size_t i;

    if (request == NULL)
        return;
    /* request is followed by a NUL byte, so text can be used as a C string */
    if (strcmp((const char *)request, settings->refuse) == 0) {
        static const char why[] = "this server refuses that request";
        ipc_call_fail(call, why, sizeof why - 1, NULL);
        return;
    }
    /* A per-connection buffer, reused across requests: no malloc per call. */
    out = ipc_call_buffer(call, size ? size : 1);
    if (out == NULL) {
        static const char oom[] = "out of memory";
        ipc_call_fail(call, oom, sizeof oom - 1, NULL);
        return;
    }
    for (i = 0; i < size; i++)
        out[i] = (uint8_t)toupper(request[i]);
    ipc_call_respond(call, out, size, NULL);
}

int main(int argc, char **argv)
{
    ipc_server_options options;
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};
    struct settings settings = {"fail"};

    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    ipc_set_log_handler(log_to_stderr, NULL);

    ipc_server_options_init(&options);   /* defaults: 32 clients, 64 MiB, same user only */
    options.max_message = 1024 * 1024;
    if (ipc_server_open(&server, argv[1], &options, handle, &settings, &err) != IPC_OK) {
        fprintf(stderr, "echo_server: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return 1;
    }
    printf("READY %s\n", ipc_server_address(server));
    fflush(stdout);

    while (getchar() != EOF) {
        /* serve until standard input closes */
    }
    ipc_server_stop(server);   /* lets running handlers finish, joins every thread */
    return 0;
}
