/*
 * Multi-threaded stress program for the C core, run under
 * AddressSanitizer + UndefinedBehaviorSanitizer (with LeakSanitizer) and,
 * separately, ThreadSanitizer by tests/test_c_core.py (POSIX).
 *
 * Each round opens a server (2 listeners, 8 slots; in turn a plain handler, a
 * returning handler, a connection loop, or manual dispatch by two threads of
 * this program, one waiting on the ready handle and one taking batches) and
 * runs 12 client threads against it:
 *   phase 1  every thread connects, reconnects, pipelines (write x3, then
 *            read x3), sends requests of random sizes 0..64 KiB with content
 *            of its own, and some that the handler fails; every answer is
 *            checked byte for byte (zero lost, crossed or corrupted), and
 *            two threads share one client to hit IPC_E_IN_USE;
 *   phase 2  the threads keep hammering (some idle-connected) while the
 *            main thread stops the server: every call must then end with a
 *            defined error, never hang, and the stop must return.
 * Rounds 2, 3 and 5 of every 6 run on the shared-memory data path (server and
 * clients opt in; 16 KiB slots, so the random sizes cross the slot
 * boundary; where the platform has no such path the offer is declined and
 * those rounds use the socket); there a pipelined second write must fail
 * with IPC_E_INVALID instead.
 * A watchdog aborts the program if anything hangs. The sanitizers report
 * races, memory errors and leaks (LSan: nothing may remain after stop with
 * clients connected). Exit status 0 and a last line "stress: OK ..." on
 * success.
 *
 *   cc -std=c99 -D_POSIX_C_SOURCE=200809L -fsanitize=thread -g \
 *      tests/c/stress.c csrc/ipc.c csrc/ipc_posix.c csrc/ipc_win32.c -lpthread \
 *      -o stress && ./stress [rounds]
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* POSIX only: pthreads, barriers, nanosleep */
#endif

#include "../../csrc/ipc.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 12
#define MAX_REQ (64 * 1024)

static int g_rounds = 6;
static int g_shm; /* this round uses the shared-memory data path; set before threads start */
static int g_requests = 150; /* per thread, phase 1 */
static char g_name[128];
static volatile int g_phase2_stop; /* only read/written under g_lock */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static long g_ok, g_remote, g_in_use, g_connects, g_failures;
static long g_handled;

static void fail(const char *what, int thread, int code, const char *message)
{
    pthread_mutex_lock(&g_lock);
    g_failures++;
    printf("FAIL thread %d: %s: %s %s\n", thread, what, ipc_result_name(code),
           message ? message : "");
    fflush(stdout);
    pthread_mutex_unlock(&g_lock);
}

static void count(long *counter)
{
    pthread_mutex_lock(&g_lock);
    (*counter)++;
    pthread_mutex_unlock(&g_lock);
}

static uint32_t rnd(uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

/* Request: 4-byte thread id, 4-byte sequence, 1 mode byte, then filler
 * derived from (thread, seq). The answer is the request with every byte
 * xor 0x33 ("F" mode: the handler fails with a text naming the request). */
static size_t make_request(uint8_t *buf, int thread, uint32_t seq, uint32_t *rs, int fail_it)
{
    size_t size = 9 + rnd(rs) % (MAX_REQ - 9);
    size_t i;

    if (rnd(rs) % 8 == 0)
        size = 9 + rnd(rs) % 32;
    memcpy(buf, &thread, 4);
    memcpy(buf + 4, &seq, 4);
    buf[8] = fail_it ? 'F' : 'R';
    for (i = 9; i < size; i++)
        buf[i] = (uint8_t)(thread * 31 + seq * 7 + i);
    return size;
}

static int check_response(const uint8_t *req, size_t size, const uint8_t *resp, size_t rsize)
{
    size_t i;

    if (rsize != size)
        return 0;
    for (i = 0; i < size; i++)
        if (resp[i] != (uint8_t)(req[i] ^ 0x33))
            return 0;
    return 1;
}

static void plain_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    uint8_t *out;
    size_t i;

    (void)user_data;
    if (!request)
        return;
    count(&g_handled);
    if (size >= 9 && request[8] == 'F') {
        char text[64];
        uint32_t seq;
        memcpy(&seq, request + 4, 4);
        snprintf(text, sizeof text, "failed %u", (unsigned)seq);
        ipc_call_fail(call, text, strlen(text), NULL);
        return;
    }
    out = (uint8_t *)ipc_call_buffer(call, size);
    if (!out)
        return;
    for (i = 0; i < size; i++)
        out[i] = request[i] ^ 0x33;
    ipc_call_respond(call, out, size, NULL);
}

/* Manual dispatch: this thread waits on the ready handle, then takes calls
 * one by one until none is queued (a wake with none is allowed: a set made
 * after its call was taken), and answers them as plain_handler does. It
 * leaves once the server is interrupted. */
static void *ready_handle_dispatcher(void *param)
{
    ipc_server_t *server = (ipc_server_t *)param;
    struct pollfd ready;

    ready.fd = (int)ipc_server_ready_handle(server);
    ready.events = POLLIN;
    for (;;) {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        int r;

        ready.revents = 0;
        poll(&ready, 1, 50);
        while ((r = ipc_server_next_call(server, &call, &request, &size, 0, NULL)) == IPC_OK) {
            plain_handler(NULL, call, request, size);
            ipc_call_finish(call);
        }
        if (r == IPC_E_CLOSED)
            return NULL;
    }
}

/* Manual dispatch: this thread takes batches of up to 4 calls, finishing
 * the last batch in the same call, as the Python binding's workers do. */
static void *batch_dispatcher(void *param)
{
    ipc_server_t *server = (ipc_server_t *)param;
    ipc_call *calls[4], *answered[4];
    const uint8_t *requests[4];
    size_t sizes[4], taken = 0, i;

    for (;;) {
        int r = ipc_server_next_calls(server, answered, taken, calls, requests, sizes, 4, &taken,
                                      50, NULL);

        if (r == IPC_E_CLOSED)
            return NULL;
        for (i = 0; r == IPC_OK && i < taken; i++) {
            plain_handler(NULL, calls[i], requests[i], sizes[i]);
            answered[i] = calls[i];
        }
    }
}

/* Per-connection buffers for the returning handler, indexed by slot. */
static uint8_t *g_slot_buf[8];
static size_t g_slot_cap[8];

static const void *returning_handler(void *user_data, ipc_call *call, const uint8_t *request,
                                     size_t size, size_t *response_size)
{
    uint32_t slot = ipc_call_connection(call);
    size_t i;

    (void)user_data;
    if (!request)
        return NULL;
    count(&g_handled);
    if (size >= 9 && request[8] == 'F') {
        ipc_call_fail(call, "failed", 6, NULL);
        return NULL;
    }
    if (slot >= 8)
        return NULL;
    if (g_slot_cap[slot] < size + 1) {
        uint8_t *grown = (uint8_t *)realloc(g_slot_buf[slot], size + 1);
        if (!grown)
            return NULL;
        g_slot_buf[slot] = grown;
        g_slot_cap[slot] = size + 1;
    }
    for (i = 0; i < size; i++)
        g_slot_buf[slot][i] = request[i] ^ 0x33;
    *response_size = size;
    return g_slot_buf[slot];
}

/* The connection_handler: the same answers from the connection's own loop;
 * each response lives in the loop's buffer until the next ipc_serve_next. */
static void loop_handler(void *user_data, ipc_serve_loop *loop)
{
    ipc_next_request next;
    uint8_t *buf = NULL;
    size_t cap = 0, out_size = 0, i;
    int type = 0;
    int64_t n;

    (void)user_data;
    while ((n = ipc_serve_next(loop, type, buf, out_size, &next)) >= 0) {
        size_t size = (size_t)n;

        count(&g_handled);
        if (size >= 9 && next.data[8] == 'F') {
            type = 0; /* answered here: the loop sends nothing more */
            ipc_call_fail(next.call, "failed", 6, NULL);
            continue;
        }
        if (cap < size + 1) {
            uint8_t *grown = (uint8_t *)realloc(buf, size + 1);
            if (!grown) {
                type = 0;
                continue;
            }
            buf = grown;
            cap = size + 1;
        }
        for (i = 0; i < size; i++)
            buf[i] = next.data[i] ^ 0x33;
        type = IPC_PACKET_RESPONSE;
        out_size = size;
    }
    free(buf);
}

static int open_client(ipc_client_t **client, int timeout_ms, ipc_error *err)
{
    ipc_client_options options;

    ipc_client_options_init(&options);
    options.shm = g_shm;
    options.shm_slot_size = 16 * 1024;
    return ipc_client_open(client, g_name, &options, timeout_ms, err);
}

static ipc_client_t *connect_client(int thread)
{
    ipc_client_t *client = NULL;
    ipc_error err = {0};
    int r = open_client(&client, 20000, &err);

    if (r != IPC_OK) {
        fail("connect", thread, r, err.message);
        ipc_error_clear(&err);
        return NULL;
    }
    count(&g_connects);
    return client;
}

typedef struct {
    int id;
    ipc_client_t *shared; /* used by two threads at once */
} worker_arg;

static void phase1(int id, ipc_client_t *shared)
{
    uint32_t rs = 0x9E3779B9u * (uint32_t)(id + 1) + (uint32_t)g_rounds;
    uint8_t *req[3];
    size_t size[3];
    ipc_client_t *client = connect_client(id);
    uint32_t seq;
    int k;

    for (k = 0; k < 3; k++)
        req[k] = (uint8_t *)malloc(MAX_REQ);
    for (seq = 0; client && seq < (uint32_t)g_requests; seq++) {
        ipc_error err = {0};
        const uint8_t *resp;
        size_t rsize;
        uint32_t choice = rnd(&rs) % 16;
        int r;

        if (choice == 0) { /* reconnect */
            ipc_client_close(client);
            client = connect_client(id);
            if (!client)
                break;
        }
        if (choice == 1 && ipc_client_uses_shm(client)) { /* no pipelining on the region */
            size[0] = make_request(req[0], id, seq * 4, &rs, 0);
            r = ipc_client_write(client, req[0], size[0], 20000, &err);
            if (r != IPC_OK)
                fail("shm write", id, r, err.message);
            ipc_error_clear(&err);
            r = ipc_client_write(client, req[0], size[0], 20000, &err);
            if (r != IPC_E_INVALID)
                fail("shm: a second write before the read must be refused", id, r, err.message);
            ipc_error_clear(&err);
            r = ipc_client_read(client, &resp, &rsize, 20000, &err);
            if (r != IPC_OK || !check_response(req[0], size[0], resp, rsize))
                fail("shm read: lost, crossed or corrupted", id, r, err.message);
            else
                count(&g_ok);
            ipc_error_clear(&err);
            continue;
        }
        if (choice == 1) { /* pipeline three requests */
            for (k = 0; k < 3; k++) {
                size[k] = make_request(req[k], id, seq * 4 + k, &rs, 0);
                r = ipc_client_write(client, req[k], size[k], 20000, &err);
                if (r != IPC_OK)
                    fail("pipelined write", id, r, err.message);
                ipc_error_clear(&err);
            }
            for (k = 0; k < 3; k++) {
                r = ipc_client_read(client, &resp, &rsize, 20000, &err);
                if (r != IPC_OK || !check_response(req[k], size[k], resp, rsize))
                    fail("pipelined read: lost, crossed or corrupted", id, r, err.message);
                else
                    count(&g_ok);
                ipc_error_clear(&err);
            }
            continue;
        }
        if (choice == 2 && shared) { /* a client shared between two threads */
            size[0] = make_request(req[0], id, seq, &rs, 0);
            r = ipc_client_request(shared, req[0], size[0], &resp, &rsize, 20000, &err);
            if (r == IPC_E_IN_USE)
                count(&g_in_use);
            else if (r != IPC_OK)
                fail("shared client", id, r, err.message);
            /* resp may be overwritten by the other thread's next call only
             * after ours returned, and the client serializes calls, but
             * the buffer belongs to the client: do not check it here. */
            else
                count(&g_ok);
            ipc_error_clear(&err);
            continue;
        }
        {
            int fail_it = choice == 3;
            size[0] = make_request(req[0], id, seq, &rs, fail_it);
            r = ipc_client_request(client, req[0], size[0], &resp, &rsize, 20000, &err);
            if (fail_it) {
                if (r != IPC_E_REMOTE || !err.message || strncmp(err.message, "failed", 6) != 0)
                    fail("expected the handler's failure", id, r, err.message);
                else
                    count(&g_remote);
            } else if (r != IPC_OK || !check_response(req[0], size[0], resp, rsize)) {
                fail("request: lost, crossed or corrupted", id, r, err.message);
            } else {
                count(&g_ok);
            }
            ipc_error_clear(&err);
        }
    }
    ipc_client_close(client);
    for (k = 0; k < 3; k++)
        free(req[k]);
}

static int phase2_running(void)
{
    int stop;
    pthread_mutex_lock(&g_lock);
    stop = g_phase2_stop;
    pthread_mutex_unlock(&g_lock);
    return !stop;
}

/* Hammers until the server is gone; every result must be a defined one. */
static void phase2(int id)
{
    uint32_t rs = 12345u + (uint32_t)id;
    uint8_t *buf = (uint8_t *)malloc(MAX_REQ);
    ipc_client_t *client = NULL;
    ipc_client_t *idle = NULL;
    uint32_t seq = 0;

    if (id % 4 == 0) {
        /* connected, never used: stop must close it. The slots may all be
         * taken and the stop may come first: then connecting fails cleanly. */
        ipc_error err = {0};
        int r = open_client(&idle, 20000, &err);
        if (r != IPC_OK) {
            idle = NULL;
            if (r != IPC_E_HANDSHAKE && r != IPC_E_NOT_FOUND && r != IPC_E_CLOSED)
                fail("phase 2 idle connect", id, r, err.message);
        }
        ipc_error_clear(&err);
    }
    while (phase2_running()) {
        ipc_error err = {0};
        const uint8_t *resp;
        size_t rsize, size;
        int r;

        if (!client) {
            r = open_client(&client, 200, &err);
            ipc_error_clear(&err);
            if (r != IPC_OK) {
                client = NULL;
                if (r != IPC_E_NOT_FOUND && r != IPC_E_HANDSHAKE && r != IPC_E_BUSY &&
                    r != IPC_E_CLOSED)
                    fail("phase 2 connect", id, r, NULL);
                continue;
            }
        }
        size = make_request(buf, id, seq++, &rs, 0);
        r = ipc_client_request(client, buf, size, &resp, &rsize, 20000, &err);
        if (r == IPC_OK) {
            if (!check_response(buf, size, resp, rsize))
                fail("phase 2: corrupted answer", id, r, NULL);
        } else if (r == IPC_E_CLOSED) {
            ipc_client_close(client);
            client = NULL;
        } else {
            fail("phase 2 request", id, r, err.message);
            ipc_client_close(client);
            client = NULL;
        }
        ipc_error_clear(&err);
    }
    if (idle) {
        ipc_error err = {0};
        const uint8_t *resp;
        size_t rsize;
        int r = ipc_client_request(idle, "x", 1, &resp, &rsize, 5000, &err);
        if (r != IPC_E_CLOSED)
            fail("an idle client after stop", id, r, err.message);
        ipc_error_clear(&err);
        ipc_client_close(idle);
    }
    ipc_client_close(client);
    free(buf);
}

static pthread_barrier_t g_barrier;

static void *worker(void *p)
{
    worker_arg *a = (worker_arg *)p;
    phase1(a->id, a->shared);
    pthread_barrier_wait(&g_barrier); /* phase 1 done everywhere */
    phase2(a->id);
    return NULL;
}

static void *watchdog(void *p)
{
    (void)p;
    sleep(600);
    printf("FAIL watchdog: the stress run hangs\n");
    fflush(stdout);
    _Exit(3);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t threads[THREADS], dog;
    worker_arg args[THREADS];
    int round, i;
    const char *env = getenv("IPCFAST_STRESS_ROUNDS");

    if (argc > 1)
        g_rounds = atoi(argv[1]);
    else if (env && *env)
        g_rounds = atoi(env);
    env = getenv("IPCFAST_STRESS_REQUESTS");
    if (env && *env)
        g_requests = atoi(env);
    pthread_create(&dog, NULL, watchdog, NULL);
    pthread_detach(dog);

    for (round = 0; round < g_rounds; round++) {
        ipc_server_options options;
        ipc_server_t *server = NULL;
        ipc_client_t *shared;
        ipc_error err = {0};
        pthread_t dispatchers[2];
        int r, way = round % 6, manual = way >= 4;
        long long t0, t1;
        struct timespec ts;

        snprintf(g_name, sizeof g_name, "stress-%ld-%d", (long)getpid(), round);
        ipc_server_options_init(&options);
        options.max_clients = 8;
        options.listeners = 2;
        options.max_message = 1024 * 1024;
        /* ways 0-5: plain/socket, returning/socket, loop/shm, plain/shm,
         * manual/socket, manual/shm */
        g_shm = way == 2 || way == 3 || way == 5;
        options.shm = g_shm;
        if (way == 1)
            options.returning_handler = returning_handler;
        else if (way == 2)
            options.connection_handler = loop_handler;
        else if (manual)
            options.dispatch = IPC_DISPATCH_MANUAL;
        r = ipc_server_open(&server, g_name, &options, way == 1 || way == 2 ? NULL : plain_handler,
                            NULL, &err);
        if (r != IPC_OK) {
            printf("FAIL server open: %s %s\n", ipc_result_name(r), err.message);
            return 1;
        }
        if (manual) {
            pthread_create(&dispatchers[0], NULL, ready_handle_dispatcher, server);
            pthread_create(&dispatchers[1], NULL, batch_dispatcher, server);
        }
        pthread_mutex_lock(&g_lock);
        g_phase2_stop = 0;
        pthread_mutex_unlock(&g_lock);
        shared = connect_client(-1);
        pthread_barrier_init(&g_barrier, NULL, THREADS + 1);
        for (i = 0; i < THREADS; i++) {
            args[i].id = i;
            args[i].shared = i < 2 ? shared : NULL;
            pthread_create(&threads[i], NULL, worker, &args[i]);
        }
        pthread_barrier_wait(&g_barrier);
        ipc_client_close(shared);
        {
            struct timespec pause = {0, 100 * 1000 * 1000};
            nanosleep(&pause, NULL); /* phase 2 under way */
        }
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t0 = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
        if (manual) { /* the dispatchers leave before stop frees the server */
            ipc_server_interrupt(server);
            pthread_join(dispatchers[0], NULL);
            pthread_join(dispatchers[1], NULL);
        }
        ipc_server_stop(server);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t1 = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
        if (t1 - t0 > 5000) {
            printf("FAIL stop took %lld ms\n", t1 - t0);
            g_failures++;
        }
        pthread_mutex_lock(&g_lock);
        g_phase2_stop = 1;
        pthread_mutex_unlock(&g_lock);
        for (i = 0; i < THREADS; i++)
            pthread_join(threads[i], NULL);
        pthread_barrier_destroy(&g_barrier);
        printf("round %d: stop took %lld ms\n", round, t1 - t0);
    }
    for (i = 0; i < 8; i++)
        free(g_slot_buf[i]);
    printf("stress: %ld ok, %ld remote errors, %ld in-use refusals, %ld connects, %ld handled, "
           "%d rounds, %ld failures\n",
           g_ok, g_remote, g_in_use, g_connects, g_handled, g_rounds, g_failures);
    if (g_failures == 0)
        printf("stress: OK\n");
    return g_failures ? 1 : 0;
}
