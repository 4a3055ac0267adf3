// The run directory layout (core/sae/checkpoint.h): paths, the output/resume
// policy, atomic checkpoints with rotation and the resume lookup; and corrupt
// states, checkpoint pointers and cfg.json files refused with an error status
// that names the file and the field (never an exception).
#include "core/sae/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "core/base/file_util.h"
#include "core/data/safetensors.h"
#include "core/sae/trainer.h"
#include "tests/testing/files.h"
#include "tests/testing/scratch_dir.h"
#include "tests/unit/sae/sae_test_util.h"

namespace sae {
namespace {

namespace fs = std::filesystem;

using ::sae::testing::ConstantKTrainer;
using ::sae::testing::ScratchDir;
using ::sae::testing::WriteFile;

TrainerOptions Tiny() {
  TrainerOptions o = ConstantKTrainer(8, 16, 2, 640, 64);
  o.seed = 1;
  return o;
}

std::unique_ptr<SaeTrainer> Stepped(int steps) {
  auto t = SaeTrainer::Create(Tiny()).value();
  std::vector<float> x(64 * 8);
  for (int s = 0; s < steps; ++s) {
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(((i * 7 + s * 13) % 17) - 8) / 8.0f;
    EXPECT_TRUE(t->Step(x.data(), 64).ok());
  }
  return t;
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST(RunDir, NamesTheContractPaths) {
  RunDir d("/o/run");
  EXPECT_EQ(d.final_dir, "/o/run");
  EXPECT_EQ(d.work_dir, "/o/run.partial");
  EXPECT_EQ(d.checkpoints, "/o/run.partial/checkpoints");
  EXPECT_EQ(d.metrics, "/o/run.partial/metrics.jsonl");
  EXPECT_EQ(d.latest(), "/o/run.partial/checkpoints/latest");
  EXPECT_EQ(d.CheckpointPath(42), "/o/run.partial/checkpoints/step-000000042");
  EXPECT_EQ(CheckpointName(7), "step-000000007");
}

TEST(RunDir, PolicyRefusesAFinishedOutputAndNeedsResumeForCheckpoints) {
  ScratchDir scratch("sae_checkpoint");
  const std::string root = scratch.path();
  RunDir d(root + "/out");
  EXPECT_TRUE(CheckRunDirPolicy(d, false, "j.yaml").ok());
  EXPECT_EQ(CheckRunDirPolicy(d, true, "j.yaml").code(), absl::StatusCode::kNotFound);
  fs::create_directories(d.checkpoints);
  WriteFile(d.latest(), "step-000000001\n");
  EXPECT_EQ(CheckRunDirPolicy(d, false, "j.yaml").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(CheckRunDirPolicy(d, true, "j.yaml").ok());
  fs::create_directories(d.final_dir);
  const absl::Status s = CheckRunDirPolicy(d, true, "j.yaml");
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(Contains(s, "j.yaml: output")) << s;
}

TEST(Checkpoint, WritesAtomicallyKeepsTheNewestAndResumes) {
  ScratchDir scratch("sae_checkpoint");
  const std::string root = scratch.path();
  RunDir d(root + "/out");
  auto t = Stepped(1);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(WriteCheckpoint(d, *t, 100 + i, 2).ok());
    std::vector<float> x(64 * 8);
    for (size_t j = 0; j < x.size(); ++j) x[j] = static_cast<float>(((j * 5 + i * 3) % 11) - 5) / 5.0f;
    auto m = t->Step(x.data(), 64);
    ASSERT_TRUE(m.ok()) << m.status();
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d.checkpoints)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-000000002", "step-000000003"}));
  auto state = LatestStatePath(d);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, d.CheckpointPath(3) + "/state.safetensors");
  auto fresh = SaeTrainer::Create(Tiny()).value();
  auto extra = fresh->LoadState(*state);
  ASSERT_TRUE(extra.ok()) << extra.status();
  EXPECT_EQ(fresh->step(), 3);
  auto pos = DataPositionOf(*extra, *state);
  ASSERT_TRUE(pos.ok()) << pos.status();
  EXPECT_EQ(*pos, 102);
}

TEST(Checkpoint, ACorruptPointerOrDataPositionIsAnErrorNamingIt) {
  ScratchDir scratch("sae_checkpoint");
  const std::string root = scratch.path();
  RunDir d(root + "/out");
  fs::create_directories(d.checkpoints);
  WriteFile(d.latest(), "\n");
  auto s = LatestStatePath(d);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status(), d.latest())) << s.status();
  WriteFile(d.latest(), "../../elsewhere\n");
  EXPECT_FALSE(LatestStatePath(d).ok());

  auto missing = DataPositionOf({}, "s.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(Contains(missing.status(), "s.safetensors: no data_position")) << missing.status();
  for (const char* bad : {"12x", "", "-3", "99999999999999999999999"}) {
    auto p = DataPositionOf({{"data_position", bad}}, "s.safetensors");
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(p.status(), "s.safetensors: data_position")) << p.status();
  }
}

// Rewrites a safetensors file with one metadata field replaced (or removed).
void RewriteMetadata(const std::string& from, const std::string& to, const std::string& key, const std::string* value) {
  auto f = SafetensorsFile::Open(from).value();
  SafetensorsWriter w;
  for (const auto& [name, info] : f.tensors()) {
    std::string bytes(info.end - info.begin, '\0');
    ASSERT_TRUE(f.ReadRaw(name, bytes.data(), bytes.size()).ok());
    ASSERT_TRUE(w.Add(name, info.dtype, info.shape, bytes.data()).ok());
  }
  for (const auto& [k, v] : f.metadata())
    if (k != key) w.SetMetadata(k, v);
  if (value != nullptr) w.SetMetadata(key, *value);
  ASSERT_TRUE(w.Write(to).ok());
}

TEST(Checkpoint, ACorruptStateIsAnErrorNamingTheFileAndField) {
  ScratchDir scratch("sae_checkpoint");
  const std::string root = scratch.path();
  auto t = Stepped(2);
  const std::string good = root + "/good.safetensors";
  ASSERT_TRUE(t->SaveState(good, {{"data_position", "128"}}).ok());
  const std::string bad = root + "/bad.safetensors";
  for (const char* key : {"step", "tokens", "adam_step", "d_in", "latents", "input_scale"}) {
    for (const std::string value : {"2x", "", "1e999999"}) {
      if (std::string(key) == "input_scale" && value == "1e999999") continue;  // parses as inf
      RewriteMetadata(good, bad, key, &value);
      auto fresh = SaeTrainer::Create(Tiny()).value();
      absl::StatusOr<std::map<std::string, std::string>> r = fresh->LoadState(bad);
      ASSERT_FALSE(r.ok()) << key << "=" << value;
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
      EXPECT_TRUE(Contains(r.status(), bad)) << r.status();
      EXPECT_TRUE(Contains(r.status(), std::string("'") + key + "'")) << r.status();
      EXPECT_EQ(fresh->step(), 0) << "a refused state leaves the trainer as it was";
    }
    RewriteMetadata(good, bad, key, nullptr);
    auto fresh = SaeTrainer::Create(Tiny()).value();
    auto r = fresh->LoadState(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(Contains(r.status(), std::string("'") + key + "' missing")) << r.status();
  }
  // A truncated file is an error too (the safetensors reader's).
  std::string bytes = ReadFileToString(good).value();
  WriteFile(bad, bytes.substr(0, bytes.size() / 2));
  EXPECT_FALSE(SaeTrainer::Create(Tiny()).value()->LoadState(bad).ok());
}

TEST(LoadSae, ACorruptCfgJsonIsAnErrorNamingTheFileAndField) {
  ScratchDir scratch("sae_checkpoint");
  const std::string root = scratch.path();
  auto t = Stepped(1);
  ASSERT_TRUE(t->ExportSae(root, "").ok());
  ASSERT_TRUE(LoadSae(root).ok());
  const std::string cfg_path = root + "/cfg.json";
  const std::string good = ReadFileToString(cfg_path).value();
  struct Case {
    std::string text, expect;
  };
  const std::vector<Case> cases = {
      {good.substr(0, good.size() / 2), "cfg.json: not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"d_in": "eight", "num_latents": 16, "k": 2})", "cfg.json: d_in: \"eight\" is not an integer"},
      {R"({"d_in": 8, "num_latents": 16})", "cfg.json: k: missing"},
      {R"({"d_in": 8, "num_latents": 16.5, "k": 2})", "cfg.json: num_latents: 16.5 is not an integer"},
      {R"({"d_in": 8, "num_latents": 16, "k": 2, "saeforge": {"input_scale": "big"}})",
       "cfg.json: saeforge: input_scale: \"big\" is not a number"},
      {R"({"d_in": 8, "num_latents": 16, "k": 2, "saeforge": {"normalize": 3}})",
       "cfg.json: saeforge: normalize: 3 is not a string"},
      {R"({"d_in": 8, "num_latents": 16, "k": 2, "saeforge": 7})", "cfg.json: saeforge: not a JSON object"},
  };
  for (const Case& c : cases) {
    WriteFile(cfg_path, c.text);
    auto r = LoadSae(root);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(Contains(r.status(), c.expect)) << r.status() << "\nexpected: " << c.expect;
  }
}

}  // namespace
}  // namespace sae
