/*
 * ipcfast: fast, robust request/response IPC between processes on one machine.
 *
 * Transport: Unix-domain sockets on Linux/macOS, named pipes on Windows.
 * Standalone C99; no dependency beyond the OS (pthreads / advapi32).
 * Vendor it by copying csrc/ and compiling every .c file in csrc/: each
 * platform file compiles to nothing on the other platforms.
 *
 * Three layers, all declared here:
 *   1. The codec: sans-I/O functions over byte buffers (handshake, packet
 *      headers) that the transport uses and that tests and fuzzers call.
 *   2. The binary-safe API: ipc_server_open / ipc_client_open /
 *      ipc_client_request with explicit options, error codes and messages.
 *   3. The original single-header API (ipc_server_start, ipc_client_send,
 *      ...), kept as thin wrappers so code written against it compiles
 *      unchanged.
 *
 * Errors: every fallible call returns an ipc_result (IPC_OK == 0) and, when
 * given a non-NULL ipc_error, fills it with the code, the OS error number
 * (errno or GetLastError(), 0 if none) and a heap-allocated message that
 * says what happened and what to do. Release it with ipc_error_clear().
 * Nothing is printed: diagnostics go to the log callback (ipc_set_log_handler).
 *
 * Wire protocol v1 is specified byte for byte in docs/protocol.md.
 */
#ifndef IPCFAST_IPC_H
#define IPCFAST_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IPCFAST_VERSION "0.1.0"

/* ---- constants ------------------------------------------------------- */

#define IPC_PROTOCOL_VERSION 1 /* packet version spoken by default */
/* Packet version 2 adds the shared-memory data path (docs/protocol.md 11):
 * a peer speaks it only when its `shm` option is set. */
#define IPC_PROTOCOL_VERSION_SHM 2
#define IPC_HANDSHAKE_SIZE 8         /* handshake value, first byte 0x00 */
#define IPC_HANDSHAKE_REPLY_XOR 0x5A /* server reply = client value ^ 0x5A */
#define IPC_FOREIGN_REPLY 0xFF       /* sent to a client whose first byte is not 0x00 */
#define IPC_MAX_HEADER_SIZE 6        /* type + version + 4-byte length */
#define IPC_DEFAULT_MAX_CLIENTS 32
#define IPC_DEFAULT_LISTENERS 1
#define IPC_DEFAULT_MAX_MESSAGE (64u * 1024u * 1024u)
#define IPC_DEFAULT_HANDSHAKE_TIMEOUT_MS 5000
#define IPC_WAKE_INTERVAL_MS 500   /* blocked reads wake at least this often */
#define IPC_NOT_FOUND_GRACE_MS 250 /* Windows: how long "not found" is retried */

/* The handshake value used when none is given: the same 8 bytes the Python
 * layer derives with key=None (0x00 + SHA-256("ipcfast\0" 0x01)[0:7], see
 * docs/protocol.md), so C programs and Python tools meet by default. */
extern const uint8_t IPC_DEFAULT_HANDSHAKE[IPC_HANDSHAKE_SIZE];

/* Packet types: bits 0-5 of the type byte. */
enum ipc_packet_type {
    IPC_PACKET_REQUEST = 1,
    IPC_PACKET_RESPONSE = 2,
    IPC_PACKET_ERROR = 3,   /* the handler failed; payload is UTF-8 text */
    IPC_PACKET_COMMAND = 4, /* server node packets (docs/protocol.md) */
    IPC_PACKET_CONSOLE_WRITE = 5,
    IPC_PACKET_EXIT = 6,
    IPC_PACKET_CANCEL = 7,
    /* Version 2 and above only (docs/protocol.md 11). */
    IPC_PACKET_SHM_SETUP = 8,   /* client -> server: region offer, descriptor attached */
    IPC_PACKET_SHM_ACCEPT = 9,  /* server -> client: the data path moves to the region */
    IPC_PACKET_SHM_DECLINE = 10 /* server -> client: it stays on the socket; UTF-8 why */
};
#define IPC_TYPE_MASK 0x3Fu
#define IPC_TYPE_EXTENDED 0x40u /* a version byte follows the type byte */
#define IPC_TYPE_RESERVED 0x80u /* must be 0 */

/* ---- results and errors ---------------------------------------------- */

/* Every result code, once: XX(name, value, meaning). The enum below and
 * ipc_result_name are generated from this list (libuv's UV_ERRNO_MAP
 * pattern), so adding a code is one line. The values are on the wire and
 * in the Python layer: never renumber. */
#define IPC_RESULT_MAP(XX)                                                   \
    XX(IPC_OK, 0, "success")                                                 \
    XX(IPC_E_INVALID, 1, "a bad argument, or a call in the wrong state")     \
    XX(IPC_E_NAME_TOO_LONG, 2, "the name does not fit the platform's limit") \
    XX(IPC_E_ADDRESS_IN_USE, 3, "a live server already serves this name")    \
    XX(IPC_E_ACCESS_DENIED, 4, "permissions, or an unsafe socket directory") \
    XX(IPC_E_NOT_FOUND, 5, "no server is listening under this name")         \
    XX(IPC_E_BUSY, 6, "the server exists but has no free slot")              \
    XX(IPC_E_TIMEOUT, 7, "the operation's time budget ran out")              \
    XX(IPC_E_CLOSED, 8, "the peer closed the connection")                    \
    XX(IPC_E_HANDSHAKE, 9, "the peer refused or failed the handshake")       \
    XX(IPC_E_TOO_LARGE, 10, "a message above max_message")                   \
    XX(IPC_E_PROTOCOL, 11, "malformed or unexpected bytes on the wire")      \
    XX(IPC_E_REMOTE, 12, "the server's handler failed (ERROR packet)")       \
    XX(IPC_E_NO_MEMORY, 13, "out of memory")                                 \
    XX(IPC_E_IN_USE, 14, "a client used from two threads at once")           \
    XX(IPC_E_SYSTEM, 15, "another OS failure; see system_error")             \
    XX(IPC_E_INTERRUPTED, 16, "the client's interrupt hook ended the wait")

/* C99 allows the trailing comma the expansion leaves. */
#define IPC__RESULT_ENUM(name, value, meaning) name = value,
typedef enum ipc_result { IPC_RESULT_MAP(IPC__RESULT_ENUM) } ipc_result;
#undef IPC__RESULT_ENUM

typedef struct ipc_error {
    int code;         /* an ipc_result */
    int system_error; /* errno / GetLastError() behind it, 0 if none */
    char *message;    /* heap-allocated, NUL-terminated; NULL if none */
} ipc_error;

/* Frees err->message and resets the struct to IPC_OK. NULL is allowed. */
void ipc_error_clear(ipc_error *err);

/* A stable name for a result code ("IPC_E_TIMEOUT"); never NULL. */
const char *ipc_result_name(int code);

/* ---- logging ----------------------------------------------------------- */

enum ipc_log_level {
    IPC_LOG_DEBUG = 10,
    IPC_LOG_INFO = 20,
    IPC_LOG_WARNING = 30,
    IPC_LOG_ERROR = 40
};

/* Called from any thread, possibly several at once. The message is only
 * valid during the call. */
typedef void (*ipc_log_fn)(void *user_data, int level, const char *message);

/* Installs the process-wide log callback (NULL: discard, the default).
 * May be called at any time; a message already being delivered on another
 * thread still reaches the previous callback, with its own user_data. */
void ipc_set_log_handler(ipc_log_fn fn, void *user_data);

/* ---- codec: sans-I/O handshake and packet headers ---------------------- */

/* Verdict of parsing bytes received so far. */
/* Every verdict, once: XX(name, value, meaning); generates the enum and
 * ipc_verdict_name. The values are shared with the Python codec. */
#define IPC_VERDICT_MAP(XX)                                                       \
    XX(IPC_VERDICT_OK, 0, "the bytes are complete and valid")                     \
    XX(IPC_VERDICT_NEED_MORE, 1, "not enough bytes yet; nothing is wrong")        \
    XX(IPC_VERDICT_FOREIGN, 2, "handshake does not start with 0x00")              \
    XX(IPC_VERDICT_MISMATCH, 3, "handshake value differs")                        \
    XX(IPC_VERDICT_RESERVED_BIT, 4, "bit 7 of the type byte is set")              \
    XX(IPC_VERDICT_UNKNOWN_TYPE, 5, "type 0 or above IPC_PACKET_CANCEL")          \
    XX(IPC_VERDICT_BAD_VERSION, 6, "packet/handshake version 0 or above allowed") \
    XX(IPC_VERDICT_TOO_LARGE, 7, "length above max_message")

#define IPC__VERDICT_ENUM(name, value, meaning) name = value,
typedef enum ipc_verdict { IPC_VERDICT_MAP(IPC__VERDICT_ENUM) } ipc_verdict;
#undef IPC__VERDICT_ENUM

/* A stable name for a verdict ("IPC_VERDICT_TOO_LARGE"); never NULL. */
const char *ipc_verdict_name(int verdict);

typedef struct ipc_packet_header {
    uint8_t type;         /* ipc_packet_type */
    uint8_t version;      /* from the extended header, else 0 */
    uint32_t length;      /* payload length */
    uint32_t header_size; /* 5, or 6 with the extended header */
} ipc_packet_header;

/* Writes the client's handshake (value, then version): 9 bytes. */
size_t ipc_handshake_encode_request(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                    const uint8_t value[IPC_HANDSHAKE_SIZE], uint8_t version);

/* Server side: checks the client's handshake bytes received so far against
 * the expected value. FOREIGN is decided from the first byte alone; OK sets
 * *client_version (1..255). Version 0 is BAD_VERSION. */
ipc_verdict ipc_handshake_check_request(const uint8_t *data, size_t size,
                                        const uint8_t expected[IPC_HANDSHAKE_SIZE],
                                        uint8_t *client_version);

/* The server's reply to a client value: value ^ 0x5A byte-wise (never equal
 * to the value, so an echo cannot pass), then the server's version. */
size_t ipc_handshake_encode_reply(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                  const uint8_t client_value[IPC_HANDSHAKE_SIZE], uint8_t version);

/* Client side: checks the server's reply bytes received so far. OK sets
 * *server_version. A first byte of 0xFF is FOREIGN (the server took us for
 * a foreign client). */
ipc_verdict ipc_handshake_check_reply(const uint8_t *data, size_t size,
                                      const uint8_t client_value[IPC_HANDSHAKE_SIZE],
                                      uint8_t *server_version);

/* Writes a packet header; version 0 writes the short form (no version byte),
 * any other value the extended form. Returns its size (5 or 6). */
size_t ipc_packet_header_encode(uint8_t out[IPC_MAX_HEADER_SIZE], uint8_t type, uint32_t length,
                                uint8_t version);

/* The SHM_SETUP payload (docs/protocol.md 11.2): 16 bytes. */
#define IPC_SHM_SETUP_SIZE 16
#define IPC_SHM_LAYOUT 1        /* the region layout of 11.3 */
#define IPC_SHM_HEADER_SIZE 192 /* region header + two channel headers */
#define IPC_SHM_MIN_SLOT 64u
#define IPC_SHM_MAX_SLOT (64u * 1024u * 1024u)
#define IPC_SHM_DEFAULT_SLOT (2u * 1024u * 1024u) /* see docs/design.md, "data paths" */
#define IPC_DEFAULT_SPIN_US 20                    /* see docs/design.md, "data paths" */

typedef struct ipc_shm_setup {
    uint32_t layout;      /* IPC_SHM_LAYOUT */
    uint32_t region_size; /* IPC_SHM_HEADER_SIZE + 2 * slot_size */
    uint32_t slot_size;   /* payload bytes per direction */
    uint32_t flags;       /* 0; other values are refused */
} ipc_shm_setup;

/* The exact region size for a slot size (0 if the slot size is outside
 * IPC_SHM_MIN_SLOT..IPC_SHM_MAX_SLOT). */
uint32_t ipc_shm_region_size(uint32_t slot_size);
/* Writes the 16-byte SHM_SETUP payload. */
size_t ipc_shm_setup_encode(uint8_t out[IPC_SHM_SETUP_SIZE], const ipc_shm_setup *setup);
/* Checks a SHM_SETUP payload: IPC_OK, or IPC_E_PROTOCOL with the reason
 * in err for a wrong size, an unknown layout or flags, a slot size out of
 * range, or a region size that is not ipc_shm_region_size(slot_size). */
int ipc_shm_setup_decode(const uint8_t *payload, size_t size, ipc_shm_setup *setup, ipc_error *err);

/* Parses a header from the bytes received so far. max_version is the
 * negotiated version: an extended header must carry 1..max_version, and
 * the types SHM_SETUP..SHM_DECLINE exist only from version 2 on. A
 * length above max_message is TOO_LARGE and header->length still holds it,
 * so the caller can say how large (nothing is allocated here). */
ipc_verdict ipc_packet_header_parse(const uint8_t *data, size_t size, uint32_t max_message,
                                    uint8_t max_version, ipc_packet_header *header);

/* ---- server ------------------------------------------------------------ */

typedef struct ipc_server_t ipc_server_t;
typedef struct ipc_client_t ipc_client_t;
typedef struct ipc_call ipc_call; /* one request being handled */

enum ipc_access {
    IPC_ACCESS_USER = 0, /* only processes of the same user (checked) */
    IPC_ACCESS_WORLD = 1 /* any local user (POSIX socket mode 0666; Windows World SID) */
};

/* Called on a connection's thread for each request (request != NULL), and
 * once more with request == NULL and size 0 after the client disconnected
 * (only for clients that completed the handshake). Several connections call
 * it at once. The request bytes stay valid until the handler returns and are
 * followed by a NUL byte (not counted in size), so text requests can be used
 * as C strings (not with options.shm_requests_in_place on a shared-memory
 * connection: see there).
 *
 * The handler answers with ipc_call_respond() or ipc_call_fail(); if it
 * returns without doing either, the client receives an ERROR packet. The
 * call is only valid until the handler returns (answer from the handler's
 * thread, before returning). */
typedef void (*ipc_handler_fn)(void *user_data, ipc_call *call, const uint8_t *request,
                               size_t size);

/* Alternative to ipc_handler_fn, for bindings whose every call into C is
 * costly (a Python binding releases and retakes its interpreter lock around
 * each): the handler returns its response instead of sending it, and sets
 * *response_size. The core sends it after the handler returns, without a
 * copy, so the bytes must stay valid until the handler's next call for the
 * same connection (the disconnect call included). Returning NULL means the
 * handler answered itself (ipc_call_respond / ipc_call_fail) or, if it did
 * not, that the client gets an ERROR packet. Called with request == NULL on
 * disconnect, like ipc_handler_fn (the return value is then ignored). */
typedef const void *(*ipc_returning_handler_fn)(void *user_data, ipc_call *call,
                                                const uint8_t *request, size_t size,
                                                size_t *response_size);

/* A third way, for bindings whose every entry into their interpreter is
 * costly (a Python binding takes its interpreter lock and builds arguments
 * for each callback): the core calls it once per connection, on the
 * connection's thread after the handshake, and it runs the connection's
 * request loop itself with ipc_serve_next until that returns a negative
 * value; then it returns. Several connections run it at once. A request left
 * unanswered when it returns gets an ERROR packet. */
typedef struct ipc_serve_loop ipc_serve_loop;
typedef void (*ipc_connection_handler_fn)(void *user_data, ipc_serve_loop *loop);

/* Where requests are handled. THREAD: the handler runs on the connection's
 * thread as soon as a request is complete (several at once). MANUAL: the
 * connection threads receive and frame requests and queue them; the
 * application takes them with ipc_server_next_call on a thread of its
 * choosing (a game's or GUI's main loop) and answers them there. In MANUAL
 * mode no handler is called (disconnects are not reported) and the handler
 * given to ipc_server_open may be NULL. */
enum ipc_dispatch { IPC_DISPATCH_THREAD = 0, IPC_DISPATCH_MANUAL = 1 };

/* Server node: see options.cancel_handler. */
typedef void (*ipc_cancel_fn)(void *user_data, ipc_call *call);

typedef struct ipc_server_options {
    uint32_t max_clients;                  /* connection slots; 0: 32 */
    uint32_t listeners;                    /* parallel pending accepts; 0: 1 */
    uint32_t max_message;                  /* largest request accepted; 0: 64 MiB */
    uint32_t handshake_timeout_ms;         /* 0: 5000 */
    int access;                            /* enum ipc_access */
    uint8_t handshake[IPC_HANDSHAKE_SIZE]; /* expected value; first byte 0x00 */
    uint8_t version;                       /* packet version offered; 0: IPC_PROTOCOL_VERSION */
    /* If set, used instead of the handler given to ipc_server_open (which
     * may then be NULL). */
    ipc_returning_handler_fn returning_handler;
    /* If set, used instead of either handler (thread dispatch only; a
     * server node's REQUESTs too): see ipc_connection_handler_fn and
     * ipc_serve_next. */
    ipc_connection_handler_fn connection_handler;
    int dispatch; /* enum ipc_dispatch; 0: IPC_DISPATCH_THREAD */
    /* Nonzero: a server node (see "server node" below). COMMAND packets are
     * accepted and queued for ipc_server_next_call, whatever `dispatch` says
     * (REQUESTs still follow `dispatch`); CANCEL packets are accepted. */
    int node;
    /* Server node: called on the connection's thread when the client of a
     * command taken by ipc_server_next_call sends CANCEL or disconnects. May
     * be NULL (poll ipc_call_cancelled instead). */
    ipc_cancel_fn cancel_handler;
    /* Nonzero: accept a client's offer to move its connection's data path
     * into shared memory (docs/protocol.md 11; Linux only, elsewhere every
     * offer is declined). The server then speaks packet version 2. Off by
     * default in the C API (the Python binding turns it on). Not for
     * server nodes: they decline. */
    int shm;
    /* Shared-memory connections: how long a waiting thread spins before it
     * sleeps in the kernel, in microseconds (0: never spin). Set to
     * IPC_DEFAULT_SPIN_US by ipc_server_options_init. */
    int shm_spin_us;
    /* Nonzero: on a shared-memory connection the request handed to the
     * handler (or by ipc_server_next_call) points into the shared slot
     * itself instead of a private copy, saving one copy of every request.
     * The client can change those bytes at any moment and no NUL follows
     * them: only for handlers that copy the request before they read it, or
     * whose reading a change cannot harm (the Python binding's). The size is
     * checked against the slot as always. 0 (default): a private copy. */
    int shm_requests_in_place;
} ipc_server_options;

/* Fills defaults: 32 clients, 1 listener, 64 MiB, user access,
 * IPC_DEFAULT_HANDSHAKE, version 1. */
void ipc_server_options_init(ipc_server_options *options);

/* ---- the per-connection request loop (options.connection_handler) ---- */

/* Requests up to this size are copied into ipc_next_request.inline_data: a
 * copy of up to 4 KiB costs less than a binding's making an object over a
 * new address (about 2,400 instructions per side in the Python binding). */
#define IPC_REQUEST_INLINE_SIZE 4096

/* The request ipc_serve_next hands out, owned by the caller (a binding
 * allocates it once per connection, so that inline_data has a fixed
 * address). */
typedef struct ipc_next_request {
    /* The request, valid until the next ipc_serve_next on the loop:
     * inline_data (NUL-terminated) when it fits there, else the
     * connection's own buffer (NUL-terminated, except in the shared slot
     * with options.shm_requests_in_place: see there). */
    const uint8_t *data;
    /* Its call, until the next ipc_serve_next: ipc_call_respond,
     * ipc_call_fail and ipc_call_buffer work on it as in a handler. */
    ipc_call *call;
    uint8_t inline_data[IPC_REQUEST_INLINE_SIZE + 1];
} ipc_next_request;

/* Answers the request the loop handed out last, unless it was answered
 * already (with ipc_call_respond or ipc_call_fail), then waits for the next
 * one and fills *next. The answer: answer_type IPC_PACKET_RESPONSE sends
 * `answer` as the response (not copied; above max_message the client gets
 * an ERROR instead, as with ipc_call_respond), IPC_PACKET_ERROR sends it as
 * the failure's text (cut at the same length as ipc_call_fail's), 0 sends
 * nothing (the client then gets an ERROR, unless the call was answered).
 * The first call of a loop has nothing to answer and ignores them.
 * Returns the next request's size, or a negative value once the connection
 * is over (the client left or broke the protocol, or the server is
 * stopping): the connection handler must then return. One thread per loop:
 * the connection handler's own. */
int64_t ipc_serve_next(ipc_serve_loop *loop, int answer_type, const void *answer,
                       size_t answer_size, ipc_next_request *next);

/* Sends the response now (header and data in one write; data is not
 * copied). A response above the server's max_message is not sent: the
 * client gets an ERROR packet and this returns IPC_E_TOO_LARGE. Answering
 * twice returns IPC_E_INVALID. IPC_E_CLOSED: the client went away. */
int ipc_call_respond(ipc_call *call, const void *data, size_t size, ipc_error *err);

/* Sends an ERROR packet carrying a UTF-8 message (the client raises
 * RemoteError with it). */
int ipc_call_fail(ipc_call *call, const char *message, size_t size, ipc_error *err);

/* A per-connection scratch buffer of at least `capacity` bytes, reused
 * across requests (NULL if out of memory): build a response there, then
 * pass it to ipc_call_respond. Valid until the handler returns. */
void *ipc_call_buffer(ipc_call *call, size_t capacity);

/* Identifies the connection (slot index) the call came from. */
uint32_t ipc_call_connection(const ipc_call *call);

/* Starts a server: returns once it is listening, or fails with
 * IPC_E_NAME_TOO_LONG, IPC_E_ADDRESS_IN_USE (a live server has the name),
 * IPC_E_ACCESS_DENIED (permissions, unsafe directory), IPC_E_INVALID,
 * IPC_E_NO_MEMORY or IPC_E_SYSTEM.
 *
 * name: a plain name lives in a private per-user directory
 * ($XDG_RUNTIME_DIR/ipcfast, else $TMPDIR-or-/tmp/ipcfast-UID) on POSIX and
 * is \\.\pipe\NAME on Windows; on POSIX a name containing '/' is a socket
 * path used as is. options may be NULL (defaults). */
int ipc_server_open(ipc_server_t **server, const char *name, const ipc_server_options *options,
                    ipc_handler_fn handler, void *user_data, ipc_error *err);

/* The address clients reach: the socket path, or \\.\pipe\NAME. */
const char *ipc_server_address(const ipc_server_t *server);

/* MANUAL dispatch: takes the oldest pending request, waiting up to
 * timeout_ms for one (0: do not wait; < 0: no limit). IPC_OK: *call,
 * *request and *size describe it (request NUL-terminated as for handlers);
 * answer with ipc_call_respond / ipc_call_fail, then always end it with
 * ipc_call_finish. IPC_E_TIMEOUT: nothing pending. IPC_E_CLOSED: the server
 * is stopping. IPC_E_INVALID: the server uses neither MANUAL dispatch nor
 * options.node. */
int ipc_server_next_call(ipc_server_t *server, ipc_call **call, const uint8_t **request,
                         size_t *size, int timeout_ms, ipc_error *err);

/* ipc_server_next_call for a batch, for worker threads: first ends the
 * `finished_count` calls in `finished` (ipc_call_finish on each: the last
 * batch, answered), then waits up to timeout_ms for the first call and
 * takes every call already queued, up to `capacity`, under one lock.
 * *count says how many of calls/requests/sizes were filled; each must be
 * ended later (here, or with ipc_call_finish). Results as
 * ipc_server_next_call's. One C call per batch instead of two per call:
 * for a Python worker, one GIL hand-over per batch. */
int ipc_server_next_calls(ipc_server_t *server, ipc_call **finished, size_t finished_count,
                          ipc_call **calls, const uint8_t **requests, size_t *sizes,
                          size_t capacity, size_t *count, int timeout_ms, ipc_error *err);

/* Begins stopping without freeing: stops taking requests and wakes every
 * ipc_server_next_call waiter (they return IPC_E_CLOSED), so threads that
 * dispatch can leave before ipc_server_stop frees the server. Optional;
 * idempotent. */
void ipc_server_interrupt(ipc_server_t *server);

/* MANUAL dispatch: ends a call from ipc_server_next_call (the client gets an
 * ERROR packet if it was not answered) and hands the connection back to its
 * thread. The call and its request are invalid afterwards. Do not stop the
 * server while holding an unfinished call on the same thread. */
void ipc_call_finish(ipc_call *call);

/* MANUAL dispatch or node: something to wait on in an event loop, ready
 * while calls are pending: a file descriptor that polls readable (POSIX) or
 * an event HANDLE that is signaled (Windows). -1 when there is no queue. Do not
 * read from it or reset it: ipc_server_next_call does. It can be ready once
 * with nothing pending (a call taken while it was being announced); the
 * ipc_server_next_call that then finds nothing (IPC_E_TIMEOUT) clears it. */
intptr_t ipc_server_ready_handle(const ipc_server_t *server);

/* Stops and frees a server (from ipc_server_open or ipc_server_start):
 * stops accepting, wakes every blocked read at once, lets handlers that are
 * running finish (clients still connected after a one-second grace period
 * see the connection closed), joins every thread, closes every handle,
 * removes the socket. Must not be called from a handler. NULL is allowed. */
void ipc_server_stop(ipc_server_t *server);

/* ipc_server_stop within about timeout_ms (< 0: no limit, as
 * ipc_server_stop): running handlers get half of it to answer, then their
 * connections are closed under them, and a connection thread still inside
 * a handler at the deadline is abandoned: a warning is logged, the name is
 * released at once (a new server can start on it), and the server's memory
 * is deliberately left allocated, because the abandoned thread still uses
 * it (and the handler's user_data) when its handler returns: keep
 * user_data valid. Returns how many threads were abandoned (0: the server
 * was stopped and freed), -1 if called from a handler (nothing done). */
int ipc_server_stop_timeout(ipc_server_t *server, int timeout_ms);

/* Fork: a server belongs to the process that created it. In the child of
 * fork() the only call allowed on the parent's servers is this one (and
 * not even it is needed): it closes the child's copies of the server's
 * descriptors with close() alone (no shutdown, nothing removed from the
 * file system, no thread joined, no lock taken), so the parent keeps its
 * name, its clients and its connections. The handle is invalid afterwards;
 * the struct is leaked, since its locks may have been held by threads that
 * do not exist in the child. The same holds for ipc_client_t: the child
 * must not use the parent's connections. */
void ipc_server_forget(ipc_server_t *server);

/* ---- server node: commands for a warm process ------------------------- */

/* A server node runs commands for short-lived clients (docs/protocol.md,
 * section 10): the client sends a COMMAND (argv, working directory,
 * environment, locale), the server streams the command's output back as
 * CONSOLE_WRITE packets and ends with one EXIT packet; a CANCEL packet asks
 * it to stop the running command.
 *
 * With options.node set, the connection threads queue each COMMAND for
 * ipc_server_next_call (ipc_call_type() tells it from a REQUEST) and keep
 * reading, so a CANCEL is seen while the command runs. A node runs one
 * command at a time: a COMMAND that arrives while another one is queued or
 * running (on any connection) is answered at once with EXIT type
 * IPC_EXIT_BUSY, so that client can run the command itself. */

enum ipc_console_stream { IPC_STREAM_STDOUT = 1, IPC_STREAM_STDERR = 2 };

enum ipc_exit_type {
    IPC_EXIT_COMPLETED = 0, /* ran to its end; exit_code is its status */
    IPC_EXIT_CANCELLED = 1, /* stopped by CANCEL (or its client vanished) */
    IPC_EXIT_CRASHED = 2,   /* the command, or the server running it, failed */
    IPC_EXIT_BUSY = 3,      /* not run: the node runs another command */
    IPC_EXIT_STALE = 4,     /* not run: the node's code changed; it is exiting */
    IPC_EXIT_REFUSED = 5    /* not run: the node cannot run it (reason on stderr) */
};

/* CANCEL's payload (docs/protocol.md 10.5): the signal the client got, by
 * its traditional POSIX number on every platform. An empty CANCEL is
 * IPC_SIGNAL_INTERRUPT (Ctrl-C). A node delivers it to the command as that
 * signal; this core's node stops the command for the first four (the
 * cancel_handler is told) and ignores IPC_SIGNAL_WINDOW_CHANGED. */
enum ipc_node_signal {
    IPC_SIGNAL_HANGUP = 1,         /* SIGHUP: the client's terminal went away */
    IPC_SIGNAL_INTERRUPT = 2,      /* SIGINT: Ctrl-C */
    IPC_SIGNAL_QUIT = 3,           /* SIGQUIT: Ctrl-backslash */
    IPC_SIGNAL_TERMINATE = 15,     /* SIGTERM: kill, timeout, a CI runner */
    IPC_SIGNAL_WINDOW_CHANGED = 28 /* SIGWINCH: the terminal was resized */
};

/* Bits of ipc_command.flags: which of the client's streams are terminals. */
#define IPC_COMMAND_STDIN_TTY 0x1u
#define IPC_COMMAND_STDOUT_TTY 0x2u
#define IPC_COMMAND_STDERR_TTY 0x4u

#define IPC_EXIT_PAYLOAD_SIZE 5 /* int32 exit code, exit type byte */

/* A decoded COMMAND. Strings are NUL-terminated and contain no NUL. */
typedef struct ipc_command {
    uint32_t flags; /* IPC_COMMAND_*_TTY bits */
    uint32_t argc;
    char **argv; /* argc strings */
    char *cwd;   /* working directory */
    uint32_t envc;
    char **env;   /* envc "NAME=value" strings */
    char *locale; /* the client's LC_CTYPE locale name, may be "" */
} ipc_command;

/* Encodes a COMMAND payload into a new buffer (*out, freed with ipc_free).
 * IPC_E_INVALID: a NULL string or a count with a NULL array;
 * IPC_E_TOO_LARGE: the payload would exceed 4 GiB. */
int ipc_command_encode(const ipc_command *command, uint8_t **out, size_t *out_size, ipc_error *err);

/* Decodes a COMMAND payload into *command (free it with ipc_command_free,
 * also after a failure). IPC_E_PROTOCOL: malformed (a length past the end,
 * a NUL inside a string, bytes after the last field). */
int ipc_command_decode(const uint8_t *payload, size_t size, ipc_command *command, ipc_error *err);

/* Frees what ipc_command_decode allocated and zeroes *command. */
void ipc_command_free(ipc_command *command);

/* Frees a buffer this library allocated (ipc_command_encode). */
void ipc_free(void *buffer);

/* Decodes a CONSOLE_WRITE payload: *stream is 1 or 2, *text points into
 * payload. IPC_E_PROTOCOL: empty payload or another stream number. */
int ipc_console_write_decode(const uint8_t *payload, size_t size, int *stream, const uint8_t **text,
                             size_t *text_size, ipc_error *err);

/* Encodes / decodes an EXIT payload (IPC_EXIT_PAYLOAD_SIZE bytes). Decoding
 * accepts exit types this version does not know (treat them as crashed);
 * IPC_E_PROTOCOL: not exactly 5 bytes. */
size_t ipc_exit_encode(uint8_t out[IPC_EXIT_PAYLOAD_SIZE], int32_t exit_code, uint8_t exit_type);
int ipc_exit_decode(const uint8_t *payload, size_t size, int32_t *exit_code, uint8_t *exit_type,
                    ipc_error *err);

/* Decodes a CANCEL payload: empty (IPC_SIGNAL_INTERRUPT) or one byte, an
 * ipc_node_signal. IPC_E_PROTOCOL: longer, or a signal this list lacks. */
int ipc_cancel_decode(const uint8_t *payload, size_t size, int *signal_code, ipc_error *err);

/* The packet type of a call from ipc_server_next_call: IPC_PACKET_REQUEST
 * or IPC_PACKET_COMMAND (its payload is the encoded command). */
int ipc_call_type(const ipc_call *call);

/* Command calls: sends a CONSOLE_WRITE (stream 1 or 2). Callable from any
 * thread (writes are serialized per connection) until the call is
 * answered with ipc_call_exit or finished. IPC_E_CLOSED: the client is
 * gone (keep running or stop; the output is lost either way). */
int ipc_call_console_write(ipc_call *call, int stream, const void *text, size_t size,
                           ipc_error *err);

/* Command calls: sends the EXIT packet that ends the command; then end the
 * call with ipc_call_finish. (Finishing without it sends EXIT type
 * IPC_EXIT_CRASHED, exit code 1.) */
int ipc_call_exit(ipc_call *call, int32_t exit_code, uint8_t exit_type, ipc_error *err);

/* Command calls: nonzero once the client sent CANCEL or disconnected. */
int ipc_call_cancelled(ipc_call *call);

/* ---- client ------------------------------------------------------------ */

/* Which server a client accepts (ipc_client_options.server_user). The
 * server's user is read from the connected socket (POSIX: SO_PEERCRED /
 * getpeereid) or the pipe server's process token (Windows) before a byte is
 * sent, so an impostor that took the name first never sees a request. */
enum ipc_server_user {
    /* The default. POSIX: a plain name must be served by our own user (the
     * private directory already says so); a path name by our own user or
     * root (uid 0), so root services keep working. Windows: our own user or
     * LocalSystem. */
    IPC_SERVER_USER_DEFAULT = 0,
    IPC_SERVER_USER_ANY = 1, /* no check (any user may serve the name) */
    IPC_SERVER_USER_UID = 2  /* exactly server_uid (POSIX only) */
};
/* How often a client with an interrupt hook runs it while it waits. */
#define IPC_INTERRUPT_SLICE_MS 50

/* A client's interrupt hook: nonzero ends the wait (see below). */
typedef int (*ipc_interrupt_fn)(void *user_data);

typedef struct ipc_client_options {
    uint32_t max_message; /* largest response accepted; 0: 64 MiB */
    uint8_t handshake[IPC_HANDSHAKE_SIZE];
    uint8_t version; /* 0: IPC_PROTOCOL_VERSION */
    /* Nonzero: retry "not found" within the budget even when nothing owns
     * or is starting under the name (for a server that someone else starts
     * or restarts later). 0 (default): such a name fails at once. */
    uint8_t wait_if_not_found;
    int server_user;     /* enum ipc_server_user; 0: IPC_SERVER_USER_DEFAULT */
    uint32_t server_uid; /* the user required with IPC_SERVER_USER_UID */
    /* Optional (NULL: never called). While a call of this client (connect
     * and handshake included) waits for the server, the hook runs every
     * IPC_INTERRUPT_SLICE_MS, on the calling thread, with interrupt_data:
     * nonzero ends the call with IPC_E_INTERRUPTED and abandons the
     * connection (later calls: IPC_E_CLOSED); 0 lets it wait on, within its
     * deadline. For bindings whose signal handlers must run during a wait
     * (Python's Ctrl-C). A call that does not wait never runs it. Writes
     * wait without it (a full socket buffer toward a server that reads
     * nothing). */
    ipc_interrupt_fn interrupt_check;
    void *interrupt_data;
    /* Nonzero: after the handshake, offer the server a shared-memory data
     * path (docs/protocol.md 11). Requests and responses up to
     * shm_slot_size bytes then travel through a memory region both
     * processes map, with futex wake-ups; larger ones still use the socket,
     * which stays the liveness channel. A server that declines (or does not
     * speak version 2, like the pure-Python one) keeps the socket path.
     * Linux only; elsewhere nothing is offered. While it is active the
     * client cannot pipeline: ipc_client_write while a response is unread
     * fails with IPC_E_INVALID, which is why it is off by default here
     * (programs may pipeline); the Python binding turns it on. */
    int shm;
    uint32_t shm_slot_size; /* 0: IPC_SHM_DEFAULT_SLOT (2 MiB) */
    /* Spin budget in microseconds before sleeping (0: never spin); no spin
     * while the server last ran on our CPU. ipc_client_options_init sets
     * IPC_DEFAULT_SPIN_US. */
    int shm_spin_us;
    /* Nonzero: on a shared-memory connection a response handed out by
     * ipc_client_request, ipc_client_read or ipc_client_call (there: above
     * IPC_REPLY_INLINE_SIZE; smaller ones are copied to reply->inline_data
     * and terminated) points into the shared slot instead of the client's
     * own copy, saving one copy: the server can change those bytes at any
     * moment and no NUL follows them. For bindings that copy the response at once (the
     * Python binding). 0 (default): the client's own NUL-terminated copy. */
    int shm_responses_in_place;
} ipc_client_options;

/* Fills defaults: 64 MiB, IPC_DEFAULT_HANDSHAKE, version 1, absent names
 * answered at once, IPC_SERVER_USER_DEFAULT. */
void ipc_client_options_init(ipc_client_options *options);

/* What stands behind a name, as a client sees it (git's Simple-IPC
 * "active state"). */
enum ipc_server_state {
    IPC_STATE_LISTENING = 0,     /* a server accepts connections (it may be busy) */
    IPC_STATE_STARTING = 1,      /* a live process owns the name, not listening yet */
    IPC_STATE_NOT_LISTENING = 2, /* nothing serves or is starting under the name */
    IPC_STATE_INVALID_PATH = 3   /* the name cannot be reached (err says why) */
};

/* Tells the states apart without waiting: one connection attempt (closed at
 * once, no handshake), then, if nothing listens, the owner recorded in the
 * name's lock file (docs/protocol.md 2.1): a live process is STARTING, no
 * lock file or a dead owner is NOT_LISTENING. It never takes the lock (a
 * starting server would then fail). Windows has no lock file: a missing
 * pipe is NOT_LISTENING. Returns an ipc_server_state; err is filled for
 * INVALID_PATH only. */
int ipc_client_probe(const char *name, ipc_error *err);

/* Connects and completes the handshake within one time budget
 * (timeout_ms < 0: no limit); the budget is not reset by retries.
 * "Busy" and STARTING (see ipc_client_probe) are retried until the budget is
 * spent; NOT_LISTENING fails at once with IPC_E_NOT_FOUND unless
 * options.wait_if_not_found is set (Windows, which cannot see a starting
 * server, retries "not found" for IPC_NOT_FOUND_GRACE_MS first). On
 * failure: IPC_E_NOT_FOUND (no server: start one), IPC_E_BUSY (a server
 * exists but did not take the connection in time: retry later),
 * IPC_E_ACCESS_DENIED (the server runs as a user options.server_user does
 * not accept; the message names it; or permissions), IPC_E_HANDSHAKE (wrong
 * key, incompatible version, or refused as another user),
 * IPC_E_NAME_TOO_LONG, IPC_E_INVALID (empty name, handshake value not
 * starting with 0x00, IPC_SERVER_USER_UID on Windows), IPC_E_NO_MEMORY,
 * IPC_E_SYSTEM. options may be NULL. */
int ipc_client_open(ipc_client_t **client, const char *name, const ipc_client_options *options,
                    int timeout_ms, ipc_error *err);

/* One round trip: sends a REQUEST packet and receives the answer, within
 * timeout_ms for both (< 0: no limit). On IPC_OK, *response / *response_size
 * point into the client's buffer (followed by a NUL byte), valid until the
 * next call on this client. IPC_E_REMOTE: the handler failed, err->message
 * holds its text and the connection stays usable. IPC_E_TIMEOUT,
 * IPC_E_CLOSED, IPC_E_PROTOCOL, IPC_E_TOO_LARGE: the connection is closed,
 * later calls fail with IPC_E_CLOSED. IPC_E_IN_USE: another thread is using
 * this client right now (nothing was sent). */
int ipc_client_request(ipc_client_t *client, const void *request, size_t size,
                       const uint8_t **response, size_t *response_size, int timeout_ms,
                       ipc_error *err);

/* Responses up to this size are copied into ipc_client_reply.inline_data
 * (4 KiB: see IPC_REQUEST_INLINE_SIZE). */
#define IPC_REPLY_INLINE_SIZE 4096

/* The answer of ipc_client_call, owned by the caller and reused across
 * calls (a binding allocates it once per client). */
typedef struct ipc_client_reply {
    /* The response, NUL-terminated, valid until the client's next call:
     * inline_data when it fits there, else in the client's buffer. */
    const char *data;
    size_t size;
    ipc_error error; /* a failure; release it with ipc_error_clear */
    /* Small responses are copied here, so a binding finds them at an
     * address it knows and reads no field per call (a few bytes of memcpy
     * cost less than one field access from Python). */
    char inline_data[IPC_REPLY_INLINE_SIZE + 1];
} ipc_client_reply;

/* ipc_client_request for bindings that count every argument and every
 * field access: the same round trip, its outcome in one reply. Returns the
 * response's size (>= 0: success, the response is in reply->data, which is
 * reply->inline_data for sizes up to IPC_REPLY_INLINE_SIZE), or minus the
 * result code (reply->error says why). Unlike ipc_client_request, a second
 * thread waits its turn (with an interrupt hook: interruptibly) instead of
 * getting IPC_E_IN_USE. */
int64_t ipc_client_call(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                        ipc_client_reply *reply);

/* ---- client: zero-copy receive (issue 15) ---- */

/* ipc_client_call that receives into a buffer the caller owns: `out`, of
 * `capacity` bytes (out may be NULL when capacity is 0). On the socket path
 * the response is read from the socket straight into `out`; on the
 * shared-memory path it is copied once, from the shared slot into `out`.
 * The request is sent from `request` as it is (no copy on the socket
 * path, one into the slot on the shared-memory path); `out` may be the
 * request's own buffer. Returns:
 *   n >= 0, n <= capacity: the response is out[0..n), reply->data == out
 *     (no NUL is written after it); nothing else in out changed.
 *   n > capacity: the response did not fit. out is untouched and the
 *     response is kept, not lost: reply->data / reply->size hold it
 *     (NUL-terminated, in the client's own buffer, valid until the client's
 *     next call). The connection stays usable.
 *   -IPC_E_INVALID: reply is NULL (nothing else is reported), or client
 *     is NULL, or a NULL request or out with a nonzero size (reply->error
 *     says which); nothing was sent and the connection is unchanged;
 *   -IPC_E_REMOTE: the handler failed, reply->error.message holds its
 *     text, the connection stays usable;
 *   -IPC_E_TIMEOUT, -IPC_E_CLOSED, -IPC_E_PROTOCOL, -IPC_E_TOO_LARGE
 *     (above max_message), -IPC_E_NO_MEMORY, -IPC_E_SYSTEM: the connection
 *     is closed, later calls return -IPC_E_CLOSED;
 *   -IPC_E_INTERRUPTED: the interrupt hook ended the wait (the connection
 *     is abandoned).
 * Like ipc_client_call, a second thread waits its turn. */
int64_t ipc_client_call_into(ipc_client_t *client, const void *request, size_t size, void *out,
                             size_t capacity, int timeout_ms, ipc_client_reply *reply);

/* The two halves of ipc_client_request, for callers that pipeline or that
 * receive in a different place than they send. */
int ipc_client_write(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     ipc_error *err);
int ipc_client_read(ipc_client_t *client, const uint8_t **response, size_t *response_size,
                    int timeout_ms, ipc_error *err);

/* Packet-level access, for the server node's client side. Sends one packet
 * of a client-to-server type (REQUEST, COMMAND, CANCEL). */
int ipc_client_write_packet(ipc_client_t *client, uint8_t type, const void *data, size_t size,
                            int timeout_ms, ipc_error *err);

/* Receives the next packet of any server-to-client type (RESPONSE, ERROR,
 * CONSOLE_WRITE, EXIT) as it is: *payload stays valid until the client's
 * next read. IPC_E_TIMEOUT leaves the connection usable (the packet is
 * still coming: call again); other failures close it. */
int ipc_client_read_packet(ipc_client_t *client, uint8_t *type, const uint8_t **payload,
                           size_t *size, int timeout_ms, ipc_error *err);

/* Encodes and sends a COMMAND packet. */
int ipc_client_send_command(ipc_client_t *client, const ipc_command *command, int timeout_ms,
                            ipc_error *err);

/* The packet version both sides agreed on. */
uint8_t ipc_client_version(const ipc_client_t *client);

/* Nonzero when this connection's data path is in shared memory (the
 * server accepted the client's `shm` offer). */
int ipc_client_uses_shm(const ipc_client_t *client);

/* Closes and frees (same as ipc_client_disconnect). NULL is allowed. Safe
 * while another thread is in a call on this client: that call is woken and
 * returns IPC_E_CLOSED first (as with ipc_client_shutdown). No call may
 * start once it returned. */
void ipc_client_close(ipc_client_t *client);

/* From any thread, at any time: ends the call in progress (it returns
 * IPC_E_CLOSED at once), waits for it to leave, and closes the connection;
 * the client stays allocated and later calls fail with IPC_E_CLOSED, until
 * ipc_client_close frees it. Idempotent. For bindings whose close() may
 * race with a call on another thread. Also allowed from the client's own
 * interrupt hook (a signal handler closing the client): then it does not
 * wait, and the call ends as soon as the hook returns. ipc_client_close
 * must never be called from the hook. */
void ipc_client_shutdown(ipc_client_t *client);

/* In a child made by fork(): releases this process's copy of a client the
 * parent opened, without touching the connection the parent still uses (no
 * shutdown, no bytes sent) and without taking its locks (a parent thread may
 * have held them at fork time). The only client call a fork child may make
 * on an inherited client; it frees it (a lock a parent thread held at fork
 * time is left behind, a few bytes, rather than destroyed while held). */
void ipc_client_forget(ipc_client_t *client);

/* ---- the original single-header API ------------------------------------ */

/* Capacity of the response buffer handed to an ipc_request_handler_t. */
#define IPC_LEGACY_RESPONSE_CAPACITY (64u * 1024u)
/* How long ipc_client_connect keeps retrying "not found" / "busy". */
#define IPC_LEGACY_CONNECT_TIMEOUT_MS 2000

typedef enum ipc_receive_status_t {
    IPC_RECEIVE_STATUS_DONE,
    IPC_RECEIVE_STATUS_MORE_DATA,
    IPC_RECEIVE_STATUS_ERROR
} ipc_receive_status_t;

/* request: NUL-terminated text, or NULL after the client disconnected.
 * response: a zeroed buffer of `capacity` bytes to write a NUL-terminated
 * answer into (NULL and 0 on disconnect). The answer is sent with its NUL. */
typedef void (*ipc_request_handler_t)(char const *request, void *user_data, char *response,
                                      size_t capacity);

/* NULL on failure (the reason goes to the log callback). */
ipc_server_t *ipc_server_start(char const *pipe_name, ipc_request_handler_t request_handler,
                               void *user_data);

/* NULL on failure (the reason goes to the log callback). */
ipc_client_t *ipc_client_connect(char const *pipe_name);

void ipc_client_disconnect(ipc_client_t *connection);

/* Sends the NUL-terminated message including its NUL. */
bool ipc_client_send(ipc_client_t *connection, char const *message);

/* Receives the next response into output. MORE_DATA: output is full and
 * more of the same response follows; call again for the rest. */
ipc_receive_status_t ipc_client_receive(ipc_client_t *connection, char *output, int output_size,
                                        int *received_size);

#ifdef __cplusplus
}
#endif

#endif /* IPCFAST_IPC_H */
