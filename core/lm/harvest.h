// Activations of a language model as a deterministic stream of rows, for
// writing shards (`sae harvest`), training on the fly (`data.kind: lm`) and
// evaluation. Windows of `context` tokens start with BOS: from a text corpus
// (documents split at <|endoftext|> or blank lines, each BOS-prefixed, all
// concatenated and cut into context−1 token pieces, cycling) or sampled by
// the model itself (window w with llama2.c's sampler seeded seed + w). The
// rows of window w are the hook's activations at positions 1..context−1 (BOS
// excluded), with the token ids at those positions. Windows are computed
// `batch` at a time, so row values depend only on (options, row index).
// Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/data/manifest.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

struct HarvestOptions {
  std::string corpus = "generate";  // a text file, or "generate"
  int64_t layer = 0;
  HookPoint hook = HookPoint::kResidPost;
  int64_t context = 128;
  int64_t batch = 32;  // windows per forward pass
  uint64_t seed = 1;
  float temperature = 1.0f, top_p = 0.9f;  // generate
  // A block's windows run as this many independent streams, one core each
  // (its share of the windows generated, if so, and run through the model).
  // 0: for generated windows of small models (PreferredThreads 1, whose
  // forward passes are too short to split across cores) the cores this
  // process may use, else 1.
  // The rows are the same for any count: each window's tokens depend on its
  // own seed only.
  int streams = 0;
};

// The streams a block of `o`'s windows runs as on `model` (o.streams, or
// its rule when 0), at most o.batch.
int64_t HarvestStreams(const ModelConfig& model, const HarvestOptions& o);

// Token windows, [count, context] int64 for windows [first, first + count).
class WindowSource {
 public:
  static absl::StatusOr<std::unique_ptr<WindowSource>> Create(const Transformer& model, const Tokenizer* tok,
                                                              const HarvestOptions& opts);
  absl::StatusOr<at::Tensor> Windows(int64_t first, int64_t count);
  // Windows the corpus holds before it cycles (0 for generate: unbounded).
  int64_t distinct_windows() const;

 private:
  WindowSource() = default;
  const Transformer* model_ = nullptr;
  HarvestOptions opts_;
  std::vector<int32_t> stream_;  // corpus tokens without window BOS
};

class Harvester {
 public:
  static absl::StatusOr<std::unique_ptr<Harvester>> Create(const Transformer& model, const Tokenizer* tok,
                                                           const HarvestOptions& opts);
  int64_t d_in() const { return model_->config().dim; }
  int64_t rows_per_window() const { return opts_.context - 1; }
  const HarvestOptions& options() const { return opts_; }
  // Rows [start, start + n): n·d_in floats into `acts`, n ids into `tokens` (may be null).
  absl::Status Rows(int64_t start, int64_t n, float* acts, int32_t* tokens);

 private:
  Harvester() = default;
  absl::Status ComputeBlock(int64_t block);
  // Windows [first, first + count) of the corpus into rows starting at `row`
  // of the block's buffers.
  absl::Status ComputeWindows(int64_t first, int64_t count, int64_t row);
  const Transformer* model_ = nullptr;
  HarvestOptions opts_;
  std::unique_ptr<WindowSource> windows_;
  int64_t block_ = -1;
  at::Tensor block_acts_;    // [batch·(context−1), d] float32 CPU
  at::Tensor block_tokens_;  // [batch·(context−1)] int32
};

// Called with rows done and rows to do after each forward block (progress bars).
using HarvestProgress = std::function<void(int64_t done, int64_t total)>;

// Writes `rows` rows to a shard directory with token ids and a manifest
// whose source names the model, layer, hook and corpus.
absl::StatusOr<Manifest> HarvestToShards(Harvester* h, int64_t rows, const std::string& out_dir,
                                         const std::string& model_name, int64_t rows_per_shard = 65536,
                                         const HarvestProgress& progress = {});

// One rank's part of a harvest spread over `world` processes: the rows are
// cut into forward-pass blocks (batch · (context − 1) rows), rank r writes the
// blocks b ≡ r (mod world) as shard-<b>.safetensors, and rank 0 waits (up to
// `timeout_seconds`) for every rank's list and writes manifest.json. The
// shards, in manifest order, hold exactly the rows of a one-process harvest.
absl::StatusOr<Manifest> HarvestRankToShards(Harvester* h, int64_t rows, const std::string& out_dir,
                                             const std::string& model_name, int rank, int world,
                                             double timeout_seconds = 600, const HarvestProgress& progress = {});

}  // namespace sae
