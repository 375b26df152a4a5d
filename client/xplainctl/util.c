/*  xplainctl: option scanning, errors, signals, bars.  */
#include "ctl.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

ctl_common_t ctl_common = {XPL_DEFAULT_QUERY_ENDPOINT, XPL_DEFAULT_SUB_ENDPOINT, 3000, NULL,
                           NULL};

void
ctl_args_init(ctl_args_t *a, const char *cmd, int argc, char **argv)
{
    a->argc = argc;
    a->argv = argv;
    a->i = 1;
    a->cmd = cmd;
    a->status = CTL_OK;
}

bool
ctl_is(const char *arg, const char *opt)
{
    size_t n = strlen(opt);
    return strncmp(arg, opt, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

const char *
ctl_value(ctl_args_t *a, const char *arg, const char *opt)
{
    size_t n = strlen(opt);
    if (arg[n] == '=')
        return arg + n + 1;
    if (a->i < a->argc)
        return a->argv[a->i++];
    a->status = ctl_error(a->cmd, CTL_USAGE, "option %s needs a value", opt);
    return NULL;
}

long
ctl_long(ctl_args_t *a, const char *opt, const char *v)
{
    char *end;
    if (!v)
        return -1;      /* ctl_value has reported it */
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < 0) {
        a->status = ctl_error(a->cmd, CTL_USAGE, "option %s needs a non-negative integer, not '%s'",
                              opt, v);
        return -1;
    }
    return x;
}

const char *
ctl_next(ctl_args_t *a)
{
    while (a->status == CTL_OK && a->i < a->argc) {
        const char *arg = a->argv[a->i++];
        const char *v;
        if (ctl_is(arg, "--query")) {
            if ((v = ctl_value(a, arg, "--query")))
                ctl_common.query = v;
        } else if (ctl_is(arg, "--sub")) {
            if ((v = ctl_value(a, arg, "--sub")))
                ctl_common.sub = v;
        } else if (ctl_is(arg, "--curve-key")) {
            if ((v = ctl_value(a, arg, "--curve-key")))
                ctl_common.curve_key = v;
        } else if (ctl_is(arg, "--server-key")) {
            if ((v = ctl_value(a, arg, "--server-key")))
                ctl_common.server_key = v;
        } else if (ctl_is(arg, "--timeout")) {
            long t = ctl_long(a, "--timeout", ctl_value(a, arg, "--timeout"));
            if (t == 0)
                a->status = ctl_error(a->cmd, CTL_USAGE, "--timeout must be at least 1 ms");
            else if (t > 0)
                ctl_common.timeout_ms = t > 86400000 ? 86400000 : (int)t;
        } else
            return arg;
    }
    /* Both CURVE options or neither, once the whole line is read. */
    if (a->status == CTL_OK && !ctl_common.curve_key != !ctl_common.server_key)
        a->status = ctl_error(a->cmd, CTL_USAGE, "%s needs %s too (try --help)",
                              ctl_common.curve_key ? "--curve-key" : "--server-key",
                              ctl_common.curve_key ? "--server-key" : "--curve-key");
    return NULL;
}

int
ctl_error(const char *cmd, int status, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "xplainctl%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

int
ctl_xpl_error(const char *cmd)
{
    return ctl_error(cmd, CTL_FAIL, "%s", xpl_strerror());
}

int
ctl_curve(const char *cmd, const xpl_curve_t **curve)
{
    static xpl_curve_t *loaded;
    *curve = NULL;
    if (!ctl_common.curve_key)
        return CTL_OK;
    if (!loaded && !(loaded = xpl_curve_load(ctl_common.curve_key, ctl_common.server_key)))
        return ctl_xpl_error(cmd);
    *curve = loaded;
    return CTL_OK;
}

const char *
ctl_curve_hint(void)
{
    const char *h = strstr(xpl_strerror(), "; CURVE: ");
    return h ? h : "";
}

xpl_client_t *
ctl_client(const char *cmd)
{
    const xpl_curve_t *curve;
    if (ctl_curve(cmd, &curve))
        return NULL;
    xpl_client_t *c = xpl_client_new_curve(ctl_common.query, curve);
    if (!c) {
        ctl_xpl_error(cmd);
        return NULL;
    }
    xpl_client_set_timeout(c, ctl_common.timeout_ms);
    return c;
}

static volatile sig_atomic_t s_stopped;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stopped = 1;
}

void
ctl_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;    /* no SA_RESTART: waits see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

bool
ctl_stopped(void)
{
    return s_stopped != 0;
}

void
ctl_bar(char *buf, double frac, int width, bool ascii)
{
    static const char *eighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    if (!(frac > 0))
        frac = 0;
    if (frac > 1)
        frac = 1;
    int units = (int)(frac * width * 8 + 0.5);
    int full = units / 8, part = units % 8, cells = 0;
    char *p = buf;
    for (int i = 0; i < full; i++, cells++) {
        if (ascii)
            *p++ = '#';
        else {
            memcpy(p, "█", 3);
            p += 3;
        }
    }
    if (part && cells < width) {
        if (ascii)
            *p++ = part >= 4 ? '#' : '.';
        else {
            size_t n = strlen(eighths[part]);
            memcpy(p, eighths[part], n);
            p += n;
        }
        cells++;
    }
    for (; cells < width; cells++)
        *p++ = ' ';
    *p = '\0';
}

void
ctl_topk(const float *values, unsigned count, unsigned *idx, unsigned k)
{
    /* Selection of the k largest by magnitude; k and count are small. */
    for (unsigned r = 0; r < k; r++) {
        int best = -1;
        for (unsigned j = 0; j < count; j++) {
            bool used = false;
            for (unsigned q = 0; q < r; q++)
                used |= idx[q] == j;
            if (used)
                continue;
            float a = values[j] < 0 ? -values[j] : values[j];
            float b = best < 0 ? -1 : (values[best] < 0 ? -values[best] : values[best]);
            if (best < 0 || a > b)
                best = (int)j;
        }
        idx[r] = (unsigned)best;
    }
}

/* Bytes of the UTF-8 sequence starting with byte c. */
static int
s_seq_len(unsigned char c)
{
    return c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
}

void
ctl_print_cell(FILE *out, const char *s, int width)
{
    int cells = 0;
    size_t len = strlen(s);
    for (size_t i = 0; i < len && cells < width;) {
        int n = s_seq_len((unsigned char)s[i]);
        if (i + (size_t)n > len)
            break;
        /* Cut with an ellipsis when the name does not fit. */
        bool last = cells == width - 1;
        size_t rest = len - i;
        if (last && rest > (size_t)n) {
            fputs("…", out);
            cells++;
            break;
        }
        fwrite(s + i, 1, (size_t)n, out);
        i += (size_t)n;
        cells++;
    }
    for (; cells < width; cells++)
        fputc(' ', out);
}

void
ctl_print_id(FILE *out, const xpl_id_t *id)
{
    if (id->is_str)
        fputs(id->s, out);
    else
        fprintf(out, "%llu", (unsigned long long)id->u);
}

xpl_id_t
ctl_parse_id(const char *s, bool *has_alt, xpl_id_t *alt)
{
    *has_alt = false;
    size_t n = strlen(s);
    bool digits = n > 0 && n <= 19;
    for (size_t i = 0; i < n && digits; i++)
        digits = s[i] >= '0' && s[i] <= '9';
    if (!digits)
        return xpl_id_str(s);
    *has_alt = true;
    *alt = xpl_id_str(s);
    return xpl_id_uint(strtoull(s, NULL, 10));
}

void
ctl_print_moved(FILE *out, const xpl_verdict_t *v, uint32_t max, bool ascii)
{
    for (uint32_t k = 0; k < v->nmoved && k < max; k++) {
        const xpl_moved_t *mv = &v->moved[k];
        char name[24];
        if (mv->feature)
            snprintf(name, sizeof name, "%.14s", mv->feature);
        else
            snprintf(name, sizeof name, "#%u", mv->index);
        fprintf(out, "  %s %+.3g", name, mv->delta);
        if (mv->rank_up)
            fprintf(out, " %s%d", mv->rank_up > 0 ? (ascii ? "+" : "▲") : (ascii ? "-" : "▼"),
                    mv->rank_up > 0 ? mv->rank_up : -mv->rank_up);
    }
}
