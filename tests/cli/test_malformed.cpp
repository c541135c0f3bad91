// A corpus of malformed checkpoints and configs, each fed to `rankprune info` and
// `rankprune logits`: every one must be rejected with a clear message and exit code 1 or 2 —
// never a crash, never an internal error, never an output file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>

#include "common/fs.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Safetensors {
  json header;
  std::string data;
};

Safetensors read_st(const std::string& path) {
  std::string bytes = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  write_file_atomic(path, out + header + data);
}

class Malformed : public CliTest {
 protected:
  // Copies the good model to a new folder and applies `mutate` to it.
  std::string variant(const std::string& name, const std::function<void(const std::string& dir)>& mutate) {
    std::string dir = tmp_.file(name);
    fs::create_directories(dir);
    for (auto& e : fs::directory_iterator(model_)) fs::copy_file(e.path(), fs::path(dir) / e.path().filename());
    mutate(dir);
    return dir;
  }
  std::string st(const std::string& dir) { return path_join(dir, "model.safetensors"); }

  void expect_rejected(const std::string& dir, const std::string& needle) {
    const std::string out = tmp_.file("out.npy");
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"info", "--model", dir}, {"logits", "--model", dir, "--ids", "1,2,3", "--out", out}}) {
      auto r = run_rankprune(args);
      SCOPED_TRACE(args[0] + " on " + fs::path(dir).filename().string() + ": " + r.out);
      EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << "exit " << r.exit_code;
      EXPECT_NE(r.out.find("error"), std::string::npos);
      EXPECT_NE(r.out.find(needle), std::string::npos) << "message should mention '" << needle << "'";
      EXPECT_FALSE(file_exists(out));
    }
  }
};

TEST_F(Malformed, TruncatedFile) {
  auto d = variant("truncated", [&](const std::string& dir) {
    auto b = read_file(st(dir));
    write_file_atomic(st(dir), b.substr(0, b.size() - 100));
  });
  expect_rejected(d, "model.safetensors");
}

TEST_F(Malformed, TinyFile) {
  expect_rejected(variant("tiny", [&](const std::string& dir) { write_file_atomic(st(dir), "abc"); }),
                  "model.safetensors");
}

TEST_F(Malformed, HeaderLengthBeyondFile) {
  auto d = variant("hdrlen", [&](const std::string& dir) {
    auto b = read_file(st(dir));
    uint64_t n = b.size() * 4;
    std::memcpy(&b[0], &n, 8);
    write_file_atomic(st(dir), b);
  });
  expect_rejected(d, "header");
}

TEST_F(Malformed, BadHeaderJson) {
  auto d = variant("badjson", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    write_raw(st(dir), s.header.dump().substr(0, 40) + "}}", s.data);
  });
  expect_rejected(d, "JSON");
}

TEST_F(Malformed, OffsetsOutOfRange) {
  auto d = variant("range", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    auto& t = s.header["model.norm.weight"];
    t["data_offsets"] = {s.data.size() + 8, s.data.size() + 8 + 32 * 4};
    write_raw(st(dir), s.header.dump(), s.data);
  });
  expect_rejected(d, "model.norm.weight");
}

TEST_F(Malformed, OverlappingTensors) {
  auto d = variant("overlap", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    // Point the final norm (32 floats) at the start of the embeddings.
    s.header["model.norm.weight"]["data_offsets"] = {0, 32 * 4};
    write_raw(st(dir), s.header.dump(), s.data);
  });
  expect_rejected(d, "overlap");
}

TEST_F(Malformed, UnknownDtype) {
  auto d = variant("dtype", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    s.header["model.norm.weight"]["dtype"] = "F13";
    write_raw(st(dir), s.header.dump(), s.data);
  });
  expect_rejected(d, "F13");
}

TEST_F(Malformed, MissingTensor) {
  auto d = variant("missing", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    s.header.erase("model.layers.1.attn.k_proj.weight");
    write_raw(st(dir), s.header.dump(), s.data);
  });
  expect_rejected(d, "model.layers.1.attn.k_proj.weight");
}

TEST_F(Malformed, ShapeContradictsConfig) {
  auto d = variant("shape", [&](const std::string& dir) {
    auto j = json::parse(read_file(path_join(dir, "config.json")));
    j["hidden_size"] = 40;  // every [.., 32] tensor now disagrees
    write_file_atomic(path_join(dir, "config.json"), j.dump());
  });
  expect_rejected(d, "shape");
}

TEST_F(Malformed, IntegerTensorWhereWeightsExpected) {
  auto d = variant("intw", [&](const std::string& dir) {
    auto s = read_st(st(dir));
    s.header["model.norm.weight"]["dtype"] = "I32";
    write_raw(st(dir), s.header.dump(), s.data);
  });
  expect_rejected(d, "model.norm.weight");
}

TEST_F(Malformed, ConfigNotJson) {
  expect_rejected(variant("cfgjson", [&](const std::string& dir) {
                    write_file_atomic(path_join(dir, "config.json"), "{\"model_type\": \"delta_net\",");
                  }),
                  "config.json");
}

TEST_F(Malformed, ConfigWrongFieldType) {
  auto d = variant("cfgtype", [&](const std::string& dir) {
    auto j = json::parse(read_file(path_join(dir, "config.json")));
    j["num_heads"] = "two";
    write_file_atomic(path_join(dir, "config.json"), j.dump());
  });
  expect_rejected(d, "num_heads");
}

TEST_F(Malformed, ConfigUnknownArchitecture) {
  auto d = variant("cfgarch", [&](const std::string& dir) {
    auto j = json::parse(read_file(path_join(dir, "config.json")));
    j["model_type"] = "rwkv7";
    write_file_atomic(path_join(dir, "config.json"), j.dump());
  });
  expect_rejected(d, "model_type");
}

TEST_F(Malformed, MissingFiles) {
  expect_rejected(variant("nocfg", [&](const std::string& dir) { fs::remove(path_join(dir, "config.json")); }),
                  "config.json");
  expect_rejected(variant("nost", [&](const std::string& dir) { fs::remove(st(dir)); }), "model.safetensors");
  expect_rejected(tmp_.file("does-not-exist"), "does-not-exist");
}

}  // namespace
}  // namespace rankprune::testing
