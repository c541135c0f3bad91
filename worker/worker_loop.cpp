#include "worker/worker_loop.h"

#include <chrono>
#include <deque>

#include "common/error.h"
#include "worker/protocol.h"

namespace rankprune {

namespace {

using Clock = std::chrono::steady_clock;

class WorkerLoop {
 public:
  WorkerLoop(cluster::Communicator& comm, Executor& ex, const std::atomic<int>* stop_signal)
      : comm_(comm), ex_(ex), signal_(stop_signal) {
    interval_ = std::max<Clock::duration>(comm.timeout() / 4, std::chrono::milliseconds(1));
    heard_ = Clock::now();
  }

  void run() {
    for (;;) {
      drain(queue_.empty() && !stopping_ ? std::chrono::milliseconds(50) : std::chrono::milliseconds(0));
      forward_signal();
      if (!queue_.empty()) {
        const proto::WorkItem item = queue_.front();
        queue_.pop_front();
        execute(item);
        continue;
      }
      if (stopping_) return;
      if (Clock::now() - heard_ > comm_.timeout())
        throw cluster::CommError(cat(comm_.where(), ": no word from rank 0 (the coordinator) for ",
                                     std::chrono::duration<double>(comm_.timeout()).count(),
                                     " s; it may have died (--comm-timeout raises the limit)"));
    }
  }

 private:
  void execute(const proto::WorkItem& item) {
    std::string reply;
    try {
      reply = proto::encode_result(ex_.run(item, [&] { between_batches(); }));
    } catch (const InputError& e) {
      reply = proto::encode_error(item.id, "input", e.what());
    } catch (const UsageError& e) {
      reply = proto::encode_error(item.id, "input", e.what());
    } catch (const cluster::CommError&) {
      throw;
    } catch (const std::exception& e) {
      reply = proto::encode_error(item.id, "internal", e.what());
    }
    send(std::move(reply));
  }

  void between_batches() {
    drain(std::chrono::milliseconds(0));
    forward_signal();
    if (Clock::now() - sent_ >= interval_) send(proto::encode_simple("alive"));
  }

  void send(std::string bytes) {
    comm_.send(0, proto::kToCoordinator, std::move(bytes));
    sent_ = Clock::now();
  }

  void forward_signal() {
    if (signal_ && *signal_ != 0 && !signal_sent_) {
      send(proto::encode_signal(*signal_));
      signal_sent_ = true;
    }
  }

  // Takes every waiting message from rank 0 (waiting up to `wait` for the first).
  void drain(std::chrono::milliseconds wait) {
    while (auto m = comm_.recv(0, proto::kToWorker, wait)) {
      wait = std::chrono::milliseconds(0);
      heard_ = Clock::now();
      const auto e = proto::decode(m->bytes);
      if (e.type == "work") {
        queue_.push_back(proto::work_of(e));
      } else if (e.type == "stop") {
        stopping_ = true;
      } else {
        RP_ASSERT(e.type == "alive", "unexpected message '", e.type, "' from rank 0");
      }
    }
  }

  cluster::Communicator& comm_;
  Executor& ex_;
  const std::atomic<int>* signal_;
  std::deque<proto::WorkItem> queue_;
  bool stopping_ = false, signal_sent_ = false;
  Clock::duration interval_{};
  Clock::time_point heard_{}, sent_{};
};

}  // namespace

void run_worker(cluster::Communicator& comm, Executor& executor, const std::atomic<int>* stop_signal) {
  WorkerLoop(comm, executor, stop_signal).run();
}

}  // namespace rankprune
