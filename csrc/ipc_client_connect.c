/*
 * The client's way in: connect with retries (busy and starting servers,
 * told apart by the name's lock file), ipc_client_probe, the server-user
 * check before the handshake, the client side of the handshake, and the
 * shared-memory offer. The calls on an open client are ipc_client.c.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

void ipc_client_options_init(ipc_client_options *options)
{
    memset(options, 0, sizeof *options);
    options->max_message = IPC_DEFAULT_MAX_MESSAGE;
    memcpy(options->handshake, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    options->version = IPC_PROTOCOL_VERSION;
    options->shm_spin_us = IPC_DEFAULT_SPIN_US;
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
        verdict = ipc_handshake_check_reply(s->buf ? s->buf + s->start : NULL, s->end - s->start,
                                            client->options.handshake, &server_version);
        if (verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = ipc__client_fill(client, s->end - s->start + 1, deadline, err);
    }
    if (r == IPC_E_TIMEOUT)
        return ipc__fail(err, IPC_E_BUSY, 0,
                         "the server '%s' took the connection but did not answer the "
                         "handshake in time: all its connection slots are probably busy; "
                         "retry later or raise max_clients",
                         name);
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
                         "server, or one with another key",
                         name);
    s->start += IPC_HANDSHAKE_SIZE + 1;
    client->version = server_version < client->options.version ? server_version
                                                               : client->options.version;
    return IPC_OK;
}

/* Whether a "not found" is worth another attempt: a live owner of the name
 * is starting; no owner means nothing will answer unless the caller asked
 * to wait; an owner we cannot see (Windows) gets a short grace. */
static int worth_retrying_not_found(const ipc_client_t *client, const char *name, int64_t started)
{
    int owner;

    if (client->options.wait_if_not_found)
        return 1;
    owner = ipc_plat_name_owner(name);
    if (owner == IPC_PLAT_OWNER_ALIVE)
        return 1;
    return owner == IPC_PLAT_OWNER_UNKNOWN && ipc_plat_now_ms() - started < IPC_NOT_FOUND_GRACE_MS;
}

/* Connection attempts until one works or the budget is spent. */
static int client_connect(ipc_client_t *client, const char *name, int64_t deadline, int timeout_ms,
                          ipc_error *err)
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
                             "the server '%s' went away while we waited for a free slot", name);
        if (r == IPC_E_NOT_FOUND && !worth_retrying_not_found(client, name, started))
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "no server is listening on '%s' and none is starting: start one",
                             name);
        seen_busy |= r == IPC_E_BUSY;
        wait = ipc__remaining_ms(deadline);
        if (wait == 0) {
            if (r == IPC_E_NOT_FOUND)
                return ipc__fail(err, r, err ? err->system_error : 0,
                                 "no server is listening on '%s' (waited %d ms): start one", name,
                                 timeout_ms);
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "the server '%s' stayed busy for %d ms: retry later", name,
                             timeout_ms);
        }
        ipc_error_clear(err);
        ipc_plat_sleep_ms(wait < 0 || wait > backoff_ms ? backoff_ms : wait);
        if (ipc__client_interrupted(client))
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
    if (r == IPC_OK && client->shm && client->options.shm_responses_in_place)
        client->shm->lend_type = IPC_PACKET_RESPONSE;
    if (r != IPC_OK)
        goto fail;
    *out = client;
    return IPC_OK;
fail:
    ipc_client_close(client);
    return r;
}
