// Helpers for tests that run saeforge's executables as real processes (and
// the helpers of tests/testing: data paths, files, scratch directories).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/byte_level.h"
#include "tests/testing/data_dir.h"
#include "tests/testing/files.h"
#include "tests/testing/scratch_dir.h"

namespace {

namespace fs = std::filesystem;

struct Result {
  int code = -1;
  bool signaled = false;
  std::string out;
};

std::string Bin(const std::string& name) {
  const char* dir = std::getenv("SAE_BIN_DIR");
  return std::string(dir ? dir : "build/bin") + "/" + name;
}

Result Sh(const std::string& cmd) {
  Result r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.signaled = WIFSIGNALED(st);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string ReadAll(const fs::path& p) { return sae::testing::ReadFile(p.string()); }
void WriteAll(const fs::path& p, const std::string& s) { sae::testing::WriteFile(p.string(), s); }
using sae::testing::StoriesDir;

// The float32 tensors of a safetensors file, read without saeforge's code.
std::map<std::string, std::vector<float>> ReadF32Tensors(const fs::path& p) {
  std::map<std::string, std::vector<float>> out;
  const std::string st = ReadAll(p);
  if (st.size() < 8) return out;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<unsigned char>(st[i]);
  if (8 + hlen > st.size()) return out;
  const nlohmann::json h = nlohmann::json::parse(st.substr(8, hlen));
  for (const auto& [name, info] : h.items()) {
    if (name == "__metadata__" || info["dtype"] != "F32") continue;
    const auto off = info["data_offsets"].get<std::vector<uint64_t>>();
    std::vector<float> v((off[1] - off[0]) / 4);
    std::memcpy(v.data(), st.data() + 8 + hlen + off[0], off[1] - off[0]);
    out[name] = std::move(v);
  }
  return out;
}

// ‖a − b‖ / ‖b‖ (1 when the sizes differ).
double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || b.empty()) return 1.0;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// A byte-level tokenizer.json (for tiny Hugging Face model directories): the
// 256 byte symbols, no merges, <|endoftext|>.
inline std::string ByteTokenizerJson() {
  nlohmann::json vocab = nlohmann::json::object();
  const std::vector<std::string> sym = sae::testing::ByteLevelSymbols();
  for (int b = 0; b < 256; ++b) vocab[sym[b]] = b;
  nlohmann::json j = {{"version", "1.0"},
                      {"truncation", nullptr},
                      {"padding", nullptr},
                      {"added_tokens",
                       {{{"id", 256},
                         {"content", "<|endoftext|>"},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", false},
                         {"special", true}}}},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                      {"post_processor", nullptr},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return j.dump();
}

}  // namespace
