// Compiled into every test binary (cmake/SaeHelpers.cmake): before gtest's
// main runs, the test re-executes on the BLAS kernel that saeforge's own
// binaries choose (core/base/blas_kernel.h), so tests check results on the
// kernel users run. A static initialiser of the executable runs after every
// shared library's (OpenBLAS has initialised) and before main.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/base/blas_kernel.h"

namespace {

struct ChooseAtStart {
  ChooseAtStart() {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    static std::vector<std::string> args;
    for (size_t p = 0; p < all.size();) {
      const size_t e = all.find('\0', p);
      args.push_back(all.substr(p, e == std::string::npos ? std::string::npos : e - p));
      if (e == std::string::npos) break;
      p = e + 1;
    }
    static std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!args.empty()) sae::ChooseBlasKernel(static_cast<int>(args.size()), argv.data());
  }
} choose_at_start;

}  // namespace
