// GPT-2's byte-level alphabet for tests that build byte-level tokenizer.json
// files (sae::testing): the printable Latin-1 bytes stand for themselves, the
// others for U+0100 on, in byte order. Written here apart from the tokenizer
// (core/lm/hf_tokenizer.cc), so a test does not take its table from the code
// it checks.
#pragma once

#include <string>
#include <vector>

namespace sae::testing {

// The UTF-8 text of byte b's symbol, for b in 0..255.
inline std::vector<std::string> ByteLevelSymbols() {
  std::vector<int> cp(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) cp[b] = b;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (cp[b] < 0) cp[b] = 256 + n++;
  std::vector<std::string> out(256);
  for (int b = 0; b < 256; ++b) {
    if (cp[b] < 0x80) {
      out[b].push_back(static_cast<char>(cp[b]));
    } else {  // every code point here is below U+0800: two bytes
      out[b].push_back(static_cast<char>(0xC0 | (cp[b] >> 6)));
      out[b].push_back(static_cast<char>(0x80 | (cp[b] & 0x3F)));
    }
  }
  return out;
}

}  // namespace sae::testing
