// A planted sparse dictionary: `atoms` unit vectors in R^d_in (Gaussian,
// normalised); row r is sum over `k` distinct atoms chosen with weight
// (i+1)^-frequency_decay of c * atom with c ~ Uniform(0.5, 1.5) (non-negative),
// plus Gaussian noise of std `noise` per element. Row r depends only on
// (seed, r), so any range of rows can be generated on any rank, in any order.
// Immutable after construction; Rows() is thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/data/manifest.h"

namespace sae {

struct SyntheticOptions {
  int64_t d_in = 64;
  int64_t atoms = 256;
  int64_t k = 4;
  uint64_t seed = 0;
  double noise = 0.01;
  double frequency_decay = 0.0;
};

class PlantedDictionary {
 public:
  static absl::StatusOr<PlantedDictionary> Create(SyntheticOptions opts);

  const SyntheticOptions& options() const { return opts_; }
  // atoms x d_in, row-major, unit-norm rows.
  const std::vector<float>& dictionary() const { return dict_; }
  // Writes rows [first, first + n) into out (n * d_in floats).
  void Rows(int64_t first, int64_t n, float* out) const;

  // Writes `rows` rows as a shard directory and DIR/dictionary.safetensors
  // (tensor "dictionary", atoms x d_in).
  absl::StatusOr<Manifest> WriteShards(const std::string& dir, int64_t rows, int64_t rows_per_shard, DType dtype) const;

 private:
  SyntheticOptions opts_;
  std::vector<float> dict_;
  std::vector<double> cdf_;  // cumulative atom-selection weights
};

}  // namespace sae
