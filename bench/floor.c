/*
 * The floor: the least a request/response round trip over a Unix-domain
 * stream socket costs. A minimal C ping-pong, independent of csrc/:
 *
 *   - AF_UNIX SOCK_STREAM, default socket options (no buffer sizes set);
 *   - each message is a 4-byte length (host byte order) then the payload;
 *   - blocking read/write loops: a message is read with as few read() calls
 *     as the kernel allows (into a buffer that holds the whole message) and
 *     written with one write() of header + payload;
 *   - the server echoes every request, one thread per connection.
 *
 * Build: cc -O2 -pthread bench/floor.c -o floor
 * Usage: see bench/bench_driver.h (serve / lat / rate modes).
 */
#include "bench_driver.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>

/* A growable message buffer: 4-byte length, then the payload. */
struct msgbuf {
    uint8_t *data;
    size_t capacity;
};

static int reserve(struct msgbuf *b, size_t total)
{
    if (total > b->capacity) {
        size_t cap = b->capacity ? b->capacity : 4096;
        uint8_t *p;

        while (cap < total)
            cap *= 2;
        p = realloc(b->data, cap);
        if (p == NULL)
            return -1;
        b->data = p;
        b->capacity = cap;
    }
    return 0;
}

/* Reads one message into b; returns its payload length, or -1 on end of
 * stream or error. Requests and responses strictly alternate, so a read
 * never returns bytes of the next message. */
static long read_message(int fd, struct msgbuf *b)
{
    size_t have = 0, need = 4;
    int header_known = 0;

    if (reserve(b, 4096) != 0)
        return -1;
    while (have < need) {
        ssize_t r = read(fd, b->data + have, b->capacity - have);

        if (r == 0)
            return -1;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        have += (size_t)r;
        if (!header_known && have >= 4) {
            uint32_t len;

            memcpy(&len, b->data, 4);
            need = 4 + (size_t)len;
            header_known = 1;
            if (reserve(b, need) != 0)
                return -1;
        }
    }
    return (long)(need - 4);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- server ------------------------------------------------------------ */

static void *echo_connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct msgbuf b = {NULL, 0};
    long n;

    while ((n = read_message(fd, &b)) >= 0)
        if (write_all(fd, b.data, 4 + (size_t)n) != 0)
            break;
    free(b.data);
    close(fd);
    return NULL;
}

static const char *served_path;

static void *stdin_watch(void *arg)
{
    (void)arg;
    bench_wait_stdin_eof();
    unlink(served_path);
    _exit(0);
    return NULL;
}

static int floor_serve(const char *addr)
{
    struct sockaddr_un sa;
    pthread_t watcher;
    int lfd;

    signal(SIGPIPE, SIG_IGN);
    if (strlen(addr) >= sizeof sa.sun_path) {
        fprintf(stderr, "socket path too long: %s\n", addr);
        return 1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, addr);
    unlink(addr);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 128) != 0) {
        perror("floor: socket/bind/listen");
        return 1;
    }
    served_path = addr;
    if (pthread_create(&watcher, NULL, stdin_watch, NULL) != 0)
        return 1;
    printf("READY %s\n", addr);
    fflush(stdout);
    for (;;) {
        pthread_t t;
        int fd = accept(lfd, NULL, NULL);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("floor: accept");
            return 1;
        }
        if (pthread_create(&t, NULL, echo_connection, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
}

/* ---- client ------------------------------------------------------------ */

struct floor_client {
    int fd;
    struct msgbuf in;
};

static void *floor_connect(const char *addr)
{
    struct sockaddr_un sa;
    struct floor_client *c = calloc(1, sizeof *c);

    if (c == NULL || strlen(addr) >= sizeof sa.sun_path)
        return NULL;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, addr);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("floor: connect");
        return NULL;
    }
    return c;
}

static int floor_roundtrip(void *client, uint8_t *req, size_t n)
{
    struct floor_client *c = client;
    uint32_t len = (uint32_t)n;
    long got;

    memcpy(req - 4, &len, 4);   /* BENCH_HEADROOM bytes are ours */
    if (write_all(c->fd, req - 4, 4 + n) != 0) {
        perror("floor: write");
        return -1;
    }
    got = read_message(c->fd, &c->in);
    if (got != (long)n) {
        fprintf(stderr, "floor: bad echo (%ld bytes for %lu)\n", got, (unsigned long)n);
        return -1;
    }
    return 0;
}

static void floor_close(void *client)
{
    struct floor_client *c = client;

    close(c->fd);
    free(c->in.data);
    free(c);
}

int main(int argc, char **argv)
{
    static const struct bench_ops ops = {floor_serve, floor_connect, floor_roundtrip, floor_close};

    return bench_main(argc, argv, &ops);
}
