// Calibration overhead: a forward pass that accumulates every statistic (Gram, Wanda, PCA
// moments, all float64) against the same plain forward pass.
//
//   build/bench/bench_calibrate [hidden=1024] [heads=8] [layers=4] [sequences=4] [seq_len=512] [reps=5]
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>

#include "kernels/threads.h"
#include "worker/calibration.h"

using namespace rankprune;

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  const int64_t hidden = arg(1, 1024), heads = arg(2, 8), layers = arg(3, 4), n = arg(4, 4), L = arg(5, 512);
  const int reps = static_cast<int>(arg(6, 5));
  set_cpu_threads(0);
  ModelConfig c = ModelConfig::defaults(Arch::DeltaNet);
  c.hidden_size = hidden, c.num_heads = heads, c.num_hidden_layers = layers, c.vocab_size = 32000;
  c.intermediate_size = 0;
  c.finalize();
  LinearLM m(c, init_random_weights(c, 0, torch::kFloat32));
  auto ids = torch::randint(c.vocab_size, {n, L}, torch::kLong);
  ForwardOptions o;
  torch::NoGradGuard ng;
  // Interleave the two measurements so drifting machine load hits both alike; report the best.
  auto once = [](auto&& fn) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto run_plain = [&] { m.hidden(ids, nullptr, o); };
  auto run_stats = [&] { collect_statistics(m, ids, n, o); };
  run_plain(), run_stats();  // warm-up
  double plain = 1e300, stats = 1e300;
  for (int r = 0; r < reps; ++r) {
    plain = std::min(plain, once(run_plain));
    stats = std::min(stats, once(run_stats));
  }
  std::cout << "bench_calibrate: delta_net hidden " << hidden << ", " << heads << " heads (dk " << c.head_k_dim << "), "
            << layers << " layers, " << n << " x " << L << " tokens, f32 forward, float64 statistics, best of " << reps
            << "\n"
            << std::fixed << std::setprecision(3) << "  plain forward      " << plain << " s (" << std::setprecision(0)
            << n * L / plain << " tok/s)\n"
            << std::setprecision(3) << "  forward + stats    " << stats << " s (" << std::setprecision(0) << n * L / stats
            << " tok/s)\n"
            << std::setprecision(1) << "  overhead           " << 100.0 * (stats - plain) / plain << " %\n";
  return 0;
}
