// Whole-file reads and writes for tests (sae::testing): plain iostreams, not
// saeforge's file code, so a test can check what that code wrote.
#pragma once

#include <cstddef>
#include <string>

namespace sae::testing {

// The file's bytes ("" when it cannot be read).
std::string ReadFile(const std::string& path);
// Replaces the file with `bytes`; a gtest failure when it cannot.
void WriteFile(const std::string& path, const std::string& bytes);
// XORs one byte of a file in place (corruption tests).
void FlipByte(const std::string& path, size_t offset);

}  // namespace sae::testing
