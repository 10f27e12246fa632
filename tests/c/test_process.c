/*
 * C tests of across processes: clients and servers in a second process, killed
 * peers, stale names, and the two-process load test (also under wine).
 */
#include "t_harness.h"

/* ---- cross-process ------------------------------------------------------ */

int child_client(const char *name)
{
    ipc_client_t *client = open_client(name, NULL, 10000);
    int i;
    if (!client)
        return 1;
    for (i = 0; i < 20; i++) {
        size_t size = (size_t)(i * 37 + 1) * (size_t)(i % 5 == 0 ? 3000 : 1);
        unsigned char *req = (unsigned char *)malloc(size);
        fill_random(req, size, (unsigned)i + 1000u);
        req[0] = 0xEE;
        expect_response(client, req, size, req, size);
        free(req);
    }
    {
        char *message = expect_failure(client, "fail:child", 10, 5000, IPC_E_REMOTE);
        CHECK(message && strstr(message, "child"));
        free(message);
    }
    expect_text(client, "done", "done");
    ipc_client_close(client);
    return failures_so_far();
}

/* Sends a slow request and waits to be killed. */
int child_client_hang(const char *name)
{
    ipc_client_options co;
    ipc_client_t *client;
    ipc_client_options_init(&co);
    co.shm = getenv("IPCFAST_TEST_SHM") != NULL; /* test_shm.c: a killed peer */
    client = open_client(name, &co, 10000);
    ipc_error err = {0, 0, NULL};
    if (!client)
        return 1;
    CHECK_RC(ipc_client_write(client, "sleep:300", 9, 5000, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    t_sleep_ms(30000);
    ipc_client_close(client);
    return 1; /* should have been killed */
}

int child_server(const char *name, int hold, uint32_t max_clients)
{
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    long long deadline = t_now_ms() + 60000;
    ctx_init(&ctx);
    ipc_server_options_init(&so);
    if (max_clients)
        so.max_clients = max_clients;
    so.shm = getenv("IPCFAST_TEST_SHM") != NULL; /* test_shm.c: a killed peer */
    server = open_server(name, &so, cmd_handler, &ctx);
    if (!server)
        return 1;
    while (hold || !ctx_get(&ctx, &ctx.quit)) {
        if (t_now_ms() > deadline) {
            note("child server: nobody asked me to quit");
            break;
        }
        t_sleep_ms(10);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
    return failures_so_far();
}

void test_cross_process_client(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    t_proc *proc;
    ctx_init(&ctx);
    make_name(name, sizeof name, "xclient");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        proc = t_proc_spawn("--child-client", name);
        CHECK(proc != NULL);
        CHECK(t_proc_wait(proc, 60000) == 0);
        CHECK(ctx_get(&ctx, &ctx.requests) == 22);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 3000));
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

void test_killed_client(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    t_proc *proc;
    ctx_init(&ctx);
    make_name(name, sizeof name, "killed");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        proc = t_proc_spawn("--child-client-hang", name);
        CHECK(proc != NULL);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 15000));
        t_proc_kill(proc);
        CHECK(t_proc_wait(proc, 10000) != 0);
        /* the handler's answer goes nowhere; the server notices and goes on */
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 5000));
        {
            ipc_client_t *client = open_client(name, NULL, 5000);
            if (client) {
                expect_text(client, "next", "next");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

void test_cross_process_server(void)
{
    char name[96];
    t_proc *proc;
    ipc_client_t *client;
    size_t size = 3 * 1024 * 1024 + 5;
    unsigned char *data;
    make_name(name, sizeof name, "xserver");
    proc = t_proc_spawn("--child-server", name);
    CHECK(proc != NULL);
    if (!proc)
        return;
    client = open_client_waiting(name, 15000); /* the child needs a moment to start */
    if (client) {
        data = (unsigned char *)malloc(size);
        fill_random(data, size, 4242);
        data[0] = 0xEE;
        expect_response(client, data, size, data, size);
        free(data);
        expect_text(client, "quit", "bye");
        ipc_client_close(client);
    }
    CHECK(t_proc_wait(proc, client ? 30000 : 100) == 0 || !client);
}

void test_stale_name_reclaimed(void)
{
    char name[96];
    srv_ctx ctx;
    t_proc *proc;
    ipc_client_t *client;
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};
    ctx_init(&ctx);
    make_name(name, sizeof name, "stale");
    proc = t_proc_spawn("--child-server-hold", name);
    CHECK(proc != NULL);
    if (!proc)
        return;
    client = open_client_waiting(name, 15000);
    if (client) {
        expect_text(client, "alive", "alive");
        ipc_client_close(client);
        /* a live server in another process keeps its name */
        CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err),
                 IPC_E_ADDRESS_IN_USE, &err);
        ipc_error_clear(&err);
    }
    t_proc_kill(proc); /* dies without cleanup: the socket file stays behind */
    CHECK(t_proc_wait(proc, 10000) != 0);
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "mine now", "mine now");
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

/* ---- two processes: legacy server + new client, busy, stop under load --- */

/* The original handler signature, in a server process: "echo:" + request,
 * "quit" answers "bye" and ends the process. */
static void legacy_quit_handler(char const *request, void *user_data, char *response,
                                size_t capacity)
{
    srv_ctx *ctx = (srv_ctx *)user_data;
    if (!request) {
        t_mutex_lock(ctx->lock);
        ctx->disconnects++;
        if (response != NULL || capacity != 0)
            ctx->legacy_bad_disconnect++;
        t_mutex_unlock(ctx->lock);
        return;
    }
    ctx_add(ctx, &ctx->requests, 1);
    if (strcmp(request, "quit") == 0) {
        snprintf(response, capacity, "bye");
        ctx_set(ctx, &ctx->quit, 1);
        return;
    }
    snprintf(response, capacity, "echo:%s", request);
}

/* --child-legacy-server: ipc_server_start (the original API) until "quit". */
int child_legacy_server(const char *name)
{
    srv_ctx ctx;
    ipc_server_t *server;
    long long deadline = t_now_ms() + 60000;
    ctx_init(&ctx);
    server = ipc_server_start(name, legacy_quit_handler, &ctx);
    if (!CHECK(server != NULL))
        return 1;
    while (!ctx_get(&ctx, &ctx.quit)) {
        if (t_now_ms() > deadline) {
            note("legacy server: nobody asked me to quit");
            break;
        }
        t_sleep_ms(10);
    }
    /* both clients of child_new_client were told about */
    CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 2, 5000));
    CHECK(ctx_get(&ctx, &ctx.legacy_bad_disconnect) == 0);
    ipc_server_stop(server);
    ctx_free(&ctx);
    return failures_so_far();
}

/* --child-new-client: ipc_client_open / ipc_client_request against the
 * legacy server of another process. */
int child_new_client(const char *name)
{
    enum { MAX_TEXT = 60000 };
    char *req = (char *)malloc(MAX_TEXT + 1);
    char *expected = (char *)malloc(MAX_TEXT + 8);
    ipc_client_t *client = open_client_waiting(name, 15000); /* the server may still be starting */
    ipc_client_t *other = NULL;
    unsigned rng = 12345;
    int i;
    if (!client || !req || !expected) {
        ipc_client_close(client);
        free(req);
        free(expected);
        return 1;
    }
    other = open_client(name, NULL, 5000); /* two connections at once */
    for (i = 0; i < 24; i++) {
        size_t size = i % 6 == 5 ? MAX_TEXT - (size_t)i : 1 + next_random(&rng) % 3000;
        size_t j;
        int with_nul = i % 2; /* the text with or without its terminator */
        ipc_client_t *c = other && i % 3 == 2 ? other : client;
        for (j = 0; j < size; j++)
            req[j] = (char)('a' + next_random(&rng) % 26);
        req[0] = (char)('A' + i % 26);
        req[size] = 0;
        memcpy(expected, "echo:", 5);
        memcpy(expected + 5, req, size + 1);
        /* the legacy server answers with a C string, its NUL included */
        if (!expect_response(c, req, size + (size_t)with_nul, expected, size + 6))
            note("      request %d of %lu bytes failed", i, (unsigned long)size);
    }
    ipc_client_close(other);
    expect_response(client, "quit", 5, "bye", 4);
    ipc_client_close(client);
    free(req);
    free(expected);
    return failures_so_far();
}

typedef struct busy_waiter_arg {
    const char *name;
    int rc;
    long long done_at;
} busy_waiter_arg;

static void busy_waiter_main(void *param)
{
    busy_waiter_arg *arg = (busy_waiter_arg *)param;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    arg->rc = ipc_client_open(&client, arg->name, NULL, 10000, &err);
    arg->done_at = t_now_ms();
    if (arg->rc != IPC_OK)
        note("      the waiting client failed: %s", err.message ? err.message : "?");
    ipc_error_clear(&err);
    if (client) {
        expect_text(client, "second", "second");
        expect_text(client, "quit", "bye"); /* ends the server process */
        ipc_client_close(client);
    }
}

enum { HAMMER_CLIENTS = 16 };

typedef struct hammer_arg {
    const char *name;
    int index;
    t_mutex *lock;
    int *ready; /* under lock: clients that got their first answer */
    int answered;
    int wrong;
    int final_rc; /* what ended the loop: IPC_E_CLOSED expected */
    long long ended_at;
    long long slowest_ms; /* the longest single request */
} hammer_arg;

static void hammer_main(void *param)
{
    hammer_arg *arg = (hammer_arg *)param;
    unsigned char req[700], expected[700];
    unsigned rng = (unsigned)(arg->index * 2654435761u + 7u);
    ipc_client_t *client = open_client(arg->name, NULL, 15000);
    long long give_up = t_now_ms() + 40000;
    int seq = 0;
    arg->final_rc = -1;
    if (!client) {
        t_mutex_lock(arg->lock);
        (*arg->ready)++; /* do not hold the others back */
        t_mutex_unlock(arg->lock);
        return;
    }
    for (;;) {
        size_t size = make_unique_request(req, expected, 20 + next_random(&rng) % 600, "hammer",
                                          arg->index, seq);
        long long t0 = t_now_ms(), took;
        int wrong;
        int rc = unique_round_trip(client, req, size, expected, 10000, "hammer", &wrong);
        took = t_now_ms() - t0;
        if (took > arg->slowest_ms)
            arg->slowest_ms = took;
        if (rc != IPC_OK || wrong) {
            arg->final_rc = rc;
            arg->wrong += wrong;
            if (seq == 0) {
                t_mutex_lock(arg->lock);
                (*arg->ready)++; /* do not hold the others back */
                t_mutex_unlock(arg->lock);
            }
            break;
        }
        arg->answered++;
        if (seq++ == 0) {
            /* the parent stops the server only once all are connected */
            t_mutex_lock(arg->lock);
            (*arg->ready)++;
            t_mutex_unlock(arg->lock);
            for (;;) {
                int ready;
                t_mutex_lock(arg->lock);
                ready = *arg->ready;
                t_mutex_unlock(arg->lock);
                if (ready >= HAMMER_CLIENTS || t_now_ms() > give_up)
                    break;
                t_sleep_ms(2);
            }
        }
        if (t_now_ms() > give_up) {
            note("      hammer client %d: the server was never stopped", arg->index);
            break;
        }
    }
    arg->ended_at = t_now_ms();
    ipc_client_close(client);
}

/* --child-hammer: 16 clients hammer the parent's server until it stops;
 * each must end with IPC_E_CLOSED, all within a short time of each other,
 * with no wrong answer and no request hanging. */
int child_hammer(const char *name)
{
    hammer_arg args[HAMMER_CLIENTS];
    t_thread *threads[HAMMER_CLIENTS];
    t_mutex *lock = t_mutex_new();
    int ready = 0, i, answered = 0;
    long long first_end = 0, last_end = 0, slowest = 0;
    for (i = 0; i < HAMMER_CLIENTS; i++) {
        memset(&args[i], 0, sizeof args[i]);
        args[i].name = name;
        args[i].index = i;
        args[i].lock = lock;
        args[i].ready = &ready;
        threads[i] = t_thread_start(hammer_main, &args[i]);
        CHECK(threads[i] != NULL);
    }
    for (i = 0; i < HAMMER_CLIENTS; i++) {
        t_thread_join(threads[i]);
        answered += args[i].answered;
        if (!CHECK_RC(args[i].final_rc, IPC_E_CLOSED, NULL))
            note("      hammer client %d ended with %s", i, ipc_result_name(args[i].final_rc));
        CHECK(args[i].wrong == 0);
        CHECK(args[i].answered > 0);
        if (args[i].ended_at) {
            if (!first_end || args[i].ended_at < first_end)
                first_end = args[i].ended_at;
            if (args[i].ended_at > last_end)
                last_end = args[i].ended_at;
        }
        if (args[i].slowest_ms > slowest)
            slowest = args[i].slowest_ms;
    }
    note("%d answers to %d clients; all saw the stop within %lld ms; slowest request %lld ms",
         answered, HAMMER_CLIENTS, last_end - first_end, slowest);
    CHECK_MS(last_end - first_end, 0, 2500);
    CHECK_MS(slowest, 0, 3000); /* an answer or "closed" promptly, never a hang */
    /* A stopping server takes no new client, and a new one is told so in
     * time. The parent's ipc_server_stop may still be running (it closes
     * the listening socket / pipe last): then the attempt can also fail
     * otherwise than "not found", but never succeed or hang; "not found"
     * follows soon. */
    {
        long long t0 = t_now_ms(), deadline = t0 + 5000;
        int rc, attempts = 0;
        do {
            ipc_client_t *client = NULL;
            ipc_error err = {0, 0, NULL};
            long long t1 = t_now_ms();
            rc = ipc_client_open(&client, name, NULL, 300, &err);
            attempts++;
            if (!CHECK(rc != IPC_OK))
                note("      a client got into a stopped server");
            CHECK_MS(t_now_ms() - t1, 0, 2000);
            if (rc != IPC_E_NOT_FOUND)
                note("      after the stop (attempt %d): %s: %s", attempts, ipc_result_name(rc),
                     err.message ? err.message : "");
            ipc_client_close(client);
            ipc_error_clear(&err);
        } while (rc != IPC_E_NOT_FOUND && rc != IPC_OK && t_now_ms() < deadline);
        CHECK_RC(rc, IPC_E_NOT_FOUND, NULL);
    }
    t_mutex_free(lock);
    return failures_so_far();
}

/* Server and client in separate processes (under wine: two Windows
 * processes talking over the named pipe):
 *   1. a server process on the original API (ipc_server_start with an
 *      ipc_request_handler_t) and a client process on the new one
 *      (ipc_client_open / ipc_client_request);
 *   2. a server process with max_clients = 1 held by one client: another
 *      client with a short budget gets IPC_E_BUSY, one with a longer budget
 *      gets in once the first disconnects;
 *   3. 16 clients in another process hammering while the server is stopped:
 *      each gets its answer or IPC_E_CLOSED promptly, none hangs. */
void test_two_wine_processes(void)
{
    char name[96];
    /* 1. legacy server process, new-API client process */
    {
        t_proc *server_proc, *client_proc;
        long long t0 = t_now_ms();
        make_name(name, sizeof name, "2p-legacy");
        server_proc = t_proc_spawn("--child-legacy-server", name);
        client_proc = server_proc ? t_proc_spawn("--child-new-client", name) : NULL;
        CHECK(server_proc != NULL && client_proc != NULL);
        if (client_proc)
            CHECK(t_proc_wait(client_proc, 60000) == 0);
        if (server_proc)
            CHECK(t_proc_wait(server_proc, 20000) == 0);
        note("      legacy server process + new-API client process: %lld ms", t_now_ms() - t0);
    }
    /* 2. busy server process */
    {
        t_proc *server_proc;
        ipc_client_t *first, *second = NULL;
        ipc_error err = {0, 0, NULL};
        long long t0;
        make_name(name, sizeof name, "2p-busy");
        server_proc = t_proc_spawn("--child-server-one", name);
        CHECK(server_proc != NULL);
        first = server_proc ? open_client_waiting(name, 15000) : NULL;
        if (first) {
            busy_waiter_arg arg;
            t_thread *thread;
            expect_text(first, "first", "first");
            t0 = t_now_ms();
            CHECK_RC(ipc_client_open(&second, name, NULL, 300, &err), IPC_E_BUSY, &err);
            CHECK_MS(t_now_ms() - t0, 250, 2000);
            CHECK(second == NULL);
            ipc_error_clear(&err);
            expect_text(first, "still first", "still first");
            arg.name = name;
            arg.rc = -1;
            arg.done_at = 0;
            thread = t_thread_start(busy_waiter_main, &arg);
            t_sleep_ms(400);
            t0 = t_now_ms();
            ipc_client_close(first);
            t_thread_join(thread);
            CHECK_RC(arg.rc, IPC_OK, NULL);
            if (arg.rc == IPC_OK)
                CHECK_MS(arg.done_at - t0, 0, 2000);
        }
        if (server_proc)
            CHECK(t_proc_wait(server_proc, first ? 20000 : 100) == 0 || !first);
    }
    /* 3. stop under load, clients in another process */
    {
        srv_ctx ctx;
        ipc_server_t *server;
        t_proc *clients_proc;
        long long t0;
        ctx_init(&ctx);
        make_name(name, sizeof name, "2p-stop");
        server = open_server(name, NULL, xor_handler, &ctx);
        clients_proc = server ? t_proc_spawn("--child-hammer", name) : NULL;
        if (server)
            CHECK(clients_proc != NULL);
        if (clients_proc) {
            /* everyone connected and answered, then a good many more */
            CHECK(ctx_wait_for(&ctx, &ctx.requests, HAMMER_CLIENTS + 400, 30000));
            t0 = t_now_ms();
            ipc_server_stop(server);
            server = NULL;
            CHECK_MS(t_now_ms() - t0, 0, 2500);
            /* every connection was told about, from its own thread */
            CHECK(ctx_get(&ctx, &ctx.disconnects) == HAMMER_CLIENTS);
            CHECK(t_proc_wait(clients_proc, 30000) == 0);
            note("      stopped after %d requests", ctx_get(&ctx, &ctx.requests));
        }
        ipc_server_stop(server);
        ctx_free(&ctx);
    }
}
