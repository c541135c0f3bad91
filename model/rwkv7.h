// RWKV-7 ("Goose") byte-level LMs in rwkv.cpp's file format, their forward pass and key pruning.
//
// File format (rwkv.cpp rwkv_file_format.inc; facts in shared/docs/outside-models.md): a header of
// six little-endian uint32 (magic 0x67676d66, version 100|101, n_vocab, n_embed, n_layer, data
// type), then tensor records to EOF: int32 n_dims (1..3), int32 name length, int32 data type,
// n_dims int32 dims in ggml order (PyTorch shape reversed), the name bytes, the raw data. Only
// FP32 (0) and FP16 (1) data are read; quantized types are refused by name.
//
// The forward (docs/rwkv7.md) per layer, with x' = LayerNorm(x) and xx = x'_{t-1} - x'_t:
//   r, w, k, v, a, g from the token-shift mixes x' + xx * x_rwkvag[i];
//   w = exp(-e^-0.5 sigmoid(w0 + w2 tanh(w1 xw)));  a = sigmoid(a0 + a2 a1 xa);  g = g2 sigmoid(g1 xg)
//   v += (v_first - v) sigmoid(v0 + v2 v1 xv) (layers > 0; layer 0's v is v_first)
//   kk = L2norm_head(k * k_k);  k = k * (1 + (a - 1) k_a)
//   per head, state S [dv, dk]: S = S diag(w) + (S (-kk)) (kk a)^T + v k^T;  y = S r
//   (stored transposed, [dk, dv], as DeltaNet's LayerState)
//   y = GroupNorm_head(y) + (sum_j r_j k_j r_k[h, j]) v;  out = W_o (y * g)
//   FFN: relu(W_key (x' + xx x_k))^2 through W_value.
// A key-pruned model keeps dk = K < head size channels of the nine key-side tensors (rows of
// receptance/key/w2/a2, entries of w0/a0/k_k/k_a, columns of r_k); kk is then normalised over
// the kept channels. Such a file is read and written here; rwkv.cpp itself cannot load it (it
// assumes key width == head size).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace rankprune {

constexpr uint32_t kRwkvMagic = 0x67676d66;  // "ggmf"
constexpr int32_t kRwkvTypeF32 = 0, kRwkvTypeF16 = 1;

// One tensor record: `data` has the PyTorch shape (ggml dims reversed) and the stored dtype
// (float32 or float16), contiguous, owned.
struct RwkvTensor {
  std::string name;
  torch::Tensor data;
};

// The file as stored: header fields and records in file order.
struct RwkvFile {
  uint32_t version = 101;
  uint32_t n_vocab = 0, n_embed = 0, n_layer = 0;
  int32_t data_type = kRwkvTypeF32;  // the header's: 0 FP32, 1 FP16 (FP16 files keep some tensors FP32)
  std::vector<RwkvTensor> tensors;

  // Validates everything before allocating tensor memory (memory stays bounded by the file size):
  // header, every record's fields against the bytes left, duplicates, the RWKV-7 tensor set for
  // n_layer, every shape, no trailing bytes. InputError naming the file, tensor and field.
  static RwkvFile read(const std::string& path);
  // The same checks on bytes already in memory (`source` names them in messages).
  static RwkvFile parse(const std::string& bytes, const std::string& source);
  // Serialised bytes / an atomic write (temp file + fsync + rename).
  std::string serialize() const;
  void write(const std::string& path) const;

  const torch::Tensor& get(const std::string& name) const;  // InternalError when absent
  int64_t parameters() const;
};

// Sizes of an RWKV-7 model, derived from its tensors.
struct Rwkv7Config {
  int64_t n_vocab = 0, n_embed = 0, n_layer = 0;
  int64_t n_heads = 0;    // H: r_k's first dim
  int64_t head_k = 0;     // dk: key channels per head (== head_v unless pruned)
  int64_t head_v = 0;     // dv = n_embed / H
  int64_t ffn_dim = 0;
};

// Per-layer r and the key that enters the state (k after the k_a mix), [B, T, H, dk] in the
// compute dtype: the calibration hook (docs/rwkv7.md says why these two).
using Rwkv7Observer = std::function<void(int64_t layer, const torch::Tensor& r, const torch::Tensor& k)>;

// Recurrent state after a prefix; empty layers = the zero state rwkv.cpp starts from.
struct Rwkv7State {
  struct Layer {
    torch::Tensor att_shift, ffn_shift;  // [B, C] last LayerNorm outputs
    torch::Tensor s;                     // [B, H, dk, dv]: key-major (S^T of the [value, key] state)
  };
  std::vector<Layer> layers;
};

class Rwkv7Model {
 public:
  explicit Rwkv7Model(RwkvFile file, const std::string& source = "rwkv7 model");
  static Rwkv7Model load(const std::string& path) { return Rwkv7Model(RwkvFile::read(path), path); }

  const Rwkv7Config& config() const { return cfg_; }
  const RwkvFile& file() const { return file_; }
  void save(const std::string& path) const { file_.write(path); }

  // ids: [B, T] int64 in [0, n_vocab). Logits [B, T, V] in `dtype` (float32 or float64). With
  // `state`, continues from it and leaves it at the end of `ids`.
  torch::Tensor forward(const torch::Tensor& ids, Rwkv7State* state = nullptr,
                        torch::ScalarType dtype = torch::kFloat32, const Rwkv7Observer& observer = nullptr) const;

  // A new model keeping channels kept[l][h] (ascending, all the same count) of every head's key
  // dimension in the nine key-side tensors. InputError on a malformed selection.
  Rwkv7Model slice_keys(const std::vector<std::vector<std::vector<int64_t>>>& kept) const;

 private:
  RwkvFile file_;
  Rwkv7Config cfg_;
  std::map<std::string, std::size_t> index_;
};

// The tensor names an RWKV-7 file of n_layer layers holds (file order of rwkv.cpp's converter).
std::vector<std::string> rwkv7_tensor_names(int64_t n_layer);

}  // namespace rankprune
