// The mpi backend: one rank per process, host buffers, MPI_COMM_WORLD (duplicated, so that
// several communicators never see each other's messages).
//
// No call waits forever. Every MPI operation that could block on a peer is started in its
// non-blocking form (MPI_Ibarrier, MPI_Iallreduce, MPI_Ibcast, MPI_Iallgather(v), MPI_Igatherv,
// MPI_Isend, MPI_Improbe + MPI_Imrecv) and polled with MPI_Test and a short backoff until
// timeout(); then CommError names the operation and the bytes. MPI needs the buffers of an
// operation until it completes, even one we gave up on (a late peer may still join it), so every
// operation runs on buffers the communicator owns (`Inflight`): a timed-out one is parked in a
// process-wide list, still alive, and reaped on later calls. Cost: one copy of the payload, small
// beside the transfer; large payloads move in 64 MiB chunks so the copy never doubles memory.
//
// MPI_Finalize runs at process exit when we initialised MPI and nobody called abort(). An
// operation still incomplete by then (a peer never joined a collective, or never received a
// send) would make MPI_Finalize hang, so then it is skipped with one line on stderr and the
// launcher reports the rank as failed.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "cluster/communicator.h"
#include "cluster/internal.h"
#include "common/error.h"

#ifdef RANKPRUNE_HAVE_MPI
#include <mpi.h>
#endif

namespace rankprune::cluster {

#ifndef RANKPRUNE_HAVE_MPI

std::unique_ptr<Communicator> make_mpi() {
  throw CommError("rankprune was built without MPI (install libopenmpi-dev and reconfigure)");
}

#else

namespace {

using detail::Clock;

// The one MPI error path: "rank 1 (host n3): MPI_Ibcast failed: <MPI_Error_string>".
[[noreturn]] void mpi_fail(const std::string& who, const char* call, int rc) {
  std::string name(call, std::strcspn(call, "("));
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
    std::snprintf(text, sizeof text, "code %d", rc);
  throw CommError(cat(who, ": ", name, " failed: ", text));
}

// `who` is only evaluated on failure.
#define RP_MPI_CHECK(who, call)                                              \
  do {                                                                       \
    const int rp_mpi_rc_ = (call);                                           \
    if (rp_mpi_rc_ != MPI_SUCCESS) mpi_fail((who), #call, rp_mpi_rc_);       \
  } while (0)

// One MPI operation and the buffers it uses until it completes.
struct Inflight {
  MPI_Request req = MPI_REQUEST_NULL;
  std::string bytes, received;            // payload out / in
  std::vector<double> values;             // allreduce chunk
  std::vector<std::uint64_t> sizes;       // size exchange before gatherv / allgatherv
  std::vector<int> counts, displs;        // gatherv / allgatherv layout
  MPI_Comm comm = MPI_COMM_NULL;          // MPI_Comm_idup's result
  std::string what;                       // "send of 8 bytes to rank 2 with tag 5"
  Clock::time_point keep_until;           // at exit: how long it may still complete
};

// Chunk for broadcast / allreduce: 64 MiB, far below MPI's INT_MAX element counts.
constexpr std::size_t kChunkBytes = std::size_t(64) << 20;

struct MpiState {
  bool we_initialised = false;
  bool aborted = false;
  std::thread::id mpi_thread;                       // MPI_THREAD_FUNNELED: the only caller
  std::vector<std::unique_ptr<Inflight>> parked;    // given up on, or left by a dead communicator
};

MpiState& state() {
  static MpiState s;
  return s;
}

// Drops the parked operations that have completed (or failed: nobody waits for them any more).
void reap_parked() {
  auto& parked = state().parked;
  auto finished = [](const std::unique_ptr<Inflight>& op) {
    int flag = 0;
    return MPI_Test(&op->req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag != 0;
  };
  parked.erase(std::remove_if(parked.begin(), parked.end(), finished), parked.end());
}

void finalize_at_exit() {
  MpiState& s = state();
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin || s.aborted || !s.we_initialised) return;
  const auto start = Clock::now();
  detail::Backoff backoff;
  for (;;) {
    reap_parked();
    if (s.parked.empty()) break;
    auto until = start + std::chrono::milliseconds(200);
    for (const auto& op : s.parked) until = std::max(until, op->keep_until);
    if (Clock::now() >= until) {
      std::cerr << "rankprune: " << s.parked.size() << " MPI operation(s) never completed ("
                << s.parked.front()->what << "); exiting without MPI_Finalize, which would hang\n";
      return;
    }
    backoff.pause();
  }
  MPI_Finalize();
}

void ensure_initialised(const std::string& who) {
  MpiState& s = state();  // constructed before atexit() below, so destroyed after it runs
  int init = 0, fin = 0;
  RP_MPI_CHECK(who, MPI_Initialized(&init));
  RP_MPI_CHECK(who, MPI_Finalized(&fin));
  if (fin) throw CommError(cat(who, ": MPI was already finalised; no new MPI communicator"));
  if (!init) {
    int provided = 0;
    RP_MPI_CHECK(who, MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    s.we_initialised = true;
    s.mpi_thread = std::this_thread::get_id();
    std::atexit(finalize_at_exit);
  } else if (s.mpi_thread == std::thread::id()) {
    s.mpi_thread = std::this_thread::get_id();  // someone else initialised MPI; trust them
  }
  RP_MPI_CHECK(who, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    topo_.host = detail::host_name();
    const std::string early = cat("rank ? (host ", topo_.host, ")");
    ensure_initialised(early);
    RP_MPI_CHECK(early, MPI_Comm_rank(MPI_COMM_WORLD, &topo_.rank));
    RP_MPI_CHECK(where(), MPI_Comm_size(MPI_COMM_WORLD, &topo_.size));

    // Our own communicator. MPI_Comm_idup completes only once every rank has joined, so the
    // blocking split below cannot wait for a rank that is not there.
    auto op = std::make_unique<Inflight>();
    RP_MPI_CHECK(where(), MPI_Comm_idup(MPI_COMM_WORLD, &op->comm, &op->req));
    wait(op, "MPI_Comm_idup of MPI_COMM_WORLD (start-up: every rank must create the communicator)");
    comm_ = op->comm;
    RP_MPI_CHECK(where(), MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));

    MPI_Comm local = MPI_COMM_NULL;
    RP_MPI_CHECK(where(), MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, topo_.rank,
                                              MPI_INFO_NULL, &local));
    RP_MPI_CHECK(where(), MPI_Comm_rank(local, &topo_.local_rank));
    RP_MPI_CHECK(where(), MPI_Comm_size(local, &topo_.local_size));
    RP_MPI_CHECK(where(), MPI_Comm_free(&local));

    int* ub = nullptr;
    int flag = 0;
    RP_MPI_CHECK(where(), MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag));
    tag_ub_ = flag && ub ? *ub : 32767;  // the standard's guaranteed minimum
  }

  ~MpiCommunicator() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin) return;
    // Sends still in flight keep their buffers until they complete; exit waits up to timeout().
    for (auto& op : pending_) {
      op->keep_until = Clock::now() + timeout();
      state().parked.push_back(std::move(op));
    }
    MPI_Comm_free(&comm_);  // deferred by MPI until the operations on it complete
  }

  const Topology& topology() const override { return topo_; }
  std::string backend() const override { return "mpi"; }

  void barrier() override {
    reap();
    auto op = std::make_unique<Inflight>();
    RP_MPI_CHECK(where(), MPI_Ibarrier(comm_, &op->req));
    wait(op, "barrier");
  }

  void allreduce_sum(double* data, std::size_t n) override {
    reap();
    const std::string what = cat("allreduce_sum of ", n * sizeof(double), " bytes");
    const std::size_t chunk = kChunkBytes / sizeof(double);
    for (std::size_t off = 0; off < n; off += chunk) {
      const std::size_t c = std::min(chunk, n - off);
      auto op = std::make_unique<Inflight>();
      op->values.assign(data + off, data + off + c);
      RP_MPI_CHECK(where(), MPI_Iallreduce(MPI_IN_PLACE, op->values.data(), static_cast<int>(c),
                                           MPI_DOUBLE, MPI_SUM, comm_, &op->req));
      wait(op, what);
      std::copy(op->values.begin(), op->values.end(), data + off);
    }
  }

  void broadcast(void* data, std::size_t bytes, int root) override {
    reap();
    check_rank(root, "broadcast root");
    const std::string what = cat("broadcast of ", bytes, " bytes from rank ", root);
    char* p = static_cast<char*>(data);
    for (std::size_t off = 0; off < bytes; off += kChunkBytes) {
      const std::size_t c = std::min(kChunkBytes, bytes - off);
      auto op = std::make_unique<Inflight>();
      if (rank() == root) op->bytes.assign(p + off, c); else op->bytes.resize(c);
      RP_MPI_CHECK(where(), MPI_Ibcast(&op->bytes[0], static_cast<int>(c), MPI_BYTE, root, comm_,
                                       &op->req));
      wait(op, what);
      if (rank() != root) std::memcpy(p + off, op->bytes.data(), c);
    }
  }

  std::vector<std::string> gatherv(const std::string& mine, int root) override {
    reap();
    check_rank(root, "gatherv root");
    const std::string what = cat("gatherv to rank ", root);
    auto op = layout(mine, what, rank() == root);
    RP_MPI_CHECK(where(), MPI_Igatherv(op->bytes.data(), static_cast<int>(op->bytes.size()),
                                       MPI_BYTE, &op->received[0], op->counts.data(),
                                       op->displs.data(), MPI_BYTE, root, comm_, &op->req));
    wait(op, what);
    if (rank() != root) return {};
    return split(*op);
  }

  std::vector<std::string> allgatherv(const std::string& mine) override {
    reap();
    auto op = layout(mine, "allgatherv", true);
    RP_MPI_CHECK(where(), MPI_Iallgatherv(op->bytes.data(), static_cast<int>(op->bytes.size()),
                                          MPI_BYTE, &op->received[0], op->counts.data(),
                                          op->displs.data(), MPI_BYTE, comm_, &op->req));
    wait(op, "allgatherv");
    return split(*op);
  }

  void send(int dest, int tag, std::string bytes) override {
    reap();
    check_rank(dest, "send destination");
    RP_ASSERT(tag >= 0 && tag <= tag_ub_, where(), ": send tag ", tag, " is outside [0, ",
              tag_ub_, "] (MPI_TAG_UB)");
    auto op = std::make_unique<Inflight>();
    op->what = cat("send of ", bytes.size(), " bytes to rank ", dest, " with tag ", tag);
    if (bytes.size() > static_cast<std::size_t>(INT_MAX))
      throw CommError(cat(where(), ": ", op->what, ": over MPI's limit of ", INT_MAX,
                          " bytes per message; send it in parts"));
    op->bytes = std::move(bytes);
    RP_MPI_CHECK(where(), MPI_Isend(op->bytes.data(), static_cast<int>(op->bytes.size()), MPI_BYTE,
                                    dest, tag, comm_, &op->req));
    pending_.push_back(std::move(op));
  }

  std::optional<Message> recv(int source, int tag, std::chrono::milliseconds wait_for) override {
    reap();
    if (source != kAnySource) check_rank(source, "recv source");
    const auto deadline = Clock::now() + wait_for;
    detail::Backoff backoff;
    for (;;) {
      int flag = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status status;
      RP_MPI_CHECK(where(), MPI_Improbe(source == kAnySource ? MPI_ANY_SOURCE : source,
                                        tag == kAnyTag ? MPI_ANY_TAG : tag, comm_, &flag, &msg,
                                        &status));
      if (flag) {
        int count = 0;
        RP_MPI_CHECK(where(), MPI_Get_count(&status, MPI_BYTE, &count));
        auto op = std::make_unique<Inflight>();
        op->received.resize(static_cast<std::size_t>(count));
        RP_MPI_CHECK(where(), MPI_Imrecv(&op->received[0], count, MPI_BYTE, &msg, &op->req));
        // Matched: the bytes are on their way, so finishing gets the full timeout().
        wait(op, cat("recv of ", count, " bytes from rank ", status.MPI_SOURCE, " with tag ",
                     status.MPI_TAG));
        return Message{status.MPI_SOURCE, status.MPI_TAG, std::move(op->received)};
      }
      if (Clock::now() >= deadline) return std::nullopt;
      backoff.pause();
    }
  }

  void flush() override {
    const auto deadline = Clock::now() + timeout();
    detail::Backoff backoff;
    for (;;) {
      reap();
      if (pending_.empty()) return;
      if (Clock::now() >= deadline) {
        std::size_t bytes = 0;
        for (const auto& op : pending_) bytes += op->bytes.size();
        throw CommError(cat(where(), ": flush: ", pending_.size(), " send(s) of ", bytes,
                            " bytes in all (first: ", pending_.front()->what,
                            ") not delivered after ", detail::describe(timeout()),
                            "; a peer may have died or be stuck"));
      }
      backoff.pause();
    }
  }

  [[noreturn]] void abort(int exit_code, const std::string& why) override {
    std::cerr << where() << ": aborting the whole run (exit code " << exit_code << "): " << why
              << std::endl;
    state().aborted = true;
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; in case an implementation does
  }

 private:
  // Completes `op` within timeout(), or parks it (buffers alive) and throws.
  void wait(std::unique_ptr<Inflight>& op, const std::string& what) {
    const auto deadline = Clock::now() + timeout();
    detail::Backoff backoff;
    for (;;) {
      int flag = 0;
      RP_MPI_CHECK(cat(where(), ": ", what), MPI_Test(&op->req, &flag, MPI_STATUS_IGNORE));
      if (flag) return;
      if (Clock::now() >= deadline) {
        op->what = what;
        op->keep_until = Clock::now();
        state().parked.push_back(std::move(op));
        throw CommError(cat(where(), ": ", what, " timed out after ", detail::describe(timeout()),
                            "; a peer may have died or be stuck"));
      }
      backoff.pause();
    }
  }

  // Completed sends leave; a failed one is reported here, on the next call.
  void reap() {
    RP_ASSERT(state().mpi_thread == std::this_thread::get_id(), where(),
              ": MPI is initialised MPI_THREAD_FUNNELED; call the communicator from the thread "
              "that created the first one");
    for (auto it = pending_.begin(); it != pending_.end();) {
      int flag = 0;
      RP_MPI_CHECK(cat(where(), ": ", (*it)->what),
                   MPI_Test(&(*it)->req, &flag, MPI_STATUS_IGNORE));
      it = flag ? pending_.erase(it) : it + 1;
    }
    if (!state().parked.empty()) reap_parked();
  }

  // Every rank's size (so every rank can refuse an oversized gather alike), then counts and
  // displacements in bytes, and the receive buffer where this rank `receives`.
  std::unique_ptr<Inflight> layout(const std::string& mine, const std::string& what,
                                   bool receives) {
    auto sizes = std::make_unique<Inflight>();
    sizes->sizes.assign(static_cast<std::size_t>(size()), 0);
    std::uint64_t own = mine.size();
    RP_MPI_CHECK(where(), MPI_Iallgather(&own, 1, MPI_UINT64_T, sizes->sizes.data(), 1,
                                         MPI_UINT64_T, comm_, &sizes->req));
    wait(sizes, cat(what, " (exchanging sizes)"));
    std::uint64_t total = 0;
    for (std::uint64_t s : sizes->sizes) total += s;
    if (total > static_cast<std::uint64_t>(INT_MAX))
      throw CommError(cat(where(), ": ", what, " of ", total, " bytes in all: over MPI's limit of ",
                          INT_MAX, " bytes"));
    auto op = std::make_unique<Inflight>();
    op->bytes = mine;
    op->counts.resize(sizes->sizes.size());
    op->displs.resize(sizes->sizes.size());
    int at = 0;
    for (std::size_t r = 0; r < sizes->sizes.size(); ++r) {
      op->counts[r] = static_cast<int>(sizes->sizes[r]);
      op->displs[r] = at;
      at += op->counts[r];
    }
    if (receives) op->received.resize(total);
    return op;
  }

  static std::vector<std::string> split(const Inflight& op) {
    std::vector<std::string> all(op.counts.size());
    for (std::size_t r = 0; r < all.size(); ++r)
      all[r] = op.received.substr(static_cast<std::size_t>(op.displs[r]),
                                  static_cast<std::size_t>(op.counts[r]));
    return all;
  }

  void check_rank(int r, const char* what) const {
    if (r < 0 || r >= size())
      throw CommError(cat(where(), ": ", what, " ", r, " does not exist (", size(), " ranks)"));
  }

  Topology topo_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int tag_ub_ = 32767;
  std::vector<std::unique_ptr<Inflight>> pending_;  // sends not yet complete
};

}  // namespace

std::unique_ptr<Communicator> make_mpi() { return std::make_unique<MpiCommunicator>(); }

#endif  // RANKPRUNE_HAVE_MPI

}  // namespace rankprune::cluster
