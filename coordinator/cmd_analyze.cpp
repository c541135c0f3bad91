// `rankprune analyze` (issue 6): placeholder, being written.
#include "coordinator/cli.h"

namespace rankprune::cli {

void register_analyze_commands(std::vector<Command>& out) { (void)out; }

}  // namespace rankprune::cli
