/*  fuse: full tensors to the fused form. See fuse.h.  */
#include "fuse.h"

#include <math.h>
#include <stddef.h>

/* A product must round as the daemon's pass rounds it (no fused
   multiply-add), or S and the sums would differ in the last bit. */
#pragma GCC optimize("fp-contract=off")

void
fuse_trade(uint32_t L, uint32_t H, uint32_t n, const float *A, const float *G, float *M,
           float *P, float *S, float *imp, float *conf)
{
    const size_t nn = (size_t)n * n;
    const float invH = 1.0f / (float)H;
    for (uint32_t l = 0; l < L; l++) {
        float *m = M + l * nn, *p = G ? P + l * nn : NULL, *s = G && S ? S + l * nn : NULL;
        for (uint32_t h = 0; h < H; h++) {
            const size_t off = ((size_t)l * H + h) * nn;
            const float *a = A + off, *g = G ? G + off : NULL;
            double cf = 0.0, dot = 0.0;
            for (uint32_t i = 0; i < n; i++) {
                const float *ar = a + (size_t)i * n;
                float mx = -INFINITY;
                for (uint32_t j = 0; j < n; j++)
                    mx = ar[j] > mx ? ar[j] : mx;
                cf += mx;
            }
            conf[(size_t)l * H + h] = (float)(cf / n);
            for (size_t k = 0; k < nn; k++)
                m[k] = h == 0 ? a[k] : m[k] + a[k];
            if (g) {
                for (size_t k = 0; k < nn; k++) {
                    float x = a[k] * g[k];
                    float c = x > 0.0f ? x : 0.0f;
                    dot += (double)a[k] * g[k];
                    p[k] = h == 0 ? c : p[k] + c;
                    if (s)
                        s[k] = h == 0 ? x : s[k] + x;
                }
                imp[(size_t)l * H + h] = (float)fabs(dot);
            }
        }
        for (size_t k = 0; k < nn; k++) {
            m[k] *= invH;
            if (p)
                p[k] *= invH;
            if (s)
                s[k] *= invH;
        }
    }
}
