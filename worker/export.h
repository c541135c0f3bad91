// Writing a pruned variant as an fla checkpoint folder.
#pragma once

#include <string>

#include "model/linear_lm.h"
#include "prune/select.h"

namespace rankprune {

// Writes `pruned` as an fla checkpoint folder `out` (temp dir + rename) with selection.json, the
// base model's tokenizer files and, for pca, pca_rotation.safetensors. Ratio 0 without rotation
// copies the base files byte for byte.
void write_pruned_checkpoint(const std::string& base_dir, const LinearLM& pruned, const Selection& sel,
                             const std::string& out);

}  // namespace rankprune
