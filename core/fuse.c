/*  fuse: full tensors to the fused form. See fuse.h.  */
#include "fuse.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* A product must round as the daemon's pass rounds it (no fused
   multiply-add), or S and the sums would differ in the last bit. */
#pragma GCC optimize("fp-contract=off")

/* One head's row maxima, summed in double: n * mean_i max_j a. */
static double
s_rowmax_sum(const float *a, uint32_t n)
{
    double cf = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        const float *r = a + (size_t)i * n;
        float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        uint32_t j = 0;
        for (; j + 4 <= n; j += 4)
            for (int q = 0; q < 4; q++)
                mx[q] = r[j + q] > mx[q] ? r[j + q] : mx[q];
        for (; j < n; j++)
            mx[0] = r[j] > mx[0] ? r[j] : mx[0];
        float m01 = mx[0] > mx[1] ? mx[0] : mx[1], m23 = mx[2] > mx[3] ? mx[2] : mx[3];
        cf += m01 > m23 ? m01 : m23;
    }
    return cf;
}

void
fuse_trade(uint32_t L, uint32_t H, uint32_t n, const float *A, const float *G, float *M,
           float *P, float *S, float *imp, float *conf)
{
    const size_t nn = (size_t)n * n;
    const float invH = 1.0f / (float)H;
    for (uint32_t l = 0; l < L; l++) {
        float *restrict m = M + l * nn;
        float *restrict p = G ? P + l * nn : NULL;
        float *restrict s = G && S ? S + l * nn : NULL;
        for (uint32_t h = 0; h < H; h++) {
            const size_t off = ((size_t)l * H + h) * nn;
            const float *restrict a = A + off;
            conf[(size_t)l * H + h] = (float)(s_rowmax_sum(a, n) / n);
            /* Head order, in float32: the daemon's summation. */
            if (h == 0)
                memcpy(m, a, nn * sizeof *m);
            else
                for (size_t k = 0; k < nn; k++)
                    m[k] += a[k];
            if (!G)
                continue;
            const float *restrict g = G + off;
            double d[8] = {0};
            size_t k = 0;
            for (; k + 8 <= nn; k += 8)
                for (int q = 0; q < 8; q++)
                    d[q] += (double)(a[k + q] * g[k + q]);
            for (; k < nn; k++)
                d[0] += (double)(a[k] * g[k]);
            imp[(size_t)l * H + h] =
                (float)fabs(((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7])));
            if (h == 0) {
                for (size_t e = 0; e < nn; e++) {
                    float x = a[e] * g[e];
                    p[e] = x > 0.0f ? x : 0.0f;
                }
                if (s)
                    for (size_t e = 0; e < nn; e++)
                        s[e] = a[e] * g[e];
            } else {
                for (size_t e = 0; e < nn; e++) {
                    float x = a[e] * g[e];
                    p[e] += x > 0.0f ? x : 0.0f;
                }
                if (s)
                    for (size_t e = 0; e < nn; e++)
                        s[e] += a[e] * g[e];
            }
        }
        for (size_t k = 0; k < nn; k++)
            m[k] *= invH;
        if (p)
            for (size_t k = 0; k < nn; k++)
                p[k] *= invH;
        if (s)
            for (size_t k = 0; k < nn; k++)
                s[k] *= invH;
    }
}
