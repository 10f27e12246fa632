/*
 * Windows implementation of ipc_platform.h: named pipes (\\.\pipe\NAME) in
 * message mode with overlapped I/O, Win32 threads, SRW locks and condition
 * variables. The whole file compiles to nothing elsewhere, so vendoring
 * projects can build every .c file in csrc/ on every platform.
 *
 * The pipe is used as a byte stream: a read that ends with ERROR_MORE_DATA
 * just returned part of a message, and the framing in ipc.c reassembles
 * packets whatever the message boundaries are.
 */
#if defined(_WIN32)

#if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0601
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0601   /* CancelIoEx, SRW locks, GetNamedPipeClientProcessId */
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif

#include "ipc_platform.h"

#include <windows.h>
#include <aclapi.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#pragma comment(lib, "advapi32.lib")
#endif

#ifndef PIPE_REJECT_REMOTE_CLIENTS
#define PIPE_REJECT_REMOTE_CLIENTS 0x00000008
#endif

#define PIPE_PREFIX "\\\\.\\pipe\\"
#define PIPE_BUFFER_SIZE (64u * 1024u)
/* Writes up to this size are copied into one buffer so header and payload
 * travel as one pipe message (one ReadFile on the other side). */
#define COALESCE_LIMIT (64u * 1024u)

/* ======================================================================
 * Errors
 * ====================================================================== */

/* The one table from GetLastError() to ipc_result. */
static int map_error(DWORD e)
{
    switch (e) {
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
        return IPC_E_NOT_FOUND;
    case ERROR_PIPE_BUSY:
    case ERROR_SEM_TIMEOUT:
        return IPC_E_BUSY;
    case ERROR_ACCESS_DENIED:
        return IPC_E_ACCESS_DENIED;
    case ERROR_BROKEN_PIPE:          /* 109 */
    case ERROR_NO_DATA:              /* 232 */
    case ERROR_PIPE_NOT_CONNECTED:   /* 233 */
    case ERROR_OPERATION_ABORTED:
        return IPC_E_CLOSED;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
        return IPC_E_NO_MEMORY;
    case ERROR_FILENAME_EXCED_RANGE:
        return IPC_E_NAME_TOO_LONG;
    case ERROR_INVALID_NAME:
        return IPC_E_INVALID;
    case ERROR_TIMEOUT:
        return IPC_E_TIMEOUT;
    default:
        return IPC_E_SYSTEM;
    }
}

static int fail_win(ipc_error *err, DWORD e, const char *what)
{
    char *text = NULL;
    DWORD n = FormatMessageA(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                                 FORMAT_MESSAGE_IGNORE_INSERTS,
                             NULL, e, 0, (LPSTR)&text, 0, NULL);
    int r;

    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        text[--n] = '\0';
    r = ipc__fail(err, map_error(e), (int)e, "%s failed: %s (error %lu)", what,
                  n ? text : "unknown error", (unsigned long)e);
    if (text)
        LocalFree(text);
    return r;
}

/* ======================================================================
 * Time, threads, locks
 * ====================================================================== */

int64_t ipc_plat_now_ms(void)
{
    return (int64_t)GetTickCount64();
}

void ipc_plat_sleep_ms(int ms)
{
    if (ms > 0)
        Sleep((DWORD)ms);
}

static SRWLOCK global_lock = SRWLOCK_INIT;

void ipc_plat_global_lock(void)
{
    AcquireSRWLockExclusive(&global_lock);
}

void ipc_plat_global_unlock(void)
{
    ReleaseSRWLockExclusive(&global_lock);
}

struct ipc_plat_thread {
    HANDLE handle;
    DWORD id;
    void (*main)(void *);
    void *arg;
};

static DWORD WINAPI thread_trampoline(LPVOID arg)
{
    ipc_plat_thread *thread = (ipc_plat_thread *)arg;

    thread->main(thread->arg);
    return 0;
}

int ipc_plat_thread_start(ipc_plat_thread **out, void (*main)(void *), void *arg,
                          ipc_error *err)
{
    ipc_plat_thread *thread = (ipc_plat_thread *)calloc(1, sizeof *thread);

    *out = NULL;
    if (!thread)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a thread");
    thread->main = main;
    thread->arg = arg;
    /* Start suspended: the thread may look itself up before CreateThread
     * has returned its id. */
    thread->handle = CreateThread(NULL, 0, thread_trampoline, thread, CREATE_SUSPENDED,
                                  &thread->id);
    if (!thread->handle) {
        DWORD e = GetLastError();

        free(thread);
        return fail_win(err, e, "CreateThread");
    }
    *out = thread;
    ResumeThread(thread->handle);
    return IPC_OK;
}

void ipc_plat_thread_join(ipc_plat_thread *thread)
{
    if (!thread)
        return;
    WaitForSingleObject(thread->handle, INFINITE);
    CloseHandle(thread->handle);
    free(thread);
}

int ipc_plat_thread_is_current(const ipc_plat_thread *thread)
{
    return thread && thread->id == GetCurrentThreadId();
}

struct ipc_plat_mutex {
    SRWLOCK lock;
};

struct ipc_plat_cond {
    CONDITION_VARIABLE cond;
};

int ipc_plat_mutex_create(ipc_plat_mutex **out, ipc_error *err)
{
    ipc_plat_mutex *m = (ipc_plat_mutex *)malloc(sizeof *m);

    *out = NULL;
    if (!m)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a lock");
    InitializeSRWLock(&m->lock);
    *out = m;
    return IPC_OK;
}

void ipc_plat_mutex_destroy(ipc_plat_mutex *m)
{
    free(m);
}

void ipc_plat_mutex_lock(ipc_plat_mutex *m)
{
    AcquireSRWLockExclusive(&m->lock);
}

void ipc_plat_mutex_unlock(ipc_plat_mutex *m)
{
    ReleaseSRWLockExclusive(&m->lock);
}

int ipc_plat_mutex_trylock(ipc_plat_mutex *m)
{
    return TryAcquireSRWLockExclusive(&m->lock) != 0;
}

int ipc_plat_cond_create(ipc_plat_cond **out, ipc_error *err)
{
    ipc_plat_cond *c = (ipc_plat_cond *)malloc(sizeof *c);

    *out = NULL;
    if (!c)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a condition variable");
    InitializeConditionVariable(&c->cond);
    *out = c;
    return IPC_OK;
}

void ipc_plat_cond_destroy(ipc_plat_cond *c)
{
    free(c);
}

void ipc_plat_cond_wait(ipc_plat_cond *c, ipc_plat_mutex *m, int timeout_ms)
{
    SleepConditionVariableSRW(&c->cond, &m->lock, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms,
                              0);
}

void ipc_plat_cond_broadcast(ipc_plat_cond *c)
{
    WakeAllConditionVariable(&c->cond);
}

/* ======================================================================
 * Readiness signal: a manual-reset event
 * ====================================================================== */

struct ipc_plat_ready {
    HANDLE event;
};

int ipc_plat_ready_create(ipc_plat_ready **out, ipc_error *err)
{
    ipc_plat_ready *ready = (ipc_plat_ready *)malloc(sizeof *ready);

    *out = NULL;
    if (!ready)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a readiness signal");
    ready->event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!ready->event) {
        DWORD e = GetLastError();

        free(ready);
        return fail_win(err, e, "CreateEvent");
    }
    *out = ready;
    return IPC_OK;
}

void ipc_plat_ready_destroy(ipc_plat_ready *ready)
{
    if (!ready)
        return;
    CloseHandle(ready->event);
    free(ready);
}

void ipc_plat_ready_set(ipc_plat_ready *ready)
{
    SetEvent(ready->event);
}

void ipc_plat_ready_clear(ipc_plat_ready *ready)
{
    ResetEvent(ready->event);
}

intptr_t ipc_plat_ready_handle(const ipc_plat_ready *ready)
{
    return (intptr_t)ready->event;
}

/* ======================================================================
 * Names and security
 * ====================================================================== */

/* "NAME" -> \\.\pipe\NAME (UTF-8 and UTF-16); a full pipe path is kept. */
static int resolve_name(const char *name, char **path_out, wchar_t **wide_out, ipc_error *err)
{
    size_t prefix = sizeof PIPE_PREFIX - 1;
    char *path;
    wchar_t *wide;
    int count;

    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "empty name");
    if (_strnicmp(name, PIPE_PREFIX, prefix) == 0)
        path = ipc__format("%s", name);
    else if (strchr(name, '\\'))
        return ipc__fail(err, IPC_E_INVALID, 0, "a pipe name cannot contain '\\': '%s'", name);
    else
        path = ipc__format("%s%s", PIPE_PREFIX, name);
    if (!path)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (strlen(path) > 256) {
        int r = ipc__fail(err, IPC_E_NAME_TOO_LONG, ERROR_FILENAME_EXCED_RANGE,
                          "the pipe name '%s' is %lu characters; Windows allows 256",
                          path, (unsigned long)strlen(path));
        free(path);
        return r;
    }
    count = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, NULL, 0);
    wide = count > 0 ? (wchar_t *)malloc((size_t)count * sizeof *wide) : NULL;
    if (!wide || MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, wide, count) <= 0) {
        free(wide);
        free(path);
        return ipc__fail(err, IPC_E_INVALID, 0, "the name is not valid UTF-8");
    }
    *path_out = path;
    *wide_out = wide;
    return IPC_OK;
}

/* The current process's user SID, malloc'ed (TOKEN_USER holds it). */
static int process_user(HANDLE process, TOKEN_USER **out, ipc_error *err)
{
    HANDLE token = NULL;
    DWORD size = 0;
    TOKEN_USER *user;

    *out = NULL;
    if (!OpenProcessToken(process, TOKEN_QUERY, &token))
        return fail_win(err, GetLastError(), "OpenProcessToken");
    GetTokenInformation(token, TokenUser, NULL, 0, &size);
    user = size ? (TOKEN_USER *)malloc(size) : NULL;
    if (!user || !GetTokenInformation(token, TokenUser, user, size, &size)) {
        DWORD e = GetLastError();

        free(user);
        CloseHandle(token);
        return user ? fail_win(err, e, "GetTokenInformation(TokenUser)")
                    : ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    }
    CloseHandle(token);
    *out = user;
    return IPC_OK;
}

struct ipc_plat_listener {
    char *path;
    wchar_t *wide_path;
    DWORD max_instances;
    HANDLE stop_event;        /* manual reset: set once by interrupt */
    HANDLE first_instance;    /* created by listen, claimed by the first acceptor */
    SECURITY_ATTRIBUTES attributes;
    PSECURITY_DESCRIPTOR descriptor;
    PACL acl;
    PSID world_sid;
    TOKEN_USER *user;
};

/* Default: only our user (FILE_ALL_ACCESS). world: the World SID
 * (SECURITY_WORLD_RID), so a service in session 0 and a client in a user
 * session can meet. */
static int build_security(ipc_plat_listener *l, int access, ipc_error *err)
{
    SID_IDENTIFIER_AUTHORITY world = {SECURITY_WORLD_SID_AUTHORITY};
    EXPLICIT_ACCESS_W entry;
    DWORD rc;
    int r;

    r = process_user(GetCurrentProcess(), &l->user, err);
    if (r != IPC_OK)
        return r;
    memset(&entry, 0, sizeof entry);
    entry.grfAccessPermissions = FILE_ALL_ACCESS;
    entry.grfAccessMode = SET_ACCESS;
    entry.grfInheritance = NO_INHERITANCE;
    entry.Trustee.TrusteeForm = TRUSTEE_IS_SID;
    if (access == IPC_ACCESS_WORLD) {
        if (!AllocateAndInitializeSid(&world, 1, SECURITY_WORLD_RID, 0, 0, 0, 0, 0, 0, 0,
                                      &l->world_sid))
            return fail_win(err, GetLastError(), "AllocateAndInitializeSid(World)");
        entry.Trustee.TrusteeType = TRUSTEE_IS_WELL_KNOWN_GROUP;
        entry.Trustee.ptstrName = (LPWSTR)l->world_sid;
    } else {
        entry.Trustee.TrusteeType = TRUSTEE_IS_USER;
        entry.Trustee.ptstrName = (LPWSTR)l->user->User.Sid;
    }
    rc = SetEntriesInAclW(1, &entry, NULL, &l->acl);
    if (rc != ERROR_SUCCESS)
        return fail_win(err, rc, "SetEntriesInAcl");
    l->descriptor = (PSECURITY_DESCRIPTOR)LocalAlloc(LPTR, SECURITY_DESCRIPTOR_MIN_LENGTH);
    if (!l->descriptor)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a security descriptor");
    if (!InitializeSecurityDescriptor(l->descriptor, SECURITY_DESCRIPTOR_REVISION))
        return fail_win(err, GetLastError(), "InitializeSecurityDescriptor");
    if (!SetSecurityDescriptorDacl(l->descriptor, TRUE, l->acl, FALSE))
        return fail_win(err, GetLastError(), "SetSecurityDescriptorDacl");
    l->attributes.nLength = sizeof l->attributes;
    l->attributes.lpSecurityDescriptor = l->descriptor;
    l->attributes.bInheritHandle = FALSE;
    return IPC_OK;
}

/* ======================================================================
 * Listening
 * ====================================================================== */

static int create_instance(ipc_plat_listener *l, int first, HANDLE *out, ipc_error *err)
{
    DWORD open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    HANDLE pipe;

    if (first)
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    pipe = CreateNamedPipeW(l->wide_path, open_mode,
                            PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT |
                                PIPE_REJECT_REMOTE_CLIENTS,
                            l->max_instances, PIPE_BUFFER_SIZE, PIPE_BUFFER_SIZE, 0,
                            &l->attributes);
    if (pipe == INVALID_HANDLE_VALUE) {
        DWORD e = GetLastError();

        *out = NULL;
        /* FIRST_PIPE_INSTANCE fails with "access denied" when the name
         * exists: a live server has it. */
        if (first && (e == ERROR_ACCESS_DENIED || e == ERROR_PIPE_BUSY))
            return ipc__fail(err, IPC_E_ADDRESS_IN_USE, (int)e,
                             "another server is already serving '%s'", l->path);
        return fail_win(err, e, "CreateNamedPipe");
    }
    *out = pipe;
    return IPC_OK;
}

/* FILE_FLAG_FIRST_PIPE_INSTANCE is what makes claiming a name atomic on
 * Windows; wine does not enforce it, so also look for a live instance
 * first (WaitNamedPipe fails with "not found" only if none exists). */
static int refuse_if_served(ipc_plat_listener *l, ipc_error *err)
{
    if (WaitNamedPipeW(l->wide_path, 1) || GetLastError() != ERROR_FILE_NOT_FOUND)
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, ERROR_ALREADY_EXISTS,
                         "another server is already serving '%s'", l->path);
    return IPC_OK;
}

int ipc_plat_listen(ipc_plat_listener **out, const char *name,
                    const ipc_plat_listen_params *params, ipc_error *err)
{
    ipc_plat_listener *l = (ipc_plat_listener *)calloc(1, sizeof *l);
    DWORD instances;
    int r;

    *out = NULL;
    if (!l)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the listener");
    r = resolve_name(name, &l->path, &l->wide_path, err);
    if (r != IPC_OK)
        goto fail;
    /* One instance per slot plus one spare per listener: the spare is
     * created before a connected instance is handed over, so the name
     * never disappears while the server runs (nobody can slip in an
     * instance with another ACL, and waiting clients never see "not
     * found"). With every slot taken, one client waits on the spare (its
     * handshake is answered when a slot frees up) and the rest get
     * ERROR_PIPE_BUSY and wait in WaitNamedPipe. */
    instances = params->max_clients + params->listeners;
    l->max_instances = instances >= PIPE_UNLIMITED_INSTANCES ? PIPE_UNLIMITED_INSTANCES
                                                             : instances;
    r = build_security(l, params->access, err);
    if (r != IPC_OK)
        goto fail;
    l->stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!l->stop_event) {
        r = fail_win(err, GetLastError(), "CreateEvent");
        goto fail;
    }
    r = refuse_if_served(l, err);
    if (r == IPC_OK)
        r = create_instance(l, 1, &l->first_instance, err);
    if (r != IPC_OK)
        goto fail;
    *out = l;
    return IPC_OK;
fail:
    ipc_plat_listener_close(l);
    return r;
}

const char *ipc_plat_listener_address(const ipc_plat_listener *l)
{
    return l->path;
}

struct ipc_plat_acceptor {
    ipc_plat_listener *listener;
    HANDLE pipe;      /* the instance waiting for a client; NULL after a failure */
    HANDLE event;
};

int ipc_plat_acceptor_create(ipc_plat_listener *l, ipc_plat_acceptor **out, ipc_error *err)
{
    ipc_plat_acceptor *a = (ipc_plat_acceptor *)calloc(1, sizeof *a);
    int r = IPC_OK;

    *out = NULL;
    if (!a)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for an acceptor");
    a->listener = l;
    a->event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!a->event) {
        r = fail_win(err, GetLastError(), "CreateEvent");
        free(a);
        return r;
    }
    /* Acceptors are created by one thread before the listener threads
     * start, so claiming the first instance needs no lock. */
    if (l->first_instance) {
        a->pipe = l->first_instance;
        l->first_instance = NULL;
    } else {
        r = create_instance(l, 0, &a->pipe, err);
        if (r != IPC_OK) {
            CloseHandle(a->event);
            free(a);
            return r;
        }
    }
    *out = a;
    return IPC_OK;
}

void ipc_plat_acceptor_destroy(ipc_plat_acceptor *a)
{
    if (!a)
        return;
    if (a->pipe)
        CloseHandle(a->pipe);
    CloseHandle(a->event);
    free(a);
}

struct ipc_plat_conn {
    HANDLE pipe;
    int server_side;
    HANDLE read_event;
    HANDLE write_event;
    HANDLE soft_event;        /* interrupt: wakes reads */
    HANDLE hard_event;        /* interrupt(hard): wakes writes too */
    volatile LONG soft;
    volatile LONG hard;
    uint8_t *coalesce;        /* header + small payload as one message */
    size_t coalesce_capacity;
};

static int wrap_conn(HANDLE pipe, int server_side, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_conn *c = (ipc_plat_conn *)calloc(1, sizeof *c);
    int r = IPC_OK;

    *out = NULL;
    if (!c) {
        CloseHandle(pipe);
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a connection");
    }
    c->pipe = pipe;
    c->server_side = server_side;
    c->read_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->write_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->soft_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->hard_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!c->read_event || !c->write_event || !c->soft_event || !c->hard_event) {
        r = fail_win(err, GetLastError(), "CreateEvent");
        ipc_plat_conn_close(c);
        return r;
    }
    *out = c;
    return IPC_OK;
}

int ipc_plat_accept(ipc_plat_acceptor *a, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_listener *l = a->listener;

    *out = NULL;
    for (;;) {
        OVERLAPPED ov;
        HANDLE waits[2];
        HANDLE connected;
        DWORD e = 0, ignored, w;
        int r;

        if (WaitForSingleObject(l->stop_event, 0) == WAIT_OBJECT_0)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
        if (!a->pipe) {
            r = create_instance(l, 0, &a->pipe, err);
            if (r != IPC_OK)
                return r;
        }
        memset(&ov, 0, sizeof ov);
        ResetEvent(a->event);
        ov.hEvent = a->event;
        if (!ConnectNamedPipe(a->pipe, &ov))
            e = GetLastError();
        if (e == ERROR_IO_PENDING) {
            waits[0] = a->event;
            waits[1] = l->stop_event;
            w = WaitForMultipleObjects(2, waits, FALSE, INFINITE);
            if (w != WAIT_OBJECT_0) {
                CancelIoEx(a->pipe, &ov);
                GetOverlappedResult(a->pipe, &ov, &ignored, TRUE);
                return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
            }
            e = GetOverlappedResult(a->pipe, &ov, &ignored, FALSE) ? 0 : GetLastError();
        }
        if (e == ERROR_NO_DATA) {
            /* The client came and went before we saw it. */
            DisconnectNamedPipe(a->pipe);
            continue;
        }
        if (e != 0 && e != ERROR_PIPE_CONNECTED)
            return fail_win(err, e, "ConnectNamedPipe");
        /* Keep one instance listening at all times: create the next one
         * before handing this one over, so nobody else can slip in an
         * instance of this name with another ACL. */
        connected = a->pipe;
        a->pipe = NULL;
        r = create_instance(l, 0, &a->pipe, err);
        if (r != IPC_OK) {
            /* The next accept tries again. */
            ipc__log(IPC_LOG_ERROR, "could not create the next pipe instance of %s: %s",
                     l->path, err && err->message ? err->message : "error");
            ipc_error_clear(err);
        }
        return wrap_conn(connected, 1, out, err);
    }
}

void ipc_plat_listener_interrupt(ipc_plat_listener *l)
{
    if (l && l->stop_event)
        SetEvent(l->stop_event);
}

void ipc_plat_listener_close(ipc_plat_listener *l)
{
    if (!l)
        return;
    if (l->first_instance)
        CloseHandle(l->first_instance);
    if (l->stop_event)
        CloseHandle(l->stop_event);
    if (l->acl)
        LocalFree(l->acl);
    if (l->descriptor)
        LocalFree(l->descriptor);
    if (l->world_sid)
        FreeSid(l->world_sid);
    free(l->user);
    free(l->path);
    free(l->wide_path);
    free(l);
}

void ipc_plat_listener_forget(ipc_plat_listener *l)
{
    (void)l;   /* no fork on Windows: nothing to forget */
}

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
    r = resolve_name(name, &path, &wide, err);
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
            r = fail_win(err, e, "CreateFile on the pipe");
        free(path);
        free(wide);
        return r;
    }
    free(path);
    free(wide);
    if (!SetNamedPipeHandleState(pipe, &mode, NULL, NULL)) {
        e = GetLastError();
        CloseHandle(pipe);
        return fail_win(err, e, "SetNamedPipeHandleState(PIPE_READMODE_MESSAGE)");
    }
    return wrap_conn(pipe, 0, out, err);
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
                return map_error(e) == IPC_E_CLOSED
                           ? ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection")
                           : fail_win(err, e, "ReadFile");
        }
        w = finish_io(c, &ov, c->soft_event, timeout_ms, &n, &e);
        /* ERROR_MORE_DATA: a part of a larger message, which is fine for a
         * byte stream. */
        if (e == 0 || e == ERROR_MORE_DATA) {
            if (n == 0)
                continue;   /* an empty message carries nothing */
            *got = n;
            return IPC_OK;
        }
        if (e == ERROR_OPERATION_ABORTED && w == WAIT_TIMEOUT)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
        if (e == ERROR_OPERATION_ABORTED)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the connection was closed by stop");
        if (map_error(e) == IPC_E_CLOSED)
            return ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection");
        return fail_win(err, e, "ReadFile");
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
            return map_error(e) == IPC_E_CLOSED
                       ? ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection")
                       : fail_win(err, e, "WriteFile");
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
    if (e == ERROR_OPERATION_ABORTED || map_error(e) == IPC_E_CLOSED)
        return ipc__fail(err, IPC_E_CLOSED, (int)e, "the peer closed the connection");
    if (e == 0)
        return ipc__fail(err, IPC_E_SYSTEM, 0, "WriteFile wrote %lu of %lu bytes",
                         (unsigned long)n, (unsigned long)size);
    return fail_win(err, e, "WriteFile");
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
        return fail_win(err, GetLastError(), "GetNamedPipeClientProcessId");
    process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
    if (!process)
        return fail_win(err, GetLastError(), "OpenProcess(client)");
    r = process_user(process, &theirs, err);
    CloseHandle(process);
    if (r == IPC_OK)
        r = process_user(GetCurrentProcess(), &ours, err);
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
        return domain[0] ? ipc__format("user %s\\%s", domain, user)
                         : ipc__format("user %s", user);
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
        return ipc__fail(err, IPC_E_INVALID, 0, "a server uid means nothing on Windows: use "
                         "the default (same user or LocalSystem) or \"any\"");
    if (!GetNamedPipeServerProcessId(c->pipe, &pid))
        return fail_win(err, GetLastError(), "GetNamedPipeServerProcessId");
    process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
    if (!process)
        return fail_win(err, GetLastError(), "OpenProcess(server)");
    r = process_user(process, &theirs, err);
    CloseHandle(process);
    if (r == IPC_OK)
        r = process_user(GetCurrentProcess(), &ours, err);
    if (r == IPC_OK &&
        !AllocateAndInitializeSid(&nt_authority, 1, SECURITY_LOCAL_SYSTEM_RID, 0, 0, 0, 0, 0,
                                  0, 0, &system))
        r = fail_win(err, GetLastError(), "AllocateAndInitializeSid(LocalSystem)");
    if (r == IPC_OK && !EqualSid(ours->User.Sid, theirs->User.Sid) &&
        !EqualSid(system, theirs->User.Sid)) {
        char *who = describe_sid(theirs->User.Sid);

        r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                      "the server on '%s' runs as %s, not as this user or LocalSystem; "
                      "refusing to send it anything (pass server_user to trust it)", name,
                      who ? who : "another user");
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

/* ---- shared memory: not yet (section objects + events are later work) ---
 * Every call that would create, map or pass a region fails, so a client
 * never offers one and a server declines every offer. */

int ipc_plat_shm_supported(void)
{
    return 0;
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on Windows yet");
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    (void)handle, (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on Windows yet");
}

void ipc_plat_handle_close(intptr_t handle)
{
    (void)handle;   /* no handle is ever received here */
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    shm->base = NULL;
    shm->handle = -1;
}

int ipc_plat_write_handle(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count,
                          intptr_t handle, int timeout_ms, ipc_error *err)
{
    (void)conn, (void)parts, (void)count, (void)handle, (void)timeout_ms;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "passing handles is not supported on Windows yet");
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

void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *conn, uint32_t *word)
{
    (void)conn, (void)word;   /* no shared-memory waits here */
}

uint32_t ipc_plat_word_load(const uint32_t *word)
{
    return (uint32_t)InterlockedCompareExchange((volatile LONG *)word, 0, 0);
}

void ipc_plat_word_store(uint32_t *word, uint32_t value)
{
    InterlockedExchange((volatile LONG *)word, (LONG)value);
}

void ipc_plat_word_wait(uint32_t *word, uint32_t expected, int timeout_ms)
{
    (void)word, (void)expected;
    Sleep(timeout_ms < 0 ? 1 : (DWORD)timeout_ms);
}

void ipc_plat_word_wake(uint32_t *word)
{
    (void)word;
}

int ipc_plat_current_cpu(void)
{
    return -1;
}

void ipc_plat_cpu_relax(void)
{
    YieldProcessor();
}

int64_t ipc_plat_now_us(void)
{
    return ipc_plat_now_ms() * 1000;
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_win32_not_on_this_platform;
#endif /* _WIN32 */
