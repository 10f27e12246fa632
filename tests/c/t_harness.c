/*
 * The C tests' harness: checks and their tally, the watchdog, log capture,
 * names and data, and the handlers and client helpers the areas share
 * (declared, with what each does, in t_harness.h).
 */
#include "t_harness.h"

/* ======================================================================
 * Test harness
 * ====================================================================== */

t_mutex *g_harness_lock;
int g_passed;
int g_failed;
const char *g_current_test = "";
int g_child_mode = 0;                          /* nonzero in a child process */
static volatile long long g_test_deadline = 0; /* guarded by g_harness_lock */
int g_watchdog_stop = 0;                       /* guarded by g_harness_lock */

void note(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    t_mutex_lock(g_harness_lock);
    if (g_child_mode)
        fputs("    [child] ", stdout);
    vprintf(format, args);
    fputc('\n', stdout);
    fflush(stdout);
    t_mutex_unlock(g_harness_lock);
    va_end(args);
}

int check_impl(int ok, const char *expr, const char *file, int line)
{
    t_mutex_lock(g_harness_lock);
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        printf("%sFAIL %s:%d [%s]: %s\n", g_child_mode ? "    [child] " : "", file, line,
               g_current_test, expr);
        fflush(stdout);
    }
    t_mutex_unlock(g_harness_lock);
    return ok;
}

int check_rc_impl(int got, int expected, const ipc_error *err, const char *expr, const char *file,
                  int line)
{
    if (got == expected)
        return check_impl(1, expr, file, line);
    t_mutex_lock(g_harness_lock);
    g_failed++;
    printf("%sFAIL %s:%d [%s]: %s returned %s, expected %s (message: %s)\n",
           g_child_mode ? "    [child] " : "", file, line, g_current_test, expr,
           ipc_result_name(got), ipc_result_name(expected),
           err && err->message ? err->message : "none");
    fflush(stdout);
    t_mutex_unlock(g_harness_lock);
    return 0;
}

int failures_so_far(void)
{
    int n;
    t_mutex_lock(g_harness_lock);
    n = g_failed;
    t_mutex_unlock(g_harness_lock);
    return n;
}

void set_deadline(long long deadline)
{
    t_mutex_lock(g_harness_lock);
    g_test_deadline = deadline;
    t_mutex_unlock(g_harness_lock);
}

/* Ends the run with a clear message if one test hangs. */
void watchdog_main(void *arg)
{
    (void)arg;
    for (;;) {
        long long deadline;
        int stop;
        const char *test;
        t_sleep_ms(100);
        t_mutex_lock(g_harness_lock);
        deadline = g_test_deadline;
        stop = g_watchdog_stop;
        test = g_current_test;
        t_mutex_unlock(g_harness_lock);
        if (stop)
            return;
        if (deadline && t_now_ms() > deadline) {
            t_mutex_lock(g_harness_lock);
            printf("FAIL watchdog: test %s did not finish in time (hang)\n", test);
            printf("%d passed, %d failed\n", g_passed, g_failed + 1);
            fflush(stdout);
            _Exit(3);
        }
    }
}

/* ---- log capture ------------------------------------------------------- */

t_mutex *g_log_lock;
int g_log_count;
int g_log_bad_level;
int g_log_verbose;

void test_log_fn(void *user_data, int level, const char *message)
{
    int *counter = (int *)user_data;
    t_mutex_lock(g_log_lock);
    if (counter)
        (*counter)++;
    g_log_count++;
    if (level != IPC_LOG_DEBUG && level != IPC_LOG_INFO && level != IPC_LOG_WARNING &&
        level != IPC_LOG_ERROR)
        g_log_bad_level++;
    if (!message)
        g_log_bad_level++;
    t_mutex_unlock(g_log_lock);
    if (g_log_verbose)
        note("      log %d: %s", level, message ? message : "(null)");
}

const uint8_t DEFAULT_HS[8] = {0x00, 0xf7, 0x83, 0xca, 0x2a, 0x31, 0x7e, 0x38};

/* ---- names and data ---------------------------------------------------- */

static int g_name_counter = 0;

/* A plain name unique to this process and call. */
void make_name(char *out, size_t size, const char *tag)
{
    snprintf(out, size, "ipcfast-ct-%ld-%s-%d", t_getpid(), tag, g_name_counter++);
}

unsigned fill_random(unsigned char *buf, size_t size, unsigned seed)
{
    unsigned x = seed * 2654435761u + 0x9E3779B9u;
    size_t i;
    if (x == 0)
        x = 1;
    for (i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)(x >> 11);
        if (i % 97 == 0)
            buf[i] = 0; /* plenty of NUL bytes */
    }
    return x;
}

/* One client thread of concurrent tests (see t_harness.h). */
void worker_main(void *param)
{
    worker_arg *arg = (worker_arg *)param;
    ipc_client_t *client = open_client(arg->name, NULL, 10000);
    int i;
    size_t j;
    if (!client)
        return;
    for (i = 0; i < arg->iterations; i++) {
        unsigned seed = (unsigned)(arg->index * 100003 + i);
        size_t size = (size_t)((seed * 7919u) % 65536u) + (size_t)arg->index;
        unsigned char *req = (unsigned char *)malloc(size + 8);
        unsigned char *expected = (unsigned char *)malloc(size + 8);
        fill_random(req, size, seed);
        req[0] = (unsigned char)arg->index; /* each thread's own content */
        for (j = 0; j < size; j++)
            expected[j] = (unsigned char)(req[j] ^ 0x5C);
        if (expect_response(client, req, size, expected, size))
            arg->ok_count++;
        free(req);
        free(expected);
    }
    ipc_client_close(client);
}

/* ======================================================================
 * Server handlers used by the tests
 * ====================================================================== */

void ctx_init(srv_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->lock = t_mutex_new();
    ctx->last_respond_rc = -1;
    ctx->twice_rc = -1;
    ctx->legacy_capacity = -1;
    ctx->legacy_zeroed = -1;
}

void ctx_free(srv_ctx *ctx)
{
    t_mutex_free(ctx->lock);
}

int ctx_get(srv_ctx *ctx, const int *field)
{
    int v;
    t_mutex_lock(ctx->lock);
    v = *field;
    t_mutex_unlock(ctx->lock);
    return v;
}

void ctx_set(srv_ctx *ctx, int *field, int value)
{
    t_mutex_lock(ctx->lock);
    *field = value;
    t_mutex_unlock(ctx->lock);
}

void ctx_add(srv_ctx *ctx, int *field, int delta)
{
    t_mutex_lock(ctx->lock);
    *field += delta;
    t_mutex_unlock(ctx->lock);
}

/* Waits up to timeout_ms for *field to reach at least value. */
int ctx_wait_for(srv_ctx *ctx, const int *field, int value, int timeout_ms)
{
    long long deadline = t_now_ms() + timeout_ms;
    for (;;) {
        if (ctx_get(ctx, field) >= value)
            return 1;
        if (t_now_ms() > deadline)
            return 0;
        t_sleep_ms(5);
    }
}

/* Waits up to timeout_ms for *field to equal value (handlers store their
 * results after the client may already have its answer). */
int ctx_wait_equal(srv_ctx *ctx, const int *field, int value, int timeout_ms)
{
    long long deadline = t_now_ms() + timeout_ms;
    for (;;) {
        if (ctx_get(ctx, field) == value)
            return 1;
        if (t_now_ms() > deadline)
            return 0;
        t_sleep_ms(5);
    }
}

static int on_disconnect(srv_ctx *ctx, const uint8_t *request, size_t size)
{
    if (request)
        return 0;
    t_mutex_lock(ctx->lock);
    ctx->disconnects++;
    if (size != 0)
        ctx->bad_disconnect_args++;
    t_mutex_unlock(ctx->lock);
    return 1;
}

/* Answers each request with its bytes XOR 0x5C, built in ipc_call_buffer. */
void xor_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    srv_ctx *ctx = (srv_ctx *)user_data;
    uint8_t *out;
    size_t i;
    if (on_disconnect(ctx, request, size))
        return;
    ctx_add(ctx, &ctx->requests, 1);
    if (request[size] != 0) {
        ipc_call_fail(call, "request not NUL-terminated", 26, NULL);
        return;
    }
    out = (uint8_t *)ipc_call_buffer(call, size + 1);
    if (!out) {
        ipc_call_fail(call, "no memory", 9, NULL);
        return;
    }
    for (i = 0; i < size; i++)
        out[i] = (uint8_t)(request[i] ^ 0x5C);
    ctx_set(ctx, &ctx->last_respond_rc, ipc_call_respond(call, out, size, NULL));
}

/* A connection_handler: xor_handler's answers, from its own request loop.
 * The response buffer lives until the next ipc_serve_next, which sends it.
 * Requests "fail" (an ERROR text), "self" (answered with ipc_call_respond
 * before the loop is told nothing), "none" (no answer: the core's ERROR)
 * and "quit" (the handler returns without answering) test the answers. */
void loop_xor_handler(void *user_data, ipc_serve_loop *loop)
{
    srv_ctx *ctx = (srv_ctx *)user_data;
    ipc_next_request next;
    uint8_t *out = NULL;
    int type = 0;
    size_t out_size = 0;
    int64_t n;

    ctx_add(ctx, &ctx->loops, 1);
    while ((n = ipc_serve_next(loop, type, out, out_size, &next)) >= 0) {
        size_t size = (size_t)n, i;

        ctx_add(ctx, &ctx->requests, 1);
        if (next.data[size] != 0 ||
            (size <= IPC_REQUEST_INLINE_SIZE) != (next.data == next.inline_data)) {
            static const char why[] = "request not NUL-terminated or not where promised";
            type = IPC_PACKET_ERROR, out_size = sizeof why - 1;
            free(out);
            out = (uint8_t *)malloc(out_size);
            if (out)
                memcpy(out, why, out_size);
            continue;
        }
        if (size == 4 && memcmp(next.data, "quit", 4) == 0)
            break;
        free(out);
        out = (uint8_t *)malloc(size + 1);
        type = IPC_PACKET_RESPONSE, out_size = size;
        if (!out) {
            type = 0;
            continue;
        }
        if (size == 4 && memcmp(next.data, "fail", 4) == 0) {
            type = IPC_PACKET_ERROR;
            memcpy(out, "nope", 4);
            continue;
        }
        if (size == 4 && memcmp(next.data, "none", 4) == 0) {
            type = 0;
            continue;
        }
        for (i = 0; i < size; i++)
            out[i] = (uint8_t)(next.data[i] ^ 0x5C);
        if (size == 4 && memcmp(next.data, "self", 4) == 0) {
            ctx_set(ctx, &ctx->last_respond_rc, ipc_call_respond(next.call, out, size, NULL));
            type = IPC_PACKET_RESPONSE; /* answered already: the loop sends nothing more */
        }
    }
    free(out);
    ctx_add(ctx, &ctx->disconnects, 1);
}

static int starts_with(const uint8_t *data, size_t size, const char *prefix)
{
    size_t n = strlen(prefix);
    return size >= n && memcmp(data, prefix, n) == 0;
}

/* Text commands; anything else is echoed as is. */
void cmd_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    srv_ctx *ctx = (srv_ctx *)user_data;
    const char *text = (const char *)request;
    if (on_disconnect(ctx, request, size))
        return;
    ctx_add(ctx, &ctx->requests, 1);
    if (starts_with(request, size, "fail:")) {
        ipc_call_fail(call, text + 5, size - 5, NULL);
    } else if (starts_with(request, size, "noreply")) {
        /* return without answering: the client must get an ERROR packet */
    } else if (starts_with(request, size, "sleep:")) {
        t_sleep_ms(atoi(text + 6));
        ipc_call_respond(call, "slept", 5, NULL);
    } else if (starts_with(request, size, "big:")) {
        size_t n = (size_t)strtoul(text + 4, NULL, 10);
        uint8_t *out = (uint8_t *)ipc_call_buffer(call, n + 1);
        int rc;
        if (!out) {
            ipc_call_fail(call, "no memory", 9, NULL);
            return;
        }
        memset(out, 'B', n);
        rc = ipc_call_respond(call, out, n, NULL);
        ctx_set(ctx, &ctx->last_respond_rc, rc);
    } else if (starts_with(request, size, "twice")) {
        int rc;
        ipc_call_respond(call, "one", 3, NULL);
        rc = ipc_call_respond(call, "two", 3, NULL);
        ctx_set(ctx, &ctx->twice_rc, rc);
    } else if (starts_with(request, size, "conn")) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%u", (unsigned)ipc_call_connection(call));
        ipc_call_respond(call, buf, (size_t)n, NULL);
    } else if (starts_with(request, size, "quit")) {
        ipc_call_respond(call, "bye", 3, NULL);
        ctx_set(ctx, &ctx->quit, 1);
    } else {
        ctx_set(ctx, &ctx->last_respond_rc, ipc_call_respond(call, request, size, NULL));
    }
}

/* The original handler signature: answers "echo:" + request. */
void legacy_handler(char const *request, void *user_data, char *response, size_t capacity)
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
    t_mutex_lock(ctx->lock);
    ctx->requests++;
    ctx->legacy_capacity = (int)capacity;
    if (ctx->legacy_zeroed != 0) {
        size_t i;
        int zeroed = 1;
        for (i = 0; i < capacity; i++)
            if (response[i] != 0) {
                zeroed = 0;
                break;
            }
        ctx->legacy_zeroed = zeroed;
    }
    t_mutex_unlock(ctx->lock);
    if (strcmp(request, "fill") == 0) {
        memset(response, 'x', capacity); /* no room left for a NUL: the core adds one */
        return;
    }
    snprintf(response, capacity, "echo:%s", request);
}

/* Opens a server or records a failure; NULL on failure. */
ipc_server_t *open_server(const char *name, const ipc_server_options *options,
                          ipc_handler_fn handler, srv_ctx *ctx)
{
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_server_open(&server, name, options, handler, ctx, &err);
    if (!CHECK_RC(rc, IPC_OK, &err))
        server = NULL;
    ipc_error_clear(&err);
    return server;
}

ipc_client_t *open_client(const char *name, const ipc_client_options *options, int timeout_ms)
{
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_client_open(&client, name, options, timeout_ms, &err);
    if (!CHECK_RC(rc, IPC_OK, &err))
        client = NULL;
    ipc_error_clear(&err);
    return client;
}

/* For a server another thread or process is about to start: nothing owns
 * its name yet, so the client must be told to wait for it. */
ipc_client_t *open_client_waiting(const char *name, int timeout_ms)
{
    ipc_client_options co;
    ipc_client_options_init(&co);
    co.wait_if_not_found = 1;
    return open_client(name, &co, timeout_ms);
}

/* One request whose response must equal `expected`. */
int expect_response(ipc_client_t *client, const void *request, size_t size, const void *expected,
                    size_t expected_size)
{
    const uint8_t *resp = NULL;
    size_t resp_size = 0;
    ipc_error err = {0, 0, NULL};
    int ok;
    int rc = ipc_client_request(client, request, size, &resp, &resp_size, 10000, &err);
    ok = CHECK_RC(rc, IPC_OK, &err);
    if (ok) {
        ok = CHECK(resp_size == expected_size) &&
             CHECK(expected_size == 0 || memcmp(resp, expected, expected_size) == 0) &&
             CHECK(resp[resp_size] == 0);
    }
    ipc_error_clear(&err);
    return ok;
}

int expect_text(ipc_client_t *client, const char *request, const char *expected)
{
    return expect_response(client, request, strlen(request), expected, strlen(expected));
}

/* One request that must fail with `expected`; returns the message (to free) or NULL. */
char *expect_failure(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     int expected)
{
    const uint8_t *resp = NULL;
    size_t resp_size = 0;
    ipc_error err = {0, 0, NULL};
    char *message;
    int rc = ipc_client_request(client, request, size, &resp, &resp_size, timeout_ms, &err);
    CHECK_RC(rc, expected, &err);
    if (rc != IPC_OK) {
        CHECK(err.code == rc);
        CHECK(err.message != NULL);
    }
    message = err.message;
    err.message = NULL;
    ipc_error_clear(&err);
    return message;
}
#if defined(__linux__)
int count_dir_entries(const char *path)
{
    DIR *dir = opendir(path);
    struct dirent *entry;
    int n = 0;
    if (!dir)
        return -1;
    while ((entry = readdir(dir)) != NULL)
        if (entry->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}
#endif
#ifndef _WIN32
volatile sig_atomic_t g_sigpipes = 0;

void on_sigpipe(int sig)
{
    (void)sig;
    g_sigpipes++;
}
#endif

static void tally_log_fn(void *user_data, int level, const char *message)
{
    log_tally *tally = (log_tally *)user_data;
    if (level >= IPC_LOG_WARNING) {
        t_mutex_lock(tally->lock);
        if (level >= IPC_LOG_ERROR)
            tally->errors++;
        else
            tally->warnings++;
        if (!tally->first[0])
            snprintf(tally->first, sizeof tally->first, "level %d: %s", level,
                     message ? message : "(null)");
        t_mutex_unlock(tally->lock);
    }
    if (g_log_verbose)
        note("      log %d: %s", level, message ? message : "(null)");
}

void tally_begin(log_tally *tally)
{
    memset(tally, 0, sizeof *tally);
    tally->lock = t_mutex_new();
    ipc_set_log_handler(tally_log_fn, tally);
}

/* Uninstalls the tally and checks that nothing was logged at WARNING or above. */
void tally_end_expect_quiet(log_tally *tally)
{
    int warnings, errors;
    ipc_set_log_handler(g_log_verbose ? test_log_fn : NULL, NULL);
    t_mutex_lock(tally->lock);
    warnings = tally->warnings;
    errors = tally->errors;
    t_mutex_unlock(tally->lock);
    if (!CHECK(errors == 0 && warnings == 0))
        note("      the server logged %d errors and %d warnings; first: %s", errors, warnings,
             tally->first);
    t_mutex_free(tally->lock);
}

unsigned next_random(unsigned *state)
{
    unsigned x = *state ? *state : 0x2545F491u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/* A request no other client or request can produce: "<tag> <client> <seq>|"
 * then pseudo-random bytes (NULs included) up to `size` bytes in all. The
 * xor_handler's answer to it is every byte XOR 0x5C, so a response that was
 * lost, duplicated, truncated or meant for another request cannot pass. */
size_t make_unique_request(unsigned char *req, unsigned char *expected, size_t size,
                           const char *tag, int client, int seq)
{
    char head[64];
    size_t i;
    int n = snprintf(head, sizeof head, "%s %d %d|", tag, client, seq);
    if (size < (size_t)n)
        size = (size_t)n;
    fill_random(req, size, (unsigned)(client * 1000003 + seq));
    memcpy(req, head, (size_t)n);
    for (i = 0; i < size; i++)
        expected[i] = (unsigned char)(req[i] ^ 0x5C);
    return size;
}

/* One request whose answer must be exactly `expected`; says what went wrong
 * otherwise (quietly returns the code for the caller to judge). */
int unique_round_trip(ipc_client_t *client, const unsigned char *req, size_t size,
                      const unsigned char *expected, int timeout_ms, const char *who, int *wrong)
{
    const uint8_t *resp = NULL;
    size_t resp_size = 0;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_client_request(client, req, size, &resp, &resp_size, timeout_ms, &err);
    *wrong = 0;
    if (rc == IPC_OK &&
        (resp_size != size || memcmp(resp, expected, size) != 0 || resp[resp_size] != 0)) {
        *wrong = 1;
        note("      %s: wrong answer to a %lu-byte request (%lu bytes back, starting \"%.24s\")",
             who, (unsigned long)size, (unsigned long)resp_size, (const char *)req);
    }
    ipc_error_clear(&err);
    return rc;
}
