#include "core/base/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "core/base/file_util.h"
#include "tests/testing/scratch_dir.h"

namespace sae {
namespace {

// The job file of docs/ARCHITECTURE.md, verbatim.
constexpr char kArchitectureExample[] = R"(name: demo
data:
  kind: shards            # shards | lm | synthetic
  path: runs/acts         # shards: a directory with manifest.json
  # lm: model: DIR, layer: 3, corpus: FILE|generate, context: 256
  # synthetic: d_in, latents, k, seed (planted sparse dictionary)
sae:
  latents: 4096           # or expansion_factor: 32
  k: 32
  k_schedule: {start: 512, end: 32, fraction: 0.25, shape: linear}  # optional
  dead_window_tokens: 10000000
  dead_remedy: ghost_grads  # none | ghost_grads | auxk
  normalize: none           # none | layer_norm | unit_mean_norm
train:
  tokens: 50000000
  batch_tokens: 4096
  lr: 0                     # 0 = 2e-4/sqrt(latents/2^14)
  seed: 0
  precision: fp32           # fp32 | bf16
  checkpoint_every_tokens: 5000000
world: {workers: 2, backend: auto}   # auto | local | gloo | mpi | nccl
output: runs/demo
)";

// A small valid job the error cases mutate.
constexpr char kBase[] = R"(name: t
data:
  kind: shards
  path: acts
sae:
  latents: 4096
  k: 32
train:
  tokens: 1000000
  batch_tokens: 4096
world:
  workers: 2
output: out
)";

constexpr char kSynthetic[] = R"(name: s
data:
  kind: synthetic
  d_in: 32
  latents: 128
  k: 4
sae:
  latents: 256
  k: 8
train:
  tokens: 100000
output: out
)";

constexpr char kOrigin[] = "bad-job.yaml";

// `text` with the first `from` replaced by `to`; fails the test if `from` is
// absent, so a mutation cannot silently do nothing.
std::string Replace(std::string text, const std::string& from, const std::string& to) {
  size_t pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << "'" << from << "' not in\n" << text;
  if (pos != std::string::npos) text.replace(pos, from.size(), to);
  return text;
}

// Field by field, every member (the list is generated from the structs'
// Fields, so a new field is compared without an edit here).
void ExpectConfigsEqual(const JobConfig& a, const JobConfig& b) {
  const std::vector<JobField> fa = ListJobFields(a), fb = ListJobFields(b);
  ASSERT_EQ(fa.size(), fb.size());
  for (size_t i = 0; i < fa.size(); ++i) {
    EXPECT_EQ(fa[i].name, fb[i].name);
    EXPECT_EQ(fa[i].value, fb[i].value) << fa[i].name;
  }
}

class TempDir : public testing::ScratchDir {
 public:
  TempDir() : testing::ScratchDir("sae_config_test") {}
};

TEST(ConfigTest, ArchitectureExampleParses) {
  TempDir dir;
  std::string path = dir.Write("demo.yaml", kArchitectureExample);
  absl::StatusOr<JobConfig> cfg = LoadJobConfig(path);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->name, "demo");
  EXPECT_EQ(cfg->source_path, path);
  EXPECT_EQ(cfg->data.kind, DataKind::kShards);
  EXPECT_EQ(cfg->data.path, "runs/acts");
  EXPECT_EQ(cfg->data.shuffle_buffer_rows, 65536);
  EXPECT_EQ(cfg->sae.latents, 4096);
  EXPECT_EQ(cfg->sae.expansion_factor, 0);
  EXPECT_EQ(cfg->sae.k, 32);
  EXPECT_TRUE(cfg->sae.k_schedule.enabled);
  EXPECT_EQ(cfg->sae.k_schedule.start, 512);
  EXPECT_EQ(cfg->sae.k_schedule.end, 32);
  EXPECT_DOUBLE_EQ(cfg->sae.k_schedule.fraction, 0.25);
  EXPECT_EQ(cfg->sae.k_schedule.shape, KShape::kLinear);
  EXPECT_EQ(cfg->sae.dead_window_tokens, 10000000);
  EXPECT_EQ(cfg->sae.dead_remedy, Remedy::kGhostGrads);
  EXPECT_EQ(cfg->sae.normalize, Normalize::kNone);
  EXPECT_EQ(cfg->sae.init_b_dec, InitBDec::kMean);
  EXPECT_EQ(cfg->sae.aux_coefficient, SaeConfig().aux_coefficient);
  EXPECT_EQ(cfg->train.tokens, 50000000);
  EXPECT_EQ(cfg->train.batch_tokens, 4096);
  EXPECT_EQ(cfg->train.lr, 0.0);
  EXPECT_EQ(cfg->train.seed, 0u);
  EXPECT_EQ(cfg->train.precision, Precision::kFp32);
  EXPECT_EQ(cfg->train.checkpoint_every_tokens, 5000000);
  EXPECT_EQ(cfg->train.lr_decay, LrDecay::kNone);
  EXPECT_EQ(cfg->train.device, Device::kAuto);
  EXPECT_EQ(cfg->world.workers, 2);
  EXPECT_EQ(cfg->world.backend, Backend::kAuto);
  EXPECT_EQ(cfg->output, "runs/demo");
}

TEST(ConfigTest, SyntheticDataAndAllFields) {
  const std::string yaml = R"(name: full
data: {kind: synthetic, d_in: 48, latents: 300, k: 5, seed: 7, noise: 0.05,
       frequency_decay: 1.1}
sae:
  expansion_factor: 8
  k: 16
  k_schedule: {start: 128, fraction: 0.5, shape: exponential}
  dead_window_tokens: 1M
  dead_remedy: auxk
  aux_coefficient: 0.125
  normalize: unit_mean_norm
  init_b_dec: geometric_median
train:
  tokens: 2M
  batch_tokens: 1024
  lr: 3e-4
  warmup_fraction: 0.05
  lr_decay: cosine
  decay_start_fraction: 0.6
  grad_clip: 0
  seed: 18446744073709551615
  precision: bf16
  checkpoint_every_tokens: 0
  log_every_steps: 5
  device: cpu
  threads: 3
world: {workers: 4, backend: gloo}
output: runs/full
)";
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, "full.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->source_path, "");
  EXPECT_EQ(cfg->data.kind, DataKind::kSynthetic);
  EXPECT_EQ(cfg->data.d_in, 48);
  EXPECT_EQ(cfg->data.latents, 300);
  EXPECT_EQ(cfg->data.k, 5);
  EXPECT_EQ(cfg->data.seed, 7u);
  EXPECT_DOUBLE_EQ(cfg->data.noise, 0.05);
  EXPECT_DOUBLE_EQ(cfg->data.frequency_decay, 1.1);
  EXPECT_EQ(cfg->sae.expansion_factor, 8);
  EXPECT_EQ(cfg->sae.latents, 8 * 48);  // resolved from d_in
  EXPECT_EQ(cfg->sae.k, 16);
  EXPECT_TRUE(cfg->sae.k_schedule.enabled);
  EXPECT_EQ(cfg->sae.k_schedule.start, 128);
  EXPECT_EQ(cfg->sae.k_schedule.end, 16);  // defaults to sae.k
  EXPECT_DOUBLE_EQ(cfg->sae.k_schedule.fraction, 0.5);
  EXPECT_EQ(cfg->sae.k_schedule.shape, KShape::kExponential);
  EXPECT_EQ(cfg->sae.dead_window_tokens, 1000000);
  EXPECT_EQ(cfg->sae.dead_remedy, Remedy::kAuxK);
  EXPECT_DOUBLE_EQ(cfg->sae.aux_coefficient, 0.125);
  EXPECT_EQ(cfg->sae.normalize, Normalize::kUnitMeanNorm);
  EXPECT_EQ(cfg->sae.init_b_dec, InitBDec::kGeometricMedian);
  EXPECT_EQ(cfg->train.tokens, 2000000);
  EXPECT_EQ(cfg->train.batch_tokens, 1024);
  EXPECT_DOUBLE_EQ(cfg->train.lr, 3e-4);
  EXPECT_DOUBLE_EQ(cfg->train.warmup_fraction, 0.05);
  EXPECT_EQ(cfg->train.lr_decay, LrDecay::kCosine);
  EXPECT_DOUBLE_EQ(cfg->train.decay_start_fraction, 0.6);
  EXPECT_EQ(cfg->train.grad_clip, 0.0);
  EXPECT_EQ(cfg->train.seed, UINT64_MAX);
  EXPECT_EQ(cfg->train.precision, Precision::kBf16);
  EXPECT_EQ(cfg->train.checkpoint_every_tokens, 0);
  EXPECT_EQ(cfg->train.log_every_steps, 5);
  EXPECT_EQ(cfg->train.device, Device::kCpu);
  EXPECT_EQ(cfg->train.threads, 3);
  EXPECT_EQ(cfg->world.workers, 4);
  EXPECT_EQ(cfg->world.backend, Backend::kGloo);
}

TEST(ConfigTest, DefaultsWhenOmitted) {
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(kSynthetic, "s.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const JobConfig defaults;
  EXPECT_FALSE(cfg->sae.k_schedule.enabled);
  EXPECT_EQ(cfg->sae.dead_window_tokens, defaults.sae.dead_window_tokens);
  EXPECT_EQ(cfg->sae.dead_remedy, Remedy::kAuxK);
  EXPECT_EQ(cfg->train.batch_tokens, 4096);
  EXPECT_DOUBLE_EQ(cfg->train.warmup_fraction, 0.01);
  EXPECT_DOUBLE_EQ(cfg->train.grad_clip, 1.0);
  EXPECT_EQ(cfg->train.log_every_steps, 0);  // 0: about 100 records per run
  EXPECT_EQ(cfg->world.workers, 1);
  EXPECT_EQ(cfg->world.backend, Backend::kAuto);
  EXPECT_EQ(cfg->data.seed, 0u);
  EXPECT_DOUBLE_EQ(cfg->data.noise, 0.01);
  EXPECT_EQ(cfg->sae.auxk_scale, AuxKScale::kFit);
  EXPECT_EQ(cfg->sae.init_encoder_scale, InitEncoderScale::kAuto);
}

// A schedule without start begins at the input dimension (resolved when the
// data's d_in is known); the new sae fields are choices.
TEST(ConfigTest, KScheduleStartDefaultsToTheInputDimension) {
  const std::string base = "data: {kind: synthetic, d_in: 48}\nsae:\n  latents: 1024\n  k: 8\n";
  auto cfg = ParseJobConfig(base + "  k_schedule: {fraction: 0.5}\ntrain: {tokens: 1000}\noutput: o\n", "s.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->sae.k_schedule.enabled);
  EXPECT_EQ(cfg->sae.k_schedule.start, 0);
  auto back = ParseJobConfig(JobConfigToYaml(*cfg), "round trip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->sae.k_schedule.start, 0);
  // The schedule's loss: Multi-TopK with weight 1/8 unless given; round trip.
  EXPECT_EQ(cfg->sae.k_schedule.loss, KScheduleLoss::kMultiTopK);
  EXPECT_DOUBLE_EQ(cfg->sae.k_schedule.current_k_weight, 0.125);
  auto cur = ParseJobConfig(
      base + "  k_schedule: {start: 64, loss: current_k, current_k_weight: 0.5}\ntrain: {tokens: 1000}\noutput: o\n",
      "c.yaml");
  ASSERT_TRUE(cur.ok()) << cur.status();
  auto cur_back = ParseJobConfig(JobConfigToYaml(*cur), "round trip");
  ASSERT_TRUE(cur_back.ok()) << cur_back.status();
  EXPECT_EQ(cur_back->sae.k_schedule.loss, KScheduleLoss::kCurrentK);
  EXPECT_DOUBLE_EQ(cur_back->sae.k_schedule.current_k_weight, 0.5);
  for (const char* bad_ks : {"{loss: dense}", "{current_k_weight: -1}"}) {
    auto err = ParseJobConfig(base + "  k_schedule: " + bad_ks + "\ntrain: {tokens: 1000}\noutput: o\n", "b.yaml");
    ASSERT_FALSE(err.ok()) << bad_ks;
    EXPECT_NE(err.status().message().find("sae.k_schedule."), std::string::npos) << err.status();
  }
  for (const char* bad : {"  auxk_scale: half\n", "  init_encoder_scale: big\n"}) {
    auto err = ParseJobConfig(base + bad + "train: {tokens: 1000}\noutput: o\n", "s.yaml");
    ASSERT_FALSE(err.ok()) << bad;
    EXPECT_NE(err.status().message().find(std::string(bad).substr(2, 10)), std::string::npos) << err.status();
  }
}

TEST(ConfigTest, ExpansionFactorForShardsIsResolvedLater) {
  std::string yaml = Replace(kBase, "  latents: 4096\n", "  expansion_factor: 16\n");
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, "ef.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->sae.expansion_factor, 16);
  EXPECT_EQ(cfg->sae.latents, 0);
}

TEST(ConfigTest, LmDataParses) {
  std::string yaml = Replace(kBase, "  kind: shards\n  path: acts\n",
                             "  kind: lm\n  model: models/tiny\n  layer: 3\n  corpus: generate\n"
                             "  context: 128\n");
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, "lm.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->data.kind, DataKind::kLm);
  EXPECT_EQ(cfg->data.model, "models/tiny");
  EXPECT_EQ(cfg->data.layer, 3);
  EXPECT_EQ(cfg->data.corpus, "generate");
  EXPECT_EQ(cfg->data.context, 128);
}

TEST(ConfigTest, NameDefaultsToFileStem) {
  TempDir dir;
  std::string path = dir.Write("my-run.yaml", Replace(kBase, "name: t\n", ""));
  absl::StatusOr<JobConfig> cfg = LoadJobConfig(path);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->name, "my-run");

  path = dir.Write("other.yaml", Replace(kBase, "name: t\n", "name: \"\"\n"));
  cfg = LoadJobConfig(path);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->name, "other");
}

TEST(ConfigTest, MissingFileIsNotFound) {
  TempDir dir;
  std::string path = dir.path() + "/no-such-job.yaml";
  absl::StatusOr<JobConfig> cfg = LoadJobConfig(path);
  ASSERT_FALSE(cfg.ok());
  EXPECT_TRUE(absl::IsNotFound(cfg.status())) << cfg.status();
  EXPECT_NE(cfg.status().message().find(path), absl::string_view::npos) << cfg.status();
}

TEST(ConfigTest, LoadErrorsNameTheFile) {
  TempDir dir;
  std::string path = dir.Write("broken.yaml", Replace(kBase, "  k: 32", "  k: 5000"));
  absl::StatusOr<JobConfig> cfg = LoadJobConfig(path);
  ASSERT_FALSE(cfg.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
  EXPECT_EQ(cfg.status().message(), path + ": sae.k: 5000 exceeds sae.latents (4096)");
}

// Human-friendly integers.
struct IntCase {
  std::string text;
  int64_t value;
};
void PrintTo(const IntCase& c, std::ostream* os) { *os << c.text; }

class HumanIntTest : public ::testing::TestWithParam<IntCase> {};

TEST_P(HumanIntTest, Parses) {
  std::string yaml = Replace(kBase, "  tokens: 1000000", "  tokens: " + GetParam().text);
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, "int.yaml");
  ASSERT_TRUE(cfg.ok()) << GetParam().text << ": " << cfg.status();
  EXPECT_EQ(cfg->train.tokens, GetParam().value) << GetParam().text;
}

INSTANTIATE_TEST_SUITE_P(Suffixes, HumanIntTest,
                         ::testing::Values(IntCase{"50000000", 50000000}, IntCase{"50_000_000", 50000000},
                                           IntCase{"5e7", 50000000}, IntCase{"5E7", 50000000},
                                           IntCase{"5e+7", 50000000}, IntCase{"50M", 50000000},
                                           IntCase{"50m", 50000000}, IntCase{"10k", 10000}, IntCase{"10K", 10000},
                                           IntCase{"1G", 1000000000}, IntCase{"2B", 2000000000},
                                           IntCase{"2b", 2000000000}, IntCase{"1.5M", 1500000}, IntCase{"0.25k", 250},
                                           IntCase{"\"50M\"", 50000000}, IntCase{"'1_000k'", 1000000},
                                           IntCase{"+4096", 4096}, IntCase{"1T", 1000000000000},
                                           IntCase{"9223372036854775807", INT64_MAX}, IntCase{"120e-1", 12}));

class BadIntTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BadIntTest, Rejected) {
  std::string yaml = Replace(kBase, "  tokens: 1000000", "  tokens: " + GetParam());
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, kOrigin);
  ASSERT_FALSE(cfg.ok()) << GetParam();
  EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
  std::string msg(cfg.status().message());
  EXPECT_NE(msg.find(kOrigin), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.tokens"), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(Values, BadIntTest,
                         ::testing::Values("1.5", "5e-1", "abc", "10x", "50MM", "1__000", "_100", "100_", "1e30",
                                           "9223372036854775808", "-5", "0", "1.5.0", "0x10", "true", "''", "12 k", "~",
                                           "[1]", "{a: 1}"));

TEST(ConfigTest, NegativeIntegersWhereAllowed) {
  // data.layer is -1 by default, so negative integers parse; the LM checks
  // reject them only for kind lm.
  std::string yaml = Replace(kBase, "  tokens: 1000000", "  tokens: 1000000\n  threads: -1");
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, kOrigin);
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find("train.threads"), absl::string_view::npos);
  yaml = Replace(kBase, "  tokens: 1000000", "  tokens: 1000000\n  seed: -1");
  cfg = ParseJobConfig(yaml, kOrigin);
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find("train.seed"), absl::string_view::npos);
}

// Every invalid job: InvalidArgument naming the origin and the field.
struct ErrorCase {
  std::string label;
  std::string yaml;
  std::string field;
  std::string detail;  // another substring the message must contain ("" = none)
};
void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.label; }

std::vector<ErrorCase> ErrorCases() {
  const std::string b = kBase;
  const std::string s = kSynthetic;
  return {
      // Unknown keys.
      {"unknown_sae_key", Replace(b, "  k: 32\n", "  k: 32\n  kk: 1\n"), "sae.kk", "unknown key 'sae.kk'"},
      {"unknown_top_key", Replace(b, "output: out", "output: out\noutptu: x"), "outptu", "unknown key"},
      {"unknown_ks_key", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 64, stat: 1}\n"),
       "sae.k_schedule.stat", "unknown key"},
      {"unknown_world_key", Replace(b, "  workers: 2", "  workers: 2\n  nodes: 3"), "world.nodes", "unknown key"},
      {"synthetic_key_for_shards", Replace(b, "  path: acts", "  path: acts\n  d_in: 64"), "data.d_in", "unknown key"},
      {"shards_key_for_synthetic", Replace(s, "  k: 4\n", "  k: 4\n  path: x\n"), "data.path", "unknown key"},
      {"duplicate_key", Replace(b, "  k: 32\n", "  k: 32\n  k: 16\n"), "sae.k", "duplicate"},
      // Wrong types.
      {"map_for_number", Replace(b, "  k: 32", "  k: {a: 1}"), "sae.k", "mapping"},
      {"string_for_number", Replace(b, "  k: 32", "  k: abc"), "sae.k", "abc"},
      {"list_for_number", Replace(b, "  batch_tokens: 4096", "  batch_tokens: [1, 2]"), "train.batch_tokens", "list"},
      {"string_for_double", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  lr: fast"), "train.lr", "fast"},
      {"nan_for_double", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  lr: .nan"), "train.lr", ""},
      {"map_for_string", Replace(b, "output: out", "output: {a: b}"), "output", "mapping"},
      {"list_for_enum", Replace(b, "  k: 32", "  k: 32\n  dead_remedy: [auxk]"), "sae.dead_remedy", "list"},
      {"scalar_for_section", Replace(b, "world:\n  workers: 2", "world: 2"), "world", "mapping"},
      {"list_for_data", Replace(b, "data:\n  kind: shards\n  path: acts", "data: [shards]"), "data", "mapping"},
      // Required fields.
      {"missing_output", Replace(b, "output: out\n", ""), "output", "required"},
      {"empty_output", Replace(b, "output: out", "output: ''"), "output", "required"},
      {"missing_path", Replace(b, "  path: acts\n", ""), "data.path", "required"},
      {"missing_tokens", Replace(b, "  tokens: 1000000\n", ""), "train.tokens", "required"},
      {"missing_train", Replace(b, "train:\n  tokens: 1000000\n  batch_tokens: 4096\n", ""), "train.tokens",
       "required"},
      {"missing_latents", Replace(b, "  latents: 4096\n", ""), "sae.latents", ""},
      {"latents_and_ef", Replace(b, "  latents: 4096\n", "  latents: 4096\n  expansion_factor: 4\n"),
       "expansion_factor", ""},
      {"ef_zero", Replace(b, "  latents: 4096\n", "  expansion_factor: 0\n"), "sae.expansion_factor", ""},
      {"latents_zero", Replace(b, "  latents: 4096", "  latents: 0"), "sae.latents", ""},
      // Enumerations.
      {"bad_kind", Replace(b, "  kind: shards", "  kind: parquet"), "data.kind", "parquet"},
      {"bad_remedy", Replace(b, "  k: 32", "  k: 32\n  dead_remedy: ghosts"), "sae.dead_remedy", "ghost_grads"},
      {"bad_normalize", Replace(b, "  k: 32", "  k: 32\n  normalize: l2"), "sae.normalize", "l2"},
      {"bad_init", Replace(b, "  k: 32", "  k: 32\n  init_b_dec: median"), "sae.init_b_dec", ""},
      {"bad_decay", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  lr_decay: step"), "train.lr_decay", ""},
      {"bad_precision", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  precision: fp16"),
       "train.precision", "fp16"},
      {"bad_device", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  device: tpu"), "train.device", ""},
      {"bad_backend", Replace(b, "  workers: 2", "  workers: 2\n  backend: tcp"), "world.backend", "tcp"},
      // k.
      {"k_zero", Replace(b, "  k: 32", "  k: 0"), "sae.k", "> 0"},
      {"k_negative", Replace(b, "  k: 32", "  k: -3"), "sae.k", "> 0"},
      {"k_exceeds_latents", Replace(b, "  k: 32", "  k: 5000"), "sae.k", "sae.k: 5000 exceeds sae.latents (4096)"},
      {"k_exceeds_ef_latents", Replace(s, "  latents: 256\n  k: 8", "  expansion_factor: 2\n  k: 65"), "sae.k",
       "exceeds sae.latents (64)"},
      // k schedule.
      {"ks_start_below_end", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 16}\n"), "sae.k_schedule.start",
       "sae.k_schedule.start (16) must be >= end (32)"},
      {"ks_start_exceeds_latents", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 5000}\n"),
       "sae.k_schedule.start", "exceeds sae.latents (4096)"},
      {"ks_end_not_k", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 64, end: 16}\n"), "sae.k_schedule.end",
       "must equal sae.k (32)"},
      {"ks_fraction_zero", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 64, fraction: 0}\n"),
       "sae.k_schedule.fraction", "(0, 1]"},
      {"ks_fraction_big", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 64, fraction: 1.5}\n"),
       "sae.k_schedule.fraction", ""},
      {"ks_bad_shape", Replace(b, "  k: 32\n", "  k: 32\n  k_schedule: {start: 64, shape: step}\n"),
       "sae.k_schedule.shape", "step"},
      // Train and world.
      {"tokens_zero", Replace(b, "  tokens: 1000000", "  tokens: 0"), "train.tokens", "train.tokens: must be > 0"},
      {"tokens_negative", Replace(b, "  tokens: 1000000", "  tokens: -10"), "train.tokens", "must be > 0"},
      {"batch_zero", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 0"), "train.batch_tokens", "> 0"},
      {"batch_below_workers", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 1"), "train.batch_tokens",
       "train.batch_tokens (1) must be >= world.workers (2)"},
      {"batch_not_divisible", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4095"), "train.batch_tokens",
       "divisible by world.workers (2)"},
      {"workers_zero", Replace(b, "  workers: 2", "  workers: 0"), "world.workers", ">= 1"},
      {"lr_negative", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  lr: -1e-4"), "train.lr", ">= 0"},
      {"grad_clip_negative", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  grad_clip: -1"),
       "train.grad_clip", ">= 0"},
      {"warmup_big", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  warmup_fraction: 2"),
       "train.warmup_fraction", ""},
      {"checkpoint_negative", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  checkpoint_every_tokens: -1"),
       "train.checkpoint_every_tokens", ">= 0"},
      {"log_every_negative", Replace(b, "  batch_tokens: 4096", "  batch_tokens: 4096\n  log_every_steps: -1"),
       "train.log_every_steps", ""},
      {"dead_window_zero", Replace(b, "  k: 32", "  k: 32\n  dead_window_tokens: 0"), "sae.dead_window_tokens", "> 0"},
      {"aux_negative", Replace(b, "  k: 32", "  k: 32\n  aux_coefficient: -0.5"), "sae.aux_coefficient", ""},
      {"shuffle_zero", Replace(b, "  path: acts", "  path: acts\n  shuffle_buffer_rows: 0"), "data.shuffle_buffer_rows",
       ""},
      // Synthetic data.
      {"syn_d_in_zero", Replace(s, "  d_in: 32", "  d_in: 0"), "data.d_in", "> 0"},
      {"syn_latents_zero", Replace(s, "  latents: 128", "  latents: 0"), "data.latents", "> 0"},
      {"syn_k_zero", Replace(s, "  k: 4", "  k: 0"), "data.k", "> 0"},
      {"syn_k_exceeds", Replace(s, "  k: 4", "  k: 129"), "data.k", "exceeds data.latents (128)"},
      {"syn_noise_negative", Replace(s, "  k: 4", "  k: 4\n  noise: -0.1"), "data.noise", ">= 0"},
      {"syn_seed_negative", Replace(s, "  k: 4", "  k: 4\n  seed: -2"), "data.seed", ""},
      // LM data.
      {"lm_missing_model", Replace(b, "  kind: shards\n  path: acts", "  kind: lm\n  layer: 2\n  corpus: c"),
       "data.model", "required"},
      {"lm_missing_layer", Replace(b, "  kind: shards\n  path: acts", "  kind: lm\n  model: m\n  corpus: c"),
       "data.layer", ""},
  };
}

class ConfigErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrorTest, RejectedWithFileAndField) {
  const ErrorCase& c = GetParam();
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(c.yaml, kOrigin);
  ASSERT_FALSE(cfg.ok()) << c.label << " parsed:\n" << c.yaml;
  EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
  std::string msg(cfg.status().message());
  EXPECT_EQ(msg.rfind(std::string(kOrigin) + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(c.field), std::string::npos) << "field " << c.field << " not in: " << msg;
  if (!c.detail.empty()) {
    EXPECT_NE(msg.find(c.detail), std::string::npos) << "'" << c.detail << "' not in: " << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(All, ConfigErrorTest, ::testing::ValuesIn(ErrorCases()),
                         [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.label; });

TEST(ConfigTest, UnknownKeyListsValidKeys) {
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(Replace(kBase, "  k: 32\n", "  k: 32\n  kk: 1\n"), kOrigin);
  ASSERT_FALSE(cfg.ok());
  std::string msg(cfg.status().message());
  EXPECT_NE(msg.find("dead_remedy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("k_schedule"), std::string::npos) << msg;
}

TEST(ConfigTest, MalformedYamlNamesFileLineAndColumn) {
  // Line 7 opens a flow sequence that never closes.
  std::string yaml = Replace(kBase, "  k: 32", "  k: [32");
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, kOrigin);
  ASSERT_FALSE(cfg.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
  std::string msg(cfg.status().message());
  EXPECT_EQ(msg.rfind(std::string(kOrigin) + ":", 0), 0u) << msg;
  EXPECT_NE(msg.find("YAML"), std::string::npos) << msg;

  // A bad indentation on line 4: "path" is one column too deep.
  yaml = "name: t\ndata:\n  kind: shards\n   path: acts\n";
  cfg = ParseJobConfig(yaml, kOrigin);
  ASSERT_FALSE(cfg.ok());
  msg = std::string(cfg.status().message());
  EXPECT_EQ(msg.rfind(std::string(kOrigin) + ":4:", 0), 0u) << msg;
}

TEST(ConfigTest, EmptyOrNonMappingFile) {
  for (const char* text : {"", "\n", "# only a comment\n", "~\n"}) {
    absl::StatusOr<JobConfig> cfg = ParseJobConfig(text, kOrigin);
    ASSERT_FALSE(cfg.ok()) << "'" << text << "'";
    EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
    std::string msg(cfg.status().message());
    EXPECT_NE(msg.find(kOrigin), std::string::npos) << msg;
    EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  }
  for (const char* text : {"- a\n- b\n", "just a string\n", "42\n"}) {
    absl::StatusOr<JobConfig> cfg = ParseJobConfig(text, kOrigin);
    ASSERT_FALSE(cfg.ok()) << "'" << text << "'";
    EXPECT_TRUE(absl::IsInvalidArgument(cfg.status())) << cfg.status();
    std::string msg(cfg.status().message());
    EXPECT_NE(msg.find(kOrigin), std::string::npos) << msg;
    EXPECT_NE(msg.find("mapping"), std::string::npos) << msg;
  }
}

TEST(ConfigTest, ValidateChecksABuiltConfig) {
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(kBase, "base.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(ValidateJobConfig(*cfg, "base.yaml").ok());

  JobConfig bad = *cfg;
  bad.sae.k = 5000;  // e.g. a command-line override
  absl::Status s = ValidateJobConfig(bad, "--set");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_EQ(s.message(), "--set: sae.k: 5000 exceeds sae.latents (4096)");

  bad = *cfg;
  bad.world.workers = 3;  // 4096 % 3 != 0
  s = ValidateJobConfig(bad, "--set");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("world.workers (3)"), absl::string_view::npos) << s;
}

void ExpectRoundTrip(const JobConfig& cfg) {
  std::string yaml = JobConfigToYaml(cfg);
  absl::StatusOr<JobConfig> back = ParseJobConfig(yaml, "roundtrip.yaml");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << yaml;
  SCOPED_TRACE(yaml);
  ExpectConfigsEqual(cfg, *back);
  // And the text is stable.
  EXPECT_EQ(JobConfigToYaml(*back), yaml);
}

TEST(ConfigTest, RoundTripArchitectureExample) {
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(kArchitectureExample, "demo.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ExpectRoundTrip(*cfg);
}

TEST(ConfigTest, RoundTripSyntheticWithExpansionFactor) {
  std::string yaml = Replace(kSynthetic, "  latents: 256\n", "  expansion_factor: 4\n");
  yaml = Replace(yaml, "  k: 8\n", "  k: 8\n  k_schedule: {start: 40, fraction: 0.3, shape: cosine}\n");
  absl::StatusOr<JobConfig> cfg = ParseJobConfig(yaml, "s.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->sae.latents, 128);
  ExpectRoundTrip(*cfg);
}

// --- The schema: every member of the config structs is in its Fields list,
// and a config that sets every field to a non-default value survives the
// writer and the reader (docs/formats.md "Adding a job field").

// The number of members of an aggregate: the most initializers T{...} takes.
struct AnyMember {
  template <class T>
  operator T() const;  // never defined: only used in unevaluated contexts
};
template <class T, class... A>
constexpr auto Takes(int) -> decltype(T{std::declval<A>()...}, true) {
  return true;
}
template <class T, class... A>
constexpr bool Takes(...) {
  return false;
}
template <class T, class... A>
constexpr size_t MemberCount() {
  if constexpr (Takes<T, A..., AnyMember>(0)) {
    return MemberCount<T, A..., AnyMember>();
  } else {
    return sizeof...(A);
  }
}

template <class T>
size_t ListedCount() {
  T t{};
  size_t n = 0;
  T::Fields(t, [&n](const char*, auto&, FieldUse = FieldUse::kKey) { ++n; });
  return n;
}

TEST(ConfigSchema, EveryMemberIsInItsFieldsList) {
  // A member added to a struct but not to its Fields fails here (and would
  // be dropped by the writer, the service and OUTPUT/job.yaml).
  EXPECT_EQ(ListedCount<KScheduleConfig>(), MemberCount<KScheduleConfig>());
  EXPECT_EQ(ListedCount<DataConfig>(), MemberCount<DataConfig>());
  EXPECT_EQ(ListedCount<SaeConfig>(), MemberCount<SaeConfig>());
  EXPECT_EQ(ListedCount<TrainConfig>(), MemberCount<TrainConfig>());
  EXPECT_EQ(ListedCount<WorldConfig>(), MemberCount<WorldConfig>());
  EXPECT_EQ(ListedCount<JobConfig>(), MemberCount<JobConfig>());
  // The counter itself counts (a broken one would pass the lines above).
  struct Three {
    int a = 0;
    std::string b;
    KScheduleConfig c;
  };
  EXPECT_EQ(MemberCount<Three>(), 3u);
}

// The sae, train and world fields away from their defaults (valid with
// `latents` latents and a k of 17).
void SetNonDefaultModel(JobConfig* c, int variant) {
  c->name = variant == 0 ? "weird: name # with \"quotes\" and 'ticks' and \u00fcn\u00efcode" : "every-field";
  c->sae.k = 17;
  c->sae.k_schedule.enabled = true;
  c->sae.k_schedule.start = 60;
  c->sae.k_schedule.end = 17;
  c->sae.k_schedule.fraction = 1.0 / 3;
  c->sae.k_schedule.shape = variant == 1 ? KShape::kExponential : KShape::kCosine;
  c->sae.k_schedule.loss = KScheduleLoss::kCurrentK;
  c->sae.k_schedule.current_k_weight = variant == 1 ? 0.0 : 0.75;
  c->sae.dead_window_tokens = 123456789012;
  c->sae.dead_remedy = variant == 1 ? Remedy::kNone : Remedy::kGhostGrads;
  c->sae.aux_coefficient = 0.1;
  c->sae.normalize = variant == 1 ? Normalize::kUnitMeanNorm : Normalize::kLayerNorm;
  c->sae.init_b_dec = variant == 1 ? InitBDec::kGeometricMedian : InitBDec::kZero;
  c->sae.auxk_scale = AuxKScale::kNone;
  c->sae.init_encoder_scale = variant == 1 ? InitEncoderScale::kNone : InitEncoderScale::kMatchNorm;
  c->train.tokens = 9000000000000000000;
  c->train.batch_tokens = 3 * 1024;
  c->train.lr = 1.2345678901234567e-5;
  c->train.warmup_fraction = 0;
  c->train.lr_decay = variant == 1 ? LrDecay::kCosine : LrDecay::kLinear;
  c->train.decay_start_fraction = 0.7;
  c->train.grad_clip = 2.5;
  c->train.seed = 18446744073709551615u;
  c->train.precision = Precision::kBf16;
  c->train.encoder = Encoder::kInt8Screened;  // valid here; the trainer refuses it with bf16
  c->train.checkpoint_every_tokens = 777;
  c->train.log_every_steps = 1;
  c->train.device = variant == 1 ? Device::kCpu : Device::kCuda;
  c->train.threads = 12;
  c->world.workers = 3;
  c->world.backend = variant == 0 ? Backend::kNccl : variant == 1 ? Backend::kGloo : Backend::kMpi;
  c->world.timeout_seconds = 12.5;
  c->output = variant == 0 ? "~" : "runs/every field";
}

// One config per data kind, together setting every field to a non-default
// value.
std::vector<JobConfig> NonDefaultConfigs() {
  JobConfig shards;
  shards.data.kind = DataKind::kShards;
  shards.data.path = "null";
  shards.data.shuffle_buffer_rows = 1;
  shards.sae.latents = 12345;
  SetNonDefaultModel(&shards, 0);

  JobConfig syn;
  syn.data.kind = DataKind::kSynthetic;
  syn.data.d_in = 30;
  syn.data.latents = 90;
  syn.data.k = 9;
  syn.data.seed = 42;
  syn.data.noise = 0;
  syn.data.frequency_decay = 2.75;
  syn.sae.expansion_factor = 3;
  syn.sae.latents = 90;  // what the reader derives: expansion_factor * d_in
  SetNonDefaultModel(&syn, 1);

  JobConfig lm;
  lm.data.kind = DataKind::kLm;
  lm.data.seed = 7;
  lm.data.model = "models/gpt #2";
  lm.data.layer = 0;
  lm.data.corpus = "generate";
  lm.data.context = 1024;
  lm.sae.latents = 4096;
  SetNonDefaultModel(&lm, 2);
  return {shards, syn, lm};
}

// Beyond EveryFieldSurvivesTheWriterAndTheReader: control characters in
// names and paths are refused, and an lm job made from a shards job (its
// shards fields left behind) and a synthetic job with k = latents round-trip.
TEST(ConfigTest, RoundTripEveryFieldChanged) {
  const JobConfig cfg = NonDefaultConfigs()[0];
  ASSERT_EQ(cfg.data.kind, DataKind::kShards);
  ASSERT_TRUE(ValidateJobConfig(cfg, "built").ok()) << ValidateJobConfig(cfg, "built");
  // Control characters (a newline, a tab, NUL) are refused in names and paths.
  for (const std::string bad : {std::string("two\nlines"), std::string("tab\there"), std::string("nul\0x", 5)}) {
    JobConfig b = cfg;
    b.name = bad;
    EXPECT_FALSE(ValidateJobConfig(b, "built").ok()) << bad;
    b = cfg;
    b.output = bad;
    EXPECT_FALSE(ValidateJobConfig(b, "built").ok()) << bad;
  }

  JobConfig lm = cfg;
  lm.data.kind = DataKind::kLm;
  lm.data.path = "";
  lm.data.shuffle_buffer_rows = 65536;
  lm.data.model = "models/gpt #2";
  lm.data.layer = 0;
  lm.data.corpus = "generate";
  lm.data.context = 1024;
  lm.sae.k_schedule = KScheduleConfig();
  ExpectRoundTrip(lm);

  JobConfig syn;
  syn.name = "syn";
  syn.data.kind = DataKind::kSynthetic;
  syn.data.d_in = 7;
  syn.data.latents = 9;
  syn.data.k = 9;
  syn.data.seed = 42;
  syn.data.noise = 0;
  syn.data.frequency_decay = 2.75;
  syn.sae.latents = 9;
  syn.sae.k = 9;
  syn.train.tokens = 1;
  syn.train.batch_tokens = 1;
  syn.output = "o";
  ExpectRoundTrip(syn);
}

TEST(ConfigSchema, EveryFieldSurvivesTheWriterAndTheReader) {
  const std::vector<JobField> defaults = ListJobFields(JobConfig());
  std::vector<bool> changed(defaults.size(), false);
  for (const JobConfig& cfg : NonDefaultConfigs()) {
    ASSERT_TRUE(ValidateJobConfig(cfg, "built").ok()) << ValidateJobConfig(cfg, "built");
    const std::vector<JobField> fields = ListJobFields(cfg);
    ASSERT_EQ(fields.size(), defaults.size());
    for (size_t i = 0; i < fields.size(); ++i) {
      if (fields[i].value != defaults[i].value) changed[i] = true;
      // Every key this config writes is away from its default, so the round
      // trip below would notice a key the reader drops.
      if (fields[i].use == FieldUse::kKey && fields[i].name != "data.kind")
        EXPECT_NE(fields[i].value, defaults[i].value) << fields[i].name << " keeps its default";
    }
    ExpectRoundTrip(cfg);
  }
  for (size_t i = 0; i < defaults.size(); ++i) {
    if (defaults[i].use == FieldUse::kNotInFile) continue;
    EXPECT_TRUE(changed[i]) << defaults[i].name << ": no config here sets it; add it to NonDefaultConfigs";
  }
}

TEST(ConfigSchema, FieldsAreListedWithDottedNames) {
  const std::vector<JobField> f = ListJobFields(NonDefaultConfigs()[1]);
  auto find = [&](const std::string& name) -> const JobField* {
    for (const auto& x : f)
      if (x.name == name) return &x;
    return nullptr;
  };
  ASSERT_NE(find("sae.k_schedule.shape"), nullptr);
  EXPECT_EQ(find("sae.k_schedule.shape")->value, "exponential");
  EXPECT_EQ(find("sae.k_schedule.enabled")->use, FieldUse::kPresence);
  EXPECT_EQ(find("data.path")->use, FieldUse::kNotHere);
  EXPECT_EQ(find("sae.latents")->use, FieldUse::kReadOnly);
  EXPECT_EQ(find("train.seed")->value, "18446744073709551615");
  EXPECT_EQ(find("source_path")->use, FieldUse::kNotInFile);
}

// Each option's values come from one table: the reader accepts exactly its
// names and the writer prints them back.
TEST(ConfigSchema, OptionValuesComeFromOneTable) {
  for (const auto& o : OptionTable<Remedy>::kValues) {
    auto cfg = ParseJobConfig(Replace(kBase, "  k: 32\n", std::string("  k: 32\n  dead_remedy: ") + o.name + "\n"),
                              "opt.yaml");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    EXPECT_EQ(cfg->sae.dead_remedy, o.value);
    EXPECT_NE(JobConfigToYaml(*cfg).find(std::string("dead_remedy: ") + o.name), std::string::npos);
  }
  auto bad = ParseJobConfig(Replace(kBase, "  k: 32\n", "  k: 32\n  k_schedule: {shape: constant}\n"), "opt.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("opt.yaml: sae.k_schedule.shape: 'constant' is not one of linear, cosine, "
                                        "exponential"),
            absl::string_view::npos)
      << bad.status();
  EXPECT_EQ(OptionName(KShape::kConstant), std::string("constant"));  // cfg.json of a run without a schedule
  EXPECT_EQ(OptionChoices<Backend>(), "auto, local, gloo, mpi, nccl");
}

// One check of k against latents, used by the job's validation and by the
// trainer: the same message from both.
TEST(ConfigSchema, OneCheckOfKAgainstLatents) {
  EXPECT_EQ(CheckSaeShape(64, 4096, 5000, 0).message(), "sae.k: 5000 exceeds sae.latents (4096)");
  EXPECT_EQ(CheckSaeShape(64, 4096, 32, 5000).message(), "sae.k_schedule.start: 5000 exceeds sae.latents (4096)");
  EXPECT_EQ(CheckSaeShape(64, 4096, 0, 0).message(), "sae.k: must be > 0 (got 0)");
  EXPECT_TRUE(CheckSaeShape(0, 4096, 32, 4096).ok());
  EXPECT_FALSE(CheckSaeShape(kMaxDIn, kMaxLatents, 32, 0).ok()) << "beyond kMaxTrainingGiB";
}

}  // namespace
}  // namespace sae
