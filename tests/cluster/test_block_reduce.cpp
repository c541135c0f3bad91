// cluster::block_tree_sum: the same bits for every rank count, against a plain recursive sum over
// the same tree written here, and liveness (a slow peer is waited for, a silent one is an error).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "cluster/block_reduce.h"
#include "common/random.h"

namespace rankprune::cluster {
namespace {

// Block b's values: wide magnitudes, so the order of additions shows in the last bits.
void fill_n(int64_t b, double* out, std::size_t n) {
  uint64_t s = 1000 + static_cast<uint64_t>(b);
  for (std::size_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(splitmix64(s) >> 11) / 9007199254740992.0;  // [0, 1)
    out[i] = (u - 0.5) * std::pow(10.0, static_cast<double>(splitmix64(s) % 12));
  }
}
void fill(int64_t b, std::vector<double>& out) { fill_n(b, out.data(), out.size()); }

// The reference: node [lo, hi) = [lo, mid) + [mid, hi), mid = lo + largest power of two below
// hi - lo, written as a plain recursion on one thread.
std::vector<double> tree(int64_t lo, int64_t hi, std::size_t n) {
  std::vector<double> v(n, 0.0);
  if (hi - lo == 1) {
    fill(lo, v);
    return v;
  }
  int64_t p = 1;
  while (p * 2 < hi - lo) p *= 2;
  auto l = tree(lo, lo + p, n), r = tree(lo + p, hi, n);
  for (std::size_t i = 0; i < n; ++i) v[i] = l[i] + r[i];
  return v;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

TEST(BlockTreeSum, BitwiseTheReferenceTreeForEveryRankCount) {
  const std::size_t n = 37;
  for (int64_t blocks : {1, 2, 3, 5, 8, 13, 20}) {
    const auto ref = tree(0, blocks, n);
    for (int P = 1; P <= 8; ++P) {
      std::vector<std::vector<double>> got(static_cast<std::size_t>(P));
      std::vector<std::vector<int64_t>> seen(static_cast<std::size_t>(P));
      run_threads(P, [&](Communicator& c) {
        got[static_cast<std::size_t>(c.rank())] = block_tree_sum(c, blocks, n, [&](int64_t b, double* out) {
          seen[static_cast<std::size_t>(c.rank())].push_back(b);
          fill_n(b, out, n);
        });
      });
      for (int r = 0; r < P; ++r) {
        EXPECT_TRUE(same_bits(got[static_cast<std::size_t>(r)], ref)) << blocks << " blocks, " << P << " ranks, rank " << r;
        const auto [lo, hi] = block_range(blocks, r, P);
        std::vector<int64_t> mine;
        for (int64_t b = lo; b < hi; ++b) mine.push_back(b);
        EXPECT_EQ(seen[static_cast<std::size_t>(r)], mine) << "rank " << r << " computes exactly its own blocks, in order";
      }
    }
  }
  // The check has teeth: a plain left-to-right sum of the same blocks gives other bits.
  std::vector<double> fold(n, 0.0), b(n);
  for (int64_t k = 0; k < 13; ++k) {
    fill(k, b);
    for (std::size_t i = 0; i < n; ++i) fold[i] += b[i];
  }
  EXPECT_FALSE(same_bits(fold, tree(0, 13, n)));
}

TEST(BlockTreeSum, RangesCoverTheBlocksAndRankZeroOwnsTheFirst) {
  for (int64_t blocks : {1, 2, 7, 64}) {
    for (int P : {1, 2, 3, 8}) {
      int64_t next = 0;
      for (int r = 0; r < P; ++r) {
        const auto [lo, hi] = block_range(blocks, r, P);
        EXPECT_EQ(lo, next);
        EXPECT_LE(hi - lo, (blocks + P - 1) / P);
        next = hi;
      }
      EXPECT_EQ(next, blocks);
      EXPECT_GE(block_range(blocks, 0, P).second, 1);
    }
  }
}

TEST(BlockTreeSum, TrafficIsOneVectorPerRemoteSubtree) {
  // 8 blocks on 4 ranks: ranks 1, 2, 3 each send one subtree; rank 0 sends nothing.
  std::vector<BlockReduceReport> rep(4);
  run_threads(4, [&](Communicator& c) {
    block_tree_sum(c, 8, 10, [](int64_t b, double* out) { fill_n(b, out, 10); }, true,
                   &rep[static_cast<std::size_t>(c.rank())]);
  });
  EXPECT_EQ(rep[0].messages_sent, 0);
  for (int r = 1; r < 4; ++r) {
    EXPECT_EQ(rep[static_cast<std::size_t>(r)].messages_sent, 1) << r;
    EXPECT_EQ(rep[static_cast<std::size_t>(r)].bytes_sent, static_cast<int64_t>(3 * 8 + 10 * 8)) << r;
  }
  EXPECT_EQ(rep[0].broadcast_bytes, 80);
}

TEST(BlockTreeSum, ASlowPeerIsWaitedForASilentOneIsAnError) {
  using namespace std::chrono_literals;
  // Rank 1's six blocks take 60 ms each, longer together than the 200 ms timeout: its notes after
  // every block keep rank 0 waiting, and the sum arrives.
  std::vector<double> got;
  run_threads(
      2,
      [&](Communicator& c) {
        auto v = block_tree_sum(c, 12, 4, [&](int64_t b, double* out) {
          if (c.rank() == 1) std::this_thread::sleep_for(60ms);
          fill_n(b, out, 4);
        });
        if (c.rank() == 0) got = v;
      },
      200ms);
  EXPECT_TRUE(same_bits(got, tree(0, 12, 4)));
  // A rank that computes one block and then goes silent (stuck, not dead): the waiting rank
  // gives up after the timeout with a message naming the peer.
  try {
    run_threads(
        2,
        [&](Communicator& c) {
          block_tree_sum(c, 2, 4, [&](int64_t b, double* out) {
            if (c.rank() == 1) std::this_thread::sleep_for(900ms);
            fill_n(b, out, 4);
          });
        },
        200ms);
    ADD_FAILURE() << "expected CommError";
  } catch (const CommError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block tree"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace rankprune::cluster
