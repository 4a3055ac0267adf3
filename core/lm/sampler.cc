#include "core/lm/sampler.h"

#include <algorithm>
#include <cmath>

namespace sae {

void Llama2cSoftmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

uint32_t Llama2cSampler::RandomU32() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1DULL) >> 32);
}

float Llama2cSampler::RandomF32() { return static_cast<float>(RandomU32() >> 8) / 16777216.0f; }

int32_t Llama2cSampler::SampleTopP(const float* probs, float coin) {
  const float cutoff = (1.0f - top_p_) / static_cast<float>(vocab_size_ - 1);
  candidates_.clear();
  for (int64_t i = 0; i < vocab_size_; ++i)
    if (probs[i] >= cutoff) candidates_.emplace_back(probs[i], static_cast<int32_t>(i));
  // Descending probability; equal probabilities by index (llama2.c's qsort
  // leaves their order unspecified).
  std::sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  float cum = 0.0f;
  size_t last = candidates_.size() - 1;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    cum += candidates_[i].first;
    if (cum > top_p_) {
      last = i;
      break;
    }
  }
  const float r = coin * cum;
  float cdf = 0.0f;
  for (size_t i = 0; i <= last; ++i) {
    cdf += candidates_[i].first;
    if (r < cdf) return candidates_[i].second;
  }
  return candidates_[last].second;
}

int32_t Llama2cSampler::Sample(float* logits) {
  if (temperature_ == 0.0f) {
    int32_t best = 0;
    for (int64_t i = 1; i < vocab_size_; ++i)
      if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
    return best;
  }
  for (int64_t i = 0; i < vocab_size_; ++i) logits[i] /= temperature_;
  Llama2cSoftmax(logits, vocab_size_);
  const float coin = RandomF32();
  if (top_p_ <= 0.0f || top_p_ >= 1.0f) {
    float cdf = 0.0f;
    for (int64_t i = 0; i < vocab_size_; ++i) {
      cdf += logits[i];
      if (coin < cdf) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(vocab_size_ - 1);
  }
  return SampleTopP(logits, coin);
}

}  // namespace sae
