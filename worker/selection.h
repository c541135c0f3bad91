// Channel selection across the ranks of a run: the (layer, head) problems of one selection
// (prune/select.h) are cut into one contiguous share per rank (equal counts: every problem of a
// method costs the same), each rank solves its share, and only the answers travel back (kept
// indices; for pca the rotation rows of its layers). Every rank returns the Selection that
// select_channels gives on one process, bit for bit: each problem is solved by the same code on
// the same statistics wherever it runs.
#pragma once

#include <cstdint>
#include <string>

#include "cluster/communicator.h"
#include "model/calibration_stats.h"
#include "model/linear_lm.h"
#include "prune/select.h"

namespace rankprune {

// Collective: every rank calls it with the same arguments (and the same statistics).
Selection select_channels_sharded(cluster::Communicator& comm, const LinearLM& model, const CalibrationStats* stats,
                                  const std::string& method, double ratio, uint64_t seed,
                                  bool pca_include_queries = false);

}  // namespace rankprune
