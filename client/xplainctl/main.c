/*  xplainctl: command-line tool for xplaind, on libxplain.  */
#include "ctl.h"

#include <locale.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} s_cmds[] = {
    {"tail", cmd_tail, "live per-trade explanations, top-k features with bars"},
    {"top", cmd_top, "refreshing view of global rankings, drift status and alerts"},
    {"query", cmd_query, "send any query op, print the reply as JSON"},
    {"heatmap", cmd_heatmap, "SVG heatmap of a trade's rollout matrix and feature bars"},
    {"report", cmd_report, "self-contained HTML report of a model: attributions, drift, heads"},
    {"stats", cmd_stats, "daemon counters, rejections and latency percentiles"},
    {"keygen", cmd_keygen, "make a CURVE key pair (certificate files) for --curve"},
};
#define S_NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: xplainctl COMMAND [options]\n\n"
                 "Command-line client of xplaind, the streaming explainer daemon.\n\n"
                 "commands:\n");
    for (size_t i = 0; i < S_NCMDS; i++)
        fprintf(out, "  %-9s %s\n", s_cmds[i].name, s_cmds[i].summary);
    fprintf(out, "\n'xplainctl COMMAND --help' describes a command.\n\n" CTL_COMMON_HELP
                 "\nexit status: 0 success, 1 error (daemon unreachable, unknown model,\n"
                 "timeout, ...), 2 bad command line.\n");
}

int
main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    /* Common options may come before the command too. */
    ctl_args_t a;
    ctl_args_init(&a, NULL, argc, argv);
    const char *cmd = ctl_next(&a);
    if (a.status != CTL_OK)
        return a.status;
    if (!cmd) {
        s_usage(stderr);
        return CTL_USAGE;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        if (strcmp(cmd, "help") == 0 && a.i < argc) {
            char *help[] = {argv[a.i], "--help", NULL};
            for (size_t i = 0; i < S_NCMDS; i++)
                if (strcmp(s_cmds[i].name, argv[a.i]) == 0)
                    return s_cmds[i].fn(2, help);
        }
        s_usage(stdout);
        return CTL_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("xplainctl %s (libxplain, wire contract v%d)\n", xpl_version(), XPL_WIRE_VERSION);
        return CTL_OK;
    }
    for (size_t i = 0; i < S_NCMDS; i++)
        if (strcmp(s_cmds[i].name, cmd) == 0)
            return s_cmds[i].fn(argc - (a.i - 1), argv + (a.i - 1));
    return ctl_error(NULL, CTL_USAGE, "unknown command '%s' (try 'xplainctl --help')", cmd);
}
