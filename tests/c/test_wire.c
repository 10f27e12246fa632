/*
 * C tests of the wire: size limits, wrong handshakes, versions, and (POSIX) raw
 * sockets against the server.
 */
#include "t_harness.h"

void test_too_large_response(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_client_t *small, *other;
    ipc_client_options co;
    ipc_server_options so;
    char *message;
    ctx_init(&ctx);

    /* response above the client's max_message */
    make_name(name, sizeof name, "bigresp");
    server = open_server(name, NULL, cmd_handler, &ctx);
    ipc_client_options_init(&co);
    co.max_message = 1024;
    small = server ? open_client(name, &co, 5000) : NULL;
    if (small) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        CHECK_RC(ipc_client_request(small, "big:1024", 8, &resp, &resp_size, 5000, &err), IPC_OK,
                 &err);
        CHECK(resp_size == 1024);
        ipc_error_clear(&err);
        message = expect_failure(small, "big:1025", 8, 5000, IPC_E_TOO_LARGE);
        free(message);
        message = expect_failure(small, "again", 5, 5000, IPC_E_CLOSED);
        free(message);
        ipc_client_close(small);
        other = open_client(name, NULL, 5000);
        if (other) {
            const uint8_t *r;
            size_t rs;
            CHECK_RC(ipc_client_request(other, "big:200000", 10, &r, &rs, 5000, &err), IPC_OK,
                     &err);
            CHECK(rs == 200000 && r[0] == 'B' && r[199999] == 'B');
            ipc_error_clear(&err);
            ipc_client_close(other);
        }
    }
    ipc_server_stop(server);

    /* response above the server's max_message: not sent; ipc_call_respond
     * returns IPC_E_TOO_LARGE and the client gets an ERROR packet that the
     * core marks as "too large", so it reports IPC_E_TOO_LARGE (and, like
     * every TOO_LARGE, closes its connection) */
    make_name(name, sizeof name, "bigresp2");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    server = open_server(name, &so, cmd_handler, &ctx);
    other = server ? open_client(name, NULL, 5000) : NULL;
    if (other) {
        {
            const uint8_t *r;
            size_t rs;
            ipc_error e = {0, 0, NULL};
            CHECK_RC(ipc_client_request(other, "big:4096", 8, &r, &rs, 5000, &e), IPC_OK, &e);
            CHECK(rs == 4096); /* exactly the limit is fine */
            ipc_error_clear(&e);
        }
        message = expect_failure(other, "big:4097", 8, 5000, IPC_E_TOO_LARGE);
        CHECK(message && strstr(message, "4097") && strstr(message, "4096"));
        free(message);
        CHECK(ctx_wait_equal(&ctx, &ctx.last_respond_rc, IPC_E_TOO_LARGE, 3000));
        ipc_client_close(other);
        other = open_client(name, NULL, 5000);
        if (other) {
            expect_text(other, "usable", "usable");
            ipc_client_close(other);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

void test_too_large_request(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_t *client;
    unsigned char *data;
    size_t big = 1024 * 1024;
    ctx_init(&ctx);
    make_name(name, sizeof name, "bigreq");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    server = open_server(name, &so, cmd_handler, &ctx);
    data = (unsigned char *)malloc(big);
    memset(data, 'r', big);
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        long long t0;
        int rc;
        expect_response(client, data, 4096, data, 4096); /* exactly the limit */
        t0 = t_now_ms();
        rc = ipc_client_request(client, data, 4097, &resp, &resp_size, 10000, &err);
        CHECK_MS(t_now_ms() - t0, 0, 3000);
        /* the server's "too large" ERROR packet becomes IPC_E_TOO_LARGE */
        CHECK_RC(rc, IPC_E_TOO_LARGE, &err);
        CHECK(err.message && strstr(err.message, "4097") && strstr(err.message, "4096"));
        ipc_error_clear(&err);
        /* the server closed this connection */
        rc = ipc_client_request(client, "x", 1, &resp, &resp_size, 3000, &err);
        CHECK_RC(rc, IPC_E_CLOSED, &err);
        ipc_error_clear(&err);
        ipc_client_close(client);
    }
    /* larger than the socket buffers: the writer must get an error, not hang or die */
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        const uint8_t *resp;
        size_t resp_size;
        ipc_error err = {0, 0, NULL};
        long long t0 = t_now_ms();
        int rc = ipc_client_request(client, data, big, &resp, &resp_size, 10000, &err);
        CHECK_MS(t_now_ms() - t0, 0, 3000);
        /* the write fails half-way, but the explanation is waiting to be read */
        CHECK_RC(rc, IPC_E_TOO_LARGE, &err);
        CHECK(err.message && strstr(err.message, "1048576") && strstr(err.message, "4096"));
        ipc_error_clear(&err);
        ipc_client_close(client);
    }
    /* the server still serves others */
    client = server ? open_client(name, NULL, 5000) : NULL;
    if (client) {
        expect_text(client, "hello", "hello");
        ipc_client_close(client);
    }
    free(data);
    ipc_server_stop(server);
    ctx_free(&ctx);
}

void test_wrong_handshake(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    ipc_client_options co;
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    long long t0;
    static const uint8_t other[8] = {0x00, 1, 2, 3, 4, 5, 6, 7};
    ctx_init(&ctx);
    make_name(name, sizeof name, "hs");
    server = open_server(name, NULL, cmd_handler, &ctx);
    if (server) {
        ipc_client_options_init(&co);
        memcpy(co.handshake, other, 8);
        t0 = t_now_ms();
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_HANDSHAKE, &err);
        CHECK_MS(t_now_ms() - t0, 0, 2000);
        CHECK(client == NULL && err.message != NULL);
        ipc_error_clear(&err);

        /* a handshake value must start with 0x00 (the foreign-client path is
         * checked on the wire in raw_wire) */
        co.handshake[0] = 0x01;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_INVALID, &err);
        CHECK(client == NULL);
        ipc_error_clear(&err);

        /* only the last byte differs */
        memcpy(co.handshake, DEFAULT_HS, 8);
        co.handshake[7] ^= 0x01;
        CHECK_RC(ipc_client_open(&client, name, &co, 3000, &err), IPC_E_HANDSHAKE, &err);
        ipc_error_clear(&err);

        /* the server keeps serving; rejected clients are not reported as disconnects */
        client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "fine", "fine");
            ipc_client_close(client);
        }
        CHECK(ctx_wait_for(&ctx, &ctx.disconnects, 1, 3000));
        t_sleep_ms(100);
        CHECK(ctx_get(&ctx, &ctx.disconnects) == 1);
        ipc_server_stop(server);
    }

    /* a keyed server and client meet */
    make_name(name, sizeof name, "hskey");
    ipc_server_options_init(&so);
    memcpy(so.handshake, other, 8);
    server = open_server(name, &so, cmd_handler, &ctx);
    if (server) {
        ipc_client_options_init(&co);
        memcpy(co.handshake, other, 8);
        client = open_client(name, &co, 5000);
        if (client) {
            expect_text(client, "keyed", "keyed");
            ipc_client_close(client);
        }
        /* and the default client does not get in */
        CHECK_RC(ipc_client_open(&client, name, NULL, 3000, &err), IPC_E_HANDSHAKE, &err);
        ipc_error_clear(&err);
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

void test_versions(void)
{
    static const int cases[][3] = {
        /* server version, client version, negotiated */
        {1, 1, 1}, {2, 1, 1}, {1, 3, 1}, {2, 2, 2}, {5, 3, 3},
    };
    size_t i;
    srv_ctx ctx;
    ctx_init(&ctx);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96];
        ipc_server_options so;
        ipc_client_options co;
        ipc_server_t *server;
        ipc_client_t *client;
        make_name(name, sizeof name, "ver");
        ipc_server_options_init(&so);
        so.version = (uint8_t)cases[i][0];
        ipc_client_options_init(&co);
        co.version = (uint8_t)cases[i][1];
        server = open_server(name, &so, cmd_handler, &ctx);
        client = server ? open_client(name, &co, 5000) : NULL;
        if (client) {
            CHECK(ipc_client_version(client) == cases[i][2]);
            expect_text(client, "v", "v");
            ipc_client_close(client);
        }
        ipc_server_stop(server);
    }
    ctx_free(&ctx);
}

/* ---- raw wire checks (POSIX: plain sockets against the server) -------- */

#ifndef _WIN32
static int raw_connect(const char *path)
{
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        close(fd);
        return -1;
    }
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static int raw_send(int fd, const void *data, size_t size)
{
    const char *p = (const char *)data;
    while (size > 0) {
        ssize_t n = send(fd, p, size, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        p += n;
        size -= (size_t)n;
    }
    return 1;
}

/* Reads until `size` bytes, EOF or timeout; returns bytes read, sets *eof. */
static size_t raw_recv(int fd, void *buf, size_t size, int timeout_ms, int *eof)
{
    size_t got = 0;
    long long deadline = t_now_ms() + timeout_ms;
    *eof = 0;
    while (got < size) {
        struct pollfd pfd;
        int left = (int)(deadline - t_now_ms());
        ssize_t n;
        if (left <= 0)
            break;
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (poll(&pfd, 1, left) <= 0)
            continue;
        n = recv(fd, (char *)buf + got, size - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *eof = 1;
            break;
        }
        got += (size_t)n;
    }
    return got;
}

/* Expects the connection to end with no (further) bytes within timeout_ms. */
static int raw_expect_eof(int fd, int timeout_ms)
{
    unsigned char b;
    int eof = 0;
    size_t n = raw_recv(fd, &b, 1, timeout_ms, &eof);
    return n == 0 && eof;
}

/* After a protocol error the server closes; it may first send one ERROR
 * packet that explains why. Accepts both, rejects anything else. */
static int raw_expect_close(int fd, int timeout_ms)
{
    unsigned char head[5];
    unsigned char body[512];
    int eof = 0;
    size_t n = raw_recv(fd, head, 5, timeout_ms, &eof);
    uint32_t len;
    if (n == 0)
        return eof;
    if (n != 5 || head[0] != 0x03)
        return 0;
    len = (uint32_t)head[1] | (uint32_t)head[2] << 8 | (uint32_t)head[3] << 16 |
          (uint32_t)head[4] << 24;
    if (len >= sizeof body)
        return 0;
    if (raw_recv(fd, body, len, timeout_ms, &eof) != len)
        return 0;
    return raw_expect_eof(fd, timeout_ms);
}

static int raw_handshake(int fd)
{
    unsigned char req[9], reply[9], expected[9];
    int eof;
    ipc_handshake_encode_request(req, DEFAULT_HS, 1);
    ipc_handshake_encode_reply(expected, DEFAULT_HS, 1);
    if (!raw_send(fd, req, 9))
        return 0;
    return raw_recv(fd, reply, 9, 3000, &eof) == 9 && memcmp(reply, expected, 9) == 0;
}

void test_raw_wire(void)
{
    char name[96];
    char path[512];
    srv_ctx ctx;
    ipc_server_t *server;
    ipc_server_options so;
    unsigned char buf[512];
    int fd, eof;
    size_t n;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "raw");
    ipc_server_options_init(&so);
    so.max_message = 4096;
    so.handshake_timeout_ms = 300;
    server = open_server(name, &so, cmd_handler, &ctx);
    if (!server) {
        ctx_free(&ctx);
        return;
    }
    snprintf(path, sizeof path, "%s", ipc_server_address(server));

    /* a foreign client gets exactly one 0xFF byte, then the end */
    fd = raw_connect(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        t0 = t_now_ms();
        raw_send(fd, "GET / HTTP/1.0\r\n\r\n", 18);
        n = raw_recv(fd, buf, 2, 3000, &eof);
        CHECK(n == 1 && buf[0] == 0xFF);
        CHECK(eof || raw_expect_eof(fd, 2000));
        CHECK_MS(t_now_ms() - t0, 0, 1000);
        close(fd);
    }
    /* one byte is enough to be refused */
    fd = raw_connect(path);
    if (fd >= 0) {
        raw_send(fd, "G", 1);
        n = raw_recv(fd, buf, 1, 2000, &eof);
        CHECK(n == 1 && buf[0] == 0xFF);
        close(fd);
    }
    /* a mismatching handshake: closed without a reply */
    fd = raw_connect(path);
    if (fd >= 0) {
        unsigned char req[9];
        ipc_handshake_encode_request(req, DEFAULT_HS, 1);
        req[7] ^= 1;
        raw_send(fd, req, 9);
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* version 0: closed without a reply */
    fd = raw_connect(path);
    if (fd >= 0) {
        unsigned char req[9];
        ipc_handshake_encode_request(req, DEFAULT_HS, 1);
        req[8] = 0;
        raw_send(fd, req, 9);
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* silence: dropped after the handshake timeout (300 ms here) */
    fd = raw_connect(path);
    if (fd >= 0) {
        t0 = t_now_ms();
        CHECK(raw_expect_eof(fd, 3000));
        CHECK_MS(t_now_ms() - t0, 200, 2000);
        close(fd);
    }
    /* a full exchange, byte by byte, short and extended headers */
    fd = raw_connect(path);
    if (fd >= 0) {
        static const unsigned char req1[] = {0x01, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
        static const unsigned char req2[] = {0x41, 0x01, 0x02, 0x00, 0x00, 0x00, 'h', 'i'};
        static const unsigned char resp1[] = {0x02, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
        size_t i;
        CHECK(raw_handshake(fd));
        for (i = 0; i < sizeof req1; i++) {
            raw_send(fd, req1 + i, 1); /* split writes: the server must reassemble */
            t_sleep_ms(2);
        }
        n = raw_recv(fd, buf, sizeof resp1, 3000, &eof);
        CHECK(n == sizeof resp1 && memcmp(buf, resp1, sizeof resp1) == 0);
        raw_send(fd, req2, sizeof req2);
        n = raw_recv(fd, buf, 7, 3000, &eof);
        CHECK(n == 7 && buf[0] == 0x02 && buf[1] == 2 && buf[2] == 0 && buf[3] == 0 &&
              buf[4] == 0 && buf[5] == 'h' && buf[6] == 'i');
        /* ERROR packet layout */
        raw_send(fd,
                 "\x01\x08\x00\x00\x00"
                 "fail:why",
                 13);
        n = raw_recv(fd, buf, 8, 3000, &eof);
        CHECK(n == 8 && memcmp(buf, "\x03\x03\x00\x00\x00why", 8) == 0);
        /* an unknown type closes the connection */
        raw_send(fd, "\x09\x00\x00\x00\x00", 5);
        CHECK(raw_expect_close(fd, 2000));
        close(fd);
    }
    /* reserved bit, bad extended versions, type 0, a RESPONSE sent to the
     * server, a node packet: closed */
    {
        static const char *const bad[] = {"\x81\x00\x00\x00\x00",     "\x41\x02\x00\x00\x00\x00",
                                          "\x41\x00\x00\x00\x00\x00", "\x00\x00\x00\x00\x00",
                                          "\x02\x00\x00\x00\x00",     "\x3f\x00\x00\x00\x00"};
        static const size_t bad_len[] = {5, 6, 6, 5, 5, 5};
        size_t i;
        for (i = 0; i < sizeof bad_len / sizeof bad_len[0]; i++) {
            fd = raw_connect(path);
            if (fd < 0)
                continue;
            CHECK(raw_handshake(fd));
            raw_send(fd, bad[i], bad_len[i]);
            if (!CHECK(raw_expect_close(fd, 2000)))
                note("      bad header case %lu", (unsigned long)i);
            close(fd);
        }
    }
    /* a request above max_message: an ERROR packet naming size and limit, then EOF */
    fd = raw_connect(path);
    if (fd >= 0) {
        CHECK(raw_handshake(fd));
        raw_send(fd, "\x01\x01\x10\x00\x00", 5); /* 4097 bytes announced, none sent */
        n = raw_recv(fd, buf, 5, 3000, &eof);
        CHECK(n == 5 && buf[0] == 0x03);
        if (n == 5) {
            uint32_t len = (uint32_t)buf[1] | (uint32_t)buf[2] << 8 | (uint32_t)buf[3] << 16 |
                           (uint32_t)buf[4] << 24;
            CHECK(len > 0 && len < sizeof buf);
            if (len > 0 && len < sizeof buf) {
                n = raw_recv(fd, buf, len, 3000, &eof);
                buf[n] = 0;
                CHECK(n == len);
                /* the "too large" marker of docs/protocol.md, then the sizes */
                CHECK(strncmp((char *)buf, "ipcfast: too large: ", 20) == 0);
                CHECK(strstr((char *)buf, "4097") != NULL && strstr((char *)buf, "4096") != NULL);
            }
        }
        CHECK(raw_expect_eof(fd, 2000));
        close(fd);
    }
    /* a client that vanishes mid-packet */
    fd = raw_connect(path);
    if (fd >= 0) {
        CHECK(raw_handshake(fd));
        raw_send(fd,
                 "\x01\x0a\x00\x00\x00"
                 "abc",
                 8);
        close(fd);
    }
    /* through all of that the server kept serving */
    {
        ipc_client_t *client = open_client(name, NULL, 5000);
        if (client) {
            expect_text(client, "survived", "survived");
            ipc_client_close(client);
        }
    }
    ipc_server_stop(server);
    ctx_free(&ctx);
}

/* ipc_server_stop returns promptly even when a peer never finishes the
 * handshake, or never reads the response it asked for. */
void test_stop_with_stuck_peers(void)
{
    char name[96];
    srv_ctx ctx;
    ipc_server_t *server;
    int silent, greedy;
    long long t0;
    ctx_init(&ctx);
    make_name(name, sizeof name, "stuck");
    server = open_server(name, NULL, cmd_handler, &ctx); /* handshake timeout 5 s */
    if (!server) {
        ctx_free(&ctx);
        return;
    }
    silent = raw_connect(ipc_server_address(server));
    greedy = raw_connect(ipc_server_address(server));
    CHECK(silent >= 0 && greedy >= 0);
    if (greedy >= 0) {
        CHECK(raw_handshake(greedy));
        raw_send(greedy,
                 "\x01\x0b\x00\x00\x00"
                 "big:9000000",
                 16); /* then never read */
        CHECK(ctx_wait_for(&ctx, &ctx.requests, 1, 5000));
    }
    t_sleep_ms(200);
    t0 = t_now_ms();
    ipc_server_stop(server);
    CHECK_MS(t_now_ms() - t0, 0, 2500);
    CHECK(ctx_get(&ctx, &ctx.last_respond_rc) == IPC_E_CLOSED);
    if (silent >= 0)
        close(silent);
    if (greedy >= 0)
        close(greedy);
    ctx_free(&ctx);
}
#endif /* !_WIN32 */
