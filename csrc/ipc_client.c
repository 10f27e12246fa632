/*
 * The client: connect with retries, the client side of the handshake, and
 * calls (request, write, read, raw packets) over the buffered stream.
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

struct ipc_client_t {
    ipc_client_options options;
    /* stream.conn is NULL once closed. Only the thread in the call changes
     * it (under `lock`, which ipc_client_shutdown holds to interrupt it). */
    ipc_stream stream;
    ipc_plat_mutex *lock;     /* guards in_call, waiters, shut; see above */
    ipc_plat_cond *turn;      /* broadcast when a call leaves */
    int in_call;              /* a call is in progress */
    int waiters;              /* threads waiting in ipc_client_call */
    int shut;                 /* ipc_client_shutdown was called */
    int in_hook;              /* the call in progress is running the interrupt hook */
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
    ipc_plat_conn *conn = client->stream.conn;

    if (!conn)
        return;
    /* Under the lock: ipc_client_shutdown may be interrupting conn now. */
    ipc_plat_mutex_lock(client->lock);
    client->stream.conn = NULL;
    ipc_plat_mutex_unlock(client->lock);
    ipc_plat_conn_close(conn);
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

/* Nonzero when the embedder's hook asks to stop waiting. */
static int client_interrupted(const ipc_client_t *client)
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
    stop = client_interrupted(client);
    ipc_plat_mutex_lock(client->lock);
    client->in_hook = 0;
    ipc_plat_mutex_unlock(client->lock);
    if (stop)
        return ipc__fail(err, IPC_E_INTERRUPTED, 0, "interrupted while waiting for the server "
                         "(a signal handler raised)");
    return IPC_OK;
}

/* ipc__stream_fill in slices (see slice_deadline). */
static int client_fill(ipc_client_t *client, size_t total, int64_t deadline, ipc_error *err)
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
        r = client_fill(client, s->end - s->start + 1, deadline, err);
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
    if (r == IPC_E_INTERRUPTED)
        return r;
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

/* Whether a "not found" is worth another attempt: a live owner of the name
 * is starting; no owner means nothing will answer unless the caller asked
 * to wait; an owner we cannot see (Windows) gets a short grace. */
static int worth_retrying_not_found(const ipc_client_t *client, const char *name,
                                    int64_t started)
{
    int owner;

    if (client->options.wait_if_not_found)
        return 1;
    owner = ipc_plat_name_owner(name);
    if (owner == IPC_PLAT_OWNER_ALIVE)
        return 1;
    return owner == IPC_PLAT_OWNER_UNKNOWN &&
           ipc_plat_now_ms() - started < IPC_NOT_FOUND_GRACE_MS;
}

/* Connection attempts until one works or the budget is spent. */
static int client_connect(ipc_client_t *client, const char *name, int64_t deadline,
                          int timeout_ms, ipc_error *err)
{
    int64_t started = ipc_plat_now_ms();
    int backoff_ms = 1;
    int seen_busy = 0;

    for (;;) {
        int r = ipc_plat_connect(&client->stream.conn, name, ipc__remaining_ms(deadline), err);
        int wait;

        if (r == IPC_OK)
            return IPC_OK;
        if (r != IPC_E_NOT_FOUND && r != IPC_E_BUSY)
            return r;
        /* A server we saw busy and that then vanished has stopped. */
        if (r == IPC_E_NOT_FOUND && seen_busy)
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "the server '%s' went away while we waited for a free slot",
                             name);
        if (r == IPC_E_NOT_FOUND && !worth_retrying_not_found(client, name, started))
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "no server is listening on '%s' and none is starting: start one",
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
        if (client_interrupted(client))
            return ipc__fail(err, IPC_E_INTERRUPTED, 0,
                             "interrupted while waiting for the server '%s'", name);
        backoff_ms = backoff_ms * 2 > 50 ? 50 : backoff_ms * 2;
    }
}

int ipc_client_probe(const char *name, ipc_error *err)
{
    ipc_plat_conn *conn = NULL;
    int r;

    if (!name || !*name) {
        ipc__fail(err, IPC_E_INVALID, 0, "ipc_client_probe needs a name");
        return IPC_STATE_INVALID_PATH;
    }
    r = ipc_plat_connect(&conn, name, 0, err);
    if (r == IPC_OK) {
        ipc_plat_conn_close(conn);
        return IPC_STATE_LISTENING;
    }
    if (r == IPC_E_BUSY) {
        ipc_error_clear(err);
        return IPC_STATE_LISTENING;
    }
    if (r != IPC_E_NOT_FOUND)
        return IPC_STATE_INVALID_PATH;
    ipc_error_clear(err);
    return ipc_plat_name_owner(name) == IPC_PLAT_OWNER_ALIVE ? IPC_STATE_STARTING
                                                              : IPC_STATE_NOT_LISTENING;
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
    if (client->options.server_user < IPC_SERVER_USER_DEFAULT ||
        client->options.server_user > IPC_SERVER_USER_UID) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "server_user %d is not an ipc_server_user",
                      client->options.server_user);
        goto fail;
    }
    if (client->options.shm && client->options.version < IPC_PROTOCOL_VERSION_SHM)
        client->options.version = IPC_PROTOCOL_VERSION_SHM;
    if (client->options.handshake[0] != 0x00) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "the handshake value must start with a 0x00 byte");
        goto fail;
    }
    r = ipc_plat_mutex_create(&client->lock, err);
    if (r == IPC_OK)
        r = ipc_plat_cond_create(&client->turn, err);
    if (r != IPC_OK)
        goto fail;
    r = client_connect(client, name, deadline, timeout_ms, err);
    if (r != IPC_OK)
        goto fail;
    /* Before the handshake: an impostor must not even learn our key's value. */
    r = ipc_plat_check_server_user(client->stream.conn, name, client->options.server_user,
                                   client->options.server_uid, err);
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
               memcmp(text, IPC__PROTOCOL_ERROR_PREFIX, sizeof IPC__PROTOCOL_ERROR_PREFIX - 1) == 0) {
        code = IPC_E_PROTOCOL;   /* the server closes after it */
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
 * the socket stream (in slices, so the interrupt hook runs). */
static int client_read_packet(ipc_client_t *client, int64_t deadline, ipc_packet *packet,
                              ipc_error *err)
{
    int r;

    if (!client->shm)
        return stream_read_sliced(client, deadline, packet, err);
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
            return ipc__fail(err, IPC_E_IN_USE, 0, "this client is being used by another "
                             "thread; use one client per thread or a lock");
        }
        client->waiters++;
        ipc_plat_cond_wait(client->turn, client->lock,
                           client->options.interrupt_check ? IPC_INTERRUPT_SLICE_MS : -1);
        client->waiters--;
        if (client->in_call && client->options.interrupt_check) {
            ipc_plat_mutex_unlock(client->lock);
            if (client_interrupted(client))
                r = ipc__fail(err, IPC_E_INTERRUPTED, 0, "interrupted while waiting for "
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
    return ipc__fail(err, IPC_E_CLOSED, 0, "the client was closed by another thread (or a "
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
        memcpy(reply->inline_data, response, response_size + 1);   /* with the NUL */
        response = (const uint8_t *)reply->inline_data;
    }
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
    client->in_call = 1;   /* the connection is ours now */
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
    if (client->stream.conn)   /* only when the lock could not be created */
        ipc_plat_conn_close(client->stream.conn);
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
    ipc__stream_free(&client->stream);
    drop_attached(client);
    free(client->closed_reason);
    free(client);
}
