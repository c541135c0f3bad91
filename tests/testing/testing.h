// Helpers shared by the test binaries.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"

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

// Runs fn, requires an InputError whose message contains every one of `needles`.
template <typename Fn>
void expect_input_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got: " << e.what();
  }
}

// Runs the built `rankprune` binary with `args` (each argument shell-quoted).
CommandResult run_rankprune(const std::vector<std::string>& args);

// Starts `argv` (argv[0] is the program's path) in the background with stdout and stderr going to
// `log` (or /dev/null when empty); returns its pid. wait_process returns its exit code, or 128 +
// the signal that ended it.
// Options: variables added to the child's environment, its working directory, and an alarm that
// kills it after `kill_after_s` seconds (0: none). wait_process can return the child's resource
// usage (peak RSS in ru_maxrss).
struct SpawnOptions {
  std::map<std::string, std::string> env;
  std::string cwd;
  unsigned kill_after_s = 0;
};
int spawn_process(const std::vector<std::string>& argv, const std::string& log = "", const SpawnOptions& opts = {});
int wait_process(int pid, struct rusage* usage = nullptr);

}  // namespace rankprune::testing
