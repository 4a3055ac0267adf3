#include "tests/testing/scratch_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <system_error>

#include "tests/testing/files.h"

namespace sae::testing {

ScratchDir::ScratchDir(const std::string& prefix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = prefix;
  if (info != nullptr) name += std::string("_") + info->test_suite_name() + "_" + info->name();
  name += "_" + std::to_string(::getpid());
  for (char& c : name)
    if (c == '/') c = '_';  // parameterized tests: "Suite/Name/0"
  path_ = (std::filesystem::path(::testing::TempDir()) / name).string();
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  std::filesystem::create_directories(path_, ec);
  EXPECT_FALSE(ec) << path_ << ": " << ec.message();
}

ScratchDir::~ScratchDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info != nullptr && info->result()->Failed()) return;  // left for a look
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ScratchDir::Write(const std::string& name, const std::string& text) const {
  const std::string p = Sub(name);
  WriteFile(p, text);
  return p;
}

}  // namespace sae::testing
