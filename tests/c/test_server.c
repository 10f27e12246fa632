/*
 * C tests of the server: options, open/stop, slots and listeners, busy, stop with
 * clients, disconnect notifications, open/stop cycles.
 */
#include "t_harness.h"

void test_options_and_nulls(void)
{
    ipc_server_options so;
    ipc_client_options co;
    ipc_error err = {0, 0, NULL};
    memset(&so, 0x77, sizeof so);
    ipc_server_options_init(&so);
    CHECK(so.max_clients == 32);
    CHECK(so.listeners == 1);
    CHECK(so.max_message == IPC_DEFAULT_MAX_MESSAGE);
    CHECK(so.access == IPC_ACCESS_USER);
    CHECK(memcmp(so.handshake, DEFAULT_HS, 8) == 0);
    CHECK(so.version == 1);
    CHECK(so.handshake_timeout_ms == 0 || so.handshake_timeout_ms == 5000);
    memset(&co, 0x77, sizeof co);
    ipc_client_options_init(&co);
    CHECK(co.max_message == IPC_DEFAULT_MAX_MESSAGE);
    CHECK(memcmp(co.handshake, DEFAULT_HS, 8) == 0);
    CHECK(co.version == 1);
    /* NULL-tolerant calls */
    ipc_server_stop(NULL);
    ipc_client_close(NULL);
    ipc_error_clear(NULL);
    ipc_error_clear(&err);
    CHECK(err.code == IPC_OK && err.message == NULL);
}

void test_server_open_stop(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_error err = {0, 0, NULL};
    const char *addr;
    ctx_init(&ctx);
    make_name(name, sizeof name, "openstop");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        char path[512];
        addr = ipc_server_address(server);
        CHECK(addr != NULL && strstr(addr, name) != NULL);
        snprintf(path, sizeof path, "%s", addr ? addr : "");
#ifndef _WIN32
        {
            struct stat st;
            CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode));
            CHECK(stat(path, &st) == 0 && (st.st_mode & 0077) == 0);
        }
#endif
        ipc_server_stop(server);
#ifndef _WIN32
        {
            struct stat st;
            CHECK(stat(path, &st) != 0); /* the socket is removed */
        }
#endif
    }
    /* bad arguments */
    server = NULL;
    CHECK_RC(ipc_server_open(&server, "", NULL, cmd_handler, &ctx, &err), IPC_E_INVALID, &err);
    CHECK(server == NULL);
    ipc_error_clear(&err);
    CHECK_RC(ipc_server_open(&server, name, NULL, NULL, &ctx, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    ctx_free(&ctx);
}

void test_round_trips(void)
{
    static const size_t sizes[] = {0, 1, 2, 100 * 1024, 4 * 1024 * 1024};
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    size_t i, j;
    int pass;
    ctx_init(&ctx);
    for (pass = 0; pass < 2; pass++) {
        /* pass 0: xor_handler (ipc_call_buffer); pass 1: cmd_handler echo */
        make_name(name, sizeof name, pass ? "echo" : "xor");
        server = open_server(name, NULL, pass ? cmd_handler : xor_handler, &ctx);
        if (!server)
            continue;
        client = open_client(name, NULL, 5000);
        if (client) {
            CHECK(ipc_client_version(client) == 1);
            for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                size_t size = sizes[i];
                unsigned char *req = (unsigned char *)malloc(size + 1);
                unsigned char *expected = (unsigned char *)malloc(size + 1);
                fill_random(req, size, (unsigned)(size + 17));
                if (size)
                    req[0] = 0xEE; /* never a cmd_handler command */
                for (j = 0; j < size; j++)
                    expected[j] = pass ? req[j] : (req[j] ^ 0x5C);
                if (!expect_response(client, req, size, expected, size))
                    note("      round trip of %lu bytes failed (pass %d)", (unsigned long)size,
                         pass);
                free(req);
                free(expected);
            }
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

void test_concurrent_clients(void)
{
    enum { N = 8 };
    int variant;
    for (variant = 0; variant < 2; variant++) {
        char name[96];
        srv_ctx ctx;
        ipc_server_t *server;
        ipc_server_options so;
        worker_arg args[N];
        t_thread *threads[N];
        int i;
        ctx_init(&ctx);
        make_name(name, sizeof name, "conc");
        ipc_server_options_init(&so);
        so.listeners = variant ? 4 : 1; /* parallel accept */
        server = open_server(name, &so, xor_handler, &ctx);
        if (server) {
            for (i = 0; i < N; i++) {
                args[i].name = name;
                args[i].index = i + 1;
                args[i].iterations = 40;
                args[i].ok_count = 0;
                threads[i] = t_thread_start(worker_main, &args[i]);
                CHECK(threads[i] != NULL);
            }
            for (i = 0; i < N; i++) {
                t_thread_join(threads[i]);
                CHECK(args[i].ok_count == args[i].iterations);
            }
            CHECK(ctx_get(&ctx, &ctx.requests) == N * 40);
            CHECK(ctx_wait_for(&ctx, &ctx.disconnects, N, 3000));
            ipc_server_stop(server);
        }
        ctx_free(&ctx);
    }
}

void test_bad_options(void)
{
    char name[96];
    ipc_server_options so;
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};
    make_name(name, sizeof name, "badopt");
    ipc_server_options_init(&so);
    so.listeners = 4;
    so.max_clients = 2;
    CHECK_RC(ipc_server_open(&server, name, &so, cmd_handler, NULL, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    ipc_server_options_init(&so);
    so.handshake[0] = 0x01;
    CHECK_RC(ipc_server_open(&server, name, &so, cmd_handler, NULL, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    ipc_server_options_init(&so);
    so.access = 7;
    CHECK_RC(ipc_server_open(&server, name, &so, cmd_handler, NULL, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    CHECK(server == NULL);
}

typedef struct race_arg {
    const char *name;
    srv_ctx *ctx;
    int rc;
    ipc_server_t *server;
} race_arg;

static void race_main(void *param)
{
    race_arg *arg = (race_arg *)param;
    arg->rc = ipc_server_open(&arg->server, arg->name, NULL, cmd_handler, arg->ctx, NULL);
}

/* Servers starting at the same moment: exactly one wins the name. */
void test_racing_servers(void)
{
    enum { N = 4, ROUNDS = 8 };
    int round;
    srv_ctx ctx;
#if defined(_WIN32)
    if (t_under_wine()) {
        note("      skipped under wine: it does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE");
        return;
    }
#endif
    ctx_init(&ctx);
    for (round = 0; round < ROUNDS; round++) {
        char name[96];
        race_arg args[N];
        t_thread *threads[N];
        int i, winners = 0, in_use = 0;
        make_name(name, sizeof name, "race");
        for (i = 0; i < N; i++) {
            args[i].name = name;
            args[i].ctx = &ctx;
            args[i].rc = -1;
            args[i].server = NULL;
            threads[i] = t_thread_start(race_main, &args[i]);
        }
        for (i = 0; i < N; i++)
            t_thread_join(threads[i]);
        for (i = 0; i < N; i++) {
            if (args[i].rc == IPC_OK)
                winners++;
            if (args[i].rc == IPC_E_ADDRESS_IN_USE)
                in_use++;
        }
        if (!CHECK(winners == 1 && in_use == N - 1))
            note("      round %d: %d winners, %d address-in-use", round, winners, in_use);
        for (i = 0; i < N; i++) {
            if (args[i].server) {
                ipc_client_t *client = open_client(name, NULL, 5000);
                if (client) {
                    expect_text(client, "winner", "winner");
                    ipc_client_close(client);
                }
                ipc_server_stop(args[i].server);
            }
        }
    }
    ctx_free(&ctx);
}

void test_address_in_use(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *a, *b = NULL;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    ctx_init(&ctx);
    make_name(name, sizeof name, "inuse-addr");
    a = open_server(name, NULL, cmd_handler, &ctx);
    if (a) {
        CHECK_RC(ipc_server_open(&b, name, NULL, cmd_handler, &ctx, &err), IPC_E_ADDRESS_IN_USE,
                 &err);
        CHECK(b == NULL);
        CHECK(err.code == IPC_E_ADDRESS_IN_USE && err.message != NULL);
        ipc_error_clear(&err);
        /* the first server is untouched */
        client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "still mine", "still mine");
            ipc_client_close(client);
        }
        ipc_server_stop(a);
        /* the name is free again after stop */
        b = open_server(name, NULL, cmd_handler, &ctx);
        ipc_server_stop(b);
    }
    ctx_free(&ctx);
}

typedef struct queued_arg {
    const char *name;
    int rc;
    long long done_at;
} queued_arg;

static void queued_main(void *param)
{
    queued_arg *arg = (queued_arg *)param;
    ipc_client_t *client = NULL;
    arg->rc = ipc_client_open(&client, arg->name, NULL, 10000, NULL);
    arg->done_at = t_now_ms();
    if (client) {
        expect_text(client, "three", "three");
        ipc_client_close(client);
    }
}

/* Which server a client accepts: the default takes our own server; an
 * explicit uid must match (POSIX; Windows refuses uids as meaningless). */
void test_server_user(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client = NULL;
    ipc_client_options co;
    ipc_error err = {0, 0, NULL};
    ctx_init(&ctx);
    make_name(name, sizeof name, "who");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        CHECK(ipc_client_probe(name, NULL) == IPC_STATE_LISTENING);
        client = open_client(name, NULL, 3000); /* default: our own user */
        if (client) {
            expect_text(client, "mine", "mine");
            ipc_client_close(client);
        }
        ipc_client_options_init(&co);
        co.server_user = IPC_SERVER_USER_ANY;
        client = open_client(name, &co, 3000);
        if (client)
            ipc_client_close(client);
        co.server_user = IPC_SERVER_USER_UID;
#if defined(_WIN32)
        co.server_uid = 0;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_INVALID, &err);
        ipc_error_clear(&err);
#else
        co.server_uid = (uint32_t)geteuid();
        client = open_client(name, &co, 3000);
        if (client)
            ipc_client_close(client);
        co.server_uid = (uint32_t)geteuid() + 1;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_ACCESS_DENIED, &err);
        CHECK(err.message != NULL && strstr(err.message, "runs as") != NULL);
        ipc_error_clear(&err);
#endif
        CHECK(client == NULL);
        co.server_user = 7;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_INVALID, &err);
        ipc_error_clear(&err);
        ipc_server_stop(server);
    }
    CHECK(ipc_client_probe(name, NULL) == IPC_STATE_NOT_LISTENING);
    CHECK(ipc_client_probe("", NULL) == IPC_STATE_INVALID_PATH);
    ctx_free(&ctx);
}

void test_busy(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_t *first, *second = NULL;
    ipc_error err = {0, 0, NULL};
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "busy");
    ipc_server_options_init(&so);
    so.max_clients = 1;
    server = open_server(name, &so, cmd_handler, &ctx);
    first = server ? open_client(name, NULL, 5000) : NULL;
    if (first) {
        expect_text(first, "one", "one");
        t0 = t_now_ms();
        CHECK_RC(ipc_client_open(&second, name, NULL, 300, &err), IPC_E_BUSY, &err);
        CHECK_MS(t_now_ms() - t0, 250, 2000);
        CHECK(second == NULL);
        ipc_error_clear(&err);
        expect_text(first, "still one", "still one");
        ipc_client_close(first);
        second = open_client(name, NULL, 5000);
        if (second) {
            expect_text(second, "two", "two");
        }
        /* a client that waits long enough is served as soon as the slot frees */
        if (second) {
            queued_arg arg;
            t_thread *thread;
            arg.name = name;
            arg.rc = -1;
            arg.done_at = 0;
            thread = t_thread_start(queued_main, &arg);
            t_sleep_ms(300);
            t0 = t_now_ms();
            ipc_client_close(second);
            t_thread_join(thread);
            CHECK_RC(arg.rc, IPC_OK, NULL);
            CHECK_MS(arg.done_at - t0, 0, 1500);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* Stop with every slot taken and another client queued behind them. */
void test_stop_with_full_slots(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_t *first;
    queued_arg arg;
    t_thread *thread = NULL;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "fullstop");
    ipc_server_options_init(&so);
    so.max_clients = 1;
    server = open_server(name, &so, cmd_handler, &ctx);
    first = server ? open_client(name, NULL, 5000) : NULL;
    if (first) {
        expect_text(first, "in", "in");
        arg.name = name;
        arg.rc = -1;
        arg.done_at = 0;
        thread = t_thread_start(queued_main, &arg);
        t_sleep_ms(300);
        t0 = t_now_ms();
        ipc_server_stop(server);
        server = NULL;
        CHECK_MS(t_now_ms() - t0, 0, 2500);
        t_thread_join(thread);
        /* the queued client is refused (or finds no server), but not held */
        CHECK(arg.rc != IPC_OK);
        CHECK_MS(arg.done_at - t0, 0, 2500);
        {
            char *message = expect_failure(first, "out?", 4, 5000, IPC_E_CLOSED);
            free(message);
        }
        ipc_client_close(first);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

typedef struct inflight_arg {
    const char *name;
    const char *request;
    ipc_client_t *client;
    int rc;
    long long done_at;
    char response[16];
} inflight_arg;

static void inflight_main(void *param)
{
    inflight_arg *arg = (inflight_arg *)param;
    const uint8_t *resp;
    size_t resp_size = 0;
    arg->rc = ipc_client_request(arg->client, arg->request, strlen(arg->request), &resp, &resp_size,
                                 15000, NULL);
    arg->done_at = t_now_ms();
    if (arg->rc == IPC_OK && resp_size < sizeof arg->response)
        memcpy(arg->response, resp, resp_size + 1);
}

void test_stop_with_clients(void)
{
    static const char *const requests[] = {"sleep:400", "sleep:2500"};
    size_t k;
    for (k = 0; k < 2; k++) {
        char name[96];
        srv_ctx ctx;
        ipc_server_t *server;
        ipc_client_t *idle, *busy;
        inflight_arg arg;
        t_thread *thread;
        long long t0, t1;
        ctx_init(&ctx);
        make_name(name, sizeof name, "stop");
        server = open_server(name, NULL, cmd_handler, &ctx);
        idle = server ? open_client(name, NULL, 5000) : NULL;
        busy = server ? open_client(name, NULL, 5000) : NULL;
        if (idle && busy) {
            expect_text(idle, "hi", "hi");
            memset(&arg, 0, sizeof arg);
            arg.client = busy;
            arg.request = requests[k];
            arg.rc = -1;
            thread = t_thread_start(inflight_main, &arg);
            CHECK(ctx_wait_for(&ctx, &ctx.requests, 2, 5000));
            t_sleep_ms(100);
            t0 = t_now_ms();
            ipc_server_stop(server);
            server = NULL;
            t1 = t_now_ms();
            /* stop waits for the running handler, but not for long after it */
            CHECK_MS(t1 - t0, 0, k == 0 ? 2500 : 4500);
            t_thread_join(thread);
            if (k == 0) {
                /* the handler finished within the grace period: the response arrives
                 * (or at worst the connection is reported closed) */
                CHECK(arg.rc == IPC_OK || arg.rc == IPC_E_CLOSED);
                if (arg.rc == IPC_OK)
                    CHECK(strcmp(arg.response, "slept") == 0);
            } else {
                /* after the one-second grace period the client sees the connection closed */
                CHECK_RC(arg.rc, IPC_E_CLOSED, NULL);
                CHECK_MS(arg.done_at - t0, 0, 2200);
            }
            {
                char *message = expect_failure(idle, "anyone?", 7, 5000, IPC_E_CLOSED);
                free(message);
            }
        }
        ipc_client_close(idle);
        ipc_client_close(busy);
        ipc_server_stop(server);
        ctx_free(&ctx);
    }
}

void test_disconnect_notification(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    int i;
    ctx_init(&ctx);
    make_name(name, sizeof name, "disc");
    server = open_server(name, NULL, cmd_handler, &ctx);
    for (i = 0; server && i < 3; i++) {
        client = open_client(name, NULL, 5000);
        if (!client)
            break;
        if (i != 1)
            expect_text(client, "x", "x"); /* also a client that sent nothing */
        ipc_client_close(client);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, i + 1, 3000));
    }
    CHECK(ctx_get(&ctx, &ctx.bad_disconnect_args) == 0);
    ipc_server_stop(server);
    CHECK(ctx_get(&ctx, &ctx.disconnects) == 3);
    ctx_free(&ctx);
}

void test_open_stop_cycles(void)
{
    char name[96];
    srv_ctx ctx;
    int i, ok = 0;
    int fds_before, fds_after, threads_before, threads_after;
    long long t0 = t_now_ms();
    ctx_init(&ctx);
    make_name(name, sizeof name, "cycle");
    fds_before = COUNT_FDS();
    threads_before = COUNT_THREADS();
    for (i = 0; i < 200; i++) {
        ipc_server_t *server = open_server(name, NULL, cmd_handler, &ctx);
        if (!server)
            break;
        if (i % 25 == 0) {
            ipc_client_t *client = open_client(name, NULL, 5000);
            if (client) {
                expect_text(client, "cycle", "cycle");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
        ok++;
    }
    CHECK(ok == 200);
    note("      200 open/stop cycles in %lld ms", t_now_ms() - t0);
    fds_after = COUNT_FDS();
    threads_after = COUNT_THREADS();
    if (fds_before >= 0) {
        if (!CHECK(fds_after == fds_before))
            note("      descriptors: %d before, %d after", fds_before, fds_after);
        if (!CHECK(threads_after == threads_before))
            note("      threads: %d before, %d after", threads_before, threads_after);
    }
    ctx_free(&ctx);
}
