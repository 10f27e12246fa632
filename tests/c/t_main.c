/*
 * The runner of the C tests: the tests of every area (tests/c/test_*.c,
 * listed in run order in tests/c/test_list.h) exercise the public API of
 * csrc/ipc.h over the real transport, in one process with threads and
 * across processes.
 *
 * Build, from the repository root (tests/c_build.py does this for the test
 * suite, with sanitizers, warnings as errors, and for Windows):
 *   cmake -S . -B build-c -DIPCFAST_PYTHON=OFF -DIPCFAST_BUILD_TESTS=ON
 *   cmake --build build-c
 * or without CMake, compile every .c file of tests/c but stress.c together
 * with every .c file of csrc/ (add -lpthread on POSIX, -ladvapi32 for
 * Windows).
 *
 * Run:  build-c/bin/ipcfast_c_tests [TEST_NAME_SUBSTRING...]
 * The last line of the output is "N passed, N failed"; the exit status is
 * nonzero when any check failed. Set IPCFAST_TEST_VERBOSE=1 to print the
 * core's log messages.
 *
 * The program runs itself as a second process for the cross-process tests
 * (first argument --child-client / --child-client-hang / --child-server /
 * --child-server-hold / --child-server-one / --child-legacy-server /
 * --child-new-client / --child-hammer, second the server name).
 */
#include "t_harness.h"

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

#define T_ENTRY(name) {#name, test_##name},
static const test_case TESTS[] = {T_TEST_LIST(T_ENTRY)};
#undef T_ENTRY

static int selected(const char *name, int argc, char **argv)
{
    int i;
    if (argc <= 1)
        return 1;
    for (i = 1; i < argc; i++)
        if (strstr(name, argv[i]))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    size_t i;
    int fds_before, fds_after;
    t_thread *watchdog;
    const char *verbose = getenv("IPCFAST_TEST_VERBOSE");

    setvbuf(stdout, NULL, _IONBF, 0);
    g_harness_lock = t_mutex_new();
    g_log_lock = t_mutex_new();
    g_log_verbose = verbose && verbose[0] && strcmp(verbose, "0") != 0;
    if (g_log_verbose)
        ipc_set_log_handler(test_log_fn, NULL);

#ifndef _WIN32
    g_self_path = argv[0];
#if defined(__linux__)
    if (!strchr(argv[0], '/'))
        g_self_path = "/proc/self/exe";
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
        if (!selected(TESTS[i].name, argc, argv))
            continue;
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
