#include "coordinator/sweep_plan.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "prune/select.h"
#include "storage/format.h"

namespace rankprune::plan {

std::string VariantKey::label() const {
  if (method == "none") return "baseline";
  std::string s = cat(method, " ", storage::format_ratio(ratio));
  if (method == "random") s += cat(" seed ", seed);
  return s;
}

std::string VariantKey::folder() const { return cat(method, "-", storage::format_ratio(ratio), "-seed", seed); }

std::vector<VariantKey> plan_variants(const std::vector<std::string>& methods, const std::vector<double>& ratios,
                                      const std::vector<int64_t>& random_seeds) {
  if (methods.empty()) throw UsageError("--methods: no method given");
  if (ratios.empty()) throw UsageError("--ratios: no ratio given");
  for (const auto& m : methods) check_method(m);
  for (double r : ratios)
    if (!(r > 0 && r < 1)) throw UsageError(cat("--ratios: every ratio must be in (0, 1), got ", r));
  bool any_random = std::find(methods.begin(), methods.end(), "random") != methods.end();
  if (any_random && random_seeds.empty()) throw UsageError("--random-seeds: no seed given");
  std::vector<VariantKey> out;
  out.push_back({"none", 0.0, 0, false});
  for (const auto& m : methods)
    for (double r : ratios)
      for (int64_t s : (m == "random" ? random_seeds : std::vector<int64_t>{0}))
        out.push_back({m, r, s, method_needs_statistics(m)});
  return out;
}

std::vector<JobRef> plan_jobs(const std::vector<VariantKey>& variants, const std::vector<std::string>& tasks) {
  std::vector<JobRef> out;
  for (std::size_t v = 0; v < variants.size(); ++v)
    for (const auto& t : tasks) out.push_back({v, t});
  return out;
}

std::string eval_identity(const eval::EvalSettings& s, const std::string& tokenizer_sha) {
  nlohmann::json j = {{"add_bos_token", s.add_bos},
                      {"limit", s.limit > 0 ? nlohmann::json(s.limit) : nlohmann::json(nullptr)},
                      {"max_length", s.engine.max_length},
                      {"token_perplexity_seq_len", s.seq_len},
                      {"dtype", std::string(c10::toString(s.engine.forward.dtype))},
                      {"tokenizer_sha256", tokenizer_sha}};
  return j.dump();
}

std::vector<Shard> plan_shards(const std::vector<std::vector<eval::Unit>>& units, int world) {
  RP_ASSERT(world >= 1);
  int64_t total = 0;
  for (const auto& job : units)
    for (const auto& u : job) total += u.tokens;
  const int64_t target = world == 1 ? INT64_MAX : std::max<int64_t>(1, total / (4 * static_cast<int64_t>(world)));
  std::vector<Shard> out;
  for (std::size_t j = 0; j < units.size(); ++j) {
    Shard s{j, 0, 0, 0};
    for (std::size_t u = 0; u < units[j].size(); ++u) {
      s.hi = u + 1;
      s.tokens += units[j][u].tokens;
      if (s.tokens >= target && s.hi < units[j].size()) {
        out.push_back(s);
        s = {j, s.hi, s.hi, 0};
      }
    }
    out.push_back(s);  // the rest (a job without units is one empty shard: its metrics still get computed)
  }
  return out;
}

}  // namespace rankprune::plan
