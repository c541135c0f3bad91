// The hand-written CPU kernels on evaluation-sized packed inputs: microseconds per token.
//  - the fused delta-rule scan (delta_rule_recurrent_cpu): S packed sequences of L tokens, fresh
//    with the final state written out (a context pass), and from rows of a shared state without
//    it (continuations); ungated and gated;
//  - the packed short convolution (causal_conv1d_varlen): the direct loop, and torch's conv1d
//    path (taken when a gradient is needed; timed with an input that requires grad).
//
//   build/bench/bench_kernels [--seqs 16] [--len 46] [--heads 8] [--dk 128] [--channels 1024]
//                             [--threads 0] [--reps 10]
//
// Defaults: the fla-340M head shape; 16 x 46 tokens is a HellaSwag batch of full requests,
// --seqs 64 --len 14 its continuations. Best of --reps; prints figures, asserts nothing.
#include <torch/torch.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <vector>

#include "kernels/delta_rule.h"
#include "kernels/short_conv.h"
#include "kernels/threads.h"

using namespace rankprune;
namespace po = boost::program_options;

int main(int argc, char** argv) {
  po::options_description d("bench_kernels options");
  d.add_options()("help,h", "help")("seqs", po::value<int64_t>()->default_value(16), "packed sequences")(
      "len", po::value<int64_t>()->default_value(46), "tokens per sequence")(
      "heads", po::value<int64_t>()->default_value(8), "heads")("dk", po::value<int64_t>()->default_value(128),
                                                                 "head dim (dk = dv)")(
      "channels", po::value<int64_t>()->default_value(1024), "short-conv channels")(
      "threads", po::value<int>()->default_value(0), "threads (0 = all cores; kernels/threads.h)")(
      "reps", po::value<int>()->default_value(10), "timed repetitions (best is reported)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, d), vm);
  if (vm.count("help")) {
    std::cout << d;
    return 0;
  }
  const int threads = set_cpu_threads(vm["threads"].as<int>()).blas;
  const int64_t S = vm["seqs"].as<int64_t>(), L = vm["len"].as<int64_t>(), H = vm["heads"].as<int64_t>();
  const int64_t dk = vm["dk"].as<int64_t>(), C = vm["channels"].as<int64_t>(), N = S * L;
  const int reps = vm["reps"].as<int>();
  auto best_of = [reps](auto&& fn) {
    fn();
    double best = 1e300;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  std::printf("bench_kernels: %lld sequences x %lld tokens, %lld heads of %lld x %lld, conv %lld channels, "
              "%d threads, f32, best of %d\n",
              static_cast<long long>(S), static_cast<long long>(L), static_cast<long long>(H),
              static_cast<long long>(dk), static_cast<long long>(dk), static_cast<long long>(C), threads, reps);

  torch::manual_seed(0);
  auto unit = [](const torch::Tensor& t) { return t / t.norm(2, -1, true); };
  const auto q = unit(torch::randn({1, H, N, dk})), k = unit(torch::randn({1, H, N, dk}));
  const auto v = torch::randn({1, H, N, dk}), beta = torch::rand({1, H, N});
  const auto g = -torch::rand({1, H, N}) * 0.1;
  const auto shared = torch::randn({16, H, dk, dk}) * 0.1;
  const std::vector<int64_t> lens(static_cast<std::size_t>(S), L);
  std::vector<int64_t> row_ids;
  for (int64_t b = 0; b < S; ++b) row_ids.push_back(b % 16);
  const auto rows = torch::tensor(row_ids);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  {
    torch::NoGradGuard ng;
    for (const bool gated : {false, true}) {
      const auto gt = gated ? g : torch::Tensor();
      const double fresh = best_of([&] {
        (void)delta_rule_recurrent_cpu(q, k, v, beta, gt, {}, scale, {}, true, &lens);
      });
      const double from = best_of([&] {
        (void)delta_rule_recurrent_cpu(q, k, v, beta, gt, shared, scale, rows, false, &lens);
      });
      std::printf("  scan %-8s fresh, final state out %7.2f us/token   from state rows %7.2f us/token\n",
                  gated ? "gated" : "ungated", 1e6 * fresh / static_cast<double>(N), 1e6 * from / static_cast<double>(N));
    }
  }
  const auto x = torch::randn({N, C}), w = torch::randn({C, 1, 4}), cache = torch::randn({S, C, 3});
  double direct = 0;
  {
    torch::NoGradGuard ng;
    direct = best_of([&] { (void)causal_conv1d_varlen(x, lens, w, {}, cache, nullptr); });
  }
  const auto xg = x.clone().requires_grad_(true);
  const double viatorch = best_of([&] { (void)causal_conv1d_varlen(xg, lens, w, {}, cache, nullptr); });
  std::printf("  short conv from caches: direct loop %.2f us/token, torch conv1d path %.2f us/token\n",
              1e6 * direct / static_cast<double>(N), 1e6 * viatorch / static_cast<double>(N));
  return 0;
}
