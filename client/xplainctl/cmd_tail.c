/*  xplainctl tail: live per-trade explanations.  */
#include "ctl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_FILTER 16

static const char s_help[] =
    "usage: xplainctl tail [--drift [--segment S]] [--model M]... [--method M]... [-k K]\n"
    "                      [--count N] [--json]\n"
    "\n"
    "Print per-trade explanations as the daemon publishes them: for each\n"
    "method, the K features with the largest attribution and a bar scaled to\n"
    "the largest. Runs until interrupted, or until N trades were printed.\n"
    "\n"
    "With --drift, print closed drift windows instead (drift/): each\n"
    "method's statistics, the verdict of the drift mode (alert, the\n"
    "statistics that alerted, their standardised departures z and CUSUMs)\n"
    "and the K features that moved most against the reference (change of\n"
    "value and of rank); N then counts windows.\n"
    "\n"
    "  --drift         closed drift windows, of the model overall and of\n"
    "                  every segment (daemon run with --segment-by)\n"
    "  --segment S     only the windows of segment S (a label such as\n"
    "                  desk=rates); implies --drift\n"
    "  --model M       only this model (repeatable; default every model)\n"
    "  --method M      only this method (repeatable; default every method)\n"
    "  -k, --top K     features per method (default 5)\n"
    "  --count N       exit after N trades (0: never, the default)\n"
    "  --wait MS       with --count: fail when no trade came for MS (default\n"
    "                  10000); without: keep waiting\n"
    "  --json          one JSON object per trade and line, every feature\n"
    "  --ascii         '#' bars instead of Unicode blocks\n"
    "\n" CTL_COMMON_HELP;

typedef struct {
    const char *models[S_MAX_FILTER];
    int nmodels;
    const char *methods[S_MAX_FILTER];
    int nmethods;
    unsigned k;
    bool json, ascii;
    bool drift;
    const char *segment;        /* --segment: only its windows */
} s_opts_t;

static bool
s_method_wanted(const s_opts_t *o, const char *m)
{
    if (o->nmethods == 0)
        return true;
    for (int i = 0; i < o->nmethods; i++)
        if (strcmp(o->methods[i], m) == 0)
            return true;
    return false;
}

static void
s_json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void
s_json_num(double x)
{
    if (isfinite(x))
        printf("%.9g", x);
    else
        fputs("null", stdout);
}

static void
s_print_json(const s_opts_t *o, const xpl_explanation_t *e)
{
    fputs("{\"model\": ", stdout);
    s_json_str(e->model);
    fputs(", \"id\": ", stdout);
    if (e->id.is_str)
        s_json_str(e->id.s);
    else
        printf("%llu", (unsigned long long)e->id.u);
    printf(", \"seq\": %llu, \"ts\": %lld, \"epoch\": %llu", (unsigned long long)e->seq,
           (long long)e->ts, (unsigned long long)e->epoch);
    if (e->has_target)
        printf(", \"target\": %lld", (long long)e->target);
    if (e->has_y) {
        fputs(", \"y\": ", stdout);
        s_json_num(e->y);
    }
    fputs(", \"features\": ", stdout);
    if (e->features) {
        putchar('[');
        for (uint32_t j = 0; j < e->nfeat; j++) {
            if (j)
                fputs(", ", stdout);
            s_json_str(e->features[j]);
        }
        putchar(']');
    } else
        fputs("null", stdout);
    fputs(", \"attr\": {", stdout);
    int printed = 0;
    for (uint32_t i = 0; i < e->nattr; i++) {
        if (!s_method_wanted(o, e->attr[i].method))
            continue;
        if (printed++)
            fputs(", ", stdout);
        s_json_str(e->attr[i].method);
        fputs(": [", stdout);
        for (uint32_t j = 0; j < e->attr[i].count; j++) {
            if (j)
                fputs(", ", stdout);
            s_json_num(e->attr[i].values[j]);
        }
        putchar(']');
    }
    fputs("}}\n", stdout);
}

static void
s_print_text(const s_opts_t *o, const xpl_explanation_t *e)
{
    time_t secs = (time_t)(e->ts / 1000000000);
    struct tm tm;
    char when[32] = "";
    if (localtime_r(&secs, &tm))
        strftime(when, sizeof when, "%H:%M:%S", &tm);
    printf("%s  ", e->model);
    ctl_print_id(stdout, &e->id);
    printf("  seq %llu  epoch %llu", (unsigned long long)e->seq, (unsigned long long)e->epoch);
    if (e->has_target)
        printf("  target %lld", (long long)e->target);
    if (e->has_y)
        printf("  y %.4g", e->y);
    printf("  %s.%03lld\n", when, (long long)(e->ts / 1000000 % 1000));
    for (uint32_t i = 0; i < e->nattr; i++) {
        const xpl_attr_t *a = &e->attr[i];
        if (!s_method_wanted(o, a->method) || a->count == 0)
            continue;
        unsigned k = o->k < a->count ? o->k : a->count;
        unsigned idx[64];
        if (k > 64)
            k = 64;
        ctl_topk(a->values, a->count, idx, k);
        double top = fabs(a->values[idx[0]]);
        for (unsigned r = 0; r < k; r++) {
            float v = a->values[idx[r]];
            char name[32], bar[4 * 32 + 1];
            if (e->features)
                snprintf(name, sizeof name, "%s", e->features[idx[r]]);
            else
                snprintf(name, sizeof name, "#%u", idx[r]);
            ctl_bar(bar, top > 0 ? fabs(v) / top : 0, 30, o->ascii);
            printf("  ");
            ctl_print_cell(stdout, r == 0 ? a->method : "", 13);
            ctl_print_cell(stdout, name, 18);
            printf(" %s %9.4f\n", bar, v);
        }
    }
    fflush(stdout);
}

/* ---- drift windows ------------------------------------------------------ */

static const char *s_stat_names[3] = {"spearman", "ndcg", "js"};

static void
s_json_per_stat(const double *v)
{
    putchar('{');
    for (int i = 0; i < 3; i++) {
        printf("%s\"%s\": ", i ? ", " : "", s_stat_names[i]);
        s_json_num(v[i]);
    }
    putchar('}');
}

static void
s_print_drift_json(const s_opts_t *o, const xpl_drift_t *d)
{
    fputs("{\"model\": ", stdout);
    s_json_str(d->model);
    fputs(", \"segment\": ", stdout);
    if (d->segment)
        s_json_str(d->segment);
    else
        fputs("null", stdout);
    fputs(", \"method\": ", stdout);
    s_json_str(d->method);
    const xpl_window_t *w = &d->window;
    printf(", \"seq\": %llu, \"epoch\": %llu, \"window\": %llu, \"trades\": %llu, \"ts\": %lld",
           (unsigned long long)d->seq, (unsigned long long)d->epoch,
           (unsigned long long)w->window, (unsigned long long)d->trades, (long long)w->ts);
    fputs(", \"reference\": ", stdout);
    s_json_str(w->reference);
    printf(", \"compared\": %s, \"spearman\": ", w->compared ? "true" : "false");
    s_json_num(w->spearman);
    fputs(", \"ndcg\": ", stdout);
    s_json_num(w->ndcg);
    fputs(", \"js\": ", stdout);
    s_json_num(w->js);
    printf(", \"alert\": %s, \"verdict\": {\"mode\": ", w->alert ? "true" : "false");
    const xpl_verdict_t *v = &d->verdict;
    if (v->mode)
        s_json_str(v->mode);
    else
        fputs("null", stdout);
    printf(", \"calibrating\": %s, \"z\": ", v->calibrating ? "true" : "false");
    s_json_per_stat(v->z);
    fputs(", \"cusum\": ", stdout);
    s_json_per_stat(v->cusum);
    fputs(", \"alerts\": [", stdout);
    for (int i = 0, n = 0; i < 3; i++)
        if (v->alerted[i])
            printf("%s\"%s\"", n++ ? ", " : "", s_stat_names[i]);
    fputs("]}, \"moved\": [", stdout);
    for (uint32_t k = 0; k < v->nmoved && k < o->k; k++) {
        const xpl_moved_t *m = &v->moved[k];
        fputs(k ? ", {\"feature\": " : "{\"feature\": ", stdout);
        if (m->feature)
            s_json_str(m->feature);
        else
            fputs("null", stdout);
        printf(", \"index\": %u, \"ref\": ", m->index);
        s_json_num(m->ref);
        fputs(", \"cur\": ", stdout);
        s_json_num(m->cur);
        fputs(", \"delta\": ", stdout);
        s_json_num(m->delta);
        printf(", \"ref_rank\": %u, \"rank\": %u, \"rank_up\": %d}", m->ref_rank, m->rank,
               m->rank_up);
    }
    fputs("]}\n", stdout);
}

static void
s_fmt(char *buf, size_t n, double x, const char *fmt)
{
    if (isfinite(x))
        snprintf(buf, n, fmt, x);
    else
        snprintf(buf, n, "-");
}

static void
s_print_drift_text(const s_opts_t *o, const xpl_drift_t *d)
{
    const xpl_window_t *w = &d->window;
    const xpl_verdict_t *v = &d->verdict;
    char rho[16], ndcg[16], js[16];
    s_fmt(rho, sizeof rho, w->spearman, "%.2f");
    s_fmt(ndcg, sizeof ndcg, w->ndcg, "%.2f");
    s_fmt(js, sizeof js, w->js, "%.3f");
    printf("%s", d->model);
    if (d->segment)
        printf(" %s", d->segment);
    printf("  %s  window %llu (%llu trades)  epoch %llu\n", d->method,
           (unsigned long long)w->window, (unsigned long long)d->trades,
           (unsigned long long)d->epoch);
    if (!w->compared) {
        printf("  became the %s\n", w->reference);
        fflush(stdout);
        return;
    }
    printf("  vs %-8s rho %s  nDCG %s  JS %s  ", w->reference, rho, ndcg, js);
    if (v->calibrating)
        printf("calibrating");
    else if (w->alert) {
        printf("ALERT (");
        for (int i = 0, n = 0; i < 3; i++)
            if (v->alerted[i])
                printf("%s%s", n++ ? "," : "", s_stat_names[i]);
        printf(")");
    } else
        printf("ok");
    if (v->mode)
        printf("  mode %s", v->mode);
    printf("\n");
    /* The evidence of the calibrated and cusum modes, where scored. */
    for (int pass = 0; pass < 2; pass++) {
        const double *x = pass ? v->cusum : v->z;
        if (!isfinite(x[0]) && !isfinite(x[1]) && !isfinite(x[2]))
            continue;
        char a[16], b[16], c[16];
        s_fmt(a, sizeof a, x[0], "%.2f");
        s_fmt(b, sizeof b, x[1], "%.2f");
        s_fmt(c, sizeof c, x[2], "%.2f");
        printf("  %-5s rho %s  nDCG %s  JS %s\n", pass ? "cusum" : "z", a, b, c);
    }
    if (v->nmoved) {
        printf("  moved");
        ctl_print_moved(stdout, v, o->k, o->ascii);
        printf("\n");
    }
    fflush(stdout);
}

/* A drift window the options ask for. */
static bool
s_drift_wanted(const s_opts_t *o, const xpl_drift_t *d)
{
    if (o->segment && (!d->segment || strcmp(d->segment, o->segment) != 0))
        return false;
    return s_method_wanted(o, d->method);
}

int
cmd_tail(int argc, char **argv)
{
    s_opts_t o = {.k = 5};
    long count = 0, wait_ms = -1;
    ctl_args_t a;
    ctl_args_init(&a, "tail", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        const char *v;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (ctl_is(arg, "--model")) {
            if ((v = ctl_value(&a, arg, "--model")) && o.nmodels < S_MAX_FILTER)
                o.models[o.nmodels++] = v;
        } else if (ctl_is(arg, "--method")) {
            if ((v = ctl_value(&a, arg, "--method")) && o.nmethods < S_MAX_FILTER)
                o.methods[o.nmethods++] = v;
        } else if (ctl_is(arg, "-k") || ctl_is(arg, "--top")) {
            const char *name = arg[1] == 'k' ? "-k" : "--top";
            long k = ctl_long(&a, name, ctl_value(&a, arg, name));
            if (k == 0)
                a.status = ctl_error("tail", CTL_USAGE, "-k must be at least 1");
            o.k = k > 64 ? 64 : (unsigned)k;
        } else if (ctl_is(arg, "--count"))
            count = ctl_long(&a, "--count", ctl_value(&a, arg, "--count"));
        else if (ctl_is(arg, "--wait"))
            wait_ms = ctl_long(&a, "--wait", ctl_value(&a, arg, "--wait"));
        else if (strcmp(arg, "--drift") == 0)
            o.drift = true;
        else if (ctl_is(arg, "--segment")) {
            if ((v = ctl_value(&a, arg, "--segment")) && !*v)
                a.status = ctl_error("tail", CTL_USAGE, "--segment needs a label (desk=rates)");
            o.segment = v;
            o.drift = true;
        } else if (strcmp(arg, "--json") == 0)
            o.json = true;
        else if (strcmp(arg, "--ascii") == 0)
            o.ascii = true;
        else
            return ctl_error("tail", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
    }
    if (a.status != CTL_OK)
        return a.status;
    if (wait_ms < 0)
        wait_ms = count > 0 ? 10000 : -1;

    ctl_catch_signals();
    const xpl_curve_t *curve;
    if (ctl_curve("tail", &curve))
        return CTL_FAIL;
    xpl_sub_t *sub = xpl_sub_new_curve(ctl_common.sub, ctl_common.query, curve);
    if (!sub)
        return ctl_xpl_error("tail");
    xpl_client_set_timeout(xpl_sub_client(sub), ctl_common.timeout_ms);
    int rc = CTL_OK;
    /* An unknown model is an error at once rather than a silent wait. */
    if (o.nmodels) {
        xpl_client_t *c = ctl_client("tail");
        xpl_models_t *ms = c ? xpl_client_models(c) : NULL;
        if (!ms)
            rc = c ? ctl_xpl_error("tail") : CTL_FAIL;
        for (int i = 0; ms && i < o.nmodels && rc == CTL_OK; i++)
            if (!xpl_models_find(ms, o.models[i]))
                rc = ctl_error("tail", CTL_FAIL, "unknown model '%s'", o.models[i]);
        xpl_models_destroy(&ms);
        xpl_client_destroy(&c);
    }
    xpl_kind_t kind = o.drift ? XPL_KIND_DRIFT : XPL_KIND_XPL;
    for (int i = 0; i < o.nmodels && rc == CTL_OK; i++)
        if (xpl_sub_subscribe(sub, kind, o.models[i]))
            rc = ctl_xpl_error("tail");
    if (rc == CTL_OK && o.nmodels == 0 && xpl_sub_subscribe(sub, kind, NULL))
        rc = ctl_xpl_error("tail");
    for (long seen = 0; rc == CTL_OK && (count == 0 || seen < count);) {
        xpl_event_t *ev = xpl_sub_recv(sub, (int)wait_ms);
        if (!ev) {
            if (xpl_errno() == XPL_EINTR || ctl_stopped())
                break;
            if (xpl_errno() == XPL_ETIMEOUT)
                rc = ctl_error("tail", CTL_FAIL,
                               "no %s within %ld ms from %s (is xplaind running and "
                               "fed?)%s", o.drift ? "drift window" : "explanation",
                               wait_ms, ctl_common.sub, ctl_curve_hint());
            else
                rc = ctl_xpl_error("tail");
            break;
        }
        if (o.drift) {
            if (ev->drift && s_drift_wanted(&o, ev->drift)) {
                if (o.json)
                    s_print_drift_json(&o, ev->drift);
                else
                    s_print_drift_text(&o, ev->drift);
                seen++;
            }
            xpl_event_destroy(&ev);
            continue;
        }
        if (o.json)
            s_print_json(&o, ev->explanation);
        else
            s_print_text(&o, ev->explanation);
        seen++;
        xpl_event_destroy(&ev);
    }
    fflush(stdout);
    xpl_sub_destroy(&sub);
    return rc;
}
