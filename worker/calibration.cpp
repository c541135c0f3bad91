#include "worker/calibration.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "common/error.h"
#include "common/random.h"
#include "common/fs.h"
#include "cluster/block_reduce.h"
#include "kernels/gram.h"
#include "common/sha256.h"
#include "model/npy.h"
#include "model/safetensors.h"

namespace rankprune {

namespace fs = std::filesystem;
using torch::indexing::Slice;

std::vector<std::string> read_documents(const std::string& path, const std::string& what) {
  const std::string ext = lower_extension(path);
  const std::string text = read_file(path);
  if (ext == ".txt" || ext == ".tokens" || ext == ".raw") return {text};
  RP_CHECK_INPUT(ext == ".jsonl", what, " '", path,
                 "': unknown extension (expected .txt, .jsonl with a \"text\" field, or .npy)");
  std::vector<std::string> docs;
  std::istringstream in(text);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for numbers past double
      throw InputError(cat(path, ":", lineno, ": not valid JSON: ", e.what()));
    }
    RP_CHECK_INPUT(j.is_object() && j.contains("text") && j["text"].is_string(), path, ":", lineno,
                   ": expected an object with a string field \"text\"");
    docs.push_back(j["text"].get<std::string>());
  }
  return docs;
}

CalibrationData load_calibration_data(const std::vector<std::string>& files, const Tokenizer* tok,
                                      const std::string& tokenizer_path, int64_t seq_len, int64_t sequences,
                                      uint64_t seed, int64_t vocab_size, bool add_bos) {
  if (files.empty()) throw UsageError("--data: at least one calibration file is required");
  if (seq_len != 0 && seq_len < 2) throw UsageError(cat("--seq-len must be >= 2, got ", seq_len));
  if (sequences < 1) throw UsageError(cat("--sequences must be >= 1, got ", sequences));

  // .npy rows first: without --seq-len their length is the sequence length (text windows follow it).
  std::vector<std::string> file_shas;
  std::vector<torch::Tensor> arrays(files.size());
  std::string length_from;  // the file that fixed the length
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    RP_CHECK_INPUT(file_exists(f), "calibration data '", f, "' does not exist");
    file_shas.push_back(sha256_file(f));
    if (lower_extension(f) != ".npy") continue;
    auto a = read_npy(f);
    RP_CHECK_INPUT(a.dim() == 2 && (a.scalar_type() == torch::kInt32 || a.scalar_type() == torch::kInt64), "'", f,
                   "': expected int32 or int64 token ids of shape [N, L], got ", a.scalar_type(), " ", a.sizes());
    if (seq_len == 0) seq_len = a.size(1), length_from = f;
    RP_CHECK_INPUT(a.size(1) == seq_len, "'", f, "': rows have ", a.size(1), " tokens but ",
                   length_from.empty() ? cat("--seq-len is ", seq_len)
                                       : cat("the rows of '", length_from, "' have ", seq_len, " (give --seq-len)"));
    arrays[i] = a.to(torch::kLong);
  }
  if (seq_len == 0) seq_len = kDefaultCalibrationSeqLen;
  RP_CHECK_INPUT(seq_len >= 2, "calibration sequences need at least 2 tokens; the .npy rows of '", length_from,
                 "' have ", seq_len);
  Sha256 identity;
  identity.update(cat("rankprune-calibration-v1|L=", seq_len, "|N=", sequences, "|seed=", seed, "|bos=", add_bos));

  std::vector<torch::Tensor> rows;  // candidate [L] windows or rows, in file order
  std::vector<int64_t> stream;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    identity.update(cat("|file=", file_shas[i]));
    if (arrays[i].defined()) {
      const auto& a = arrays[i];
      if (a.numel() > 0) {
        const int64_t lo = a.min().item<int64_t>(), hi = a.max().item<int64_t>();
        RP_CHECK_INPUT(lo >= 0 && hi < vocab_size, "'", f, "': token id ", lo < 0 ? lo : hi,
                       " is outside the model's vocabulary [0, ", vocab_size, ")");
      }
      for (int64_t r = 0; r < a.size(0); ++r) rows.push_back(a[r]);
      continue;
    }
    RP_CHECK_INPUT(tok != nullptr, "calibration data '", f, "' is text: a --tokenizer is required");
    for (const auto& doc : read_documents(f)) {
      if (add_bos && tok->bos_id() >= 0) stream.push_back(tok->bos_id());
      for (int id : tok->encode(doc)) stream.push_back(id);
    }
  }
  if (tok && !stream.empty()) {
    identity.update(cat("|tokenizer=", tokenizer_path == "bytes" ? std::string("bytes") : sha256_file(tokenizer_path)));
    RP_CHECK_INPUT(tok->vocab_size() <= vocab_size, "tokenizer '", tokenizer_path, "' has ", tok->vocab_size(),
                   " pieces but the model's vocabulary is ", vocab_size);
    auto t = torch::tensor(stream, torch::kLong);
    for (int64_t w = 0; (w + 1) * seq_len <= t.size(0); ++w) rows.push_back(t.narrow(0, w * seq_len, seq_len));
  }
  const int64_t available = static_cast<int64_t>(rows.size());
  RP_CHECK_INPUT(available >= sequences, "calibration data too short: ", available, " sequences of ", seq_len,
                 " tokens available in ", files.size(), " file(s) (", stream.size(), " text tokens), but --sequences is ",
                 sequences);
  std::vector<torch::Tensor> chosen;
  for (int64_t i : choose_indices(available, sequences, seed)) chosen.push_back(rows[static_cast<std::size_t>(i)]);
  CalibrationData d;
  d.ids = torch::stack(chosen).contiguous();
  d.data_sha = identity.hex_digest();
  d.available = available;
  return d;
}

// ------------------------------------------------------------------------------------------------

namespace {

// The statistics of one block of sequences (one forward), full symmetric matrices.
CalibrationStats block_statistics(const LinearLM& model, const torch::Tensor& batch, const ForwardOptions& opts) {
  CalibrationStats s = CalibrationStats::zeros(model.config());
  const int64_t H = s.heads, d = s.head_k_dim;
  QkObserver obs = [&](int64_t l, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& x) {
    // q, k: [B, T, H, dk] -> [H, B*T, dk]. The Gram, which the rank-revealing selection
    // factorises, is formed in float64 (2 * tokens * H * dk^2 flops per layer). The PCA moments of
    // the unit-norm vectors are formed in float32 per batch and accumulated in float64: they are
    // a baseline's statistic, well conditioned, and float32 halves their cost.
    // Stacked M = [Q; K] per head; G += M^T M (kernels/gram.h: dsyrk per head on the CPU).
    auto g = s.gram[l];
    gram_accumulate(q, k, g);
    s.x_sq[l] += x.to(torch::kFloat64).pow(2).reshape({-1, x.size(-1)}).sum(0);
    auto q32 = q.to(torch::kFloat32).reshape({-1, H, d}).transpose(0, 1);
    auto k32 = k.to(torch::kFloat32).reshape({-1, H, d}).transpose(0, 1);
    auto nq = q32 * torch::rsqrt(q32.pow(2).sum(-1, true) + 1e-6);  // as the model's L2 norm
    auto nk = k32 * torch::rsqrt(k32.pow(2).sum(-1, true) + 1e-6);
    s.q_sum[l] += nq.sum(1).to(torch::kFloat64), s.k_sum[l] += nk.sum(1).to(torch::kFloat64);
    s.q_outer[l] += torch::bmm(nq.transpose(1, 2), nq).to(torch::kFloat64);
    s.k_outer[l] += torch::bmm(nk.transpose(1, 2), nk).to(torch::kFloat64);
  };
  torch::NoGradGuard ng;
  model.hidden(batch, nullptr, opts, obs);
  s.tokens = batch.numel();
  return s;
}

void check_calibration_request(const torch::Tensor& ids, int64_t batch_size) {
  RP_CHECK_INPUT(batch_size >= 1, "--batch-size must be at least 1, got ", batch_size);
  RP_CHECK_INPUT(ids.dim() == 2 && ids.size(0) >= 1, "calibration ids must be [N, L] with N >= 1, got ", ids.sizes());
}

}  // namespace

TaylorBlock taylor_block(const LinearLM& model, const torch::Tensor& batch, const ForwardOptions& opts) {
  const ModelConfig& c = model.config();
  RP_CHECK_INPUT(batch.dim() == 2 && batch.size(1) >= 2, "taylor needs sequences of at least 2 tokens, got ",
                 batch.sizes());
  // A shallow copy of the model whose q/k projections are leaves in the compute dtype (for a
  // float32 compute of bf16 weights the cast is exact), so autograd reaches them; every other
  // weight is shared and needs no gradient.
  LmWeights w = model.weights();
  std::vector<torch::Tensor> leaves;
  for (auto& lw : w.layers) {
    lw.q_proj = lw.q_proj.to(opts.dtype).detach().requires_grad_(true);
    lw.k_proj = lw.k_proj.to(opts.dtype).detach().requires_grad_(true);
    leaves.push_back(lw.q_proj), leaves.push_back(lw.k_proj);
  }
  const LinearLM m(c, std::move(w));
  torch::AutoGradMode grad_on(true);
  const int64_t T = batch.size(1);
  // Causal: the logits of the first T-1 tokens are those of the whole sequence at those positions.
  auto inp = batch.narrow(1, 0, T - 1), tgt = batch.narrow(1, 1, T - 1);
  auto logits = m.forward(inp, nullptr, opts);  // [B, T-1, V]
  auto loss = torch::nn::functional::cross_entropy(
      logits.reshape({-1, c.vocab_size}), tgt.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto grads = torch::autograd::grad({loss}, leaves);
  std::vector<torch::Tensor> gq, gk;
  for (std::size_t i = 0; i < grads.size(); i += 2) gq.push_back(grads[i]), gk.push_back(grads[i + 1]);
  return {torch::stack(gq), torch::stack(gk), loss.item<double>()};
}

void collect_taylor(CalibrationStats& stats, const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                    const ForwardOptions& opts, cluster::Communicator& comm, cluster::BlockReduceReport* report) {
  check_calibration_request(ids, batch_size);
  const ModelConfig& cfg = model.config();
  const int64_t n_blocks = (ids.size(0) + batch_size - 1) / batch_size;
  const std::size_t half = CalibrationStats::taylor_length(cfg) / 2;
  auto total = cluster::block_tree_sum(
      comm, n_blocks, 2 * half,
      [&](int64_t b, double* out) {
        const int64_t lo = b * batch_size;
        const auto t = taylor_block(model, ids.narrow(0, lo, std::min(batch_size, ids.size(0) - lo)), opts);
        const auto q = t.grad_q.to(torch::kFloat64).contiguous(), k = t.grad_k.to(torch::kFloat64).contiguous();
        RP_ASSERT(static_cast<std::size_t>(q.numel()) == half && static_cast<std::size_t>(k.numel()) == half);
        std::copy(q.data_ptr<double>(), q.data_ptr<double>() + half, out);
        std::copy(k.data_ptr<double>(), k.data_ptr<double>() + half, out + half);
      },
      /*broadcast=*/true, report);
  const auto o = torch::dtype(torch::kFloat64);
  const std::vector<int64_t> shape = {cfg.num_hidden_layers, cfg.num_heads * cfg.head_k_dim, cfg.hidden_size};
  stats.taylor_grad_q = torch::from_blob(total.data(), shape, o).clone();
  stats.taylor_grad_k = torch::from_blob(total.data() + half, shape, o).clone();
}

CalibrationStats collect_statistics(const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                                    const ForwardOptions& opts, cluster::Communicator& comm,
                                    cluster::BlockReduceReport* report, bool taylor) {
  check_calibration_request(ids, batch_size);
  const int64_t n_blocks = (ids.size(0) + batch_size - 1) / batch_size;
  const ModelConfig& cfg = model.config();
  auto total = cluster::block_tree_sum(
      comm, n_blocks, CalibrationStats::packed_length(cfg),
      [&](int64_t b, double* out) {
        const int64_t lo = b * batch_size;
        const auto packed =
            block_statistics(model, ids.narrow(0, lo, std::min(batch_size, ids.size(0) - lo)), opts).pack();
        std::copy(packed.begin(), packed.end(), out);
      },
      /*broadcast=*/true, report);
  CalibrationStats s = CalibrationStats::unpack(cfg, total, ids.numel());
  if (taylor) collect_taylor(s, model, ids, batch_size, opts, comm);
  return s;
}

CalibrationStats collect_statistics(const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                                    const ForwardOptions& opts, bool taylor) {
  auto local = cluster::make_local();
  return collect_statistics(model, ids, batch_size, opts, *local, nullptr, taylor);
}

std::string model_sha(const std::string& dir) {
  Sha256 h;
  std::vector<std::string> files;
  if (is_directory(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name == "config.json" || lower_extension(name) == ".safetensors" || name == "model.safetensors.index.json")
        files.push_back(name);
    }
    std::sort(files.begin(), files.end());
    for (const auto& n : files) h.update(cat(n, "=", sha256_file(path_join(dir, n)), ";"));
  } else {
    h.update(sha256_file(dir));
  }
  return h.hex_digest();
}

}  // namespace rankprune
