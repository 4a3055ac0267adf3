// Tokenizers of the supported model families: llama2.c tokenizer.bin,
// SentencePiece .model files, GPT-2 byte-level BPE (encoder.json +
// vocab.bpe) and Hugging Face tokenizer.json. Immutable after loading; safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/base/status.h"

namespace sae {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // −1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;
  // Ids of `text`, with BOS first / EOS last when asked and the tokenizer has them.
  virtual std::vector<int32_t> Encode(const std::string& text, bool bos, bool eos) const = 0;
  // The text of `token` when it follows `prev` (llama2.c's decode: the
  // leading space of a piece after BOS is dropped, <0xXX> pieces are bytes).
  virtual std::string DecodePiece(int32_t prev, int32_t token) const = 0;
  // The text of a sequence (BOS/EOS produce nothing).
  virtual std::string Decode(const std::vector<int32_t>& ids) const;
};

// llama2.c's tokenizer.bin: int32 max_token_length, then per token float32
// score, int32 length, bytes. The file must hold exactly `vocab_size` tokens.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path, int64_t vocab_size);
// A SentencePiece model (.model protobuf).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);
// GPT-2 byte-level BPE: encoder.json (token → id) and vocab.bpe (merges),
// run as the equivalent tokenizer.json (GPT-2's regex pre-tokenizer through
// Oniguruma, <|endoftext|> special).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& encoder_json,
                                                             const std::string& vocab_bpe);

// A Hugging Face tokenizer.json with a BPE model (byte-level or
// SentencePiece-style with byte fallback), its added tokens, normalizers,
// pre-tokenizers, post-processor template (BOS/EOS) and decoder. Parts it
// does not implement are refused by name.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json);
// The same from the file's text (`name` is used in errors).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerFromText(const std::string& json_text,
                                                                   const std::string& name);

// Finds and loads the tokenizer that goes with a model: `explicit_path` if
// given (.bin llama2.c, .model SentencePiece, .json Hugging Face, or a
// directory), else in the model's directory: tokenizer.bin, tok<vocab>.bin,
// tokenizer.json, tokenizer.model, encoder.json + vocab.bpe, vocab.json +
// merges.txt. Its vocabulary size
// must equal `vocab_size`; errors name the tokenizer file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFor(const std::string& model_path, int64_t vocab_size,
                                                            const std::string& explicit_path = "");

}  // namespace sae
