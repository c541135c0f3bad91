// cluster/: how the ranks of one rankprune run talk to each other. Torch-free and model-free.
//
// Three thin layers (docs/architecture.md):
//   1. raw MPI / NCCL calls, each through one CHECK macro that turns a bad return code into a
//      CommError naming the rank, the host and the operation (mpi.cpp, nccl.cpp);
//   2. this byte-level Communicator interface, with backends
//        local    1 rank, no peers (the embedded default; every collective is the identity)
//        threads  N ranks as threads of one process (unit tests of distributed logic)
//        mpi      one rank per process under mpirun / srun --mpi=pmix; host buffers
//        nccl     device buffers for the float64 reductions (NCCL), MPI for everything else
//   3. typed helpers (cluster/collectives.h).
//
// Rules every backend keeps:
//  - Collectives are called by every rank in the same order.
//  - No call waits forever: a collective or a blocking receive that does not complete within
//    timeout() throws CommError ("rank 1 (host n3): allreduce of 8 bytes timed out after 300 s;
//    a peer may have died"). The default is kDefaultTimeout; `--comm-timeout` sets it.
//  - send() never waits for the receiver: the bytes are moved into the communicator and the
//    transfer completes in the background (or at later calls); flush() waits for all of them.
//  - Results never depend on the backend: allreduce_sum is for values where the order of the
//    float64 additions does not matter to the caller (counts, timings); anything that must be
//    bitwise independent of the rank count is reduced in a fixed order by the caller
//    (worker/calibration.cpp's block tree uses send/recv for that).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace rankprune::cluster {

// A peer died or stopped answering, a collective timed out, or an MPI/NCCL call failed.
// what() names the rank, the host and the operation.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr std::chrono::milliseconds kDefaultTimeout{300000};  // 5 minutes
constexpr int kAnySource = -1;
constexpr int kAnyTag = -1;

// Where this rank runs.
struct Topology {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;  // among the ranks on this host (MPI shared-memory split,
                                       // else SLURM_LOCALID / SLURM_NTASKS_PER_NODE, else 0 / 1)
  std::string host;                    // gethostname()
  int gpu = -1;                        // local_rank % visible devices; -1 when there are none
};

struct Message {
  int source = 0;
  int tag = 0;
  std::string bytes;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual const Topology& topology() const = 0;
  int rank() const { return topology().rank; }
  int size() const { return topology().size; }
  virtual std::string backend() const = 0;  // "local", "threads", "mpi", "nccl"

  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  // ---- collectives (every rank, same order)
  virtual void barrier() = 0;
  // In place: every rank ends with the element-wise sum over ranks. Host memory, except for the
  // nccl backend, where `data` is device memory.
  virtual void allreduce_sum(double* data, std::size_t n) = 0;
  // In place: `bytes` bytes from `root` to every rank (host memory).
  virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
  // Every rank's `mine`, in rank order, on `root` (others get an empty vector).
  virtual std::vector<std::string> gatherv(const std::string& mine, int root) = 0;
  // Every rank's `mine`, in rank order, on every rank.
  virtual std::vector<std::string> allgatherv(const std::string& mine) = 0;

  // ---- point-to-point (tags >= 0; sending to oneself is allowed)
  virtual void send(int dest, int tag, std::string bytes) = 0;
  // The next message from `source` with `tag` (kAnySource / kAnyTag match any), in the order
  // sent per (source, tag). Waits up to `wait`; std::nullopt when nothing arrived in time.
  // wait = 0 polls.
  virtual std::optional<Message> recv(int source, int tag, std::chrono::milliseconds wait) = 0;
  // recv with timeout(); CommError naming `what`, the peer and the tag when nothing arrives.
  Message recv_or_throw(int source, int tag, const std::string& what);
  // Waits until every send() of this rank has been delivered to the transport (up to timeout()).
  virtual void flush() = 0;

  // Ends every rank of the run at once (MPI_Abort): for a lost peer, after which no collective
  // can complete. The local and threads backends throw CommError instead.
  [[noreturn]] virtual void abort(int exit_code, const std::string& why) = 0;

  // "rank 1 (host n3)": the prefix of every CommError message.
  std::string where() const;

 protected:
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
};

// ---- backends

// The single-rank communicator.
std::unique_ptr<Communicator> make_local();

// Runs `body(comm)` on `n` ranks, one thread each, all sharing an in-process world; returns when
// all are done. An exception on any rank is rethrown here (the lowest rank's first) after the
// others finish or time out; `timeout` applies to every rank's collectives and receives.
void run_threads(int n, const std::function<void(Communicator&)>& body,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));

// True when this process was started by an MPI launcher (mpirun/mpiexec or srun --mpi=pmix:
// OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK, ...).
bool launched_by_mpi();
// Whether this build has the MPI / NCCL backends.
bool built_with_mpi();
bool built_with_nccl();
// CUDA devices this process sees (0 when built without NCCL or when there are none).
int visible_cuda_devices();

// MPI_COMM_WORLD (MPI_Init_thread with MPI_THREAD_FUNNELED on first use; MPI_Finalize at exit).
// CommError "built without MPI" when the build has none.
std::unique_ptr<Communicator> make_mpi();
// NCCL for the float64 reductions on device buffers, MPI for the rest. Binds GPU
// topology().gpu, refuses two ranks on one GPU, rank 0 makes the NCCL unique id and MPI
// broadcasts it. CommError "built without NCCL" / "no CUDA device" otherwise.
std::unique_ptr<Communicator> make_nccl();

// What `--comm auto|local|mpi|nccl` picks: auto = mpi when launched_by_mpi(), else local.
// UsageError for an unknown name. Warns on stderr when Slurm started several tasks but the
// world has one rank (srun without --mpi=pmix).
std::unique_ptr<Communicator> make_communicator(const std::string& name);

}  // namespace rankprune::cluster
