/*
 * ipcfast core: errors, logging, the wire codec, the server (slot table,
 * listener and connection threads, handshake, request loop), the client and
 * the original-API wrappers. Everything that touches the OS goes through
 * ipc_platform.h; see ipc_posix.c and ipc_win32.c.
 */
#include "ipc_platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 0x00 + SHA-256("ipcfast\0" 0x01)[0:7]; the Python layer derives the same
 * bytes for key=None (tests check that they agree). */
const uint8_t IPC_DEFAULT_HANDSHAKE[IPC_HANDSHAKE_SIZE] = {
    0x00, 0xf7, 0x83, 0xca, 0x2a, 0x31, 0x7e, 0x38
};

/* Prefix of ERROR packets that the transport itself sends when it refuses a
 * request as too large, so the client can report IPC_E_TOO_LARGE rather than
 * a handler failure (docs/protocol.md). */
static const char TOO_LARGE_PREFIX[] = "ipcfast: too large: ";

/* Read buffers start at this size and shrink back to it after a message
 * larger than STREAM_KEEP_CAPACITY was consumed. */
#define STREAM_INITIAL_CAPACITY (64u * 1024u)
#define STREAM_KEEP_CAPACITY (8u * 1024u * 1024u)

/* How long ipc_server_stop lets running handlers finish before it closes
 * their connections under them. */
#define STOP_GRACE_MS 1000
/* Exit code of a command cancelled before it ran: what a shell reports for
 * a process ended by Ctrl-C (128 + SIGINT). */
#define CANCELLED_EXIT_CODE 130

/* ======================================================================
 * Errors and logging
 * ====================================================================== */

void ipc_error_clear(ipc_error *err)
{
    if (!err)
        return;
    free(err->message);
    err->message = NULL;
    err->code = IPC_OK;
    err->system_error = 0;
}

const char *ipc_result_name(int code)
{
    switch (code) {
    case IPC_OK: return "IPC_OK";
    case IPC_E_INVALID: return "IPC_E_INVALID";
    case IPC_E_NAME_TOO_LONG: return "IPC_E_NAME_TOO_LONG";
    case IPC_E_ADDRESS_IN_USE: return "IPC_E_ADDRESS_IN_USE";
    case IPC_E_ACCESS_DENIED: return "IPC_E_ACCESS_DENIED";
    case IPC_E_NOT_FOUND: return "IPC_E_NOT_FOUND";
    case IPC_E_BUSY: return "IPC_E_BUSY";
    case IPC_E_TIMEOUT: return "IPC_E_TIMEOUT";
    case IPC_E_CLOSED: return "IPC_E_CLOSED";
    case IPC_E_HANDSHAKE: return "IPC_E_HANDSHAKE";
    case IPC_E_TOO_LARGE: return "IPC_E_TOO_LARGE";
    case IPC_E_PROTOCOL: return "IPC_E_PROTOCOL";
    case IPC_E_REMOTE: return "IPC_E_REMOTE";
    case IPC_E_NO_MEMORY: return "IPC_E_NO_MEMORY";
    case IPC_E_IN_USE: return "IPC_E_IN_USE";
    case IPC_E_SYSTEM: return "IPC_E_SYSTEM";
    default: return "IPC_E_UNKNOWN";
    }
}

char *ipc__vformat(const char *format, va_list args)
{
    va_list copy;
    int size;
    char *text;

    va_copy(copy, args);
    size = vsnprintf(NULL, 0, format, copy);
    va_end(copy);
    if (size < 0)
        return NULL;
    text = (char *)malloc((size_t)size + 1);
    if (!text)
        return NULL;
    vsnprintf(text, (size_t)size + 1, format, args);
    return text;
}

char *ipc__format(const char *format, ...)
{
    va_list args;
    char *text;

    va_start(args, format);
    text = ipc__vformat(format, args);
    va_end(args);
    return text;
}

int ipc__fail(ipc_error *err, int code, int system_error, const char *format, ...)
{
    va_list args;

    if (!err)
        return code;
    free(err->message);
    err->code = code;
    err->system_error = system_error;
    va_start(args, format);
    err->message = ipc__vformat(format, args);
    va_end(args);
    return code;
}

/* Keeps the first error's text but lets a caller say where it happened. */
static int fail_with_context(ipc_error *err, int code, const char *context)
{
    char *inner;

    if (!err)
        return code;
    inner = err->message;
    err->message = NULL;
    ipc__fail(err, code, err->system_error, "%s: %s", context,
              inner ? inner : ipc_result_name(code));
    free(inner);
    return code;
}

/* The callback and its user data change together: a reader copies both
 * under the global lock, so a message never reaches one callback with the
 * other's user data. The callback itself runs outside the lock. */
static ipc_log_fn log_fn = NULL;
static void *log_user_data = NULL;

void ipc_set_log_handler(ipc_log_fn fn, void *user_data)
{
    ipc_plat_global_lock();
    log_fn = fn;
    log_user_data = user_data;
    ipc_plat_global_unlock();
}

void ipc__log(int level, const char *format, ...)
{
    va_list args;
    char *text;
    ipc_log_fn fn;
    void *user_data;

    ipc_plat_global_lock();
    fn = log_fn;
    user_data = log_user_data;
    ipc_plat_global_unlock();
    if (!fn)
        return;
    va_start(args, format);
    text = ipc__vformat(format, args);
    va_end(args);
    fn(user_data, level, text ? text : "(out of memory formatting a log message)");
    free(text);
}

/* ======================================================================
 * Codec: handshake and packet headers over buffers (no I/O)
 * ====================================================================== */

const char *ipc_verdict_name(int verdict)
{
    switch (verdict) {
    case IPC_VERDICT_OK: return "IPC_VERDICT_OK";
    case IPC_VERDICT_NEED_MORE: return "IPC_VERDICT_NEED_MORE";
    case IPC_VERDICT_FOREIGN: return "IPC_VERDICT_FOREIGN";
    case IPC_VERDICT_MISMATCH: return "IPC_VERDICT_MISMATCH";
    case IPC_VERDICT_RESERVED_BIT: return "IPC_VERDICT_RESERVED_BIT";
    case IPC_VERDICT_UNKNOWN_TYPE: return "IPC_VERDICT_UNKNOWN_TYPE";
    case IPC_VERDICT_BAD_VERSION: return "IPC_VERDICT_BAD_VERSION";
    case IPC_VERDICT_TOO_LARGE: return "IPC_VERDICT_TOO_LARGE";
    default: return "IPC_VERDICT_UNKNOWN";
    }
}

size_t ipc_handshake_encode_request(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                    const uint8_t value[IPC_HANDSHAKE_SIZE],
                                    uint8_t version)
{
    memcpy(out, value, IPC_HANDSHAKE_SIZE);
    out[IPC_HANDSHAKE_SIZE] = version;
    return IPC_HANDSHAKE_SIZE + 1;
}

size_t ipc_handshake_encode_reply(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                  const uint8_t client_value[IPC_HANDSHAKE_SIZE],
                                  uint8_t version)
{
    size_t i;

    for (i = 0; i < IPC_HANDSHAKE_SIZE; i++)
        out[i] = (uint8_t)(client_value[i] ^ IPC_HANDSHAKE_REPLY_XOR);
    out[IPC_HANDSHAKE_SIZE] = version;
    return IPC_HANDSHAKE_SIZE + 1;
}

/* Shared tail of both handshake checks: compare what has arrived against
 * the expected 8 bytes, then require the version byte. */
static ipc_verdict check_handshake_bytes(const uint8_t *data, size_t size,
                                         const uint8_t expected[IPC_HANDSHAKE_SIZE],
                                         uint8_t *version)
{
    size_t compare = size < IPC_HANDSHAKE_SIZE ? size : IPC_HANDSHAKE_SIZE;

    if (memcmp(data, expected, compare) != 0)
        return IPC_VERDICT_MISMATCH;
    if (size < IPC_HANDSHAKE_SIZE + 1)
        return IPC_VERDICT_NEED_MORE;
    if (data[IPC_HANDSHAKE_SIZE] == 0)
        return IPC_VERDICT_BAD_VERSION;
    if (version)
        *version = data[IPC_HANDSHAKE_SIZE];
    return IPC_VERDICT_OK;
}

ipc_verdict ipc_handshake_check_request(const uint8_t *data, size_t size,
                                        const uint8_t expected[IPC_HANDSHAKE_SIZE],
                                        uint8_t *client_version)
{
    if (size == 0)
        return IPC_VERDICT_NEED_MORE;
    if (data[0] != 0x00)
        return IPC_VERDICT_FOREIGN;
    return check_handshake_bytes(data, size, expected, client_version);
}

ipc_verdict ipc_handshake_check_reply(const uint8_t *data, size_t size,
                                      const uint8_t client_value[IPC_HANDSHAKE_SIZE],
                                      uint8_t *server_version)
{
    uint8_t expected[IPC_HANDSHAKE_SIZE + 1];

    if (size == 0)
        return IPC_VERDICT_NEED_MORE;
    if (data[0] == IPC_FOREIGN_REPLY)
        return IPC_VERDICT_FOREIGN;
    ipc_handshake_encode_reply(expected, client_value, 0);
    return check_handshake_bytes(data, size, expected, server_version);
}

static void put_u32le(uint8_t *out, uint32_t value)
{
    out[0] = (uint8_t)value;
    out[1] = (uint8_t)(value >> 8);
    out[2] = (uint8_t)(value >> 16);
    out[3] = (uint8_t)(value >> 24);
}

static uint32_t get_u32le(const uint8_t *in)
{
    return (uint32_t)in[0] | ((uint32_t)in[1] << 8) | ((uint32_t)in[2] << 16) |
           ((uint32_t)in[3] << 24);
}

size_t ipc_packet_header_encode(uint8_t out[IPC_MAX_HEADER_SIZE], uint8_t type,
                                uint32_t length, uint8_t version)
{
    size_t at = 0;

    out[at++] = (uint8_t)((type & IPC_TYPE_MASK) | (version ? IPC_TYPE_EXTENDED : 0));
    if (version)
        out[at++] = version;
    put_u32le(out + at, length);
    return at + 4;
}

ipc_verdict ipc_packet_header_parse(const uint8_t *data, size_t size,
                                    uint32_t max_message, uint8_t max_version,
                                    ipc_packet_header *header)
{
    uint8_t type;
    size_t at = 1;

    memset(header, 0, sizeof *header);
    if (size == 0)
        return IPC_VERDICT_NEED_MORE;
    if (data[0] & IPC_TYPE_RESERVED)
        return IPC_VERDICT_RESERVED_BIT;
    type = (uint8_t)(data[0] & IPC_TYPE_MASK);
    if (type < IPC_PACKET_REQUEST || type > IPC_PACKET_CANCEL)
        return IPC_VERDICT_UNKNOWN_TYPE;
    header->type = type;
    if (data[0] & IPC_TYPE_EXTENDED) {
        if (size < 2)
            return IPC_VERDICT_NEED_MORE;
        if (data[1] == 0 || data[1] > max_version)
            return IPC_VERDICT_BAD_VERSION;
        header->version = data[1];
        at = 2;
    }
    header->header_size = (uint32_t)(at + 4);
    if (size < at + 4)
        return IPC_VERDICT_NEED_MORE;
    header->length = get_u32le(data + at);
    if (header->length > max_message)
        return IPC_VERDICT_TOO_LARGE;
    return IPC_VERDICT_OK;
}

/* ======================================================================
 * Buffered packet stream over one connection
 * ====================================================================== */

/* Unread bytes live in buf[start, end). A packet handed out by
 * stream_read_packet stays in place (no copy) until stream_consume; the
 * byte after its payload is temporarily replaced by a NUL terminator. */
typedef struct ipc_stream {
    ipc_plat_conn *conn;
    uint8_t *buf;
    size_t capacity;
    size_t start;
    size_t end;
    size_t packet_size;     /* bytes of the packet handed out, 0 if none */
    uint8_t saved_byte;     /* what the NUL terminator replaced */
} ipc_stream;

static void stream_free(ipc_stream *s)
{
    free(s->buf);
    s->buf = NULL;
    s->capacity = s->start = s->end = s->packet_size = 0;
}

/* Makes room for `total` unread bytes plus one terminator byte. */
static int stream_reserve(ipc_stream *s, size_t total, ipc_error *err)
{
    size_t unread = s->end - s->start;
    size_t wanted = total + 1;
    uint8_t *grown;
    size_t capacity;

    if (s->start + wanted <= s->capacity)
        return IPC_OK;
    if (s->start > 0) {
        memmove(s->buf, s->buf + s->start, unread);
        s->start = 0;
        s->end = unread;
        if (wanted <= s->capacity)
            return IPC_OK;
    }
    capacity = s->capacity ? s->capacity : STREAM_INITIAL_CAPACITY;
    while (capacity < wanted)
        capacity = capacity * 2 > capacity ? capacity * 2 : wanted;
    grown = (uint8_t *)realloc(s->buf, capacity);
    if (!grown)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0,
                         "out of memory for a %lu-byte receive buffer",
                         (unsigned long)capacity);
    s->buf = grown;
    s->capacity = capacity;
    return IPC_OK;
}

static int remaining_ms(int64_t deadline)
{
    int64_t left;

    if (deadline < 0)
        return -1;
    left = deadline - ipc_plat_now_ms();
    if (left <= 0)
        return 0;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

/* Reads until at least `total` unread bytes are buffered. Waits in slices of
 * at most `slice_ms` (< 0: the whole remaining time) so server threads wake
 * regularly; gives up with IPC_E_TIMEOUT at `deadline` (< 0: never). */
static int stream_fill(ipc_stream *s, size_t total, int64_t deadline, int slice_ms,
                       ipc_error *err)
{
    int r = stream_reserve(s, total, err);

    while (r == IPC_OK && s->end - s->start < total) {
        int wait = remaining_ms(deadline);
        size_t got = 0;

        if (wait == 0)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "timed out waiting for data");
        if (slice_ms >= 0 && (wait < 0 || wait > slice_ms))
            wait = slice_ms;
        /* Leave one byte for the terminator. */
        r = ipc_plat_read(s->conn, s->buf + s->end, s->capacity - s->end - 1, &got, wait, err);
        if (r == IPC_OK)
            s->end += got;
        else if (r == IPC_E_TIMEOUT && slice_ms >= 0) {
            ipc_error_clear(err);
            r = IPC_OK;
        }
    }
    return r;
}

static void stream_consume(ipc_stream *s)
{
    if (s->packet_size == 0)
        return;
    s->buf[s->start + s->packet_size] = s->saved_byte;
    s->start += s->packet_size;
    s->packet_size = 0;
    if (s->start == s->end) {
        s->start = s->end = 0;
        if (s->capacity > STREAM_KEEP_CAPACITY) {
            /* One huge message must not pin its buffer for the
             * connection's lifetime. */
            free(s->buf);
            s->buf = NULL;
            s->capacity = 0;
        }
    }
}

typedef struct ipc_packet {
    ipc_packet_header header;
    uint8_t *payload;   /* NUL-terminated, valid until stream_consume */
    ipc_verdict verdict;
} ipc_packet;

/* Reads one whole packet. On a bad header returns IPC_E_PROTOCOL or
 * IPC_E_TOO_LARGE with packet->verdict (and header fields) set, having
 * allocated nothing for the payload. */
static int stream_read_packet(ipc_stream *s, uint32_t max_message, uint8_t max_version,
                              int64_t deadline, int slice_ms, ipc_packet *packet,
                              ipc_error *err)
{
    size_t total;
    int r;

    stream_consume(s);
    for (;;) {
        packet->verdict = ipc_packet_header_parse(s->buf + s->start, s->end - s->start,
                                                  max_message, max_version,
                                                  &packet->header);
        if (packet->verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = stream_fill(s, s->end - s->start + 1, deadline, slice_ms, err);
        if (r != IPC_OK)
            return r;
    }
    if (packet->verdict == IPC_VERDICT_TOO_LARGE)
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a packet of %lu bytes exceeds max_message (%lu bytes)",
                         (unsigned long)packet->header.length, (unsigned long)max_message);
    if (packet->verdict != IPC_VERDICT_OK)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed packet header (%s, first byte 0x%02x)",
                         ipc_verdict_name(packet->verdict), s->buf[s->start]);
    /* Where size_t is 32 bits, a length near 4 GiB would wrap the sum. */
    if (packet->header.length > (size_t)-1 - packet->header.header_size - 1) {
        packet->verdict = IPC_VERDICT_TOO_LARGE;
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a packet of %lu bytes does not fit this process's address space",
                         (unsigned long)packet->header.length);
    }
    total = (size_t)packet->header.header_size + packet->header.length;
    r = stream_fill(s, total, deadline, slice_ms, err);
    if (r != IPC_OK)
        return r;
    packet->payload = s->buf + s->start + packet->header.header_size;
    s->packet_size = total;
    s->saved_byte = s->buf[s->start + total];
    s->buf[s->start + total] = 0;
    return IPC_OK;
}

/* Writes a header and a payload made of a prefix and a body, in one write. */
static int write_packet_parts(ipc_plat_conn *conn, uint8_t type, const void *prefix,
                              size_t prefix_size, const void *body, size_t body_size,
                              int timeout_ms, ipc_error *err)
{
    uint8_t header[IPC_MAX_HEADER_SIZE];
    ipc_plat_buf parts[3];
    size_t count = 1;

    parts[0].data = header;
    parts[0].size = ipc_packet_header_encode(header, type, (uint32_t)(prefix_size + body_size), 0);
    if (prefix_size) {
        parts[count].data = prefix;
        parts[count++].size = prefix_size;
    }
    if (body_size) {
        parts[count].data = body;
        parts[count++].size = body_size;
    }
    return ipc_plat_write(conn, parts, count, timeout_ms, err);
}

static int write_packet(ipc_plat_conn *conn, uint8_t type, const void *data, size_t size,
                        int timeout_ms, ipc_error *err)
{
    return write_packet_parts(conn, type, NULL, 0, data, size, timeout_ms, err);
}

/* ======================================================================
 * Server
 * ====================================================================== */

enum slot_state {
    SLOT_FREE,      /* never used, or its thread was joined */
    SLOT_RESERVED,  /* a listener is accepting into it */
    SLOT_RUNNING,   /* a connection thread owns it */
    SLOT_DONE       /* the thread finished; join before reuse */
};

typedef struct ipc_slot {
    ipc_server_t *server;
    uint32_t index;
    int state;                 /* guarded by server->lock */
    ipc_plat_thread *thread;   /* guarded by server->lock */
    ipc_plat_conn *conn;       /* guarded by server->lock while RUNNING */
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
    ipc_request_handler_t legacy_handler;   /* set by ipc_server_start */
    void *legacy_user_data;

    ipc_plat_listener *listener;
    ipc_listener_thread *listeners;
    uint32_t listener_count;

    ipc_plat_mutex *lock;
    ipc_plat_cond *changed;   /* a slot changed state, or stopping was set */
    ipc_slot *slots;
    int stopping;

    /* MANUAL dispatch: calls waiting for ipc_server_next_call, oldest
     * first, guarded by lock; `ready` is set while the queue is not empty. */
    ipc_call *queue_head;
    ipc_call *queue_tail;
    ipc_plat_cond *queued;
    ipc_plat_ready *ready;
    /* Server node: commands queued or running, guarded by lock; at most 1. */
    uint32_t commands_active;
};

/* State of one connection, owned by its thread. */
typedef struct ipc_connection {
    ipc_server_t *server;
    ipc_slot *slot;
    ipc_stream stream;
    uint8_t version;
    uint8_t *scratch;          /* ipc_call_buffer */
    size_t scratch_capacity;
    int write_failed;          /* guarded by write_lock where there is one */
    int refused;               /* closed for a bad packet: do not drain */
    ipc_plat_cond *done;       /* MANUAL dispatch or node: our queued call finished */
    /* Server node: output comes from several threads of the application
     * while this thread reads, so writes are serialized. */
    ipc_plat_mutex *write_lock;
    ipc_call *command;         /* node: the command in flight (heap), or NULL */
} ipc_connection;

struct ipc_call {
    ipc_connection *connection;
    int type;                  /* IPC_PACKET_REQUEST or IPC_PACKET_COMMAND */
    int answered;              /* guarded by write_lock where there is one */
    /* Queued calls only; guarded by the server's lock. */
    ipc_call *next;
    const uint8_t *request;
    size_t size;
    int finished;
    int abandoned;             /* finished by stop, unanswered */
    int taken;                 /* handed out by ipc_server_next_call */
    /* Commands only. */
    int cancelled;             /* guarded by the server's lock */
    int released;              /* counted off commands_active; server's lock */
    uint8_t *owned;            /* the payload, copied: reading goes on */
};

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
}

void ipc_server_options_init(ipc_server_options *options)
{
    memset(options, 0, sizeof *options);
    memcpy(options->handshake, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    options->access = IPC_ACCESS_USER;
    fill_server_defaults(options);
}

/* ---- answering a call ---------------------------------------------------- */

static void lock_writes(ipc_connection *c)
{
    if (c->write_lock)
        ipc_plat_mutex_lock(c->write_lock);
}

static void unlock_writes(ipc_connection *c)
{
    if (c->write_lock)
        ipc_plat_mutex_unlock(c->write_lock);
}

/* Writes one packet on the connection; the caller holds the write lock.
 * A failed write marks the connection broken for every later write. */
static int write_locked(ipc_connection *c, uint8_t type, const void *prefix, size_t prefix_size,
                        const void *body, size_t body_size, int timeout_ms, ipc_error *err)
{
    int r;

    if (c->write_failed)
        return ipc__fail(err, IPC_E_CLOSED, 0, "the client is gone");
    r = write_packet_parts(c->stream.conn, type, prefix, prefix_size, body, body_size,
                           timeout_ms, err);
    if (r != IPC_OK)
        c->write_failed = 1;
    return r;
}

static int connection_broken(ipc_connection *c)
{
    int broken;

    lock_writes(c);
    broken = c->write_failed;
    unlock_writes(c);
    return broken;
}

static int send_on_call(ipc_call *call, uint8_t type, const void *data, size_t size,
                        ipc_error *err)
{
    ipc_connection *c = call->connection;
    int r;

    lock_writes(c);
    if (call->answered) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "this request was already answered");
    } else {
        call->answered = 1;
        /* No timeout: a client that stops reading blocks only its own
         * thread, and ipc_server_stop interrupts the write. */
        r = write_locked(c, type, NULL, 0, data, size, -1, err);
    }
    unlock_writes(c);
    return r;
}

int ipc_call_respond(ipc_call *call, const void *data, size_t size, ipc_error *err)
{
    uint32_t limit;

    if (!call || (!data && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_respond: NULL call or data");
    if (call->type == IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "a command is answered with ipc_call_exit");
    limit = call->connection->server->options.max_message;
    if (size > limit) {
        char *text = ipc__format("%sthe response of %lu bytes exceeds the server's "
                                 "max_message of %lu bytes",
                                 TOO_LARGE_PREFIX, (unsigned long)size, (unsigned long)limit);
        ipc__log(IPC_LOG_ERROR, "%s", text ? text : "response too large");
        send_on_call(call, IPC_PACKET_ERROR, text, text ? strlen(text) : 0, NULL);
        free(text);
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "response of %lu bytes exceeds max_message (%lu bytes)",
                         (unsigned long)size, (unsigned long)limit);
    }
    return send_on_call(call, IPC_PACKET_RESPONSE, data, size, err);
}

int ipc_call_fail(ipc_call *call, const char *message, size_t size, ipc_error *err)
{
    if (!call || (!message && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_call_fail: NULL call or message");
    if (call->type == IPC_PACKET_COMMAND)
        return ipc__fail(err, IPC_E_INVALID, 0, "a command is answered with ipc_call_exit");
    return send_on_call(call, IPC_PACKET_ERROR, message, size, err);
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

/* ---- one connection --------------------------------------------------------- */

static int server_handshake(ipc_connection *c)
{
    const ipc_server_options *o = &c->server->options;
    int64_t deadline = ipc_plat_now_ms() + o->handshake_timeout_ms;
    ipc_stream *s = &c->stream;
    uint8_t client_version = 0;
    uint8_t reply[IPC_HANDSHAKE_SIZE + 1];
    ipc_verdict verdict;
    ipc_error err = {0};
    int same_user = 0;
    int r;

    for (;;) {
        verdict = ipc_handshake_check_request(s->buf ? s->buf + s->start : NULL,
                                              s->end - s->start, o->handshake, &client_version);
        if (verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = stream_fill(s, s->end - s->start + 1, deadline, IPC_WAKE_INTERVAL_MS, &err);
        if (r != IPC_OK) {
            ipc__log(IPC_LOG_INFO, "[slot %u] client dropped during the handshake: %s",
                     (unsigned)c->slot->index, err.message ? err.message : ipc_result_name(r));
            ipc_error_clear(&err);
            return r;
        }
    }
    if (verdict == IPC_VERDICT_FOREIGN) {
        uint8_t refusal = IPC_FOREIGN_REPLY;
        ipc_plat_buf part;

        ipc__log(IPC_LOG_WARNING,
                 "[slot %u] refused a foreign client (first byte 0x%02x, not an ipcfast "
                 "handshake)", (unsigned)c->slot->index, s->buf[s->start]);
        part.data = &refusal;
        part.size = 1;
        ipc_plat_write(s->conn, &part, 1, IPC_WAKE_INTERVAL_MS, NULL);
        return IPC_E_HANDSHAKE;
    }
    if (verdict != IPC_VERDICT_OK) {
        ipc__log(IPC_LOG_WARNING,
                 "[slot %u] handshake %s: the client uses another key or protocol; dropped",
                 (unsigned)c->slot->index,
                 verdict == IPC_VERDICT_MISMATCH ? "mismatch" : "with version 0");
        return IPC_E_HANDSHAKE;
    }
    if (o->access != IPC_ACCESS_WORLD) {
        r = ipc_plat_peer_same_user(s->conn, &same_user, &err);
        if (r != IPC_OK || !same_user) {
            ipc__log(IPC_LOG_WARNING, "[slot %u] refused a client: %s",
                     (unsigned)c->slot->index,
                     r != IPC_OK ? (err.message ? err.message : "peer check failed")
                                 : "it runs as another user (access is \"user\")");
            ipc_error_clear(&err);
            return IPC_E_ACCESS_DENIED;
        }
    }
    s->start += IPC_HANDSHAKE_SIZE + 1;
    c->version = client_version < o->version ? client_version : o->version;
    {
        ipc_plat_buf part;

        part.data = reply;
        part.size = ipc_handshake_encode_reply(reply, o->handshake, o->version);
        r = ipc_plat_write(s->conn, &part, 1, remaining_ms(deadline), &err);
    }
    if (r != IPC_OK) {
        ipc__log(IPC_LOG_INFO, "[slot %u] could not send the handshake reply: %s",
                 (unsigned)c->slot->index, err.message ? err.message : ipc_result_name(r));
        ipc_error_clear(&err);
    }
    return r;
}

/* Tells the client why its packet was refused, then the caller closes. */
static void refuse_packet(ipc_connection *c, const ipc_packet *p, int r, const ipc_error *err)
{
    unsigned slot = (unsigned)c->slot->index;
    char *text;

    /* The client may still be writing the rest of the refused packet and
     * not reading: waiting for it to take our reply (Windows drain) would
     * deadlock both sides. Closing keeps the reply readable. */
    c->refused = 1;

    if (r == IPC_E_TOO_LARGE) {
        text = ipc__format("%sthe request of %lu bytes exceeds the server's max_message of "
                           "%lu bytes", TOO_LARGE_PREFIX, (unsigned long)p->header.length,
                           (unsigned long)c->server->options.max_message);
    } else if (r == IPC_E_PROTOCOL) {
        text = ipc__format("protocol error: %s", err->message ? err->message : "bad packet");
    } else {
        text = ipc__format("protocol error: packet type %u is not accepted by this server",
                           (unsigned)p->header.type);
    }
    ipc__log(IPC_LOG_WARNING, "[slot %u] %s; closing the connection", slot,
             text ? text : "bad packet");
    /* Best effort and bounded: the client may not be reading. */
    if (text) {
        lock_writes(c);
        write_locked(c, IPC_PACKET_ERROR, NULL, 0, text, strlen(text), IPC_WAKE_INTERVAL_MS,
                     NULL);
        unlock_writes(c);
    }
    free(text);
}

/* Appends a call to the queue ipc_server_next_call takes from. Caller
 * holds the lock; 0 (not queued) if the server is stopping. */
static int enqueue_locked(ipc_server_t *server, ipc_call *call)
{
    if (server->stopping)
        return 0;
    if (server->queue_tail) {
        server->queue_tail->next = call;
    } else {
        server->queue_head = call;
        ipc_plat_ready_set(server->ready);
    }
    server->queue_tail = call;
    ipc_plat_cond_broadcast(server->queued);
    return 1;
}

/* Removes a call nobody has taken yet from the queue. Caller holds the lock. */
static void unqueue_locked(ipc_server_t *server, ipc_call *call)
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
        ipc_plat_ready_clear(server->ready);
}

/* MANUAL dispatch: hands the call to ipc_server_next_call and waits until
 * ipc_call_finish (or stop) ends it. 0 if stop ended it unanswered. */
static int queue_and_wait(ipc_connection *c, ipc_call *call)
{
    ipc_server_t *server = c->server;
    int handled;

    ipc_plat_mutex_lock(server->lock);
    if (!enqueue_locked(server, call)) {
        ipc_plat_mutex_unlock(server->lock);
        return 0;
    }
    while (!call->finished)
        ipc_plat_cond_wait(c->done, server->lock, -1);
    handled = !call->abandoned;
    ipc_plat_mutex_unlock(server->lock);
    return handled;
}

/* ---- server node: commands ------------------------------------------------ */

/* A command stops counting against the one-at-a-time limit as soon as its
 * EXIT is about to go out: the client may send its next COMMAND the moment
 * it reads the EXIT. Caller holds the lock. */
static void release_command_locked(ipc_server_t *server, ipc_call *call)
{
    if (call->type == IPC_PACKET_COMMAND && !call->released) {
        call->released = 1;
        server->commands_active--;
    }
}

static void send_exit(ipc_connection *c, int32_t code, uint8_t type)
{
    uint8_t payload[IPC_EXIT_PAYLOAD_SIZE];

    ipc_exit_encode(payload, code, type);
    lock_writes(c);
    write_locked(c, IPC_PACKET_EXIT, NULL, 0, payload, sizeof payload, -1, NULL);
    unlock_writes(c);
}

/* Frees the connection's command once it is finished; with `wait`, first
 * waits for that (the client sent something that must follow the EXIT). */
static void reap_command(ipc_connection *c, int wait)
{
    ipc_server_t *server = c->server;
    ipc_call *call = c->command;
    int finished;

    if (!call)
        return;
    ipc_plat_mutex_lock(server->lock);
    while (wait && !call->finished)
        ipc_plat_cond_wait(c->done, server->lock, -1);
    finished = call->finished;
    ipc_plat_mutex_unlock(server->lock);
    if (finished) {
        free(call->owned);
        free(call);
        c->command = NULL;
    }
}

/* Queues a COMMAND for ipc_server_next_call, or answers EXIT BUSY when the
 * node already has one. 0 if the server is stopping. */
static int start_command(ipc_connection *c, const ipc_packet *packet)
{
    ipc_server_t *server = c->server;
    ipc_call *call;
    int busy, stopping;

    ipc_plat_mutex_lock(server->lock);
    stopping = server->stopping;
    busy = server->commands_active > 0;
    if (!stopping && !busy)
        server->commands_active++;
    ipc_plat_mutex_unlock(server->lock);
    if (stopping)
        return 0;
    if (busy) {
        send_exit(c, 0, IPC_EXIT_BUSY);
        return 1;
    }
    call = (ipc_call *)calloc(1, sizeof *call);
    if (call)
        call->owned = (uint8_t *)malloc((size_t)packet->header.length + 1);
    if (!call || !call->owned) {
        ipc__log(IPC_LOG_ERROR, "[slot %u] out of memory for a command",
                 (unsigned)c->slot->index);
        free(call);
        ipc_plat_mutex_lock(server->lock);
        server->commands_active--;
        ipc_plat_mutex_unlock(server->lock);
        send_exit(c, 1, IPC_EXIT_REFUSED);
        return 1;
    }
    memcpy(call->owned, packet->payload, packet->header.length);
    call->owned[packet->header.length] = 0;
    call->connection = c;
    call->type = IPC_PACKET_COMMAND;
    call->request = call->owned;
    call->size = packet->header.length;
    c->command = call;
    ipc_plat_mutex_lock(server->lock);
    if (!enqueue_locked(server, call)) {
        call->finished = 1;
        release_command_locked(server, call);
        stopping = 1;
    }
    ipc_plat_mutex_unlock(server->lock);
    return !stopping;
}

/* CANCEL, or the client vanished. A command still in the queue ends here
 * (EXIT cancelled) and never runs; a running one is the application's to
 * stop: its cancel_handler is told. */
static void cancel_command(ipc_connection *c)
{
    ipc_server_t *server = c->server;
    ipc_call *call = c->command;
    int notify = 0, unqueued = 0;

    if (!call)
        return;
    ipc_plat_mutex_lock(server->lock);
    if (!call->finished && !call->cancelled) {
        call->cancelled = 1;
        if (call->taken) {
            notify = 1;
        } else {
            unqueue_locked(server, call);
            release_command_locked(server, call);
            call->finished = 1;
            unqueued = 1;
        }
    }
    ipc_plat_mutex_unlock(server->lock);
    if (unqueued)
        send_exit(c, CANCELLED_EXIT_CODE, IPC_EXIT_CANCELLED);
    /* The call stays allocated until this thread reaps it, so the pointer
     * is valid in the callback even if the command just finished. */
    if (notify && server->options.cancel_handler)
        server->options.cancel_handler(server->user_data, call);
}

int ipc_call_type(const ipc_call *call)
{
    return call ? call->type : 0;
}

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
    lock_writes(c);
    if (call->answered)
        r = ipc__fail(err, IPC_E_INVALID, 0, "the command already exited");
    do {
        size_t part = size < chunk ? size : chunk;

        if (r == IPC_OK)
            r = write_locked(c, IPC_PACKET_CONSOLE_WRITE, &stream_byte, 1, at, part, -1, err);
        at += part;
        size -= part;
    } while (r == IPC_OK && size > 0);
    unlock_writes(c);
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
    return send_on_call(call, IPC_PACKET_EXIT, payload, sizeof payload, err);
}

int ipc_call_cancelled(ipc_call *call)
{
    ipc_server_t *server;
    int cancelled;

    if (!call || call->type != IPC_PACKET_COMMAND)
        return 0;
    server = call->connection->server;
    ipc_plat_mutex_lock(server->lock);
    cancelled = call->cancelled;
    ipc_plat_mutex_unlock(server->lock);
    return cancelled;
}

/* Server node packets. 0: close the connection. */
static int serve_node_packet(ipc_connection *c, const ipc_packet *packet)
{
    if (packet->header.type == IPC_PACKET_CANCEL) {
        if (packet->header.length != 0) {
            ipc_error err = {0};

            ipc__fail(&err, IPC_E_PROTOCOL, 0, "CANCEL with a %lu-byte payload",
                      (unsigned long)packet->header.length);
            refuse_packet(c, packet, IPC_E_PROTOCOL, &err);
            ipc_error_clear(&err);
            return 0;
        }
        cancel_command(c);   /* none in flight: it came after the EXIT; ignored */
        return 1;
    }
    /* COMMAND. A client sends the next one only after the EXIT of the
     * previous, which may still be finishing. */
    reap_command(c, 1);
    return start_command(c, packet) && !connection_broken(c);
}

static void serve_requests(ipc_connection *c)
{
    ipc_server_t *server = c->server;
    ipc_packet packet;
    ipc_error err = {0};
    int r;

    for (;;) {
        ipc_call call;

        r = stream_read_packet(&c->stream, server->options.max_message, c->version, -1,
                               IPC_WAKE_INTERVAL_MS, &packet, &err);
        reap_command(c, 0);
        if (r == IPC_E_CLOSED)
            break;
        if (r == IPC_E_TOO_LARGE || r == IPC_E_PROTOCOL) {
            refuse_packet(c, &packet, r, &err);
            break;
        }
        if (r != IPC_OK) {
            ipc__log(IPC_LOG_WARNING, "[slot %u] read failed: %s", (unsigned)c->slot->index,
                     err.message ? err.message : ipc_result_name(r));
            break;
        }
        if (server->options.node && (packet.header.type == IPC_PACKET_COMMAND ||
                                     packet.header.type == IPC_PACKET_CANCEL)) {
            if (!serve_node_packet(c, &packet))
                break;
            continue;
        }
        if (packet.header.type != IPC_PACKET_REQUEST) {
            refuse_packet(c, &packet, IPC_E_INVALID, &err);
            break;
        }
        reap_command(c, 1);
        memset(&call, 0, sizeof call);
        call.connection = c;
        call.type = IPC_PACKET_REQUEST;
        if (server->options.dispatch == IPC_DISPATCH_MANUAL) {
            call.request = packet.payload;
            call.size = packet.header.length;
            if (!queue_and_wait(c, &call))
                break;   /* the server is stopping */
        } else if (server->options.returning_handler) {
            size_t size = 0;
            const void *response = server->options.returning_handler(
                server->user_data, &call, packet.payload, packet.header.length, &size);

            if (response && !call.answered)
                ipc_call_respond(&call, response, size, NULL);
        } else {
            server->handler(server->user_data, &call, packet.payload, packet.header.length);
        }
        if (!call.answered) {
            static const char text[] = "the server's handler returned without a response";
            ipc__log(IPC_LOG_ERROR, "[slot %u] %s", (unsigned)c->slot->index, text);
            send_on_call(&call, IPC_PACKET_ERROR, text, sizeof text - 1, NULL);
        }
        if (connection_broken(c))
            break;
    }
    /* A command still running has lost its client: stop it, and wait for
     * the application to finish it before the connection goes away. */
    cancel_command(c);
    reap_command(c, 1);
    ipc_error_clear(&err);
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

    if (server->options.dispatch == IPC_DISPATCH_MANUAL || server->options.node) {
        ipc_error err = {0};

        if (ipc_plat_cond_create(&c.done, &err) != IPC_OK ||
            (server->options.node && ipc_plat_mutex_create(&c.write_lock, &err) != IPC_OK)) {
            ipc__log(IPC_LOG_ERROR, "[slot %u] dropped a client: %s", (unsigned)slot->index,
                     err.message ? err.message : "no condition variable");
            ipc_error_clear(&err);
            c.refused = 1;
        }
    }
    if (!c.refused && server_handshake(&c) == IPC_OK) {
        ipc_call farewell;

        serve_requests(&c);
        /* Tell the handler the client is gone; answering is refused. */
        memset(&farewell, 0, sizeof farewell);
        farewell.connection = &c;
        farewell.answered = 1;
        if (server->options.dispatch == IPC_DISPATCH_MANUAL) {
            /* no handler to tell */
        } else if (server->options.returning_handler) {
            size_t ignored = 0;

            server->options.returning_handler(server->user_data, &farewell, NULL, 0, &ignored);
        } else {
            server->handler(server->user_data, &farewell, NULL, 0);
        }
    }
    stream_free(&c.stream);
    free(c.scratch);
    if (c.done)
        ipc_plat_cond_destroy(c.done);
    if (c.write_lock)
        ipc_plat_mutex_destroy(c.write_lock);

    /* Drain while stop can still cut it short (a client that never reads
     * must not hold the server). Once conn is detached, stop no longer
     * touches it. */
    if (!c.refused)
        ipc_plat_conn_drain(conn);
    ipc_plat_mutex_lock(server->lock);
    slot->conn = NULL;
    ipc_plat_mutex_unlock(server->lock);
    ipc_plat_conn_close(conn);

    ipc_plat_mutex_lock(server->lock);
    slot->state = SLOT_DONE;
    ipc_plat_cond_broadcast(server->changed);
    ipc_plat_mutex_unlock(server->lock);
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
            if (server->slots[i].state == SLOT_FREE)
                chosen = &server->slots[i];
        for (i = 0; i < server->options.max_clients && !chosen; i++)
            if (server->slots[i].state == SLOT_DONE)
                chosen = &server->slots[i];
        if (!chosen)
            ipc_plat_cond_wait(server->changed, server->lock, -1);
    }
    if (chosen) {
        finished = chosen->thread;
        chosen->thread = NULL;
        chosen->state = SLOT_RESERVED;
    }
    ipc_plat_mutex_unlock(server->lock);
    if (finished)
        ipc_plat_thread_join(finished);   /* already exited: returns at once */
    return chosen;
}

static void release_slot(ipc_server_t *server, ipc_slot *slot)
{
    ipc_plat_mutex_lock(server->lock);
    slot->state = SLOT_FREE;
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
        slot->state = SLOT_RUNNING;
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
    slot->state = SLOT_FREE;
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
        ipc_plat_cond_wait(server->changed, server->lock, remaining_ms(until));
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
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "the handshake value must start with a 0x00 byte");
    if (o->access != IPC_ACCESS_USER && o->access != IPC_ACCESS_WORLD)
        return ipc__fail(err, IPC_E_INVALID, 0, "access must be IPC_ACCESS_USER or "
                         "IPC_ACCESS_WORLD, not %d", o->access);
    if (o->max_clients > 4096)
        return ipc__fail(err, IPC_E_INVALID, 0, "max_clients %lu is above the limit of 4096",
                         (unsigned long)o->max_clients);
    if (o->dispatch != IPC_DISPATCH_THREAD && o->dispatch != IPC_DISPATCH_MANUAL)
        return ipc__fail(err, IPC_E_INVALID, 0, "dispatch must be IPC_DISPATCH_THREAD or "
                         "IPC_DISPATCH_MANUAL, not %d", o->dispatch);
    if (o->listeners > o->max_clients)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "listeners (%lu) cannot exceed max_clients (%lu)",
                         (unsigned long)o->listeners, (unsigned long)o->max_clients);
    return IPC_OK;
}

/* Frees what server_create/server_launch built; threads must be joined. */
static void server_free(ipc_server_t *server)
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
    free(server->slots);
    free(server);
}

static int server_create(ipc_server_t **out, const char *name, const ipc_server_options *options,
                         ipc_handler_fn handler, void *user_data, ipc_error *err)
{
    ipc_server_t *server;
    uint32_t i;
    int r;

    *out = NULL;
    if (!name || !*name ||
        (!handler && !(options && (options->returning_handler ||
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
    r = validate_server_options(&server->options, err);
    if (r != IPC_OK)
        goto fail;
    server->slots = (ipc_slot *)calloc(server->options.max_clients, sizeof *server->slots);
    if (!server->slots) {
        r = ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the slot table");
        goto fail;
    }
    for (i = 0; i < server->options.max_clients; i++) {
        server->slots[i].server = server;
        server->slots[i].index = i;
    }
    r = ipc_plat_mutex_create(&server->lock, err);
    if (r == IPC_OK)
        r = ipc_plat_cond_create(&server->changed, err);
    if (r == IPC_OK && (server->options.dispatch == IPC_DISPATCH_MANUAL || server->options.node)) {
        r = ipc_plat_cond_create(&server->queued, err);
        if (r == IPC_OK)
            r = ipc_plat_ready_create(&server->ready, err);
    }
    if (r != IPC_OK)
        goto fail;
    *out = server;
    return IPC_OK;
fail:
    server_free(server);
    return r;
}

static void stop_listeners(ipc_server_t *server)
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
        stop_listeners(server);
    }
    return r;
}

int ipc_server_open(ipc_server_t **out, const char *name, const ipc_server_options *options,
                    ipc_handler_fn handler, void *user_data, ipc_error *err)
{
    ipc_server_t *server = NULL;
    int r;

    if (!out)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_open: NULL output pointer");
    *out = NULL;
    r = server_create(&server, name, options, handler, user_data, err);
    if (r != IPC_OK)
        return r;
    r = server_launch(server, name, err);
    if (r != IPC_OK) {
        server_free(server);
        return r;
    }
    ipc__log(IPC_LOG_INFO, "server listening on %s (%lu slots)",
             ipc_plat_listener_address(server->listener),
             (unsigned long)server->options.max_clients);
    *out = server;
    return IPC_OK;
}

const char *ipc_server_address(const ipc_server_t *server)
{
    return server && server->listener ? ipc_plat_listener_address(server->listener) : "";
}

int ipc_server_next_call(ipc_server_t *server, ipc_call **call, const uint8_t **request,
                         size_t *size, int timeout_ms, ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    ipc_call *taken;

    if (!server || !call || !request || !size)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_server_next_call: NULL argument");
    *call = NULL;
    if (!server->queued)
        return ipc__fail(err, IPC_E_INVALID, 0, "the server uses neither manual dispatch nor "
                         "node commands");
    ipc_plat_mutex_lock(server->lock);
    while (!server->queue_head && !server->stopping) {
        int wait = remaining_ms(deadline);

        if (wait == 0)
            break;
        ipc_plat_cond_wait(server->queued, server->lock, wait);
    }
    if (server->stopping) {
        ipc_plat_mutex_unlock(server->lock);
        return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
    }
    taken = server->queue_head;
    if (!taken) {
        ipc_plat_mutex_unlock(server->lock);
        return ipc__fail(err, IPC_E_TIMEOUT, 0, "no request is pending");
    }
    server->queue_head = taken->next;
    if (!server->queue_head) {
        server->queue_tail = NULL;
        ipc_plat_ready_clear(server->ready);
    }
    taken->next = NULL;
    taken->taken = 1;
    ipc_plat_mutex_unlock(server->lock);
    *call = taken;
    *request = taken->request;
    *size = taken->size;
    return IPC_OK;
}

void ipc_call_finish(ipc_call *call)
{
    ipc_connection *c;
    int answered;

    if (!call)
        return;
    c = call->connection;
    lock_writes(c);
    answered = call->answered;
    unlock_writes(c);
    if (!answered && call->type == IPC_PACKET_COMMAND) {
        ipc__log(IPC_LOG_ERROR, "[slot %u] the application finished a command without its "
                 "EXIT; reporting it as crashed", (unsigned)c->slot->index);
        ipc_call_exit(call, 1, IPC_EXIT_CRASHED, NULL);
    } else if (!answered) {
        static const char text[] = "the application finished the request without answering it";

        ipc__log(IPC_LOG_ERROR, "[slot %u] %s", (unsigned)c->slot->index, text);
        send_on_call(call, IPC_PACKET_ERROR, text, sizeof text - 1, NULL);
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

static int count_running(ipc_server_t *server)
{
    int running = 0;
    uint32_t i;

    for (i = 0; i < server->options.max_clients; i++)
        if (server->slots[i].state == SLOT_RUNNING)
            running++;
    return running;
}

/* Wakes every connection: soft lets a running handler still answer; hard
 * makes clients see the connection closed now. Caller holds the lock. */
static void interrupt_connections(ipc_server_t *server, int hard)
{
    uint32_t i;

    for (i = 0; i < server->options.max_clients; i++)
        if (server->slots[i].state == SLOT_RUNNING && server->slots[i].conn)
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

/* MANUAL dispatch, on stop: calls nobody has taken yet end unanswered
 * (their clients see the connection closed), and next_call waiters wake.
 * Caller holds the lock. */
static void abandon_queued_calls(ipc_server_t *server)
{
    ipc_call *call = server->queue_head;

    if (!server->queued)
        return;
    while (call) {
        ipc_call *next = call->next;

        release_command_locked(server, call);
        call->finished = 1;
        call->abandoned = 1;
        ipc_plat_cond_broadcast(call->connection->done);
        call = next;
    }
    server->queue_head = server->queue_tail = NULL;
    ipc_plat_ready_clear(server->ready);
    ipc_plat_cond_broadcast(server->queued);
}

void ipc_server_interrupt(ipc_server_t *server)
{
    if (!server)
        return;
    ipc_plat_mutex_lock(server->lock);
    server->stopping = 1;
    ipc_plat_cond_broadcast(server->changed);
    abandon_queued_calls(server);
    ipc_plat_mutex_unlock(server->lock);
}

void ipc_server_stop(ipc_server_t *server)
{
    int64_t grace_end;
    uint32_t i;

    if (!server)
        return;
    if (called_from_server_thread(server)) {
        ipc__log(IPC_LOG_ERROR, "ipc_server_stop called from a handler: it would wait for "
                 "itself; call it from another thread");
        return;
    }
    ipc_plat_mutex_lock(server->lock);
    server->stopping = 1;
    ipc_plat_cond_broadcast(server->changed);
    abandon_queued_calls(server);
    interrupt_connections(server, 0);
    ipc_plat_mutex_unlock(server->lock);

    stop_listeners(server);

    grace_end = ipc_plat_now_ms() + STOP_GRACE_MS;
    ipc_plat_mutex_lock(server->lock);
    while (count_running(server) > 0 && ipc_plat_now_ms() < grace_end)
        ipc_plat_cond_wait(server->changed, server->lock, remaining_ms(grace_end));
    interrupt_connections(server, 1);
    ipc_plat_mutex_unlock(server->lock);

    /* No new threads can start now: joining without the lock is safe. */
    for (i = 0; i < server->options.max_clients; i++) {
        if (server->slots[i].thread) {
            ipc_plat_thread_join(server->slots[i].thread);
            server->slots[i].thread = NULL;
            server->slots[i].state = SLOT_FREE;
        }
    }
    ipc__log(IPC_LOG_INFO, "server on %s stopped", ipc_plat_listener_address(server->listener));
    server_free(server);
}

/* ======================================================================
 * Client
 * ====================================================================== */

struct ipc_client_t {
    ipc_client_options options;
    ipc_stream stream;        /* stream.conn is NULL once closed */
    ipc_plat_mutex *busy;     /* held during a call: detects concurrent use */
    uint8_t version;
    char *closed_reason;      /* why the connection was abandoned */
    const uint8_t *legacy_data;   /* rest of a response for ipc_client_receive */
    size_t legacy_left;
};

void ipc_client_options_init(ipc_client_options *options)
{
    memset(options, 0, sizeof *options);
    options->max_message = IPC_DEFAULT_MAX_MESSAGE;
    memcpy(options->handshake, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    options->version = IPC_PROTOCOL_VERSION;
}

/* After a failure that leaves the stream in an unknown state (timeout
 * mid-response, peer gone, garbage), the connection is closed for good. */
static void client_abandon(ipc_client_t *client, const ipc_error *why)
{
    if (!client->stream.conn)
        return;
    ipc_plat_conn_close(client->stream.conn);
    client->stream.conn = NULL;
    client->legacy_left = 0;
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
    r = ipc_plat_write(s->conn, &part, 1, remaining_ms(deadline), err);
    for (;;) {
        if (r != IPC_OK)
            break;
        verdict = ipc_handshake_check_reply(s->buf ? s->buf + s->start : NULL,
                                            s->end - s->start, client->options.handshake,
                                            &server_version);
        if (verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = stream_fill(s, s->end - s->start + 1, deadline, -1, err);
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
    if (r != IPC_OK)
        return fail_with_context(err, r, "handshake");
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

/* Connection attempts until one works or the budget is spent. */
static int client_connect(ipc_client_t *client, const char *name, int64_t deadline,
                          int timeout_ms, ipc_error *err)
{
    int backoff_ms = 1;
    int seen_busy = 0;

    for (;;) {
        int r = ipc_plat_connect(&client->stream.conn, name, remaining_ms(deadline), err);
        int wait;

        if (r == IPC_OK)
            return IPC_OK;
        if (r != IPC_E_NOT_FOUND && r != IPC_E_BUSY)
            return r;
        /* "Not found" is retried for a server that is (re)starting; a
         * server we saw busy and that then vanished has stopped. */
        if (r == IPC_E_NOT_FOUND && seen_busy)
            return ipc__fail(err, r, err ? err->system_error : 0,
                             "the server '%s' went away while we waited for a free slot",
                             name);
        seen_busy |= r == IPC_E_BUSY;
        wait = remaining_ms(deadline);
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
        backoff_ms = backoff_ms * 2 > 50 ? 50 : backoff_ms * 2;
    }
}

int ipc_client_open(ipc_client_t **out, const char *name, const ipc_client_options *options,
                    int timeout_ms, ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
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
    if (client->options.handshake[0] != 0x00) {
        r = ipc__fail(err, IPC_E_INVALID, 0, "the handshake value must start with a 0x00 byte");
        goto fail;
    }
    r = ipc_plat_mutex_create(&client->busy, err);
    if (r != IPC_OK)
        goto fail;
    r = client_connect(client, name, deadline, timeout_ms, err);
    if (r != IPC_OK)
        goto fail;
    /* A budget of 0 means one connection attempt without retries; the
     * handshake that follows still needs a round trip. */
    if (timeout_ms == 0)
        deadline = ipc_plat_now_ms() + IPC_WAKE_INTERVAL_MS;
    r = client_handshake(client, name, deadline, err);
    if (r != IPC_OK)
        goto fail;
    *out = client;
    return IPC_OK;
fail:
    ipc_client_close(client);
    return r;
}

/* Turns an ERROR packet into a result: IPC_E_TOO_LARGE for the transport's
 * own refusals (TOO_LARGE_PREFIX), else `code` with the handler's text.
 * The text may hold NUL bytes, which a C string cannot: each becomes
 * U+FFFD, as in the pure-Python client. */
static int fail_from_error_packet(const ipc_packet *packet, int code, ipc_error *err)
{
    static const char replacement[] = "\xEF\xBF\xBD";
    size_t prefix = sizeof TOO_LARGE_PREFIX - 1;
    size_t length = packet->header.length;
    const uint8_t *text = packet->payload;
    char *message, *at;
    size_t i;
    int r;

    if (length >= prefix && memcmp(text, TOO_LARGE_PREFIX, prefix) == 0) {
        code = IPC_E_TOO_LARGE;
        text += prefix;
        length -= prefix;
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
    int r = stream_read_packet(&client->stream, client->options.max_message, client->version,
                               ipc_plat_now_ms() + 100, -1, &packet, &ignored);

    ipc_error_clear(&ignored);
    if (r != IPC_OK || packet.header.type != IPC_PACKET_ERROR)
        return code;
    return fail_from_error_packet(&packet, code, err);
}

static int client_write_locked(ipc_client_t *client, const void *request, size_t size,
                               int64_t deadline, ipc_error *err)
{
    int r;

    if (size > 0xFFFFFFFFu)
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a request of %lu bytes does not fit the 4-byte length field",
                         (unsigned long)size);
    r = write_packet(client->stream.conn, IPC_PACKET_REQUEST, request, size,
                     remaining_ms(deadline), err);
    if (r == IPC_E_CLOSED)
        r = explain_refused_write(client, r, err);
    if (r != IPC_OK)
        client_abandon(client, err);
    return r;
}

static int client_read_locked(ipc_client_t *client, const uint8_t **response,
                              size_t *response_size, int64_t deadline, ipc_error *err)
{
    ipc_packet packet;
    int r;

    client->legacy_left = 0;
    r = stream_read_packet(&client->stream, client->options.max_message, client->version,
                           deadline, -1, &packet, err);
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

/* Serializes calls on one client; a second thread gets IPC_E_IN_USE. */
static int client_enter(ipc_client_t *client, ipc_error *err)
{
    if (!client)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL client");
    if (!ipc_plat_mutex_trylock(client->busy))
        return ipc__fail(err, IPC_E_IN_USE, 0, "this client is being used by another thread; "
                         "use one client per thread or a lock");
    return client_check_open(client, err) == IPC_OK ? IPC_OK
           : (ipc_plat_mutex_unlock(client->busy), IPC_E_CLOSED);
}

int ipc_client_write(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                     ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int r;

    if (!request && size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request with a nonzero size");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, request, size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_read(ipc_client_t *client, const uint8_t **response, size_t *response_size,
                    int timeout_ms, ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int r;

    if (!response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL response pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_read_locked(client, response, response_size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_request(ipc_client_t *client, const void *request, size_t size,
                       const uint8_t **response, size_t *response_size, int timeout_ms,
                       ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int r;

    if ((!request && size) || !response || !response_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL request or response pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = client_write_locked(client, request, size, deadline, err);
    if (r == IPC_OK)
        r = client_read_locked(client, response, response_size, deadline, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_write_packet(ipc_client_t *client, uint8_t type, const void *data, size_t size,
                            int timeout_ms, ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int r;

    if (!data && size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL data with a nonzero size");
    if (type != IPC_PACKET_REQUEST && type != IPC_PACKET_COMMAND && type != IPC_PACKET_CANCEL)
        return ipc__fail(err, IPC_E_INVALID, 0, "packet type %u is not sent by clients",
                         (unsigned)type);
    if (size > 0xFFFFFFFFu)
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a packet of %lu bytes does not fit the 4-byte length field",
                         (unsigned long)size);
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    r = write_packet(client->stream.conn, type, data, size, remaining_ms(deadline), err);
    if (r == IPC_E_CLOSED)
        r = explain_refused_write(client, r, err);
    if (r != IPC_OK)
        client_abandon(client, err);
    ipc_plat_mutex_unlock(client->busy);
    return r;
}

int ipc_client_read_packet(ipc_client_t *client, uint8_t *type, const uint8_t **payload,
                           size_t *size, int timeout_ms, ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    ipc_packet packet;
    int r;

    if (!type || !payload || !size)
        return ipc__fail(err, IPC_E_INVALID, 0, "NULL packet pointers");
    r = client_enter(client, err);
    if (r != IPC_OK)
        return r;
    client->legacy_left = 0;
    r = stream_read_packet(&client->stream, client->options.max_message, client->version,
                           deadline, -1, &packet, err);
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
    ipc_plat_mutex_unlock(client->busy);
    return r;
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

void ipc_client_close(ipc_client_t *client)
{
    if (!client)
        return;
    if (client->stream.conn)
        ipc_plat_conn_close(client->stream.conn);
    stream_free(&client->stream);
    if (client->busy)
        ipc_plat_mutex_destroy(client->busy);
    free(client->closed_reason);
    free(client);
}

/* ======================================================================
 * The original single-header API
 * ====================================================================== */

static void legacy_trampoline(void *user_data, ipc_call *call, const uint8_t *request,
                              size_t size)
{
    ipc_server_t *server = call->connection->server;
    char *response;

    (void)user_data;
    (void)size;
    if (!request) {
        server->legacy_handler(NULL, server->legacy_user_data, NULL, 0);
        return;
    }
    response = (char *)ipc_call_buffer(call, IPC_LEGACY_RESPONSE_CAPACITY);
    if (!response) {
        static const char text[] = "out of memory for the response buffer";
        ipc_call_fail(call, text, sizeof text - 1, NULL);
        return;
    }
    memset(response, 0, IPC_LEGACY_RESPONSE_CAPACITY);
    /* The stream puts a NUL after every payload, so the request is a C
     * string even when the client did not send one. */
    server->legacy_handler((const char *)request, server->legacy_user_data, response,
                           IPC_LEGACY_RESPONSE_CAPACITY);
    response[IPC_LEGACY_RESPONSE_CAPACITY - 1] = '\0';
    ipc_call_respond(call, response, strlen(response) + 1, NULL);
}

static void log_legacy_failure(const char *what, ipc_error *err)
{
    ipc__log(IPC_LOG_ERROR, "%s: %s", what, err->message ? err->message
                                                         : ipc_result_name(err->code));
    ipc_error_clear(err);
}

ipc_server_t *ipc_server_start(char const *pipe_name, ipc_request_handler_t request_handler,
                               void *user_data)
{
    ipc_server_t *server = NULL;
    ipc_error err = {0};

    if (!request_handler) {
        ipc__fail(&err, IPC_E_INVALID, 0, "NULL request handler");
        log_legacy_failure("ipc_server_start", &err);
        return NULL;
    }
    if (server_create(&server, pipe_name, NULL, legacy_trampoline, NULL, &err) != IPC_OK) {
        log_legacy_failure("ipc_server_start", &err);
        return NULL;
    }
    server->legacy_handler = request_handler;
    server->legacy_user_data = user_data;
    if (server_launch(server, pipe_name, &err) != IPC_OK) {
        server_free(server);
        log_legacy_failure("ipc_server_start", &err);
        return NULL;
    }
    return server;
}

ipc_client_t *ipc_client_connect(char const *pipe_name)
{
    ipc_client_t *client = NULL;
    ipc_error err = {0};

    if (ipc_client_open(&client, pipe_name, NULL, IPC_LEGACY_CONNECT_TIMEOUT_MS, &err) != IPC_OK) {
        log_legacy_failure("ipc_client_connect", &err);
        return NULL;
    }
    return client;
}

void ipc_client_disconnect(ipc_client_t *connection)
{
    ipc_client_close(connection);
}

bool ipc_client_send(ipc_client_t *connection, char const *message)
{
    ipc_error err = {0};

    if (!message) {
        ipc__fail(&err, IPC_E_INVALID, 0, "NULL message");
        log_legacy_failure("ipc_client_send", &err);
        return false;
    }
    if (ipc_client_write(connection, message, strlen(message) + 1, -1, &err) != IPC_OK) {
        log_legacy_failure("ipc_client_send", &err);
        return false;
    }
    return true;
}

ipc_receive_status_t ipc_client_receive(ipc_client_t *connection, char *output, int output_size,
                                        int *received_size)
{
    ipc_error err = {0};
    size_t chunk;

    if (received_size)
        *received_size = 0;
    if (!connection || !output || output_size <= 0) {
        ipc__fail(&err, IPC_E_INVALID, 0, "NULL connection or output, or output_size <= 0");
        log_legacy_failure("ipc_client_receive", &err);
        return IPC_RECEIVE_STATUS_ERROR;
    }
    if (connection->legacy_left == 0) {
        const uint8_t *data = NULL;
        size_t size = 0;

        if (ipc_client_read(connection, &data, &size, -1, &err) != IPC_OK) {
            log_legacy_failure("ipc_client_receive", &err);
            return IPC_RECEIVE_STATUS_ERROR;
        }
        connection->legacy_data = data;
        connection->legacy_left = size;
    }
    chunk = connection->legacy_left < (size_t)output_size ? connection->legacy_left
                                                          : (size_t)output_size;
    memcpy(output, connection->legacy_data, chunk);
    connection->legacy_data += chunk;
    connection->legacy_left -= chunk;
    if (received_size)
        *received_size = (int)chunk;
    return connection->legacy_left ? IPC_RECEIVE_STATUS_MORE_DATA : IPC_RECEIVE_STATUS_DONE;
}
