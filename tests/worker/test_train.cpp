// Training: gradients through the chunked delta rule, the optimiser pieces (schedule, clipping,
// AdamW), learning on a repetitive text, checkpoint/resume equal to an uninterrupted run, and
// refusals of bad options and mismatching resumes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "kernels/delta_rule.h"
#include "model/linear_lm.h"
#include "model/safetensors.h"
#include "tests/testing/testing.h"
#include "worker/train.h"

namespace rankprune {
namespace {

ModelShape tiny_shape(Arch arch) {
  ModelShape s;
  s.arch = arch;
  s.hidden_size = 32, s.num_layers = 2, s.num_heads = 2, s.head_k_dim = 8, s.head_v_dim = 16;
  s.vocab_size = 256, s.intermediate_size = 64;
  return s;
}

// A repetitive text: the model can learn it quickly.
std::string repetitive_text() {
  std::string t;
  for (int i = 0; i < 60; ++i) t += "the cat sat on the mat. ";
  return t;
}

TrainOptions tiny_options(const std::string& data, const std::string& out, Arch arch = Arch::DeltaNet) {
  TrainOptions o;
  o.config = build_model_config(tiny_shape(arch));
  o.data = {data};
  o.tokenizer = "bytes";
  o.seq_len = 24, o.batch_size = 4, o.steps = 6, o.warmup = 2, o.lr = 1e-2;
  o.chunk_size = 8;  // 3 chunks per sequence: the inter-chunk recurrence is exercised
  o.log_every = 2;
  o.out = out;
  return o;
}

std::map<std::string, torch::Tensor> read_weights(const std::string& dir) {
  std::map<std::string, torch::Tensor> m;
  auto f = SafetensorsFile::open(path_join(dir, "model.safetensors"));
  for (const auto& i : f->tensors()) m[i.name] = f->tensor(i.name).clone();
  return m;
}

void expect_same_weights(const std::string& a, const std::string& b) {
  auto wa = read_weights(a), wb = read_weights(b);
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [n, t] : wa) {
    ASSERT_TRUE(wb.count(n)) << n;
    EXPECT_TRUE(torch::equal(t, wb[n])) << n << " max diff " << (t - wb[n]).abs().max().item<double>();
  }
}

// --------------------------------------------------------------------------------------- gradients

TEST(TrainGrad, ChunkedDeltaRuleGradientsMatchRecurrent) {
  torch::manual_seed(3);
  const int64_t B = 2, H = 2, T = 13, dk = 4, dv = 5;
  auto o64 = torch::dtype(torch::kFloat64);
  for (bool gated : {false, true}) {
    auto mk = [&](std::vector<int64_t> shape) { return torch::randn(shape, o64).requires_grad_(true); };
    auto q = mk({B, H, T, dk}), k0 = mk({B, H, T, dk}), v = mk({B, H, T, dv}), s0 = mk({B, H, dk, dv});
    auto braw = mk({B, H, T}), graw = mk({B, H, T});
    auto run = [&](bool chunked) {
      auto k = torch::nn::functional::normalize(k0, torch::nn::functional::NormalizeFuncOptions().dim(-1));
      auto beta = torch::sigmoid(braw);
      auto g = gated ? -torch::softplus(graw) : torch::Tensor();
      auto r = chunked ? delta_rule_chunked(q, k, v, beta, g, s0, 0.5, 4) : delta_rule_recurrent(q, k, v, beta, g, s0, 0.5);
      auto w1 = torch::linspace(-1, 1, r.o.numel(), o64).view(r.o.sizes());
      auto w2 = torch::linspace(1, 2, r.s.numel(), o64).view(r.s.sizes());
      auto loss = (r.o * w1).sum() + (r.s * w2).sum();
      std::vector<torch::Tensor> inputs{q, k0, v, s0, braw};
      if (gated) inputs.push_back(graw);
      return torch::autograd::grad({loss}, inputs);
    };
    auto gr = run(false), gc = run(true);
    ASSERT_EQ(gr.size(), gc.size());
    for (std::size_t i = 0; i < gr.size(); ++i) {
      ASSERT_TRUE(gc[i].defined()) << "gated " << gated << " input " << i;
      EXPECT_GT(gr[i].abs().max().item<double>(), 1e-6) << "gated " << gated << " input " << i;
      EXPECT_TRUE(torch::allclose(gr[i], gc[i], 1e-9, 1e-10))
          << "gated " << gated << " input " << i << " max diff " << (gr[i] - gc[i]).abs().max().item<double>();
    }
  }
}

TEST(TrainGrad, ModelGradientsChunkedMatchRecurrentBothArchs) {
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    ModelShape s = tiny_shape(arch);
    s.init_std = 0.2;  // larger weights: a non-trivial recurrence
    ModelConfig cfg = build_model_config(s);
    LinearLM m(cfg, init_random_weights(cfg, 5, torch::kFloat64));
    std::vector<torch::Tensor> ps;
    for (const auto& [n, t] : m.named_tensors()) ps.push_back(t.set_requires_grad(true));
    auto ids = torch::randint(0, 256, {2, 11}, torch::kLong);
    auto grads = [&](DeltaRuleImpl impl) {
      ForwardOptions fo;
      fo.dtype = torch::kFloat64, fo.impl = impl, fo.chunk_size = 4;
      auto logits = m.forward(ids.narrow(1, 0, 10), nullptr, fo);
      auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 256}), ids.narrow(1, 1, 10).reshape({-1}));
      return torch::autograd::grad({loss}, ps);
    };
    auto gr = grads(DeltaRuleImpl::Recurrent), gc = grads(DeltaRuleImpl::Chunked);
    for (std::size_t i = 0; i < ps.size(); ++i) {
      EXPECT_TRUE(torch::allclose(gr[i], gc[i], 1e-8, 1e-11))
          << arch_name(arch) << " tensor " << i << " max diff " << (gr[i] - gc[i]).abs().max().item<double>();
    }
    // The gated parameters receive gradient (the decay path is differentiated).
    if (arch == Arch::GatedDeltaNet) {
      const auto& L = m.weights().layers[0];
      std::size_t ia = 0;
      for (std::size_t i = 0; i < ps.size(); ++i)
        if (ps[i].is_same(L.A_log)) ia = i;
      EXPECT_GT(gc[ia].abs().max().item<double>(), 0.0);
    }
  }
}

// ------------------------------------------------------------------------------ optimiser pieces

TEST(TrainOptim, LrScheduleValues) {
  LrSchedule s;
  s.lr = 1e-3, s.min_lr_ratio = 0.1, s.warmup = 10, s.decay_steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(1, s), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(5, s), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(10, s), 1e-3);
  // Half-way through the decay: (max + min) / 2.
  EXPECT_NEAR(lr_at(60, s), 0.55e-3, 1e-15);
  // A quarter: min + (max - min) (1 + cos(pi/4)) / 2.
  EXPECT_NEAR(lr_at(35, s), 1e-4 + 9e-4 * (1 + std::sqrt(0.5)) / 2, 1e-15);
  EXPECT_NEAR(lr_at(110, s), 1e-4, 1e-15);
  EXPECT_NEAR(lr_at(500, s), 1e-4, 1e-15);  // past the horizon: min lr
  s.warmup = 0;
  EXPECT_NEAR(lr_at(1, s), 1e-4 + 9e-4 * (1 + std::cos(M_PI / 110)) / 2, 1e-15);
}

TEST(TrainOptim, GradClipCapsTheGlobalNorm) {
  auto a = torch::zeros({3}, torch::requires_grad()), b = torch::zeros({2, 2}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f, 0.0f});
  b.mutable_grad() = torch::full({2, 2}, 2.0f);  // norm 4: global norm 5
  auto ga = a.grad().clone(), gb = b.grad().clone();
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0), 5.0, 1e-6);  // under the cap: untouched
  EXPECT_TRUE(torch::equal(a.grad(), ga));
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  const double after = std::sqrt(a.grad().pow(2).sum().item<double>() + b.grad().pow(2).sum().item<double>());
  EXPECT_NEAR(after, 1.0, 1e-5);
  EXPECT_TRUE(torch::allclose(b.grad(), gb / 5.0, 1e-5));  // direction kept
  // Same as torch's own clip_grad_norm_.
  auto c = torch::zeros({4}, torch::requires_grad()), d = torch::zeros({4}, torch::requires_grad());
  c.mutable_grad() = torch::tensor({1.0f, -2.0f, 3.0f, 0.5f});
  d.mutable_grad() = c.grad().clone();
  const double n1 = clip_grad_norm({c}, 0.7);
  const double n2 = torch::nn::utils::clip_grad_norm_(std::vector<torch::Tensor>{d}, 0.7);
  EXPECT_NEAR(n1, n2, 1e-5);
  EXPECT_TRUE(torch::allclose(c.grad(), d.grad(), 1e-6, 1e-7));
}

TEST(TrainOptim, AdamWMatchesTorch) {
  torch::manual_seed(1);
  auto p1 = torch::randn({5, 3}), p2 = torch::randn({4});
  auto q1 = p1.clone().requires_grad_(true), q2 = p2.clone().requires_grad_(true);
  p1.requires_grad_(true), p2.requires_grad_(true);
  torch::optim::AdamW ref({torch::optim::OptimizerParamGroup({q1}, std::make_unique<torch::optim::AdamWOptions>(
                                                                        torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.1))),
                           torch::optim::OptimizerParamGroup({q2}, std::make_unique<torch::optim::AdamWOptions>(
                                                                        torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.0)))},
                          torch::optim::AdamWOptions(0.01));
  AdamW mine;
  for (int it = 0; it < 4; ++it) {
    auto g1 = torch::randn({5, 3}), g2 = torch::randn({4});
    p1.mutable_grad() = g1.clone(), p2.mutable_grad() = g2.clone();
    q1.mutable_grad() = g1.clone(), q2.mutable_grad() = g2.clone();
    mine.step({p1, p2}, {0.1, 0.0}, 0.01);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(p1, q1, 1e-6, 1e-7)) << (p1 - q1).abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(p2, q2, 1e-6, 1e-7)) << (p2 - q2).abs().max().item<double>();
  EXPECT_EQ(mine.t, 4);
}

TEST(TrainData, WindowsShareOneTokenAndBatchesAreSeededPermutations) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("a.txt"), "abcdefghij");  // 10 byte tokens, no BOS
  auto tok = Tokenizer::load("bytes");
  auto d = load_train_data({tmp.file("a.txt")}, tok.get(), "bytes", 3, 256);
  ASSERT_EQ(d.windows.sizes(), (std::vector<int64_t>{3, 4}));  // (10 - 1) / 3 windows of 4
  EXPECT_EQ(d.windows[1][0].item<int64_t>(), 'd');
  EXPECT_EQ(d.windows[0][3].item<int64_t>(), 'd');
  // Every window once per epoch; deterministic in (seed, step).
  for (int64_t n : {1, 7, 10}) {
    std::vector<int64_t> all;
    for (int64_t s = 1; s <= n; ++s) {
      auto b = batch_indices(n, 1, s, 9);
      all.push_back(b[0]);
    }
    std::sort(all.begin(), all.end());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(all[i], i);
  }
  EXPECT_EQ(batch_indices(50, 4, 7, 1), batch_indices(50, 4, 7, 1));
  EXPECT_NE(batch_indices(50, 8, 7, 1), batch_indices(50, 8, 7, 2));
  EXPECT_NE(batch_indices(50, 8, 1, 1), batch_indices(50, 8, 2, 1));
}

// ---------------------------------------------------------------------------------------- training

TEST(Train, LossDecreasesOnRepetitiveText) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    TrainOptions o = tiny_options(tmp.file("cat.txt"), tmp.file(arch_name(arch)), arch);
    o.steps = 30, o.warmup = 3, o.lr = 1e-2, o.min_lr_ratio = 0.3, o.log_every = 10;
    std::ostringstream log;
    auto r = train(o, log);
    ASSERT_EQ(r.losses.size(), 30u);
    const double first = r.losses[0], last = (r.losses[27] + r.losses[28] + r.losses[29]) / 3;
    EXPECT_NEAR(first, std::log(256.0), 0.5);  // random init: ~uniform over the bytes
    EXPECT_LT(last, 0.4 * first) << arch_name(arch) << ": " << first << " -> " << last << "\n" << log.str();
    EXPECT_NE(log.str().find("step 30/30 loss "), std::string::npos) << log.str();
    EXPECT_NE(log.str().find(" tok/s "), std::string::npos);
    // The result is a loadable fla checkpoint that computes what training ended with.
    auto m = LinearLM::load(o.out);
    EXPECT_EQ(m.config().arch, arch);
    auto lines = read_file(path_join(o.out, "train_log.jsonl"));
    EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 3);
    auto j = nlohmann::json::parse(lines.substr(lines.rfind('\n', lines.size() - 2) + 1));
    EXPECT_EQ(j["step"], 30);
    EXPECT_TRUE(j.contains("loss") && j.contains("lr") && j.contains("grad_norm") && j.contains("tokens_per_s"));
  }
}

TEST(Train, ResumeEqualsUninterruptedRun) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  std::ostringstream log;
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    const std::string a = tmp.file(cat("full_", arch_name(arch))), b = tmp.file(cat("split_", arch_name(arch))),
                      c = tmp.file(cat("killed_", arch_name(arch)));
    // Uninterrupted: 6 steps, checkpoint every 3.
    TrainOptions full = tiny_options(tmp.file("cat.txt"), a, arch);
    full.checkpoint_every = 3;
    auto ra = train(full, log);
    // 3 steps (same 6-step schedule), then the same command to 6 steps.
    TrainOptions part = tiny_options(tmp.file("cat.txt"), b, arch);
    part.steps = 3, part.decay_steps = 6;
    train(part, log);
    part.steps = 6;
    auto rb = train(part, log);
    EXPECT_EQ(rb.start_step, 3);
    expect_same_weights(a, b);
    EXPECT_EQ(ra.losses, rb.losses);
    // Killed during step 5 (checkpoint at 3), re-run with the same command.
    TrainOptions k = tiny_options(tmp.file("cat.txt"), c, arch);
    k.checkpoint_every = 3;
    k.after_step = [](int64_t s) {
      if (s == 4) throw std::runtime_error("killed");
    };
    EXPECT_THROW(train(k, log), std::runtime_error);
    k.after_step = nullptr;
    auto rc = train(k, log);
    EXPECT_EQ(rc.start_step, 3);
    expect_same_weights(a, c);
    // The log holds each step once (lines past the checkpoint were dropped on resume).
    auto lines = read_file(path_join(c, "train_log.jsonl"));
    EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 3) << lines;
    // Already there: nothing to do, nothing changes.
    auto rd = train(k, log);
    EXPECT_TRUE(rd.nothing_to_do);
    EXPECT_EQ(rd.final_step, 6);
    expect_same_weights(a, c);
  }
  EXPECT_NE(log.str().find("nothing to do"), std::string::npos);
}

TEST(Train, Bf16ExportKeepsFloat32State) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  TrainOptions o = tiny_options(tmp.file("cat.txt"), tmp.file("m"));
  o.steps = 2, o.save_dtype = torch::kBFloat16;
  std::ostringstream log;
  train(o, log);
  auto w = read_weights(o.out);
  for (const auto& [n, t] : w) EXPECT_EQ(t.scalar_type(), torch::kBFloat16) << n;
  auto st = SafetensorsFile::open(path_join(o.out, "train_state.safetensors"));
  auto p = st->tensor("param/model.embeddings.weight");
  EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(p.to(torch::kBFloat16), w["model.embeddings.weight"]));
  auto js = nlohmann::json::parse(read_file(path_join(o.out, "train_state.json")));
  EXPECT_EQ(js["step"], 2);
}

TEST(Train, MismatchingResumeIsRefused) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  TrainOptions o = tiny_options(tmp.file("cat.txt"), tmp.file("m"));
  o.steps = 2;
  std::ostringstream log;
  train(o, log);
  auto before = read_file(path_join(o.out, "model.safetensors"));
  TrainOptions wider = o;
  ModelShape s = tiny_shape(Arch::DeltaNet);
  s.hidden_size = 48;
  wider.config = build_model_config(s);
  wider.steps = 4;
  testing::expect_input_error([&] { train(wider, log); },
                              {"different configuration", "config.hidden_size: checkpoint 32, now 48"});
  TrainOptions lr = o;
  lr.steps = 4, lr.lr = 5e-3;
  testing::expect_input_error([&] { train(lr, log); }, {"lr: checkpoint 0.01, now 0.005"});
  // A longer --steps changes the default cosine horizon: refused, with --decay-steps the way out.
  TrainOptions longer = o;
  longer.steps = 4;
  testing::expect_input_error([&] { train(longer, log); }, {"decay_steps: checkpoint 2, now 4", "--decay-steps"});
  EXPECT_EQ(read_file(path_join(o.out, "model.safetensors")), before);  // untouched
  // A non-empty folder that is not a training run.
  std::filesystem::create_directories(tmp.file("other"));
  write_file_atomic(tmp.file("other/x.txt"), "x");
  TrainOptions other = o;
  other.out = tmp.file("other");
  testing::expect_input_error([&] { train(other, log); }, {"not empty", "train_state.safetensors"});
}

TEST(Train, BadOptionsGiveClearErrors) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  std::ostringstream log;
  auto usage = [&](TrainOptions o, const std::string& needle) {
    try {
      train(o, log);
      ADD_FAILURE() << "expected UsageError with " << needle;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  TrainOptions o = tiny_options(tmp.file("cat.txt"), tmp.file("m"));
  TrainOptions t = o;
  t.steps = 0;
  usage(t, "--steps must be >= 1");
  t = o, t.seq_len = 1;
  usage(t, "--seq-len must be >= 2");
  t = o, t.batch_size = 0;
  usage(t, "--batch-size");
  t = o, t.lr = 0;
  usage(t, "--lr");
  t = o, t.warmup = 100;
  usage(t, "--warmup");
  t = o, t.data = {tmp.file("missing.txt")};
  testing::expect_input_error([&] { train(t, log); }, {"missing.txt", "does not exist"});
  write_file_atomic(tmp.file("short.txt"), "abc");
  t = o, t.data = {tmp.file("short.txt")};
  testing::expect_input_error([&] { train(t, log); }, {"too short"});
  EXPECT_FALSE(file_exists(tmp.file("m")));  // nothing written on refusal
}

TEST(TrainCli, OptionErrorsAndOneTinyRun) {
  if (!file_exists(RANKPRUNE_BINARY)) GTEST_SKIP() << "rankprune binary not built";
  testing::TempDir tmp;
  write_file_atomic(tmp.file("cat.txt"), repetitive_text());
  const std::vector<std::string> base{"train",        "--arch",      "delta_net", "--hidden-size", "32",
                                      "--num-layers", "1",           "--num-heads", "2",           "--head-k-dim",
                                      "8",            "--head-v-dim", "8",         "--tokenizer",   "bytes",
                                      "--data",       tmp.file("cat.txt"), "--seq-len", "16"};
  auto run = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return testing::run_rankprune(a);
  };
  auto r = run({"--steps", "0", "--out", tmp.file("o")});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.out;
  EXPECT_NE(r.out.find("--steps must be >= 1"), std::string::npos) << r.out;
  r = run({"--steps", "2", "--save-dtype", "f16", "--out", tmp.file("o")});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.out;
  r = run({"--steps", "2", "--log-every", "1", "--save-dtype", "bf16", "--threads", "1", "--out", tmp.file("o")});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("step 2/2 loss "), std::string::npos) << r.out;
  EXPECT_TRUE(file_exists(tmp.file("o/config.json")));
  r = run({"--steps", "2", "--out", tmp.file("o")});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing to do"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace rankprune
