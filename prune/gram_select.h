// Adapter from the Gram-form rank-revealing kernels (kernels/rrqr.h) to one head's selection.
#pragma once

#include <cstdint>
#include <vector>

namespace rankprune {

struct GramSelection {
  std::vector<int64_t> kept;  // ascending
  int64_t swaps = 0;
  bool hit_swap_limit = false;
};

// G: [n, n] row-major float64. strong = true: greedy pivots + strong-RRQR swaps (f = 1.5, <= 20
// swaps); false: greedy pivots only (qrcp).
GramSelection select_from_gram(const double* G, int64_t n, int64_t k, bool strong);

}  // namespace rankprune
