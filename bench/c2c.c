/*
 * C to C through ipcfast's public C API (csrc/ipc.h): a server opened with
 * ipc_server_open whose C handler echoes with ipc_call_respond, and clients
 * doing ipc_client_open + ipc_client_request. Same measurement driver as
 * bench/floor.c, so the difference between the two is the C core's cost.
 *
 * Build (every .c file of csrc/): cc -O2 -pthread -Icsrc bench/c2c.c csrc/ipc*.c -o c2c
 * Usage: see bench/bench_driver.h (serve / lat / rate modes).
 */
#include "bench_driver.h"

#include "ipc.h"

static void echo(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    (void)user_data;
    if (request == NULL)   /* the client disconnected */
        return;
    ipc_call_respond(call, request, size, NULL);
}

static int c2c_serve(const char *addr)
{
    ipc_server_options options;
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};

    ipc_server_options_init(&options);
    options.max_clients = 64;
    if (ipc_server_open(&server, addr, &options, echo, NULL, &err) != IPC_OK) {
        fprintf(stderr, "c2c: ipc_server_open: %s: %s\n", ipc_result_name(err.code),
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

static void *c2c_connect(const char *addr)
{
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};

    if (ipc_client_open(&client, addr, NULL, 10000, &err) != IPC_OK) {
        fprintf(stderr, "c2c: ipc_client_open: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return NULL;
    }
    return client;
}

static int c2c_roundtrip(void *client, uint8_t *req, size_t n)
{
    const uint8_t *resp;
    size_t size;
    ipc_error err = {0, 0, NULL};

    if (ipc_client_request(client, req, n, &resp, &size, -1, &err) != IPC_OK) {
        fprintf(stderr, "c2c: ipc_client_request: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return -1;
    }
    if (size != n) {
        fprintf(stderr, "c2c: bad echo (%lu bytes for %lu)\n", (unsigned long)size,
                (unsigned long)n);
        return -1;
    }
    return 0;
}

static void c2c_close(void *client)
{
    ipc_client_close(client);
}

int main(int argc, char **argv)
{
    static const struct bench_ops ops = {c2c_serve, c2c_connect, c2c_roundtrip, c2c_close};

    return bench_main(argc, argv, &ops);
}
