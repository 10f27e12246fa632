/*
 * CPU spent per request at a low request rate (one request per
 * millisecond), on the socket path and on the shared-memory path with and
 * without spinning: the cost of spinning when the peer does not answer
 * within the spin budget. Server and client run in this one process (the
 * server's connection thread and the main thread), so getrusage counts
 * both sides.
 *
 * Build: cc -O2 -pthread -Icsrc bench/shm_cpu.c csrc/ipc*.c -o bench_shm_cpu
 * Usage: bench_shm_cpu [seconds per case, default 2]
 */
#define _GNU_SOURCE 1
#include "ipc.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void echo(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    (void)user_data;
    if (request)
        ipc_call_respond(call, request, size, NULL);
}

static double cpu_seconds(void)
{
    struct rusage u;

    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static int run(const char *label, int shm, int spin_us, int seconds)
{
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server = NULL;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    char name[64];
    int requests = seconds * 1000, i;
    struct timespec pause = {0, 1000000};
    double cpu0;

    snprintf(name, sizeof name, "shm-cpu-%ld-%d-%d", (long)getpid(), shm, spin_us);
    ipc_server_options_init(&so);
    so.shm = shm;
    so.shm_spin_us = spin_us;
    ipc_client_options_init(&co);
    co.shm = shm;
    co.shm_spin_us = spin_us;
    if (ipc_server_open(&server, name, &so, echo, NULL, &err) != IPC_OK ||
        ipc_client_open(&client, name, &co, 5000, &err) != IPC_OK) {
        fprintf(stderr, "%s: %s\n", label, err.message ? err.message : "failed");
        return 1;
    }
    cpu0 = cpu_seconds();
    for (i = 0; i < requests; i++) {
        const uint8_t *resp;
        size_t size;

        if (ipc_client_request(client, "0123456789abcdef", 16, &resp, &size, 5000, &err) != IPC_OK)
            return 1;
        nanosleep(&pause, NULL);
    }
    printf("| %s | %.1f µs |\n", label, (cpu_seconds() - cpu0) * 1e6 / requests);
    ipc_client_close(client);
    ipc_server_stop(server);
    return 0;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 2;

    printf("| 16 B, one request per ms | CPU per request (both sides) |\n|---|---|\n");
    return run("socket path", 0, 0, seconds) || run("shared memory, spin 0", 1, 0, seconds) ||
           run("shared memory, default spin", 1, IPC_DEFAULT_SPIN_US, seconds);
}
