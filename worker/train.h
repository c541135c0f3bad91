// Training small DeltaNet / Gated DeltaNet language models from scratch (`rankprune train`,
// docs/training.md).
//
//  - Model: fla's random initialisation (init_random_weights) in float32; the float32 tensors of
//    LmWeights are the trained parameters (autograd through LinearLM::forward with the chunked
//    delta rule).
//  - Data: the token stream of the files (tokenised as calibration does: one BOS per document),
//    cut into windows of seq_len + 1 tokens with stride seq_len (consecutive windows share one
//    boundary token, so every token but the first is a target once per epoch). Step s (1-based)
//    reads samples (s-1)*B .. s*B-1 of an endless sequence of epochs, each epoch a seeded
//    permutation of all windows: batches depend only on (seed, step), so a resumed run reads
//    exactly the batches an uninterrupted run reads.
//  - Loss: mean next-token cross entropy over the batch.
//  - Optimiser: AdamW (decoupled weight decay, torch.optim.AdamW's update) with decay on matrices
//    (dim >= 2: projections, conv kernels, embeddings, lm_head) and none on vectors (norm
//    weights, A_log, dt_bias); linear warmup then cosine decay to min_lr; clipping by global norm.
//  - Checkpoints: <out>/train_state.safetensors (float32 parameters, AdamW moments, loss and
//    gradient-norm history; metadata: the step and the run's identity) is the one file a resume
//    reads, written atomically; the fla checkpoint (config.json, model.safetensors in the save
//    dtype, tokenizer.model) and train_state.json are exports of it, each written atomically.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/tokenizer.h"

namespace rankprune {

// Model size as `rankprune init` / `train` take it on the command line.


// Learning-rate schedule: linear warmup to `lr` over `warmup` steps, then cosine decay to
// lr * min_lr_ratio at step `decay_steps`; constant min lr after it.
struct LrSchedule {
  double lr = 3e-3, min_lr_ratio = 0.1;
  int64_t warmup = 0, decay_steps = 1;
};
// The learning rate of update number `step` (1-based):
//   step <= warmup:  lr * step / warmup
//   otherwise:       min + (lr - min) * (1 + cos(pi * min(1, (step - warmup) / (decay_steps - warmup)))) / 2
double lr_at(int64_t step, const LrSchedule& s);

// Scales the gradients of `params` in place so their global L2 norm is at most `max_norm`
// (torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6) when norm > max_norm; max_norm
// <= 0 disables clipping). Returns the norm before clipping. Parameters without grad are skipped.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// AdamW with decoupled weight decay, the update of torch.optim.AdamW (amsgrad off):
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Own implementation so the state is explicit (saved and restored bitwise) and decay is per
// parameter.
struct AdamW {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  int64_t t = 0;                              // updates applied
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;  // one per parameter (created on first step)
  // One update of every parameter with a gradient; decay[i] is parameter i's weight decay.
  void step(const std::vector<torch::Tensor>& params, const std::vector<double>& decay, double lr);
};

// Training windows: [N, seq_len + 1] int64 token ids.
struct TrainData {
  torch::Tensor windows;
  int64_t stream_tokens = 0;  // text tokens read (0 for .npy only)
  std::string data_sha;       // identity of (files, tokenizer, seq_len, bos)
};
// .txt/.tokens/.raw: the file is one document; .jsonl: one document per line ("text" field); .npy:
// int32/int64 [N, seq_len + 1] rows used as windows. InputError naming the file for missing or
// malformed data, ids outside [0, vocab_size), or data too short for one window.
TrainData load_train_data(const std::vector<std::string>& files, const Tokenizer* tok, const std::string& tok_path,
                          int64_t seq_len, int64_t vocab_size, bool add_bos = true);

// The window indices (into [0, n)) of batch `step` (1-based) of size `batch`: samples
// (step-1)*batch ... of the concatenation of seeded per-epoch permutations of [0, n).
std::vector<int64_t> batch_indices(int64_t n, int64_t batch, int64_t step, uint64_t seed);

struct TrainOptions {
  ModelConfig config;
  std::vector<std::string> data;
  std::string tokenizer;  // SentencePiece .model (copied into `out`) or "bytes"
  int64_t seq_len = 256, steps = 0, batch_size = 8;
  int64_t decay_steps = 0;   // cosine horizon; 0 = steps
  int64_t warmup = -1;       // -1 = decay_steps / 20
  double lr = 3e-3, min_lr_ratio = 0.1, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;    // 0 = off
  uint64_t seed = 0;
  int64_t checkpoint_every = 0;  // 0 = only at the end
  int64_t log_every = 10;
  int64_t chunk_size = 64;
  torch::ScalarType save_dtype = torch::kFloat32;  // model.safetensors (f32 or bf16)
  std::string out;
  // Called after each completed update (tests use it to interrupt a run).
  std::function<void(int64_t step)> after_step;
};

struct TrainResult {
  int64_t start_step = 0;     // the step resumed from (0 = fresh)
  int64_t final_step = 0;
  bool nothing_to_do = false;
  std::vector<double> losses;  // loss of every step 1..final_step (from the state when resumed)
  std::vector<double> grad_norms;
};

// Validates the options (UsageError naming the option; InputError for data and for an `out` that
// holds a different run), then trains or resumes. Progress lines go to `log` and, as JSON, to
// <out>/train_log.jsonl.
TrainResult train(const TrainOptions& opts, std::ostream& log);

}  // namespace rankprune
