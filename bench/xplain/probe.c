/*  probe: what the driver reads of the processes it measures: memory,
    page faults and CPU time from /proc, and the daemon's own counters and
    latency from its stats query.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <sys/resource.h>
#include <unistd.h>
#include <zmq.h>

long
probe_kb(pid_t pid, const char *field)
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
long
probe_minflt(pid_t pid)
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
int64_t
probe_cpu_ns(pid_t pid)
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
int64_t
probe_cpu_main_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
    return s_cpu_path_ns(path);
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
void
probe_daemon_stats(void *ctx, const char *qep, res_t *res)
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
