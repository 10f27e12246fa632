/*
 * The buffered packet stream over one platform connection: whole packets
 * out of a byte stream, handed out in place (no copy), and packets written
 * in one gathered write. Used by the server's connections (as the socket
 * data path) and by the client. Time budgets live here too: every wait in
 * the core is a read or a write with a deadline.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

void ipc__stream_free(ipc_stream *s)
{
    free(s->buf);
    s->buf = NULL;
    s->capacity = s->start = s->end = s->packet_size = 0;
}

/* Makes room for the next read towards `total` unread bytes (plus one
 * terminator byte). The buffer grows with the data that arrives, doubling
 * but never past what the packet needs: a peer that announces a large
 * packet and stalls costs what it sent (at most twice), not what it
 * announced. */
static int stream_reserve(ipc_stream *s, size_t total, ipc_error *err)
{
    size_t unread = s->end - s->start;
    size_t wanted = total + 1;
    uint8_t *grown;
    size_t capacity;

    if (s->start + wanted <= s->capacity)
        return IPC_OK; /* the packet fits where it starts */
    if (s->start > 0) {
        /* Moves only the packet's first bytes, once per packet. */
        memmove(s->buf, s->buf + s->start, unread);
        s->start = 0;
        s->end = unread;
    }
    if (wanted <= s->capacity || s->end + 1 < s->capacity)
        return IPC_OK; /* it fits now, or there is room to read into */
    /* Full: double, capped at what the packet needs (a buffer never
     * shrinks here: wanted > capacity whenever it is full). */
    capacity = s->capacity ? s->capacity * 2 : IPC__STREAM_INITIAL_CAPACITY;
    if (capacity < s->capacity)
        capacity = wanted; /* the doubling wrapped */
    if (s->capacity && capacity > wanted && wanted > s->capacity)
        capacity = wanted;
    grown = (uint8_t *)realloc(s->buf, capacity);
    if (!grown)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a %lu-byte receive buffer",
                         (unsigned long)capacity);
    s->buf = grown;
    s->capacity = capacity;
    return IPC_OK;
}

int64_t ipc__deadline_after(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
}

int ipc__remaining_ms(int64_t deadline)
{
    int64_t left;

    if (deadline < 0)
        return -1;
    left = deadline - ipc_plat_now_ms();
    if (left <= 0)
        return 0;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

/* One read into the free space, leaving a byte for the terminator. A slice
 * read passes no error struct: an idle server connection times out twice a
 * second, and formatting a message for each would allocate for nothing. Its
 * rare real failures get a text naming the result instead of the OS's. */
static int read_some(ipc_stream *s, int wait, int sliced, ipc_error *err)
{
    size_t got = 0;
    int r = ipc_plat_read(s->conn, s->buf + s->end, s->capacity - s->end - 1, &got, wait,
                          sliced ? NULL : err);

    if (r == IPC_OK)
        s->end += got;
    if (r == IPC_OK || !sliced)
        return r;
    if (r == IPC_E_TIMEOUT)
        return IPC_OK; /* only the slice ended: the loop checks the deadline */
    if (r == IPC_E_CLOSED)
        return ipc__fail(err, r, 0, "the peer closed the connection");
    return ipc__fail(err, r, 0, "reading from the connection failed (%s)", ipc_result_name(r));
}

int ipc__stream_fill(ipc_stream *s, size_t total, int64_t deadline, int slice_ms, ipc_error *err)
{
    int r = IPC_OK;

    while (r == IPC_OK && s->end - s->start < total) {
        int wait = ipc__remaining_ms(deadline);

        if (wait == 0)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "timed out waiting for data");
        if (slice_ms >= 0 && (wait < 0 || wait > slice_ms))
            wait = slice_ms;
        r = stream_reserve(s, total, err);
        if (r == IPC_OK)
            r = read_some(s, wait, slice_ms >= 0, err);
    }
    /* Reads leave the last byte free, so buf[start + total] exists for the
     * terminator. */
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
        if (s->capacity > IPC__STREAM_KEEP_CAPACITY) {
            /* One huge message must not pin its buffer for the
             * connection's lifetime. */
            free(s->buf);
            s->buf = NULL;
            s->capacity = 0;
        }
    }
}

/* Reads one whole packet. On a bad header returns IPC_E_PROTOCOL or
 * IPC_E_TOO_LARGE with packet->verdict (and header fields) set, having
 * allocated nothing for the payload. */
int ipc__stream_read_packet(ipc_stream *s, uint32_t max_message, uint8_t max_version,
                            int64_t deadline, int slice_ms, ipc_packet *packet, ipc_error *err)
{
    size_t total;
    int r;

    stream_consume(s);
    for (;;) {
        /* After a huge message the buffer is freed: NULL + 0 is undefined. */
        packet->verdict = ipc_packet_header_parse(s->buf ? s->buf + s->start : NULL,
                                                  s->end - s->start, max_message, max_version,
                                                  &packet->header);
        if (packet->verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = ipc__stream_fill(s, s->end - s->start + 1, deadline, slice_ms, err);
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
    r = ipc__stream_fill(s, total, deadline, slice_ms, err);
    if (r != IPC_OK)
        return r;
    packet->payload = s->buf + s->start + packet->header.header_size;
    s->packet_size = total;
    s->saved_byte = s->buf[s->start + total];
    s->buf[s->start + total] = 0;
    return IPC_OK;
}

/* ---- receiving straight into a caller's buffer (the client's zero copy) --- */

/* Like the start of ipc__stream_read_packet: the previous packet is
 * consumed and the next header is parsed, but nothing of the payload is
 * waited for, so the caller may read it into a buffer of its own
 * (ipc__stream_take). A failure is reported as ipc__stream_read_packet
 * reports it. */
int ipc__stream_read_header(ipc_stream *s, uint32_t max_message, uint8_t max_version,
                            int64_t deadline, int slice_ms, ipc_packet *packet, ipc_error *err)
{
    int r;

    stream_consume(s);
    memset(packet, 0, sizeof *packet);
    for (;;) {
        packet->verdict = ipc_packet_header_parse(s->buf ? s->buf + s->start : NULL,
                                                  s->end - s->start, max_message, max_version,
                                                  &packet->header);
        if (packet->verdict != IPC_VERDICT_NEED_MORE)
            break;
        r = ipc__stream_fill(s, s->end - s->start + 1, deadline, slice_ms, err);
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
    return IPC_OK;
}

/* After ipc__stream_read_header: drops the header and moves the payload
 * bytes already buffered (at most `size`) into `out`; returns how many. The
 * rest of the payload is still on the connection. */
size_t ipc__stream_take(ipc_stream *s, const ipc_packet_header *header, uint8_t *out, size_t size)
{
    size_t buffered;

    s->start += header->header_size;
    buffered = s->end - s->start;
    if (buffered > size)
        buffered = size;
    if (buffered)
        memcpy(out, s->buf + s->start, buffered);
    s->start += buffered;
    if (s->start == s->end)
        s->start = s->end = 0;
    return buffered;
}

/* Writes a header and a payload made of a prefix and a body, in one write. */
int ipc__write_packet_parts(ipc_plat_conn *conn, uint8_t type, const void *prefix,
                            size_t prefix_size, const void *body, size_t body_size, int timeout_ms,
                            ipc_error *err)
{
    uint8_t header[IPC_MAX_HEADER_SIZE];
    ipc_plat_buf parts[3];
    size_t count = 1;

    if (body_size > 0xFFFFFFFFu - prefix_size || prefix_size > 0xFFFFFFFFu)
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a packet of %lu bytes does not fit the "
                         "4-byte length field",
                         (unsigned long)(prefix_size + body_size));
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

/* ---- the socket stream as a server data path ---------------------------- */

static int stream_path_read(void *path, uint32_t max_message, uint8_t max_version, int slice_ms,
                            ipc_packet *packet, ipc_error *err)
{
    return ipc__stream_read_packet((ipc_stream *)path, max_message, max_version, -1, slice_ms,
                                   packet, err);
}

static int stream_path_write(void *path, uint8_t type, const void *prefix, size_t prefix_size,
                             const void *body, size_t body_size, int timeout_ms, ipc_error *err)
{
    return ipc__write_packet_parts(((ipc_stream *)path)->conn, type, prefix, prefix_size, body,
                                   body_size, timeout_ms, err);
}

const ipc_datapath_ops ipc__stream_datapath = {
    .read_packet = stream_path_read,
    .write_packet = stream_path_write,
};
