// The recurrent delta-rule forward (see delta_rule_cuda.h for the contract).
//
// Column j of S evolves on its own: S[:, j] needs only k_t, q_t, beta_t, g_t and v_t[j] (the
// observation delta_rule_recurrent_cpu is built on). So the work splits into independent
// (batch, head, slice of kCols columns) blocks, each carrying its [dk, kCols] slice of the state
// in registers through all T steps:
//
//   launch: grid = B * H * ceil(dv / kCols) blocks (x only: no 65535 limit), kThreads = 32 * kCols
//           threads; warp c owns column j0 + c; lane l of it holds rows l, l + 32, ..., i.e.
//           kRows = ceil(dk / 32) floats of the state (kRows in {1, 2, 4, 8}, a template
//           parameter, so the state array stays in registers after unrolling).
//   per token, per warp: S *= exp(g_t); pred = S^T k_t (kRows FMAs a lane + a warp reduction);
//           u = beta_t (v_t[j] - pred); S += k_t u; o = S^T (scale q_t) (kRows FMAs + reduction).
//           Warps whose column is past dv run the same steps on zeros (v = 0, S = 0 stay 0) and
//           write nothing: no divergence around the shuffles or the barriers.
//   staging: kStepTile tokens of k, scale * q (padded with zeros to 32 kRows rows), v[j0, j0+kCols),
//           beta and exp(g) are loaded into shared memory by the whole block (coalesced rows),
//           then the kStepTile steps run without a barrier; outputs collect in shared memory and
//           are written as rows of kCols contiguous elements. Two __syncthreads() per tile.
//   shared memory (static): 2 * kStepTile * 32 kRows floats (k, q) + 2 * kStepTile * kCols (v, o)
//           + 2 * kStepTile (beta, decay) = 34,944 bytes at dk = 256 (kRows = 8), 18,560 at
//           dk = 128: under the 48 KB static limit; shared memory is not what limits occupancy.
//   registers: __launch_bounds__(512) caps them at 128 a thread; ptxas (CUDA 13, sm_90) uses
//           56-64 (dk > 128: 64 plus 16 bytes spilled), so 2 blocks (1024 threads) are resident
//           per SM, bounded by the 64K registers. At the DeltaNet-1.3B shape (dv 128, B 8, H 16)
//           that is 1024 blocks over 2 x 132 slots.
//
// Deterministic: every sum has a fixed order (lane-serial over rows, then the same shuffle tree).
#include "kernels/cuda/delta_rule_cuda.h"

#include <cuda_bf16.h>

#include <climits>
#include <cmath>

namespace rankprune::cuda {
namespace {

constexpr const char* kWho = "delta_rule_recurrent_cuda";
constexpr int kCols = 16;              // state columns per block = warps per block
constexpr int kThreads = 32 * kCols;   // 512
constexpr int kStepTile = 16;          // tokens staged per pair of barriers

__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline void store(float* p, float x) { *p = x; }
__device__ inline void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// Sum over the 32 lanes of a warp, returned to every lane: a shuffle-down tree into lane 0, then a
// broadcast. All 32 lanes must call it (full mask).
__device__ inline float warp_sum(float x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
  return __shfl_sync(0xffffffffu, x, 0);
}

struct Params {
  const void *q, *k, *v, *beta, *g;
  const float* s0;
  void* o;
  float* s_out;
  int64_t T, dk, dv, slices;  // slices = ceil(dv / kCols)
  float scale;
};

template <typename Elem, int kRows>
__global__ void __launch_bounds__(kThreads) delta_rule_kernel(Params p) {
  constexpr int kDkPad = 32 * kRows;
  __shared__ float k_s[kStepTile][kDkPad];
  __shared__ float q_s[kStepTile][kDkPad];  // already multiplied by scale
  __shared__ float v_s[kStepTile][kCols];
  __shared__ float o_s[kStepTile][kCols];
  __shared__ float beta_s[kStepTile];
  __shared__ float decay_s[kStepTile];

  const int64_t T = p.T, dk = p.dk, dv = p.dv;
  const int64_t bh = blockIdx.x / p.slices;             // b * H + h
  const int64_t j0 = (blockIdx.x % p.slices) * kCols;   // first column of this block's slice
  const int tid = threadIdx.x, lane = tid & 31, c = tid >> 5;
  const int64_t j = j0 + c;                             // this warp's column
  const bool active = j < dv;

  const Elem* q = static_cast<const Elem*>(p.q) + bh * T * dk;
  const Elem* k = static_cast<const Elem*>(p.k) + bh * T * dk;
  const Elem* v = static_cast<const Elem*>(p.v) + bh * T * dv;
  const Elem* beta = static_cast<const Elem*>(p.beta) + bh * T;
  const Elem* g = p.g ? static_cast<const Elem*>(p.g) + bh * T : nullptr;
  Elem* o = static_cast<Elem*>(p.o) + bh * T * dv;

  // S[r] = state row lane + 32 r of column j; rows past dk stay 0 (their k is staged as 0).
  float S[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t i = lane + 32 * r;
    S[r] = (p.s0 && active && i < dk) ? p.s0[(bh * dk + i) * dv + j] : 0.0f;
  }

  for (int64_t t0 = 0; t0 < T; t0 += kStepTile) {
    const int n = static_cast<int>(T - t0 < kStepTile ? T - t0 : kStepTile);
    // Stage tokens [t0, t0 + n); the rest of the tile is zero-filled (and never stepped through).
    for (int idx = tid; idx < kStepTile * kDkPad; idx += kThreads) {
      const int s = idx / kDkPad, i = idx % kDkPad;
      float kv = 0.0f, qv = 0.0f;
      if (s < n && i < dk) {
        const int64_t off = (t0 + s) * dk + i;
        kv = load(k + off);
        qv = p.scale * load(q + off);
      }
      k_s[s][i] = kv;
      q_s[s][i] = qv;
    }
    for (int idx = tid; idx < kStepTile * kCols; idx += kThreads) {
      const int s = idx / kCols, cc = idx % kCols;
      const int64_t jj = j0 + cc;
      v_s[s][cc] = (s < n && jj < dv) ? load(v + (t0 + s) * dv + jj) : 0.0f;
    }
    if (tid < kStepTile) {
      const int s = tid;
      beta_s[s] = s < n ? load(beta + t0 + s) : 0.0f;
      decay_s[s] = (s < n && g) ? expf(load(g + t0 + s)) : 1.0f;
    }
    __syncthreads();  // staging visible to all warps

    for (int s = 0; s < n; ++s) {
      const float d = decay_s[s];
      float part = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        S[r] *= d;
        part = fmaf(S[r], k_s[s][lane + 32 * r], part);
      }
      const float u = beta_s[s] * (v_s[s][c] - warp_sum(part));  // beta_t (v_t[j] - (S^T k_t)[j])
      float po = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        S[r] = fmaf(k_s[s][lane + 32 * r], u, S[r]);  // S += k_t u^T, column j
        po = fmaf(S[r], q_s[s][lane + 32 * r], po);
      }
      const float ov = warp_sum(po);
      if (lane == 0) o_s[s][c] = ov;
    }
    __syncthreads();  // o_s complete; staging no longer read (the next tile may overwrite it)

    for (int idx = tid; idx < n * kCols; idx += kThreads) {
      const int s = idx / kCols, cc = idx % kCols;
      const int64_t jj = j0 + cc;
      if (jj < dv) store(o + (t0 + s) * dv + jj, o_s[s][cc]);
    }
    // No barrier needed here: the next tile's staging writes k_s..decay_s, not o_s, and o_s is
    // next written only after that tile's first barrier, which these reads precede.
  }

  if (p.s_out && active) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = lane + 32 * r;
      if (i < dk) p.s_out[(bh * dk + i) * dv + j] = S[r];
    }
  }
}

template <typename Elem>
void launch(const Params& p, unsigned blocks, cudaStream_t stream) {
  // Smallest kRows with 32 kRows >= dk: work and shared memory scale with the padded dk.
  if (p.dk <= 32)
    delta_rule_kernel<Elem, 1><<<blocks, kThreads, 0, stream>>>(p);
  else if (p.dk <= 64)
    delta_rule_kernel<Elem, 2><<<blocks, kThreads, 0, stream>>>(p);
  else if (p.dk <= 128)
    delta_rule_kernel<Elem, 4><<<blocks, kThreads, 0, stream>>>(p);
  else
    delta_rule_kernel<Elem, 8><<<blocks, kThreads, 0, stream>>>(p);
}

}  // namespace

void check_delta_rule_args(const DeltaRuleCudaArgs& a) {
  check_cuda_scalar(kWho, a.dtype);
  RP_CHECK_INPUT(a.B >= 0 && a.H >= 0 && a.T >= 0, kWho, ": B, H, T must be >= 0, got B ", a.B, " H ", a.H, " T ",
                 a.T);
  RP_CHECK_INPUT(a.dk >= 1 && a.dk <= kDeltaRuleMaxHeadDim, kWho, ": dk must be in [1, ", kDeltaRuleMaxHeadDim,
                 "], got ", a.dk);
  RP_CHECK_INPUT(a.dv >= 1 && a.dv <= kDeltaRuleMaxHeadDim, kWho, ": dv must be in [1, ", kDeltaRuleMaxHeadDim,
                 "], got ", a.dv);
  RP_CHECK_INPUT(std::isfinite(a.scale), kWho, ": scale must be finite, got ", a.scale);
  if (a.B == 0 || a.H == 0) return;
  const int64_t slices = (a.dv + kCols - 1) / kCols;
  RP_CHECK_INPUT(a.B <= INT_MAX / a.H && a.B * a.H <= INT_MAX / slices, kWho, ": B * H = ", a.B, " * ", a.H,
                 " needs more than ", INT_MAX, " blocks of ", kCols, " columns");
  // Element offsets (bh * T + t) * 256 must fit int64.
  RP_CHECK_INPUT(a.T <= INT64_MAX / (a.B * a.H * kDeltaRuleMaxHeadDim), kWho, ": T = ", a.T, " is too long for B * H = ",
                 a.B * a.H);
  if (a.T > 0) {
    RP_CHECK_INPUT(a.q && a.k && a.v && a.beta, kWho, ": q, k, v and beta must be device arrays (q, k [", a.B, ", ",
                   a.H, ", ", a.T, ", ", a.dk, "], v [", a.B, ", ", a.H, ", ", a.T, ", ", a.dv, "], beta [", a.B,
                   ", ", a.H, ", ", a.T, "]); got a null pointer");
    RP_CHECK_INPUT(a.o, kWho, ": o is null; expected a device array [", a.B, ", ", a.H, ", ", a.T, ", ", a.dv, "]");
  }
}

void delta_rule_recurrent_cuda(const DeltaRuleCudaArgs& a, cudaStream_t stream) {
  check_delta_rule_args(a);
  if (a.B == 0 || a.H == 0) return;          // no (batch, head): nothing to launch
  if (a.T == 0 && a.s_out == nullptr) return;  // no tokens and no state wanted
  Params p{a.q, a.k, a.v, a.beta, a.g, a.s0, a.o, a.s_out, a.T, a.dk, a.dv, (a.dv + kCols - 1) / kCols,
           static_cast<float>(a.scale)};
  const unsigned blocks = static_cast<unsigned>(a.B * a.H * p.slices);
  if (a.dtype == CudaScalar::F32)
    launch<float>(p, blocks, stream);
  else
    launch<__nv_bfloat16>(p, blocks, stream);
  RP_CUDA_CHECK(kWho, cudaGetLastError());
}

}  // namespace rankprune::cuda
