/* A register-blocked float32 matrix product for the convolution kernels, AVX-512 when the CPU
 * has it (checked at run time, so the build needs no -march flag):
 *
 *     C[i, j] (+)= sum_s sum_t A[i*sa + aoff[s] + t*sb] * B[(boff[s] + t)*ldb + j]
 *                                    0 <= i < M, 0 <= j < N, 0 <= s < nseg, 0 <= t < T
 *
 * One form serves all the products of a convolution (see conv.pyx): A is read by broadcasting
 * single elements (any strides), B and C by rows of contiguous vectors.  The segments let A be a
 * strided view of the input image itself ("implicit im2col": segment s is one kernel row, whose
 * taps sit at a fixed offset from each output pixel), so no im2col copy is needed.
 *
 * The same sum with A's rows listed instead (cnnframe_mk_sgemm_rows: row i starts at A + arow[i])
 * lets the rows be any set of output pixels, e.g. only the valid ones of a padded image, or the
 * strided ones: then no column is computed and dropped, at any stride.
 *
 * A tile of R rows x V vectors of C stays in R*V registers for the whole sum: per step, V loads
 * of B, R broadcasts of A and R*V fused multiply-adds.  Wide products use 6 x 4 vectors (24
 * accumulators, 10 loads per 24 FMAs), 32 columns 14 x 2, 16 columns or fewer 16 x 1; smaller
 * tiles take the last rows, and masked loads and stores the ragged last columns.  Measured on an
 * AVX-512 Xeon: 80-88 % of the FMA peak on convolution-shaped products.  Each output element is
 * summed in the same order (s, then t, from zero) whatever tile it falls in, so results do not
 * depend on how rows are cut into chunks.
 *
 * cnnframe_cpu_avx512() (cpu.h) says whether it can run; callers fall back to BLAS otherwise.
 */
#ifndef CNNFRAME_MICROKERNEL_H
#define CNNFRAME_MICROKERNEL_H

#include <stddef.h>

#include "cpu.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX512)
#define CNNFRAME_MK_X86 1
#include <immintrin.h>
#endif

#ifdef CNNFRAME_MK_X86

static inline __mmask16 cnnframe_mask16(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u));
}

/* One R x V tile: C[r*ldc + 16v + lane] for r < R, v < V (the last vector masked by `last`).
 * The accumulator array is fully unrolled, so it lives in registers.  ROWS declares, per segment,
 * how row r of A is found, and ELEM(r) reads its element t: a uniform row stride sa (one base
 * pointer, scaled indexing) or a table of row offsets (one pointer per row). */
#define CNNFRAME_TILE(NAME, R, V, AROWS, ROWS, ELEM)                                                  \
    __attribute__((target("avx512f"), noinline)) static void NAME(                                 \
        ptrdiff_t nseg, ptrdiff_t T, const float *A, AROWS, ptrdiff_t sb, const ptrdiff_t *aoff,    \
        const float *B, ptrdiff_t ldb, const ptrdiff_t *boff, float *C, ptrdiff_t ldc, int accumulate,  \
        __mmask16 last) {                                                                          \
        __m512 c[R][V];                                                                            \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; ++r)                                       \
            _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) c[r][v] = _mm512_setzero_ps();     \
        for (ptrdiff_t s = 0; s < nseg; ++s) {                                                     \
            ROWS(R)                                                                                \
            const float *b = B + boff[s] * ldb;                                                    \
            _Pragma("GCC unroll 2") for (ptrdiff_t t = 0; t < T; ++t, b += ldb) {                  \
                __m512 bv[V];                                                                      \
                _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v)                                \
                    bv[v] = v == V - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v); \
                _Pragma("GCC unroll 16") for (int r = 0; r < R; ++r) {                             \
                    const __m512 x = _mm512_set1_ps(ELEM(r));                                      \
                    _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v)                            \
                        c[r][v] = _mm512_fmadd_ps(x, bv[v], c[r][v]);                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; ++r)                                       \
            _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) {                                  \
                float *cp = C + r * ldc + 16 * v;                                                  \
                const __mmask16 m = v == V - 1 ? last : (__mmask16)0xFFFF;                         \
                if (accumulate) c[r][v] = _mm512_add_ps(c[r][v], _mm512_maskz_loadu_ps(m, cp));    \
                _mm512_mask_storeu_ps(cp, m, c[r][v]);                                             \
            }                                                                                      \
    }

/* Uniform rows: row r of A starts at A + r*sa. */
#define CNNFRAME_UNIFORM_ROWS(R) const float *a = A + aoff[s];
#define CNNFRAME_UNIFORM_ELEM(r) a[(r) * sa + t * sb]
#define CNNFRAME_TILE_U(NAME, R, V) \
    CNNFRAME_TILE(NAME, R, V, ptrdiff_t sa, CNNFRAME_UNIFORM_ROWS, CNNFRAME_UNIFORM_ELEM)
/* Listed rows: row r of A starts at A + arow[r]. */
#define CNNFRAME_LISTED_ROWS(R)                                                                    \
    const float *a[(R)];                                                                           \
    _Pragma("GCC unroll 16") for (int r = 0; r < (R); ++r) a[r] = A + arow[r] + aoff[s];
#define CNNFRAME_LISTED_ELEM(r) a[r][t * sb]
#define CNNFRAME_TILE_L(NAME, R, V) \
    CNNFRAME_TILE(NAME, R, V, const ptrdiff_t *arow, CNNFRAME_LISTED_ROWS, CNNFRAME_LISTED_ELEM)

/* Listed steps (sa = 1): A's element t of row r sits at A + toff[t] + r. */
#define CNNFRAME_STEP_ARGS ptrdiff_t unused_sa, const ptrdiff_t *toff
#define CNNFRAME_STEP_ROWS(R) const float *a = A + aoff[s];
#define CNNFRAME_STEP_ELEM(r) a[toff[t] + (r)]
#define CNNFRAME_TILE_T(NAME, R, V) \
    CNNFRAME_TILE(NAME, R, V, CNNFRAME_STEP_ARGS, CNNFRAME_STEP_ROWS, CNNFRAME_STEP_ELEM)

CNNFRAME_TILE_U(cnnframe_tile_6x4, 6, 4)
CNNFRAME_TILE_U(cnnframe_tile_4x4, 4, 4)
CNNFRAME_TILE_U(cnnframe_tile_2x4, 2, 4)
CNNFRAME_TILE_U(cnnframe_tile_1x4, 1, 4)
CNNFRAME_TILE_U(cnnframe_tile_14x2, 14, 2)
CNNFRAME_TILE_U(cnnframe_tile_4x2, 4, 2)
CNNFRAME_TILE_U(cnnframe_tile_2x2, 2, 2)
CNNFRAME_TILE_U(cnnframe_tile_1x2, 1, 2)
CNNFRAME_TILE_U(cnnframe_tile_16x1, 16, 1)
CNNFRAME_TILE_U(cnnframe_tile_4x1, 4, 1)
CNNFRAME_TILE_U(cnnframe_tile_2x1, 2, 1)
CNNFRAME_TILE_U(cnnframe_tile_1x1, 1, 1)

CNNFRAME_TILE_L(cnnframe_ltile_6x4, 6, 4)
CNNFRAME_TILE_L(cnnframe_ltile_4x4, 4, 4)
CNNFRAME_TILE_L(cnnframe_ltile_2x4, 2, 4)
CNNFRAME_TILE_L(cnnframe_ltile_1x4, 1, 4)
CNNFRAME_TILE_L(cnnframe_ltile_12x2, 12, 2)
CNNFRAME_TILE_L(cnnframe_ltile_4x2, 4, 2)
CNNFRAME_TILE_L(cnnframe_ltile_2x2, 2, 2)
CNNFRAME_TILE_L(cnnframe_ltile_1x2, 1, 2)
CNNFRAME_TILE_L(cnnframe_ltile_12x1, 12, 1)
CNNFRAME_TILE_L(cnnframe_ltile_4x1, 4, 1)
CNNFRAME_TILE_L(cnnframe_ltile_2x1, 2, 1)
CNNFRAME_TILE_L(cnnframe_ltile_1x1, 1, 1)

CNNFRAME_TILE_T(cnnframe_ttile_6x4, 6, 4)
CNNFRAME_TILE_T(cnnframe_ttile_4x4, 4, 4)
CNNFRAME_TILE_T(cnnframe_ttile_2x4, 2, 4)
CNNFRAME_TILE_T(cnnframe_ttile_1x4, 1, 4)
CNNFRAME_TILE_T(cnnframe_ttile_14x2, 14, 2)
CNNFRAME_TILE_T(cnnframe_ttile_4x2, 4, 2)
CNNFRAME_TILE_T(cnnframe_ttile_2x2, 2, 2)
CNNFRAME_TILE_T(cnnframe_ttile_1x2, 1, 2)
CNNFRAME_TILE_T(cnnframe_ttile_16x1, 16, 1)
CNNFRAME_TILE_T(cnnframe_ttile_4x1, 4, 1)
CNNFRAME_TILE_T(cnnframe_ttile_2x1, 2, 1)
CNNFRAME_TILE_T(cnnframe_ttile_1x1, 1, 1)

typedef void (*cnnframe_tile_u)(ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t, const ptrdiff_t *,
                                const float *, ptrdiff_t, const ptrdiff_t *, float *, ptrdiff_t, int, __mmask16);
typedef void (*cnnframe_tile_t)(ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t, const ptrdiff_t *, ptrdiff_t,
                                const ptrdiff_t *, const float *, ptrdiff_t, const ptrdiff_t *, float *, ptrdiff_t,
                                int, __mmask16);
typedef void (*cnnframe_tile_l)(ptrdiff_t, ptrdiff_t, const float *, const ptrdiff_t *, ptrdiff_t,
                                const ptrdiff_t *, const float *, ptrdiff_t, const ptrdiff_t *, float *, ptrdiff_t,
                                int, __mmask16);

/* The loops over tiles, for either kind of rows: column blocks of 4 vectors while more than 48
 * columns remain, then 2, then 1 (only a block's last vector may be partial); in each, big tiles,
 * then 4-, 2- and 1-row tiles for the rest (a rest of fewer than 4 rows takes one big tile's rows
 * along, so that few rows run in the slow narrow tiles). */
#define CNNFRAME_TILE_LOOPS(KIND, P, RBIG4, RBIG2, RBIG1, A_AT)                                   \
    for (ptrdiff_t j = 0; j < N;) {                                                                \
        const ptrdiff_t left = N - j;                                                              \
        const int V = left > 48 ? 4 : (left > 16 ? 2 : 1);                                         \
        const __mmask16 last = cnnframe_mask16(left - 16 * (V - 1));                               \
        KIND big, four, two, one;                                                                  \
        ptrdiff_t rbig;                                                                            \
        if (V == 4) {                                                                              \
            big = P##_##RBIG4##x4; four = P##_4x4; two = P##_2x4; one = P##_1x4; rbig = RBIG4;    \
        } else if (V == 2) {                                                                       \
            big = P##_##RBIG2##x2; four = P##_4x2; two = P##_2x2; one = P##_1x2; rbig = RBIG2;    \
        } else {                                                                                   \
            big = P##_##RBIG1##x1; four = P##_4x1; two = P##_2x1; one = P##_1x1; rbig = RBIG1;    \
        }                                                                                          \
        ptrdiff_t nbig = M / rbig, i = 0;                                                          \
        if (nbig > 0 && M % rbig < 4 && M % rbig > 0) --nbig;                                     \
        for (; i < nbig * rbig; i += rbig)                                                         \
            big(nseg, T, A_AT(i), sb, aoff, B + j, ldb, boff, C + i * ldc + j, ldc, accumulate, last); \
        for (; i + 4 <= M; i += 4)                                                                 \
            four(nseg, T, A_AT(i), sb, aoff, B + j, ldb, boff, C + i * ldc + j, ldc, accumulate, last); \
        for (; i + 2 <= M; i += 2)                                                                 \
            two(nseg, T, A_AT(i), sb, aoff, B + j, ldb, boff, C + i * ldc + j, ldc, accumulate, last); \
        for (; i < M; ++i)                                                                         \
            one(nseg, T, A_AT(i), sb, aoff, B + j, ldb, boff, C + i * ldc + j, ldc, accumulate, last); \
        j += 16 * V;                                                                               \
    }

/* A's rows at a uniform stride sa: big tiles 6x4, 14x2, 16x1. */
#define CNNFRAME_UNIFORM_AT(i) A + (i) * sa, sa
static void cnnframe_mk_sgemm_seg(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                  const float *A, ptrdiff_t sa, ptrdiff_t sb, const ptrdiff_t *aoff,
                                  const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                  float *C, ptrdiff_t ldc, int accumulate) {
    CNNFRAME_TILE_LOOPS(cnnframe_tile_u, cnnframe_tile, 6, 14, 16, CNNFRAME_UNIFORM_AT)
}
#undef CNNFRAME_UNIFORM_AT

/* A's rows listed in arow (element offsets): big tiles 6x4, 12x2, 12x1 (one pointer per row). */
#define CNNFRAME_LISTED_AT(i) A, arow + (i)
static void cnnframe_mk_sgemm_rows(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                   const float *A, const ptrdiff_t *arow, ptrdiff_t sb, const ptrdiff_t *aoff,
                                   const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                   float *C, ptrdiff_t ldc, int accumulate) {
    CNNFRAME_TILE_LOOPS(cnnframe_tile_l, cnnframe_ltile, 6, 12, 12, CNNFRAME_LISTED_AT)
}
#undef CNNFRAME_LISTED_AT

/* Listed steps: C[i, j] (+)= sum_t A[toff[t] + i] * B[t*ldb + j] -- e.g. the weight gradient
   (eq. 2) with A the channels-last input read in place at each output pixel's receptive field
   (toff) and B the output gradient, pixel-major.  Big tiles 6x4, 14x2, 16x1. */
#define CNNFRAME_STEP_AT(i) A + (i), 0, toff
static void cnnframe_mk_sgemm_steps(ptrdiff_t M, ptrdiff_t N, ptrdiff_t T, const float *A,
                                    const ptrdiff_t *toff, const float *B, ptrdiff_t ldb, float *C,
                                    ptrdiff_t ldc, int accumulate) {
    const ptrdiff_t zero = 0, nseg = 1, sb = 0, *aoff = &zero, *boff = &zero;
    CNNFRAME_TILE_LOOPS(cnnframe_tile_t, cnnframe_ttile, 6, 14, 16, CNNFRAME_STEP_AT)
}
#undef CNNFRAME_STEP_AT

#undef CNNFRAME_TILE

#else

/* Never called: cnnframe_cpu_avx512() is 0 here and the kernels use BLAS. */
static void cnnframe_mk_sgemm_steps(ptrdiff_t M, ptrdiff_t N, ptrdiff_t T, const float *A,
                                    const ptrdiff_t *toff, const float *B, ptrdiff_t ldb, float *C,
                                    ptrdiff_t ldc, int accumulate) {
    (void)M; (void)N; (void)T; (void)A; (void)toff; (void)B; (void)ldb; (void)C; (void)ldc; (void)accumulate;
}
static void cnnframe_mk_sgemm_rows(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                   const float *A, const ptrdiff_t *arow, ptrdiff_t sb, const ptrdiff_t *aoff,
                                   const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                   float *C, ptrdiff_t ldc, int accumulate) {
    (void)M; (void)N; (void)nseg; (void)T; (void)A; (void)arow; (void)sb; (void)aoff; (void)B;
    (void)ldb; (void)boff; (void)C; (void)ldc; (void)accumulate;
}
static void cnnframe_mk_sgemm_seg(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                  const float *A, ptrdiff_t sa, ptrdiff_t sb, const ptrdiff_t *aoff,
                                  const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                  float *C, ptrdiff_t ldc, int accumulate) {
    (void)M; (void)N; (void)nseg; (void)T; (void)A; (void)sa; (void)sb; (void)aoff; (void)B;
    (void)ldb; (void)boff; (void)C; (void)ldc; (void)accumulate;
}

#endif

/* The single-segment case: C (+)= A·B with A[i*sa + t*sb], B[t*ldb + j]. */
static void cnnframe_mk_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t T, const float *A, ptrdiff_t sa,
                              ptrdiff_t sb, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                              int accumulate) {
    const ptrdiff_t zero = 0;
    cnnframe_mk_sgemm_seg(M, N, 1, T, A, sa, sb, &zero, B, ldb, &zero, C, ldc, accumulate);
}

#endif
