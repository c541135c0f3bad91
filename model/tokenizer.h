// Tokenizers: SentencePiece .model files (the Llama-2 / Mistral tokenizers under
// shared/data/tokenizers) and a byte-level tokenizer (id = byte value, vocab 256, no BOS/EOS).
//
// encode() never adds BOS/EOS; callers add bos_id() where a protocol wants it (lm-eval's
// add_bos_token, generation prompts). SentencePiece keeps its own normalisation, including the
// dummy "▁" prefix, exactly as Hugging Face's slow LlamaTokenizer does.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace rankprune {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int>& ids) const = 0;
  // Text of one piece, as it would be printed when streaming generation (byte fallback pieces
  // such as <0x0A> become their byte).
  virtual std::string decode_piece(int id) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;  // -1 if none
  virtual int eos_id() const = 0;  // -1 if none
  virtual std::string name() const = 0;

  // "bytes" (or "byte") -> ByteTokenizer; otherwise a SentencePiece model file.
  // InputError naming the file when it is missing or not a SentencePiece model.
  static std::unique_ptr<Tokenizer> load(const std::string& spec);
};

}  // namespace rankprune
