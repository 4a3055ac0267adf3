// Fuzzes the Hugging Face tokenizer.json loader and its encoder/decoder
// (core/lm/hf_tokenizer.cc LoadHfTokenizerFromText, the code behind
// LoadHfTokenizer): input = tokenizer.json kSplit text. A file that loads
// must encode any text into ids inside its vocabulary (the post-processor's
// BOS/EOS ids included), and decoding any id, valid or not, must not crash.
// Regexes in the file are Oniguruma's, compiled from the fuzz bytes too.
#include <cstdint>
#include <string>
#include <vector>

#include "core/lm/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  auto parts = fuzz::Split(data, size, 2);
  auto tok = LoadHfTokenizerFromText(parts[0], "tokenizer.json");
  if (!tok.ok()) return 0;
  const int64_t vocab = (*tok)->vocab_size();
  SAE_FUZZ_CHECK(vocab > 0, "an empty vocabulary loaded");
  const std::string text = parts[1].substr(0, 1024);
  for (bool bos : {false, true}) {
    const std::vector<int32_t> ids = (*tok)->Encode(text, bos, bos);
    for (int32_t id : ids)
      SAE_FUZZ_CHECK(id >= 0 && id < vocab, "id " + std::to_string(id) + " outside the vocabulary");
    (void)(*tok)->Decode(ids);
  }
  for (int32_t id : {(*tok)->bos_id(), (*tok)->eos_id()})
    SAE_FUZZ_CHECK(id >= -1 && id < vocab, "BOS/EOS id " + std::to_string(id) + " outside the vocabulary");
  const int32_t v = static_cast<int32_t>(vocab);
  for (int32_t prev : {-1, 0, (*tok)->bos_id()})
    for (int32_t id : {-1, 0, 1, 2, v / 2, v - 1, v, 1 << 30}) (void)(*tok)->DecodePiece(prev, id);
  return 0;
}
