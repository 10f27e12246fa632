/*
 * The measurement driver shared by bench/floor.c and bench/c2c.c, so both C
 * programs time round trips with exactly the same code. Each program supplies
 * a struct bench_ops (serve / connect / round trip / close) and calls
 * bench_main(). No ipcfast code here: floor.c stays independent of csrc/.
 *
 * Command lines (the Python harness, python/ipcfast/_bench/harness.py, drives these):
 *
 *   PROG serve ADDR [--cpu N]
 *       Listen on the socket path ADDR, print "READY <address>" once clients
 *       can connect, echo every request, exit when standard input closes.
 *
 *   PROG lat ADDR --sizes 16,1024 --iters 2000,2000 --warmup 200,200 [--cpu N]
 *       Latency: for each size, `warmup` round trips untimed, then `iters`
 *       timed ones. Prints one JSON line per size:
 *       {"size": 16, "ns": [per-round-trip nanoseconds, ...]}
 *
 *   PROG rate ADDR --size 16 [--warmup N] [--cpu N]
 *       Concurrency: connect, warm up, print "READY"; then for each line
 *       "START_NS END_NS" (CLOCK_MONOTONIC) read from standard input, do
 *       round trips from START until END and print
 *       {"count": C, "elapsed_ns": E}; exit at end of input.
 *
 * --cpu N pins the process (and the threads it starts later) to CPU N.
 */
#ifndef BENCH_DRIVER_H
#define BENCH_DRIVER_H

#define _GNU_SOURCE 1
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#endif

/* Bytes writable in front of the request payload passed to roundtrip(), so
 * a transport can put its header there and send header + payload at once. */
#define BENCH_HEADROOM 16

struct bench_ops {
    /* Runs a server on addr until standard input closes; returns the exit code. */
    int (*serve)(const char *addr);
    /* A connected client, or NULL (after printing why to stderr). */
    void *(*connect)(const char *addr);
    /* One round trip: send n bytes at req, receive the echo. 0 on success
     * (the echo has n bytes), -1 on failure (after printing why). */
    int (*roundtrip)(void *client, uint8_t *req, size_t n);
    void (*close)(void *client);
};

static int64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void bench_sleep_until(int64_t t_ns)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(t_ns / 1000000000);
    ts.tv_nsec = (long)(t_ns % 1000000000);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int bench_pin(int cpu)
{
#ifdef __linux__
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("sched_setaffinity");
        return -1;
    }
    return 0;
#else
    (void)cpu;
    fprintf(stderr, "--cpu is only supported on Linux\n");
    return -1;
#endif
}

/* Parses "a,b,c" into at most max longs; returns the count (-1 on error). */
static int bench_parse_list(const char *text, long *out, int max)
{
    int count = 0;
    const char *p = text;

    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);

        if (end == p || count == max || v < 0)
            return -1;
        out[count++] = v;
        if (*end == ',')
            end++;
        else if (*end != '\0')
            return -1;
        p = end;
    }
    return count;
}

/* A request buffer of n bytes with BENCH_HEADROOM writable bytes in front. */
static uint8_t *bench_request(size_t n, uint8_t **block)
{
    size_t i;

    *block = malloc(BENCH_HEADROOM + n + 1);
    if (*block == NULL)
        return NULL;
    for (i = 0; i < n; i++)
        (*block)[BENCH_HEADROOM + i] = (uint8_t)('a' + i % 26);
    return *block + BENCH_HEADROOM;
}

static int bench_latency(const struct bench_ops *ops, const char *addr, const long *sizes,
                         const long *iters, const long *warmups, int count)
{
    void *client = ops->connect(addr);
    int s;

    if (client == NULL)
        return 1;
    for (s = 0; s < count; s++) {
        size_t n = (size_t)sizes[s];
        uint8_t *block;
        uint8_t *req = bench_request(n, &block);
        int64_t *ns = malloc(sizeof(int64_t) * (size_t)(iters[s] + 1));
        long i;

        if (req == NULL || ns == NULL) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        for (i = 0; i < warmups[s]; i++)
            if (ops->roundtrip(client, req, n) != 0)
                return 1;
        for (i = 0; i < iters[s]; i++) {
            int64_t t0 = bench_now_ns();

            if (ops->roundtrip(client, req, n) != 0)
                return 1;
            ns[i] = bench_now_ns() - t0;
        }
        printf("{\"size\": %lu, \"ns\": [", (unsigned long)n);
        for (i = 0; i < iters[s]; i++)
            printf(i ? ", %lld" : "%lld", (long long)ns[i]);
        printf("]}\n");
        fflush(stdout);
        free(ns);
        free(block);
    }
    ops->close(client);
    return 0;
}

static int bench_rate(const struct bench_ops *ops, const char *addr, size_t n, long warmup)
{
    void *client = ops->connect(addr);
    uint8_t *block;
    uint8_t *req;
    long long start_ns, end_ns, count;
    int64_t now = 0;
    char line[128];
    long i;

    if (client == NULL)
        return 1;
    req = bench_request(n, &block);
    if (req == NULL)
        return 1;
    for (i = 0; i < warmup; i++)
        if (ops->roundtrip(client, req, n) != 0)
            return 1;
    printf("READY\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (sscanf(line, "%lld %lld", &start_ns, &end_ns) != 2) {
            fprintf(stderr, "rate: expected \"START_NS END_NS\" on standard input\n");
            return 1;
        }
        count = 0;
        bench_sleep_until(start_ns);
        do {
            if (ops->roundtrip(client, req, n) != 0)
                return 1;
            count++;
            now = bench_now_ns();
        } while (now < end_ns);
        printf("{\"count\": %lld, \"elapsed_ns\": %lld}\n", count, (long long)(now - start_ns));
        fflush(stdout);
    }
    ops->close(client);
    free(block);
    return 0;
}

static int bench_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s serve ADDR [--cpu N]\n"
            "       %s lat ADDR --sizes S,.. --iters N,.. --warmup W,.. [--cpu N]\n"
            "       %s rate ADDR --size S [--warmup W] [--cpu N]\n",
            prog, prog, prog);
    return 2;
}

#define BENCH_MAX_SIZES 16

static int bench_main(int argc, char **argv, const struct bench_ops *ops)
{
    long sizes[BENCH_MAX_SIZES], iters[BENCH_MAX_SIZES], warmups[BENCH_MAX_SIZES];
    int nsizes = -1, niters = -1, nwarm = -1, cpu = -1, a;
    long size = 16, warmup = 100;
    const char *mode, *addr;

    if (argc < 3)
        return bench_usage(argv[0]);
    mode = argv[1];
    addr = argv[2];
    for (a = 3; a < argc; a++) {
        const char *opt = argv[a];
        const char *val = a + 1 < argc ? argv[a + 1] : NULL;

        if (val == NULL)
            return bench_usage(argv[0]);
        a++;
        if (strcmp(opt, "--cpu") == 0)
            cpu = atoi(val);
        else if (strcmp(opt, "--sizes") == 0)
            nsizes = bench_parse_list(val, sizes, BENCH_MAX_SIZES);
        else if (strcmp(opt, "--iters") == 0)
            niters = bench_parse_list(val, iters, BENCH_MAX_SIZES);
        else if (strcmp(opt, "--warmup") == 0) {
            nwarm = bench_parse_list(val, warmups, BENCH_MAX_SIZES);
            warmup = nwarm > 0 ? warmups[0] : warmup;
        } else if (strcmp(opt, "--size") == 0)
            size = atol(val);
        else
            return bench_usage(argv[0]);
    }
    if (cpu >= 0 && bench_pin(cpu) != 0)
        return 1;
    if (strcmp(mode, "serve") == 0)
        return ops->serve(addr);
    if (strcmp(mode, "lat") == 0) {
        if (nsizes <= 0 || niters != nsizes || nwarm != nsizes) {
            fprintf(stderr, "lat: --sizes, --iters and --warmup need the same number of values\n");
            return 2;
        }
        return bench_latency(ops, addr, sizes, iters, warmups, nsizes);
    }
    if (strcmp(mode, "rate") == 0)
        return bench_rate(ops, addr, (size_t)size, warmup);
    return bench_usage(argv[0]);
}

/* Blocks until standard input reaches end of file. */
static void bench_wait_stdin_eof(void)
{
    char buf[256];

    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);

        if (r == 0 || (r < 0 && errno != EINTR))
            return;
    }
}

#endif /* BENCH_DRIVER_H */
