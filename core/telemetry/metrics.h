// Prometheus metrics of a training process (names are a contract, see
// ARCHITECTURE.md: dashboards and alerts depend on them), served over HTTP at
// /metrics by prometheus-cpp. Labels stay low-cardinality: job, sae, rank,
// role (and remedy on sae_auxiliary_loss). A small built-in HTTP thread
// answers GET /metrics (prometheus-cpp's civetweb exposer failed to start
// inside the trainer process). Thread-safe; no prometheus-cpp types here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/base/status.h"

namespace sae {

// One optimizer step, as the metrics see it.
struct StepSample {
  int64_t tokens = 0;  // tokens this rank trained in the step (sum over ranks = the job's)
  int64_t k = 0;
  double fvu = 0, mse = 0, l0 = 0, dead_ratio = 0, aux_loss = 0;
  double step_seconds = 0, allreduce_seconds = 0, data_wait_seconds = 0;
  // train.encoder: int8_screened: rows recomputed exactly, candidates per row.
  int64_t screen_fallback_rows = 0, screen_candidates = 0;
};

struct MetricLabels {
  std::string job, sae, rank, role = "worker", remedy = "none";
};

class TrainingMetrics {
 public:
  // Serves /metrics on `listen` ("HOST:PORT"; port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<TrainingMetrics>> Start(const std::string& listen, const MetricLabels& labels);
  ~TrainingMetrics();

  // "HOST:PORT" actually bound.
  std::string address() const;
  void Record(const StepSample& s);

  struct Impl;  // internal

 private:
  explicit TrainingMetrics(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae
