/*  xplainctl: shared pieces of the command-line tool.

    Every command is a function `int cmd_X(int argc, char **argv)` that
    returns the process's exit status: 0 success, 1 a runtime error (daemon
    unreachable, unknown model, timeout, ...), 2 a usage error. Errors are
    one line on stderr: "xplainctl X: reason".  */
#ifndef XPLAINCTL_CTL_H
#define XPLAINCTL_CTL_H

#include <xplain/xplain.h>

#include <stdbool.h>
#include <stdio.h>

#define CTL_OK 0
#define CTL_FAIL 1
#define CTL_USAGE 2

/* Options every command accepts. */
typedef struct {
    const char *query;          /* --query EP */
    const char *sub;            /* --sub EP */
    int timeout_ms;             /* --timeout MS */
    const char *curve_key;      /* --curve-key FILE_secret */
    const char *server_key;     /* --server-key FILE */
} ctl_common_t;

extern ctl_common_t ctl_common;

/* Text of the common options, for --help. */
#define CTL_COMMON_HELP                                                              \
    "common options:\n"                                                              \
    "  --query EP         query endpoint of xplaind (default " XPL_DEFAULT_QUERY_ENDPOINT ")\n" \
    "  --sub EP           publish endpoint of xplaind (default " XPL_DEFAULT_SUB_ENDPOINT ")\n" \
    "  --timeout MS       how long to wait for the daemon (default 3000)\n"          \
    "  --curve-key FILE   this client's CURVE secret certificate (the FILE_secret\n"  \
    "                     of 'xplainctl keygen FILE'), for a daemon running with\n"  \
    "                     --curve; needs --server-key\n"                             \
    "  --server-key FILE  the daemon's public certificate (FILE of the keygen\n"      \
    "                     whose FILE_secret is its secret_key_file)\n"              \
    "  --help             this text\n"

/* Argument scanner: walks argv, consuming the common options itself.
   ctl_next returns the next argument that is not a common option, or
   NULL at the end (or on a bad common option, with *status set). */
typedef struct {
    int argc, i;
    char **argv;
    const char *cmd;
    int status;                 /* CTL_OK, or CTL_USAGE after an error */
} ctl_args_t;

void ctl_args_init(ctl_args_t *a, const char *cmd, int argc, char **argv);
const char *ctl_next(ctl_args_t *a);

/* The value of option `opt` (argument `arg`): "--opt=V" or "--opt V".
   Returns NULL and reports a usage error when it is missing. */
const char *ctl_value(ctl_args_t *a, const char *arg, const char *opt);

/* True when `arg` is option `opt` alone or "opt=...". */
bool ctl_is(const char *arg, const char *opt);

/* Parse a non-negative integer option value; -1 with a usage error. */
long ctl_long(ctl_args_t *a, const char *opt, const char *v);

/* Report an error: "xplainctl CMD: message" on stderr; returns status. */
int ctl_error(const char *cmd, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report the library's last error (xpl_strerror) and return CTL_FAIL. */
int ctl_xpl_error(const char *cmd);

/* The CURVE keys of --curve-key and --server-key, loaded on first use:
   0 with *curve NULL when none were given, 0 with the keys, or CTL_FAIL
   after reporting why they cannot be loaded. */
int ctl_curve(const char *cmd, const xpl_curve_t **curve);

/* The "; CURVE: ..." hint of the library's last error (xpl_curve.h), or
   "" (for commands that word a timeout themselves). */
const char *ctl_curve_hint(void);

/* A query client on ctl_common's endpoint, timeout and CURVE keys; NULL
   after reporting the error. */
xpl_client_t *ctl_client(const char *cmd);

/* Install SIGINT/SIGTERM handlers that interrupt blocking waits (so
   tail and top end cleanly); ctl_stopped() tells whether one came. */
void ctl_catch_signals(void);
bool ctl_stopped(void);

/* A horizontal bar of `frac` (0..1) of `width` cells: Unicode eighth
   blocks, or '#' when ascii. Written into buf (>= 4 * width + 1 bytes),
   padded with spaces to `width` cells. */
void ctl_bar(char *buf, double frac, int width, bool ascii);

/* Indices of the k largest |values| (k <= count), largest first. */
void ctl_topk(const float *values, unsigned count, unsigned *idx, unsigned k);

/* Print `s` cut (or padded with spaces) to `width` terminal cells. */
void ctl_print_cell(FILE *out, const char *s, int width);

/* Print an xpl_id_t. */
void ctl_print_id(FILE *out, const xpl_id_t *id);

/* Parse a trade id argument: digits give a uint id (*alt then holds the
   same text as a string id, to try next), anything else a string id. */
xpl_id_t ctl_parse_id(const char *s, bool *has_alt, xpl_id_t *alt);

/* The `heatmap` chart of trade e's matrix m, an <svg> element without
   XML declaration (token names from s when it is of e's epoch, may be
   NULL). 0, or -1 when out of memory. */
int ctl_heatmap_svg(FILE *f, const xpl_explanation_t *e, const xpl_matrix_t *m,
                    const xpl_schema_t *s);

/* The first `max` features of a window's what-moved list, each as
   "  name +delta" and its rank change (up/down arrows, or +/- with
   ascii). */
void ctl_print_moved(FILE *out, const xpl_verdict_t *v, uint32_t max, bool ascii);

int cmd_tail(int argc, char **argv);
int cmd_top(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_heatmap(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_keygen(int argc, char **argv);

#endif
