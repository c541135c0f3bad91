#include "worker/selection.h"

#include <cstring>

#include "cluster/block_reduce.h"
#include "cluster/collectives.h"
#include "common/error.h"

namespace rankprune {

namespace {

// [n, then per head: swaps, hit_swap_limit, size, kept...] as int64.
std::string encode(const std::vector<HeadSelection>& heads) {
  std::vector<int64_t> v{static_cast<int64_t>(heads.size())};
  for (const auto& h : heads) {
    v.push_back(h.swaps);
    v.push_back(h.hit_swap_limit ? 1 : 0);
    v.push_back(static_cast<int64_t>(h.kept.size()));
    v.insert(v.end(), h.kept.begin(), h.kept.end());
  }
  return cluster::to_bytes(v);
}

void decode(const std::string& bytes, int rank, std::vector<HeadSelection>& out) {
  const auto v = cluster::from_bytes<int64_t>(bytes);
  std::size_t i = 0;
  auto next = [&]() {
    RP_ASSERT(i < v.size(), "truncated selection share from rank ", rank);
    return v[i++];
  };
  const int64_t n = next();
  for (int64_t k = 0; k < n; ++k) {
    HeadSelection h;
    h.swaps = next();
    h.hit_swap_limit = next() != 0;
    const int64_t m = next();
    for (int64_t j = 0; j < m; ++j) h.kept.push_back(next());
    out.push_back(std::move(h));
  }
  RP_ASSERT(i == v.size(), "trailing bytes in the selection share from rank ", rank);
}

}  // namespace

Selection select_channels_sharded(cluster::Communicator& comm, const LinearLM& model, const CalibrationStats* stats,
                                  const std::string& method, double ratio, uint64_t seed, bool pca_include_queries) {
  if (comm.size() == 1) return select_channels(model, stats, method, ratio, seed, pca_include_queries);
  check_method(method);
  if (method_needs_statistics(method))
    RP_CHECK_INPUT(stats != nullptr, "method '", method, "' needs calibration statistics (--stats or --data)");
  const ModelConfig& c = model.config();
  const int64_t L = c.num_hidden_layers, H = c.num_heads, dk = c.head_k_dim;
  if (method == "pca") {
    const auto [lo, hi] = cluster::block_range(L, comm.rank(), comm.size());
    const auto mine = pca_layers(*stats, ratio, pca_include_queries, lo, hi).contiguous();
    const auto parts = comm.allgatherv(
        std::string(reinterpret_cast<const char*>(mine.data_ptr<double>()), mine.numel() * sizeof(double)));
    const int64_t k = kept_channels(dk, ratio);
    auto rotation = torch::empty({L, H, k, dk}, torch::kFloat64);
    std::size_t off = 0;
    for (int r = 0; r < comm.size(); ++r) {
      const auto [a, b] = cluster::block_range(L, r, comm.size());
      RP_ASSERT(parts[r].size() == static_cast<std::size_t>((b - a) * H * k * dk) * sizeof(double),
                "pca share of rank ", r, " has ", parts[r].size(), " bytes");
      std::memcpy(reinterpret_cast<char*>(rotation.data_ptr<double>()) + off, parts[r].data(), parts[r].size());
      off += parts[r].size();
    }
    return assemble_selection(c, method, ratio, seed, {}, rotation, pca_include_queries);
  }
  const auto [lo, hi] = cluster::block_range(L * H, comm.rank(), comm.size());
  const auto parts = comm.allgatherv(encode(select_heads(model, stats, method, ratio, seed, lo, hi)));
  std::vector<HeadSelection> all;
  for (int r = 0; r < comm.size(); ++r) decode(parts[r], r, all);
  return assemble_selection(c, method, ratio, seed, std::move(all), {}, pca_include_queries);
}

}  // namespace rankprune
