// SentencePiece .model reader and BPE encoder/decoder, plus the byte tokenizer.
//
// rankprune cannot load libsentencepiece next to LibTorch (see model/CMakeLists.txt), so this file
// reimplements the part of it that rankprune uses, aiming at id-for-id agreement with the Debian
// libsentencepiece (0.1.97) that tests/model/test_tokenizer.cpp compares against. Where that
// library has a quirk (how unknown characters merge, how a leading "▁" is dropped on decode, how
// invalid UTF-8 becomes U+FFFD), the quirk is reproduced on purpose; comments say which.
//
// Supported: BPE models (every shipped tokenizer), any normaliser (identity or a
// precompiled_charsmap such as nmt_nfkc), user-defined, unused and byte-fallback pieces, an
// optional denormaliser. Not supported: UNIGRAM, WORD and CHAR models (InputError at load).
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/error.h"
#include "common/fs.h"

namespace rankprune {
namespace {

// SentencePiece writes ' ' as U+2581 LOWER ONE EIGHTH BLOCK inside pieces.
constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";
constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";      // U+FFFD
constexpr std::string_view kDefaultUnkSurface = " \xe2\x81\x87 ";  // " ⁇ ", the proto default

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------------------------
// UTF-8 as SentencePiece sees it.

// Character length from the lead byte's high nibble alone. SentencePiece splits normalised text
// this way (it was validated during normalisation), so we must too.
size_t lead_byte_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// True when `p` starts with one well-formed character (sets *len); false with *len = 1 for a
// truncated or overlong sequence, a surrogate or a code point above U+10FFFF. These are the byte
// sequences SentencePiece replaces with U+FFFD, one byte at a time.
bool valid_utf8_char(const char* p, size_t avail, size_t* len) {
  *len = 1;
  const auto b = [p](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(p[i])); };
  const auto trail = [&b](size_t i) { return (b(i) & 0xC0) == 0x80; };
  const uint32_t b0 = b(0);
  if (b0 < 0x80) return true;
  uint32_t cp = 0;
  size_t n = 0;
  if ((b0 & 0xE0) == 0xC0) {
    if (avail < 2 || !trail(1)) return false;
    cp = ((b0 & 0x1F) << 6) | (b(1) & 0x3F);
    if (cp < 0x80) return false;
    n = 2;
  } else if ((b0 & 0xF0) == 0xE0) {
    if (avail < 3 || !trail(1) || !trail(2)) return false;
    cp = ((b0 & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    if (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000)) return false;
    n = 3;
  } else if ((b0 & 0xF8) == 0xF0) {
    if (avail < 4 || !trail(1) || !trail(2) || !trail(3)) return false;
    cp = ((b0 & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) return false;
    n = 4;
  } else {
    return false;
  }
  *len = n;
  return true;
}

// Appends `bytes` to `out`, each malformed byte replaced by U+FFFD (how SentencePiece decodes a
// run of byte-fallback pieces).
void append_bytes_as_utf8(std::string_view bytes, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len = 1;
    if (valid_utf8_char(bytes.data() + i, bytes.size() - i, &len)) {
      out->append(bytes.data() + i, len);
    } else {
      out->append(kReplacementChar);
    }
    i += len;
  }
}

void append_unescaped(std::string_view piece, std::string* out) {
  size_t pos = 0;
  while (pos < piece.size()) {
    const size_t hit = piece.find(kSpaceSymbol, pos);
    if (hit == std::string_view::npos) {
      out->append(piece.substr(pos));
      break;
    }
    out->append(piece.substr(pos, hit - pos));
    out->push_back(' ');
    pos = hit + kSpaceSymbol.size();
  }
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format: just enough to read a ModelProto (proto2, see sentencepiece_model.proto).

enum WireType {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5
};

class WireReader {
 public:
  WireReader(std::string_view data, const std::string& path) : data_(data), path_(path) {}

  // Reads the next field key; false at the end of the message.
  bool next(uint32_t* field, int* wire_type) {
    if (pos_ >= data_.size()) return false;
    const uint64_t key = varint();
    *field = static_cast<uint32_t>(key >> 3);
    *wire_type = static_cast<int>(key & 7);
    if (*field == 0 || (key >> 3) > 0x1FFFFFFF) fail("invalid field number");
    if (*wire_type > kFixed32) fail("invalid wire type");
    if (*wire_type == kEndGroup) fail("unbalanced end-group marker");
    return true;
  }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= data_.size()) fail("truncated varint");
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    fail("varint longer than 10 bytes");
  }

  uint32_t fixed32() {
    if (data_.size() - pos_ < 4) fail("truncated 32-bit field");
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(data_[pos_ + i]);
    pos_ += 4;
    return v;
  }

  float float32() {
    const uint32_t bits = fixed32();
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > data_.size() - pos_) fail("length-delimited field runs past the end");
    const std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  // Skips a field this reader does not need, as protobuf does with unknown fields.
  void skip(uint32_t field, int wire_type, int depth = 0) {
    switch (wire_type) {
      case kVarint:
        varint();
        break;
      case kFixed64:
        if (data_.size() - pos_ < 8) fail("truncated 64-bit field");
        pos_ += 8;
        break;
      case kLengthDelimited:
        bytes();
        break;
      case kFixed32:
        fixed32();
        break;
      case kStartGroup: {
        if (depth > 64) fail("groups nested too deeply");
        for (;;) {
          if (pos_ >= data_.size()) fail("unterminated group");
          const uint64_t key = varint();
          const auto inner_field = static_cast<uint32_t>(key >> 3);
          const int inner_wire = static_cast<int>(key & 7);
          if (inner_wire == kEndGroup) {
            if (inner_field != field) fail("mismatched end-group marker");
            return;
          }
          if (inner_field == 0 || inner_wire > kFixed32) fail("invalid field key in group");
          skip(inner_field, inner_wire, depth + 1);
        }
      }
      default:
        fail("invalid wire type");
    }
  }

  [[noreturn]] void fail(const std::string& why) const {
    throw InputError(cat("'", path_, "' is not a SentencePiece model: malformed protobuf (", why,
                         " at byte ", pos_, ")"));
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  const std::string& path_;
};

enum class PieceType {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct PieceProto {
  std::string text;
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
};

struct TrainerSpecProto {
  int model_type = 1;  // UNIGRAM is the proto default
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  // SentencePiece resolves the special ids from these piece strings (bos_id() looks up bos_piece),
  // not from the unk_id/bos_id/eos_id/pad_id fields (40-43), which only steer training.
  std::string unk_piece, bos_piece, eos_piece;
  std::optional<std::string> unk_surface;
};

struct NormalizerSpecProto {
  std::string name;
  std::string precompiled_charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

struct ModelProto {
  std::vector<PieceProto> pieces;
  TrainerSpecProto trainer;
  NormalizerSpecProto normalizer;
  std::optional<NormalizerSpecProto> denormalizer;
};

// proto2 keeps an out-of-range enum value as an unknown field, leaving the default in place.
template <typename F>
void read_enum(WireReader& r, int lo, int hi, F&& set) {
  const auto v = static_cast<int32_t>(r.varint());
  if (v >= lo && v <= hi) set(v);
}

void parse_piece(std::string_view msg, const std::string& path, PieceProto* p) {
  WireReader r(msg, path);
  uint32_t field;
  int wire;
  while (r.next(&field, &wire)) {
    if (field == 1 && wire == kLengthDelimited) {
      p->text = std::string(r.bytes());
    } else if (field == 2 && wire == kFixed32) {
      p->score = r.float32();
    } else if (field == 3 && wire == kVarint) {
      read_enum(r, 1, 6, [p](int v) { p->type = static_cast<PieceType>(v); });
    } else {
      r.skip(field, wire);
    }
  }
}

void parse_trainer_spec(std::string_view msg, const std::string& path, TrainerSpecProto* t) {
  WireReader r(msg, path);
  uint32_t field;
  int wire;
  while (r.next(&field, &wire)) {
    if (field == 3 && wire == kVarint) {
      read_enum(r, 1, 4, [t](int v) { t->model_type = v; });
    } else if (field == 24 && wire == kVarint) {
      t->treat_whitespace_as_suffix = r.varint() != 0;
    } else if (field == 35 && wire == kVarint) {
      t->byte_fallback = r.varint() != 0;
    } else if (field == 44 && wire == kLengthDelimited) {
      t->unk_surface = std::string(r.bytes());
    } else if (field == 45 && wire == kLengthDelimited) {
      t->unk_piece = std::string(r.bytes());
    } else if (field == 46 && wire == kLengthDelimited) {
      t->bos_piece = std::string(r.bytes());
    } else if (field == 47 && wire == kLengthDelimited) {
      t->eos_piece = std::string(r.bytes());
    } else {
      r.skip(field, wire);
    }
  }
}

void parse_normalizer_spec(std::string_view msg, const std::string& path, NormalizerSpecProto* n) {
  WireReader r(msg, path);
  uint32_t field;
  int wire;
  while (r.next(&field, &wire)) {
    if (field == 1 && wire == kLengthDelimited) {
      n->name = std::string(r.bytes());
    } else if (field == 2 && wire == kLengthDelimited) {
      n->precompiled_charsmap = std::string(r.bytes());
    } else if (field == 3 && wire == kVarint) {
      n->add_dummy_prefix = r.varint() != 0;
    } else if (field == 4 && wire == kVarint) {
      n->remove_extra_whitespaces = r.varint() != 0;
    } else if (field == 5 && wire == kVarint) {
      n->escape_whitespaces = r.varint() != 0;
    } else {
      r.skip(field, wire);
    }
  }
}

// A message field that occurs twice is merged into one, as protobuf does; parsing each occurrence
// into the same struct gives exactly that.
ModelProto parse_model(std::string_view data, const std::string& path) {
  ModelProto m;
  WireReader r(data, path);
  uint32_t field;
  int wire;
  while (r.next(&field, &wire)) {
    if (field == 1 && wire == kLengthDelimited) {
      m.pieces.emplace_back();
      parse_piece(r.bytes(), path, &m.pieces.back());
      // Refused here rather than after the whole list is held: two-byte empty pieces would cost
      // ~40 bytes each first.
      if (m.pieces.back().text.empty()) {
        throw InputError(cat("'", path, "' is not a usable SentencePiece model: piece ", m.pieces.size() - 1,
                             " is empty"));
      }
    } else if (field == 2 && wire == kLengthDelimited) {
      parse_trainer_spec(r.bytes(), path, &m.trainer);
    } else if (field == 3 && wire == kLengthDelimited) {
      parse_normalizer_spec(r.bytes(), path, &m.normalizer);
    } else if (field == 5 && wire == kLengthDelimited) {
      if (!m.denormalizer) m.denormalizer.emplace();
      parse_normalizer_spec(r.bytes(), path, &*m.denormalizer);
    } else {
      r.skip(field, wire);
    }
  }
  return m;
}

// "<0x41>" -> 0x41; -1 for anything else. Only the exact upper-case form SentencePiece writes
// counts, as in SentencePiece.
int byte_piece_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    if (c >= '0' && c <= '9') {
      v = v * 16 + (c - '0');
    } else if (c >= 'A' && c <= 'F') {
      v = v * 16 + (c - 'A' + 10);
    } else {
      return -1;
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// User-defined symbols: matched greedily (longest first) as whole, never-merged symbols, both by
// the normaliser (so they escape normalisation) and by the BPE splitter.
class PrefixMatcher {
 public:
  void add(std::string_view symbol) {
    symbols_.insert(symbol);
    if (std::find(lengths_.begin(), lengths_.end(), symbol.size()) == lengths_.end()) {
      lengths_.push_back(symbol.size());
      std::sort(lengths_.begin(), lengths_.end(), std::greater<>());
    }
  }
  bool empty() const { return symbols_.empty(); }

  // Length of the longest symbol that `text` starts with; 0 when none does.
  size_t match(std::string_view text) const {
    for (const size_t len : lengths_) {
      if (len <= text.size() && symbols_.count(text.substr(0, len))) return len;
    }
    return 0;
  }

 private:
  std::unordered_set<std::string_view> symbols_;  // views into the tokenizer's piece strings
  std::vector<size_t> lengths_;                   // distinct symbol lengths, longest first
};

// ---------------------------------------------------------------------------------------------
// The normaliser: an optional precompiled_charsmap (longest-match rewrite rules held in a
// darts-clone double-array trie), then whitespace handling and the dummy "▁" prefix.
class Normalizer {
 public:
  Normalizer(const NormalizerSpecProto& spec, bool whitespace_as_suffix,
             const PrefixMatcher* matcher, const std::string& path)
      : add_dummy_prefix_(spec.add_dummy_prefix),
        remove_extra_whitespaces_(spec.remove_extra_whitespaces),
        escape_whitespaces_(spec.escape_whitespaces),
        whitespace_as_suffix_(whitespace_as_suffix),
        matcher_(matcher),
        path_(path) {
    load_charsmap(spec.precompiled_charsmap);
  }

  std::string normalize(std::string_view input) const {
    std::string out;
    if (input.empty()) return out;
    // Leading whitespace goes first, judged after the charsmap (which may map e.g. U+3000 to ' ').
    if (remove_extra_whitespaces_) {
      while (!input.empty()) {
        const auto step = normalize_prefix(input);
        if (step.first != " ") break;
        input.remove_prefix(step.second);
      }
    }
    if (input.empty()) return out;

    out.reserve(input.size() * 3);
    const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
    if (!whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);

    bool prev_space = remove_extra_whitespaces_;
    while (!input.empty()) {
      const auto step = normalize_prefix(input);
      std::string_view piece = step.first;
      // Collapse runs: drop leading spaces of this step when the previous one ended in a space.
      while (prev_space && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
      if (!piece.empty()) {
        for (const char c : piece) {
          if (c == ' ') {
            out.append(space);
          } else {
            out.push_back(c);
          }
        }
        prev_space = piece.back() == ' ';
      }
      input.remove_prefix(step.second);
      if (!remove_extra_whitespaces_) prev_space = false;
    }

    if (remove_extra_whitespaces_) {
      while (out.size() >= space.size() &&
             std::string_view(out).substr(out.size() - space.size()) == space) {
        out.resize(out.size() - space.size());
      }
    }
    if (whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);
    return out;
  }

 private:
  // darts-clone unit layout: bits 0-7 label, bit 8 has-leaf, bit 9 offset scale, bits 10-31
  // offset; a leaf unit holds its value in bits 0-30 and has bit 31 set (so no label matches it).
  static bool unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t unit_value(uint32_t u) { return u & 0x7FFFFFFFu; }
  static uint32_t unit_label(uint32_t u) { return u & 0x800000FFu; }
  static uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

  // Blob layout: <uint32 LE trie size in bytes><trie units><NUL-terminated replacement strings>.
  void load_charsmap(const std::string& blob) {
    if (blob.empty()) return;
    const auto broken = [this](const char* why) {
      throw InputError(
          cat("'", path_, "': the normalizer's precompiled_charsmap is corrupt (", why, ")"));
    };
    if (blob.size() <= 4) broken("too short");
    uint32_t trie_bytes = 0;
    for (int i = 3; i >= 0; --i)
      trie_bytes = (trie_bytes << 8) | static_cast<unsigned char>(blob[i]);
    if (trie_bytes < 4 || trie_bytes > blob.size() - 4) broken("trie size out of range");
    trie_.resize(trie_bytes / 4);
    for (size_t i = 0; i < trie_.size(); ++i) {
      uint32_t u = 0;
      for (int k = 3; k >= 0; --k) u = (u << 8) | static_cast<unsigned char>(blob[4 + 4 * i + k]);
      trie_[i] = u;
    }
    replacements_ = blob.substr(4 + trie_bytes);
  }

  // The longest charsmap rule matching the start of `text`: {replacement offset, matched bytes};
  // matched bytes = 0 when no rule matches. Like SentencePiece, only the first 32 matches count.
  std::pair<uint32_t, size_t> longest_rule(std::string_view text) const {
    constexpr int kMaxMatches = 32;
    std::pair<uint32_t, size_t> best{0, 0};
    int matches = 0;
    size_t node = unit_offset(trie_[0]);
    for (size_t i = 0; i < text.size(); ++i) {
      const auto label = static_cast<unsigned char>(text[i]);
      node ^= label;
      if (node >= trie_.size()) break;
      const uint32_t unit = trie_[node];
      if (unit_label(unit) != label) break;
      node ^= unit_offset(unit);
      if (unit_has_leaf(unit)) {
        if (node >= trie_.size()) break;
        if (matches < kMaxMatches) best = {unit_value(trie_[node]), i + 1};
        ++matches;
      }
    }
    return best;
  }

  // One normalisation step at the start of `input`: {replacement text, input bytes consumed}.
  std::pair<std::string_view, size_t> normalize_prefix(std::string_view input) const {
    if (matcher_ != nullptr) {
      if (const size_t len = matcher_->match(input)) return {input.substr(0, len), len};
    }
    if (!trie_.empty()) {
      const auto rule = longest_rule(input);
      if (rule.second > 0) {
        if (rule.first >= replacements_.size()) {
          throw InputError(cat("'", path_,
                               "': the normalizer's precompiled_charsmap is corrupt "
                               "(rule points outside the replacement table)"));
        }
        const char* begin = replacements_.data() + rule.first;
        const size_t max_len = replacements_.size() - rule.first;
        return {std::string_view(begin, strnlen(begin, max_len)), rule.second};
      }
    }
    size_t len = 1;
    if (!valid_utf8_char(input.data(), input.size(), &len)) return {kReplacementChar, 1};
    return {input.substr(0, len), len};
  }

  bool add_dummy_prefix_, remove_extra_whitespaces_, escape_whitespaces_, whitespace_as_suffix_;
  const PrefixMatcher* matcher_;
  std::string path_;
  std::vector<uint32_t> trie_;  // empty: identity normaliser
  std::string replacements_;
};

// ---------------------------------------------------------------------------------------------
class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, ModelProto model)
      : path_(path), name_(base_name(path)) {
    const auto bad = [&path](const std::string& why) {
      throw InputError(cat("'", path, "' is not a usable SentencePiece model: ", why));
    };
    static const char* const kTypeNames[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
    if (model.trainer.model_type != 2) {
      throw InputError(cat("'", path, "': unsupported SentencePiece model type ",
                           kTypeNames[model.trainer.model_type],
                           " (rankprune's SentencePiece reader implements BPE models only)"));
    }
    if (model.pieces.empty()) bad("it has no pieces");

    // The maps below hold views into pieces_, so pieces_ is final before they are built.
    pieces_ = std::move(model.pieces);
    byte_fallback_ = model.trainer.byte_fallback;
    byte_ids_.fill(-1);
    byte_value_.assign(pieces_.size(), -1);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const PieceProto& p = pieces_[i];
      const int id = static_cast<int>(i);
      if (p.text.empty()) bad(cat("piece ", id, " is empty"));
      const bool normal = p.type == PieceType::kNormal || p.type == PieceType::kUserDefined ||
                          p.type == PieceType::kUnused;
      auto& map = normal ? normal_ids_ : reserved_ids_;
      if (!map.emplace(p.text, id).second) bad(cat("piece '", p.text, "' is defined twice"));
      if (p.type == PieceType::kUserDefined) user_defined_.add(p.text);
      if (p.type == PieceType::kUnused) has_unused_ = true;
      if (p.type == PieceType::kUnknown) {
        if (unk_id_ >= 0) bad("it has two unknown pieces");
        unk_id_ = id;
      }
      if (p.type == PieceType::kByte) {
        if (!byte_fallback_) bad(cat("byte piece '", p.text, "' present but byte_fallback is off"));
        const int b = byte_piece_value(p.text);
        if (b < 0) bad(cat("invalid byte piece '", p.text, "'"));
        byte_ids_[b] = id;
        byte_value_[i] = b;
      }
    }
    if (unk_id_ < 0) bad("it has no unknown piece");
    if (byte_fallback_ && std::count(byte_ids_.begin(), byte_ids_.end(), -1) > 0) {
      bad("byte_fallback is on but not all 256 byte pieces are present");
    }

    // Decoding maps an id to its piece and back (SentencePiece decodes piece strings), which only
    // differs from the id itself when a string sits in both maps.
    canonical_id_.resize(pieces_.size());
    for (size_t i = 0; i < pieces_.size(); ++i) canonical_id_[i] = piece_to_id(pieces_[i].text);

    const auto special = [this](const std::string& piece, const char* fallback) {
      const int id = piece_to_id(piece.empty() ? std::string_view(fallback) : piece);
      return pieces_[id].type == PieceType::kControl ? id : -1;
    };
    bos_id_ = special(model.trainer.bos_piece, "<s>");
    eos_id_ = special(model.trainer.eos_piece, "</s>");
    unk_surface_ =
        model.trainer.unk_surface ? *model.trainer.unk_surface : std::string(kDefaultUnkSurface);

    const NormalizerSpecProto& ns = model.normalizer;
    normalizer_.emplace(ns, model.trainer.treat_whitespace_as_suffix,
                        user_defined_.empty() ? nullptr : &user_defined_, path);
    if (model.denormalizer && !model.denormalizer->precompiled_charsmap.empty()) {
      denormalizer_.emplace(*model.denormalizer, false, nullptr, path);
    }
    strip_first_space_ = ns.add_dummy_prefix || ns.remove_extra_whitespaces;
    strip_all_leading_spaces_ = ns.remove_extra_whitespaces;
  }

  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int> encode(const std::string& text) const override {
    const std::string normalized = normalizer_->normalize(text);
    std::vector<int> ids;
    if (normalized.empty()) return ids;
    const std::string_view norm(normalized);

    // Initial symbols: user-defined pieces whole (and frozen), otherwise single characters.
    std::vector<Symbol> symbols;
    symbols.reserve(norm.size());
    for (size_t pos = 0; pos < norm.size();) {
      size_t len = user_defined_.empty() ? 0 : user_defined_.match(norm.substr(pos));
      const bool frozen = len > 0;
      if (!frozen)
        len = std::min(norm.size() - pos, lead_byte_len(static_cast<unsigned char>(norm[pos])));
      const int index = static_cast<int>(symbols.size());
      symbols.push_back(Symbol{static_cast<uint32_t>(pos), static_cast<uint32_t>(len), index - 1,
                               pos + len < norm.size() ? index + 1 : -1, frozen});
      pos += len;
    }
    const auto text_of = [&](int i) { return norm.substr(symbols[i].begin, symbols[i].len); };

    // For each UNUSED piece formed by a merge, the two halves it was last proposed from:
    // SentencePiece never outputs an UNUSED piece it merged, it splits it back along these.
    std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>
        unused_halves;
    std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> agenda;
    const auto propose = [&](int left, int right) {
      if (left < 0 || right < 0 || symbols[left].frozen || symbols[right].frozen) return;
      const std::string_view merged(norm.data() + symbols[left].begin,
                                    symbols[left].len + symbols[right].len);
      const auto it = normal_ids_.find(merged);
      if (it == normal_ids_.end()) return;
      const PieceProto& piece = pieces_[it->second];
      agenda.push(Candidate{piece.score, left, right, static_cast<uint32_t>(merged.size())});
      if (piece.type == PieceType::kUnused) unused_halves[merged] = {text_of(left), text_of(right)};
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) propose(i - 1, i);

    while (!agenda.empty()) {
      const Candidate c = agenda.top();
      agenda.pop();
      Symbol& left = symbols[c.left];
      Symbol& right = symbols[c.right];
      // Stale: one side was merged away, or the right side grew, since this was proposed.
      if (left.len == 0 || right.len == 0 || left.len + right.len != c.len) continue;
      left.len += right.len;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = c.left;
      right.len = 0;
      propose(left.prev, c.left);
      propose(c.left, left.next);
    }

    bool prev_unknown = false;
    bool hit_control = false;
    const auto emit = [&](std::string_view piece) {
      const int id = piece_to_id(piece);
      const PieceType type = pieces_[id].type;
      if (type == PieceType::kControl) {
        hit_control = true;
        prev_unknown = false;
        return;
      }
      const bool unknown = type == PieceType::kUnknown;
      if (unknown && byte_fallback_) {
        for (const char b : piece) ids.push_back(byte_ids_[static_cast<unsigned char>(b)]);
      } else if (!(unknown && prev_unknown)) {
        // A run of unknown symbols becomes one unknown id, as SentencePiece merges them.
        ids.push_back(id);
      }
      prev_unknown = unknown;
    };
    for (int i = 0; i != -1; i = symbols[i].next) {
      if (has_unused_) {
        resegment(text_of(i), unused_halves, emit);
      } else {
        emit(text_of(i));
      }
    }
    // SentencePiece fails the whole encode (and EncodeAsIds returns nothing) when a symbol spells
    // a control piece; only a malformed vocabulary can get here.
    if (hit_control) ids.clear();
    return ids;
  }

  std::string decode(const std::vector<int>& ids) const override {
    std::string text;
    std::string pending_bytes;  // consecutive byte pieces, decoded together
    bool at_start = true;       // still looking for the dummy-prefix "▁" to drop
    bool dropped_space = false;
    for (const int raw_id : ids) {
      const int id = canonical_id_[checked(raw_id)];
      if (byte_value_[id] >= 0) {
        pending_bytes.push_back(static_cast<char>(byte_value_[id]));
        continue;
      }
      append_bytes_as_utf8(pending_bytes, &text);
      pending_bytes.clear();
      if (dropped_space || !text.empty()) at_start = false;
      dropped_space = false;
      const PieceProto& piece = pieces_[id];
      if (piece.type == PieceType::kControl) continue;
      if (piece.type == PieceType::kUnknown) {
        text += unk_surface_;
        continue;
      }
      std::string_view body = piece.text;
      // The first piece's leading "▁" is the dummy prefix. With remove_extra_whitespaces every
      // leading "▁" goes, until some text has been produced (SentencePiece's rule).
      if (at_start && strip_first_space_ && body.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
        body.remove_prefix(kSpaceSymbol.size());
        dropped_space = !strip_all_leading_spaces_;
      }
      append_unescaped(body, &text);
    }
    append_bytes_as_utf8(pending_bytes, &text);
    if (denormalizer_) text = denormalizer_->normalize(text);
    return text;
  }

  std::string decode_piece(int raw_id) const override {
    const int id = canonical_id_[checked(raw_id)];
    const PieceProto& piece = pieces_[id];
    if (byte_value_[id] >= 0) return std::string(1, static_cast<char>(byte_value_[id]));
    if (piece.type == PieceType::kControl) return "";
    if (piece.type == PieceType::kUnknown) return unk_surface_;
    std::string out;
    append_unescaped(piece.text, &out);
    return out;
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  std::string name() const override { return name_; }

 private:
  struct Symbol {
    uint32_t begin, len;  // bytes of the normalised text; len 0 once merged into its left
    int prev, next;       // neighbouring live symbols, -1 at the ends
    bool frozen;          // user-defined piece: never merged
  };
  struct Candidate {
    float score;
    int left, right;
    uint32_t len;  // merged length when proposed; a mismatch later marks the entry stale
  };
  // Highest score first; among equal scores the leftmost pair.
  struct CandidateOrder {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  int piece_to_id(std::string_view piece) const {
    if (const auto it = reserved_ids_.find(piece); it != reserved_ids_.end()) return it->second;
    if (const auto it = normal_ids_.find(piece); it != normal_ids_.end()) return it->second;
    return unk_id_;
  }

  template <typename Emit>
  void resegment(std::string_view piece,
                 const std::unordered_map<std::string_view,
                                          std::pair<std::string_view, std::string_view>>& halves,
                 Emit& emit) const {
    if (pieces_[piece_to_id(piece)].type == PieceType::kUnused) {
      if (const auto it = halves.find(piece); it != halves.end()) {
        resegment(it->second.first, halves, emit);
        resegment(it->second.second, halves, emit);
        return;
      }
    }
    emit(piece);
  }

  int checked(int id) const {
    if (id < 0 || id >= vocab_size()) {
      throw InputError(cat("token id ", id, " is out of range for tokenizer '", name_,
                           "' (vocabulary of ", vocab_size(), ")"));
    }
    return id;
  }

  std::string path_, name_;
  std::vector<PieceProto> pieces_;
  std::unordered_map<std::string_view, int> normal_ids_;    // NORMAL, USER_DEFINED, UNUSED
  std::unordered_map<std::string_view, int> reserved_ids_;  // UNKNOWN, CONTROL, BYTE
  std::vector<int> canonical_id_;
  std::vector<int> byte_value_;  // per id: the byte of a byte piece, else -1
  std::array<int, 256> byte_ids_{};
  PrefixMatcher user_defined_;
  std::optional<Normalizer> normalizer_, denormalizer_;
  std::string unk_surface_;
  int unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  bool byte_fallback_ = false;
  bool has_unused_ = false;
  bool strip_first_space_ = false, strip_all_leading_spaces_ = false;
};

// ---------------------------------------------------------------------------------------------
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int> encode(const std::string& text) const override {
    std::vector<int> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (const int id : ids) out.push_back(static_cast<char>(checked(id)));
    return out;
  }
  std::string decode_piece(int id) const override {
    return std::string(1, static_cast<char>(checked(id)));
  }
  int vocab_size() const override { return 256; }
  int bos_id() const override { return -1; }
  int eos_id() const override { return -1; }
  std::string name() const override { return "bytes"; }

 private:
  static int checked(int id) {
    if (id < 0 || id > 255) {
      throw InputError(cat("token id ", id, " is out of range for the byte tokenizer (0..255)"));
    }
    return id;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& spec) {
  if (spec == "bytes" || spec == "byte") return std::make_unique<ByteTokenizer>();
  if (!file_exists(spec)) {
    throw InputError(cat("tokenizer '", spec,
                         "' not found: expected a SentencePiece .model file "
                         "or \"bytes\""));
  }
  if (is_directory(spec)) {
    throw InputError(cat("tokenizer '", spec, "' is a directory, not a SentencePiece .model file"));
  }
  const std::string data = read_file(spec);
  return std::make_unique<SentencePieceTokenizer>(spec, parse_model(data, spec));
}

}  // namespace rankprune
