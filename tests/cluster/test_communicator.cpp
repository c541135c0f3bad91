// The Communicator backends that run in one process: local, and threads (ranks as threads,
// 1 to 8 of them). The mpi backend is exercised by mpi_check under mpirun (label mpi).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "cluster/collectives.h"
#include "cluster/communicator.h"
#include "common/error.h"

namespace rankprune::cluster {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr milliseconds kShort{300};  // the timeout of the tests that expect one

double elapsed_ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// The message of the exception run_threads rethrows, and its elapsed time.
template <typename E>
std::string run_expecting(int n, const std::function<void(Communicator&)>& body,
                          milliseconds timeout, double* ms = nullptr) {
  const auto t0 = Clock::now();
  try {
    run_threads(n, body, timeout);
  } catch (const E& e) {
    if (ms) *ms = elapsed_ms(t0);
    return e.what();
  }
  ADD_FAILURE() << "run_threads(" << n << ") did not throw the expected exception";
  return {};
}

std::string bits(double x) {
  std::uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return std::to_string(u);
}

class Ranks : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(N, Ranks, ::testing::Range(1, 9));

TEST_P(Ranks, TopologyAndBarrier) {
  const int n = GetParam();
  std::atomic<int> arrived{0};
  run_threads(n, [&](Communicator& c) {
    EXPECT_EQ(c.backend(), "threads");
    EXPECT_EQ(c.size(), n);
    EXPECT_EQ(c.topology().local_size, n);
    EXPECT_EQ(c.topology().local_rank, c.rank());
    EXPECT_EQ(c.topology().gpu, -1);
    EXPECT_FALSE(c.topology().host.empty());
    EXPECT_EQ(c.where(), "rank " + std::to_string(c.rank()) + " (host " + c.topology().host + ")");
    for (int round = 1; round <= 3; ++round) {
      ++arrived;
      c.barrier();
      // Nobody leaves barrier `round` before all n ranks arrived at it.
      EXPECT_GE(arrived.load(), round * n) << "rank " << c.rank() << " round " << round;
      c.barrier();
    }
  });
  EXPECT_EQ(arrived.load(), 3 * n);
}

TEST_P(Ranks, AllreduceSumsInRankOrderBitwiseEqualEverywhere) {
  const int n = GetParam();
  // Per rank r: {r+1, 1e16 on rank 1 else 1, 0.1*(r+1)}. Element 1 depends on the order:
  // in rank order every +1 after rank 1's 1e16 rounds away (1e16 + 1 is a tie, to even: 1e16);
  // in any other order some ones add up first and survive.
  auto value = [](int r, int i) {
    if (i == 0) return double(r + 1);
    if (i == 1) return r == 1 ? 1e16 : 1.0;
    return 0.1 * (r + 1);
  };
  std::vector<double> expect(3, 0.0);
  for (int i = 0; i < 3; ++i) {
    expect[i] = value(0, i);
    for (int r = 1; r < n; ++r) expect[i] += value(r, i);  // left fold in rank order
  }
  EXPECT_EQ(expect[0], n * (n + 1) / 2.0);
  EXPECT_EQ(expect[1], n == 1 ? 1.0 : 1e16);
  std::mutex mu;
  std::vector<std::vector<double>> got(n);
  run_threads(n, [&](Communicator& c) {
    std::vector<double> v = {value(c.rank(), 0), value(c.rank(), 1), value(c.rank(), 2)};
    c.allreduce_sum(v.data(), v.size());
    c.allreduce_sum(nullptr, 0);  // empty is fine
    std::lock_guard<std::mutex> lock(mu);
    got[c.rank()] = v;
  });
  for (int r = 0; r < n; ++r)
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(bits(got[r][i]), bits(expect[i])) << "rank " << r << " element " << i << ": "
                                                  << got[r][i] << " vs " << expect[i];
}

TEST_P(Ranks, BroadcastFromEveryRoot) {
  const int n = GetParam();
  run_threads(n, [&](Communicator& c) {
    for (int root = 0; root < n; ++root) {
      std::int64_t x[2] = {c.rank() == root ? 1000 + root : -1, c.rank() == root ? -root : -1};
      c.broadcast(x, sizeof x, root);
      EXPECT_EQ(x[0], 1000 + root) << "rank " << c.rank() << " root " << root;
      EXPECT_EQ(x[1], -root);
      c.broadcast(nullptr, 0, root);
    }
  });
}

TEST_P(Ranks, GathervAndAllgathervInRankOrder) {
  const int n = GetParam();
  auto payload = [](int r) { return std::string(static_cast<std::size_t>(r), char('a' + r)); };
  run_threads(n, [&](Communicator& c) {
    for (int root = 0; root < n; ++root) {
      auto all = c.gatherv(payload(c.rank()), root);
      if (c.rank() != root) {
        EXPECT_TRUE(all.empty());
        continue;
      }
      ASSERT_EQ(static_cast<int>(all.size()), n);
      for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], payload(r)) << "root " << root << " from " << r;
    }
    auto all = c.allgatherv(payload(c.rank()));  // rank 0's is empty
    ASSERT_EQ(static_cast<int>(all.size()), n);
    for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], payload(r));
  });
}

TEST_P(Ranks, TypedHelpers) {
  const int n = GetParam();
  run_threads(n, [&](Communicator& c) {
    std::string s = c.rank() == n - 1 ? std::string("hello\0world", 11) : "stale";
    broadcast_string(c, s, n - 1);
    EXPECT_EQ(s, std::string("hello\0world", 11));
    std::string empty = c.rank() == 0 ? "" : "stale";
    broadcast_string(c, empty, 0);
    EXPECT_EQ(empty, "");
    double d = c.rank() == 0 ? 2.5 : 0.0;
    broadcast_value(c, d, 0);
    EXPECT_EQ(d, 2.5);
    struct Pair { int rank; double x; };
    auto all = allgather_values(c, Pair{c.rank(), c.rank() * 0.5});
    ASSERT_EQ(static_cast<int>(all.size()), n);
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(all[r].rank, r);
      EXPECT_EQ(all[r].x, r * 0.5);
    }
  });
  std::vector<std::int32_t> v = {1, -2, 3};
  EXPECT_EQ(from_bytes<std::int32_t>(to_bytes(v)), v);
  EXPECT_THROW(from_bytes<std::int32_t>(std::string(7, 'x')), CommError);
}

TEST_P(Ranks, RingSendRecvAndSelfSend) {
  const int n = GetParam();
  run_threads(n, [&](Communicator& c) {
    const int next = (c.rank() + 1) % n, prev = (c.rank() + n - 1) % n;
    c.send(next, 7, "from " + std::to_string(c.rank()));
    c.send(c.rank(), 8, "self");
    c.flush();
    Message m = c.recv_or_throw(prev, 7, "ring");
    EXPECT_EQ(m.source, prev);
    EXPECT_EQ(m.tag, 7);
    EXPECT_EQ(m.bytes, "from " + std::to_string(prev));
    Message self = c.recv_or_throw(c.rank(), 8, "self");
    EXPECT_EQ(self.source, c.rank());
    EXPECT_EQ(self.bytes, "self");
    EXPECT_FALSE(c.recv(kAnySource, kAnyTag, milliseconds(0)));  // nothing left
  });
}

TEST(Threads, AnySourceAnyTagAndFifoPerSourceAndTag) {
  run_threads(4, [](Communicator& c) {
    if (c.rank() != 0) {
      // Interleaved tags: 10 messages on tag 1 and 10 on tag 2 from each sender.
      for (int i = 0; i < 10; ++i) {
        c.send(0, 1, std::to_string(c.rank()) + ":a" + std::to_string(i));
        c.send(0, 2, std::to_string(c.rank()) + ":b" + std::to_string(i));
      }
      c.barrier();
      return;
    }
    c.barrier();  // all 60 messages are in rank 0's mailbox now
    // Tag 2 from rank 3 first, in order, although tag 1 messages arrived before them.
    for (int i = 0; i < 10; ++i)
      EXPECT_EQ(c.recv_or_throw(3, 2, "fifo").bytes, "3:b" + std::to_string(i));
    // Any tag from rank 1: the order sent (a0 b0 a1 b1 ...).
    for (int i = 0; i < 20; ++i) {
      Message m = c.recv_or_throw(1, kAnyTag, "any tag");
      EXPECT_EQ(m.source, 1);
      EXPECT_EQ(m.tag, 1 + i % 2);
      EXPECT_EQ(m.bytes, std::string("1:") + (i % 2 ? "b" : "a") + std::to_string(i / 2));
    }
    // Any source on tag 1: per source still in order.
    std::vector<int> next(4, 0);
    for (int i = 0; i < 20; ++i) {
      Message m = c.recv_or_throw(kAnySource, 1, "any source");
      ASSERT_TRUE(m.source == 2 || m.source == 3) << m.source;
      EXPECT_EQ(m.bytes, std::to_string(m.source) + ":a" + std::to_string(next[m.source]++));
    }
    // The rest: rank 2's tag 2 messages, via any/any.
    for (int i = 0; i < 10; ++i) {
      Message m = c.recv_or_throw(kAnySource, kAnyTag, "rest");
      EXPECT_EQ(m.source, 2);
      EXPECT_EQ(m.tag, 2);
      EXPECT_EQ(m.bytes, "2:b" + std::to_string(i));
    }
    EXPECT_FALSE(c.recv(kAnySource, kAnyTag, milliseconds(0)));
  });
}

TEST(Threads, RecvPollsWithZeroWaitAndTimesOutWithNullopt) {
  run_threads(2, [](Communicator& c) {
    if (c.rank() == 1) {
      c.recv_or_throw(0, 5, "go");  // rank 0 polled at least once before this
      c.send(0, 6, std::string(1 << 20, 'x'));  // 1 MiB
      return;
    }
    EXPECT_FALSE(c.recv(1, 6, milliseconds(0)));
    auto t0 = Clock::now();
    EXPECT_FALSE(c.recv(1, 6, milliseconds(50)));
    EXPECT_GE(elapsed_ms(t0), 45.0);
    c.send(1, 5, "");
    int polls = 0;
    std::optional<Message> m;
    while (!(m = c.recv(1, 6, milliseconds(0)))) {
      ASSERT_LT(++polls, 10000000) << "the message never arrived";
      std::this_thread::yield();
    }
    EXPECT_EQ(m->bytes.size(), std::size_t(1) << 20);
    EXPECT_EQ(m->source, 1);
    EXPECT_EQ(m->tag, 6);
  });
}

TEST(Threads, UserTagsNeverMatchCollectives) {
  run_threads(3, [](Communicator& c) {
    c.send((c.rank() + 1) % 3, 0, "user");
    c.barrier();
    double x = 1;
    c.allreduce_sum(&x, 1);
    EXPECT_EQ(x, 3.0);
    auto all = c.allgatherv("g");
    EXPECT_EQ(all.size(), 3u);
    // The only user message is the one sent; collective traffic is not visible to recv.
    Message m = c.recv_or_throw(kAnySource, kAnyTag, "user");
    EXPECT_EQ(m.bytes, "user");
    EXPECT_FALSE(c.recv(kAnySource, kAnyTag, milliseconds(0)));
  });
}

TEST(Threads, RecvOrThrowNamesWhatPeerAndTag) {
  std::string msg = run_expecting<CommError>(2, [](Communicator& c) {
    if (c.rank() == 0) c.recv_or_throw(1, 42, "the block sums");
    else c.recv(0, 1, milliseconds(5000));  // until rank 0 fails
  }, milliseconds(100));
  EXPECT_NE(msg.find("rank 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the block sums"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 1 with tag 42"), std::string::npos) << msg;
}

// A rank that is alive but never joins the collective: the others time out.
TEST(Threads, MissingRankTimesOutEveryCollective) {
  const std::vector<std::string> ops = {"barrier", "allreduce_sum", "broadcast", "gatherv",
                                        "allgatherv"};
  for (const std::string& op : ops) {
    SCOPED_TRACE(op);
    std::atomic<int> induced{0};
    double ms = 0;
    std::string msg = run_expecting<CommError>(3, [&](Communicator& c) {
      if (c.rank() == 1) {
        // Busy elsewhere far longer than the timeout; woken when rank 0 fails.
        try {
          c.recv(0, 99, milliseconds(10000));
        } catch (const CommError& e) {
          // rank 0 or rank 2 (broadcast, allgatherv: both wait for rank 1) fails first
          if (std::string(e.what()).find(" failed: ") != std::string::npos) ++induced;
          throw;
        }
        return;
      }
      double x[3] = {1, 2, 3};
      if (op == "barrier") c.barrier();
      if (op == "allreduce_sum") c.allreduce_sum(x, 3);
      if (op == "broadcast") c.broadcast(x, sizeof x, 1);  // the missing rank is the root
      if (op == "gatherv") c.gatherv("x", 0);
      if (op == "allgatherv") c.allgatherv("x");
    }, kShort, &ms);
    // Ranks 0 and 2 both wait (on rank 1 or on each other) with the same timeout: whichever
    // times out first has the original error, the other's is induced.
    EXPECT_TRUE(msg.rfind("rank 0 (", 0) == 0 || msg.rfind("rank 2 (", 0) == 0) << msg;
    if (op == "gatherv") {
      EXPECT_EQ(msg.rfind("rank 0 (", 0), 0u) << msg;  // only the root waits
    }
    EXPECT_NE(msg.find(op), std::string::npos) << msg;
    EXPECT_NE(msg.find("timed out after 300 ms"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not yet called by rank 1;"), std::string::npos) << msg;
    EXPECT_EQ(induced.load(), 1) << "rank 1's wait was not cut short by the failure";
    EXPECT_GE(ms, 290.0);
    EXPECT_LT(ms, 3000.0) << "the failure did not propagate promptly";
  }
}

TEST(Threads, AllreduceErrorNamesBytes) {
  std::string msg = run_expecting<CommError>(2, [](Communicator& c) {
    double x[4] = {};
    if (c.rank() == 0) c.allreduce_sum(x, 4);
    else c.recv(0, 1, milliseconds(5000));
  }, kShort);
  EXPECT_NE(msg.find("allreduce_sum of 32 bytes timed out"), std::string::npos) << msg;
}

// A rank that returned without the collective can never join it: no need to wait.
TEST(Threads, RankThatReturnedFailsTheCollectiveAtOnce) {
  double ms = 0;
  std::string msg = run_expecting<CommError>(4, [](Communicator& c) {
    if (c.rank() != 2) c.barrier();
  }, milliseconds(10000), &ms);
  EXPECT_NE(msg.find("rank 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("barrier"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 2 returned without calling it"), std::string::npos) << msg;
  EXPECT_LT(ms, 2000.0);
}

TEST(Threads, CollectivesInDifferentOrderAreReported) {
  std::string msg = run_expecting<CommError>(2, [](Communicator& c) {
    double x = 1;
    if (c.rank() == 0) c.barrier(); else c.allreduce_sum(&x, 1);
  }, milliseconds(10000));
  EXPECT_NE(msg.find("rank 1 called allreduce_sum"), std::string::npos) << msg;
  EXPECT_NE(msg.find("same order"), std::string::npos) << msg;
}

TEST(Threads, MismatchedSizesAreReported) {
  std::string msg = run_expecting<CommError>(2, [](Communicator& c) {
    std::vector<double> x(c.rank() + 1, 1.0);
    c.allreduce_sum(x.data(), x.size());
  }, milliseconds(10000));
  EXPECT_NE(msg.find("same size"), std::string::npos) << msg;
}

// The original exception comes back, promptly, even though the others would wait 20 s.
TEST(Threads, ThrowingRankIsRethrownAndReleasesTheOthers) {
  for (int n : {2, 5, 8}) {
    SCOPED_TRACE(n);
    std::atomic<int> induced{0};
    double ms = 0;
    std::string msg = run_expecting<std::invalid_argument>(n, [&](Communicator& c) {
      if (c.rank() == n - 1) throw std::invalid_argument("bad block " + std::to_string(c.rank()));
      try {
        if (c.rank() % 2 == 0) c.barrier(); else c.recv_or_throw(n - 1, 3, "a block");
      } catch (const CommError& e) {
        const std::string w = e.what();
        if (w.find("rank " + std::to_string(n - 1) + " failed: bad block") != std::string::npos)
          ++induced;
        throw;
      }
    }, milliseconds(20000), &ms);
    EXPECT_EQ(msg, "bad block " + std::to_string(n - 1));
    EXPECT_EQ(induced.load(), n - 1);
    EXPECT_LT(ms, 2000.0);
  }
}

TEST(Threads, LowestRankedOriginalExceptionWins) {
  std::string msg = run_expecting<std::runtime_error>(4, [](Communicator& c) {
    if (c.rank() <= 1) c.recv(3, 0, milliseconds(5000));  // induced CommError, not reported
    if (c.rank() == 3) throw std::runtime_error("three");
    if (c.rank() == 2) {
      std::this_thread::sleep_for(milliseconds(20));  // fails after rank 3
      throw std::runtime_error("two");
    }
  }, milliseconds(5000));
  EXPECT_EQ(msg, "two");
}

TEST(Threads, AbortThrowsCommError) {
  std::string msg = run_expecting<CommError>(2, [](Communicator& c) {
    if (c.rank() == 1) c.abort(4, "lost a peer");
    c.barrier();
  }, milliseconds(5000));
  EXPECT_NE(msg.find("rank 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lost a peer"), std::string::npos) << msg;
}

TEST(Threads, BadRanksAndTags) {
  run_threads(2, [](Communicator& c) {
    EXPECT_THROW(c.send(2, 0, "x"), CommError);
    EXPECT_THROW(c.send(-1, 0, "x"), CommError);
    EXPECT_THROW(c.send(0, -3, "x"), InternalError);
    EXPECT_THROW(c.recv(5, 0, milliseconds(0)), CommError);
    double x = 0;
    EXPECT_THROW(c.broadcast(&x, sizeof x, 2), CommError);
    EXPECT_THROW(c.gatherv("", -1), CommError);
  });
}

TEST(Local, IsOneRankWithIdentityCollectives) {
  auto c = make_local();
  EXPECT_EQ(c->backend(), "local");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->topology().gpu, -1);
  EXPECT_EQ(c->timeout(), kDefaultTimeout);
  c->barrier();
  double x[2] = {1.5, -2};
  c->allreduce_sum(x, 2);
  EXPECT_EQ(x[0], 1.5);
  EXPECT_EQ(x[1], -2);
  int v = 7;
  c->broadcast(&v, sizeof v, 0);
  EXPECT_EQ(v, 7);
  EXPECT_EQ(c->gatherv("g", 0), std::vector<std::string>{"g"});
  EXPECT_EQ(c->allgatherv("a"), std::vector<std::string>{"a"});
  c->send(0, 3, "one");
  c->send(0, 4, "two");
  c->send(0, 3, "three");
  c->flush();
  EXPECT_EQ(c->recv(0, 3, milliseconds(0))->bytes, "one");
  EXPECT_EQ(c->recv(kAnySource, kAnyTag, milliseconds(0))->bytes, "two");
  Message m = c->recv_or_throw(0, 3, "third");
  EXPECT_EQ(m.bytes, "three");
  EXPECT_EQ(m.source, 0);
  EXPECT_EQ(m.tag, 3);
  c->set_timeout(milliseconds(10));
  EXPECT_FALSE(c->recv(kAnySource, kAnyTag, milliseconds(0)));
  try {
    c->recv_or_throw(kAnySource, kAnyTag, "a reply");
    ADD_FAILURE() << "no throw";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 (host "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("a reply: nothing from any rank with any tag"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(c->send(1, 0, "x"), CommError);
  EXPECT_THROW(c->broadcast(&v, sizeof v, 1), CommError);
  EXPECT_THROW(c->gatherv("", 1), CommError);
  EXPECT_THROW(c->abort(1, "why"), CommError);
}

// Sets an environment variable for one scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1); else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(Factory, LaunchedByMpiReadsTheLauncherEnvironment) {
  if (launched_by_mpi()) GTEST_SKIP() << "this test binary itself runs under an MPI launcher";
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                          "MV2_COMM_WORLD_SIZE"}) {
    ScopedEnv env(var, "2");
    EXPECT_TRUE(launched_by_mpi()) << var;
  }
  EXPECT_FALSE(launched_by_mpi());
}

TEST(Factory, NamesAndUnknownNames) {
  EXPECT_THROW(make_communicator("bogus"), UsageError);
  EXPECT_THROW(make_communicator(""), UsageError);
  EXPECT_THROW(make_communicator("threads"), UsageError);
  try {
    make_communicator("bogus");
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("auto, local, mpi or nccl"), std::string::npos);
  }
  EXPECT_EQ(make_communicator("local")->backend(), "local");
  if (!launched_by_mpi()) {
    EXPECT_EQ(make_communicator("auto")->backend(), "local");
  }
}

TEST(Factory, WarnsWhenSlurmStartedLoneTasks) {
  ScopedEnv a("SLURM_NTASKS", "4"), b("SLURM_STEP_NUM_TASKS", nullptr);
  testing::internal::CaptureStderr();
  auto c = make_communicator("local");
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("srun --mpi=pmix"), std::string::npos) << err;
  EXPECT_NE(err.find("4 tasks"), std::string::npos) << err;
  {
    ScopedEnv one("SLURM_NTASKS", "1"), step("SLURM_STEP_NUM_TASKS", "3");
    testing::internal::CaptureStderr();
    make_communicator("local");
    EXPECT_NE(testing::internal::GetCapturedStderr().find("srun --mpi=pmix"), std::string::npos);
  }
  {
    ScopedEnv one("SLURM_NTASKS", "1");
    testing::internal::CaptureStderr();
    make_communicator("local");
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  }
}

TEST(Factory, LocalTopologyFallsBackOnSlurm) {
  {
    ScopedEnv id("SLURM_LOCALID", "2"), per("SLURM_NTASKS_PER_NODE", "4");
    auto c = make_local();
    EXPECT_EQ(c->topology().local_rank, 2);
    EXPECT_EQ(c->topology().local_size, 4);
  }
  ScopedEnv id("SLURM_LOCALID", nullptr), per("SLURM_NTASKS_PER_NODE", nullptr);
  auto c = make_local();
  EXPECT_EQ(c->topology().local_rank, 0);
  EXPECT_EQ(c->topology().local_size, 1);
}

TEST(Factory, MpiWithoutMpiBuild) {
  if (built_with_mpi()) GTEST_SKIP() << "built with MPI: exercised by mpi_check (label mpi)";
  try {
    make_mpi();
    ADD_FAILURE() << "no throw";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("built without MPI"), std::string::npos) << e.what();
  }
}

TEST(Factory, AutoUnderALauncherWithoutMpiBuild) {
  if (built_with_mpi()) GTEST_SKIP() << "built with MPI: auto would start MPI here";
  ScopedEnv env("PMI_RANK", "0");
  try {
    make_communicator("auto");
    ADD_FAILURE() << "no throw";
  } catch (const CommError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("built without MPI"), std::string::npos) << w;
    EXPECT_NE(w.find("PMI_RANK"), std::string::npos) << w;
  }
}

TEST(Factory, NcclNeedsADevice) {
  if (built_with_nccl() && visible_cuda_devices() > 0)
    GTEST_SKIP() << visible_cuda_devices() << " CUDA device(s) visible: make_nccl would start MPI";
  EXPECT_EQ(visible_cuda_devices(), 0);
  try {
    make_nccl();
    ADD_FAILURE() << "make_nccl succeeded without a CUDA device";
  } catch (const CommError& e) {
    const std::string w = e.what();
    if (built_with_nccl())
      EXPECT_NE(w.find("no CUDA device visible"), std::string::npos) << w;
    else
      EXPECT_NE(w.find("built without NCCL"), std::string::npos) << w;
  }
}

}  // namespace
}  // namespace rankprune::cluster
