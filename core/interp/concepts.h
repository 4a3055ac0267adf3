// Concept search: which latents fire consistently on a set of texts and not
// on a contrast set (INTERPRETABILITY.md "Concept search"). Activations are
// normalised per latent, a_j / max_j, with max_j the latent's dashboard
// maximum (raised to the largest value this query sees, so no ratio exceeds
// 1; without dashboards max_j is that largest value). A text "fires" latent j
// when max over its tokens of a_j / max_j ≥ threshold.
//   f_T, f_C = share of texts / contrast texts that fire j
//   score    = f_T − f_C; ties broken by the mean over texts of that max ratio.
// Stateless; safe from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/interp/sae_run.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

struct ConceptOptions {
  double threshold = 0.1;
  int64_t top = 20;
  // Default contrast: windows the model samples itself (held-out seed).
  int64_t contrast_windows = 64;
  int64_t contrast_context = 64;
  uint64_t contrast_seed = 2000003;
  // Called with texts done and texts to do (texts and contrast together); may be empty.
  std::function<void(int64_t done, int64_t total)> progress;
};

struct ConceptHit {
  int64_t latent = 0;
  double f_texts = 0, f_contrast = 0, score = 0, mean_norm = 0;
  std::vector<std::vector<float>> heat;  // per text, per token (BOS excluded): a_j / max_j
};

struct ConceptReport {
  std::vector<TextCodes> texts;  // the analysed texts (tokens, pieces, codes)
  int64_t contrast_count = 0;
  std::string contrast_source;   // "file", "model samples", "given"
  std::string normaliser;        // "dashboards" or "query"
  std::vector<ConceptHit> hits;  // best first, only latents with f_T > 0
};

// Texts are token sequences with BOS first. `max_acts` may be empty.
absl::StatusOr<ConceptReport> SearchConcepts(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                             const std::vector<std::vector<int32_t>>& texts,
                                             const std::vector<std::vector<int32_t>>& contrast,
                                             const std::vector<float>& max_acts, const ConceptOptions& opts);

// The default contrast set: opts.contrast_windows windows sampled by the model.
absl::StatusOr<std::vector<std::vector<int32_t>>> ModelContrastSet(const Transformer& model,
                                                                   const ConceptOptions& opts);

// One text per non-empty line, encoded with BOS.
std::vector<std::vector<int32_t>> EncodeLines(const Tokenizer& tok, const std::string& text);

}  // namespace sae
