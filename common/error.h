// Error tiers (see docs/architecture.md):
//  - InputError: the user's file, tensor or option is wrong. The message names it and what was
//    expected. The CLI prints it and exits with kExitInput (1).
//  - UsageError: a command-line option is missing or malformed. Exit kExitUsage (2).
//  - RP_ASSERT: a broken internal invariant; throws InternalError with file:line (exit 3).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace rankprune {

constexpr int kExitOk = 0;
constexpr int kExitInput = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInternal = 3;

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {
inline void format_into(std::ostringstream&) {}
template <typename T, typename... Rest>
void format_into(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  format_into(os, rest...);
}
}  // namespace detail

// cat("a", 1, "b") -> "a1b": message building without format strings.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  detail::format_into(os, args...);
  return os.str();
}

[[noreturn]] void throw_internal(const char* file, int line, const std::string& what);

}  // namespace rankprune

#define RP_ASSERT(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond))                                                                          \
      ::rankprune::throw_internal(__FILE__, __LINE__,                                     \
                                  ::rankprune::cat("assertion `" #cond "` failed: ", ##__VA_ARGS__)); \
  } while (0)

// Input validation: throws InputError with the concatenated message.
#define RP_CHECK_INPUT(cond, ...)                                          \
  do {                                                                     \
    if (!(cond)) throw ::rankprune::InputError(::rankprune::cat(__VA_ARGS__)); \
  } while (0)
