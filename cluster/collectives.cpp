#include "cluster/collectives.h"

#include <cstdint>

#include "common/error.h"

namespace rankprune::cluster {

void broadcast_string(Communicator& comm, std::string& s, int root) {
  std::uint64_t n = comm.rank() == root ? s.size() : 0;
  comm.broadcast(&n, sizeof n, root);
  if (comm.rank() != root) s.assign(static_cast<std::size_t>(n), '\0');
  if (n > 0) comm.broadcast(&s[0], static_cast<std::size_t>(n), root);
}

void throw_bad_size(std::size_t bytes, std::size_t value_size) {
  throw CommError(cat("received ", bytes, " bytes, not a whole number of ", value_size,
                      "-byte values; the ranks disagree on what they exchange"));
}

}  // namespace rankprune::cluster
