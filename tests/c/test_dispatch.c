/*
 * C tests of manual dispatch: the call queue, its ready handle, stop.
 */
#include "t_harness.h"

/* Waits up to timeout_ms for a manual-dispatch ready handle to be signalled. */
static int ready_within(intptr_t handle, int timeout_ms)
{
#ifdef _WIN32
    return WaitForSingleObject((HANDLE)handle, (DWORD)timeout_ms) == WAIT_OBJECT_0;
#else
    struct pollfd p;
    p.fd = (int)handle;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, timeout_ms) == 1;
#endif
}

/* Is a manual-dispatch ready handle signalled right now? */
static int ready_now(intptr_t handle)
{
    return ready_within(handle, 0);
}

/* Answers one call with its bytes XOR 0x5C and finishes it. */
static void answer_xor(ipc_call *call, const uint8_t *request, size_t size)
{
    ipc_error err = {0, 0, NULL};
    uint8_t *out = (uint8_t *)ipc_call_buffer(call, size ? size : 1);
    size_t j;
    CHECK(out != NULL);
    if (out) {
        for (j = 0; j < size; j++)
            out[j] = (uint8_t)(request[j] ^ 0x5C);
        CHECK_RC(ipc_call_respond(call, out, size, &err), IPC_OK, &err);
        ipc_error_clear(&err);
    }
    ipc_call_finish(call);
}

/* With nothing queued, the ready handle ends clear: a set made after its
 * call was taken (ipc_dispatch.c, "readiness") is cleared by the next
 * next_call that finds nothing. Such a set may still be on its way, so the
 * handle must stay clear for a while, not just once. 1: it did. */
static int settles_clear(ipc_server_t *server)
{
    long long deadline = t_now_ms() + 5000;
    while (t_now_ms() < deadline) {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        if (ipc_server_next_call(server, &call, &request, &size, 0, NULL) != IPC_E_TIMEOUT) {
            ipc_call_finish(call); /* something was queued after all */
            return 0;
        }
        if (ready_now(ipc_server_ready_handle(server)))
            continue;
        t_sleep_ms(20);
        if (!ready_now(ipc_server_ready_handle(server)))
            return 1;
    }
    return 0;
}

typedef struct next_call_arg {
    ipc_server_t *server;
    int rc;
} next_call_arg;

static void blocked_next_call_main(void *param)
{
    next_call_arg *arg = (next_call_arg *)param;
    ipc_call *call = NULL;
    const uint8_t *request;
    size_t size;
    arg->rc = ipc_server_next_call(arg->server, &call, &request, &size, -1, NULL);
}

/* MANUAL dispatch: requests queue up until this thread takes and answers
 * them; the ready handle tracks the queue; stop ends waiting and queued calls. */
void test_manual_dispatch(void)
{
    enum { N = 4, ITERATIONS = 30 };
    char name[96];
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    worker_arg args[N];
    t_thread *threads[N];
    int i, handled = 0;
    long long deadline;
    make_name(name, sizeof name, "manual");
    ipc_server_options_init(&so);
    so.dispatch = IPC_DISPATCH_MANUAL;
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, NULL, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (!server)
        return;
    CHECK(ipc_server_ready_handle(server) != -1);
    CHECK(!ready_now(ipc_server_ready_handle(server)));
    {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        CHECK_RC(ipc_server_next_call(server, &call, &request, &size, 0, &err), IPC_E_TIMEOUT,
                 &err);
        ipc_error_clear(&err);
    }
    for (i = 0; i < N; i++) {
        args[i].name = name;
        args[i].index = i + 1;
        args[i].iterations = ITERATIONS;
        args[i].ok_count = 0;
        threads[i] = t_thread_start(worker_main, &args[i]);
    }
    deadline = t_now_ms() + 20000;
    while (handled < N * ITERATIONS && t_now_ms() < deadline) {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        if (ipc_server_next_call(server, &call, &request, &size, 200, NULL) != IPC_OK)
            continue;
        answer_xor(call, request, size);
        handled++;
    }
    for (i = 0; i < N; i++) {
        t_thread_join(threads[i]);
        CHECK(args[i].ok_count == ITERATIONS);
    }
    CHECK(handled == N * ITERATIONS);
    CHECK(settles_clear(server));

    /* A call finished without an answer: the client gets an ERROR. A
     * request left queued when the server stops: the client sees the close. */
    {
        ipc_client_t *client = open_client(name, NULL, 5000);
        ipc_call *call = NULL;
        const uint8_t *request, *response;
        size_t size, response_size;
        if (client) {
            CHECK_RC(ipc_client_write(client, "q", 1, 5000, &err), IPC_OK, &err);
            CHECK_RC(ipc_server_next_call(server, &call, &request, &size, 5000, &err), IPC_OK,
                     &err);
            if (call)
                ipc_call_finish(call);
            CHECK_RC(ipc_client_read(client, &response, &response_size, 5000, &err), IPC_E_REMOTE,
                     &err);
            ipc_error_clear(&err);
            /* Clear before the next request, so only that request sets it. */
            CHECK(settles_clear(server));
            CHECK_RC(ipc_client_write(client, "left", 4, 5000, &err), IPC_OK, &err);
            deadline = t_now_ms() + 5000;
            while (!ready_now(ipc_server_ready_handle(server)) && t_now_ms() < deadline)
                t_sleep_ms(5);
            CHECK(ready_now(ipc_server_ready_handle(server)));
        }
        ipc_server_stop(server);
        server = NULL;
        if (client) {
            CHECK_RC(ipc_client_read(client, &response, &response_size, 5000, &err), IPC_E_CLOSED,
                     &err);
            ipc_error_clear(&err);
            ipc_client_close(client);
        }
    }
    /* A thread blocked in next_call wakes on interrupt, before stop frees. */
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, NULL, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (server) {
        next_call_arg blocked;
        t_thread *thread;
        long long t0;
        blocked.server = server;
        blocked.rc = -1;
        thread = t_thread_start(blocked_next_call_main, &blocked);
        t_sleep_ms(100);
        t0 = t_now_ms();
        ipc_server_interrupt(server);
        t_thread_join(thread);
        CHECK_MS(t_now_ms() - t0, 0, 2000);
        CHECK(blocked.rc == IPC_E_CLOSED);
    }
    ipc_server_stop(server);
}

/* The ready handle is set after the server's lock is released (ipc_dispatch.c,
 * "readiness") while clients keep queueing and this loop keeps emptying the
 * queue, taking only when the handle is ready. Every call must arrive. A
 * wake to an empty queue may happen (a set whose call was taken while the
 * set was being made), but the next_call that finds nothing clears it, so
 * empty wakes in a row come only from sets already under way, at most one
 * per connection; a set left standing would make a select loop spin. Once
 * the clients are done, the handle ends clear. */
void test_manual_dispatch_ready_follows_queue(void)
{
    enum { N = 4, ITERATIONS = 150 };
    char name[96];
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    worker_arg args[N];
    t_thread *threads[N];
    int i, handled = 0, empty_in_a_row = 0, most_empty_in_a_row = 0;
    long long deadline;
    make_name(name, sizeof name, "readyq");
    ipc_server_options_init(&so);
    so.dispatch = IPC_DISPATCH_MANUAL;
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, NULL, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (!server)
        return;
    for (i = 0; i < N; i++) {
        args[i].name = name;
        args[i].index = i + 1;
        args[i].iterations = ITERATIONS;
        args[i].ok_count = 0;
        threads[i] = t_thread_start(worker_main, &args[i]);
    }
    deadline = t_now_ms() + 30000;
    while (handled < N * ITERATIONS && t_now_ms() < deadline) {
        int taken = 0;
        if (!ready_within(ipc_server_ready_handle(server), 200))
            continue;
        for (;;) {
            ipc_call *call = NULL;
            const uint8_t *request;
            size_t size;
            if (ipc_server_next_call(server, &call, &request, &size, 0, NULL) != IPC_OK)
                break;
            answer_xor(call, request, size);
            taken++;
        }
        empty_in_a_row = taken ? 0 : empty_in_a_row + 1;
        if (empty_in_a_row > most_empty_in_a_row)
            most_empty_in_a_row = empty_in_a_row;
        handled += taken;
    }
    for (i = 0; i < N; i++) {
        t_thread_join(threads[i]);
        CHECK(args[i].ok_count == ITERATIONS);
    }
    CHECK(handled == N * ITERATIONS);
    CHECK(most_empty_in_a_row <= N);
    CHECK(settles_clear(server));
    ipc_server_stop(server);
}

typedef struct paced_arg {
    const char *name;
    int rounds;
    srv_ctx *ctx; /* requests: how many the test allows; loops: answered so far */
} paced_arg;

/* One request at a time, each only once the test allows it. */
static void paced_client_main(void *param)
{
    paced_arg *arg = (paced_arg *)param;
    ipc_client_t *client = open_client(arg->name, NULL, 10000);
    static const unsigned char ping[4] = {'p', 'i', 'n', 'g'};
    unsigned char expected[4];
    int i;
    size_t j;
    if (!client)
        return;
    for (j = 0; j < sizeof ping; j++)
        expected[j] = (unsigned char)(ping[j] ^ 0x5C);
    for (i = 0; i < arg->rounds; i++) {
        if (!ctx_wait_for(arg->ctx, &arg->ctx->requests, i + 1, 10000))
            break;
        if (!expect_response(client, ping, sizeof ping, expected, sizeof expected))
            break;
        ctx_add(arg->ctx, &arg->ctx->loops, 1);
    }
    ipc_client_close(client);
}

/* A loop that polls ipc_server_next_call(0) takes a call as soon as it is
 * queued, often before the connection thread has set the ready handle for
 * it; that set then lands on an empty queue. The next next_call that finds
 * nothing must clear it: left standing, a select loop would wake for
 * nothing until the next request. */
void test_manual_dispatch_stale_ready_cleared(void)
{
    enum { ROUNDS = 200 };
    char name[96];
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    srv_ctx ctx;
    paced_arg arg;
    t_thread *thread;
    int i, stale = 0, left_standing = 0;
    make_name(name, sizeof name, "stale");
    ipc_server_options_init(&so);
    so.dispatch = IPC_DISPATCH_MANUAL;
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, NULL, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (!server)
        return;
    ctx_init(&ctx);
    arg.name = name;
    arg.rounds = ROUNDS;
    arg.ctx = &ctx;
    thread = t_thread_start(paced_client_main, &arg);
    for (i = 0; i < ROUNDS; i++) {
        intptr_t ready = ipc_server_ready_handle(server);
        long long deadline = t_now_ms() + 10000;
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        int tries;
        ctx_set(&ctx, &ctx.requests, i + 1);
        while (ipc_server_next_call(server, &call, &request, &size, 0, NULL) != IPC_OK &&
               t_now_ms() < deadline) {
        }
        CHECK(call != NULL);
        if (!call)
            break;
        answer_xor(call, request, size);
        CHECK(ctx_wait_for(&ctx, &ctx.loops, i + 1, 10000));
        /* The set for this call is made by now, or soon: it has nothing
         * else to wait for. Each next_call that finds nothing must leave
         * the handle clear once it is made. */
        t_sleep_ms(1);
        stale += ready_now(ready);
        for (tries = 0; tries < 200; tries++) {
            CHECK_RC(ipc_server_next_call(server, &call, &request, &size, 0, &err), IPC_E_TIMEOUT,
                     &err);
            ipc_error_clear(&err);
            if (!ready_now(ready))
                break;
            t_sleep_ms(1);
        }
        left_standing += tries == 200;
    }
    t_thread_join(thread);
    CHECK(ctx_get(&ctx, &ctx.loops) == ROUNDS);
    CHECK(left_standing == 0);
    note("a stale ready handle after %d of %d calls", stale, ROUNDS);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* ipc_server_next_calls: a worker ends its last batch and takes the next
 * in one call; a batch holds every ready call, up to its capacity. */
void test_batched_next_calls(void)
{
    enum { N = 4, ITERATIONS = 25, BATCH = 8 };
    char name[96];
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    worker_arg args[N];
    t_thread *threads[N];
    ipc_call *calls[BATCH], *answered[BATCH];
    const uint8_t *requests[BATCH];
    size_t sizes[BATCH], count = 0, done = 0, largest = 0;
    int i, handled = 0;
    long long deadline;
    make_name(name, sizeof name, "batched");
    ipc_server_options_init(&so);
    so.dispatch = IPC_DISPATCH_MANUAL;
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, NULL, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (!server)
        return;
    CHECK_RC(ipc_server_next_calls(server, NULL, 0, calls, requests, sizes, BATCH, &count, 0, &err),
             IPC_E_TIMEOUT, &err);
    ipc_error_clear(&err);
    CHECK(count == 0);
    CHECK_RC(ipc_server_next_calls(server, NULL, 0, calls, requests, sizes, 0, &count, 0, &err),
             IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    for (i = 0; i < N; i++) {
        args[i].name = name;
        args[i].index = i + 1;
        args[i].iterations = ITERATIONS;
        args[i].ok_count = 0;
        threads[i] = t_thread_start(worker_main, &args[i]);
    }
    deadline = t_now_ms() + 20000;
    while (handled < N * ITERATIONS && t_now_ms() < deadline) {
        size_t k, j;
        if (ipc_server_next_calls(server, answered, done, calls, requests, sizes, BATCH, &count,
                                  200, NULL) != IPC_OK) {
            done = 0;
            continue;
        }
        CHECK(count >= 1 && count <= BATCH);
        if (count > largest)
            largest = count;
        for (k = 0; k < count; k++) {
            uint8_t *out = (uint8_t *)malloc(sizes[k] + 1);
            CHECK(out != NULL);
            if (out) {
                for (j = 0; j < sizes[k]; j++)
                    out[j] = (uint8_t)(requests[k][j] ^ 0x5C);
                CHECK_RC(ipc_call_respond(calls[k], out, sizes[k], &err), IPC_OK, &err);
                ipc_error_clear(&err);
                free(out);
            }
            answered[k] = calls[k];
        }
        done = count;
        handled += (int)count;
    }
    /* The last batch is ended by the next take, which finds nothing. */
    CHECK_RC(ipc_server_next_calls(server, answered, done, calls, requests, sizes, BATCH, &count, 0,
                                   &err),
             IPC_E_TIMEOUT, &err);
    ipc_error_clear(&err);
    for (i = 0; i < N; i++) {
        t_thread_join(threads[i]);
        CHECK(args[i].ok_count == ITERATIONS);
    }
    CHECK(handled == N * ITERATIONS);
    CHECK(largest >= 1);
    ipc_server_interrupt(server);
    CHECK_RC(
        ipc_server_next_calls(server, NULL, 0, calls, requests, sizes, BATCH, &count, -1, &err),
        IPC_E_CLOSED, &err);
    ipc_error_clear(&err);
    /* Nothing is stuck: a bounded stop frees the server and reports 0. */
    CHECK(ipc_server_stop_timeout(server, 500) == 0);
}

/* options.connection_handler: the application runs each connection's loop
 * with ipc_serve_next. Four clients at random sizes (both sides of the
 * inline size), each kind of answer, a handler that returns early, a
 * client that leaves, and the options it refuses. */
void test_connection_loop(void)
{
    enum { N = 4, ITERATIONS = 25 };
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    worker_arg args[N];
    t_thread *threads[N];
    unsigned char req[IPC_REQUEST_INLINE_SIZE + 2], want[sizeof req];
    char *message;
    size_t size;
    int i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "loop");
    ipc_server_options_init(&so);
    so.connection_handler = loop_xor_handler;
    so.dispatch = IPC_DISPATCH_MANUAL;
    CHECK_RC(ipc_server_open(&server, name, &so, NULL, &ctx, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    so.dispatch = IPC_DISPATCH_THREAD;
    server = open_server(name, &so, NULL, &ctx);
    if (!server) {
        ctx_free(&ctx);
        return;
    }
    for (i = 0; i < N; i++) {
        args[i].name = name;
        args[i].index = i + 1;
        args[i].iterations = ITERATIONS;
        args[i].ok_count = 0;
        threads[i] = t_thread_start(worker_main, &args[i]);
    }
    for (i = 0; i < N; i++) {
        t_thread_join(threads[i]);
        CHECK(args[i].ok_count == ITERATIONS);
    }

    client = open_client(name, NULL, 5000);
    if (client) {
        static const size_t sizes[] = {0, 1, IPC_REQUEST_INLINE_SIZE - 1, IPC_REQUEST_INLINE_SIZE,
                                       IPC_REQUEST_INLINE_SIZE + 1};
        size_t k;

        for (k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size = sizes[k];
            fill_random(req, size, (unsigned)size + 3);
            for (i = 0; i < (int)size; i++)
                want[i] = (unsigned char)(req[i] ^ 0x5C);
            CHECK(expect_response(client, req, size, want, size));
        }
        CHECK(expect_response(client, "self", 4, "\x2f\x39\x30\x3a", 4));
        /* set after the response is out: the client may see it first */
        CHECK(ctx_wait_equal(&ctx, &ctx.last_respond_rc, IPC_OK, 5000));
        message = expect_failure(client, "fail", 4, 5000, IPC_E_REMOTE);
        CHECK(message && strcmp(message, "nope") == 0);
        free(message);
        message = expect_failure(client, "none", 4, 5000, IPC_E_REMOTE);
        CHECK(message && strstr(message, "without a response") != NULL);
        free(message);
        CHECK(expect_response(client, "abc", 3, "\x3d\x3e\x3f", 3));
        /* the handler returns: the request gets an ERROR, the connection ends */
        message = expect_failure(client, "quit", 4, 5000, IPC_E_REMOTE);
        CHECK(message && strstr(message, "without a response") != NULL);
        free(message);
        ipc_client_close(client);
    }
    CHECK(ctx_wait_equal(&ctx, &ctx.disconnects, N + 1, 5000));
    CHECK(ctx_get(&ctx, &ctx.loops) == N + 1);
    ipc_server_stop(server);
    ctx_free(&ctx);
}
