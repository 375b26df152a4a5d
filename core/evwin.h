/*  evwin: statistics by event time that merge exactly (MATH.md,
    "Merging across daemons").

    Both statistics here depend only on the *set* of trades and each
    trade's own timestamp `ts` (ns since the Unix epoch, the contract's
    `ts`), never on the order in which the trades arrived. So the states of
    several daemons that each saw part of a stream merge into the state of
    one daemon that saw all of it, up to float64 rounding of sums.

    evdecay_t: a time-decayed mean with a half-life of `half_ns`:

        mean = sum_i w_i x_i / sum_i w_i,   w_i = 2^((ts_i - t) / half_ns)

    for any t (t cancels: the mean changes only as trades come in, by
    their event time, not by the wall clock). The sums are kept relative
    to a point of a fixed grid, t = anchor * half_ns (anchor an integer),
    so moving to another anchor multiplies them by an exact power of two
    (ldexp): `anchor` follows the newest ts seen, every weight is then
    below 2 (no overflow) and the newest is at least 1; a weight that
    underflows belongs to a trade more than ~1000 half-lives older than
    the newest, whose share of the mean is below double precision anyway.
    A trade's weight is 2^(q - anchor) * 2^(r / half_ns) with
    ts = q * half_ns + r, 0 <= r < half_ns: the same mantissa whatever the
    anchor, so a trade counts exactly the same in every daemon.

    evwin_t: tumbling windows of `len_ns` by event time. Window k holds the
    trades with k * len_ns <= ts < (k + 1) * len_ns. The watermark is the
    largest ts seen minus the allowed lateness `late_ns`; window k closes
    once the watermark reaches its end ((k + 1) * len_ns <= watermark).
    A trade whose window has closed is *late*: counted in `late`, never
    added (a closed window's verdict stands). Windows close oldest first,
    each through a callback; empty windows close silently (an empty window
    is never held). The last `keep` closed windows that hold trades stay
    readable (evwin_get, evwin_next), however far apart in time, so that a
    peer merging this state (an aggregator) can still read windows it has
    not yet combined, also across a pause in the stream.

    Memory: evwin holds at most nslots = keep + late_ns / len_ns + 2
    windows (the open ones can never be more than late_ns / len_ns + 2) of
    nfeat + 2 values (8 bytes each), sorted by index, plus nfeat of
    scratch, fixed at init; at most EVWIN_MAX_SLOTS. evdecay keeps nfeat +
    1 values.

    Merging (evdecay_merge, evwin_merge) is commutative and associative up
    to the rounding of float64 sums: any grouping and order of the parts of
    a stream gives the state of the whole stream. For windows, "the whole
    stream" is the union of what the parts accepted: it equals what one
    daemon would have accepted when no trade came later than `late_ns`
    after a newer one (then nothing is late anywhere).

    Plain fields (for snapshots), caller storage, no clock, no sockets,
    no allocation after init.  */
#ifndef XPL_EVWIN_H
#define XPL_EVWIN_H

#include "snap.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t nfeat;
    int64_t half_ns;            /* half-life in ns, >= 1 */
    uint64_t count;             /* vectors added */
    int64_t anchor;             /* sums are relative to t = anchor * half_ns */
    double weight;              /* sum_i w_i */
    double *sum;                /* [nfeat] sum_i w_i x_i */
} evdecay_t;

/* An empty decayed mean of nfeat features with a half-life of half_ns
   (>= 1). Returns 0, or -1 on a bad half-life or out of memory (then
   *d holds no memory; evdecay_destroy is safe). */
int evdecay_init(evdecay_t *d, uint32_t nfeat, int64_t half_ns);

/* Free the array; safe twice. */
void evdecay_destroy(evdecay_t *d);

/* Forget every trade, keeping size and half-life. */
void evdecay_reset(evdecay_t *d);

/* Add one vector with event time ts. 0, or -1 on a NaN/Inf (nothing
   changes). */
int evdecay_add(evdecay_t *d, int64_t ts, const float *x);

/* Merge src into dst. 0, or -1 when nfeat or half_ns differ (dst
   unchanged). */
int evdecay_merge(evdecay_t *dst, const evdecay_t *src);

/* The decayed mean into out[nfeat] (zeros with no trade). */
void evdecay_mean(const evdecay_t *d, double *out);

/* sum_i 2^((ts_i - t) / half_ns): the trades' total weight seen from
   time t, an "effective number of trades" (0 with no trade). */
double evdecay_weight_at(const evdecay_t *d, int64_t t);

#define EVWIN_MAX_SLOTS 65536u

/* One window, as evwin shows it: valid until the next call on the evwin. */
typedef struct {
    int64_t k;                  /* index: [k * len_ns, (k + 1) * len_ns) */
    int64_t start_ns, end_ns;   /* saturated at the int64 range */
    uint64_t count;             /* trades in it */
    const double *sum;          /* [nfeat] */
    const double *mean;         /* [nfeat] sum / count (zeros when empty) */
} evwin_view_t;

/* Called for every window that closes, oldest first, non-empty ones only. */
typedef void (evwin_close_fn)(void *arg, const evwin_view_t *w);

typedef struct {
    uint32_t nfeat;
    int64_t len_ns;             /* window length, >= 1 */
    int64_t late_ns;            /* allowed lateness, >= 0 */
    uint32_t keep;              /* closed windows kept readable */
    uint32_t nslots;            /* keep + late_ns / len_ns + 2 */
    bool started;               /* max_ts and next_close are set */
    int64_t max_ts;             /* largest ts seen */
    int64_t next_close;         /* lowest window not closed yet */
    uint64_t late;              /* trades refused as late */
    uint32_t used;              /* windows held, in slots [0, used) */
    int64_t *key;               /* [nslots] window index, ascending */
    uint64_t *count;            /* [nslots] trades in it (> 0) */
    double *sum;                /* [nslots][nfeat] */
    double *mean;               /* [nfeat] scratch for views */
} evwin_t;

/* Empty windows of len_ns (>= 1) for nfeat features, late_ns (>= 0) of
   allowed lateness, `keep` closed windows kept. 0, or -1 on a bad
   argument, more than EVWIN_MAX_SLOTS slots, or out of memory (then *w
   holds no memory; evwin_destroy is safe). */
int evwin_init(evwin_t *w, uint32_t nfeat, int64_t len_ns, int64_t late_ns, uint32_t keep);

/* Free the arrays; safe twice. */
void evwin_destroy(evwin_t *w);

/* Forget every trade and window, keeping the configuration. */
void evwin_reset(evwin_t *w);

/* Add one vector with event time ts: first the watermark moves to
   ts - late_ns if that is later (closing windows through cb, which may
   be NULL), then the vector joins its window. Returns 0 (added), 1 (late:
   counted, not added), -1 (NaN/Inf: nothing changes). */
int evwin_add(evwin_t *w, int64_t ts, const float *x, evwin_close_fn *cb, void *arg);

/* Move the watermark as a trade at ts would, without adding anything
   (a heartbeat, or the end of a stream): windows close through cb. */
void evwin_advance(evwin_t *w, int64_t ts, evwin_close_fn *cb, void *arg);

/* Window k: 1 when closed and still kept, 0 when open (possibly empty:
   then count 0), -1 when closed and not held (empty, or dropped past
   keep) or before the first trade. *out is filled for 0 and 1. */
int evwin_get(evwin_t *w, int64_t k, evwin_view_t *out);

/* The held window with the lowest index >= k: 1 when closed, 0 when open
   (*out filled), -1 when there is none. */
int evwin_next(evwin_t *w, int64_t k, evwin_view_t *out);

/* Merge src into dst (no callbacks): max_ts is the larger, late the
   sum, and the windows are the union's, summed where both hold one: every
   open window, and the `keep` newest closed ones (whatever the order of
   merges, the same ones). Windows that thereby become closed in dst are
   readable with evwin_get. 0, or -1 when nfeat, len_ns, late_ns or keep
   differ (dst unchanged). */
int evwin_merge(evwin_t *dst, const evwin_t *src);

/* Floor division and window bounds, shared with the callers. */
int64_t evwin_floor_div(int64_t a, int64_t b);

/* Snapshot records (snap.h), also the whole state a shard sends its
   aggregator: evdecay_load and evwin_load read into a state inited with
   today's configuration and fail (naming why in rd->why) when the record
   was written with another half-life, window length, lateness or keep,
   or does not hold together; the state then holds partial values and the
   caller discards it. */
void evdecay_save(msgpack_packer *pk, const evdecay_t *d);
int evdecay_load(snap_rd_t *rd, evdecay_t *d);
void evwin_save(msgpack_packer *pk, const evwin_t *w);
int evwin_load(snap_rd_t *rd, evwin_t *w);

#endif
