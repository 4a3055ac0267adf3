// Helpers shared by the libFuzzer targets: a scratch directory per process
// (under $TMPDIR, removed at exit), writing fuzz bytes to files there, and
// splitting one input into several files at a separator line.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace sae::fuzz {

// The separator of multi-file inputs ("config.json" SPLIT "index.json" ...).
inline constexpr char kSplit[] = "\n#SPLIT#\n";

// Up to `n` parts of `data` separated by kSplit; missing parts are "".
inline std::vector<std::string> Split(const uint8_t* data, size_t size, size_t n) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  const std::string sep(kSplit);
  std::vector<std::string> parts;
  size_t pos = 0;
  while (parts.size() + 1 < n) {
    const size_t e = s.find(sep, pos);
    if (e == std::string::npos) break;
    parts.push_back(s.substr(pos, e - pos));
    pos = e + sep.size();
  }
  parts.push_back(s.substr(pos));
  parts.resize(n);
  return parts;
}

// A directory of this process, created once and removed at exit.
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string base = t && *t ? t : (std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp");
    std::string d = base + "/saefuzz-" + std::to_string(::getpid());
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    static struct Cleanup {
      std::string d;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    } cleanup{d};
    return d;
  }();
  return dir;
}

// Writes `bytes` to `path` (truncating); returns `path`.
inline std::string WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// A fresh, empty subdirectory of the scratch directory.
inline std::string FreshDir(const std::string& name) {
  const std::string d = ScratchDir() + "/" + name;
  std::error_code ec;
  std::filesystem::remove_all(d, ec);
  std::filesystem::create_directories(d);
  return d;
}

// Aborts (a crash libFuzzer reports) when a property of the parser fails.
#define SAE_FUZZ_CHECK(cond, msg)                                                           \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "fuzz check failed: %s: %s\n", #cond, std::string(msg).c_str()); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

}  // namespace sae::fuzz
