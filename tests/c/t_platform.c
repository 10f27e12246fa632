/*
 * The C tests' portability helpers: sleeping, the clock, threads, locks
 * and processes, on Windows and POSIX (see t_harness.h).
 */
#include "t_harness.h"

#if defined(_WIN32)

/* Nonzero when running under wine (which lacks a few Windows guarantees). */
int t_under_wine(void)
{
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    return ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

void t_sleep_ms(int ms)
{
    Sleep((DWORD)(ms < 0 ? 0 : ms));
}
long long t_now_ms(void)
{
    return (long long)GetTickCount64();
}
long t_getpid(void)
{
    return (long)GetCurrentProcessId();
}

struct t_thread {
    HANDLE handle;
    t_thread_fn fn;
    void *arg;
};

static DWORD WINAPI t_thread_main(LPVOID param)
{
    t_thread *thread = (t_thread *)param;
    thread->fn(thread->arg);
    return 0;
}

t_thread *t_thread_start(t_thread_fn fn, void *arg)
{
    t_thread *thread = (t_thread *)calloc(1, sizeof *thread);
    if (!thread)
        return NULL;
    thread->fn = fn;
    thread->arg = arg;
    thread->handle = CreateThread(NULL, 0, t_thread_main, thread, 0, NULL);
    if (!thread->handle) {
        free(thread);
        return NULL;
    }
    return thread;
}

void t_thread_join(t_thread *thread)
{
    if (!thread)
        return;
    WaitForSingleObject(thread->handle, INFINITE);
    CloseHandle(thread->handle);
    free(thread);
}

struct t_mutex {
    CRITICAL_SECTION cs;
};

t_mutex *t_mutex_new(void)
{
    t_mutex *mutex = (t_mutex *)calloc(1, sizeof *mutex);
    if (mutex)
        InitializeCriticalSection(&mutex->cs);
    return mutex;
}
void t_mutex_free(t_mutex *mutex)
{
    if (!mutex)
        return;
    DeleteCriticalSection(&mutex->cs);
    free(mutex);
}
void t_mutex_lock(t_mutex *mutex)
{
    EnterCriticalSection(&mutex->cs);
}
void t_mutex_unlock(t_mutex *mutex)
{
    LeaveCriticalSection(&mutex->cs);
}

struct t_proc {
    HANDLE process;
};

t_proc *t_proc_spawn(const char *mode, const char *name)
{
    char exe[MAX_PATH];
    char cmd[MAX_PATH + 512];
    STARTUPINFOA si;
    PROCESS_INFORMATION pi;
    t_proc *proc;
    int attempt;
    DWORD n = GetModuleFileNameA(NULL, exe, (DWORD)sizeof exe);
    if (n == 0 || n >= sizeof exe)
        return NULL;
    snprintf(cmd, sizeof cmd, "\"%s\" %s %s", exe, mode, name);
    memset(&si, 0, sizeof si);
    si.cb = sizeof si;
    memset(&pi, 0, sizeof pi);
    fflush(stdout);
    fflush(stderr);
    /* A CI run under wine lost shm_killed_peers to one failed
     * CreateProcess, and the rerun passed: try a few times before calling
     * it a failure, and say why when giving up. */
    for (attempt = 0; !CreateProcessA(exe, cmd, NULL, NULL, TRUE, 0, NULL, NULL, &si, &pi);
         attempt++) {
        if (attempt == 4) {
            fprintf(stderr, "t_proc_spawn: CreateProcess failed (error %lu)\n",
                    (unsigned long)GetLastError());
            return NULL;
        }
        Sleep(250);
    }
    CloseHandle(pi.hThread);
    proc = (t_proc *)calloc(1, sizeof *proc);
    if (!proc) {
        TerminateProcess(pi.hProcess, 99);
        CloseHandle(pi.hProcess);
        return NULL;
    }
    proc->process = pi.hProcess;
    return proc;
}

int t_proc_wait(t_proc *proc, int timeout_ms)
{
    DWORD code = 0;
    int result = -1;
    if (!proc)
        return -1;
    if (WaitForSingleObject(proc->process, (DWORD)timeout_ms) != WAIT_OBJECT_0) {
        TerminateProcess(proc->process, 99);
        WaitForSingleObject(proc->process, INFINITE);
    } else if (GetExitCodeProcess(proc->process, &code)) {
        result = (int)code;
    }
    CloseHandle(proc->process);
    free(proc);
    return result;
}

void t_proc_kill(t_proc *proc)
{
    if (proc)
        TerminateProcess(proc->process, 137);
}

#else /* POSIX */

void t_sleep_ms(int ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

long long t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long t_getpid(void)
{
    return (long)getpid();
}

struct t_thread {
    pthread_t handle;
    t_thread_fn fn;
    void *arg;
};

static void *t_thread_main(void *param)
{
    t_thread *thread = (t_thread *)param;
    thread->fn(thread->arg);
    return NULL;
}

t_thread *t_thread_start(t_thread_fn fn, void *arg)
{
    t_thread *thread = (t_thread *)calloc(1, sizeof *thread);
    if (!thread)
        return NULL;
    thread->fn = fn;
    thread->arg = arg;
    if (pthread_create(&thread->handle, NULL, t_thread_main, thread) != 0) {
        free(thread);
        return NULL;
    }
    return thread;
}

void t_thread_join(t_thread *thread)
{
    if (!thread)
        return;
    pthread_join(thread->handle, NULL);
    free(thread);
}

struct t_mutex {
    pthread_mutex_t m;
};

t_mutex *t_mutex_new(void)
{
    t_mutex *mutex = (t_mutex *)calloc(1, sizeof *mutex);
    if (mutex && pthread_mutex_init(&mutex->m, NULL) != 0) {
        free(mutex);
        return NULL;
    }
    return mutex;
}
void t_mutex_free(t_mutex *mutex)
{
    if (!mutex)
        return;
    pthread_mutex_destroy(&mutex->m);
    free(mutex);
}
void t_mutex_lock(t_mutex *mutex)
{
    pthread_mutex_lock(&mutex->m);
}
void t_mutex_unlock(t_mutex *mutex)
{
    pthread_mutex_unlock(&mutex->m);
}

const char *g_self_path = NULL;

struct t_proc {
    pid_t pid;
};

t_proc *t_proc_spawn(const char *mode, const char *name)
{
    t_proc *proc = (t_proc *)calloc(1, sizeof *proc);
    pid_t pid;
    if (!proc)
        return NULL;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        free(proc);
        return NULL;
    }
    if (pid == 0) {
        char *args[4];
        args[0] = (char *)g_self_path;
        args[1] = (char *)mode;
        args[2] = (char *)name;
        args[3] = NULL;
        execv(g_self_path, args);
        _exit(127);
    }
    proc->pid = pid;
    return proc;
}

int t_proc_wait(t_proc *proc, int timeout_ms)
{
    long long deadline = t_now_ms() + timeout_ms;
    int status = 0;
    int result = -1;
    if (!proc)
        return -1;
    for (;;) {
        pid_t r = waitpid(proc->pid, &status, WNOHANG);
        if (r == proc->pid) {
            if (WIFEXITED(status))
                result = WEXITSTATUS(status);
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
        if (t_now_ms() > deadline) {
            kill(proc->pid, SIGKILL);
            while (waitpid(proc->pid, &status, 0) < 0 && errno == EINTR) {
            }
            break;
        }
        t_sleep_ms(10);
    }
    free(proc);
    return result;
}

void t_proc_kill(t_proc *proc)
{
    if (proc)
        kill(proc->pid, SIGKILL);
}

#endif
