// Per-latent count of tokens since the latent last fired (ALGORITHMS.md §4).
// After each step: a latent that fired resets to 0, every other grows by the
// global batch size. A latent is dead when its count >= window_tokens.
// Not thread-safe; one owner (the trainer).
#pragma once

#include <cstdint>
#include <vector>

namespace sae {

class DeadTracker {
 public:
  DeadTracker(int64_t latents, int64_t window_tokens);

  // `fired[i]` != 0 when latent i fired anywhere in the (global) batch.
  void Update(const uint8_t* fired, int64_t batch_tokens);

  bool IsDead(int64_t i) const { return since_fired_[i] >= window_; }
  int64_t NumDead() const;
  double DeadRatio() const;
  // Indices of dead latents, ascending.
  std::vector<int64_t> DeadList() const;

  int64_t window_tokens() const { return window_; }
  const std::vector<int64_t>& since_fired() const { return since_fired_; }
  std::vector<int64_t>& mutable_since_fired() { return since_fired_; }

 private:
  int64_t window_;
  std::vector<int64_t> since_fired_;
};

}  // namespace sae
