// The CUDA kernels (kernels/cuda/) at the DeltaNet-1.3B layer shape, timed with CUDA events:
//  - the recurrent delta-rule forward (delta_rule_recurrent_cuda), ungated (DeltaNet) and gated
//    (Gated DeltaNet), final state written out: tokens/s and effective GB/s;
//  - the calibration Gram accumulation (gram_accumulate_cuda) over the same tokens: ms per layer,
//    achieved FP64 TFLOP/s, and its FLOPs as a fraction of the model's forward FLOPs.
//
//   build/bench/bench_gpu [--batch 8] [--seq 2048] [--heads 16] [--dk 128] [--dv 128]
//                         [--dtype bf16] [--layers 24] [--params 1.3e9] [--warmup 2] [--reps 10]
//
// Defaults: fla-hub/delta_net-1.3B-100B (H 16, dk = dv = 128, 24 layers; docs/method.md) on a
// calibration-sized batch of 8 x 2048 tokens. Median of --reps after --warmup untimed runs. Prints
// the device, the date and the formulas behind every derived figure; asserts nothing. Exits 77
// (skipped) when no CUDA device is visible.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/delta_rule_cuda.h"
#include "kernels/cuda/gram_cuda.h"

using namespace rankprune;
using namespace rankprune::cuda;

namespace {

constexpr const char* kWho = "bench_gpu";

// Cheap deterministic inputs (xorshift64*): the timings do not depend on the values, only on them
// being finite and the recurrence staying bounded (unit-norm keys, beta in [0, 1)).
struct Rng {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  float uniform() {  // [0, 1)
    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
    return static_cast<float>((s * 0x2545F4914F6CDD1Dull) >> 40) * (1.0f / 16777216.0f);
  }
  float symmetric() { return 2.0f * uniform() - 1.0f; }
};

uint16_t to_bf16_bits(float x) {  // round to nearest even (finite inputs)
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// Uploads `x` as `dt` into a new device buffer.
DeviceBuffer<char> upload(const std::vector<float>& x, CudaScalar dt) {
  const std::size_t e = dt == CudaScalar::F32 ? 4 : 2;
  DeviceBuffer<char> d(x.size() * e, kWho);
  if (dt == CudaScalar::F32) {
    RP_CUDA_CHECK(kWho, cudaMemcpy(d.get(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  } else {
    std::vector<uint16_t> h(x.size());
    std::transform(x.begin(), x.end(), h.begin(), to_bf16_bits);
    RP_CUDA_CHECK(kWho, cudaMemcpy(d.get(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  return d;
}

// Rows of length d with unit L2 norm.
std::vector<float> unit_rows(Rng& r, int64_t rows, int64_t d) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  for (int64_t i = 0; i < rows; ++i) {
    float* p = x.data() + i * d;
    double n = 0;
    for (int64_t j = 0; j < d; ++j) p[j] = r.symmetric(), n += double(p[j]) * p[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(std::max(n, 1e-30)));
    for (int64_t j = 0; j < d; ++j) p[j] *= inv;
  }
  return x;
}

// Median over `reps` timed calls (each between its own pair of events on stream 0), after `warmup`.
template <typename Fn>
double median_ms(int warmup, int reps, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  RP_CUDA_CHECK(kWho, cudaEventCreate(&a));
  RP_CUDA_CHECK(kWho, cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    RP_CUDA_CHECK(kWho, cudaEventRecord(a, nullptr));
    fn();
    RP_CUDA_CHECK(kWho, cudaEventRecord(b, nullptr));
    RP_CUDA_CHECK(kWho, cudaEventSynchronize(b));
    float t = 0;
    RP_CUDA_CHECK(kWho, cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  const std::size_t n = ms.size();
  return n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
}

// --name value options; plain parsing (no Boost) so that this builds on a GPU node with nvcc and
// the CUDA toolkit alone (scripts/gpu_check.sh).
struct Options {
  int64_t batch = 8, seq = 2048, heads = 16, dk = 128, dv = 128, layers = 24;
  double params = 1.3e9;
  std::string dtype = "bf16";
  int warmup = 2, reps = 10;
};

const char* kUsage =
    "usage: bench_gpu [--batch 8] [--seq 2048] [--heads 16] [--dk 128] [--dv 128] [--dtype bf16|f32]\n"
    "                 [--layers 24] [--params 1.3e9] [--warmup 2] [--reps 10]\n"
    "  batch B, seq T, heads H, dk (also the Gram's d), dv: the layer shape; layers and params: the\n"
    "  model, for the Gram's share of a forward's FLOPs; median of --reps timed runs after --warmup.\n";

// The whole string as a number, else std::invalid_argument / std::out_of_range.
int64_t whole_number(const std::string& s) {
  std::size_t used = 0;
  const long long v = std::stoll(s, &used);
  if (used != s.size() || v < INT32_MIN || v > INT32_MAX) throw std::invalid_argument(s);
  return v;
}
double real_number(const std::string& s) {
  std::size_t used = 0;
  const double v = std::stod(s, &used);
  if (used != s.size()) throw std::invalid_argument(s);
  return v;
}

// Returns false (after a message naming the option) on anything it does not understand.
bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (name == "--help" || name == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_gpu: %s needs a value\n%s", name.c_str(), kUsage);
      return false;
    }
    const std::string value = argv[++i];
    try {
      if (name == "--batch") o.batch = whole_number(value);
      else if (name == "--seq") o.seq = whole_number(value);
      else if (name == "--heads") o.heads = whole_number(value);
      else if (name == "--dk") o.dk = whole_number(value);
      else if (name == "--dv") o.dv = whole_number(value);
      else if (name == "--layers") o.layers = whole_number(value);
      else if (name == "--warmup") o.warmup = static_cast<int>(whole_number(value));
      else if (name == "--reps") o.reps = static_cast<int>(whole_number(value));
      else if (name == "--params") o.params = real_number(value);
      else if (name == "--dtype") o.dtype = value;
      else {
        std::fprintf(stderr, "bench_gpu: unknown option %s\n%s", name.c_str(), kUsage);
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "bench_gpu: %s expects a number, got '%s'\n", name.c_str(), value.c_str());
      return false;
    }
  }
  if ((o.dtype != "bf16" && o.dtype != "f32") || o.batch < 1 || o.seq < 1 || o.heads < 1 || o.layers < 1 ||
      o.reps < 1 || o.warmup < 0 || !(o.params > 0)) {
    std::fprintf(stderr, "bench_gpu: expected --dtype bf16|f32, --batch/--seq/--heads/--layers/--reps >= 1, "
                         "--warmup >= 0, --params > 0\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parse(argc, argv, opt)) return 2;
  const int64_t B = opt.batch, T = opt.seq, H = opt.heads, dk = opt.dk, dv = opt.dv, layers = opt.layers;
  const double params = opt.params;
  const int warmup = opt.warmup, reps = opt.reps;
  const std::string dts = opt.dtype;
  const CudaScalar dt = dts == "bf16" ? CudaScalar::BF16 : CudaScalar::F32;
  const double elem = dt == CudaScalar::BF16 ? 2.0 : 4.0;

  int n_dev = 0;
  const cudaError_t e = cudaGetDeviceCount(&n_dev);
  if (e != cudaSuccess || n_dev == 0) {
    std::printf("bench_gpu: no CUDA device visible (cudaGetDeviceCount: %s); nothing to time, exit 77 (skipped)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 77;
  }
  try {
    int dev = 0, runtime = 0, driver = 0;
    RP_CUDA_CHECK(kWho, cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    RP_CUDA_CHECK(kWho, cudaGetDeviceProperties(&prop, dev));
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
    std::printf("bench_gpu: %s (sm_%d%d, %d SMs, %.0f GiB), CUDA runtime %d driver %d, %s\n", prop.name, prop.major,
                prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, runtime, driver, date);
    std::printf("shape: B %lld, H %lld, T %lld, dk %lld, dv %lld, %s activations; median of %d after %d warm-up\n",
                static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(T),
                static_cast<long long>(dk), static_cast<long long>(dv), dts.c_str(), reps, warmup);

    const int64_t rows = B * H * T;  // token-heads
    Rng rng;
    auto q = upload(unit_rows(rng, rows, dk), dt), k = upload(unit_rows(rng, rows, dk), dt);
    std::vector<float> hv(static_cast<std::size_t>(rows * dv)), hb(static_cast<std::size_t>(rows)),
        hg(static_cast<std::size_t>(rows));
    for (auto& x : hv) x = rng.symmetric();
    for (auto& x : hb) x = rng.uniform();
    for (auto& x : hg) x = -0.1f * rng.uniform();
    auto v = upload(hv, dt), beta = upload(hb, dt), g = upload(hg, dt);
    DeviceBuffer<char> o(static_cast<std::size_t>(rows * dv * elem), kWho);
    DeviceBuffer<float> s_out(static_cast<std::size_t>(B * H * dk * dv), kWho);

    // (a) delta rule, fresh state, final state written out.
    const double tokens = static_cast<double>(B * T);
    const double bytes_io = static_cast<double>(rows) * ((2.0 * dk + 2.0 * dv + 1.0) * elem) +
                            static_cast<double>(B * H * dk * dv) * 4.0;
    std::printf("delta rule (recurrent): effective bytes = B H T (2 dk + 2 dv + 1 [+1 gated]) x %g (q, k, v, beta"
                " [, g] read, o written) + B H dk dv x 4 (final state)\n",
                elem);
    for (const bool gated : {false, true}) {
      DeltaRuleCudaArgs a;
      a.q = q.get(), a.k = k.get(), a.v = v.get(), a.beta = beta.get(), a.g = gated ? g.get() : nullptr;
      a.dtype = dt, a.B = B, a.H = H, a.T = T, a.dk = dk, a.dv = dv;
      a.scale = 1.0 / std::sqrt(static_cast<double>(dk));
      a.o = o.get(), a.s_out = s_out.get();
      const double ms = median_ms(warmup, reps, [&] { delta_rule_recurrent_cuda(a, nullptr); });
      const double bytes = bytes_io + (gated ? static_cast<double>(rows) * elem : 0.0);
      std::printf("  %-8s %9.3f ms   %12.0f tokens/s (one layer)   %8.1f GB/s effective\n", gated ? "gated" : "ungated", ms,
                  tokens / (ms * 1e-3), bytes / (ms * 1e-3) / 1e9);
    }

    // (b) Gram over the same tokens: q, k read as [B T, H, dk] (the values' layout does not matter
    // for the timing), G zeroed once and accumulated into by every run.
    DeviceBuffer<double> G(static_cast<std::size_t>(H * dk * dk), kWho);
    RP_CUDA_CHECK(kWho, cudaMemset(G.get(), 0, G.size() * sizeof(double)));
    const int64_t n_tok = B * T;
    const double ms = median_ms(warmup, reps, [&] {
      gram_accumulate_cuda(q.get(), k.get(), dt, n_tok, H, dk, G.get(), nullptr);
    });
    const double gemm_flops = 2.0 * (2.0 * n_tok) * dk * dk * H;  // per layer, both triangles
    const double fwd_flops = 2.0 * params * n_tok;
    const double frac = layers * gemm_flops / fwd_flops;
    std::printf("gram (chunks of %lld tokens, float64 GEMM): %.3f ms per layer, %.3f ms for %lld layers, "
                "%.2f FP64 TFLOP/s\n",
                static_cast<long long>(gram_default_chunk_tokens(H, dk)), ms, ms * layers,
                static_cast<long long>(layers), gemm_flops / (ms * 1e-3) / 1e12);
    std::printf("  FLOPs: gram = layers x 2 (2 B T) d^2 H (GEMM, both triangles; the symmetric half is half that);"
                " forward ~ 2 x params x B T (params = %.3g, --params)\n"
                "  gram / forward FLOPs = %lld x 2 x 2 x %lld^2 x %lld / (2 x %.3g) = %.4f (GEMM), %.4f (half)\n",
                params, static_cast<long long>(layers), static_cast<long long>(dk), static_cast<long long>(H), params,
                frac, frac / 2);
  } catch (const InputError& ex) {  // a shape the kernels refuse (dk > 256, say)
    std::fprintf(stderr, "bench_gpu: %s\n", ex.what());
    return 1;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_gpu: %s\n", ex.what());
    return 3;
  }
  return 0;
}
