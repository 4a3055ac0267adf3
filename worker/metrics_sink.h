// metrics.jsonl of a training run (rank 0): one JSON object per logged step,
// each line written and flushed under the attempt fence (worker/run_fence.h).
// Not thread-safe.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "core/base/status.h"
#include "core/sae/step_metrics.h"
#include "worker/run_fence.h"

namespace sae {

// Keeps only the lines of `path` up to `step` (a resumed run writes the rest
// again). A line that is not a JSON object with an integer "step" (a line
// torn by a crash) is dropped. OK when the file does not exist.
absl::Status TruncateMetrics(const std::string& path, int64_t step);

// The run-wide numbers a metrics line carries besides the step's own.
struct RunRates {
  double tokens_per_second = 0;
  double data_wait_seconds = 0;  // since this invocation started
  int ranks = 1;
};

// One metrics.jsonl line (without the newline); `unix_time` in seconds.
std::string MetricsLine(const StepMetrics& m, const RunRates& r, int64_t unix_time);

class MetricsSink {
 public:
  MetricsSink(std::string path, const RunFence* fence) : path_(std::move(path)), fence_(fence) {}

  // Truncates to `keep_up_to_step` (0: every line), then opens for appending.
  // The caller holds the fence.
  absl::Status Open(int64_t keep_up_to_step);
  // Appends and flushes one line, holding the fence (Aborted for a stale attempt).
  absl::Status Write(const StepMetrics& m, const RunRates& r);
  void Close() { out_.close(); }

 private:
  std::string path_;
  const RunFence* fence_;
  std::ofstream out_;
};

}  // namespace sae
