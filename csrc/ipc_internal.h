/*
 * What the core files share: the packet stream, the server's structures,
 * the packet-family hook the server node plugs into, and the helpers that
 * answer calls. Not part of the public API; docs/design.md explains who
 * owns what and which lock guards it.
 *
 * Layers, each using only those above it:
 *   ipc_error.c, ipc_log.c   errors, result names, the log callback
 *   ipc_codec.c              wire format over buffers (no I/O)
 *   ipc_stream.c             buffered packet stream over a platform conn
 *   ipc_dispatch.c           answering calls; thread and manual dispatch
 *   ipc.c                    server core: slots, threads, handshake,
 *                            request loop, start and stop
 *   ipc_server_node.c        server-node commands, a packet family on top
 *                            of the request loop; ipc_server_open
 *   ipc_client.c             the client
 *   ipc_compat.c             the original single-header API
 */
#ifndef IPCFAST_IPC_INTERNAL_H
#define IPCFAST_IPC_INTERNAL_H

#include "ipc_platform.h"

/* Prefix of ERROR packets that the transport itself sends when it refuses a
 * request as too large, so the client can report IPC_E_TOO_LARGE rather than
 * a handler failure (docs/protocol.md). */
#define IPC__TOO_LARGE_PREFIX "ipcfast: too large: "
/* An ERROR a server sends just before it closes for a protocol error
 * (docs/protocol.md 6.2): the client reports IPC_E_PROTOCOL. */
#define IPC__PROTOCOL_ERROR_PREFIX "ipcfast: protocol error: "
/* A failure text is an explanation: ipc_call_fail sends at most its first
 * 64 KiB (docs/protocol.md 5). */
#define IPC__MAX_ERROR_TEXT (64u * 1024u)

/* ---- time budgets (ipc_stream.c) ---------------------------------------- */

/* The absolute deadline of a budget: -1 (never) for timeout_ms < 0. */
int64_t ipc__deadline_after(int timeout_ms);
/* Milliseconds left until deadline: -1 for no deadline, 0 once passed. */
int ipc__remaining_ms(int64_t deadline);

/* ---- buffered packet stream (ipc_stream.c) ------------------------------ */

/* Read buffers start at this size and shrink back to it after a message
 * larger than IPC__STREAM_KEEP_CAPACITY was consumed. */
#define IPC__STREAM_INITIAL_CAPACITY (64u * 1024u)
#define IPC__STREAM_KEEP_CAPACITY (8u * 1024u * 1024u)

/* Unread bytes live in buf[start, end). A packet handed out by
 * ipc__stream_read_packet stays in place (no copy) until the next read;
 * the byte after its payload is temporarily replaced by a NUL terminator. */
typedef struct ipc_stream {
    ipc_plat_conn *conn;
    uint8_t *buf;
    size_t capacity;
    size_t start;
    size_t end;
    size_t packet_size; /* bytes of the packet handed out, 0 if none */
    uint8_t saved_byte; /* what the NUL terminator replaced */
} ipc_stream;

typedef struct ipc_packet {
    ipc_packet_header header;
    uint8_t *payload; /* NUL-terminated, valid until the next read */
    ipc_verdict verdict;
} ipc_packet;

/* Frees the buffer (not the connection). */
void ipc__stream_free(ipc_stream *s);
/* Reads until at least `total` unread bytes are buffered. Waits in slices of
 * at most `slice_ms` (< 0: the whole remaining time) so server threads wake
 * regularly; gives up with IPC_E_TIMEOUT at `deadline` (< 0: never). */
int ipc__stream_fill(ipc_stream *s, size_t total, int64_t deadline, int slice_ms, ipc_error *err);
/* Reads one whole packet. On a bad header returns IPC_E_PROTOCOL or
 * IPC_E_TOO_LARGE with packet->verdict (and header fields) set, having
 * allocated nothing for the payload. */
int ipc__stream_read_packet(ipc_stream *s, uint32_t max_message, uint8_t max_version,
                            int64_t deadline, int slice_ms, ipc_packet *packet, ipc_error *err);
/* The client's zero-copy receive: ipc__stream_read_header parses the next
 * packet's header (the previous packet consumed) without waiting for its
 * payload; ipc__stream_take then drops the header and moves the payload
 * bytes already buffered, at most `size`, into `out` (returns how many);
 * the rest is read from the connection by the caller. */
int ipc__stream_read_header(ipc_stream *s, uint32_t max_message, uint8_t max_version,
                            int64_t deadline, int slice_ms, ipc_packet *packet, ipc_error *err);
size_t ipc__stream_take(ipc_stream *s, const ipc_packet_header *header, uint8_t *out, size_t size);
/* Writes a header and a payload made of a prefix and a body, in one write. */
int ipc__write_packet_parts(ipc_plat_conn *conn, uint8_t type, const void *prefix,
                            size_t prefix_size, const void *body, size_t body_size, int timeout_ms,
                            ipc_error *err);

/* A data path: how one server connection reads and writes packets. Two
 * tables exist, chosen per connection after the handshake: the socket
 * stream above and the shared-memory path (ipc_shm.c, issue 15); the
 * request loop does not know which one runs. */
typedef struct ipc_datapath_ops {
    int (*read_packet)(void *path, uint32_t max_message, uint8_t max_version, int slice_ms,
                       ipc_packet *packet, ipc_error *err);
    int (*write_packet)(void *path, uint8_t type, const void *prefix, size_t prefix_size,
                        const void *body, size_t body_size, int timeout_ms, ipc_error *err);
} ipc_datapath_ops;

/* The socket stream as a data path; `path` is an ipc_stream. */
extern const ipc_datapath_ops ipc__stream_datapath;

/* ---- the shared-memory data path (ipc_shm.c) ---------------------------- */

/* One side of a shared-memory connection (docs/protocol.md 11.3): the
 * mapped region, which channel we read and which we write, and the socket
 * stream beside it (large messages and liveness). The region is the
 * peer's to scribble on: everything read from it is read once into a
 * local and checked. */
typedef struct ipc_shm_link {
    ipc_plat_shm region;
    ipc_stream *stream; /* the connection's socket stream */
    uint32_t slot_size;
    uint32_t *in;  /* header of the channel we read */
    uint32_t *out; /* header of the channel we write */
    uint8_t *in_data;
    uint8_t *out_data;
    ipc_plat_wake *in_wake;  /* how we sleep on `in` (region.wake[...]) */
    ipc_plat_wake *out_wake; /* how we wake the peer's reader of `out` */
    uint32_t in_seen;        /* last sequence number taken from `in` */
    uint32_t out_sent;       /* last sequence number published on `out` */
    int spin_us;
    int wakes_on_interrupt; /* server: interrupting the socket wakes us */
    uint8_t *copy;          /* private copy of the last message read */
    size_t copy_capacity;
    /* A packet type whose payload ipc__shm_read hands out in place, in the
     * slot, instead of copying it (0: none): for owners that copy it at once
     * themselves (ipc_server_options.shm_requests_in_place,
     * ipc_client_options.shm_responses_in_place). */
    uint8_t lend_type;
    /* Server links: how many of the server's threads spin right now, shared
     * by its links, and how many may (see spin_for_message); NULL: no
     * limit (a client has one thread per link). */
    uint32_t *spinners;
    uint32_t max_spinners;
} ipc_shm_link;

/* The shared-memory data path; `path` is an ipc_shm_link. */
extern const ipc_datapath_ops ipc__shm_datapath;

/* Client: creates a region, sends SHM_SETUP with it and reads the
 * server's answer. IPC_OK with *link set (accepted) or NULL (declined);
 * another result is a failure of the connection. */
int ipc__shm_offer(ipc_stream *stream, uint32_t slot_size, int spin_us, uint8_t version,
                   uint32_t max_message, int64_t deadline, ipc_shm_link **link, ipc_error *err);
/* Server: answers a SHM_SETUP packet. IPC_OK with *link set (accepted, the
 * caller switches its data path) or NULL (declined, SHM_DECLINE sent);
 * IPC_E_PROTOCOL for a malformed setup (err says why). `allowed` is 0
 * when this server declines every offer. */
int ipc__shm_accept(ipc_stream *stream, const ipc_packet *packet, int allowed, int spin_us,
                    ipc_shm_link **link, ipc_error *err);
/* Waits for the next message until deadline (< 0: none), watching the
 * socket; hands it out like ipc__stream_read_packet: a private copy with a
 * NUL after it, except a payload of link->lend_type, which points into the
 * slot (no terminator; the peer may change it at any time). */
int ipc__shm_read(ipc_shm_link *link, uint32_t max_message, uint8_t max_version, int64_t deadline,
                  ipc_packet *packet, ipc_error *err);
/* The client's zero-copy receive: a RESPONSE in the slot that fits
 * `capacity` is copied straight into `out` (packet->payload == out, no
 * terminator), anything else is handed out like ipc__shm_read; a message
 * announced on the socket sets *on_socket (header.type set) and is left for
 * the caller to read there. */
int ipc__shm_read_into(ipc_shm_link *link, uint32_t max_message, int64_t deadline, uint8_t *out,
                       size_t capacity, ipc_packet *packet, int *on_socket, ipc_error *err);
/* Waits for the next message without taking it: IPC_OK once one is there,
 * IPC_E_TIMEOUT at the deadline (nothing consumed: the wait may resume),
 * IPC_E_CLOSED when the socket says the peer is gone. */
int ipc__shm_wait(ipc_shm_link *link, int64_t deadline, ipc_error *err);
int ipc__shm_write(ipc_shm_link *link, uint8_t type, const void *prefix, size_t prefix_size,
                   const void *body, size_t body_size, int timeout_ms, ipc_error *err);
void ipc__shm_free(ipc_shm_link *link);

/* ---- server structures (ipc.c) ------------------------------------------ */

typedef struct ipc_connection ipc_connection;
typedef struct ipc_packet_family ipc_packet_family;

enum ipc__slot_state {
    IPC__SLOT_FREE,     /* never used, or its thread was joined */
    IPC__SLOT_RESERVED, /* a listener is accepting into it */
    IPC__SLOT_RUNNING,  /* a connection thread owns it */
    IPC__SLOT_DONE      /* the thread finished; join before reuse */
};

typedef struct ipc_slot {
    ipc_server_t *server;
    uint32_t index;
    int state;               /* guarded by server->lock */
    ipc_plat_thread *thread; /* guarded by server->lock */
    ipc_plat_conn *conn;     /* guarded by server->lock while RUNNING */
} ipc_slot;

typedef struct ipc_listener_thread {
    ipc_server_t *server;
    ipc_plat_acceptor *acceptor;
    ipc_plat_thread *thread;
} ipc_listener_thread;

struct ipc_server_t {
    ipc_server_options options;
    ipc_handler_fn handler;
    void *user_data;
    /* Packets beyond REQUEST (the server node), or NULL; fixed at open. */
    const ipc_packet_family *family;
    void *family_state; /* the family's per-server state */
    /* What a wrapper (the original API) hangs on the server; freed last. */
    void *attached;
    void (*attached_free)(void *attached);

    ipc_plat_listener *listener;
    ipc_listener_thread *listeners;
    uint32_t listener_count;

    ipc_plat_mutex *lock;
    ipc_plat_cond *changed; /* a slot changed state, or stopping was set */
    ipc_slot *slots;
    int stopping;

    /* The queue of calls waiting for ipc_server_next_call (ipc_dispatch.c),
     * oldest first, guarded by lock; `ready` is set while it is not empty.
     * NULL `queued`: this server has no queue. */
    ipc_call *queue_head;
    ipc_call *queue_tail;
    ipc_plat_cond *queued;
    ipc_plat_ready *ready;
    /* `ready` is set outside `lock` (ipc_dispatch.c, "readiness"). Sets
     * decided (under lock) and made (atomic, outside it), and the count
     * made at the last clear (under lock). */
    uint32_t announces_begun;
    uint32_t announces_done;
    uint32_t announces_cleared;

    /* Shared-memory links: threads spinning now, and the most that may
     * (the CPUs this process may use; see ipc_shm.c, spin_for_message). */
    uint32_t shm_spinners;
    uint32_t shm_max_spinners;
};

/* State of one connection, owned by its thread. */
struct ipc_connection {
    ipc_server_t *server;
    ipc_slot *slot;
    ipc_stream stream;
    const ipc_datapath_ops *path; /* reads and writes go through it */
    void *path_state;             /* &stream for the socket stream */
    ipc_shm_link *shm;            /* the shared-memory path once accepted */
    uint8_t version;
    uint8_t *scratch; /* ipc_call_buffer */
    size_t scratch_capacity;
    int write_failed;    /* guarded by the family's write lock if any */
    int refused;         /* closed for a bad packet: do not drain */
    ipc_plat_cond *done; /* queued servers: our queued call finished */
    void *family_state;  /* the family's per-connection state */
};

/* What every call carries. A packet family may allocate a larger struct
 * that starts with this one (the node's commands do). */
struct ipc_call {
    ipc_connection *connection;
    int type;     /* IPC_PACKET_REQUEST or IPC_PACKET_COMMAND */
    int answered; /* guarded by the family's write lock if any */
    /* Queued calls only; guarded by the server's lock. */
    ipc_call *next;
    const uint8_t *request;
    size_t size;
    int finished;
    int abandoned; /* finished by stop, unanswered */
    int taken;     /* handed out by ipc_server_next_call */
};

/* ---- packet families: what sits on top of the request loop -------------- */

/* What a family's on_packet tells the request loop. */
enum ipc__packet_verdict {
    IPC__PACKET_PASS, /* not the family's: the loop handles it */
    IPC__PACKET_KEEP, /* handled; read the next packet */
    IPC__PACKET_CLOSE /* handled; close the connection */
};

/* Hooks a packet family (the server node) gives the server core, nng's
 * ops-table style: the core calls them at fixed points and never names the
 * family. Every hook may be NULL. Hooks run on the connection's thread
 * unless said otherwise. */
struct ipc_packet_family {
    const char *name;
    /* The family's calls go through the ipc_server_next_call queue. */
    int uses_queue;
    int (*server_init)(ipc_server_t *server, ipc_error *err);
    void (*server_free)(ipc_server_t *server);
    int (*connection_open)(ipc_connection *c, ipc_error *err);
    void (*connection_close)(ipc_connection *c);
    /* Sees every packet first. */
    int (*on_packet)(ipc_connection *c, const ipc_packet *packet);
    /* The client is gone or the server stops: end what is in flight. */
    void (*on_disconnect)(ipc_connection *c);
    /* Serialize writes when application threads write on their own. */
    void (*lock_writes)(ipc_connection *c);
    void (*unlock_writes)(ipc_connection *c);
    /* ipc_call_finish of one of the family's calls left it unanswered
     * (any application thread). */
    void (*finish_unanswered)(ipc_call *call);
    /* Stop ends a queued call of the family's; the server lock is held. */
    void (*abandon_locked)(ipc_server_t *server, ipc_call *call);
};

/* Opens a server with an optional packet family (ipc_server_open picks
 * it); NULL family: requests only. */
int ipc__server_open(ipc_server_t **out, const char *name, const ipc_server_options *options,
                     ipc_handler_fn handler, void *user_data, const ipc_packet_family *family,
                     ipc_error *err);
/* Tells the client why its packet was refused (r: IPC_E_TOO_LARGE,
 * IPC_E_PROTOCOL with err's text, or another code for a packet type this
 * server does not take); the caller then closes the connection. */
void ipc__refuse_packet(ipc_connection *c, const ipc_packet *p, int r, const ipc_error *err);
/* One pointer a wrapper (the original API) may hang on a server, freed
 * with `free_fn` when the server is. */
void ipc__server_attach(ipc_server_t *server, void *attached, void (*free_fn)(void *));
/* Interrupts the listener and joins its threads (ipc.c; stop uses it). */
void ipc__stop_listeners(ipc_server_t *server);
/* Frees everything of a server whose threads are all joined (ipc.c). */
void ipc__server_free(ipc_server_t *server);
/* The two steps of a connection's life after accept; the fuzzer drives
 * them over its in-memory platform. */
int ipc__server_handshake(ipc_connection *c);
void ipc__serve_requests(ipc_connection *c);
/* The request loop's reader (ipc.c): the next REQUEST off the connection,
 * after the packets the loop handles itself on the way (SHM_SETUP, a packet
 * family's). 0: the connection is over (closed, broken, or refused with an
 * explanation). */
typedef int (*ipc__request_reader)(ipc_connection *c, ipc_packet *packet);
/* Runs options.connection_handler on this connection, whose loop reads
 * with next_request (ipc_dispatch.c; handed the reader so that dispatch
 * does not call up into the request loop's file). */
void ipc__dispatch_connection(ipc_connection *c, ipc__request_reader next_request);

/* ---- answering calls and dispatch (ipc_dispatch.c) ---------------------- */

void ipc__lock_writes(ipc_connection *c);
void ipc__unlock_writes(ipc_connection *c);
/* Writes one packet on the connection; the caller holds the write lock.
 * A failed write marks the connection broken for every later write. */
int ipc__write_locked(ipc_connection *c, uint8_t type, const void *prefix, size_t prefix_size,
                      const void *body, size_t body_size, int timeout_ms, ipc_error *err);
/* Nonzero once a write on the connection failed. */
int ipc__connection_broken(ipc_connection *c);
/* Answers the call once (IPC_E_INVALID the second time). */
int ipc__send_on_call(ipc_call *call, uint8_t type, const void *data, size_t size, ipc_error *err);
/* Hands a REQUEST to the application (handler thread or manual queue) and
 * makes sure the client gets an answer. 0: the server is stopping. */
int ipc__dispatch_request(ipc_connection *c, const ipc_packet *packet);
/* Tells a thread-dispatch handler that the client is gone. */
void ipc__dispatch_farewell(ipc_connection *c);
/* Appends a call to the queue; 0 (not queued) if the server is stopping.
 * Caller holds the server's lock. *announce is set when the queue was
 * empty: the caller then calls ipc__announce_queued once it has unlocked. */
int ipc__enqueue_locked(ipc_server_t *server, ipc_call *call, int *announce);
/* Sets `ready` for a call queued by ipc__enqueue_locked. Called without
 * the server's lock (ipc_dispatch.c, "readiness"). */
void ipc__announce_queued(ipc_server_t *server);
/* Removes a call nobody has taken yet. Caller holds the server's lock. */
void ipc__unqueue_locked(ipc_server_t *server, ipc_call *call);
/* On stop: calls nobody has taken end unanswered and next_call waiters
 * wake. Caller holds the server's lock. */
void ipc__abandon_queued_locked(ipc_server_t *server);

/* ---- client attachments (ipc_client.c) ---------------------------------- */

/* One pointer a wrapper (the original API) may hang on a client. The client
 * frees it with `free_fn` when the stream moves on (every read, a failure,
 * close), because it points into the last response. */
void ipc__client_attach(ipc_client_t *client, void *attached, void (*free_fn)(void *));
void *ipc__client_attached(const ipc_client_t *client);

/* ---- the client (ipc_client.c: calls; ipc_client_connect.c: connecting) -- */

struct ipc_client_t {
    ipc_client_options options;
    /* stream.conn is NULL once closed. Only the thread in the call changes
     * it (under `lock`, which ipc_client_shutdown holds to interrupt it). */
    ipc_stream stream;
    ipc_plat_mutex *lock; /* guards in_call, waiters, shut; see above */
    ipc_plat_cond *turn;  /* broadcast when a call leaves */
    int in_call;          /* a call is in progress */
    int waiters;          /* threads waiting in ipc_client_call */
    int shut;             /* ipc_client_shutdown was called */
    int in_hook;          /* the call in progress is running the interrupt hook */
    uint8_t version;
    ipc_shm_link *shm; /* the shared-memory data path, if accepted */
    /* The link of an abandoned connection: kept mapped until
     * ipc_client_close, because a response handed out in place may still
     * be being copied by the caller whose call just ended. */
    ipc_shm_link *retired_shm;
    int awaiting;        /* shm: a request was sent, its answer not read */
    char *closed_reason; /* why the connection was abandoned */
    /* A wrapper's state about the last response (ipc__client_attach). */
    void *attached;
    void (*attached_free)(void *attached);
};

/* Nonzero when the embedder's interrupt hook asks to stop waiting. */
int ipc__client_interrupted(const ipc_client_t *client);
/* ipc__stream_fill in slices of IPC_INTERRUPT_SLICE_MS, the hook between. */
int ipc__client_fill(ipc_client_t *client, size_t total, int64_t deadline, ipc_error *err);

#endif
