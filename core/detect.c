/*  detect: calibrated and sequential drift verdicts, what moved. See
    detect.h and MATH.md.  */
#include "detect.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void
detect_opts_default(detect_opts_t *o)
{
    o->mode = DETECT_FIXED;
    o->calib_windows = 50;
    o->multiple = 5;
    o->cusum_k = 0.5;
    o->cusum_h = 8;
    o->sd_floor = 0.1;
}

static const char *s_modes[] = {"fixed", "calibrated", "cusum"};

const char *
detect_mode_name(detect_mode_t m)
{
    return (unsigned)m < 3 ? s_modes[m] : NULL;
}

int
detect_mode_parse(const char *name, size_t len)
{
    for (int m = 0; m < 3; m++)
        if (strlen(s_modes[m]) == len && memcmp(s_modes[m], name, len) == 0)
            return m;
    return -1;
}

int
detect_opts_check(const detect_opts_t *o, const char **why)
{
    const char *bad = NULL;
    if ((unsigned)o->mode > DETECT_CUSUM)
        bad = "mode";
    else if (o->calib_windows < 2)
        bad = "calib_windows";
    else if (!(o->multiple > 0) || !isfinite(o->multiple))
        bad = "multiple";
    else if (!(o->cusum_k >= 0) || !isfinite(o->cusum_k))
        bad = "cusum_k";
    else if (!(o->cusum_h > 0) || !isfinite(o->cusum_h))
        bad = "cusum_h";
    else if (!(o->sd_floor >= 0) || !isfinite(o->sd_floor))
        bad = "sd_floor";
    if (why)
        *why = bad;
    return bad ? -1 : 0;
}

/* The fixed margins: how far each departure may go before the fixed
   thresholds alert. The floor on sigma is a fraction of them, so that a
   statistic that never moved during calibration does not make every
   later rounding-sized wobble an alert. */
static void
s_tau(detect_t *d, const drift_opts_t *thr)
{
    drift_opts_t def;
    if (!thr) {
        drift_opts_default(&def);
        thr = &def;
    }
    d->tau[DETECT_RHO] = 1 - thr->rho_min;
    d->tau[DETECT_NDCG] = 1 - thr->ndcg_min;
    d->tau[DETECT_JS] = thr->js_max;
}

int
detect_init(detect_t *d, const detect_opts_t *o, const drift_opts_t *thr)
{
    memset(d, 0, sizeof *d);
    if (o && detect_opts_check(o, NULL))
        return -1;
    if (o)
        d->opts = *o;
    else
        detect_opts_default(&d->opts);
    s_tau(d, thr);
    return 0;
}

int
detect_set_opts(detect_t *d, const detect_opts_t *o, const drift_opts_t *thr)
{
    if (detect_opts_check(o, NULL))
        return -1;
    bool restart = o->mode != d->opts.mode || o->calib_windows != d->opts.calib_windows;
    d->opts = *o;
    s_tau(d, thr);
    if (restart)
        detect_restart(d);
    return 0;
}

void
detect_restart(detect_t *d)
{
    d->calib_seen = 0;
    d->ready = false;
    memset(d->n, 0, sizeof d->n);
    memset(d->mean, 0, sizeof d->mean);
    memset(d->m2, 0, sizeof d->m2);
    memset(d->cusum, 0, sizeof d->cusum);
}

bool
detect_scale(const detect_t *d, int i, double *mu, double *sigma)
{
    if (!d->ready || i < 0 || i >= DETECT_NSTAT || d->n[i] < 2)
        return false;
    double s = sqrt(d->m2[i] / (d->n[i] - 1));
    double floor_ = d->opts.sd_floor * d->tau[i];
    *mu = d->mean[i];
    *sigma = s > floor_ ? s : floor_;
    /* Both zero (no floor, no variation): any departure is infinitely
       unusual, which z cannot say; the smallest positive sigma keeps z
       finite and huge. */
    if (*sigma <= 0)
        *sigma = 0x1p-1022;
    return true;
}

void
detect_feed(detect_t *d, const drift_report_t *r, detect_verdict_t *out)
{
    memset(out, 0, sizeof *out);
    out->mode = d->opts.mode;
    if (!r->compared) {
        /* A baseline was captured: a new reference, a new regime. */
        detect_restart(d);
        out->calibrating = d->opts.mode != DETECT_FIXED;
        return;
    }
    const drift_stat_t *st[DETECT_NSTAT] = {&r->spearman, &r->ndcg, &r->js};
    for (int i = 0; i < DETECT_NSTAT; i++) {
        out->defined[i] = st[i]->defined;
        if (st[i]->defined)
            out->dev[i] = i == DETECT_JS ? st[i]->value : 1 - st[i]->value;
    }
    if (d->opts.mode == DETECT_FIXED) {
        for (int i = 0; i < DETECT_NSTAT; i++)
            out->alert_stat[i] = st[i]->alert;
        out->alert = r->alert;
        return;
    }
    if (!d->ready) {
        for (int i = 0; i < DETECT_NSTAT; i++) {
            if (!out->defined[i])
                continue;
            double delta = out->dev[i] - d->mean[i];
            d->mean[i] += delta / ++d->n[i];
            d->m2[i] += delta * (out->dev[i] - d->mean[i]);
        }
        d->ready = ++d->calib_seen >= d->opts.calib_windows;
        out->calibrating = true;
        return;
    }
    for (int i = 0; i < DETECT_NSTAT; i++) {
        double mu, sigma;
        if (!out->defined[i] || !detect_scale(d, i, &mu, &sigma))
            continue;
        out->scored[i] = true;
        out->z[i] = (out->dev[i] - mu) / sigma;
        if (d->opts.mode == DETECT_CALIBRATED) {
            out->alert_stat[i] = out->z[i] > d->opts.multiple;
        } else {
            double s = d->cusum[i] + out->z[i] - d->opts.cusum_k;
            s = s > 0 ? s : 0;
            out->cusum[i] = s;
            out->alert_stat[i] = s > d->opts.cusum_h;
            d->cusum[i] = out->alert_stat[i] ? 0 : s;
        }
        out->alert |= out->alert_stat[i];
    }
    if (d->opts.mode == DETECT_CUSUM)
        for (int i = 0; i < DETECT_NSTAT; i++)
            if (!out->scored[i])
                out->cusum[i] = d->cusum[i];
}

/* ---- average run length -------------------------------------------- */

static double
s_phi(double x)
{
    return 0.5 * erfc(-x / M_SQRT2);
}

double
detect_cusum_arl(double k, double h, double delta, uint32_t states)
{
    if (states == 0)
        states = 400;
    if (!(h > 0) || !(k >= 0) || !isfinite(h) || !isfinite(k) || !isfinite(delta) || states < 2 ||
        states > 4000)
        return -1;
    /* Brook & Evans (1972): state 0 is S = 0, state i > 0 the interval of
       width w centred on i*w, with w = 2h / (2m - 1) so that the last
       interval ends at h. From state i the increment x - k moves S to
       i*w + x - k; P(i -> 0) = Phi(k - delta - i*w + w/2) and
       P(i -> j) = Phi(k - delta + (j-i)*w + w/2) - Phi(... - w/2).
       ARL from state 0 solves (I - P) L = 1, by Gaussian elimination
       with partial pivoting on the dense m x m system. */
    uint32_t m = states;
    double w = 2 * h / (2.0 * m - 1);
    double *a = malloc((size_t)m * (m + 1) * sizeof *a);
    if (!a)
        return -1;
#define A(i, j) a[(size_t)(i) * (m + 1) + (j)]
    for (uint32_t i = 0; i < m; i++) {
        for (uint32_t j = 0; j < m; j++) {
            double p;
            if (j == 0)
                p = s_phi(k - delta - i * w + w / 2);
            else
                p = s_phi(k - delta + ((double)j - i) * w + w / 2) -
                    s_phi(k - delta + ((double)j - i) * w - w / 2);
            A(i, j) = (i == j) - p;
        }
        A(i, m) = 1;
    }
    for (uint32_t c = 0; c < m; c++) {
        uint32_t piv = c;
        for (uint32_t r = c + 1; r < m; r++)
            if (fabs(A(r, c)) > fabs(A(piv, c)))
                piv = r;
        if (A(piv, c) == 0) {
            free(a);
            return -1;
        }
        if (piv != c)
            for (uint32_t j = c; j <= m; j++) {
                double t = A(c, j);
                A(c, j) = A(piv, j);
                A(piv, j) = t;
            }
        for (uint32_t r = c + 1; r < m; r++) {
            double f = A(r, c) / A(c, c);
            if (f == 0)
                continue;
            for (uint32_t j = c; j <= m; j++)
                A(r, j) -= f * A(c, j);
        }
    }
    /* Back substitution down to row 0 (the only value wanted, but every
       row is needed on the way). */
    for (uint32_t r = m; r-- > 0;) {
        double s = A(r, m);
        for (uint32_t j = r + 1; j < m; j++)
            s -= A(r, j) * A(j, m);
        A(r, m) = s / A(r, r);
    }
    double arl = A(0, m);
#undef A
    free(a);
    return arl;
}

double
detect_cusum_h(double k, double arl)
{
    if (!(arl >= 1) || !isfinite(arl) || !(k >= 0))
        return -1;
    /* ARL grows with h; 200 states are plenty for a bisection target. */
    double lo = 1e-6, hi = 100;
    double top = detect_cusum_arl(k, hi, 0, 200);
    if (top < 0 || top < arl)
        return -1;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        if (detect_cusum_arl(k, mid, 0, 200) < arl)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* ---- snapshots ------------------------------------------------------ */

static void
s_put_bool(msgpack_packer *pk, bool b)
{
    if (b)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

static void
s_put_bools(msgpack_packer *pk, const bool *b)
{
    msgpack_pack_array(pk, DETECT_NSTAT);
    for (int i = 0; i < DETECT_NSTAT; i++)
        s_put_bool(pk, b[i]);
}

static int
s_get_bools(snap_rd_t *rd, bool *b, const char *what)
{
    if (snap_get_array_n(rd, DETECT_NSTAT, what))
        return -1;
    for (int i = 0; i < DETECT_NSTAT; i++)
        if (snap_get_bool(rd, &b[i], what))
            return -1;
    return 0;
}

static int
s_get_mode(snap_rd_t *rd, detect_mode_t *m, const char *what)
{
    const uint8_t *p;
    uint32_t len;
    if (snap_get_str(rd, &p, &len, what))
        return -1;
    int k = detect_mode_parse((const char *)p, len);
    if (k < 0)
        return snap_fail(rd, what);
    *m = (detect_mode_t)k;
    return 0;
}

void
detect_save(msgpack_packer *pk, const detect_t *d)
{
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "mode");
    snap_put_str(pk, detect_mode_name(d->opts.mode));
    snap_put_str(pk, "calib_windows");
    msgpack_pack_uint32(pk, d->opts.calib_windows);
    snap_put_str(pk, "calib_seen");
    msgpack_pack_uint32(pk, d->calib_seen);
    snap_put_str(pk, "ready");
    s_put_bool(pk, d->ready);
    snap_put_str(pk, "n");
    msgpack_pack_array(pk, DETECT_NSTAT);
    for (int i = 0; i < DETECT_NSTAT; i++)
        msgpack_pack_uint32(pk, d->n[i]);
    snap_put_str(pk, "mean");
    snap_put_doubles(pk, d->mean, DETECT_NSTAT);
    snap_put_str(pk, "m2");
    snap_put_doubles(pk, d->m2, DETECT_NSTAT);
    snap_put_str(pk, "cusum");
    snap_put_doubles(pk, d->cusum, DETECT_NSTAT);
}

int
detect_load(snap_rd_t *rd, detect_t *d)
{
    enum { MODE = 1, CALIB = 2, SEEN = 4, READY = 8, N = 16, MEAN = 32, M2 = 64, CUSUM = 128 };
    const char *w = "drift verdict state";
    detect_t t = *d;
    detect_mode_t mode = DETECT_FIXED;
    uint32_t calib = 0, pairs;
    unsigned seen = 0;
    if (snap_get_map(rd, &pairs, w))
        return -1;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(rd, &key, w))
            return -1;
        if (mpr_str_eq(&key, "mode"))
            rc = snap_field(rd, &seen, MODE, w) || s_get_mode(rd, &mode, "drift mode");
        else if (mpr_str_eq(&key, "calib_windows"))
            rc = snap_field(rd, &seen, CALIB, w) || snap_get_u32(rd, &calib, w);
        else if (mpr_str_eq(&key, "calib_seen"))
            rc = snap_field(rd, &seen, SEEN, w) || snap_get_u32(rd, &t.calib_seen, w);
        else if (mpr_str_eq(&key, "ready"))
            rc = snap_field(rd, &seen, READY, w) || snap_get_bool(rd, &t.ready, w);
        else if (mpr_str_eq(&key, "n")) {
            rc = snap_field(rd, &seen, N, w) || snap_get_array_n(rd, DETECT_NSTAT, w);
            for (int i = 0; !rc && i < DETECT_NSTAT; i++)
                rc = snap_get_u32(rd, &t.n[i], w);
        } else if (mpr_str_eq(&key, "mean"))
            rc = snap_field(rd, &seen, MEAN, w) || snap_get_doubles(rd, t.mean, DETECT_NSTAT, w);
        else if (mpr_str_eq(&key, "m2"))
            rc = snap_field(rd, &seen, M2, w) || snap_get_doubles(rd, t.m2, DETECT_NSTAT, w);
        else if (mpr_str_eq(&key, "cusum"))
            rc = snap_field(rd, &seen, CUSUM, w) || snap_get_doubles(rd, t.cusum, DETECT_NSTAT, w);
        else
            rc = snap_skip(rd, w);
        if (rc)
            return -1;
    }
    if (snap_fields_all(rd, seen, 255u, "drift verdict state (a field is missing)"))
        return -1;
    for (int i = 0; i < DETECT_NSTAT; i++)
        if (!isfinite(t.mean[i]) || !(t.m2[i] >= 0) || !isfinite(t.m2[i]) || !(t.cusum[i] >= 0) ||
            !isfinite(t.cusum[i]) || t.n[i] > t.calib_seen)
            return snap_fail(rd, "drift verdict state (a value out of range)");
    if (t.calib_seen > calib || t.ready != (t.calib_seen >= calib))
        return snap_fail(rd, "drift verdict state (calibration count)");
    if (mode != d->opts.mode || calib != d->opts.calib_windows) {
        detect_restart(d);      /* measured for other options: start again */
        return 0;
    }
    *d = t;
    return 0;
}

void
detect_verdict_save(msgpack_packer *pk, const detect_verdict_t *v, const detect_moved_t *moved,
                    uint32_t nmoved)
{
    msgpack_pack_map(pk, 7);
    snap_put_str(pk, "mode");
    snap_put_str(pk, detect_mode_name(v->mode));
    snap_put_str(pk, "calibrating");
    s_put_bool(pk, v->calibrating);
    snap_put_str(pk, "scored");
    s_put_bools(pk, v->scored);
    snap_put_str(pk, "z");
    snap_put_doubles(pk, v->z, DETECT_NSTAT);
    snap_put_str(pk, "cusum");
    snap_put_doubles(pk, v->cusum, DETECT_NSTAT);
    snap_put_str(pk, "alerts");
    s_put_bools(pk, v->alert_stat);
    snap_put_str(pk, "moved");
    msgpack_pack_array(pk, nmoved);
    for (uint32_t k = 0; k < nmoved; k++) {
        msgpack_pack_array(pk, 5);
        msgpack_pack_uint32(pk, moved[k].feature);
        msgpack_pack_double(pk, moved[k].ref);
        msgpack_pack_double(pk, moved[k].cur);
        msgpack_pack_uint32(pk, moved[k].ref_rank);
        msgpack_pack_uint32(pk, moved[k].cur_rank);
    }
}

int
detect_verdict_load(snap_rd_t *rd, detect_verdict_t *v, detect_moved_t *moved, uint32_t cap,
                    uint32_t *nmoved, uint32_t nfeat)
{
    enum { MODE = 1, CALIB = 2, SCORED = 4, Z = 8, CUSUM = 16, ALERTS = 32, MOVED = 64 };
    const char *w = "drift verdict";
    uint32_t pairs, n = 0;
    unsigned seen = 0;
    memset(v, 0, sizeof *v);
    if (snap_get_map(rd, &pairs, w))
        return -1;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(rd, &key, w))
            return -1;
        if (mpr_str_eq(&key, "mode"))
            rc = snap_field(rd, &seen, MODE, w) || s_get_mode(rd, &v->mode, "drift mode");
        else if (mpr_str_eq(&key, "calibrating"))
            rc = snap_field(rd, &seen, CALIB, w) || snap_get_bool(rd, &v->calibrating, w);
        else if (mpr_str_eq(&key, "scored"))
            rc = snap_field(rd, &seen, SCORED, w) || s_get_bools(rd, v->scored, w);
        else if (mpr_str_eq(&key, "z"))
            rc = snap_field(rd, &seen, Z, w) || snap_get_doubles(rd, v->z, DETECT_NSTAT, w);
        else if (mpr_str_eq(&key, "cusum"))
            rc = snap_field(rd, &seen, CUSUM, w) || snap_get_doubles(rd, v->cusum, DETECT_NSTAT, w);
        else if (mpr_str_eq(&key, "alerts"))
            rc = snap_field(rd, &seen, ALERTS, w) || s_get_bools(rd, v->alert_stat, w);
        else if (mpr_str_eq(&key, "moved")) {
            rc = snap_field(rd, &seen, MOVED, w) || snap_get_array(rd, &n, w);
            if (!rc && n > cap)
                rc = snap_fail(rd, "drift verdict (moved list too long)");
            for (uint32_t j = 0; !rc && j < n; j++) {
                detect_moved_t *m = &moved[j];
                rc = snap_get_array_n(rd, 5, w) || snap_get_u32(rd, &m->feature, w) ||
                     snap_get_f64(rd, &m->ref, w) || snap_get_f64(rd, &m->cur, w) ||
                     snap_get_u32(rd, &m->ref_rank, w) || snap_get_u32(rd, &m->cur_rank, w);
                if (!rc && (m->feature >= nfeat || m->ref_rank - 1 >= nfeat ||
                            m->cur_rank - 1 >= nfeat))
                    rc = snap_fail(rd, "drift verdict (a moved feature out of range)");
                if (!rc) {
                    m->delta = m->cur - m->ref;
                    m->rank_up = (int32_t)m->ref_rank - (int32_t)m->cur_rank;
                }
            }
        } else
            rc = snap_skip(rd, w);
        if (rc)
            return -1;
    }
    if (snap_fields_all(rd, seen, 127u, "drift verdict (a field is missing)"))
        return -1;
    for (int i = 0; i < DETECT_NSTAT; i++)
        v->alert |= v->alert_stat[i];
    *nmoved = n;
    return 0;
}

/* ---- what moved ---------------------------------------------------- */

typedef struct {
    double key;         /* primary sort key, descending */
    double key2;        /* secondary, descending */
    uint32_t idx;       /* last: ascending */
} s_rec_t;

static int
s_rec_cmp(const void *pa, const void *pb)
{
    const s_rec_t *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key > b->key ? -1 : 1;
    if (a->key2 != b->key2)
        return a->key2 > b->key2 ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

int
detect_work_init(detect_work_t *w, uint32_t nfeat)
{
    memset(w, 0, sizeof *w);
    size_t n = nfeat ? nfeat : 1;
    w->pairs = malloc(n * sizeof(s_rec_t));
    w->rank_ref = malloc(2 * n * sizeof *w->rank_ref);
    if (!w->pairs || !w->rank_ref) {
        detect_work_destroy(w);
        return -1;
    }
    w->rank_cur = w->rank_ref + n;
    w->cap = nfeat;
    return 0;
}

void
detect_work_destroy(detect_work_t *w)
{
    free(w->pairs);
    free(w->rank_ref);
    memset(w, 0, sizeof *w);
}

/* Ordinal ranks, 1 = largest, equal values to the lower index first
   (the order nDCG uses). */
static void
s_ranks(s_rec_t *rec, const double *x, uint32_t n, uint32_t *rank)
{
    for (uint32_t j = 0; j < n; j++)
        rec[j] = (s_rec_t){x[j], 0, j};
    qsort(rec, n, sizeof *rec, s_rec_cmp);
    for (uint32_t r = 0; r < n; r++)
        rank[rec[r].idx] = r + 1;
}

uint32_t
detect_what_moved(detect_work_t *w, const double *cur, const double *ref, uint32_t nfeat,
                  uint32_t k, detect_order_t by, detect_moved_t *out)
{
    if (nfeat > w->cap)
        return 0;
    s_rec_t *rec = w->pairs;
    s_ranks(rec, ref, nfeat, w->rank_ref);
    s_ranks(rec, cur, nfeat, w->rank_cur);
    for (uint32_t j = 0; j < nfeat; j++) {
        double dv = fabs(cur[j] - ref[j]);
        double dr = fabs((double)w->rank_ref[j] - (double)w->rank_cur[j]);
        rec[j] = by == DETECT_BY_RANK ? (s_rec_t){dr, dv, j} : (s_rec_t){dv, dr, j};
    }
    qsort(rec, nfeat, sizeof *rec, s_rec_cmp);
    uint32_t cnt = k < nfeat ? k : nfeat;
    for (uint32_t r = 0; r < cnt; r++) {
        uint32_t j = rec[r].idx;
        out[r] = (detect_moved_t){
            .feature = j,
            .ref = ref[j],
            .cur = cur[j],
            .delta = cur[j] - ref[j],
            .ref_rank = w->rank_ref[j],
            .cur_rank = w->rank_cur[j],
            .rank_up = (int32_t)w->rank_ref[j] - (int32_t)w->rank_cur[j],
        };
    }
    return cnt;
}
