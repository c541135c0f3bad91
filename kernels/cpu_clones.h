// RP_CPU_CLONES: a function compiled several times, for AVX-512 (x86-64-v4), AVX2 + FMA
// (x86-64-v3) and the baseline, with the best one chosen at load time from the CPU it runs on.
// One binary is then fast on current x86 nodes and still runs everywhere. Used on the hand-written
// CPU loops (delta-rule scan, short convolution); LibTorch's and OpenBLAS's kernels dispatch
// themselves.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RP_CPU_CLONES
#endif

// For everything a cloned function calls in its loops (helpers, templated loop bodies, no
// lambdas): inlined into each clone, it is compiled for that clone's instruction set. Out of line
// it would be built once, for the baseline target — 5x slower for the delta-rule scan.
#if defined(__GNUC__)
#define RP_INLINE inline __attribute__((always_inline))
#else
#define RP_INLINE inline
#endif
