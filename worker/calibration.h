// Calibration: turn text (or pre-tokenised .npy) into token sequences, stream them through the
// model, and accumulate per-(layer, head) statistics without storing activations
// (method.md §2). All statistics are sums over tokens in float64, added in a fixed order, so
// a run on any number of ranks gives the same bits, and one pass serves every method.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cluster/block_reduce.h"
#include "cluster/communicator.h"
#include "model/calibration_stats.h"
#include "model/linear_lm.h"
#include "model/tokenizer.h"

namespace rankprune {

struct CalibrationData {
  torch::Tensor ids;       // [N, L] int64, CPU
  std::string data_sha;    // identity of (files, tokenizer, seq_len, N, seed, bos)
  int64_t available = 0;   // sequences the data could have provided
};

// Sequence length when neither --seq-len nor a .npy file gives one.
constexpr int64_t kDefaultCalibrationSeqLen = 2048;

// .txt: the whole file is one document. .jsonl: one document per line, field "text". .npy:
// int32/int64 [N, L], one sequence per row (no tokenizer needed). seq_len 0 = not given: the
// first .npy file's row length, else kDefaultCalibrationSeqLen; every .npy must match it (a
// given seq_len that differs from a file's rows is an InputError naming both).
// Text documents are tokenized (BOS first when the tokenizer has one and add_bos), concatenated
// and cut into non-overlapping seq_len windows (tail dropped); `sequences` windows (or .npy rows)
// are drawn without replacement with `seed` and kept in their original order.
// InputError naming the file for unreadable/malformed data, unknown extensions, ids outside
// [0, vocab_size), or too little data for the request.
// The documents of a text file: .txt/.tokens/.raw are one document; .jsonl one per line (field
// "text"). InputError naming the file (and line) otherwise. `what` names the data in messages.
std::vector<std::string> read_documents(const std::string& path, const std::string& what = "calibration data");

CalibrationData load_calibration_data(const std::vector<std::string>& files, const Tokenizer* tok,
                                      const std::string& tokenizer_path, int64_t seq_len, int64_t sequences,
                                      uint64_t seed, int64_t vocab_size, bool add_bos = true);

// Runs `ids` [N, L] through the model and returns the summed statistics. The sequences are cut
// into blocks of `batch_size` (the last may be shorter), one forward each, whatever the number of
// ranks; with `comm` the blocks are shared out over its ranks (contiguous ranges) and their sums
// added along cluster::block_tree_sum's fixed tree, so every rank gets statistics that are
// bitwise those of one process (docs/distributed.md). Collective: every rank calls it with the
// same ids. The model is each rank's own (memory-mapped) copy.
// With `taylor`, also the taylor gradient sums (collect_taylor, below).
CalibrationStats collect_statistics(const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                                    const ForwardOptions& opts, cluster::Communicator& comm,
                                    cluster::BlockReduceReport* report = nullptr, bool taylor = false);
// The same on one rank.
CalibrationStats collect_statistics(const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                                    const ForwardOptions& opts, bool taylor = false);

// The taylor baseline's statistic (method.md §3): G_q[l] = dL/dW_q[l] and G_k[l] = dL/dW_k[l]
// ([L, H*dk, D] float64 each) with L = sum over every sequence of `ids` and every position t < T-1
// of -log p(ids[t+1] | ids[..t]) (the summed next-token cross-entropy, in nats). One forward and
// backward per block of `batch_size` sequences, in opts.dtype (autograd through the torch-op delta
// rule and convolutions; the fused forward-only CPU kernels are not used), a separate pass from
// the other statistics, so theirs are the same bits with or without taylor. The block gradients
// are added as float64 along the same fixed block tree as the other statistics: the same bits on
// any number of ranks. Collective like collect_statistics; sets stats.taylor_grad_{q,k}.
// Cost: a forward and backward per block through the torch ops (8x the other statistics' pass on
// the DeltaNet fixture, docs/pruning.md; memory ~ 3 x the [B, T-1, V] logits) and 2 * L * H*dk * D
// doubles per partial sum.
void collect_taylor(CalibrationStats& stats, const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                    const ForwardOptions& opts, cluster::Communicator& comm,
                    cluster::BlockReduceReport* report = nullptr);
// The gradients of one block's summed next-token cross-entropy w.r.t. every layer's q_proj and
// k_proj, [L, H*dk, D] each in opts.dtype, and the loss (for tests and diagnostics).
struct TaylorBlock {
  torch::Tensor grad_q, grad_k;
  double loss = 0;
};
TaylorBlock taylor_block(const LinearLM& model, const torch::Tensor& batch, const ForwardOptions& opts);

// The model's identity: sha256 over config.json and every checkpoint file.
std::string model_sha(const std::string& model_dir);

}  // namespace rankprune
