// Streams batches of activation rows from a shard directory without loading
// the dataset: a background thread reads shards ahead (bounded prefetch) and a
// bounded shuffle window reorders rows. Order is a pure function of
// (seed, epoch, position): epoch e visits shards in a permutation seeded by
// (seed, e) and shuffles each window of `shuffle_window_rows` consecutive rows
// of that visit order with a permutation seeded by (seed, e, window index).
// So the stream can be reopened at any row position (resume) and yields the
// same rows. Batches never span an epoch boundary's reshuffle incorrectly:
// the stream just continues into the next epoch.
// Next() is called from one thread; the prefetch thread is internal.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/data/manifest.h"

namespace sae {

struct StreamOptions {
  int64_t shuffle_window_rows = 65536;  // 1 disables shuffling
  uint64_t seed = 0;
  int64_t start_row = 0;     // global position (rows since epoch 0 began) to start at
  int64_t prefetch_windows = 2;
  bool verify_checksums = false;  // sha256 of each shard before first use
  int64_t expected_d_in = 0;      // 0 = take from the manifest
};

class ActivationStream {
 public:
  // Loads and checks the manifest and every shard header (dtype, shape, rows).
  static absl::StatusOr<std::unique_ptr<ActivationStream>> Open(const std::string& dir,
                                                               StreamOptions opts);
  ~ActivationStream();

  const Manifest& manifest() const;
  int64_t d_in() const;
  int64_t position() const;  // rows handed out so far, including start_row

  // Fills `out` with rows * d_in floats (resized). Errors: a shard that cannot
  // be read, a checksum mismatch, or a NaN/Inf value (naming shard and row).
  absl::Status Next(int64_t rows, std::vector<float>* out);

 private:
  struct Impl;
  explicit ActivationStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae
