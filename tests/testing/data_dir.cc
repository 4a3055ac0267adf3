#include "tests/testing/data_dir.h"

#include <cstdlib>

namespace sae::testing {

std::string DataDir() {
  if (const char* d = std::getenv("SAE_DATA_DIR")) return d;
  const char* src = std::getenv("SAE_SOURCE_DIR");
#ifdef SAE_TEST_SOURCE_DIR
  if (src == nullptr) src = SAE_TEST_SOURCE_DIR;
#endif
  return (std::filesystem::path(src ? src : ".") / ".." / "shared" / "data").string();
}

std::string StoriesDir() {
  if (const char* d = std::getenv("SAE_MODEL_DIR")) return d;
  return DataDir() + "/stories260K";
}

}  // namespace sae::testing
