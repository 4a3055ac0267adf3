// Fuzzes the GPT-2 byte-level BPE files (core/lm/tokenizer LoadGpt2Tokenizer):
// input = encoder.json kSplit vocab.bpe kSplit text. Every id Encode returns
// must be inside the vocabulary; decoding any id must not crash.
#include <cstdint>
#include <string>
#include <vector>

#include "core/lm/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  auto parts = fuzz::Split(data, size, 3);
  const std::string enc = fuzz::WriteFile(fuzz::ScratchDir() + "/encoder.json", parts[0]);
  const std::string bpe = fuzz::WriteFile(fuzz::ScratchDir() + "/vocab.bpe", parts[1]);
  auto tok = LoadGpt2Tokenizer(enc, bpe);
  if (!tok.ok()) return 0;
  const int64_t vocab = (*tok)->vocab_size();
  const std::string text = parts[2].substr(0, 512);  // BPE merging is quadratic in a word's length
  for (bool bos : {false, true}) {
    const std::vector<int32_t> ids = (*tok)->Encode(text, bos, bos);
    for (int32_t id : ids)
      SAE_FUZZ_CHECK(id >= 0 && id < vocab, "id " + std::to_string(id) + " outside the vocabulary");
    (void)(*tok)->Decode(ids);
  }
  for (int32_t id : {-1, 0, 1, static_cast<int32_t>(vocab - 1), static_cast<int32_t>(vocab), 1 << 30})
    (void)(*tok)->DecodePiece(0, id);
  return 0;
}
