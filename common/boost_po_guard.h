// Boost.Program_options (1.74, Debian 12) formats an error message by replacing the tokens
// %option%, %value%, %original_token%, %canonical_option%, %prefix% and %invalid_line% (the
// names the library's message templates use) in a template with the
// user's text, in a loop that never ends when that text itself contains the token: an unknown
// option named "x%canonical_option%" in a --config file, or "n = %value%x" for an int option,
// hangs `what()` forever (found by fuzz/fuzz_sweep_ini.cpp; docs/reliability.md). Command-line
// arguments and config-file text that contain one of the tokens are refused before Boost sees
// them.
#pragma once

#include <string_view>

namespace rankprune {

// The first Boost.Program_options message token in `text`, or an empty view when none.
inline std::string_view boost_po_token_in(std::string_view text) {
  static constexpr std::string_view kTokens[] = {"%option%", "%value%", "%original_token%", "%canonical_option%",
                                                 "%prefix%", "%invalid_line%"};
  for (std::string_view t : kTokens)
    if (text.find(t) != std::string_view::npos) return t;
  return {};
}

}  // namespace rankprune
