// DeltaNet and Gated DeltaNet causal LMs, computing exactly what fla's HF models compute
// (fla/models/{delta_net,gated_deltanet}, fla/layers/{delta_net,gated_deltanet}.py), in LibTorch.
//
// One block (pre-norm, residual):
//   x  = h + Attn(RMSNorm(h));   h' = x + W_down(SiLU(W_gate y) * W_up y),  y = RMSNorm(x)
//   Attn: q, k, v = act(conv(W x)); beta = sigmoid(W_b x) (x2 if allow_neg_eigval);
//         q, k L2-normalised per head; delta rule (gated: decay g = -exp(A_log) softplus(W_a x + dt_bias));
//         o = RMSNorm_dv(o) [* SiLU(W_g x) if use_gate]; out = W_o o
//
// Weights stay in the checkpoint dtype (zero-copy views of the mmap'ed safetensors); each use
// casts to the compute dtype (float32 by default). Device-agnostic: weights and ids may live on
// any device the LibTorch build supports.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/delta_rule.h"
#include "kernels/gpu.h"
#include "model/config.h"

namespace rankprune {

struct LayerWeights {
  torch::Tensor attn_norm, mlp_norm;                 // [D]
  torch::Tensor q_proj, k_proj, v_proj;              // [key_dim|value_dim, D]
  torch::Tensor q_conv, k_conv, v_conv;              // [C, 1, K] (use_short_conv)
  torch::Tensor b_proj;                              // [Hv, D] (DeltaNet: if use_beta)
  torch::Tensor a_proj, A_log, dt_bias;              // GDN: [Hv, D], [Hv], [Hv]
  torch::Tensor g_proj;                              // [value_dim, D] (use_gate)
  torch::Tensor o_norm;                              // [head_v_dim]
  torch::Tensor o_proj;                              // [D, value_dim]
  torch::Tensor gate_proj, up_proj, down_proj;       // [I, D], [I, D], [D, I]
};

struct LmWeights {
  torch::Tensor embeddings;  // [V, D]
  torch::Tensor norm;        // [D]
  torch::Tensor lm_head;     // [V, D] (the embeddings when tie_word_embeddings)
  std::vector<LayerWeights> layers;
  // Tensors of the checkpoint that the model does not use; kept so a rewrite loses nothing.
  std::vector<std::pair<std::string, torch::Tensor>> extra;
};

// A tensor the config says the checkpoint must hold.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg);

// Recurrent state after a prefix: everything needed to continue the sequence exactly.
struct LayerState {
  torch::Tensor conv_q, conv_k, conv_v;  // [B, C, K-1] last projection outputs (short conv)
  torch::Tensor s;                       // [B, Hv, dk, dv] delta-rule state (float32 or compute)
};
struct LmState {
  std::vector<LayerState> layers;
  int64_t tokens = 0;      // tokens each row consumed by batch forwards (hidden_packed leaves it alone)
  LmState clone() const;   // deep copy (e.g. one per multiple-choice continuation)
  // Repeats batch row 0 n times (state reuse: one shared context, n continuations).
  LmState expand(int64_t n) const;
  // Batch rows `rows` (int64 indices, repeats allowed) of this state, in that order.
  LmState select(const torch::Tensor& rows) const;
};

struct ForwardOptions {
  torch::ScalarType dtype = torch::kFloat32;    // compute dtype
  DeltaRuleImpl impl = DeltaRuleImpl::Auto;     // fla: recurrent for T <= 64, else chunked (CPU, no grad: fused recurrence)
  int64_t chunk_size = 64;
  // --device (kernels/gpu.h): where weights and activations live. Cuda only in a CUDA LibTorch
  // build with a visible device (cli::forward_options_from checks); commands move the model.
  ComputeDevice device = ComputeDevice::Cpu;
};

// Observes q and k of every layer after short conv + activation and before the L2 norm (where the
// paper hooks q_conv1d / k_conv1d), and x = attn_norm output (Wanda's input). Shapes [B, T, H, dk]
// and [B, T, D], compute dtype.
using QkObserver = std::function<void(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& x)>;

class LinearLM {
 public:
  LinearLM(ModelConfig cfg, LmWeights w);

  // Reads <dir>/config.json and the safetensors checkpoint, validating every tensor's presence,
  // dtype (float) and shape against the config. Weights are zero-copy views of the mapping.
  static LinearLM load(const std::string& dir);

  const ModelConfig& config() const { return cfg_; }
  const LmWeights& weights() const { return w_; }
  // Moves every weight the forward uses to `device` (the checkpoint's unused tensors stay where
  // they are). On CPU -> CPU nothing is copied.
  void to(const torch::Device& device);
  LmWeights& mutable_weights() { return w_; }

  // ids: [B, T] int64. Returns logits [B, T, V] in opts.dtype. With `state`, continues from it and
  // leaves it at the end of `ids` (an empty state is initialised).
  torch::Tensor forward(const torch::Tensor& ids, LmState* state = nullptr, const ForwardOptions& opts = {},
                        const QkObserver& observer = nullptr) const;
  // The final hidden states [B, T, D] (after the last norm, before lm_head).
  torch::Tensor hidden(const torch::Tensor& ids, LmState* state = nullptr, const ForwardOptions& opts = {},
                       const QkObserver& observer = nullptr) const;
  torch::Tensor logits_from_hidden(const torch::Tensor& h) const;

  // Several sequences packed end to end without padding (fla's varlen / cu_seqlens form): `ids`
  // [N] int64 holds sequence b at [sum(lens[:b]), sum(lens[:b+1])). Returns the hidden states
  // [N, D] of every token; no token sees another sequence, so each sequence's outputs equal a run
  // of it alone. Initial states: rows `rows` (int64 [S], repeats allowed) of `from`, read in place
  // and left untouched, when `from` is given; else empty. `out` (optional, must be empty) receives
  // every sequence's final state (S rows). The linear layers see one [N, D] matrix whatever the
  // lengths, so mixed-length batches cost no padding.
  // `parents` (optional): parents[b] = p >= 0 makes sequence b continue sequence p (p < b, p without
  // a parent) — its outputs equal those of p's tokens followed by b's — and parents[b] = -1 starts
  // b as above. A shared context and its continuations run in one pass this way, and the context's
  // state is never written out.
  torch::Tensor hidden_packed(const torch::Tensor& ids, const std::vector<int64_t>& lens, LmState* out,
                              const ForwardOptions& opts = {}, const LmState* from = nullptr,
                              const torch::Tensor& rows = {}, const std::vector<int64_t>* parents = nullptr) const;

  // fla tensor names and tensors (checkpoint dtype), in a stable order, for writing.
  std::vector<std::pair<std::string, torch::Tensor>> named_tensors() const;
  // Writes config.json + model.safetensors into `dir` (which must exist).
  void save(const std::string& dir) const;

 private:
  // Where a layer's recurrent state comes from and goes: `st` (read unless `from` is set, then
  // replaced) and/or rows `rows` of `from` (read only). `lens`: h is [1, N, D] holding packed
  // sequences of these lengths.
  struct StateIo {
    LayerState* st = nullptr;
    const LayerState* from = nullptr;
    torch::Tensor rows;
    const std::vector<int64_t>* lens = nullptr;
    const std::vector<int64_t>* parents = nullptr;  // with lens: see hidden_packed
  };
  torch::Tensor layer_forward(int64_t li, const torch::Tensor& h, const StateIo& io, const ForwardOptions& opts,
                              const QkObserver& observer) const;
  torch::Tensor run_layers(const torch::Tensor& ids, LmState* state, const ForwardOptions& opts,
                           const QkObserver& observer, const LmState* from, const torch::Tensor& rows,
                           const std::vector<int64_t>* lens, const std::vector<int64_t>* parents = nullptr) const;
  ModelConfig cfg_;
  LmWeights w_;
};

// A random model with fla's initialisation (_init_weights: normal(0, initializer_range) for
// linear, conv and embedding weights; ones for norms; A_log = log U(0, 16); dt_bias = softplus^-1
// of a log-uniform dt in [1e-3, 0.1]), stored in `dtype`. Deterministic in `seed`.
LmWeights init_random_weights(const ModelConfig& cfg, uint64_t seed, torch::ScalarType dtype);

}  // namespace rankprune
