// Fuzzes the activation-shard reader (core/data/activation_stream over
// core/data/safetensors): the input is one shard file. The manifest next to
// it is made to agree with the shard's header where it can be read (rows,
// d_in, dtype, sha256), so the stream reads and converts the rows; NaN/Inf
// rows, short files and bad headers must be errors.
#include <cstdint>
#include <string>
#include <vector>

#include "core/base/file_util.h"
#include "core/data/activation_stream.h"
#include "core/data/manifest.h"
#include "core/data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  static const std::string dir = fuzz::FreshDir("shard");
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::string path = fuzz::WriteFile(dir + "/shard-00000.safetensors", bytes);
  Manifest m;
  m.d_in = 8;
  m.rows = 4;
  ShardEntry e;
  e.file = "shard-00000.safetensors";
  e.rows = 4;
  e.sha256 = Sha256Hex(bytes.data(), bytes.size());
  if (auto f = SafetensorsFile::Open(path); f.ok()) {
    auto it = f->tensors().find("activations");
    if (it != f->tensors().end() && it->second.shape.size() == 2 && it->second.shape[1] > 0) {
      e.rows = it->second.shape[0];
      m.d_in = it->second.shape[1];
      m.dtype = it->second.dtype;
      m.rows = e.rows;
    }
  }
  m.shards.push_back(e);
  if (m.dtype != DType::kF32 && m.dtype != DType::kBF16 && m.dtype != DType::kF16) m.dtype = DType::kF32;
  if (!SaveManifest(dir, m).ok()) return 0;
  auto loaded = LoadManifest(dir);
  SAE_FUZZ_CHECK(loaded.ok(), loaded.status().ToString());  // what SaveManifest wrote reads back
  if (m.rows * m.d_in > (int64_t{1} << 22)) return 0;       // bounded memory per input
  for (int64_t window : {int64_t{1}, int64_t{5}}) {
    StreamOptions o;
    o.shuffle_window_rows = window;
    o.verify_checksums = window == 1;
    auto st = ActivationStream::Open(dir, o);
    if (!st.ok()) continue;
    std::vector<float> out;
    for (int b = 0; b < 3; ++b)
      if (!(*st)->Next(3, &out).ok()) break;
  }
  return 0;
}
