// config.json through LinearLM::load (the path of `rankprune info`, `logits`, `prune`, ...): the
// fuzzer writes config.json into two folders holding real tiny checkpoints, a DeltaNet and a
// Gated DeltaNet one. The config must be believed only as far as the weights back it (the
// 10^9-layer config of issue 17), so no input may allocate beyond libFuzzer's limits. An
// accepted config must round-trip through to_json / from_json and run a 3-token forward.
#include "fuzz/fuzz_common.h"
#include "model/linear_lm.h"

using namespace rankprune;

namespace {
std::string g_dirs[2];

std::string make_model(Arch arch, const std::string& name) {
  ModelShape s;
  s.arch = arch, s.hidden_size = 16, s.num_layers = 2, s.num_heads = 2, s.head_k_dim = 4, s.head_v_dim = 4;
  s.vocab_size = 32;
  const ModelConfig c = build_model_config(s);
  const std::string dir = fuzz::scratch_file(name);
  std::filesystem::create_directories(dir);
  LinearLM(c, init_random_weights(c, 7, torch::kFloat32)).save(dir);
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  g_dirs[0] = make_model(Arch::DeltaNet, "dn");
  g_dirs[1] = make_model(Arch::GatedDeltaNet, "gdn");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (const auto& dir : g_dirs) {
    fuzz::put(dir + "/config.json", data, size);
    fuzz::expect_clean([&] {
      const LinearLM m = LinearLM::load(dir);
      const ModelConfig& c = m.config();
      RP_FUZZ_CHECK(c.num_tensors() == static_cast<int64_t>(expected_tensors(c).size()), "tensor count");
      const ModelConfig back = ModelConfig::from_json(c.to_json(), "round trip");
      RP_FUZZ_CHECK(back.to_json() == c.to_json() && back.num_parameters() == c.num_parameters() &&
                        back.head_k_dim == c.head_k_dim && back.head_v_dim == c.head_v_dim,
                    "to_json / from_json round trip");
      torch::NoGradGuard ng;
      const auto ids = torch::tensor({1, 2, 3}, torch::kLong).reshape({1, 3}).remainder(c.vocab_size);
      const torch::Tensor logits = m.forward(ids);
      RP_FUZZ_CHECK(logits.size(2) == c.vocab_size, "logits shape");
    });
  }
  return 0;
}
