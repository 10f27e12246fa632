/*
 * ipc_client_call_into, the client's zero-copy receive (issue 15): the
 * response lands in the caller's buffer, read from the socket straight into
 * it or copied once from the shared slot. Both data paths, sizes around the
 * slot and the stream's buffer, a buffer too small (the response is kept,
 * the connection stays usable), handler failures, bad arguments, a closed
 * client, and calls mixed with ipc_client_call on one connection.
 */
#include "t_harness.h"

#if defined(__linux__) || defined(_WIN32)
#define INTO_SHM_HERE 1 /* the shared-memory path exists (memfd; a section) */
#else
#define INTO_SHM_HERE 0
#endif

#define INTO_SLOT 4096u
#define INTO_MAX (1024u * 1024u + 64u)
#define SENTINEL 0xA7

static ipc_client_t *open_into_client(const char *name, int shm)
{
    ipc_client_options co;

    ipc_client_options_init(&co);
    co.shm = shm;
    co.shm_slot_size = INTO_SLOT;
    return open_client(name, &co, 5000);
}

static ipc_server_t *open_into_server(const char *name, ipc_handler_fn handler, srv_ctx *ctx)
{
    ipc_server_options so;

    ipc_server_options_init(&so);
    so.shm = 1;
    return open_server(name, &so, handler, ctx);
}

/* One call_into whose response must be req ^ 0x5C, in `out` (capacity
 * `capacity`), with the bytes after it untouched. */
static int expect_into(ipc_client_t *client, const unsigned char *req, size_t size,
                       unsigned char *out, size_t capacity)
{
    ipc_client_reply reply;
    int64_t n;
    size_t i;
    int ok = 1;

    memset(&reply, 0, sizeof reply);
    memset(out, SENTINEL, capacity);
    n = ipc_client_call_into(client, req, size, out, capacity, 5000, &reply);
    ok &= CHECK(n == (int64_t)size);
    if (n != (int64_t)size)
        note("      size %lu: got %lld (%s)", (unsigned long)size, (long long)n,
             reply.error.message ? reply.error.message : "");
    ok &= CHECK(size == 0 || reply.data == (const char *)out);
    for (i = 0; ok && i < size; i++)
        ok &= CHECK(out[i] == (unsigned char)(req[i] ^ 0x5C));
    for (i = size; ok && i < capacity; i++)
        ok &= CHECK(out[i] == SENTINEL);
    ipc_error_clear(&reply.error);
    return ok;
}

static void round_trips_on(const char *name, int shm)
{
    static const size_t sizes[] = {0,    1,         16,     240,   241,     4095, 4096,
                                   4097, 65535,     65536,  65537, 70000,   16,   1 << 20,
                                   3,    INTO_SLOT, 200000, 0,     1 << 20, 5};
    unsigned char *req = (unsigned char *)malloc(INTO_MAX);
    unsigned char *out = (unsigned char *)malloc(INTO_MAX);
    ipc_client_t *client = open_into_client(name, shm);
    size_t i;

    if (client && req && out) {
        CHECK(ipc_client_uses_shm(client) == (shm && INTO_SHM_HERE));
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            fill_random(req, sizes[i], (unsigned)i + 11);
            /* exactly the size, then with room to spare */
            expect_into(client, req, sizes[i], out, sizes[i]);
            if (sizes[i] + 100 <= INTO_MAX)
                expect_into(client, req, sizes[i], out, sizes[i] + 100);
        }
        /* out may be the request's own buffer */
        fill_random(req, 70000, 5);
        memcpy(out, req, 70000);
        {
            ipc_client_reply reply;

            memset(&reply, 0, sizeof reply);
            CHECK(ipc_client_call_into(client, out, 70000, out, 70000, 5000, &reply) == 70000);
            for (i = 0; i < 70000; i++)
                if (!CHECK(out[i] == (unsigned char)(req[i] ^ 0x5C)))
                    break;
            ipc_error_clear(&reply.error);
        }
    }
    ipc_client_close(client);
    free(req);
    free(out);
}

void test_client_call_into(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;

    ctx_init(&ctx);
    make_name(name, sizeof name, "into");
    server = open_into_server(name, xor_handler, &ctx);
    if (server) {
        round_trips_on(name, 0);
        round_trips_on(name, 1);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* A response larger than the buffer: out untouched, the response kept in
 * reply->data, the connection usable. */
static void too_small_on(const char *name, int shm)
{
    static const size_t sizes[] = {10, 300, 5000, 100000};
    unsigned char out[64];
    char request[32];
    ipc_client_reply reply;
    ipc_client_t *client = open_into_client(name, shm);
    size_t i, k;
    int64_t n;

    memset(&reply, 0, sizeof reply);
    for (i = 0; client && i < sizeof sizes / sizeof sizes[0]; i++) {
        int len = snprintf(request, sizeof request, "big:%lu", (unsigned long)sizes[i]);
        size_t capacity = sizes[i] - 1 < sizeof out ? sizes[i] - 1 : sizeof out;

        memset(out, SENTINEL, sizeof out);
        n = ipc_client_call_into(client, request, (size_t)len, out, capacity, 5000, &reply);
        CHECK(n == (int64_t)sizes[i]);
        CHECK(reply.size == sizes[i] && reply.data && reply.data[sizes[i]] == 0);
        for (k = 0; reply.data && k < sizes[i]; k++)
            if (!CHECK(reply.data[k] == 'B'))
                break;
        for (k = 0; k < sizeof out; k++)
            if (!CHECK(out[k] == SENTINEL))
                break;
        CHECK(expect_text(client, "after", "after"));
    }
    /* a handler's failure: -IPC_E_REMOTE, the connection stays usable */
    n = ipc_client_call_into(client, "fail:nope", 9, out, sizeof out, 5000, &reply);
    CHECK(n == -IPC_E_REMOTE);
    CHECK(reply.error.message && strcmp(reply.error.message, "nope") == 0);
    ipc_error_clear(&reply.error);
    CHECK(ipc_client_call_into(client, "ok", 2, out, sizeof out, 5000, &reply) == 2);
    CHECK(memcmp(out, "ok", 2) == 0);
    /* a timeout closes the connection, as for ipc_client_call */
    CHECK(ipc_client_call_into(client, "sleep:400", 9, out, sizeof out, 50, &reply) ==
          -IPC_E_TIMEOUT);
    ipc_error_clear(&reply.error);
    CHECK(ipc_client_call_into(client, "ok", 2, out, sizeof out, 5000, &reply) == -IPC_E_CLOSED);
    ipc_error_clear(&reply.error);
    ipc_client_close(client);
}

void test_client_call_into_misuse(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_client_reply reply;
    unsigned char out[16];

    ctx_init(&ctx);
    make_name(name, sizeof name, "intomis");
    server = open_into_server(name, cmd_handler, &ctx);
    memset(&reply, 0, sizeof reply);
    CHECK(ipc_client_call_into(NULL, "x", 1, out, sizeof out, 100, &reply) == -IPC_E_INVALID);
    ipc_error_clear(&reply.error);
    if (server) {
        too_small_on(name, 0);
        too_small_on(name, 1);
        client = open_into_client(name, 1);
        CHECK(ipc_client_call_into(client, "x", 1, out, sizeof out, 100, NULL) == -IPC_E_INVALID);
        CHECK(ipc_client_call_into(client, NULL, 1, out, sizeof out, 100, &reply) ==
              -IPC_E_INVALID);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call_into(client, "x", 1, NULL, 4, 100, &reply) == -IPC_E_INVALID);
        CHECK(reply.error.message != NULL);
        ipc_error_clear(&reply.error);
        /* nothing was sent: the connection is fine; an empty response
         * needs no buffer at all */
        CHECK(ipc_client_call_into(client, "big:0", 5, NULL, 0, 5000, &reply) == 0);
        ipc_client_shutdown(client);
        CHECK(ipc_client_call_into(client, "x", 1, out, sizeof out, 100, &reply) == -IPC_E_CLOSED);
        ipc_error_clear(&reply.error);
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* call_into and call on one connection, sizes that leave parts of the next
 * packet in the stream's buffer or not: the stream stays in step. */
void test_client_call_into_mixed(void)
{
    static const size_t sizes[] = {100000, 16, 300000, 0, 5000, 1 << 20, 7, 65536};
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    unsigned char *req = (unsigned char *)malloc(INTO_MAX);
    unsigned char *out = (unsigned char *)malloc(INTO_MAX);
    unsigned char *want = (unsigned char *)malloc(INTO_MAX);
    int shm;
    size_t i, k;

    ctx_init(&ctx);
    make_name(name, sizeof name, "intomix");
    server = open_into_server(name, xor_handler, &ctx);
    for (shm = 0; server && req && out && want && shm < 2; shm++) {
        ipc_client_t *client = open_into_client(name, shm);

        for (i = 0; client && i < 3 * (sizeof sizes / sizeof sizes[0]); i++) {
            size_t size = sizes[i % (sizeof sizes / sizeof sizes[0])];

            fill_random(req, size, (unsigned)i + 3);
            if (i % 2) {
                expect_into(client, req, size, out, INTO_MAX);
            } else {
                for (k = 0; k < size; k++)
                    want[k] = (unsigned char)(req[k] ^ 0x5C);
                expect_response(client, req, size, want, size);
            }
        }
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    free(req);
    free(out);
    free(want);
    ctx_free(&ctx);
}

/* Messages larger than both the slot and the socket's buffer, each way, on
 * the shared-memory path: the announcement in the slot comes before the
 * packet on the socket, or writer and reader wait for each other (a 2 MiB
 * request hung until its timeout before). */
void test_shm_messages_beyond_the_socket_buffer(void)
{
    static const size_t sizes[] = {8u << 20, 16, 5u << 20};
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client = NULL;
    unsigned char *req = (unsigned char *)malloc(8u << 20);
    unsigned char *out = (unsigned char *)malloc(8u << 20);
    size_t i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "intobig");
    server = open_into_server(name, xor_handler, &ctx);
    if (server)
        client = open_into_client(name, 1);
    for (i = 0; client && req && out && i < sizeof sizes / sizeof sizes[0]; i++) {
        fill_random(req, sizes[i], (unsigned)i + 77);
        if (!expect_into(client, req, sizes[i], out, sizes[i]))
            note("      (size %lu)", (unsigned long)sizes[i]);
    }
    ipc_client_close(client);
    ipc_server_stop(server);
    free(req);
    free(out);
    ctx_free(&ctx);
}
