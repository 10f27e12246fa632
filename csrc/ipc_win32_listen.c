/*
 * Windows names and listening: a name's pipe path, the security
 * descriptor that limits who may connect, pipe instances, acceptors,
 * accept with the peer checked, and the listener's interrupt and close.
 * Part of the Windows platform (ipc_win32.c).
 */
#if defined(_WIN32)

#include "ipc_win32_internal.h"

/* ======================================================================
 * Names and security
 * ====================================================================== */

/* "NAME" -> \\.\pipe\NAME (UTF-8 and UTF-16); a full pipe path is kept. */
int ipc__win32_resolve_name(const char *name, char **path_out, wchar_t **wide_out, ipc_error *err)
{
    size_t prefix = sizeof PIPE_PREFIX - 1;
    char *path;
    wchar_t *wide;
    int count;

    if (!name || !*name)
        return ipc__fail(err, IPC_E_INVALID, 0, "empty name");
    if (_strnicmp(name, PIPE_PREFIX, prefix) == 0)
        path = ipc__format("%s", name);
    else if (strchr(name, '\\'))
        return ipc__fail(err, IPC_E_INVALID, 0, "a pipe name cannot contain '\\': '%s'", name);
    else
        path = ipc__format("%s%s", PIPE_PREFIX, name);
    if (!path)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    if (strlen(path) > 256) {
        int r = ipc__fail(err, IPC_E_NAME_TOO_LONG, ERROR_FILENAME_EXCED_RANGE,
                          "the pipe name '%s' is %lu characters; Windows allows 256", path,
                          (unsigned long)strlen(path));
        free(path);
        return r;
    }
    count = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, NULL, 0);
    wide = count > 0 ? (wchar_t *)malloc((size_t)count * sizeof *wide) : NULL;
    if (!wide || MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, wide, count) <= 0) {
        free(wide);
        free(path);
        return ipc__fail(err, IPC_E_INVALID, 0, "the name is not valid UTF-8");
    }
    *path_out = path;
    *wide_out = wide;
    return IPC_OK;
}

/* The current process's user SID, malloc'ed (TOKEN_USER holds it). */
int ipc__win32_process_user(HANDLE process, TOKEN_USER **out, ipc_error *err)
{
    HANDLE token = NULL;
    DWORD size = 0;
    TOKEN_USER *user;

    *out = NULL;
    if (!OpenProcessToken(process, TOKEN_QUERY, &token))
        return ipc__win32_fail_win(err, GetLastError(), "OpenProcessToken");
    GetTokenInformation(token, TokenUser, NULL, 0, &size);
    user = size ? (TOKEN_USER *)malloc(size) : NULL;
    if (!user || !GetTokenInformation(token, TokenUser, user, size, &size)) {
        DWORD e = GetLastError();

        free(user);
        CloseHandle(token);
        return user ? ipc__win32_fail_win(err, e, "GetTokenInformation(TokenUser)")
                    : ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory");
    }
    CloseHandle(token);
    *out = user;
    return IPC_OK;
}

struct ipc_plat_listener {
    char *path;
    wchar_t *wide_path;
    DWORD max_instances;
    HANDLE stop_event;     /* manual reset: set once by interrupt */
    HANDLE first_instance; /* created by listen, claimed by the first acceptor */
    SECURITY_ATTRIBUTES attributes;
    PSECURITY_DESCRIPTOR descriptor;
    PACL acl;
    PSID world_sid;
    TOKEN_USER *user;
};

/* Default: only our user (FILE_ALL_ACCESS). world: the World SID
 * (SECURITY_WORLD_RID), so a service in session 0 and a client in a user
 * session can meet. */
static int build_security(ipc_plat_listener *l, int access, ipc_error *err)
{
    SID_IDENTIFIER_AUTHORITY world = {SECURITY_WORLD_SID_AUTHORITY};
    EXPLICIT_ACCESS_W entry;
    DWORD rc;
    int r;

    r = ipc__win32_process_user(GetCurrentProcess(), &l->user, err);
    if (r != IPC_OK)
        return r;
    memset(&entry, 0, sizeof entry);
    entry.grfAccessPermissions = FILE_ALL_ACCESS;
    entry.grfAccessMode = SET_ACCESS;
    entry.grfInheritance = NO_INHERITANCE;
    entry.Trustee.TrusteeForm = TRUSTEE_IS_SID;
    if (access == IPC_ACCESS_WORLD) {
        if (!AllocateAndInitializeSid(&world, 1, SECURITY_WORLD_RID, 0, 0, 0, 0, 0, 0, 0,
                                      &l->world_sid))
            return ipc__win32_fail_win(err, GetLastError(), "AllocateAndInitializeSid(World)");
        entry.Trustee.TrusteeType = TRUSTEE_IS_WELL_KNOWN_GROUP;
        entry.Trustee.ptstrName = (LPWSTR)l->world_sid;
    } else {
        entry.Trustee.TrusteeType = TRUSTEE_IS_USER;
        entry.Trustee.ptstrName = (LPWSTR)l->user->User.Sid;
    }
    rc = SetEntriesInAclW(1, &entry, NULL, &l->acl);
    if (rc != ERROR_SUCCESS)
        return ipc__win32_fail_win(err, rc, "SetEntriesInAcl");
    l->descriptor = (PSECURITY_DESCRIPTOR)LocalAlloc(LPTR, SECURITY_DESCRIPTOR_MIN_LENGTH);
    if (!l->descriptor)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a security descriptor");
    if (!InitializeSecurityDescriptor(l->descriptor, SECURITY_DESCRIPTOR_REVISION))
        return ipc__win32_fail_win(err, GetLastError(), "InitializeSecurityDescriptor");
    if (!SetSecurityDescriptorDacl(l->descriptor, TRUE, l->acl, FALSE))
        return ipc__win32_fail_win(err, GetLastError(), "SetSecurityDescriptorDacl");
    l->attributes.nLength = sizeof l->attributes;
    l->attributes.lpSecurityDescriptor = l->descriptor;
    l->attributes.bInheritHandle = FALSE;
    return IPC_OK;
}

/* ======================================================================
 * Listening
 * ====================================================================== */

static int create_instance(ipc_plat_listener *l, int first, HANDLE *out, ipc_error *err)
{
    DWORD open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    HANDLE pipe;

    if (first)
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    pipe = CreateNamedPipeW(
        l->wide_path, open_mode,
        PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
        l->max_instances, PIPE_BUFFER_SIZE, PIPE_BUFFER_SIZE, 0, &l->attributes);
    if (pipe == INVALID_HANDLE_VALUE) {
        DWORD e = GetLastError();

        *out = NULL;
        /* FIRST_PIPE_INSTANCE fails with "access denied" when the name
         * exists: a live server has it. */
        if (first && (e == ERROR_ACCESS_DENIED || e == ERROR_PIPE_BUSY))
            return ipc__fail(err, IPC_E_ADDRESS_IN_USE, (int)e,
                             "another server is already serving '%s'", l->path);
        return ipc__win32_fail_win(err, e, "CreateNamedPipe");
    }
    *out = pipe;
    return IPC_OK;
}

/* FILE_FLAG_FIRST_PIPE_INSTANCE is what makes claiming a name atomic on
 * Windows; wine does not enforce it, so also look for a live instance
 * first (WaitNamedPipe fails with "not found" only if none exists). */
static int refuse_if_served(ipc_plat_listener *l, ipc_error *err)
{
    if (WaitNamedPipeW(l->wide_path, 1) || GetLastError() != ERROR_FILE_NOT_FOUND)
        return ipc__fail(err, IPC_E_ADDRESS_IN_USE, ERROR_ALREADY_EXISTS,
                         "another server is already serving '%s'", l->path);
    return IPC_OK;
}

int ipc_plat_listen(ipc_plat_listener **out, const char *name, const ipc_plat_listen_params *params,
                    ipc_error *err)
{
    ipc_plat_listener *l = (ipc_plat_listener *)calloc(1, sizeof *l);
    DWORD instances;
    int r;

    *out = NULL;
    if (!l)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for the listener");
    r = ipc__win32_resolve_name(name, &l->path, &l->wide_path, err);
    if (r != IPC_OK)
        goto fail;
    /* One instance per slot plus one spare per listener: the spare is
     * created before a connected instance is handed over, so the name
     * never disappears while the server runs (nobody can slip in an
     * instance with another ACL, and waiting clients never see "not
     * found"). With every slot taken, one client waits on the spare (its
     * handshake is answered when a slot frees up) and the rest get
     * ERROR_PIPE_BUSY and wait in WaitNamedPipe. */
    instances = params->max_clients + params->listeners;
    l->max_instances = instances >= PIPE_UNLIMITED_INSTANCES ? PIPE_UNLIMITED_INSTANCES : instances;
    r = build_security(l, params->access, err);
    if (r != IPC_OK)
        goto fail;
    l->stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!l->stop_event) {
        r = ipc__win32_fail_win(err, GetLastError(), "CreateEvent");
        goto fail;
    }
    r = refuse_if_served(l, err);
    if (r == IPC_OK)
        r = create_instance(l, 1, &l->first_instance, err);
    if (r != IPC_OK)
        goto fail;
    *out = l;
    return IPC_OK;
fail:
    ipc_plat_listener_close(l);
    return r;
}

const char *ipc_plat_listener_address(const ipc_plat_listener *l)
{
    return l->path;
}

struct ipc_plat_acceptor {
    ipc_plat_listener *listener;
    HANDLE pipe; /* the instance waiting for a client; NULL after a failure */
    HANDLE event;
};

int ipc_plat_acceptor_create(ipc_plat_listener *l, ipc_plat_acceptor **out, ipc_error *err)
{
    ipc_plat_acceptor *a = (ipc_plat_acceptor *)calloc(1, sizeof *a);
    int r = IPC_OK;

    *out = NULL;
    if (!a)
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for an acceptor");
    a->listener = l;
    a->event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!a->event) {
        r = ipc__win32_fail_win(err, GetLastError(), "CreateEvent");
        free(a);
        return r;
    }
    /* Acceptors are created by one thread before the listener threads
     * start, so claiming the first instance needs no lock. */
    if (l->first_instance) {
        a->pipe = l->first_instance;
        l->first_instance = NULL;
    } else {
        r = create_instance(l, 0, &a->pipe, err);
        if (r != IPC_OK) {
            CloseHandle(a->event);
            free(a);
            return r;
        }
    }
    *out = a;
    return IPC_OK;
}

void ipc_plat_acceptor_destroy(ipc_plat_acceptor *a)
{
    if (!a)
        return;
    if (a->pipe)
        CloseHandle(a->pipe);
    CloseHandle(a->event);
    free(a);
}

int ipc__win32_wrap_conn(HANDLE pipe, int server_side, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_conn *c = (ipc_plat_conn *)calloc(1, sizeof *c);
    int r = IPC_OK;

    *out = NULL;
    if (!c) {
        CloseHandle(pipe);
        return ipc__fail(err, IPC_E_NO_MEMORY, 0, "out of memory for a connection");
    }
    c->pipe = pipe;
    c->server_side = server_side;
    /* the client's process existed by now: ipc_win32_shm.c tells it from a
     * later process that reuses its pid */
    GetSystemTimeAsFileTime(&c->accepted_at);
    c->read_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->write_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->soft_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    c->hard_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!c->read_event || !c->write_event || !c->soft_event || !c->hard_event) {
        r = ipc__win32_fail_win(err, GetLastError(), "CreateEvent");
        ipc_plat_conn_close(c);
        return r;
    }
    *out = c;
    return IPC_OK;
}

int ipc_plat_accept(ipc_plat_acceptor *a, ipc_plat_conn **out, ipc_error *err)
{
    ipc_plat_listener *l = a->listener;

    *out = NULL;
    for (;;) {
        OVERLAPPED ov;
        HANDLE waits[2];
        HANDLE connected;
        DWORD e = 0, ignored, w;
        int r;

        if (WaitForSingleObject(l->stop_event, 0) == WAIT_OBJECT_0)
            return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
        if (!a->pipe) {
            r = create_instance(l, 0, &a->pipe, err);
            if (r != IPC_OK)
                return r;
        }
        memset(&ov, 0, sizeof ov);
        ResetEvent(a->event);
        ov.hEvent = a->event;
        if (!ConnectNamedPipe(a->pipe, &ov))
            e = GetLastError();
        if (e == ERROR_IO_PENDING) {
            waits[0] = a->event;
            waits[1] = l->stop_event;
            w = WaitForMultipleObjects(2, waits, FALSE, INFINITE);
            if (w != WAIT_OBJECT_0) {
                CancelIoEx(a->pipe, &ov);
                GetOverlappedResult(a->pipe, &ov, &ignored, TRUE);
                return ipc__fail(err, IPC_E_CLOSED, 0, "the server is stopping");
            }
            e = GetOverlappedResult(a->pipe, &ov, &ignored, FALSE) ? 0 : GetLastError();
        }
        if (e == ERROR_NO_DATA) {
            /* The client came and went before we saw it. */
            DisconnectNamedPipe(a->pipe);
            continue;
        }
        if (e != 0 && e != ERROR_PIPE_CONNECTED)
            return ipc__win32_fail_win(err, e, "ConnectNamedPipe");
        /* Keep one instance listening at all times: create the next one
         * before handing this one over, so nobody else can slip in an
         * instance of this name with another ACL. */
        connected = a->pipe;
        a->pipe = NULL;
        r = create_instance(l, 0, &a->pipe, err);
        if (r != IPC_OK) {
            /* The next accept tries again. */
            ipc__log(IPC_LOG_ERROR, "could not create the next pipe instance of %s: %s", l->path,
                     err && err->message ? err->message : "error");
            ipc_error_clear(err);
        }
        return ipc__win32_wrap_conn(connected, 1, out, err);
    }
}

void ipc_plat_listener_interrupt(ipc_plat_listener *l)
{
    if (l && l->stop_event)
        SetEvent(l->stop_event);
}

void ipc_plat_listener_close(ipc_plat_listener *l)
{
    if (!l)
        return;
    if (l->first_instance)
        CloseHandle(l->first_instance);
    if (l->stop_event)
        CloseHandle(l->stop_event);
    if (l->acl)
        LocalFree(l->acl);
    if (l->descriptor)
        LocalFree(l->descriptor);
    if (l->world_sid)
        FreeSid(l->world_sid);
    free(l->user);
    free(l->path);
    free(l->wide_path);
    free(l);
}

void ipc_plat_listener_forget(ipc_plat_listener *l)
{
    (void)l; /* no fork on Windows: nothing to forget */
}

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_win32_listen_not_on_this_platform;
#endif /* _WIN32 */
