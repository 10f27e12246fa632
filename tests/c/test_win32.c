/*
 * C tests of the Windows issue, run everywhere: idle connections across wake-ups,
 * cancel races under load, the pipe DACL (the socket mode on POSIX).
 */
#include "t_harness.h"

/* ======================================================================
 * Windows issue: wake-ups, cancel races, pipe ACLs (the two-process test
 * of the same issue is in test_process.c)
 *
 * These run everywhere (natively under the sanitizers, and as a Windows
 * program under wine), except the DACL read-back, which has a POSIX
 * counterpart checking the socket's file mode instead.
 * ====================================================================== */

/* Idle connections are left alone by the server's read wake-ups (at least
 * every IPC_WAKE_INTERVAL_MS; on Windows each one is a CancelIoEx of the
 * pending overlapped ReadFile and a new ReadFile): after more than 3 s of
 * silence, i.e. several wake-ups, every client is still served with the
 * right answers, nobody was dropped, and the server logged nothing at
 * WARNING or above. */
void test_idle_connections_survive_wakeups(void)
{
    enum { N = 5, ROUNDS = 4 };
    static const size_t sizes[ROUNDS] = {1, 777, 70000, 12}; /* 70000 > the 64 KiB pipe buffer */
    char name[96];
    srv_ctx ctx;
    log_tally tally;
    ipc_server_t *server;
    ipc_client_t *clients[N];
    unsigned char *req = (unsigned char *)malloc(70000 + 64);
    unsigned char *expected = (unsigned char *)malloc(70000 + 64);
    int i, round, seq = 0, ok = 0, sent = 0;
    long long t0;
    ctx_init(&ctx);
    tally_begin(&tally);
    make_name(name, sizeof name, "idle");
    server = req && expected ? open_server(name, NULL, xor_handler, &ctx) : NULL;
    for (i = 0; i < N; i++)
        clients[i] = server ? open_client(name, NULL, 5000) : NULL;
    /* half of them talk first, the others go idle right after the handshake */
    for (i = 0; i < N; i += 2) {
        int wrong;
        size_t size;
        if (!clients[i])
            continue;
        size = make_unique_request(req, expected, 100, "idle", i, seq++);
        sent++;
        if (CHECK_RC(unique_round_trip(clients[i], req, size, expected, 10000, "idle", &wrong),
                     IPC_OK, NULL) &&
            CHECK(!wrong))
            ok++;
    }
    t0 = t_now_ms();
    t_sleep_ms(3300);                            /* 6 wake-ups of every connection thread */
    CHECK(ctx_get(&ctx, &ctx.disconnects) == 0); /* nobody was dropped meanwhile */
    for (round = 0; round < ROUNDS; round++) {
        for (i = 0; i < N; i++) {
            int rc, wrong;
            size_t size;
            if (!clients[i])
                continue;
            size = make_unique_request(req, expected, sizes[round], "idle", i, seq++);
            sent++;
            rc = unique_round_trip(clients[i], req, size, expected, 10000, "idle", &wrong);
            if (CHECK_RC(rc, IPC_OK, NULL) && CHECK(!wrong))
                ok++;
        }
        if (round == 1)
            t_sleep_ms(1100); /* idle again, now mid-conversation */
    }
    note("      %d requests answered after %lld ms of idle connections", ok, t_now_ms() - t0);
    CHECK(ok == sent);
    CHECK(ok == (N + 1) / 2 + N * ROUNDS);
    CHECK(ctx_get(&ctx, &ctx.requests) == sent);
    for (i = 0; i < N; i++)
        ipc_client_close(clients[i]);
    if (server)
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, N, 5000));
    ipc_server_stop(server);
    CHECK(ctx_get(&ctx, &ctx.bad_disconnect_args) == 0);
    tally_end_expect_quiet(&tally);
    free(req);
    free(expected);
    ctx_free(&ctx);
}

typedef struct cancel_race_arg {
    const char *name;
    int index;
    long long end_at;
    int answered;      /* exactly right */
    int failed;        /* an error, or a wrong answer */
    int near_boundary; /* requests sent 480..520 ms after the previous answer */
} cancel_race_arg;

static void cancel_race_main(void *param)
{
    cancel_race_arg *arg = (cancel_race_arg *)param;
    enum { MAX_SIZE = 66000 };
    unsigned char *req = (unsigned char *)malloc(MAX_SIZE);
    unsigned char *expected = (unsigned char *)malloc(MAX_SIZE);
    unsigned rng = 0x9E3779B9u ^ (unsigned)(arg->index * 7919 + 13);
    ipc_client_t *client = req && expected ? open_client(arg->name, NULL, 10000) : NULL;
    int seq = 0, paused_near = 0;
    if (!client)
        arg->failed++;
    while (client && !arg->failed && t_now_ms() < arg->end_at) {
        int burst = 1 + (int)(next_random(&rng) % 10);
        int b;
        unsigned pause;
        for (b = 0; b < burst && !arg->failed; b++) {
            unsigned r = next_random(&rng);
            /* mostly small; every ~8th above the 64 KiB pipe buffer
             * (ERROR_MORE_DATA on Windows) */
            size_t want = r % 8 == 0 ? 65537 + r % 400 : 16 + r % 600;
            size_t size = make_unique_request(req, expected, want, "race", arg->index, seq++);
            int wrong;
            int rc = unique_round_trip(client, req, size, expected, 10000, "cancel_race", &wrong);
            if (rc != IPC_OK || wrong) {
                if (rc != IPC_OK)
                    note("      cancel_race client %d: request %d failed with %s", arg->index,
                         seq - 1, ipc_result_name(rc));
                arg->failed++;
                break;
            }
            arg->answered++;
            if (paused_near)
                arg->near_boundary++;
            paused_near = 0;
        }
        /* Three pauses in four land on the server's 500 ms wake-up (its read
         * began when it sent our last answer), the rest are short. */
        pause = next_random(&rng);
        if (pause % 4 != 0) {
            t_sleep_ms(480 + (int)(pause % 41));
            paused_near = 1;
        } else {
            t_sleep_ms((int)(pause % 6));
        }
    }
    ipc_client_close(client);
    free(req);
    free(expected);
}

/* Requests arriving right when the server's read wakes up (Windows: the
 * ReadFile is being cancelled and re-issued; data that completed in the
 * race must be kept, not dropped or read twice): 8 clients, bursts and
 * pauses of 480..520 ms, for about 5 s. Every answer must be exactly the
 * one for its request. */
void test_cancel_race_under_load(void)
{
    enum { N = 8, RUN_MS = 5000 };
    char name[96];
    srv_ctx ctx;
    log_tally tally;
    ipc_server_t *server;
    cancel_race_arg args[N];
    t_thread *threads[N];
    int i, answered = 0, failed = 0, near_wakeup = 0;
    long long t0 = t_now_ms();
    ctx_init(&ctx);
    tally_begin(&tally);
    make_name(name, sizeof name, "cancelrace");
    server = open_server(name, NULL, xor_handler, &ctx);
    if (server) {
        for (i = 0; i < N; i++) {
            memset(&args[i], 0, sizeof args[i]);
            args[i].name = name;
            args[i].index = i;
            args[i].end_at = t0 + RUN_MS;
            threads[i] = t_thread_start(cancel_race_main, &args[i]);
            CHECK(threads[i] != NULL);
        }
        for (i = 0; i < N; i++) {
            t_thread_join(threads[i]);
            answered += args[i].answered;
            failed += args[i].failed;
            near_wakeup += args[i].near_boundary;
            CHECK(args[i].failed == 0);
            CHECK(args[i].answered > 0);
        }
        note("      %d exact responses (%d of them to requests sent 480..520 ms after the "
             "previous answer), %d failures, in %lld ms",
             answered, near_wakeup, failed, t_now_ms() - t0);
        CHECK(failed == 0);
        CHECK(near_wakeup >= N * 4);
        /* the server handled each request exactly once */
        CHECK(ctx_get(&ctx, &ctx.requests) == answered);
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, N, 5000));
        ipc_server_stop(server);
    }
    tally_end_expect_quiet(&tally);
    ctx_free(&ctx);
}

#if defined(_WIN32)
/* The DACL of the pipe at `address`, read back through a client handle
 * opened with READ_CONTROL only. Must hold exactly one ACE: access-allowed,
 * FILE_ALL_ACCESS, for `expected_sid`. Opening the pipe counts as a client
 * that connects and leaves without a handshake; the server takes it in its
 * stride. */
static void check_pipe_dacl(const char *address, PSID expected_sid, const char *expected_text)
{
    wchar_t wide[400];
    HANDLE pipe = INVALID_HANDLE_VALUE;
    PACL dacl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    ACL_SIZE_INFORMATION info;
    long long deadline = t_now_ms() + 5000;
    DWORD rc, e = 0;
    if (!CHECK(MultiByteToWideChar(CP_UTF8, 0, address, -1, wide, 400) > 0))
        return;
    for (;;) {
        pipe = CreateFileW(wide, READ_CONTROL, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (pipe != INVALID_HANDLE_VALUE)
            break;
        e = GetLastError();
        if (e != ERROR_PIPE_BUSY || t_now_ms() > deadline)
            break;
        WaitNamedPipeW(wide, 100);
    }
    if (!CHECK(pipe != INVALID_HANDLE_VALUE)) {
        note("      CreateFile(%s, READ_CONTROL) failed with error %lu", address, (unsigned long)e);
        return;
    }
    rc = GetSecurityInfo(pipe, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, &dacl, NULL,
                         &sd);
    if (!CHECK(rc == ERROR_SUCCESS))
        note("      GetSecurityInfo failed with error %lu", (unsigned long)rc);
    /* a NULL DACL would grant everyone everything */
    if (rc == ERROR_SUCCESS && CHECK(dacl != NULL) &&
        CHECK(GetAclInformation(dacl, &info, sizeof info, AclSizeInformation))) {
        void *ace = NULL;
        if (!CHECK(info.AceCount == 1))
            note("      the pipe's DACL has %lu ACEs, expected 1", (unsigned long)info.AceCount);
        if (info.AceCount >= 1 && CHECK(GetAce(dacl, 0, &ace) && ace != NULL)) {
            ACE_HEADER *header = (ACE_HEADER *)ace;
            if (CHECK(header->AceType == ACCESS_ALLOWED_ACE_TYPE)) {
                ACCESS_ALLOWED_ACE *allowed = (ACCESS_ALLOWED_ACE *)ace;
                PSID sid = (PSID)&allowed->SidStart;
                char *text = NULL;
                CHECK(allowed->Mask == FILE_ALL_ACCESS);
                if (!CHECK(IsValidSid(sid) && EqualSid(sid, expected_sid))) {
                    if (ConvertSidToStringSidA(sid, &text)) {
                        note("      the ACE is for %s, expected %s", text, expected_text);
                        LocalFree(text);
                    }
                }
                if (allowed->Mask != FILE_ALL_ACCESS)
                    note("      the ACE grants 0x%08lx, expected FILE_ALL_ACCESS 0x%08lx",
                         (unsigned long)allowed->Mask, (unsigned long)FILE_ALL_ACCESS);
            }
        }
    }
    if (sd)
        LocalFree(sd);
    CloseHandle(pipe);
}

/* This process's user SID (from its token), malloc'ed inside TOKEN_USER. */
static TOKEN_USER *current_user(void)
{
    HANDLE token = NULL;
    DWORD size = 0;
    TOKEN_USER *user = NULL;
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token))
        return NULL;
    GetTokenInformation(token, TokenUser, NULL, 0, &size);
    if (size)
        user = (TOKEN_USER *)malloc(size);
    if (user && !GetTokenInformation(token, TokenUser, user, size, &size)) {
        free(user);
        user = NULL;
    }
    CloseHandle(token);
    return user;
}
#endif

/* The access option, checked on what the OS holds. Windows: the named
 * pipe's DACL is read back. Wine neither enforces pipe DACLs nor runs
 * anything as a second user, so refusing another user cannot be observed
 * there: reading the ACL back is how it is checked. POSIX: the socket file's
 * mode, 0600 for IPC_ACCESS_USER and 0666 for IPC_ACCESS_WORLD (plain names,
 * in the private directory; test_path_names covers path names). */
void test_windows_acl_readback(void)
{
    int world;
    srv_ctx ctx;
#if defined(_WIN32)
    TOKEN_USER *user = current_user();
    SID_IDENTIFIER_AUTHORITY world_authority = {SECURITY_WORLD_SID_AUTHORITY};
    PSID world_sid = NULL;
    char *user_text = NULL;
    if (!CHECK(user != NULL) ||
        !CHECK(AllocateAndInitializeSid(&world_authority, 1, SECURITY_WORLD_RID, 0, 0, 0, 0, 0, 0,
                                        0, &world_sid))) {
        free(user);
        return;
    }
    CHECK(!EqualSid(user->User.Sid, world_sid)); /* else the check below proves nothing */
    if (ConvertSidToStringSidA(user->User.Sid, &user_text))
        note("      current user %s%s", user_text, t_under_wine() ? " (wine)" : "");
#endif
    ctx_init(&ctx);
    for (world = 0; world < 2; world++) {
        char name[96];
        ipc_server_options so;
        ipc_server_t *server;
        make_name(name, sizeof name, world ? "aclworld" : "acluser");
        ipc_server_options_init(&so);
        so.access = world ? IPC_ACCESS_WORLD : IPC_ACCESS_USER;
        server = open_server(name, &so, cmd_handler, &ctx);
        if (!server)
            continue;
#if defined(_WIN32)
        check_pipe_dacl(ipc_server_address(server), world ? world_sid : user->User.Sid,
                        world ? "S-1-1-0 (World)" : (user_text ? user_text : "the user"));
#else
        {
            struct stat st;
            const char *path = ipc_server_address(server);
            if (CHECK(stat(path, &st) == 0)) {
                CHECK(S_ISSOCK(st.st_mode));
                if (!CHECK((int)(st.st_mode & 07777) == (world ? 0666 : 0600)))
                    note("      %s has mode %03o", path, (unsigned)(st.st_mode & 07777));
            }
        }
#endif
        /* and the server still serves */
        {
            ipc_client_t *client = open_client(name, NULL, 5000);
            if (client) {
                expect_text(client, world ? "world" : "user", world ? "world" : "user");
                ipc_client_close(client);
            }
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
#if defined(_WIN32)
    if (user_text)
        LocalFree(user_text);
    FreeSid(world_sid);
    free(user);
#endif
}
