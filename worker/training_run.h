// Runs one training job end to end in this process: opens the data, trains,
// writes metrics.jsonl and periodic checkpoints, and on success the final SAE
// and summary.json. Everything is written under OUTPUT.partial/ and renamed to
// OUTPUT only when training finished, so a failed run never leaves a
// summary.json or a final SAE, and its checkpoints stay for --resume.
// The same code path serves `sae train` and `sae-worker --job`. The run
// directory's layout is core/sae/checkpoint.h; the pieces of a run are
// worker/run_world.h (backend), worker/step_loop.h and worker/metrics_sink.h.
// Torch-free: the CLI and the coordinator agent include it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "core/base/config.h"
#include "core/base/status.h"
#include "core/sae/checkpoint.h"
#include "core/sae/step_metrics.h"

namespace sae {

enum class ProgressMode { kAuto, kBar, kLines, kQuiet };

struct RunOptions {
  bool resume = false;
  ProgressMode progress = ProgressMode::kAuto;  // auto: a bar on a TTY, else lines
  // Stop after this many optimizer steps in this invocation (checkpointing
  // first), leaving the run resumable; < 0 = run to the end. For tests.
  int64_t max_steps = -1;
  // Set from a signal handler: checkpoint and return CANCELLED.
  const std::atomic<bool>* stop = nullptr;
  std::function<void(const StepMetrics&)> on_step;  // called after each step
  // Workers that mpirun did not start (gloo): rank, world size and the
  // rendezvous address HOST:PORT of the store rank 0 serves.
  int rank = -1;
  int world_size = 0;
  std::string rendezvous;
  // Serve Prometheus metrics at HOST:PORT/metrics ("" = off; port 0 = any
  // free port; with several ranks on one host, rank r uses PORT + r).
  std::string metrics_listen;
  // false: serve metrics at exactly metrics_listen on every rank (a worker
  // under a coordinator owns its port).
  bool metrics_port_per_rank = true;
  // The coordinator's attempt number (0: not run by a coordinator). Rank 0
  // fences the run directory with it (worker/run_fence.h): once a later
  // attempt owns OUTPUT.partial/, this one writes nothing and ends Aborted.
  int attempt = 0;
  // The coordinator's job id ("" outside a coordinator). Written into
  // summary.json with the attempt; a later attempt of the same job that
  // finds OUTPUT already finished by an earlier one (its worker was declared
  // lost after the rename) reports that output instead of failing.
  std::string job_id;
  // Rank 0, after each checkpoint is in place: its step, tokens and directory.
  std::function<void(int64_t step, int64_t tokens, const std::string& dir)> on_checkpoint;
};

struct RunSummary {
  std::string output;  // final directory ("" when stopped early)
  bool finished = false;
  int64_t tokens = 0, steps = 0;
  double fvu = 0, mse = 0, l0 = 0, dead_ratio = 0, aux_loss = 0;
  double tokens_per_second = 0, seconds = 0;
  int64_t k = 0, latents = 0, d_in = 0;
  std::string remedy;
  double planted_recovered = -1;  // synthetic data: share of true atoms found
  int rank = 0, world = 1;        // only rank 0 writes outputs and prints
};

absl::StatusOr<RunSummary> RunTrainingJob(const JobConfig& job, const RunOptions& opts);

// Formats a summary as an aligned two-column table.
std::string FormatSummaryTable(const RunSummary& s);

// Whether OUTPUT.partial/ holds a checkpoint to resume from (RunDir).
bool HasResumableCheckpoint(const std::string& output);

}  // namespace sae
