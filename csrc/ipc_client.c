/*
 * The client's calls (request, write, read, raw packets) over the buffered
 * stream, and its shutdown and close. Connecting (retries, probe, the
 * server-user check, the handshake, the shm offer) is ipc_client_connect.c.
 *
 * One call at a time: `in_call` marks the call in progress. The original
 * calls refuse a second thread (IPC_E_IN_USE); ipc_client_call makes it wait
 * its turn. ipc_client_shutdown may run on any thread during a call: it
 * wakes the call's wait (shutdown of the connection), waits for the call to
 * leave, then closes the connection; the call returns IPC_E_CLOSED.
 *
 * With an interrupt hook (options.interrupt_check), every wait is cut into
 * slices of IPC_INTERRUPT_SLICE_MS and the hook runs between them: nonzero
 * ends the call with IPC_E_INTERRUPTED and abandons the connection.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

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

/* After a failure that leaves the stream in an unknown state (timeout
 * mid-response, peer gone, garbage), the connection is closed for good. */
static void client_abandon(ipc_client_t *client, const ipc_error *why)
{
    ipc_plat_conn *conn = client->stream.conn;

    if (!conn)
        return;
    /* Under the lock: ipc_client_shutdown may be interrupting conn now. */
    ipc_plat_mutex_lock(client->lock);
    client->stream.conn = NULL;
    ipc_plat_mutex_unlock(client->lock);
    ipc_plat_conn_close(conn);
    /* Not unmapped yet: ipc_client_shutdown from another thread may end
     * a call whose caller is still copying its response out of the slot
     * (shm_responses_in_place); ipc_client_close unmaps it. */
    client->retired_shm = client->shm;
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

/* Nonzero when the embedder's hook asks to stop waiting. */
int ipc__client_interrupted(const ipc_client_t *client)
{
    return client->options.interrupt_check &&
           client->options.interrupt_check(client->options.interrupt_data) != 0;
}

/* Hands the error of a slice over to the caller's err (NULL: drops it). */
static void move_error(ipc_error *to, ipc_error *from)
{
    if (to) {
        ipc_error_clear(to);
        *to = *from;
        from->message = NULL;
    }
    ipc_error_clear(from);
}

/* Where the next wait ends: the call's deadline, or with an interrupt hook
 * at most a slice away (*last says whether it is the call's deadline). */
static int64_t slice_deadline(const ipc_client_t *client, int64_t deadline, int *last)
{
    int64_t slice_end;

    *last = 1;
    if (!client->options.interrupt_check)
        return deadline;
    slice_end = ipc_plat_now_ms() + IPC_INTERRUPT_SLICE_MS;
    if (deadline >= 0 && deadline <= slice_end)
        return deadline;
    *last = 0;
    return slice_end;
}

/* After a wait that ended at a slice's end (IPC_E_TIMEOUT, not the call's
 * deadline): runs the hook. IPC_OK: wait on. */
static int after_slice(ipc_client_t *client, ipc_error *slice_err, ipc_error *err)
{
    int stop;

    ipc_error_clear(slice_err);
    /* Marked, so that a shutdown from inside the hook (a signal handler
     * closing this client) does not wait for this very call. */
    ipc_plat_mutex_lock(client->lock);
    client->in_hook = 1;
    ipc_plat_mutex_unlock(client->lock);
    stop = ipc__client_interrupted(client);
    ipc_plat_mutex_lock(client->lock);
    client->in_hook = 0;
    ipc_plat_mutex_unlock(client->lock);
    if (stop)
        return ipc__fail(err, IPC_E_INTERRUPTED, 0,
                         "interrupted while waiting for the server "
                         "(a signal handler raised)");
    return IPC_OK;
}

/* ipc__stream_fill in slices (see slice_deadline). */
int ipc__client_fill(ipc_client_t *client, size_t total, int64_t deadline, ipc_error *err)
{
    for (;;) {
        ipc_error slice_err = {0, 0, NULL};
        int last;
        int64_t until = slice_deadline(client, deadline, &last);
        int r = ipc__stream_fill(&client->stream, total, until, -1, last ? err : &slice_err);

        if (last || r != IPC_E_TIMEOUT) {
            if (!last)
                move_error(err, &slice_err);
            return r;
        }
        r = after_slice(client, &slice_err, err);
        if (r != IPC_OK)
            return r;
    }
}

/* ipc__stream_read_packet in slices (see slice_deadline). */
static int stream_read_sliced(ipc_client_t *client, int64_t deadline, ipc_packet *packet,
                              ipc_error *err)
{
    for (;;) {
        ipc_error slice_err = {0, 0, NULL};
        int last;
        int64_t until = slice_deadline(client, deadline, &last);
        int r = ipc__stream_read_packet(&client->stream, client->options.max_message,
                                        client->version, until, -1, packet,
                                        last ? err : &slice_err);

        if (last || r != IPC_E_TIMEOUT) {
            if (!last)
                move_error(err, &slice_err);
            return r;
        }
        r = after_slice(client, &slice_err, err);
        if (r != IPC_OK)
            return r;
    }
}

/* ipc__shm_wait in slices, as stream_read_sliced: the interrupt hook (a
 * signal handler, close() from another thread) runs while the server
 * takes its time on the shared-memory path too. */
static int shm_wait_sliced(ipc_client_t *client, int64_t deadline, ipc_error *err)
{
    for (;;) {
        ipc_error slice_err = {0, 0, NULL};
        int last;
        int64_t until = slice_deadline(client, deadline, &last);
        int r = ipc__shm_wait(client->shm, until, last ? err : &slice_err);

        if (last || r != IPC_E_TIMEOUT) {
            if (!last)
                move_error(err, &slice_err);
            return r;
        }
        r = after_slice(client, &slice_err, err);
        if (r != IPC_OK)
            return r;
    }
}

/* Turns an ERROR packet into a result: IPC_E_TOO_LARGE for the transport's
 * own refusals (IPC__TOO_LARGE_PREFIX), IPC_E_PROTOCOL for a server closing
 * on a protocol error (IPC__PROTOCOL_ERROR_PREFIX, text kept whole), else
 * `code` with the handler's text.
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
    } else if (length >= sizeof IPC__PROTOCOL_ERROR_PREFIX - 1 &&
               memcmp(text, IPC__PROTOCOL_ERROR_PREFIX, sizeof IPC__PROTOCOL_ERROR_PREFIX - 1) ==
                   0) {
        code = IPC_E_PROTOCOL; /* the server closes after it */
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
    int64_t deadline = ipc_plat_now_ms() + 100;
    /* The server's ERROR comes where its responses do: on the region once
     * the connection has one. */
    int r = client->shm ? ipc__shm_read(client->shm, client->options.max_message, client->version,
                                        deadline, &packet, &ignored)
                        : ipc__stream_read_packet(&client->stream, client->options.max_message,
                                                  client->version, deadline, -1, &packet, &ignored);

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
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "a shared-memory connection carries one "
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
 * the socket stream (in slices, so the interrupt hook runs). */
static int client_read_packet(ipc_client_t *client, int64_t deadline, ipc_packet *packet,
                              ipc_error *err)
{
    int r;

    if (!client->shm)
        return stream_read_sliced(client, deadline, packet, err);
    r = shm_wait_sliced(client, deadline, err);
    if (r == IPC_OK)
        r = ipc__shm_read(client->shm, client->options.max_message, client->version, deadline,
                          packet, err);
    if (r == IPC_OK)
        client->awaiting = 0;
    return r;
}

/* What a read of a response came to: IPC_OK with the RESPONSE's payload,
 * IPC_E_REMOTE for an ERROR packet (the connection stays usable), or a
 * failure that closes the connection (with a message that says why). */
static int take_response(ipc_client_t *client, int r, const ipc_packet *packet,
                         const uint8_t **response, size_t *response_size, ipc_error *err)
{
    if (r == IPC_E_TOO_LARGE) {
        ipc__fail(err, r, 0,
                  "the response of %lu bytes exceeds this client's max_message of "
                  "%lu bytes; raise max_message",
                  (unsigned long)packet->header.length, (unsigned long)client->options.max_message);
    } else if (r == IPC_E_TIMEOUT) {
        ipc__fail(err, r, 0,
                  "no response within the timeout; the connection is closed "
                  "because the late response would be read by the next request");
    } else if (r == IPC_OK && packet->header.type == IPC_PACKET_ERROR) {
        r = fail_from_error_packet(packet, IPC_E_REMOTE, err);
        if (r == IPC_E_REMOTE)
            return r; /* a handler failure: the connection stays usable */
    } else if (r == IPC_OK && packet->header.type != IPC_PACKET_RESPONSE) {
        r = ipc__fail(err, IPC_E_PROTOCOL, 0, "unexpected packet type %u from the server",
                      (unsigned)packet->header.type);
    }
    if (r != IPC_OK) {
        client_abandon(client, err);
        return r;
    }
    *response = packet->payload;
    *response_size = packet->header.length;
    return IPC_OK;
}

static int client_read_locked(ipc_client_t *client, const uint8_t **response, size_t *response_size,
                              int64_t deadline, ipc_error *err)
{
    ipc_packet packet;
    int r;

    drop_attached(client);
    r = client_read_packet(client, deadline, &packet, err);
    return take_response(client, r, &packet, response, response_size, err);
}

/* Starts a call: takes the client's turn. A busy client answers
 * IPC_E_IN_USE, or with `wait` makes the caller wait (with an interrupt hook,
 * in slices that run it). */
static int client_leave(ipc_client_t *client, int r, ipc_error *err);

static int client_enter(ipc_client_t *client, int wait, ipc_error *err)
{
    int r = IPC_OK;

    if (!client)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL client");
    ipc_plat_mutex_lock(client->lock);
    while (client->in_call && !client->shut && r == IPC_OK) {
        if (!wait) {
            ipc_plat_mutex_unlock(client->lock);
            return ipc__fail(err, IPC_E_IN_USE, 0,
                             "this client is being used by another "
                             "thread; use one client per thread or a lock");
        }
        client->waiters++;
        ipc_plat_cond_wait(client->turn, client->lock,
                           client->options.interrupt_check ? IPC_INTERRUPT_SLICE_MS : -1);
        client->waiters--;
        if (client->in_call && client->options.interrupt_check) {
            ipc_plat_mutex_unlock(client->lock);
            if (ipc__client_interrupted(client))
                r = ipc__fail(err, IPC_E_INTERRUPTED, 0,
                              "interrupted while waiting for "
                              "another thread's call on this client");
            ipc_plat_mutex_lock(client->lock);
        }
    }
    if (r == IPC_OK && client->shut)
        r = ipc__fail(err, IPC_E_CLOSED, 0, "the client is closed; open a new client");
    if (r == IPC_OK)
        client->in_call = 1;
    ipc_plat_mutex_unlock(client->lock);
    if (r != IPC_OK)
        return r;
    r = client_check_open(client, err);
    if (r != IPC_OK)
        client_leave(client, IPC_OK, NULL);
    return r;
}

/* Ends a call and hands the turn on; returns r, or IPC_E_CLOSED when
 * ipc_client_shutdown cut the call short. The client may be freed as soon
 * as the lock is released (ipc_client_close waits for exactly that), so
 * nothing after it touches the client. */
static int client_leave(ipc_client_t *client, int r, ipc_error *err)
{
    int shut;

    ipc_plat_mutex_lock(client->lock);
    shut = client->shut;
    client->in_call = 0;
    if (client->waiters)
        ipc_plat_cond_broadcast(client->turn);
    ipc_plat_mutex_unlock(client->lock);
    if (!shut || r == IPC_OK || r == IPC_E_REMOTE)
        return r;
    return ipc__fail(err, IPC_E_CLOSED, 0,
                     "the client was closed by another thread (or a "
                     "signal handler) during this call");
}

int ipc_client_write(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if (!request && size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request with a nonzero size");
    r = client_enter(client, 0, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, err);
    return client_leave(client, r, err);
}

int ipc_client_read(ipc_client_t *client, const uint8_t **response, size_t *response_size,
                    int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if (!response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL response pointers");
    r = client_enter(client, 0, err);
    if (r != IPC_OK)
        return r;
    r = client_read_locked(client, response, response_size, deadline, err);
    return client_leave(client, r, err);
}

int ipc_client_request(ipc_client_t *client, const void *request, size_t size,
                       const uint8_t **response, size_t *response_size, int timeout_ms,
                       ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int r;

    if ((!request && size) || !response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request or response pointers");
    r = client_enter(client, 0, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, err);
    if (r == IPC_OK)
        r = client_read_locked(client, response, response_size, deadline, err);
    return client_leave(client, r, err);
}

int64_t ipc_client_call(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                        ipc_client_reply *reply)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    const uint8_t *response = NULL;
    size_t response_size = 0;
    int r;

    if (!reply)
        return -IPC_E_INVALID;
    if (!request && size)
        return -ipc__fail(&reply->error, IPC_E_INVALID, 0, "NULL request with a nonzero size");
    r = client_enter(client, 1, &reply->error);
    if (r != IPC_OK)
        return -r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, &reply->error);
    if (r == IPC_OK)
        r = client_read_locked(client, &response, &response_size, deadline, &reply->error);
    if (r == IPC_OK && response_size <= IPC_REPLY_INLINE_SIZE) {
        /* the terminator written here: a response in place has none */
        memcpy(reply->inline_data, response, response_size);
        reply->inline_data[response_size] = 0;
        response = (const uint8_t *)reply->inline_data;
    }
    reply->data = (const char *)response;
    reply->size = response_size;
    r = client_leave(client, r, &reply->error);
    return r == IPC_OK ? (int64_t)response_size : -(int64_t)r;
}

/* ---- receiving into the caller's buffer (ipc_client_call_into) -------- */

/* Reads exactly `size` payload bytes from the socket straight into `out`,
 * in slices that run the interrupt hook (see slice_deadline). */
static int read_direct(ipc_client_t *client, uint8_t *out, size_t size, int64_t deadline,
                       ipc_error *err)
{
    size_t done = 0;

    while (done < size) {
        ipc_error slice_err = {0, 0, NULL};
        int last;
        int wait = ipc__remaining_ms(slice_deadline(client, deadline, &last));
        size_t got = 0;
        int r = IPC_E_TIMEOUT;

        if (wait == 0 && last)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "timed out waiting for data");
        if (wait != 0) /* a socket timeout of 0 would mean "no limit" */
            r = ipc_plat_read(client->stream.conn, out + done, size - done, &got, wait,
                              last ? err : &slice_err);
        if (r == IPC_OK) {
            done += got;
            continue;
        }
        if (last || r != IPC_E_TIMEOUT) {
            if (!last)
                move_error(err, &slice_err);
            return r;
        }
        r = after_slice(client, &slice_err, err);
        if (r != IPC_OK)
            return r;
    }
    return IPC_OK;
}

/* ipc__stream_read_header in slices (see slice_deadline). */
static int header_read_sliced(ipc_client_t *client, int64_t deadline, ipc_packet *packet,
                              ipc_error *err)
{
    for (;;) {
        ipc_error slice_err = {0, 0, NULL};
        int last;
        int64_t until = slice_deadline(client, deadline, &last);
        int r = ipc__stream_read_header(&client->stream, client->options.max_message,
                                        client->version, until, -1, packet,
                                        last ? err : &slice_err);

        if (last || r != IPC_E_TIMEOUT) {
            if (!last)
                move_error(err, &slice_err);
            return r;
        }
        r = after_slice(client, &slice_err, err);
        if (r != IPC_OK)
            return r;
    }
}

/* The next packet off the socket. A RESPONSE that fits `capacity` goes
 * into `out`: what the stream already buffered is copied, the rest is
 * read from the socket straight into `out`. Anything else is read whole
 * into the stream's buffer, as client_read_packet does. */
static int socket_read_into(ipc_client_t *client, int64_t deadline, uint8_t *out, size_t capacity,
                            ipc_packet *packet, ipc_error *err)
{
    size_t length, taken;
    int r = header_read_sliced(client, deadline, packet, err);

    if (r != IPC_OK)
        return r;
    length = packet->header.length;
    if (packet->header.type != IPC_PACKET_RESPONSE || length > capacity)
        return stream_read_sliced(client, deadline, packet, err); /* the header again */
    taken = ipc__stream_take(&client->stream, &packet->header, out, length);
    packet->payload = out;
    return read_direct(client, out + taken, length - taken, deadline, err);
}

/* client_read_locked for ipc_client_call_into: on the shared-memory path
 * the response is copied once, from the slot into `out`. */
static int client_read_into_locked(ipc_client_t *client, uint8_t *out, size_t capacity,
                                   const uint8_t **response, size_t *response_size,
                                   int64_t deadline, ipc_error *err)
{
    ipc_packet packet;
    int on_socket = 0;
    int r;

    drop_attached(client);
    if (!client->shm)
        return take_response(client,
                             socket_read_into(client, deadline, out, capacity, &packet, err),
                             &packet, response, response_size, err);
    /* Waited for in interrupt slices first, as client_read_packet does, so
     * Ctrl-C and close() from another thread reach this wait too. */
    r = shm_wait_sliced(client, deadline, err);
    if (r == IPC_OK)
        r = ipc__shm_read_into(client->shm, client->options.max_message, deadline, out, capacity,
                               &packet, &on_socket, err);
    if (r == IPC_OK)
        client->awaiting = 0;
    if (r == IPC_OK && on_socket) {
        uint8_t announced = packet.header.type;

        r = socket_read_into(client, deadline, out, capacity, &packet, err);
        if (r == IPC_OK && packet.header.type != announced)
            r = ipc__fail(err, IPC_E_PROTOCOL, 0, "shared memory: announced type %u, got %u",
                          (unsigned)announced, (unsigned)packet.header.type);
    }
    return take_response(client, r, &packet, response, response_size, err);
}

int64_t ipc_client_call_into(ipc_client_t *client, const void *request, size_t size, void *out,
                             size_t capacity, int timeout_ms, ipc_client_reply *reply)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    const uint8_t *response = NULL;
    size_t response_size = 0;
    int r;

    if (!reply)
        return -IPC_E_INVALID;
    if (!request && size)
        return -ipc__fail(&reply->error, IPC_E_INVALID, 0, "NULL request with a nonzero size");
    if (!out && capacity)
        return -ipc__fail(&reply->error, IPC_E_INVALID, 0, "NULL out with a nonzero capacity");
    r = client_enter(client, 1, &reply->error);
    if (r != IPC_OK)
        return -r;
    r = client_write_locked(client, IPC_PACKET_REQUEST, request, size, deadline, &reply->error);
    if (r == IPC_OK)
        r = client_read_into_locked(client, (uint8_t *)out, capacity, &response, &response_size,
                                    deadline, &reply->error);
    reply->data = (const char *)response;
    reply->size = response_size;
    r = client_leave(client, r, &reply->error);
    return r == IPC_OK ? (int64_t)response_size : -(int64_t)r;
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
    r = client_enter(client, 0, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, type, data, size, deadline, err);
    return client_leave(client, r, err);
}

int ipc_client_read_packet(ipc_client_t *client, uint8_t *type, const uint8_t **payload,
                           size_t *size, int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    ipc_packet packet;
    int r;

    if (!type || !payload || !size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL packet pointers");
    r = client_enter(client, 0, err);
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
    return client_leave(client, r, err);
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

/* ipc_client_shutdown; `from_hook_ok`: when the call in progress is in its
 * interrupt hook (which may be what called us), return without waiting for
 * it: it ends, and closes the connection, once the hook returns. */
static void client_shutdown(ipc_client_t *client, int from_hook_ok)
{
    char reason[] = "the client was closed";
    ipc_error why = {IPC_E_CLOSED, 0, reason};

    if (!client || !client->lock)
        return;
    ipc_plat_mutex_lock(client->lock);
    client->shut = 1;
    /* Only a call in progress needs waking; otherwise no shutdown(): the
     * connection may be shared with a fork()ed process. */
    if (client->in_call && client->stream.conn)
        ipc_plat_conn_interrupt(client->stream.conn, 1);
    if (client->in_call && client->in_hook && from_hook_ok) {
        ipc_plat_mutex_unlock(client->lock);
        return;
    }
    while (client->in_call) {
        client->waiters++;
        ipc_plat_cond_wait(client->turn, client->lock, -1);
        client->waiters--;
    }
    client->in_call = 1; /* the connection is ours now */
    ipc_plat_mutex_unlock(client->lock);
    client_abandon(client, &why);
    ipc_plat_mutex_lock(client->lock);
    client->in_call = 0;
    if (client->waiters)
        ipc_plat_cond_broadcast(client->turn);
    ipc_plat_mutex_unlock(client->lock);
}

void ipc_client_shutdown(ipc_client_t *client)
{
    client_shutdown(client, 1);
}

int ipc_client_uses_shm(const ipc_client_t *client)
{
    return client && client->shm;
}

void ipc_client_close(ipc_client_t *client)
{
    if (!client)
        return;
    client_shutdown(client, 0);
    if (client->stream.conn) /* only when the lock could not be created */
        ipc_plat_conn_close(client->stream.conn);
    ipc__shm_free(client->shm); /* likewise */
    ipc__shm_free(client->retired_shm);
    ipc__stream_free(&client->stream);
    if (client->turn)
        ipc_plat_cond_destroy(client->turn);
    if (client->lock)
        ipc_plat_mutex_destroy(client->lock);
    drop_attached(client);
    free(client->closed_reason);
    free(client);
}

void ipc_client_forget(ipc_client_t *client)
{
    if (!client)
        return;
    /* No waiting for the lock: a thread of the parent may have held it at
     * fork() time, and that thread does not exist here. A lock held then
     * (and a condition someone waited on) is left behind, not destroyed. */
    if (client->lock && ipc_plat_mutex_trylock(client->lock)) {
        int idle = client->waiters == 0;

        ipc_plat_mutex_unlock(client->lock);
        if (idle && client->turn)
            ipc_plat_cond_destroy(client->turn);
        ipc_plat_mutex_destroy(client->lock);
    }
    if (client->stream.conn)
        ipc_plat_conn_close(client->stream.conn);
    ipc__shm_free(client->shm);
    ipc__shm_free(client->retired_shm);
    ipc__stream_free(&client->stream);
    drop_attached(client);
    free(client->closed_reason);
    free(client);
}
