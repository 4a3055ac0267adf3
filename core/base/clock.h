// Seconds on the monotonic clock, for measuring durations and deadlines (not
// wall time: compare two readings, never print one). Header-only; thread-safe.
#pragma once

#include <chrono>

namespace sae {

inline double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace sae
