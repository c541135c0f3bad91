// Channel selection for RWKV-7 through the project's selection code (prune/select.h).
//
// The per-head problems are the same as DeltaNet's: channel j of head h's key dimension is
// scored by the float64 Gram G = sum_t r r^T + k k^T (receptance = the query side, the k that
// enters the state = the key side; docs/rwkv7.md) or by ||W_r[j,:]||_1 + ||W_k[j,:]||_1 (l1).
// select_rwkv7 hands these to select_channels through a proxy LinearLM whose q_proj / k_proj are
// the receptance / key weights (shared, not copied), so drrqr / qrcp / l1 / random run the same
// code as for DeltaNet. wanda and pca are refused (their statistics or rotations have no RWKV-7
// meaning here).
#pragma once

#include <cstdint>
#include <string>

#include "model/calibration_stats.h"
#include "model/rwkv7.h"
#include "prune/select.h"

namespace rankprune {

// Methods accepted by select_rwkv7.
const std::vector<std::string>& rwkv7_selection_methods();
void check_rwkv7_method(const std::string& method);  // UsageError naming the accepted ones

// Empty statistics (gram zeros [L, H, dk, dk]; other fields zero) for `m`.
CalibrationStats rwkv7_empty_stats(const Rwkv7Config& c);

// UsageError for a method outside rwkv7_selection_methods() or a ratio out of [0, 1);
// InputError when drrqr / qrcp get no statistics or statistics of another shape.
Selection select_rwkv7(const Rwkv7Model& m, const CalibrationStats* stats, const std::string& method, double ratio,
                       uint64_t seed);

// m.slice_keys(sel.kept); InputError for a rotating selection.
Rwkv7Model apply_rwkv7_selection(const Rwkv7Model& m, const Selection& sel);

}  // namespace rankprune
