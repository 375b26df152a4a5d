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

    The variants of MATH.md ("Variants asked for by users of the published
    tools"), served like the six above (they are off unless asked for, so
    the default configuration takes exactly the old path):

      colsum               sum_i F_h(A_0)[i][j] for every token j != cls
      grad_rollout_signed  grad_rollout with Ā_l = mean_h (G_l * A_l)
                           (no clamp: negative evidence kept)
      lrp_rollout          grad_rollout with Ā_l = mean_h max(0, G_l * Rel_l)
                           for a relevance tensor Rel shaped like G
      discard ratio ρ      per row, CLS column protected (rollout, and
                           flow's capacities on request)
      start layer s        rollout and the three gradient methods use
                           layers s..L-1 only; s < 0 counts from the end
      several targets      T gradients (and relevances) per trade; every
                           gradient method once per target
      feature groups       see groups.h (sums after the readout)

    F_h is the head fusion: mean (default), max or min over heads.

    Everything here is plain arrays in, plain arrays out: no sockets, no
    messages. The tensors are read exactly once, in one fused pass per
    layer (head fusion, gradient product, clamp, head statistics and the
    finiteness check together); the readouts then need only row-vector
    products (O(L n^2)), never the full n x n products, which are built on
    request by xm_rollout_matrix / xm_grad_rollout_matrix. The variants
    add passes of their own only when asked for: zero options take exactly
    the code path of the six served methods.  */
#ifndef XPL_XMATH_H
#define XPL_XMATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { XM_F32 = 0, XM_F16 = 1, XM_BF16 = 2 } xm_dtype_t;

typedef enum { XM_FUSE_MEAN = 0, XM_FUSE_MAX = 1, XM_FUSE_MIN = 2 } xm_fusion_t;

/* The six classic methods come first, then the variants; the daemon
   serves all of them and sizes its per-method state by XM_NMETHODS.
   XM_NMETHODS_CORE is the same count, kept for the core's callers. */
typedef enum {
    XM_ROLLOUT = 0,
    XM_GRAD_ROLLOUT = 1,
    XM_FIRST_LAYER = 2,
    XM_ATTN_MEAN = 3,
    XM_DIAG = 4,
    XM_FLOW = 5,
    XM_COLSUM = 6,
    XM_GRAD_ROLLOUT_SIGNED = 7,
    XM_LRP_ROLLOUT = 8,             /* needs the relevance tensor */
    XM_NMETHODS = 9,
    XM_NMETHODS_CORE = 9
} xm_method_t;

#define XM_BIT(m) (1u << (m))
/* The served methods (what the daemon may be asked for). */
#define XM_ALL_METHODS ((1u << XM_NMETHODS) - 1)
/* The six classic methods: options at zero and only these asked for take
   the single fused pass, no extra buffer. */
#define XM_CLASSIC_METHODS ((1u << 6) - 1)
/* Every method the core computes, variants included. */
#define XM_ALL_METHODS_CORE ((1u << XM_NMETHODS_CORE) - 1)
/* Methods that need the gradient tensor (one result per target). */
#define XM_GRAD_METHODS \
    (XM_BIT(XM_GRAD_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT_SIGNED) | XM_BIT(XM_LRP_ROLLOUT))

typedef struct {
    uint32_t L, H, n;
    int32_t cls;    /* 0..n-1, or -1 for no CLS token */
} xm_shape_t;

/* Options of one call. All-zero fields beyond `methods` are the plain
   methods of MATH.md, computed by exactly the code path of the served
   methods (no extra pass, no extra copy). */
typedef struct {
    unsigned methods;       /* XM_BIT() set of methods to compute */
    xm_fusion_t fusion;     /* head fusion for rollout, first_layer, colsum */
    bool grad_resnorm;      /* residual normalisation of the gradient methods */
    /* Discard ratio ρ in [0, 1] (0: none). In every layer, after head
       fusion and before I +, each row loses its k = (int)(ρ * m) smallest
       entries among the candidate columns (all but cls: m = n - 1; all
       when cls = -1: m = n), ties to the lower column index first; k is
       the IEEE double product truncated, as vit-explain's int(m * ρ).
       Applies to rollout; to flow's capacities only with discard_flow. */
    double discard;
    bool discard_flow;
    /* Start layer s: rollout multiplies Â_{L-1} ... Â_s, the gradient
       methods accumulate l = s .. L-1 from R = I. -L <= s <= L-1; s < 0
       means L + s (s = -1: the last layer only). 0: every layer. Not
       applied to first_layer, attn_mean, diag, colsum, flow. */
    int32_t start_layer;
} xm_opts_t;

/* Outcome of one trade. Vectors point into the work area and stay valid
   until its next xm_explain / xm_explain_ex / xm_work_reserve.

   With T targets every gradient method holds T vectors back to back:
   target t's vector at attr[m] + t * nfeat (target 0 first, so T = 1 is
   the single-target layout), and head_importance holds [T][L][H]. */
typedef struct {
    unsigned computed;                      /* methods actually computed */
    const float *attr[XM_NMETHODS_CORE];    /* nfeat values each (T * nfeat
                                               for gradient methods), or NULL */
    const float *head_importance;           /* [T][L][H], NULL without gradient */
    const float *head_confidence;           /* [L][H] */
    uint32_t ntargets;                      /* T, or 0 without gradient */
} xm_result_t;

/* The tensors of one trade for xm_explain_ex, each `dtype`,
   little-endian, any alignment.
     attn  [L][H][n][n]
     grad  [T][L][H][n][n] or NULL: the gradient of target t's output
           (of the scalar output for regression: T = 1, no class). Which
           class each t stands for is the caller's business.
     rel   [T][L][H][n][n] or NULL: the relevance of every attention
           probability for target t (lrp_rollout); needs grad. Read and
           checked for finiteness whenever given.
   T = ntargets (>= 1 when grad is given, ignored otherwise). */
typedef struct {
    const void *attn;
    const void *grad;
    const void *rel;
    uint32_t ntargets;
} xm_input_t;

typedef struct xm_work_t xm_work_t;

typedef enum {
    XM_OK = 0,
    XM_ENONFINITE = -1,     /* NaN or Inf in the attention or gradient */
    XM_ENOMEM = -2,
    XM_EARG = -3,           /* shape or dtype out of range */
    XM_EHEADS = -4          /* the options need individual heads, which the
                               fused form does not carry (max/min fusion) */
} xm_err_t;

/* The fused form of one trade (proto/ingest.md, "The fused form"): the
   head means the served methods need, computed on the model's side.
     mean        [L][n][n]     M_l = mean_h A_l                    (dtype)
     pos         [T][L][n][n]  P_l = mean_h max(0, G[t]_l A_l), or NULL
     sign        [T][L][n][n]  S_l = mean_h G[t]_l A_l, or NULL (needs pos)
     importance  [T][L][H]     |sum_ij A G[t]|, float32 LE; with pos
     confidence  [L][H]        mean_i max_j A, float32 LE
   Any alignment. T = ntargets (>= 1 with pos, ignored without). */
typedef struct {
    const void *mean;
    const void *pos;
    const void *sign;
    const void *importance;
    const void *confidence;
    uint32_t ntargets;
} xm_fused_t;

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

/* Canonical method name ("rollout", ..., "lrp_rollout"), or NULL when
   out of range. */
const char *xm_method_name(xm_method_t m);

/* True for the methods the daemon serves (all XM_NMETHODS). */
bool xm_method_served(xm_method_t m);

/* Served method index for a name of `len` bytes, or -1 when unknown. */
int xm_method_parse(const char *name, size_t len);

/* Same as xm_method_parse (kept for the core's callers). */
int xm_method_parse_core(const char *name, size_t len);

/* Parse a comma-separated list of served methods into a bit set; returns
   -1 and points *bad at the first name that is unknown. */
int xm_methods_parse(const char *list, unsigned *out, const char **bad);

/* Resolve a start layer against L: 0 <= *out < L, or -1 when s is out of
   range (s >= L or s < -L). */
int xm_start_layer(int32_t s, uint32_t L, uint32_t *out);

/* Head-fusion name to enum; -1 when unknown. */
int xm_fusion_parse(const char *name);

/* Create an empty work area (caller owns; grows on demand, never per
   trade once warm). */
xm_work_t *xm_work_new(void);

/* Free a work area and set *self_p to NULL; NULL-safe. */
void xm_work_destroy(xm_work_t **self_p);

/* Explain one trade. `attn` (and `grad`, or NULL) hold L*H*n*n values of
   `dtype`, little-endian, any alignment. `opts->methods` says which
   methods to run; gradient methods are skipped when grad is NULL, flow
   runs only when asked. Returns XM_OK, XM_ENONFINITE (nothing usable in
   *out), XM_ENOMEM or XM_EARG. Same as xm_explain_ex with one target and
   no relevance. */
xm_err_t xm_explain(xm_work_t *w, const xm_opts_t *opts, const xm_shape_t *shape,
                    xm_dtype_t dtype, const void *attn, const void *grad,
                    xm_result_t *out);

/* Explain one trade with T targets and an optional relevance tensor (see
   xm_input_t). lrp_rollout is skipped without rel, every gradient method
   without grad. XM_EARG also for: discard outside [0, 1] or NaN, start
   layer out of range, grad with ntargets = 0, rel without grad, sizes
   that overflow. Target 0 goes through the fused pass with A; each
   further target, and each relevance, costs one more pass reading A (or
   Rel) and its gradient. */
xm_err_t xm_explain_ex(xm_work_t *w, const xm_opts_t *opts, const xm_shape_t *shape,
                       xm_dtype_t dtype, const xm_input_t *in, xm_result_t *out);

/* Explain one trade from its fused form. Every method and option that
   needs only head means gives what xm_explain_ex gives for the full
   tensors the fused form was computed from (for mean values that the
   model side summed over heads in head order and scaled by 1/H in
   float32, as the full pass does, bit for bit; grad_rollout_signed is
   explained exactly from the S it is given, which the full form keeps in
   double): rollout, grad_rollout,
   first_layer, attn_mean, diag, flow, colsum, grad_rollout_signed (when
   `sign` is given, else skipped), discard ratio, start layer, residual
   normalisation, several targets; head statistics are taken as given.
   lrp_rollout is skipped (it needs the relevance of every head). Max or
   min fusion needs every head: XM_EHEADS, nothing computed. XM_EARG also
   for a missing mean or confidence, pos without importance or with
   ntargets = 0, sign without pos. XM_ENONFINITE for a NaN or Inf in any
   input. The layer accessors below work as after xm_explain. */
xm_err_t xm_explain_fused(xm_work_t *w, const xm_opts_t *opts, const xm_shape_t *shape,
                          xm_dtype_t dtype, const xm_fused_t *in, xm_result_t *out);

/* The per-layer matrices of the last xm_explain, [L][n][n] each, owned by
   the work area: Â_l for rollout (configured fusion), Â_l with mean
   fusion (flow's capacities; the same pointer when fusion is mean), and
   Ā_l for grad_rollout (NULL when no gradient was given). */
const float *xm_work_rollout_layers(const xm_work_t *w);
const float *xm_work_flow_layers(const xm_work_t *w);
const float *xm_work_grad_layers(const xm_work_t *w);

/* The per-layer matrices [L][n][n] (all L layers, the start layer not
   applied) behind method m in the last call: Â_l for rollout (discard
   applied) and flow, Ā_l of target t for the three gradient methods;
   NULL when m has none or was not computed. For the full matrices with a
   start layer s, pass L - s and layers + s*n*n to the functions below. */
const float *xm_work_layers(const xm_work_t *w, xm_method_t m, uint32_t t);

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
