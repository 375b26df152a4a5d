/*  ref: an independent float64 reference of MATH.md for the tests.

    Written from the definitions with full n x n matrices and naive triple
    loops, sharing no code and no shortcut (row-vector readouts, fused
    passes, BLAS) with the library under test.  */
#ifndef XPL_TEST_REF_H
#define XPL_TEST_REF_H

#include <stdbool.h>
#include <stddef.h>

enum { REF_MEAN, REF_MAX, REF_MIN };

/* A: [L][H][n][n] doubles; out: readout vector (n-1 or n values). */
void ref_rollout(int L, int H, int n, int cls, const double *A, int fusion, double *out);
void ref_rollout_matrix(int L, int H, int n, const double *A, int fusion, double *R);
void ref_grad_rollout(int L, int H, int n, int cls, const double *A, const double *G,
                      bool resnorm, double *out);
void ref_grad_rollout_matrix(int L, int H, int n, const double *A, const double *G,
                             bool resnorm, double *R);
void ref_first_layer(int L, int H, int n, int cls, const double *A, int fusion, double *out);
void ref_attn_mean(int L, int H, int n, int cls, const double *A, double *out);
void ref_diag(int L, int H, int n, int cls, const double *A, double *out);
void ref_head_stats(int L, int H, int n, const double *A, const double *G, double *imp,
                    double *conf);
void ref_readout(int n, int cls, const double *M, double *out);

/* Variants (MATH.md, "Variants asked for by users of the published
   tools"). `start` is the start layer as given (negative: from the end);
   `rho` the discard ratio. */
void ref_colsum(int L, int H, int n, int cls, const double *A, int fusion, double *out);
/* In place on an n x n fused matrix: per row, zero the (int)(rho * m)
   smallest candidates (columns != cls), ties to the lower column. */
void ref_discard(int n, int cls, double rho, double *F);
void ref_rollout_v(int L, int H, int n, int cls, const double *A, int fusion, double rho,
                   int start, double *out);
void ref_rollout_matrix_v(int L, int H, int n, int cls, const double *A, int fusion, double rho,
                          int start, double *R);
/* Flow's capacities Â_l (mean fusion), with the discard when rho > 0. */
void ref_flow_capacities_v(int L, int H, int n, int cls, const double *A, double rho, double *C);
/* The gradient family: Ā_l = mean_h c(G X) with c = max(0, .) when
   `clamp`, identity otherwise; X = A (grad_rollout, grad_rollout_signed)
   or Rel (lrp_rollout). */
void ref_grad_rollout_v(int L, int H, int n, int cls, const double *X, const double *G, bool clamp,
                        bool resnorm, int start, double *out);
void ref_grad_rollout_matrix_v(int L, int H, int n, const double *X, const double *G, bool clamp,
                               bool resnorm, int start, double *R);
/* Feature f = sum of the readout positions k with feat_of[k] == f. */
void ref_groups(int npos, const int *feat_of, int nfeat, const double *in, double *out);

/* Spearman's rho with average ranks; returns false when undefined. */
bool ref_spearman(const double *a, const double *b, int n, double *rho);
/* nDCG@k of `cur` against reference `ref`; false when IDCG = 0. */
bool ref_ndcg(const double *cur, const double *ref, int n, int k, double *out);
/* Jensen-Shannon divergence, base 2. */
/* First row of A[L][H][n][n] that is not a probability distribution
   within tol (values >= -tol, sum within tol of 1, or of 0 for a masked
   row); -1 when none. */
long ref_attn_first_bad_row(int L, int H, int n, const double *A, double tol);
double ref_js(const double *a, const double *b, int n);

#endif
