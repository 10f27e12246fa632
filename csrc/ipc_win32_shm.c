/*
 * Windows shared memory (docs/protocol.md 11): a pagefile-backed section
 * without a name (nothing is left behind: it goes with the last handle and
 * view) and one auto-reset event per channel for the wake-ups, since
 * WaitOnAddress only works within one process. Part of the Windows
 * platform (ipc_win32.c).
 *
 * The client creates all three objects and sends their handle values in
 * the record after the SHM_SETUP payload; the server, which checked the
 * client's identity at the handshake, duplicates them out of the client's
 * process (the pid comes from the pipe, not from the peer), asking only
 * for the access it needs, then checks what it got before mapping it: the
 * region is as untrusted here as on Linux.
 */
#if defined(_WIN32)

#include "ipc_win32_internal.h"

/* GetMappedFileNameW as K32GetMappedFileNameW, in kernel32 (Windows 7+) */
#ifndef PSAPI_VERSION
#define PSAPI_VERSION 2
#endif
#include <psapi.h>

/* Record (protocol 11.2): three 64-bit little-endian handle values in the
 * client's process, in this order. */
enum { RECORD_SECTION = 0, RECORD_REQUEST_EVENT = 1, RECORD_RESPONSE_EVENT = 2, RECORD_VALUES = 3 };

/* What the server may do with each object: map the section read-write;
 * wait on the channel it reads (and set it, so that a stop can wake its
 * own wait); set the channel the client reads. Nothing else (no
 * SECTION_EXTEND_SIZE, no WRITE_DAC, ...). */
#define SERVER_SECTION_ACCESS (FILE_MAP_READ | FILE_MAP_WRITE)
#define SERVER_WAIT_ACCESS (SYNCHRONIZE | EVENT_MODIFY_STATE)
#define SERVER_SET_ACCESS EVENT_MODIFY_STATE

int ipc_plat_shm_supported(void)
{
    return 1;
}

void ipc_plat_handle_close(intptr_t handle)
{
    if (handle != -1 && handle != 0)
        CloseHandle((HANDLE)handle);
}

static void close_wake(ipc_plat_wake *wake)
{
    ipc_plat_handle_close(wake->event);
    wake->event = 0;
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    if (shm->base)
        UnmapViewOfFile(shm->base);
    ipc_plat_handle_close(shm->handle);
    close_wake(&shm->wake[IPC_PLAT_SHM_REQUEST]);
    close_wake(&shm->wake[IPC_PLAT_SHM_RESPONSE]);
    shm->base = NULL;
    shm->size = 0;
    shm->handle = -1;
}

static void shm_clear(ipc_plat_shm *shm)
{
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
}

/* Fails like ipc__win32_fail_win and releases what `shm` holds so far. */
static int shm_fail(ipc_plat_shm *shm, ipc_error *err, DWORD e, const char *what)
{
    ipc_plat_shm_release(shm);
    return ipc__win32_fail_win(err, e, what);
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    HANDLE section, request, response;
    uint64_t wide = (uint64_t)size;

    shm_clear(shm);
    /* INVALID_HANDLE_VALUE: backed by the pagefile; no name; default
     * security (our user) and not inheritable. Zero-filled by the system. */
    section = CreateFileMappingW(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, (DWORD)(wide >> 32),
                                 (DWORD)wide, NULL);
    if (!section)
        return shm_fail(shm, err, GetLastError(), "CreateFileMapping of the shared-memory region");
    shm->handle = (intptr_t)section;
    shm->base = MapViewOfFile(section, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, size);
    if (!shm->base)
        return shm_fail(shm, err, GetLastError(), "MapViewOfFile of the shared-memory region");
    shm->size = size;
    /* auto-reset: a wake-up is consumed by the wait it ends */
    request = CreateEventW(NULL, FALSE, FALSE, NULL);
    shm->wake[IPC_PLAT_SHM_REQUEST].event = (intptr_t)request;
    response = request ? CreateEventW(NULL, FALSE, FALSE, NULL) : NULL;
    shm->wake[IPC_PLAT_SHM_RESPONSE].event = (intptr_t)response;
    if (!response)
        return shm_fail(shm, err, GetLastError(), "CreateEvent for the shared-memory region");
    return IPC_OK;
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    /* Windows never attaches a handle to the stream: the server imports
     * the record instead (ipc_plat_shm_import). */
    (void)size;
    shm_clear(shm);
    ipc_plat_handle_close(handle);
    return ipc__fail(err, IPC_E_PROTOCOL, 0, "no handle travels with the stream on Windows");
}

size_t ipc_plat_shm_record_size(void)
{
    return RECORD_VALUES * 8;
}

static void put_u64(uint8_t *out, uint64_t value)
{
    int i;

    for (i = 0; i < 8; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_u64(const uint8_t *in)
{
    uint64_t value = 0;
    int i;

    for (i = 7; i >= 0; i--)
        value = value << 8 | in[i];
    return value;
}

void ipc_plat_shm_record(const ipc_plat_shm *shm, uint8_t *record)
{
    put_u64(record + 8 * RECORD_SECTION, (uint64_t)shm->handle);
    put_u64(record + 8 * RECORD_REQUEST_EVENT, (uint64_t)shm->wake[IPC_PLAT_SHM_REQUEST].event);
    put_u64(record + 8 * RECORD_RESPONSE_EVENT, (uint64_t)shm->wake[IPC_PLAT_SHM_RESPONSE].event);
}

/* Nonzero if `process` runs and was created before the connection was
 * accepted: a process that took over the pid of a client that died since
 * was created later (and once we hold the handle the pid stays its). */
static int is_connected_process(ipc_plat_conn *c, HANDLE process)
{
    FILETIME created, exited, kernel, user;

    return WaitForSingleObject(process, 0) == WAIT_TIMEOUT &&
           GetProcessTimes(process, &created, &exited, &kernel, &user) &&
           CompareFileTime(&created, &c->accepted_at) <= 0 && !ipc_plat_conn_closed(c);
}

/* Opens the pipe client's process for duplicating handles out of it. The
 * pid is the kernel's (GetNamedPipeClientProcessId), never the peer's
 * word, and the process must be the one that connected. */
static int open_client_process(ipc_plat_conn *c, HANDLE *process, ipc_error *err)
{
    ULONG pid = 0;

    *process = NULL;
    if (!c->server_side)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "only a server takes a region from its peer");
    if (!GetNamedPipeClientProcessId(c->pipe, &pid))
        return ipc__win32_fail_win(err, GetLastError(), "GetNamedPipeClientProcessId");
    /* SYNCHRONIZE and the limited query: to see that it runs and when it
     * started; PROCESS_DUP_HANDLE: the one right that matters */
    *process = OpenProcess(PROCESS_DUP_HANDLE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE,
                           FALSE, pid);
    if (!*process)
        return ipc__win32_fail_win(err, GetLastError(),
                                   "OpenProcess(PROCESS_DUP_HANDLE) on the client");
    if (!is_connected_process(c, *process)) {
        CloseHandle(*process);
        *process = NULL;
        return ipc__fail(err, IPC_E_CLOSED, 0, "the client went away during the offer");
    }
    return IPC_OK;
}

/* One handle out of the client's process, with exactly `access`. */
static int take_handle(HANDLE process, uint64_t value, DWORD access, intptr_t *out,
                       const char *what, ipc_error *err)
{
    HANDLE ours = NULL;

    if (value == 0 || value > (uint64_t)INTPTR_MAX)
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "the record names no %s", what);
    if (!DuplicateHandle(process, (HANDLE)(intptr_t)value, GetCurrentProcess(), &ours, access,
                         FALSE, 0))
        return ipc__win32_fail_win(err, GetLastError(), "DuplicateHandle from the client");
    *out = (intptr_t)ours;
    return IPC_OK;
}

/* The whole view must be committed read-write memory of a section that no
 * file backs: pages of a SEC_RESERVE section left uncommitted, or a file's
 * pages (whose volume can go away), would fault on access. A view's pages
 * cannot be decommitted later, and a pagefile-backed section cannot
 * shrink, so what is checked here stays true. */
static int view_is_sound(const ipc_plat_shm *shm, ipc_error *err)
{
    const uint8_t *at = (const uint8_t *)shm->base, *end = at + shm->size;
    wchar_t file[64];

    while (at < end) {
        MEMORY_BASIC_INFORMATION info;

        if (VirtualQuery(at, &info, sizeof info) != sizeof info)
            return ipc__win32_fail_win(err, GetLastError(), "VirtualQuery of the offered region");
        if (info.State != MEM_COMMIT || info.Type != MEM_MAPPED ||
            (info.Protect & (PAGE_READWRITE | PAGE_GUARD | PAGE_NOACCESS)) != PAGE_READWRITE)
            return ipc__fail(err, IPC_E_PROTOCOL, 0,
                             "the region offered is not committed read-write memory throughout");
        if (info.RegionSize == 0)
            break;
        at = (const uint8_t *)info.BaseAddress + info.RegionSize;
    }
    if (GetMappedFileNameW(GetCurrentProcess(), shm->base, file, sizeof file / sizeof file[0]))
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "the region offered is backed by a file");
    return IPC_OK;
}

/* The events must be auto-reset events: set the one we wait on, and one
 * wait must consume the signal (a manual-reset event, or a process or
 * thread handle that is always signaled, would end every wait at once and
 * keep our thread spinning). Setting the one we set only proves it is an
 * event; the client is not waiting yet (it waits for our answer), so
 * neither signal is lost or misread. */
static int events_are_sound(const ipc_plat_shm *shm, ipc_error *err)
{
    HANDLE ours = (HANDLE)shm->wake[IPC_PLAT_SHM_REQUEST].event;
    HANDLE theirs = (HANDLE)shm->wake[IPC_PLAT_SHM_RESPONSE].event;

    if (!SetEvent(ours) || WaitForSingleObject(ours, 0) != WAIT_OBJECT_0 ||
        WaitForSingleObject(ours, 0) != WAIT_TIMEOUT || !SetEvent(theirs))
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "the wake-up handles offered are not auto-reset events");
    return IPC_OK;
}

int ipc_plat_shm_import(ipc_plat_conn *c, const uint8_t *record, size_t size, ipc_plat_shm *shm,
                        ipc_error *err)
{
    HANDLE process;
    int r;

    shm_clear(shm);
    r = open_client_process(c, &process, err);
    if (r != IPC_OK)
        return r;
    r = take_handle(process, get_u64(record + 8 * RECORD_SECTION), SERVER_SECTION_ACCESS,
                    &shm->handle, "section", err);
    if (r == IPC_OK)
        r = take_handle(process, get_u64(record + 8 * RECORD_REQUEST_EVENT), SERVER_WAIT_ACCESS,
                        &shm->wake[IPC_PLAT_SHM_REQUEST].event, "request event", err);
    if (r == IPC_OK)
        r = take_handle(process, get_u64(record + 8 * RECORD_RESPONSE_EVENT), SERVER_SET_ACCESS,
                        &shm->wake[IPC_PLAT_SHM_RESPONSE].event, "response event", err);
    CloseHandle(process);
    if (r == IPC_OK) {
        /* fails for a handle that is no section, and for a section
         * smaller than `size` */
        shm->base = MapViewOfFile((HANDLE)shm->handle, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, size);
        if (!shm->base)
            r = ipc__win32_fail_win(err, GetLastError(), "MapViewOfFile of the offered region");
    }
    shm->size = shm->base ? size : 0;
    if (r == IPC_OK)
        r = view_is_sound(shm, err);
    if (r == IPC_OK)
        r = events_are_sound(shm, err);
    if (r != IPC_OK)
        ipc_plat_shm_release(shm);
    return r;
}

/* The handle travels in the record (ipc_plat_shm_record): nothing rides
 * along with the bytes. */
int ipc_plat_write_handle(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count,
                          intptr_t handle, int timeout_ms, ipc_error *err)
{
    (void)handle;
    return ipc_plat_write(conn, parts, count, timeout_ms, err);
}

void ipc_plat_conn_accept_handles(ipc_plat_conn *conn, int on)
{
    (void)conn, (void)on;
}

intptr_t ipc_plat_conn_take_handle(ipc_plat_conn *conn)
{
    (void)conn;
    return -1;
}

int ipc_plat_conn_interrupted(ipc_plat_conn *c)
{
    return InterlockedCompareExchange(&c->soft, 0, 0) != 0;
}

/* The connection keeps its own handle to the event, closed only with the
 * connection: ipc_plat_conn_interrupt may run on another thread while the
 * link is freed, and must never set a handle value that was closed (and
 * perhaps reused) meanwhile. Set once; NULL leaves it (setting an event
 * nobody waits on any more is harmless). */
void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *c, ipc_plat_wake *wake, uint32_t *word)
{
    HANDLE copy = NULL;

    (void)word;
    if (!wake || !wake->event || c->wake_event)
        return;
    /* without a copy a stop reaches the wait at its next liveness check */
    if (!DuplicateHandle(GetCurrentProcess(), (HANDLE)wake->event, GetCurrentProcess(), &copy,
                         EVENT_MODIFY_STATE, FALSE, 0))
        return;
    if (InterlockedCompareExchangePointer((PVOID volatile *)&c->wake_event, copy, NULL) != NULL)
        CloseHandle(copy);
}

uint32_t ipc_plat_word_load(const uint32_t *word)
{
    return (uint32_t)InterlockedCompareExchange((volatile LONG *)word, 0, 0);
}

void ipc_plat_word_store(uint32_t *word, uint32_t value)
{
    InterlockedExchange((volatile LONG *)word, (LONG)value);
}

int ipc_plat_word_swap_if(uint32_t *word, uint32_t expected, uint32_t desired)
{
    return (uint32_t)InterlockedCompareExchange((volatile LONG *)word, (LONG)desired,
                                                (LONG)expected) == expected;
}

/* The process's affinity mask (a pinned process counts the CPUs it may
 * use, not the machine's). */
int ipc_plat_cpus_available(void)
{
    DWORD_PTR process_mask = 0, system_mask = 0;
    int count = 0;

    if (GetProcessAffinityMask(GetCurrentProcess(), &process_mask, &system_mask))
        for (; process_mask; process_mask &= process_mask - 1)
            count++;
    return count > 0 ? count : 1;
}

/* The event stands in for the futex: the caller announced its sleep in
 * the region before this last look, and the writer sets the event after
 * its store when it sees the announcement, so a wake-up is never lost; a
 * stale signal only makes a spurious return. */
void ipc_plat_word_wait(ipc_plat_wake *wake, uint32_t *word, uint32_t expected, int timeout_ms)
{
    if (ipc_plat_word_load(word) != expected)
        return;
    if (!wake || !wake->event) {
        Sleep(timeout_ms < 0 ? 1 : (DWORD)timeout_ms);
        return;
    }
    WaitForSingleObject((HANDLE)wake->event, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms);
}

void ipc_plat_word_wake(ipc_plat_wake *wake, uint32_t *word)
{
    (void)word;
    if (wake && wake->event)
        SetEvent((HANDLE)wake->event);
}

int ipc_plat_current_cpu(void)
{
    return (int)GetCurrentProcessorNumber();
}

void ipc_plat_cpu_relax(void)
{
    YieldProcessor();
}

/* Spinning is budgeted in microseconds: the tick count is too coarse. */
int64_t ipc_plat_now_us(void)
{
    LARGE_INTEGER frequency, now;

    QueryPerformanceFrequency(&frequency); /* fixed at boot, cheap to ask */
    QueryPerformanceCounter(&now);
    return (int64_t)(now.QuadPart / frequency.QuadPart * 1000000 +
                     now.QuadPart % frequency.QuadPart * 1000000 / frequency.QuadPart);
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_win32_shm_not_on_this_platform;
#endif /* _WIN32 */
