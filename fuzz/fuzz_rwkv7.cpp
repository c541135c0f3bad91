// An rwkv.cpp model file through the path `rankprune rwkv7 ...` takes (Rwkv7Model::load:
// RwkvFile::read, then the RWKV-7 layout). An accepted file must serialise back to the same
// bytes, run a 3-token forward to logits of the right shape, and survive a key slice that keeps
// one channel per head (the pruning path).
#include <cstring>

#include "fuzz/fuzz_common.h"
#include "model/rwkv7.h"

using namespace rankprune;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.bin");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    const Rwkv7Model m = Rwkv7Model::load(path);
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    RP_FUZZ_CHECK(m.file().serialize() == bytes, "an accepted file serialises to other bytes");
    const auto& c = m.config();
    const std::vector<int64_t> toks = {0, c.n_vocab - 1, 1 % c.n_vocab};
    const torch::Tensor ids = torch::tensor(toks, torch::kLong).reshape({1, 3});
    const torch::Tensor logits = m.forward(ids);
    RP_FUZZ_CHECK(logits.sizes() == torch::IntArrayRef({1, 3, static_cast<int64_t>(c.n_vocab)}), "logits shape");
    std::vector<std::vector<std::vector<int64_t>>> kept(c.n_layer, std::vector<std::vector<int64_t>>(c.n_heads, {0}));
    const Rwkv7Model pruned = m.slice_keys(kept);
    RP_FUZZ_CHECK(pruned.config().head_k == 1, "slice to one key channel");
    (void)pruned.forward(ids);
  });
  return 0;
}
