// Platform-independent seeded randomness: the same seed gives the same draws on every machine and
// standard library (unlike std::uniform_int_distribution), so selections and batch orders are
// reproducible everywhere.
#pragma once

#include <cstdint>

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

}  // namespace rankprune
