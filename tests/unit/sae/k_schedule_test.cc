#include "core/sae/k_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace sae {
namespace {

TEST(KSchedule, LinearCosineExponentialValues) {
  const int64_t total = 1000;
  auto lin = KSchedule::Create(KShape::kLinear, 512, 32, 0.25, total).value();
  EXPECT_EQ(lin.KAt(0), 512);
  EXPECT_EQ(lin.KAt(125), 272);  // p = 0.5
  EXPECT_EQ(lin.KAt(250), 32);
  EXPECT_EQ(lin.KAt(999), 32);
  EXPECT_EQ(lin.KAt(50), 416);  // p = 0.2: 512 - 480*0.2

  auto cos = KSchedule::Create(KShape::kCosine, 512, 32, 0.5, total).value();
  EXPECT_EQ(cos.KAt(0), 512);
  EXPECT_EQ(cos.KAt(250), 272);  // p = 0.5 is the midpoint
  EXPECT_EQ(cos.KAt(125), std::llround(32 + 480 * (1 + std::cos(M_PI * 0.25)) / 2));
  EXPECT_EQ(cos.KAt(500), 32);

  auto ex = KSchedule::Create(KShape::kExponential, 512, 32, 1.0, total).value();
  EXPECT_EQ(ex.KAt(0), 512);
  EXPECT_EQ(ex.KAt(500), 128);  // 512 * (1/16)^0.5
  EXPECT_EQ(ex.KAt(250), 256);  // 512 * (1/16)^0.25
  EXPECT_EQ(ex.KAt(1000), 32);
}

TEST(KSchedule, MonotoneNonIncreasing) {
  for (KShape s : {KShape::kLinear, KShape::kCosine, KShape::kExponential}) {
    auto ks = KSchedule::Create(s, 300, 7, 0.3, 10000).value();
    int64_t prev = ks.KAt(0);
    for (int64_t t = 0; t <= 10000; t += 37) {
      EXPECT_LE(ks.KAt(t), prev) << OptionName(s);
      prev = ks.KAt(t);
    }
    EXPECT_EQ(prev, 7);
  }
}

TEST(KSchedule, RejectsImpossibleSettings) {
  EXPECT_FALSE(KSchedule::Create(KShape::kLinear, 16, 32, 0.25, 100).ok());
  EXPECT_FALSE(KSchedule::Create(KShape::kLinear, 64, 32, 0.0, 100).ok());
  EXPECT_FALSE(KSchedule::Create(KShape::kLinear, 64, 32, 1.5, 100).ok());
  EXPECT_FALSE(KSchedule::Create(KShape::kLinear, 64, 32, 0.5, 0).ok());
  EXPECT_FALSE(ParseOption<KShape>("quadratic").ok());
  EXPECT_FALSE(ParseOption<KShape>("constant").ok()) << "not a value of sae.k_schedule.shape";
  EXPECT_EQ(KSchedule::Constant(17).KAt(123456), 17);
}

}  // namespace
}  // namespace sae
