// manifest.json of an activation-shard directory (contract,
// format "saeforge.activations.v1"). Value type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/data/safetensors.h"

namespace sae {

struct ShardEntry {
  std::string file;  // relative to the directory
  int64_t rows = 0;
  std::string sha256;  // lowercase hex of the whole file
};

struct ActivationSource {
  std::string model, hook, corpus;
  int64_t layer = -1;
  int64_t tokens = 0;
};

struct Manifest {
  std::string format = "saeforge.activations.v1";
  int64_t d_in = 0;
  DType dtype = DType::kF32;  // F32, BF16 or F16
  int64_t rows = 0;           // sum of shard rows
  std::vector<ShardEntry> shards;
  ActivationSource source;
};

// Reads DIR/manifest.json; checks format, dtype, that rows add up, file names
// stay inside DIR. Errors name the file and the field.
absl::StatusOr<Manifest> LoadManifest(const std::string& dir);
absl::Status SaveManifest(const std::string& dir, const Manifest& m);  // atomic

// Manifest dtype names: "float32", "bfloat16", "float16".
const char* ManifestDTypeName(DType d);
absl::StatusOr<DType> ManifestDTypeFromString(const std::string& s);

// Opens shard `index` of `m` and checks it against the manifest: the file
// exists, holds a 2-D "activations" tensor of the manifest's dtype and shape
// [rows, d_in]. Errors start with "shard DIR/FILE: ".
absl::StatusOr<SafetensorsFile> OpenShard(const std::string& dir, const Manifest& m, size_t index);

}  // namespace sae
