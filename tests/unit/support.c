/*  support: deterministic random tensors for tests. See support.h.  */
#include "support.h"

#include "half.h"

#include <math.h>
#include <string.h>

void
rng_seed(rng_t *r, uint64_t seed)
{
    r->s = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
}

uint64_t
rng_next(rng_t *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double
rng_uniform(rng_t *r)
{
    return (double)(rng_next(r) >> 11) * 0x1p-53;
}

double
rng_normal(rng_t *r)
{
    double u = rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

void
gen_attention(rng_t *r, double *A, size_t rows, int n, double temp)
{
    for (size_t q = 0; q < rows; q++) {
        double *row = A + q * (size_t)n, mx = -INFINITY, s = 0;
        for (int j = 0; j < n; j++) {
            row[j] = temp * rng_normal(r);
            mx = row[j] > mx ? row[j] : mx;
        }
        for (int j = 0; j < n; j++)
            s += (row[j] = exp(row[j] - mx));
        for (int j = 0; j < n; j++)
            row[j] /= s;
    }
}

void
gen_gradient(rng_t *r, double *G, size_t count, double scale)
{
    for (size_t k = 0; k < count; k++)
        G[k] = scale * rng_normal(r);
}

void
encode_dtype(int dtype, const double *src, size_t count, void *dst, double *exact)
{
    uint8_t *d = dst;
    for (size_t k = 0; k < count; k++) {
        float f = (float)src[k];
        if (dtype == 0) {
            memcpy(d + 4 * k, &f, 4);
            exact[k] = f;
        } else {
            uint16_t h = dtype == 1 ? half_f32_to_f16(f) : half_f32_to_bf16(f);
            memcpy(d + 2 * k, &h, 2);
            exact[k] = dtype == 1 ? half_f16_to_f32(h) : half_bf16_to_f32(h);
        }
    }
}

int
close_enough(double got, double want, double rel, double abs)
{
    return fabs(got - want) <= rel * fabs(want) + abs;
}
