// Platform-independent seeded randomness: the same seed gives the same draws on every machine and
// standard library (unlike std::uniform_int_distribution), so selections and batch orders are
// reproducible everywhere.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/error.h"

namespace rankprune {

// splitmix64: advances `state` and returns the next 64-bit value.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// An unbiased draw from [0, span) by rejection (span >= 1).
inline std::uint64_t uniform_below(std::uint64_t& state, std::uint64_t span) {
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  std::uint64_t r;
  do r = splitmix64(state);
  while (r >= limit);
  return r % span;
}

// Seeded choice of `k` distinct indices from [0, n), ascending: Fisher-Yates over a splitmix64
// stream, so selections (random pruning, calibration windows) are reproducible everywhere.
inline std::vector<int64_t> choose_indices(int64_t n, int64_t k, uint64_t seed) {
  RP_ASSERT(k >= 0 && k <= n, "choose ", k, " of ", n);
  std::vector<int64_t> idx(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = i;
  uint64_t state = seed;
  for (int64_t i = 0; i < k; ++i) {
    // Unbiased draw from [i, n).
    const auto j = i + static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(n - i)));
    std::swap(idx[static_cast<std::size_t>(i)], idx[static_cast<std::size_t>(j)]);
  }
  idx.resize(static_cast<std::size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace rankprune
