/*
 * libFuzzer harness over the ipcfast C codec and the code that reassembles
 * packets from split reads, on both sides of a connection.
 *
 * The portable core files of csrc/ (every .c but the platform files
 * ipc_posix.c and ipc_win32.c) are linked with this file, which supplies an
 * in-memory platform layer instead, through csrc/ipc_internal.h: a
 * "connection" reads the fuzz input in chunks whose sizes the input itself
 * chooses, and collects what the core writes. Nothing touches the OS, so
 * every execution is deterministic and fast.
 *
 * Input layout:
 *   byte 0      mode: bit 0 server side / client side, bits 1-3 max_message
 *               choice, bit 4 extended handshake value (application key),
 *               bit 5 the shared-memory ring reader instead (run_shm_reader)
 *   byte 1      seed of the read-chunk sizes (0: one byte per read)
 *   rest        the bytes the peer sends
 *
 * Checked on every input:
 *   - the sans-I/O functions decide consistently as bytes arrive: once a
 *     prefix gets a verdict other than NEED_MORE, every longer prefix gets
 *     the same verdict; an OK header re-encodes to the same bytes;
 *     TOO_LARGE never comes with a length <= max_message;
 *   - server side: ipc__server_handshake + ipc__serve_requests (the real request
 *     loop, with an echo handler) never read outside their buffers, never
 *     allocate for a payload above max_message, and what they write back is
 *     a well-formed reply: nothing, 0xFF, or the 9-byte handshake reply
 *     followed by whole RESPONSE/ERROR packets; their reads (500 ms slices,
 *     some of which end empty here) never ask for a formatted error;
 *   - client side: ipc_client_open + ipc_client_request over the input as
 *     the server's answer return a defined result, and an OK response is
 *     exactly the payload of the first packet.
 * ASan/UBSan (built with -fsanitize=fuzzer,address,undefined) catch the rest.
 *
 * Maintenance: the fake platform below must define every function declared
 * in csrc/ipc_platform.h (a new one shows up as an undefined reference when
 * tests/test_fuzz.py builds this file).
 *
 * Build and run (tests/test_fuzz.py does this for ~60 s):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *       tests/fuzz/fuzz_codec.c CORE -o fuzz_codec
 *   where CORE is every .c file of csrc/ except ipc_posix.c and ipc_win32.c
 *   ./fuzz_codec -max_len=4096 -rss_limit_mb=1024 tests/fuzz/corpus
 */
#include "ipc_internal.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz_codec: check failed: %s (line %d)\n", #cond, \
                    __LINE__);                                               \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* ---- in-memory platform ------------------------------------------------- */

struct ipc_plat_conn {
    const uint8_t *data;
    size_t size;
    size_t at;
    uint32_t seed;       /* chunk-size generator; 0: one byte per read */
    uint8_t *out;        /* what the core wrote */
    size_t out_size;
    size_t out_capacity;
    int interrupted;
    int server_side;     /* reads are the server's 500 ms slices */
    unsigned reads;
};

struct ipc_plat_mutex { int held; };
struct ipc_plat_cond { int unused; };
struct ipc_plat_thread { int unused; };

static ipc_plat_conn *fuzz_next_conn;   /* handed out by ipc_plat_connect */
static size_t fuzz_alloc_limit;         /* largest payload a read may reserve */

int64_t ipc_plat_now_ms(void) { return 1000; }

int ipc_plat_thread_start(ipc_plat_thread **thread, void (*main_fn)(void *), void *arg,
                          ipc_error *err)
{
    (void)thread; (void)main_fn; (void)arg;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no threads in the fuzzer");
}
void ipc_plat_thread_join(ipc_plat_thread *thread) { (void)thread; }
int ipc_plat_thread_is_current(const ipc_plat_thread *thread) { (void)thread; return 0; }

int ipc_plat_mutex_create(ipc_plat_mutex **mutex, ipc_error *err)
{
    *mutex = (ipc_plat_mutex *)calloc(1, sizeof **mutex);
    return *mutex ? IPC_OK : ipc__fail(err, IPC_E_NO_MEMORY, 0, "oom");
}
void ipc_plat_mutex_destroy(ipc_plat_mutex *mutex) { free(mutex); }
void ipc_plat_mutex_lock(ipc_plat_mutex *mutex) { FUZZ_CHECK(!mutex->held); mutex->held = 1; }
void ipc_plat_mutex_unlock(ipc_plat_mutex *mutex) { FUZZ_CHECK(mutex->held); mutex->held = 0; }
int ipc_plat_mutex_trylock(ipc_plat_mutex *mutex)
{
    if (mutex->held)
        return 0;
    mutex->held = 1;
    return 1;
}
int ipc_plat_cond_create(ipc_plat_cond **cond, ipc_error *err)
{
    *cond = (ipc_plat_cond *)calloc(1, sizeof **cond);
    return *cond ? IPC_OK : ipc__fail(err, IPC_E_NO_MEMORY, 0, "oom");
}
void ipc_plat_cond_destroy(ipc_plat_cond *cond) { free(cond); }
void ipc_plat_cond_wait(ipc_plat_cond *cond, ipc_plat_mutex *mutex, int timeout_ms)
{
    (void)cond; (void)mutex; (void)timeout_ms;
}
void ipc_plat_cond_broadcast(ipc_plat_cond *cond) { (void)cond; }
void ipc_plat_cond_signal(ipc_plat_cond *cond) { (void)cond; }
void ipc_plat_sleep_ms(int ms) { (void)ms; }
void ipc_plat_global_lock(void) {}
void ipc_plat_global_unlock(void) {}

/* Readiness signal (manual dispatch): never used by the paths fuzzed here. */
struct ipc_plat_ready { int set; };
int ipc_plat_ready_create(ipc_plat_ready **ready, ipc_error *err)
{
    *ready = (ipc_plat_ready *)calloc(1, sizeof **ready);
    return *ready ? IPC_OK : ipc__fail(err, IPC_E_NO_MEMORY, 0, "oom");
}
void ipc_plat_ready_destroy(ipc_plat_ready *ready) { free(ready); }
void ipc_plat_ready_set(ipc_plat_ready *ready) { ready->set = 1; }
void ipc_plat_ready_clear(ipc_plat_ready *ready) { ready->set = 0; }
intptr_t ipc_plat_ready_handle(const ipc_plat_ready *ready) { (void)ready; return -1; }

int ipc_plat_listen(ipc_plat_listener **listener, const char *name,
                    const ipc_plat_listen_params *params, ipc_error *err)
{
    (void)listener; (void)name; (void)params;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no listening in the fuzzer");
}
const char *ipc_plat_listener_address(const ipc_plat_listener *listener)
{
    (void)listener;
    return "fuzz";
}
int ipc_plat_acceptor_create(ipc_plat_listener *listener, ipc_plat_acceptor **acceptor,
                             ipc_error *err)
{
    (void)listener; (void)acceptor;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no accepting in the fuzzer");
}
void ipc_plat_acceptor_destroy(ipc_plat_acceptor *acceptor) { (void)acceptor; }
int ipc_plat_accept(ipc_plat_acceptor *acceptor, ipc_plat_conn **conn, ipc_error *err)
{
    (void)acceptor; (void)conn;
    return ipc__fail(err, IPC_E_CLOSED, 0, "no accepting in the fuzzer");
}
void ipc_plat_listener_interrupt(ipc_plat_listener *listener) { (void)listener; }
void ipc_plat_listener_close(ipc_plat_listener *listener) { (void)listener; }
void ipc_plat_listener_forget(ipc_plat_listener *listener) { (void)listener; }
/* No lock files in memory: nothing owns a name, so nothing is starting. */
int ipc_plat_name_owner(const char *name) { (void)name; return IPC_PLAT_OWNER_NONE; }
/* The in-memory peer is the server the client asked for. */
int ipc_plat_check_server_user(ipc_plat_conn *conn, const char *name, int policy,
                               uint32_t uid, ipc_error *err)
{
    (void)conn; (void)name; (void)policy; (void)uid; (void)err;
    return IPC_OK;
}

int ipc_plat_connect(ipc_plat_conn **conn, const char *name, int timeout_ms, ipc_error *err)
{
    (void)name; (void)timeout_ms;
    if (!fuzz_next_conn)
        return ipc__fail(err, IPC_E_NOT_FOUND, 0, "no connection prepared");
    *conn = fuzz_next_conn;
    fuzz_next_conn = NULL;
    return IPC_OK;
}

int ipc_plat_read(ipc_plat_conn *conn, void *buf, size_t capacity, size_t *got,
                  int timeout_ms, ipc_error *err)
{
    size_t left = conn->size - conn->at;
    size_t chunk;

    (void)timeout_ms;
    *got = 0;
    FUZZ_CHECK(capacity > 0);
    /* An idle server connection times out every slice: asking for a
     * formatted error there would allocate twice a second for nothing. */
    FUZZ_CHECK(!conn->server_side || err == NULL);
    /* Let some slices end empty, as on an idle connection. */
    if (conn->server_side && conn->seed && conn->reads++ % 5 == 4)
        return ipc__fail(err, IPC_E_TIMEOUT, 0, "the slice ended");
    if (conn->interrupted || left == 0)
        return ipc__fail(err, IPC_E_CLOSED, 0, "end of the fuzz input");
    if (conn->seed == 0) {
        chunk = 1;
    } else {
        conn->seed = conn->seed * 1103515245u + 12345u;
        chunk = 1 + (conn->seed >> 16) % 23u;
    }
    if (chunk > left)
        chunk = left;
    if (chunk > capacity)
        chunk = capacity;
    memcpy(buf, conn->data + conn->at, chunk);
    conn->at += chunk;
    *got = chunk;
    return IPC_OK;
}

int ipc_plat_write(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count, int timeout_ms,
                   ipc_error *err)
{
    int i;

    (void)timeout_ms;
    if (conn->interrupted)
        return ipc__fail(err, IPC_E_CLOSED, 0, "interrupted");
    for (i = 0; i < count; i++) {
        size_t need = conn->out_size + parts[i].size;
        if (need > conn->out_capacity) {
            size_t cap = need * 2 + 64;
            uint8_t *grown = (uint8_t *)realloc(conn->out, cap);
            if (!grown)
                return ipc__fail(err, IPC_E_NO_MEMORY, 0, "oom");
            conn->out = grown;
            conn->out_capacity = cap;
        }
        if (parts[i].size)
            memcpy(conn->out + conn->out_size, parts[i].data, parts[i].size);
        conn->out_size += parts[i].size;
    }
    return IPC_OK;
}

int ipc_plat_peer_same_user(ipc_plat_conn *conn, int *same, ipc_error *err)
{
    (void)conn; (void)err;
    *same = 1;
    return IPC_OK;
}
void ipc_plat_conn_interrupt(ipc_plat_conn *conn, int hard) { (void)hard; conn->interrupted = 1; }
void ipc_plat_conn_drain(ipc_plat_conn *conn) { (void)conn; }
void ipc_plat_conn_close(ipc_plat_conn *conn)
{
    /* Connections live on the fuzzer's stack; only the client closes one. */
    conn->interrupted = 1;
}

/* Asked by the shared-memory reader when nothing arrived in a wait slice:
 * "the peer is gone" ends the wait (time stands still in the fuzzer). */
int ipc_plat_conn_closed(ipc_plat_conn *conn)
{
    (void)conn;
    return 1;
}

/* Shared memory: the fuzzer never creates or maps a region through the
 * platform (the ring reader is driven directly over a heap buffer, see
 * run_shm_reader), and never receives a descriptor. */
int ipc_plat_shm_supported(void) { return 0; }
int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no shared memory in the fuzzer");
}
int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    (void)handle; (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no shared memory in the fuzzer");
}
void ipc_plat_shm_release(ipc_plat_shm *shm) { shm->base = NULL; shm->handle = -1; }
void ipc_plat_handle_close(intptr_t handle) { FUZZ_CHECK(handle < 0); }
size_t ipc_plat_shm_record_size(void) { return 0; }
void ipc_plat_shm_record(const ipc_plat_shm *shm, uint8_t *record) { (void)shm; (void)record; }
int ipc_plat_shm_import(ipc_plat_conn *conn, const uint8_t *record, size_t size,
                        ipc_plat_shm *shm, ipc_error *err)
{
    (void)conn; (void)record; (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "no shared memory in the fuzzer");
}
int ipc_plat_write_handle(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count,
                          intptr_t handle, int timeout_ms, ipc_error *err)
{
    (void)handle;
    return ipc_plat_write(conn, parts, count, timeout_ms, err);
}
void ipc_plat_conn_accept_handles(ipc_plat_conn *conn, int on) { (void)conn; (void)on; }
intptr_t ipc_plat_conn_take_handle(ipc_plat_conn *conn) { (void)conn; return -1; }
int ipc_plat_conn_interrupted(ipc_plat_conn *conn) { return conn->interrupted; }
void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *conn, ipc_plat_wake *wake, uint32_t *word)
{
    (void)conn; (void)wake; (void)word;
}
uint32_t ipc_plat_word_load(const uint32_t *word) { return *word; }
void ipc_plat_word_store(uint32_t *word, uint32_t value) { *word = value; }
int ipc_plat_word_swap_if(uint32_t *word, uint32_t expected, uint32_t desired)
{
    if (*word != expected)
        return 0;
    *word = desired;
    return 1;
}
void ipc_plat_word_wait(ipc_plat_wake *wake, uint32_t *word, uint32_t expected, int timeout_ms)
{
    (void)wake; (void)word; (void)expected; (void)timeout_ms;
}
void ipc_plat_word_wake(ipc_plat_wake *wake, uint32_t *word) { (void)wake; (void)word; }
int ipc_plat_current_cpu(void) { return 0; }
int ipc_plat_cpus_available(void) { return 1; }
void ipc_plat_cpu_relax(void) {}
/* Moves on by a microsecond a call, so that a spin (bounded in
 * microseconds) ends; a clock that stood still spun forever on a region
 * without a message (corpus: shm_spin_without_message). */
int64_t ipc_plat_now_us(void)
{
    static int64_t now = 1000000;
    return ++now;
}

/* ---- helpers ------------------------------------------------------------- */

static const uint32_t MAX_MESSAGES[8] = {0, 1, 5, 16, 255, 4096, 65536, 1u << 20};

static void echo_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    (void)user_data;
    if (!request)
        return;   /* disconnect notice */
    FUZZ_CHECK(request[size] == 0);   /* the promised NUL terminator */
    FUZZ_CHECK(size <= fuzz_alloc_limit);
    if (size > 0 && request[0] == 'F')
        ipc_call_fail(call, "failed", 6, NULL);
    else if (size > 0 && request[0] == 'N')
        return;   /* no answer: the core must send an ERROR packet */
    else if (size > 0 && request[0] == 'B') {
        /* above max_message when it is small: refused with an ERROR */
        uint8_t *big = (uint8_t *)ipc_call_buffer(call, size * 2 + 1);
        FUZZ_CHECK(big != NULL);
        memset(big, 'b', size * 2 + 1);
        ipc_call_respond(call, big, size * 2 + 1, NULL);
    } else
        ipc_call_respond(call, request, size, NULL);
}

/* The sans-I/O functions, prefix by prefix. */
/* Server-node payloads: a COMMAND that decodes re-encodes to the same
 * bytes; nothing crashes, leaks or reads past the end. */
static void check_node_codec(const uint8_t *data, size_t size)
{
    ipc_command command;
    int r = ipc_command_decode(data, size, &command, NULL);

    FUZZ_CHECK(r == IPC_OK || r == IPC_E_PROTOCOL || r == IPC_E_NO_MEMORY);
    if (r == IPC_OK) {
        uint8_t *again = NULL;
        size_t again_size = 0;

        FUZZ_CHECK(command.argc > 0);
        FUZZ_CHECK(ipc_command_encode(&command, &again, &again_size, NULL) == IPC_OK);
        FUZZ_CHECK(again_size == size && memcmp(again, data, size) == 0);
        ipc_free(again);
    }
    ipc_command_free(&command);
    {
        int stream = 0;
        const uint8_t *text = NULL;
        size_t text_size = 0;
        int32_t code = 0;
        uint8_t type = 0;

        if (ipc_console_write_decode(data, size, &stream, &text, &text_size, NULL) == IPC_OK)
            FUZZ_CHECK((stream == 1 || stream == 2) && text_size == size - 1);
        if (ipc_exit_decode(data, size, &code, &type, NULL) == IPC_OK) {
            uint8_t again[IPC_EXIT_PAYLOAD_SIZE];
            ipc_exit_encode(again, code, type);
            FUZZ_CHECK(size == IPC_EXIT_PAYLOAD_SIZE && memcmp(again, data, size) == 0);
        }
    }
}

static void check_codec(const uint8_t *data, size_t size, uint32_t max_message,
                        const uint8_t value[IPC_HANDSHAKE_SIZE])
{
    ipc_verdict first = IPC_VERDICT_NEED_MORE;
    size_t n;
    uint8_t version = 0;

    for (n = 0; n <= size && n <= IPC_HANDSHAKE_SIZE + 1; n++) {
        ipc_verdict v = ipc_handshake_check_request(data, n, value, &version);
        if (first != IPC_VERDICT_NEED_MORE)
            FUZZ_CHECK(v == first);
        else
            first = v;
        FUZZ_CHECK(v == IPC_VERDICT_OK || v == IPC_VERDICT_NEED_MORE ||
                   v == IPC_VERDICT_FOREIGN || v == IPC_VERDICT_MISMATCH ||
                   v == IPC_VERDICT_BAD_VERSION);
        if (v == IPC_VERDICT_OK) {
            uint8_t again[IPC_HANDSHAKE_SIZE + 1];
            FUZZ_CHECK(n == IPC_HANDSHAKE_SIZE + 1);
            FUZZ_CHECK(version != 0);
            ipc_handshake_encode_request(again, value, version);
            FUZZ_CHECK(memcmp(again, data, sizeof again) == 0);
        }
        {
            uint8_t sv = 0;
            ipc_verdict r = ipc_handshake_check_reply(data, n, value, &sv);
            FUZZ_CHECK(r != IPC_VERDICT_OK || (n == IPC_HANDSHAKE_SIZE + 1 && sv != 0));
        }
    }

    for (uint8_t max_version = 1; max_version <= 2; max_version++) {
        ipc_verdict decided = IPC_VERDICT_NEED_MORE;
        ipc_packet_header h;

        for (n = 0; n <= size && n <= IPC_MAX_HEADER_SIZE + 1; n++) {
            ipc_verdict v;
            memset(&h, 0xAB, sizeof h);
            v = ipc_packet_header_parse(data, n, max_message, max_version, &h);
            if (decided != IPC_VERDICT_NEED_MORE)
                FUZZ_CHECK(v == decided);
            else
                decided = v;
            if (v == IPC_VERDICT_OK || v == IPC_VERDICT_TOO_LARGE) {
                FUZZ_CHECK(h.header_size == 5 || h.header_size == 6);
                FUZZ_CHECK(n >= h.header_size);
                /* the shared-memory types exist from version 2 on */
                FUZZ_CHECK(h.type >= IPC_PACKET_REQUEST &&
                           h.type <= (max_version >= 2 ? IPC_PACKET_SHM_DECLINE
                                                       : IPC_PACKET_CANCEL));
                FUZZ_CHECK(v == IPC_VERDICT_OK ? h.length <= max_message
                                               : h.length > max_message);
                if (v == IPC_VERDICT_OK) {
                    uint8_t again[IPC_MAX_HEADER_SIZE];
                    size_t k = ipc_packet_header_encode(again, h.type, h.length, h.version);
                    FUZZ_CHECK(k == h.header_size);
                    FUZZ_CHECK(memcmp(again, data, k) == 0);
                    FUZZ_CHECK(h.version == 0 || (h.version >= 1 && h.version <= max_version));
                }
            }
        }
    }
}

/* What a server wrote back must be a well-formed reply: responses and
 * errors, and from version 2 on the SHM_DECLINE that answers an offer (no
 * descriptor ever comes with the fuzzer's bytes, so never SHM_ACCEPT). */
static void check_server_output(const ipc_plat_conn *conn, uint32_t max_message,
                                uint8_t version)
{
    const uint8_t *out = conn->out;
    size_t size = conn->out_size, at;

    if (size == 0)
        return;
    if (size == 1 && out[0] == IPC_FOREIGN_REPLY)
        return;
    FUZZ_CHECK(size >= IPC_HANDSHAKE_SIZE + 1);
    FUZZ_CHECK(out[0] == IPC_HANDSHAKE_REPLY_XOR);
    at = IPC_HANDSHAKE_SIZE + 1;
    while (at < size) {
        ipc_packet_header h;
        /* ERROR texts (too large, protocol error) may exceed a tiny limit */
        ipc_verdict v = ipc_packet_header_parse(out + at, size - at, 0xFFFFFFFFu, version, &h);
        FUZZ_CHECK(v == IPC_VERDICT_OK);
        FUZZ_CHECK(h.type == IPC_PACKET_RESPONSE || h.type == IPC_PACKET_ERROR ||
                   (version >= 2 && h.type == IPC_PACKET_SHM_DECLINE));
        if (h.type == IPC_PACKET_RESPONSE)
            FUZZ_CHECK(h.length <= max_message);
        FUZZ_CHECK(size - at >= h.header_size + (size_t)h.length);
        at += h.header_size + h.length;
    }
}

static void run_server(const uint8_t *data, size_t size, uint8_t seed, uint32_t max_message,
                       const uint8_t value[IPC_HANDSHAKE_SIZE])
{
    ipc_server_t server;
    ipc_slot slot;
    ipc_connection c;
    ipc_plat_conn conn;

    memset(&server, 0, sizeof server);
    ipc_server_options_init(&server.options);
    server.options.max_message = max_message;
    memcpy(server.options.handshake, value, IPC_HANDSHAKE_SIZE);
    server.options.version = (seed & 0x80) ? 2 : 1;
    server.handler = echo_handler;
    memset(&slot, 0, sizeof slot);
    slot.server = &server;
    memset(&conn, 0, sizeof conn);
    conn.data = data;
    conn.size = size;
    conn.seed = seed;
    conn.server_side = 1;
    memset(&c, 0, sizeof c);
    c.server = &server;
    c.slot = &slot;
    c.stream.conn = &conn;
    c.path = &ipc__stream_datapath;
    c.path_state = &c.stream;
    fuzz_alloc_limit = max_message;

    if (ipc__server_handshake(&c) == IPC_OK)
        ipc__serve_requests(&c);
    /* never a receive buffer sized by an unchecked length */
    FUZZ_CHECK(c.stream.capacity <= IPC__STREAM_INITIAL_CAPACITY ||
               c.stream.capacity <= 2 * ((size_t)max_message + IPC_MAX_HEADER_SIZE + 1));
    ipc__stream_free(&c.stream);
    free(c.scratch);
    check_server_output(&conn, max_message, server.options.version);
    free(conn.out);
}

static void run_client(const uint8_t *data, size_t size, uint8_t seed, uint32_t max_message,
                       const uint8_t value[IPC_HANDSHAKE_SIZE])
{
    ipc_client_options options;
    ipc_client_t *client = NULL;
    ipc_plat_conn conn;
    ipc_error err = {0};
    int r;

    ipc_client_options_init(&options);
    options.max_message = max_message;
    memcpy(options.handshake, value, IPC_HANDSHAKE_SIZE);
    memset(&conn, 0, sizeof conn);
    conn.data = data;
    conn.size = size;
    conn.seed = seed;
    fuzz_next_conn = &conn;
    r = ipc_client_open(&client, "fuzz", &options, 1000, &err);
    fuzz_next_conn = NULL;
    if (r == IPC_OK) {
        FUZZ_CHECK(client != NULL);
        for (int i = 0; i < 4; i++) {
            const uint8_t *response = NULL;
            size_t response_size = 0;
            ipc_error_clear(&err);
            r = ipc_client_request(client, "ping", 4, &response, &response_size, 1000, &err);
            FUZZ_CHECK(r == IPC_OK || r == IPC_E_CLOSED || r == IPC_E_PROTOCOL ||
                       r == IPC_E_TOO_LARGE || r == IPC_E_REMOTE || r == IPC_E_TIMEOUT);
            if (r == IPC_OK) {
                FUZZ_CHECK(response_size <= max_message);
                FUZZ_CHECK(response[response_size] == 0);
            } else if (r != IPC_E_REMOTE) {
                FUZZ_CHECK(err.message != NULL);
                break;
            }
        }
        ipc_client_close(client);
    } else {
        FUZZ_CHECK(client == NULL);
        FUZZ_CHECK(r == IPC_E_HANDSHAKE || r == IPC_E_BUSY || r == IPC_E_CLOSED);
    }
    ipc_error_clear(&err);
    free(conn.out);
}

/* The shared-memory ring reader over a region whose every byte the input
 * chooses (docs/protocol.md 11.4: the region is untrusted). The input:
 * the region's request channel header and slot (the server reads them),
 * then up to 8 further 16-byte channel headers written between reads (so
 * sequences, types and lengths change under the reader), the rest being
 * the socket the ON_SOCKET messages come from. Checked: every result is
 * defined, and an OK message has a known type, a NUL-terminated payload
 * no longer than max_message, and at most a slot's length unless it came
 * from the socket. Seed bit 5 reads REQUESTs in place (lend_type, as the
 * Python binding's server does): such a payload must lie wholly inside the
 * request slot, and it is copied at once as its owner would. */
static void run_shm_reader(const uint8_t *data, size_t size, uint8_t seed, uint32_t max_message)
{
    uint32_t slot = 64u << (seed & 3);
    size_t region_size = IPC_SHM_HEADER_SIZE + 2u * slot;
    size_t first = 64 + 64 + 64 + slot;   /* up to the end of the request slot */
    ipc_stream stream;
    ipc_plat_conn conn;
    ipc_shm_link link;
    uint32_t *base;
    int i;

    base = (uint32_t *)calloc(1, region_size);
    FUZZ_CHECK(base != NULL);
    memcpy(base, data, size < first ? size : first);
    data += size < first ? size : first;
    size -= size < first ? size : first;
    memset(&link, 0, sizeof link);
    memset(&stream, 0, sizeof stream);
    memset(&conn, 0, sizeof conn);
    conn.seed = seed >> 2;
    stream.conn = &conn;
    link.region.base = base;
    link.region.size = region_size;
    link.region.handle = -1;
    link.stream = &stream;
    link.slot_size = slot;
    link.in = base + 16;            /* request channel: the server's view */
    link.out = base + 32;
    link.in_data = (uint8_t *)base + IPC_SHM_HEADER_SIZE;
    link.out_data = link.in_data + slot;
    link.spin_us = (int)(seed & 0x10);
    link.lend_type = (seed & 0x20) ? IPC_PACKET_REQUEST : 0;
    fuzz_alloc_limit = max_message;
    for (i = 0; i < 8; i++) {
        ipc_packet packet;
        int r;

        conn.data = data;
        conn.size = size;
        conn.at = 0;
        r = ipc__shm_read(&link, max_message, 2, ipc_plat_now_ms() + 1, &packet, NULL);
        if (r == IPC_OK) {
            FUZZ_CHECK(packet.header.type >= IPC_PACKET_REQUEST &&
                       packet.header.type <= IPC_PACKET_SHM_DECLINE);
            const uint8_t *payload = packet.payload;
            uint8_t *owned = NULL;

            FUZZ_CHECK(packet.header.length <= max_message);
            FUZZ_CHECK(packet.header.header_size != 0 || packet.header.length <= slot);
            if (payload == link.in_data) {   /* lent: the owner copies it at once */
                FUZZ_CHECK(link.lend_type != 0 && packet.header.type == link.lend_type);
                FUZZ_CHECK(packet.header.header_size == 0 && packet.header.length <= slot);
                owned = (uint8_t *)malloc(packet.header.length + 1);
                FUZZ_CHECK(owned != NULL);
                memcpy(owned, payload, packet.header.length);
                payload = owned;
            } else {
                FUZZ_CHECK(payload[packet.header.length] == 0);
            }
            /* the reply goes into the response slot or on the socket */
            FUZZ_CHECK(ipc__shm_write(&link, IPC_PACKET_RESPONSE, NULL, 0, payload,
                                      packet.header.length, 0, NULL) == IPC_OK);
            free(owned);
        } else {
            FUZZ_CHECK(r == IPC_E_TIMEOUT || r == IPC_E_PROTOCOL || r == IPC_E_TOO_LARGE ||
                       r == IPC_E_CLOSED);
        }
        data += conn.at;
        size -= conn.at;
        if (size < 16)
            break;
        memcpy(link.in, data, 16);   /* the peer rewrites the header */
        data += 16;
        size -= 16;
    }
    ipc__stream_free(&stream);
    free(link.copy);
    free(conn.out);
    free(base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t value[IPC_HANDSHAKE_SIZE];
    uint8_t mode, seed;
    uint32_t max_message;

    if (size < 2)
        return 0;
    mode = data[0];
    seed = data[1];
    data += 2;
    size -= 2;
    max_message = MAX_MESSAGES[(mode >> 1) & 7];
    if (max_message == 0)
        max_message = IPC_DEFAULT_MAX_MESSAGE;
    memcpy(value, IPC_DEFAULT_HANDSHAKE, IPC_HANDSHAKE_SIZE);
    if (mode & 0x10)
        value[7] ^= 0x01;

    if (mode & 0x20) {   /* the shared-memory ring reader */
        run_shm_reader(data, size, seed, max_message);
        return 0;
    }
    check_codec(data, size, max_message, value);
    check_node_codec(data, size);
    if (mode & 1)
        run_client(data, size, seed, max_message, value);
    else
        run_server(data, size, seed, max_message, value);
    return 0;
}
