/*
 * C tests of the server node: command codec, commands over a connection, refusals.
 */
#include "t_harness.h"

void test_node_codec(void)
{
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
    CHECK(size == 4 + 4 + (4 + 6) + (4 + 2) + (4 + 4) + (4 + 2) + (4 + 4) + 4 + (4 + 3) + (4 + 9) +
                      (4 + 7));
    CHECK_RC(ipc_command_decode(payload, size, &out, &err), IPC_OK, &err);
    CHECK(out.flags == IPC_COMMAND_STDOUT_TTY && out.argc == 4 && out.envc == 2);
    if (out.argc == 4 && out.envc == 2) {
        for (i = 0; i < 4; i++)
            CHECK(strcmp(out.argv[i], argv[i]) == 0);
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
        longer[4] = 0xFF;
        longer[5] = 0xFF;
        longer[6] = 0xFF;
        longer[7] = 0x7F;
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
        CHECK_RC(ipc_console_write_decode(console, 4, &stream, &text, &text_size, &err), IPC_OK,
                 &err);
        CHECK(stream == 2 && text_size == 3 && memcmp(text, "hi\n", 3) == 0);
        CHECK_RC(ipc_console_write_decode(console, 0, &stream, &text, &text_size, &err),
                 IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_console_write_decode(exit_payload, 5, &stream, &text, &text_size, &err),
                 IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
    }
    {
        /* CANCEL: empty is Ctrl-C; one byte names a signal; nothing else. */
        static const uint8_t terminate[1] = {15}, winch[1] = {28}, unknown[1] = {9};
        static const uint8_t two[2] = {15, 0};
        int signal_code = 0;
        CHECK_RC(ipc_cancel_decode(NULL, 0, &signal_code, &err), IPC_OK, &err);
        CHECK(signal_code == IPC_SIGNAL_INTERRUPT);
        CHECK_RC(ipc_cancel_decode(terminate, 1, &signal_code, &err), IPC_OK, &err);
        CHECK(signal_code == IPC_SIGNAL_TERMINATE);
        CHECK_RC(ipc_cancel_decode(winch, 1, &signal_code, &err), IPC_OK, &err);
        CHECK(signal_code == IPC_SIGNAL_WINDOW_CHANGED);
        CHECK_RC(ipc_cancel_decode(unknown, 1, &signal_code, &err), IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_cancel_decode(two, 2, &signal_code, &err), IPC_E_PROTOCOL, &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_cancel_decode(terminate, 1, NULL, &err), IPC_E_INVALID, &err);
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
    int cancels; /* cancel_handler calls */
    ipc_call *running;
    int commands;
} node_app;

static void node_cancel(void *user_data, ipc_call *call)
{
    node_app *app = (node_app *)user_data;
    t_mutex_lock(app->lock);
    app->cancels++;
    CHECK(call == app->running || app->running == NULL);
    t_mutex_unlock(app->lock);
}

static void node_request_handler(void *user_data, ipc_call *call, const uint8_t *request,
                                 size_t size)
{
    (void)user_data;
    if (request)
        ipc_call_respond(call, request, size, NULL);
}

static void node_app_main(void *param)
{
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
        if (stop)
            break;
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
                CHECK_RC(ipc_call_console_write(call, 2, "\x1b[31merr\x1b[0m\n", 13, &err), IPC_OK,
                         &err);
                CHECK_RC(ipc_call_console_write(call, 3, "x", 1, &err), IPC_E_INVALID, &err);
                ipc_error_clear(&err);
                CHECK_RC(ipc_call_exit(call, 3, IPC_EXIT_COMPLETED, &err), IPC_OK, &err);
                CHECK_RC(ipc_call_console_write(call, 1, "late", 4, &err), IPC_E_INVALID, &err);
                ipc_error_clear(&err);
            } else if (strcmp(command.argv[0], "wait") == 0) {
                long long deadline = t_now_ms() + 10000;
                while (!ipc_call_cancelled(call) && t_now_ms() < deadline)
                    t_sleep_ms(5);
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

static int send_command(ipc_client_t *client, const char *word)
{
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
                           int32_t *code, uint8_t *type)
{
    ipc_error err = {0, 0, NULL};
    size_t out_len = 0, err_len = 0;
    long long deadline = t_now_ms() + 10000;
    out[0] = errs[0] = 0;
    while (t_now_ms() < deadline) {
        uint8_t packet_type = 0;
        const uint8_t *payload;
        size_t size;
        int rc = ipc_client_read_packet(client, &packet_type, &payload, &size, 100, &err);
        if (rc == IPC_E_TIMEOUT) {
            ipc_error_clear(&err);
            continue;
        }
        if (!CHECK_RC(rc, IPC_OK, &err))
            break;
        if (packet_type == IPC_PACKET_CONSOLE_WRITE) {
            int stream = 0;
            const uint8_t *text;
            size_t n;
            if (CHECK_RC(ipc_console_write_decode(payload, size, &stream, &text, &n, &err), IPC_OK,
                         &err)) {
                char *dst = stream == 1 ? out : errs;
                size_t *len = stream == 1 ? &out_len : &err_len;
                if (*len + n < capacity) {
                    memcpy(dst + *len, text, n);
                    *len += n;
                    dst[*len] = 0;
                }
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
static int start_wait_command(node_app *app, ipc_client_t *client)
{
    long long deadline = t_now_ms() + 5000;
    int before, running = 0;
    t_mutex_lock(app->lock);
    before = app->commands;
    t_mutex_unlock(app->lock);
    if (!send_command(client, "wait"))
        return 0;
    while (!running && t_now_ms() < deadline) {
        t_mutex_lock(app->lock);
        running = app->running != NULL && app->commands == before + 1;
        t_mutex_unlock(app->lock);
        if (!running)
            t_sleep_ms(5);
    }
    return running;
}

void test_node_commands(void)
{
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
    CHECK_RC(ipc_server_open(&app.server, name, &so, node_request_handler, &app, &err), IPC_OK,
             &err);
    ipc_error_clear(&err);
    if (!app.server) {
        t_mutex_free(app.lock);
        return;
    }
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
        /* A window change does not stop a command (this node has nothing to
         * resize); a TERMINATE does, as a CANCEL. */
        CHECK(start_wait_command(&app, a));
        {
            uint8_t signal_code = IPC_SIGNAL_WINDOW_CHANGED;
            CHECK_RC(ipc_client_write_packet(a, IPC_PACKET_CANCEL, &signal_code, 1, 5000, &err),
                     IPC_OK, &err);
            t_sleep_ms(100);
            t_mutex_lock(app.lock);
            CHECK(app.cancels == 1);
            t_mutex_unlock(app.lock);
            signal_code = IPC_SIGNAL_TERMINATE;
            CHECK_RC(ipc_client_write_packet(a, IPC_PACKET_CANCEL, &signal_code, 1, 5000, &err),
                     IPC_OK, &err);
        }
        CHECK(read_until_exit(a, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_CANCELLED && code == 130);
        /* A client that vanishes mid-command cancels it. */
        CHECK(start_wait_command(&app, a));
        ipc_client_close(a);
        a = NULL;
        {
            long long deadline = t_now_ms() + 5000;
            int cancels = 0;
            int running = 1;
            while ((cancels < 3 || running) && t_now_ms() < deadline) {
                t_mutex_lock(app.lock);
                cancels = app.cancels;
                running = app.running != NULL;
                t_mutex_unlock(app.lock);
                if (cancels < 3 || running)
                    t_sleep_ms(5);
            }
            CHECK(cancels == 3 && !running);
        }
        send_command(b, "print");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_COMPLETED);
        /* Finishing a command without EXIT reports it as crashed. */
        send_command(b, "noexit");
        CHECK(read_until_exit(b, out, errs, sizeof out, &code, &type));
        CHECK(type == IPC_EXIT_CRASHED && code == 1);
        /* Node packets the client must not send, or CANCEL with an unknown signal. */
        CHECK_RC(ipc_client_write_packet(b, IPC_PACKET_EXIT, "12345", 5, 5000, &err), IPC_E_INVALID,
                 &err);
        ipc_error_clear(&err);
        CHECK_RC(ipc_client_write_packet(b, IPC_PACKET_CANCEL, "x", 1, 5000, &err), IPC_OK, &err);
        {
            uint8_t packet_type = 0;
            const uint8_t *payload;
            size_t size;
            CHECK_RC(ipc_client_read_packet(b, &packet_type, &payload, &size, 5000, &err), IPC_OK,
                     &err);
            CHECK(packet_type == IPC_PACKET_ERROR);
            CHECK_RC(ipc_client_read_packet(b, &packet_type, &payload, &size, 5000, &err),
                     IPC_E_CLOSED, &err);
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
void test_node_packets_refused(void)
{
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
        CHECK_RC(ipc_client_read_packet(client, &packet_type, &payload, &size, 5000, &err), IPC_OK,
                 &err);
        CHECK(packet_type == IPC_PACKET_ERROR);
        CHECK(size > 0 && strstr((const char *)payload, "type 4") != NULL);
        ipc_error_clear(&err);
    }
    ipc_client_close(client);
    ipc_server_stop(server);
    ctx_free(&ctx);
}
