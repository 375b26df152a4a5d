/*  detect: verdicts on closed drift windows, and what moved (MATH.md,
    "Drift verdicts" and "What moved").

    A drift_t (drift.h) closes windows and measures three statistics
    against the reference. detect_t turns each closed window into a
    verdict in one of three modes, on the *departures*

        d_rho = 1 - rho,   d_ndcg = 1 - ndcg@k,   d_js = js

    (0 = identical to the reference, larger = further away):

      fixed       the drift thresholds of drift_opts_t (the window's own
                  alert, nothing learnt);
      calibrated  the first `calib_windows` compared windows after the
                  reference was set measure each departure's mean mu and
                  sample sd s; afterwards z = (d - mu) / sigma with
                  sigma = max(s, sd_floor * tau) (tau the fixed margin:
                  1 - rho_min, 1 - ndcg_min, js_max), and a statistic
                  alerts when z > multiple;
      cusum       the same calibration and z, accumulated window by
                  window: S = max(0, S + z - k); alert when S > h, then
                  S restarts at 0.

    During calibration the calibrated and cusum modes raise no alert.
    A window that captures a baseline (drift_report_t.compared false)
    restarts the calibration; so must detect_restart() whenever the
    reference is replaced another way (pinned, external). An undefined
    statistic neither calibrates nor moves its CUSUM.

    detect_what_moved() lists the features whose attribution changed
    most between the reference and a window's mean (value change and
    rank change).

    Purely computational, no allocation in detect_feed; the work area of
    detect_what_moved is allocated once by detect_work_init. Fields are
    plain, for snapshots.  */
#ifndef XPL_DETECT_H
#define XPL_DETECT_H

#include "drift.h"
#include "snap.h"

#include <stdbool.h>
#include <stdint.h>

/* The three statistics, in drift_report_t's order. */
enum { DETECT_RHO = 0, DETECT_NDCG = 1, DETECT_JS = 2, DETECT_NSTAT = 3 };

typedef enum { DETECT_FIXED = 0, DETECT_CALIBRATED = 1, DETECT_CUSUM = 2 } detect_mode_t;

typedef struct {
    detect_mode_t mode;
    uint32_t calib_windows;     /* W >= 2 windows measure the reference regime */
    double multiple;            /* calibrated: alert when z > multiple (> 0) */
    double cusum_k;             /* allowance, in sigmas (>= 0) */
    double cusum_h;             /* threshold, in sigmas (> 0) */
    double sd_floor;            /* sigma >= sd_floor * tau (>= 0) */
} detect_opts_t;

typedef struct {
    detect_opts_t opts;
    double tau[DETECT_NSTAT];   /* the fixed margins the floor is relative to */
    uint32_t calib_seen;        /* compared windows since the last restart */
    bool ready;                 /* calibration complete: mu and sigma frozen */
    uint32_t n[DETECT_NSTAT];   /* windows where the statistic was defined */
    double mean[DETECT_NSTAT];  /* Welford mean of d over those windows */
    double m2[DETECT_NSTAT];    /* Welford sum of squared deviations */
    double cusum[DETECT_NSTAT]; /* S, cusum mode */
} detect_t;

/* Verdict on one closed window. */
typedef struct {
    detect_mode_t mode;
    bool calibrating;           /* calibrated/cusum mode still measuring */
    bool defined[DETECT_NSTAT]; /* the statistic was defined in this window */
    double dev[DETECT_NSTAT];   /* departure d (0 when undefined) */
    bool scored[DETECT_NSTAT];  /* z (and S) exist: defined and calibrated */
    double z[DETECT_NSTAT];     /* standardised departure (0 unless scored) */
    double cusum[DETECT_NSTAT]; /* S after this window (cusum mode; else 0) */
    bool alert_stat[DETECT_NSTAT];
    bool alert;                 /* any statistic alerted in this mode */
} detect_verdict_t;

/* Defaults: fixed mode (nothing learnt), 50 calibration windows, multiple
   5, k 0.5, h 8, sd_floor 0.1. See MATH.md for why. */
void detect_opts_default(detect_opts_t *o);

/* "fixed", "calibrated", "cusum"; NULL out of range. */
const char *detect_mode_name(detect_mode_t m);
/* Mode for a name of `len` bytes, -1 when unknown. */
int detect_mode_parse(const char *name, size_t len);

/* Check options: 0, or -1 with *why naming the bad field. */
int detect_opts_check(const detect_opts_t *o, const char **why);

/* Initialise in caller storage with `o` (NULL: defaults) and the fixed
   thresholds `thr` (NULL: drift defaults) the floor is relative to.
   Returns 0, or -1 when the options are invalid. Allocates nothing. */
int detect_init(detect_t *d, const detect_opts_t *o, const drift_opts_t *thr);

/* Replace the options and thresholds (a reload). A changed mode or
   calib_windows restarts the calibration; multiple, k, h and the floor
   apply from the next window on. Returns -1 when invalid (unchanged). */
int detect_set_opts(detect_t *d, const detect_opts_t *o, const drift_opts_t *thr);

/* Forget the calibration and the CUSUM sums: the reference changed. */
void detect_restart(detect_t *d);

/* The verdict on one closed window `r` (from drift_push). */
void detect_feed(detect_t *d, const drift_report_t *r, detect_verdict_t *out);

/* Calibrated mean and sigma of statistic i; false when the calibration is
   not complete or saw the statistic defined fewer than twice. */
bool detect_scale(const detect_t *d, int i, double *mu, double *sigma);

/* Average run length, in windows, of a one-sided CUSUM S = max(0, S + x - k)
   signalling at S > h, started at 0, for independent x ~ N(delta, 1);
   Brook and Evans' Markov chain with `states` states (0: 400). -1 on bad
   arguments (h <= 0, k < 0, states < 2 or > 4000). */
double detect_cusum_arl(double k, double h, double delta, uint32_t states);

/* The h that gives in-control (delta 0) run length `arl` with allowance
   k, by bisection on detect_cusum_arl; -1 when arl < 1 or too large
   (h would exceed 100). */
double detect_cusum_h(double k, double arl);

/* ---- what moved ---------------------------------------------------- */

typedef enum { DETECT_BY_VALUE = 0, DETECT_BY_RANK = 1 } detect_order_t;

typedef struct {
    uint32_t feature;           /* index */
    double ref, cur;            /* reference and window values */
    double delta;               /* cur - ref */
    uint32_t ref_rank;          /* 1 = largest value; ties to the lower index */
    uint32_t cur_rank;
    int32_t rank_up;            /* ref_rank - cur_rank: > 0 climbed */
} detect_moved_t;

/* Scratch for detect_what_moved, sized for `nfeat` features. Fields private. */
typedef struct {
    uint32_t cap;
    void *pairs;                /* cap sort records */
    uint32_t *rank_ref, *rank_cur;
} detect_work_t;

/* Returns 0, or -1 when out of memory (then destroy is still safe). */
int detect_work_init(detect_work_t *w, uint32_t nfeat);
void detect_work_destroy(detect_work_t *w);

/* The top min(k, nfeat) features by |delta| (DETECT_BY_VALUE; ties by
   |rank_up|, then lower index) or by |rank_up| (DETECT_BY_RANK; ties by
   |delta|, then lower index), into out[]. nfeat must not exceed the work
   area's size. Returns the number written. */
uint32_t detect_what_moved(detect_work_t *w, const double *cur, const double *ref, uint32_t nfeat,
                           uint32_t k, detect_order_t by, detect_moved_t *out);

/* ---- snapshots (snap.h) ------------------------------------------------

   detect_save writes {mode, calib_windows, calib_seen, ready, n, mean, m2,
   cusum}: the mode by name and the calibration length the state was
   measured for, then the calibration and the CUSUM sums (three values
   each, bit for bit). detect_load reads one into a detector that
   detect_init made with today's options: a state measured for another
   mode or calibration length is not resumed (the calibration restarts,
   as a reload would), otherwise it continues where it stopped. Returns
   0, or -1 with rd->why set. */
void detect_save(msgpack_packer *pk, const detect_t *d);
int detect_load(snap_rd_t *rd, detect_t *d);

/* A verdict and its what-moved list, for a window kept in a snapshot:
   {mode, calibrating, scored, z, cusum, alerts, moved: [[feature, ref,
   cur, ref_rank, cur_rank]]}; detect_verdict_load fills *v and up to
   `cap` moved entries (*nmoved), refusing a list longer than cap or a
   feature index >= nfeat. */
void detect_verdict_save(msgpack_packer *pk, const detect_verdict_t *v,
                         const detect_moved_t *moved, uint32_t nmoved);
int detect_verdict_load(snap_rd_t *rd, detect_verdict_t *v, detect_moved_t *moved,
                        uint32_t cap, uint32_t *nmoved, uint32_t nfeat);

#endif
