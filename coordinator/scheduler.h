// Rank 0 during a sweep's evaluation: the only writer of the results DB, and a worker too.
//
// Jobs (variant x task, not done yet) are cut into shards (plan::plan_shards) and handed out in
// plan order to whichever rank is free, `depth` at a time per rank so no worker waits for the
// next item; rank 0 takes one itself whenever it has nothing queued and services the others
// between its own batches. A job is claimed in the DB (a lease, storage/lease.h) when its first
// shard goes out: a job another live run holds is skipped, never run twice. When a job's last
// shard comes back, its metrics are computed from the merged scores (eval::finish_task: exactly
// what one process computes) and stored with the job's completion in one transaction.
//
// Failures: a shard that fails (bad input) fails its job with the message and stops new work; a
// worker silent for the communicator's timeout while holding work fails its jobs with "rank R
// (host H) stopped answering" and scheduling ends with a CommError; a stop signal (this
// process's or one a worker forwards) stops new work, lets running shards finish, and gives back
// unfinished jobs (pending).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "cluster/communicator.h"
#include "storage/db.h"
#include "storage/lease.h"
#include "worker/executor.h"

namespace rankprune::coord {

// One job of this run: a (variant, task) that is not done.
struct JobTicket {
  std::size_t variant = 0;  // index into the executor's variants
  std::string task;
  int64_t job_id = 0;       // its row in the results DB
  std::string label;        // "drrqr 0.5" for the progress lines
};

struct SchedulerOptions {
  storage::LeaseOwner owner;
  double lease_seconds = 120;
  int64_t run_id = 0;
  int depth = 2;                       // work items in flight per worker
  std::vector<std::string> hosts;      // host of every rank (for the jobs table and messages)
  std::ostream* out = nullptr;         // one line per finished job
  std::ostream* err = nullptr;         // notes
  double stop_margin = 0;              // warning-to-limit seconds (0 = unknown): warn when a job is longer
};

struct ScheduleOutcome {
  int64_t done = 0;          // jobs this run completed
  int64_t taken = 0;         // jobs skipped: another live run holds them, or finished them meanwhile
  int64_t released = 0;      // claimed, not finished (stop or failure): back to pending
  int64_t left = 0;          // jobs this run neither finished nor saw finished elsewhere (0: nothing left)
  int stop_signal = 0;       // the signal that stopped the run early, 0 if none
  std::optional<std::string> failure;  // the first failed job's message
  bool failure_is_input = true;        // that failure was the user's data/options (exit 1), else internal
  double seconds = 0;
};

// Runs on rank 0 while every other rank runs run_worker; returns once every job is done, skipped
// or given back and every worker was told to stop. Throws cluster::CommError (after recording
// the lost rank's jobs as failed and giving back the rest) when a worker stops answering.
ScheduleOutcome schedule(cluster::Communicator& comm, storage::Database& db, Executor& self,
                         const std::vector<JobTicket>& jobs, const SchedulerOptions& options,
                         const std::atomic<int>* stop_signal);

}  // namespace rankprune::coord
