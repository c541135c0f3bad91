#include "prune/gram_select.h"

#include "kernels/rrqr.h"

namespace rankprune {

GramSelection select_from_gram(const double* G, int64_t n, int64_t k, bool strong) {
  GramSelection out;
  if (!strong) {
    out.kept = qrcp_select(G, n, k);
    return out;
  }
  StrongRrqrResult r = strong_rrqr_select(G, n, k, kDefaultSwapBound, kDefaultMaxSwaps);
  out.kept = std::move(r.kept);
  out.swaps = r.swaps;
  out.hit_swap_limit = r.hit_swap_limit;
  return out;
}

}  // namespace rankprune
