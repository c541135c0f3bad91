#include "model/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

#include "common/error.h"
#include "common/fs.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

namespace fs = std::filesystem;
using rankprune::testing::TempDir;

const std::string kMagicV1("\x93NUMPY\x01\x00", 8);

using rankprune::testing::expect_input_error;

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  auto ca = a.contiguous(), cb = b.contiguous();
  const size_t n = ca.numel() * ca.element_size();
  return n == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), n) == 0;  // empty tensors: no pointer to compare
}

torch::Tensor round_trip(const TempDir& tmp, const torch::Tensor& t) {
  const auto path = tmp.file("rt.npy");
  write_npy(path, t);
  return read_npy(path);
}

// Total header size (magic + version + length field + header text) of a version 1.0 file.
std::size_t header_total_v1(const std::string& bytes) {
  return 10 + (static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8));
}

// A hand-made .npy: version `major`, the given header text (newline appended, no alignment
// padding, which readers must not require) and raw data bytes.
std::string make_npy(const std::string& dict, const std::string& data, int major = 1) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  const std::string header = dict + "\n";
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(),
                                                                static_cast<std::streamsize>(bytes.size()));
}

std::string floats(std::initializer_list<float> v) {
  return std::string(reinterpret_cast<const char*>(v.begin()), v.size() * sizeof(float));
}

TEST(Npy, RoundTripF32TwoD) {
  TempDir tmp;
  torch::manual_seed(1);
  auto t = torch::randn({7, 13});
  t[0][0] = std::numeric_limits<float>::quiet_NaN();
  t[0][1] = -0.0f;
  auto back = round_trip(tmp, t);
  EXPECT_EQ(back.scalar_type(), torch::kFloat);
  EXPECT_TRUE(same_bytes(back, t));
}

TEST(Npy, RoundTripI64OneD) {
  TempDir tmp;
  auto t = torch::tensor({std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0}, int64_t{5},
                          std::numeric_limits<int64_t>::max()});
  auto back = round_trip(tmp, t);
  EXPECT_EQ(back.scalar_type(), torch::kLong);
  EXPECT_TRUE(same_bytes(back, t));
}

TEST(Npy, RoundTripZeroDimensional) {
  TempDir tmp;
  auto t = torch::tensor(2.5f).reshape({});
  auto back = round_trip(tmp, t);
  EXPECT_EQ(back.dim(), 0);
  EXPECT_EQ(back.item<float>(), 2.5f);
  const std::string bytes = read_file(tmp.file("rt.npy"));
  EXPECT_NE(bytes.find("'shape': (), }"), std::string::npos);
  EXPECT_EQ(bytes.size(), header_total_v1(bytes) + 4);
}

TEST(Npy, RoundTripOtherDtypesAndEmpty) {
  TempDir tmp;
  torch::manual_seed(2);
  for (const auto& t : {torch::randn({3, 2}, torch::kDouble), torch::randn({5}).to(torch::kHalf),
                        torch::tensor({-7, 0, 9}, torch::kInt), torch::arange(0, 256, torch::kLong).to(torch::kByte),
                        torch::tensor({true, false, true}), torch::zeros({0, 3}), torch::zeros({2, 0, 4}, torch::kLong)}) {
    SCOPED_TRACE(c10::toString(t.scalar_type()));
    EXPECT_TRUE(same_bytes(round_trip(tmp, t), t));
  }
}

TEST(Npy, NonContiguousInputIsWrittenInCOrder) {
  TempDir tmp;
  auto base = torch::arange(12, torch::kFloat).reshape({3, 4});
  auto back = round_trip(tmp, base.t());
  EXPECT_TRUE(torch::equal(back, base.t()));
  EXPECT_TRUE(back.is_contiguous());
}

TEST(Npy, ExactHeaderBytesMatchNumPy) {
  TempDir tmp;
  const auto path = tmp.file("a.npy");
  write_npy(path, torch::zeros({2, 3}));
  // What numpy.save writes for np.zeros((2, 3), np.float32): 118 (= 'v') bytes of header text.
  std::string expected = kMagicV1 + std::string("v\0", 2) + "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  expected.append(128 - 1 - expected.size(), ' ');
  expected += '\n';
  ASSERT_EQ(expected.size(), 128u);
  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 128u + 6 * 4);
  EXPECT_EQ(bytes.substr(0, 128), expected);
  EXPECT_EQ(bytes.substr(128), std::string(24, '\0'));
}

TEST(Npy, ShapesFormattedAsPythonTuples) {
  TempDir tmp;
  const auto path = tmp.file("s.npy");
  write_npy(path, torch::zeros({5}, torch::kLong));
  EXPECT_NE(read_file(path).find("{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }"), std::string::npos);
  write_npy(path, torch::zeros({}, torch::kByte));
  EXPECT_NE(read_file(path).find("{'descr': '|u1', 'fortran_order': False, 'shape': (), }"), std::string::npos);
  write_npy(path, torch::zeros({2}, torch::kBool));
  EXPECT_NE(read_file(path).find("'descr': '|b1'"), std::string::npos);
  write_npy(path, torch::zeros({1, 2, 3}, torch::kHalf));
  EXPECT_NE(read_file(path).find("'descr': '<f2', 'fortran_order': False, 'shape': (1, 2, 3), }"),
            std::string::npos);
}

TEST(Npy, HeaderIsAlignedTo64Bytes) {
  TempDir tmp;
  const auto path = tmp.file("h.npy");
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {}, {5}, {2, 3}, {1000000, 0}, {1, 2, 3, 4, 5, 6, 7, 8}, {123456789, 0, 1, 1, 1, 1, 1, 1, 1, 1}}) {
    write_npy(path, torch::zeros(shape));
    const std::string bytes = read_file(path);
    const std::size_t total = header_total_v1(bytes);
    EXPECT_EQ(bytes.substr(0, 8), kMagicV1);
    EXPECT_EQ(total % 64, 0u) << total;
    EXPECT_EQ(bytes[total - 1], '\n');
    EXPECT_EQ(read_npy(path).sizes().vec(), shape);
  }
}

TEST(Npy, HugeHeaderUsesVersion2) {
  TempDir tmp;
  const auto path = tmp.file("v2.npy");
  // 23000 dimensions of size 1 make the shape text alone about 69 kB, beyond format 1.0's limit.
  const std::vector<int64_t> shape(23000, 1);
  auto t = torch::full(shape, 4.0f);
  write_npy(path, t);
  const std::string bytes = read_file(path);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x02\x00", 8));
  uint32_t hlen = 0;
  std::memcpy(&hlen, bytes.data() + 8, 4);
  EXPECT_GT(hlen, 65535u);
  EXPECT_EQ((12 + hlen) % 64, 0u);
  auto back = read_npy(path);
  EXPECT_EQ(back.sizes().vec(), shape);
  EXPECT_EQ(*back.data_ptr<float>(), 4.0f);
}

TEST(Npy, ReadsHandWrittenVariants) {
  TempDir tmp;
  const auto path = tmp.file("v.npy");
  // Version 2.0, unaligned header, keys out of order, double quotes, Python 2 longs.
  write_bytes(path, make_npy(R"({"shape": (2L,), 'fortran_order': False, 'descr': '<f4'})", floats({1.f, 2.f}), 2));
  EXPECT_TRUE(torch::equal(read_npy(path), torch::tensor({1.f, 2.f})));
  // Version 3.0 (utf8 header) and a one-byte type with '<' instead of '|'.
  write_bytes(path, make_npy("{'descr': '<u1', 'fortran_order': False, 'shape': (3,), }", "\x01\x02\x03", 3));
  EXPECT_TRUE(torch::equal(read_npy(path), torch::tensor({1, 2, 3}, torch::kByte)));
}

// --- rejections ----------------------------------------------------------------------------

class NpyMalformed : public ::testing::Test {
 protected:
  TempDir tmp_;
  std::string path_ = tmp_.file("bad.npy");
  void expect_error(const std::string& bytes, std::initializer_list<std::string> needles) {
    write_bytes(path_, bytes);
    expect_input_error([&] { read_npy(path_); }, needles);
  }
};

TEST_F(NpyMalformed, FortranOrderRejected) {
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }", floats({1.f, 2.f})),
               {path_, "fortran_order"});
}

TEST_F(NpyMalformed, TruncatedData) {
  write_npy(path_, torch::ones({4, 4}));
  fs::resize_file(path_, fs::file_size(path_) - 3);
  expect_input_error([&] { read_npy(path_); }, {path_, "truncated", "64"});
}

TEST_F(NpyMalformed, TrailingData) {
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", floats({1.f, 2.f})),
               {path_, "trailing"});
}

TEST_F(NpyMalformed, BadMagic) {
  std::string bytes = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", floats({1.f}));
  bytes[1] = 'n';
  expect_error(bytes, {path_, "magic"});
  expect_error("PK\x03\x04", {path_, "magic"});
  expect_error("", {path_, "magic"});
}

TEST_F(NpyMalformed, BadVersion) {
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", floats({1.f}), 4),
               {path_, "version 4.0"});
}

TEST_F(NpyMalformed, HeaderLengthBeyondFile) {
  std::string bytes = kMagicV1 + std::string("\xff\x7f", 2) + "{'descr'";
  expect_error(bytes, {path_, "header length 32767"});
}

TEST_F(NpyMalformed, BadDescr) {
  expect_error(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", floats({1.f})),
               {path_, "big-endian"});
  expect_error(make_npy("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0')),
               {path_, "'<c8'"});
  expect_error(make_npy("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }", floats({1.f})),
               {path_});
}

TEST_F(NpyMalformed, HeaderKeys) {
  expect_error(make_npy("{'descr': '<f4', 'shape': (1,), }", floats({1.f})), {path_, "fortran_order"});
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", floats({1.f})),
               {path_});
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 'x'}", floats({1.f})),
               {path_, "'extra'"});
  expect_error(make_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", floats({1.f})),
               {path_, "'descr'"});
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", ""), {path_});
  expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) ", floats({1.f})),
               {path_, "malformed header"});
  expect_error(make_npy("not a dict", ""), {path_, "malformed header"});
}

TEST_F(NpyMalformed, BoolBytesMustBeZeroOrOne) {
  expect_error(make_npy("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", "\x01\x05"),
               {path_, "bool"});
}

TEST(Npy, MissingFileAndUnsupportedWriteDtype) {
  TempDir tmp;
  expect_input_error([&] { read_npy(tmp.file("none.npy")); }, {"none.npy"});
  expect_input_error([&] { write_npy(tmp.file("bf.npy"), torch::ones({2}, torch::kBFloat16)); }, {"bf.npy"});
  EXPECT_FALSE(fs::exists(tmp.file("bf.npy")));
}

}  // namespace
}  // namespace rankprune
