/*
 * The wire codec, sans I/O: the handshake, packet headers and the
 * server-node payloads (COMMAND, CONSOLE_WRITE, EXIT; docs/protocol.md
 * section 10). Pure functions over buffers: no OS calls, so the fuzzer and
 * the test vectors exercise them directly, and the pure-Python codec
 * (_codec.py) mirrors them function for function.
 *
 * COMMAND payload, little-endian:
 *   u32 flags
 *   u32 argc, then argc strings
 *   string cwd
 *   u32 envc, then envc strings ("NAME=value")
 *   string locale
 * where a string is a u32 byte length followed by that many bytes, none of
 * them NUL (so every string is also a valid C string once decoded).
 */
#include "ipc_error.h"

#include <stdlib.h>
#include <string.h>

/* 0x00 + SHA-256("ipcfast\0" 0x01)[0:7]; the Python layer derives the same
 * bytes for key=None (tests check that they agree). */
const uint8_t IPC_DEFAULT_HANDSHAKE[IPC_HANDSHAKE_SIZE] = {0x00, 0xf7, 0x83, 0xca,
                                                           0x2a, 0x31, 0x7e, 0x38};

/* Every integer on the wire is a little-endian u32. */
static void put_u32(uint8_t *out, uint32_t value)
{
    out[0] = (uint8_t)value;
    out[1] = (uint8_t)(value >> 8);
    out[2] = (uint8_t)(value >> 16);
    out[3] = (uint8_t)(value >> 24);
}

static uint32_t get_u32(const uint8_t *in)
{
    return (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 24;
}

size_t ipc_handshake_encode_request(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                    const uint8_t value[IPC_HANDSHAKE_SIZE], uint8_t version)
{
    memcpy(out, value, IPC_HANDSHAKE_SIZE);
    out[IPC_HANDSHAKE_SIZE] = version;
    return IPC_HANDSHAKE_SIZE + 1;
}

size_t ipc_handshake_encode_reply(uint8_t out[IPC_HANDSHAKE_SIZE + 1],
                                  const uint8_t client_value[IPC_HANDSHAKE_SIZE], uint8_t version)
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

size_t ipc_packet_header_encode(uint8_t out[IPC_MAX_HEADER_SIZE], uint8_t type, uint32_t length,
                                uint8_t version)
{
    size_t at = 0;

    out[at++] = (uint8_t)((type & IPC_TYPE_MASK) | (version ? IPC_TYPE_EXTENDED : 0));
    if (version)
        out[at++] = version;
    put_u32(out + at, length);
    return at + 4;
}

ipc_verdict ipc_packet_header_parse(const uint8_t *data, size_t size, uint32_t max_message,
                                    uint8_t max_version, ipc_packet_header *header)
{
    uint8_t type;
    size_t at = 1;

    memset(header, 0, sizeof *header);
    if (size == 0)
        return IPC_VERDICT_NEED_MORE;
    if (data[0] & IPC_TYPE_RESERVED)
        return IPC_VERDICT_RESERVED_BIT;
    type = (uint8_t)(data[0] & IPC_TYPE_MASK);
    if (type < IPC_PACKET_REQUEST || type > IPC_PACKET_SHM_DECLINE ||
        (type > IPC_PACKET_CANCEL && max_version < IPC_PROTOCOL_VERSION_SHM))
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
    header->length = get_u32(data + at);
    if (header->length > max_message)
        return IPC_VERDICT_TOO_LARGE;
    return IPC_VERDICT_OK;
}

void ipc_free(void *buffer)
{
    free(buffer);
}

/* ---- COMMAND: encoding ---------------------------------------------------- */

/* Adds the encoded size of one string to *total; 0 if it would overflow the
 * 4-byte length fields. */
static int add_string_size(size_t *total, const char *text)
{
    size_t length = strlen(text);

    if (length > 0xFFFFFFFFu || *total > (size_t)0xFFFFFFFFu - 4 - length)
        return 0;
    *total += 4 + length;
    return 1;
}

static uint8_t *put_string(uint8_t *at, const char *text)
{
    size_t length = strlen(text);

    put_u32(at, (uint32_t)length);
    memcpy(at + 4, text, length);
    return at + 4 + length;
}

static int check_string_list(uint32_t count, char *const *list, const char *what, ipc_error *err)
{
    uint32_t i;

    if (count && !list)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_command_encode: %s is NULL", what);
    for (i = 0; i < count; i++)
        if (!list[i])
            return ipc__fail(err, IPC_E_INVALID, 0, "ipc_command_encode: %s[%lu] is NULL", what,
                             (unsigned long)i);
    return IPC_OK;
}

static int command_size(const ipc_command *c, size_t *total)
{
    uint32_t i;
    int fits = 1;

    *total = 4 + 4 + 4; /* flags, argc, envc */
    for (i = 0; i < c->argc && fits; i++)
        fits = add_string_size(total, c->argv[i]);
    for (i = 0; i < c->envc && fits; i++)
        fits = add_string_size(total, c->env[i]);
    return fits && add_string_size(total, c->cwd) && add_string_size(total, c->locale);
}

int ipc_command_encode(const ipc_command *command, uint8_t **out, size_t *out_size, ipc_error *err)
{
    uint8_t *buffer, *at;
    size_t total = 0;
    uint32_t i;
    int r;

    if (!command || !out || !out_size)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_command_encode: NULL argument");
    *out = NULL;
    *out_size = 0;
    if (!command->cwd || !command->locale)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_command_encode: NULL cwd or locale");
    r = check_string_list(command->argc, command->argv, "argv", err);
    if (r == IPC_OK)
        r = check_string_list(command->envc, command->env, "env", err);
    if (r != IPC_OK)
        return r;
    if (!command_size(command, &total))
        return ipc__fail(err, IPC_E_TOO_LARGE, 0, "the command does not fit in 4 GiB");
    buffer = (uint8_t *)malloc(total ? total : 1);
    if (!buffer)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a %lu-byte command",
                         (unsigned long)total);
    at = buffer;
    put_u32(at, command->flags);
    put_u32(at + 4, command->argc);
    at += 8;
    for (i = 0; i < command->argc; i++)
        at = put_string(at, command->argv[i]);
    at = put_string(at, command->cwd);
    put_u32(at, command->envc);
    at += 4;
    for (i = 0; i < command->envc; i++)
        at = put_string(at, command->env[i]);
    put_string(at, command->locale);
    *out = buffer;
    *out_size = total;
    return IPC_OK;
}

/* ---- COMMAND: decoding ---------------------------------------------------- */

typedef struct reader {
    const uint8_t *at;
    size_t left;
} reader;

static int read_u32(reader *r, uint32_t *value, const char *what, ipc_error *err)
{
    if (r->left < 4)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed COMMAND: it ends inside %s", what);
    *value = get_u32(r->at);
    r->at += 4;
    r->left -= 4;
    return IPC_OK;
}

static int read_string(reader *r, char **out, const char *what, ipc_error *err)
{
    uint32_t length = 0; /* set by read_u32 on success; gcc -O3 cannot see that */
    int rc = read_u32(r, &length, what, err);

    if (rc != IPC_OK)
        return rc;
    if (length > r->left)
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "malformed COMMAND: %s is %lu bytes but only %lu remain", what,
                         (unsigned long)length, (unsigned long)r->left);
    if (memchr(r->at, 0, length))
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed COMMAND: %s contains a NUL byte", what);
    *out = (char *)malloc((size_t)length + 1);
    if (!*out)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory decoding a command");
    memcpy(*out, r->at, length);
    (*out)[length] = '\0';
    r->at += length;
    r->left -= length;
    return IPC_OK;
}

/* A count is checked against the bytes left (each string takes at least
 * 4) before anything is allocated for it, so a forged count cannot make
 * the decoder allocate more than the payload's size. */
static int read_string_list(reader *r, uint32_t *count, char ***list, const char *what,
                            ipc_error *err)
{
    uint32_t n = 0, i; /* n: set by read_u32 on success */
    int rc = read_u32(r, &n, what, err);

    if (rc != IPC_OK)
        return rc;
    if (n > r->left / 4)
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "malformed COMMAND: %lu %s entries cannot fit in %lu bytes",
                         (unsigned long)n, what, (unsigned long)r->left);
    *list = (char **)calloc(n ? n : 1, sizeof **list);
    if (!*list)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory decoding a command");
    for (i = 0; i < n; i++) {
        rc = read_string(r, &(*list)[i], what, err);
        if (rc != IPC_OK)
            break;
        *count = i + 1; /* what ipc_command_free must free */
    }
    return rc;
}

int ipc_command_decode(const uint8_t *payload, size_t size, ipc_command *command, ipc_error *err)
{
    reader r;
    int rc;

    if (!command || (!payload && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_command_decode: NULL argument");
    memset(command, 0, sizeof *command);
    r.at = payload;
    r.left = size;
    rc = read_u32(&r, &command->flags, "flags", err);
    if (rc == IPC_OK)
        rc = read_string_list(&r, &command->argc, &command->argv, "argv", err);
    if (rc == IPC_OK)
        rc = read_string(&r, &command->cwd, "cwd", err);
    if (rc == IPC_OK)
        rc = read_string_list(&r, &command->envc, &command->env, "env", err);
    if (rc == IPC_OK)
        rc = read_string(&r, &command->locale, "locale", err);
    if (rc == IPC_OK && r.left)
        rc = ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed COMMAND: %lu bytes after the last field",
                       (unsigned long)r.left);
    if (rc == IPC_OK && command->argc == 0)
        rc = ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed COMMAND: argv is empty");
    return rc;
}

static void free_list(char **list, uint32_t count)
{
    uint32_t i;

    if (!list)
        return;
    for (i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

void ipc_command_free(ipc_command *command)
{
    if (!command)
        return;
    free_list(command->argv, command->argc);
    free_list(command->env, command->envc);
    free(command->cwd);
    free(command->locale);
    memset(command, 0, sizeof *command);
}

/* ---- CONSOLE_WRITE and EXIT -------------------------------------------- */

int ipc_console_write_decode(const uint8_t *payload, size_t size, int *stream, const uint8_t **text,
                             size_t *text_size, ipc_error *err)
{
    if (!stream || !text || !text_size || (!payload && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_console_write_decode: NULL argument");
    if (size == 0)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed CONSOLE_WRITE: empty payload");
    if (payload[0] != IPC_STREAM_STDOUT && payload[0] != IPC_STREAM_STDERR)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed CONSOLE_WRITE: stream %u",
                         (unsigned)payload[0]);
    *stream = payload[0];
    *text = payload + 1;
    *text_size = size - 1;
    return IPC_OK;
}

size_t ipc_exit_encode(uint8_t out[IPC_EXIT_PAYLOAD_SIZE], int32_t exit_code, uint8_t exit_type)
{
    /* Two's complement on the wire, whatever the host does. */
    put_u32(out, (uint32_t)exit_code);
    out[4] = exit_type;
    return IPC_EXIT_PAYLOAD_SIZE;
}

int ipc_exit_decode(const uint8_t *payload, size_t size, int32_t *exit_code, uint8_t *exit_type,
                    ipc_error *err)
{
    uint32_t raw;

    if (!exit_code || !exit_type || (!payload && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_exit_decode: NULL argument");
    if (size != IPC_EXIT_PAYLOAD_SIZE)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed EXIT: %lu bytes instead of %d",
                         (unsigned long)size, IPC_EXIT_PAYLOAD_SIZE);
    raw = get_u32(payload);
    /* Portable conversion of the two's complement value back to int32. */
    *exit_code = raw <= 0x7FFFFFFFu ? (int32_t)raw : -(int32_t)(0xFFFFFFFFu - raw) - 1;
    *exit_type = payload[4];
    return IPC_OK;
}

int ipc_cancel_decode(const uint8_t *payload, size_t size, int *signal_code, ipc_error *err)
{
    if (!signal_code || (!payload && size))
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_cancel_decode: NULL argument");
    if (size == 0) {
        *signal_code = IPC_SIGNAL_INTERRUPT;
        return IPC_OK;
    }
    if (size != 1)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "malformed CANCEL: %lu bytes instead of 0 or 1",
                         (unsigned long)size);
    switch (payload[0]) {
    case IPC_SIGNAL_HANGUP:
    case IPC_SIGNAL_INTERRUPT:
    case IPC_SIGNAL_QUIT:
    case IPC_SIGNAL_TERMINATE:
    case IPC_SIGNAL_WINDOW_CHANGED: *signal_code = payload[0]; return IPC_OK;
    default:
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "CANCEL with an unknown signal %u",
                         (unsigned)payload[0]);
    }
}

/* ---- shared-memory setup (docs/protocol.md 11.2) ------------------------ */

uint32_t ipc_shm_region_size(uint32_t slot_size)
{
    if (slot_size < IPC_SHM_MIN_SLOT || slot_size > IPC_SHM_MAX_SLOT)
        return 0;
    return IPC_SHM_HEADER_SIZE + 2u * slot_size;
}

size_t ipc_shm_setup_encode(uint8_t out[IPC_SHM_SETUP_SIZE], const ipc_shm_setup *setup)
{
    put_u32(out, setup->layout);
    put_u32(out + 4, setup->region_size);
    put_u32(out + 8, setup->slot_size);
    put_u32(out + 12, setup->flags);
    return IPC_SHM_SETUP_SIZE;
}

int ipc_shm_setup_decode(const uint8_t *payload, size_t size, ipc_shm_setup *setup, ipc_error *err)
{
    memset(setup, 0, sizeof *setup);
    if (size != IPC_SHM_SETUP_SIZE)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "a SHM_SETUP payload has %lu bytes, not %d",
                         (unsigned long)size, IPC_SHM_SETUP_SIZE);
    setup->layout = get_u32(payload);
    setup->region_size = get_u32(payload + 4);
    setup->slot_size = get_u32(payload + 8);
    setup->flags = get_u32(payload + 12);
    if (setup->layout != IPC_SHM_LAYOUT)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "unknown shared-memory layout %lu",
                         (unsigned long)setup->layout);
    if (setup->flags != 0)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "unknown shared-memory flags 0x%lx",
                         (unsigned long)setup->flags);
    if (ipc_shm_region_size(setup->slot_size) == 0)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "shared-memory slot size %lu out of range",
                         (unsigned long)setup->slot_size);
    if (setup->region_size != ipc_shm_region_size(setup->slot_size))
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "shared-memory region size %lu does not match slot size %lu",
                         (unsigned long)setup->region_size, (unsigned long)setup->slot_size);
    return IPC_OK;
}
