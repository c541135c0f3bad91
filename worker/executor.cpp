#include "worker/executor.h"

#include "common/error.h"

namespace rankprune {

Executor::Executor(const LinearLM& base, const Tokenizer& tok, eval::EvalSettings settings)
    : base_(base), tok_(tok), settings_(std::move(settings)) {}

void Executor::set_variants(std::vector<Variant> variants) {
  variants_ = std::move(variants);
  loaded_ = -1;
  pruned_.reset();
}

const eval::PreparedTask& Executor::task(const std::string& name) {
  auto it = tasks_.find(name);
  if (it == tasks_.end()) it = tasks_.emplace(name, eval::prepare_task(name, tok_, settings_)).first;
  return it->second;
}

const LinearLM& Executor::model(int64_t variant) {
  RP_ASSERT(variant >= 0 && variant < static_cast<int64_t>(variants_.size()), "variant ", variant, " of ",
            variants_.size());
  const Variant& v = variants_[static_cast<std::size_t>(variant)];
  if (v.method == "none") return base_;
  if (loaded_ != variant) {
    pruned_.reset();  // free the previous variant's tensors before making the next
    pruned_.emplace(apply_selection(base_, v.selection));
    loaded_ = variant;
  }
  return *pruned_;
}

proto::ShardResult Executor::run(const proto::WorkItem& item, const std::function<void()>& between) {
  const auto t0 = std::chrono::steady_clock::now();
  const eval::PreparedTask& t = task(item.task);
  const LinearLM& m = model(item.variant);
  RP_ASSERT(item.lo >= 0 && item.lo <= item.hi && static_cast<std::size_t>(item.hi) <= t.units().size(), "units [",
            item.lo, ", ", item.hi, ") of ", item.task);
  eval::ProgressFn progress = nullptr;
  if (between) progress = [&](int64_t, int64_t) { between(); };
  proto::ShardResult r;
  r.id = item.id;
  r.units = eval::score_units(m, t, static_cast<std::size_t>(item.lo), static_cast<std::size_t>(item.hi), progress);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace rankprune
