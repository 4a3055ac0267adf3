// A trained SAE together with where it reads a model (its run directory,
// layer and hook from cfg.json's provenance), and the shared pieces every
// interpretability tool uses: the hook's activations for token sequences and
// the SAE's codes for activation rows (its input normalisation applied, and
// undone for anything returned in the model's space). Everything here is a
// pure function of read-only inputs: safe from several threads at once.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"
#include "core/sae/trainer.h"

namespace sae {

struct SaeRun {
  std::string dir;
  LoadedSae sae;
  int64_t layer = -1;  // −1: cfg.json names none (the caller must say)
  HookPoint hook = HookPoint::kResidPost;
  std::string model;  // provenance: the model the SAE was trained on ("" if unknown)
  int64_t latents() const { return sae.params.latents(); }
};

// Loads DIR/sae.safetensors + DIR/cfg.json; `layer_override` ≥ 0 replaces the
// provenance layer. Fails (InvalidArgument naming cfg.json) when neither gives one.
absl::StatusOr<SaeRun> OpenSaeRun(const std::string& dir, int64_t layer_override = -1);

// Checks that the SAE fits the model (width, layer range); errors name both.
absl::Status CheckSaeFitsModel(const SaeRun& run, const Transformer& model);

// The SAE's code for rows x [N, d] (any device; float32 math on the SAE's):
// top-k indices [N, k] int64 and activations [N, k] (≥ 0), the reconstruction
// x_hat [N, d] in the input's space, and the normalisation constants used.
struct SaeCodes {
  at::Tensor indices, acts, x_hat;
  at::Tensor mu, sd;  // layer_norm only: per-row mean and std [N, 1]
};
absl::StatusOr<SaeCodes> EncodeRows(const LoadedSae& sae, const at::Tensor& x);

// A change `delta` [N, d] of the SAE's decoder output (Σ Δa_j W_dec[j]) as a
// change of the input rows the codes were computed from (normalisation undone).
at::Tensor DecoderDeltaToInput(const LoadedSae& sae, const SaeCodes& codes, const at::Tensor& delta);

// The hook's activations for token ids [B, T] (int64): [B, T, d] on CPU,
// running the model only up to the hooked block.
absl::StatusOr<at::Tensor> HookActivations(const Transformer& model, const at::Tensor& tokens, int64_t layer,
                                           HookPoint hook);

// Activations of one text at the hook: its tokens (BOS first), the printable
// piece of each token, and the SAE code of every position after BOS.
struct TextCodes {
  std::vector<int32_t> tokens;
  std::vector<std::string> pieces;  // pieces[0] is "" (BOS)
  SaeCodes codes;                   // rows for positions 1..T−1
};
absl::StatusOr<TextCodes> EncodeText(const Transformer& model, const Tokenizer& tok, const SaeRun& run,
                                     const std::string& text, int64_t max_tokens = 0);
absl::StatusOr<TextCodes> EncodeTokens(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                       std::vector<int32_t> tokens);

// The activation of `latent` at each row of `codes` (0 where it is not in the top-k).
std::vector<float> LatentActivations(const SaeCodes& codes, int64_t latent);

}  // namespace sae
