// llama2.c's sampler, reproduced exactly: xorshift64* RNG, argmax at
// temperature 0, multinomial sampling, and top-p (nucleus) sampling with
// llama2.c's candidate cutoff (1 − p)/(n − 1). Not thread-safe (owns the RNG).
#pragma once

#include <cstdint>
#include <vector>

namespace sae {

class Llama2cSampler {
 public:
  Llama2cSampler(int64_t vocab_size, float temperature, float top_p, uint64_t seed)
      : vocab_size_(vocab_size), temperature_(temperature), top_p_(top_p), state_(seed) {}
  // Samples the next token from `logits` (vocab_size floats; modified in place).
  int32_t Sample(float* logits);

  uint32_t RandomU32();
  float RandomF32();

 private:
  int32_t SampleTopP(const float* probs, float coin);
  int64_t vocab_size_;
  float temperature_, top_p_;
  uint64_t state_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// llama2.c's softmax (max-subtracted, float32 accumulation), in place.
void Llama2cSoftmax(float* x, int64_t n);

}  // namespace sae
