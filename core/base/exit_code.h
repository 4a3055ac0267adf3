// For mains and command functions that return a process exit code: prints
// "error: MESSAGE" on stderr and returns 1 (2 is left for usage errors).
#pragma once

#include <cstdio>
#include <string>

#include "absl/status/status.h"

namespace sae {

inline int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace sae
