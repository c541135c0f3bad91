// A llama2.c legacy .bin through the path `rankprune llama2c ...` takes (Llama2cModel::load,
// which validates the header against the file size first). An accepted file must report the
// header's sizes and parameter count and run a 3-token forward to logits of the right shape.
#include "fuzz/fuzz_common.h"
#include "model/llama2c.h"

using namespace rankprune;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.bin");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    const Llama2cConfig h = read_llama2c_header(path);
    RP_FUZZ_CHECK(28 + 4 * h.file_floats() == static_cast<int64_t>(size), "header accepted for a file of other size");
    const Llama2cModel m = Llama2cModel::load(path);
    const auto& c = m.config();
    RP_FUZZ_CHECK(c.dim == h.dim && c.n_layers == h.n_layers && c.vocab_size == h.vocab_size, "header fields");
    RP_FUZZ_CHECK(m.num_parameters() > 0 && m.attention_parameters() > 0, "parameter counts");
    const int64_t T = std::min<int64_t>(3, c.seq_len);
    const torch::Tensor ids = torch::arange(T, torch::kLong).remainder(c.vocab_size).reshape({1, T});
    const torch::Tensor logits = m.logits(ids);
    RP_FUZZ_CHECK(logits.sizes() == torch::IntArrayRef({1, T, c.vocab_size}), "logits shape");
  });
  return 0;
}
