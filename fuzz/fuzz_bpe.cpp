// The BPE encoder and decoder of the shipped tokenizers on arbitrary text: ids in range, and the
// round trip decode(encode(text)) == the normalised text. Both shipped models use the identity
// normaliser with the dummy prefix, whitespace kept and byte fallback, so the normalised text is
// the input with each malformed UTF-8 byte replaced by U+FFFD (SentencePiece's rule) and "▁"
// (U+2581, SentencePiece's space) read back as ' '. The byte tokenizer round-trips exactly.
#include <cstdlib>

#include "fuzz/fuzz_common.h"
#include "model/tokenizer.h"

using namespace rankprune;

namespace {
std::vector<std::unique_ptr<Tokenizer>> g_toks;

// One well-formed UTF-8 character at p (as the tokenizer's reader defines it); 0 if malformed.
size_t utf8_char(const unsigned char* p, size_t avail) {
  const unsigned b0 = p[0];
  auto trail = [&](size_t i) { return i < avail && (p[i] & 0xC0) == 0x80; };
  if (b0 < 0x80) return 1;
  if ((b0 & 0xE0) == 0xC0) {
    if (!trail(1)) return 0;
    return (((b0 & 0x1F) << 6) | (p[1] & 0x3F)) >= 0x80 ? 2 : 0;
  }
  if ((b0 & 0xF0) == 0xE0) {
    if (!trail(1) || !trail(2)) return 0;
    const unsigned cp = ((b0 & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    return cp >= 0x800 && (cp < 0xD800 || cp >= 0xE000) ? 3 : 0;
  }
  if ((b0 & 0xF8) == 0xF0) {
    if (!trail(1) || !trail(2) || !trail(3)) return 0;
    const unsigned cp = ((b0 & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    return cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
  }
  return 0;
}

std::string normalised(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char(p + i, s.size() - i);
    if (n == 0) {
      out += "\xef\xbf\xbd";
      ++i;
    } else if (n == 3 && s.compare(i, 3, "\xe2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("RANKPRUNE_DATA_DIR");
  const std::string data = env && *env ? env : RANKPRUNE_SOURCE_DIR "/../shared/data";
  for (const char* name : {"tokenizers/llama2.model", "tokenizers/mistral_v1.model"})
    g_toks.push_back(Tokenizer::load(data + "/" + name));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string want = normalised(text);
  for (const auto& tok : g_toks) {
    const std::vector<int> ids = tok->encode(text);
    for (int id : ids) RP_FUZZ_CHECK(id >= 0 && id < tok->vocab_size(), tok->name(), ": id ", id);
    const std::string back = tok->decode(ids);
    RP_FUZZ_CHECK(back == want, tok->name(), ": decode(encode(text)) differs from the normalised text");
    std::string streamed;
    for (int id : ids) streamed += tok->decode_piece(id);
    (void)streamed;  // streaming keeps the dummy-prefix space and raw bytes: no equality to check
  }
  static const auto bytes = Tokenizer::load("bytes");
  RP_FUZZ_CHECK(bytes->decode(bytes->encode(text)) == text, "byte tokenizer round trip");
  return 0;
}
