/*
 * What the Windows platform files (ipc_win32*.c) share and nothing else
 * sees: the target version and headers, pipe constants, the connection
 * struct, and the helpers one file defines for the others. Guarded like
 * those files: empty elsewhere.
 */
#ifndef IPC_WIN32_INTERNAL_H
#define IPC_WIN32_INTERNAL_H

#if defined(_WIN32)

#if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0601
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0601 /* CancelIoEx, SRW locks, GetNamedPipeClientProcessId */
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

struct ipc_plat_conn {
    HANDLE pipe;
    int server_side;
    HANDLE read_event;
    HANDLE write_event;
    HANDLE soft_event; /* interrupt: wakes reads */
    HANDLE hard_event; /* interrupt(hard): wakes writes too */
    volatile LONG soft;
    volatile LONG hard;
    HANDLE wake_event;    /* shm: our copy of the event a stop sets (set once) */
    FILETIME accepted_at; /* server side: when the client was accepted (shm) */
    uint8_t *coalesce;    /* header + small payload as one message */
    size_t coalesce_capacity;
};

/* ipc_win32.c */
int ipc__win32_map_error(DWORD e);
int ipc__win32_fail_win(ipc_error *err, DWORD e, const char *what);

/* ipc_win32_listen.c */
int ipc__win32_resolve_name(const char *name, char **path_out, wchar_t **wide_out, ipc_error *err);
int ipc__win32_process_user(HANDLE process, TOKEN_USER **out, ipc_error *err);
int ipc__win32_wrap_conn(HANDLE pipe, int server_side, ipc_plat_conn **out, ipc_error *err);

#endif /* _WIN32 */

#endif
