/*  malloc_count: an LD_PRELOAD allocation counter for the benchmark.

    Counts malloc, calloc, realloc, aligned_alloc, posix_memalign and
    memalign calls by call site (the caller's return address), with the
    calling thread (main thread or another). SIGUSR1 resets the counters
    (start of the measured phase), SIGUSR2 writes them to the file named by
    XPL_MALLOC_OUT (or stderr): one line per call site, resolved with dladdr
    to library and symbol. bench_xplain --preload uses it to check that the
    daemon's hot path allocates nothing per message beyond what ZeroMQ
    itself allocates for every message it receives or sends.  */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SITES 4096

typedef struct {
    uintptr_t addr;
    uint64_t main_calls, other_calls;
} site_t;

static site_t s_sites[SITES];
static void *(*s_malloc)(size_t);
static void *(*s_calloc)(size_t, size_t);
static void *(*s_realloc)(void *, size_t);
static void *(*s_aligned_alloc)(size_t, size_t);
static int (*s_posix_memalign)(void **, size_t, size_t);
static void *(*s_memalign)(size_t, size_t);
static void (*s_free)(void *);
static int s_pid;
static __thread int t_in;   /* inside dlsym or our own bookkeeping */

/* dlsym may allocate before the real functions are known. */
static char s_boot[65536];
static size_t s_boot_used;

static void *
s_boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (s_boot_used + n > sizeof s_boot)
        return NULL;
    void *p = s_boot + s_boot_used;
    s_boot_used += n;
    return p;
}

static int
s_is_boot(const void *p)
{
    return (const char *)p >= s_boot && (const char *)p < s_boot + sizeof s_boot;
}

static void
s_count(uintptr_t ra)
{
    int is_main = s_pid && (int)syscall(SYS_gettid) == s_pid;
    uint32_t h = (uint32_t)((ra >> 4) * 2654435761u) % SITES;
    for (int probe = 0; probe < SITES; probe++) {
        site_t *st = &s_sites[(h + (uint32_t)probe) % SITES];
        uintptr_t cur = __atomic_load_n(&st->addr, __ATOMIC_RELAXED);
        if (cur == 0) {
            uintptr_t zero = 0;
            if (!__atomic_compare_exchange_n(&st->addr, &zero, ra, false, __ATOMIC_RELAXED,
                                             __ATOMIC_RELAXED))
                cur = zero;
            else
                cur = ra;
        }
        if (cur == ra) {
            __atomic_fetch_add(is_main ? &st->main_calls : &st->other_calls, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

static void
s_reset(int sig)
{
    (void)sig;
    for (int k = 0; k < SITES; k++) {
        __atomic_store_n(&s_sites[k].main_calls, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s_sites[k].other_calls, 0, __ATOMIC_RELAXED);
    }
}

static void
s_dump(int sig)
{
    (void)sig;
    /* Not async-signal-safe in general; good enough for a benchmark
       probe of a process that is about to be stopped. */
    t_in = 1;
    const char *path = getenv("XPL_MALLOC_OUT");
    FILE *f = path ? fopen(path, "w") : stderr;
    if (!f)
        f = stderr;
    for (int k = 0; k < SITES; k++) {
        site_t *st = &s_sites[k];
        if (!st->addr || (!st->main_calls && !st->other_calls))
            continue;
        Dl_info di;
        memset(&di, 0, sizeof di);
        const char *lib = "?";
        if (dladdr((void *)st->addr, &di) && di.dli_fname && di.dli_fname[0])
            lib = di.dli_fname;
        /* library path, offset from its load address (for addr2line) */
        fprintf(f, "site %s 0x%lx main %llu other %llu\n", lib,
                (unsigned long)(st->addr - (uintptr_t)di.dli_fbase),
                (unsigned long long)st->main_calls, (unsigned long long)st->other_calls);
    }
    if (f != stderr)
        fclose(f);
    t_in = 0;
}

__attribute__((constructor)) static void
s_init(void)
{
    s_pid = getpid();
    t_in = 1;
    s_malloc = dlsym(RTLD_NEXT, "malloc");
    s_calloc = dlsym(RTLD_NEXT, "calloc");
    s_realloc = dlsym(RTLD_NEXT, "realloc");
    s_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    s_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    s_memalign = dlsym(RTLD_NEXT, "memalign");
    s_free = dlsym(RTLD_NEXT, "free");
    t_in = 0;
    signal(SIGUSR1, s_reset);
    signal(SIGUSR2, s_dump);
}

#define RA() ((uintptr_t)__builtin_extract_return_addr(__builtin_return_address(0)))

void *
malloc(size_t n)
{
    if (!s_malloc)
        return s_boot_alloc(n);
    if (!t_in)
        s_count(RA());
    return s_malloc(n);
}

void *
calloc(size_t a, size_t b)
{
    if (!s_calloc)
        return s_boot_alloc(a * b);   /* static storage is zeroed */
    if (!t_in)
        s_count(RA());
    return s_calloc(a, b);
}

void *
realloc(void *p, size_t n)
{
    if (s_is_boot(p)) {
        void *q = malloc(n);
        if (q && p)
            memcpy(q, p, n);
        return q;
    }
    if (!t_in)
        s_count(RA());
    return s_realloc(p, n);
}

void
free(void *p)
{
    if (!p || s_is_boot(p) || !s_free)
        return;
    s_free(p);
}

void *
aligned_alloc(size_t al, size_t n)
{
    if (!t_in)
        s_count(RA());
    return s_aligned_alloc(al, n);
}

int
posix_memalign(void **p, size_t al, size_t n)
{
    if (!t_in)
        s_count(RA());
    return s_posix_memalign(p, al, n);
}

void *
memalign(size_t al, size_t n)
{
    if (!t_in)
        s_count(RA());
    return s_memalign(al, n);
}
