// A fresh, empty directory per test, under gtest's TempDir() (TEST_TMPDIR:
// build/test-tmp/TEST, see sae_add_test): PREFIX_SUITE_TEST_PID. Removed at
// destruction when the test passed; kept for a look when it failed. The one
// scratch-directory helper of the tests (sae::testing). Not thread-safe.
#pragma once

#include <filesystem>
#include <string>

namespace sae::testing {

class ScratchDir {
 public:
  // `prefix` names the kind of test ("sae_data", "sae_cli", ...).
  explicit ScratchDir(const std::string& prefix = "sae");
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::filesystem::path fs_path() const { return path_; }
  // PATH/name (not created).
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }
  // Writes `text` to PATH/name and returns that path.
  std::string Write(const std::string& name, const std::string& text) const;

 private:
  std::string path_;
};

}  // namespace sae::testing
