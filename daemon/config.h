/*  config: every option of xplaind, in one table.

    The table drives everything an operator sees: the INI file (libinih),
    the command-line flags that override it, `--help`, `--print-config`,
    and `--check-config`. An option is defined once, with its section, key,
    flag, type, default, limits, whether SIGHUP can change it, and the
    sentence that documents it.  */
#ifndef XPLD_CONFIG_H
#define XPLD_CONFIG_H

#include "segment.h"
#include "xmath.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_LIST_MAX 16
#define CFG_MODELS_MAX 256     /* [model.NAME] sections */

/* A [model.NAME] section: the [explain] options one model overrides.
   `set` has a CFG_MO_* bit for each key the section gives. */
enum {
    CFG_MO_METHODS = 1u << 0,
    CFG_MO_FUSION = 1u << 1,
    CFG_MO_RESNORM = 1u << 2,
    CFG_MO_DISCARD = 1u << 3,
    CFG_MO_DISCARD_FLOW = 1u << 4,
    CFG_MO_START = 1u << 5
};
typedef struct {
    char name[65];
    unsigned set;
    unsigned methods;
    int fusion;
    bool grad_resnorm;
    double discard;
    bool discard_flow;
    int64_t start_layer;
} cfg_model_t;

typedef struct {
    int count;
    char *items[CFG_LIST_MAX];
} cfg_list_t;

typedef struct {
    /* [ingest] */
    cfg_list_t ingest_connect;
    cfg_list_t ingest_bind;
    uint64_t ingest_rcvhwm;
    uint64_t max_msg_size;
    uint64_t max_batch, max_layers, max_heads, max_tokens, max_elems, max_str;
    uint64_t max_targets_per_trade;
    uint64_t max_groups;
    cfg_list_t allow_models;
    uint64_t max_models;
    char *attention_check;      /* reject, warn, off */
    double attention_tol;
    uint64_t schema_rate;       /* new epochs per model per minute, 0: no limit */
    char *shard;                /* "K/N" or empty */
    /* [publish] */
    char *publish;
    uint64_t publish_sndhwm;
    /* [query] */
    char *query;
    uint64_t query_max_size;
    /* [explain] */
    char *methods;
    char *fusion;
    bool grad_resnorm;
    uint64_t flow_every;
    double discard;
    bool discard_flow;
    int64_t start_layer;
    /* [model.NAME] sections, in file order (SIGHUP reloads them all). */
    cfg_model_t *model_opts;
    int nmodel_opts;
    /* [cache] */
    uint64_t cache_entries;
    uint64_t cache_mb;
    /* [log] */
    char *log_level;
    uint64_t log_rate;
    /* [global] */
    uint64_t half_life;
    uint64_t glob_interval_ms;
    uint64_t max_targets;
    double decay_s;             /* half-life by event time, 0: by trades */
    char *segment_by;
    uint64_t max_segments;
    /* [drift] */
    uint64_t drift_window;
    double drift_rho_min, drift_ndcg_min, drift_js_max;
    uint64_t drift_ndcg_k;
    char *drift_mode;
    uint64_t drift_calib_windows, drift_moved_k;
    double drift_multiple, drift_cusum_k, drift_cusum_h, drift_sd_floor;
    uint64_t alerts_kept;
    char *reference_file;
    double drift_window_s;      /* windows by event time, 0: by trades */
    double drift_lateness_s;
    /* [state] */
    char *state_dir;
    uint64_t snapshot_interval_s;
    /* [metrics] */
    char *metrics;
    uint64_t metrics_max_conns;
    uint64_t metrics_max_per_ip;
    uint64_t metrics_timeout_ms;
    uint64_t metrics_top_features;
    /* [security] */
    bool curve;
    char *secret_key_file;
    char *clients_dir;
    /* [aggregate] */
    cfg_list_t aggregate;       /* shards' publish endpoints: aggregator mode */
    cfg_list_t aggregate_query; /* their query endpoints, in the same order */
    cfg_list_t aggregate_keys;  /* their CURVE public certificates (security.curve) */
    uint64_t aggregate_stale_ms;
    /* [demo] */
    bool demo;
    uint64_t demo_rate;
    uint64_t demo_batch;
    uint64_t demo_drift_every;

    /* Derived by config_load from the strings above. */
    unsigned method_set;
    int fusion_id;
    int log_level_id;
    int attention_check_id;     /* cfg_attention_t */
    uint32_t shard_k, shard_n;  /* from shard; 0/0 when unsharded */
    int64_t decay_ns, drift_window_ns, drift_lateness_ns;
    int drift_mode_id;          /* detect_mode_t */
    segkeys_t segkeys;          /* parsed segment_by */

    /* Where the values came from (for messages). */
    char *config_file;
} config_t;

/* The attention check's policy. */
typedef enum { CFG_ATTN_REJECT = 0, CFG_ATTN_WARN = 1, CFG_ATTN_OFF = 2 } cfg_attention_t;


/* Outcome of reading the command line. */
typedef enum {
    CFG_RUN = 0,        /* run the daemon */
    CFG_EXIT_OK = 1,    /* --help, --version, --check-config, --print-config done */
    CFG_EXIT_USAGE = 2  /* bad flag, file or value: message printed, exit 2 */
} cfg_action_t;

/* Fill `cfg` from defaults, the config file (--config) and the flags, in
   that order of precedence. Prints errors to stderr prefixed "xplaind: ".
   The caller owns cfg and frees it with config_free. */
cfg_action_t config_load(config_t *cfg, int argc, char **argv);

/* Load again for SIGHUP (same argv: flags still win over the file) into
   `next`; returns 0 or -1 (errors logged, `next` freed). */
int config_reload(config_t *next, int argc, char **argv);

/* Names of options whose value differs between a and b, split into those
   SIGHUP can apply (`reloadable`) and those needing a restart. Writes
   comma-separated names; returns the number of differences. */
int config_diff(const config_t *a, const config_t *b, char *reloadable, size_t rlen,
                char *restart, size_t slen);

/* Apply what SIGHUP may change: the values of every option marked
   reloadable in the table move from `src` into `dst`, and dst's old
   values into `src` (the caller frees it); the values derived from them
   (method_set, fusion_id, ...) follow in both. Both must have passed
   config_load or config_reload. */
void config_take_reloadable(config_t *dst, config_t *src);

/* The option table, read only: option `k`'s section, key and whether
   SIGHUP reloads it; false past the last option. */
bool config_option(size_t k, const char **section, const char **key, bool *reloadable);

/* Apply the [model.NAME] section of `model` (a NUL-terminated name), if
   any, over the options in *opts; returns true when there was one. */
bool config_model_opts(const config_t *cfg, const char *model, xm_opts_t *opts);

/* Release every string the config owns. */
void config_free(config_t *cfg);


#endif
