#include "worker/train.h"

#include "worker/calibration.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"
#include "common/random.h"
#include "common/sha256.h"
#include "model/linear_lm.h"
#include "model/npy.h"
#include "model/safetensors.h"

namespace rankprune {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "train_state.safetensors";
constexpr const char* kStateJson = "train_state.json";
constexpr const char* kLogFile = "train_log.jsonl";
constexpr const char* kStateFormat = "rankprune-train-state-v1";



// "2.9e-3"
std::string short_sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", v);
  std::string s = buf;
  auto e = s.find('e');
  if (e == std::string::npos) return s;
  std::string mant = s.substr(0, e), ex = s.substr(e + 1);
  std::string sign;
  if (!ex.empty() && (ex[0] == '-' || ex[0] == '+')) sign = ex[0] == '-' ? "-" : "", ex = ex.substr(1);
  while (ex.size() > 1 && ex[0] == '0') ex = ex.substr(1);
  return mant + "e" + sign + ex;
}

std::string fixed(double v, int prec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

const char* dtype_label(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "f32"; }

}  // namespace

// ------------------------------------------------------------------------------------- model shape

// ------------------------------------------------------------------------------ schedule, clipping

double lr_at(int64_t step, const LrSchedule& s) {
  const double min_lr = s.lr * s.min_lr_ratio;
  if (s.warmup > 0 && step <= s.warmup) return s.lr * static_cast<double>(step) / static_cast<double>(s.warmup);
  const int64_t span = s.decay_steps - s.warmup;
  if (span <= 0) return min_lr;
  const double p = std::min(1.0, static_cast<double>(step - s.warmup) / static_cast<double>(span));
  return min_lr + (s.lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(torch::kFloat64));
  if (norms.empty()) return 0.0;
  const double total = torch::stack(norms).norm(2).item<double>();
  if (max_norm > 0 && total > max_norm) {
    const double f = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(f);
  }
  return total;
}

void AdamW::step(const std::vector<torch::Tensor>& params, const std::vector<double>& decay, double lr) {
  RP_ASSERT(decay.size() == params.size());
  torch::NoGradGuard ng;
  if (exp_avg.empty()) {
    for (const auto& p : params) {
      exp_avg.push_back(torch::zeros_like(p));
      exp_avg_sq.push_back(torch::zeros_like(p));
    }
  }
  RP_ASSERT(exp_avg.size() == params.size() && exp_avg_sq.size() == params.size());
  ++t;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  for (std::size_t i = 0; i < params.size(); ++i) {
    auto p = params[i];
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (decay[i] != 0) p.mul_(1.0 - lr * decay[i]);
    exp_avg[i].mul_(beta1).add_(g, 1.0 - beta1);
    exp_avg_sq[i].mul_(beta2).addcmul_(g, g, 1.0 - beta2);
    auto denom = (exp_avg_sq[i].sqrt() / std::sqrt(bc2)).add_(eps);
    p.addcdiv_(exp_avg[i], denom, -lr / bc1);
  }
}

// ------------------------------------------------------------------------------------------- data

TrainData load_train_data(const std::vector<std::string>& files, const Tokenizer* tok, const std::string& tok_path,
                          int64_t seq_len, int64_t vocab_size, bool add_bos) {
  if (files.empty()) throw UsageError("--data: at least one training file is required");
  if (seq_len < 2) throw UsageError(cat("--seq-len must be >= 2, got ", seq_len));
  const int64_t W = seq_len + 1;
  Sha256 identity;
  identity.update(cat("rankprune-train-data-v1|L=", seq_len, "|bos=", add_bos));
  std::vector<torch::Tensor> rows;
  std::vector<int64_t> stream;
  for (const auto& f : files) {
    RP_CHECK_INPUT(file_exists(f) && !is_directory(f), "training data '", f, "' does not exist");
    identity.update(cat("|file=", sha256_file(f)));
    if (lower_extension(f) == ".npy") {
      auto a = read_npy(f);
      RP_CHECK_INPUT(a.dim() == 2 && (a.scalar_type() == torch::kInt32 || a.scalar_type() == torch::kInt64), "'", f,
                     "': expected int32 or int64 token ids of shape [N, seq_len + 1], got ", a.scalar_type(), " ",
                     a.sizes());
      RP_CHECK_INPUT(a.size(1) == W, "'", f, "': rows have ", a.size(1), " tokens but training windows have --seq-len + 1 = ",
                     W);
      a = a.to(torch::kLong);
      if (a.numel() > 0) {
        const int64_t lo = a.min().item<int64_t>(), hi = a.max().item<int64_t>();
        RP_CHECK_INPUT(lo >= 0 && hi < vocab_size, "'", f, "': token id ", lo < 0 ? lo : hi,
                       " is outside the model's vocabulary [0, ", vocab_size, ")");
      }
      rows.push_back(a);
      continue;
    }
    RP_CHECK_INPUT(tok != nullptr, "training data '", f, "' is text: a --tokenizer is required");
    for (const auto& doc : read_documents(f, "training data")) {
      if (add_bos && tok->bos_id() >= 0) stream.push_back(tok->bos_id());
      for (int id : tok->encode(doc)) stream.push_back(id);
    }
  }
  TrainData d;
  d.stream_tokens = static_cast<int64_t>(stream.size());
  if (!stream.empty()) {
    identity.update(cat("|tokenizer=", tok_path == "bytes" ? std::string("bytes") : sha256_file(tok_path)));
    RP_CHECK_INPUT(tok->vocab_size() <= vocab_size, "tokenizer '", tok_path, "' has ", tok->vocab_size(),
                   " pieces but the model's vocabulary is ", vocab_size);
    auto t = torch::tensor(stream, torch::kLong);
    const int64_t n = (t.size(0) - 1) / seq_len;  // windows [w L, w L + L] (stride L, length L + 1)
    if (n > 0) rows.push_back(t.as_strided({n, W}, {seq_len, 1}).clone());
  }
  int64_t total = 0;
  for (const auto& r : rows) total += r.size(0);
  RP_CHECK_INPUT(total >= 1, "training data too short: ", files.size(), " file(s) hold ", stream.size(),
                 " text tokens, fewer than one window of --seq-len + 1 = ", W, " tokens");
  d.windows = torch::cat(rows, 0).contiguous();
  d.data_sha = identity.hex_digest();
  return d;
}

std::vector<int64_t> batch_indices(int64_t n, int64_t batch, int64_t step, uint64_t seed) {
  RP_ASSERT(n >= 1 && batch >= 1 && step >= 1, "n ", n, " batch ", batch, " step ", step);
  std::vector<int64_t> out;
  out.reserve(static_cast<std::size_t>(batch));
  int64_t cached_epoch = -1;
  std::vector<int64_t> perm;
  for (int64_t i = (step - 1) * batch; i < step * batch; ++i) {
    const int64_t epoch = i / n, pos = i % n;
    if (epoch != cached_epoch) {
      // Fisher-Yates over a splitmix64 stream seeded by (seed, epoch): platform-independent.
      perm.resize(static_cast<std::size_t>(n));
      for (int64_t j = 0; j < n; ++j) perm[j] = j;
      uint64_t st = seed ^ (0x5851f42d4c957f2dULL * static_cast<uint64_t>(epoch + 1));
      splitmix64(st);
      for (int64_t j = n - 1; j > 0; --j)
        std::swap(perm[j], perm[static_cast<int64_t>(uniform_below(st, static_cast<uint64_t>(j + 1)))]);
      cached_epoch = epoch;
    }
    out.push_back(perm[static_cast<std::size_t>(pos)]);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ train

namespace {

void validate(const TrainOptions& o) {
  if (o.steps < 1) throw UsageError(cat("--steps must be >= 1, got ", o.steps));
  if (o.seq_len < 2) throw UsageError(cat("--seq-len must be >= 2, got ", o.seq_len));
  if (o.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", o.batch_size));
  if (o.decay_steps < 0) throw UsageError(cat("--decay-steps must be >= 0, got ", o.decay_steps));
  if (!(o.lr > 0) || !std::isfinite(o.lr)) throw UsageError(cat("--lr must be > 0, got ", o.lr));
  if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1))
    throw UsageError(cat("--min-lr-ratio must be in [0, 1], got ", o.min_lr_ratio));
  if (!(o.weight_decay >= 0)) throw UsageError(cat("--weight-decay must be >= 0, got ", o.weight_decay));
  if (!(o.beta1 >= 0 && o.beta1 < 1)) throw UsageError(cat("--beta1 must be in [0, 1), got ", o.beta1));
  if (!(o.beta2 >= 0 && o.beta2 < 1)) throw UsageError(cat("--beta2 must be in [0, 1), got ", o.beta2));
  if (!(o.eps > 0)) throw UsageError(cat("--eps must be > 0, got ", o.eps));
  if (!(o.grad_clip >= 0)) throw UsageError(cat("--grad-clip must be >= 0 (0 = off), got ", o.grad_clip));
  if (o.checkpoint_every < 0) throw UsageError(cat("--checkpoint-every must be >= 0, got ", o.checkpoint_every));
  if (o.log_every < 1) throw UsageError(cat("--log-every must be >= 1, got ", o.log_every));
  if (o.chunk_size < 1) throw UsageError(cat("--chunk-size must be >= 1, got ", o.chunk_size));
  if (o.save_dtype != torch::kFloat32 && o.save_dtype != torch::kBFloat16)
    throw UsageError("--save-dtype: expected f32 or bf16");
  if (o.out.empty()) throw UsageError("--out is required");
  if (o.data.empty()) throw UsageError("--data: at least one training file is required");
  if (o.tokenizer.empty()) throw UsageError("--tokenizer is required (a SentencePiece .model or 'bytes')");
  const int64_t horizon = o.decay_steps > 0 ? o.decay_steps : o.steps;
  if (o.warmup > horizon)
    throw UsageError(cat("--warmup ", o.warmup, " is longer than the schedule (--decay-steps/--steps ", horizon, ")"));
}

// Everything that must match for a resume to continue the same run.
nlohmann::ordered_json run_identity(const TrainOptions& o, const ModelConfig& cfg, const std::string& data_sha,
                                    const LrSchedule& sched) {
  nlohmann::ordered_json j;
  j["config"] = nlohmann::ordered_json::parse(cfg.to_json().dump());
  j["data_sha"] = data_sha;
  j["seq_len"] = o.seq_len;
  j["batch_size"] = o.batch_size;
  j["lr"] = o.lr;
  j["min_lr_ratio"] = o.min_lr_ratio;
  j["warmup"] = sched.warmup;
  j["decay_steps"] = sched.decay_steps;
  j["weight_decay"] = o.weight_decay;
  j["beta1"] = o.beta1;
  j["beta2"] = o.beta2;
  j["eps"] = o.eps;
  j["grad_clip"] = o.grad_clip;
  j["seed"] = o.seed;
  j["chunk_size"] = o.chunk_size;
  return j;
}

std::string differences(const nlohmann::json& saved, const nlohmann::json& now, const std::string& prefix = "") {
  std::string out;
  auto add = [&](const std::string& k, const nlohmann::json& a, const nlohmann::json& b) {
    if (a.is_object() && b.is_object()) {
      out += differences(a, b, prefix + k + ".");
      return;
    }
    if (a != b) out += cat("\n  ", prefix, k, ": checkpoint ", a.is_null() ? "(absent)" : a.dump(), ", now ",
                           b.is_null() ? "(absent)" : b.dump());
  };
  for (auto it = saved.begin(); it != saved.end(); ++it) add(it.key(), it.value(), now.contains(it.key()) ? now[it.key()] : nlohmann::json());
  for (auto it = now.begin(); it != now.end(); ++it)
    if (!saved.contains(it.key())) add(it.key(), nlohmann::json(), it.value());
  return out;
}

struct Param {
  std::string name;
  torch::Tensor t;
  double decay;
};

std::vector<Param> collect_params(const LinearLM& m, double wd) {
  std::vector<Param> ps;
  for (const auto& [n, t] : m.named_tensors()) ps.push_back({n, t, t.dim() >= 2 ? wd : 0.0});
  return ps;
}

void append_log_line(const std::string& path, const std::string& line) {
  std::ofstream f(path, std::ios::app);
  RP_CHECK_INPUT(f.good(), "cannot append to '", path, "': ", std::strerror(errno));
  f << line << "\n";
  f.flush();
  if (f.good()) f.close();
  // A failed write (disk full, I/O error, file-size limit) is an error naming the log, not a
  // silently lost line. errno is that of the failed write(2) (streams leave it alone).
  RP_CHECK_INPUT(!f.fail(), "writing '", path, "' failed: ", std::strerror(errno));
}

// Drops log lines past `step` (a resumed run rewrites them); atomic rewrite.
void truncate_log(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t{0}) > step) continue;
    } catch (const nlohmann::json::exception&) {
      continue;  // a torn last line of a killed run
    }
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// True when `out` holds a complete export of `step`: the model and config of that step, the
// human-readable state of that step, and the tokenizer copy when the run has one. A fault between
// the state and the exports leaves one of them old or missing; the re-run rewrites them all.
bool exports_complete(const std::string& out, int64_t step, bool with_tokenizer);

int64_t exported_step(const std::string& out) {
  const std::string p = path_join(out, "model.safetensors");
  if (!file_exists(p) || !file_exists(path_join(out, "config.json"))) return -1;
  try {
    auto f = SafetensorsFile::open(p);
    auto it = f->metadata().find("rankprune_train_step");
    return it == f->metadata().end() ? -1 : std::stoll(it->second);
  } catch (const std::exception&) {
    return -1;
  }
}

bool exports_complete(const std::string& out, int64_t step, bool with_tokenizer) {
  if (exported_step(out) != step) return false;
  if (with_tokenizer && !file_exists(path_join(out, "tokenizer.model"))) return false;
  const std::string human = path_join(out, kStateJson);
  if (!file_exists(human)) return false;
  try {
    return nlohmann::json::parse(read_file(human)).value("step", int64_t{-1}) == step;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

TrainResult train(const TrainOptions& o, std::ostream& log) {
  validate(o);
  ModelConfig cfg = o.config;
  auto tok = Tokenizer::load(o.tokenizer);
  RP_CHECK_INPUT(tok->vocab_size() <= cfg.vocab_size, "tokenizer '", o.tokenizer, "' has ", tok->vocab_size(),
                 " pieces but --vocab-size is ", cfg.vocab_size);
  for (const auto& f : o.data) RP_CHECK_INPUT(file_exists(f) && !is_directory(f), "training data '", f, "' does not exist");

  LrSchedule sched;
  sched.lr = o.lr;
  sched.min_lr_ratio = o.min_lr_ratio;
  sched.decay_steps = o.decay_steps > 0 ? o.decay_steps : o.steps;
  sched.warmup = o.warmup >= 0 ? o.warmup : sched.decay_steps / 20;

  const std::string out = o.out;
  const std::string state_path = path_join(out, kStateFile);
  const bool resume = file_exists(state_path);
  // A first run that failed before its first checkpoint (a kill, a full disk) leaves at most its
  // log: nothing to resume, so it starts afresh (the log is rewritten from step 0).
  if (!resume && is_directory(out) && !fs::is_empty(out)) {
    bool only_log = true;
    for (const auto& e : fs::directory_iterator(out)) only_log = only_log && e.path().filename() == kLogFile;
    if (only_log) fs::remove(path_join(out, kLogFile));
  }
  if (!resume && is_directory(out) && !fs::is_empty(out))
    throw InputError(cat("--out '", out, "' exists, is not empty and holds no ", kStateFile,
                         " to resume from; choose an empty or new folder"));

  TrainData data = load_train_data(o.data, tok.get(), o.tokenizer, o.seq_len, cfg.vocab_size);
  const int64_t N = data.windows.size(0);
  const auto identity = run_identity(o, cfg, data.data_sha, sched);

  LinearLM model(cfg, init_random_weights(cfg, o.seed, torch::kFloat32));
  std::vector<Param> params = collect_params(model, o.weight_decay);
  std::vector<torch::Tensor> ptensors;
  std::vector<double> decay;
  for (auto& p : params) ptensors.push_back(p.t), decay.push_back(p.decay);
  AdamW opt;
  opt.beta1 = o.beta1, opt.beta2 = o.beta2, opt.eps = o.eps;

  TrainResult res;
  int64_t step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  if (resume) {
    auto f = SafetensorsFile::open(state_path);
    const auto& meta = f->metadata();
    auto it = meta.find("rankprune_train_state");
    RP_CHECK_INPUT(it != meta.end(), "'", state_path, "' is not a rankprune training state (metadata missing)");
    nlohmann::json st;
    try {
      st = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(cat("'", state_path, "': malformed state metadata: ", e.what()));
    }
    RP_CHECK_INPUT(st.value("format", "") == kStateFormat, "'", state_path, "': unsupported format '",
                   st.value("format", ""), "'");
    const std::string diff = differences(st["identity"], identity);
    RP_CHECK_INPUT(diff.empty(), "--out '", out, "' holds a training run with a different configuration; resuming needs ",
                   "the same model, data and optimiser options (only --steps, --checkpoint-every, --log-every, ",
                   "--save-dtype and --threads may change; a longer run keeps its schedule with --decay-steps). ",
                   "Differences:", diff);
    step = st.at("step").get<int64_t>();
    tokens_seen = st.value("tokens_seen", int64_t{0});
    elapsed_before = st.value("elapsed_s", 0.0);
    auto get = [&](const std::string& n, const torch::Tensor& like) {
      RP_CHECK_INPUT(f->find(n), "'", state_path, "': tensor '", n, "' missing");
      auto t = f->tensor(n);
      RP_CHECK_INPUT(t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type(), "'", state_path, "': tensor '",
                     n, "' has ", t.scalar_type(), " ", t.sizes(), ", expected ", like.scalar_type(), " ", like.sizes());
      return t;
    };
    torch::NoGradGuard ng;
    for (auto& p : params) {
      p.t.copy_(get("param/" + p.name, p.t));
      opt.exp_avg.push_back(get("exp_avg/" + p.name, p.t).clone());
      opt.exp_avg_sq.push_back(get("exp_avg_sq/" + p.name, p.t).clone());
    }
    opt.t = st.at("adam_t").get<int64_t>();
    auto hist = get("loss_history", torch::empty({step}, torch::kFloat64));
    auto gnh = get("grad_norm_history", torch::empty({step}, torch::kFloat64));
    for (int64_t i = 0; i < step; ++i) {
      res.losses.push_back(hist[i].item<double>());
      res.grad_norms.push_back(gnh[i].item<double>());
    }
    truncate_log(path_join(out, kLogFile), step);
  } else {
    fs::create_directories(out);
  }
  res.start_step = step;

  auto save_all = [&](int64_t at_step, double session_elapsed) {
    nlohmann::ordered_json st;
    st["format"] = kStateFormat;
    st["step"] = at_step;
    st["adam_t"] = opt.t;
    st["tokens_seen"] = tokens_seen;
    st["elapsed_s"] = elapsed_before + session_elapsed;
    st["windows"] = N;
    st["identity"] = identity;
    std::vector<std::pair<std::string, torch::Tensor>> ts;
    for (std::size_t i = 0; i < params.size(); ++i) {
      ts.emplace_back("param/" + params[i].name, params[i].t.detach());
      ts.emplace_back("exp_avg/" + params[i].name, opt.exp_avg[i]);
      ts.emplace_back("exp_avg_sq/" + params[i].name, opt.exp_avg_sq[i]);
    }
    ts.emplace_back("loss_history", torch::tensor(res.losses, torch::kFloat64));
    ts.emplace_back("grad_norm_history", torch::tensor(res.grad_norms, torch::kFloat64));
    // The one file a resume reads: atomic, so a kill leaves the previous or this checkpoint.
    save_safetensors(state_path, ts, {{"rankprune_train_state", st.dump()}});
    // Exports (each atomic; rewritten from the state if a kill falls between them).
    std::vector<std::pair<std::string, torch::Tensor>> ms;
    for (auto& [n, t] : model.named_tensors()) ms.emplace_back(n, t.detach().to(o.save_dtype).contiguous());
    save_checkpoint(out, ms, {{"format", "pt"}, {"rankprune_train_step", std::to_string(at_step)}});
    cfg.save(out);
    if (o.tokenizer != "bytes" && o.tokenizer != "byte")
      write_file_atomic(path_join(out, "tokenizer.model"), read_file(o.tokenizer));
    nlohmann::ordered_json human = st;
    human["last_loss"] = res.losses.empty() ? 0.0 : res.losses.back();
    human["save_dtype"] = dtype_label(o.save_dtype);
    write_file_atomic(path_join(out, kStateJson), human.dump(2) + "\n");
  };

  if (step >= o.steps) {
    res.nothing_to_do = true;
    res.final_step = step;
    const bool with_tokenizer = o.tokenizer != "bytes" && o.tokenizer != "byte";
    if (!exports_complete(out, step, with_tokenizer)) save_all(step, 0.0);  // a kill or fault fell between state and export
    log << "nothing to do: '" << out << "' is already at step " << step << " (--steps " << o.steps << ")\n";
    return res;
  }

  log << (resume ? "resuming" : "training") << " " << arch_name(cfg.arch) << " (" << cfg.num_parameters()
      << " parameters) from step " << step << " to " << o.steps << " on " << N << " windows of " << o.seq_len + 1
      << " tokens, batch " << o.batch_size << "\n";

  ForwardOptions fo;
  fo.dtype = torch::kFloat32;
  fo.impl = DeltaRuleImpl::Chunked;
  fo.chunk_size = o.chunk_size;
  for (auto& t : ptensors) t.set_requires_grad(true);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto last_log = t0;
  const int64_t first = step;
  double interval_loss = 0;
  int64_t interval_steps = 0;
  const std::string log_path = path_join(out, kLogFile);
  while (step < o.steps) {
    const int64_t s = step + 1;
    auto idx = batch_indices(N, o.batch_size, s, o.seed);
    auto batch = data.windows.index_select(0, torch::tensor(idx, torch::kLong));
    auto inp = batch.narrow(1, 0, o.seq_len), tgt = batch.narrow(1, 1, o.seq_len);
    for (auto& t : ptensors) t.mutable_grad() = torch::Tensor();
    auto logits = model.forward(inp, nullptr, fo);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, cfg.vocab_size}), tgt.reshape({-1}));
    loss.backward();
    const double loss_v = loss.item<double>();
    RP_CHECK_INPUT(std::isfinite(loss_v), "training diverged at step ", s, ": loss is ", loss_v,
                   " (try a smaller --lr or a longer --warmup)");
    const double gn = clip_grad_norm(ptensors, o.grad_clip);
    const double lr = lr_at(s, sched);
    opt.step(ptensors, decay, lr);
    step = s;
    tokens_seen += o.batch_size * o.seq_len;
    res.losses.push_back(loss_v);
    res.grad_norms.push_back(gn);
    interval_loss += loss_v;
    ++interval_steps;

    const auto now = Clock::now();
    const double session = std::chrono::duration<double>(now - t0).count();
    if (step % o.log_every == 0 || step == o.steps) {
      const double dt = std::chrono::duration<double>(now - last_log).count();
      const double tps = dt > 0 ? static_cast<double>(interval_steps * o.batch_size * o.seq_len) / dt : 0.0;
      const double eta = session / static_cast<double>(step - first) * static_cast<double>(o.steps - step);
      const double mean_loss = interval_loss / static_cast<double>(interval_steps);
      log << "step " << step << "/" << o.steps << " loss " << fixed(mean_loss, 3) << " lr " << short_sci(lr)
          << " grad_norm " << fixed(gn, 2) << " tok/s " << std::llround(tps) << " ETA " << format_duration(eta)
          << "\n";
      log.flush();
      nlohmann::ordered_json j;
      j["step"] = step;
      j["steps"] = o.steps;
      j["loss"] = mean_loss;
      j["lr"] = lr;
      j["grad_norm"] = gn;
      j["tokens_per_s"] = tps;
      j["tokens"] = tokens_seen;
      j["elapsed_s"] = elapsed_before + session;
      j["eta_s"] = eta;
      append_log_line(log_path, j.dump());
      last_log = now;
      interval_loss = 0;
      interval_steps = 0;
    }
    if ((o.checkpoint_every > 0 && step % o.checkpoint_every == 0) || step == o.steps) {
      for (auto& t : ptensors) t.mutable_grad() = torch::Tensor();
      save_all(step, session);
    }
    if (o.after_step) o.after_step(step);
  }
  for (auto& t : ptensors) {
    t.mutable_grad() = torch::Tensor();
    t.set_requires_grad(false);
  }
  res.final_step = step;
  log << "wrote " << out << " at step " << step << " (loss " << fixed(res.losses.back(), 3) << ", "
      << dtype_label(o.save_dtype) << ")\n";
  return res;
}

}  // namespace rankprune
