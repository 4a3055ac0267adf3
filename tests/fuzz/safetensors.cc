// Fuzzes the safetensors reader (core/data/safetensors): the input is a
// whole .safetensors file. Open must return an error or a file whose every
// tensor can be read (raw, as rows and as float32) without a crash.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  const std::string path = fuzz::WriteFile(fuzz::ScratchDir() + "/input.safetensors",
                                           std::string(reinterpret_cast<const char*>(data), size));
  auto f = SafetensorsFile::Open(path);
  if (!f.ok()) return 0;
  for (const auto& [name, info] : f->tensors()) {
    auto again = f->Info(name);
    SAE_FUZZ_CHECK(again.ok(), name);
    const uint64_t bytes = info.end - info.begin;
    SAE_FUZZ_CHECK(bytes <= size, "a tensor larger than the file");
    std::vector<char> raw(bytes);
    SAE_FUZZ_CHECK(f->ReadRaw(name, raw.data(), raw.size()).ok(), name);
    (void)f->ReadRaw(name, raw.data(), raw.size() / 2);  // too small: an error, not an overflow
    if (info.shape.empty()) continue;
    const int64_t rows = info.shape[0];
    const int64_t per_row = rows > 0 ? info.numel() / rows : 0;
    // A few row ranges, including empty, reversed and out-of-range ones.
    const int64_t ranges[][2] = {
        {0, rows}, {0, std::min<int64_t>(rows, 1)}, {rows / 2, rows}, {rows, rows}, {1, 0}, {-1, 1}, {0, rows + 1}};
    for (const auto& r : ranges) {
      const int64_t n = std::max<int64_t>(0, r[1] - r[0]);
      if (n * per_row > (int64_t{1} << 24)) continue;
      std::vector<char> dst(static_cast<size_t>(n * per_row) * DTypeSize(info.dtype) + 1);
      (void)f->ReadRows(name, r[0], r[1], dst.data(), dst.size());
      std::vector<float> fl(static_cast<size_t>(n * per_row) + 1);
      (void)f->ReadRowsAsFloat(name, r[0], r[1], fl.data());
    }
    if (info.numel() <= (int64_t{1} << 24)) (void)f->ReadFloat(name);
  }
  for (const auto& [k, v] : f->metadata()) (void)k, (void)v;
  (void)f->Info("no such tensor");
  return 0;
}
