/*
 * Windows connections: connect, overlapped reads and writes on a pipe,
 * the peer's user, the server-user check, interrupt, drain and close.
 * Part of the Windows platform (ipc_win32.c).
 */
#if defined(_WIN32)

#include "ipc_win32_internal.h"

/* ======================================================================
 * Connections
 * ====================================================================== */

int ipc_plat_connect(ipc_plat_conn **out, const char *name, int timeout_ms, ipc_error *err)
{
    char *path = NULL;
    wchar_t *wide = NULL;
    DWORD mode = PIPE_READMODE_MESSAGE;
    HANDLE pipe;
    DWORD e;
    int r;

    *out = NULL;
    r = ipc__win32_resolve_name(name, &path, &wide, err);
    if (r != IPC_OK)
        return r;
    /* SECURITY_IDENTIFICATION: the server may learn who we are, not act
     * as us. */
    pipe = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                       FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                       NULL);
    if (pipe == INVALID_HANDLE_VALUE) {
        e = GetLastError();
        if (e == ERROR_PIPE_BUSY) {
            /* Every instance is taken: wait (within the budget) for one to
             * free up, then let the caller try again. Sliced, so the
             * caller's loop notices a server that stopped meanwhile; 0
             * would mean "the server's default", so wait at least 1 ms. */
            DWORD wait = timeout_ms < 0 || timeout_ms > IPC_WAKE_INTERVAL_MS
                             ? IPC_WAKE_INTERVAL_MS
                             : (timeout_ms == 0 ? 1 : (DWORD)timeout_ms);

            if (!WaitNamedPipeW(wide, wait) && GetLastError() == ERROR_FILE_NOT_FOUND)
                e = ERROR_FILE_NOT_FOUND;
        }
        if (e == ERROR_PIPE_BUSY)
            r = ipc__fail(err, IPC_E_BUSY, (int)e, "every instance of '%s' is busy", path);
        else if (e == ERROR_FILE_NOT_FOUND)
            r = ipc__fail(err, IPC_E_NOT_FOUND, (int)e, "no server is listening on '%s'", path);
        else
            r = ipc__win32_fail_win(err, e, "CreateFile on the pipe");
        free(path);
        free(wide);
        return r;
    }
    free(path);
    free(wide);
    if (!SetNamedPipeHandleState(pipe, &mode, NULL, NULL)) {
        e = GetLastError();
        CloseHandle(pipe);
        return ipc__win32_fail_win(err, e, "SetNamedPipeHandleState(PIPE_READMODE_MESSAGE)");
    }
    return ipc__win32_wrap_conn(pipe, 0, out, err);
}

/* Waits for an overlapped operation, for `cancel_event`, or for the
 * timeout. On anything but completion the I/O is cancelled; the result of
 * GetOverlappedResult then still reports data that completed in the race,
 * so nothing read is ever dropped. Returns the wait result. */
static DWORD finish_io(ipc_plat_conn *c, OVERLAPPED *ov, HANDLE cancel_event, int timeout_ms,
                       DWORD *transferred, DWORD *error)
{
    HANDLE waits[2];
    DWORD w;

    waits[0] = ov->hEvent;
    waits[1] = cancel_event;
    w = WaitForMultipleObjects(2, waits, FALSE, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms);
    if (w != WAIT_OBJECT_0)
        CancelIoEx(c->pipe, ov);
    *error = GetOverlappedResult(c->pipe, ov, transferred, TRUE) ? 0 : GetLastError();
    return w;
}

int ipc_plat_read(ipc_plat_conn *c, void *buf, size_t capacity, size_t *got, int timeout_ms,
                  ipc_error *err)
{
    DWORD want = capacity > 0x7fffffff ? 0x7fffffff : (DWORD)capacity;

    *got = 0;
    for (;;) {
        OVERLAPPED ov;
        DWORD n = 0, e = 0, w;

        if (InterlockedCompareExchange(&c->soft, 0, 0))
            return ipc__fail(err, IPC_E_CLOSED, 0, "the connection was closed by stop");
        memset(&ov, 0, sizeof ov);
        ResetEvent(c->read_event);
        ov.hEvent = c->read_event;
        if (!ReadFile(c->pipe, buf, want, NULL, &ov)) {
            e = GetLastError();
            if (e != ERROR_IO_PENDING && e != ERROR_MORE_DATA)
                return ipc__win32_map_error(e) == IPC_E_CLOSED
                           ? ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection")
                           : ipc__win32_fail_win(err, e, "ReadFile");
        }
        w = finish_io(c, &ov, c->soft_event, timeout_ms, &n, &e);
        /* ERROR_MORE_DATA: a part of a larger message, which is fine for a
         * byte stream. */
        if (e == 0 || e == ERROR_MORE_DATA) {
            if (n == 0)
                continue; /* an empty message carries nothing */
            *got = n;
            return IPC_OK;
        }
        if (e == ERROR_OPERATION_ABORTED && w == WAIT_TIMEOUT)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
        if (e == ERROR_OPERATION_ABORTED)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the connection was closed by stop");
        if (ipc__win32_map_error(e) == IPC_E_CLOSED)
            return ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection");
        return ipc__win32_fail_win(err, e, "ReadFile");
    }
}

static int write_message(ipc_plat_conn *c, const void *data, DWORD size, int64_t deadline,
                         ipc_error *err)
{
    OVERLAPPED ov;
    DWORD n = 0, e = 0, w;
    int wait = -1;

    if (InterlockedCompareExchange(&c->hard, 0, 0))
        return ipc__fail(err, IPC_E_CLOSED, 0, "the connection was closed by stop");
    memset(&ov, 0, sizeof ov);
    ResetEvent(c->write_event);
    ov.hEvent = c->write_event;
    if (!WriteFile(c->pipe, data, size, NULL, &ov)) {
        e = GetLastError();
        if (e != ERROR_IO_PENDING)
            return ipc__win32_map_error(e) == IPC_E_CLOSED
                       ? ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection")
                       : ipc__win32_fail_win(err, e, "WriteFile");
    }
    if (deadline >= 0) {
        int64_t left = deadline - ipc_plat_now_ms();

        wait = left <= 0 ? 0 : (left > 0x7fffffff ? 0x7fffffff : (int)left);
    }
    w = finish_io(c, &ov, c->hard_event, wait, &n, &e);
    if (e == 0 && n == size)
        return IPC_OK;
    if (e == ERROR_OPERATION_ABORTED && w == WAIT_TIMEOUT)
        return ipc__fail(err, IPC_E_TIMEOUT, 0, "the peer did not take the data in time");
    if (e == ERROR_OPERATION_ABORTED || ipc__win32_map_error(e) == IPC_E_CLOSED)
        return ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection");
    if (e == 0)
        return ipc__fail(err, IPC_E_SYSTEM, 0, "WriteFile wrote %lu of %lu bytes", (unsigned long)n,
                         (unsigned long)size);
    return ipc__win32_fail_win(err, e, "WriteFile");
}

int ipc_plat_write(ipc_plat_conn *c, const ipc_plat_buf *parts, int count, int timeout_ms,
                   ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    size_t total = 0;
    int i, r = IPC_OK;

    for (i = 0; i < count; i++)
        total += parts[i].size;
    if (count > 1 && total <= COALESCE_LIMIT) {
        size_t at = 0;

        if (c->coalesce_capacity < total) {
            uint8_t *grown = (uint8_t *)realloc(c->coalesce, COALESCE_LIMIT);

            if (!grown)
                return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a write buffer");
            c->coalesce = grown;
            c->coalesce_capacity = COALESCE_LIMIT;
        }
        for (i = 0; i < count; i++) {
            memcpy(c->coalesce + at, parts[i].data, parts[i].size);
            at += parts[i].size;
        }
        return write_message(c, c->coalesce, (DWORD)total, deadline, err);
    }
    for (i = 0; i < count && r == IPC_OK; i++) {
        const uint8_t *data = (const uint8_t *)parts[i].data;
        size_t left = parts[i].size;

        /* WriteFile takes a DWORD: split giant payloads. */
        while (left > 0 && r == IPC_OK) {
            DWORD chunk = left > 0x40000000u ? 0x40000000u : (DWORD)left;

            r = write_message(c, data, chunk, deadline, err);
            data += chunk;
            left -= chunk;
        }
    }
    return r;
}

int ipc_plat_peer_same_user(ipc_plat_conn *c, int *same, ipc_error *err)
{
    ULONG pid = 0;
    HANDLE process;
    TOKEN_USER *ours = NULL, *theirs = NULL;
    int r;

    *same = 0;
    if (!GetNamedPipeClientProcessId(c->pipe, &pid))
        return ipc__win32_fail_win(err, GetLastError(), "GetNamedPipeClientProcessId");
    process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
    if (!process)
        return ipc__win32_fail_win(err, GetLastError(), "OpenProcess(client)");
    r = ipc__win32_process_user(process, &theirs, err);
    CloseHandle(process);
    if (r == IPC_OK)
        r = ipc__win32_process_user(GetCurrentProcess(), &ours, err);
    if (r == IPC_OK)
        *same = EqualSid(ours->User.Sid, theirs->User.Sid) != 0;
    free(ours);
    free(theirs);
    return r;
}

int ipc_plat_name_owner(const char *name)
{
    /* A pipe name has no owner record: a server between two instances and
     * one that never existed look alike, so the client retries briefly. */
    (void)name;
    return IPC_PLAT_OWNER_UNKNOWN;
}

/* "DOMAIN\\user", or the SID's text form if it has no name. */
static char *describe_sid(PSID sid)
{
    char user[256], domain[256];
    DWORD user_size = sizeof user, domain_size = sizeof domain;
    SID_NAME_USE use;

    if (LookupAccountSidA(NULL, sid, user, &user_size, domain, &domain_size, &use))
        return domain[0] ? ipc__format("user %s\\%s", domain, user) : ipc__format("user %s", user);
    return ipc__format("an unnamed user");
}

int ipc_plat_check_server_user(ipc_plat_conn *c, const char *name, int policy, uint32_t uid,
                               ipc_error *err)
{
    static SID_IDENTIFIER_AUTHORITY nt_authority = {SECURITY_NT_AUTHORITY};
    ULONG pid = 0;
    HANDLE process;
    TOKEN_USER *ours = NULL, *theirs = NULL;
    PSID system = NULL;
    int r;

    (void)uid;
    if (policy == IPC_SERVER_USER_ANY)
        return IPC_OK;
    if (policy == IPC_SERVER_USER_UID)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "a server uid means nothing on Windows: use "
                         "the default (same user or LocalSystem) or \"any\"");
    if (!GetNamedPipeServerProcessId(c->pipe, &pid))
        return ipc__win32_fail_win(err, GetLastError(), "GetNamedPipeServerProcessId");
    process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
    if (!process)
        return ipc__win32_fail_win(err, GetLastError(), "OpenProcess(server)");
    r = ipc__win32_process_user(process, &theirs, err);
    CloseHandle(process);
    if (r == IPC_OK)
        r = ipc__win32_process_user(GetCurrentProcess(), &ours, err);
    if (r == IPC_OK && !AllocateAndInitializeSid(&nt_authority, 1, SECURITY_LOCAL_SYSTEM_RID, 0, 0,
                                                 0, 0, 0, 0, 0, &system))
        r = ipc__win32_fail_win(err, GetLastError(), "AllocateAndInitializeSid(LocalSystem)");
    if (r == IPC_OK && !EqualSid(ours->User.Sid, theirs->User.Sid) &&
        !EqualSid(system, theirs->User.Sid)) {
        char *who = describe_sid(theirs->User.Sid);

        r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                      "the server on '%s' runs as %s, not as this user or LocalSystem; "
                      "refusing to send it anything (pass server_user to trust it)",
                      name, who ? who : "another user");
        free(who);
    }
    if (system)
        FreeSid(system);
    free(ours);
    free(theirs);
    return r;
}

void ipc_plat_conn_interrupt(ipc_plat_conn *c, int hard)
{
    InterlockedExchange(&c->soft, 1);
    SetEvent(c->soft_event);
    if (hard) {
        InterlockedExchange(&c->hard, 1);
        SetEvent(c->hard_event);
        CancelIoEx(c->pipe, NULL);
        /* The client sees the pipe broken now, not when the thread ends. */
        if (c->server_side)
            DisconnectNamedPipe(c->pipe);
    }
    /* after `soft`, so the woken shared-memory wait sees it; the event
     * handle is the connection's own, closed only with it */
    {
        HANDLE wake = InterlockedCompareExchangePointer((PVOID volatile *)&c->wake_event, NULL,
                                                        NULL);

        if (wake)
            SetEvent(wake);
    }
}

void ipc_plat_conn_drain(ipc_plat_conn *c)
{
    /* Wait until the client has read what we wrote; a hard interrupt
     * (DisconnectNamedPipe from stop) cuts this short. Closing without
     * DisconnectNamedPipe keeps unread data readable as well. */
    if (c->server_side && !InterlockedCompareExchange(&c->hard, 0, 0))
        FlushFileBuffers(c->pipe);
}

void ipc_plat_conn_close(ipc_plat_conn *c)
{
    if (!c)
        return;
    if (c->pipe)
        CloseHandle(c->pipe);
    if (c->read_event)
        CloseHandle(c->read_event);
    if (c->write_event)
        CloseHandle(c->write_event);
    if (c->soft_event)
        CloseHandle(c->soft_event);
    if (c->hard_event)
        CloseHandle(c->hard_event);
    if (c->wake_event)
        CloseHandle(c->wake_event);
    free(c->coalesce);
    free(c);
}

int ipc_plat_conn_closed(ipc_plat_conn *c)
{
    DWORD available = 0;

    if (InterlockedCompareExchange(&c->soft, 0, 0))
        return 1;
    return !PeekNamedPipe(c->pipe, NULL, 0, NULL, &available, NULL);
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_win32_pipe_not_on_this_platform;
#endif /* _WIN32 */
