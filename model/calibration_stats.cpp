#include "model/calibration_stats.h"

#include "common/error.h"
#include "model/safetensors.h"

namespace rankprune {

CalibrationStats CalibrationStats::zeros(const ModelConfig& c) {
  CalibrationStats s;
  s.layers = c.num_hidden_layers, s.heads = c.num_heads, s.head_k_dim = c.head_k_dim, s.hidden = c.hidden_size;
  auto o = torch::dtype(torch::kFloat64);
  const int64_t L = s.layers, H = s.heads, d = s.head_k_dim;
  s.gram = torch::zeros({L, H, d, d}, o);
  s.x_sq = torch::zeros({L, s.hidden}, o);
  s.k_sum = torch::zeros({L, H, d}, o);
  s.k_outer = torch::zeros({L, H, d, d}, o);
  s.q_sum = torch::zeros({L, H, d}, o);
  s.q_outer = torch::zeros({L, H, d, d}, o);
  return s;
}

void CalibrationStats::add(const CalibrationStats& o) {
  RP_ASSERT(gram.sizes() == o.gram.sizes() && x_sq.sizes() == o.x_sq.sizes());
  gram += o.gram, x_sq += o.x_sq, k_sum += o.k_sum, k_outer += o.k_outer, q_sum += o.q_sum, q_outer += o.q_outer;
  if (has_taylor() && o.has_taylor()) {
    taylor_grad_q += o.taylor_grad_q, taylor_grad_k += o.taylor_grad_k;
  } else {
    taylor_grad_q = taylor_grad_k = torch::Tensor();
  }
  tokens += o.tokens;
}

namespace {
constexpr const char* kTaylorKey = "taylor";
// The loss the taylor sums are the gradient of: the summed next-token cross-entropy.
constexpr const char* kTaylorLoss = "sum-ce-v1";
}  // namespace

void CalibrationStats::save(const std::string& path) const {
  auto m = meta;
  m["format"] = "rankprune-calibration-stats-v1";
  m["tokens"] = std::to_string(tokens);
  m["layers"] = std::to_string(layers);
  m["heads"] = std::to_string(heads);
  m["head_k_dim"] = std::to_string(head_k_dim);
  m["hidden_size"] = std::to_string(hidden);
  std::vector<std::pair<std::string, torch::Tensor>> ts = {{"gram", gram},       {"x_sq", x_sq},
                                                           {"k_sum", k_sum},     {"k_outer", k_outer},
                                                           {"q_sum", q_sum},     {"q_outer", q_outer}};
  m.erase(kTaylorKey);
  if (has_taylor()) {
    m[kTaylorKey] = kTaylorLoss;
    ts.emplace_back("taylor_grad_q", taylor_grad_q);
    ts.emplace_back("taylor_grad_k", taylor_grad_k);
  }
  save_safetensors(path, ts, m);
}

CalibrationStats CalibrationStats::load(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  const auto& m = f->metadata();
  auto get = [&](const std::string& k) {
    auto it = m.find(k);
    RP_CHECK_INPUT(it != m.end(), "'", path, "' is not a rankprune statistics file (metadata '", k, "' missing)");
    return it->second;
  };
  RP_CHECK_INPUT(get("format") == "rankprune-calibration-stats-v1", "'", path, "': unsupported statistics format '",
                 get("format"), "'");
  CalibrationStats s;
  auto num = [&](const std::string& k) {
    const std::string v = get(k);
    std::size_t used = 0;
    long long n = -1;
    try {
      n = std::stoll(v, &used);
    } catch (const std::exception&) {  // invalid_argument, out_of_range
      used = 0;
    }
    RP_CHECK_INPUT(used == v.size() && n >= 0, "'", path, "': metadata '", k, "' = '", v,
                   "' is not a non-negative 64-bit integer");
    return static_cast<int64_t>(n);
  };
  s.tokens = num("tokens"), s.layers = num("layers"), s.heads = num("heads"), s.head_k_dim = num("head_k_dim");
  s.hidden = num("hidden_size");
  s.meta = m;
  auto tensor = [&](const std::string& n, std::vector<int64_t> shape) {
    RP_CHECK_INPUT(f->find(n), "'", path, "': tensor '", n, "' missing");
    auto t = f->tensor(n);
    RP_CHECK_INPUT(t.scalar_type() == torch::kFloat64 && t.sizes() == torch::IntArrayRef(shape), "'", path,
                   "': tensor '", n, "' must be F64 ", torch::IntArrayRef(shape), ", got ", t.scalar_type(), " ",
                   t.sizes());
    return t.clone();
  };
  const int64_t L = s.layers, H = s.heads, d = s.head_k_dim;
  s.gram = tensor("gram", {L, H, d, d});
  s.x_sq = tensor("x_sq", {L, s.hidden});
  s.k_sum = tensor("k_sum", {L, H, d});
  s.k_outer = tensor("k_outer", {L, H, d, d});
  s.q_sum = tensor("q_sum", {L, H, d});
  s.q_outer = tensor("q_outer", {L, H, d, d});
  if (auto it = m.find(kTaylorKey); it != m.end()) {
    RP_CHECK_INPUT(it->second == kTaylorLoss, "'", path, "': taylor sums of an unknown kind '", it->second,
                   "' (expected '", kTaylorLoss, "'); recompute the statistics");
    s.taylor_grad_q = tensor("taylor_grad_q", {L, H * d, s.hidden});
    s.taylor_grad_k = tensor("taylor_grad_k", {L, H * d, s.hidden});
  }
  return s;
}

void CalibrationStats::check_matches(const ModelConfig& c, const std::string& msha, const std::string& p) const {
  RP_CHECK_INPUT(layers == c.num_hidden_layers && heads == c.num_heads && head_k_dim == c.head_k_dim &&
                     hidden == c.hidden_size,
                 "statistics '", p, "' were computed for a model with ", layers, " layers, ", heads, " heads, head_k_dim ",
                 head_k_dim, ", hidden ", hidden, "; this model has ", c.num_hidden_layers, ", ", c.num_heads, ", ",
                 c.head_k_dim, ", ", c.hidden_size);
  auto it = meta.find("model_sha");
  if (!msha.empty() && it != meta.end())
    RP_CHECK_INPUT(it->second == msha, "statistics '", p, "' were computed for another model (model_sha ",
                   it->second.substr(0, 12), "…, this model is ", msha.substr(0, 12), "…)");
}

std::size_t CalibrationStats::packed_length(const ModelConfig& c) {
  const auto L = static_cast<std::size_t>(c.num_hidden_layers), H = static_cast<std::size_t>(c.num_heads);
  const auto d = static_cast<std::size_t>(c.head_k_dim), D = static_cast<std::size_t>(c.hidden_size);
  return L * H * (3 * d * (d + 1) / 2 + 2 * d) + L * D;
}

std::size_t CalibrationStats::taylor_length(const ModelConfig& c) {
  return 2 * static_cast<std::size_t>(c.num_hidden_layers) * static_cast<std::size_t>(c.num_heads * c.head_k_dim) *
         static_cast<std::size_t>(c.hidden_size);
}

namespace {

// [L, H, d, d] symmetric <-> its upper triangles (i <= j, row-major), appended / consumed at `p`.
void pack_upper(const torch::Tensor& m, std::vector<double>& out) {
  const auto t = m.contiguous();
  const int64_t d = t.size(-1), n = t.numel() / (d * d);
  const double* a = t.data_ptr<double>();
  for (int64_t k = 0; k < n; ++k, a += d * d)
    for (int64_t i = 0; i < d; ++i) out.insert(out.end(), a + i * d + i, a + i * d + d);
}

void unpack_upper(const double*& p, torch::Tensor& m) {
  const int64_t d = m.size(-1), n = m.numel() / (d * d);
  double* a = m.data_ptr<double>();
  for (int64_t k = 0; k < n; ++k, a += d * d)
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = i; j < d; ++j) a[i * d + j] = a[j * d + i] = *p++;
}

void append(const torch::Tensor& t, std::vector<double>& out) {
  const auto c = t.contiguous();
  out.insert(out.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

void take(const double*& p, torch::Tensor& t) {
  std::copy(p, p + t.numel(), t.data_ptr<double>());
  p += t.numel();
}

}  // namespace

std::vector<double> CalibrationStats::pack() const {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(gram.numel() / 2 * 3 + x_sq.numel() + 2 * k_sum.numel()));
  pack_upper(gram, out), pack_upper(k_outer, out), pack_upper(q_outer, out);
  append(x_sq, out), append(k_sum, out), append(q_sum, out);
  if (has_taylor()) append(taylor_grad_q, out), append(taylor_grad_k, out);
  return out;
}

CalibrationStats CalibrationStats::unpack(const ModelConfig& c, const std::vector<double>& packed, int64_t tokens) {
  const bool taylor = packed.size() == packed_length(c) + taylor_length(c);
  RP_ASSERT(packed.size() == packed_length(c) || taylor, "packed statistics of ", packed.size(),
            " values, expected ", packed_length(c), " (or ", packed_length(c) + taylor_length(c), " with taylor)");
  CalibrationStats s = zeros(c);
  s.tokens = tokens;
  const double* p = packed.data();
  unpack_upper(p, s.gram), unpack_upper(p, s.k_outer), unpack_upper(p, s.q_outer);
  take(p, s.x_sq), take(p, s.k_sum), take(p, s.q_sum);
  if (taylor) {
    const auto o = torch::dtype(torch::kFloat64);
    s.taylor_grad_q = torch::empty({c.num_hidden_layers, c.num_heads * c.head_k_dim, c.hidden_size}, o);
    s.taylor_grad_k = torch::empty_like(s.taylor_grad_q);
    take(p, s.taylor_grad_q), take(p, s.taylor_grad_k);
  }
  RP_ASSERT(p == packed.data() + packed.size());
  return s;
}

}  // namespace rankprune
