// kScheduler (ALGORITHMS.md §3): k as a function of tokens seen, annealed from
// `start` to `end` over the first `fraction` of `total_tokens`. Value type,
// thread-safe (const).
#pragma once

#include <cstdint>
#include <string>

#include "core/base/job_options.h"  // KShape
#include "core/base/status.h"

namespace sae {

class KSchedule {
 public:
  // A constant k.
  static KSchedule Constant(int64_t k);
  // start >= end >= 1, fraction in (0, 1], total_tokens > 0.
  static absl::StatusOr<KSchedule> Create(KShape shape, int64_t start, int64_t end, double fraction,
                                          int64_t total_tokens);

  // k to use for the step that begins after `tokens_seen` tokens.
  int64_t KAt(int64_t tokens_seen) const;
  int64_t start() const { return start_; }
  int64_t end() const { return end_; }
  KShape shape() const { return shape_; }
  double fraction() const { return fraction_; }

 private:
  KShape shape_ = KShape::kConstant;
  int64_t start_ = 0, end_ = 0;
  double fraction_ = 1.0;
  int64_t total_tokens_ = 1;
};

}  // namespace sae
