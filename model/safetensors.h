// safetensors reading and writing (https://github.com/huggingface/safetensors format):
//   [u64 little-endian N][N bytes of JSON header][data section]
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data section) plus an optional "__metadata__" object of string -> string.
//
// Reading mmaps the file; tensor() returns a CPU tensor that aliases the mapping (zero copy, the
// checkpoint dtype is kept), holding the mapping alive. Every header is validated before use:
// header length vs file size, JSON syntax, dtype names, shape * itemsize == byte range, ranges
// inside the data section, ranges not overlapping, duplicate names. A violation throws InputError
// naming the file and the tensor.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rankprune {

// Dtypes rankprune reads and writes. Names are safetensors' ("F32", "BF16", ...).
enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(StDtype d);
std::size_t dtype_size(StDtype d);
bool parse_dtype(const std::string& name, StDtype* out);  // false for unknown names
torch::ScalarType to_torch(StDtype d);
StDtype from_torch(torch::ScalarType t);  // InputError for types safetensors cannot hold

struct TensorInfo {
  std::string name;
  StDtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section
  int64_t numel() const;
};

// One mmap'ed .safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return infos_; }  // in data-offset order
  const TensorInfo* find(const std::string& name) const;             // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }

  // Zero-copy view of the tensor's bytes (copied only if the data is misaligned for its dtype).
  // The mapping is private: in-place writes never reach the file, but later views of the same
  // tensor from this file see them.
  torch::Tensor tensor(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> infos_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// A checkpoint folder: model.safetensors, or shards listed in model.safetensors.index.json
// ({"metadata": {...}, "weight_map": {tensor name: shard file}}). Also accepts the path of a
// single .safetensors file. A folder holding both model.safetensors and the index is refused as
// ambiguous (one of them is stale).
class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // InputError if absent
  torch::Tensor tensor(const std::string& name) const;   // InputError naming the tensor if absent
  std::map<std::string, std::string> metadata() const;  // of the first shard
  uint64_t total_bytes() const;                          // sum of tensor byte sizes
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t> where_;  // tensor -> index in files_
};

// Writes tensors (contiguous copies are made as needed; dtype kept) to one .safetensors file,
// atomically (temp + rename). Names must be unique. The header is padded with spaces so the
// data section starts at a multiple of 8 bytes.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into folder `dir` (which must exist): model.safetensors when the total
// fits in `max_shard_bytes` (0 = no limit), otherwise model-0000i-of-0000n.safetensors shards
// plus model.safetensors.index.json, as Hugging Face does. A file of the other layout left in
// `dir` by an earlier save is removed.
void save_checkpoint(const std::string& dir,
                     const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata = {},
                     uint64_t max_shard_bytes = 0);

}  // namespace rankprune
