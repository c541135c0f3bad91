#include "common/progress.h"

#include <cmath>
#include <cstdio>
#include <ostream>

namespace rankprune {

Progress::Progress(std::string label, std::string unit, std::ostream& os, double interval_s, bool always_final)
    : label_(std::move(label)), unit_(std::move(unit)), os_(os), interval_(interval_s),
      start_(Clock::now()), last_(start_), always_final_(always_final) {}

void Progress::update(std::int64_t done, std::int64_t total) {
  if (finished_) return;
  const auto now = Clock::now();
  const bool complete = done >= total;
  if (!complete && std::chrono::duration<double>(now - last_).count() < interval_) return;
  last_ = now;
  finished_ = complete;
  if (complete && !always_final_ && !printed_) return;
  printed_ = true;
  const double el = std::chrono::duration<double>(now - start_).count();
  const double rate = el > 0 ? static_cast<double>(done) / el : 0.0;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", rate);
  os_ << label_ << ": " << done << "/" << total << " " << unit_ << " (" << buf << "/s, ";
  if (complete)
    os_ << "took " << format_duration(el) << ")\n";
  else
    os_ << "ETA " << (rate > 0 ? format_duration(static_cast<double>(total - done) / rate) : "?") << ")\n";
  os_.flush();
}

std::string format_duration(double s) {
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace rankprune
