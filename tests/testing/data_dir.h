// Where the tests find the shared data (sae::testing): SAE_DATA_DIR, else
// SAE_SOURCE_DIR/../shared/data (ctest sets SAE_SOURCE_DIR; a test built
// with SAE_TEST_SOURCE_DIR falls back to it when run by hand); stories260K
// from SAE_MODEL_DIR when set.
#pragma once

#include <filesystem>
#include <string>

namespace sae::testing {

std::string DataDir();
std::string StoriesDir();  // the llama2.c stories260K model and tok512.bin

}  // namespace sae::testing

// Skips the test when a data file is missing, saying how to provide it.
#define SAE_REQUIRE_FILE(path)                                                                       \
  do {                                                                                               \
    if (!std::filesystem::exists(path))                                                              \
      GTEST_SKIP() << "test data not found: " << (path)                                              \
                   << " (set SAE_DATA_DIR to the shared data root or SAE_MODEL_DIR to stories260K)"; \
  } while (0)
