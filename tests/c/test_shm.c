/*
 * The shared-memory data path (docs/protocol.md 11): negotiation, round
 * trips across the slot boundary, a peer that scribbles on the region, a
 * peer that vanishes, stop during a request, many mapped connections
 * without leaks, and idle connections that cost no CPU. Linux (memfd) and
 * Windows (a section and two events) have the region; where the platform
 * has no shared-memory path (macOS) the same clients must still work over
 * the socket: the offer is simply not made or declined.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* memfd_create, F_ADD_SEALS for the raw peer */
#endif
#include "t_harness.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#define SHM_HERE 1
#elif defined(_WIN32)
#define SHM_HERE 1 /* a section and two events (csrc/ipc_win32_shm.c) */
#else
#define SHM_HERE 0
#endif

static void shm_server_options(ipc_server_options *so)
{
    ipc_server_options_init(so);
    so->shm = 1;
}

static void shm_client_options(ipc_client_options *co, uint32_t slot)
{
    ipc_client_options_init(co);
    co->shm = 1;
    co->shm_slot_size = slot;
}

/* What xor_handler answers to req: every byte XOR 0x5C. */
static void xor_expected(const unsigned char *req, unsigned char *want, size_t size)
{
    size_t k;

    for (k = 0; k < size; k++)
        want[k] = (unsigned char)(req[k] ^ 0x5C);
}

/* Sizes around the slot (4 KiB) and far beyond it, both directions
 * (xor_handler answers as many bytes as it got). The biggest is larger
 * than any socket buffer the kernel grants (Linux caps SO_SNDBUF at
 * net.core.wmem_max, 4 MiB on many machines; a Windows pipe's buffer is
 * 64 KiB): a message that goes on the socket must be announced in the
 * region before it is written, or the writer blocks on a reader that
 * waits for the announcement. */
#define BIGGEST_MESSAGE (9 * 1024 * 1024)
void test_shm_round_trips(void)
{
    static const size_t sizes[] = {0,
                                   1,
                                   16,
                                   1000,
                                   4095,
                                   4096,
                                   4097,
                                   8192,
                                   65536,
                                   1024 * 1024 + 3,
                                   4096,
                                   16,
                                   3 * 1024 * 1024,
                                   0,
                                   5,
                                   BIGGEST_MESSAGE,
                                   7};
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    unsigned char *req = (unsigned char *)malloc(BIGGEST_MESSAGE);
    unsigned char *want = (unsigned char *)malloc(BIGGEST_MESSAGE);
    size_t i;
    int spin;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmrt");
    shm_server_options(&so);
    server = open_server(name, &so, xor_handler, &ctx);
    for (spin = 0; server && spin < 2; spin++) {
        shm_client_options(&co, 4096);
        co.shm_spin_us = spin ? 50 : 0;
        client = open_client(name, &co, 5000);
        if (!client)
            break;
        CHECK(ipc_client_uses_shm(client) == SHM_HERE);
        CHECK(ipc_client_version(client) == IPC_PROTOCOL_VERSION_SHM);
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            fill_random(req, sizes[i], (unsigned)(i * 7 + 1 + spin));
            xor_expected(req, want, sizes[i]);
            if (!expect_response(client, req, sizes[i], want, sizes[i]))
                note("      (size %lu)", (unsigned long)sizes[i]);
        }
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    free(req);
    free(want);
    ctx_free(&ctx);
}

typedef struct manual_client {
    const char *name;
    int ok;
} manual_client;

static void manual_client_main(void *arg)
{
    manual_client *m = (manual_client *)arg;
    static const size_t sizes[] = {0, 7, 4096, 4097, 20000, 3};
    unsigned char req[20000], want[20000];
    ipc_client_options co;
    ipc_client_t *client;
    size_t i;

    shm_client_options(&co, 4096);
    client = open_client(m->name, &co, 5000);
    if (!client)
        return;
    CHECK(ipc_client_uses_shm(client) == SHM_HERE);
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fill_random(req, sizes[i], (unsigned)i + 99);
        xor_expected(req, want, sizes[i]);
        m->ok += expect_response(client, req, sizes[i], want, sizes[i]);
    }
    ipc_client_close(client);
}

/* Manual dispatch: the answer is written from the application's thread
 * through the connection's data path, the region here. */
void test_shm_manual_dispatch(void)
{
    char name[96];
    ipc_server_options so;
    ipc_server_t *server;
    manual_client m;
    t_thread *thread;
    long long deadline;
    int handled = 0;

    make_name(name, sizeof name, "shmman");
    shm_server_options(&so);
    so.dispatch = IPC_DISPATCH_MANUAL;
    server = open_server(name, &so, NULL, NULL);
    if (!server)
        return;
    m.name = name;
    m.ok = 0;
    thread = t_thread_start(manual_client_main, &m);
    deadline = t_now_ms() + 20000;
    while (handled < 6 && t_now_ms() < deadline) {
        ipc_call *call = NULL;
        const uint8_t *request;
        size_t size, j;
        uint8_t *out;
        if (ipc_server_next_call(server, &call, &request, &size, 200, NULL) != IPC_OK)
            continue;
        out = (uint8_t *)ipc_call_buffer(call, size);
        if (CHECK(out != NULL)) {
            for (j = 0; j < size; j++)
                out[j] = (uint8_t)(request[j] ^ 0x5C);
            CHECK_RC(ipc_call_respond(call, out, size, NULL), IPC_OK, NULL);
        }
        ipc_call_finish(call);
        handled++;
    }
    t_thread_join(thread);
    CHECK(handled == 6 && m.ok == 6);
    ipc_server_stop(server);
}

/* Every combination of offer and acceptance ends on a working path. */
void test_shm_negotiation(void)
{
    static const struct {
        int server_shm, server_version, client_shm, version, uses;
    } cases[] = {
        {0, 0, 1, 1, 0}, /* server speaks 1: no offer */
        {1, 0, 0, 1, 0}, /* client does not offer */
        {0, 2, 1, 2, 0}, /* server speaks 2 but declines */
        {1, 0, 1, 2, 1}, /* accepted */
    };
    size_t i;
    srv_ctx ctx;

    ctx_init(&ctx);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96];
        ipc_server_options so;
        ipc_client_options co;
        ipc_server_t *server;
        ipc_client_t *client;

        make_name(name, sizeof name, "shmneg");
        ipc_server_options_init(&so);
        so.shm = cases[i].server_shm;
        if (cases[i].server_version)
            so.version = (uint8_t)cases[i].server_version;
        shm_client_options(&co, 0);
        co.shm = cases[i].client_shm;
        server = open_server(name, &so, cmd_handler, &ctx);
        client = server ? open_client(name, &co, 5000) : NULL;
        if (client) {
            CHECK(ipc_client_version(client) == cases[i].version);
            CHECK(ipc_client_uses_shm(client) == (cases[i].uses && SHM_HERE));
            expect_text(client, "one", "one");
            expect_text(client, "two", "two");
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

/* A handler failure and a too-large request on the region: the first keeps
 * the connection, the second closes it with the transport's message. */
void test_shm_errors(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    char big[3000];
    char *message;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmerr");
    shm_server_options(&so);
    so.max_message = 2048;
    server = open_server(name, &so, cmd_handler, &ctx);
    shm_client_options(&co, 4096);
    client = server ? open_client(name, &co, 5000) : NULL;
    if (client) {
        message = expect_failure(client, "fail:nope", 9, 5000, IPC_E_REMOTE);
        CHECK(message && strcmp(message, "nope") == 0);
        free(message);
        expect_text(client, "still", "still");
        memset(big, 'b', sizeof big);
        message = expect_failure(client, big, sizeof big, 5000, IPC_E_TOO_LARGE);
        free(message);
        message = expect_failure(client, "x", 1, 5000, IPC_E_CLOSED);
        free(message);
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* stop() while a handler runs and while a client waits in the region: the
 * client sees the connection closed, nothing hangs. */
void test_shm_stop_during_request(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    long long t0;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmstop");
    shm_server_options(&so);
    server = open_server(name, &so, cmd_handler, &ctx);
    shm_client_options(&co, 0);
    client = server ? open_client(name, &co, 5000) : NULL;
    if (client) {
        CHECK_RC(ipc_client_write(client, "sleep:3000", 10, 5000, &err), IPC_OK, &err);
        ipc_error_clear(&err);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 5000));
        t0 = t_now_ms();
        ipc_server_stop(server);
        server = NULL;
        CHECK_MS(t_now_ms() - t0, 0, 4500);
        {
            const uint8_t *resp;
            size_t size;
            int rc = ipc_client_read(client, &resp, &size, 5000, &err);
            /* the sleeping handler may still answer during the grace time */
            CHECK(rc == IPC_E_CLOSED || rc == IPC_OK);
            ipc_error_clear(&err);
        }
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

#if SHM_HERE
/* The child processes of test_shm_killed_peers read it (test_process.c). */
static void set_test_shm_env(int on)
{
#if defined(_WIN32)
    _putenv(on ? "IPCFAST_TEST_SHM=1" : "IPCFAST_TEST_SHM=");
#else
    if (on)
        setenv("IPCFAST_TEST_SHM", "1", 1);
    else
        unsetenv("IPCFAST_TEST_SHM");
#endif
}

/* stop reaches a connection that sleeps on the region at once: its socket
 * shut down, the wait is woken too, not left for the next liveness check
 * (500 ms once a connection has been idle for a second). */
void test_shm_stop_wakes_idle_waits(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *clients[4];
    long long t0;
    int i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmidle");
    shm_server_options(&so);
    server = open_server(name, &so, cmd_handler, &ctx);
    shm_client_options(&co, 0);
    for (i = 0; i < 4; i++) {
        clients[i] = server ? open_client(name, &co, 5000) : NULL;
        if (clients[i])
            expect_text(clients[i], "hi", "hi");
    }
    t_sleep_ms(1100); /* early in the first idle, 500 ms slice */
    t0 = t_now_ms();
    ipc_server_stop(server);
    CHECK_MS(t_now_ms() - t0, 0, 250);
    for (i = 0; i < 4; i++)
        ipc_client_close(clients[i]);
    ctx_free(&ctx);
}

/* ---- a raw peer that speaks the protocol by hand and then misbehaves ---- */

/* What the raw peer gets wrong in its offer (RAW_SOUND: nothing). */
enum raw_flaw {
    RAW_SOUND,
    RAW_NO_DESCRIPTOR, /* POSIX: SHM_SETUP without a descriptor */
    RAW_UNSEALED,      /* POSIX: a memfd not sealed against shrinking */
    RAW_BAD_HANDLE,    /* Windows: the record names no handle of ours */
    RAW_RESERVED,      /* Windows: a SEC_RESERVE section, mostly uncommitted */
    RAW_SMALL,         /* Windows: a section smaller than announced */
    RAW_MANUAL_EVENT,  /* Windows: a manual-reset request event */
    RAW_NOT_AN_EVENT,  /* Windows: the section named as the request event */
    RAW_NO_RECORD,     /* Windows: the 16-byte payload of POSIX */
    RAW_FILE_BACKED    /* Windows: a section over a file */
};

typedef struct raw_peer {
#if defined(_WIN32)
    HANDLE pipe, section, request_event, response_event;
#else
    int fd;
#endif
    uint32_t *words;
    uint8_t *base;
    size_t mapped;
    char why[200]; /* the text of a SHM_DECLINE */
} raw_peer;

static void raw_header(raw_peer *raw, uint32_t slot)
{
    raw->words = (uint32_t *)raw->base;
    raw->words[0] = 0x4D485349u;
    raw->words[1] = 1;
    raw->words[2] = slot;
}

static size_t raw_setup(uint8_t *packet, uint32_t slot, uint32_t record_size)
{
    uint32_t region = 192 + 2 * slot, length = 16 + record_size;

    packet[0] = IPC_PACKET_SHM_SETUP;
    memcpy(packet + 1, &length, 4);
    memset(packet + 5, 0, 16);
    packet[5] = 1;
    memcpy(packet + 9, &region, 4);
    memcpy(packet + 13, &slot, 4);
    return 5 + 16;
}

#if defined(_WIN32)

static const struct {
    int flaw;
    const char *why; /* in the server's SHM_DECLINE */
} RAW_FLAWS[] = {
    {RAW_BAD_HANDLE, "DuplicateHandle"},
    {RAW_RESERVED, "not committed"},
    {RAW_SMALL, "MapViewOfFile"},
    {RAW_MANUAL_EVENT, "auto-reset"},
    {RAW_NOT_AN_EVENT, "auto-reset"},
    {RAW_FILE_BACKED, "backed by a file"},
    {RAW_NO_RECORD, NULL}, /* malformed: ERROR, then the server closes */
};

static int raw_exact(HANDLE pipe, void *buf, DWORD size, int write)
{
    DWORD done = 0;

    while (done < size) {
        DWORD n = 0;
        BOOL ok = write ? WriteFile(pipe, (uint8_t *)buf + done, size - done, &n, NULL)
                        : ReadFile(pipe, (uint8_t *)buf + done, size - done, &n, NULL);
        if (!ok || n == 0)
            return 0;
        done += n;
    }
    return 1;
}

/* The region: a section (with SEC_RESERVE only the first page committed,
 * enough for the header) and the two events. */
static int raw_region(raw_peer *raw, uint32_t region, int flaw)
{
    DWORD size = flaw == RAW_SMALL ? 4096 : region;
    HANDLE file = INVALID_HANDLE_VALUE; /* the pagefile */

    if (flaw == RAW_FILE_BACKED) {
        char path[MAX_PATH], dir[MAX_PATH];

        if (!GetTempPathA(sizeof dir, dir) || !GetTempFileNameA(dir, "ipc", 0, path))
            return 0;
        file = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                           FILE_FLAG_DELETE_ON_CLOSE, NULL);
        if (file == INVALID_HANDLE_VALUE)
            return 0;
    }
    raw->section = CreateFileMappingW(
        file, NULL, PAGE_READWRITE | (flaw == RAW_RESERVED ? SEC_RESERVE : 0), 0, size, NULL);
    if (file != INVALID_HANDLE_VALUE)
        CloseHandle(file); /* the section keeps it; deleted with the section */
    raw->base = raw->section
                    ? (uint8_t *)MapViewOfFile(raw->section, FILE_MAP_ALL_ACCESS, 0, 0, size)
                    : NULL;
    if (!raw->base)
        return 0;
    raw->mapped = size;
    if (flaw == RAW_RESERVED && !VirtualAlloc(raw->base, 4096, MEM_COMMIT, PAGE_READWRITE))
        return 0;
    raw->request_event = CreateEventW(NULL, flaw == RAW_MANUAL_EVENT, FALSE, NULL);
    raw->response_event = CreateEventW(NULL, FALSE, FALSE, NULL);
    return raw->request_event && raw->response_event;
}

/* Returns the type of the server's answer (SHM_ACCEPT, SHM_DECLINE, ...)
 * or -1; `raw` is filled either way, for raw_close. */
static int raw_open(const char *name, raw_peer *raw, uint32_t slot, int flaw)
{
    char path[200];
    uint8_t hello[9], reply[9], packet[5 + 16 + 24], answer[5];
    uint64_t record[3];
    uint32_t region = 192 + 2 * slot;
    size_t size;

    memset(raw, 0, sizeof *raw);
    snprintf(path, sizeof path, "\\\\.\\pipe\\%s", name);
    raw->pipe = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
    if (raw->pipe == INVALID_HANDLE_VALUE) {
        raw->pipe = NULL;
        return -1;
    }
    memcpy(hello, DEFAULT_HS, 8);
    hello[8] = 2;
    if (!raw_exact(raw->pipe, hello, 9, 1) || !raw_exact(raw->pipe, reply, 9, 0) ||
        !raw_region(raw, region, flaw))
        return -1;
    raw_header(raw, slot);
    record[0] = flaw == RAW_BAD_HANDLE ? 0x7ffff0 : (uint64_t)(uintptr_t)raw->section;
    record[1] = (uint64_t)(uintptr_t)(flaw == RAW_NOT_AN_EVENT ? raw->section : raw->request_event);
    record[2] = (uint64_t)(uintptr_t)raw->response_event;
    size = raw_setup(packet, slot, flaw == RAW_NO_RECORD ? 0 : 24);
    if (flaw != RAW_NO_RECORD) {
        memcpy(packet + size, record, sizeof record); /* little-endian machine */
        size += sizeof record;
    }
    if (!raw_exact(raw->pipe, packet, (DWORD)size, 1) || !raw_exact(raw->pipe, answer, 5, 0))
        return -1;
    if (answer[0] == IPC_PACKET_SHM_DECLINE) {
        DWORD length = (DWORD)answer[1] | (DWORD)answer[2] << 8;

        if (length >= sizeof raw->why || !raw_exact(raw->pipe, raw->why, length, 0))
            return -1;
    }
    return answer[0];
}

static void raw_publish(raw_peer *raw, uint32_t *seq, uint32_t value)
{
    InterlockedExchange((volatile LONG *)seq, (LONG)value);
    SetEvent(raw->request_event);
}

static void raw_store(uint32_t *word, uint32_t value)
{
    InterlockedExchange((volatile LONG *)word, (LONG)value);
}

/* Reads until the server closes; nonzero if it did within 5 s. */
static int raw_closed_by_server(raw_peer *raw)
{
    long long until = t_now_ms() + 5000;
    char buf[512];

    while (t_now_ms() < until) {
        DWORD available = 0, n = 0;

        if (!PeekNamedPipe(raw->pipe, NULL, 0, NULL, &available, NULL))
            return 1;
        if (available > 0 && !ReadFile(raw->pipe, buf, sizeof buf, &n, NULL) &&
            GetLastError() != ERROR_MORE_DATA)
            return 1;
        if (available == 0)
            Sleep(20);
    }
    return 0;
}

static void raw_close(raw_peer *raw)
{
    if (raw->pipe)
        CloseHandle(raw->pipe);
    if (raw->base)
        UnmapViewOfFile(raw->base);
    if (raw->section)
        CloseHandle(raw->section);
    if (raw->request_event)
        CloseHandle(raw->request_event);
    if (raw->response_event)
        CloseHandle(raw->response_event);
    memset(raw, 0, sizeof *raw);
}

#else /* Linux */

static const struct {
    int flaw;
    const char *why; /* in the server's SHM_DECLINE */
} RAW_FLAWS[] = {
    {RAW_NO_DESCRIPTOR, "no descriptor"},
    {RAW_UNSEALED, "sealed"},
};

static int raw_open(const char *name, raw_peer *raw, uint32_t slot, int flaw)
{
    char path[200];
    const char *dir = getenv("XDG_RUNTIME_DIR");
    struct sockaddr_un addr;
    uint8_t hello[9], reply[9], packet[5 + 16], answer[5];
    uint32_t region = 192 + 2 * slot;
    struct msghdr msg;
    struct iovec iov;
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    int fd, mfd;
    size_t got = 0;

    memset(raw, 0, sizeof *raw);
    raw->fd = -1;
    if (dir && *dir)
        snprintf(path, sizeof path, "%s/ipcfast/%s", dir, name);
    else
        snprintf(path, sizeof path, "%s/ipcfast-%ld/%s",
                 getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)geteuid(),
                 name);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    raw->fd = fd;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path,
           strlen(path) < sizeof addr.sun_path ? strlen(path) : sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        return -1;
    memcpy(hello, DEFAULT_HS, 8);
    hello[8] = 2;
    if (write(fd, hello, 9) != 9)
        return -1;
    while (got < 9) {
        ssize_t n = read(fd, reply + got, 9 - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    mfd = memfd_create("raw", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0 || ftruncate(mfd, region) != 0)
        return -1;
    if (flaw != RAW_UNSEALED)
        fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    raw->base = (uint8_t *)mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (raw->base == MAP_FAILED) {
        raw->base = NULL;
        return -1;
    }
    raw->mapped = region;
    raw_header(raw, slot);
    raw_setup(packet, slot, 0);
    memset(&msg, 0, sizeof msg);
    iov.iov_base = packet;
    iov.iov_len = sizeof packet;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (flaw != RAW_NO_DESCRIPTOR) {
        struct cmsghdr *c;
        memset(&control, 0, sizeof control);
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &mfd, sizeof mfd);
    }
    if (sendmsg(fd, &msg, 0) != (ssize_t)sizeof packet)
        return -1;
    close(mfd);
    got = 0;
    while (got < 5) {
        ssize_t n = read(fd, answer + got, 5 - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    if (answer[0] == IPC_PACKET_SHM_DECLINE) {
        size_t length = (size_t)answer[1] | (size_t)answer[2] << 8;

        for (got = 0; got < length && length < sizeof raw->why;) {
            ssize_t n = read(fd, raw->why + got, length - got);
            if (n <= 0)
                return -1;
            got += (size_t)n;
        }
    }
    return answer[0]; /* SHM_ACCEPT or SHM_DECLINE (its text in raw->why) */
}

static void raw_publish(raw_peer *raw, uint32_t *seq, uint32_t value)
{
    (void)raw;
    __atomic_store_n(seq, value, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, seq, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
}

static void raw_store(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

/* Reads until the server closes; nonzero if it did within 5 s. */
static int raw_closed_by_server(raw_peer *raw)
{
    long long until = t_now_ms() + 5000;
    char buf[512];
    struct pollfd p;

    p.fd = raw->fd;
    p.events = POLLIN;
    while (t_now_ms() < until) {
        p.revents = 0;
        if (poll(&p, 1, 100) > 0 && read(raw->fd, buf, sizeof buf) <= 0)
            return 1;
    }
    return 0;
}

static void raw_close(raw_peer *raw)
{
    if (raw->fd >= 0)
        close(raw->fd);
    if (raw->base)
        munmap(raw->base, raw->mapped);
    memset(raw, 0, sizeof *raw);
    raw->fd = -1;
}

#endif /* raw peer per platform */

/* Publishes a forged message on the request channel (words from offset 64). */
static void forge(raw_peer *raw, uint32_t seq, uint32_t type, uint32_t length, uint32_t flags)
{
    uint32_t *request = raw->words + 16;

    raw_store(&request[1], type);
    raw_store(&request[2], length);
    raw_store(&request[3], flags);
    raw_publish(raw, &request[0], seq);
}

void test_shm_hostile_peer(void)
{
    static const struct {
        uint32_t seq, type, length, flags;
    } forged[] = {
        {1, IPC_PACKET_REQUEST, 0xFFFFFFFFu, 0}, /* length far beyond the slot */
        {1, IPC_PACKET_REQUEST, 4097, 0},        /* one byte beyond the slot */
        {7, IPC_PACKET_REQUEST, 4, 0},           /* sequence jumped */
        {1, 0, 4, 0},                            /* type 0 */
        {1, 63, 4, 0},                           /* unknown type */
        {1, IPC_PACKET_REQUEST, 4, 0x80},        /* unknown flags */
        {1, IPC_PACKET_RESPONSE, 4, 0},          /* wrong direction */
        {1, IPC_PACKET_SHM_SETUP, 16, 0},        /* a second setup */
    };
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *good;
    size_t i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmbad");
    shm_server_options(&so);
    server = open_server(name, &so, xor_handler, &ctx);
    shm_client_options(&co, 4096);
    good = server ? open_client(name, &co, 5000) : NULL;
    for (i = 0; good && i < sizeof forged / sizeof forged[0]; i++) {
        raw_peer raw;
        int answer = raw_open(name, &raw, 4096, RAW_SOUND);

        if (CHECK(answer == IPC_PACKET_SHM_ACCEPT)) {
            forge(&raw, forged[i].seq, forged[i].type, forged[i].length, forged[i].flags);
            if (!CHECK(raw_closed_by_server(&raw)))
                note("      (case %lu)", (unsigned long)i);
        } else {
            note("      (case %lu: answer %d)", (unsigned long)i, answer);
        }
        raw_close(&raw);
        CHECK(expect_response(good, "\x1d", 1, "A", 1)); /* 0x1d ^ 0x5c = 'A' */
    }
    /* Offers the server must refuse (the platform's list). */
    for (i = 0; good && i < sizeof RAW_FLAWS / sizeof RAW_FLAWS[0]; i++) {
        raw_peer raw;
        int answer = raw_open(name, &raw, 4096, RAW_FLAWS[i].flaw);

        /* a malformed setup is a protocol error (ERROR, then close) */
        if (!CHECK(answer == (RAW_FLAWS[i].why ? IPC_PACKET_SHM_DECLINE : IPC_PACKET_ERROR)) ||
            !CHECK(!RAW_FLAWS[i].why || strstr(raw.why, RAW_FLAWS[i].why)))
            note("      (flaw %d: answer %d, \"%s\")", RAW_FLAWS[i].flaw, answer, raw.why);
        raw_close(&raw);
    }
    if (good) {
        CHECK(expect_response(good, "\x1d", 1, "A", 1));
        ipc_client_close(good);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* For test_shm_requests_in_place: the handler waits, mid-call, until the
 * test has changed the request's first byte in its own mapping of the
 * region, then reads it. */
typedef struct peek_ctx {
    srv_ctx s;   /* its lock guards the fields below */
    int entered; /* the handler has the request */
    int changed; /* the test wrote into the slot */
    int seen;    /* the request's first byte, read after the change */
} peek_ctx;

static void peek_handler(void *user_data, ipc_call *call, const uint8_t *request, size_t size)
{
    peek_ctx *p = (peek_ctx *)user_data;

    if (!request)
        return; /* a disconnect */
    ctx_set(&p->s, &p->entered, 1);
    ctx_wait_for(&p->s, &p->changed, 1, 5000);
    ctx_set(&p->s, &p->seen, size ? request[0] : -1);
    ipc_call_respond(call, "k", 1, NULL);
}

/* shm_requests_in_place hands the handler the slot itself (a change the
 * client makes shows), the default a private copy (it does not). */
void test_shm_requests_in_place(void)
{
    int in_place;

    for (in_place = 0; in_place < 2; in_place++) {
        char name[96];
        peek_ctx p;
        ipc_server_options so;
        ipc_server_t *server;
        raw_peer raw;

        memset(&p, 0, sizeof p);
        ctx_init(&p.s);
        make_name(name, sizeof name, in_place ? "shmlend" : "shmcopy");
        shm_server_options(&so);
        so.shm_requests_in_place = in_place;
        server = open_server(name, &so, peek_handler, &p.s); /* &p.s is &p */
        if (server && CHECK(raw_open(name, &raw, 4096, RAW_SOUND) == IPC_PACKET_SHM_ACCEPT)) {
            raw.base[IPC_SHM_HEADER_SIZE] = 'P';
            forge(&raw, 1, IPC_PACKET_REQUEST, 1, 0);
            if (CHECK(ctx_wait_for(&p.s, &p.entered, 1, 5000))) {
                raw.base[IPC_SHM_HEADER_SIZE] = 'X';
                ctx_set(&p.s, &p.changed, 1);
                CHECK(ctx_wait_for(&p.s, &p.seen, 1, 5000));
                if (!CHECK(ctx_get(&p.s, &p.seen) == (in_place ? 'X' : 'P')))
                    note("      (in place: %d, seen %d)", in_place, ctx_get(&p.s, &p.seen));
            }
            raw_close(&raw);
        }
        ipc_server_stop(server);
        ctx_free(&p.s);
    }
}

/* shm_responses_in_place: responses read in the slot are right at every
 * size, and ipc_client_call's inline copy is terminated even though the
 * slot holds the rest of a longer, earlier response after it. */
void test_shm_responses_in_place(void)
{
    static const size_t sizes[] = {300, 10, 0, 240, 241, 4096, 5000, 3, 4095};
    unsigned char req[5000], want[5000];
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_client_reply reply;
    const uint8_t *response;
    size_t response_size, i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmresp");
    shm_server_options(&so);
    server = open_server(name, &so, xor_handler, &ctx);
    shm_client_options(&co, 4096);
    co.shm_responses_in_place = 1;
    client = server ? open_client(name, &co, 5000) : NULL;
    memset(&reply, 0, sizeof reply);
    for (i = 0; client && i < sizeof sizes / sizeof sizes[0]; i++) {
        int64_t n;

        memset(req, (int)(0x1d + i), sizes[i]);
        xor_expected(req, want, sizes[i]);
        n = ipc_client_call(client, req, sizes[i], 5000, &reply);
        if (!CHECK(n == (int64_t)sizes[i]) || !CHECK(memcmp(reply.data, want, sizes[i]) == 0))
            note("      (call, size %lu: %lld)", (unsigned long)sizes[i], (long long)n);
        if (n >= 0 && (size_t)n <= IPC_REPLY_INLINE_SIZE)
            CHECK(reply.data == reply.inline_data && reply.inline_data[n] == 0);
        /* ipc_client_request: in the slot, so unterminated (not looked at:
         * a response that fills the slot ends where the region does) */
        if (!CHECK_RC(
                ipc_client_request(client, req, sizes[i], &response, &response_size, 5000, NULL),
                IPC_OK, NULL) ||
            !CHECK(response_size == sizes[i] && memcmp(response, want, sizes[i]) == 0))
            note("      (request, size %lu)", (unsigned long)sizes[i]);
    }
    ipc_error_clear(&reply.error);
    if (client) {
        CHECK(ipc_client_uses_shm(client) == SHM_HERE);
        /* A shutdown (from any thread) right after a call ends must leave
         * the response readable until ipc_client_close: the caller may
         * still be copying it out of the slot. It was unmapped at once. */
        memset(req, 0x2a, 5000);
        xor_expected(req, want, 5000);
        if (CHECK_RC(ipc_client_request(client, req, 5000, &response, &response_size, 5000, NULL),
                     IPC_OK, NULL)) {
            ipc_client_shutdown(client);
            CHECK(response_size == 5000 && memcmp(response, want, 5000) == 0);
        }
        ipc_client_close(client);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* A peer that sets up the region and disappears mid-request: the server
 * notices through the socket and serves the next client. */
void test_shm_vanished_peer(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_server_t *server;
    raw_peer raw;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmgone");
    shm_server_options(&so);
    server = open_server(name, &so, xor_handler, &ctx);
    if (server && CHECK(raw_open(name, &raw, 4096, RAW_SOUND) == IPC_PACKET_SHM_ACCEPT)) {
        long long t0 = t_now_ms();
        /* half a message: length written, never published */
        raw_store(&raw.words[16 + 2], 10u);
        raw_close(&raw);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 5000));
        CHECK_MS(t_now_ms() - t0, 0, 2000);
    } else if (server) {
        raw_close(&raw);
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* Killed processes on either side of a shared-memory connection: the
 * survivor notices through the socket, never hangs. */
void test_shm_killed_peers(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    ipc_error err = {0, 0, NULL};
    t_proc *proc;

    set_test_shm_env(1);
    /* a killed client, mid-request: the server goes on serving */
    ctx_init(&ctx);
    make_name(name, sizeof name, "shmkc");
    shm_server_options(&so);
    server = open_server(name, &so, cmd_handler, &ctx);
    if (server) {
        proc = t_proc_spawn("--child-client-hang", name);
        CHECK(proc != NULL);
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 15000));
        t_proc_kill(proc);
        CHECK(t_proc_wait(proc, 10000) != 0);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 5000));
        shm_client_options(&co, 0);
        client = open_client(name, &co, 5000);
        if (client) {
            CHECK(ipc_client_uses_shm(client));
            expect_text(client, "next", "next");
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);

    /* a killed server while the client waits on the region */
    make_name(name, sizeof name, "shmks");
    proc = t_proc_spawn("--child-server-hold", name);
    CHECK(proc != NULL);
    shm_client_options(&co, 0);
    co.wait_if_not_found = 1; /* the child server may still be starting */
    client = proc ? open_client(name, &co, 15000) : NULL;
    if (client) {
        const uint8_t *resp;
        size_t size;
        long long t0;
        CHECK(ipc_client_uses_shm(client));
        CHECK_RC(ipc_client_write(client, "sleep:20000", 11, 5000, &err), IPC_OK, &err);
        ipc_error_clear(&err);
        t_sleep_ms(200);
        t_proc_kill(proc);
        t0 = t_now_ms();
        CHECK_RC(ipc_client_read(client, &resp, &size, 30000, &err), IPC_E_CLOSED, &err);
        ipc_error_clear(&err);
        CHECK_MS(t_now_ms() - t0, 0, 3000);
        ipc_client_close(client);
    }
    if (proc) {
        t_proc_kill(proc);
        CHECK(t_proc_wait(proc, 10000) != 0);
    }
    set_test_shm_env(0);
}

#endif /* SHM_HERE */

#if SHM_HERE
#if defined(_WIN32)

/* Views of sections in this process (the regions, and whatever else the
 * runtime maps, which stays put during the test). */
static int count_maps(void)
{
    const uint8_t *at = NULL;
    MEMORY_BASIC_INFORMATION info;
    int count = 0;

    while (VirtualQuery(at, &info, sizeof info) == sizeof info) {
        count += info.Type == MEM_MAPPED && info.BaseAddress == info.AllocationBase;
        at = (const uint8_t *)info.BaseAddress + info.RegionSize;
    }
    return count;
}

static int count_handles(void)
{
    DWORD count = 0;

    return GetProcessHandleCount(GetCurrentProcess(), &count) ? (int)count : -1;
}

static double cpu_seconds(void)
{
    FILETIME created, exited, kernel, user;

    if (!GetProcessTimes(GetCurrentProcess(), &created, &exited, &kernel, &user))
        return 0;
    return ((double)kernel.dwLowDateTime + (double)kernel.dwHighDateTime * 4294967296.0 +
            (double)user.dwLowDateTime + (double)user.dwHighDateTime * 4294967296.0) /
           1e7;
}

/* Per connection, both sides in this process: two pipe ends with their
 * four I/O events each, two events per region on each side, the server's
 * stop copy of one, its thread. The sections are closed once mapped. */
#define HANDLES_PER_CONNECTION 16

#else

/* Lines of /proc/self/maps that map a region (memfd "ipcfast-shm"). */
static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int count = 0;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        count += strstr(line, "memfd:ipcfast-shm") != NULL;
    fclose(f);
    return count;
}

static int count_handles(void)
{
    return COUNT_FDS();
}

static double cpu_seconds(void)
{
    struct rusage u;

    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

/* a socket on each side: the memfds are closed once mapped */
#define HANDLES_PER_CONNECTION 2

#endif

/* max_clients connections, each with its mapping: nothing stays behind
 * (descriptors, mappings), and 32 idle ones cost (almost) no CPU. */
void test_shm_many_idle_connections(void)
{
    enum { N = 32 };
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *clients[N];
    int fds0, maps0, i, mapped = 0;
    double cpu0, idle_cpu;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmmany");
    fds0 = count_handles();
    maps0 = count_maps();
    if (fds0 <= 0) /* wine's GetProcessHandleCount answers 0: only mappings are counted */
        note("      no handle count here: only the mappings are checked for leaks");
    shm_server_options(&so);
    so.max_clients = N;
    server = open_server(name, &so, xor_handler, &ctx);
    shm_client_options(&co, 4096);
    for (i = 0; i < N; i++) {
        clients[i] = server ? open_client(name, &co, 5000) : NULL;
        mapped += clients[i] && ipc_client_uses_shm(clients[i]);
        if (clients[i])
            CHECK(expect_response(clients[i], "\x1d", 1, "A", 1));
    }
    CHECK(mapped == N);
    CHECK(count_maps() == maps0 + 2 * N); /* each side maps each region */
    CHECK(count_handles() <= fds0 + HANDLES_PER_CONNECTION * N + 8);
    t_sleep_ms(1300); /* let the connection threads settle into their idle waits */
    cpu0 = cpu_seconds();
    t_sleep_ms(1000);
    idle_cpu = cpu_seconds() - cpu0;
    note("      idle: %.1f ms of CPU in 1 s with %d shared-memory connections", idle_cpu * 1000, N);
    CHECK(idle_cpu < 0.2); /* a spinning waiter would burn a whole second */
    for (i = 0; i < N; i++)
        ipc_client_close(clients[i]);
    ipc_server_stop(server);
    CHECK(count_handles() == fds0);
    CHECK(count_maps() == maps0);
    ctx_free(&ctx);
}

#endif

/* options.connection_handler over shared memory, requests read in place:
 * small ones come inline, larger ones from the slot, the largest from the
 * socket; a stop ends a loop that waits for a request. */
void test_shm_connection_loop(void)
{
    static const size_t sizes[] = {
        0,    16,    IPC_REQUEST_INLINE_SIZE, IPC_REQUEST_INLINE_SIZE + 1,
        4000, 65536, 3 * 1024 * 1024,         5};
    char name[96];
    srv_ctx ctx;
    ipc_server_options so;
    ipc_client_options co;
    ipc_server_t *server;
    ipc_client_t *client;
    unsigned char *req = (unsigned char *)malloc(3 * 1024 * 1024);
    unsigned char *want = (unsigned char *)malloc(3 * 1024 * 1024);
    long long started;
    size_t i;

    ctx_init(&ctx);
    make_name(name, sizeof name, "shmloop");
    shm_server_options(&so);
    so.shm_requests_in_place = 1;
    so.connection_handler = loop_xor_handler;
    server = open_server(name, &so, NULL, &ctx);
    shm_client_options(&co, 1024 * 1024);
    client = server ? open_client(name, &co, 5000) : NULL;
    if (client) {
        CHECK(ipc_client_uses_shm(client) == SHM_HERE);
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            fill_random(req, sizes[i], (unsigned)i + 41);
            xor_expected(req, want, sizes[i]);
            if (!expect_response(client, req, sizes[i], want, sizes[i]))
                note("      (size %lu)", (unsigned long)sizes[i]);
        }
        /* the loop now waits for the next request: a stop ends it */
        started = t_now_ms();
        ipc_server_stop(server);
        server = NULL;
        CHECK_MS(t_now_ms() - started, 0, 2000);
        CHECK(ctx_get(&ctx, &ctx.disconnects) == 1);
        ipc_client_close(client);
    }
    if (server)
        ipc_server_stop(server);
    free(req);
    free(want);
    ctx_free(&ctx);
}
