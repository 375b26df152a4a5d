/*  fuse: the fused form of one trade, computed from its full tensors.

    What a model side sends instead of every head (proto/ingest.md, "The
    fused form"), computed here for publishers that hold the full tensors
    on the host (libxplain's publisher, the tests, the benchmarks):

      M_l      = mean_h A_l                    [L][n][n]
      P_l      = mean_h max(0, G_l * A_l)      [L][n][n]  (with G)
      S_l      = mean_h G_l * A_l              [L][n][n]  (on request)
      imp[l,h] = |sum_ij A G|                  [L][H]     (with G)
      conf[l,h]= mean_i max_j A                [L][H]

    The head means are summed in head order in float32 and scaled by
    float32(1/H) at the end, the way the daemon's full-form pass does, so
    that explaining the fused form gives bit for bit what explaining the
    full one gives. The head statistics are summed in double (the
    importance from float32 products, as the daemon's). No BLAS, no
    sockets, no allocation.  */
#ifndef XPL_FUSE_H
#define XPL_FUSE_H

#include <stdint.h>

/* A, G: [L][H][n][n] float32 (G may be NULL). Outputs: M, conf always;
   P and imp when G is given (else untouched, may be NULL); S when
   non-NULL and G is given. */
void fuse_trade(uint32_t L, uint32_t H, uint32_t n, const float *A, const float *G, float *M,
                float *P, float *S, float *imp, float *conf);

#endif
