// Tensor helpers shared by the LM tests that run models (ATen).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace lm_test {

// max |a − b| / max |b|, in double.
inline double MaxRelErr(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  return (x - y).abs().max().item<double>() / std::max(1e-30, y.abs().max().item<double>());
}

// batch × T token ids below `vocab` from a seeded LCG, each window starting with BOS (1).
inline at::Tensor StoryTokens(int64_t batch, int64_t T, int64_t vocab, uint64_t seed) {
  at::Tensor t = at::empty({batch, T}, at::kLong);
  uint64_t s = seed;
  for (int64_t i = 0; i < batch * T; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    t.data_ptr<int64_t>()[i] = i % T == 0 ? 1 : static_cast<int64_t>((s >> 33) % vocab);
  }
  return t;
}

inline std::string StoriesBin() { return StoriesDir() + "/stories260K.bin"; }

}  // namespace lm_test
}  // namespace sae
