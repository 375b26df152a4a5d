/*  support: deterministic random tensors for tests (and benchmarks).  */
#ifndef XPL_TEST_SUPPORT_H
#define XPL_TEST_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s;
} rng_t;

void rng_seed(rng_t *r, uint64_t seed);
uint64_t rng_next(rng_t *r);
double rng_uniform(rng_t *r);            /* [0, 1) */
double rng_normal(rng_t *r);

/* Fill `count` rows of `n` post-softmax attention (rows sum to 1).
   `temp` scales the logits: large values give peaked rows. */
void gen_attention(rng_t *r, double *A, size_t rows, int n, double temp);

/* Fill `count` gradient values, normal with the given scale. */
void gen_gradient(rng_t *r, double *G, size_t count, double scale);

/* Encode doubles into the wire dtype (0 f32, 1 f16, 2 bf16) and read the
   exact values that dtype holds back into `exact` (may alias `src`). */
void encode_dtype(int dtype, const double *src, size_t count, void *dst, double *exact);

/* Relative comparison used across tests: |got - want| <= rel * |want| + abs. */
int close_enough(double got, double want, double rel, double abs);

#endif
