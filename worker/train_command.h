// Trains one job file in this process and prints the outcome: the code path
// behind `sae train` and `sae-worker --job` (one function, so both print the
// same summary table, JSON and "stopped after step" line).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace sae {

struct TrainCommandArgs {
  std::string job;  // job file (YAML)
  bool resume = false;
  bool json = false;   // summary as one JSON object
  bool quiet = false;  // no progress output (also implied by json)
  std::string output;  // overrides the job's output directory ("" = keep)
  int64_t max_steps = -1;
  int rank = -1, world_size = 0;  // gloo ranks started without mpirun
  std::string rendezvous;
  std::string metrics_listen;
};

// Loads and checks the job, installs StopOnSignals (SIGINT/SIGTERM end the
// run at a checkpoint, resumable) and runs it. Returns the exit code (0 ok or
// stopped resumably, 1 error; the message is on stderr).
int RunTrainCommand(const TrainCommandArgs& args);

// Installs SIGINT and SIGTERM handlers that set the returned process-wide
// flag (idempotent).
const std::atomic<bool>* StopOnSignals();

}  // namespace sae
