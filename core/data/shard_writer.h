// Writes an activation-shard directory: rows are buffered and flushed into
// shard-NNNNN.safetensors files of `rows_per_shard` rows; Finish() writes
// manifest.json with each shard's sha256. A directory without a manifest is
// incomplete. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/data/manifest.h"

namespace sae {

struct ShardWriterOptions {
  int64_t d_in = 0;
  DType dtype = DType::kF32;
  int64_t rows_per_shard = 65536;
  ActivationSource source;
};

class ShardWriter {
 public:
  // Creates `dir` (must not contain a manifest.json already).
  static absl::StatusOr<ShardWriter> Create(const std::string& dir, ShardWriterOptions opts);

  // Appends `n` rows (n * d_in floats, row-major); `tokens` may be null or n ids.
  absl::Status Append(const float* rows, int64_t n, const int32_t* tokens = nullptr);
  absl::StatusOr<Manifest> Finish();

 private:
  absl::Status Flush();
  std::string dir_;
  ShardWriterOptions opts_;
  std::vector<float> buf_;
  std::vector<int32_t> tok_buf_;
  bool has_tokens_ = false;
  Manifest manifest_;
  bool finished_ = false;
};

// Imports a 2-D float32/float16/float64 little-endian C-order .npy file into a
// shard directory.
absl::StatusOr<Manifest> ImportNpy(const std::string& npy_path, const std::string& out_dir, DType dtype,
                                   int64_t rows_per_shard);

}  // namespace sae
