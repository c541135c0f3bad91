// A sweep --config file (Boost's "name = value" lines) through the same parse the CLI does
// (cli::store_config_file with `rankprune sweep`'s options, the command line first, as
// coordinator/main.cpp), then the option checks `run_sweep` makes before it loads anything: the method / ratio
// / seed lists into variants, the task list, the calibration length, the lease. UsageError and
// InputError are refusals; anything else is a finding.
#include <sstream>

#include "common/fs.h"
#include "coordinator/cli.h"
#include "coordinator/sweep_plan.h"
#include "fuzz/fuzz_common.h"

using namespace rankprune;
using namespace rankprune::cli;

namespace {
const Command* g_sweep = nullptr;
std::vector<Command> g_cmds;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  register_sweep_commands(g_cmds);
  for (const auto& c : g_cmds)
    if (c.name == "sweep") g_sweep = &c;
  if (!g_sweep) std::abort();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("sweep.ini");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    po::options_description desc("rankprune sweep options");
    desc.add_options()("help,h", "show this help");
    g_sweep->declare(desc);
    po::variables_map vm;
    try {
      const char* argv[] = {"sweep", "--db", ":memory:"};
      po::store(po::command_line_parser(3, const_cast<char**>(argv)).options(desc).run(), vm);
      store_config_file(path, desc, vm);  // as coordinator/main.cpp, the guard included
      po::notify(vm);
    } catch (const po::error& e) {
      throw UsageError(e.what());
    }
    const auto methods = split_list(vm["methods"].as<std::string>());
    const auto ratios = parse_double_list(vm["ratios"].as<std::string>(), "ratios");
    const auto seeds = parse_int_list(vm["random-seeds"].as<std::string>(), "random-seeds");
    // The plan is methods x ratios x seeds variants, as many as the user asks for: a 4 KB file of
    // lists can ask for millions, which is the user's request, not a reader's amplification.
    if (methods.size() * ratios.size() * seeds.size() <= 10000) {
      const auto variants = plan::plan_variants(methods, ratios, seeds);
      RP_FUZZ_CHECK(!variants.empty(), "no variants");
    }
    (void)eval::parse_task_list(vm["tasks"].as<std::string>());
    (void)calibration_seq_len(vm);
    std::ostringstream os;
    for (const auto& [k, v] : vm) os << k << (v.defaulted() ? "*" : "") << ";";
  });
  return 0;
}
