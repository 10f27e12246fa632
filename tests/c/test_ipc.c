/*
 * C-level tests of the public API in csrc/ipc.h, over the real transport.
 *
 * Build (POSIX), from the repository root:
 *   cc -std=c99 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -o test_ipc \
 *      tests/c/test_ipc.c csrc/ipc*.c -lpthread
 * Build (Windows, mingw-w64):
 *   x86_64-w64-mingw32-gcc -std=c99 -Wall -Wextra -o test_ipc.exe \
 *      tests/c/test_ipc.c csrc/ipc*.c -ladvapi32
 * (every .c file of csrc/; tests/test_c_core.py does this with sanitizers)
 *
 * Run:  ./test_ipc [TEST_NAME_SUBSTRING...]
 * The last line of the output is "N passed, N failed"; the exit status is
 * nonzero when any check failed. Set IPCFAST_TEST_VERBOSE=1 to print the
 * core's log messages.
 *
 * The program runs itself as a second process for the cross-process tests
 * (first argument --child-client / --child-client-hang / --child-server /
 * --child-server-hold / --child-server-one / --child-legacy-server /
 * --child-new-client / --child-hammer, second the server name).
 * The few OS-specific bits (sleeping, clock, threads, locks, processes) sit
 * behind the t_* helpers below; the transport is the library's business.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* so plain `cc -std=c99` builds it too */
#endif
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0600
#endif
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#else
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#endif

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/ipc.h"

/* ======================================================================
 * Portability helpers
 * ====================================================================== */

static void t_sleep_ms(int ms);
static long long t_now_ms(void);
static long t_getpid(void);

typedef void (*t_thread_fn)(void *arg);
typedef struct t_thread t_thread;
static t_thread *t_thread_start(t_thread_fn fn, void *arg);
static void t_thread_join(t_thread *thread);

typedef struct t_mutex t_mutex;
static t_mutex *t_mutex_new(void);
static void t_mutex_free(t_mutex *mutex);
static void t_mutex_lock(t_mutex *mutex);
static void t_mutex_unlock(t_mutex *mutex);

typedef struct t_proc t_proc;
/* Runs this program again as `self MODE NAME`; NULL on failure. */
static t_proc *t_proc_spawn(const char *mode, const char *name);
/* Waits at most timeout_ms; returns the exit code, or -1 on timeout (the
 * process is then killed) or abnormal end. Frees proc. */
static int t_proc_wait(t_proc *proc, int timeout_ms);
/* Kills at once (SIGKILL / TerminateProcess) without cleanup. */
static void t_proc_kill(t_proc *proc);

#if defined(_WIN32)

/* Nonzero when running under wine (which lacks a few Windows guarantees). */
static int t_under_wine(void) {
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    return ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

static void t_sleep_ms(int ms) { Sleep((DWORD)(ms < 0 ? 0 : ms)); }
static long long t_now_ms(void) { return (long long)GetTickCount64(); }
static long t_getpid(void) { return (long)GetCurrentProcessId(); }

struct t_thread {
    HANDLE handle;
    t_thread_fn fn;
    void *arg;
};

static DWORD WINAPI t_thread_main(LPVOID param) {
    t_thread *thread = (t_thread *)param;
    thread->fn(thread->arg);
    return 0;
}

static t_thread *t_thread_start(t_thread_fn fn, void *arg) {
    t_thread *thread = (t_thread *)calloc(1, sizeof *thread);
    if (!thread) return NULL;
    thread->fn = fn;
    thread->arg = arg;
    thread->handle = CreateThread(NULL, 0, t_thread_main, thread, 0, NULL);
    if (!thread->handle) {
        free(thread);
        return NULL;
    }
    return thread;
}

static void t_thread_join(t_thread *thread) {
    if (!thread) return;
    WaitForSingleObject(thread->handle, INFINITE);
    CloseHandle(thread->handle);
    free(thread);
}

struct t_mutex {
    CRITICAL_SECTION cs;
};

static t_mutex *t_mutex_new(void) {
    t_mutex *mutex = (t_mutex *)calloc(1, sizeof *mutex);
    if (mutex) InitializeCriticalSection(&mutex->cs);
    return mutex;
}
static void t_mutex_free(t_mutex *mutex) {
    if (!mutex) return;
    DeleteCriticalSection(&mutex->cs);
    free(mutex);
}
static void t_mutex_lock(t_mutex *mutex) { EnterCriticalSection(&mutex->cs); }
static void t_mutex_unlock(t_mutex *mutex) { LeaveCriticalSection(&mutex->cs); }

struct t_proc {
    HANDLE process;
};

static t_proc *t_proc_spawn(const char *mode, const char *name) {
    char exe[MAX_PATH];
    char cmd[MAX_PATH + 512];
    STARTUPINFOA si;
    PROCESS_INFORMATION pi;
    t_proc *proc;
    DWORD n = GetModuleFileNameA(NULL, exe, (DWORD)sizeof exe);
    if (n == 0 || n >= sizeof exe) return NULL;
    snprintf(cmd, sizeof cmd, "\"%s\" %s %s", exe, mode, name);
    memset(&si, 0, sizeof si);
    si.cb = sizeof si;
    memset(&pi, 0, sizeof pi);
    fflush(stdout);
    fflush(stderr);
    if (!CreateProcessA(exe, cmd, NULL, NULL, TRUE, 0, NULL, NULL, &si, &pi)) return NULL;
    CloseHandle(pi.hThread);
    proc = (t_proc *)calloc(1, sizeof *proc);
    if (!proc) {
        TerminateProcess(pi.hProcess, 99);
        CloseHandle(pi.hProcess);
        return NULL;
    }
    proc->process = pi.hProcess;
    return proc;
}

static int t_proc_wait(t_proc *proc, int timeout_ms) {
    DWORD code = 0;
    int result = -1;
    if (!proc) return -1;
    if (WaitForSingleObject(proc->process, (DWORD)timeout_ms) != WAIT_OBJECT_0) {
        TerminateProcess(proc->process, 99);
        WaitForSingleObject(proc->process, INFINITE);
    } else if (GetExitCodeProcess(proc->process, &code)) {
        result = (int)code;
    }
    CloseHandle(proc->process);
    free(proc);
    return result;
}

static void t_proc_kill(t_proc *proc) {
    if (proc) TerminateProcess(proc->process, 137);
}

#else /* POSIX */

static void t_sleep_ms(int ms) {
    struct timespec ts;
    if (ms <= 0) return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static long long t_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long t_getpid(void) { return (long)getpid(); }

struct t_thread {
    pthread_t handle;
    t_thread_fn fn;
    void *arg;
};

static void *t_thread_main(void *param) {
    t_thread *thread = (t_thread *)param;
    thread->fn(thread->arg);
    return NULL;
}

static t_thread *t_thread_start(t_thread_fn fn, void *arg) {
    t_thread *thread = (t_thread *)calloc(1, sizeof *thread);
    if (!thread) return NULL;
    thread->fn = fn;
    thread->arg = arg;
    if (pthread_create(&thread->handle, NULL, t_thread_main, thread) != 0) {
        free(thread);
        return NULL;
    }
    return thread;
}

static void t_thread_join(t_thread *thread) {
    if (!thread) return;
    pthread_join(thread->handle, NULL);
    free(thread);
}

struct t_mutex {
    pthread_mutex_t m;
};

static t_mutex *t_mutex_new(void) {
    t_mutex *mutex = (t_mutex *)calloc(1, sizeof *mutex);
    if (mutex && pthread_mutex_init(&mutex->m, NULL) != 0) {
        free(mutex);
        return NULL;
    }
    return mutex;
}
static void t_mutex_free(t_mutex *mutex) {
    if (!mutex) return;
    pthread_mutex_destroy(&mutex->m);
    free(mutex);
}
static void t_mutex_lock(t_mutex *mutex) { pthread_mutex_lock(&mutex->m); }
static void t_mutex_unlock(t_mutex *mutex) { pthread_mutex_unlock(&mutex->m); }

static const char *g_self_path = NULL;

struct t_proc {
    pid_t pid;
};

static t_proc *t_proc_spawn(const char *mode, const char *name) {
    t_proc *proc = (t_proc *)calloc(1, sizeof *proc);
    pid_t pid;
    if (!proc) return NULL;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        free(proc);
        return NULL;
    }
    if (pid == 0) {
        char *args[4];
        args[0] = (char *)g_self_path;
        args[1] = (char *)mode;
        args[2] = (char *)name;
        args[3] = NULL;
        execv(g_self_path, args);
        _exit(127);
    }
    proc->pid = pid;
    return proc;
}

static int t_proc_wait(t_proc *proc, int timeout_ms) {
    long long deadline = t_now_ms() + timeout_ms;
    int status = 0;
    int result = -1;
    if (!proc) return -1;
    for (;;) {
        pid_t r = waitpid(proc->pid, &status, WNOHANG);
        if (r == proc->pid) {
            if (WIFEXITED(status)) result = WEXITSTATUS(status);
            break;
        }
        if (r < 0 && errno != EINTR) break;
        if (t_now_ms() > deadline) {
            kill(proc->pid, SIGKILL);
            while (waitpid(proc->pid, &status, 0) < 0 && errno == EINTR) {
            }
            break;
        }
        t_sleep_ms(10);
    }
    free(proc);
    return result;
}

static void t_proc_kill(t_proc *proc) {
    if (proc) kill(proc->pid, SIGKILL);
}

#endif

/* ======================================================================
 * Test harness
 * ====================================================================== */

static t_mutex *g_harness_lock;
static int g_passed;
static int g_failed;
static const char *g_current_test = "";
static int g_child_mode = 0;   /* nonzero in a child process */
static volatile long long g_test_deadline = 0;  /* guarded by g_harness_lock */
static int g_watchdog_stop = 0;                 /* guarded by g_harness_lock */

static void note(const char *format, ...) {
    va_list args;
    va_start(args, format);
    t_mutex_lock(g_harness_lock);
    if (g_child_mode) fputs("    [child] ", stdout);
    vprintf(format, args);
    fputc('\n', stdout);
    fflush(stdout);
    t_mutex_unlock(g_harness_lock);
    va_end(args);
}

static int check_impl(int ok, const char *expr, const char *file, int line) {
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

static int check_rc_impl(int got, int expected, const ipc_error *err, const char *expr,
                         const char *file, int line) {
    if (got == expected) return check_impl(1, expr, file, line);
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

#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, __FILE__, __LINE__)
#define CHECK_RC(expr, expected, err) \
    check_rc_impl((expr), (expected), (err), #expr, __FILE__, __LINE__)
/* Checks that a duration in ms lies in [lo, hi]. */
#define CHECK_MS(elapsed, lo, hi)                                                         \
    do {                                                                                  \
        long long e_ = (elapsed);                                                         \
        if (!check_impl(e_ >= (lo) && e_ <= (hi), #elapsed " in [" #lo ", " #hi "]",      \
                        __FILE__, __LINE__))                                              \
            note("      (took %lld ms)", e_);                                             \
    } while (0)

static int failures_so_far(void) {
    int n;
    t_mutex_lock(g_harness_lock);
    n = g_failed;
    t_mutex_unlock(g_harness_lock);
    return n;
}

static void set_deadline(long long deadline) {
    t_mutex_lock(g_harness_lock);
    g_test_deadline = deadline;
    t_mutex_unlock(g_harness_lock);
}

/* Ends the run with a clear message if one test hangs. */
static void watchdog_main(void *arg) {
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
        if (stop) return;
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

static t_mutex *g_log_lock;
static int g_log_count;
static int g_log_bad_level;
static int g_log_verbose;

static void test_log_fn(void *user_data, int level, const char *message) {
    int *counter = (int *)user_data;
    t_mutex_lock(g_log_lock);
    if (counter) (*counter)++;
    g_log_count++;
    if (level != IPC_LOG_DEBUG && level != IPC_LOG_INFO && level != IPC_LOG_WARNING &&
        level != IPC_LOG_ERROR)
        g_log_bad_level++;
    if (!message) g_log_bad_level++;
    t_mutex_unlock(g_log_lock);
    if (g_log_verbose) note("      log %d: %s", level, message ? message : "(null)");
}

/* ---- names and data ---------------------------------------------------- */

static int g_name_counter = 0;

/* A plain name unique to this process and call. */
static void make_name(char *out, size_t size, const char *tag) {
    snprintf(out, size, "ipcfast-ct-%ld-%s-%d", t_getpid(), tag, g_name_counter++);
}

static unsigned fill_random(unsigned char *buf, size_t size, unsigned seed) {
    unsigned x = seed * 2654435761u + 0x9E3779B9u;
    size_t i;
    if (x == 0) x = 1;
    for (i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)(x >> 11);
        if (i % 97 == 0) buf[i] = 0; /* plenty of NUL bytes */
    }
    return x;
}

/* ======================================================================
 * Server handlers used by the tests
 * ====================================================================== */

typedef struct srv_ctx {
    t_mutex *lock;
    int requests;
    int disconnects;
    int bad_disconnect_args;
    int last_respond_rc;
    int twice_rc;
    int quit;
    int legacy_capacity;
    int legacy_zeroed;
    int legacy_bad_disconnect;
} srv_ctx;

static void ctx_init(srv_ctx *ctx) {
    memset(ctx, 0, sizeof *ctx);
    ctx->lock = t_mutex_new();
    ctx->last_respond_rc = -1;
    ctx->twice_rc = -1;
    ctx->legacy_capacity = -1;
    ctx->legacy_zeroed = -1;
}

static void ctx_free(srv_ctx *ctx) { t_mutex_free(ctx->lock); }

static int ctx_get(srv_ctx *ctx, const int *field) {
    int v;
    t_mutex_lock(ctx->lock);
    v = *field;
    t_mutex_unlock(ctx->lock);
    return v;
}

static void ctx_set(srv_ctx *ctx, int *field, int value) {
    t_mutex_lock(ctx->lock);
    *field = value;
    t_mutex_unlock(ctx->lock);
}

static void ctx_add(srv_ctx *ctx, int *field, int delta) {
    t_mutex_lock(ctx->lock);
    *field += delta;
    t_mutex_unlock(ctx->lock);
}

/* Waits up to timeout_ms for *field to reach at least value. */
static int ctx_wait_for(srv_ctx *ctx, const int *field, int value, int timeout_ms) {
    long long deadline = t_now_ms() + timeout_ms;
    for (;;) {
        if (ctx_get(ctx, field) >= value) return 1;
        if (t_now_ms() > deadline) return 0;
        t_sleep_ms(5);
    }
}

/* Waits up to timeout_ms for *field to equal value (handlers store their
 * results after the client may already have its answer). */
static int ctx_wait_equal(srv_ctx *ctx, const int *field, int value, int timeout_ms) {
    long long deadline = t_now_ms() + timeout_ms;
    for (;;) {
        if (ctx_get(ctx, field) == value) return 1;
        if (t_now_ms() > deadline) return 0;
        t_sleep_ms(5);
    }
}

static int on_disconnect(srv_ctx *ctx, const uint8_t *request, size_t size) {
    if (request) return 0;
    t_mutex_lock(ctx->lock);
    ctx->disconnects++;
    if (size != 0) ctx->bad_disconnect_args++;
    t_mutex_unlock(ctx->lock);
    return 1;
}

/* Answers each request with its bytes XOR 0x5C, built in ipc_call_buffer. */
static void xor_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size) {
    srv_ctx *ctx = (srv_ctx *)user_data;
    uint8_t *out;
    size_t i;
    if (on_disconnect(ctx, request, size)) return;
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
    for (i = 0; i < size; i++) out[i] = (uint8_t)(request[i] ^ 0x5C);
    ctx_set(ctx, &ctx->last_respond_rc, ipc_call_respond(call, out, size, NULL));
}

static int starts_with(const uint8_t *data, size_t size, const char *prefix) {
    size_t n = strlen(prefix);
    return size >= n && memcmp(data, prefix, n) == 0;
}

/* Text commands; anything else is echoed as is. */
static void cmd_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size) {
    srv_ctx *ctx = (srv_ctx *)user_data;
    const char *text = (const char *)request;
    if (on_disconnect(ctx, request, size)) return;
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
static void legacy_handler(char const *request, void *user_data, char *response,
                           size_t capacity) {
    srv_ctx *ctx = (srv_ctx *)user_data;
    if (!request) {
        t_mutex_lock(ctx->lock);
        ctx->disconnects++;
        if (response != NULL || capacity != 0) ctx->legacy_bad_disconnect++;
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
static ipc_server_t *open_server(const char *name, const ipc_server_options *options,
                                 ipc_handler_fn handler, srv_ctx *ctx) {
    ipc_server_t *server = NULL;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_server_open(&server, name, options, handler, ctx, &err);
    if (!CHECK_RC(rc, IPC_OK, &err)) server = NULL;
    ipc_error_clear(&err);
    return server;
}

static ipc_client_t *open_client(const char *name, const ipc_client_options *options,
                                 int timeout_ms) {
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_client_open(&client, name, options, timeout_ms, &err);
    if (!CHECK_RC(rc, IPC_OK, &err)) client = NULL;
    ipc_error_clear(&err);
    return client;
}

/* One request whose response must equal `expected`. */
static int expect_response(ipc_client_t *client, const void *request, size_t size,
                           const void *expected, size_t expected_size) {
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

static int expect_text(ipc_client_t *client, const char *request, const char *expected) {
    return expect_response(client, request, strlen(request), expected, strlen(expected));
}

/* One request that must fail with `expected`; returns the message (to free) or NULL. */
static char *expect_failure(ipc_client_t *client, const void *request, size_t size,
                            int timeout_ms, int expected) {
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

/* ======================================================================
 * Tests
 * ====================================================================== */

static const uint8_t DEFAULT_HS[8] = {0x00, 0xf7, 0x83, 0xca, 0x2a, 0x31, 0x7e, 0x38};

static void test_codec(void) {
    uint8_t buf[16];
    uint8_t ver = 0;
    uint8_t reply[9];
    uint8_t req[9];
    ipc_packet_header h;
    size_t n;
    int i;

    CHECK(memcmp(IPC_DEFAULT_HANDSHAKE, DEFAULT_HS, 8) == 0);

    /* client request */
    n = ipc_handshake_encode_request(req, DEFAULT_HS, 1);
    CHECK(n == 9);
    CHECK(memcmp(req, "\x00\xf7\x83\xca\x2a\x31\x7e\x38\x01", 9) == 0);
    for (i = 0; i < 9; i++)
        CHECK(ipc_handshake_check_request(req, (size_t)i, DEFAULT_HS, &ver) ==
              IPC_VERDICT_NEED_MORE);
    ver = 0;
    CHECK(ipc_handshake_check_request(req, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 1);
    CHECK(ipc_handshake_check_request((const uint8_t *)"G", 1, DEFAULT_HS, &ver) ==
          IPC_VERDICT_FOREIGN);
    CHECK(ipc_handshake_check_request((const uint8_t *)"GET / HTTP/1.0", 9, DEFAULT_HS,
                                      &ver) == IPC_VERDICT_FOREIGN);
    memcpy(buf, req, 9);
    buf[7] ^= 1;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    CHECK(ipc_handshake_check_request(buf, 8, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, req, 9);
    buf[2] ^= 0x80;
    CHECK(ipc_handshake_check_request(buf, 3, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, req, 9);
    buf[8] = 0;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_BAD_VERSION);
    buf[8] = 255;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 255);

    /* server reply */
    n = ipc_handshake_encode_reply(reply, DEFAULT_HS, 1);
    CHECK(n == 9);
    CHECK(memcmp(reply, "\x5a\xad\xd9\x90\x70\x6b\x24\x62\x01", 9) == 0);
    for (i = 0; i < 9; i++)
        CHECK(ipc_handshake_check_reply(reply, (size_t)i, DEFAULT_HS, &ver) ==
              IPC_VERDICT_NEED_MORE);
    ver = 0;
    CHECK(ipc_handshake_check_reply(reply, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 1);
    CHECK(ipc_handshake_check_reply((const uint8_t *)"\xff", 1, DEFAULT_HS, &ver) ==
          IPC_VERDICT_FOREIGN);
    CHECK(ipc_handshake_check_reply(req, 9, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    CHECK(ipc_handshake_check_reply(req, 1, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, reply, 9);
    buf[8] = 0;
    CHECK(ipc_handshake_check_reply(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_BAD_VERSION);

    /* packet headers */
    n = ipc_packet_header_encode(buf, IPC_PACKET_REQUEST, 0x01020304u, 0);
    CHECK(n == 5);
    CHECK(memcmp(buf, "\x01\x04\x03\x02\x01", 5) == 0);
    memset(&h, 0xAB, sizeof h);
    CHECK(ipc_packet_header_parse(buf, 5, 0xFFFFFFFFu, 1, &h) == IPC_VERDICT_OK);
    CHECK(h.type == 1 && h.version == 0 && h.length == 0x01020304u && h.header_size == 5);
    for (i = 0; i < 5; i++)
        CHECK(ipc_packet_header_parse(buf, (size_t)i, 0xFFFFFFFFu, 1, &h) ==
              IPC_VERDICT_NEED_MORE);
    n = ipc_packet_header_encode(buf, IPC_PACKET_RESPONSE, 7, 1);
    CHECK(n == 6);
    CHECK(memcmp(buf, "\x42\x01\x07\x00\x00\x00", 6) == 0);
    CHECK(ipc_packet_header_parse(buf, 6, 100, 1, &h) == IPC_VERDICT_OK);
    CHECK(h.type == 2 && h.version == 1 && h.length == 7 && h.header_size == 6);
    for (i = 0; i < 6; i++)
        CHECK(ipc_packet_header_parse(buf, (size_t)i, 100, 1, &h) == IPC_VERDICT_NEED_MORE);
    CHECK(ipc_packet_header_parse(buf, 6, 6, 1, &h) == IPC_VERDICT_TOO_LARGE);
    CHECK(h.length == 7);
    buf[1] = 2;
    CHECK(ipc_packet_header_parse(buf, 2, 100, 1, &h) == IPC_VERDICT_BAD_VERSION);
    CHECK(ipc_packet_header_parse(buf, 6, 100, 2, &h) == IPC_VERDICT_OK);
    buf[1] = 0;
    CHECK(ipc_packet_header_parse(buf, 6, 100, 2, &h) == IPC_VERDICT_BAD_VERSION);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x81", 1, 100, 1, &h) ==
          IPC_VERDICT_RESERVED_BIT);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x00", 1, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x08", 1, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x3f\x00\x00\x00\x00", 5, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x01\xff\xff\xff\xff", 5,
                                  IPC_DEFAULT_MAX_MESSAGE, 1, &h) == IPC_VERDICT_TOO_LARGE);
    CHECK(h.length == 0xFFFFFFFFu);
    for (i = IPC_PACKET_REQUEST; i <= IPC_PACKET_CANCEL; i++) {
        n = ipc_packet_header_encode(buf, (uint8_t)i, 0, 0);
        CHECK(n == 5 && ipc_packet_header_parse(buf, n, 0, 1, &h) == IPC_VERDICT_OK &&
              h.type == i && h.length == 0);
    }

    /* names */
    CHECK(strcmp(ipc_verdict_name(IPC_VERDICT_TOO_LARGE), "IPC_VERDICT_TOO_LARGE") == 0);
    CHECK(strcmp(ipc_verdict_name(IPC_VERDICT_OK), "IPC_VERDICT_OK") == 0);
    CHECK(ipc_verdict_name(99) != NULL && ipc_verdict_name(-1) != NULL);
    CHECK(strcmp(ipc_result_name(IPC_OK), "IPC_OK") == 0);
    CHECK(strcmp(ipc_result_name(IPC_E_TIMEOUT), "IPC_E_TIMEOUT") == 0);
    CHECK(strcmp(ipc_result_name(IPC_E_SYSTEM), "IPC_E_SYSTEM") == 0);
    CHECK(ipc_result_name(99) != NULL && ipc_result_name(-1) != NULL);
    for (i = IPC_OK; i <= IPC_E_SYSTEM; i++)
        CHECK(strncmp(ipc_result_name(i), "IPC_", 4) == 0);
}

static void test_options_and_nulls(void) {
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

static void test_server_open_stop(void) {
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
    CHECK_RC(ipc_server_open(&server, "", NULL, cmd_handler, &ctx, &err), IPC_E_INVALID,
             &err);
    CHECK(server == NULL);
    ipc_error_clear(&err);
    CHECK_RC(ipc_server_open(&server, name, NULL, NULL, &ctx, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);
    ctx_free(&ctx);
}

static void test_round_trips(void) {
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
        if (!server) continue;
        client = open_client(name, NULL, 5000);
        if (client) {
            CHECK(ipc_client_version(client) == 1);
            for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                size_t size = sizes[i];
                unsigned char *req = (unsigned char *)malloc(size + 1);
                unsigned char *expected = (unsigned char *)malloc(size + 1);
                fill_random(req, size, (unsigned)(size + 17));
                if (size) req[0] = 0xEE; /* never a cmd_handler command */
                for (j = 0; j < size; j++) expected[j] = pass ? req[j] : (req[j] ^ 0x5C);
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

typedef struct worker_arg {
    const char *name;
    int index;
    int iterations;
    int ok_count;
} worker_arg;

static void worker_main(void *param) {
    worker_arg *arg = (worker_arg *)param;
    ipc_client_t *client = open_client(arg->name, NULL, 10000);
    int i;
    size_t j;
    if (!client) return;
    for (i = 0; i < arg->iterations; i++) {
        unsigned seed = (unsigned)(arg->index * 100003 + i);
        size_t size = (size_t)((seed * 7919u) % 65536u) + (size_t)arg->index;
        unsigned char *req = (unsigned char *)malloc(size + 8);
        unsigned char *expected = (unsigned char *)malloc(size + 8);
        fill_random(req, size, seed);
        req[0] = (unsigned char)arg->index; /* each thread's own content */
        for (j = 0; j < size; j++) expected[j] = (unsigned char)(req[j] ^ 0x5C);
        if (expect_response(client, req, size, expected, size)) arg->ok_count++;
        free(req);
        free(expected);
    }
    ipc_client_close(client);
}

/* Is a manual-dispatch ready handle signalled right now? */
static int ready_now(intptr_t handle) {
#ifdef _WIN32
    return WaitForSingleObject((HANDLE)handle, 0) == WAIT_OBJECT_0;
#else
    struct pollfd p;
    p.fd = (int)handle;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, 0) == 1;
#endif
}

typedef struct next_call_arg {
    ipc_server_t *server;
    int rc;
} next_call_arg;

static void blocked_next_call_main(void *param) {
    next_call_arg *arg = (next_call_arg *)param;
    ipc_call *call = NULL;
    const uint8_t *request;
    size_t size;
    arg->rc = ipc_server_next_call(arg->server, &call, &request, &size, -1, NULL);
}

/* MANUAL dispatch: requests queue up until this thread takes and answers
 * them; the ready handle tracks the queue; stop ends waiting and queued calls. */
static void test_manual_dispatch(void) {
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
    if (!server) return;
    CHECK(ipc_server_ready_handle(server) != -1);
    CHECK(!ready_now(ipc_server_ready_handle(server)));
    {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        CHECK_RC(ipc_server_next_call(server, &call, &request, &size, 0, &err), IPC_E_TIMEOUT, &err);
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
        size_t size, j;
        uint8_t *out;
        if (ipc_server_next_call(server, &call, &request, &size, 200, NULL) != IPC_OK)
            continue;
        out = (uint8_t *)ipc_call_buffer(call, size);
        CHECK(out != NULL);
        if (out) {
            for (j = 0; j < size; j++) out[j] = (uint8_t)(request[j] ^ 0x5C);
            CHECK_RC(ipc_call_respond(call, out, size, &err), IPC_OK, &err);
            ipc_error_clear(&err);
        }
        ipc_call_finish(call);
        handled++;
    }
    for (i = 0; i < N; i++) {
        t_thread_join(threads[i]);
        CHECK(args[i].ok_count == ITERATIONS);
    }
    CHECK(handled == N * ITERATIONS);
    CHECK(!ready_now(ipc_server_ready_handle(server)));

    /* A call finished without an answer: the client gets an ERROR. A
     * request left queued when the server stops: the client sees the close. */
    {
        ipc_client_t *client = open_client(name, NULL, 5000);
        ipc_call *call = NULL;
        const uint8_t *request, *response;
        size_t size, response_size;
        if (client) {
            CHECK_RC(ipc_client_write(client, "q", 1, 5000, &err), IPC_OK, &err);
            CHECK_RC(ipc_server_next_call(server, &call, &request, &size, 5000, &err), IPC_OK, &err);
            CHECK(!ready_now(ipc_server_ready_handle(server)));
            if (call) ipc_call_finish(call);
            CHECK_RC(ipc_client_read(client, &response, &response_size, 5000, &err), IPC_E_REMOTE, &err);
            ipc_error_clear(&err);
            CHECK_RC(ipc_client_write(client, "left", 4, 5000, &err), IPC_OK, &err);
            deadline = t_now_ms() + 5000;
            while (!ready_now(ipc_server_ready_handle(server)) && t_now_ms() < deadline) t_sleep_ms(5);
            CHECK(ready_now(ipc_server_ready_handle(server)));
        }
        ipc_server_stop(server);
        server = NULL;
        if (client) {
            CHECK_RC(ipc_client_read(client, &response, &response_size, 5000, &err), IPC_E_CLOSED, &err);
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

static void test_concurrent_clients(void) {
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

static void test_bad_options(void) {
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

static void race_main(void *param) {
    race_arg *arg = (race_arg *)param;
    arg->rc = ipc_server_open(&arg->server, arg->name, NULL, cmd_handler, arg->ctx, NULL);
}

/* Servers starting at the same moment: exactly one wins the name. */
static void test_racing_servers(void) {
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
        for (i = 0; i < N; i++) t_thread_join(threads[i]);
        for (i = 0; i < N; i++) {
            if (args[i].rc == IPC_OK) winners++;
            if (args[i].rc == IPC_E_ADDRESS_IN_USE) in_use++;
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

static void test_remote_errors(void) {
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

static void test_pipelining_and_connection(void) {
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

static void inuse_main(void *param) {
    inuse_arg *arg = (inuse_arg *)param;
    const uint8_t *resp;
    size_t resp_size;
    arg->rc = ipc_client_request(arg->client, "sleep:600", 9, &resp, &resp_size, 10000, NULL);
}

static void test_client_in_use(void) {
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
        CHECK_RC(ipc_client_request(client, "x", 1, &resp, &resp_size, 5000, &err),
                 IPC_E_IN_USE, &err);
        ipc_error_clear(&err);
        t_thread_join(thread);
        CHECK_RC(arg.rc, IPC_OK, NULL);
        expect_text(client, "after", "after"); /* the connection was not disturbed */
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

typedef struct call_arg {
    ipc_client_t *client;
    int64_t rc;
    ipc_client_reply reply;
} call_arg;

static void call_main(void *param) {
    call_arg *arg = (call_arg *)param;
    arg->rc = ipc_client_call(arg->client, "sleep:1500", 10, 20000, &arg->reply);
}

/* ipc_client_shutdown / ipc_client_close from another thread end a call in
 * progress at once (IPC_E_CLOSED) and wait for it to leave before closing. */
static void test_client_shutdown_during_call(void) {
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
            ipc_client_shutdown(client);   /* idempotent */
            ipc_client_close(client);
        } else {
            ipc_client_close(client);      /* frees once the call has left */
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
    int stop_at;              /* nonzero: interrupt on this call */
    ipc_client_t *shut_down;  /* non-NULL: shut this client down from the hook */
} hook_state;

static int count_hook(void *user_data) {
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
static void test_client_interrupt_hook(void) {
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
        CHECK_RC(ipc_client_request(client, "sleep:300", 9, &resp, &resp_size, 5000, &err),
                 IPC_OK, &err);
        CHECK(state.calls >= 3);
        /* One that says "stop": IPC_E_INTERRUPTED, then the connection is gone. */
        state.calls = 0;
        state.stop_at = 3;
        started = t_now_ms();
        CHECK_RC(ipc_client_request(client, "sleep:1000", 10, &resp, &resp_size, 20000, &err),
                 IPC_E_INTERRUPTED, &err);
        CHECK(t_now_ms() - started < 2000);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_request(client, "x", 1, &resp, &resp_size, 1000, &err),
                 IPC_E_CLOSED, &err);
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
static void test_client_call_reply(void) {
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
        CHECK(ipc_client_call(client, "big:240", 7, 5000, &reply) == IPC_REPLY_INLINE_SIZE);
        CHECK(reply.data == reply.inline_data && reply.size == IPC_REPLY_INLINE_SIZE);
        CHECK(reply.data[IPC_REPLY_INLINE_SIZE] == 0);
        CHECK(ipc_client_call(client, "big:241", 7, 5000, &reply) == 241);
        CHECK(reply.data != reply.inline_data && reply.data[241] == 0);
        CHECK(ipc_client_call(client, "fail:no", 7, 5000, &reply) == -IPC_E_REMOTE);
        CHECK(reply.error.message != NULL && strcmp(reply.error.message, "no") == 0);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(client, NULL, 3, 5000, &reply) == -IPC_E_INVALID);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(NULL, "x", 1, 5000, &reply) == -IPC_E_INVALID);
        ipc_error_clear(&reply.error);
        CHECK(ipc_client_call(client, "", 0, 5000, &reply) == 0);
        ipc_client_forget(client);   /* what a fork child does; frees it */
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

static void test_too_large_response(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *small, *other;
    ipc_client_options co;
    ipc_server_options so;
    char *message;
    ctx_init(&ctx);

    /* response above the client's max_message */
    make_name(name, sizeof name, "bigresp");
    server = open_server(name, NULL, cmd_handler, &ctx);
    ipc_client_options_init(&co);
    co.max_message = 1024;
    small = server ? open_client(name, &co, 5000) : NULL;
    if (small) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        CHECK_RC(ipc_client_request(small, "big:1024", 8, &resp, &resp_size, 5000, &err),
                 IPC_OK, &err);
        CHECK(resp_size == 1024);
        ipc_error_clear(&err);
        message = expect_failure(small, "big:1025", 8, 5000, IPC_E_TOO_LARGE);
        free(message);
        message = expect_failure(small, "again", 5, 5000, IPC_E_CLOSED);
        free(message);
        ipc_client_close(small);
        other = open_client(name, NULL, 5000);
        if (other) {
            const uint8_t *r;
            size_t rs;
            CHECK_RC(ipc_client_request(other, "big:200000", 10, &r, &rs, 5000, &err), IPC_OK,
                     &err);
            CHECK(rs == 200000 && r[0] == 'B' && r[199999] == 'B');
            ipc_error_clear(&err);
            ipc_client_close(other);
        }
    }
    ipc_server_stop(server);

    /* response above the server's max_message: not sent; ipc_call_respond
     * returns IPC_E_TOO_LARGE and the client gets an ERROR packet that the
     * core marks as "too large", so it reports IPC_E_TOO_LARGE (and, like
     * every TOO_LARGE, closes its connection) */
    make_name(name, sizeof name, "bigresp2");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    server = open_server(name, &so, cmd_handler, &ctx);
    other = server ? open_client(name, NULL, 5000) : NULL;
    if (other) {
        {
            const uint8_t *r;
            size_t rs;
            ipc_error e = {0, 0, NULL};
            CHECK_RC(ipc_client_request(other, "big:4096", 8, &r, &rs, 5000, &e), IPC_OK, &e);
            CHECK(rs == 4096); /* exactly the limit is fine */
            ipc_error_clear(&e);
        }
        message = expect_failure(other, "big:4097", 8, 5000, IPC_E_TOO_LARGE);
        CHECK(message && strstr(message, "4097") && strstr(message, "4096"));
        free(message);
        CHECK(ctx_wait_equal(&ctx, &ctx.last_respond_rc, IPC_E_TOO_LARGE, 3000));
        ipc_client_close(other);
        other = open_client(name, NULL, 5000);
        if (other) {
            expect_text(other, "usable", "usable");
            ipc_client_close(other);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

static void test_too_large_request(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_t *client;
    unsigned char *data;
    size_t big = 1024 * 1024;
    ctx_init(&ctx);
    make_name(name, sizeof name, "bigreq");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    server = open_server(name, &so, cmd_handler, &ctx);
    data = (unsigned char *)malloc(big);
    memset(data, 'r', big);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        long long t0;
        int rc;
        expect_response(client, data, 4096, data, 4096); /* exactly the limit */
        t0 = t_now_ms();
        rc = ipc_client_request(client, data, 4097, &resp, &resp_size, 10000, &err);
        CHECK_MS(t_now_ms() - t0, 0, 3000);
        /* the server's "too large" ERROR packet becomes IPC_E_TOO_LARGE */
        CHECK_RC(rc, IPC_E_TOO_LARGE, &err);
        CHECK(err.message && strstr(err.message, "4097") && strstr(err.message, "4096"));
        ipc_error_clear(&err);
        /* the server closed this connection */
        rc = ipc_client_request(client, "x", 1, &resp, &resp_size, 3000, &err);
        CHECK_RC(rc, IPC_E_CLOSED, &err);
        ipc_error_clear(&err);
        ipc_client_close(client);
    }
    /* larger than the socket buffers: the writer must get an error, not hang or die */
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        long long t0 = t_now_ms();
        int rc = ipc_client_request(client, data, big, &resp, &resp_size, 10000, &err);
        CHECK_MS(t_now_ms() - t0, 0, 3000);
        /* the write fails half-way, but the explanation is waiting to be read */
        CHECK_RC(rc, IPC_E_TOO_LARGE, &err);
        CHECK(err.message && strstr(err.message, "1048576") && strstr(err.message, "4096"));
        ipc_error_clear(&err);
        ipc_client_close(client);
    }
    /* the server still serves others */
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        expect_text(client, "hello", "hello");
        ipc_client_close(client);
    }
    free(data);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

static void test_address_in_use(void) {
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

static void test_name_too_long(void) {
    char name[400];
    ipc_server_t *server = NULL;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    memset(name, 'n', 399);
    name[399] = 0;
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, NULL, &err),
             IPC_E_NAME_TOO_LONG, &err);
    CHECK(server == NULL);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 200, &err), IPC_E_NAME_TOO_LONG, &err);
    CHECK(client == NULL);
    ipc_error_clear(&err);
}

static void test_not_found(void) {
    char name[96];
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    long long t0;
    make_name(name, sizeof name, "missing");
    t0 = t_now_ms();
    CHECK_RC(ipc_client_open(&client, name, NULL, 300, &err), IPC_E_NOT_FOUND, &err);
    CHECK_MS(t_now_ms() - t0, 250, 1500);
    CHECK(client == NULL);
    CHECK(err.message != NULL);
    ipc_error_clear(&err);
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

static void late_server_main(void *param) {
    late_server_arg *arg = (late_server_arg *)param;
    t_sleep_ms(300);
    arg->server = open_server(arg->name, NULL, cmd_handler, arg->ctx);
}

static void test_connect_retries_until_server_starts(void) {
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
    client = open_client(name, NULL, 5000);
    if (client) {
        expect_text(client, "made it", "made it");
        ipc_client_close(client);
    }
    t_thread_join(thread);
    ipc_server_stop(arg.server);
    ctx_free(&ctx);
}

static void test_wrong_handshake(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_options co;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    long long t0;
    static const uint8_t other[8] = {0x00, 1, 2, 3, 4, 5, 6, 7};
    ctx_init(&ctx);
    make_name(name, sizeof name, "hs");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        ipc_client_options_init(&co);
        memcpy(co.handshake, other, 8);
        t0 = t_now_ms();
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_HANDSHAKE, &err);
        CHECK_MS(t_now_ms() - t0, 0, 2000);
        CHECK(client == NULL && err.message != NULL);
        ipc_error_clear(&err);

        /* a handshake value must start with 0x00 (the foreign-client path is
         * checked on the wire in raw_wire) */
        co.handshake[0] = 0x01;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_INVALID, &err);
        CHECK(client == NULL);
        ipc_error_clear(&err);

        /* only the last byte differs */
        memcpy(co.handshake, DEFAULT_HS, 8);
        co.handshake[7] ^= 0x01;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_HANDSHAKE, &err);
        ipc_error_clear(&err);

        /* the server keeps serving; rejected clients are not reported as disconnects */
        client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "fine", "fine");
            ipc_client_close(client);
        }
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 3000));
        t_sleep_ms(100);
        CHECK(ctx_get(&ctx, &ctx.disconnects) == 1);
        ipc_server_stop(server);
    }

    /* a keyed server and client meet */
    make_name(name, sizeof name, "hskey");
    ipc_server_options_init(&so);
    memcpy(so.handshake, other, 8);
    server = open_server(name, &so, cmd_handler, &ctx);
    if (server) {
        ipc_client_options_init(&co);
        memcpy(co.handshake, other, 8);
        client = open_client(name, &co, 5000);
        if (client) {
            expect_text(client, "keyed", "keyed");
            ipc_client_close(client);
        }
        /* and the default client does not get in */
        CHECK_RC(ipc_client_open(&client, name, NULL, 3000, &err), IPC_E_HANDSHAKE, &err);
        ipc_error_clear(&err);
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

static void test_versions(void) {
    static const int cases[][3] = {
        /* server version, client version, negotiated */
        {1, 1, 1},
        {2, 1, 1},
        {1, 3, 1},
        {2, 2, 2},
        {5, 3, 3},
    };
    size_t i;
    srv_ctx ctx;
    ctx_init(&ctx);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96];
        ipc_server_options so;
        ipc_client_options co;
        ipc_server_t *server;
        ipc_client_t *client;
        make_name(name, sizeof name, "ver");
        ipc_server_options_init(&so);
        so.version = (uint8_t)cases[i][0];
        ipc_client_options_init(&co);
        co.version = (uint8_t)cases[i][1];
        server = open_server(name, &so, cmd_handler, &ctx);
        client = server ? open_client(name, &co, 5000) : NULL;
        if (client) {
            CHECK(ipc_client_version(client) == cases[i][2]);
            expect_text(client, "v", "v");
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

typedef struct queued_arg {
    const char *name;
    int rc;
    long long done_at;
} queued_arg;

static void queued_main(void *param) {
    queued_arg *arg = (queued_arg *)param;
    ipc_client_t *client = NULL;
    arg->rc = ipc_client_open(&client, arg->name, NULL, 10000, NULL);
    arg->done_at = t_now_ms();
    if (client) {
        expect_text(client, "three", "three");
        ipc_client_close(client);
    }
}

static void test_busy(void) {
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
static void test_stop_with_full_slots(void) {
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

static void inflight_main(void *param) {
    inflight_arg *arg = (inflight_arg *)param;
    const uint8_t *resp;
    size_t resp_size = 0;
    arg->rc = ipc_client_request(arg->client, arg->request, strlen(arg->request), &resp,
                                 &resp_size, 15000, NULL);
    arg->done_at = t_now_ms();
    if (arg->rc == IPC_OK && resp_size < sizeof arg->response)
        memcpy(arg->response, resp, resp_size + 1);
}

static void test_stop_with_clients(void) {
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
                if (arg.rc == IPC_OK) CHECK(strcmp(arg.response, "slept") == 0);
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

static void test_timeouts(void) {
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
static void test_write_timeout(void) {
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
static void test_connect_cycles(void) {
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

static void test_disconnect_notification(void) {
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
        if (!client) break;
        if (i != 1) expect_text(client, "x", "x"); /* also a client that sent nothing */
        ipc_client_close(client);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, i + 1, 3000));
    }
    CHECK(ctx_get(&ctx, &ctx.bad_disconnect_args) == 0);
    ipc_server_stop(server);
    CHECK(ctx_get(&ctx, &ctx.disconnects) == 3);
    ctx_free(&ctx);
}

static void test_log_callback(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server, *legacy;
    ipc_client_options co;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    int mine = 0;
    int before, after;
    ctx_init(&ctx);
    ipc_set_log_handler(test_log_fn, &mine);
    make_name(name, sizeof name, "log");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        /* a failed legacy start must report its reason through the log callback */
        legacy = ipc_server_start(name, legacy_handler, &ctx);
        CHECK(legacy == NULL);
        ipc_server_stop(legacy);
        /* a rejected handshake is worth a log line too */
        ipc_client_options_init(&co);
        co.handshake[3] ^= 0xFF;
        CHECK_RC(ipc_client_open(&client, name, &co, 2000, &err), IPC_E_HANDSHAKE, &err);
        ipc_error_clear(&err);
        ipc_server_stop(server);
    }
    t_mutex_lock(g_log_lock);
    before = mine;
    t_mutex_unlock(g_log_lock);
    CHECK(before > 0);
    t_mutex_lock(g_log_lock);
    CHECK(g_log_bad_level == 0);
    t_mutex_unlock(g_log_lock);
    /* uninstalled: no more calls */
    ipc_set_log_handler(NULL, NULL);
    legacy = ipc_server_start("", legacy_handler, &ctx);
    CHECK(legacy == NULL);
    t_mutex_lock(g_log_lock);
    after = mine;
    t_mutex_unlock(g_log_lock);
    CHECK(after == before);
    if (g_log_verbose) ipc_set_log_handler(test_log_fn, NULL);
    ctx_free(&ctx);
}

/* ---- the log callback may be replaced while servers run --------------- */

static int g_swap_token_a, g_swap_token_b; /* addresses used as user_data */
static int g_swap_calls_a, g_swap_calls_b, g_swap_mismatch; /* under g_log_lock */

static void swap_log_a(void *user_data, int level, const char *message) {
    (void)level;
    (void)message;
    t_mutex_lock(g_log_lock);
    g_swap_calls_a++;
    if (user_data != &g_swap_token_a) g_swap_mismatch++;
    t_mutex_unlock(g_log_lock);
}

static void swap_log_b(void *user_data, int level, const char *message) {
    (void)level;
    (void)message;
    t_mutex_lock(g_log_lock);
    g_swap_calls_b++;
    if (user_data != &g_swap_token_b) g_swap_mismatch++;
    t_mutex_unlock(g_log_lock);
}

typedef struct noisy_arg {
    const char *name;
    int rounds;
} noisy_arg;

/* Clients with a wrong key: each makes a server thread log a warning. */
static void noisy_main(void *param) {
    noisy_arg *arg = (noisy_arg *)param;
    ipc_client_options co;
    int i;
    ipc_client_options_init(&co);
    co.handshake[5] ^= 0x10;
    for (i = 0; i < arg->rounds; i++) {
        ipc_client_t *client = NULL;
        if (ipc_client_open(&client, arg->name, &co, 2000, NULL) == IPC_OK) ipc_client_close(client);
    }
}

/* ipc_set_log_handler says nothing about when it may be called, so it may
 * be called while server threads log: each message must reach a complete
 * (callback, user_data) pair, never a mix, and without a data race (the
 * ThreadSanitizer build checks the latter). */
static void test_log_handler_swap_while_serving(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    noisy_arg arg;
    t_thread *thread;
    int i, calls;
    ctx_init(&ctx);
    make_name(name, sizeof name, "logswap");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        arg.name = name;
        arg.rounds = 200;
        thread = t_thread_start(noisy_main, &arg);
        for (i = 0; i < 400; i++) {
            if (i % 3 == 0)
                ipc_set_log_handler(swap_log_a, &g_swap_token_a);
            else if (i % 3 == 1)
                ipc_set_log_handler(swap_log_b, &g_swap_token_b);
            else
                ipc_set_log_handler(NULL, NULL);
            t_sleep_ms(1);
        }
        t_thread_join(thread);
        ipc_server_stop(server);
    }
    ipc_set_log_handler(g_log_verbose ? test_log_fn : NULL, NULL);
    t_mutex_lock(g_log_lock);
    calls = g_swap_calls_a + g_swap_calls_b;
    CHECK(g_swap_mismatch == 0);
    t_mutex_unlock(g_log_lock);
    CHECK(calls > 0);
    ctx_free(&ctx);
}

static void test_legacy_api(void) {
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
                if (rounds == 0) CHECK(st == IPC_RECEIVE_STATUS_MORE_DATA && received == 16);
                rounds++;
            } while (st == IPC_RECEIVE_STATUS_MORE_DATA && rounds < 20);
            CHECK(st == IPC_RECEIVE_STATUS_DONE);
            CHECK(rounds == 4);   /* 55 bytes in 16-byte pieces */
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
            expect_response(c, "abc", 4, "echo:abc", 9);  /* with its NUL */
            expect_response(c, "xyz", 3, "echo:xyz", 9);  /* no NUL sent: still a C string */
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

#if defined(__linux__)
static int count_dir_entries(const char *path) {
    DIR *dir = opendir(path);
    struct dirent *entry;
    int n = 0;
    if (!dir) return -1;
    while ((entry = readdir(dir)) != NULL)
        if (entry->d_name[0] != '.') n++;
    closedir(dir);
    return n;
}
#define COUNT_FDS() count_dir_entries("/proc/self/fd")
#define COUNT_THREADS() count_dir_entries("/proc/self/task")
#else
#define COUNT_FDS() (-1)
#define COUNT_THREADS() (-1)
#endif

static void test_open_stop_cycles(void) {
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
        if (!server) break;
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

/* ---- cross-process ------------------------------------------------------ */

static int child_client(const char *name) {
    ipc_client_t *client = open_client(name, NULL, 10000);
    int i;
    if (!client) return 1;
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
static int child_client_hang(const char *name) {
    ipc_client_t *client = open_client(name, NULL, 10000);
    ipc_error err = {0, 0, NULL};
    if (!client) return 1;
    CHECK_RC(ipc_client_write(client, "sleep:300", 9, 5000, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    t_sleep_ms(30000);
    ipc_client_close(client);
    return 1; /* should have been killed */
}

static int child_server(const char *name, int hold, uint32_t max_clients) {
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    long long deadline = t_now_ms() + 60000;
    ctx_init(&ctx);
    ipc_server_options_init(&so);
    if (max_clients) so.max_clients = max_clients;
    server = open_server(name, &so, cmd_handler, &ctx);
    if (!server) return 1;
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

static void test_cross_process_client(void) {
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

static void test_killed_client(void) {
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

static void test_cross_process_server(void) {
    char name[96];
    t_proc *proc;
    ipc_client_t *client;
    size_t size = 3 * 1024 * 1024 + 5;
    unsigned char *data;
    make_name(name, sizeof name, "xserver");
    proc = t_proc_spawn("--child-server", name);
    CHECK(proc != NULL);
    if (!proc) return;
    client = open_client(name, NULL, 15000); /* the child needs a moment to start */
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

static void test_stale_name_reclaimed(void) {
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
    if (!proc) return;
    client = open_client(name, NULL, 15000);
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

/* ---- raw wire checks (POSIX: plain sockets against the server) -------- */

#ifndef _WIN32
static int raw_connect(const char *path) {
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        close(fd);
        return -1;
    }
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static int raw_send(int fd, const void *data, size_t size) {
    const char *p = (const char *)data;
    while (size > 0) {
        ssize_t n = send(fd, p, size, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        p += n;
        size -= (size_t)n;
    }
    return 1;
}

/* Reads until `size` bytes, EOF or timeout; returns bytes read, sets *eof. */
static size_t raw_recv(int fd, void *buf, size_t size, int timeout_ms, int *eof) {
    size_t got = 0;
    long long deadline = t_now_ms() + timeout_ms;
    *eof = 0;
    while (got < size) {
        struct pollfd pfd;
        int left = (int)(deadline - t_now_ms());
        ssize_t n;
        if (left <= 0) break;
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (poll(&pfd, 1, left) <= 0) continue;
        n = recv(fd, (char *)buf + got, size - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            *eof = 1;
            break;
        }
        got += (size_t)n;
    }
    return got;
}

/* Expects the connection to end with no (further) bytes within timeout_ms. */
static int raw_expect_eof(int fd, int timeout_ms) {
    unsigned char b;
    int eof = 0;
    size_t n = raw_recv(fd, &b, 1, timeout_ms, &eof);
    return n == 0 && eof;
}

/* After a protocol error the server closes; it may first send one ERROR
 * packet that explains why. Accepts both, rejects anything else. */
static int raw_expect_close(int fd, int timeout_ms) {
    unsigned char head[5];
    unsigned char body[512];
    int eof = 0;
    size_t n = raw_recv(fd, head, 5, timeout_ms, &eof);
    uint32_t len;
    if (n == 0) return eof;
    if (n != 5 || head[0] != 0x03) return 0;
    len = (uint32_t)head[1] | (uint32_t)head[2] << 8 | (uint32_t)head[3] << 16 |
          (uint32_t)head[4] << 24;
    if (len >= sizeof body) return 0;
    if (raw_recv(fd, body, len, timeout_ms, &eof) != len) return 0;
    return raw_expect_eof(fd, timeout_ms);
}

static int raw_handshake(int fd) {
    unsigned char req[9], reply[9], expected[9];
    int eof;
    ipc_handshake_encode_request(req, DEFAULT_HS, 1);
    ipc_handshake_encode_reply(expected, DEFAULT_HS, 1);
    if (!raw_send(fd, req, 9)) return 0;
    return raw_recv(fd, reply, 9, 3000, &eof) == 9 && memcmp(reply, expected, 9) == 0;
}

static void test_raw_wire(void) {
    char name[96];
    char path[512];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    unsigned char buf[512];
    int fd, eof;
    size_t n;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "raw");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    so.handshake_timeout_ms = 300;
    server = open_server(name, &so, cmd_handler, &ctx);
    if (!server) {
        ctx_free(&ctx);
        return;
    }
    snprintf(path, sizeof path, "%s", ipc_server_address(server));

    /* a foreign client gets exactly one 0xFF byte, then the end */
    fd = raw_connect(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        t0 = t_now_ms();
        raw_send(fd, "GET / HTTP/1.0\r\n\r\n", 18);
        n = raw_recv(fd, buf, 2, 3000, &eof);
        CHECK(n == 1 && buf[0] == 0xFF);
        CHECK(eof || raw_expect_eof(fd, 2000));
        CHECK_MS(t_now_ms() - t0, 0, 1000);
        close(fd);
    }
    /* one byte is enough to be refused */
    fd = raw_connect(path);
    if (fd >= 0) {
        raw_send(fd, "G", 1);
        n = raw_recv(fd, buf, 1, 2000, &eof);
        CHECK(n == 1 && buf[0] == 0xFF);
        close(fd);
    }
    /* a mismatching handshake: closed without a reply */
    fd = raw_connect(path);
    if (fd >= 0) {
        unsigned char req[9];
        ipc_handshake_encode_request(req, DEFAULT_HS, 1);
        req[7] ^= 1;
        raw_send(fd, req, 9);
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* version 0: closed without a reply */
    fd = raw_connect(path);
    if (fd >= 0) {
        unsigned char req[9];
        ipc_handshake_encode_request(req, DEFAULT_HS, 1);
        req[8] = 0;
        raw_send(fd, req, 9);
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* silence: dropped after the handshake timeout (300 ms here) */
    fd = raw_connect(path);
    if (fd >= 0) {
        t0 = t_now_ms();
        CHECK(raw_expect_eof(fd, 3000));
        CHECK_MS(t_now_ms() - t0, 200, 2000);
        close(fd);
    }
    /* a full exchange, byte by byte, short and extended headers */
    fd = raw_connect(path);
    if (fd >= 0) {
        static const unsigned char req1[] = {0x01, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
        static const unsigned char req2[] = {0x41, 0x01, 0x02, 0x00, 0x00, 0x00, 'h', 'i'};
        static const unsigned char resp1[] = {0x02, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
        size_t i;
        CHECK(raw_handshake(fd));
        for (i = 0; i < sizeof req1; i++) {
            raw_send(fd, req1 + i, 1); /* split writes: the server must reassemble */
            t_sleep_ms(2);
        }
        n = raw_recv(fd, buf, sizeof resp1, 3000, &eof);
        CHECK(n == sizeof resp1 && memcmp(buf, resp1, sizeof resp1) == 0);
        raw_send(fd, req2, sizeof req2);
        n = raw_recv(fd, buf, 7, 3000, &eof);
        CHECK(n == 7 && buf[0] == 0x02 && buf[1] == 2 && buf[2] == 0 && buf[3] == 0 &&
              buf[4] == 0 && buf[5] == 'h' && buf[6] == 'i');
        /* ERROR packet layout */
        raw_send(fd, "\x01\x08\x00\x00\x00" "fail:why", 13);
        n = raw_recv(fd, buf, 8, 3000, &eof);
        CHECK(n == 8 && memcmp(buf, "\x03\x03\x00\x00\x00why", 8) == 0);
        /* an unknown type closes the connection */
        raw_send(fd, "\x09\x00\x00\x00\x00", 5);
        CHECK(raw_expect_close(fd, 2000));
        close(fd);
    }
    /* reserved bit, bad extended versions, type 0, a RESPONSE sent to the
     * server, a node packet: closed */
    {
        static const char *const bad[] = {"\x81\x00\x00\x00\x00", "\x41\x02\x00\x00\x00\x00",
                                          "\x41\x00\x00\x00\x00\x00", "\x00\x00\x00\x00\x00",
                                          "\x02\x00\x00\x00\x00", "\x3f\x00\x00\x00\x00"};
        static const size_t bad_len[] = {5, 6, 6, 5, 5, 5};
        size_t i;
        for (i = 0; i < sizeof bad_len / sizeof bad_len[0]; i++) {
            fd = raw_connect(path);
            if (fd < 0) continue;
            CHECK(raw_handshake(fd));
            raw_send(fd, bad[i], bad_len[i]);
            if (!CHECK(raw_expect_close(fd, 2000))) note("      bad header case %lu", (unsigned long)i);
            close(fd);
        }
    }
    /* a request above max_message: an ERROR packet naming size and limit, then EOF */
    fd = raw_connect(path);
    if (fd >= 0) {
        CHECK(raw_handshake(fd));
        raw_send(fd, "\x01\x01\x10\x00\x00", 5); /* 4097 bytes announced, none sent */
        n = raw_recv(fd, buf, 5, 3000, &eof);
        CHECK(n == 5 && buf[0] == 0x03);
        if (n == 5) {
            uint32_t len = (uint32_t)buf[1] | (uint32_t)buf[2] << 8 | (uint32_t)buf[3] << 16 |
                           (uint32_t)buf[4] << 24;
            CHECK(len > 0 && len < sizeof buf);
            if (len > 0 && len < sizeof buf) {
                n = raw_recv(fd, buf, len, 3000, &eof);
                buf[n] = 0;
                CHECK(n == len);
                /* the "too large" marker of docs/protocol.md, then the sizes */
                CHECK(strncmp((char *)buf, "ipcfast: too large: ", 20) == 0);
                CHECK(strstr((char *)buf, "4097") != NULL && strstr((char *)buf, "4096") != NULL);
            }
        }
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* a client that vanishes mid-packet */
    fd = raw_connect(path);
    if (fd >= 0) {
        CHECK(raw_handshake(fd));
        raw_send(fd, "\x01\x0a\x00\x00\x00" "abc", 8);
        close(fd);
    }
    /* through all of that the server kept serving */
    {
        ipc_client_t *client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "survived", "survived");
            ipc_client_close(client);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* ipc_server_stop returns promptly even when a peer never finishes the
 * handshake, or never reads the response it asked for. */
static void test_stop_with_stuck_peers(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    int silent, greedy;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "stuck");
    server = open_server(name, NULL, cmd_handler, &ctx); /* handshake timeout 5 s */
    if (!server) {
        ctx_free(&ctx);
        return;
    }
    silent = raw_connect(ipc_server_address(server));
    greedy = raw_connect(ipc_server_address(server));
    CHECK(silent >= 0 && greedy >= 0);
    if (greedy >= 0) {
        CHECK(raw_handshake(greedy));
        raw_send(greedy, "\x01\x0b\x00\x00\x00" "big:9000000", 16); /* then never read */
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 5000));
    }
    t_sleep_ms(200);
    t0 = t_now_ms();
    ipc_server_stop(server);
    CHECK_MS(t_now_ms() - t0, 0, 2500);
    CHECK(ctx_get(&ctx, &ctx.last_respond_rc) == IPC_E_CLOSED);
    if (silent >= 0) close(silent);
    if (greedy >= 0) close(greedy);
    ctx_free(&ctx);
}

static int file_mode(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return -1;
    return (int)(st.st_mode & 07777);
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* A name with '/' is a socket path used as is; the lock file sits beside it. */
static void test_path_names(void) {
    char dir[] = "/tmp/ipcfast-ct-XXXXXX";
    char path[256], lock[300];
    srv_ctx ctx;
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    int world;
    ctx_init(&ctx);
    if (!CHECK(mkdtemp(dir) != NULL)) {
        ctx_free(&ctx);
        return;
    }
    snprintf(path, sizeof path, "%s/app.sock", dir);
    snprintf(lock, sizeof lock, "%s.lock", path);
    for (world = 0; world < 2; world++) {
        ipc_server_options_init(&so);
        so.access = world ? IPC_ACCESS_WORLD : IPC_ACCESS_USER;
        server = open_server(path, &so, cmd_handler, &ctx);
        if (!server) continue;
        CHECK(strcmp(ipc_server_address(server), path) == 0);
        CHECK(file_mode(path) == (world ? 0666 : 0600));
        CHECK(exists(lock));
        {
            ipc_client_t *client = open_client(path, NULL, 5000);
            if (client) {
                expect_text(client, "by path", "by path");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
        CHECK(!exists(path));
        CHECK(!exists(lock));
    }
    /* something that is not a socket is never replaced */
    {
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        if (f) fclose(f);
        server = NULL;
        CHECK_RC(ipc_server_open(&server, path, NULL, cmd_handler, &ctx, &err),
                 IPC_E_ADDRESS_IN_USE, &err);
        ipc_error_clear(&err);
        CHECK(exists(path));
        unlink(path);
        unlink(lock);
    }
    /* a stale socket file without a lock holder is reclaimed */
    {
        struct sockaddr_un addr;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&addr, 0, sizeof addr);
        addr.sun_family = AF_UNIX;
        strcpy(addr.sun_path, path);
        CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
        if (fd >= 0) close(fd); /* socket file left behind, nobody listening */
        server = open_server(path, NULL, cmd_handler, &ctx);
        ipc_server_stop(server);
        unlink(path);
        unlink(lock);
    }
    rmdir(dir);
    ctx_free(&ctx);
}

/* The private per-user directory: created 0700; refused when unsafe. */
static void test_private_directory(void) {
    char base[] = "/tmp/ipcfast-ct-XXXXXX";
    char priv[256], other[256], name[96];
    const char *old_runtime = getenv("XDG_RUNTIME_DIR");
    char *saved = old_runtime ? strdup(old_runtime) : NULL;
    srv_ctx ctx;
    ipc_server_t *server = NULL;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    ctx_init(&ctx);
    if (!CHECK(mkdtemp(base) != NULL)) {
        free(saved);
        ctx_free(&ctx);
        return;
    }
    snprintf(priv, sizeof priv, "%s/ipcfast", base);
    snprintf(other, sizeof other, "%s/elsewhere", base);
    make_name(name, sizeof name, "priv");
    setenv("XDG_RUNTIME_DIR", base, 1);

    /* no directory yet: a client sees "not found" */
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_NOT_FOUND, &err);
    ipc_error_clear(&err);
    /* the server creates it, mode 0700, and puts the socket in it */
    server = open_server(name, NULL, cmd_handler, &ctx);
    CHECK(file_mode(priv) == 0700);
    if (server) {
        CHECK(strncmp(ipc_server_address(server), priv, strlen(priv)) == 0);
        ipc_server_stop(server);
    }
    /* group/world-writable: refused by server and client */
    chmod(priv, 0777);
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err), IPC_E_ACCESS_DENIED,
             &err);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_ACCESS_DENIED, &err);
    ipc_error_clear(&err);
    chmod(priv, 0700);
    rmdir(priv);
    /* a symlink: refused, even to a good directory */
    CHECK(mkdir(other, 0700) == 0);
    CHECK(symlink(other, priv) == 0);
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err), IPC_E_ACCESS_DENIED,
             &err);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_ACCESS_DENIED, &err);
    ipc_error_clear(&err);
    unlink(priv);
    /* a plain file: refused */
    {
        FILE *f = fopen(priv, "w");
        if (f) fclose(f);
        CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err),
                 IPC_E_ACCESS_DENIED, &err);
        ipc_error_clear(&err);
        unlink(priv);
    }
    rmdir(other);
    rmdir(base);
    if (saved) {
        setenv("XDG_RUNTIME_DIR", saved, 1);
        free(saved);
    } else {
        unsetenv("XDG_RUNTIME_DIR");
    }
    ctx_free(&ctx);
}

static volatile sig_atomic_t g_sigpipes = 0;
static void on_sigpipe(int sig) {
    (void)sig;
    g_sigpipes++;
}
#endif /* !_WIN32 */

/* ======================================================================
 * Windows issue: wake-ups, cancel races, pipe ACLs, two processes
 *
 * These run everywhere (natively under the sanitizers, and as a Windows
 * program under wine), except the DACL read-back, which has a POSIX
 * counterpart checking the socket's file mode instead.
 * ====================================================================== */

/* Counts what the core logs at WARNING and above while a test runs. The
 * tally must outlive every server thread that may log into it: end it only
 * after ipc_server_stop has returned. */
typedef struct log_tally {
    t_mutex *lock;
    int warnings;
    int errors;
    char first[300]; /* the first such message, for the report */
} log_tally;

static void tally_log_fn(void *user_data, int level, const char *message) {
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
    if (g_log_verbose) note("      log %d: %s", level, message ? message : "(null)");
}

static void tally_begin(log_tally *tally) {
    memset(tally, 0, sizeof *tally);
    tally->lock = t_mutex_new();
    ipc_set_log_handler(tally_log_fn, tally);
}

/* Uninstalls the tally and checks that nothing was logged at WARNING or above. */
static void tally_end_expect_quiet(log_tally *tally) {
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

static unsigned next_random(unsigned *state) {
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
static size_t make_unique_request(unsigned char *req, unsigned char *expected, size_t size,
                                  const char *tag, int client, int seq) {
    char head[64];
    size_t i;
    int n = snprintf(head, sizeof head, "%s %d %d|", tag, client, seq);
    if (size < (size_t)n) size = (size_t)n;
    fill_random(req, size, (unsigned)(client * 1000003 + seq));
    memcpy(req, head, (size_t)n);
    for (i = 0; i < size; i++) expected[i] = (unsigned char)(req[i] ^ 0x5C);
    return size;
}

/* One request whose answer must be exactly `expected`; says what went wrong
 * otherwise (quietly returns the code for the caller to judge). */
static int unique_round_trip(ipc_client_t *client, const unsigned char *req, size_t size,
                             const unsigned char *expected, int timeout_ms, const char *who,
                             int *wrong) {
    const uint8_t *resp = NULL;
    size_t resp_size = 0;
    ipc_error err = {0, 0, NULL};
    int rc = ipc_client_request(client, req, size, &resp, &resp_size, timeout_ms, &err);
    *wrong = 0;
    if (rc == IPC_OK && (resp_size != size || memcmp(resp, expected, size) != 0 ||
                         resp[resp_size] != 0)) {
        *wrong = 1;
        note("      %s: wrong answer to a %lu-byte request (%lu bytes back, starting \"%.24s\")",
             who, (unsigned long)size, (unsigned long)resp_size, (const char *)req);
    }
    ipc_error_clear(&err);
    return rc;
}

/* Idle connections are left alone by the server's read wake-ups (at least
 * every IPC_WAKE_INTERVAL_MS; on Windows each one is a CancelIoEx of the
 * pending overlapped ReadFile and a new ReadFile): after more than 3 s of
 * silence, i.e. several wake-ups, every client is still served with the
 * right answers, nobody was dropped, and the server logged nothing at
 * WARNING or above. */
static void test_idle_connections_survive_wakeups(void) {
    enum { N = 5, ROUNDS = 4 };
    static const size_t sizes[ROUNDS] = {1, 777, 70000, 12};  /* 70000 > the 64 KiB pipe buffer */
    char name[96];
    srv_ctx ctx;
    log_tally tally;
    ipc_server_t *server;
    ipc_client_t *clients[N];
    unsigned char *req = (unsigned char *)malloc(70000 + 64);
    unsigned char *expected = (unsigned char *)malloc(70000 + 64);
    int i, round, seq = 0, ok = 0, sent = 0;
    long long t0;
    ctx_init(&ctx);
    tally_begin(&tally);
    make_name(name, sizeof name, "idle");
    server = req && expected ? open_server(name, NULL, xor_handler, &ctx) : NULL;
    for (i = 0; i < N; i++) clients[i] = server ? open_client(name, NULL, 5000) : NULL;
    /* half of them talk first, the others go idle right after the handshake */
    for (i = 0; i < N; i += 2) {
        int wrong;
        size_t size;
        if (!clients[i]) continue;
        size = make_unique_request(req, expected, 100, "idle", i, seq++);
        sent++;
        if (CHECK_RC(unique_round_trip(clients[i], req, size, expected, 10000, "idle", &wrong),
                     IPC_OK, NULL) && CHECK(!wrong))
            ok++;
    }
    t0 = t_now_ms();
    t_sleep_ms(3300); /* 6 wake-ups of every connection thread */
    CHECK(ctx_get(&ctx, &ctx.disconnects) == 0); /* nobody was dropped meanwhile */
    for (round = 0; round < ROUNDS; round++) {
        for (i = 0; i < N; i++) {
            int rc, wrong;
            size_t size;
            if (!clients[i]) continue;
            size = make_unique_request(req, expected, sizes[round], "idle", i, seq++);
            sent++;
            rc = unique_round_trip(clients[i], req, size, expected, 10000, "idle", &wrong);
            if (CHECK_RC(rc, IPC_OK, NULL) && CHECK(!wrong)) ok++;
        }
        if (round == 1) t_sleep_ms(1100); /* idle again, now mid-conversation */
    }
    note("      %d requests answered after %lld ms of idle connections", ok, t_now_ms() - t0);
    CHECK(ok == sent);
    CHECK(ok == (N + 1) / 2 + N * ROUNDS);
    CHECK(ctx_get(&ctx, &ctx.requests) == sent);
    for (i = 0; i < N; i++) ipc_client_close(clients[i]);
    if (server) CHECK(ctx_wait_for(&ctx, &ctx.disconnects, N, 5000));
    ipc_server_stop(server);
    CHECK(ctx_get(&ctx, &ctx.bad_disconnect_args) == 0);
    tally_end_expect_quiet(&tally);
    free(req);
    free(expected);
    ctx_free(&ctx);
}

typedef struct cancel_race_arg {
    const char *name;
    int index;
    long long end_at;
    int answered;       /* exactly right */
    int failed;         /* an error, or a wrong answer */
    int near_boundary;  /* requests sent 480..520 ms after the previous answer */
} cancel_race_arg;

static void cancel_race_main(void *param) {
    cancel_race_arg *arg = (cancel_race_arg *)param;
    enum { MAX_SIZE = 66000 };
    unsigned char *req = (unsigned char *)malloc(MAX_SIZE);
    unsigned char *expected = (unsigned char *)malloc(MAX_SIZE);
    unsigned rng = 0x9E3779B9u ^ (unsigned)(arg->index * 7919 + 13);
    ipc_client_t *client = req && expected ? open_client(arg->name, NULL, 10000) : NULL;
    int seq = 0, paused_near = 0;
    if (!client) arg->failed++;
    while (client && !arg->failed && t_now_ms() < arg->end_at) {
        int burst = 1 + (int)(next_random(&rng) % 10);
        int b;
        unsigned pause;
        for (b = 0; b < burst && !arg->failed; b++) {
            unsigned r = next_random(&rng);
            /* mostly small; every ~8th above the 64 KiB pipe buffer
             * (ERROR_MORE_DATA on Windows) */
            size_t want = r % 8 == 0 ? 65537 + r % 400 : 16 + r % 600;
            size_t size = make_unique_request(req, expected, want, "race", arg->index, seq++);
            int wrong;
            int rc = unique_round_trip(client, req, size, expected, 10000, "cancel_race", &wrong);
            if (rc != IPC_OK || wrong) {
                if (rc != IPC_OK)
                    note("      cancel_race client %d: request %d failed with %s", arg->index,
                         seq - 1, ipc_result_name(rc));
                arg->failed++;
                break;
            }
            arg->answered++;
            if (paused_near) arg->near_boundary++;
            paused_near = 0;
        }
        /* Three pauses in four land on the server's 500 ms wake-up (its read
         * began when it sent our last answer), the rest are short. */
        pause = next_random(&rng);
        if (pause % 4 != 0) {
            t_sleep_ms(480 + (int)(pause % 41));
            paused_near = 1;
        } else {
            t_sleep_ms((int)(pause % 6));
        }
    }
    ipc_client_close(client);
    free(req);
    free(expected);
}

/* Requests arriving right when the server's read wakes up (Windows: the
 * ReadFile is being cancelled and re-issued; data that completed in the
 * race must be kept, not dropped or read twice): 8 clients, bursts and
 * pauses of 480..520 ms, for about 5 s. Every answer must be exactly the
 * one for its request. */
static void test_cancel_race_under_load(void) {
    enum { N = 8, RUN_MS = 5000 };
    char name[96];
    srv_ctx ctx;
    log_tally tally;
    ipc_server_t *server;
    cancel_race_arg args[N];
    t_thread *threads[N];
    int i, answered = 0, failed = 0, near_wakeup = 0;
    long long t0 = t_now_ms();
    ctx_init(&ctx);
    tally_begin(&tally);
    make_name(name, sizeof name, "cancelrace");
    server = open_server(name, NULL, xor_handler, &ctx);
    if (server) {
        for (i = 0; i < N; i++) {
            memset(&args[i], 0, sizeof args[i]);
            args[i].name = name;
            args[i].index = i;
            args[i].end_at = t0 + RUN_MS;
            threads[i] = t_thread_start(cancel_race_main, &args[i]);
            CHECK(threads[i] != NULL);
        }
        for (i = 0; i < N; i++) {
            t_thread_join(threads[i]);
            answered += args[i].answered;
            failed += args[i].failed;
            near_wakeup += args[i].near_boundary;
            CHECK(args[i].failed == 0);
            CHECK(args[i].answered > 0);
        }
        note("      %d exact responses (%d of them to requests sent 480..520 ms after the "
             "previous answer), %d failures, in %lld ms", answered, near_wakeup, failed,
             t_now_ms() - t0);
        CHECK(failed == 0);
        CHECK(near_wakeup >= N * 4);
        /* the server handled each request exactly once */
        CHECK(ctx_get(&ctx, &ctx.requests) == answered);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, N, 5000));
        ipc_server_stop(server);
    }
    tally_end_expect_quiet(&tally);
    ctx_free(&ctx);
}

#if defined(_WIN32)
/* The DACL of the pipe at `address`, read back through a client handle
 * opened with READ_CONTROL only. Must hold exactly one ACE: access-allowed,
 * FILE_ALL_ACCESS, for `expected_sid`. Opening the pipe counts as a client
 * that connects and leaves without a handshake; the server takes it in its
 * stride. */
static void check_pipe_dacl(const char *address, PSID expected_sid, const char *expected_text) {
    wchar_t wide[400];
    HANDLE pipe = INVALID_HANDLE_VALUE;
    PACL dacl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    ACL_SIZE_INFORMATION info;
    long long deadline = t_now_ms() + 5000;
    DWORD rc, e = 0;
    if (!CHECK(MultiByteToWideChar(CP_UTF8, 0, address, -1, wide, 400) > 0)) return;
    for (;;) {
        pipe = CreateFileW(wide, READ_CONTROL, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (pipe != INVALID_HANDLE_VALUE) break;
        e = GetLastError();
        if (e != ERROR_PIPE_BUSY || t_now_ms() > deadline) break;
        WaitNamedPipeW(wide, 100);
    }
    if (!CHECK(pipe != INVALID_HANDLE_VALUE)) {
        note("      CreateFile(%s, READ_CONTROL) failed with error %lu", address,
             (unsigned long)e);
        return;
    }
    rc = GetSecurityInfo(pipe, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, &dacl,
                         NULL, &sd);
    if (!CHECK(rc == ERROR_SUCCESS)) note("      GetSecurityInfo failed with error %lu",
                                          (unsigned long)rc);
    /* a NULL DACL would grant everyone everything */
    if (rc == ERROR_SUCCESS && CHECK(dacl != NULL) &&
        CHECK(GetAclInformation(dacl, &info, sizeof info, AclSizeInformation))) {
        void *ace = NULL;
        if (!CHECK(info.AceCount == 1))
            note("      the pipe's DACL has %lu ACEs, expected 1", (unsigned long)info.AceCount);
        if (info.AceCount >= 1 && CHECK(GetAce(dacl, 0, &ace) && ace != NULL)) {
            ACE_HEADER *header = (ACE_HEADER *)ace;
            if (CHECK(header->AceType == ACCESS_ALLOWED_ACE_TYPE)) {
                ACCESS_ALLOWED_ACE *allowed = (ACCESS_ALLOWED_ACE *)ace;
                PSID sid = (PSID)&allowed->SidStart;
                char *text = NULL;
                CHECK(allowed->Mask == FILE_ALL_ACCESS);
                if (!CHECK(IsValidSid(sid) && EqualSid(sid, expected_sid))) {
                    if (ConvertSidToStringSidA(sid, &text)) {
                        note("      the ACE is for %s, expected %s", text, expected_text);
                        LocalFree(text);
                    }
                }
                if (allowed->Mask != FILE_ALL_ACCESS)
                    note("      the ACE grants 0x%08lx, expected FILE_ALL_ACCESS 0x%08lx",
                         (unsigned long)allowed->Mask, (unsigned long)FILE_ALL_ACCESS);
            }
        }
    }
    if (sd) LocalFree(sd);
    CloseHandle(pipe);
}

/* This process's user SID (from its token), malloc'ed inside TOKEN_USER. */
static TOKEN_USER *current_user(void) {
    HANDLE token = NULL;
    DWORD size = 0;
    TOKEN_USER *user = NULL;
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token)) return NULL;
    GetTokenInformation(token, TokenUser, NULL, 0, &size);
    if (size) user = (TOKEN_USER *)malloc(size);
    if (user && !GetTokenInformation(token, TokenUser, user, size, &size)) {
        free(user);
        user = NULL;
    }
    CloseHandle(token);
    return user;
}
#endif

/* The access option, checked on what the OS holds. Windows: the named
 * pipe's DACL is read back. Wine neither enforces pipe DACLs nor runs
 * anything as a second user, so refusing another user cannot be observed
 * there: reading the ACL back is how it is checked. POSIX: the socket file's
 * mode, 0600 for IPC_ACCESS_USER and 0666 for IPC_ACCESS_WORLD (plain names,
 * in the private directory; test_path_names covers path names). */
static void test_windows_acl_readback(void) {
    int world;
    srv_ctx ctx;
#if defined(_WIN32)
    TOKEN_USER *user = current_user();
    SID_IDENTIFIER_AUTHORITY world_authority = {SECURITY_WORLD_SID_AUTHORITY};
    PSID world_sid = NULL;
    char *user_text = NULL;
    if (!CHECK(user != NULL) ||
        !CHECK(AllocateAndInitializeSid(&world_authority, 1, SECURITY_WORLD_RID, 0, 0, 0, 0, 0,
                                        0, 0, &world_sid))) {
        free(user);
        return;
    }
    CHECK(!EqualSid(user->User.Sid, world_sid)); /* else the check below proves nothing */
    if (ConvertSidToStringSidA(user->User.Sid, &user_text))
        note("      current user %s%s", user_text, t_under_wine() ? " (wine)" : "");
#endif
    ctx_init(&ctx);
    for (world = 0; world < 2; world++) {
        char name[96];
        ipc_server_options so;
        ipc_server_t *server;
        make_name(name, sizeof name, world ? "aclworld" : "acluser");
        ipc_server_options_init(&so);
        so.access = world ? IPC_ACCESS_WORLD : IPC_ACCESS_USER;
        server = open_server(name, &so, cmd_handler, &ctx);
        if (!server) continue;
#if defined(_WIN32)
        check_pipe_dacl(ipc_server_address(server), world ? world_sid : user->User.Sid,
                        world ? "S-1-1-0 (World)" : (user_text ? user_text : "the user"));
#else
        {
            struct stat st;
            const char *path = ipc_server_address(server);
            if (CHECK(stat(path, &st) == 0)) {
                CHECK(S_ISSOCK(st.st_mode));
                if (!CHECK((int)(st.st_mode & 07777) == (world ? 0666 : 0600)))
                    note("      %s has mode %03o", path, (unsigned)(st.st_mode & 07777));
            }
        }
#endif
        /* and the server still serves */
        {
            ipc_client_t *client = open_client(name, NULL, 5000);
            if (client) {
                expect_text(client, world ? "world" : "user", world ? "world" : "user");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
#if defined(_WIN32)
    if (user_text) LocalFree(user_text);
    FreeSid(world_sid);
    free(user);
#endif
}

/* ---- two processes: legacy server + new client, busy, stop under load --- */

/* The original handler signature, in a server process: "echo:" + request,
 * "quit" answers "bye" and ends the process. */
static void legacy_quit_handler(char const *request, void *user_data, char *response,
                                size_t capacity) {
    srv_ctx *ctx = (srv_ctx *)user_data;
    if (!request) {
        t_mutex_lock(ctx->lock);
        ctx->disconnects++;
        if (response != NULL || capacity != 0) ctx->legacy_bad_disconnect++;
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
static int child_legacy_server(const char *name) {
    srv_ctx ctx;
    ipc_server_t *server;
    long long deadline = t_now_ms() + 60000;
    ctx_init(&ctx);
    server = ipc_server_start(name, legacy_quit_handler, &ctx);
    if (!CHECK(server != NULL)) return 1;
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
static int child_new_client(const char *name) {
    enum { MAX_TEXT = 60000 };
    char *req = (char *)malloc(MAX_TEXT + 1);
    char *expected = (char *)malloc(MAX_TEXT + 8);
    ipc_client_t *client = open_client(name, NULL, 15000); /* the server may still be starting */
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
        for (j = 0; j < size; j++) req[j] = (char)('a' + next_random(&rng) % 26);
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

static void busy_waiter_main(void *param) {
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
    int *ready;          /* under lock: clients that got their first answer */
    int answered;
    int wrong;
    int final_rc;        /* what ended the loop: IPC_E_CLOSED expected */
    long long ended_at;
    long long slowest_ms; /* the longest single request */
} hammer_arg;

static void hammer_main(void *param) {
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
        if (took > arg->slowest_ms) arg->slowest_ms = took;
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
                if (ready >= HAMMER_CLIENTS || t_now_ms() > give_up) break;
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
static int child_hammer(const char *name) {
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
            if (!first_end || args[i].ended_at < first_end) first_end = args[i].ended_at;
            if (args[i].ended_at > last_end) last_end = args[i].ended_at;
        }
        if (args[i].slowest_ms > slowest) slowest = args[i].slowest_ms;
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
            if (!CHECK(rc != IPC_OK)) note("      a client got into a stopped server");
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
static void test_two_wine_processes(void) {
    char name[96];
    /* 1. legacy server process, new-API client process */
    {
        t_proc *server_proc, *client_proc;
        long long t0 = t_now_ms();
        make_name(name, sizeof name, "2p-legacy");
        server_proc = t_proc_spawn("--child-legacy-server", name);
        client_proc = server_proc ? t_proc_spawn("--child-new-client", name) : NULL;
        CHECK(server_proc != NULL && client_proc != NULL);
        if (client_proc) CHECK(t_proc_wait(client_proc, 60000) == 0);
        if (server_proc) CHECK(t_proc_wait(server_proc, 20000) == 0);
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
        first = server_proc ? open_client(name, NULL, 15000) : NULL;
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
            if (arg.rc == IPC_OK) CHECK_MS(arg.done_at - t0, 0, 2000);
        }
        if (server_proc) CHECK(t_proc_wait(server_proc, first ? 20000 : 100) == 0 || !first);
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
        if (server) CHECK(clients_proc != NULL);
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

static void test_no_sigpipe(void) {
#ifndef _WIN32
    /* The library must not raise SIGPIPE on a closed peer (it would kill an
     * embedding program that keeps the default disposition). */
    CHECK(g_sigpipes == 0);
#endif
}

/* ---- server node ----------------------------------------------------- */

static void test_node_codec(void) {
    char *argv[] = {"python", "-m", "tool", "ä"};
    char *env[] = {"A=1", "PATH=/bin"};
    ipc_command in, out;
    ipc_error err = {0, 0, NULL};
    uint8_t *payload = NULL;
    size_t size = 0, i;
    memset(&in, 0, sizeof in);
    in.flags = IPC_COMMAND_STDOUT_TTY;
    in.argc = 4;
    in.argv = argv;
    in.cwd = "/tmp";
    in.envc = 2;
    in.env = env;
    in.locale = "C.UTF-8";
    CHECK_RC(ipc_command_encode(&in, &payload, &size, &err), IPC_OK, &err);
    CHECK(size == 4 + 4 + (4 + 6) + (4 + 2) + (4 + 4) + (4 + 2) + (4 + 4) + 4 + (4 + 3) +
                      (4 + 9) + (4 + 7));
    CHECK_RC(ipc_command_decode(payload, size, &out, &err), IPC_OK, &err);
    CHECK(out.flags == IPC_COMMAND_STDOUT_TTY && out.argc == 4 && out.envc == 2);
    if (out.argc == 4 && out.envc == 2) {
        for (i = 0; i < 4; i++) CHECK(strcmp(out.argv[i], argv[i]) == 0);
        CHECK(strcmp(out.env[1], "PATH=/bin") == 0);
        CHECK(strcmp(out.cwd, "/tmp") == 0 && strcmp(out.locale, "C.UTF-8") == 0);
    }
    ipc_command_free(&out);
    CHECK(out.argv == NULL && out.argc == 0);
    /* Every truncation is malformed, never a crash or an over-read. */
    for (i = 0; i < size; i++) {
        CHECK_RC(ipc_command_decode(payload, i, &out, &err), IPC_E_PROTOCOL, &err);
        ipc_command_free(&out);
        ipc_error_clear(&err);
    }
    /* A NUL inside a string, trailing bytes, a forged count. */
    payload[8 + 4] = 0;
    CHECK_RC(ipc_command_decode(payload, size, &out, &err), IPC_E_PROTOCOL, &err);
    CHECK(err.message && strstr(err.message, "NUL"));
    ipc_command_free(&out);
    ipc_error_clear(&err);
    payload[8 + 4] = 'p';
    {
        uint8_t *longer = (uint8_t *)malloc(size + 1);
        memcpy(longer, payload, size);
        longer[size] = 7;
        CHECK_RC(ipc_command_decode(longer, size + 1, &out, &err), IPC_E_PROTOCOL, &err);
        ipc_command_free(&out);
        ipc_error_clear(&err);
        longer[4] = 0xFF; longer[5] = 0xFF; longer[6] = 0xFF; longer[7] = 0x7F;
        CHECK_RC(ipc_command_decode(longer, size, &out, &err), IPC_E_PROTOCOL, &err);
        ipc_command_free(&out);
        ipc_error_clear(&err);
        free(longer);
    }
    ipc_free(payload);
    in.cwd = NULL;
    CHECK_RC(ipc_command_encode(&in, &payload, &size, &err), IPC_E_INVALID, &err);
    ipc_error_clear(&err);

    {
        uint8_t exit_payload[IPC_EXIT_PAYLOAD_SIZE];
        int32_t code = 0;
        uint8_t type = 0;
        int stream = 0;
        const uint8_t *text = NULL;
        size_t text_size = 0;
        static const uint8_t minus_two[5] = {0xFE, 0xFF, 0xFF, 0xFF, 0x02};
        static const uint8_t console[4] = {2, 'h', 'i', '\n'};
        CHECK(ipc_exit_encode(exit_payload, -2, IPC_EXIT_CRASHED) == 5);
        CHECK(memcmp(exit_payload, minus_two, 5) == 0);
        CHECK_RC(ipc_exit_decode(exit_payload, 5, &code, &type, &err), IPC_OK, &err);
        CHECK(code == -2 && type == IPC_EXIT_CRASHED);
        ipc_exit_encode(exit_payload, 2147483647, 9);
        CHECK_RC(ipc_exit_decode(exit_payload, 5, &code, &type, &err), IPC_OK, &err);
        CHECK(code == 2147483647 && type == 9);
        ipc_exit_encode(exit_payload, (int32_t)(-2147483647 - 1), 0);
        CHECK_RC(ipc_exit_decode(exit_payload, 5, &code, &type, &err), IPC_OK, &err);
        CHECK(code == (int32_t)(-2147483647 - 1));
        CHECK_RC(ipc_exit_decode(exit_payload, 4, &code, &type, &err), IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_console_write_decode(console, 4, &stream, &text, &text_size, &err), IPC_OK, &err);
        CHECK(stream == 2 && text_size == 3 && memcmp(text, "hi\n", 3) == 0);
        CHECK_RC(ipc_console_write_decode(console, 0, &stream, &text, &text_size, &err),
                 IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_console_write_decode(exit_payload, 5, &stream, &text, &text_size, &err),
                 IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
    }
}

/* The application side of a node: a thread that takes commands and runs
 * them. "print": writes to both streams, exits 3. "wait": runs until
 * cancelled. "noexit": finishes without EXIT. */
typedef struct node_app {
    ipc_server_t *server;
    t_mutex *lock;
    int stop;
    int cancels;            /* cancel_handler calls */
    ipc_call *running;
    int commands;
} node_app;

static void node_cancel(void *user_data, ipc_call *call) {
    node_app *app = (node_app *)user_data;
    t_mutex_lock(app->lock);
    app->cancels++;
    CHECK(call == app->running || app->running == NULL);
    t_mutex_unlock(app->lock);
}

static void node_request_handler(void *user_data, ipc_call *call, const uint8_t *request,
                                 size_t size) {
    (void)user_data;
    if (request) ipc_call_respond(call, request, size, NULL);
}

static void node_app_main(void *param) {
    node_app *app = (node_app *)param;
    ipc_error err = {0, 0, NULL};
    for (;;) {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size;
        ipc_command command;
        int stop;
        t_mutex_lock(app->lock);
        stop = app->stop;
        t_mutex_unlock(app->lock);
        if (stop) break;
        if (ipc_server_next_call(app->server, &call, &request, &size, 100, NULL) != IPC_OK)
            continue;
        CHECK(ipc_call_type(call) == IPC_PACKET_COMMAND);
        CHECK_RC(ipc_call_respond(call, "x", 1, &err), IPC_E_INVALID, &err);
        ipc_error_clear(&err);
        t_mutex_lock(app->lock);
        app->running = call;
        app->commands++;
        t_mutex_unlock(app->lock);
        if (CHECK_RC(ipc_command_decode(request, size, &command, &err), IPC_OK, &err)) {
            if (strcmp(command.argv[0], "print") == 0) {
                CHECK_RC(ipc_call_console_write(call, 1, "out\n", 4, &err), IPC_OK, &err);
                CHECK_RC(ipc_call_console_write(call, 2, "\x1b[31merr\x1b[0m\n", 13, &err), IPC_OK, &err);
                CHECK_RC(ipc_call_console_write(call, 3, "x", 1, &err), IPC_E_INVALID, &err);
                ipc_error_clear(&err);
                CHECK_RC(ipc_call_exit(call, 3, IPC_EXIT_COMPLETED, &err), IPC_OK, &err);
                CHECK_RC(ipc_call_console_write(call, 1, "late", 4, &err), IPC_E_INVALID, &err);
                ipc_error_clear(&err);
            } else if (strcmp(command.argv[0], "wait") == 0) {
                long long deadline = t_now_ms() + 10000;
                while (!ipc_call_cancelled(call) && t_now_ms() < deadline) t_sleep_ms(5);
                ipc_call_console_write(call, 2, "cancelled\n", 10, NULL);
                ipc_call_exit(call, 130, IPC_EXIT_CANCELLED, NULL);
            }
        }
        ipc_command_free(&command);
        ipc_error_clear(&err);
        t_mutex_lock(app->lock);
        app->running = NULL;
        t_mutex_unlock(app->lock);
        ipc_call_finish(call);
    }
}

static int send_command(ipc_client_t *client, const char *word) {
    char *argv[1];
    ipc_command command;
    ipc_error err = {0, 0, NULL};
    int ok;
    argv[0] = (char *)word;
    memset(&command, 0, sizeof command);
    command.argc = 1;
    command.argv = argv;
    command.cwd = ".";
    command.locale = "";
    ok = CHECK_RC(ipc_client_send_command(client, &command, 5000, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    return ok;
}

/* Reads packets until EXIT; collects stdout/stderr text. */
static int read_until_exit(ipc_client_t *client, char *out, char *errs, size_t capacity,
                           int32_t *code, uint8_t *type) {
    ipc_error err = {0, 0, NULL};
    size_t out_len = 0, err_len = 0;
    long long deadline = t_now_ms() + 10000;
    out[0] = errs[0] = 0;
    while (t_now_ms() < deadline) {
        uint8_t packet_type = 0;
        const uint8_t *payload;
        size_t size;
        int rc = ipc_client_read_packet(client, &packet_type, &payload, &size, 100, &err);
        if (rc == IPC_E_TIMEOUT) { ipc_error_clear(&err); continue; }
        if (!CHECK_RC(rc, IPC_OK, &err)) break;
        if (packet_type == IPC_PACKET_CONSOLE_WRITE) {
            int stream = 0;
            const uint8_t *text;
            size_t n;
            if (CHECK_RC(ipc_console_write_decode(payload, size, &stream, &text, &n, &err), IPC_OK, &err)) {
                char *dst = stream == 1 ? out : errs;
                size_t *len = stream == 1 ? &out_len : &err_len;
                if (*len + n < capacity) { memcpy(dst + *len, text, n); *len += n; dst[*len] = 0; }
            }
        } else if (CHECK(packet_type == IPC_PACKET_EXIT)) {
            int ok = CHECK_RC(ipc_exit_decode(payload, size, code, type, &err), IPC_OK, &err);
            ipc_error_clear(&err);
            return ok;
        } else {
            break;
        }
    }
    ipc_error_clear(&err);
    return 0;
}

/* Sends "wait" and waits until the application has taken it (a command
 * still queued would be cancelled without ever running). */
static int start_wait_command(node_app *app, ipc_client_t *client) {
    long long deadline = t_now_ms() + 5000;
    int before, running = 0;
    t_mutex_lock(app->lock);
    before = app->commands;
    t_mutex_unlock(app->lock);
    if (!send_command(client, "wait")) return 0;
    while (!running && t_now_ms() < deadline) {
        t_mutex_lock(app->lock);
        running = app->running != NULL && app->commands == before + 1;
        t_mutex_unlock(app->lock);
        if (!running) t_sleep_ms(5);
    }
    return running;
}

static void test_node_commands(void) {
    char name[96], out[256], errs[256];
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    node_app app;
    t_thread *thread;
    ipc_client_t *a, *b;
    int32_t code = -1;
    uint8_t type = 99;
    make_name(name, sizeof name, "node");
    memset(&app, 0, sizeof app);
    app.lock = t_mutex_new();
    ipc_server_options_init(&so);
    so.node = 1;
    so.cancel_handler = node_cancel;
    CHECK_RC(ipc_server_open(&app.server, name, &so, node_request_handler, &app, &err), IPC_OK, &err);
    ipc_error_clear(&err);
    if (!app.server) { t_mutex_free(app.lock); return; }
    CHECK(ipc_server_ready_handle(app.server) != -1);
    thread = t_thread_start(node_app_main, &app);
    a = open_client(name, NULL, 5000);
    b = open_client(name, NULL, 5000);
    if (a && b) {
        /* Output in order, ANSI bytes intact, then the exit code. */
        send_command(a, "print");
        CHECK(read_until_exit(a, out, errs, sizeof out, &code, &type));
        CHECK(strcmp(out, "out\n") == 0 && strcmp(errs, "\x1b[31merr\x1b[0m\n") == 0);
        CHECK(code == 3 && type == IPC_EXIT_COMPLETED);
        /* REQUESTs are still served by the handler on the same connection. */
        expect_text(a, "ping", "ping");
        /* One command at a time: a second client is told BUSY at once. */
        CHECK(start_wait_command(&app, a));
        send_command(b, "print");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_BUSY && out[0] == 0 && errs[0] == 0);
        /* CANCEL stops the running command. */
        CHECK_RC(ipc_client_write_packet(a, IPC_PACKET_CANCEL, NULL, 0, 5000, &err), IPC_OK, &err);
        CHECK(read_until_exit(a, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_CANCELLED && code == 130 && strcmp(errs, "cancelled\n") == 0);
        t_mutex_lock(app.lock);
        CHECK(app.cancels == 1);
        t_mutex_unlock(app.lock);
        /* A late CANCEL (after the EXIT) is ignored; the node is free again. */
        CHECK_RC(ipc_client_write_packet(a, IPC_PACKET_CANCEL, NULL, 0, 5000, &err), IPC_OK, &err);
        send_command(b, "print");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(code == 3 && type == IPC_EXIT_COMPLETED);
        /* A client that vanishes mid-command cancels it. */
        CHECK(start_wait_command(&app, a));
        ipc_client_close(a);
        a = NULL;
        {
            long long deadline = t_now_ms() + 5000;
            int cancels = 0;
            int running = 1;
            while ((cancels < 2 || running) && t_now_ms() < deadline) {
                t_mutex_lock(app.lock);
                cancels = app.cancels;
                running = app.running != NULL;
                t_mutex_unlock(app.lock);
                if (cancels < 2 || running) t_sleep_ms(5);
            }
            CHECK(cancels == 2 && !running);
        }
        send_command(b, "print");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_COMPLETED);
        /* Finishing a command without EXIT reports it as crashed. */
        send_command(b, "noexit");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_CRASHED && code == 1);
        /* Node packets the client must not send, or CANCEL with a payload. */
        CHECK_RC(ipc_client_write_packet(b, IPC_PACKET_EXIT, "12345", 5, 5000, &err), IPC_E_INVALID, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_write_packet(b, IPC_PACKET_CANCEL, "x", 1, 5000, &err), IPC_OK, &err);
        {
            uint8_t packet_type = 0;
            const uint8_t *payload;
            size_t size;
            CHECK_RC(ipc_client_read_packet(b, &packet_type, &payload, &size, 5000, &err), IPC_OK, &err);
            CHECK(packet_type == IPC_PACKET_ERROR);
            CHECK_RC(ipc_client_read_packet(b, &packet_type, &payload, &size, 5000, &err), IPC_E_CLOSED, &err);
            ipc_error_clear(&err);
        }
    }
    ipc_error_clear(&err);
    ipc_client_close(a);
    ipc_client_close(b);
    t_mutex_lock(app.lock);
    app.stop = 1;
    t_mutex_unlock(app.lock);
    t_thread_join(thread);
    ipc_server_stop(app.server);
    t_mutex_free(app.lock);
}

/* A node server refuses node packets when options.node is not set. */
static void test_node_packets_refused(void) {
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    make_name(name, sizeof name, "notnode");
    ctx_init(&ctx);
    server = open_server(name, NULL, xor_handler, &ctx);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        uint8_t packet_type = 0;
        const uint8_t *payload;
        size_t size;
        send_command(client, "print");
        CHECK_RC(ipc_client_read_packet(client, &packet_type, &payload, &size, 5000, &err), IPC_OK, &err);
        CHECK(packet_type == IPC_PACKET_ERROR);
        CHECK(size > 0 && strstr((const char *)payload, "type 4") != NULL);
        ipc_error_clear(&err);
    }
    ipc_client_close(client);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* ======================================================================
 * Main
 * ====================================================================== */

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

static const test_case TESTS[] = {
    {"codec", test_codec},
    {"options_and_nulls", test_options_and_nulls},
    {"server_open_stop", test_server_open_stop},
    {"round_trips", test_round_trips},
    {"concurrent_clients", test_concurrent_clients},
    {"bad_options", test_bad_options},
    {"racing_servers", test_racing_servers},
    {"remote_errors", test_remote_errors},
    {"pipelining_and_connection", test_pipelining_and_connection},
    {"client_in_use", test_client_in_use},
    {"client_shutdown_during_call", test_client_shutdown_during_call},
    {"client_interrupt_hook", test_client_interrupt_hook},
    {"client_call_reply", test_client_call_reply},
    {"too_large_response", test_too_large_response},
    {"too_large_request", test_too_large_request},
    {"address_in_use", test_address_in_use},
    {"name_too_long", test_name_too_long},
    {"not_found", test_not_found},
    {"connect_retries_until_server_starts", test_connect_retries_until_server_starts},
    {"wrong_handshake", test_wrong_handshake},
    {"versions", test_versions},
    {"busy", test_busy},
    {"stop_with_clients", test_stop_with_clients},
    {"stop_with_full_slots", test_stop_with_full_slots},
    {"timeouts", test_timeouts},
    {"write_timeout", test_write_timeout},
    {"connect_cycles", test_connect_cycles},
    {"disconnect_notification", test_disconnect_notification},
    {"log_callback", test_log_callback},
    {"legacy_api", test_legacy_api},
    {"open_stop_cycles", test_open_stop_cycles},
    {"cross_process_client", test_cross_process_client},
    {"killed_client", test_killed_client},
    {"cross_process_server", test_cross_process_server},
    {"stale_name_reclaimed", test_stale_name_reclaimed},
#ifndef _WIN32
    {"raw_wire", test_raw_wire},
    {"stop_with_stuck_peers", test_stop_with_stuck_peers},
    {"path_names", test_path_names},
    {"private_directory", test_private_directory},
#endif
    {"idle_connections_survive_wakeups", test_idle_connections_survive_wakeups},
    {"cancel_race_under_load", test_cancel_race_under_load},
    {"windows_acl_readback", test_windows_acl_readback},
    {"two_wine_processes", test_two_wine_processes},
    {"no_sigpipe", test_no_sigpipe},
    {"manual_dispatch", test_manual_dispatch},
    {"node_codec", test_node_codec},
    {"node_commands", test_node_commands},
    {"node_packets_refused", test_node_packets_refused},
    /* last: under ThreadSanitizer a data race here ends the run */
    {"log_handler_swap_while_serving", test_log_handler_swap_while_serving},
};

static int selected(const char *name, int argc, char **argv) {
    int i;
    if (argc <= 1) return 1;
    for (i = 1; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    size_t i;
    int fds_before, fds_after;
    t_thread *watchdog;
    const char *verbose = getenv("IPCFAST_TEST_VERBOSE");

    setvbuf(stdout, NULL, _IONBF, 0);
    g_harness_lock = t_mutex_new();
    g_log_lock = t_mutex_new();
    g_log_verbose = verbose && verbose[0] && strcmp(verbose, "0") != 0;
    if (g_log_verbose) ipc_set_log_handler(test_log_fn, NULL);

#ifndef _WIN32
    g_self_path = argv[0];
#if defined(__linux__)
    if (!strchr(argv[0], '/')) g_self_path = "/proc/self/exe";
#endif
    {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigpipe;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGPIPE, &sa, NULL);
    }
#endif

    if (argc == 3 && strncmp(argv[1], "--child-", 8) == 0) {
        int rc;
        g_child_mode = 1;
        g_current_test = argv[1];
        if (strcmp(argv[1], "--child-client") == 0)
            rc = child_client(argv[2]);
        else if (strcmp(argv[1], "--child-server") == 0)
            rc = child_server(argv[2], 0, 0);
        else if (strcmp(argv[1], "--child-client-hang") == 0)
            rc = child_client_hang(argv[2]);
        else if (strcmp(argv[1], "--child-server-hold") == 0)
            rc = child_server(argv[2], 1, 0);
        else if (strcmp(argv[1], "--child-server-one") == 0)
            rc = child_server(argv[2], 0, 1);
        else if (strcmp(argv[1], "--child-legacy-server") == 0)
            rc = child_legacy_server(argv[2]);
        else if (strcmp(argv[1], "--child-new-client") == 0)
            rc = child_new_client(argv[2]);
        else if (strcmp(argv[1], "--child-hammer") == 0)
            rc = child_hammer(argv[2]);
        else
            rc = 2;
        return rc > 100 ? 100 : rc;
    }

    fds_before = COUNT_FDS();
    watchdog = t_thread_start(watchdog_main, NULL);
    for (i = 0; i < sizeof TESTS / sizeof TESTS[0]; i++) {
        long long t0;
        int failed_before;
        if (!selected(TESTS[i].name, argc, argv)) continue;
        t_mutex_lock(g_harness_lock);
        g_current_test = TESTS[i].name;
        t_mutex_unlock(g_harness_lock);
        set_deadline(t_now_ms() + 120000);
        failed_before = failures_so_far();
        printf("[ RUN  ] %s\n", TESTS[i].name);
        t0 = t_now_ms();
        TESTS[i].fn();
        printf("[ %s ] %s (%lld ms)\n", failures_so_far() == failed_before ? " OK " : "FAIL",
               TESTS[i].name, t_now_ms() - t0);
    }
    set_deadline(0);
    t_mutex_lock(g_harness_lock);
    g_watchdog_stop = 1;
    t_mutex_unlock(g_harness_lock);
    t_thread_join(watchdog);
    ipc_set_log_handler(NULL, NULL);

    fds_after = COUNT_FDS();
    if (argc <= 1 && fds_before >= 0) {
        g_current_test = "descriptor leak check";
        if (!CHECK(fds_after == fds_before))
            printf("      descriptors: %d at start, %d at end\n", fds_before, fds_after);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    t_mutex_free(g_log_lock);
    t_mutex_free(g_harness_lock);
    return g_failed ? 1 : 0;
}
