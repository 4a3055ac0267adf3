#include "worker/metrics_sink.h"

#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/base/file_util.h"
#include "core/base/parse.h"

namespace sae {

using json = nlohmann::json;

absl::Status TruncateMetrics(const std::string& path, int64_t step) {
  if (!PathExists(path)) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  std::istringstream in(text);
  std::string line, kept;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    const std::string where = absl::StrCat(path, ":", n);
    auto j = ParseJson(line, where);
    if (!j.ok()) continue;
    auto line_step = JsonField<int64_t>(*j, "step", where);
    if (line_step.ok() && *line_step <= step) kept += line + "\n";
  }
  return AtomicWriteFile(path, kept);
}

std::string MetricsLine(const StepMetrics& m, const RunRates& r, int64_t unix_time) {
  json j = {{"step", m.step},
            {"tokens", m.tokens},
            {"k", m.k},
            {"lr", m.lr},
            {"loss", m.loss},
            {"fvu", m.fvu},
            {"mse", m.mse},
            {"aux_loss", m.aux_loss},
            {"l0", m.l0},
            {"dead_ratio", m.dead_ratio},
            {"grad_norm", m.grad_norm},
            {"recon_norm_ratio", m.recon_norm_ratio},
            {"step_seconds", m.seconds},
            {"tokens_per_second", r.tokens_per_second},
            {"data_wait_seconds", r.data_wait_seconds},
            {"allreduce_seconds", m.allreduce_seconds},
            {"allreduce_bytes", m.allreduce_bytes},
            {"ranks", r.ranks},
            {"time", unix_time}};
  return j.dump();
}

absl::Status MetricsSink::Open(int64_t keep_up_to_step) {
  SAE_RETURN_IF_ERROR(TruncateMetrics(path_, keep_up_to_step));
  out_.open(path_, std::ios::app);
  if (!out_) return absl::InternalError(absl::StrCat(path_, ": cannot open for writing"));
  return absl::OkStatus();
}

absl::Status MetricsSink::Write(const StepMetrics& m, const RunRates& r) {
  const std::string line = MetricsLine(m, r, static_cast<int64_t>(std::time(nullptr)));
  SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence_->Hold());
  out_ << line << "\n";
  out_.flush();
  if (!out_) return absl::InternalError(absl::StrCat(path_, ": write failed (disk full?)"));
  return absl::OkStatus();
}

}  // namespace sae
