/*  bench_xplain.h: what the parts of bench_xplain share (the files of
    bench/xplain/, main in bench/bench_xplain.c): the run's options and results, the
    processes it starts, the publisher's ring, and one function per step.
    Internal to this benchmark.  */
#ifndef XPL_BENCH_XPLAIN_H
#define XPL_BENCH_XPLAIN_H

#include "../bench_common.h"
#include "mpr.h"

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#ifndef XPL_SOURCE_DIR
#define XPL_SOURCE_DIR "."
#endif

/* Trade ids: warm-up below BASE, measured from BASE, END_ID and above
   end the run (see bench_xplain.c). */
#define BASE ((uint64_t)1 << 40)
#define END_ID ((uint64_t)1 << 62)

/* This executable's path: the driver spawns itself as the consumers. */
extern char bench_self[PATH_MAX];

/* ---- consumers (consumer.c) ------------------------------------------- */

/* The top-level map of a body: "ts", and the first id with the number of
   ids ("ids") or the one id ("id"). Returns 0, or -1 if malformed. */
int consumer_header(const void *body, size_t len, int64_t *ts, uint64_t *id0, uint32_t *count);

/* `bench_xplain sink EP HWM` (xpl false) and `bench_xplain sub EP HWM`. */
int cmd_consume(int argc, char **argv, bool xpl);

/* ---- a run: options and results --------------------------------------- */

typedef enum { K_SINK, K_XPLAIND, K_PYTHON, K_NKINDS } kind_t;
extern const char *const KIND_NAMES[K_NKINDS];

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

/* ---- child processes (child.c) ---------------------------------------- */

typedef struct {
    pid_t pid;
    int fd;             /* stdout pipe (read end), -1 when none */
    char buf[4096];
    size_t len;
} child_t;

/* Start argv[0] with stdout (and stderr) to log_path, or to a pipe read
   by child_wait_line when log_path is NULL; extra_env adds NAME=VALUE
   strings to the environment. Returns 0 or -1. */
int child_spawn(child_t *c, char *const argv[], const char *log_path, const char *const *extra_env);

/* Wait up to `ms` for a line starting with `prefix` from a child; copy it
   to `line`. Returns 0, or -1 on timeout or EOF. */
int child_wait_line(child_t *c, const char *prefix, char *line, size_t cap, int ms);

/* Send `sig` (0: none), wait up to `ms`, then SIGKILL; close the pipe. */
void child_reap(child_t *c, int sig, int ms);

/* ---- probes (probe.c) ------------------------------------------------- */

/* A "kB" field of /proc/PID/status (VmRSS, VmHWM), -1 when unreadable. */
long probe_kb(pid_t pid, const char *field);

/* Minor page faults of a process (all threads). */
long probe_minflt(pid_t pid);

/* CPU time (user + system, all threads) of a process in ns, or of this
   process (pid 0) from getrusage. */
int64_t probe_cpu_ns(pid_t pid);

/* CPU time of a process's main thread only. */
int64_t probe_cpu_main_ns(pid_t pid);

/* Ask the daemon at `qep` for `stats`: counters and latency into res. */
void probe_daemon_stats(void *ctx, const char *qep, res_t *res);

/* ---- the publisher's ring (publisher.c) ------------------------------- */

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

/* A ring of copies of m (64 MiB at most, 4 to 64 slots). */
void ring_make(ring_t *r, const wmsg_t *m);
/* Wait until ZeroMQ has released every slot, then free them. */
void ring_free(ring_t *r);
/* A free slot to patch (waits for ZeroMQ to release one). */
wmsg_t *ring_get(ring_t *r, int *slot);
/* Send a slot's topic and body (zero-copy): 0, or -1 on an error other
   than EAGAIN/EINTR. */
int ring_send(void *pub, ring_t *r, int slot);

/* ---- one run (run.c) -------------------------------------------------- */

/* Long-run sampling hook: called about every second of the stream. */
typedef struct {
    void *ctx;
    char qep[300];
    pid_t pid;
    uint64_t at1m_trades, at_end_trades;
    long rss_1m, rss_end, hwm_end;
    FILE *log;
} sampler_t;

/* One measured run of one consumer kind. rate: trades/s, 0 for max.
   max_trades: stop after that many trades (0: after `seconds`). */
int run_one(const drv_t *d, const wl_t *w, kind_t kind, double rate, double seconds,
            uint64_t max_trades, sampler_t *sm, res_t *res);

/* ---- the report (report.c) -------------------------------------------- */

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

/* The median of v[0..n) (sorts v); 0 when n <= 0. */
double median(double *v, int n);
void report_header(void);
void report_row(const drv_t *d, const wl_t *w, const char *name, const row_t *r);
void report_cpu_row(const char *name, const row_t *row);
void report_cpu_table(void);
void report_long(const sampler_t *sm, const res_t *r);
void report_targets(const drv_t *d, const row_t *r32, const row_t *r16);
void report_malloc(const char *dir, double trades, double msgs);

/* ---- the driver (driver.c) -------------------------------------------- */

/* `bench_xplain run [options]`, and its usage on stderr. */
int cmd_run(int argc, char **argv);
void usage(void);

#endif
