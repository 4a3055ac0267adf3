// SaeTrainer: owns one TopK SAE, its Adam state, the dead-latent tracker and
// the k and learning-rate schedules, and performs optimizer steps on batches
// of activation rows. Initialises lazily on the first batch (b_dec, input
// scale). Saves and restores its complete state so that a resumed run
// continues bit for bit. Not thread-safe: one owner calls it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "core/base/config.h"
#include "core/base/job_options.h"
#include "core/base/status.h"
#include "core/comm/communicator.h"
#include "core/sae/dead_tracker.h"
#include "core/sae/k_schedule.h"
#include "core/sae/sae_step.h"
#include "core/sae/step_metrics.h"

namespace sae {

struct TrainerOptions {
  int64_t d_in = 0;
  int64_t latents = 0;
  int64_t k = 32;
  KSchedule schedule = KSchedule::Constant(32);
  Remedy remedy = Remedy::kNone;
  double aux_coefficient = 0;  // 0 = the remedy's default
  bool auxk_fit = true;        // StepConfig::auxk_fit (sae.auxk_scale: fit)
  int64_t dead_window_tokens = 10000000;
  Normalize normalize = Normalize::kNone;
  InitBDec init_b_dec = InitBDec::kMean;
  // Encoder scale at initialisation: kNone (kaiming-uniform rows as drawn),
  // kMatchNorm (on the first batch, W_enc is scaled so that the
  // reconstruction at k_start has the input's norm) or kAuto (match_norm
  // when the schedule starts above k without multi_topk, none otherwise).
  InitEncoderScale init_encoder_scale = InitEncoderScale::kAuto;
  // A latent counts as fired for the dead-latent tracker only when it is
  // among a row's top `k` (the schedule's target) with a > 0, also while the
  // schedule's k is larger (ALGORITHMS.md §4). false: among the current k.
  bool fire_at_target_k = true;
  // When the schedule lowers k between two steps, scale the encoder (W_enc
  // and b_enc) so that the reconstruction at the new k has the norm it had at
  // the old one (measured on the batch just trained on): the SAE's scale
  // carries across the schedule instead of collapsing as fewer latents add up
  // (docs/dead-latents.md). No effect at constant k, nor with multi_topk
  // (the target-k reconstruction it trains does not depend on k).
  bool carry_scale = true;
  // Multi-TopK while the schedule's k is above the target (StepConfig::
  // target_k): the loss is fvu at the target k (the first k of each row's
  // top-k) + current_k_weight · fvu at the schedule's k, so the high-k phase
  // trains the reconstruction the SAE ends with (docs/algorithms.md). false:
  // fvu at the schedule's k alone (sae.k_schedule.loss: current_k). No
  // effect at constant k.
  bool multi_topk = true;
  double current_k_weight = 0.125;
  bool current_k_fit = true;  // StepConfig::current_k_fit
  double lr = 0;              // 0 = 2e-4 / sqrt(latents / 2^14)
  double warmup_fraction = 0.01;
  LrDecay lr_decay = LrDecay::kNone;
  double decay_start_fraction = 0.8;
  double grad_clip = 1.0;
  uint64_t seed = 0;
  bool bf16 = false;
  // train.encoder: int8_screened (core/sae/int8_screen.h): the top-k through
  // a certified int8 screen; CPU step only (refused otherwise by name). The
  // selection and values are the exact ones of the dense encoder (fp32, or
  // with bf16 the bf16-rounded one), so training follows the dense run to
  // float rounding.
  bool int8_screened = false;
  // Where parameters and the step live: kCpu (hand-written kernels) or
  // kCuda (the ATen step, sae_step_aten.cc); TrainerOptionsFromJob resolves
  // kAuto. aten_kernels forces the ATen step on CPU too (tests; it must
  // agree with the CPU kernels).
  Device device = Device::kCpu;
  bool aten_kernels = false;
  // float32 on CPU: the encoder GEMM through at::addmm (OpenBLAS) in row
  // blocks instead of oneDNN (StepConfig::aten_gemm; benchmarks and tests).
  bool blas_encoder_gemm = false;
  // float32 on CPU: false keeps oneDNN's GEMM and a separate top-k even
  // where the fused small-d encoder would run (StepConfig::small_encoder).
  bool small_encoder = true;
  // Tests only: parameters and the step in float64 (rows arrive as float32
  // and are widened after normalisation), so that two step implementations
  // can be compared where float32 rounding cannot flip a top-k selection.
  // Not with bf16, cuda or a communicator.
  bool float64 = false;
  int64_t total_tokens = 0;
  int64_t batch_tokens = 4096;  // global: all ranks together
  // Data parallelism (ALGORITHMS.md §6): every rank holds a replica and steps
  // on its share of each global batch. Null = this process alone.
  Communicator* comm = nullptr;
  absl::Duration comm_timeout = absl::Seconds(300);
  int64_t allreduce_bucket_elems = int64_t{1} << 23;  // 32 MiB of float32
};

// Builds trainer options from a validated job (d_in from the data source).
absl::StatusOr<TrainerOptions> TrainerOptionsFromJob(const JobConfig& job, int64_t d_in);

class SaeTrainer {
 public:
  static absl::StatusOr<std::unique_ptr<SaeTrainer>> Create(const TrainerOptions& opts);

  // One optimizer step on rows × d_in floats (row-major). Rejects NaN/Inf.
  // With a communicator, `rows` is this rank's share and every rank must
  // call Step with the same number of rows.
  absl::StatusOr<StepMetrics> Step(const float* x, int64_t rows);

  // Checks that every rank holds the same parameters and dead-latent
  // counters (a digest all-gathered); Internal error naming the ranks if not.
  absl::Status CheckReplicasAgree();

  const TrainerOptions& options() const { return opts_; }
  int64_t step() const { return step_; }
  int64_t tokens_seen() const { return tokens_; }
  int64_t CurrentK() const { return opts_.schedule.KAt(tokens_); }
  double LearningRateAt(int64_t step) const;
  double base_lr() const { return lr_; }
  bool initialized() const { return initialized_; }
  const SaeParams& params() const { return params_; }
  const DeadTracker& dead() const { return dead_; }
  double input_scale() const { return input_scale_; }
  // The factor match_norm applied to W_enc at initialisation (1 otherwise).
  double encoder_scale() const { return encoder_scale_; }

  // Applies the configured input normalisation to rows (in place) — what the
  // SAE sees. Call after initialisation.
  void NormalizeRows(float* x, int64_t rows) const;

  // Complete resumable state in one safetensors file (atomic). `extra` is
  // stored in the metadata and returned by LoadState (e.g. data position).
  absl::Status SaveState(const std::string& path, const std::map<std::string, std::string>& extra) const;
  absl::StatusOr<std::map<std::string, std::string>> LoadState(const std::string& path);

  // The final SAE: DIR/sae.safetensors + DIR/cfg.json (ALGORITHMS.md §8).
  // `provenance` is merged into cfg.json (a JSON object's text, may be "").
  absl::Status ExportSae(const std::string& dir, const std::string& provenance_json) const;

 private:
  static absl::StatusOr<std::unique_ptr<SaeTrainer>> CreateChecked(const TrainerOptions& opts);
  explicit SaeTrainer(const TrainerOptions& opts);
  absl::Status Initialize(const at::Tensor& x);
  // init_encoder_scale: match_norm, on the first (normalised) batch.
  absl::Status MatchEncoderScale(const at::Tensor& xn);
  // carry_scale: after a step at k_from whose successor runs at k_to < k_from.
  absl::Status CarryScale(const at::Tensor& x, int64_t k_from, int64_t k_to);
  int world() const { return opts_.comm ? opts_.comm->world_size() : 1; }
  // Sum over ranks, in place (no-op alone); adds to allreduce_seconds_.
  absl::Status SumAcrossRanks(float* data, size_t n, const char* what);
  // The same for a tensor on any device (staged through host memory when
  // the backend cannot read device memory).
  absl::Status SumTensorAcrossRanks(at::Tensor& t, const char* what);
  at::Device device_ = at::kCPU;
  double allreduce_seconds_ = 0;
  int64_t allreduce_bytes_ = 0;

  TrainerOptions opts_;
  double lr_ = 0;
  int64_t total_steps_ = 1;
  bool initialized_ = false;
  double input_scale_ = 1.0;  // unit_mean_norm constant
  double encoder_scale_ = 1.0;
  SaeParams params_;
  SaeGrads grads_;
  StepWorkspace workspace_;
  AdamState adam_;
  at::Tensor w_enc_lowp_;
  at::Tensor input_buf_;                // Step's copy of the batch
  std::shared_ptr<Int8Screen> screen_;  // int8_screened only
  DeadTracker dead_;
  int64_t step_ = 0;
  int64_t tokens_ = 0;
};

// Loads an exported SAE (sae.safetensors + cfg.json) for inference.
struct LoadedSae {
  SaeParams params;
  int64_t k = 0;
  Normalize normalize = Normalize::kNone;
  double input_scale = 1.0;
  std::string cfg_json;
};
absl::StatusOr<LoadedSae> LoadSae(const std::string& dir);

}  // namespace sae
