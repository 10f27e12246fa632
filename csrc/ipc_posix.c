/*
 * POSIX implementation of ipc_platform.h: Unix-domain stream sockets and
 * pthreads (Linux, macOS, the BSDs). This file: time, threads, locks, the
 * descriptor and errno helpers the other POSIX files share, the readiness
 * signal. Names and the lock file: ipc_posix_name.c; listening and
 * accepting: ipc_posix_listen.c; a connection's I/O: ipc_posix_socket.c;
 * shared memory: ipc_posix_shm.c. Every ipc_posix*.c file compiles to
 * nothing on Windows, so vendoring projects can build every .c file in
 * csrc/ everywhere.
 */
#if !defined(_WIN32)

#include "ipc_posix_internal.h"

#if defined(__linux__)
#include <sys/eventfd.h>
#endif

/* ======================================================================
 * Time, threads, locks
 * ====================================================================== */

int64_t ipc_plat_now_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (never negative, never above INT_MAX). */
int ipc__posix_ms_until(int64_t deadline)
{
    int64_t left = deadline - ipc_plat_now_ms();

    if (left <= 0)
        return 0;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

void ipc_plat_sleep_ms(int ms)
{
    /* Against a deadline, not "the rest of the sleep" after each signal:
     * under a fast timer signal the remainder never reaches zero exactly. */
    int64_t deadline = ipc_plat_now_ms() + ms;
    int left;

    while ((left = ipc__posix_ms_until(deadline)) > 0) {
        struct timespec span;

        span.tv_sec = left / 1000;
        span.tv_nsec = (long)(left % 1000) * 1000000L;
        nanosleep(&span, NULL);
    }
}

static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;

void ipc_plat_global_lock(void)
{
    pthread_mutex_lock(&global_lock);
}

void ipc_plat_global_unlock(void)
{
    pthread_mutex_unlock(&global_lock);
}

struct ipc_plat_thread {
    pthread_t id;
    void (*main)(void *);
    void *arg;
};

static void *thread_trampoline(void *arg)
{
    ipc_plat_thread *thread = (ipc_plat_thread *)arg;

    thread->main(thread->arg);
    return NULL;
}

int ipc_plat_thread_start(ipc_plat_thread **out, void (*main)(void *), void *arg, ipc_error *err)
{
    ipc_plat_thread *thread = (ipc_plat_thread *)calloc(1, sizeof *thread);
    int rc;

    *out = NULL;
    if (!thread)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a thread");
    thread->main = main;
    thread->arg = arg;
    /* Publish before the thread runs: it may look itself up at once. */
    *out = thread;
    rc = pthread_create(&thread->id, NULL, thread_trampoline, thread);
    if (rc != 0) {
        *out = NULL;
        free(thread);
        return ipc__fail(err, rc == EAGAIN ? IPC_E_NO_MEMORY : IPC_E_SYSTEM, rc,
                         "pthread_create failed: %s", strerror(rc));
    }
    return IPC_OK;
}

void ipc_plat_thread_join(ipc_plat_thread *thread)
{
    if (!thread)
        return;
    pthread_join(thread->id, NULL);
    free(thread);
}

int ipc_plat_thread_is_current(const ipc_plat_thread *thread)
{
    return thread && pthread_equal(thread->id, pthread_self());
}

struct ipc_plat_mutex {
    pthread_mutex_t mutex;
};

struct ipc_plat_cond {
    pthread_cond_t cond;
};

int ipc_plat_mutex_create(ipc_plat_mutex **out, ipc_error *err)
{
    ipc_plat_mutex *m = (ipc_plat_mutex *)malloc(sizeof *m);
    int rc;

    *out = NULL;
    if (!m)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a mutex");
    rc = pthread_mutex_init(&m->mutex, NULL);
    if (rc != 0) {
        free(m);
        return ipc__fail(err, IPC_E_SYSTEM, rc, "pthread_mutex_init failed: %s", strerror(rc));
    }
    *out = m;
    return IPC_OK;
}

void ipc_plat_mutex_destroy(ipc_plat_mutex *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mutex);
    free(m);
}

void ipc_plat_mutex_lock(ipc_plat_mutex *m)
{
    pthread_mutex_lock(&m->mutex);
}

void ipc_plat_mutex_unlock(ipc_plat_mutex *m)
{
    pthread_mutex_unlock(&m->mutex);
}

int ipc_plat_mutex_trylock(ipc_plat_mutex *m)
{
    return pthread_mutex_trylock(&m->mutex) == 0;
}

/* Condition variables time out against CLOCK_MONOTONIC where the platform
 * allows it (not macOS), so a wall-clock jump cannot stretch a wait. */
#if defined(__APPLE__)
#define COND_CLOCK CLOCK_REALTIME
#else
#define COND_CLOCK CLOCK_MONOTONIC
#endif

int ipc_plat_cond_create(ipc_plat_cond **out, ipc_error *err)
{
    ipc_plat_cond *c = (ipc_plat_cond *)malloc(sizeof *c);
    pthread_condattr_t attr;
    int rc;

    *out = NULL;
    if (!c)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a condition variable");
    pthread_condattr_init(&attr);
#if !defined(__APPLE__)
    pthread_condattr_setclock(&attr, COND_CLOCK);
#endif
    rc = pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        free(c);
        return ipc__fail(err, IPC_E_SYSTEM, rc, "pthread_cond_init failed: %s", strerror(rc));
    }
    *out = c;
    return IPC_OK;
}

void ipc_plat_cond_destroy(ipc_plat_cond *c)
{
    if (!c)
        return;
    pthread_cond_destroy(&c->cond);
    free(c);
}

void ipc_plat_cond_wait(ipc_plat_cond *c, ipc_plat_mutex *m, int timeout_ms)
{
    struct timespec until;

    if (timeout_ms < 0) {
        pthread_cond_wait(&c->cond, &m->mutex);
        return;
    }
    clock_gettime(COND_CLOCK, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&c->cond, &m->mutex, &until);
}

void ipc_plat_cond_broadcast(ipc_plat_cond *c)
{
    pthread_cond_broadcast(&c->cond);
}

void ipc_plat_cond_signal(ipc_plat_cond *c)
{
    pthread_cond_signal(&c->cond);
}

/* ======================================================================
 * Descriptors and error mapping
 * ====================================================================== */

/* The one table from errno to ipc_result for socket calls. */
static int map_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:      /* a path through a regular file: as a missing directory */
    case ECONNREFUSED: /* a socket file whose server is gone (or restarting) */
        return IPC_E_NOT_FOUND;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
        return IPC_E_BUSY;
    case EACCES:
    case EPERM: return IPC_E_ACCESS_DENIED;
    case ENAMETOOLONG: return IPC_E_NAME_TOO_LONG;
    case EADDRINUSE: return IPC_E_ADDRESS_IN_USE;
    case EPIPE:
    case ECONNRESET:
    case ENOTCONN: return IPC_E_CLOSED;
    case ENOMEM:
    case ENOBUFS: return IPC_E_NO_MEMORY;
    case ETIMEDOUT: return IPC_E_TIMEOUT;
    default: return IPC_E_SYSTEM;
    }
}

int ipc__posix_fail_errno(ipc_error *err, int e, const char *what, const char *path)
{
    if (path)
        return ipc__fail(err, map_errno(e), e, "%s '%s' failed: %s", what, path, strerror(e));
    return ipc__fail(err, map_errno(e), e, "%s failed: %s", what, strerror(e));
}

/* Only where the atomic flags (O_CLOEXEC, SOCK_CLOEXEC, accept4, pipe2) are
 * missing; there a thread exec'ing at the wrong moment can inherit it. */
#if !defined(__linux__) || !defined(O_CLOEXEC) || !defined(SOCK_CLOEXEC)
int ipc__posix_set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}
#endif

int ipc__posix_set_nonblocking(int fd, int on)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0)
        return -1;
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags);
}

int ipc__posix_new_socket(ipc_error *err)
{
    int fd;

#if defined(SOCK_CLOEXEC)
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0)
        ipc__posix_set_cloexec(fd);
#endif
    if (fd < 0)
        return -ipc__posix_fail_errno(err, errno, "socket(AF_UNIX)", NULL);
#if defined(SO_NOSIGPIPE)
    {
        int one = 1;
        /* macOS has no MSG_NOSIGNAL: a dead peer must not kill the host. */
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
    }
#endif
    return fd;
}

void ipc__posix_close_quietly(int fd)
{
    if (fd >= 0)
        while (close(fd) != 0 && errno == EINTR) {
        }
}

/* ======================================================================
 * Readiness signal: a descriptor that polls readable while set. On Linux an
 * eventfd, which one read clears; elsewhere a pipe, drained until empty
 * (two reads at least). Clearing is on the manual-dispatch loop's path.
 * ====================================================================== */

struct ipc_plat_ready {
    int fd[2]; /* read end, write end: one descriptor when it is an eventfd */
};

int ipc_plat_ready_create(ipc_plat_ready **out, ipc_error *err)
{
    ipc_plat_ready *ready = (ipc_plat_ready *)malloc(sizeof *ready);
    int r;

    *out = NULL;
    if (!ready)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a readiness signal");
#if defined(__linux__)
    ready->fd[0] = ready->fd[1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r = ready->fd[0] < 0 ? ipc__posix_fail_errno(err, errno, "eventfd", NULL) : IPC_OK;
#else
    r = ipc__posix_open_wake_pipe(ready->fd, err);
#endif
    if (r != IPC_OK) {
        free(ready);
        return r;
    }
    *out = ready;
    return IPC_OK;
}

void ipc_plat_ready_destroy(ipc_plat_ready *ready)
{
    if (!ready)
        return;
    ipc__posix_close_quietly(ready->fd[0]);
    if (ready->fd[1] != ready->fd[0])
        ipc__posix_close_quietly(ready->fd[1]);
    free(ready);
}

void ipc_plat_ready_set(ipc_plat_ready *ready)
{
#if defined(__linux__)
    uint64_t one = 1;
    ssize_t ignored = write(ready->fd[1], &one, sizeof one);
#else
    char byte = 1;
    ssize_t ignored = write(ready->fd[1], &byte, 1);
#endif

    (void)ignored; /* a full pipe (or counter) is readable already */
}

void ipc_plat_ready_clear(ipc_plat_ready *ready)
{
#if defined(__linux__)
    uint64_t count;
    ssize_t ignored = read(ready->fd[0], &count, sizeof count);

    (void)ignored; /* EAGAIN: it was clear */
#else
    char drain[64];

    while (read(ready->fd[0], drain, sizeof drain) > 0) {
    }
#endif
}

intptr_t ipc_plat_ready_handle(const ipc_plat_ready *ready)
{
    return (intptr_t)ready->fd[0];
}

int ipc__posix_open_wake_pipe(int wake[2], ipc_error *err)
{
#if defined(__linux__)
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0)
        return ipc__posix_fail_errno(err, errno, "pipe2", NULL);
#else
    if (pipe(wake) != 0)
        return ipc__posix_fail_errno(err, errno, "pipe", NULL);
    ipc__posix_set_cloexec(wake[0]);
    ipc__posix_set_cloexec(wake[1]);
    ipc__posix_set_nonblocking(wake[0], 1);
    ipc__posix_set_nonblocking(wake[1], 1);
#endif
    return IPC_OK;
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_not_on_this_platform;
#endif /* !_WIN32 */
