/*  half: binary16 / bfloat16 conversions. See half.h.  */
#include "half.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define XPL_X86 1
#endif

float
half_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f)
        bits = sign | 0x7f800000u | (man << 13);          /* Inf / NaN */
    else if (exp != 0)
        bits = sign | ((exp + 112) << 23) | (man << 13);   /* normal */
    else if (man == 0)
        bits = sign;                                        /* +-0 */
    else {
        /* Subnormal: value = man * 2^-24, exact in float32. */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

float
half_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

uint16_t
half_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax >= 0x7f800000u)                        /* Inf or NaN */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u)                        /* rounds to >= 65520: Inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {                       /* below 2^-14: subnormal */
        /* Scale so the result's integer part is the f16 mantissa; the FPU
           rounds to nearest-even. */
        float a;
        memcpy(&a, &ax, 4);
        uint32_t m = (uint32_t)lrintf(a * 0x1p24f);
        return (uint16_t)(sign | m);
    }
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1);   /* round to nearest even */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

uint16_t
half_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);      /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static void
s_f16_decode_scalar(float *dst, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = half_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

#ifdef XPL_X86
__attribute__((target("avx,f16c"))) static void
s_f16_decode_f16c(float *dst, const uint8_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    s_f16_decode_scalar(dst + i, src + 2 * i, n - i);
}

/* F16C needs AVX state saved by the OS (XGETBV) as well as the CPUID
   bits. Read CPUID directly: clang before 16 does not know the "f16c"
   name of __builtin_cpu_supports. */
static int
s_have_f16c(void)
{
    static int have = -1;
    if (have < 0) {
        unsigned a, b, c, d;
        have = 0;
        if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1) && (c >> 28 & 1) && (c >> 29 & 1)) {
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            (void)hi;
            have = (lo & 6) == 6;   /* XMM and YMM state enabled */
        }
    }
    return have;
}
#endif

void
half_f16_decode(float *dst, const void *src, size_t n)
{
#ifdef XPL_X86
    if (s_have_f16c()) {
        s_f16_decode_f16c(dst, (const uint8_t *)src, n);
        return;
    }
#endif
    s_f16_decode_scalar(dst, (const uint8_t *)src, n);
}

/* A plain loop over 16-bit loads widened by a shift: compilers vectorise
   it on every target, twice as wide in the x86-64-v3 clone. The clones
   are static, so their resolver stays out of libraries' exported
   symbols. */
__attribute__((target_clones("arch=x86-64-v3", "default"))) static void
s_bf16_decode(float *dst, const uint8_t *s, size_t n)
{
    uint32_t *d = (uint32_t *)(void *)dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        d[i] = (uint32_t)h << 16;
    }
}

void
half_bf16_decode(float *dst, const void *src, size_t n)
{
    s_bf16_decode(dst, (const uint8_t *)src, n);
}

void
half_f16_encode(void *dst, const float *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = half_f32_to_f16(src[i]);
        d[2 * i] = (uint8_t)h;
        d[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

void
half_bf16_encode(void *dst, const float *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = half_f32_to_bf16(src[i]);
        d[2 * i] = (uint8_t)h;
        d[2 * i + 1] = (uint8_t)(h >> 8);
    }
}
