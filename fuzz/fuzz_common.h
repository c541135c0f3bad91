// Shared by the libFuzzer targets (docs/reliability.md): a scratch folder in memory (/dev/shm when
// present) for the files the readers open, and the verdict on what a reader did with an input.
//
// A reader may accept an input or refuse it with InputError / UsageError (the CLI's exit 1 / 2
// with a message naming the file). Anything else escaping a reader is a finding: an internal
// error, a LibTorch error, a raw std::exception (which the CLI would print without naming the
// file), and of course every crash, hang, leak and sanitizer report. Findings abort(), so
// libFuzzer saves the input.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "common/error.h"

namespace rankprune::fuzz {

// The scratch folder of this process, created on first use and removed at exit.
inline const std::string& scratch() {
  static const std::string dir = [] {
    const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string templ = std::string(base) + "/rankprune-fuzz-XXXXXX";
    if (!mkdtemp(templ.data())) std::abort();
    static const std::string keep = templ;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return templ;
  }();
  return dir;
}

inline std::string scratch_file(const std::string& name) { return scratch() + "/" + name; }

// Writes the bytes to `path` (replacing it): the readers take paths, as the CLI gives them.
inline void put(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();
}
inline void put(const std::string& path, const std::string& s) {
  put(path, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// In the replay build (tests/fuzz_regress, RP_FUZZ_REPLAY) a finding is thrown instead, as a type
// no reader catches, so the test names the input and the finding and goes on to the next input.
struct Finding {
  std::string what;
};

[[noreturn]] inline void finding(const char* what, const char* detail) {
#ifdef RP_FUZZ_REPLAY
  throw Finding{std::string(what) + ": " + detail};
#else
  std::fprintf(stderr, "rankprune fuzz finding: %s: %s\n", what, detail);
  std::abort();
#endif
}

// Runs one reader call: refusals are fine, anything else is a finding.
template <typename Fn>
void expect_clean(Fn&& fn) {
  try {
    fn();
  } catch (const InputError&) {
  } catch (const UsageError&) {
  } catch (const InternalError& e) {
    finding("internal error", e.what());
  } catch (const std::exception& e) {
    finding("unexpected exception (the CLI would print it without naming the file)", e.what());
  }
}

// An invariant of an accepted input.
#define RP_FUZZ_CHECK(cond, ...)                                                          \
  do {                                                                                    \
    if (!(cond)) ::rankprune::fuzz::finding("invariant `" #cond "` broken",               \
                                            ::rankprune::cat(__VA_ARGS__).c_str());       \
  } while (0)

}  // namespace rankprune::fuzz
