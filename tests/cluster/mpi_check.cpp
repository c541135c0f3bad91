// Every operation of the mpi backend across real processes. Run under a launcher:
//   mpirun --allow-run-as-root --oversubscribe -np 3 build/tests/mpi_check
// (ctest: mpi_comm_np2, mpi_comm_np3, label mpi). Exit 0 when every check passed on every rank.
//
// The last case has one rank skip a collective: the others must get CommError within a short
// timeout. Then the late rank joins that collective after all, so the abandoned operations
// complete and the run can still end in a clean MPI_Finalize.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "cluster/collectives.h"
#include "cluster/communicator.h"
#include "common/error.h"

namespace rp = rankprune;
using namespace rankprune::cluster;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

constexpr milliseconds kNormal{20000};  // every wait of a passing run is far shorter
constexpr milliseconds kShort{300};     // the timeout cases

int g_checks = 0, g_failures = 0;
std::string g_where = "rank ?";

void check(bool ok, const std::string& what, int line) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  std::cerr << g_where << ": mpi_check.cpp:" << line << ": FAILED: " << what << std::endl;
}
#define CHECK(cond) check((cond), #cond, __LINE__)
#define CHECK_MSG(cond, msg) check((cond), std::string(#cond) + " (" + (msg) + ")", __LINE__)

template <typename E, typename F>
std::string expect_throw(F&& f, int line) {
  try {
    f();
  } catch (const E& e) {
    check(true, "", line);
    return e.what();
  }
  check(false, "expected exception not thrown", line);
  return {};
}
#define EXPECT_THROWS(E, stmt) expect_throw<E>([&] { stmt; }, __LINE__)

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

void topology(Communicator& c) {
  const Topology& t = c.topology();
  CHECK(c.backend() == "mpi");
  if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE")) CHECK(c.size() == std::atoi(n));
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) CHECK(c.rank() == std::atoi(r));
  CHECK(t.gpu == -1);
  CHECK(!t.host.empty());
  CHECK(contains(c.where(), "rank " + std::to_string(c.rank()) + " (host "));
  // local_rank / local_size agree with the hosts every rank reports.
  auto hosts = c.allgatherv(t.host);
  auto local_ranks = allgather_values(c, t.local_rank);
  int same = 0, below = 0;
  for (int r = 0; r < c.size(); ++r) {
    if (hosts[r] != t.host) continue;
    ++same;
    if (r < c.rank()) ++below;
    if (r != c.rank()) CHECK(local_ranks[r] != t.local_rank);
  }
  CHECK(t.local_size == same);
  CHECK(t.local_rank == below);
}

void collectives(Communicator& c) {
  const int n = c.size(), me = c.rank();
  for (int i = 0; i < 3; ++i) c.barrier();

  // Integer-valued doubles: the sum is exact whatever order MPI adds in.
  std::vector<double> v(1000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = double(i) * (me + 1);
  c.allreduce_sum(v.data(), v.size());
  bool exact = true;
  for (std::size_t i = 0; i < v.size(); ++i) exact &= v[i] == double(i) * n * (n + 1) / 2;
  CHECK(exact);
  c.allreduce_sum(nullptr, 0);
  // Inexact sums: every rank still gets the same bits.
  double third = 1.0 / (3 + me);
  c.allreduce_sum(&third, 1);
  auto thirds = allgather_values(c, third);
  for (double x : thirds) CHECK(std::memcmp(&x, &third, sizeof x) == 0);

  for (int root = 0; root < n; ++root) {
    std::int64_t x[2] = {me == root ? 100 + root : -1, me == root ? -root : -1};
    c.broadcast(x, sizeof x, root);
    CHECK(x[0] == 100 + root && x[1] == -root);
    c.broadcast(nullptr, 0, root);
  }
  std::string big(3 << 20, '\0');
  if (me == n - 1)
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = char(i * 31 + 7);
  c.broadcast(&big[0], big.size(), n - 1);
  bool same = true;
  for (std::size_t i = 0; i < big.size(); ++i) same &= big[i] == char(i * 31 + 7);
  CHECK(same);

  auto payload = [](int r) { return std::string(static_cast<std::size_t>(r) * 3, char('a' + r)); };
  for (int root = 0; root < n; ++root) {
    auto all = c.gatherv(payload(me), root);
    if (me != root) {
      CHECK(all.empty());
      continue;
    }
    CHECK(static_cast<int>(all.size()) == n);
    for (int r = 0; r < n && r < static_cast<int>(all.size()); ++r) CHECK(all[r] == payload(r));
  }
  auto all = c.allgatherv(payload(me));
  CHECK(static_cast<int>(all.size()) == n);
  for (int r = 0; r < n && r < static_cast<int>(all.size()); ++r) CHECK(all[r] == payload(r));

  std::string s = me == 0 ? std::string("id\0bytes", 8) : "stale";
  broadcast_string(c, s, 0);
  CHECK(s == std::string("id\0bytes", 8));
  int seven = me == n - 1 ? 7 : 0;
  broadcast_value(c, seven, n - 1);
  CHECK(seven == 7);
}

void point_to_point(Communicator& c) {
  const int n = c.size(), me = c.rank();
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  c.send(next, 7, "ring " + std::to_string(me));
  c.send(me, 8, "self");
  Message m = c.recv_or_throw(prev, 7, "ring");
  CHECK(m.source == prev && m.tag == 7 && m.bytes == "ring " + std::to_string(prev));
  m = c.recv_or_throw(me, 8, "self");
  CHECK(m.source == me && m.bytes == "self");
  c.flush();

  // FIFO per (source, tag) and the wildcards: everyone sends interleaved tags 1/2 to rank 0.
  if (me != 0) {
    for (int i = 0; i < 5; ++i) {
      c.send(0, 1, std::to_string(me) + "a" + std::to_string(i));
      c.send(0, 2, std::to_string(me) + "b" + std::to_string(i));
    }
    c.flush();
  } else if (n > 1) {
    const int last = n - 1;  // its tag 2 first (rank 1's when n == 2 stays for the next loop)
    if (n >= 3)
      for (int i = 0; i < 5; ++i)
        CHECK(c.recv_or_throw(last, 2, "fifo").bytes ==
              std::to_string(last) + "b" + std::to_string(i));
    for (int i = 0; i < 10; ++i) {
      m = c.recv_or_throw(1, kAnyTag, "any tag");
      CHECK(m.source == 1 && m.tag == 1 + i % 2);
      CHECK(m.bytes == std::string("1") + (i % 2 ? "b" : "a") + std::to_string(i / 2));
    }
    // The rest, any source and any tag: still in order per (source, tag).
    std::vector<int> next_a(n, 0), next_b(n, 0);
    if (n >= 3) next_b[last] = 5;
    const int rest = n >= 3 ? 10 * (n - 2) - 5 : 0;
    for (int i = 0; i < rest; ++i) {
      m = c.recv_or_throw(kAnySource, kAnyTag, "any source");
      const bool known = m.source >= 2 && m.source < n && (m.tag == 1 || m.tag == 2);
      CHECK_MSG(known, m.bytes);
      if (!known) continue;
      int& k = m.tag == 1 ? next_a[m.source] : next_b[m.source];
      CHECK_MSG(m.bytes == std::to_string(m.source) + (m.tag == 1 ? "a" : "b") + std::to_string(k),
                m.bytes);
      ++k;
    }
    CHECK(!c.recv(kAnySource, kAnyTag, milliseconds(0)));
  }
  c.barrier();

  // A message far over the eager limit (rendezvous: MPI_Imrecv polled), and recv polling.
  if (n > 1) {
    if (me == 1) {
      c.recv_or_throw(0, 5, "go");
      std::string big(8 << 20, 'z');
      big[12345] = 'q';
      c.send(0, 6, std::move(big));
      c.flush();
    } else if (me == 0) {
      CHECK(!c.recv(1, 6, milliseconds(0)));
      auto t0 = Clock::now();
      CHECK(!c.recv(1, 6, milliseconds(50)));
      CHECK(ms_since(t0) >= 45);
      c.send(1, 5, "");
      std::optional<Message> got;
      t0 = Clock::now();
      while (!(got = c.recv(1, 6, milliseconds(0))) && ms_since(t0) < 10000) {
      }
      CHECK(got && got->bytes.size() == std::size_t(8) << 20 && got->bytes[12345] == 'q' &&
            got->bytes[0] == 'z');
    }
  }
  c.barrier();

  // recv_or_throw times out with a CommError naming the peer and the tag.
  c.set_timeout(milliseconds(200));
  auto t0 = Clock::now();
  std::string w = EXPECT_THROWS(CommError, c.recv_or_throw(kAnySource, 99, "the reply"));
  CHECK_MSG(contains(w, "the reply: nothing from any rank with tag 99"), w);
  CHECK(ms_since(t0) >= 190);
  c.set_timeout(kNormal);

  EXPECT_THROWS(CommError, c.send(n, 0, "x"));
  EXPECT_THROWS(rp::InternalError, c.send(0, -1, "x"));
  EXPECT_THROWS(CommError, c.broadcast(nullptr, 0, -1));
  c.barrier();
}

void factory(Communicator& c) {
  EXPECT_THROWS(rp::UsageError, make_communicator("bogus"));
  auto second = make_communicator("auto");  // a second communicator on the same world
  CHECK(second->backend() == "mpi");
  CHECK(second->rank() == c.rank() && second->size() == c.size());
  second->send(c.rank(), 3, "second");  // never seen by the first one
  double one = 1;
  second->allreduce_sum(&one, 1);
  CHECK(one == c.size());
  CHECK(!c.recv(c.rank(), 3, milliseconds(20)));
  CHECK(second->recv_or_throw(c.rank(), 3, "own").bytes == "second");
  second.reset();
  if (visible_cuda_devices() == 0) {
    std::string w = EXPECT_THROWS(CommError, make_nccl());
    CHECK_MSG(contains(w, built_with_nccl() ? "no CUDA device visible" : "built without NCCL"), w);
  }
  c.barrier();
}

// Rank 1 is late for one collective; everyone else must time out, then rank 1 joins it after
// all (so no operation stays open and MPI_Finalize is clean), and the communicator still works.
void late_rank(Communicator& c, const std::string& op) {
  if (c.size() < 2) return;
  const int me = c.rank();
  double x[3] = {1, 2, 3};
  auto run = [&] {
    if (op == "barrier") c.barrier();
    if (op == "allreduce_sum") c.allreduce_sum(x, 3);
    if (op == "broadcast") c.broadcast(x, sizeof x, 1);  // the late rank is the root
  };
  if (me != 1) {
    c.set_timeout(kShort);
    auto t0 = Clock::now();
    std::string w = EXPECT_THROWS(CommError, run());
    const double ms = ms_since(t0);
    CHECK_MSG(contains(w, "rank " + std::to_string(me) + " (host "), w);
    CHECK_MSG(contains(w, op) && contains(w, "timed out after 300 ms"), w);
    CHECK_MSG(ms >= 290 && ms < 5000, std::to_string(ms) + " ms");
    c.set_timeout(kNormal);
    c.send(1, 500, "timed out");
  } else {
    for (int r = 0; r < c.size(); ++r)
      if (r != 1) c.recv_or_throw(r, 500, "the others' timeouts");
    run();  // completes the operation the others gave up on
  }
  double one = 1;
  c.allreduce_sum(&one, 1);
  CHECK(one == c.size());
  c.barrier();
}

}  // namespace

int main() {
  try {
    auto comm = make_mpi();
    comm->set_timeout(kNormal);
    g_where = comm->where();
    topology(*comm);
    collectives(*comm);
    point_to_point(*comm);
    factory(*comm);
    for (const char* op : {"barrier", "allreduce_sum", "broadcast"}) late_rank(*comm, op);

    double failed = g_failures;
    comm->allreduce_sum(&failed, 1);
    if (comm->rank() == 0)
      std::cout << "mpi_check: " << comm->size() << " ranks, " << g_checks << " checks on rank 0, "
                << failed << " failure(s) in all" << std::endl;
    comm->barrier();
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << g_where << ": mpi_check: " << e.what() << std::endl;
    return 2;
  }
}
