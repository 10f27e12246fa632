/*
 * Logging: the embedder's callback. It lives apart from ipc_error.c because
 * it needs the platform's global lock, while the error helpers must stay a
 * leaf.
 */
#include "ipc_platform.h"

#include <stdlib.h>

/* The callback and its user data change together: a reader copies both
 * under the global lock, so a message never reaches one callback with the
 * other's user data. The callback itself runs outside the lock. */
static ipc_log_fn log_fn = NULL;
static void *log_user_data = NULL;

void ipc_set_log_handler(ipc_log_fn fn, void *user_data)
{
    ipc_plat_global_lock();
    log_fn = fn;
    log_user_data = user_data;
    ipc_plat_global_unlock();
}

void ipc__log(int level, const char *format, ...)
{
    va_list args;
    char *text;
    ipc_log_fn fn;
    void *user_data;

    ipc_plat_global_lock();
    fn = log_fn;
    user_data = log_user_data;
    ipc_plat_global_unlock();
    if (!fn)
        return;
    va_start(args, format);
    text = ipc__vformat(format, args);
    va_end(args);
    fn(user_data, level, text ? text : "(out of memory formatting a log message)");
    free(text);
}
