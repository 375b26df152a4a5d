/*  xplainctl top: a refreshing view of a model's global rankings (from an
    xpl_view: the Clone pattern) and its drift status (the drift query).
    Laid out for an 80 x 24 terminal.  */
#include "ctl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char s_help[] =
    "usage: xplainctl top [--model M] [--method M] [--segment S] [-k K]\n"
    "                     [--interval MS] [--once | --count N] [--ascii]\n"
    "\n"
    "A refreshing view of a model's explanations: the latest trade's strongest\n"
    "features, then the features of one method ranked by their mean over all\n"
    "trades (with the standard deviation)\n"
    "next to the exponentially decayed mean (recent trades; arrows show how a\n"
    "feature's rank differs there), then the drift status of every method\n"
    "against its reference (Spearman rho, nDCG@k, Jensen-Shannon) and the\n"
    "latest drift alerts, with the features that moved most in the method's\n"
    "last window. Runs until interrupted.\n"
    "\n"
    "  --model M       the model (default: the first the daemon lists, waited\n"
    "                  for when there is none yet)\n"
    "  --method M      the method whose ranking is shown (default rollout, or\n"
    "                  the model's first method)\n"
    "  --segment S     the drift status of one segment (a label such as\n"
    "                  desk=rates, as listed under drift; daemon run with\n"
    "                  --segment-by) instead of the model overall\n"
    "  -k, --top K     features shown (default 10)\n"
    "  --interval MS   refresh period (default 1000)\n"
    "  --once          print one frame and exit (same as --count 1)\n"
    "  --count N       print N frames, one per interval, and exit\n"
    "  --ascii         '#' bars instead of Unicode blocks\n"
    "\n"
    "When stdout is a terminal each frame replaces the last; otherwise frames\n"
    "are printed one after the other.\n"
    "\n" CTL_COMMON_HELP;

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    const char *model, *method, *segment;
    unsigned k;
    long interval_ms, count;
    bool ascii, tty;
} s_opts_t;

static void
s_fmt_stat(char *buf, size_t size, double v, const char *fmt)
{
    if (isnan(v))
        snprintf(buf, size, "%s", "-");
    else
        snprintf(buf, size, fmt, v);
}

/* Ranks (0 = largest) of values[0..n) by descending value. */
static void
s_ranks(const double *values, uint32_t n, uint32_t *rank)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = 0;
        for (uint32_t j = 0; j < n; j++)
            r += values[j] > values[i] || (values[j] == values[i] && j < i);
        rank[i] = r;
    }
}

static void
s_ranking(const s_opts_t *o, const xpl_global_t *g, const xpl_method_state_t *m)
{
    const char *bold = o->tty ? "\033[1m" : "", *off = o->tty ? "\033[0m" : "";
    uint32_t n = g->nfeat;
    uint32_t *rank = calloc(n ? n : 1, sizeof *rank), *drank = calloc(n ? n : 1, sizeof *drank);
    uint32_t *order = calloc(n ? n : 1, sizeof *order);
    if (!rank || !drank || !order) {
        free(rank);
        free(drank);
        free(order);
        return;
    }
    s_ranks(m->mean, n, rank);
    s_ranks(m->decayed, n, drank);
    for (uint32_t i = 0; i < n; i++)
        order[rank[i]] = i;
    double top = 0;
    for (uint32_t i = 0; i < n; i++)
        top = fmax(top, fmax(fabs(m->mean[i]), fabs(m->decayed[i])));

    /* One precision for the whole table, from its largest value. */
    int prec = top < 10 ? 4 : top < 1000 ? 2 : 0;
    printf("%s%s%s  %llu trades", bold, m->method, off, (unsigned long long)m->count);
    if (m->reference) {
        char rho[16];
        s_fmt_stat(rho, sizeof rho, m->reference_spearman, "%.2f");
        printf("  external reference: rho %s", rho);
    }
    printf("\n %2s  %-14s %-32s %s\n", "#", "feature", "mean (all trades)   ±std",
           "decayed (recent trades)");
    unsigned shown = o->k < n ? o->k : n;
    for (unsigned r = 0; r < shown; r++) {
        uint32_t i = order[r];
        char name[24], bar[4 * 16 + 1], dbar[4 * 11 + 1], move[16] = "";
        if (g->features)
            snprintf(name, sizeof name, "%s", g->features[i]);
        else
            snprintf(name, sizeof name, "#%u", i);
        ctl_bar(bar, top > 0 ? fabs(m->mean[i]) / top : 0, 16, o->ascii);
        ctl_bar(dbar, top > 0 ? fabs(m->decayed[i]) / top : 0, 11, o->ascii);
        if (drank[i] < rank[i])
            snprintf(move, sizeof move, "%s%u", o->ascii ? "+" : "▲", rank[i] - drank[i]);
        else if (drank[i] > rank[i])
            snprintf(move, sizeof move, "%s%u", o->ascii ? "-" : "▼", drank[i] - rank[i]);
        printf(" %2u  ", r + 1);
        ctl_print_cell(stdout, name, 14);
        printf(" %s %6.*f ±%-6.*f %s %6.*f %s\n", bar, prec, m->mean[i], prec, m->std[i], dbar,
               prec, m->decayed[i], move);
    }
    if (shown < n)
        printf("      … %u more features\n", n - shown);
    free(rank);
    free(drank);
    free(order);
}

/* What moved in the shown method's last window: name, change, ranks. */
static void
s_moved(const s_opts_t *o, const xpl_drift_state_t *d)
{
    const char *want = o->method ? o->method : "rollout";
    for (uint32_t i = 0; d->verdicts && i < d->nmethods; i++) {
        const xpl_verdict_t *v = &d->verdicts[i];
        if (strcmp(d->methods[i].method, want) != 0 || v->nmoved == 0)
            continue;
        printf("moved (%s)", want);
        ctl_print_moved(stdout, v, 4, o->ascii);
        printf("\n");
    }
}

static void
s_drift(const s_opts_t *o, const xpl_drift_state_t *d)
{
    const char *red = o->tty ? "\033[1;31m" : "", *green = o->tty ? "\033[32m" : "",
               *bold = o->tty ? "\033[1m" : "", *off = o->tty ? "\033[0m" : "";
    printf("%sdrift%s", bold, off);
    if (d->segment)
        printf(" %s", d->segment);
    if (d->mode && strcmp(d->mode, "fixed") != 0)
        printf("  windows of %llu trades; mode %s (departures beyond the calibrated spread)\n",
               (unsigned long long)d->window, d->mode);
    else
        printf("  windows of %llu trades; alert when rho < %.2f, nDCG@%u < %.2f, JS > %.2f\n",
               (unsigned long long)d->window, d->rho_min, d->ndcg_k, d->ndcg_min, d->js_max);
    printf(" %-14s %-9s %6s %6s %6s %7s  %s\n", "method", "reference", "window", "rho", "nDCG",
           "JS", "status");
    for (uint32_t i = 0; i < d->nmethods; i++) {
        const xpl_drift_method_t *m = &d->methods[i];
        char rho[16] = "-", ndcg[16] = "-", js[16] = "-", win[24] = "-", status[48];
        const char *color = "";
        if (m->has_last) {
            snprintf(win, sizeof win, "%llu", (unsigned long long)m->last.window);
            s_fmt_stat(rho, sizeof rho, m->last.spearman, "%.2f");
            s_fmt_stat(ndcg, sizeof ndcg, m->last.ndcg, "%.2f");
            s_fmt_stat(js, sizeof js, m->last.js, "%.3f");
        }
        if (!m->has_last)
            snprintf(status, sizeof status, "filling %llu/%llu", (unsigned long long)m->filled,
                     (unsigned long long)d->window);
        else if (!m->last.compared)
            snprintf(status, sizeof status, "became the baseline");
        else if (d->verdicts && d->verdicts[i].calibrating)
            snprintf(status, sizeof status, "calibrating");
        else if (m->last.alert) {
            snprintf(status, sizeof status, "ALERT");
            color = red;
        } else {
            snprintf(status, sizeof status, "ok");
            color = green;
        }
        printf(" ");
        ctl_print_cell(stdout, m->method, 14);
        printf(" %-9s %6s %6s %6s %7s  %s%s%s\n", m->reference, win, rho, ndcg, js, color, status,
               *color ? off : "");
    }
    s_moved(o, d);
    if (d->nsegments && !d->segment) {
        printf("segments ");
        for (uint32_t k = 0; k < d->nsegments && k < 6; k++)
            printf(" %.24s", d->segments[k]);
        if (d->nsegments > 6)
            printf(" (+%u)", d->nsegments - 6);
        if (d->segments_overflow)
            printf("  %llu trades untracked", (unsigned long long)d->segments_overflow);
        printf("\n");
    }
    printf("%salerts%s  %llu in all", bold, off, (unsigned long long)d->alerts_total);
    if (d->nalerts == 0) {
        printf("\n");
        return;
    }
    printf(", latest first:\n");
    for (uint32_t k = 0; k < d->nalerts && k < 2; k++) {
        const xpl_alert_t *a = &d->alerts[d->nalerts - 1 - k];
        time_t secs = (time_t)(a->ts / 1000000000);
        struct tm tm;
        char when[16] = "", rho[16], ndcg[16], js[16];
        if (localtime_r(&secs, &tm))
            strftime(when, sizeof when, "%H:%M:%S", &tm);
        s_fmt_stat(rho, sizeof rho, a->spearman, "%.2f");
        s_fmt_stat(ndcg, sizeof ndcg, a->ndcg, "%.2f");
        s_fmt_stat(js, sizeof js, a->js, "%.3f");
        printf(" %s  %-13s window %-5llu vs %-8s rho %s  nDCG %s  JS %s", when, a->method,
               (unsigned long long)a->window, a->reference, rho, ndcg, js);
        if (a->segment && !d->segment)
            printf("  %s", a->segment);
        if (a->verdict.nmoved) {
            printf("  moved");
            ctl_print_moved(stdout, &a->verdict, 2, o->ascii);
        }
        printf("\n");
    }
}

/* The latest trade of the model seen on xpl/ (kept across frames). */
static void
s_last_trade(const s_opts_t *o, xpl_sub_t *sub, xpl_explanation_t **last)
{
    xpl_event_t *ev;
    while (sub && (ev = xpl_sub_recv(sub, 0))) {
        if (ev->explanation) {
            xpl_explanation_destroy(last);
            *last = ev->explanation;
            ev->explanation = NULL;
        }
        xpl_event_destroy(&ev);
    }
    const xpl_explanation_t *x = *last;
    if (!x) {
        printf("last trade  (none seen yet)\n");
        return;
    }
    char id[40];
    if (x->id.is_str)
        snprintf(id, sizeof id, "%s", x->id.s);
    else
        snprintf(id, sizeof id, "%llu", (unsigned long long)x->id.u);
    const xpl_attr_t *a = xpl_explanation_attr(x, o->method ? o->method : "rollout");
    if (!a && x->nattr)
        a = &x->attr[0];
    printf("last trade %.16s", id);
    if (x->has_target)
        printf("  target %lld", (long long)x->target);
    if (!a || !x->features || x->nfeat != a->count) {
        printf("\n");
        return;
    }
    /* Its four strongest features (ties: lower index first). */
    uint32_t shown[4];
    int nshown = 0;
    while (nshown < 4 && (uint32_t)nshown < a->count) {
        int best = -1;
        for (uint32_t j = 0; j < a->count; j++) {
            bool taken = false;
            for (int k = 0; k < nshown; k++)
                taken = taken || shown[k] == j;
            if (!taken && (best < 0 || a->values[j] > a->values[best]))
                best = (int)j;
        }
        shown[nshown++] = (uint32_t)best;
        printf("  %.12s %.3f", x->features[best], a->values[best]);
    }
    printf("\n");
}

/* One frame. */
static void
s_frame(const s_opts_t *o, xpl_view_t *view, xpl_client_t *c, xpl_sub_t *sub,
        xpl_explanation_t **last)
{
    const char *bold = o->tty ? "\033[1m" : "", *off = o->tty ? "\033[0m" : "";
    if (o->tty)
        fputs("\033[H\033[J", stdout);
    xpl_global_t *g = xpl_view_state(view);
    xpl_view_stats_t vs;
    xpl_view_stats(view, &vs);
    time_t now = time(NULL);
    struct tm tm;
    char clock[16] = "";
    if (localtime_r(&now, &tm))
        strftime(clock, sizeof clock, "%H:%M:%S", &tm);
    printf("%sxplaind top%s  %s", bold, off, o->model);
    if (!g) {
        printf("  %s\n\nwaiting for global state (no trades aggregated yet)\n", clock);
        fflush(stdout);
        return;
    }
    printf("  epoch %llu  %llu trades  seq %llu  %s%s\n", (unsigned long long)g->epoch,
           (unsigned long long)g->count, (unsigned long long)g->seq, clock,
           vs.synced ? "" : "  (daemon unreachable: last known state)");
    s_last_trade(o, sub, last);
    printf("\n");
    const xpl_method_state_t *m = NULL;
    if (o->method)
        m = xpl_global_method(g, o->method);
    else if (!(m = xpl_global_method(g, "rollout")) && g->nmethods)
        m = &g->methods[0];
    if (m)
        s_ranking(o, g, m);
    else {
        printf("method '%s' has no global state; methods:", o->method ? o->method : "rollout");
        for (uint32_t i = 0; i < g->nmethods; i++)
            printf(" %s", g->methods[i].method);
        printf("\n");
    }
    printf("\n");
    xpl_drift_state_t *d = o->segment ? xpl_client_drift_segment(c, o->model, NULL, o->segment)
                                      : xpl_client_drift(c, o->model, NULL, NULL);
    if (d)
        s_drift(o, d);
    else
        printf("drift: %s\n", xpl_strerror());
    xpl_drift_state_destroy(&d);
    xpl_global_destroy(&g);
    fflush(stdout);
}

int
cmd_top(int argc, char **argv)
{
    s_opts_t o = {.k = 10, .interval_ms = 1000, .count = 0};
    ctl_args_t a;
    ctl_args_init(&a, "top", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (ctl_is(arg, "--model"))
            o.model = ctl_value(&a, arg, "--model");
        else if (ctl_is(arg, "--method"))
            o.method = ctl_value(&a, arg, "--method");
        else if (ctl_is(arg, "--segment"))
            o.segment = ctl_value(&a, arg, "--segment");
        else if (ctl_is(arg, "-k") || ctl_is(arg, "--top")) {
            const char *name = arg[1] == 'k' ? "-k" : "--top";
            long k = ctl_long(&a, name, ctl_value(&a, arg, name));
            if (k == 0)
                a.status = ctl_error("top", CTL_USAGE, "-k must be at least 1");
            o.k = k > 1000 ? 1000 : (unsigned)k;
        } else if (ctl_is(arg, "--interval")) {
            o.interval_ms = ctl_long(&a, "--interval", ctl_value(&a, arg, "--interval"));
            if (o.interval_ms == 0)
                a.status = ctl_error("top", CTL_USAGE, "--interval must be at least 1 ms");
        } else if (strcmp(arg, "--once") == 0)
            o.count = 1;
        else if (ctl_is(arg, "--count"))
            o.count = ctl_long(&a, "--count", ctl_value(&a, arg, "--count"));
        else if (strcmp(arg, "--ascii") == 0)
            o.ascii = true;
        else
            return ctl_error("top", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
    }
    if (a.status != CTL_OK)
        return a.status;
    o.tty = isatty(STDOUT_FILENO) && o.count != 1;

    ctl_catch_signals();
    xpl_client_t *c = ctl_client("top");
    if (!c)
        return CTL_FAIL;
    int rc = CTL_OK;
    char *first = NULL;
    /* Without --model, the first model the daemon lists. A daemon that
       has just started may have none yet: wait for one (on a terminal
       until interrupted, else up to the timeout). */
    int64_t deadline = s_now_ms() + ctl_common.timeout_ms;
    bool said = false;
    while (!o.model && rc == CTL_OK && !ctl_stopped()) {
        xpl_models_t *ms = xpl_client_models(c);
        if (!ms)
            rc = ctl_xpl_error("top");
        else if (ms->count > 0) {
            if (!(first = strdup(ms->models[0].model)))
                rc = ctl_error("top", CTL_FAIL, "out of memory");
            o.model = first;
        } else if (!isatty(STDOUT_FILENO) && s_now_ms() >= deadline)
            rc = ctl_error("top", CTL_FAIL, "the daemon has no models yet (use --model)");
        else {
            if (!said && isatty(STDOUT_FILENO))
                printf("waiting for the daemon's first model...\n");
            said = true;
            fflush(stdout);
            struct timespec ts = {0, 200 * 1000000L};
            nanosleep(&ts, NULL);
        }
        xpl_models_destroy(&ms);
    }
    xpl_view_t *view = NULL;
    xpl_sub_t *sub = NULL;
    xpl_explanation_t *last = NULL;
    const xpl_curve_t *curve = NULL;
    if (rc == CTL_OK && o.model) {
        if (ctl_curve("top", &curve))
            rc = CTL_FAIL;
        else if (!(view = xpl_view_new_curve(ctl_common.sub, ctl_common.query, o.model,
                                             ctl_common.timeout_ms, curve)) ||
                 !(sub = xpl_sub_new_curve(ctl_common.sub, ctl_common.query, curve)) ||
                 xpl_sub_subscribe(sub, XPL_KIND_XPL, o.model))
            rc = ctl_xpl_error("top");
    }
    for (long frame = 0; view && rc == CTL_OK && !ctl_stopped(); frame++) {
        if (frame > 0 && !o.tty)
            printf("\n");
        s_frame(&o, view, c, sub, &last);
        if (o.count && frame + 1 >= o.count)
            break;
        /* Sleep one interval, waking early only to stop. */
        uint64_t v = xpl_view_version(view);
        int64_t until = s_now_ms() + o.interval_ms;
        while (!ctl_stopped() && s_now_ms() < until) {
            int64_t left = until - s_now_ms();
            if (xpl_view_wait(view, v, left < 100 ? (int)left : 100) == 0)
                v = xpl_view_version(view);
        }
    }
    if (o.tty && rc == CTL_OK)
        printf("\n");
    xpl_explanation_destroy(&last);
    xpl_sub_destroy(&sub);
    xpl_view_destroy(&view);
    xpl_client_destroy(&c);
    free(first);
    return rc;
}
