/*
 * The C test suite's shared harness: portability helpers (t_*), checks
 * (CHECK, CHECK_RC, CHECK_MS), the servers' handlers and the helpers every
 * area uses. Each tests/c/test_*.c file holds the tests of one area of the
 * core; tests/c/test_list.h lists them all in run order and tests/c/t_main.c
 * is the one runner (see there for how to build and run it).
 *
 * The tests use only the public API of csrc/ipc.h; the few OS-specific bits
 * (sleeping, clock, threads, locks, processes) sit behind the t_* helpers.
 */
#ifndef IPCFAST_T_HARNESS_H
#define IPCFAST_T_HARNESS_H

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
#include "test_list.h"

/* ---- portability helpers (t_platform.c) ---------------------------------- */

void t_sleep_ms(int ms);
long long t_now_ms(void);
long t_getpid(void);

typedef void (*t_thread_fn)(void *arg);
typedef struct t_thread t_thread;
t_thread *t_thread_start(t_thread_fn fn, void *arg);
void t_thread_join(t_thread *thread);

typedef struct t_mutex t_mutex;
t_mutex *t_mutex_new(void);
void t_mutex_free(t_mutex *mutex);
void t_mutex_lock(t_mutex *mutex);
void t_mutex_unlock(t_mutex *mutex);

typedef struct t_proc t_proc;
/* Runs this program again as `self MODE NAME`; NULL on failure. */
t_proc *t_proc_spawn(const char *mode, const char *name);
/* Waits at most timeout_ms; returns the exit code, or -1 on timeout (the
 * process is then killed) or abnormal end. Frees proc. */
int t_proc_wait(t_proc *proc, int timeout_ms);
/* Kills at once (SIGKILL / TerminateProcess) without cleanup. */
void t_proc_kill(t_proc *proc);

#if defined(_WIN32)
/* Nonzero when running under wine (which lacks a few Windows guarantees). */
int t_under_wine(void);
#else
/* This program's path, for t_proc_spawn (set by main). */
extern const char *g_self_path;
#endif

/* ---- checks (t_harness.c) -------------------------------------------------- */

extern t_mutex *g_harness_lock;
extern int g_passed;
extern int g_failed;
extern const char *g_current_test; /* guarded by g_harness_lock */
extern int g_child_mode;           /* nonzero in a child process */
extern int g_watchdog_stop;        /* guarded by g_harness_lock */

void note(const char *format, ...);
int check_impl(int ok, const char *expr, const char *file, int line);
int check_rc_impl(int got, int expected, const ipc_error *err, const char *expr, const char *file,
                  int line);
int failures_so_far(void);
/* A test still running at `deadline` (t_now_ms) ends the run; 0: none. */
void set_deadline(long long deadline);
/* The watchdog thread's body: ends the run with a clear message if one test hangs. */
void watchdog_main(void *arg);

#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, __FILE__, __LINE__)
#define CHECK_RC(expr, expected, err) \
    check_rc_impl((expr), (expected), (err), #expr, __FILE__, __LINE__)
/* Checks that a duration in ms lies in [lo, hi]. */
#define CHECK_MS(elapsed, lo, hi)                                                              \
    do {                                                                                       \
        long long e_ = (elapsed);                                                              \
        if (!check_impl(e_ >= (lo) && e_ <= (hi), #elapsed " in [" #lo ", " #hi "]", __FILE__, \
                        __LINE__))                                                             \
            note("      (took %lld ms)", e_);                                                  \
    } while (0)

/* ---- log capture ------------------------------------------------------------- */

extern t_mutex *g_log_lock;
extern int g_log_count;     /* guarded by g_log_lock */
extern int g_log_bad_level; /* guarded by g_log_lock */
extern int g_log_verbose;   /* IPCFAST_TEST_VERBOSE: print the core's log */

void test_log_fn(void *user_data, int level, const char *message);

/* Counts what the core logs at WARNING and above while a test runs. The
 * tally must outlive every server thread that may log into it: end it only
 * after ipc_server_stop has returned. */
typedef struct log_tally {
    t_mutex *lock;
    int warnings;
    int errors;
    char first[300]; /* the first such message, for the report */
} log_tally;

void tally_begin(log_tally *tally);
/* Uninstalls the tally and checks that nothing was logged at WARNING or above. */
void tally_end_expect_quiet(log_tally *tally);

/* ---- names, data, descriptors ------------------------------------------------ */

/* The default handshake value, as it goes over the wire. */
extern const uint8_t DEFAULT_HS[8];

/* A plain name unique to this process and call. */
void make_name(char *out, size_t size, const char *tag);
unsigned fill_random(unsigned char *buf, size_t size, unsigned seed);
unsigned next_random(unsigned *state);
size_t make_unique_request(unsigned char *req, unsigned char *expected, size_t size,
                           const char *tag, int client, int seq);
int unique_round_trip(ipc_client_t *client, const unsigned char *req, size_t size,
                      const unsigned char *expected, int timeout_ms, const char *who, int *wrong);

#if defined(__linux__)
int count_dir_entries(const char *path);
#define COUNT_FDS() count_dir_entries("/proc/self/fd")
#define COUNT_THREADS() count_dir_entries("/proc/self/task")
#else
#define COUNT_FDS() (-1)
#define COUNT_THREADS() (-1)
#endif

#ifndef _WIN32
/* SIGPIPEs received (main installs on_sigpipe): the library must raise none. */
extern volatile sig_atomic_t g_sigpipes;
void on_sigpipe(int sig);
#endif

/* ---- server handlers and client helpers ------------------------------------- */

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
    int loops; /* loop_xor_handler: connections whose loop started */
} srv_ctx;

void ctx_init(srv_ctx *ctx);
void ctx_free(srv_ctx *ctx);
int ctx_get(srv_ctx *ctx, const int *field);
void ctx_set(srv_ctx *ctx, int *field, int value);
void ctx_add(srv_ctx *ctx, int *field, int delta);
/* Waits up to timeout_ms for *field to reach at least value. */
int ctx_wait_for(srv_ctx *ctx, const int *field, int value, int timeout_ms);
/* Waits up to timeout_ms for *field to equal value. */
int ctx_wait_equal(srv_ctx *ctx, const int *field, int value, int timeout_ms);

/* Answers each request with its bytes XOR 0x5C, built in ipc_call_buffer. */
void xor_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size);
/* xor_handler as a connection_handler running its own loop; "fail", "self",
 * "none" and "quit" test its answers (see t_harness.c). Counts requests,
 * loops started and loops ended (disconnects). */
void loop_xor_handler(void *user_data, ipc_serve_loop *loop);
/* Text commands (fail:, noreply, sleep:, big:, twice, conn, quit); anything
 * else is echoed as is. */
void cmd_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size);
/* The original handler signature: answers "echo:" + request. */
void legacy_handler(char const *request, void *user_data, char *response, size_t capacity);

/* Opens a server or records a failure; NULL on failure. */
ipc_server_t *open_server(const char *name, const ipc_server_options *options,
                          ipc_handler_fn handler, srv_ctx *ctx);
ipc_client_t *open_client(const char *name, const ipc_client_options *options, int timeout_ms);
ipc_client_t *open_client_waiting(const char *name, int timeout_ms);
/* One request whose response must equal `expected`. */
int expect_response(ipc_client_t *client, const void *request, size_t size, const void *expected,
                    size_t expected_size);
int expect_text(ipc_client_t *client, const char *request, const char *expected);
/* One request that must fail with `expected`; returns the message (to free) or NULL. */
char *expect_failure(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     int expected);

/* A client thread (t_thread_start(worker_main, &arg)) sending `iterations`
 * requests of random sizes and content to an xor_handler server; counts
 * the right answers in ok_count. */
typedef struct worker_arg {
    const char *name;
    int index;
    int iterations;
    int ok_count;
} worker_arg;
void worker_main(void *param);

/* ---- child processes (test_process.c) ---------------------------------------- */

/* The modes the program runs in as a second process (`self MODE NAME`);
 * each returns the process's exit code. */
int child_client(const char *name);
int child_client_hang(const char *name);
int child_server(const char *name, int hold, uint32_t max_clients);
int child_legacy_server(const char *name);
int child_new_client(const char *name);
int child_hammer(const char *name);

/* ---- the tests ------------------------------------------------------------- */

#define T_DECLARE(name) void test_##name(void);
T_TEST_LIST(T_DECLARE)
#undef T_DECLARE

#endif
