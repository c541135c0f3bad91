#include "model/rwkv7.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "common/error.h"
#include "common/fs.h"
#include "kernels/cpu_clones.h"
#include "kernels/threads.h"

namespace rankprune {

namespace {

constexpr std::size_t kHeaderBytes = 24;
constexpr int64_t kMaxNameLength = 4096;  // rwkv.cpp's names are < 64 bytes; anything longer is hostile
constexpr uint32_t kMaxLayers = 4096, kMaxEmbed = 1u << 20, kMaxVocab = 1u << 24;

const char* type_name(int64_t t) {
  switch (t) {
    case 0: return "FP32";
    case 1: return "FP16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 4: return "Q4_1_O";
    case 5: return "Q4_2";
    case 6: return "Q4_3";
    case 7: return "Q5_0";
    case 8: return "Q5_1";
    case 9: return "Q8_0";
    default: return nullptr;
  }
}

// "FP32 (0) and FP16 (1) only": a quantized type is named, an unknown one is reported as such.
void check_type(int64_t t, const std::string& where, const std::string& field) {
  if (t == kRwkvTypeF32 || t == kRwkvTypeF16) return;
  const char* n = type_name(t);
  if (n != nullptr)
    throw InputError(cat(where, ": field '", field, "' is ", t, " (", n,
                         ", quantized); rankprune reads only FP32 (0) and FP16 (1) data"));
  throw InputError(cat(where, ": field '", field, "' is ", t, ", not a known rwkv.cpp data type (expected 0 FP32 or 1 FP16)"));
}

uint32_t read_u32(const std::string& b, std::size_t off) {
  uint32_t v;
  std::memcpy(&v, b.data() + off, 4);  // the format is little-endian, as is every host we build for
  return v;
}
int32_t read_i32(const std::string& b, std::size_t off) {
  int32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += cat(i ? ", " : "", s[i]);
  return o + "]";
}

struct Record {
  std::string name;
  int32_t type = 0;
  std::vector<int64_t> shape;  // PyTorch order
  std::size_t offset = 0, bytes = 0;
};

// The RWKV-7 layout check, shared by the reader (on record shapes, before any tensor memory is
// allocated) and by models built in memory (slice_keys).
Rwkv7Config check_layout(const std::map<std::string, std::vector<int64_t>>& shapes, int64_t n_vocab, int64_t n_embed,
                         int64_t n_layer, const std::string& src) {
  const auto names = rwkv7_tensor_names(n_layer);
  for (const auto& n : names)
    RP_CHECK_INPUT(shapes.count(n), src, ": tensor '", n, "' is missing (an RWKV-7 file with n_layer = ", n_layer,
                   " holds ", names.size(), " tensors)");
  if (shapes.size() != names.size()) {
    std::set<std::string> want(names.begin(), names.end());
    for (const auto& [n, s] : shapes)
      RP_CHECK_INPUT(want.count(n), src, ": unexpected tensor '", n, "' (not part of an RWKV-7 model with n_layer = ",
                     n_layer, ")");
  }
  const int64_t C = n_embed, V = n_vocab;
  auto expect = [&](const std::string& n, const std::vector<int64_t>& want, const std::string& why) {
    const auto& got = shapes.at(n);
    RP_CHECK_INPUT(got == want, src, ": tensor '", n, "' has shape ", shape_str(got),
                   " (PyTorch order: the ggml dims reversed); expected ", shape_str(want), " (", why, ")");
  };
  const std::string cv = cat("n_embed = ", C, ", n_vocab = ", V);
  expect("emb.weight", {V, C}, cv);
  expect("head.weight", {V, C}, cv);
  expect("ln_out.weight", {C}, cv);
  expect("ln_out.bias", {C}, cv);
  expect("blocks.0.ln0.weight", {C}, cv);
  expect("blocks.0.ln0.bias", {C}, cv);

  Rwkv7Config c;
  c.n_vocab = V, c.n_embed = C, c.n_layer = n_layer;
  const auto& rk0 = shapes.at("blocks.0.att.r_k");
  RP_CHECK_INPUT(rk0.size() == 2 && rk0[0] > 0 && C % rk0[0] == 0 && rk0[1] >= 1 && rk0[1] <= C / rk0[0], src,
                 ": tensor 'blocks.0.att.r_k' has shape ", shape_str(rk0),
                 "; expected [H, dk] with H dividing n_embed = ", C, " and 1 <= dk <= n_embed / H");
  c.n_heads = rk0[0], c.head_k = rk0[1], c.head_v = C / rk0[0];
  const int64_t HK = c.n_heads * c.head_k;
  const std::string hk = cat("n_embed = ", C, ", H = ", c.n_heads, ", key width dk = ", c.head_k, " from blocks.0.att.r_k");
  // A LoRA pair: the first [D, C] gives D; the second must be [out, D].
  auto lora = [&](const std::string& p, const std::string& a, const std::string& b, int64_t out) {
    const auto& s = shapes.at(p + a);
    RP_CHECK_INPUT(s.size() == 2 && s[1] == C, src, ": tensor '", p + a, "' has shape ", shape_str(s),
                   "; expected [D, ", C, "] (a LoRA down-projection from n_embed = ", C, ")");
    expect(p + b, {out, s[0]}, cat(hk, ", LoRA width ", s[0], " from ", p + a));
  };
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string p = cat("blocks.", l, ".");
    for (const char* n : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.ln_x.weight", "att.ln_x.bias"})
      expect(p + n, {C}, hk);
    expect(p + "att.x_rwkvag", {6, 1, C}, hk);
    expect(p + "att.r_k", {c.n_heads, c.head_k}, hk);
    for (const char* n : {"att.w0", "att.a0", "att.k_k", "att.k_a"}) expect(p + n, {1, 1, HK}, hk);
    expect(p + "att.receptance.weight", {HK, C}, hk);
    expect(p + "att.key.weight", {HK, C}, hk);
    expect(p + "att.value.weight", {C, C}, hk);
    expect(p + "att.output.weight", {C, C}, hk);
    lora(p, "att.w1", "att.w2", HK);
    lora(p, "att.a1", "att.a2", HK);
    lora(p, "att.g1", "att.g2", C);
    if (l > 0) {
      lora(p, "att.v1", "att.v2", C);
      expect(p + "att.v0", {1, 1, C}, hk);
    }
    expect(p + "ffn.x_k", {1, 1, C}, hk);
    const auto& fk = shapes.at(p + "ffn.key.weight");
    RP_CHECK_INPUT(fk.size() == 2 && fk[1] == C && fk[0] > 0, src, ": tensor '", p, "ffn.key.weight' has shape ",
                   shape_str(fk), "; expected [F, ", C, "]");
    expect(p + "ffn.value.weight", {C, fk[0]}, cat("n_embed = ", C, ", F = ", fk[0], " from ", p, "ffn.key.weight"));
    if (l == 0) c.ffn_dim = fk[0];
  }
  return c;
}

}  // namespace

std::vector<std::string> rwkv7_tensor_names(int64_t n_layer) {
  std::vector<std::string> out = {"emb.weight"};
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string p = cat("blocks.", l, ".");
    for (const char* n : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"}) out.push_back(p + n);
    if (l == 0) out.push_back(p + "ln0.weight"), out.push_back(p + "ln0.bias");
    for (const char* n : {"att.x_rwkvag", "att.w1", "att.w2", "att.w0", "att.a1", "att.a2", "att.a0"}) out.push_back(p + n);
    if (l > 0)
      for (const char* n : {"att.v1", "att.v2", "att.v0"}) out.push_back(p + n);
    for (const char* n : {"att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k", "att.receptance.weight",
                          "att.key.weight", "att.value.weight", "att.output.weight", "att.ln_x.weight",
                          "att.ln_x.bias", "ffn.x_k", "ffn.key.weight", "ffn.value.weight"})
      out.push_back(p + n);
  }
  for (const char* n : {"ln_out.weight", "ln_out.bias", "head.weight"}) out.push_back(n);
  return out;
}

// ----------------------------------------------------------------------------------------- reader

RwkvFile RwkvFile::read(const std::string& path) { return parse(read_file(path), path); }

RwkvFile RwkvFile::parse(const std::string& b, const std::string& src) {
  RP_CHECK_INPUT(b.size() >= kHeaderBytes, src, ": truncated header: the file has ", b.size(),
                 " bytes; an rwkv.cpp header needs ", kHeaderBytes, " (six uint32)");
  RwkvFile f;
  const uint32_t magic = read_u32(b, 0);
  RP_CHECK_INPUT(magic == kRwkvMagic, src, ": bad magic ", hex32(magic), "; expected ", hex32(kRwkvMagic),
                 " (an rwkv.cpp model file)");
  f.version = read_u32(b, 4);
  RP_CHECK_INPUT(f.version == 100 || f.version == 101, src, ": header field 'version' is ", f.version,
                 "; expected 100 or 101");
  f.n_vocab = read_u32(b, 8), f.n_embed = read_u32(b, 12), f.n_layer = read_u32(b, 16);
  RP_CHECK_INPUT(f.n_vocab >= 1 && f.n_vocab <= kMaxVocab, src, ": header field 'n_vocab' is ", f.n_vocab,
                 "; expected 1..", kMaxVocab);
  RP_CHECK_INPUT(f.n_embed >= 1 && f.n_embed <= kMaxEmbed, src, ": header field 'n_embed' is ", f.n_embed,
                 "; expected 1..", kMaxEmbed);
  RP_CHECK_INPUT(f.n_layer >= 1 && f.n_layer <= kMaxLayers, src, ": header field 'n_layer' is ", f.n_layer,
                 "; expected 1..", kMaxLayers);
  const uint32_t dt = read_u32(b, 20);
  check_type(static_cast<int64_t>(dt), src, "data type (header)");
  f.data_type = static_cast<int32_t>(dt);

  // Pass 1: every record's fields against the bytes that remain; nothing is allocated but the
  // record list (each record consumes >= 13 bytes, so its length is bounded by the file size).
  std::vector<Record> recs;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::size_t off = kHeaderBytes;
  while (off < b.size()) {
    const std::size_t left = b.size() - off;
    const std::string at = cat(src, ": tensor record #", recs.size(), " at byte ", off);
    RP_CHECK_INPUT(left >= 12, src, ": ", left, " trailing bytes after the last tensor record at byte ", off,
                   " (a record header needs 12)");
    const int32_t n_dims = read_i32(b, off), name_len = read_i32(b, off + 4), type = read_i32(b, off + 8);
    RP_CHECK_INPUT(n_dims >= 1 && n_dims <= 3, at, ": field 'n_dims' is ", n_dims, "; expected 1..3");
    RP_CHECK_INPUT(name_len >= 1 && name_len <= kMaxNameLength, at, ": field 'name length' is ", name_len,
                   "; expected 1..", kMaxNameLength);
    const std::size_t head = 12 + 4 * static_cast<std::size_t>(n_dims);
    RP_CHECK_INPUT(left >= head + static_cast<std::size_t>(name_len), at, ": the record's dims and ", name_len,
                   "-byte name run past the end of the file (", left, " bytes left)");
    Record r;
    r.name.assign(b.data() + off + head, static_cast<std::size_t>(name_len));
    const std::string where = cat(at, " ('", r.name, "')");
    check_type(type, where, "data type");
    RP_CHECK_INPUT(!(f.data_type == kRwkvTypeF32 && type != kRwkvTypeF32), where,
                   ": data type mismatch: the tensor is ", type_name(type),
                   " but the header declares an FP32 file (every tensor FP32)");
    r.type = type;
    const std::size_t item = type == kRwkvTypeF32 ? 4 : 2;
    std::size_t avail = left - head - static_cast<std::size_t>(name_len);
    // Element count x item size, checked against the bytes left one factor at a time (no overflow:
    // the running product never exceeds `avail`).
    std::size_t bytes = item;
    std::vector<int64_t> ggml;
    for (int32_t d = 0; d < n_dims; ++d) {
      const int32_t dim = read_i32(b, off + 12 + 4 * static_cast<std::size_t>(d));
      RP_CHECK_INPUT(dim >= 1, where, ": dim ", d, " is ", dim, "; expected >= 1");
      RP_CHECK_INPUT(static_cast<std::size_t>(dim) <= avail / bytes, where, ": dims ", d, " = ", dim,
                     " make the tensor larger than the ", avail, " bytes left in the file");
      bytes *= static_cast<std::size_t>(dim);
      ggml.push_back(dim);
    }
    r.shape.assign(ggml.rbegin(), ggml.rend());
    r.offset = off + head + static_cast<std::size_t>(name_len);
    r.bytes = bytes;
    RP_CHECK_INPUT(!shapes.count(r.name), where, ": duplicate tensor name '", r.name, "'");
    shapes[r.name] = r.shape;
    off = r.offset + r.bytes;
    recs.push_back(std::move(r));
  }
  check_layout(shapes, f.n_vocab, f.n_embed, f.n_layer, src);

  // Pass 2: the tensors (owned copies: memory = the data bytes of the file).
  for (const auto& r : recs) {
    auto t = torch::empty(r.shape, r.type == kRwkvTypeF32 ? torch::kFloat32 : torch::kFloat16);
    std::memcpy(t.data_ptr(), b.data() + r.offset, r.bytes);
    f.tensors.push_back({r.name, t});
  }
  return f;
}

// ----------------------------------------------------------------------------------------- writer

std::string RwkvFile::serialize() const {
  std::string out;
  auto put = [&](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); };
  const uint32_t hdr[6] = {kRwkvMagic, version, n_vocab, n_embed, n_layer, static_cast<uint32_t>(data_type)};
  put(hdr, sizeof hdr);
  for (const auto& t : tensors) {
    const auto st = t.data.scalar_type();
    RP_ASSERT(st == torch::kFloat32 || st == torch::kFloat16, t.name, " has dtype ", st);
    RP_ASSERT(t.data.dim() >= 1 && t.data.dim() <= 3, t.name);
    auto c = t.data.contiguous();
    const int32_t rec[3] = {static_cast<int32_t>(c.dim()), static_cast<int32_t>(t.name.size()),
                            st == torch::kFloat32 ? kRwkvTypeF32 : kRwkvTypeF16};
    put(rec, sizeof rec);
    for (int64_t d = c.dim() - 1; d >= 0; --d) {  // ggml order: innermost first
      const int32_t v = static_cast<int32_t>(c.size(d));
      put(&v, 4);
    }
    put(t.name.data(), t.name.size());
    put(c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
  }
  return out;
}

void RwkvFile::write(const std::string& path) const {
  AtomicFile f(path);
  f.write(serialize());
  f.commit();
}

const torch::Tensor& RwkvFile::get(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t.data;
  RP_ASSERT(false, "tensor ", name, " not in the file");
  static torch::Tensor none;
  return none;
}

int64_t RwkvFile::parameters() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.data.numel();
  return n;
}

// ------------------------------------------------------------------------------------------ model

Rwkv7Model::Rwkv7Model(RwkvFile file, const std::string& source) : file_(std::move(file)) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (std::size_t i = 0; i < file_.tensors.size(); ++i) {
    const auto& t = file_.tensors[i];
    RP_CHECK_INPUT(!index_.count(t.name), source, ": duplicate tensor name '", t.name, "'");
    index_[t.name] = i;
    shapes[t.name] = t.data.sizes().vec();
  }
  cfg_ = check_layout(shapes, file_.n_vocab, file_.n_embed, file_.n_layer, source);
}

namespace {

// One layer's state recurrence over T tokens, per (batch row, head), in place on S.
// r, w, kk, b (= kk * a), k: [B, T, H, dk]; v, y: [B, T, H, dv]; S: [B, H, dk, dv] (stored key-major,
// the transpose of the [value, key] state of the facts, so that every inner loop runs over the
// value index without a horizontal reduction and vectorises). All contiguous.
// Per token: sa = S^T (-kk); S = diag(w) S + b sa^T + k v^T; y = S^T r. Two passes over S,
// about 6 flops per element.
// Work item p = (batch row p / H, head p % H); items [p0, p1) here.
template <typename F>
RP_INLINE void scan_impl(int64_t p0, int64_t p1, int64_t T, int64_t H, int64_t dk, int64_t dv, const F* r,
                         const F* w, const F* kk, const F* bb, const F* k, const F* v, F* S, F* y) {
  std::vector<F> sa_buf(static_cast<std::size_t>(dv));
  F* sa = sa_buf.data();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t bi = p / H, h = p % H;
    F* s = S + p * dk * dv;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t ok = ((bi * T + t) * H + h) * dk, ov = ((bi * T + t) * H + h) * dv;
      const F *rt = r + ok, *wt = w + ok, *kkt = kk + ok, *bt = bb + ok, *kt = k + ok, *vt = v + ov;
      F* yt = y + ov;
      for (int64_t i = 0; i < dv; ++i) sa[i] = 0, yt[i] = 0;
      for (int64_t j = 0; j < dk; ++j) {  // sa = (S_old)^T (-kk): the old state in both terms
        const F c = -kkt[j];
        const F* row = s + j * dv;
        for (int64_t i = 0; i < dv; ++i) sa[i] += c * row[i];
      }
      for (int64_t j = 0; j < dk; ++j) {
        const F wj = wt[j], bj = bt[j], kj = kt[j], rj = rt[j];
        F* row = s + j * dv;
        for (int64_t i = 0; i < dv; ++i) {
          row[i] = row[i] * wj + bj * sa[i] + kj * vt[i];
          yt[i] += rj * row[i];
        }
      }
    }
  }
}

RP_CPU_CLONES void scan_f32(int64_t p0, int64_t p1, int64_t T, int64_t H, int64_t dk, int64_t dv, const float* r,
                            const float* w, const float* kk, const float* bb, const float* k, const float* v, float* S,
                            float* y) {
  scan_impl<float>(p0, p1, T, H, dk, dv, r, w, kk, bb, k, v, S, y);
}
RP_CPU_CLONES void scan_f64(int64_t p0, int64_t p1, int64_t T, int64_t H, int64_t dk, int64_t dv, const double* r,
                            const double* w, const double* kk, const double* bb, const double* k, const double* v,
                            double* S, double* y) {
  scan_impl<double>(p0, p1, T, H, dk, dv, r, w, kk, bb, k, v, S, y);
}

}  // namespace

torch::Tensor Rwkv7Model::forward(const torch::Tensor& ids, Rwkv7State* state, torch::ScalarType dt,
                                  const Rwkv7Observer& observer) const {
  RP_CHECK_INPUT(dt == torch::kFloat32 || dt == torch::kFloat64, "rwkv7 forward: dtype must be float32 or float64");
  RP_CHECK_INPUT(ids.dim() == 2 && ids.scalar_type() == torch::kLong, "rwkv7 forward: ids must be [B, T] int64");
  const int64_t B = ids.size(0), T = ids.size(1), C = cfg_.n_embed, H = cfg_.n_heads, dk = cfg_.head_k,
                dv = cfg_.head_v;
  if (T > 0) {
    RP_CHECK_INPUT(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < cfg_.n_vocab,
                   "rwkv7 forward: token ids must be in [0, ", cfg_.n_vocab, ")");
  }
  torch::NoGradGuard ng;
  auto W = [&](const std::string& n) { return file_.tensors[index_.at(n)].data.to(dt); };
  if (state && state->layers.empty()) {
    state->layers.resize(static_cast<std::size_t>(cfg_.n_layer));
    for (auto& L : state->layers) {
      L.att_shift = torch::zeros({B, C}, dt), L.ffn_shift = torch::zeros({B, C}, dt);
      L.s = torch::zeros({B, H, dk, dv}, dt);
    }
  }
  if (state) RP_CHECK_INPUT(state->layers[0].s.size(0) == B, "rwkv7 forward: the state has ", state->layers[0].s.size(0),
                            " rows; ids has ", B);
  auto ln = [&](const torch::Tensor& x, const std::string& n, double eps) {
    return torch::layer_norm(x, {C}, W(n + ".weight"), W(n + ".bias"), eps);
  };
  // x_{t-1} - x_t with the carried last row (zeros at the start).
  auto shift_diff = [&](const torch::Tensor& x, torch::Tensor* carry) {
    auto first = carry && carry->defined() ? carry->to(dt).unsqueeze(1) : torch::zeros({B, 1, C}, x.options());
    auto prev = torch::cat({first, x.narrow(1, 0, T - 1)}, 1);
    if (carry) *carry = x.select(1, T - 1).clone();
    return prev - x;
  };
  auto lin = [](const torch::Tensor& x, const torch::Tensor& w) { return torch::matmul(x, w.t()); };

  auto x = ln(torch::embedding(W("emb.weight"), ids), "blocks.0.ln0", 1e-5);  // [B, T, C]
  if (T == 0) return torch::empty({B, 0, cfg_.n_vocab}, dt);
  torch::Tensor v_first;
  const double decay_scale = std::exp(-0.5);
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    const std::string p = cat("blocks.", l, ".att.");
    Rwkv7State::Layer* st = state ? &state->layers[static_cast<std::size_t>(l)] : nullptr;
    // ---- time mix
    auto xa = ln(x, cat("blocks.", l, ".ln1"), 1e-5);
    auto xx = shift_diff(xa, st ? &st->att_shift : nullptr);
    auto mix = W(p + "x_rwkvag").view({6, C});
    auto xr = xa + xx * mix[0], xw = xa + xx * mix[1], xk = xa + xx * mix[2], xv = xa + xx * mix[3],
         xa_ = xa + xx * mix[4], xg = xa + xx * mix[5];
    auto r = lin(xr, W(p + "receptance.weight"));  // [B, T, H*dk]
    auto w = torch::exp(-decay_scale *
                        torch::sigmoid(W(p + "w0").view({-1}) + lin(torch::tanh(lin(xw, W(p + "w1"))), W(p + "w2"))));
    auto k = lin(xk, W(p + "key.weight"));  // [B, T, H*dk]
    auto v = lin(xv, W(p + "value.weight"));  // [B, T, C]
    if (l == 0)
      v_first = v;
    else
      v = v + (v_first - v) * torch::sigmoid(W(p + "v0").view({-1}) + lin(lin(xv, W(p + "v1")), W(p + "v2")));
    auto a = torch::sigmoid(W(p + "a0").view({-1}) + lin(lin(xa_, W(p + "a1")), W(p + "a2")));
    auto g = lin(torch::sigmoid(lin(xg, W(p + "g1"))), W(p + "g2"));
    auto kk = (k * W(p + "k_k").view({-1})).view({B, T, H, dk});
    kk = kk / kk.norm(2, -1, true).clamp_min(1e-12);  // F.normalize over the (kept) key channels
    k = k * (1 + (a - 1) * W(p + "k_a").view({-1}));
    auto r4 = r.view({B, T, H, dk}).contiguous(), k4 = k.view({B, T, H, dk}).contiguous();
    if (observer) observer(l, r4, k4);
    auto w4 = w.view({B, T, H, dk}).contiguous(), kk4 = kk.contiguous();
    auto bb = (kk * a.view({B, T, H, dk})).contiguous();
    auto v4 = v.view({B, T, H, dv}).contiguous();
    auto S = st ? st->s : torch::zeros({B, H, dk, dv}, xa.options());
    RP_CHECK_INPUT(S.is_contiguous() && S.scalar_type() == dt, "rwkv7 forward: the state is ", S.scalar_type(),
                   "; the compute dtype is ", dt, " (continue a state in the dtype it was made in)");
    auto y = torch::empty({B, T, H, dv}, xa.options());
    // (row, head) pairs are independent: split over the kernel threads (results do not depend on it).
    parallel_ranges(B * H, [&](int64_t p0, int64_t p1) {
      if (dt == torch::kFloat32)
        scan_f32(p0, p1, T, H, dk, dv, r4.data_ptr<float>(), w4.data_ptr<float>(), kk4.data_ptr<float>(),
                 bb.data_ptr<float>(), k4.data_ptr<float>(), v4.data_ptr<float>(), S.data_ptr<float>(),
                 y.data_ptr<float>());
      else
        scan_f64(p0, p1, T, H, dk, dv, r4.data_ptr<double>(), w4.data_ptr<double>(), kk4.data_ptr<double>(),
                 bb.data_ptr<double>(), k4.data_ptr<double>(), v4.data_ptr<double>(), S.data_ptr<double>(),
                 y.data_ptr<double>());
    });
    // Per-head GroupNorm (eps 64e-5), then the bonus (sum_j r_j k_j r_k[h, j]) v.
    auto mean = y.mean(-1, true);
    auto var = (y - mean).pow(2).mean(-1, true);
    auto yn = ((y - mean) / torch::sqrt(var + 64e-5)).reshape({B, T, C}) * W(p + "ln_x.weight") + W(p + "ln_x.bias");
    auto bonus = (r4 * k4 * W(p + "r_k")).sum(-1, true) * v4;  // [B, T, H, dv]
    yn = yn + bonus.reshape({B, T, C});
    x = x + lin(yn * g, W(p + "output.weight"));
    // ---- channel mix
    const std::string f = cat("blocks.", l, ".ffn.");
    auto xf = ln(x, cat("blocks.", l, ".ln2"), 1e-5);
    auto fx = shift_diff(xf, st ? &st->ffn_shift : nullptr);
    auto kf = torch::relu(lin(xf + fx * W(f + "x_k").view({-1}), W(f + "key.weight"))).pow(2);
    x = x + lin(kf, W(f + "value.weight"));
  }
  return lin(ln(x, "ln_out", 1e-5), W("head.weight"));
}

Rwkv7Model Rwkv7Model::slice_keys(const std::vector<std::vector<std::vector<int64_t>>>& kept) const {
  const int64_t L = cfg_.n_layer, H = cfg_.n_heads, dk = cfg_.head_k;
  RP_CHECK_INPUT(static_cast<int64_t>(kept.size()) == L, "rwkv7 selection has ", kept.size(), " layers; the model has ",
                 L);
  const int64_t K = kept.empty() || kept[0].empty() ? 0 : static_cast<int64_t>(kept[0][0].size());
  RP_CHECK_INPUT(K >= 1, "rwkv7 selection: at least one channel per head must be kept");
  RwkvFile out = file_;  // shallow: untouched tensors are shared
  auto replace = [&](const std::string& n, torch::Tensor t) { out.tensors[index_.at(n)].data = t.contiguous(); };
  for (int64_t l = 0; l < L; ++l) {
    RP_CHECK_INPUT(static_cast<int64_t>(kept[l].size()) == H, "rwkv7 selection layer ", l, " has ", kept[l].size(),
                   " heads; the model has ", H);
    std::vector<int64_t> flat;
    std::vector<torch::Tensor> rk_rows;
    const std::string p = cat("blocks.", l, ".att.");
    const auto& rk = file_.get(p + "r_k");
    for (int64_t h = 0; h < H; ++h) {
      const auto& idx = kept[l][h];
      RP_CHECK_INPUT(static_cast<int64_t>(idx.size()) == K, "rwkv7 selection layer ", l, " head ", h, " keeps ",
                     idx.size(), " channels; head 0 of layer 0 keeps ", K);
      for (std::size_t i = 0; i < idx.size(); ++i) {
        RP_CHECK_INPUT(idx[i] >= 0 && idx[i] < dk && (i == 0 || idx[i] > idx[i - 1]), "rwkv7 selection layer ", l,
                       " head ", h, ": channel ids must be ascending and in [0, ", dk, ")");
        flat.push_back(h * dk + idx[i]);
      }
      rk_rows.push_back(rk[h].index_select(0, torch::tensor(idx, torch::kLong)));
    }
    auto ix = torch::tensor(flat, torch::kLong);
    for (const char* n : {"receptance.weight", "key.weight", "w2", "a2"})
      replace(p + n, file_.get(p + n).index_select(0, ix));
    for (const char* n : {"w0", "a0", "k_k", "k_a"}) replace(p + n, file_.get(p + n).index_select(2, ix));
    replace(p + "r_k", torch::stack(rk_rows));
  }
  return Rwkv7Model(std::move(out), "pruned rwkv7 model");
}

}  // namespace rankprune
