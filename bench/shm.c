/*
 * C to C through ipcfast with the shared-memory data path
 * (docs/protocol.md section 11): bench/c2c.c with `shm` set on both sides,
 * same measurement driver (bench/bench_driver.h), so the difference to c2c
 * is the data path alone and the difference to floor.c the whole core.
 *
 * Environment: IPCFAST_BENCH_SPIN_US sets both sides' spin budget in
 * microseconds (default IPC_DEFAULT_SPIN_US; 0: never spin);
 * IPCFAST_BENCH_SLOT the slot size in bytes (default 2 MiB, so that every
 * size in bench/shm_table.py up to 1 MiB goes through the region).
 *
 * Build: cc -O2 -pthread -Icsrc bench/shm.c csrc/ipc*.c -o bench_shm
 * Usage: see bench/bench_driver.h (serve / lat / rate modes).
 */
#include "bench_driver.h"

#include "ipc.h"

static int env_int(const char *name, int fallback)
{
    const char *value = getenv(name);

    return value && *value ? atoi(value) : fallback;
}

static void echo(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    (void)user_data;
    if (request == NULL) /* the client disconnected */
        return;
    ipc_call_respond(call, request, size, NULL);
}

static int shm_serve(const char *addr)
{
    ipc_server_options options;
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};

    ipc_server_options_init(&options);
    options.max_clients = 64;
    options.shm = 1;
    options.shm_spin_us = env_int("IPCFAST_BENCH_SPIN_US", IPC_DEFAULT_SPIN_US);
    if (ipc_server_open(&server, addr, &options, echo, NULL, &err) != IPC_OK) {
        fprintf(stderr, "shm: ipc_server_open: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return 1;
    }
    printf("READY %s\n", ipc_server_address(server));
    fflush(stdout);
    bench_wait_stdin_eof();
    ipc_server_stop(server);
    return 0;
}

static void *shm_connect(const char *addr)
{
    ipc_client_options options;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};

    ipc_client_options_init(&options);
    options.shm = 1;
    options.shm_spin_us = env_int("IPCFAST_BENCH_SPIN_US", IPC_DEFAULT_SPIN_US);
    options.shm_slot_size = (uint32_t)env_int("IPCFAST_BENCH_SLOT", 2 * 1024 * 1024);
    if (ipc_client_open(&client, addr, &options, 10000, &err) != IPC_OK) {
        fprintf(stderr, "shm: ipc_client_open: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return NULL;
    }
    if (!ipc_client_uses_shm(client)) {
        fprintf(stderr, "shm: the server declined the shared-memory path\n");
        ipc_client_close(client);
        return NULL;
    }
    return client;
}

static int shm_roundtrip(void *client, uint8_t *req, size_t n)
{
    const uint8_t *resp;
    size_t size;
    ipc_error err = {0, 0, NULL};

    if (ipc_client_request(client, req, n, &resp, &size, -1, &err) != IPC_OK) {
        fprintf(stderr, "shm: ipc_client_request: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return -1;
    }
    if (size != n) {
        fprintf(stderr, "shm: bad echo (%lu bytes for %lu)\n", (unsigned long)size,
                (unsigned long)n);
        return -1;
    }
    return 0;
}

static void shm_close(void *client)
{
    ipc_client_close(client);
}

int main(int argc, char **argv)
{
    static const struct bench_ops ops = {shm_serve, shm_connect, shm_roundtrip, shm_close};

    return bench_main(argc, argv, &ops);
}
