#include "common/error.h"

namespace rankprune {

void throw_internal(const char* file, int line, const std::string& what) {
  throw InternalError(cat(file, ":", line, ": ", what));
}

}  // namespace rankprune
