/*
 * The original single-header API (ipc_server_start, ipc_client_connect,
 * ...), written on top of the public API. Its only link to the core's
 * insides is one attached pointer per server and per client
 * (ipc__server_attach, ipc__client_attach), which the core frees without
 * knowing what it holds.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

/* The original handler and its user data, passed as the new-style
 * handler's user data. */
typedef struct compat_server {
    ipc_request_handler_t handler;
    void *user_data;
} compat_server;

/* The rest of a response that did not fit ipc_client_receive's buffer. It
 * points into the client's stream, which is why the client drops it as
 * soon as the stream moves on. */
typedef struct compat_rest {
    const uint8_t *data;
    size_t left;
} compat_rest;

static void compat_trampoline(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    const compat_server *wrapper = (const compat_server *)user_data;
    char *response;

    (void)size;
    if (!request) {
        wrapper->handler(NULL, wrapper->user_data, NULL, 0);
        return;
    }
    response = (char *)ipc_call_buffer(call, IPC_LEGACY_RESPONSE_CAPACITY);
    if (!response) {
        static const char text[] = "out of memory for the response buffer";
        ipc_call_fail(call, text, sizeof text - 1, NULL);
        return;
    }
    memset(response, 0, IPC_LEGACY_RESPONSE_CAPACITY);
    /* The stream puts a NUL after every payload, so the request is a C
     * string even when the client did not send one. */
    wrapper->handler((const char *)request, wrapper->user_data, response,
                     IPC_LEGACY_RESPONSE_CAPACITY);
    response[IPC_LEGACY_RESPONSE_CAPACITY - 1] = '\0';
    ipc_call_respond(call, response, strlen(response) + 1, NULL);
}

/* The original API reports failures only through the log. */
static void log_failure(const char *what, ipc_error *err)
{
    ipc__log(IPC_LOG_ERROR, "%s: %s", what,
             err->message ? err->message : ipc_result_name(err->code));
    ipc_error_clear(err);
}

ipc_server_t *ipc_server_start(char const *pipe_name, ipc_request_handler_t request_handler,
                               void *user_data)
{
    ipc_server_t *server = NULL;
    compat_server *wrapper = NULL;
    ipc_error err = {0};

    if (!request_handler) {
        ipc__fail(&err, IPC_E_INVALID, 0, "NULL request handler");
        goto fail;
    }
    wrapper = (compat_server *)malloc(sizeof *wrapper);
    if (!wrapper) {
        ipc__fail(&err, IPC_E_NO_MEMORY, 0, "out of memory for the server");
        goto fail;
    }
    wrapper->handler = request_handler;
    wrapper->user_data = user_data;
    if (ipc_server_open(&server, pipe_name, NULL, compat_trampoline, wrapper, &err) != IPC_OK)
        goto fail;
    /* The server frees the wrapper when it is stopped. */
    ipc__server_attach(server, wrapper, free);
    return server;
fail:
    free(wrapper);
    log_failure("ipc_server_start", &err);
    return NULL;
}

ipc_client_t *ipc_client_connect(char const *pipe_name)
{
    ipc_client_t *client = NULL;
    ipc_client_options options;
    ipc_error err = {0};

    /* The original API waited for a server that was not there yet: keep it. */
    ipc_client_options_init(&options);
    options.wait_if_not_found = 1;
    if (ipc_client_open(&client, pipe_name, &options, IPC_LEGACY_CONNECT_TIMEOUT_MS, &err) !=
        IPC_OK) {
        log_failure("ipc_client_connect", &err);
        return NULL;
    }
    return client;
}

void ipc_client_disconnect(ipc_client_t *connection)
{
    ipc_client_close(connection);
}

bool ipc_client_send(ipc_client_t *connection, char const *message)
{
    ipc_error err = {0};

    if (!message) {
        ipc__fail(&err, IPC_E_INVALID, 0, "NULL message");
        log_failure("ipc_client_send", &err);
        return false;
    }
    if (ipc_client_write(connection, message, strlen(message) + 1, -1, &err) != IPC_OK) {
        log_failure("ipc_client_send", &err);
        return false;
    }
    return true;
}

/* The next response as a rest to hand out; NULL after a failure (logged). */
static compat_rest *read_response(ipc_client_t *connection, compat_rest *fresh)
{
    ipc_error err = {0};

    if (ipc_client_read(connection, &fresh->data, &fresh->left, -1, &err) != IPC_OK) {
        log_failure("ipc_client_receive", &err);
        return NULL;
    }
    return fresh;
}

/* Keeps what did not fit for the next ipc_client_receive. */
static ipc_receive_status_t keep_rest(ipc_client_t *connection, const compat_rest *rest)
{
    compat_rest *kept;

    if (rest->left == 0)
        return IPC_RECEIVE_STATUS_DONE;
    kept = (compat_rest *)malloc(sizeof *kept);
    if (!kept) {
        ipc_error err = {0};

        ipc__fail(&err, IPC_E_NO_MEMORY, 0, "out of memory for the rest of a response");
        log_failure("ipc_client_receive", &err);
        return IPC_RECEIVE_STATUS_ERROR;
    }
    *kept = *rest;
    ipc__client_attach(connection, kept, free);
    return IPC_RECEIVE_STATUS_MORE_DATA;
}

ipc_receive_status_t ipc_client_receive(ipc_client_t *connection, char *output, int output_size,
                                        int *received_size)
{
    compat_rest fresh, *rest;
    compat_rest left;
    size_t chunk;

    if (received_size)
        *received_size = 0;
    if (!connection || !output || output_size <= 0) {
        ipc_error err = {0};

        ipc__fail(&err, IPC_E_INVALID, 0, "NULL connection or output, or output_size <= 0");
        log_failure("ipc_client_receive", &err);
        return IPC_RECEIVE_STATUS_ERROR;
    }
    rest = (compat_rest *)ipc__client_attached(connection);
    if (!rest)
        rest = read_response(connection, &fresh);
    if (!rest)
        return IPC_RECEIVE_STATUS_ERROR;
    chunk = rest->left < (size_t)output_size ? rest->left : (size_t)output_size;
    memcpy(output, rest->data, chunk);
    if (received_size)
        *received_size = (int)chunk;
    left.data = rest->data + chunk;
    left.left = rest->left - chunk;
    /* Replacing the attachment frees the old rest (possibly `rest`). */
    ipc__client_attach(connection, NULL, NULL);
    return keep_rest(connection, &left);
}
