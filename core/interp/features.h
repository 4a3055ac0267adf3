// Feature dashboards for every latent of an SAE in one streaming pass
// (INTERPRETABILITY.md "Feature dashboards"): a TopK code has only k non-zero
// latents per token, so each token updates k latents' statistics (and k(k−1)/2
// co-firing sums) and nothing is recomputed per batch of latents.
//
// Per latent j: firing count and density, mean (over firing tokens) and max
// activation, a histogram over fixed log-spaced bins (kHistBins bins, 10 per
// decade from 1e-4; values outside go to the first/last bin), the top
// contexts (largest a_j, ties by earlier token), activation intervals
// (quantile groups of its firing tokens, on histogram-bin edges) each with a
// uniform sample of contexts (the events with the smallest seeded hash key:
// a reservoir that merges exactly), the logit effect W_U·(g ⊙ W_dec[j]) (g:
// the final norm's gain) and the latents most correlated with it over tokens.
//
// Sums are kept in fixed point (2^-32 units, 128-bit), so an accumulator of
// rank r of W (the forward blocks b ≡ r mod W) merged with the others equals
// a one-process pass exactly, bit for bit. FeatureAccumulator is not
// thread-safe; FeatureSet is immutable once loaded (safe to share).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/base/status.h"
#include "core/interp/sae_run.h"
#include "core/lm/harvest.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

constexpr int kHistBins = 80;  // [1e-4, 1e4), 10 per decade
int HistBin(float a);          // bin of a > 0
double HistEdge(int i);        // lower edge of bin i (i = kHistBins: the top)

struct FeatureOptions {
  HarvestOptions windows;   // layer, hook, corpus, context, batch (windows per block), seed
  int64_t tokens = 100000;  // rows to read (rounded up to whole windows)
  int64_t radius = 8;       // a context is the token and ±radius tokens of its window
  int64_t top_contexts = 20;
  int64_t intervals = 10;
  int64_t interval_samples = 5;
  int64_t cofire = 5;
  int64_t logit_tokens = 10;
  uint64_t sample_seed = 0;
  int rank = 0, world = 1;  // this process reads blocks b ≡ rank (mod world)
};

// A context window: tokens[s] and acts[s] (of its latent) for positions
// pos − radius + s; −1 where the window has no token there (BOS or outside).
struct FeatureContext {
  int64_t token_index = 0;  // global row index (window · (context − 1) + pos − 1)
  float act = 0;
  uint64_t key = 0;  // reservoir key (interval samples)
  std::vector<int32_t> tokens;
  std::vector<float> acts;
};

class FeatureAccumulator {
 public:
  FeatureAccumulator(int64_t latents, const FeatureOptions& opts);
  // One block of windows: tokens [B, T] (BOS at 0) of windows first..first+B−1,
  // and their codes for positions 1..T−1, rows window-major ([B·(T−1), k]).
  absl::Status Add(int64_t first_window, const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& acts);
  absl::Status Merge(const FeatureAccumulator& other);
  // A complete, exact copy of the state (MessagePack) and back.
  std::vector<uint8_t> Serialize() const;
  static absl::StatusOr<FeatureAccumulator> Deserialize(const std::vector<uint8_t>& bytes, const std::string& what);

  int64_t latents() const { return n_; }
  int64_t tokens() const { return total_; }

  struct Latent {
    int64_t count = 0;
    __int128 sum = 0, sumsq = 0;  // fixed point, 2^-32
    float max = 0;
    std::vector<int64_t> hist;                           // kHistBins
    std::vector<FeatureContext> top;                     // a heap, worst on top
    std::map<int, std::vector<FeatureContext>> samples;  // per histogram bin, smallest keys
  };
  const Latent& latent(int64_t j) const { return lat_[j]; }
  // Σ a_i·a_j (fixed point) over tokens where both fire, key i·n + j with i < j.
  const std::unordered_map<uint64_t, __int128>& pair_sums() const { return pairs_; }
  const FeatureOptions& options() const { return opts_; }

 private:
  void Offer(int64_t j, float a, int64_t token_index, const int32_t* win_tokens, int64_t T, int64_t pos,
             const int64_t* idx, const float* act, int64_t k, int64_t row0);
  int64_t n_;
  FeatureOptions opts_;
  int64_t total_ = 0;
  std::vector<Latent> lat_;
  std::unordered_map<uint64_t, __int128> pairs_;
};

// What a dashboard shows for one latent.
struct FeatureInterval {
  double lo = 0, hi = 0;  // activation range (histogram-bin edges, clipped to the max)
  int64_t count = 0;      // firing tokens in it
  std::vector<FeatureContext> samples;
};
struct FeatureDashboard {
  int64_t latent = 0, count = 0;
  double density = 0, mean = 0, max = 0;
  std::vector<int64_t> hist;  // kHistBins counts (sum = count)
  std::vector<FeatureContext> top;
  std::vector<FeatureInterval> intervals;
  std::vector<std::pair<int32_t, float>> logit_top, logit_bottom;  // (token, W_U·W_dec[j])
  std::vector<std::pair<int32_t, float>> cofire;                   // (latent, correlation)
};

struct FeatureSet {
  std::string meta_json;  // features.json without the vocabulary
  int64_t latents = 0, tokens = 0, radius = 0;
  std::vector<std::string> vocab;  // printable piece of each token id
  std::vector<FeatureDashboard> features;
  // The piece of a context slot ("" for −1).
  const std::string& Piece(int32_t id) const;
  // Latents whose top contexts' text contains `text` (case-insensitive),
  // most matching contexts first, then by max activation.
  std::vector<std::pair<int64_t, int64_t>> Search(const std::string& text, int64_t limit = 50) const;
  std::vector<float> MaxActivations() const;
};

// Completes the dashboards: intervals, logits (from the model's unembedding
// and final-norm gain), co-firing, the vocabulary's pieces.
absl::StatusOr<FeatureSet> FinalizeFeatures(const FeatureAccumulator& acc, const Transformer& model,
                                            const Tokenizer& tok, const SaeRun& run);

// The streaming pass of this rank (opts.rank of opts.world). `progress`
// (may be empty) gets rows done and rows to do after each block.
absl::StatusOr<FeatureAccumulator> AccumulateFeatures(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                                      const FeatureOptions& opts,
                                                      const std::function<void(int64_t, int64_t)>& progress = {});

// DIR/features.safetensors + DIR/features.json (docs/formats.md); `extra`
// is merged into features.json (model path, corpus, …).
absl::Status WriteFeatures(const FeatureSet& fs, const std::string& dir, const std::string& extra_json);
absl::StatusOr<FeatureSet> LoadFeatures(const std::string& dir);

}  // namespace sae
