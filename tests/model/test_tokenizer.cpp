// rankprune's own SentencePiece reader/encoder (model/tokenizer.cpp) against the real
// libsentencepiece, loaded side by side in this torch-free binary (see model/CMakeLists.txt for
// why the two cannot meet anywhere else). The reference decides every expected id and string.
//
// Besides the shipped tokenizers, the tests train small models with libsentencepiece's own
// trainer to reach the features the shipped ones do not use (charsmap normalisers, user-defined
// symbols, no byte fallback, whitespace options, a denormaliser), and rewrite piece types in a
// shipped model to reach UNUSED and USER_DEFINED pieces.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "model/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using rankprune::InputError;
using rankprune::Tokenizer;

// ---------------------------------------------------------------------------------------------
// Data and files.

std::string data_dir() {
  if (const char* env = std::getenv("RANKPRUNE_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return RANKPRUNE_SOURCE_DIR "/../shared/data";
}

std::string data_path(const std::string& rel) { return data_dir() + "/" + rel; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("test data missing: " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// Lines [first, first + count) of a text file, without their '\n'.
std::vector<std::string> read_lines(const std::string& path, size_t first, size_t count) {
  std::istringstream in(read_bytes(path));
  std::vector<std::string> lines;
  std::string line;
  for (size_t i = 0; std::getline(in, line) && lines.size() < count; ++i) {
    if (i >= first) lines.push_back(line);
  }
  return lines;
}

std::vector<std::string> lambada_texts(size_t count) {
  std::istringstream in(read_bytes(data_path("tasks/lambada_openai/lambada_test.jsonl")));
  std::vector<std::string> texts;
  std::string line;
  while (texts.size() < count && std::getline(in, line)) {
    texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  }
  return texts;
}

// A fresh directory under gtest's temp dir, removed on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::random_device rd;
    path_ = ::testing::TempDir() + "rp_tok_" + std::to_string(rd()) + std::to_string(rd());
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Comparison with the reference.

std::string printable(const std::string& s, size_t max_len = 160) {
  std::ostringstream os;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      os << "\\\\";
    } else if (c >= 0x20 && c < 0x7F) {
      os << s[i];
    } else {
      static const char* hex = "0123456789abcdef";
      os << "\\x" << hex[c >> 4] << hex[c & 15];
    }
  }
  if (s.size() > max_len) os << "...(" << s.size() << " bytes)";
  return os.str();
}

std::string ids_near(const std::vector<int>& ids, size_t at) {
  std::ostringstream os;
  const size_t lo = at >= 4 ? at - 4 : 0;
  for (size_t i = lo; i < ids.size() && i < at + 5; ++i)
    os << (i == at ? " [" : " ") << ids[i] << (i == at ? "]" : "");
  return os.str();
}

struct TokenizerPair {
  std::unique_ptr<Tokenizer> ours;
  sentencepiece::SentencePieceProcessor ref;
};

std::unique_ptr<TokenizerPair> load_pair(const std::string& path) {
  auto pair = std::make_unique<TokenizerPair>();
  const auto status = pair->ref.Load(path);
  if (!status.ok())
    throw std::runtime_error("libsentencepiece cannot load " + path + ": " + status.ToString());
  pair->ours = Tokenizer::load(path);
  return pair;
}

// Same ids from both encoders, and the same text from both decoders for those ids.
::testing::AssertionResult agrees_with_reference(const TokenizerPair& t, const std::string& text) {
  const std::vector<int> want = t.ref.EncodeAsIds(text);
  const std::vector<int> got = t.ours->encode(text);
  if (got != want) {
    size_t at = 0;
    while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
    return ::testing::AssertionFailure()
           << "encode differs on \"" << printable(text) << "\": first difference at token " << at
           << "\n  reference:" << ids_near(want, at) << " (" << want.size() << " ids)"
           << "\n  ours:     " << ids_near(got, at) << " (" << got.size() << " ids)";
  }
  const std::string want_text = t.ref.DecodeIds(want);
  const std::string got_text = t.ours->decode(want);
  if (got_text != want_text) {
    return ::testing::AssertionFailure()
           << "decode differs for \"" << printable(text) << "\"\n  reference: \""
           << printable(want_text) << "\"\n  ours:      \"" << printable(got_text) << "\"";
  }
  return ::testing::AssertionSuccess();
}

// Checks every text, reporting at most a few failures so one bug does not print thousands.
void expect_agreement(const TokenizerPair& t, const std::vector<std::string>& texts,
                      const std::string& what) {
  ASSERT_FALSE(texts.empty()) << what;
  int failures = 0;
  for (size_t i = 0; i < texts.size() && failures < 5; ++i) {
    const auto result = agrees_with_reference(t, texts[i]);
    if (!result) {
      ++failures;
      ADD_FAILURE() << what << " #" << i << ": " << result.message();
    }
  }
}

// Hand-picked cases: whitespace in every position, control characters, composed and decomposed
// accents, scripts and emoji that need byte fallback, malformed UTF-8, text that looks like
// special pieces.
std::vector<std::string> edge_cases() {
  return {
      "",
      " ",
      "   ",
      "\t",
      "\n",
      "\n\n",
      "a",
      " hello",
      "hello ",
      "  hello   world  ",
      "hello\tworld",
      "line one\nline two\n",
      "\r\n windows \r\n",
      "caf\xc3\xa9",   // é composed (U+00E9)
      "cafe\xcc\x81",  // e + U+0301 combining acute
      "\xc3\xa9t\xc3\xa9 \xc3\xa9t\xc3\xa9",
      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87\xe7\xab\xa0",  // 日本語の文章
      "\xe4\xb8\xad\xe6\x96\x87 \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4",  // 中文 한국어
      "\xf0\x9f\x98\x80",                                               // 😀
      "smile \xf0\x9f\x98\x80\xf0\x9f\x98\x80 twice \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
      "\xe2\x96\x81",  // a literal U+2581
      "a\xe2\x96\x81\xe2\x96\x81"
      "b",  // literal U+2581 run inside a word
      "\xc2\xa0non-breaking\xc2\xa0space\xe3\x80\x80ideographic",
      "\xef\xac\x81"
      "fi ligature, \xef\xbc\xa1 fullwidth, \xe2\x91\xa0 circled",
      "<s> </s> <unk> <0x41> <pad>",
      "\xef\xbf\xbd replacement char",
      std::string("nul\0inside", 10),
      "\x80\xff bad bytes",
      "truncated \xe2\x96",
      "surrogate \xed\xa0\x80 and overlong \xc0\xaf",
      "1234567890 3.14159 1,000,000",
      "CamelCaseWordsAndALLCAPS snake_case kebab-case",
      "\"quotes\" 'apostrophes' \xe2\x80\x94 em dash \xe2\x80\xa6 ellipsis",
      std::string(200, ' ') + "x" + std::string(200, ' '),
      std::string(500, 'a'),
      std::string(300, '\n'),
  };
}

// Random strings drawn from tricky fragments, for the cases nobody thought to pick by hand.
std::vector<std::string> random_texts(size_t count, uint32_t seed) {
  static const std::vector<std::string> fragments = {" ",
                                                     "  ",
                                                     "\t",
                                                     "\n",
                                                     "\r\n",
                                                     "a",
                                                     "b",
                                                     "the",
                                                     "The",
                                                     "ing",
                                                     "tion",
                                                     "\xe2\x96\x81",
                                                     "\xc3\xa9",
                                                     "e\xcc\x81",
                                                     "\xe6\x97\xa5\xe6\x9c\xac",
                                                     "\xed\x95\x9c",
                                                     "\xf0\x9f\x98\x80",
                                                     "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
                                                     "\xc2\xa0",
                                                     "\xe3\x80\x80",
                                                     "\xef\xac\x81",
                                                     "\xef\xbc\xa1",
                                                     "\xef\xbc\xa1"
                                                     "BC",
                                                     "\xe2\x91\xa0",
                                                     "\x80",
                                                     "\xff",
                                                     "\xe2\x96",
                                                     "\xed\xa0\x80",
                                                     "\xc0\xaf",
                                                     std::string(1, '\0'),
                                                     "<s>",
                                                     "</s>",
                                                     "<unk>",
                                                     "<0x41>",
                                                     "<sep>",
                                                     "[MASK]",
                                                     "123",
                                                     "4567",
                                                     ".",
                                                     ",",
                                                     "'",
                                                     "\"",
                                                     "\xe2\x80\x94",
                                                     "\xe2\x80\xa6",
                                                     "qu",
                                                     "ab",
                                                     "abc",
                                                     "x",
                                                     "Hello",
                                                     "world"};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, fragments.size() - 1);
  std::uniform_int_distribution<int> length(0, 24);
  std::vector<std::string> texts;
  for (size_t i = 0; i < count; ++i) {
    std::string s;
    for (int n = length(rng); n > 0; --n) s += fragments[pick(rng)];
    texts.push_back(s);
  }
  return texts;
}

// Random id sequences over the whole vocabulary, weighted towards the pieces with special
// decoding (bytes, control, unknown), including byte runs that are not valid UTF-8.
std::vector<std::vector<int>> random_id_sequences(const TokenizerPair& t, size_t count,
                                                  uint32_t seed) {
  const int vocab = t.ref.GetPieceSize();
  std::vector<int> special;
  for (int id = 0; id < vocab; ++id) {
    if (t.ref.IsByte(id) || t.ref.IsControl(id) || t.ref.IsUnknown(id)) special.push_back(id);
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> any(0, vocab - 1);
  std::uniform_int_distribution<int> length(1, 12);
  std::vector<std::vector<int>> out;
  for (size_t i = 0; i < count; ++i) {
    std::vector<int> ids;
    for (int n = length(rng); n > 0; --n) {
      if (!special.empty() && rng() % 2 == 0) {
        ids.push_back(special[rng() % special.size()]);
      } else {
        ids.push_back(any(rng));
      }
    }
    out.push_back(ids);
  }
  return out;
}

void expect_decode_agreement(const TokenizerPair& t, const std::vector<std::vector<int>>& seqs) {
  int failures = 0;
  for (size_t i = 0; i < seqs.size() && failures < 5; ++i) {
    const std::string want = t.ref.DecodeIds(seqs[i]);
    const std::string got = t.ours->decode(seqs[i]);
    if (got != want) {
      ++failures;
      std::ostringstream ids;
      for (const int id : seqs[i]) ids << ' ' << id;
      ADD_FAILURE() << "decode differs for ids" << ids.str() << "\n  reference: \""
                    << printable(want) << "\"\n  ours:      \"" << printable(got) << "\"";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The shipped tokenizers.

struct ShippedModel {
  const char* name;
  const char* rel_path;
};

std::ostream& operator<<(std::ostream& os, const ShippedModel& m) { return os << m.name; }

class ShippedTokenizer : public ::testing::TestWithParam<ShippedModel> {
 protected:
  // Loaded once per process: the 32k-piece models take a moment to load.
  const TokenizerPair& pair() {
    static std::map<std::string, std::unique_ptr<TokenizerPair>> cache;
    auto& slot = cache[GetParam().rel_path];
    if (!slot) slot = load_pair(data_path(GetParam().rel_path));
    return *slot;
  }
};

TEST_P(ShippedTokenizer, VocabularyAndSpecialIdsMatchReference) {
  const auto& t = pair();
  EXPECT_EQ(t.ours->vocab_size(), t.ref.GetPieceSize());
  EXPECT_EQ(t.ours->bos_id(), t.ref.bos_id());
  EXPECT_EQ(t.ours->eos_id(), t.ref.eos_id());
  EXPECT_EQ(t.ours->bos_id(), 1);
  EXPECT_EQ(t.ours->eos_id(), 2);
  EXPECT_EQ(t.ours->name(), fs::path(GetParam().rel_path).filename().string());
}

TEST_P(ShippedTokenizer, EveryWikitextLineMatchesReference) {
  expect_agreement(pair(), read_lines(data_path("text/wikitext2/wiki.test.raw"), 0, 1u << 30),
                   "wiki.test.raw line");
}

TEST_P(ShippedTokenizer, TinyShakespeareMatchesReference) {
  const auto lines = read_lines(data_path("text/tinyshakespeare/input.txt"), 0, 600);
  expect_agreement(pair(), lines, "tinyshakespeare line");
  // Whole speeches too, so newlines sit inside the text.
  std::vector<std::string> blocks;
  for (size_t i = 0; i + 12 <= lines.size(); i += 12) {
    std::string block;
    for (size_t k = i; k < i + 12; ++k) block += lines[k] + "\n";
    blocks.push_back(block);
  }
  expect_agreement(pair(), blocks, "tinyshakespeare block");
}

TEST_P(ShippedTokenizer, LambadaMatchesReference) {
  expect_agreement(pair(), lambada_texts(300), "lambada_openai row");
}

TEST_P(ShippedTokenizer, EdgeCasesMatchReference) {
  expect_agreement(pair(), edge_cases(), "edge case");
}

TEST_P(ShippedTokenizer, RandomFragmentsMatchReference) {
  expect_agreement(pair(), random_texts(1500, 1234), "random text");
}

TEST_P(ShippedTokenizer, LongDocumentMatchesReferenceQuickly) {
  const auto& t = pair();
  const std::string doc =
      read_bytes(data_path("text/wikitext2/wiki.test.raw")).substr(0, 300 * 1024);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const std::vector<int> ids = t.ours->encode(doc);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const auto ref_start = Clock::now();
  const size_t ref_count = t.ref.EncodeAsIds(doc).size();
  const double ref_seconds = std::chrono::duration<double>(Clock::now() - ref_start).count();
  std::cout << "[ info ] " << GetParam().name << ": encoded " << doc.size() << " bytes into "
            << ids.size() << " ids in " << seconds * 1e3 << " ms (libsentencepiece: " << ref_count
            << " ids in " << ref_seconds * 1e3 << " ms)" << std::endl;
  RecordProperty("encode_ms", static_cast<int>(seconds * 1e3));
  EXPECT_TRUE(agrees_with_reference(t, doc));
  // Well under a second on one core in a release build; the bound leaves room for a loaded CI box.
  EXPECT_LT(seconds, 3.0);
}

TEST_P(ShippedTokenizer, EverySingleIdDecodesLikeReference) {
  const auto& t = pair();
  std::vector<std::vector<int>> singles;
  for (int id = 0; id < t.ref.GetPieceSize(); ++id) singles.push_back({id});
  expect_decode_agreement(t, singles);
}

TEST_P(ShippedTokenizer, RandomIdSequencesDecodeLikeReference) {
  const auto& t = pair();
  expect_decode_agreement(t, random_id_sequences(t, 3000, 99));
  // A leading BOS must not stop the dummy-prefix space from being dropped.
  const auto& ids = t.ref.EncodeAsIds("Hello world");
  std::vector<int> with_bos = {t.ref.bos_id()};
  with_bos.insert(with_bos.end(), ids.begin(), ids.end());
  with_bos.push_back(t.ref.eos_id());
  expect_decode_agreement(t, {with_bos});
}

TEST_P(ShippedTokenizer, DecodePieceGivesEachPieceText) {
  const auto& t = pair();
  for (int id = 0; id < t.ref.GetPieceSize(); ++id) {
    std::string want;
    if (t.ref.IsByte(id)) {
      want = std::string(
          1, static_cast<char>(std::stoi(t.ref.IdToPiece(id).substr(3, 2), nullptr, 16)));
    } else if (t.ref.IsControl(id)) {
      want = "";
    } else if (t.ref.IsUnknown(id)) {
      want = t.ref.DecodeIds({id});
    } else {
      const std::string piece = t.ref.IdToPiece(id);
      for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, 3, "\xe2\x96\x81") == 0) {
          want += ' ';
          i += 3;
        } else {
          want += piece[i++];
        }
      }
    }
    ASSERT_EQ(t.ours->decode_piece(id), want) << "id " << id;
  }
}

TEST_P(ShippedTokenizer, StreamedPiecesSpellTheDecodedText) {
  const auto& t = pair();
  for (const auto& line : read_lines(data_path("text/wikitext2/wiki.test.raw"), 0, 400)) {
    const auto ids = t.ours->encode(line);
    std::string streamed;
    for (const int id : ids) streamed += t.ours->decode_piece(id);
    const std::string decoded = t.ref.DecodeIds(ids);
    // Streaming keeps the dummy-prefix space that decode() drops.
    EXPECT_TRUE(streamed == decoded || streamed == " " + decoded)
        << "streamed \"" << printable(streamed) << "\" vs decoded \"" << printable(decoded) << "\"";
  }
}

TEST_P(ShippedTokenizer, OutOfRangeIdsAreRejected) {
  const auto& t = pair();
  EXPECT_THROW(t.ours->decode({0, t.ours->vocab_size()}), InputError);
  EXPECT_THROW(t.ours->decode({-1}), InputError);
  EXPECT_THROW(t.ours->decode_piece(t.ours->vocab_size()), InputError);
}

INSTANTIATE_TEST_SUITE_P(
    Models, ShippedTokenizer,
    ::testing::Values(ShippedModel{"llama2", "tokenizers/llama2.model"},
                      ShippedModel{"mistral_v1", "tokenizers/mistral_v1.model"},
                      ShippedModel{"tok512", "models/stories260K/tok512.model"}),
    [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Piece types the shipped models lack, made by rewriting the type field of chosen pieces in
// llama2.model. A tiny protobuf writer, independent of the reader under test.

void put_varint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

uint64_t get_varint(const std::string& s, size_t* pos) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const auto b = static_cast<unsigned char>(s.at((*pos)++));
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
}

// Copies the top-level ModelProto, passing each SentencePiece's (text, type) through `retype`.
template <typename F>
std::string retype_pieces(const std::string& model, F&& retype) {
  std::string out;
  size_t pos = 0;
  while (pos < model.size()) {
    const uint64_t key = get_varint(model, &pos);
    const int wire = static_cast<int>(key & 7);
    if (wire != 2) throw std::runtime_error("unexpected top-level wire type in model");
    const uint64_t len = get_varint(model, &pos);
    std::string body = model.substr(pos, len);
    pos += len;
    if ((key >> 3) == 1) {
      std::string text;
      int type = 1;
      std::string rest;  // score and anything else, kept as is
      size_t p = 0;
      while (p < body.size()) {
        const size_t field_start = p;
        const uint64_t k = get_varint(body, &p);
        if ((k >> 3) == 1) {
          const uint64_t n = get_varint(body, &p);
          text = body.substr(p, n);
          p += n;
        } else if ((k >> 3) == 3) {
          type = static_cast<int>(get_varint(body, &p));
        } else if ((k & 7) == 5) {
          p += 4;
          rest += body.substr(field_start, p - field_start);
        } else {
          throw std::runtime_error("unexpected field in SentencePiece message");
        }
      }
      type = retype(text, type);
      body.clear();
      put_varint((1 << 3) | 2, &body);
      put_varint(text.size(), &body);
      body += text;
      body += rest;
      put_varint((3 << 3) | 0, &body);
      put_varint(static_cast<uint64_t>(type), &body);
    }
    put_varint(key, &out);
    put_varint(body.size(), &out);
    out += body;
  }
  return out;
}

std::unique_ptr<TokenizerPair> load_pair_from_bytes(const ScratchDir& dir, const std::string& name,
                                                    const std::string& model) {
  const std::string path = dir.file(name);
  write_bytes(path, model);
  return load_pair(path);
}

std::vector<std::string> mixed_corpus() {
  std::vector<std::string> texts = read_lines(data_path("text/wikitext2/wiki.test.raw"), 0, 1500);
  for (auto& s : lambada_texts(100)) texts.push_back(s);
  for (auto& s : edge_cases()) texts.push_back(s);
  for (auto& s : random_texts(400, 77)) texts.push_back(s);
  return texts;
}

TEST(SentencePieceRewritten, UnusedPiecesAreResegmentedLikeReference) {
  ScratchDir dir;
  const std::string base = read_bytes(data_path("tokenizers/llama2.model"));
  // Every 5th multi-character normal piece becomes UNUSED, plus some very common ones.
  int normal_seen = 0;
  const std::string model = retype_pieces(base, [&](const std::string& text, int type) {
    if (type != 1) return type;
    if (text == "\xe2\x96\x81the" || text == "ing" || text == "\xe2\x96\x81of") return 5;
    return (text.size() > 1 && ++normal_seen % 5 == 0) ? 5 : type;
  });
  const auto t = load_pair_from_bytes(dir, "unused.model", model);
  expect_agreement(*t, mixed_corpus(), "unused-piece model");
  expect_decode_agreement(*t, random_id_sequences(*t, 500, 5));
}

TEST(SentencePieceRewritten, UserDefinedPiecesMatchGreedilyLikeReference) {
  ScratchDir dir;
  const std::string base = read_bytes(data_path("tokenizers/llama2.model"));
  const std::string model = retype_pieces(base, [](const std::string& text, int type) {
    static const std::vector<std::string> chosen = {"\xe2\x96\x81the",          "ing", "tion", ".",
                                                    "\xe2\x96\x81\xe2\x96\x81", "er",  "ere"};
    return std::find(chosen.begin(), chosen.end(), text) != chosen.end() ? 4 : type;
  });
  const auto t = load_pair_from_bytes(dir, "user_defined.model", model);
  expect_agreement(*t, mixed_corpus(), "user-defined-piece model");
}

// Appends a NormalizerSpec (field 3) to a model; protobuf merges it into the existing one.
std::string with_extra_normalizer_fields(const std::string& model, const std::string& fields) {
  std::string out = model;
  put_varint((3 << 3) | 2, &out);
  put_varint(fields.size(), &out);
  return out + fields;
}

TEST(SentencePieceRewritten, RepeatedMessagesMergeLikeReference) {
  ScratchDir dir;
  std::string no_dummy_prefix;  // add_dummy_prefix (field 3) = false
  put_varint((3 << 3) | 0, &no_dummy_prefix);
  put_varint(0, &no_dummy_prefix);
  const auto t =
      load_pair_from_bytes(dir, "merged.model",
                           with_extra_normalizer_fields(
                               read_bytes(data_path("tokenizers/llama2.model")), no_dummy_prefix));
  expect_agreement(*t, read_lines(data_path("text/wikitext2/wiki.test.raw"), 0, 300),
                   "merged spec");
  expect_agreement(*t, edge_cases(), "merged spec edge case");
  EXPECT_NE(t->ours->encode("Hello"),
            Tokenizer::load(data_path("tokenizers/llama2.model"))->encode("Hello"));
}

TEST(SentencePieceRewritten, CorruptCharsmapIsAnInputError) {
  ScratchDir dir;
  std::string bad_charsmap;  // precompiled_charsmap (field 2) too short to hold a trie
  put_varint((2 << 3) | 2, &bad_charsmap);
  put_varint(2, &bad_charsmap);
  bad_charsmap += "\x01\x02";
  const std::string model = with_extra_normalizer_fields(
      read_bytes(data_path("models/stories260K/tok512.model")), bad_charsmap);
  sentencepiece::SentencePieceProcessor ref;
  EXPECT_FALSE(ref.LoadFromSerializedProto(model).ok());
  const std::string path = dir.file("bad_charsmap.model");
  write_bytes(path, model);
  try {
    Tokenizer::load(path);
    FAIL() << "a model with a corrupt charsmap loaded";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("precompiled_charsmap"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Models trained here with libsentencepiece's trainer, one per feature.

struct TrainedVariant {
  const char* name;
  std::vector<std::pair<std::string, std::string>> options;
};

std::ostream& operator<<(std::ostream& os, const TrainedVariant& v) { return os << v.name; }

class TrainedTokenizer : public ::testing::TestWithParam<TrainedVariant> {};

// Trains on Shakespeare plus some wiki text (accents, dates, a few non-Latin scripts).
std::string train(const ScratchDir& dir, const std::string& name,
                  const std::vector<std::pair<std::string, std::string>>& options) {
  const std::string corpus = dir.file("corpus.txt");
  if (!fs::exists(corpus)) {
    std::string text;
    for (const auto& l : read_lines(data_path("text/tinyshakespeare/input.txt"), 0, 4000))
      text += l + "\n";
    for (const auto& l : read_lines(data_path("text/wikitext2/wiki.test.raw"), 3000, 1000))
      text += l + "\n";
    write_bytes(corpus, text);
  }
  std::unordered_map<std::string, std::string> kwargs = {{"input", corpus},
                                                         {"model_prefix", dir.file(name)},
                                                         {"vocab_size", "700"},
                                                         {"model_type", "bpe"},
                                                         {"num_threads", "2"},
                                                         {"minloglevel", "2"},
                                                         {"hard_vocab_limit", "false"}};
  for (const auto& kv : options) kwargs[kv.first] = kv.second;
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs);
  if (!status.ok()) throw std::runtime_error("training " + name + " failed: " + status.ToString());
  return dir.file(name) + ".model";
}

TEST_P(TrainedTokenizer, MatchesReference) {
  ScratchDir dir;
  auto options = GetParam().options;
  for (auto& kv : options) {
    if (kv.first == "normalization_rule_tsv") {
      // Overlapping rules (a, ab, abc: the longest must win), a deletion, rules that produce
      // spaces (so whitespace collapsing sees normaliser output), a composition.
      write_bytes(dir.file("norm.tsv"),
                  "61\t41\n61 62\t58\n61 62 63\t59 20 5A\n78\t20 20\n9\t20\n71\n"
                  "3000\t20\n65 301\tE9\n2581\t5F\n");
      kv.second = dir.file("norm.tsv");
    } else if (kv.first == "denormalization_rule_tsv") {
      // Decode maps 'e' to 'E' and "th" to U+00FE (þ).
      write_bytes(dir.file("denorm.tsv"), "65\t45\n74 68\tFE\n");
      kv.second = dir.file("denorm.tsv");
    }
  }
  const auto t = load_pair(train(dir, GetParam().name, options));
  std::vector<std::string> texts = mixed_corpus();
  for (auto& s : read_lines(data_path("text/tinyshakespeare/input.txt"), 20000, 300))
    texts.push_back(s);
  expect_agreement(*t, texts, GetParam().name);
  expect_decode_agreement(*t, random_id_sequences(*t, 1000, 3));
  EXPECT_EQ(t->ours->vocab_size(), t->ref.GetPieceSize());
  EXPECT_EQ(t->ours->bos_id(), t->ref.bos_id());
  EXPECT_EQ(t->ours->eos_id(), t->ref.eos_id());
}

INSTANTIATE_TEST_SUITE_P(
    Variants, TrainedTokenizer,
    ::testing::Values(
        TrainedVariant{"nmt_nfkc_byte_fallback",
                       {{"normalization_rule_name", "nmt_nfkc"}, {"byte_fallback", "true"}}},
        TrainedVariant{
            "nfkc_cf_unknown_runs",
            {{"normalization_rule_name", "nmt_nfkc_cf"}, {"character_coverage", "0.99"}}},
        TrainedVariant{"identity_user_defined",
                       {{"normalization_rule_name", "identity"},
                        {"user_defined_symbols", "<sep>,[MASK],qu,ab"},
                        {"byte_fallback", "true"}}},
        TrainedVariant{
            "whitespace_as_suffix",
            {{"normalization_rule_name", "identity"}, {"treat_whitespace_as_suffix", "true"}}},
        TrainedVariant{"no_dummy_prefix_keep_spaces",
                       {{"normalization_rule_name", "identity"},
                        {"add_dummy_prefix", "false"},
                        {"remove_extra_whitespaces", "false"},
                        {"byte_fallback", "true"}}},
        TrainedVariant{"custom_rules_user_defined",
                       {{"normalization_rule_tsv", "(written by the test)"},
                        {"user_defined_symbols", "ab,\xef\xac\x81"}}},
        // User-defined symbols escape normalisation: the ligature and fullwidth letter stay.
        TrainedVariant{"nfkc_user_defined",
                       {{"normalization_rule_name", "nmt_nfkc"},
                        {"user_defined_symbols",
                         "\xef\xac\x81,\xef\xbc\xa1"
                         "BC,<sep>"},
                        {"byte_fallback", "true"}}},
        TrainedVariant{"custom_rules_keep_spaces",
                       {{"normalization_rule_tsv", "(written by the test)"},
                        {"remove_extra_whitespaces", "false"},
                        {"byte_fallback", "true"}}},
        TrainedVariant{"denormalizer",
                       {{"normalization_rule_name", "nmt_nfkc"},
                        {"denormalization_rule_tsv", "(written by the test)"}}},
        TrainedVariant{"custom_special_pieces",
                       {{"bos_piece", "<bos>"},
                        {"eos_piece", "<eos>"},
                        {"unk_piece", "<oov>"},
                        {"unk_surface", "??"},
                        {"pad_id", "3"},
                        {"character_coverage", "0.98"}}},
        TrainedVariant{"no_bos_eos", {{"bos_id", "-1"}, {"eos_id", "-1"}}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SentencePieceLoad, UnigramModelIsRejectedAsUnsupported) {
  ScratchDir dir;
  const std::string path = train(dir, "unigram", {{"model_type", "unigram"}});
  try {
    Tokenizer::load(path);
    FAIL() << "a unigram model loaded";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("UNIGRAM"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Load errors.

void expect_input_error_naming(const std::string& path) {
  try {
    Tokenizer::load(path);
    FAIL() << "loading '" << path << "' did not throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos)
        << "message does not name the file: " << e.what();
  }
}

TEST(SentencePieceLoad, MissingFileIsAnInputErrorNamingIt) {
  expect_input_error_naming("/nonexistent/rankprune/tokenizer.model");
}

TEST(SentencePieceLoad, DirectoryIsAnInputError) {
  ScratchDir dir;
  expect_input_error_naming(dir.path());
}

TEST(SentencePieceLoad, RandomBytesAreAnInputError) {
  ScratchDir dir;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::string junk(4096, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    const std::string path = dir.file("junk" + std::to_string(trial) + ".model");
    write_bytes(path, junk);
    expect_input_error_naming(path);
  }
}

TEST(SentencePieceLoad, TextAndEmptyFilesAreInputErrors) {
  ScratchDir dir;
  write_bytes(dir.file("config.json"), "{\"vocab_size\": 32000, \"model_type\": \"bpe\"}\n");
  expect_input_error_naming(dir.file("config.json"));
  write_bytes(dir.file("empty.model"), "");
  expect_input_error_naming(dir.file("empty.model"));
}

TEST(SentencePieceLoad, TruncatedModelIsAnInputError) {
  ScratchDir dir;
  const std::string model = read_bytes(data_path("models/stories260K/tok512.model"));
  for (const size_t keep : {size_t{1}, size_t{100}, model.size() / 2, model.size() - 1}) {
    const std::string path = dir.file("truncated" + std::to_string(keep) + ".model");
    write_bytes(path, model.substr(0, keep));
    expect_input_error_naming(path);
  }
}

// Every cut the reference refuses, we refuse too (and with the path in the message).
TEST(SentencePieceLoad, TruncationsRefusedByReferenceAreRefused) {
  ScratchDir dir;
  const std::string model = read_bytes(data_path("models/stories260K/tok512.model"));
  const std::string path = dir.file("cut.model");
  int refused = 0;
  for (size_t keep = 0; keep < model.size(); keep += 13) {
    const std::string cut = model.substr(0, keep);
    sentencepiece::SentencePieceProcessor ref;
    if (ref.LoadFromSerializedProto(cut).ok()) continue;
    ++refused;
    write_bytes(path, cut);
    expect_input_error_naming(path);
    if (HasFailure()) break;
  }
  EXPECT_GT(refused, 100);
}

// ---------------------------------------------------------------------------------------------
// The byte tokenizer.

TEST(ByteTokenizer, IdsAreByteValuesAndRoundTrip) {
  for (const char* spec : {"bytes", "byte"}) {
    const auto t = Tokenizer::load(spec);
    EXPECT_EQ(t->vocab_size(), 256);
    EXPECT_EQ(t->bos_id(), -1);
    EXPECT_EQ(t->eos_id(), -1);
    EXPECT_EQ(t->name(), "bytes");
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    const auto ids = t->encode(all);
    ASSERT_EQ(ids.size(), 256u);
    for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
    EXPECT_EQ(t->decode(ids), all);
    for (int b = 0; b < 256; ++b)
      EXPECT_EQ(t->decode_piece(b), std::string(1, static_cast<char>(b)));
    const std::string text = "h\xc3\xa9llo \xf0\x9f\x98\x80\n";
    EXPECT_EQ(t->decode(t->encode(text)), text);
    EXPECT_TRUE(t->encode("").empty());
    EXPECT_THROW(t->decode({256}), InputError);
    EXPECT_THROW(t->decode_piece(-1), InputError);
  }
}

}  // namespace
