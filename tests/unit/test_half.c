/*  Tests of core/half: every binary16 and bfloat16 bit pattern decodes to
    the value its sign, exponent and mantissa define (computed here with
    ldexp, not with bit tricks), through the scalar function and through
    the vectorised bulk decoder at every length and source alignment; the
    encoders round to nearest, ties to even, and overflow to infinity.  */
#include "half.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

/* Value of a binary16 pattern: (-1)^s * 2^(e-15) * 1.m, subnormal
   2^-14 * 0.m, e = 31 infinity or NaN. */
static double
ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp((double)(1024 + m), e - 25);
    return s ? -v : v;
}

/* Value of a bfloat16 pattern: 8-bit exponent (bias 127), 7-bit mantissa. */
static double
ref_bf16(uint16_t h)
{
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -133);
    else
        v = ldexp((double)(128 + m), e - 134);
    return s ? -v : v;
}

static uint32_t
fbits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* Is `got` exactly what pattern h (of kind bf ? bf16 : f16) means? For a
   NaN: a NaN of the same sign whose payload keeps the pattern's mantissa
   bits (the quiet bit may be set on the way: F16C quiets signalling NaNs). */
static void
expect_decoded(uint16_t h, bool bf, float got, const char *path)
{
    double want = bf ? ref_bf16(h) : ref_f16(h);
    if (isnan(want)) {
        cr_assert(isnan(got), "%s: %s 0x%04x (NaN) decoded as %a", path, bf ? "bf16" : "f16", h,
                  (double)got);
        cr_assert_eq(!!signbit(got), h >> 15, "%s: NaN 0x%04x lost its sign", path, h);
        uint32_t payload = bf ? (h & 0x3fu) : (h & 0x1ffu);
        uint32_t gotp = bf ? (fbits(got) >> 16) & 0x3fu : (fbits(got) >> 13) & 0x1ffu;
        cr_assert_eq(gotp, payload, "%s: NaN 0x%04x payload 0x%x became 0x%x", path, h, payload,
                     gotp);
        return;
    }
    float wf = (float)want;
    cr_assert((double)wf == want, "reference value of 0x%04x is not a float", h);
    cr_assert_eq(fbits(got), fbits(wf), "%s: %s 0x%04x decoded as %a (bits %08x), want %a (%08x)",
                 path, bf ? "bf16" : "f16", h, (double)got, fbits(got), want, fbits(wf));
}

Test(half, f16_scalar_all_patterns)
{
    for (uint32_t h = 0; h <= 0xffff; h++)
        expect_decoded((uint16_t)h, false, half_f16_to_f32((uint16_t)h), "half_f16_to_f32");
}

Test(half, bf16_scalar_all_patterns)
{
    for (uint32_t h = 0; h <= 0xffff; h++) {
        expect_decoded((uint16_t)h, true, half_bf16_to_f32((uint16_t)h), "half_bf16_to_f32");
        /* bf16 is the top half of a float32: no rounding, no quieting. */
        cr_assert_eq(fbits(half_bf16_to_f32((uint16_t)h)), h << 16);
    }
}

/* All 65536 patterns, little-endian, starting `off` bytes into a buffer. */
static uint8_t *
all_patterns(size_t off)
{
    uint8_t *b = malloc(off + 2 * 65536);
    for (uint32_t h = 0; h <= 0xffff; h++) {
        b[off + 2 * h] = (uint8_t)h;
        b[off + 2 * h + 1] = (uint8_t)(h >> 8);
    }
    return b;
}

Test(half, bulk_decode_all_patterns_aligned_and_not)
{
    float *dst = malloc(65536 * sizeof(float));
    for (size_t off = 0; off < 4; off++) {
        uint8_t *src = all_patterns(off);
        half_f16_decode(dst, src + off, 65536);
        for (uint32_t h = 0; h <= 0xffff; h++)
            expect_decoded((uint16_t)h, false, dst[h], "half_f16_decode");
        half_bf16_decode(dst, src + off, 65536);
        for (uint32_t h = 0; h <= 0xffff; h++)
            expect_decoded((uint16_t)h, true, dst[h], "half_bf16_decode");
        free(src);
    }
    free(dst);
}

Test(half, bulk_decode_every_length_and_offset)
{
    /* Lengths 0..40 cover empty, tail-only (< 8), whole vectors and
       vectors plus tails; source offsets 0..3 bytes make the 16-bit loads
       unaligned; a guard after dst catches writes past n. The patterns
       are drawn from every class (normal, subnormal, zero, inf, NaN). */
    rng_t r;
    rng_seed(&r, 16);
    const float guard = -12345.5f;
    for (int bf = 0; bf < 2; bf++) {
        for (size_t n = 0; n <= 40; n++) {
            for (size_t off = 0; off < 4; off++) {
                for (int rep = 0; rep < 8; rep++) {
                    uint16_t pat[40];
                    uint8_t *src = malloc(off + 2 * n + 1);
                    for (size_t k = 0; k < n; k++) {
                        pat[k] = (uint16_t)rng_next(&r);
                        if (rep == 1)
                            pat[k] = (uint16_t)(pat[k] & 0x83ff);          /* f16 subnormals */
                        if (rep == 2)
                            pat[k] = (uint16_t)(pat[k] | 0x7c00);          /* f16 inf / NaN */
                        if (rep == 3)
                            pat[k] = (uint16_t)(pat[k] | 0x7f80);          /* bf16 inf / NaN */
                        if (rep == 4)
                            pat[k] = (uint16_t)(pat[k] & 0x807f);          /* bf16 subnormals */
                        src[off + 2 * k] = (uint8_t)pat[k];
                        src[off + 2 * k + 1] = (uint8_t)(pat[k] >> 8);
                    }
                    float *dst = malloc((n + 2) * sizeof(float));
                    dst[n] = dst[n + 1] = guard;
                    if (bf)
                        half_bf16_decode(dst, src + off, n);
                    else
                        half_f16_decode(dst, src + off, n);
                    for (size_t k = 0; k < n; k++)
                        expect_decoded(pat[k], bf, dst[k], bf ? "half_bf16_decode" : "half_f16_decode");
                    cr_assert(dst[n] == guard && dst[n + 1] == guard,
                              "%s wrote past n=%zu", bf ? "bf16" : "f16", n);
                    free(dst);
                    free(src);
                }
            }
        }
    }
}

Test(half, bulk_and_scalar_agree_bit_for_bit_except_nan_quieting)
{
    /* The vectorised path (blocks of 8) and the scalar path (tail) must
       give the same value for the same pattern; only a signalling NaN may
       come out quieted by one and not the other. */
    uint8_t *src = all_patterns(1);
    float *dst = malloc(65536 * sizeof(float));
    half_f16_decode(dst, src + 1, 65536);
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float s = half_f16_to_f32((uint16_t)h);
        if (isnan(s))
            cr_assert_eq(fbits(dst[h]) | 0x400000u, fbits(s) | 0x400000u, "NaN 0x%04x", h);
        else
            cr_assert_eq(fbits(dst[h]), fbits(s), "0x%04x: bulk %08x scalar %08x", h,
                         fbits(dst[h]), fbits(s));
    }
    free(dst);
    free(src);
}

/* ---- encoding ------------------------------------------------------- */

/* Nearest pattern to x, ties to the even mantissa, from the table of
   finite values (positive patterns are ordered like their values). The
   value past the largest finite one is the overflow threshold's other
   end: 2^16 for f16, 2^128 for bf16, both encoded as infinity. */
static uint16_t
ref_round(double x, bool bf)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    uint16_t maxfin = bf ? 0x7f7f : 0x7bff, inf = bf ? 0x7f80 : 0x7c00;
    double top = bf ? ldexp(1.0, 128) : 65536.0;
    if (isinf(a))
        return sign | inf;
    /* Largest finite pattern whose value is <= a. */
    uint32_t lo = 0, hi = maxfin;
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        double v = bf ? ref_bf16((uint16_t)mid) : ref_f16((uint16_t)mid);
        if (v <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    double vlo = bf ? ref_bf16((uint16_t)lo) : ref_f16((uint16_t)lo);
    if (vlo == a)
        return (uint16_t)(sign | lo);
    double vhi = lo == maxfin ? top : (bf ? ref_bf16((uint16_t)(lo + 1)) : ref_f16((uint16_t)(lo + 1)));
    uint16_t up = lo == maxfin ? inf : (uint16_t)(lo + 1);
    double dlo = a - vlo, dhi = vhi - a;
    if (dlo < dhi)
        return (uint16_t)(sign | lo);
    if (dhi < dlo)
        return (uint16_t)(sign | up);
    return (uint16_t)(sign | ((lo & 1) ? up : lo));
}

static uint16_t
enc(float f, bool bf)
{
    return bf ? half_f32_to_bf16(f) : half_f32_to_f16(f);
}

Test(half, encode_round_trips_every_pattern)
{
    for (int bf = 0; bf < 2; bf++) {
        for (uint32_t h = 0; h <= 0xffff; h++) {
            float f = bf ? half_bf16_to_f32((uint16_t)h) : half_f16_to_f32((uint16_t)h);
            uint16_t back = enc(f, bf);
            if (isnan(f)) {
                double v = bf ? ref_bf16(back) : ref_f16(back);
                cr_assert(isnan(v) && (back >> 15) == (h >> 15), "%s NaN 0x%04x encoded as 0x%04x",
                          bf ? "bf16" : "f16", h, back);
            } else {
                cr_assert_eq(back, h, "%s 0x%04x -> %a -> 0x%04x", bf ? "bf16" : "f16", h,
                             (double)f, back);
            }
        }
    }
}

Test(half, encode_ties_to_even_between_every_neighbour_pair)
{
    /* Between every pair of neighbouring finite values (and between the
       largest finite and the overflow threshold) the midpoint rounds to
       the pattern with an even mantissa, and one float ulp either side
       rounds to the nearer one. The midpoints are exact float32s. */
    for (int bf = 0; bf < 2; bf++) {
        uint16_t maxfin = bf ? 0x7f7f : 0x7bff;
        for (uint32_t h = 0; h <= maxfin; h++) {
            double lo = bf ? ref_bf16((uint16_t)h) : ref_f16((uint16_t)h);
            double hi = h == maxfin ? (bf ? ldexp(1.0, 128) : 65536.0)
                                    : (bf ? ref_bf16((uint16_t)(h + 1)) : ref_f16((uint16_t)(h + 1)));
            double mid = (lo + hi) / 2;
            float fm = (float)mid;
            cr_assert((double)fm == mid);
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            for (int s = 0; s < 2; s++) {
                float x = s ? -fm : fm;
                uint16_t sign = s ? 0x8000 : 0;
                cr_assert_eq(enc(x, bf), sign | even, "%s tie %a between 0x%04x and next: got 0x%04x",
                             bf ? "bf16" : "f16", (double)x, h, enc(x, bf));
                float below = nextafterf(x, 0.0f), above = nextafterf(x, s ? -INFINITY : INFINITY);
                cr_assert_eq(enc(below, bf), sign | h, "%s just below the tie %a", bf ? "bf16" : "f16",
                             (double)x);
                cr_assert_eq(enc(above, bf), sign | (h + 1), "%s just above the tie %a",
                             bf ? "bf16" : "f16", (double)x);
            }
        }
    }
}

Test(half, encode_random_floats_against_reference)
{
    rng_t r;
    rng_seed(&r, 4242);
    for (int k = 0; k < 400000; k++) {
        /* Exponents from far below the subnormals to far above the range. */
        uint32_t bits = (uint32_t)rng_next(&r);
        int e = (int)(rng_next(&r) % 80) - 40;
        float f = ldexpf(1.0f + (float)(bits & 0x7fffff) * 0x1p-23f, e);
        if (bits >> 31)
            f = -f;
        cr_assert_eq(half_f32_to_f16(f), ref_round(f, false), "f16 of %a: 0x%04x want 0x%04x",
                     (double)f, half_f32_to_f16(f), ref_round(f, false));
        /* bf16 over its own (float32) range, subnormals included. */
        float g;
        uint32_t gb = (uint32_t)rng_next(&r);
        memcpy(&g, &gb, 4);
        if (isnan(g))
            continue;
        cr_assert_eq(half_f32_to_bf16(g), ref_round(g, true), "bf16 of %a: 0x%04x want 0x%04x",
                     (double)g, half_f32_to_bf16(g), ref_round(g, true));
    }
}

Test(half, encode_specials)
{
    cr_assert_eq(half_f32_to_f16(INFINITY), 0x7c00);
    cr_assert_eq(half_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(half_f32_to_f16(0.0f), 0x0000);
    cr_assert_eq(half_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(half_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(half_f32_to_f16(65519.99f), 0x7bff);
    cr_assert_eq(half_f32_to_f16(65520.0f), 0x7c00, "65520 is the tie to infinity (even)");
    cr_assert_eq(half_f32_to_f16(1e10f), 0x7c00);
    cr_assert_eq(half_f32_to_f16(-1e10f), 0xfc00);
    cr_assert_eq(half_f32_to_f16(0x1p-24f), 0x0001, "smallest subnormal");
    cr_assert_eq(half_f32_to_f16(0x1p-25f), 0x0000, "half of it ties to zero");
    cr_assert_eq(half_f32_to_f16(0x1.8p-25f), 0x0001);
    cr_assert_eq(half_f32_to_f16(0x1p-14f), 0x0400, "smallest normal");
    cr_assert_eq(half_f32_to_f16(nextafterf(0x1p-14f, 0.0f)), 0x0400, "rounds up into the normals");
    cr_assert_eq(half_f32_to_f16(1e-30f), 0x0000);
    cr_assert_eq(half_f32_to_bf16(INFINITY), 0x7f80);
    cr_assert_eq(half_f32_to_bf16(-INFINITY), 0xff80);
    cr_assert_eq(half_f32_to_bf16(FLT_MAX), 0x7f80, "FLT_MAX rounds up to bf16 infinity");
    cr_assert_eq(half_f32_to_bf16(-0.0f), 0x8000);
    const uint32_t nans[] = {0x7f800001u, 0x7fc00000u, 0xffc00000u, 0x7fbfffffu, 0xff800001u};
    for (size_t k = 0; k < sizeof nans / sizeof *nans; k++) {
        float f;
        memcpy(&f, &nans[k], 4);
        uint16_t h = half_f32_to_f16(f), b = half_f32_to_bf16(f);
        cr_assert(isnan(ref_f16(h)) && (h >> 15) == (nans[k] >> 31), "f16 of NaN %08x: 0x%04x",
                  nans[k], h);
        cr_assert(isnan(ref_bf16(b)) && (b >> 15) == (nans[k] >> 31), "bf16 of NaN %08x: 0x%04x",
                  nans[k], b);
    }
}

Test(half, bulk_encode_little_endian_unaligned)
{
    rng_t r;
    rng_seed(&r, 99);
    for (size_t n = 0; n <= 40; n++) {
        for (size_t off = 0; off < 3; off++) {
            float src[40];
            for (size_t k = 0; k < n; k++)
                src[k] = (float)(rng_normal(&r) * 1000.0);
            uint8_t *dst = malloc(off + 2 * n + 2);
            memset(dst, 0xa5, off + 2 * n + 2);
            for (int bf = 0; bf < 2; bf++) {
                if (bf)
                    half_bf16_encode(dst + off, src, n);
                else
                    half_f16_encode(dst + off, src, n);
                for (size_t k = 0; k < n; k++) {
                    uint16_t h = (uint16_t)(dst[off + 2 * k] | dst[off + 2 * k + 1] << 8);
                    cr_assert_eq(h, enc(src[k], bf), "n=%zu off=%zu [%zu]", n, off, k);
                }
                cr_assert(dst[off + 2 * n] == 0xa5 && dst[off + 2 * n + 1] == 0xa5,
                          "encoder wrote past n=%zu", n);
                for (size_t k = 0; k < off; k++)
                    cr_assert_eq(dst[k], 0xa5, "encoder wrote before dst");
            }
            free(dst);
        }
    }
}
