/*
 * POSIX implementation of ipc_platform.h: Unix-domain stream sockets and
 * pthreads (Linux, macOS, the BSDs). The whole file compiles to nothing on
 * Windows, so vendoring projects can build every .c file in csrc/ everywhere.
 */
#if !defined(_WIN32)

#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1   /* accept4, pipe2, SOCK_CLOEXEC, struct ucred */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1   /* getpeereid, SO_NOSIGPIPE */
#endif

#include "ipc_platform.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
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

void ipc_plat_sleep_ms(int ms)
{
    struct timespec left;

    if (ms <= 0)
        return;
    left.tv_sec = ms / 1000;
    left.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
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

int ipc_plat_thread_start(ipc_plat_thread **out, void (*main)(void *), void *arg,
                          ipc_error *err)
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

/* ======================================================================
 * Descriptors and error mapping
 * ====================================================================== */

/* The one table from errno to ipc_result for socket calls. */
static int map_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ECONNREFUSED:   /* a socket file whose server is gone (or restarting) */
        return IPC_E_NOT_FOUND;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
        return IPC_E_BUSY;
    case EACCES:
    case EPERM:
        return IPC_E_ACCESS_DENIED;
    case ENAMETOOLONG:
        return IPC_E_NAME_TOO_LONG;
    case EADDRINUSE:
        return IPC_E_ADDRESS_IN_USE;
    case EPIPE:
    case ECONNRESET:
    case ENOTCONN:
        return IPC_E_CLOSED;
    case ENOMEM:
    case ENOBUFS:
        return IPC_E_NO_MEMORY;
    case ETIMEDOUT:
        return IPC_E_TIMEOUT;
    default:
        return IPC_E_SYSTEM;
    }
}

static int fail_errno(ipc_error *err, int e, const char *what, const char *path)
{
    if (path)
        return ipc__fail(err, map_errno(e), e, "%s '%s' failed: %s", what, path, strerror(e));
    return ipc__fail(err, map_errno(e), e, "%s failed: %s", what, strerror(e));
}

static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static int set_nonblocking(int fd, int on)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0)
        return -1;
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags);
}

static int new_socket(ipc_error *err)
{
    int fd;

#if defined(SOCK_CLOEXEC)
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0)
        set_cloexec(fd);
#endif
    if (fd < 0)
        return -fail_errno(err, errno, "socket(AF_UNIX)", NULL);
#if defined(SO_NOSIGPIPE)
    {
        int one = 1;
        /* macOS has no MSG_NOSIGNAL: a dead peer must not kill the host. */
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
    }
#endif
    return fd;
}

static void close_quietly(int fd)
{
    if (fd >= 0)
        while (close(fd) != 0 && errno == EINTR) {
        }
}

/* ======================================================================
 * Readiness signal: a pipe whose read end polls readable while set
 * ====================================================================== */

struct ipc_plat_ready {
    int pipe[2];
};

static int open_wake_pipe(int wake[2], ipc_error *err);

int ipc_plat_ready_create(ipc_plat_ready **out, ipc_error *err)
{
    ipc_plat_ready *ready = (ipc_plat_ready *)malloc(sizeof *ready);
    int r;

    *out = NULL;
    if (!ready)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a readiness signal");
    r = open_wake_pipe(ready->pipe, err);
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
    close_quietly(ready->pipe[0]);
    close_quietly(ready->pipe[1]);
    free(ready);
}

void ipc_plat_ready_set(ipc_plat_ready *ready)
{
    char byte = 1;
    ssize_t ignored = write(ready->pipe[1], &byte, 1);

    (void)ignored;   /* a full pipe is readable already */
}

void ipc_plat_ready_clear(ipc_plat_ready *ready)
{
    char drain[64];

    while (read(ready->pipe[0], drain, sizeof drain) > 0) {
    }
}

intptr_t ipc_plat_ready_handle(const ipc_plat_ready *ready)
{
    return (intptr_t)ready->pipe[0];
}

/* ======================================================================
 * Names: plain names live in a private per-user directory
 * ====================================================================== */

/* Refuses a directory that another user could control. */
static int check_private_dir(const char *dir, ipc_error *err)
{
    struct stat st;

    if (lstat(dir, &st) != 0)
        return fail_errno(err, errno, "checking the socket directory", dir);
    if (S_ISLNK(st.st_mode))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' is a symbolic link; refusing to use it "
                         "(remove it, or set XDG_RUNTIME_DIR)", dir);
    if (!S_ISDIR(st.st_mode))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "'%s' should be the private socket directory but is not a "
                         "directory", dir);
    if (st.st_uid != geteuid())
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' belongs to uid %lu, not to us (uid %lu); "
                         "refusing to use it", dir, (unsigned long)st.st_uid,
                         (unsigned long)geteuid());
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' is writable by group or others (mode "
                         "%03o); refusing to use it (chmod 700 it)", dir,
                         (unsigned)(st.st_mode & 0777));
    return IPC_OK;
}

/* The private directory for plain names: $XDG_RUNTIME_DIR/ipcfast, else
 * ${TMPDIR:-/tmp}/ipcfast-UID. A server creates it (0700); both sides
 * refuse it when it is unsafe. */
static int private_dir(char **out, int create, ipc_error *err)
{
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    const char *tmp = getenv("TMPDIR");
    char *dir;

    if (runtime && *runtime)
        dir = ipc__format("%s/ipcfast", runtime);
    else
        dir = ipc__format("%s/ipcfast-%lu", tmp && *tmp ? tmp : "/tmp",
                          (unsigned long)geteuid());
    if (!dir)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int r = fail_errno(err, errno, "creating the socket directory", dir);

        free(dir);
        return r;
    }
    if (!create) {
        struct stat st;

        if (lstat(dir, &st) != 0 && errno == ENOENT) {
            *out = dir;   /* connect will report "not found" */
            return IPC_OK;
        }
    }
    if (check_private_dir(dir, err) != IPC_OK) {
        free(dir);
        return err ? err->code : IPC_E_ACCESS_DENIED;
    }
    *out = dir;
    return IPC_OK;
}

/* Turns a name into a socket address; `create` makes the private dir. */
static int resolve_name(const char *name, struct sockaddr_un *addr, char **path_out,
                        int create, ipc_error *err)
{
    char *path;
    size_t length;

    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "empty name");
    if (strchr(name, '/')) {
        path = ipc__format("%s", name);
    } else {
        char *dir = NULL;
        int r;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            return ipc__fail(err, IPC_E_INVALID, 0, "'%s' is not a usable name", name);
        r = private_dir(&dir, create, err);
        if (r != IPC_OK)
            return r;
        path = ipc__format("%s/%s", dir, name);
        free(dir);
    }
    if (!path)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    length = strlen(path);
    if (length >= sizeof addr->sun_path) {
        int r = ipc__fail(err, IPC_E_NAME_TOO_LONG, ENAMETOOLONG,
                          "the socket path '%s' is %lu bytes; Unix sockets allow at most %lu: "
                          "use a shorter name (or a shorter XDG_RUNTIME_DIR/TMPDIR)", path,
                          (unsigned long)length, (unsigned long)(sizeof addr->sun_path - 1));
        free(path);
        return r;
    }
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, length + 1);
    *path_out = path;
    return IPC_OK;
}

/* ======================================================================
 * Listening
 * ====================================================================== */

/* access "world" on a plain name: other users must be able to traverse the
 * private directory to reach the socket (by its full path, which
 * ipc_server_address gives). The directory gets search permission for
 * others (0711: still not listable) only while a world-access socket lives
 * in it; user sockets keep mode 0600 and the same-user check. */
static char *parent_dir(const char *path)
{
    char *dir = ipc__format("%s", path);
    char *slash = dir ? strrchr(dir, '/') : NULL;

    if (slash)
        *slash = '\0';
    return dir;
}

static int open_dir_to_others(const char *path, ipc_error *err)
{
    char *dir = parent_dir(path);
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    int r = IPC_OK;

    if (!dir)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (chmod(dir, 0711) != 0)
        r = fail_errno(err, errno, "making the socket directory traversable", dir);
    else if (runtime && *runtime)
        ipc__log(IPC_LOG_WARNING, "access is \"world\" but %s lives under XDG_RUNTIME_DIR "
                 "(%s), which other users usually cannot enter: give the server a path "
                 "name in a shared directory instead", path, runtime);
    free(dir);
    return r;
}

/* Back to 0700 when no other world-access socket remains in the directory. */
static void close_dir_to_others(const char *path)
{
    char *dir = parent_dir(path);
    DIR *listing = dir ? opendir(dir) : NULL;
    struct dirent *entry;
    int still_shared = 0;

    while (listing && !still_shared && (entry = readdir(listing)) != NULL) {
        struct stat st;
        char *other = ipc__format("%s/%s", dir, entry->d_name);

        if (other && strcmp(other, path) != 0 && lstat(other, &st) == 0 &&
            S_ISSOCK(st.st_mode) && (st.st_mode & S_IWOTH))
            still_shared = 1;
        free(other);
    }
    if (listing)
        closedir(listing);
    if (dir && !still_shared)
        chmod(dir, 0700);
    free(dir);
}

struct ipc_plat_listener {
    int fd;
    int wake[2];        /* stop writes a byte; pollers see it readable */
    int lock_fd;        /* flock'ed for our lifetime: we own the name */
    int opened_dir;     /* we made the private directory traversable */
    char *path;
    char *lock_path;
};

struct ipc_plat_acceptor {
    ipc_plat_listener *listener;
};

/* Takes the lock file that decides who owns the name. The kernel drops the
 * lock when its holder dies, so a held lock means a live server, and a
 * socket file found without one is stale. */
static int take_name_lock(ipc_plat_listener *l, ipc_error *err)
{
    int attempt;

    for (attempt = 0; attempt < 5; attempt++) {
        struct stat held, named;
        int fd = open(l->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);

        if (fd < 0)
            return fail_errno(err, errno, "opening the lock file", l->lock_path);
        set_cloexec(fd);
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;

            close_quietly(fd);
            if (e == EWOULDBLOCK || e == EAGAIN)
                return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                                 "another server is already serving '%s'", l->path);
            return fail_errno(err, e, "locking", l->lock_path);
        }
        /* A stopping server unlinks its lock file: make sure we locked the
         * file that is still at the path, not an orphan. */
        if (fstat(fd, &held) == 0 && stat(l->lock_path, &named) == 0 &&
            held.st_dev == named.st_dev && held.st_ino == named.st_ino) {
            l->lock_fd = fd;
            return IPC_OK;
        }
        close_quietly(fd);
    }
    return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                     "could not claim '%s': other servers keep replacing its lock file",
                     l->path);
}

/* With the lock held, whatever is at the path is ours to replace, unless it
 * is not a socket or something (not using the lock) still listens there. */
static int clear_stale_socket(ipc_plat_listener *l, const struct sockaddr_un *addr,
                              ipc_error *err)
{
    struct stat st;
    int probe;

    if (lstat(l->path, &st) != 0)
        return errno == ENOENT ? IPC_OK : fail_errno(err, errno, "checking", l->path);
    if (!S_ISSOCK(st.st_mode))
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EEXIST,
                         "'%s' exists and is not a socket; refusing to replace it", l->path);
    probe = new_socket(err);
    if (probe < 0)
        return -probe;
    /* Non-blocking: a listener with a full backlog (EAGAIN) is live too,
     * and must not hang our start. */
    set_nonblocking(probe, 1);
    if (connect(probe, (const struct sockaddr *)addr, sizeof *addr) == 0 ||
        errno == EAGAIN || errno == EWOULDBLOCK || errno == EINPROGRESS) {
        close_quietly(probe);
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                         "a process that does not hold '%s' is listening on it", l->path);
    }
    close_quietly(probe);
    if (unlink(l->path) != 0 && errno != ENOENT)
        return fail_errno(err, errno, "removing the stale socket", l->path);
    ipc__log(IPC_LOG_INFO, "reclaimed the stale socket %s", l->path);
    return IPC_OK;
}

static int open_wake_pipe(int wake[2], ipc_error *err)
{
#if defined(__linux__)
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0)
        return fail_errno(err, errno, "pipe2", NULL);
#else
    if (pipe(wake) != 0)
        return fail_errno(err, errno, "pipe", NULL);
    set_cloexec(wake[0]);
    set_cloexec(wake[1]);
    set_nonblocking(wake[0], 1);
    set_nonblocking(wake[1], 1);
#endif
    return IPC_OK;
}

int ipc_plat_listen(ipc_plat_listener **out, const char *name,
                    const ipc_plat_listen_params *params, ipc_error *err)
{
    ipc_plat_listener *l = (ipc_plat_listener *)calloc(1, sizeof *l);
    struct sockaddr_un addr;
    int r;

    *out = NULL;
    if (!l)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the listener");
    l->fd = l->lock_fd = l->wake[0] = l->wake[1] = -1;
    r = resolve_name(name, &addr, &l->path, 1, err);
    if (r != IPC_OK)
        goto fail;
    l->lock_path = ipc__format("%s.lock", l->path);
    if (!l->lock_path) {
        r = ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
        goto fail;
    }
    r = take_name_lock(l, err);
    if (r == IPC_OK)
        r = clear_stale_socket(l, &addr, err);
    if (r == IPC_OK)
        r = open_wake_pipe(l->wake, err);
    if (r != IPC_OK)
        goto fail;
    l->fd = new_socket(err);
    if (l->fd < 0) {
        r = -l->fd;
        goto fail;
    }
    if (bind(l->fd, (const struct sockaddr *)&addr, sizeof addr) != 0) {
        r = fail_errno(err, errno, "bind", l->path);
        /* Whatever is at the path now is not ours to remove. */
        close_quietly(l->fd);
        l->fd = -1;
        goto fail;
    }
    /* The private directory already keeps other users out of plain names;
     * the mode matters for paths chosen by the caller. */
    if (chmod(l->path, params->access == IPC_ACCESS_WORLD ? 0666 : 0600) != 0) {
        r = fail_errno(err, errno, "chmod", l->path);
        unlink(l->path);
        goto fail;
    }
    if (params->access == IPC_ACCESS_WORLD && !strchr(name, '/')) {
        r = open_dir_to_others(l->path, err);
        l->opened_dir = r == IPC_OK;
        if (r != IPC_OK) {
            unlink(l->path);
            goto fail;
        }
    }
    if (listen(l->fd, SOMAXCONN) != 0 || set_nonblocking(l->fd, 1) != 0) {
        r = fail_errno(err, errno, "listen", l->path);
        unlink(l->path);
        goto fail;
    }
    *out = l;
    return IPC_OK;
fail:
    if (l->lock_fd >= 0) {
        /* Only the lock's holder may remove the lock file. */
        unlink(l->lock_path);
        close_quietly(l->lock_fd);
        l->lock_fd = -1;
    }
    ipc_plat_listener_close(l);
    return r;
}

const char *ipc_plat_listener_address(const ipc_plat_listener *l)
{
    return l->path;
}

int ipc_plat_acceptor_create(ipc_plat_listener *listener, ipc_plat_acceptor **out,
                             ipc_error *err)
{
    ipc_plat_acceptor *a = (ipc_plat_acceptor *)malloc(sizeof *a);

    *out = NULL;
    if (!a)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for an acceptor");
    a->listener = listener;
    *out = a;
    return IPC_OK;
}

void ipc_plat_acceptor_destroy(ipc_plat_acceptor *acceptor)
{
    free(acceptor);
}

struct ipc_plat_conn {
    int fd;
    int accept_handles;    /* reads keep an SCM_RIGHTS descriptor */
    int kept_handle;       /* the descriptor kept, -1 if none */
    uint32_t *wake_word;   /* woken by interrupt (atomic: stop reads it) */
    int interrupted;       /* set by ipc_plat_conn_interrupt (atomic) */
    int recv_timeout_ms;   /* what SO_RCVTIMEO is set to; -2: unknown */
    int send_timeout_ms;   /* what SO_SNDTIMEO is set to; -2: unknown */
};

/* Large socket buffers let a megabyte message cross in a few wake-ups
 * instead of dozens of 200 KiB slices. Best effort: the kernel caps the
 * size (net.core.wmem_max / rmem_max), and a refusal changes nothing else. */
#define SOCKET_BUFFER_SIZE (2 * 1024 * 1024)

static void size_buffers(int fd)
{
    int size = SOCKET_BUFFER_SIZE;

    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
}

static int wrap_conn(int fd, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_conn *conn = (ipc_plat_conn *)malloc(sizeof *conn);

    if (!conn) {
        close_quietly(fd);
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a connection");
    }
    size_buffers(fd);
    conn->fd = fd;
    conn->accept_handles = 0;
    conn->kept_handle = -1;
    conn->wake_word = NULL;
    conn->interrupted = 0;
    conn->recv_timeout_ms = -2;
    conn->send_timeout_ms = -2;
    *out = conn;
    return IPC_OK;
}

int ipc_plat_accept(ipc_plat_acceptor *acceptor, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_listener *l = acceptor->listener;

    *out = NULL;
    for (;;) {
        struct pollfd fds[2];
        int fd;

        fds[0].fd = l->fd;
        fds[0].events = POLLIN;
        fds[1].fd = l->wake[0];
        fds[1].events = POLLIN;
        fds[0].revents = fds[1].revents = 0;
        if (poll(fds, 2, IPC_WAKE_INTERVAL_MS) < 0) {
            if (errno == EINTR)
                continue;
            return fail_errno(err, errno, "poll on the listening socket", NULL);
        }
        if (fds[1].revents)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
        if (!(fds[0].revents & POLLIN))
            continue;
#if defined(__linux__)
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
#else
        fd = accept(l->fd, NULL, NULL);
        if (fd >= 0)
            set_cloexec(fd);
#endif
        if (fd < 0) {
            int e = errno;

            /* Another listener won the race, or the client gave up. */
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
                continue;
            return fail_errno(err, e, "accept", l->path);
        }
        /* BSDs let accepted sockets inherit O_NONBLOCK; reads rely on
         * SO_RCVTIMEO, which needs a blocking socket. */
        set_nonblocking(fd, 0);
        return wrap_conn(fd, out, err);
    }
}

void ipc_plat_listener_interrupt(ipc_plat_listener *l)
{
    ssize_t ignored;
    char byte = 1;

    if (!l || l->wake[1] < 0)
        return;
    ignored = write(l->wake[1], &byte, 1);
    (void)ignored;   /* a full pipe is already readable, which is all we need */
}

void ipc_plat_listener_close(ipc_plat_listener *l)
{
    if (!l)
        return;
    if (l->fd >= 0) {
        close_quietly(l->fd);
        unlink(l->path);
    }
    if (l->opened_dir)
        close_dir_to_others(l->path);
    if (l->lock_fd >= 0) {
        /* Remove the lock file while still holding it; take_name_lock
         * notices if it locked the orphan. */
        unlink(l->lock_path);
        close_quietly(l->lock_fd);
    }
    close_quietly(l->wake[0]);
    close_quietly(l->wake[1]);
    free(l->path);
    free(l->lock_path);
    free(l);
}

/* ======================================================================
 * Connections
 * ====================================================================== */

int ipc_plat_connect(ipc_plat_conn **out, const char *name, int timeout_ms, ipc_error *err)
{
    struct sockaddr_un addr;
    char *path = NULL;
    int fd, r;

    *out = NULL;
    r = resolve_name(name, &addr, &path, 0, err);
    if (r != IPC_OK)
        return r;
    fd = new_socket(err);
    if (fd < 0) {
        free(path);
        return -fd;
    }
    /* Non-blocking connect: a full backlog answers EAGAIN ("busy") at once
     * instead of blocking past the caller's budget. */
    set_nonblocking(fd, 1);
    if (connect(fd, (const struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno;

        if (e == EINPROGRESS) {
            struct pollfd p;
            socklen_t len = sizeof e;

            p.fd = fd;
            p.events = POLLOUT;
            p.revents = 0;
            if (poll(&p, 1, timeout_ms) <= 0)
                e = EAGAIN;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
                e = errno;
        }
        if (e != 0) {
            close_quietly(fd);
            if (e == EAGAIN || e == EWOULDBLOCK)
                r = ipc__fail(err, IPC_E_BUSY, e,
                              "the server '%s' has a full connection queue", path);
            else if (e == ENOENT || e == ECONNREFUSED)
                r = ipc__fail(err, IPC_E_NOT_FOUND, e, "no server is listening on '%s' (%s)",
                              path, strerror(e));
            else
                r = fail_errno(err, e, "connect to", path);
            free(path);
            return r;
        }
    }
    free(path);
    set_nonblocking(fd, 0);
    return wrap_conn(fd, out, err);
}

/* Sets SO_RCVTIMEO / SO_SNDTIMEO only when the value changes: one syscall
 * saved per read on the hot path. ms < 0 means no limit. */
static int set_socket_timeout(int fd, int option, int *cached, int ms)
{
    struct timeval tv;

    if (*cached == ms)
        return 0;
    tv.tv_sec = ms < 0 ? 0 : ms / 1000;
    tv.tv_usec = ms < 0 ? 0 : (ms % 1000) * 1000;
    if (ms == 0)
        tv.tv_usec = 1;   /* a zero timeval means "no limit" */
    if (setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv) != 0)
        return -1;
    *cached = ms;
    return 0;
}

/* recv that keeps one descriptor passed with the data (SCM_RIGHTS); any
 * more in the same message are closed at once. */
#if defined(__linux__)
static void keep_handle(ipc_plat_conn *conn, int fd)
{
    if (conn->kept_handle >= 0)
        close_quietly(conn->kept_handle);
    conn->kept_handle = fd;
}
#endif

static ssize_t recv_keeping_handle(ipc_plat_conn *conn, void *buf, size_t capacity)
{
#if defined(__linux__)
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(4 * sizeof(int))];
    } control;
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    ssize_t n;

    memset(&msg, 0, sizeof msg);
    iov.iov_base = buf;
    iov.iov_len = capacity;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    n = recvmsg(conn->fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return n;
    for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        size_t count, i;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < count; i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (i == 0)
                keep_handle(conn, fd);
            else
                close_quietly(fd);
        }
    }
    return n;
#else
    return recv(conn->fd, buf, capacity, 0);
#endif
}

void ipc_plat_conn_accept_handles(ipc_plat_conn *conn, int on)
{
    conn->accept_handles = on;
}

intptr_t ipc_plat_conn_take_handle(ipc_plat_conn *conn)
{
    int fd = conn->kept_handle;

    conn->kept_handle = -1;
    return fd;
}

int ipc_plat_conn_closed(ipc_plat_conn *conn)
{
    char byte;
    ssize_t n = recv(conn->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);

    if (n == 0)
        return 1;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

int ipc_plat_read(ipc_plat_conn *conn, void *buf, size_t capacity, size_t *got,
                  int timeout_ms, ipc_error *err)
{
    *got = 0;
    if (set_socket_timeout(conn->fd, SO_RCVTIMEO, &conn->recv_timeout_ms, timeout_ms) != 0)
        return fail_errno(err, errno, "setsockopt(SO_RCVTIMEO)", NULL);
    for (;;) {
        ssize_t n = conn->accept_handles ? recv_keeping_handle(conn, buf, capacity)
                                         : recv(conn->fd, buf, capacity, 0);

        if (n > 0) {
            *got = (size_t)n;
            return IPC_OK;
        }
        if (n == 0)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the peer closed the connection");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
        if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN)
            return ipc__fail(err, IPC_E_CLOSED, errno, "the connection was reset: %s",
                             strerror(errno));
        return fail_errno(err, errno, "recv", NULL);
    }
}

static int write_parts(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count, int handle,
                       int timeout_ms, ipc_error *err);

int ipc_plat_write(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count, int timeout_ms,
                   ipc_error *err)
{
    return write_parts(conn, parts, count, -1, timeout_ms, err);
}

int ipc_plat_write_handle(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count,
                          intptr_t handle, int timeout_ms, ipc_error *err)
{
#if defined(__linux__)
    return write_parts(conn, parts, count, (int)handle, timeout_ms, err);
#else
    (void)conn, (void)parts, (void)count, (void)handle, (void)timeout_ms;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "passing descriptors is not supported here");
#endif
}

/* Writes all parts; a handle >= 0 travels with the first byte sent. */
static int write_parts(ipc_plat_conn *conn, const ipc_plat_buf *parts, int count, int handle,
                       int timeout_ms, ipc_error *err)
{
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    struct iovec iov[8];
    int first = 0, i;

    if (count < 1 || count > 8)
        return ipc__fail(err, IPC_E_INVALID, 0, "ipc_plat_write takes 1 to 8 parts");
    for (i = 0; i < count; i++) {
        iov[i].iov_base = (void *)parts[i].data;
        iov[i].iov_len = parts[i].size;
    }
    while (first < count) {
        struct msghdr msg;
        ssize_t n;
        int slice = IPC_WAKE_INTERVAL_MS;

        if (deadline >= 0) {
            int64_t left = deadline - ipc_plat_now_ms();

            if (left <= 0)
                return ipc__fail(err, IPC_E_TIMEOUT, 0, "the peer did not take the data in "
                                 "time (%d ms)", timeout_ms);
            if (left < slice)
                slice = (int)left;
        }
        if (set_socket_timeout(conn->fd, SO_SNDTIMEO, &conn->send_timeout_ms, slice) != 0)
            return fail_errno(err, errno, "setsockopt(SO_SNDTIMEO)", NULL);
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov + first;
        msg.msg_iovlen = (size_t)(count - first);
        if (handle >= 0) {
            struct cmsghdr *c;

            memset(&control, 0, sizeof control);
            msg.msg_control = control.space;
            msg.msg_controllen = sizeof control.space;
            c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &handle, sizeof handle);
        }
#if defined(MSG_NOSIGNAL)
        n = sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
#else
        n = sendmsg(conn->fd, &msg, 0);
#endif
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;   /* woke up: check the deadline, write on */
            if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
                return ipc__fail(err, IPC_E_CLOSED, errno, "the peer closed the connection");
            return fail_errno(err, errno, "sendmsg", NULL);
        }
        handle = -1;   /* it went with the first bytes */
        while (first < count && (size_t)n >= iov[first].iov_len) {
            n -= (ssize_t)iov[first].iov_len;
            first++;
        }
        if (first < count) {
            iov[first].iov_base = (char *)iov[first].iov_base + n;
            iov[first].iov_len -= (size_t)n;
        }
    }
    return IPC_OK;
}

int ipc_plat_peer_same_user(ipc_plat_conn *conn, int *same, ipc_error *err)
{
#if defined(SO_PEERCRED) && defined(__linux__)
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (getsockopt(conn->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return fail_errno(err, errno, "getsockopt(SO_PEERCRED)", NULL);
    *same = cred.uid == geteuid();
#else
    uid_t uid;
    gid_t gid;

    if (getpeereid(conn->fd, &uid, &gid) != 0)
        return fail_errno(err, errno, "getpeereid", NULL);
    *same = uid == geteuid();
#endif
    return IPC_OK;
}

void ipc_plat_conn_interrupt(ipc_plat_conn *conn, int hard)
{
    /* shutdown() wakes a thread blocked in recv/send on this socket at once
     * and makes later calls return immediately; the descriptor stays valid
     * until its owner closes it. */
    __atomic_store_n(&conn->interrupted, 1, __ATOMIC_SEQ_CST);
    shutdown(conn->fd, hard ? SHUT_RDWR : SHUT_RD);
    {
        uint32_t *word = __atomic_load_n(&conn->wake_word, __ATOMIC_SEQ_CST);

        if (word)
            ipc_plat_word_wake(word);
    }
}

int ipc_plat_conn_interrupted(ipc_plat_conn *conn)
{
    return __atomic_load_n(&conn->interrupted, __ATOMIC_SEQ_CST);
}

void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *conn, uint32_t *word)
{
    __atomic_store_n(&conn->wake_word, word, __ATOMIC_SEQ_CST);
}

void ipc_plat_conn_drain(ipc_plat_conn *conn)
{
    /* End-of-stream goes after everything we wrote, so the peer reads the
     * last response before it sees the close. */
    shutdown(conn->fd, SHUT_WR);
}

void ipc_plat_conn_close(ipc_plat_conn *conn)
{
    if (!conn)
        return;
    if (conn->kept_handle >= 0)
        close_quietly(conn->kept_handle);
    close_quietly(conn->fd);
    free(conn);
}

/* ==========================================================================
 * Shared memory: memfd + futex (Linux); elsewhere not supported
 * ====================================================================== */

#if defined(__linux__) && defined(MFD_CLOEXEC) && defined(F_SEAL_SHRINK)
#define IPC_POSIX_SHM 1
#endif

void ipc_plat_handle_close(intptr_t handle)
{
    if (handle >= 0)
        close_quietly((int)handle);
}

int64_t ipc_plat_now_us(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

uint32_t ipc_plat_word_load(const uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}

void ipc_plat_word_store(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

void ipc_plat_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#if defined(IPC_POSIX_SHM)

int ipc_plat_shm_supported(void)
{
    return 1;
}

int ipc_plat_current_cpu(void)
{
    return sched_getcpu();
}

/* Not FUTEX_WAIT_PRIVATE: the word is shared with another process. */
void ipc_plat_word_wait(uint32_t *word, uint32_t expected, int timeout_ms)
{
    struct timespec t;

    t.tv_sec = timeout_ms / 1000;
    t.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ms < 0 ? NULL : &t, NULL, 0);
}

void ipc_plat_word_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    int fd = memfd_create("ipcfast-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    void *base;

    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    if (fd < 0)
        return fail_errno(err, errno, "memfd_create", NULL);
    if (ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int e = errno;

        close_quietly(fd);
        return fail_errno(err, e, "sizing the shared-memory region", NULL);
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;

        close_quietly(fd);
        return fail_errno(err, e, "mmap of the shared-memory region", NULL);
    }
    shm->base = base;
    shm->size = size;
    shm->handle = fd;
    return IPC_OK;
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    int fd = (int)handle;
    struct stat st;
    int seals;
    void *base;

    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        close_quietly(fd);
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "the region offered is not a memfd sealed against shrinking");
    }
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size < (uint64_t)size) {
        close_quietly(fd);
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "the region offered is smaller than announced");
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;

        close_quietly(fd);
        return fail_errno(err, e, "mmap of the offered region", NULL);
    }
    shm->base = base;
    shm->size = size;
    shm->handle = fd;
    return IPC_OK;
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    if (shm->base)
        munmap(shm->base, shm->size);
    if (shm->base && shm->handle >= 0)
        close_quietly((int)shm->handle);
    shm->base = NULL;
    shm->size = 0;
    shm->handle = -1;
}

#else /* POSIX without memfd + futex (macOS, the BSDs): declined */

int ipc_plat_shm_supported(void)
{
    return 0;
}

int ipc_plat_current_cpu(void)
{
    return -1;
}

void ipc_plat_word_wait(uint32_t *word, uint32_t expected, int timeout_ms)
{
    (void)word, (void)expected;
    ipc_plat_sleep_ms(timeout_ms < 0 ? 1 : timeout_ms);
}

void ipc_plat_word_wake(uint32_t *word)
{
    (void)word;
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on this platform");
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    close_quietly((int)handle);
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on this platform");
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    shm->base = NULL;
    shm->handle = -1;
}

#endif /* IPC_POSIX_SHM */

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_not_on_this_platform;
#endif /* !_WIN32 */
