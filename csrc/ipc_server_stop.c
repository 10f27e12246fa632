/*
 * Stopping a server (from any thread but a handler): set `stopping`,
 * abandon queued calls, wake next_call waiters, soft-interrupt every
 * connection (a running handler may still answer), join the listeners,
 * give running connections STOP_GRACE_MS, hard-interrupt the rest, join
 * every connection thread (no new one starts: no lock needed), free. With
 * a timeout, threads still in a handler at the deadline are abandoned:
 * name released, server leaked. Also ipc_server_interrupt (the first step
 * alone) and ipc_server_forget (a fork child's way to drop a server).
 * The server core it stops is ipc.c.
 */
#include "ipc_internal.h"

/* How long ipc_server_stop lets running handlers finish before it closes
 * their connections under them. */
#define STOP_GRACE_MS 1000

static int count_running(ipc_server_t *server)
{
    int running = 0;
    uint32_t i;

    for (i = 0; i < server->options.max_clients; i++)
        if (server->slots[i].state == IPC__SLOT_RUNNING)
            running++;
    return running;
}

/* Wakes every connection: soft lets a running handler still answer; hard
 * makes clients see the connection closed now. Caller holds the lock. */
static void interrupt_connections(ipc_server_t *server, int hard)
{
    uint32_t i;

    for (i = 0; i < server->options.max_clients; i++)
        if (server->slots[i].state == IPC__SLOT_RUNNING && server->slots[i].conn)
            ipc_plat_conn_interrupt(server->slots[i].conn, hard);
}

static int called_from_server_thread(ipc_server_t *server)
{
    uint32_t i;
    int inside = 0;

    ipc_plat_mutex_lock(server->lock);
    for (i = 0; i < server->options.max_clients && !inside; i++)
        if (server->slots[i].thread && ipc_plat_thread_is_current(server->slots[i].thread))
            inside = 1;
    ipc_plat_mutex_unlock(server->lock);
    return inside;
}

void ipc_server_interrupt(ipc_server_t *server)
{
    if (!server)
        return;
    ipc_plat_mutex_lock(server->lock);
    server->stopping = 1;
    ipc_plat_cond_broadcast(server->changed);
    ipc__abandon_queued_locked(server);
    ipc_plat_mutex_unlock(server->lock);
}

/* Waits until no connection runs or `until` passes. Caller holds the lock. */
static void wait_connections_locked(ipc_server_t *server, int64_t until)
{
    while (count_running(server) > 0 && (until < 0 || ipc_plat_now_ms() < until))
        ipc_plat_cond_wait(server->changed, server->lock,
                           until < 0 ? -1 : ipc__remaining_ms(until));
}

/* Joins every connection thread that has ended (all of them when nothing
 * is abandoned); returns how many still run a handler. No thread can start
 * now, and a RUNNING slot is left alone: its thread still uses it. */
static uint32_t join_connections(ipc_server_t *server)
{
    uint32_t i, abandoned = 0;

    for (i = 0; i < server->options.max_clients; i++) {
        ipc_plat_thread *thread;

        ipc_plat_mutex_lock(server->lock);
        thread = server->slots[i].state == IPC__SLOT_RUNNING ? NULL : server->slots[i].thread;
        abandoned += server->slots[i].state == IPC__SLOT_RUNNING;
        server->slots[i].thread = thread ? NULL : server->slots[i].thread;
        ipc_plat_mutex_unlock(server->lock);
        if (thread) {
            ipc_plat_thread_join(thread);
            server->slots[i].state = IPC__SLOT_FREE;
        }
    }
    return abandoned;
}

/* Stop gave up on `abandoned` threads stuck in a handler: release the name
 * (nothing but the listener threads, joined, use the listener) and leak the
 * rest, which those threads still use when their handler returns. */
static void abandon_server(ipc_server_t *server, uint32_t abandoned)
{
    ipc__log(IPC_LOG_WARNING,
             "server on %s stopped; abandoned %lu connection thread(s) still "
             "running a handler after the stop timeout (their memory stays allocated)",
             ipc_plat_listener_address(server->listener), (unsigned long)abandoned);
    ipc_plat_listener_close(server->listener);
    server->listener = NULL;
}

int ipc_server_stop_timeout(ipc_server_t *server, int timeout_ms)
{
    int64_t deadline = ipc__deadline_after(timeout_ms);
    int64_t grace_end = ipc_plat_now_ms() + STOP_GRACE_MS;
    uint32_t abandoned;

    if (!server)
        return 0;
    if (called_from_server_thread(server)) {
        ipc__log(IPC_LOG_ERROR, "ipc_server_stop called from a handler: it would wait for "
                                "itself; call it from another thread");
        return -1;
    }
    /* With a timeout, half of it is the soft grace, the rest is for threads
     * to leave once their connections are closed under them. */
    if (deadline >= 0 && grace_end > ipc_plat_now_ms() + timeout_ms / 2)
        grace_end = ipc_plat_now_ms() + timeout_ms / 2;
    ipc_plat_mutex_lock(server->lock);
    server->stopping = 1;
    ipc_plat_cond_broadcast(server->changed);
    ipc__abandon_queued_locked(server);
    interrupt_connections(server, 0);
    ipc_plat_mutex_unlock(server->lock);

    ipc__stop_listeners(server);

    ipc_plat_mutex_lock(server->lock);
    wait_connections_locked(server, grace_end);
    interrupt_connections(server, 1);
    wait_connections_locked(server, deadline);
    ipc_plat_mutex_unlock(server->lock);

    abandoned = join_connections(server);
    if (abandoned) {
        abandon_server(server, abandoned);
        return (int)abandoned;
    }
    ipc__log(IPC_LOG_INFO, "server on %s stopped", ipc_plat_listener_address(server->listener));
    ipc__server_free(server);
    return 0;
}

void ipc_server_stop(ipc_server_t *server)
{
    ipc_server_stop_timeout(server, -1);
}

void ipc_server_forget(ipc_server_t *server)
{
    uint32_t i;

    /* The child has none of the server's threads, whose locks it may have
     * inherited held: read the slots unlocked, only close() descriptors
     * (shutdown() would cut off the parent's clients), free nothing. */
    for (i = 0; server && i < server->options.max_clients; i++)
        if (server->slots[i].state == IPC__SLOT_RUNNING && server->slots[i].conn)
            ipc_plat_conn_close(server->slots[i].conn);
    if (!server)
        return;
    ipc_plat_listener_forget(server->listener);
    ipc_plat_ready_destroy(server->ready);
    server->ready = NULL;
}
