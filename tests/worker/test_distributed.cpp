// Calibration and selection over ranks (threads as ranks): bitwise the single-process answers for
// every rank count, including more ranks than blocks or problems.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "cluster/communicator.h"
#include "common/error.h"
#include "prune/select.h"
#include "worker/calibration.h"
#include "worker/selection.h"

namespace rankprune {
namespace {

ModelConfig small_config(Arch arch) {
  ModelConfig c = ModelConfig::defaults(arch);
  c.hidden_size = 32, c.num_hidden_layers = 3, c.num_heads = 2, c.vocab_size = 256, c.intermediate_size = 64;
  c.initializer_range = 0.3;
  if (arch == Arch::DeltaNet) {
    c.expand_k = 0.5, c.expand_v = 0.5;
  } else {
    c.head_dim = 8, c.expand_v = 2.0;
  }
  c.finalize();
  return c;
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  auto x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

void expect_same_stats(const CalibrationStats& a, const CalibrationStats& b, const std::string& what) {
  EXPECT_TRUE(same_bits(a.gram, b.gram)) << what;
  EXPECT_TRUE(same_bits(a.k_outer, b.k_outer)) << what;
  EXPECT_TRUE(same_bits(a.q_outer, b.q_outer)) << what;
  EXPECT_TRUE(same_bits(a.x_sq, b.x_sq)) << what;
  EXPECT_TRUE(same_bits(a.k_sum, b.k_sum)) << what;
  EXPECT_TRUE(same_bits(a.q_sum, b.q_sum)) << what;
  EXPECT_EQ(a.tokens, b.tokens) << what;
}

TEST(Distributed, StatisticsAreBitwiseTheSameForAnyRankCount) {
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    auto c = small_config(arch);
    LinearLM m(c, init_random_weights(c, 4, torch::kFloat32));
    torch::manual_seed(3);
    auto ids = torch::randint(256, {7, 24}, torch::kLong);  // 4 blocks of 2 (the last of 1)
    ForwardOptions o{torch::kFloat32};
    const auto one = collect_statistics(m, ids, 2, o);
    // Symmetric, as the packed form assumes, and equal to a direct float64 sum (loosely: the
    // exact reference is in test_calibration).
    EXPECT_TRUE(torch::equal(one.gram, one.gram.transpose(-1, -2)));
    for (int P : {1, 2, 3, 5}) {  // 5 ranks > 4 blocks: one rank has none
      std::vector<CalibrationStats> got(static_cast<std::size_t>(P));
      std::vector<cluster::BlockReduceReport> rep(static_cast<std::size_t>(P));
      cluster::run_threads(P, [&](cluster::Communicator& comm) {
        got[static_cast<std::size_t>(comm.rank())] =
            collect_statistics(m, ids, 2, o, comm, &rep[static_cast<std::size_t>(comm.rank())]);
      });
      for (int r = 0; r < P; ++r)
        expect_same_stats(got[static_cast<std::size_t>(r)], one, cat(arch_name(arch), " P=", P, " rank ", r));
      // Only upper triangles travel: every message is one packed vector plus its header.
      const auto packed = static_cast<int64_t>(CalibrationStats::packed_length(c) * sizeof(double));
      for (int r = 1; r < P; ++r) {
        const auto& rr = rep[static_cast<std::size_t>(r)];
        EXPECT_EQ(rr.bytes_sent, rr.messages_sent * (packed + 24)) << "rank " << r;
      }
    }
    // A different block size is a different (still deterministic) sum order: close, not required equal.
    const auto other = collect_statistics(m, ids, 3, o);
    EXPECT_TRUE(torch::allclose(other.gram, one.gram, 1e-12, 1e-9));
  }
}

TEST(Distributed, TaylorGradientsAreBitwiseTheSameForAnyRankCount) {
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    auto c = small_config(arch);
    LinearLM m(c, init_random_weights(c, 8, torch::kBFloat16));  // checkpoint dtype, float32 compute
    torch::manual_seed(9);
    auto ids = torch::randint(256, {7, 70}, torch::kLong);  // 4 blocks of 2; T > 64: the chunked form
    ForwardOptions o{torch::kFloat32};
    const auto one = collect_statistics(m, ids, 2, o, /*taylor=*/true);
    ASSERT_TRUE(one.has_taylor());
    EXPECT_GT(one.taylor_grad_q.abs().sum().item<double>(), 0.0);
    for (int P : {1, 2, 3, 5}) {
      std::vector<CalibrationStats> got(static_cast<std::size_t>(P));
      cluster::run_threads(P, [&](cluster::Communicator& comm) {
        got[static_cast<std::size_t>(comm.rank())] = collect_statistics(m, ids, 2, o, comm, nullptr, /*taylor=*/true);
      });
      for (int r = 0; r < P; ++r) {
        const auto& g = got[static_cast<std::size_t>(r)];
        const std::string what = cat(arch_name(arch), " P=", P, " rank ", r);
        ASSERT_TRUE(g.has_taylor()) << what;
        EXPECT_TRUE(same_bits(g.taylor_grad_q, one.taylor_grad_q)) << what;
        EXPECT_TRUE(same_bits(g.taylor_grad_k, one.taylor_grad_k)) << what;
        expect_same_stats(g, one, what);
      }
      // And so is the selection made from them.
      const Selection sel = select_channels(m, &one, "taylor", 0.5, 0);
      std::vector<Selection> sels(static_cast<std::size_t>(P));
      cluster::run_threads(P, [&](cluster::Communicator& comm) {
        sels[static_cast<std::size_t>(comm.rank())] =
            select_channels_sharded(comm, m, &got[static_cast<std::size_t>(comm.rank())], "taylor", 0.5, 0);
      });
      for (const auto& s : sels) EXPECT_EQ(s.to_json().dump(), sel.to_json().dump()) << arch_name(arch) << " P=" << P;
    }
  }
}

TEST(Distributed, PackRoundTripsAndHalvesTheSymmetricMatrices) {
  auto c = small_config(Arch::DeltaNet);
  LinearLM m(c, init_random_weights(c, 1, torch::kFloat64));
  auto s = collect_statistics(m, torch::randint(256, {2, 16}, torch::kLong), 2, {torch::kFloat64});
  const auto p = s.pack();
  EXPECT_EQ(p.size(), CalibrationStats::packed_length(c));
  const int64_t d = c.head_k_dim, LH = c.num_hidden_layers * c.num_heads;
  EXPECT_EQ(static_cast<int64_t>(p.size()), LH * (3 * d * (d + 1) / 2 + 2 * d) + c.num_hidden_layers * c.hidden_size);
  const auto back = CalibrationStats::unpack(c, p, s.tokens);
  expect_same_stats(back, s, "round trip");
}

TEST(Distributed, ShardedSelectionIsTheSingleProcessSelection) {
  auto c = small_config(Arch::GatedDeltaNet);
  LinearLM m(c, init_random_weights(c, 7, torch::kFloat64));
  torch::manual_seed(5);
  const auto stats =
      collect_statistics(m, torch::randint(256, {4, 32}, torch::kLong), 2, {torch::kFloat64}, /*taylor=*/true);
  for (const std::string method : {"drrqr", "qrcp", "l1", "wanda", "random", "pca", "taylor"}) {
    const Selection one = select_channels(m, &stats, method, 0.5, 3);
    for (int P : {2, 3, 4, 7}) {  // 7 ranks > 6 (layer, head) problems and > 3 pca layers
      std::vector<Selection> got(static_cast<std::size_t>(P));
      cluster::run_threads(P, [&](cluster::Communicator& comm) {
        got[static_cast<std::size_t>(comm.rank())] = select_channels_sharded(comm, m, &stats, method, 0.5, 3);
      });
      for (int r = 0; r < P; ++r) {
        const auto& g = got[static_cast<std::size_t>(r)];
        SCOPED_TRACE(cat(method, " P=", P, " rank ", r));
        EXPECT_EQ(g.to_json().dump(), one.to_json().dump());
        EXPECT_EQ(g.kept, one.kept);
        EXPECT_EQ(g.rotation.defined(), one.rotation.defined());
        if (one.rotation.defined()) {
          EXPECT_TRUE(same_bits(g.rotation, one.rotation));
        }
      }
    }
  }
  // Errors are the single-process errors, on every rank.
  cluster::run_threads(2, [&](cluster::Communicator& comm) {
    EXPECT_THROW(select_channels_sharded(comm, m, nullptr, "drrqr", 0.5, 0), InputError);
    EXPECT_THROW(select_channels_sharded(comm, m, &stats, "magnitude", 0.5, 0), UsageError);
  });
}

}  // namespace
}  // namespace rankprune
