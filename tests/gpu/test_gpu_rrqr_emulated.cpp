// The CUDA selection kernel emulated on the CPU with 4 threads per block: every strided loop has
// several elements per thread at n >= 8 and none for some threads at n = 3; barriers are cheap.
// The cases and how the emulation works: rrqr_emulation_cases.h.
#define RP_RRQR_CUDA_THREADS 4
#define RP_EMULATION_SUITE GpuRrqrEmulated
#include "tests/gpu/rrqr_emulation_cases.h"
