#include "core/sae/dead_tracker.h"

#include <cstddef>

namespace sae {

DeadTracker::DeadTracker(int64_t latents, int64_t window_tokens)
    : window_(window_tokens), since_fired_(static_cast<size_t>(latents), 0) {}

void DeadTracker::Update(const uint8_t* fired, int64_t batch_tokens) {
  const int64_t n = static_cast<int64_t>(since_fired_.size());
  for (int64_t i = 0; i < n; ++i) since_fired_[i] = fired[i] ? 0 : since_fired_[i] + batch_tokens;
}

int64_t DeadTracker::NumDead() const {
  int64_t c = 0;
  for (int64_t v : since_fired_) c += v >= window_;
  return c;
}

double DeadTracker::DeadRatio() const {
  return since_fired_.empty() ? 0.0 : static_cast<double>(NumDead()) / since_fired_.size();
}

std::vector<int64_t> DeadTracker::DeadList() const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < since_fired_.size(); ++i)
    if (since_fired_[i] >= window_) out.push_back(static_cast<int64_t>(i));
  return out;
}

}  // namespace sae
