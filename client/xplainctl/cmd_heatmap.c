/*  xplainctl heatmap: a trade's n x n matrix as an SVG heatmap, with the
    trade's attribution vectors as bars beside the rows they explain.  */
#include "ctl.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char s_help[] =
    "usage: xplainctl heatmap --model M --id TRADE [-o FILE]\n"
    "                         [--method rollout|grad_rollout] [--flow]\n"
    "\n"
    "Fetch a trade from the daemon's recent-trade cache (the trade query) and\n"
    "write an SVG: the n x n matrix of the method (row i: query token, column\n"
    "j: key token; one cell per entry, its value in a tooltip) and, beside\n"
    "each feature's row, bars of the trade's attribution for every method,\n"
    "with their values and an axis. The colour scale runs from the 1st to the\n"
    "99th percentile of the off-diagonal cells (cells beyond are drawn at the\n"
    "ends) and the diagonal, a token's share of itself, is grey and left out\n"
    "of it, so the structure off the diagonal shows; the readout (CLS) row is\n"
    "outlined. The canvas grows to fit long token names.\n"
    "\n"
    "  --model M       the model\n"
    "  --id TRADE      the trade id (digits are tried as an integer id first)\n"
    "  -o, --output F  where to write the SVG (default '-': stdout)\n"
    "  --method M      matrix to draw: rollout (default) or grad_rollout\n"
    "  --flow          also compute attention flow for the bars\n"
    "\n" CTL_COMMON_HELP;

/* Write the SVG: the matrix with the readout row outlined, and one bar
   column per attribution method (feature k on the row of its token; a
   feature group's on the row of its lowest token, `row_of`). */
static int
s_write_chart(FILE *f, const xpl_explanation_t *e, const xpl_matrix_t *m,
              const char *const *tokens, const uint32_t *row_of)
{
    const uint32_t n = m->n;
    double *vals = malloc((size_t)n * n * sizeof *vals);
    double *bars = malloc(((size_t)e->nattr * n + 1) * sizeof *bars);
    svg_series_t *series = calloc(e->nattr + 1, sizeof *series);
    if (!vals || !bars || !series) {
        free(vals);
        free(bars);
        free(series);
        return -1;
    }
    for (size_t i = 0; i < (size_t)n * n; i++)
        vals[i] = m->values[i];
    for (uint32_t a = 0; a < e->nattr; a++) {
        const xpl_attr_t *at = &e->attr[a];
        double *col = bars + (size_t)a * n;
        for (uint32_t i = 0; i < n; i++)
            col[i] = NAN;
        /* per-feature vectors of an unknown grouping: no row to put them on */
        const uint32_t per_token = n - (e->cls >= 0 ? 1u : 0u);
        for (uint32_t k = 0; k < at->count && k < n && (row_of || at->count == per_token); k++) {
            uint32_t row = row_of ? row_of[k] : e->cls >= 0 && k >= (uint32_t)e->cls ? k + 1 : k;
            if (row < n)
                col[row] = at->values[k];
        }
        series[a].name = at->method;
        series[a].values = col;
    }
    char title[512], sub[256], what[160] = "";
    int len = snprintf(title, sizeof title, "%s · trade ", e->model);
    if (len < 0 || (size_t)len >= sizeof title)
        len = 0;
    if (e->id.is_str)
        snprintf(title + len, sizeof title - len, "%s · %s", e->id.s, m->method);
    else
        snprintf(title + len, sizeof title - len, "%llu · %s", (unsigned long long)e->id.u,
                 m->method);
    snprintf(sub, sizeof sub, "epoch %llu, n = %u tokens%s; bars: the trade's attribution "
                              "per method",
             (unsigned long long)e->epoch, n, e->cls >= 0 ? ", CLS outlined" : "");
    if (e->cls >= 0 && (uint32_t)e->cls < n)
        snprintf(what, sizeof what, "the readout row (%s): how much each key token feeds "
                                    "the prediction",
                 tokens[e->cls]);
    svg_heatmap_t h = {
        .title = title,
        .subtitle = sub,
        .rows = n,
        .cols = n,
        .values = vals,
        .row_labels = tokens,
        .col_labels = tokens,
        .row_axis = "query token",
        .col_axis = "key token",
        .tip_sep = " → ",
        .robust = true,
        .highlight_row = e->cls >= 0 && (uint32_t)e->cls < n ? e->cls : -1,
        .highlight_what = what,
        .nseries = e->nattr,
        .series = series,
    };
    svg_heatmap(f, &h);
    free(vals);
    free(bars);
    free(series);
    return 0;
}

int
ctl_heatmap_svg(FILE *f, const xpl_explanation_t *e, const xpl_matrix_t *m,
                const xpl_schema_t *s)
{
    /* Token names: from the schema when it is of the trade's epoch, else
       the features with the CLS token put back. */
    const char **tokens = calloc(m->n ? m->n : 1, sizeof *tokens);
    char (*numbered)[16] = calloc(m->n ? m->n : 1, sizeof *numbered);
    char (*grouped)[96] = calloc(m->n ? m->n : 1, sizeof *grouped);
    uint32_t *row_of = calloc(m->n ? m->n : 1, sizeof *row_of);
    int rc = -1;
    if (!tokens || !numbered || !grouped || !row_of)
        goto done;
    /* With feature groups a token is labelled with its group, and each
       feature's bar goes on its lowest token's row. Without the schema,
       features fewer than tokens cannot be placed: rows are numbered. */
    const bool same = s && s->epoch == e->epoch && s->n == m->n;
    const bool groups = same && s->ngroups && s->feature_of;
    const bool by_feature = e->features && e->nfeat == m->n - (e->cls >= 0 ? 1u : 0u);
    if (groups)
        for (uint32_t i = m->n; i-- > 0;)
            if (s->feature_of[i] >= 0 && (uint32_t)s->feature_of[i] < m->n)
                row_of[s->feature_of[i]] = i;
    for (uint32_t i = 0; i < m->n; i++) {
        if (groups && s->feature_of[i] >= 0 && s->features &&
            strcmp(s->features[s->feature_of[i]], s->tokens[i]) != 0) {
            snprintf(grouped[i], sizeof grouped[i], "%s [%s]", s->tokens[i],
                     s->features[s->feature_of[i]]);
            tokens[i] = grouped[i];
        } else if (same)
            tokens[i] = s->tokens[i];
        else if (e->cls >= 0 && i == (uint32_t)e->cls)
            tokens[i] = "[CLS]";
        else {
            uint32_t k = e->cls >= 0 && i > (uint32_t)e->cls ? i - 1 : i;
            if (by_feature && k < e->nfeat)
                tokens[i] = e->features[k];
            else {
                snprintf(numbered[i], sizeof numbered[i], "#%u", i);
                tokens[i] = numbered[i];
            }
        }
    }
    rc = s_write_chart(f, e, m, tokens, groups ? row_of : NULL);
done:
    free(tokens);
    free(numbered);
    free(grouped);
    free(row_of);
    return rc;
}

int
cmd_heatmap(int argc, char **argv)
{
    const char *model = NULL, *id_text = NULL, *out = "-", *method = "rollout";
    bool flow = false;
    ctl_args_t a;
    ctl_args_init(&a, "heatmap", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (ctl_is(arg, "--model"))
            model = ctl_value(&a, arg, "--model");
        else if (ctl_is(arg, "--id"))
            id_text = ctl_value(&a, arg, "--id");
        else if (ctl_is(arg, "-o"))
            out = ctl_value(&a, arg, "-o");
        else if (ctl_is(arg, "--output"))
            out = ctl_value(&a, arg, "--output");
        else if (ctl_is(arg, "--method"))
            method = ctl_value(&a, arg, "--method");
        else if (strcmp(arg, "--flow") == 0)
            flow = true;
        else
            return ctl_error("heatmap", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
    }
    if (a.status != CTL_OK)
        return a.status;
    if (!model || !id_text)
        return ctl_error("heatmap", CTL_USAGE, "--model and --id are required (try --help)");
    if (!out || !method)
        return CTL_USAGE;

    xpl_client_t *c = ctl_client("heatmap");
    if (!c)
        return CTL_FAIL;
    bool has_alt;
    xpl_id_t alt, id = ctl_parse_id(id_text, &has_alt, &alt);
    xpl_explanation_t *e = xpl_client_trade(c, model, id, flow);
    if (!e && has_alt && xpl_errno() == XPL_ENOT_FOUND)
        e = xpl_client_trade(c, model, alt, flow);
    int rc = CTL_FAIL;
    if (!e) {
        ctl_xpl_error("heatmap");
        goto done;
    }
    const xpl_matrix_t *m = xpl_explanation_matrix(e, method);
    if (!m) {
        ctl_error("heatmap", CTL_FAIL, "trade has no %s matrix (methods: %s%s)", method,
                  e->nmatrices ? e->matrices[0].method : "none",
                  e->nmatrices > 1 ? ", grad_rollout" : "");
        goto done;
    }
    xpl_schema_t *s = xpl_client_schema(c, model);
    FILE *f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w");
    if (!f) {
        ctl_error("heatmap", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
        goto free_schema;
    }
    svg_document_begin(f);
    int wrc = ctl_heatmap_svg(f, e, m, s);
    if ((f == stdout ? fflush(f) : fclose(f)) != 0 || wrc != 0)
        ctl_error("heatmap", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
    else
        rc = CTL_OK;
free_schema:
    xpl_schema_destroy(&s);
done:
    xpl_explanation_destroy(&e);
    xpl_client_destroy(&c);
    return rc;
}
