// A SentencePiece .model file through Tokenizer::load (the --tokenizer of every command). An
// accepted model then encodes and decodes a few fixed texts and decodes every piece, which
// walks the normaliser's charsmap trie and the BPE merge tables the file defines.
#include "fuzz/fuzz_common.h"
#include "model/tokenizer.h"

using namespace rankprune;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.model");
  fuzz::put(path, data, size);
  fuzz::expect_clean([&] {
    const auto tok = Tokenizer::load(path);
    static const char* const kTexts[] = {"", " ", "Hello world", "  two  spaces ", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87",
                                         "\xff\xfe bad utf-8 \xc3", "<s> </s> <unk>", "\t\n\r"};
    for (const char* text : kTexts) {
      const auto ids = tok->encode(text);
      for (int id : ids) RP_FUZZ_CHECK(id >= 0 && id < tok->vocab_size(), "id ", id, " of ", tok->vocab_size());
      (void)tok->decode(ids);
    }
    const int n = std::min(tok->vocab_size(), 4096);
    for (int id = 0; id < n; ++id) (void)tok->decode_piece(id);
    std::vector<int> all(static_cast<std::size_t>(n));
    for (int id = 0; id < n; ++id) all[static_cast<std::size_t>(id)] = id;
    (void)tok->decode(all);
  });
  return 0;
}
