// The step loop of a training run: reads each global batch's share, steps
// the trainer, and checkpoints when the run crosses checkpoint_every_tokens.
// All ranks agree before every step whether to stop (a signal reaches the
// ranks at different moments), so they checkpoint at the same step. Not
// thread-safe; one per run and rank.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "absl/time/time.h"
#include "core/base/status.h"
#include "core/sae/step_metrics.h"

namespace sae {

class BatchSource;
class Communicator;
class SaeTrainer;

struct StepLoopConfig {
  int64_t total_tokens = 0;
  int64_t batch_tokens = 0;             // global, all ranks together
  int64_t checkpoint_every_tokens = 0;  // 0: only at the end
  int64_t log_every_steps = 1;          // StepReport::log_now every this many steps
  int64_t max_steps = -1;               // pause after this many steps here (< 0: never)
  absl::Duration timeout = absl::Seconds(300);
  const std::atomic<bool>* stop = nullptr;  // set from a signal handler
};

// What the loop hands over after each step.
struct StepReport {
  const StepMetrics& metrics;
  int64_t rank_rows = 0;         // rows this rank trained in the step
  double data_wait_seconds = 0;  // waiting for this step's rows
  double total_data_wait = 0;    // since the loop started
  double tokens_per_second = 0;  // the job's, since the loop started
  bool log_now = false;          // a step to log (log_every_steps, and the last)
};

enum class LoopEnd {
  kFinished,  // all tokens trained (the caller writes the last checkpoint)
  kStopped,   // a stop was agreed; checkpoint written
  kPaused,    // max_steps reached; checkpoint written
};

// Whether any rank wants to stop (a max-reduce of the flags; `local` alone
// without a communicator or in a world of one).
absl::StatusOr<bool> AgreeOnStop(Communicator* comm, bool local, absl::Duration timeout);

class StepLoop {
 public:
  StepLoop(const StepLoopConfig& cfg, SaeTrainer* trainer, BatchSource* source, Communicator* comm);

  // Called after every step; an error ends the loop with it.
  std::function<absl::Status(const StepReport&)> on_step;
  // Writes a checkpoint (all ranks call it at the same step).
  std::function<absl::Status()> checkpoint;

  absl::StatusOr<LoopEnd> Run();

  // The last steps at the final k of the schedule (at most 10), for the summary.
  const std::deque<StepMetrics>& recent() const { return recent_; }
  double seconds() const;  // since the loop was constructed
  int64_t tokens_at_start() const { return tokens_at_start_; }

 private:
  // One step on n global rows: the data, the trainer, the report.
  absl::Status StepOn(int64_t n);
  bool Crossed(int64_t n) const;

  StepLoopConfig cfg_;
  SaeTrainer* trainer_;
  BatchSource* source_;
  Communicator* comm_;
  int rank_ = 0, world_ = 1;
  double t_start_ = 0;
  int64_t tokens_at_start_ = 0;
  double data_wait_ = 0;
  int64_t steps_here_ = 0;
  std::deque<StepMetrics> recent_;
  std::vector<float> rows_;
};

}  // namespace sae
