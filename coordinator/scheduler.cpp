#include "coordinator/scheduler.h"

#include <chrono>
#include <deque>
#include <sstream>

#include "common/error.h"
#include "coordinator/sweep_plan.h"
#include "worker/protocol.h"

namespace rankprune::coord {

namespace {

using Clock = std::chrono::steady_clock;

class Scheduler {
 public:
  Scheduler(cluster::Communicator& comm, storage::Database& db, Executor& self, const std::vector<JobTicket>& jobs,
            const SchedulerOptions& opt, const std::atomic<int>* stop_signal)
      : comm_(comm), db_(db), self_(self), tickets_(jobs), opt_(opt), signal_(stop_signal) {
    interval_ = std::max<Clock::duration>(comm.timeout() / 4, std::chrono::milliseconds(1));
    const int P = comm.size();
    outstanding_.resize(static_cast<std::size_t>(P));
    heard_.assign(static_cast<std::size_t>(P), Clock::now());
    // Shards over the units of every job's task (prepared once here; workers prepare their own).
    // A task that cannot be prepared (bad data, a continuation longer than --max-length) fails its
    // jobs here, before any work goes out.
    jobs_.resize(tickets_.size());
    std::vector<std::vector<eval::Unit>> units(tickets_.size());
    for (std::size_t j = 0; j < tickets_.size(); ++j) {
      try {
        units[j] = self_.task(tickets_[j].task).units();
      } catch (const InputError& e) {
        fail_unprepared(j, e.what());
      } catch (const UsageError& e) {
        fail_unprepared(j, e.what());
      }
    }
    for (const auto& s : plan::plan_shards(units, P)) {
      if (jobs_[s.job].state != State::kUnclaimed) continue;
      queue_.push_back(shards_.size());
      shards_.push_back({s, -1, false});
    }
    for (std::size_t j = 0; j < tickets_.size(); ++j) jobs_[j].unit_scores.resize(units[j].size());
    for (const auto& s : shards_) jobs_[s.plan.job].remaining += 1;
  }

  ScheduleOutcome run() {
    const auto t0 = Clock::now();
    try {
      for (;;) {
        service(std::chrono::milliseconds(0));
        if (auto s = next_shard(0)) {
          run_own(*s);
          continue;
        }
        if (idle()) break;
        service(std::chrono::milliseconds(20));
      }
    } catch (...) {
      // Whatever went wrong here (a lost rank, the DB), the unfinished jobs go back and the
      // workers that can still hear are told to stop, so nobody waits for a scheduler that is gone.
      try {
        give_back();
      } catch (const std::exception& e) {
        note(cat("sweep: could not give back unfinished jobs: ", e.what()));
      }
      stop_workers();
      throw;
    }
    give_back();
    stop_workers();
    for (const auto& j : jobs_) out_.left += j.state == State::kDone || j.state == State::kTaken ? 0 : 1;
    out_.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return out_;
  }

 private:
  enum class State { kUnclaimed, kClaimed, kTaken, kDone, kFailed };
  struct JobState {
    State state = State::kUnclaimed;
    std::size_t remaining = 0;  // shards not back yet
    std::vector<std::vector<eval::Score>> unit_scores;
    double seconds = 0;  // compute time summed over its shards
    Clock::time_point started{};  // its first shard went out
  };
  struct ShardState {
    plan::Shard plan;
    int rank = -1;  // where it went
    bool done = false;
  };

  bool stopping() const { return out_.stop_signal != 0 || out_.failure.has_value(); }

  bool idle() const {
    for (const auto& o : outstanding_)
      if (!o.empty()) return false;
    return stopping() || queue_.empty();
  }

  // The next shard to hand to `rank`, claiming its job when it is the job's first.
  std::optional<std::size_t> next_shard(int rank) {
    while (!stopping() && !queue_.empty()) {
      const std::size_t s = queue_.front();
      JobState& job = jobs_[shards_[s].plan.job];
      const JobTicket& t = tickets_[shards_[s].plan.job];
      if (job.state == State::kUnclaimed) {
        const std::string& host = opt_.hosts.empty() ? comm_.topology().host : opt_.hosts[static_cast<std::size_t>(rank)];
        if (db_.claim_job(t.job_id, opt_.owner, opt_.lease_seconds, host, rank, opt_.run_id)) {
          job.state = State::kClaimed;
          job.started = Clock::now();
        } else {
          job.state = State::kTaken;
          ++out_.taken;
          note(cat("sweep: ", t.label, " ", t.task, " is held by another live run or already done; skipped"));
        }
      }
      queue_.pop_front();
      if (job.state != State::kClaimed) continue;
      shards_[s].rank = rank;
      outstanding_[static_cast<std::size_t>(rank)].push_back(s);
      return s;
    }
    return std::nullopt;
  }

  proto::WorkItem item_of(std::size_t s) const {
    const auto& p = shards_[s].plan;
    const JobTicket& t = tickets_[p.job];
    return {static_cast<int64_t>(s), static_cast<int64_t>(t.variant), t.task, static_cast<int64_t>(p.lo),
            static_cast<int64_t>(p.hi)};
  }

  void run_own(std::size_t s) {
    proto::ShardResult r;
    try {
      r = self_.run(item_of(s), [&] { service(std::chrono::milliseconds(0)); });
    } catch (const InputError& e) {
      return on_error(0, static_cast<int64_t>(s), "input", e.what());
    } catch (const UsageError& e) {
      return on_error(0, static_cast<int64_t>(s), "input", e.what());
    } catch (const cluster::CommError&) {
      throw;
    } catch (const std::exception& e) {
      return on_error(0, static_cast<int64_t>(s), "internal", e.what());
    }
    on_result(0, r);
  }

  // Messages, new work for idle workers, signs of life both ways.
  void service(std::chrono::milliseconds wait) {
    while (auto m = comm_.recv(cluster::kAnySource, proto::kToCoordinator, wait)) {
      wait = std::chrono::milliseconds(0);
      heard_[static_cast<std::size_t>(m->source)] = Clock::now();
      const auto e = proto::decode(m->bytes);
      if (e.type == "result") {
        on_result(m->source, proto::result_of(e));
      } else if (e.type == "error") {
        on_error(m->source, e.head.at("id").get<int64_t>(), e.head.at("kind").get<std::string>(),
                 e.head.at("message").get<std::string>());
      } else if (e.type == "signal") {
        if (out_.stop_signal == 0) {
          out_.stop_signal = e.head.at("signal").get<int>();
          note(cat("sweep: rank ", m->source, " caught signal ", out_.stop_signal,
                   "; finishing the running shards, then stopping"));
        }
      } else {
        RP_ASSERT(e.type == "alive", "unexpected message '", e.type, "' from rank ", m->source);
      }
    }
    if (signal_ && *signal_ != 0 && out_.stop_signal == 0) {
      out_.stop_signal = *signal_;
      note(cat("sweep: caught signal ", out_.stop_signal, "; finishing the running shards, then stopping"));
    }
    for (int r = 1; r < comm_.size(); ++r) {
      auto& o = outstanding_[static_cast<std::size_t>(r)];
      while (static_cast<int>(o.size()) < opt_.depth) {
        const bool was_idle = o.empty();
        auto s = next_shard(r);
        if (!s) break;
        if (was_idle) heard_[static_cast<std::size_t>(r)] = Clock::now();  // its clock starts with the work
        comm_.send(r, proto::kToWorker, proto::encode_work(item_of(*s)));
      }
    }
    const auto now = Clock::now();
    if (now - alive_sent_ >= interval_ && comm_.size() > 1) {
      for (int r = 1; r < comm_.size(); ++r) comm_.send(r, proto::kToWorker, proto::encode_simple("alive"));
      alive_sent_ = now;
    }
    for (int r = 1; r < comm_.size(); ++r)
      if (!outstanding_[static_cast<std::size_t>(r)].empty() && now - heard_[static_cast<std::size_t>(r)] > comm_.timeout())
        lost(r);
    if (opt_.stop_margin > 0 && !margin_warned_)
      for (std::size_t j = 0; j < jobs_.size(); ++j)
        if (jobs_[j].state == State::kClaimed &&
            std::chrono::duration<double>(now - jobs_[j].started).count() > opt_.stop_margin) {
          warn_margin(j, std::chrono::duration<double>(now - jobs_[j].started).count(), "has been running for");
          break;
        }
  }

  void take_back(int rank, std::size_t s) {
    auto& o = outstanding_[static_cast<std::size_t>(rank)];
    for (auto it = o.begin(); it != o.end(); ++it)
      if (*it == s) {
        o.erase(it);
        return;
      }
    RP_ASSERT(false, "shard ", s, " was not out at rank ", rank);
  }

  void on_result(int rank, const proto::ShardResult& r) {
    const auto s = static_cast<std::size_t>(r.id);
    RP_ASSERT(s < shards_.size() && shards_[s].rank == rank && !shards_[s].done, "result for shard ", r.id, " from rank ",
              rank);
    take_back(rank, s);
    shards_[s].done = true;
    const auto& p = shards_[s].plan;
    JobState& job = jobs_[p.job];
    RP_ASSERT(r.units.size() == p.hi - p.lo, "shard ", s, ": ", r.units.size(), " units back, ", p.hi - p.lo, " sent");
    for (std::size_t u = p.lo; u < p.hi; ++u) job.unit_scores[u] = r.units[u - p.lo];
    job.seconds += r.seconds;
    if (--job.remaining > 0 || job.state != State::kClaimed) return;
    complete(p.job);
  }

  void complete(std::size_t j) {
    const JobTicket& t = tickets_[j];
    JobState& job = jobs_[j];
    const eval::TaskResult res = eval::finish_task(self_.task(t.task), job.unit_scores);
    std::vector<storage::MetricValue> mv;
    for (const auto& m : res.metrics) mv.push_back({m.name, m.value, m.stderr_value});
    db_.complete_job(t.job_id, mv, job.seconds, opt_.owner);
    job.state = State::kDone;
    job.unit_scores.clear();
    job.unit_scores.shrink_to_fit();
    ++out_.done;
    const double wall = std::chrono::duration<double>(Clock::now() - job.started).count();
    if (opt_.stop_margin > 0 && wall > opt_.stop_margin && !margin_warned_) warn_margin(j, wall, "took");
    if (opt_.out) {
      std::ostringstream line;
      line << "[" << out_.done << "/" << tickets_.size() << "] " << t.label << " " << t.task << ":";
      for (const auto& m : res.metrics) line << " " << m.name << " " << m.value;
      *opt_.out << line.str() << "\n" << std::flush;
    }
  }

  void on_error(int rank, int64_t id, const std::string& kind, const std::string& message) {
    const auto s = static_cast<std::size_t>(id);
    RP_ASSERT(s < shards_.size() && shards_[s].rank == rank, "error for shard ", id, " from rank ", rank);
    take_back(rank, s);
    shards_[s].done = true;
    const auto& p = shards_[s].plan;
    JobState& job = jobs_[p.job];
    --job.remaining;
    if (job.state != State::kClaimed) return;  // already failed by another shard
    const std::string where = comm_.size() > 1 ? cat(" (on rank ", rank, ", ", host(rank), ")") : std::string();
    db_.fail_job(tickets_[p.job].job_id, message, opt_.owner);
    job.state = State::kFailed;
    if (!out_.failure) {
      out_.failure = cat(tickets_[p.job].label, " ", tickets_[p.job].task, where, ": ", message);
      out_.failure_is_input = kind == "input";
    }
  }

  [[noreturn]] void lost(int rank) {
    lost_rank_ = rank;
    const std::string why = cat("rank ", rank, " (host ", host(rank), ") stopped answering: no message for ",
                                std::chrono::duration<double>(comm_.timeout()).count(),
                                " s while it held work (it may have died; --comm-timeout raises the limit); re-run "
                                "the sweep to resume");
    for (auto s : outstanding_[static_cast<std::size_t>(rank)]) {
      JobState& job = jobs_[shards_[s].plan.job];
      if (job.state != State::kClaimed) continue;
      db_.fail_job(tickets_[shards_[s].plan.job].job_id, why, opt_.owner);
      job.state = State::kFailed;
    }
    throw cluster::CommError(cat(comm_.where(), ": ", why));
  }

  // Tells every worker that can still hear to stop. After a lost rank the sends are best effort
  // and not waited for: the run is about to end, and waiting for a dead peer would add a second
  // timeout.
  void stop_workers() {
    try {
      for (int r = 1; r < comm_.size(); ++r)
        if (r != lost_rank_) comm_.send(r, proto::kToWorker, proto::encode_simple("stop"));
      if (lost_rank_ < 0) comm_.flush();
    } catch (const std::exception& e) {
      note(cat("sweep: could not tell every worker to stop: ", e.what()));
    }
  }

  void fail_unprepared(std::size_t j, const std::string& message) {
    const JobTicket& t = tickets_[j];
    if (db_.claim_job(t.job_id, opt_.owner, opt_.lease_seconds, comm_.topology().host, 0, opt_.run_id)) {
      db_.fail_job(t.job_id, message, opt_.owner);
      jobs_[j].state = State::kFailed;
      if (!out_.failure) out_.failure = cat(t.label, " ", t.task, ": ", message), out_.failure_is_input = true;
    } else {
      jobs_[j].state = State::kTaken;
      ++out_.taken;
    }
  }

  // Once per run: a job longer than the warning-to-limit margin (--stop-margin) may be cut off.
  void warn_margin(std::size_t j, double seconds, const char* verb) {
    margin_warned_ = true;
    note(cat("sweep: warning: ", tickets_[j].label, " ", tickets_[j].task, " ", verb, " ", seconds, " s, longer than the ",
             opt_.stop_margin, " s between the warning signal and the time limit: a warned sweep finishes its running "
             "jobs, so the limit may cut one off; raise the margin (sbatch --signal=B:USR1@SECONDS) above the longest job"));
  }

  // Jobs claimed but not finished go back to pending for the next run.
  void give_back() {
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      if (jobs_[j].state != State::kClaimed) continue;
      ++out_.released;
      jobs_[j].state = State::kUnclaimed;
    }
    if (out_.released > 0) db_.release_jobs(opt_.owner);
  }

  std::string host(int rank) const {
    return opt_.hosts.size() > static_cast<std::size_t>(rank) ? opt_.hosts[static_cast<std::size_t>(rank)] : "?";
  }

  void note(const std::string& s) {
    if (opt_.err) *opt_.err << s << "\n" << std::flush;
  }

  cluster::Communicator& comm_;
  storage::Database& db_;
  Executor& self_;
  const std::vector<JobTicket>& tickets_;
  const SchedulerOptions& opt_;
  const std::atomic<int>* signal_;
  std::vector<ShardState> shards_;
  std::deque<std::size_t> queue_;
  std::vector<JobState> jobs_;
  std::vector<std::deque<std::size_t>> outstanding_;
  std::vector<Clock::time_point> heard_;
  Clock::duration interval_{};
  Clock::time_point alive_sent_{};
  bool margin_warned_ = false;
  int lost_rank_ = -1;
  ScheduleOutcome out_;
};

}  // namespace

ScheduleOutcome schedule(cluster::Communicator& comm, storage::Database& db, Executor& self,
                         const std::vector<JobTicket>& jobs, const SchedulerOptions& options,
                         const std::atomic<int>* stop_signal) {
  RP_ASSERT(comm.rank() == 0, "the scheduler runs on rank 0");
  return Scheduler(comm, db, self, jobs, options, stop_signal).run();
}

}  // namespace rankprune::coord
