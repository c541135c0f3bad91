#include "tests/testing/testing.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>

namespace rankprune::testing {
namespace fs = std::filesystem;

std::string data_dir() {
  if (const char* env = std::getenv("RANKPRUNE_DATA_DIR"); env && *env) return env;
  return (fs::path(RANKPRUNE_SOURCE_DIR) / ".." / "shared" / "data").lexically_normal().string();
}

TempDir::TempDir() {
  std::random_device rd;
  std::ostringstream os;
  os << "rankprune-test-" << ::getpid() << "-" << std::hex << rd() << rd();
  path_ = (fs::temp_directory_path() / os.str()).string();
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string TempDir::file(const std::string& name) const { return (fs::path(path_) / name).string(); }

static std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

CommandResult run_rankprune(const std::vector<std::string>& args) {
  std::string cmd = shell_quote(RANKPRUNE_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " 2>&1";
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = ::pclose(p);
  if (WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    r.exit_code = 128 + WTERMSIG(status);
  return r;
}

int spawn_process(const std::vector<std::string>& argv, const std::string& log, const SpawnOptions& opts) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& [k, v] : opts.env) ::setenv(k.c_str(), v.c_str(), 1);
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) _exit(126);
    if (opts.kill_after_s > 0) ::alarm(opts.kill_after_s);  // survives execv: SIGALRM ends a hung child
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    const std::string out = log.empty() ? "/dev/null" : log;
    if (!std::freopen(out.c_str(), "w", stdout)) _exit(126);
    ::dup2(::fileno(stdout), ::fileno(stderr));
    ::execv(copy[0].c_str(), args.data());
    _exit(127);
  }
  return static_cast<int>(pid);
}

int wait_process(int pid, struct rusage* usage) {
  int status = 0;
  struct rusage ru {};
  if (::wait4(static_cast<pid_t>(pid), &status, 0, &ru) < 0) return -1;
  if (usage) *usage = ru;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace rankprune::testing
