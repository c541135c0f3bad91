// SHA-256 (FIPS 180-4), for content identities: model and calibration-data hashes that key
// cached statistics and results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace rankprune {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::string hex_digest();  // finalises; 64 lowercase hex characters

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  std::size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const std::string& data);
// Hash of a file's bytes, read in 1 MiB pieces. InputError naming the file when unreadable.
std::string sha256_file(const std::string& path);

}  // namespace rankprune
