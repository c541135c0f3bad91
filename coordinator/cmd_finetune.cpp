// `rankprune finetune` (issue 6): placeholder, being written.
#include "coordinator/cli.h"

namespace rankprune::cli {

void register_finetune_commands(std::vector<Command>& out) { (void)out; }

}  // namespace rankprune::cli
