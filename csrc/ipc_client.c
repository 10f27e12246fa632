/*
 * The client: connect with retries, the client side of the handshake, and
 * calls (request, write, read, raw packets) over the buffered stream. One
 * client is used by one thread at a time: `busy` detects the second.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

struct ipc_client_t {
    ipc_client_options options;
    ipc_stream stream;        /* stream.conn is NULL once closed */
    ipc_plat_mutex *busy;     /* held during a call: detects concurrent use */
    uint8_t version;
    ipc_shm_link *shm;        /* the shared-memory data path, if accepted */
    int awaiting;             /* shm: a request was sent, its answer not read */
    char *closed_reason;      /* why the connection was abandoned */
    /* A wrapper's state about the last response (ipc__client_attach). */
    void *attached;
    void (*attached_free)(void *attached);
};

/* The wrapper state points into the last response: it goes whenever the
 * stream moves on. */
static void drop_attached(ipc_client_t *client)
{
    if (client->attached_free)
        client->attached_free(client->attached);
    client->attached = NULL;
    client->attached_free = NULL;
}

void ipc__client_attach(ipc_client_t *client, void *attached, void (*free_fn)(void *))
{
    drop_attached(client);
    client->attached = attached;
    client->attached_free = free_fn;
}

void *ipc__client_attached(const ipc_client_t *client)
{
    return client->attached;
}

void ipc_client_options_init(ipc_client_options *options)
{
    memset(options, 0, sizeof *options);
    options->max_message = IPC_DEFAULT_MAX_MESSAGE;
    memcpy(options->handshake, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    options->version = IPC_PROTOCOL_VERSION;
    options->shm_spin_us = IPC_DEFAULT_SPIN_US;
}

/* After a failure that leaves the stream in an unknown state (timeout
 * mid-response, peer gone, garbage), the connection is closed for good. */
static void client_abandon(ipc_client_t *client, const ipc_error *why)
{
    if (!client->stream.conn)
        return;
    ipc_plat_conn_close(client->stream.conn);
    client->stream.conn = NULL;
    ipc__shm_free(client->shm);
    client->shm = NULL;
    drop_attached(client);
    free(client->closed_reason);
    client->closed_reason = ipc__format("%s", why && why->message ? why->message
                                              : "the connection failed");
}

static int client_check_open(ipc_client_t *client, ipc_error *err)
{
    if (client->stream.conn)
        return IPC_OK;
    return ipc__fail(err, IPC_E_CLOSED, 0, "the connection is closed (%s); open a new client",
                     client->closed_reason ? client->closed_reason : "closed");
}

static int client_handshake(ipc_client_t *client, const char *name, int64_t deadline,
                            ipc_error *err)
{
    uint8_t hello[IPC_HANDSHAKE_SIZE + 1];
    ipc_stream *s = &client->stream;
    ipc_plat_buf part;
    uint8_t server_version = 0;
    ipc_verdict verdict;
    int r;

    part.data = hello;
    part.size = ipc_handshake_encode_request(hello, client->options.handshake,
                                             client->options.version);
    r = ipc_plat_write(s->conn, &part, 1, ipc__remaining_ms(deadline), err);
    for (;;) {
        if (r != IPC_OK)
            break;
        verdict = ipc_handshake_check_reply(s->buf ? s->buf + s->start : NULL,
                                            s->end - s->start, client->options.handshake,
                                            &server_version);
        if (verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = ipc__stream_fill(s, s->end - s->start + 1, deadline, -1, err);
    }
    if (r == IPC_E_TIMEOUT)
        return ipc__fail(err, IPC_E_BUSY, 0,
                         "the server '%s' took the connection but did not answer the "
                         "handshake in time: all its connection slots are probably busy; "
                         "retry later or raise max_clients", name);
    if (r == IPC_E_CLOSED)
        return ipc__fail(err, IPC_E_HANDSHAKE, 0,
                         "the server '%s' closed the connection during the handshake: it "
                         "uses another key or protocol version, refused this user, or is "
                         "stopping",
                         name);
    if (r != IPC_OK)
        return ipc__fail_with_context(err, r, "handshake");
    if (verdict == IPC_VERDICT_FOREIGN)
        return ipc__fail(err, IPC_E_HANDSHAKE, 0,
                         "the server '%s' rejected our handshake as foreign", name);
    if (verdict != IPC_VERDICT_OK)
        return ipc__fail(err, IPC_E_HANDSHAKE, 0,
                         "'%s' answered the handshake with unexpected bytes: not an ipcfast "
                         "server, or one with another key", name);
    s->start += IPC_HANDSHAKE_SIZE + 1;
    client->version = server_version < client->options.version ? server_version
                                                                : client->options.version;
    return IPC_OK;
}

/* Connection attempts until one works or the budget is spent. */
static int client_connect(ipc_client_t *client, const char *name, int64_t deadline,
                          int timeout_ms, ipc_error *err)
{
    int backoff_ms = 1;
    int seen_busy = 0;

    for (;;) {
        int r = ipc_plat_connect(&client->stream.conn, name, ipc__remaining_ms(deadline), err);
        int wait;

        if (r == IPC_OK)
            return IPC_OK;
        if (r != IPC_E_NOT_FOUND && r != IPC_E_BUSY)
            return r;
        /* "Not found" is retried for a server that is (re)starting; a
         * server we saw busy and that then vanished has stopped. */
        if (r == IPC_E_NOT_FOUND && seen_busy)
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "the server '%s' went away while we waited for a free slot",
                             name);
        seen_busy |= r == IPC_E_BUSY;
        wait = ipc__remaining_ms(deadline);
        if (wait == 0) {
            if (r == IPC_E_NOT_FOUND)
                return ipc__fail(err, r, err ? err->system_error : 0,
                                 "no server is listening on '%s' (waited %d ms): start one",
                                 name, timeout_ms);
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "the server '%s' stayed busy for %d ms: retry later", name,
                             timeout_ms);
        }
        ipc_error_clear(err);
        ipc_plat_sleep_ms(wait < 0 || wait > backoff_ms ? backoff_ms : wait);
        backoff_ms = backoff_ms * 2 > 50 ? 50 : backoff_ms * 2;
    }
}

int ipc_client_open(ipc_client_t **out, const char *name, const ipc_client_options *options,
                    int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    ipc_client_t *client;
    int r;

    if (!out)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_client_open: NULL output pointer");
    *out = NULL;
    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_client_open needs a name");
    client = (ipc_client_t *)calloc(1, sizeof *client);
    if (!client)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the client");
    if (options)
        client->options = *options;
    else
        ipc_client_options_init(&client->options);
    if (client->options.max_message == 0)
        client->options.max_message = IPC_DEFAULT_MAX_MESSAGE;
    if (client->options.version == 0)
        client->options.version = IPC_PROTOCOL_VERSION;
    if (client->options.shm && client->options.version < IPC_PROTOCOL_VERSION_SHM)
        client->options.version = IPC_PROTOCOL_VERSION_SHM;
    if (client->options.handshake[0] != 0x00) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "the handshake value must start with a 0x00 byte");
        goto fail;
    }
    r = ipc_plat_mutex_create(&client->busy, err);
    if (r != IPC_OK)
        goto fail;
    r = client_connect(client, name, deadline, timeout_ms, err);
    if (r != IPC_OK)
        goto fail;
    /* A budget of 0 means one connection attempt without retries; the
     * handshake that follows still needs a round trip. */
    if (timeout_ms == 0)
        deadline = ipc_plat_now_ms() + IPC_WAKE_INTERVAL_MS;
    r = client_handshake(client, name, deadline, err);
    if (r == IPC_OK && client->options.shm && client->version >= IPC_PROTOCOL_VERSION_SHM)
        r = ipc__shm_offer(&client->stream, client->options.shm_slot_size,
                           client->options.shm_spin_us, client->version,
                           client->options.max_message, deadline, &client->shm, err);
    if (r != IPC_OK)
        goto fail;
    *out = client;
    return IPC_OK;
fail:
    ipc_client_close(client);
    return r;
}

/* Turns an ERROR packet into a result: IPC_E_TOO_LARGE for the transport's
 * own refusals (IPC__TOO_LARGE_PREFIX), else `code` with the handler's text.
 * The text may hold NUL bytes, which a C string cannot: each becomes
 * U+FFFD, as in the pure-Python client. */
static int fail_from_error_packet(const ipc_packet *packet, int code, ipc_error *err)
{
    static const char replacement[] = "\xEF\xBF\xBD";
    size_t prefix = sizeof IPC__TOO_LARGE_PREFIX - 1;
    size_t length = packet->header.length;
    const uint8_t *text = packet->payload;
    char *message, *at;
    size_t i;
    int r;

    if (length >= prefix && memcmp(text, IPC__TOO_LARGE_PREFIX, prefix) == 0) {
        code = IPC_E_TOO_LARGE;
        text += prefix;
        length -= prefix;
    }
    if (length == 0)
        return ipc__fail(err, code, 0, "the server's handler failed without a message");
    message = (char *)malloc(length * (sizeof replacement - 1) + 1);
    if (!message)
        return ipc__fail(err, code, 0, "(out of memory for the server's error message)");
    for (i = 0, at = message; i < length; i++) {
        if (text[i] == 0) {
            memcpy(at, replacement, sizeof replacement - 1);
            at += sizeof replacement - 1;
        } else {
            *at++ = (char)text[i];
        }
    }
    *at = '\0';
    r = ipc__fail(err, code, 0, "%s", message);
    free(message);
    return r;
}

/* A server that refuses a request (too large) says why in an ERROR packet
 * and closes, possibly while we are still writing the request: then the
 * write fails, but the explanation is waiting in our receive buffer. */
static int explain_refused_write(ipc_client_t *client, int code, ipc_error *err)
{
    ipc_packet packet;
    ipc_error ignored = {0};
    int r = ipc__stream_read_packet(&client->stream, client->options.max_message, client->version,
                               ipc_plat_now_ms() + 100, -1, &packet, &ignored);

    ipc_error_clear(&ignored);
    if (r != IPC_OK || packet.header.type != IPC_PACKET_ERROR)
        return code;
    return fail_from_error_packet(&packet, code, err);
}

/* Writes one packet; a failure closes the connection for good. */
static int client_write_locked(ipc_client_t *client, uint8_t type, const void *data, size_t size,
                               int64_t deadline, ipc_error *err)
{
    int r;

    if (size > 0xFFFFFFFFu)
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a %s of %lu bytes does not fit the 4-byte length field",
                         type == IPC_PACKET_REQUEST ? "request" : "packet", (unsigned long)size);
    if (client->shm && client->awaiting)
        return ipc__fail(err, IPC_E_INVALID, 0, "a shared-memory connection carries one "
                         "request at a time: read the response first");
    if (client->shm) {
        r = ipc__shm_write(client->shm, type, NULL, 0, data, size, ipc__remaining_ms(deadline),
                           err);
        client->awaiting = r == IPC_OK;
    } else {
        r = ipc__write_packet_parts(client->stream.conn, type, NULL, 0, data, size,
                                    ipc__remaining_ms(deadline), err);
    }
    if (r == IPC_E_CLOSED)
        r = explain_refused_write(client, r, err);
    if (r != IPC_OK)
        client_abandon(client, err);
    return r;
}

/* One packet off the client's data path: the region once accepted, else
 * the socket stream. */
static int client_read_packet(ipc_client_t *client, int64_t deadline, ipc_packet *packet,
                              ipc_error *err)
{
    int r;

    if (!client->shm)
        return ipc__stream_read_packet(&client->stream, client->options.max_message,
                                       client->version, deadline, -1, packet, err);
    r = ipc__shm_read(client->shm, client->options.max_message, client->version, deadline,
                      packet, err);
    if (r == IPC_OK)
        client->awaiting = 0;
    return r;
}

static int client_read_locked(ipc_client_t *client, const uint8_t **response,
                              size_t *response_size, int64_t deadline, ipc_error *err)
{
    ipc_packet packet;
    int r;

    drop_attached(client);
    r = client_read_packet(client, deadline, &packet, err);
    if (r == IPC_E_TOO_LARGE) {
        ipc__fail(err, r, 0, "the response of %lu bytes exceeds this client's max_message of "
                  "%lu bytes; raise max_message", (unsigned long)packet.header.length,
                  (unsigned long)client->options.max_message);
    } else if (r == IPC_E_TIMEOUT) {
        ipc__fail(err, r, 0, "no response within the timeout; the connection is closed "
                  "because the late response would be read by the next request");
    } else if (r == IPC_OK && packet.header.type == IPC_PACKET_ERROR) {
        r = fail_from_error_packet(&packet, IPC_E_REMOTE, err);
        if (r == IPC_E_REMOTE)
            return r;   /* a handler failure: the connection stays usable */
    } else if (r == IPC_OK && packet.header.type != IPC_PACKET_RESPONSE) {
        r = ipc__fail(err, IPC_E_PROTOCOL, 0, "unexpected packet type %u from the server",
                      (unsigned)packet.header.type);
    }
    if (r != IPC_OK) {
        client_abandon(client, err);
        return r;
    }
    *response = packet.payload;
    *response_size = packet.header.length;
    return IPC_OK;
}

/* Serializes calls on one client; a second thread gets IPC_E_IN_USE. */
static int client_enter(ipc_client_t *client, ipc_error *err)
{
    if (!client)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL client");
    if (!ipc_plat_mutex_trylock(client->busy))
        return ipc__fail(err, IPC_E_IN_USE, 0, "this client is being used by another thread; "
                         "use one client per thread or a lock");
    if (client_check_open(client, err) == IPC_OK)
        return IPC_OK;
    ipc_plat_mutex_unlock(client->busy);
    return IPC_E_CLOSED;
}

int ipc_client_write(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if (!request && size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request with a nonzero size");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_read(ipc_client_t *client, const uint8_t **response, size_t *response_size,
                    int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if (!response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL response pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_read_locked(client, response, response_size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_request(ipc_client_t *client, const void *request, size_t size,
                       const uint8_t **response, size_t *response_size, int timeout_ms,
                       ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if ((!request && size) || !response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request or response pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, err);
    if (r == IPC_OK)
        r = client_read_locked(client, response, response_size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_write_packet(ipc_client_t *client, uint8_t type, const void *data, size_t size,
                            int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if (!data && size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL data with a nonzero size");
    if (type != IPC_PACKET_REQUEST && type != IPC_PACKET_COMMAND && type != IPC_PACKET_CANCEL)
        return ipc__fail(err, IPC_E_INVALID, 0, "packet type %u is not sent by clients",
                         (unsigned)type);
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, type, data, size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_read_packet(ipc_client_t *client, uint8_t *type, const uint8_t **payload,
                           size_t *size, int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    ipc_packet packet;
    int r;

    if (!type || !payload || !size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL packet pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    drop_attached(client);
    r = client_read_packet(client, deadline, &packet, err);
    if (r == IPC_OK && packet.header.type != IPC_PACKET_RESPONSE &&
        packet.header.type != IPC_PACKET_ERROR && packet.header.type != IPC_PACKET_CONSOLE_WRITE &&
        packet.header.type != IPC_PACKET_EXIT)
        r = ipc__fail(err, IPC_E_PROTOCOL, 0, "unexpected packet type %u from the server",
                      (unsigned)packet.header.type);
    if (r == IPC_OK) {
        *type = packet.header.type;
        *payload = packet.payload;
        *size = packet.header.length;
    } else if (r != IPC_E_TIMEOUT) {
        /* A timeout leaves what arrived buffered: the next read goes on. */
        client_abandon(client, err);
    }
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_send_command(ipc_client_t *client, const ipc_command *command, int timeout_ms,
                            ipc_error *err)
{
    uint8_t *payload = NULL;
    size_t size = 0;
    int r = ipc_command_encode(command, &payload, &size, err);

    if (r == IPC_OK)
        r = ipc_client_write_packet(client, IPC_PACKET_COMMAND, payload, size, timeout_ms, err);
    ipc_free(payload);
    return r;
}

uint8_t ipc_client_version(const ipc_client_t *client)
{
    return client ? client->version : 0;
}

int ipc_client_uses_shm(const ipc_client_t *client)
{
    return client && client->shm;
}

void ipc_client_close(ipc_client_t *client)
{
    if (!client)
        return;
    if (client->stream.conn)
        ipc_plat_conn_close(client->stream.conn);
    ipc__shm_free(client->shm);
    ipc__stream_free(&client->stream);
    if (client->busy)
        ipc_plat_mutex_destroy(client->busy);
    drop_attached(client);
    free(client->closed_reason);
    free(client);
}
