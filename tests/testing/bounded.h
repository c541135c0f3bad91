// Running a reader on a hostile input in a child process, measuring what it cost: wall time and
// the growth of the child's peak resident set (getrusage ru_maxrss at the end minus at the start,
// after the start was made the current resident set; a forked child starts with the parent's
// resident pages, so only what the reader allocates counts). The child is killed past `seconds_limit`, so a reader that believes a size and starts
// allocating (or looping) fails the test instead of hanging it.
#pragma once

#include <gtest/gtest.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>

#include "common/error.h"

namespace rankprune::testing {

struct BoundedRun {
  bool finished = false;      // the child exited by itself within the limit
  bool input_error = false;   // fn threw InputError (the message is in `message`)
  std::string message;        // the exception text, or what else happened
  long peak_growth_kb = -1;   // ru_maxrss growth inside the child
  double seconds = 0;
};

// Under AddressSanitizer memory and time are not the program's own: freed blocks sit in a
// quarantine (up to 256 MB), every allocation carries redzones and shadow, and everything runs
// 2-5x slower. The bounds are scaled there (the sanitizer run is about memory errors).
#if defined(__SANITIZE_ADDRESS__)
#define RP_BOUNDED_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RP_BOUNDED_ASAN 1
#endif
#endif
#ifdef RP_BOUNDED_ASAN
constexpr double kMemoryScale = 4, kMemoryExtraMb = 64, kTimeScale = 10;
#else
constexpr double kMemoryScale = 1, kMemoryExtraMb = 0, kTimeScale = 1;
#endif

namespace detail {
inline long max_rss_kb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}
}  // namespace detail

// Runs fn() in a fork()ed child. fn is expected to throw; what it throws is reported back.
inline BoundedRun run_bounded(const std::function<void()>& fn, double seconds_limit = 5.0) {
  BoundedRun r;
  int fds[2];
  if (pipe(fds) != 0) {
    r.message = "pipe failed";
    return r;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    // Start from a clean slate: free heap pages the parent kept go back to the kernel (else the
    // reader's allocations reuse them and never show), and the peak is reset to the current
    // resident set (Linux >= 4.0; where refused, the fork-time RSS is the baseline).
    malloc_trim(0);
    if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
      std::fputs("5", f);
      std::fclose(f);
    }
    const long before = detail::max_rss_kb();
    char kind = 'N';  // N: returned normally, I: InputError, O: other exception
    std::string msg;
    try {
      fn();
      msg = "returned without an error";
    } catch (const InputError& e) {
      kind = 'I';
      msg = e.what();
    } catch (const std::exception& e) {
      kind = 'O';
      msg = e.what();
    }
    const long growth = detail::max_rss_kb() - before;
    std::string out = std::string(1, kind) + std::to_string(growth) + "\n" + msg.substr(0, 8000);
    const char* p = out.data();
    std::size_t left = out.size();
    while (left > 0) {
      const ssize_t n = write(fds[1], p, left);
      if (n <= 0) break;
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    _exit(0);  // no destructors, no atexit handlers of the parent
  }
  close(fds[1]);
  std::string got;
  char buf[4096];
  bool killed = false;
  for (;;) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (elapsed > seconds_limit) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    if (poll(&pfd, 1, 50) > 0) {
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;  // the child closed the pipe: it is exiting
      got.append(buf, static_cast<std::size_t>(n));
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  close(fds[0]);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (killed) {
    r.message = "killed after " + std::to_string(seconds_limit) + " s (the reader neither failed nor finished)";
    return r;
  }
  if (!WIFEXITED(status) || got.empty()) {
    r.message = WIFSIGNALED(status) ? "child died of signal " + std::to_string(WTERMSIG(status)) : "child said nothing";
    return r;
  }
  r.finished = true;
  r.input_error = got[0] == 'I';
  const std::size_t nl = got.find('\n');
  r.peak_growth_kb = std::stol(got.substr(1, nl - 1));
  r.message = nl == std::string::npos ? "" : got.substr(nl + 1);
  if (got[0] == 'N') r.message = "no error: " + r.message;
  return r;
}

// fn must fail with an InputError containing every needle, growing the peak resident set by at
// most `max_growth_mb`, and within `seconds`: a guard against a reader that believes a size and
// loops or allocates for minutes, generous so a loaded machine never trips it (the refusals take
// milliseconds; the figures are printed and measured in docs/reliability.md, not asserted).
inline void expect_fails_bounded(const std::function<void()>& fn, std::initializer_list<std::string> needles,
                                 double max_growth_mb = 64, double seconds = 10.0) {
  max_growth_mb = max_growth_mb * kMemoryScale + kMemoryExtraMb;
  seconds *= kTimeScale;
  // The limit on the child is generous (a slow machine, a sanitizer build); the time asserted
  // is `seconds`.
  const BoundedRun r = run_bounded(fn, seconds * 5 + 5);
  // The figures, for docs/reliability.md and for judging the bounds.
  std::printf("[ bounded  ] +%ld KB peak RSS, %.3f s: %.110s\n", r.peak_growth_kb, r.seconds, r.message.c_str());
  ASSERT_TRUE(r.finished) << r.message;
  EXPECT_TRUE(r.input_error) << "expected InputError, got: " << r.message;
  for (const auto& n : needles) EXPECT_NE(r.message.find(n), std::string::npos) << "'" << n << "' not in: " << r.message;
  EXPECT_LE(r.peak_growth_kb, static_cast<long>(max_growth_mb * 1024)) << "peak RSS grew by " << r.peak_growth_kb
                                                                      << " KB; " << r.message;
  EXPECT_LT(r.seconds, seconds) << r.message;
}

}  // namespace rankprune::testing
