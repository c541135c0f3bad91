// model.safetensors.index.json through Checkpoint::open of a folder that also holds two real
// shards (tensors a, b in the first, c in the second): the fuzzer writes the index.
#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"

using namespace rankprune;

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  g_dir = fuzz::scratch_file("sharded");
  std::filesystem::create_directories(g_dir);
  save_safetensors(g_dir + "/model-00001-of-00002.safetensors",
                   {{"a", torch::arange(6, torch::kFloat32).reshape({2, 3})}, {"b", torch::ones({4}, torch::kBFloat16)}},
                   {{"format", "pt"}});
  save_safetensors(g_dir + "/model-00002-of-00002.safetensors", {{"c", torch::zeros({1, 2}, torch::kFloat64)}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::put(g_dir + "/model.safetensors.index.json", data, size);
  fuzz::expect_clean([&] {
    const Checkpoint ck = Checkpoint::open(g_dir);
    uint64_t bytes = 0;
    for (const auto& n : ck.names()) {
      const TensorInfo& info = ck.info(n);
      bytes += info.end - info.begin;
      RP_FUZZ_CHECK(ck.tensor(n).numel() == info.numel(), n);
    }
    RP_FUZZ_CHECK(bytes == ck.total_bytes(), "total_bytes");
  });
  return 0;
}
