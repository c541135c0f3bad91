// The nccl backend: allreduce_sum on device buffers through NCCL, everything else through the
// mpi backend it wraps (barrier, broadcast, gathers and point-to-point move small host data).
//
// Set-up: one GPU per rank (topology().gpu = local_rank % visible devices); ranks on one host
// that would share a GPU (same PCI bus id, found by an allgather, so every rank refuses alike)
// are refused; rank 0 makes the NCCL unique id and MPI broadcasts it.
//
// No call waits forever: the NCCL communicator is non-blocking (config.blocking = 0), so its
// creation, the all-reduce and the finalisation are polled (ncclCommGetAsyncError,
// cudaStreamQuery) up to timeout(). On a timeout or an asynchronous NCCL error the communicator
// is aborted (ncclCommAbort, which also stops the kernels waiting for a dead peer) and CommError
// names the operation; later all-reduces on it throw.
#include <cstdlib>
#include <cstring>

#include "cluster/communicator.h"
#include "cluster/internal.h"
#include "common/error.h"

#ifdef RANKPRUNE_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace rankprune::cluster {

#ifndef RANKPRUNE_HAVE_NCCL

int visible_cuda_devices() { return 0; }

std::unique_ptr<Communicator> make_nccl() {
  throw CommError("rankprune was built without NCCL (needs CUDA with nccl.h; see "
                  "cmake/Dependencies.cmake); use --comm mpi");
}

#else

namespace {

using detail::Clock;

[[noreturn]] void cuda_fail(const std::string& who, const char* call, cudaError_t e) {
  throw CommError(cat(who, ": ", std::string(call, std::strcspn(call, "(")), " failed: ",
                      cudaGetErrorString(e)));
}

[[noreturn]] void nccl_fail(const std::string& who, const char* call, ncclResult_t r) {
  const char* last = ncclGetLastError(nullptr);
  throw CommError(cat(who, ": ", std::string(call, std::strcspn(call, "(")), " failed: ",
                      ncclGetErrorString(r), last && *last ? cat(" (", last, ")") : std::string()));
}

// `who` is only evaluated on failure.
#define RP_CUDA_CHECK(who, call)                                    \
  do {                                                              \
    const cudaError_t rp_cuda_rc_ = (call);                         \
    if (rp_cuda_rc_ != cudaSuccess) cuda_fail((who), #call, rp_cuda_rc_); \
  } while (0)

// The communicators here are non-blocking: ncclInProgress is a normal answer, and completion
// is polled with ncclCommGetAsyncError.
#define RP_NCCL_CHECK(who, call)                                                \
  do {                                                                          \
    const ncclResult_t rp_nccl_rc_ = (call);                                    \
    if (rp_nccl_rc_ != ncclSuccess && rp_nccl_rc_ != ncclInProgress)            \
      nccl_fail((who), #call, rp_nccl_rc_);                                     \
  } while (0)

// "rank 3 (host n1)" before any communicator exists, from the launcher's environment.
std::string early_where() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (auto r = detail::env_int(v)) return cat("rank ", *r, " (host ", detail::host_name(), ")");
  return cat("rank ? (host ", detail::host_name(), ")");
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(int devices) : mpi_(make_mpi()) {
    topo_ = mpi_->topology();
    timeout_ = mpi_->timeout();
    topo_.gpu = topo_.local_rank % devices;
    try {
      RP_CUDA_CHECK(where(), cudaSetDevice(topo_.gpu));
      refuse_shared_gpus(devices);
      ncclUniqueId id;
      std::memset(&id, 0, sizeof id);
      if (rank() == 0) RP_NCCL_CHECK(where(), ncclGetUniqueId(&id));
      mpi().broadcast(&id, sizeof id, 0);
      // A blocking stream: ordered after work on the legacy default stream.
      RP_CUDA_CHECK(where(), cudaStreamCreate(&stream_));
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      RP_NCCL_CHECK(where(), ncclCommInitRankConfig(&nccl_, size(), id, rank(), &config));
      settle("ncclCommInitRank (start-up: every rank must create the NCCL communicator)");
    } catch (...) {
      release();
      throw;
    }
  }

  ~NcclCommunicator() override {
    if (nccl_ != nullptr) {
      // ncclCommFinalize waits for the peers: polled, and aborted if they never come.
      bool ok = cudaSetDevice(topo_.gpu) == cudaSuccess;
      if (ok) {
        const ncclResult_t r = ncclCommFinalize(nccl_);
        ok = r == ncclSuccess || r == ncclInProgress;
      }
      const auto deadline = Clock::now() + timeout();
      detail::Backoff backoff;
      ncclResult_t state = ncclInProgress;
      while (ok) {
        ok = ncclCommGetAsyncError(nccl_, &state) == ncclSuccess && Clock::now() < deadline;
        if (state != ncclInProgress) break;
        backoff.pause();
      }
      if (ok && state == ncclSuccess) ncclCommDestroy(nccl_); else ncclCommAbort(nccl_);
      nccl_ = nullptr;
    }
    release();
  }

  const Topology& topology() const override { return topo_; }
  std::string backend() const override { return "nccl"; }

  // `data`: n float64 on this rank's GPU (device or managed memory), ready: written by
  // finished work or by work on the legacy default stream. On return the sums are in `data`.
  void allreduce_sum(double* data, std::size_t n) override {
    const std::string what = cat("allreduce_sum of ", n * sizeof(double), " bytes (NCCL)");
    if (!dead_.empty())
      throw CommError(cat(where(), ": ", what, ": the NCCL communicator was aborted after an "
                          "earlier failure (", dead_, ")"));
    if (n == 0) return;
    cudaPointerAttributes attr;
    RP_CUDA_CHECK(where(), cudaPointerGetAttributes(&attr, data));
    RP_ASSERT(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, where(),
              ": the nccl backend's allreduce_sum takes device memory; got a host pointer");
    RP_CUDA_CHECK(where(), cudaSetDevice(topo_.gpu));
    RP_NCCL_CHECK(where(), ncclAllReduce(data, data, n, ncclFloat64, ncclSum, nccl_, stream_));
    settle(what);
    const auto deadline = Clock::now() + timeout();
    detail::Backoff backoff;
    for (;;) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) {
        give_up(what);
        cuda_fail(cat(where(), ": ", what), "cudaStreamQuery", e);
      }
      check_async(what);
      if (Clock::now() >= deadline) {
        give_up(what);
        throw CommError(cat(where(), ": ", what, " timed out after ", detail::describe(timeout()),
                            "; a peer may have died or be stuck (NCCL communicator aborted)"));
      }
      backoff.pause();
    }
  }

  void barrier() override { mpi().barrier(); }
  void broadcast(void* data, std::size_t bytes, int root) override {
    mpi().broadcast(data, bytes, root);
  }
  std::vector<std::string> gatherv(const std::string& mine, int root) override {
    return mpi().gatherv(mine, root);
  }
  std::vector<std::string> allgatherv(const std::string& mine) override {
    return mpi().allgatherv(mine);
  }
  void send(int dest, int tag, std::string bytes) override {
    mpi().send(dest, tag, std::move(bytes));
  }
  std::optional<Message> recv(int source, int tag, std::chrono::milliseconds wait) override {
    return mpi().recv(source, tag, wait);
  }
  void flush() override { mpi().flush(); }

  [[noreturn]] void abort(int exit_code, const std::string& why) override {
    if (nccl_ != nullptr) ncclCommAbort(nccl_);  // frees kernels spinning on a dead peer
    nccl_ = nullptr;
    mpi_->abort(exit_code, why);
    std::_Exit(exit_code);  // not reached: the mpi backend's abort does not return
  }

 private:
  // The wrapped communicator, with this one's timeout (set_timeout is not virtual).
  Communicator& mpi() {
    mpi_->set_timeout(timeout());
    return *mpi_;
  }

  void refuse_shared_gpus(int devices) {
    char bus[64] = {};
    RP_CUDA_CHECK(where(), cudaDeviceGetPCIBusId(bus, sizeof bus - 1, topo_.gpu));
    const std::vector<std::string> all = mpi().allgatherv(cat(topo_.host, " ", bus));
    for (int a = 0; a < size(); ++a)
      for (int b = a + 1; b < size(); ++b)
        if (all[a] == all[b])
          throw CommError(cat(where(), ": ranks ", a, " and ", b, " (host+GPU ", all[a],
                              ") would share one GPU: ", topo_.local_size, " ranks on host ",
                              topo_.host, " but ", devices, " visible device(s); start at most "
                              "one rank per GPU"));
  }

  // Waits until the communicator is no longer ncclInProgress (non-blocking mode).
  void settle(const std::string& what) {
    const auto deadline = Clock::now() + timeout();
    detail::Backoff backoff;
    for (;;) {
      ncclResult_t state = ncclSuccess;
      RP_NCCL_CHECK(cat(where(), ": ", what), ncclCommGetAsyncError(nccl_, &state));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        give_up(what);
        nccl_fail(cat(where(), ": ", what), "ncclCommGetAsyncError", state);
      }
      if (Clock::now() >= deadline) {
        give_up(what);
        throw CommError(cat(where(), ": ", what, " timed out after ", detail::describe(timeout()),
                            "; a peer may have died or be stuck (NCCL communicator aborted)"));
      }
      backoff.pause();
    }
  }

  void check_async(const std::string& what) {
    ncclResult_t state = ncclSuccess;
    RP_NCCL_CHECK(cat(where(), ": ", what), ncclCommGetAsyncError(nccl_, &state));
    if (state != ncclSuccess && state != ncclInProgress) {
      give_up(what);
      nccl_fail(cat(where(), ": ", what), "ncclCommGetAsyncError", state);
    }
  }

  void give_up(const std::string& what) {
    if (nccl_ != nullptr) ncclCommAbort(nccl_);
    nccl_ = nullptr;
    dead_ = what;
  }

  void release() {
    if (nccl_ != nullptr) ncclCommAbort(nccl_);
    nccl_ = nullptr;
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  std::unique_ptr<Communicator> mpi_;
  Topology topo_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::string dead_;  // why the NCCL communicator was aborted; empty while usable
};

}  // namespace

int visible_cuda_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it
    return 0;
  }
  return n;
}

std::unique_ptr<Communicator> make_nccl() {
  // Before MPI starts, so a CPU-only node fails fast and alone.
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    cudaGetLastError();
    throw CommError(cat(early_where(), ": no CUDA device visible (cudaGetDeviceCount: ",
                        e == cudaSuccess ? std::string("0 devices") : cudaGetErrorString(e),
                        "); the nccl backend needs one GPU per rank, use --comm mpi on CPU "
                        "nodes"));
  }
  return std::make_unique<NcclCommunicator>(devices);
}

#endif  // RANKPRUNE_HAVE_NCCL

}  // namespace rankprune::cluster
