/*
 * POSIX names: the private per-user directory, a name's socket path, the
 * lock file that says who owns a name (and the owner record a client
 * reads before it trusts a name), placing and removing the socket file,
 * and the server-user check. Part of the POSIX platform (ipc_posix.c).
 */
#if !defined(_WIN32)

#include "ipc_posix_internal.h"

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
        return ipc__posix_fail_errno(err, errno, "checking the socket directory", dir);
    if (S_ISLNK(st.st_mode))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' is a symbolic link; refusing to use it "
                         "(remove it, or set XDG_RUNTIME_DIR)",
                         dir);
    if (!S_ISDIR(st.st_mode))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "'%s' should be the private socket directory but is not a "
                         "directory",
                         dir);
    if (st.st_uid != geteuid()) {
        char *owner = describe_user(st.st_uid);
        int r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                          "the socket directory '%s' belongs to %s, not to us (uid %lu); "
                          "refusing to use it",
                          dir, owner ? owner : "another user", (unsigned long)geteuid());

        free(owner);
        return r;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                         "the socket directory '%s' is writable by group or others (mode "
                         "%03o); refusing to use it (chmod 700 it)",
                         dir, (unsigned)(st.st_mode & 0777));
    return IPC_OK;
}

/* Checks (and with `create`, makes) one candidate private directory. A
 * client that finds none gets its path anyway: connect reports "not found". */
static int use_private_dir(char *dir, int create, char **out, ipc_error *err)
{
    struct stat st;

    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int r = ipc__posix_fail_errno(err, errno, "creating the socket directory", dir);

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
    if (getpwuid_r(geteuid(), &entry, buf, sizeof buf, &found) == 0 && found && found->pw_dir &&
        *found->pw_dir)
        return ipc__format("%s", found->pw_dir);
    return NULL;
}

/* ${TMPDIR:-/tmp}/ipcfast-UID belongs to another user, who made it first
 * (anybody can create names in /tmp): fall back to HOME/.ipcfast-UID, a
 * name only we (and root) can create. Client and server follow the same
 * rule, so they meet there. */
static int squatted_dir_fallback(const char *squatted, uid_t squatter, int create, char **out,
                                 ipc_error *err)
{
    char *owner = describe_user(squatter);
    char *home = home_dir();
    char *fallback = home ? ipc__format("%s/.ipcfast-%lu", home, (unsigned long)geteuid()) : NULL;
    ipc_error inner = {0};
    int r;

    free(home);
    if (!fallback) {
        r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                      "the socket directory '%s' belongs to %s, not to us (uid %lu); "
                      "refusing to use it, and there is no home directory to fall back "
                      "to (set HOME or XDG_RUNTIME_DIR, or have that user or root remove "
                      "it)",
                      squatted, owner ? owner : "another user", (unsigned long)geteuid());
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
                      "refusing to use it, and the fallback failed: %s",
                      squatted, owner ? owner : "another user", (unsigned long)geteuid(),
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
        dir = ipc__format("%s/ipcfast-%lu", tmp && *tmp ? tmp : "/tmp", (unsigned long)geteuid());
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
int ipc__posix_resolve_name(const char *name, struct sockaddr_un *addr, char **path_out, int create,
                            ipc_error *err)
{
    char *path;
    size_t length;

    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "empty name");
    length = strlen(name);
    /* NAME.lock is the lock file of NAME (docs/protocol.md 2.1). */
    if (length >= 5 && strcmp(name + length - 5, ".lock") == 0)
        return ipc__fail(err, IPC_E_INVALID, 0,
                         "'%s' ends in \".lock\", which is reserved "
                         "for lock files: choose another name",
                         name);
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
                          "use a shorter name (or a shorter XDG_RUNTIME_DIR/TMPDIR)",
                          path, (unsigned long)length, (unsigned long)(sizeof addr->sun_path - 1));
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

static int open_cloexec(const char *path, int flags, mode_t mode)
{
#if defined(O_CLOEXEC)
    return open(path, flags | O_CLOEXEC, mode);
#else
    int fd = open(path, flags, mode);

    if (fd >= 0)
        ipc__posix_set_cloexec(fd);
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
        return -ipc__posix_fail_errno(err, errno, "opening the socket directory", dir);
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int r = ipc__posix_fail_errno(err, errno, "locking the socket directory", dir);

            ipc__posix_close_quietly(fd);
            return -r;
        }
    }
    return fd;
}

int ipc__posix_open_dir_to_others(ipc_plat_listener *l, ipc_error *err)
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
        r = ipc__posix_fail_errno(err, errno, "making the socket directory traversable", dir);
    else if (runtime && *runtime)
        ipc__log(IPC_LOG_WARNING,
                 "access is \"world\" but %s lives under XDG_RUNTIME_DIR "
                 "(%s), which other users usually cannot enter: give the server a path "
                 "name in a shared directory instead",
                 l->path, runtime);
    ipc__posix_close_quietly(fd); /* releases the lock */
    free(dir);
    return r;
}

/* Removes the socket file at path only while it is still the one we
 * placed: another process may have replaced it since. */
void ipc__posix_remove_our_socket(ipc_plat_listener *l)
{
    struct stat st;

    if (!l->placed)
        return;
    l->placed = 0;
    if (lstat(l->path, &st) != 0)
        return; /* somebody removed it already */
    if (st.st_dev != l->dev || st.st_ino != l->ino) {
        ipc__log(IPC_LOG_WARNING, "%s is no longer our socket; leaving it in place", l->path);
        return;
    }
    unlink(l->path);
}

/* Removes our socket, then closes the directory to others (0700) when no
 * other world-access socket remains in it; all under the directory lock. */
void ipc__posix_close_dir_to_others(ipc_plat_listener *l)
{
    char *dir = parent_dir(l->path);
    int fd = dir ? lock_private_dir(dir, NULL) : -1;
    DIR *listing;
    struct dirent *entry;
    int still_shared = 0;

    ipc__posix_remove_our_socket(l);
    listing = fd >= 0 ? opendir(dir) : NULL;
    while (listing && !still_shared && (entry = readdir(listing)) != NULL) {
        struct stat st;

        if (fstatat(fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode) &&
            (st.st_mode & S_IWOTH))
            still_shared = 1;
    }
    if (listing)
        closedir(listing);
    if (fd >= 0) {
        if (!still_shared)
            fchmod(fd, 0700);
        ipc__posix_close_quietly(fd);
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
int ipc__posix_take_name_lock(ipc_plat_listener *l, ipc_error *err)
{
    int attempt;

    for (attempt = 0; attempt < 5; attempt++) {
        struct stat held, named;
        int fd = open_cloexec(l->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);

        if (fd < 0)
            return ipc__posix_fail_errno(err, errno, "opening the lock file", l->lock_path);
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;

            ipc__posix_close_quietly(fd);
            if (e == EWOULDBLOCK || e == EAGAIN)
                return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                                 "another server is already serving '%s'", l->path);
            return ipc__posix_fail_errno(err, e, "locking", l->lock_path);
        }
        /* A stopping server unlinks its lock file: make sure we locked the
         * file that is still at the path, not an orphan. */
        if (fstat(fd, &held) == 0 && stat(l->lock_path, &named) == 0 &&
            held.st_dev == named.st_dev && held.st_ino == named.st_ino) {
            record_owner(fd);
            l->lock_fd = fd;
            return IPC_OK;
        }
        ipc__posix_close_quietly(fd);
    }
    return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                     "could not claim '%s': other servers keep replacing its lock file", l->path);
}
/* With the lock held, whatever is at the path is ours to replace, unless it
 * is not a socket or something (not using the lock) still listens there. */
int ipc__posix_clear_stale_socket(ipc_plat_listener *l, const struct sockaddr_un *addr,
                                  ipc_error *err)
{
    struct stat st;
    int probe;

    if (lstat(l->path, &st) != 0)
        return errno == ENOENT ? IPC_OK : ipc__posix_fail_errno(err, errno, "checking", l->path);
    if (!S_ISSOCK(st.st_mode))
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EEXIST,
                         "'%s' exists and is not a socket; refusing to replace it", l->path);
    probe = ipc__posix_new_socket(err);
    if (probe < 0)
        return -probe;
    /* Non-blocking: a listener with a full backlog (EAGAIN) is live too,
     * and must not hang our start. */
    ipc__posix_set_nonblocking(probe, 1);
    if (connect(probe, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EAGAIN ||
        errno == EWOULDBLOCK || errno == EINPROGRESS) {
        ipc__posix_close_quietly(probe);
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, EADDRINUSE,
                         "a process that does not hold '%s' is listening on it", l->path);
    }
    /* Only "refused" proves that nobody listens (docs/protocol.md 2.1). */
    if (errno != ECONNREFUSED) {
        int e = errno;

        ipc__posix_close_quietly(probe);
        return e == ENOENT ? IPC_OK
                           : ipc__posix_fail_errno(err, e, "probing the existing socket", l->path);
    }
    ipc__posix_close_quietly(probe);
    if (unlink(l->path) != 0 && errno != ENOENT)
        return ipc__posix_fail_errno(err, errno, "removing the stale socket", l->path);
    ipc__log(IPC_LOG_INFO, "reclaimed the stale socket %s", l->path);
    return IPC_OK;
}

/* The listen backlog. Connections wait there in order; a deep one (Linux's
 * SOMAXCONN is 4096) filled by a connect/close flood makes a new client
 * wait behind thousands of dead connections. 64 lets a burst of clients
 * queue (on Linux a client waits in the kernel for room, see
 * ipc__posix_connect_socket) while a flood costs a newcomer at most 64 accepts. */
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
                         "sockets allow %lu): use a shorter name",
                         l->path, (unsigned long)staging_length,
                         (unsigned long)(sizeof addr.sun_path - 1));
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, l->path, strlen(l->path) + 1);
    fchmod(l->fd, mode); /* best effort: narrows the mode where honoured */
    if (bind(l->fd, (const struct sockaddr *)&addr, sizeof addr) != 0)
        return ipc__posix_fail_errno(err, errno, "bind", l->path);
    if (listen(l->fd, LISTEN_BACKLOG) != 0) {
        int r = ipc__posix_fail_errno(err, errno, "listen", l->path);

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
int ipc__posix_place_socket(ipc_plat_listener *l, mode_t mode, ipc_error *err)
{
    char *dir = parent_dir(l->path);
    char *staging = dir ? ipc__format("%s/.ipcXXXXXX", strcmp(dir, "/") == 0 ? "" : dir) : NULL;
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
        r = ipc__posix_fail_errno(err, errno, "bind (creating a staging directory)", l->path);
        free(staging);
        return r;
    }
    dfd = open_cloexec(staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
    if (dfd < 0 || fstat(dfd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077)) {
        r = ipc__fail(err, IPC_E_ACCESS_DENIED, dfd < 0 ? errno : 0,
                      "the staging directory '%s' for '%s' was replaced by another user", staging,
                      l->path);
        goto done;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s/s", staging);
    fchmod(l->fd, mode); /* best effort: narrows the mode at bind where honoured */
    if (bind(l->fd, (const struct sockaddr *)&addr, sizeof addr) != 0) {
        r = ipc__posix_fail_errno(err, errno, "bind", l->path);
        goto done;
    }
    bound = 1;
    /* Nobody else can create entries in our 0700 directory: "s" is ours. */
    if (fchmodat(dfd, "s", mode, 0) != 0) {
        r = ipc__posix_fail_errno(err, errno, "chmod", l->path);
        goto done;
    }
    if (fstatat(dfd, "s", &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(st.st_mode)) {
        r = ipc__fail(err, IPC_E_SYSTEM, errno, "the socket bound for '%s' vanished", l->path);
        goto done;
    }
    if (listen(l->fd, LISTEN_BACKLOG) != 0) {
        r = ipc__posix_fail_errno(err, errno, "listen", l->path);
        goto done;
    }
    if (linkat(dfd, "s", AT_FDCWD, l->path, 0) != 0) {
        r = ipc__posix_fail_errno(err, errno, "bind", l->path);
        goto done;
    }
    l->placed = 1;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
done:
    if (bound)
        unlinkat(dfd, "s", 0);
    if (dfd >= 0)
        ipc__posix_close_quietly(dfd);
    rmdir(staging);
    free(staging);
    return r;
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
    ipc__posix_close_quietly(fd);
    if (n <= 0)
        return IPC_PLAT_OWNER_UNKNOWN; /* created, pid not written yet */
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

    if (ipc__posix_resolve_name(name, &addr, &path, 0, NULL) != IPC_OK)
        return IPC_PLAT_OWNER_NONE;
    lock_path = ipc__format("%s.lock", path);
    owner = lock_path ? owner_from_lock_file(lock_path) : IPC_PLAT_OWNER_UNKNOWN;
    free(lock_path);
    free(path);
    return owner;
}

int ipc_plat_check_server_user(ipc_plat_conn *conn, const char *name, int policy, uint32_t uid,
                               ipc_error *err)
{
    uid_t server, ours = geteuid();
    char *theirs, *wanted;
    int ok, r;

    if (policy == IPC_SERVER_USER_ANY)
        return IPC_OK;
    if (ipc__posix_peer_uid(conn->fd, &server) != 0)
        return ipc__posix_fail_errno(err, errno, "reading the server's credentials", NULL);
    if (policy == IPC_SERVER_USER_UID)
        ok = server == (uid_t)uid;
    else /* a path name may be a root service; a plain name is our own */
        ok = server == ours || (strchr(name, '/') && server == 0);
    if (ok)
        return IPC_OK;
    theirs = describe_user(server);
    wanted = policy == IPC_SERVER_USER_UID ? describe_user((uid_t)uid) : describe_user(ours);
    r = ipc__fail(err, IPC_E_ACCESS_DENIED, 0,
                  "the server on '%s' runs as %s, not as %s%s; refusing to send it anything "
                  "(pass server_user to trust that user)",
                  name, theirs ? theirs : "another user", wanted ? wanted : "the expected user",
                  policy == IPC_SERVER_USER_DEFAULT && strchr(name, '/') ? " or root" : "");
    free(theirs);
    free(wanted);
    return r;
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_name_not_on_this_platform;
#endif /* !_WIN32 */
