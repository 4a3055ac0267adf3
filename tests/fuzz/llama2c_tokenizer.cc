// Fuzzes the llama2.c tokenizer.bin reader and its encoder/decoder
// (core/lm/tokenizer LoadLlama2cTokenizer). Input: 2 bytes little-endian
// vocabulary size the model claims, the tokenizer.bin bytes, then
// optionally kSplit and a text to encode. Every id Encode returns must be a
// token of the vocabulary; decoding any id must not crash.
#include <cstdint>
#include <string>
#include <vector>

#include "core/lm/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  if (size < 2) return 0;
  const int64_t vocab = data[0] | (data[1] << 8);
  auto parts = fuzz::Split(data + 2, size - 2, 2);
  const std::string path = fuzz::WriteFile(fuzz::ScratchDir() + "/tokenizer.bin", parts[0]);
  auto tok = LoadLlama2cTokenizer(path, vocab);
  if (!tok.ok()) return 0;
  SAE_FUZZ_CHECK((*tok)->vocab_size() == vocab, "vocabulary size");
  const std::string text = parts[1].substr(0, 512);  // encoding is quadratic in a word's length
  for (bool bos : {false, true}) {
    const std::vector<int32_t> ids = (*tok)->Encode(text, bos, !bos);
    for (int32_t id : ids)
      SAE_FUZZ_CHECK(id >= 0 && id < vocab, "id " + std::to_string(id) + " outside the vocabulary");
    (void)(*tok)->Decode(ids);
  }
  for (int32_t id : {-1, 0, 1, 2, 3, static_cast<int32_t>(vocab - 1), static_cast<int32_t>(vocab), 1 << 30})
    (void)(*tok)->DecodePiece(1, id);
  return 0;
}
