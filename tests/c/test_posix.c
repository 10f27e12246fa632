/*
 * C tests of POSIX specifics: socket path names, the private directory, no SIGPIPE.
 */
#include "t_harness.h"

#ifndef _WIN32
static int file_mode(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return -1;
    return (int)(st.st_mode & 07777);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* A name with '/' is a socket path used as is; the lock file sits beside it. */
void test_path_names(void)
{
    char dir[] = "/tmp/ipcfast-ct-XXXXXX";
    char path[256], lock[300];
    srv_ctx ctx;
    ipc_server_t *server = NULL;
    ipc_server_options so;
    ipc_error err = {0, 0, NULL};
    int world;
    ctx_init(&ctx);
    if (!CHECK(mkdtemp(dir) != NULL)) {
        ctx_free(&ctx);
        return;
    }
    snprintf(path, sizeof path, "%s/app.sock", dir);
    snprintf(lock, sizeof lock, "%s.lock", path);
    for (world = 0; world < 2; world++) {
        ipc_server_options_init(&so);
        so.access = world ? IPC_ACCESS_WORLD : IPC_ACCESS_USER;
        server = open_server(path, &so, cmd_handler, &ctx);
        if (!server)
            continue;
        CHECK(strcmp(ipc_server_address(server), path) == 0);
        CHECK(file_mode(path) == (world ? 0666 : 0600));
        CHECK(exists(lock));
        {
            ipc_client_t *client = open_client(path, NULL, 5000);
            if (client) {
                expect_text(client, "by path", "by path");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
        CHECK(!exists(path));
        CHECK(!exists(lock));
    }
    /* something that is not a socket is never replaced */
    {
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        if (f)
            fclose(f);
        server = NULL;
        CHECK_RC(ipc_server_open(&server, path, NULL, cmd_handler, &ctx, &err),
                 IPC_E_ADDRESS_IN_USE, &err);
        ipc_error_clear(&err);
        CHECK(exists(path));
        unlink(path);
        unlink(lock);
    }
    /* a stale socket file without a lock holder is reclaimed */
    {
        struct sockaddr_un addr;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&addr, 0, sizeof addr);
        addr.sun_family = AF_UNIX;
        strcpy(addr.sun_path, path);
        CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
        if (fd >= 0)
            close(fd); /* socket file left behind, nobody listening */
        server = open_server(path, NULL, cmd_handler, &ctx);
        ipc_server_stop(server);
        unlink(path);
        unlink(lock);
    }
    rmdir(dir);
    ctx_free(&ctx);
}

/* The private per-user directory: created 0700; refused when unsafe. */
void test_private_directory(void)
{
    char base[] = "/tmp/ipcfast-ct-XXXXXX";
    char priv[256], other[256], name[96];
    const char *old_runtime = getenv("XDG_RUNTIME_DIR");
    char *saved = old_runtime ? strdup(old_runtime) : NULL;
    srv_ctx ctx;
    ipc_server_t *server = NULL;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    ctx_init(&ctx);
    if (!CHECK(mkdtemp(base) != NULL)) {
        free(saved);
        ctx_free(&ctx);
        return;
    }
    snprintf(priv, sizeof priv, "%s/ipcfast", base);
    snprintf(other, sizeof other, "%s/elsewhere", base);
    make_name(name, sizeof name, "priv");
    setenv("XDG_RUNTIME_DIR", base, 1);

    /* no directory yet: a client sees "not found" */
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_NOT_FOUND, &err);
    ipc_error_clear(&err);
    /* the server creates it, mode 0700, and puts the socket in it */
    server = open_server(name, NULL, cmd_handler, &ctx);
    CHECK(file_mode(priv) == 0700);
    if (server) {
        CHECK(strncmp(ipc_server_address(server), priv, strlen(priv)) == 0);
        ipc_server_stop(server);
    }
    /* group/world-writable: refused by server and client */
    chmod(priv, 0777);
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err), IPC_E_ACCESS_DENIED,
             &err);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_ACCESS_DENIED, &err);
    ipc_error_clear(&err);
    chmod(priv, 0700);
    rmdir(priv);
    /* a symlink: refused, even to a good directory */
    CHECK(mkdir(other, 0700) == 0);
    CHECK(symlink(other, priv) == 0);
    CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err), IPC_E_ACCESS_DENIED,
             &err);
    ipc_error_clear(&err);
    CHECK_RC(ipc_client_open(&client, name, NULL, 0, &err), IPC_E_ACCESS_DENIED, &err);
    ipc_error_clear(&err);
    unlink(priv);
    /* a plain file: refused */
    {
        FILE *f = fopen(priv, "w");
        if (f)
            fclose(f);
        CHECK_RC(ipc_server_open(&server, name, NULL, cmd_handler, &ctx, &err), IPC_E_ACCESS_DENIED,
                 &err);
        ipc_error_clear(&err);
        unlink(priv);
    }
    rmdir(other);
    rmdir(base);
    if (saved) {
        setenv("XDG_RUNTIME_DIR", saved, 1);
        free(saved);
    } else {
        unsetenv("XDG_RUNTIME_DIR");
    }
    ctx_free(&ctx);
}

#endif /* !_WIN32 */
void test_no_sigpipe(void)
{
#ifndef _WIN32
    /* The library must not raise SIGPIPE on a closed peer (it would kill an
     * embedding program that keeps the default disposition). */
    CHECK(g_sigpipes == 0);
#endif
}
