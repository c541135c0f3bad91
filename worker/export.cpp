#include "worker/export.h"

#include <filesystem>

#include "common/fs.h"
#include "model/safetensors.h"

namespace rankprune {

namespace fs = std::filesystem;

void write_pruned_checkpoint(const std::string& base_dir, const LinearLM& pruned, const Selection& sel,
                             const std::string& out) {
  AtomicDir tmp(out);
  if (sel.ratio == 0.0 && !sel.rotation.defined()) {
    // Nothing removed (and nothing rotated): the input files, byte for byte.
    for (const auto& e : fs::directory_iterator(base_dir))
      if (e.is_regular_file()) fs::copy_file(e.path(), fs::path(tmp.path()) / e.path().filename());
  } else {
    pruned.save(tmp.path());
    for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"})
      if (file_exists(path_join(base_dir, f))) fs::copy_file(path_join(base_dir, f), path_join(tmp.path(), f));
  }
  write_file_atomic(path_join(tmp.path(), "selection.json"), sel.to_text());
  if (sel.rotation.defined())
    save_safetensors(path_join(tmp.path(), "pca_rotation.safetensors"), {{"rotation", sel.rotation.contiguous()}},
                     {{"shape", "[layers, heads, head_k_dim_new, head_k_dim_old]"}});
  tmp.commit();
}

}  // namespace rankprune
