#include "coordinator/sweep.h"

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "cluster/collectives.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/sha256.h"
#include "coordinator/scheduler.h"
#include "prune/select.h"
#include "storage/db.h"
#include "storage/lease.h"
#include "worker/calibration.h"
#include "worker/executor.h"
#include "worker/export.h"
#include "worker/selection.h"
#include "worker/worker_loop.h"

namespace rankprune::coord {

namespace fs = std::filesystem;

namespace {

// Runs `fn` on rank 0 only and tells every rank whether it worked: rank 0 rethrows its own error,
// the others throw CommError, so a failure there ends every rank instead of leaving them waiting.
void on_rank0(cluster::Communicator& comm, const std::string& step, const std::function<void()>& fn) {
  std::string status;
  std::exception_ptr error;
  if (comm.rank() == 0) {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
      status = "failed";
    }
  }
  if (comm.size() > 1) cluster::broadcast_string(comm, status, 0);
  if (error) std::rethrow_exception(error);
  if (!status.empty())
    throw RootFailed(cat(comm.where(), ": rank 0 failed while ", step, " (its message says why); stopping"));
}

void broadcast_doubles(cluster::Communicator& comm, std::vector<double>& v) {
  uint64_t n = v.size();
  cluster::broadcast_value(comm, n, 0);
  v.resize(n);
  comm.broadcast(v.data(), n * sizeof(double), 0);
}

// Keeps this run's job leases fresh from its own thread and DB connection, so a long batch on
// rank 0 never lets a lease expire while the run is alive.
class LeaseHeartbeat {
 public:
  LeaseHeartbeat(const std::string& db_path, storage::LeaseOwner owner, double lease_seconds) {
    if (db_path == ":memory:") return;  // one connection only; nothing else can see it anyway
    thread_ = std::thread([this, db_path, owner = std::move(owner), lease_seconds] {
      const auto every = std::chrono::duration<double>(std::max(0.05, lease_seconds / 4));
      try {
        storage::Database db = storage::Database::open(db_path);
        std::unique_lock<std::mutex> lock(mu_);
        while (!cv_.wait_for(lock, every, [this] { return stop_; })) db.renew_leases(owner, lease_seconds);
      } catch (const std::exception& e) {
        std::cerr << "sweep: lease heartbeat stopped: " << e.what() << "\n";
      }
    });
  }
  ~LeaseHeartbeat() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  LeaseHeartbeat(const LeaseHeartbeat&) = delete;
  LeaseHeartbeat& operator=(const LeaseHeartbeat&) = delete;

 private:
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

struct Rank0 {  // what only rank 0 holds
  std::optional<storage::Database> db;
  std::unique_ptr<LeaseHeartbeat> heartbeat;  // the run's and its jobs' leases, from begin_run on
  int64_t run_id = 0, model_id = 0;
  std::optional<int64_t> cal_id;
  std::string eval_config, stats_path;
  std::vector<std::vector<std::string>> missing;  // per variant: tasks not done
  int64_t total_jobs = 0, missing_jobs = 0;
};

}  // namespace

int run_sweep(const SweepRequest& req, cluster::Communicator& comm, const std::atomic<int>* stop_signal,
              std::ostream& out, std::ostream& err) {
  RP_ASSERT(req.model && req.tokenizer, "sweep without a model or tokenizer");
  const LinearLM& model = *req.model;
  const bool root = comm.rank() == 0;
  const storage::LeaseOwner owner = storage::this_process();
  const std::vector<std::string> hosts = comm.allgatherv(comm.topology().host);
  bool any_stats = false;
  for (const auto& v : req.variants) any_stats = any_stats || v.needs_stats;

  // Calibration data: every rank tokenizes the same files (cheap next to the forward passes).
  CalibrationData cdata;
  if (any_stats) {
    RP_CHECK_INPUT(!req.data.empty(), "--data is required: a method in --methods needs calibration statistics");
    cdata = load_calibration_data(req.data, req.tokenizer, req.tokenizer_path, req.seq_len, req.sequences, req.seed,
                                  model.config().vocab_size);
  }

  // ---- plan (rank 0, against the DB)
  Rank0 r0;
  on_rank0(comm, "planning the sweep against the results database", [&] {
    r0.db.emplace(storage::Database::open(req.db_path));
    if (int n = r0.db->reset_interrupted_jobs(); n > 0)
      err << "sweep: " << n << " job(s) left running by an interrupted run go back to pending\n";
    r0.run_id = r0.db->begin_run(req.argv_json, req.git_sha, comm.topology().host, owner, req.lease_seconds);
    r0.heartbeat = std::make_unique<LeaseHeartbeat>(req.db_path, owner, req.lease_seconds);
    r0.model_id = r0.db->ensure_model(
        {req.model_dir, req.model_sha, arch_name(model.config().arch), model.config().to_json().dump()});
    r0.eval_config = plan::eval_identity(
        req.eval, req.tokenizer_path == "bytes" ? std::string("bytes") : sha256_file(req.tokenizer_path));
    if (any_stats) {
      const std::string cache = req.stats_cache.empty() ? req.db_path + ".cache" : req.stats_cache;
      r0.stats_path = path_join(cache, sha256_hex(req.model_sha + "|" + cdata.data_sha).substr(0, 32) + ".stats.safetensors");
      r0.cal_id = r0.db->ensure_calibration({r0.model_id, cdata.data_sha, cdata.ids.size(1), cdata.ids.size(0),
                                             static_cast<int64_t>(req.seed), cdata.ids.numel(), r0.stats_path});
    }
    for (const auto& v : req.variants) {
      storage::VariantRecord key{r0.model_id, v.needs_stats ? r0.cal_id : std::nullopt, v.method, v.ratio, v.seed, 0, ""};
      std::vector<std::string> left;
      for (const auto& t : req.tasks) {
        ++r0.total_jobs;
        if (r0.db->find_job_state(key, t, r0.eval_config) != std::optional<std::string>("done")) left.push_back(t);
      }
      r0.missing_jobs += static_cast<int64_t>(left.size());
      r0.missing.push_back(std::move(left));
    }
  });

  // What every rank must know: the variants with work, and how to get the statistics.
  std::vector<uint8_t> has_work(req.variants.size(), 0);
  uint8_t calibrate = 0, cached = 0;
  if (root) {
    for (std::size_t v = 0; v < req.variants.size(); ++v) {
      has_work[v] = r0.missing[v].empty() ? 0 : 1;
      if (has_work[v] && req.variants[v].needs_stats) calibrate = 1;
    }
    cached = calibrate && file_exists(r0.stats_path) ? 1 : 0;
  }
  if (comm.size() > 1) {
    comm.broadcast(has_work.data(), has_work.size(), 0);
    cluster::broadcast_value(comm, calibrate, 0);
    cluster::broadcast_value(comm, cached, 0);
  }
  bool nothing = true;
  for (auto w : has_work) nothing = nothing && !w;
  // taylor's gradient sums cost backward passes: only when a taylor variant has work.
  bool want_taylor = false;
  for (std::size_t v = 0; v < req.variants.size(); ++v)
    want_taylor = want_taylor || (has_work[v] && method_needs_taylor(req.variants[v].method));
  if (nothing) {
    if (root) {
      out << "sweep: nothing to do: all " << r0.total_jobs << " jobs are done in " << req.db_path << "\n";
      r0.db->end_run(r0.run_id, "ok");
    }
    return kExitOk;
  }
  if (root)
    err << "sweep: " << r0.missing_jobs << " of " << r0.total_jobs << " jobs to run (" << req.variants.size()
        << " variants x " << req.tasks.size() << " tasks) on " << comm.size() << " rank(s)\n";

  bool ended = false;
  auto fail_run = [&](const char* status) {
    if (root && r0.db && !ended) {
      ended = true;
      try {
        r0.db->end_run(r0.run_id, status);
      } catch (const std::exception& e) {
        err << "sweep: could not record the run's end: " << e.what() << "\n";
      }
    }
  };
  // A signal before evaluation: rank 0 decides for all, after the step that is running.
  auto stop_requested = [&]() {
    uint8_t stop = root && stop_signal && *stop_signal != 0 ? 1 : 0;
    int sig = root && stop_signal ? stop_signal->load() : 0;
    if (comm.size() > 1) {
      cluster::broadcast_value(comm, stop, 0);
      cluster::broadcast_value(comm, sig, 0);
    }
    return stop ? sig : 0;
  };

  try {
    // ---- statistics: one pass for every method and ratio, cached by model + data identity
    CalibrationStats stats;
    if (calibrate) {
      if (cached) {
        std::vector<double> packed;
        on_rank0(comm, "loading cached statistics", [&] {
          stats = CalibrationStats::load(r0.stats_path);
          stats.check_matches(model.config(), req.model_sha, r0.stats_path);
          err << "sweep: statistics from cache " << r0.stats_path << "\n";
          if (comm.size() > 1) packed = stats.pack();
        });
        if (comm.size() > 1) {
          int64_t tokens = stats.tokens;
          cluster::broadcast_value(comm, tokens, 0);
          broadcast_doubles(comm, packed);
          if (!root) stats = CalibrationStats::unpack(model.config(), packed, tokens);
        }
        // A cache from before taylor (or from a sweep without it) lacks the gradient sums: they
        // are computed now, in their own pass (the other statistics are unchanged), and the
        // cache is rewritten with them. Every rank knows: the broadcast carries them when present.
        if (want_taylor && !stats.has_taylor()) {
          if (root)
            err << "sweep: the cached statistics have no taylor gradients; computing them on " << cdata.ids.size(0)
                << " sequences (a backward pass per block)\n";
          collect_taylor(stats, model, cdata.ids, req.batch_size, req.forward, comm);
          on_rank0(comm, "saving the statistics with taylor gradients", [&] { stats.save(r0.stats_path); });
        }
      } else {
        if (root)
          err << "sweep: calibrating on " << cdata.ids.size(0) << " sequences x " << cdata.ids.size(1) << " tokens"
              << (comm.size() > 1 ? cat(" over ", comm.size(), " ranks") : std::string())
              << (want_taylor ? ", with taylor gradients" : "") << "\n";
        cluster::BlockReduceReport rep;
        stats = collect_statistics(model, cdata.ids, req.batch_size, req.forward, comm, &rep, want_taylor);
        int64_t tree_bytes = 0, tree_messages = 0;  // over all ranks
        if (comm.size() > 1) {
          for (auto b : cluster::allgather_values(comm, rep.bytes_sent)) tree_bytes += b;
          for (auto m : cluster::allgather_values(comm, rep.messages_sent)) tree_messages += m;
        }
        on_rank0(comm, "saving the statistics", [&] {
          stats.meta["model_sha"] = req.model_sha;
          stats.meta["data_sha"] = cdata.data_sha;
          stats.meta["seq_len"] = std::to_string(cdata.ids.size(1));
          stats.meta["sequences"] = std::to_string(cdata.ids.size(0));
          stats.meta["seed"] = std::to_string(req.seed);
          fs::create_directories(parent_dir(r0.stats_path));
          stats.save(r0.stats_path);
          if (comm.size() > 1)
            err << "sweep: statistics added over " << comm.size() << " ranks: " << tree_messages << " partial sum(s), "
                << tree_bytes << " bytes, then the total (" << rep.broadcast_bytes << " bytes) to each rank\n";
        });
      }
    }
    if (int sig = stop_requested()) {
      if (root) {
        err << "sweep: stopped by signal " << sig << " before evaluation (statistics kept); re-run the same command to finish\n";
        fail_run("interrupted");
      }
      return 128 + sig;
    }

    // ---- selection: every variant with work, its problems shared over the ranks
    std::vector<Variant> variants(req.variants.size());
    std::vector<int64_t> variant_ids(req.variants.size(), 0);
    for (std::size_t v = 0; v < req.variants.size(); ++v) {
      const auto& key = req.variants[v];
      variants[v].method = key.method, variants[v].ratio = key.ratio, variants[v].seed = key.seed;
      if (!has_work[v]) continue;
      if (key.method != "none")
        variants[v].selection = select_channels_sharded(comm, model, key.needs_stats ? &stats : nullptr, key.method,
                                                        key.ratio, static_cast<uint64_t>(key.seed));
      on_rank0(comm, cat("recording variant ", key.label()), [&] {
        const Selection& sel = variants[v].selection;
        const bool none = key.method == "none";
        const int head_k_dim = static_cast<int>(none ? model.config().head_k_dim : sel.head_k_dim);
        variant_ids[v] = r0.db->ensure_variant({r0.model_id, key.needs_stats ? r0.cal_id : std::nullopt, key.method,
                                                key.ratio, key.seed, head_k_dim, none ? "{}" : sel.to_json().dump()});
        if (req.save_pruned && !none) {
          const std::string dir = path_join(*req.save_pruned, key.folder());
          if (!is_directory(dir)) {
            fs::create_directories(*req.save_pruned);
            write_pruned_checkpoint(req.model_dir, apply_selection(model, sel), sel, dir);
          }
        }
      });
    }

    // ---- evaluation: rank 0 schedules (and works), the others work
    Executor executor(model, *req.tokenizer, req.eval);
    executor.set_variants(std::move(variants));
    if (!root) {
      run_worker(comm, executor, stop_signal);
      return kExitOk;
    }
    std::vector<JobTicket> tickets;
    for (std::size_t v = 0; v < req.variants.size(); ++v)
      for (const auto& t : r0.missing[v])
        tickets.push_back({v, t, r0.db->ensure_job(variant_ids[v], t, r0.eval_config), req.variants[v].label()});
    SchedulerOptions so;
    so.owner = owner;
    so.lease_seconds = req.lease_seconds;
    so.run_id = r0.run_id;
    so.hosts = hosts;
    so.out = &out;
    so.err = &err;
    so.stop_margin = req.stop_margin;
    ScheduleOutcome oc = schedule(comm, *r0.db, executor, tickets, so, stop_signal);
    if (oc.taken > 0)
      err << "sweep: " << oc.taken << " job(s) were held or finished by another run on " << req.db_path
          << "; not run here\n";
    if (oc.failure) {
      fail_run("failed");
      if (oc.failure_is_input) throw InputError(cat("sweep: job ", *oc.failure));
      throw InternalError(cat("sweep: job ", *oc.failure));
    }
    if (oc.stop_signal && oc.left == 0) {
      // The signal came while the last jobs ran: they finished, nothing is left to re-run.
      err << "sweep: caught signal " << oc.stop_signal << " but every job finished\n";
      oc.stop_signal = 0;
    }
    if (oc.stop_signal) {
      // The latest signal wins: a TERM after a USR1 warning means cancelled, not warned.
      if (stop_signal && *stop_signal != 0) oc.stop_signal = *stop_signal;
      err << "sweep: stopped by signal " << oc.stop_signal << " after " << oc.done << " job(s)"
          << (oc.released ? cat("; ", oc.released, " unfinished job(s) given back") : std::string())
          << "; re-run the same command to finish\n";
      fail_run("interrupted");
      return 128 + oc.stop_signal;
    }
    r0.db->end_run(r0.run_id, "ok");
    ended = true;
    out << "sweep: " << oc.done << " job(s) done in " << oc.seconds << " s on " << comm.size() << " rank(s); results in "
        << req.db_path << "\n";
    return kExitOk;
  } catch (...) {
    fail_run("failed");
    throw;
  }
}

}  // namespace rankprune::coord
