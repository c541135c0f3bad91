// The calibration statistics reduction across ranks: bytes moved and wall time of the
// rank-independent block tree (cluster::block_tree_sum: tree + broadcast), against one plain
// MPI_Allreduce of the same vector (whose sum order depends on the rank count), for a model
// shape's packed statistics (upper triangles of the three dk x dk matrices per head, plus the
// vectors). Run it under the launcher:
//
//   mpirun --allow-run-as-root --oversubscribe -np 2 build/bench/bench_reduce
//       [layers=24] [heads=16] [dk=128] [hidden=2048] [blocks=ranks] [reps=5]
//
// Blocks are copied from seeded vectors made before the clock starts (their forward passes are
// what bench_calibrate times); the tree is timed on each rank from its last block to the end of
// its part, the slowest rank counts; best of `reps`, printed by rank 0.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cluster/block_reduce.h"
#include "cluster/collectives.h"
#include "cluster/communicator.h"
#include "common/random.h"
#include "model/calibration_stats.h"

using namespace rankprune;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  ModelConfig c = ModelConfig::defaults(Arch::DeltaNet);
  c.num_hidden_layers = arg(1, 24), c.num_heads = arg(2, 16), c.hidden_size = arg(4, 2048);
  const int64_t dk = arg(3, 128);
  const int reps = static_cast<int>(arg(6, 5));
  c.expand_k = static_cast<double>(dk * c.num_heads) / static_cast<double>(c.hidden_size);
  c.expand_v = c.expand_k;
  c.vocab_size = 32000, c.intermediate_size = 0;
  c.finalize();
  auto comm = cluster::make_communicator("auto");
  const int64_t blocks = arg(5, comm->size());
  const std::size_t n = CalibrationStats::packed_length(c);
  const double full = static_cast<double>(c.num_hidden_layers * c.num_heads * (3 * dk * dk + 2 * dk) +
                                          c.num_hidden_layers * c.hidden_size);
  std::vector<std::vector<double>> made;  // this rank's blocks, made once
  const auto [lo, hi] = cluster::block_range(blocks, comm->rank(), comm->size());
  for (int64_t b = lo; b < hi; ++b) {
    uint64_t s = 7 + static_cast<uint64_t>(b);
    made.emplace_back(n);
    for (auto& x : made.back()) x = static_cast<double>(splitmix64(s) >> 11) * 1e-16;
  }
  auto fill = [&](int64_t b, double* out) {
    const auto& m = made[static_cast<std::size_t>(b - lo)];
    std::copy(m.begin(), m.end(), out);
  };
  double best_tree = 1e300, best_bcast = 1e300, best_allreduce = 1e300, best_p2p = 1e300;
  int64_t tree_bytes = 0, msgs = 0;
  std::vector<double> first;
  for (int r = 0; r < reps; ++r) {
    cluster::BlockReduceReport rep;
    comm->barrier();
    auto v = cluster::block_tree_sum(*comm, blocks, n, fill, true, &rep);
    // Every rank's traffic, summed on rank 0.
    const auto sent = cluster::allgather_values(*comm, rep.bytes_sent);
    const auto count = cluster::allgather_values(*comm, rep.messages_sent);
    tree_bytes = 0, msgs = 0;
    for (std::size_t i = 0; i < sent.size(); ++i) tree_bytes += sent[i], msgs += count[i];
    const auto slowest = cluster::allgather_values(*comm, rep.reduce_seconds);
    best_tree = std::min(best_tree, *std::max_element(slowest.begin(), slowest.end()));
    best_bcast = std::min(best_bcast, rep.broadcast_seconds);
    if (r == 0) first = v;
    if (v != first) {
      std::cerr << "bench_reduce: the sum changed between repetitions\n";
      return 1;
    }
    // One raw message of the same size, rank 1 -> rank 0 (the transport alone).
    if (comm->size() > 1) {
      std::string payload = comm->rank() == 1 ? std::string(n * 8, '\1') : std::string();
      comm->barrier();
      const auto t1 = Clock::now();
      if (comm->rank() == 1) comm->send(0, 99, std::move(payload));
      if (comm->rank() == 0) comm->recv_or_throw(1, 99, "bench message");
      comm->flush();
      if (comm->rank() == 0) best_p2p = std::min(best_p2p, std::chrono::duration<double>(Clock::now() - t1).count());
    }
    std::vector<double> a = made.empty() ? std::vector<double>(n, 0.0) : made.front();
    comm->barrier();
    const auto t0 = Clock::now();
    comm->allreduce_sum(a.data(), n);
    best_allreduce = std::min(best_allreduce, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  if (comm->rank() == 0) {
    std::printf("bench_reduce: %d ranks (%s), %lld layers x %lld heads x dk %lld, hidden %lld, %lld blocks, best of %d\n",
                comm->size(), comm->backend().c_str(), static_cast<long long>(c.num_hidden_layers),
                static_cast<long long>(c.num_heads), static_cast<long long>(dk), static_cast<long long>(c.hidden_size),
                static_cast<long long>(blocks), reps);
    std::printf("  packed statistics      %zu doubles = %.1f MB (full matrices: %.1f MB)\n", n, n * 8 / 1e6, full * 8 / 1e6);
    std::printf("  block tree             %lld messages, %.1f MB sent in all, %.1f ms (slowest rank, after its last block)\n",
                static_cast<long long>(msgs), tree_bytes / 1e6, best_tree * 1e3);
    std::printf("  broadcast of the total %.1f MB to %d ranks, %.1f ms\n", n * 8 / 1e6, comm->size() - 1, best_bcast * 1e3);
    std::printf("  tree + broadcast       %.1f ms\n", (best_tree + best_bcast) * 1e3);
    if (comm->size() > 1) std::printf("  one raw message        %.1f MB rank 1 -> 0, %.1f ms\n", n * 8 / 1e6, best_p2p * 1e3);
    std::printf("  plain allreduce        %.1f ms (same vector; its sum order depends on the rank count)\n",
                best_allreduce * 1e3);
  }
  return 0;
}
