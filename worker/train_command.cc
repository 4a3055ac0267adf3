#include "worker/train_command.h"

#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/base/config.h"
#include "core/base/exit_code.h"
#include "core/data/manifest_check.h"
#include "worker/training_run.h"

namespace sae {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

const std::atomic<bool>* StopOnSignals() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  return &g_stop;
}

int RunTrainCommand(const TrainCommandArgs& a) {
  auto job = LoadJobConfig(a.job);
  if (!job.ok()) return Fail(job.status());
  if (!a.output.empty()) {
    job->output = a.output;
    absl::Status v = ValidateJobConfig(*job, a.job);
    if (!v.ok()) return Fail(v);
  }
  if (absl::Status v = CheckJobAgainstManifest(*job, a.job); !v.ok()) return Fail(v);
  RunOptions ro;
  ro.stop = StopOnSignals();
  ro.resume = a.resume;
  ro.max_steps = a.max_steps;
  ro.rank = a.rank;
  ro.world_size = a.world_size;
  ro.rendezvous = a.rendezvous;
  ro.metrics_listen = a.metrics_listen;
  if (a.quiet || a.json) ro.progress = ProgressMode::kQuiet;
  auto sum = RunTrainingJob(*job, ro);
  if (!sum.ok()) return Fail(sum.status());
  if (sum->rank != 0) return 0;  // rank 0 reports for the world
  if (!sum->finished) {
    std::printf("stopped after step %ld (%ld tokens); continue with --resume\n", sum->steps, sum->tokens);
    return 0;
  }
  if (a.json) {
    nlohmann::json j = {{"output", sum->output},
                        {"tokens", sum->tokens},
                        {"steps", sum->steps},
                        {"fvu", sum->fvu},
                        {"mse", sum->mse},
                        {"l0", sum->l0},
                        {"dead_ratio", sum->dead_ratio},
                        {"tokens_per_second", sum->tokens_per_second}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("trained %s\n%s", job->name.c_str(), FormatSummaryTable(*sum).c_str());
  }
  return 0;
}

}  // namespace sae
