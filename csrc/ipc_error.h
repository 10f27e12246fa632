/*
 * Private helpers for errors and logging, shared by every core file and by
 * the platform files. Not part of the public API.
 *
 * ipc_error.c (fail, format, result names) depends on nothing but libc: it
 * is the leaf every other file links against. ipc_log.c (the log callback)
 * needs only the platform's global lock.
 */
#ifndef IPCFAST_IPC_ERROR_H
#define IPCFAST_IPC_ERROR_H

#include "ipc.h"

#include <stdarg.h>

/* Fills err (if non-NULL) with code, OS error and a formatted message;
 * returns code. The message is allocated to fit. */
int ipc__fail(ipc_error *err, int code, int system_error, const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Keeps err's first message but prefixes where it happened ("context: ..."),
 * and sets code; returns code. */
int ipc__fail_with_context(ipc_error *err, int code, const char *context);

/* Formats into a new heap string (NULL if out of memory). */
char *ipc__format(const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
char *ipc__vformat(const char *format, va_list args);

/* Sends a message to the embedder's log callback, if any (ipc_log.c). */
void ipc__log(int level, const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
