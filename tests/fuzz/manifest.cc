// Fuzzes manifest.json of an activation-shard directory (core/data/manifest):
// the input is manifest.json; the directory also holds two valid shards
// (shard-00000.safetensors: 4 x 8 float32 with tokens, shard-00001: 3 x 8)
// so a manifest that names them is opened, checked and streamed.
#include <cstdint>
#include <string>
#include <vector>

#include "core/data/activation_stream.h"
#include "core/data/manifest.h"
#include "core/data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& Dir() {
  static const std::string dir = [] {
    const std::string d = sae::fuzz::FreshDir("manifest");
    for (int s = 0; s < 2; ++s) {
      const int64_t rows = s == 0 ? 4 : 3;
      std::vector<float> act(static_cast<size_t>(rows) * 8);
      for (size_t i = 0; i < act.size(); ++i) act[i] = 0.25f * static_cast<float>(i) - 1.0f;
      std::vector<int32_t> tok(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) tok[i] = static_cast<int32_t>(i + 1);
      sae::SafetensorsWriter w;
      if (!w.AddFloat("activations", sae::DType::kF32, {rows, 8}, act.data()).ok() ||
          !w.Add("tokens", sae::DType::kI32, {rows}, tok.data()).ok() ||
          !w.Write(d + "/shard-0000" + std::to_string(s) + ".safetensors").ok())
        std::abort();
    }
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  const std::string& dir = Dir();
  fuzz::WriteFile(dir + "/manifest.json", std::string(reinterpret_cast<const char*>(data), size));
  auto m = LoadManifest(dir);
  if (!m.ok()) return 0;
  int64_t sum = 0;
  for (const auto& s : m->shards) {
    SAE_FUZZ_CHECK(s.rows >= 0 && s.sha256.size() == 64, s.file);
    sum += s.rows;
  }
  SAE_FUZZ_CHECK(sum == m->rows && m->d_in > 0, "rows add up");
  bool all_open = true;
  for (size_t i = 0; i <= m->shards.size(); ++i) all_open &= OpenShard(dir, *m, i).ok() || i == m->shards.size();
  if (!all_open) return 0;
  // Every shard opened: stream a few batches (checksums on, shuffled and not).
  for (int64_t window : {int64_t{1}, int64_t{3}}) {
    StreamOptions o;
    o.shuffle_window_rows = window;
    o.verify_checksums = true;
    auto st = ActivationStream::Open(dir, o);
    if (!st.ok()) continue;
    std::vector<float> out;
    for (int b = 0; b < 3; ++b)
      if (!(*st)->Next(2, &out).ok()) break;
  }
  return 0;
}
