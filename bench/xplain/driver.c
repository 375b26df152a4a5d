/*  driver: `bench_xplain run`: its options, and for each workload the
    repetitions of every consumer kind in rotation (max rate, then paced
    for latency), reduced to medians for the report.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

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
    report_cpu_row(name, row);
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

void
usage(void)
{
    fprintf(stderr,
            "usage: bench_xplain run [options]\n"
            "  --workloads LIST   comma list of tab32,tab32-b64,tab32-f16,tab16,wide128,\n"
            "                     tab32-fused,tab32-fused-f16 or nNLM\n"
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

int
cmd_run(int argc, char **argv)
{
    static char xpl[PATH_MAX], py[PATH_MAX];
    drv_t d = {.hwm = 100, .seconds = 3, .lat_seconds = 5, .reps = 3, .lat_reps = 3,
               .kinds = 7, .python = "/usr/bin/python3", .transport = "tcp"};
    snprintf(xpl, sizeof xpl, "%s", bench_self);
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
        report_long(&sm, &r);
        return 0;
    }

    report_header();
    bool have32 = false, have16 = false;
    row_t r32, r16;
    char list[1024];
    snprintf(list, sizeof list, "%s", wls);
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
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
                    report_row(&d, &w, nm, &row);
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
        report_row(&d, &w, t, &row);
        if (strcmp(t, "tab32") == 0) {
            have32 = true;
            r32 = row;
        } else if (strcmp(t, "tab16") == 0) {
            have16 = true;
            r16 = row;
        }
    }
    report_cpu_table();
    report_targets(&d, have32 ? &r32 : NULL, have16 ? &r16 : NULL);
    return 0;
}
