// Typed helpers on top of the byte-level Communicator (layer 3 of cluster/communicator.h).
// Values are trivially copyable and travel as their bytes: every rank runs the same binary.
#pragma once

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cluster/communicator.h"

namespace rankprune::cluster {

// `s` from `root` to every rank (the size first, then the bytes); other ranks' `s` is replaced.
void broadcast_string(Communicator& comm, std::string& s, int root);

// One value from `root` to every rank, in place.
template <typename T>
void broadcast_value(Communicator& comm, T& value, int root) {
  static_assert(std::is_trivially_copyable_v<T>, "broadcast_value needs a trivially copyable T");
  comm.broadcast(&value, sizeof(T), root);
}

// The bytes of `values` / back. from_bytes throws CommError when the byte count is not a whole
// number of T (a peer sent something else).
template <typename T>
std::string to_bytes(const std::vector<T>& values) {
  static_assert(std::is_trivially_copyable_v<T>, "to_bytes needs a trivially copyable T");
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

[[noreturn]] void throw_bad_size(std::size_t bytes, std::size_t value_size);

template <typename T>
std::vector<T> from_bytes(const std::string& bytes) {
  static_assert(std::is_trivially_copyable_v<T>, "from_bytes needs a trivially copyable T");
  if (bytes.size() % sizeof(T) != 0) throw_bad_size(bytes.size(), sizeof(T));
  std::vector<T> values(bytes.size() / sizeof(T));
  if (!values.empty()) std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

// Every rank's `mine`, in rank order, on every rank.
template <typename T>
std::vector<T> allgather_values(Communicator& comm, const T& mine) {
  static_assert(std::is_trivially_copyable_v<T>, "allgather_values needs a trivially copyable T");
  const std::vector<std::string> all =
      comm.allgatherv(std::string(reinterpret_cast<const char*>(&mine), sizeof(T)));
  std::vector<T> out(all.size());
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].size() != sizeof(T)) throw_bad_size(all[r].size(), sizeof(T));
    std::memcpy(&out[r], all[r].data(), sizeof(T));
  }
  return out;
}

}  // namespace rankprune::cluster
