/*
 * Dispatch: how a request reaches the application and how its answer goes
 * back. Thread dispatch runs the handler on the connection's thread; manual
 * dispatch (and the server node's commands) queue calls for
 * ipc_server_next_call and the connection thread waits until ipc_call_finish.
 * Everything here runs under the locks described in docs/design.md: the
 * server's lock guards the queue and the calls in it; the packet family's
 * write lock, where there is one, guards writes and `answered`.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- answering a call ---------------------------------------------------- */

/* Only a packet family whose application threads write on their own (the
 * node's console output) needs writes serialized; plain requests are
 * answered by one thread at a time. */
void ipc__lock_writes(ipc_connection *c)
{
    const ipc_packet_family *family = c->server->family;

    if (family && family->lock_writes)
        family->lock_writes(c);
}

void ipc__unlock_writes(ipc_connection *c)
{
    const ipc_packet_family *family = c->server->family;

    if (family && family->unlock_writes)
        family->unlock_writes(c);
}

int ipc__write_locked(ipc_connection *c, uint8_t type, const void *prefix, size_t prefix_size,
                      const void *body, size_t body_size, int timeout_ms, ipc_error *err)
{
    int r;

    if (c->write_failed)
        return ipc__fail(err, IPC_E_CLOSED, 0, "the client is gone");
    r = c->path->write_packet(c->path_state, type, prefix, prefix_size, body, body_size, timeout_ms,
                              err);
    if (r != IPC_OK)
        c->write_failed = 1;
    return r;
}

int ipc__connection_broken(ipc_connection *c)
{
    int broken;

    ipc__lock_writes(c);
    broken = c->write_failed;
    ipc__unlock_writes(c);
    return broken;
}

int ipc__send_on_call(ipc_call *call, uint8_t type, const void *data, size_t size, ipc_error *err)
{
    ipc_connection *c = call->connection;
    int r;

    ipc__lock_writes(c);
    if (call->answered) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "this request was already answered");
    } else {
        call->answered = 1;
        /* No timeout: a client that stops reading blocks only its own
         * thread, and ipc_server_stop interrupts the write. */
        r = ipc__write_locked(c, type, NULL, 0, data, size, -1, err);
    }
    ipc__unlock_writes(c);
    return r;
}

/* A response above max_message: the client gets an ERROR packet that says
 * so (with the transport's prefix), the caller IPC_E_TOO_LARGE. */
static int refuse_response(ipc_call *call, size_t size, uint32_t limit, ipc_error *err)
{
    char *text = ipc__format("%sthe response of %lu bytes exceeds the server's "
                             "max_message of %lu bytes",
                             IPC__TOO_LARGE_PREFIX, (unsigned long)size, (unsigned long)limit);

    ipc__log(IPC_LOG_ERROR, "%s", text ? text : "response too large");
    ipc__send_on_call(call, IPC_PACKET_ERROR, text, text ? strlen(text) : 0, NULL);
    free(text);
    return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                     "response of %lu bytes exceeds max_message (%lu bytes)", (unsigned long)size,
                     (unsigned long)limit);
}

int ipc_call_respond(ipc_call *call, const void *data, size_t size, ipc_error *err)
{
    uint32_t limit;

    if (!call || (!data && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_respond: NULL call or data");
    if (call->type == IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "a command is answered with ipc_call_exit");
    limit = call->connection->server->options.max_message;
    if (size > limit)
        return refuse_response(call, size, limit, err);
    return ipc__send_on_call(call, IPC_PACKET_RESPONSE, data, size, err);
}

int ipc_call_fail(ipc_call *call, const char *message, size_t size, ipc_error *err)
{
    if (!call || (!message && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_fail: NULL call or message");
    if (call->type == IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "a command is answered with ipc_call_exit");
    /* The text explains a failure: its head is enough, and a bounded
     * ERROR fits every client's max_message of 64 KiB or more and the
     * 4-byte length field (a longer one was cast to 32 bits). */
    if (size > IPC__MAX_ERROR_TEXT)
        size = IPC__MAX_ERROR_TEXT;
    return ipc__send_on_call(call, IPC_PACKET_ERROR, message, size, err);
}

void *ipc_call_buffer(ipc_call *call, size_t capacity)
{
    ipc_connection *c;
    uint8_t *grown;

    if (!call)
        return NULL;
    c = call->connection;
    if (c->scratch_capacity >= capacity && c->scratch)
        return c->scratch;
    grown = (uint8_t *)realloc(c->scratch, capacity ? capacity : 1);
    if (!grown)
        return NULL;
    c->scratch = grown;
    c->scratch_capacity = capacity;
    return grown;
}

uint32_t ipc_call_connection(const ipc_call *call)
{
    return call ? call->connection->slot->index : 0;
}

int ipc_call_type(const ipc_call *call)
{
    return call ? call->type : 0;
}

/* ---- the manual-dispatch queue ------------------------------------------- */

/* Readiness. `ready` (an eventfd, a pipe or an event the application's loop
 * waits on) is set while calls are queued. Setting it wakes the loop's
 * thread, which then takes the server's lock at once; set under that lock,
 * the waker still held it, and the loop waited. Measured with a Python main
 * loop calling dispatch(0) (spin/manual in bench/run.py --mainloop-only,
 * interleaved runs): 33-41 us added per request, 18-23 us after. So the
 * enqueuer that found the queue empty sets `ready` after unlocking, and
 * whoever leaves the queue empty clears it under the lock (settle_ready).
 * A set is never lost: a clear happens only on an empty queue, so it can
 * only erase the set of a call already taken. A set that lands after the
 * clear (its call taken meanwhile) is stale: the loop wakes once for
 * nothing, and the next take that finds the queue empty clears it, since
 * the counts then show a set made, or still being made, since the last
 * clear. */
void ipc__announce_queued(ipc_server_t *server)
{
    ipc_plat_ready_set(server->ready);
    for (;;) {
        uint32_t done = ipc_plat_word_load(&server->announces_done);

        if (ipc_plat_word_swap_if(&server->announces_done, done, done + 1))
            return;
    }
}

/* The queue is empty; the caller holds the server's lock. */
static void settle_ready_locked(ipc_server_t *server)
{
    uint32_t done = ipc_plat_word_load(&server->announces_done);

    if (done == server->announces_begun && done == server->announces_cleared)
        return; /* no set since the last clear, and none under way */
    ipc_plat_ready_clear(server->ready);
    server->announces_cleared = done;
}

int ipc__enqueue_locked(ipc_server_t *server, ipc_call *call, int *announce)
{
    *announce = 0;
    if (server->stopping)
        return 0;
    if (server->queue_tail) {
        server->queue_tail->next = call;
    } else {
        server->queue_head = call;
        server->announces_begun++;
        *announce = 1;
    }
    server->queue_tail = call;
    /* One call, one taker: waking every waiting worker for it had all but
     * one of them wake up for nothing. A waiter checks the queue before it
     * sleeps, so a call is never left behind; stop still wakes them all. */
    ipc_plat_cond_signal(server->queued);
    return 1;
}

void ipc__unqueue_locked(ipc_server_t *server, ipc_call *call)
{
    ipc_call *prev = NULL, *at = server->queue_head;

    while (at && at != call) {
        prev = at;
        at = at->next;
    }
    if (!at)
        return;
    if (prev)
        prev->next = call->next;
    else
        server->queue_head = call->next;
    if (server->queue_tail == call)
        server->queue_tail = prev;
    call->next = NULL;
    if (!server->queue_head)
        settle_ready_locked(server);
}

/* Hands the call to ipc_server_next_call and waits until ipc_call_finish
 * (or stop) ends it. 0 if stop ended it unanswered. */
static int queue_and_wait(ipc_connection *c, ipc_call *call)
{
    ipc_server_t *server = c->server;
    int handled, announce;

    ipc_plat_mutex_lock(server->lock);
    if (!ipc__enqueue_locked(server, call, &announce)) {
        ipc_plat_mutex_unlock(server->lock);
        return 0;
    }
    if (announce) {
        ipc_plat_mutex_unlock(server->lock);
        ipc__announce_queued(server);
        ipc_plat_mutex_lock(server->lock);
    }
    while (!call->finished)
        ipc_plat_cond_wait(c->done, server->lock, -1);
    handled = !call->abandoned;
    ipc_plat_mutex_unlock(server->lock);
    return handled;
}

/* Waits for a queued call; the caller holds the lock. NULL: none came
 * within the deadline, or the server is stopping. */
static ipc_call *take_locked(ipc_server_t *server, int64_t deadline)
{
    ipc_call *taken;

    while (!server->queue_head && !server->stopping) {
        int wait = ipc__remaining_ms(deadline);

        if (wait == 0)
            break;
        ipc_plat_cond_wait(server->queued, server->lock, wait);
    }
    taken = server->stopping ? NULL : server->queue_head;
    if (!taken) {
        settle_ready_locked(server); /* a stale set, if one landed */
        return NULL;
    }
    server->queue_head = taken->next;
    if (!server->queue_head) {
        server->queue_tail = NULL;
        settle_ready_locked(server);
    }
    taken->next = NULL;
    taken->taken = 1;
    return taken;
}

int ipc_server_next_call(ipc_server_t *server, ipc_call **call, const uint8_t **request,
                         size_t *size, int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    ipc_call *taken;
    int stopping;

    if (!server || !call || !request || !size)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_next_call: NULL argument");
    *call = NULL;
    if (!server->queued)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "the server uses neither manual dispatch nor "
                         "node commands");
    ipc_plat_mutex_lock(server->lock);
    taken = take_locked(server, deadline);
    stopping = server->stopping;
    ipc_plat_mutex_unlock(server->lock);
    if (stopping)
        return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
    if (!taken)
        return ipc__fail(err, IPC_E_TIMEOUT, 0, "no request is pending");
    *call = taken;
    *request = taken->request;
    *size = taken->size;
    return IPC_OK;
}

int ipc_server_next_calls(ipc_server_t *server, ipc_call **finished, size_t finished_count,
                          ipc_call **calls, const uint8_t **requests, size_t *sizes,
                          size_t capacity, size_t *count, int timeout_ms, ipc_error *err)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    size_t taken = 0;
    int stopping;

    while (finished && finished_count)
        ipc_call_finish(finished[--finished_count]);
    if (!server || !calls || !requests || !sizes || !capacity || !count)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_next_calls: NULL argument");
    *count = 0;
    if (!server->queued)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "the server uses neither manual dispatch nor "
                         "node commands");
    /* One lock (and, for a Python caller, one GIL hand-over) per batch:
     * wait for the first call, then take what is ready without waiting. */
    ipc_plat_mutex_lock(server->lock);
    while (taken < capacity) {
        ipc_call *call = take_locked(server, taken ? 0 : deadline);

        if (!call)
            break;
        calls[taken] = call;
        requests[taken] = call->request;
        sizes[taken++] = call->size;
    }
    stopping = server->stopping;
    ipc_plat_mutex_unlock(server->lock);
    *count = taken;
    if (taken)
        return IPC_OK;
    if (stopping)
        return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
    return ipc__fail(err, IPC_E_TIMEOUT, 0, "no request is pending");
}

void ipc_call_finish(ipc_call *call)
{
    const ipc_packet_family *family;
    ipc_connection *c;
    int answered;

    if (!call)
        return;
    c = call->connection;
    family = c->server->family;
    ipc__lock_writes(c);
    answered = call->answered;
    ipc__unlock_writes(c);
    if (!answered && call->type != IPC_PACKET_REQUEST && family && family->finish_unanswered) {
        family->finish_unanswered(call);
    } else if (!answered) {
        static const char text[] = "the application finished the request without answering it";

        ipc__log(IPC_LOG_ERROR, "[slot %u] %s", (unsigned)c->slot->index, text);
        ipc__send_on_call(call, IPC_PACKET_ERROR, text, sizeof text - 1, NULL);
    }
    ipc_plat_mutex_lock(c->server->lock);
    call->finished = 1;
    ipc_plat_cond_broadcast(c->done);
    ipc_plat_mutex_unlock(c->server->lock);
}

intptr_t ipc_server_ready_handle(const ipc_server_t *server)
{
    return server && server->ready ? ipc_plat_ready_handle(server->ready) : -1;
}

void ipc__abandon_queued_locked(ipc_server_t *server)
{
    const ipc_packet_family *family = server->family;
    ipc_call *call = server->queue_head;

    if (!server->queued)
        return;
    while (call) {
        ipc_call *next = call->next;

        if (call->type != IPC_PACKET_REQUEST && family && family->abandon_locked)
            family->abandon_locked(server, call);
        call->finished = 1;
        call->abandoned = 1;
        ipc_plat_cond_broadcast(call->connection->done);
        call = next;
    }
    server->queue_head = server->queue_tail = NULL;
    settle_ready_locked(server);
    ipc_plat_cond_broadcast(server->queued);
}

/* ---- thread dispatch and the REQUEST path -------------------------------- */

/* Runs the application's handler on this thread. */
static void run_handler(ipc_server_t *server, ipc_call *call, const ipc_packet *packet)
{
    if (server->options.returning_handler) {
        size_t size = 0;
        const void *response = server->options.returning_handler(
            server->user_data, call, packet->payload, packet->header.length, &size);

        if (response && !call->answered)
            ipc_call_respond(call, response, size, NULL);
    } else {
        server->handler(server->user_data, call, packet->payload, packet->header.length);
    }
}

int ipc__dispatch_request(ipc_connection *c, const ipc_packet *packet)
{
    ipc_server_t *server = c->server;
    ipc_call call;

    memset(&call, 0, sizeof call);
    call.connection = c;
    call.type = IPC_PACKET_REQUEST;
    if (server->options.dispatch == IPC_DISPATCH_MANUAL) {
        call.request = packet->payload;
        call.size = packet->header.length;
        if (!queue_and_wait(c, &call))
            return 0; /* the server is stopping */
    } else {
        run_handler(server, &call, packet);
    }
    if (!call.answered) {
        static const char text[] = "the server's handler returned without a response";

        ipc__log(IPC_LOG_ERROR, "[slot %u] %s", (unsigned)c->slot->index, text);
        ipc__send_on_call(&call, IPC_PACKET_ERROR, text, sizeof text - 1, NULL);
    }
    return 1;
}

void ipc__dispatch_farewell(ipc_connection *c)
{
    ipc_server_t *server = c->server;
    ipc_call farewell;

    /* Manual dispatch has no handler to tell. */
    if (server->options.dispatch == IPC_DISPATCH_MANUAL)
        return;
    memset(&farewell, 0, sizeof farewell);
    farewell.connection = c;
    farewell.answered = 1; /* answering is refused */
    if (server->options.returning_handler) {
        size_t ignored = 0;

        server->options.returning_handler(server->user_data, &farewell, NULL, 0, &ignored);
    } else {
        server->handler(server->user_data, &farewell, NULL, 0);
    }
}

/* ---- the application's own request loop (connection_handler) -------------- */

struct ipc_serve_loop {
    ipc_connection *connection;
    ipc__request_reader next_request;
    ipc_call call; /* the request handed out last */
    int pending;   /* call is waiting for its answer */
    int over;      /* the connection is over: every later call says so */
};

/* The answer ipc_serve_next was given for the request handed out last. */
static void answer_pending(ipc_serve_loop *loop, int type, const void *answer, size_t size)
{
    ipc_call *call = &loop->call;

    loop->pending = 0;
    if (call->answered)
        return;
    if (type == IPC_PACKET_RESPONSE && (answer || !size)) {
        ipc_call_respond(call, answer, size, NULL);
    } else if (type == IPC_PACKET_ERROR && (answer || !size)) {
        ipc_call_fail(call, (const char *)answer, size, NULL);
    } else {
        static const char text[] = "the server's handler returned without a response";

        ipc__log(IPC_LOG_ERROR, "[slot %u] %s", (unsigned)loop->connection->slot->index, text);
        ipc__send_on_call(call, IPC_PACKET_ERROR, text, sizeof text - 1, NULL);
    }
}

int64_t ipc_serve_next(ipc_serve_loop *loop, int answer_type, const void *answer,
                       size_t answer_size, ipc_next_request *next)
{
    ipc_connection *c;
    ipc_packet packet;
    size_t size;

    if (!loop || !next)
        return -IPC_E_INVALID;
    c = loop->connection;
    if (loop->pending) {
        answer_pending(loop, answer_type, answer, answer_size);
        if (ipc__connection_broken(c))
            loop->over = 1;
    }
    if (loop->over || !loop->next_request(c, &packet)) {
        loop->over = 1;
        return -IPC_E_CLOSED;
    }
    memset(&loop->call, 0, sizeof loop->call);
    loop->call.connection = c;
    loop->call.type = IPC_PACKET_REQUEST;
    loop->pending = 1;
    size = packet.header.length;
    /* A small request is copied to the caller's fixed address: a binding
     * then reads it through an object it made once, not one per request. */
    if (size <= IPC_REQUEST_INLINE_SIZE) {
        if (size)
            memcpy(next->inline_data, packet.payload, size);
        next->inline_data[size] = 0;
        next->data = next->inline_data;
    } else {
        next->data = packet.payload;
    }
    next->call = &loop->call;
    return (int64_t)size;
}

void ipc__dispatch_connection(ipc_connection *c, ipc__request_reader next_request)
{
    ipc_server_t *server = c->server;
    ipc_serve_loop loop;

    memset(&loop, 0, sizeof loop);
    loop.connection = c;
    loop.next_request = next_request;
    server->options.connection_handler(server->user_data, &loop);
    if (loop.pending) /* it returned before answering the last request */
        answer_pending(&loop, 0, NULL, 0);
}
