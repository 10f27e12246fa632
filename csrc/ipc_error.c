/*
 * Errors: result names, formatted messages, ipc__fail. The leaf of the
 * core: it depends on libc only, so every other file (the platform files
 * included) can report failures without a link cycle.
 */
#include "ipc_error.h"

#include <stdio.h>
#include <stdlib.h>

void ipc_error_clear(ipc_error *err)
{
    if (!err)
        return;
    free(err->message);
    err->message = NULL;
    err->code = IPC_OK;
    err->system_error = 0;
}

#define IPC__NAME_CASE(name, value, meaning) \
    case name: return #name;

const char *ipc_result_name(int code)
{
    switch (code) {
        IPC_RESULT_MAP(IPC__NAME_CASE)
    default: return "IPC_E_UNKNOWN";
    }
}

const char *ipc_verdict_name(int verdict)
{
    switch (verdict) {
        IPC_VERDICT_MAP(IPC__NAME_CASE)
    default: return "IPC_VERDICT_UNKNOWN";
    }
}

char *ipc__vformat(const char *format, va_list args)
{
    va_list copy;
    int size;
    char *text;

    va_copy(copy, args);
    size = vsnprintf(NULL, 0, format, copy);
    va_end(copy);
    if (size < 0)
        return NULL;
    text = (char *)malloc((size_t)size + 1);
    if (!text)
        return NULL;
    vsnprintf(text, (size_t)size + 1, format, args);
    return text;
}

char *ipc__format(const char *format, ...)
{
    va_list args;
    char *text;

    va_start(args, format);
    text = ipc__vformat(format, args);
    va_end(args);
    return text;
}

int ipc__fail(ipc_error *err, int code, int system_error, const char *format, ...)
{
    va_list args;

    if (!err)
        return code;
    free(err->message);
    err->code = code;
    err->system_error = system_error;
    va_start(args, format);
    err->message = ipc__vformat(format, args);
    va_end(args);
    return code;
}

/* Keeps the first error's text but lets a caller say where it happened. */
int ipc__fail_with_context(ipc_error *err, int code, const char *context)
{
    char *inner;

    if (!err)
        return code;
    inner = err->message;
    err->message = NULL;
    ipc__fail(err, code, err->system_error, "%s: %s", context,
              inner ? inner : ipc_result_name(code));
    free(inner);
    return code;
}
