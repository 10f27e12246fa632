/*
 * What the POSIX platform files (ipc_posix*.c) share and nothing else
 * sees: the feature macros and system headers, the listener, acceptor and
 * connection structs, and the helpers one file defines for the others.
 * Guarded like those files: empty on Windows.
 */
#ifndef IPC_POSIX_INTERNAL_H
#define IPC_POSIX_INTERNAL_H

#if !defined(_WIN32)

#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* accept4, pipe2, SOCK_CLOEXEC, struct ucred */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1 /* getpeereid, SO_NOSIGPIPE */
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

struct ipc_plat_listener {
    int fd;
    int wake[2];    /* stop writes a byte; pollers see it readable */
    int lock_fd;    /* flock'ed for our lifetime: we own the name */
    int access;     /* enum ipc_access: "user" refuses other users at accept */
    int opened_dir; /* we made the private directory traversable */
    int placed;     /* our socket file is at path, as (dev, ino) */
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

struct ipc_plat_conn {
    int fd;
    int accept_handles;  /* reads keep an SCM_RIGHTS descriptor */
    int kept_handle;     /* the descriptor kept, -1 if none */
    uint32_t *wake_word; /* woken by interrupt (atomic: stop reads it) */
    int interrupted;     /* set by ipc_plat_conn_interrupt (atomic) */
    int recv_timeout_ms; /* what SO_RCVTIMEO is set to; -2: unknown */
    int send_timeout_ms; /* what SO_SNDTIMEO is set to; -2: unknown */
};

/* ipc_posix.c */
int ipc__posix_fail_errno(ipc_error *err, int e, const char *what, const char *path);
int ipc__posix_ms_until(int64_t deadline);
void ipc__posix_close_quietly(int fd);
int ipc__posix_new_socket(ipc_error *err);
int ipc__posix_set_nonblocking(int fd, int on);
#if !defined(__linux__) || !defined(O_CLOEXEC) || !defined(SOCK_CLOEXEC)
int ipc__posix_set_cloexec(int fd);
#endif
int ipc__posix_open_wake_pipe(int wake[2], ipc_error *err);

/* ipc_posix_name.c */
int ipc__posix_resolve_name(const char *name, struct sockaddr_un *addr, char **path_out, int create,
                            ipc_error *err);
int ipc__posix_take_name_lock(ipc_plat_listener *l, ipc_error *err);
int ipc__posix_clear_stale_socket(ipc_plat_listener *l, const struct sockaddr_un *addr,
                                  ipc_error *err);
int ipc__posix_place_socket(ipc_plat_listener *l, mode_t mode, ipc_error *err);
int ipc__posix_open_dir_to_others(ipc_plat_listener *l, ipc_error *err);
void ipc__posix_close_dir_to_others(ipc_plat_listener *l);
void ipc__posix_remove_our_socket(ipc_plat_listener *l);

/* ipc_posix_listen.c */
int ipc__posix_wrap_conn(int fd, ipc_plat_conn **out, ipc_error *err);
int ipc__posix_peer_uid(int fd, uid_t *uid);

/* ipc_posix_socket.c */
int ipc__posix_connect_socket(int fd, const struct sockaddr_un *addr, int timeout_ms);

#endif /* !_WIN32 */

#endif
