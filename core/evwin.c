/*  evwin: event-time decayed means and windows that merge exactly. See
    evwin.h and MATH.md, "Merging across daemons".  */
#include "evwin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ldexp exponents beyond this only ever give 0 (or are never reached):
   2^-1100 is below the smallest subnormal. */
#define S_EXP_CLAMP 1100

int64_t
evwin_floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

static int64_t
s_floor_mod(int64_t a, int64_t b)
{
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static int64_t
s_sub_sat(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_sub_overflow(a, b, &r) ? (b > 0 ? INT64_MIN : INT64_MAX) : r;
}

static int64_t
s_mul_sat(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? ((a < 0) != (b < 0) ? INT64_MIN : INT64_MAX) : r;
}

static int
s_clamp_exp(int64_t e)
{
    return e < -S_EXP_CLAMP ? -S_EXP_CLAMP : e > S_EXP_CLAMP ? S_EXP_CLAMP : (int)e;
}

static bool
s_finitef(const float *x, uint32_t n)
{
    for (uint32_t j = 0; j < n; j++)
        if (!isfinite(x[j]))
            return false;
    return true;
}

/* ---------------------------------------------------------------- decay */

int
evdecay_init(evdecay_t *d, uint32_t nfeat, int64_t half_ns)
{
    memset(d, 0, sizeof *d);
    if (half_ns < 1)
        return -1;
    if (nfeat > 0 && !(d->sum = calloc(nfeat, sizeof *d->sum)))
        return -1;
    d->nfeat = nfeat;
    d->half_ns = half_ns;
    return 0;
}

void
evdecay_destroy(evdecay_t *d)
{
    free(d->sum);
    memset(d, 0, sizeof *d);
}

void
evdecay_reset(evdecay_t *d)
{
    d->count = 0;
    d->anchor = 0;
    d->weight = 0;
    if (d->nfeat)
        memset(d->sum, 0, d->nfeat * sizeof *d->sum);
}

/* Move the sums to a later anchor: an exact scaling by a power of two
   (until values turn subnormal, see evwin.h). */
static void
s_rescale(evdecay_t *d, int64_t anchor)
{
    int e = s_clamp_exp(-(anchor - d->anchor));
    d->weight = ldexp(d->weight, e);
    for (uint32_t j = 0; j < d->nfeat; j++)
        d->sum[j] = ldexp(d->sum[j], e);
    d->anchor = anchor;
}

int
evdecay_add(evdecay_t *d, int64_t ts, const float *x)
{
    if (!s_finitef(x, d->nfeat))
        return -1;
    int64_t q = evwin_floor_div(ts, d->half_ns);
    int64_t r = s_floor_mod(ts, d->half_ns);
    if (d->count == 0)
        d->anchor = q;
    else if (q > d->anchor)
        s_rescale(d, q);
    /* The mantissa depends on r alone, the anchor only shifts the
       exponent: the same trade weighs the same in every daemon. */
    double w = ldexp(exp2((double)r / (double)d->half_ns), s_clamp_exp(q - d->anchor));
    d->weight += w;
    for (uint32_t j = 0; j < d->nfeat; j++)
        d->sum[j] += w * (double)x[j];
    d->count++;
    return 0;
}

int
evdecay_merge(evdecay_t *dst, const evdecay_t *src)
{
    if (dst->nfeat != src->nfeat || dst->half_ns != src->half_ns)
        return -1;
    if (src->count == 0)
        return 0;
    if (dst->count == 0) {
        dst->count = src->count;
        dst->anchor = src->anchor;
        dst->weight = src->weight;
        if (dst->nfeat)
            memcpy(dst->sum, src->sum, dst->nfeat * sizeof *dst->sum);
        return 0;
    }
    if (src->anchor > dst->anchor)
        s_rescale(dst, src->anchor);
    int e = s_clamp_exp(src->anchor - dst->anchor);
    dst->weight += ldexp(src->weight, e);
    for (uint32_t j = 0; j < dst->nfeat; j++)
        dst->sum[j] += ldexp(src->sum[j], e);
    dst->count += src->count;
    return 0;
}

void
evdecay_mean(const evdecay_t *d, double *out)
{
    for (uint32_t j = 0; j < d->nfeat; j++)
        out[j] = d->weight > 0 ? d->sum[j] / d->weight : 0.0;
}

double
evdecay_weight_at(const evdecay_t *d, int64_t t)
{
    if (d->count == 0)
        return 0.0;
    int64_t q = evwin_floor_div(t, d->half_ns);
    int64_t r = s_floor_mod(t, d->half_ns);
    /* weight * 2^(anchor - t/h) = weight * 2^(anchor - q) * 2^(-r/h) */
    return ldexp(d->weight * exp2(-(double)r / (double)d->half_ns),
                 s_clamp_exp(s_sub_sat(d->anchor, q)));
}

/* -------------------------------------------------------------- windows */

int
evwin_init(evwin_t *w, uint32_t nfeat, int64_t len_ns, int64_t late_ns, uint32_t keep)
{
    memset(w, 0, sizeof *w);
    if (len_ns < 1 || late_ns < 0)
        return -1;
    uint64_t slots = (uint64_t)keep + (uint64_t)(late_ns / len_ns) + 2;
    if (slots > EVWIN_MAX_SLOTS)
        return -1;
    w->key = calloc(slots, sizeof *w->key);
    w->count = calloc(slots, sizeof *w->count);
    w->sum = calloc(slots * nfeat + 1, sizeof *w->sum);
    w->mean = calloc(nfeat + 1, sizeof *w->mean);
    if (!w->key || !w->count || !w->sum || !w->mean) {
        evwin_destroy(w);
        return -1;
    }
    w->nfeat = nfeat;
    w->len_ns = len_ns;
    w->late_ns = late_ns;
    w->keep = keep;
    w->nslots = (uint32_t)slots;
    return 0;
}

void
evwin_destroy(evwin_t *w)
{
    free(w->key);
    free(w->count);
    free(w->sum);
    free(w->mean);
    memset(w, 0, sizeof *w);
}

void
evwin_reset(evwin_t *w)
{
    w->started = false;
    w->max_ts = w->next_close = 0;
    w->late = 0;
    w->used = 0;
}

/* The first slot whose window is >= k (used when none). */
static uint32_t
s_lower(const evwin_t *w, int64_t k)
{
    uint32_t lo = 0, hi = w->used;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (w->key[mid] < k)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static double *
s_sum(const evwin_t *w, uint32_t slot)
{
    return w->sum + (size_t)slot * w->nfeat;
}

/* Remove n slots from `at` on, keeping the order. */
static void
s_remove(evwin_t *w, uint32_t at, uint32_t n)
{
    uint32_t rest = w->used - at - n;
    memmove(w->key + at, w->key + at + n, rest * sizeof *w->key);
    memmove(w->count + at, w->count + at + n, rest * sizeof *w->count);
    memmove(s_sum(w, at), s_sum(w, at + n), (size_t)rest * w->nfeat * sizeof *w->sum);
    w->used -= n;
}

/* Closed windows held: those below next_close. */
static uint32_t
s_closed(const evwin_t *w)
{
    return s_lower(w, w->next_close);
}

/* Drop the oldest closed windows past `keep`. */
static void
s_trim(evwin_t *w)
{
    uint32_t closed = s_closed(w);
    if (closed > w->keep)
        s_remove(w, 0, closed - w->keep);
}

/* An empty slot for window k (not held yet) at its place; the oldest
   closed window makes room when all are taken. Returns the slot, or -1
   when k is closed and older than every closed window kept (it is not
   among the newest `keep`), or there is no room (never, see evwin.h). */
static int64_t
s_insert(evwin_t *w, int64_t k)
{
    if (w->used == w->nslots) {
        uint32_t closed = s_closed(w);
        if (closed == 0 || (k < w->next_close && k < w->key[0]))
            return -1;
        s_remove(w, 0, 1);
    } else if (k < w->next_close && s_closed(w) >= w->keep && (w->keep == 0 || k < w->key[0])) {
        return -1;
    }
    uint32_t at = s_lower(w, k), rest = w->used - at;
    memmove(w->key + at + 1, w->key + at, rest * sizeof *w->key);
    memmove(w->count + at + 1, w->count + at, rest * sizeof *w->count);
    memmove(s_sum(w, at + 1), s_sum(w, at), (size_t)rest * w->nfeat * sizeof *w->sum);
    w->key[at] = k;
    w->count[at] = 0;
    memset(s_sum(w, at), 0, w->nfeat * sizeof *w->sum);
    w->used++;
    s_trim(w);
    return s_lower(w, k);
}

static void
s_view_slot(evwin_t *w, uint32_t slot, evwin_view_t *out)
{
    const double *sum = s_sum(w, slot);
    uint64_t n = w->count[slot];
    for (uint32_t j = 0; j < w->nfeat; j++)
        w->mean[j] = n ? sum[j] / (double)n : 0.0;
    int64_t k = w->key[slot];
    out->k = k;
    out->start_ns = s_mul_sat(k, w->len_ns);
    out->end_ns = k == INT64_MAX ? INT64_MAX : s_mul_sat(k + 1, w->len_ns);
    out->count = n;
    out->sum = sum;
    out->mean = w->mean;
}

/* The window index below which a watermark of max_ts closes everything. */
static int64_t
s_next_close(const evwin_t *w, int64_t max_ts)
{
    return evwin_floor_div(s_sub_sat(max_ts, w->late_ns), w->len_ns);
}

/* Close the windows below next_close (through cb when given), oldest
   first, then drop the closed ones past `keep`. */
static void
s_slide(evwin_t *w, int64_t next_close, evwin_close_fn *cb, void *arg)
{
    if (next_close <= w->next_close)
        return;
    for (uint32_t at = s_lower(w, w->next_close); cb && at < w->used && w->key[at] < next_close;
         at++) {
        evwin_view_t v;
        s_view_slot(w, at, &v);
        cb(arg, &v);
    }
    w->next_close = next_close;
    s_trim(w);
}

static void
s_start(evwin_t *w, int64_t ts)
{
    w->started = true;
    w->max_ts = ts;
    w->next_close = s_next_close(w, ts);
}

void
evwin_advance(evwin_t *w, int64_t ts, evwin_close_fn *cb, void *arg)
{
    if (!w->started) {
        s_start(w, ts);
        return;
    }
    if (ts <= w->max_ts)
        return;
    w->max_ts = ts;
    s_slide(w, s_next_close(w, ts), cb, arg);
}

int
evwin_add(evwin_t *w, int64_t ts, const float *x, evwin_close_fn *cb, void *arg)
{
    if (!s_finitef(x, w->nfeat))
        return -1;
    evwin_advance(w, ts, cb, arg);
    int64_t k = evwin_floor_div(ts, w->len_ns);
    if (k < w->next_close) {
        w->late++;
        return 1;
    }
    uint32_t at = s_lower(w, k);
    if (at == w->used || w->key[at] != k) {
        int64_t got = s_insert(w, k);
        if (got < 0) {
            /* Never for an open window (the open ones always fit); a
               watermark saturated near INT64_MIN is the only way here. */
            w->late++;
            return 1;
        }
        at = (uint32_t)got;
    }
    double *sum = s_sum(w, at);
    for (uint32_t j = 0; j < w->nfeat; j++)
        sum[j] += (double)x[j];
    w->count[at]++;
    return 0;
}

int
evwin_get(evwin_t *w, int64_t k, evwin_view_t *out)
{
    if (!w->started)
        return -1;
    uint32_t at = s_lower(w, k);
    if (at < w->used && w->key[at] == k) {
        s_view_slot(w, at, out);
        return k < w->next_close ? 1 : 0;
    }
    if (k < w->next_close)
        return -1;
    /* Open and empty. */
    memset(w->mean, 0, w->nfeat * sizeof *w->mean);
    out->k = k;
    out->start_ns = s_mul_sat(k, w->len_ns);
    out->end_ns = k == INT64_MAX ? INT64_MAX : s_mul_sat(k + 1, w->len_ns);
    out->count = 0;
    out->sum = w->mean;
    out->mean = w->mean;
    return 0;
}

int
evwin_next(evwin_t *w, int64_t k, evwin_view_t *out)
{
    if (!w->started)
        return -1;
    uint32_t at = s_lower(w, k);
    if (at == w->used)
        return -1;
    s_view_slot(w, at, out);
    return w->key[at] < w->next_close ? 1 : 0;
}

int
evwin_merge(evwin_t *dst, const evwin_t *src)
{
    if (dst->nfeat != src->nfeat || dst->len_ns != src->len_ns || dst->late_ns != src->late_ns
        || dst->keep != src->keep)
        return -1;
    if (!src->started)
        return 0;
    if (!dst->started) {
        s_start(dst, src->max_ts);
        dst->next_close = src->next_close;
    } else {
        if (src->max_ts > dst->max_ts)
            dst->max_ts = src->max_ts;
        s_slide(dst, src->next_close, NULL, NULL);
    }
    /* Newest first: once `keep` closed windows are held, an older closed
       one of src is not among the union's newest and s_insert refuses
       it, whatever was merged before. */
    for (uint32_t i = src->used; i-- > 0;) {
        int64_t k = src->key[i];
        uint32_t at = s_lower(dst, k);
        if (at == dst->used || dst->key[at] != k) {
            int64_t got = s_insert(dst, k);
            if (got < 0)
                continue;
            at = (uint32_t)got;
        }
        dst->count[at] += src->count[i];
        const double *from = s_sum(src, i);
        double *to = s_sum(dst, at);
        for (uint32_t j = 0; j < dst->nfeat; j++)
            to[j] += from[j];
    }
    dst->late += src->late;
    return 0;
}

/* ------------------------------------------------------------ snapshots */

void
evdecay_save(msgpack_packer *pk, const evdecay_t *d)
{
    msgpack_pack_map(pk, 5);
    snap_put_str(pk, "half_ns");
    msgpack_pack_int64(pk, d->half_ns);
    snap_put_str(pk, "count");
    msgpack_pack_uint64(pk, d->count);
    snap_put_str(pk, "anchor");
    msgpack_pack_int64(pk, d->anchor);
    snap_put_str(pk, "weight");
    msgpack_pack_double(pk, d->weight);
    snap_put_str(pk, "sum");
    snap_put_doubles(pk, d->sum, d->nfeat);
}

int
evdecay_load(snap_rd_t *rd, evdecay_t *d)
{
    enum { HALF = 1, COUNT = 2, ANCHOR = 4, WEIGHT = 8, SUM = 16 };
    uint32_t n;
    unsigned seen = 0;
    int64_t half = 0;
    if (snap_get_map(rd, &n, "decayed mean"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(rd, &key, "decayed mean field"))
            return -1;
        if (mpr_str_eq(&key, "half_ns"))
            rc = snap_field(rd, &seen, HALF, "decayed mean half_ns") ||
                 snap_get_i64(rd, &half, "decayed mean half_ns");
        else if (mpr_str_eq(&key, "count"))
            rc = snap_field(rd, &seen, COUNT, "decayed mean count") ||
                 snap_get_u64(rd, &d->count, "decayed mean count");
        else if (mpr_str_eq(&key, "anchor"))
            rc = snap_field(rd, &seen, ANCHOR, "decayed mean anchor") ||
                 snap_get_i64(rd, &d->anchor, "decayed mean anchor");
        else if (mpr_str_eq(&key, "weight"))
            rc = snap_field(rd, &seen, WEIGHT, "decayed mean weight") ||
                 snap_get_f64(rd, &d->weight, "decayed mean weight");
        else if (mpr_str_eq(&key, "sum"))
            rc = snap_field(rd, &seen, SUM, "decayed mean sums") ||
                 snap_get_doubles(rd, d->sum, d->nfeat, "decayed mean sums");
        else
            rc = snap_skip(rd, "decayed mean field");
        if (rc)
            return -1;
    }
    if (snap_fields_all(rd, seen, HALF | COUNT | ANCHOR | WEIGHT | SUM,
                        "decayed mean (a field is missing)"))
        return -1;
    if (half != d->half_ns)
        return snap_fail(rd, "decayed mean of another half-life");
    if (!(d->weight >= 0) || !isfinite(d->weight) || (d->count > 0) != (d->weight > 0))
        return snap_fail(rd, "decayed mean weight out of range");
    for (uint32_t j = 0; j < d->nfeat; j++)
        if (!isfinite(d->sum[j]))
            return snap_fail(rd, "decayed mean sum not finite");
    return 0;
}

/* windows: an array of [k, count, [sum...]], ascending k, the windows
   held. */
void
evwin_save(msgpack_packer *pk, const evwin_t *w)
{
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "len_ns");
    msgpack_pack_int64(pk, w->len_ns);
    snap_put_str(pk, "late_ns");
    msgpack_pack_int64(pk, w->late_ns);
    snap_put_str(pk, "keep");
    msgpack_pack_uint32(pk, w->keep);
    snap_put_str(pk, "started");
    if (w->started)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    snap_put_str(pk, "max_ts");
    msgpack_pack_int64(pk, w->max_ts);
    snap_put_str(pk, "next_close");
    msgpack_pack_int64(pk, w->next_close);
    snap_put_str(pk, "late");
    msgpack_pack_uint64(pk, w->late);
    snap_put_str(pk, "windows");
    msgpack_pack_array(pk, w->used);
    for (uint32_t i = 0; i < w->used; i++) {
        msgpack_pack_array(pk, 3);
        msgpack_pack_int64(pk, w->key[i]);
        msgpack_pack_uint64(pk, w->count[i]);
        snap_put_doubles(pk, s_sum(w, i), w->nfeat);
    }
}

static int
s_load_windows(snap_rd_t *rd, evwin_t *w)
{
    uint32_t n;
    if (snap_get_array(rd, &n, "event-time windows"))
        return -1;
    if (n > w->nslots)
        return snap_fail(rd, "more event-time windows than slots");
    if (n && !w->started)
        return snap_fail(rd, "event-time windows before any trade");
    for (uint32_t i = 0; i < n; i++) {
        int64_t k;
        uint64_t count;
        if (snap_get_array_n(rd, 3, "event-time window") ||
            snap_get_i64(rd, &k, "event-time window index") ||
            snap_get_u64(rd, &count, "event-time window count"))
            return -1;
        if (count == 0 || (i > 0 && k <= w->key[i - 1]))
            return snap_fail(rd, "event-time windows out of order, twice or empty");
        w->key[i] = k;
        w->count[i] = count;
        w->used = i + 1;
        if (snap_get_doubles(rd, s_sum(w, i), w->nfeat, "event-time window sums"))
            return -1;
        for (uint32_t j = 0; j < w->nfeat; j++)
            if (!isfinite(s_sum(w, i)[j]))
                return snap_fail(rd, "event-time window sum not finite");
    }
    if (s_closed(w) > w->keep)
        return snap_fail(rd, "more closed event-time windows than kept");
    return 0;
}

int
evwin_load(snap_rd_t *rd, evwin_t *w)
{
    enum { LEN = 1, LATE_NS = 2, KEEP = 4, STARTED = 8, MAX = 16, NEXT = 32, LATE = 64,
           WINDOWS = 128 };
    uint32_t n, keep = 0;
    unsigned seen = 0;
    int64_t len = 0, late_ns = -1;
    evwin_reset(w);
    if (snap_get_map(rd, &n, "event-time windows"))
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(rd, &key, "event-time windows field"))
            return -1;
        if (mpr_str_eq(&key, "len_ns"))
            rc = snap_field(rd, &seen, LEN, "window length") || snap_get_i64(rd, &len, "window length");
        else if (mpr_str_eq(&key, "late_ns"))
            rc = snap_field(rd, &seen, LATE_NS, "window lateness") ||
                 snap_get_i64(rd, &late_ns, "window lateness");
        else if (mpr_str_eq(&key, "keep"))
            rc = snap_field(rd, &seen, KEEP, "windows kept") || snap_get_u32(rd, &keep, "windows kept");
        else if (mpr_str_eq(&key, "started"))
            rc = snap_field(rd, &seen, STARTED, "windows started") ||
                 snap_get_bool(rd, &w->started, "windows started");
        else if (mpr_str_eq(&key, "max_ts"))
            rc = snap_field(rd, &seen, MAX, "windows max_ts") || snap_get_i64(rd, &w->max_ts, "windows max_ts");
        else if (mpr_str_eq(&key, "next_close"))
            rc = snap_field(rd, &seen, NEXT, "windows next_close") ||
                 snap_get_i64(rd, &w->next_close, "windows next_close");
        else if (mpr_str_eq(&key, "late"))
            rc = snap_field(rd, &seen, LATE, "late trades") || snap_get_u64(rd, &w->late, "late trades");
        else if (mpr_str_eq(&key, "windows")) {
            /* After the fields it depends on (evwin_save writes it last). */
            if (snap_fields_all(rd, seen, LEN | LATE_NS | KEEP | STARTED | MAX | NEXT,
                                "event-time windows before their bounds"))
                return -1;
            if (len != w->len_ns || late_ns != w->late_ns || keep != w->keep)
                return snap_fail(rd, "event-time windows of another length, lateness or keep");
            if (w->started && w->next_close != s_next_close(w, w->max_ts))
                return snap_fail(rd, "event-time window bounds inconsistent");
            rc = snap_field(rd, &seen, WINDOWS, "event-time windows") || s_load_windows(rd, w);
        } else
            rc = snap_skip(rd, "event-time windows field");
        if (rc)
            return -1;
    }
    return snap_fields_all(rd, seen, LEN | LATE_NS | KEEP | STARTED | MAX | NEXT | LATE | WINDOWS,
                           "event-time windows (a field is missing)");
}
