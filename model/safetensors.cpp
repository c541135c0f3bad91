#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/fs.h"

// Tensor bytes are mapped and written as they sit in memory; safetensors is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "rankprune assumes a little-endian host");

namespace rankprune {

using json = nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kMetadataKey = "__metadata__";
// The safetensors format caps the JSON header at 100 MB (the reference implementation refuses
// larger ones); parsing a header costs a few tens of bytes per header byte, so the cap also
// bounds a hostile file's memory.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeRow {
  StDtype dtype;
  const char* name;
  std::size_t size;
  torch::ScalarType torch_type;
};

constexpr DtypeRow kDtypes[] = {
    {StDtype::F64, "F64", 8, torch::kDouble},   {StDtype::F32, "F32", 4, torch::kFloat},
    {StDtype::F16, "F16", 2, torch::kHalf},     {StDtype::BF16, "BF16", 2, torch::kBFloat16},
    {StDtype::I64, "I64", 8, torch::kLong},     {StDtype::I32, "I32", 4, torch::kInt},
    {StDtype::I16, "I16", 2, torch::kShort},    {StDtype::I8, "I8", 1, torch::kChar},
    {StDtype::U8, "U8", 1, torch::kByte},       {StDtype::BOOL, "BOOL", 1, torch::kBool},
};

const DtypeRow& row_of(StDtype d) {
  for (const auto& r : kDtypes)
    if (r.dtype == d) return r;
  throw_internal(__FILE__, __LINE__, cat("unknown StDtype ", static_cast<int>(d)));
}

// The first key that appears twice inside one JSON object, and the key under which that object
// sits ("" for the top level).
struct DuplicateKey {
  bool found = false;
  std::string key;
  std::string parent;
};

// nlohmann::json keeps only the last of duplicate keys, which would let a header silently drop a
// tensor (or let two shards claim one), so duplicates are detected while parsing.
json parse_json_checked(const char* begin, const char* end, DuplicateKey* dup) {
  struct Frame {
    std::string parent;
    std::string last_key;
    std::set<std::string> keys;
  };
  std::vector<Frame> stack;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        stack.push_back(Frame{stack.empty() ? std::string() : stack.back().last_key, {}, {}});
        break;
      case json::parse_event_t::key: {
        if (stack.empty()) break;
        auto key = parsed.get<std::string>();
        if (!stack.back().keys.insert(key).second && !dup->found) {
          dup->found = true;
          dup->key = key;
          dup->parent = stack.back().parent;
        }
        stack.back().last_key = std::move(key);
        break;
      }
      case json::parse_event_t::object_end:
        if (!stack.empty()) stack.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  return json::parse(begin, end, cb);
}

// Reads a JSON integer that must be >= 0 and fit in int64 (torch sizes and offsets both do).
bool get_nonneg_int(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = u;
    return true;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

// A tensor's byte size; false when it, or the element count of its non-zero dimensions, does
// not fit in 64 bits (an empty [0, 2^62, 2^62] holds no bytes, but LibTorch refuses its sizes).
bool byte_size(const std::vector<int64_t>& shape, std::size_t itemsize, uint64_t* out) {
  uint64_t n = itemsize, nonzero = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
    if (d != 0 && (__builtin_mul_overflow(nonzero, static_cast<uint64_t>(d), &nonzero) ||
                   nonzero > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      return false;
  }
  *out = n;
  return true;
}

struct PreparedTensor {
  const std::string* name;
  const torch::Tensor* tensor;
  StDtype dtype;
  uint64_t nbytes;
};

// Validates names and dtypes before any byte is written, so a bad input leaves no output.
std::vector<PreparedTensor> prepare(const std::string& path,
                                    const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<PreparedTensor> out;
  out.reserve(tensors.size());
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    RP_CHECK_INPUT(!name.empty(), "writing '", path, "': a tensor has an empty name");
    RP_CHECK_INPUT(name != kMetadataKey, "writing '", path, "': '", kMetadataKey,
                   "' is reserved and cannot name a tensor");
    RP_CHECK_INPUT(seen.insert(name).second, "writing '", path, "': duplicate tensor name '", name, "'");
    RP_CHECK_INPUT(t.defined(), "writing '", path, "': tensor '", name, "' is undefined");
    StDtype d;
    try {
      d = from_torch(t.scalar_type());
    } catch (const InputError& e) {
      throw InputError(cat("writing '", path, "': tensor '", name, "': ", e.what()));
    }
    out.push_back({&name, &t, d, static_cast<uint64_t>(t.numel()) * dtype_size(d)});
  }
  return out;
}

std::string safetensors_header(const std::string& path, const std::vector<PreparedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header[kMetadataKey] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t offset = 0;
  for (const auto& p : tensors) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(p.dtype);
    entry["shape"] = p.tensor->sizes().vec();
    entry["data_offsets"] = {offset, offset + p.nbytes};
    header[*p.name] = std::move(entry);
    offset += p.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    // Only invalid UTF-8 in a name or metadata string gets here.
    throw InputError(cat("writing '", path, "': a tensor name or metadata string is not valid UTF-8 (",
                         e.what(), ")"));
  }
  // Spaces (valid JSON whitespace) pad the header so the data section starts 8-byte aligned,
  // which keeps every F64/I64 tensor whose offset is a multiple of 8 mappable in place.
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  return text;
}

void write_u64_le(AtomicFile& f, uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  f.write(b, 8);
}

void write_prepared(const std::string& path, const std::vector<PreparedTensor>& tensors,
                    const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header(path, tensors, metadata);
  AtomicFile f(path);
  write_u64_le(f, header.size());
  f.write(header);
  for (const auto& p : tensors) {
    if (p.nbytes == 0) continue;
    // One contiguous CPU copy at a time (when one is needed at all) keeps peak memory at the
    // largest tensor rather than the whole checkpoint.
    torch::Tensor c = p.tensor->to(torch::kCPU).contiguous();
    f.write(c.data_ptr(), p.nbytes);
  }
  f.commit();
}

std::string shard_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

}  // namespace

// --- dtypes ---------------------------------------------------------------------------------

const char* dtype_name(StDtype d) { return row_of(d).name; }
std::size_t dtype_size(StDtype d) { return row_of(d).size; }
torch::ScalarType to_torch(StDtype d) { return row_of(d).torch_type; }

bool parse_dtype(const std::string& name, StDtype* out) {
  for (const auto& r : kDtypes) {
    if (name == r.name) {
      *out = r.dtype;
      return true;
    }
  }
  return false;
}

StDtype from_torch(torch::ScalarType t) {
  for (const auto& r : kDtypes)
    if (r.torch_type == t) return r.dtype;
  throw InputError(cat("torch dtype ", c10::toString(t), " cannot be stored in safetensors (supported: "
                       "F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"));
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// --- SafetensorsFile ------------------------------------------------------------------------

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->self_ = f;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  RP_CHECK_INPUT(fd >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw InputError(cat("cannot stat safetensors file '", path, "': ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(cat("safetensors file '", path, "' is not a regular file"));
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    throw InputError(cat("safetensors file '", path, "' is ", f->size_,
                         " bytes, shorter than the 8-byte header length prefix (truncated or not safetensors)"));
  }
  // PROT_WRITE with MAP_PRIVATE: an in-place op on a returned tensor gets private copy-on-write
  // pages instead of a SIGSEGV, and can never reach the file (which is opened read-only).
  void* m = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file referenced
  RP_CHECK_INPUT(m != MAP_FAILED, "cannot mmap safetensors file '", path, "': ", std::strerror(map_err));
  f->map_ = m;

  const auto* bytes = static_cast<const unsigned char*>(m);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  RP_CHECK_INPUT(n <= f->size_ - 8, "safetensors file '", path, "': header length ", n,
                 " extends past the end of the file (file is ", f->size_,
                 " bytes; expected 8 + header length <= file size)");
  RP_CHECK_INPUT(n <= kMaxHeaderBytes, "safetensors file '", path, "': header length ", n,
                 " exceeds the format's limit of ", kMaxHeaderBytes, " bytes");
  f->data_start_ = 8 + n;
  const uint64_t data_size = f->size_ - f->data_start_;

  DuplicateKey dup;
  json header;
  try {
    const char* h = reinterpret_cast<const char*>(bytes + 8);
    header = parse_json_checked(h, h + n, &dup);
  } catch (const json::exception& e) {
    throw InputError(cat("safetensors file '", path, "': header is not valid JSON: ", e.what()));
  }
  RP_CHECK_INPUT(header.is_object(), "safetensors file '", path, "': header must be a JSON object, got ",
                 header.type_name());
  if (dup.found) {
    if (dup.parent.empty())
      throw InputError(cat("safetensors file '", path, "': duplicate tensor name '", dup.key, "' in header"));
    throw InputError(cat("safetensors file '", path, "': duplicate key '", dup.key, "' in header entry '",
                         dup.parent, "'"));
  }

  for (const auto& [name, entry] : header.items()) {
    const std::string where = cat("safetensors file '", path, "': tensor '", name, "': ");
    if (name == kMetadataKey) {
      RP_CHECK_INPUT(entry.is_object(), "safetensors file '", path, "': ", kMetadataKey,
                     " must be an object of string values, got ", entry.type_name());
      for (const auto& [k, v] : entry.items()) {
        RP_CHECK_INPUT(v.is_string(), "safetensors file '", path, "': ", kMetadataKey, " value of '", k,
                       "' must be a string, got ", v.type_name());
        f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    RP_CHECK_INPUT(entry.is_object(), where, "entry must be an object with dtype, shape and data_offsets, got ",
                   entry.type_name());
    for (const char* key : {"dtype", "shape", "data_offsets"})
      RP_CHECK_INPUT(entry.contains(key), where, "missing '", key, "'");

    TensorInfo info;
    info.name = name;
    const json& dt = entry["dtype"];
    RP_CHECK_INPUT(dt.is_string(), where, "dtype must be a string, got ", dt.type_name());
    RP_CHECK_INPUT(parse_dtype(dt.get<std::string>(), &info.dtype), where, "unknown dtype '",
                   dt.get<std::string>(), "' (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");

    const json& shape = entry["shape"];
    RP_CHECK_INPUT(shape.is_array(), where, "shape must be an array of non-negative integers, got ",
                   shape.type_name());
    for (const auto& d : shape) {
      uint64_t v = 0;
      RP_CHECK_INPUT(get_nonneg_int(d, &v), where, "shape ", shape.dump(),
                     " must contain only non-negative integers");
      info.shape.push_back(static_cast<int64_t>(v));
    }

    const json& off = entry["data_offsets"];
    RP_CHECK_INPUT(off.is_array() && off.size() == 2 && get_nonneg_int(off[0], &info.begin) &&
                       get_nonneg_int(off[1], &info.end),
                   where, "data_offsets ", off.dump(), " must be two non-negative integers [begin, end]");
    RP_CHECK_INPUT(info.begin <= info.end, where, "data_offsets ", off.dump(), " are reversed (begin > end)");
    RP_CHECK_INPUT(info.end <= data_size, where, "data_offsets ", off.dump(),
                   " end beyond the data section, which is ", data_size,
                   " bytes (file truncated or offsets wrong)");

    uint64_t expected = 0;
    RP_CHECK_INPUT(byte_size(info.shape, dtype_size(info.dtype), &expected), where, "shape ", shape.dump(),
                   " is too large");
    RP_CHECK_INPUT(expected == info.end - info.begin, where, "shape ", shape.dump(), " of ",
                   dtype_name(info.dtype), " needs ", expected, " bytes but data_offsets ", off.dump(),
                   " span ", info.end - info.begin);
    f->infos_.push_back(std::move(info));
  }

  std::sort(f->infos_.begin(), f->infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  // Empty tensors occupy no bytes, so only non-empty ranges can overlap.
  const TensorInfo* prev = nullptr;
  for (const auto& info : f->infos_) {
    if (info.begin == info.end) continue;
    if (prev)
      RP_CHECK_INPUT(info.begin >= prev->end, "safetensors file '", path, "': tensor '", info.name,
                     "' bytes [", info.begin, ", ", info.end, ") overlap tensor '", prev->name, "' bytes [",
                     prev->begin, ", ", prev->end, ")");
    prev = &info;
  }
  for (std::size_t i = 0; i < f->infos_.size(); ++i) f->index_[f->infos_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &infos_[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  RP_CHECK_INPUT(info != nullptr, "safetensors file '", path_, "' has no tensor '", name, "'");
  auto options = torch::TensorOptions().dtype(to_torch(info->dtype)).device(torch::kCPU);
  if (info->begin == info->end) return torch::empty(info->shape, options);

  auto* data = static_cast<unsigned char*>(map_) + data_start_ + info->begin;
  if (info->dtype == StDtype::BOOL) {
    // torch assumes bool bytes are 0 or 1; anything else is undefined behaviour downstream.
    const unsigned char* bad = std::find_if(data, data + (info->end - info->begin),
                                            [](unsigned char c) { return c > 1; });
    RP_CHECK_INPUT(bad == data + (info->end - info->begin), "safetensors file '", path_, "': tensor '", name,
                   "': BOOL byte ", static_cast<int>(*bad), " at offset ", bad - data, " is not 0 or 1");
  }
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(info->dtype) != 0) {
    // Misaligned typed loads are undefined behaviour (and slow or faulting in vector kernels):
    // copy into an aligned buffer instead. The view below is only alive during the clone.
    return torch::from_blob(data, info->shape, options).clone();
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  RP_ASSERT(keep != nullptr, "SafetensorsFile not owned by a shared_ptr");
  // The deleter owns a reference to this file, so the mapping outlives every tensor viewing it.
  return torch::from_blob(data, info->shape, [keep](void*) {}, options);
}

// --- Checkpoint -----------------------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint ck;
  ck.path_ = path;
  if (!is_directory(path)) {
    RP_CHECK_INPUT(file_exists(path), "checkpoint '", path, "' does not exist (expected a directory with ",
                   kSingleFile, " or ", kIndexFile, ", or a .safetensors file)");
    ck.files_.push_back(SafetensorsFile::open(path));
  } else {
    const std::string single = path_join(path, kSingleFile);
    const std::string index = path_join(path, kIndexFile);
    const bool has_single = file_exists(single), has_index = file_exists(index);
    // Both present usually means a re-save left a stale copy; picking either could load old data.
    RP_CHECK_INPUT(!(has_single && has_index), "checkpoint directory '", path, "' contains both ", kSingleFile,
                   " and ", kIndexFile, "; remove the stale one");
    RP_CHECK_INPUT(has_single || has_index, "checkpoint directory '", path, "' contains neither ", kSingleFile,
                   " nor ", kIndexFile);
    if (has_single) {
      ck.files_.push_back(SafetensorsFile::open(single));
    } else {
      const std::string text = read_file(index);
      DuplicateKey dup;
      json j;
      try {
        j = parse_json_checked(text.data(), text.data() + text.size(), &dup);
      } catch (const json::exception& e) {
        throw InputError(cat("checkpoint index '", index, "' is not valid JSON: ", e.what()));
      }
      RP_CHECK_INPUT(j.is_object(), "checkpoint index '", index, "' must be a JSON object, got ", j.type_name());
      RP_CHECK_INPUT(j.contains("weight_map") && j["weight_map"].is_object(), "checkpoint index '", index,
                     "' must have a \"weight_map\" object {tensor name: shard file}");
      if (dup.found) {
        if (dup.parent == "weight_map")
          throw InputError(cat("checkpoint index '", index, "': tensor '", dup.key,
                               "' is listed more than once in weight_map"));
        throw InputError(cat("checkpoint index '", index, "': duplicate key '", dup.key, "'"));
      }
      if (j.contains("metadata"))
        RP_CHECK_INPUT(j["metadata"].is_object(), "checkpoint index '", index, "': \"metadata\" must be an object");
      const json& wm = j["weight_map"];
      RP_CHECK_INPUT(!wm.empty(), "checkpoint index '", index, "': weight_map is empty");

      std::map<std::string, std::vector<std::string>> by_shard;  // sorted: deterministic shard order
      for (const auto& [name, file] : wm.items()) {
        RP_CHECK_INPUT(file.is_string(), "checkpoint index '", index, "': weight_map entry of tensor '", name,
                       "' must be a shard file name, got ", file.type_name());
        const std::string shard = file.get<std::string>();
        // Shards live beside the index (as Hugging Face writes them); a path here is an error.
        RP_CHECK_INPUT(!shard.empty() && shard != "." && shard != ".." && shard.find('/') == std::string::npos,
                       "checkpoint index '", index, "': tensor '", name, "' names shard '", shard,
                       "'; expected a file name inside '", path, "'");
        by_shard[shard].push_back(name);
      }
      for (const auto& [shard, names] : by_shard) {
        const std::string shard_path = path_join(path, shard);
        RP_CHECK_INPUT(file_exists(shard_path), "checkpoint index '", index, "' lists shard file '", shard,
                       "' (for tensor '", names.front(), "'), but '", shard_path, "' does not exist");
        auto f = SafetensorsFile::open(shard_path);
        for (const auto& name : names)
          RP_CHECK_INPUT(f->find(name) != nullptr, "checkpoint index '", index, "' places tensor '", name,
                         "' in shard '", shard, "', which does not contain it");
        ck.files_.push_back(std::move(f));
      }
    }
  }
  for (std::size_t i = 0; i < ck.files_.size(); ++i) {
    for (const auto& info : ck.files_[i]->tensors()) {
      auto [it, inserted] = ck.where_.emplace(info.name, i);
      RP_CHECK_INPUT(inserted, "checkpoint '", path, "': tensor '", info.name, "' appears in both '",
                     ck.files_[it->second]->path(), "' and '", ck.files_[i]->path(), "'");
    }
  }
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

bool Checkpoint::has(const std::string& name) const { return where_.count(name) != 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  RP_CHECK_INPUT(it != where_.end(), "checkpoint '", path_, "' has no tensor '", name, "'");
  return *files_[it->second]->find(name);
}

torch::Tensor Checkpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  RP_CHECK_INPUT(it != where_.end(), "checkpoint '", path_, "' has no tensor '", name, "'");
  return files_[it->second]->tensor(name);
}

std::map<std::string, std::string> Checkpoint::metadata() const {
  return files_.empty() ? std::map<std::string, std::string>{} : files_.front()->metadata();
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_)
    for (const auto& info : f->tensors()) n += info.end - info.begin;
  return n;
}

// --- writing --------------------------------------------------------------------------------

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_prepared(path, prepare(path, tensors), metadata);
}

void save_checkpoint(const std::string& dir,
                     const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes) {
  RP_CHECK_INPUT(is_directory(dir), "checkpoint output directory '", dir, "' does not exist");
  const std::string single = path_join(dir, kSingleFile);
  const std::string index = path_join(dir, kIndexFile);
  auto prepared = prepare(dir, tensors);
  uint64_t total = 0;
  for (const auto& p : prepared) total += p.nbytes;

  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    write_prepared(single, prepared, metadata);
    // A stale index would make the folder ambiguous (Checkpoint::open refuses it).
    std::remove(index.c_str());
    return;
  }

  // Greedy packing in the given order keeps related tensors (one layer's) in one shard; a tensor
  // larger than the limit gets a shard of its own.
  std::vector<std::vector<PreparedTensor>> shards;
  uint64_t current = 0;
  for (const auto& p : prepared) {
    if (shards.empty() || (!shards.back().empty() && current + p.nbytes > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(p);
    current += p.nbytes;
  }

  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shard_name(i + 1, shards.size());
    write_prepared(path_join(dir, name), shards[i], metadata);
    for (const auto& p : shards[i]) weight_map[*p.name] = name;
  }
  nlohmann::json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  // The index is written last: it is what makes the shards a checkpoint.
  write_file_atomic(index, idx.dump(2) + "\n");
  std::remove(single.c_str());
}

}  // namespace rankprune
