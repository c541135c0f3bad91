// rankprune: entry point. Dispatches `rankprune CMD [options]` to the registered subcommands and
// maps errors to exit codes: 1 = bad input (file, tensor, config), 2 = bad usage, 3 = internal.
#include <torch/torch.h>

#include <csignal>
#include <iostream>

#include "common/boost_po_guard.h"
#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"

using namespace rankprune;
using namespace rankprune::cli;

namespace {

void print_overview(const std::vector<Command>& cmds, std::ostream& os) {
  os << "rankprune — post-training key/query channel pruning for linear-attention LMs\n\n"
     << "usage: rankprune COMMAND [options]   (rankprune COMMAND --help for its options)\n\ncommands:\n";
  for (const auto& c : cmds) {
    os << "  " << c.name << std::string(c.name.size() < 12 ? 12 - c.name.size() : 1, ' ') << c.summary << "\n";
  }
}

int dispatch(int argc, char** argv) {
  std::vector<Command> cmds;
  register_model_commands(cmds);
  register_prune_commands(cmds);
  register_eval_commands(cmds);
  register_sweep_commands(cmds);
  register_train_commands(cmds);
  register_finetune_commands(cmds);
  register_analyze_commands(cmds);
  register_db_commands(cmds);
  register_rwkv7_commands(cmds);
  register_llama2c_commands(cmds);
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    print_overview(cmds, std::cout);
    return argc < 2 ? kExitUsage : kExitOk;
  }
  const std::string name = argv[1];
  const Command* cmd = nullptr;
  for (const auto& c : cmds)
    if (c.name == name) cmd = &c;
  if (!cmd) {
    print_overview(cmds, std::cerr);
    throw UsageError(cat("unknown command '", name, "'"));
  }
  // Boost.Program_options hangs formatting an error about text holding its own message tokens
  // (common/boost_po_guard.h): such arguments are refused before Boost sees them.
  for (int i = 2; i < argc; ++i)
    if (const auto tok = boost_po_token_in(argv[i]); !tok.empty())
      throw UsageError(cat("argument ", i - 1, " ('", argv[i], "') contains '", tok,
                           "', which rankprune does not accept in options or values"));
  po::options_description desc(cat("rankprune ", cmd->name, " options"));
  desc.add_options()("help,h", "show this help");
  cmd->declare(desc);
  po::variables_map vm;
  try {
    po::command_line_parser parser(argc - 1, argv + 1);
    parser.options(desc);
    po::positional_options_description positional;
    if (cmd->positional) {
      cmd->positional(positional);
      parser.positional(positional);
    }
    po::store(parser.run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: " << cmd->usage << "\n\n" << cmd->summary << "\n\n" << desc << "\n";
      return kExitOk;
    }
    // --config FILE (commands that declare it): the same options in Boost's "name = value" syntax.
    // Stored after the command line, so the command line wins.
    if (desc.find_nothrow("config", false) && vm.count("config")) {
      store_config_file(vm["config"].as<std::string>(), desc, vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(cat(e.what(), " (see rankprune ", cmd->name, " --help)"));
  }
  return cmd->run(vm);
}

}  // namespace

int main(int argc, char** argv) {
  // Past a file-size limit (ulimit -f, RLIMIT_FSIZE) a write then fails with EFBIG, which the
  // writers report naming the file, instead of SIGXFSZ killing the process without a word.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    return dispatch(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "rankprune: usage error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const InputError& e) {
    std::cerr << "rankprune: error: " << e.what() << "\n";
    return kExitInput;
  } catch (const InternalError& e) {
    std::cerr << "rankprune: internal error (please report): " << e.what() << "\n";
    return kExitInternal;
  } catch (const c10::Error& e) {
    std::cerr << "rankprune: error from LibTorch: " << e.what_without_backtrace() << "\n";
    return kExitInternal;
  } catch (const std::exception& e) {
    std::cerr << "rankprune: error: " << e.what() << "\n";
    return kExitInput;
  }
}
