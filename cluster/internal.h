// Helpers shared by the backends in cluster/ (not part of the public interface).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <thread>

namespace rankprune::cluster::detail {

using Clock = std::chrono::steady_clock;

// $SLURMD_NODENAME when set (the Slurm node name), else gethostname(), else "unknown-host".
std::string host_name();

// getenv(name) parsed as a leading non-negative integer ("4" and "4(x2)" -> 4); nullopt when
// unset or not a number.
std::optional<long> env_int(const char* name);

// "300 ms" / "300 s": how a timeout reads in an error message.
std::string describe(std::chrono::milliseconds t);

// Polling pause for the non-blocking MPI/CUDA waits: a few yields first (latency of a small
// collective on one host is ~µs), then sleeps that double from 20 µs to 1 ms, so an idle wait
// costs ~0.1% of a core and a fast one stays fast.
class Backoff {
 public:
  void pause() {
    if (spins_ < 64) {
      ++spins_;
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    if (sleep_ < std::chrono::microseconds(1000)) sleep_ *= 2;
  }

 private:
  int spins_ = 0;
  std::chrono::microseconds sleep_{20};
};

}  // namespace rankprune::cluster::detail
