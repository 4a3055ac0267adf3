// train.encoder: int8_screened — the encoder's top-k through an int8 GEMM
// whose result is certified exact (ALGORITHMS.md §9, docs/algorithms.md).
//
// Per step: the encoder rows are quantised to int8 per row (symmetric,
// scales and the norms of the rows and of their quantisation error kept),
// (straight into oneDNN's blocked weights layout), and per block of input
// rows: the rows are quantised the same way (stored as q + 128, the u8
// operand of VNNI's u8×s8 products), oneDNN's int8 matmul gives every
// pre-activation approximately, and a vectorised pass turns each into an
// upper bound u_j = ẑ_j + ε_j(x) on the value the exact fp32 computation
// can give (Cauchy–Schwarz on both quantisation errors plus a bound on fp32
// rounding). The candidates S of a row are the latents with the largest u
// (at least C blocks' worth); they are rescored exactly in fp32
// (ExactPreactivation, latent-major so each encoder row is read once per
// block) and τ, the k-th largest exact value, is compared with the largest
// u outside S. A row is certified when no latent outside S can reach τ (or,
// when τ <= 0, can be positive: the ReLU after TopK makes those inactive).
// A row that is not certified is recomputed exactly: every latent whose
// bound reaches τ is rescored too, after which the row is exact by
// construction; such rows are counted (sae_screen_fallback_rows_total) and C
// adapts to keep them rare.
//
// So the selected latents and their values are exactly those of the top-k
// over ExactPreactivation of every latent (ties: lower index first); the
// dense fp32 step (sgemm) selects the same latents up to ties within fp32
// rounding, and its values differ from these by rounding only.
//
// CPU, float32 only. oneDNN is used only here (linked into sae_sae alone).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/base/status.h"

namespace sae {

struct SaeParams;

// Whether this process can run the int8-screened encoder; the reason when
// not (no VNNI: oneDNN's int8 products could saturate or be rescaled, and
// the certification needs exact integer dot products).
absl::Status Int8ScreenAvailable();

// The exact pre-activation b + Σ_i x_i w_i in float32, in one fixed order
// (the certified values are these, bit for bit). Not inlined: every caller
// runs the same instructions.
float ExactPreactivation(const float* x, const float* w, float b, int64_t d);

struct ScreenStats {
  int64_t rows = 0;            // rows screened in the last call
  int64_t fallback_rows = 0;   // of those, not certified (recomputed exactly)
  int64_t candidates = 0;      // C used in the last call
  double mean_candidates = 0;  // mean |S| per row actually rescored (with the extensions)
};

// State across steps: the adaptive C, oneDNN primitives and buffers. One per
// trainer; not thread-safe.
class Int8Screen {
 public:
  // candidates: the starting C, in blocks of 16 latents (0: automatic, 8k).
  // adaptive: after every call set C to what would have certified 97 % of
  // its rows (each row's least certifying C is known from its block maxima
  // and τ), so about 3 % of rows are recomputed.
  static absl::StatusOr<std::unique_ptr<Int8Screen>> Create(int64_t candidates = 0, bool adaptive = true);
  ~Int8Screen();

  // Top-k of every row of xc (B×d float32, contiguous: x − b_dec) against
  // params' encoder: idx (B×k) and val (B×k), each row in descending order
  // (ties: lower index first). Appends its phases to `phases`
  // (screen_quantize, screen_gemm, screen_select, screen_rescore).
  absl::Status TopK(const SaeParams& params, const at::Tensor& xc, int64_t k, int64_t* idx, float* val,
                    std::vector<std::pair<const char*, double>>* phases);

  const ScreenStats& last() const { return last_; }
  int64_t total_fallback_rows() const { return total_fallback_; }
  int64_t candidates() const { return c_; }
  // Tests: pin C (no adaptation) and the row block size.
  void set_candidates(int64_t c, bool adaptive) {
    c_ = c;
    adaptive_ = adaptive;
  }
  void set_block_rows(int64_t r) { block_rows_ = r; }
  // Tests: quantise the encoder in oneDNN's plain layout and let oneDNN
  // reorder it (the path CPUs whose kernel wants another layout take).
  void set_force_reorder(bool f) { force_reorder_ = f; }

  struct Impl;

 private:
  Int8Screen();
  std::unique_ptr<Impl> impl_;
  int64_t c_ = 0;
  bool adaptive_ = true;
  int64_t block_rows_ = 0;
  bool force_reorder_ = false;
  ScreenStats last_;
  int64_t total_fallback_ = 0;
};

// The encoder half of the step with the screened top-k (sae_step.cc calls
// it for StepConfig::screen): idx/val (B×k) as Int8Screen::TopK, and for a
// dead-latent remedy the dead latents' pre-activations computed exactly
// with one fp32 GEMM over the dead rows only (B×|D|×d): AuxK's top-k_aux
// among them (aux_idx/aux_val, B×k_aux, when k_aux > 0) and, for Ghost
// Grads, all of them (zD, B×|D|, when not null). Why exact and not
// screened: Ghost Grads needs every dead pre-activation (no top-k to
// certify), and AuxK's k_aux = d/2 is large next to a typical dead set, so
// screening would rescore most of it anyway; the dense dead GEMM costs
// |D|/n of the dense encoder GEMM (docs/performance.md).
absl::Status ScreenedEncode(Int8Screen* screen, const SaeParams& p, const at::Tensor& xc, int64_t k,
                            const std::vector<int64_t>& dead, int64_t k_aux, int64_t* idx, float* val, int64_t* aux_idx,
                            float* aux_val, float* zD, std::vector<std::pair<const char*, double>>* phases);

}  // namespace sae
