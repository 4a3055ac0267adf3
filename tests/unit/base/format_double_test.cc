#include "core/base/format_double.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

namespace sae {
namespace {

TEST(FormatDouble, ShortestFormThatReadsBack) {
  EXPECT_EQ(FormatDouble(0.1), "0.1");
  EXPECT_EQ(FormatDouble(3e-4), "0.0003");
  EXPECT_EQ(FormatDouble(1.5), "1.5");
  EXPECT_EQ(FormatDouble(4096), "4096");
  EXPECT_EQ(FormatDouble(1e20), "1e+20");
  EXPECT_EQ(FormatDouble(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(FormatDouble(0), "0");
  EXPECT_EQ(FormatDouble(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(FormatDouble(0.1 + 0.2), "0.30000000000000004");
}

TEST(FormatDouble17, SeventeenSignificantDigits) {
  EXPECT_EQ(FormatDouble17(0.1), "0.10000000000000001");
  EXPECT_EQ(FormatDouble17(1.5), "1.5");  // %g drops trailing zeros
  EXPECT_EQ(FormatDouble17(1.0 / 3), "0.33333333333333331");
  EXPECT_EQ(FormatDouble17(8.0), "8");
}

TEST(FormatDouble, BothFormsReadBackToTheSameDouble) {
  std::mt19937_64 rng(7);
  std::vector<double> values = {std::numeric_limits<double>::min(), std::numeric_limits<double>::max(),
                                std::numeric_limits<double>::denorm_min(), -0.0, 123456789.125};
  std::uniform_real_distribution<double> mant(-1, 1);
  std::uniform_int_distribution<int> expo(-300, 300);
  for (int i = 0; i < 2000; ++i) values.push_back(std::ldexp(mant(rng), expo(rng)));
  for (double v : values) {
    EXPECT_EQ(std::strtod(FormatDouble(v).c_str(), nullptr), v) << FormatDouble(v);
    EXPECT_EQ(std::strtod(FormatDouble17(v).c_str(), nullptr), v) << FormatDouble17(v);
  }
}

}  // namespace
}  // namespace sae
