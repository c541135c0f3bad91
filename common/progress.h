// Progress lines on stderr for long loops: "label: done/total unit (rate/s, ETA ...)", at most one
// line per `interval` seconds plus a final line, so logs stay short when stderr is a file.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace rankprune {

class Progress {
 public:
  // always_final: print the final line even when the work finished before the first interval
  // (false keeps short jobs silent).
  Progress(std::string label, std::string unit, std::ostream& os, double interval_s = 2.0, bool always_final = true);
  // Reports `done` of `total`; prints when the interval passed or the work is complete.
  void update(std::int64_t done, std::int64_t total);

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_, unit_;
  std::ostream& os_;
  double interval_;
  Clock::time_point start_, last_;
  bool finished_ = false;
  bool always_final_ = true;
  bool printed_ = false;
};

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace rankprune
