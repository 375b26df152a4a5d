/*  bench_xplain: transport and daemon benchmark of ISSUE 7.

    One run measures, side by side and in rotation, for each workload:
      sink     a null sink that receives the same messages and decodes only
               the msgpack header (the transport limit);
      xplaind  the real daemon (rollout, grad_rollout, first_layer,
               attn_mean, diag) from publish to published explanation,
               counted by a C subscriber of xpl/;
      python   bench/py_consumer.py: pyzmq + msgpack + numpy computing the
               same five methods per message.
    The publisher is this process: pre-encoded messages (seq, ts and ids
    patched in place), an XPUB socket with ZMQ_XPUB_NODROP so that at "max
    rate" it is throttled by the consumer instead of dropping, or paced at
    a given trade rate for the latency runs. `ts` is the wall clock at send
    time; consumers subtract it from their own wall clock on receipt (same
    machine, same clock).

    Subcommands:
      bench_xplain run [options]        the driver (see --help)
      bench_xplain sink EP HWM          null sink (spawned by run)
      bench_xplain sub EP HWM           xpl/ subscriber (spawned by run)

    Protocol between driver and consumers: warm-up messages carry ids below
    BASE; the consumer prints READY on its first message; measured trades
    have ids from BASE; a message with ids from END ends the run; the
    consumer prints one RESULT line.  */
#define _GNU_SOURCE
#include "bench_common.h"
#include "mpr.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#ifndef XPL_SOURCE_DIR
#define XPL_SOURCE_DIR "."
#endif

extern char **environ;

#define BASE ((uint64_t)1 << 40)
#define END_ID ((uint64_t)1 << 62)

/* ------------------------------------------------------------------ */
/* Latency samples                                                     */

typedef struct {
    int64_t *v;
    size_t n, cap;
} lat_t;

static void
lat_add(lat_t *l, int64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1 << 16;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            exit(2);
    }
    l->v[l->n++] = ns;
}

static int
s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double
lat_pct_us(const lat_t *l, double q)
{
    if (!l->n)
        return 0;
    size_t k = (size_t)(q * (double)(l->n - 1) + 0.5);
    return (double)l->v[k] / 1e3;
}

/* ------------------------------------------------------------------ */
/* Consumers: null sink and xpl/ subscriber                            */

/* Walk the top-level map of a body: the sink reads "ts" and the first
   of "ids" (and their count); the subscriber "ts" and "id". Bins and
   everything else are skipped by their headers, never read. */
static int
s_header(const void *body, size_t len, int64_t *ts, uint64_t *id0, uint32_t *count)
{
    mpr_t r;
    mpr_obj_t o, k;
    mpr_init(&r, body, len);
    if (mpr_next(&r, &o) || o.type != MPR_MAP)
        return -1;
    *count = 1;
    const uint32_t pairs = o.v.count;
    for (uint32_t p = 0; p < pairs; p++) {
        if (mpr_next(&r, &k) || k.type != MPR_STR)
            return -1;
        if (mpr_str_eq(&k, "ts")) {
            if (mpr_next(&r, &o))
                return -1;
            *ts = o.type == MPR_INT ? o.v.i : (int64_t)o.v.u;
        } else if (mpr_str_eq(&k, "id")) {
            if (mpr_next(&r, &o))
                return -1;
            *id0 = o.v.u;
        } else if (mpr_str_eq(&k, "ids")) {
            mpr_obj_t a;
            if (mpr_next(&r, &a) || a.type != MPR_ARRAY || a.v.count == 0)
                return -1;
            *count = a.v.count;
            for (uint32_t b = 0; b < a.v.count; b++) {
                if (mpr_next(&r, &o))
                    return -1;
                if (b == 0)
                    *id0 = o.v.u;
            }
        } else if (mpr_skip(&r, 32)) {
            return -1;
        }
    }
    return 0;
}

static int
cmd_consume(int argc, char **argv, bool xpl)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_xplain %s EP HWM\n", xpl ? "sub" : "sink");
        return 2;
    }
    if (!getenv("XPL_SINK_PLAIN_MALLOC")) {
        /* The transport limit: keep glibc from giving every received
           message's pages back to the kernel and faulting them in again
           (ZeroMQ allocates each message; 256 KiB is above the default
           mmap threshold and trim threshold). */
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_SUB);
    int hwm = atoi(argv[1]), linger = 0, tmo = 60000;
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, xpl ? "xpl/" : "attn/", xpl ? 4 : 5);
    if (zmq_connect(s, argv[0])) {
        fprintf(stderr, "connect %s: %s\n", argv[0], zmq_strerror(errno));
        return 1;
    }
    bool ready = false, timed = false;
    uint64_t count = 0, bad = 0;
    int64_t first = 0, last = 0;
    lat_t lat = {0};
    zmq_msg_t topic, body;
    zmq_msg_init(&topic);
    zmq_msg_init(&body);
    for (;;) {
        if (zmq_msg_recv(&topic, s, 0) < 0) {
            timed = true;
            break;
        }
        if (!zmq_msg_more(&topic) || zmq_msg_recv(&body, s, 0) < 0) {
            bad++;
            continue;
        }
        int64_t now = now_wall(), ts = 0;
        uint64_t id0 = 0;
        uint32_t cnt = 1;
        if (s_header(zmq_msg_data(&body), zmq_msg_size(&body), &ts, &id0, &cnt)) {
            bad++;
            continue;
        }
        if (!ready) {
            printf("READY\n");
            fflush(stdout);
            ready = true;
        }
        if (id0 >= END_ID)
            break;
        if (id0 < BASE)
            continue;
        if (!count) {
            first = now;
            tmo = 5000;
            zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        }
        last = now;
        count += cnt;
        lat_add(&lat, now - ts);
    }
    qsort(lat.v, lat.n, sizeof *lat.v, s_cmp_i64);
    printf("RESULT count=%" PRIu64 " first_ns=%" PRId64 " last_ns=%" PRId64
           " p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f bad=%" PRIu64 " timeout=%d\n",
           count, first, last, lat_pct_us(&lat, 0.5), lat_pct_us(&lat, 0.99),
           lat_pct_us(&lat, 0.999), lat.n ? (double)lat.v[lat.n - 1] / 1e3 : 0.0, bad, timed);
    fflush(stdout);
    zmq_msg_close(&topic);
    zmq_msg_close(&body);
    zmq_close(s);
    zmq_ctx_term(ctx);
    free(lat.v);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Driver                                                              */

typedef enum { K_SINK, K_XPLAIND, K_PYTHON, K_NKINDS } kind_t;
static const char *KIND_NAMES[K_NKINDS] = {"sink", "xplaind", "python"};

typedef struct {
    const char *xplaind;
    const char *py;
    const char *python;
    const char *daemon_args;    /* extra daemon arguments, space separated */
    const char *preload;        /* LD_PRELOAD for the daemon (malloc counter) */
    const char *daemon_env;     /* extra NAME=VALUE for the daemon's environment */
    const char *sink_env;       /* extra NAME=VALUE for the sink's environment */
    const char *transport;      /* tcp or ipc for the ingest path */
    const char *label;          /* prefix of the TARGET lines; "-" for none */
    int hwm;
    double seconds, lat_seconds;
    int reps, lat_reps;
    unsigned kinds;
    bool verbose;
} drv_t;

typedef struct {
    bool ok;
    double tps;
    uint64_t count, sent;
    double p50, p99, p999, max;
    long hwm_kb, rss_kb;
    /* daemon's own view (stats query) */
    uint64_t d_explained, d_rejected, d_lost, d_dropped;
    double d_p50, d_p99, d_p999;
    /* CPU time per trade in the measured phase (us): publisher (this
       process, all threads), the consumer, and the daemon */
    double cpu_pub, cpu_cons, cpu_daemon;
    double flt_cons, flt_daemon;    /* minor page faults per trade */
    double cpu_daemon_main;         /* the daemon's main thread alone */
} res_t;

typedef struct {
    pid_t pid;
    int fd;             /* stdout pipe (read end), -1 when none */
    char buf[4096];
    size_t len;
} child_t;

static char s_self[PATH_MAX];

static int
s_spawn(child_t *c, char *const argv[], const char *log_path, const char *const *extra_env)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    int pfd[2] = {-1, -1};
    c->fd = -1;
    c->len = 0;
    if (log_path) {
        posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
    } else {
        if (pipe2(pfd, O_CLOEXEC))
            return -1;
        posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    }
    char **env = environ;
    char **penv = NULL;
    if (extra_env) {
        size_t n = 0, x = 0;
        while (environ[n])
            n++;
        while (extra_env[x])
            x++;
        penv = calloc(n + x + 1, sizeof *penv);
        for (size_t k = 0; k < n; k++)
            penv[k] = environ[k];
        for (size_t k = 0; k < x; k++)
            penv[n + k] = (char *)extra_env[k];
        env = penv;
    }
    int rc = posix_spawn(&c->pid, argv[0], &fa, NULL, argv, env);
    free(penv);
    posix_spawn_file_actions_destroy(&fa);
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (rc) {
        fprintf(stderr, "spawn %s: %s\n", argv[0], strerror(rc));
        if (pfd[0] >= 0)
            close(pfd[0]);
        return -1;
    }
    c->fd = pfd[0];
    return 0;
}

/* Wait up to `ms` for a line starting with `prefix` from a child; copy it
   to `line`. Returns 0, or -1 on timeout or EOF. */
static int
s_wait_line(child_t *c, const char *prefix, char *line, size_t cap, int ms)
{
    int64_t deadline = now_mono() + (int64_t)ms * 1000000;
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len))) {
            size_t ll = (size_t)(nl - c->buf);
            bool hit = strncmp(c->buf, prefix, strlen(prefix)) == 0;
            if (hit && line) {
                size_t cp = ll < cap - 1 ? ll : cap - 1;
                memcpy(line, c->buf, cp);
                line[cp] = '\0';
            }
            memmove(c->buf, nl + 1, c->len - ll - 1);
            c->len -= ll + 1;
            if (hit)
                return 0;
        }
        int left = (int)((deadline - now_mono()) / 1000000);
        if (left <= 0)
            return -1;
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1);
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

static void
s_reap(child_t *c, int sig, int ms)
{
    if (c->pid <= 0)
        return;
    if (sig)
        kill(c->pid, sig);
    int64_t deadline = now_mono() + (int64_t)ms * 1000000;
    int st;
    while (waitpid(c->pid, &st, WNOHANG) == 0) {
        if (now_mono() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            break;
        }
        usleep(2000);
    }
    if (c->fd >= 0)
        close(c->fd);
    c->pid = 0;
    c->fd = -1;
}

static long
s_proc_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    size_t fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            v = strtol(line + fl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* The fields of a /proc/.../stat file after the command name, that is
   from `state` on, in `buf`; NULL when the file cannot be read. */
static const char *
s_stat_fields(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p + 2 : NULL;
}

/* Minor page faults of a process (all threads). */
static long
s_minflt(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    const char *p = s_stat_fields(path, buf, sizeof buf);
    long mf = 0;
    /* state ppid pgrp session tty tpgid flags minflt */
    if (!p || sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %ld", &mf) != 1)
        return 0;
    return mf;
}

/* CPU time (user + system) in ns from a /proc/.../stat file. */
static int64_t
s_cpu_path_ns(const char *path)
{
    char buf[1024];
    const char *p = s_stat_fields(path, buf, sizeof buf);
    unsigned long ut = 0, st = 0;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt
       cmajflt utime stime */
    if (!p || sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (int64_t)(ut + st) * (1000000000 / sysconf(_SC_CLK_TCK));
}

/* CPU time (user + system, all threads) of a process in ns, or of this
   process (pid 0) from getrusage. */
static int64_t
s_cpu_ns(pid_t pid)
{
    if (pid > 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        return s_cpu_path_ns(path);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* CPU time of a process's main thread only. */
static int64_t
s_cpu_main_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
    return s_cpu_path_ns(path);
}

static double
s_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : 0;
}

/* Position a reader on the value of `key` in the map it is at. */
static int
s_mp_find(mpr_t *r, const char *key)
{
    mpr_obj_t o, k;
    if (mpr_next(r, &o) || o.type != MPR_MAP)
        return -1;
    for (uint32_t p = 0; p < o.v.count; p++) {
        if (mpr_next(r, &k))
            return -1;
        if (mpr_str_eq(&k, key))
            return 0;
        if (mpr_skip(r, 32))
            return -1;
    }
    return -1;
}

static double
s_mp_num(const void *buf, size_t len, const char *k1, const char *k2)
{
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, buf, len);
    if (s_mp_find(&r, k1) || (k2 && s_mp_find(&r, k2)) || mpr_next(&r, &o))
        return -1;
    return o.type == MPR_FLOAT ? o.v.f : o.type == MPR_UINT ? (double)o.v.u : -1;
}

/* Ask the daemon for `stats`. */
static void
s_daemon_stats(void *ctx, const char *qep, res_t *res)
{
    void *q = zmq_socket(ctx, ZMQ_REQ);
    int tmo = 5000, linger = 0;
    zmq_setsockopt(q, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(q, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(q, qep);
    static const char req[] = "\x82\xa1v\x01\xa2op\xa5stats";
    char buf[65536];
    if (zmq_send(q, req, sizeof req - 1, 0) >= 0) {
        int n = zmq_recv(q, buf, sizeof buf, 0);
        if (n > 0 && (size_t)n <= sizeof buf) {
            res->d_explained = (uint64_t)s_mp_num(buf, (size_t)n, "counters", "explained");
            res->d_rejected = (uint64_t)s_mp_num(buf, (size_t)n, "counters", "rejected");
            res->d_lost = (uint64_t)s_mp_num(buf, (size_t)n, "counters", "lost");
            res->d_dropped = (uint64_t)s_mp_num(buf, (size_t)n, "counters", "dropped");
            res->d_p50 = s_mp_num(buf, (size_t)n, "latency_us", "p50");
            res->d_p99 = s_mp_num(buf, (size_t)n, "latency_us", "p99");
            res->d_p999 = s_mp_num(buf, (size_t)n, "latency_us", "p999");
        }
    }
    zmq_close(q);
}

/* The publisher sends bodies zero-copy from a ring of pre-encoded
   copies: ZeroMQ frees a slot (from its I/O thread) once the kernel has
   the bytes, and a slot is patched only while free. So the publisher
   costs the model side what a zero-copy pyzmq send would, and the shared
   machine's CPU goes to the consumers being compared. */
typedef struct {
    wmsg_t *slots;
    _Atomic int *busy;
    uint32_t n, next;
} ring_t;

static void
s_ring_free(void *data, void *hint)
{
    (void)data;
    *(_Atomic int *)hint = 0;
}

static void
ring_make(ring_t *r, const wmsg_t *m)
{
    size_t per = m->body.size;
    r->n = (uint32_t)(((size_t)64 << 20) / per);
    r->n = r->n < 4 ? 4 : r->n > 64 ? 64 : r->n;
    r->slots = calloc(r->n, sizeof *r->slots);
    r->busy = calloc(r->n, sizeof *r->busy);
    for (uint32_t k = 0; k < r->n; k++) {
        r->slots[k] = *m;
        r->slots[k].body.data = malloc(per);
        memcpy(r->slots[k].body.data, m->body.data, per);
    }
    r->next = 0;
}

static void
ring_free(ring_t *r)
{
    for (uint32_t k = 0; k < r->n; k++)
        while (r->busy[k])
            usleep(1000);
    for (uint32_t k = 0; k < r->n; k++)
        free(r->slots[k].body.data);
    free(r->slots);
    free((void *)r->busy);
}

/* A free slot to patch (waits for ZeroMQ to release one). */
static wmsg_t *
ring_get(ring_t *r, int *slot)
{
    for (;;) {
        for (uint32_t t = 0; t < r->n; t++) {
            uint32_t k = (r->next + t) % r->n;
            if (!r->busy[k]) {
                r->next = (k + 1) % r->n;
                *slot = (int)k;
                return &r->slots[k];
            }
        }
        usleep(10);
    }
}

static int
s_send(void *pub, ring_t *r, int slot)
{
    wmsg_t *m = &r->slots[slot];
    for (;;) {
        if (zmq_send(pub, m->topic, m->topic_len, ZMQ_SNDMORE) >= 0)
            break;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        usleep(20);
    }
    zmq_msg_t msg;
    r->busy[slot] = 1;
    zmq_msg_init_data(&msg, m->body.data, m->body.size, s_ring_free, (void *)&r->busy[slot]);
    while (zmq_msg_send(&msg, pub, 0) < 0)
        if (errno != EAGAIN && errno != EINTR) {
            zmq_msg_close(&msg);
            return -1;
        }
    return 0;
}

/* Summarise the malloc counter's file: allocations per trade and per
   message, by thread and by library, and the busiest call sites. */
static void
s_malloc_report(const char *dir, double trades, double msgs)
{
    char path[400], line[512];
    snprintf(path, sizeof path, "%s/malloc.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "    malloc counter: no %s\n", path);
        return;
    }
    double main_total = 0, other_total = 0;
    struct { char lib[128]; double main, other; } libs[32];
    int nlibs = 0;
    printf("\nAllocations in the daemon during the measured phase (%.0f trades, %.0f messages; "
           "LD_PRELOAD counter, by call site; main = the daemon's own thread, other = ZeroMQ's I/O "
           "thread):\n\n| library | function | main / message | other / message |\n|---|---|---|---|\n",
           trades, msgs);
    while (fgets(line, sizeof line, f)) {
        char dso[100], off[32], sym[256] = "?", *lib;
        unsigned long long mc, oc;
        if (sscanf(line, "site %99s %31s main %llu other %llu", dso, off, &mc, &oc) != 4)
            continue;
        lib = strrchr(dso, '/') ? strrchr(dso, '/') + 1 : dso;
        if ((double)(mc + oc) >= 0.01 * msgs) {
            /* Name the calling function (addr2line, from binutils). */
            char cmd[600];
            snprintf(cmd, sizeof cmd, "addr2line -f -C -s -e '%s' %s 2>/dev/null", dso, off);
            FILE *p = popen(cmd, "r");
            char fn[256] = "", loc[256] = "";
            if (p && fgets(fn, sizeof fn, p) && fgets(loc, sizeof loc, p)) {
                fn[strcspn(fn, "\n")] = '\0';
                loc[strcspn(loc, "\n")] = '\0';
                if (strcmp(fn, "??") != 0)
                    snprintf(sym, sizeof sym, "%s (%s)", fn, loc);
            }
            if (p)
                pclose(p);
        }
        main_total += (double)mc;
        other_total += (double)oc;
        int k;
        for (k = 0; k < nlibs && strcmp(libs[k].lib, lib); k++) {
        }
        if (k == nlibs && nlibs < 32) {
            snprintf(libs[k].lib, sizeof libs[k].lib, "%s", lib);
            libs[k].main = libs[k].other = 0;
            nlibs++;
        }
        if (k < 32) {
            libs[k].main += (double)mc;
            libs[k].other += (double)oc;
        }
        if ((double)(mc + oc) >= 0.01 * msgs)
            printf("| %s | %s | %.3f | %.3f |\n", lib, sym, (double)mc / msgs, (double)oc / msgs);
    }
    fclose(f);
    printf("\nTotal per message: %.3f in the main thread, %.3f in other threads. By library:",
           main_total / msgs, other_total / msgs);
    for (int k = 0; k < nlibs; k++)
        printf(" %s %.3f/%.3f;", libs[k].lib, libs[k].main / msgs, libs[k].other / msgs);
    printf("\n");
}

/* Long-run sampling hook: called about every second of the stream. */
typedef struct {
    void *ctx;
    char qep[300];
    pid_t pid;
    uint64_t at1m_trades, at_end_trades;
    long rss_1m, rss_end, hwm_end;
    FILE *log;
} sampler_t;

static void
s_sample(sampler_t *sm)
{
    res_t r = {0};
    s_daemon_stats(sm->ctx, sm->qep, &r);
    long rss = s_proc_kb(sm->pid, "VmRSS"), hwm = s_proc_kb(sm->pid, "VmHWM");
    if (sm->log)
        fprintf(sm->log, "  long: explained=%" PRIu64 " VmRSS=%ld kB VmHWM=%ld kB\n",
                r.d_explained, rss, hwm);
    if (!sm->rss_1m && r.d_explained >= 1000000) {
        sm->rss_1m = rss;
        sm->at1m_trades = r.d_explained;
    }
    sm->rss_end = rss;
    sm->hwm_end = hwm;
    sm->at_end_trades = r.d_explained;
}

/* One measured run of one consumer kind. rate: trades/s, 0 for max.
   max_trades: stop after that many trades (0: after `seconds`). */
static int
run_one(const drv_t *d, const wl_t *w, kind_t kind, double rate, double seconds,
        uint64_t max_trades, sampler_t *sm, res_t *res)
{
    memset(res, 0, sizeof *res);
    char dir[] = "/tmp/xplbench-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_XPUB);
    int one = 1, hwm = d->hwm, linger = 0;
    zmq_setsockopt(pub, ZMQ_XPUB_NODROP, &one, sizeof one);
    zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
    char ep[256], pep[300], qep[300], hwms[16];
    if (strcmp(d->transport, "ipc") == 0)
        snprintf(ep, sizeof ep, "ipc://%s/in", dir);
    else
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:*");
    if (zmq_bind(pub, ep)) {
        fprintf(stderr, "bind %s: %s\n", ep, zmq_strerror(errno));
        return -1;
    }
    size_t epl = sizeof ep;
    zmq_getsockopt(pub, ZMQ_LAST_ENDPOINT, ep, &epl);
    snprintf(pep, sizeof pep, "ipc://%s/pub", dir);
    snprintf(qep, sizeof qep, "ipc://%s/q", dir);
    snprintf(hwms, sizeof hwms, "%d", d->hwm);

    wmsg_t m0;
    wmsg_build(&m0, w, "bench", 42);
    ring_t ring;
    ring_make(&ring, &m0);
    msgpack_sbuffer_destroy(&m0.body);
    const uint32_t B = m0.B;
    wmsg_t *m;
    int slot;

    child_t daemon = {0}, cons = {0};
    char logp[300];
    snprintf(logp, sizeof logp, "%s/xplaind.log", dir);
    if (kind == K_XPLAIND) {
        char *argv[64];
        int a = 0;
        argv[a++] = (char *)d->xplaind;
        argv[a++] = "--ingest-connect"; argv[a++] = ep;
        argv[a++] = "--publish"; argv[a++] = pep;
        argv[a++] = "--query"; argv[a++] = qep;
        argv[a++] = "--methods"; argv[a++] = "rollout,grad_rollout,first_layer,attn_mean,diag";
        argv[a++] = "--ingest-rcvhwm"; argv[a++] = hwms;
        argv[a++] = "--log-level"; argv[a++] = "warning";
        char extra[512];
        if (d->daemon_args) {
            snprintf(extra, sizeof extra, "%s", d->daemon_args);
            for (char *t = strtok(extra, " "); t && a < 62; t = strtok(NULL, " "))
                argv[a++] = t;
        }
        argv[a] = NULL;
        static char pl[PATH_MAX + 16], mo[400];
        const char *denv[4] = {0};
        int ne = 0;
        if (d->preload) {
            snprintf(pl, sizeof pl, "LD_PRELOAD=%s", d->preload);
            snprintf(mo, sizeof mo, "XPL_MALLOC_OUT=%s/malloc.txt", dir);
            denv[ne++] = pl;
            denv[ne++] = mo;
        }
        if (d->daemon_env)
            denv[ne++] = d->daemon_env;
        if (s_spawn(&daemon, argv, logp, ne ? denv : NULL))
            return -1;
        char *sargv[] = {s_self, "sub", pep, hwms, NULL};
        if (s_spawn(&cons, sargv, NULL, NULL))
            return -1;
        if (sm) {
            sm->ctx = ctx;
            sm->pid = daemon.pid;
            snprintf(sm->qep, sizeof sm->qep, "%s", qep);
        }
    } else if (kind == K_SINK) {
        char *sargv[] = {s_self, "sink", ep, hwms, NULL};
        const char *senv[2] = {d->sink_env, NULL};
        if (s_spawn(&cons, sargv, NULL, d->sink_env ? senv : NULL))
            return -1;
    } else {
        char expect[32];
        snprintf(expect, sizeof expect, "%llu", (unsigned long long)INT64_MAX);
        char *sargv[] = {(char *)d->python, (char *)d->py, ep, expect, hwms, NULL};
        if (s_spawn(&cons, sargv, NULL, NULL))
            return -1;
    }

    int rc = -1;
    uint64_t seq = 0;
    /* The first subscription tells us the ingest side is connected. */
    zmq_pollitem_t it = {pub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 20000) <= 0) {
        fprintf(stderr, "%s: no subscriber within 20 s\n", KIND_NAMES[kind]);
        goto out;
    }
    char sub[64];
    while (zmq_recv(pub, sub, sizeof sub, ZMQ_DONTWAIT) >= 0) {
    }
    /* Warm up until the final consumer has seen a message. */
    bool ready = false;
    for (int k = 0; k < 3000 && !ready; k++) {
        m = ring_get(&ring, &slot);
        wmsg_patch(m, seq++, now_wall(), (uint64_t)k * B);
        s_send(pub, &ring, slot);
        ready = s_wait_line(&cons, "READY", NULL, 0, 10) == 0;
    }
    if (!ready) {
        fprintf(stderr, "%s: consumer never ready\n", KIND_NAMES[kind]);
        goto out;
    }
    for (int k = 0; k < 20; k++) {  /* a few more warm-up trades, then settle */
        m = ring_get(&ring, &slot);
        wmsg_patch(m, seq++, now_wall(), (uint64_t)k * B);
        s_send(pub, &ring, slot);
    }
    usleep(300000);

    int64_t c0_pub = s_cpu_ns(0), c0_cons = s_cpu_ns(cons.pid),
            c0_d = daemon.pid > 0 ? s_cpu_ns(daemon.pid) : 0,
            c0_dm = daemon.pid > 0 ? s_cpu_main_ns(daemon.pid) : 0;
    long f0_cons = s_minflt(cons.pid), f0_d = daemon.pid > 0 ? s_minflt(daemon.pid) : 0;
    if (d->preload && daemon.pid > 0)
        kill(daemon.pid, SIGUSR1);  /* malloc counter: start counting */
    int64_t t0 = now_mono(), next = t0, last_sample = t0;
    double interval = rate > 0 ? (double)B * 1e9 / rate : 0;
    uint64_t id = BASE, k = 0;
    for (;; k++) {
        int64_t now = now_mono();
        if (max_trades ? (k * B >= max_trades) : (now - t0 >= (int64_t)(seconds * 1e9)))
            break;
        if (rate > 0) {
            next = t0 + (int64_t)((double)k * interval);
            if (now < next) {
                struct timespec ts = {next / 1000000000, next % 1000000000};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
        }
        m = ring_get(&ring, &slot);
        wmsg_patch(m, seq++, now_wall(), id);
        if (s_send(pub, &ring, slot))
            goto out;
        id += B;
        if (sm && (k & 63) == 0 && now - last_sample > 1000000000) {
            last_sample = now;
            s_sample(sm);
        }
    }
    res->sent = k * B;
    m = ring_get(&ring, &slot);
    wmsg_patch(m, seq++, now_wall(), END_ID);
    s_send(pub, &ring, slot);

    char line[512];
    /* Consumers print RESULT at the END message: read their CPU time
       when the last measured trade is through (END is cheap). */
    if (s_wait_line(&cons, "RESULT", line, sizeof line, 600000) == 0) {
        double tr = (double)(k * B);
        res->cpu_pub = (double)(s_cpu_ns(0) - c0_pub) / 1e3 / tr;
        res->cpu_cons = (double)(s_cpu_ns(cons.pid) - c0_cons) / 1e3 / tr;
        res->flt_cons = (double)(s_minflt(cons.pid) - f0_cons) / tr;
        if (daemon.pid > 0) {
            res->cpu_daemon = (double)(s_cpu_ns(daemon.pid) - c0_d) / 1e3 / tr;
            res->cpu_daemon_main = (double)(s_cpu_main_ns(daemon.pid) - c0_dm) / 1e3 / tr;
            res->flt_daemon = (double)(s_minflt(daemon.pid) - f0_d) / tr;
        }
    } else {
        fprintf(stderr, "%s: no RESULT\n", KIND_NAMES[kind]);
        goto out;
    }
    if (d->verbose)
        fprintf(stderr, "    %s: %s minflt/trade consumer %.2f daemon %.2f; daemon main thread %.1f us/trade\n",
                KIND_NAMES[kind], line, res->flt_cons, res->flt_daemon, res->cpu_daemon_main);
    res->count = (uint64_t)s_field(line, "count");
    double first = s_field(line, "first_ns"), last = s_field(line, "last_ns");
    res->tps = res->count > B && last > first ? (double)(res->count - B) / ((last - first) / 1e9) : 0;
    res->p50 = s_field(line, "p50_us");
    res->p99 = s_field(line, "p99_us");
    res->p999 = s_field(line, "p999_us");
    res->max = s_field(line, "max_us");
    res->ok = res->count > 0;
    if (res->count < res->sent)
        fprintf(stderr, "    warning: %s received %" PRIu64 " of %" PRIu64 " trades\n",
                KIND_NAMES[kind], res->count, res->sent);
    if (kind == K_XPLAIND) {
        if (sm)
            s_sample(sm);
        if (d->preload) {
            kill(daemon.pid, SIGUSR2);  /* malloc counter: write the counts */
            usleep(500000);
            s_malloc_report(dir, (double)(k * B), (double)k);
        }
        res->hwm_kb = s_proc_kb(daemon.pid, "VmHWM");
        res->rss_kb = s_proc_kb(daemon.pid, "VmRSS");
        s_daemon_stats(ctx, qep, res);
        if (d->verbose)
            fprintf(stderr, "    daemon: explained=%" PRIu64 " rejected=%" PRIu64 "\n",
                    res->d_explained, res->d_rejected);
        if (res->d_rejected || res->d_lost || res->d_dropped)
            fprintf(stderr, "    warning: daemon rejected %" PRIu64 ", lost %" PRIu64
                    ", dropped %" PRIu64 " (see %s)\n", res->d_rejected, res->d_lost,
                    res->d_dropped, logp);
    }
    rc = 0;
out:
    s_reap(&cons, SIGTERM, 3000);
    s_reap(&daemon, SIGTERM, 10000);
    zmq_close(pub);
    zmq_ctx_term(ctx);
    ring_free(&ring);
    if (rc == 0 && !d->preload) {
        /* Leave nothing behind: the log and the ipc socket files. */
        unlink(logp);
        static const char *const files[] = {"in", "pub", "q", "malloc.txt"};
        for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
            char p[320];
            snprintf(p, sizeof p, "%s/%s", dir, files[f]);
            unlink(p);
        }
        rmdir(dir);
    }
    return rc;
}

static int
s_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, s_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define MAXREP 32

typedef struct {
    double tps[K_NKINDS];
    double lat[K_NKINDS][3];     /* p50 p99 p999 at the paced rate */
    double d_lat[3];             /* daemon's own receive->publish */
    double rate;
    long hwm_kb;
    double cpu[K_NKINDS][3];     /* medians: publisher, consumer, daemon (us/trade) */
    double cpu_dmain;            /* median: the daemon's main thread */
    /* Ratios of runs next to each other in time (same repetition), then
       the median over repetitions: background load moves both alike. */
    double ab, bc, added_p99, cpu_ab;
} row_t;

/* The CPU table is printed after the main one. */
static char s_cpu_tab[16384];
static size_t s_cpu_len;

static void
print_header(void)
{
    printf("| workload | MB/trade | sink trades/s | xplaind trades/s | python trades/s | b/a | b/c "
           "| rate for latency | sink p50/p99/p99.9 us | xplaind p50/p99/p99.9 us | added p99 us "
           "| daemon-internal p50/p99/p99.9 us | daemon VmHWM MB |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
}

static void
print_row(const drv_t *d, const wl_t *w, const char *name, const row_t *r)
{
    char py[32] = "-", bc[32] = "-", ab[32] = "-", lat[3][64] = {"-", "-", "-"}, added[32] = "-",
         dl[64] = "-", hwm[32] = "-", rate[32] = "-";
    if (d->kinds & (1u << K_PYTHON)) {
        snprintf(py, sizeof py, "%.0f", r->tps[K_PYTHON]);
        if (r->tps[K_PYTHON] > 0)
            snprintf(bc, sizeof bc, "%.1f", r->bc);
    }
    if (r->tps[K_SINK] > 0)
        snprintf(ab, sizeof ab, "%.2f", r->ab);
    if (r->rate > 0) {
        snprintf(rate, sizeof rate, "%.0f", r->rate);
        for (int k = 0; k < 2; k++)
            snprintf(lat[k], sizeof lat[k], "%.0f / %.0f / %.0f", r->lat[k][0], r->lat[k][1],
                     r->lat[k][2]);
        snprintf(added, sizeof added, "%.0f", r->added_p99);
        snprintf(dl, sizeof dl, "%.0f / %.0f / %.0f", r->d_lat[0], r->d_lat[1], r->d_lat[2]);
    }
    if (r->hwm_kb > 0)
        snprintf(hwm, sizeof hwm, "%.1f", (double)r->hwm_kb / 1024);
    printf("| %s | %.3f | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name,
           (double)wl_trade_bytes(w) / 1e6, r->tps[K_SINK], r->tps[K_XPLAIND], py, ab, bc, rate,
           lat[K_SINK], lat[K_XPLAIND], added, dl, hwm);
    fflush(stdout);
}

static void
measure_workload(const drv_t *d, const wl_t *w, const char *name, bool latency, row_t *row)
{
    double v[K_NKINDS][MAXREP], cv[K_NKINDS][3][MAXREP], dm[MAXREP];
    int ndm = 0;
    double per[K_NKINDS][MAXREP], percpu[K_NKINDS][MAXREP];   /* by repetition, 0 when missing */
    double rab[MAXREP], rbc[MAXREP], rcpu[MAXREP];
    int nv[K_NKINDS] = {0}, nab = 0, nbc = 0, ncpu = 0;
    memset(per, 0, sizeof per);
    memset(percpu, 0, sizeof percpu);
    memset(row, 0, sizeof *row);
    fprintf(stderr, "== %s (L=%u H=%u n=%u %s B=%u, %.3f MB/trade)\n", name, w->L, w->H, w->n,
            w->dtype == XM_F32 ? "f32" : w->dtype == XM_F16 ? "f16" : "bf16", w->B,
            (double)wl_trade_bytes(w) / 1e6);
    for (int rep = 0; rep < d->reps && rep < MAXREP; rep++) {
        for (int k = 0; k < K_NKINDS; k++) {
            kind_t kind = (kind_t)((k + rep) % K_NKINDS);   /* rotate the order */
            if (!(d->kinds & (1u << kind)))
                continue;
            res_t r;
            double secs = d->seconds * (kind == K_PYTHON ? 0.5 : 1.0);
            if (run_one(d, w, kind, 0, secs, 0, NULL, &r) || !r.ok)
                continue;
            per[kind][rep] = r.tps;
            if (kind == K_XPLAIND)
                dm[ndm++] = r.cpu_daemon_main;
            percpu[kind][rep] = r.cpu_pub + r.cpu_cons + r.cpu_daemon;
            cv[kind][0][nv[kind]] = r.cpu_pub;
            cv[kind][1][nv[kind]] = r.cpu_cons;
            cv[kind][2][nv[kind]] = r.cpu_daemon;
            v[kind][nv[kind]++] = r.tps;
            if (kind == K_XPLAIND && r.hwm_kb > row->hwm_kb)
                row->hwm_kb = r.hwm_kb;
            fprintf(stderr, "  rep %d %-8s %10.0f trades/s   cpu us/trade: publisher %.1f consumer %.1f daemon %.1f\n",
                    rep, KIND_NAMES[kind], r.tps, r.cpu_pub, r.cpu_cons, r.cpu_daemon);
        }
    }
    for (int rep = 0; rep < d->reps && rep < MAXREP; rep++) {
        if (per[K_SINK][rep] > 0 && per[K_XPLAIND][rep] > 0)
            rab[nab++] = per[K_XPLAIND][rep] / per[K_SINK][rep];
        if (per[K_PYTHON][rep] > 0 && per[K_XPLAIND][rep] > 0)
            rbc[nbc++] = per[K_XPLAIND][rep] / per[K_PYTHON][rep];
        if (percpu[K_SINK][rep] > 0 && percpu[K_XPLAIND][rep] > 0)
            rcpu[ncpu++] = percpu[K_SINK][rep] / percpu[K_XPLAIND][rep];
    }
    row->ab = median(rab, nab);
    row->bc = median(rbc, nbc);
    row->cpu_ab = median(rcpu, ncpu);
    row->cpu_dmain = median(dm, ndm);
    for (int k = 0; k < K_NKINDS; k++) {
        row->tps[k] = median(v[k], nv[k]);
        for (int q = 0; q < 3; q++)
            row->cpu[k][q] = median(cv[k][q], nv[k]);
    }
    s_cpu_len += (size_t)snprintf(s_cpu_tab + s_cpu_len, sizeof s_cpu_tab - s_cpu_len,
        "| %s | %.1f | %.1f | %.1f | %.1f (%.1f) | %.1f | %.1f | %.1f | %.2f |\n", name,
        row->cpu[K_SINK][0], row->cpu[K_SINK][1], row->cpu[K_XPLAIND][0],
        row->cpu[K_XPLAIND][2], row->cpu_dmain, row->cpu[K_XPLAIND][1], row->cpu[K_PYTHON][0],
        row->cpu[K_PYTHON][1],
        row->cpu_ab);
    if (s_cpu_len >= sizeof s_cpu_tab)
        s_cpu_len = sizeof s_cpu_tab - 1;
    if (!latency || !(d->kinds & (1u << K_XPLAIND)) || !(d->kinds & (1u << K_SINK)) ||
        row->tps[K_XPLAIND] <= 0)
        return;
    /* Latency at 50% of xplaind's max rate, for both the sink and xplaind. */
    row->rate = 0.5 * row->tps[K_XPLAIND];
    double lv[K_NKINDS][3][MAXREP], dv[3][MAXREP], p99r[2][MAXREP], addv[MAXREP];
    int nl[K_NKINDS] = {0}, nd = 0, nadd = 0;
    memset(p99r, 0, sizeof p99r);
    for (int rep = 0; rep < d->lat_reps && rep < MAXREP; rep++) {
        for (int k = 0; k < 2; k++) {
            kind_t kind = (kind_t)((k + rep) % 2);
            res_t r;
            if (run_one(d, w, kind, row->rate, d->lat_seconds, 0, NULL, &r) || !r.ok)
                continue;
            p99r[kind][rep] = r.p99;
            lv[kind][0][nl[kind]] = r.p50;
            lv[kind][1][nl[kind]] = r.p99;
            lv[kind][2][nl[kind]] = r.p999;
            nl[kind]++;
            fprintf(stderr, "  lat %d %-8s at %.0f trades/s: p50 %.0f p99 %.0f p99.9 %.0f us (got %.0f trades/s)\n",
                    rep, KIND_NAMES[kind], row->rate, r.p50, r.p99, r.p999, r.tps);
            if (kind == K_XPLAIND) {
                dv[0][nd] = r.d_p50;
                dv[1][nd] = r.d_p99;
                dv[2][nd] = r.d_p999;
                nd++;
                if (r.hwm_kb > row->hwm_kb)
                    row->hwm_kb = r.hwm_kb;
            }
        }
    }
    for (int k = 0; k < 2; k++)
        for (int q = 0; q < 3; q++)
            row->lat[k][q] = median(lv[k][q], nl[k]);
    for (int rep = 0; rep < d->lat_reps && rep < MAXREP; rep++)
        if (p99r[K_SINK][rep] > 0 && p99r[K_XPLAIND][rep] > 0)
            addv[nadd++] = p99r[K_XPLAIND][rep] - p99r[K_SINK][rep];
    row->added_p99 = median(addv, nadd);
    for (int q = 0; q < 3; q++)
        row->d_lat[q] = median(dv[q], nd);
}

static void
usage(void)
{
    fprintf(stderr,
            "usage: bench_xplain run [options]\n"
            "  --workloads LIST   comma list of tab32,tab32-b64,tab32-f16,tab16,wide128 or nNLM\n"
            "                     (H=8); 'sweep' adds n in {8..256} x L in {1,2,4,8,12}\n"
            "  --consumers LIST   sink,xplaind,python (default all three)\n"
            "  --reps N           max-rate repetitions per consumer (default 3; medians)\n"
            "  --seconds S        length of a max-rate run (default 3)\n"
            "  --lat-reps N       paced latency repetitions (default 3)\n"
            "  --lat-seconds S    length of a latency run (default 5)\n"
            "  --no-latency       skip the paced latency runs\n"
            "  --hwm N            high-water marks of the bench sockets and the daemon's ingest (100)\n"
            "  --transport T      tcp (default) or ipc for the publisher -> consumer path\n"
            "  --long N           long run: tab16 into xplaind for N trades, RSS at 1M and at N\n"
            "  --xplaind PATH     daemon binary (default ../daemon/xplaind beside this one)\n"
            "  --daemon-args STR  extra daemon arguments\n"
            "  --preload LIB      LD_PRELOAD for the daemon (malloc counter)\n"
            "  --daemon-env N=V   one more environment variable for the daemon\n"
            "  --sink-env N=V     one more environment variable for the null sink\n"
            "  --verbose          print every consumer's RESULT line\n");
}

static int
cmd_run(int argc, char **argv)
{
    static char xpl[PATH_MAX], py[PATH_MAX];
    drv_t d = {.hwm = 100, .seconds = 3, .lat_seconds = 5, .reps = 3, .lat_reps = 3,
               .kinds = 7, .python = "/usr/bin/python3", .transport = "tcp"};
    snprintf(xpl, sizeof xpl, "%s", s_self);
    char *slash = strrchr(xpl, '/');
    if (slash)
        snprintf(slash, sizeof xpl - (size_t)(slash - xpl), "/../daemon/xplaind");
    d.xplaind = xpl;
    snprintf(py, sizeof py, "%s/bench/py_consumer.py", XPL_SOURCE_DIR);
    d.py = py;
    const char *wls = "tab32,tab32-b64,tab32-f16,tab16,wide128";
    bool latency = true;
    uint64_t long_n = 0;
    static const struct option opts[] = {
        {"workloads", 1, 0, 'w'}, {"consumers", 1, 0, 'c'}, {"reps", 1, 0, 'r'},
        {"seconds", 1, 0, 's'}, {"lat-reps", 1, 0, 'R'}, {"lat-seconds", 1, 0, 'S'},
        {"no-latency", 0, 0, 'N'}, {"hwm", 1, 0, 'h'}, {"long", 1, 0, 'l'},
        {"xplaind", 1, 0, 'x'}, {"daemon-args", 1, 0, 'a'}, {"preload", 1, 0, 'p'},
        {"transport", 1, 0, 't'}, {"verbose", 0, 0, 'v'}, {"py", 1, 0, 'P'},
        {"daemon-env", 1, 0, 'e'}, {"sink-env", 1, 0, 'E'}, {"label", 1, 0, 'L'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'w': wls = optarg; break;
        case 'c':
            d.kinds = 0;
            for (int k = 0; k < K_NKINDS; k++)
                if (strstr(optarg, KIND_NAMES[k]))
                    d.kinds |= 1u << k;
            break;
        case 'r': d.reps = atoi(optarg); break;
        case 's': d.seconds = atof(optarg); break;
        case 'R': d.lat_reps = atoi(optarg); break;
        case 'S': d.lat_seconds = atof(optarg); break;
        case 'N': latency = false; break;
        case 'h': d.hwm = atoi(optarg); break;
        case 'l': long_n = strtoull(optarg, NULL, 10); break;
        case 'x': d.xplaind = optarg; break;
        case 'a': d.daemon_args = optarg; break;
        case 'p': d.preload = optarg; break;
        case 't': d.transport = optarg; break;
        case 'v': d.verbose = true; break;
        case 'P': d.py = optarg; break;
        case 'e': d.daemon_env = optarg; break;
        case 'L': d.label = optarg; break;
        case 'E': d.sink_env = optarg; break;
        default: usage(); return 2;
        }
    }
    if (access(d.xplaind, X_OK)) {
        fprintf(stderr, "no daemon at %s (use --xplaind)\n", d.xplaind);
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);

    if (long_n) {
        wl_t w = *wl_find("tab16");
        sampler_t sm = {.log = stderr};
        res_t r;
        fprintf(stderr, "== long run: tab16, %" PRIu64 " trades into xplaind at max rate\n", long_n);
        if (run_one(&d, &w, K_XPLAIND, 0, 0, long_n, &sm, &r))
            return 1;
        double growth = sm.rss_1m > 0 ? 100.0 * (double)(sm.rss_end - sm.rss_1m) / (double)sm.rss_1m : 0;
        printf("| long run | trades | VmRSS at %.1fM trades | VmRSS at %.1fM trades | growth | VmHWM | trades/s |\n",
               (double)sm.at1m_trades / 1e6, (double)sm.at_end_trades / 1e6);
        printf("|---|---|---|---|---|---|---|\n");
        printf("| tab16 xplaind | %" PRIu64 " | %.1f MB | %.1f MB | %+.1f%% | %.1f MB | %.0f |\n",
               r.count, (double)sm.rss_1m / 1024, (double)sm.rss_end / 1024, growth,
               (double)sm.hwm_end / 1024, r.tps);
        if (sm.rss_1m > 0)
            printf("TARGET|RSS growth of xplaind from %.1fM to %.1fM trades (tab16)|%+.1f%%|within 10%%|%s\n",
                   (double)sm.at1m_trades / 1e6, (double)sm.at_end_trades / 1e6, growth,
                   fabs(growth) <= 10 ? "yes" : "no");
        return 0;
    }

    print_header();
    bool have32 = false, have16 = false;
    row_t r32, r16;
    char list[1024];
    snprintf(list, sizeof list, "%s", wls);
    for (char *t = strtok(list, ","); t; t = strtok(NULL, ",")) {
        if (strcmp(t, "sweep") == 0) {
            static const unsigned ns[] = {8, 16, 32, 64, 128, 256}, Ls[] = {1, 2, 4, 8, 12};
            for (size_t i = 0; i < 6; i++)
                for (size_t j = 0; j < 5; j++) {
                    char nm[32];
                    snprintf(nm, sizeof nm, "n%uL%u", ns[i], Ls[j]);
                    wl_t w;
                    wl_parse(nm, &w);
                    row_t row;
                    measure_workload(&d, &w, nm, false, &row);
                    print_row(&d, &w, nm, &row);
                }
            continue;
        }
        wl_t w;
        if (wl_parse(t, &w)) {
            fprintf(stderr, "unknown workload %s\n", t);
            return 2;
        }
        row_t row;
        measure_workload(&d, &w, t, latency, &row);
        print_row(&d, &w, t, &row);
        if (strcmp(t, "tab32") == 0) {
            have32 = true;
            r32 = row;
        } else if (strcmp(t, "tab16") == 0) {
            have16 = true;
            r16 = row;
        }
    }
    printf("\nCPU time per trade in the max-rate runs (user + system, all threads, us; "
           "medians). On 2 shared cores the throughput is bounded by the sum.\n\n");
    printf("| workload | (a) publisher | (a) sink | (b) publisher | (b) xplaind (its main thread) | (b) subscriber "
           "| (c) publisher | (c) python | CPU ratio a/b |\n|---|---|---|---|---|---|---|---|---|\n");
    fputs(s_cpu_tab, stdout);
    /* Machine-readable target lines, gathered by bench/run.sh. */
    const char *lb = d.label ? d.label : "";
    if (d.label && strcmp(d.label, "-") == 0)
        have32 = have16 = false;
    if (have32 && r32.tps[K_SINK] > 0) {
        double v = r32.ab;
        printf("TARGET|%stab32: xplaind / null sink throughput|%.2f|>= 0.9|%s\n", lb, v,
               v >= 0.9 ? "yes" : "no");
        if (r32.rate > 0) {
            double a = r32.added_p99;
            printf("TARGET|%stab32: p99 added latency at 50%% load (xplaind - sink)|%.0f us|<= 200 us|%s\n",
                   lb, a, a <= 200 ? "yes" : "no");
            printf("TARGET|%stab32: context: the daemon's own receive-to-publish p99 at that load|%.0f us|-|-\n",
                   lb, r32.d_lat[1]);
        }
        printf("TARGET|%stab32: context: CPU per trade, (publisher + sink) / (publisher + xplaind + subscriber)|%.2f|-|-\n",
               lb, r32.cpu_ab);
    }
    if (have16 && r16.tps[K_SINK] > 0) {
        double v = r16.ab;
        printf("TARGET|%stab16 B=1: xplaind / null sink throughput|%.2f|>= 0.8|%s\n", lb, v,
               v >= 0.8 ? "yes" : "no");
        if (r16.tps[K_PYTHON] > 0) {
            double bc = r16.bc;
            printf("TARGET|%stab16 B=1: xplaind / Python consumer throughput|%.1f|>= 5|%s\n", lb, bc,
                   bc >= 5 ? "yes" : "no");
        }
        printf("TARGET|%stab16 B=1: context: CPU per trade, (publisher + sink) / (publisher + xplaind + subscriber)|%.2f|-|-\n",
               lb, r16.cpu_ab);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", s_self, sizeof s_self - 1);
    if (n > 0)
        s_self[n] = '\0';
    if (argc >= 2 && strcmp(argv[1], "sink") == 0)
        return cmd_consume(argc - 2, argv + 2, false);
    if (argc >= 2 && strcmp(argv[1], "sub") == 0)
        return cmd_consume(argc - 2, argv + 2, true);
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "selftest") == 0) {
        /* The header walk on every workload's message. */
        for (size_t k = 0; k < N_WORKLOADS; k++) {
            wmsg_t m;
            wmsg_build(&m, &WORKLOADS[k], "bench", 1);
            wmsg_patch(&m, 7, 1234567, BASE + 5);
            int64_t ts = 0;
            uint64_t id0 = 0;
            uint32_t cnt = 0;
            int rc = s_header(m.body.data, m.body.size, &ts, &id0, &cnt);
            printf("%s: rc=%d ts=%" PRId64 " id0=%" PRIu64 " count=%u\n", WORKLOADS[k].name, rc,
                   ts, id0 - BASE, cnt);
            msgpack_sbuffer_destroy(&m.body);
        }
        return 0;
    }
    usage();
    return 2;
}
