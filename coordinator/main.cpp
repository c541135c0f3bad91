// rankprune: entry point. Dispatches `rankprune CMD [options]` to the registered subcommands and
// maps errors to exit codes: 1 = bad input (file, tensor, config), 2 = bad usage, 3 = internal.
#include <torch/torch.h>

#include <iostream>

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
      const std::string path = vm["config"].as<std::string>();
      if (!file_exists(path)) throw InputError(cat("--config: '", path, "' does not exist"));
      try {
        po::store(po::parse_config_file<char>(path.c_str(), desc), vm);
      } catch (const po::error& e) {
        throw InputError(cat("config file '", path, "': ", e.what()));
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(cat(e.what(), " (see rankprune ", cmd->name, " --help)"));
  }
  return cmd->run(vm);
}

}  // namespace

int main(int argc, char** argv) {
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
