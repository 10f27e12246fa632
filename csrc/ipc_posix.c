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
#include <pwd.h>
#include <signal.h>
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

/* Milliseconds left until deadline (never negative, never above INT_MAX). */
static int ms_until(int64_t deadline)
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

    while ((left = ms_until(deadline)) > 0) {
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
    case ENOTDIR:        /* a path through a regular file: as a missing directory */
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

/* Only where the atomic flags (O_CLOEXEC, SOCK_CLOEXEC, accept4, pipe2) are
 * missing; there a thread exec'ing at the wrong moment can inherit it. */
#if !defined(__linux__) || !defined(O_CLOEXEC) || !defined(SOCK_CLOEXEC)
static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}
#endif

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

/* "user 'nobody' (uid 65534)": who owns a file we refuse. */
static char *describe_user(uid_t uid)
{
    struct passwd entry, *found = NULL;
    char buf[1024];

    if (getpwuid_r(uid, &entry, buf, sizeof buf, &found) == 0 && found && found->pw_name)
        return ipc__format("user '%s' (uid %lu)", found->pw_name, (unsigned long)uid);
    return ipc__format("uid %lu", (unsigned long)uid);
}

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
    if (st.st_uid != geteuid()) {
        char *owner = describe_user(st.st_uid);
        int r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                          "the socket directory '%s' belongs to %s, not to us (uid %lu); "
                          "refusing to use it", dir, owner ? owner : "another user",
                          (unsigned long)geteuid());

        free(owner);
        return r;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' is writable by group or others (mode "
                         "%03o); refusing to use it (chmod 700 it)", dir,
                         (unsigned)(st.st_mode & 0777));
    return IPC_OK;
}

/* Checks (and with `create`, makes) one candidate private directory. A
 * client that finds none gets its path anyway: connect reports "not found". */
static int use_private_dir(char *dir, int create, char **out, ipc_error *err)
{
    struct stat st;

    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int r = fail_errno(err, errno, "creating the socket directory", dir);

        free(dir);
        return r;
    }
    if (!create && lstat(dir, &st) != 0 && errno == ENOENT) {
        *out = dir;
        return IPC_OK;
    }
    if (check_private_dir(dir, err) != IPC_OK) {
        free(dir);
        return err ? err->code : IPC_E_ACCESS_DENIED;
    }
    *out = dir;
    return IPC_OK;
}

/* The home directory: $HOME, else the password database's entry. */
static char *home_dir(void)
{
    const char *home = getenv("HOME");
    struct passwd entry, *found = NULL;
    char buf[1024];

    if (home && *home)
        return ipc__format("%s", home);
    if (getpwuid_r(geteuid(), &entry, buf, sizeof buf, &found) == 0 && found &&
        found->pw_dir && *found->pw_dir)
        return ipc__format("%s", found->pw_dir);
    return NULL;
}

/* ${TMPDIR:-/tmp}/ipcfast-UID belongs to another user, who made it first
 * (anybody can create names in /tmp): fall back to HOME/.ipcfast-UID, a
 * name only we (and root) can create. Client and server follow the same
 * rule, so they meet there. */
static int squatted_dir_fallback(const char *squatted, uid_t squatter, int create,
                                 char **out, ipc_error *err)
{
    char *owner = describe_user(squatter);
    char *home = home_dir();
    char *fallback = home ? ipc__format("%s/.ipcfast-%lu", home, (unsigned long)geteuid())
                          : NULL;
    ipc_error inner = {0};
    int r;

    free(home);
    if (!fallback) {
        r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                      "the socket directory '%s' belongs to %s, not to us (uid %lu); "
                      "refusing to use it, and there is no home directory to fall back "
                      "to (set HOME or XDG_RUNTIME_DIR, or have that user or root remove "
                      "it)", squatted, owner ? owner : "another user",
                      (unsigned long)geteuid());
        free(owner);
        return r;
    }
    if (create)
        ipc__log(IPC_LOG_WARNING, "the socket directory %s belongs to %s; using %s instead",
                 squatted, owner ? owner : "another user", fallback);
    r = use_private_dir(fallback, create, out, &inner);
    if (r != IPC_OK)
        r = ipc__fail(err, IPC_E_ACCESS_DENIED, inner.system_error,
                      "the socket directory '%s' belongs to %s, not to us (uid %lu); "
                      "refusing to use it, and the fallback failed: %s", squatted,
                      owner ? owner : "another user", (unsigned long)geteuid(),
                      inner.message ? inner.message : ipc_result_name(r));
    ipc_error_clear(&inner);
    free(owner);
    return r;
}

/* The private directory for plain names: $XDG_RUNTIME_DIR/ipcfast, else
 * ${TMPDIR:-/tmp}/ipcfast-UID (or its fallback, above). A server creates
 * it (0700); both sides refuse it when it is unsafe. */
static int private_dir(char **out, int create, ipc_error *err)
{
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    const char *tmp = getenv("TMPDIR");
    struct stat st;
    char *dir;

    if (runtime && *runtime)
        dir = ipc__format("%s/ipcfast", runtime);
    else
        dir = ipc__format("%s/ipcfast-%lu", tmp && *tmp ? tmp : "/tmp",
                          (unsigned long)geteuid());
    if (!dir)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (!(runtime && *runtime) && lstat(dir, &st) == 0 && st.st_uid != geteuid()) {
        int r = squatted_dir_fallback(dir, st.st_uid, create, out, err);

        free(dir);
        return r;
    }
    return use_private_dir(dir, create, out, err);
}

/* Turns a name into a socket address; `create` makes the private dir. */
static int resolve_name(const char *name, struct sockaddr_un *addr, char **path_out,
                        int create, ipc_error *err)
{
    char *path;
    size_t length;

    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "empty name");
    length = strlen(name);
    /* NAME.lock is the lock file of NAME (docs/protocol.md 2.1). */
    if (length >= 5 && strcmp(name + length - 5, ".lock") == 0)
        return ipc__fail(err, IPC_E_INVALID, 0, "'%s' ends in \".lock\", which is reserved "
                         "for lock files: choose another name", name);
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

/* The directory part of a socket path ("/" for "/x"). */
static char *parent_dir(const char *path)
{
    char *dir = ipc__format("%s", path);
    char *slash = dir ? strrchr(dir, '/') : NULL;

    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    return dir;
}

struct ipc_plat_listener {
    int fd;
    int wake[2];        /* stop writes a byte; pollers see it readable */
    int lock_fd;        /* flock'ed for our lifetime: we own the name */
    int access;         /* enum ipc_access: "user" refuses other users at accept */
    int opened_dir;     /* we made the private directory traversable */
    int placed;         /* our socket file is at path, as (dev, ino) */
    dev_t dev;
    ino_t ino;
    char *path;
    char *lock_path;
};

struct ipc_plat_acceptor {
    ipc_plat_listener *listener;
    /* Refused peers are logged at most once a second per acceptor (a flood
     * of them must not turn into a flood of log calls), with a count. */
    int64_t next_refusal_log_ms;
    unsigned long refused_unlogged;
};

static int open_cloexec(const char *path, int flags, mode_t mode)
{
#if defined(O_CLOEXEC)
    return open(path, flags | O_CLOEXEC, mode);
#else
    int fd = open(path, flags, mode);

    if (fd >= 0)
        set_cloexec(fd);
    return fd;
#endif
}

/* access "world" on a plain name: other users must be able to traverse the
 * private directory to reach the socket (by its full path, which
 * ipc_server_address gives). The directory gets search permission for
 * others (0711: still not listable) only while a world-access socket lives
 * in it; user sockets keep mode 0600 and the same-user check.
 *
 * Servers starting and stopping in the same directory change its mode
 * under an flock on the directory itself: otherwise a stopping server
 * could look for other world sockets, miss one being set up, and close the
 * directory to others under it. Returns the locked descriptor. */
static int lock_private_dir(const char *dir, ipc_error *err)
{
    int fd = open_cloexec(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);

    if (fd < 0)
        return -fail_errno(err, errno, "opening the socket directory", dir);
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int r = fail_errno(err, errno, "locking the socket directory", dir);

            close_quietly(fd);
            return -r;
        }
    }
    return fd;
}

static int open_dir_to_others(ipc_plat_listener *l, ipc_error *err)
{
    char *dir = parent_dir(l->path);
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    int fd, r = IPC_OK;

    if (!dir)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    fd = lock_private_dir(dir, err);
    if (fd < 0) {
        free(dir);
        return -fd;
    }
    if (fchmod(fd, 0711) != 0)
        r = fail_errno(err, errno, "making the socket directory traversable", dir);
    else if (runtime && *runtime)
        ipc__log(IPC_LOG_WARNING, "access is \"world\" but %s lives under XDG_RUNTIME_DIR "
                 "(%s), which other users usually cannot enter: give the server a path "
                 "name in a shared directory instead", l->path, runtime);
    close_quietly(fd);   /* releases the lock */
    free(dir);
    return r;
}

/* Removes the socket file at path only while it is still the one we
 * placed: another process may have replaced it since. */
static void remove_our_socket(ipc_plat_listener *l)
{
    struct stat st;

    if (!l->placed)
        return;
    l->placed = 0;
    if (lstat(l->path, &st) != 0)
        return;   /* somebody removed it already */
    if (st.st_dev != l->dev || st.st_ino != l->ino) {
        ipc__log(IPC_LOG_WARNING, "%s is no longer our socket; leaving it in place", l->path);
        return;
    }
    unlink(l->path);
}

/* Removes our socket, then closes the directory to others (0700) when no
 * other world-access socket remains in it; all under the directory lock. */
static void close_dir_to_others(ipc_plat_listener *l)
{
    char *dir = parent_dir(l->path);
    int fd = dir ? lock_private_dir(dir, NULL) : -1;
    DIR *listing;
    struct dirent *entry;
    int still_shared = 0;

    remove_our_socket(l);
    listing = fd >= 0 ? opendir(dir) : NULL;
    while (listing && !still_shared && (entry = readdir(listing)) != NULL) {
        struct stat st;

        if (fstatat(fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISSOCK(st.st_mode) && (st.st_mode & S_IWOTH))
            still_shared = 1;
    }
    if (listing)
        closedir(listing);
    if (fd >= 0) {
        if (!still_shared)
            fchmod(fd, 0700);
        close_quietly(fd);
    }
    free(dir);
}

/* Records our pid in the lock file we hold, so that a client finding no
 * socket can tell a starting server (live pid) from none (no file, dead
 * pid) without touching the lock. Best effort: an unrecorded owner only
 * makes clients retry briefly. */
static void record_owner(int fd)
{
    char text[32];
    int length = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    ssize_t ignored;

    if (ftruncate(fd, 0) == 0 && length > 0) {
        ignored = pwrite(fd, text, (size_t)length, 0);
        (void)ignored;
    }
}

/* Takes the lock file that decides who owns the name. The kernel drops the
 * lock when its holder dies, so a held lock means a live server, and a
 * socket file found without one is stale. Opened close-on-exec from birth:
 * a child exec'd in between would otherwise hold the name for its life. */
static int take_name_lock(ipc_plat_listener *l, ipc_error *err)
{
    int attempt;

    for (attempt = 0; attempt < 5; attempt++) {
        struct stat held, named;
        int fd = open_cloexec(l->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);

        if (fd < 0)
            return fail_errno(err, errno, "opening the lock file", l->lock_path);
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
            record_owner(fd);
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
    /* Only "refused" proves that nobody listens (docs/protocol.md 2.1). */
    if (errno != ECONNREFUSED) {
        int e = errno;

        close_quietly(probe);
        return e == ENOENT ? IPC_OK : fail_errno(err, e, "probing the existing socket", l->path);
    }
    close_quietly(probe);
    if (unlink(l->path) != 0 && errno != ENOENT)
        return fail_errno(err, errno, "removing the stale socket", l->path);
    ipc__log(IPC_LOG_INFO, "reclaimed the stale socket %s", l->path);
    return IPC_OK;
}

/* The listen backlog. Connections wait there in order; a deep one (Linux's
 * SOMAXCONN is 4096) filled by a connect/close flood makes a new client
 * wait behind thousands of dead connections. 64 lets a burst of clients
 * queue (on Linux a client waits in the kernel for room, see
 * connect_socket) while a flood costs a newcomer at most 64 accepts. */
#define LISTEN_BACKLOG 64

/* Where the staging path does not fit sun_path: bind in place. Only for
 * access "user": the mode is set on the socket before bind (Linux creates
 * the file with it, less the umask; elsewhere the umask alone decides, and
 * the same-user check at accept still holds), never by name after. */
static int place_socket_directly(ipc_plat_listener *l, mode_t mode, size_t staging_length,
                                 ipc_error *err)
{
    struct sockaddr_un addr;
    struct stat st;

    if (mode != 0600)
        return ipc__fail(err, IPC_E_NAME_TOO_LONG, ENAMETOOLONG,
                         "the socket path '%s' leaves no room for the race-free set-up of "
                         "a world-access socket (it binds at a %lu-byte path first; Unix "
                         "sockets allow %lu): use a shorter name", l->path,
                         (unsigned long)staging_length,
                         (unsigned long)(sizeof addr.sun_path - 1));
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, l->path, strlen(l->path) + 1);
    fchmod(l->fd, mode);   /* best effort: narrows the mode where honoured */
    if (bind(l->fd, (const struct sockaddr *)&addr, sizeof addr) != 0)
        return fail_errno(err, errno, "bind", l->path);
    if (listen(l->fd, LISTEN_BACKLOG) != 0) {
        int r = fail_errno(err, errno, "listen", l->path);

        unlink(l->path);
        return r;
    }
    if (lstat(l->path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        l->placed = 1;
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    return IPC_OK;
}

/* Binds and listens at l->path with the final mode, without ever changing
 * a mode by name: a chmod(path) after bind follows whatever another user
 * swapped in there meanwhile (a symbolic link to any file we own). The
 * socket is bound in a fresh 0700 staging directory beside the path, gets
 * its mode relative to that directory's descriptor, starts listening, and
 * is then hard-linked into place; link() fails like bind() if the name is
 * taken. */
static int place_socket(ipc_plat_listener *l, mode_t mode, ipc_error *err)
{
    char *dir = parent_dir(l->path);
    char *staging = dir ? ipc__format("%s/.ipcXXXXXX", strcmp(dir, "/") == 0 ? "" : dir)
                        : NULL;
    struct sockaddr_un addr;
    struct stat st;
    int dfd = -1, bound = 0, r = IPC_OK;

    free(dir);
    if (!staging)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (strlen(staging) + 2 >= sizeof addr.sun_path) {
        r = place_socket_directly(l, mode, strlen(staging) + 2, err);
        free(staging);
        return r;
    }
    if (!mkdtemp(staging)) {
        r = fail_errno(err, errno, "bind (creating a staging directory)", l->path);
        free(staging);
        return r;
    }
    dfd = open_cloexec(staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
    if (dfd < 0 || fstat(dfd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077)) {
        r = ipc__fail(err, IPC_E_ACCESS_DENIED, dfd < 0 ? errno : 0,
                      "the staging directory '%s' for '%s' was replaced by another user",
                      staging, l->path);
        goto done;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s/s", staging);
    fchmod(l->fd, mode);   /* best effort: narrows the mode at bind where honoured */
    if (bind(l->fd, (const struct sockaddr *)&addr, sizeof addr) != 0) {
        r = fail_errno(err, errno, "bind", l->path);
        goto done;
    }
    bound = 1;
    /* Nobody else can create entries in our 0700 directory: "s" is ours. */
    if (fchmodat(dfd, "s", mode, 0) != 0) {
        r = fail_errno(err, errno, "chmod", l->path);
        goto done;
    }
    if (fstatat(dfd, "s", &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(st.st_mode)) {
        r = ipc__fail(err, IPC_E_SYSTEM, errno, "the socket bound for '%s' vanished", l->path);
        goto done;
    }
    if (listen(l->fd, LISTEN_BACKLOG) != 0) {
        r = fail_errno(err, errno, "listen", l->path);
        goto done;
    }
    if (linkat(dfd, "s", AT_FDCWD, l->path, 0) != 0) {
        r = fail_errno(err, errno, "bind", l->path);
        goto done;
    }
    l->placed = 1;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
done:
    if (bound)
        unlinkat(dfd, "s", 0);
    if (dfd >= 0)
        close_quietly(dfd);
    rmdir(staging);
    free(staging);
    return r;
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
    int world = params->access == IPC_ACCESS_WORLD;
    int r;

    *out = NULL;
    if (!l)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the listener");
    l->fd = l->lock_fd = l->wake[0] = l->wake[1] = -1;
    l->access = params->access;
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
    /* The private directory already keeps other users out of plain names;
     * the mode matters for paths chosen by the caller. */
    r = place_socket(l, world ? 0666 : 0600, err);
    if (r == IPC_OK && world && !strchr(name, '/')) {
        r = open_dir_to_others(l, err);
        l->opened_dir = r == IPC_OK;
    }
    if (r == IPC_OK && set_nonblocking(l->fd, 1) != 0)
        r = fail_errno(err, errno, "listen", l->path);
    if (r != IPC_OK)
        goto fail;
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
    a->next_refusal_log_ms = 0;
    a->refused_unlogged = 0;
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

static int peer_uid(int fd, uid_t *uid)
{
#if defined(SO_PEERCRED) && defined(__linux__)
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return -1;
    *uid = cred.uid;
    return 0;
#else
    gid_t gid;

    return getpeereid(fd, uid, &gid);
#endif
}

/* Connections not worth a slot's thread, closed at accept: a peer already
 * gone (a connect/close flood leaves a queue of them), and with access
 * "user", a peer of another user, refused before any slot or thread is
 * spent on it (the check after the handshake stays as a second line). */
static void log_refusal(ipc_plat_acceptor *a, const char *why)
{
    int64_t now = ipc_plat_now_ms();

    if (now < a->next_refusal_log_ms) {
        a->refused_unlogged++;
        return;
    }
    if (a->refused_unlogged)
        ipc__log(IPC_LOG_WARNING, "refused a connection to %s: %s (and %lu more refused "
                 "since the last message)", a->listener->path, why, a->refused_unlogged);
    else
        ipc__log(IPC_LOG_WARNING, "refused a connection to %s: %s", a->listener->path, why);
    a->refused_unlogged = 0;
    a->next_refusal_log_ms = now + 1000;
}

static int unwanted_connection(ipc_plat_acceptor *a, int fd)
{
    char byte, why[64];
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    uid_t uid;

    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return 1;
    if (a->listener->access == IPC_ACCESS_WORLD)
        return 0;
    if (peer_uid(fd, &uid) != 0) {
        snprintf(why, sizeof why, "its user is unknown (%s)", strerror(errno));
        log_refusal(a, why);
        return 1;
    }
    if (uid != geteuid()) {
        snprintf(why, sizeof why, "uid %lu, and access is \"user\"", (unsigned long)uid);
        log_refusal(a, why);
        return 1;
    }
    return 0;
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
        if (unwanted_connection(acceptor, fd)) {
            close_quietly(fd);
            continue;
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
    if (l->fd >= 0)
        close_quietly(l->fd);
    if (l->opened_dir)
        close_dir_to_others(l);   /* removes our socket under the directory lock */
    else
        remove_our_socket(l);
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

void ipc_plat_listener_forget(ipc_plat_listener *l)
{
    /* close() alone: the parent's copies of these descriptors stay open,
     * its flock stays held (the lock belongs to the shared open file). */
    if (!l)
        return;
    close_quietly(l->fd);
    close_quietly(l->lock_fd);
    close_quietly(l->wake[0]);
    close_quietly(l->wake[1]);
    l->fd = l->lock_fd = l->wake[0] = l->wake[1] = -1;
}

/* ======================================================================
 * Connections
 * ====================================================================== */

/* poll() for one descriptor that keeps its deadline whatever signals
 * arrive: >0 ready, 0 timed out, <0 failed (errno set). */
static int wait_ready(int fd, short events, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;

    for (;;) {
        struct pollfd p;
        int n;

        p.fd = fd;
        p.events = events;
        p.revents = 0;
        n = poll(&p, 1, deadline < 0 ? -1 : ms_until(deadline));
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

static int set_socket_timeout(int fd, int option, int *cached, int ms);

/* One connect() that never waits past timeout_ms (0: not at all). A
 * non-blocking attempt answers a full backlog with EAGAIN ("busy") at once
 * (the socket stays non-blocking; EINPROGRESS is the caller's). On Linux a
 * full backlog is then waited for with a blocking connect(): the kernel
 * queues it and wakes it as the server accepts, so the client gets its turn
 * even against a flood of connect/close loops, which pauses between
 * non-blocking attempts lose every race to. SO_SNDTIMEO bounds that wait and
 * is recomputed after a signal. */
static int connect_socket(int fd, const struct sockaddr_un *addr, int timeout_ms)
{
#if defined(__linux__)
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
#endif

    set_nonblocking(fd, 1);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
        return 0;
#if defined(__linux__)
    if (errno != EAGAIN || timeout_ms == 0)
        return -1;
    set_nonblocking(fd, 0);
    for (;;) {
        int unknown = -2;
        int wait = deadline < 0 ? -1 : ms_until(deadline);

        if (wait == 0) {
            errno = EAGAIN;
            return -1;
        }
        if (set_socket_timeout(fd, SO_SNDTIMEO, &unknown, wait) != 0)
            return -1;
        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
            return 0;
        if (errno == EISCONN)
            return 0;   /* an interrupted attempt completed after all */
        if (errno != EINTR)
            return -1;
    }
#else
    (void)timeout_ms;
    return -1;
#endif
}

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
    if (connect_socket(fd, &addr, timeout_ms) != 0) {
        int e = errno;

        if (e == EINPROGRESS) {
            socklen_t len = sizeof e;

            if (wait_ready(fd, POLLOUT, timeout_ms) <= 0)
                e = EAGAIN;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
                e = errno;
        }
        if (e != 0) {
            close_quietly(fd);
            if (e == EAGAIN || e == EWOULDBLOCK)
                r = ipc__fail(err, IPC_E_BUSY, e,
                              "the server '%s' has a full connection queue", path);
            else if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
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
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int wait = timeout_ms;

    *got = 0;
    for (;;) {
        ssize_t n;

        if (set_socket_timeout(conn->fd, SO_RCVTIMEO, &conn->recv_timeout_ms, wait) != 0)
            return fail_errno(err, errno, "setsockopt(SO_RCVTIMEO)", NULL);
        n = conn->accept_handles ? recv_keeping_handle(conn, buf, capacity)
                                 : recv(conn->fd, buf, capacity, 0);
        if (n > 0) {
            *got = (size_t)n;
            return IPC_OK;
        }
        if (n == 0)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the peer closed the connection");
        if (errno == EINTR) {
            /* A signal: wait on for what is left, not the whole timeout
             * again (a 1 kHz timer would otherwise stretch it forever). */
            if (deadline >= 0 && (wait = ms_until(deadline)) == 0)
                return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
            continue;
        }
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
    uid_t uid;

    if (peer_uid(conn->fd, &uid) != 0)
#if defined(SO_PEERCRED) && defined(__linux__)
        return fail_errno(err, errno, "getsockopt(SO_PEERCRED)", NULL);
#else
        return fail_errno(err, errno, "getpeereid", NULL);
#endif
    *same = uid == geteuid();
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

/* ======================================================================
 * What a client may learn about a name before it trusts it
 * ====================================================================== */

static int owner_from_lock_file(const char *lock_path)
{
    char text[32];
    ssize_t n;
    long pid;
    char *end;
    int fd = open(lock_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0)
        return errno == ENOENT ? IPC_PLAT_OWNER_NONE : IPC_PLAT_OWNER_UNKNOWN;
    n = read(fd, text, sizeof text - 1);
    close_quietly(fd);
    if (n <= 0)
        return IPC_PLAT_OWNER_UNKNOWN;   /* created, pid not written yet */
    text[n] = '\0';
    pid = strtol(text, &end, 10);
    if (end == text || pid <= 0)
        return IPC_PLAT_OWNER_UNKNOWN;
    /* EPERM: alive, another user's. Another pid namespace reads as dead or
     * as someone else: a client then answers at once or retries, never
     * worse than without the record. */
    if (kill((pid_t)pid, 0) == 0 || errno == EPERM)
        return IPC_PLAT_OWNER_ALIVE;
    return IPC_PLAT_OWNER_NONE;
}

int ipc_plat_name_owner(const char *name)
{
    struct sockaddr_un addr;
    char *path = NULL, *lock_path;
    int owner;

    if (resolve_name(name, &addr, &path, 0, NULL) != IPC_OK)
        return IPC_PLAT_OWNER_NONE;
    lock_path = ipc__format("%s.lock", path);
    owner = lock_path ? owner_from_lock_file(lock_path) : IPC_PLAT_OWNER_UNKNOWN;
    free(lock_path);
    free(path);
    return owner;
}

int ipc_plat_check_server_user(ipc_plat_conn *conn, const char *name, int policy,
                               uint32_t uid, ipc_error *err)
{
    uid_t server, ours = geteuid();
    char *theirs, *wanted;
    int ok, r;

    if (policy == IPC_SERVER_USER_ANY)
        return IPC_OK;
    if (peer_uid(conn->fd, &server) != 0)
        return fail_errno(err, errno, "reading the server's credentials", NULL);
    if (policy == IPC_SERVER_USER_UID)
        ok = server == (uid_t)uid;
    else   /* a path name may be a root service; a plain name is our own */
        ok = server == ours || (strchr(name, '/') && server == 0);
    if (ok)
        return IPC_OK;
    theirs = describe_user(server);
    wanted = policy == IPC_SERVER_USER_UID ? describe_user((uid_t)uid) : describe_user(ours);
    r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                  "the server on '%s' runs as %s, not as %s%s; refusing to send it anything "
                  "(pass server_user to trust that user)", name,
                  theirs ? theirs : "another user", wanted ? wanted : "the expected user",
                  policy == IPC_SERVER_USER_DEFAULT && strchr(name, '/') ? " or root" : "");
    free(theirs);
    free(wanted);
    return r;
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
