// Where a training job's activation rows come from: shards on disk, a
// language model run on the fly, or the synthetic planted dictionary. A source is positioned by a row count so a
// resumed job continues with the same rows. Not thread-safe (one consumer).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/base/config.h"
#include "core/base/status.h"
#include "core/data/synthetic.h"
#include "core/lm/harvest.h"

namespace sae {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t d_in() const = 0;
  // Fills `out` with rows × d_in floats. Errors name the shard and row.
  virtual absl::Status Next(int64_t rows, std::vector<float>* out) = 0;
  // This rank's share of the next global batch: rows [rank·n/world,
  // (rank+1)·n/world) of it, where n = global_rows; the position advances by
  // global_rows on every rank. The default reads the whole batch and keeps
  // the slice.
  virtual absl::Status NextSlice(int64_t global_rows, int rank, int world, std::vector<float>* out);
  // Rows handed out since the start of the data (the resume position).
  virtual int64_t position() const = 0;
  // JSON object describing the data (for cfg.json provenance).
  virtual std::string DescribeJson() const = 0;
};

// Which share of every global batch this process trains on.
struct DataShare {
  int rank = 0;
  int world = 1;
  int64_t batch_rows = 0;  // the job's global batch (train.batch_tokens)
};

// The planted-dictionary settings of a `data.kind: synthetic` job.
SyntheticOptions SyntheticOptionsFromJob(const JobConfig& job);

// The harvest settings of a `data.kind: lm` job (the same rows `sae harvest`
// writes for the same model, layer, corpus, context and seed).
HarvestOptions LmHarvestOptions(const JobConfig& job);

// Opens the source of `job.data`, positioned at `start_row`. With
// share.world > 1 a shard source reads only the rows of its rank's share
// (NextSlice with share.batch_rows, the global batch); the global row order
// is the same for every world size.
absl::StatusOr<std::unique_ptr<BatchSource>> OpenBatchSource(const JobConfig& job, int64_t start_row,
                                                             const DataShare& share = {});

}  // namespace sae
