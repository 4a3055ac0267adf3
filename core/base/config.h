// The job file (YAML, a contract: fields may be added, not renamed) parsed
// into plain structs. Parsing is strict: unknown keys, wrong types and
// impossible values are InvalidArgument errors naming the file and the field
// ("job.yaml: sae.k: 5000 exceeds sae.latents (4096)"). Value types; no state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/status.h"

namespace sae {

struct KScheduleConfig {
  bool enabled = false;      // false: constant k
  int64_t start = 0;         // k at the beginning; 0 (or absent) = d_in, at least end
  int64_t end = 0;           // the target k (must equal sae.k)
  double fraction = 0.25;    // share of train.tokens over which k anneals, (0, 1]
  std::string shape = "linear";  // linear | cosine | exponential
};

struct DataConfig {
  std::string kind = "synthetic";  // shards | lm | synthetic
  // shards
  std::string path;
  int64_t shuffle_buffer_rows = 65536;  // bounded shuffle window (rows); 1 = no shuffle
  // synthetic: planted sparse dictionary
  int64_t d_in = 64;
  int64_t latents = 256;        // number of true atoms
  int64_t k = 4;                // atoms active per row
  uint64_t seed = 0;
  double noise = 0.01;          // std of the Gaussian noise added per element
  double frequency_decay = 0.0; // atom i is chosen with weight (i+1)^-decay (0 = uniform)
  // lm (reserved for the LM issue; parsed and rejected by the trainer for now)
  std::string model;
  int64_t layer = -1;
  std::string corpus;
  int64_t context = 256;
};

struct SaeConfig {
  int64_t latents = 0;            // set directly or from expansion_factor * d_in
  int64_t expansion_factor = 0;   // 0 = not given
  int64_t k = 32;
  KScheduleConfig k_schedule;
  int64_t dead_window_tokens = 10000000;
  std::string dead_remedy = "none";  // none | ghost_grads | auxk
  double aux_coefficient = 0;        // weight of the AuxK / ghost term; 0 = the remedy's default
  std::string normalize = "none";    // none | layer_norm | unit_mean_norm
  std::string init_b_dec = "mean";   // mean | geometric_median | zero
  // AuxK's dead-latent reconstruction compared after a closed-form scale
  // (fit) or as published (none); docs/algorithms.md.
  std::string auxk_scale = "fit";    // fit | none
  // W_enc scaled at init so the reconstruction at k_start has the input's
  // norm (match_norm), or left as drawn (none); auto: match_norm when a k
  // schedule starts above k, none otherwise.
  std::string init_encoder_scale = "auto";  // auto | match_norm | none
};

struct TrainConfig {
  int64_t tokens = 0;
  int64_t batch_tokens = 4096;
  double lr = 0;                  // 0 = 2e-4 / sqrt(latents / 2^14)
  double warmup_fraction = 0.01;  // share of steps with linear warm-up
  std::string lr_decay = "none";  // none | linear | cosine
  double decay_start_fraction = 0.8;  // decay runs from here to the end
  double grad_clip = 1.0;         // global-norm clip; 0 disables
  uint64_t seed = 0;
  std::string precision = "fp32"; // fp32 | bf16
  // dense: the encoder GEMM in train.precision; int8_screened: an int8 GEMM
  // screens candidates whose fp32 top-k is certified exact (CPU, fp32;
  // docs/algorithms.md "int8 screening").
  std::string encoder = "dense";
  int64_t checkpoint_every_tokens = 5000000;  // 0 = only at the end
  int64_t log_every_steps = 0;  // 0: about 100 records per run (total steps / 100)
  std::string device = "auto";    // auto | cpu | cuda
  int64_t threads = 0;            // 0 = every core
};

struct WorldConfig {
  int64_t workers = 1;
  std::string backend = "auto";   // auto | local | gloo | mpi | nccl
  double timeout_seconds = 300;   // a collective that takes longer fails the job
};

struct JobConfig {
  std::string name;
  DataConfig data;
  SaeConfig sae;
  TrainConfig train;
  WorldConfig world;
  std::string output;
  std::string source_path;  // file it was read from ("" for strings)
};

// Limits a job must stay within (refused at load and submit, naming the
// field): a width beyond any model's (and §9's int8 bound), a dictionary of
// more than 2^28 latents, more threads than any host has, a training state
// (EstimateTrainingBytes, checked where d_in is known) beyond 4 TiB. The
// trainer also refuses a state larger than the machine's memory.
constexpr int64_t kMaxDIn = 131072;
constexpr int64_t kMaxLatents = int64_t{1} << 28;
constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kMaxTrainingGiB = 4096;
constexpr size_t kMaxNameLength = 256;   // name: no control characters
constexpr size_t kMaxPathLength = 4096;  // data.path, data.model, data.corpus, output
// Bytes of float32 training state of an n × d SAE: W_enc and W_dec with
// their gradients and two Adam moments each (8·n·d floats), plus the biases.
inline double EstimateTrainingBytes(int64_t latents, int64_t d_in) {
  return 4.0 * (8.0 * static_cast<double>(latents) * static_cast<double>(d_in) + 4.0 * latents + 4.0 * d_in);
}

// Parses and validates a job file. Errors name `path` and the field.
absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path);
// Same for YAML text; `origin` names the text in error messages.
absl::StatusOr<JobConfig> ParseJobConfig(const std::string& yaml, const std::string& origin);
// The checks of LoadJobConfig on an already built config (e.g. after a
// command-line override). d_in is only known for synthetic data here; the
// trainer checks latents against d_in of shards once it has opened them.
absl::Status ValidateJobConfig(const JobConfig& cfg, const std::string& origin);
// YAML text that ParseJobConfig reads back to an equal config.
std::string JobConfigToYaml(const JobConfig& cfg);

}  // namespace sae
