/*  xmath: the per-trade attribution methods of MATH.md.

    One trade is `L` layers of `H` heads of `n x n` post-softmax attention
    A[l][h][i][j] (query i, key j), optionally with the gradient
    G[l][h][i][j] = dy_t/dA of the same shape, and a CLS token index `cls`
    (-1 for none). Every method returns one float per feature: the readout
    r(M) of an n x n matrix M is row `cls` without column `cls` (n-1 values)
    or, without CLS, the column mean over all query rows (n values).

      rollout       rownorm(I + F_h(A_l)) multiplied through the layers,
                    later layers on the left: R = Â_{L-1} ... Â_0; r(R)
      grad_rollout  Ā_l = mean_h max(0, G_l * A_l); R_0 = I,
                    R <- R + Ā_l R for l = 0..L-1; r(R), optionally with
                    the residual normalisation rownorm(R - I) + I
      first_layer   r(F_h(A_0))
      attn_mean     r(mean_{l,h} A_l,h)
      diag          mean_h A_0[h][j][j] for every token j != cls
      flow          max-flow from the top CLS node to each input token in
                    the layered graph of Â_l (mean fusion); see flow.h

    F_h is the head fusion: mean (default), max or min over heads.

    Everything here is plain arrays in, plain arrays out: no sockets, no
    messages. The tensors are read exactly once, in one fused pass per
    layer (head fusion, gradient product, clamp, head statistics and the
    finiteness check together); the readouts then need only row-vector
    products (O(L n^2)), never the full n x n products, which are built on
    request by xm_rollout_matrix / xm_grad_rollout_matrix.  */
#ifndef XPL_XMATH_H
#define XPL_XMATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { XM_F32 = 0, XM_F16 = 1, XM_BF16 = 2 } xm_dtype_t;

typedef enum { XM_FUSE_MEAN = 0, XM_FUSE_MAX = 1, XM_FUSE_MIN = 2 } xm_fusion_t;

typedef enum {
    XM_ROLLOUT = 0,
    XM_GRAD_ROLLOUT = 1,
    XM_FIRST_LAYER = 2,
    XM_ATTN_MEAN = 3,
    XM_DIAG = 4,
    XM_FLOW = 5,
    XM_NMETHODS = 6
} xm_method_t;

#define XM_BIT(m) (1u << (m))
#define XM_ALL_METHODS ((1u << XM_NMETHODS) - 1)
/* Methods that need the gradient tensor. */
#define XM_GRAD_METHODS XM_BIT(XM_GRAD_ROLLOUT)

typedef struct {
    uint32_t L, H, n;
    int32_t cls;    /* 0..n-1, or -1 for no CLS token */
} xm_shape_t;

typedef struct {
    unsigned methods;       /* XM_BIT() set of methods to compute */
    xm_fusion_t fusion;     /* head fusion for rollout and first_layer */
    bool grad_resnorm;      /* grad_rollout residual normalisation */
} xm_opts_t;

/* Outcome of one trade. Vectors point into the work area and stay valid
   until its next xm_explain / xm_work_reserve. */
typedef struct {
    unsigned computed;                  /* methods actually computed */
    const float *attr[XM_NMETHODS];     /* nfeat values each, or NULL */
    const float *head_importance;       /* [L][H], NULL without gradient */
    const float *head_confidence;       /* [L][H] */
} xm_result_t;

typedef struct xm_work_t xm_work_t;

typedef enum {
    XM_OK = 0,
    XM_ENONFINITE = -1,     /* NaN or Inf in the attention or gradient */
    XM_ENOMEM = -2,
    XM_EARG = -3            /* shape or dtype out of range */
} xm_err_t;

/* Number of features a shape explains: n - 1 with CLS, n without. */
static inline uint32_t
xm_nfeat(const xm_shape_t *s)
{
    return s->n - (s->cls >= 0 ? 1u : 0u);
}

/* Bytes per tensor element of a dtype. */
static inline size_t
xm_dtype_size(xm_dtype_t d)
{
    return d == XM_F32 ? 4 : 2;
}

/* Canonical method name ("rollout", ...), or NULL when out of range. */
const char *xm_method_name(xm_method_t m);

/* Method index for a name of `len` bytes, or -1 when unknown. */
int xm_method_parse(const char *name, size_t len);

/* Parse a comma-separated method list into a bit set; returns -1 and
   points *bad at the first unknown name on error. */
int xm_methods_parse(const char *list, unsigned *out, const char **bad);

/* Head-fusion name to enum; -1 when unknown. */
int xm_fusion_parse(const char *name);
const char *xm_fusion_name(xm_fusion_t f);

/* Create an empty work area (caller owns; grows on demand, never per
   trade once warm). */
xm_work_t *xm_work_new(void);

/* Free a work area and set *self_p to NULL; NULL-safe. */
void xm_work_destroy(xm_work_t **self_p);

/* Explain one trade. `attn` (and `grad`, or NULL) hold L*H*n*n values of
   `dtype`, little-endian, any alignment. `opts->methods` says which
   methods to run; gradient methods are skipped when grad is NULL, flow
   runs only when asked. Returns XM_OK, XM_ENONFINITE (nothing usable in
   *out), XM_ENOMEM or XM_EARG. */
xm_err_t xm_explain(xm_work_t *w, const xm_opts_t *opts, const xm_shape_t *shape,
                    xm_dtype_t dtype, const void *attn, const void *grad,
                    xm_result_t *out);

/* The per-layer matrices of the last xm_explain, [L][n][n] each, owned by
   the work area: Â_l for rollout (configured fusion), Â_l with mean
   fusion (flow's capacities; the same pointer when fusion is mean), and
   Ā_l for grad_rollout (NULL when no gradient was given). */
const float *xm_work_rollout_layers(const xm_work_t *w);
const float *xm_work_flow_layers(const xm_work_t *w);
const float *xm_work_grad_layers(const xm_work_t *w);

/* Full n x n rollout matrix R = Â_{L-1} ... Â_0 from per-layer Â.
   `tmp` needs n*n floats. Writes R to `out` (n*n). */
void xm_rollout_matrix(uint32_t L, uint32_t n, const float *layers, float *out, float *tmp);

/* Full n x n grad_rollout matrix from per-layer Ā (R_0 = I,
   R <- R + Ā_l R), with the residual normalisation when `resnorm`. */
void xm_grad_rollout_matrix(uint32_t L, uint32_t n, const float *layers, bool resnorm,
                            float *out, float *tmp);

/* Readout r(M) of an n x n matrix into `out` (xm_nfeat values). */
void xm_readout(const xm_shape_t *s, const float *M, float *out);

/* Make OpenBLAS single-threaded: parallelism is the caller's to decide. */
void xm_blas_single_thread(void);

#endif
