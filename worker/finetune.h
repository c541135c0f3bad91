// Recovery fine-tuning of a pruned model (`rankprune finetune`, docs/finetune.md).
//
//  - LoRA: for every layer and every target projection W [out, in] (q_proj, k_proj, v_proj,
//    o_proj), trainable A [r, in] and B [out, r]; the model computes with
//        W' = W + (alpha / r) * B A.
//    A starts uniform(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a = sqrt(5)) bound), B
//    starts at zero, so before the first update the model is exactly the pruned model. The base
//    weights stay frozen (never require grad); only A and B are trained.
//  - Forward: an LmWeights copy whose target projections are W + s B A, built per step, through
//    LinearLM::forward (chunked delta rule), so autograd reaches A and B and nothing else.
//  - Loss per step (means over the B * L predicted tokens of the batch):
//        loss = CE(student, next token) + distill_weight * T^2 * KL(p_teacher || p_student),
//        p = softmax(logits / T), KL = sum_v p_t(v) (log p_t(v) - log p_s(v)).
//    The teacher (the unpruned model) runs on the same batch without gradients.
//  - Data, batches, schedule, clipping and AdamW are those of `rankprune train` (worker/train.h).
//  - Output: the LoRA update merged into the weights, written as an fla checkpoint (config of the
//    pruned model, model.safetensors with every tensor in the student's dtype, tokenizer files,
//    selection.json / pca_rotation.safetensors copied from the student folder), plus
//    lora_adapter.safetensors (A, B), finetune.json and finetune_log.jsonl; all through a
//    temporary folder renamed at the end.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "model/linear_lm.h"

namespace rankprune {

// Target names: "q", "k", "v", "o" (or q_proj, k_proj, v_proj, o_proj). Returns the canonical
// short names in q, k, v, o order without duplicates; UsageError naming --targets for an unknown
// name or an empty list.
std::vector<std::string> parse_lora_targets(const std::vector<std::string>& names);

struct LoraConfig {
  int64_t rank = 32;
  double alpha = 64;
  std::vector<std::string> targets{"q", "k", "v"};  // canonical short names
  double scale() const { return alpha / static_cast<double>(rank); }
};

struct LoraAdapter {
  int64_t layer = 0;
  std::string target;  // "q", "k", "v" or "o"
  torch::Tensor A;     // [r, in]
  torch::Tensor B;     // [out, r]
  std::string name() const;  // "model.layers.<l>.attn.<target>_proj.lora_{A,B}" prefix (without suffix)
};

// A frozen base model with LoRA adapters on its target projections.
class LoraModel {
 public:
  // UsageError for rank < 1, alpha <= 0 or unknown targets. A and B are created in `dtype`
  // (float32 for training; float64 in tests), A seeded by `seed`, B zero.
  LoraModel(LinearLM base, LoraConfig cfg, uint64_t seed, torch::ScalarType dtype = torch::kFloat32);

  const LinearLM& base() const { return base_; }
  const LoraConfig& lora_config() const { return cfg_; }
  std::vector<LoraAdapter>& adapters() { return adapters_; }
  const std::vector<LoraAdapter>& adapters() const { return adapters_; }
  // The trainable tensors: A, B of every adapter in order.
  std::vector<torch::Tensor> parameters() const;

  // The base weights with W + s B A on every target (differentiable in A and B; the promoted dtype
  // of W and the adapter, so B = 0 reproduces W exactly).
  LmWeights effective_weights() const;
  torch::Tensor forward(const torch::Tensor& ids, const ForwardOptions& opts = {}) const;
  // A plain model with the update folded in: W + s B A rounded to W's dtype (no autograd).
  LinearLM merged() const;

 private:
  LinearLM base_;
  LoraConfig cfg_;
  std::vector<LoraAdapter> adapters_;
};

// T^2 * mean over tokens of KL(softmax(teacher / T) || softmax(student / T)). Logits [..., V]; the
// teacher is not differentiated. Computed in float64 when either input is float64, else float32.
torch::Tensor distill_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           double temperature);

struct FinetuneOptions {
  std::string model;    // pruned student (fla folder)
  std::string teacher;  // unpruned base (fla folder): same vocabulary and hidden size
  std::vector<std::string> data;
  std::string tokenizer;  // SentencePiece .model or "bytes"; empty = <model>/tokenizer.model
  LoraConfig lora;
  double temperature = 2.0, distill_weight = 1.0;
  int64_t seq_len = 256, steps = 0, batch_size = 8;
  int64_t warmup = -1;  // -1 = steps / 20
  double lr = 1e-3, min_lr_ratio = 0.1, weight_decay = 0.0, grad_clip = 1.0;
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t chunk_size = 64;
  std::string out;
};

struct FinetuneResult {
  std::vector<double> losses, ce, kd;  // per step
};

// Validates (UsageError naming the option; InputError for models, data and --out), fine-tunes and
// writes `out`. Progress lines go to `log`.
FinetuneResult finetune(const FinetuneOptions& opts, std::ostream& log);

}  // namespace rankprune
