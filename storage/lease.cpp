// Lease owner identity and liveness (storage/lease.h), from gethostname and /proc.
#include "storage/lease.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace rankprune::storage {

namespace {

// Fields 3.. of a /proc/<pid>/stat line. Field 2 (comm) is in parentheses and may itself contain
// spaces and ')', so the split starts after the last ')'.
std::optional<std::vector<std::string>> stat_fields(const std::string& stat_path) {
  std::ifstream in(stat_path);
  if (!in) return std::nullopt;
  std::string line;
  std::getline(in, line);
  const std::size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

// fields[0] is field 3 (state), so field N is fields[N - 3].
constexpr std::size_t kStateField = 3 - 3;
constexpr std::size_t kStartTimeField = 22 - 3;

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

std::string LeaseOwner::id() const { return host + ":" + std::to_string(pid) + ":" + start_time; }

std::optional<LeaseOwner> LeaseOwner::parse(const std::string& id) {
  const std::size_t last = id.rfind(':');
  if (last == std::string::npos || last == 0) return std::nullopt;
  const std::size_t middle = id.rfind(':', last - 1);
  if (middle == std::string::npos || middle == 0) return std::nullopt;
  LeaseOwner o;
  o.host = id.substr(0, middle);
  const std::string pid = id.substr(middle + 1, last - middle - 1);
  o.start_time = id.substr(last + 1);
  if (!all_digits(pid) || pid.size() > 18 || !(o.start_time.empty() || all_digits(o.start_time)))
    return std::nullopt;
  o.pid = std::stoll(pid);
  return o;
}

std::string this_host() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "unknown";
  return buf;
}

std::optional<std::string> process_start_time(std::int64_t pid) {
  if (pid <= 0) return std::nullopt;
  const auto fields = stat_fields("/proc/" + std::to_string(pid) + "/stat");
  if (!fields || fields->size() <= kStartTimeField) return std::nullopt;
  // A zombie has exited and only waits to be reaped: it does no more work.
  if ((*fields)[kStateField] == "Z") return std::nullopt;
  return (*fields)[kStartTimeField];
}

LeaseOwner this_process() {
  LeaseOwner o;
  o.host = this_host();
  o.pid = static_cast<std::int64_t>(::getpid());
  const auto fields = stat_fields("/proc/self/stat");
  if (fields && fields->size() > kStartTimeField) o.start_time = (*fields)[kStartTimeField];
  return o;
}

double unix_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

bool lease_is_stale(const std::string& owner_id, std::optional<double> expires, double now,
                    const std::string& local_host) {
  if (owner_id.empty() || !expires) return true;
  if (*expires < now) return true;
  const auto owner = LeaseOwner::parse(owner_id);
  if (!owner || owner->host != local_host) return false;  // cannot look at another host's pids
  // Without /proc (not Linux) nothing can be said about the pid: trust the expiry.
  if (owner->start_time.empty() && this_process().start_time.empty()) return false;
  const auto start = process_start_time(owner->pid);
  return !start || *start != owner->start_time;
}

}  // namespace rankprune::storage
