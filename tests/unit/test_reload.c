/*  Tests of SIGHUP's configuration step (daemon/config: config_diff and
    config_take_reloadable), at the config level: every option the table
    marks reloadable is applied, every other keeps its running value, the
    values derived from option strings follow them, and the old values
    end up where the caller frees them. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* A value other than the default for every option marked reloadable. */
static const char *const CHANGED[] = {
    "--max-batch", "100", "--max-layers", "10", "--max-heads", "10", "--max-tokens", "100",
    "--max-elems", "1M", "--max-str", "100", "--attention-check", "warn", "--attention-tol", "0.05",
    "--schema-rate", "3", "--allow-models", "m1,m2", "--query-max-size", "128K",
    "--methods", "rollout,diag", "--fusion", "max", "--grad-resnorm=true", "--flow-every", "5",
    "--discard", "0.5", "--discard-flow=true", "--start-layer", "-2", "--max-trade-targets", "4", "--max-groups", "7",
    "--log-level", "debug", "--log-rate", "7", "--glob-interval-ms", "500",
    "--drift-rho-min", "0.5", "--drift-ndcg-min", "0.5", "--drift-ndcg-k", "5",
    "--drift-js-max", "0.2", "--reference-file", "/nonexistent/ref.txt",
    "--snapshot-interval", "20", "--clients-dir", "/nonexistent/clients",
    "--drift-mode", "cusum", "--drift-calib-windows", "7", "--drift-multiple", "4",
    "--drift-cusum-k", "0.25", "--drift-cusum-h", "6", "--drift-sd-floor", "0.2",
    "--drift-moved-k", "3",
    /* and one that needs a restart */
    "--cache-entries", "17"};
#define NCHANGED (sizeof CHANGED / sizeof *CHANGED)

static void
load(config_t *cfg, bool changed)
{
    char *argv[3 + NCHANGED] = {"xplaind", "--ingest-connect", "tcp://127.0.0.1:1"};
    int argc = 3;
    for (size_t k = 0; changed && k < NCHANGED; k++)
        argv[argc++] = (char *)CHANGED[k];
    cr_assert_eq(config_load(cfg, argc, argv), CFG_RUN, "the test's configuration does not load");
}

/* Whether `name` is one of the comma-separated names in `list`. */
static bool
listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static void
assert_derived_equal(const config_t *a, const config_t *b)
{
    cr_assert_eq(a->method_set, b->method_set, "method_set did not follow explain.methods");
    cr_assert_eq(a->fusion_id, b->fusion_id, "fusion_id did not follow explain.fusion");
    cr_assert_eq(a->log_level_id, b->log_level_id, "log_level_id did not follow log.level");
    cr_assert_eq(a->attention_check_id, b->attention_check_id,
                 "attention_check_id did not follow ingest.attention_check");
    cr_assert_eq(a->drift_mode_id, b->drift_mode_id, "drift_mode_id did not follow drift.mode");
}

Test(reload, the_test_changes_every_reloadable_option)
{
    config_t a, b;
    load(&a, false);
    load(&b, true);
    char rel[4096], rst[4096];
    config_diff(&a, &b, rel, sizeof rel, rst, sizeof rst);
    const char *section, *key;
    bool reloadable;
    int n = 0;
    for (size_t k = 0; config_option(k, &section, &key, &reloadable); k++) {
        char name[96];
        snprintf(name, sizeof name, "%s.%s", section, key);
        if (reloadable) {
            n++;
            cr_assert(listed(rel, name), "%s is reloadable but this test does not change it "
                      "(add it to CHANGED)", name);
        } else {
            cr_assert(!listed(rel, name), "%s is reported reloadable but is not", name);
        }
    }
    cr_assert_gt(n, 20);
    cr_assert_str_eq(rst, "cache.entries");
    config_free(&a);
    config_free(&b);
}

Test(reload, reloadable_options_are_applied_the_rest_kept)
{
    config_t run, next, want, start;
    load(&run, false);
    load(&next, true);
    load(&want, true);
    load(&start, false);
    config_take_reloadable(&run, &next);

    /* The running config now has every new reloadable value, and its own
       value of what needs a restart. */
    char rel[4096], rst[4096];
    config_diff(&run, &want, rel, sizeof rel, rst, sizeof rst);
    cr_assert_str_eq(rel, "", "not applied: %s", rel);
    cr_assert_str_eq(rst, "cache.entries");
    cr_assert_eq(run.cache_entries, start.cache_entries);
    assert_derived_equal(&run, &want);
    cr_assert_str_eq(run.allow_models.items[1], "m2");

    /* `next` holds the old values (the caller frees it). */
    config_diff(&next, &start, rel, sizeof rel, rst, sizeof rst);
    cr_assert_str_eq(rel, "", "old values lost: %s", rel);
    cr_assert_str_eq(rst, "cache.entries");
    assert_derived_equal(&next, &start);

    config_free(&run);
    config_free(&next);
    config_free(&want);
    config_free(&start);
}

Test(reload, nothing_changed_is_a_no_op)
{
    config_t run, next, same;
    load(&run, true);
    load(&next, true);
    load(&same, true);
    config_take_reloadable(&run, &next);
    char rel[4096], rst[4096];
    cr_assert_eq(config_diff(&run, &same, rel, sizeof rel, rst, sizeof rst), 0, "%s | %s", rel, rst);
    cr_assert_eq(config_diff(&next, &same, rel, sizeof rel, rst, sizeof rst), 0, "%s | %s", rel, rst);
    config_free(&run);
    config_free(&next);
    config_free(&same);
}
