/*  report: what bench_xplain prints: the main table (one row per
    workload), the CPU table, the long run, the TARGET lines gathered
    by bench/run.sh, and the malloc counter's summary. Medians of
    repetitions are taken here too.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <inttypes.h>
#include <math.h>

/* The CPU table is printed after the main one. */
static char s_cpu_tab[16384];
static size_t s_cpu_len;

static int
s_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double
median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, s_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void
report_header(void)
{
    printf("| workload | MB/trade | sink trades/s | xplaind trades/s | python trades/s | b/a | b/c "
           "| rate for latency | sink p50/p99/p99.9 us | xplaind p50/p99/p99.9 us | added p99 us "
           "| daemon-internal p50/p99/p99.9 us | daemon VmHWM MB |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
}

void
report_row(const drv_t *d, const wl_t *w, const char *name, const row_t *r)
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

/* One row of the CPU table (printed after the main one). */
void
report_cpu_row(const char *name, const row_t *row)
{
    s_cpu_len += (size_t)snprintf(s_cpu_tab + s_cpu_len, sizeof s_cpu_tab - s_cpu_len,
        "| %s | %.1f | %.1f | %.1f | %.1f (%.1f) | %.1f | %.1f | %.1f | %.2f |\n", name,
        row->cpu[K_SINK][0], row->cpu[K_SINK][1], row->cpu[K_XPLAIND][0],
        row->cpu[K_XPLAIND][2], row->cpu_dmain, row->cpu[K_XPLAIND][1], row->cpu[K_PYTHON][0],
        row->cpu[K_PYTHON][1],
        row->cpu_ab);
    if (s_cpu_len >= sizeof s_cpu_tab)
        s_cpu_len = sizeof s_cpu_tab - 1;
}

void
report_cpu_table(void)
{
    printf("\nCPU time per trade in the max-rate runs (user + system, all threads, us; "
           "medians). On 2 shared cores the throughput is bounded by the sum.\n\n");
    printf("| workload | (a) publisher | (a) sink | (b) publisher | (b) xplaind (its main thread) | (b) subscriber "
           "| (c) publisher | (c) python | CPU ratio a/b |\n|---|---|---|---|---|---|---|---|---|\n");
    fputs(s_cpu_tab, stdout);
}

/* The long run's table and its target line. */
void
report_long(const sampler_t *sm, const res_t *r)
{
    double growth = sm->rss_1m > 0 ? 100.0 * (double)(sm->rss_end - sm->rss_1m) / (double)sm->rss_1m : 0;
    printf("| long run | trades | VmRSS at %.1fM trades | VmRSS at %.1fM trades | growth | VmHWM | trades/s |\n",
           (double)sm->at1m_trades / 1e6, (double)sm->at_end_trades / 1e6);
    printf("|---|---|---|---|---|---|---|\n");
    printf("| tab16 xplaind | %" PRIu64 " | %.1f MB | %.1f MB | %+.1f%% | %.1f MB | %.0f |\n",
           r->count, (double)sm->rss_1m / 1024, (double)sm->rss_end / 1024, growth,
           (double)sm->hwm_end / 1024, r->tps);
    if (sm->rss_1m > 0)
        printf("TARGET|RSS growth of xplaind from %.1fM to %.1fM trades (tab16)|%+.1f%%|within 10%%|%s\n",
               (double)sm->at1m_trades / 1e6, (double)sm->at_end_trades / 1e6, growth,
               fabs(growth) <= 10 ? "yes" : "no");
}

/* Machine-readable target lines, gathered by bench/run.sh: r32 and r16
   are the rows of tab32 and tab16, NULL when not measured. */
void
report_targets(const drv_t *d, const row_t *r32, const row_t *r16)
{
    const char *lb = d->label ? d->label : "";
    if (d->label && strcmp(d->label, "-") == 0)
        r32 = r16 = NULL;
    if (r32 && r32->tps[K_SINK] > 0) {
        double v = r32->ab;
        printf("TARGET|%stab32: xplaind / null sink throughput|%.2f|>= 0.9|%s\n", lb, v,
               v >= 0.9 ? "yes" : "no");
        if (r32->rate > 0) {
            double a = r32->added_p99;
            printf("TARGET|%stab32: p99 added latency at 50%% load (xplaind - sink)|%.0f us|<= 200 us|%s\n",
                   lb, a, a <= 200 ? "yes" : "no");
            printf("TARGET|%stab32: context: the daemon's own receive-to-publish p99 at that load|%.0f us|-|-\n",
                   lb, r32->d_lat[1]);
        }
        printf("TARGET|%stab32: context: CPU per trade, (publisher + sink) / (publisher + xplaind + subscriber)|%.2f|-|-\n",
               lb, r32->cpu_ab);
    }
    if (r16 && r16->tps[K_SINK] > 0) {
        double v = r16->ab;
        printf("TARGET|%stab16 B=1: xplaind / null sink throughput|%.2f|>= 0.8|%s\n", lb, v,
               v >= 0.8 ? "yes" : "no");
        if (r16->tps[K_PYTHON] > 0) {
            double bc = r16->bc;
            printf("TARGET|%stab16 B=1: xplaind / Python consumer throughput|%.1f|>= 5|%s\n", lb, bc,
                   bc >= 5 ? "yes" : "no");
        }
        printf("TARGET|%stab16 B=1: context: CPU per trade, (publisher + sink) / (publisher + xplaind + subscriber)|%.2f|-|-\n",
               lb, r16->cpu_ab);
    }
}

/* Summarise the malloc counter's file: allocations per trade and per
   message, by thread and by library, and the busiest call sites. */
void
report_malloc(const char *dir, double trades, double msgs)
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
