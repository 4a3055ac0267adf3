#include "tests/testing/files.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace sae::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  out.close();
  EXPECT_TRUE(out.good()) << "cannot write " << path;
}

void FlipByte(const std::string& path, size_t offset) {
  std::string b = ReadFile(path);
  ASSERT_LT(offset, b.size()) << path;
  b[offset] = static_cast<char>(b[offset] ^ 0x5a);
  WriteFile(path, b);
}

}  // namespace sae::testing
