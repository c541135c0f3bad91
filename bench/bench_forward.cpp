// Forward throughput of the chunked (WY) and recurrent delta-rule paths on one random DeltaNet.
//
//   build/bench/bench_forward [--hidden 1024 --heads 8 --layers 4 --tokens 2048 --vocab 32000
//                              --chunk 64 --reps 3 --threads 0 --arch delta_net]
//
// Prints tokens/s (best of --reps after one warm-up) for the model body (final hidden states) and
// for the full forward including lm_head, per path, and the chunked/recurrent speed-up.
#include <torch/torch.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <iomanip>
#include <iostream>

#include "kernels/delta_rule.h"
#include "kernels/threads.h"
#include "model/linear_lm.h"

using namespace rankprune;
namespace po = boost::program_options;

int main(int argc, char** argv) {
  po::options_description d("bench_forward options");
  d.add_options()("help,h", "help")
      ("arch", po::value<std::string>()->default_value("delta_net"), "delta_net or gated_deltanet")
      ("hidden", po::value<int64_t>()->default_value(1024), "hidden size")
      ("heads", po::value<int64_t>()->default_value(8), "heads (dk = dv = hidden / heads)")
      ("layers", po::value<int64_t>()->default_value(4), "layers")
      ("tokens", po::value<int64_t>()->default_value(2048), "sequence length T")
      ("vocab", po::value<int64_t>()->default_value(32000), "vocabulary size")
      ("chunk", po::value<int64_t>()->default_value(64), "chunk size")
      ("reps", po::value<int>()->default_value(3), "timed repetitions (best is reported)")
      ("threads", po::value<int>()->default_value(0), "BLAS threads (0 = all cores; kernels/threads.h)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, d), vm);
  if (vm.count("help")) {
    std::cout << d << "\n";
    return 0;
  }
  const int threads = set_cpu_threads(vm["threads"].as<int>()).blas;

  const std::string arch = vm["arch"].as<std::string>();
  ModelConfig c = ModelConfig::defaults(arch == "gated_deltanet" ? Arch::GatedDeltaNet : Arch::DeltaNet);
  c.hidden_size = vm["hidden"].as<int64_t>();
  c.num_heads = vm["heads"].as<int64_t>();
  c.num_hidden_layers = vm["layers"].as<int64_t>();
  c.vocab_size = vm["vocab"].as<int64_t>();
  c.intermediate_size = 0;
  if (c.arch == Arch::GatedDeltaNet) {
    c.head_dim = c.hidden_size / c.num_heads;
    c.expand_v = 1.0;
  }
  c.finalize();
  LinearLM m(c, init_random_weights(c, 0, torch::kFloat32));
  const int64_t T = vm["tokens"].as<int64_t>();
  const int reps = vm["reps"].as<int>();
  auto ids = torch::randint(c.vocab_size, {1, T}, torch::kLong);
  torch::NoGradGuard ng;

  auto time_best = [&](auto&& fn) {
    fn();  // warm-up
    double best = 1e300;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  std::cout << "bench_forward: " << arch << " hidden " << c.hidden_size << ", " << c.num_heads << " heads (dk "
            << c.head_k_dim << ", dv " << c.head_v_dim << "), " << c.num_hidden_layers << " layers, vocab "
            << c.vocab_size << ", T " << T << ", f32, " << threads << " threads, best of " << reps << "\n";
  double body[2], full[2];
  const char* names[2] = {"chunked", "recurrent"};
  for (int i = 0; i < 2; ++i) {
    ForwardOptions o;
    o.impl = i == 0 ? DeltaRuleImpl::Chunked : DeltaRuleImpl::Recurrent;
    o.chunk_size = vm["chunk"].as<int64_t>();
    body[i] = time_best([&] { m.hidden(ids, nullptr, o); });
    full[i] = time_best([&] { m.forward(ids, nullptr, o); });
    std::cout << std::fixed << std::setprecision(1) << "  " << std::setw(9) << names[i] << "  body "
              << std::setw(9) << T / body[i] << " tok/s (" << std::setprecision(3) << body[i] << " s)   with lm_head "
              << std::setprecision(1) << std::setw(9) << T / full[i] << " tok/s (" << std::setprecision(3) << full[i]
              << " s)\n";
  }
  std::cout << std::setprecision(2) << "  speed-up chunked / recurrent: body " << body[1] / body[0] << "x, with lm_head "
            << full[1] / full[0] << "x\n";

  // The token-mixing path alone: the delta rule of every layer on the shapes the model feeds it
  // (L2-normalised q/k, sigmoid beta), i.e. what differs between the two paths.
  const int64_t H = c.n_v_heads, dk = c.head_k_dim, dv = c.head_v_dim;
  auto norm = [](const torch::Tensor& t) { return t / t.norm(2, -1, true); };
  auto q = norm(torch::randn({1, H, T, dk})), k = norm(torch::randn({1, H, T, dk}));
  auto v = torch::randn({1, H, T, dv}), beta = torch::rand({1, H, T});
  torch::Tensor g;
  if (c.arch == Arch::GatedDeltaNet) g = -torch::rand({1, H, T}) * 0.1;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  // Three implementations: chunked (WY form), the recurrence in torch ops (the differentiable
  // reference), and the fused CPU recurrence the forward uses without autograd.
  const char* knames[3] = {"chunked", "torch-recurrent", "fused-recurrent"};
  double kern[3];
  for (int i = 0; i < 3; ++i) {
    kern[i] = c.num_hidden_layers * time_best([&] {
      if (i == 0)
        delta_rule_chunked(q, k, v, beta, g, {}, scale, vm["chunk"].as<int64_t>());
      else if (i == 1)
        delta_rule_recurrent(q, k, v, beta, g, {}, scale);
      else
        delta_rule_recurrent_cpu(q, k, v, beta, g, {}, scale);
    });
    std::cout << std::fixed << std::setprecision(1) << "  " << std::setw(15) << knames[i] << "  delta rule only ("
              << c.num_hidden_layers << " layers) " << std::setw(9) << T / kern[i] << " tok/s (" << std::setprecision(3)
              << kern[i] << " s)\n";
  }
  std::cout << std::setprecision(2) << "  speed-up over the torch recurrence: chunked " << kern[1] / kern[0]
            << "x, fused " << kern[1] / kern[2] << "x\n";
  return 0;
}
