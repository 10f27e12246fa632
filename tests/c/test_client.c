/*
 * C tests of the client: remote errors, pipelining, one request at a time, not found,
 * connect retries, timeouts, connect cycles.
 */
#include "t_harness.h"

void test_remote_errors(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    char *message;
    ctx_init(&ctx);
    make_name(name, sizeof name, "remote");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        message = expect_failure(client, "fail:the disk is on fire", 24, 5000, IPC_E_REMOTE);
        CHECK(message != NULL && strstr(message, "the disk is on fire") != NULL);
        free(message);
        expect_text(client, "still there?", "still there?");

        message = expect_failure(client, "noreply", 7, 5000, IPC_E_REMOTE);
        free(message);
        expect_text(client, "after noreply", "after noreply");

        expect_text(client, "twice", "one");
        CHECK(ctx_wait_equal(&ctx, &ctx.twice_rc, IPC_E_INVALID, 3000));
        /* no stray second answer in the stream */
        expect_text(client, "after twice", "after twice");

        /* an empty failure message still arrives as IPC_E_REMOTE */
        message = expect_failure(client, "fail:", 5, 5000, IPC_E_REMOTE);
        CHECK(message != NULL);
        free(message);
        expect_text(client, "", "");
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

void test_pipelining_and_connection(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    const uint8_t *resp;
    size_t resp_size;
    ctx_init(&ctx);
    make_name(name, sizeof name, "pipe");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        CHECK_RC(ipc_client_write(client, "first", 5, 5000, &err), IPC_OK, &err);
        CHECK_RC(ipc_client_write(client, "second", 6, 5000, &err), IPC_OK, &err);
        CHECK_RC(ipc_client_write(client, "fail:third", 10, 5000, &err), IPC_OK, &err);
        CHECK_RC(ipc_client_write(client, "fourth", 6, 5000, &err), IPC_OK, &err);
        CHECK_RC(ipc_client_read(client, &resp, &resp_size, 5000, &err), IPC_OK, &err);
        CHECK(resp_size == 5 && memcmp(resp, "first", 5) == 0);
        CHECK_RC(ipc_client_read(client, &resp, &resp_size, 5000, &err), IPC_OK, &err);
        CHECK(resp_size == 6 && memcmp(resp, "second", 6) == 0);
        CHECK_RC(ipc_client_read(client, &resp, &resp_size, 5000, &err), IPC_E_REMOTE, &err);
        CHECK(err.message != NULL && strstr(err.message, "third") != NULL);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_read(client, &resp, &resp_size, 5000, &err), IPC_OK, &err);
        CHECK(resp_size == 6 && memcmp(resp, "fourth", 6) == 0);
        /* connection ids: a number below max_clients */
        CHECK_RC(ipc_client_request(client, "conn", 4, &resp, &resp_size, 5000, &err), IPC_OK,
                 &err);
        CHECK(resp_size >= 1 && atoi((const char *)resp) < 32);
        ipc_error_clear(&err);
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

typedef struct inuse_arg {
    ipc_client_t *client;
    int rc;
} inuse_arg;

static void inuse_main(void *param)
{
    inuse_arg *arg = (inuse_arg *)param;
    const uint8_t *resp;
    size_t resp_size;
    arg->rc = ipc_client_request(arg->client, "sleep:600", 9, &resp, &resp_size, 10000, NULL);
}

void test_client_in_use(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    const uint8_t *resp;
    size_t resp_size;
    ctx_init(&ctx);
    make_name(name, sizeof name, "inuse");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        inuse_arg arg;
        t_thread *thread;
        arg.client = client;
        arg.rc = -1;
        thread = t_thread_start(inuse_main, &arg);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 5000));
        CHECK_RC(ipc_client_request(client, "x", 1, &resp, &resp_size, 5000, &err), IPC_E_IN_USE,
                 &err);
        ipc_error_clear(&err);
        t_thread_join(thread);
        CHECK_RC(arg.rc, IPC_OK, NULL);
        expect_text(client, "after", "after"); /* the connection was not disturbed */
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

void test_name_too_long(void)
{
    char name[400];
    ipc_server_t *server = NULL;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    memset(name, 'n', 399);
    name[399] = 0;
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, NULL, &err), IPC_E_NAME_TOO_LONG,
             &err);
    CHECK(server == NULL);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 200, &err), IPC_E_NAME_TOO_LONG, &err);
    CHECK(client == NULL);
    ipc_error_clear(&err);
}

/* ipc_call_fail with a message above 64 KiB (or above 4 GiB, whose length
 * a 32-bit cast would wrap): the ERROR packet carries the first 64 KiB of
 * the text, and the stream stays in step. */
static void huge_fail_handler(void *user, ipc_call *call, const uint8_t *request, size_t size)
{
    static char text[70000];
    (void)user;
    if (!request)
        return;
    memset(text, 'x', sizeof text);
    memcpy(text, "head of a long", 14);
    if (size == 4 && memcmp(request, "long", 4) == 0) {
        ipc_call_fail(call, text, sizeof text, NULL);
    } else if (size == 4 && memcmp(request, "huge", 4) == 0 && sizeof(size_t) > 4) {
        /* Only the first 64 KiB may be read: the rest of this "message"
         * does not exist, and reading it would be caught by ASan. */
        ipc_call_fail(call, text, (size_t)0xFFFFFFFFu + 6u, NULL);
    } else {
        ipc_call_respond(call, request, size, NULL);
    }
}

void test_fail_message_bounds(void)
{
    char name[96];
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    const uint8_t *response;
    size_t response_size;
    int round;
    make_name(name, sizeof name, "failbound");
    ipc_server_options_init(&so);
    if (!CHECK_RC(ipc_server_open(&server, name, &so, huge_fail_handler, NULL, &err), IPC_OK,
                  &err)) {
        ipc_error_clear(&err);
        return;
    }
    client = open_client(name, NULL, 5000);
    for (round = 0; client && round < 2; round++) {
        const char *request = round == 0 ? "long" : "huge";
        CHECK_RC(ipc_client_request(client, request, 4, &response, &response_size, 5000, &err),
                 IPC_E_REMOTE, &err);
        CHECK(err.message != NULL && strlen(err.message) == 64u * 1024u);
        CHECK(err.message != NULL && strncmp(err.message, "head of a long", 14) == 0);
        ipc_error_clear(&err);
        expect_text(client, "in step", "in step");
    }
    ipc_client_close(client);
    ipc_server_stop(server);
}

/* A message above IPC__STREAM_KEEP_CAPACITY (8 MiB) frees its stream
 * buffer once consumed; the next read on both sides starts from a NULL
 * buffer and must not form NULL + 0 (undefined in C; clang's
 * -fsanitize=pointer-overflow traps on it: tests/test_c_clang.py). */
void test_big_then_small(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    size_t size = 9u * 1024u * 1024u;
    uint8_t *data;
    int round;
    ctx_init(&ctx);
    make_name(name, sizeof name, "bigsmall");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    data = (uint8_t *)malloc(size);
    if (client && CHECK(data != NULL)) {
        memset(data, 0x11, size);
        data[0] = 0xEE; /* echoed as is */
        for (round = 0; round < 2; round++) {
            expect_response(client, data, size, data, size); /* big both ways */
            expect_text(client, "small after big", "small after big");
        }
    }
    free(data);
    ipc_client_close(client);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

void test_not_found(void)
{
    char name[96];
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    long long t0;
    make_name(name, sizeof name, "missing");
    /* Nothing owns or is starting under the name: answered at once. */
    t0 = t_now_ms();
    CHECK_RC(ipc_client_open(&client, name, NULL, 3000, &err), IPC_E_NOT_FOUND, &err);
    CHECK_MS(t_now_ms() - t0, 0, IPC_NOT_FOUND_GRACE_MS + 500);
    CHECK(client == NULL);
    CHECK(err.message != NULL);
    ipc_error_clear(&err);
    CHECK(ipc_client_probe(name, NULL) == IPC_STATE_NOT_LISTENING);
    /* Asked to wait, the client spends its budget. */
    {
        ipc_client_options co;
        ipc_client_options_init(&co);
        co.wait_if_not_found = 1;
        t0 = t_now_ms();
        CHECK_RC(ipc_client_open(&client, name, &co, 300, &err), IPC_E_NOT_FOUND, &err);
        CHECK_MS(t_now_ms() - t0, 250, 1500);
        CHECK(client == NULL);
        ipc_error_clear(&err);
    }
    t0 = t_now_ms();
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_NOT_FOUND, &err);
    CHECK_MS(t_now_ms() - t0, 0, 500);
    ipc_error_clear(&err);
}

typedef struct late_server_arg {
    const char *name;
    srv_ctx *ctx;
    ipc_server_t *server;
} late_server_arg;

static void late_server_main(void *param)
{
    late_server_arg *arg = (late_server_arg *)param;
    t_sleep_ms(300);
    arg->server = open_server(arg->name, NULL, cmd_handler, arg->ctx);
}

void test_connect_retries_until_server_starts(void)
{
    char name[96];
    srv_ctx ctx;
    late_server_arg arg;
    t_thread *thread;
    ipc_client_t *client;
    ctx_init(&ctx);
    make_name(name, sizeof name, "late");
    arg.name = name;
    arg.ctx = &ctx;
    arg.server = NULL;
    thread = t_thread_start(late_server_main, &arg);
    client = open_client_waiting(name, 5000);
    if (client) {
        expect_text(client, "made it", "made it");
        ipc_client_close(client);
    }
    t_thread_join(thread);
    ipc_server_stop(arg.server);
    ctx_free(&ctx);
}

void test_timeouts(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    long long t0;
    char *message;
    ctx_init(&ctx);
    make_name(name, sizeof name, "timeout");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        t0 = t_now_ms();
        message = expect_failure(client, "sleep:1500", 10, 200, IPC_E_TIMEOUT);
        CHECK_MS(t_now_ms() - t0, 150, 1200);
        free(message);
        t0 = t_now_ms();
        message = expect_failure(client, "x", 1, 5000, IPC_E_CLOSED);
        CHECK_MS(t_now_ms() - t0, 0, 500);
        free(message);
        ipc_client_close(client);
        /* the server is fine, and a client with no timeout waits */
        client = open_client(name, NULL, 5000);
        if (client) {
            const uint8_t *resp;
            size_t resp_size;
            ipc_error err = {0, 0, NULL};
            CHECK_RC(ipc_client_request(client, "sleep:300", 9, &resp, &resp_size, -1, &err),
                     IPC_OK, &err);
            ipc_error_clear(&err);
            ipc_client_close(client);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* A write that the server does not take (its handler is busy and the
 * request is larger than the socket buffers) times out too. */
void test_write_timeout(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    size_t big = 16 * 1024 * 1024;
    unsigned char *data;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "wtimeout");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    data = (unsigned char *)calloc(1, big);
    if (client && data) {
        CHECK_RC(ipc_client_write(client, "sleep:1500", 10, 5000, &err), IPC_OK, &err);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 5000));
        t0 = t_now_ms();
        CHECK_RC(ipc_client_write(client, data, big, 300, &err), IPC_E_TIMEOUT, &err);
        CHECK_MS(t_now_ms() - t0, 250, 1400);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_write(client, "x", 1, 300, &err), IPC_E_CLOSED, &err);
        ipc_error_clear(&err);
    }
    free(data);
    ipc_client_close(client);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* Many short connections: every one is served and reported, and nothing
 * (threads, descriptors) accumulates. */
void test_connect_cycles(void)
{
    enum { CYCLES = 1000 };
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    int i, ok = 0;
    long long t0 = t_now_ms();
    ctx_init(&ctx);
    make_name(name, sizeof name, "conncycle");
    ipc_server_options_init(&so);
    so.max_clients = 4;
    server = open_server(name, &so, cmd_handler, &ctx);
    for (i = 0; server && i < CYCLES; i++) {
        ipc_client_t *client = NULL;
        ipc_error err = {0, 0, NULL};
        int rc = ipc_client_open(&client, name, NULL, 10000, &err);
        if (rc != IPC_OK) {
            CHECK_RC(rc, IPC_OK, &err);
            ipc_error_clear(&err);
            break;
        }
        if (i % 2 == 0) {
            const uint8_t *resp;
            size_t resp_size;
            if (ipc_client_request(client, "c", 1, &resp, &resp_size, 5000, &err) == IPC_OK &&
                resp_size == 1 && resp[0] == 'c')
                ok++;
            ipc_error_clear(&err);
        } else {
            ok++;
        }
        ipc_client_close(client);
    }
    CHECK(ok == CYCLES);
    CHECK(ctx_wait_for(&ctx, &ctx.disconnects, CYCLES, 5000));
    note("      %d connect/request/close cycles in %lld ms", CYCLES, t_now_ms() - t0);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

typedef struct call_arg {
    ipc_client_t *client;
    int64_t rc;
    ipc_client_reply reply;
} call_arg;

static void call_main(void *param)
{
    call_arg *arg = (call_arg *)param;
    arg->rc = ipc_client_call(arg->client, "sleep:1500", 10, 20000, &arg->reply);
}

/* ipc_client_shutdown / ipc_client_close from another thread end a call in
 * progress at once (IPC_E_CLOSED) and wait for it to leave before closing. */
void test_client_shutdown_during_call(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    int round;
    ctx_init(&ctx);
    make_name(name, sizeof name, "shut");
    server = open_server(name, NULL, cmd_handler, &ctx);
    for (round = 0; server && round < 2; round++) {
        ipc_client_t *client = open_client(name, NULL, 5000);
        call_arg arg;
        t_thread *thread;
        long long started;
        if (!client)
            break;
        memset(&arg, 0, sizeof arg);
        arg.client = client;
        arg.rc = 1;
        thread = t_thread_start(call_main, &arg);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, round + 1, 5000));
        t_sleep_ms(50);
        started = t_now_ms();
        if (round == 0) {
            ipc_error err = {0, 0, NULL};
            const uint8_t *resp;
            size_t resp_size;
            ipc_client_shutdown(client);
            CHECK(t_now_ms() - started < 2000);
            t_thread_join(thread);
            CHECK_RC(ipc_client_request(client, "x", 1, &resp, &resp_size, 1000, &err),
                     IPC_E_CLOSED, &err);
            ipc_error_clear(&err);
            ipc_client_shutdown(client); /* idempotent */
            ipc_client_close(client);
        } else {
            ipc_client_close(client); /* frees once the call has left */
            CHECK(t_now_ms() - started < 2000);
            t_thread_join(thread);
        }
        CHECK(arg.rc == -IPC_E_CLOSED);
        CHECK(arg.reply.error.message != NULL &&
              strstr(arg.reply.error.message, "another thread") != NULL);
        ipc_error_clear(&arg.reply.error);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

typedef struct hook_state {
    int calls;
    int stop_at;             /* nonzero: interrupt on this call */
    ipc_client_t *shut_down; /* non-NULL: shut this client down from the hook */
} hook_state;

static int count_hook(void *user_data)
{
    hook_state *state = (hook_state *)user_data;
    state->calls++;
    if (state->shut_down) {
        /* What a signal handler closing its client does: must not wait for
         * the very call that runs this hook. */
        ipc_client_shutdown(state->shut_down);
        state->shut_down = NULL;
        return 0;
    }
    return state->stop_at && state->calls >= state->stop_at;
}

/* The interrupt hook runs while a call waits: nonzero ends the call with
 * IPC_E_INTERRUPTED and abandons the connection; zero lets it finish. */
void test_client_interrupt_hook(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_client_options co;
    hook_state state = {0, 0, NULL};
    ipc_error err = {0, 0, NULL};
    const uint8_t *resp;
    size_t resp_size;
    ctx_init(&ctx);
    make_name(name, sizeof name, "hook");
    server = open_server(name, NULL, cmd_handler, &ctx);
    ipc_client_options_init(&co);
    co.interrupt_check = count_hook;
    co.interrupt_data = &state;
    client = server ? open_client(name, &co, 5000) : NULL;
    if (client) {
        long long started;
        /* No wait, no hook. */
        expect_text(client, "quick", "quick");
        /* A hook that says "go on": the call completes within its deadline. */
        state.calls = 0;
        CHECK_RC(ipc_client_request(client, "sleep:300", 9, &resp, &resp_size, 5000, &err), IPC_OK,
                 &err);
        CHECK(state.calls >= 3);
        /* One that says "stop": IPC_E_INTERRUPTED, then the connection is gone. */
        state.calls = 0;
        state.stop_at = 3;
        started = t_now_ms();
        CHECK_RC(ipc_client_request(client, "sleep:1000", 10, &resp, &resp_size, 20000, &err),
                 IPC_E_INTERRUPTED, &err);
        CHECK(t_now_ms() - started < 2000);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_request(client, "x", 1, &resp, &resp_size, 1000, &err), IPC_E_CLOSED,
                 &err);
        CHECK(err.message != NULL && strstr(err.message, "interrupted") != NULL);
        ipc_error_clear(&err);
        ipc_client_close(client);
        /* A shutdown from inside the hook ends the call once the hook returns. */
        state.calls = 0;
        state.stop_at = 0;
        client = open_client(name, &co, 5000);
        state.shut_down = client;
        started = t_now_ms();
        if (client) {
            CHECK_RC(ipc_client_request(client, "sleep:1000", 10, &resp, &resp_size, 20000, &err),
                     IPC_E_CLOSED, &err);
            CHECK(t_now_ms() - started < 900);
            ipc_error_clear(&err);
            ipc_client_close(client);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* ipc_client_call: the size returned, small responses in inline_data. */
void test_client_call_reply(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_client_reply reply;
    ctx_init(&ctx);
    memset(&reply, 0, sizeof reply);
    make_name(name, sizeof name, "reply");
    server = open_server(name, NULL, cmd_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        CHECK(ipc_client_call(client, "big:4096", 8, 5000, &reply) == IPC_REPLY_INLINE_SIZE);
        CHECK(reply.data == reply.inline_data && reply.size == IPC_REPLY_INLINE_SIZE);
        CHECK(reply.data[IPC_REPLY_INLINE_SIZE] == 0);
        CHECK(ipc_client_call(client, "big:4097", 8, 5000, &reply) == 4097);
        CHECK(reply.data != reply.inline_data && reply.data[4097] == 0);
        CHECK(ipc_client_call(client, "fail:no", 7, 5000, &reply) == -IPC_E_REMOTE);
        CHECK(reply.error.message != NULL && strcmp(reply.error.message, "no") == 0);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(client, NULL, 3, 5000, &reply) == -IPC_E_INVALID);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(NULL, "x", 1, 5000, &reply) == -IPC_E_INVALID);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(client, "", 0, 5000, &reply) == 0);
        ipc_client_forget(client); /* what a fork child does; frees it */
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}
