/*  Tests of daemon/config: defaults, the INI file, flags over the file,
    list options, bad values, --check-config, and the reloadable /
    restart-only split of config_diff. config_load prints its errors to
    stderr; that output is expected here.  */
#include "config.h"
#include "xmath.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A temporary INI file holding `text`; its path is in `path`. */
typedef struct {
    char path[64];
} ini_t;

static const char *
ini(ini_t *f, const char *text)
{
    snprintf(f->path, sizeof f->path, "/tmp/xpl-test-config-XXXXXX");
    int fd = mkstemp(f->path);
    cr_assert(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs(text, fp);
    fclose(fp);
    return f->path;
}

static void
ini_rm(ini_t *f)
{
    unlink(f->path);
}

/* config_load on a NULL-terminated argument list. */
#define LOAD(cfg, ...)                                                                      \
    ({                                                                                      \
        char *argv_[] = {"xplaind", __VA_ARGS__, NULL};                                     \
        config_load((cfg), (int)(sizeof argv_ / sizeof *argv_) - 1, argv_);                  \
    })

static void
expect_usage(const char *what, int argc, char **argv)
{
    config_t c;
    cfg_action_t a = config_load(&c, argc, argv);
    cr_assert_eq(a, CFG_EXIT_USAGE, "%s: accepted (action %d)", what, a);
}

#define USAGE(what, ...)                                                                    \
    do {                                                                                    \
        char *argv_[] = {"xplaind", __VA_ARGS__, NULL};                                     \
        expect_usage((what), (int)(sizeof argv_ / sizeof *argv_) - 1, argv_);                \
    } while (0)

static bool
has_item(const cfg_list_t *l, const char *s)
{
    for (int k = 0; k < l->count; k++)
        if (strcmp(l->items[k], s) == 0)
            return true;
    return false;
}

Test(config, defaults)
{
    config_t c;
    cr_assert_eq(LOAD(&c, "--demo"), CFG_RUN);
    cr_assert_eq(c.ingest_connect.count, 0);
    cr_assert_eq(c.ingest_bind.count, 0);
    cr_assert_eq(c.allow_models.count, 0);
    cr_assert_eq(c.max_batch, 4096);
    cr_assert_eq(c.max_layers, 64);
    cr_assert_eq(c.max_heads, 64);
    cr_assert_eq(c.max_tokens, 1024);
    cr_assert_eq(c.max_elems, 4ull << 20);
    cr_assert_eq(c.max_str, 256);
    cr_assert_eq(c.max_msg_size, 0);    /* derived from the tensor limits */
    cr_assert_eq(c.ingest_rcvhwm, 16);
    cr_assert_str_eq(c.attention_check, "reject");
    cr_assert_eq(c.attention_check_id, CFG_ATTN_REJECT);
    cr_assert_float_eq(c.attention_tol, 0.01, 1e-12);
    cr_assert_eq(c.schema_rate, 6);
    cr_assert_eq(c.max_models, 256);
    cr_assert_str_eq(c.publish, "tcp://127.0.0.1:5557");
    cr_assert_str_eq(c.query, "tcp://127.0.0.1:5558");
    cr_assert_str_eq(c.methods, "rollout,grad_rollout,first_layer,attn_mean");
    cr_assert_eq(c.method_set, XM_BIT(XM_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT) | XM_BIT(XM_FIRST_LAYER) |
                                   XM_BIT(XM_ATTN_MEAN));
    cr_assert_str_eq(c.fusion, "mean");
    cr_assert_eq(c.fusion_id, XM_FUSE_MEAN);
    cr_assert(!c.grad_resnorm);
    cr_assert_eq(c.flow_every, 1);
    cr_assert_eq(c.cache_entries, 4096);
    cr_assert_eq(c.cache_mb, 64);
    cr_assert_str_eq(c.log_level, "info");
    cr_assert_eq(c.log_rate, 5);
    cr_assert(c.demo);
    cr_assert_eq(c.demo_rate, 200);
    cr_assert_eq(c.drift_rho_min, 0.8);
    cr_assert_eq(c.drift_js_max, 0.1);
    cr_assert_null(c.config_file);
    config_free(&c);
}

Test(config, file_values)
{
    ini_t f;
    const char *p = ini(&f,
                        "; comment\n"
                        "[ingest]\n"
                        "connect = tcp://10.0.0.1:5556, tcp://10.0.0.2:5556\n"
                        "max_batch = 128\n"
                        "max_elems = 16M\n"
                        "max_msg_size = 1GiB\n"
                        "allow_models = m1 m2,m3\n"
                        "\n"
                        "[explain]\n"
                        "methods = rollout,flow\n"
                        "fusion = max\n"
                        "grad_resnorm = yes\n"
                        "[cache]\n"
                        "mb = 8\n"
                        "[log]\n"
                        "level = debug\n"
                        "[drift]\n"
                        "rho_min = -0.25\n");
    config_t c;
    cr_assert_eq(LOAD(&c, "--config", (char *)p), CFG_RUN);
    cr_assert_str_eq(c.config_file, p);
    cr_assert_eq(c.ingest_connect.count, 2);
    cr_assert_str_eq(c.ingest_connect.items[0], "tcp://10.0.0.1:5556");
    cr_assert_str_eq(c.ingest_connect.items[1], "tcp://10.0.0.2:5556");
    cr_assert_eq(c.max_batch, 128);
    cr_assert_eq(c.max_elems, 16ull << 20);
    cr_assert_eq(c.max_msg_size, 1ull << 30);
    cr_assert_eq(c.allow_models.count, 3);
    cr_assert(has_item(&c.allow_models, "m1") && has_item(&c.allow_models, "m2") &&
              has_item(&c.allow_models, "m3"));
    cr_assert_eq(c.method_set, XM_BIT(XM_ROLLOUT) | XM_BIT(XM_FLOW));
    cr_assert_eq(c.fusion_id, XM_FUSE_MAX);
    cr_assert(c.grad_resnorm);
    cr_assert_eq(c.cache_mb, 8);
    cr_assert_str_eq(c.log_level, "debug");
    cr_assert_eq(c.drift_rho_min, -0.25);
    /* Untouched options keep their defaults. */
    cr_assert_eq(c.max_tokens, 1024);
    cr_assert_str_eq(c.publish, "tcp://127.0.0.1:5557");
    config_free(&c);
    ini_rm(&f);
}

Test(config, flags_override_the_file_wherever_they_are)
{
    ini_t f;
    const char *p = ini(&f,
                        "[ingest]\nconnect = tcp://file:1\nmax_batch = 128\nmax_tokens = 99\n"
                        "[explain]\nfusion = max\ngrad_resnorm = true\n"
                        "[publish]\nendpoint = tcp://file:2\n");
    config_t c;
    /* Flags before and after --config, and the --flag=value form. */
    cr_assert_eq(LOAD(&c, "--max-batch", "256", "--config", (char *)p, "--fusion=min",
                      "--grad-resnorm=false", "--publish", "ipc:///tmp/x"),
                 CFG_RUN);
    cr_assert_eq(c.max_batch, 256, "flag before --config lost to the file");
    cr_assert_eq(c.fusion_id, XM_FUSE_MIN);
    cr_assert(!c.grad_resnorm);
    cr_assert_str_eq(c.publish, "ipc:///tmp/x");
    cr_assert_eq(c.max_tokens, 99, "file value without a flag");
    cr_assert_eq(c.ingest_connect.count, 1);
    config_free(&c);
    /* --config=FILE form, and a bare bool flag meaning true. */
    char cfgarg[96];
    snprintf(cfgarg, sizeof cfgarg, "--config=%s", p);
    cr_assert_eq(LOAD(&c, cfgarg, "--demo"), CFG_RUN);
    cr_assert(c.demo);
    cr_assert_eq(c.max_batch, 128);
    cr_assert_eq(c.fusion_id, XM_FUSE_MAX);
    config_free(&c);
    ini_rm(&f);
}

Test(config, list_options)
{
    ini_t f;
    const char *p = ini(&f, "[ingest]\nconnect = tcp://a:1\nconnect = tcp://b:2, tcp://c:3\n");
    config_t c;
    /* Repeated lines in the file add up. */
    cr_assert_eq(LOAD(&c, "--config", (char *)p), CFG_RUN);
    cr_assert_eq(c.ingest_connect.count, 3);
    cr_assert(has_item(&c.ingest_connect, "tcp://a:1") && has_item(&c.ingest_connect, "tcp://c:3"));
    config_free(&c);
    /* A flag replaces the file's list; further flags add to it. */
    cr_assert_eq(LOAD(&c, "--config", (char *)p, "--ingest-connect", "tcp://x:9"), CFG_RUN);
    cr_assert_eq(c.ingest_connect.count, 1);
    cr_assert_str_eq(c.ingest_connect.items[0], "tcp://x:9");
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--config", (char *)p, "--ingest-connect", "tcp://x:9",
                      "--ingest-connect=tcp://y:8,tcp://z:7"),
                 CFG_RUN);
    cr_assert_eq(c.ingest_connect.count, 3);
    cr_assert_str_eq(c.ingest_connect.items[0], "tcp://x:9");
    cr_assert_str_eq(c.ingest_connect.items[1], "tcp://y:8");
    cr_assert_str_eq(c.ingest_connect.items[2], "tcp://z:7");
    config_free(&c);
    /* Separators: commas, spaces, tabs, empty items skipped. */
    cr_assert_eq(LOAD(&c, "--ingest-bind", " ,tcp://*:1,,\ttcp://*:2 , ", "--allow-models", "a,b"),
                 CFG_RUN);
    cr_assert_eq(c.ingest_bind.count, 2);
    cr_assert_str_eq(c.ingest_bind.items[0], "tcp://*:1");
    cr_assert_str_eq(c.ingest_bind.items[1], "tcp://*:2");
    cr_assert_eq(c.allow_models.count, 2);
    config_free(&c);
    ini_rm(&f);
    /* At most CFG_LIST_MAX entries. */
    char many[1024] = "";
    for (int k = 0; k <= CFG_LIST_MAX; k++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%stcp://h:%d", k ? "," : "", k + 1);
    USAGE("17 connect endpoints", "--ingest-connect", many);
    many[strrchr(many, ',') - many] = '\0';
    cr_assert_eq(LOAD(&c, "--ingest-connect", many), CFG_RUN);
    cr_assert_eq(c.ingest_connect.count, CFG_LIST_MAX);
    config_free(&c);
}

Test(config, bad_flag_values)
{
    USAGE("non-number", "--demo", "--max-batch", "abc");
    USAGE("number with junk", "--demo", "--max-batch", "12x");
    USAGE("below min", "--demo", "--max-batch", "0");
    USAGE("above max", "--demo", "--max-batch", "1048577");
    USAGE("negative", "--demo", "--max-batch", "-1");
    USAGE("negative with a space", "--demo", "--max-batch", " -1");
    USAGE("empty number", "--demo", "--max-batch=");
    USAGE("2^64", "--demo", "--max-batch", "18446744073709551616");
    USAGE("size with a bad suffix", "--demo", "--max-elems", "64X");
    USAGE("size overflowing its shift", "--demo", "--max-elems", "99999999999999G");
    USAGE("size over max", "--demo", "--max-elems", "17G");
    USAGE("suffix on a plain integer", "--demo", "--max-batch", "4K");
    USAGE("bool", "--demo", "--grad-resnorm=maybe");
    USAGE("double not a number", "--demo", "--drift-rho-min", "high");
    USAGE("double out of range", "--demo", "--drift-rho-min", "1.5");
    USAGE("double NaN", "--demo", "--drift-js-max", "nan");
    USAGE("double with junk", "--demo", "--drift-js-max", "0.1x");
    USAGE("unknown method", "--demo", "--methods", "rollout,bogus");
    USAGE("no method", "--demo", "--methods", "");
    USAGE("fusion", "--demo", "--fusion", "avg");
    USAGE("log level", "--demo", "--log-level", "loud");
    USAGE("allow-models not a name", "--demo", "--allow-models", "ok,bad!");
    USAGE("unknown flag", "--demo", "--nope");
    USAGE("unknown flag with value", "--demo", "--nope=1");
    USAGE("single dash", "--demo", "-x");
    USAGE("positional argument", "--demo", "stray");
    USAGE("value missing at the end", "--demo", "--max-batch");
    USAGE("--config without a file", "--demo", "--config");
    USAGE("nothing to ingest from", "--max-batch", "8");
    USAGE("config file missing", "--demo", "--config", "/nonexistent/xplaind.ini");
}

Test(config, sizes_and_bounds_accepted)
{
    config_t c;
    cr_assert_eq(LOAD(&c, "--demo", "--max-elems", "16M", "--max-msg-size", "2048k",
                      "--max-batch", "1048576", "--cache-entries", "0", "--drift-rho-min", "-1"),
                 CFG_RUN);
    cr_assert_eq(c.max_elems, 16ull << 20);
    cr_assert_eq(c.max_msg_size, 2048ull << 10);
    cr_assert_eq(c.max_batch, 1u << 20);
    cr_assert_eq(c.cache_entries, 0);
    cr_assert_eq(c.drift_rho_min, -1.0);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--demo", "--max-elems", "1GiB", "--max-msg-size", "1MB"), CFG_RUN);
    cr_assert_eq(c.max_elems, 1ull << 30);
    cr_assert_eq(c.max_msg_size, 1ull << 20);
    config_free(&c);
}

Test(config, size_suffix_is_strict)
{
    /* K, M, G with an optional "i" and/or "B": "64MBB" is not a size. */
    USAGE("64MBB", "--demo", "--max-elems", "64MBB");
    USAGE("64MiBB", "--demo", "--max-elems", "64MiBB");
    USAGE("64Bi", "--demo", "--max-elems", "64MBi");
}

static void
expect_file_usage(const char *what, const char *text)
{
    ini_t f;
    const char *p = ini(&f, text);
    USAGE(what, "--demo", "--config", (char *)p);
    ini_rm(&f);
}

Test(config, bad_files)
{
    expect_file_usage("unknown key", "[ingest]\nmax_bach = 8\n");
    expect_file_usage("unknown section", "[ingestion]\nmax_batch = 8\n");
    expect_file_usage("key outside any section", "max_batch = 8\n");
    expect_file_usage("key of another section", "[explain]\nmax_batch = 8\n");
    expect_file_usage("bad number", "[ingest]\nmax_batch = many\n");
    expect_file_usage("out of range", "[cache]\nmb = 2000000\n");
    expect_file_usage("bad bool", "[explain]\ngrad_resnorm = perhaps\n");
    expect_file_usage("bad method", "[explain]\nmethods = rollout,nope\n");
    expect_file_usage("syntax error", "[ingest]\nmax_batch 8\n");
    expect_file_usage("unclosed section", "[ingest\nmax_batch = 8\n");
    expect_file_usage("bad value after good ones", "[ingest]\nmax_batch = 8\nmax_tokens = 1\n");
    char longline[2100] = "[ingest]\nconnect = ";
    size_t at = strlen(longline);
    memset(longline + at, 'x', 2000);
    strcpy(longline + at + 2000, "\n");
    expect_file_usage("a line longer than the parser's buffer", longline);
}

Test(config, check_config)
{
    ini_t f;
    const char *good = ini(&f, "[ingest]\nbind = tcp://*:5556\n");
    config_t c;
    cr_assert_eq(LOAD(&c, "--config", (char *)good, "--check-config"), CFG_EXIT_OK);
    cr_assert_null(c.config_file, "config_load must free the config on an exit action");
    cr_assert_eq(LOAD(&c, "--check-config", "--demo"), CFG_EXIT_OK);
    ini_rm(&f);
    ini_t g;
    const char *bad = ini(&g, "[ingest]\nbind = tcp://*:5556\nmax_heads = 0\n");
    USAGE("--check-config of a bad file", "--config", (char *)bad, "--check-config");
    USAGE("--check-config with a bad flag", "--demo", "--check-config", "--fusion", "x");
    USAGE("--check-config with nothing to ingest", "--check-config");
    ini_rm(&g);
    cr_assert_eq(LOAD(&c, "--help"), CFG_EXIT_OK);
    cr_assert_eq(LOAD(&c, "--version"), CFG_EXIT_OK);
    cr_assert_eq(LOAD(&c, "--demo", "--print-config"), CFG_EXIT_OK);
}

static int
diff(const config_t *a, const config_t *b, char *rel, char *rst)
{
    return config_diff(a, b, rel, 512, rst, 512);
}

Test(config, diff_reloadable_and_restart_only)
{
    config_t a, b;
    char rel[512], rst[512];
    cr_assert_eq(LOAD(&a, "--demo"), CFG_RUN);
    cr_assert_eq(LOAD(&b, "--demo"), CFG_RUN);
    cr_assert_eq(diff(&a, &b, rel, rst), 0);
    cr_assert_str_eq(rel, "");
    cr_assert_str_eq(rst, "");
    config_free(&b);

    cr_assert_eq(LOAD(&b, "--demo", "--max-batch", "10", "--methods", "rollout", "--cache-entries", "10",
                      "--allow-models", "m1", "--ingest-connect", "tcp://h:1", "--drift-js-max", "0.5",
                      "--publish", "tcp://*:1"),
                 CFG_RUN);
    cr_assert_eq(diff(&a, &b, rel, rst), 7);
    const char *r_want[] = {"ingest.max_batch", "explain.methods", "ingest.allow_models", "drift.js_max"};
    const char *s_want[] = {"cache.entries", "ingest.connect", "publish.endpoint"};
    for (size_t k = 0; k < 4; k++)
        cr_assert(strstr(rel, r_want[k]) && !strstr(rst, r_want[k]), "%s not reloadable: '%s' / '%s'",
                  r_want[k], rel, rst);
    for (size_t k = 0; k < 3; k++)
        cr_assert(strstr(rst, s_want[k]) && !strstr(rel, s_want[k]), "%s not restart-only: '%s' / '%s'",
                  s_want[k], rel, rst);
    /* Symmetric. */
    cr_assert_eq(diff(&b, &a, rel, rst), 7);
    /* Same list, other order, is a change; same values are not. */
    config_free(&b);
    config_t x, y;
    cr_assert_eq(LOAD(&x, "--ingest-connect", "tcp://a:1,tcp://b:2"), CFG_RUN);
    cr_assert_eq(LOAD(&y, "--ingest-connect", "tcp://b:2", "--ingest-connect", "tcp://a:1"), CFG_RUN);
    cr_assert_eq(diff(&x, &y, rel, rst), 1);
    cr_assert_str_eq(rst, "ingest.connect");
    config_free(&y);
    cr_assert_eq(LOAD(&y, "--ingest-connect", "tcp://a:1", "--ingest-connect", "tcp://b:2"), CFG_RUN);
    cr_assert_eq(diff(&x, &y, rel, rst), 0);
    config_free(&x);
    config_free(&y);
    /* Tiny output buffers truncate, never overflow. */
    char r2[8], s2[4];
    memset(r2, 'Z', sizeof r2);
    memset(s2, 'Z', sizeof s2);
    cr_assert_eq(LOAD(&b, "--demo", "--max-batch", "10", "--cache-entries", "10", "--publish", "x"), CFG_RUN);
    cr_assert_eq(config_diff(&a, &b, r2, sizeof r2, s2, sizeof s2), 3);
    cr_assert(memchr(r2, '\0', sizeof r2) && memchr(s2, '\0', sizeof s2));
    config_free(&a);
    config_free(&b);
}

Test(config, reload_keeps_precedence)
{
    ini_t f;
    const char *p = ini(&f, "[ingest]\nmax_batch = 128\nbind = tcp://*:1\n");
    char *argv[] = {"xplaind", "--config", (char *)p, "--max-tokens", "50", NULL};
    config_t a, b;
    cr_assert_eq(config_load(&a, 5, argv), CFG_RUN);
    /* The file changes; the flag still wins on reload. */
    FILE *fp = fopen(p, "w");
    fputs("[ingest]\nmax_batch = 64\nmax_tokens = 999\nbind = tcp://*:1\n", fp);
    fclose(fp);
    cr_assert_eq(config_reload(&b, 5, argv), 0);
    cr_assert_eq(b.max_batch, 64);
    cr_assert_eq(b.max_tokens, 50);
    char rel[512], rst[512];
    cr_assert_eq(config_diff(&a, &b, rel, sizeof rel, rst, sizeof rst), 1);
    cr_assert_str_eq(rel, "ingest.max_batch");
    config_free(&b);
    /* A broken file on reload fails and leaves `next` freed. */
    fp = fopen(p, "w");
    fputs("[ingest]\nmax_batch = lots\n", fp);
    fclose(fp);
    cr_assert_eq(config_reload(&b, 5, argv), -1);
    cr_assert_null(b.methods);
    config_free(&a);
    config_free(&a);    /* twice is safe */
    cr_assert_null(a.publish);
    ini_rm(&f);
}

/* ---- explain options and [model.NAME] sections ---------------------------- */

Test(config, discard_and_start_layer)
{
    config_t c;
    cr_assert_eq(LOAD(&c, "--demo"), CFG_RUN);
    cr_assert_eq(c.discard, 0.0);
    cr_assert_eq(c.start_layer, 0);
    cr_assert(!c.discard_flow);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--demo", "--discard", "0.25", "--start-layer", "-3", "--discard-flow"),
                 CFG_RUN);
    cr_assert_eq(c.discard, 0.25);
    cr_assert_eq(c.start_layer, -3);
    cr_assert(c.discard_flow);
    config_free(&c);
    USAGE("discard above 1", "--demo", "--discard", "1.5");
    USAGE("discard NaN", "--demo", "--discard", "nan");
    USAGE("start layer not an integer", "--demo", "--start-layer", "1.5");
    USAGE("start layer out of range", "--demo", "--start-layer", "-5000");
    USAGE("start layer empty", "--demo", "--start-layer", "");
}

Test(config, model_sections_override_explain_for_one_model)
{
    ini_t f;
    const char *p = ini(&f, "[explain]\nmethods = rollout,diag\ndiscard = 0.1\n\n"
                            "[model.fx-1]\nmethods = colsum,lrp_rollout\nfusion = max\n"
                            "discard = 0.9\nstart_layer = -2\ngrad_resnorm = yes\n"
                            "discard_flow = on\n\n"
                            "[model.other]\nstart_layer = 1\n");
    config_t c;
    cr_assert_eq(LOAD(&c, "--demo", "--config", (char *)p), CFG_RUN);
    cr_assert_eq(c.nmodel_opts, 2);
    xm_opts_t base = {.methods = c.method_set, .fusion = XM_FUSE_MEAN, .discard = c.discard};
    xm_opts_t o = base;
    cr_assert(config_model_opts(&c, "fx-1", &o));
    cr_assert_eq(o.methods, XM_BIT(XM_COLSUM) | XM_BIT(XM_LRP_ROLLOUT));
    cr_assert_eq(o.fusion, XM_FUSE_MAX);
    cr_assert_eq(o.discard, 0.9);
    cr_assert_eq(o.start_layer, -2);
    cr_assert(o.grad_resnorm && o.discard_flow);
    o = base;
    cr_assert(config_model_opts(&c, "other", &o));
    cr_assert_eq(o.start_layer, 1);
    cr_assert_eq(o.methods, base.methods, "a key the section does not give keeps [explain]'s");
    cr_assert_eq(o.discard, 0.1);
    o = base;
    cr_assert(!config_model_opts(&c, "fx", &o));
    cr_assert(memcmp(&o, &base, sizeof o) == 0);
    config_free(&c);
    cr_assert_null(c.model_opts);
    ini_rm(&f);
}

Test(config, bad_model_sections)
{
    expect_file_usage("model name with a space", "[model.a b]\ndiscard = 0.5\n");
    expect_file_usage("model name empty", "[model.]\ndiscard = 0.5\n");
    expect_file_usage("unknown key in a model section", "[model.m]\nmax_batch = 8\n");
    expect_file_usage("unknown method", "[model.m]\nmethods = rollout,lrp\n");
    expect_file_usage("no method", "[model.m]\nmethods = ,\n");
    expect_file_usage("bad fusion", "[model.m]\nfusion = median\n");
    expect_file_usage("discard out of range", "[model.m]\ndiscard = -0.1\n");
    expect_file_usage("start layer not an integer", "[model.m]\nstart_layer = last\n");
    expect_file_usage("bad bool", "[model.m]\ngrad_resnorm = perhaps\n");
}

Test(config, model_sections_reload_as_a_whole)
{
    ini_t f, g;
    const char *p = ini(&f, "[model.m]\ndiscard = 0.5\n");
    const char *q = ini(&g, "[model.m]\ndiscard = 0.5\nstart_layer = -1\n");
    config_t a, b;
    cr_assert_eq(LOAD(&a, "--demo", "--config", (char *)p), CFG_RUN);
    cr_assert_eq(LOAD(&b, "--demo", "--config", (char *)p), CFG_RUN);
    char rel[512], rst[512];
    cr_assert_eq(diff(&a, &b, rel, rst), 0);
    config_free(&b);
    cr_assert_eq(LOAD(&b, "--demo", "--config", (char *)q), CFG_RUN);
    cr_assert_eq(diff(&a, &b, rel, rst), 1);
    cr_assert(strstr(rel, "model.*"), "%s", rel);
    cr_assert_str_eq(rst, "");
    config_take_reloadable(&a, &b);
    xm_opts_t o = {0};
    cr_assert(config_model_opts(&a, "m", &o));
    cr_assert_eq(o.start_layer, -1);
    cr_assert(config_model_opts(&b, "m", &o));  /* the old sections, for the caller to free */
    config_free(&a);
    config_free(&b);
    ini_rm(&f);
    ini_rm(&g);
}

/* Segments keep the model's modes, count or event time, in an
   aggregator too (it merges its shards'). */
Test(config, segments_take_every_mode_and_an_aggregator)
{
    config_t c;
    cr_assert_eq(LOAD(&c, "--segment-by", "desk", "--aggregate", "tcp://127.0.0.1:1",
                      "--aggregate-query", "tcp://127.0.0.1:2"),
                 CFG_RUN);
    cr_assert_eq(c.segkeys.n, 1);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--demo", "--segment-by", "desk,venue", "--drift-window", "50"), CFG_RUN);
    cr_assert_eq(c.segkeys.n, 2);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--demo", "--segment-by", "desk", "--drift-window-s", "60",
                      "--decay-half-life-s", "30"),
                 CFG_RUN);
    cr_assert_eq(c.segkeys.n, 1);
    cr_assert_eq(c.drift_window_ns, 60000000000);
    cr_assert_eq(c.decay_ns, 30000000000);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--aggregate", "tcp://127.0.0.1:1", "--aggregate-query",
                      "tcp://127.0.0.1:2"),
                 CFG_RUN);
    config_free(&c);
}

/* CURVE in an aggregator needs the shards' public certificates: one for
   all or one per shard; the certificates need an aggregator with CURVE. */
Test(config, aggregator_curve_needs_the_shard_keys)
{
    USAGE("curve aggregator without shard keys", "--curve", "--aggregate", "tcp://127.0.0.1:1",
          "--aggregate-query", "tcp://127.0.0.1:2");
    USAGE("two certificates for three shards", "--curve", "--aggregate",
          "tcp://127.0.0.1:1,tcp://127.0.0.1:3,tcp://127.0.0.1:5", "--aggregate-query",
          "tcp://127.0.0.1:2,tcp://127.0.0.1:4,tcp://127.0.0.1:6", "--aggregate-shard-key",
          "a.key,b.key");
    USAGE("shard keys without curve", "--aggregate", "tcp://127.0.0.1:1", "--aggregate-query",
          "tcp://127.0.0.1:2", "--aggregate-shard-key", "a.key");
    USAGE("shard keys on a daemon", "--demo", "--curve", "--aggregate-shard-key", "a.key");
    config_t c;
    cr_assert_eq(LOAD(&c, "--curve", "--aggregate", "tcp://127.0.0.1:1,tcp://127.0.0.1:3",
                      "--aggregate-query", "tcp://127.0.0.1:2,tcp://127.0.0.1:4",
                      "--aggregate-shard-key", "a.key"),
                 CFG_RUN);
    cr_assert_eq(c.aggregate_keys.count, 1);
    config_free(&c);
    cr_assert_eq(LOAD(&c, "--curve", "--aggregate", "tcp://127.0.0.1:1,tcp://127.0.0.1:3",
                      "--aggregate-query", "tcp://127.0.0.1:2,tcp://127.0.0.1:4",
                      "--aggregate-shard-key", "a.key,b.key"),
                 CFG_RUN);
    cr_assert_eq(c.aggregate_keys.count, 2);
    config_free(&c);
}
