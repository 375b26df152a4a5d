/*  Tests of daemon/global: the global state, state only.

    global_add is fed synthetic per-trade vectors (no explain, no socket)
    and must close drift windows exactly every `window` trades, return
    them (seq, statistics, alert) instead of sending anything, keep the
    alerts for the drift query, aggregate means that match a float64
    mean computed here, and apply the reference file when it creates an
    epoch. Two global states never share anything.  */
#include "daemon_fixture.h"
#include "ref.h"
#include "support.h"

#include <math.h>
#include <unistd.h>

#define NF 4

/* One trade's result: rollout only, the vector v (NF values). */
typedef struct {
    float v[NF];
    float conf[1];
    xm_result_t res;
} trade_t;

static const xm_result_t *
mk(trade_t *t, const float *v)
{
    memset(t, 0, sizeof *t);
    memcpy(t->v, v, sizeof t->v);
    t->conf[0] = 0.5f;
    t->res.computed = XM_BIT(XM_ROLLOUT);
    t->res.attr[XM_ROLLOUT] = t->v;
    t->res.head_confidence = t->conf;
    return &t->res;
}

static const float UP[NF] = {0.4f, 0.3f, 0.2f, 0.1f};
static const float DOWN[NF] = {0.1f, 0.2f, 0.3f, 0.4f};

static const char *const OPTS[] = {"--drift-window", "4", "--alerts-kept", "2", NULL};

Test(global, closes_windows_exactly_every_window_trades)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    cr_assert_eq(xm_nfeat(&md->cur->shape), NF);
    trade_t t;
    int closed_at[8], nclosed = 0;
    for (int k = 1; k <= 13; k++) {
        global_closed_t c;
        c.n = -1;
        global_add(&w.global, md, NULL, mk(&t, k <= 4 ? UP : DOWN), &c);
        cr_assert_eq(c.epoch, 1);
        cr_assert(c.n == 0 || c.n == 1, "trade %d closed %d windows", k, c.n);
        if (c.n) {
            cr_assert_eq(c.w[0].method, XM_ROLLOUT);
            cr_assert_eq(c.w[0].seq, (uint64_t)nclosed, "drift/ seq of window %d", nclosed);
            cr_assert_eq(c.w[0].last.window, (uint64_t)nclosed);
            closed_at[nclosed++] = k;
        }
    }
    cr_assert_eq(nclosed, 3);
    cr_assert_eq(closed_at[0], 4);
    cr_assert_eq(closed_at[1], 8);
    cr_assert_eq(closed_at[2], 12);
    /* Nothing was sent: global has no publisher to send with. */
    cr_assert_eq(w.cap.n, 0);
    cr_assert_eq(w.stats.published + w.stats.dropped, 0);
    const gepoch_t *e = global_current(&w.global, md);
    cr_assert(e);
    cr_assert_eq(e->count, 13);
    cr_assert_eq(e->drift[XM_ROLLOUT].closed, 3);
    cr_assert_eq(e->drift[XM_ROLLOUT].filled, 1);
    fx_down(&w);
}

Test(global, a_reversed_ranking_alerts_and_is_kept_for_the_query)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    global_closed_t c;
    for (int k = 0; k < 4; k++)
        global_add(&w.global, md, NULL, mk(&t, UP), &c);
    cr_assert_eq(c.n, 1);
    cr_assert_not(c.w[0].last.compared, "window 0 becomes the baseline");
    cr_assert_not(c.w[0].last.alert);
    for (int k = 0; k < 4; k++)
        global_add(&w.global, md, NULL, mk(&t, DOWN), &c);
    cr_assert_eq(c.n, 1);
    const glast_t *l = &c.w[0].last;
    cr_assert(l->compared);
    cr_assert_eq(l->ref, DRIFT_REF_BASELINE);
    cr_assert(l->spearman.defined);
    double rho;
    double up[NF], down[NF];
    for (int k = 0; k < NF; k++) {
        up[k] = UP[k];
        down[k] = DOWN[k];
    }
    cr_assert(ref_spearman(down, up, NF, &rho));
    cr_assert(close_enough(l->spearman.value, rho, 1e-9, 1e-12), "rho %g, want %g",
              l->spearman.value, rho);
    cr_assert(l->alert, "a reversed ranking alerts");
    const gmodel_t *gm = global_model_const(&w.global, md);
    cr_assert_eq(gm->alerts_total, 1);
    cr_assert_eq(gm->alerts_count, 1);
    cr_assert_eq(gm->alerts[0].window, 1);
    cr_assert_eq(gm->alerts[0].method, XM_ROLLOUT);
    /* The ring keeps alerts_kept (2): a third and fourth alert push out
       the first. */
    for (int k = 0; k < 8; k++)
        global_add(&w.global, md, NULL, mk(&t, DOWN), &c);
    cr_assert_eq(gm->alerts_total, 3);
    cr_assert_eq(gm->alerts_count, 2);
    fx_down(&w);
}

Test(global, means_match_a_float64_mean_per_class)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    global_closed_t c;
    double sum[2][NF] = {{0}}, all[NF] = {0};
    int cnt[2] = {0};
    for (int k = 0; k < 11; k++) {
        float v[NF];
        for (int f = 0; f < NF; f++)
            v[f] = (float)(0.05 * ((k * 7 + f * 3) % 11));
        int64_t target = k % 3 == 0;
        global_add(&w.global, md, &target, mk(&t, v), &c);
        for (int f = 0; f < NF; f++) {
            sum[target][f] += v[f];
            all[f] += v[f];
        }
        cnt[target]++;
    }
    const gepoch_t *e = global_current(&w.global, md);
    cr_assert_eq(e->all[XM_ROLLOUT].count, 11);
    cr_assert_eq(e->nclasses, 2);
    for (int f = 0; f < NF; f++)
        cr_assert(close_enough(e->all[XM_ROLLOUT].mean[f], all[f] / 11, 1e-12, 1e-15));
    for (uint32_t k = 0; k < e->nclasses; k++) {
        int64_t tg = e->classes[k].target;
        cr_assert_eq(e->classes[k].agg[XM_ROLLOUT].count, (uint64_t)cnt[tg]);
        for (int f = 0; f < NF; f++)
            cr_assert(close_enough(e->classes[k].agg[XM_ROLLOUT].mean[f], sum[tg][f] / cnt[tg],
                                   1e-12, 1e-15));
    }
    fx_down(&w);
}

Test(global, a_change_is_taken_once)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    cr_assert_null(global_take_changed(&w.global, md), "no state yet");
    trade_t t;
    global_closed_t c;
    uint64_t gen = w.global.gen;
    global_add(&w.global, md, NULL, mk(&t, UP), &c);
    cr_assert_gt(w.global.gen, gen, "a trade changes the snapshot generation");
    const gepoch_t *e = global_take_changed(&w.global, md);
    cr_assert(e && e->epoch == 1);
    cr_assert_null(global_take_changed(&w.global, md), "taken already");
    cr_assert_eq(global_glob_seq(&w.global, md), 0);
    global_glob_sent(&w.global, md, 42);
    cr_assert_eq(global_glob_seq(&w.global, md), 1);
    cr_assert_eq(global_model_const(&w.global, md)->glob_ts, 42);
    cr_assert_eq(global_heads_seq_next(&w.global, md), 0);
    cr_assert_eq(global_heads_seq_next(&w.global, md), 1);
    fx_down(&w);
}

/* A reference file in a temporary directory. */
static void
write_refs(char *path, size_t cap, const char *text)
{
    snprintf(path, cap, "/tmp/xpl-test-global-%d.refs", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
}

Test(global, references_apply_when_the_epoch_is_created)
{
    static fx_world_t w, other;
    fx_up(&w, OPTS);
    fx_up(&other, OPTS);
    char path[128];
    write_refs(path, sizeof path, "# comment\nm1 rollout 0.1 0.2 0.3 0.4\n"
                                  "m1 attn_mean 1 2\nm2 rollout 1 1 1 1\n");
    cr_assert_eq(global_load_references(&w.global, &w.models, path), 3);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    model_t *mo = fx_model(&other, "m1", 1, 1, 1, NF, -1);
    cr_assert_null(global_current(&w.global, md), "the epoch does not exist yet");
    trade_t t;
    global_closed_t c;
    global_add(&w.global, md, NULL, mk(&t, UP), &c);
    const gepoch_t *e = global_current(&w.global, md);
    cr_assert(e && e->extref[XM_ROLLOUT], "the file's rollout reference applied");
    static const double want[NF] = {0.1, 0.2, 0.3, 0.4};
    for (int f = 0; f < NF; f++)
        cr_assert_eq(e->extref[XM_ROLLOUT][f], want[f]);
    cr_assert_eq(e->drift[XM_ROLLOUT].ref_kind, DRIFT_REF_EXTERNAL);
    cr_assert_null(e->extref[XM_ATTN_MEAN], "2 values for 4 features: not applied");
    /* Another global state has no pending references of its own. */
    global_add(&other.global, mo, NULL, mk(&t, UP), &c);
    cr_assert_null(global_current(&other.global, mo)->extref[XM_ROLLOUT]);
    /* A malformed file is refused as a whole. */
    write_refs(path, sizeof path, "m1 rollout 0.1 x 0.3 0.4\n");
    cr_assert_eq(global_load_references(&w.global, &w.models, path), -1);
    unlink(path);
    fx_down(&other);
    fx_down(&w);
}

Test(global, baseline_pin_and_reset)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    gepoch_t *e = global_epoch(&w.global, md, 1, true);
    cr_assert(e);
    trade_t t;
    global_closed_t c;
    global_add(&w.global, md, NULL, mk(&t, UP), &c);
    unsigned done = global_baseline(&w.global, e, XM_BIT(XM_ROLLOUT) | XM_BIT(XM_DIAG), true);
    cr_assert_eq(done, XM_BIT(XM_ROLLOUT), "diag has no trades: not pinned");
    cr_assert_eq(e->drift[XM_ROLLOUT].ref_kind, DRIFT_REF_PINNED);
    global_baseline(&w.global, e, XM_BIT(XM_ROLLOUT), false);
    cr_assert_eq(e->drift[XM_ROLLOUT].ref_kind, DRIFT_REF_NONE);
    fx_down(&w);
}
