// The job file (YAML, a contract: fields may be added, not renamed) parsed
// into plain structs. Parsing is strict: unknown keys, wrong types and
// impossible values are InvalidArgument errors naming the file and the field
// ("job.yaml: sae.k: 5000 exceeds sae.latents (4096)"). Value types; no state.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/base/job_options.h"
#include "core/base/status.h"

namespace sae {

// How a struct member appears in the job file. Each config struct lists every
// member once, in file order, in its static Fields(self, visitor): the reader,
// the writer, the field listing (ListJobFields) and the tests walk that list,
// so a new field is one member plus one Fields line (plus its validation in
// ValidateJobConfig). See docs/formats.md "Adding a job field".
enum class FieldUse {
  kKey,        // a key: read and written
  kReadOnly,   // a key that is read but not written: another key determines it
               // (sae.latents when sae.expansion_factor is given)
  kNotHere,    // a key of another variant (data.path when data.kind is synthetic):
               // refused as an unknown key, not written
  kPresence,   // not a key: true when the enclosing section is in the file
  kNotInFile,  // not a key: set by the program (source_path)
};

struct KScheduleConfig {
  bool enabled = false;            // false: constant k
  int64_t start = 0;               // k at the beginning; 0 (or absent) = d_in, at least end
  int64_t end = 0;                 // the target k (must equal sae.k)
  double fraction = 0.25;          // share of train.tokens over which k anneals, (0, 1]
  KShape shape = KShape::kLinear;  // linear | cosine | exponential
  // The loss while k is above its end: multi_topk (fvu at the end k, from
  // the first `end` of each row's top-k, + current_k_weight x the fitted fvu
  // at the schedule's k; docs/algorithms.md) or current_k (fvu at the
  // schedule's k alone, the study's kScheduler as published).
  KScheduleLoss loss = KScheduleLoss::kMultiTopK;  // multi_topk | current_k
  double current_k_weight = 0.125;

  template <class S, class V>
  static void Fields(S& s, V&& v) {
    v("enabled", s.enabled, FieldUse::kPresence);
    v("start", s.start);
    v("end", s.end);
    v("fraction", s.fraction);
    v("shape", s.shape);
    v("loss", s.loss);
    v("current_k_weight", s.current_k_weight);
  }
};

struct DataConfig {
  DataKind kind = DataKind::kSynthetic;  // shards | lm | synthetic
  // shards
  std::string path;
  int64_t shuffle_buffer_rows = 65536;  // bounded shuffle window (rows); 1 = no shuffle
  // synthetic: planted sparse dictionary
  int64_t d_in = 64;
  int64_t latents = 256;         // number of true atoms
  int64_t k = 4;                 // atoms active per row
  uint64_t seed = 0;             // synthetic; lm with corpus: generate
  double noise = 0.01;           // std of the Gaussian noise added per element
  double frequency_decay = 0.0;  // atom i is chosen with weight (i+1)^-decay (0 = uniform)
  // lm: activations computed on the fly
  std::string model;
  int64_t layer = -1;
  std::string corpus;
  int64_t context = 256;

  template <class S, class V>
  static void Fields(S& d, V&& v) {
    // `kind` comes first: the reader has read it when the later lines ask.
    auto only = [&d](std::initializer_list<DataKind> kinds) {
      for (DataKind k : kinds)
        if (d.kind == k) return FieldUse::kKey;
      return FieldUse::kNotHere;
    };
    v("kind", d.kind);
    v("path", d.path, only({DataKind::kShards}));
    v("shuffle_buffer_rows", d.shuffle_buffer_rows, only({DataKind::kShards}));
    v("d_in", d.d_in, only({DataKind::kSynthetic}));
    v("latents", d.latents, only({DataKind::kSynthetic}));
    v("k", d.k, only({DataKind::kSynthetic}));
    v("seed", d.seed, only({DataKind::kSynthetic, DataKind::kLm}));
    v("noise", d.noise, only({DataKind::kSynthetic}));
    v("frequency_decay", d.frequency_decay, only({DataKind::kSynthetic}));
    v("model", d.model, only({DataKind::kLm}));
    v("layer", d.layer, only({DataKind::kLm}));
    v("corpus", d.corpus, only({DataKind::kLm}));
    v("context", d.context, only({DataKind::kLm}));
  }
};

struct SaeConfig {
  int64_t latents = 0;           // set directly or from expansion_factor * d_in
  int64_t expansion_factor = 0;  // 0 = not given
  int64_t k = 32;
  KScheduleConfig k_schedule;
  int64_t dead_window_tokens = 10000000;
  // none | ghost_grads | auxk. AuxK by default: the remedy that, alone or with
  // any k schedule, left fewer dead latents than none in every cell of the
  // study (docs/dead-latents.md), at the lowest cost.
  Remedy dead_remedy = Remedy::kAuxK;
  double aux_coefficient = 0;              // weight of the AuxK / ghost term; 0 = the remedy's default
  Normalize normalize = Normalize::kNone;  // none | layer_norm | unit_mean_norm
  InitBDec init_b_dec = InitBDec::kMean;   // mean | geometric_median | zero
  // AuxK's dead-latent reconstruction compared after a closed-form scale
  // (fit) or as published (none); docs/algorithms.md.
  AuxKScale auxk_scale = AuxKScale::kFit;  // fit | none
  // W_enc scaled at init so the reconstruction at k_start has the input's
  // norm (match_norm), or left as drawn (none); auto: match_norm when a k
  // schedule starts above k, none otherwise.
  InitEncoderScale init_encoder_scale = InitEncoderScale::kAuto;  // auto | match_norm | none

  template <class S, class V>
  static void Fields(S& s, V&& v) {
    // One of latents and expansion_factor is written: expansion_factor when
    // given (latents is then derived from it with the data's width).
    v("latents", s.latents, s.expansion_factor > 0 ? FieldUse::kReadOnly : FieldUse::kKey);
    v("expansion_factor", s.expansion_factor, s.expansion_factor > 0 ? FieldUse::kKey : FieldUse::kReadOnly);
    v("k", s.k);
    v("k_schedule", s.k_schedule);
    v("dead_window_tokens", s.dead_window_tokens);
    v("dead_remedy", s.dead_remedy);
    v("aux_coefficient", s.aux_coefficient);
    v("normalize", s.normalize);
    v("init_b_dec", s.init_b_dec);
    v("auxk_scale", s.auxk_scale);
    v("init_encoder_scale", s.init_encoder_scale);
  }
};

struct TrainConfig {
  int64_t tokens = 0;  // required
  int64_t batch_tokens = 4096;
  double lr = 0;                      // 0 = 2e-4 / sqrt(latents / 2^14)
  double warmup_fraction = 0.01;      // share of steps with linear warm-up
  LrDecay lr_decay = LrDecay::kNone;  // none | linear | cosine
  double decay_start_fraction = 0.8;  // decay runs from here to the end
  double grad_clip = 1.0;             // global-norm clip; 0 disables
  uint64_t seed = 0;
  Precision precision = Precision::kFp32;     // fp32 | bf16
  Encoder encoder = Encoder::kDense;          // dense | int8_screened (docs/algorithms.md)
  int64_t checkpoint_every_tokens = 5000000;  // 0 = only at the end
  int64_t log_every_steps = 0;                // 0: about 100 records per run (total steps / 100)
  Device device = Device::kAuto;              // auto | cpu | cuda
  int64_t threads = 0;                        // 0 = every core

  template <class S, class V>
  static void Fields(S& t, V&& v) {
    v("tokens", t.tokens);
    v("batch_tokens", t.batch_tokens);
    v("lr", t.lr);
    v("warmup_fraction", t.warmup_fraction);
    v("lr_decay", t.lr_decay);
    v("decay_start_fraction", t.decay_start_fraction);
    v("grad_clip", t.grad_clip);
    v("seed", t.seed);
    v("precision", t.precision);
    v("encoder", t.encoder);
    v("checkpoint_every_tokens", t.checkpoint_every_tokens);
    v("log_every_steps", t.log_every_steps);
    v("device", t.device);
    v("threads", t.threads);
  }
};

struct WorldConfig {
  int64_t workers = 1;
  Backend backend = Backend::kAuto;  // auto | local | gloo | mpi | nccl
  double timeout_seconds = 300;      // a collective that takes longer fails the job

  template <class S, class V>
  static void Fields(S& w, V&& v) {
    v("workers", w.workers);
    v("backend", w.backend);
    v("timeout_seconds", w.timeout_seconds);
  }
};

struct JobConfig {
  std::string name;
  DataConfig data;
  SaeConfig sae;
  TrainConfig train;
  WorldConfig world;
  std::string output;
  std::string source_path;  // file it was read from ("" for strings)

  template <class S, class V>
  static void Fields(S& c, V&& v) {
    v("name", c.name);
    v("data", c.data);
    v("sae", c.sae);
    v("train", c.train);
    v("world", c.world);
    v("output", c.output);
    v("source_path", c.source_path, FieldUse::kNotInFile);
  }
};

// True for the config structs above (they have Fields).
template <class T, class = void>
struct IsConfigSection : std::false_type {};
template <class T>
struct IsConfigSection<T, std::void_t<decltype(T::Fields(std::declval<T&>(), 0))>> : std::true_type {};

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
// The canonical YAML of a config: every key of its FieldUse::kKey fields in
// Fields order. ParseJobConfig reads it back to an equal config (equal
// ListJobFields), and writing that again gives the same text. This is what
// the service carries (sae.v1.JobSpec.yaml) and what a run writes as
// OUTPUT/job.yaml.
std::string JobConfigToYaml(const JobConfig& cfg);

// Every member of the config structs, sections flattened: dotted name
// ("sae.k_schedule.shape"), the value as text (numbers exactly, enums by
// name) and its use. For comparisons that name the field that differs.
struct JobField {
  std::string name;
  std::string value;
  FieldUse use;
};
std::vector<JobField> ListJobFields(const JobConfig& cfg);

// The one check of the rules between the SAE's shape and the data's width:
// latents in (0, kMaxLatents], k in [1, latents], k_schedule_start (0 = no
// schedule) at most latents, and the training state within kMaxTrainingGiB.
// ValidateJobConfig applies it where d_in is known from the file, the
// trainer once it opened the data. Errors name the field, not the file.
absl::Status CheckSaeShape(int64_t d_in, int64_t latents, int64_t k, int64_t k_schedule_start);

}  // namespace sae
