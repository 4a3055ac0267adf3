// Steering a language model with SAE latents (INTERPRETABILITY.md "Steering").
// Let h be the residual at the SAE's hook, â = encode(h), err = h − decode(â).
//   add:   h ← h + s · W_dec[j] / ‖W_dec[j]‖ (in the model's space)
//   clamp: â_j ← s · max_j (or s itself with absolute units), h ← decode(â') + err,
//          computed as h + (decode(â') − decode(â)): when â' = â the edit is
//          exactly zero and h comes back bit for bit.
// BOS (position 0) is never edited. A Steerer is immutable after Create and
// safe to use from several threads.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/interp/sae_run.h"
#include "core/lm/generate.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

enum class SteerMode { kAdd, kClamp };
enum class SteerOn { kAll, kPrompt, kGenerated };
absl::StatusOr<SteerMode> SteerModeFromString(const std::string& s);
absl::StatusOr<SteerOn> SteerOnFromString(const std::string& s);
const char* SteerModeName(SteerMode m);
const char* SteerOnName(SteerOn o);

struct SteerTerm {
  int64_t latent = 0;
  double scale = 0;
};
// "J:S[,J:S...]" (e.g. "12:4,7:-2").
absl::StatusOr<std::vector<SteerTerm>> ParseSteerTerms(const std::string& s);

struct SteerOptions {
  std::vector<SteerTerm> terms;
  SteerMode mode = SteerMode::kAdd;
  SteerOn on = SteerOn::kAll;
  bool absolute = false;  // clamp: s is the activation itself, not a multiple of max_j
};

class Steerer {
 public:
  // `max_acts` (one per latent, from the dashboards) is needed for clamp in
  // relative units; latents are checked against the SAE.
  static absl::StatusOr<Steerer> Create(const SaeRun& run, const SteerOptions& opts,
                                        const std::vector<float>& max_acts);
  const SteerOptions& options() const { return opts_; }
  // Edits rows x [N, d] (hook space); returns the edited rows.
  absl::StatusOr<at::Tensor> Apply(const at::Tensor& x) const;
  // Whether a token at `pos` is edited when the prompt has `prompt_len` tokens (BOS included).
  bool Steers(int64_t pos, int64_t prompt_len) const;

 private:
  Steerer() = default;
  const SaeRun* run_ = nullptr;
  SteerOptions opts_;
  std::vector<double> targets_;  // clamp: the value of each term's latent
  at::Tensor add_;               // add: Σ s·unit(W_dec[j]) [1, d]
};

// Clamps latents to per-row values: x [N, d], targets [N, m] for latents
// (m of them): x + DecoderDeltaToInput(Σ_j (t_j − â_j) W_dec[j]). Exact
// identity where every target equals the current activation.
absl::StatusOr<at::Tensor> ClampRows(const LoadedSae& sae, const at::Tensor& x, const std::vector<int64_t>& latents,
                                     const at::Tensor& targets);

struct SteeredText {
  std::vector<int32_t> tokens;  // BOS, prompt, generated
  int64_t prompt_tokens = 0;    // BOS included
  std::string text;             // the printable pieces, prompt included
  double seconds = 0;
};
// Generate (core/lm) with the steerer's edit at its SAE's hook (null: plain).
// `observe` (may be empty) sees every position's hook rows after the edit.
absl::StatusOr<SteeredText> GenerateSteered(const Transformer& model, const Tokenizer& tok, const SaeRun& run,
                                            const GenerateOptions& opts, const Steerer* steer,
                                            const std::function<void(int64_t, const at::Tensor&)>& observe = {});

// The unsteered model's mean next-token loss (nats) over tokens[from..], each
// predicted from everything before it (from ≥ 1): a fluency figure.
absl::StatusOr<double> MeanTokenLoss(const Transformer& model, const std::vector<int32_t>& tokens, int64_t from);

}  // namespace sae
