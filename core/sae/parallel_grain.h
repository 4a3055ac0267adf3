// The smallest loop the CPU step splits between threads. Internal to
// core/sae (sae_step.cc, small_encoder.cc).
#pragma once

#include <algorithm>
#include <cstdint>

namespace sae::internal {

// Loops with less work than this (in multiply-adds, roughly 0.3-0.5 ms on
// one core) run on the calling thread: a parallel region costs a wake-up and
// a barrier, microseconds on an idle machine but a scheduler time slice
// (4-16 ms measured) when other processes hold the cores, and at small d
// most of the step's loops are that small (docs/performance.md "Small
// models": with 2^17 the d 64 step's decode, scatter and Adam took 10-30 ms
// each on a loaded machine, against 0.3-1 ms serially).
constexpr int64_t kMinParallelWork = int64_t{1} << 20;
// The grain (in items) for at::parallel_for over items of `work_per_item`.
inline int64_t GrainFor(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_item));
}

}  // namespace sae::internal
