// How much of a language model an SAE preserves (ALGORITHMS.md §7): the SAE's
// reconstruction is spliced into the residual stream at the hook and the
// next-token loss compared with the clean model and with zero ablation.
//   CE loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)
//   KL score          = (KL_zero − KL_sae) / KL_zero, KL(clean ‖ patched) per token
// plus fvu (about the mean), L0, and the dead / dense (>1%, >10%) latent ratios
// over the evaluated tokens. The BOS position is never spliced. Stateless.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/base/status.h"
#include "core/lm/harvest.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"
#include "core/sae/trainer.h"

namespace sae {

struct SaeEvalOptions {
  HarvestOptions windows;  // layer, hook, corpus ("generate" or a file), context, batch, seed
  int64_t num_windows = 16;
  // Called with rows done and rows to do after each batch (may be empty).
  std::function<void(int64_t done, int64_t total)> progress;
};

struct SaeEvalResult {
  int64_t tokens = 0;  // activation rows evaluated
  int64_t latents = 0;
  double fvu = 0, mse = 0, l0 = 0;
  double dead_ratio = 0, dense_1pct_ratio = 0, dense_10pct_ratio = 0;
  double ce_clean = 0, ce_sae = 0, ce_zero = 0, ce_loss_recovered = 0;
  double kl_sae = 0, kl_zero = 0, kl_score = 0;
};

// A reconstruction of activation rows x [N, d]: x̂ [N, d] and, for an SAE,
// the active latents (indices/acts [N, k]; undefined for a non-SAE splice).
struct Reconstruction {
  at::Tensor x_hat, indices, acts;
};
using Reconstructor = std::function<absl::StatusOr<Reconstruction>(const at::Tensor& x)>;

// Evaluates any reconstruction (`latents` = 0 when it has none).
absl::StatusOr<SaeEvalResult> EvaluateReconstruction(const Transformer& model, const Tokenizer* tok,
                                                     const SaeEvalOptions& opts, const Reconstructor& fn,
                                                     int64_t latents);

// The reconstruction of a loaded SAE (its input normalisation applied and undone).
Reconstructor SaeReconstructor(const LoadedSae& sae);

absl::StatusOr<SaeEvalResult> EvaluateSae(const Transformer& model, const Tokenizer* tok, const SaeEvalOptions& opts,
                                          const LoadedSae& sae);

}  // namespace sae
