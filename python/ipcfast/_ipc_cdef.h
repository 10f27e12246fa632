/*
 * cffi cdef for csrc/ipc.h: read by tools/ffi_build.py, not by a C compiler.
 *
 * Hand-written mirror of the public C API. tests/test_cdef.py fails when it
 * drifts from csrc/ipc.h (every function, struct field, enum member and
 * integer #define is compared), and cffi checks struct layouts when the
 * extension module is compiled.
 *
 * cffi syntax notes: "#define NAME ..." lets the C compiler supply the value
 * (used for expressions); an enum ending in "..." takes its values from the
 * compiler too (the result codes and verdicts, which ipc.h generates from
 * IPC_RESULT_MAP / IPC_VERDICT_MAP); array parameters are written as
 * pointers.
 */

/* ---- constants ---- */

static char *const IPCFAST_VERSION;

#define IPC_PROTOCOL_VERSION 1
#define IPC_PROTOCOL_VERSION_SHM 2
#define IPC_HANDSHAKE_SIZE 8
#define IPC_HANDSHAKE_REPLY_XOR 0x5A
#define IPC_FOREIGN_REPLY 0xFF
#define IPC_MAX_HEADER_SIZE 6
#define IPC_DEFAULT_MAX_CLIENTS 32
#define IPC_DEFAULT_LISTENERS 1
#define IPC_DEFAULT_MAX_MESSAGE ...
#define IPC_DEFAULT_HANDSHAKE_TIMEOUT_MS 5000
#define IPC_WAKE_INTERVAL_MS 500
#define IPC_NOT_FOUND_GRACE_MS 250

extern const uint8_t IPC_DEFAULT_HANDSHAKE[8];

enum ipc_packet_type {
    IPC_PACKET_REQUEST = 1,
    IPC_PACKET_RESPONSE = 2,
    IPC_PACKET_ERROR = 3,
    IPC_PACKET_COMMAND = 4,
    IPC_PACKET_CONSOLE_WRITE = 5,
    IPC_PACKET_EXIT = 6,
    IPC_PACKET_CANCEL = 7,
    IPC_PACKET_SHM_SETUP = 8,
    IPC_PACKET_SHM_ACCEPT = 9,
    IPC_PACKET_SHM_DECLINE = 10
};
#define IPC_TYPE_MASK ...
#define IPC_TYPE_EXTENDED ...
#define IPC_TYPE_RESERVED ...

/* ---- results and errors ---- */

typedef enum ipc_result {
    IPC_OK,
    IPC_E_INVALID,
    IPC_E_NAME_TOO_LONG,
    IPC_E_ADDRESS_IN_USE,
    IPC_E_ACCESS_DENIED,
    IPC_E_NOT_FOUND,
    IPC_E_BUSY,
    IPC_E_TIMEOUT,
    IPC_E_CLOSED,
    IPC_E_HANDSHAKE,
    IPC_E_TOO_LARGE,
    IPC_E_PROTOCOL,
    IPC_E_REMOTE,
    IPC_E_NO_MEMORY,
    IPC_E_IN_USE,
    IPC_E_SYSTEM,
    IPC_E_INTERRUPTED,
    ...
} ipc_result;

typedef struct ipc_error {
    int code;
    int system_error;
    char *message;
} ipc_error;

void ipc_error_clear(ipc_error *err);
const char *ipc_result_name(int code);

/* ---- logging ---- */

enum ipc_log_level {
    IPC_LOG_DEBUG = 10,
    IPC_LOG_INFO = 20,
    IPC_LOG_WARNING = 30,
    IPC_LOG_ERROR = 40
};

typedef void (*ipc_log_fn)(void *user_data, int level, const char *message);
void ipc_set_log_handler(ipc_log_fn fn, void *user_data);

/* ---- codec ---- */

typedef enum ipc_verdict {
    IPC_VERDICT_OK,
    IPC_VERDICT_NEED_MORE,
    IPC_VERDICT_FOREIGN,
    IPC_VERDICT_MISMATCH,
    IPC_VERDICT_RESERVED_BIT,
    IPC_VERDICT_UNKNOWN_TYPE,
    IPC_VERDICT_BAD_VERSION,
    IPC_VERDICT_TOO_LARGE,
    ...
} ipc_verdict;

const char *ipc_verdict_name(int verdict);

typedef struct ipc_packet_header {
    uint8_t type;
    uint8_t version;
    uint32_t length;
    uint32_t header_size;
} ipc_packet_header;

size_t ipc_handshake_encode_request(uint8_t *out, const uint8_t *value,
                                    uint8_t version);
ipc_verdict ipc_handshake_check_request(const uint8_t *data, size_t size,
                                        const uint8_t *expected,
                                        uint8_t *client_version);
size_t ipc_handshake_encode_reply(uint8_t *out, const uint8_t *client_value,
                                  uint8_t version);
ipc_verdict ipc_handshake_check_reply(const uint8_t *data, size_t size,
                                      const uint8_t *client_value,
                                      uint8_t *server_version);
size_t ipc_packet_header_encode(uint8_t *out, uint8_t type, uint32_t length,
                                uint8_t version);
#define IPC_SHM_SETUP_SIZE 16
#define IPC_SHM_LAYOUT 1
#define IPC_SHM_HEADER_SIZE 192
#define IPC_SHM_MIN_SLOT ...
#define IPC_SHM_MAX_SLOT ...
#define IPC_SHM_DEFAULT_SLOT ...
#define IPC_DEFAULT_SPIN_US 20

typedef struct ipc_shm_setup {
    uint32_t layout;
    uint32_t region_size;
    uint32_t slot_size;
    uint32_t flags;
} ipc_shm_setup;

uint32_t ipc_shm_region_size(uint32_t slot_size);
size_t ipc_shm_setup_encode(uint8_t out[16], const ipc_shm_setup *setup);
int ipc_shm_setup_decode(const uint8_t *payload, size_t size, ipc_shm_setup *setup,
                         ipc_error *err);

ipc_verdict ipc_packet_header_parse(const uint8_t *data, size_t size,
                                    uint32_t max_message, uint8_t max_version,
                                    ipc_packet_header *header);

/* ---- server ---- */

typedef struct ipc_server_t ipc_server_t;
typedef struct ipc_client_t ipc_client_t;
typedef struct ipc_call ipc_call;

enum ipc_access {
    IPC_ACCESS_USER = 0,
    IPC_ACCESS_WORLD = 1
};

typedef void (*ipc_handler_fn)(void *user_data, ipc_call *call,
                               const uint8_t *request, size_t size);

typedef const void *(*ipc_returning_handler_fn)(void *user_data, ipc_call *call,
                                                const uint8_t *request, size_t size,
                                                size_t *response_size);

typedef struct ipc_serve_loop ipc_serve_loop;
typedef void (*ipc_connection_handler_fn)(void *user_data, ipc_serve_loop *loop);

enum ipc_dispatch {
    IPC_DISPATCH_THREAD = 0,
    IPC_DISPATCH_MANUAL = 1
};

typedef void (*ipc_cancel_fn)(void *user_data, ipc_call *call);

typedef struct ipc_server_options {
    uint32_t max_clients;
    uint32_t listeners;
    uint32_t max_message;
    uint32_t handshake_timeout_ms;
    int access;
    uint8_t handshake[8];
    uint8_t version;
    ipc_returning_handler_fn returning_handler;
    ipc_connection_handler_fn connection_handler;
    int dispatch;
    int node;
    ipc_cancel_fn cancel_handler;
    int shm;
    int shm_spin_us;
    int shm_requests_in_place;
} ipc_server_options;

void ipc_server_options_init(ipc_server_options *options);

#define IPC_REQUEST_INLINE_SIZE 4096

typedef struct ipc_next_request {
    const uint8_t *data;
    ipc_call *call;
    uint8_t inline_data[4097];
} ipc_next_request;

int64_t ipc_serve_next(ipc_serve_loop *loop, int answer_type, const void *answer,
                       size_t answer_size, ipc_next_request *next);

int ipc_call_respond(ipc_call *call, const void *data, size_t size, ipc_error *err);
int ipc_call_fail(ipc_call *call, const char *message, size_t size, ipc_error *err);
void *ipc_call_buffer(ipc_call *call, size_t capacity);
uint32_t ipc_call_connection(const ipc_call *call);

int ipc_server_open(ipc_server_t **server, const char *name,
                    const ipc_server_options *options, ipc_handler_fn handler,
                    void *user_data, ipc_error *err);
const char *ipc_server_address(const ipc_server_t *server);
int ipc_server_next_call(ipc_server_t *server, ipc_call **call, const uint8_t **request,
                         size_t *size, int timeout_ms, ipc_error *err);
int ipc_server_next_calls(ipc_server_t *server, ipc_call **finished, size_t finished_count,
                          ipc_call **calls, const uint8_t **requests, size_t *sizes,
                          size_t capacity, size_t *count, int timeout_ms, ipc_error *err);
void ipc_server_interrupt(ipc_server_t *server);
void ipc_call_finish(ipc_call *call);
intptr_t ipc_server_ready_handle(const ipc_server_t *server);
void ipc_server_stop(ipc_server_t *server);
int ipc_server_stop_timeout(ipc_server_t *server, int timeout_ms);
void ipc_server_forget(ipc_server_t *server);

/* ---- server node ---- */

enum ipc_console_stream {
    IPC_STREAM_STDOUT = 1,
    IPC_STREAM_STDERR = 2
};

enum ipc_exit_type {
    IPC_EXIT_COMPLETED = 0,
    IPC_EXIT_CANCELLED = 1,
    IPC_EXIT_CRASHED = 2,
    IPC_EXIT_BUSY = 3,
    IPC_EXIT_STALE = 4,
    IPC_EXIT_REFUSED = 5
};

enum ipc_node_signal {
    IPC_SIGNAL_HANGUP = 1,
    IPC_SIGNAL_INTERRUPT = 2,
    IPC_SIGNAL_QUIT = 3,
    IPC_SIGNAL_TERMINATE = 15,
    IPC_SIGNAL_WINDOW_CHANGED = 28
};

#define IPC_COMMAND_STDIN_TTY ...
#define IPC_COMMAND_STDOUT_TTY ...
#define IPC_COMMAND_STDERR_TTY ...
#define IPC_EXIT_PAYLOAD_SIZE 5

typedef struct ipc_command {
    uint32_t flags;
    uint32_t argc;
    char **argv;
    char *cwd;
    uint32_t envc;
    char **env;
    char *locale;
} ipc_command;

int ipc_command_encode(const ipc_command *command, uint8_t **out, size_t *out_size,
                       ipc_error *err);
int ipc_command_decode(const uint8_t *payload, size_t size, ipc_command *command,
                       ipc_error *err);
void ipc_command_free(ipc_command *command);
void ipc_free(void *buffer);
int ipc_console_write_decode(const uint8_t *payload, size_t size, int *stream,
                             const uint8_t **text, size_t *text_size, ipc_error *err);
size_t ipc_exit_encode(uint8_t *out, int32_t exit_code, uint8_t exit_type);
int ipc_exit_decode(const uint8_t *payload, size_t size, int32_t *exit_code,
                    uint8_t *exit_type, ipc_error *err);
int ipc_cancel_decode(const uint8_t *payload, size_t size, int *signal_code, ipc_error *err);
int ipc_call_type(const ipc_call *call);
int ipc_call_console_write(ipc_call *call, int stream, const void *text, size_t size,
                           ipc_error *err);
int ipc_call_exit(ipc_call *call, int32_t exit_code, uint8_t exit_type, ipc_error *err);
int ipc_call_cancelled(ipc_call *call);

/* ---- client ---- */

enum ipc_server_user {
    IPC_SERVER_USER_DEFAULT = 0,
    IPC_SERVER_USER_ANY = 1,
    IPC_SERVER_USER_UID = 2
};
#define IPC_INTERRUPT_SLICE_MS 50

typedef int (*ipc_interrupt_fn)(void *user_data);

typedef struct ipc_client_options {
    uint32_t max_message;
    uint8_t handshake[8];
    uint8_t version;
    uint8_t wait_if_not_found;
    int server_user;
    uint32_t server_uid;
    ipc_interrupt_fn interrupt_check;
    void *interrupt_data;
    int shm;
    uint32_t shm_slot_size;
    int shm_spin_us;
    int shm_responses_in_place;
} ipc_client_options;

void ipc_client_options_init(ipc_client_options *options);

enum ipc_server_state {
    IPC_STATE_LISTENING = 0,
    IPC_STATE_STARTING = 1,
    IPC_STATE_NOT_LISTENING = 2,
    IPC_STATE_INVALID_PATH = 3
};

int ipc_client_probe(const char *name, ipc_error *err);

int ipc_client_open(ipc_client_t **client, const char *name,
                    const ipc_client_options *options, int timeout_ms,
                    ipc_error *err);
int ipc_client_request(ipc_client_t *client, const void *request, size_t size,
                       const uint8_t **response, size_t *response_size,
                       int timeout_ms, ipc_error *err);
#define IPC_REPLY_INLINE_SIZE 4096

typedef struct ipc_client_reply {
    const char *data;
    size_t size;
    ipc_error error;
    char inline_data[4097];
} ipc_client_reply;

int64_t ipc_client_call(ipc_client_t *client, const void *request, size_t size, int timeout_ms,
                        ipc_client_reply *reply);
/* ---- client: zero-copy receive (issue 15) ---- */
int64_t ipc_client_call_into(ipc_client_t *client, const void *request, size_t size, void *out,
                             size_t capacity, int timeout_ms, ipc_client_reply *reply);
int ipc_client_write(ipc_client_t *client, const void *request, size_t size,
                     int timeout_ms, ipc_error *err);
int ipc_client_read(ipc_client_t *client, const uint8_t **response,
                    size_t *response_size, int timeout_ms, ipc_error *err);
int ipc_client_write_packet(ipc_client_t *client, uint8_t type, const void *data, size_t size,
                            int timeout_ms, ipc_error *err);
int ipc_client_read_packet(ipc_client_t *client, uint8_t *type, const uint8_t **payload,
                           size_t *size, int timeout_ms, ipc_error *err);
int ipc_client_send_command(ipc_client_t *client, const ipc_command *command, int timeout_ms,
                            ipc_error *err);
uint8_t ipc_client_version(const ipc_client_t *client);
int ipc_client_uses_shm(const ipc_client_t *client);
void ipc_client_close(ipc_client_t *client);
void ipc_client_shutdown(ipc_client_t *client);
void ipc_client_forget(ipc_client_t *client);

/* ---- the original single-header API ---- */

#define IPC_LEGACY_RESPONSE_CAPACITY ...
#define IPC_LEGACY_CONNECT_TIMEOUT_MS 2000

typedef enum ipc_receive_status_t {
    IPC_RECEIVE_STATUS_DONE,
    IPC_RECEIVE_STATUS_MORE_DATA,
    IPC_RECEIVE_STATUS_ERROR
} ipc_receive_status_t;

typedef void (*ipc_request_handler_t)(char const *request, void *user_data,
                                      char *response, size_t capacity);

ipc_server_t *ipc_server_start(char const *pipe_name,
                               ipc_request_handler_t request_handler,
                               void *user_data);
ipc_client_t *ipc_client_connect(char const *pipe_name);
void ipc_client_disconnect(ipc_client_t *connection);
bool ipc_client_send(ipc_client_t *connection, char const *message);
ipc_receive_status_t ipc_client_receive(ipc_client_t *connection, char *output,
                                        int output_size, int *received_size);

/* ---- callbacks implemented in Python (ipcfast/_native.py) ---- */

extern "Python" void _ipcfast_serve(void *, ipc_serve_loop *);
extern "Python" void _ipcfast_log(void *, int, const char *);
extern "Python" void _ipcfast_cancel(void *, ipc_call *);
extern "Python" int _ipcfast_interrupt_check(void *);
