#include "kernels/delta_rule.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"

namespace rankprune {
namespace {

using torch::indexing::Slice;

torch::ScalarType compute_type(torch::ScalarType t) {
  return (t == torch::kBFloat16 || t == torch::kHalf) ? torch::kFloat32 : t;
}

void check_shapes(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& beta,
                  const torch::Tensor& g, const torch::Tensor& s0) {
  RP_ASSERT(q.dim() == 4 && k.sizes() == q.sizes(), "q ", q.sizes(), " k ", k.sizes());
  RP_ASSERT(v.dim() == 4 && v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2), "v ",
            v.sizes(), " q ", q.sizes());
  RP_ASSERT(beta.dim() == 3 && beta.sizes() == q.sizes().slice(0, 3), "beta ", beta.sizes());
  RP_ASSERT(!g.defined() || g.sizes() == beta.sizes(), "g ", g.sizes());
  RP_ASSERT(!s0.defined() || (s0.dim() == 4 && s0.size(0) == q.size(0) && s0.size(1) == q.size(1) &&
                              s0.size(2) == q.size(3) && s0.size(3) == v.size(3)),
            "s0 ", s0.sizes());
}

}  // namespace

DeltaRuleResult delta_rule_recurrent(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                                     const torch::Tensor& beta_in, const torch::Tensor& g_in,
                                     const torch::Tensor& s0, double scale) {
  check_shapes(q_in, k_in, v_in, beta_in, g_in, s0);
  const auto ct = compute_type(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), dk = q_in.size(3), dv = v_in.size(3);
  // Flatten (batch, head) so every step is one batched matmul: [BH, ...].
  auto q = (q_in.to(ct) * scale).reshape({B * H, T, dk});
  auto k = k_in.to(ct).reshape({B * H, T, dk});
  auto v = v_in.to(ct).reshape({B * H, T, dv});
  auto beta = beta_in.to(ct).reshape({B * H, T});
  torch::Tensor decay;
  if (g_in.defined()) decay = g_in.to(ct).reshape({B * H, T}).exp();
  torch::Tensor s = s0.defined() ? s0.to(ct).reshape({B * H, dk, dv})
                                 : torch::zeros({B * H, dk, dv}, q.options());
  std::vector<torch::Tensor> outs;
  outs.reserve(T);
  for (int64_t t = 0; t < T; ++t) {
    auto kt = k.select(1, t).unsqueeze(1);  // [BH, 1, dk]
    if (decay.defined()) s = s * decay.select(1, t).view({B * H, 1, 1});
    auto pred = torch::bmm(kt, s);                                          // S^T k: [BH, 1, dv]
    auto u = (v.select(1, t).unsqueeze(1) - pred) * beta.select(1, t).view({B * H, 1, 1});
    s = s + torch::bmm(kt.transpose(1, 2), u);                              // + k u^T
    outs.push_back(torch::bmm(q.select(1, t).unsqueeze(1), s));             // [BH, 1, dv]
  }
  torch::Tensor o = T > 0 ? torch::cat(outs, 1) : torch::zeros({B * H, 0, dv}, q.options());
  return {o.reshape({B, H, T, dv}).to(v_in.scalar_type()), s.reshape({B, H, dk, dv})};
}

DeltaRuleResult delta_rule_chunked(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                                   const torch::Tensor& beta_in, const torch::Tensor& g_in, const torch::Tensor& s0,
                                   double scale, int64_t C) {
  check_shapes(q_in, k_in, v_in, beta_in, g_in, s0);
  RP_ASSERT(C >= 1, "chunk size ", C);
  const auto ct = compute_type(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), dk = q_in.size(3), dv = v_in.size(3);
  const int64_t BH = B * H;
  if (T == 0) return delta_rule_recurrent(q_in, k_in, v_in, beta_in, g_in, s0, scale);
  const int64_t NC = (T + C - 1) / C, Tp = NC * C, pad = Tp - T;
  auto opts = q_in.options().dtype(ct);

  // Zero padding at the end is inert: k = 0 and beta = 0 give u = 0 and no state change, g = 0
  // gives no decay. Padded outputs are dropped.
  auto prep = [&](const torch::Tensor& x, int64_t d) {
    auto y = x.to(ct).reshape({BH, T, d});
    if (pad) y = torch::cat({y, torch::zeros({BH, pad, d}, opts)}, 1);
    return y.reshape({BH, NC, C, d});
  };
  auto q = prep(q_in, dk) * scale;  // [BH, NC, C, dk]
  auto k = prep(k_in, dk);
  auto v = prep(v_in, dv);
  auto beta = prep(beta_in.unsqueeze(-1), 1).squeeze(-1);  // [BH, NC, C]

  auto ones = torch::ones({C, C}, opts.dtype(torch::kBool));
  auto causal = torch::tril(ones);        // j <= i
  auto strict = torch::tril(ones, -1);    // j < i

  // Gating: G = within-chunk cumulative log decay; decay factors are formed as exp of
  // differences (always <= 1 where used), never as ratios of tiny numbers.
  torch::Tensor gamma, decay_ij, decay_to_end, chunk_decay;
  if (g_in.defined()) {
    auto G = prep(g_in.unsqueeze(-1), 1).squeeze(-1).cumsum(-1);                 // [BH, NC, C]
    gamma = G.exp();                                                              // exp(G_i)
    auto diff = G.unsqueeze(-1) - G.unsqueeze(-2);                               // G_i - G_j
    decay_ij = diff.masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity()).exp();
    auto G_last = G.index({Slice(), Slice(), Slice(C - 1, C)});                  // [BH, NC, 1]
    decay_to_end = (G_last - G).exp();                                            // exp(G_C - G_j)
    chunk_decay = G_last.exp();                                                   // [BH, NC, 1]
  }

  // (I + A) with A_ij = beta_i k_i.k_j (decayed), j < i. Solving against it is the WY/UT
  // transform: U = T diag(beta) V, W = T diag(beta * gamma) K with T = (I + A)^-1.
  auto kbeta = k * beta.unsqueeze(-1);
  auto A = torch::matmul(kbeta, k.transpose(-1, -2));
  if (decay_ij.defined()) A = A * decay_ij;
  A = A.masked_fill(strict.logical_not(), 0.0);
  auto IA = A + torch::eye(C, opts);
  auto u_raw = at::linalg_solve_triangular(IA, v * beta.unsqueeze(-1), /*upper=*/false, /*left=*/true,
                                           /*unitriangular=*/true);
  auto w = at::linalg_solve_triangular(IA, gamma.defined() ? kbeta * gamma.unsqueeze(-1) : kbeta, false, true, true);
  // Intra-chunk "attention" (inclusive diagonal), and the query seen through the chunk's decay.
  auto attn = torch::matmul(q, k.transpose(-1, -2));
  if (decay_ij.defined()) attn = attn * decay_ij;
  attn = attn.masked_fill(causal.logical_not(), 0.0);
  auto q_dec = gamma.defined() ? q * gamma.unsqueeze(-1) : q;
  auto k_dec = decay_to_end.defined() ? k * decay_to_end.unsqueeze(-1) : k;
  // Chunk-major contiguous copies: the sequential loop below then feeds bmm dense [BH, ., .]
  // blocks (strided slices across chunks made each bmm ~5x slower on CPU).
  auto chunk_major = [](const torch::Tensor& t) { return t.transpose(0, 1).contiguous(); };  // [NC, BH, ...]
  auto u_c = chunk_major(u_raw), w_c = chunk_major(w), q_c = chunk_major(q_dec), a_c = chunk_major(attn);
  auto kt_c = chunk_major(k_dec.transpose(-1, -2));  // [NC, BH, dk, C]
  torch::Tensor decay_c;
  if (chunk_decay.defined()) decay_c = chunk_major(chunk_decay.unsqueeze(-1));  // [NC, BH, 1, 1]

  torch::Tensor s = s0.defined() ? s0.to(ct).reshape({BH, dk, dv}) : torch::zeros({BH, dk, dv}, opts);
  std::vector<torch::Tensor> outs;
  outs.reserve(NC);
  for (int64_t n = 0; n < NC; ++n) {
    auto un = torch::baddbmm(u_c[n], w_c[n], s, /*beta=*/1.0, /*alpha=*/-1.0);  // U' = U - W S
    outs.push_back(torch::baddbmm(torch::bmm(a_c[n], un), q_c[n], s));          // Q S + A U'
    auto upd = torch::bmm(kt_c[n], un);                                            // K^T U'
    s = decay_c.defined() ? s * decay_c[n] + upd : s + upd;
  }
  auto o = torch::stack(outs, 1).reshape({BH, Tp, dv});  // [BH, NC, C, dv] -> [BH, Tp, dv]
  if (pad) o = o.index({Slice(), Slice(0, T)});
  return {o.reshape({B, H, T, dv}).to(v_in.scalar_type()), s.reshape({B, H, dk, dv})};
}

namespace {

// One (batch, head) row of the recurrence, all T steps, state in `S` ([dk, dv] row-major, already
// holding the initial state). Pointers are to element [.., 0, 0] of this row; `*_t` are the
// strides between consecutive tokens (the last dimension is contiguous). Two passes per token:
//   1. S *= exp(g_t) and pred = S^T k_t            (row by row of S)
//   2. u = beta_t (v_t - pred); S += k_t u^T and o_t = S^T (scale q_t) (same sweep)
template <typename T>
inline __attribute__((always_inline)) void scan_row(T* __restrict S, T* __restrict pred, T* __restrict acc,
                                                    const T* q, const T* k, const T* v, const T* beta,
                                                    const T* g, T* o, int64_t steps, int64_t dk, int64_t dv,
                                                    int64_t q_t, int64_t k_t, int64_t v_t, int64_t b_t, int64_t g_t,
                                                    int64_t o_t, T scale) {
  for (int64_t t = 0; t < steps; ++t) {
    const T* qt = q + t * q_t;
    const T* kt = k + t * k_t;
    const T* vt = v + t * v_t;
    T* ot = o + t * o_t;
    for (int64_t j = 0; j < dv; ++j) pred[j] = 0;
    if (g) {
      const T d = std::exp(g[t * g_t]);
      for (int64_t i = 0; i < dk; ++i) {
        T* __restrict row = S + i * dv;
        const T ki = kt[i];
        for (int64_t j = 0; j < dv; ++j) {
          row[j] *= d;
          pred[j] += ki * row[j];
        }
      }
    } else {
      for (int64_t i = 0; i < dk; ++i) {
        const T* __restrict row = S + i * dv;
        const T ki = kt[i];
        for (int64_t j = 0; j < dv; ++j) pred[j] += ki * row[j];
      }
    }
    const T bt = beta[t * b_t];
    for (int64_t j = 0; j < dv; ++j) pred[j] = bt * (vt[j] - pred[j]);  // pred now holds u
    for (int64_t j = 0; j < dv; ++j) acc[j] = 0;
    for (int64_t i = 0; i < dk; ++i) {
      T* __restrict row = S + i * dv;
      const T ki = kt[i], qi = scale * qt[i];
      for (int64_t j = 0; j < dv; ++j) {
        row[j] += ki * pred[j];
        acc[j] += qi * row[j];
      }
    }
    for (int64_t j = 0; j < dv; ++j) ot[j] = acc[j];
  }
}

struct ScanArgs {
  int64_t S, H, T, dk, dv;                 // sequences, heads, tokens per input row, head dims
  const void *q, *k, *v, *beta, *g, *s0;
  void *o, *s_out;
  const int64_t* rows;                     // s0 row per sequence, or null (sequence b -> row b)
  const int64_t* starts;                   // packed: first token of each sequence (input row 0)
  const int64_t* lens;                     // packed: its length; null -> sequence b = input row b
  int64_t qs[4], ks[4], vs[4], bs[3], gs[3], s0s[4], os[4];  // element strides
  double scale;
};

template <typename T>
void scan_rows(const ScanArgs& a, int64_t begin, int64_t end) {
  const int64_t dk = a.dk, dv = a.dv;
  std::vector<T> buf(static_cast<std::size_t>(dk * dv + 2 * dv));
  T* S = buf.data();
  T* pred = S + dk * dv;
  T* acc = pred + dv;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* beta = static_cast<const T*>(a.beta);
  const T* g = static_cast<const T*>(a.g);
  const T* s0 = static_cast<const T*>(a.s0);
  T* o = static_cast<T*>(a.o);
  T* s_out = static_cast<T*>(a.s_out);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / a.H, h = task % a.H;
    const int64_t row = a.lens ? 0 : b, t0 = a.lens ? a.starts[b] : 0, steps = a.lens ? a.lens[b] : a.T;
    if (s0) {
      const int64_t r = a.rows ? a.rows[b] : b;
      const T* src = s0 + r * a.s0s[0] + h * a.s0s[1];
      for (int64_t i = 0; i < dk; ++i)
        for (int64_t j = 0; j < dv; ++j) S[i * dv + j] = src[i * a.s0s[2] + j * a.s0s[3]];
    } else {
      std::fill(S, S + dk * dv, T(0));
    }
    auto at = [&](const T* base, const int64_t* st) { return base + row * st[0] + h * st[1] + t0 * st[2]; };
    scan_row<T>(S, pred, acc, at(q, a.qs), at(k, a.ks), at(v, a.vs), at(beta, a.bs), g ? at(g, a.gs) : nullptr,
                o + row * a.os[0] + h * a.os[1] + t0 * a.os[2], steps, dk, dv, a.qs[2], a.ks[2], a.vs[2], a.bs[2],
                a.gs[2], a.os[2], static_cast<T>(a.scale));
    if (s_out) std::copy(S, S + dk * dv, s_out + task * dk * dv);
  }
}

// The same code compiled twice where the compiler can dispatch on the CPU (AVX2 + FMA, else the
// baseline), so one binary is fast on current x86 nodes and still runs everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RP_CPU_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define RP_CPU_CLONES
#endif
RP_CPU_CLONES void scan_rows_f32(const ScanArgs& a, int64_t begin, int64_t end) { scan_rows<float>(a, begin, end); }
RP_CPU_CLONES void scan_rows_f64(const ScanArgs& a, int64_t begin, int64_t end) { scan_rows<double>(a, begin, end); }

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad(); }

}  // namespace

DeltaRuleResult delta_rule_recurrent_cpu(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                                         const torch::Tensor& beta_in, const torch::Tensor& g_in,
                                         const torch::Tensor& s0_in, double scale, const torch::Tensor& s0_rows,
                                         bool want_state, const std::vector<int64_t>* lens) {
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), dk = q_in.size(3), dv = v_in.size(3);
  check_shapes(q_in, k_in, v_in, beta_in, g_in, torch::Tensor());
  // Sequences: the batch rows, or the packed sequences of row 0.
  std::vector<int64_t> starts;
  if (lens) {
    RP_ASSERT(B == 1, "packed sequences need a batch of 1, got ", B);
    int64_t t = 0;
    for (const int64_t len : *lens) {
      RP_ASSERT(len >= 0, "negative sequence length");
      starts.push_back(t);
      t += len;
    }
    RP_ASSERT(t == T, "sequence lengths sum to ", t, ", inputs have ", T, " tokens");
  }
  const int64_t S = lens ? static_cast<int64_t>(lens->size()) : B;
  if (s0_in.defined()) {
    RP_ASSERT(s0_in.dim() == 4 && s0_in.size(1) == H && s0_in.size(2) == dk && s0_in.size(3) == dv, "s0 ",
              s0_in.sizes());
    if (s0_rows.defined()) {
      RP_ASSERT(s0_rows.dim() == 1 && s0_rows.size(0) == S && s0_rows.scalar_type() == torch::kLong, "s0_rows ",
                s0_rows.sizes(), " for ", S, " sequences");
      if (S > 0) {
        const int64_t lo = s0_rows.min().item<int64_t>(), hi = s0_rows.max().item<int64_t>();
        RP_ASSERT(lo >= 0 && hi < s0_in.size(0), "s0_rows out of range [0, ", s0_in.size(0), ")");
      }
    } else {
      RP_ASSERT(s0_in.size(0) == S, "s0 ", s0_in.sizes(), " for ", S, " sequences");
    }
  } else {
    RP_ASSERT(!s0_rows.defined(), "s0_rows without s0");
  }
  RP_ASSERT(q_in.device().is_cpu(), "delta_rule_recurrent_cpu needs CPU tensors");
  const auto ct = compute_type(q_in.scalar_type());
  RP_ASSERT(ct == torch::kFloat32 || ct == torch::kFloat64, "delta_rule_recurrent_cpu: dtype ", q_in.scalar_type());
  // Inputs in the compute dtype with a contiguous last dimension; other strides are used as they are.
  auto prep = [ct](const torch::Tensor& t) {
    auto x = t.to(ct);
    return x.dim() == 4 && x.stride(3) != 1 ? x.contiguous() : x;
  };
  const auto q = prep(q_in), k = prep(k_in), v = prep(v_in), beta = beta_in.to(ct);
  const auto g = g_in.defined() ? g_in.to(ct) : g_in;
  const auto s0 = s0_in.defined() ? s0_in.to(ct) : s0_in;
  const auto rows = s0_rows.defined() ? s0_rows.contiguous() : s0_rows;
  auto o = torch::empty({B, H, T, dv}, q.options());
  torch::Tensor s_out = want_state ? torch::empty({S, H, dk, dv}, q.options()) : torch::Tensor();

  ScanArgs a{};
  a.S = S, a.H = H, a.T = T, a.dk = dk, a.dv = dv, a.scale = scale;
  a.q = q.data_ptr(), a.k = k.data_ptr(), a.v = v.data_ptr(), a.beta = beta.data_ptr();
  a.g = g.defined() ? g.data_ptr() : nullptr;
  a.s0 = s0.defined() ? s0.data_ptr() : nullptr;
  a.o = o.data_ptr(), a.s_out = want_state ? s_out.data_ptr() : nullptr;
  a.rows = rows.defined() ? rows.data_ptr<int64_t>() : nullptr;
  a.starts = lens ? starts.data() : nullptr;
  a.lens = lens ? lens->data() : nullptr;
  for (int d = 0; d < 4; ++d) {
    a.qs[d] = q.stride(d), a.ks[d] = k.stride(d), a.vs[d] = v.stride(d), a.os[d] = o.stride(d);
    if (s0.defined()) a.s0s[d] = s0.stride(d);
  }
  for (int d = 0; d < 3; ++d) {
    a.bs[d] = beta.stride(d);
    if (g.defined()) a.gs[d] = g.stride(d);
  }
  const bool f64 = ct == torch::kFloat64;
  at::parallel_for(0, S * H, 1, [&](int64_t begin, int64_t end) {
    f64 ? scan_rows_f64(a, begin, end) : scan_rows_f32(a, begin, end);
  });
  return {o.to(v_in.scalar_type()), s_out};
}

namespace {

bool fused_cpu_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& beta,
                       const torch::Tensor& g, const torch::Tensor& s0) {
  const bool grad = torch::GradMode::is_enabled() && (needs_grad(q) || needs_grad(k) || needs_grad(v) ||
                                                      needs_grad(beta) || needs_grad(g) || needs_grad(s0));
  const auto ct = compute_type(q.scalar_type());
  return q.device().is_cpu() && !grad && (ct == torch::kFloat32 || ct == torch::kFloat64);
}

}  // namespace

DeltaRuleResult delta_rule_varlen(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                                  double scale, const std::vector<int64_t>& lens, DeltaRuleImpl impl,
                                  int64_t chunk_size, const torch::Tensor& s0_rows, bool want_state) {
  RP_ASSERT(q.dim() == 4 && q.size(0) == 1, "packed q must be [1, H, N, dk], got ", q.sizes());
  if (impl != DeltaRuleImpl::Chunked && fused_cpu_applies(q, k, v, beta, g, s0))
    return delta_rule_recurrent_cpu(q, k, v, beta, g, s0, scale, s0_rows, want_state, &lens);
  // Elsewhere (CUDA, autograd, or chunks asked for): one sequence at a time.
  std::vector<torch::Tensor> outs, states;
  int64_t t = 0;
  for (std::size_t b = 0; b < lens.size(); ++b) {
    const int64_t len = lens[b];
    auto part = [&](const torch::Tensor& x) { return x.defined() ? x.narrow(2, t, len) : x; };
    torch::Tensor init;
    if (s0.defined()) init = s0.narrow(0, s0_rows.defined() ? s0_rows[static_cast<int64_t>(b)].item<int64_t>() : static_cast<int64_t>(b), 1);
    auto r = delta_rule(part(q), part(k), part(v), part(beta), part(g), init, scale, impl, chunk_size);
    outs.push_back(r.o);
    if (want_state) states.push_back(r.s);
    t += len;
  }
  RP_ASSERT(t == q.size(2), "sequence lengths sum to ", t, ", inputs have ", q.size(2), " tokens");
  DeltaRuleResult r;
  r.o = outs.empty() ? torch::zeros({1, q.size(1), 0, v.size(3)}, v.options()) : torch::cat(outs, 2);
  if (want_state)
    r.s = states.empty() ? torch::zeros({0, q.size(1), q.size(3), v.size(3)}, q.options().dtype(compute_type(q.scalar_type())))
                         : torch::cat(states, 0);
  return r;
}

DeltaRuleResult delta_rule(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0, double scale,
                           DeltaRuleImpl impl, int64_t chunk_size, const torch::Tensor& s0_rows, bool want_state) {
  const bool recurrent = impl == DeltaRuleImpl::Recurrent || (impl == DeltaRuleImpl::Auto && q.size(2) <= 64);
  if (recurrent && fused_cpu_applies(q, k, v, beta, g, s0))
    return delta_rule_recurrent_cpu(q, k, v, beta, g, s0, scale, s0_rows, want_state);
  const torch::Tensor init = s0_rows.defined() ? s0.index_select(0, s0_rows.to(s0.device())) : s0;
  auto r = recurrent ? delta_rule_recurrent(q, k, v, beta, g, init, scale)
                     : delta_rule_chunked(q, k, v, beta, g, init, scale, chunk_size);
  if (!want_state) r.s = torch::Tensor();
  return r;
}

}  // namespace rankprune
