/*
 * The internal platform contract: everything the core needs from the OS.
 * The portable core files (ipc.c, ipc_stream.c, ipc_client.c, ...; see
 * docs/design.md) hold the protocol logic (handshake, framing, slot table,
 * retries);
 * ipc_posix.c (Unix-domain sockets, pthreads) and ipc_win32.c (named pipes,
 * Win32 threads) implement this file and nothing else. Not part of the
 * public API.
 *
 * Conventions: functions that can fail return an ipc_result and fill `err`
 * (which may be NULL) through ipc__fail(). Byte streams: a connection is a
 * reliable, ordered byte stream in both directions; packet boundaries are
 * the protocol's business, not the transport's.
 */
#ifndef IPCFAST_IPC_PLATFORM_H
#define IPCFAST_IPC_PLATFORM_H

#include "ipc.h"

#include <stdarg.h>

/* Failures are reported through ipc__fail() and diagnostics through
 * ipc__log(), declared in ipc_error.h. */
#include "ipc_error.h"

/* ---- time, threads, locks ---------------------------------------------- */

/* Monotonic milliseconds. */
int64_t ipc_plat_now_ms(void);

typedef struct ipc_plat_thread ipc_plat_thread;
typedef struct ipc_plat_mutex ipc_plat_mutex;
typedef struct ipc_plat_cond ipc_plat_cond;

int ipc_plat_thread_start(ipc_plat_thread **thread, void (*main)(void *), void *arg,
                          ipc_error *err);
void ipc_plat_thread_join(ipc_plat_thread *thread); /* joins and frees */
/* Nonzero when called on `thread` itself. */
int ipc_plat_thread_is_current(const ipc_plat_thread *thread);

int ipc_plat_mutex_create(ipc_plat_mutex **mutex, ipc_error *err);
void ipc_plat_mutex_destroy(ipc_plat_mutex *mutex);
void ipc_plat_mutex_lock(ipc_plat_mutex *mutex);
void ipc_plat_mutex_unlock(ipc_plat_mutex *mutex);
/* Nonzero if the lock was taken. */
int ipc_plat_mutex_trylock(ipc_plat_mutex *mutex);

int ipc_plat_cond_create(ipc_plat_cond **cond, ipc_error *err);
void ipc_plat_cond_destroy(ipc_plat_cond *cond);
/* Waits at most timeout_ms (< 0: no limit); spurious wake-ups are allowed. */
void ipc_plat_cond_wait(ipc_plat_cond *cond, ipc_plat_mutex *mutex, int timeout_ms);
void ipc_plat_cond_broadcast(ipc_plat_cond *cond);
/* Wakes at least one waiter, if any waits. */
void ipc_plat_cond_signal(ipc_plat_cond *cond);

void ipc_plat_sleep_ms(int ms);

/* One process-wide lock, usable without initialisation (guards the log
 * callback). Never held while calling out. */
void ipc_plat_global_lock(void);
void ipc_plat_global_unlock(void);

/* ---- readiness signal (manual dispatch) ---------------------------------- */

/* A level-triggered "requests are pending" flag that an event loop can wait
 * on (Linux: an eventfd; other POSIX systems: a pipe's read end; Windows: a
 * manual-reset event). ipc_dispatch.c sets it without holding its lock and
 * clears it under that lock ("readiness" there), so a set and a clear may
 * run at once, and either may find the flag already in the state it makes. */
typedef struct ipc_plat_ready ipc_plat_ready;

int ipc_plat_ready_create(ipc_plat_ready **ready, ipc_error *err);
void ipc_plat_ready_destroy(ipc_plat_ready *ready);
void ipc_plat_ready_set(ipc_plat_ready *ready);
void ipc_plat_ready_clear(ipc_plat_ready *ready);
intptr_t ipc_plat_ready_handle(const ipc_plat_ready *ready);

/* ---- listening --------------------------------------------------------- */

typedef struct ipc_plat_listener ipc_plat_listener;
typedef struct ipc_plat_acceptor ipc_plat_acceptor;
typedef struct ipc_plat_conn ipc_plat_conn;

typedef struct ipc_plat_listen_params {
    int access;           /* enum ipc_access */
    uint32_t max_clients; /* Windows: pipe instance limit */
    uint32_t listeners;   /* number of acceptors that will be created */
} ipc_plat_listen_params;

/* Claims `name` and starts listening: returns only once a client could
 * connect. IPC_E_ADDRESS_IN_USE when a live server holds the name; never
 * takes it from one; two servers racing for it cannot both win. */
int ipc_plat_listen(ipc_plat_listener **listener, const char *name,
                    const ipc_plat_listen_params *params, ipc_error *err);

/* The address clients use (socket path or \\.\pipe\NAME). */
const char *ipc_plat_listener_address(const ipc_plat_listener *listener);

/* One pending accept, owned by one listener thread (Windows: one pipe
 * instance + event; POSIX: the shared socket). */
int ipc_plat_acceptor_create(ipc_plat_listener *listener, ipc_plat_acceptor **acceptor,
                             ipc_error *err);
void ipc_plat_acceptor_destroy(ipc_plat_acceptor *acceptor);

/* Blocks until a client connects, then returns it. IPC_E_CLOSED once
 * ipc_plat_listener_interrupt() was called (also if called before). Other
 * errors are per-attempt (the caller logs them and tries again). */
int ipc_plat_accept(ipc_plat_acceptor *acceptor, ipc_plat_conn **conn, ipc_error *err);

/* From any thread: makes every pending and future accept return IPC_E_CLOSED. */
void ipc_plat_listener_interrupt(ipc_plat_listener *listener);

/* Releases the name (removes the socket) and frees. Acceptors first. */
void ipc_plat_listener_close(ipc_plat_listener *listener);

/* In the child of fork(): closes the listener's descriptors without
 * removing the socket or the lock file (the parent still owns the name)
 * and frees nothing. Windows has no fork: does nothing. */
void ipc_plat_listener_forget(ipc_plat_listener *listener);

/* ---- connections --------------------------------------------------------- */

/* One connection attempt (the caller loops within its budget). Returns
 * IPC_E_NOT_FOUND or IPC_E_BUSY for the cases worth retrying; Windows may
 * wait for a busy pipe up to timeout_ms inside. */
int ipc_plat_connect(ipc_plat_conn **conn, const char *name, int timeout_ms, ipc_error *err);

/* After a connection attempt found nothing listening: what the name's
 * owner record says (POSIX: the pid in the lock file; docs/protocol.md
 * 2.1). Never takes the lock. */
enum ipc_plat_owner {
    IPC_PLAT_OWNER_NONE = 0,   /* no owner, or a dead one: nothing is starting */
    IPC_PLAT_OWNER_ALIVE = 1,  /* a live process owns the name: starting */
    IPC_PLAT_OWNER_UNKNOWN = 2 /* cannot tell (Windows; an owner not recorded yet) */
};
int ipc_plat_name_owner(const char *name);

/* Client side, before anything is sent: IPC_OK if the server at the other
 * end runs as a user that `policy` (enum ipc_server_user, with `uid` for
 * IPC_SERVER_USER_UID) accepts for `name`; else IPC_E_ACCESS_DENIED with a
 * message naming the server's user. */
int ipc_plat_check_server_user(ipc_plat_conn *conn, const char *name, int policy, uint32_t uid,
                               ipc_error *err);

/* Reads what is available, at least 1 byte, into buf. Waits at most
 * timeout_ms (< 0: no limit; server threads pass IPC_WAKE_INTERVAL_MS).
 * IPC_OK with *got > 0; IPC_E_TIMEOUT if nothing came; IPC_E_CLOSED when the
 * peer closed or the connection was interrupted. */
int ipc_plat_read(ipc_plat_conn *conn, void *buf, size_t capacity, size_t *got, int timeout_ms,
                  ipc_error *err);

typedef struct ipc_plat_buf {
    const void *data;
    size_t size;
} ipc_plat_buf;

/* Writes all parts in order, as one message where the transport has them.
 * Waits at most timeout_ms in total (< 0: no limit) but gives up early with
 * IPC_E_CLOSED when the connection is interrupted. */
int ipc_plat_write(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count, int timeout_ms,
                   ipc_error *err);

/* Sets *same to nonzero if the peer runs as the same user as we do. */
int ipc_plat_peer_same_user(ipc_plat_conn *conn, int *same, ipc_error *err);

/* From any thread: makes blocked and future reads on conn return
 * IPC_E_CLOSED at once. With `hard`, writes too, and the peer sees the
 * connection closed now. */
void ipc_plat_conn_interrupt(ipc_plat_conn *conn, int hard);

/* Makes sure the peer can read everything we wrote before it sees the end
 * of the stream (POSIX: shutdown of the write side; Windows:
 * FlushFileBuffers, which a hard interrupt cuts short). */
void ipc_plat_conn_drain(ipc_plat_conn *conn);

/* Closes and frees, without draining (call ipc_plat_conn_drain first
 * where the last bytes written matter). */
void ipc_plat_conn_close(ipc_plat_conn *conn);

/* Nonzero once the peer closed the connection or it was interrupted;
 * never waits and consumes nothing (the shared-memory path checks it
 * between futex waits). */
int ipc_plat_conn_closed(ipc_plat_conn *conn);

/* ---- shared memory (docs/protocol.md 11) --------------------------------- */

/* How a reader that sleeps on one channel of a region is woken (the
 * channel's `seq` word, docs/protocol.md 11.4). Linux sleeps on the shared
 * word itself (futex) and leaves this empty. Windows cannot: WaitOnAddress
 * only works within one process, so each channel has an auto-reset event
 * that both processes hold (ipc_win32_shm.c). Filled when the region is
 * created or received, closed with it. */
typedef struct ipc_plat_wake {
    intptr_t event; /* Windows: the channel's event handle; 0 elsewhere */
} ipc_plat_wake;

/* The two channels of a region: the index into ipc_plat_shm.wake. */
enum { IPC_PLAT_SHM_REQUEST = 0, IPC_PLAT_SHM_RESPONSE = 1 };

/* A region both processes map. Linux: a memfd (sealed against shrinking
 * and growing) passed over the socket. Windows: a pagefile-backed section
 * that the server duplicates out of the verified client's process, with
 * one event per channel. Where the OS lacks what it needs (POSIX without
 * memfd and futex) every call that creates, maps or passes one fails, so
 * negotiation declines, and the word operations below are never reached. */
typedef struct ipc_plat_shm {
    void *base;
    size_t size;
    intptr_t handle;       /* the descriptor / section handle; -1 once closed */
    ipc_plat_wake wake[2]; /* per channel: IPC_PLAT_SHM_REQUEST, _RESPONSE */
} ipc_plat_shm;

/* Nonzero where shared-memory data paths can work. */
int ipc_plat_shm_supported(void);
/* Creates a zeroed, sealed region of `size` bytes and maps it (and, where
 * the platform needs them, the wake objects of both channels). */
int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err);
/* Maps a region received from the peer (the handle is taken over, closed
 * on failure): refuses one that is not sealed against shrinking or is
 * smaller than `size`, so the peer cannot make our accesses fault. */
int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err);
/* Closes a handle without mapping it (a mapping outlives its handle, so
 * both sides close theirs once the region is mapped and passed). */
void ipc_plat_handle_close(intptr_t handle);
/* Unmaps and closes (wake objects too); a zeroed or already released
 * region is fine. */
void ipc_plat_shm_release(ipc_plat_shm *shm);

/* Where a handle cannot ride along with the stream's bytes (Windows), the
 * client appends a record of handle values to the SHM_SETUP payload
 * (docs/protocol.md 11.2) and the server takes the region from it: the
 * record's size (0 where the descriptor is attached, POSIX) and at most
 * IPC_PLAT_SHM_RECORD_MAX. */
#define IPC_PLAT_SHM_RECORD_MAX 24
size_t ipc_plat_shm_record_size(void);
/* Client: writes the record that names `shm` (record_size bytes). */
void ipc_plat_shm_record(const ipc_plat_shm *shm, uint8_t *record);
/* Server, after the peer's identity was checked: takes the region the
 * record names out of the peer's process (access limited to what the
 * server needs), refuses one it cannot trust like ipc_plat_shm_map, and
 * maps it. Nothing is left open on failure. */
int ipc_plat_shm_import(ipc_plat_conn *conn, const uint8_t *record, size_t size, ipc_plat_shm *shm,
                        ipc_error *err);

/* Writes all parts like ipc_plat_write, with the handle attached to the
 * first byte (SCM_RIGHTS; Windows: the handle travels in the record, and
 * this is ipc_plat_write). */
int ipc_plat_write_handle(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count,
                          intptr_t handle, int timeout_ms, ipc_error *err);
/* From now on (on = 1) reads keep a handle that arrives with the data,
 * close-on-exec, instead of letting the kernel drop it; one is kept, an
 * older one is closed. */
void ipc_plat_conn_accept_handles(ipc_plat_conn *conn, int on);
/* Hands over the kept handle (-1: none). */
intptr_t ipc_plat_conn_take_handle(ipc_plat_conn *conn);
/* From then on ipc_plat_conn_interrupt also wakes the waiters of `word`
 * through `wake` (the channel the connection's thread sleeps on), after
 * the socket is shut, so a stop reaches a shared-memory wait at once.
 * NULL, NULL: no more. `wake` must stay valid until the connection is
 * closed (Windows keeps its own copy of the event). */
void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *conn, ipc_plat_wake *wake, uint32_t *word);
/* Nonzero once ipc_plat_conn_interrupt was called; no system call, so a
 * waiter can look just before it sleeps (a wake-up sent while it was busy
 * would otherwise be lost until its next liveness check). */
int ipc_plat_conn_interrupted(ipc_plat_conn *conn);

/* Shared 32-bit words: sequentially consistent load and store, a wait
 * that returns when *word != expected, a wake-up, or after timeout_ms
 * (spurious returns are allowed), and the wake of every waiter. The words
 * live in memory shared between processes (Linux: a futex without the
 * PRIVATE flag; Windows: the channel's event in `wake`). */
uint32_t ipc_plat_word_load(const uint32_t *word);
void ipc_plat_word_store(uint32_t *word, uint32_t value);
/* Sets *word to desired if it holds expected (sequentially consistent);
 * nonzero if it did. */
int ipc_plat_word_swap_if(uint32_t *word, uint32_t expected, uint32_t desired);
void ipc_plat_word_wait(ipc_plat_wake *wake, uint32_t *word, uint32_t expected, int timeout_ms);
void ipc_plat_word_wake(ipc_plat_wake *wake, uint32_t *word);
/* The CPU this thread runs on, or -1 if unknown; how many CPUs this
 * process may run on (at least 1); a spin-loop pause; monotonic
 * microseconds. */
int ipc_plat_current_cpu(void);
int ipc_plat_cpus_available(void);
void ipc_plat_cpu_relax(void);
int64_t ipc_plat_now_us(void);

#endif /* IPCFAST_IPC_PLATFORM_H */
