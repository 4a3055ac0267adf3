// The pieces of a training run (worker/): the backend choice, the metrics
// port of each rank, metrics.jsonl truncation, and the step loop's
// checkpoints, pause and agreed stop on a real trainer with synthetic data.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/base/config.h"
#include "core/base/file_util.h"
#include "core/comm/communicator.h"
#include "core/sae/trainer.h"
#include "tests/testing/scratch_dir.h"
#include "tests/unit/sae/sae_test_util.h"
#include "worker/batch_source.h"
#include "worker/metrics_sink.h"
#include "worker/run_world.h"
#include "worker/step_loop.h"
#include "worker/training_run.h"

namespace sae {
namespace {

namespace fs = std::filesystem;

using ::sae::testing::ConstantKTrainer;
using ::sae::testing::ScratchDir;

TEST(RunWorld, ChoosesTheBackend) {
  EXPECT_EQ(ChooseBackend("mpi", {}), "mpi");
  EXPECT_EQ(ChooseBackend("auto", {}), "local");
  BackendFacts f;
  f.rendezvous = true;
  EXPECT_EQ(ChooseBackend("auto", f), "gloo");
  f.mpirun = true;
  EXPECT_EQ(ChooseBackend("auto", f), "mpi");
  f.gpu = true;
  EXPECT_EQ(ChooseBackend("auto", f), "mpi");  // no NCCL built in
  f.nccl_built = true;
  EXPECT_EQ(ChooseBackend("auto", f), "nccl");
  f.mpirun = f.rendezvous = false;
  EXPECT_EQ(ChooseBackend("auto", f), "local");  // one process: no collectives
}

TEST(RunWorld, MetricsPortPerRank) {
  EXPECT_EQ(MetricsListenFor("0.0.0.0:9100", 2, 4, true), "0.0.0.0:9102");
  EXPECT_EQ(MetricsListenFor("0.0.0.0:9100", 2, 4, false), "0.0.0.0:9100");
  EXPECT_EQ(MetricsListenFor("0.0.0.0:9100", 0, 1, true), "0.0.0.0:9100");
  EXPECT_EQ(MetricsListenFor("127.0.0.1:0", 3, 4, true), "127.0.0.1:0");
}

TEST(MetricsSink, TruncationKeepsWholeLinesUpToTheStep) {
  ScratchDir scratch("sae_worker");
  const std::string path = scratch.Sub("metrics.jsonl");
  EXPECT_TRUE(TruncateMetrics(path, 3).ok());  // no file yet
  std::ofstream(path) << R"({"step": 1, "fvu": 0.5})"
                         "\n"
                      << R"({"step": "two"})"
                         "\n"
                      << R"({"step": 3})"
                         "\n"
                      << R"({"step": 2.5})"
                         "\n"
                      << "[1, 2]\n"
                      << R"({"step": 4})"
                         "\n"
                      << R"({"step": 5, "fv)";  // torn by a crash
  ASSERT_TRUE(TruncateMetrics(path, 3).ok());
  EXPECT_EQ(ReadFileToString(path).value(), "{\"step\": 1, \"fvu\": 0.5}\n{\"step\": 3}\n");
  ASSERT_TRUE(TruncateMetrics(path, 0).ok());
  EXPECT_EQ(ReadFileToString(path).value(), "");
}

TEST(MetricsSink, WritesOneLinePerStepUnderTheFence) {
  ScratchDir scratch("sae_worker");
  const std::string dir = scratch.path();
  RunFence fence(dir, 2);
  ASSERT_TRUE(fence.Claim().ok());
  MetricsSink sink(dir + "/metrics.jsonl", &fence);
  ASSERT_TRUE(sink.Open(0).ok());
  StepMetrics m;
  m.step = 7;
  m.tokens = 700;
  m.fvu = 0.25;
  ASSERT_TRUE(sink.Write(m, {1000, 0.5, 2}).ok());
  // A later attempt owns the directory: this one writes nothing more.
  RunFence later(dir, 3);
  ASSERT_TRUE(later.Claim().ok());
  m.step = 8;
  EXPECT_EQ(sink.Write(m, {1000, 0.5, 2}).code(), absl::StatusCode::kAborted);
  sink.Close();
  const std::string text = ReadFileToString(dir + "/metrics.jsonl").value();
  const auto j = nlohmann::json::parse(text.substr(0, text.find('\n')));
  EXPECT_EQ(j["step"], 7);
  EXPECT_EQ(j["tokens"], 700);
  EXPECT_EQ(j["ranks"], 2);
  EXPECT_EQ(j["tokens_per_second"], 1000.0);
  EXPECT_EQ(text.find("\"step\":8"), std::string::npos);
}

struct LoopRig {
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<SaeTrainer> trainer;
  std::unique_ptr<BatchSource> source;
  StepLoopConfig cfg;
  int checkpoints = 0;
  std::vector<int64_t> logged;
  std::vector<int64_t> checkpoint_steps;

  LoopRig() {
    JobConfig job;
    job.data.kind = DataKind::kSynthetic;
    job.data.d_in = 8;
    job.data.latents = 16;
    job.data.k = 2;
    comm = CreateCommunicator("local").value();
    source = OpenBatchSource(job, 0).value();
    TrainerOptions o = ConstantKTrainer(8, 32, 2, 1000, 100);
    trainer = SaeTrainer::Create(o).value();
    cfg.total_tokens = 1000;
    cfg.batch_tokens = 100;
    cfg.checkpoint_every_tokens = 300;
    cfg.log_every_steps = 4;
  }
  absl::StatusOr<LoopEnd> Run() {
    StepLoop loop(cfg, trainer.get(), source.get(), comm.get());
    loop.checkpoint = [&] {
      checkpoint_steps.push_back(trainer->step());
      return absl::OkStatus();
    };
    loop.on_step = [&](const StepReport& r) {
      if (r.log_now) logged.push_back(r.metrics.step);
      EXPECT_EQ(r.rank_rows, 100);
      return absl::OkStatus();
    };
    return loop.Run();
  }
};

TEST(StepLoop, TrainsToTheEndCheckpointingAtEachCrossing) {
  LoopRig rig;
  auto end = rig.Run();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, LoopEnd::kFinished);
  EXPECT_EQ(rig.trainer->tokens_seen(), 1000);
  // 300, 600, 900 tokens; the last step's checkpoint is the caller's.
  EXPECT_EQ(rig.checkpoint_steps, (std::vector<int64_t>{3, 6, 9}));
  EXPECT_EQ(rig.logged, (std::vector<int64_t>{4, 8, 10}));
}

TEST(StepLoop, PausesAfterMaxStepsAndStopsWhenAsked) {
  LoopRig paused;
  paused.cfg.max_steps = 2;
  auto end = paused.Run();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, LoopEnd::kPaused);
  EXPECT_EQ(paused.checkpoint_steps, (std::vector<int64_t>{2}));

  LoopRig stopped;
  std::atomic<bool> stop{true};
  stopped.cfg.stop = &stop;
  end = stopped.Run();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, LoopEnd::kStopped);
  EXPECT_EQ(stopped.trainer->step(), 0);
  EXPECT_EQ(stopped.checkpoint_steps, (std::vector<int64_t>{0}));
  EXPECT_TRUE(AgreeOnStop(stopped.comm.get(), true, absl::Seconds(1)).value());
  EXPECT_FALSE(AgreeOnStop(nullptr, false, absl::Seconds(1)).value());
}

TEST(StepLoop, AStepErrorEndsTheLoopNamingTheStep) {
  LoopRig rig;
  auto end = [&] {
    StepLoop loop(rig.cfg, rig.trainer.get(), rig.source.get(), rig.comm.get());
    loop.checkpoint = [] { return absl::OkStatus(); };
    loop.on_step = [](const StepReport& r) {
      return r.metrics.step == 2 ? absl::InternalError("disk full") : absl::OkStatus();
    };
    return loop.Run();
  }();
  ASSERT_FALSE(end.ok());
  EXPECT_EQ(std::string(end.status().message()), "disk full");
}

// A worker declared lost after its attempt renamed OUTPUT.partial into
// place: the coordinator places the next attempt, which must report that
// finished output (summary.json names the job) rather than fail the job on
// "already exists". An output of another job, or of a run without a
// coordinator, is still refused.
TEST(TrainingRun, ALaterAttemptReportsTheOutputAnEarlierAttemptOfItsJobFinished) {
  ScratchDir scratch("sae_worker");
  const std::string out = scratch.Sub("run");
  auto job = ParseJobConfig(
      "name: fenced\ndata: {kind: synthetic, d_in: 8, latents: 16, k: 2, seed: 1}\n"
      "sae: {latents: 32, k: 2}\ntrain: {tokens: 1000, batch_tokens: 100}\noutput: " +
          out + "\n",
      "job.yaml");
  ASSERT_TRUE(job.ok()) << job.status();
  RunOptions first;
  first.progress = ProgressMode::kQuiet;
  first.attempt = 1;
  first.job_id = "job-7";
  auto a = RunTrainingJob(*job, first);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->finished);
  const std::string before = ReadFileToString(out + "/sae.safetensors").value();
  const auto summary = nlohmann::json::parse(ReadFileToString(out + "/summary.json").value());
  EXPECT_EQ(summary["job_id"], "job-7");
  EXPECT_EQ(summary["attempt"], 1);

  RunOptions second = first;
  second.attempt = 2;
  auto b = RunTrainingJob(*job, second);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->finished);
  EXPECT_EQ(b->output, out);
  EXPECT_EQ(b->tokens, a->tokens);
  EXPECT_EQ(b->steps, a->steps);
  EXPECT_EQ(b->k, a->k);
  EXPECT_DOUBLE_EQ(b->fvu, a->fvu);
  EXPECT_EQ(ReadFileToString(out + "/sae.safetensors").value(), before);  // not trained again
  EXPECT_FALSE(fs::exists(out + ".partial"));

  RunOptions other = second;
  other.job_id = "job-8";
  EXPECT_EQ(RunTrainingJob(*job, other).status().code(), absl::StatusCode::kAlreadyExists);
  RunOptions plain;
  plain.progress = ProgressMode::kQuiet;
  EXPECT_EQ(RunTrainingJob(*job, plain).status().code(), absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace sae
