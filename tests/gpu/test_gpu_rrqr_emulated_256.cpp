// The CUDA selection kernel emulated on the CPU at its real block size, 256 threads: the block
// reductions at full depth, most threads idle at these n. The cases: rrqr_emulation_cases.h.
#define RP_RRQR_CUDA_THREADS 256
#define RP_EMULATION_SUITE GpuRrqrEmulated256
#include "tests/gpu/rrqr_emulation_cases.h"
