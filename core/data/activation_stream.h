// Streams batches of activation rows from a shard directory without loading
// the dataset: a background thread reads shards ahead (bounded prefetch) and a
// bounded shuffle window reorders rows. Order is a pure function of
// (seed, epoch, position): epoch e visits shards in a permutation seeded by
// (seed, e) and shuffles each window of `shuffle_window_rows` consecutive rows
// of that visit order with a permutation seeded by (seed, e, window index).
// So the stream can be reopened at any row position (resume) and yields the
// same rows. Batches never span an epoch boundary's reshuffle incorrectly:
// the stream just continues into the next epoch.
// Data parallel: with world > 1 a stream is one rank's share. The global
// order stays the one above (so it does not depend on the world size and a
// job can resume with another one); rank r owns positions [B·r/N, B·(r+1)/N)
// of every global batch of B = batch_rows rows, and its prefetch thread reads
// only the rows it owns, so every row is read by exactly one rank. Checksums
// of shard i are verified by rank i mod N.
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
  int64_t start_row = 0;  // global position (rows since epoch 0 began) to start at
  int64_t prefetch_windows = 2;
  bool verify_checksums = false;  // sha256 of each shard before first use
  int64_t expected_d_in = 0;      // 0 = take from the manifest
  int rank = 0;                   // this rank's share when world > 1
  int world = 1;
  int64_t batch_rows = 0;  // global batch; required when world > 1
};

class ActivationStream {
 public:
  // Loads and checks the manifest and every shard header (dtype, shape, rows).
  static absl::StatusOr<std::unique_ptr<ActivationStream>> Open(const std::string& dir, StreamOptions opts);
  ~ActivationStream();

  const Manifest& manifest() const;
  int64_t d_in() const;
  int64_t position() const;  // rows handed out so far, including start_row

  // Fills `out` with rows * d_in floats (resized). Errors: a shard that cannot
  // be read, a checksum mismatch, or a NaN/Inf value (naming shard and row).
  // With world > 1, `rows` must be batch_rows and `out` gets this rank's
  // slice of that global batch; position() advances by batch_rows.
  absl::Status Next(int64_t rows, std::vector<float>* out);

 private:
  struct Impl;
  explicit ActivationStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae
