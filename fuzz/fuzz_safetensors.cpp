// One .safetensors file through SafetensorsFile::open (what every checkpoint and statistics load
// starts with), then every tensor viewed and its bytes read. An accepted file must round-trip:
// save_safetensors of what was read, opened again, gives the same names, dtypes, shapes, bytes
// and metadata.
#include <cstring>

#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"

using namespace rankprune;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.safetensors");
  static const std::string again = fuzz::scratch_file("again.safetensors");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    auto f = SafetensorsFile::open(path);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& info : f->tensors()) {
      torch::Tensor t = f->tensor(info.name);
      RP_FUZZ_CHECK(t.numel() == info.numel() && t.sizes().vec() == info.shape, info.name);
      RP_FUZZ_CHECK(static_cast<uint64_t>(t.numel()) * dtype_size(info.dtype) == info.end - info.begin, info.name);
      tensors.emplace_back(info.name, t);
    }
    save_safetensors(again, tensors, f->metadata());
    auto g = SafetensorsFile::open(again);
    RP_FUZZ_CHECK(g->tensors().size() == tensors.size() && g->metadata() == f->metadata(), "round trip");
    for (const auto& [name, t] : tensors) {
      const torch::Tensor u = g->tensor(name);
      const torch::Tensor a = t.contiguous(), b = u.contiguous();
      RP_FUZZ_CHECK(u.scalar_type() == t.scalar_type() && u.sizes() == t.sizes() &&
                        (a.numel() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0),
                    "round trip of ", name);
    }
  });
  // The same file as a checkpoint path (Checkpoint::open of a single file).
  fuzz::expect_clean([&] {
    const Checkpoint ck = Checkpoint::open(path);
    for (const auto& n : ck.names()) (void)ck.tensor(n);
  });
  return 0;
}
