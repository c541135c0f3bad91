// Helpers shared by the test binaries.
#pragma once

#include <string>
#include <vector>

namespace rankprune::testing {

// shared/data: $RANKPRUNE_DATA_DIR, else <source>/../shared/data.
std::string data_dir();

// A fresh empty directory under the build's temp area, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const;

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// Runs the built `rankprune` binary with `args` (each argument shell-quoted).
CommandResult run_rankprune(const std::vector<std::string>& args);

}  // namespace rankprune::testing
