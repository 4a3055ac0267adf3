// `sae report`: one self-contained HTML page (inline SVG plots, a few lines of
// inline script, no network fetches) of a training run's metrics.jsonl over
// tokens, with summary.json when the run has finished. Stateless functions,
// safe to call from any thread.
#pragma once

#include <string>
#include <vector>

#include "core/base/status.h"

namespace sae {

// One metrics.jsonl record as the report reads it; NaN marks a field the
// record does not have.
struct ReportPoint {
  double tokens = 0;
  double fvu, mse, dead_ratio, k, l0, aux_loss, tokens_per_second;
};

// Parses metrics.jsonl text. Errors name `path` and the 1-based line:
// "runs/x/metrics.jsonl:7: not a JSON object: ...".
absl::StatusOr<std::vector<ReportPoint>> ParseMetricsJsonl(const std::string& text, const std::string& path);

// The HTML page of RUN_DIR (a finished run, or RUN_DIR.partial while it trains).
absl::StatusOr<std::string> RenderRunReport(const std::string& run_dir);

// Writes the page to `out` (default RUN_DIR/report.html); returns the path written.
absl::StatusOr<std::string> WriteRunReport(const std::string& run_dir, const std::string& out = "");

}  // namespace sae
