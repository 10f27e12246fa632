/*
 * POSIX shared memory: a memfd region and futex waits (Linux); elsewhere
 * declined. Part of the POSIX platform (ipc_posix.c).
 */
#if !defined(_WIN32)

#include "ipc_posix_internal.h"

/* ==========================================================================
 * Shared memory: memfd + futex (Linux); elsewhere not supported
 * ====================================================================== */

#if defined(__linux__) && defined(MFD_CLOEXEC) && defined(F_SEAL_SHRINK)
#define IPC_POSIX_SHM 1
#endif

void ipc_plat_handle_close(intptr_t handle)
{
    if (handle >= 0)
        ipc__posix_close_quietly((int)handle);
}

int64_t ipc_plat_now_us(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

uint32_t ipc_plat_word_load(const uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}

void ipc_plat_word_store(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

int ipc_plat_word_swap_if(uint32_t *word, uint32_t expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(word, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

/* The affinity mask where there is one (a pinned process counts the CPUs it
 * may use, not the machine's). */
int ipc_plat_cpus_available(void)
{
    long online;
#if defined(__linux__)
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

void ipc_plat_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The descriptor rides with the SHM_SETUP bytes (SCM_RIGHTS): no record of
 * handle values, and a server never imports one. */
size_t ipc_plat_shm_record_size(void)
{
    return 0;
}

void ipc_plat_shm_record(const ipc_plat_shm *shm, uint8_t *record)
{
    (void)shm, (void)record;
}

int ipc_plat_shm_import(ipc_plat_conn *conn, const uint8_t *record, size_t size, ipc_plat_shm *shm,
                        ipc_error *err)
{
    (void)conn, (void)record, (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_PROTOCOL, 0, "a region named by handle values (Windows) here");
}

#if defined(IPC_POSIX_SHM)

int ipc_plat_shm_supported(void)
{
    return 1;
}

int ipc_plat_current_cpu(void)
{
    return sched_getcpu();
}

/* Not FUTEX_WAIT_PRIVATE: the word is shared with another process. The
 * futex is the word itself: `wake` is empty here. */
void ipc_plat_word_wait(ipc_plat_wake *wake, uint32_t *word, uint32_t expected, int timeout_ms)
{
    struct timespec t;

    (void)wake;
    t.tv_sec = timeout_ms / 1000;
    t.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ms < 0 ? NULL : &t, NULL, 0);
}

void ipc_plat_word_wake(ipc_plat_wake *wake, uint32_t *word)
{
    (void)wake;
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    int fd = memfd_create("ipcfast-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    void *base;

    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    if (fd < 0)
        return ipc__posix_fail_errno(err, errno, "memfd_create", NULL);
    if (ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int e = errno;

        ipc__posix_close_quietly(fd);
        return ipc__posix_fail_errno(err, e, "sizing the shared-memory region", NULL);
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;

        ipc__posix_close_quietly(fd);
        return ipc__posix_fail_errno(err, e, "mmap of the shared-memory region", NULL);
    }
    shm->base = base;
    shm->size = size;
    shm->handle = fd;
    return IPC_OK;
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    int fd = (int)handle;
    struct stat st;
    int seals;
    void *base;

    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        ipc__posix_close_quietly(fd);
        return ipc__fail(err, IPC_E_PROTOCOL, 0,
                         "the region offered is not a memfd sealed against shrinking");
    }
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size < (uint64_t)size) {
        ipc__posix_close_quietly(fd);
        return ipc__fail(err, IPC_E_PROTOCOL, 0, "the region offered is smaller than announced");
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;

        ipc__posix_close_quietly(fd);
        return ipc__posix_fail_errno(err, e, "mmap of the offered region", NULL);
    }
    shm->base = base;
    shm->size = size;
    shm->handle = fd;
    return IPC_OK;
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    if (shm->base)
        munmap(shm->base, shm->size);
    if (shm->base && shm->handle >= 0)
        ipc__posix_close_quietly((int)shm->handle);
    shm->base = NULL;
    shm->size = 0;
    shm->handle = -1;
}

#else /* POSIX without memfd + futex (macOS, the BSDs): declined */

int ipc_plat_shm_supported(void)
{
    return 0;
}

int ipc_plat_current_cpu(void)
{
    return -1;
}

void ipc_plat_word_wait(ipc_plat_wake *wake, uint32_t *word, uint32_t expected, int timeout_ms)
{
    (void)wake, (void)word, (void)expected;
    ipc_plat_sleep_ms(timeout_ms < 0 ? 1 : timeout_ms);
}

void ipc_plat_word_wake(ipc_plat_wake *wake, uint32_t *word)
{
    (void)wake, (void)word;
}

int ipc_plat_shm_create(ipc_plat_shm *shm, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on this platform");
}

int ipc_plat_shm_map(ipc_plat_shm *shm, intptr_t handle, size_t size, ipc_error *err)
{
    (void)size;
    memset(shm, 0, sizeof *shm);
    shm->handle = -1;
    ipc__posix_close_quietly((int)handle);
    return ipc__fail(err, IPC_E_SYSTEM, 0, "shared memory is not supported on this platform");
}

void ipc_plat_shm_release(ipc_plat_shm *shm)
{
    shm->base = NULL;
    shm->handle = -1;
}

#endif /* IPC_POSIX_SHM */

#else
/* ISO C wants at least one declaration per file. */
typedef int ipc_posix_shm_not_on_this_platform;
#endif /* !_WIN32 */
