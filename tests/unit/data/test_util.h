// Helpers shared by the data tests: a scratch directory per test and raw file
// edits. Not thread-safe.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "core/base/file_util.h"
#include "gtest/gtest.h"

namespace sae {
namespace testing_util {

// A fresh, empty directory removed at destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = ::testing::TempDir() + "sae_data_" + info->test_suite_name() + "_" + info->name() +
            "_" + std::to_string(::getpid());
    EXPECT_TRUE(RemoveAll(path_).ok());
    EXPECT_TRUE(MakeDirs(path_).ok());
  }
  ~ScratchDir() { (void)RemoveAll(path_); }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

inline std::string ReadBytes(const std::string& path) {
  auto s = ReadFileToString(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::string();
}

// XORs one byte of a file in place.
inline void FlipByte(const std::string& path, size_t offset) {
  std::string b = ReadBytes(path);
  ASSERT_LT(offset, b.size());
  b[offset] = static_cast<char>(b[offset] ^ 0x5a);
  WriteBytes(path, b);
}

}  // namespace testing_util
}  // namespace sae
