/*  xplainctl heatmap: a trade's n x n matrix as an SVG heatmap, with the
    trade's attribution vectors as bars beside the rows they explain.  */
#include "ctl.h"

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
    "each feature's row, bars of the trade's attribution for every method.\n"
    "\n"
    "  --model M       the model\n"
    "  --id TRADE      the trade id (digits are tried as an integer id first)\n"
    "  -o, --output F  where to write the SVG (default '-': stdout)\n"
    "  --method M      matrix to draw: rollout (default) or grad_rollout\n"
    "  --flow          also compute attention flow for the bars\n"
    "\n" CTL_COMMON_HELP;

/* Sequential blue scale (light to dark), interpolated. */
static void
s_color(double t, char out[8])
{
    static const unsigned char stops[][3] = {
        {247, 251, 255}, {198, 219, 239}, {107, 174, 214}, {33, 113, 181}, {8, 48, 107}};
    const int last = (int)(sizeof stops / sizeof stops[0]) - 1;
    if (!(t > 0))
        t = 0;
    if (t > 1)
        t = 1;
    double x = t * last;
    int k = (int)x;
    if (k >= last)
        k = last - 1;
    double f = x - k;
    int c[3];
    for (int i = 0; i < 3; i++)
        c[i] = (int)lround(stops[k][i] + f * (stops[k + 1][i] - stops[k][i]));
    snprintf(out, 8, "#%02x%02x%02x", c[0], c[1], c[2]);
}

static void
s_xml(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            /* Control characters are not allowed in XML 1.0. */
            if ((unsigned char)*s >= 0x20 || *s == '\t')
                fputc(*s, f);
        }
    }
}

static void
s_write_svg(FILE *f, const xpl_explanation_t *e, const xpl_matrix_t *m,
            const char *const *tokens)
{
    const uint32_t n = m->n;
    const double cell = fmin(28.0, fmax(4.0, 560.0 / n));
    const bool labels = cell >= 7;
    const double font = fmin(12.0, cell * 0.8);
    const double left = labels ? 110 : 20, top = labels ? 140 : 60;
    const double grid = cell * n;
    const double barw = 110, colw = barw + 20;
    const double width = left + grid + 30 + colw * (e->nattr ? e->nattr : 1) + 10;
    const double height = top + grid + 70;

    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        if (isfinite(m->values[i])) {
            lo = fminf(lo, m->values[i]);
            hi = fmaxf(hi, m->values[i]);
        }
    }
    if (!(lo <= hi))
        lo = hi = 0;
    const double span = hi > lo ? hi - lo : 1;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n",
            width, height, width, height);
    fputs("<style>.cell{stroke:none}.bar{fill:#d95f02}.lbl{fill:#333}</style>\n", f);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", width,
            height);
    fputs("<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">", f);
    s_xml(f, e->model);
    fputs(" · trade ", f);
    if (e->id.is_str)
        s_xml(f, e->id.s);
    else
        fprintf(f, "%llu", (unsigned long long)e->id.u);
    fprintf(f, " · %s", m->method);
    fprintf(f, "</text>\n<text x=\"10\" y=\"40\" font-size=\"11\" class=\"lbl\">epoch %llu, "
               "n = %u, cls = %d; row: query token, column: key token; min %.4g, max %.4g"
               "</text>\n",
            (unsigned long long)e->epoch, n, e->cls, lo, hi);

    /* The matrix: one rect per entry. */
    fprintf(f, "<g id=\"matrix\" transform=\"translate(%.1f,%.1f)\">\n", left, top);
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < n; j++) {
            float v = m->values[(size_t)i * n + j];
            char col[8];
            s_color((v - lo) / span, col);
            fprintf(f, "<rect class=\"cell\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                       "fill=\"%s\"><title>",
                    j * cell, i * cell, cell, cell, col);
            s_xml(f, tokens[i]);
            fputs(" → ", f);
            s_xml(f, tokens[j]);
            fprintf(f, ": %.6g</title></rect>\n", v);
        }
    }
    fputs("</g>\n", f);

    if (labels) {
        for (uint32_t i = 0; i < n; i++) {
            fprintf(f, "<text class=\"lbl\" x=\"%.1f\" y=\"%.2f\" font-size=\"%.1f\" "
                       "text-anchor=\"end\" dominant-baseline=\"middle\">",
                    left - 4, top + (i + 0.5) * cell, font);
            s_xml(f, tokens[i]);
            fputs("</text>\n", f);
            fprintf(f, "<text class=\"lbl\" font-size=\"%.1f\" transform=\"translate(%.2f,%.1f) "
                       "rotate(-60)\" dominant-baseline=\"middle\">",
                    font, left + (i + 0.5) * cell, top - 4);
            s_xml(f, tokens[i]);
            fputs("</text>\n", f);
        }
    }

    /* Colour legend under the matrix. */
    const double ly = top + grid + 18;
    for (int k = 0; k < 50; k++) {
        char col[8];
        s_color(k / 49.0, col);
        fprintf(f, "<rect class=\"legend\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"10\" "
                   "fill=\"%s\"/>\n",
                left + k * (grid / 50), ly, grid / 50 + 0.3, col);
    }
    fprintf(f, "<text class=\"lbl\" x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%.3g</text>\n", left,
            ly + 24, lo);
    fprintf(f, "<text class=\"lbl\" x=\"%.1f\" y=\"%.1f\" font-size=\"10\" "
               "text-anchor=\"end\">%.3g</text>\n",
            left + grid, ly + 24, hi);

    /* Per-feature bars: one column per method, feature k on the row of
       its token (the CLS row has none). */
    const double bx0 = left + grid + 30;
    for (uint32_t a = 0; a < e->nattr; a++) {
        const xpl_attr_t *at = &e->attr[a];
        double bx = bx0 + a * colw, vmax = 0;
        for (uint32_t k = 0; k < at->count; k++)
            vmax = fmax(vmax, fabs(at->values[k]));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" font-weight=\"bold\">", bx,
                top - 8);
        s_xml(f, at->method);
        fputs("</text>\n", f);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\"/>\n", bx,
                top, bx, top + grid);
        for (uint32_t k = 0; k < at->count && k < n; k++) {
            uint32_t row = e->cls >= 0 && k >= (uint32_t)e->cls ? k + 1 : k;
            double w = vmax > 0 ? fabs(at->values[k]) / vmax * barw : 0;
            fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.2f\" width=\"%.2f\" "
                       "height=\"%.2f\"><title>",
                    bx, top + row * cell + cell * 0.15, w, cell * 0.7);
            s_xml(f, tokens[row]);
            fprintf(f, ": %.6g</title></rect>\n", at->values[k]);
        }
    }
    fputs("</svg>\n", f);
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
    /* Token names: from the schema when it is of the trade's epoch, else
       the features with the CLS token put back. */
    xpl_schema_t *s = xpl_client_schema(c, model);
    const char **tokens = calloc(m->n, sizeof *tokens);
    char (*numbered)[16] = calloc(m->n, sizeof *numbered);
    if (!tokens || !numbered) {
        ctl_error("heatmap", CTL_FAIL, "out of memory");
        goto free_tokens;
    }
    for (uint32_t i = 0; i < m->n; i++) {
        if (s && s->epoch == e->epoch && s->n == m->n)
            tokens[i] = s->tokens[i];
        else if (e->cls >= 0 && i == (uint32_t)e->cls)
            tokens[i] = "[CLS]";
        else {
            uint32_t k = e->cls >= 0 && i > (uint32_t)e->cls ? i - 1 : i;
            if (e->features && k < e->nfeat)
                tokens[i] = e->features[k];
            else {
                snprintf(numbered[i], sizeof numbered[i], "#%u", i);
                tokens[i] = numbered[i];
            }
        }
    }
    FILE *f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w");
    if (!f) {
        ctl_error("heatmap", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
        goto free_tokens;
    }
    s_write_svg(f, e, m, tokens);
    if ((f == stdout ? fflush(f) : fclose(f)) != 0)
        ctl_error("heatmap", CTL_FAIL, "cannot write %s: %s", out, strerror(errno));
    else
        rc = CTL_OK;
free_tokens:
    free(tokens);
    free(numbered);
    xpl_schema_destroy(&s);
done:
    xpl_explanation_destroy(&e);
    xpl_client_destroy(&c);
    return rc;
}
