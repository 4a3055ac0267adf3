// core/base/human_format.h: the numbers and progress line `sae train` and
// `sae status/watch` print.
#include "core/base/human_format.h"

#include <gtest/gtest.h>

#include <cmath>

namespace sae {
namespace {

TEST(HumanFormat, CountsDurationsBars) {
  EXPECT_EQ(HumanCount(999), "999");
  EXPECT_EQ(HumanCount(12345), "12.3k");
  EXPECT_EQ(HumanCount(1234567), "1.23M");
  EXPECT_EQ(HumanCount(2.5e9), "2.50G");
  EXPECT_EQ(HumanDuration(42.9), "42s");
  EXPECT_EQ(HumanDuration(187), "3m07s");
  EXPECT_EQ(HumanDuration(3720), "1h02m");
  EXPECT_EQ(HumanDuration(-1), "?");
  EXPECT_EQ(HumanDuration(NAN), "?");
  EXPECT_EQ(ProgressBar(0, 4), ">   ");
  EXPECT_EQ(ProgressBar(0.5, 4), "==> ");
  EXPECT_EQ(ProgressBar(1, 4), "====");
  EXPECT_EQ(ProgressBar(7, 4), "====");
  EXPECT_EQ(ProgressStats(500000, 1000000, 1000, 0.12345, 0.015, 32),
            "500.0k/1.00M tok  1.0k tok/s  fvu 0.1235  dead 1.50%  k 32  ETA 8m20s");
  EXPECT_EQ(ProgressStats(0, 100, 0, 0, 0, 4), "0/100 tok  0 tok/s  fvu 0.0000  dead 0.00%  k 4  ETA ?");
}

}  // namespace
}  // namespace sae
