// Where the LM tests find their data: SAE_DATA_DIR (the shared data root) or
// SAE_SOURCE_DIR/../shared/data; stories260K from SAE_MODEL_DIR if set.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace sae {
namespace lm_test {

namespace fs = std::filesystem;

inline std::string DataDir() {
  if (const char* d = std::getenv("SAE_DATA_DIR")) return d;
  const char* src = std::getenv("SAE_SOURCE_DIR");
#ifdef SAE_TEST_SOURCE_DIR
  if (src == nullptr) src = SAE_TEST_SOURCE_DIR;
#endif
  return (fs::path(src ? src : ".") / ".." / "shared" / "data").string();
}

inline std::string StoriesDir() {
  if (const char* d = std::getenv("SAE_MODEL_DIR")) return d;
  return DataDir() + "/stories260K";
}

inline std::string ReadFile(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// A fresh directory under the test temp dir, removed at destruction.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = ::testing::TempDir() + "sae_lm_" + info->test_suite_name() + "_" + info->name() + "_" +
            std::to_string(::getpid());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string Sub(const std::string& n) const { return path_ + "/" + n; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace lm_test
}  // namespace sae

#define SAE_REQUIRE_FILE(path)                                                                    \
  do {                                                                                            \
    if (!std::filesystem::exists(path))                                                           \
      GTEST_SKIP() << "test data not found: " << (path)                                           \
                   << " (set SAE_DATA_DIR to the shared data root or SAE_MODEL_DIR to stories260K)"; \
  } while (0)
