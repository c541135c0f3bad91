// Write faults, command by command (docs/reliability.md): every command that writes is run under
// tests/fault/write_fault.cpp (LD_PRELOAD), which fails one write operation (write, pwrite,
// fwrite, fflush, fsync, fdatasync, fclose on a regular file) with ENOSPC or EIO. An undisturbed
// run lists the command's write points; then, for each chosen point, the command runs with that
// point failing and must
//   - exit 1 with an error naming the file (the output, the database or its cache) and the
//     reason (strerror of the injected errno),
//   - leave the outputs that existed before byte for byte, and the database loadable with every
//     result it held,
//   - leave no temporary file (".tmp." names of AtomicFile / AtomicDir) behind,
// and a re-run without the fault must finish and produce what the undisturbed run did.
//
// By default each command runs a few points (the first write of each output, a sync, the last
// operation; about 10 s per command). RANKPRUNE_FAULT_FULL=1 runs the first occurrence of every
// (operation, file) pair with both errnos, and RANKPRUNE_FAULT_TABLE=FILE appends the matrix as
// markdown rows (scripts/fault_matrix.sh).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "common/fs.h"
#include "storage/db.h"
#include "tests/testing/testing.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

bool full_mode() {
  const char* e = std::getenv("RANKPRUNE_FAULT_FULL");
  return e && *e && std::string(e) != "0";
}

struct Outcome {
  int code = -1;
  std::string out;
};

// Runs rankprune with `env` added, in `cwd`; stdout + stderr captured.
Outcome run_with(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
             const std::string& cwd, const std::string& log) {
  std::vector<std::string> argv = args;
  argv.insert(argv.begin(), RANKPRUNE_BINARY);
  SpawnOptions opts;
  opts.env = env;
  opts.cwd = cwd;
  Outcome r;
  r.code = wait_process(spawn_process(argv, log, opts));
  r.out = file_exists(log) ? read_file(log) : "";
  return r;
}

struct Point {
  long index;
  std::string op, file;  // file with the temporary suffix removed, relative to the work folder
};

std::vector<Point> read_points(const std::string& log, const std::string& root) {
  std::vector<Point> out;
  if (!file_exists(log)) return out;
  std::istringstream in(read_file(log));
  static const std::regex tmp_suffix(R"(\.tmp\.[0-9]+\.[0-9a-f]+)"), hash(R"([0-9a-f]{16,})");
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    Point p;
    ls >> p.index >> p.op;
    std::getline(ls, p.file);
    p.file = p.file.substr(p.file.find_first_not_of(' '));
    if (p.file.rfind(root + "/", 0) == 0) p.file = p.file.substr(root.size() + 1);
    p.file = std::regex_replace(std::regex_replace(p.file, tmp_suffix, ".tmp"), hash, "<hash>");
    out.push_back(p);
  }
  return out;
}

// The content of an output that must be equal between an undisturbed run and a re-run: files
// byte for byte, except time stamps and timings; folders file by file; databases by their results.
std::string content(const std::string& path) {
  if (!fs::exists(path)) return "<absent>";
  if (fs::is_directory(path)) {
    std::vector<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(path))
      if (e.is_regular_file()) names.push_back(fs::relative(e.path(), path).string());
    std::sort(names.begin(), names.end());
    std::string out;
    for (const auto& n : names) out += n + "\n" + content(path_join(path, n)) + "\n";
    return out;
  }
  if (lower_extension(path) == ".db") {
    auto db = storage::Database::open(path);
    std::ostringstream os;
    os.precision(17);
    for (const auto& r : db.results())
      os << r.model << "|" << r.method << "|" << r.ratio << "|" << r.seed << "|" << r.task << "|" << r.metric << "|"
         << r.value << "\n";
    for (const auto& j : db.jobs()) os << j.method << "|" << j.ratio << "|" << j.task << "|" << j.state << "\n";
    return os.str();
  }
  std::string s = read_file(path);
  if (lower_extension(path) == ".json") {
    try {
      auto j = nlohmann::json::parse(s);
      for (const char* k : {"date", "task_seconds", "total_evaluation_time_seconds", "elapsed_s", "tokens_per_s"})
        if (j.is_object()) j.erase(k);
      return j.dump();
    } catch (const std::exception&) {
    }
  }
  if (lower_extension(path) == ".html")
    s = std::regex_replace(s, std::regex(R"(generated \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"), "generated <date>");
  if (fs::path(path).filename() == "train_log.jsonl") {
    // One JSON line per step; timings differ between runs.
    std::istringstream in(s);
    std::string out;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      for (const char* k : {"elapsed_s", "tokens_per_s", "eta_s"}) j.erase(k);
      out += j.dump() + "\n";
    }
    return out;
  }
  return s;
}

std::vector<std::string> temp_files(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) out.push_back(e.path().string());
  return out;
}

void copy_tree(const std::string& from, const std::string& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
}

const char* errno_text(const std::string& e) { return e == "EIO" ? std::strerror(EIO) : std::strerror(ENOSPC); }

// One command of the matrix. The work folder holds the inputs; `prepare` (run once) makes them
// and the outputs that exist before the command ("previous"), which are snapshotted and restored
// before every run.
struct Command {
  std::string name;
  std::vector<std::string> args;       // relative paths inside the work folder
  std::vector<std::string> outputs;    // compared between the undisturbed run and the re-run
  std::vector<std::string> previous;   // existing before the command; must survive a fault
  std::vector<std::string> named;      // a fault message must name one of these
  std::string db = {};                 // a database that must stay loadable with its results
};

class WriteFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.file("work");
    fs::create_directories(root_);
    // A tiny model (as tests/cli/cli_fixture.h) and calibration text for the bytes tokenizer.
    ASSERT_EQ(rp({"init", "--arch", "delta_net", "--out", "model", "--hidden-size", "32", "--num-layers", "2",
                  "--num-heads", "2", "--head-k-dim", "8", "--head-v-dim", "8", "--vocab-size", "300", "--dtype",
                  "f32", "--init-std", "0.2", "--seed", "3"})
                  .code,
              0);
    std::string text;
    for (int i = 0; i < 200; ++i) text += "the quick brown fox " + std::to_string(i) + " jumps over the lazy dog\n";
    write_file_atomic(path_join(root_, "text.txt"), text);
  }

  Outcome rp(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
    return run_with(args, env, root_, tmp_.file("run.log"));
  }

  // A sweep into `db` (for commands that read or extend one).
  void sweep(const std::string& db, const std::string& ratios) {
    const Outcome r = rp({"sweep", "--model", "model", "--tokenizer", "bytes", "--data", "text.txt", "--seq-len", "16",
                      "--sequences", "4", "--methods", "l1,drrqr", "--ratios", ratios, "--tasks", "piqa", "--limit",
                      "2", "--db", db});
    ASSERT_EQ(r.code, 0) << r.out;
  }

  void check(const Command& c) {
    const std::string snap = tmp_.file("snapshot");
    copy_tree(root_, snap);
    auto restore = [&] {
      // Outputs of the previous run go; the pre-run state comes back.
      for (const auto& e : fs::directory_iterator(root_)) fs::remove_all(e.path());
      for (const auto& e : fs::directory_iterator(snap)) fs::copy(e.path(), path_join(root_, e.path().filename().string()), fs::copy_options::recursive);
    };
    std::map<std::string, std::string> before;
    for (const auto& p : c.previous) before[p] = read_file(path_join(root_, p));
    std::string db_before;
    if (!c.db.empty()) db_before = content(path_join(root_, c.db));

    // The undisturbed run: its write points and its outputs.
    const std::string log = tmp_.file("points.log");
    fs::remove(log);
    const std::string preload = RP_WRITE_FAULT_LIB;
    const std::map<std::string, std::string> base_env = {{"LD_PRELOAD", preload},
                                                         {"ASAN_OPTIONS", "verify_asan_link_order=0"}};
    auto env = base_env;
    env["RP_FAULT_LOG"] = log;
    const Outcome clean = rp(c.args, env);
    ASSERT_EQ(clean.code, 0) << c.name << ": " << clean.out;
    std::map<std::string, std::string> want;
    for (const auto& o : c.outputs) want[o] = content(path_join(root_, o));
    const auto points = read_points(log, fs::canonical(root_).string());
    ASSERT_FALSE(points.empty()) << c.name << " wrote nothing the shim saw";

    // Which points to fail: first occurrence of each (op, file); by default a few of them.
    std::vector<Point> firsts;
    std::set<std::string> seen;
    for (const auto& p : points)
      if (seen.insert(p.op + " " + p.file).second) firsts.push_back(p);
    std::vector<std::pair<Point, std::string>> chosen;
    if (full_mode()) {
      for (const auto& p : firsts)
        for (const char* e : {"ENOSPC", "EIO"}) chosen.emplace_back(p, e);
    } else {
      // The first write, the first sync and the last operation of the run, plus the first
      // operation on each further file, up to 4 points; errnos alternate.
      std::vector<Point> pick;
      auto add = [&](const Point& p) {
        if (pick.size() < 4 && std::none_of(pick.begin(), pick.end(), [&](const Point& q) { return q.index == p.index; }))
          pick.push_back(p);
      };
      add(firsts.front());
      for (const auto& p : firsts)
        if (p.op == "fsync" || p.op == "fdatasync") {
          add(p);
          break;
        }
      add(points.back());
      std::set<std::string> files;
      for (const auto& p : pick) files.insert(p.file);
      for (const auto& p : firsts)
        if (files.insert(p.file).second) add(p);
      for (std::size_t i = 0; i < pick.size(); ++i) chosen.emplace_back(pick[i], i % 2 ? "EIO" : "ENOSPC");
    }

    std::ofstream table;
    if (const char* t = std::getenv("RANKPRUNE_FAULT_TABLE"); t && *t) table.open(t, std::ios::app);
    for (const auto& [p, err] : chosen) {
      SCOPED_TRACE(c.name + ": " + err + " at point " + std::to_string(p.index) + " (" + p.op + " " + p.file + ")");
      restore();
      auto fenv = base_env;
      fenv["RP_FAULT_AT"] = std::to_string(p.index);
      fenv["RP_FAULT_ERRNO"] = err;
      const Outcome f = rp(c.args, fenv);
      std::string outcome;
      // A fault the command absorbs without losing anything is fine: SQLite's checkpoint when the
      // last connection closes copies the WAL into the database, and a failure there leaves the
      // committed WAL for the next open. Exit 0 is accepted only with every output complete.
      bool absorbed = false;
      if (f.code == 0) {
        absorbed = true;
        for (const auto& o : c.outputs) absorbed = absorbed && content(path_join(root_, o)) == want[o];
      }
      if (absorbed) {
        outcome = "exit 0, absorbed: every output complete";
        EXPECT_EQ(temp_files(root_), std::vector<std::string>{});
      } else {
        EXPECT_EQ(f.code, 1) << f.out;
        EXPECT_NE(f.out.find(errno_text(err)), std::string::npos) << "reason missing: " << f.out;
        EXPECT_TRUE(std::any_of(c.named.begin(), c.named.end(),
                                [&](const std::string& n) { return f.out.find(n) != std::string::npos; }))
            << "no file named: " << f.out;
        for (const auto& [prev, bytes] : before)
          EXPECT_TRUE(read_file(path_join(root_, prev)) == bytes) << prev << " changed";
        if (!c.db.empty()) {
          // Loadable, and every result it held before is still there.
          std::string now;
          EXPECT_NO_THROW(now = content(path_join(root_, c.db)));
          std::istringstream old_rows(db_before);
          for (std::string row; std::getline(old_rows, row);) {
            if (std::count(row.begin(), row.end(), '|') == 6) {  // result rows (jobs may move on)
              EXPECT_NE(now.find(row + "\n"), std::string::npos) << "lost: " << row;
            }
          }
        }
        EXPECT_EQ(temp_files(root_), std::vector<std::string>{});
        const std::string first_line = f.out.substr(f.out.rfind("rankprune: ") == std::string::npos ? 0 : f.out.rfind("rankprune: "));
        outcome = "exit " + std::to_string(f.code) + ": `" + first_line.substr(0, first_line.find('\n')).substr(0, 160) + "`";
      }
      // The re-run finishes as the undisturbed run did.
      const Outcome again = rp(c.args);
      EXPECT_EQ(again.code, 0) << again.out;
      bool same = again.code == 0;
      std::string differs;
      for (const auto& o : c.outputs) {
        const bool eq = content(path_join(root_, o)) == want[o];
        EXPECT_TRUE(eq) << o << " differs after the re-run";
        if (!eq) differs += (differs.empty() ? "" : ", ") + o;
        same = same && eq;
      }
      std::string rerun = same ? "same outputs" : "re-run exit " + std::to_string(again.code);
      if (!differs.empty()) rerun += ", differs: " + differs;
      if (again.code != 0) {
        const std::size_t at = again.out.rfind("rankprune: ");
        if (at != std::string::npos) rerun += ": `" + again.out.substr(at, again.out.find('\n', at) - at).substr(0, 120) + "`";
      }
      if (table.is_open())
        table << "| " << c.name << " | " << p.index << " " << p.op << " `" << p.file << "` | " << err << " | "
              << outcome << " | " << rerun << " |\n";
    }
    fs::remove_all(snap);
  }

  TempDir tmp_;
  std::string root_;
};

TEST_F(WriteFaults, Init) {
  check({"init",
         {"init", "--arch", "gated_deltanet", "--out", "fresh", "--hidden-size", "32", "--num-layers", "1", "--num-heads",
          "2", "--head-k-dim", "8", "--head-v-dim", "8", "--vocab-size", "64", "--seed", "5"},
         {"fresh"},
         {},
         {"fresh"}});
}

TEST_F(WriteFaults, LogitsOut) {
  ASSERT_EQ(rp({"logits", "--model", "model", "--ids", "9,9", "--out", "logits.npy"}).code, 0);
  check({"logits", {"logits", "--model", "model", "--ids", "1,2,3", "--out", "logits.npy"}, {"logits.npy"},
         {"logits.npy"}, {"logits.npy"}});
}

TEST_F(WriteFaults, Calibrate) {
  const std::vector<std::string> cal = {"calibrate", "--model", "model", "--data", "text.txt", "--tokenizer", "bytes",
                                        "--seq-len", "16", "--sequences", "4", "--seed"};
  auto with_seed = [&](const char* s) {
    auto a = cal;
    a.push_back(s);
    a.insert(a.end(), {"--out", "stats.safetensors"});
    return a;
  };
  ASSERT_EQ(rp(with_seed("9")).code, 0);
  check({"calibrate", with_seed("1"), {"stats.safetensors"}, {"stats.safetensors"}, {"stats.safetensors"}});
}

TEST_F(WriteFaults, Prune) {
  ASSERT_EQ(rp({"calibrate", "--model", "model", "--data", "text.txt", "--tokenizer", "bytes", "--seq-len", "16",
                "--sequences", "4", "--out", "stats.safetensors"})
                .code,
            0);
  check({"prune",
         {"prune", "--model", "model", "--stats", "stats.safetensors", "--method", "drrqr", "--ratio", "0.5", "--out",
          "pruned"},
         {"pruned"},
         {"stats.safetensors"},
         {"pruned"}});
}

TEST_F(WriteFaults, EvalOut) {
  ASSERT_EQ(rp({"eval", "--model", "model", "--tokenizer", "bytes", "--tasks", "piqa", "--limit", "1", "--out",
                "results.json"})
                .code,
            0);
  check({"eval",
         {"eval", "--model", "model", "--tokenizer", "bytes", "--tasks", "piqa", "--limit", "2", "--out", "results.json"},
         {"results.json"},
         {"results.json"},
         {"results.json"}});
}

TEST_F(WriteFaults, Sweep) {
  sweep("results.db", "0.25");  // results the fault must not lose
  check({"sweep",
         {"sweep", "--model", "model", "--tokenizer", "bytes", "--data", "text.txt", "--seq-len", "16", "--sequences", "4",
          "--methods", "l1,drrqr", "--ratios", "0.5", "--tasks", "piqa", "--limit", "2", "--seed", "1", "--db",
          "results.db"},
         {"results.db"},
         {},
         {"results.db"},
         "results.db"});
}

TEST_F(WriteFaults, Report) {
  sweep("results.db", "0.5");
  ASSERT_EQ(rp({"report", "--db", "results.db", "--out", "report.html"}).code, 0);
  sweep("results.db", "0.25");  // the new report differs from the previous one
  check({"report", {"report", "--db", "results.db", "--out", "report.html"}, {"report.html"}, {"report.html"},
         {"report.html", "results.db"}, "results.db"});
}

TEST_F(WriteFaults, AnalyzeOut) {
  check({"analyze",
         {"analyze", "--model", "model", "--data", "text.txt", "--tokenizer", "bytes", "--seq-len", "16", "--sequences",
          "2", "--out", "analyze.json"},
         {"analyze.json"},
         {},
         {"analyze.json"}});
}

TEST_F(WriteFaults, DbMerge) {
  sweep("a.db", "0.25");
  sweep("b.db", "0.5");
  check({"db merge", {"db", "merge", "--into", "a.db", "b.db"}, {"a.db"}, {"b.db"}, {"a.db"}, "a.db"});
}

TEST_F(WriteFaults, TrainCheckpoints) {
  // Covers the three cases this matrix first found open in worker/train.cpp: a failed log line,
  // a fault in the first checkpoint (the folder then holds only the log), and a fault in the last
  // train_state.json (the re-run must rewrite it, not say "nothing to do").
  check({"train",
         {"train", "--arch", "delta_net", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--head-k-dim",
          "8", "--head-v-dim", "8", "--vocab-size", "256", "--data", "text.txt", "--tokenizer", "bytes", "--seq-len", "16",
          "--batch-size", "2", "--steps", "2", "--checkpoint-every", "1", "--log-every", "1", "--out", "trained"},
         // train_state.safetensors holds the elapsed time in its metadata: compared through
         // train_state.json, which holds the same state in readable form.
         {"trained/model.safetensors", "trained/config.json", "trained/train_log.jsonl", "trained/train_state.json"},
         {},
         {"trained/"}});
}

}  // namespace
}  // namespace rankprune::testing
