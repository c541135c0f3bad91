#include "worker/finetune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "worker/train.h"

namespace rankprune {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLogFile = "finetune_log.jsonl";

torch::Tensor& target_weight(LayerWeights& l, const std::string& t) {
  if (t == "q") return l.q_proj;
  if (t == "k") return l.k_proj;
  if (t == "v") return l.v_proj;
  RP_ASSERT(t == "o", "target ", t);
  return l.o_proj;
}

std::string fixed(double v, int prec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", v);
  return buf;
}

std::string join(const std::vector<std::string>& v, const char* sep = ",") {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

void check_lora(const LoraConfig& c) {
  if (c.rank < 1) throw UsageError(cat("--lora-rank must be >= 1, got ", c.rank));
  if (!(c.alpha > 0) || !std::isfinite(c.alpha)) throw UsageError(cat("--lora-alpha must be > 0, got ", c.alpha));
  parse_lora_targets(c.targets);
}

}  // namespace

// ------------------------------------------------------------------------------------------- LoRA

std::vector<std::string> parse_lora_targets(const std::vector<std::string>& names) {
  static const std::vector<std::string> order{"q", "k", "v", "o"};
  std::vector<bool> on(order.size(), false);
  for (const auto& raw : names) {
    std::string n = raw;
    if (n.size() > 5 && n.compare(n.size() - 5, 5, "_proj") == 0) n = n.substr(0, n.size() - 5);
    auto it = std::find(order.begin(), order.end(), n);
    if (it == order.end())
      throw UsageError(cat("--targets: unknown projection '", raw, "'; expected a comma-separated subset of q,k,v,o ",
                           "(q_proj, k_proj, v_proj, o_proj)"));
    on[static_cast<std::size_t>(it - order.begin())] = true;
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < order.size(); ++i)
    if (on[i]) out.push_back(order[i]);
  if (out.empty()) throw UsageError("--targets: at least one of q,k,v,o is required");
  return out;
}

std::string LoraAdapter::name() const { return cat("model.layers.", layer, ".attn.", target, "_proj"); }

LoraModel::LoraModel(LinearLM base, LoraConfig cfg, uint64_t seed, torch::ScalarType dtype)
    : base_(std::move(base)), cfg_(std::move(cfg)) {
  check_lora(cfg_);
  cfg_.targets = parse_lora_targets(cfg_.targets);
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  LmWeights w = base_.weights();
  for (int64_t l = 0; l < base_.config().num_hidden_layers; ++l) {
    for (const auto& t : cfg_.targets) {
      const torch::Tensor& W = target_weight(w.layers[static_cast<std::size_t>(l)], t);
      RP_CHECK_INPUT(W.defined() && W.dim() == 2, "layer ", l, " has no ", t, "_proj weight");
      const int64_t out = W.size(0), in = W.size(1);
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      LoraAdapter a;
      a.layer = l;
      a.target = t;
      a.A = at::empty({cfg_.rank, in}, torch::dtype(torch::kFloat32)).uniform_(-bound, bound, gen).to(dtype);
      a.B = torch::zeros({out, cfg_.rank}, torch::dtype(dtype));
      adapters_.push_back(std::move(a));
    }
  }
}

std::vector<torch::Tensor> LoraModel::parameters() const {
  std::vector<torch::Tensor> ps;
  for (const auto& a : adapters_) ps.push_back(a.A), ps.push_back(a.B);
  return ps;
}

LmWeights LoraModel::effective_weights() const {
  LmWeights w = base_.weights();  // shallow: tensors shared with the frozen base
  const double s = cfg_.scale();
  for (const auto& a : adapters_) {
    torch::Tensor& W = target_weight(w.layers[static_cast<std::size_t>(a.layer)], a.target);
    W = W + s * torch::matmul(a.B, a.A);
  }
  return w;
}

torch::Tensor LoraModel::forward(const torch::Tensor& ids, const ForwardOptions& opts) const {
  LinearLM m(base_.config(), effective_weights());
  return m.forward(ids, nullptr, opts);
}

LinearLM LoraModel::merged() const {
  torch::NoGradGuard ng;
  LmWeights w = base_.weights();
  const double s = cfg_.scale();
  for (const auto& a : adapters_) {
    torch::Tensor& W = target_weight(w.layers[static_cast<std::size_t>(a.layer)], a.target);
    W = (W + s * torch::matmul(a.B.detach(), a.A.detach())).to(W.scalar_type()).contiguous();
  }
  return LinearLM(base_.config(), std::move(w));
}

torch::Tensor distill_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           double temperature) {
  RP_ASSERT(student_logits.sizes() == teacher_logits.sizes(), "student ", student_logits.sizes(), " teacher ",
            teacher_logits.sizes());
  RP_ASSERT(temperature > 0);
  const auto dt = student_logits.scalar_type() == torch::kFloat64 || teacher_logits.scalar_type() == torch::kFloat64
                      ? torch::kFloat64
                      : torch::kFloat32;
  const int64_t V = student_logits.size(-1);
  auto ls = torch::log_softmax(student_logits.to(dt).reshape({-1, V}) / temperature, -1);
  auto lt = torch::log_softmax(teacher_logits.detach().to(dt).reshape({-1, V}) / temperature, -1);
  auto kl = (lt.exp() * (lt - ls)).sum(-1);  // [tokens]
  return kl.mean() * (temperature * temperature);
}

// --------------------------------------------------------------------------------------- finetune

namespace {

void validate(const FinetuneOptions& o) {
  if (o.model.empty()) throw UsageError("--model is required");
  if (o.teacher.empty()) throw UsageError("--teacher is required");
  if (o.out.empty()) throw UsageError("--out is required");
  if (o.data.empty()) throw UsageError("--data: at least one training file is required");
  check_lora(o.lora);
  if (!(o.temperature > 0) || !std::isfinite(o.temperature))
    throw UsageError(cat("--distill-temperature must be > 0, got ", o.temperature));
  if (!(o.distill_weight >= 0) || !std::isfinite(o.distill_weight))
    throw UsageError(cat("--distill-weight must be >= 0, got ", o.distill_weight));
  if (o.steps < 1) throw UsageError(cat("--steps must be >= 1, got ", o.steps));
  if (o.seq_len < 2) throw UsageError(cat("--seq-len must be >= 2, got ", o.seq_len));
  if (o.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", o.batch_size));
  if (o.warmup < -1) throw UsageError(cat("--warmup must be >= 0 (or -1 = steps / 20), got ", o.warmup));
  if (o.warmup > o.steps) throw UsageError(cat("--warmup ", o.warmup, " is longer than --steps ", o.steps));
  if (!(o.lr > 0) || !std::isfinite(o.lr)) throw UsageError(cat("--lr must be > 0, got ", o.lr));
  if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1))
    throw UsageError(cat("--min-lr-ratio must be in [0, 1], got ", o.min_lr_ratio));
  if (!(o.weight_decay >= 0)) throw UsageError(cat("--weight-decay must be >= 0, got ", o.weight_decay));
  if (!(o.grad_clip >= 0)) throw UsageError(cat("--grad-clip must be >= 0 (0 = off), got ", o.grad_clip));
  if (o.log_every < 1) throw UsageError(cat("--log-every must be >= 1, got ", o.log_every));
  if (o.chunk_size < 1) throw UsageError(cat("--chunk-size must be >= 1, got ", o.chunk_size));
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream f(path, std::ios::app);
  RP_CHECK_INPUT(f.good(), "cannot append to '", path, "'");
  f << line << "\n";
}

}  // namespace

FinetuneResult finetune(const FinetuneOptions& o, std::ostream& log) {
  validate(o);
  {
    std::error_code ec;
    RP_CHECK_INPUT(!fs::exists(o.out, ec) || (fs::is_directory(o.out, ec) && fs::is_empty(o.out, ec)), "--out '",
                   o.out, "' already exists and is not empty; choose another folder or remove it");
  }
  auto check_dir = [](const char* opt, const std::string& dir) {
    RP_CHECK_INPUT(is_directory(dir) && file_exists(path_join(dir, "config.json")), opt, " '", dir,
                   "' is not a model folder (no config.json)");
  };
  check_dir("--model", o.model);
  check_dir("--teacher", o.teacher);
  LinearLM student = LinearLM::load(o.model);
  LinearLM teacher = LinearLM::load(o.teacher);
  const ModelConfig& sc = student.config();
  const ModelConfig& tc = teacher.config();
  RP_CHECK_INPUT(sc.vocab_size == tc.vocab_size, "--teacher '", o.teacher, "' has vocab_size ", tc.vocab_size,
                 " but --model '", o.model, "' has ", sc.vocab_size,
                 "; the teacher must be the unpruned model the student was pruned from (same tokenizer and vocabulary)");
  RP_CHECK_INPUT(sc.hidden_size == tc.hidden_size, "--teacher '", o.teacher, "' has hidden_size ", tc.hidden_size,
                 " but --model '", o.model, "' has ", sc.hidden_size,
                 "; the teacher must be the unpruned model the student was pruned from");

  std::string tok_path = o.tokenizer;
  if (tok_path.empty()) {
    tok_path = path_join(o.model, "tokenizer.model");
    if (!file_exists(tok_path))
      throw UsageError(cat("--tokenizer is required: '", o.model, "' holds no tokenizer.model"));
  }
  auto tok = Tokenizer::load(tok_path);
  TrainData data = load_train_data(o.data, tok.get(), tok_path, o.seq_len, sc.vocab_size);
  const int64_t N = data.windows.size(0);

  // Torch dtypes of the student's tensors, by name, before anything is merged.
  const auto student_dtype = [&] {
    for (const auto& [n, t] : student.named_tensors())
      if (n.find("q_proj") != std::string::npos) return t.scalar_type();
    return torch::kFloat32;
  }();

  LoraModel lm(std::move(student), o.lora, o.seed, torch::kFloat32);
  const auto params = lm.parameters();
  std::vector<double> decay(params.size(), o.weight_decay);
  int64_t trainable = 0;
  for (const auto& p : params) trainable += p.numel();

  LrSchedule sched;
  sched.lr = o.lr;
  sched.min_lr_ratio = o.min_lr_ratio;
  sched.decay_steps = o.steps;
  sched.warmup = o.warmup >= 0 ? o.warmup : o.steps / 20;
  AdamW opt;

  AtomicDir tmp(o.out);
  const std::string log_path = path_join(tmp.path(), kLogFile);

  log << "finetuning " << arch_name(sc.arch) << " '" << o.model << "' (head_k_dim " << sc.head_k_dim
      << ") toward teacher '" << o.teacher << "' (head_k_dim " << tc.head_k_dim << "): LoRA rank " << o.lora.rank
      << " alpha " << o.lora.alpha << " on " << join(lm.lora_config().targets) << " (" << trainable
      << " trainable parameters), T " << o.temperature << ", distill weight " << o.distill_weight << ", " << o.steps
      << " steps on " << N << " windows of " << o.seq_len + 1 << " tokens, batch " << o.batch_size << "\n";

  ForwardOptions fo;
  fo.dtype = torch::kFloat32;
  fo.impl = DeltaRuleImpl::Chunked;
  fo.chunk_size = o.chunk_size;
  for (const auto& p : params) p.set_requires_grad(true);

  FinetuneResult res;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto last_log = t0;
  double i_loss = 0, i_ce = 0, i_kd = 0;
  int64_t i_steps = 0, tokens = 0;
  const int64_t V = sc.vocab_size;
  for (int64_t s = 1; s <= o.steps; ++s) {
    auto idx = batch_indices(N, o.batch_size, s, o.seed);
    auto batch = data.windows.index_select(0, torch::tensor(idx, torch::kLong));
    auto inp = batch.narrow(1, 0, o.seq_len), tgt = batch.narrow(1, 1, o.seq_len);
    for (const auto& p : params) p.mutable_grad() = torch::Tensor();
    auto logits = lm.forward(inp, fo);
    auto ce = torch::nn::functional::cross_entropy(logits.reshape({-1, V}), tgt.reshape({-1}));
    torch::Tensor kd;
    if (o.distill_weight > 0) {
      torch::Tensor tl;
      {
        torch::NoGradGuard ng;
        tl = teacher.forward(inp, nullptr, fo);
      }
      kd = distill_loss(logits, tl, o.temperature);
    } else {
      kd = torch::zeros({}, logits.options());
    }
    auto loss = ce + o.distill_weight * kd;
    loss.backward();
    const double loss_v = loss.item<double>(), ce_v = ce.item<double>(), kd_v = kd.item<double>();
    RP_CHECK_INPUT(std::isfinite(loss_v), "fine-tuning diverged at step ", s, ": loss is ", loss_v,
                   " (try a smaller --lr or a longer --warmup)");
    const double gn = clip_grad_norm(params, o.grad_clip);
    const double lr = lr_at(s, sched);
    opt.step(params, decay, lr);
    tokens += o.batch_size * o.seq_len;
    res.losses.push_back(loss_v);
    res.ce.push_back(ce_v);
    res.kd.push_back(kd_v);
    i_loss += loss_v, i_ce += ce_v, i_kd += kd_v, ++i_steps;

    if (s % o.log_every == 0 || s == o.steps) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - last_log).count();
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double tps = dt > 0 ? static_cast<double>(i_steps * o.batch_size * o.seq_len) / dt : 0.0;
      const double eta = elapsed / static_cast<double>(s) * static_cast<double>(o.steps - s);
      const double n = static_cast<double>(i_steps);
      log << "step " << s << "/" << o.steps << " loss " << fixed(i_loss / n, 3) << " ce " << fixed(i_ce / n, 3)
          << " kd " << fixed(i_kd / n, 4) << " lr " << sci(lr) << " grad_norm " << fixed(gn, 2) << " tok/s "
          << std::llround(tps) << " ETA " << format_duration(eta) << "\n";
      log.flush();
      nlohmann::ordered_json j;
      j["step"] = s;
      j["steps"] = o.steps;
      j["loss"] = i_loss / n;
      j["ce"] = i_ce / n;
      j["kd"] = i_kd / n;
      j["lr"] = lr;
      j["grad_norm"] = gn;
      j["tokens_per_s"] = tps;
      j["tokens"] = tokens;
      j["elapsed_s"] = elapsed;
      append_line(log_path, j.dump());
      last_log = now;
      i_loss = i_ce = i_kd = 0;
      i_steps = 0;
    }
  }
  for (const auto& p : params) {
    p.mutable_grad() = torch::Tensor();
    p.set_requires_grad(false);
  }

  // The merged checkpoint (tensors keep the student's dtypes) and what describes it.
  LinearLM merged = lm.merged();
  merged.save(tmp.path());
  bool have_tok = false;
  for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json", "selection.json", "pca_rotation.safetensors"}) {
    if (!file_exists(path_join(o.model, f))) continue;
    fs::copy_file(path_join(o.model, f), path_join(tmp.path(), f));
    if (std::string(f) == "tokenizer.model") have_tok = true;
  }
  if (!have_tok && tok_path != "bytes" && tok_path != "byte")
    fs::copy_file(tok_path, path_join(tmp.path(), "tokenizer.model"));
  std::vector<std::pair<std::string, torch::Tensor>> ad;
  for (const auto& a : lm.adapters()) {
    ad.emplace_back(a.name() + ".lora_A.weight", a.A.detach());
    ad.emplace_back(a.name() + ".lora_B.weight", a.B.detach());
  }
  save_safetensors(path_join(tmp.path(), "lora_adapter.safetensors"), ad,
                   {{"lora_rank", std::to_string(o.lora.rank)}, {"lora_alpha", cat(o.lora.alpha)},
                    {"targets", join(lm.lora_config().targets)}, {"merged", "true"}});
  nlohmann::ordered_json info;
  info["model"] = o.model;
  info["teacher"] = o.teacher;
  info["data"] = o.data;
  info["data_sha"] = data.data_sha;
  info["tokenizer"] = tok_path;
  info["lora_rank"] = o.lora.rank;
  info["lora_alpha"] = o.lora.alpha;
  info["lora_scale"] = o.lora.scale();
  info["targets"] = lm.lora_config().targets;
  info["trainable_parameters"] = trainable;
  info["distill_temperature"] = o.temperature;
  info["distill_weight"] = o.distill_weight;
  info["seq_len"] = o.seq_len;
  info["steps"] = o.steps;
  info["batch_size"] = o.batch_size;
  info["lr"] = o.lr;
  info["min_lr_ratio"] = o.min_lr_ratio;
  info["warmup"] = sched.warmup;
  info["weight_decay"] = o.weight_decay;
  info["grad_clip"] = o.grad_clip;
  info["seed"] = o.seed;
  info["chunk_size"] = o.chunk_size;
  info["student_dtype"] = std::string(c10::toString(student_dtype));
  info["final_loss"] = res.losses.back();
  info["final_ce"] = res.ce.back();
  info["final_kd"] = res.kd.back();
  write_file_atomic(path_join(tmp.path(), "finetune.json"), info.dump(2) + "\n");
  tmp.commit();
  log << "wrote " << o.out << " (LoRA merged into " << join(lm.lora_config().targets) << "; final loss "
      << fixed(res.losses.back(), 3) << " ce " << fixed(res.ce.back(), 3) << " kd " << fixed(res.kd.back(), 4)
      << ")\n";
  return res;
}

}  // namespace rankprune
