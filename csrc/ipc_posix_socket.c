/*
 * POSIX connections: connect, reads and writes (with an SCM_RIGHTS
 * descriptor where the shared-memory path needs one), the peer's user,
 * interrupt, drain and close. Part of the POSIX platform (ipc_posix.c).
 */
#if !defined(_WIN32)

#include "ipc_posix_internal.h"

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
        n = poll(&p, 1, deadline < 0 ? -1 : ipc__posix_ms_until(deadline));
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
int ipc__posix_connect_socket(int fd, const struct sockaddr_un *addr, int timeout_ms)
{
#if defined(__linux__)
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
#endif

    ipc__posix_set_nonblocking(fd, 1);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
        return 0;
#if defined(__linux__)
    if (errno != EAGAIN || timeout_ms == 0)
        return -1;
    ipc__posix_set_nonblocking(fd, 0);
    for (;;) {
        int unknown = -2;
        int wait = deadline < 0 ? -1 : ipc__posix_ms_until(deadline);

        if (wait == 0) {
            errno = EAGAIN;
            return -1;
        }
        if (set_socket_timeout(fd, SO_SNDTIMEO, &unknown, wait) != 0)
            return -1;
        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
            return 0;
        if (errno == EISCONN)
            return 0; /* an interrupted attempt completed after all */
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
    r = ipc__posix_resolve_name(name, &addr, &path, 0, err);
    if (r != IPC_OK)
        return r;
    fd = ipc__posix_new_socket(err);
    if (fd < 0) {
        free(path);
        return -fd;
    }
    if (ipc__posix_connect_socket(fd, &addr, timeout_ms) != 0) {
        int e = errno;

        if (e == EINPROGRESS) {
            socklen_t len = sizeof e;

            if (wait_ready(fd, POLLOUT, timeout_ms) <= 0)
                e = EAGAIN;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
                e = errno;
        }
        if (e != 0) {
            ipc__posix_close_quietly(fd);
            if (e == EAGAIN || e == EWOULDBLOCK)
                r = ipc__fail(err, IPC_E_BUSY, e, "the server '%s' has a full connection queue",
                              path);
            else if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
                r = ipc__fail(err, IPC_E_NOT_FOUND, e, "no server is listening on '%s' (%s)", path,
                              strerror(e));
            else
                r = ipc__posix_fail_errno(err, e, "connect to", path);
            free(path);
            return r;
        }
    }
    free(path);
    ipc__posix_set_nonblocking(fd, 0);
    return ipc__posix_wrap_conn(fd, out, err);
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
        tv.tv_usec = 1; /* a zero timeval means "no limit" */
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
        ipc__posix_close_quietly(conn->kept_handle);
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
                ipc__posix_close_quietly(fd);
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

int ipc_plat_read(ipc_plat_conn *conn, void *buf, size_t capacity, size_t *got, int timeout_ms,
                  ipc_error *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : ipc_plat_now_ms() + timeout_ms;
    int wait = timeout_ms;

    *got = 0;
    for (;;) {
        ssize_t n;

        if (set_socket_timeout(conn->fd, SO_RCVTIMEO, &conn->recv_timeout_ms, wait) != 0)
            return ipc__posix_fail_errno(err, errno, "setsockopt(SO_RCVTIMEO)", NULL);
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
            if (deadline >= 0 && (wait = ipc__posix_ms_until(deadline)) == 0)
                return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return ipc__fail(err, IPC_E_TIMEOUT, 0, "no data within %d ms", timeout_ms);
        if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN)
            return ipc__fail(err, IPC_E_CLOSED, errno, "the connection was reset: %s",
                             strerror(errno));
        return ipc__posix_fail_errno(err, errno, "recv", NULL);
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
                return ipc__fail(err, IPC_E_TIMEOUT, 0,
                                 "the peer did not take the data in "
                                 "time (%d ms)",
                                 timeout_ms);
            if (left < slice)
                slice = (int)left;
        }
        if (set_socket_timeout(conn->fd, SO_SNDTIMEO, &conn->send_timeout_ms, slice) != 0)
            return ipc__posix_fail_errno(err, errno, "setsockopt(SO_SNDTIMEO)", NULL);
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
                continue; /* woke up: check the deadline, write on */
            if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
                return ipc__fail(err, IPC_E_CLOSED, errno, "the peer closed the connection");
            return ipc__posix_fail_errno(err, errno, "sendmsg", NULL);
        }
        handle = -1; /* it went with the first bytes */
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

    if (ipc__posix_peer_uid(conn->fd, &uid) != 0)
#if defined(SO_PEERCRED) && defined(__linux__)
        return ipc__posix_fail_errno(err, errno, "getsockopt(SO_PEERCRED)", NULL);
#else
        return ipc__posix_fail_errno(err, errno, "getpeereid", NULL);
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
            ipc_plat_word_wake(NULL, word); /* a futex needs no wake object */
    }
}

int ipc_plat_conn_interrupted(ipc_plat_conn *conn)
{
    return __atomic_load_n(&conn->interrupted, __ATOMIC_SEQ_CST);
}

void ipc_plat_conn_wake_on_interrupt(ipc_plat_conn *conn, ipc_plat_wake *wake, uint32_t *word)
{
    (void)wake; /* empty on POSIX: the futex is the word itself */
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
        ipc__posix_close_quietly(conn->kept_handle);
    ipc__posix_close_quietly(conn->fd);
    free(conn);
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_socket_not_on_this_platform;
#endif /* !_WIN32 */
