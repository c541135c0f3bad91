// Recovery fine-tuning: LoRA (zero B = the pruned model, merge = the wrapped model, gradients only
// in A and B), the distillation term (zero for identical logits, a hand-computed T^2-scaled
// value), KD reduction of a tiny pruned model toward its teacher, and the CLI with bad input.
//
// This binary links rp_worker only (not rp_prune), so the unit tests prune by hand the way
// apply_selection does (rows of q/k proj and channels of q/k conv, config with_head_k_dim); the CLI
// test prunes with `rankprune prune --method l1` (select_channels + apply_selection).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "model/linear_lm.h"
#include "model/safetensors.h"
#include "tests/testing/testing.h"
#include "worker/finetune.h"
#include "worker/train.h"

namespace rankprune {
namespace {

ModelShape tiny_shape(Arch arch, int64_t vocab = 256) {
  ModelShape s;
  s.arch = arch;
  s.hidden_size = 32, s.num_layers = 2, s.num_heads = 2, s.head_k_dim = 8, s.head_v_dim = 16;
  s.vocab_size = vocab, s.intermediate_size = 64;
  s.init_std = 0.2;  // pronounced logits: the teacher/student gap is not negligible
  return s;
}

LinearLM tiny_model(Arch arch, torch::ScalarType dtype, uint64_t seed = 1, int64_t vocab = 256) {
  ModelConfig cfg = build_model_config(tiny_shape(arch, vocab));
  return LinearLM(cfg, init_random_weights(cfg, seed, dtype));
}

// Keeps every other query/key channel of every head (what apply_selection does for a selection).
LinearLM prune_half(const LinearLM& m) {
  const ModelConfig& c = m.config();
  const int64_t H = c.num_heads, dk = c.head_k_dim, k = dk / 2;
  std::vector<int64_t> rows;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < k; ++i) rows.push_back(h * dk + 2 * i + (h % 2));
  auto idx = torch::tensor(rows, torch::kLong);
  LmWeights w = m.weights();
  for (auto& l : w.layers) {
    l.q_proj = l.q_proj.index_select(0, idx), l.k_proj = l.k_proj.index_select(0, idx);
    if (l.q_conv.defined()) l.q_conv = l.q_conv.index_select(0, idx), l.k_conv = l.k_conv.index_select(0, idx);
  }
  return LinearLM(c.with_head_k_dim(k), std::move(w));
}

std::string repetitive_text() {
  std::string t;
  for (int i = 0; i < 60; ++i) t += "the cat sat on the mat. ";
  return t;
}

ForwardOptions fwd(torch::ScalarType dt) {
  ForwardOptions fo;
  fo.dtype = dt, fo.impl = DeltaRuleImpl::Chunked, fo.chunk_size = 8;
  return fo;
}

LoraConfig lora(int64_t r, double alpha, std::vector<std::string> targets) {
  LoraConfig c;
  c.rank = r, c.alpha = alpha, c.targets = std::move(targets);
  return c;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// ------------------------------------------------------------------------------------------- LoRA

TEST(FinetuneLora, ZeroBEqualsTheBaseModelExactly) {
  auto ids = torch::randint(0, 256, {2, 19}, torch::kLong);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
      LinearLM base = prune_half(tiny_model(arch, dtype));
      LoraModel lm(base, lora(4, 8, {"q", "k", "v", "o"}), 7);
      ASSERT_EQ(lm.adapters().size(), 8u);
      for (const auto& a : lm.adapters()) {
        EXPECT_GT(a.A.abs().max().item<double>(), 0.0);  // A random, B zero
        EXPECT_EQ(a.B.abs().max().item<double>(), 0.0);
      }
      EXPECT_EQ(lm.adapters()[0].A.sizes(), torch::IntArrayRef({4, 32}));
      EXPECT_EQ(lm.adapters()[0].B.sizes(), torch::IntArrayRef({8, 4}));  // pruned q_proj: 2 heads x 4 rows
      auto ref = base.forward(ids, nullptr, fwd(torch::kFloat32));
      auto got = lm.forward(ids, fwd(torch::kFloat32));
      EXPECT_TRUE(torch::equal(ref, got)) << arch_name(arch) << " " << dtype << " max diff " << max_diff(ref, got);
      // The comparison can fail: a non-zero B changes the logits.
      {
        torch::NoGradGuard ng;
        lm.adapters()[0].B.fill_(0.05);
      }
      EXPECT_GT(max_diff(ref, lm.forward(ids, fwd(torch::kFloat32))), 1e-4);
    }
  }
}

TEST(FinetuneLora, MergedCheckpointComputesTheWrappedModel) {
  testing::TempDir tmp;
  auto ids = torch::randint(0, 256, {2, 21}, torch::kLong);
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    LinearLM base = prune_half(tiny_model(arch, torch::kFloat64, 3));
    LoraModel lm(base, lora(3, 12, {"q", "k", "v", "o"}), 5, torch::kFloat64);
    {
      torch::NoGradGuard ng;
      torch::manual_seed(11);
      for (auto& a : lm.adapters()) a.B.normal_(0.0, 0.1);
    }
    const std::string dir = tmp.file(arch_name(arch));
    std::filesystem::create_directories(dir);
    lm.merged().save(dir);
    LinearLM loaded = LinearLM::load(dir);
    EXPECT_EQ(loaded.weights().layers[0].q_proj.scalar_type(), torch::kFloat64);
    auto wrapped = lm.forward(ids, fwd(torch::kFloat64));
    auto merged = loaded.forward(ids, nullptr, fwd(torch::kFloat64));
    auto plain = base.forward(ids, nullptr, fwd(torch::kFloat64));
    EXPECT_GT(max_diff(wrapped, plain), 1e-3) << "the adapters must matter for this test";
    EXPECT_TRUE(torch::allclose(wrapped, merged, 1e-12, 1e-12)) << arch_name(arch) << " max diff "
                                                               << max_diff(wrapped, merged);
    // The merged weight is W + (alpha / r) B A.
    const auto& a0 = lm.adapters()[0];
    auto expect = base.weights().layers[0].q_proj + 4.0 * torch::matmul(a0.B, a0.A);
    EXPECT_LT(max_diff(loaded.weights().layers[0].q_proj, expect), 1e-14);
  }
}

TEST(FinetuneLora, OnlyAdaptersReceiveGradients) {
  LinearLM base = prune_half(tiny_model(Arch::GatedDeltaNet, torch::kFloat32));
  LoraModel lm(base, lora(2, 4, {"q", "v"}), 1);
  {
    torch::NoGradGuard ng;
    for (auto& a : lm.adapters()) a.B.normal_(0.0, 0.05);
  }
  auto ps = lm.parameters();
  ASSERT_EQ(ps.size(), 8u);  // 2 layers x 2 targets x (A, B)
  for (auto& p : ps) p.set_requires_grad(true);
  auto ids = torch::randint(0, 256, {2, 17}, torch::kLong);
  auto logits = lm.forward(ids.narrow(1, 0, 16), fwd(torch::kFloat32));
  auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 256}), ids.narrow(1, 1, 16).reshape({-1}));
  loss.backward();
  for (std::size_t i = 0; i < ps.size(); ++i) {
    ASSERT_TRUE(ps[i].grad().defined()) << i;
    EXPECT_GT(ps[i].grad().abs().max().item<double>(), 0.0) << i;
  }
  for (const auto& [n, t] : lm.base().named_tensors()) {
    EXPECT_FALSE(t.requires_grad()) << n;
    EXPECT_FALSE(t.grad().defined()) << n;
  }
}

TEST(FinetuneLora, TargetNamesAndBadConfigs) {
  EXPECT_EQ(parse_lora_targets({"v", "q_proj", "q"}), (std::vector<std::string>{"q", "v"}));
  EXPECT_EQ(parse_lora_targets({"o_proj", "k"}), (std::vector<std::string>{"k", "o"}));
  EXPECT_THROW(parse_lora_targets({"q", "gate"}), UsageError);
  EXPECT_THROW(parse_lora_targets({}), UsageError);
  LinearLM base = tiny_model(Arch::DeltaNet, torch::kFloat32);
  EXPECT_THROW(LoraModel(base, lora(0, 8, {"q"}), 0), UsageError);
  EXPECT_THROW(LoraModel(base, lora(2, 0, {"q"}), 0), UsageError);
  EXPECT_THROW(LoraModel(base, lora(2, 4, {"x"}), 0), UsageError);
}

// ------------------------------------------------------------------------------------------- loss

TEST(FinetuneLoss, DistillationIsZeroForIdenticalLogitsAndPositiveOtherwise) {
  torch::manual_seed(4);
  auto x = torch::randn({2, 5, 7}) * 3;
  auto y = x + 0.5 * torch::randn({2, 5, 7});
  for (double T : {0.5, 1.0, 2.0, 7.3}) {
    EXPECT_EQ(distill_loss(x, x, T).item<double>(), 0.0) << T;
    EXPECT_GT(distill_loss(y, x, T).item<double>(), 1e-4) << T;
  }
  // A constant shift of the logits does not change the distributions.
  EXPECT_NEAR(distill_loss(x + 2.0, x, 2.0).item<double>(), 0.0, 1e-6);
}

TEST(FinetuneLoss, DistillationHandComputedTwoTokensThreeWords) {
  const double s[2][3] = {{1.0, 2.0, 3.0}, {0.0, 0.5, -1.0}};
  const double t[2][3] = {{3.0, 1.0, 0.0}, {1.0, 1.0, 1.0}};
  auto st = torch::tensor({1.0, 2.0, 3.0, 0.0, 0.5, -1.0}, torch::kFloat64).view({1, 2, 3});
  auto tt = torch::tensor({3.0, 1.0, 0.0, 1.0, 1.0, 1.0}, torch::kFloat64).view({1, 2, 3});
  for (double T : {1.0, 2.0, 4.0}) {
    double sum_kl = 0;
    for (int i = 0; i < 2; ++i) {
      double zs = 0, zt = 0;
      for (int v = 0; v < 3; ++v) zs += std::exp(s[i][v] / T), zt += std::exp(t[i][v] / T);
      for (int v = 0; v < 3; ++v) {
        const double ps = std::exp(s[i][v] / T) / zs, pt = std::exp(t[i][v] / T) / zt;
        sum_kl += pt * std::log(pt / ps);
      }
    }
    const double expected = T * T * sum_kl / 2.0;  // T^2 * mean over the 2 tokens
    EXPECT_NEAR(distill_loss(st, tt, T).item<double>(), expected, 1e-12) << "T " << T;
  }
  // T = 2 worked out separately: KL per token 0.518454, 0.046170; T^2 * mean = 4 * 0.282312 = 1.129248.
  EXPECT_NEAR(distill_loss(st, tt, 2.0).item<double>(), 1.129248, 1e-6);
  // The direction is KL(teacher || student): swapping the arguments changes the value.
  EXPECT_GT(std::abs(distill_loss(tt, st, 2.0).item<double>() - distill_loss(st, tt, 2.0).item<double>()), 1e-3);
}

// ----------------------------------------------------------------------------------------- finetune

struct Fixture {
  testing::TempDir tmp;
  std::string teacher, student, data;
  explicit Fixture(Arch arch = Arch::DeltaNet) {
    teacher = tmp.file("teacher"), student = tmp.file("student"), data = tmp.file("cat.txt");
    std::filesystem::create_directories(student);
    write_file_atomic(data, repetitive_text());
    // The teacher knows the text (a few steps of `rankprune train`), as a real base model would.
    TrainOptions to;
    ModelShape shape = tiny_shape(arch);
    shape.init_std = 0.02;
    to.config = build_model_config(shape);
    to.data = {data}, to.tokenizer = "bytes";
    to.seq_len = 24, to.batch_size = 4, to.steps = 30, to.warmup = 3, to.lr = 1e-2, to.min_lr_ratio = 0.3;
    to.chunk_size = 8, to.log_every = 30, to.seed = 9;
    to.out = teacher;
    std::ostringstream tlog;
    train(to, tlog);
    prune_half(LinearLM::load(teacher)).save(student);
    write_file_atomic(path_join(student, "selection.json"), "{\"method\": \"hand\"}\n");
  }
  FinetuneOptions options(const std::string& out) const {
    FinetuneOptions o;
    o.model = student, o.teacher = teacher, o.data = {data}, o.tokenizer = "bytes";
    o.lora = lora(4, 8, {"q", "k", "v", "o"});
    o.temperature = 2.0;
    o.seq_len = 24, o.batch_size = 4, o.steps = 20, o.warmup = 2, o.lr = 2e-2, o.min_lr_ratio = 0.3;
    o.chunk_size = 8, o.log_every = 5;
    o.out = out;
    return o;
  }
};

double kd_on(const LinearLM& student, const LinearLM& teacher, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  return distill_loss(student.forward(ids, nullptr, fwd(torch::kFloat32)),
                      teacher.forward(ids, nullptr, fwd(torch::kFloat32)), 2.0)
      .item<double>();
}

TEST(Finetune, PrunedModelMovesTowardItsTeacher) {
  Fixture fx;
  FinetuneOptions o = fx.options(fx.tmp.file("out"));
  std::ostringstream log;
  FinetuneResult r = finetune(o, log);
  ASSERT_EQ(r.kd.size(), 20u);
  for (std::size_t i = 0; i < r.losses.size(); ++i) EXPECT_NEAR(r.losses[i], r.ce[i] + r.kd[i], 1e-4);

  // On fixed windows of the text: the merged result is closer to the teacher than the pruned start.
  auto teacher = LinearLM::load(fx.teacher), student = LinearLM::load(fx.student), tuned = LinearLM::load(o.out);
  std::vector<int64_t> bytes;
  for (unsigned char c : repetitive_text().substr(5, 3 * 24)) bytes.push_back(c);
  auto ids = torch::tensor(bytes, torch::kLong).view({3, 24});
  const double before = kd_on(student, teacher, ids), after = kd_on(tuned, teacher, ids);
  std::cout << "KD on fixed windows: pruned " << before << " -> fine-tuned " << after << "\n";
  EXPECT_GT(before, 1e-3);
  EXPECT_LT(after, 0.7 * before) << before << " -> " << after << "\n" << log.str();
  EXPECT_NEAR(r.kd[0], kd_on(student, teacher, ids), 0.5 * before + 1e-3);  // step 1 = the pruned model
  const double first = (r.kd[0] + r.kd[1] + r.kd[2]) / 3, last = (r.kd[17] + r.kd[18] + r.kd[19]) / 3;
  EXPECT_LT(last, first) << log.str();

  // The output: pruned config, the student's tensors and dtypes, copied selection, logs.
  EXPECT_EQ(tuned.config().head_k_dim, student.config().head_k_dim);
  EXPECT_EQ(tuned.named_tensors().size(), student.named_tensors().size());
  EXPECT_FALSE(torch::equal(tuned.weights().layers[0].q_proj, student.weights().layers[0].q_proj));
  EXPECT_TRUE(torch::equal(tuned.weights().layers[0].gate_proj, student.weights().layers[0].gate_proj));
  EXPECT_EQ(read_file(path_join(o.out, "selection.json")), read_file(path_join(fx.student, "selection.json")));
  EXPECT_TRUE(file_exists(path_join(o.out, "lora_adapter.safetensors")));
  auto lines = read_file(path_join(o.out, "finetune_log.jsonl"));
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 4);
  auto j = nlohmann::json::parse(lines.substr(lines.rfind('\n', lines.size() - 2) + 1));
  EXPECT_EQ(j["step"], 20);
  for (const char* k : {"loss", "ce", "kd", "lr", "tokens_per_s"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_NE(log.str().find("step 20/20 loss "), std::string::npos) << log.str();
  auto info = nlohmann::json::parse(read_file(path_join(o.out, "finetune.json")));
  EXPECT_EQ(info["lora_rank"], 4);
  EXPECT_EQ(info["targets"], nlohmann::json({"q", "k", "v", "o"}));
}

TEST(Finetune, Bf16StudentKeepsItsDtypeAndBadInputsAreRefused) {
  Fixture fx(Arch::GatedDeltaNet);
  // A bf16 student: the merged checkpoint stays bf16.
  const std::string bf = fx.tmp.file("student_bf16");
  std::filesystem::create_directories(bf);
  {
    auto s = LinearLM::load(fx.student);
    LmWeights w = s.weights();
    LinearLM m(s.config(), w);
    std::vector<std::pair<std::string, torch::Tensor>> ts;
    for (auto& [n, t] : m.named_tensors()) ts.emplace_back(n, t.to(torch::kBFloat16));
    save_checkpoint(bf, ts, {{"format", "pt"}});
    s.config().save(bf);
  }
  FinetuneOptions o = fx.options(fx.tmp.file("out_bf16"));
  o.model = bf, o.steps = 2, o.log_every = 1;
  std::ostringstream log;
  finetune(o, log);
  auto f = SafetensorsFile::open(path_join(o.out, "model.safetensors"));
  for (const auto& i : f->tensors()) EXPECT_EQ(f->tensor(i.name).scalar_type(), torch::kBFloat16) << i.name;

  auto expect_usage = [&](FinetuneOptions t, const std::string& needle) {
    try {
      finetune(t, log);
      ADD_FAILURE() << "expected UsageError: " << needle;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  FinetuneOptions b = fx.options(fx.tmp.file("bad"));
  b.steps = 2;
  FinetuneOptions t = b;
  t.lora.rank = 0;
  expect_usage(t, "--lora-rank must be >= 1");
  t = b, t.lora.targets = {"q", "w"};
  expect_usage(t, "unknown projection 'w'");
  t = b, t.temperature = 0;
  expect_usage(t, "--distill-temperature");
  // A teacher with another vocabulary.
  const std::string other = fx.tmp.file("other_vocab");
  std::filesystem::create_directories(other);
  tiny_model(Arch::GatedDeltaNet, torch::kFloat32, 2, 300).save(other);
  t = b, t.teacher = other;
  testing::expect_input_error([&] { finetune(t, log); }, {"vocab_size 300", "256", other});
  t = b, t.teacher = fx.tmp.file("nowhere");
  testing::expect_input_error([&] { finetune(t, log); }, {"--teacher", "nowhere"});
  t = b, t.out = o.out;  // not empty
  testing::expect_input_error([&] { finetune(t, log); }, {"already exists"});
  EXPECT_FALSE(file_exists(fx.tmp.file("bad")));  // nothing written on refusal
}

// -------------------------------------------------------------------------------------------- CLI

TEST(FinetuneCli, EndToEndAndClearErrors) {
  if (!file_exists(RANKPRUNE_BINARY)) GTEST_SKIP() << "rankprune binary not built";
  testing::TempDir tmp;
  const std::string base = tmp.file("base"), pruned = tmp.file("pruned"), data = tmp.file("cat.txt");
  std::filesystem::create_directories(base);
  tiny_model(Arch::DeltaNet, torch::kFloat32, 4).save(base);
  write_file_atomic(data, repetitive_text());
  auto r = testing::run_rankprune({"prune", "--model", base, "--method", "l1", "--ratio", "0.5", "--threads", "1",
                                   "--out", pruned});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto run = [&](const std::string& teacher, std::vector<std::string> extra) {
    std::vector<std::string> a{"finetune", "--model", pruned, "--teacher", teacher, "--data", data, "--tokenizer",
                               "bytes", "--seq-len", "16", "--steps", "3", "--batch-size", "2", "--threads", "1",
                               "--log-every", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return testing::run_rankprune(a);
  };
  r = run(base, {"--lora-rank", "4", "--lora-alpha", "8", "--targets", "q,k,v,o", "--out", tmp.file("o")});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("step 3/3 loss "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" kd "), std::string::npos) << r.out;
  for (const char* f : {"config.json", "model.safetensors", "selection.json", "finetune_log.jsonl",
                        "lora_adapter.safetensors", "finetune.json"})
    EXPECT_TRUE(file_exists(path_join(tmp.file("o"), f))) << f;
  EXPECT_EQ(LinearLM::load(tmp.file("o")).config().head_k_dim, 4);

  r = run(base, {"--lora-rank", "0", "--out", tmp.file("o2")});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.out;
  EXPECT_NE(r.out.find("--lora-rank must be >= 1"), std::string::npos) << r.out;
  r = run(base, {"--targets", "q,gate", "--out", tmp.file("o2")});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.out;
  EXPECT_NE(r.out.find("unknown projection 'gate'"), std::string::npos) << r.out;
  const std::string other = tmp.file("other");
  std::filesystem::create_directories(other);
  tiny_model(Arch::DeltaNet, torch::kFloat32, 4, 320).save(other);
  r = run(other, {"--out", tmp.file("o2")});
  EXPECT_EQ(r.exit_code, kExitInput) << r.out;
  EXPECT_NE(r.out.find("vocab_size 320"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(tmp.file("o2")));
}

}  // namespace
}  // namespace rankprune
