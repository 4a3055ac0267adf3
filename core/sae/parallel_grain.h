// The smallest loop the CPU step splits between threads. Internal to
// core/sae (sae_step.cc, small_encoder.cc).
#pragma once

#include <algorithm>
#include <cstdint>

namespace sae::internal {

// Loops with less work than this (in multiply-adds, roughly 0.05 ms on one
// core) run on the calling thread: a parallel region costs a wake-up and a
// barrier, microseconds on an idle machine but up to a scheduler time slice
// when other processes hold the cores. 2^20 (sessions 7-10) kept every d 64
// streaming pass (x − b_dec, the residual, b_dec's gradient) on one thread;
// 2^17 splits them: the d 64 step 1.34 → 1.30× the GEMM on a quiet 2-core
// Zen 5, and no slower with one or three busy processes beside it
// (docs/performance.md "The insertion in lockstep, and a smaller grain").
constexpr int64_t kMinParallelWork = int64_t{1} << 17;
// The grain (in items) for at::parallel_for over items of `work_per_item`.
inline int64_t GrainFor(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_item));
}

}  // namespace sae::internal
