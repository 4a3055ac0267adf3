// One training step of a TopK SAE, forward and sparse backward (ALGORITHMS.md
// §1, §2, §4), and the optimizer update (§5). The backward never builds a
// dense batch×latents gradient nor a batch×k×d temporary: the encoder GEMM is
// computed in row blocks and reduced to the top-k at once, and weight
// gradients are gathered per latent from the k entries each token selected.
// Free functions over caller-owned tensors; each call uses every core through
// at::parallel_for (loops too small to gain stay on the calling thread) and
// is not re-entrant on the same tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/base/job_options.h"
#include "core/base/status.h"

namespace sae {

class Int8Screen;  // core/sae/int8_screen.h
namespace internal {
class EncoderGemm;   // core/sae/encoder_gemm.h
class SmallEncoder;  // core/sae/small_encoder.h
}  // namespace internal
double DefaultAuxCoefficient(Remedy r);  // Remedy: core/base/job_options.h

// The parameters: encoder (n×d, n), decoder rows (n×d) and b_dec (d). All
// contiguous CPU tensors of one dtype (float32 for training, float64 in tests).
struct SaeParams {
  at::Tensor W_enc, b_enc, W_dec, b_dec;
  int64_t latents() const { return W_enc.size(0); }
  int64_t d_in() const { return W_enc.size(1); }
  SaeParams Clone() const;
};

// Gradients in the parameters' layout (dense; rows no token touched are
// zero). ZerosLike makes the four tensors views of one flat buffer, so
// data-parallel training all-reduces them in a few large buckets.
struct SaeGrads {
  at::Tensor W_enc, b_enc, W_dec, b_dec;
  at::Tensor flat;  // all four, contiguous (when made by ZerosLike)
  // Set by ComputeGradients with StepConfig::sparse_grads (CPU step): per
  // latent, 0 where its W_enc and W_dec gradient rows are zero and were not
  // written (the tensors hold whatever an earlier step left there), and
  // Σ of every gradient element squared, taken from the step's own passes.
  // Otherwise (every other call): rows_written empty (all rows written) and
  // sum_sq < 0 (unknown). Whoever changes the gradients afterwards (an
  // all-reduce) must not set sparse_grads.
  std::vector<uint8_t> rows_written;
  double sum_sq = -1;
  static SaeGrads ZerosLike(const SaeParams& p);
};

// Buffers reused across steps (the pre-activation block alone is up to
// 128 MiB; allocating it fresh costs page faults every step). Optional.
struct StepWorkspace {
  at::Tensor zbuf, xhat, gx, xc;
  std::shared_ptr<internal::EncoderGemm> gemm;  // the fp32 encoder GEMM's primitives and weights
  // The small-d fp32 encoder with the top-k in its epilogue, and its copy of
  // the dead latents' rows (AuxK, Ghost Grads).
  std::shared_ptr<internal::SmallEncoder> small, small_dead;
};

struct StepConfig {
  int64_t k = 32;
  // Latents count as fired (StepResult::fired) only when among the first
  // fire_k of a row's top-k with a > 0: with a k schedule, the target k, so
  // that "dead" means the same while k is still large (ALGORITHMS.md §3-§4).
  // 0 = k.
  int64_t fire_k = 0;
  // Multi-TopK (Gao et al. §A.4, docs/algorithms.md): when 0 < target_k < k,
  // the loss is fvu(x̂ at target_k) + current_k_weight · fvu(x̂ at k), where
  // x̂ at target_k uses only the first target_k of each row's top-k: the
  // steps of a k schedule's high-k phase train the reconstruction the SAE
  // ends with. 0 (or >= k): the loss is fvu at k alone.
  int64_t target_k = 0;
  double current_k_weight = 0.125;
  // Multi-TopK's current-k term compares x̂ − b_dec after scaling by
  // β = clamp(⟨x̂ − b_dec, x − b_dec⟩ / ‖x̂ − b_dec‖², 0, 1) per row
  // (stop-gradient): at a k far above the target the sum of k latents
  // overshoots the input, and the term then trains directions, leaving the
  // scale to the target-k term (docs/algorithms.md). false: β = 1.
  bool current_k_fit = true;
  Remedy remedy = Remedy::kNone;
  double aux_coefficient = 0;  // weight of the remedy's loss term
  // AuxK compares α·ê with the residual e, α = clamp(⟨ê, e⟩ / ‖ê‖², 0, 1)
  // per row (stop-gradient; 1 when ê = 0): the magnitude of the dead
  // latents' reconstruction is fitted in closed form, so the gradient ranks
  // dead latents by direction instead of shrinking all of them
  // (docs/algorithms.md, docs/dead-latents.md). false: Gao et al. as
  // published (α = 1).
  bool auxk_fit = true;
  const std::vector<int64_t>* dead = nullptr;  // dead latents, ascending
  bool project_decoder_grad = true;            // remove the component parallel to W_dec rows
  // bf16 encoder: when defined, the GEMM uses this (n×d, bf16-rounded values
  // of W_enc) and inputs rounded to bf16; everything else stays in fp32.
  at::Tensor W_enc_lowp;
  // train.encoder: int8_screened (core/sae/int8_screen.h): when set, the
  // top-k comes from the certified int8 screen instead of the fp32 GEMM
  // (float32 parameters on CPU only; the ATen step refuses it).
  Int8Screen* screen = nullptr;
  int64_t block_rows = 0;  // encoder GEMM row block; 0 = automatic
  // float32 on CPU: the encoder GEMM through LibTorch's at::addmm (OpenBLAS)
  // in row blocks instead of oneDNN (core/sae/encoder_gemm.h); the reference
  // path for tests and benchmarks. (float64 always uses at::addmm.)
  bool aten_gemm = false;
  // float32 on CPU with oneDNN (aten_gemm false): where the shape is small
  // enough (internal::UseSmallEncoder), the encoder with the top-k fused
  // into its epilogue (core/sae/small_encoder.h). false: oneDNN's GEMM and a
  // separate selection everywhere (tests and benchmarks compare the two).
  bool small_encoder = true;
  // Σ‖x − x̄‖² over the global batch (all ranks); <= 0: this batch's own.
  double total_var = 0;
  StepWorkspace* workspace = nullptr;  // reuse buffers across calls when set
  // Use the device-generic ATen step (sae_step_aten.cc, declared in
  // sae_step_internal.h) on CPU tensors too; tensors on another device
  // (CUDA) always use it.
  bool aten = false;
  // CPU step, single process: skip writing the zero gradient rows of latents
  // no token touched and take Σ grad² from the latent pass (SaeGrads::
  // rows_written, sum_sq; GlobalGradNorm and AdamUpdate use them). Ignored
  // (dense gradients) by the ATen step and with Ghost Grads, which add to
  // those rows afterwards.
  bool sparse_grads = false;
};

struct StepResult {
  double loss = 0;  // fvu (+ Multi-TopK's target-k term) + aux term (what the gradients are of)
  // fvu: at the step's k. fvu_target: at target_k with Multi-TopK (= fvu otherwise).
  double fvu_target = 0;
  double fvu = 0, mse = 0, aux_loss = 0, l0 = 0;
  double sse = 0;        // Σ‖x − x̂‖²
  int64_t active = 0;    // Σ over rows of the latents with a > 0
  double total_var = 0;  // Σ‖x − x̄‖²
  // Σ over rows of ‖x̂ − b_dec‖ and of ‖x − b_dec‖: their ratio says whether
  // the reconstruction has the input's scale (ALGORITHMS.md §1, init).
  double recon_norm = 0, input_norm = 0;
  std::vector<uint8_t> fired;  // per latent: fired (a > 0, within fire_k) on some row
  // Wall time of each phase of the step, in order (for benchmarks).
  std::vector<std::pair<const char*, double>> phase_seconds;
  // The calling thread's CPU time in each phase (the phases the step's own
  // clock records; with one LibTorch thread, each phase's cost on a loaded
  // machine).
  std::vector<std::pair<const char*, double>> phase_cpu_seconds;
};

// Forward + backward of the loss for batch x (B×d, params' dtype). Writes
// gradients into `grads` (overwritten) and the metrics into `result`.
absl::Status ComputeGradients(const SaeParams& params, const at::Tensor& x, const StepConfig& cfg, SaeGrads* grads,
                              StepResult* result);

// Inference: top-k indices (B×k, int64), activations (B×k, relu'd) and x̂.
struct EncodeResult {
  at::Tensor indices, acts, x_hat;
};
absl::StatusOr<EncodeResult> Encode(const SaeParams& params, const at::Tensor& x, int64_t k);

struct AdamState {
  at::Tensor m_W_enc, v_W_enc, m_b_enc, v_b_enc, m_W_dec, v_W_dec, m_b_dec, v_b_dec;
  int64_t step = 0;
  static AdamState ZerosLike(const SaeParams& p);
};

struct AdamConfig {
  double lr = 2e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 6.25e-10;
  double clip_scale = 1.0;  // gradients are multiplied by this first
  bool renormalize_decoder = true;
};

// sqrt of Σ of every gradient element squared (g.sum_sq when known).
double GlobalGradNorm(const SaeGrads& g);
// min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0.
double ClipScale(double norm, double max_norm);

// One fused Adam step over every parameter (torch.optim.Adam's formula), then
// decoder rows renormalised to unit norm; refreshes `W_enc_lowp` if defined.
// Rows that grads.rows_written marks unwritten are updated with a zero
// gradient without reading it (the same values as reading zeros).
void AdamUpdate(SaeParams* params, const SaeGrads& grads, const AdamConfig& cfg, AdamState* state,
                at::Tensor* W_enc_lowp);

// Rounds every element to the nearest bfloat16 value (kept in float32).
void RoundToBF16InPlace(at::Tensor t);

}  // namespace sae
