/*  run: one measured run of one consumer kind: the temporary directory
    and endpoints, the processes, warm-up, the measured stream (at max
    rate or paced), and what the consumer and /proc say at its end.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <unistd.h>
#include <zmq.h>

const char *const KIND_NAMES[K_NKINDS] = {"sink", "xplaind", "python"};

static double
s_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : 0;
}

static void
s_sample(sampler_t *sm)
{
    res_t r = {0};
    probe_daemon_stats(sm->ctx, sm->qep, &r);
    long rss = probe_kb(sm->pid, "VmRSS"), hwm = probe_kb(sm->pid, "VmHWM");
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
int
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
            char *save = NULL;
            for (char *t = strtok_r(extra, " ", &save); t && a < 62; t = strtok_r(NULL, " ", &save))
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
        if (child_spawn(&daemon, argv, logp, ne ? denv : NULL))
            return -1;
        char *sargv[] = {bench_self, "sub", pep, hwms, NULL};
        if (child_spawn(&cons, sargv, NULL, NULL))
            return -1;
        if (sm) {
            sm->ctx = ctx;
            sm->pid = daemon.pid;
            snprintf(sm->qep, sizeof sm->qep, "%s", qep);
        }
    } else if (kind == K_SINK) {
        char *sargv[] = {bench_self, "sink", ep, hwms, NULL};
        const char *senv[2] = {d->sink_env, NULL};
        if (child_spawn(&cons, sargv, NULL, d->sink_env ? senv : NULL))
            return -1;
    } else {
        char expect[32];
        snprintf(expect, sizeof expect, "%llu", (unsigned long long)INT64_MAX);
        char *sargv[] = {(char *)d->python, (char *)d->py, ep, expect, hwms, NULL};
        if (child_spawn(&cons, sargv, NULL, NULL))
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
        ring_send(pub, &ring, slot);
        ready = child_wait_line(&cons, "READY", NULL, 0, 10) == 0;
    }
    if (!ready) {
        fprintf(stderr, "%s: consumer never ready\n", KIND_NAMES[kind]);
        goto out;
    }
    for (int k = 0; k < 20; k++) {  /* a few more warm-up trades, then settle */
        m = ring_get(&ring, &slot);
        wmsg_patch(m, seq++, now_wall(), (uint64_t)k * B);
        ring_send(pub, &ring, slot);
    }
    usleep(300000);

    int64_t c0_pub = probe_cpu_ns(0), c0_cons = probe_cpu_ns(cons.pid),
            c0_d = daemon.pid > 0 ? probe_cpu_ns(daemon.pid) : 0,
            c0_dm = daemon.pid > 0 ? probe_cpu_main_ns(daemon.pid) : 0;
    long f0_cons = probe_minflt(cons.pid), f0_d = daemon.pid > 0 ? probe_minflt(daemon.pid) : 0;
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
        if (ring_send(pub, &ring, slot))
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
    ring_send(pub, &ring, slot);

    char line[512];
    /* Consumers print RESULT at the END message: read their CPU time
       when the last measured trade is through (END is cheap). */
    if (child_wait_line(&cons, "RESULT", line, sizeof line, 600000) == 0) {
        double tr = (double)(k * B);
        res->cpu_pub = (double)(probe_cpu_ns(0) - c0_pub) / 1e3 / tr;
        res->cpu_cons = (double)(probe_cpu_ns(cons.pid) - c0_cons) / 1e3 / tr;
        res->flt_cons = (double)(probe_minflt(cons.pid) - f0_cons) / tr;
        if (daemon.pid > 0) {
            res->cpu_daemon = (double)(probe_cpu_ns(daemon.pid) - c0_d) / 1e3 / tr;
            res->cpu_daemon_main = (double)(probe_cpu_main_ns(daemon.pid) - c0_dm) / 1e3 / tr;
            res->flt_daemon = (double)(probe_minflt(daemon.pid) - f0_d) / tr;
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
            report_malloc(dir, (double)(k * B), (double)k);
        }
        res->hwm_kb = probe_kb(daemon.pid, "VmHWM");
        res->rss_kb = probe_kb(daemon.pid, "VmRSS");
        probe_daemon_stats(ctx, qep, res);
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
    child_reap(&cons, SIGTERM, 3000);
    child_reap(&daemon, SIGTERM, 10000);
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
