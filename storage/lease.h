// Job leases: which process holds a running job, and whether that holder is still there.
//
// A process that claims a job writes its LeaseOwner id and an expiry (unix seconds) into the job
// row and keeps pushing the expiry forward from a heartbeat. Another process may take the job
// over only when the lease is stale (lease_is_stale below). Several independent runs on one
// machine or one node can therefore share a results database without running a job twice or
// resetting each other's live jobs. Torch-free, SQL-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace rankprune::storage {

// Identity of one process, stable for its lifetime and not reused by a later process that gets
// the same pid: start_time is field 22 of /proc/<pid>/stat (clock ticks since boot).
struct LeaseOwner {
  std::string host;        // gethostname()
  std::int64_t pid = 0;
  std::string start_time;  // decimal, as /proc prints it; empty where /proc is not available

  // "host:pid:start_time", e.g. "node07:4242:981234": the text stored in jobs.lease_owner.
  std::string id() const;
  // Inverse of id() (splits at the last two ':', so a host containing ':' survives); nullopt when
  // `id` does not have that form.
  static std::optional<LeaseOwner> parse(const std::string& id);
};

// This machine's hostname ("unknown" when gethostname fails).
std::string this_host();
// The calling process: this_host(), getpid() and its /proc/self/stat start time.
LeaseOwner this_process();
// Field 22 of /proc/<pid>/stat when that process exists and is not a zombie; nullopt otherwise
// (no such pid, an exited child not yet reaped, or no /proc).
std::optional<std::string> process_start_time(std::int64_t pid);
// The system clock as unix seconds.
double unix_now();

// Whether a lease may be taken over. `owner_id` is a LeaseOwner::id() ("" = no owner), `expires`
// its expiry in unix seconds (nullopt = none), `now` the current unix time and `local_host` the
// hostname of the machine asking. Stale when:
//  - there is no owner or no expiry (rows written before schema 3, or by start_job), or
//  - the expiry is in the past (expires < now), or
//  - the owner is on `local_host` and its pid is not alive or has another start time (the pid was
//    reused), read from /proc/<pid>/stat.
// Otherwise live: a lease held on another host is trusted until it expires. An owner id that does
// not parse counts as a foreign host (only the expiry decides).
bool lease_is_stale(const std::string& owner_id, std::optional<double> expires, double now,
                    const std::string& local_host);

}  // namespace rankprune::storage
