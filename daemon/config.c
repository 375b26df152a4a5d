/*  config: the option table, INI file, flags, help. See config.h.  */
#include "config.h"

#include "detect.h"
#include "evwin.h"
#include "global.h"
#include "log.h"
#include "segment.h"
#include "shard.h"
#include "xmath.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { T_STR, T_LIST, T_UINT, T_SIZE, T_BOOL, T_DOUBLE, T_INT } opt_type_t;

typedef struct {
    const char *section;
    const char *key;
    const char *flag;       /* without the leading "--" */
    opt_type_t type;
    size_t offset;
    const char *def;
    uint64_t min, max;      /* for T_UINT / T_SIZE */
    bool reloadable;
    const char *help;
    double dmin, dmax;      /* for T_DOUBLE and T_INT */
} opt_t;

#define O(f) offsetof(config_t, f)
#define U64 UINT64_MAX

static const opt_t s_opts[] = {
    {"ingest", "connect", "ingest-connect", T_LIST, O(ingest_connect), "", 0, 0, false,
     "Connect the ingest SUB socket to a model's PUB endpoint (repeatable; several per line)."},
    {"ingest", "bind", "ingest-bind", T_LIST, O(ingest_bind), "", 0, 0, false,
     "Bind the ingest SUB socket so that many model publishers connect to it (repeatable)."},
    {"ingest", "rcvhwm", "ingest-rcvhwm", T_UINT, O(ingest_rcvhwm), "16", 1, 10000000, false,
     "Receive high-water mark of the ingest socket, in whole messages per connected publisher: "
     "each publisher may have this many messages queued plus one being read, so in-flight "
     "ingest memory is bounded by publishers * (rcvhwm + 1) * max-msg-size (see the README's "
     "memory section; a stalled daemon pushes the rest back to the publishers)."},
    {"ingest", "max_msg_size", "max-msg-size", T_SIZE, O(max_msg_size), "0", 0, 1ull << 32, false,
     "Largest ingest frame accepted by ZeroMQ (ZMQ_MAXMSGSIZE); a larger frame drops the "
     "connection before it is read. 0: derived from the tensor limits (the largest valid body, "
     "about 12 * max-elems bytes: attn, grad and rel plus its other fields)."},
    {"ingest", "max_batch", "max-batch", T_UINT, O(max_batch), "4096", 1, 1u << 20, true,
     "Largest batch B (trades per message) accepted."},
    {"ingest", "max_layers", "max-layers", T_UINT, O(max_layers), "64", 1, 4096, true,
     "Largest number of layers L accepted."},
    {"ingest", "max_heads", "max-heads", T_UINT, O(max_heads), "64", 1, 4096, true,
     "Largest number of heads H accepted."},
    {"ingest", "max_tokens", "max-tokens", T_UINT, O(max_tokens), "1024", 2, 65536, true,
     "Largest number of tokens n accepted."},
    {"ingest", "max_elems", "max-elems", T_SIZE, O(max_elems), "4M", 1, 1ull << 34, true,
     "Largest B*L*H*n*n (values per tensor in one message) accepted; 4M fits one trade of "
     "L=8, H=8, n=256 (or 64 trades of n=32)."},
    {"ingest", "max_str", "max-str", T_UINT, O(max_str), "256", 1, 65536, true,
     "Longest trade id or token name accepted, in bytes."},
    {"ingest", "max_trade_targets", "max-trade-targets", T_UINT, O(max_targets_per_trade), "16",
     1, 4096, true,
     "Most targets one message may explain each trade for ('targets': one gradient per "
     "target); more are rejected as 'length'."},
    {"ingest", "max_groups", "max-groups", T_UINT, O(max_groups), "0", 0, 1u << 20, true,
     "Most feature groups one schema may have ('groups'), 0: ingest.max_tokens; more are "
     "rejected as 'length', as are groups naming more than ingest.max_tokens tokens in all."},
    {"ingest", "attention_check", "attention-check", T_STR, O(attention_check), "reject", 0, 0,
     true,
     "What to do with a trade whose attention rows are not probability distributions: reject "
     "(count under 'attention', log, do not explain), warn (count, log, explain) or off."},
    {"ingest", "attention_tol", "attention-tol", T_DOUBLE, O(attention_tol), "0.01", 0, 0, true,
     "Tolerance of the attention check: values >= -tol, row sums within tol of 1 (or of 0 for "
     "a fully masked row).", 0.0, 1.0},
    {"ingest", "schema_rate", "schema-rate", T_UINT, O(schema_rate), "6", 0, 1000000, true,
     "Schema epochs a model may start per minute (its first schema included), with a burst of "
     "as many; further schema changes are rejected as 'schema_rate' (0: no limit)."},
    {"ingest", "allow_models", "allow-models", T_LIST, O(allow_models), "", 0, 0, true,
     "Only accept these model names (empty: any valid name)."},
    {"ingest", "shard", "shard", T_STR, O(shard), "", 0, 0, false,
     "Serve share K of N (K/N, 0 <= K < N) of sharded publishers: subscribe to their topic "
     "prefix shard/K/N/ only (proto/README.md, \"Sharding\"), and publish this daemon's whole "
     "state on state/<model> for an aggregator (0/1: the whole stream on attn/). Empty: "
     "unsharded, no state/."},
    {"ingest", "max_models", "max-models", T_UINT, O(max_models), "256", 1, 65536, false,
     "Most models tracked at once; messages for further models are rejected."},
    {"publish", "endpoint", "publish", T_STR, O(publish), "tcp://127.0.0.1:5557", 0, 0, false,
     "Bind the PUB socket for xpl/, glob/, drift/ and heads/ here."},
    {"publish", "sndhwm", "publish-sndhwm", T_UINT, O(publish_sndhwm), "10000", 0, 100000000, false,
     "Send high-water mark per subscriber, in messages: what a slow subscriber may hold in the "
     "daemon's memory; past it that subscriber loses messages (it sees seq gaps), others do not. "
     "ZeroMQ accounts for reads in steps of half the mark, so keep a subscriber's backlog under "
     "half of it."},
    {"query", "endpoint", "query", T_STR, O(query), "tcp://127.0.0.1:5558", 0, 0, false,
     "Bind the ROUTER socket for queries here."},
    {"query", "max_size", "query-max-size", T_SIZE, O(query_max_size), "64K", 1024, 16ull << 20, true,
     "Largest query request read: a larger one (up to 16M) is answered with bad_request without "
     "being parsed and counted in query_too_large; past 16M ZeroMQ drops the connection."},
    {"explain", "methods", "methods", T_STR, O(methods), "rollout,grad_rollout,first_layer,attn_mean",
     0, 0, true,
     "Methods to compute: rollout, grad_rollout, first_layer, attn_mean, diag, flow, colsum, "
     "grad_rollout_signed, lrp_rollout (the gradient methods only run when a gradient is sent, "
     "lrp_rollout only when a relevance tensor rel is sent too). A [model.NAME] section may "
     "set methods, fusion, grad_resnorm, discard, discard_flow and start_layer for one model. "
     "A fused message with fgrad is refused as 'needs_heads' when lrp_rollout is asked for, and "
     "as 'fused_form' when grad_rollout_signed is asked for and fgrad_signed is not sent."},
    {"explain", "fusion", "fusion", T_STR, O(fusion), "mean", 0, 0, true,
     "Head fusion for rollout, first_layer and colsum: mean, max or min. Max and min need every "
     "head: messages in the fused form (per layer the head means) are then refused as "
     "'needs_heads'."},
    {"explain", "grad_resnorm", "grad-resnorm", T_BOOL, O(grad_resnorm), "false", 0, 0, true,
     "Apply the residual normalisation rownorm(R - I) + I to the gradient methods."},
    {"explain", "discard", "discard", T_DOUBLE, O(discard), "0", 0, 0, true,
     "Discard ratio of rollout: in every layer each row loses its int(ratio * m) smallest "
     "entries among the m non-CLS columns after head fusion (0: none).", 0.0, 1.0},
    {"explain", "discard_flow", "discard-flow", T_BOOL, O(discard_flow), "false", 0, 0, true,
     "Apply the discard ratio to flow's capacities too."},
    {"explain", "start_layer", "start-layer", T_INT, O(start_layer), "0", 0, 0, true,
     "First layer rollout and the gradient methods use (negative: counted from the end, -1 is "
     "the last layer); a model with L <= start_layer or L < -start_layer is rejected as 'shape'.",
     -4096.0, 4095.0},
    {"explain", "flow_every", "flow-every", T_UINT, O(flow_every), "1", 0, 1u << 30, true,
     "When flow is enabled, compute it for every k-th trade of a model (0: only on request)."},
    {"cache", "entries", "cache-entries", T_UINT, O(cache_entries), "4096", 0, 1u << 24, false,
     "Recent trades kept for the trade query (with their per-layer matrices)."},
    {"cache", "mb", "cache-mb", T_UINT, O(cache_mb), "64", 0, 1u << 20, false,
     "Memory budget of the recent-trade cache, in MiB; the oldest trades go first."},
    {"log", "level", "log-level", T_STR, O(log_level), "info", 0, 0, true,
     "Log level: err, warning, notice, info or debug."},
    {"log", "rate", "log-rate", T_UINT, O(log_rate), "5", 1, 1000000, true,
     "Lines per second per kind of message caused by network input (more are counted, not printed)."},
    {"global", "half_life", "half-life", T_UINT, O(half_life), "1000", 1, 1u << 30, false,
     "Half-life of the decayed global mean, in trades."},
    {"global", "publish_interval_ms", "glob-interval-ms", T_UINT, O(glob_interval_ms), "1000", 10,
     3600000, true, "How often glob/ and heads/ are published for models that changed, in ms."},
    {"global", "decay_s", "decay-half-life-s", T_DOUBLE, O(decay_s), "0", 0, 0, false,
     "Half-life of the decayed global mean in seconds of the trades' own ts instead of trades "
     "(0: by trades, global.half_life). Independent of arrival order, so it merges exactly "
     "across shards (MATH.md, \"Merging across daemons\").", 0.0, 1e9},
    {"global", "max_targets", "max-targets", T_UINT, O(max_targets), "16", 0, 4096, false,
     "Target classes kept separately per model and epoch (more are counted as untracked)."},
    {"global", "segment_by", "segment-by", T_STR, O(segment_by), "", 0, 0, false,
     "Tag keys to segment by, comma-separated (at most 4, e.g. desk,venue): a trade's segment is "
     "its values for those keys, and global means and drift are kept per segment as well as "
     "overall, in the same drift and decay modes. Empty: no segments. An aggregator "
     "(aggregate.shards) given it merges its shards' segments (give it theirs)."},
    {"global", "max_segments", "max-segments", T_UINT, O(max_segments), "16", 1, 4096, false,
     "Segments tracked per model and schema epoch, first come first served; trades of further "
     "segments count overall and in the drift query's segments_overflow."},
    {"drift", "window", "drift-window", T_UINT, O(drift_window), "500", 1, 1u << 30, false,
     "Trades per tumbling drift window."},
    {"drift", "rho_min", "drift-rho-min", T_DOUBLE, O(drift_rho_min), "0.8", 0, 0, true,
     "Alert when Spearman's rho of a window against its reference falls below this.", -1.0, 1.0},
    {"drift", "ndcg_min", "drift-ndcg-min", T_DOUBLE, O(drift_ndcg_min), "0.9", 0, 0, true,
     "Alert when nDCG@k of a window against its reference falls below this.", 0.0, 1.0},
    {"drift", "ndcg_k", "drift-ndcg-k", T_UINT, O(drift_ndcg_k), "10", 1, 65536, true,
     "k of nDCG@k."},
    {"drift", "js_max", "drift-js-max", T_DOUBLE, O(drift_js_max), "0.1", 0, 0, true,
     "Alert when the Jensen-Shannon divergence (base 2) of a window from its reference exceeds this.",
     0.0, 1.0},
    {"drift", "mode", "drift-mode", T_STR, O(drift_mode), "fixed", 0, 0, true,
     "How a window becomes an alert: fixed (the thresholds above), calibrated (a departure "
     "beyond drift.multiple times the spread the first drift.calib_windows windows after a "
     "reference showed) or cusum (a CUSUM per statistic on that standardised departure, "
     "drift.cusum_k and drift.cusum_h). See MATH.md, \"Drift verdicts\"."},
    {"drift", "calib_windows", "drift-calib-windows", T_UINT, O(drift_calib_windows), "50", 2,
     1000000, true,
     "Windows after a reference is set that measure each statistic's spread (calibrated and "
     "cusum modes; no alert meanwhile)."},
    {"drift", "multiple", "drift-multiple", T_DOUBLE, O(drift_multiple), "5", 0, 0, true,
     "Calibrated mode: alert when a statistic departs more than this many of its calibrated "
     "standard deviations.", 0.001, 1000.0},
    {"drift", "cusum_k", "drift-cusum-k", T_DOUBLE, O(drift_cusum_k), "0.5", 0, 0, true,
     "CUSUM allowance k, in standard deviations per window.", 0.0, 100.0},
    {"drift", "cusum_h", "drift-cusum-h", T_DOUBLE, O(drift_cusum_h), "8", 0, 0, true,
     "CUSUM threshold h, in standard deviations (8 with k 0.5: about 19000 windows between "
     "false alarms per statistic for normal noise; the drift query reports it).", 0.001, 1000.0},
    {"drift", "sd_floor", "drift-sd-floor", T_DOUBLE, O(drift_sd_floor), "0.1", 0, 0, true,
     "Smallest standard deviation used, as a fraction of the fixed margin (1 - rho_min, "
     "1 - ndcg_min, js_max).", 0.0, 10.0},
    {"drift", "moved_k", "drift-moved-k", T_UINT, O(drift_moved_k), "5", 0, 16, true,
     "Features listed per closed window as those that moved most against the reference "
     "(largest change of mean attribution; 0: none)."},
    {"drift", "alerts_kept", "alerts-kept", T_UINT, O(alerts_kept), "100", 0, 1000000, false,
     "Alerts kept per model for the drift query."},
    {"drift", "reference_file", "reference-file", T_STR, O(reference_file), "", 0, 0, true,
     "External reference attributions ('<model> <method> <v1> ... <v_nf>' per line, or "
     "'<model> <method> <feature>=<v> ...' by name: features without attribution are dropped), "
     "e.g. permutation importance; read at start and on SIGHUP."},
    {"drift", "window_s", "drift-window-s", T_DOUBLE, O(drift_window_s), "0", 0, 0, false,
     "Drift windows by event time: [k*W, (k+1)*W) seconds of the trades' ts, closed when the "
     "newest ts minus drift.lateness_s passes their end; later trades are counted as late, not "
     "added. Merges exactly across shards. 0: windows of drift.window trades.", 0.0, 1e9},
    {"drift", "lateness_s", "drift-lateness-s", T_DOUBLE, O(drift_lateness_s), "1", 0, 0, false,
     "Allowed lateness of event-time windows, in seconds: how far a trade's ts may lag the newest "
     "before it counts as late.", 0.0, 1e6},
    {"state", "dir", "state-dir", T_STR, O(state_dir), "", 0, 0, false,
     "Directory for durable state (global aggregates, drift references, alerts); empty: none."},
    {"state", "interval_s", "snapshot-interval", T_UINT, O(snapshot_interval_s), "10", 1, 86400, true,
     "Seconds between state snapshots (a kill -9 loses at most this much)."},
    {"metrics", "listen", "metrics", T_STR, O(metrics), "", 0, 0, false,
     "Serve Prometheus metrics over HTTP at http://ADDR:PORT/metrics (ADDR defaults to 127.0.0.1; "
     "empty: off)."},
    {"metrics", "max_connections", "metrics-max-conns", T_UINT, O(metrics_max_conns), "1024", 1,
     65536, false,
     "Most HTTP connections open at once on the metrics endpoint; further ones wait in the listen "
     "queue until one closes."},
    {"metrics", "max_per_ip", "metrics-max-per-ip", T_UINT, O(metrics_max_per_ip), "768", 1, 65536,
     false,
     "Most HTTP connections open at once from one client address; further ones are refused "
     "(counted and logged). Below max_connections, so that one address cannot take every slot."},
    {"metrics", "timeout_ms", "metrics-timeout-ms", T_UINT, O(metrics_timeout_ms), "2000", 100,
     600000, false,
     "An HTTP client gets this long to send its whole request, and ten times as long to read the "
     "answer; then the connection is closed (counted and logged)."},
    {"metrics", "top_features", "metrics-top-features", T_UINT, O(metrics_top_features), "10", 0,
     65536, false,
     "Features exported per model and method by xplaind_attribution_mean and _decayed: the k "
     "largest by max(mean, decayed) (0: all). Each adds 2 series per model and method."},
    {"security", "curve", "curve", T_BOOL, O(curve), "false", 0, 0, false,
     "Encrypt and authenticate every socket with CURVE; only keys in clients_dir are admitted."},
    {"security", "secret_key_file", "secret-key-file", T_STR, O(secret_key_file), "", 0, 0, false,
     "The daemon's CURVE certificate with its secret key (xplainctl keygen writes one)."},
    {"security", "clients_dir", "clients-dir", T_STR, O(clients_dir), "", 0, 0, true,
     "Directory of admitted client public certificates (*.key); re-read on SIGHUP."},
    {"aggregate", "shards", "aggregate", T_LIST, O(aggregate), "", 0, 0, false,
     "Run as the aggregator of these shard daemons (their publish endpoints, up to 16): merge "
     "their whole states exactly and serve glob/, drift/, heads/ and the queries as one daemon "
     "would, forwarding their xpl/. No ingest."},
    {"aggregate", "queries", "aggregate-query", T_LIST, O(aggregate_query), "", 0, 0, false,
     "The shards' query endpoints, in the order of aggregate.shards: trade queries go to the "
     "shard that owns the id."},
    {"aggregate", "shard_keys", "aggregate-shard-key", T_LIST, O(aggregate_keys), "", 0, 0, false,
     "With security.curve: the shards' public CURVE certificates (xplainctl keygen writes them), "
     "one for every shard or one per shard in the order of aggregate.shards. The aggregator "
     "connects to them as a CURVE client with its own security.secret_key_file, which their "
     "security.clients_dir must admit."},
    {"aggregate", "stale_ms", "aggregate-stale-ms", T_UINT, O(aggregate_stale_ms), "5000", 100,
     3600000, false,
     "A shard whose state has not arrived for this long is reported stale (stats, glob/, "
     "metrics, log); its last state still counts. Until then, and until a shard's first "
     "state arrives (at most this long after the aggregator starts), no event-time window "
     "closes without it."},
    {"demo", "enabled", "demo", T_BOOL, O(demo), "false", 0, 0, false,
     "Run a built-in synthetic model stream into the daemon (its importance changes every "
     "demo.drift_every trades)."},
    {"demo", "rate", "demo-rate", T_UINT, O(demo_rate), "200", 1, 10000000, false,
     "Trades per second of the demo stream."},
    {"demo", "drift_every", "demo-drift-every", T_UINT, O(demo_drift_every), "6000", 0, 1u << 30,
     false,
     "Trades between the demo stream's changes of importance regime (0: never, a stream without "
     "drift)."},
    {"demo", "batch", "demo-batch", T_UINT, O(demo_batch), "1", 1, 4096, false,
     "Trades per message of the demo stream."},
};
#define NOPTS (sizeof s_opts / sizeof s_opts[0])

static void *
s_field(config_t *cfg, const opt_t *o)
{
    return (char *)cfg + o->offset;
}

static const void *
s_cfield(const config_t *cfg, const opt_t *o)
{
    return (const char *)cfg + o->offset;
}

static void
s_list_clear(cfg_list_t *l)
{
    for (int k = 0; k < l->count; k++)
        free(l->items[k]);
    l->count = 0;
}

/* Append the comma/space separated items of `value`. */
static int
s_list_add(cfg_list_t *l, const char *value, char *err, size_t elen)
{
    const char *p = value;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        const char *q = p;
        while (*q && *q != ',' && *q != ' ' && *q != '\t')
            q++;
        if (l->count == CFG_LIST_MAX) {
            snprintf(err, elen, "more than %d entries", CFG_LIST_MAX);
            return -1;
        }
        l->items[l->count++] = strndup(p, (size_t)(q - p));
        p = q;
    }
    return 0;
}

static int
s_parse_uint(const char *v, bool size, uint64_t *out)
{
    errno = 0;
    char *end;
    if (*v == '-' || *v == '\0')
        return -1;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v)
        return -1;
    if (size && *end) {
        unsigned shift = 0;
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -1;
        }
        if (x > (UINT64_MAX >> shift))
            return -1;
        x <<= shift;
        end++;
        if (*end == 'i')    /* K, KB, Ki, KiB: all mean 1024 */
            end++;
        if (*end == 'B')
            end++;
    }
    if (*end)
        return -1;
    *out = x;
    return 0;
}

static int
s_parse_bool(const char *v, bool *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (int k = 0; k < 4; k++) {
        if (strcasecmp(v, yes[k]) == 0) { *out = true; return 0; }
        if (strcasecmp(v, no[k]) == 0) { *out = false; return 0; }
    }
    return -1;
}

/* Set one option from text. `replace_list`: the first time a list option
   is set from a new source, it replaces what the previous source said. */
static int
s_set(config_t *cfg, const opt_t *o, const char *value, bool replace_list, char *err, size_t elen)
{
    void *f = s_field(cfg, o);
    switch (o->type) {
    case T_STR:
        free(*(char **)f);
        *(char **)f = strdup(value);
        return 0;
    case T_LIST:
        if (replace_list)
            s_list_clear(f);
        return s_list_add(f, value, err, elen);
    case T_UINT:
    case T_SIZE: {
        uint64_t x;
        if (s_parse_uint(value, o->type == T_SIZE, &x) || x < o->min || x > o->max) {
            snprintf(err, elen, "'%s' is not %s from %" PRIu64 " to %" PRIu64, value,
                     o->type == T_SIZE ? "a size (with optional K, M, G suffix)" : "an integer",
                     o->min, o->max);
            return -1;
        }
        *(uint64_t *)f = x;
        return 0;
    }
    case T_DOUBLE: {
        char *end;
        errno = 0;
        double x = strtod(value, &end);
        if (errno || end == value || *end || !(x >= o->dmin && x <= o->dmax)) {
            snprintf(err, elen, "'%s' is not a number from %g to %g", value, o->dmin, o->dmax);
            return -1;
        }
        *(double *)f = x;
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(value, &end, 10);
        if (errno || end == value || *end || x < (long long)o->dmin || x > (long long)o->dmax) {
            snprintf(err, elen, "'%s' is not an integer from %.0f to %.0f", value, o->dmin,
                     o->dmax);
            return -1;
        }
        *(int64_t *)f = x;
        return 0;
    }
    case T_BOOL:
        if (s_parse_bool(value, f)) {
            snprintf(err, elen, "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", value);
            return -1;
        }
        return 0;
    }
    return -1;
}

static const opt_t *
s_find_key(const char *section, const char *key)
{
    for (size_t k = 0; k < NOPTS; k++)
        if (strcmp(s_opts[k].section, section) == 0 && strcmp(s_opts[k].key, key) == 0)
            return &s_opts[k];
    return NULL;
}

static const opt_t *
s_find_flag(const char *flag, size_t len)
{
    for (size_t k = 0; k < NOPTS; k++)
        if (strlen(s_opts[k].flag) == len && memcmp(s_opts[k].flag, flag, len) == 0)
            return &s_opts[k];
    return NULL;
}

typedef struct {
    config_t *cfg;
    const char *file;
    FILE *fp;
    int lineno;             /* line the parser is on (our reader counts) */
    bool list_seen[NOPTS];
    int errors;
} s_ini_ctx_t;

/* inih line reader that counts lines (Debian's inih passes no line
   numbers to handlers) and refuses lines longer than inih's buffer
   instead of letting them be split silently. */
static char *
s_ini_reader(char *buf, int num, void *stream)
{
    s_ini_ctx_t *c = stream;
    if (!fgets(buf, num, c->fp))
        return NULL;
    c->lineno++;
    size_t len = strlen(buf);
    if (len == (size_t)num - 1 && buf[len - 1] != '\n' && !feof(c->fp)) {
        fprintf(stderr, "xplaind: %s:%d: line longer than %d bytes\n", c->file, c->lineno, num - 2);
        c->errors++;
        int ch;
        while ((ch = fgetc(c->fp)) != EOF && ch != '\n')
            ;
        buf[0] = '\0';
    }
    return buf;
}

/* A model name as the contract defines it: 1-64 bytes of [A-Za-z0-9_.-]. */
static bool
s_model_name_ok(const char *m)
{
    size_t len = strlen(m);
    bool ok = len >= 1 && len <= 64;
    for (size_t i = 0; ok && i < len; i++)
        ok = (m[i] >= 'a' && m[i] <= 'z') || (m[i] >= 'A' && m[i] <= 'Z') ||
             (m[i] >= '0' && m[i] <= '9') || m[i] == '_' || m[i] == '.' || m[i] == '-';
    return ok;
}

static cfg_model_t *
s_model_entry(config_t *cfg, const char *model, char *err, size_t elen)
{
    for (int k = 0; k < cfg->nmodel_opts; k++)
        if (strcmp(cfg->model_opts[k].name, model) == 0)
            return &cfg->model_opts[k];
    if (!s_model_name_ok(model)) {
        snprintf(err, elen, "'%s' is not a model name (1-64 bytes of [A-Za-z0-9_.-])", model);
        return NULL;
    }
    if (cfg->nmodel_opts == CFG_MODELS_MAX) {
        snprintf(err, elen, "more than %d [model.NAME] sections", CFG_MODELS_MAX);
        return NULL;
    }
    cfg_model_t *m = realloc(cfg->model_opts, (size_t)(cfg->nmodel_opts + 1) * sizeof *m);
    if (!m) {
        snprintf(err, elen, "out of memory");
        return NULL;
    }
    cfg->model_opts = m;
    m = &cfg->model_opts[cfg->nmodel_opts++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", model);
    return m;
}

/* One key of a [model.NAME] section: the [explain] option of the same
   name, parsed with the same rules, for that model only. */
static int
s_model_key(config_t *cfg, const char *model, const char *key, const char *value, char *err,
            size_t elen)
{
    cfg_model_t *m = s_model_entry(cfg, model, err, elen);
    if (!m)
        return -1;
    const char *bad = NULL;
    if (strcmp(key, "methods") == 0) {
        if (xm_methods_parse(value, &m->methods, &bad) || m->methods == 0) {
            snprintf(err, elen, "'%s' is not a list of methods (unknown or none)", value);
            return -1;
        }
        m->set |= CFG_MO_METHODS;
        return 0;
    }
    if (strcmp(key, "fusion") == 0) {
        if ((m->fusion = xm_fusion_parse(value)) < 0) {
            snprintf(err, elen, "'%s' is not mean, max or min", value);
            return -1;
        }
        m->set |= CFG_MO_FUSION;
        return 0;
    }
    bool *flag = strcmp(key, "grad_resnorm") == 0   ? &m->grad_resnorm
                 : strcmp(key, "discard_flow") == 0 ? &m->discard_flow : NULL;
    if (flag) {
        if (s_parse_bool(value, flag)) {
            snprintf(err, elen, "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", value);
            return -1;
        }
        m->set |= flag == &m->grad_resnorm ? CFG_MO_RESNORM : CFG_MO_DISCARD_FLOW;
        return 0;
    }
    if (strcmp(key, "discard") == 0 || strcmp(key, "start_layer") == 0) {
        config_t tmp;
        memset(&tmp, 0, sizeof tmp);
        if (s_set(&tmp, s_find_key("explain", key), value, true, err, elen))
            return -1;
        if (key[0] == 'd') {
            m->discard = tmp.discard;
            m->set |= CFG_MO_DISCARD;
        } else {
            m->start_layer = tmp.start_layer;
            m->set |= CFG_MO_START;
        }
        return 0;
    }
    snprintf(err, elen, "unknown option (a model section takes methods, fusion, grad_resnorm, "
                        "discard, discard_flow, start_layer)");
    return -1;
}

bool
config_model_opts(const config_t *cfg, const char *model, xm_opts_t *o)
{
    for (int k = 0; k < cfg->nmodel_opts; k++) {
        const cfg_model_t *m = &cfg->model_opts[k];
        if (strcmp(m->name, model) != 0)
            continue;
        if (m->set & CFG_MO_METHODS) o->methods = m->methods;
        if (m->set & CFG_MO_FUSION) o->fusion = (xm_fusion_t)m->fusion;
        if (m->set & CFG_MO_RESNORM) o->grad_resnorm = m->grad_resnorm;
        if (m->set & CFG_MO_DISCARD) o->discard = m->discard;
        if (m->set & CFG_MO_DISCARD_FLOW) o->discard_flow = m->discard_flow;
        if (m->set & CFG_MO_START) o->start_layer = (int32_t)m->start_layer;
        return true;
    }
    return false;
}

/* The [model.NAME] sections as --print-config shows them. */
static void
s_print_models(const config_t *cfg, FILE *out)
{
    static const char *fusions[] = {"mean", "max", "min"};
    for (int k = 0; k < cfg->nmodel_opts; k++) {
        const cfg_model_t *m = &cfg->model_opts[k];
        fprintf(out, "\n[model.%s]\n", m->name);
        if (m->set & CFG_MO_METHODS) {
            fprintf(out, "methods = ");
            for (int b = 0, first = 1; b < XM_NMETHODS; b++)
                if (m->methods & XM_BIT(b)) {
                    fprintf(out, "%s%s", first ? "" : ",", xm_method_name((xm_method_t)b));
                    first = 0;
                }
            fprintf(out, "\n");
        }
        if (m->set & CFG_MO_FUSION) fprintf(out, "fusion = %s\n", fusions[m->fusion]);
        if (m->set & CFG_MO_RESNORM)
            fprintf(out, "grad_resnorm = %s\n", m->grad_resnorm ? "true" : "false");
        if (m->set & CFG_MO_DISCARD) fprintf(out, "discard = %g\n", m->discard);
        if (m->set & CFG_MO_DISCARD_FLOW)
            fprintf(out, "discard_flow = %s\n", m->discard_flow ? "true" : "false");
        if (m->set & CFG_MO_START) fprintf(out, "start_layer = %" PRId64 "\n", m->start_layer);
    }
}

static int
s_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    s_ini_ctx_t *c = user;
    int lineno = c->lineno;
    if (strncmp(section, "model.", 6) == 0) {
        char err[256];
        if (s_model_key(c->cfg, section + 6, name, value, err, sizeof err)) {
            fprintf(stderr, "xplaind: %s:%d: bad value for [%s] %s: %s\n", c->file, lineno, section,
                    name, err);
            c->errors++;
        }
        return 1;
    }
    const opt_t *o = s_find_key(section, name);
    if (!o) {
        fprintf(stderr, "xplaind: %s:%d: unknown option '%s' in section [%s]\n", c->file, lineno,
                name, section);
        c->errors++;
        return 1;
    }
    size_t idx = (size_t)(o - s_opts);
    char err[256];
    if (s_set(c->cfg, o, value, !c->list_seen[idx], err, sizeof err)) {
        fprintf(stderr, "xplaind: %s:%d: bad value for %s.%s: %s\n", c->file, lineno, section, name, err);
        c->errors++;
    }
    c->list_seen[idx] = true;
    return 1;
}

/* The word shown for an option's value in --help. */
static const char *
s_placeholder(const opt_t *o)
{
    switch (o->type) {
    case T_BOOL: return "[=BOOL]";
    case T_UINT: return " N";
    case T_INT: return " N";
    case T_SIZE: return " SIZE";
    case T_DOUBLE: return " X";
    case T_LIST: return strstr(o->flag, "ingest-") ? " EP" : " LIST";
    case T_STR: break;
    }
    if (strstr(o->key, "file")) return " FILE";
    if (strcmp(o->key, "dir") == 0 || strstr(o->key, "_dir")) return " DIR";
    if (strcmp(o->key, "endpoint") == 0) return " EP";
    if (strcmp(o->key, "listen") == 0) return " ADDR:PORT";
    if (strcmp(o->key, "methods") == 0) return " LIST";
    return " NAME";
}

/* A size as the shortest exact K/M/G form ("256M"), else bytes. */
static void
s_size_str(uint64_t v, char *buf, size_t len)
{
    static const char units[] = "GMK";
    for (int k = 0; k < 3; k++) {
        unsigned shift = 30 - 10 * (unsigned)k;
        if (v && (v & ((1ull << shift) - 1)) == 0) {
            snprintf(buf, len, "%llu%c", (unsigned long long)(v >> shift), units[k]);
            return;
        }
    }
    snprintf(buf, len, "%llu", (unsigned long long)v);
}

static void s_print(const config_t *cfg, FILE *out);

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: xplaind [--config FILE] [options]\n"
            "\n"
            "Streaming attention-attribution daemon: subscribes to attn/<model> tensors,\n"
            "publishes per-trade explanations (xpl/<model>) and answers queries.\n"
            "It runs in the foreground and logs to stderr.\n"
            "\n"
            "  --config FILE        read options from an INI file (flags win over it)\n"
            "  --check-config       validate the configuration and exit\n"
            "  --print-config       print the effective configuration as INI and exit\n"
            "  --version            print the version and exit\n"
            "  --help               this text\n\n");
    const char *section = "";
    for (size_t k = 0; k < NOPTS; k++) {
        const opt_t *o = &s_opts[k];
        if (strcmp(section, o->section) != 0) {
            section = o->section;
            fprintf(out, "[%s]\n", section);
        }
        fprintf(out, "  --%s%s\n      %s\n", o->flag, s_placeholder(o), o->help);
        if (o->type == T_UINT) {
            fprintf(out, "      Allowed: %llu to %llu.\n", (unsigned long long)o->min,
                    (unsigned long long)o->max);
        } else if (o->type == T_SIZE) {
            char lo[32], hi[32];
            s_size_str(o->min, lo, sizeof lo);
            s_size_str(o->max, hi, sizeof hi);
            fprintf(out, "      Allowed: %s to %s (suffixes K, M, G).\n", lo, hi);
        } else if (o->type == T_DOUBLE) {
            fprintf(out, "      Allowed: %g to %g.\n", o->dmin, o->dmax);
        } else if (o->type == T_INT) {
            fprintf(out, "      Allowed: %.0f to %.0f.\n", o->dmin, o->dmax);
        }
        fprintf(out, "      (%s.%s, default '%s'%s)\n", o->section, o->key, o->def,
                o->reloadable ? ", SIGHUP reloads" : "");
    }
}

/* Policy name to cfg_attention_t; -1 when unknown. */
static int
s_attention_parse(const char *name)
{
    static const char *names[] = {"reject", "warn", "off"};
    for (int k = 0; k < 3; k++)
        if (strcmp(name, names[k]) == 0)
            return k;
    return -1;
}

/* Derive the parsed forms from their option strings (-1 ids for names
   not known); returns xm_methods_parse's result, `bad` where it failed. */
static int
s_derive(config_t *cfg, const char **bad)
{
    int rc = xm_methods_parse(cfg->methods, &cfg->method_set, bad);
    cfg->fusion_id = xm_fusion_parse(cfg->fusion);
    cfg->attention_check_id = s_attention_parse(cfg->attention_check);
    cfg->log_level_id = log_level_parse(cfg->log_level);
    cfg->drift_mode_id = detect_mode_parse(cfg->drift_mode, strlen(cfg->drift_mode));
    segkeys_parse(&cfg->segkeys, cfg->segment_by);     /* n = 0 when bad: s_finish says why */
    return rc;
}

/* Derive the parsed forms and check cross-field rules. */
static int
s_finish(config_t *cfg)
{
    int errors = 0;
    const char *bad = NULL;
    if (s_derive(cfg, &bad)) {
        fprintf(stderr, "xplaind: bad value for explain.methods: unknown method near '%s' "
                        "(known: rollout, grad_rollout, first_layer, attn_mean, diag, flow, "
                        "colsum, grad_rollout_signed, lrp_rollout)\n", bad);
        errors++;
    } else if (cfg->method_set == 0) {
        fprintf(stderr, "xplaind: bad value for explain.methods: no method enabled\n");
        errors++;
    }
    if (cfg->fusion_id < 0) {
        fprintf(stderr, "xplaind: bad value for explain.fusion: '%s' (mean, max or min)\n", cfg->fusion);
        errors++;
    }
    if (cfg->attention_check_id < 0) {
        fprintf(stderr, "xplaind: bad value for ingest.attention_check: '%s' (reject, warn or off)\n",
                cfg->attention_check);
        errors++;
    }
    seg_err_t se = segkeys_parse(&cfg->segkeys, cfg->segment_by);
    if (se) {
        fprintf(stderr, "xplaind: bad value for global.segment_by: '%s' (%s: at most %d tag keys "
                        "of 1-%d bytes of [A-Za-z0-9_.-], comma-separated, none twice)\n",
                cfg->segment_by, seg_err_name(se), SEG_KEYS_MAX, SEG_KEY_MAX);
        errors++;
    }
    if (cfg->drift_mode_id < 0) {
        fprintf(stderr, "xplaind: bad value for drift.mode: '%s' (fixed, calibrated or cusum)\n",
                cfg->drift_mode);
        errors++;
    }
    if (cfg->log_level_id < 0) {
        fprintf(stderr, "xplaind: bad value for log.level: '%s' (err, warning, notice, info, debug)\n",
                cfg->log_level);
        errors++;
    }
    for (int k = 0; k < cfg->allow_models.count; k++) {
        const char *m = cfg->allow_models.items[k];
        if (!s_model_name_ok(m)) {
            fprintf(stderr, "xplaind: bad value for ingest.allow_models: '%s' is not a model name\n", m);
            errors++;
        }
    }
    if (cfg->shard[0] && shard_parse(cfg->shard, &cfg->shard_k, &cfg->shard_n)) {
        fprintf(stderr, "xplaind: bad value for ingest.shard: '%s' (K/N with 0 <= K < N <= %u)\n",
                cfg->shard, SHARD_MAX);
        errors++;
    }
    cfg->decay_ns = (int64_t)llround(cfg->decay_s * 1e9);
    cfg->drift_window_ns = (int64_t)llround(cfg->drift_window_s * 1e9);
    cfg->drift_lateness_ns = (int64_t)llround(cfg->drift_lateness_s * 1e9);
    if ((cfg->decay_s > 0 && cfg->decay_ns < 1) || (cfg->drift_window_s > 0 && cfg->drift_window_ns < 1)) {
        fprintf(stderr, "xplaind: global.decay_s and drift.window_s must be 0 or at least 1 ns\n");
        errors++;
    }
    if (cfg->drift_window_ns > 0 &&
        GLOBAL_EVWIN_KEEP + cfg->drift_lateness_ns / cfg->drift_window_ns + 2 > EVWIN_MAX_SLOTS) {
        fprintf(stderr, "xplaind: drift.lateness_s is too many windows of drift.window_s (at most "
                        "%u)\n", EVWIN_MAX_SLOTS - GLOBAL_EVWIN_KEEP - 2);
        errors++;
    }
    if (cfg->aggregate.count != cfg->aggregate_query.count) {
        fprintf(stderr, "xplaind: aggregate.queries must name one query endpoint per endpoint of "
                        "aggregate.shards (%d, not %d)\n", cfg->aggregate.count,
                cfg->aggregate_query.count);
        errors++;
    }
    if (cfg->aggregate.count && cfg->curve && cfg->aggregate_keys.count != 1 &&
        cfg->aggregate_keys.count != cfg->aggregate.count) {
        fprintf(stderr, "xplaind: with security.curve an aggregator needs the shards' public "
                        "certificates: aggregate.shard_keys, one for all or one per shard (%d "
                        "shards, %d certificates)\n", cfg->aggregate.count,
                cfg->aggregate_keys.count);
        errors++;
    }
    if (cfg->aggregate_keys.count && !(cfg->aggregate.count && cfg->curve)) {
        fprintf(stderr, "xplaind: aggregate.shard_keys needs aggregate.shards and security.curve\n");
        errors++;
    }
    if (cfg->aggregate.count && cfg->shard[0]) {
        fprintf(stderr, "xplaind: a daemon is a shard (ingest.shard) or an aggregator "
                        "(aggregate.shards), not both\n");
        errors++;
    }
    if (!cfg->demo && cfg->ingest_connect.count == 0 && cfg->ingest_bind.count == 0 &&
        cfg->aggregate.count == 0) {
        fprintf(stderr, "xplaind: nothing to ingest from: give --ingest-connect EP or "
                        "--ingest-bind EP (or --demo)\n");
        errors++;
    }
    return errors ? -1 : 0;
}

static cfg_action_t
s_load(config_t *cfg, int argc, char **argv, bool quiet_actions)
{
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    for (size_t k = 0; k < NOPTS; k++)
        if (s_set(cfg, &s_opts[k], s_opts[k].def, true, err, sizeof err))
            abort();    /* a bad default is a programming error */

    /* The config file is read first wherever --config appears. */
    bool check = false, print = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (!quiet_actions)
                s_usage(stdout);
            return CFG_EXIT_OK;
        }
        if (strcmp(a, "--version") == 0) {
            if (!quiet_actions)
                printf("xplaind %s\n", XPL_VERSION);
            return CFG_EXIT_OK;
        }
        if (strcmp(a, "--config") == 0 || strncmp(a, "--config=", 9) == 0) {
            const char *file = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!file) {
                fprintf(stderr, "xplaind: --config needs a file name\n");
                return CFG_EXIT_USAGE;
            }
            free(cfg->config_file);
            cfg->config_file = strdup(file);
        }
    }
    if (cfg->config_file) {
        s_ini_ctx_t ctx = {.cfg = cfg, .file = cfg->config_file};
        if (!(ctx.fp = fopen(cfg->config_file, "r"))) {
            fprintf(stderr, "xplaind: cannot read config file %s: %s\n", cfg->config_file,
                    strerror(errno));
            return CFG_EXIT_USAGE;
        }
        int rc = ini_parse_stream(s_ini_reader, &ctx, s_ini_handler, &ctx);
        fclose(ctx.fp);
        if (rc > 0 && ctx.errors == 0) {
            fprintf(stderr, "xplaind: %s:%d: syntax error\n", cfg->config_file, rc);
            return CFG_EXIT_USAGE;
        }
        if (ctx.errors)
            return CFG_EXIT_USAGE;
    }

    bool list_seen[NOPTS] = {false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (strcmp(a, "--check-config") == 0) { check = true; continue; }
        if (strcmp(a, "--print-config") == 0) { print = true; continue; }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "xplaind: unexpected argument '%s' (see --help)\n", a);
            return CFG_EXIT_USAGE;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt_t *o = s_find_flag(name, nlen);
        if (!o) {
            fprintf(stderr, "xplaind: unknown flag --%.*s (see --help)\n", (int)nlen, name);
            return CFG_EXIT_USAGE;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (o->type == T_BOOL)
                value = "true";
            else if (i + 1 < argc)
                value = argv[++i];
            else {
                fprintf(stderr, "xplaind: --%s needs a value\n", o->flag);
                return CFG_EXIT_USAGE;
            }
        }
        size_t idx = (size_t)(o - s_opts);
        if (s_set(cfg, o, value, !list_seen[idx], err, sizeof err)) {
            fprintf(stderr, "xplaind: bad value for --%s: %s\n", o->flag, err);
            return CFG_EXIT_USAGE;
        }
        list_seen[idx] = true;
    }
    if (s_finish(cfg))
        return CFG_EXIT_USAGE;
    if (print && !quiet_actions) {
        s_print(cfg, stdout);
        return CFG_EXIT_OK;
    }
    if (check && !quiet_actions) {
        if (cfg->config_file)
            printf("xplaind: configuration OK (%s)\n", cfg->config_file);
        else
            printf("xplaind: configuration OK\n");
        return CFG_EXIT_OK;
    }
    return CFG_RUN;
}

cfg_action_t
config_load(config_t *cfg, int argc, char **argv)
{
    cfg_action_t a = s_load(cfg, argc, argv, false);
    if (a != CFG_RUN)
        config_free(cfg);
    return a;
}

int
config_reload(config_t *next, int argc, char **argv)
{
    if (s_load(next, argc, argv, true) != CFG_RUN) {
        config_free(next);
        return -1;
    }
    return 0;
}

static bool
s_equal(const config_t *a, const config_t *b, const opt_t *o)
{
    const void *x = s_cfield(a, o), *y = s_cfield(b, o);
    switch (o->type) {
    case T_STR:
        return strcmp(*(char *const *)x, *(char *const *)y) == 0;
    case T_LIST: {
        const cfg_list_t *l = x, *m = y;
        if (l->count != m->count)
            return false;
        for (int k = 0; k < l->count; k++)
            if (strcmp(l->items[k], m->items[k]) != 0)
                return false;
        return true;
    }
    case T_UINT:
    case T_SIZE:
        return *(const uint64_t *)x == *(const uint64_t *)y;
    case T_BOOL:
        return *(const bool *)x == *(const bool *)y;
    case T_DOUBLE:
        return *(const double *)x == *(const double *)y;
    case T_INT:
        return *(const int64_t *)x == *(const int64_t *)y;
    }
    return true;
}

/* Exchange one option's value between two configs (strings and lists
   change owner, nothing is copied). */
static void
s_swap(config_t *a, config_t *b, const opt_t *o)
{
    char tmp[sizeof(cfg_list_t)];
    size_t size = o->type == T_LIST ? sizeof(cfg_list_t)
                  : o->type == T_STR ? sizeof(char *)
                  : o->type == T_BOOL ? sizeof(bool)
                  : o->type == T_DOUBLE ? sizeof(double)
                  : o->type == T_INT ? sizeof(int64_t) : sizeof(uint64_t);
    memcpy(tmp, s_field(a, o), size);
    memcpy(s_field(a, o), s_field(b, o), size);
    memcpy(s_field(b, o), tmp, size);
}

void
config_take_reloadable(config_t *dst, config_t *src)
{
    for (size_t k = 0; k < NOPTS; k++)
        if (s_opts[k].reloadable)
            s_swap(dst, src, &s_opts[k]);
    /* The [model.NAME] sections are reloadable as a whole. */
    cfg_model_t *mo = dst->model_opts;
    int nmo = dst->nmodel_opts;
    dst->model_opts = src->model_opts;
    dst->nmodel_opts = src->nmodel_opts;
    src->model_opts = mo;
    src->nmodel_opts = nmo;
    const char *bad;
    s_derive(dst, &bad);
    s_derive(src, &bad);
}

static void
s_append(char *buf, size_t len, const char *name)
{
    size_t used = strlen(buf);
    snprintf(buf + used, len - used, "%s%s", used ? ", " : "", name);
}

int
config_diff(const config_t *a, const config_t *b, char *reloadable, size_t rlen, char *restart,
            size_t slen)
{
    int diffs = 0;
    reloadable[0] = restart[0] = '\0';
    for (size_t k = 0; k < NOPTS; k++) {
        const opt_t *o = &s_opts[k];
        if (s_equal(a, b, o))
            continue;
        char name[96];
        snprintf(name, sizeof name, "%s.%s", o->section, o->key);
        if (o->reloadable)
            s_append(reloadable, rlen, name);
        else
            s_append(restart, slen, name);
        diffs++;
    }
    if (a->nmodel_opts != b->nmodel_opts ||
        (a->nmodel_opts &&
         memcmp(a->model_opts, b->model_opts, (size_t)a->nmodel_opts * sizeof *a->model_opts))) {
        s_append(reloadable, rlen, "model.*");
        diffs++;
    }
    return diffs;
}

bool
config_option(size_t k, const char **section, const char **key, bool *reloadable)
{
    if (k >= NOPTS)
        return false;
    *section = s_opts[k].section;
    *key = s_opts[k].key;
    *reloadable = s_opts[k].reloadable;
    return true;
}

void
config_free(config_t *cfg)
{
    for (size_t k = 0; k < NOPTS; k++) {
        void *f = s_field(cfg, &s_opts[k]);
        if (s_opts[k].type == T_STR) {
            free(*(char **)f);
            *(char **)f = NULL;
        } else if (s_opts[k].type == T_LIST) {
            s_list_clear(f);
        }
    }
    free(cfg->config_file);
    cfg->config_file = NULL;
    free(cfg->model_opts);
    cfg->model_opts = NULL;
    cfg->nmodel_opts = 0;
}

/* The annotated configuration (INI) with current values. */
static void
s_print(const config_t *cfg, FILE *out)
{
    const char *section = "";
    for (size_t k = 0; k < NOPTS; k++) {
        const opt_t *o = &s_opts[k];
        if (strcmp(section, o->section) != 0) {
            section = o->section;
            fprintf(out, "%s[%s]\n", k ? "\n" : "", section);
        }
        fprintf(out, "; %s%s\n", o->help, o->reloadable ? " (SIGHUP reloads)" : "");
        const void *f = s_cfield(cfg, o);
        fprintf(out, "%s = ", o->key);
        switch (o->type) {
        case T_STR: fprintf(out, "%s", *(char *const *)f); break;
        case T_LIST: {
            const cfg_list_t *l = f;
            for (int i = 0; i < l->count; i++)
                fprintf(out, "%s%s", i ? ", " : "", l->items[i]);
            break;
        }
        case T_UINT: fprintf(out, "%" PRIu64, *(const uint64_t *)f); break;
        case T_SIZE: {
            char buf[32];
            s_size_str(*(const uint64_t *)f, buf, sizeof buf);
            fprintf(out, "%s", buf);
            break;
        }
        case T_BOOL: fprintf(out, "%s", *(const bool *)f ? "true" : "false"); break;
        case T_DOUBLE: fprintf(out, "%g", *(const double *)f); break;
        case T_INT: fprintf(out, "%" PRId64, *(const int64_t *)f); break;
        }
        fprintf(out, "\n");
    }
    s_print_models(cfg, out);
}
