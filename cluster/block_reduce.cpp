#include "cluster/block_reduce.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "common/error.h"

namespace rankprune::cluster {

namespace {

using Clock = std::chrono::steady_clock;

// One tag for the tree's messages (nodes and "still working" notes): FIFO per source then
// guarantees a receiver has consumed every note of a sender before that sender's node.
constexpr int kTreeTag = 7001;

struct Header {
  int64_t kind;  // kNode, kAlive or kGo
  int64_t lo, hi;
};
constexpr int64_t kNode = 0, kAlive = 1, kGo = 2;

// mid = lo + the largest power of two strictly below hi - lo (hi - lo >= 2).
int64_t split(int64_t lo, int64_t hi) {
  int64_t p = 1;
  while (p * 2 < hi - lo) p *= 2;
  return lo + p;
}

class Tree {
 public:
  Tree(Communicator& comm, int64_t n_blocks, std::size_t length, const std::function<void(int64_t, double*)>& block,
       bool broadcast, BlockReduceReport& report)
      : comm_(comm), n_(n_blocks), len_(length), block_(block), broadcast_(broadcast), report_(report) {
    const int P = comm.size();
    for (int r = 0; r < P; ++r) first_.push_back(block_range(n_, r, P).first);
    std::tie(my_first_, my_last_) = block_range(n_, comm.rank(), P);
    interval_ = std::max<Clock::duration>(comm.timeout() / 4, std::chrono::milliseconds(1));
  }

  // Computes this rank's top nodes in ascending order, sending each to its parent's owner;
  // returns the root on its owner (rank 0), empty elsewhere. A node's value lives in a message
  // buffer (header, then the doubles), so sending it moves it and receiving needs no copy.
  std::string run() {
    find_tops(0, n_, -1);
    std::string root;
    for (std::size_t i = 0; i < tops_.size(); ++i) {
      const Top& t = tops_[i];
      next_top_ = i;
      std::string v = compute(t.lo, t.hi);
      if (t.dest < 0) {
        root = std::move(v);
      } else {
        set_header(v, {kNode, t.lo, t.hi});
        report_.messages_sent += 1;
        report_.bytes_sent += static_cast<int64_t>(v.size());
        comm_.send(t.dest, kTreeTag, std::move(v));
      }
      next_top_ = i + 1;
    }
    return root;
  }

  static double* values(std::string& node) { return reinterpret_cast<double*>(node.data() + sizeof(Header)); }
  static const double* values(const std::string& node) {
    return reinterpret_cast<const double*>(node.data() + sizeof(Header));
  }

  struct Top {
    int64_t lo, hi;
    int dest;  // rank owning the parent; -1 for the root
  };

  int owner(int64_t b) const {
    // Ranges are ascending and contiguous; the owner is the last rank whose range starts at or
    // before b and is not empty.
    int r = static_cast<int>(std::upper_bound(first_.begin(), first_.end(), b) - first_.begin()) - 1;
    RP_ASSERT(r >= 0, "block ", b);
    return r;
  }

  void find_tops(int64_t lo, int64_t hi, int parent_owner) {
    if (hi <= my_first_ || lo >= my_last_) return;  // no block of this rank below
    const int o = owner(lo);
    if (o == comm_.rank()) {
      tops_.push_back({lo, hi, parent_owner});
      return;
    }
    if (hi - lo == 1) return;
    const int64_t mid = split(lo, hi);
    find_tops(lo, mid, o);
    find_tops(mid, hi, o);
  }

  std::string compute(int64_t lo, int64_t hi) {
    if (hi - lo == 1) {
      std::string v(sizeof(Header) + len_ * sizeof(double), '\0');  // zeroed doubles
      block_(lo, values(v));
      last_block_done_ = Clock::now();
      maybe_alive();
      return v;
    }
    const int64_t mid = split(lo, hi);
    std::string v = compute(lo, mid);
    const int src = owner(mid);
    const std::string r = src == comm_.rank() ? compute(mid, hi) : receive_node(src, mid, hi);
    double* a = values(v);
    const double* b = values(r);
    for (std::size_t i = 0; i < len_; ++i) a[i] += b[i];
    return v;
  }

  static void set_header(std::string& node, Header h) { std::memcpy(node.data(), &h, sizeof h); }

  // "Still working" notes to the ranks waiting on this one, at most every interval_: those this
  // rank still owes a node and, from rank 0 before a broadcast, every rank (they wait for the root).
  void maybe_alive() {
    const auto now = Clock::now();
    if (now - last_alive_ < interval_) return;
    last_alive_ = now;
    std::vector<int> to;
    for (std::size_t i = next_top_; i < tops_.size(); ++i)
      if (tops_[i].dest >= 0) to.push_back(tops_[i].dest);
    if (broadcast_ && comm_.rank() == 0)
      for (int r = 1; r < comm_.size(); ++r) to.push_back(r);
    std::sort(to.begin(), to.end());
    to.erase(std::unique(to.begin(), to.end()), to.end());
    for (int r : to) send_header(r, {kAlive, 0, 0});
  }

  void send_header(int dest, Header h) {
    comm_.send(dest, kTreeTag, std::string(reinterpret_cast<const char*>(&h), sizeof h));
  }

 public:
  // The total to every rank: rank 0 sends it (header kGo, then the doubles) to each; the others
  // wait for it, counting rank 0's notes as signs of life. Point to point rather than a collective,
  // so a rank that finished its blocks early waits with the liveness rule, not a fixed timeout.
  void share_root(std::string& root) {
    if (comm_.rank() == 0) {
      set_header(root, {kGo, 0, 0});
      for (int r = 1; r < comm_.size(); ++r) comm_.send(r, kTreeTag, r + 1 < comm_.size() ? root : std::move(root));
      comm_.flush();
    } else {
      root = wait_for(0, kGo, 0, 0);
      RP_ASSERT(root.size() == sizeof(Header) + len_ * sizeof(double), "block tree: the total from rank 0 has ",
                root.size(), " bytes");
    }
  }

 private:
  std::string receive_node(int src, int64_t lo, int64_t hi) {
    std::string bytes = wait_for(src, kNode, lo, hi);
    RP_ASSERT(bytes.size() == sizeof(Header) + len_ * sizeof(double), "block tree: node [", lo, ", ", hi,
              ") from rank ", src, " has ", bytes.size(), " bytes");
    return bytes;
  }

  // Waits for message `kind` ([lo, hi) for a node) from `src`; its notes restart the clock, so a
  // slow but working peer is waited for and only a silent one times out.
  std::string wait_for(int src, int64_t kind, int64_t lo, int64_t hi) {
    auto deadline = Clock::now() + comm_.timeout();
    const auto slice = std::chrono::milliseconds(50);
    for (;;) {
      maybe_alive();
      auto m = comm_.recv(src, kTreeTag, slice);
      if (m) {
        RP_ASSERT(m->bytes.size() >= sizeof(Header), "short tree message from rank ", src);
        Header h;
        std::memcpy(&h, m->bytes.data(), sizeof h);
        if (h.kind == kAlive) {
          deadline = Clock::now() + comm_.timeout();
          continue;
        }
        RP_ASSERT(h.kind == kind && h.lo == lo && h.hi == hi, "block tree: rank ", src, " sent message ", h.kind,
                  " [", h.lo, ", ", h.hi, "); expected ", kind, " [", lo, ", ", hi, ")");
        return std::move(m->bytes);
      }
      if (Clock::now() > deadline)
        throw CommError(cat(comm_.where(), ": block tree sum: no word from rank ", src, " for ",
                            std::chrono::duration<double>(comm_.timeout()).count(), " s while waiting for ",
                            kind == kNode ? cat("its sum of blocks [", lo, ", ", hi, ")") : std::string("the total"),
                            "; it may have died or be stuck (--comm-timeout raises the limit)"));
    }
  }

  Communicator& comm_;
  int64_t n_;
  std::size_t len_;
  const std::function<void(int64_t, double*)>& block_;
  bool broadcast_;
  BlockReduceReport& report_;
  std::vector<int64_t> first_;
  int64_t my_first_ = 0, my_last_ = 0;
  std::vector<Top> tops_;
  std::size_t next_top_ = 0;
  Clock::duration interval_{};
  Clock::time_point last_alive_{}, last_block_done_{};

 public:
  Clock::time_point last_block_done() const { return last_block_done_; }
};

}  // namespace

std::pair<int64_t, int64_t> block_range(int64_t n, int rank, int size) {
  RP_ASSERT(n >= 0 && size >= 1 && rank >= 0 && rank < size);
  // Ceilings, so that with fewer blocks than ranks the low ranks get them (rank 0 always owns
  // block 0 and therefore the root).
  auto edge = [&](int r) { return (n * r + size - 1) / size; };
  return {edge(rank), edge(rank + 1)};
}

std::vector<double> block_tree_sum(Communicator& comm, int64_t n_blocks, std::size_t length,
                                   const std::function<void(int64_t, double*)>& block, bool broadcast,
                                   BlockReduceReport* report) {
  RP_ASSERT(n_blocks >= 1, "block_tree_sum over ", n_blocks, " blocks");
  BlockReduceReport local;
  BlockReduceReport& rep = report ? *report : local;
  rep = {};
  Tree tree(comm, n_blocks, length, block, broadcast && comm.size() > 1, rep);
  std::string root = tree.run();
  const auto t_tree_end = Clock::now();
  if (tree.last_block_done() != Clock::time_point{})
    rep.reduce_seconds = std::chrono::duration<double>(t_tree_end - tree.last_block_done()).count();
  auto values_of = [&](const std::string& node) {
    RP_ASSERT(node.size() == sizeof(Header) + length * sizeof(double), "a total of ", node.size(), " bytes");
    return std::vector<double>(Tree::values(node), Tree::values(node) + length);
  };
  std::vector<double> out;
  if (comm.rank() == 0) out = values_of(root);  // rank 0 owns the root (block 0)
  if (broadcast && comm.size() > 1) {
    tree.share_root(root);
    if (comm.rank() != 0) out = values_of(root);
    rep.broadcast_bytes = static_cast<int64_t>(length * sizeof(double));
    rep.broadcast_seconds = std::chrono::duration<double>(Clock::now() - t_tree_end).count();
  }
  return out;
}

}  // namespace rankprune::cluster
