// A float64 sum over fixed blocks whose result is bitwise the same for any number of ranks.
//
// The work is cut into n_blocks blocks by the caller, the same way whatever the rank count (for
// calibration: block b = sequences [b*B, (b+1)*B)). Rank r computes the blocks of one contiguous
// range (block_range); the block sums are then added along one fixed binary tree over the block
// index: node [lo, hi) = [lo, mid) + [mid, hi) with mid = lo + the largest power of two below
// hi - lo, so every left subtree is complete. Which rank adds which pair changes with the rank
// count; the additions themselves (which two partial sums, in which order, element by element)
// do not. One rank or eight, the root's bits are identical, and no float64 sum's rounding depends
// on the topology (plain MPI_Allreduce gives no such guarantee).
//
// Traffic: a node whose right child lives on another rank receives that child once (one message
// of the full vector). Rank r's subtrees that hang under another rank's node are sent once, so
// each rank sends at most ~log2(n_blocks) vectors and receives from higher ranks only (no cycle,
// no deadlock); with P ranks and aligned ranges that is P - 1 vectors in all. Rank 0 then sends
// the total to every rank (P - 1 vectors; point to point, so waiting ranks keep the liveness
// rule). Memory per rank: O(log2 n_blocks) vectors.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "cluster/communicator.h"

namespace rankprune::cluster {

// Rank r's blocks [first, last) of n_blocks: contiguous, sizes differ by at most one; empty for
// ranks beyond n_blocks.
std::pair<int64_t, int64_t> block_range(int64_t n_blocks, int rank, int size);

struct BlockReduceReport {
  int64_t messages_sent = 0, bytes_sent = 0;  // tree traffic of this rank
  int64_t broadcast_bytes = 0;                // the root's size (0 when not broadcast)
  double reduce_seconds = 0;                  // tree part, after this rank's last block
  double broadcast_seconds = 0;
};

// Every rank calls it with the same n_blocks and length. `block(b, out)` writes block b's sum to
// `out` (length doubles, zeroed on entry); it is called only for this rank's blocks, in
// ascending order. Returns the total (on every rank when `broadcast`, else on the rank that owns
// block 0, i.e. rank 0; other ranks get an empty vector). n_blocks >= 1.
std::vector<double> block_tree_sum(Communicator& comm, int64_t n_blocks, std::size_t length,
                                   const std::function<void(int64_t, double*)>& block,
                                   bool broadcast = true, BlockReduceReport* report = nullptr);

}  // namespace rankprune::cluster
