/*  xplainctl: SVG charts shared by `heatmap` and `report`.

    Every chart is a standalone <svg> element sized from its content: text
    widths are estimated conservatively (per-character advance widths of
    DejaVu Sans, the widest of the common sans fonts, plus a margin), so
    long feature names and many tokens widen the canvas instead of being
    cut off at its edge. Charts write no XML declaration, so the same
    output can stand alone (svg_document) or be inlined into HTML.  */
#ifndef XPLAINCTL_SVG_H
#define XPLAINCTL_SVG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* The font every chart uses; the width estimate is made for it. */
#define SVG_FONT "DejaVu Sans, Verdana, Arial, sans-serif"

/* Estimated width in px of `s` (UTF-8) at `size` px, never less than
   what a browser draws with SVG_FONT (bold: true for bold text). */
double svg_text_width(const char *s, double size, bool bold);

/* Write `s` with XML's special characters escaped (and control
   characters dropped). */
void svg_xml(FILE *f, const char *s);

/* A colour of the sequential blue scale, t in [0, 1] (clamped). */
void svg_color(double t, char out[8]);

/* One column of horizontal bars: value k goes on row k. */
typedef struct {
    const char *name;           /* heading under the axis */
    const double *values;       /* per row; NAN: no bar on that row */
    const double *err;          /* +- error bar per row (e.g. std), or NULL */
    const char *err_name;       /* its legend text */
    const double *marker;       /* a second value per row drawn as a tick
                                   (e.g. a reference), or NULL */
    const char *marker_name;    /* its legend text */
} svg_series_t;

/* A matrix as a heatmap, with optional bar columns beside the rows. */
typedef struct {
    const char *title;          /* bold first line */
    const char *subtitle;       /* second line, or NULL */
    uint32_t rows, cols;
    const double *values;       /* rows * cols, row-major; NAN: no value */
    const char *const *row_labels;
    const char *const *col_labels;
    const char *row_axis;       /* e.g. "query token" */
    const char *col_axis;       /* e.g. "key token" */
    const char *tip_sep;        /* between row and column label in tooltips */
    /* Colour scale: with robust, the scale ends at the 99th percentile of
       the off-diagonal values and the diagonal (a token's own share, which
       dwarfs the rest in a rollout) is drawn grey, outside the scale;
       otherwise it spans min..max of all values. */
    bool robust;
    bool zero;                  /* otherwise: the scale starts at 0 when no
                                   value is negative (sizes, not contrasts) */
    int highlight_row;          /* row outlined in red, -1 for none */
    const char *highlight_what; /* legend text for it */
    uint32_t nseries;
    const svg_series_t *series; /* bars beside the rows (values per row) */
    const char *id;             /* id attribute of the <svg>, or NULL */
} svg_heatmap_t;

void svg_heatmap(FILE *f, const svg_heatmap_t *h);

/* Horizontal bar chart: one label per row, one bar column per series. */
typedef struct {
    const char *title;
    const char *subtitle;
    uint32_t rows;
    const char *const *labels;
    uint32_t nseries;
    const svg_series_t *series;
    const char *id;
} svg_bars_t;

void svg_bars(FILE *f, const svg_bars_t *b);

/* One statistic over drift windows: points (x, y) joined by a line, a
   dashed threshold, alerting windows in red. */
typedef struct {
    const char *name;           /* e.g. "Spearman ρ" */
    const double *y;            /* per point; NAN: undefined (a gap) */
    double threshold;           /* NAN: none */
    bool above_alerts;          /* true: y > threshold alerts (JS) */
} svg_line_t;

typedef struct {
    const char *title;
    const char *subtitle;
    uint32_t npoints;
    const double *x;            /* window index per point, increasing */
    const bool *alert;          /* per point: the window alerted */
    uint32_t nlines;            /* one small panel per line */
    const svg_line_t *lines;
    const char *id;
} svg_lines_t;

void svg_lines(FILE *f, const svg_lines_t *l);

/* A chart as a standalone SVG file: XML declaration, then the chart. */
void svg_document_begin(FILE *f);

#endif
