/*  xplainctl report: one self-contained HTML page about a model (global
    attributions, drift windows and alerts, head statistics, agreement
    with an external reference, a trade's heatmap), for people who read
    rather than watch a terminal. Inline CSS and SVG only: the file opens
    anywhere, offline, and can be mailed or archived as it is.

    The daemon keeps only each method's last drift window and the last
    alerts; the windows in between, and the head statistics, exist only as
    drift/ and heads/ messages. So the report listens to them for a while
    (--listen) before it takes its snapshots with the queries.  */
#include "ctl.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char s_help[] =
    "usage: xplainctl report --model M [-o FILE] [--listen S] [--top K]\n"
    "                        [--trade ID]\n"
    "\n"
    "Write one self-contained HTML file about a model (inline CSS and SVG, no\n"
    "network access needed to open it): the global attribution of every\n"
    "method (mean ± std over the trades, decayed mean), the drift statistics\n"
    "of each closed window against their thresholds, with the alerts, the\n"
    "head importance and confidence heatmaps, the agreement with an external\n"
    "reference when one is set, and the heatmap of one trade.\n"
    "\n"
    "The daemon keeps only the last window of each method and its last\n"
    "alerts, so the report first listens to drift/, heads/ and xpl/ for S\n"
    "seconds to collect the windows that close meanwhile, the current head\n"
    "statistics (published while trades arrive) and a recent trade.\n"
    "\n"
    "  --model M       the model\n"
    "  -o, --output F  where to write the HTML (default '-': stdout)\n"
    "  --listen S      seconds to listen first (default 5; 0: queries only)\n"
    "  --top K         features per attribution chart, largest first\n"
    "                  (default 30; 0: all)\n"
    "  --trade ID      the trade whose heatmap to show (default: the last one\n"
    "                  seen while listening, if still in the trade cache)\n"
    "\n" CTL_COMMON_HELP;

/* ---- what the report collects ------------------------------------------- */

typedef struct {
    char method[32];
    uint64_t epoch;
    xpl_window_t w;             /* w.reference points into `ref` */
    char ref[16];
} s_win_t;

typedef struct {
    const char *model;
    xpl_models_t *models;
    xpl_schema_t *schema;
    xpl_global_t *global;
    xpl_drift_state_t *drift;
    xpl_heads_t *heads;
    xpl_explanation_t *trade;
    s_win_t *wins;
    size_t nwins, capwins;
    char version[64];
    double listened_s;
    uint64_t drift_msgs;
    unsigned top;
    char note[256];             /* why there is no trade heatmap */
} s_report_t;

static void
s_add_window(s_report_t *r, const char *method, uint64_t epoch, const xpl_window_t *w)
{
    for (size_t i = 0; i < r->nwins; i++)
        if (r->wins[i].epoch == epoch && r->wins[i].w.window == w->window &&
            strcmp(r->wins[i].method, method) == 0)
            return;
    if (r->nwins == r->capwins) {
        size_t cap = r->capwins ? 2 * r->capwins : 64;
        s_win_t *p = realloc(r->wins, cap * sizeof *p);
        if (!p)
            return;
        r->wins = p;
        r->capwins = cap;
    }
    s_win_t *x = &r->wins[r->nwins++];
    snprintf(x->method, sizeof x->method, "%s", method);
    x->epoch = epoch;
    x->w = *w;
    snprintf(x->ref, sizeof x->ref, "%s", w->reference ? w->reference : "");
    x->w.reference = x->ref;
}

static int
s_cmp_win(const void *a, const void *b)
{
    const s_win_t *x = a, *y = b;
    int c = strcmp(x->method, y->method);
    if (c)
        return c;
    if (x->epoch != y->epoch)
        return x->epoch < y->epoch ? -1 : 1;
    return x->w.window < y->w.window ? -1 : x->w.window > y->w.window;
}

/* Listen to drift/, heads/ and xpl/ of the model for `seconds`. */
static int
s_listen(s_report_t *r, double seconds, char *last_id, size_t id_size, bool *last_is_str,
         uint64_t *last_u)
{
    const xpl_curve_t *curve = NULL;
    if (ctl_curve("report", &curve))
        return CTL_FAIL;
    xpl_sub_t *sub = xpl_sub_new_curve(ctl_common.sub, NULL, curve);
    if (!sub || xpl_sub_subscribe(sub, XPL_KIND_DRIFT | XPL_KIND_HEADS | XPL_KIND_XPL,
                                  r->model) != 0) {
        xpl_sub_destroy(&sub);
        return ctl_xpl_error("report");
    }
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double el = (double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
        r->listened_s = el;
        if (el >= seconds || ctl_stopped())
            break;
        int wait = (int)((seconds - el) * 1000) + 1;
        xpl_event_t *ev = xpl_sub_recv(sub, wait > 200 ? 200 : wait);
        if (!ev) {
            if (xpl_errno() == XPL_ETIMEOUT || xpl_errno() == XPL_EINTR)
                continue;
            xpl_sub_destroy(&sub);
            return ctl_xpl_error("report");
        }
        if (ev->drift) {
            r->drift_msgs++;
            s_add_window(r, ev->drift->method, ev->drift->epoch, &ev->drift->window);
        } else if (ev->heads) {
            xpl_heads_destroy(&r->heads);
            r->heads = ev->heads;
            ev->heads = NULL;
        } else if (ev->explanation) {
            const xpl_id_t *id = &ev->explanation->id;
            *last_is_str = id->is_str;
            *last_u = id->u;
            if (id->is_str)
                snprintf(last_id, id_size, "%s", id->s);
            else
                snprintf(last_id, id_size, "%llu", (unsigned long long)id->u);
        }
        xpl_event_destroy(&ev);
    }
    xpl_sub_destroy(&sub);
    return CTL_OK;
}

/* ---- HTML helpers ------------------------------------------------------- */

static void
s_h(FILE *f, const char *s)
{
    svg_xml(f, s);
}

static void
s_time(char *buf, size_t size, int64_t ns)
{
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    if (ns <= 0 || !gmtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%d %H:%M:%SZ", &tm))
        snprintf(buf, size, "–");
}

static void
s_stat(FILE *f, double v, bool bad)
{
    if (isnan(v))
        fputs("<td class=\"num\">undefined</td>", f);
    else    /* small values keep their digits: a JS of 2e-4 is not 0 */
        fprintf(f, v != 0 && fabs(v) < 0.001 ? "<td class=\"num%s\">%.2e</td>"
                                             : "<td class=\"num%s\">%.3f</td>",
                bad ? " bad" : "", v);
}

static const char s_css[] =
    "body{font-family:DejaVu Sans,Verdana,Arial,sans-serif;margin:24px;color:#222;"
    "background:#fff}\n"
    "h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;"
    "border-bottom:1px solid #ccc;padding-bottom:4px}h3{font-size:15px;margin:20px 0 6px}\n"
    "p,li{font-size:13px;line-height:1.45;max-width:62em}\n"
    ".meta{color:#555;font-size:13px}\n"
    "table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px}\n"
    "th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}\n"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}\n"
    ".bad{color:#b00;font-weight:bold}.ok{color:#176117}\n"
    ".chart{overflow-x:auto;margin:8px 0 16px}.chart svg{display:block}\n"
    "nav a{margin-right:14px;font-size:13px}\n";

/* ---- sections ----------------------------------------------------------- */

static void
s_summary(FILE *f, const s_report_t *r)
{
    const xpl_model_info_t *mi = r->models ? xpl_models_find(r->models, r->model) : NULL;
    char now[40];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s_time(now, sizeof now, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
    fputs("<h1>xplaind report: ", f);
    s_h(f, r->model);
    fprintf(f, "</h1>\n<p class=\"meta\">written %s by xplainctl %s from xplaind %s at ", now,
            xpl_version(), r->version);
    s_h(f, ctl_common.query);
    fprintf(f, "; listened %.1f s to the model's messages</p>\n", r->listened_s);
    fputs("<nav><a href=\"#global\">global attributions</a><a href=\"#drift\">drift</a>"
          "<a href=\"#heads\">heads</a><a href=\"#reference\">reference</a>"
          "<a href=\"#trade\">a trade</a></nav>\n",
          f);
    if (!mi)
        return;
    char last[40];
    s_time(last, sizeof last, mi->last_ts);
    fprintf(f, "<table id=\"summary\"><tr><th>epoch</th><th>layers × heads</th><th>tokens</th>"
               "<th>trades</th><th>explained</th><th>rejected</th><th>lost</th>"
               "<th>last message</th></tr>\n<tr><td class=\"num\">%llu</td>"
               "<td class=\"num\">%u × %u</td><td class=\"num\">%u%s</td>"
               "<td class=\"num\">%llu</td><td class=\"num\">%llu</td>"
               "<td class=\"num%s\">%llu</td><td class=\"num%s\">%llu</td><td>%s</td></tr>"
               "</table>\n",
            (unsigned long long)mi->epoch, mi->L, mi->H, mi->n, mi->cls >= 0 ? " (CLS)" : "",
            (unsigned long long)mi->trades, (unsigned long long)mi->explained,
            mi->rejected ? " bad" : "", (unsigned long long)mi->rejected,
            mi->lost ? " bad" : "", (unsigned long long)mi->lost, last);
}

/* Feature order by descending values, the first `k` of n. */
static uint32_t *
s_order(const double *v, uint32_t n)
{
    uint32_t *o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        o[i] = i;
    /* Insertion sort: n is a model's feature count. */
    for (uint32_t i = 1; i < n; i++) {
        uint32_t x = o[i], j = i;
        while (j > 0 && v[o[j - 1]] < v[x]) {
            o[j] = o[j - 1];
            j--;
        }
        o[j] = x;
    }
    return o;
}

static const char *
s_feature(const xpl_global_t *g, uint32_t i, char *buf, size_t size)
{
    if (g->features)
        return g->features[i];
    snprintf(buf, size, "#%u", i);
    return buf;
}

static void
s_global(FILE *f, const s_report_t *r)
{
    const xpl_global_t *g = r->global;
    fputs("<section id=\"global\"><h2>Global attributions</h2>\n", f);
    if (!g) {
        fputs("<p>No global state yet: the daemon has explained no trade of this model in its "
              "current epoch.</p></section>\n",
              f);
        return;
    }
    fprintf(f, "<p>Per method, the mean attribution of each feature over the %llu trades of "
               "epoch %llu, with whiskers of ± one sample standard deviation (the spread "
               "between trades), and the exponentially decayed mean (half-life %.0f trades), "
               "which follows recent trades. Features sorted by mean, largest first",
            (unsigned long long)g->count, (unsigned long long)g->epoch, g->half_life);
    if (r->top && r->top < g->nfeat)
        fprintf(f, "; the %u largest of %u shown", r->top, g->nfeat);
    fputs(".</p>\n", f);
    uint32_t n = g->nfeat, shown = r->top && r->top < n ? r->top : n;
    const char **labels = calloc(n ? n : 1, sizeof *labels);
    double *buf = malloc(3 * (size_t)(n ? n : 1) * sizeof *buf);
    char (*names)[16] = calloc(n ? n : 1, sizeof *names);
    for (uint32_t m = 0; labels && buf && names && m < g->nmethods; m++) {
        const xpl_method_state_t *ms = &g->methods[m];
        uint32_t *o = s_order(ms->mean, n);
        if (!o)
            break;
        double *mean = buf, *std = buf + n, *dec = buf + 2 * n;
        for (uint32_t k = 0; k < shown; k++) {
            labels[k] = s_feature(g, o[k], names[k], sizeof names[k]);
            mean[k] = ms->mean[o[k]];
            std[k] = ms->std[o[k]];
            dec[k] = ms->decayed[o[k]];
        }
        char title[96], sub[160];
        snprintf(title, sizeof title, "%s", ms->method);
        snprintf(sub, sizeof sub, "%llu trades; mean ± std over them, and the decayed mean",
                 (unsigned long long)ms->count);
        char id[48];
        snprintf(id, sizeof id, "global-%s", ms->method);
        svg_series_t s[2] = {
            {.name = "mean ± std", .values = mean, .err = std,
             .err_name = "whiskers: ± one sample standard deviation over the trades"},
            {.name = "decayed mean", .values = dec},
        };
        svg_bars_t b = {.title = title, .subtitle = sub, .rows = shown, .labels = labels,
                        .nseries = 2, .series = s, .id = id};
        fputs("<div class=\"chart\">", f);
        svg_bars(f, &b);
        fputs("</div>\n", f);
        free(o);
    }
    free(labels);
    free(buf);
    free(names);
    fputs("</section>\n", f);
}

static void
s_drift(FILE *f, s_report_t *r)
{
    const xpl_drift_state_t *d = r->drift;
    fputs("<section id=\"drift\"><h2>Drift</h2>\n", f);
    if (!d) {
        fputs("<p>No drift state (the drift query failed).</p></section>\n", f);
        return;
    }
    fprintf(f, "<p>Every window of %llu trades is compared with the method's reference; a "
               "window alerts when Spearman's ρ &lt; %.3g, nDCG@%u &lt; %.3g or the "
               "Jensen-Shannon divergence &gt; %.3g (an undefined statistic never alerts). "
               "The daemon keeps the last window of each method and its last alerts; the "
               "other windows below are those that closed while this report listened "
               "(%llu drift messages in %.1f s).</p>\n",
            (unsigned long long)d->window, d->rho_min, d->ndcg_k, d->ndcg_min, d->js_max,
            (unsigned long long)r->drift_msgs, r->listened_s);
    for (uint32_t m = 0; m < d->nmethods; m++)
        if (d->methods[m].has_last)
            s_add_window(r, d->methods[m].method, d->epoch, &d->methods[m].last);
    for (uint32_t a = 0; a < d->nalerts; a++) {
        const xpl_alert_t *al = &d->alerts[a];
        xpl_window_t w = {.window = al->window, .reference = al->reference, .compared = true,
                          .spearman = al->spearman, .ndcg = al->ndcg, .js = al->js,
                          .alert = true, .ts = al->ts};
        s_add_window(r, al->method, al->epoch, &w);
    }
    if (r->nwins)
        qsort(r->wins, r->nwins, sizeof *r->wins, s_cmp_win);

    fputs("<table id=\"drift-status\"><tr><th>method</th><th>reference</th>"
          "<th>windows closed</th><th>open window</th><th>last window</th><th>ρ</th>"
          "<th>nDCG</th><th>JS</th><th>status</th></tr>\n",
          f);
    for (uint32_t m = 0; m < d->nmethods; m++) {
        const xpl_drift_method_t *dm = &d->methods[m];
        fputs("<tr><td>", f);
        s_h(f, dm->method);
        fputs("</td><td>", f);
        s_h(f, dm->reference);
        fprintf(f, "</td><td class=\"num\">%llu</td><td class=\"num\">%llu / %llu</td>",
                (unsigned long long)dm->windows, (unsigned long long)dm->filled,
                (unsigned long long)d->window);
        if (dm->has_last) {
            const xpl_window_t *w = &dm->last;
            fprintf(f, "<td class=\"num\">%llu</td>", (unsigned long long)w->window);
            s_stat(f, w->spearman, w->spearman < d->rho_min);
            s_stat(f, w->ndcg, w->ndcg < d->ndcg_min);
            s_stat(f, w->js, w->js > d->js_max);
            fprintf(f, "<td class=\"%s\">%s</td></tr>\n", w->alert ? "bad" : "ok",
                    !w->compared ? "became the baseline" : w->alert ? "ALERT" : "ok");
        } else
            fputs("<td colspan=\"5\">no window closed yet</td></tr>\n", f);
    }
    fputs("</table>\n", f);

    /* One chart per method: its windows of the current epoch. */
    for (uint32_t m = 0; m < d->nmethods; m++) {
        const char *method = d->methods[m].method;
        size_t n = 0;
        for (size_t i = 0; i < r->nwins; i++)
            n += r->wins[i].epoch == d->epoch && strcmp(r->wins[i].method, method) == 0 &&
                 r->wins[i].w.compared;
        if (!n)
            continue;
        double *x = malloc(4 * n * sizeof *x);
        bool *al = malloc(n * sizeof *al);
        if (!x || !al) {
            free(x);
            free(al);
            continue;
        }
        double *rho = x + n, *nd = x + 2 * n, *js = x + 3 * n;
        size_t k = 0;
        for (size_t i = 0; i < r->nwins; i++) {
            const s_win_t *w = &r->wins[i];
            if (w->epoch != d->epoch || strcmp(w->method, method) != 0 || !w->w.compared)
                continue;
            x[k] = (double)w->w.window;
            rho[k] = w->w.spearman;
            nd[k] = w->w.ndcg;
            js[k] = w->w.js;
            al[k] = w->w.alert;
            k++;
        }
        char nname[32], title[96], sub[200], id[48];
        snprintf(nname, sizeof nname, "nDCG@%u", d->ndcg_k);
        snprintf(title, sizeof title, "%s: drift over the windows of epoch %llu", method,
                 (unsigned long long)d->epoch);
        snprintf(sub, sizeof sub, "%zu window%s compared with the %s reference; "
                                  "exact values in the tooltips",
                 n, n == 1 ? "" : "s", d->methods[m].reference);
        snprintf(id, sizeof id, "drift-%s", method);
        svg_line_t lines[3] = {
            {.name = "Spearman ρ", .y = rho, .threshold = d->rho_min},
            {.name = nname, .y = nd, .threshold = d->ndcg_min},
            {.name = "Jensen-Shannon divergence", .y = js, .threshold = d->js_max,
             .above_alerts = true},
        };
        svg_lines_t l = {.title = title, .subtitle = sub, .npoints = (uint32_t)n, .x = x,
                         .alert = al, .nlines = 3, .lines = lines, .id = id};
        fputs("<div class=\"chart\">", f);
        svg_lines(f, &l);
        fputs("</div>\n", f);
        free(x);
        free(al);
    }

    fprintf(f, "<h3>Alerts</h3>\n<p>%llu alert%s in all (every method and epoch)",
            (unsigned long long)d->alerts_total, d->alerts_total == 1 ? "" : "s");
    if (!d->nalerts) {
        fputs(".</p>\n</section>\n", f);
        return;
    }
    fprintf(f, "; the last %u the daemon keeps, newest first:</p>\n"
               "<table id=\"alerts\"><tr><th>closed</th><th>epoch</th><th>method</th>"
               "<th>window</th><th>reference</th><th>ρ</th><th>nDCG</th><th>JS</th></tr>\n",
            d->nalerts);
    for (uint32_t a = d->nalerts; a-- > 0;) {
        const xpl_alert_t *al = &d->alerts[a];
        char t[40];
        s_time(t, sizeof t, al->ts);
        fprintf(f, "<tr><td>%s</td><td class=\"num\">%llu</td><td>", t,
                (unsigned long long)al->epoch);
        s_h(f, al->method);
        fprintf(f, "</td><td class=\"num\">%llu</td><td>", (unsigned long long)al->window);
        s_h(f, al->reference);
        fputs("</td>", f);
        s_stat(f, al->spearman, al->spearman < d->rho_min);
        s_stat(f, al->ndcg, al->ndcg < d->ndcg_min);
        s_stat(f, al->js, al->js > d->js_max);
        fputs("</tr>\n", f);
    }
    fputs("</table>\n</section>\n", f);
}

static void
s_heads(FILE *f, const s_report_t *r)
{
    const xpl_heads_t *h = r->heads;
    fputs("<section id=\"heads\"><h2>Attention heads</h2>\n", f);
    if (!h) {
        fprintf(f, "<p>No head statistics arrived in the %.1f s this report listened: the "
                   "daemon publishes them (heads/) only while the model's trades arrive. Run "
                   "the report with a longer --listen while the model trades.</p></section>\n",
                r->listened_s);
        return;
    }
    fputs("<p>Importance: the mean over trades of |Σ A⊙∂y/∂A| per head (how much the "
          "prediction depends on the head; needs gradients). Confidence: the mean over "
          "trades of the mean over query tokens of the largest attention weight (1: each "
          "token attends to one key; 1/n: uniform).</p>\n",
          f);
    uint32_t L = h->L, H = h->H;
    char (*rl)[24] = calloc(L ? L : 1, sizeof *rl), (*cl)[24] = calloc(H ? H : 1, sizeof *cl);
    const char **rows = calloc(L ? L : 1, sizeof *rows), **cols = calloc(H ? H : 1, sizeof *cols);
    if (rl && cl && rows && cols) {
        for (uint32_t l = 0; l < L; l++) {
            snprintf(rl[l], sizeof rl[l], "layer %u", l);
            rows[l] = rl[l];
        }
        for (uint32_t k = 0; k < H; k++) {
            snprintf(cl[k], sizeof cl[k], "head %u", k);
            cols[k] = cl[k];
        }
        const struct {
            const char *name, *id;
            const double *v;
            uint64_t count;
        } maps[2] = {{"head importance", "heads-importance", h->importance, h->importance_count},
                     {"head confidence", "heads-confidence", h->confidence, h->confidence_count}};
        for (int k = 0; k < 2; k++) {
            char sub[128];
            snprintf(sub, sizeof sub, "epoch %llu, %llu trades", (unsigned long long)h->epoch,
                     (unsigned long long)maps[k].count);
            if (!maps[k].count) {
                fprintf(f, "<p>No %s yet: no trade of this epoch carried what it needs.</p>\n",
                        maps[k].name);
                continue;
            }
            svg_heatmap_t hm = {.title = maps[k].name, .subtitle = sub, .rows = L, .cols = H,
                                .values = maps[k].v, .row_labels = rows, .col_labels = cols,
                                .row_axis = "layer", .col_axis = "head", .tip_sep = ", ",
                                .zero = true, .highlight_row = -1, .id = maps[k].id};
            fputs("<div class=\"chart\">", f);
            svg_heatmap(f, &hm);
            fputs("</div>\n", f);
        }
    }
    free(rl);
    free(cl);
    free(rows);
    free(cols);
    fputs("</section>\n", f);
}

static void
s_reference(FILE *f, const s_report_t *r)
{
    const xpl_global_t *g = r->global;
    fputs("<section id=\"reference\"><h2>Agreement with the external reference</h2>\n", f);
    bool any = false;
    for (uint32_t m = 0; g && m < g->nmethods; m++)
        any = any || g->methods[m].reference;
    if (!any) {
        fputs("<p>No external reference is set for this epoch (the <code>reference</code> "
              "query, or <code>drift.reference_file</code>: for instance permutation "
              "importance computed offline).</p></section>\n",
              f);
        return;
    }
    fputs("<p>Spearman's ρ between the reference and each method's global mean (1: the same "
          "ranking of the features, 0: unrelated, −1: reversed). The charts put the two side by "
          "side, each on its own scale, features sorted by the reference.</p>\n"
          "<table id=\"reference-rho\"><tr><th>method</th><th>trades</th>"
          "<th>Spearman ρ with the reference</th></tr>\n",
          f);
    for (uint32_t m = 0; m < g->nmethods; m++) {
        const xpl_method_state_t *ms = &g->methods[m];
        if (!ms->reference)
            continue;
        fputs("<tr><td>", f);
        s_h(f, ms->method);
        fprintf(f, "</td><td class=\"num\">%llu</td>", (unsigned long long)ms->count);
        s_stat(f, ms->reference_spearman, false);
        fputs("</tr>\n", f);
    }
    fputs("</table>\n", f);
    uint32_t n = g->nfeat, shown = r->top && r->top < n ? r->top : n;
    const char **labels = calloc(n ? n : 1, sizeof *labels);
    double *buf = malloc(2 * (size_t)(n ? n : 1) * sizeof *buf);
    char (*names)[16] = calloc(n ? n : 1, sizeof *names);
    for (uint32_t m = 0; labels && buf && names && m < g->nmethods; m++) {
        const xpl_method_state_t *ms = &g->methods[m];
        if (!ms->reference)
            continue;
        uint32_t *o = s_order(ms->reference, n);
        if (!o)
            break;
        for (uint32_t k = 0; k < shown; k++) {
            labels[k] = s_feature(g, o[k], names[k], sizeof names[k]);
            buf[k] = ms->reference[o[k]];
            buf[n + k] = ms->mean[o[k]];
        }
        char title[96], sub[96], id[48];
        snprintf(title, sizeof title, "%s against the reference", ms->method);
        if (isnan(ms->reference_spearman))
            snprintf(sub, sizeof sub, "Spearman ρ undefined");
        else
            snprintf(sub, sizeof sub, "Spearman ρ = %.3f", ms->reference_spearman);
        snprintf(id, sizeof id, "reference-%s", ms->method);
        svg_series_t s[2] = {{.name = "reference", .values = buf},
                             {.name = "global mean", .values = buf + n}};
        svg_bars_t b = {.title = title, .subtitle = sub, .rows = shown, .labels = labels,
                        .nseries = 2, .series = s, .id = id};
        fputs("<div class=\"chart\">", f);
        svg_bars(f, &b);
        fputs("</div>\n", f);
        free(o);
    }
    free(labels);
    free(buf);
    free(names);
    fputs("</section>\n", f);
}

static void
s_trade(FILE *f, const s_report_t *r)
{
    fputs("<section id=\"trade\"><h2>A trade</h2>\n", f);
    const xpl_matrix_t *m = r->trade ? xpl_explanation_matrix(r->trade, "rollout") : NULL;
    if (!m) {
        fputs("<p>", f);
        s_h(f, r->note[0] ? r->note : "No trade to show.");
        fputs("</p></section>\n", f);
        return;
    }
    fputs("<p>The rollout matrix of one trade (row: query token, column: key token) and its "
          "attribution per method; the outlined readout row is what the attribution of a "
          "CLS model is read from. Same chart as <code>xplainctl heatmap</code>.</p>\n"
          "<div class=\"chart\" id=\"trade-heatmap\">",
          f);
    ctl_heatmap_svg(f, r->trade, m, r->schema);
    fputs("</div>\n</section>\n", f);
}

static void
s_write(FILE *f, s_report_t *r)
{
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>xplaind "
          "report: ",
          f);
    s_h(f, r->model);
    fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n", s_css);
    s_summary(f, r);
    s_global(f, r);
    s_drift(f, r);
    s_heads(f, r);
    s_reference(f, r);
    s_trade(f, r);
    fputs("</body>\n</html>\n", f);
}

/* ---- the command -------------------------------------------------------- */

int
cmd_report(int argc, char **argv)
{
    const char *model = NULL, *out = "-", *trade = NULL;
    long listen_s = 5, top = 30;
    ctl_args_t a;
    ctl_args_init(&a, "report", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (ctl_is(arg, "--model"))
            model = ctl_value(&a, arg, "--model");
        else if (ctl_is(arg, "-o"))
            out = ctl_value(&a, arg, "-o");
        else if (ctl_is(arg, "--output"))
            out = ctl_value(&a, arg, "--output");
        else if (ctl_is(arg, "--listen"))
            listen_s = ctl_long(&a, "--listen", ctl_value(&a, arg, "--listen"));
        else if (ctl_is(arg, "--top"))
            top = ctl_long(&a, "--top", ctl_value(&a, arg, "--top"));
        else if (ctl_is(arg, "--trade"))
            trade = ctl_value(&a, arg, "--trade");
        else
            return ctl_error("report", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
        if (a.status != CTL_OK)
            return a.status;
    }
    if (a.status != CTL_OK)
        return a.status;
    if (!model)
        return ctl_error("report", CTL_USAGE, "--model is required (try --help)");
    if (listen_s > 3600)
        return ctl_error("report", CTL_USAGE, "--listen is at most 3600 seconds");
    if (!out)
        return CTL_USAGE;

    s_report_t r = {.model = model, .top = (unsigned)(top > 100000 ? 100000 : top)};
    int rc = CTL_FAIL;
    xpl_client_t *c = ctl_client("report");
    if (!c)
        return CTL_FAIL;
    /* Fail early, before listening, when the daemon or the model is not
       there. */
    if (xpl_client_ping(c, r.version, sizeof r.version, NULL) != 0 ||
        !(r.schema = xpl_client_schema(c, model))) {
        ctl_xpl_error("report");
        goto done;
    }
    char last_id[256] = "";
    bool last_is_str = false;
    uint64_t last_u = 0;
    if (listen_s > 0) {
        ctl_catch_signals();
        if (s_listen(&r, (double)listen_s, last_id, sizeof last_id, &last_is_str, &last_u))
            goto done;
    }
    r.models = xpl_client_models(c);
    xpl_schema_destroy(&r.schema);
    r.schema = xpl_client_schema(c, model);
    r.global = xpl_client_global(c, model, NULL, NULL, NULL);
    if (!r.global && xpl_errno() != XPL_ENOT_FOUND) {
        ctl_xpl_error("report");
        goto done;
    }
    r.drift = xpl_client_drift(c, model, NULL, NULL);
    if (!r.drift && xpl_errno() != XPL_ENOT_FOUND) {
        ctl_xpl_error("report");
        goto done;
    }
    if (trade) {
        bool has_alt;
        xpl_id_t alt, id = ctl_parse_id(trade, &has_alt, &alt);
        r.trade = xpl_client_trade(c, model, id, false);
        if (!r.trade && has_alt && xpl_errno() == XPL_ENOT_FOUND)
            r.trade = xpl_client_trade(c, model, alt, false);
        if (!r.trade) {
            ctl_xpl_error("report");
            goto done;
        }
    } else if (last_id[0]) {
        xpl_id_t id = last_is_str ? xpl_id_str(last_id) : xpl_id_uint(last_u);
        r.trade = xpl_client_trade(c, model, id, false);
        if (!r.trade)
            snprintf(r.note, sizeof r.note, "Trade %s, the last one seen, is no longer in the "
                                            "recent-trade cache.", last_id);
    } else
        snprintf(r.note, sizeof r.note, "No trade arrived while the report listened; "
                                        "--trade ID shows one from the recent-trade cache.");

    FILE *f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w");
    if (!f) {
        ctl_error("report", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
        goto done;
    }
    s_write(f, &r);
    if ((f == stdout ? fflush(f) : fclose(f)) != 0)
        ctl_error("report", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
    else
        rc = CTL_OK;
done:
    xpl_models_destroy(&r.models);
    xpl_schema_destroy(&r.schema);
    xpl_global_destroy(&r.global);
    xpl_drift_state_destroy(&r.drift);
    xpl_heads_destroy(&r.heads);
    xpl_explanation_destroy(&r.trade);
    free(r.wins);
    xpl_client_destroy(&c);
    return rc;
}
