/*
 * The server node (docs/protocol.md section 10): COMMAND, CANCEL, console
 * output and EXIT, as a packet family on top of the request loop. The core
 * never names this file: ipc_server_open hands it the family when
 * options.node is set, and the core calls the hooks below at fixed points.
 *
 * A command is heap-allocated (its payload copied, because the connection
 * goes on reading for a CANCEL) and queued for ipc_server_next_call. At
 * most one command per server is queued or running; a second gets EXIT
 * BUSY. The connection thread frees the command once it is finished.
 *
 * Locks: node_connection.write_lock serializes writes on one connection
 * (application threads write console output while the connection thread
 * may answer a CANCEL); it is taken before the server's lock, never after.
 * The command counters and flags are guarded by the server's lock.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

/* Exit code of a command cancelled before it ran: what a shell reports for
 * a process ended by Ctrl-C (128 + SIGINT). */
#define CANCELLED_EXIT_CODE 130

typedef struct node_server {
    uint32_t commands_active; /* queued or running; at most 1; server lock */
} node_server;

typedef struct node_connection {
    ipc_plat_mutex *write_lock;
    struct node_command *command; /* in flight, or NULL; this thread's */
} node_connection;

typedef struct node_command {
    ipc_call call;     /* first: the core sees an ipc_call */
    int cancelled;     /* guarded by the server's lock */
    int released;      /* counted off commands_active; server's lock */
    uint8_t payload[]; /* the copied COMMAND payload, NUL-terminated */
} node_command;

static node_server *server_state(ipc_server_t *server)
{
    return (node_server *)server->family_state;
}

static node_connection *connection_state(ipc_connection *c)
{
    return (node_connection *)c->family_state;
}

/* Only this family makes COMMAND calls, so the cast is safe for them. */
static node_command *as_command(ipc_call *call)
{
    return call->type == IPC_PACKET_COMMAND ? (node_command *)call : NULL;
}

/* ---- the command's life --------------------------------------------------- */

/* A command stops counting against the one-at-a-time limit as soon as its
 * EXIT is about to go out: the client may send its next COMMAND the moment
 * it reads the EXIT. Caller holds the server's lock. */
static void release_command_locked(ipc_server_t *server, ipc_call *call)
{
    node_command *command = as_command(call);

    if (command && !command->released) {
        command->released = 1;
        server_state(server)->commands_active--;
    }
}

static void send_exit(ipc_connection *c, int32_t code, uint8_t type)
{
    uint8_t payload[IPC_EXIT_PAYLOAD_SIZE];

    ipc_exit_encode(payload, code, type);
    ipc__lock_writes(c);
    ipc__write_locked(c, IPC_PACKET_EXIT, NULL, 0, payload, sizeof payload, -1, NULL);
    ipc__unlock_writes(c);
}

/* Frees the connection's command once it is finished; with `wait`, first
 * waits for that (the client sent something that must follow the EXIT). */
static void reap_command(ipc_connection *c, int wait)
{
    node_connection *nc = connection_state(c);
    ipc_server_t *server = c->server;
    node_command *command = nc->command;
    int finished;

    if (!command)
        return;
    ipc_plat_mutex_lock(server->lock);
    while (wait && !command->call.finished)
        ipc_plat_cond_wait(c->done, server->lock, -1);
    finished = command->call.finished;
    ipc_plat_mutex_unlock(server->lock);
    if (finished) {
        free(command);
        nc->command = NULL;
    }
}

/* Counts a new command in; 0 with *busy set when one is already active, 0
 * when the server is stopping. */
static int claim_command(ipc_server_t *server, int *busy)
{
    node_server *ns = server_state(server);
    int stopping;

    ipc_plat_mutex_lock(server->lock);
    stopping = server->stopping;
    *busy = !stopping && ns->commands_active > 0;
    if (!stopping && !*busy)
        ns->commands_active++;
    ipc_plat_mutex_unlock(server->lock);
    return !stopping && !*busy;
}

static node_command *copy_command(ipc_connection *c, const ipc_packet *packet)
{
    size_t length = packet->header.length;
    node_command *command = (node_command *)calloc(1, sizeof *command + length + 1);

    if (!command)
        return NULL;
    memcpy(command->payload, packet->payload, length);
    command->payload[length] = 0;
    command->call.connection = c;
    command->call.type = IPC_PACKET_COMMAND;
    command->call.request = command->payload;
    command->call.size = length;
    return command;
}

/* Queues a COMMAND for ipc_server_next_call, or answers EXIT BUSY when the
 * node already has one. 0 if the server is stopping. */
static int start_command(ipc_connection *c, const ipc_packet *packet)
{
    ipc_server_t *server = c->server;
    node_command *command;
    int busy, queued, announce;

    if (!claim_command(server, &busy)) {
        if (busy)
            send_exit(c, 0, IPC_EXIT_BUSY);
        return busy;
    }
    command = copy_command(c, packet);
    if (!command) {
        ipc__log(IPC_LOG_ERROR, "[slot %u] out of memory for a command", (unsigned)c->slot->index);
        ipc_plat_mutex_lock(server->lock);
        server_state(server)->commands_active--;
        ipc_plat_mutex_unlock(server->lock);
        send_exit(c, 1, IPC_EXIT_REFUSED);
        return 1;
    }
    connection_state(c)->command = command;
    ipc_plat_mutex_lock(server->lock);
    queued = ipc__enqueue_locked(server, &command->call, &announce);
    if (!queued) {
        command->call.finished = 1;
        release_command_locked(server, &command->call);
    }
    ipc_plat_mutex_unlock(server->lock);
    if (announce)
        ipc__announce_queued(server);
    return queued;
}

/* CANCEL, or the client vanished. A command still in the queue ends here
 * (EXIT cancelled) and never runs; a running one is the application's to
 * stop: its cancel_handler is told. */
static void cancel_command(ipc_connection *c)
{
    ipc_server_t *server = c->server;
    node_command *command = connection_state(c)->command;
    int notify = 0, unqueued = 0;

    if (!command)
        return;
    ipc_plat_mutex_lock(server->lock);
    if (!command->call.finished && !command->cancelled) {
        command->cancelled = 1;
        notify = command->call.taken;
        unqueued = !notify;
        if (unqueued) {
            ipc__unqueue_locked(server, &command->call);
            release_command_locked(server, &command->call);
            command->call.finished = 1;
        }
    }
    ipc_plat_mutex_unlock(server->lock);
    if (unqueued)
        send_exit(c, CANCELLED_EXIT_CODE, IPC_EXIT_CANCELLED);
    /* The call stays allocated until this thread reaps it, so the pointer
     * is valid in the callback even if the command just finished. */
    if (notify && server->options.cancel_handler)
        server->options.cancel_handler(server->user_data, &command->call);
}

/* ---- the public calls on a command ---------------------------------------- */

int ipc_call_console_write(ipc_call *call, int stream, const void *text, size_t size,
                           ipc_error *err)
{
    /* Bounded packets, so a client's max_message never refuses output. */
    const size_t chunk = 1024u * 1024u;
    const uint8_t *at = (const uint8_t *)text;
    uint8_t stream_byte = (uint8_t)stream;
    ipc_connection *c;
    int r = IPC_OK;

    if (!call || (!text && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_console_write: NULL call or text");
    if (call->type != IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "console output belongs to a command call");
    if (stream != IPC_STREAM_STDOUT && stream != IPC_STREAM_STDERR)
        return ipc__fail(err, IPC_E_INVALID, 0, "stream must be 1 (stdout) or 2 (stderr), not %d",
                         stream);
    c = call->connection;
    ipc__lock_writes(c);
    if (call->answered)
        r = ipc__fail(err, IPC_E_INVALID, 0, "the command already exited");
    do {
        size_t part = size < chunk ? size : chunk;

        if (r == IPC_OK)
            r = ipc__write_locked(c, IPC_PACKET_CONSOLE_WRITE, &stream_byte, 1, at, part, -1, err);
        at += part;
        size -= part;
    } while (r == IPC_OK && size > 0);
    ipc__unlock_writes(c);
    return r;
}

int ipc_call_exit(ipc_call *call, int32_t exit_code, uint8_t exit_type, ipc_error *err)
{
    uint8_t payload[IPC_EXIT_PAYLOAD_SIZE];
    ipc_server_t *server;

    if (!call)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_exit: NULL call");
    if (call->type != IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_exit: not a command call");
    server = call->connection->server;
    ipc_plat_mutex_lock(server->lock);
    release_command_locked(server, call);
    ipc_plat_mutex_unlock(server->lock);
    ipc_exit_encode(payload, exit_code, exit_type);
    return ipc__send_on_call(call, IPC_PACKET_EXIT, payload, sizeof payload, err);
}

int ipc_call_cancelled(ipc_call *call)
{
    node_command *command = call ? as_command(call) : NULL;
    ipc_server_t *server;
    int cancelled;

    if (!command)
        return 0;
    server = call->connection->server;
    ipc_plat_mutex_lock(server->lock);
    cancelled = command->cancelled;
    ipc_plat_mutex_unlock(server->lock);
    return cancelled;
}

/* ---- the packet family ------------------------------------------------------ */

static int node_server_init(ipc_server_t *server, ipc_error *err)
{
    server->family_state = calloc(1, sizeof(node_server));
    if (!server->family_state)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the node's state");
    return IPC_OK;
}

static void node_server_free(ipc_server_t *server)
{
    free(server->family_state);
    server->family_state = NULL;
}

static int node_connection_open(ipc_connection *c, ipc_error *err)
{
    node_connection *nc = (node_connection *)calloc(1, sizeof *nc);
    int r;

    if (!nc)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a node connection");
    r = ipc_plat_mutex_create(&nc->write_lock, err);
    if (r != IPC_OK) {
        free(nc);
        return r;
    }
    c->family_state = nc;
    return IPC_OK;
}

static void node_connection_close(ipc_connection *c)
{
    node_connection *nc = connection_state(c);

    if (!nc)
        return;
    ipc_plat_mutex_destroy(nc->write_lock);
    free(nc);
    c->family_state = NULL;
}

/* CANCEL: empty or one of the signals. This node has no process to
 * signal: every signal but a window change stops the command, and one that
 * comes after the EXIT is ignored. */
static int on_cancel(ipc_connection *c, const ipc_packet *packet)
{
    ipc_error err = {0};
    int signal_code = 0;

    if (ipc_cancel_decode(packet->payload, packet->header.length, &signal_code, &err) == IPC_OK) {
        if (signal_code != IPC_SIGNAL_WINDOW_CHANGED)
            cancel_command(c);
        return IPC__PACKET_KEEP;
    }
    ipc__refuse_packet(c, packet, IPC_E_PROTOCOL, &err);
    ipc_error_clear(&err);
    return IPC__PACKET_CLOSE;
}

static int node_on_packet(ipc_connection *c, const ipc_packet *packet)
{
    reap_command(c, 0);
    if (packet->header.type == IPC_PACKET_CANCEL)
        return on_cancel(c, packet);
    if (packet->header.type != IPC_PACKET_COMMAND && packet->header.type != IPC_PACKET_REQUEST)
        return IPC__PACKET_PASS; /* refused by the request loop */
    /* A client sends a COMMAND or REQUEST only after the EXIT of the
     * previous command, which may still be finishing. */
    reap_command(c, 1);
    if (packet->header.type == IPC_PACKET_REQUEST)
        return IPC__PACKET_PASS;
    if (start_command(c, packet) && !ipc__connection_broken(c))
        return IPC__PACKET_KEEP;
    return IPC__PACKET_CLOSE;
}

/* A command still running has lost its client: stop it, and wait for the
 * application to finish it before the connection goes away. */
static void node_on_disconnect(ipc_connection *c)
{
    cancel_command(c);
    reap_command(c, 1);
}

static void node_lock_writes(ipc_connection *c)
{
    ipc_plat_mutex_lock(connection_state(c)->write_lock);
}

static void node_unlock_writes(ipc_connection *c)
{
    ipc_plat_mutex_unlock(connection_state(c)->write_lock);
}

static void node_finish_unanswered(ipc_call *call)
{
    ipc__log(IPC_LOG_ERROR,
             "[slot %u] the application finished a command without its "
             "EXIT; reporting it as crashed",
             (unsigned)call->connection->slot->index);
    ipc_call_exit(call, 1, IPC_EXIT_CRASHED, NULL);
}

static const ipc_packet_family node_family = {
    .name = "server node",
    .uses_queue = 1,
    .server_init = node_server_init,
    .server_free = node_server_free,
    .connection_open = node_connection_open,
    .connection_close = node_connection_close,
    .on_packet = node_on_packet,
    .on_disconnect = node_on_disconnect,
    .lock_writes = node_lock_writes,
    .unlock_writes = node_unlock_writes,
    .finish_unanswered = node_finish_unanswered,
    .abandon_locked = release_command_locked,
};

/* The public entry point lives on the top layer of the server because it
 * is the one place that knows both the core and this family. */
int ipc_server_open(ipc_server_t **out, const char *name, const ipc_server_options *options,
                    ipc_handler_fn handler, void *user_data, ipc_error *err)
{
    const ipc_packet_family *family = options && options->node ? &node_family : NULL;

    return ipc__server_open(out, name, options, handler, user_data, family, err);
}
