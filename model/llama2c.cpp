// llama2.c legacy .bin reader and the Llama forward (see llama2c.h for the format and the math).
#include "model/llama2c.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "common/random.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "rankprune assumes a little-endian host");

namespace rankprune {

namespace {

constexpr int64_t kHeaderBytes = 28;
constexpr double kRmsEps = 1e-5;
constexpr int kBos = 1;

using u128 = unsigned __int128;

// Floats the weights of `c` occupy in the file (RoPE tables and an unshared classifier included).
// 128-bit: every field is at most 2^31, so no product of four of them overflows.
u128 expected_floats(const Llama2cConfig& c) {
  const u128 D = static_cast<u128>(c.dim), F = static_cast<u128>(c.hidden_dim), L = static_cast<u128>(c.n_layers),
             V = static_cast<u128>(c.vocab_size), S = static_cast<u128>(c.seq_len);
  const u128 hs = D / static_cast<u128>(c.n_heads), kv = hs * static_cast<u128>(c.n_kv_heads);
  u128 n = V * D;                        // token_embedding
  n += L * D;                            // rms_att
  n += L * D * D + 2 * L * D * kv;       // wq, wk, wv
  n += L * D * D;                        // wo
  n += L * D;                            // rms_ffn
  n += 3 * L * D * F;                    // w1, w2, w3
  n += D;                                // rms_final
  n += S * hs;                           // freq_cis_real + freq_cis_imag, [S, hs/2] each
  if (!c.shared_classifier) n += V * D;  // wcls
  return n;
}

std::string u128_str(u128 v) {
  if (v == 0) return "0";
  std::string s;
  while (v > 0) s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10))), v /= 10;
  return s;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) {
  // x: [..., D]; llama2.c: w * x / sqrt(mean(x^2) + eps)
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + kRmsEps) * w.to(x.scalar_type());
}

// x: [B, T, n, hs]; cos, sin: [T, hs/2] -> rotates the adjacent pairs (2j, 2j+1).
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto s = x.sizes();
  auto p = x.reshape({s[0], s[1], s[2], s[3] / 2, 2});
  auto a = p.select(-1, 0), b = p.select(-1, 1);
  auto c = cos.unsqueeze(1), n = sin.unsqueeze(1);  // [T, 1, hs/2]
  return torch::stack({a * c - b * n, a * n + b * c}, -1).reshape(s);
}

}  // namespace

int64_t Llama2cConfig::file_floats() const { return static_cast<int64_t>(expected_floats(*this)); }

int64_t dense_attention_parameters(const Llama2cConfig& c, int64_t n_kv_heads) {
  return 2 * c.dim * c.dim + 2 * c.dim * n_kv_heads * c.head_size();
}

Llama2cConfig read_llama2c_header(const std::string& path) {
  struct stat st {};
  RP_CHECK_INPUT(::stat(path.c_str(), &st) == 0, "llama2.c model '", path, "': cannot stat (", std::strerror(errno),
                 ")");
  RP_CHECK_INPUT(S_ISREG(st.st_mode), "llama2.c model '", path, "': not a regular file");
  const int64_t size = static_cast<int64_t>(st.st_size);
  RP_CHECK_INPUT(size >= kHeaderBytes, "llama2.c model '", path, "': field 'header': the file has ", size,
                 " bytes, fewer than the 28-byte header (7 int32)");
  File f(std::fopen(path.c_str(), "rb"));
  RP_CHECK_INPUT(f != nullptr, "llama2.c model '", path, "': cannot open (", std::strerror(errno), ")");
  int32_t h[7];
  RP_CHECK_INPUT(std::fread(h, sizeof h, 1, f.get()) == 1, "llama2.c model '", path,
                 "': field 'header': cannot read 28 bytes");
  RP_CHECK_INPUT((size - kHeaderBytes) % 4 == 0, "llama2.c model '", path, "': field 'file size': ", size,
                 " bytes is not 28 + 4 x (float32 count)");
  const int64_t n_floats = (size - kHeaderBytes) / 4;

  static const char* const names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                       "seq_len"};
  int64_t v[7];
  for (int i = 0; i < 7; ++i) {
    v[i] = h[i];
    if (i == 5) v[i] = v[i] < 0 ? -v[i] : v[i];  // negative vocab_size: unshared classifier
    RP_CHECK_INPUT(v[i] >= 1, "llama2.c model '", path, "': header field '", names[i], "' = ", h[i],
                   i == 5 ? " must be non-zero" : " must be >= 1");
    // Every field multiplies into at least one stored block (seq_len into the RoPE tables), so
    // none can exceed the floats the file holds: hostile sizes stop here, before any allocation.
    RP_CHECK_INPUT(v[i] <= n_floats, "llama2.c model '", path, "': header field '", names[i], "' = ", h[i],
                   " is larger than the ", n_floats, " float32 values the file holds");
  }
  Llama2cConfig c;
  c.dim = v[0], c.hidden_dim = v[1], c.n_layers = v[2], c.n_heads = v[3], c.n_kv_heads = v[4];
  c.vocab_size = v[5], c.seq_len = v[6];
  c.shared_classifier = h[5] > 0;
  RP_CHECK_INPUT(c.dim % c.n_heads == 0, "llama2.c model '", path, "': header field 'n_heads' = ", c.n_heads,
                 " does not divide 'dim' = ", c.dim);
  RP_CHECK_INPUT(c.head_size() % 2 == 0, "llama2.c model '", path, "': header field 'n_heads' = ", c.n_heads,
                 " gives an odd head size ", c.head_size(), " (RoPE rotates pairs)");
  RP_CHECK_INPUT(c.n_kv_heads <= c.n_heads && c.n_heads % c.n_kv_heads == 0, "llama2.c model '", path,
                 "': header field 'n_kv_heads' = ", c.n_kv_heads, " does not divide 'n_heads' = ", c.n_heads);
  const u128 want = expected_floats(c);
  RP_CHECK_INPUT(want == static_cast<u128>(n_floats), "llama2.c model '", path, "': field 'file size': ", size,
                 " bytes, but the header (dim ", c.dim, ", hidden_dim ", c.hidden_dim, ", n_layers ", c.n_layers,
                 ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", h[5], ", seq_len ",
                 c.seq_len, ") needs 28 + 4 x ", u128_str(want), " = ", u128_str(28 + 4 * want), " bytes");
  return c;
}

Llama2cModel Llama2cModel::load(const std::string& path) {
  const Llama2cConfig c = read_llama2c_header(path);
  const int64_t n = c.file_floats();
  // Bounded by the file size, which the header has been checked against.
  torch::Tensor all = torch::empty({n}, torch::kFloat32);
  File f(std::fopen(path.c_str(), "rb"));
  RP_CHECK_INPUT(f != nullptr, "llama2.c model '", path, "': cannot open (", std::strerror(errno), ")");
  RP_CHECK_INPUT(std::fseek(f.get(), kHeaderBytes, SEEK_SET) == 0 &&
                     std::fread(all.data_ptr<float>(), 4, static_cast<std::size_t>(n), f.get()) ==
                         static_cast<std::size_t>(n),
                 "llama2.c model '", path, "': cannot read the ", n, " weights (file changed while reading?)");
  const int64_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim(), hs = c.head_size();
  int64_t off = 0;
  auto take = [&](const char* name, std::vector<int64_t> shape) {
    int64_t cnt = 1;
    for (auto s : shape) cnt *= s;
    auto t = all.narrow(0, off, cnt).view(shape);
    off += cnt;
    RP_CHECK_INPUT(torch::isfinite(t).all().item<bool>(), "llama2.c model '", path, "': weight '", name,
                   "' has non-finite values");
    return t;
  };
  Llama2cWeights w;
  w.embedding = take("token_embedding", {V, D});
  auto rms_att = take("rms_att", {L, D});
  auto wq = take("wq", {L, D, D}), wk = take("wk", {L, kv, D}), wv = take("wv", {L, kv, D});
  auto wo = take("wo", {L, D, D});
  auto rms_ffn = take("rms_ffn", {L, D});
  auto w1 = take("w1", {L, F, D}), w2 = take("w2", {L, D, F}), w3 = take("w3", {L, F, D});
  w.rms_final = take("rms_final", {D});
  off += c.seq_len * hs;  // RoPE tables: recomputed
  w.wcls = c.shared_classifier ? w.embedding : take("wcls", {V, D});
  RP_ASSERT(off == n, "llama2c layout consumed ", off, " of ", n, " floats");
  for (int64_t l = 0; l < L; ++l) {
    Llama2cLayer y;
    y.rms_att = rms_att[l], y.rms_ffn = rms_ffn[l];
    y.wq = wq[l], y.wk = wk[l], y.wv = wv[l], y.wo = wo[l];
    y.w1 = w1[l], y.w2 = w2[l], y.w3 = w3[l];
    y.n_kv_heads = c.n_kv_heads;
    y.attn_params = dense_attention_parameters(c, c.n_kv_heads);
    w.layers.push_back(std::move(y));
  }
  return Llama2cModel(c, std::move(w));
}

Llama2cModel::Llama2cModel(Llama2cConfig cfg, Llama2cWeights w) : cfg_(cfg), w_(std::move(w)) {
  RP_ASSERT(static_cast<int64_t>(w_.layers.size()) == cfg_.n_layers, "layers ", w_.layers.size());
  const int64_t half = cfg_.head_size() / 2;
  auto j = torch::arange(half, torch::kFloat64);
  auto freq = torch::pow(10000.0, -2.0 * j / static_cast<double>(cfg_.head_size()));  // [hs/2]
  auto pos = torch::arange(cfg_.seq_len, torch::kFloat64).unsqueeze(1);
  auto ang = pos * freq.unsqueeze(0);  // [S, hs/2]
  rope_cos_ = torch::cos(ang);
  rope_sin_ = torch::sin(ang);
}

torch::Tensor Llama2cModel::logits(const torch::Tensor& ids_in, torch::ScalarType dt, Llama2cCache* cache) const {
  RP_CHECK_INPUT(dt == torch::kFloat32 || dt == torch::kFloat64, "llama2c forward: dtype must be float32 or float64");
  RP_CHECK_INPUT(ids_in.dim() == 2, "llama2c forward takes ids [B, T], got shape ", ids_in.sizes());
  torch::NoGradGuard no_grad;
  const auto ids = ids_in.to(torch::kLong);
  const int64_t B = ids.size(0), T = ids.size(1), D = cfg_.dim, H = cfg_.n_heads, hs = cfg_.head_size();
  const int64_t pos0 = cache ? cache->pos : 0;
  RP_CHECK_INPUT(T >= 1 && pos0 + T <= cfg_.seq_len, "llama2c forward: positions ", pos0, "..", pos0 + T - 1,
                 " exceed seq_len ", cfg_.seq_len);
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    RP_CHECK_INPUT(lo >= 0 && hi < cfg_.vocab_size, "llama2c forward: token id outside [0, ", cfg_.vocab_size,
                   "): ", lo < 0 ? lo : hi);
  }
  if (cache && cache->k.empty()) cache->k.resize(cfg_.n_layers), cache->v.resize(cfg_.n_layers);
  const auto cos = rope_cos_.narrow(0, pos0, T).to(dt), sin = rope_sin_.narrow(0, pos0, T).to(dt);
  // Causal mask over [T, pos0 + T]: query i (position pos0 + i) sees keys j <= pos0 + i.
  const auto qi = torch::arange(T, torch::kLong).unsqueeze(1) + pos0;
  const auto kj = torch::arange(pos0 + T, torch::kLong).unsqueeze(0);
  const auto masked = kj > qi;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));

  auto x = w_.embedding.index_select(0, ids.reshape({-1})).view({B, T, D}).to(dt);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const auto& L = w_.layers[static_cast<std::size_t>(l)];
    const int64_t KV = L.n_kv_heads;
    auto n = rms_norm(x, L.rms_att);
    auto q = rope(torch::matmul(n, L.wq.to(dt).t()).view({B, T, H, hs}), cos, sin).transpose(1, 2);  // [B,H,T,hs]
    auto k = rope(torch::matmul(n, L.wk.to(dt).t()).view({B, T, KV, hs}), cos, sin).transpose(1, 2);  // [B,KV,T,hs]
    auto v = torch::matmul(n, L.wv.to(dt).t()).view({B, T, KV, hs}).transpose(1, 2);
    if (cache) {
      auto& ck = cache->k[static_cast<std::size_t>(l)];
      auto& cv = cache->v[static_cast<std::size_t>(l)];
      if (ck.defined()) k = torch::cat({ck, k}, 2), v = torch::cat({cv, v}, 2);
      ck = k, cv = v;
    }
    // Query head h reads KV head h / (H / KV).
    if (KV != H) k = k.repeat_interleave(H / KV, 1), v = v.repeat_interleave(H / KV, 1);
    auto s = torch::matmul(q, k.transpose(-1, -2)) * scale;  // [B, H, T, pos0+T]
    s = s.masked_fill(masked, -std::numeric_limits<double>::infinity());
    auto o = torch::matmul(torch::softmax(s, -1), v).transpose(1, 2).reshape({B, T, H * hs});
    x = x + torch::matmul(o, L.wo.to(dt).t());
    auto y = rms_norm(x, L.rms_ffn);
    auto g = torch::matmul(y, L.w1.to(dt).t()), u = torch::matmul(y, L.w3.to(dt).t());
    x = x + torch::matmul(torch::silu(g) * u, L.w2.to(dt).t());
  }
  if (cache) cache->pos = pos0 + T;
  x = rms_norm(x, w_.rms_final);
  return torch::matmul(x, w_.wcls.to(dt).t());
}

int64_t Llama2cModel::attention_parameters() const {
  int64_t n = 0;
  for (const auto& l : w_.layers) n += l.attn_params;
  return n;
}

int64_t Llama2cModel::num_parameters() const {
  const int64_t D = cfg_.dim, F = cfg_.hidden_dim, L = cfg_.n_layers, V = cfg_.vocab_size;
  int64_t n = V * D + (cfg_.shared_classifier ? 0 : V * D) + D;  // embedding, classifier, final norm
  n += L * (2 * D + 3 * D * F);                                    // norms, FFN
  return n + attention_parameters();
}

std::vector<int> llama2c_greedy(const Llama2cModel& m, int steps, torch::ScalarType dtype) {
  RP_CHECK_INPUT(steps >= 1 && steps <= m.config().seq_len, "greedy steps must be in [1, seq_len = ",
                 m.config().seq_len, "], got ", steps);
  std::vector<int> out;
  Llama2cCache cache;
  int64_t token = kBos;
  for (int pos = 0; pos < steps; ++pos) {
    auto lg = m.logits(torch::full({1, 1}, token, torch::kLong), dtype, &cache);
    token = lg[0][0].argmax().item<int64_t>();
    if (token == kBos) break;  // llama2.c: BOS delimits sequences
    out.push_back(static_cast<int>(token));
  }
  return out;
}

std::vector<std::vector<int>> llama2c_sample(const Llama2cModel& m, int n, int max_tokens, double temperature,
                                             uint64_t seed, torch::ScalarType dtype) {
  RP_CHECK_INPUT(n >= 1, "sampling needs n >= 1 sequences, got ", n);
  RP_CHECK_INPUT(max_tokens >= 1 && max_tokens <= m.config().seq_len, "sampled length must be in [1, seq_len = ",
                 m.config().seq_len, "], got ", max_tokens);
  RP_CHECK_INPUT(temperature > 0 && std::isfinite(temperature), "temperature must be > 0, got ", temperature);
  std::vector<std::vector<int>> out(static_cast<std::size_t>(n));
  std::vector<bool> done(static_cast<std::size_t>(n), false);
  Llama2cCache cache;
  auto tokens = torch::full({n, 1}, static_cast<int64_t>(kBos), torch::kLong);
  uint64_t state = seed;
  for (int t = 0; t < max_tokens; ++t) {
    auto lg = m.logits(tokens, dtype, &cache).select(1, 0).to(torch::kFloat64);  // [n, V]
    auto p = torch::softmax(lg / temperature, -1).contiguous();
    const int64_t V = p.size(1);
    auto next = torch::empty({n, 1}, torch::kLong);
    for (int i = 0; i < n; ++i) {
      const double* pi = p.data_ptr<double>() + static_cast<int64_t>(i) * V;
      const double u = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
      double acc = 0;
      int64_t pick = V - 1;
      for (int64_t j = 0; j < V; ++j) {
        acc += pi[j];
        if (u < acc) {
          pick = j;
          break;
        }
      }
      next[i][0] = pick;
      if (pick == kBos) done[static_cast<std::size_t>(i)] = true;
      if (!done[static_cast<std::size_t>(i)]) out[static_cast<std::size_t>(i)].push_back(static_cast<int>(pick));
    }
    tokens = next;
  }
  return out;
}

std::string llama2c_decode(const std::vector<int>& ids, const std::vector<std::string>& pieces, int prev) {
  std::string s;
  for (int id : ids) {
    RP_CHECK_INPUT(id >= 0 && static_cast<std::size_t>(id) < pieces.size(), "token id ", id, " outside [0, ",
                   pieces.size(), ")");
    std::string p = pieces[static_cast<std::size_t>(id)];
    if (prev == kBos && !p.empty() && p[0] == ' ') p.erase(0, 1);
    s += p;
    prev = id;
  }
  return s;
}

}  // namespace rankprune
