#include "core/lm/sampler.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace sae {
namespace {

TEST(Llama2cSampler, XorshiftMatchesTheRecurrence) {
  Llama2cSampler s(4, 1.0f, 0.9f, 42);
  uint64_t st = 42;
  for (int i = 0; i < 5; ++i) {
    st ^= st >> 12;
    st ^= st << 25;
    st ^= st >> 27;
    EXPECT_EQ(s.RandomU32(), static_cast<uint32_t>((st * 0x2545F4914F6CDD1DULL) >> 32));
  }
  const float f = s.RandomF32();
  EXPECT_GE(f, 0.0f);
  EXPECT_LT(f, 1.0f);
}

TEST(Llama2cSampler, GreedyAtZeroTemperature) {
  Llama2cSampler s(5, 0.0f, 0.9f, 1);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 2.9f, 3.0f};
  EXPECT_EQ(s.Sample(l.data()), 1);  // first maximum
}

TEST(Llama2cSampler, TopPSamplesOnlyTheNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.7 keeps {0, 1}.
  const std::vector<float> p = {0.5f, 0.3f, 0.15f, 0.05f};
  int counts[4] = {0, 0, 0, 0};
  Llama2cSampler s(4, 1.0f, 0.7f, 7);
  for (int i = 0; i < 4000; ++i) {
    std::vector<float> l;
    for (float x : p) l.push_back(std::log(x));
    ++counts[s.Sample(l.data())];
  }
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 0.5 / 0.8, 0.03);
  // Plain sampling (top-p 1) reaches the tail.
  Llama2cSampler all(4, 1.0f, 1.0f, 7);
  int tail = 0;
  for (int i = 0; i < 4000; ++i) {
    std::vector<float> l;
    for (float x : p) l.push_back(std::log(x));
    tail += all.Sample(l.data()) >= 2;
  }
  EXPECT_NEAR(tail / 4000.0, 0.2, 0.03);
}

}  // namespace
}  // namespace sae
