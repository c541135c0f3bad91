// Hostile sizes, one or more per reader: a count or shape that a header or config declares but the
// file does not back (10^9 layers, 2^62 elements, negative lengths, lengths past the end), and
// inputs whose shape alone used to cost far more than their bytes. Each must fail (or finish) in
// well under a second, with an InputError naming the file and the field, and with the peak
// resident set of the process growing by a bounded amount, measured in a forked child
// (tests/testing/bounded.h).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "eval/tasks.h"
#include "model/calibration_stats.h"
#include "model/config.h"
#include "model/linear_lm.h"
#include "model/npy.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "storage/db.h"
#include "tests/testing/bounded.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_fails_bounded;
using testing::BoundedRun;
using testing::run_bounded;
using testing::TempDir;

// A small real checkpoint folder (config.json + model.safetensors).
std::string small_model(const TempDir& tmp, const std::string& name = "model") {
  ModelShape s;
  s.hidden_size = 32, s.num_layers = 2, s.num_heads = 2, s.head_k_dim = 8, s.head_v_dim = 8, s.vocab_size = 64;
  const ModelConfig c = build_model_config(s);
  const std::string dir = tmp.file(name);
  fs::create_directories(dir);
  LinearLM(c, init_random_weights(c, 1, torch::kFloat32)).save(dir);
  return dir;
}

void patch_config(const std::string& dir, const std::function<void(json&)>& edit) {
  const std::string p = path_join(dir, "config.json");
  json j = json::parse(read_file(p));
  edit(j);
  write_file_atomic(p, j.dump());
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors file with this header text and `data_bytes` zero bytes after it.
void write_st(const std::string& path, const std::string& header, std::size_t data_bytes = 16) {
  write_file_atomic(path, u64_le(header.size()) + header + std::string(data_bytes, '\0'));
}

// --- config.json against its checkpoint -------------------------------------------------------

TEST(Hostile, BillionLayerConfigFailsFast) {
  // The issue's example: the tensors unchanged, config.json claiming 10^9 layers. Before the fix
  // `rankprune info` grew to 10 GiB in 60 s listing the tensors the config implies.
  TempDir tmp;
  const std::string dir = small_model(tmp);
  LinearLM::load(dir);  // the unchanged folder loads
  patch_config(dir, [](json& j) { j["num_hidden_layers"] = 1000000000; });
  expect_fails_bounded([&] { LinearLM::load(dir); }, {"config.json", "num_hidden_layers", "1000000000", "holds"});
}

TEST(Hostile, HugeAndNegativeConfigSizes) {
  TempDir tmp;
  const std::string dir = small_model(tmp);
  struct Case {
    const char* field;
    json value;
    const char* needle;
  };
  const Case cases[] = {
      {"hidden_size", int64_t{1} << 62, "hidden_size"},     // above the 2^40 cap
      {"vocab_size", int64_t{1} << 39, "vocab_size"},       // under the cap, not backed by the file
      {"intermediate_size", int64_t{1} << 35, "intermediate_size"},
      {"num_heads", -5, "num_heads"},                       // negative
      {"expand_k", 1e300, "expand_k"},                      // a float product beyond int64
      {"num_hidden_layers", -1, "num_hidden_layers"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    const std::string d = small_model(tmp, std::string("m_") + c.field);
    patch_config(d, [&](json& j) { j[c.field] = c.value; });
    expect_fails_bounded([&] { LinearLM::load(d); }, {"config.json", c.needle});
  }
}

TEST(Hostile, HeadDimensionsBeyondTheWeights) {
  // The file backs every weight, but the head dims (4096 x 4096 on a hidden size of 1) size a
  // recurrent state of 16.7M elements per layer, 60x the layer's weights: a forward or a
  // calibration of this checkpoint would allocate far beyond the file.
  TempDir tmp;
  ModelShape s;
  s.hidden_size = 1, s.num_layers = 1, s.num_heads = 1, s.head_k_dim = 4096, s.head_v_dim = 4096, s.vocab_size = 8;
  const ModelConfig c = build_model_config(s);
  const std::string dir = tmp.file("wide");
  fs::create_directories(dir);
  LinearLM(c, init_random_weights(c, 1, torch::kBFloat16)).save(dir);
  expect_fails_bounded([&] { LinearLM::load(dir); }, {"config.json", "head dimensions", "16777216"});
}

TEST(Hostile, ConfigCountsMatchTheTensorList) {
  // check_backed_by counts tensors and parameters from the config alone; they must be exactly
  // what expected_tensors lists (else a real checkpoint could be refused, or a short one let in).
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    for (int variant = 0; variant < 4; ++variant) {
      ModelShape s;
      s.arch = arch, s.hidden_size = 48, s.num_layers = 3, s.num_heads = 2, s.head_k_dim = 8, s.head_v_dim = 12;
      s.vocab_size = 100, s.use_gate = variant & 1, s.tie_embeddings = (variant & 2) != 0;
      if (arch == Arch::GatedDeltaNet) s.num_v_heads = 4;
      ModelConfig c = build_model_config(s);
      if (variant == 3) c.use_short_conv = false, c.use_beta = false;
      const auto specs = expected_tensors(c);
      int64_t params = 0;
      for (const auto& t : specs) {
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        params += n;
      }
      EXPECT_EQ(static_cast<int64_t>(specs.size()), c.num_tensors()) << arch_name(arch) << " variant " << variant;
      EXPECT_EQ(params, c.num_parameters()) << arch_name(arch) << " variant " << variant;
    }
  }
}

// --- safetensors ------------------------------------------------------------------------------

TEST(Hostile, SafetensorsSizes) {
  TempDir tmp;
  const std::string p = tmp.file("h.safetensors");
  struct Case {
    std::string header;
    const char* needle;
  };
  const Case cases[] = {
      // 2^62 F32 elements declared, 16 bytes present.
      {R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}})", "too large"},
      {R"({"w":{"dtype":"U8","shape":[4611686018427387904],"data_offsets":[0,16]}})", "needs 4611686018427387904"},
      // Empty, but 2^124 elements: no bytes, yet no tensor library can hold the sizes.
      {R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})",
       "too large"},
      {R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", "non-negative"},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})", "non-negative"},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}})", "data_offsets"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    write_st(p, c.header);
    expect_fails_bounded([&] { SafetensorsFile::open(p); }, {p, c.needle});
  }
  // A header length of 2^62, and one past the format's 100 MB cap that the file does back.
  write_file_atomic(p, u64_le(uint64_t{1} << 62) + "{}");
  expect_fails_bounded([&] { SafetensorsFile::open(p); }, {p, "header length"});
  // A sparse file: the length prefix, then 100 MB of holes (no disk, no memory).
  write_file_atomic(p, u64_le(100'000'008) + "{}");
  fs::resize_file(p, 8 + 100'000'008);
  // Only the length field is read before the refusal: the 100 MB of spaces are never parsed.
  expect_fails_bounded([&] { SafetensorsFile::open(p); }, {p, "limit of 100000000"}, 16);
  fs::remove(p);
}

TEST(Hostile, ShardIndexWithoutShards) {
  // An index naming 200k tensors in a shard that does not exist fails at the shard.
  TempDir tmp;
  const std::string dir = tmp.file("sharded");
  fs::create_directories(dir);
  std::string wm = "{\"weight_map\":{";
  for (int i = 0; i < 200000; ++i) wm += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":\"s.safetensors\"";
  wm += "}}";
  write_file_atomic(path_join(dir, "model.safetensors.index.json"), wm);
  const double mb = static_cast<double>(wm.size()) / (1 << 20);
  // nlohmann's DOM costs ~10x the JSON text of a flat map; that plus the text is the bound.
  expect_fails_bounded([&] { Checkpoint::open(dir); }, {"s.safetensors", "does not exist"}, 16 * mb + 32);
}

// --- .npy ---------------------------------------------------------------------------------------

std::string npy_v1(const std::string& dict) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64) h.push_back(' ');
  h.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(h.size() & 0xff));
  out.push_back(static_cast<char>(h.size() >> 8));
  return out + h;
}

TEST(Hostile, NpySizes) {
  TempDir tmp;
  const std::string p = tmp.file("h.npy");
  struct Case {
    std::string bytes;
    const char* needle;
  };
  const Case cases[] = {
      {npy_v1("{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387904,), }") + std::string(64, '\0'),
       "64 bits"},
      {npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (4611686018427387904,), }") + std::string(64, '\0'),
       "truncated"},
      {npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904), }"),
       "64 bits"},
      {npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }"), "non-negative"},
      // Format 2.0 with a 4 GiB header length in a 64-byte file.
      {std::string("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12) + std::string(52, ' '), "extends past"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    write_file_atomic(p, c.bytes);
    expect_fails_bounded([&] { read_npy(p); }, {p, c.needle});
  }
}

// --- calibration statistics ------------------------------------------------------------------

TEST(Hostile, StatisticsMetadata) {
  TempDir tmp;
  const std::string p = tmp.file("stats.safetensors");
  for (const char* layers : {"99999999999999999999", "-4", "12abc"}) {
    SCOPED_TRACE(layers);
    save_safetensors(p, {{"gram", torch::zeros({1, 1, 2, 2}, torch::kFloat64)}},
                     {{"format", "rankprune-calibration-stats-v1"}, {"tokens", "1"}, {"layers", layers},
                      {"heads", "1"}, {"head_k_dim", "2"}, {"hidden_size", "2"}});
    expect_fails_bounded([&] { CalibrationStats::load(p); }, {p, "metadata 'layers'", layers});
  }
}

// --- SentencePiece .model -----------------------------------------------------------------------

TEST(Hostile, TokenizerLengths) {
  TempDir tmp;
  const std::string p = tmp.file("h.model");
  struct Case {
    std::string bytes;
    const char* needle;
  };
  const Case cases[] = {
      // Field 1 (pieces), length 2^62.
      {std::string("\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x40", 10), "runs past the end"},
      // A piece whose text claims 2^35 bytes.
      {std::string("\x0a\x07\x0a\x80\x80\x80\x80\x80\x01", 9), "runs past the end"},
      // An 11-byte varint ("negative" lengths are 10-byte varints with the top bits set).
      {std::string("\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12), "varint"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    write_file_atomic(p, c.bytes);
    expect_fails_bounded([&] { Tokenizer::load(p); }, {p, c.needle});
  }
  // Four million empty pieces (8 MB): refused at the first, where the whole list used to be
  // held first (~40 bytes per 2-byte piece, 256 MB with the vector's growth).
  std::string many;
  for (int i = 0; i < 4000000; ++i) many += std::string("\x0a\x00", 2);
  write_file_atomic(p, many);
  expect_fails_bounded([&] { Tokenizer::load(p); }, {p, "piece 0 is empty"}, 32);
}

// --- task files -------------------------------------------------------------------------------

TEST(Hostile, TaskFilesOfBlankLines) {
  // 16 MB of newlines: each reader used to split the file into a string per line (~32 bytes
  // each, 512 MB) before reading the first row. Now a file is held once and read line by line.
  TempDir tmp;
  const std::string p = tmp.file("blank.jsonl"), labels = tmp.file("labels.lst");
  write_file_atomic(p, std::string(16 << 20, '\n'));
  write_file_atomic(labels, "0\n");
  const double bound_mb = 2 * 16 + 16;
  expect_fails_bounded([&] { eval::read_piqa(p, labels); }, {p + ":1", "invalid JSON"}, bound_mb);
  expect_fails_bounded([&] { eval::read_arc(p); }, {p + ":1"}, bound_mb);
  expect_fails_bounded([&] { eval::read_winogrande(p); }, {p + ":1"}, bound_mb);
  expect_fails_bounded([&] { eval::read_lambada(p); }, {p + ":1"}, bound_mb);
  expect_fails_bounded([&] { eval::read_hellaswag(p); }, {p + ":1", "activity_label"}, bound_mb);
  // The perplexity text: 16M blank rows joined by "\n\n" is 32 MB of output, nothing per row.
  const BoundedRun r = run_bounded([&] {
    const std::string t = eval::wikitext_token_text(read_file(p));
    throw InputError(std::to_string(t.size()));
  }, 30);
  ASSERT_TRUE(r.finished) << r.message;
  EXPECT_EQ(r.message, std::to_string(2 * ((16 << 20) - 1)));
  EXPECT_LE(r.peak_growth_kb, ((16 + 16 + 64 + 16) * testing::kMemoryScale + testing::kMemoryExtraMb) * 1024);
  EXPECT_LT(r.seconds, 10.0 * testing::kTimeScale);  // a hang guard: it takes well under a second
}

TEST(Hostile, TaskFieldSizes) {
  TempDir tmp;
  const std::string p = tmp.file("arc.jsonl");
  write_file_atomic(p, R"({"query":"Question: q","choices":["a","b"],"gold":1000000000000000000})" "\n");
  expect_fails_bounded([&] { eval::read_arc(p); }, {p + ":1", "gold 1000000000000000000 out of range"});
  write_file_atomic(p, R"({"query":"Question: q","choices":["a","b"],"gold":-1})" "\n");
  expect_fails_bounded([&] { eval::read_arc(p); }, {p + ":1", "gold -1"});
  // HellaSwag's tag removal on a line of 400k '[' without a ']' was quadratic (minutes).
  const std::string h = tmp.file("hs.txt");
  write_file_atomic(h, "a: " + std::string(400000, '[') + "\nx\n1\n2\n3\n4\n");
  expect_fails_bounded([&] { eval::read_hellaswag(h); }, {h + ":2", "gold"});
}

// --- results database -------------------------------------------------------------------------

TEST(Hostile, DatabaseHeaderClaimsHugeFile) {
  // An SQLite header claiming 2^31 pages of 64 KiB in a 4 KiB file, and random bytes.
  TempDir tmp;
  const std::string p = tmp.file("h.db");
  std::string b(4096, '\0');
  std::memcpy(b.data(), "SQLite format 3", 16);
  b[16] = 1, b[17] = 0;              // page size 65536
  b[18] = b[19] = 1;                 // legacy journal
  b[21] = 64, b[22] = 32, b[23] = 32;
  b[28] = b[29] = b[30] = b[31] = '\x7f';  // in-header database size: 2^31 - 1 pages
  write_file_atomic(p, b);
  expect_fails_bounded([&] { storage::Database::open(p); }, {p});
  std::string noise(8192, '\0');
  for (std::size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<char>((i * 2654435761u) >> 13);
  write_file_atomic(p, noise);
  expect_fails_bounded([&] { storage::Database::open(p); }, {p, "not a database"});
}

}  // namespace
}  // namespace rankprune
