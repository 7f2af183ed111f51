"""This machine's float32 fused-multiply-add peak, 1 and 2 threads (GFLOP/s).

    python benchmarks/fma_peak.py [--threads 1 2]

Compiles a tiny C probe with the system C compiler (``cc``, OpenMP): each thread runs 24
independent chains of 512-bit FMAs (enough to cover the FMA latency times the number of FMA
units), 2 FLOP per lane.  The probe asks for AVX-512 with ``__attribute__((target))`` only, so
no -march flag is involved; on a CPU without AVX-512 it uses 256-bit FMAs and says so.
bench_conv.py quotes each shape's speed as a fraction of this peak.
"""
import argparse
import functools
import os
import subprocess
import sys
import tempfile

PROBE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 24
__attribute__((target("avx512f"), noinline))
static float run512(long iters) {
    __m512 c[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < CHAINS; ++k) c[k] = _mm512_set1_ps((float)k);
    for (long it = 0; it < iters; ++it) {
        #pragma GCC unroll 24
        for (int k = 0; k < CHAINS; ++k) c[k] = _mm512_fmadd_ps(c[k], a, b);
    }
    float s = 0;
    for (int k = 0; k < CHAINS; ++k) s += _mm512_reduce_add_ps(c[k]);
    return s;
}

__attribute__((target("avx2,fma"), noinline))
static float run256(long iters) {
    __m256 c[12];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < 12; ++k) c[k] = _mm256_set1_ps((float)k);
    for (long it = 0; it < iters; ++it) {
        #pragma GCC unroll 12
        for (int k = 0; k < 12; ++k) c[k] = _mm256_fmadd_ps(c[k], a, b);
    }
    float s = 0;
    float t[8];
    for (int k = 0; k < 12; ++k) { _mm256_storeu_ps(t, c[k]); for (int l = 0; l < 8; ++l) s += t[l]; }
    return s;
}

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    long iters = atol(argv[2]);
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f");
    double flop_per_iter = wide ? CHAINS * 32.0 : 12 * 16.0;
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 12; ++rep) {
        /* One thread: its CPU time (what other processes take does not count); more: wall time. */
        struct timespec a, b;
        clock_gettime(threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &a);
        #pragma omp parallel num_threads(threads) reduction(+:sink)
        sink += wide ? run512(iters) : run256(iters);
        clock_gettime(threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &b);
        double dt = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
        double gflops = flop_per_iter * iters * threads / dt / 1e9;
        if (gflops > best) best = gflops;
    }
    printf("%s %.1f %g\n", wide ? "avx512" : "avx2", best, (double)sink * 0);
    return 0;
}
"""


@functools.lru_cache(maxsize=None)
def _probe():
    tmp = tempfile.mkdtemp(prefix="cnnframe-fma-")
    src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
    with open(src, "w") as f:
        f.write(PROBE)
    subprocess.run(["cc", "-O2", "-fopenmp", src, "-o", exe], check=True, capture_output=True)
    return exe


def fma_peak(threads, iters=8_000_000):
    """Best of twelve short runs: (GFLOP/s over ``threads`` threads, "avx512" or "avx2")."""
    out = subprocess.run([_probe(), str(threads), str(iters)], check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_PROC_BIND="true"))
    kind, gflops, _ = out.stdout.split()
    return float(gflops), kind


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    for t in args.threads:
        gflops, kind = fma_peak(t)
        print(f"{t} thread(s): {gflops:7.1f} GFLOP/s float32 FMA peak ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
