// Shared checks for packed sequences (fla's varlen form) and their parents, used by the packed
// short convolution, the packed delta rule and LinearLM::hidden_packed.
#pragma once

#include <cstdint>
#include <vector>

#include "common/error.h"

namespace rankprune {

// The first row of each packed sequence; the lengths must be >= 0 and sum to `total` rows.
inline std::vector<int64_t> packed_starts(const std::vector<int64_t>& lens, int64_t total) {
  std::vector<int64_t> starts;
  starts.reserve(lens.size());
  int64_t at = 0;
  for (const int64_t len : lens) {
    RP_ASSERT(len >= 0, "negative sequence length");
    starts.push_back(at);
    at += len;
  }
  RP_ASSERT(at == total, "sequence lengths sum to ", at, ", inputs have ", total, " rows");
  return starts;
}

// parents[b] is -1 (sequence b starts on its own) or an earlier sequence without a parent, which
// b continues.
inline void check_parents(const std::vector<int64_t>& parents, std::size_t sequences) {
  RP_ASSERT(parents.size() == sequences, parents.size(), " parents for ", sequences, " sequences");
  for (std::size_t b = 0; b < parents.size(); ++b) {
    const int64_t p = parents[b];
    RP_ASSERT(p < static_cast<int64_t>(b) && (p < 0 || parents[static_cast<std::size_t>(p)] < 0), "sequence ", b,
              ": parent ", p, " must be an earlier sequence without a parent");
  }
}

}  // namespace rankprune
