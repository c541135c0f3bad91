// The threads backend: N ranks as threads of one process, for unit tests of distributed logic.
//
// Every rank has a mailbox (one world mutex, one condition variable per rank): send() appends
// to the destination's mailbox and never blocks; recv() takes the first matching message, so the
// order per (source, tag) is the order sent. Collectives are built on the same mailboxes but on a
// separate channel (the `collective` flag, matched by the collective's sequence number on each
// rank), so user tags can never match them. Reductions run on rank 0 in rank order 0..n-1 and
// rank 0's bytes go back to everyone, so every rank gets the bitwise same result.
//
// Failure handling: a rank whose body throws marks the world failed; every wait on another rank
// then throws CommError "rank r failed: ..." at once instead of sitting out its timeout. A
// collective waiting on a rank that has already returned fails at once too (it can never send).
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "cluster/communicator.h"
#include "cluster/internal.h"
#include "common/error.h"

namespace rankprune::cluster {

namespace {

using detail::Clock;

struct Envelope {
  int source = 0;
  int tag = 0;               // user messages
  bool collective = false;
  std::uint64_t seq = 0;     // collectives: the sequence number of the call on the sender
  const char* op = nullptr;  // collectives: the name, to report calls in a different order
  std::string bytes;
};

struct World {
  explicit World(int n) : size(n), boxes(n), wake(n), done(n, 0), entered(n, 0) {}

  void post(int dest, Envelope e) {
    std::lock_guard<std::mutex> lock(mu);
    boxes[dest].push_back(std::move(e));
    wake[dest].notify_all();
  }
  void finish(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    done[rank] = 1;
    for (auto& cv : wake) cv.notify_all();
  }
  void fail(int rank, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    if (failed_rank < 0) {
      failed_rank = rank;
      failed_what = what;
    }
    for (auto& cv : wake) cv.notify_all();
  }

  const int size;
  std::mutex mu;
  std::vector<std::deque<Envelope>> boxes;  // by destination rank
  std::vector<std::condition_variable> wake;
  std::vector<char> done;                   // the rank's body has returned
  std::vector<std::uint64_t> entered;       // collectives the rank has called so far
  int failed_rank = -1;                     // the first rank whose body threw
  std::string failed_what;
};

// A CommError caused by another rank's failure; run_threads reports the original instead.
class InducedError : public CommError {
 public:
  using CommError::CommError;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(World& world, int rank, std::chrono::milliseconds timeout) : world_(world) {
    topo_.rank = rank;
    topo_.size = world.size;
    topo_.local_rank = rank;
    topo_.local_size = world.size;
    topo_.host = detail::host_name();
    timeout_ = timeout;
  }

  const Topology& topology() const override { return topo_; }
  std::string backend() const override { return "threads"; }

  void barrier() override {
    const std::uint64_t seq = begin();
    const std::string what = "barrier";
    if (rank() == 0) {
      for (int r = 1; r < size(); ++r) take(r, seq, "barrier", what);
      for (int r = 1; r < size(); ++r) post(r, seq, "barrier", {});
    } else {
      post(0, seq, "barrier", {});
      take(0, seq, "barrier", what);
    }
  }

  void allreduce_sum(double* data, std::size_t n) override {
    const std::uint64_t seq = begin();
    const std::size_t bytes = n * sizeof(double);
    const std::string what = cat("allreduce_sum of ", bytes, " bytes");
    if (rank() == 0) {
      // Left fold in rank order: ((x0 + x1) + x2) + ...
      std::vector<double> peer(n);
      for (int r = 1; r < size(); ++r) {
        std::string b = take(r, seq, "allreduce_sum", what);
        check_size(b, bytes, r, what);
        if (bytes > 0) std::memcpy(peer.data(), b.data(), bytes);
        for (std::size_t i = 0; i < n; ++i) data[i] += peer[i];
      }
      std::string sum(reinterpret_cast<const char*>(data), bytes);
      for (int r = 1; r < size(); ++r) post(r, seq, "allreduce_sum", sum);
    } else {
      post(0, seq, "allreduce_sum", std::string(reinterpret_cast<const char*>(data), bytes));
      std::string sum = take(0, seq, "allreduce_sum", what);
      check_size(sum, bytes, 0, what);
      if (bytes > 0) std::memcpy(data, sum.data(), bytes);
    }
  }

  void broadcast(void* data, std::size_t bytes, int root) override {
    check_rank(root, "broadcast root");
    const std::uint64_t seq = begin();
    const std::string what = cat("broadcast of ", bytes, " bytes from rank ", root);
    if (rank() == root) {
      std::string b(static_cast<const char*>(data), bytes);
      for (int r = 0; r < size(); ++r)
        if (r != root) post(r, seq, "broadcast", b);
    } else {
      std::string b = take(root, seq, "broadcast", what);
      check_size(b, bytes, root, what);
      if (bytes > 0) std::memcpy(data, b.data(), bytes);
    }
  }

  std::vector<std::string> gatherv(const std::string& mine, int root) override {
    check_rank(root, "gatherv root");
    const std::uint64_t seq = begin();
    if (rank() != root) {
      post(root, seq, "gatherv", mine);
      return {};
    }
    const std::string what = cat("gatherv to rank ", root);
    std::vector<std::string> all(size());
    all[root] = mine;
    for (int r = 0; r < size(); ++r)
      if (r != root) all[r] = take(r, seq, "gatherv", what);
    return all;
  }

  std::vector<std::string> allgatherv(const std::string& mine) override {
    const std::uint64_t seq = begin();
    for (int r = 0; r < size(); ++r)
      if (r != rank()) post(r, seq, "allgatherv", mine);
    std::vector<std::string> all(size());
    all[rank()] = mine;
    for (int r = 0; r < size(); ++r)
      if (r != rank()) all[r] = take(r, seq, "allgatherv", "allgatherv");
    return all;
  }

  void send(int dest, int tag, std::string bytes) override {
    check_rank(dest, "send destination");
    RP_ASSERT(tag >= 0, where(), ": send tag ", tag, " is negative (user tags are >= 0)");
    world_.post(dest, Envelope{rank(), tag, false, 0, nullptr, std::move(bytes)});
  }

  std::optional<Message> recv(int source, int tag, std::chrono::milliseconds wait) override {
    if (source != kAnySource) check_rank(source, "recv source");
    const auto deadline = Clock::now() + wait;
    std::unique_lock<std::mutex> lock(world_.mu);
    auto& box = world_.boxes[rank()];
    for (;;) {
      for (auto it = box.begin(); it != box.end(); ++it) {
        if (it->collective) continue;
        if (source != kAnySource && it->source != source) continue;
        if (tag != kAnyTag && it->tag != tag) continue;
        Message m{it->source, it->tag, std::move(it->bytes)};
        box.erase(it);
        return m;
      }
      throw_if_failed("recv");
      if (Clock::now() >= deadline) return std::nullopt;
      world_.wake[rank()].wait_until(lock, deadline);
    }
  }

  void flush() override {}  // send() delivers at once

  [[noreturn]] void abort(int exit_code, const std::string& why) override {
    throw CommError(cat(where(), ": abort (exit code ", exit_code, "): ", why));
  }

 private:
  // The sequence number of the collective this rank now enters.
  std::uint64_t begin() {
    std::lock_guard<std::mutex> lock(world_.mu);
    world_.entered[rank()] = next_seq_ + 1;
    return next_seq_++;
  }

  // ", not yet called by ranks 1, 3": who is missing, for a timeout message. Holds world_.mu.
  std::string missing(std::uint64_t seq) const {
    std::string who;
    int count = 0;
    for (int r = 0; r < size(); ++r)
      if (world_.entered[r] <= seq) who += cat(count++ ? ", " : "", r);
    if (count == 0) return {};
    return cat(", not yet called by rank", count > 1 ? "s " : " ", who);
  }

  void post(int dest, std::uint64_t seq, const char* op, std::string bytes) {
    world_.post(dest, Envelope{rank(), 0, true, seq, op, std::move(bytes)});
  }

  // The collective message `seq` from `source`, within timeout().
  std::string take(int source, std::uint64_t seq, const char* op, const std::string& what) {
    const auto deadline = Clock::now() + timeout();
    std::unique_lock<std::mutex> lock(world_.mu);
    auto& box = world_.boxes[rank()];
    for (;;) {
      for (auto it = box.begin(); it != box.end(); ++it) {
        if (!it->collective || it->source != source || it->seq != seq) continue;
        if (std::strcmp(it->op, op) != 0)
          throw CommError(cat(where(), ": ", op, ": rank ", source, " called ", it->op,
                              " instead as its collective #", seq,
                              "; every rank must call the collectives in the same order"));
        std::string b = std::move(it->bytes);
        box.erase(it);
        return b;
      }
      throw_if_failed(what);
      if (world_.done[source])
        throw CommError(cat(where(), ": ", what, ": rank ", source,
                            " returned without calling it (collectives are called by every "
                            "rank in the same order)"));
      if (Clock::now() >= deadline)
        throw CommError(cat(where(), ": ", what, " timed out after ", detail::describe(timeout()),
                            " waiting for rank ", source, missing(seq),
                            "; a peer may have died or be stuck"));
      world_.wake[rank()].wait_until(lock, deadline);
    }
  }

  // Caller holds world_.mu.
  void throw_if_failed(const std::string& what) const {
    if (world_.failed_rank >= 0 && world_.failed_rank != rank())
      throw InducedError(cat(where(), ": ", what, ": rank ", world_.failed_rank,
                             " failed: ", world_.failed_what));
  }

  void check_rank(int r, const char* what) const {
    if (r < 0 || r >= size())
      throw CommError(cat(where(), ": ", what, " ", r, " does not exist (", size(), " ranks)"));
  }

  void check_size(const std::string& got, std::size_t want, int from,
                  const std::string& what) const {
    if (got.size() != want)
      throw CommError(cat(where(), ": ", what, ": rank ", from, " passed ", got.size(),
                          " bytes; every rank must pass the same size"));
  }

  World& world_;
  Topology topo_;
  std::uint64_t next_seq_ = 0;
};

}  // namespace

void run_threads(int n, const std::function<void(Communicator&)>& body,
                 std::chrono::milliseconds timeout) {
  RP_ASSERT(n >= 1, "run_threads needs at least one rank, got ", n);
  World world(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<char> induced(n, 0);
  auto run_rank = [&](int r) {
    ThreadCommunicator comm(world, r, timeout);
    try {
      body(comm);
    } catch (const InducedError& e) {
      errors[r] = std::current_exception();
      induced[r] = 1;
      world.fail(r, e.what());
    } catch (const std::exception& e) {
      errors[r] = std::current_exception();
      world.fail(r, e.what());
    } catch (...) {
      errors[r] = std::current_exception();
      world.fail(r, "an exception not derived from std::exception");
    }
    world.finish(r);
  };

  std::vector<std::thread> threads;
  threads.reserve(n);
  try {
    for (int r = 0; r < n; ++r) threads.emplace_back(run_rank, r);
  } catch (...) {  // could not start a thread: release the started ones, then report
    world.fail(static_cast<int>(threads.size()), "its thread could not be started");
    for (auto& t : threads) t.join();
    throw;
  }
  for (auto& t : threads) t.join();

  for (int r = 0; r < n; ++r)
    if (errors[r] && !induced[r]) std::rethrow_exception(errors[r]);
  for (int r = 0; r < n; ++r)
    if (errors[r]) std::rethrow_exception(errors[r]);
}

}  // namespace rankprune::cluster
