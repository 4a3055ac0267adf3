#include "core/sae/dead_tracker.h"

#include <gtest/gtest.h>

#include <vector>

namespace sae {
namespace {

TEST(DeadTracker, CountsTokensAndResetsOnFire) {
  DeadTracker t(4, 100);
  std::vector<uint8_t> fired = {1, 0, 0, 0};
  t.Update(fired.data(), 40);
  EXPECT_EQ(t.since_fired(), (std::vector<int64_t>{0, 40, 40, 40}));
  fired = {0, 1, 0, 0};
  t.Update(fired.data(), 60);
  EXPECT_EQ(t.since_fired(), (std::vector<int64_t>{60, 0, 100, 100}));
  EXPECT_EQ(t.NumDead(), 2);  // 100 tokens without firing: dead
  EXPECT_EQ(t.DeadList(), (std::vector<int64_t>{2, 3}));
  EXPECT_DOUBLE_EQ(t.DeadRatio(), 0.5);
  fired = {0, 0, 1, 0};
  t.Update(fired.data(), 10);
  EXPECT_EQ(t.since_fired(), (std::vector<int64_t>{70, 10, 0, 110}));
  EXPECT_EQ(t.DeadList(), (std::vector<int64_t>{3}));
}

}  // namespace
}  // namespace sae
