/*
 * C tests of logging: the log callback, and replacing it while servers run.
 */
#include "t_harness.h"

void test_log_callback(void)
{
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
    if (g_log_verbose)
        ipc_set_log_handler(test_log_fn, NULL);
    ctx_free(&ctx);
}

/* ---- the log callback may be replaced while servers run --------------- */

static int g_swap_token_a, g_swap_token_b;                  /* addresses used as user_data */
static int g_swap_calls_a, g_swap_calls_b, g_swap_mismatch; /* under g_log_lock */

static void swap_log_a(void *user_data, int level, const char *message)
{
    (void)level;
    (void)message;
    t_mutex_lock(g_log_lock);
    g_swap_calls_a++;
    if (user_data != &g_swap_token_a)
        g_swap_mismatch++;
    t_mutex_unlock(g_log_lock);
}

static void swap_log_b(void *user_data, int level, const char *message)
{
    (void)level;
    (void)message;
    t_mutex_lock(g_log_lock);
    g_swap_calls_b++;
    if (user_data != &g_swap_token_b)
        g_swap_mismatch++;
    t_mutex_unlock(g_log_lock);
}

typedef struct noisy_arg {
    const char *name;
    int rounds;
} noisy_arg;

/* Clients with a wrong key: each makes a server thread log a warning. */
static void noisy_main(void *param)
{
    noisy_arg *arg = (noisy_arg *)param;
    ipc_client_options co;
    int i;
    ipc_client_options_init(&co);
    co.handshake[5] ^= 0x10;
    for (i = 0; i < arg->rounds; i++) {
        ipc_client_t *client = NULL;
        if (ipc_client_open(&client, arg->name, &co, 2000, NULL) == IPC_OK)
            ipc_client_close(client);
    }
}

/* ipc_set_log_handler says nothing about when it may be called, so it may
 * be called while server threads log: each message must reach a complete
 * (callback, user_data) pair, never a mix, and without a data race (the
 * ThreadSanitizer build checks the latter). */
void test_log_handler_swap_while_serving(void)
{
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
