/*  xplainctl stats: the daemon's counters and latency percentiles.  */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

static const char s_help[] =
    "usage: xplainctl stats [--json]\n"
    "\n"
    "Print the daemon's counters (messages received, trades explained,\n"
    "published, rejected by reason, lost, ...), the latency from receiving an\n"
    "ingest message to publishing its explanation (percentiles, in\n"
    "microseconds), each model's counters, and this query's round trip.\n"
    "\n"
    "  --json          the raw stats reply as JSON\n"
    "\n" CTL_COMMON_HELP;

static void
s_print(const xpl_stats_t *s, double rtt_us)
{
    unsigned long long up = (unsigned long long)s->uptime_s;
    printf("xplaind up %llud %02llu:%02llu:%02llu   query round trip %.0f us\n\n", up / 86400,
           up / 3600 % 24, up / 60 % 60, up % 60, rtt_us);
    printf("counters\n");
    for (uint32_t i = 0; i < s->ncounters; i++)
        printf("  %-18s %14llu\n", s->counters[i].name,
               (unsigned long long)s->counters[i].value);
    bool any = false;
    for (uint32_t i = 0; i < s->nreasons; i++) {
        if (!s->rejected_by_reason[i].value)
            continue;
        if (!any)
            printf("\nrejected by reason\n");
        any = true;
        printf("  %-18s %14llu\n", s->rejected_by_reason[i].name,
               (unsigned long long)s->rejected_by_reason[i].value);
    }
    if (!any)
        printf("\nrejected by reason: none\n");
    printf("\nlatency ingest -> published (us), %llu trades\n",
           (unsigned long long)s->latency_us.count);
    printf("  %10s %10s %10s %10s %10s\n", "p50", "p90", "p99", "p99.9", "max");
    printf("  %10.1f %10.1f %10.1f %10.1f %10.1f\n", s->latency_us.p50, s->latency_us.p90,
           s->latency_us.p99, s->latency_us.p999, s->latency_us.max);
    printf("\nmodels (%u)\n", s->nmodels);
    if (s->nmodels)
        printf("  %-16s %5s %9s %11s %11s %9s %7s %8s\n", "model", "epoch", "messages", "trades",
               "explained", "rejected", "lost", "restarts");
    for (uint32_t i = 0; i < s->nmodels; i++) {
        const xpl_model_info_t *m = &s->models[i];
        printf("  ");
        ctl_print_cell(stdout, m->model, 16);
        printf(" %5llu %9llu %11llu %11llu %9llu %7llu %8llu\n", (unsigned long long)m->epoch,
               (unsigned long long)m->received, (unsigned long long)m->trades,
               (unsigned long long)m->explained, (unsigned long long)m->rejected,
               (unsigned long long)m->lost, (unsigned long long)m->restarts);
    }
}

int
cmd_stats(int argc, char **argv)
{
    bool json = false;
    ctl_args_t a;
    ctl_args_init(&a, "stats", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (strcmp(arg, "--json") == 0)
            json = true;
        else
            return ctl_error("stats", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
    }
    if (a.status != CTL_OK)
        return a.status;
    xpl_client_t *c = ctl_client("stats");
    if (!c)
        return CTL_FAIL;
    int rc = CTL_OK;
    if (json) {
        static const char req[] = "\x82\xa1v\x01\xa2op\xa5stats";
        void *reply = NULL;
        size_t size;
        char *text = NULL;
        if (xpl_client_request(c, req, sizeof req - 1, &reply, &size)
            || !(text = xpl_json_from_msgpack(reply, size)))
            rc = ctl_xpl_error("stats");
        else
            puts(text);
        free(text);
        free(reply);
    } else {
        xpl_stats_t *s = xpl_client_stats(c);
        if (!s)
            rc = ctl_xpl_error("stats");
        else
            s_print(s, xpl_client_rtt_us(c));
        xpl_stats_destroy(&s);
    }
    xpl_client_destroy(&c);
    return rc;
}
