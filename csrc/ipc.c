/*
 * The server core: the slot table, the listener and connection threads,
 * the server side of the handshake, the request loop, start and stop.
 * Requests reach the application through ipc_dispatch.c; packets beyond
 * REQUEST (the server node) through a packet family's hooks
 * (ipc_server_node.c). docs/design.md has the whole picture.
 *
 * Threads. `listeners` listener threads each reserve a free slot, accept
 * one client into it and start its connection thread; clients beyond
 * max_clients wait in the OS backlog. A connection thread owns its
 * ipc_connection: it runs the handshake, then the request loop, then
 * drains, closes and marks its slot DONE; the next listener to reserve the
 * slot joins it.
 *
 * Locks, in the order they may nest (never the other way):
 *   1. a packet family's per-connection write lock (the node's), taken
 *      around every write on that connection;
 *   2. server->lock: the slot states and threads, `stopping`, the manual
 *      dispatch queue and the calls in it, the node's command counters;
 *   3. the platform's global lock, innermost: ipc__log takes it only to
 *      copy the log callback, and may be called under the server's lock.
 * No lock is held while a handler runs, while a thread is joined, or while
 * reading from a client.
 *
 * Stop (interrupt, stop with or without a timeout, forget after fork) is
 * ipc_server_stop.c.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

static void fill_server_defaults(ipc_server_options *o)
{
    if (o->max_clients == 0)
        o->max_clients = IPC_DEFAULT_MAX_CLIENTS;
    if (o->listeners == 0)
        o->listeners = IPC_DEFAULT_LISTENERS;
    if (o->max_message == 0)
        o->max_message = IPC_DEFAULT_MAX_MESSAGE;
    if (o->handshake_timeout_ms == 0)
        o->handshake_timeout_ms = IPC_DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (o->version == 0)
        o->version = IPC_PROTOCOL_VERSION;
    /* The shared-memory packets are version 2's. */
    if (o->shm && o->version < IPC_PROTOCOL_VERSION_SHM)
        o->version = IPC_PROTOCOL_VERSION_SHM;
}

void ipc_server_options_init(ipc_server_options *options)
{
    memset(options, 0, sizeof *options);
    memcpy(options->handshake, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    options->access = IPC_ACCESS_USER;
    options->shm_spin_us = IPC_DEFAULT_SPIN_US;
    fill_server_defaults(options);
}
/* ---- the handshake --------------------------------------------------------- */

/* Reads until the client's handshake can be judged. */
static int read_handshake(ipc_connection *c, int64_t deadline, uint8_t *client_version,
                          ipc_verdict *verdict)
{
    const ipc_server_options *o = &c->server->options;
    ipc_stream *s = &c->stream;
    ipc_error err = {0};
    int r;

    for (;;) {
        *verdict = ipc_handshake_check_request(s->buf ? s->buf + s->start : NULL, s->end - s->start,
                                               o->handshake, client_version);
        if (*verdict != IPC_VERDICT_NEED_MORE)
            return IPC_OK;
        r = ipc__stream_fill(s, s->end - s->start + 1, deadline, IPC_WAKE_INTERVAL_MS, &err);
        if (r != IPC_OK) {
            ipc__log(IPC_LOG_INFO, "[slot %u] client dropped during the handshake: %s",
                     (unsigned)c->slot->index, err.message ? err.message : ipc_result_name(r));
            ipc_error_clear(&err);
            return r;
        }
    }
}

/* Logs why the handshake failed; a foreign client also gets the one-byte
 * refusal so it can tell "not ipcfast" from a crash. */
static int refuse_handshake(ipc_connection *c, ipc_verdict verdict)
{
    ipc_stream *s = &c->stream;
    uint8_t refusal = IPC_FOREIGN_REPLY;
    ipc_plat_buf part;

    if (verdict != IPC_VERDICT_FOREIGN) {
        ipc__log(IPC_LOG_WARNING,
                 "[slot %u] handshake %s: the client uses another key or protocol; dropped",
                 (unsigned)c->slot->index,
                 verdict == IPC_VERDICT_MISMATCH ? "mismatch" : "with version 0");
        return IPC_E_HANDSHAKE;
    }
    ipc__log(IPC_LOG_WARNING,
             "[slot %u] refused a foreign client (first byte 0x%02x, not an ipcfast "
             "handshake)",
             (unsigned)c->slot->index, s->buf[s->start]);
    part.data = &refusal;
    part.size = 1;
    ipc_plat_write(s->conn, &part, 1, IPC_WAKE_INTERVAL_MS, NULL);
    return IPC_E_HANDSHAKE;
}

/* access "user": only clients running as the server's user get in. */
static int check_peer(ipc_connection *c)
{
    ipc_error err = {0};
    int same_user = 0;
    int r;

    if (c->server->options.access == IPC_ACCESS_WORLD)
        return IPC_OK;
    r = ipc_plat_peer_same_user(c->stream.conn, &same_user, &err);
    if (r == IPC_OK && same_user)
        return IPC_OK;
    ipc__log(IPC_LOG_WARNING, "[slot %u] refused a client: %s", (unsigned)c->slot->index,
             r != IPC_OK ? (err.message ? err.message : "peer check failed")
                         : "it runs as another user (access is \"user\")");
    ipc_error_clear(&err);
    return IPC_E_ACCESS_DENIED;
}

static int send_handshake_reply(ipc_connection *c, int64_t deadline)
{
    const ipc_server_options *o = &c->server->options;
    uint8_t reply[IPC_HANDSHAKE_SIZE + 1];
    ipc_error err = {0};
    ipc_plat_buf part;
    int r;

    part.data = reply;
    part.size = ipc_handshake_encode_reply(reply, o->handshake, o->version);
    r = ipc_plat_write(c->stream.conn, &part, 1, ipc__remaining_ms(deadline), &err);
    if (r != IPC_OK) {
        ipc__log(IPC_LOG_INFO, "[slot %u] could not send the handshake reply: %s",
                 (unsigned)c->slot->index, err.message ? err.message : ipc_result_name(r));
        ipc_error_clear(&err);
    }
    return r;
}

int ipc__server_handshake(ipc_connection *c)
{
    const ipc_server_options *o = &c->server->options;
    int64_t deadline = ipc_plat_now_ms() + o->handshake_timeout_ms;
    uint8_t client_version = 0;
    ipc_verdict verdict;
    int r = read_handshake(c, deadline, &client_version, &verdict);

    if (r != IPC_OK)
        return r;
    if (verdict != IPC_VERDICT_OK)
        return refuse_handshake(c, verdict);
    r = check_peer(c);
    if (r != IPC_OK)
        return r;
    c->stream.start += IPC_HANDSHAKE_SIZE + 1;
    c->version = client_version < o->version ? client_version : o->version;
    /* A SHM_SETUP may follow the reply, its descriptor attached. */
    if (o->shm && c->version >= IPC_PROTOCOL_VERSION_SHM)
        ipc_plat_conn_accept_handles(c->stream.conn, 1);
    return send_handshake_reply(c, deadline);
}

/* ---- one connection --------------------------------------------------------- */

void ipc__refuse_packet(ipc_connection *c, const ipc_packet *p, int r, const ipc_error *err)
{
    unsigned slot = (unsigned)c->slot->index;
    char *text;

    /* The client may still be writing the rest of the refused packet and
     * not reading: waiting for it to take our reply (Windows drain) would
     * deadlock both sides. Closing keeps the reply readable. */
    c->refused = 1;

    if (r == IPC_E_TOO_LARGE) {
        text = ipc__format("%sthe request of %lu bytes exceeds the server's max_message of "
                           "%lu bytes",
                           IPC__TOO_LARGE_PREFIX, (unsigned long)p->header.length,
                           (unsigned long)c->server->options.max_message);
    } else if (r == IPC_E_PROTOCOL) {
        text = ipc__format("%s%s", IPC__PROTOCOL_ERROR_PREFIX,
                           err->message ? err->message : "bad packet");
    } else {
        text = ipc__format("%spacket type %u is not accepted by this server",
                           IPC__PROTOCOL_ERROR_PREFIX, (unsigned)p->header.type);
    }
    ipc__log(IPC_LOG_WARNING, "[slot %u] %s; closing the connection", slot,
             text ? text : "bad packet");
    /* Best effort and bounded: the client may not be reading. */
    if (text) {
        ipc__lock_writes(c);
        ipc__write_locked(c, IPC_PACKET_ERROR, NULL, 0, text, strlen(text), IPC_WAKE_INTERVAL_MS,
                          NULL);
        ipc__unlock_writes(c);
    }
    free(text);
}

/* One packet off the data path. 0: the connection is over (closed, broken,
 * or refused with an explanation). */
static int read_request(ipc_connection *c, ipc_packet *packet, ipc_error *err)
{
    int r = c->path->read_packet(c->path_state, c->server->options.max_message, c->version,
                                 IPC_WAKE_INTERVAL_MS, packet, err);

    if (r == IPC_OK)
        return 1;
    if (r == IPC_E_TOO_LARGE || r == IPC_E_PROTOCOL)
        ipc__refuse_packet(c, packet, r, err);
    else if (r != IPC_E_CLOSED)
        ipc__log(IPC_LOG_WARNING, "[slot %u] read failed: %s", (unsigned)c->slot->index,
                 err->message ? err->message : ipc_result_name(r));
    return 0;
}

/* A client's offer of a shared-memory data path (docs/protocol.md 11):
 * accepted, the connection reads and writes through the region from now
 * on. 0: the connection is over. */
static int serve_shm_setup(ipc_connection *c, const ipc_packet *packet, ipc_error *err)
{
    const ipc_server_options *o = &c->server->options;
    int allowed = o->shm && !c->server->family && !c->shm;
    ipc_shm_link *link = NULL;
    int r = c->shm ? ipc__fail(err, IPC_E_PROTOCOL, 0, "a second SHM_SETUP")
                   : ipc__shm_accept(&c->stream, packet, allowed, o->shm_spin_us, &link, err);

    if (r == IPC_E_PROTOCOL)
        ipc__refuse_packet(c, packet, r, err);
    if (r != IPC_OK)
        return 0;
    if (link) {
        if (o->shm_requests_in_place)
            link->lend_type = IPC_PACKET_REQUEST;
        link->spinners = &c->server->shm_spinners;
        link->max_spinners = c->server->shm_max_spinners;
        c->shm = link;
        c->path = &ipc__shm_datapath;
        c->path_state = link;
    }
    return 1;
}

/* An ipc__request_reader (ipc_internal.h). */
static int next_request(ipc_connection *c, ipc_packet *packet)
{
    const ipc_packet_family *family = c->server->family;
    ipc_error err = {0};
    int more;

    while ((more = read_request(c, packet, &err)) != 0) {
        int verdict;

        if (packet->header.type == IPC_PACKET_SHM_SETUP) {
            more = serve_shm_setup(c, packet, &err);
            if (!more)
                break;
            continue;
        }
        verdict = family && family->on_packet ? family->on_packet(c, packet) : IPC__PACKET_PASS;
        if (verdict == IPC__PACKET_KEEP)
            continue;
        if (verdict == IPC__PACKET_CLOSE) {
            more = 0;
        } else if (packet->header.type != IPC_PACKET_REQUEST) {
            ipc__refuse_packet(c, packet, IPC_E_INVALID, &err);
            more = 0;
        }
        break;
    }
    ipc_error_clear(&err);
    return more;
}

/* The request loop, or the application's own (connection_handler). */
void ipc__serve_requests(ipc_connection *c)
{
    const ipc_packet_family *family = c->server->family;
    int own_loop = c->server->options.connection_handler != NULL;
    ipc_packet packet;

    if (own_loop)
        ipc__dispatch_connection(c, next_request);
    else
        while (next_request(c, &packet))
            if (!ipc__dispatch_request(c, &packet) || ipc__connection_broken(c))
                break;
    if (family && family->on_disconnect)
        family->on_disconnect(c);
    if (!own_loop)
        ipc__dispatch_farewell(c); /* tell the handler the client is gone */
}

static int uses_queue(const ipc_server_t *server)
{
    return server->options.dispatch == IPC_DISPATCH_MANUAL ||
           (server->family && server->family->uses_queue);
}

/* What a connection needs before its handshake: a condition to wait for
 * queued calls, and the family's per-connection state. */
static int connection_open(ipc_connection *c)
{
    const ipc_packet_family *family = c->server->family;
    ipc_error err = {0};
    int r = IPC_OK;

    if (uses_queue(c->server))
        r = ipc_plat_cond_create(&c->done, &err);
    if (r == IPC_OK && family && family->connection_open)
        r = family->connection_open(c, &err);
    if (r != IPC_OK) {
        ipc__log(IPC_LOG_ERROR, "[slot %u] dropped a client: %s", (unsigned)c->slot->index,
                 err.message ? err.message : ipc_result_name(r));
        ipc_error_clear(&err);
        c->refused = 1;
    }
    return r;
}

static void connection_free(ipc_connection *c)
{
    const ipc_packet_family *family = c->server->family;

    if (family && family->connection_close)
        family->connection_close(c);
    ipc__shm_free(c->shm);
    ipc__stream_free(&c->stream);
    free(c->scratch);
    if (c->done)
        ipc_plat_cond_destroy(c->done);
}

/* Drains while stop can still cut it short (a client that never reads
 * must not hold the server). Once conn is detached, stop no longer
 * touches it. */
static void connection_close(ipc_slot *slot, ipc_plat_conn *conn, int refused)
{
    ipc_server_t *server = slot->server;

    if (!refused)
        ipc_plat_conn_drain(conn);
    ipc_plat_mutex_lock(server->lock);
    slot->conn = NULL;
    ipc_plat_mutex_unlock(server->lock);
    ipc_plat_conn_close(conn);

    ipc_plat_mutex_lock(server->lock);
    slot->state = IPC__SLOT_DONE;
    ipc_plat_cond_broadcast(server->changed);
    ipc_plat_mutex_unlock(server->lock);
}

static void connection_main(void *arg)
{
    ipc_slot *slot = (ipc_slot *)arg;
    ipc_server_t *server = slot->server;
    ipc_connection c;
    ipc_plat_conn *conn;

    memset(&c, 0, sizeof c);
    c.server = server;
    c.slot = slot;
    ipc_plat_mutex_lock(server->lock);
    conn = slot->conn;
    ipc_plat_mutex_unlock(server->lock);
    c.stream.conn = conn;
    c.path = &ipc__stream_datapath;
    c.path_state = &c.stream;

    if (connection_open(&c) == IPC_OK && ipc__server_handshake(&c) == IPC_OK) {
        ipc__serve_requests(&c);
    }
    connection_free(&c);
    connection_close(slot, conn, c.refused);
}

/* ---- listener threads ----------------------------------------------------- */

/* Waits for a free slot (clients queue in the OS meanwhile); NULL once
 * stopping. */
static ipc_slot *reserve_slot(ipc_server_t *server)
{
    ipc_slot *chosen = NULL;
    ipc_plat_thread *finished = NULL;
    uint32_t i;

    ipc_plat_mutex_lock(server->lock);
    while (!server->stopping && !chosen) {
        for (i = 0; i < server->options.max_clients && !chosen; i++)
            if (server->slots[i].state == IPC__SLOT_FREE)
                chosen = &server->slots[i];
        for (i = 0; i < server->options.max_clients && !chosen; i++)
            if (server->slots[i].state == IPC__SLOT_DONE)
                chosen = &server->slots[i];
        if (!chosen)
            ipc_plat_cond_wait(server->changed, server->lock, -1);
    }
    if (chosen) {
        finished = chosen->thread;
        chosen->thread = NULL;
        chosen->state = IPC__SLOT_RESERVED;
    }
    ipc_plat_mutex_unlock(server->lock);
    if (finished)
        ipc_plat_thread_join(finished); /* already exited: returns at once */
    return chosen;
}

static void release_slot(ipc_server_t *server, ipc_slot *slot)
{
    ipc_plat_mutex_lock(server->lock);
    slot->state = IPC__SLOT_FREE;
    ipc_plat_cond_broadcast(server->changed);
    ipc_plat_mutex_unlock(server->lock);
}

static void start_connection(ipc_server_t *server, ipc_slot *slot, ipc_plat_conn *conn)
{
    ipc_error err = {0};
    int r = IPC_OK;

    ipc_plat_mutex_lock(server->lock);
    if (!server->stopping) {
        slot->conn = conn;
        slot->state = IPC__SLOT_RUNNING;
        r = ipc_plat_thread_start(&slot->thread, connection_main, slot, &err);
        if (r == IPC_OK) {
            ipc_plat_mutex_unlock(server->lock);
            return;
        }
        slot->conn = NULL;
        slot->thread = NULL;
        ipc__log(IPC_LOG_ERROR, "could not start a connection thread: %s",
                 err.message ? err.message : ipc_result_name(r));
        ipc_error_clear(&err);
    }
    slot->state = IPC__SLOT_FREE;
    ipc_plat_cond_broadcast(server->changed);
    ipc_plat_mutex_unlock(server->lock);
    ipc_plat_conn_close(conn);
}

/* Sleeps up to ms, returning early when the server stops. */
static void pause_unless_stopping(ipc_server_t *server, int ms)
{
    int64_t until = ipc_plat_now_ms() + ms;

    ipc_plat_mutex_lock(server->lock);
    while (!server->stopping && ipc_plat_now_ms() < until)
        ipc_plat_cond_wait(server->changed, server->lock, ipc__remaining_ms(until));
    ipc_plat_mutex_unlock(server->lock);
}

static void listener_main(void *arg)
{
    ipc_listener_thread *self = (ipc_listener_thread *)arg;
    ipc_server_t *server = self->server;

    for (;;) {
        ipc_plat_conn *conn = NULL;
        ipc_error err = {0};
        ipc_slot *slot = reserve_slot(server);
        int r;

        if (!slot)
            break;
        r = ipc_plat_accept(self->acceptor, &conn, &err);
        if (r == IPC_OK) {
            start_connection(server, slot, conn);
            continue;
        }
        release_slot(server, slot);
        if (r == IPC_E_CLOSED) {
            ipc_error_clear(&err);
            break;
        }
        ipc__log(IPC_LOG_ERROR, "accept failed (retrying): %s",
                 err.message ? err.message : ipc_result_name(r));
        ipc_error_clear(&err);
        /* E.g. out of descriptors: back off instead of spinning. */
        pause_unless_stopping(server, 100);
    }
}

/* ---- start and stop ------------------------------------------------------- */

static int validate_server_options(const ipc_server_options *o, ipc_error *err)
{
    if (o->handshake[0] != 0x00)
        return ipc__fail(err, IPC_E_INVALID, 0, "the handshake value must start with a 0x00 byte");
    if (o->access != IPC_ACCESS_USER && o->access != IPC_ACCESS_WORLD)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "access must be IPC_ACCESS_USER or "
                         "IPC_ACCESS_WORLD, not %d",
                         o->access);
    if (o->max_clients > 4096)
        return ipc__fail(err, IPC_E_INVALID, 0, "max_clients %lu is above the limit of 4096",
                         (unsigned long)o->max_clients);
    if (o->dispatch != IPC_DISPATCH_THREAD && o->dispatch != IPC_DISPATCH_MANUAL)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "dispatch must be IPC_DISPATCH_THREAD or "
                         "IPC_DISPATCH_MANUAL, not %d",
                         o->dispatch);
    if (o->connection_handler && o->dispatch != IPC_DISPATCH_THREAD)
        return ipc__fail(err, IPC_E_INVALID, 0, "a connection_handler needs thread dispatch");
    if (o->listeners > o->max_clients)
        return ipc__fail(err, IPC_E_INVALID, 0, "listeners (%lu) cannot exceed max_clients (%lu)",
                         (unsigned long)o->listeners, (unsigned long)o->max_clients);
    return IPC_OK;
}

/* Frees what server_create/server_launch built; threads must be joined. */
void ipc__server_free(ipc_server_t *server)
{
    uint32_t i;

    if (!server)
        return;
    if (server->listeners) {
        for (i = 0; i < server->listener_count; i++)
            ipc_plat_acceptor_destroy(server->listeners[i].acceptor);
        free(server->listeners);
    }
    if (server->listener)
        ipc_plat_listener_close(server->listener);
    if (server->changed)
        ipc_plat_cond_destroy(server->changed);
    if (server->queued)
        ipc_plat_cond_destroy(server->queued);
    ipc_plat_ready_destroy(server->ready);
    if (server->lock)
        ipc_plat_mutex_destroy(server->lock);
    if (server->family && server->family->server_free)
        server->family->server_free(server);
    if (server->attached_free)
        server->attached_free(server->attached);
    free(server->slots);
    free(server);
}

/* The lock and conditions; a queue only for servers that have one. */
static int create_sync(ipc_server_t *server, ipc_error *err)
{
    int r = ipc_plat_mutex_create(&server->lock, err);

    if (r == IPC_OK)
        r = ipc_plat_cond_create(&server->changed, err);
    if (r == IPC_OK && uses_queue(server)) {
        r = ipc_plat_cond_create(&server->queued, err);
        if (r == IPC_OK)
            r = ipc_plat_ready_create(&server->ready, err);
    }
    if (r == IPC_OK && server->family && server->family->server_init)
        r = server->family->server_init(server, err);
    return r;
}

static int create_slots(ipc_server_t *server, ipc_error *err)
{
    uint32_t i;

    server->slots = (ipc_slot *)calloc(server->options.max_clients, sizeof *server->slots);
    if (!server->slots)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the slot table");
    for (i = 0; i < server->options.max_clients; i++) {
        server->slots[i].server = server;
        server->slots[i].index = i;
    }
    return IPC_OK;
}

static int server_create(ipc_server_t **out, const char *name, const ipc_server_options *options,
                         ipc_handler_fn handler, void *user_data, const ipc_packet_family *family,
                         ipc_error *err)
{
    ipc_server_t *server;
    int r;

    *out = NULL;
    if (!name || !*name ||
        (!handler && !(options && (options->returning_handler || options->connection_handler ||
                                   options->dispatch == IPC_DISPATCH_MANUAL))))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_open needs a name and a handler");
    server = (ipc_server_t *)calloc(1, sizeof *server);
    if (!server)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the server");
    if (options)
        server->options = *options;
    else
        ipc_server_options_init(&server->options);
    fill_server_defaults(&server->options);
    server->handler = handler;
    server->user_data = user_data;
    server->family = family;
    server->shm_max_spinners = (uint32_t)ipc_plat_cpus_available();
    r = validate_server_options(&server->options, err);
    if (r == IPC_OK)
        r = create_slots(server, err);
    if (r == IPC_OK)
        r = create_sync(server, err);
    if (r != IPC_OK)
        goto fail;
    *out = server;
    return IPC_OK;
fail:
    ipc__server_free(server);
    return r;
}

void ipc__stop_listeners(ipc_server_t *server)
{
    uint32_t i;

    ipc_plat_listener_interrupt(server->listener);
    for (i = 0; i < server->listener_count; i++) {
        if (server->listeners[i].thread) {
            ipc_plat_thread_join(server->listeners[i].thread);
            server->listeners[i].thread = NULL;
        }
    }
}

static int server_launch(ipc_server_t *server, const char *name, ipc_error *err)
{
    ipc_plat_listen_params params;
    uint32_t i;
    int r;

    params.access = server->options.access;
    params.max_clients = server->options.max_clients;
    params.listeners = server->options.listeners;
    r = ipc_plat_listen(&server->listener, name, &params, err);
    if (r != IPC_OK)
        return r;
    server->listeners = (ipc_listener_thread *)calloc(server->options.listeners,
                                                      sizeof *server->listeners);
    if (!server->listeners)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for listener threads");
    for (i = 0; i < server->options.listeners; i++) {
        ipc_listener_thread *l = &server->listeners[i];

        l->server = server;
        r = ipc_plat_acceptor_create(server->listener, &l->acceptor, err);
        if (r != IPC_OK)
            break;
        server->listener_count = i + 1;
        r = ipc_plat_thread_start(&l->thread, listener_main, l, err);
        if (r != IPC_OK)
            break;
    }
    if (r != IPC_OK) {
        ipc_plat_mutex_lock(server->lock);
        server->stopping = 1;
        ipc_plat_cond_broadcast(server->changed);
        ipc_plat_mutex_unlock(server->lock);
        ipc__stop_listeners(server);
    }
    return r;
}

int ipc__server_open(ipc_server_t **out, const char *name, const ipc_server_options *options,
                     ipc_handler_fn handler, void *user_data, const ipc_packet_family *family,
                     ipc_error *err)
{
    ipc_server_t *server = NULL;
    int r;

    if (!out)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_open: NULL output pointer");
    *out = NULL;
    r = server_create(&server, name, options, handler, user_data, family, err);
    if (r != IPC_OK)
        return r;
    r = server_launch(server, name, err);
    if (r != IPC_OK) {
        ipc__server_free(server);
        return r;
    }
    ipc__log(IPC_LOG_INFO, "server listening on %s (%lu slots)",
             ipc_plat_listener_address(server->listener),
             (unsigned long)server->options.max_clients);
    *out = server;
    return IPC_OK;
}

void ipc__server_attach(ipc_server_t *server, void *attached, void (*free_fn)(void *))
{
    server->attached = attached;
    server->attached_free = free_fn;
}

const char *ipc_server_address(const ipc_server_t *server)
{
    return server && server->listener ? ipc_plat_listener_address(server->listener) : "";
}
