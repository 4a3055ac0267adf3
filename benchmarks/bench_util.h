// Small helpers every benchmark binary shares: the median,
// and the provenance printed with results (source commit, CPU model).
#pragma once

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/base/clock.h"

// Provenance the build passes in (CMake compile definitions); defaults otherwise.
#ifndef SAE_GIT_COMMIT
#define SAE_GIT_COMMIT "unknown"
#endif
#ifndef SAE_BUILD_TYPE
#define SAE_BUILD_TYPE "unknown"
#endif

namespace sae::bench {

using ::sae::SteadyNow;  // the monotonic clock (core/base/clock.h)

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The commit of the source tree now (the configure-time one can be stale).
inline std::string Commit() {
  std::string out;
#ifdef SAE_SOURCE_DIR
  if (FILE* p = popen("git -C " SAE_SOURCE_DIR " rev-parse --short HEAD 2>/dev/null", "r")) {
    char buf[64];
    if (fgets(buf, sizeof(buf), p)) out = buf;
    pclose(p);
  }
#endif
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  return out.empty() ? SAE_GIT_COMMIT : out;
}

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

}  // namespace sae::bench
