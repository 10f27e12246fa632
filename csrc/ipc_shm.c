/*
 * The shared-memory data path (docs/protocol.md 11): after a SHM_SETUP /
 * SHM_ACCEPT exchange, requests and responses travel through a region both
 * processes map, one slot per direction (request and response strictly
 * alternate on a connection), with futex wake-ups on shared words and a
 * bounded spin before sleeping. The socket stays beside it: messages larger
 * than a slot travel on it (announced in the slot's header), and it is how
 * a dead or stopping peer is noticed.
 *
 * The region is untrusted: the peer may write anything at any time. Each
 * word is read once into a local and checked; payloads are copied out
 * before they are handed on, so nothing the peer does later changes what
 * was validated. The one exception is asked for by the link's owner
 * (lend_type): a REQUEST or RESPONSE payload that the owner copies at once
 * itself is handed out in place, bounds checked like the rest; the peer
 * can then change only bytes it sent.
 */
#include "ipc_internal.h"

#include <stdlib.h>
#include <string.h>

/* Region layout 1 (docs/protocol.md 11.3), in 32-bit words and bytes. */
#define SHM_MAGIC 0x4D485349u            /* "ISHM" in little-endian bytes */
#define SHM_CHANNEL_REQUEST_OFFSET 64u   /* client -> server header */
#define SHM_CHANNEL_RESPONSE_OFFSET 128u /* server -> client header */
enum shm_word {
    W_SEQ = 0,      /* futex word: bumped by the writer once a message is in place */
    W_TYPE = 1,     /* packet type of the message */
    W_LENGTH = 2,   /* payload bytes in the slot */
    W_FLAGS = 3,    /* SHM_ON_SOCKET */
    W_SLEEPING = 4, /* the reader is (about to be) in a futex wait */
    W_CPU = 5       /* the writer's CPU when it published, 0xFFFFFFFF unknown */
};
#define SHM_ON_SOCKET 1u /* the message is the next packet on the socket */

/* A waiting thread checks the socket at least this often, so a peer that
 * died (or a stop) is noticed within this time, never a hang. After a
 * second without a message the wait is idle and checks only every
 * IPC_WAKE_INTERVAL_MS, as a socket connection's read wakes: 32 idle
 * connections then cost what they cost on the socket path. */
#define SHM_LIVENESS_MS 100
#define SHM_IDLE_AFTER_MS 1000

static uint32_t *header_word(const ipc_plat_shm *region, uint32_t offset)
{
    return (uint32_t *)((uint8_t *)region->base + offset);
}

static void link_wire(ipc_shm_link *l, int is_client)
{
    uint32_t *request = header_word(&l->region, SHM_CHANNEL_REQUEST_OFFSET);
    uint32_t *response = header_word(&l->region, SHM_CHANNEL_RESPONSE_OFFSET);
    uint8_t *request_data = (uint8_t *)l->region.base + IPC_SHM_HEADER_SIZE;
    uint8_t *response_data = request_data + l->slot_size;

    l->in = is_client ? response : request;
    l->out = is_client ? request : response;
    l->in_data = is_client ? response_data : request_data;
    l->out_data = is_client ? request_data : response_data;
    l->in_wake = &l->region.wake[is_client ? IPC_PLAT_SHM_RESPONSE : IPC_PLAT_SHM_REQUEST];
    l->out_wake = &l->region.wake[is_client ? IPC_PLAT_SHM_REQUEST : IPC_PLAT_SHM_RESPONSE];
}

void ipc__shm_free(ipc_shm_link *link)
{
    if (!link)
        return;
    if (link->wakes_on_interrupt)
        ipc_plat_conn_wake_on_interrupt(link->stream->conn, NULL, NULL);
    ipc_plat_shm_release(&link->region);
    free(link->copy);
    free(link);
}

/* ---- waiting --------------------------------------------------------------- */

static int arrived(const ipc_shm_link *l)
{
    return ipc_plat_word_load(&l->in[W_SEQ]) != l->in_seen;
}

/* A server spins on at most as many links at once as it has CPUs: a
 * spinner beyond that only takes the CPU from a thread that has a request
 * to answer (16 clients' threads spinning on one CPU served fewer requests
 * than 4 did). 0: no room, go to sleep at once. */
static int claim_spinner(const ipc_shm_link *l)
{
    for (;;) {
        uint32_t now = ipc_plat_word_load(l->spinners);

        if (now >= l->max_spinners)
            return 0;
        if (ipc_plat_word_swap_if(l->spinners, now, now + 1))
            return 1;
    }
}

static void release_spinner(const ipc_shm_link *l)
{
    for (;;) {
        uint32_t now = ipc_plat_word_load(l->spinners);

        if (ipc_plat_word_swap_if(l->spinners, now, now - 1))
            return;
    }
}

static int spin_until(const ipc_shm_link *l, int64_t until)
{
    do {
        int i;

        for (i = 0; i < 64; i++) {
            if (arrived(l))
                return 1;
            ipc_plat_cpu_relax();
        }
    } while (ipc_plat_now_us() < until);
    return 0;
}

/* Spinning only pays while the peer runs on another CPU: on ours it would
 * only delay the peer we wait for. */
static int spin_for_message(const ipc_shm_link *l)
{
    int cpu, got;

    if (l->spin_us <= 0)
        return 0;
    cpu = ipc_plat_current_cpu();
    if (cpu >= 0 && (uint32_t)cpu == ipc_plat_word_load(&l->in[W_CPU]))
        return 0;
    if (l->spinners && !claim_spinner(l))
        return 0;
    got = spin_until(l, ipc_plat_now_us() + l->spin_us);
    if (l->spinners)
        release_spinner(l);
    return got;
}

/* Waits until the peer publishes, the deadline passes (IPC_E_TIMEOUT) or
 * the socket says the peer is gone or we are stopping (IPC_E_CLOSED). */
static int wait_for_message(ipc_shm_link *l, int64_t deadline, ipc_error *err)
{
    int64_t idle_at;

    if (arrived(l) || spin_for_message(l))
        return IPC_OK;
    idle_at = ipc_plat_now_ms() + SHM_IDLE_AFTER_MS;
    for (;;) {
        int wait = ipc__remaining_ms(deadline);
        int slice = ipc_plat_now_ms() < idle_at ? SHM_LIVENESS_MS : IPC_WAKE_INTERVAL_MS;

        if (wait == 0)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "timed out waiting for data");
        if (wait < 0 || wait > slice)
            wait = slice;
        /* Announce the sleep, then look once more: the writer stores the
         * sequence before it reads W_SLEEPING, so one of us sees the other. */
        ipc_plat_word_store(&l->in[W_SLEEPING], 1);
        if (!arrived(l) && !ipc_plat_conn_interrupted(l->stream->conn))
            ipc_plat_word_wait(l->in_wake, &l->in[W_SEQ], l->in_seen, wait);
        ipc_plat_word_store(&l->in[W_SLEEPING], 0);
        if (arrived(l))
            return IPC_OK;
        /* A peer publishes its last message before it closes: look once
         * more after seeing the close, or that message would be lost. */
        if (ipc_plat_conn_closed(l->stream->conn))
            return arrived(l) ? IPC_OK
                              : ipc__fail(err, IPC_E_CLOSED, 0, "the peer closed the connection");
    }
}

int ipc__shm_wait(ipc_shm_link *l, int64_t deadline, ipc_error *err)
{
    return wait_for_message(l, deadline, err);
}

/* ---- reading and writing ---------------------------------------------------- */

static int copy_out(ipc_shm_link *l, uint32_t length, ipc_error *err)
{
    if (l->copy_capacity < (size_t)length + 1) {
        size_t capacity = (size_t)length + 1 < 4096 ? 4096 : (size_t)length + 1;
        uint8_t *grown = (uint8_t *)realloc(l->copy, capacity);

        if (!grown)
            return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a %lu-byte message",
                             (unsigned long)length);
        l->copy = grown;
        l->copy_capacity = capacity;
    }
    memcpy(l->copy, l->in_data, length);
    l->copy[length] = 0;
    return IPC_OK;
}

/* Waits for the next message and takes its header: each word loaded once
 * into a local (the peer may change them meanwhile) and checked, so nothing
 * after this reads the header again. *on_socket: the message was announced
 * and comes on the socket (packet->header has its type only); otherwise the
 * length is within the slot and max_message and the payload is in_data. */
static int take_header(ipc_shm_link *l, uint32_t max_message, int64_t deadline, ipc_packet *packet,
                       int *on_socket, ipc_error *err)
{
    uint32_t seq, type, length, flags;
    int r;

    memset(packet, 0, sizeof *packet);
    packet->verdict = IPC_VERDICT_OK;
    *on_socket = 0;
    r = wait_for_message(l, deadline, err);
    if (r != IPC_OK)
        return r;
    seq = ipc_plat_word_load(&l->in[W_SEQ]);
    type = ipc_plat_word_load(&l->in[W_TYPE]);
    length = ipc_plat_word_load(&l->in[W_LENGTH]);
    flags = ipc_plat_word_load(&l->in[W_FLAGS]);
    if (seq != l->in_seen + 1)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "shared memory: sequence %lu after %lu",
                         (unsigned long)seq, (unsigned long)l->in_seen);
    l->in_seen = seq;
    if (type < IPC_PACKET_REQUEST || type > IPC_PACKET_SHM_DECLINE || (flags & ~SHM_ON_SOCKET))
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "shared memory: bad message header (type %lu, flags 0x%lx)",
                         (unsigned long)type, (unsigned long)flags);
    packet->header.type = (uint8_t)type;
    if (flags & SHM_ON_SOCKET) {
        *on_socket = 1;
        return IPC_OK;
    }
    packet->header.length = length;
    if (length > l->slot_size)
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "shared memory: a length of %lu bytes exceeds the %lu-byte slot",
                         (unsigned long)length, (unsigned long)l->slot_size);
    if (length > max_message) {
        packet->verdict = IPC_VERDICT_TOO_LARGE;
        return ipc__fail(err, IPC_E_TOO_LARGE, 0,
                         "a packet of %lu bytes exceeds max_message (%lu bytes)",
                         (unsigned long)length, (unsigned long)max_message);
    }
    return IPC_OK;
}

int ipc__shm_read(ipc_shm_link *l, uint32_t max_message, uint8_t max_version, int64_t deadline,
                  ipc_packet *packet, ipc_error *err)
{
    int on_socket;
    int r = take_header(l, max_message, deadline, packet, &on_socket, err);

    if (r != IPC_OK)
        return r;
    if (on_socket) {
        uint8_t type = packet->header.type;

        r = ipc__stream_read_packet(l->stream, max_message, max_version, deadline, SHM_LIVENESS_MS,
                                    packet, err);
        if (r == IPC_OK && packet->header.type != type)
            r = ipc__fail(err, IPC_E_PROTOCOL, 0, "shared memory: announced type %u, got %u",
                          (unsigned)type, (unsigned)packet->header.type);
        return r;
    }
    if (packet->header.type == l->lend_type) {
        packet->payload = l->in_data; /* in place: see lend_type */
        return IPC_OK;
    }
    r = copy_out(l, packet->header.length, err);
    if (r == IPC_OK)
        packet->payload = l->copy;
    return r;
}

/* The client's zero-copy receive (ipc_client_call_into): like
 * ipc__shm_read, but a message in the slot that fits `capacity` is copied
 * once, straight from the slot into `out` (packet->payload is then `out`,
 * with no terminator); one that does not fit goes to the private copy as
 * usual. A message announced on the socket is left there: *on_socket is
 * set, packet->header.type says what to expect, and the caller reads it. */
int ipc__shm_read_into(ipc_shm_link *l, uint32_t max_message, int64_t deadline, uint8_t *out,
                       size_t capacity, ipc_packet *packet, int *on_socket, ipc_error *err)
{
    int r = take_header(l, max_message, deadline, packet, on_socket, err);
    uint32_t length = packet->header.length;

    if (r != IPC_OK || *on_socket)
        return r;
    if (packet->header.type == IPC_PACKET_RESPONSE && length <= capacity) {
        if (length)
            memcpy(out, l->in_data, length);
        packet->payload = out;
        return IPC_OK;
    }
    r = copy_out(l, length, err);
    if (r == IPC_OK)
        packet->payload = l->copy;
    return r;
}

/* A message larger than the slot is announced first and written on the
 * socket after: the reader then drains the socket while we write, which a
 * packet larger than the socket's buffer needs (announcing it only once it
 * is written would wait for a reader that waits on the region). */
int ipc__shm_write(ipc_shm_link *l, uint8_t type, const void *prefix, size_t prefix_size,
                   const void *body, size_t body_size, int timeout_ms, ipc_error *err)
{
    size_t total = prefix_size + body_size;
    int on_socket = total > l->slot_size;
    int cpu = ipc_plat_current_cpu();

    if (!on_socket) {
        if (prefix_size)
            memcpy(l->out_data, prefix, prefix_size);
        if (body_size)
            memcpy(l->out_data + prefix_size, body, body_size);
    }
    ipc_plat_word_store(&l->out[W_TYPE], type);
    ipc_plat_word_store(&l->out[W_LENGTH], (uint32_t)total);
    ipc_plat_word_store(&l->out[W_FLAGS], on_socket ? SHM_ON_SOCKET : 0);
    ipc_plat_word_store(&l->out[W_CPU], cpu < 0 ? 0xFFFFFFFFu : (uint32_t)cpu);
    ipc_plat_word_store(&l->out[W_SEQ], ++l->out_sent);
    if (ipc_plat_word_load(&l->out[W_SLEEPING]))
        ipc_plat_word_wake(l->out_wake, &l->out[W_SEQ]);
    if (!on_socket)
        return IPC_OK;
    return ipc__write_packet_parts(l->stream->conn, type, prefix, prefix_size, body, body_size,
                                   timeout_ms, err);
}

/* ---- the server's data path --------------------------------------------------- */

static int shm_path_read(void *path, uint32_t max_message, uint8_t max_version, int slice_ms,
                         ipc_packet *packet, ipc_error *err)
{
    (void)slice_ms; /* waits are sliced by SHM_LIVENESS_MS */
    return ipc__shm_read((ipc_shm_link *)path, max_message, max_version, -1, packet, err);
}

static int shm_path_write(void *path, uint8_t type, const void *prefix, size_t prefix_size,
                          const void *body, size_t body_size, int timeout_ms, ipc_error *err)
{
    return ipc__shm_write((ipc_shm_link *)path, type, prefix, prefix_size, body, body_size,
                          timeout_ms, err);
}

const ipc_datapath_ops ipc__shm_datapath = {
    .read_packet = shm_path_read,
    .write_packet = shm_path_write,
};

/* ---- negotiation --------------------------------------------------------------- */

/* The response slot starts slot_size bytes after the request slot. With a
 * slot size near a multiple of the page size both slots have the same
 * offsets within their pages, and a copy from one to the other (a handler
 * that answers with its request, or part of it, in place) runs into 4K
 * aliasing: every load waits on the store just made to an address with the
 * same low 12 bits. Measured: 1 MiB echoed slot to slot 3x slower on most
 * connections (335-350 us against 100-120 us, split placement). Half a page
 * more puts the two as far apart as they can be; a slot is "at least"
 * the size asked for. */
#define SHM_PAGE 4096u
static uint32_t unaliased_slot(uint32_t slot_size)
{
    uint32_t within = slot_size % SHM_PAGE;

    if ((within >= 512 && within <= SHM_PAGE - 512) || slot_size + SHM_PAGE / 2 > IPC_SHM_MAX_SLOT)
        return slot_size; /* clear of it already, or no room above (never smaller) */
    return slot_size + SHM_PAGE / 2;
}

static ipc_shm_link *link_new(uint32_t slot_size, int spin_us, ipc_stream *stream)
{
    ipc_shm_link *l = (ipc_shm_link *)calloc(1, sizeof *l);

    if (!l)
        return NULL;
    l->region.handle = -1;
    l->slot_size = slot_size;
    l->spin_us = spin_us;
    l->stream = stream;
    return l;
}

int ipc__shm_offer(ipc_stream *stream, uint32_t slot_size, int spin_us, uint8_t version,
                   uint32_t max_message, int64_t deadline, ipc_shm_link **out, ipc_error *err)
{
    uint8_t header[IPC_MAX_HEADER_SIZE], payload[IPC_SHM_SETUP_SIZE + IPC_PLAT_SHM_RECORD_MAX];
    ipc_shm_setup setup;
    ipc_plat_buf parts[2];
    ipc_packet answer;
    ipc_shm_link *l;
    int r;

    *out = NULL;
    if (slot_size == 0)
        slot_size = IPC_SHM_DEFAULT_SLOT;
    if (ipc_shm_region_size(slot_size) == 0)
        return ipc__fail(err, IPC_E_INVALID, 0, "shm_slot_size must be %u..%u bytes",
                         IPC_SHM_MIN_SLOT, IPC_SHM_MAX_SLOT);
    if (slot_size >= SHM_PAGE)
        slot_size = unaliased_slot(slot_size);
    if (!ipc_plat_shm_supported())
        return IPC_OK; /* nothing to offer: the socket path it is */
    l = link_new(slot_size, spin_us, stream);
    if (!l)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a shared-memory link");
    r = ipc_plat_shm_create(&l->region, ipc_shm_region_size(slot_size), err);
    if (r != IPC_OK) {
        ipc__shm_free(l);
        return r;
    }
    ipc_plat_word_store(header_word(&l->region, 0), SHM_MAGIC);
    ipc_plat_word_store(header_word(&l->region, 4), IPC_SHM_LAYOUT);
    ipc_plat_word_store(header_word(&l->region, 8), slot_size);
    setup.layout = IPC_SHM_LAYOUT;
    setup.region_size = ipc_shm_region_size(slot_size);
    setup.slot_size = slot_size;
    setup.flags = 0;
    parts[1].data = payload;
    parts[1].size = ipc_shm_setup_encode(payload, &setup);
    /* Windows: the handle values the server duplicates (protocol 11.2) */
    ipc_plat_shm_record(&l->region, payload + parts[1].size);
    parts[1].size += ipc_plat_shm_record_size();
    parts[0].data = header;
    parts[0].size = ipc_packet_header_encode(header, IPC_PACKET_SHM_SETUP, (uint32_t)parts[1].size,
                                             0);
    r = ipc_plat_write_handle(stream->conn, parts, 2, l->region.handle, ipc__remaining_ms(deadline),
                              err);
    if (r == IPC_OK)
        r = ipc__stream_read_packet(stream, max_message, version, deadline, -1, &answer, err);
    /* The mapping outlives the handle, so no handle per connection stays
     * open; closed only once the server answered, because on Windows the
     * server duplicates it out of our process while it handles the offer
     * (the descriptor in flight on POSIX is the server's already). */
    ipc_plat_handle_close(l->region.handle);
    l->region.handle = -1;
    if (r == IPC_OK && answer.header.type == IPC_PACKET_SHM_ACCEPT && answer.header.length == 0) {
        link_wire(l, 1);
        *out = l;
        return IPC_OK;
    }
    ipc__shm_free(l);
    if (r != IPC_OK || answer.header.type == IPC_PACKET_SHM_DECLINE)
        return r;
    return ipc__fail(err, IPC_E_PROTOCOL, 0,
                     "the server answered SHM_SETUP with packet type %u (%lu bytes)",
                     (unsigned)answer.header.type, (unsigned long)answer.header.length);
}

static int decline(ipc_stream *stream, const char *why, ipc_error *err)
{
    return ipc__write_packet_parts(stream->conn, IPC_PACKET_SHM_DECLINE, NULL, 0, why, strlen(why),
                                   IPC_WAKE_INTERVAL_MS, err);
}

/* The region's own header must agree with the setup packet. */
static int region_matches(const ipc_plat_shm *region, uint32_t slot_size)
{
    uint32_t magic = ipc_plat_word_load(header_word(region, 0));
    uint32_t layout = ipc_plat_word_load(header_word(region, 4));
    uint32_t slot = ipc_plat_word_load(header_word(region, 8));

    return magic == SHM_MAGIC && layout == IPC_SHM_LAYOUT && slot == slot_size;
}

/* The 16-byte setup, followed by the platform's record of handle values
 * where it has one (Windows, protocol 11.2): the size must be exact. */
static int decode_setup(const ipc_packet *packet, ipc_shm_setup *setup, ipc_error *err)
{
    size_t record_size = ipc_plat_shm_record_size();
    size_t length = packet->header.length;

    if (record_size && length != IPC_SHM_SETUP_SIZE + record_size)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "a SHM_SETUP payload has %lu bytes, not %lu",
                         (unsigned long)length, (unsigned long)(IPC_SHM_SETUP_SIZE + record_size));
    return ipc_shm_setup_decode(packet->payload, length - record_size, setup, err);
}

int ipc__shm_accept(ipc_stream *stream, const ipc_packet *packet, int allowed, int spin_us,
                    ipc_shm_link **out, ipc_error *err)
{
    intptr_t handle = ipc_plat_conn_take_handle(stream->conn);
    size_t record_size = ipc_plat_shm_record_size();
    ipc_error why = {0};
    ipc_shm_setup setup;
    ipc_shm_link *l;
    int r;

    *out = NULL;
    ipc_plat_conn_accept_handles(stream->conn, 0); /* one offer per connection */
    r = decode_setup(packet, &setup, err);
    if (r != IPC_OK) {
        ipc_plat_handle_close(handle);
        return r;
    }
    if (!allowed || (handle < 0 && record_size == 0)) {
        ipc_plat_handle_close(handle);
        return decline(stream,
                       allowed ? "no descriptor came with SHM_SETUP"
                               : "this server keeps the socket path",
                       err);
    }
    l = link_new(setup.slot_size, spin_us, stream);
    if (!l) {
        ipc_plat_handle_close(handle);
        return decline(stream, "out of memory", err);
    }
    if (record_size) /* Windows: the region is taken from the client by handle values */
        r = ipc_plat_shm_import(stream->conn, packet->payload + IPC_SHM_SETUP_SIZE,
                                setup.region_size, &l->region, &why);
    else
        r = ipc_plat_shm_map(&l->region, handle, setup.region_size, &why);
    if (r == IPC_OK && !region_matches(&l->region, setup.slot_size))
        r = ipc__fail(&why, IPC_E_PROTOCOL, 0, "the region's header does not match SHM_SETUP");
    if (r != IPC_OK) {
        ipc__shm_free(l);
        r = decline(stream, why.message ? why.message : "the region cannot be mapped", err);
        ipc_error_clear(&why);
        return r;
    }
    ipc_plat_handle_close(l->region.handle);
    l->region.handle = -1;
    link_wire(l, 0);
    r = ipc__write_packet_parts(stream->conn, IPC_PACKET_SHM_ACCEPT, NULL, 0, NULL, 0,
                                IPC_WAKE_INTERVAL_MS, err);
    if (r != IPC_OK) {
        ipc__shm_free(l);
        return r;
    }
    /* stop shuts the socket: it must not wait for our next liveness check */
    ipc_plat_conn_wake_on_interrupt(stream->conn, l->in_wake, &l->in[W_SEQ]);
    l->wakes_on_interrupt = 1;
    *out = l;
    return IPC_OK;
}
