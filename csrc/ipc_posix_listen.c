/*
 * POSIX listening: ipc_plat_listen, acceptors, accept with the peer's
 * credentials checked, and the listener's interrupt, close and forget.
 * Part of the POSIX platform (ipc_posix.c).
 */
#if !defined(_WIN32)

#include "ipc_posix_internal.h"

int ipc_plat_listen(ipc_plat_listener **out, const char *name, const ipc_plat_listen_params *params,
                    ipc_error *err)
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
    r = ipc__posix_resolve_name(name, &addr, &l->path, 1, err);
    if (r != IPC_OK)
        goto fail;
    l->lock_path = ipc__format("%s.lock", l->path);
    if (!l->lock_path) {
        r = ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
        goto fail;
    }
    r = ipc__posix_take_name_lock(l, err);
    if (r == IPC_OK)
        r = ipc__posix_clear_stale_socket(l, &addr, err);
    if (r == IPC_OK)
        r = ipc__posix_open_wake_pipe(l->wake, err);
    if (r != IPC_OK)
        goto fail;
    l->fd = ipc__posix_new_socket(err);
    if (l->fd < 0) {
        r = -l->fd;
        goto fail;
    }
    /* The private directory already keeps other users out of plain names;
     * the mode matters for paths chosen by the caller. */
    r = ipc__posix_place_socket(l, world ? 0666 : 0600, err);
    if (r == IPC_OK && world && !strchr(name, '/')) {
        r = ipc__posix_open_dir_to_others(l, err);
        l->opened_dir = r == IPC_OK;
    }
    if (r == IPC_OK && ipc__posix_set_nonblocking(l->fd, 1) != 0)
        r = ipc__posix_fail_errno(err, errno, "listen", l->path);
    if (r != IPC_OK)
        goto fail;
    *out = l;
    return IPC_OK;
fail:
    if (l->lock_fd >= 0) {
        /* Only the lock's holder may remove the lock file. */
        unlink(l->lock_path);
        ipc__posix_close_quietly(l->lock_fd);
        l->lock_fd = -1;
    }
    ipc_plat_listener_close(l);
    return r;
}

const char *ipc_plat_listener_address(const ipc_plat_listener *l)
{
    return l->path;
}

int ipc_plat_acceptor_create(ipc_plat_listener *listener, ipc_plat_acceptor **out, ipc_error *err)
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

int ipc__posix_wrap_conn(int fd, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_conn *conn = (ipc_plat_conn *)malloc(sizeof *conn);

    if (!conn) {
        ipc__posix_close_quietly(fd);
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

int ipc__posix_peer_uid(int fd, uid_t *uid)
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
        ipc__log(IPC_LOG_WARNING,
                 "refused a connection to %s: %s (and %lu more refused "
                 "since the last message)",
                 a->listener->path, why, a->refused_unlogged);
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
    if (ipc__posix_peer_uid(fd, &uid) != 0) {
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
            return ipc__posix_fail_errno(err, errno, "poll on the listening socket", NULL);
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
            ipc__posix_set_cloexec(fd);
#endif
        if (fd < 0) {
            int e = errno;

            /* Another listener won the race, or the client gave up. */
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
                continue;
            return ipc__posix_fail_errno(err, e, "accept", l->path);
        }
        if (unwanted_connection(acceptor, fd)) {
            ipc__posix_close_quietly(fd);
            continue;
        }
        /* BSDs let accepted sockets inherit O_NONBLOCK; reads rely on
         * SO_RCVTIMEO, which needs a blocking socket. */
        ipc__posix_set_nonblocking(fd, 0);
        return ipc__posix_wrap_conn(fd, out, err);
    }
}

void ipc_plat_listener_interrupt(ipc_plat_listener *l)
{
    ssize_t ignored;
    char byte = 1;

    if (!l || l->wake[1] < 0)
        return;
    ignored = write(l->wake[1], &byte, 1);
    (void)ignored; /* a full pipe is already readable, which is all we need */
}

void ipc_plat_listener_close(ipc_plat_listener *l)
{
    if (!l)
        return;
    if (l->fd >= 0)
        ipc__posix_close_quietly(l->fd);
    if (l->opened_dir)
        ipc__posix_close_dir_to_others(l); /* removes our socket under the directory lock */
    else
        ipc__posix_remove_our_socket(l);
    if (l->lock_fd >= 0) {
        /* Remove the lock file while still holding it; ipc__posix_take_name_lock
         * notices if it locked the orphan. */
        unlink(l->lock_path);
        ipc__posix_close_quietly(l->lock_fd);
    }
    ipc__posix_close_quietly(l->wake[0]);
    ipc__posix_close_quietly(l->wake[1]);
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
    ipc__posix_close_quietly(l->fd);
    ipc__posix_close_quietly(l->lock_fd);
    ipc__posix_close_quietly(l->wake[0]);
    ipc__posix_close_quietly(l->wake[1]);
    l->fd = l->lock_fd = l->wake[0] = l->wake[1] = -1;
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_listen_not_on_this_platform;
#endif /* !_WIN32 */
