// One .npy file through read_npy (calibration and training token arrays, `logits --out`
// round trips). An accepted array must round-trip through write_npy bit for bit.
#include <cstring>

#include "fuzz/fuzz_common.h"
#include "model/npy.h"

using namespace rankprune;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.npy"), again = fuzz::scratch_file("again.npy");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    const torch::Tensor t = read_npy(path);
    write_npy(again, t);
    const torch::Tensor u = read_npy(again);
    RP_FUZZ_CHECK(u.scalar_type() == t.scalar_type() && u.sizes() == t.sizes() &&
                      (t.numel() == 0 || std::memcmp(u.data_ptr(), t.data_ptr(), t.numel() * t.element_size()) == 0),
                  "write_npy round trip");
  });
  return 0;
}
