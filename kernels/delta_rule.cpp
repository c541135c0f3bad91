#include "kernels/delta_rule.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "kernels/cpu_clones.h"
#include "kernels/threads.h"
#include "kernels/varlen.h"

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

// The fused recurrence works on column blocks of the state: column j of S evolves on its own
// (S[:, j] needs only k_t, q_t, beta_t, g_t and v_t[j]), so a task is one (sequence, head, block of
// W columns) and its [dk, W] slice of S stays in L1 for all T steps. A block is two 64-byte vectors
// (W = 32 floats / 16 doubles); partial sums over 4 rows at a time keep 8 independent FMA chains
// in flight. Per token, two sweeps over the block, S written once:
//   1. pred = d S^T k_t with d = exp(g_t) (1 ungated)
//   2. u = beta_t (v_t - pred); S = d S + k_t u^T and o_t = S^T (scale q_t)
// GCC/Clang vector types: each target_clones variant lowers them to AVX-512, AVX2 or SSE.
// The helpers taking/returning 64-byte vectors are always inlined, so the ABI note GCC gives for
// them (-Wpsabi) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
struct Vec {
  static constexpr int kLanes = 64 / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(64)));
};

template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
RP_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}
template <typename T>
RP_INLINE void vstore(T* p, vec_t<T> x) {
  __builtin_memcpy(p, &x, sizeof(x));
}

struct ScanArgs {
  int64_t S, H, T, dk, dv;                 // sequences, heads, tokens per input row, head dims
  const void *q, *k, *v, *beta, *g, *s0;
  void *o, *s_out;
  const int64_t* rows;                     // s0 row per sequence, or null (sequence b -> row b)
  const int64_t* starts;                   // packed: first token of each sequence (input row 0)
  const int64_t* lens;                     // packed: its length; null -> sequence b = input row b
  // Task roots: sequence roots[r] runs from s0 / zeros, then each of children[first[r]..first[r+1])
  // from roots[r]'s final state.
  const int64_t *roots, *first, *children;
  int64_t qs[4], ks[4], vs[4], bs[3], gs[3], s0s[4], os[4];  // element strides
  double scale;
};

template <typename T>
constexpr int64_t block_cols() {
  return 2 * Vec<T>::kLanes;
}

// One (root sequence, head, column block) task per index in [begin, end); tasks are numbered
// (root * H + head) * blocks + block. A root's children continue from its final state, which stays
// in L1 between them.
template <typename T>
RP_INLINE void scan_rows(const ScanArgs& a, int64_t begin, int64_t end) {
  using V = vec_t<T>;
  constexpr int64_t L = Vec<T>::kLanes, W = 2 * L;
  const int64_t dk = a.dk, dv = a.dv, nb = (dv + W - 1) / W;
  const int64_t dk4 = dk / 4 * 4;
  // The block's state [dk, W], the root's final state (for its children), and a padded copy of
  // v_t's block (zeros past dv, so the padding columns of S stay zero and are never written out).
  std::vector<T> buf(static_cast<std::size_t>(2 * dk * W + W), T(0));
  T* S = buf.data();
  T* S_root = S + dk * W;
  T* vb = S_root + dk * W;
  T ob[W];
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* beta = static_cast<const T*>(a.beta);
  const T* g = static_cast<const T*>(a.g);
  const T* s0 = static_cast<const T*>(a.s0);
  T* o = static_cast<T*>(a.o);
  T* s_out = static_cast<T*>(a.s_out);
  const T scale = static_cast<T>(a.scale);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t rh = task / nb, blk = task % nb;
    const int64_t ri = rh / a.H, h = rh % a.H;
    const int64_t j0 = blk * W, w = std::min(W, dv - j0);
    // The root, then each of its children from the root's final state (kept in S_root). A loop,
    // not a lambda: a lambda body would be compiled for the baseline target, not this clone's.
    const int64_t root = a.roots ? a.roots[ri] : ri;
    const int64_t kids = a.first ? a.first[ri + 1] - a.first[ri] : 0;
    for (int64_t n = -1; n < kids; ++n) {
      const int64_t b = n < 0 ? root : a.children[a.first[ri] + n];
      if (n < 0) {
        std::fill(S, S + dk * W, T(0));
        if (s0) {
          const int64_t r = a.rows ? a.rows[b] : b;
          const T* src = s0 + r * a.s0s[0] + h * a.s0s[1] + j0 * a.s0s[3];
          for (int64_t i = 0; i < dk; ++i)
            for (int64_t j = 0; j < w; ++j) S[i * W + j] = src[i * a.s0s[2] + j * a.s0s[3]];
        }
      } else {
        if (n == 0) std::copy(S, S + dk * W, S_root);
        std::copy(S_root, S_root + dk * W, S);
      }
      const int64_t row = a.lens ? 0 : b, t0 = a.lens ? a.starts[b] : 0, steps = a.lens ? a.lens[b] : a.T;
      std::fill(vb, vb + W, T(0));
      const T* qt = q + row * a.qs[0] + h * a.qs[1] + t0 * a.qs[2];
      const T* kt = k + row * a.ks[0] + h * a.ks[1] + t0 * a.ks[2];
      const T* vt = v + row * a.vs[0] + h * a.vs[1] + t0 * a.vs[2] + j0;
      const T* bt = beta + row * a.bs[0] + h * a.bs[1] + t0 * a.bs[2];
      const T* gt = g ? g + row * a.gs[0] + h * a.gs[1] + t0 * a.gs[2] : nullptr;
      T* ot = o + row * a.os[0] + h * a.os[1] + t0 * a.os[2] + j0;
      for (int64_t t = 0; t < steps;
           ++t, qt += a.qs[2], kt += a.ks[2], vt += a.vs[2], bt += a.bs[2], ot += a.os[2]) {
        // Sweep 1: pred = S^T k on the undecayed state; the decay d = exp(g_t) scales pred here
        // and S in sweep 2 (S_t = d S_{t-1} + k u^T), so S is written once per token.
        V p[4][2] = {};
        int64_t i = 0;
        for (; i < dk4; i += 4)
          for (int u = 0; u < 4; ++u) {
            const T* r = S + (i + u) * W;
            p[u][0] += kt[i + u] * vload(r);
            p[u][1] += kt[i + u] * vload(r + L);
          }
        for (; i < dk; ++i) {
          const T* r = S + i * W;
          p[0][0] += kt[i] * vload(r);
          p[0][1] += kt[i] * vload(r + L);
        }
        const bool gated = gt != nullptr;
        const T d = gated ? std::exp(gt[t * a.gs[2]]) : T(1);
        std::copy(vt, vt + w, vb);
        const T bt_ = *bt;
        V pred_lo = (p[0][0] + p[1][0]) + (p[2][0] + p[3][0]);
        V pred_hi = (p[0][1] + p[1][1]) + (p[2][1] + p[3][1]);
        if (gated) pred_lo *= d, pred_hi *= d;
        const V u_lo = bt_ * (vload(vb) - pred_lo);
        const V u_hi = bt_ * (vload(vb + L) - pred_hi);
        // Sweep 2: S = d S + k u^T, o = S^T (scale q).
        V acc[4][2] = {};
        i = 0;
        for (; i < dk4; i += 4)
          for (int u = 0; u < 4; ++u) {
            T* r = S + (i + u) * W;
            V s_lo = vload(r), s_hi = vload(r + L);
            if (gated) s_lo *= d, s_hi *= d;
            s_lo += kt[i + u] * u_lo, s_hi += kt[i + u] * u_hi;
            vstore(r, s_lo), vstore(r + L, s_hi);
            const T qi = scale * qt[i + u];
            acc[u][0] += qi * s_lo;
            acc[u][1] += qi * s_hi;
          }
        for (; i < dk; ++i) {
          T* r = S + i * W;
          V s_lo = vload(r), s_hi = vload(r + L);
          if (gated) s_lo *= d, s_hi *= d;
          s_lo += kt[i] * u_lo, s_hi += kt[i] * u_hi;
          vstore(r, s_lo), vstore(r + L, s_hi);
          const T qi = scale * qt[i];
          acc[0][0] += qi * s_lo;
          acc[0][1] += qi * s_hi;
        }
        vstore(ob, (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]));
        vstore(ob + L, (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1]));
        std::copy(ob, ob + w, ot);
      }
      if (s_out) {
        T* dst = s_out + (b * a.H + h) * dk * dv + j0;
        for (int64_t i = 0; i < dk; ++i) std::copy(S + i * W, S + i * W + w, dst + i * dv);
      }
    }
  }
}

RP_CPU_CLONES void scan_rows_f32(const ScanArgs& a, int64_t begin, int64_t end) { scan_rows<float>(a, begin, end); }
RP_CPU_CLONES void scan_rows_f64(const ScanArgs& a, int64_t begin, int64_t end) { scan_rows<double>(a, begin, end); }

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad(); }

}  // namespace

DeltaRuleResult delta_rule_recurrent_cpu(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                                         const torch::Tensor& beta_in, const torch::Tensor& g_in,
                                         const torch::Tensor& s0_in, double scale, const torch::Tensor& s0_rows,
                                         bool want_state, const std::vector<int64_t>* lens,
                                         const std::vector<int64_t>* parents) {
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), dk = q_in.size(3), dv = v_in.size(3);
  check_shapes(q_in, k_in, v_in, beta_in, g_in, torch::Tensor());
  // Sequences: the batch rows, or the packed sequences of row 0.
  std::vector<int64_t> starts;
  if (lens) {
    RP_ASSERT(B == 1, "packed sequences need a batch of 1, got ", B);
    starts = packed_starts(*lens, T);
  }
  const int64_t S = lens ? static_cast<int64_t>(lens->size()) : B;
  // Roots run as tasks; each child continues from its root's final state inside the root's task.
  // children[first[r] .. first[r + 1]) are root r's, in input order.
  std::vector<int64_t> roots, first, children;
  if (parents) {
    RP_ASSERT(lens, "parents need packed sequences");
    check_parents(*parents, static_cast<std::size_t>(S));
    std::vector<int64_t> root_of(static_cast<std::size_t>(S), -1);  // sequence -> its index in roots
    std::vector<std::vector<int64_t>> kids;
    for (int64_t b = 0; b < S; ++b) {
      const int64_t p = (*parents)[static_cast<std::size_t>(b)];
      if (p < 0) {
        root_of[static_cast<std::size_t>(b)] = static_cast<int64_t>(roots.size());
        roots.push_back(b);
        kids.emplace_back();
      } else {
        kids[static_cast<std::size_t>(root_of[static_cast<std::size_t>(p)])].push_back(b);
      }
    }
    first.push_back(0);
    for (const auto& k : kids) {
      children.insert(children.end(), k.begin(), k.end());
      first.push_back(static_cast<int64_t>(children.size()));
    }
  }
  const int64_t n_roots = parents ? static_cast<int64_t>(roots.size()) : S;
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
  a.roots = parents ? roots.data() : nullptr;
  a.first = parents ? first.data() : nullptr;
  a.children = parents ? children.data() : nullptr;
  for (int d = 0; d < 4; ++d) {
    a.qs[d] = q.stride(d), a.ks[d] = k.stride(d), a.vs[d] = v.stride(d), a.os[d] = o.stride(d);
    if (s0.defined()) a.s0s[d] = s0.stride(d);
  }
  for (int d = 0; d < 3; ++d) {
    a.bs[d] = beta.stride(d);
    if (g.defined()) a.gs[d] = g.stride(d);
  }
  const bool f64 = ct == torch::kFloat64;
  const int64_t blocks = (dv + (f64 ? block_cols<double>() : block_cols<float>()) - 1) /
                        (f64 ? block_cols<double>() : block_cols<float>());
  parallel_ranges(n_roots * H * blocks, [&](int64_t begin, int64_t end) {
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
                                  int64_t chunk_size, const torch::Tensor& s0_rows, bool want_state,
                                  const std::vector<int64_t>* parents) {
  RP_ASSERT(q.dim() == 4 && q.size(0) == 1, "packed q must be [1, H, N, dk], got ", q.sizes());
  if (impl != DeltaRuleImpl::Chunked && fused_cpu_applies(q, k, v, beta, g, s0))
    return delta_rule_recurrent_cpu(q, k, v, beta, g, s0, scale, s0_rows, want_state, &lens, parents);
  // Elsewhere (CUDA, autograd, or chunks asked for): one sequence at a time, in order, so that a
  // parent's final state exists before its children start from it.
  if (parents) check_parents(*parents, lens.size());
  std::vector<torch::Tensor> outs, states(lens.size());
  int64_t t = 0;
  for (std::size_t b = 0; b < lens.size(); ++b) {
    const int64_t len = lens[b];
    auto part = [&](const torch::Tensor& x) { return x.defined() ? x.narrow(2, t, len) : x; };
    const int64_t parent = parents ? (*parents)[b] : -1;
    torch::Tensor init;
    if (parent >= 0) {
      init = states[static_cast<std::size_t>(parent)];
    } else if (s0.defined()) {
      init = s0.narrow(0, s0_rows.defined() ? s0_rows[static_cast<int64_t>(b)].item<int64_t>() : static_cast<int64_t>(b), 1);
    }
    auto r = delta_rule(part(q), part(k), part(v), part(beta), part(g), init, scale, impl, chunk_size);
    outs.push_back(r.o);
    states[b] = r.s;
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
  // Auto: fla's dispatch (the recurrence for T <= 64, else chunks) where autograd or a GPU runs it;
  // on CPU without autograd the fused loop at every length (4-5x faster than chunks at T = 512 and
  // 2048, docs/benchmarks.md).
  const bool fused = fused_cpu_applies(q, k, v, beta, g, s0);
  const bool recurrent = impl == DeltaRuleImpl::Recurrent ||
                         (impl == DeltaRuleImpl::Auto && (q.size(2) <= 64 || fused));
  if (recurrent && fused)
    return delta_rule_recurrent_cpu(q, k, v, beta, g, s0, scale, s0_rows, want_state);
  const torch::Tensor init = s0_rows.defined() ? s0.index_select(0, s0_rows.to(s0.device())) : s0;
  auto r = recurrent ? delta_rule_recurrent(q, k, v, beta, g, init, scale)
                     : delta_rule_chunked(q, k, v, beta, g, init, scale, chunk_size);
  if (!want_state) r.s = torch::Tensor();
  return r;
}

}  // namespace rankprune
