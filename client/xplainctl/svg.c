/*  xplainctl: SVG charts (heatmap, bar columns, drift lines).  */
#include "svg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define S_PAD 10.0
#define S_TITLE 15.0
#define S_SUB 11.0
#define S_SMALL 10.0
#define S_LEGEND_LINE 15.0

/* Advance widths of DejaVu Sans (em), ASCII 32..126. */
static const float s_adv[95] = {
    .318f, .401f, .460f, .838f, .636f, .950f, .780f, .275f, .390f, .390f, .500f, .838f, .318f,
    .361f, .318f, .337f, .636f, .636f, .636f, .636f, .636f, .636f, .636f, .636f, .636f, .636f,
    .337f, .337f, .838f, .838f, .838f, .531f, 1.00f, .684f, .686f, .698f, .770f, .632f, .575f,
    .775f, .752f, .295f, .295f, .656f, .557f, .863f, .748f, .787f, .603f, .787f, .695f, .635f,
    .611f, .732f, .684f, .989f, .685f, .611f, .685f, .390f, .337f, .390f, .838f, .500f, .500f,
    .613f, .635f, .550f, .635f, .615f, .352f, .635f, .634f, .278f, .278f, .579f, .278f, .974f,
    .634f, .612f, .635f, .635f, .411f, .521f, .392f, .634f, .592f, .818f, .592f, .592f, .525f,
    .636f, .337f, .636f, .838f};

double
svg_text_width(const char *s, double size, bool bold)
{
    double em = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 32 && *p < 127)
            em += s_adv[*p - 32];
        else if ((*p & 0xc0) != 0x80)
            em += 1.0;  /* any other character: a full em, wider than most */
    }
    /* Bold DejaVu is up to 15% wider; 6% more for other fonts' hinting. */
    return em * size * (bold ? 1.15 : 1.0) * 1.06 + 1;
}

void
svg_xml(FILE *f, const char *s)
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

void
svg_color(double t, char out[8])
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

void
svg_document_begin(FILE *f)
{
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", f);
}

/* ---- helpers ------------------------------------------------------------ */

static void
s_fmt(char *buf, size_t size, double v)
{
    if (isnan(v))
        snprintf(buf, size, "n/a");
    else
        snprintf(buf, size, "%.3g", v == 0 ? 0.0 : v);  /* no "-0" */
}

static double
s_fmt_width(double v, double size)
{
    char b[32];
    s_fmt(b, sizeof b, v);
    return svg_text_width(b, size, false);
}

static void
s_text(FILE *f, double x, double y, double size, const char *anchor, const char *extra,
       const char *s)
{
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\"%s%s%s%s>", x, y, size,
            anchor ? " text-anchor=\"" : "", anchor ? anchor : "", anchor ? "\"" : "",
            extra ? extra : "");
    svg_xml(f, s);
    fputs("</text>\n", f);
}

static void
s_begin(FILE *f, const char *id, double w, double h)
{
    w = ceil(w);
    h = ceil(h);
    fputs("<svg xmlns=\"http://www.w3.org/2000/svg\"", f);
    if (id) {
        fputs(" id=\"", f);
        svg_xml(f, id);
        fputc('"', f);
    }
    fprintf(f, " width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"%s\">\n"
               "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n",
            w, h, w, h, SVG_FONT, w, h);
}

/* Title and subtitle; returns the y below them. *w grows to fit them. */
static double
s_header(FILE *f, const char *title, const char *sub, double *w)
{
    double y = S_PAD;
    if (title) {
        y += S_TITLE;
        s_text(f, S_PAD, y, S_TITLE, NULL, " font-weight=\"bold\"", title);
        *w = fmax(*w, 2 * S_PAD + svg_text_width(title, S_TITLE, true));
        y += 4;
    }
    if (sub) {
        y += S_SUB + 2;
        s_text(f, S_PAD, y, S_SUB, NULL, " fill=\"#444\"", sub);
        *w = fmax(*w, 2 * S_PAD + svg_text_width(sub, S_SUB, false));
        y += 4;
    }
    return y + 6;
}

/* Tick step for about `want` ticks over [lo, hi]: 1, 2 or 5 x 10^k. */
static double
s_step(double lo, double hi, int want)
{
    double raw = (hi - lo) / want;
    if (!(raw > 0))
        return 1;
    double p = pow(10, floor(log10(raw)));
    double m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

/* Range of a bar column: [min(0, v - err), max(0, v + err)], widened to
   whole ticks. */
static void
s_bar_range(const svg_series_t *s, uint32_t rows, double *lo, double *hi, double *step)
{
    double a = 0, b = 0;
    for (uint32_t k = 0; k < rows; k++) {
        double v = s->values[k], e = s->err && isfinite(s->err[k]) ? s->err[k] : 0;
        if (isfinite(v)) {
            a = fmin(a, v - e);
            b = fmax(b, v + e);
        }
        if (s->marker && isfinite(s->marker[k])) {
            a = fmin(a, s->marker[k]);
            b = fmax(b, s->marker[k]);
        }
    }
    if (!(b > a))
        b = a + 1;
    *step = s_step(a, b, 3);
    *lo = floor(a / *step + 1e-9) * *step;
    *hi = ceil(b / *step - 1e-9) * *step;
}

#define S_BARW 120.0

/* Width of a bar column: bars, the value labels right of them, a gap. */
static double
s_bar_colw(const svg_series_t *s, uint32_t rows, double font)
{
    double vw = 0;
    for (uint32_t k = 0; k < rows; k++)
        if (isfinite(s->values[k]))
            vw = fmax(vw, s_fmt_width(s->values[k], font));
    double lo, hi, step;
    s_bar_range(s, rows, &lo, &hi, &step);
    double tw = fmax(s_fmt_width(lo, S_SMALL), s_fmt_width(hi, S_SMALL));
    double nw = svg_text_width(s->name, 11, true);
    return fmax(fmax(S_BARW + 6 + vw, S_BARW + tw / 2), nw) + 26;
}

/* One bar column at x, rows of height rowh from y; axis and name below.
   Returns nothing: the caller sized the column with s_bar_colw. */
static void
s_bar_column(FILE *f, const svg_series_t *s, uint32_t rows, const char *const *labels,
             double x, double y, double rowh, double font)
{
    double lo, hi, step;
    s_bar_range(s, rows, &lo, &hi, &step);
    const double k = S_BARW / (hi - lo), x0 = x + (0 - lo) * k;
    const double bottom = y + rows * rowh;
    fputs("<g class=\"bars\">\n", f);
    /* Gridlines first, under the bars. */
    for (double t = lo; t <= hi + step * 1e-6; t += step)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                x + (t - lo) * k, y, x + (t - lo) * k, bottom);
    for (uint32_t r = 0; r < rows; r++) {
        double v = s->values[r];
        char b[32];
        if (isfinite(v)) {
            double xa = x0, xb = x + (v - lo) * k;
            fprintf(f, "<rect class=\"bar\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                       "fill=\"%s\"><title>",
                    fmin(xa, xb), y + r * rowh + rowh * 0.15, fabs(xb - xa), rowh * 0.7,
                    v < 0 ? "#7570b3" : "#d95f02");
            svg_xml(f, labels[r]);
            fprintf(f, ": %.6g", v);
            if (s->err && isfinite(s->err[r]))
                fprintf(f, " ± %.6g", s->err[r]);
            if (s->marker && isfinite(s->marker[r]))
                fprintf(f, "; %s %.6g", s->marker_name ? s->marker_name : "", s->marker[r]);
            fputs("</title></rect>\n", f);
            double xe = xb;
            if (s->err && isfinite(s->err[r]) && s->err[r] > 0) {
                double e1 = x + (v - s->err[r] - lo) * k, e2 = x + (v + s->err[r] - lo) * k;
                double cy = y + (r + 0.5) * rowh;
                fprintf(f, "<path class=\"err\" d=\"M%.2f %.2fH%.2fM%.2f %.2fV%.2fM%.2f %.2fV%.2f\" "
                           "stroke=\"#333\" fill=\"none\"/>\n",
                        e1, cy, e2, e1, cy - rowh * 0.2, cy + rowh * 0.2, e2, cy - rowh * 0.2,
                        cy + rowh * 0.2);
                xe = fmax(xe, e2);
            }
            s_fmt(b, sizeof b, v);
            fprintf(f, "<text class=\"val\" x=\"%.1f\" y=\"%.2f\" font-size=\"%.1f\" "
                       "dominant-baseline=\"central\" fill=\"#333\">%s</text>\n",
                    (v < 0 ? x0 : fmax(xe, x0)) + 4, y + (r + 0.5) * rowh, font, b);
        }
        if (s->marker && isfinite(s->marker[r])) {
            double xm = x + (s->marker[r] - lo) * k;
            fprintf(f, "<path class=\"marker\" d=\"M%.2f %.2fV%.2f\" stroke=\"black\" "
                       "stroke-width=\"2.5\"/>\n",
                    xm, y + r * rowh + 1, y + (r + 1) * rowh - 1);
        }
    }
    /* Zero line, axis, ticks, name. */
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n", x0, y,
            x0, bottom);
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
               "stroke=\"#666\"/>\n",
            x, bottom + 2, x + S_BARW, bottom + 2);
    for (double t = lo; t <= hi + step * 1e-6; t += step) {
        char b[32];
        s_fmt(b, sizeof b, fabs(t) < step * 1e-6 ? 0 : t);
        double tx = x + (t - lo) * k;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n", tx,
                bottom + 2, tx, bottom + 6);
        s_text(f, tx, bottom + 17, S_SMALL, "middle", " class=\"tick\" fill=\"#444\"", b);
    }
    s_text(f, x, bottom + 33, 11, NULL, " font-weight=\"bold\"", s->name);
    fputs("</g>\n", f);
}

/* Height the bar columns need below their rows (axis, ticks, name). */
#define S_BAR_FOOT 40.0

/* Legend lines of the series' error bars and markers (f NULL: measure
   only); returns the y below them, widening *w. */
static double
s_series_legend(FILE *f, const svg_series_t *series, uint32_t n, double y, double *w)
{
    const char *done[8];
    int ndone = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *t[2] = {series[i].err ? series[i].err_name : NULL,
                            series[i].marker ? series[i].marker_name : NULL};
        for (int j = 0; j < 2; j++) {
            if (!t[j])
                continue;
            bool seen = false;
            for (int d = 0; d < ndone; d++)
                seen = seen || strcmp(done[d], t[j]) == 0;
            if (seen || ndone == 8)
                continue;
            done[ndone++] = t[j];
            y += S_LEGEND_LINE;
            if (f)
                s_text(f, S_PAD, y, S_SMALL + 0.5, NULL, " class=\"legend\" fill=\"#333\"",
                       t[j]);
            *w = fmax(*w, 2 * S_PAD + svg_text_width(t[j], S_SMALL + 0.5, false));
        }
    }
    return y;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Quantile q of sorted v[0..n), interpolated. */
static double
s_quantile(const double *v, size_t n, double q)
{
    double p = q * (double)(n - 1);
    size_t a = (size_t)p;
    return a + 1 < n ? v[a] + (p - (double)a) * (v[a + 1] - v[a]) : v[a];
}

/* ---- heatmap ------------------------------------------------------------ */

void
svg_heatmap(FILE *f, const svg_heatmap_t *h)
{
    const uint32_t R = h->rows, C = h->cols, big = R > C ? R : C;
    const double cell = fmin(h->robust ? 28.0 : 48.0, fmax(4.0, 560.0 / (big ? big : 1)));
    const bool labels = cell >= 7;
    const double font = fmin(12.0, cell * 0.75);
    const bool inside = !h->robust && cell >= 30;   /* values printed in the cells */

    /* Colour scale. */
    double lo = INFINITY, hi = -INFINITY, dlo = INFINITY, dhi = -INFINITY;
    size_t nvals = 0, above = 0, below = 0;
    double *off = malloc(((size_t)R * C + 1) * sizeof *off);
    for (uint32_t i = 0; i < R; i++)
        for (uint32_t j = 0; j < C; j++) {
            double v = h->values[(size_t)i * C + j];
            if (!isfinite(v))
                continue;
            if (h->robust && i == j) {
                dlo = fmin(dlo, v);
                dhi = fmax(dhi, v);
            } else if (off)
                off[nvals++] = v;
        }
    if (off && nvals) {
        qsort(off, nvals, sizeof *off, s_cmp_double);
        lo = off[0];
        if (h->robust) {
            /* 1st to 99th percentile: a few extreme cells do not flatten
               the rest, and values that all sit near 1/n still spread
               over the whole scale. */
            lo = s_quantile(off, nvals, 0.01);
            hi = s_quantile(off, nvals, 0.99);
            for (size_t k = 0; k < nvals; k++) {
                above += off[k] > hi;
                below += off[k] < lo;
            }
        } else {
            hi = off[nvals - 1];
            if (h->zero && lo > 0)
                lo = 0;
        }
    }
    free(off);
    if (!(lo <= hi))
        lo = hi = 0;
    const double span = hi > lo ? hi - lo : 1;

    /* Layout, from the widest labels. */
    double rw = 0, cw = 0;
    for (uint32_t i = 0; labels && i < R; i++)
        rw = fmax(rw, svg_text_width(h->row_labels[i], font, (int)i == h->highlight_row));
    for (uint32_t j = 0; labels && j < C; j++)
        cw = fmax(cw, svg_text_width(h->col_labels[j], font, false));
    double w = 0;
    /* Everything is measured before the <svg> tag, which carries the size. */
    double hy = S_PAD + (h->title ? S_TITLE + 4 : 0) + (h->subtitle ? S_SUB + 6 : 0) + 6;
    const double sin60 = 0.8660254, cos60 = 0.5;
    const double left = S_PAD + (labels ? rw + 6 : 0);
    const double top = hy + (labels ? cw * sin60 + font * cos60 + 8 : 4);
    const double gw = C * cell, gh = R * cell;
    double colw[64];
    const uint32_t ns = h->nseries < 64 ? h->nseries : 64;
    double right = left + gw + (labels ? cw * cos60 + font : 0);
    double bx = left + gw + 24;
    for (uint32_t s = 0; s < ns; s++) {
        colw[s] = s_bar_colw(&h->series[s], R, font);
        bx += colw[s];
    }
    right = fmax(right, bx);
    w = right + S_PAD;

    /* Legend lines under the grid (and the bars' axes). */
    char l1[256], l2[256], l3[320];
    char a[32], b[32];
    s_fmt(a, sizeof a, lo);
    s_fmt(b, sizeof b, hi);
    if (h->robust)
        snprintf(l1, sizeof l1,
                 "colour: %s (white) to %s (dark blue), the 1st to 99th percentile of the "
                 "off-diagonal cells; %zu cell%s beyond drawn at the ends",
                 a, b, above + below, above + below == 1 ? "" : "s");
    else
        snprintf(l1, sizeof l1, "colour: %s (white%s) to %s (dark blue, the maximum)", a,
                 h->zero && lo == 0 ? "" : ", the minimum", b);
    l2[0] = l3[0] = '\0';
    if (h->robust && dlo <= dhi) {
        char c[32], d[32];
        s_fmt(c, sizeof c, dlo);
        s_fmt(d, sizeof d, dhi);
        snprintf(l2, sizeof l2, "grey: the diagonal (a token's share of itself, %s to %s), "
                                "left out of the colour scale", c, d);
    }
    if (h->highlight_row >= 0 && (uint32_t)h->highlight_row < R)
        snprintf(l3, sizeof l3, "red outline: %s", h->highlight_what ? h->highlight_what : "");
    char axes[160] = "";
    if (h->row_axis && h->col_axis)
        snprintf(axes, sizeof axes, "rows: %s; columns: %s; exact values in the tooltips",
                 h->row_axis, h->col_axis);
    const char *lines[4] = {l1, l2, l3, axes};
    double ly = top + gh + (ns ? S_BAR_FOOT + 8 : 12);
    const double lw = fmax(gw, 200);
    double height = ly + 10 + 14;
    for (int k = 0; k < 4; k++)
        if (lines[k][0]) {
            height += S_LEGEND_LINE;
            w = fmax(w, 2 * S_PAD + svg_text_width(lines[k], S_SMALL + 0.5, false));
        }
    height = s_series_legend(NULL, h->series, ns, height, &w) + S_PAD;
    w = fmax(w, S_PAD + lw + S_PAD);
    if (h->title)
        w = fmax(w, 2 * S_PAD + svg_text_width(h->title, S_TITLE, true));
    if (h->subtitle)
        w = fmax(w, 2 * S_PAD + svg_text_width(h->subtitle, S_SUB, false));

    s_begin(f, h->id, w, height);
    double dummy = 0;
    s_header(f, h->title, h->subtitle, &dummy);

    /* The matrix: one rect per entry. */
    fprintf(f, "<g class=\"matrix\" transform=\"translate(%.1f,%.1f)\">\n", left, top);
    for (uint32_t i = 0; i < R; i++) {
        for (uint32_t j = 0; j < C; j++) {
            double v = h->values[(size_t)i * C + j];
            char col[8];
            if (h->robust && i == j)
                snprintf(col, sizeof col, "#bdbdbd");
            else if (!isfinite(v))
                snprintf(col, sizeof col, "#ffffff");
            else
                svg_color((v - lo) / span, col);
            fprintf(f, "<rect class=\"cell\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                       "fill=\"%s\"><title>",
                    j * cell, i * cell, cell, cell, col);
            svg_xml(f, h->row_labels[i]);
            fputs(h->tip_sep ? h->tip_sep : ", ", f);
            svg_xml(f, h->col_labels[j]);
            fprintf(f, ": %.6g</title></rect>\n", v);
            if (inside && isfinite(v)) {
                char t[32];
                s_fmt(t, sizeof t, v);
                if (svg_text_width(t, S_SMALL, false) <= cell - 4)
                    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"%.1f\" "
                               "text-anchor=\"middle\" dominant-baseline=\"central\" "
                               "fill=\"%s\">%s</text>\n",
                            (j + 0.5) * cell, (i + 0.5) * cell, S_SMALL,
                            (v - lo) / span > 0.55 ? "white" : "#222", t);
            }
        }
    }
    if (h->highlight_row >= 0 && (uint32_t)h->highlight_row < R)
        fprintf(f, "<rect class=\"highlight\" x=\"0\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                   "fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n",
                h->highlight_row * cell, gw, cell);
    fputs("</g>\n", f);

    if (labels) {
        for (uint32_t i = 0; i < R; i++) {
            bool hl = (int)i == h->highlight_row;
            fprintf(f, "<text class=\"lbl\" x=\"%.1f\" y=\"%.2f\" font-size=\"%.1f\" "
                       "text-anchor=\"end\" dominant-baseline=\"central\" fill=\"%s\"%s>",
                    left - 5, top + (i + 0.5) * cell, font, hl ? "#d62728" : "#333",
                    hl ? " font-weight=\"bold\"" : "");
            svg_xml(f, h->row_labels[i]);
            fputs("</text>\n", f);
        }
        for (uint32_t j = 0; j < C; j++) {
            fprintf(f, "<text class=\"lbl\" font-size=\"%.1f\" fill=\"#333\" "
                       "transform=\"translate(%.2f,%.1f) rotate(-60)\">",
                    font, left + (j + 0.5) * cell + font * 0.3, top - 5);
            svg_xml(f, h->col_labels[j]);
            fputs("</text>\n", f);
        }
    }

    /* Bars beside the rows. */
    bx = left + gw + 24;
    for (uint32_t s = 0; s < ns; s++) {
        s_bar_column(f, &h->series[s], R, h->row_labels, bx, top, cell, font);
        bx += colw[s];
    }

    /* Colour legend. */
    for (int k = 0; k < 50; k++) {
        char col[8];
        svg_color(k / 49.0, col);
        fprintf(f, "<rect class=\"legend\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"10\" "
                   "fill=\"%s\"/>\n",
                S_PAD + k * (lw / 50), ly, lw / 50 + 0.3, col);
    }
    char la[40];
    snprintf(la, sizeof la, "%s%s", h->robust && below ? "≤ " : "", a);
    s_text(f, S_PAD, ly + 22, S_SMALL, NULL, " fill=\"#333\"", la);
    char hb[40];
    snprintf(hb, sizeof hb, "%s%s", h->robust && above ? "≥ " : "", b);
    s_text(f, S_PAD + lw, ly + 22, S_SMALL, "end", " fill=\"#333\"", hb);
    double y = ly + 24;
    for (int k = 0; k < 4; k++)
        if (lines[k][0]) {
            y += S_LEGEND_LINE;
            s_text(f, S_PAD, y, S_SMALL + 0.5, NULL, " class=\"legend\" fill=\"#333\"", lines[k]);
        }
    s_series_legend(f, h->series, ns, y, &dummy);
    fputs("</svg>\n", f);
}

/* ---- bar chart ---------------------------------------------------------- */

void
svg_bars(FILE *f, const svg_bars_t *b)
{
    const double rowh = 18, font = 11;
    double lw = 0, w = 0;
    for (uint32_t i = 0; i < b->rows; i++)
        lw = fmax(lw, svg_text_width(b->labels[i], font, false));
    double hy = S_PAD + (b->title ? S_TITLE + 4 : 0) + (b->subtitle ? S_SUB + 6 : 0) + 6;
    const double left = S_PAD + lw + 8, top = hy + 4;
    double x = left;
    for (uint32_t s = 0; s < b->nseries; s++)
        x += s_bar_colw(&b->series[s], b->rows, font);
    w = x + S_PAD;
    if (b->title)
        w = fmax(w, 2 * S_PAD + svg_text_width(b->title, S_TITLE, true));
    if (b->subtitle)
        w = fmax(w, 2 * S_PAD + svg_text_width(b->subtitle, S_SUB, false));
    double y = top + b->rows * rowh + S_BAR_FOOT;
    const double ly = s_series_legend(NULL, b->series, b->nseries, y, &w);
    s_begin(f, b->id, w, ly + S_PAD);
    double dummy = 0;
    s_header(f, b->title, b->subtitle, &dummy);
    for (uint32_t i = 0; i < b->rows; i++) {
        fprintf(f, "<text class=\"lbl\" x=\"%.1f\" y=\"%.2f\" font-size=\"%.1f\" "
                   "text-anchor=\"end\" dominant-baseline=\"central\" fill=\"#333\">",
                left - 6, top + (i + 0.5) * rowh, font);
        svg_xml(f, b->labels[i]);
        fputs("</text>\n", f);
    }
    x = left;
    for (uint32_t s = 0; s < b->nseries; s++) {
        s_bar_column(f, &b->series[s], b->rows, b->labels, x, top, rowh, font);
        x += s_bar_colw(&b->series[s], b->rows, font);
    }
    s_series_legend(f, b->series, b->nseries, y, &dummy);
    fputs("</svg>\n", f);
}

/* ---- drift lines -------------------------------------------------------- */

void
svg_lines(FILE *f, const svg_lines_t *l)
{
    const double pw = 240, ph = 130, yaxis = 44, gap = 24;
    double hy = S_PAD + (l->title ? S_TITLE + 4 : 0) + (l->subtitle ? S_SUB + 6 : 0) + 6;
    const double top = hy + 18;
    double w = S_PAD + l->nlines * (yaxis + pw + gap) + S_PAD;
    if (l->title)
        w = fmax(w, 2 * S_PAD + svg_text_width(l->title, S_TITLE, true));
    if (l->subtitle)
        w = fmax(w, 2 * S_PAD + svg_text_width(l->subtitle, S_SUB, false));
    const char *leg = "● a window   ● a window that raised an alert   - - - threshold";
    w = fmax(w, 2 * S_PAD + svg_text_width(leg, S_SMALL + 0.5, false));
    const double height = top + ph + 36 + S_LEGEND_LINE + S_PAD;
    s_begin(f, l->id, w, height);
    double dummy = 0;
    s_header(f, l->title, l->subtitle, &dummy);

    double xlo = l->npoints ? l->x[0] : 0, xhi = l->npoints ? l->x[l->npoints - 1] : 1;
    if (!(xhi > xlo)) {
        xlo -= 1;
        xhi += 1;
    }
    double xstep = s_step(xlo, xhi, 4);
    if (xstep < 1)
        xstep = 1;
    for (uint32_t p = 0; p < l->nlines; p++) {
        const svg_line_t *ln = &l->lines[p];
        const double px = S_PAD + p * (yaxis + pw + gap) + yaxis;
        double ylo = 0, yhi = 0;
        bool any = false;
        for (uint32_t i = 0; i < l->npoints; i++)
            if (isfinite(ln->y[i])) {
                ylo = any ? fmin(ylo, ln->y[i]) : fmin(0, ln->y[i]);
                yhi = any ? fmax(yhi, ln->y[i]) : ln->y[i];
                any = true;
            }
        if (isfinite(ln->threshold)) {
            ylo = fmin(ylo, ln->threshold);
            yhi = fmax(yhi, ln->threshold);
        }
        ylo = fmin(ylo, 0);
        if (!(yhi > ylo))
            yhi = ylo + 1;
        double ystep = s_step(ylo, yhi, 4);
        ylo = floor(ylo / ystep + 1e-9) * ystep;
        yhi = ceil(yhi / ystep - 1e-9) * ystep;
#define S_X(v) (px + ((v) - xlo) / (xhi - xlo) * pw)
#define S_Y(v) (top + ph - ((v) - ylo) / (yhi - ylo) * ph)
        fprintf(f, "<g class=\"panel\">\n");
        s_text(f, px, top - 8, 12, NULL, " font-weight=\"bold\"", ln->name);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                   "stroke=\"#999\"/>\n",
                px, top, pw, ph);
        for (double t = ylo; t <= yhi + ystep * 1e-6; t += ystep) {
            char b[32];
            s_fmt(b, sizeof b, fabs(t) < ystep * 1e-6 ? 0 : t);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                    px, S_Y(t), px + pw, S_Y(t));
            s_text(f, px - 4, S_Y(t) + 3.5, S_SMALL, "end", " class=\"tick\" fill=\"#444\"", b);
        }
        double x0 = ceil(xlo / xstep) * xstep;
        for (double t = x0; t <= xhi + 1e-9; t += xstep) {
            char b[32];
            snprintf(b, sizeof b, "%.0f", t);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n",
                    S_X(t), top + ph, S_X(t), top + ph + 4);
            s_text(f, S_X(t), top + ph + 15, S_SMALL, "middle", " class=\"tick\" fill=\"#444\"",
                   b);
        }
        s_text(f, px + pw / 2, top + ph + 29, S_SMALL, "middle", " fill=\"#444\"", "window");
        if (isfinite(ln->threshold)) {
            char b[48];
            snprintf(b, sizeof b, "%s %.3g", ln->above_alerts ? "max" : "min", ln->threshold);
            fprintf(f, "<line class=\"threshold\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                       "stroke=\"#d62728\" stroke-dasharray=\"5 3\"/>\n",
                    px, S_Y(ln->threshold), px + pw, S_Y(ln->threshold));
            /* The label goes on the side of the line with more room. */
            double ty = ln->threshold - ylo > (yhi - ylo) / 2 ? S_Y(ln->threshold) + 12
                                                              : S_Y(ln->threshold) - 4;
            s_text(f, px + pw - 3, ty, S_SMALL, "end", " fill=\"#d62728\"", b);
        }
        /* The line, broken where a statistic is undefined. */
        fputs("<path class=\"series\" fill=\"none\" stroke=\"#2171b5\" stroke-width=\"1.5\" d=\"", f);
        bool pen = false;
        for (uint32_t i = 0; i < l->npoints; i++) {
            if (!isfinite(ln->y[i])) {
                pen = false;
                continue;
            }
            fprintf(f, "%c%.2f %.2f", pen ? 'L' : 'M', S_X(l->x[i]), S_Y(ln->y[i]));
            pen = true;
        }
        fputs("\"/>\n", f);
        for (uint32_t i = 0; i < l->npoints; i++) {
            if (!isfinite(ln->y[i]))
                continue;
            bool al = l->alert && l->alert[i];
            fprintf(f, "<circle class=\"%s\" cx=\"%.2f\" cy=\"%.2f\" r=\"%.1f\" fill=\"%s\">"
                       "<title>window %.0f: %.4g%s</title></circle>\n",
                    al ? "point alert" : "point", S_X(l->x[i]), S_Y(ln->y[i]), al ? 4.0 : 3.0,
                    al ? "#d62728" : "#2171b5", l->x[i], ln->y[i], al ? " (alert)" : "");
        }
        fputs("</g>\n", f);
#undef S_X
#undef S_Y
    }
    /* Legend. */
    double y = top + ph + 36 + S_LEGEND_LINE - 4;
    fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" fill=\"#333\">"
               "<tspan fill=\"#2171b5\">●</tspan> a window   <tspan fill=\"#d62728\">●</tspan> "
               "a window that raised an alert   <tspan fill=\"#d62728\">- - -</tspan> threshold"
               "</text>\n",
            S_PAD, y, S_SMALL + 0.5);
    fputs("</svg>\n", f);
}
