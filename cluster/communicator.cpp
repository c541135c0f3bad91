// The shared parts of the Communicator interface, the single-rank backend and the
// `--comm` factory. The threads / mpi / nccl backends live in their own files.
#include "cluster/communicator.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <deque>
#include <iostream>

#include "cluster/internal.h"
#include "common/error.h"

namespace rankprune::cluster {

namespace detail {

std::string host_name() {
  // Under Slurm the node's name (what sinfo, squeue and the job log call it; several slurmd may
  // share one machine's hostname), else the machine's.
  if (const char* node = std::getenv("SLURMD_NODENAME"); node && *node) return node;
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "unknown-host";
  return buf;
}

std::optional<long> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v < '0' || *v > '9') return std::nullopt;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (end == v || x < 0) return std::nullopt;
  return x;
}

std::string describe(std::chrono::milliseconds t) {
  if (t.count() >= 10000 && t.count() % 1000 == 0) return cat(t.count() / 1000, " s");
  return cat(t.count(), " ms");
}

}  // namespace detail

std::string Communicator::where() const {
  const Topology& t = topology();
  return cat("rank ", t.rank, " (host ", t.host, ")");
}

Message Communicator::recv_or_throw(int source, int tag, const std::string& what) {
  std::optional<Message> m = recv(source, tag, timeout());
  if (m) return std::move(*m);
  std::string from = source == kAnySource ? std::string("any rank") : cat("rank ", source);
  std::string with = tag == kAnyTag ? std::string("any tag") : cat("tag ", tag);
  throw CommError(cat(where(), ": ", what, ": nothing from ", from, " with ", with, " within ",
                      detail::describe(timeout()), "; a peer may have died or be stuck"));
}

namespace {

// One rank, no peers: every collective is the identity, and a message can only come from
// oneself. recv() never waits: with no other rank nothing can arrive while it sleeps.
class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator() {
    topo_.host = detail::host_name();
    // Documented fallback for the host-local position when there is no MPI: Slurm's own
    // numbering (only meaningful under srun without --mpi=pmix, which make_communicator warns of).
    auto local_id = detail::env_int("SLURM_LOCALID");
    auto per_node = detail::env_int("SLURM_NTASKS_PER_NODE");
    if (local_id && per_node && *local_id < *per_node && *per_node <= INT_MAX) {
      topo_.local_rank = static_cast<int>(*local_id);
      topo_.local_size = static_cast<int>(*per_node);
    }
  }

  const Topology& topology() const override { return topo_; }
  std::string backend() const override { return "local"; }

  void barrier() override {}
  void allreduce_sum(double*, std::size_t) override {}
  void broadcast(void*, std::size_t, int root) override { check_peer(root, "broadcast root"); }
  std::vector<std::string> gatherv(const std::string& mine, int root) override {
    check_peer(root, "gatherv root");
    return {mine};
  }
  std::vector<std::string> allgatherv(const std::string& mine) override { return {mine}; }

  void send(int dest, int tag, std::string bytes) override {
    check_peer(dest, "send destination");
    RP_ASSERT(tag >= 0, where(), ": send tag ", tag, " is negative (user tags are >= 0)");
    queue_.push_back(Message{0, tag, std::move(bytes)});
  }

  std::optional<Message> recv(int source, int tag, std::chrono::milliseconds) override {
    if (source != kAnySource) check_peer(source, "recv source");
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (tag == kAnyTag || it->tag == tag) {
        Message m = std::move(*it);
        queue_.erase(it);
        return m;
      }
    }
    return std::nullopt;
  }

  void flush() override {}

  [[noreturn]] void abort(int exit_code, const std::string& why) override {
    throw CommError(cat(where(), ": abort (exit code ", exit_code, "): ", why));
  }

 private:
  void check_peer(int r, const char* what) const {
    if (r != 0) throw CommError(cat(where(), ": ", what, " ", r, " does not exist (1 rank)"));
  }

  Topology topo_;
  std::deque<Message> queue_;
};

// The environment variables MPI launchers set in every process they start: Open MPI's mpirun,
// PMIx (srun --mpi=pmix, prterun), PMI-1/2 (MPICH/Intel hydra, srun --mpi=pmi2), MVAPICH2.
constexpr const char* kLauncherVariables[] = {
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
    "PMI_FD", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MPI_LOCALNRANKS",
};

const char* launcher_variable() {
  for (const char* v : kLauncherVariables)
    if (std::getenv(v) != nullptr) return v;
  return nullptr;
}

// srun without --mpi=pmix starts N independent copies, each a world of one rank: every copy
// would do the whole job. Worth one line on stderr.
void warn_if_lone_slurm_task(const Communicator& comm) {
  if (comm.size() != 1) return;
  long tasks = 0;
  for (const char* v : {"SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"}) {
    auto n = detail::env_int(v);
    if (n && *n > tasks) tasks = *n;
  }
  if (tasks <= 1) return;
  std::cerr << "rankprune: warning: Slurm started " << tasks
            << " tasks but this run has 1 rank, so every task works alone; launch with "
               "`srun --mpi=pmix` (and a build with MPI) to make them one run\n";
}

}  // namespace

std::unique_ptr<Communicator> make_local() { return std::make_unique<LocalCommunicator>(); }

bool launched_by_mpi() { return launcher_variable() != nullptr; }

bool built_with_mpi() {
#ifdef RANKPRUNE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool built_with_nccl() {
#ifdef RANKPRUNE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_communicator(const std::string& name) {
  std::unique_ptr<Communicator> comm;
  if (name == "local") {
    comm = make_local();
  } else if (name == "mpi") {
    comm = make_mpi();
  } else if (name == "nccl") {
    comm = make_nccl();
  } else if (name == "auto") {
    if (const char* var = launcher_variable()) {
      if (!built_with_mpi())
        throw CommError(cat("rankprune was built without MPI, but an MPI launcher started this "
                            "process (", var, " is set); rebuild with MPI (apt-get install "
                            "libopenmpi-dev) or run it without mpirun/srun, or pass --comm local"));
      comm = make_mpi();
    } else {
      comm = make_local();
    }
  } else {
    throw UsageError(cat("--comm: unknown communicator '", name,
                         "' (expected auto, local, mpi or nccl)"));
  }
  warn_if_lone_slurm_task(*comm);
  return comm;
}

}  // namespace rankprune::cluster
