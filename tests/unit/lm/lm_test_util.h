// The LM tests' names for the helpers of tests/testing (sae::testing): where
// the data is (SAE_DATA_DIR, SAE_SOURCE_DIR/../shared/data, SAE_MODEL_DIR),
// whole-file reads and writes, a scratch directory per test.
#pragma once

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/data_dir.h"  // also SAE_REQUIRE_FILE
#include "tests/testing/files.h"
#include "tests/testing/scratch_dir.h"

namespace sae {
namespace lm_test {

namespace fs = std::filesystem;

using ::sae::testing::DataDir;
using ::sae::testing::ReadFile;
using ::sae::testing::StoriesDir;
using ::sae::testing::WriteFile;

// A fresh directory (sae_lm_SUITE_TEST_PID), removed after a passing test.
class TempDir : public ::sae::testing::ScratchDir {
 public:
  TempDir() : ::sae::testing::ScratchDir("sae_lm") {}
};

}  // namespace lm_test
}  // namespace sae
