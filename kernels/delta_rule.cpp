#include "kernels/delta_rule.h"

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

DeltaRuleResult delta_rule(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0, double scale,
                           DeltaRuleImpl impl, int64_t chunk_size) {
  if (impl == DeltaRuleImpl::Recurrent || (impl == DeltaRuleImpl::Auto && q.size(2) <= 64))
    return delta_rule_recurrent(q, k, v, beta, g, s0, scale);
  return delta_rule_chunked(q, k, v, beta, g, s0, scale, chunk_size);
}

}  // namespace rankprune
