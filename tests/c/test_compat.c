/*
 * C tests of the original API (ipc_server_start and its handler signature).
 */
#include "t_harness.h"

void test_legacy_api(void)
{
    char name[96];
    char out[256];
    char assembled[256];
    char longreq[64];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    int received;
    ipc_receive_status_t st;
    ctx_init(&ctx);
    make_name(name, sizeof name, "legacy");
    server = ipc_server_start(name, legacy_handler, &ctx);
    CHECK(server != NULL);
    client = server ? ipc_client_connect(name) : NULL;
    CHECK(!server || client != NULL);
    if (client) {
        CHECK(ipc_client_send(client, "hello"));
        memset(out, 0x55, sizeof out);
        received = -1;
        st = ipc_client_receive(client, out, (int)sizeof out, &received);
        CHECK(st == IPC_RECEIVE_STATUS_DONE);
        CHECK(strcmp(out, "echo:hello") == 0);
        CHECK(received == 11); /* with the NUL, as sent */
        CHECK(ctx_get(&ctx, &ctx.legacy_capacity) == (int)IPC_LEGACY_RESPONSE_CAPACITY);
        CHECK(ctx_get(&ctx, &ctx.legacy_zeroed) == 1);

        /* a response larger than the output buffer arrives in pieces */
        memset(longreq, 'z', 49);
        longreq[49] = 0;
        CHECK(ipc_client_send(client, longreq));
        assembled[0] = 0;
        {
            size_t total = 0;
            int rounds = 0;
            do {
                received = -1;
                st = ipc_client_receive(client, out, 16, &received);
                CHECK(received >= 0 && received <= 16);
                if (received > 0 && total + (size_t)received < sizeof assembled) {
                    memcpy(assembled + total, out, (size_t)received);
                    total += (size_t)received;
                }
                if (rounds == 0)
                    CHECK(st == IPC_RECEIVE_STATUS_MORE_DATA && received == 16);
                rounds++;
            } while (st == IPC_RECEIVE_STATUS_MORE_DATA && rounds < 20);
            CHECK(st == IPC_RECEIVE_STATUS_DONE);
            CHECK(rounds == 4); /* 55 bytes in 16-byte pieces */
            CHECK(total == 55);
            CHECK(total > 5 && memcmp(assembled, "echo:", 5) == 0 &&
                  memcmp(assembled + 5, longreq, 49) == 0 && assembled[54] == 0);
        }
        /* the next exchange is unaffected */
        CHECK(ipc_client_send(client, "again"));
        st = ipc_client_receive(client, out, (int)sizeof out, &received);
        CHECK(st == IPC_RECEIVE_STATUS_DONE && strcmp(out, "echo:again") == 0);
        ipc_client_disconnect(client);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 3000));
        CHECK(ctx_get(&ctx, &ctx.legacy_bad_disconnect) == 0);
    }

    /* legacy server, new-API client */
    if (server) {
        ipc_client_t *c = open_client(name, NULL, 5000);
        if (c) {
            expect_response(c, "abc", 4, "echo:abc", 9); /* with its NUL */
            expect_response(c, "xyz", 3, "echo:xyz", 9); /* no NUL sent: still a C string */
            {
                const uint8_t *r;
                size_t rs = 0;
                ipc_error e = {0, 0, NULL};
                CHECK_RC(ipc_client_request(c, "fill", 4, &r, &rs, 5000, &e), IPC_OK, &e);
                CHECK(rs == IPC_LEGACY_RESPONSE_CAPACITY);
                CHECK(rs > 1 && r[0] == 'x' && r[rs - 2] == 'x' && r[rs - 1] == 0);
                ipc_error_clear(&e);
            }
            ipc_client_close(c);
        }
    }
    ipc_server_stop(server);

    /* new-API server, legacy client */
    make_name(name, sizeof name, "legacy2");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? ipc_client_connect(name) : NULL;
    CHECK(!server || client != NULL);
    if (client) {
        CHECK(ipc_client_send(client, "ping"));
        st = ipc_client_receive(client, out, (int)sizeof out, &received);
        CHECK(st == IPC_RECEIVE_STATUS_DONE);
        CHECK(received == 5 && memcmp(out, "ping", 5) == 0);
        CHECK(ipc_client_send(client, "fail:nope"));
        st = ipc_client_receive(client, out, (int)sizeof out, &received);
        CHECK(st == IPC_RECEIVE_STATUS_ERROR);
        ipc_client_disconnect(client);
    }
    ipc_server_stop(server);

    /* failures */
    {
        long long t0 = t_now_ms();
        make_name(name, sizeof name, "legacy-missing");
        CHECK(ipc_client_connect(name) == NULL);
        CHECK_MS(t_now_ms() - t0, 1500, 4000);
        CHECK(ipc_server_start(NULL, legacy_handler, &ctx) == NULL);
        CHECK(ipc_server_start(name, NULL, &ctx) == NULL);
    }
    ctx_free(&ctx);
}
