/* Which vector instructions this CPU runs, asked once at import by the modules that have code for
 * them (conv.pyx: AVX-512; norm.pyx: AVX2).  The build uses no -march flag, so this run-time check
 * is what lets one wheel carry both the wide code and the SSE2 / plain loops.  Defining
 * CNNFRAME_NO_AVX512 or CNNFRAME_NO_AVX2 at build time makes the answer 0 (the fallbacks only).
 */
#ifndef CNNFRAME_CPU_H
#define CNNFRAME_CPU_H

static inline int cnnframe_cpu_avx512(void) {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX512)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

static inline int cnnframe_cpu_avx2(void) {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX2)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

#endif
