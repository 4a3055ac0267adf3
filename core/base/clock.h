// Seconds on the monotonic clock, for measuring durations and deadlines (not
// wall time: compare two readings, never print one). Header-only; thread-safe.
#pragma once

#include <time.h>

#include <chrono>

namespace sae {

inline double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU-seconds the calling thread has run (for per-phase costs on a loaded
// machine, where wall time includes other processes' time slices).
inline double ThreadCpuNow() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// CPU-seconds of the whole process (every thread; with several threads it
// includes OpenMP's spin-waits).
inline double ProcessCpuNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace sae
