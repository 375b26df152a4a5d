/*  cpu_supports_shim: lets clang < 16 compile core/half.c for the fuzzers.

    clang-14 rejects __builtin_cpu_supports("f16c") ("invalid cpu feature
    string for builtin"), so core/half.c does not build with it. Until the
    module itself is portable, the XPL_FUZZ build force-includes this into
    its instrumented copy of xplcore only (never the normal targets): the
    builtin is replaced by the same answer read from CPUID and XGETBV, so
    the fuzzers still run the F16C path on machines that have it.  */
#ifndef XPL_FUZZ_CPU_SUPPORTS_SHIM_H
#define XPL_FUZZ_CPU_SUPPORTS_SHIM_H

#if defined(__clang__) && __clang_major__ < 16 && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#include <string.h>

static inline int
xplfuzz_cpu_supports(const char *feature)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int avx = 0;
    if ((c >> 27 & 1) && (c >> 28 & 1)) {       /* OSXSAVE and AVX */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        avx = (lo & 6) == 6;                    /* the OS saves XMM and YMM */
    }
    if (strcmp(feature, "avx") == 0)
        return avx;
    if (strcmp(feature, "f16c") == 0)
        return avx && (c >> 29 & 1);
    return 0;
}
#define __builtin_cpu_supports(feature) xplfuzz_cpu_supports(feature)
#endif

#endif
