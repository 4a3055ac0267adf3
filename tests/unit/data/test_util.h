// Helpers shared by the data tests, over tests/testing (sae::testing): a
// scratch directory per test and raw file edits. Not thread-safe.
#pragma once

#include <string>

#include "core/base/file_util.h"  // the data tests use MakeDirs, PathExists, Sha256File
#include "gtest/gtest.h"
#include "tests/testing/files.h"
#include "tests/testing/scratch_dir.h"

namespace sae {
namespace testing_util {

// A fresh, empty directory (sae_data_SUITE_TEST_PID), removed after a passing test.
class ScratchDir : public ::sae::testing::ScratchDir {
 public:
  ScratchDir() : ::sae::testing::ScratchDir("sae_data") {}
};

inline void WriteBytes(const std::string& path, const std::string& bytes) { ::sae::testing::WriteFile(path, bytes); }
inline std::string ReadBytes(const std::string& path) { return ::sae::testing::ReadFile(path); }
using ::sae::testing::FlipByte;

}  // namespace testing_util
}  // namespace sae
