/*
 * Windows implementation of ipc_platform.h: named pipes (\\.\pipe\NAME) in
 * message mode with overlapped I/O, Win32 threads, SRW locks and condition
 * variables. This file: errors, time, threads, locks, the readiness
 * signal, and the shared-memory calls (not supported yet). Names,
 * security and listening: ipc_win32_listen.c; a connection's I/O:
 * ipc_win32_pipe.c. Every ipc_win32*.c file compiles to nothing elsewhere,
 * so vendoring projects can build every .c file in csrc/ on every platform.
 *
 * The pipe is used as a byte stream: a read that ends with ERROR_MORE_DATA
 * just returned part of a message, and the framing in ipc.c reassembles
 * packets whatever the message boundaries are.
 */
#if defined(_WIN32)

#include "ipc_win32_internal.h"

/* ======================================================================
 * Errors
 * ====================================================================== */

/* The one table from GetLastError() to ipc_result. */
int ipc__win32_map_error(DWORD e)
{
    switch (e) {
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND: return IPC_E_NOT_FOUND;
    case ERROR_PIPE_BUSY:
    case ERROR_SEM_TIMEOUT: return IPC_E_BUSY;
    case ERROR_ACCESS_DENIED: return IPC_E_ACCESS_DENIED;
    case ERROR_BROKEN_PIPE:        /* 109 */
    case ERROR_NO_DATA:            /* 232 */
    case ERROR_PIPE_NOT_CONNECTED: /* 233 */
    case ERROR_OPERATION_ABORTED: return IPC_E_CLOSED;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY: return IPC_E_NO_MEMORY;
    case ERROR_FILENAME_EXCED_RANGE: return IPC_E_NAME_TOO_LONG;
    case ERROR_INVALID_NAME: return IPC_E_INVALID;
    case ERROR_TIMEOUT: return IPC_E_TIMEOUT;
    default: return IPC_E_SYSTEM;
    }
}

int ipc__win32_fail_win(ipc_error *err, DWORD e, const char *what)
{
    char *text = NULL;
    DWORD n = FormatMessageA(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                                 FORMAT_MESSAGE_IGNORE_INSERTS,
                             NULL, e, 0, (LPSTR)&text, 0, NULL);
    int r;

    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        text[--n] = '\0';
    r = ipc__fail(err, ipc__win32_map_error(e), (int)e, "%s failed: %s (error %lu)", what,
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

int ipc_plat_thread_start(ipc_plat_thread **out, void (*main)(void *), void *arg, ipc_error *err)
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
        return ipc__win32_fail_win(err, e, "CreateThread");
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
    SleepConditionVariableSRW(&c->cond, &m->lock, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms, 0);
}

void ipc_plat_cond_broadcast(ipc_plat_cond *c)
{
    WakeAllConditionVariable(&c->cond);
}

void ipc_plat_cond_signal(ipc_plat_cond *c)
{
    WakeConditionVariable(&c->cond);
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
        return ipc__win32_fail_win(err, e, "CreateEvent");
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

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_win32_not_on_this_platform;
#endif /* _WIN32 */
