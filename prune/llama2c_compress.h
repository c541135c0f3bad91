// Compression of a llama2.c model's softmax attention (issue 14), three ways:
//  - tucker: each of q, k, v, o as a tensor [heads, head_dim, hidden] (prune/tucker.h; k and v
//    have n_kv_heads heads, o is wo^T) replaced by its truncated HOSVD to multilinear ranks
//    (r_heads, r_head_dim, r_hidden): core r1 r2 r3 + factors sum In r_n values;
//  - svd: each matrix wq, wk, wv, wo replaced by its rank-r truncated SVD: r (rows + cols) values;
//  - merge: GQA-style head merging, the KV heads averaged in adjacent groups down to G groups
//    (query head h then reads group h / (H / G)); q and o are left as they are.
// The result is materialised back to dense weights in a new model whose Llama2cLayer::attn_params
// hold the factorised counts (what `attention_parameters()` reports). Pure functions, no I/O.
#pragma once

#include <array>
#include <string>

#include "model/llama2c.h"
#include "prune/tucker.h"

namespace rankprune {

// Attention projections in the order q, k, v, o.
constexpr std::array<const char*, 4> kAttnProjections = {"q", "k", "v", "o"};

// [heads, head_dim, hidden] of projection p (0..3) of `layer`.
torch::Tensor llama2c_attention_tensor(const Llama2cLayer& layer, int64_t n_heads, int p);

// Per layer, per projection: Tucker ranks / SVD ranks actually used (for the table).
struct AttnCompressionPlan {
  std::string method;  // "tucker", "svd", "merge", "dense"
  std::vector<std::array<Ranks3, 4>> tucker_ranks;  // [layer][q,k,v,o]
  std::vector<std::array<int64_t, 4>> svd_ranks;    // [layer][q,k,v,o]
  int64_t groups = 0;                               // merge
  std::string describe() const;                     // e.g. "q 8x8x24 k 4x8x16 ..." (layer 0; "per layer" if they differ)
};

// Truncated HOSVD of every layer's q, k, v, o to the given ranks (same for all layers).
Llama2cModel compress_tucker(const Llama2cModel& m, const std::vector<std::array<Ranks3, 4>>& ranks);
// Rank-r truncated SVD of every wq, wk, wv, wo.
Llama2cModel compress_svd(const Llama2cModel& m, const std::vector<std::array<int64_t, 4>>& ranks);
// KV heads averaged down to `groups` (must divide the model's n_kv_heads).
Llama2cModel merge_kv_heads(const Llama2cModel& m, int64_t groups);

// Budgeted plans: every projection gets at most floor(fraction x its dense parameters).
// Tucker picks, per projection, the rank triple of least HOSVD error within the budget (from the
// full core's error table); SVD the largest rank within the budget (at least 1).
AttnCompressionPlan plan_tucker(const Llama2cModel& m, double fraction);
AttnCompressionPlan plan_svd(const Llama2cModel& m, double fraction);
Llama2cModel apply_plan(const Llama2cModel& m, const AttnCompressionPlan& plan);

}  // namespace rankprune
