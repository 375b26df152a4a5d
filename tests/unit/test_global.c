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

/* The windows of one stream: 4 trades per window, window w's vector
   moving a little from window to window (so calibration sees spread),
   and from window 8 on the reversed ranking. */
#define EV_WINDOWS 12
#define EV_SHIFT 8
static void
ev_vec(int w, int j, float *v)
{
    const float *base = w < EV_SHIFT ? UP : DOWN;
    for (int f = 0; f < NF; f++)
        v[f] = base[f] + 0.01f * (float)((w * 7 + j * 3 + f * 5) % 5);
}

/* Every closed window of a daemon fed the stream: by count (window_s 0)
   or by event time (trades of window w at ts (100 + w) s + j ns). */
static int
ev_run(const char *const *opts, bool by_time, glast_t *out, uint64_t *seqs)
{
    static fx_world_t w;
    fx_up(&w, opts);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    float v[NF];
    int n = 0;
    /* One trade of window EV_WINDOWS closes the last full one by time. */
    for (int win = 0; win <= EV_WINDOWS; win++)
        for (int j = 0; j < (win < EV_WINDOWS ? 4 : 1); j++) {
            if (win == EV_WINDOWS && !by_time)
                break;
            ev_vec(win, j, v);
            md->last_ts = (int64_t)(100 + win) * 1000000000 + j;
            global_closed_t c;
            global_add(&w.global, md, NULL, mk(&t, v), &c);
            for (int k = 0; k < c.n; k++) {
                cr_assert_eq(c.w[k].method, XM_ROLLOUT);
                cr_assert_lt(n, EV_WINDOWS);
                seqs[n] = c.w[k].seq;
                out[n++] = c.w[k].last;
            }
        }
    const gmodel_t *gm = global_model_const(&w.global, md);
    uint64_t alerts = gm->alerts_total;
    fx_down(&w);
    return n + (int)(alerts << 8);
}

/* A window closed by event time is judged exactly as the same window
   closed by count: the drift mode's verdict (calibrated and CUSUM keep
   state from window to window), what moved, the alert and the drift/
   seq; only the window's name differs (its start over its length). */
Test(global, event_time_windows_take_the_count_windows_verdict_path)
{
    static const char *const modes[] = {"calibrated", "cusum"};
    for (int md = 0; md < 2; md++) {
        const char *const by_count[] = {"--drift-window", "4", "--drift-mode", modes[md],
                                        "--drift-calib-windows", "4", NULL};
        const char *const by_time[] = {"--drift-window", "4", "--drift-window-s", "1",
                                       "--drift-lateness-s", "0", "--drift-mode", modes[md],
                                       "--drift-calib-windows", "4", NULL};
        glast_t a[EV_WINDOWS], b[EV_WINDOWS];
        uint64_t sa[EV_WINDOWS], sb[EV_WINDOWS];
        int ra = ev_run(by_count, false, a, sa), rb = ev_run(by_time, true, b, sb);
        cr_assert_eq(ra & 0xff, EV_WINDOWS, "%s: count windows closed", modes[md]);
        cr_assert_eq(rb & 0xff, EV_WINDOWS, "%s: event-time windows closed", modes[md]);
        cr_assert_gt(ra >> 8, 0, "%s: the reversed ranking alerts", modes[md]);
        cr_assert_eq(ra >> 8, rb >> 8, "%s: as many alerts either way", modes[md]);
        for (int k = 0; k < EV_WINDOWS; k++) {
            cr_assert_eq(sa[k], (uint64_t)k);
            cr_assert_eq(sb[k], (uint64_t)k, "drift/ seq of event-time window %d", k);
            cr_assert_eq(a[k].window, (uint64_t)k);
            cr_assert_eq(b[k].window, (uint64_t)(100 + k), "named by its start over its length");
            cr_assert_eq(b[k].trades, 4);
            cr_assert_eq(a[k].compared, b[k].compared);
            cr_assert_eq(a[k].alert, b[k].alert, "%s window %d", modes[md], k);
            cr_assert_eq(b[k].verdict.mode, (detect_mode_t)(md + 1), "the configured mode");
            cr_assert_eq(a[k].verdict.calibrating, b[k].verdict.calibrating);
            for (int i = 0; i < DETECT_NSTAT; i++) {
                cr_assert_eq(a[k].verdict.scored[i], b[k].verdict.scored[i]);
                cr_assert(fabs(a[k].verdict.z[i] - b[k].verdict.z[i]) <=
                              1e-9 * (1 + fabs(a[k].verdict.z[i])),
                          "%s window %d z[%d]: %g by count, %g by time", modes[md], k, i,
                          a[k].verdict.z[i], b[k].verdict.z[i]);
                cr_assert(fabs(a[k].verdict.cusum[i] - b[k].verdict.cusum[i]) <=
                          1e-9 * (1 + fabs(a[k].verdict.cusum[i])));
            }
            cr_assert_eq(a[k].nmoved, b[k].nmoved, "%s window %d: what moved", modes[md], k);
            for (uint32_t i = 0; i < a[k].nmoved; i++)
                cr_assert_eq(a[k].moved[i].feature, b[k].moved[i].feature);
        }
        cr_assert_gt(b[EV_SHIFT].nmoved, 0, "the shifted window lists what moved");
    }
}

/* A segment keeps the model's event-time windows over its own trades:
   fed every trade of the stream, it closes the same windows with the
   same verdicts as the model overall, on drift/ seqs of its own, and
   its time-decayed mean is the model's. */
Test(global, segments_take_event_time_windows_and_the_decay_by_ts)
{
    static const char *const opts[] = {"--drift-window", "4", "--drift-window-s", "1",
                                       "--drift-lateness-s", "0", "--drift-mode", "cusum",
                                       "--drift-calib-windows", "4", "--decay-half-life-s", "2",
                                       "--segment-by", "desk", NULL};
    static fx_world_t w;
    fx_up(&w, opts);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    float v[NF];
    glast_t all[EV_WINDOWS], seg[EV_WINDOWS];
    uint64_t seqs[EV_WINDOWS];
    int nall = 0, nseg = 0;
    for (int win = 0; win <= EV_WINDOWS; win++)
        for (int j = 0; j < (win < EV_WINDOWS ? 4 : 1); j++) {
            ev_vec(win, j, v);
            md->last_ts = (int64_t)(100 + win) * 1000000000 + j;
            global_closed_t c;
            global_add_seg(&w.global, md, NULL, mk(&t, v), "desk=a", 6, &c);
            for (int k = 0; k < c.n; k++) {
                if (c.w[k].seg < 0) {
                    cr_assert_lt(nall, EV_WINDOWS);
                    all[nall++] = c.w[k].last;
                    continue;
                }
                cr_assert_str_eq(c.w[k].segment, "desk=a");
                cr_assert_lt(nseg, EV_WINDOWS);
                seqs[nseg] = c.w[k].seq;
                seg[nseg++] = c.w[k].last;
            }
        }
    cr_assert_eq(nall, EV_WINDOWS);
    cr_assert_eq(nseg, EV_WINDOWS, "the segment's event-time windows closed");
    bool alerted = false;
    for (int k = 0; k < EV_WINDOWS; k++) {
        cr_assert_eq(seqs[k], (uint64_t)k, "the segment's own drift/ seq");
        cr_assert_eq(seg[k].window, (uint64_t)(100 + k));
        cr_assert_eq(seg[k].window, all[k].window);
        cr_assert_eq(seg[k].trades, 4);
        cr_assert_eq(seg[k].alert, all[k].alert, "window %d", k);
        cr_assert_eq(seg[k].verdict.mode, DETECT_CUSUM);
        for (int i = 0; i < DETECT_NSTAT; i++)
            cr_assert(seg[k].verdict.cusum[i] == all[k].verdict.cusum[i]);
        cr_assert_eq(seg[k].nmoved, all[k].nmoved);
        alerted = alerted || seg[k].alert;
    }
    cr_assert(alerted, "the segment alerts on the reversed ranking");
    const gepoch_t *e = global_current(&w.global, md);
    const gseg_t *sg = global_segment(e, "desk=a", 6);
    cr_assert_not_null(sg);
    cr_assert_eq(sg->evw[XM_ROLLOUT].late, 0);
    double dm[NF], ds[NF];
    evdecay_mean(&e->evd[XM_ROLLOUT], dm);
    evdecay_mean(&sg->evd[XM_ROLLOUT], ds);
    cr_assert(memcmp(dm, ds, sizeof dm) == 0, "the segment's decay by ts is the model's");
    /* A trade of a closed window is late in the segment as overall. */
    ev_vec(0, 0, v);
    md->last_ts = 100 * (int64_t)1000000000;
    global_closed_t c;
    global_add_seg(&w.global, md, NULL, mk(&t, v), "desk=a", 6, &c);
    cr_assert_eq(sg->evw[XM_ROLLOUT].late, 1);
    cr_assert_eq(e->evw[XM_ROLLOUT].late, 1);
    fx_down(&w);
}
