#include "coordinator/cli.h"

#include <torch/torch.h>

#include <thread>

#include "common/error.h"
#include "model/linear_lm.h"

namespace rankprune::cli {

void add_compute_options(po::options_description& d) {
  d.add_options()
      ("dtype", po::value<std::string>()->default_value("f32"),
       "compute dtype: f32, bf16 or f64 (weights stay in the checkpoint dtype)")
      ("impl", po::value<std::string>()->default_value("auto"),
       "delta-rule implementation: auto (fla: recurrent for <= 64 tokens, else chunked), recurrent, chunked")
      ("chunk-size", po::value<int64_t>()->default_value(64), "chunk length of the chunked delta rule")
      ("threads", po::value<int>()->default_value(0), "CPU threads for LibTorch (0 = all cores)");
}

void apply_threads(const po::variables_map& vm) {
  int n = vm["threads"].as<int>();
  if (n < 0) throw UsageError(cat("--threads must be >= 0, got ", n));
  if (n == 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

ForwardOptions forward_options_from(const po::variables_map& vm) {
  ForwardOptions o;
  const std::string dt = vm["dtype"].as<std::string>();
  if (dt == "f32")
    o.dtype = torch::kFloat32;
  else if (dt == "bf16")
    o.dtype = torch::kBFloat16;
  else if (dt == "f64")
    o.dtype = torch::kFloat64;
  else
    throw UsageError(cat("--dtype: expected f32, bf16 or f64, got '", dt, "'"));
  const std::string impl = vm["impl"].as<std::string>();
  if (impl == "auto")
    o.impl = DeltaRuleImpl::Auto;
  else if (impl == "recurrent")
    o.impl = DeltaRuleImpl::Recurrent;
  else if (impl == "chunked")
    o.impl = DeltaRuleImpl::Chunked;
  else
    throw UsageError(cat("--impl: expected auto, recurrent or chunked, got '", impl, "'"));
  o.chunk_size = vm["chunk-size"].as<int64_t>();
  if (o.chunk_size < 1) throw UsageError(cat("--chunk-size must be >= 1, got ", o.chunk_size));
  apply_threads(vm);
  return o;
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw UsageError(cat("--", option, ": expected comma-separated integers, got '", text, "'"));
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<double> parse_double_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  for (const auto& item : split_list(text)) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size()) throw UsageError(cat("--", option, ": expected comma-separated numbers, got '", text, "'"));
    out.push_back(v);
  }
  if (out.empty()) throw UsageError(cat("--", option, ": no value given"));
  return out;
}

bool parse_bool(const std::string& text, const std::string& option) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  throw UsageError(cat("--", option, ": expected true or false, got '", text, "'"));
}

}  // namespace rankprune::cli
