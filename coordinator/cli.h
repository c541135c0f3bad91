// The `rankprune` command line: a registry of subcommands, each composing Boost.Program_options
// groups. Defaults live in one place (the option declaration) and `--help` prints them.
#pragma once

#include <boost/program_options.hpp>

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/communicator.h"
#include "eval/runner.h"
#include "model/linear_lm.h"
#include "prune/select.h"

namespace rankprune::cli {

namespace po = boost::program_options;

struct Command {
  std::string name;
  std::string summary;   // one line for `rankprune --help`
  std::string usage;     // synopsis for `rankprune NAME --help`
  std::function<void(po::options_description&)> declare;
  std::function<int(const po::variables_map&)> run;
  // Optional: maps positional arguments onto options declared by `declare` (e.g. `db merge A B`).
  // Commands without it ignore positional arguments, as before.
  std::function<void(po::positional_options_description&)> positional = {};
};

// --config FILE: stores the options of `path` (Boost's "name = value" lines) into `vm`, after what
// is there already (so the command line wins). InputError naming the file when it is missing,
// holds text Boost cannot report on (common/boost_po_guard.h) or does not parse.
void store_config_file(const std::string& path, const po::options_description& desc, po::variables_map& vm);

// Registration: each cmd_*.cpp adds its commands through these (called from main).
void register_model_commands(std::vector<Command>& out);
void register_prune_commands(std::vector<Command>& out);
void register_eval_commands(std::vector<Command>& out);
void register_sweep_commands(std::vector<Command>& out);  // sweep, query, report
void register_train_commands(std::vector<Command>& out);  // train
void register_finetune_commands(std::vector<Command>& out);  // finetune
void register_analyze_commands(std::vector<Command>& out);  // analyze
void register_db_commands(std::vector<Command>& out);  // db (merge)
void register_rwkv7_commands(std::vector<Command>& out);  // rwkv7 (info, logits, prune, eval)
void register_llama2c_commands(std::vector<Command>& out);  // llama2c (info, generate, ppl, compare)

// Shared option groups.
void add_compute_options(po::options_description& d);  // --dtype --impl --chunk-size --device --threads
void apply_threads(const po::variables_map& vm);
// A command not yet wired for --device cuda refuses it (only reachable in a CUDA LibTorch build:
// elsewhere forward_options_from already said "built without CUDA").
void require_cpu_until_wired(const ForwardOptions& o, const std::string& command);
// ForwardOptions from --dtype/--impl/--chunk-size/--device; applies --threads. UsageError on bad
// values, and for --device cuda where models cannot run on a GPU (kernels/gpu.h).
ForwardOptions forward_options_from(const po::variables_map& vm);

// --comm auto|local|mpi|nccl and --comm-timeout (sweep, calibrate), and the communicator they make.
void add_cluster_options(po::options_description& d);
std::unique_ptr<cluster::Communicator> communicator_from(const po::variables_map& vm);
// Runs a collective command's body on this rank. A lost peer (cluster::CommError) is printed on
// the rank that saw it and, under MPI, ends every rank (MPI_Abort) with exit code 4. Errors that
// every rank raises alike (bad input or usage: every rank reads the same files and options) are
// printed by rank 0 only; the other ranks exit with the same code quietly, as they do when rank 0
// alone failed (coord::RootFailed).
int run_collective(cluster::Communicator& comm, const std::function<int()>& body);

// Model size options shared by init and train (--arch --hidden-size --num-layers --num-heads
// --num-v-heads --head-k-dim --head-v-dim --vocab-size --intermediate-size --conv-size --use-gate
// --allow-neg-eigval --tie-embeddings --init-std) and the shape they describe (vocab as given).
void add_model_shape_options(po::options_description& d, int64_t vocab_default, const char* vocab_help);
ModelShape model_shape_from(const po::variables_map& vm);

// --seq-len of calibrate/prune/sweep: 0 when not given (the .npy rows' length, else 2048);
// UsageError when given and < 2.
int64_t calibration_seq_len(const po::variables_map& vm);

// Parses "3,17,5" into ids; UsageError naming the option on bad input.
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option);
bool parse_bool(const std::string& text, const std::string& option);
// "0.25,0.5" -> values; UsageError naming the option on bad input.
std::vector<double> parse_double_list(const std::string& text, const std::string& option);
// The current time as ISO-8601 UTC, "2026-11-23T21:29:42Z".
std::string utc_now();
// "a,b" -> {"a", "b"} (empty items dropped).
std::vector<std::string> split_list(const std::string& text);


// Evaluation options (--tasks --limit --max-length --seq-len --add-bos-token --reuse-state
// --data-dir and `batch_option`), shared by eval and sweep, and the settings they make.
void add_eval_options(po::options_description& d, const std::string& batch_option,
                      const std::string& seq_len_option);
std::string default_data_dir(const po::variables_map& vm);
eval::EvalSettings eval_settings_from(const po::variables_map& vm, const std::string& batch_option,
                                      const std::string& seq_len_option, const ModelConfig& cfg,
                                      const ForwardOptions& fo);
nlohmann::json eval_settings_json(const eval::EvalSettings& s);

}  // namespace rankprune::cli
