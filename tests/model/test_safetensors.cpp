#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "common/fs.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

namespace fs = std::filesystem;
using rankprune::testing::TempDir;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes a safetensors file byte by byte: [u64 LE header length][header][data_size bytes], so the
// malformed corpus can hold anything a broken writer might produce.
void write_raw(const std::string& path, const std::string& header, std::size_t data_size,
               unsigned char fill = 0) {
  std::string bytes;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  bytes += header;
  bytes.append(data_size, static_cast<char>(fill));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

using rankprune::testing::expect_input_error;

void expect_open_error(const std::string& path, std::initializer_list<std::string> needles) {
  expect_input_error([&] { SafetensorsFile::open(path); }, needles);
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  auto ca = a.contiguous(), cb = b.contiguous();
  const size_t n = ca.numel() * ca.element_size();
  return n == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), n) == 0;  // empty tensors: no pointer to compare
}

uint64_t header_length(const std::string& path) {
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return n;
}

std::string header_text(const std::string& path) {
  return read_file(path).substr(8, header_length(path));
}

// One tensor of every dtype, with awkward values (NaN, -0, inf, extremes) that a lossy path
// would change.
Named all_dtypes() {
  torch::manual_seed(7);
  auto f32 = torch::randn({3, 5});
  f32[0][0] = std::numeric_limits<float>::quiet_NaN();
  f32[0][1] = -0.0f;
  f32[0][2] = std::numeric_limits<float>::infinity();
  return {
      {"f32", f32},
      {"bf16", torch::randn({4, 2}).to(torch::kBFloat16)},
      {"f16", torch::randn({7}).to(torch::kHalf)},
      {"i32", torch::tensor({std::numeric_limits<int32_t>::min(), -1, 0, std::numeric_limits<int32_t>::max()},
                            torch::kInt)},
      {"i64", torch::tensor({std::numeric_limits<int64_t>::min(), int64_t{42}, std::numeric_limits<int64_t>::max()},
                            torch::kLong)},
      {"f64", torch::randn({2, 2, 2}, torch::kDouble)},
      {"u8", torch::arange(0, 256, torch::kLong).to(torch::kByte).reshape({16, 16})},
      {"bool", torch::tensor({true, false, false, true, true})},
      {"i8", torch::tensor({-128, -1, 0, 127}, torch::kChar)},
      {"i16", torch::tensor({-32768, 5, 32767}, torch::kShort)},
      {"empty", torch::zeros({0, 4})},
      {"scalar", torch::tensor(3.25f).reshape({})},
  };
}

TEST(SafetensorsDtype, TableIsConsistent) {
  for (StDtype d : {StDtype::F64, StDtype::F32, StDtype::F16, StDtype::BF16, StDtype::I64, StDtype::I32,
                    StDtype::I16, StDtype::I8, StDtype::U8, StDtype::BOOL}) {
    StDtype parsed;
    ASSERT_TRUE(parse_dtype(dtype_name(d), &parsed)) << dtype_name(d);
    EXPECT_EQ(parsed, d);
    EXPECT_EQ(from_torch(to_torch(d)), d);
    EXPECT_EQ(dtype_size(d), c10::elementSize(to_torch(d)));
  }
  EXPECT_EQ(to_torch(StDtype::BF16), torch::kBFloat16);
  EXPECT_EQ(to_torch(StDtype::F16), torch::kHalf);
  EXPECT_EQ(to_torch(StDtype::BOOL), torch::kBool);
  StDtype out;
  EXPECT_FALSE(parse_dtype("F13", &out));
  EXPECT_FALSE(parse_dtype("f32", &out));  // names are case-sensitive
  EXPECT_THROW(from_torch(torch::kComplexFloat), InputError);
}

TEST(Safetensors, RoundTripEveryDtypeBitIdentical) {
  TempDir tmp;
  const auto path = tmp.file("all.safetensors");
  const auto tensors = all_dtypes();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode ok"}};
  save_safetensors(path, tensors, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata(), meta);
  EXPECT_EQ(f->file_size(), fs::file_size(path));
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const TensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->name, name);
    EXPECT_EQ(info->shape, t.sizes().vec());
    EXPECT_EQ(info->numel(), t.numel());
    EXPECT_EQ(info->end - info->begin, static_cast<uint64_t>(t.numel() * t.element_size()));
    auto back = f->tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type());
    EXPECT_EQ(back.device(), torch::Device(torch::kCPU));
    EXPECT_TRUE(same_bytes(back, t));
  }
  EXPECT_EQ(f->find("nope"), nullptr);
  expect_input_error([&] { f->tensor("nope"); }, {"nope", path});
}

TEST(Safetensors, TensorsAreInDataOffsetOrderAndContiguous) {
  TempDir tmp;
  const auto path = tmp.file("order.safetensors");
  const auto tensors = all_dtypes();
  save_safetensors(path, tensors);
  auto f = SafetensorsFile::open(path);
  uint64_t expected_begin = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& info = f->tensors()[i];
    EXPECT_EQ(info.name, tensors[i].first);  // the writer keeps the given order
    EXPECT_EQ(info.begin, expected_begin);
    expected_begin = info.end;
  }
  EXPECT_EQ(8 + header_length(path) + expected_begin, fs::file_size(path));
}

TEST(Safetensors, HeaderIsPaddedDeterministicAndOmitsEmptyMetadata) {
  TempDir tmp;
  const auto a = tmp.file("a.safetensors"), b = tmp.file("b.safetensors");
  const Named tensors = {{"zeta", torch::ones({3})}, {"alpha", torch::zeros({1}, torch::kByte)},
                         {"mid", torch::ones({2, 2}, torch::kDouble)}};
  save_safetensors(a, tensors);
  save_safetensors(b, tensors);
  EXPECT_EQ(read_file(a), read_file(b));  // byte-identical output for identical input

  EXPECT_EQ((8 + header_length(a)) % 8, 0u);
  const std::string h = header_text(a);
  EXPECT_EQ(h.find("__metadata__"), std::string::npos);
  EXPECT_LT(h.find("\"zeta\""), h.find("\"alpha\""));
  EXPECT_LT(h.find("\"alpha\""), h.find("\"mid\""));
  const auto j = nlohmann::json::parse(h);  // trailing space padding is valid JSON
  EXPECT_EQ(j["zeta"]["dtype"], "F32");
  EXPECT_EQ(j["alpha"]["data_offsets"], nlohmann::json({12, 13}));
  EXPECT_EQ(j["mid"]["shape"], nlohmann::json({2, 2}));

  save_safetensors(a, tensors, {{"k", "v"}});
  EXPECT_EQ(nlohmann::json::parse(header_text(a))["__metadata__"], nlohmann::json({{"k", "v"}}));
  EXPECT_EQ((8 + header_length(a)) % 8, 0u);
}

TEST(Safetensors, SavesNonContiguousTensorsAsContiguous) {
  TempDir tmp;
  const auto path = tmp.file("t.safetensors");
  auto base = torch::arange(12, torch::kFloat).reshape({3, 4});
  auto t = base.t();
  auto strided = base.index({torch::indexing::Slice(), torch::indexing::Slice(0, 4, 2)});
  ASSERT_FALSE(t.is_contiguous());
  save_safetensors(path, {{"t", t}, {"s", strided}});
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(torch::equal(f->tensor("t"), t));
  EXPECT_TRUE(torch::equal(f->tensor("s"), strided));
}

TEST(Safetensors, ZeroCopyAndMappingOutlivesFile) {
  TempDir tmp;
  const auto path = tmp.file("z.safetensors");
  auto w = torch::randn({64, 32});
  save_safetensors(path, {{"w", w}, {"b", torch::randn({32}, torch::kDouble)}});
  torch::Tensor kept;
  {
    auto f = SafetensorsFile::open(path);
    auto t1 = f->tensor("w");
    auto t2 = f->tensor("w");
    EXPECT_EQ(t1.data_ptr(), t2.data_ptr());  // both alias the mapping
    EXPECT_EQ(f->tensor("b").data_ptr(), f->tensor("b").data_ptr());
    kept = t1;
  }
  // The file object is gone; the tensor's deleter still holds the mapping.
  EXPECT_TRUE(torch::equal(kept, w));
  auto ck = Checkpoint::open(path);
  EXPECT_EQ(ck.tensor("w").data_ptr(), ck.tensor("w").data_ptr());
}

TEST(Safetensors, WritingThroughATensorNeverChangesTheFile) {
  TempDir tmp;
  const auto path = tmp.file("w.safetensors");
  auto w = torch::randn({16});
  save_safetensors(path, {{"w", w}});
  const std::string before = read_file(path);
  {
    auto f = SafetensorsFile::open(path);
    auto t = f->tensor("w");
    t.add_(1.0f);  // lands in private copy-on-write pages
    EXPECT_TRUE(torch::allclose(t, w + 1.0f));
  }
  EXPECT_EQ(read_file(path), before);
  EXPECT_TRUE(torch::equal(SafetensorsFile::open(path)->tensor("w"), w));
}

TEST(Safetensors, MisalignedDataIsCopiedToAlignedMemory) {
  TempDir tmp;
  const auto path = tmp.file("mis.safetensors");
  // Header of 16 bytes puts the data section at 24; "f" then starts at file offset 25.
  std::string header = R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  while ((8 + header.size()) % 8) header.push_back(' ');
  write_raw(path, header, 9);
  // Patch the F32 values 1.5 and -2.0 into place.
  {
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    const float vals[2] = {1.5f, -2.0f};
    io.seekp(static_cast<std::streamoff>(8 + header.size() + 1));
    io.write(reinterpret_cast<const char*>(vals), sizeof vals);
  }
  auto f = SafetensorsFile::open(path);
  auto t = f->tensor("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % alignof(float), 0u);
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.5f, -2.0f})));
  EXPECT_EQ(f->tensor("u").item<uint8_t>(), 0);
}

TEST(Safetensors, GapsAndEmptyTensorsAreAllowed) {
  TempDir tmp;
  const auto path = tmp.file("gap.safetensors");
  // 8 unused bytes before "a", 8 after it; empty tensors at the start, inside and at the end.
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
            R"("e0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
            R"("e1":{"dtype":"I64","shape":[3,0],"data_offsets":[12,12]},)"
            R"("e2":{"dtype":"BF16","shape":[0],"data_offsets":[24,24]}})",
            24);
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->tensor("a").numel(), 2);
  EXPECT_EQ(f->tensor("e1").sizes(), torch::IntArrayRef({3, 0}));
  EXPECT_EQ(f->tensor("e2").scalar_type(), torch::kBFloat16);
}

TEST(Safetensors, OpeningAndTouchingDoesNotCopyTheFile) {
  TempDir tmp;
  const auto path = tmp.file("big.safetensors");
  constexpr int64_t kElems = 8 << 20;  // 32 MiB of F32
  save_safetensors(path, {{"big", torch::ones({kElems})}});

  // Warm up torch's reduction machinery so its one-time allocations are not counted.
  (void)torch::ones({1 << 16}).sum().item<float>();
  auto rss_anon_kib = [] {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("RssAnon:", 0) == 0) return std::stol(line.substr(8));
    return -1L;
  };
  const long before = rss_anon_kib();
  if (before < 0) GTEST_SKIP() << "no RssAnon in /proc/self/status";
  auto ck = Checkpoint::open(path);
  auto t = ck.tensor("big");
  EXPECT_EQ(t.sum().item<float>(), static_cast<float>(kElems));  // touches every page
  const long grown_kib = rss_anon_kib() - before;
  // A private copy of the data would add 32 MiB of anonymous memory; mapped file pages do not.
  EXPECT_LT(grown_kib, 8 * 1024) << "anonymous RSS grew by " << grown_kib << " KiB";
}

TEST(Safetensors, SaveRejectsBadInputAndWritesNothing) {
  TempDir tmp;
  const auto path = tmp.file("bad.safetensors");
  expect_input_error([&] { save_safetensors(path, {{"a", torch::ones({1})}, {"a", torch::ones({2})}}); },
                     {"duplicate", "'a'"});
  expect_input_error([&] { save_safetensors(path, {{"c", torch::ones({2}, torch::kComplexFloat)}}); }, {"'c'"});
  expect_input_error([&] { save_safetensors(path, {{"__metadata__", torch::ones({1})}}); }, {"__metadata__"});
  expect_input_error([&] { save_safetensors(path, {{"u", torch::Tensor()}}); }, {"'u'"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(tmp.path()));  // no temporary left behind either
}

// --- checkpoints ----------------------------------------------------------------------------

Named layer_tensors() {
  torch::manual_seed(3);
  Named t;
  for (int i = 0; i < 5; ++i) t.emplace_back("layers." + std::to_string(i) + ".w", torch::randn({10}));  // 40 B
  t.emplace_back("big", torch::randn({50}));                                                          // 200 B
  t.emplace_back("tail", torch::randn({3}, torch::kDouble));                                          // 24 B
  return t;
}

TEST(Checkpoint, SingleFileFromDirectoryAndFilePath) {
  TempDir tmp;
  const auto tensors = layer_tensors();
  save_checkpoint(tmp.path(), tensors, {{"format", "pt"}});
  EXPECT_TRUE(fs::exists(tmp.file("model.safetensors")));
  EXPECT_FALSE(fs::exists(tmp.file("model.safetensors.index.json")));
  for (const auto& p : {tmp.path(), tmp.file("model.safetensors")}) {
    auto ck = Checkpoint::open(p);
    EXPECT_EQ(ck.path(), p);
    const auto names = ck.names();
    EXPECT_EQ(names.size(), tensors.size());
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    for (const auto& [name, t] : tensors) {
      EXPECT_TRUE(ck.has(name));
      EXPECT_TRUE(same_bytes(ck.tensor(name), t)) << name;
      EXPECT_EQ(ck.info(name).shape, t.sizes().vec());
    }
    EXPECT_EQ(ck.metadata().at("format"), "pt");
    EXPECT_EQ(ck.total_bytes(), 5u * 40 + 200 + 24);
    EXPECT_FALSE(ck.has("missing"));
    expect_input_error([&] { ck.tensor("missing"); }, {"missing"});
    expect_input_error([&] { ck.info("missing"); }, {"missing"});
  }
}

TEST(Checkpoint, ShardedRoundTrip) {
  TempDir tmp;
  const auto tensors = layer_tensors();
  // Limit 100 B: [l0 l1] [l2 l3] [l4] [big (alone, over the limit)] [tail] -> 5 shards.
  save_checkpoint(tmp.path(), tensors, {{"format", "pt"}}, 100);
  EXPECT_FALSE(fs::exists(tmp.file("model.safetensors")));
  for (int i = 1; i <= 5; ++i)
    EXPECT_TRUE(fs::exists(tmp.file("model-0000" + std::to_string(i) + "-of-00005.safetensors"))) << i;
  EXPECT_FALSE(fs::exists(tmp.file("model-00006-of-00005.safetensors")));

  const auto index = nlohmann::json::parse(read_file(tmp.file("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 40 + 200 + 24);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  EXPECT_EQ(index["weight_map"]["layers.0.w"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.1.w"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.3.w"], "model-00002-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.4.w"], "model-00003-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["tail"], "model-00005-of-00005.safetensors");

  auto ck = Checkpoint::open(tmp.path());
  EXPECT_EQ(ck.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(ck.tensor(name), t)) << name;
  EXPECT_EQ(ck.metadata().at("format"), "pt");
  EXPECT_EQ(ck.total_bytes(), 5u * 40 + 200 + 24);
}

TEST(Checkpoint, FitsInOneShardWritesASingleFile) {
  TempDir tmp;
  save_checkpoint(tmp.path(), layer_tensors(), {}, 1 << 20);
  EXPECT_TRUE(fs::exists(tmp.file("model.safetensors")));
  EXPECT_FALSE(fs::exists(tmp.file("model.safetensors.index.json")));
}

TEST(Checkpoint, ResavingReplacesTheOtherLayout) {
  TempDir tmp;
  const auto tensors = layer_tensors();
  save_checkpoint(tmp.path(), tensors);
  save_checkpoint(tmp.path(), tensors, {}, 100);
  EXPECT_FALSE(fs::exists(tmp.file("model.safetensors")));
  EXPECT_EQ(Checkpoint::open(tmp.path()).names().size(), tensors.size());
  save_checkpoint(tmp.path(), tensors);
  EXPECT_FALSE(fs::exists(tmp.file("model.safetensors.index.json")));
  EXPECT_EQ(Checkpoint::open(tmp.path()).names().size(), tensors.size());
}

TEST(Checkpoint, SaveRejectsDuplicatesAcrossShardsAndMissingDirectory) {
  TempDir tmp;
  Named dup = {{"a", torch::ones({25})}, {"b", torch::ones({25})}, {"a", torch::ones({25})}};
  expect_input_error([&] { save_checkpoint(tmp.path(), dup, {}, 100); }, {"duplicate", "'a'"});
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  expect_input_error([&] { save_checkpoint(tmp.file("nodir"), layer_tensors()); }, {"nodir"});
}

TEST(Checkpoint, DirectoryWithoutCheckpointFiles) {
  TempDir tmp;
  expect_input_error([&] { Checkpoint::open(tmp.path()); },
                     {tmp.path(), "model.safetensors", "model.safetensors.index.json"});
  expect_input_error([&] { Checkpoint::open(tmp.file("absent")); }, {"absent"});
}

TEST(Checkpoint, BothLayoutsPresentIsAmbiguous) {
  TempDir tmp;
  save_checkpoint(tmp.path(), layer_tensors(), {}, 100);
  save_safetensors(tmp.file("model.safetensors"), layer_tensors());
  expect_input_error([&] { Checkpoint::open(tmp.path()); }, {"both", "model.safetensors.index.json"});
}

// --- malformed corpus: files -----------------------------------------------------------------

class Malformed : public ::testing::Test {
 protected:
  TempDir tmp_;
  std::string path_ = tmp_.file("bad.safetensors");
  void expect_header_error(const std::string& header, std::size_t data_size,
                           std::initializer_list<std::string> needles) {
    write_raw(path_, header, data_size);
    expect_open_error(path_, needles);
  }
};

TEST_F(Malformed, TruncatedInTheDataSection) {
  save_safetensors(path_, {{"first", torch::ones({4})}, {"last", torch::ones({8})}});
  fs::resize_file(path_, fs::file_size(path_) - 5);
  expect_open_error(path_, {path_, "'last'", "beyond the data section"});
}

TEST_F(Malformed, ShorterThanEightBytes) {
  std::ofstream(path_, std::ios::binary) << "abc";
  expect_open_error(path_, {path_, "shorter than the 8-byte"});
  std::ofstream(path_, std::ios::binary | std::ios::trunc).flush();
  expect_open_error(path_, {path_, "0 bytes"});
}

TEST_F(Malformed, HeaderLengthBeyondFile) {
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(0xe8);  // 1000
  bytes[1] = static_cast<char>(0x03);
  bytes += "{}";
  std::ofstream(path_, std::ios::binary) << bytes;
  expect_open_error(path_, {path_, "header length 1000", "past the end"});
  // A huge length must not overflow the bounds check.
  std::string huge(8, static_cast<char>(0xff));
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << huge << "{}";
  expect_open_error(path_, {path_, "past the end"});
}

TEST_F(Malformed, BadJson) {
  expect_header_error(R"({"w": {"dtype": "F32", )", 0, {path_, "not valid JSON"});
  expect_header_error(R"({"w": 1} trailing)", 0, {path_, "not valid JSON"});
  expect_header_error("", 0, {path_, "not valid JSON"});
}

TEST_F(Malformed, HeaderNotAnObject) {
  expect_header_error("[1, 2, 3]", 0, {path_, "JSON object", "array"});
  expect_header_error("\"F32\"", 0, {path_, "JSON object"});
}

TEST_F(Malformed, EntryNotAnObject) {
  expect_header_error(R"({"w": [1, 2]})", 0, {path_, "'w'", "object"});
}

TEST_F(Malformed, UnknownDtype) {
  expect_header_error(R"({"w": {"dtype": "F13", "shape": [1], "data_offsets": [0, 4]}})", 4,
                      {path_, "'w'", "unknown dtype 'F13'"});
  expect_header_error(R"({"w": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}})", 4, {"'w'", "dtype"});
}

TEST_F(Malformed, MissingFields) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [1]}})", 4, {path_, "'w'", "data_offsets"});
  expect_header_error(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4, {"'w'", "'shape'"});
  expect_header_error(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4, {"'w'", "'dtype'"});
}

TEST_F(Malformed, OffsetsOutOfRange) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})", 16,
                      {path_, "'w'", "beyond the data section", "16 bytes"});
}

TEST_F(Malformed, OffsetsReversed) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8,
                      {path_, "'w'", "reversed"});
}

TEST_F(Malformed, OffsetsNotTwoNonNegativeIntegers) {
  for (const char* off : {"[0]", "[0, 4, 8]", "[-4, 0]", "[0, 4.0]", "\"0-4\"", "[0, \"4\"]"}) {
    SCOPED_TRACE(off);
    expect_header_error(cat(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": )", off, "}}"), 8,
                        {path_, "'w'", "data_offsets"});
  }
}

TEST_F(Malformed, OverlappingRanges) {
  expect_header_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                      R"( "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                      24, {path_, "overlap", "'a'", "'b'"});
  // The same range twice is an overlap too.
  expect_header_error(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},)"
                      R"( "b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
                      4, {"overlap", "'a'", "'b'"});
}

TEST_F(Malformed, ShapeDoesNotMatchByteRange) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", 16,
                      {path_, "'w'", "needs 24 bytes", "span 16"});
  expect_header_error(R"({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 16]}})", 16,
                      {"'w'", "BF16", "needs 8 bytes"});
  // A shape whose byte size overflows 64 bits.
  expect_header_error(
      R"({"w": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0,
      {"'w'", "too large"});
}

TEST_F(Malformed, NegativeOrNonIntegerShape) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", 16,
                      {path_, "'w'", "non-negative"});
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8,
                      {"'w'", "non-negative integers"});
  expect_header_error(R"({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}})", 16, {"'w'", "shape"});
}

TEST_F(Malformed, DuplicateTensorNames) {
  expect_header_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                      R"( "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                      8, {path_, "duplicate tensor name 'w'"});
  // A duplicated field inside an entry is caught as well.
  expect_header_error(R"({"w": {"dtype": "F32", "dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})", 4,
                      {"duplicate key 'dtype'", "'w'"});
}

TEST_F(Malformed, Metadata) {
  expect_header_error(R"({"__metadata__": {"format": "pt", "step": 1000}})", 0,
                      {path_, "__metadata__", "'step'", "string"});
  expect_header_error(R"({"__metadata__": ["pt"]})", 0, {path_, "__metadata__", "object"});
}

TEST_F(Malformed, BoolBytesMustBeZeroOrOne) {
  write_raw(path_, R"({"m": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}})", 4, 2);
  auto f = SafetensorsFile::open(path_);
  expect_input_error([&] { f->tensor("m"); }, {path_, "'m'", "BOOL"});
}

TEST_F(Malformed, DirectoryInsteadOfFile) {
  fs::create_directory(tmp_.file("d.safetensors"));
  expect_open_error(tmp_.file("d.safetensors"), {"d.safetensors", "regular file"});
  expect_open_error(tmp_.file("none.safetensors"), {"none.safetensors", "cannot open"});
}

// --- malformed corpus: sharded indexes --------------------------------------------------------

class MalformedIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    save_safetensors(tmp_.file("s1.safetensors"), {{"a", torch::ones({2})}, {"b", torch::ones({3})}});
    save_safetensors(tmp_.file("s2.safetensors"), {{"c", torch::ones({4})}});
  }
  void write_index(const std::string& text) { std::ofstream(index_) << text; }
  void expect_error(std::initializer_list<std::string> needles) {
    expect_input_error([&] { Checkpoint::open(tmp_.path()); }, needles);
  }
  TempDir tmp_;
  std::string index_ = tmp_.file("model.safetensors.index.json");
};

TEST_F(MalformedIndex, ValidIndexOpens) {
  write_index(R"({"metadata": {"total_size": 36}, "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors",)"
              R"( "c": "s2.safetensors"}})");
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(torch::equal(ck.tensor("c"), torch::ones({4})));
}

TEST_F(MalformedIndex, MissingShard) {
  write_index(R"({"weight_map": {"a": "s1.safetensors", "z": "model-00009-of-00009.safetensors"}})");
  expect_error({"model-00009-of-00009.safetensors", "does not exist", "'z'"});
}

TEST_F(MalformedIndex, BadJson) {
  write_index(R"({"weight_map": {"a": "s1.safetensors",)");
  expect_error({index_, "not valid JSON"});
}

TEST_F(MalformedIndex, WrongStructure) {
  write_index(R"(["s1.safetensors"])");
  expect_error({index_, "JSON object"});
  write_index(R"({"metadata": {}})");
  expect_error({index_, "weight_map"});
  write_index(R"({"weight_map": {"a": 1}})");
  expect_error({index_, "'a'", "shard file name"});
  write_index(R"({"weight_map": {}})");
  expect_error({index_, "empty"});
  write_index(R"({"weight_map": {"a": "../s1.safetensors"}})");
  expect_error({index_, "../s1.safetensors"});
}

TEST_F(MalformedIndex, TensorNotInItsShard) {
  write_index(R"({"weight_map": {"a": "s1.safetensors", "c": "s1.safetensors"}})");
  expect_error({index_, "'c'", "s1.safetensors", "does not contain"});
}

TEST_F(MalformedIndex, TensorListedTwice) {
  write_index(R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})");
  expect_error({index_, "'a'", "more than once"});
}

TEST_F(MalformedIndex, TensorInTwoShards) {
  // s3 also holds an "a" that the weight map does not mention.
  save_safetensors(tmp_.file("s3.safetensors"), {{"a", torch::zeros({2})}, {"x", torch::zeros({1})}});
  write_index(R"({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors", "x": "s3.safetensors"}})");
  expect_error({"'a'", "s1.safetensors", "s3.safetensors"});
}

TEST_F(MalformedIndex, BrokenShardNamesTheShard) {
  write_index(R"({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}})");
  fs::resize_file(tmp_.file("s2.safetensors"), fs::file_size(tmp_.file("s2.safetensors")) - 1);
  expect_error({"s2.safetensors", "'c'"});
}

}  // namespace
}  // namespace rankprune
